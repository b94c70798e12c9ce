//! Fixtures shared by the integration tests and the benchmark: a channel and
//! a rule pointing at a receiver, events enqueued through the producer
//! function, a config for a test database, and reading statuses and the
//! leader lock back.

use std::collections::BTreeMap;
use std::time::Duration;

use notification_reconciler::config::Config;
use postgres::Client;

/// The secret every fixture channel signs with.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Namespace of the fixtures.
pub const NAMESPACE: &str = "acme";
/// Event type of the fixtures.
pub const EVENT_TYPE: &str = "invoice.paid";
/// The leader lock's key in the default config.
pub const LOCK_KEY: &str = "notification.event_handler.reconcile_lock";

/// The networks the tests' configs allow past the SSRF guard: loopback,
/// where every receiver listens (the guard refuses it by default).
pub fn loopback_networks() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .map(|n| n.parse().expect("loopback CIDR"))
        .collect()
}

/// A config for the database at `url` with `workers` workers, a tiny retry
/// schedule, short timeouts and loopback allowed, as tests want; one
/// channel may use every worker and the breaker is off (these tests deliver
/// to one channel and are about something else; tests/fairness.rs tests
/// the defaults).
pub fn config(url: &str, workers: usize) -> Config {
    let mut c = Config::for_url(url);
    c.reconciler.workers = workers;
    c.reconciler.queue_capacity = 2 * workers;
    c.database.pool_size = workers as u32 + 2;
    c.delivery.retry_schedule = vec![Duration::from_millis(10); 3];
    c.delivery.timeout = Duration::from_secs(10);
    c.delivery.connect_timeout = Duration::from_secs(2);
    c.delivery.allow_networks = loopback_networks();
    c.delivery.max_in_flight_per_channel = workers;
    c.delivery.breaker_failures = 0;
    c
}

/// Creates a channel to `url` and a rule for [`EVENT_TYPE`] assigned to it;
/// returns the channel id.
pub fn channel_and_rule(client: &mut Client, url: &str) -> uuid::Uuid {
    let channel: uuid::Uuid = client
        .query_one(
            "INSERT INTO notification.channel (namespace, name, url, signing_secret)
             VALUES ($1, 'hook', $2, $3) RETURNING id",
            &[&NAMESPACE, &url, &SECRET],
        )
        .expect("insert channel")
        .get(0);
    let rule: uuid::Uuid = client
        .query_one(
            "INSERT INTO notification.rule (namespace, name, event_type)
             VALUES ($1, 'rule', $2) RETURNING id",
            &[&NAMESPACE, &EVENT_TYPE],
        )
        .expect("insert rule")
        .get(0);
    client
        .execute(
            "INSERT INTO notification.rule_channel (rule_id, channel_id) VALUES ($1, $2)",
            &[&rule, &channel],
        )
        .expect("assign channel");
    channel
}

