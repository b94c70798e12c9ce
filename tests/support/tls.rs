//! A private certificate authority for the HTTPS tests and the benchmark:
//! a CA generated afresh by `rcgen` (nothing is installed on the machine),
//! its PEM written into a temp dir for `delivery.ca_file` or
//! `SSL_CERT_FILE`, and a rustls server configuration for 127.0.0.1 signed
//! by it, which [`super::Receiver::start_https`] serves with. What the
//! daemon must do with it is the tests' business.

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
