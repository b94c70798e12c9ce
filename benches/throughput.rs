//! The throughput benchmark of docs/benchmarks.md: it starts a throw-away
//! PostgreSQL (the test support's cluster) and a loopback webhook receiver
//! of its own, seeds events server-side with `generate_series`, runs the
//! real reconciliation pass (`Reconciler::run_pass`, what the daemon runs)
//! and prints one table:
//!
//! 1. latency-bound scaling: 100 ms receiver, workers 1/8/64 with the
//!    default (automatic, work-conserving) per-channel cap, and 8/64 with
//!    the cap set to the workers;
//! 2. database-bound: instant receiver, workers 4/16, against the raw
//!    single-row `UPDATE` autocommit rate with as many connections;
//! 3. memory under backlog: peak RSS of a child process (this binary,
//!    re-executed with [`CHILD_FLAG`]) during the first deliveries of a huge
//!    vs a small backlog;
//! 4. idle pass: all events finished; pass duration and the due query plan;
//! 5. promptness: the daemon (`run`, the real binary) with 32 workers, a
//!    healthy receiver getting 100 events/s through `enqueue_event` while a
//!    second endpoint answering after 5 s has 16 deliveries due: enqueue to
//!    receipt p50/p90/p99/max, measured at the receiver from the enqueue
//!    time the payload carries;
//! 6. failover: two daemons, kill -9 of the leader, time to the standby's
//!    first delivery; then a silent partition of the leader (a proxy that
//!    stops forwarding, sockets open), time from the freeze to the first
//!    delivery of the standby, which fences it after `takeover_after`.
//!
//! Scenarios 5 and 6 run the binary; `NR_BENCH_BIN=path` runs another build
//! of it instead (an older version, for before/after figures; it is then
//! given no `delivery.allow_networks`, a key older builds do not know).
//! 7. HTTPS drain ([`https_drain`]): the same backlog over plain HTTP and
//!    over HTTPS (a private CA from the test support, trusted through
//!    `delivery.ca_file`): deliveries/s, CPU per delivery, TLS handshakes.
//! 8. concurrency ([`concurrency`]): the daemon binary with 64, 256 and
//!    1,024 workers on a pool of 32 connections against a receiver answering
//!    after 1 s: deliveries/s against `workers / 1 s`, the most database
//!    connections of ours seen at once, the daemon's peak RSS and its
//!    worker threads' touched stack.
//! 9. scale-out ([`scaleout`]): 1, 2 and 3 daemons with 64 workers each and
//!    `reconciler.shards = 12` against one PostgreSQL and a 100 ms
//!    receiver: deliveries/s and the speed-up over one instance; then
//!    kill -9 of one of three, time to the first delivery of its shards by
//!    another.
//! 10. fairness ([`fairness`]): the daemon binary with 16 workers and the
//!    automatic per-channel cap, a hanging endpoint with 10,000 due
//!    deliveries (`delivery.timeout` 3 s), or a slow one that answers
//!    every request with 200 after 2 s with as many, and a healthy one
//!    receiving 100 events/s for 10 s: the healthy endpoint's enqueue →
//!    receipt p50/p99 with and without the other; and EXPLAIN ANALYZE of the due
//!    queries with 1,000,000 due deliveries on one channel.
//! 11. retention (`benches/throughput/retention.rs`; `--only retention`
//!    and `--only retention-steady`): pruning a backlog of finished events
//!    (in-process steps; the daemon catching up while new work arrives, its
//!    latency with and without pruning) against what partitions would cost
//!    to adopt, and the disk of a steady state with `keep_finished = "2m"`.
//! 12. flaky endpoint ([`flaky`]): the daemon binary with 16 workers, one
//!    endpoint failing 30% of requests at random with fast 500s, 20
//!    events/s for 5 minutes, a 1–16 s retry schedule, the default breaker
//!    (5, 30 s) and then the breaker off (`breaker_failures = 0`): the
//!    share of the time the breaker was open (the metrics gauge sampled
//!    every 100 ms) and enqueue → success p50/p90.
//! 13. delivery controls (`benches/throughput/controls.rs`; `--only
//!    controls`): the rate limiter's precision at 10/s and 1,000/s, an
//!    ordered channel's rate against 1 / endpoint latency, and
//!    `enqueue_event`'s cost with 0, 1 and 10 filtered rules on the type.
//! 14. durable drain (`benches/throughput/durable.rs`; `--only durable`):
//!    20,000 deliveries to an instant receiver on a cluster of its own at
//!    PostgreSQL's defaults (fsync, synchronous commit), the daemon binary
//!    with 16 and 64 workers: deliveries/s, machine, PostgreSQL and daemon
//!    CPU per delivery, WAL bytes per delivery, and pgbench's single-row
//!    UPDATE rate with as many connections in the same run.
//! 15. durable drain over TLS (`benches/throughput/db_tls.rs`; `--only
//!    db-tls`): 20,000 deliveries over 16 channels on a durable cluster
//!    with `ssl = on`, the daemon binary with 64 workers over
//!    `sslmode=disable` and `sslmode=verify-full` alternately, three times each:
//!    deliveries/s and CPU per delivery of each, and the ratio (target
//!    ≥ 0.9×).
//!
//! `cargo bench --bench throughput` runs the full sizes (several minutes);
//! `-- --tiny` runs every scenario with small counts in well under a minute
//! and checks only that every delivery happened (what CI runs). `--only
//! latency|db|memory|idle|prompt|failover|https|concurrency|scaleout|fairness|retention|retention-catchup|retention-steady|flaky|controls|durable|db-tls`
//! runs one scenario (`--backlog N`: the retention catch-up's backlog). Timing targets are reported,
//! never asserted. The receiver is this benchmark's own
//! (`throughput/receivers.rs`: one thread per keep-alive connection, no
//! recording) so that it is never the bottleneck;
//! `--support-receiver` uses the test support's recording receiver instead,
//! to compare.
//!
//! Layout: this file parses the arguments and runs the scenarios asked
//! for; `throughput/harness.rs` (sizes, result table, passes, seeding,
//! timing), `throughput/daemon.rs` (the daemon binary) and
//! `throughput/receivers.rs` are shared; every scenario has a file of its
//! own in `throughput/`.

