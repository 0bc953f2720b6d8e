//! The PostgreSQL index of stored images, by role:
//!
//! - [`write`](self::write): the index sink port, the one place a row is written (a batched
//!   idempotent insert, row by row when PostgreSQL refuses one row of a batch);
//! - [`read`](self::read): what `serve`, `verify` and `status` ask;
//! - [`erasure`](self::erasure): the erasures, what they remove, and whether a record is erased;
//! - [`admin`](self::admin): migrations (embedded) and the roles' grants, for `setup`;
//! - [`error`](self::error): the one place a PostgreSQL failure is judged transient or not.

mod admin;
mod erasure;
mod error;
mod read;
mod write;

pub use admin::{Access, RoleAudit};
pub use erasure::{ERASURE_LOCK, Erasable, ErasureRecord};
pub use error::IndexError;

use crate::config::DatabaseUrl;
use error::classify;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

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