/// Enqueues `n` events through the producer function (payload `{"n": i}`),
/// in creation order; returns their ids.
pub fn enqueue(client: &mut Client, n: i32) -> Vec<uuid::Uuid> {
    client
        .query(
            "SELECT notification.enqueue_event($1, $2, jsonb_build_object('n', g))
             FROM generate_series(1, $3) AS g",
            &[&NAMESPACE, &EVENT_TYPE, &n],
        )
        .expect("enqueue events")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// [`channel_and_rule`] to `url`, then [`enqueue`] of `n` events; returns
/// the event ids.
pub fn seed(client: &mut Client, url: &str, n: i32) -> Vec<uuid::Uuid> {
    channel_and_rule(client, url);
    enqueue(client, n)
}

/// Creates a channel (url, secret, headers as JSON text) and a rule for
/// `event_type` assigned to it; returns the channel id.
pub fn channel_for(
    client: &mut Client,
    event_type: &str,
    url: &str,
    secret: &str,
    headers: &str,
) -> uuid::Uuid {
    channel_with_id(
        client,
        uuid::Uuid::new_v4(),
        event_type,
        url,
        secret,
        headers,
    )
}

/// [`channel_for`] with the channel id given (to place it in a shard).
pub fn channel_with_id(
    client: &mut Client,
    id: uuid::Uuid,
    event_type: &str,
    url: &str,
    secret: &str,
    headers: &str,
) -> uuid::Uuid {
    let channel: uuid::Uuid = client
        .query_one(
            "INSERT INTO notification.channel (id, namespace, name, url, signing_secret, headers)
             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb) RETURNING id",
            &[&id, &NAMESPACE, &event_type, &url, &secret, &headers],
        )
        .expect("insert channel")
        .get(0);
    client
        .execute(
            "WITH r AS (INSERT INTO notification.rule (namespace, name, event_type)
                        VALUES ($1, $2, $2) RETURNING id)
             INSERT INTO notification.rule_channel (rule_id, channel_id) SELECT id, $3 FROM r",
            &[&NAMESPACE, &event_type, &channel],
        )
        .expect("insert rule");
    channel
}

/// Enqueues `n` events of `event_type` with the payload of SQL expression
/// `payload` (may use `g`, the 1-based number); returns their ids.
pub fn emit(client: &mut Client, event_type: &str, payload: &str, n: i32) -> Vec<uuid::Uuid> {
    client
        .query(
            &format!(
                "SELECT notification.enqueue_event($1, $2, {payload})
                 FROM generate_series(1, $3) AS g"
            ),
            &[&NAMESPACE, &event_type, &n],
        )
        .expect("enqueue")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Inserts one event of `event_type` in `namespace` with the payload of SQL
/// expression `payload` and a PENDING delivery to every channel of its rule,
/// due `due_in` (an SQL interval such as `'0 s'`) after creation, bypassing
/// `enqueue_event` (its checks and its notification); returns the event id.
pub fn insert_event_directly(
    client: &mut Client,
    namespace: &str,
    event_type: &str,
    payload: &str,
    due_in: &str,
) -> uuid::Uuid {
    client
        .query_one(
            &format!(
                "WITH e AS (
                     INSERT INTO notification.event (namespace, type, rule_id, payload)
                     SELECT namespace, event_type, id, {payload} FROM notification.rule
                     WHERE namespace = $1 AND event_type = $2
                     RETURNING id, namespace, rule_id, created_at),
                 s AS (
                     INSERT INTO notification.delivery_status
                         (namespace, event_id, channel_id, event_created_at, state, next_attempt_at)
                     SELECT e.namespace, e.id, rc.channel_id, e.created_at, 'PENDING',
                            e.created_at + interval {due_in}
                     FROM e JOIN notification.rule_channel rc ON rc.rule_id = e.rule_id)
                 SELECT id FROM e"
            ),
            &[&namespace, &event_type],
        )
        .expect("insert event directly")
        .get(0)
}

/// Creates another channel to `url` and assigns it to the rule of
/// `event_type` made by [`channel_for`]; returns the channel id.
pub fn add_channel(client: &mut Client, event_type: &str, url: &str) -> uuid::Uuid {
    client
        .query_one(
            "WITH c AS (INSERT INTO notification.channel (namespace, name, url, signing_secret)
                        VALUES ($1, $2, $3, $4) RETURNING id)
             INSERT INTO notification.rule_channel (rule_id, channel_id)
             SELECT r.id, c.id FROM c, notification.rule r
             WHERE r.namespace = $1 AND r.event_type = $2
             RETURNING channel_id",
            &[&NAMESPACE, &event_type, &url, &SECRET],
        )
        .expect("add a channel to the rule")
        .get(0)
}

/// Number of delivery statuses per state.
pub fn states(client: &mut Client) -> BTreeMap<String, i64> {
    client
        .query(
            "SELECT state, count(*) FROM notification.delivery_status GROUP BY state",
            &[],
        )
        .expect("count states")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Number of delivery statuses in `state`.
pub fn count_state(client: &mut Client, state: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM notification.delivery_status WHERE state = $1",
            &[&state],
        )
        .expect("count statuses")
        .get(0)
}

