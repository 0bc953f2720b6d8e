//! Stage 2, check: decode each record against its writer's schema and validate it, on the
//! blocking pool, while the next batch is being fetched.

use super::Failure;
use super::ports::DeadLetter;
use super::refusal::Refusal;
use super::retry::{Stopped, retry};
use super::{BatchError, CheckedBatch, Pipeline, Polled, PolledBatch, Stage};
use crate::domain::{ErasureProbe, ImageRecord};
use crate::schema::codec::Writer;
use crate::schema::{DecodeError, ImageCodec, wire};
use crate::validate::{Limits, validate};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::debug;

/// The writer schema of each id in a batch, or why records with that id are refused.
pub type WriterSchemas = BTreeMap<u32, Result<Arc<Writer>, Refusal>>;

impl Pipeline {
    pub(super) async fn check_stage(
        &self,
        mut rx: mpsc::Receiver<PolledBatch>,
        tx: mpsc::Sender<CheckedBatch>,
    ) -> Result<(), BatchError> {
        loop {
            // Stop as soon as the next stage has stopped, even with nothing arriving: otherwise
            // a fatal error downstream would wait for the next record to be noticed.
            let batch = tokio::select! {
                batch = rx.recv() => batch,
                _ = tx.closed() => return Ok(()),
            };
            let Some(mut batch) = batch else {
                return Ok(());
            };
            // A hand-over may have begun while the batch waited.
            self.leave_behind_unstarted(&mut batch.positions, &mut batch.records);
            let checking = Instant::now();
            let spans = batch.spans.stage("check");
            let mut valid = Vec::new();
            let mut letters = Vec::new();
            for (polled, checked) in self.decode_and_validate(batch.records).await? {
                match checked {
                    Ok(record) => valid.push((polled, record)),
                    Err(refusal) => letters.push(DeadLetter::new(&polled, refusal)),
                }
            }
            let valid = self.drop_erased(valid).await?;
            drop(spans);
            debug!(checked_in = ?checking.elapsed(), "batch checked");
            self.stats.stage_took(Stage::Check, checking.elapsed());
            let checked = CheckedBatch {
                positions: batch.positions,
                held: batch.held,
                valid,
                letters,
                spans: batch.spans,
            };
            if tx.send(checked).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Leaves out the records an erasure covers: they are neither uploaded nor dead-lettered
    /// (a letter would carry the bytes to forget), only counted, and their offsets committed
    /// with the batch. An erasure recorded after this question is caught by the index
    /// transaction instead ([`super::ports::IndexSink::insert`]).
    async fn drop_erased(
        &self,
        valid: Vec<(Polled, ImageRecord)>,
    ) -> Result<Vec<(Polled, ImageRecord)>, BatchError> {
        if valid.is_empty() {
            return Ok(valid);
        }
        let probes: Vec<ErasureProbe> = valid.iter().map(|(_, r)| ErasureProbe::of(r)).collect();
        let index = &self.ports.index;
        let erased = match retry(
            &self.stats.outages.index,
            self.opts.backoff,
            &self.shutdown,
            Failure::is_transient,
            || index.erased(&probes),
        )
        .await
        {
            Ok(erased) if erased.len() == valid.len() => erased,
            Ok(erased) => {
                return Err(BatchError::fatal(format!(
                    "the index answered {} erasure checks for {} records",
                    erased.len(),
                    valid.len()
                )));
            }
            Err(Stopped::Permanent(e)) => return Err(BatchError::fatal(e.to_string())),
            Err(Stopped::Shutdown(_)) => return Err(BatchError::Shutdown),
        };
        let mut kept = Vec::with_capacity(valid.len());
        for ((polled, record), erased) in valid.into_iter().zip(erased) {
            if erased {
                self.stats.erased.fetch_add(1, Ordering::Relaxed);
                debug!(origin = %polled.origin, image_id = %record.image_id, "record erased: not stored");
            } else {
                kept.push((polled, record));
            }
        }
        Ok(kept)
    }

    async fn decode_and_validate(
        &self,
        batch: Vec<Polled>,
    ) -> Result<Vec<(Polled, Result<ImageRecord, Refusal>)>, BatchError> {
        let schemas = Arc::new(self.writer_schemas(&batch).await?);
        // Decoding and validation are CPU work: split over the blocking pool, one chunk per core.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chunk = batch.len().div_ceil(cores).max(1);
        let mut tasks = Vec::new();
        let mut batch = batch;
        while !batch.is_empty() {
            let rest = batch.split_off(chunk.min(batch.len()));
            let part = std::mem::replace(&mut batch, rest);
            let codec = self.ports.codec.clone();
            let schemas = schemas.clone();
            let limits = self.opts.limits;
            tasks.push(tokio::task::spawn_blocking(move || {
                part.into_iter()
                    .map(|p| {
                        let checked = check_one(&codec, &schemas, &limits, &p);
                        (p, checked)
                    })
                    .collect::<Vec<_>>()
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.extend(
                task.await
                    .map_err(|e| BatchError::fatal(format!("record check stopped: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Writer schemas are fetched (once per id, then cached by the codec) before the CPU work
    /// starts, so the only waiting on the registry happens here, with retries. A registry that
    /// refuses us (credentials, a wrong address) stops the consumer: it is not the records' fault,
    /// and dead-lettering them would lose them for a configuration mistake.
    async fn writer_schemas(&self, batch: &[Polled]) -> Result<WriterSchemas, BatchError> {
        let ids: std::collections::BTreeSet<u32> = batch
            .iter()
            .filter_map(|p| wire::split(p.payload()).ok().map(|(id, _)| id))
            .collect();
        let codec = &self.ports.codec;
        let mut schemas = WriterSchemas::new();
        for id in ids {
            let fetched = retry(
                &self.stats.outages.registry,
                self.opts.backoff,
                &self.shutdown,
                DecodeError::is_transient,
                || codec.writer_schema(id),
            )
            .await;
            let entry = match fetched {
                Ok(schema) => Ok(schema),
                Err(Stopped::Permanent(e @ DecodeError::Registry { .. })) => {
                    return Err(BatchError::fatal(format!(
                        "{e}; check SCHEMA_REGISTRY_URL and the registry's credentials"
                    )));
                }
                Err(Stopped::Permanent(e)) => Err(Refusal::from_decode(&e)),
                Err(Stopped::Shutdown(_)) => return Err(BatchError::Shutdown),
            };
            schemas.insert(id, entry);
        }
        Ok(schemas)
    }
}

/// One record's verdict, from its bytes alone once its writer schema is known: the record to
/// store, or why it is refused. Whatever the bytes, this returns (the fuzz tests hold it to that).
pub fn check_one(
    codec: &ImageCodec,
    schemas: &WriterSchemas,
    limits: &Limits,
    polled: &Polled,
) -> Result<ImageRecord, Refusal> {
    let payload = polled.value.clone().unwrap_or_default();
    let (id, _) = wire::split(&payload).map_err(|e| Refusal::from_decode(&e.into()))?;
    let schema = match schemas.get(&id) {
        Some(Ok(s)) => s,
        Some(Err(refusal)) => return Err(refusal.clone()),
        None => return Err(Refusal::from_decode(&DecodeError::UnknownSchema(id))),
    };
    let record = codec
        .decode_with(schema, id, &payload)
        .map_err(|e| Refusal::from_decode(&e))?;
    match validate(&record, limits) {
        Ok(_) => Ok(record),
        Err(invalid) => Err(Refusal::Invalid {
            image_id: record.image_id,
            invalid,
        }),
    }
}
