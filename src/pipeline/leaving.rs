//! Records of partitions a rebalance is taking away, whose work has not started, are left to the
//! new owner: a hand-over then waits only for the uploads already under way
//! ([`super::ledger::OffsetLedger`] says why that matters to the whole group). A stopping run
//! leaves its unstarted records the same way, to whoever consumes next.
//!
//! Leaving a record behind means three things together: it is not done here, its batch's
//! position for the partition is lowered to it (so nothing from it on is committed here), and the
//! source is told (so the hand-over stops waiting for it). A batch's lowered position is still
//! past the records an earlier batch left behind (a first version committed offset 30 of a
//! partition whose record 16 was never done), so the ledger records no position past the first
//! record given back, whichever batch reports it: everything below a committed position is
//! still done.

use super::ports::{DeadLetter, Partition, Positions};
use super::{Pipeline, Polled};
use crate::domain::Origin;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use tracing::debug;

/// Per leaving partition, the first offset of a batch's records left behind.
#[derive(Debug, Default)]
pub(super) struct LeftBehind(BTreeMap<Partition, i64>);

impl LeftBehind {
    /// Notes that the record at `o` is left behind.
    pub(super) fn add(&mut self, o: &Origin) {
        let first = self
            .0
            .entry((o.topic.clone(), o.partition))
            .or_insert(o.offset);
        *first = (*first).min(o.offset);
    }

    /// Whether a record is at or past the first one left behind of its partition.
    fn covers(&self, o: &Origin) -> bool {
        self.0
            .get(&(o.topic.clone(), o.partition))
            .is_some_and(|first| o.offset >= *first)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The highest offset per partition whose upload has started. Uploads start out of offset order
/// (a later batch's first records queue for a slot before an earlier batch's last ones), so a
/// record of a leaving partition below one that started must still be done: leaving it behind
/// would make the new owner redo the later one. Only records past every started one are left.
#[derive(Default)]
pub(super) struct Started(Mutex<HashMap<String, HashMap<i32, i64>>>);

impl Started {
    /// Whether the record, about to take a slot, must still be done; `start` notes it as
    /// started when it will be.
    fn must_do(&self, leaving: bool, o: &Origin, start: bool) -> bool {
        let mut started = self.0.lock().expect("started lock");
        let highest = started
            .get(o.topic.as_str())
            .and_then(|p| p.get(&o.partition))
            .copied();
        let must = !leaving || highest.is_some_and(|h| o.offset < h);
        if must && start && highest.is_none_or(|h| o.offset > h) {
            started
                .entry(o.topic.clone())
                .or_default()
                .insert(o.partition, o.offset);
        }
        must
    }
}

impl Pipeline {
    /// Before a record waits for an upload slot: whether it should (it is not to be left
    /// behind).
    pub(super) fn may_wait_for_a_slot(&self, started: &Started, polled: &Polled) -> bool {
        started.must_do(self.is_leaving(polled), &polled.origin, false)
    }

    /// With its slot: whether the record's upload starts now (noted as started) or the record is
    /// left behind.
    pub(super) fn starts_upload(&self, started: &Started, polled: &Polled) -> bool {
        started.must_do(self.is_leaving(polled), &polled.origin, true)
    }

    /// Whether the record's partition is being taken from this member, or the run is stopping:
    /// its work should not start. A stopping run finishes only the uploads under way, so a
    /// SIGTERM mid-rebalance does not keep the group waiting while it works through every batch
    /// it holds (7.8 s at 16 KiB in a rebalance bench, with the group unable to move on).
    pub(super) fn is_leaving(&self, polled: &Polled) -> bool {
        if self.shutdown.is_triggered() {
            // Before any record is left for this reason, so the ledger never records a position
            // past one given back.
            if !self.left_all.load(Ordering::Relaxed) {
                self.ports.source.leave_all();
                self.left_all.store(true, Ordering::Relaxed);
            }
            return true;
        }
        self.ports
            .source
            .is_leaving(&polled.origin.topic, polled.origin.partition)
    }

    /// Takes the records of leaving partitions out of a batch that has not started.
    pub(super) fn leave_behind_unstarted(
        &self,
        positions: &mut Positions,
        records: &mut Vec<Polled>,
    ) {
        let mut left = LeftBehind::default();
        for polled in records.iter().filter(|p| self.is_leaving(p)) {
            left.add(&polled.origin);
        }
        if !left.is_empty() {
            let before = records.len();
            records.retain(|p| !left.covers(&p.origin));
            let removed = (before - records.len()) as u64;
            self.settle_left_behind(&left, positions, &mut Vec::new(), removed);
        }
    }

    /// Lowers the batch's positions to what is left behind, drops the letters of records past
    /// them (their new owner refuses them again), and tells the source. `counted` of the left
    /// records were already taken out of the batch by the caller.
    pub(super) fn settle_left_behind(
        &self,
        left: &LeftBehind,
        positions: &mut Positions,
        letters: &mut Vec<DeadLetter>,
        counted: u64,
    ) {
        let mut records = counted;
        letters.retain(|letter| {
            let past = left.covers(&letter.origin);
            records += u64::from(past);
            !past
        });
        for (tp, first) in &left.0 {
            if let Some(next) = positions.get_mut(tp) {
                *next = (*next).min(*first);
            }
            self.ports.source.give_back(tp, *first);
        }
        self.stats.given_back.fetch_add(records, Ordering::Relaxed);
        debug!(partitions = ?left.0, "records of partitions being taken away left to their new owner");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Origin {
        Origin {
            topic: "t".into(),
            partition,
            offset,
        }
    }

    #[test]
    fn a_leaving_partitions_record_below_one_that_started_is_still_done_and_one_past_all_is_left() {
        let started = Started::default();
        // Uploads started out of offset order: 7, then 3.
        assert!(started.must_do(false, &at(0, 7), true));
        assert!(started.must_do(false, &at(0, 3), true));
        // The partition is leaving: 5 lies below 7, which is done, so 5 must be done too (leaving it
        // would make the new owner redo 7); 8 lies past everything started.
        assert!(started.must_do(true, &at(0, 5), true));
        assert!(!started.must_do(true, &at(0, 8), true));
        // A partition with nothing started leaves everything; one that stays does everything.
        assert!(!started.must_do(true, &at(1, 0), true));
        assert!(started.must_do(false, &at(2, 0), true));
    }

    #[test]
    fn asking_before_a_slot_notes_nothing_as_started() {
        let started = Started::default();
        assert!(started.must_do(false, &at(0, 9), false));
        assert!(!started.must_do(true, &at(0, 4), true));
    }
}
