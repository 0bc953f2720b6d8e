//! The consumer pipeline: poll a batch → decode → validate → put objects → index rows → dead
//! letters → commit offsets.
//!
//! # The commit protocol, and why it is safe
//!
//! For every batch, in this order:
//!
//! 1. **Objects first.** Each valid image is written under `object_key(image_id)` with a
//!    create-only put (`If-None-Match: *`). If the key exists, its bytes are compared: identical
//!    is a replay and counts as stored; different is a conflict and goes to the dead-letter topic.
//!    A stored image is therefore never replaced, whoever writes second.
//! 2. **Then rows**, in one statement, `ON CONFLICT DO NOTHING`; rows that already existed are
//!    compared the same way. A row is only written for an object that exists.
//! 3. **Then dead letters**, each acknowledged by the broker (acks=all).
//! 4. **Then offsets**: per partition, one past the highest offset in the batch. Every record at
//!    or below a committed offset has therefore been stored or dead-lettered (invariant 1).
//!
//! A crash between any two steps leaves work that a restart repeats from the last committed
//! offset, and every step is idempotent: the object put finds its own bytes, the insert finds its
//! own row. A *zombie* (a consumer that stalled past its session, lost its partitions and woke up)
//! can only repeat the same idempotent writes; its commit carries a stale generation and is
//! refused by the group coordinator, so it cannot move the new owner's offsets.
//!
//! Transient failures (a service down, a timeout) are retried with capped backoff while nothing is
//! committed past the failed record. The bounded channels between the stages fill up and the
//! fetch stage stops polling meanwhile, so a few batches plus librdkafka's prefetch — capped by
//! `queued.max.messages.kbytes` — are all that is buffered. Permanent failures
//! are about one record and send only that record to the dead-letter topic. Failures that no retry
//! can fix (bad credentials, a missing bucket or table) stop the consumer with one clear line.

mod key_order;
pub mod monitor;
pub mod retry;
pub mod usage;

use crate::domain::{ImageRecord, IndexEntry, Origin, object_key};
use crate::index::{ImageIndex, IndexError, InsertOutcome};
use crate::kafka::BrokerError;
use crate::kafka::consumer::{GroupConsumer, payload_bytes};
use crate::kafka::dlq::{DeadLetter, DeadLetterWriter};
use crate::schema::{DecodeError, ImageCodec};
use crate::shutdown::Shutdown;
use crate::store::{ImageStore, PutOutcome, StoreError};
use crate::validate::{Limits, validate};
use bytes::Bytes;
use futures::StreamExt;
use key_order::{KeyOrder, Turn};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use retry::{Backoff, Outage, Stopped, retry};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

/// Tuning of the pipeline. Defaults are the benchmark's winners on a 2-core machine.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    /// How long to wait for a batch to fill once its first record arrived.
    pub batch_linger: Duration,
    /// Concurrent object uploads.
    pub uploads_in_flight: usize,
    /// Batches uploading at once in the store stage; with `batch_max_bytes` this bounds the
    /// image bytes held in memory.
    pub batches_in_flight: usize,
    /// Exit after this long without a new record.
    pub until_idle: Option<Duration>,
    /// Exit after this many records were stored or dead-lettered.
    pub max_records: Option<u64>,
    pub limits: Limits,
    pub backoff: Backoff,
}

impl PipelineOptions {
    pub fn new(limits: Limits) -> Self {
        PipelineOptions {
            batch_max_records: 500,
            batch_max_bytes: 16 << 20,
            batch_linger: Duration::from_millis(100),
            uploads_in_flight: 32,
            batches_in_flight: 3,
            until_idle: None,
            max_records: None,
            limits,
            backoff: Backoff::default(),
        }
    }
}

/// A failure that stops the consumer: retrying cannot help, a person must act.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("cannot decode records: {0}")]
    Decode(String),
}

/// Counters, shared with the status line.
#[derive(Debug, Default)]
pub struct Stats {
    pub stored: AtomicU64,
    pub replayed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub bytes: AtomicU64,
    pub batches: AtomicU64,
    pub commit_failures: AtomicU64,
    /// Object uploads running right now (for the debug timings).
    pub uploads_running: AtomicU64,
    /// When the first record arrived and the last batch was committed: the busy span, without
    /// start-up and idle waiting, for throughput figures.
    pub first_record: std::sync::OnceLock<Instant>,
    pub last_commit: std::sync::Mutex<Option<Instant>>,
}

