//! A client for the management API in tests: requests written by hand on a
//! fresh loopback connection (so a test can send exactly the bytes it means,
//! malformed ones included) and the answer parsed into status, headers and
//! JSON; plus starting a daemon whose API listens on a free port and waiting
//! until it answers. What the API must answer is the tests' business.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::daemon::{config_toml, wait_until, Daemon};
use super::net::free_addr;

/// An answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when empty or not JSON).
    pub json: Value,
    /// The body as text.
    pub text: String,
}

impl Answer {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

/// Sends `raw` bytes on a new connection and reads the answer (the request
/// should close the connection or be the last one).
pub fn raw(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("api: connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(raw).expect("api: write");
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    parse(&bytes).unwrap_or_else(|| {
        panic!(
            "api: no HTTP answer to {:?}: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)]),
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn parse(bytes: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Answer {
        status,
        headers,
        json: serde_json::from_str(body).unwrap_or(Value::Null),
        text: body.to_string(),
    })
}

/// A request with a JSON body (when given) and a bearer token (when given).
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    call_with(
        addr,
        method,
        path,
        token,
        body.map(|b| b.to_string()).as_deref(),
        &[],
    )
}

/// [`call`] with a body given as text and extra headers.
pub fn call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    raw(addr, req.as_bytes())
}

/// A daemon whose API listens on a free loopback port, with `extra` config
/// sections appended; returns once the API answers.
pub fn daemon_with_api(name: &str, db_url: &str, extra: &str) -> (Daemon, SocketAddr) {
    daemon_with_api_of(name, None, db_url, extra)
}

/// [`daemon_with_api`] of `program` (another build) when given.
pub fn daemon_with_api_of(
    name: &str,
    program: Option<&std::path::Path>,
    db_url: &str,
    extra: &str,
) -> (Daemon, SocketAddr) {
    let addr = free_addr();
    let config = config_toml(
        db_url,
        4,
        "1s",
        "",
        &format!("[api]\nlisten = \"{addr}\"\n{extra}"),
    );
    let daemon = Daemon::spawn_program(name, program, &config, &["run"], &[]);
    wait_until(
        "the API to answer",
        Duration::from_secs(30),
        || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        || daemon.stderr(),
    );
    (daemon, addr)
}
