//! Polls in batches: one pair of Svix calls serves many handed-over
//! deliveries of one endpoint.
//!
//! A worker polling a delivery whose first outcome is not known yet asks
//! [`Batches`] for it, with the time the delivery was handed over (the row
//! tells it: `svix::map` schedules the first poll exactly
//! [`super::map::FIRST_POLL`] after the hand-over). Like the group commit of
//! outcomes, the first worker to ask for an endpoint while no read of it
//! is under way reads for every delivery of that endpoint asked for
//! meanwhile, and the others wait for that read:
//!
//! - the endpoint's messages (`GET …/endpoint/{ep}/msg`), newest first in
//!   the window from [`CLOCK_SLACK`] before the oldest hand-over of the
//!   batch to [`READ_AHEAD`] after its newest (Svix's `after`/`before`, on
//!   the message's creation time), page after page until every message of
//!   the batch is found: each message's `eventId` (our key), Svix's id and
//!   status;
//! - then the endpoint's attempts (`GET …/attempt/endpoint/{ep}`), oldest
//!   first from the oldest message found that Svix delivered, page after
//!   page until each such message's successful attempt is read (so its
//!   attempts are all there: Svix makes none after a success).
//!
//! What is found delivered, with all its attempts, is final: it is kept
//! (at most [`MAX_KEPT`] messages, for [`KEEP_FOR`]) and answers later
//! polls without a call. The window reaches past the batch on purpose: the
//! messages handed over just after it are the next ones polled. A delivery
//! the batch did not settle (not found in the window, not delivered yet,
//! failed, Svix retrying) is polled by its own calls as before
//! (`Client::observe`); so is any delivery after its first poll. A read
//! Svix did not answer fails the polls of its batch (each would only wait
//! for Svix again).
//!
//! The window is on Svix's clock and the hand-over time on ours: a clock
//! difference beyond [`CLOCK_SLACK`] makes the batch miss (the per-message
//! polls then answer; nothing is lost, only calls).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use super::map::{SvixAttempt, SvixStatus};
use super::{parse_time, Client, SvixError};

/// How far before the oldest hand-over of a batch (and after its newest)
/// its messages are looked for: Svix stamps a message before its answer
/// reaches us, and its clock may differ a little from ours.
pub const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// How far past the newest hand-over of a batch messages are read too,
/// for the polls that follow.
pub const READ_AHEAD: Duration = Duration::from_secs(1);

/// A batch covers the hand-overs of this span up to its newest; older ones
/// in it are polled one by one (one old straggler must not widen the
/// window over every message since).
pub const BATCH_SPAN: Duration = Duration::from_secs(5);

/// Pages read per list and batch, at most (250 items each).
pub const MAX_PAGES: usize = 8;

/// Delivered messages kept for later polls, at most.
pub const MAX_KEPT: usize = 4096;

/// How long a delivered message is kept for a poll to come.
pub const KEEP_FOR: Duration = Duration::from_secs(120);

/// Items per page (Svix's largest).
const PAGE: usize = 250;

/// A message Svix delivered, with every attempt it made, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Svix's message id.
    pub message_id: String,
    /// Its attempts to the endpoint, oldest first; the last is the success.
    pub attempts: Vec<SvixAttempt>,
}

/// What a batch read came to for one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Svix delivered the message; here are all its attempts.
    Delivered(Delivered),
    /// Not settled by the batch: poll it by its own calls.
    No,
    /// Svix did not answer the batch read (this error): the poll failed.
    Failed(String),
}

/// One endpoint's batches: what is kept, who waits, whether a read runs.
#[derive(Default)]
struct Endpoint {
    /// Delivered messages by `eventId`, with when they were kept.
    kept: HashMap<String, (Instant, Delivered)>,
    /// The order they were kept in, for [`MAX_KEPT`] and [`KEEP_FOR`].
    order: VecDeque<(Instant, String)>,
    /// Keys waiting for the next read, with their hand-over time.
    waiting: HashMap<String, DateTime<Utc>>,
    /// Keys a read looked for and did not settle (their workers poll them
    /// one by one), with the read's error when Svix did not answer it
    /// (their polls failed: not tried again one by one).
    missed: HashMap<String, Option<String>>,
    /// A worker is reading for this endpoint.
    reading: bool,
}

