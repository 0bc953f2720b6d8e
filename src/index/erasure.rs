//! Erasures in the index: the kept record of each request to forget images, the rows it removes,
//! and the question the consumer asks of every record before storing it: is it erased?
//!
//! # Why an erasure cannot lose a race with a consumer
//!
//! The consumer inserts a batch's rows in one transaction that first takes [`ERASURE_LOCK`] in
//! shared mode and then, in a statement of its own (so with a snapshot taken after the lock),
//! leaves out every row an erasure covers. An erasure is recorded in a transaction holding the
//! same lock exclusively. So each consumer transaction either committed before the erasure was
//! recorded (its rows are visible to the eraser's deletes, which come after) or sees the erasure
//! (and inserts none of its rows). The objects of rows left out are not the consumer's to delete
//! (its identity may not): it names them in `erasure_leftovers`, in the same transaction, and the
//! eraser removes them.

use super::{ImageIndex, IndexError};
use crate::domain::{Erasing, ErasureProbe};
use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

/// The advisory lock between recording an erasure (exclusive) and inserting rows (shared).
/// Any constant no other code uses: "imgseras" in ASCII. Public so that a test can hold it and
/// line a consumer and an eraser up behind it in the order it wants (tests/lifetime.rs).
pub const ERASURE_LOCK: i64 = 0x696d_6773_6572_6173;

/// A row `u` (with `image_id`, `customer_id`, `created_at`) is erased: three lookups, each
/// served by an index of its own (migrations/0003_erasures.sql).
pub(super) const ERASED: &str = "(EXISTS (SELECT 1 FROM erasures e WHERE e.kind = 'customer'
                AND e.customer_id = u.customer_id AND u.created_at < e.cutoff)
     OR EXISTS (SELECT 1 FROM erasures e WHERE e.kind = 'retention' AND u.created_at < e.cutoff)
     OR EXISTS (SELECT 1 FROM erasures e WHERE e.kind = 'images'
                AND e.image_ids @> ARRAY[u.image_id]))";

/// One erasure as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErasureRecord {
    pub erasure_id: i64,
    #[serde(serialize_with = "display")]
    pub erasing: Erasing,
    pub kind: &'static str,
    pub requested_by: String,
    pub database_role: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub objects_removed: i64,
    pub rows_removed: i64,
}

fn display<S: serde::Serializer>(erasing: &Erasing, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(erasing)
}

/// An image an erasure removes: its row's id and where its object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasable {
    pub image_id: Uuid,
    pub object_key: String,
    pub bucket: String,
}

const SELECT_ERASURE: &str = "SELECT erasure_id, kind, customer_id, cutoff, before_given,
        image_ids, requested_by, database_role, started_at, finished_at, objects_removed,
        rows_removed FROM erasures";

fn erasure_from_row(r: &sqlx::postgres::PgRow) -> Result<ErasureRecord, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    let cutoff: Option<DateTime<Utc>> = r.try_get("cutoff")?;
    let erasing = match kind.as_str() {
        "customer" => Erasing::Customer {
            customer_id: r
                .try_get::<Option<String>, _>("customer_id")?
                .unwrap_or_default(),
            cutoff: cutoff.unwrap_or_default(),
            before_given: r.try_get("before_given")?,
        },
        "images" => Erasing::Images(
            r.try_get::<Option<Vec<Uuid>>, _>("image_ids")?
                .unwrap_or_default(),
        ),
        _ => Erasing::Retention {
            cutoff: cutoff.unwrap_or_default(),
        },
    };
    Ok(ErasureRecord {
        erasure_id: r.try_get("erasure_id")?,
        kind: erasing.kind(),
        erasing,
        requested_by: r.try_get("requested_by")?,
        database_role: r.try_get("database_role")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        objects_removed: r.try_get("objects_removed")?,
        rows_removed: r.try_get("rows_removed")?,
    })
}

/// `condition` on `images` for the rows `erasing` covers.
fn push_rows_of(q: &mut QueryBuilder<'_, Postgres>, erasing: &Erasing) {
    match erasing {
        Erasing::Customer {
            customer_id,
            cutoff,
            ..
        } => {
            q.push("customer_id = ")
                .push_bind(customer_id.clone())
                .push(" AND created_at < ")
                .push_bind(*cutoff);
        }
        Erasing::Images(ids) => {
            q.push("image_id = ANY(").push_bind(ids.clone()).push(")");
        }
        Erasing::Retention { cutoff } => {
            q.push("created_at < ").push_bind(*cutoff);
        }
    }
}

