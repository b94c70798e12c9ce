//! Bad input against the real binary, a real PostgreSQL and real sockets:
//! hostile receivers (never answering, slowloris, a 100 MB body, a redirect,
//! a connection closed mid-response, random 500s), bad rows written around
//! the CLI, a table of bad configuration files and command lines, and the
//! secrets that must never reach the output. Each case must end in a recorded
//! outcome or one clear error, and must not hold up the rest of the backlog.
//! Process-level faults (crash, restart, lock loss) are
//! `faults_process.rs`'s business.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use support::bin::{one_line_failure, Bin};
use support::daemon::{config_toml, tail, wait_until, Daemon};
use support::fixtures::{
    channel_and_rule, channel_for, emit, enqueue, insert_event_directly, seed, unfinished,
    NAMESPACE, SECRET,
};
use support::{migrated_db, Receiver, Script};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// Helpers: channels with their own event type, raw hostile servers.

/// One delivery status as stored.
#[derive(Debug)]
struct Stored {
    state: String,
    reason: String,
    attempt_count: i32,
    attempts: Vec<serde_json::Value>,
}

/// The statuses of `channel`'s deliveries.
fn stored(client: &mut postgres::Client, channel: uuid::Uuid) -> Vec<Stored> {
    client
        .query(
            "SELECT state, reason, attempt_count, attempts FROM notification.delivery_status
             WHERE channel_id = $1",
            &[&channel],
        )
        .expect("read statuses")
        .iter()
        .map(|r| {
            let attempts: serde_json::Value = r.get(3);
            Stored {
                state: r.get(0),
                reason: r.get(1),
                attempt_count: r.get(2),
                attempts: attempts.as_array().cloned().unwrap_or_default(),
            }
        })
        .collect()
}

/// What a hostile server does with a connection once it has read the
/// request; it should return when `stop` is set.
type Behaviour = fn(&mut TcpStream, &AtomicBool);

/// A raw TCP server on 127.0.0.1 misbehaving as told; dropping it stops and
/// joins every thread.
struct Hostile {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Hostile {
    fn start(behaviour: Behaviour) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let (stop2, threads2) = (Arc::clone(&stop), Arc::clone(&threads));
        let acceptor = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let stop3 = Arc::clone(&stop2);
                        let handle = std::thread::spawn(move || {
                            stream.set_nonblocking(false).expect("blocking");
                            stream
                                .set_read_timeout(Some(Duration::from_secs(5)))
                                .expect("read timeout");
                            if read_request(&mut stream) {
                                behaviour(&mut stream, &stop3);
                            }
                        });
                        threads2.lock().expect("threads").push(handle);
                    }
                    Err(_) => std::thread::sleep(ms(10)),
                }
            }
        });
        Hostile {
            addr,
            stop,
            threads,
            acceptor: Some(acceptor),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for t in self.threads.lock().expect("threads").drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads one request (headers, then a Content-Length body); false if the
/// client went away first.
fn read_request(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Sleeps up to `d`, returning early (true) when `stop` is set.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let step = ms(20);
    let mut slept = Duration::ZERO;
    while slept < d {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(step);
        slept += step;
    }
    stop.load(Ordering::SeqCst)
}

fn never_answers(_: &mut TcpStream, stop: &AtomicBool) {
    while !nap(Duration::from_secs(1), stop) {}
}

fn slowloris(s: &mut TcpStream, stop: &AtomicBool) {
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" {
        if s.write_all(&[*byte]).is_err() || nap(Duration::from_secs(1), stop) {
            return;
        }
    }
}

fn hundred_mb_body(s: &mut TcpStream, stop: &AtomicBool) {
    const SIZE: usize = 100 * 1024 * 1024;
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < SIZE && !stop.load(Ordering::SeqCst) {
        if s.write_all(&chunk).is_err() {
            return;
        }
        sent += chunk.len();
    }
}

fn closes_mid_response(s: &mut TcpStream, _: &AtomicBool) {
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Le");
    let _ = s.flush();
    let _ = s.shutdown(std::net::Shutdown::Both);
}

/// A 302 to another host, from a raw server so that the Location is ours.
fn redirect_server(target: String) -> (TcpListener, JoinHandle<()>, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let accept = listener.try_clone().expect("clone listener");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            match accept.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).expect("blocking");
                    s.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    if read_request(&mut s) {
                        let reply = format!(
                            "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n"
                        );
                        let _ = s.write_all(reply.as_bytes());
                    }
                }
                Err(_) => std::thread::sleep(ms(10)),
            }
        }
    });
    (listener, handle, stop)
}