impl Endpoint {
    fn keep(&mut self, key: String, delivered: Delivered, now: Instant) {
        self.order.push_back((now, key.clone()));
        self.kept.insert(key, (now, delivered));
        while let Some((at, key)) = self.order.front() {
            let full = self.order.len() > MAX_KEPT;
            if !full && now.duration_since(*at) < KEEP_FOR {
                break;
            }
            if self.kept.get(key).is_some_and(|(k, _)| k == at) {
                self.kept.remove(key);
            }
            self.order.pop_front();
        }
    }

    /// The kept answer for `key`, forgotten once its last attempt is
    /// copied (`copied` of them already were).
    fn take(&mut self, key: &str, copied: u32) -> Option<Delivered> {
        let (_, found) = self.kept.get(key)?;
        let found = found.clone();
        if found.attempts.len() <= usize::try_from(copied).unwrap_or(usize::MAX) + 1 {
            self.kept.remove(key);
        }
        Some(found)
    }
}

/// The batches of every endpoint, shared by the workers.
#[derive(Default)]
pub struct Batches {
    endpoints: Mutex<HashMap<(String, String), Endpoint>>,
    read_done: Condvar,
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches").finish_non_exhaustive()
    }
}

/// What a poll asks of the batches.
pub struct Ask<'a> {
    /// The namespace (application uid).
    pub namespace: &'a str,
    /// The endpoint uid (channel id).
    pub endpoint: &'a str,
    /// The message's `eventId` (the delivery's idempotency key).
    pub key: &'a str,
    /// Svix attempts already copied into the record.
    pub copied: u32,
    /// When it was handed over, when the row tells (its first poll);
    /// `None`: only what is kept can answer.
    pub handed_over_at: Option<DateTime<Utc>>,
}

impl Batches {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Endpoint>> {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Svix's delivered message for `ask.key` with all its attempts, from
    /// what is kept or a batch read: [`Settled::Delivered`];
    /// [`Settled::No`] when the batch did not settle it (poll it by its own
    /// calls); [`Settled::Failed`] when Svix did not answer the batch read
    /// (the poll failed; asking again at once would wait for Svix again).
    pub fn delivered(&self, client: &Client, ask: &Ask<'_>) -> Settled {
        let id = (ask.namespace.to_owned(), ask.endpoint.to_owned());
        let mut all = self.lock();
        loop {
            let ep = all.entry(id.clone()).or_default();
            if let Some(found) = ep.take(ask.key, ask.copied) {
                return Settled::Delivered(found);
            }
            match ep.missed.remove(ask.key) {
                Some(Some(error)) => return Settled::Failed(error),
                Some(None) => return Settled::No,
                None => {}
            }
            let Some(at) = ask.handed_over_at else {
                return Settled::No;
            };
            ep.waiting.insert(ask.key.to_owned(), at);
            if ep.reading {
                all = self
                    .read_done
                    .wait(all)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // This worker reads for everyone waiting on the endpoint.
            ep.reading = true;
            let batch = std::mem::take(&mut ep.waiting);
            drop(all);
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                read(client, ask.namespace, ask.endpoint, &batch)
            }));
            all = self.lock();
            let ep = all.entry(id.clone()).or_default();
            ep.reading = false;
            let now = Instant::now();
            let mut failed = None;
            match read {
                Ok(Ok(found)) => {
                    for (key, delivered) in found {
                        ep.keep(key, delivered, now);
                    }
                }
                Ok(Err(e)) if e.is_transient() => {
                    log::debug!(
                        "Svix batch poll of endpoint {} ({}) failed: {e}",
                        ask.endpoint,
                        ask.namespace
                    );
                    failed = Some(e.to_string());
                }
                Ok(Err(e)) => log::debug!(
                    "Svix batch poll of endpoint {} ({}) refused; polling one by one: {e}",
                    ask.endpoint,
                    ask.namespace
                ),
                Err(_) => log::error!(
                    "Svix batch poll of endpoint {} ({}) panicked; polling one by one",
                    ask.endpoint,
                    ask.namespace
                ),
            }
            for key in batch.keys() {
                if !ep.kept.contains_key(key) {
                    ep.missed.insert(key.clone(), failed.clone());
                }
            }
            self.read_done.notify_all();
        }
    }
}

