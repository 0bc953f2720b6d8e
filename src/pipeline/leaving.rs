//! Records of partitions a rebalance is taking away, whose work has not started, are left to the
//! new owner: a hand-over then waits only for the uploads already under way
//! ([`super::ledger::OffsetLedger`] says why that matters to the whole group).
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
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use tracing::debug;

/// Per leaving partition, the first offset of a batch's records left behind.
#[derive(Debug, Default)]
pub(super) struct LeftBehind(BTreeMap<Partition, i64>);

impl LeftBehind {
    /// Notes that the record at `offset` of `(topic, partition)` is left behind.
    pub(super) fn add(&mut self, topic: &str, partition: i32, offset: i64) {
        let first = self
            .0
            .entry((topic.to_string(), partition))
            .or_insert(offset);
        *first = (*first).min(offset);
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

impl Pipeline {
    /// Whether the record's partition is being taken from this member: its work should not start.
    pub(super) fn is_leaving(&self, polled: &Polled) -> bool {
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
            left.add(
                &polled.origin.topic,
                polled.origin.partition,
                polled.origin.offset,
            );
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
