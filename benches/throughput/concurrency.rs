//! Scenario 8, concurrency (`--only concurrency`): the daemon binary with
//! 64, 256 and 1,024 workers on a pool of 32 connections against a receiver
//! answering after 1 s: deliveries/s against `workers / 1 s`, the most
//! database connections of ours seen at once, the daemon's peak RSS and its
//! worker threads' touched stack.

use std::time::{Duration, Instant};

use super::daemon::BinDaemon;
use super::harness::{push, seed, wait_all_recorded, Row};
use super::receivers::Loopback;
use super::support;
use super::support::sessions::SessionSampler;
use super::support::Script;

/// Scenario 8: many deliveries in flight on few database connections. The
/// daemon binary (`run`) drains a backlog to this benchmark's receiver answering
/// after `latency`, with `workers` workers and a pool of 32 connections,
/// while a thread samples `pg_stat_activity` for sessions of ours. Reports
/// deliveries/s (daemon start to the last outcome recorded) against
/// `workers / latency`, the most connections seen, the daemon's peak RSS
/// and its worker threads' touched stack, the RSS each worker adds, and
/// what TLS adds per worker (256 workers against the test support's HTTPS
/// receiver, answering after the same latency).
pub(crate) fn concurrency(tiny: bool, rows: &mut Vec<Row>) {
    const POOL: u32 = 32;
    let (latency, runs): (Duration, &[(usize, u64)]) = if tiny {
        (Duration::from_millis(200), &[(64, 128), (256, 512)])
    } else {
        (
            Duration::from_secs(1),
            &[(64, 640), (256, 2_560), (1024, 10_000)],
        )
    };
    let receiver = Loopback::start(latency);
    let mut rss = Vec::new();
    for &(workers, deliveries) in runs {
        let drain = Drain::run(&receiver.url(), workers, POOL, deliveries, "");
        rss.push((workers, drain.hwm_mib));
        let efficiency = drain.rate() / (workers as f64 / latency.as_secs_f64());
        let judged = workers == 1024;
        push(
            rows,
            Row {
                scenario: "8 concurrency",
                setting: format!(
                    "{workers} workers, pool {POOL}, {deliveries} deliveries, {} ms",
                    latency.as_millis()
                ),
                result: format!(
                    "{}, eff {efficiency:.3}; {}",
                    drain.rate_text(),
                    drain.memory_text()
                ),
                target: if judged {
                    format!("≥ 0.90 of ideal, ≤ {} connections, ≤ 128 MiB", POOL + 2)
                } else {
                    String::new()
                },
                met: judged.then_some(
                    efficiency >= 0.90
                        && drain.most <= i64::from(POOL) + 2
                        && drain.hwm_mib <= 128.0,
                ),
            },
        );
    }
    if let (Some(&(w0, r0)), Some(&(w1, r1))) = (rss.first(), rss.last()) {
        if w1 > w0 {
            push(
                rows,
                Row {
                    scenario: "8 concurrency",
                    setting: format!("RSS per worker, {w0} → {w1} workers"),
                    result: format!("{:.0} KiB", (r1 - r0) * 1024.0 / (w1 - w0) as f64),
                    target: String::new(),
                    met: None,
                },
            );
        }
    }
    // The same 256 workers over HTTPS: what each worker's TLS state adds.
    let Some(&(workers, plain_mib)) = rss.iter().find(|(w, _)| *w == 256) else {
        return;
    };
    let ca = support::tls::TestCa::new();
    let tls = support::Receiver::start_https(Script::status(200).with_latency(latency), &ca);
    let deliveries = 4 * workers as u64;
    let drain = Drain::run(
        &tls.url(),
        workers,
        POOL,
        deliveries,
        &format!("ca_file = \"{}\"\n", ca.ca_file().display()),
    );
    push(
        rows,
        Row {
            scenario: "8 concurrency",
            setting: format!("https, {workers} workers, pool {POOL}, {deliveries} deliveries"),
            result: format!(
                "{}; {}; TLS adds {:.0} KiB per worker",
                drain.rate_text(),
                drain.memory_text(),
                (drain.hwm_mib - plain_mib) * 1024.0 / workers as f64
            ),
            target: String::new(),
            met: None,
        },
    );
}

/// One drain of scenario 8: the daemon binary delivering a seeded backlog.
pub(crate) struct Drain {
    pub(crate) deliveries: u64,
    pub(crate) secs: f64,
    /// The most sessions of ours seen at once.
    pub(crate) most: i64,
    pub(crate) hwm_mib: f64,
    pub(crate) stacks: String,
}

impl Drain {
    /// Seeds `deliveries` to `url`, starts the daemon (`delivery_extra`
    /// appended to its `[delivery]`) and waits until every outcome is
    /// recorded.
    pub(crate) fn run(
        url: &str,
        workers: usize,
        pool: u32,
        deliveries: u64,
        delivery_extra: &str,
    ) -> Drain {
        let db = support::migrated_db();
        seed(&db, deliveries, "PENDING", url);
        let mut client = db.client();
        let sampler = SessionSampler::start(&db.url, &db.name, Duration::from_millis(5));
        let t = Instant::now();
        let mut daemon = BinDaemon::start_with(&db.url, workers, pool, "15s", delivery_extra);
        wait_all_recorded(
            &mut client,
            t + Duration::from_secs(600),
            Duration::from_millis(20),
            &|left| {
                format!(
                    "concurrency: {left} of {deliveries} left after 10 min:\n{}",
                    daemon.stderr()
                )
            },
        );
        let secs = t.elapsed().as_secs_f64();
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id()))
            .expect("concurrency: the daemon's /proc status");
        let stacks = touched_stacks(daemon.child.id());
        daemon.stop();
        let hwm_mib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .expect("concurrency: VmHWM")
            / 1024.0;
        Drain {
            deliveries,
            secs,
            most: sampler.finish().most,
            hwm_mib,
            stacks,
        }
    }

    pub(crate) fn rate(&self) -> f64 {
        self.deliveries as f64 / self.secs
    }

    pub(crate) fn rate_text(&self) -> String {
        format!("{:.0}/s in {:.2} s", self.rate(), self.secs)
    }

    pub(crate) fn memory_text(&self) -> String {
        format!(
            "at most {} connections; peak RSS {:.1} MiB; {}",
            self.most, self.hwm_mib, self.stacks
        )
    }
}

/// The resident part of the worker threads' stacks of process `pid`: the
/// anonymous read-write mappings of exactly the worker stack size in
/// `/proc/<pid>/smaps` (each thread's stack is one, between guard pages).
pub(crate) fn touched_stacks(pid: u32) -> String {
    let size_kib = notification_reconciler::reconcile::worker::STACK_SIZE / 1024;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let value = |rest: &str| {
        rest.split_whitespace()
            .next()
            .and_then(|v| v.parse::<usize>().ok())
    };
    let mut rss = Vec::new();
    let (mut anonymous_rw, mut size) = (false, None);
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let header = fields.first().is_some_and(|f| {
            f.contains('-') && f.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        });
        if header {
            anonymous_rw = fields.len() == 5 && fields[1] == "rw-p";
            size = None;
        } else if let Some(rest) = line.strip_prefix("Size:") {
            size = value(rest);
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            if anonymous_rw && size == Some(size_kib) {
                rss.extend(value(rest));
            }
        }
    }
    if rss.is_empty() {
        return format!("no {size_kib} KiB stacks found");
    }
    rss.sort_unstable();
    format!(
        "{} stacks of {size_kib} KiB: touched median {} KiB, max {} KiB",
        rss.len(),
        rss[rss.len() / 2],
        rss[rss.len() - 1]
    )
}
