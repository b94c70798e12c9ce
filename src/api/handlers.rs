//! One function per API route: decode what the route takes, call the
//! operation in `ops` (the same one the command line calls), encode what it
//! returns. Nothing here decides anything the command line could decide
//! differently.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::body;
use super::error::ApiError;
use super::{Call, Ctx, Reply};
use crate::db::audit::Actor;
use crate::db::WorkerConn;
use crate::ops::channels::{self, ChannelPatch, NewChannelInput};
use crate::ops::event_types;
use crate::ops::events::{self, EmitInput, Idempotent, ListQuery};
use crate::ops::page::Page;
use crate::ops::rules::{self, NewRuleInput, RulePatch};
use crate::ops::OpsError;
use crate::state::State;

type Client = postgres::Client;
type Tx<'a> = postgres::Transaction<'a>;
type Answer = Result<Reply, ApiError>;

/// `POST .../channels` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelCreate {
    name: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    secret: Option<String>,
    #[serde(default)]
    disabled: bool,
    rate_limit: Option<String>,
    #[serde(default)]
    ordered: bool,
}

/// `PATCH .../channels/{id}` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelUpdate {
    name: Option<String>,
    url: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    /// Absent: keep; `null`: remove; a string such as `"10/s"`: set.
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<String>>,
    ordered: Option<bool>,
}

/// `POST .../rotate-secret` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    secret: Option<String>,
    overlap: Option<String>,
}

/// `POST .../channels/{id}/resend` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkResend {
    since: Option<String>,
    state: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// `POST .../rules` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleCreate {
    name: String,
    event_type: String,
    channels: Vec<Uuid>,
    filter: Option<String>,
}

/// `PATCH .../rules/{id}` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleUpdate {
    channels: Option<Vec<Uuid>>,
    /// Absent: keep; `null`: remove; a string: set.
    #[serde(default, deserialize_with = "present")]
    filter: Option<Option<String>>,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(d).map(Some)
}

/// `POST .../events` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventCreate {
    #[serde(rename = "type")]
    event_type: String,
    payload: serde_json::Value,
    annotations: Option<serde_json::Value>,
}

/// `PATCH .../event-types/{type}` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventTypeDescribe {
    /// The text customers see; `null` or empty removes it.
    #[serde(deserialize_with = "present")]
    description: Option<Option<String>>,
}

/// `POST .../events/{id}/resend` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventResend {
    channel: Option<Uuid>,
}

fn pairs(headers: BTreeMap<String, String>) -> Vec<(String, String)> {
    headers.into_iter().collect()
}

fn state(field: &str, text: &str) -> Result<State, ApiError> {
    text.to_ascii_uppercase().parse::<State>().map_err(|_| {
        ApiError::from(OpsError::invalid(
            field,
            format!("{text:?} is not a state (PENDING, SENDING, RESENDING, SUCCESS, FAILED)"),
        ))
    })
}

fn page(call: &Call<'_>) -> Result<(Page, std::collections::HashMap<String, String>), ApiError> {
    let q = body::query(call.query, call.route.query)?;
    let page = Page::parse(
        q.get("limit").map(String::as_str),
        q.get("cursor").map(String::as_str),
    )?;
    Ok((page, q))
}

/// Whether the call's token is read-only (it sees no header value).
fn read_only(call: &Call<'_>) -> bool {
    call.token.as_ref().is_none_or(|t| t.read_only)
}

pub(super) fn list_channels(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    let (page, _) = page(call)?;
    let mut list = channels::list(db, Some(call.ns()), Some(page), false)?;
    if read_only(call) {
        list.items = list.items.into_iter().map(|v| v.redacted()).collect();
    }
    Reply::ok(&list)
}

pub(super) fn create_channel(ctx: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let b: ChannelCreate = body::json(call.request, false)?;
    let input = NewChannelInput {
        namespace: call.ns().to_string(),
        name: b.name,
        url: b.url,
        headers: pairs(b.headers),
        secret: b.secret,
        disabled: b.disabled,
        rate_limit: b.rate_limit,
        ordered: b.ordered,
    };
    Reply::json(201, &channels::create(db, &ctx.guard, input)?)
}

pub(super) fn get_channel(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    let view = channels::get(db, Some(call.ns()), call.id("channel")?)?;
    Reply::ok(&if read_only(call) {
        view.redacted()
    } else {
        view
    })
}

pub(super) fn update_channel(ctx: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let id = call.id("channel")?;
    let b: ChannelUpdate = body::json(call.request, false)?;
    let patch = ChannelPatch {
        name: b.name,
        url: b.url,
        headers: b.headers.map(pairs),
        rate_limit: b.rate_limit,
        ordered: b.ordered,
    };
    Reply::ok(&channels::update(
        db,
        &ctx.guard,
        Some(call.ns()),
        id,
        patch,
    )?)
}

