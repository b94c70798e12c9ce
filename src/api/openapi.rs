//! The OpenAPI 3.1 document of the management API, made from the route
//! table (`routes::ROUTES`) and the schemas below, served at
//! `GET /v1/openapi.json` and committed as `docs/openapi.json` (a test fails
//! when the two differ; `NR_WRITE_OPENAPI=1 cargo test --lib openapi`
//! rewrites the committed copy).

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::error::code_of;
use super::routes::{Access, Body, ROUTES};
use crate::http_server::Response;

/// The document, as served.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

/// The document as pretty JSON text (what docs/openapi.json holds).
pub fn text() -> String {
    let mut s = serde_json::to_string_pretty(document()).unwrap_or_default();
    s.push('\n');
    s
}

/// `GET /v1/openapi.json`.
pub fn response() -> Response {
    Response::text(200, "application/json", text())
}

fn nullable(t: &str) -> Value {
    json!({ "type": [t, "null"] })
}

fn time() -> Value {
    json!({ "type": "string", "format": "date-time" })
}

fn time_or_null() -> Value {
    json!({ "type": ["string", "null"], "format": "date-time" })
}

fn uuid() -> Value {
    json!({ "type": "string", "format": "uuid" })
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn object(props: Value, required: &[&str], closed: bool) -> Value {
    let mut o = json!({ "type": "object", "properties": props, "required": required });
    if closed {
        o["additionalProperties"] = json!(false);
    }
    o
}

fn list_of(item: &str) -> Value {
    object(
        json!({
            "items": { "type": "array", "items": reference(item) },
            "next_cursor": { "type": ["string", "null"], "description": "Pass as `cursor` for the next page; null on the last page." }
        }),
        &["items", "next_cursor"],
        false,
    )
}

fn state() -> Value {
    json!({ "type": "string", "enum": ["PENDING", "SENDING", "RESENDING", "SUCCESS", "FAILED"] })
}

/// The schemas of the audit trail and portal links.
fn add_edges(all: &mut Value) {
    all["AuditEntry"] = object(
        json!({
            "id": uuid(), "at": time(), "namespace": nullable("string"),
            "actor": {
                "type": "object",
                "description": "A token (kind \"token\", its id and name) or the command line (kind \"cli\", the OS user)",
                "properties": { "kind": { "type": "string", "enum": ["token", "cli"] }, "id": uuid(), "name": { "type": "string" }, "user": { "type": "string" } },
                "required": ["kind"]
            },
            "operation": { "type": "string", "description": "The operationId of the change (createChannel, revokeToken, ...)" },
            "object_kind": { "type": "string", "enum": ["channel", "rule", "event", "event_type", "token", "secrets"] },
            "object_id": nullable("string")
        }),
        &[
            "id",
            "at",
            "namespace",
            "actor",
            "operation",
            "object_kind",
            "object_id",
        ],
        false,
    );
    all["AuditList"] = list_of("AuditEntry");
    all["EventType"] = object(
        json!({
            "type": { "type": "string" },
            "description": { "type": ["string", "null"], "description": "What the type means, for customers (`event-type describe`); null until described" },
            "count": { "type": "integer", "minimum": 0, "description": "How many of its events are stored (retention removes old finished ones)" },
            "last_seen_at": time_or_null(),
            "rules": { "type": "integer", "minimum": 0, "description": "How many live rules (subscriptions) match it" }
        }),
        &["type", "description", "count", "last_seen_at", "rules"],
        false,
    );
    all["EventTypeList"] = object(
        json!({ "items": { "type": "array", "items": reference("EventType") } }),
        &["items"],
        false,
    );
    all["EventTypeDescribe"] = object(
        json!({
            "description": { "type": ["string", "null"], "maxLength": 1000, "description": "Shown to customers; empty or null removes it" }
        }),
        &["description"],
        true,
    );
    all["PortalCreate"] = object(
        json!({
            "read_only": { "type": "boolean", "default": true, "description": "A read-only link (the default) sees no secret and no header value" },
            "expires_in": { "type": "string", "default": "24h", "description": "Lifetime, e.g. \"30m\", \"24h\"; at most api.max_portal_ttl" }
        }),
        &[],
        true,
    );
    all["Portal"] = object(
        json!({
            "id": { "type": "string", "format": "uuid", "description": "The new token's id (what `token revoke` takes)" },
            "url": { "type": "string", "description": "<api.public_url>/console/#token=...; relative when api.public_url is unset" },
            "token": { "type": "string" },
            "expires_at": time()
        }),
        &["id", "url", "token", "expires_at"],
        false,
    );
}

fn schemas() -> Value {
    let channel_props = json!({
        "id": uuid(), "namespace": { "type": "string" }, "name": { "type": "string" },
        "type": { "type": "string", "enum": ["webhook"] }, "url": { "type": "string" },
        "headers": { "type": "object", "additionalProperties": { "type": "string" } },
        "previous_secret_until": time_or_null(), "disabled": { "type": "boolean" },
        "disabled_reason": nullable("string"), "failing_since": time_or_null(),
        "created_at": time(), "updated_at": time(), "deleted_at": time_or_null(),
        "breaker": { "type": ["string", "null"], "enum": ["closed", "open", "half_open", null], "description": "null when no instance leads" },
        "in_flight": { "type": "integer", "minimum": 0 },
        "open_until": { "type": "string" },
        "rate_limit": { "type": ["string", "null"], "pattern": "^[0-9]+/[sm]$", "description": "At most N request starts per second (N/s) or minute (N/m); null: no limit" },
        "ordered": { "type": "boolean", "description": "One delivery in flight at a time, in enqueue order" },
        "held_back": { "type": ["integer", "null"], "minimum": 0, "description": "Rate-limited or ordered: deliveries due now and not in flight; null for other channels" },
        "waiting_on": {
            "type": ["object", "null"],
            "description": "Ordered: the delivery the later ones wait on",
            "properties": {
                "event_id": uuid(), "state": state(), "next_attempt_at": time_or_null(),
                "attempt_count": { "type": "integer", "minimum": 0 }
            },
            "required": ["event_id", "state", "attempt_count"]
        }
    });
    let channel_required = [
        "id",
        "namespace",
        "name",
        "type",
        "url",
        "headers",
        "disabled",
        "created_at",
        "updated_at",
        "breaker",
        "in_flight",
        "rate_limit",
        "ordered",
        "held_back",
        "waiting_on",
    ];
    let mut created_props = channel_props.clone();
    created_props["signing_secret"] =
        json!({ "type": "string", "description": "whsec_ + base64; shown once" });
    created_props["warning"] = json!({ "type": "string", "description": "Present when another live channel of the namespace has the same name (the channel is created all the same)." });
    let mut created_required = channel_required.to_vec();
    created_required.push("signing_secret");
    let svix_health = object(
        json!({ "url": { "type": "string" }, "reachable": { "type": "boolean" }, "error": { "type": "string" } }),
        &["url", "reachable"],
        false,
    );
    let attempt = object(
        json!({
            "timestamp": time(), "state": state(), "http_status": nullable("integer"),
            "duration_ms": { "type": "integer", "minimum": 0 }, "url": { "type": "string" },
            "response_body": nullable("string"), "error": nullable("string"),
            "svix_message_id": { "type": "string", "description": "With the Svix provider: the Svix message this attempt (made by Svix) belongs to" }
        }),
        &["timestamp", "state", "duration_ms", "url"],
        false,
    );
    let delivery = object(
        json!({
            "id": uuid(), "event_id": uuid(), "channel_id": uuid(), "state": state(),
            "reason": { "type": "string" }, "next_attempt_at": time_or_null(),
            "attempt_count": { "type": "integer" }, "round_attempts": { "type": "integer" },
            "attempts": { "type": "array", "items": reference("Attempt") },
            "clock_started_at": time(), "created_at": time(), "updated_at": time(),
            "version": { "type": "integer" }
        }),
        &[
            "id",
            "event_id",
            "channel_id",
            "state",
            "reason",
            "attempt_count",
            "attempts",
            "created_at",
            "updated_at",
        ],
        false,
    );
    let counts = json!({ "type": "object", "additionalProperties": { "type": "integer" } });
    let event_ids = object(
        json!({ "ids": { "type": "array", "items": uuid() } }),
        &["ids"],
        false,
    );
    let events_emitted = object(
        json!({
            "ids": { "type": "array", "items": uuid(), "description": "One event per matching active rule." },
            "rules_matched": { "type": "integer", "minimum": 0, "description": "How many active rules matched the type (and filter); 0 means nothing was enqueued." },
            "warning": { "type": "string", "description": "Present when no rule matched: what to create so that this type is delivered." }
        }),
        &["ids"],
        false,
    );
    let mut all = json!({
        "Error": object(json!({
            "error": object(json!({
                "code": { "type": "string", "enum": ["bad_request", "unauthorized", "forbidden", "not_found", "method_not_allowed", "conflict", "too_large", "unsupported_media_type", "invalid", "unavailable", "internal"] },
                "message": { "type": "string" },
                "param": { "type": "string", "description": "The field at fault, when one is." }
            }), &["code", "message"], false)
        }), &["error"], false),
        "Empty": { "type": "object", "maxProperties": 0, "description": "No fields; the body may also be empty." },
        "ChannelCreate": object(json!({
            "name": { "type": "string", "minLength": 1, "maxLength": 200 },
            "url": { "type": "string", "description": "http(s) URL; a literal address must pass the SSRF guard" },
            "headers": { "type": "object", "additionalProperties": { "type": "string" } },
            "secret": { "type": "string", "description": "whsec_ + base64; generated when omitted" },
            "disabled": { "type": "boolean" },
            "rate_limit": { "type": "string", "description": "\"N/s\" or \"N/m\", N from 1 to 10000" },
            "ordered": { "type": "boolean" }
        }), &["name", "url"], true),
        "ChannelUpdate": object(json!({
            "name": { "type": "string", "minLength": 1, "maxLength": 200 },
            "url": { "type": "string" },
            "headers": { "type": "object", "additionalProperties": { "type": "string" }, "description": "Replaces every custom header" },
            "rate_limit": { "type": ["string", "null"], "description": "\"N/s\" or \"N/m\"; null removes the limit" },
            "ordered": { "type": "boolean" }
        }), &[], true),
        "Rotate": object(json!({
            "secret": { "type": "string" },
            "overlap": { "type": "string", "description": "Duration such as \"24h\" (default) or \"0s\"" }
        }), &[], true),
        "BulkResend": object(json!({
            "since": { "type": "string", "description": "RFC 3339 time or a duration ago such as \"24h\"" },
            "state": { "type": "string", "enum": ["SUCCESS", "FAILED", "SENDING"] },
            "dry_run": { "type": "boolean" }
        }), &[], true),
        "RuleCreate": object(json!({
            "name": { "type": "string", "minLength": 1, "maxLength": 200 },
            "event_type": { "type": "string", "minLength": 1, "maxLength": 200 },
            "channels": { "type": "array", "items": uuid(), "minItems": 1 },
            "filter": { "type": "string", "description": "A PostgreSQL jsonpath predicate over the payload, e.g. \"$.amount > 1000\"" }
        }), &["name", "event_type", "channels"], true),
        "RuleUpdate": object(json!({
            "channels": { "type": "array", "items": uuid(), "minItems": 1, "description": "The whole new list" },
            "filter": { "type": ["string", "null"], "description": "A jsonpath predicate; null removes the filter" }
        }), &[], true),
        "EventCreate": object(json!({
            "type": { "type": "string", "minLength": 1, "maxLength": 200 },
            "payload": { "type": "object" },
            "annotations": { "type": "object" }
        }), &["type", "payload"], true),
        "EventResend": object(json!({ "channel": uuid() }), &[], true),
        "Channel": object(channel_props, &channel_required, false),
        "ChannelCreated": object(created_props, &created_required, false),
        "ChannelList": list_of("Channel"),
        "Rule": object(json!({
            "id": uuid(), "namespace": { "type": "string" }, "name": { "type": "string" },
            "event_type": { "type": "string" }, "disabled": { "type": "boolean" },
            "channels": { "type": "array", "items": uuid() },
            "filter": nullable("string"),
            "created_at": time(), "updated_at": time()
        }), &["id", "namespace", "name", "event_type", "disabled", "channels", "created_at", "updated_at"], false),
        "RuleList": list_of("Rule"),
        "EventIds": event_ids,
        "EventSummary": object(json!({
            "id": uuid(), "namespace": { "type": "string" }, "type": { "type": "string" },
            "created_at": time(), "states": { "type": "array", "items": state() }
        }), &["id", "namespace", "type", "created_at", "states"], false),
        "EventList": list_of("EventSummary"),
        "Attempt": attempt,
        "Delivery": delivery,
        "EventDetail": object(json!({
            "id": uuid(), "namespace": { "type": "string" }, "type": { "type": "string" },
            "rule_id": { "type": ["string", "null"], "format": "uuid" },
            "payload": { "type": "object" }, "annotations": { "type": "object" },
            "created_at": time(),
            "deliveries": { "type": "array", "items": reference("Delivery") }
        }), &["id", "namespace", "type", "payload", "created_at", "deliveries"], false),
        "ResendReport": object(json!({
            "resent": { "type": "array", "items": object(json!({ "channel_id": uuid(), "channel_name": { "type": "string" }, "was": state() }), &["channel_id", "channel_name", "was"], false) },
            "refused": { "type": "array", "items": object(json!({ "channel_id": uuid(), "state": state() }), &["channel_id", "state"], false) }
        }), &["resent", "refused"], false),
        "BulkResendReport": object(json!({
            "channel_id": uuid(), "channel_name": { "type": "string" },
            "resent": { "type": "integer" }, "by_state": counts.clone(), "dry_run": { "type": "boolean" }
        }), &["channel_id", "channel_name", "resent", "by_state", "dry_run"], false),
        "Rotated": object(json!({ "signing_secret": { "type": "string" }, "previous_secret_until": time_or_null() }), &["signing_secret", "previous_secret_until"], false),
        "Secret": object(json!({ "signing_secret": { "type": "string" } }), &["signing_secret"], false),
        "Token": object(json!({
            "id": uuid(), "name": { "type": "string" }, "namespace": nullable("string"),
            "admin": { "type": "boolean" }, "read_only": { "type": "boolean" },
            "created_at": time(), "expires_at": time_or_null(), "revoked_at": time_or_null()
        }), &["id", "name", "namespace", "admin", "read_only", "created_at"], false),
        "NamespaceList": object(json!({ "items": { "type": "array", "items": { "type": "string" } } }), &["items"], false),
        "Stats": object(json!({
            "by_state": counts.clone(), "due_now": { "type": "integer" },
            "oldest_unfinished_age_seconds": nullable("number"),
            "breakers_open": { "type": "integer", "minimum": 0 },
            "per_minute": { "type": "array", "items": object(json!({ "minute": time(), "deliveries": { "type": "integer" }, "failures": { "type": "integer" } }), &["minute", "deliveries", "failures"], false) }
        }), &["by_state", "due_now", "breakers_open", "per_minute"], false),
        "Status": object(json!({
            "by_state": counts, "due_now": { "type": "integer" },
            "schema": { "type": "string" }, "schema_version": { "type": "integer" },
            "shard_count": { "type": "integer" },
            "provider": { "type": "string", "enum": ["http", "svix"] },
            "svix": svix_health
        }), &["by_state", "due_now", "schema", "schema_version"], false),
        "OpenApi": { "type": "object" }
    });
    // Outside the macro: one more entry inside exceeds its recursion limit.
    all["EventsEmitted"] = events_emitted;
    add_edges(&mut all);
    all
}

fn error_response(status: u16) -> Value {
    let what = match status {
        400 => "Malformed request: not JSON, not UTF-8, an unknown field or query parameter, a repeated parameter",
        401 => "No token, or an unknown, revoked or expired one",
        403 => "The token may not do this (read-only token on a write or a signing secret; a non-admin token on an admin route)",
        404 => "No such object in this namespace (another namespace's objects answer 404 too)",
        409 => "The object's state forbids it (e.g. resending to a disabled channel)",
        413 => "Body over api.max_body_bytes, or payload over delivery.max_payload_bytes",
        415 => "The body is not JSON (Content-Type must be application/json)",
        422 => "Valid JSON with a value that is not acceptable (a wrong type, a bad URL, a refused address, a bad duration, a bad cursor)",
        429 => "The token is over api.token_rate_limit; retry after the Retry-After header's seconds",
        503 => "The database is unreachable or busy; try again",
        _ => "Error",
    };
    json!({
        "description": format!("{what} (code `{}`)", code_of(status)),
        "content": { "application/json": { "schema": reference("Error") } }
    })
}

fn query_parameter(name: &str) -> Value {
    let (schema, what) = match name {
        "limit" => (
            json!({ "type": "integer", "minimum": 1, "maximum": 500, "default": 50 }),
            "Rows per page",
        ),
        "cursor" => (
            json!({ "type": "string" }),
            "The next_cursor of the previous page",
        ),
        "type" => (json!({ "type": "string" }), "Only events of this type"),
        "state" => (state(), "Only events with a delivery in this state"),
        "channel" => (uuid(), "Only events with a delivery to this channel"),
        "since" => (
            json!({ "type": "string" }),
            "Only events created at or after this time (RFC 3339, or a duration ago such as 24h)",
        ),
        _ => (json!({ "type": "string" }), ""),
    };
    json!({ "name": name, "in": "query", "required": false, "description": what, "schema": schema })
}

fn path_parameter(name: &str) -> Value {
    let what = match name {
        "ns" => "The namespace (tenant)",
        "type" => "The event type (percent-encoded)",
        _ => "The object's id (a UUID; anything else answers 404)",
    };
    json!({ "name": name, "in": "path", "required": true, "description": what, "schema": { "type": "string", "minLength": 1 } })
}

fn operation(route: &super::routes::Route) -> Value {
    let mut op = json!({
        "operationId": route.operation,
        "summary": route.summary,
    });
    let mut params: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(path_parameter)
        .collect();
    params.extend(route.query.iter().map(|q| query_parameter(q)));
    if route.operation == "createEvent" {
        params.push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Makes a retried POST safe: the same key in the same namespace within 24 h returns the first answer and enqueues nothing; with another body it answers 422.",
            "schema": { "type": "string", "minLength": 1, "maxLength": 255 }
        }));
    }
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    match route.body {
        Body::None => {}
        Body::Required(s) | Body::Optional(s) => {
            op["requestBody"] = json!({
                "required": matches!(route.body, Body::Required(_)),
                "content": { "application/json": { "schema": reference(s) } }
            });
        }
    }
    let mut responses = Map::new();
    let ok = match route.answer {
        Some(s) => {
            json!({ "description": "OK", "content": { "application/json": { "schema": reference(s) } } })
        }
        None => json!({ "description": "Done; no body" }),
    };
    responses.insert(route.ok.to_string(), ok);
    let mut errors: Vec<u16> = route.errors.to_vec();
    if route.access != Access::Public {
        errors.extend([401, 429, 503]);
        if route.access != Access::Read {
            errors.push(403);
        }
        if route.path.contains('{') {
            errors.push(404);
        }
    }
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        responses.insert(status.to_string(), error_response(status));
    }
    op["responses"] = Value::Object(responses);
    if route.access == Access::Public {
        op["security"] = json!([]);
    }
    op
}

fn build() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[route.method.to_ascii_lowercase()] = operation(route);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "notification-reconciler management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Channels, rules, events and their delivery record. JSON in and out. Every route but this document needs `Authorization: Bearer TOKEN` (made by `notification-reconciler token create`). A namespace token works only under its own namespace (others answer 404); a read-only token gets 403 on every write and on the signing secret, and sees header values as \"***\"; admin tokens work everywhere. Every answer carries Cache-Control: no-store; above api.token_rate_limit a token gets 429 with Retry-After. Errors: {\"error\": {\"code\", \"message\", \"param\"?}}."
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_document_is_the_served_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        if std::env::var_os("NR_WRITE_OPENAPI").is_some() {
            std::fs::write(path, text()).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == text(),
            "docs/openapi.json differs from the served document: run NR_WRITE_OPENAPI=1 cargo test --lib openapi and commit it"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let doc = text();
        let schemas = document()["components"]["schemas"].as_object().unwrap();
        for (i, _) in doc.match_indices("#/components/schemas/") {
            let rest = &doc[i + "#/components/schemas/".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(schemas.contains_key(&name), "missing schema {name}");
        }
        assert_eq!(document()["paths"].as_object().unwrap().len(), 22);
    }
}
