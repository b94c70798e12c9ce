//! Self-tests of the test support: the throw-away PostgreSQL (databases,
//! dedicated clusters, cleanup even when the test process is killed) and the
//! scriptable receiver. The daemon itself is tested elsewhere.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{fresh_db, migrated_db, shared_cluster, Cluster, Receiver, Reply, Script};

/// Set in the re-executed child of `guardian_cleans_up_after_the_owner_is_killed`.
const CHILD_ENV: &str = "NR_HARNESS_CHILD";

#[test]
fn migrated_db_is_reachable_and_fresh_dbs_are_distinct() {
    let db = migrated_db();
    let name: String = db
        .client()
        .query_one("SELECT current_database()", &[])
        .unwrap()
        .get(0);
    assert_eq!(name, db.name);

    let (a, b) = (fresh_db(), fresh_db());
    assert_ne!(a.name, b.name);
    assert_ne!(a.url, b.url);
    a.client()
        .batch_execute("CREATE TABLE only_in_a ()")
        .unwrap();
    let in_b: bool = b
        .client()
        .query_one("SELECT to_regclass('only_in_a') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert!(
        !in_b,
        "a table created in {} is visible in {}",
        a.name, b.name
    );

    // Dropping a TestDb drops its database, even with a session open.
    let _open = a.client();
    let a_name = a.name.clone();
    drop(a);
    let left: i64 = b
        .client()
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&a_name],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "database {a_name} still exists after drop");
}

#[test]
fn dedicated_cluster_stops_restarts_and_leaves_nothing_after_drop() {
    let cluster = Cluster::start_dedicated();
    let dir = cluster.dir().to_path_buf();
    let url = cluster.url();
    postgres::Client::connect(&url, postgres::NoTls).expect("connect to the started cluster");

    cluster.stop();
    assert!(postgres::Client::connect(&url, postgres::NoTls).is_err());
    cluster.start();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    cluster.restart_fast();
    assert!(
        client.simple_query("SELECT 1").is_err(),
        "a session survived a fast restart"
    );
    postgres::Client::connect(&url, postgres::NoTls).expect("connect after restart");

    drop(cluster);
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    assert_eventually_gone(&[dir]);
}

#[test]
fn prepared_cluster_is_down_until_started() {
    let cluster = Cluster::prepare_without_start();
    assert!(postgres::Client::connect(&cluster.url(), postgres::NoTls).is_err());
    cluster.start();
    postgres::Client::connect(&cluster.url(), postgres::NoTls).expect("connect after start");
}

#[test]
fn guardian_cleans_up_after_the_owner_is_killed() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "harness_child_starts_cluster",
            "--nocapture",
            "--ignored",
        ])
        .env(CHILD_ENV, "1")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-execute the test binary");
    let mut dirs = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(dir) = line.strip_prefix("NR_CHILD_DIR=") {
            dirs.push(PathBuf::from(dir));
        }
        if line == "NR_CHILD_READY" {
            break;
        }
    }
    assert_eq!(dirs.len(), 2, "the child did not report its two clusters");
    for dir in &dirs {
        assert!(
            dir.exists(),
            "{} missing while the child runs",
            dir.display()
        );
        assert!(
            !processes_using(dir).is_empty(),
            "no server for {}",
            dir.display()
        );
    }

    child.kill().unwrap(); // SIGKILL: no destructor runs in the child
    child.wait().unwrap();
    assert_eventually_gone(&dirs);
}

/// The child of `guardian_cleans_up_after_the_owner_is_killed`: starts the
/// shared cluster and a dedicated one, reports their dirs, and waits to be
/// killed. Does nothing when run by hand.
#[test]
#[ignore = "run by guardian_cleans_up_after_the_owner_is_killed"]
fn harness_child_starts_cluster() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let _db = fresh_db();
    let shared = shared_cluster().expect("the child runs without DATABASE_URL");
    let dedicated = Cluster::start_dedicated();
    println!("NR_CHILD_DIR={}", shared.dir().display());
    println!("NR_CHILD_DIR={}", dedicated.dir().display());
    println!("NR_CHILD_READY");
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park();
    }
}

#[test]
fn receiver_answers_a_fixed_status_and_records_the_request() {
    let receiver = Receiver::start(Script::status(204).with_header("Retry-After", "7"));
    let response = post(
        &receiver.url(),
        &[
            ("webhook-id", "msg_1"),
            ("Content-Type", "application/json"),
        ],
        br#"{"a":1}"#,
    )
    .unwrap();
    assert_eq!(response.status, 204);
    assert_eq!(response.header("retry-after"), Some("7"));

    assert!(receiver.wait_for(1, Duration::from_secs(10)));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let rq = &requests[0];
    assert_eq!((rq.method.as_str(), rq.path.as_str()), ("POST", "/hook"));
    assert_eq!(rq.header("content-type"), Some("application/json"));
    assert_eq!(rq.json(), serde_json::json!({"a": 1}));
    assert_eq!(receiver.ids(), ["msg_1"]);
    assert_eq!((rq.seq, rq.attempt), (1, 1));
}

