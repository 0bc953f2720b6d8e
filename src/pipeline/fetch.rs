//! Stage 1, fetch: poll batches from the source until idle, the record limit, or shutdown.

use super::ports::next_positions;
use super::{
    BatchError, BatchLimits, Failure, Pipeline, Polled, PolledBatch, Positions, StopReason,
};
use crate::telemetry::spans::RecordSpans;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::debug;

impl Pipeline {
    pub(super) async fn fetch_stage(
        &self,
        tx: mpsc::Sender<PolledBatch>,
    ) -> Result<StopReason, BatchError> {
        let source = &self.ports.source;
        let mut last_record = Instant::now();
        let mut fetched = 0u64;
        loop {
            // A later stage that stopped (a fatal error) has dropped its receiver: its result
            // says why.
            if self.shutdown.is_triggered() || tx.is_closed() {
                return Ok(StopReason::Shutdown);
            }
            if self.opts.max_records.is_some_and(|max| fetched >= max) {
                return Ok(StopReason::MaxRecords);
            }
            let remaining = self
                .opts
                .max_records
                .map_or(usize::MAX, |m| (m - fetched) as usize);
            let limits = BatchLimits {
                max_records: self.opts.batch_max_records.min(remaining).max(1),
                max_bytes: self.opts.batch_max_bytes,
                wait: self.opts.poll_wait,
                linger: self.opts.batch_linger,
            };
            // Within the memory bound: the batches in flight give their bytes back as they are
            // committed.
            tokio::select! {
                _ = self.held.room() => {}
                _ = self.shutdown.triggered() => return Ok(StopReason::Shutdown),
                _ = tx.closed() => return Ok(StopReason::Shutdown),
            }
            let polling = Instant::now();
            // A batch cut short by shutdown is dropped: nothing of it is committed, so a restart
            // reads it again.
            let polled = tokio::select! {
                polled = source.poll(limits) => polled,
                _ = self.shutdown.triggered() => return Ok(StopReason::Shutdown),
                _ = tx.closed() => return Ok(StopReason::Shutdown),
            };
            let batch = match polled {
                Ok(batch) => batch,
                // The source reconnects by itself; an outage is not idleness.
                Err(Failure::Transient(e)) => {
                    debug!(error = %e, "poll failed; the source is reconnecting");
                    last_record = Instant::now();
                    continue;
                }
                Err(Failure::Fatal(e)) => return Err(BatchError::fatal(e)),
            };
            if batch.is_empty() {
                // A commit deferred by a rebalance goes through once the group has settled.
                self.commit_positions(&Positions::new()).await?;
                // Idle means "owning partitions and nothing new", not "still waiting to join": after
                // a crash the group holds the dead member's partitions until its session expires.
                if source.assignment().is_empty() {
                    last_record = Instant::now();
                } else if let Some(idle) = self.opts.until_idle
                    && last_record.elapsed() >= idle
                    && self.caught_up().await
                {
                    return Ok(StopReason::Idle);
                }
                continue;
            }
            last_record = Instant::now();
            self.stats.first_record.get_or_init(Instant::now);
            self.stats
                .polled
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            fetched += batch.len() as u64;
            debug!(
                records = batch.len(),
                polled_in = ?polling.elapsed(),
                uploads_running = self.stats.uploads_running.load(Ordering::Relaxed),
                "batch polled"
            );
            let positions = next_positions(&batch);
            let spans = RecordSpans::start(batch.iter().map(|p| (&p.origin, &p.headers[..])));
            if tx
                .send(PolledBatch {
                    positions,
                    held: self.held.hold(batch.iter().map(Polled::size).sum()),
                    records: batch,
                    spans,
                })
                .await
                .is_err()
            {
                // A later stage stopped; its result says why.
                return Ok(StopReason::Shutdown);
            }
        }
    }

    /// Quiet is not enough to call a run idle: after a broker restart a member can sit without
    /// records while it rejoins, with work still waiting. Idle also needs the committed offsets
    /// at the end of every partition this member owns.
    async fn caught_up(&self) -> bool {
        match self.ports.source.caught_up().await {
            Ok(true) => true,
            Ok(false) => {
                debug!("quiet, but committed offsets are behind the end: not idle");
                false
            }
            Err(e) => {
                debug!(error = %e, "cannot tell whether the group is caught up: not idle");
                false
            }
        }
    }
}
