//! A producer's upload of an image whose bytes come as they are made (an encoder writing into
//! it), so the image is never held whole: the writer keeps one part being filled and at most
//! `parts_in_flight` parts on their way, `(parts_in_flight + 1) * part_bytes` in all, whatever the
//! image's size.
//!
//! It cannot know the size in advance, so it holds the first `part_bytes`: an image that ends
//! within them comes back whole (to go inline, or as one PUT with its full-object checksum); one
//! that goes on becomes a multipart upload, its parts uploaded as they fill. The parts stay
//! invisible until [`PendingUpload::complete`], which the producer calls right before it sends
//! the record: as with a whole upload, the object appears only just before its record.
//!
//! The writer runs on a blocking thread (the encoder's) and drives the store through the
//! runtime's handle.

use super::{ImageStore, ObjectLabels, PutOutcome, StoreError, UploadShape, UploadedPart};
use bytes::Bytes;
use sha2::Digest;
use std::collections::VecDeque;
use std::io;
use thiserror::Error;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("the image grew past {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a finished writer holds.
pub struct Spooled {
    pub size: u64,
    /// Lowercase hex SHA-256 of every byte written.
    pub sha256: String,
    pub body: SpooledBody,
}

pub enum SpooledBody {
    /// The whole image, at most `part_bytes`: nothing was uploaded.
    Whole(Bytes),
    /// Every part uploaded; the object is not there until `complete`.
    Parts(Box<PendingUpload>),
}

/// A multipart upload whose parts are all uploaded. Dropped without `complete`, it is aborted.
pub struct PendingUpload {
    store: ImageStore,
    key: String,
    upload_id: Option<String>,
    parts: Vec<UploadedPart>,
    sha256: String,
}

impl PendingUpload {
    /// Makes the object appear, create-only: the same image already there is a replay, another
    /// one a conflict (and the parts are dropped either way).
    pub async fn complete(mut self) -> Result<PutOutcome, StoreError> {
        let upload_id = self.upload_id.take().unwrap_or_default();
        let parts = std::mem::take(&mut self.parts);
        self.store
            .complete_upload(&self.key, &upload_id, Ok(parts), &self.sha256)
            .await
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        // Best effort: the store keeps an unfinished upload's parts until it is aborted (or a
        // lifecycle rule drops it); nothing of it is visible meanwhile.
        if let (Some(upload_id), Ok(runtime)) = (self.upload_id.take(), Handle::try_current()) {
            let (store, key) = (self.store.clone(), std::mem::take(&mut self.key));
            runtime.spawn(async move {
                let _ = store.backend.abort_multipart(&key, &upload_id).await;
            });
        }
    }
}

struct Parts {
    upload_id: String,
    next_number: u32,
    in_flight: VecDeque<JoinHandle<Result<UploadedPart, StoreError>>>,
    done: Vec<UploadedPart>,
}

/// An `io::Write` that uploads what is written to it (see the module's comment).
pub struct UploadWriter {
    store: ImageStore,
    runtime: Handle,
    key: String,
    content_type: String,
    extra: Vec<(String, String)>,
    shape: UploadShape,
    limit: u64,
    buf: Vec<u8>,
    hasher: sha2::Sha256,
    len: u64,
    parts: Option<Parts>,
    failed: Option<SpoolError>,
}

impl ImageStore {
    /// A writer for a producer's upload to `key`: create-only, checksummed, marked and labelled
    /// as [`ImageStore::upload_image`] writes. More than `limit` bytes is refused. To be written
    /// from a blocking thread of `runtime`.
    pub fn upload_writer(
        &self,
        runtime: Handle,
        key: &str,
        content_type: &str,
        labels: ObjectLabels<'_>,
        shape: UploadShape,
        limit: u64,
    ) -> UploadWriter {
        UploadWriter {
            store: self.clone(),
            runtime,
            key: key.to_string(),
            content_type: content_type.to_string(),
            extra: self.write_headers(Some(labels), true),
            shape: UploadShape {
                part_bytes: shape.part_bytes.max(1),
                parts_in_flight: shape.parts_in_flight.max(1),
            },
            limit,
            buf: Vec::new(),
            hasher: sha2::Sha256::new(),
            len: 0,
            parts: None,
            failed: None,
        }
    }
}

impl UploadWriter {
    /// What was written: whole, or uploaded in parts awaiting `complete`. The first failure
    /// (the limit passed, or the store's) comes back here, whatever the encoder made of it.
    pub fn finish(mut self) -> Result<Spooled, SpoolError> {
        if self.failed.is_none() && self.parts.is_some() && !self.buf.is_empty() {
            // The last part: it may be shorter than the others.
            if let Err(e) = self.send_part() {
                self.failed = Some(e);
            }
        }
        if self.failed.is_none()
            && let Some(parts) = &mut self.parts
        {
            while let Some(task) = parts.in_flight.pop_front() {
                match joined(&self.runtime, task) {
                    Ok(part) => parts.done.push(part),
                    Err(e) => {
                        self.failed = Some(e.into());
                        break;
                    }
                }
            }
        }
        if let Some(e) = self.failed.take() {
            self.abort();
            return Err(e);
        }
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let body = match self.parts.take() {
            None => SpooledBody::Whole(Bytes::from(std::mem::take(&mut self.buf))),
            Some(mut parts) => {
                parts.done.sort_by_key(|p| p.number);
                SpooledBody::Parts(Box::new(PendingUpload {
                    store: self.store.clone(),
                    key: self.key.clone(),
                    upload_id: Some(parts.upload_id),
                    parts: parts.done,
                    sha256: sha256.clone(),
                }))
            }
        };
        Ok(Spooled {
            size: self.len,
            sha256,
            body,
        })
    }

    /// Uploads the full buffer as the next part, starting the multipart upload with the first;
    /// waits first for a place among the parts in flight, so a new buffer is filled only then.
    fn send_part(&mut self) -> Result<(), SpoolError> {
        if self.parts.is_none() {
            let upload_id = self.runtime.block_on(self.store.backend.create_multipart(
                &self.key,
                &self.content_type,
                &self.extra,
            ))?;
            self.parts = Some(Parts {
                upload_id,
                next_number: 1,
                in_flight: VecDeque::new(),
                done: Vec::new(),
            });
        }
        let Some(parts) = self.parts.as_mut() else {
            return Ok(());
        };
        while parts.in_flight.len() >= self.shape.parts_in_flight {
            if let Some(task) = parts.in_flight.pop_front() {
                parts.done.push(joined(&self.runtime, task)?);
            }
        }
        let data = Bytes::from(std::mem::take(&mut self.buf));
        // Hashed here, on the encoder's thread, rather than on an async worker.
        let digest: [u8; 32] = sha2::Sha256::digest(&data).into();
        let (store, key, upload_id) = (
            self.store.clone(),
            self.key.clone(),
            parts.upload_id.clone(),
        );
        let number = parts.next_number;
        parts.next_number += 1;
        parts.in_flight.push_back(self.runtime.spawn(async move {
            store
                .backend
                .upload_part(&key, &upload_id, number, data, digest)
                .await
        }));
        Ok(())
    }

    /// Drops the unfinished upload (best effort) and the parts still on their way.
    fn abort(&mut self) {
        if let Some(parts) = self.parts.take() {
            for task in &parts.in_flight {
                task.abort();
            }
            let result = self.runtime.block_on(
                self.store
                    .backend
                    .abort_multipart(&self.key, &parts.upload_id),
            );
            if let Err(e) = result {
                tracing::warn!(key = self.key, error = %e, "could not abort an unfinished upload");
            }
        }
    }
}

fn joined(
    runtime: &Handle,
    task: JoinHandle<Result<UploadedPart, StoreError>>,
) -> Result<UploadedPart, StoreError> {
    runtime.block_on(task).unwrap_or_else(|e| {
        Err(StoreError::Unavailable {
            endpoint: String::new(),
            detail: format!("a part's upload stopped: {e}"),
        })
    })
}

impl io::Write for UploadWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other(e.to_string()));
        }
        if data.is_empty() {
            return Ok(0);
        }
        if self.len + data.len() as u64 > self.limit {
            self.failed = Some(SpoolError::TooLarge { limit: self.limit });
            return Err(io::Error::other(format!(
                "the image grew past {} bytes",
                self.limit
            )));
        }
        let part = self.shape.part_bytes;
        // A full buffer goes only when more bytes come: an image of exactly one part stays whole.
        if self.buf.len() == part
            && let Err(e) = self.send_part()
        {
            let message = e.to_string();
            self.failed = Some(e);
            return Err(io::Error::other(message));
        }
        let n = data.len().min(part - self.buf.len());
        if self.buf.capacity() < self.buf.len() + n {
            // Grown by doubling up to one part, never past it.
            let want = (self.buf.len() + n).max(2 * self.buf.capacity()).min(part);
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend_from_slice(&data[..n]);
        self.hasher.update(&data[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