pub(super) fn delete_channel(_: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    channels::delete(db, Some(call.ns()), call.id("channel")?)?;
    Ok(Reply::empty())
}

pub(super) fn enable_channel(_: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let id = call.id("channel")?;
    body::json::<serde_json::Map<String, serde_json::Value>>(call.request, true)
        .and_then(no_fields)?;
    Reply::ok(&channels::set_disabled(db, Some(call.ns()), id, false)?)
}

pub(super) fn disable_channel(_: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let id = call.id("channel")?;
    body::json::<serde_json::Map<String, serde_json::Value>>(call.request, true)
        .and_then(no_fields)?;
    Reply::ok(&channels::set_disabled(db, Some(call.ns()), id, true)?)
}

/// Refuses any field in a body that takes none.
fn no_fields(map: serde_json::Map<String, serde_json::Value>) -> Result<(), ApiError> {
    match map.keys().next() {
        None => Ok(()),
        Some(k) => Err(ApiError::new(
            400,
            format!("unknown field {k:?}: this route takes no fields"),
        )
        .with_param(k.clone())),
    }
}

pub(super) fn rotate_secret(_: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let id = call.id("channel")?;
    let b: Rotate = body::json(call.request, true)?;
    let overlap = channels::parse_duration("overlap", b.overlap.as_deref().unwrap_or("24h"))?;
    Reply::ok(&channels::rotate_secret(
        db,
        Some(call.ns()),
        id,
        b.secret,
        overlap,
    )?)
}

pub(super) fn channel_secret(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    let secret = channels::secret(db, Some(call.ns()), call.id("channel")?)?;
    Reply::ok(&serde_json::json!({ "signing_secret": secret }))
}

pub(super) fn test_channel(_: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let id = call.id("channel")?;
    body::json::<serde_json::Map<String, serde_json::Value>>(call.request, true)
        .and_then(no_fields)?;
    let event = channels::send_test(db, Some(call.ns()), id)?;
    Reply::json(201, &serde_json::json!({ "ids": [event] }))
}

pub(super) fn resend_channel(_: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let id = call.id("channel")?;
    let b: BulkResend = body::json(call.request, true)?;
    let since = b
        .since
        .as_deref()
        .map(|s| channels::parse_since("since", s))
        .transpose()?;
    let state = b.state.as_deref().map(|s| state("state", s)).transpose()?;
    Reply::ok(&channels::resend(
        db,
        Some(call.ns()),
        id,
        since,
        state,
        b.dry_run,
    )?)
}

pub(super) fn list_rules(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    let (page, _) = page(call)?;
    Reply::ok(&rules::list(db, Some(call.ns()), Some(page))?)
}

pub(super) fn create_rule(_: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let b: RuleCreate = body::json(call.request, false)?;
    let input = NewRuleInput {
        namespace: call.ns().to_string(),
        name: b.name,
        event_type: b.event_type,
        channels: b.channels,
        filter: b.filter,
    };
    Reply::json(201, &rules::create(db, input)?)
}

pub(super) fn update_rule(_: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let id = call.id("rule")?;
    let b: RuleUpdate = body::json(call.request, false)?;
    if let Some(set) = &b.channels {
        if set.is_empty() {
            return Err(OpsError::invalid(
                "channels",
                "a rule must keep at least one channel (delete the rule instead)",
            )
            .into());
        }
    }
    let patch = RulePatch {
        set: b.channels,
        filter: b.filter,
        ..RulePatch::default()
    };
    Reply::ok(&rules::update(db, Some(call.ns()), id, patch)?)
}

pub(super) fn get_rule(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    Reply::ok(&rules::get(db, Some(call.ns()), call.id("rule")?)?)
}

pub(super) fn delete_rule(_: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    rules::delete(db, Some(call.ns()), call.id("rule")?)?;
    Ok(Reply::empty())
}

pub(super) fn create_event(
    _: &Ctx,
    call: &Call<'_>,
    conn: &mut WorkerConn,
    actor: &Actor,
) -> Answer {
    let b: EventCreate = body::json(call.request, false)?;
    let input = EmitInput {
        namespace: call.ns().to_string(),
        event_type: b.event_type,
        payload: b.payload,
        annotations: b.annotations,
    };
    match call.request.header("idempotency-key") {
        None => Reply::json(
            201,
            &events::Emitted::new(events::emit_pooled(conn, &input, actor)?, &input),
        ),
        Some(key) => {
            match events::emit_idempotent(&mut conn.client, &input, key, &call.request.body, actor)?
            {
                Idempotent::Fresh(emitted) => Reply::json(201, &emitted),
                Idempotent::Replayed { status, body } => {
                    Ok(Reply::json(status, &body)?.with_header(super::REPLAYED_HEADER, "true"))
                }
            }
        }
    }
}

