//! Handing out: a sweep's lanes (one per channel with due work), reading
//! the next due deliveries of the lanes that ran empty, and handing out
//! what the scheduler picks (round-robin, each channel's allowance, rate
//! windows, ordered heads) over the bounded channel; and when a lane may be
//! read again (rate window, ordered recheck, breaker cool-down).

use super::*;

/// A sweep in progress: its cut-off (fixed for the sweep) and, once the
/// channels with due work are known, each one's lane.
pub(super) struct Sweep {
    pub(super) cutoff: DateTime<Utc>,
    /// `None` until the channels with due work have been looked up.
    pub(super) lanes: Option<BTreeMap<Uuid, LaneState>>,
}

/// One channel's part of a sweep.
pub(super) struct LaneState {
    /// Where its next read starts.
    pub(super) cursor: Cursor,
    /// Read, not in flight when read (those are left out at once), not
    /// handed out yet (its allowance or the free slots ran out). Only this
    /// leader hands out, so they cannot have become in flight meanwhile,
    /// nor been recorded by one of its workers.
    pub(super) queue: VecDeque<Delivery>,
    /// Its last read was short: there is nothing after `queue`.
    pub(super) exhausted: bool,
    /// An ordered channel whose head was not cleared: not read again
    /// before this.
    pub(super) recheck_at: Option<Instant>,
}

impl LaneState {
    /// A lane not read yet.
    pub(super) fn fresh() -> LaneState {
        LaneState {
            cursor: due::start_cursor(),
            queue: VecDeque::new(),
            exhausted: false,
            recheck_at: None,
        }
    }

    pub(super) fn done(&self) -> bool {
        self.exhausted && self.queue.is_empty()
    }
}

