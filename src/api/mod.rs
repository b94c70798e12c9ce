//! The management API: JSON over HTTP on `api.listen`, served by `run` on
//! leader and standby instances alike (it needs only the database). This
//! module routes a request ([`routes::ROUTES`], the one table the OpenAPI
//! document is also made from), authenticates it, checks the token may do
//! what it asks, gets a pooled connection and calls the route's handler;
//! the handlers call `ops`, the operations the command line calls too.
//!
//! Access: a namespace token works only under its own `{ns}` (anything else
//! answers 404, as if it did not exist); an admin token works everywhere; a
//! read-only token gets 403 on every write. `/v1/openapi.json` and
//! `/console/` need no token. The web console's files come from `console`.

mod auth;
mod body;
pub mod error;
mod handlers;
pub mod openapi;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::db::tokens::Token;
use crate::db::{self, DbError};
use crate::delivery::ssrf::Guard;
use crate::http_server::{self, Request, Response, Server};
use crate::service::metrics::Telemetry;

use error::ApiError;
use routes::{Access, Route};

/// How long a request waits for a pooled connection before it is answered
/// 503.
pub const POOL_WAIT: Duration = Duration::from_secs(5);

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    /// `api.listen` cannot be bound.
    #[error(
        "cannot listen on api.listen = {addr}: {source}{}",
        crate::http_server::bind_hint("api.listen", source)
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The pool cannot be made.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What every request can reach.
pub struct Ctx {
    pool: db::Pool,
    guard: Guard,
    config: Config,
    tokens: auth::TokenCache,
    limiter: auth::TokenLimiter,
    telemetry: Option<Arc<Telemetry>>,
}

/// One request being answered: its route, its path parameters and token.
pub struct Call<'a> {
    request: &'a Request,
    route: &'static Route,
    params: Vec<(&'static str, String)>,
    query: Option<&'a str>,
    token: Option<Token>,
}

impl Call<'_> {
    /// The `{ns}` path parameter.
    fn ns(&self) -> &str {
        self.param("ns")
    }

    fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The `{id}` path parameter as a UUID (404 when it is none).
    fn id(&self, what: &str) -> Result<uuid::Uuid, ApiError> {
        body::id(self.param("id"), what)
    }
}

/// The header that marks an answer replayed for an `Idempotency-Key`.
const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A handler's answer.
pub struct Reply {
    status: u16,
    body: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

impl Reply {
    /// `status` with `value` as JSON.
    fn json<T: serde::Serialize>(status: u16, value: &T) -> Result<Reply, ApiError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| ApiError::new(500, format!("cannot encode the answer: {e}")))?;
        Ok(Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
        })
    }

    /// 200 with `value` as JSON.
    fn ok<T: serde::Serialize>(value: &T) -> Result<Reply, ApiError> {
        Reply::json(200, value)
    }

    /// 204 No Content.
    fn empty() -> Reply {
        Reply {
            status: 204,
            body: None,
            headers: Vec::new(),
        }
    }

    /// Whether this answer replays an earlier one (`Idempotency-Key`).
    fn replayed(&self) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(REPLAYED_HEADER))
    }

    fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A running API server; dropping it stops accepting and ends the thread
/// that expires idempotency keys.
pub struct Api {
    server: Server,
    _expiry: Option<Expiry>,
}

/// How often expired idempotency keys are removed.
const EXPIRY_EVERY: Duration = Duration::from_secs(600);

