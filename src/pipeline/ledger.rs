//! Where each partition stands between the source and the commit: how far records were handed to
//! the pipeline, how far they are done (every record below stored or dead-lettered), and what is
//! done but not yet committed.
//!
//! A commit refused during a rebalance is kept here and retried once the group has settled. When
//! the group takes partitions away, [`OffsetLedger::drain`] waits (up to a deadline) until what
//! was handed out of them is done, so their last positions are committed before the new owner
//! starts: it then redoes nothing. Sources share this one ledger type, so the Kafka adapter and
//! the in-memory source keep the same rules.
//!
//! A drain waits only for work already under way. From its start the partitions are *leaving*:
//! the pipeline starts nothing more of them ([`OffsetLedger::is_leaving`]) and gives back the
//! records it will not do ([`OffsetLedger::give_back`]), which the new owner then does once.
//! The group waits for the slowest member's drain, and a member waiting to rejoin cannot commit
//! meanwhile (its commits queue behind its pending JoinGroup on the coordinator's connection), so
//! a drain as short as the uploads in progress keeps every rebalance short.

use super::ports::{Partition, Positions};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct OffsetLedger {
    state: Mutex<State>,
    /// Signalled whenever a position is done or given back, or the ledger is closed.
    moved: Condvar,
    /// Whether any partition is leaving: the pipeline's per-record check costs no lock while
    /// none is.
    any_leaving: AtomicBool,
}

#[derive(Default)]
struct State {
    /// One past the last record handed to the pipeline, per partition.
    handed: Positions,
    /// One past the last record done, per partition (kept after it is committed).
    finished: Positions,
    /// Done but not yet committed.
    pending: Positions,
    /// The pipeline has stopped: nothing handed will finish any more.
    closed: bool,
    /// Partitions being drained or already let go: nothing more of them is started.
    leaving: HashSet<Partition>,
    /// Per leaving partition, the first record the pipeline gave back: nothing from it on is done
    /// here, so no position past it is recorded, whichever batch reports it.
    given_back: Positions,
}

/// What a drain found for the partitions being handed over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// The last done position of each partition that had any: what to commit before letting go.
    pub finished: Positions,
    /// Partitions whose handed records were not all done by the deadline: their new owner redoes
    /// those records (idempotently).
    pub unfinished: Vec<Partition>,
}

fn raise(map: &mut Positions, positions: &Positions) {
    for (tp, next) in positions {
        let e = map.entry(tp.clone()).or_insert(*next);
        *e = (*e).max(*next);
    }
}

