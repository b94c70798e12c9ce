//! LISTEN on the schema's wake channel (`wake_channel()`, migration 0002),
//! on a connection of its own, forwarding each notification into a
//! crossbeam channel so that the leader's main thread can `select!` over
//! everything it waits for. The lock connection stays the only one that
//! holds locks.
//!
//! Notifications only wake the leader: a lost one costs at most one
//! `interval` (the leader's safety-net sweep). When the listening connection
//! breaks (server restart, `pg_terminate_backend`), the listener reconnects
//! every [`RECONNECT_EVERY`] and, once listening again, sends
//! [`Wake::Listening`]: whatever was notified in the gap is found by the
//! sweep that follows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use postgres::fallible_iterator::FallibleIterator;

use crate::config::DatabaseConfig;
use crate::db::{self, DbError};
use crate::lock;

/// Why the listener woke the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A notification arrived (an enqueue or a resend committed).
    Notified,
    /// The listener is (again) listening: notifications may have been lost.
    Listening,
}

/// How often the listener looks at the stop flag while waiting.
const POLL: Duration = Duration::from_millis(200);

/// How soon a broken listening connection is reopened.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// Listens until `stop` is set, sending wake-ups into `wakes` (a full channel
/// already holds a wake-up, so extra ones are dropped: they coalesce).
pub fn run(cfg: &DatabaseConfig, stop: &AtomicBool, wakes: &Sender<Wake>) {
    let mut broken_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        match listen(cfg) {
            Ok(mut client) => {
                if let Some(since) = broken_since.take() {
                    log::info!(
                        "listening for wake-ups again after {} ms",
                        since.elapsed().as_millis()
                    );
                }
                let _ = wakes.try_send(Wake::Listening);
                if let Err(e) = forward(&mut client, stop, wakes) {
                    log::warn!(
                        "the wake-up listener's connection broke, reconnecting (deliveries stay prompt only through reconciler.interval meanwhile): {e}"
                    );
                    broken_since = Some(Instant::now());
                }
            }
            Err(e) => {
                if broken_since.is_none() {
                    log::warn!(
                        "cannot listen for wake-ups, retrying every {}s: {e}",
                        RECONNECT_EVERY.as_secs()
                    );
                    broken_since = Some(Instant::now());
                }
            }
        }
        let until = Instant::now() + RECONNECT_EVERY;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Opens the listening connection.
fn listen(cfg: &DatabaseConfig) -> Result<postgres::Client, DbError> {
    let mut client = db::connect(cfg, &lock::app_name("listen"))?;
    let channel: String = client
        .query_one("SELECT quote_ident(wake_channel())", &[])
        .map_err(DbError::query("finding the wake channel"))?
        .get(0);
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .map_err(DbError::query("listening for wake-ups"))?;
    Ok(client)
}

/// Forwards notifications until `stop` (Ok) or the connection breaks (Err).
fn forward(
    client: &mut postgres::Client,
    stop: &AtomicBool,
    wakes: &Sender<Wake>,
) -> Result<(), String> {
    while !stop.load(Ordering::Relaxed) {
        let next = client.notifications().timeout_iter(POLL).next();
        match next {
            Ok(Some(_)) => {
                let _ = wakes.try_send(Wake::Notified);
            }
            Err(e) => return Err(e.to_string()),
            Ok(None) if client.is_closed() => return Err("the connection is closed".into()),
            Ok(None) => {}
        }
    }
    Ok(())
}
