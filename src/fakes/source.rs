//! A partitioned log and one consumer group member reading it.

use super::Faults;
use crate::domain::Origin;
use crate::pipeline::ledger::{Drained, OffsetLedger};
use crate::pipeline::ports::next_positions;
use crate::pipeline::{
    BatchLimits, Committed, Failure, Partition, Polled, Positions, RecordHeader, RecordSource,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

type CommitHook = Box<dyn Fn(&Positions) + Send + Sync>;

/// A topic's partitions in memory, read by one member that owns all of them until told otherwise.
pub struct MemorySource {
    topic: String,
    state: Mutex<State>,
    ledger: OffsetLedger,
    /// Scripted failures of `commit`.
    pub commit_faults: Faults,
    on_commit: Mutex<Option<CommitHook>>,
}

#[derive(Default)]
struct State {
    log: BTreeMap<i32, Vec<Polled>>,
    /// Next offset to hand out, per partition.
    position: BTreeMap<i32, i64>,
    committed: Positions,
    owned: HashSet<Partition>,
    /// Every commit that went through, in order.
    commits: Vec<Positions>,
    /// While set, polls return nothing: a member rejoining its group after a broker restart.
    stalled: bool,
    /// A revocation is waiting for in-flight batches: the member's poll is held meanwhile.
    handing_over: bool,
}

impl MemorySource {
    pub fn new(topic: &str, partitions: i32) -> Self {
        let mut state = State::default();
        for p in 0..partitions {
            state.log.insert(p, Vec::new());
            state.owned.insert((topic.to_string(), p));
        }
        MemorySource {
            topic: topic.to_string(),
            state: Mutex::new(state),
            ledger: OffsetLedger::default(),
            commit_faults: Faults::default(),
            on_commit: Mutex::new(None),
        }
    }

    /// Appends a record to a partition; returns where it landed.
    pub fn append(
        &self,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<Bytes>,
        headers: Vec<RecordHeader>,
    ) -> Origin {
        let mut state = self.state.lock().expect("source lock");
        let log = state.log.get_mut(&partition).expect("no such partition");
        let origin = Origin {
            topic: self.topic.clone(),
            partition,
            offset: log.len() as i64,
        };
        log.push(Polled {
            origin: origin.clone(),
            key: key.map(<[u8]>::to_vec),
            value,
            headers,
            timestamp_ms: Some(1_700_000_000_000 + origin.offset),
        });
        origin
    }

    /// Committed offsets per partition (absent: never committed).
    pub fn committed(&self) -> Positions {
        self.state.lock().expect("source lock").committed.clone()
    }

    /// Every commit that went through, in order.
    pub fn commits(&self) -> Vec<Positions> {
        self.state.lock().expect("source lock").commits.clone()
    }

    /// The group takes `partition` away from this member, as the Kafka source's rebalance
    /// callback does: polls stop meanwhile, the batches already handed out of the partition get
    /// up to `within` to finish, the last done position is committed, and the partition goes.
    pub async fn revoke(&self, partition: i32, within: std::time::Duration) -> Drained {
        let tp = (self.topic.clone(), partition);
        self.state.lock().expect("source lock").handing_over = true;
        let deadline = tokio::time::Instant::now() + within;
        let drained = loop {
            if let Some(drained) = self.ledger.try_drain(std::slice::from_ref(&tp)) {
                break drained;
            }
            if tokio::time::Instant::now() >= deadline {
                break self.ledger.abandon(std::slice::from_ref(&tp));
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        };
        let mut state = self.state.lock().expect("source lock");
        for (tp, next) in &drained.finished {
            let at = state.committed.entry(tp.clone()).or_insert(*next);
            *at = (*at).max(*next);
        }
        if !drained.finished.is_empty() {
            state.commits.push(drained.finished.clone());
        }
        state.owned.remove(&tp);
        state.handing_over = false;
        drained
    }

    /// What a new member sees after a crash: every partition, from its committed offset.
    pub fn restart(&self) {
        let mut state = self.state.lock().expect("source lock");
        let committed = state.committed.clone();
        let partitions: Vec<i32> = state.log.keys().copied().collect();
        for p in partitions {
            let at = committed
                .get(&(self.topic.clone(), p))
                .copied()
                .unwrap_or(0);
            state.position.insert(p, at);
            state.owned.insert((self.topic.clone(), p));
        }
        let all: Vec<Partition> = state.owned.iter().cloned().collect();
        self.ledger.assigned(&all);
    }

    /// While `stalled`, polls return nothing even though records wait.
    pub fn stall(&self, stalled: bool) {
        self.state.lock().expect("source lock").stalled = stalled;
    }

    /// Runs `hook` with each commit's positions just before it is applied.
    pub fn on_commit(&self, hook: impl Fn(&Positions) + Send + Sync + 'static) {
        *self.on_commit.lock().expect("hook lock") = Some(Box::new(hook));
    }

    fn take(&self, limits: &BatchLimits) -> Vec<Polled> {
        let mut state = self.state.lock().expect("source lock");
        if state.stalled || state.handing_over {
            return Vec::new();
        }
        let State {
            log,
            position,
            owned,
            ..
        } = &mut *state;
        let mut batch = Vec::new();
        let mut bytes = 0;
        // Round-robin over owned partitions, as a broker fetch interleaves them.
        loop {
            let mut progressed = false;
            for (p, records) in log.iter() {
                if batch.len() >= limits.max_records || bytes >= limits.max_bytes {
                    return batch;
                }
                if !owned.contains(&(self.topic.clone(), *p)) {
                    continue;
                }
                let at = position.entry(*p).or_insert(0);
                if let Some(record) = records.get(*at as usize) {
                    bytes += record.payload().len();
                    batch.push(record.clone());
                    *at += 1;
                    progressed = true;
                }
            }
            if !progressed {
                return batch;
            }
        }
    }
}

impl RecordSource for MemorySource {
    fn poll(&self, limits: BatchLimits) -> BoxFuture<'_, Result<Vec<Polled>, Failure>> {
        Box::pin(async move {
            let batch = self.take(&limits);
            if batch.is_empty() {
                tokio::time::sleep(limits.wait).await;
            } else {
                self.ledger.handed(&next_positions(&batch));
            }
            Ok(batch)
        })
    }

    fn assignment(&self) -> HashSet<Partition> {
        self.state.lock().expect("source lock").owned.clone()
    }

    fn caught_up(&self) -> BoxFuture<'_, Result<bool, Failure>> {
        let state = self.state.lock().expect("source lock");
        let caught_up = !state.owned.is_empty()
            && state.log.iter().all(|(p, records)| {
                let tp = (self.topic.clone(), *p);
                state.committed.get(&tp).copied().unwrap_or(0) >= records.len() as i64
            });
        Box::pin(async move { Ok(caught_up) })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Failure>> {
        // Its commits are applied as they are made.
        Box::pin(async { Ok(()) })
    }

    fn commit<'a>(&'a self, done: &'a Positions) -> BoxFuture<'a, Result<Committed, Failure>> {
        Box::pin(async move {
            self.commit_faults.enter().await?;
            self.ledger.record(done);
            let owned = self.assignment();
            let pending = self.ledger.pending(|tp| owned.contains(tp));
            if pending.is_empty() {
                return Ok(Committed::Done);
            }
            if let Some(hook) = &*self.on_commit.lock().expect("hook lock") {
                hook(&pending);
            }
            let mut state = self.state.lock().expect("source lock");
            for (tp, next) in &pending {
                let at = state.committed.entry(tp.clone()).or_insert(*next);
                *at = (*at).max(*next);
            }
            state.commits.push(pending.clone());
            drop(state);
            self.ledger.committed(&pending);
            Ok(Committed::Done)
        })
    }

    fn is_leaving(&self, topic: &str, partition: i32) -> bool {
        self.ledger.is_leaving(topic, partition)
    }

    fn give_back(&self, tp: &Partition, from: i64) {
        self.ledger.give_back(tp, from);
    }

    fn leave_all(&self) {
        self.ledger.leave_all();
    }
}
