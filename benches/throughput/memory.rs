//! Scenario 3, memory under backlog (`--only memory`): peak RSS of a child
//! process (this binary, re-executed with `CHILD_FLAG`) during the first
//! deliveries of a huge vs a small backlog.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use notification_reconciler::reconcile::hooks::Hooks;
use notification_reconciler::reconcile::job::Done;
use notification_reconciler::reconcile::leader::{PassOutcome, Reconciler};
use notification_reconciler::reconcile::report::Tally;

use super::harness::{config, push, seed, Row, Sizes, CHILD_FLAG};
use super::receivers::AnyReceiver;
use super::support;

/// Scenario 3: peak RSS of a child running the pass for the first
/// deliveries of a big and a small backlog.
pub(crate) fn memory(sizes: &Sizes, rows: &mut Vec<Row>) {
    let receiver = AnyReceiver::start(Duration::ZERO, false);
    let mut peaks = Vec::new();
    for &backlog in &sizes.backlogs {
        let db = support::migrated_db();
        seed(&db, backlog, "PENDING", &receiver.url());
        let t = Instant::now();
        let out = Command::new(std::env::current_exe().expect("bench: own executable path"))
            .arg(CHILD_FLAG)
            .env("NR_BENCH_URL", &db.url)
            .env("NR_BENCH_LIMIT", sizes.memory_deliveries.to_string())
            .env("NR_BENCH_WORKERS", sizes.memory_workers.to_string())
            .output()
            .expect("bench: cannot run the memory child");
        let secs = t.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "bench: memory child failed: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |name: &str| -> u64 {
            stdout
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .unwrap_or_else(|| panic!("bench: child printed no {name}: {stdout}"))
        };
        let (delivered, hwm_kib) = (field("delivered"), field("vmhwm_kib"));
        let expected = sizes.memory_deliveries.min(backlog);
        assert!(
            delivered >= expected,
            "memory: child delivered {delivered} of {expected}"
        );
        let mib = hwm_kib as f64 / 1024.0;
        peaks.push(mib);
        push(
            rows,
            Row {
                scenario: "3 memory",
                setting: format!(
                    "backlog {backlog}, first {} deliveries, {} workers",
                    sizes.memory_deliveries, sizes.memory_workers
                ),
                result: format!("peak RSS {mib:.1} MiB ({delivered} delivered, {secs:.1} s)"),
                target: if backlog == sizes.backlogs[0] {
                    "≤ 64 MiB".into()
                } else {
                    String::new()
                },
                met: (backlog == sizes.backlogs[0]).then_some(mib <= 64.0),
            },
        );
    }
    let ratio = peaks[0] / peaks[1];
    push(
        rows,
        Row {
            scenario: "3 memory",
            setting: format!("ratio {} / {}", sizes.backlogs[0], sizes.backlogs[1]),
            result: format!("{ratio:.2}"),
            target: "≤ 1.5".into(),
            met: Some(ratio <= 1.5),
        },
    );
}

/// The memory child: runs one pass until `NR_BENCH_LIMIT` events are done,
/// then prints what it delivered and its peak RSS.
pub(crate) fn memory_child() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("child: {name} unset"));
    let limit: u64 = var("NR_BENCH_LIMIT").parse().expect("child: limit");
    let workers: usize = var("NR_BENCH_WORKERS").parse().expect("child: workers");
    let stop = AtomicBool::new(false);
    let hooks = StopAfter { limit, stop: &stop };
    let mut reconciler =
        Reconciler::new(&config(&var("NR_BENCH_URL"), workers)).expect("child: reconciler");
    let report = match reconciler.run_pass(&stop, &hooks).expect("child: pass") {
        PassOutcome::Ran(report) => report,
        PassOutcome::LockHeld => panic!("child: lock held"),
    };
    drop(reconciler);
    let status = std::fs::read_to_string("/proc/self/status").expect("child: /proc/self/status");
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .expect("child: VmHWM line");
    println!("delivered={} vmhwm_kib={hwm}", report.delivered);
}

/// Stops the pass once `limit` events are done.
pub(crate) struct StopAfter<'a> {
    pub(crate) limit: u64,
    pub(crate) stop: &'a AtomicBool,
}

impl Hooks for StopAfter<'_> {
    fn finished(&self, _done: &Done, tally: &Tally) {
        if tally.deliveries >= self.limit {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}
