//! Svix as the delivery provider (`delivery.provider = "svix"`): a small
//! synchronous client of the Svix API (through `ureq`, like the HTTP
//! sender) and the worker's Svix step.
//!
//! The shape: one Svix application per namespace (uid = the namespace),
//! one endpoint per channel (uid = the channel id, listening to the Svix
//! channel named by the channel id, so a message reaches exactly that
//! endpoint). A delivery becomes one message whose `eventId` is the
//! delivery's idempotency key ([`idempotency_key`]: the status id and its
//! resend round), sent with the same `idempotency-key` header: a hand-over
//! repeated after a crash or a timeout finds the message already there
//! (Svix answers 409 for a taken `eventId`, or replays its answer for a
//! known key) and never makes a second one. What Svix then reports is
//! turned into our states by the pure [`map`].
//!
//! The SSRF guard applies to webhook targets, not to `[svix] url`: the
//! operator configures that address (often a loopback or private one) and
//! it receives no customer-supplied URL; Svix applies its own guard to the
//! endpoints it calls.

pub mod batch;
pub mod map;

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use ureq::tls::TlsConfig;

use crate::config::{DeliveryConfig, SvixConfig};
use crate::delivery::http::{trust_roots, USER_AGENT};
use crate::state::Verdict;
use map::{Observed, SvixAttempt, SvixStatus};

/// Svix's attempts of one message to one endpoint, oldest first, with
/// Svix's id of the message (known once there is an attempt).
pub type MessageAttempts = (Vec<SvixAttempt>, Option<String>);

/// The endpoint's status for a message and Svix's next attempt.
pub type Destination = (Option<SvixStatus>, Option<DateTime<Utc>>);

/// The largest Svix answer read (an attempt list with response bodies).
const MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

/// Why a call to Svix did not give what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvixError {
    /// No answer: connection refused, timeout, TLS, a broken answer.
    Unreachable(String),
    /// Svix answered with this status (not a success).
    Answered {
        /// The HTTP status.
        status: u16,
        /// Svix's message (its `detail`, or the body's start).
        message: String,
    },
}

impl SvixError {
    /// Worth retrying later: no answer, 5xx, 429, 408.
    pub fn is_transient(&self) -> bool {
        match self {
            SvixError::Unreachable(_) => true,
            SvixError::Answered { status, .. } => matches!(status, 408 | 429 | 500..=599),
        }
    }

    /// The HTTP status, when Svix answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            SvixError::Unreachable(_) => None,
            SvixError::Answered { status, .. } => Some(*status),
        }
    }
}

impl std::fmt::Display for SvixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SvixError::Unreachable(why) => write!(f, "Svix unreachable: {why}"),
            SvixError::Answered { status, message } => {
                write!(f, "Svix answered HTTP {status}: {message}")
            }
        }
    }
}

impl std::error::Error for SvixError {}

/// What a channel's endpoint should be in Svix (and what it is, read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The channel id (the endpoint's uid, and its only Svix channel).
    pub uid: String,
    /// The webhook URL.
    pub url: String,
    /// The signing secret (`whsec_…`).
    pub secret: String,
    /// Custom headers.
    pub headers: BTreeMap<String, String>,
    /// Disabled.
    pub disabled: bool,
    /// Messages per second (`throttleRate`); `None` = unlimited.
    pub throttle_rate: Option<u16>,
    /// The Svix channels the endpoint listens to (ours: the uid alone).
    pub channels: Vec<String>,
}

impl EndpointSpec {
    /// The names of the fields where `actual` differs from `self`.
    pub fn differences(&self, actual: &EndpointSpec) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.url != actual.url {
            out.push("url");
        }
        if self.secret != actual.secret {
            out.push("secret");
        }
        if self.headers != actual.headers {
            out.push("headers");
        }
        if self.disabled != actual.disabled {
            out.push("disabled");
        }
        if self.throttle_rate != actual.throttle_rate {
            out.push("rate_limit");
        }
        if self.channels != actual.channels {
            out.push("channels");
        }
        out
    }
}

