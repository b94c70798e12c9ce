//! TLS for every database connection: a rustls connector built from the
//! typed `sslmode` / `sslrootcert` / `sslcert` / `sslkey` of `database.url`
//! ([`crate::config::db_url::DbTls`]), with libpq's meaning of each mode.
//!
//! - `prefer` and `require`: encrypted, the certificate not checked (the
//!   handshake's signatures still are);
//! - `verify-ca` (or `require` with a CA given): the chain checked against
//!   the CA certificates, the host name not;
//! - `verify-full`: the chain and the host name, each host of a multi-host
//!   URL under its own name (the driver asks for a connector per host).
//!
//! Whether TLS is asked for at all (`disable`, `prefer`, `require`) is the
//! driver's `sslmode`, set by `db::pg_config`. A refused handshake comes back
//! as [`Refused`], naming the host and, in plain words, why ([`Refusal`]);
//! SCRAM channel binding (`tls-server-end-point`) is `tokio-postgres-rustls`'s.
//! The protocol itself runs inside the driver; nothing here is async code of
//! ours beyond forwarding one future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::db_url::{DbTls, RootCerts, SslMode};

/// The connector every connection is opened with (cheap to clone: the
/// rustls configuration is shared).
#[derive(Clone)]
pub struct Connector {
    inner: MakeRustlsConnect,
    /// What a refusal message names: the mode and where the CA came from.
    setting: Arc<str>,
}

/// The TLS settings cannot be turned into a connector.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `sslrootcert=system` found no certificate in the operating system.
    #[error("sslrootcert=system: the operating system's certificate store holds no usable certificate ({0})")]
    NoSystemRoots(String),
    /// A certificate of `sslrootcert` is not a usable CA certificate.
    #[error("{roots}: a certificate in it cannot be used as a CA: {source}")]
    BadRoot {
        /// `sslrootcert=PATH`.
        roots: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// rustls refused the verifier, or the client certificate and key.
    #[error("{what}: {source}")]
    Rustls {
        /// What was being set up.
        what: String,
        /// rustls's reason.
        source: rustls::Error,
    },
}

/// Builds the connector for `tls`.
pub fn connector(tls: &DbTls) -> Result<Connector, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (tls.effective_mode(), &tls.roots) {
        (mode @ (SslMode::VerifyCa | SslMode::VerifyFull), Some(roots)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(roots)?),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| SetupError::Rustls {
                what: format!("{roots}"),
                source: rustls::Error::General(e.to_string()),
            })?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        // Config validation gives every verifying mode its CA; without one
        // the certificate is not checked (`disable`, `prefer`, `require`).
        _ => Arc::new(Unverified(Arc::clone(&provider))),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| SetupError::Rustls {
            what: "TLS protocol versions".into(),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &tls.client {
        Some(client) => builder
            .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
            .map_err(|source| SetupError::Rustls {
                what: format!(
                    "sslcert={} with sslkey={}",
                    client.cert_path.display(),
                    client.key_path.display()
                ),
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    let setting = match &tls.roots {
        Some(roots) => format!("sslmode={}, {roots}", tls.mode),
        None => format!("sslmode={}", tls.mode),
    };
    Ok(Connector {
        inner: MakeRustlsConnect::new(config),
        setting: setting.into(),
    })
}

/// The trust anchors of `roots`.
fn root_store(roots: &RootCerts) -> Result<RootCertStore, SetupError> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File { certs, .. } => {
            for cert in certs {
                store
                    .add(cert.clone())
                    .map_err(|source| SetupError::BadRoot {
                        roots: roots.to_string(),
                        source,
                    })?;
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_string(), |e| e.to_string());
                return Err(SetupError::NoSystemRoots(why));
            }
        }
    }
    Ok(store)
}

/// `verify-ca`: webpki's verification of the chain; a certificate that does
/// not name the host is accepted (webpki checks the name only after the
/// chain, so reaching that error means the chain was good).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` / `require` without a CA: any certificate, as libpq does; the
/// handshake's signatures are still verified, so the session is bound to
/// the certificate the server showed (what channel binding relies on).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl MakeTlsConnect<Socket> for Connector {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect = HostConnect<<MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Self::Error> {
        Ok(HostConnect {
            inner: MakeTlsConnect::<Socket>::make_tls_connect(&mut self.inner, host)?,
            host: host.to_string(),
            setting: Arc::clone(&self.setting),
        })
    }
}

