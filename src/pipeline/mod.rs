//! The consumer pipeline: fetch a batch → check (decode + validate) → upload objects → index rows
//! → dead letters and offsets (commit) → report.
//!
//! The pipeline sees the outside world only through the [`ports`]: a record source, an image sink,
//! an index sink and a dead-letter sink, plus the schema codec. The wiring point
//! ([`crate::wiring`]) plugs in Kafka, S3 and PostgreSQL; the protocol tests plug in the
//! in-memory twins of [`crate::fakes`] and run the same code.
//!
//! # The commit protocol, and why it is safe
//!
//! For every batch, in this order:
//!
//! 1. **Objects first** ([`upload`]). Each valid image is written under `object_key(image_id)`
//!    with a create-only put that the store verifies against the declared sha256. If the key
//!    exists, its checksum is compared: identical is a replay; different is a conflict and goes to
//!    the dead-letter topic. A stored image is therefore never replaced, whoever writes second.
//!    Records of one id upload one after another in offset order, so the earliest always wins.
//! 2. **Then rows** ([`index`]), in one idempotent statement; rows that already existed are
//!    compared the same way. A row is only written for an object that exists.
//! 3. **Then dead letters** ([`commit`]), each acknowledged by the broker (acks=all).
//! 4. **Then offsets** ([`commit`]): per partition, one past the highest offset in the batch.
//!    Batches reach the commit stage in the order they were fetched, one at a time, so every
//!    record at or below a committed offset has been stored or dead-lettered (invariant 1). The
//!    Kafka source hands these positions to librdkafka's offset store, which commits them once a
//!    second and before a revoked partition is handed over; nothing else is ever stored.
//!
//! A crash between any two steps leaves work that a restart repeats from the last committed
//! offset, and every step is idempotent: the object put finds its own bytes, the insert finds its
//! own row. A *zombie* (a consumer that stalled past its session, lost its partitions and woke up)
//! can only repeat the same idempotent writes; its commit carries a stale generation and is
//! refused by the group coordinator, so it cannot move the new owner's offsets. Records of a
//! partition revoked while they were being fetched are left to the new owner (the source returns
//! only owned partitions' records, [`ports::RecordSource::poll`]). Of the batches
//! already in flight for a revoked partition, the uploads under way are finished and the records
//! not yet started are left behind ([`leaving`]); the source holds the hand-over until that is
//! done ([`ledger::OffsetLedger::drain`], bounded by a deadline): the positions are committed
//! before the new owner starts, so it redoes nothing and the group waits only for the uploads
//! under way. Past the deadline the partition goes with what is done, and the new owner replays
//! the rest, idempotently.
//!
//! Transient failures (a service down, a timeout) are retried with capped backoff while nothing is
//! committed past the failed record ([`retry`]). The bounded channels between the stages fill up
//! and the fetch stage stops polling meanwhile, so a few batches plus the source's prefetch are
//! all that is buffered. Refusals ([`refusal`]) are about one record and send only that record to
//! the dead-letter topic. Failures that no retry can fix (bad credentials, a missing bucket or
//! table, a registry refusing the consumer) stop the consumer with one clear line, before
//! anything past them is committed.

mod budget;
pub mod check;
pub mod commit;
mod fetch;
mod index;
mod key_order;
mod leaving;
pub mod ledger;
pub mod letter;
pub mod ports;
pub mod refusal;
pub mod report;
pub mod retry;
mod upload;
pub mod usage;

pub use letter::{LetterBudget, WireLetter};
pub use ports::{
    BatchLimits, Committed, DeadLetter, DeadLetterSink, Failure, ImageSink, IndexSink, Indexed,
    Partition, Polled, Positions, Put, RecordHeader, RecordSource,
};
pub use refusal::{Class, Refusal};
pub use report::{RunSummary, Stage, Stats, StopReason, Timings};