pub(super) fn list_events(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    let (page, q) = page(call)?;
    let query = ListQuery {
        event_type: q.get("type").cloned(),
        state: q.get("state").map(|s| state("state", s)).transpose()?,
        channel: q
            .get("channel")
            .map(|c| {
                c.parse::<Uuid>().map_err(|_| {
                    ApiError::from(OpsError::invalid(
                        "channel",
                        format!("{c:?} is not a channel id"),
                    ))
                })
            })
            .transpose()?,
        since: q
            .get("since")
            .map(|s| channels::parse_since("since", s))
            .transpose()?,
    };
    Reply::ok(&events::list(db, Some(call.ns()), &query, page)?)
}

pub(super) fn list_event_types(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    body::query(call.query, call.route.query)?;
    let items = event_types::list(db, call.ns())?;
    Reply::ok(&serde_json::json!({ "items": items }))
}

/// The `{type}` path parameter (an event type of the namespace).
fn event_type<'a>(call: &'a Call<'_>) -> Result<&'a str, ApiError> {
    let t = call.param("type");
    crate::ops::name_like("type", t)?;
    Ok(t)
}

pub(super) fn get_event_type(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    let t = event_type(call)?;
    Reply::ok(&event_types::get(db, call.ns(), t)?)
}

pub(super) fn describe_event_type(_: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let t = event_type(call)?;
    let b: EventTypeDescribe = body::json(call.request, false)?;
    let text = b.description.flatten().unwrap_or_default();
    Reply::ok(&event_types::describe(db, call.ns(), t, &text)?)
}

/// An event with its deliveries, as `GET .../events/{id}` answers it.
#[derive(serde::Serialize)]
struct EventDetail {
    #[serde(flatten)]
    event: crate::db::events::Event,
    deliveries: Vec<crate::db::statuses::DeliveryStatus>,
}

pub(super) fn get_event(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    let (event, deliveries) = events::show(db, Some(call.ns()), call.id("event")?)?;
    Reply::ok(&EventDetail { event, deliveries })
}

pub(super) fn resend_event(_: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let id = call.id("event")?;
    let b: EventResend = body::json(call.request, true)?;
    Reply::ok(&events::resend(db, Some(call.ns()), id, b.channel)?)
}

/// `POST .../portal` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalCreate {
    read_only: Option<bool>,
    expires_in: Option<String>,
}

/// The default lifetime of a portal link (or `api.max_portal_ttl`, when
/// shorter).
const PORTAL_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub(super) fn create_portal(ctx: &Ctx, call: &Call<'_>, db: &mut Tx<'_>) -> Answer {
    let b: PortalCreate = body::json(call.request, true)?;
    let max = ctx.config.api.max_portal_ttl;
    let ttl = match &b.expires_in {
        None => PORTAL_TTL.min(max),
        Some(text) => channels::parse_duration("expires_in", text)?,
    };
    if ttl.is_zero() || ttl > max {
        return Err(OpsError::invalid(
            "expires_in",
            format!(
                "{}: a portal link lives more than 0s and at most {} (api.max_portal_ttl)",
                humantime::format_duration(ttl),
                humantime::format_duration(max)
            ),
        )
        .into());
    }
    let created = crate::ops::tokens::create(
        db,
        crate::ops::tokens::NewTokenInput {
            name: "portal link".into(),
            namespace: Some(call.ns().to_string()),
            read_only: b.read_only.unwrap_or(true),
            expires: Some(ttl),
        },
    )?;
    // Never built from the request's Host: a forged Host would make a link
    // to someone else's site.
    let base = ctx.config.api.public_url.as_deref().unwrap_or("");
    Reply::json(
        201,
        &serde_json::json!({
            "id": created.record.id,
            "url": format!("{base}/console/#token={}", created.token),
            "token": created.token,
            "expires_at": created.record.expires_at,
        }),
    )
}

pub(super) fn list_audit(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    let (page, q) = page(call)?;
    let since = q
        .get("since")
        .map(|s| channels::parse_since("since", s))
        .transpose()?;
    Reply::ok(&crate::ops::audit::list(db, Some(call.ns()), since, page)?)
}

pub(super) fn stats(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    Reply::ok(&events::stats(db, call.ns())?)
}

pub(super) fn status(ctx: &Ctx, _: &Call<'_>, db: &mut Client) -> Answer {
    Reply::ok(&crate::ops::status::report(db, &ctx.config)?)
}

pub(super) fn whoami(_: &Ctx, call: &Call<'_>, _: &mut Client) -> Answer {
    Reply::ok(&call.token)
}

pub(super) fn namespaces(_: &Ctx, call: &Call<'_>, db: &mut Client) -> Answer {
    let items = match call.token.as_ref().and_then(|t| t.namespace.clone()) {
        Some(ns) => vec![ns],
        None => crate::db::events::namespaces(db)?,
    };
    Reply::ok(&serde_json::json!({ "items": items }))
}
