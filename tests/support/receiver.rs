//! A scriptable webhook receiver on 127.0.0.1 for the integration tests and
//! the benchmark.
//!
//! It answers with whatever its [`Script`] says (status, latency, headers,
//! body size, hanging), records every request, and tracks how many requests
//! it was serving at once. It runs on the crate's own thread-per-connection
//! server (`http_server`), so no connection ever waits for a free thread and
//! the receiver is never the bottleneck of a parallel pass.
//! What to answer is `script.rs`'s business; assertions on what it recorded
//! belong to the tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use notification_reconciler::http_server::{self, Limits, Server};

use super::script::{Reply, Request, Script};
use super::tls::TestCa;

/// A running receiver; dropping it stops the server (requests still held
/// are answered 500).
pub struct Receiver {
    addr: SocketAddr,
    scheme: &'static str,
    connections: Arc<AtomicUsize>,
    server: Option<Server>,
    shared: Arc<Shared>,
}

/// State shared by the handler threads and the test.
struct Shared {
    /// The script and its generation; `control_cv` signals changes.
    control: Mutex<Control>,
    control_cv: Condvar,
    /// Everything received; `log_cv` signals each new request.
    log: Mutex<Log>,
    log_cv: Condvar,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

struct Control {
    script: Script,
    generation: u64,
    shutdown: bool,
}

#[derive(Default)]
struct Log {
    requests: Vec<Request>,
    attempts: HashMap<Option<String>, usize>,
}

impl Receiver {
    /// Starts a receiver on a free port of 127.0.0.1 answering per `script`.
    pub fn start(script: Script) -> Receiver {
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let wrap: Arc<http_server::Wrap> = Arc::new(move |tcp| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(tcp))
        });
        Receiver::start_wrapped(script, "http", wrap, connections)
    }

    /// [`Receiver::start`] over HTTPS with `tls`'s certificate (for
    /// 127.0.0.1, signed by a test CA): every connection is a TLS session,
    /// so [`Receiver::connections`] counts the TLS handshakes.
    pub fn start_https(script: Script, tls: &TestCa) -> Receiver {
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let config = Arc::clone(&tls.server);
        let wrap: Arc<http_server::Wrap> = Arc::new(move |tcp| {
            counted.fetch_add(1, Ordering::SeqCst);
            let session = rustls::ServerConnection::new(Arc::clone(&config))
                .map_err(std::io::Error::other)?;
            Ok(Box::new(rustls::StreamOwned::new(session, tcp)))
        });
        Receiver::start_wrapped(script, "https", wrap, connections)
    }

    /// [`Receiver::start`], also recording which of `pids` sent each
    /// request (`peers`: by the process owning the connection's other end)
    /// and when it arrived. `pids` may be filled in after the start.
    pub fn start_tagged(
        script: Script,
        pids: Arc<Mutex<Vec<u32>>>,
    ) -> (Receiver, super::peers::Arrivals) {
        let arrivals: super::peers::Arrivals = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (counted, log) = (Arc::clone(&connections), Arc::clone(&arrivals));
        let wrap: Arc<http_server::Wrap> = Arc::new(move |tcp| {
            counted.fetch_add(1, Ordering::SeqCst);
            let pids = lock(&pids).clone();
            Ok(Box::new(super::peers::Tagged::new(
                tcp,
                &pids,
                Arc::clone(&log),
            )))
        });
        (
            Receiver::start_wrapped(script, "http", wrap, connections),
            arrivals,
        )
    }

    fn start_wrapped(
        script: Script,
        scheme: &'static str,
        wrap: Arc<http_server::Wrap>,
        connections: Arc<AtomicUsize>,
    ) -> Receiver {
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                script,
                generation: 0,
                shutdown: false,
            }),
            control_cv: Condvar::new(),
            log: Mutex::new(Log::default()),
            log_cv: Condvar::new(),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let handler_shared = Arc::clone(&shared);
        let limits = Limits {
            max_body: 64 * 1024 * 1024,
            ..Limits::default()
        };
        let server = Server::bind_wrapped(
            "127.0.0.1:0".parse().expect("address"),
            limits,
            wrap,
            move |rq| serve(rq, &handler_shared),
        )
        .unwrap_or_else(|e| panic!("receiver: cannot listen on 127.0.0.1:0: {e}"));
        Receiver {
            addr: server.addr(),
            scheme,
            connections,
            server: Some(server),
            shared,
        }
    }

    /// The webhook URL, `http://127.0.0.1:PORT/hook` (`https://` for
    /// [`Receiver::start_https`]).
    pub fn url(&self) -> String {
        format!("{}://{}/hook", self.scheme, self.addr)
    }

    /// Connections accepted so far: with HTTPS, each one a TLS handshake.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The address the receiver listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the script; requests held by a hang are re-asked to it.
    pub fn set_script(&self, script: Script) {
        let mut control = lock(&self.shared.control);
        control.script = script;
        control.generation += 1;
        self.shared.control_cv.notify_all();
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log).requests.clone()
    }

    /// How many requests were received so far.
    pub fn count(&self) -> usize {
        lock(&self.shared.log).requests.len()
    }

    /// The `webhook-id` of every request so far (requests without one are
    /// skipped), in arrival order.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.shared.log)
            .requests
            .iter()
            .filter_map(|rq| rq.webhook_id().map(str::to_owned))
            .collect()
    }

    /// The most requests whose headers arrived within any `window`
    /// (a rate limit's property, as the endpoint sees it).
    pub fn most_within(&self, window: Duration) -> usize {
        let mut at: Vec<std::time::Instant> = self.requests().iter().map(|r| r.at).collect();
        at.sort();
        let mut most = 0;
        let mut j = 0;
        for i in 0..at.len() {
            while at[i].duration_since(at[j]) >= window {
                j += 1;
            }
            most = most.max(i - j + 1);
        }
        most
    }

    /// How many requests are being served right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever served at once.
    pub fn peak_concurrency(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` requests were received or `timeout`
    /// passed; true if they were.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> bool {
        let log = lock(&self.shared.log);
        let (log, _) = self
            .shared
            .log_cv
            .wait_timeout_while(log, timeout, |log| log.requests.len() < count)
            .unwrap_or_else(|e| e.into_inner());
        log.requests.len() >= count
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        lock(&self.shared.control).shutdown = true;
        self.shared.control_cv.notify_all();
        drop(self.server.take());
    }
}

/// Serves one request, counting it in flight.
fn serve(rq: &http_server::Request, shared: &Shared) -> http_server::Response {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.peak.fetch_max(now, Ordering::SeqCst);
    let response = handle(rq, shared);
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

/// Records `rq`, then answers it as the script says.
fn handle(rq: &http_server::Request, shared: &Shared) -> http_server::Response {
    let at = Instant::now();
    let mut recorded = Request {
        method: rq.method.clone(),
        path: rq.path.clone(),
        headers: rq.headers.clone(),
        body: rq.body.clone(),
        at,
        seq: 0,
        attempt: 0,
    };
    {
        let mut log = lock(&shared.log);
        recorded.seq = log.requests.len() + 1;
        let attempts = log
            .attempts
            .entry(recorded.webhook_id().map(str::to_owned))
            .or_insert(0);
        *attempts += 1;
        recorded.attempt = *attempts;
        log.requests.push(recorded.clone());
        shared.log_cv.notify_all();
    }

    // The script runs without the lock held, so a slow script slows only its
    // own request; the generation tells whether it changed meanwhile.
    let reply = loop {
        let (script, generation) = {
            let control = lock(&shared.control);
            if control.shutdown {
                return http_server::Response::status(500);
            }
            (control.script.clone(), control.generation)
        };
        let reply = script.reply(&recorded);
        if !reply.hang {
            break reply;
        }
        let control = lock(&shared.control);
        let _unchanged = shared
            .control_cv
            .wait_while(control, |c| c.generation == generation && !c.shutdown)
            .unwrap_or_else(|e| e.into_inner());
    };
    if !reply.delay.is_zero() {
        let control = lock(&shared.control);
        let (control, _) = shared
            .control_cv
            .wait_timeout_while(control, reply.delay, |c| !c.shutdown)
            .unwrap_or_else(|e| e.into_inner());
        if control.shutdown {
            return http_server::Response::status(500);
        }
    }
    response(reply)
}

/// The response for `reply`: its body, then `filler` bytes of `x`.
fn response(reply: Reply) -> http_server::Response {
    let mut body = reply.body;
    body.resize(body.len() + reply.filler, b'x');
    http_server::Response {
        status: reply.status,
        headers: reply.headers,
        body,
    }
}

/// Locks `m`, taking over a lock poisoned by a panicking test thread.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