/// The thread that removes expired idempotency keys, in batches, and the
/// audit rows older than `retention.keep_audit`, every [`EXPIRY_EVERY`];
/// stopped and joined when dropped.
struct Expiry {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Expiry {
    fn start(pool: db::Pool, keep_audit: Duration) -> std::io::Result<Expiry> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("api-expiry".into())
            .spawn(move || loop {
                if let Ok(mut conn) = pool.get_timeout(POOL_WAIT) {
                    loop {
                        match db::idempotency::expire(&mut conn.client, 1000) {
                            Ok(1000) => continue,
                            Ok(_) => break,
                            Err(e) => {
                                log::warn!("api: {e}");
                                conn.discard = e.is_connection_lost();
                                break;
                            }
                        }
                    }
                    match crate::ops::audit::prune(&mut conn.client, keep_audit) {
                        Ok(0) => {}
                        Ok(n) => log::info!(
                            "api: pruned {n} audit row(s) older than retention.keep_audit"
                        ),
                        Err(e) => log::warn!("api: pruning the audit trail: {e}"),
                    }
                }
                if stopped.recv_timeout(EXPIRY_EVERY)
                    != Err(crossbeam_channel::RecvTimeoutError::Timeout)
                {
                    return;
                }
            })?;
        Ok(Expiry {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Api {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
}

/// Starts the API on `config.api.listen` (call only when it is set).
pub fn serve(
    config: &Config,
    addr: SocketAddr,
    telemetry: Option<Arc<Telemetry>>,
) -> Result<Api, ApiStartError> {
    let size = config.database.pool_size;
    let pool = db::pool(&config.database, size, &crate::lock::app_name("api"))?;
    let expiry = match Expiry::start(pool.clone(), config.retention.keep_audit) {
        Ok(e) => Some(e),
        Err(e) => {
            log::warn!("api: cannot start the idempotency key expiry: {e}");
            None
        }
    };
    let ctx = Arc::new(Ctx {
        pool,
        // No file path in the API's refusals: its callers may be customers.
        guard: Guard::new(config.delivery.allow_networks.clone()),
        config: config.clone(),
        tokens: auth::TokenCache::new(config.database.clone()),
        limiter: auth::TokenLimiter::new(config.api.token_rate_limit),
        telemetry,
    });
    let limits = http_server::Limits {
        max_body: config.api.max_body_bytes,
        idle_timeout: Duration::from_secs(30),
        max_connections: Some(config.api.max_connections),
        head_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
    };
    let server = Server::bind(addr, limits, move |rq| handle(&ctx, rq))
        .map_err(|source| ApiStartError::Listen { addr, source })?;
    log::info!(
        "api: listening on http://{0} (the web console: http://{0}/console/)",
        server.addr()
    );
    Ok(Api {
        server,
        _expiry: expiry,
    })
}

/// Answers one request.
pub fn handle(ctx: &Ctx, request: &Request) -> Response {
    let started = Instant::now();
    let (path, query) = match request.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (request.path.as_str(), None),
    };
    let (route_id, response) = match answer(ctx, request, path, query) {
        Ok((route, reply)) => (route, reply),
        Err((route, e)) => (route, e.response()),
    };
    let mut response = response;
    if path == "/v1" || path.starts_with("/v1/") {
        add_api_headers(&mut response);
    }
    let took = started.elapsed();
    if let Some(t) = &ctx.telemetry {
        t.metrics.api_request(route_id, response.status, took);
    }
    log::debug!(
        "api: {} {} -> {} in {:.1} ms",
        request.method,
        path,
        response.status,
        took.as_secs_f64() * 1000.0
    );
    response
}

/// What every `/v1` answer carries: answers hold secrets and are never to
/// be stored, sniffed, rendered as a page or framed (the console shares the
/// origin).
pub const API_HEADERS: [(&str, &str); 3] = [
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

fn add_api_headers(response: &mut Response) {
    for (name, value) in API_HEADERS {
        if !response.headers.iter().any(|(n, _)| n == name) {
            response.headers.push((name.into(), value.into()));
        }
    }
}

type Failed = (&'static str, ApiError);

fn answer(
    ctx: &Ctx,
    request: &Request,
    path: &str,
    query: Option<&str>,
) -> Result<(&'static str, Response), Failed> {
    if path == "/console" {
        return Ok((
            "console",
            Response::status(308).with_header("location", "/console/"),
        ));
    }
    if let Some(rest) = path.strip_prefix("/console/") {
        return console(request, rest)
            .map(|r| ("console", r))
            .map_err(|e| ("console", e));
    }
    let (route, params) = routes::find(&request.method, path).map_err(|e| ("unrouted", e))?;
    let id = route.operation;
    let fail = |e: ApiError| (id, e);
    if let routes::Handler::OpenApi = route.handler {
        return Ok((id, openapi::response()));
    }
    let token = ctx
        .tokens
        .authenticate(request.header("authorization"))
        .map_err(fail)?;
    ctx.limiter
        .take(token.id, Instant::now())
        .map_err(|wait| fail(auth::too_many(wait, ctx.config.api.token_rate_limit)))?;
    let ns = params
        .iter()
        .find(|(n, _)| *n == "ns")
        .map(|(_, v)| v.as_str());
    if let Some(ns) = ns {
        // A name that cannot be a namespace (control characters, too
        // long) does not exist either.
        if !crate::ops::tokens::may_see(&token, ns) || crate::ops::name_like("ns", ns).is_err() {
            // Saying which namespace the caller's own token is for leaks
            // nothing (it is the caller's token) and names the mistake.
            let message = match token.namespace.as_deref() {
                Some(own) if own != ns => format!(
                    "no namespace {ns:?} for this token: it is a token for namespace {own:?} \
                     (use /v1/namespaces/{own}/…, or a token of {ns:?} or an admin token)"
                ),
                _ => format!("no namespace {ns:?}"),
            };
            return Err(fail(ApiError::not_found(message)));
        }
    }
    match route.access {
        Access::Admin if !token.admin => {
            return Err(fail(ApiError::new(403, "this route needs an admin token")))
        }
        Access::Write if token.read_only => {
            return Err(fail(ApiError::new(403, "this token is read-only")))
        }
        Access::Admin if token.read_only && route.method != "GET" => {
            return Err(fail(ApiError::new(403, "this token is read-only")))
        }
        Access::Reveal if token.read_only => {
            return Err(fail(ApiError::new(
                403,
                "a read-only token never sees a signing secret; use a token that may write",
            )))
        }
        _ => {}
    }
    let call = Call {
        request,
        route,
        params,
        query,
        token: Some(token),
    };
    let mut conn = pooled(ctx).map_err(fail)?;
    let result = match route.handler {
        routes::Handler::Db(handler) => handler(ctx, &call, &mut conn.client),
        routes::Handler::Write(handler) => audited(ctx, &call, handler, &mut conn.client),
        routes::Handler::WriteAuditing(handler) => {
            actor(&call).and_then(|actor| handler(ctx, &call, &mut conn, &actor))
        }
        routes::Handler::OpenApi => unreachable!("answered above"),
    };
    if let Err(e) = &result {
        if e.status >= 500 {
            conn.discard = true;
        }
    }
    let reply = result.map_err(fail)?;
    let mut response = match reply.body {
        Some(body) => Response::text(reply.status, "application/json", body),
        None => Response::status(reply.status),
    };
    response.headers.extend(reply.headers);
    Ok((id, response))
}

/// The audit trail's actor of a call: its token.
fn actor(call: &Call<'_>) -> Result<crate::db::audit::Actor, ApiError> {
    let token = call
        .token
        .as_ref()
        .ok_or_else(|| ApiError::new(401, "send an API token"))?;
    Ok(crate::db::audit::Actor::Token {
        id: token.id,
        name: token.name.clone(),
    })
}

/// Runs a change and writes its audit row in one transaction: the route's
/// operation, the token as the actor, the object named by the path's
/// `{id}` or, for a create, by the answer's `"id"`.
fn audited(
    ctx: &Ctx,
    call: &Call<'_>,
    handler: fn(&Ctx, &Call<'_>, &mut postgres::Transaction<'_>) -> Result<Reply, ApiError>,
    client: &mut postgres::Client,
) -> Result<Reply, ApiError> {
    let actor = actor(call)?;
    let mut tx = client
        .transaction()
        .map_err(|e| ApiError::from(DbError::query("starting a change")(e)))?;
    let reply = handler(ctx, call, &mut tx)?;
    if reply.replayed() {
        // An Idempotency-Key replay changed nothing: its first answer's
        // change has its row.
        tx.commit()
            .map_err(|e| ApiError::from(DbError::query("committing a change")(e)))?;
        return Ok(reply);
    }
    // The object is named by the path's `{id}` (or an event type's
    // `{type}`), else by the created object's id.
    let named = match call.param("id") {
        "" => call.param("type"),
        id => id,
    };
    let object_id = match named {
        "" => reply
            .body
            .as_deref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| created_id(&v)),
        id => Some(id.to_string()),
    };
    let what = crate::ops::audit::Change {
        namespace: Some(call.ns()).filter(|ns| !ns.is_empty()),
        operation: call.route.operation,
        object_kind: object_kind(call.route.path),
    };
    crate::ops::audit::record(&mut tx, &actor, what, object_id.clone())?;
    tx.commit()
        .map_err(|e| ApiError::from(DbError::query("committing a change")(e)))?;
    let mut reply = reply;
    // With the Svix provider, a channel change is told to Svix once it is
    // committed; when Svix cannot be told, the change stays and the answer
    // carries a `Warning` header (`svix sync` repairs it).
    let channel_change = matches!(
        call.route.operation,
        "createChannel"
            | "updateChannel"
            | "deleteChannel"
            | "enableChannel"
            | "disableChannel"
            | "rotateChannelSecret"
    );
    if channel_change {
        if let Some(id) = object_id.and_then(|id| id.parse::<uuid::Uuid>().ok()) {
            if let Some(warning) = crate::ops::svix::after_change(&ctx.config, client, id) {
                let text: String = warning
                    .chars()
                    .map(|c| if c == '"' || c.is_control() { '\'' } else { c })
                    .collect();
                reply
                    .headers
                    .push(("warning".into(), format!("199 - \"{text}\"")));
            }
        }
    }
    Ok(reply)
}

/// The id a creating route's answer names: its `id`, or the `ids` of the
/// events a post made, comma-separated (`None` when it made none).
fn created_id(answer: &serde_json::Value) -> Option<String> {
    if let Some(id) = answer["id"].as_str() {
        return Some(id.to_string());
    }
    let ids: Vec<&str> = answer["ids"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    (!ids.is_empty()).then(|| ids.join(","))
}

/// The kind of object a route under `{ns}` changes: its first segment
/// after the namespace, singular (`channels` -> `channel`; `portal` makes a
/// `token`).
pub fn object_kind(path: &str) -> &'static str {
    let rest = path.strip_prefix("/v1/namespaces/{ns}/").unwrap_or("");
    match rest.split('/').next().unwrap_or("") {
        "channels" => "channel",
        "rules" => "rule",
        "events" => "event",
        "event-types" => "event_type",
        "portal" => "token",
        _ => "other",
    }
}

/// A pooled connection, or 503 after [`POOL_WAIT`].
fn pooled(ctx: &Ctx) -> Result<db::PooledClient, ApiError> {
    ctx.pool.get_timeout(POOL_WAIT).map_err(|e| {
        log::warn!("api: no database connection: {e}");
        ApiError::new(
            503,
            "no database connection is available; try again shortly",
        )
    })
}

/// The Content-Security-Policy of every console page: our own files only,
/// no inline script or style, no framing.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A console file, with the security headers.
fn console(request: &Request, rest: &str) -> Result<Response, ApiError> {
    if request.method != "GET" {
        return Err(ApiError::new(405, "the console is read with GET").with_header("allow", "GET"));
    }
    let path = format!("/{}", rest.split('?').next().unwrap_or(""));
    let (content_type, bytes) = crate::console::asset(&path)
        .ok_or_else(|| ApiError::not_found(format!("no console file {path:?}")))?;
    let response = Response::text(200, content_type, bytes.to_vec())
        .with_header("content-security-policy", CONSOLE_CSP)
        .with_header("x-content-type-options", "nosniff")
        .with_header("referrer-policy", "no-referrer")
        .with_header("x-frame-options", "DENY")
        .with_header("cache-control", "no-store");
    Ok(response)
}
