//! Stage 3, upload: each valid image becomes one object, many in flight. At least
//! `batches_in_flight` batches upload at once (a semaphore caps uploads overall), and more join
//! while upload slots would otherwise sit idle; finished batches wait in fetch order for the
//! commit stage, and uploads keep going while they wait.

use super::key_order::{KeyOrder, Turn};
use super::leaving::{LeftBehind, Started};
use super::ports::DeadLetter;
use super::retry::{Stopped, retry};
use super::{BatchError, CheckedBatch, Failure, Pipeline, Polled, Put, Stage, StoredBatch};
use crate::domain::{ImageRecord, IndexEntry};
use crate::telemetry::spans::RecordSpans;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::{Notify, Semaphore, mpsc};
use tracing::debug;

/// Records admitted to the upload stage whose upload has not finished yet; each one that
/// finishes wakes the stage, which may then admit another batch.
#[derive(Default)]
struct Unfinished {
    records: AtomicUsize,
    one_finished: Notify,
}

impl Unfinished {
    fn finished(&self) {
        self.records.fetch_sub(1, Ordering::Relaxed);
        self.one_finished.notify_one();
    }
}

/// What the batches uploading at once share.
struct InFlight<'a> {
    /// Upload slots, for the whole pipeline.
    slots: &'a Semaphore,
    unfinished: Unfinished,
    started: Started,
}

impl Pipeline {
    pub(super) async fn upload_stage(
        &self,
        mut rx: mpsc::Receiver<CheckedBatch>,
        tx: mpsc::Sender<StoredBatch>,
        uploads: &Semaphore,
    ) -> Result<(), BatchError> {
        let floor = self.opts.batches_in_flight.max(1);
        let slots = self.opts.uploads_in_flight.max(1);
        // A batch of large images holds few records (16 MiB makes eight 2 MiB images), and a
        // batch leaves only when its slowest upload is done: three such batches kept 14-26 of
        // 32 slots busy. So further batches join while fewer records wait than there are slots,
        // up to twice the floor (each batch within `batch_max_bytes`: the memory bound).
        let most_batches = 2 * floor;
        let key_order = KeyOrder::default();
        let in_flight = InFlight {
            slots: uploads,
            unfinished: Unfinished::default(),
            started: Started::default(),
        };
        let unfinished = &in_flight.unfinished;
        let mut uploading = FuturesOrdered::new();
        let mut done: VecDeque<StoredBatch> = VecDeque::new();
        let mut input_open = true;
        loop {
            if !input_open && uploading.is_empty() && done.is_empty() {
                return Ok(());
            }
            let admit = input_open
                && (uploading.len() < floor
                    || (uploading.len() < most_batches
                        && unfinished.records.load(Ordering::Relaxed) < slots));
            tokio::select! {
                batch = rx.recv(), if admit => match batch {
                    Some(batch) => {
                        // Places in line are taken here, as batches arrive in offset order and
                        // before any of their uploads start.
                        let turns = key_order.register(&batch.valid);
                        unfinished.records.fetch_add(batch.valid.len(), Ordering::Relaxed);
                        uploading.push_back(self.upload_batch(batch, turns, &in_flight));
                    }
                    None => input_open = false,
                },
                Some(batch) = uploading.next(), if done.len() < floor => {
                    done.push_back(batch?);
                }
                // An upload finished: there may be room for another batch now.
                _ = unfinished.one_finished.notified(), if input_open && !admit => {}
                permit = tx.reserve(), if !done.is_empty() => match permit {
                    Ok(permit) => permit.send(done.pop_front().expect("non-empty")),
                    Err(_) => return Ok(()),
                },
                // The commit stage stopped (a fatal error): its result says why.
                _ = tx.closed() => return Ok(()),
            }
        }
    }

