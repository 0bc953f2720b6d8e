//! The object store: where an image's bytes are written. S3-compatible (MinIO by default) through
//! `object_store`, or in memory for unit tests — one code path either way.
//!
//! Writes are create-only (`If-None-Match: *`), so a stored image can never be replaced: a second
//! write to the same key either carries the same bytes (a replay: fine) or is a conflict.
//!
//! Every write carries the record's declared SHA-256 as an S3 checksum (`x-amz-checksum-sha256`):
//! the store hashes the bytes it is about to persist and refuses them on a mismatch, so the check
//! covers the last hop too, and the object keeps its checksum for later audits. This is the one
//! place an image's integrity is checked; the consumer does not hash images itself.

use crate::config::{StoreSettings, redact, redact_url};
use crate::domain::{ImageRecord, object_key, sha256_hex};
use crate::pipeline::{Failure, ImageSink, Put, Refusal};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use futures::future::BoxFuture;
use object_store::aws::{
    AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer, AwsCredentialProvider,
};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
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
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// A request that got no answer: a certificate the client refuses is a setting to fix, not
    /// an outage to wait out.
    fn unanswered(endpoint: &str, detail: String) -> StoreError {
        let endpoint = redact_url(endpoint);
        let detail = redact(&detail).into_owned();
        if detail.contains("invalid peer certificate") || detail.contains("InvalidCertificate") {
            StoreError::Tls { endpoint, detail }
        } else {
            StoreError::Unavailable { endpoint, detail }
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::judged(&e, e.is_transient())
    }
}

