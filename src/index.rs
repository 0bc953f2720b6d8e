//! The PostgreSQL index of stored images: migrations, the batched idempotent insert, and queries.

use crate::config::DatabaseUrl;
use crate::domain::{IndexEntry, StoredImage};
use crate::pipeline::{Failure, IndexSink, Indexed};
use crate::search::ImageQuery;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, Row};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;
use thiserror::Error;
use uuid::Uuid;

/// The SQL migrations in `migrations/`, compiled into the binary: (version, description, SQL).
///
/// Listed by hand rather than found by sqlx's `migrate!` macro: the macro alone cost every release
/// build a second, host-side build of sqlx, rustls and aws-lc (about 50 s of a cold build's CPU).
/// A unit test keeps this list and the directory in step.
const MIGRATIONS: [(i64, &str, &str); 2] = [
    (1, "images", include_str!("../migrations/0001_images.sql")),
    (
        2,
        "browsing",
        include_str!("../migrations/0002_browsing.sql"),
    ),
];

/// The embedded migrations as sqlx runs them; checksums are sqlx's own (SHA-384 of the SQL), so
/// databases migrated by earlier builds stay valid.
#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

async fn migrator() -> Result<Migrator, IndexError> {
    Migrator::new(Embedded)
        .await
        .map_err(|e| IndexError::Other(e.to_string()))
}

#[derive(Debug, Error)]
pub enum IndexError {
    #[error(
        "PostgreSQL at {addr} is unreachable or failing ({detail}); is it running? (make stack-up)"
    )]
    Unavailable { addr: String, detail: String },
    #[error("PostgreSQL at {addr} refused the login ({detail}); check DATABASE_CONNECTION_STRING")]
    Denied { addr: String, detail: String },
    #[error(
        "database {database} does not exist on {addr}; create it or fix DATABASE_CONNECTION_STRING"
    )]
    NoDatabase { database: String, addr: String },
    #[error(
        "TLS to PostgreSQL at {addr} failed ({detail}); check sslmode and sslrootcert in DATABASE_CONNECTION_STRING"
    )]
    Tls { addr: String, detail: String },
    #[error("the images table is missing or outdated ({detail}); run `imgstream setup`")]
    NotMigrated { detail: String },
    /// About the values of the statement, not the database: a value PostgreSQL cannot store
    /// (class 22), a constraint (class 23), a row too large for an index (54000).
    #[error("PostgreSQL refused a value of the statement: {detail}")]
    RowRefused { detail: String },
    #[error("PostgreSQL error: {0}")]
    Other(String),
}

impl IndexError {
    pub fn is_transient(&self) -> bool {
        matches!(self, IndexError::Unavailable { .. })
    }
}

impl From<IndexError> for Failure {
    fn from(e: IndexError) -> Self {
        Failure::judged(&e, e.is_transient())
    }
}

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

#[derive(Clone)]
pub struct ImageIndex {
    pool: PgPool,
    addr: String,
    database: String,
}

impl ImageIndex {
    /// Connects lazily-checked: the first query proves the server is there.
    pub async fn connect(url: &DatabaseUrl, timeout: Duration) -> Result<Self, IndexError> {
        let addr = url.host_port();
        let database = url.database_name().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            // Short: a database that is down should surface as an error the pipeline logs and
            // retries with backoff, not as a silent multi-second wait for a pooled connection.
            .acquire_timeout(timeout.min(Duration::from_secs(3)))
            .connect(url.expose())
            .await
            .map_err(|e| classify(e, &addr, &database))?;
        Ok(ImageIndex {
            pool,
            addr,
            database,
        })
    }

    fn err(&self, e: sqlx::Error) -> IndexError {
        classify(e, &self.addr, &self.database)
    }

