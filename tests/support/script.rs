//! What the receiver got and what it answers: the recorded [`Request`], the
//! [`Reply`] to one request, and the [`Script`] that maps one to the other,
//! with constructors for the common plans (fixed status, sequences, latency,
//! headers, large bodies, hanging, random failures). Serving and recording
//! are `receiver.rs`'s business.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Request {
    /// The HTTP method, e.g. `POST`.
    pub method: String,
    /// The request target: path and query, e.g. `/hook`.
    pub path: String,
    /// Header names (lower-case) and values, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The whole request body.
    pub body: Vec<u8>,
    /// When the request's headers arrived.
    pub at: Instant,
    /// 1-based position of this request among all the receiver got.
    pub seq: usize,
    /// 1-based position among requests with the same `webhook-id` (among
    /// those without one, if it has none): 1 on a first attempt, 2 on a retry.
    pub attempt: usize,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `webhook-id` header.
    pub fn webhook_id(&self) -> Option<&str> {
        self.header("webhook-id")
    }

    /// The body parsed as JSON; panics saying so if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "receiver: request #{} body is not JSON ({e}): {}",
                self.seq,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// What to answer to one request. Build it with [`Reply::status`] or
/// [`Reply::hang`] and the builder methods.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Extra response headers, e.g. `Retry-After`.
    pub headers: Vec<(String, String)>,
    /// The body: these bytes, then `filler` bytes of `x`.
    pub body: Vec<u8>,
    /// Bytes of `x` streamed after `body` (for large responses).
    pub filler: usize,
    /// How long to wait before answering.
    pub delay: Duration,
    /// Never answer: hold the request until the script changes (then ask the
    /// new script) or the receiver is dropped (then it answers 500).
    pub hang: bool,
}

impl Reply {
    /// An immediate, empty answer with `status`.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            filler: 0,
            delay: Duration::ZERO,
            hang: false,
        }
    }

    /// No answer at all (see [`Reply::hang`]'s field).
    pub fn hang() -> Reply {
        Reply {
            hang: true,
            ..Reply::status(500)
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    /// Streams `bytes` bytes of `x` as the body (after any [`Reply::body`]).
    pub fn body_size(mut self, bytes: usize) -> Reply {
        self.filler = bytes;
        self
    }

    /// Waits `delay` before answering.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// A response plan: a function from the request to the [`Reply`]. Cheap to
/// clone; replace it on a running receiver with [`Receiver::set_script`].
#[derive(Clone)]
pub struct Script(Arc<dyn Fn(&Request) -> Reply + Send + Sync>);

impl Script {
    /// A script from any function; it may keep its own state behind a lock.
    pub fn new(f: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Script {
        Script(Arc::new(f))
    }

    /// Always `status`.
    pub fn status(status: u16) -> Script {
        Script::new(move |_| Reply::status(status))
    }

    /// The n-th request overall gets `statuses[n]`; the last repeats.
    pub fn sequence(statuses: Vec<u16>) -> Script {
        assert!(!statuses.is_empty(), "receiver: empty status sequence");
        Script::new(move |rq| Reply::status(statuses[(rq.seq - 1).min(statuses.len() - 1)]))
    }

    /// The n-th attempt of each `webhook-id` gets `statuses[n]`; the last
    /// repeats. `vec![500, 200]`: every event fails once, then succeeds.
    pub fn sequence_per_id(statuses: Vec<u16>) -> Script {
        assert!(!statuses.is_empty(), "receiver: empty status sequence");
        Script::new(move |rq| Reply::status(statuses[(rq.attempt - 1).min(statuses.len() - 1)]))
    }

    /// Never answers (see [`Reply::hang`]).
    pub fn hang() -> Script {
        Script::new(|_| Reply::hang())
    }

    /// 500 for a random `fraction` (0.0..=1.0) of requests, 200 otherwise.
    pub fn fail_fraction(fraction: f64) -> Script {
        Script::new(move |_| {
            Reply::status(if rand::random::<f64>() < fraction {
                500
            } else {
                200
            })
        })
    }

    /// This script, answering after `delay`.
    pub fn with_latency(self, delay: Duration) -> Script {
        self.map(move |reply| reply.after(delay))
    }

    /// This script, with a header added to every reply.
    pub fn with_header(self, name: &str, value: &str) -> Script {
        let (name, value) = (name.to_owned(), value.to_owned());
        self.map(move |reply| reply.header(&name, &value))
    }

    /// This script, with `bytes` bytes streamed as every reply's body.
    pub fn with_body_size(self, bytes: usize) -> Script {
        self.map(move |reply| reply.body_size(bytes))
    }

    /// This script with `f` applied to each of its replies.
    pub fn map(self, f: impl Fn(Reply) -> Reply + Send + Sync + 'static) -> Script {
        Script::new(move |rq| f((self.0)(rq)))
    }

    /// The reply for `rq`.
    pub fn reply(&self, rq: &Request) -> Reply {
        (self.0)(rq)
    }
}