impl<'a> Main<'a> {
    /// One step of the sweep: look up the channels with due work, read
    /// the next deliveries of lanes that ran empty, let the scheduler pick
    /// round-robin within each channel's allowance, hand out. Returns
    /// whether it moved.
    pub(super) fn step(
        &mut self,
        lock: &mut LeaderLock,
        lease: &Lease,
        pager: &Pager,
        jobs: &Sender<Job>,
    ) -> Result<bool, String> {
        // A fresh look at the lock right before handing out (renews the
        // lease the workers check).
        self.watch
            .check_if_due(lock, lease, LOCK_CHECK_EVERY)
            .map_err(|e| lock_failure("handing out", &e))?;
        let Some(sweep) = self.sweep.as_mut() else {
            return Ok(false);
        };
        let cutoff = sweep.cutoff;
        let mut moved = false;
        if sweep.lanes.is_none() {
            let active = self.shards.as_ref().map(|set| (set.count(), set.active()));
            let ids = lock
                .client_mut()
                .and_then(|c| {
                    let shards = active.as_ref().map(|(k, list)| (*k, list.as_slice()));
                    pager.channels(c, cutoff, shards)
                })
                .map_err(|e| lock_failure("paging", &e))?;
            // The delivery controls of these channels (only those that
            // have any come back), with the rate windows stored last.
            let state = &self.controls;
            let (rows, stored) = lock
                .client_mut()
                .and_then(|c| {
                    let rows = controls::of_channels(c, &ids)?;
                    let stored = controls::stored_windows(c, &state.windows_missing(&rows))?;
                    Ok((rows, stored))
                })
                .map_err(|e| lock_failure("reading delivery controls", &e))?;
            let made = self
                .controls
                .refresh(&ids, rows, &stored, self.watch.db_now());
            for id in made {
                let out = self.in_flight.ids_of(&id);
                self.controls.charge_in_flight(&id, out.into_iter());
            }
            let lanes = ids.into_iter().map(|id| (id, LaneState::fresh()));
            sweep.lanes = Some(lanes.collect());
            moved = true;
        }
        let free = self.capacity.saturating_sub(self.in_flight.len());
        let lanes = sweep.lanes.get_or_insert_with(BTreeMap::new);
        let now = self.watch.db_now();
        // Borrowing beyond a share leaves the reserve free, and each active
        // channel's unused share (what its controls let it use of it).
        // Slots are workers: a delivery whose outcome waits for the group
        // commit holds none.
        let (controls, in_flight) = (&self.controls, &self.in_flight);
        let most = |id: &Uuid| {
            let c = controls.of(id, now);
            let rate = c.rate_left.map(|left| in_flight.of_channel(id) + left);
            if c.ordered {
                Some(rate.map_or(1, |m| m.min(1)))
            } else {
                rate
            }
        };
        let kept = self.channels.kept_free(now, in_flight, &most);
        let borrowable = self
            .borrow_ceiling
            .saturating_sub(in_flight.holding_workers() + kept);
        // Read for the lanes that ran empty and may send now, in round-robin
        // order, at most as many as could be served now, in one query. A
        // lane at its cap or behind an open breaker is read when it may
        // send again (a slot frees, the cool-down ends), so that a blocked
        // channel costs nothing per sweep; what timed out in it is failed
        // then.
        let after = self.last_served;
        let (channels, in_flight, controls) = (&self.channels, &self.in_flight, &self.controls);
        let limits = |id: &Uuid| lane_limits(channels, controls, in_flight, id, now);
        let svix_polls = self.svix_polls;
        let wall_now = Instant::now();
        let empty: Vec<(Uuid, Cursor)> = in_rotation(lanes, after)
            .filter(|(id, l)| {
                let (allowance, borrow) = limits(id);
                // With Svix, a channel whose rate window is used up may
                // still poll.
                let polls = svix_polls && poll_limit(channels, controls, in_flight, id, now) > 0;
                l.queue.is_empty()
                    && !l.exhausted
                    && l.recheck_at.is_none_or(|t| t <= wall_now)
                    && (allowance > 0 || polls || (borrowable > 0 && borrow > 0))
            })
            .take(free.clamp(1, self.page_size as usize))
            .map(|(id, l)| (*id, l.cursor))
            .collect();
        if !empty.is_empty() {
            // An ordered channel's lane is its head alone, in enqueue
            // order, read afresh each time; the others are read in due
            // order after their cursor.
            let (heads, ranges): (Vec<_>, Vec<_>) = empty
                .iter()
                .partition(|(id, _)| self.controls.is_ordered(id));
            let heads: Vec<Uuid> = heads.into_iter().map(|(id, _)| id).collect();
            let refreshed = !heads.is_empty() && (self.horizon_stale || self.horizon.is_none());
            if refreshed {
                let taken = lock
                    .client_mut()
                    .and_then(due::take_horizon)
                    .map_err(|e| lock_failure("taking the order horizon", &e))?;
                self.horizon = Some(taken);
                self.horizon_stale = false;
            }
            let horizon = self.horizon.as_ref().filter(|_| !heads.is_empty());
            let (read, blocked) = lock
                .client_mut()
                .and_then(|c| {
                    let mut read = if ranges.is_empty() {
                        Vec::new()
                    } else {
                        pager.read(c, cutoff, &ranges)?
                    };
                    let mut blocked = Vec::new();
                    if let Some(h) = horizon {
                        for (d, cleared) in pager.read_heads(c, cutoff, &heads, h)? {
                            if cleared {
                                read.push(d);
                            } else {
                                blocked.push((d.channel_id(), d.event.created_at));
                            }
                        }
                    }
                    Ok((read, blocked))
                })
                .map_err(|e| lock_failure("paging", &e))?;
            let mut counts: HashMap<Uuid, u32> = HashMap::new();
            for d in read {
                let channel_id = d.channel_id();
                *counts.entry(channel_id).or_default() += 1;
                self.channels.seen(&d.status.target);
                let Some(lane) = lanes.get_mut(&channel_id) else {
                    continue;
                };
                lane.cursor = d.cursor();
                // What is in flight now is left out here, not at hand-out
                // time: its outcome may arrive before the rest of the lane
                // is handed out, and this row would then be stale.
                if !self.in_flight.holds(&d.status.id) {
                    lane.queue.push_back(d);
                }
            }
            for (id, _) in &empty {
                if let Some(lane) = lanes.get_mut(id) {
                    lane.exhausted =
                        heads.contains(id) || counts.get(id).copied().unwrap_or(0) < self.page_size;
                    lane.recheck_at = None;
                }
            }
            // A head not cleared keeps its lane in the sweep, read again
            // later: at once under a new horizon when it was created after
            // this one was taken (once per read: a horizon just taken is
            // not taken again at once), else after `ORDER_RECHECK`, for the
            // transactions that may still commit earlier events to end.
            for (id, created_at) in blocked {
                let newer = !refreshed
                    && self
                        .horizon
                        .as_ref()
                        .is_some_and(|h| created_at >= h.taken_at);
                self.horizon_stale |= newer;
                if let Some(lane) = lanes.get_mut(&id) {
                    lane.exhausted = false;
                    lane.recheck_at = Some(if newer {
                        wall_now
                    } else {
                        wall_now + ORDER_RECHECK
                    });
                }
            }
            moved = true;
        }
        if matches!(self.mode, Mode::Once) {
            // `once` makes one sweep: it does not wait out a cool-down. A
            // channel whose breaker is open is left due.
            for (id, lane) in lanes.iter_mut() {
                if self.channels.is_open(id) && self.in_flight.of_channel(id) == 0 {
                    if !lane.queue.is_empty() || !lane.exhausted {
                        log::info!("channel {id}: breaker open; its due deliveries are left for the next pass");
                    }
                    lane.queue.clear();
                    lane.exhausted = true;
                }
            }
        }
        // An ordered channel's lane stays while its delivery is in flight:
        // its outcome lets the next one go in this sweep (`finished`).
        let (in_flight, controls) = (&self.in_flight, &self.controls);
        lanes.retain(|id, l| !l.done() || (controls.is_ordered(id) && in_flight.held_of(id) > 0));
        if lanes.is_empty() {
            self.end_sweep(lock, cutoff)?;
            return Ok(true);
        }
        if free == 0 {
            // Nothing can go before a slot frees (the plan would be empty).
            return Ok(moved);
        }
        // The scheduler's view: each lane's queue (whether each delivery
        // makes a request, on this host's clock, which the worker's check
        // uses too) and allowance. At most `free` deliveries go out in all,
        // so a lane's first `free` are all it could give: a longer view
        // would cost a check per queued delivery on every step (a step
        // follows every outcome) for nothing. (A lane whose allowance is
        // used up gives only deliveries that make no request, from those
        // first `free`; the rest of them go when it may send again.)
        let wall = Utc::now();
        let ids: Vec<Uuid> = lanes
            .iter()
            .filter(|(_, l)| !l.queue.is_empty())
            .map(|(id, _)| *id)
            .collect();
        let view: Vec<Lane> = ids
            .iter()
            .map(|id| {
                let (allowance, borrow) =
                    lane_limits(&self.channels, &self.controls, &self.in_flight, id, now);
                let queue = &lanes[id].queue;
                Lane {
                    channel_id: *id,
                    queue: queue
                        .iter()
                        .take(free)
                        .map(|d| makes_request(d, wall, cutoff, &self.policy))
                        .collect(),
                    allowance,
                    polls: queue
                        .iter()
                        .take(free)
                        .map(|d| is_poll(d, self.svix_polls))
                        .collect(),
                    poll_allowance: poll_limit(
                        &self.channels,
                        &self.controls,
                        &self.in_flight,
                        id,
                        now,
                    ),
                    borrow,
                    ordered: self.controls.is_ordered(id),
                }
            })
            .collect();
        let plan = scheduler::plan(&view, self.last_served, free, borrowable);
        if plan.hand_out.is_empty() {
            return Ok(moved);
        }
        self.last_served = plan.last_served;
        // Take the chosen out of their queues (highest position first, so
        // the others keep theirs), then hand out in the plan's order.
        let mut chosen: Vec<Option<(Delivery, bool)>> = Vec::new();
        let mut order: Vec<(usize, usize, usize)> = plan
            .hand_out
            .iter()
            .enumerate()
            .map(|(k, &(i, j))| (i, j, k))
            .collect();
        order.sort_by_key(|&(i, j, _)| std::cmp::Reverse((i, j)));
        chosen.resize_with(plan.hand_out.len(), || None);
        for (i, j, k) in order {
            let sends = view[i].queue[j];
            if let Some(d) = lanes.get_mut(&ids[i]).and_then(|l| l.queue.remove(j)) {
                chosen[k] = Some((d, sends));
            }
        }
        // Requests of rate-limited channels are charged to their windows,
        // and the windows stored, before any of them is handed out: a new
        // leader must know of every request this one may have started.
        let mut charged: Vec<Uuid> = Vec::new();
        for (d, sends) in chosen.iter().flatten() {
            let channel_id = d.channel_id();
            if *sends
                && !is_poll(d, self.svix_polls)
                && self.controls.charge(&channel_id, d.status.id)
                && !charged.contains(&channel_id)
            {
                charged.push(channel_id);
            }
        }
        store_windows(&self.controls, lock, &charged)?;
        let before = self.in_flight.len();
        let mut back = Vec::new();
        for (delivery, sends) in chosen.into_iter().flatten() {
            if !back.is_empty() {
                self.controls
                    .uncharge(&delivery.channel_id(), &delivery.status.id);
                back.push(delivery);
                continue;
            }
            let (status_id, channel_id) = (delivery.status.id, delivery.channel_id());
            match jobs.try_send(Job { delivery, cutoff }) {
                Ok(()) => {
                    self.in_flight.insert(status_id, channel_id);
                    if let Some(set) = self.shards.as_mut() {
                        set.handed(status_id, &channel_id);
                    }
                    if sends {
                        self.channels.handed_out(channel_id, now);
                    }
                }
                Err(TrySendError::Full(job)) => {
                    self.controls.uncharge(&channel_id, &status_id);
                    back.push(job.delivery);
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err("no worker thread is running".into())
                }
            }
        }
        // Not handed out (cannot happen while the channel holds `capacity`):
        // they go back first in their lanes.
        for d in back.into_iter().rev() {
            if let Some(lane) = lanes.get_mut(&d.channel_id()) {
                lane.queue.push_front(d);
            }
        }
        let handed = self.in_flight.len() - before;
        if handed > 0 {
            self.hooks.in_flight(self.in_flight.len());
        }
        Ok(true)
    }