    async fn upload_batch(
        &self,
        batch: CheckedBatch,
        turns: Vec<Turn<'_>>,
        in_flight: &InFlight<'_>,
    ) -> Result<StoredBatch, BatchError> {
        let mut letters = batch.letters;
        let mut positions = batch.positions;
        let (records, started) = (batch.valid.len(), Instant::now());
        let (stored, left) = self
            .put_objects(batch.valid, turns, &mut letters, in_flight, &batch.spans)
            .await?;
        if !left.0.is_empty() {
            self.settle_left_behind(&left.0, &mut positions, &mut letters, left.1);
        }
        debug!(records, took = ?started.elapsed(), "batch uploaded");
        self.stats.stage_took(Stage::Upload, started.elapsed());
        Ok(StoredBatch {
            positions,
            held: batch.held,
            stored,
            letters,
            spans: batch.spans,
        })
    }

    /// Returns the records whose object is now stored, and those left behind because their
    /// partition is being taken away (with how many); refused ones join `letters`.
    async fn put_objects(
        &self,
        valid: Vec<(Polled, ImageRecord)>,
        turns: Vec<Turn<'_>>,
        letters: &mut Vec<DeadLetter>,
        in_flight: &InFlight<'_>,
        spans: &RecordSpans,
    ) -> Result<(Vec<(Polled, IndexEntry)>, (LeftBehind, u64)), BatchError> {
        let images = &self.ports.images;
        let results: Vec<_> = futures::stream::iter(valid.into_iter().zip(turns))
            .map(|((polled, record), turn)| async move {
                // From waiting for its turn and a slot to the object's write, retries included.
                let span = spans.record_stage(&polled.origin, "upload");
                // The earliest record of an image id writes first; the wait comes before taking
                // an upload slot, so waiting never holds up other uploads. A record left behind
                // still waits for its turn, so its successor cannot overtake its predecessor.
                turn.wait().await;
                if !self.may_wait_for_a_slot(&in_flight.started, &polled) {
                    in_flight.unfinished.finished();
                    return (polled, record, None);
                }
                let _permit = in_flight
                    .slots
                    .acquire()
                    .await
                    .expect("upload semaphore is never closed");
                // Most of a record's wait is for a slot: a hand-over may have begun meanwhile.
                if !self.starts_upload(&in_flight.started, &polled) {
                    in_flight.unfinished.finished();
                    return (polled, record, None);
                }
                self.stats.uploads_running.fetch_add(1, Ordering::Relaxed);
                let writing = Instant::now();
                let result = retry(
                    &self.stats.outages.store,
                    self.opts.backoff,
                    &self.shutdown,
                    Failure::is_transient,
                    || images.put(&record),
                )
                .await;
                self.stats.uploads_running.fetch_sub(1, Ordering::Relaxed);
                self.stats
                    .upload_micros
                    .fetch_add(writing.elapsed().as_micros() as u64, Ordering::Relaxed);
                in_flight.unfinished.finished();
                drop(turn);
                drop(span);
                (polled, record, Some(result))
            })
            .buffer_unordered(self.opts.uploads_in_flight.max(1))
            .collect()
            .await;

        let mut stored = Vec::with_capacity(results.len());
        let mut left = (LeftBehind::default(), 0);
        for (polled, record, result) in results {
            let Some(result) = result else {
                left.0.add(&polled.origin);
                left.1 += 1;
                continue;
            };
            match result {
                // The record's value travels on with its index entry until the row is written: an
                // index conflict dead-letters the original bytes. It shares the source's buffer,
                // so this holds memory but copies nothing.
                Ok(Put::Created | Put::AlreadyStored) => {
                    let entry = IndexEntry::new(&record, &polled.origin, images.bucket());
                    stored.push((polled, entry));
                }
                Ok(Put::Refused(refusal)) => letters.push(DeadLetter::new(&polled, refusal)),
                Err(Stopped::Permanent(e)) => return Err(BatchError::fatal(e.to_string())),
                Err(Stopped::Shutdown(_)) => return Err(BatchError::Shutdown),
            }
        }
        Ok((stored, left))
    }
}
