//! The in-memory twin of the S3 client, for tests that need no MinIO: it answers the same
//! operations with the same semantics (the checksum checked before anything is stored, create-only
//! writes, the checksum a stored object was written with), so `put_image` runs unchanged on it.

use super::error::StoreError;
use super::write::check_bytes;
use super::{Backend, ImageStore, ObjectHead, UPLOAD_MARK_HEADER, UPLOAD_MARK_VALUE, UploadedPart};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;

const ENDPOINT: &str = "memory://";

struct MemoryStore {
    /// The same objects `ImageStore` reads through `object_store`.
    objects: Arc<InMemory>,
    bucket: String,
    /// Unfinished multipart uploads by id.
    uploads: Mutex<HashMap<String, Upload>>,
}

struct Upload {
    key: String,
    content_type: String,
    extra: Vec<(String, String)>,
    parts: BTreeMap<u32, Bytes>,
}

impl ImageStore {
    /// An in-memory store with the same semantics, for tests that need no MinIO.
    pub fn in_memory(bucket: &str) -> Self {
        let objects = Arc::new(InMemory::new());
        ImageStore {
            objects: objects.clone(),
            bucket: bucket.to_string(),
            endpoint: ENDPOINT.into(),
            backend: Arc::new(MemoryStore {
                objects,
                bucket: bucket.to_string(),
                uploads: Mutex::new(HashMap::new()),
            }),
            signer: None,
            write: Default::default(),
        }
    }
}

/// The mark of a producer's upload, as `object_store` names user metadata.
const MARK: &str = "imgstream-upload";

impl MemoryStore {
    fn error(&self, e: object_store::Error, key: &str) -> StoreError {
        StoreError::from_object_store(e, key, &self.bucket, ENDPOINT)
    }

    /// A create-only write; false when the key exists.
    async fn create(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
        extra: &[(String, String)],
    ) -> Result<bool, StoreError> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.to_string().into());
        if extra
            .iter()
            .any(|(k, v)| k == UPLOAD_MARK_HEADER && v == UPLOAD_MARK_VALUE)
        {
            attributes.insert(Attribute::Metadata(MARK.into()), UPLOAD_MARK_VALUE.into());
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        let path = Path::from(key);
        match (self.objects)
            .put_opts(&path, PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.error(e, key)),
        }
    }
}

impl Backend for MemoryStore {
    fn put_object<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        content_type: &'a str,
        sha256: &'a [u8; 32],
        extra: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            // What S3 does with x-amz-checksum-sha256: nothing is stored on a mismatch.
            check_bytes(key, &data, &hex::encode(sha256))?;
            self.create(key, data, content_type, extra).await
        })
    }

    fn head_object<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectHead, StoreError>> {
        Box::pin(async move {
            let options = object_store::GetOptions {
                head: true,
                ..Default::default()
            };
            let result = (self.objects.get_opts(&Path::from(key), options).await)
                .map_err(|e| self.error(e, key))?;
            let mark = result
                .attributes
                .get(&Attribute::Metadata(MARK.into()))
                .map(|v| v.to_string());
            Ok(ObjectHead {
                size: result.meta.size,
                sha256: self.stored_checksum(key).await?,
                producer_upload: mark.as_deref() == Some(UPLOAD_MARK_VALUE),
                encryption: None,
                storage_class: None,
            })
        })
    }

    fn create_multipart<'a>(
        &'a self,
        key: &'a str,
        content_type: &'a str,
        extra: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(async move {
            let id = uuid::Uuid::new_v4().to_string();
            self.uploads.lock().expect("uploads poisoned").insert(
                id.clone(),
                Upload {
                    key: key.to_string(),
                    content_type: content_type.to_string(),
                    extra: extra.to_vec(),
                    parts: BTreeMap::new(),
                },
            );
            Ok(id)
        })
    }

    fn upload_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: u32,
        data: Bytes,
        sha256: [u8; 32],
    ) -> BoxFuture<'a, Result<UploadedPart, StoreError>> {
        Box::pin(async move {
            check_bytes(key, &data, &hex::encode(sha256))?;
            let mut uploads = self.uploads.lock().expect("uploads poisoned");
            let upload = uploads
                .get_mut(upload_id)
                .ok_or_else(|| StoreError::NotFound {
                    key: format!("{key} (upload {upload_id})"),
                })?;
            upload.parts.insert(number, data);
            Ok(UploadedPart {
                number,
                etag: format!("part-{number}"),
                checksum: base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    sha256,
                ),
            })
        })
    }

    fn complete_multipart<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        _parts: &'a [UploadedPart],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let upload = self
                .uploads
                .lock()
                .expect("uploads poisoned")
                .remove(upload_id)
                .ok_or_else(|| StoreError::NotFound {
                    key: format!("{key} (upload {upload_id})"),
                })?;
            let mut whole = Vec::new();
            for part in upload.parts.values() {
                whole.extend_from_slice(part);
            }
            let data = Bytes::from(whole);
            (self.create(&upload.key, data, &upload.content_type, &upload.extra)).await
        })
    }

    fn abort_multipart<'a>(
        &'a self,
        _key: &'a str,
        upload_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.uploads
                .lock()
                .expect("uploads poisoned")
                .remove(upload_id);
            Ok(())
        })
    }

    /// Every object here was written through `put_object`, which verified its checksum: the hash
    /// of its bytes is the checksum S3 would have kept.
    fn stored_checksum<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<[u8; 32]>, StoreError>> {
        Box::pin(async move {
            let stored = self.objects.get(&Path::from(key)).await;
            let bytes = match stored {
                Ok(result) => result.bytes().await.map_err(|e| self.error(e, key))?,
                Err(e) => return Err(self.error(e, key)),
            };
            Ok(Some(Sha256::digest(&bytes).into()))
        })
    }

    /// The twin keeps no tags (nor encryption or storage class): those are the store's.
    fn object_tags<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async move {
            let options = object_store::GetOptions {
                head: true,
                ..Default::default()
            };
            (self.objects.get_opts(&Path::from(key), options).await)
                .map_err(|e| self.error(e, key))?;
            Ok(Vec::new())
        })
    }

    fn delete_object<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            (self.objects.delete(&Path::from(key)).await).map_err(|e| self.error(e, key))
        })
    }

    /// No other clock to disagree with.
    fn clock(&self) -> BoxFuture<'_, Result<DateTime<Utc>, StoreError>> {
        Box::pin(async { Ok(Utc::now()) })
    }

    /// The bucket is the map itself: it always exists and is never created or deleted.
    fn bucket_exists(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async { Ok(true) })
    }

    fn create_bucket(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }

    fn delete_bucket(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}
