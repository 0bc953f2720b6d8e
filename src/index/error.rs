//! How a PostgreSQL failure is judged: an outage to wait out, a setting to fix, or a value of one
//! row that the database refuses.

use crate::pipeline::Failure;
use thiserror::Error;

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

fn is_certificate_error(io: &std::io::Error) -> bool {
    // Only the certificate verdict: a handshake cut short by a restarting server is an outage.
    io.to_string().to_ascii_lowercase().contains("certificate")
}

/// The single place where a PostgreSQL failure is judged transient or not.
pub(super) fn classify(e: sqlx::Error, addr: &str, database: &str) -> IndexError {
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