impl OffsetLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("ledger lock")
    }

    /// Notes that the records below `positions` were handed to the pipeline.
    pub fn handed(&self, positions: &Positions) {
        raise(&mut self.lock().handed, positions);
    }

    /// Records "everything below `next` is done" for each partition; never moves backwards, and
    /// never past a record given back (a later batch may have done records of the partition
    /// that an earlier one gave back).
    pub fn record(&self, positions: &Positions) {
        let mut state = self.lock();
        let clamped;
        let positions = if state.given_back.is_empty() {
            positions
        } else {
            clamped = positions
                .iter()
                .map(|(tp, next)| {
                    let limit = state.given_back.get(tp).copied().unwrap_or(i64::MAX);
                    (tp.clone(), (*next).min(limit))
                })
                .collect();
            &clamped
        };
        raise(&mut state.pending, positions);
        raise(&mut state.finished, positions);
        drop(state);
        self.moved.notify_all();
    }

    /// The pending positions of the partitions `owned` accepts. Entries of partitions we no
    /// longer hold are dropped: their new owner replays from the last commit, idempotently.
    pub fn pending(&self, owned: impl Fn(&Partition) -> bool) -> Positions {
        let mut state = self.lock();
        state.pending.retain(|tp, _| owned(tp));
        state.pending.clone()
    }

    /// Forgets positions once committed (unless they moved on meanwhile).
    pub fn committed(&self, positions: &Positions) {
        let mut state = self.lock();
        for (tp, at) in positions {
            if state.pending.get(tp).is_some_and(|current| current <= at) {
                state.pending.remove(tp);
            }
        }
    }

    /// Partitions newly given to this member start with a clean slate.
    pub fn assigned(&self, partitions: &[Partition]) {
        let mut state = self.lock();
        for tp in partitions {
            state.handed.remove(tp);
            state.finished.remove(tp);
            state.pending.remove(tp);
            state.leaving.remove(tp);
            state.given_back.remove(tp);
        }
        self.any_leaving
            .store(!state.leaving.is_empty(), Ordering::Relaxed);
    }

    /// Whether `tp` is being taken away from this member, or was: work on its records that has
    /// not started should not start.
    pub fn is_leaving(&self, topic: &str, partition: i32) -> bool {
        self.any_leaving.load(Ordering::Relaxed)
            && self
                .lock()
                .leaving
                .contains(&(topic.to_string(), partition))
    }

    /// The pipeline will not do the records of a leaving partition from `from` on: a drain waits
    /// no longer for them, and their new owner does them. Ignored for a partition that is not
    /// leaving.
    pub fn give_back(&self, tp: &Partition, from: i64) {
        let mut state = self.lock();
        if !state.leaving.contains(tp) {
            return;
        }
        if let Some(handed) = state.handed.get_mut(tp) {
            *handed = (*handed).min(from);
        }
        let first = state.given_back.entry(tp.clone()).or_insert(from);
        *first = (*first).min(from);
        drop(state);
        self.moved.notify_all();
    }

    /// The run is stopping: every partition handed out so far is leaving, so the pipeline starts
    /// nothing more and what it gives back is never committed past.
    pub fn leave_all(&self) {
        let mut state = self.lock();
        let all: Vec<Partition> = state.handed.keys().cloned().collect();
        self.start_leaving(&mut state, &all);
    }

    fn start_leaving(&self, state: &mut State, partitions: &[Partition]) {
        state.leaving.extend(partitions.iter().cloned());
        self.any_leaving.store(true, Ordering::Relaxed);
    }

    /// The pipeline has stopped: drains stop waiting for work that will never finish.
    pub fn close(&self) {
        self.lock().closed = true;
        self.moved.notify_all();
    }

    /// Whether the pipeline has stopped (see [`OffsetLedger::close`]).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Whether everything handed out of `partitions` is done (or the pipeline has stopped).
    fn settled(state: &State, partitions: &[Partition]) -> bool {
        state.closed || partitions.iter().all(|tp| Self::is_settled(state, tp))
    }

    fn is_settled(state: &State, tp: &Partition) -> bool {
        match state.handed.get(tp) {
            None => true,
            Some(handed) => state.finished.get(tp).is_some_and(|done| done >= handed),
        }
    }

    /// Ends this member's hold on `partitions` and says what to commit for them.
    fn release(state: &mut State, partitions: &[Partition]) -> Drained {
        let mut drained = Drained::default();
        for tp in partitions {
            if !Self::is_settled(state, tp) {
                drained.unfinished.push(tp.clone());
            }
            if let Some(done) = state.finished.remove(tp) {
                drained.finished.insert(tp.clone(), done);
            }
            state.handed.remove(tp);
            state.pending.remove(tp);
        }
        drained
    }

    /// For partitions being taken away: blocks until every record handed out of them is done,
    /// or `within` has passed, then forgets them. Called from the group's rebalance callback,
    /// which runs on a thread of its own while the pipeline goes on finishing its batches.
    pub fn drain(&self, partitions: &[Partition], within: Duration) -> Drained {
        let deadline = Instant::now() + within;
        let mut state = self.lock();
        self.start_leaving(&mut state, partitions);
        while !Self::settled(&state, partitions) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.moved.wait_timeout(state, left).expect("ledger lock").0;
        }
        Self::release(&mut state, partitions)
    }

    /// [`drain`](Self::drain) without blocking: `None` while records handed out of `partitions`
    /// are still in flight, else what `drain` would return. For sources that wait asynchronously.
    pub fn try_drain(&self, partitions: &[Partition]) -> Option<Drained> {
        let mut state = self.lock();
        self.start_leaving(&mut state, partitions);
        Self::settled(&state, partitions).then(|| Self::release(&mut state, partitions))
    }

    /// Forgets `partitions` whatever their state: the deadline of an asynchronous drain passed.
    pub fn abandon(&self, partitions: &[Partition]) -> Drained {
        let mut state = self.lock();
        self.start_leaving(&mut state, partitions);
        Self::release(&mut state, partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(entries: &[(&str, i32, i64)]) -> Positions {
        entries
            .iter()
            .map(|(t, p, o)| ((t.to_string(), *p), *o))
            .collect()
    }

    #[test]
    fn a_position_never_moves_backwards() {
        let ledger = OffsetLedger::default();
        ledger.record(&at(&[("t", 0, 10)]));
        ledger.record(&at(&[("t", 0, 5)]));
        assert_eq!(ledger.pending(|_| true), at(&[("t", 0, 10)]));
    }

    #[test]
    fn positions_of_partitions_no_longer_owned_are_forgotten() {
        let ledger = OffsetLedger::default();
        ledger.record(&at(&[("t", 0, 10), ("t", 1, 7)]));
        assert_eq!(ledger.pending(|tp| tp.1 == 0), at(&[("t", 0, 10)]));
        assert_eq!(ledger.pending(|_| true), at(&[("t", 0, 10)]));
    }

    #[test]
    fn a_commit_forgets_only_what_did_not_move_on_meanwhile() {
        let ledger = OffsetLedger::default();
        ledger.record(&at(&[("t", 0, 10), ("t", 1, 7)]));
        let sent = ledger.pending(|_| true);
        ledger.record(&at(&[("t", 1, 9)]));
        ledger.committed(&sent);
        assert_eq!(ledger.pending(|_| true), at(&[("t", 1, 9)]));
    }

    #[test]
    fn a_drain_waits_until_what_was_handed_out_is_done_then_says_where_to_commit() {
        let ledger = std::sync::Arc::new(OffsetLedger::default());
        ledger.handed(&at(&[("t", 0, 20), ("t", 1, 8)]));
        ledger.record(&at(&[("t", 0, 10)]));
        let finisher = {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                ledger.record(&at(&[("t", 0, 20), ("t", 1, 8)]));
            })
        };
        let started = Instant::now();
        let drained = ledger.drain(&[("t".into(), 0)], Duration::from_secs(10));
        finisher.join().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            drained,
            Drained {
                finished: at(&[("t", 0, 20)]),
                unfinished: vec![]
            }
        );
        // Partition 0 is forgotten; partition 1 is still this member's.
        assert_eq!(ledger.pending(|_| true), at(&[("t", 1, 8)]));
    }

    #[test]
    fn a_drain_past_its_deadline_lets_go_of_what_is_unfinished() {
        let ledger = OffsetLedger::default();
        ledger.handed(&at(&[("t", 0, 20)]));
        ledger.record(&at(&[("t", 0, 10)]));
        let drained = ledger.drain(&[("t".into(), 0)], Duration::from_millis(30));
        assert_eq!(drained.finished, at(&[("t", 0, 10)]));
        assert_eq!(drained.unfinished, vec![("t".to_string(), 0)]);
        assert_eq!(ledger.pending(|_| true), Positions::new());
    }

    #[test]
    fn a_closed_ledger_does_not_wait_for_work_that_will_never_finish() {
        let ledger = OffsetLedger::default();
        ledger.handed(&at(&[("t", 0, 20)]));
        ledger.close();
        let started = Instant::now();
        let drained = ledger.drain(&[("t".into(), 0)], Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(drained.finished, Positions::new());
    }

    #[test]
    fn records_given_back_by_a_leaving_partition_are_no_longer_waited_for() {
        let ledger = OffsetLedger::default();
        ledger.handed(&at(&[("t", 0, 20), ("t", 1, 8)]));
        ledger.record(&at(&[("t", 0, 10)]));
        assert!(!ledger.is_leaving("t", 0));
        // Before the hand-over began, a give-back means nothing.
        ledger.give_back(&("t".into(), 0), 10);
        assert_eq!(ledger.try_drain(&[("t".into(), 0)]), None);
        assert!(ledger.is_leaving("t", 0) && !ledger.is_leaving("t", 1));
        // The pipeline starts nothing from 10 on: everything it will do of partition 0 is done.
        ledger.give_back(&("t".into(), 0), 10);
        assert_eq!(
            ledger.try_drain(&[("t".into(), 0)]),
            Some(Drained {
                finished: at(&[("t", 0, 10)]),
                unfinished: vec![]
            })
        );
        // Let go, it stays leaving until the group gives it back.
        assert!(ledger.is_leaving("t", 0));
        ledger.assigned(&[("t".into(), 0)]);
        assert!(!ledger.is_leaving("t", 0));
    }

    #[test]
    fn no_position_past_a_record_given_back_is_recorded_whichever_batch_reports_it() {
        let ledger = OffsetLedger::default();
        ledger.handed(&at(&[("t", 0, 30), ("t", 1, 30)]));
        ledger.record(&at(&[("t", 0, 10), ("t", 1, 10)]));
        assert_eq!(ledger.try_drain(&[("t".into(), 0)]), None);
        // The batch holding 10..20 gave back 16; a later one, 20..30, did all of its records.
        ledger.give_back(&("t".into(), 0), 16);
        ledger.record(&at(&[("t", 0, 16), ("t", 1, 20)]));
        ledger.record(&at(&[("t", 0, 30), ("t", 1, 30)]));
        assert_eq!(ledger.pending(|_| true), at(&[("t", 0, 16), ("t", 1, 30)]));
        assert_eq!(
            ledger.try_drain(&[("t".into(), 0)]).map(|d| d.finished),
            Some(at(&[("t", 0, 16)]))
        );
    }

    #[test]
    fn a_drain_wakes_when_the_records_it_waits_for_are_given_back() {
        let ledger = std::sync::Arc::new(OffsetLedger::default());
        ledger.handed(&at(&[("t", 0, 20)]));
        ledger.record(&at(&[("t", 0, 10)]));
        let giver = {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                while !ledger.is_leaving("t", 0) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                ledger.give_back(&("t".into(), 0), 12);
                ledger.record(&at(&[("t", 0, 12)]));
            })
        };
        let started = Instant::now();
        let drained = ledger.drain(&[("t".into(), 0)], Duration::from_secs(10));
        giver.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(drained.finished, at(&[("t", 0, 12)]));
        assert!(drained.unfinished.is_empty());
    }

    #[test]
    fn partitions_never_handed_out_drain_at_once() {
        let ledger = OffsetLedger::default();
        assert_eq!(
            ledger.try_drain(&[("t".into(), 3)]),
            Some(Drained::default())
        );
    }
}