/// The last attempt record's `field`.
fn last<'a>(s: &'a Stored, field: &str) -> &'a serde_json::Value {
    &s.attempts.last().expect("an attempt record")[field]
}

// ---------------------------------------------------------------------------
// 5. Hostile receivers.

/// Never answers, slowloris, 100 MB body, redirect to another host, closed
/// mid-response: each delivery ends in a recorded attempt within the
/// configured timeout, the daemon's memory stays bounded, and a healthy
/// channel's backlog is delivered in the same leadership term.
#[test]
fn hostile_receivers_end_in_recorded_attempts_within_the_timeout() {
    let timeout_ms = 2000;
    let db = migrated_db();
    let mut client = db.client();

    let never = Hostile::start(never_answers);
    let slow = Hostile::start(slowloris);
    let huge = Hostile::start(hundred_mb_body);
    let closes = Hostile::start(closes_mid_response);
    let elsewhere = Receiver::start(Script::status(200));
    let (redirect, redirect_thread, redirect_stop) = redirect_server(elsewhere.url());
    let redirect_url = format!("http://{}/hook", redirect.local_addr().expect("addr"));
    let healthy = Receiver::start(Script::status(200));

    let cases = [
        ("never", never.url()),
        ("slowloris", slow.url()),
        ("huge", huge.url()),
        ("redirect", redirect_url),
        ("closes", closes.url()),
    ];
    let mut channels = Vec::new();
    for (name, url) in &cases {
        let channel = channel_for(&mut client, &format!("hostile.{name}"), url, SECRET, "{}");
        emit(
            &mut client,
            &format!("hostile.{name}"),
            "jsonb_build_object('n', g)",
            2,
        );
        channels.push((*name, channel));
    }
    let healthy_channel = channel_and_rule(&mut client, &healthy.url());
    let healthy_events = enqueue(&mut client, 30);

    // One attempt each: the next retry is an hour away.
    let delivery = format!(
        "timeout = \"{timeout_ms}ms\"\nconnect_timeout = \"1s\"\nretry_schedule = [\"1h\"]\n\
         max_response_bytes = 1024\n"
    );
    let mut daemon = Daemon::run(
        "hostile",
        &config_toml(&db.url, 4, "200ms", &delivery, ""),
        &[],
    );
    wait_until(
        "every hostile delivery attempted and the healthy backlog delivered",
        Duration::from_secs(60),
        || {
            channels
                .iter()
                .all(|(_, c)| stored(&mut client, *c).iter().all(|s| s.attempt_count >= 1))
                && stored(&mut client, healthy_channel)
                    .iter()
                    .all(|s| s.state == "SUCCESS")
        },
        || tail(&daemon.stderr(), 30),
    );
    let hwm = daemon.vm_hwm();
    daemon.stop(Duration::from_secs(30));
    // Read after the stop: the leader logs its term's summary when it stops.
    let stderr = daemon.stderr();

    println!("hostile receivers: daemon VmHWM {} MB", hwm / (1024 * 1024));
    assert!(
        hwm < 64 * 1024 * 1024,
        "daemon peak memory {} MB: the 100 MB body was buffered?",
        hwm / (1024 * 1024)
    );

    for (name, channel) in &channels {
        for s in stored(&mut client, *channel) {
            assert_eq!(s.attempt_count, 1, "{name}: {s:?}");
            assert_eq!(s.attempts.len(), 1, "{name}: {s:?}");
            let took = last(&s, "duration_ms").as_u64().expect("duration_ms");
            println!(
                "hostile receivers: {name}: {} in {took} ms: {}",
                s.state, s.reason
            );
            assert!(
                took <= timeout_ms + 1000,
                "{name}: the attempt took {took} ms, timeout {timeout_ms} ms"
            );
            let error = last(&s, "error").as_str().unwrap_or("").to_owned();
            let http = last(&s, "http_status").as_u64();
            match *name {
                "never" | "slowloris" => {
                    assert_eq!(s.state, "SENDING", "{name}: {s:?}");
                    assert!(error.contains("timed out"), "{name}: {s:?}");
                }
                "huge" => {
                    assert_eq!(http, Some(200), "{name}: {s:?}");
                    assert_eq!(s.state, "SUCCESS", "{name}: {s:?}");
                    let body = last(&s, "response_body").as_str().unwrap_or("");
                    assert!(body.len() <= 1024, "{name}: kept {} bytes", body.len());
                }
                "redirect" => {
                    assert_eq!(http, Some(302), "{name}: {s:?}");
                    assert_eq!(s.state, "SENDING", "{name}: a 3xx is a failed attempt");
                }
                "closes" => {
                    assert_eq!(http, None, "{name}: {s:?}");
                    assert!(!error.is_empty(), "{name}: {s:?}");
                    assert_eq!(s.state, "SENDING", "{name}: {s:?}");
                }
                _ => unreachable!(),
            }
        }
    }
    assert_eq!(elsewhere.count(), 0, "the redirect was followed");

    // The healthy backlog went through in the daemon's first pass, next to
    // the hostile ones, each with one attempt.
    let healthy_rows = stored(&mut client, healthy_channel);
    assert_eq!(healthy_rows.len(), healthy_events.len());
    assert!(healthy_rows
        .iter()
        .all(|s| s.state == "SUCCESS" && s.attempt_count == 1));
    // One leadership term from start to stop, no failure, each delivery
    // reconciled exactly once (the retries are an hour away).
    let term = stderr
        .lines()
        .find(|l| l.contains("stopped leading"))
        .expect("the summary of the leadership term");
    let total = healthy_events.len() + 2 * cases.len();
    assert!(
        term.contains(&format!("stopped leading ok: {total} deliveries")),
        "the leader did not take every delivery once: {term}"
    );

    redirect_stop.store(true, Ordering::SeqCst);
    redirect_thread.join().expect("redirect server");
}

