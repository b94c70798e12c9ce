//! A minimal synchronous HTTP/1.1 server for the development `sink`, the
//! metrics endpoint, the management API and the tests' receiver: one thread
//! per connection, keep-alive, `Content-Length` bodies, requests parsed by
//! `httparse`.
//!
//! Abuse (the management API faces applications, not only us): with
//! [`Limits::max_connections`] set, at most that many connections are served
//! at once; a connection arriving at the cap evicts the connection that has
//! waited longest for a request head (idle keep-alive connections and
//! slow-header clients cost nothing to drop: no request of theirs is under
//! way), else the one that has waited longest on its client (a body that
//! does not come, an answer read slowly); only when every connection is
//! inside the handler is the new one answered 503. A request head must
//! arrive whole within [`Limits::head_timeout`] of its first byte, a body
//! within [`Limits::body_timeout`], and an answer must be read within the
//! same time, however slowly the bytes trickle, so a slow client holds a
//! thread for a bounded time.
//!
//! Why not tiny_http: its connection thread pool starts new threads only when
//! none is idle *at the moment a connection arrives*, and a keep-alive
//! connection occupies its thread for as long as it stays open. A burst of
//! connections (eight workers starting a pass at once) left two of eight
//! connections queued behind busy threads until the client's 10 s timeout
//! (measured in `concurrency_is_real_and_bounded_by_workers`). One thread per
//! connection cannot starve a connection. Not for the open internet: no TLS
//! of its own (a caller may wrap connections: [`Server::bind_wrapped`]),
//! no chunked request bodies (answered 411), bounded header and body sizes.
//!
//! Longer than most files (about 760 lines before its tests): one job, a
//! small HTTP/1.1 server, whose parts (request parsing, limits, the
//! connection loop) are used only together.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Request target (path and query).
    pub path: String,
    /// Headers: lower-case names, values as sent (lossy UTF-8), in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (give it lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The answer to one request.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers (`content-length` is added).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn status(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A text response.
    pub fn text(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Handles one request; called on the connection's thread.
pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A byte stream the server speaks HTTP/1.1 over: the accepted TCP stream,
/// or what [`Wrap`] made of it (a TLS stream around it).
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Turns an accepted connection into the stream to serve, on the
/// connection's own thread (e.g. a TLS server session around it; its
/// handshake happens on the first read). An error ends the connection.
pub type Wrap = dyn Fn(TcpStream) -> io::Result<Box<dyn Stream>> + Send + Sync;

/// A running server; dropping it stops accepting (open connections end
/// when their client closes them or stays idle past the idle timeout).
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// Limits of a [`Server`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body kept (larger: a log line, the body read away,
    /// 413 and the connection closes).
    pub max_body: usize,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// Most connections served at once (`None`: no cap).
    pub max_connections: Option<usize>,
    /// A request head must be complete this long after its first byte.
    pub head_timeout: Duration,
    /// A request body must be complete this long after its head.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            head_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(300),
        }
    }
}

/// What a connection of a capped server is doing, for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Waiting for (the rest of) a request head, since then: dropped first.
    Idle(std::time::Instant),
    /// Waiting on its client: reading a body, or writing an answer the
    /// client reads slowly. Dropped when no idle connection is left.
    Client(std::time::Instant),
    /// Inside the handler: never dropped (a request under way is not cut).
    Handling,
}

/// The open connections of a capped server: for each, a handle on its
/// socket (to shut it down) and its [`Phase`].
#[derive(Default)]
struct Registry {
    conns: std::sync::Mutex<std::collections::HashMap<u64, (TcpStream, Phase)>>,
}

