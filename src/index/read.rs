//! Reading rows: what `serve` (pages, search, the pipeline page), `verify` and `status` ask.

use super::{ImageIndex, IndexError};
use crate::domain::{IndexEntry, StoredImage};
use crate::search::ImageQuery;
use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder, Row};
use std::collections::HashMap;
use uuid::Uuid;

impl ImageIndex {
    pub async fn entries_by_id(
        &self,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, IndexEntry>, IndexError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(e))?;
        self.entries_by_id_on(&mut conn, ids).await
    }

    /// [`Self::entries_by_id`] on a connection of the caller's (a transaction's).
    pub(super) async fn entries_by_id_on(
        &self,
        conn: &mut sqlx::PgConnection,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, IndexEntry>, IndexError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(&format!("{SELECT_IMAGE} WHERE image_id = ANY($1)"))
            .bind(ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|r| entry_from_row(&r).map(|e| (e.image_id, e)))
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Every row, for auditing. Ordered by key so audits read predictably.
    pub async fn all_entries(&self) -> Result<Vec<IndexEntry>, IndexError> {
        self.entries_where("true", None).await
    }

    /// The rows of one bucket: what `verify` compares that bucket against.
    pub async fn entries_in_bucket(&self, bucket: &str) -> Result<Vec<IndexEntry>, IndexError> {
        self.entries_where("bucket = $1", Some(bucket)).await
    }

    async fn entries_where(
        &self,
        condition: &str,
        bucket: Option<&str>,
    ) -> Result<Vec<IndexEntry>, IndexError> {
        let sql = format!("{SELECT_IMAGE} WHERE {condition} ORDER BY object_key");
        let mut query = sqlx::query(&sql);
        if let Some(bucket) = bucket {
            query = query.bind(bucket);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(|e| self.err(e))?;
        rows.iter()
            .map(entry_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Which of `keys` have a row in `bucket` now: `verify --repair` asks this just before it
    /// deletes an orphan, and again after, since a consumer may index one meanwhile.
    pub async fn indexed_keys(
        &self,
        bucket: &str,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>, IndexError> {
        if keys.is_empty() {
            return Ok(Default::default());
        }
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT object_key FROM images WHERE bucket = $1 AND object_key = ANY($2)",
        )
        .bind(bucket)
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().collect())
    }

    pub async fn count_in_bucket(&self, bucket: &str) -> Result<i64, IndexError> {
        sqlx::query_scalar("SELECT count(*) FROM images WHERE bucket = $1")
            .bind(bucket)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    pub async fn count(&self) -> Result<i64, IndexError> {
        sqlx::query_scalar("SELECT count(*) FROM images")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    /// Per partition of `topic`: the highest offset indexed and the number of rows.
    pub async fn partition_positions(
        &self,
        topic: &str,
    ) -> Result<HashMap<i32, (i64, i64)>, IndexError> {
        let rows = sqlx::query(
            "SELECT kafka_partition, max(kafka_offset), count(*) FROM images
             WHERE kafka_topic = $1 GROUP BY kafka_partition",
        )
        .bind(topic)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.err(e))
    }

    /// Latency of stored images: produce time to index time, per row (for benchmarks).
    pub async fn latencies_since(&self, since: DateTime<Utc>) -> Result<Vec<f64>, IndexError> {
        sqlx::query_scalar(
            "SELECT extract(epoch FROM stored_at - created_at)::float8 FROM images
             WHERE created_at >= $1 ORDER BY 1",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))
    }

    /// One page of a search over the images of `bucket`, newest first. A keyset query: the
    /// migrations' `(…, created_at DESC, image_id DESC)` indexes make a deep page as cheap as the
    /// first. Only the filters given become SQL, so each shape gets a plan that fits it.
    ///
    /// `customers` is the caller's tenancy: `Some` limits every answer to those customers (an
    /// empty list sees nothing), whatever the filters and the cursor say; `None` is everyone.
    pub async fn search(
        &self,
        bucket: &str,
        query: &ImageQuery,
        customers: Option<&[String]>,
    ) -> Result<Vec<StoredImage>, IndexError> {
        let mut sql = QueryBuilder::<Postgres>::new(SELECT_IMAGE);
        sql.push(" WHERE bucket = ").push_bind(bucket);
        if let Some(customers) = customers {
            sql.push(" AND customer_id = ANY(")
                .push_bind(customers.to_vec())
                .push(")");
        }
        if let Some(customer) = &query.customer_id {
            sql.push(" AND customer_id = ").push_bind(customer);
        }
        if let Some(source) = &query.source_id {
            sql.push(" AND source_id = ").push_bind(source);
        }
        if let Some(format) = query.format {
            sql.push(" AND content_type = ")
                .push_bind(format.content_type());
        }
        if let Some(from) = query.created_from {
            sql.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(before) = query.created_before {
            sql.push(" AND created_at < ").push_bind(before);
        }
        if let Some(after) = &query.after {
            sql.push(" AND (created_at, image_id) < (")
                .push_bind(after.created_at)
                .push(", ")
                .push_bind(after.image_id)
                .push(")");
        }
        sql.push(" ORDER BY created_at DESC, image_id DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows = sql
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(stored_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// One image of `bucket` by id; with `customers`, only if it belongs to one of them (another
    /// customer's image is `None`, exactly like an id nobody has).
    pub async fn stored_image(
        &self,
        bucket: &str,
        image_id: Uuid,
        customers: Option<&[String]>,
    ) -> Result<Option<StoredImage>, IndexError> {
        let row = sqlx::query(&format!(
            "{SELECT_IMAGE} WHERE image_id = $1 AND bucket = $2
             AND ($3::text[] IS NULL OR customer_id = ANY($3))"
        ))
        .bind(image_id)
        .bind(bucket)
        .bind(customers.map(<[String]>::to_vec))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        row.as_ref()
            .map(stored_from_row)
            .transpose()
            .map_err(|e| self.err(e))
    }

    /// Rows stored per minute over the last `minutes` minutes, oldest first; quiet minutes are 0.
    pub async fn stored_per_minute(
        &self,
        bucket: &str,
        minutes: u32,
    ) -> Result<Vec<(DateTime<Utc>, i64)>, IndexError> {
        let rows = sqlx::query(
            "SELECT minute, count(images.image_id)
             FROM generate_series(date_trunc('minute', now()) - make_interval(mins => $2 - 1),
                                  date_trunc('minute', now()), interval '1 minute') AS minute
             LEFT JOIN images ON bucket = $1 AND stored_at >= minute
                             AND stored_at < minute + interval '1 minute'
             GROUP BY minute ORDER BY minute",
        )
        .bind(bucket)
        .bind(minutes.max(1) as i32)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.err(e))
    }
}

/// Every column of a row: what `entry_from_row` and `stored_from_row` read.
const SELECT_IMAGE: &str = "SELECT image_id, object_key, bucket, sha256, size_bytes, width, height,
    content_type, customer_id, source_id, created_at, kafka_topic, kafka_partition, kafka_offset,
    stored_at
    FROM images";

fn stored_from_row(r: &sqlx::postgres::PgRow) -> Result<StoredImage, sqlx::Error> {
    Ok(StoredImage {
        entry: entry_from_row(r)?,
        stored_at: r.try_get("stored_at")?,
    })
}

fn entry_from_row(r: &sqlx::postgres::PgRow) -> Result<IndexEntry, sqlx::Error> {
    Ok(IndexEntry {
        image_id: r.try_get("image_id")?,
        object_key: r.try_get("object_key")?,
        bucket: r.try_get("bucket")?,
        sha256: r.try_get::<String, _>("sha256")?.trim().to_string(),
        size_bytes: r.try_get("size_bytes")?,
        width: r.try_get("width")?,
        height: r.try_get("height")?,
        content_type: r.try_get("content_type")?,
        customer_id: r.try_get("customer_id")?,
        source_id: r.try_get("source_id")?,
        created_at: r.try_get("created_at")?,
        kafka_topic: r.try_get("kafka_topic")?,
        kafka_partition: r.try_get("kafka_partition")?,
        kafka_offset: r.try_get("kafka_offset")?,
    })
}