/// The time as Svix's query parameters take it.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// One batch read (the module's comment): the delivered messages found in
/// the window, by `eventId`, each with all its attempts.
fn read(
    client: &Client,
    namespace: &str,
    endpoint: &str,
    batch: &HashMap<String, DateTime<Utc>>,
) -> Result<Vec<(String, Delivered)>, SvixError> {
    let Some(newest) = batch.values().max().copied() else {
        return Ok(Vec::new());
    };
    let floor = newest - delta(BATCH_SPAN);
    let mut wanted: HashMap<&str, DateTime<Utc>> = batch
        .iter()
        .filter(|(_, at)| **at >= floor)
        .map(|(k, at)| (k.as_str(), *at))
        .collect();
    let oldest = batch
        .values()
        .filter(|at| **at >= floor)
        .min()
        .copied()
        .unwrap_or(newest);
    let window = format!(
        "after={}&before={}",
        stamp(oldest - delta(CLOCK_SLACK)),
        stamp(newest + delta(READ_AHEAD).max(delta(CLOCK_SLACK)))
    );
    // Messages, newest first: (eventId, Svix id, created) of the delivered.
    let mut delivered: Vec<(String, String, DateTime<Utc>)> = Vec::new();
    let asked = wanted.len();
    let messages = format!(
        "/api/v1/app/{namespace}/endpoint/{endpoint}/msg?with_content=false&limit={PAGE}&{window}"
    );
    let mut calls = read_pages(client, &messages, Towards::Older, |page| {
        let mut oldest_read: Option<DateTime<Utc>> = None;
        for m in page["data"].as_array().into_iter().flatten() {
            let created = m["timestamp"].as_str().and_then(parse_time);
            if let Some(c) = created {
                oldest_read = Some(oldest_read.map_or(c, |o| o.min(c)));
            }
            let Some(event_id) = m["eventId"].as_str() else {
                continue;
            };
            wanted.remove(event_id);
            let success =
                m["status"].as_i64().and_then(SvixStatus::from_code) == Some(SvixStatus::Success);
            let (Some(id), Some(created)) = (m["id"].as_str(), created) else {
                continue;
            };
            if success {
                delivered.push((event_id.to_owned(), id.to_owned(), created));
            }
        }
        // Newest first: a message not found above its hand-over time less
        // the slack is not in the window (not dispatched yet, or gone).
        if let Some(oldest) = oldest_read {
            wanted.retain(|_, at| *at - delta(CLOCK_SLACK) <= oldest);
        }
        !wanted.is_empty()
    })?;
    let Some(first) = delivered.iter().map(|d| d.2).min() else {
        log::debug!(
            "Svix batch read of endpoint {endpoint} ({namespace}): {asked} asked, none delivered yet, {calls} calls"
        );
        return Ok(Vec::new());
    };
    // Their attempts, oldest first from the oldest message, until each
    // one's success is read.
    let mut attempts: HashMap<String, (Vec<SvixAttempt>, bool)> = delivered
        .iter()
        .map(|d| (d.1.clone(), (Vec::new(), false)))
        .collect();
    let mut open = attempts.len();
    let after = stamp(first - TimeDelta::milliseconds(1));
    let list =
        format!("/api/v1/app/{namespace}/attempt/endpoint/{endpoint}?limit={PAGE}&after={after}");
    calls += read_pages(client, &list, Towards::Newer, |page| {
        for a in page["data"].as_array().into_iter().flatten() {
            let Some(entry) = a["msgId"].as_str().and_then(|m| attempts.get_mut(m)) else {
                continue;
            };
            let attempt = client.attempt_of(a);
            if attempt.status == SvixStatus::Success && !entry.1 {
                entry.1 = true;
                open -= 1;
            }
            entry.0.push(attempt);
        }
        open > 0
    })?;
    let found: Vec<(String, Delivered)> = delivered
        .into_iter()
        .filter_map(|(event_id, message_id, _)| {
            let (mut list, complete) = attempts.remove(&message_id)?;
            complete.then(|| {
                list.sort_by_key(|a| a.timestamp);
                (
                    event_id,
                    Delivered {
                        message_id,
                        attempts: list,
                    },
                )
            })
        })
        .collect();
    log::debug!(
        "Svix batch read of endpoint {endpoint} ({namespace}): {asked} asked, {} delivered found, {calls} calls",
        found.len()
    );
    Ok(found)
}

