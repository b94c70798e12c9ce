//! A scriptable webhook receiver on 127.0.0.1 for the integration tests and
//! the benchmark.
//!
//! It answers with whatever its [`Script`] says (status, latency, headers,
//! body size, hanging), records every request, and tracks how many requests
//! it was serving at once. 128 handler threads pull from one `tiny_http`
//! server so that the receiver is never the bottleneck of a parallel pass.
//! What to answer is `script.rs`'s business; assertions on what it recorded
//! belong to the tests.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::script::{Reply, Request, Script};

/// How many threads serve requests; each serves one request at a time.
const HANDLER_THREADS: usize = 128;

/// A running receiver; dropping it shuts the server down and joins its
/// threads (requests still held get a 500 from tiny_http).
pub struct Receiver {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
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
        let server = Arc::new(
            tiny_http::Server::http("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("receiver: cannot listen on 127.0.0.1:0: {e}")),
        );
        let addr = server
            .server_addr()
            .to_ip()
            .expect("receiver: listening on an IP address");
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
        let threads = (0..HANDLER_THREADS)
            .map(|i| {
                let (server, shared) = (Arc::clone(&server), Arc::clone(&shared));
                std::thread::Builder::new()
                    .name(format!("receiver-{i}"))
                    .stack_size(256 * 1024)
                    .spawn(move || serve(&server, &shared))
                    .expect("receiver: cannot spawn a handler thread")
            })
            .collect();
        Receiver {
            addr,
            server,
            shared,
            threads,
        }
    }

    /// The webhook URL, `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
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
        // Each unblock releases one thread waiting in `recv`; busy threads
        // see `shutdown` before they call `recv` again.
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One handler thread: serve requests until shutdown.
fn serve(server: &tiny_http::Server, shared: &Shared) {
    while !lock(&shared.control).shutdown {
        let Ok(rq) = server.recv() else { return };
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(now, Ordering::SeqCst);
        handle(rq, shared);
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Records `rq`, then answers it as the script says.
fn handle(mut rq: tiny_http::Request, shared: &Shared) {
    let at = Instant::now();
    let mut body = Vec::new();
    if rq.as_reader().read_to_end(&mut body).is_err() {
        return;
    }
    let headers: Vec<(String, String)> = rq
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.to_string().to_ascii_lowercase(),
                h.value.to_string(),
            )
        })
        .collect();
    let mut recorded = Request {
        method: rq.method().to_string(),
        path: rq.url().to_owned(),
        headers,
        body,
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
                return;
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
            return;
        }
    }
    let _ = rq.respond(response(reply));
}

/// The tiny_http response for `reply`, its body streamed.
fn response(reply: Reply) -> tiny_http::Response<Box<dyn Read + Send>> {
    let length = reply.body.len() + reply.filler;
    let body: Box<dyn Read + Send> =
        Box::new(Cursor::new(reply.body).chain(std::io::repeat(b'x').take(reply.filler as u64)));
    let headers = reply
        .headers
        .iter()
        .map(|(n, v)| {
            tiny_http::Header::from_bytes(n.as_bytes(), v.as_bytes())
                .unwrap_or_else(|()| panic!("receiver: invalid response header {n}: {v}"))
        })
        .collect();
    tiny_http::Response::new(
        tiny_http::StatusCode(reply.status),
        headers,
        body,
        Some(length),
        None,
    )
    // Always a Content-Length, never chunked, whatever the size.
    .with_chunked_threshold(usize::MAX)
}

/// Locks `m`, taking over a lock poisoned by a panicking test thread.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