/// The image sink port: the one place an image is written.
impl ImageSink for ImageStore {
    fn put<'a>(&'a self, record: &'a ImageRecord) -> BoxFuture<'a, Result<Put, Failure>> {
        Box::pin(async move {
            let key = object_key(&record.image_id);
            let written = self
                .put_image(
                    &key,
                    record.data.clone(),
                    &record.content_type,
                    &record.sha256,
                )
                .await;
            match written {
                Ok(PutOutcome::Created) => Ok(Put::Created),
                Ok(PutOutcome::AlreadyStored) => Ok(Put::AlreadyStored),
                Err(StoreError::Conflict { key, existing }) => {
                    Ok(Put::Refused(Refusal::ObjectConflict {
                        image_id: record.image_id,
                        key,
                        existing_sha256: existing,
                        sha256: record.sha256.clone(),
                    }))
                }
                Err(e @ StoreError::ChecksumMismatch { .. }) => {
                    Ok(Put::Refused(Refusal::ChecksumMismatch {
                        image_id: record.image_id,
                        detail: e.to_string(),
                    }))
                }
                // A field the request carries (the content type) is not a valid header value:
                // the record's fault, which no retry changes.
                Err(e @ StoreError::UnbuildableRequest { .. }) => {
                    Ok(Put::Refused(Refusal::Unstorable {
                        image_id: record.image_id,
                        detail: e.to_string(),
                    }))
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn bucket(&self) -> &str {
        ImageStore::bucket(self)
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

/// One object read whole, with what the store says about it now.
#[derive(Debug, Clone)]
pub struct FetchedObject {
    pub bytes: Bytes,
    pub last_modified: DateTime<Utc>,
    pub content_type: Option<String>,
}

#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<dyn ObjectStore>,
    bucket: String,
    endpoint: String,
    /// Signed requests `object_store` cannot make: checksummed writes and bucket calls.
    s3: Option<S3Direct>,
    /// Presigns GET URLs, so a reader fetches bytes from the store itself, not through us.
    signer: Option<Arc<AmazonS3>>,
}

impl ImageStore {
    /// A store backed by S3/MinIO.
    pub fn s3(settings: &StoreSettings, timeout: Duration) -> Result<Self, StoreError> {
        // The endpoint as messages name it: credentials in the URL never reach a message.
        let shown = redact_url(&settings.endpoint);
        let unavailable = |detail: String| StoreError::Unavailable {
            endpoint: shown.clone(),
            detail: redact(&detail).into_owned(),
        };
        // HTTPS trusts the system's roots, plus a private CA when MINIO_CA_FILE names one.
        let ca_pem = match &settings.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| StoreError::Refused {
                endpoint: shown.clone(),
                what: format!("the CA file {}", path.display()),
                detail: e.to_string(),
            })?),
            None => None,
        };
        let bad_ca = |e: String| StoreError::Refused {
            endpoint: shown.clone(),
            what: "MINIO_CA_FILE".into(),
            detail: format!("not a PEM certificate bundle: {e}"),
        };
        let mut client_options = ClientOptions::new()
            .with_allow_http(true)
            .with_connect_timeout(timeout)
            .with_timeout(Duration::from_secs(60));
        let mut extra_roots = Vec::new();
        if let Some(pem) = &ca_pem {
            for cert in object_store::Certificate::from_pem_bundle(pem)
                .map_err(|e| bad_ca(e.to_string()))?
            {
                client_options = client_options.with_root_certificate(cert);
            }
            extra_roots =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| bad_ca(e.to_string()))?;
        }
        let store = s3_builder(settings, &settings.endpoint)
            // Reads, lists and deletes only: writes go through `S3Direct::put_object`.
            .with_unsigned_payload(true)
            // Short internal retries: outages are ours to notice, log and ride out (pipeline::retry).
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
                ..RetryConfig::default()
            })
            .with_client_options(client_options)
            .build()
            .map_err(|e| unavailable(e.to_string()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(Duration::from_secs(60))
            // One idle connection per upload in flight, so bursts reuse connections.
            .pool_max_idle_per_host(64)
            .tls_certs_merge(extra_roots)
            .build()
            .map_err(|e| unavailable(e.to_string()))?;
        let store = Arc::new(store);
        let credentials = store.credentials().clone();
        // Presigned URLs carry the host they were signed for: a public endpoint gets a signer of
        // its own (signing only, it sends nothing).
        let signer = match &settings.public_endpoint {
            None => store.clone(),
            Some(public) => Arc::new(
                s3_builder(settings, public)
                    .with_allow_http(true)
                    .build()
                    .map_err(|e| unavailable(e.to_string()))?,
            ),
        };
        Ok(ImageStore {
            signer: Some(signer),
            inner: store,
            bucket: settings.bucket.clone(),
            endpoint: shown.clone(),
            s3: Some(S3Direct {
                settings: settings.clone(),
                // The provider object_store chose (static keys or the AWS chain, which caches and
                // refreshes): every request, the checksummed PUT too, signs with the same.
                credentials,
                http,
                admin_timeout: timeout * 3,
            }),
        })
    }

    /// An in-memory store with the same semantics, for tests that need no MinIO.
    pub fn in_memory(bucket: &str) -> Self {
        ImageStore {
            inner: Arc::new(InMemory::new()),
            bucket: bucket.to_string(),
            endpoint: "memory://".into(),
            s3: None,
            signer: None,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Writes an image under `key` unless the key already exists; never replaces stored bytes.
    /// The store refuses bytes whose SHA-256 is not `sha256` (lowercase or uppercase hex).
    pub async fn put_image(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
        sha256: &str,
    ) -> Result<PutOutcome, StoreError> {
        let digest = parse_sha256(sha256).ok_or_else(|| StoreError::ChecksumMismatch {
            key: key.to_string(),
            declared: sha256.to_string(),
            detail: "not 64 hex digits".into(),
        })?;
        let mut vanished = 0;
        let existing = loop {
            let written = match &self.s3 {
                Some(s3) => {
                    s3.put_object(key, data.clone(), content_type, &digest)
                        .await?
                }
                None => {
                    self.put_in_memory(key, data.clone(), content_type, sha256)
                        .await?
                }
            };
            if written {
                return Ok(PutOutcome::Created);
            }
            // The store refused the write for the existing key before it hashed the body, so the
            // bytes are checked here; only replays pay for it.
            check_bytes(key, &data, sha256)?;
            match self.stored_sha256(key).await {
                Ok(existing) => break existing,
                // Deleted between the refused write and this read: `verify --repair` removing an
                // orphan this replay is about to index. Write it again.
                Err(StoreError::NotFound { .. }) if vanished < 3 => vanished += 1,
                Err(e) => return Err(e),
            }
        };
        if existing.eq_ignore_ascii_case(sha256) {
            Ok(PutOutcome::AlreadyStored)
        } else {
            Err(StoreError::Conflict {
                key: key.to_string(),
                existing,
            })
        }
    }

    /// The in-memory twin of `S3Direct::put_object`: the same checksum check, then a create-only
    /// write. False when the key already exists.
    async fn put_in_memory(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
        sha256: &str,
    ) -> Result<bool, StoreError> {
        check_bytes(key, &data, sha256)?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.to_string().into());
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&Path::from(key), PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.classify(e, key)),
        }
    }

    /// The SHA-256 of what `key` holds: the checksum the store kept at write time when it has
    /// one, otherwise the hash of the downloaded bytes.
    async fn stored_sha256(&self, key: &str) -> Result<String, StoreError> {
        if let Some(s3) = &self.s3
            && let Some(digest) = s3.stored_checksum(key).await?
        {
            return Ok(hex::encode(digest));
        }
        Ok(sha256_hex(&self.get(key).await?))
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let result = self
            .inner
            .get(&Path::from(key))
            .await
            .map_err(|e| self.classify(e, key))?;
        result.bytes().await.map_err(|e| self.classify(e, key))
    }

    /// `key`'s bytes with its current modification time and content type.
    pub async fn fetch(&self, key: &str) -> Result<FetchedObject, StoreError> {
        let result = self
            .inner
            .get(&Path::from(key))
            .await
            .map_err(|e| self.classify(e, key))?;
        let last_modified = result.meta.last_modified;
        let content_type = result
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        let bytes = result.bytes().await.map_err(|e| self.classify(e, key))?;
        Ok(FetchedObject {
            bytes,
            last_modified,
            content_type,
        })
    }

    /// The time by the store's clock: the `Date` of its answer to a HEAD of the bucket. Object
    /// ages are judged by this, not by our own clock: the modification times the store lists
    /// are its own, and the two clocks may disagree by more than any grace period.
    pub async fn clock(&self) -> Result<DateTime<Utc>, StoreError> {
        match &self.s3 {
            Some(s3) => s3.clock().await,
            None => Ok(Utc::now()),
        }
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
            .map_err(|e| self.classify(e, key))
    }

    /// Deletes one object. On S3 a plain DELETE of that key: object_store sends a multi-object
    /// DeleteObjects, which MinIO refuses to a key whose policy allows `s3:DeleteObject` on
    /// `images/*` only (the repair key of deploy/policies/s3-repair.json).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match &self.s3 {
            Some(s3) => s3.delete_object(key).await,
            None => self
                .inner
                .delete(&Path::from(key))
                .await
                .map_err(|e| self.classify(e, key)),
        }
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
        match &self.s3 {
            Some(s3) => s3.bucket_exists().await,
            None => Ok(true),
        }
    }

    /// Creates the bucket if it is missing; true when it was created now.
    pub async fn create_bucket(&self) -> Result<bool, StoreError> {
        match &self.s3 {
            Some(s3) => s3.create_bucket().await,
            None => Ok(false),
        }
    }

    /// Deletes every object and then the bucket itself; for test teardown.
    pub async fn destroy_bucket(&self) -> Result<(), StoreError> {
        for object in self.list("").await? {
            self.delete(&object.key).await?;
        }
        match &self.s3 {
            Some(s3) => s3.delete_bucket().await,
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
            // Some refusals arrive as generic errors carrying S3's own code.
            E::Generic { ref source, .. } if source.to_string().contains("AccessDenied") => {
                StoreError::Denied {
                    bucket: self.bucket.clone(),
                    detail: one_line(&**source),
                }
            }
            E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
                StoreError::Denied {
                    bucket: self.bucket.clone(),
                    detail: one_line(&*source),
                }
            }
            other => StoreError::unanswered(&self.endpoint, one_line(&other)),
        }
    }
}

