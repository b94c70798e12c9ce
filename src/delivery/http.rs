//! One HTTP attempt: a signed POST through a shared `ureq::Agent`.
//!
//! The agent is built once per process ([`Sender::new`]) and shared by every
//! worker (its clones share one keep-alive pool, which keeps up to one idle
//! connection per worker). Each connection's buffers are kept small
//! ([`BUFFER_BYTES`]): with a thousand workers they are most of what a
//! worker costs in memory. Every timeout is set
//! explicitly (connect and whole-call), redirects are not followed (a 3xx is
//! the attempt's answer), an HTTP error status is an outcome rather than an
//! error, and at most `max_response_bytes` of the body are read. TLS is
//! rustls with certificate verification against the system's trust store
//! (plus `delivery.ca_file`, see [`trust_roots`]). What the outcome *means*
//! for the delivery is decided by `state`; this module only performs and
//! describes the attempt.

use std::io::Read;
use std::time::Instant;

use chrono::{DateTime, Utc};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::transport::DefaultConnector;

use crate::config::DeliveryConfig;
use crate::delivery::resolve::{refusal, CachingResolver};
use crate::delivery::sign::SigningKeys;
use crate::delivery::ssrf::Guard;
use crate::state::{classify_status, parse_retry_after, AttemptClass, AttemptResult};

/// The `user-agent` every request carries.
pub const USER_AGENT: &str = concat!("notification-reconciler/", env!("CARGO_PKG_VERSION"));

/// What to send in one attempt.
pub struct Request<'a> {
    /// Endpoint URL (already checked by `endpoint::check_url`).
    pub url: &'a str,
    /// The event id: `webhook-id`, stable across retries.
    pub msg_id: &'a str,
    /// The JSON body.
    pub body: &'a [u8],
    /// Signing keys (the previous one too during a rotation's overlap).
    pub secret: &'a SigningKeys,
    /// Custom headers (already checked), sent after ours.
    pub headers: &'a [(String, String)],
}

/// The input and output buffer of each HTTP connection (ureq's default is
/// 128 KiB each, zero-filled on first use: 256 KiB resident per keep-alive
/// connection). The request goes out through the output buffer in pieces,
/// so only its longest line (the URL, a header) must fit; the input buffer
/// must hold the response's status line and headers.
pub const BUFFER_BYTES: usize = 16 * 1024;

/// The largest response head (status line and headers) accepted; a larger
/// one makes the attempt fail (retryable) with "response header is too
/// big". Kept under [`BUFFER_BYTES`] so that the limit, not a full buffer,
/// is what a huge head runs into. 8 KiB is what common proxies allow.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 8 * 1024;

/// Sends webhooks; cheap to share between threads by reference.
pub struct Sender {
    agent: ureq::Agent,
    max_response_bytes: usize,
}

impl Sender {
    /// Builds the shared agent from `[delivery]`, keeping up to `workers`
    /// idle keep-alive connections (one per worker: each reuses its
    /// connection to a slow receiver instead of opening a new one).
    pub fn new(cfg: &DeliveryConfig, workers: usize) -> Sender {
        let idle = workers.max(1);
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .timeout_connect(Some(cfg.connect_timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(USER_AGENT)
            .max_idle_connections(idle)
            .max_idle_connections_per_host(idle)
            .input_buffer_size(BUFFER_BYTES)
            .output_buffer_size(BUFFER_BYTES)
            .max_response_header_size(MAX_RESPONSE_HEAD_BYTES)
            // A proxy would resolve the target itself, past the SSRF guard.
            .proxy(None)
            .tls_config(
                TlsConfig::builder()
                    .root_certs(trust_roots(
                        rustls_native_certs::load_native_certs(),
                        &cfg.ca_certs,
                    ))
                    .build(),
            )
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            DefaultConnector::default(),
            CachingResolver::new(Guard::new(cfg.allow_networks.clone())),
        );
        Sender {
            agent,
            max_response_bytes: cfg.max_response_bytes,
        }
    }

    /// Performs one attempt at `now` and describes what happened. Never
    /// fails: transport errors are part of the result.
    pub fn send(&self, req: &Request<'_>, now: DateTime<Utc>) -> AttemptResult {
        let timestamp = now.timestamp();
        let signature = req.secret.header(req.msg_id, now, req.body);
        let mut builder = self
            .agent
            .post(req.url)
            .header("webhook-id", req.msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json");
        for (name, value) in req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let started = Instant::now();
        let result = builder.send(req.body);
        let mut attempt = AttemptResult {
            started_at: now,
            duration: started.elapsed(),
            url: req.url.to_string(),
            http_status: None,
            response_body: None,
            error: None,
            class: AttemptClass::Retryable,
            retry_after: None,
        };
        match result {
            Ok(mut response) => {
                let code = response.status().as_u16();
                attempt.http_status = Some(code);
                attempt.class = classify_status(code);
                attempt.retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                let mut body = Vec::with_capacity(self.max_response_bytes.min(4096));
                let read = response
                    .body_mut()
                    .as_reader()
                    .take(self.max_response_bytes as u64)
                    .read_to_end(&mut body);
                if let Err(e) = read {
                    // The status arrived; the body broke off. Keep what came.
                    attempt.error = Some(format!("reading the response body: {e}"));
                }
                if !body.is_empty() {
                    attempt.response_body = Some(String::from_utf8_lossy(&body).into_owned());
                }
            }
            Err(e) => {
                attempt.error = Some(describe(&e));
                if refusal(&e).is_some() {
                    // Resolving again will not make it an allowed address.
                    attempt.class = AttemptClass::Permanent;
                }
            }
        }
        attempt.duration = started.elapsed();
        attempt
    }
}

/// The certificates a server's chain may end in: the system's trust store
/// (`system`, as `rustls-native-certs` finds it: `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when set, else the distribution's bundle, e.g.
/// `/etc/ssl/certs` where `update-ca-certificates` puts an added CA), plus
/// `extra` (`delivery.ca_file`). When the system has no store at all (a
/// bare container) and no `extra` is given, the bundled Mozilla roots are
/// used instead, with a warning, so public endpoints still verify.
pub fn trust_roots(
    system: rustls_native_certs::CertificateResult,
    extra: &[Certificate<'static>],
) -> RootCerts {
    for error in &system.errors {
        log::warn!("reading the system's CA certificates: {error}");
    }
    if system.certs.is_empty() && extra.is_empty() {
        log::warn!(
            "no CA certificates found in the system's trust store; HTTPS endpoints are verified against the bundled Mozilla roots"
        );
        return RootCerts::WebPki;
    }
    if system.certs.is_empty() {
        log::warn!(
            "no CA certificates found in the system's trust store: HTTPS endpoints are verified against delivery.ca_file only, so public endpoints will fail verification"
        );
    }
    log::debug!(
        "trusting {} system CA certificate(s) and {} from delivery.ca_file",
        system.certs.len(),
        extra.len()
    );
    system
        .certs
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .chain(extra.iter().cloned())
        .into()
}

/// One line for a transport error.
fn describe(err: &ureq::Error) -> String {
    match err {
        ureq::Error::Timeout(what) => format!("timed out ({what})"),
        other => match refusal(other) {
            Some(refused) => {
                // Operators see the address; the delivery's reason (which
                // the customer sees) does not.
                log::warn!("delivery: {refused}");
                refused.public_reason()
            }
            None => other.to_string(),
        },
    }
}