/// 500 for half the requests at random: with retries left, everything ends
/// delivered, every attempt recorded.
#[test]
fn random_half_failures_end_with_everything_delivered() {
    let db = migrated_db();
    let mut client = db.client();
    let receiver = Receiver::start(Script::fail_fraction(0.5));
    let events = seed(&mut client, &receiver.url(), 100);
    let schedule = vec!["\"10ms\""; 25].join(", ");
    let delivery =
        format!("timeout = \"2s\"\nconnect_timeout = \"1s\"\nretry_schedule = [{schedule}]\nbreaker_failures = 0\n");
    let mut daemon = Daemon::run(
        "half",
        &config_toml(&db.url, 4, "100ms", &delivery, ""),
        &[],
    );
    wait_until(
        "everything delivered",
        Duration::from_secs(60),
        || unfinished(&mut client) == 0,
        || tail(&daemon.stderr(), 20),
    );
    daemon.stop(Duration::from_secs(30));
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'SUCCESS'), sum(attempt_count)::bigint,
                    sum(jsonb_array_length(attempts))::bigint
             FROM notification.delivery_status",
            &[],
        )
        .expect("summary");
    let (success, attempts, records): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!(
        "50% failures: {success} of {} delivered after {attempts} attempts ({} requests)",
        events.len(),
        receiver.count()
    );
    assert_eq!(success, events.len() as i64);
    assert_eq!(
        attempts as usize,
        receiver.count(),
        "every request recorded"
    );
    assert_eq!(records, attempts, "every attempt has its record");
}

// ---------------------------------------------------------------------------
// 6. Bad rows.

