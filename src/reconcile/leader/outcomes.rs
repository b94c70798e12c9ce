//! What comes back from the workers: an answered attempt (its channel's
//! slot freed, its verdict to the breaker) and a finished delivery (its
//! registry entry freed, counted, its retry noted, an ordered channel's
//! next one let go).

use super::*;

impl<'a> Main<'a> {
    /// An ordered channel's delivery came back: its next one may go now,
    /// in the sweep in progress (its lane is read again), or, when none is
    /// in progress, in a fresh one (`run`; `once` made its one sweep).
    pub(super) fn next_in_order(&mut self, channel_id: Uuid) {
        match self.sweep.as_mut() {
            Some(sweep) => {
                if let Some(lanes) = sweep.lanes.as_mut() {
                    let lane = lanes.entry(channel_id).or_insert_with(LaneState::fresh);
                    lane.exhausted = false;
                }
            }
            None => {
                if matches!(self.mode, Mode::Continuous(_)) {
                    self.start_sweep(self.cutoff_now());
                }
            }
        }
    }

    /// A worker's report: free its slot, count it, note its retry time. A
    /// delivery whose reconcile failed (database error, panic) stays out of
    /// the sweeps until the next tick, so that a poisoned one is not retried
    /// on every wake-up; one changed concurrently (an operator's resend while
    /// it was in flight) is swept again at once.
    pub(super) fn back(&mut self, back: Back) {
        match back {
            // Its worker is free: the channel's slot too (it stays held, so
            // not read again, until its outcome is recorded). Its verdict
            // counts for the breaker at once, before the slot is reused.
            Back::Answered { status_id, verdict } => {
                let channel_id = self.in_flight.answered(&status_id);
                if let (Some(channel_id), Some(verdict)) = (channel_id, verdict) {
                    let open = self.channels.open_count();
                    let write = self
                        .channels
                        .record(channel_id, verdict, self.watch.db_now());
                    self.writes.extend(write);
                    if open != self.channels.open_count() {
                        self.hooks.breakers_open(self.channels.open_count());
                    }
                }
            }
            Back::Done(done) => self.finished(done),
        }
    }

    pub(super) fn finished(&mut self, done: Done) {
        let channel_id = self.in_flight.remove(&done.status_id);
        if let Some(id) = channel_id {
            self.hooks.in_flight(self.in_flight.len());
            self.controls
                .finished(&id, &done.status_id, self.watch.db_now());
            if self.controls.is_ordered(&id) {
                self.next_in_order(id);
            }
        }
        if let Some(set) = self.shards.as_mut() {
            set.finished(&done.status_id);
        }
        self.tally.count(&done);
        self.window.count(&done);
        match &done.finished {
            Finished::Reconciled(r) => {
                // Its verdict fed the breaker when it was answered.
                self.note_retry(r.next_attempt_at);
                if r.outcome == StatusOutcome::ChangedConcurrently
                    && matches!(self.mode, Mode::Continuous(_))
                {
                    self.wake(WakeCause::Changed);
                }
            }
            Finished::Error | Finished::Panicked => {
                if matches!(self.mode, Mode::Continuous(_)) {
                    self.in_flight.park(done.status_id);
                }
            }
            Finished::Dropped => {}
        }
        self.hooks.finished(&done, &self.tally);
    }
}