/// Which way a Svix list is read: its `iterator` leads to older items
/// (a list read newest first), its `prevIterator` to newer ones (read
/// oldest first, from an `after`).
#[derive(Debug, Clone, Copy)]
enum Towards {
    Older,
    Newer,
}

/// Reads the list at `path` (with its query) a page at a time, at most
/// [`MAX_PAGES`], towards `towards`, handing each page to `each`, which
/// says whether another page is wanted; returns how many calls it made.
fn read_pages(
    client: &Client,
    path: &str,
    towards: Towards,
    mut each: impl FnMut(&serde_json::Value) -> bool,
) -> Result<usize, SvixError> {
    let next = match towards {
        Towards::Older => "iterator",
        Towards::Newer => "prevIterator",
    };
    let mut iterator: Option<String> = None;
    let mut calls = 0;
    for _ in 0..MAX_PAGES {
        calls += 1;
        let page_path = match &iterator {
            Some(it) => format!("{path}&iterator={it}"),
            None => path.to_owned(),
        };
        let Some(page) = client.get_found(&page_path)? else {
            break;
        };
        let more = each(&page);
        match (page["done"].as_bool(), page[next].as_str()) {
            (Some(false), Some(it)) if more => iterator = Some(it.to_owned()),
            _ => break,
        }
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(n: usize) -> Delivered {
        let attempt = SvixAttempt {
            timestamp: DateTime::<Utc>::UNIX_EPOCH,
            http_status: 200,
            response: String::new(),
            duration_ms: 1,
            url: String::new(),
            status: SvixStatus::Success,
        };
        Delivered {
            message_id: "msg".into(),
            attempts: vec![attempt; n],
        }
    }

    #[test]
    fn kept_answers_are_forgotten_once_copied_and_bounded() {
        let mut ep = Endpoint::default();
        let now = Instant::now();
        ep.keep("a".into(), delivered(1), now);
        ep.keep("b".into(), delivered(2), now);
        assert_eq!(ep.take("a", 0), Some(delivered(1)));
        assert_eq!(ep.take("a", 0), None, "one attempt: forgotten once copied");
        assert!(ep.take("b", 0).is_some());
        assert!(
            ep.take("b", 1).is_some(),
            "the second attempt is still to copy"
        );
        assert_eq!(ep.take("b", 1), None);
        for i in 0..MAX_KEPT + 10 {
            ep.keep(format!("k{i}"), delivered(1), now);
        }
        assert!(ep.kept.len() <= MAX_KEPT);
        assert!(ep.take("k0", 0).is_none(), "the oldest went first");
        assert!(ep.take(&format!("k{}", MAX_KEPT + 9), 0).is_some());
        let later = now + KEEP_FOR + Duration::from_secs(1);
        ep.keep("new".into(), delivered(1), later);
        assert_eq!(ep.kept.len(), 1, "what outlived KEEP_FOR is dropped");
    }
}
