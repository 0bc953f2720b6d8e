//! Offsets that are done (every record below them stored or dead-lettered) but not yet committed.
//!
//! A commit refused during a rebalance is kept here, retried once the group has settled, and
//! flushed for revoked partitions before they are handed over. Sources share this one ledger
//! type, so the Kafka adapter and the in-memory source keep the same rules.

use super::ports::{Partition, Positions};
use std::sync::Mutex;

#[derive(Default)]
pub struct OffsetLedger {
    done: Mutex<Positions>,
}

impl OffsetLedger {
    /// Records "everything below `next` is done" for each partition; never moves backwards.
    pub fn record(&self, positions: &Positions) {
        let mut done = self.done.lock().expect("ledger lock");
        for (tp, next) in positions {
            let e = done.entry(tp.clone()).or_insert(*next);
            *e = (*e).max(*next);
        }
    }

    /// The pending positions of the partitions `owned` accepts. Entries of partitions we no
    /// longer hold are dropped: their new owner replays from the last commit, idempotently.
    pub fn pending(&self, owned: impl Fn(&Partition) -> bool) -> Positions {
        let mut done = self.done.lock().expect("ledger lock");
        done.retain(|tp, _| owned(tp));
        done.clone()
    }

    /// Forgets positions once committed (unless they moved on meanwhile).
    pub fn committed(&self, positions: &Positions) {
        let mut done = self.done.lock().expect("ledger lock");
        for (tp, at) in positions {
            if done.get(tp).is_some_and(|current| current <= at) {
                done.remove(tp);
            }
        }
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
}
