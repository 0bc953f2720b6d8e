//! The object store: where an image's bytes are written. S3-compatible (MinIO by default), or an
//! in-memory twin for tests; both run the same write path.
//!
//! Writes are create-only (`If-None-Match: *`), so a stored image can never be replaced: a second
//! write to the same key either carries the same bytes (a replay: fine) or is a conflict.
//!
//! Every write carries the record's declared SHA-256 as an S3 checksum (`x-amz-checksum-sha256`):
//! the store hashes the bytes it is about to persist and refuses them on a mismatch, so the check
//! covers the last hop too, and the object keeps its checksum for later audits. This is the one
//! place an image's integrity is checked; the consumer does not hash images itself.
//!
//! What is where, laid out as `object_store` lays out its `aws/` module:
//! - `write.rs`: the `ImageSink` port and `put_image`, the one place an image is written.
//! - `upload.rs`: a producer's upload written as it is made, in bounded parts.
//! - `direct.rs`: the signed requests `object_store` cannot make (the checksummed create-only
//!   write, the stored checksum, the store's clock, deletes, bucket calls).
//! - `memory.rs`: the in-memory twin of `direct.rs` (tests only).
//! - `builder.rs`: settings to a connected store: endpoint, credentials, TLS, timeouts.
//! - `error.rs`: `StoreError`, S3's error body, and which failures are transient.
//! - here: `ImageStore` and the reads (get, list, presign), which go through `object_store` for
//!   either backend.

mod builder;
mod direct;
mod error;
#[cfg(any(test, feature = "test-util"))]
mod memory;
mod upload;
mod write;

pub use crate::config::{Encryption, WriteOptions};
pub use error::StoreError;
pub use upload::{PendingUpload, SpoolError, Spooled, SpooledBody, UploadWriter};
pub use write::{ObjectLabels, UploadShape};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use futures::future::BoxFuture;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{Attribute, ObjectStore, ObjectStoreExt};
use std::sync::Arc;
use std::time::Duration;

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

/// One object read whole, with what the store says about it now.
#[derive(Debug, Clone)]
pub struct FetchedObject {
    pub bytes: Bytes,
    pub last_modified: DateTime<Utc>,
    pub content_type: Option<String>,
}

#[derive(Clone)]
pub struct ImageStore {
    /// Reads and lists, through `object_store`: `AmazonS3`, or the twin's `InMemory`.
    objects: Arc<dyn ObjectStore>,
    bucket: String,
    /// As messages name it, without credentials.
    endpoint: String,
    /// Writes, deletes and bucket calls: the signed S3 client, or its in-memory twin.
    backend: Arc<dyn Backend>,
    /// Presigns GET URLs, so a reader fetches bytes from the store itself, not through us.
    signer: Option<Arc<AmazonS3>>,
    /// Server-side encryption, storage class and tags, sent with every object written.
    write: WriteOptions,
}

/// The user metadata that marks an object a producer uploaded for a reference record (the claim
/// check): `verify --repair` may delete such an orphan only once no record on the topic can still
/// name it, since no consumer can write it again (docs/claim-check.md).
pub(crate) const UPLOAD_MARK_HEADER: &str = "x-amz-meta-imgstream-upload";
pub(crate) const UPLOAD_MARK_VALUE: &str = "producer";

/// What a HEAD of an object says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: u64,
    /// The full-object SHA-256 the store kept, when it kept one (a single PUT with the checksum;
    /// a multipart upload keeps only a composite of its parts').
    pub sha256: Option<[u8; 32]>,
    /// Uploaded by a producer for a reference record.
    pub producer_upload: bool,
    /// `x-amz-server-side-encryption` as the store reports it.
    pub encryption: Option<String>,
    pub storage_class: Option<String>,
}

/// A part of a multipart upload, as CompleteMultipartUpload needs it.
#[derive(Debug, Clone)]
pub(crate) struct UploadedPart {
    number: u32,
    etag: String,
    /// Base64 SHA-256 of the part.
    checksum: String,
}

/// What the S3 client (`direct.rs`) and its in-memory twin (`memory.rs`) both answer.
trait Backend: Send + Sync {
    /// A create-only write that the store verifies against `sha256`. False when the key exists.
    /// `extra` are further request headers: write options, tags, metadata.
    fn put_object<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        content_type: &'a str,
        sha256: &'a [u8; 32],
        extra: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Size, kept checksum and marks of `key`; `NotFound` when it is missing.
    fn head_object<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectHead, StoreError>>;

    /// Starts a multipart upload whose parts carry SHA-256 checksums; its upload id.
    fn create_multipart<'a>(
        &'a self,
        key: &'a str,
        content_type: &'a str,
        extra: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<String, StoreError>>;

