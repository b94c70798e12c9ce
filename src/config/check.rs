//! Plausibility of a configuration as a whole: settings that are each valid
//! on their own but together make deliveries or retries impossible are
//! refused ([`refuse_impossible`], called at the end of
//! `RawConfig::resolve`, so every command refuses them with exit 2), and
//! settings that are merely suspicious are listed ([`warnings`]: printed by
//! `check-config` and logged when `run` starts).
//!
//! Both are pure functions of a resolved [`Config`]; the rules for a single
//! key (ranges, formats) stay in `config`. Every message names the keys
//! involved and their values as `check-config` prints them.

use std::time::Duration;

use crate::config::{format_duration, Config, ConfigError};

/// Shortest `delivery.timeout` and `delivery.connect_timeout` accepted: in
/// less, no receiver can be reached and answer, so every attempt would time
/// out.
pub const MIN_DELIVERY_TIMEOUT: Duration = Duration::from_millis(10);

/// Below this `delivery.timeout` draws a warning: receivers over a real
/// network, TLS handshake included, often need longer.
pub const SHORT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Refuses combinations under which no delivery, or no retry, could ever
/// happen. The first problem found is the error.
pub fn refuse_impossible(config: &Config) -> Result<(), ConfigError> {
    let invalid = |key: &'static str, value: Duration, problem: String| ConfigError::Invalid {
        path: config.path.clone(),
        key,
        value: quoted(value),
        problem,
    };
    let (r, d) = (&config.reconciler, &config.delivery);
    for (key, value) in [
        ("delivery.timeout", d.timeout),
        ("delivery.connect_timeout", d.connect_timeout),
    ] {
        if value < MIN_DELIVERY_TIMEOUT {
            return Err(invalid(
                key,
                value,
                format!(
                    "must be at least {}: no receiver can be reached and answer in less, so every attempt would time out",
                    format_duration(MIN_DELIVERY_TIMEOUT)
                ),
            ));
        }
    }
    if r.pending_timeout <= r.next_attempt_delay {
        return Err(invalid(
            "reconciler.pending_timeout",
            r.pending_timeout,
            format!(
                "is not longer than reconciler.next_attempt_delay = {}: every delivery would time out before it is due, so none could ever be attempted",
                quoted(r.next_attempt_delay)
            ),
        ));
    }
    // The sending timeout counts from the delivery's creation. Its first
    // attempt is due `next_attempt_delay` after that, and the retry the
    // first step plus the delay again after the attempt.
    let first = d.retry_schedule.first().copied().unwrap_or_default();
    if r.sending_timeout <= first + r.next_attempt_delay * 2 {
        return Err(invalid(
            "reconciler.sending_timeout",
            r.sending_timeout,
            format!(
                "is not longer than the first retry step (delivery.retry_schedule[0] = {}{}): the first retry would be due after the sending timeout, so no delivery could ever be retried",
                quoted(first),
                if r.next_attempt_delay.is_zero() {
                    String::new()
                } else {
                    format!(
                        " plus twice reconciler.next_attempt_delay = {}: once before the first attempt, once before the retry",
                        quoted(r.next_attempt_delay)
                    )
                }
            ),
        ));
    }
    Ok(())
}

/// Suspicious but possible settings, one sentence each naming the keys.
pub fn warnings(config: &Config) -> Vec<String> {
    let (r, d) = (&config.reconciler, &config.delivery);
    let mut out = Vec::new();
    if d.timeout < SHORT_DELIVERY_TIMEOUT {
        out.push(format!(
            "delivery.timeout = {} is under {}: a receiver over a real network (TLS handshake included) often needs longer, so attempts may time out",
            quoted(d.timeout),
            format_duration(SHORT_DELIVERY_TIMEOUT)
        ));
    }
    if d.connect_timeout > d.timeout {
        out.push(format!(
            "delivery.connect_timeout = {} is longer than delivery.timeout = {}: the whole-attempt timeout ends a slow connect first",
            quoted(d.connect_timeout),
            quoted(d.timeout)
        ));
    }
    // The n-th retry is due at the earliest after the first attempt's wait
    // for the due cut-off and the first n steps (each also waiting for it).
    let mut elapsed = r.next_attempt_delay;
    let fitting = d
        .retry_schedule
        .iter()
        .take_while(|step| {
            elapsed += **step + r.next_attempt_delay;
            elapsed < r.sending_timeout
        })
        .count();
    if fitting < d.retry_schedule.len() {
        let total: Duration = d.retry_schedule.iter().sum();
        out.push(format!(
            "reconciler.sending_timeout = {} is shorter than delivery.retry_schedule (its {} steps add up to {}): only {} of the {} retries can be made before the sending timeout fails the delivery",
            quoted(r.sending_timeout),
            d.retry_schedule.len(),
            format_duration(total),
            fitting,
            d.retry_schedule.len()
        ));
    }
    if let Some(other) = r.lock_key.strip_suffix(".event_handler.reconcile_lock") {
        if other != config.database.schema {
            out.push(format!(
                "reconciler.lock_key = {:?} is the default lock key of schema {other:?}, not of database.schema = {:?}: a deployment on schema {other:?} in the same database would share this lock (leave lock_key out to use this schema's own)",
                r.lock_key, config.database.schema
            ));
        }
    }
    if r.pending_timeout < r.interval {
        out.push(format!(
            "reconciler.pending_timeout = {} is shorter than reconciler.interval = {}: a delivery whose wake-up notification is lost waits up to one interval for its first attempt and may fail before it",
            quoted(r.pending_timeout),
            quoted(r.interval)
        ));
    }
    if let Some(i) = d.retry_schedule.iter().position(Duration::is_zero) {
        out.push(format!(
            "delivery.retry_schedule[{i}] = \"0s\": a retry without a pause hammers a receiver that is failing"
        ));
    }
    if let Some(addr) = config.api.listen {
        if !addr.ip().is_loopback() {
            out.push(format!(
                "api.listen = \"{addr}\" is not a loopback address: the API speaks plain HTTP and its bearer tokens would cross the network in clear; listen on 127.0.0.1 behind a TLS reverse proxy (docs/api.md)"
            ));
        }
    }
    out.extend(database_tls_warning(config));
    out
}

