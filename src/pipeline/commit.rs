//! Stage 4b, commit: rows, then dead letters, then offsets — one batch at a time, in fetch order.

use super::ports::DeadLetter;
use super::retry::{Stopped, retry};
use super::{BatchError, Committed, Failure, Pipeline, Positions, Stage, StoredBatch};
use crate::telemetry::spans::RecordSpans;
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Dead letters in flight at once.
const LETTERS_IN_FLIGHT: usize = 16;

impl Pipeline {
    pub(super) async fn commit_stage(
        &self,
        mut rx: mpsc::Receiver<StoredBatch>,
    ) -> Result<(), BatchError> {
        while let Some(batch) = rx.recv().await {
            let mut letters = batch.letters;
            let spans = batch.spans;
            let started = Instant::now();
            let indexing =
                spans.records_stage(batch.stored.iter().map(|(p, _)| &p.origin), "index");
            self.index_rows(batch.stored, &mut letters).await?;
            drop(indexing);
            let indexed = started.elapsed();
            self.stats.stage_took(Stage::Index, indexed);
            let committing = spans.stage("commit");
            self.dead_letter(&letters, &spans).await?;
            self.commit_positions(&batch.positions).await?;
            drop(committing);
            // The records' spans end here: their batch is committed. Its bytes were let go
            // with its rows and letters; the budget hears of it now.
            drop(spans);
            drop(batch.held);
            self.stats
                .stage_took(Stage::Commit, started.elapsed().saturating_sub(indexed));
            debug!(?indexed, total = ?started.elapsed(), "batch indexed and committed");
            self.stats.batch_committed();
        }
        Ok(())
    }

    /// Dead letters, each acknowledged before the offset moves past it.
    async fn dead_letter(
        &self,
        letters: &[DeadLetter],
        spans: &RecordSpans,
    ) -> Result<(), BatchError> {
        let sink = &self.ports.dead_letters;
        let results: Vec<_> = futures::stream::iter(letters)
            .map(|letter| async move {
                let sent = retry(
                    &self.stats.outages.kafka,
                    self.opts.backoff,
                    &self.shutdown,
                    Failure::is_transient,
                    || sink.send(letter),
                )
                .await;
                (letter, sent)
            })
            .buffer_unordered(LETTERS_IN_FLIGHT)
            .collect()
            .await;
        for (letter, sent) in results {
            match sent {
                Ok(()) => {
                    let refusal = &letter.refusal;
                    self.stats.count_dead_letter(refusal.code());
                    spans.dead_lettered(&letter.origin, refusal.code());
                    warn!(origin = %letter.origin, code = refusal.code(), reason = %letter.reason, "record dead-lettered");
                }
                Err(Stopped::Permanent(e)) => return Err(BatchError::fatal(e.to_string())),
                Err(Stopped::Shutdown(_)) => return Err(BatchError::Shutdown),
            }
        }
        Ok(())
    }

    /// Offsets: `done` joins what is done but not yet committed, and the source commits what this
    /// member still owns. A commit refused because the group is rebalancing is kept by the source
    /// and goes through once the group has settled (an empty `done` asks for exactly that).
    /// Losing it anyway (a crash) only means the next owner replays those records, idempotently.
    pub(super) async fn commit_positions(&self, done: &Positions) -> Result<(), BatchError> {
        let source = &self.ports.source;
        match retry(
            &self.stats.outages.kafka,
            self.opts.backoff,
            &self.shutdown,
            Failure::is_transient,
            || source.commit(done),
        )
        .await
        {
            Ok(Committed::Done) => Ok(()),
            Ok(Committed::Deferred) => {
                self.stats.commits_deferred.fetch_add(1, Ordering::Relaxed);
                debug!("offset commit deferred until the group settles");
                Ok(())
            }
            Err(Stopped::Permanent(e)) => Err(BatchError::fatal(e.to_string())),
            Err(Stopped::Shutdown(_)) => Err(BatchError::Shutdown),
        }
    }
}
