//! The ports: the four small interfaces the pipeline depends on, and the values that cross them.
//!
//! Adapters for the real services implement them (`kafka::source`, `kafka::dlq`, `store`,
//! `index`); in-memory twins with the same semantics and injectable failures live in
//! [`crate::fakes`]. Nothing here names a client library.
//!
//! Every call either succeeds, says something about one record (a refusal, in the `Ok` value), or
//! fails as a [`Failure`]: transient (retried with backoff) or fatal (the consumer stops with the
//! failure's one line).

use super::refusal::{Refusal, bounded_reason};
use crate::domain::{ErasureProbe, ImageRecord, IndexEntry, Origin};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// A topic and partition.
pub type Partition = (String, i32);

/// Per partition, the next offset to read: everything below it is done.
pub type Positions = BTreeMap<Partition, i64>;

/// One record header: key and value (`None`: a null value). Kafka calls a key a string, but
/// brokers pass any bytes through, so a key is kept as the bytes the producer sent: a key that
/// is not UTF-8 is carried to its dead letter, and replayed, unchanged.
pub type RecordHeader = (Vec<u8>, Option<Vec<u8>>);

/// One record as polled, owned so the batch can outlive the poll.
#[derive(Debug, Clone)]
pub struct Polled {
    pub origin: Origin,
    pub key: Option<Vec<u8>>,
    /// `None` for a tombstone (a null value).
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
    pub timestamp_ms: Option<i64>,
}

impl Polled {
    /// The value's bytes; a tombstone reads as empty.
    pub fn payload(&self) -> &[u8] {
        self.value.as_deref().unwrap_or_default()
    }

    pub fn partition(&self) -> Partition {
        (self.origin.topic.clone(), self.origin.partition)
    }

    /// The bytes it holds: value, key and headers.
    pub fn size(&self) -> usize {
        self.payload().len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(key, value)| key.len() + value.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }
}

/// How a service call failed, as far as the pipeline is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Passes with time (a service down, a timeout): retried with backoff.
    Transient(String),
    /// No retry can fix it (credentials, a missing bucket or table): the consumer stops.
    Fatal(String),
}

impl Failure {
    /// An error as the adapter that met it judged it: transient or not.
    pub fn judged(e: &impl std::fmt::Display, transient: bool) -> Failure {
        if transient {
            Failure::Transient(e.to_string())
        } else {
            Failure::Fatal(e.to_string())
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient(_))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(m) | Failure::Fatal(m) => f.write_str(m),
        }
    }
}

/// How much one poll may collect.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    /// How long to wait for the first record.
    pub wait: Duration,
    /// How long to wait for more once the first arrived.
    pub linger: Duration,
}

/// Per partition, one past the highest offset in `batch`: where a commit of it stands.
pub fn next_positions(batch: &[Polled]) -> Positions {
    let mut next = Positions::new();
    for p in batch {
        let e = next.entry(p.partition()).or_insert(p.origin.offset + 1);
        *e = (*e).max(p.origin.offset + 1);
    }
    next
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Everything done for partitions this member owns is committed.
    Done,
    /// The group is rebalancing; the positions are kept and committed once it settles.
    Deferred,
}

/// Where records come from: a consumer group member.
pub trait RecordSource: Send + Sync {
    /// A batch of records, possibly empty after `limits.wait`, only of partitions this member
    /// owns: records of a partition revoked while the batch filled are left to the new owner,
    /// and what is returned counts as handed to the pipeline (a revocation waits for it).
    fn poll(&self, limits: BatchLimits) -> BoxFuture<'_, Result<Vec<Polled>, Failure>>;

    /// The partitions this member owns right now.
    fn assignment(&self) -> HashSet<Partition>;

    /// Notes `done` (every record below each position is stored or dead-lettered) and commits
    /// what is done for partitions this member still owns; with empty `done`, commits what an
    /// earlier call had to defer.
    fn commit<'a>(&'a self, done: &'a Positions) -> BoxFuture<'a, Result<Committed, Failure>>;