impl ImageIndex {
    /// Which of `probes` an erasure covers, by position. The consumer asks this before it
    /// uploads; its index transaction asks again under the lock (see the module's docs).
    pub async fn erased_among(&self, probes: &[ErasureProbe]) -> Result<Vec<bool>, IndexError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(e))?;
        erased_positions(&mut conn, probes)
            .await
            .map_err(|e| self.err(e))
    }

    /// Records `erasing` as a new erasure, or finds the unfinished one a run that stopped
    /// half-way left for the same request: (the erasure, whether it was resumed). Taken under
    /// the lock exclusively, so no row insert is half-way when it commits.
    pub async fn open_erasure(
        &self,
        erasing: &Erasing,
        requested_by: &str,
    ) -> Result<(ErasureRecord, bool), IndexError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ERASURE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let mut find = QueryBuilder::<Postgres>::new(SELECT_ERASURE);
        find.push(" WHERE finished_at IS NULL AND kind = ")
            .push_bind(erasing.kind());
        match erasing {
            Erasing::Customer {
                customer_id,
                cutoff,
                before_given,
            } => {
                find.push(" AND customer_id = ")
                    .push_bind(customer_id.clone());
                // A request without --before resumes whichever such run stopped; one with it,
                // the run with the same cut-off.
                if *before_given {
                    find.push(" AND before_given AND cutoff = ")
                        .push_bind(*cutoff);
                } else {
                    find.push(" AND NOT before_given");
                }
            }
            Erasing::Images(ids) => {
                find.push(" AND image_ids = ").push_bind(ids.clone());
            }
            // A retention run that stopped is finished with its own cut-off.
            Erasing::Retention { .. } => {}
        }
        find.push(" ORDER BY erasure_id LIMIT 1");
        let found = find
            .build()
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let (row, resumed) = match found {
            Some(row) => (row, true),
            None => {
                let (customer, cutoff, before_given, ids) = match erasing {
                    Erasing::Customer {
                        customer_id,
                        cutoff,
                        before_given,
                    } => (
                        Some(customer_id.clone()),
                        Some(*cutoff),
                        *before_given,
                        None,
                    ),
                    Erasing::Images(ids) => (None, None, false, Some(ids.clone())),
                    Erasing::Retention { cutoff } => (None, Some(*cutoff), true, None),
                };
                let row = sqlx::query(&format!(
                    "WITH new AS (INSERT INTO erasures (kind, customer_id, cutoff, before_given,
                                                        image_ids, requested_by)
                                  VALUES ($1, $2, $3, $4, $5, $6) RETURNING *)
                     {} ",
                    SELECT_ERASURE.replace("FROM erasures", "FROM new")
                ))
                .bind(erasing.kind())
                .bind(customer)
                .bind(cutoff)
                .bind(before_given)
                .bind(ids)
                .bind(requested_by)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
                (row, false)
            }
        };
        let record = erasure_from_row(&row).map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok((record, resumed))
    }

    /// The unfinished erasure a stopped `erasing` request left, if any (for --dry-run).
    pub async fn erasures(&self) -> Result<Vec<ErasureRecord>, IndexError> {
        let rows = sqlx::query(&format!("{SELECT_ERASURE} ORDER BY erasure_id"))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(erasure_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Rows `erasing` covers, now.
    pub async fn count_erasable(&self, erasing: &Erasing) -> Result<i64, IndexError> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT count(*) FROM images WHERE ");
        push_rows_of(&mut q, erasing);
        q.build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    /// Whether the index holds any image of `customer_id`.
    pub async fn customer_known(&self, customer_id: &str) -> Result<bool, IndexError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM images WHERE customer_id = $1)")
            .bind(customer_id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    /// Up to `limit` rows `erasing` still covers.
    pub async fn erasable_batch(
        &self,
        erasing: &Erasing,
        limit: i64,
    ) -> Result<Vec<Erasable>, IndexError> {
        let mut q =
            QueryBuilder::<Postgres>::new("SELECT image_id, object_key, bucket FROM images WHERE ");
        push_rows_of(&mut q, erasing);
        q.push(" LIMIT ").push_bind(limit);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(Erasable {
                    image_id: r.try_get("image_id")?,
                    object_key: r.try_get("object_key")?,
                    bucket: r.try_get("bucket")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.err(e))
    }

    /// Deletes the rows of `ids` whose objects are gone, and counts them (and `objects`
    /// objects) to erasure `erasure_id`, in one transaction: a run killed between its object
    /// deletes and this finds the same rows again and counts them once.
    pub async fn remove_rows(
        &self,
        erasure_id: i64,
        ids: &[Uuid],
        objects: i64,
    ) -> Result<u64, IndexError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let removed = sqlx::query("DELETE FROM images WHERE image_id = ANY($1)")
            .bind(ids)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?
            .rows_affected();
        sqlx::query(
            "UPDATE erasures SET rows_removed = rows_removed + $2,
                                 objects_removed = objects_removed + $3
             WHERE erasure_id = $1",
        )
        .bind(erasure_id)
        .bind(removed as i64)
        .bind(objects)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(removed)
    }

    /// Objects consumers wrote for erased records: (key, bucket, whether a row names the key:
    /// then the object belongs to that row and stays).
    pub async fn leftovers(&self, limit: i64) -> Result<Vec<(String, String, bool)>, IndexError> {
        let rows = sqlx::query(
            "SELECT l.object_key, l.bucket,
                    EXISTS (SELECT 1 FROM images i WHERE i.object_key = l.object_key) AS indexed
             FROM erasure_leftovers l ORDER BY l.object_key LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.err(e))
    }

    /// Every leftover's key (for `verify`).
    pub async fn leftover_keys(&self) -> Result<std::collections::HashSet<String>, IndexError> {
        let keys: Vec<String> = sqlx::query_scalar("SELECT object_key FROM erasure_leftovers")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(keys.into_iter().collect())
    }

    /// Forgets the leftovers `keys` and counts `objects` removed to erasure `erasure_id`.
    pub async fn remove_leftovers(
        &self,
        erasure_id: i64,
        keys: &[String],
        objects: i64,
    ) -> Result<(), IndexError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::query("DELETE FROM erasure_leftovers WHERE object_key = ANY($1)")
            .bind(keys)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        sqlx::query(
            "UPDATE erasures SET objects_removed = objects_removed + $2 WHERE erasure_id = $1",
        )
        .bind(erasure_id)
        .bind(objects)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Marks erasure `erasure_id` finished and returns it as recorded.
    pub async fn finish_erasure(&self, erasure_id: i64) -> Result<ErasureRecord, IndexError> {
        let row = sqlx::query(&format!(
            "WITH done AS (UPDATE erasures SET finished_at = coalesce(finished_at, now())
                           WHERE erasure_id = $1 RETURNING *)
             {}",
            SELECT_ERASURE.replace("FROM erasures", "FROM done")
        ))
        .bind(erasure_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        erasure_from_row(&row).map_err(|e| self.err(e))
    }

    /// The erasure as recorded now.
    pub async fn erasure(&self, erasure_id: i64) -> Result<ErasureRecord, IndexError> {
        let row = sqlx::query(&format!("{SELECT_ERASURE} WHERE erasure_id = $1"))
            .bind(erasure_id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        erasure_from_row(&row).map_err(|e| self.err(e))
    }

    /// The dead letters of `dlq_topic` that `dlq replay` has sent back: (partition, offset).
    pub async fn replayed_letters(
        &self,
        dlq_topic: &str,
    ) -> Result<std::collections::HashSet<(i32, i64)>, IndexError> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT dlq_partition, dlq_offset FROM dlq_replays WHERE dlq_topic = $1",
        )
        .bind(dlq_topic)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().collect())
    }

    /// Notes that a dead letter was sent back.
    pub async fn record_replay(
        &self,
        dlq_topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), IndexError> {
        sqlx::query(
            "INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(dlq_topic)
        .bind(partition)
        .bind(offset)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(|e| self.err(e))
    }

    /// The clock of the database, which stamps every erasure.
    pub async fn now(&self) -> Result<DateTime<Utc>, IndexError> {
        sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }
}

/// Positions of `probes` an erasure covers, on `conn` (the index transaction's, or a pooled one).
pub(super) async fn erased_positions(
    conn: &mut sqlx::PgConnection,
    probes: &[ErasureProbe],
) -> Result<Vec<bool>, sqlx::Error> {
    if probes.is_empty() {
        return Ok(Vec::new());
    }
    let erased: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT u.n FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[])
                         WITH ORDINALITY AS u(image_id, customer_id, created_at, n)
         WHERE {ERASED}"
    ))
    .bind(probes.iter().map(|p| p.image_id).collect::<Vec<_>>())
    .bind(
        probes
            .iter()
            .map(|p| p.customer_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(probes.iter().map(|p| p.created_at).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let mut out = vec![false; probes.len()];
    for n in erased {
        if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| out.get_mut(i)) {
            *slot = true;
        }
    }
    Ok(out)
}