/// The bucket and credentials of `settings`, at `endpoint`, path-style.
fn s3_builder(settings: &StoreSettings, endpoint: &str) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::new();
    match &settings.aws_chain {
        // object_store's own reading of the AWS variables (as its `from_env` does, from ours).
        Some(aws) => {
            for (key, value) in aws {
                if let Ok(config_key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(config_key, value);
                }
            }
        }
        None => {
            builder = builder
                .with_access_key_id(&settings.access_key)
                .with_secret_access_key(&settings.secret_key);
        }
    }
    // Virtual-hosted: object_store takes the endpoint with the bucket already in its host.
    let endpoint = if settings.virtual_hosted {
        bucket_url(settings, endpoint)
    } else {
        endpoint.to_string()
    };
    builder
        .with_endpoint(endpoint)
        .with_bucket_name(&settings.bucket)
        .with_region(&settings.region)
        .with_virtual_hosted_style_request(settings.virtual_hosted)
}

/// The bucket's URL at `endpoint`: `https://host/bucket`, or `https://bucket.host` virtual-hosted.
fn bucket_url(settings: &StoreSettings, endpoint: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, host)) if settings.virtual_hosted => {
            format!("{scheme}://{}.{host}", settings.bucket)
        }
        _ => format!("{endpoint}/{}", settings.bucket),
    }
}

