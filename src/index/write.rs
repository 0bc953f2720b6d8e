//! Writing rows: the index sink port. Rows are written here and nowhere else.

use super::erasure::{ERASURE_LOCK, erased_positions};
use super::{ImageIndex, IndexError};
use crate::domain::{ErasureProbe, IndexEntry};
use crate::pipeline::{Failure, IndexSink, Indexed};
use futures::future::BoxFuture;
use std::collections::HashMap;
use uuid::Uuid;

/// The index sink port.
impl IndexSink for ImageIndex {
    fn insert<'a>(
        &'a self,
        entries: &'a [IndexEntry],
    ) -> BoxFuture<'a, Result<Vec<Indexed>, Failure>> {
        Box::pin(async move {
            match self.insert_batch(entries).await {
                Ok(indexed) => Ok(indexed),
                // One statement writes the whole batch, so one row's refusal fails it all: find
                // the rows at fault one by one, and write the others.
                Err(IndexError::RowRefused { .. }) => self.insert_one_by_one(entries).await,
                Err(e) => Err(Failure::from(self.explained(e).await)),
            }
        })
    }

    fn erased<'a>(
        &'a self,
        probes: &'a [ErasureProbe],
    ) -> BoxFuture<'a, Result<Vec<bool>, Failure>> {
        Box::pin(async move {
            match self.erased_among(probes).await {
                Ok(erased) => Ok(erased),
                Err(e) => Err(Failure::from(self.explained(e).await)),
            }
        })
    }
}

impl ImageIndex {
    /// Each entry in a statement of its own; a row PostgreSQL refuses is that row's outcome.
    async fn insert_one_by_one(&self, entries: &[IndexEntry]) -> Result<Vec<Indexed>, Failure> {
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            match self.insert_batch(std::slice::from_ref(entry)).await {
                Ok(mut one) => outcomes.append(&mut one),
                Err(IndexError::RowRefused { detail }) => outcomes.push(Indexed::Refused(detail)),
                Err(e) => return Err(Failure::from(self.explained(e).await)),
            }
        }
        Ok(outcomes)
    }
}

impl ImageIndex {
    /// Inserts a batch in one statement. Existing rows are never changed: each entry comes back as
    /// inserted, already indexed (identical), in conflict with what is there, or erased.
    ///
    /// Erased entries are left out under the erasure lock, and their objects named as leftovers
    /// for the eraser, in the same transaction (see [`super::erasure`] for why this is safe).
    pub async fn insert_batch(&self, entries: &[IndexEntry]) -> Result<Vec<Indexed>, IndexError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(ERASURE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let probes: Vec<ErasureProbe> = entries
            .iter()
            .map(|e| ErasureProbe {
                image_id: e.image_id,
                customer_id: e.customer_id.clone(),
                created_at: e.created_at,
            })
            .collect();
        let erased = erased_positions(&mut tx, &probes)
            .await
            .map_err(|e| self.err(e))?;
        let gone: Vec<&IndexEntry> = entries
            .iter()
            .zip(&erased)
            .filter(|(_, e)| **e)
            .map(|(entry, _)| entry)
            .collect();
        if !gone.is_empty() {
            sqlx::query(
                "INSERT INTO erasure_leftovers (object_key, bucket)
                 SELECT * FROM UNNEST($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
            )
            .bind(
                gone.iter()
                    .map(|e| e.object_key.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(gone.iter().map(|e| e.bucket.clone()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        let kept: Vec<IndexEntry> = entries
            .iter()
            .zip(&erased)
            .filter(|(_, e)| !**e)
            .map(|(entry, _)| entry.clone())
            .collect();
        let mut outcomes = self.insert_kept(&mut tx, &kept).await?.into_iter();
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(erased
            .iter()
            .map(|erased| match erased {
                true => Indexed::Erased,
                false => outcomes.next().unwrap_or(Indexed::Erased),
            })
            .collect())
    }

    /// The insert proper, of entries no erasure covers, inside the index transaction.
    async fn insert_kept(
        &self,
        tx: &mut sqlx::PgConnection,
        entries: &[IndexEntry],
    ) -> Result<Vec<Indexed>, IndexError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        macro_rules! column {
            ($field:ident) => {
                entries.iter().map(|e| e.$field.clone()).collect::<Vec<_>>()
            };
        }
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO images (image_id, object_key, bucket, sha256, size_bytes, width, height,
                                 content_type, customer_id, source_id, created_at,
                                 kafka_topic, kafka_partition, kafka_offset)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[],
                                  $6::int4[], $7::int4[], $8::text[], $9::text[], $10::text[],
                                  $11::timestamptz[], $12::text[], $13::int4[], $14::int8[])
             ON CONFLICT DO NOTHING
             RETURNING image_id",
        )
        .bind(column!(image_id))
        .bind(column!(object_key))
        .bind(column!(bucket))
        .bind(column!(sha256))
        .bind(column!(size_bytes))
        .bind(column!(width))
        .bind(column!(height))
        .bind(column!(content_type))
        .bind(column!(customer_id))
        .bind(column!(source_id))
        .bind(column!(created_at))
        .bind(column!(kafka_topic))
        .bind(column!(kafka_partition))
        .bind(column!(kafka_offset))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;

        // Rows we did not insert already existed (or repeat an id within this batch): compare.
        let mut inserted: HashMap<Uuid, usize> = inserted.into_iter().map(|id| (id, 1)).collect();
        let skipped: Vec<Uuid> = entries
            .iter()
            .filter(|e| !inserted.contains_key(&e.image_id))
            .map(|e| e.image_id)
            .collect();
        let existing = self.entries_by_id_on(tx, &skipped).await?;
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            let outcome = match inserted.get_mut(&entry.image_id) {
                // The first entry with this id in the batch is the one that was inserted.
                Some(n) if *n > 0 => {
                    *n -= 1;
                    Indexed::Inserted
                }
                _ => {
                    let current = match existing.get(&entry.image_id) {
                        Some(row) => row.clone(),
                        None => entries
                            .iter()
                            .find(|e| e.image_id == entry.image_id)
                            .cloned()
                            .expect("entry is in its own batch"),
                    };
                    if current.same_image_as(entry) {
                        Indexed::AlreadyIndexed
                    } else {
                        Indexed::Conflict(Box::new(current))
                    }
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}