/// Rows written around the CLI: a payload that is not an object, a 5 MB
/// payload, a URL that does not parse, an invalid secret, headers with a
/// forbidden character. The pass goes on; each affected delivery ends
/// FAILED with a reason (the 5 MB payload is valid and delivered whole);
/// the healthy backlog is delivered. Rows the schema forbids are refused at
/// INSERT.
#[test]
fn bad_rows_fail_their_delivery_with_a_reason_and_the_pass_goes_on() {
    let db = migrated_db();
    let mut client = db.client();
    let receiver = Receiver::start(Script::status(200));
    let url = receiver.url();

    let not_object = channel_for(&mut client, "bad.payload", &url, SECRET, "{}");
    // enqueue_event refuses these since migration 0003; written around it.
    insert_event_directly(
        &mut client,
        NAMESPACE,
        "bad.payload",
        "'[1, 2, 3]'::jsonb",
        "'0 s'",
    );
    insert_event_directly(
        &mut client,
        NAMESPACE,
        "bad.payload",
        "'\"just a string\"'::jsonb",
        "'0 s'",
    );
    // Over the default payload cap: an operator who raised it.
    client
        .execute(
            "UPDATE notification.settings SET max_payload_bytes = 8 * 1024 * 1024",
            &[],
        )
        .expect("raise the payload cap");
    let big = channel_for(&mut client, "big.payload", &url, SECRET, "{}");
    let big_events = emit(
        &mut client,
        "big.payload",
        "jsonb_build_object('blob', repeat('x', 5 * 1024 * 1024))",
        1,
    );
    let bad_url = channel_for(&mut client, "bad.url", "http//missing colon", SECRET, "{}");
    emit(&mut client, "bad.url", "'{}'::jsonb", 1);
    let bad_secret = channel_for(
        &mut client,
        "bad.secret",
        &url,
        "whsec_!!not*base64!!",
        "{}",
    );
    emit(&mut client, "bad.secret", "'{}'::jsonb", 1);
    let no_prefix = channel_for(&mut client, "bad.secret2", &url, "hunter2", "{}");
    emit(&mut client, "bad.secret2", "'{}'::jsonb", 1);
    let bad_value = channel_for(
        &mut client,
        "bad.header",
        &url,
        SECRET,
        r#"{"X-Evil": "a\r\nInjected: 1"}"#,
    );
    emit(&mut client, "bad.header", "'{}'::jsonb", 1);
    let bad_name = channel_for(
        &mut client,
        "bad.header2",
        &url,
        SECRET,
        r#"{"X Evil": "a"}"#,
    );
    emit(&mut client, "bad.header2", "'{}'::jsonb", 1);
    let healthy = seed(&mut client, &url, 20);

    // What the schema refuses outright.
    for (what, sql) in [
        (
            "headers that are not an object",
            "INSERT INTO notification.channel (namespace, name, url, signing_secret, headers)
             VALUES ('acme', 'x', 'http://x', 'whsec_eA==', '[]')",
        ),
        (
            "a null payload",
            "INSERT INTO notification.event (namespace, type, payload) VALUES ('acme', 't', NULL)",
        ),
        (
            "an unknown state",
            "UPDATE notification.delivery_status SET state = 'LOST'",
        ),
        (
            "attempts that are not a list",
            "UPDATE notification.delivery_status SET attempts = '{}'",
        ),
    ] {
        assert!(
            client.batch_execute(sql).is_err(),
            "the schema accepted {what}"
        );
    }

    let mut once = Daemon::spawn(
        "once",
        &config_toml(&db.url, 4, "1s", "", ""),
        &["once", "--json"],
        &[],
    );
    let status = once.wait(Duration::from_secs(60));
    let report: serde_json::Value = serde_json::from_str(&once.stdout())
        .unwrap_or_else(|e| panic!("once --json: {e}\n{}\n{}", once.stdout(), once.stderr()));
    println!("bad rows: once report {report}");
    assert!(status.success(), "once exit {status}: {}", once.stderr());
    assert_eq!(report["failure"], serde_json::Value::Null);
    assert_eq!(
        report["deliveries_seen"], 28,
        "every event seen in one pass"
    );

    for (what, channel, reason) in [
        ("URL that does not parse", bad_url, "does not parse"),
        ("secret that is not base64", bad_secret, "signing secret"),
        ("secret without whsec_", no_prefix, "signing secret"),
        ("header value with CR LF", bad_value, "control character"),
        (
            "header name with a space",
            bad_name,
            "not a valid HTTP header name",
        ),
    ] {
        for s in stored(&mut client, channel) {
            println!("bad rows: {what}: {} ({})", s.state, s.reason);
            assert_eq!(s.state, "FAILED", "{what}: {s:?}");
            assert!(s.reason.contains(reason), "{what}: reason {:?}", s.reason);
        }
    }
    let big_rows = stored(&mut client, big);
    assert_eq!(
        big_rows[0].state, "SUCCESS",
        "5 MB payload: {:?}",
        big_rows[0].reason
    );
    let big_request = receiver
        .requests()
        .into_iter()
        .find(|r| r.webhook_id() == Some(big_events[0].to_string().as_str()))
        .expect("the 5 MB event reached the receiver");
    assert_eq!(
        big_request.json()["data"]["blob"].as_str().map(str::len),
        Some(5 * 1024 * 1024)
    );
    let healthy_ok = healthy
        .iter()
        .filter(|e| {
            client
                .query_one(
                    "SELECT state FROM notification.delivery_status WHERE event_id = $1",
                    &[*e],
                )
                .map(|r| r.get::<_, String>(0) == "SUCCESS")
                .unwrap_or(false)
        })
        .count();
    assert_eq!(healthy_ok, healthy.len(), "the healthy backlog");
    // No request ever went out for a channel that failed its checks.
    let bad_ids: Vec<String> = [bad_url, bad_secret, no_prefix, bad_value, bad_name]
        .iter()
        .flat_map(|c| {
            client
                .query(
                    "SELECT event_id::text FROM notification.delivery_status WHERE channel_id = $1",
                    &[c],
                )
                .expect("ids")
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(receiver.ids().iter().all(|id| !bad_ids.contains(id)));

    // Last, so that the checks above run even while this one fails.
    for s in stored(&mut client, not_object) {
        println!(
            "bad rows: payload that is not an object: {} ({})",
            s.state, s.reason
        );
        assert_eq!(s.state, "FAILED", "payload that is not an object: {s:?}");
        assert!(s.reason.contains("object"), "reason {:?}", s.reason);
    }
}

// ---------------------------------------------------------------------------
// 7. Bad configuration and arguments.

/// A config file for `case`, or `None` for "no file at all".
struct BadInput {
    name: &'static str,
    config: Option<String>,
    args: Vec<String>,
    /// Text the one stderr line must contain.
    names: &'static str,
}

fn bad_config(name: &'static str, toml: &str, names: &'static str) -> BadInput {
    BadInput {
        name,
        config: Some(toml.to_owned()),
        args: vec!["check-config".into()],
        names,
    }
}

fn bad_args(name: &'static str, args: &[&str], names: &'static str) -> BadInput {
    BadInput {
        name,
        config: None,
        args: args.iter().map(|a| a.to_string()).collect(),
        names,
    }
}

/// Arguments that pass clap and are refused by the command itself, which
/// runs with `config` (a reachable database).
fn bad_command(name: &'static str, config: &str, args: &[&str], names: &'static str) -> BadInput {
    BadInput {
        config: Some(config.to_owned()),
        ..bad_args(name, args, names)
    }
}

/// At least 20 bad inputs: each exits 2 with exactly one stderr line that
/// names the problem, and none panics.
#[test]
fn bad_configuration_and_arguments_exit_2_with_one_clear_line() {
    let db = migrated_db();
    let good = format!("[database]\nurl = \"{}\"\n", db.url);
    let with = |extra: &str| format!("{good}{extra}");
    let cases = vec![
        bad_config(
            "negative workers",
            &with("[reconciler]\nworkers = -1\n"),
            "reconciler.workers",
        ),
        bad_config(
            "huge workers",
            &with("[reconciler]\nworkers = 100000\n"),
            "reconciler.workers",
        ),
        bad_config(
            "workers as text",
            &with("[reconciler]\nworkers = \"four\"\n"),
            "workers",
        ),
        bad_config(
            "interval not a duration",
            &with("[reconciler]\ninterval = \"soon\"\n"),
            "reconciler.interval",
        ),
        bad_config(
            "zero interval",
            &with("[reconciler]\ninterval = \"0s\"\n"),
            "reconciler.interval",
        ),
        bad_config(
            "unknown key",
            &with("[reconciler]\nwrokers = 4\n"),
            "wrokers",
        ),
        bad_config("unknown section", &with("[nope]\nx = 1\n"), "nope"),
        bad_config("not TOML", "this is = = not toml", "line 1"),
        bad_config(
            "zero page size",
            &with("[reconciler]\npage_size = 0\n"),
            "reconciler.page_size",
        ),
        bad_config(
            "negative queue",
            &with("[reconciler]\nqueue_capacity = -3\n"),
            "reconciler.queue_capacity",
        ),
        bad_config(
            "section twice",
            &with("[reconciler]\nworkers = 8\n[database]\n"),
            "database",
        ),
        bad_config(
            "negative pool size",
            &format!(
                "[database]\nurl = \"{}\"\npool_size = -2\n[reconciler]\nworkers = 8\n",
                db.url
            ),
            "database.pool_size",
        ),
        bad_config(
            "schema with a dash",
            &format!("[database]\nurl = \"{}\"\nschema = \"my-schema\"\n", db.url),
            "database.schema",
        ),
        bad_config(
            "not a postgres URL",
            "[database]\nurl = \"mysql://root@localhost/db\"\n",
            "database.url",
        ),
        bad_config(
            "empty retry schedule",
            &with("[delivery]\nretry_schedule = []\n"),
            "delivery.retry_schedule",
        ),
        bad_config(
            "bad retry step",
            &with("[delivery]\nretry_schedule = [\"5s\", \"never\"]\n"),
            "delivery.retry_schedule",
        ),
        bad_config(
            "negative max_response_bytes",
            &with("[delivery]\nmax_response_bytes = -1\n"),
            "delivery.max_response_bytes",
        ),
        bad_config(
            "zero delivery timeout",
            &with("[delivery]\ntimeout = \"0s\"\n"),
            "delivery.timeout",
        ),
        bad_config(
            "connect timeout in parsecs",
            &with("[delivery]\nconnect_timeout = \"5 parsecs\"\n"),
            "delivery.connect_timeout",
        ),
        bad_config(
            "empty log level",
            &with("[log]\nlevel = \"\"\n"),
            "log.level",
        ),
        bad_config(
            "log level typo",
            &with("[log]\nlevel = \"inof\"\n"),
            "log.level",
        ),
        bad_config(
            "metrics address",
            &with("[metrics]\nlisten = \"not an address\"\n"),
            "metrics.listen",
        ),
        bad_config(
            "empty lock key",
            &with("[reconciler]\nlock_key = \"  \"\n"),
            "reconciler.lock_key",
        ),
        bad_config(
            "zero pending timeout",
            &with("[reconciler]\npending_timeout = \"0s\"\n"),
            "reconciler.pending_timeout",
        ),
        BadInput {
            name: "missing config file",
            config: None,
            args: vec![
                "--config".into(),
                "/nonexistent/nr.toml".into(),
                "check-config".into(),
            ],
            names: "/nonexistent/nr.toml",
        },
        bad_args("unknown command", &["frobnicate"], "frobnicate"),
        bad_args("unknown flag", &["once", "--jsn"], "--jsn"),
        bad_args("resend a non-uuid", &["resend", "not-a-uuid"], "not-a-uuid"),
        bad_args(
            "emit without type",
            &["event", "emit", "--namespace", "a", "--data", "{}"],
            "--type",
        ),
        bad_args(
            "sink bad address",
            &["sink", "--listen", "nowhere"],
            "nowhere",
        ),
        bad_args(
            "sink bad latency",
            &["sink", "--listen", "127.0.0.1:0", "--latency", "fast"],
            "fast",
        ),
        bad_args(
            "rule without channel",
            &[
                "rule",
                "create",
                "--namespace",
                "a",
                "--name",
                "b",
                "--event-type",
                "c",
            ],
            "--channel",
        ),
        // These pass clap and are refused by the command, with a database.
        bad_command(
            "channel with an ftp URL",
            &good,
            &[
                "channel",
                "create",
                "--namespace",
                "a",
                "--name",
                "b",
                "--url",
                "ftp://x",
            ],
            "ftp://x",
        ),
        bad_command(
            "channel with a bad header",
            &good,
            &[
                "channel",
                "create",
                "--namespace",
                "a",
                "--name",
                "b",
                "--url",
                "http://x",
                "--header",
                "Bad Name: v",
            ],
            "Bad Name",
        ),
        bad_command(
            "channel with a bad secret",
            &good,
            &[
                "channel",
                "create",
                "--namespace",
                "a",
                "--name",
                "b",
                "--url",
                "http://x",
                "--secret",
                "nope",
            ],
            "secret",
        ),
        bad_command(
            "emit bad JSON",
            &good,
            &[
                "event",
                "emit",
                "--namespace",
                "a",
                "--type",
                "t",
                "--data",
                "{bad",
            ],
            "JSON",
        ),
        bad_command(
            "list by unknown state",
            &good,
            &["event", "list", "--state", "LOST"],
            "LOST",
        ),
    ];
    assert!(cases.len() >= 20);

    let dir = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let bin = if let Some(config) = &case.config {
            Bin::with_config(config)
        } else if !case.args.iter().any(|a| a == "--config") {
            // Argument errors must not depend on a config file.
            Bin::with_config_file(&dir.path().join("absent.toml"))
        } else {
            Bin::without_config()
        };
        let out = bin.run(&case.args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // "Clear" also means no cause repeated (`a: b: b`).
        let parts: Vec<&str> = stderr.trim().split(": ").collect();
        let repeats = parts.windows(2).any(|w| w[0] == w[1]);
        let ok = one_line_failure(&out, 2).is_ok_and(|line| line.contains(case.names)) && !repeats;
        println!(
            "bad input {:>2} {:<32} exit {:?}: {}",
            i + 1,
            case.name,
            out.status.code(),
            stderr.trim()
        );
        if !ok {
            failures.push(format!(
                "{} (args {:?}): exit {:?}, stderr {:?} (want exit 2 and one line naming {:?})",
                case.name,
                case.args,
                out.status.code(),
                stderr,
                case.names
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "bad inputs handled badly:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 8. Secrets.

/// Debug logging over a full `run` with failures, the database password in
/// `DATABASE_URL`: neither a signing secret nor the password shows in
/// stdout or stderr (nor in `check-config`'s output).
#[test]
fn secrets_never_reach_the_output_even_at_debug_level() {
    const PASSWORD: &str = "pw-Vq7Rk2ZmX9sLtT4e";
    const LEAKY_SECRET: &str = "whsec_LEAKYSECRETnotbase64!!";
    let db = migrated_db();
    let mut client = db.client();
    let role = format!("nr_app_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{PASSWORD}'"
        ))
        .expect("create role");
    let mut url = url::Url::parse(&db.url).expect("db url");
    url.set_username(&role).expect("user");
    url.set_password(Some(PASSWORD)).expect("password");
    let url = url.to_string();

    // Every event fails once, then succeeds; one channel has an invalid
    // secret that must not be echoed in its failure.
    let receiver = Receiver::start(Script::sequence_per_id(vec![500, 200]));
    seed(&mut client, &receiver.url(), 20);
    channel_for(&mut client, "leaky", &receiver.url(), LEAKY_SECRET, "{}");
    emit(&mut client, "leaky", "'{}'::jsonb", 3);

    // The config names another server: the real URL comes from DATABASE_URL.
    let metrics = support::net::free_addr();
    let config = config_toml(
        "postgres://nobody@127.0.0.1:1/none",
        4,
        "100ms",
        "",
        &format!("[metrics]\nlisten = \"{metrics}\"\n"),
    );
    let env = [("DATABASE_URL", url.as_str()), ("RUST_LOG", "debug")];
    let mut daemon = Daemon::run("secrets", &config, &env);
    wait_until(
        "every delivery finished",
        Duration::from_secs(60),
        || unfinished(&mut client) == 0,
        || tail(&daemon.stderr(), 20),
    );
    let (code, scraped) = support::net::http_get(metrics, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200, "{scraped}");
    assert!(
        scraped.contains("notification_reconciler_deliveries_total"),
        "{scraped}"
    );
    daemon.stop(Duration::from_secs(30));
    let mut check = Daemon::spawn("check-config", &config, &["check-config"], &env);
    let check_status = check.wait(Duration::from_secs(30));
    assert!(check_status.success(), "check-config: {}", check.stderr());

    let output = [
        ("run stdout", daemon.stdout()),
        ("run stderr", daemon.stderr()),
        ("check-config stdout", check.stdout()),
        ("check-config stderr", check.stderr()),
        ("/metrics", scraped),
    ];
    assert!(output[1].1.contains("DEBUG"), "debug logging was not on");
    assert!(receiver.count() >= 40, "the failures happened");
    let secret_key = SECRET.trim_start_matches("whsec_");
    let leaky_key = LEAKY_SECRET.trim_start_matches("whsec_");
    for (what, text) in &output {
        println!("secrets: {what}: {} bytes checked", text.len());
        for needle in [PASSWORD, secret_key, leaky_key] {
            if let Some(at) = text.find(needle) {
                let line = text[..at].rfind('\n').map_or(0, |n| n + 1);
                panic!(
                    "{what} shows a secret: {}",
                    text[line..].lines().next().unwrap_or_default()
                );
            }
        }
    }
    drop(client);
    let mut admin = db.client();
    let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}"));
}