/// Number of delivery statuses not yet finished (PENDING, SENDING,
/// RESENDING).
pub fn unfinished(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM notification.delivery_status
             WHERE state IN ('PENDING', 'SENDING', 'RESENDING')",
            &[],
        )
        .expect("count unfinished")
        .get(0)
}

/// Number of `channel`'s delivery statuses not yet finished.
pub fn unfinished_of(client: &mut Client, channel: uuid::Uuid) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM notification.delivery_status
             WHERE channel_id = $1 AND state IN ('PENDING', 'SENDING', 'RESENDING')",
            &[&channel],
        )
        .expect("count unfinished of a channel")
        .get(0)
}

/// The state of the (single) delivery of `event`.
pub fn state_of(client: &mut Client, event: uuid::Uuid) -> String {
    client
        .query_one(
            "SELECT state FROM notification.delivery_status WHERE event_id = $1",
            &[&event],
        )
        .expect("read state")
        .get(0)
}

/// Whether the advisory lock `key` can be taken right now from another
/// session (it is released again at once).
pub fn lock_is_free(url: &str, key: i64) -> bool {
    let mut c = Client::connect(url, postgres::NoTls).expect("connect");
    let free: bool = c
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .expect("try lock")
        .get(0);
    if free {
        c.execute("SELECT pg_advisory_unlock($1)", &[&key])
            .expect("unlock");
    }
    free
}

/// How often the receiver saw each `webhook-id`.
pub fn seen(receiver: &super::Receiver) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for id in receiver.ids() {
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

/// Which shards of [`LOCK_KEY`] split `shards` ways each process holds
/// (by pid, read from the instance name; 0: a session that is not a
/// running instance). `client` must have the schema on its search_path.
pub fn shard_holdings(client: &mut Client, shards: u32) -> BTreeMap<u32, Vec<u32>> {
    let keys = notification_reconciler::shard::shard_keys(LOCK_KEY, shards);
    let held = notification_reconciler::db::shards::holders(client, &keys).expect("shard holders");
    let mut out: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (s, h) in held.into_iter().enumerate() {
        if let Some(name) = h {
            let pid = name
                .rsplit("pid ")
                .next()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            out.entry(pid).or_default().push(s as u32);
        }
    }
    out
}

/// Checks that every event is SUCCESS and was seen at least once; returns
/// the number of duplicate requests (requests beyond the first per event).
pub fn assert_all_delivered(
    client: &mut postgres::Client,
    receiver: &super::Receiver,
    events: &[uuid::Uuid],
) -> usize {
    let by_state = states(client);
    assert_eq!(
        by_state.get("SUCCESS").copied(),
        Some(events.len() as i64),
        "every delivery SUCCESS; by state: {by_state:?}"
    );
    let seen = seen(receiver);
    let missing: Vec<_> = events
        .iter()
        .filter(|e| !seen.contains_key(&e.to_string()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events never reached the receiver, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(seen.len(), events.len(), "unexpected ids at the receiver");
    receiver.count() - seen.len()
}

/// Waits (up to `timeout`) until every delivery of `channel` is finished,
/// showing the receiver's count and `daemon`'s last log lines if they never
/// are.
pub fn wait_channel_finished(
    db: &super::TestDb,
    channel: uuid::Uuid,
    receiver: &super::Receiver,
    daemon: &super::daemon::Daemon,
    timeout: std::time::Duration,
) {
    super::daemon::wait_until(
        "every delivery of the channel",
        timeout,
        || unfinished_of(&mut db.client(), channel) == 0,
        || {
            format!(
                "{} requests\n{}",
                receiver.count(),
                super::daemon::tail(&daemon.stderr(), 30)
            )
        },
    );
}