#[test]
fn receiver_serves_ten_requests_at_once_and_applies_latency() {
    let receiver = Receiver::start(Script::hang());
    let url = receiver.url();
    let clients: Vec<_> = (0..10)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let id = format!("msg_{i}");
                let response = post(&url, &[("webhook-id", &id)], b"{}").unwrap();
                (response.status, started.elapsed())
            })
        })
        .collect();
    // All ten are held by the hang: they are in flight together.
    assert!(
        receiver.wait_for(10, Duration::from_secs(30)),
        "10 requests did not arrive"
    );
    assert_eq!(receiver.in_flight(), 10);
    assert_eq!(receiver.peak_concurrency(), 10);

    // Changing the script releases them, answered by the new script.
    let latency = Duration::from_millis(200);
    receiver.set_script(Script::status(200).with_latency(latency));
    for client in clients {
        let (status, elapsed) = client.join().unwrap();
        assert_eq!(status, 200);
        assert!(
            elapsed >= latency,
            "answered after {elapsed:?}, before the latency"
        );
    }
    assert_eq!(receiver.peak_concurrency(), 10);
    assert_eq!(receiver.count(), 10);
}

#[test]
fn receiver_sequences_statuses_per_request_and_per_id() {
    let receiver = Receiver::start(Script::sequence_per_id(vec![500, 200]));
    let statuses: Vec<u16> = ["a", "b", "a", "b", "a"]
        .iter()
        .map(|id| {
            post(&receiver.url(), &[("webhook-id", id)], b"")
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(statuses, [500, 500, 200, 200, 200]);

    receiver.set_script(Script::sequence(vec![429, 503, 200]));
    let statuses: Vec<u16> = (0..4)
        .map(|_| post(&receiver.url(), &[], b"").unwrap().status)
        .collect();
    // `sequence` counts every request the receiver got, the five above too.
    assert_eq!(statuses, [200, 200, 200, 200]);
    assert_eq!(receiver.ids(), ["a", "b", "a", "b", "a"]);

    let receiver = Receiver::start(Script::sequence(vec![429, 503, 200]));
    let statuses: Vec<u16> = (0..4)
        .map(|_| post(&receiver.url(), &[], b"").unwrap().status)
        .collect();
    assert_eq!(statuses, [429, 503, 200, 200]);
}

#[test]
fn receiver_streams_large_bodies_and_custom_replies() {
    let size = 10 * 1024 * 1024;
    let receiver = Receiver::start(Script::status(200).with_body_size(size));
    let response = post(&receiver.url(), &[], b"").unwrap();
    assert_eq!(response.body.len(), size);

    receiver.set_script(Script::new(|rq| {
        Reply::status(410).body(format!("gone: {}", rq.seq))
    }));
    let response = post(&receiver.url(), &[], b"").unwrap();
    assert_eq!(
        (response.status, response.body.as_slice()),
        (410, &b"gone: 2"[..])
    );

    receiver.set_script(Script::fail_fraction(1.0));
    assert_eq!(post(&receiver.url(), &[], b"").unwrap().status, 500);
    receiver.set_script(Script::fail_fraction(0.0));
    assert_eq!(post(&receiver.url(), &[], b"").unwrap().status, 200);
}

#[test]
fn receiver_hang_is_released_when_the_receiver_is_dropped() {
    let receiver = Receiver::start(Script::hang());
    let url = receiver.url();
    let client = std::thread::spawn(move || post(&url, &[], b"{}"));
    assert!(receiver.wait_for(1, Duration::from_secs(10)));
    drop(receiver); // must return although a request is held
    match client.join().unwrap() {
        Ok(response) => assert_eq!(response.status, 500),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "client timed out"),
    }
}

/// A response as read by [`post`].
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 POST (`Connection: close`) to `url`, which must be
/// `http://host:port/path`; header names of the response are lower-cased.
fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Response> {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no complete response head"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Pids (other than ours) whose command line mentions `dir`.
fn processes_using(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Waits (polling, up to 60 s) until every dir is removed and no process
/// mentions it; panics saying what is left otherwise.
fn assert_eventually_gone(dirs: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<String> = dirs
            .iter()
            .filter_map(|dir| {
                let pids = processes_using(dir);
                (dir.exists() || !pids.is_empty()).then(|| {
                    format!(
                        "{} (exists: {}, pids: {pids:?})",
                        dir.display(),
                        dir.exists()
                    )
                })
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not cleaned up after 60 s: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