    /// Uploads one part, which the store verifies against `sha256`.
    fn upload_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: u32,
        data: Bytes,
        sha256: [u8; 32],
    ) -> BoxFuture<'a, Result<UploadedPart, StoreError>>;

    /// Completes an upload create-only: false (and nothing written) when the key exists.
    fn complete_multipart<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [UploadedPart],
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Drops an unfinished upload and its parts.
    fn abort_multipart<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The SHA-256 checksum the store kept for `key`, if it was written with one.
    fn stored_checksum<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<[u8; 32]>, StoreError>>;

    /// The tags of `key` (GetObjectTagging), as (key, value) pairs.
    fn object_tags<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>>;

    /// Deletes `key`; a key that is already gone is no error.
    fn delete_object<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The time by the store's clock.
    fn clock(&self) -> BoxFuture<'_, Result<DateTime<Utc>, StoreError>>;

    fn bucket_exists(&self) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// True when the bucket was created now.
    fn create_bucket(&self) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Deletes the (empty) bucket; a missing one is no error.
    fn delete_bucket(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

impl ImageStore {
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The first bytes of `key` (fewer when the object is shorter).
    pub async fn get_head(&self, key: &str, len: u64) -> Result<Bytes, StoreError> {
        let result = self
            .objects
            .get_opts(
                &Path::from(key),
                object_store::GetOptions::default()
                    .with_range(Some(object_store::GetRange::Bounded(0..len.max(1)))),
            )
            .await
            .map_err(|e| self.error(e, key))?;
        result.bytes().await.map_err(|e| self.error(e, key))
    }

    /// The SHA-256 and length of `key`'s bytes, read as a stream: memory stays at one chunk
    /// whatever the object's size.
    pub async fn streamed_sha256(&self, key: &str) -> Result<([u8; 32], u64), StoreError> {
        use sha2::Digest;
        let result = self
            .objects
            .get(&Path::from(key))
            .await
            .map_err(|e| self.error(e, key))?;
        let mut stream = result.into_stream();
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(|e| self.error(e, key))? {
            len += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((hasher.finalize().into(), len))
    }

    /// Size, kept checksum and marks of `key`; `NotFound` when it is missing.
    pub async fn head(&self, key: &str) -> Result<ObjectHead, StoreError> {
        self.backend.head_object(key).await
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let result = self
            .objects
            .get(&Path::from(key))
            .await
            .map_err(|e| self.error(e, key))?;
        result.bytes().await.map_err(|e| self.error(e, key))
    }

    /// `key`'s bytes with its current modification time and content type.
    pub async fn fetch(&self, key: &str) -> Result<FetchedObject, StoreError> {
        let result = self
            .objects
            .get(&Path::from(key))
            .await
            .map_err(|e| self.error(e, key))?;
        let last_modified = result.meta.last_modified;
        let content_type = result
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        let bytes = result.bytes().await.map_err(|e| self.error(e, key))?;
        Ok(FetchedObject {
            bytes,
            last_modified,
            content_type,
        })
    }

    /// Every object under `prefix` (all objects when empty).
    pub async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>, StoreError> {
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
        self.objects
            .list(prefix.as_ref())
            .map_ok(|m| StoredObject {
                key: m.location.to_string(),
                size: m.size,
                last_modified: m.last_modified,
            })
            .try_collect()
            .await
            .map_err(|e| self.error(e, "<list>"))
    }

    /// A URL that lets anyone holding it GET `key` until `ttl` has passed; with `download_as`, the
    /// store answers with `Content-Disposition: attachment` under that file name.
    pub async fn presigned_get(
        &self,
        key: &str,
        ttl: Duration,
        download_as: Option<&str>,
    ) -> Result<url::Url, StoreError> {
        let Some(signer) = &self.signer else {
            return Err(StoreError::Refused {
                endpoint: self.endpoint.clone(),
                what: "a presigned URL".into(),
                detail: "only an S3 store can sign URLs".into(),
            });
        };
        let mut options = SignedUrlOptions::default();
        if let Some(name) = download_as {
            // The name is ours (an image id and an extension), so it needs no quoting rules.
            options = options.with_query([(
                "response-content-disposition",
                format!("attachment; filename=\"{name}\""),
            )]);
        }
        signer
            .signed_url_opts(http::Method::GET, &Path::from(key), ttl, &options)
            .await
            .map_err(|e| self.error(e, key))
    }

    /// The time by the store's clock: the `Date` of its answer to a HEAD of the bucket. Object
    /// ages are judged by this, not by our own clock: the modification times the store lists
    /// are its own, and the two clocks may disagree by more than any grace period.
    pub async fn clock(&self) -> Result<DateTime<Utc>, StoreError> {
        self.backend.clock().await
    }

    /// The tags `key` carries, to write them again with its bytes (`verify --repair`).
    pub async fn object_tags(&self, key: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.backend.object_tags(key).await
    }

    /// Deletes one object. On S3 a plain DELETE of that key: object_store sends a multi-object
    /// DeleteObjects, which MinIO refuses to a key whose policy allows `s3:DeleteObject` on
    /// `images/*` only (the repair key of deploy/policies/s3-repair.json).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.backend.delete_object(key).await
    }

    pub async fn bucket_exists(&self) -> Result<bool, StoreError> {
        self.backend.bucket_exists().await
    }

    /// Creates the bucket if it is missing; true when it was created now.
    pub async fn create_bucket(&self) -> Result<bool, StoreError> {
        self.backend.create_bucket().await
    }

    /// Deletes every object and then the bucket itself; for test teardown.
    pub async fn destroy_bucket(&self) -> Result<(), StoreError> {
        for object in self.list("").await? {
            self.delete(&object.key).await?;
        }
        self.backend.delete_bucket().await
    }

    fn error(&self, e: object_store::Error, key: &str) -> StoreError {
        StoreError::from_object_store(e, key, &self.bucket, &self.endpoint)
    }
}