    /// The pool says only that it timed out waiting for a connection; a connection of our own
    /// learns why (e.g. PostgreSQL's "too many connections for role"), so that an outage is
    /// logged with the server's own words.
    async fn explained(&self, e: IndexError) -> IndexError {
        let IndexError::Unavailable { detail, .. } = &e else {
            return e;
        };
        if !detail.contains("pool timed out") {
            return e;
        }
        let options = self.pool.connect_options();
        match tokio::time::timeout(
            Duration::from_secs(3),
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
        )
        .await
        {
            Ok(Err(why)) => self.err(why),
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
                e
            }
            Err(_) => e,
        }
    }

    /// Applies pending migrations; a no-op when up to date.
    pub async fn migrate(&self) -> Result<(), IndexError> {
        migrator()
            .await?
            .run(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => self.err(e),
                other => IndexError::Other(other.to_string()),
            })
    }

    /// Migrations this binary carries that the database has not applied (by description).
    pub async fn pending_migrations(&self) -> Result<Vec<String>, IndexError> {
        let table_exists: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        let applied: Vec<i64> = if table_exists {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.err(e))?
        } else {
            Vec::new()
        };
        Ok(migrator()
            .await?
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| format!("{:04}_{}", m.version, m.description))
            .collect())
    }

    /// Inserts a batch in one statement. Existing rows are never changed: each entry comes back as
    /// inserted, already indexed (identical), or in conflict with what is there.
    pub async fn insert_batch(&self, entries: &[IndexEntry]) -> Result<Vec<Indexed>, IndexError> {
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
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;

        // Rows we did not insert already existed (or repeat an id within this batch): compare.
        let mut inserted: HashMap<Uuid, usize> = inserted.into_iter().map(|id| (id, 1)).collect();
        let skipped: Vec<Uuid> = entries
            .iter()
            .filter(|e| !inserted.contains_key(&e.image_id))
            .map(|e| e.image_id)
            .collect();
        let existing = self.entries_by_id(&skipped).await?;
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

    pub async fn entries_by_id(
        &self,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, IndexEntry>, IndexError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(&format!("{SELECT_IMAGE} WHERE image_id = ANY($1)"))
            .bind(ids)
            .fetch_all(&self.pool)
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
    pub async fn search(
        &self,
        bucket: &str,
        query: &ImageQuery,
    ) -> Result<Vec<StoredImage>, IndexError> {
        let mut sql = QueryBuilder::<Postgres>::new(SELECT_IMAGE);
        sql.push(" WHERE bucket = ").push_bind(bucket);
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

    /// One image of `bucket` by id.
    pub async fn stored_image(
        &self,
        bucket: &str,
        image_id: Uuid,
    ) -> Result<Option<StoredImage>, IndexError> {
        let row = sqlx::query(&format!(
            "{SELECT_IMAGE} WHERE image_id = $1 AND bucket = $2"
        ))
        .bind(image_id)
        .bind(bucket)
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

    /// How `role` stands against what `access` needs: what it lacks and what it holds beyond it,
    /// as PostgreSQL itself answers (`has_table_privilege` counts grants to PUBLIC, membership
    /// and ownership too). `None` when the role does not exist.
    pub async fn audit_role(
        &self,
        role: &str,
        access: Access,
    ) -> Result<Option<RoleAudit>, IndexError> {
        let row = sqlx::query(
            "SELECT r.rolsuper,
                    pg_get_userbyid(c.relowner) = r.rolname AS owns_index,
                    has_schema_privilege(r.rolname, current_schema(), 'USAGE') AS schema_usage,
                    has_schema_privilege(r.rolname, current_schema(), 'CREATE') AS schema_create,
                    has_table_privilege(r.rolname, '_sqlx_migrations', 'SELECT') AS reads_migrations,
                    array(SELECT p FROM unnest($2::text[]) AS p
                          WHERE has_table_privilege(r.rolname, 'images', p)) AS held
             FROM pg_roles r, pg_class c
             WHERE r.rolname = $1 AND c.oid = 'images'::regclass",
        )
        .bind(role)
        .bind(TABLE_PRIVILEGES.map(String::from).to_vec())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let get = |name: &str| row.try_get::<bool, _>(name).map_err(|e| self.err(e));
        let held: Vec<String> = row.try_get("held").map_err(|e| self.err(e))?;
        let mut audit = RoleAudit::default();
        for privilege in access.table_privileges() {
            if !held.iter().any(|h| h == privilege) {
                audit.missing.push(format!("{privilege} on images"));
            }
        }
        if !get("schema_usage")? {
            audit.missing.push("USAGE on the schema".into());
        }
        if !get("reads_migrations")? {
            audit.missing.push("SELECT on _sqlx_migrations".into());
        }
        for privilege in &held {
            if !access.table_privileges().contains(&privilege.as_str()) {
                audit.excess.push(format!("{privilege} on images"));
            }
        }
        if get("schema_create")? {
            audit.excess.push("CREATE on the schema".into());
        }
        if get("owns_index")? {
            audit.excess.push("ownership of images".into());
        }
        if get("rolsuper")? {
            audit.excess.push("superuser".into());
        }
        Ok(Some(audit))
    }

    /// Grants `role` what `access` needs and revokes the rest that can be revoked directly.
    /// Ownership, superuser and membership of a stronger role stay: [`Self::audit_role`] still
    /// reports them.
    pub async fn grant_role(&self, role: &str, access: Access) -> Result<(), IndexError> {
        // `role` is a checked identifier (config::role_name), so quoting it is enough.
        let role = format!("\"{role}\"");
        let granted = access.table_privileges().join(", ");
        let revoked: Vec<&str> = TABLE_PRIVILEGES
            .into_iter()
            .filter(|p| !access.table_privileges().contains(p))
            .collect();
        // The schema the migrations created the index in: the connection's current one.
        let schema: String = sqlx::query_scalar("SELECT quote_ident(current_schema())")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let statements = [
            format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
            format!("REVOKE CREATE ON SCHEMA {schema} FROM {role}"),
            format!("GRANT {granted} ON images TO {role}"),
            format!("REVOKE {} ON images FROM {role}", revoked.join(", ")),
            format!("GRANT SELECT ON _sqlx_migrations TO {role}"),
        ];
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        for statement in statements {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Whether PostgreSQL answers: the readiness of a server that reads the index.
    pub async fn ping(&self) -> Result<(), IndexError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Every privilege a role can hold on a table.
const TABLE_PRIVILEGES: [&str; 7] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
];

/// What an identity may do to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The consumer: read and insert rows, nothing else.
    ReadInsert,
    /// `serve`, `status`, `verify`: read rows.
    Read,
}

impl Access {
    pub fn table_privileges(self) -> &'static [&'static str] {
        match self {
            Access::ReadInsert => &["SELECT", "INSERT"],
            Access::Read => &["SELECT"],
        }
    }
}

/// How a role stands against what its [`Access`] needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleAudit {
    pub missing: Vec<String>,
    pub excess: Vec<String>,
}

impl RoleAudit {
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.excess.is_empty()
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

fn is_certificate_error(io: &std::io::Error) -> bool {
    // Only the certificate verdict: a handshake cut short by a restarting server is an outage.
    io.to_string().to_ascii_lowercase().contains("certificate")
}

/// The single place where a PostgreSQL failure is judged transient or not.
fn classify(e: sqlx::Error, addr: &str, database: &str) -> IndexError {
    let detail = e.to_string().replace('\n', " ");
    match &e {
        // A certificate that does not verify, or a server without TLS under sslmode=require:
        // waiting will not change either.
        sqlx::Error::Tls(_) => IndexError::Tls {
            addr: addr.to_string(),
            detail,
        },
        // rustls' verdict on the server's certificate reaches us wrapped in an I/O error.
        sqlx::Error::Io(io) if is_certificate_error(io) => IndexError::Tls {
            addr: addr.to_string(),
            detail,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => IndexError::Unavailable {
            addr: addr.to_string(),
            detail,
        },
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            match code.as_str() {
                "3D000" => IndexError::NoDatabase {
                    database: database.to_string(),
                    addr: addr.to_string(),
                },
                "42P01" | "42703" => IndexError::NotMigrated { detail },
                c if c.starts_with("22") || c.starts_with("23") || c == "54000" => {
                    IndexError::RowRefused { detail }
                }
                c if c.starts_with("28") => IndexError::Denied {
                    addr: addr.to_string(),
                    detail,
                },
                // Connection failures, shutdown in progress, too many clients, out of resources,
                // serialization failures and deadlocks all pass with time.
                c if c.starts_with("08")
                    || c.starts_with("53")
                    || c.starts_with("57P")
                    || c == "40001"
                    || c == "40P01" =>
                {
                    IndexError::Unavailable {
                        addr: addr.to_string(),
                        detail,
                    }
                }
                _ => IndexError::Other(detail),
            }
        }
        _ => IndexError::Other(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_migrations_is_embedded_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .map(|p| {
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap())
            })
            .collect();
        files.sort();
        let embedded: Vec<(String, String)> = MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                (format!("{version:04}_{description}"), sql.to_string())
            })
            .collect();
        assert_eq!(embedded, files);
    }
}