use crate::domain::{ImageRecord, IndexEntry};
use crate::schema::ImageCodec;
use crate::shutdown::Shutdown;
use crate::telemetry::spans::RecordSpans;
use crate::validate::Limits;
use retry::Backoff;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};

/// Tuning of the pipeline. Defaults are the benchmark's winners on a 2-core machine.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    /// How long one poll waits for a first record.
    pub poll_wait: Duration,
    /// How long to wait for a batch to fill once its first record arrived.
    pub batch_linger: Duration,
    /// Concurrent object uploads.
    pub uploads_in_flight: usize,
    /// Batches uploading at once in the upload stage, at least; up to twice as many while
    /// upload slots would otherwise sit idle (large images). With `batch_max_bytes` this bounds
    /// the image bytes held in memory.
    pub batches_in_flight: usize,
    /// Exit after this long without a new record.
    pub until_idle: Option<Duration>,
    /// Exit after this many records were fetched and finished.
    pub max_records: Option<u64>,
    pub limits: Limits,
    pub backoff: Backoff,
}

impl PipelineOptions {
    // The defaults, written once: `imgstream consume`'s flags and the bench read them from here.
    pub const DEFAULT_BATCH_RECORDS: usize = 500;
    pub const DEFAULT_BATCH_MIB: usize = 16;
    pub const DEFAULT_UPLOADS_IN_FLIGHT: usize = 32;
    pub const DEFAULT_BATCHES_IN_FLIGHT: usize = 3;
    /// 100 ms added up to 100 ms to every record arriving at a moderate pace: at half the
    /// ceiling, produce-to-index p99 went from 242 to 157 ms (16 KiB) and p50 from 122 to 34 ms
    /// at 20 ms, with the same drain throughput (a backlog fills batches anyway).
    pub const DEFAULT_LINGER_MS: u64 = 20;

    pub fn new(limits: Limits) -> Self {
        PipelineOptions {
            batch_max_records: Self::DEFAULT_BATCH_RECORDS,
            batch_max_bytes: Self::DEFAULT_BATCH_MIB << 20,
            poll_wait: Duration::from_secs(1),
            batch_linger: Duration::from_millis(Self::DEFAULT_LINGER_MS),
            uploads_in_flight: Self::DEFAULT_UPLOADS_IN_FLIGHT,
            batches_in_flight: Self::DEFAULT_BATCHES_IN_FLIGHT,
            until_idle: None,
            max_records: None,
            limits,
            backoff: Backoff::default(),
        }
    }

    /// The record bytes the pipeline holds before it asks for another batch: what the upload
    /// stage may hold at most (`2 × batches_in_flight` batches of `batch_max_bytes`), 96 MiB by
    /// default. With the one batch fetched past it, the pipeline holds at most this plus
    /// `batch_max_bytes`.
    pub fn held_bytes_limit(&self) -> usize {
        2 * self.batches_in_flight.max(1) * self.batch_max_bytes.max(1)
    }

    /// The most records the pipeline holds at once, polled but not committed: one batch in each
    /// channel and stage, plus the finished batches waiting in order for the commit stage.
    pub fn records_in_flight_bound(&self) -> usize {
        // fetch (1) + polled channel (1) + check (1) + checked channel (1) + uploading
        // (2 × batches_in_flight) + waiting in order (batches_in_flight) + stored channel (1) +
        // commit (1)
        self.batch_max_records * (6 + 3 * self.batches_in_flight.max(1))
    }
}

/// What the pipeline writes to and reads from; built once by the wiring point.
pub struct Ports {
    pub source: Arc<dyn RecordSource>,
    pub codec: Arc<ImageCodec>,
    pub images: Arc<dyn ImageSink>,
    pub index: Arc<dyn IndexSink>,
    pub dead_letters: Arc<dyn DeadLetterSink>,
}

/// A failure that stops the consumer: retrying cannot help, a person must act. One line.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct PipelineError(pub String);

pub struct Pipeline {
    ports: Ports,
    opts: PipelineOptions,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    held: Arc<budget::ByteBudget>,
    /// Whether the stopping run has told the source that every partition is leaving.
    left_all: std::sync::atomic::AtomicBool,
}

