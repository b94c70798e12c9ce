//! `sink`: a development webhook receiver. It answers every POST, verifies
//! the Standard Webhooks signature and timestamp when given a secret (401
//! when wrong), can fail a fraction of requests with 500 and answer after a
//! latency so that retries can be watched, and prints one line per delivery:
//! id, type, verified or not, status returned. The secret comes from
//! `--secret`, `--secret-file` or the `SINK_SECRET` environment variable
//! (the last two keep it out of `ps`). Not meant for production.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng;

use crate::delivery::sign::{self, Secret};
use crate::exit::UsageError;
use crate::http_server::{Limits, Request, Response, Server};

/// `sink …`: its flags (it reads no config file).
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Verify signatures with this secret (401 when wrong). Visible in `ps`:
    /// prefer --secret-file or the SINK_SECRET environment variable.
    #[arg(long, conflicts_with = "secret_file")]
    pub secret: Option<String>,
    /// Read the secret from this file (surrounding whitespace ignored).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<std::path::PathBuf>,
    /// Status code of successful answers.
    #[arg(long, default_value_t = 200)]
    pub status: u16,
    /// Fraction of requests answered with 500 (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Delay before each answer, e.g. 200ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub latency: Option<std::time::Duration>,
}

/// Accepted clock skew of `webhook-timestamp` (as the Standard Webhooks
/// libraries do).
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Largest request body the sink reads.
const MAX_BODY: usize = 10 * 1024 * 1024;

/// The environment variable the sink takes its secret from when neither
/// `--secret` nor `--secret-file` is given (keeps it out of `ps`).
pub const SECRET_ENV: &str = "SINK_SECRET";

/// The secret's text and where it came from (for messages): `--secret`,
/// else `--secret-file` (trimmed), else `env` (the value of [`SECRET_ENV`],
/// ignored when empty), else none.
fn secret_text(
    args: &SinkArgs,
    env: Option<String>,
) -> Result<Option<(String, String)>, UsageError> {
    if let Some(secret) = &args.secret {
        return Ok(Some((secret.clone(), "--secret".into())));
    }
    if let Some(path) = &args.secret_file {
        let source = format!("--secret-file {}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("{source}: cannot read the file: {e}")))?;
        return Ok(Some((text.trim().to_string(), source)));
    }
    Ok(env
        .filter(|v| !v.trim().is_empty())
        .map(|v| (v.trim().to_string(), SECRET_ENV.to_string())))
}

/// What the sink decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Status code to answer.
    pub status: u16,
    /// `verified`, `not verified` (no secret given: the signature, if any,
    /// was not checked) or the verification error.
    pub verification: String,
}

/// Runs the sink until killed.
pub fn run(args: &SinkArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        return Err(UsageError(format!(
            "--fail-rate {} must be between 0.0 and 1.0",
            args.fail_rate
        ))
        .into());
    }
    if !(100..=599).contains(&args.status) {
        return Err(UsageError(format!(
            "--status {} is not an HTTP status code (100-599)",
            args.status
        ))
        .into());
    }
    let secret = match secret_text(args, std::env::var(SECRET_ENV).ok())? {
        Some((text, source)) => {
            Some(Secret::parse(&text).map_err(|e| UsageError(format!("{source}: {e}")))?)
        }
        None => None,
    };
    let verified = if secret.is_some() {
        "verified"
    } else {
        "not verified"
    };
    let (status, fail_rate, latency) = (args.status, args.fail_rate, args.latency);
    let limits = Limits {
        max_body: MAX_BODY,
        ..Limits::default()
    };
    let server = Server::bind(args.listen, limits, move |request| {
        serve(request, secret.as_ref(), status, fail_rate, latency)
    })
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "sink listening on http://{} (signatures {}, fail rate {}, latency {})",
        server.addr(),
        verified,
        args.fail_rate,
        args.latency
            .map(|l| humantime::format_duration(l).to_string())
            .unwrap_or_else(|| "0s".into())
    );
    server.wait();
    Ok(ExitCode::SUCCESS)
}

fn serve(
    request: &Request,
    secret: Option<&Secret>,
    status: u16,
    fail_rate: f64,
    latency: Option<Duration>,
) -> Response {
    let header = |name: &str| request.header(name).unwrap_or_default().to_string();
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    if let Some(l) = latency {
        std::thread::sleep(l);
    }
    let fail = rand::rng().random_bool(fail_rate.clamp(0.0, 1.0));
    let verdict = decide(
        secret,
        &id,
        &timestamp,
        &signature,
        &request.body,
        chrono::Utc::now().timestamp(),
        status,
        fail,
    );
    let event_type = serde_json::from_slice::<serde_json::Value>(&request.body)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(String::from))
        .unwrap_or_else(|| "?".into());
    println!(
        "{} {} id={} type={} {} -> {}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        request.method,
        if id.is_empty() { "-" } else { &id },
        event_type,
        verdict.verification,
        verdict.status
    );
    Response::status(verdict.status)
}

/// The sink's decision for one request (pure; `fail` is the dice roll).
#[allow(clippy::too_many_arguments)]
pub fn decide(
    secret: Option<&Secret>,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_unix: i64,
    status: u16,
    fail: bool,
) -> Verdict {
    let verification = match secret {
        None => "not verified".to_string(),
        Some(secret) => {
            match sign::verify(
                secret,
                id,
                timestamp,
                signature,
                body,
                now_unix,
                TIMESTAMP_TOLERANCE,
            ) {
                Ok(()) => "verified".to_string(),
                Err(e) => {
                    return Verdict {
                        status: 401,
                        verification: format!("REJECTED ({e})"),
                    }
                }
            }
        }
    };
    Verdict {
        status: if fail { 500 } else { status },
        verification,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn good_signature_is_accepted_wrong_and_stale_are_refused() {
        let secret = Secret::parse(SECRET).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let now = 1614265330;
        let sig = secret.sign("msg_1", now, body);
        let ok = decide(
            Some(&secret),
            "msg_1",
            &now.to_string(),
            &sig,
            body,
            now,
            200,
            false,
        );
        assert_eq!(ok.status, 200);
        assert_eq!(ok.verification, "verified");
        let other = Secret::parse(&Secret::generate()).unwrap();
        let wrong = decide(
            Some(&other),
            "msg_1",
            &now.to_string(),
            &sig,
            body,
            now,
            200,
            false,
        );
        assert_eq!(wrong.status, 401);
        let stale = decide(
            Some(&secret),
            "msg_1",
            &now.to_string(),
            &sig,
            body,
            now + 3600,
            200,
            false,
        );
        assert_eq!(stale.status, 401);
        assert!(stale.verification.contains("REJECTED"));
    }

    #[test]
    fn fail_rate_and_status_apply_after_verification() {
        let v = decide(None, "", "", "", b"", 0, 204, false);
        assert_eq!((v.status, v.verification.as_str()), (204, "not verified"));
        assert_eq!(decide(None, "", "", "", b"", 0, 204, true).status, 500);
    }
}
