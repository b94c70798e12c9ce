//! The loop each worker thread runs: take events from the channel until it
//! is closed, reconcile each on the worker's own pooled connection, and count
//! the outcome. A panic while reconciling one event is caught, logged with
//! the event id, counted, and the connection is discarded; the worker goes
//! on and the event stays due for the next pass.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;

use crate::db::due::DueEvent;
use crate::db::statuses::StatusWriter;
use crate::db::{Pool, PooledClient};
use crate::delivery::worker::{reconcile_event, Context, EventError};
use crate::reconcile::pass::Hooks;
use crate::reconcile::report::Tally;
use crate::state::RandomJitter;

/// Reconciles every event `events` yields, then returns.
pub fn work(
    events: impl IntoIterator<Item = DueEvent>,
    pool: &Pool,
    ctx: &Context<'_>,
    tally: &Tally,
    hooks: &dyn Hooks,
) {
    let mut conn: Option<PooledClient> = None;
    let mut jitter = RandomJitter;
    for event in events {
        reconcile_one(&event, &mut conn, pool, ctx, tally, hooks, &mut jitter);
        tally.events.fetch_add(1, Relaxed);
        // Progress, watchdog and health hang off this call: it runs on every
        // path, and a panicking hook must not take the worker down.
        if catch_unwind(AssertUnwindSafe(|| hooks.event_done(tally))).is_err() {
            log::error!("a pass hook panicked after event {}", event.id);
        }
    }
}

/// Reconciles one event on the worker's connection (taking one from the
/// pool if it has none), counting what happened.
fn reconcile_one(
    event: &DueEvent,
    conn: &mut Option<PooledClient>,
    pool: &Pool,
    ctx: &Context<'_>,
    tally: &Tally,
    hooks: &dyn Hooks,
    jitter: &mut RandomJitter,
) {
    let client = match conn {
        Some(c) => c,
        None => match pool.get() {
            Ok(c) => conn.insert(c),
            Err(e) => {
                log::error!(
                    "event {} ({}) left for the next pass: no database connection: {e}",
                    event.id,
                    event.namespace
                );
                tally.errors.fetch_add(1, Relaxed);
                return;
            }
        },
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        hooks.before_event(event);
        let writer = match client.writer.take() {
            Some(w) => w,
            None => StatusWriter::prepare(&mut client.client).map_err(|source| EventError {
                done: Vec::new(),
                source,
            })?,
        };
        let result = reconcile_event(&mut client.client, &writer, ctx, event, jitter);
        client.writer = Some(writer);
        result
    }));
    match result {
        Ok(Ok(outcomes)) => outcomes.into_iter().for_each(|o| tally.count(o)),
        Ok(Err(EventError { done, source })) => {
            done.into_iter().for_each(|o| tally.count(o));
            log::error!(
                "event {} ({}) left for the next pass: {source}",
                event.id,
                event.namespace
            );
            tally.errors.fetch_add(1, Relaxed);
            if source.is_connection_lost() {
                client.discard = true;
                *conn = None;
            }
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!(
                "worker panicked on event {} ({}); it stays due for the next pass: {what}",
                event.id,
                event.namespace
            );
            tally.panics.fetch_add(1, Relaxed);
            client.discard = true;
            *conn = None;
        }
    }
}
