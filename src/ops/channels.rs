//! Channel operations: create (URL checked against the SSRF guard, headers
//! checked, secret made), list, read with health, update, enable, disable,
//! delete, rotate the secret, bulk resend and the test event. The leader's
//! view of a channel (breaker, deliveries in flight) comes from what it
//! publishes in its heartbeat (`db::leaders::published`); what the delivery
//! controls hold back is read from the deliveries (`db::controls`).
//!
//! Longer than most files (about 690 lines before its tests): every
//! operation on a channel and the checks they share (URL, secret, headers)
//! sit together, so that a rule exists once for both doors.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::page::{Cursor, Page, Paged};
use super::{name_like, not_found, visible, OpsError};
use crate::db::channels::{self, Channel, ChannelChange, NewChannel};
use crate::db::controls::{self, Head};
use crate::db::{events, leaders, statuses};
use crate::delivery::sign::Secret;
use crate::delivery::ssrf::Guard;
use crate::delivery::{endpoint, resolve};
use crate::rate_limit::RateLimit;
use crate::state::State;

/// Longest overlap of a secret rotation.
pub const MAX_OVERLAP: Duration = Duration::from_secs(366 * 24 * 3600);

/// A channel as both doors show it: the stored channel, plus what the
/// leader publishes of it (its breaker and deliveries in flight, as of the
/// leader's last heartbeat; `breaker` is `null` when no instance leads).
#[derive(Debug, serde::Serialize)]
pub struct ChannelView {
    /// The stored channel.
    #[serde(flatten)]
    pub channel: Channel,
    /// `closed`, `open` or `half_open`; `None` when no instance leads.
    pub breaker: Option<String>,
    /// Deliveries to it in flight.
    pub in_flight: u64,
    /// Until when an open breaker stays open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_until: Option<String>,
    /// A rate-limited or ordered channel: how many of its deliveries are
    /// due now and not in flight, held back by the limit or the order
    /// (`None` for a channel without either).
    pub held_back: Option<u64>,
    /// An ordered channel: the delivery the others wait on (its oldest
    /// unfinished one in enqueue order), if it has any.
    pub waiting_on: Option<Head>,
}

