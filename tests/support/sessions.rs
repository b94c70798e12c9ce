//! Counting the daemon's database sessions from the outside: a thread that
//! samples `pg_stat_activity`, on a connection of its own, for the sessions
//! of one database whose `application_name` is the daemon's
//! (`notification-reconciler <role> <host> pid <pid>`), and keeps the
//! largest counts seen. The tests and the benchmark use it to check how
//! many connections the daemon opens; what the count must be is theirs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The largest counts a [`SessionSampler`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sessions {
    /// Sessions of ours at once, every role.
    pub most: i64,
    /// Worker (pool) sessions at once.
    pub most_workers: i64,
    /// Samples taken.
    pub samples: usize,
}

/// Samples until [`SessionSampler::finish`] (or drop).
pub struct SessionSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Sessions>>,
}

impl SessionSampler {
    /// Starts sampling the sessions of database `dbname` on the server at
    /// `url`, every `every`.
    pub fn start(url: &str, dbname: &str, every: Duration) -> SessionSampler {
        let mut client = postgres::Client::connect(url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("session sampler: cannot connect to {url}: {e}"));
        let dbname = dbname.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Sessions::default();
            while !stopped.load(Ordering::Relaxed) {
                let row = client
                    .query_one(
                        "SELECT count(*),
                                count(*) FILTER (WHERE application_name LIKE 'notification-reconciler worker %')
                         FROM pg_stat_activity
                         WHERE datname = $1 AND application_name LIKE 'notification-reconciler%'",
                        &[&dbname],
                    )
                    .expect("session sampler: pg_stat_activity");
                seen.most = seen.most.max(row.get(0));
                seen.most_workers = seen.most_workers.max(row.get(1));
                seen.samples += 1;
                std::thread::sleep(every);
            }
            seen
        });
        SessionSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; what it saw.
    pub fn finish(mut self) -> Sessions {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("session sampler: running")
            .join()
            .expect("session sampler: thread panicked")
    }
}

impl Drop for SessionSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
