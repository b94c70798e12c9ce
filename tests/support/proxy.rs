//! A TCP proxy on 127.0.0.1 that can go silent: the network of a silent
//! partition, for the tests and the benchmark.
//!
//! Every connection accepted is forwarded to the upstream address (the test
//! PostgreSQL), byte for byte, by two pump threads. [`Proxy::freeze`] makes
//! both directions silent: no byte is forwarded either way, and every socket
//! stays open (no RST, no FIN), as when a NAT forgets a flow or a route is
//! dropped; the kernel still acknowledges what the peers send, so their TCP
//! keepalives are answered and only a protocol-level timeout can notice.
//! [`Proxy::heal`] forwards again, what was held back first, then closes a
//! side whose other side closed meanwhile. Dropping the proxy closes every
//! socket. What the peers do about it is the tests' business.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// A running proxy; dropping it closes the listener and every connection.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accepter: Option<thread::JoinHandle<()>>,
}

struct Shared {
    frozen: Mutex<bool>,
    changed: Condvar,
    stopping: AtomicBool,
    /// Both sockets of every connection, to close them on drop.
    sockets: Mutex<Vec<TcpStream>>,
}

impl Shared {
    /// Blocks while the proxy is frozen; false when it is stopping.
    fn wait_open(&self) -> bool {
        let frozen = self.frozen.lock().unwrap_or_else(|e| e.into_inner());
        let _open = self
            .changed
            .wait_while(frozen, |f| *f && !self.stopping.load(Ordering::SeqCst))
            .unwrap_or_else(|e| e.into_inner());
        !self.stopping.load(Ordering::SeqCst)
    }
}

impl Proxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy: local address");
        let shared = Arc::new(Shared {
            frozen: Mutex::new(false),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        let accepter = thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept(&listener, upstream, &accepting))
            .expect("proxy: spawn the accept thread");
        Proxy {
            addr,
            shared,
            accepter: Some(accepter),
        }
    }

    /// The address to connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` (a `postgres://user@127.0.0.1:PORT/db` test URL) through this
    /// proxy.
    pub fn url(&self, url: &str) -> String {
        let at = url.find('@').expect("proxy: URL with a user") + 1;
        let slash = url[at..].find('/').map_or(url.len(), |i| at + i);
        format!("{}{}{}", &url[..at], self.addr, &url[slash..])
    }

    /// Goes silent: nothing is forwarded either way, sockets stay open.
    pub fn freeze(&self) {
        *self.shared.frozen.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.changed.notify_all();
    }

    /// Forwards again.
    pub fn heal(&self) {
        *self.shared.frozen.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.shared.changed.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        for s in self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wakes the accept thread, which then sees `stopping`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accepter.take() {
            let _ = t.join();
        }
    }
}

fn accept(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let pair = (client.try_clone(), server.try_clone());
        let (Ok(client2), Ok(server2)) = pair else {
            continue;
        };
        {
            let mut sockets = shared.sockets.lock().unwrap_or_else(|e| e.into_inner());
            for s in [&client, &server] {
                if let Ok(s) = s.try_clone() {
                    sockets.push(s);
                }
            }
        }
        for (from, to, name) in [(client, server2, "up"), (server, client2, "down")] {
            let shared = Arc::clone(shared);
            let _ = thread::Builder::new()
                .name(format!("proxy-{name}"))
                .spawn(move || pump(from, to, &shared));
        }
    }
}

/// Copies `from` to `to` while open; while frozen, neither reads nor
/// writes (what was read when it froze is held until it heals).
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !shared.wait_open() {
            return;
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if !shared.wait_open() {
            return;
        }
        if n == 0 {
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
    }
}