impl ChannelView {
    fn new(
        channel: Channel,
        published: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> ChannelView {
        let entry = published.and_then(|p| p.get(&channel.id.to_string()));
        let breaker = match (published, entry) {
            (None, _) => None,
            (Some(_), None) => Some("closed"),
            (Some(_), Some(e)) => e["breaker"].as_str().or(Some("closed")),
        };
        ChannelView {
            breaker: breaker.map(String::from),
            in_flight: entry.and_then(|e| e["in_flight"].as_u64()).unwrap_or(0),
            open_until: entry.and_then(|e| e["open_until"].as_str().map(String::from)),
            held_back: None,
            waiting_on: None,
            channel,
        }
    }
}

/// What a read-only token sees of a header value.
pub const HIDDEN: &str = "***";

impl ChannelView {
    /// The view with every custom header value replaced by [`HIDDEN`] (the
    /// names stay): what a read-only token is shown. Header values are
    /// often the endpoint's own credentials (`Authorization: Bearer ...`).
    pub fn redacted(mut self) -> ChannelView {
        redact_headers(&mut self.channel);
        self
    }
}

/// Replaces every custom header value of `channel` by [`HIDDEN`] and drops
/// its secrets.
pub fn redact_headers(channel: &mut Channel) {
    if let serde_json::Value::Object(map) = &mut channel.headers {
        for value in map.values_mut() {
            *value = serde_json::Value::String(HIDDEN.into());
        }
    }
    channel.signing_secret = None;
    channel.previous_signing_secret = None;
}

/// Fills in what the delivery controls hold back of `views`' channels.
fn add_controls(
    client: &mut impl postgres::GenericClient,
    views: &mut [ChannelView],
) -> Result<(), OpsError> {
    let controlled: Vec<Uuid> = views
        .iter()
        .filter(|v| v.channel.rate_limit.is_some() || v.channel.ordered)
        .map(|v| v.channel.id)
        .collect();
    let ordered: Vec<Uuid> = views
        .iter()
        .filter(|v| v.channel.ordered)
        .map(|v| v.channel.id)
        .collect();
    let due = controls::due_now(client, &controlled)?;
    let mut heads = controls::heads(client, &ordered)?;
    for v in views.iter_mut() {
        if controlled.contains(&v.channel.id) {
            let due = due.get(&v.channel.id).copied().unwrap_or(0).max(0) as u64;
            v.held_back = Some(due.saturating_sub(v.in_flight));
            v.waiting_on = heads.remove(&v.channel.id);
        }
    }
    Ok(())
}

/// A rate limit as typed (`10/s`, `600/m`; `none`: no limit) for `field`.
pub fn parse_rate_limit(field: &str, text: &str) -> Result<Option<RateLimit>, OpsError> {
    if text.trim() == "none" {
        return Ok(None);
    }
    RateLimit::parse(text)
        .map(Some)
        .map_err(|e| OpsError::invalid(field, e))
}

/// What a new channel is made of.
#[derive(Debug)]
pub struct NewChannelInput {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Endpoint URL.
    pub url: String,
    /// Custom headers (name, value).
    pub headers: Vec<(String, String)>,
    /// `whsec_…` secret; generated when `None`.
    pub secret: Option<String>,
    /// Create it disabled.
    pub disabled: bool,
    /// Its rate limit as typed (`10/s`, `600/m`, `none`), if any.
    pub rate_limit: Option<String>,
    /// Deliver one at a time in enqueue order.
    pub ordered: bool,
}

/// A channel just made, with its secret (shown this once).
#[derive(Debug, serde::Serialize)]
pub struct Created {
    /// The channel.
    #[serde(flatten)]
    pub channel: ChannelView,
    /// Its signing secret.
    pub signing_secret: String,
    /// Set when another live channel of the namespace has the same name
    /// (allowed: names are for people; ids are what rules use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// How long `channel create`/`update` wait for a host name's addresses;
/// a lookup that fails or takes longer lets the URL pass (the delivery-time
/// check stays, and DNS can change anyway).
const CREATE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks a channel URL as typed: http(s), a host, and addresses the SSRF
/// guard allows: a literal address, or the addresses a host name resolves
/// to now (`localhost` → 127.0.0.1). Every delivery checks the resolved
/// addresses again.
pub fn check_url(guard: &Guard, url: &str) -> Result<(), OpsError> {
    if let Ok(parsed) = url::Url::parse(url) {
        endpoint::check_no_credentials(&parsed).map_err(|e| OpsError::invalid("url", e))?;
    }
    let parsed =
        endpoint::check_url(url).map_err(|e| OpsError::invalid("url", url_hint(url, e)))?;
    let typed = url.trim_start();
    let after_scheme = typed.get(parsed.scheme().len()..).unwrap_or_default();
    if !after_scheme.starts_with("://") {
        return Err(OpsError::invalid(
            "url",
            format!(
                "URL {url:?} lacks the // after {}: (did you mean {:?}?)",
                parsed.scheme(),
                parsed.as_str()
            ),
        ));
    }
    let addrs = match endpoint::literal_address(&parsed) {
        Some(ip) => vec![ip],
        None => match (parsed.host_str(), parsed.port_or_known_default()) {
            (Some(host), Some(port)) => resolve::lookup_now(host, port, CREATE_LOOKUP_TIMEOUT),
            _ => Vec::new(),
        },
    };
    let refused: Vec<_> = addrs
        .iter()
        .filter_map(|ip| guard.check(*ip).err())
        .collect();
    if let Some((first, others)) = refused.split_first() {
        let via = match parsed.host() {
            Some(url::Host::Domain(name)) => {
                format!(" (its host {name} resolves to {})", first.addr)
            }
            _ => String::new(),
        };
        return Err(OpsError::invalid(
            "url",
            format!("{url:?}{via}: {}", guard.refusal_hint(first, others)),
        ));
    }
    Ok(())
}

/// `problem` with what to type when `url` lacks its scheme
/// (`example.com/webhooks`).
fn url_hint(url: &str, problem: String) -> String {
    if !url.contains("://") && !url.trim().is_empty() {
        format!(
            "{problem}; a webhook URL starts with https:// or http://, e.g. \"https://{}\"",
            url.trim()
        )
    } else {
        problem
    }
}

/// Checked custom headers as the stored JSON object.
pub fn headers_object(headers: &[(String, String)]) -> Result<serde_json::Value, OpsError> {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        endpoint::check_header(name, value).map_err(|e| OpsError::invalid("headers", e))?;
        map.insert(name.clone(), serde_json::Value::String(value.clone()));
    }
    Ok(serde_json::Value::Object(map))
}

/// Shortest key of a signing secret a user gives (bytes after `whsec_`,
/// decoded), as Svix requires.
pub const MIN_SECRET_BYTES: usize = 24;

/// Longest such key.
pub const MAX_SECRET_BYTES: usize = 64;

/// Checks a signing secret a user gives: `whsec_` + base64 of 24 to 64
/// bytes. The error never quotes it.
pub fn check_secret(secret: &str) -> Result<(), OpsError> {
    let parsed = Secret::parse(secret).map_err(|e| OpsError::invalid("secret", e.to_string()))?;
    let n = parsed.key_len();
    if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&n) {
        return Err(OpsError::invalid(
            "secret",
            format!(
                "the key after \"whsec_\" has {n} bytes; it must have {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} (leave the secret out to have one generated)"
            ),
        ));
    }
    Ok(())
}