/// `database.url` reaches a host over the network without `verify-full`:
/// the server's identity is not checked (and `prefer` may not even encrypt),
/// so anyone on the path could read signing secrets and payloads.
fn database_tls_warning(config: &Config) -> Option<String> {
    use crate::config::db_url::SslMode;
    use postgres::config::Host;
    let db = &config.database;
    let mode = db.tls.effective_mode();
    if mode == SslMode::VerifyFull {
        return None;
    }
    let pg: postgres::Config = db.driver_url.parse().ok()?;
    let remote: Vec<&str> = pg
        .get_hosts()
        .iter()
        .filter_map(|h| match h {
            Host::Tcp(name) if !is_loopback_host(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if remote.is_empty() {
        return None;
    }
    let what = match mode {
        SslMode::Disable => "in clear",
        SslMode::Prefer => {
            "encrypted only if the server offers TLS, and without checking its certificate"
        }
        SslMode::Require => "without checking the server's certificate",
        _ => "without checking that the server's certificate names the host",
    };
    let written = if mode == db.tls.mode {
        format!("sslmode={mode}")
    } else {
        format!("sslmode={} (with sslrootcert: {mode})", db.tls.mode)
    };
    Some(format!(
        "database.url: {} reached with {written}, that is {what}: anyone on the network path could read or change what the service sends and stores (signing secrets, payloads); use sslmode=verify-full with sslrootcert=<your provider's CA bundle> or sslrootcert=system (docs/operations.md)",
        remote.join(", ")
    ))
}

/// Whether a URL host is this machine: `localhost` or a loopback address.
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What `check-config` says when no `[secrets] key_file` is set: signing
/// secrets and header values are then stored in plain (`run` does not
/// repeat it on every start).
pub fn secrets_warning(config: &Config) -> Option<String> {
    config.secrets.key.is_none().then(|| {
        "secrets.key_file is not set: signing secrets and custom header values are stored in plain, so a backup, a dump or a replica holds them; set it to a file of 32 random bytes as base64 (head -c 32 /dev/urandom | base64) and run `migrate` to encrypt them".to_string()
    })
}

/// A duration as written in the file, quoted.
fn quoted(d: Duration) -> String {
    format!("\"{}\"", format_duration(d))
}

#[cfg(test)]
mod tests {
    use crate::config::load_text as load;

    use super::*;

    #[test]
    fn an_api_on_a_non_loopback_address_is_warned_about() {
        let w = warned("[api]\nlisten = \"0.0.0.0:8080\"\n");
        assert!(
            w.iter()
                .any(|w| w.contains("api.listen = \"0.0.0.0:8080\"")),
            "{w:?}"
        );
        assert!(warned("[api]\nlisten = \"127.0.0.1:8080\"\n").is_empty());
    }

    #[test]
    fn a_remote_database_without_verify_full_is_warned_about() {
        let w = warned("[database]\nurl = \"postgres://u:hunter2@db.example:5432/x\"\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("db.example") && w[0].contains("sslmode=prefer"),
            "{w:?}"
        );
        assert!(!w[0].contains("hunter2"), "{w:?}");
        let w = warned(
            "[database]\nurl = \"postgres://u@db1.example,127.0.0.1/x?sslmode=require&target_session_attrs=read-write\"\n",
        );
        assert!(
            w[0].contains("db1.example reached with sslmode=require"),
            "{w:?}"
        );
        assert!(!w[0].contains("127.0.0.1"), "{w:?}");
        // Loopback hosts and unix sockets draw nothing.
        for url in [
            "postgres://u@localhost/x?sslmode=disable",
            "postgres://u@[::1]:5432/x",
            "postgres://u@%2Frun%2Fpostgresql/x",
        ] {
            assert!(
                warned(&format!("[database]\nurl = \"{url}\"\n")).is_empty(),
                "{url}"
            );
        }
    }

    fn warned(text: &str) -> Vec<String> {
        warnings(&load(text).expect("config is valid"))
    }

    #[test]
    fn the_defaults_are_possible_and_draw_no_warning() {
        assert_eq!(warned(""), Vec::<String>::new());
    }

    #[test]
    fn no_key_file_draws_the_secrets_warning() {
        let w = secrets_warning(&load("").unwrap()).unwrap();
        assert!(w.contains("secrets.key_file"), "{w}");
    }

    #[test]
    fn a_delivery_timeout_under_10ms_is_refused() {
        let e = load("[delivery]\ntimeout = \"5ms\"\n").unwrap_err();
        assert!(
            e.contains("delivery.timeout = \"5ms\": must be at least 10ms"),
            "{e}"
        );
        let e = load("[delivery]\nconnect_timeout = \"9ms\"\n").unwrap_err();
        assert!(e.contains("delivery.connect_timeout = \"9ms\""), "{e}");
        assert!(load("[delivery]\ntimeout = \"10ms\"\nconnect_timeout = \"10ms\"\n").is_ok());
    }

    #[test]
    fn a_sending_timeout_not_longer_than_the_first_step_is_refused() {
        let e = load("[reconciler]\nsending_timeout = \"4s\"\n").unwrap_err();
        assert!(e.contains("reconciler.sending_timeout = \"4s\""), "{e}");
        assert!(e.contains("delivery.retry_schedule[0] = \"5s\""), "{e}");
        let e = load("[reconciler]\nsending_timeout = \"5s\"\n").unwrap_err();
        assert!(e.contains("no delivery could ever be retried"), "{e}");
        // The due cut-off delays every retry too.
        let e = load("[reconciler]\nsending_timeout = \"1m\"\nnext_attempt_delay = \"1m\"\n")
            .unwrap_err();
        assert!(e.contains("reconciler.next_attempt_delay = \"1m\""), "{e}");
        // Twice: the first attempt waits for it too (creation + 1m), so the
        // retry is due at creation + 1m + 5s + 1m at the earliest.
        let e = load(
            "[reconciler]\nsending_timeout = \"70s\"\nnext_attempt_delay = \"1m\"\n[delivery]\nretry_schedule = [\"5s\"]\n",
        )
        .unwrap_err();
        assert!(e.contains("reconciler.sending_timeout = \"70s\""), "{e}");
        assert!(e.contains("twice reconciler.next_attempt_delay"), "{e}");
        assert!(load(
            "[reconciler]\nsending_timeout = \"126s\"\nnext_attempt_delay = \"1m\"\n[delivery]\nretry_schedule = [\"5s\"]\n",
        )
        .is_ok());
        assert!(load("[reconciler]\nsending_timeout = \"6s\"\n").is_ok());
    }

    #[test]
    fn a_pending_timeout_not_longer_than_the_due_delay_is_refused() {
        let e = load("[reconciler]\npending_timeout = \"5m\"\nnext_attempt_delay = \"5m\"\n")
            .unwrap_err();
        assert!(e.contains("reconciler.pending_timeout = \"5m\""), "{e}");
        assert!(e.contains("reconciler.next_attempt_delay = \"5m\""), "{e}");
    }

    #[test]
    fn another_schemas_default_lock_key_is_warned_about() {
        let w = warned(
            "[database]\nschema = \"billing\"\n[reconciler]\nlock_key = \"notification.event_handler.reconcile_lock\"\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("default lock key of schema \"notification\""),
            "{w:?}"
        );
        assert!(w[0].contains("database.schema = \"billing\""), "{w:?}");
        assert!(warned("[database]\nschema = \"billing\"\n").is_empty());
        assert!(
            warned("[reconciler]\nlock_key = \"notification.event_handler.reconcile_lock\"\n")
                .is_empty()
        );
    }

    #[test]
    fn suspicious_settings_are_warned_about_naming_the_keys() {
        let w = warned("[delivery]\ntimeout = \"200ms\"\nconnect_timeout = \"100ms\"\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("delivery.timeout = \"200ms\" is under 1s"),
            "{w:?}"
        );
        let w = warned("[delivery]\ntimeout = \"5s\"\n");
        assert!(
            w[0].starts_with(
                "delivery.connect_timeout = \"10s\" is longer than delivery.timeout = \"5s\""
            ),
            "{w:?}"
        );
        let w = warned("[reconciler]\nsending_timeout = \"1h\"\n");
        assert!(
            w[0].contains("reconciler.sending_timeout = \"1h\""),
            "{w:?}"
        );
        assert!(w[0].contains("only 3 of the 7 retries"), "{w:?}");
        let w = warned("[reconciler]\npending_timeout = \"10s\"\n");
        assert!(w[0].contains("reconciler.pending_timeout = \"10s\" is shorter than reconciler.interval = \"15s\""), "{w:?}");
        let w = warned("[delivery]\nretry_schedule = [\"5s\", \"0s\"]\n");
        assert!(
            w[0].starts_with("delivery.retry_schedule[1] = \"0s\""),
            "{w:?}"
        );
    }
}
