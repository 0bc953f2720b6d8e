//! The object store: where an image's bytes are written. S3-compatible (MinIO by default) through
//! `object_store`, or in memory for unit tests — one code path either way.
//!
//! Writes are create-only (`If-None-Match: *`), so a stored image can never be replaced: a second
//! write to the same key either carries the same bytes (a replay: fine) or is a conflict.

use crate::config::StoreSettings;
use crate::domain::sha256_hex;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredential, S3ConditionalPut};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "object store at {endpoint} is unreachable or failing ({detail}); is MinIO running? (make stack-up)"
    )]
    Unavailable { endpoint: String, detail: String },
    #[error(
        "object store refused the credentials for bucket {bucket} ({detail}); check MINIO_ACCESS_KEY and MINIO_SECRET_KEY"
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
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// What a create-only write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The key already held exactly these bytes: a replay after a crash, or a zombie's late write.
    AlreadyStored,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<dyn ObjectStore>,
    bucket: String,
    endpoint: String,
    admin: Option<S3Admin>,
}

impl ImageStore {
    /// A store backed by S3/MinIO.
    pub fn s3(settings: &StoreSettings, timeout: Duration) -> Result<Self, StoreError> {
        let store = AmazonS3Builder::new()
            .with_endpoint(&settings.endpoint)
            .with_bucket_name(&settings.bucket)
            .with_access_key_id(&settings.access_key)
            .with_secret_access_key(&settings.secret_key)
            .with_region(&settings.region)
            .with_virtual_hosted_style_request(false)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // SigV4 over the payload would hash every image a second time: the consumer has just
            // checked the bytes against their sha256, the signature still covers the headers, and
            // `imgstream verify` audits stored checksums.
            .with_unsigned_payload(true)
            // Short internal retries: outages are ours to notice, log and ride out (pipeline::retry).
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(timeout)
                    .with_timeout(Duration::from_secs(60))
                    .with_pool_max_idle_per_host(64),
            )
            .build()
            .map_err(|e| StoreError::Unavailable {
                endpoint: settings.endpoint.clone(),
                detail: e.to_string(),
            })?;
        Ok(ImageStore {
            inner: Arc::new(store),
            bucket: settings.bucket.clone(),
            endpoint: settings.endpoint.clone(),
            admin: Some(S3Admin {
                settings: settings.clone(),
                http: reqwest::Client::builder()
                    .connect_timeout(timeout)
                    .timeout(timeout * 3)
                    .build()
                    .map_err(|e| StoreError::Unavailable {
                        endpoint: settings.endpoint.clone(),
                        detail: e.to_string(),
                    })?,
            }),
        })
    }

    /// An in-memory store with the same semantics, for tests that need no MinIO.
    pub fn in_memory(bucket: &str) -> Self {
        ImageStore {
            inner: Arc::new(InMemory::new()),
            bucket: bucket.to_string(),
            endpoint: "memory://".into(),
            admin: None,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Writes an image under `key` unless the key already exists; never replaces stored bytes.
    pub async fn put_image(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
        sha256: &str,
    ) -> Result<PutOutcome, StoreError> {
        let path = Path::from(key);
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.to_string().into());
        attributes.insert(
            Attribute::Metadata("sha256".into()),
            sha256.to_string().into(),
        );
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&path, PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = sha256_hex(&self.get(key).await?);
                if existing.eq_ignore_ascii_case(sha256) {
                    Ok(PutOutcome::AlreadyStored)
                } else {
                    Err(StoreError::Conflict {
                        key: key.to_string(),
                        existing,
                    })
                }
            }
            Err(e) => Err(self.classify(e, key)),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let result = self
            .inner
            .get(&Path::from(key))
            .await
            .map_err(|e| self.classify(e, key))?;
        result.bytes().await.map_err(|e| self.classify(e, key))
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner
            .delete(&Path::from(key))
            .await
            .map_err(|e| self.classify(e, key))
    }

    /// Every object under `prefix` (all objects when empty).
    pub async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>, StoreError> {
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
        self.inner
            .list(prefix.as_ref())
            .map_ok(|m| StoredObject {
                key: m.location.to_string(),
                size: m.size,
                last_modified: m.last_modified,
            })
            .try_collect()
            .await
            .map_err(|e| self.classify(e, "<list>"))
    }

    pub async fn bucket_exists(&self) -> Result<bool, StoreError> {
        match &self.admin {
            Some(admin) => admin.bucket_exists().await,
            None => Ok(true),
        }
    }

    /// Creates the bucket if it is missing; true when it was created now.
    pub async fn create_bucket(&self) -> Result<bool, StoreError> {
        match &self.admin {
            Some(admin) => admin.create_bucket().await,
            None => Ok(false),
        }
    }

    /// Deletes every object and then the bucket itself; for test teardown.
    pub async fn destroy_bucket(&self) -> Result<(), StoreError> {
        for object in self.list("").await? {
            self.delete(&object.key).await?;
        }
        match &self.admin {
            Some(admin) => admin.delete_bucket().await,
            None => Ok(()),
        }
    }

    fn classify(&self, e: object_store::Error, key: &str) -> StoreError {
        use object_store::Error as E;
        match e {
            E::NotFound { ref source, .. } if source.to_string().contains("NoSuchBucket") => {
                StoreError::NoBucket {
                    bucket: self.bucket.clone(),
                    endpoint: self.endpoint.clone(),
                }
            }
            E::NotFound { .. } => StoreError::NotFound {
                key: key.to_string(),
            },
            E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
                StoreError::Denied {
                    bucket: self.bucket.clone(),
                    detail: one_line(&*source),
                }
            }
            other => StoreError::Unavailable {
                endpoint: self.endpoint.clone(),
                detail: one_line(&other),
            },
        }
    }
}

fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
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
    line.replace('\n', " ")
}

/// Bucket-level calls, which `object_store` does not offer: signed with its own SigV4 signer.
#[derive(Clone)]
struct S3Admin {
    settings: StoreSettings,
    http: reqwest::Client,
}

impl S3Admin {
    async fn bucket_exists(&self) -> Result<bool, StoreError> {
        let status = self.send(http::Method::HEAD).await?;
        match status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.unexpected(status, "HEAD bucket")),
        }
    }

    async fn create_bucket(&self) -> Result<bool, StoreError> {
        if self.bucket_exists().await? {
            return Ok(false);
        }
        match self.send(http::Method::PUT).await? {
            200 => Ok(true),
            409 => Ok(false), // created concurrently: BucketAlreadyOwnedByYou
            status => Err(self.unexpected(status, "create bucket")),
        }
    }

    async fn delete_bucket(&self) -> Result<(), StoreError> {
        match self.send(http::Method::DELETE).await? {
            200 | 204 | 404 => Ok(()),
            status => Err(self.unexpected(status, "delete bucket")),
        }
    }

    async fn send(&self, method: http::Method) -> Result<u16, StoreError> {
        let s = &self.settings;
        let url = format!("{}/{}", s.endpoint, s.bucket);
        let credential = AwsCredential {
            key_id: s.access_key.clone(),
            secret_key: s.secret_key.clone(),
            token: None,
        };
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| StoreError::Unavailable {
                endpoint: s.endpoint.clone(),
                detail: e.to_string(),
            })?;
        AwsAuthorizer::new(&credential, "s3", &s.region)
            .try_authorize(&mut request, None)
            .map_err(|e| StoreError::Unavailable {
                endpoint: s.endpoint.clone(),
                detail: format!("signing request: {e}"),
            })?;
        let mut builder = self.http.request(method, &url);
        for (name, value) in request.headers() {
            builder = builder.header(name, value);
        }
        let resp = builder.send().await.map_err(|e| StoreError::Unavailable {
            endpoint: s.endpoint.clone(),
            detail: one_line(&e),
        })?;
        match resp.status().as_u16() {
            401 | 403 => Err(StoreError::Denied {
                bucket: s.bucket.clone(),
                detail: format!("HTTP {}", resp.status()),
            }),
            status => Ok(status),
        }
    }

    fn unexpected(&self, status: u16, what: &str) -> StoreError {
        StoreError::Unavailable {
            endpoint: self.settings.endpoint.clone(),
            detail: format!("{what} answered HTTP {status}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replay_of_the_same_bytes_is_accepted_without_a_second_write() {
        let store = ImageStore::in_memory("b");
        let data = Bytes::from_static(b"image bytes");
        let sha = sha256_hex(&data);
        let first = store
            .put_image("k", data.clone(), "image/png", &sha)
            .await
            .unwrap();
        let again = store.put_image("k", data, "image/png", &sha).await.unwrap();
        assert_eq!(
            (first, again),
            (PutOutcome::Created, PutOutcome::AlreadyStored)
        );
        assert_eq!(store.list("").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn different_bytes_never_replace_a_stored_image() {
        let store = ImageStore::in_memory("b");
        let original = Bytes::from_static(b"original");
        let sha = sha256_hex(&original);
        store
            .put_image("k", original.clone(), "image/png", &sha)
            .await
            .unwrap();
        let other = Bytes::from_static(b"impostor");
        let err = store
            .put_image("k", other.clone(), "image/png", &sha256_hex(&other))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert!(!err.is_transient());
        assert_eq!(store.get("k").await.unwrap(), original);
    }
}
