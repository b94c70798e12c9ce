//! The leader's timers and its writes on the lock connection: the
//! interval tick (a fresh sweep, the due count, the interval's report), the
//! earliest known retry, the leader row's heartbeat (the lease a standby
//! reads), the channel rows the outcomes asked for, and the shard balance.

use super::*;

impl<'a> Main<'a> {
    /// `run`'s timers: the interval tick (a sweep, the due count and retry
    /// timer from the database, the interval's report, parked deliveries
    /// released), the earliest known retry, and the leader row's heartbeat.
    pub(super) fn timers(&mut self, lock: &mut LeaderLock) -> Result<(), String> {
        if Instant::now() >= self.next_tick {
            self.next_tick = Instant::now() + self.interval;
            let cutoff = self.cutoff_now();
            let client = lock
                .client_mut()
                .map_err(|e| lock_failure("the interval sweep", &e))?;
            let due = self
                .count_due(client, cutoff)
                .map_err(|e| lock_failure("counting due deliveries", &e))?;
            self.arm_retry_timer(lock, cutoff)?;
            let (since, since_at) = self.window_started;
            let report = Report::new(&self.window, since_at, since.elapsed());
            if report.deliveries_seen > 0 {
                log::info!("{}", report.summary("leading"));
            } else {
                log::debug!("{}", report.summary("leading"));
            }
            self.hooks.interval(&report, due.max(0) as u64);
            self.window = Tally::default();
            self.window_started = (Instant::now(), Utc::now());
            self.in_flight.unpark_all();
            self.channels.prune(self.watch.db_now(), &self.in_flight);
            self.controls.prune(self.watch.db_now());
            self.wake(WakeCause::Tick);
        }
        if self.next_retry.is_some_and(|t| t <= self.watch.db_now()) {
            self.next_retry = None;
            self.wake(WakeCause::RetryDue);
        }
        self.shard_timers(lock)?;
        self.beat_row(lock)
    }

    /// The leader row's heartbeat, every [`HEARTBEAT_EVERY`] whether or not
    /// anything changed: it is the lease a standby reads (`fence`).
    pub(super) fn beat_row(&mut self, lock: &mut LeaderLock) -> Result<(), String> {
        if self.heartbeat.0.elapsed() < HEARTBEAT_EVERY {
            return Ok(());
        }
        let key = lock.key();
        let snapshot = self.channels.snapshot(&self.in_flight);
        let n = self.in_flight.len();
        match &self.shards {
            Some(set) => set.heartbeat(lock, &snapshot),
            None => lock
                .client_mut()
                .and_then(|c| leaders::heartbeat(c, key, n, &snapshot)),
        }
        .map_err(|e| lock_failure("updating the leader record", &e))?;
        self.heartbeat = (Instant::now(), n);
        Ok(())
    }

    /// Writes what the channels' health asked for: the start and end of a
    /// run of failures, and auto-disable.
    pub(super) fn write_channels(&mut self, lock: &mut LeaderLock) -> Result<(), String> {
        for w in std::mem::take(&mut self.writes) {
            let client = lock
                .client_mut()
                .map_err(|e| lock_failure("updating a channel", &e))?;
            let failed = |e: DbError| lock_failure("updating a channel", &e);
            match w {
                Write::StartFailing { channel_id, since } => {
                    channels::start_failing(client, channel_id, since).map_err(failed)?
                }
                Write::StopFailing { channel_id } => {
                    channels::stop_failing(client, channel_id).map_err(failed)?
                }
                Write::Disable {
                    channel_id,
                    since,
                    reason,
                } => {
                    if channels::auto_disable(client, channel_id, since, &reason).map_err(failed)? {
                        log::warn!(
                            "channel {channel_id} disabled: {reason}; after fixing the endpoint, `channel enable {channel_id}`, then `resend --channel {channel_id} --since TIME`"
                        );
                        self.hooks.auto_disabled(channel_id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Sharded: the balance round when due, graces that ended, drained
    /// shards unlocked; a shard taken restarts the sweep, one given up
    /// leaves the sweep's unread deliveries.
    pub(super) fn shard_timers(&mut self, lock: &mut LeaderLock) -> Result<(), String> {
        let Some(set) = self.shards.as_mut() else {
            return Ok(());
        };
        let before = set.held();
        let changes = if set.round_due() {
            set.round(lock)
        } else {
            set.settle(lock)
        }
        .map_err(|e| lock_failure("balancing the shards", &e))?;
        let held = set.held();
        if changes.deactivated {
            // The lanes of channels of a shard given up leave the sweep.
            if let Some(lanes) = self.sweep.as_mut().and_then(|s| s.lanes.as_mut()) {
                lanes.retain(|channel_id, _| set.hands_out(channel_id));
            }
            self.controls.retain(|channel_id| set.hands_out(channel_id));
        }
        if held != before {
            self.hooks.shards_led(held);
        }
        if changes.activated {
            // A fresh sweep at once, not after the one in progress: the new
            // shard's deliveries may lie behind its cursor. What the old one
            // read and did not hand out is read again (nothing of it is in
            // flight).
            self.hooks.woke(WakeCause::Start);
            self.start_sweep(self.cutoff_now());
        }
        Ok(())
    }

    /// Unfinished deliveries due by `cutoff` (of the shards led).
    pub(super) fn count_due(
        &self,
        client: &mut postgres::Client,
        cutoff: DateTime<Utc>,
    ) -> Result<i64, DbError> {
        match &self.shards {
            Some(set) => set.count_due(client, cutoff),
            None => due::count_due(client, cutoff),
        }
    }

    /// Sets the retry timer to the earliest unfinished delivery not due by
    /// `cutoff`, if that is sooner than what it holds.
    pub(super) fn arm_retry_timer(
        &mut self,
        lock: &mut LeaderLock,
        cutoff: DateTime<Utc>,
    ) -> Result<(), String> {
        let next = lock
            .client_mut()
            .and_then(|c| match &self.shards {
                Some(set) => set.next_due_after(c, cutoff),
                None => due::next_due_after(c, cutoff),
            })
            .map_err(|e| lock_failure("finding the next due delivery", &e))?;
        self.note_retry(next);
        Ok(())
    }

    /// Keeps the earlier of the timer and `next_attempt_at` (plus the delay).
    pub(super) fn note_retry(&mut self, next_attempt_at: Option<DateTime<Utc>>) {
        if let Some(t) = next_attempt_at.map(|t| t + self.delay) {
            self.next_retry = Some(self.next_retry.map_or(t, |n| n.min(t)));
        }
    }

    /// The cut-off of a sweep starting now, on the database's clock.
    pub(super) fn cutoff_now(&self) -> DateTime<Utc> {
        self.watch.db_now() - self.delay
    }

    pub(super) fn start_sweep(&mut self, cutoff: DateTime<Utc>) {
        self.sweep = Some(Sweep {
            cutoff,
            lanes: None,
        });
    }

    /// A reason to sweep: a fresh sweep starts now (one in progress is
    /// dropped: what it read but did not hand out is read again), so work
    /// that fell due is found at once, however long a backlog the sweep in
    /// progress was working through.
    pub(super) fn wake(&mut self, cause: WakeCause) {
        self.hooks.woke(cause);
        self.start_sweep(self.cutoff_now());
    }
}