/// An error and its causes on one line, without the credentials of any URL they quote.
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
    redact(&line.replace('\n', " ")).into_owned()
}

/// Signed S3 requests that `object_store` does not offer: a write carrying a checksum the caller
/// already knows (object_store can only compute one itself, which would hash every image again),
/// and bucket-level calls. Signed with object_store's own SigV4 signer.
#[derive(Clone)]
struct S3Direct {
    settings: StoreSettings,
    credentials: AwsCredentialProvider,
    http: reqwest::Client,
    admin_timeout: Duration,
}

/// An S3 answer: status, the checksum and date headers when there are any, and the error body.
struct S3Answer {
    status: u16,
    checksum: Option<http::HeaderValue>,
    date: Option<http::HeaderValue>,
    error: String,
}

const CHECKSUM_SHA256: &str = "x-amz-checksum-sha256";

/// How often a failed send is repeated at once before the store counts as unavailable.
const QUICK_RESENDS: u32 = 3;

impl S3Direct {
    /// A create-only write that the store verifies against `sha256`. False when the key exists.
    async fn put_object(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
        sha256: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let checksum = BASE64.encode(sha256);
        let headers = [
            (
                http::header::CONTENT_TYPE.as_str(),
                content_type.to_string(),
            ),
            (http::header::IF_NONE_MATCH.as_str(), "*".to_string()),
            (CHECKSUM_SHA256, checksum.clone()),
        ];
        let answer = self
            .send(http::Method::PUT, Some(key), &headers, Some(data))
            .await?;
        match answer.status {
            // S3 and MinIO echo the checksum they verified. A store that answers without it
            // ignored the header and checked nothing: stop rather than store unverified images.
            200 if answer.checksum.as_ref().map(|v| v.as_bytes()) == Some(checksum.as_bytes()) => {
                Ok(true)
            }
            200 => Err(StoreError::ChecksumUnsupported {
                endpoint: self.shown_endpoint(),
            }),
            412 => Ok(false),
            400 if matches!(
                answer.code(),
                Some("XAmzContentChecksumMismatch" | "BadDigest")
            ) =>
            {
                Err(StoreError::ChecksumMismatch {
                    key: key.to_string(),
                    declared: hex::encode(sha256),
                    detail: "the store computed another".into(),
                })
            }
            // A concurrent conditional write to the same key is still in progress: try again.
            409 => Err(self.unavailable(format!("PUT {key} answered HTTP 409, retrying"))),
            _ => Err(self.refused(&answer, &format!("PUT {key}"))),
        }
    }