    /// When the first rate-limited channel with work left in the sweep
    /// (read and waiting, or not read yet because its window was full) may
    /// send again.
    pub(super) fn next_rate_free(&self) -> Option<DateTime<Utc>> {
        let lanes = self.sweep.as_ref()?.lanes.as_ref()?;
        self.controls.next_free(lanes.keys(), self.watch.db_now())
    }

    /// When the first ordered channel whose head was not cleared is read
    /// again. One whose time has come is read at the next step, unless its
    /// other limits (rate window, breaker) hold it, whose own timers wake
    /// the leader: it is not counted, so that it cannot make a busy loop.
    pub(super) fn next_recheck(&self) -> Option<Instant> {
        let lanes = self.sweep.as_ref()?.lanes.as_ref()?;
        let now = Instant::now();
        lanes
            .values()
            .filter(|l| !l.exhausted)
            .filter_map(|l| l.recheck_at)
            .filter(|t| *t > now)
            .min()
    }

    /// When the earliest cool-down of a channel with work waiting in the
    /// sweep ends.
    pub(super) fn next_probe(&self) -> Option<DateTime<Utc>> {
        let lanes = self.sweep.as_ref()?.lanes.as_ref()?;
        self.channels.next_probe(lanes.keys())
    }

    /// The sweep reached the end of what was due by `cutoff`.
    pub(super) fn end_sweep(
        &mut self,
        lock: &mut LeaderLock,
        cutoff: DateTime<Utc>,
    ) -> Result<(), String> {
        self.sweep = None;
        match self.mode {
            Mode::Once => self.swept_all = true,
            Mode::Continuous(_) => {
                // What falls due next (a retry, an event enqueued with a
                // next_attempt_delay, a row written behind our back).
                self.arm_retry_timer(lock, cutoff)?;
            }
        }
        Ok(())
    }
}

