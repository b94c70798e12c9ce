//! What the daemon tells a monitoring system: Prometheus metrics (running
//! totals kept from the leader's hooks, encoded by prometheus-client) and a
//! health verdict, served by the crate's small synchronous `http_server` on
//! `metrics.listen` at `/metrics` and `/healthz`.
//!
//! The daemon loop feeds [`Telemetry`] (outcomes, wake-ups, heartbeats, the
//! database's state); this module decides what `/healthz` answers and how
//! the numbers are written, and nothing about when deliveries run.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::delivery::worker::StatusOutcome;
use crate::http_server;
use crate::reconcile::hooks::WakeCause;
use crate::reconcile::job::{Done, Finished};

/// The prefix of every metric name.
pub const PREFIX: &str = "notification_reconciler";

/// The content type of `/metrics` (prometheus-client writes OpenMetrics
/// text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label set with one label.
type Label = [(&'static str, &'static str); 1];

/// The delivery outcomes counted by `deliveries_total{outcome}`.
const OUTCOMES: [&str; 4] = [
    "delivered",
    "retry_scheduled",
    "failed",
    "changed_concurrently",
];

/// How an attempt to lead ended, as `lead_attempts_total{result}` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadResult {
    /// It led and stopped normally (shutdown).
    Stopped,
    /// It led and lost the lock connection (or failed on it).
    Lost,
    /// Another instance held the lock (a standby check).
    LockHeld,
    /// The database could not be reached.
    Error,
}

impl LeadResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LeadResult::Stopped => "stopped",
            LeadResult::Lost => "lost",
            LeadResult::LockHeld => "lock_held",
            LeadResult::Error => "error",
        }
    }

    const ALL: [LeadResult; 4] = [
        LeadResult::Stopped,
        LeadResult::Lost,
        LeadResult::LockHeld,
        LeadResult::Error,
    ];
}

/// Buckets of the enqueue to first attempt histogram, in seconds: 1 ms to
/// about 65 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 17)
}

/// Buckets of the pool wait histogram, in seconds: 50 µs to about 100 s
/// (a worker waits up to `reconcile::recorder::RECORD_WAIT`).
fn pool_wait_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 22)
}

