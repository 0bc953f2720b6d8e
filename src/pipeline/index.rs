//! Stage 4a, index: one idempotent statement for the rows of a batch whose objects are stored.

use super::ports::DeadLetter;
use super::refusal::Refusal;
use super::retry::{Stopped, retry};
use super::{BatchError, Failure, Indexed, Pipeline, Polled};
use crate::domain::IndexEntry;
use std::sync::atomic::Ordering;

impl Pipeline {
    /// Writes the rows; a row that conflicts with an existing one sends its record to `letters`.
    pub(super) async fn index_rows(
        &self,
        stored: Vec<(Polled, IndexEntry)>,
        letters: &mut Vec<DeadLetter>,
    ) -> Result<(), BatchError> {
        if stored.is_empty() {
            return Ok(());
        }
        let (polled, entries): (Vec<Polled>, Vec<IndexEntry>) = stored.into_iter().unzip();
        let index = &self.ports.index;
        let outcomes = match retry(
            &self.stats.outages.index,
            self.opts.backoff,
            &self.shutdown,
            Failure::is_transient,
            || index.insert(&entries),
        )
        .await
        {
            Ok(outcomes) if outcomes.len() == entries.len() => outcomes,
            Ok(outcomes) => {
                return Err(BatchError::fatal(format!(
                    "the index answered {} outcomes for {} rows",
                    outcomes.len(),
                    entries.len()
                )));
            }
            Err(Stopped::Permanent(e)) => return Err(BatchError::fatal(e.to_string())),
            Err(Stopped::Shutdown(_)) => return Err(BatchError::Shutdown),
        };
        for ((polled, entry), outcome) in polled.iter().zip(&entries).zip(outcomes) {
            match outcome {
                Indexed::Inserted => {
                    self.stats.count_stored(entry.size_bytes as u64);
                    self.stats.indexed_record(polled.timestamp_ms);
                }
                Indexed::AlreadyIndexed => {
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                }
                // An erasure came after this record was checked: no row, and its object is
                // the eraser's to remove. Not a dead letter: its bytes are to be forgotten.
                Indexed::Erased => {
                    self.stats.erased.fetch_add(1, Ordering::Relaxed);
                }
                Indexed::Conflict(existing) => letters.push(DeadLetter::new(
                    polled,
                    Refusal::IndexConflict {
                        image_id: entry.image_id,
                        existing,
                    },
                )),
                // Its object stays behind without a row: `verify --repair` removes such orphans.
                Indexed::Refused(detail) => letters.push(DeadLetter::new(
                    polled,
                    Refusal::IndexRefused {
                        image_id: entry.image_id,
                        detail,
                    },
                )),
            }
        }
        Ok(())
    }
}