/// Whether a worker will send a request for `d` (rather than only record a
/// FAILED: timed out, or its channel is disabled, deleted or no longer
/// assigned). `now` is this host's clock, as the worker's check uses: it
/// checks later, so what is expired now is expired then.
pub(super) fn makes_request(
    d: &Delivery,
    now: DateTime<Utc>,
    cutoff: DateTime<Utc>,
    policy: &Policy,
) -> bool {
    let t = &d.status.target;
    if t.disabled || t.deleted || !t.assigned {
        return false;
    }
    !matches!(
        state::check(&d.status.view, now, cutoff, policy),
        Check::Expired(_)
    )
}

/// Whether the visit `d` is due for is a poll of the provider rather
/// than a request to the channel's endpoint: with Svix (`svix_polls`), a
/// handed-over delivery (`SENDING`) is polled there.
pub(super) fn is_poll(d: &Delivery, svix_polls: bool) -> bool {
    svix_polls && d.status.view.state == state::State::Sending
}

/// How many polls a channel may have handed out now: its allowance
/// without the rate limit (cap, breaker, order).
pub(super) fn poll_limit(
    channels: &Channels,
    controls: &ControlState,
    in_flight: &InFlight,
    id: &Uuid,
    now: DateTime<Utc>,
) -> usize {
    let n = if controls.is_ordered(id) {
        in_flight.held_of(id)
    } else {
        in_flight.of_channel(id)
    };
    let unlimited = scheduler::Controls {
        rate_left: None,
        ..controls.of(id, now)
    };
    scheduler::limits(channels.allowance(id, now, n), 0, n, unlimited).0
}