/// The Prometheus metrics: running totals over the process's life.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    deliveries: Family<Label, Counter>,
    lead_attempts: Family<Label, Counter>,
    wakeups: Family<Label, Counter>,
    in_flight: Gauge,
    first_attempt_latency: Histogram,
    deliveries_due: Gauge,
    lock_held: Gauge,
    worker_panics: Counter,
    pool_wait: Histogram,
    pool_in_use: Gauge,
    breakers_open: Gauge,
    auto_disabled: Counter,
    shards_led: Gauge,
    api_requests: Family<[(&'static str, &'static str); 2], Counter>,
    api_duration: Histogram,
    pruned_rows: Family<Label, Counter>,
    prune_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
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
        let lead_attempts = Family::<Label, Counter>::default();
        for result in LeadResult::ALL {
            let _ = lead_attempts.get_or_create(&[("result", result.as_str())]);
        }
        registry.register(
            "lead_attempts",
            "Attempts to lead, by how they ended (stopped, lost, lock_held: a standby check, error: database unreachable)",
            lead_attempts.clone(),
        );
        let wakeups = Family::<Label, Counter>::default();
        for cause in WakeCause::ALL {
            let _ = wakeups.get_or_create(&[("cause", cause.as_str())]);
        }
        registry.register(
            "wakeups",
            "Times the leader woke up to sweep, by cause (start, notification, listening, worker_done, changed_concurrently, retry_due, interval)",
            wakeups.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "deliveries_in_flight",
            "Deliveries handed to workers whose outcome is not recorded yet",
            in_flight.clone(),
        );
        let first_attempt_latency = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "first_attempt_latency",
            "From enqueue to the start of a delivery's first attempt",
            Unit::Seconds,
            first_attempt_latency.clone(),
        );
        let deliveries_due = Gauge::default();
        registry.register(
            "deliveries_due",
            "Unfinished deliveries due, counted when leading starts and at each interval",
            deliveries_due.clone(),
        );
        let lock_held = Gauge::default();
        registry.register(
            "lock_held",
            "1 while this instance holds the leader lock (it leads), else 0",
            lock_held.clone(),
        );
        let worker_panics = Counter::default();
        registry.register(
            "worker_panics",
            "Deliveries whose reconcile panicked (caught; the delivery stays due)",
            worker_panics.clone(),
        );
        let pool_wait = Histogram::new(pool_wait_buckets());
        registry.register_with_unit(
            "db_pool_wait",
            "How long workers waited for a pooled database connection to record a group of outcomes",
            Unit::Seconds,
            pool_wait.clone(),
        );
        let pool_in_use = Gauge::default();
        registry.register(
            "db_pool_in_use",
            "Connections of the workers' pool taken right now (at most database.pool_size)",
            pool_in_use.clone(),
        );
        let breakers_open = Gauge::default();
        registry.register(
            "channel_breakers_open",
            "Channels whose circuit breaker is open or half-open (their deliveries wait, not attempted)",
            breakers_open.clone(),
        );
        let auto_disabled = Counter::default();
        registry.register(
            "channels_auto_disabled",
            "Channels this instance disabled because every attempt failed for delivery.disable_after",
            auto_disabled.clone(),
        );
        let shards_led = Gauge::default();
        registry.register(
            "shards_led",
            "Shards whose lock this instance holds (reconciler.shards > 1; with one shard see lock_held)",
            shards_led.clone(),
        );
        let api_requests = Family::<[(&'static str, &'static str); 2], Counter>::default();
        registry.register(
            "api_requests",
            "Management API requests answered, by route (the OpenAPI operationId) and status class (2xx, 4xx, 5xx)",
            api_requests.clone(),
        );
        let api_duration = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
        registry.register_with_unit(
            "api_request_duration",
            "Time to answer a management API request, from its head read to its answer built",
            Unit::Seconds,
            api_duration.clone(),
        );
        let pruned_rows = Family::<Label, Counter>::default();
        for table in ["event", "delivery_status"] {
            let _ = pruned_rows.get_or_create(&[("table", table)]);
        }
        registry.register(
            "pruned_rows",
            "Rows removed by retention (retention.keep_finished), by table (event, delivery_status)",
            pruned_rows.clone(),
        );
        let prune_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "prune",
            "Time spent in pruning statements (retention.keep_finished)",
            Unit::Seconds,
            prune_seconds.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry,
            deliveries,
            lead_attempts,
            wakeups,
            in_flight,
            first_attempt_latency,
            deliveries_due,
            lock_held,
            worker_panics,
            pool_wait,
            pool_in_use,
            breakers_open,
            auto_disabled,
            shards_led,
            api_requests,
            api_duration,
            pruned_rows,
            prune_seconds,
        }
    }

    /// A management API request to `route` was answered `status` after
    /// `took`.
    pub fn api_request(&self, route: &'static str, status: u16, took: Duration) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.api_requests
            .get_or_create(&[("route", route), ("class", class)])
            .inc();
        self.api_duration.observe(took.as_secs_f64());
    }

    /// One pruning step removed `removed` in `took`.
    pub fn pruned(&self, removed: &crate::db::prune::Removed, took: Duration) {
        let rows = |n: i64| u64::try_from(n).unwrap_or(0);
        self.pruned_rows
            .get_or_create(&[("table", "event")])
            .inc_by(rows(removed.events));
        self.pruned_rows
            .get_or_create(&[("table", "delivery_status")])
            .inc_by(rows(removed.delivery_statuses));
        self.prune_seconds.inc_by(took.as_secs_f64());
    }

    /// `n` channels have their breaker open or half-open.
    pub fn breakers_open(&self, n: usize) {
        self.breakers_open.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A channel was auto-disabled.
    pub fn auto_disabled(&self) {
        self.auto_disabled.inc();
    }

    /// A worker waited `waited` for a pooled connection.
    pub fn pool_wait(&self, waited: Duration) {
        self.pool_wait.observe(waited.as_secs_f64());
    }

    /// This instance holds `n` shard locks.
    pub fn shards_led(&self, n: usize) {
        self.shards_led.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// `n` pooled connections are taken.
    pub fn pool_in_use(&self, n: usize) {
        self.pool_in_use.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Leading started (with `due` deliveries due, when counted).
    pub fn leading(&self, due: Option<u64>) {
        self.lock_held.set(1);
        if let Some(due) = due {
            self.due(due);
        }
    }

    /// `due` deliveries are due now.
    pub fn due(&self, due: u64) {
        self.deliveries_due
            .set(i64::try_from(due).unwrap_or(i64::MAX));
    }

    /// A delivery's outcome came back.
    pub fn finished(&self, done: &Done) {
        match &done.finished {
            Finished::Reconciled(r) => {
                let outcome = match r.outcome {
                    StatusOutcome::Delivered => "delivered",
                    StatusOutcome::RetryScheduled => "retry_scheduled",
                    StatusOutcome::Failed => "failed",
                    StatusOutcome::ChangedConcurrently => "changed_concurrently",
                    StatusOutcome::NotDue | StatusOutcome::Withheld => return,
                };
                self.deliveries.get_or_create(&[("outcome", outcome)]).inc();
                if let Some(latency) = r.first_attempt_latency {
                    self.first_attempt_latency.observe(latency.as_secs_f64());
                }
            }
            Finished::Panicked => {
                self.worker_panics.inc();
            }
            Finished::Error | Finished::Dropped => {}
        }
    }

    /// The leader woke up for `cause`.
    pub fn woke(&self, cause: WakeCause) {
        self.wakeups
            .get_or_create(&[("cause", cause.as_str())])
            .inc();
    }

    /// `n` deliveries are in flight.
    pub fn in_flight(&self, n: usize) {
        self.in_flight.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// An attempt to lead ended as `result`.
    pub fn lead_ended(&self, result: LeadResult) {
        self.lock_held.set(0);
        self.in_flight.set(0);
        self.breakers_open.set(0);
        self.shards_led.set(0);
        self.lead_attempts
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
/// answered at the last attempt to lead.
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

    /// The loop is making progress.
    pub fn beat(&self) {
        self.state().last_beat = Instant::now();
    }

    /// The database answered.
    pub fn db_ok(&self) {
        let mut s = self.state();
        s.db_problem = None;
        s.last_beat = Instant::now();
    }

    /// The database did not answer, or leading failed on it: `why`.
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
#[error(
    "cannot serve metrics on {addr} (metrics.listen): {source}{}",
    crate::http_server::bind_hint("metrics.listen", source)
)]
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

    fn reconciled(outcome: StatusOutcome, latency_ms: Option<u64>) -> Done {
        Done {
            status_id: uuid::Uuid::nil(),
            finished: Finished::Reconciled(crate::delivery::worker::Reconciled {
                outcome,
                next_attempt_at: None,
                first_attempt_latency: latency_ms.map(Duration::from_millis),
                verdict: None,
                took: None,
            }),
        }
    }

    #[test]
    fn totals_add_up_over_outcomes_and_wakeups() {
        let m = Metrics::new();
        m.leading(Some(6));
        for _ in 0..3 {
            m.finished(&reconciled(StatusOutcome::Delivered, Some(3)));
        }
        m.finished(&reconciled(StatusOutcome::RetryScheduled, None));
        m.finished(&reconciled(StatusOutcome::NotDue, None));
        m.finished(&Done {
            status_id: uuid::Uuid::nil(),
            finished: Finished::Panicked,
        });
        m.woke(WakeCause::Notified);
        m.woke(WakeCause::Notified);
        m.woke(WakeCause::Tick);
        m.in_flight(4);
        m.breakers_open(2);
        m.auto_disabled();
        m.shards_led(4);
        let text = m.encode();
        for line in [
            "notification_reconciler_shards_led 4",
            "notification_reconciler_deliveries_total{outcome=\"delivered\"} 3",
            "notification_reconciler_deliveries_total{outcome=\"retry_scheduled\"} 1",
            "notification_reconciler_deliveries_total{outcome=\"failed\"} 0",
            "notification_reconciler_wakeups_total{cause=\"notification\"} 2",
            "notification_reconciler_wakeups_total{cause=\"interval\"} 1",
            "notification_reconciler_wakeups_total{cause=\"retry_due\"} 0",
            "notification_reconciler_worker_panics_total 1",
            "notification_reconciler_deliveries_due 6",
            "notification_reconciler_deliveries_in_flight 4",
            "notification_reconciler_first_attempt_latency_seconds_count 3",
            "notification_reconciler_lock_held 1",
            "notification_reconciler_channel_breakers_open 2",
            "notification_reconciler_channels_auto_disabled_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        m.lead_ended(LeadResult::Lost);
        m.lead_ended(LeadResult::LockHeld);
        let text = m.encode();
        for line in [
            "notification_reconciler_lead_attempts_total{result=\"lost\"} 1",
            "notification_reconciler_lead_attempts_total{result=\"lock_held\"} 1",
            "notification_reconciler_lead_attempts_total{result=\"stopped\"} 0",
            "notification_reconciler_lock_held 0",
            "notification_reconciler_deliveries_in_flight 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("notification_reconciler_build_info{version=\""));
    }

    #[test]
    fn pool_waits_and_connections_in_use_are_exported() {
        let m = Metrics::new();
        m.pool_wait(Duration::from_micros(20));
        m.pool_wait(Duration::from_millis(3));
        m.pool_in_use(7);
        let text = m.encode();
        // The 20 µs wait is in the first bucket (50 µs), the 3 ms one is not.
        let first_bucket = text
            .lines()
            .find(|l| l.starts_with("notification_reconciler_db_pool_wait_seconds_bucket{"))
            .unwrap_or_default();
        assert!(first_bucket.ends_with("} 1"), "{first_bucket}\n{text}");
        for line in [
            "notification_reconciler_db_pool_wait_seconds_count 2",
            "notification_reconciler_db_pool_in_use 7",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
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