/// A Svix API client; cheap to share between threads by reference.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    authorization: String,
    max_response_bytes: usize,
    batches: batch::Batches,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("svix::Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The Svix answer to one call: status and parsed JSON (`Null` when empty).
struct Answer {
    status: u16,
    body: Value,
}

impl Client {
    /// Builds the client from `[svix]`, keeping up to `idle` keep-alive
    /// connections; response bodies copied from Svix are cut at
    /// `delivery.max_response_bytes`.
    pub fn new(cfg: &SvixConfig, delivery: &DeliveryConfig, idle: usize) -> Client {
        let idle = idle.max(1);
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(USER_AGENT)
            .max_idle_connections(idle)
            .max_idle_connections_per_host(idle)
            .proxy(None)
            .tls_config(
                TlsConfig::builder()
                    .root_certs(trust_roots(
                        rustls_native_certs::load_native_certs(),
                        &delivery.ca_certs,
                    ))
                    .build(),
            )
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            base: cfg.url.clone(),
            authorization: format!("Bearer {}", cfg.token),
            max_response_bytes: delivery.max_response_bytes,
            batches: batch::Batches::default(),
        }
    }

    /// A `GET` of `path`: its body on 2xx, `None` on 404 (no such object),
    /// any other answer an error.
    fn get_found(&self, path: &str) -> Result<Option<Value>, SvixError> {
        let a = self.call("GET", path, None, None)?;
        match a.status {
            404 => Ok(None),
            200..=299 => Ok(Some(a.body)),
            _ => Err(answered(a)),
        }
    }

    /// One call; any answer (even 4xx/5xx) is `Ok`.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, SvixError> {
        let url = format!("{}{path}", self.base);
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", &self.authorization)
            .header("accept", "application/json");
        let request = match idempotency_key {
            Some(key) => request.header("idempotency-key", key),
            None => request,
        };
        let sent = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(body.to_owned())
                .map_err(|e| SvixError::Unreachable(format!("building the request: {e}")))
                .and_then(|r| {
                    self.agent
                        .run(r)
                        .map_err(|e| SvixError::Unreachable(describe(&e)))
                }),
            None => request
                .body(())
                .map_err(|e| SvixError::Unreachable(format!("building the request: {e}")))
                .and_then(|r| {
                    self.agent
                        .run(r)
                        .map_err(|e| SvixError::Unreachable(describe(&e)))
                }),
        };
        let mut response = sent?;
        let status = response.status().as_u16();
        let mut text = Vec::new();
        response
            .body_mut()
            .as_reader()
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut text)
            .map_err(|e| SvixError::Unreachable(format!("reading Svix's answer: {e}")))?;
        let body = if text.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice(&text) {
                Ok(v) => v,
                Err(_) if !(200..300).contains(&status) => {
                    Value::String(String::from_utf8_lossy(&text).chars().take(200).collect())
                }
                Err(e) => {
                    return Err(SvixError::Unreachable(format!(
                        "Svix's answer to {method} {path} is not JSON: {e}"
                    )))
                }
            }
        };
        Ok(Answer { status, body })
    }

    /// A call that must succeed (2xx).
    fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, SvixError> {
        let a = self.call(method, path, body, idempotency_key)?;
        if (200..300).contains(&a.status) {
            Ok(a.body)
        } else {
            Err(answered(a))
        }
    }

    /// `GET /api/v1/health/ping/`: whether Svix answers.
    pub fn ping(&self) -> Result<(), SvixError> {
        self.ok("GET", "/api/v1/health/ping/", None, None)
            .map(|_| ())
    }

    /// Creates or updates the namespace's application (uid = namespace).
    pub fn ensure_app(&self, namespace: &str) -> Result<(), SvixError> {
        let body = json!({ "name": namespace, "uid": namespace }).to_string();
        self.ok(
            "PUT",
            &format!("/api/v1/app/{namespace}"),
            Some(&body),
            None,
        )
        .map(|_| ())
    }

    /// The endpoint `uid` of the namespace's application as Svix has it;
    /// `None` when it (or the application) does not exist.
    pub fn endpoint(&self, namespace: &str, uid: &str) -> Result<Option<EndpointSpec>, SvixError> {
        let base = format!("/api/v1/app/{namespace}/endpoint/{uid}");
        let Some(ep) = self.get_found(&base)? else {
            return Ok(None);
        };
        let headers = self.ok("GET", &format!("{base}/headers"), None, None)?;
        let secret = self.ok("GET", &format!("{base}/secret"), None, None)?;
        let headers = headers["headers"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(EndpointSpec {
            uid: ep["uid"].as_str().unwrap_or_default().to_owned(),
            url: ep["url"].as_str().unwrap_or_default().to_owned(),
            secret: secret["key"].as_str().unwrap_or_default().to_owned(),
            headers,
            disabled: ep["disabled"].as_bool().unwrap_or(false),
            throttle_rate: ep["throttleRate"]
                .as_u64()
                .filter(|r| *r > 0)
                .and_then(|r| u16::try_from(r).ok()),
            channels: ep["channels"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }))
    }

    /// The uids of every endpoint of the namespace's application (none when
    /// the application does not exist).
    pub fn endpoint_uids(&self, namespace: &str) -> Result<Vec<String>, SvixError> {
        let mut out = Vec::new();
        let mut iterator: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/app/{namespace}/endpoint?limit=250");
            if let Some(it) = &iterator {
                path.push_str(&format!("&iterator={it}"));
            }
            let Some(page) = self.get_found(&path)? else {
                return Ok(out);
            };
            for ep in page["data"].as_array().into_iter().flatten() {
                out.push(
                    ep["uid"]
                        .as_str()
                        .or(ep["id"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            match (page["done"].as_bool(), page["iterator"].as_str()) {
                (Some(false), Some(it)) => iterator = Some(it.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Makes the endpoint what `want` says: creates it (with the
    /// application) when missing, else updates what differs from
    /// `actual` (read with [`Client::endpoint`]).
    pub fn put_endpoint(
        &self,
        namespace: &str,
        name: &str,
        want: &EndpointSpec,
        actual: Option<&EndpointSpec>,
    ) -> Result<(), SvixError> {
        let base = format!("/api/v1/app/{namespace}/endpoint");
        match actual {
            None => {
                self.ensure_app(namespace)?;
                let body = json!({
                    "uid": want.uid,
                    "url": want.url,
                    "description": name,
                    "secret": want.secret,
                    "channels": want.channels,
                    "disabled": want.disabled,
                    "throttleRate": want.throttle_rate,
                })
                .to_string();
                self.ok("POST", &base, Some(&body), None)?;
                if !want.headers.is_empty() {
                    let body = json!({ "headers": want.headers }).to_string();
                    self.ok(
                        "PUT",
                        &format!("{base}/{}/headers", want.uid),
                        Some(&body),
                        None,
                    )?;
                }
            }
            Some(actual) => {
                let body = json!({
                    "uid": want.uid,
                    "url": want.url,
                    "description": name,
                    "channels": want.channels,
                    "disabled": want.disabled,
                    "throttleRate": want.throttle_rate,
                })
                .to_string();
                self.ok("PUT", &format!("{base}/{}", want.uid), Some(&body), None)?;
                if want.headers != actual.headers {
                    let body = json!({ "headers": want.headers }).to_string();
                    self.ok(
                        "PUT",
                        &format!("{base}/{}/headers", want.uid),
                        Some(&body),
                        None,
                    )?;
                }
                if want.secret != actual.secret {
                    let body = json!({ "key": want.secret }).to_string();
                    self.ok(
                        "POST",
                        &format!("{base}/{}/secret/rotate", want.uid),
                        Some(&body),
                        None,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Deletes the endpoint; one already gone is fine.
    pub fn delete_endpoint(&self, namespace: &str, uid: &str) -> Result<(), SvixError> {
        let a = self.call(
            "DELETE",
            &format!("/api/v1/app/{namespace}/endpoint/{uid}"),
            None,
            None,
        )?;
        match a.status {
            200..=299 | 404 => Ok(()),
            _ => Err(answered(a)),
        }
    }

    /// Hands a delivery over: creates the message `key` (its `eventId`,
    /// and the `idempotency-key`) routed to the Svix channel `channel`;
    /// a message already there under that key is found instead. Svix's
    /// message id.
    pub fn create_message(
        &self,
        namespace: &str,
        key: &str,
        channel: &str,
        event_type: &str,
        payload: &serde_json::value::RawValue,
    ) -> Result<String, SvixError> {
        #[derive(serde::Serialize)]
        struct MessageIn<'a> {
            #[serde(rename = "eventId")]
            event_id: &'a str,
            #[serde(rename = "eventType")]
            event_type: &'a str,
            channels: [&'a str; 1],
            payload: &'a serde_json::value::RawValue,
            application: Value,
        }
        let svix_type = svix_event_type(event_type);
        let body = serde_json::to_string(&MessageIn {
            event_id: key,
            event_type: &svix_type,
            channels: [channel],
            payload,
            application: json!({ "name": namespace, "uid": namespace }),
        })
        .map_err(|e| SvixError::Unreachable(format!("encoding the message: {e}")))?;
        let a = self.call(
            "POST",
            &format!("/api/v1/app/{namespace}/msg?with_content=false"),
            Some(&body),
            Some(key),
        )?;
        match a.status {
            200..=299 => message_id(&a.body),
            // The eventId is taken: the message is already there.
            409 => self
                .message(namespace, key)?
                .ok_or_else(|| SvixError::Answered {
                    status: 409,
                    message: format!("eventId {key} is taken but its message is not found"),
                }),
            _ => Err(answered(a)),
        }
    }

    /// The id of the message whose `eventId` (or id) is `key`; `None` when
    /// there is none.
    pub fn message(&self, namespace: &str, key: &str) -> Result<Option<String>, SvixError> {
        self.get_found(&format!(
            "/api/v1/app/{namespace}/msg/{key}?with_content=false"
        ))?
        .map(|body| message_id(&body))
        .transpose()
    }

    /// The endpoint `uid`'s status for the message (its id, or its
    /// `eventId`) and Svix's next attempt: `Ok(None)` when Svix has no
    /// such message (or application), `(None, None)` while the message has
    /// not been dispatched to the endpoint.
    pub fn destination(
        &self,
        namespace: &str,
        msg_id: &str,
        uid: &str,
    ) -> Result<Option<Destination>, SvixError> {
        let Some(page) = self.get_found(&format!(
            "/api/v1/app/{namespace}/msg/{msg_id}/endpoint?limit=250"
        ))?
        else {
            return Ok(None);
        };
        let found = page["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["uid"].as_str() == Some(uid));
        Ok(Some(match found {
            None => (None, None),
            Some(d) => (
                d["status"].as_i64().and_then(SvixStatus::from_code),
                d["nextAttempt"].as_str().and_then(parse_time),
            ),
        }))
    }

    /// Svix's attempts of the message (its id, or its `eventId`) to
    /// endpoint `uid`, oldest first, and Svix's id of the message (when
    /// there is an attempt); `Ok(None)` when Svix has no such message (or
    /// endpoint, or application).
    pub fn attempts(
        &self,
        namespace: &str,
        msg_id: &str,
        uid: &str,
    ) -> Result<Option<MessageAttempts>, SvixError> {
        let Some(body) = self.get_found(&format!(
            "/api/v1/app/{namespace}/attempt/msg/{msg_id}?endpoint_id={uid}&limit=250"
        ))?
        else {
            return Ok(None);
        };
        let mut out: Vec<SvixAttempt> = body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| self.attempt_of(a))
            .collect();
        // Newest first from Svix; ids (and times) order them.
        out.sort_by_key(|a| a.timestamp);
        let message_id = body["data"][0]["msgId"].as_str().map(str::to_owned);
        Ok(Some((out, message_id)))
    }

    /// One attempt as Svix lists it (`MessageAttemptOut`), its response
    /// cut at `delivery.max_response_bytes`.
    fn attempt_of(&self, a: &Value) -> SvixAttempt {
        SvixAttempt {
            timestamp: a["timestamp"]
                .as_str()
                .and_then(parse_time)
                .unwrap_or_else(Utc::now),
            http_status: a["responseStatusCode"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0),
            response: a["response"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .scan(0usize, |bytes, c| {
                    *bytes += c.len_utf8();
                    (*bytes <= self.max_response_bytes).then_some(c)
                })
                .collect(),
            duration_ms: a["responseDurationMs"].as_u64().unwrap_or(0),
            url: a["url"].as_str().unwrap_or_default().to_owned(),
            status: a["status"]
                .as_i64()
                .and_then(SvixStatus::from_code)
                .unwrap_or(SvixStatus::Fail),
        }
    }

    /// One visit for a due delivery: hand it over unless `handed_over`
    /// (then check that the message is still there, handing it over again
    /// when it is not), and read what Svix reports for its endpoint.
    pub fn observe(&self, d: &Handover<'_>, handed_over: bool) -> Observed {
        let started_at = Utc::now();
        let hand_over =
            || match self.create_message(d.namespace, d.key, d.channel, d.event_type, d.payload) {
                Ok(id) => Ok(id),
                Err(e) if e.is_transient() => Err(Observed::HandOverFailed {
                    started_at,
                    error: e.to_string(),
                    http_status: e.status(),
                }),
                Err(e) => Err(Observed::HandOverRefused {
                    error: e.to_string(),
                }),
            };
        if !handed_over {
            return match hand_over() {
                // Svix dispatches it after this; the first poll comes soon.
                Ok(message_id) => Observed::Reported {
                    message_id,
                    fresh: true,
                    status: None,
                    next_attempt: None,
                    attempts: Vec::new(),
                },
                Err(observed) => observed,
            };
        }
        // A batch read of the endpoint (or what one kept) settles the
        // common case: delivered, all its attempts read (`batch`).
        let ask = batch::Ask {
            namespace: d.namespace,
            endpoint: d.channel,
            key: d.key,
            copied: d.copied,
            handed_over_at: d.handed_over_at,
        };
        match self.batches.delivered(self, &ask) {
            batch::Settled::Delivered(found) => {
                log::debug!("Svix poll of {}: settled by a batch read", d.key);
                return Observed::Reported {
                    message_id: found.message_id,
                    fresh: false,
                    status: Some(SvixStatus::Success),
                    next_attempt: None,
                    attempts: found.attempts,
                };
            }
            batch::Settled::Failed(error) => return Observed::PollFailed { error },
            batch::Settled::No => {}
        }
        log::debug!("Svix poll of {}: by its own calls", d.key);
        // Polled by the message's eventId (the key): no id to store. The
        // attempts alone tell a success (the common case: one call); the
        // endpoint's status is asked for only when the newest attempt
        // failed (is Svix still trying?).
        let (attempts, message_id) = match self.attempts(d.namespace, d.key, d.channel) {
            Ok(Some(found)) => found,
            // Gone from Svix (or never there: the provider was switched):
            // hand it over afresh.
            Ok(None) => {
                return match hand_over() {
                    Ok(message_id) => Observed::Reported {
                        message_id,
                        fresh: true,
                        status: None,
                        next_attempt: None,
                        attempts: Vec::new(),
                    },
                    Err(observed) => observed,
                }
            }
            Err(e) => {
                return Observed::PollFailed {
                    error: e.to_string(),
                }
            }
        };
        let newest = attempts.last().map(|a| a.status);
        let (status, next_attempt) = match newest {
            None => (None, None),
            Some(SvixStatus::Fail) => match self.destination(d.namespace, d.key, d.channel) {
                // A success newer than the attempts read: read them again
                // at the next poll, so that it is copied too.
                Ok(Some((Some(SvixStatus::Success), _))) => (Some(SvixStatus::Sending), None),
                Ok(Some(found)) => found,
                Ok(None) => (None, None),
                Err(e) => {
                    return Observed::PollFailed {
                        error: e.to_string(),
                    }
                }
            },
            Some(other) => (Some(other), None),
        };
        Observed::Reported {
            message_id: message_id.unwrap_or_else(|| d.key.to_owned()),
            fresh: false,
            status,
            next_attempt,
            attempts,
        }
    }
}

/// What a hand-over needs.
pub struct Handover<'a> {
    /// The namespace (the application's uid).
    pub namespace: &'a str,
    /// The idempotency key ([`idempotency_key`]).
    pub key: &'a str,
    /// The channel id (endpoint uid and Svix channel).
    pub channel: &'a str,
    /// Our event type.
    pub event_type: &'a str,
    /// The webhook body.
    pub payload: &'a serde_json::value::RawValue,
    /// Svix attempts already copied into the record (when handed over).
    pub copied: u32,
    /// When the message was handed over, when the row tells (before its
    /// first poll: `map` schedules that one [`map::FIRST_POLL`] after the
    /// hand-over); lets a batch read find it ([`batch`]).
    pub handed_over_at: Option<DateTime<Utc>>,
}

/// The idempotency key of a delivery's round: its status id and the start
/// of its round (creation, or the last resend), so a repeated hand-over in
/// one round finds the same message and a resend makes a new one.
pub fn idempotency_key(status_id: uuid::Uuid, round_started_at: DateTime<Utc>) -> String {
    format!(
        "nr-{}-{}",
        status_id.simple(),
        round_started_at.timestamp_micros()
    )
}

/// How a visit counts for the channel's breaker, which in this mode guards
/// "Svix for this channel": Svix answering is a success (the endpoint's
/// own failures are Svix's to retry), no answer is `NoAnswer`.
pub fn verdict(observed: &Observed) -> Verdict {
    match observed {
        Observed::Reported { .. } => Verdict::Success,
        Observed::HandOverRefused { .. } => Verdict::Refused,
        Observed::HandOverFailed {
            http_status: Some(_),
            ..
        } => Verdict::Failure,
        Observed::HandOverFailed { .. } | Observed::PollFailed { .. } => Verdict::NoAnswer,
    }
}

/// Whether `text` can be a Svix uid (application, endpoint, message):
/// 1 to 256 characters of `[a-zA-Z0-9-_.]`.
pub fn is_svix_uid(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 256
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Our event type as a Svix event type (`[a-zA-Z0-9-_.]`, at most 256):
/// any other character becomes `_`. Used only for Svix's own filters and
/// display: our endpoints listen to every type of their Svix channel.
pub fn svix_event_type(event_type: &str) -> String {
    let t: String = event_type
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect();
    if t.is_empty() {
        "event".to_owned()
    } else {
        t
    }
}

/// A channel rate limit as Svix's `throttleRate` (messages per second,
/// 1..=65535): N/s as is, N/m rounded up to whole messages per second.
pub fn throttle_rate(per: Option<(u32, Duration)>) -> Option<u16> {
    let (n, window) = per?;
    let secs = window.as_secs().max(1);
    let rate = u64::from(n).div_ceil(secs).clamp(1, u64::from(u16::MAX));
    u16::try_from(rate).ok()
}

fn message_id(body: &Value) -> Result<String, SvixError> {
    body["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| SvixError::Unreachable("Svix's message has no id".into()))
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn answered(a: Answer) -> SvixError {
    let message = match &a.body {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        body => body
            .get("detail")
            .map(|d| match d {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| body.to_string()),
    };
    SvixError::Answered {
        status: a.status,
        message: message.chars().take(300).collect(),
    }
}

fn describe(err: &ureq::Error) -> String {
    match err {
        ureq::Error::Timeout(what) => format!("timed out ({what})"),
        other => other.to_string(),
    }
}

/// The endpoint a channel should have, from its stored parts (secrets
/// already opened).
pub fn spec(
    channel_id: uuid::Uuid,
    url: &str,
    secret: &str,
    headers: &[(String, String)],
    disabled: bool,
    rate: Option<(u32, Duration)>,
) -> EndpointSpec {
    let uid = channel_id.to_string();
    EndpointSpec {
        channels: vec![uid.clone()],
        uid,
        url: url.to_owned(),
        secret: secret.to_owned(),
        headers: headers.iter().cloned().collect(),
        disabled,
        throttle_rate: throttle_rate(rate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_the_round_and_is_a_valid_uid() {
        let id = uuid::Uuid::from_u128(7);
        let t = Utc::now();
        let k = idempotency_key(id, t);
        assert_eq!(k, idempotency_key(id, t));
        assert_ne!(
            k,
            idempotency_key(id, t + chrono::TimeDelta::microseconds(1))
        );
        assert_ne!(k, idempotency_key(uuid::Uuid::from_u128(8), t));
        assert!(is_svix_uid(&k), "{k}");
    }

    #[test]
    fn event_types_and_uids_fit_svix_patterns() {
        assert_eq!(svix_event_type("invoice.paid"), "invoice.paid");
        assert_eq!(svix_event_type("a/b c:é"), "a_b_c__");
        assert_eq!(svix_event_type(""), "event");
        assert!(is_svix_uid("ns-1.a_b"));
        assert!(!is_svix_uid("ns/1"));
        assert!(!is_svix_uid(""));
        assert!(!is_svix_uid(&"a".repeat(257)));
    }

    #[test]
    fn rate_limits_become_whole_messages_per_second() {
        let s = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        assert_eq!(throttle_rate(None), None);
        assert_eq!(throttle_rate(Some((5, s))), Some(5));
        assert_eq!(throttle_rate(Some((120, m))), Some(2));
        assert_eq!(throttle_rate(Some((1, m))), Some(1));
        assert_eq!(throttle_rate(Some((1_000_000, s))), Some(u16::MAX));
    }

    #[test]
    fn verdicts_guard_svix_not_the_endpoint() {
        let reported = Observed::Reported {
            message_id: "m".into(),
            fresh: false,
            status: Some(SvixStatus::Fail),
            next_attempt: None,
            attempts: vec![],
        };
        assert_eq!(verdict(&reported), Verdict::Success);
        assert_eq!(
            verdict(&Observed::PollFailed { error: "x".into() }),
            Verdict::NoAnswer
        );
        let failed = |s| Observed::HandOverFailed {
            started_at: Utc::now(),
            error: "x".into(),
            http_status: s,
        };
        assert_eq!(verdict(&failed(None)), Verdict::NoAnswer);
        assert_eq!(verdict(&failed(Some(503))), Verdict::Failure);
        assert_eq!(
            verdict(&Observed::HandOverRefused { error: "x".into() }),
            Verdict::Refused
        );
    }

    #[test]
    fn transient_errors_are_no_answer_5xx_429_408() {
        assert!(SvixError::Unreachable("x".into()).is_transient());
        for (status, transient) in [
            (500, true),
            (503, true),
            (429, true),
            (408, true),
            (422, false),
            (404, false),
            (401, false),
        ] {
            let e = SvixError::Answered {
                status,
                message: String::new(),
            };
            assert_eq!(e.is_transient(), transient, "{status}");
        }
    }

    #[test]
    fn differences_name_each_field() {
        let a = spec(uuid::Uuid::nil(), "http://a/", "whsec_x", &[], false, None);
        assert!(a.differences(&a).is_empty());
        let mut b = a.clone();
        b.url = "http://b/".into();
        b.disabled = true;
        b.headers.insert("X".into(), "1".into());
        assert_eq!(a.differences(&b), vec!["url", "headers", "disabled"]);
    }
}