/// The stages' messages: a batch as it moves along, with the positions it will commit and its
/// records' trace spans (none while tracing is off), which end once it is committed.
struct PolledBatch {
    positions: Positions,
    /// The batch's bytes against the memory bound, given back when it is dropped.
    held: budget::Held,
    records: Vec<Polled>,
    spans: RecordSpans,
}

struct CheckedBatch {
    positions: Positions,
    /// The batch's bytes against the memory bound, given back when it is dropped.
    held: budget::Held,
    valid: Vec<(Polled, ImageRecord)>,
    letters: Vec<DeadLetter>,
    spans: RecordSpans,
}

struct StoredBatch {
    positions: Positions,
    /// The batch's bytes against the memory bound, given back when it is dropped.
    held: budget::Held,
    stored: Vec<(Polled, IndexEntry)>,
    letters: Vec<DeadLetter>,
    spans: RecordSpans,
}

/// Why a stage stopped early.
enum BatchError {
    Shutdown,
    Fatal(PipelineError),
}

impl BatchError {
    fn fatal(message: impl Into<String>) -> BatchError {
        BatchError::Fatal(PipelineError(message.into()))
    }
}

impl Pipeline {
    pub fn new(ports: Ports, opts: PipelineOptions, shutdown: Shutdown) -> Self {
        Pipeline {
            held: budget::ByteBudget::new(opts.held_bytes_limit()),
            ports,
            opts,
            stats: Arc::new(Stats::default()),
            shutdown,
            left_all: Default::default(),
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Record bytes held now, polled and not yet committed (see
    /// [`PipelineOptions::held_bytes_limit`]).
    pub fn held_bytes(&self) -> usize {
        self.held.held()
    }

    /// Calls to any service that were seen waiting past `backoff.slow_after`.
    pub fn slow_waits(&self) -> u64 {
        self.stats
            .outages
            .all()
            .iter()
            .map(|o| o.slow_waits())
            .sum()
    }

    /// The end-of-run summary.
    pub fn summary(&self, elapsed: Duration, stopped: StopReason) -> RunSummary {
        self.stats.summary(elapsed, stopped)
    }

    /// Consumes until idle, the record limit, or shutdown. Returns why it stopped.
    pub async fn run(&self) -> Result<StopReason, PipelineError> {
        // Four stages joined in one task, linked by small bounded channels: while one batch is
        // indexed and committed, the next ones upload, one is checked and one is fetched.
        let (polled_tx, polled_rx) = mpsc::channel::<PolledBatch>(1);
        let (checked_tx, checked_rx) = mpsc::channel::<CheckedBatch>(1);
        let (stored_tx, stored_rx) = mpsc::channel::<StoredBatch>(1);
        let uploads = Semaphore::new(self.opts.uploads_in_flight.max(1));
        let (fetched, checked, stored, committed) = tokio::join!(
            self.fetch_stage(polled_tx),
            self.check_stage(polled_rx, checked_tx),
            self.upload_stage(checked_rx, stored_tx, &uploads),
            self.commit_stage(stored_rx),
        );
        // Commits may still be on their way to the broker: wait for them, briefly. A commit that
        // does not make it only means its records are replayed, idempotently.
        if let Err(e) = self.ports.source.close().await {
            tracing::warn!(error = %e, "offsets may not all be committed");
        }
        // The first fatal error wins; a stage that stopped because another failed says Shutdown.
        for result in [committed, stored, checked] {
            match result {
                Err(BatchError::Fatal(e)) => return Err(e),
                Err(BatchError::Shutdown) => return Ok(StopReason::Shutdown),
                Ok(()) => {}
            }
        }
        match fetched {
            Err(BatchError::Fatal(e)) => Err(e),
            Err(BatchError::Shutdown) => Ok(StopReason::Shutdown),
            Ok(reason) => Ok(reason),
        }
    }
}