/// `secret` checked, or a new generated one. The error never quotes it.
pub fn new_secret(secret: Option<String>) -> Result<String, OpsError> {
    match secret {
        Some(s) => {
            check_secret(&s)?;
            Ok(s)
        }
        None => Ok(Secret::generate()),
    }
}

/// Checks a new channel without the database (the command line does this
/// before it connects, so a typo is a usage error even with the database
/// down); [`create`] checks again.
pub fn check_new(guard: &Guard, input: &NewChannelInput) -> Result<(), OpsError> {
    name_like("namespace", &input.namespace)?;
    name_like("name", &input.name)?;
    check_url(guard, &input.url)?;
    headers_object(&input.headers)?;
    if let Some(s) = &input.secret {
        check_secret(s)?;
    }
    if let Some(r) = &input.rate_limit {
        parse_rate_limit("rate_limit", r)?;
    }
    Ok(())
}

/// Creates a channel.
pub fn create(
    client: &mut impl postgres::GenericClient,
    guard: &Guard,
    input: NewChannelInput,
) -> Result<Created, OpsError> {
    check_new(guard, &input)?;
    let headers = headers_object(&input.headers)?;
    let secret = new_secret(input.secret)?;
    let rate_limit = match &input.rate_limit {
        Some(r) => parse_rate_limit("rate_limit", r)?,
        None => None,
    };
    let same_name = channels::ids_named(client, &input.namespace, &input.name)?;
    let id = channels::create(
        client,
        &NewChannel {
            namespace: &input.namespace,
            name: &input.name,
            url: &input.url,
            headers,
            signing_secret: &secret,
            disabled: input.disabled,
            rate_limit,
            ordered: input.ordered,
        },
    )?;
    let warning = (!same_name.is_empty())
        .then(|| duplicate_name_warning(&input.namespace, &input.name, &same_name));
    Ok(Created {
        channel: get(client, Some(&input.namespace), id)?,
        signing_secret: secret,
        warning,
    })
}

/// What a create says when `name` is already used by the live channels
/// `same_name` of `namespace`.
fn duplicate_name_warning(namespace: &str, name: &str, same_name: &[Uuid]) -> String {
    let ids: Vec<String> = same_name.iter().map(Uuid::to_string).collect();
    format!(
        "namespace {:?} already has a channel named {:?} ({}): created another one with the same name; \
         rules refer to channels by id, so check which one you mean (delete the extra one if this was a retry)",
        namespace,
        name,
        ids.join(", ")
    )
}

