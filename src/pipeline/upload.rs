//! Stage 3, upload: each valid image becomes one object, many in flight. Up to
//! `batches_in_flight` batches upload at once (a semaphore caps uploads overall); finished batches
//! wait in fetch order for the commit stage, and uploads keep going while they wait.

use super::key_order::{KeyOrder, Turn};
use super::refusal::DeadLetter;
use super::retry::{Stopped, retry};
use super::{BatchError, CheckedBatch, Failure, Pipeline, Polled, Put, StoredBatch};
use crate::domain::{ImageRecord, IndexEntry};
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::{Semaphore, mpsc};
use tracing::debug;

impl Pipeline {
    pub(super) async fn upload_stage(
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
                    self.upload_batch(batch, turns, uploads)
                })
                .buffered(in_flight)
        );
        let mut done: VecDeque<StoredBatch> = VecDeque::new();
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
                // The commit stage stopped (a fatal error): its result says why.
                _ = tx.closed() => return Ok(()),
            }
        }
    }

    async fn upload_batch(
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

    /// Returns the records whose object is now stored; refused ones join `letters`.
    async fn put_objects(
        &self,
        valid: Vec<(Polled, ImageRecord)>,
        turns: Vec<Turn<'_>>,
        letters: &mut Vec<DeadLetter>,
        uploads: &Semaphore,
    ) -> Result<Vec<(Polled, IndexEntry)>, BatchError> {
        let images = &self.ports.images;
        let results: Vec<_> = futures::stream::iter(valid.into_iter().zip(turns))
            .map(|((polled, record), turn)| async move {
                // The earliest record of an image id writes first; the wait comes before taking
                // an upload slot, so waiting never holds up other uploads.
                turn.wait().await;
                let _permit = uploads
                    .acquire()
                    .await
                    .expect("upload semaphore is never closed");
                self.stats.uploads_running.fetch_add(1, Ordering::Relaxed);
                let result = retry(
                    &self.stats.outages.store,
                    self.opts.backoff,
                    &self.shutdown,
                    Failure::is_transient,
                    || images.put(&record),
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
        Ok(stored)
    }
}