/// One host's handshake: the inner connector's, its failure turned into
/// [`Refused`] naming the host.
pub struct HostConnect<T> {
    inner: T,
    host: String,
    setting: Arc<str>,
}

impl<T> TlsConnect<Socket> for HostConnect<T>
where
    T: TlsConnect<Socket, Error = std::io::Error>,
    T::Future: Send + 'static,
{
    type Stream = T::Stream;
    type Error = Refused;
    type Future = HostFuture<T::Future>;

    fn connect(self, stream: Socket) -> Self::Future {
        HostFuture {
            inner: Box::pin(self.inner.connect(stream)),
            host: Some((self.host, self.setting)),
        }
    }
}

/// The handshake in progress (forwards the driver's polling).
pub struct HostFuture<F> {
    inner: Pin<Box<F>>,
    host: Option<(String, Arc<str>)>,
}

impl<F, S> Future for HostFuture<F>
where
    F: Future<Output = Result<S, std::io::Error>>,
{
    type Output = Result<S, Refused>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.inner.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(stream)) => Poll::Ready(Ok(stream)),
            Poll::Ready(Err(source)) => {
                let (host, setting) = self
                    .host
                    .take()
                    .unwrap_or_else(|| (String::new(), Arc::from("")));
                let reason = Refusal::of(&source);
                Poll::Ready(Err(Refused {
                    host,
                    setting,
                    reason,
                    source,
                }))
            }
        }
    }
}

/// Why a TLS handshake failed, in the words an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The chain does not lead to a CA of `sslrootcert`.
    UnknownCa,
    /// The certificate does not name the host connected to.
    NameMismatch,
    /// The certificate has expired or is not valid yet.
    Expired,
    /// The server ended the handshake (e.g. it wants a client certificate).
    ServerAlert,
    /// Anything else (a broken connection, a protocol error).
    Other,
}

impl Refusal {
    /// Classifies the error tokio-rustls returned.
    fn of(err: &std::io::Error) -> Refusal {
        use CertificateError as C;
        let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return Refusal::Other;
        };
        match tls {
            // A CA of the same name that did not sign it: still not the CA.
            rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
                Refusal::UnknownCa
            }
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => Refusal::NameMismatch,
            rustls::Error::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            ) => Refusal::Expired,
            rustls::Error::AlertReceived(_) => Refusal::ServerAlert,
            _ => Refusal::Other,
        }
    }
}

/// A TLS handshake with one host failed.
#[derive(Debug)]
pub struct Refused {
    /// The host as written in the URL (what the certificate must name).
    pub host: String,
    /// `sslmode=…, sslrootcert=…` in effect.
    setting: Arc<str>,
    /// The reason, classified.
    pub reason: Refusal,
    /// tokio-rustls's error.
    source: std::io::Error,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (host, setting) = (&self.host, &self.setting);
        match self.reason {
            Refusal::UnknownCa => write!(
                f,
                "{host} refused: its certificate is not signed by a CA given ({setting}): unknown CA; point sslrootcert at the CA bundle that signed the server's certificate"
            ),
            Refusal::NameMismatch => write!(
                f,
                "{host} refused: its certificate does not name {host:?} ({setting}): name mismatch; connect with a host name the certificate names"
            ),
            Refusal::Expired => write!(
                f,
                "{host} refused: its certificate has expired or is not valid yet ({setting}): {}",
                self.source
            ),
            Refusal::ServerAlert => write!(
                f,
                "{host} ended the TLS handshake ({setting}): {} (does it require a client certificate, sslcert and sslkey?)",
                self.source
            ),
            Refusal::Other => write!(f, "TLS handshake with {host} failed ({setting}): {}", self.source),
        }
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classified_from_rustls_errors() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            Refusal::of(&io(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))),
            Refusal::UnknownCa
        );
        assert_eq!(
            Refusal::of(&io(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName
            ))),
            Refusal::NameMismatch
        );
        assert_eq!(Refusal::of(&std::io::Error::other("reset")), Refusal::Other);
    }

    #[test]
    fn every_mode_builds_a_connector() {
        for mode in ["disable", "prefer", "require"] {
            let (_, tls) =
                crate::config::db_url::split(&format!("postgres://h/d?sslmode={mode}"), None)
                    .expect("valid");
            assert!(connector(&tls).is_ok(), "{mode}");
        }
    }
}
