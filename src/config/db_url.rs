//! The TLS parameters of `database.url`, as libpq reads them: `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey`.
//!
//! The PostgreSQL driver knows only `sslmode=disable|prefer|require` and
//! none of the certificate parameters, so [`split`] takes these four out of
//! the URL's query (every other parameter stays, for the driver to accept
//! or refuse with its own message) and turns them into a typed
//! [`DbTls`]: the mode, the CA certificates that verify the server (loaded
//! here, so that a missing or unreadable file is a configuration error
//! naming the parameter) and the client certificate. Building the rustls
//! connector from it, and naming the host a refused handshake came from,
//! is `db::tls`'s business.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The URL parameters this module takes out of `database.url`.
const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq's `sslmode`, ordered from weakest to strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, else plaintext; the certificate is
    /// not checked (the default, as in libpq).
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS, the certificate chain verified against the CA certificates;
    /// the host name is not checked.
    VerifyCa,
    /// TLS, the chain verified and the certificate naming the host.
    VerifyFull,
}

impl SslMode {
    /// The mode as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses the URL's value.
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the certificates that verify the server come from.
#[derive(Debug, Clone)]
pub enum RootCerts {
    /// A PEM bundle (`sslrootcert=PATH`, or libpq's default
    /// `~/.postgresql/root.crt`), read when the configuration is loaded.
    File {
        /// The file.
        path: PathBuf,
        /// Its certificates (at least one).
        certs: Vec<CertificateDer<'static>>,
    },
    /// The operating system's store (`sslrootcert=system`).
    System,
}

impl fmt::Display for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCerts::File { path, .. } => write!(f, "sslrootcert={}", path.display()),
            RootCerts::System => f.write_str("sslrootcert=system"),
        }
    }
}

/// A client certificate and its key (`sslcert` + `sslkey`).
#[derive(Clone)]
pub struct ClientCert {
    /// The certificate file.
    pub cert_path: PathBuf,
    /// The key file.
    pub key_path: PathBuf,
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key (shared, never printed).
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// How every database connection uses TLS, from `database.url`.
#[derive(Debug, Clone)]
pub struct DbTls {
    /// The mode as written (or defaulted): what messages name.
    pub mode: SslMode,
    /// The CA certificates, when the mode (or a given `sslrootcert`) asks
    /// for verification.
    pub roots: Option<RootCerts>,
    /// The client certificate, when `sslcert` and `sslkey` are given.
    pub client: Option<ClientCert>,
}

impl DbTls {
    /// Plaintext, no certificates (tests of other modules).
    pub fn disabled() -> DbTls {
        DbTls {
            mode: SslMode::Disable,
            roots: None,
            client: None,
        }
    }

    /// The mode in effect: libpq's `require` with a CA given behaves as
    /// `verify-ca`.
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.roots) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        }
    }
}

/// A TLS parameter that cannot be used: which, and why (the caller names
/// `database.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError(pub String);

/// Splits `url` into the URL the driver is given (the TLS parameters
/// removed, everything else untouched) and the TLS setting. `home` is where
/// libpq's default `~/.postgresql/root.crt` is looked for.
pub fn split(url: &str, home: Option<&Path>) -> Result<(String, DbTls), ParamError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let (mut mode, mut rootcert, mut sslcert, mut sslkey) = (None, None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key_text = decode(key)?;
        if !TLS_PARAMS.contains(&key_text.as_str()) {
            kept.push(pair);
            continue;
        }
        let value = decode(value)?;
        // The last occurrence wins, as with the driver's own parameters.
        match key_text.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => rootcert = Some(value),
            "sslcert" => sslcert = Some(value),
            _ => sslkey = Some(value),
        }
    }
    let driver_url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let tls = resolve(
        mode.as_deref(),
        rootcert.as_deref(),
        sslcert.as_deref(),
        sslkey.as_deref(),
        home,
    )?;
    Ok((driver_url, tls))
}

/// A percent-decoded URL component.
fn decode(s: &str) -> Result<String, ParamError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ParamError(format!("the parameter {s:?} is not UTF-8 once decoded")))
}