    /// The SHA-256 checksum the store kept for `key`, if it was written with one.
    async fn stored_checksum(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let headers = [("x-amz-checksum-mode", "ENABLED".to_string())];
        let answer = self
            .send(http::Method::HEAD, Some(key), &headers, None)
            .await?;
        match answer.status {
            200 => Ok(answer
                .checksum
                .and_then(|v| BASE64.decode(v.as_bytes()).ok())
                .filter(|d| d.len() == 32)),
            404 => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
            _ => Err(self.refused(&answer, &format!("HEAD {key}"))),
        }
    }

    async fn bucket_exists(&self) -> Result<bool, StoreError> {
        let answer = self.send(http::Method::HEAD, None, &[], None).await?;
        match answer.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.refused(&answer, "HEAD bucket")),
        }
    }

    async fn clock(&self) -> Result<DateTime<Utc>, StoreError> {
        let answer = self.send(http::Method::HEAD, None, &[], None).await?;
        if answer.status != 200 {
            return Err(self.refused(&answer, "HEAD bucket"));
        }
        let date = answer.date.as_ref().and_then(|v| v.to_str().ok());
        date.and_then(parse_http_date).ok_or_else(|| StoreError::Refused {
            endpoint: self.shown_endpoint(),
            what: "HEAD bucket".into(),
            detail: format!(
                "its answer carries no readable Date header ({date:?}), so object ages cannot be \
                 judged by the store's clock"
            ),
        })
    }

    async fn create_bucket(&self) -> Result<bool, StoreError> {
        if self.bucket_exists().await? {
            return Ok(false);
        }
        let answer = self.send(http::Method::PUT, None, &[], None).await?;
        match answer.status {
            200 => Ok(true),
            409 => Ok(false), // created concurrently: BucketAlreadyOwnedByYou
            _ => Err(self.refused(&answer, "create bucket")),
        }
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        let answer = self
            .send(http::Method::DELETE, Some(key), &[], None)
            .await?;
        match answer.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.refused(&answer, "delete object")),
        }
    }

    async fn delete_bucket(&self) -> Result<(), StoreError> {
        let answer = self.send(http::Method::DELETE, None, &[], None).await?;
        match answer.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.refused(&answer, "delete bucket")),
        }
    }

    /// Signs and sends one request to the bucket (`key` None) or an object in it. Transport
    /// failures and 5xx answers are `Unavailable`; refused credentials are `Denied`; a missing
    /// bucket is `NoBucket`; every other answer goes back to the caller.
    async fn send(
        &self,
        method: http::Method,
        key: Option<&str>,
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<S3Answer, StoreError> {
        let s = &self.settings;
        let url = match key {
            Some(key) => format!("{}/{key}", bucket_url(s, &s.endpoint)),
            None => bucket_url(s, &s.endpoint),
        };
        let mut signed = http::Request::builder().method(method.clone()).uri(&url);
        for (name, value) in headers {
            signed = signed.header(*name, value);
        }
        if let Some(body) = &body {
            signed = signed.header(http::header::CONTENT_LENGTH, body.len());
        }
        let mut signed = signed
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| StoreError::UnbuildableRequest {
                key: key.unwrap_or("the bucket").to_string(),
                detail: e.to_string(),
            })?;
        // The payload is not part of the signature: its checksum header is, and the store checks
        // the bytes against it.
        let credential =
            self.credentials
                .get_credential()
                .await
                .map_err(|e| StoreError::Denied {
                    bucket: s.bucket.clone(),
                    detail: format!("no credentials from the AWS chain: {}", one_line(&e)),
                })?;
        AwsAuthorizer::new(&credential, "s3", &s.region)
            .with_sign_payload(false)
            .try_authorize(&mut signed, None)
            .map_err(|e| self.unavailable(format!("signing request: {e}")))?;
        // A request sent on a pooled connection the store has just closed fails without saying
        // anything about the store's health. MinIO closes a connection after answering a
        // create-only write early (412, body unread), which replays after a rebalance do by the
        // hundred. So a failed send is resent at once, on another connection, before the store
        // is called unavailable; every request here is idempotent.
        let mut resends = 0;
        let response = loop {
            let mut request = self.http.request(method.clone(), &url);
            for (name, value) in signed.headers() {
                request = request.header(name, value);
            }
            request = match &body {
                Some(body) => request.body(body.clone()),
                None => request.timeout(self.admin_timeout),
            };
            match request.send().await {
                Ok(response) => break response,
                Err(e) => {
                    let detail = one_line(&e);
                    // A refused certificate is refused again on any connection.
                    let failure = StoreError::unanswered(&s.endpoint, detail.clone());
                    if resends < QUICK_RESENDS && !e.is_timeout() && failure.is_transient() {
                        resends += 1;
                        tracing::debug!(
                            error = %redact(&detail),
                            url = %redact(&url),
                            "resending on a fresh connection"
                        );
                        continue;
                    }
                    return Err(failure);
                }
            }
        };
        let status = response.status().as_u16();
        let checksum = response.headers().get(CHECKSUM_SHA256).cloned();
        let date = response.headers().get(http::header::DATE).cloned();
        let error = if status >= 300 {
            response.text().await.unwrap_or_default()
        } else {
            String::new()
        };
        let answer = S3Answer {
            status,
            checksum,
            date,
            error,
        };
        match status {
            401 | 403 => Err(StoreError::Denied {
                bucket: s.bucket.clone(),
                detail: answer.describe(),
            }),
            404 if answer.code() == Some("NoSuchBucket") => Err(StoreError::NoBucket {
                bucket: s.bucket.clone(),
                endpoint: self.shown_endpoint(),
            }),
            _ if answer.is_transient() => Err(self.unavailable(answer.describe())),
            _ => Ok(answer),
        }
    }

    /// The endpoint as messages name it, without credentials.
    fn shown_endpoint(&self) -> String {
        redact_url(&self.settings.endpoint)
    }

    fn unavailable(&self, detail: String) -> StoreError {
        StoreError::Unavailable {
            endpoint: self.shown_endpoint(),
            detail: redact(&detail).into_owned(),
        }
    }

    fn refused(&self, answer: &S3Answer, what: &str) -> StoreError {
        StoreError::Refused {
            endpoint: self.shown_endpoint(),
            what: what.to_string(),
            detail: answer.describe(),
        }
    }
}

