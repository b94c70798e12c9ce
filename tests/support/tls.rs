//! A private certificate authority for the HTTPS tests and the benchmark:
//! a CA generated afresh by `rcgen` (nothing is installed on the machine),
//! its PEM written into a temp dir for `delivery.ca_file` or
//! `SSL_CERT_FILE`, and a rustls server configuration for 127.0.0.1 signed
//! by it, which [`super::Receiver::start_https`] serves with. [`PgCerts`]
//! does the same for a PostgreSQL server with `ssl = on` (and a client
//! certificate). What the daemon must do with them is the tests' business.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A throw-away CA and a server certificate it signed for `127.0.0.1` and
/// `localhost`.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server configuration presenting the signed certificate.
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// Generates the CA and the server certificate.
    pub fn new() -> TestCa {
        let ca_key = KeyPair::generate().expect("tls: CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("tls: CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "notification-reconciler test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .expect("tls: self-sign the CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().expect("tls: server key");
        let leaf_params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("tls: server params");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("tls: sign the server certificate");

        let chain = vec![
            CertificateDer::from(leaf.der().to_vec()),
            CertificateDer::from(ca_cert.der().to_vec()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls: protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("tls: server config");
        let dir = tempfile::Builder::new()
            .prefix("nr-test-ca-")
            .tempdir()
            .expect("tls: temp dir");
        let ca_pem = ca_cert.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).expect("tls: write ca.pem");
        TestCa {
            dir,
            ca_pem,
            server: Arc::new(server),
        }
    }

    /// The CA certificate as `DeliveryConfig::ca_certs` holds it (what
    /// `delivery.ca_file` would give).
    pub fn ca_certs(&self) -> Vec<ureq::tls::Certificate<'static>> {
        ureq::tls::parse_pem(self.ca_pem.as_bytes())
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// A PEM file holding only the CA certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// Certificates for a PostgreSQL server with `ssl = on`: a CA of their own,
/// a server certificate it signed for the given names, and a client
/// certificate for user `postgres` (CN = the user name, what `cert`
/// authentication checks). The CA and the client's files are written into
/// a temp dir for `sslrootcert`, `sslcert` and `sslkey`; the server's go
/// into the cluster with [`PgCerts::install`].
pub struct PgCerts {
    dir: tempfile::TempDir,
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

impl PgCerts {
    /// Generates the CA, a server certificate naming `server_names` (DNS
    /// names or IP addresses) and the client certificate.
    pub fn new(server_names: &[&str]) -> PgCerts {
        // A name of its own: two of these CAs are as unrelated as two
        // providers' CAs.
        let (ca_params, ca_key) = ca_params(&format!(
            "notification-reconciler test database CA {}",
            uuid::Uuid::new_v4()
        ));
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .expect("tls: self-sign the CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("tls: server key");
        let names: Vec<String> = server_names.iter().map(|n| n.to_string()).collect();
        let server = CertificateParams::new(names)
            .expect("tls: server params")
            .signed_by(&server_key, &issuer)
            .expect("tls: sign the server certificate");

        let client_key = KeyPair::generate().expect("tls: client key");
        let mut client_params =
            CertificateParams::new(Vec::<String>::new()).expect("tls: client params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "postgres");
        let client = client_params
            .signed_by(&client_key, &issuer)
            .expect("tls: sign the client certificate");

        let dir = tempfile::Builder::new()
            .prefix("nr-test-pg-ca-")
            .tempdir()
            .expect("tls: temp dir");
        let ca_pem = ca_cert.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).expect("tls: write ca.pem");
        std::fs::write(dir.path().join("client.crt"), client.pem()).expect("tls: write client.crt");
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem())
            .expect("tls: write client.key");
        // Private keys readable by others are refused, as libpq does.
        std::fs::set_permissions(
            dir.path().join("client.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("tls: chmod client.key");
        PgCerts {
            dir,
            ca_pem,
            server_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }

    /// The CA certificate file (`sslrootcert`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The client certificate file (`sslcert`).
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    /// The client key file (`sslkey`).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// The `postgresql.conf` lines that turn TLS on with the files
    /// [`PgCerts::install`] writes.
    pub const SETTINGS: &'static str =
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n";

    /// A dedicated cluster with TLS on (and `extra` settings), `hba` as its
    /// whole `pg_hba.conf`, started. Keep a `local … trust` line in `hba`
    /// for the test's own client ([`super::Cluster::socket_url_for`]).
    pub fn start_cluster(&self, hba: &str, extra: &str) -> super::Cluster {
        let cluster = super::Cluster::prepare_with(&format!("{}{extra}", PgCerts::SETTINGS));
        self.install(&cluster);
        cluster.write_file("pg_hba.conf", hba.as_bytes());
        cluster.start();
        cluster
    }

    /// [`PgCerts::start_cluster`] for a cluster prepared by the caller with
    /// [`PgCerts::SETTINGS`] among its settings (e.g. a durable one).
    pub fn start_prepared(&self, cluster: &super::Cluster, hba: &str) {
        self.install(cluster);
        cluster.write_file("pg_hba.conf", hba.as_bytes());
        cluster.start();
    }

    /// Writes the server certificate, its key and the CA (for client
    /// certificates) into `cluster`'s data directory.
    pub fn install(&self, cluster: &super::Cluster) {
        cluster.write_file("server.crt", self.server_pem.as_bytes());
        cluster.write_file("server.key", self.server_key_pem.as_bytes());
        cluster.write_file("root.crt", self.ca_pem.as_bytes());
    }
}

/// A CA's parameters and key.
fn ca_params(name: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().expect("tls: CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("tls: CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params, key)
}
