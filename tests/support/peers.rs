//! Which local process owns the other end of a loopback TCP connection,
//! from `/proc/net/tcp` and `/proc/<pid>/fd`: lets a receiver tell which of
//! several daemon instances sent a request without anything in the
//! request itself (the product sends the same headers from every
//! instance). Linux only, loopback IPv4 only; tests that need it say so.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Requests seen on tagged connections: when each request line arrived,
/// and which candidate process sent it (0: none of them, or unknown).
pub type Arrivals = Arc<Mutex<Vec<(Instant, u32)>>>;

/// The pid among `pids` whose socket is the connection from `client` to
/// `server` (both on 127.0.0.1), if any.
pub fn owner_of(client: SocketAddr, server: SocketAddr, pids: &[u32]) -> Option<u32> {
    let inode = socket_inode(client, server)?;
    let target = format!("socket:[{inode}]");
    pids.iter().copied().find(|pid| {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target))
    })
}

/// The inode of the socket whose local end is `client` and remote end
/// `server`, from `/proc/net/tcp`.
fn socket_inode(client: SocketAddr, server: SocketAddr) -> Option<u64> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    };
    let (local, remote) = (hex(client)?, hex(server)?);
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == local && f[2] == remote)
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// A server-side stream that records, for each `POST ` request line read
/// from it, the time and the connection's owner.
pub struct Tagged {
    inner: TcpStream,
    owner: u32,
    arrivals: Arrivals,
    /// The last bytes read, so that a request line split across reads is
    /// still seen.
    tail: Vec<u8>,
}

impl Tagged {
    /// Tags `inner` (just accepted) with its owner among `pids`.
    pub fn new(inner: TcpStream, pids: &[u32], arrivals: Arrivals) -> Tagged {
        let owner = match (inner.peer_addr(), inner.local_addr()) {
            (Ok(peer), Ok(local)) => owner_of(peer, local, pids).unwrap_or(0),
            _ => 0,
        };
        Tagged {
            inner,
            owner,
            arrivals,
            tail: Vec::new(),
        }
    }
}

impl Read for Tagged {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            let keep = self.tail.len();
            self.tail.extend_from_slice(&buf[..n]);
            let needle = b"POST /";
            let start = keep.saturating_sub(needle.len() - 1);
            let found = self.tail[start.min(self.tail.len())..]
                .windows(needle.len())
                .filter(|w| *w == needle)
                .count();
            if found > 0 {
                let now = Instant::now();
                let mut a = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
                a.extend(std::iter::repeat_n((now, self.owner), found));
            }
            let cut = self.tail.len().saturating_sub(needle.len() - 1);
            self.tail.drain(..cut);
        }
        Ok(n)
    }
}

impl Write for Tagged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