impl Registry {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, (TcpStream, Phase)>> {
        // A panic elsewhere cannot leave the map half-changed: every change
        // is one insert, remove or field write.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for one more connection under `cap`: evicts the
    /// connection idle longest, else the one waiting longest on its client.
    /// False when every connection is inside the handler.
    fn make_room(&self, cap: usize) -> bool {
        let mut conns = self.lock();
        if conns.len() < cap {
            return true;
        }
        let victim = conns
            .iter()
            .filter(|(_, (_, phase))| *phase != Phase::Handling)
            .min_by_key(|(_, (_, phase))| *phase)
            .map(|(id, _)| *id);
        match victim {
            Some(id) => {
                if let Some((stream, _)) = conns.remove(&id) {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
                true
            }
            None => false,
        }
    }

    /// Sets a connection's phase; false when it was evicted meanwhile (its
    /// socket is shut: the request must not be handled).
    fn set(&self, id: u64, phase: Phase) -> bool {
        match self.lock().get_mut(&id) {
            Some(entry) => {
                entry.1 = phase;
                true
            }
            None => false,
        }
    }
}

/// An evicted connection's error.
fn evicted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "evicted for a new connection",
    )
}

/// A connection's place in the [`Registry`], removed when dropped.
struct Slot {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Server {
    /// Listens on `addr` and serves every connection on its own thread.
    pub fn bind(
        addr: SocketAddr,
        limits: Limits,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> io::Result<Server> {
        Server::bind_wrapped(addr, limits, Arc::new(|s| Ok(Box::new(s))), handler)
    }

    /// [`Server::bind`], serving each connection through `wrap` (this
    /// server has no TLS of its own; the tests' HTTPS receiver wraps
    /// connections in a rustls server session).
    pub fn bind_wrapped(
        addr: SocketAddr,
        limits: Limits,
        wrap: Arc<Wrap>,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let stop_accept = Arc::clone(&stop);
        let registry = Arc::new(Registry::default());
        let accept = std::thread::Builder::new()
            .name(format!("http-{addr}"))
            .spawn(move || {
                let mut next_id: u64 = 0;
                for stream in listener.incoming() {
                    if stop_accept.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let slot = match limits.max_connections {
                        None => None,
                        Some(cap) => {
                            if !registry.make_room(cap) {
                                refuse_busy(stream);
                                continue;
                            }
                            next_id += 1;
                            let Ok(handle) = stream.try_clone() else {
                                continue;
                            };
                            registry
                                .lock()
                                .insert(next_id, (handle, Phase::Idle(std::time::Instant::now())));
                            Some(Slot {
                                registry: Arc::clone(&registry),
                                id: next_id,
                            })
                        }
                    };
                    let handler = Arc::clone(&handler);
                    let wrap = Arc::clone(&wrap);
                    let spawned =
                        std::thread::Builder::new()
                            .name("http-conn".into())
                            .spawn(move || {
                                if let Err(e) = serve_connection(
                                    stream,
                                    limits,
                                    &*wrap,
                                    &*handler,
                                    slot.as_ref(),
                                ) {
                                    log::debug!("http connection ended: {e}");
                                }
                            });
                    if let Err(e) = spawned {
                        log::warn!("cannot start a connection thread: {e}");
                    }
                }
            })?;
        Ok(Server {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server is dropped elsewhere (the `sink` command).
    pub fn wait(mut self) {
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Answers a connection over the cap 503 and closes it (best effort: the
/// answer fits any socket buffer, so the write does not block).
fn refuse_busy(mut stream: TcpStream) {
    log::warn!("http: every connection is inside the handler; a new connection answered 503");
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
    );
}

/// Serves requests on one connection until it closes.
fn serve_connection(
    stream: TcpStream,
    limits: Limits,
    wrap: &Wrap,
    handler: &Handler,
    slot: Option<&Slot>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(limits.idle_timeout))?;
    stream.set_write_timeout(Some(limits.body_timeout))?;
    stream.set_nodelay(true)?;
    let timer = stream.try_clone()?;
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let mut reader = BufReader::new(wrap(stream)?);
    let phase = |p: Phase| match slot {
        Some(slot) if !slot.registry.set(slot.id, p) => Err(evicted()),
        _ => Ok(()),
    };
    loop {
        phase(Phase::Idle(std::time::Instant::now()))?;
        let head = match read_head(&mut reader, &timer, limits)? {
            Some(head) => head,
            None => return Ok(()),
        };
        phase(Phase::Client(std::time::Instant::now()))?;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let http10;
        let request = match parsed.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                http10 = parsed.version == Some(0);
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                Request {
                    method: parsed.method.unwrap_or("").to_string(),
                    path: parsed.path.unwrap_or("").to_string(),
                    headers,
                    body: Vec::new(),
                }
            }
            _ => {
                return respond(
                    reader.get_mut(),
                    &refusal(400, "bad_request", "the request head is not HTTP/1.x"),
                    true,
                )
            }
        };
        if request.header("transfer-encoding").is_some() {
            return respond(
                reader.get_mut(),
                &refusal(
                    411,
                    "length_required",
                    "chunked bodies are not accepted: send Content-Length",
                ),
                true,
            );
        }
        if request
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .count()
            > 1
        {
            return respond(
                reader.get_mut(),
                &refusal(400, "bad_request", "more than one Content-Length header"),
                true,
            );
        }
        let length = match request.header("content-length").map(|v| {
            let v = v.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return "x".parse::<usize>();
            }
            v.parse::<usize>()
        }) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                return respond(
                    reader.get_mut(),
                    &refusal(400, "bad_request", "Content-Length is not a number"),
                    true,
                )
            }
        };
        if length > limits.max_body {
            return refuse_large_body(&mut reader, &timer, &peer, &request, length, limits);
        }
        let mut request = request;
        request.body = read_body(&mut reader, &timer, length, limits.body_timeout)?;
        timer.set_read_timeout(Some(limits.idle_timeout))?;
        // HTTP/1.1 keeps the connection unless told to close; HTTP/1.0
        // closes it unless told to keep it.
        let connection = request.header("connection").map(str::to_ascii_lowercase);
        let close = match http10 {
            true => connection.as_deref() != Some("keep-alive"),
            false => connection.as_deref() == Some("close"),
        };
        phase(Phase::Handling)?;
        let response = handler(&request);
        phase(Phase::Client(std::time::Instant::now()))?;
        respond_by(
            reader.get_mut(),
            &timer,
            &response,
            close,
            std::time::Instant::now() + limits.body_timeout,
        )?;
        if close {
            return Ok(());
        }
    }
}

/// Most bytes of an over-large body read and thrown away so that the
/// client, still sending, gets to read the 413: closing a socket with unread
/// input resets the connection, and the client would see only the reset.
/// A body beyond this (or beyond twice the server's body limit, when that
/// is more: the sink accepts 10 MiB) is cut off by closing (a reset, for
/// such a client).
const MAX_DISCARD: u64 = 8 * 1024 * 1024;

/// Longest time spent reading an over-large body away (less when the
/// server's body timeout is shorter): a client trickling a huge body cannot
/// hold the connection longer.
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// Answers a request whose body of `length` bytes exceeds the limit: logs a
/// line, reads the body away (unless the client waits for `100-continue`,
/// then it sends none; at most [`MAX_DISCARD`] bytes, or twice the body
/// limit when that is more, within
/// [`DISCARD_TIME`]), answers 413 and closes the connection.
fn refuse_large_body(
    reader: &mut BufReader<Box<dyn Stream>>,
    timer: &TcpStream,
    peer: &str,
    request: &Request,
    length: usize,
    limits: Limits,
) -> io::Result<()> {
    log::warn!(
        "{} {} from {peer}: body of {length} bytes is over the limit of {} bytes; answered 413",
        request.method,
        request.path,
        limits.max_body
    );
    let expects_continue = request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if !expects_continue {
        let deadline = std::time::Instant::now() + DISCARD_TIME.min(limits.body_timeout);
        let cap = MAX_DISCARD.max(2 * limits.max_body as u64);
        discard(reader, timer, (length as u64).min(cap), deadline)?;
    }
    let message = format!("the body is over the limit of {} bytes", limits.max_body);
    respond(reader.get_mut(), &refusal(413, "too_large", &message), true)
}

/// Reads up to `length` bytes away before `deadline`; stops early (without
/// an error) at the deadline or the end of the input, so that the 413 is
/// still written.
fn discard(
    reader: &mut BufReader<Box<dyn Stream>>,
    timer: &TcpStream,
    length: u64,
    deadline: std::time::Instant,
) -> io::Result<()> {
    let mut left = length;
    let mut buf = [0u8; 16 * 1024];
    while left > 0 {
        let Ok(wait) = remaining(deadline, "request body") else {
            return Ok(());
        };
        timer.set_read_timeout(Some(wait))?;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match reader.read(&mut buf[..want]) {
            Ok(0) => return Ok(()),
            Ok(n) => left -= n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A request refused by the server itself, with a JSON error body in the
/// management API's shape (`{"error": {"code", "message"}}`).
fn refusal(status: u16, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    Response::text(
        status,
        "application/json",
        serde_json::to_vec(&body).unwrap_or_default(),
    )
    .with_header("cache-control", "no-store")
    .with_header("x-content-type-options", "nosniff")
    .with_header(
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    )
}

/// The time left until `deadline` as a read timeout, or a timeout error
/// when it has passed.
fn remaining(deadline: std::time::Instant, what: &str) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} not received in time"),
        ));
    }
    Ok(left)
}

