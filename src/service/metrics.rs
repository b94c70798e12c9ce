//! What the daemon tells a monitoring system: Prometheus metrics (running
//! totals kept from each pass's report, encoded by prometheus-client) and a
//! health verdict, served by the crate's small synchronous `http_server` on
//! `metrics.listen` at `/metrics` and `/healthz`.
//!
//! The daemon loop feeds [`Telemetry`] (pass results, heartbeats, the
//! database's state); this module decides what `/healthz` answers and how
//! the numbers are written, and nothing about when passes run.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::http_server;
use crate::reconcile::report::Report;

/// The prefix of every metric name.
pub const PREFIX: &str = "notification_reconciler";

/// The content type of `/metrics` (prometheus-client writes OpenMetrics
/// text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label set with one label.
type Label = [(&'static str, &'static str); 1];

/// How a pass ended, as the `result` label of `passes_total` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassResult {
    /// The pass ran to the end (per-event errors may still be counted).
    Ok,
    /// The pass ran but did not complete (lock connection lost, paging error).
    Failed,
    /// Another instance held the lock; nothing was done.
    LockHeld,
    /// The pass could not start (database unreachable).
    Error,
}

impl PassResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PassResult::Ok => "ok",
            PassResult::Failed => "failed",
            PassResult::LockHeld => "lock_held",
            PassResult::Error => "error",
        }
    }

    const ALL: [PassResult; 4] = [
        PassResult::Ok,
        PassResult::Failed,
        PassResult::LockHeld,
        PassResult::Error,
    ];
}

/// The delivery outcomes counted by `deliveries_total{outcome}`.
const OUTCOMES: [&str; 4] = [
    "delivered",
    "retry_scheduled",
    "failed",
    "changed_concurrently",
];

/// The Prometheus metrics: running totals over the process's life.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    deliveries: Family<Label, Counter>,
    passes: Family<Label, Counter>,
    last_pass_duration: Gauge<f64, AtomicU64>,
    due_at_last_pass_start: Gauge,
    lock_held: Gauge,
    worker_panics: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric, with every label value present at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let deliveries = Family::<Label, Counter>::default();
        for outcome in OUTCOMES {
            let _ = deliveries.get_or_create(&[("outcome", outcome)]);
        }
        registry.register(
            "deliveries",
            "Delivery statuses written, by outcome (delivered, retry_scheduled, failed, changed_concurrently)",
            deliveries.clone(),
        );
        let passes = Family::<Label, Counter>::default();
        for result in PassResult::ALL {
            let _ = passes.get_or_create(&[("result", result.as_str())]);
        }
        registry.register(
            "passes",
            "Passes by result (ok, failed, lock_held, error)",
            passes.clone(),
        );
        let last_pass_duration = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "last_pass_duration",
            "Wall time of the last pass that ran",
            Unit::Seconds,
            last_pass_duration.clone(),
        );
        let due_at_last_pass_start = Gauge::default();
        registry.register(
            "events_due_at_last_pass_start",
            "Events with due deliveries when the last pass started",
            due_at_last_pass_start.clone(),
        );
        let lock_held = Gauge::default();
        registry.register(
            "lock_held",
            "1 when this instance's latest pass took the leader lock (it leads), else 0",
            lock_held.clone(),
        );
        let worker_panics = Counter::default();
        registry.register(
            "worker_panics",
            "Events whose reconcile panicked (caught; the event stays due)",
            worker_panics.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry,
            deliveries,
            passes,
            last_pass_duration,
            due_at_last_pass_start,
            lock_held,
            worker_panics,
        }
    }

    /// A pass took the lock and found `due` events due.
    pub fn pass_started(&self, due: u64) {
        self.lock_held.set(1);
        self.due_at_last_pass_start
            .set(i64::try_from(due).unwrap_or(i64::MAX));
    }

    /// Adds a pass that ran to the totals.
    pub fn pass_ran(&self, report: &Report) {
        let add = |outcome: &'static str, n: u64| {
            self.deliveries
                .get_or_create(&[("outcome", outcome)])
                .inc_by(n);
        };
        add("delivered", report.delivered);
        add("retry_scheduled", report.retry_scheduled);
        add("failed", report.failed);
        add("changed_concurrently", report.changed_concurrently);
        self.worker_panics.inc_by(report.panics);
        self.last_pass_duration
            .set(report.duration_ms as f64 / 1000.0);
        self.due_at_last_pass_start
            .set(i64::try_from(report.due_at_start).unwrap_or(i64::MAX));
        self.count_pass(if report.ok() {
            PassResult::Ok
        } else {
            PassResult::Failed
        });
        if !report.ok() {
            // A failed pass lost its lock connection: another may lead now.
            self.lock_held.set(0);
        }
    }

    /// Counts a pass that did not run (`LockHeld` or `Error`).
    pub fn pass_skipped(&self, result: PassResult) {
        self.lock_held.set(0);
        self.count_pass(result);
    }

    fn count_pass(&self, result: PassResult) {
        self.passes
            .get_or_create(&[("result", result.as_str())])
            .inc();
    }

    /// The metrics in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The health verdict behind `/healthz`: the loop must keep turning (a
