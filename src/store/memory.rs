//! The in-memory twin of the S3 client, for tests that need no MinIO: it answers the same
//! operations with the same semantics (the checksum checked before anything is stored, create-only
//! writes, the checksum a stored object was written with), so `put_image` runs unchanged on it.

use super::error::StoreError;
use super::write::check_bytes;
use super::{Backend, ImageStore};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const ENDPOINT: &str = "memory://";

struct MemoryStore {
    /// The same objects `ImageStore` reads through `object_store`.
    objects: Arc<InMemory>,
    bucket: String,
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
            }),
            signer: None,
        }
    }
}

impl MemoryStore {
    fn error(&self, e: object_store::Error, key: &str) -> StoreError {
        StoreError::from_object_store(e, key, &self.bucket, ENDPOINT)
    }
}

impl Backend for MemoryStore {
    fn put_object<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        content_type: &'a str,
        sha256: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            // What S3 does with x-amz-checksum-sha256: nothing is stored on a mismatch.
            check_bytes(key, &data, &hex::encode(sha256))?;
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, content_type.to_string().into());
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