#[path = "throughput/concurrency.rs"]
mod concurrency;
#[path = "throughput/controls.rs"]
mod controls;
#[path = "throughput/daemon.rs"]
mod daemon;
#[path = "throughput/db.rs"]
mod db;
#[path = "throughput/db_tls.rs"]
mod db_tls;
#[path = "throughput/durable.rs"]
mod durable;
#[path = "throughput/failover.rs"]
mod failover;
#[path = "throughput/fairness.rs"]
mod fairness;
#[path = "throughput/flaky.rs"]
mod flaky;
#[path = "throughput/groups.rs"]
mod groups;
#[path = "throughput/harness.rs"]
mod harness;
#[path = "throughput/https.rs"]
mod https;
#[path = "throughput/idle.rs"]
mod idle;
#[path = "throughput/latency.rs"]
mod latency;
#[path = "throughput/memory.rs"]
mod memory;
#[path = "throughput/prompt.rs"]
mod prompt;
#[path = "throughput/receivers.rs"]
mod receivers;
#[path = "throughput/retention.rs"]
mod retention;
#[path = "throughput/scaleout.rs"]
mod scaleout;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use concurrency::concurrency;
use db::database_bound;
use failover::failover;
use fairness::{fair_explain, fairness};
use flaky::flaky;
use harness::{print_table, Sizes, CHILD_FLAG};
use https::https_drain;
use idle::idle;
use latency::latency_bound;
use memory::{memory, memory_child};
use prompt::prompt;
use scaleout::scaleout;

// What controls, db_tls, durable, groups and retention import through
// `super::`.
use daemon::BinDaemon;
use harness::{
    check_delivered, config, machine_cpu_ticks, pass, percentile, push, seed, seed_client,
    timed_enqueues_while, wait_all_recorded, Row,
};
use receivers::Loopback;
use support::Script;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == CHILD_FLAG) {
        memory_child();
        return;
    }
    let tiny = args.iter().any(|a| a == "--tiny");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let support_receiver = args.iter().any(|a| a == "--support-receiver");
    let sizes = if tiny { Sizes::tiny() } else { Sizes::full() };
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);

    let started = Instant::now();
    let mut rows = Vec::new();
    let mut plans = Vec::new();
    if wanted("latency") {
        latency_bound(&sizes, support_receiver, &mut rows);
    }
    if wanted("db") {
        database_bound(&sizes, support_receiver, &mut rows);
    }
    if wanted("memory") {
        memory(&sizes, &mut rows);
    }
    if wanted("idle") {
        plans = idle(&sizes, &mut rows);
    }
    if wanted("prompt") {
        prompt(&sizes, &mut rows);
    }
    if wanted("failover") {
        failover(&sizes, &mut rows);
    }
    if wanted("https") {
        https_drain(tiny, &mut rows);
    }
    if wanted("concurrency") {
        concurrency(tiny, &mut rows);
    }
    if wanted("scaleout") {
        scaleout(&sizes, &mut rows);
    }
    if wanted("fairness") {
        fairness(&sizes, &mut rows);
        plans.extend(fair_explain(&sizes, &mut rows));
    }
    let mut retention_sizes = if tiny {
        retention::RetentionSizes::tiny()
    } else {
        retention::RetentionSizes::full()
    };
    if wanted("retention") {
        retention::steps(&retention_sizes, &mut rows);
    }
    if wanted("retention") || wanted("retention-catchup") {
        if let Some(n) = args
            .iter()
            .position(|a| a == "--backlog")
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
        {
            retention_sizes.backlog = n;
        }
        retention::catch_up(&retention_sizes, &mut rows);
    }
    if wanted("retention-steady") {
        retention::steady(&retention_sizes, &mut rows);
    }
    if wanted("flaky") {
        flaky(&sizes, &mut rows);
    }
    if wanted("controls") {
        let sizes = if tiny {
            controls::ControlSizes::tiny()
        } else {
            controls::ControlSizes::full()
        };
        controls::run(&sizes, &mut rows);
    }
    if wanted("durable") {
        let durable_sizes = if tiny {
            durable::DurableSizes::tiny()
        } else {
            durable::DurableSizes::full()
        };
        durable::durable(&durable_sizes, &mut rows);
    }
    if wanted("groups") {
        let group_sizes = if tiny {
            groups::GroupSizes::tiny()
        } else {
            groups::GroupSizes::full()
        };
        groups::groups(&group_sizes, &mut rows);
    }
    if wanted("db-tls") {
        let sizes = if tiny {
            db_tls::DbTlsSizes::tiny()
        } else {
            db_tls::DbTlsSizes::full()
        };
        db_tls::db_tls(&sizes, &mut rows);
    }
    print_table(&rows, tiny);
    for plan in plans {
        println!("\n{plan}");
    }
    println!(
        "\ntotal {:.1} s{}",
        started.elapsed().as_secs_f64(),
        if tiny {
            " (tiny sizes: targets not judged)"
        } else {
            ""
        }
    );
}