/// heartbeat at least every `stall_after`) and the database must have
/// answered at the last pass.
#[derive(Debug)]
pub struct Health {
    stall_after: Duration,
    state: Mutex<HealthState>,
}

#[derive(Debug)]
struct HealthState {
    last_beat: Instant,
    db_problem: Option<String>,
}

impl Health {
    /// Healthy only once the database answered; stalled after `stall_after`
    /// without a heartbeat.
    pub fn new(stall_after: Duration) -> Health {
        Health {
            stall_after,
            state: Mutex::new(HealthState {
                last_beat: Instant::now(),
                db_problem: Some("starting: the database has not answered yet".into()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The loop (or a pass) is making progress.
    pub fn beat(&self) {
        self.state().last_beat = Instant::now();
    }

    /// The database answered.
    pub fn db_ok(&self) {
        let mut s = self.state();
        s.db_problem = None;
        s.last_beat = Instant::now();
    }

    /// The database did not answer, or the pass failed on it: `why`.
    pub fn db_problem(&self, why: String) {
        let mut s = self.state();
        s.db_problem = Some(why);
        s.last_beat = Instant::now();
    }

    /// `Ok` when healthy, else the reason.
    pub fn check(&self) -> Result<(), String> {
        let s = self.state();
        let quiet = s.last_beat.elapsed();
        if quiet > self.stall_after {
            return Err(format!(
                "the daemon loop has stalled: no progress for {} (limit {})",
                humantime::format_duration(Duration::from_secs(quiet.as_secs())),
                humantime::format_duration(self.stall_after)
            ));
        }
        match &s.db_problem {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }
}

/// Metrics and health, shared by the daemon loop and the server thread.
#[derive(Debug)]
pub struct Telemetry {
    /// The metrics.
    pub metrics: Metrics,
    /// The health verdict.
    pub health: Health,
}

/// The metrics server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr} (metrics.listen): {source}")]
pub struct ListenError {
    /// The configured address.
    pub addr: SocketAddr,
    /// Why binding failed.
    pub source: std::io::Error,
}

/// The running metrics server; dropping it stops it.
pub struct Server {
    _server: http_server::Server,
}

/// Starts the server on `addr`.
pub fn serve(addr: SocketAddr, telemetry: Arc<Telemetry>) -> Result<Server, ListenError> {
    let limits = http_server::Limits {
        max_body: 64 * 1024,
        ..http_server::Limits::default()
    };
    let server = http_server::Server::bind(addr, limits, move |rq| answer(rq, &telemetry))
        .map_err(|source| ListenError { addr, source })?;
    log::info!("serving /metrics and /healthz on http://{}", server.addr());
    Ok(Server { _server: server })
}

/// Answers one request.
fn answer(request: &http_server::Request, telemetry: &Telemetry) -> http_server::Response {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = request.path.split('?').next().unwrap_or("");
    let (status, content_type, body) = if !matches!(request.method.as_str(), "GET" | "HEAD") {
        (405, TEXT, "only GET and HEAD\n".to_string())
    } else if path == "/metrics" {
        (200, CONTENT_TYPE, telemetry.metrics.encode())
    } else if path == "/healthz" {
        match telemetry.health.check() {
            Ok(()) => (200, TEXT, "ok\n".to_string()),
            Err(why) => (503, TEXT, format!("{why}\n")),
        }
    } else {
        (404, TEXT, "try /metrics or /healthz\n".to_string())
    };
    http_server::Response::text(status, content_type, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_over_passes() {
        let m = Metrics::new();
        let report = Report {
            delivered: 3,
            retry_scheduled: 2,
            panics: 1,
            due_at_start: 6,
            duration_ms: 1500,
            ..Report::default()
        };
        m.pass_started(6);
        m.pass_ran(&report);
        m.pass_ran(&report);
        m.pass_skipped(PassResult::LockHeld);
        let text = m.encode();
        for line in [
            "notification_reconciler_deliveries_total{outcome=\"delivered\"} 6",
            "notification_reconciler_deliveries_total{outcome=\"retry_scheduled\"} 4",
            "notification_reconciler_deliveries_total{outcome=\"failed\"} 0",
            "notification_reconciler_passes_total{result=\"ok\"} 2",
            "notification_reconciler_passes_total{result=\"lock_held\"} 1",
            "notification_reconciler_passes_total{result=\"error\"} 0",
            "notification_reconciler_worker_panics_total 2",
            "notification_reconciler_last_pass_duration_seconds 1.5",
            "notification_reconciler_events_due_at_last_pass_start 6",
            "notification_reconciler_lock_held 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("notification_reconciler_build_info{version=\""));
    }

    #[test]
    fn health_needs_the_database_and_a_turning_loop() {
        let h = Health::new(Duration::from_millis(50));
        assert!(h.check().unwrap_err().contains("not answered yet"));
        h.db_ok();
        assert_eq!(h.check(), Ok(()));
        h.db_problem("database unavailable: refused".into());
        assert!(h.check().unwrap_err().contains("refused"));
        h.db_ok();
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.check().unwrap_err().contains("stalled"));
    }
}
