//! What can go wrong talking to the object store, and the one place each failure is judged
//! transient (wait and retry) or not (a setting to fix, or a record to refuse).
//!
//! Every message names the endpoint and quotes the store or the transport without credentials:
//! URLs and details pass through `redact` where the error is made, not where it is printed.

use crate::config::{redact, redact_url};
use crate::pipeline::Failure;
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "object store at {endpoint} is unreachable or failing ({detail}); is MinIO running? (make stack-up)"
    )]
    Unavailable { endpoint: String, detail: String },
    #[error(
        "TLS to the object store at {endpoint} failed ({detail}); check MINIO_CA_FILE, and that the store's certificate names the host in MINIO_CONNECTION_STRING"
    )]
    Tls { endpoint: String, detail: String },
    #[error(
        "object store denied access to bucket {bucket} ({detail}); check MINIO_ACCESS_KEY, MINIO_SECRET_KEY and what that key's policy allows"
    )]
    Denied { bucket: String, detail: String },
    #[error("bucket {bucket} does not exist at {endpoint}; run `imgstream setup`")]
    NoBucket { bucket: String, endpoint: String },
    #[error(
        "object {key} already holds different bytes (sha256 {existing}); refusing to replace it"
    )]
    Conflict { key: String, existing: String },
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("the bytes for {key} do not match their declared sha256 {declared} ({detail})")]
    ChecksumMismatch {
        key: String,
        declared: String,
        detail: String,
    },
    #[error(
        "object store at {endpoint} stored an image without verifying its x-amz-checksum-sha256 (no checksum in its answer); use an S3 store that supports additional checksums (AWS S3, MinIO)"
    )]
    ChecksumUnsupported { endpoint: String },
    #[error(
        "object store at {endpoint} refused the write options ({detail}); check MINIO_SERVER_SIDE_ENCRYPTION, MINIO_SSE_KMS_KEY_ID, MINIO_STORAGE_CLASS and MINIO_OBJECT_TAGS against what the store offers"
    )]
    WriteOptionsRefused { endpoint: String, detail: String },
    #[error("no request for {key} can be built from the record ({detail})")]
    UnbuildableRequest { key: String, detail: String },
    #[error("object store at {endpoint} refused {what} ({detail})")]
    Refused {
        endpoint: String,
        what: String,
        detail: String,
    },
}

impl StoreError {
    /// Only an outage passes with time. Everything else is a setting to fix or a record to
    /// refuse; the errors below are made `Unavailable` exactly when waiting can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// A request that got no answer: a certificate the client refuses is a setting to fix, not
    /// an outage to wait out.
    pub(super) fn unanswered(endpoint: &str, detail: String) -> StoreError {
        let endpoint = redact_url(endpoint);
        let detail = redact(&detail).into_owned();
        if detail.contains("invalid peer certificate") || detail.contains("InvalidCertificate") {
            StoreError::Tls { endpoint, detail }
        } else {
            StoreError::Unavailable { endpoint, detail }
        }
    }

    /// An `object_store` error on `key` (reads, lists, presigns, and the in-memory twin's writes)
    /// as ours. `endpoint` is already redacted.
    pub(super) fn from_object_store(
        e: object_store::Error,
        key: &str,
        bucket: &str,
        endpoint: &str,
    ) -> StoreError {
        use object_store::Error as E;
        match e {
            E::NotFound { ref source, .. } if source.to_string().contains("NoSuchBucket") => {
                StoreError::NoBucket {
                    bucket: bucket.to_string(),
                    endpoint: endpoint.to_string(),
                }
            }
            E::NotFound { .. } => StoreError::NotFound {
                key: key.to_string(),
            },
            // Some refusals arrive as generic errors carrying S3's own code.
            E::Generic { ref source, .. } if source.to_string().contains("AccessDenied") => {
                StoreError::Denied {
                    bucket: bucket.to_string(),
                    detail: one_line(&**source),
                }
            }
            E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
                StoreError::Denied {
                    bucket: bucket.to_string(),
                    detail: one_line(&*source),
                }
            }
            other => StoreError::unanswered(endpoint, one_line(&other)),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::judged(&e, e.is_transient())
    }
}

/// What S3's XML error body says: `<Error><Code>NoSuchBucket</Code><Message>…</Message></Error>`.
/// A body that is empty or not that XML (a proxy's page, a cut-off answer) says nothing, and the
/// HTTP status speaks alone.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct S3ErrorBody {
    pub code: Option<String>,
    pub message: Option<String>,
}

impl S3ErrorBody {
    pub fn parse(body: &str) -> S3ErrorBody {
        quick_xml::de::from_str(body).unwrap_or_default()
    }

    /// The store could not finish the request this time, for reasons of its own: every 5xx;
    /// 408 and 429; S3's `RequestTimeout` and `SlowDown`; and MinIO's 499 `ClientDisconnected`,
    /// which MinIO also answers when an operation of its own was cancelled under a still-open
    /// request (a lock it lost, seen on a loaded machine mid-rebalance). Every request we send
    /// is idempotent, so each of these is sent again after a backoff, not treated as a refusal.
    pub fn is_transient(&self, status: u16) -> bool {
        // 501 Not Implemented is a feature the store lacks (MinIO without a KMS asked for SSE).
        matches!(status, 408 | 429 | 499 | 500 | 502..)
            || matches!(self.code.as_deref(), Some("RequestTimeout" | "SlowDown"))
    }

    /// "HTTP 400 InvalidArgument: message", from the status and the body.
    pub fn describe(&self, status: u16) -> String {
        match (&self.code, &self.message) {
            (Some(code), Some(message)) => format!("HTTP {status} {code}: {message}"),
            (Some(code), None) => format!("HTTP {status} {code}"),
            _ => format!("HTTP {status}"),
        }
    }
}

/// An error and its causes on one line, without the credentials of any URL they quote.
pub(super) fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    // Wrapped errors often repeat their source's text; keep each piece of text once.
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        cause = c.source();
    }
    redact(&line.replace('\n', " ")).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_error_body_is_described_by_its_code_and_message() {
        let body = S3ErrorBody::parse(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidArgument</Code>\
             <Message>Bad &amp; wrong.</Message><Key>images/a.png</Key><RequestId>1</RequestId></Error>",
        );
        assert_eq!(body.code.as_deref(), Some("InvalidArgument"));
        assert_eq!(body.describe(400), "HTTP 400 InvalidArgument: Bad & wrong.");
        let code_only = S3ErrorBody::parse("<Error><Code>SlowDown</Code></Error>");
        assert_eq!(code_only.describe(503), "HTTP 503 SlowDown");
        assert!(code_only.is_transient(400));
    }

    #[test]
    fn an_empty_error_body_leaves_the_status_to_speak() {
        let body = S3ErrorBody::parse("");
        assert_eq!(body, S3ErrorBody::default());
        assert_eq!(body.describe(503), "HTTP 503");
        assert!(body.is_transient(503));
        assert!(!body.is_transient(400));
    }

    #[test]
    fn a_malformed_error_body_is_read_as_saying_nothing() {
        for body in [
            "<html><body>502 Bad Gateway</body>",
            "<Error><Code>SlowDown</Code><Message>cut o",
            "not xml at all <<<",
        ] {
            let read = S3ErrorBody::parse(body);
            assert_eq!(read.describe(400), "HTTP 400", "{body}");
            assert!(!read.is_transient(400), "{body}");
        }
    }
}