/// A channel's `(allowance, borrow)` at `now`: its cap and breaker
/// (`health`), under its delivery controls (`scheduler::limits`).
pub(super) fn lane_limits(
    channels: &Channels,
    controls: &ControlState,
    in_flight: &InFlight,
    id: &Uuid,
    now: DateTime<Utc>,
) -> (usize, usize) {
    // An ordered channel has one in flight until its outcome is recorded
    // (the next one waits for it); the others count the workers they hold.
    let n = if controls.is_ordered(id) {
        in_flight.held_of(id)
    } else {
        in_flight.of_channel(id)
    };
    scheduler::limits(
        channels.allowance(id, now, n),
        channels.borrow(id, n),
        n,
        controls.of(id, now),
    )
}

/// The lanes in round-robin order: those after the channel `after`, then
/// the others.
pub(super) fn in_rotation(
    lanes: &mut BTreeMap<Uuid, LaneState>,
    after: Option<Uuid>,
) -> impl Iterator<Item = (&Uuid, &mut LaneState)> {
    let split = after.unwrap_or(Uuid::nil());
    let mut head: Vec<(&Uuid, &mut LaneState)> = Vec::new();
    let mut tail = Vec::new();
    for (id, lane) in lanes.iter_mut() {
        if after.is_some() && *id <= split {
            tail.push((id, lane));
        } else {
            head.push((id, lane));
        }
    }
    head.into_iter().chain(tail)
}