impl S3Answer {
    /// The error code in S3's XML error body, e.g. `NoSuchBucket`.
    fn code(&self) -> Option<&str> {
        self.error_field("Code")
    }

    fn error_field(&self, name: &str) -> Option<&str> {
        let open = format!("<{name}>");
        let start = self.error.find(&open)? + open.len();
        let len = self.error[start..].find(&format!("</{name}>"))?;
        Some(&self.error[start..start + len])
    }

    /// The store could not finish the request this time, for reasons of its own: every 5xx;
    /// 408 and 429; S3's `RequestTimeout` and `SlowDown`; and MinIO's 499 `ClientDisconnected`,
    /// which MinIO also answers when an operation of its own was cancelled under a still-open
    /// request (a lock it lost, seen on a loaded machine mid-rebalance). Every request here is
    /// idempotent, so each of these is sent again after a backoff, not treated as a refusal.
    fn is_transient(&self) -> bool {
        matches!(self.status, 408 | 429 | 499 | 500..)
            || matches!(self.code(), Some("RequestTimeout" | "SlowDown"))
    }

    /// "HTTP 400 InvalidArgument: message", from the status and S3's XML error body.
    fn describe(&self) -> String {
        match (self.code(), self.error_field("Message")) {
            (Some(code), Some(message)) => format!("HTTP {} {code}: {message}", self.status),
            (Some(code), None) => format!("HTTP {} {code}", self.status),
            _ => format!("HTTP {}", self.status),
        }
    }
}