/// Lists live channels, optionally of one namespace, one page at a time
/// (`page` = `None`: all of them). Secrets only with `with_secrets`.
pub fn list(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    page: Option<Page>,
    with_secrets: bool,
) -> Result<Paged<ChannelView>, OpsError> {
    let rows = channels::list_after(
        client,
        namespace,
        page.and_then(|p| p.after).map(|c| (c.created_at, c.id)),
        page.map(|p| p.limit + 1),
        with_secrets,
    )?;
    let published = leaders::published(client)?;
    let mut views: Vec<ChannelView> = rows
        .into_iter()
        .map(|c| ChannelView::new(c, published.as_ref()))
        .collect();
    add_controls(client, &mut views)?;
    Ok(Paged::maybe_paged(views, page, |v| Cursor {
        created_at: v.channel.created_at,
        id: v.channel.id,
    }))
}

/// The live channel `id` of `namespace` (any, when `None`), without secrets.
pub fn stored(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
    with_secrets: bool,
) -> Result<Channel, OpsError> {
    channels::get(client, id, with_secrets)?
        .filter(|c| visible(namespace, &c.namespace))
        .ok_or_else(|| not_found("channel", namespace, id))
}

/// One channel with its health.
pub fn get(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
) -> Result<ChannelView, OpsError> {
    let channel = stored(client, namespace, id, false)?;
    let published = leaders::published(client)?;
    let mut view = [ChannelView::new(channel, published.as_ref())];
    add_controls(client, &mut view)?;
    let [view] = view;
    Ok(view)
}

/// What an update may change (`None`: keep).
#[derive(Debug, Default)]
pub struct ChannelPatch {
    /// New name.
    pub name: Option<String>,
    /// New URL (checked like at create).
    pub url: Option<String>,
    /// New custom headers, replacing the old ones whole.
    pub headers: Option<Vec<(String, String)>>,
    /// New rate limit as typed (`10/s`, `600/m`); `Some(None)` or `none`
    /// removes it.
    pub rate_limit: Option<Option<String>>,
    /// Ordered (true) or unordered (false).
    pub ordered: Option<bool>,
}

impl ChannelPatch {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.url.is_none()
            && self.headers.is_none()
            && self.rate_limit.is_none()
            && self.ordered.is_none()
    }

    /// The new rate limit, checked: `None` keeps it, `Some(None)` removes it.
    fn rate_limit(&self) -> Result<Option<Option<RateLimit>>, OpsError> {
        match &self.rate_limit {
            None => Ok(None),
            Some(None) => Ok(Some(None)),
            Some(Some(text)) => parse_rate_limit("rate_limit", text).map(Some),
        }
    }
}

/// Checks a channel change without the database.
pub fn check_patch(guard: &Guard, patch: &ChannelPatch) -> Result<(), OpsError> {
    if let Some(name) = &patch.name {
        name_like("name", name)?;
    }
    if let Some(url) = &patch.url {
        check_url(guard, url)?;
    }
    if let Some(headers) = &patch.headers {
        headers_object(headers)?;
    }
    patch.rate_limit()?;
    Ok(())
}

/// Changes a channel's name, URL, headers, rate limit or order. Deliveries
/// already enqueued go to the new URL from their next attempt, under the new
/// controls from the leader's next sweep; the delivery record is kept.
pub fn update(
    client: &mut impl postgres::GenericClient,
    guard: &Guard,
    namespace: Option<&str>,
    id: Uuid,
    patch: ChannelPatch,
) -> Result<ChannelView, OpsError> {
    check_patch(guard, &patch)?;
    let headers = patch.headers.as_deref().map(headers_object).transpose()?;
    stored(client, namespace, id, false)?;
    let change = ChannelChange {
        name: patch.name.as_deref(),
        url: patch.url.as_deref(),
        headers,
        rate_limit: patch.rate_limit()?,
        ordered: patch.ordered,
    };
    if !channels::update(client, id, &change)? {
        return Err(not_found("channel", namespace, id));
    }
    get(client, namespace, id)
}

/// Enables or disables a channel (disabling fails its pending deliveries).
pub fn set_disabled(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
    disabled: bool,
) -> Result<ChannelView, OpsError> {
    stored(client, namespace, id, false)?;
    if !channels::set_disabled(client, id, disabled)? {
        return Err(not_found("channel", namespace, id));
    }
    get(client, namespace, id)
}

