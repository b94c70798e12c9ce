//! The loopback webhook receivers: [`Loopback`], this benchmark's own (one
//! thread per keep-alive connection, no recording, never the bottleneck),
//! and [`AnyReceiver`], either it or the test support's recording receiver
//! (`--support-receiver`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notification_reconciler::http_server;

use super::support;
use super::support::Script;

/// The receiver of a scenario: this benchmark's loopback server, or the test
/// support's recording one.
pub(crate) enum AnyReceiver {
    Own(Loopback),
    Support(support::Receiver),
}

impl AnyReceiver {
    pub(crate) fn start(latency: Duration, support_receiver: bool) -> AnyReceiver {
        if support_receiver {
            AnyReceiver::Support(support::Receiver::start(
                Script::status(200).with_latency(latency),
            ))
        } else {
            AnyReceiver::Own(Loopback::start(latency))
        }
    }

    pub(crate) fn url(&self) -> String {
        match self {
            AnyReceiver::Own(r) => r.url(),
            AnyReceiver::Support(r) => r.url(),
        }
    }

    pub(crate) fn count(&self) -> u64 {
        match self {
            AnyReceiver::Own(r) => r.count.load(Ordering::SeqCst),
            AnyReceiver::Support(r) => r.count() as u64,
        }
    }
}

/// The bench's receiver: the crate's thread-per-connection `http_server`
/// answering every request `200` (empty) after `latency`, counting requests
/// and recording nothing else.
pub(crate) struct Loopback {
    pub(crate) server: http_server::Server,
    pub(crate) count: Arc<AtomicU64>,
}

impl Loopback {
    pub(crate) fn start(latency: Duration) -> Loopback {
        let count = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&count);
        let server = http_server::Server::bind(
            "127.0.0.1:0".parse().expect("address"),
            http_server::Limits::default(),
            move |_| {
                if !latency.is_zero() {
                    std::thread::sleep(latency);
                }
                c.fetch_add(1, Ordering::SeqCst);
                http_server::Response::status(200)
            },
        )
        .expect("receiver: bind");
        Loopback { server, count }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.server.addr())
    }
}
