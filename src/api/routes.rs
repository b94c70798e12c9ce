//! The API's routes: one table that both the dispatcher and the OpenAPI
//! document (`openapi`) read, so the document cannot name a route that is
//! not served nor miss one that is. Each route says who may call it, what
//! body and query it takes, what it answers and which errors it can give.

use super::error::ApiError;
use super::{handlers as h, Call, Ctx, Reply};
use crate::db::audit::Actor;
use crate::db::WorkerConn;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anybody, no token.
    Public,
    /// Any live token that may see the namespace.
    Read,
    /// Such a token that is not read-only.
    Write,
    /// A read that reveals a secret: such a token that is not read-only
    /// (a read-only token, e.g. a support or portal link, never sees one).
    Reveal,
    /// An admin token.
    Admin,
}

/// A request body a route takes.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// None.
    None,
    /// Required: the schema's name in `components.schemas`.
    Required(&'static str),
    /// Optional (an empty body is `{}`).
    Optional(&'static str),
}

/// What answers a route.
#[derive(Clone, Copy)]
pub enum Handler {
    /// Needs a database connection and a token.
    Db(fn(&Ctx, &Call<'_>, &mut postgres::Client) -> Result<Reply, ApiError>),
    /// A change: runs in a transaction that also writes its audit row.
    Write(fn(&Ctx, &Call<'_>, &mut postgres::Transaction<'_>) -> Result<Reply, ApiError>),
    /// A change that writes its own audit row for the given actor, in the
    /// change's own statement: posting an event (the hot write) costs one
    /// round trip and one commit, as a producer's `enqueue_event` does.
    WriteAuditing(fn(&Ctx, &Call<'_>, &mut WorkerConn, &Actor) -> Result<Reply, ApiError>),
    /// The OpenAPI document (`openapi::response`), from memory, without a
    /// token. Named, not a function pointer, so that this table (which
    /// `openapi` reads) does not import `openapi` back.
    OpenApi,
}

/// One route.
#[derive(Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template: literal segments and `{name}` parameters.
    pub path: &'static str,
    /// The OpenAPI operationId (also the metrics' `route` label).
    pub operation: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Query parameters it takes.
    pub query: &'static [&'static str],
    /// Its body.
    pub body: Body,
    /// Its success status.
    pub ok: u16,
    /// The success body's schema (`None`: no body).
    pub answer: Option<&'static str>,
    /// The error statuses it can give besides 401/403/404 of access.
    pub errors: &'static [u16],
    /// What answers it.
    pub handler: Handler,
}

const NS: &str = "/v1/namespaces/{ns}";
const _: () = assert!(NS.len() == 19);

const PAGE: &[&str] = &["limit", "cursor"];

/// Every route.
pub static ROUTES: &[Route] = &[
    Route { method: "GET", path: "/v1/openapi.json", operation: "getOpenApi", summary: "The OpenAPI 3.1 document of this API", access: Access::Public, query: &[], body: Body::None, ok: 200, answer: Some("OpenApi"), errors: &[], handler: Handler::OpenApi },
    Route { method: "GET", path: "/v1/token", operation: "getToken", summary: "The token this request carries (never the token itself)", access: Access::Read, query: &[], body: Body::None, ok: 200, answer: Some("Token"), errors: &[], handler: Handler::Db(h::whoami) },
    Route { method: "GET", path: "/v1/namespaces", operation: "listNamespaces", summary: "The namespaces this token may see", access: Access::Read, query: &[], body: Body::None, ok: 200, answer: Some("NamespaceList"), errors: &[], handler: Handler::Db(h::namespaces) },
    Route { method: "GET", path: "/v1/status", operation: "getStatus", summary: "The service's status (what `status --json` prints); admin tokens only", access: Access::Admin, query: &[], body: Body::None, ok: 200, answer: Some("Status"), errors: &[], handler: Handler::Db(h::status) },
    Route { method: "GET", path: "/v1/namespaces/{ns}/stats", operation: "getStats", summary: "Delivery counts of the namespace and attempts per minute over the last hour", access: Access::Read, query: &[], body: Body::None, ok: 200, answer: Some("Stats"), errors: &[], handler: Handler::Db(h::stats) },
    Route { method: "GET", path: "/v1/namespaces/{ns}/channels", operation: "listChannels", summary: "The namespace's channels, oldest first, a page at a time", access: Access::Read, query: PAGE, body: Body::None, ok: 200, answer: Some("ChannelList"), errors: &[400, 422], handler: Handler::Db(h::list_channels) },
    Route { method: "POST", path: "/v1/namespaces/{ns}/channels", operation: "createChannel", summary: "Create a webhook channel; the answer carries its signing secret", access: Access::Write, query: &[], body: Body::Required("ChannelCreate"), ok: 201, answer: Some("ChannelCreated"), errors: &[400, 413, 415, 422], handler: Handler::Write(h::create_channel) },
    Route { method: "GET", path: "/v1/namespaces/{ns}/channels/{id}", operation: "getChannel", summary: "One channel with its health (breaker, in flight, failing since, disabled reason)", access: Access::Read, query: &[], body: Body::None, ok: 200, answer: Some("Channel"), errors: &[], handler: Handler::Db(h::get_channel) },
    Route { method: "PATCH", path: "/v1/namespaces/{ns}/channels/{id}", operation: "updateChannel", summary: "Change a channel's name, URL, custom headers, rate limit or order; deliveries still due go to the new URL", access: Access::Write, query: &[], body: Body::Required("ChannelUpdate"), ok: 200, answer: Some("Channel"), errors: &[400, 413, 415, 422], handler: Handler::Write(h::update_channel) },
    Route { method: "DELETE", path: "/v1/namespaces/{ns}/channels/{id}", operation: "deleteChannel", summary: "Delete a channel (its pending deliveries fail)", access: Access::Write, query: &[], body: Body::None, ok: 204, answer: None, errors: &[], handler: Handler::Write(h::delete_channel) },
    Route { method: "POST", path: "/v1/namespaces/{ns}/channels/{id}/enable", operation: "enableChannel", summary: "Enable a channel", access: Access::Write, query: &[], body: Body::Optional("Empty"), ok: 200, answer: Some("Channel"), errors: &[400, 413, 415], handler: Handler::Write(h::enable_channel) },
    Route { method: "POST", path: "/v1/namespaces/{ns}/channels/{id}/disable", operation: "disableChannel", summary: "Disable a channel (its pending deliveries fail)", access: Access::Write, query: &[], body: Body::Optional("Empty"), ok: 200, answer: Some("Channel"), errors: &[400, 413, 415], handler: Handler::Write(h::disable_channel) },
    Route { method: "POST", path: "/v1/namespaces/{ns}/channels/{id}/rotate-secret", operation: "rotateChannelSecret", summary: "Replace the signing secret; during the overlap requests carry both signatures", access: Access::Write, query: &[], body: Body::Optional("Rotate"), ok: 200, answer: Some("Rotated"), errors: &[400, 413, 415, 422], handler: Handler::Write(h::rotate_secret) },
    Route { method: "GET", path: "/v1/namespaces/{ns}/channels/{id}/secret", operation: "getChannelSecret", summary: "The channel's current signing secret (shown only when asked for; not to read-only tokens)", access: Access::Reveal, query: &[], body: Body::None, ok: 200, answer: Some("Secret"), errors: &[], handler: Handler::Db(h::channel_secret) },
    Route { method: "POST", path: "/v1/namespaces/{ns}/channels/{id}/test", operation: "sendTestEvent", summary: "Send a `webhook.test` event to this channel only", access: Access::Write, query: &[], body: Body::Optional("Empty"), ok: 201, answer: Some("EventIds"), errors: &[400, 409, 413, 415], handler: Handler::Write(h::test_channel) },
    Route { method: "POST", path: "/v1/namespaces/{ns}/channels/{id}/resend", operation: "resendChannel", summary: "Resend the channel's deliveries (of events since a time, in a state); dry_run only counts", access: Access::Write, query: &[], body: Body::Optional("BulkResend"), ok: 200, answer: Some("BulkResendReport"), errors: &[400, 409, 413, 415, 422], handler: Handler::Write(h::resend_channel) },
    Route { method: "GET", path: "/v1/namespaces/{ns}/rules", operation: "listRules", summary: "The namespace's rules, oldest first, a page at a time", access: Access::Read, query: PAGE, body: Body::None, ok: 200, answer: Some("RuleList"), errors: &[400, 422], handler: Handler::Db(h::list_rules) },
    Route { method: "POST", path: "/v1/namespaces/{ns}/rules", operation: "createRule", summary: "Create a rule: events of a type go to these channels", access: Access::Write, query: &[], body: Body::Required("RuleCreate"), ok: 201, answer: Some("Rule"), errors: &[400, 413, 415, 422], handler: Handler::Write(h::create_rule) },
    Route { method: "GET", path: "/v1/namespaces/{ns}/rules/{id}", operation: "getRule", summary: "One rule", access: Access::Read, query: &[], body: Body::None, ok: 200, answer: Some("Rule"), errors: &[], handler: Handler::Db(h::get_rule) },
    Route { method: "PATCH", path: "/v1/namespaces/{ns}/rules/{id}", operation: "updateRule", summary: "Change a rule's channels (the whole list) or payload filter (null removes it)", access: Access::Write, query: &[], body: Body::Required("RuleUpdate"), ok: 200, answer: Some("Rule"), errors: &[400, 413, 415, 422], handler: Handler::Write(h::update_rule) },
    Route { method: "DELETE", path: "/v1/namespaces/{ns}/rules/{id}", operation: "deleteRule", summary: "Delete a rule (it matches no new event; deliveries enqueued go on)", access: Access::Write, query: &[], body: Body::None, ok: 204, answer: None, errors: &[], handler: Handler::Write(h::delete_rule) },
    Route { method: "GET", path: "/v1/namespaces/{ns}/event-types", operation: "listEventTypes", summary: "The event types of the namespace (seen in its events, subscribed to by a rule, or described), with how many of their events are stored and when the last was written", access: Access::Read, query: &[], body: Body::None, ok: 200, answer: Some("EventTypeList"), errors: &[400], handler: Handler::Db(h::list_event_types) },
    Route { method: "GET", path: "/v1/namespaces/{ns}/event-types/{type}", operation: "getEventType", summary: "One event type with its description, count and last time seen (a type never seen has count 0)", access: Access::Read, query: &[], body: Body::None, ok: 200, answer: Some("EventType"), errors: &[422], handler: Handler::Db(h::get_event_type) },
    Route { method: "PATCH", path: "/v1/namespaces/{ns}/event-types/{type}", operation: "describeEventType", summary: "Set the description customers see for an event type (empty or null removes it)", access: Access::Write, query: &[], body: Body::Required("EventTypeDescribe"), ok: 200, answer: Some("EventType"), errors: &[400, 413, 415, 422], handler: Handler::Write(h::describe_event_type) },
    Route { method: "POST", path: "/v1/namespaces/{ns}/events", operation: "createEvent", summary: "Enqueue an event (one per matching rule); an Idempotency-Key makes a retry safe for 24 h", access: Access::Write, query: &[], body: Body::Required("EventCreate"), ok: 201, answer: Some("EventsEmitted"), errors: &[400, 413, 415, 422], handler: Handler::WriteAuditing(h::create_event) },
    Route { method: "GET", path: "/v1/namespaces/{ns}/events", operation: "listEvents", summary: "The namespace's events, newest first, filtered, a page at a time", access: Access::Read, query: &["type", "state", "channel", "since", "limit", "cursor"], body: Body::None, ok: 200, answer: Some("EventList"), errors: &[400, 422], handler: Handler::Db(h::list_events) },
    Route { method: "GET", path: "/v1/namespaces/{ns}/events/{id}", operation: "getEvent", summary: "One event with every delivery and its attempts", access: Access::Read, query: &[], body: Body::None, ok: 200, answer: Some("EventDetail"), errors: &[], handler: Handler::Db(h::get_event) },
    Route { method: "POST", path: "/v1/namespaces/{ns}/portal", operation: "createPortalLink", summary: "Mint a short-lived console link for the namespace (a new namespace token in the URL's fragment); admin tokens only", access: Access::Admin, query: &[], body: Body::Optional("PortalCreate"), ok: 201, answer: Some("Portal"), errors: &[400, 413, 415, 422], handler: Handler::Write(h::create_portal) },
    Route { method: "GET", path: "/v1/namespaces/{ns}/audit", operation: "listAudit", summary: "Who changed what in the namespace (the audit trail), newest first, a page at a time", access: Access::Read, query: &["since", "limit", "cursor"], body: Body::None, ok: 200, answer: Some("AuditList"), errors: &[400, 422], handler: Handler::Db(h::list_audit) },
    Route { method: "POST", path: "/v1/namespaces/{ns}/events/{id}/resend", operation: "resendEvent", summary: "Resend an event's finished deliveries (or the one to a channel)", access: Access::Write, query: &[], body: Body::Optional("EventResend"), ok: 200, answer: Some("ResendReport"), errors: &[400, 409, 413, 415, 422], handler: Handler::Write(h::resend_event) },
];

/// Path parameters: (name, percent-decoded value).
pub type Params = Vec<(&'static str, String)>;

/// The route for `method` and `path`, with its path parameters
/// (percent-decoded). A path no route has is 404; a path whose routes take
/// other methods is 405 naming them.
pub fn find(method: &str, path: &str) -> Result<(&'static Route, Params), ApiError> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut allowed = Vec::new();
    for route in ROUTES {
        let Some(params) = matches(route.path, &segments) else {
            continue;
        };
        if route.method == method {
            return Ok((route, params));
        }
        allowed.push(route.method);
    }
    if allowed.is_empty() {
        Err(ApiError::not_found(format!("no route {path:?}")))
    } else {
        Err(ApiError::new(
            405,
            format!(
                "{method} is not allowed on {path:?}; use {}",
                allowed.join(", ")
            ),
        )
        .with_header("allow", allowed.join(", ")))
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.method, self.path, self.operation)
    }
}

fn matches(template: &'static str, segments: &[&str]) -> Option<Params> {
    let parts: Vec<&'static str> = template.split('/').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (part, seg) in parts.iter().zip(segments) {
        match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) => {
                let value = percent_encoding::percent_decode_str(seg)
                    .decode_utf8()
                    .ok()?
                    .into_owned();
                if value.is_empty() {
                    return None;
                }
                params.push((name, value));
            }
            None if part == seg => {}
            None => return None,
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_with_their_parameters() {
        let (r, p) = find("GET", "/v1/namespaces/acme%20co/channels/abc").unwrap();
        assert_eq!(r.operation, "getChannel");
        assert_eq!(
            p,
            vec![("ns", "acme co".to_string()), ("id", "abc".to_string())]
        );
        let e = find("PUT", "/v1/namespaces/a/channels").unwrap_err();
        assert_eq!(e.status, 405);
        assert_eq!(e.headers, vec![("allow", "GET, POST".to_string())]);
        assert_eq!(find("GET", "/v1/nothing").unwrap_err().status, 404);
        assert_eq!(
            find("GET", "/v1/namespaces//channels").unwrap_err().status,
            404
        );
        assert_eq!(
            find("GET", "/v1/namespaces/%ff/channels")
                .unwrap_err()
                .status,
            404
        );
    }

    #[test]
    fn every_route_is_unique_and_every_namespaced_route_is_under_ns() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method, r.path)), "{} {}", r.method, r.path);
            assert!(seen.insert(("op", r.operation)), "{}", r.operation);
            if r.path.contains("{id}") {
                assert!(r.path.starts_with(NS), "{}", r.path);
            }
            let writes = matches!(r.method, "POST" | "PATCH" | "DELETE");
            if writes {
                // Every write is refused to read-only tokens; the portal
                // route needs an admin token besides.
                assert!(
                    matches!(r.access, Access::Write | Access::Admin),
                    "{} {}",
                    r.method,
                    r.path
                );
            } else {
                assert_ne!(r.access, Access::Write, "{} {}", r.method, r.path);
            }
            // Every change leaves an audit row.
            let audited = matches!(r.handler, Handler::Write(_) | Handler::WriteAuditing(_));
            assert_eq!(audited, writes, "{} {}", r.method, r.path);
        }
    }
}