/// Soft-deletes a channel (its pending deliveries fail).
pub fn delete(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
) -> Result<(), OpsError> {
    stored(client, namespace, id, false)?;
    if !channels::delete(client, id)? {
        return Err(not_found("channel", namespace, id));
    }
    Ok(())
}

/// A rotated secret.
#[derive(Debug, serde::Serialize)]
pub struct Rotated {
    /// The new secret.
    pub signing_secret: String,
    /// Until when requests also carry the old secret's signature (`None`:
    /// the old secret was dropped at once).
    pub previous_secret_until: Option<DateTime<Utc>>,
}

/// Checks a rotation without the database: the overlap's bound and the
/// given secret's form.
pub fn check_rotation(secret: Option<&str>, overlap: Duration) -> Result<(), OpsError> {
    if let Some(s) = secret {
        check_secret(s)?;
    }
    if overlap > MAX_OVERLAP {
        return Err(OpsError::invalid(
            "overlap",
            format!(
                "{}: must be at most {}",
                humantime::format_duration(overlap),
                humantime::format_duration(MAX_OVERLAP)
            ),
        ));
    }
    Ok(())
}

/// Replaces a channel's signing secret (`secret`, or a generated one); the
/// old one stays valid for `overlap` (at most [`MAX_OVERLAP`]).
pub fn rotate_secret(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
    secret: Option<String>,
    overlap: Duration,
) -> Result<Rotated, OpsError> {
    check_rotation(secret.as_deref(), overlap)?;
    let secret = new_secret(secret)?;
    stored(client, namespace, id, false)?;
    let until = channels::rotate_secret(client, id, &secret, overlap)?
        .ok_or_else(|| not_found("channel", namespace, id))?;
    Ok(Rotated {
        signing_secret: secret,
        previous_secret_until: (!overlap.is_zero()).then_some(until),
    })
}

/// A channel's current signing secret (shown only when asked for).
pub fn secret(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
) -> Result<String, OpsError> {
    stored(client, namespace, id, true)?
        .signing_secret
        .ok_or_else(|| not_found("channel", namespace, id))
}

/// What a bulk resend did (or, with `dry_run`, would do).
#[derive(Debug, serde::Serialize)]
pub struct BulkResendReport {
    /// The channel.
    pub channel_id: Uuid,
    /// Its name.
    pub channel_name: String,
    /// How many deliveries were (would be) set to RESENDING.
    pub resent: i64,
    /// The same, by the state they had.
    pub by_state: std::collections::BTreeMap<String, i64>,
    /// Only counted, nothing changed.
    pub dry_run: bool,
}

/// The states a bulk resend takes: `state`, or all three resendable ones.
pub fn resendable_states(state: Option<State>) -> Result<Vec<State>, OpsError> {
    match state {
        None => Ok(vec![State::Success, State::Failed, State::Sending]),
        Some(s @ (State::Success | State::Failed | State::Sending)) => Ok(vec![s]),
        Some(s) => Err(OpsError::invalid(
            "state",
            format!(
                "{s}: {s} deliveries are already on their way; only SUCCESS, FAILED or SENDING deliveries can be resent"
            ),
        )),
    }
}

/// Moves every matching delivery of a channel (of events created at or
/// after `since`; in `state`, else SUCCESS, FAILED and SENDING) to
/// RESENDING, or with `dry_run` only counts them. The channel must be
/// enabled: resent deliveries of a disabled channel would only fail again.
pub fn resend(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
    since: Option<DateTime<Utc>>,
    state: Option<State>,
    dry_run: bool,
) -> Result<BulkResendReport, OpsError> {
    let states = resendable_states(state)?;
    let channel = stored(client, namespace, id, false)?;
    if channel.disabled {
        let why = channel
            .disabled_reason
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        return Err(OpsError::Conflict(format!(
            "channel {id} is disabled{why}: resent deliveries would fail again; enable it first (run `channel enable {id}` first, or POST .../channels/{id}/enable)"
        )));
    }
    let result = if dry_run {
        statuses::count_resendable(client, id, since, &states)?
    } else {
        statuses::resend_channel(client, id, since, &states)?
    };
    Ok(BulkResendReport {
        channel_id: id,
        channel_name: channel.name,
        resent: result.total(),
        by_state: result.by_state,
        dry_run,
    })
}