/// The typed setting from the four parameters' values.
fn resolve(
    mode: Option<&str>,
    rootcert: Option<&str>,
    sslcert: Option<&str>,
    sslkey: Option<&str>,
    home: Option<&Path>,
) -> Result<DbTls, ParamError> {
    let rootcert = rootcert.filter(|r| !r.is_empty());
    let mode = match mode {
        Some(m) => SslMode::parse(m).ok_or_else(|| {
            ParamError(format!(
                "sslmode={m:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ))
        })?,
        // libpq 16: sslrootcert=system makes verify-full the default.
        None if rootcert == Some("system") => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if mode == SslMode::Disable {
        return Ok(DbTls::disabled());
    }
    let roots = match rootcert {
        Some("system") if mode != SslMode::VerifyFull => {
            return Err(ParamError(format!(
                "sslrootcert=system needs sslmode=verify-full (got sslmode={mode}): any certificate the operating system trusts would otherwise do for any host"
            )))
        }
        Some("system") => Some(RootCerts::System),
        Some(path) if mode >= SslMode::Require => Some(read_roots(Path::new(path), "sslrootcert")?),
        // libpq reads no CA for `prefer`.
        Some(_) => None,
        None if mode >= SslMode::VerifyCa => Some(default_roots(mode, home)?),
        None => None,
    };
    let client = client_files(
        sslcert.filter(|c| !c.is_empty()),
        sslkey.filter(|k| !k.is_empty()),
        home,
    )?
    .map(|(cert, key)| read_client(&cert, &key))
    .transpose()?;
    Ok(DbTls {
        mode,
        roots,
        client,
    })
}

/// Which client certificate and key to present, as libpq picks them: the
/// files given, else `~/.postgresql/postgresql.crt` and `postgresql.key`
/// when that certificate exists (none when it does not). A certificate
/// without its key is an error, and so is a key given without any
/// certificate (libpq would send none, silently).
fn client_files(
    cert: Option<&str>,
    key: Option<&str>,
    home: Option<&Path>,
) -> Result<Option<(PathBuf, PathBuf)>, ParamError> {
    let default = |name: &str| {
        home.map(|h| h.join(".postgresql").join(name))
            .filter(|p| p.exists())
    };
    let cert = match cert {
        Some(c) => Some(PathBuf::from(c)),
        None => default("postgresql.crt"),
    };
    match (cert, key) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ParamError(
            "sslkey is given without sslcert (and ~/.postgresql/postgresql.crt, libpq's default, does not exist): give both, the client certificate and its private key".into(),
        )),
        (Some(cert), Some(key)) => Ok(Some((cert, PathBuf::from(key)))),
        (Some(cert), None) => match default("postgresql.key") {
            Some(key) => Ok(Some((cert, key))),
            None => Err(ParamError(format!(
                "the client certificate {} has no private key: sslkey is not given and ~/.postgresql/postgresql.key (libpq's default) does not exist",
                cert.display()
            ))),
        },
    }
}

/// A private key file readable by others is refused, as libpq does: owned
/// by root it may be `0640` at most, owned by anyone else `0600` at most.
fn check_key_mode(path: &Path) -> Result<(), ParamError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        ParamError(format!(
            "sslkey={}: cannot read the file: {e}",
            path.display()
        ))
    })?;
    if key_mode_too_open(meta.mode(), meta.uid()) {
        return Err(ParamError(format!(
            "sslkey={} has group or world access (mode {:04o}): run chmod 0600 on it (0640 if owned by root and read through its group); libpq refuses such a key too",
            path.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Whether a key file of `mode`, owned by `uid`, is open to others (pure).
fn key_mode_too_open(mode: u32, uid: u32) -> bool {
    let allowed_to_others = if uid == 0 { 0o040 } else { 0 };
    mode & 0o077 & !allowed_to_others != 0
}

/// libpq's default CA file, `~/.postgresql/root.crt`, for a verifying mode
/// given no `sslrootcert`.
fn default_roots(mode: SslMode, home: Option<&Path>) -> Result<RootCerts, ParamError> {
    let missing = |shown: String| {
        ParamError(format!(
            "sslmode={mode} needs the CA certificates that signed the server's certificate, but sslrootcert is not given and {shown} (libpq's default) does not exist: add sslrootcert=/path/to/ca.pem (your provider's CA bundle) or sslrootcert=system (the operating system's store)"
        ))
    };
    let Some(home) = home else {
        return Err(missing("~/.postgresql/root.crt".into()));
    };
    let path = home.join(".postgresql").join("root.crt");
    if !path.exists() {
        return Err(missing(path.display().to_string()));
    }
    read_roots(&path, "sslrootcert")
}

/// Reads a CA bundle: at least one certificate, nothing else that matters.
fn read_roots(path: &Path, key: &str) -> Result<RootCerts, ParamError> {
    let certs = read_certs(path, key)?;
    Ok(RootCerts::File {
        path: path.to_path_buf(),
        certs,
    })
}

/// The PEM certificates of `path` (at least one).
fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, ParamError> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| ParamError(format!("{key}={shown}: cannot read the file: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ParamError(format!("{key}={shown}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(ParamError(format!(
            "{key}={shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(certs)
}

/// The client certificate and key.
fn read_client(cert: &Path, key: &Path) -> Result<ClientCert, ParamError> {
    let chain = read_certs(cert, "sslcert")?;
    check_key_mode(key)?;
    let shown = key.display();
    let pem = std::fs::read(key)
        .map_err(|e| ParamError(format!("sslkey={shown}: cannot read the file: {e}")))?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ParamError(format!(
            "sslkey={shown}: no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}"
        ))
    })?;
    Ok(ClientCert {
        cert_path: cert.to_path_buf(),
        key_path: key.to_path_buf(),
        chain,
        key: Arc::new(private),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throw-away certificate in PEM (generated once per test).
    fn pem_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["db.example".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        set_mode(&k, 0o600);
        (dir, c, k)
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn no_home() -> Option<&'static Path> {
        None
    }

    #[test]
    fn without_tls_parameters_the_url_is_untouched_and_prefer_is_the_default() {
        let url = "postgres://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write";
        let (driver, tls) = split(url, no_home()).unwrap();
        assert_eq!(driver, url);
        assert_eq!(tls.mode, SslMode::Prefer);
        assert!(tls.roots.is_none() && tls.client.is_none());
    }

    #[test]
    fn the_tls_parameters_are_taken_out_and_the_others_kept_in_order() {
        let (_d, ca, _k) = pem_dir();
        let url = format!(
            "postgres://u@h/db?connect_timeout=3&sslmode=verify-full&sslrootcert={}&application_name=x",
            ca.display()
        );
        let (driver, tls) = split(&url, no_home()).unwrap();
        assert_eq!(
            driver,
            "postgres://u@h/db?connect_timeout=3&application_name=x"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert!(matches!(tls.roots, Some(RootCerts::File { ref certs, .. }) if certs.len() == 1));
        let (driver, _) = split("postgres://u@h/db?sslmode=disable", no_home()).unwrap();
        assert_eq!(driver, "postgres://u@h/db");
    }

    #[test]
    fn an_unknown_sslmode_is_refused_naming_it() {
        let e = split("postgres://u@h/db?sslmode=verify_full", no_home()).unwrap_err();
        assert!(e.0.contains("sslmode=\"verify_full\""), "{}", e.0);
        assert!(e.0.contains("verify-full"), "{}", e.0);
    }

    #[test]
    fn verifying_without_a_ca_names_the_default_file_and_the_way_out() {
        let home = tempfile::tempdir().unwrap();
        let e = split("postgres://u@h/db?sslmode=verify-full", Some(home.path())).unwrap_err();
        assert!(e.0.contains("root.crt"), "{}", e.0);
        assert!(e.0.contains("sslrootcert=system"), "{}", e.0);
        // With the default file present it is used.
        let (_d, ca, _k) = pem_dir();
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        std::fs::copy(&ca, home.path().join(".postgresql/root.crt")).unwrap();
        let (_, tls) = split("postgres://u@h/db?sslmode=verify-ca", Some(home.path())).unwrap();
        assert!(matches!(tls.roots, Some(RootCerts::File { .. })));
    }

    #[test]
    fn require_with_a_ca_verifies_the_chain_as_libpq_does() {
        let (_d, ca, _k) = pem_dir();
        let url = format!(
            "postgres://u@h/db?sslmode=require&sslrootcert={}",
            ca.display()
        );
        let (_, tls) = split(&url, no_home()).unwrap();
        assert_eq!(tls.effective_mode(), SslMode::VerifyCa);
        let (_, tls) = split("postgres://u@h/db?sslmode=require", no_home()).unwrap();
        assert_eq!(tls.effective_mode(), SslMode::Require);
    }

    #[test]
    fn system_roots_need_verify_full_and_make_it_the_default() {
        let (_, tls) = split("postgres://u@h/db?sslrootcert=system", no_home()).unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert!(matches!(tls.roots, Some(RootCerts::System)));
        let e = split(
            "postgres://u@h/db?sslmode=require&sslrootcert=system",
            no_home(),
        )
        .unwrap_err();
        assert!(e.0.contains("verify-full"), "{}", e.0);
    }

    #[test]
    fn unreadable_or_empty_certificate_files_are_refused_naming_the_parameter() {
        let e = split(
            "postgres://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
            no_home(),
        )
        .unwrap_err();
        assert!(
            e.0.starts_with("sslrootcert=/nonexistent/ca.pem"),
            "{}",
            e.0
        );
        let (_d, ca, key) = pem_dir();
        let url = format!(
            "postgres://u@h/db?sslmode=verify-ca&sslrootcert={}",
            key.display()
        );
        let e = split(&url, no_home()).unwrap_err();
        assert!(e.0.contains("no PEM certificate"), "{}", e.0);
        let url = format!(
            "postgres://u@h/db?sslcert={}&sslkey={}",
            ca.display(),
            ca.display()
        );
        let e = split(&url, no_home()).unwrap_err();
        assert!(e.0.starts_with("sslkey="), "{}", e.0);
    }

    #[test]
    fn a_client_certificate_needs_both_files() {
        let (_d, cert, key) = pem_dir();
        let url = format!("postgres://u@h/db?sslcert={}", cert.display());
        assert!(split(&url, no_home())
            .unwrap_err()
            .0
            .contains("has no private key"));
        let url = format!("postgres://u@h/db?sslkey={}", key.display());
        assert!(split(&url, no_home())
            .unwrap_err()
            .0
            .contains("without sslcert"));
        let url = format!(
            "postgres://u@h/db?sslcert={}&sslkey={}",
            cert.display(),
            key.display()
        );
        let (_, tls) = split(&url, no_home()).unwrap();
        let client = tls.client.expect("client cert");
        assert_eq!(client.chain.len(), 1);
        assert!(!format!("{client:?}").contains("BEGIN"));
    }

    #[test]
    fn libpqs_default_client_files_are_used_when_the_certificate_exists() {
        let (_d, cert, key) = pem_dir();
        let home = tempfile::tempdir().unwrap();
        let url = "postgres://u@h/db?sslmode=require";
        // No default certificate: none is presented.
        let (_, tls) = split(url, Some(home.path())).unwrap();
        assert!(tls.client.is_none());
        let dot = home.path().join(".postgresql");
        std::fs::create_dir(&dot).unwrap();
        std::fs::copy(&cert, dot.join("postgresql.crt")).unwrap();
        // The certificate without its key is an error naming the file.
        let e = split(url, Some(home.path())).unwrap_err();
        assert!(e.0.contains("postgresql.key"), "{}", e.0);
        std::fs::copy(&key, dot.join("postgresql.key")).unwrap();
        set_mode(&dot.join("postgresql.key"), 0o600);
        let (_, tls) = split(url, Some(home.path())).unwrap();
        let client = tls.client.expect("the default client certificate");
        assert_eq!(client.cert_path, dot.join("postgresql.crt"));
        assert_eq!(client.key_path, dot.join("postgresql.key"));
        // Files given in the URL win; sslmode=disable reads none.
        let url = format!(
            "postgres://u@h/db?sslcert={}&sslkey={}",
            cert.display(),
            key.display()
        );
        let (_, tls) = split(&url, Some(home.path())).unwrap();
        assert_eq!(tls.client.expect("client").cert_path, cert);
        let (_, tls) = split("postgres://u@h/db?sslmode=disable", Some(home.path())).unwrap();
        assert!(tls.client.is_none());
    }

    #[test]
    fn a_private_key_readable_by_others_is_refused_as_libpq_does() {
        assert!(!key_mode_too_open(0o100600, 1000));
        assert!(!key_mode_too_open(0o100400, 1000));
        assert!(key_mode_too_open(0o100640, 1000));
        assert!(key_mode_too_open(0o100604, 1000));
        assert!(
            !key_mode_too_open(0o100640, 0),
            "root may let its group read"
        );
        assert!(key_mode_too_open(0o100660, 0));
        assert!(key_mode_too_open(0o100644, 0));
        let (_d, cert, key) = pem_dir();
        set_mode(&key, 0o644);
        let url = format!(
            "postgres://u@h/db?sslcert={}&sslkey={}",
            cert.display(),
            key.display()
        );
        let e = split(&url, no_home()).unwrap_err();
        assert!(e.0.contains("group or world access"), "{}", e.0);
        assert!(e.0.contains("chmod 0600"), "{}", e.0);
    }

    #[test]
    fn percent_encoded_paths_are_decoded() {
        let (d, ca, _k) = pem_dir();
        let spaced = d.path().join("my ca.pem");
        std::fs::copy(&ca, &spaced).unwrap();
        let url = format!(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert={}",
            spaced.display().to_string().replace(' ', "%20")
        );
        let (_, tls) = split(&url, no_home()).unwrap();
        assert!(matches!(tls.roots, Some(RootCerts::File { ref path, .. }) if *path == spaced));
    }
}
