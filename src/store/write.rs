//! Where an image is written: the pipeline's `ImageSink` port, and `put_image` behind it.
//!
//! One create-only write that the store verifies against the declared SHA-256. When the key is
//! already taken, the bytes are checked here, the checksum the store kept for the key is read,
//! and the two decide: the same image is a replay (success), another is a conflict (the record
//! is refused, the stored image stays). The S3 client and its in-memory twin both answer the
//! two questions this asks, so tests run this very function.

use super::{
    Encryption, ImageStore, PutOutcome, StoreError, UPLOAD_MARK_HEADER, UPLOAD_MARK_VALUE,
    UploadedPart, WriteOptions,
};
use crate::domain::{ImageRecord, ImageReference, object_key, sha256_hex};
use crate::pipeline::{Failure, ImageSink, Put, Refusal};
use bytes::Bytes;
use futures::future::BoxFuture;

/// The image sink port: the one place an image is written.
impl ImageSink for ImageStore {
    fn put<'a>(&'a self, record: &'a ImageRecord) -> BoxFuture<'a, Result<Put, Failure>> {
        Box::pin(async move {
            if let Some(reference) = &record.reference {
                return self
                    .claim(record, reference)
                    .await
                    .map_err(|e| Failure::judged(&e, e.is_transient()));
            }
            let key = object_key(&record.image_id);
            let written = self
                .put_image_labelled(
                    &key,
                    record.data.clone(),
                    &record.content_type,
                    &record.sha256,
                    Some(ObjectLabels::of(record)),
                    false,
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

/// What an object is tagged with, when `MINIO_OBJECT_TAGS` asks for tags.
#[derive(Debug, Clone, Copy)]
pub struct ObjectLabels<'a> {
    pub customer: &'a str,
    pub source: &'a str,
}

impl<'a> ObjectLabels<'a> {
    pub fn of(record: &'a ImageRecord) -> Self {
        ObjectLabels {
            customer: &record.customer_id,
            source: &record.source_id,
        }
    }
}

/// How a producer's upload goes: one PUT up to `part_bytes`, parts of that size above it.
#[derive(Debug, Clone, Copy)]
pub struct UploadShape {
    pub part_bytes: usize,
    pub parts_in_flight: usize,
}

/// How much of a referenced image's head is read to check its signature and header: PNG and
/// WebP say their size in the first bytes; a JPEG's frame header comes after its EXIF and ICC
/// segments, which cameras keep well below this.
const HEAD_BYTES: u64 = 256 * 1024;

impl ImageStore {
    /// The request headers every write carries: encryption, storage class, tags, and the mark of
    /// a producer's upload.
    pub(super) fn write_headers(
        &self,
        labels: Option<ObjectLabels<'_>>,
        producer_upload: bool,
    ) -> Vec<(String, String)> {
        let o = &self.write;
        let mut headers = Vec::new();
        match &o.encryption {
            Encryption::None => {}
            Encryption::S3 => {
                headers.push(("x-amz-server-side-encryption".into(), "AES256".into()));
            }
            Encryption::Kms { key_id } => {
                headers.push(("x-amz-server-side-encryption".into(), "aws:kms".into()));
                if let Some(id) = key_id {
                    headers.push((
                        "x-amz-server-side-encryption-aws-kms-key-id".into(),
                        id.clone(),
                    ));
                }
            }
        }
        if let Some(class) = &o.storage_class {
            headers.push(("x-amz-storage-class".into(), class.clone()));
        }
        if let Some(labels) = labels {
            let mut tags = url::form_urlencoded::Serializer::new(String::new());
            if o.tag_customer {
                tags.append_pair("customer", labels.customer);
            }
            if o.tag_source {
                tags.append_pair("source", labels.source);
            }
            let tags = tags.finish();
            if !tags.is_empty() {
                headers.push(("x-amz-tagging".into(), tags));
            }
        }
        if producer_upload {
            headers.push((UPLOAD_MARK_HEADER.into(), UPLOAD_MARK_VALUE.into()));
        }
        headers
    }

    /// Whether the store takes the write options (encryption, KMS key, storage class, tags): a
    /// multipart upload carrying them is started and aborted, so nothing is written. A store that
    /// refuses one is a setting to fix before any record is read, not a dead letter per record.
    pub async fn check_write_options(&self) -> Result<(), StoreError> {
        if self.write == WriteOptions::default() {
            return Ok(());
        }
        let key = format!("{}.write-options-check", crate::domain::OBJECT_PREFIX);
        let labels = ObjectLabels {
            customer: "check",
            source: "check",
        };
        let extra = self.write_headers(Some(labels), false);
        let refused = |detail: String| StoreError::WriteOptionsRefused {
            endpoint: self.endpoint.clone(),
            detail,
        };
        let upload_id = match self
            .backend
            .create_multipart(&key, "application/octet-stream", &extra)
            .await
        {
            Ok(id) => id,
            Err(
                e @ (StoreError::Unavailable { .. }
                | StoreError::Tls { .. }
                | StoreError::NoBucket { .. }),
            ) => return Err(e),
            Err(StoreError::Refused { detail, .. } | StoreError::Denied { detail, .. }) => {
                return Err(refused(detail));
            }
            Err(e) => return Err(refused(e.to_string())),
        };
        if let Err(e) = self.backend.abort_multipart(&key, &upload_id).await {
            tracing::debug!(error = %e, "could not abort the write-options check's upload");
        }
        Ok(())
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
        self.put_image_labelled(key, data, content_type, sha256, None, false)
            .await
    }

    /// `put_image`, with the object's tags and, for a producer's upload, its mark.
    pub async fn put_image_labelled(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
        sha256: &str,
        labels: Option<ObjectLabels<'_>>,
        producer_upload: bool,
    ) -> Result<PutOutcome, StoreError> {
        let extra = self.write_headers(labels, producer_upload);
        self.put_with_headers(key, data, content_type, sha256, &extra)
            .await
    }

    /// An object written again as it was, with the tags it had (`verify --repair` writing back an
    /// orphan it deleted), and the encryption and storage class every write carries.
    pub async fn put_image_restored(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
        sha256: &str,
        tags: &[(String, String)],
    ) -> Result<PutOutcome, StoreError> {
        let mut extra = self.write_headers(None, false);
        if !tags.is_empty() {
            let mut tagging = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in tags {
                tagging.append_pair(k, v);
            }
            extra.push(("x-amz-tagging".into(), tagging.finish()));
        }
        self.put_with_headers(key, data, content_type, sha256, &extra)
            .await
    }

    async fn put_with_headers(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
        sha256: &str,
        extra: &[(String, String)],
    ) -> Result<PutOutcome, StoreError> {
        let digest = parse_sha256(sha256).ok_or_else(|| StoreError::ChecksumMismatch {
            key: key.to_string(),
            declared: sha256.to_string(),
            detail: "not 64 hex digits".into(),
        })?;
        let mut vanished = 0;
        let existing = loop {
            let written = self
                .backend
                .put_object(key, data.clone(), content_type, &digest, extra)
                .await?;
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

    /// A producer's upload of an image too large for the topic (the claim check): create-only,
    /// verified by the store, marked as a producer's; in one PUT up to `shape.part_bytes`, in
    /// parts of that size above (each verified against its own SHA-256, `parts_in_flight` at a
    /// time). `data` is sliced, not copied.
    pub async fn upload_image(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
        sha256: &str,
        labels: ObjectLabels<'_>,
        shape: UploadShape,
    ) -> Result<PutOutcome, StoreError> {
        if data.len() <= shape.part_bytes {
            return self
                .put_image_labelled(key, data, content_type, sha256, Some(labels), true)
                .await;
        }
        let extra = self.write_headers(Some(labels), true);
        let upload_id = self
            .backend
            .create_multipart(key, content_type, &extra)
            .await?;
        let parts = self.upload_parts(key, &upload_id, &data, shape).await;
        self.complete_upload(key, &upload_id, parts, sha256).await
    }

    /// Completes a producer's multipart upload create-only, or aborts it when `parts` failed;
    /// a key that already holds the same image is a replay, another image a conflict.
    pub(super) async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Result<Vec<UploadedPart>, StoreError>,
        sha256: &str,
    ) -> Result<PutOutcome, StoreError> {
        let completed = match parts {
            Ok(parts) => {
                self.backend
                    .complete_multipart(key, upload_id, &parts)
                    .await
            }
            Err(e) => Err(e),
        };
        let created = match completed {
            Ok(created) => created,
            Err(e) => {
                // Best effort: a store keeps an unfinished upload's parts until it is aborted
                // (or a lifecycle rule drops it).
                if let Err(abort) = self.backend.abort_multipart(key, upload_id).await {
                    tracing::warn!(key, error = %abort, "could not abort an unfinished upload");
                }
                return Err(e);
            }
        };
        if created {
            return Ok(PutOutcome::Created);
        }
        let _ = self.backend.abort_multipart(key, upload_id).await;
        let existing = self.stored_sha256(key).await?;
        if existing.eq_ignore_ascii_case(sha256) {
            Ok(PutOutcome::AlreadyStored)
        } else {
            Err(StoreError::Conflict {
                key: key.to_string(),
                existing,
            })
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        data: &Bytes,
        shape: UploadShape,
    ) -> Result<Vec<UploadedPart>, StoreError> {
        use futures::{StreamExt, TryStreamExt};
        let part = shape.part_bytes.max(1);
        let chunks: Vec<(u32, Bytes)> = (0..data.len().div_ceil(part))
            .map(|i| {
                let end = ((i + 1) * part).min(data.len());
                (i as u32 + 1, data.slice(i * part..end))
            })
            .collect();
        futures::stream::iter(chunks)
            .map(|(number, chunk)| async move {
                // Hashing 16 MiB takes tens of milliseconds: off the async thread.
                let hashed = chunk.clone();
                let digest: [u8; 32] = tokio::task::spawn_blocking(move || {
                    use sha2::Digest;
                    sha2::Sha256::digest(&hashed).into()
                })
                .await
                .map_err(|e| StoreError::Unavailable {
                    endpoint: self.endpoint.clone(),
                    detail: format!("hashing a part stopped: {e}"),
                })?;
                self.backend
                    .upload_part(key, upload_id, number, chunk, digest)
                    .await
            })
            .buffered(shape.parts_in_flight.max(1))
            .try_collect()
            .await
    }

    /// The consumer's side of the claim check: the object a reference names is stored as an image
    /// only if it is there with the declared size and SHA-256, and its head passes the checks an
    /// inline image gets. The key was checked against the record before (validate). Every
    /// mismatch is the record's refusal, with its own code.
    pub async fn claim(
        &self,
        record: &ImageRecord,
        reference: &ImageReference,
    ) -> Result<Put, StoreError> {
        let refuse = |code: &'static str, detail: String| {
            Ok(Put::Refused(Refusal::Reference {
                image_id: record.image_id,
                code,
                detail,
            }))
        };
        let key = &reference.key;
        let head = match self.head(key).await {
            Ok(head) => head,
            Err(StoreError::NotFound { .. }) => {
                return refuse(
                    "reference-missing",
                    format!(
                        "no object at {key}: the upload it names never completed, or was removed"
                    ),
                );
            }
            Err(e) => return Err(e),
        };
        if head.size != reference.size {
            return refuse(
                "reference-size-mismatch",
                format!(
                    "{key} holds {} bytes, the reference says {}",
                    head.size, reference.size
                ),
            );
        }
        // The store's own checksum when it kept a full-object one; otherwise the bytes, streamed.
        let actual = match head.sha256 {
            Some(digest) => hex::encode(digest),
            None => {
                let (digest, len) = self.streamed_sha256(key).await?;
                if len != reference.size {
                    return refuse(
                        "reference-size-mismatch",
                        format!(
                            "{key} read {len} bytes, the reference says {}",
                            reference.size
                        ),
                    );
                }
                hex::encode(digest)
            }
        };
        if !actual.eq_ignore_ascii_case(&reference.sha256) {
            return refuse(
                "reference-checksum-mismatch",
                format!(
                    "{key} has sha256 {actual}, the reference says {}",
                    reference.sha256
                ),
            );
        }
        let first = self.get_head(key, HEAD_BYTES.min(reference.size)).await?;
        if let Err(invalid) = crate::validate::validate_head(record, &first) {
            return Ok(Put::Refused(Refusal::Invalid {
                image_id: record.image_id,
                invalid,
            }));
        }
        Ok(Put::AlreadyStored)
    }

    /// The SHA-256 of what `key` holds: the checksum the store kept at write time when it has
    /// one (objects written before checksums were sent have none), otherwise the hash of the
    /// downloaded bytes.
    async fn stored_sha256(&self, key: &str) -> Result<String, StoreError> {
        match self.backend.stored_checksum(key).await? {
            Some(digest) => Ok(hex::encode(digest)),
            None => Ok(hex::encode(self.streamed_sha256(key).await?.0)),
        }
    }
}

/// Hashes `data` and refuses it when it is not what `sha256` declares.
pub(super) fn check_bytes(key: &str, data: &[u8], sha256: &str) -> Result<(), StoreError> {
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
    async fn a_replay_declaring_its_sha256_in_uppercase_is_still_a_replay() {
        let store = ImageStore::in_memory("b");
        let data = Bytes::from_static(b"image bytes");
        let sha = sha256_hex(&data);
        store
            .put_image("k", data.clone(), "image/png", &sha)
            .await
            .unwrap();
        let again = store
            .put_image("k", data, "image/png", &sha.to_uppercase())
            .await
            .unwrap();
        assert_eq!(again, PutOutcome::AlreadyStored);
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

    /// A 320x240 PNG padded to `size` bytes, and its record with a reference to its own key.
    fn referenced(size: usize) -> (ImageRecord, Bytes) {
        let spec = crate::generate::ImageSpec {
            width: 320,
            height: 240,
            format: crate::domain::ImageFormat::Png,
        };
        let mut data = crate::generate::render(&spec, 1).unwrap();
        data.resize(size, 7);
        let data = Bytes::from(data);
        let image_id = uuid::Uuid::new_v4();
        let sha256 = sha256_hex(&data);
        let record = ImageRecord {
            image_id,
            customer_id: "c".into(),
            source_id: "s".into(),
            created_at: chrono::Utc::now(),
            content_type: "image/png".into(),
            width: 320,
            height: 240,
            sha256: sha256.clone(),
            data: Bytes::new(),
            reference: Some(ImageReference {
                key: object_key(&image_id),
                size: size as u64,
                sha256,
            }),
        };
        (record, data)
    }

    const SHAPE: UploadShape = UploadShape {
        part_bytes: 5 << 20,
        parts_in_flight: 2,
    };

    async fn uploaded(store: &ImageStore, record: &ImageRecord, data: &Bytes) -> PutOutcome {
        store
            .upload_image(
                &object_key(&record.image_id),
                data.clone(),
                &record.content_type,
                &record.sha256,
                ObjectLabels::of(record),
                SHAPE,
            )
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_upload_in_parts_is_whole_marked_and_claimed_and_a_second_upload_is_a_replay() {
        let store = ImageStore::in_memory("b");
        let (record, data) = referenced(12 << 20);
        assert_eq!(uploaded(&store, &record, &data).await, PutOutcome::Created);
        assert_eq!(
            uploaded(&store, &record, &data).await,
            PutOutcome::AlreadyStored
        );
        let key = object_key(&record.image_id);
        assert_eq!(store.get(&key).await.unwrap(), data);
        assert!(store.head(&key).await.unwrap().producer_upload);
        let reference = record.reference.clone().unwrap();
        assert_eq!(
            store.claim(&record, &reference).await.unwrap(),
            Put::AlreadyStored
        );
    }

    #[tokio::test]
    async fn a_reference_to_nothing_or_to_other_bytes_is_refused_with_its_code() {
        let store = ImageStore::in_memory("b");
        let (record, data) = referenced(1 << 20);
        let reference = record.reference.clone().unwrap();
        let code = |put: Put| match put {
            Put::Refused(r) => r.code(),
            other => panic!("stored: {other:?}"),
        };
        let missing = store.claim(&record, &reference).await.unwrap();
        assert_eq!(code(missing), "reference-missing");
        uploaded(&store, &record, &data).await;
        let mut longer = reference.clone();
        longer.size += 1;
        let sized = store.claim(&record, &longer).await.unwrap();
        assert_eq!(code(sized), "reference-size-mismatch");
        let mut other = reference.clone();
        other.sha256 = sha256_hex(b"other");
        let hashed = store.claim(&record, &other).await.unwrap();
        assert_eq!(code(hashed), "reference-checksum-mismatch");
        let mut wider = record.clone();
        wider.width = 321;
        let header = store.claim(&wider, &reference).await.unwrap();
        assert_eq!(code(header), "dimension-mismatch");
    }
}