/// The event type of a test event.
pub const TEST_EVENT_TYPE: &str = "webhook.test";

/// Sends a test event (type [`TEST_EVENT_TYPE`]) to this channel only;
/// returns its id. The channel must be enabled.
pub fn send_test(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
) -> Result<Uuid, OpsError> {
    let channel = stored(client, namespace, id, false)?;
    if channel.disabled {
        return Err(OpsError::Conflict(format!(
            "channel {id} is disabled: a test event would fail; enable it first"
        )));
    }
    let payload = serde_json::json!({
        "test": true,
        "channel_id": id,
        "message": "a test event sent from notification-reconciler",
    });
    Ok(events::emit_to_channel(
        client,
        &channel.namespace,
        TEST_EVENT_TYPE,
        &payload,
        id,
    )?)
}

/// Parses a duration such as `"24h"` for `field`.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, OpsError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        OpsError::invalid(
            field,
            format!("{text:?} is not a duration ({e}); write e.g. \"90s\", \"24h\""),
        )
    })
}

/// A time of a `since` filter: an RFC 3339 time, or a duration ago (`24h`).
pub fn parse_since(field: &str, text: &str) -> Result<DateTime<Utc>, OpsError> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return super::check_time(field, t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        OpsError::invalid(
            field,
            format!("{text:?}: not a time; write an RFC 3339 time such as \"2026-12-01T08:00:00Z\" or a duration ago such as \"24h\""),
        )
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .and_then(|t| super::check_time(field, t).ok())
        .ok_or_else(|| OpsError::invalid(field, format!("{text:?}: too long ago")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_or_a_duration_ago() {
        let t = parse_since("since", "2026-12-01T08:00:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-01T08:00:00+00:00");
        let t = parse_since("since", "2026-12-01T09:00:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-01T08:00:00+00:00");
        let ago = Utc::now() - parse_since("since", "2h").unwrap();
        assert!((7199..=7201).contains(&ago.num_seconds()), "{ago}");
        let e = parse_since("since", "yesterday").unwrap_err().to_string();
        assert!(e.starts_with("since: \"yesterday\""), "{e}");
        assert!(parse_since("since", "100000000000y").is_err());
        assert!(
            parse_since("since", "100000y").is_err(),
            "beyond PostgreSQL's range"
        );
        assert!(parse_since("since", "+10000-01-01T00:00:00Z").is_err());
    }

    #[test]
    fn a_refused_address_is_refused_and_loopback_may_be_allowed() {
        let strict = Guard::new(Vec::new());
        let e = check_url(&strict, "http://127.0.0.1:9/x").unwrap_err();
        assert!(e.to_string().starts_with("url: "), "{e}");
        assert!(check_url(&strict, "ftp://example.com/").is_err());
        let loopback = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        check_url(&loopback, "http://127.0.0.1:9/x").unwrap();
    }

    #[test]
    fn url_credentials_are_refused_without_being_quoted() {
        let loopback = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        for url in [
            "http://user:hunter2@127.0.0.1:9/x",
            "https://user@example.com/",
            "https://:hunter2@example.com/",
        ] {
            let e = check_url(&loopback, url).unwrap_err().to_string();
            assert!(e.contains("credentials"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        check_url(&loopback, "https://example.com/a@b").unwrap();
    }

    #[test]
    fn a_users_secret_has_24_to_64_bytes() {
        use base64::Engine;
        let of = |n: usize| {
            format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(vec![7u8; n])
            )
        };
        for n in [1, 23, 65, 128] {
            let e = new_secret(Some(of(n))).unwrap_err().to_string();
            assert!(e.contains("24 to 64"), "{n}: {e}");
        }
        for n in [24, 32, 64] {
            new_secret(Some(of(n))).unwrap();
        }
        assert!(check_rotation(Some(&of(8)), Duration::ZERO).is_err());
    }

    #[test]
    fn only_resendable_states_are_taken() {
        assert_eq!(resendable_states(None).unwrap().len(), 3);
        assert!(resendable_states(Some(State::Pending)).is_err());
        assert_eq!(
            resendable_states(Some(State::Failed)).unwrap(),
            vec![State::Failed]
        );
    }
}