/// An HTTP `Date` (`Tue, 15 Nov 1994 08:12:31 GMT`, RFC 9110's IMF-fixdate).
fn parse_http_date(date: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(date)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// Hashes `data` and refuses it when it is not what `sha256` declares.
fn check_bytes(key: &str, data: &[u8], sha256: &str) -> Result<(), StoreError> {
    let actual = sha256_hex(data);
    if actual.eq_ignore_ascii_case(sha256) {
        Ok(())
    } else {
        Err(StoreError::ChecksumMismatch {
            key: key.to_string(),
            declared: sha256.to_string(),
            detail: format!("computed {actual}"),
        })
    }
}

/// The 32 bytes of a hex SHA-256, or None when it is not 64 hex digits.
fn parse_sha256(declared: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(declared, &mut digest).ok()?;
    Some(digest)
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

    #[tokio::test]
    async fn bytes_that_do_not_match_their_declared_sha256_are_not_stored() {
        let store = ImageStore::in_memory("b");
        let data = Bytes::from_static(b"image bytes");
        let err = store
            .put_image("k", data, "image/png", &sha256_hex(b"other bytes"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ChecksumMismatch { .. }), "{err}");
        assert!(!err.is_transient());
        assert!(store.list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_declared_sha256_that_is_not_hex_is_a_mismatch_not_an_outage() {
        let store = ImageStore::in_memory("b");
        let err = store
            .put_image("k", Bytes::from_static(b"x"), "image/png", "not-a-hash")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ChecksumMismatch { .. }), "{err}");
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn the_bucket_is_in_the_path_or_in_the_host_name() {
        let mut settings = crate::config::Settings::from_vars(&crate::config::tests::vars(&[
            (
                "MINIO_CONNECTION_STRING",
                "https://s3.eu-west-1.amazonaws.com",
            ),
            ("MINIO_BUCKET_NAME", "photos"),
        ]))
        .unwrap()
        .store;
        let endpoint = settings.endpoint.clone();
        assert_eq!(
            bucket_url(&settings, &endpoint),
            "https://s3.eu-west-1.amazonaws.com/photos"
        );
        settings.virtual_hosted = true;
        assert_eq!(
            bucket_url(&settings, &endpoint),
            "https://photos.s3.eu-west-1.amazonaws.com"
        );
        // object_store, given the same, addresses objects there too.
        use object_store::signer::Signer;
        let store = s3_builder(&settings, &endpoint).build().unwrap();
        let path = object_store::path::Path::from("images/a.png");
        let url = store
            .signed_url(http::Method::GET, &path, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(url.host_str(), Some("photos.s3.eu-west-1.amazonaws.com"));
        assert_eq!(url.path(), "/images/a.png");
    }

    #[test]
    fn an_s3_error_body_is_described_by_its_code_and_message() {
        let answer = S3Answer {
            status: 400,
            checksum: None,
            date: None,
            error: "<?xml version=\"1.0\"?><Error><Code>InvalidArgument</Code><Message>Bad thing.</Message></Error>".into(),
        };
        assert_eq!(answer.describe(), "HTTP 400 InvalidArgument: Bad thing.");
        let bare = S3Answer {
            status: 503,
            checksum: None,
            date: None,
            error: String::new(),
        };
        assert_eq!(bare.describe(), "HTTP 503");
    }

    #[test]
    fn the_stores_date_header_is_read_as_utc() {
        let date = parse_http_date("Tue, 15 Nov 1994 08:12:31 GMT").unwrap();
        assert_eq!(date.to_rfc3339(), "1994-11-15T08:12:31+00:00");
        assert_eq!(parse_http_date("yesterday"), None);
    }

    /// A store that gives every request the same `answer`, whole HTTP response included.
    async fn store_answering(answer: &'static [u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    // One request per connection; its body is small enough for one read or two.
                    let _ = socket.read(&mut buf).await;
                    let _ = socket.write_all(answer).await;
                });
            }
        });
        endpoint
    }

    /// Settings for a store at `endpoint`.
    fn settings_at(endpoint: String) -> StoreSettings {
        StoreSettings {
            endpoint,
            bucket: "b".into(),
            access_key: "k".into(),
            secret_key: "s".into(),
            region: "us-east-1".into(),
            ca_file: None,
            aws_chain: None,
            virtual_hosted: false,
            public_endpoint: None,
        }
    }

    /// What a PUT of a small image to a store giving every request `answer` comes to.
    async fn put_answered_with(answer: &'static [u8]) -> StoreError {
        let settings = settings_at(store_answering(answer).await);
        let store = ImageStore::s3(&settings, Duration::from_secs(2)).unwrap();
        let data = Bytes::from_static(b"image bytes");
        store
            .put_image("k", data.clone(), "image/png", &sha256_hex(&data))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn a_content_type_that_is_no_header_value_refuses_the_record_instead_of_waiting() {
        // Nothing listens there: a request that were sent would be an outage to wait out.
        let store = ImageStore::s3(
            &settings_at("http://127.0.0.1:1".into()),
            Duration::from_secs(2),
        )
        .unwrap();
        let data = Bytes::from_static(b"image bytes");
        let err = store
            .put_image("k", data.clone(), "image/png\n", &sha256_hex(&data))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::UnbuildableRequest { .. }),
            "{err}"
        );
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn a_store_that_does_not_verify_the_checksum_is_a_permanent_error_naming_the_header() {
        // 200 with no checksum echoed: what an S3-compatible server without additional-checksum
        // support does. MinIO cannot be made to behave so.
        let err =
            put_answered_with(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        assert!(
            matches!(err, StoreError::ChecksumUnsupported { .. }),
            "{err}"
        );
        assert!(!err.is_transient());
        assert!(err.to_string().contains("x-amz-checksum-sha256"), "{err}");
    }

    #[tokio::test]
    async fn a_request_the_store_gave_up_on_is_retried_not_refused() {
        // MinIO answered this to a PUT in CI, mid-rebalance on a loaded machine; the consumer
        // took it for a refusal and stopped.
        let err = put_answered_with(
            b"HTTP/1.1 499 Client Closed Request\r\ncontent-length: 110\r\nconnection: close\r\n\r\n\
              <Error><Code>ClientDisconnected</Code><Message>Client disconnected before response was ready</Message></Error>",
        )
        .await;
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("HTTP 499 ClientDisconnected"),
            "{err}"
        );
        let slow = put_answered_with(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 42\r\nconnection: close\r\n\r\n\
              <Error><Code>RequestTimeout</Code></Error>",
        )
        .await;
        assert!(slow.is_transient(), "{slow}");
    }

    #[tokio::test]
    async fn a_request_the_store_refuses_stays_refused() {
        let err = put_answered_with(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 43\r\nconnection: close\r\n\r\n\
              <Error><Code>InvalidArgument</Code></Error>",
        )
        .await;
        assert!(matches!(err, StoreError::Refused { .. }), "{err}");
        assert!(!err.is_transient());
    }
}
