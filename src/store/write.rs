//! Where an image is written: the pipeline's `ImageSink` port, and `put_image` behind it.
//!
//! One create-only write that the store verifies against the declared SHA-256. When the key is
//! already taken, the bytes are checked here, the checksum the store kept for the key is read,
//! and the two decide: the same image is a replay (success), another is a conflict (the record
//! is refused, the stored image stays). The S3 client and its in-memory twin both answer the
//! two questions this asks, so tests run this very function.

use super::{ImageStore, PutOutcome, StoreError};
use crate::domain::{ImageRecord, object_key, sha256_hex};
use crate::pipeline::{Failure, ImageSink, Put, Refusal};
use bytes::Bytes;
use futures::future::BoxFuture;

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

impl ImageStore {
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
            let written = self
                .backend
                .put_object(key, data.clone(), content_type, &digest)
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

    /// The SHA-256 of what `key` holds: the checksum the store kept at write time when it has
    /// one (objects written before checksums were sent have none), otherwise the hash of the
    /// downloaded bytes.
    async fn stored_sha256(&self, key: &str) -> Result<String, StoreError> {
        match self.backend.stored_checksum(key).await? {
            Some(digest) => Ok(hex::encode(digest)),
            None => Ok(sha256_hex(&self.get(key).await?)),
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
}