impl Stats {
    pub fn processed(&self) -> u64 {
        self.stored.load(Ordering::Relaxed) + self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Seconds from the first record received to the last batch committed.
    pub fn busy_secs(&self) -> f64 {
        match (
            self.first_record.get(),
            *self.last_commit.lock().expect("stats lock"),
        ) {
            (Some(first), Some(last)) => last.saturating_duration_since(*first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Idle,
    MaxRecords,
    Shutdown,
}

/// The services a pipeline writes to; built once by the caller.
pub struct Sinks {
    pub codec: Arc<ImageCodec>,
    pub store: ImageStore,
    pub index: ImageIndex,
    pub dlq: DeadLetterWriter,
}

/// One record as polled, owned so the batch can outlive the poll.
#[derive(Debug, Clone)]
pub(crate) struct Polled {
    origin: Origin,
    key: Option<Vec<u8>>,
    payload: Bytes,
    timestamp_ms: Option<i64>,
}

/// A polled record after decoding and validation.
enum Checked {
    Valid(Polled, ImageRecord),
    Refused(DeadLetter),
}

static STORE_OUTAGE: Outage = Outage::new("object store");
static INDEX_OUTAGE: Outage = Outage::new("postgresql");
static REGISTRY_OUTAGE: Outage = Outage::new("schema registry");
static KAFKA_OUTAGE: Outage = Outage::new("kafka");

pub struct Pipeline {
    consumer: Arc<GroupConsumer>,
    sinks: Sinks,
    opts: PipelineOptions,
    stats: Arc<Stats>,
    shutdown: Shutdown,
}

impl Pipeline {
    pub fn new(
        consumer: Arc<GroupConsumer>,
        sinks: Sinks,
        opts: PipelineOptions,
        shutdown: Shutdown,
    ) -> Self {
        Pipeline {
            consumer,
            sinks,
            opts,
            stats: Arc::new(Stats::default()),
            shutdown,
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Consumes until idle, the record limit, or shutdown. Returns why it stopped.
    pub async fn run(&self) -> Result<StopReason, PipelineError> {
        // Four stages joined in one task, linked by small bounded channels: while one batch is
        // indexed and committed, the next ones upload, one is checked and one is polled. Batches
        // leave the store stage in the order they entered, and the commit stage takes them one
        // at a time, so each commit still covers only work that is durable.
        let (polled_tx, polled_rx) = mpsc::channel::<PolledBatch>(1);
        let (checked_tx, checked_rx) = mpsc::channel::<CheckedBatch>(1);
        let (stored_tx, stored_rx) = mpsc::channel::<StoredBatch>(1);
        let uploads = Semaphore::new(self.opts.uploads_in_flight.max(1));
        let (fetched, checked, stored, committed) = tokio::join!(
            self.fetch_stage(polled_tx),
            self.check_stage(polled_rx, checked_tx),
            self.store_stage(checked_rx, stored_tx, &uploads),
            self.commit_stage(stored_rx),
        );
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

    /// Stage 1: poll batches until idle, the record limit, or shutdown.
    async fn fetch_stage(&self, tx: mpsc::Sender<PolledBatch>) -> Result<StopReason, BatchError> {
        let mut last_record = Instant::now();
        let mut fetched = 0u64;
        loop {
            if self.shutdown.is_triggered() {
                return Ok(StopReason::Shutdown);
            }
            if self.opts.max_records.is_some_and(|max| fetched >= max) {
                return Ok(StopReason::MaxRecords);
            }
            let remaining = self
                .opts
                .max_records
                .map_or(usize::MAX, |m| (m - fetched) as usize);
            let polling = Instant::now();
            let batch = self
                .poll_batch(remaining)
                .await
                .map_err(BatchError::Fatal)?;
            let polled_in = polling.elapsed();
            if batch.is_empty() {
                // A commit deferred by a rebalance goes through once the group has settled.
                if !self.consumer.context().ledger.is_empty() {
                    self.flush_ledger().await?;
                }
                // Idle means "owning partitions and nothing new", not "still waiting to join": after
                // a crash the group holds the dead member's partitions until its session expires.
                let owns_partitions = self.consumer.assignment().is_ok_and(|a| a.count() > 0);
                if !owns_partitions {
                    last_record = Instant::now();
                } else if let Some(idle) = self.opts.until_idle
                    && last_record.elapsed() >= idle
                {
                    return Ok(StopReason::Idle);
                }
                continue;
            }
            last_record = Instant::now();
            self.stats.first_record.get_or_init(Instant::now);
            fetched += batch.len() as u64;
            let uploads_running = self.stats.uploads_running.load(Ordering::Relaxed);
            debug!(
                records = batch.len(),
                ?polled_in,
                uploads_running,
                "batch polled"
            );
            let positions = next_offsets(&batch);
            if tx
                .send(PolledBatch {
                    positions,
                    records: batch,
                })
                .await
                .is_err()
            {
                // A later stage stopped; its result says why.
                return Ok(StopReason::Shutdown);
            }
        }
    }

    /// Stage 2: decode and validate (CPU work, on the blocking pool) while the next batch is
    /// being polled.
    async fn check_stage(
        &self,
        mut rx: mpsc::Receiver<PolledBatch>,
        tx: mpsc::Sender<CheckedBatch>,
    ) -> Result<(), BatchError> {
        while let Some(batch) = rx.recv().await {
            let checking = Instant::now();
            let mut valid = Vec::new();
            let mut letters = Vec::new();
            for c in self.decode_and_validate(batch.records).await? {
                match c {
                    Checked::Valid(p, r) => valid.push((p, r)),
                    Checked::Refused(letter) => letters.push(letter),
                }
            }
            debug!(checked_in = ?checking.elapsed(), "batch checked");
            let checked = CheckedBatch {
                positions: batch.positions,
                valid,
                letters,
            };
            if tx.send(checked).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Stage 3: objects. Up to `batches_in_flight` batches upload at once (the semaphore
    /// caps uploads overall), finished batches wait in order for the commit stage, and uploads
    /// keep going while they wait.
    async fn store_stage(
        &self,
        rx: mpsc::Receiver<CheckedBatch>,
        tx: mpsc::Sender<StoredBatch>,
        uploads: &Semaphore,
    ) -> Result<(), BatchError> {
        let in_flight = self.opts.batches_in_flight.max(1);
        let incoming =
            futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|b| (b, rx)) });
        let key_order = KeyOrder::default();
        let key_order = &key_order;
        let mut uploading = std::pin::pin!(
            incoming
                // Places in line are taken here, as batches arrive in offset order and before any
                // of their uploads start.
                .map(|batch| {
                    let turns = key_order.register(&batch.valid);
                    self.store_batch(batch, turns, uploads)
                })
                .buffered(in_flight)
        );
        let mut done: std::collections::VecDeque<StoredBatch> = Default::default();
        let mut input_open = true;
        loop {
            if !input_open && done.is_empty() {
                return Ok(());
            }
            tokio::select! {
                next = uploading.next(), if input_open && done.len() < in_flight => match next {
                    Some(batch) => done.push_back(batch?),
                    None => input_open = false,
                },
                permit = tx.reserve(), if !done.is_empty() => match permit {
                    Ok(permit) => permit.send(done.pop_front().expect("non-empty")),
                    Err(_) => return Ok(()),
                },
            }
        }
    }

    async fn store_batch(
        &self,
        batch: CheckedBatch,
        turns: Vec<Turn<'_>>,
        uploads: &Semaphore,
    ) -> Result<StoredBatch, BatchError> {
        let mut letters = batch.letters;
        let (records, started) = (batch.valid.len(), Instant::now());
        let stored = self
            .put_objects(batch.valid, turns, &mut letters, uploads)
            .await?;
        debug!(records, took = ?started.elapsed(), "batch uploaded");
        Ok(StoredBatch {
            positions: batch.positions,
            stored,
            letters,
        })
    }

    /// Stage 4: rows, dead letters, offsets — one batch at a time, in order.
    async fn commit_stage(&self, mut rx: mpsc::Receiver<StoredBatch>) -> Result<(), BatchError> {
        while let Some(batch) = rx.recv().await {
            let mut letters = batch.letters;
            let started = Instant::now();
            self.index_rows(batch.stored, &mut letters).await?;
            let indexed = started.elapsed();
            self.dead_letter(&letters).await?;
            self.commit(&batch.positions).await?;
            debug!(?indexed, total = ?started.elapsed(), "batch indexed and committed");
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            *self.stats.last_commit.lock().expect("stats lock") = Some(Instant::now());
        }
        Ok(())
    }

    /// Collects up to `batch_max_records` / `batch_max_bytes`, waiting at most `batch_linger`
    /// once the first record arrived (and up to a second for that first one).
    async fn poll_batch(&self, remaining: usize) -> Result<Vec<Polled>, PipelineError> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let limit = self.opts.batch_max_records.min(remaining).max(1);
        let mut deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while batch.len() < limit && bytes < self.opts.batch_max_bytes {
            let received = tokio::select! {
                m = self.consumer.recv() => m,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.shutdown.triggered() => break,
            };
            match received {
                Ok(m) => {
                    if batch.is_empty() {
                        deadline = tokio::time::Instant::now() + self.opts.batch_linger;
                    }
                    let origin = Origin {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                    };
                    let key = m.key().map(<[u8]>::to_vec);
                    let timestamp_ms = m.timestamp().to_millis();
                    let payload = payload_bytes(&self.consumer, m);
                    bytes += payload.len();
                    batch.push(Polled {
                        origin,
                        key,
                        payload,
                        timestamp_ms,
                    });
                }
                Err(e) => self.on_consumer_error(e)?,
            }
        }
        // A revocation while the batch filled moves those partitions to another member: leave
        // their records to it rather than process (and commit) what we no longer own.
        if !batch.is_empty()
            && let Ok(assignment) = self.consumer.assignment()
        {
            let owned: HashSet<(String, i32)> = assignment
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            let before = batch.len();
            batch.retain(|p| owned.contains(&(p.origin.topic.clone(), p.origin.partition)));
            if batch.len() < before {
                debug!(
                    dropped = before - batch.len(),
                    "records of revoked partitions left to their new owner"
                );
            }
        }
        Ok(batch)
    }

    fn on_consumer_error(&self, e: KafkaError) -> Result<(), PipelineError> {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Err(BrokerError::Other(format!(
                    "subscribed topic is missing ({e}); run `imgstream setup`"
                ))
                .into())
            }
            _ => {
                // librdkafka reconnects by itself; say so once per outage, not per poll.
                let err = BrokerError::from_kafka(&e, "the cluster");
                if err.is_transient() {
                    if !KAFKA_OUTAGE.is_ongoing() {
                        warn!(error = %e, "kafka consumer error; librdkafka is reconnecting");
                    }
                } else {
                    warn!(error = %e, "kafka consumer error");
                }
                Ok(())
            }
        }
    }

    async fn decode_and_validate(&self, batch: Vec<Polled>) -> Result<Vec<Checked>, BatchError> {
        // Writer schemas are fetched (once per id, then cached) before the CPU work starts, so the
        // only waiting on the registry happens here, with retries.
        let ids: BTreeMap<u32, ()> = batch
            .iter()
            .filter_map(|p| {
                crate::schema::wire::split(&p.payload)
                    .ok()
                    .map(|(id, _)| (id, ()))
            })
            .collect();
        let mut schemas = BTreeMap::new();
        for id in ids.keys() {
            let codec = &self.sinks.codec;
            let fetched = retry(
                &REGISTRY_OUTAGE,
                self.opts.backoff,
                &self.shutdown,
                DecodeError::is_transient,
                || codec.writer_schema(*id),
            )
            .await;
            match fetched {
                Ok(schema) => {
                    schemas.insert(*id, Ok(schema));
                }
                Err(Stopped::Permanent(e)) => {
                    schemas.insert(*id, Err((e.code(), e.to_string())));
                }
                Err(Stopped::Shutdown(_)) => return Err(BatchError::Shutdown),
            }
        }
        let schemas = Arc::new(schemas);

        // Decoding and validation are CPU work: split over the blocking pool, one chunk per core.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chunk = batch.len().div_ceil(cores).max(1);
        let mut tasks = Vec::new();
        let mut batch = batch;
        while !batch.is_empty() {
            let rest = batch.split_off(chunk.min(batch.len()));
            let part = std::mem::replace(&mut batch, rest);
            let codec = self.sinks.codec.clone();
            let schemas = schemas.clone();
            let limits = self.opts.limits;
            tasks.push(tokio::task::spawn_blocking(move || {
                part.into_iter()
                    .map(|p| check_one(&codec, &schemas, &limits, p))
                    .collect::<Vec<_>>()
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.extend(
                task.await
                    .map_err(|e| BatchError::Fatal(PipelineError::Decode(e.to_string())))?,
            );
        }
        Ok(out)
    }

    /// Step 1: objects, many in flight. Returns the records whose object is now stored.
    async fn put_objects(
        &self,
        valid: Vec<(Polled, ImageRecord)>,
        turns: Vec<Turn<'_>>,
        letters: &mut Vec<DeadLetter>,
        uploads: &Semaphore,
    ) -> Result<Vec<(Polled, IndexEntry)>, BatchError> {
        let store = &self.sinks.store;
        let results: Vec<_> = futures::stream::iter(valid.into_iter().zip(turns))
            .map(|((polled, record), turn)| async move {
                // The earliest record of an image id writes first; the wait comes before taking
                // an upload slot, so waiting never holds up other uploads.
                turn.wait().await;
                let _permit = uploads
                    .acquire()
                    .await
                    .expect("upload semaphore is never closed");
                let key = object_key(&record.image_id);
                self.stats.uploads_running.fetch_add(1, Ordering::Relaxed);
                let result = retry(
                    &STORE_OUTAGE,
                    self.opts.backoff,
                    &self.shutdown,
                    StoreError::is_transient,
                    || {
                        store.put_image(
                            &key,
                            record.data.clone(),
                            &record.content_type,
                            &record.sha256,
                        )
                    },
                )
                .await;
                self.stats.uploads_running.fetch_sub(1, Ordering::Relaxed);
                drop(turn);
                (polled, record, result)
            })
            .buffer_unordered(self.opts.uploads_in_flight.max(1))
            .collect()
            .await;

        let mut stored = Vec::with_capacity(results.len());
        for (polled, record, result) in results {
            match result {
                Ok(outcome) => {
                    if outcome == PutOutcome::AlreadyStored {
                        self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    // The record's payload travels on with its index entry until the row is
                    // written: an index conflict dead-letters the original bytes. It is a slice
                    // of librdkafka's fetch buffer, so this holds memory but copies nothing.
                    let entry = IndexEntry::new(&record, &polled.origin, self.sinks.store.bucket());
                    stored.push((polled, entry));
                }
                Err(Stopped::Permanent(StoreError::Conflict { key, existing })) => {
                    letters.push(letter(
                        &polled,
                        "object-conflict",
                        "conflict",
                        format!(
                            "image {} claims key {key}, which already holds different bytes (sha256 {existing}, this record {})",
                            record.image_id, record.sha256
                        ),
                    ));
                }
                Err(Stopped::Permanent(e @ StoreError::ChecksumMismatch { .. })) => {
                    letters.push(letter(
                        &polled,
                        "checksum-mismatch",
                        "invalid",
                        format!("image {}: {e}", record.image_id),
                    ));
                }
                Err(Stopped::Permanent(e)) => return Err(BatchError::Fatal(e.into())),
                Err(Stopped::Shutdown(_)) => return Err(BatchError::Shutdown),
            }
        }
        Ok(stored)
    }

    /// Step 2: rows, one statement for the batch.
    async fn index_rows(
        &self,
        stored: Vec<(Polled, IndexEntry)>,
        letters: &mut Vec<DeadLetter>,
    ) -> Result<(), BatchError> {
        if stored.is_empty() {
            return Ok(());
        }
        let (polled, entries): (Vec<Polled>, Vec<IndexEntry>) = stored.into_iter().unzip();
        let index = &self.sinks.index;
        let outcomes = match retry(
            &INDEX_OUTAGE,
            self.opts.backoff,
            &self.shutdown,
            IndexError::is_transient,
            || index.insert_batch(&entries),
        )
        .await
        {
            Ok(o) => o,
            Err(Stopped::Permanent(e)) => return Err(BatchError::Fatal(e.into())),
            Err(Stopped::Shutdown(_)) => return Err(BatchError::Shutdown),
        };
        for ((polled, record), outcome) in polled.iter().zip(&entries).zip(outcomes) {
            match outcome {
                InsertOutcome::Inserted | InsertOutcome::AlreadyIndexed => {
                    self.stats.stored.fetch_add(1, Ordering::Relaxed);
                    self.stats.bytes.fetch_add(record.size_bytes as u64, Ordering::Relaxed);
                }
                InsertOutcome::Conflict { existing } => letters.push(letter(
                    polled,
                    "index-conflict",
                    "conflict",
                    format!(
                        "image {} is already indexed with different metadata (customer {}, sha256 {}, from {}/{}@{})",
                        record.image_id,
                        existing.customer_id,
                        existing.sha256,
                        existing.kafka_topic,
                        existing.kafka_partition,
                        existing.kafka_offset
                    ),
                )),
            }
        }
        Ok(())
    }

    /// Step 3: dead letters, each acknowledged before the offset moves past it.
    async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), BatchError> {
        let dlq = &self.sinks.dlq;
        let results: Vec<_> = futures::stream::iter(letters)
            .map(|l| async move {
                let r = retry(
                    &KAFKA_OUTAGE,
                    self.opts.backoff,
                    &self.shutdown,
                    BrokerError::is_transient,
                    || dlq.send(l),
                )
                .await;
                (l, r)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (l, r) in results {
            match r {
                Ok(()) => {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    warn!(origin = %l.origin, code = l.code, reason = %l.reason, "record dead-lettered");
                }
                Err(Stopped::Permanent(e)) => return Err(BatchError::Fatal(e.into())),
                Err(Stopped::Shutdown(_)) => return Err(BatchError::Shutdown),
            }
        }
        Ok(())
    }

    /// Step 4: offsets. The batch's positions join the ledger of done-but-uncommitted offsets,
    /// and everything in it that this member still owns is committed. A commit refused because
    /// the group is rebalancing stays in the ledger: it is retried once the group has settled, or
    /// flushed by the revocation callback before the partition is handed over. Losing it anyway
    /// (a crash) only means the next owner replays those records, idempotently.
    async fn commit(&self, positions: &BTreeMap<(String, i32), i64>) -> Result<(), BatchError> {
        self.consumer.context().ledger.record(positions);
        self.flush_ledger().await
    }

    async fn flush_ledger(&self) -> Result<(), BatchError> {
        let Ok(assignment) = self.consumer.assignment() else {
            return Ok(());
        };
        let owned: HashSet<(String, i32)> = assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let ledger = &self.consumer.context().ledger;
        let tpl = ledger.pending(|t, p| owned.contains(&(t.to_string(), p)));
        if tpl.count() == 0 {
            return Ok(());
        }
        // On the blocking pool: a synchronous commit must not freeze the other stages.
        let attempt = || {
            let (consumer, tpl) = (self.consumer.clone(), tpl.clone());
            async move {
                tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
                    .await
                    .unwrap_or(Err(KafkaError::Canceled))
            }
        };
        match retry(
            &KAFKA_OUTAGE,
            self.opts.backoff,
            &self.shutdown,
            commit_is_transient,
            attempt,
        )
        .await
        {
            Ok(()) => {
                ledger.committed(&tpl);
                Ok(())
            }
            Err(Stopped::Permanent(e)) => {
                self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "offset commit deferred until the group settles");
                Ok(())
            }
            Err(Stopped::Shutdown(_)) => Err(BatchError::Shutdown),
        }
    }
}

struct PolledBatch {
    positions: BTreeMap<(String, i32), i64>,
    records: Vec<Polled>,
}

struct CheckedBatch {
    positions: BTreeMap<(String, i32), i64>,
    valid: Vec<(Polled, ImageRecord)>,
    letters: Vec<DeadLetter>,
}

struct StoredBatch {
    positions: BTreeMap<(String, i32), i64>,
    stored: Vec<(Polled, IndexEntry)>,
    letters: Vec<DeadLetter>,
}

enum BatchError {
    Shutdown,
    Fatal(PipelineError),
}

/// Commit errors that pass with time; generation and membership errors do not (we are no longer
/// the owner) and are handled by moving on.
fn commit_is_transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    !matches!(
        e.rdkafka_error_code(),
        Some(
            C::IllegalGeneration
                | C::UnknownMemberId
                | C::RebalanceInProgress
                | C::FencedInstanceId
                | C::StaleMemberEpoch
                | C::UnknownPartition
                | C::UnknownTopicOrPartition
                | C::AssignmentLost
                | C::NoOffset
                | C::State
        )
    )
}

/// Per partition, one past the highest offset in the batch.
fn next_offsets(batch: &[Polled]) -> BTreeMap<(String, i32), i64> {
    let mut next = BTreeMap::new();
    for p in batch {
        let e = next
            .entry((p.origin.topic.clone(), p.origin.partition))
            .or_insert(p.origin.offset + 1);
        *e = (*e).max(p.origin.offset + 1);
    }
    next
}

type SchemaLookup =
    BTreeMap<u32, Result<Arc<crate::schema::codec::Writer>, (&'static str, String)>>;

fn check_one(
    codec: &ImageCodec,
    schemas: &SchemaLookup,
    limits: &Limits,
    polled: Polled,
) -> Checked {
    let (id, _) = match crate::schema::wire::split(&polled.payload) {
        Ok(split) => split,
        Err(e) => {
            let e = DecodeError::from(e);
            return Checked::Refused(letter(&polled, e.code(), "invalid", e.to_string()));
        }
    };
    let schema = match schemas.get(&id) {
        Some(Ok(s)) => s,
        Some(Err((code, reason))) => {
            return Checked::Refused(letter(&polled, code, "invalid", reason.clone()));
        }
        None => {
            return Checked::Refused(letter(
                &polled,
                "unknown-schema-id",
                "invalid",
                format!("schema id {id} unresolved"),
            ));
        }
    };
    let record = match codec.decode_with(schema, id, &polled.payload) {
        Ok(r) => r,
        Err(e) => return Checked::Refused(letter(&polled, e.code(), "invalid", e.to_string())),
    };
    match validate(&record, limits) {
        Ok(_) => Checked::Valid(polled, record),
        Err(invalid) => Checked::Refused(letter(
            &polled,
            invalid.code(),
            "invalid",
            format!("image {}: {invalid}", record.image_id),
        )),
    }
}

fn letter(polled: &Polled, code: &'static str, class: &'static str, reason: String) -> DeadLetter {
    DeadLetter {
        origin: polled.origin.clone(),
        key: polled.key.clone(),
        payload: polled.payload.to_vec(),
        original_timestamp_ms: polled.timestamp_ms,
        code,
        class,
        reason,
    }
}

/// Logs a summary line for the end of a run.
pub fn log_summary(stats: &Stats, elapsed: Duration, reason: StopReason) {
    let stored = stats.stored.load(Ordering::Relaxed);
    let bytes = stats.bytes.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-9);
    info!(
        ?reason,
        stored,
        replayed = stats.replayed.load(Ordering::Relaxed),
        dead_lettered = stats.dead_lettered.load(Ordering::Relaxed),
        bytes,
        images_per_sec = stored as f64 / secs,
        mb_per_sec = bytes as f64 / secs / 1e6,
        "consumer stopped"
    );
}

/// The end-of-run figures as JSON, for scripts.
pub fn summary_json(stats: &Stats, elapsed: Duration, reason: StopReason) -> String {
    let stored = stats.stored.load(Ordering::Relaxed);
    let bytes = stats.bytes.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let busy = stats.busy_secs();
    let usage = usage::own();
    serde_json::json!({
        "stopped": format!("{reason:?}").to_lowercase(),
        "busy_secs": busy,
        "busy_images_per_sec": if busy > 0.0 { stored as f64 / busy } else { 0.0 },
        "busy_mb_per_sec": if busy > 0.0 { bytes as f64 / busy / 1e6 } else { 0.0 },
        "peak_rss_kib": usage.peak_rss_kib,
        "cpu_secs": usage.cpu_secs,
        "stored": stored,
        "replayed": stats.replayed.load(Ordering::Relaxed),
        "dead_lettered": stats.dead_lettered.load(Ordering::Relaxed),
        "bytes": bytes,
        "elapsed_secs": secs,
        "images_per_sec": stored as f64 / secs,
        "mb_per_sec": bytes as f64 / secs / 1e6,
        "commit_failures": stats.commit_failures.load(Ordering::Relaxed),
    })
    .to_string()
}