/// Reads one request head (up to the blank line); `None` at a clean end of
/// the connection. The first byte may take up to the idle timeout; the
/// whole head must then arrive within `head_timeout`, however slowly.
fn read_head(
    reader: &mut BufReader<Box<dyn Stream>>,
    timer: &TcpStream,
    limits: Limits,
) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut deadline = None;
    loop {
        match deadline {
            None => timer.set_read_timeout(Some(limits.idle_timeout))?,
            Some(at) => timer.set_read_timeout(Some(remaining(at, "request head")?))?,
        }
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-request",
                ))
            };
        }
        if deadline.is_none() {
            deadline = Some(std::time::Instant::now() + limits.head_timeout);
        }
        let mut used = 0;
        let mut done = false;
        for &b in buf {
            used += 1;
            head.push(b);
            if b == b'\n' {
                if head == b"\r\n" || head == b"\n" {
                    // Stray blank line between requests: skip it.
                    head.clear();
                } else if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
                    done = true;
                    break;
                }
            }
        }
        reader.consume(used);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        if done {
            return Ok(Some(head));
        }
    }
}

/// Reads a body of `length` bytes, all of it within `timeout`.
fn read_body(
    reader: &mut BufReader<Box<dyn Stream>>,
    timer: &TcpStream,
    length: usize,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let deadline = std::time::Instant::now() + timeout;
    let mut body = vec![0; length];
    let mut got = 0;
    while got < length {
        timer.set_read_timeout(Some(remaining(deadline, "request body")?))?;
        match reader.read(&mut body[got..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-body",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(body)
}

/// Writes a response, all of it before `deadline` however slowly the
/// client reads (the socket's write timeout is set to the time left before
/// each chunk).
fn respond_by(
    writer: &mut dyn Stream,
    timer: &TcpStream,
    response: &Response,
    close: bool,
    deadline: std::time::Instant,
) -> io::Result<()> {
    let mut bytes = head_of(response, close).into_bytes();
    bytes.extend_from_slice(&response.body);
    for chunk in bytes.chunks(16 * 1024) {
        timer.set_write_timeout(Some(remaining(
            deadline,
            "the client's reading of the answer",
        )?))?;
        writer.write_all(chunk)?;
    }
    writer.flush()
}

/// Writes a response.
fn respond(writer: &mut dyn Stream, response: &Response, close: bool) -> io::Result<()> {
    writer.write_all(head_of(response, close).as_bytes())?;
    writer.write_all(&response.body)?;
    writer.flush()
}

/// A response's status line and headers.
fn head_of(response: &Response, close: bool) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

/// The reason phrase of common codes.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        411 => "Length Required",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// What to do when binding `key` (`api.listen`, `metrics.listen`) failed
/// with `err`: for "address in use", that another instance (or another
/// program) probably listens there; empty otherwise.
pub fn bind_hint(key: &str, err: &std::io::Error) -> String {
    if err.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            "; another program listens there, perhaps another notification-reconciler instance \
             (`notification-reconciler status` shows the running ones): stop it, or give this \
             instance its own {key}"
        )
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(server: &Server, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn serves_keep_alive_requests_and_bodies() {
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), Limits::default(), |rq| {
            Response::text(
                200,
                "text/plain",
                format!("{} {} {}", rq.method, rq.path, rq.body.len()),
            )
        })
        .unwrap();
        let out = roundtrip(
            &server,
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(out.contains("POST /a 3"), "{out}");
        assert!(out.contains("GET /b 0"), "{out}");
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    }

    #[test]
    fn http_1_0_closes_the_connection() {
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), Limits::default(), |_| {
            Response::status(204)
        })
        .unwrap();
        let out = roundtrip(&server, b"GET / HTTP/1.0\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 204"), "{out}");
        assert!(out.contains("connection: close"), "{out}");
    }

    #[test]
    fn refuses_bad_requests() {
        let limits = Limits {
            max_body: 4,
            ..Limits::default()
        };
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), limits, |_| {
            Response::status(200)
        })
        .unwrap();
        assert!(roundtrip(
            &server,
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde"
        )
        .starts_with("HTTP/1.1 413"));
        assert!(roundtrip(
            &server,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .starts_with("HTTP/1.1 411"));
        assert!(roundtrip(&server, b"NOT HTTP\r\n\r\n").starts_with("HTTP/1.1 400"));
    }

    #[test]
    fn a_body_over_the_limit_is_answered_413_not_reset() {
        // The client writes the whole body before it reads: the server must
        // read it away, or closing the socket resets the connection.
        let limits = Limits {
            max_body: 1024,
            ..Limits::default()
        };
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), limits, |_| {
            Response::status(200)
        })
        .unwrap();
        let body = vec![b'x'; 4 * 1024 * 1024];
        let mut s = TcpStream::connect(server.addr()).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    }

    #[test]
    fn a_trickled_over_large_body_is_answered_413_within_the_body_timeout() {
        // A client that claims a huge body and sends it a byte at a time
        // used to hold the connection as long as it kept sending.
        let limits = Limits {
            max_body: 1024,
            body_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), limits, |_| {
            Response::status(200)
        })
        .unwrap();
        let mut s = TcpStream::connect(server.addr()).unwrap();
        write!(s, "POST / HTTP/1.1\r\nContent-Length: 200000000\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the server still reads the trickled body"
            );
            if s.write_all(b"x").is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    }

    #[test]
    fn many_concurrent_keep_alive_connections_are_all_served() {
        // The tiny_http starvation: every connection held open at once.
        let gate = Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
        let g = Arc::clone(&gate);
        let server = Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            Limits::default(),
            move |_| {
                let (n, cv) = &*g;
                let mut n = n.lock().unwrap();
                *n += 1;
                cv.notify_all();
                let (n, _) = cv
                    .wait_timeout_while(n, Duration::from_secs(10), |n| *n < 32)
                    .unwrap();
                Response::text(200, "text/plain", n.to_string())
            },
        )
        .unwrap();
        let outs: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..32)
                .map(|_| {
                    s.spawn(|| roundtrip(&server, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for out in outs {
            assert!(
                out.ends_with("32"),
                "a request was answered before all 32 arrived: {out}"
            );
        }
    }
}