    /// Whether this member owns partitions and the group's committed offsets have reached the
    /// end of every partition of the topic, owned by this member or not: nothing is left to do
    /// anywhere in the group (a partition between owners counts too).
    fn caught_up(&self) -> BoxFuture<'_, Result<bool, Failure>>;

    /// Makes sure what was committed is durable before the run ends (commits may be
    /// asynchronous); bounded in time.
    fn close(&self) -> BoxFuture<'_, Result<(), Failure>>;

    /// Whether the partition is being taken from this member, or was: work on its records that
    /// has not started should not start ([`OffsetLedger::is_leaving`]).
    ///
    /// [`OffsetLedger::is_leaving`]: super::ledger::OffsetLedger::is_leaving
    fn is_leaving(&self, topic: &str, partition: i32) -> bool;

    /// The pipeline will not do the records of leaving partition `tp` from offset `from` on;
    /// their new owner does them.
    fn give_back(&self, tp: &Partition, from: i64);

    /// The run is stopping: every partition is leaving, as if the group had taken them all.
    fn leave_all(&self);
}

/// What a create-only write of an image found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    Created,
    /// The key already held exactly these bytes: a replay.
    AlreadyStored,
    /// The image cannot be stored: its bytes do not match its checksum, or its id is taken.
    Refused(Refusal),
}

/// Where image bytes go.
pub trait ImageSink: Send + Sync {
    /// Writes the image under its key unless the key exists; never replaces stored bytes. The
    /// sink verifies the bytes against the record's declared sha256.
    fn put<'a>(&'a self, record: &'a ImageRecord) -> BoxFuture<'a, Result<Put, Failure>>;

    /// The bucket the index rows name.
    fn bucket(&self) -> &str;
}

/// What inserting one index entry found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Indexed {
    Inserted,
    /// An identical row was already there: a replay.
    AlreadyIndexed,
    /// A row with this id describes a different image.
    Conflict(Box<IndexEntry>),
    /// The database refused this row for what it holds (a value it cannot store, a constraint);
    /// the other rows of the batch are written.
    Refused(String),
    /// An erasure covers this image: no row is written, and its object is left for the eraser.
    Erased,
}

/// Where index rows go.
pub trait IndexSink: Send + Sync {
    /// Inserts a batch idempotently; one outcome per entry, in order. Existing rows never change.
    fn insert<'a>(
        &'a self,
        entries: &'a [IndexEntry],
    ) -> BoxFuture<'a, Result<Vec<Indexed>, Failure>>;

    /// Which of these images an erasure covers, by position: their records are not stored.
    /// Asked before uploading; `insert` decides again, atomically with the erasures.
    fn erased<'a>(
        &'a self,
        probes: &'a [ErasureProbe],
    ) -> BoxFuture<'a, Result<Vec<bool>, Failure>>;
}

/// Where refused records go.
pub trait DeadLetterSink: Send + Sync {
    /// Writes one dead letter and resolves once it is durable.
    fn send<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), Failure>>;
}

/// A refused record on its way to the dead-letter topic: the original key, value and headers,
/// untouched, and why it was refused. What is written is [`DeadLetter::to_wire`]'s choice (see
/// [`super::letter`]): this keeps the whole record, the wire form may keep only a reference.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub origin: Origin,
    pub key: Option<Vec<u8>>,
    /// `None` when the original was a tombstone: it stays null.
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
    pub original_timestamp_ms: Option<i64>,
    pub refusal: Refusal,
    /// The refusal's message, bounded: it may quote a field as long as the record (see
    /// [`bounded_reason`]).
    pub reason: String,
}

impl DeadLetter {
    /// The one way to build a dead letter: from the record as polled and why it was refused.
    pub fn new(polled: &Polled, refusal: Refusal) -> DeadLetter {
        DeadLetter {
            origin: polled.origin.clone(),
            key: polled.key.clone(),
            value: polled.value.clone(),
            headers: polled.headers.clone(),
            original_timestamp_ms: polled.timestamp_ms,
            reason: bounded_reason(refusal.message()),
            refusal,
        }
    }
}
