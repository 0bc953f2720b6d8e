//! Thumbnails: made on the first request, kept in the bucket under their own prefix, and read
//! from there afterwards. Making one (decode, resize, encode) runs on the blocking pool, a bounded
//! number at a time, so a cold gallery cannot take every core from the rest of the server.
//!
//! Memory is bounded too: a large JPEG or PNG is decoded shrunk (`shrink`: a scaled DCT, or rows
//! into a box filter), so its thumbnail costs its file's bytes and a few megabytes of pixels, not
//! its full pixels; an image's header says what decoding it will take, each making holds that
//! many MiB of one budget (IMGSTREAM_SERVE_THUMBNAIL_MEMORY_MB) until it is done, whatever the
//! number of cores, and the decoder is held to the same figure. An image that cannot be made into
//! a thumbnail is remembered, so asking again costs nothing.

use super::shrink;
use crate::domain::{StoredImage, sha256_hex, thumbnail_key};
use crate::store::{ImageStore, ObjectLabels, StoreError};
use bytes::Bytes;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer, images::Image};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use thiserror::Error;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Failed images remembered; past this many, the memory starts over.
const REMEMBERED_FAILURES: usize = 10_000;

/// The longest side of a thumbnail, in pixels: a gallery cell at 2x density.
pub const THUMBNAIL_SIDE: u32 = 256;
const THUMBNAIL_QUALITY: u8 = 80;

#[derive(Debug, Error)]
pub enum ThumbnailError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image {image_id} cannot be made into a thumbnail: {detail}")]
    Undecodable { image_id: String, detail: String },
}

/// What the server counts about thumbnails.
#[derive(Clone)]
pub struct ThumbnailMetrics {
    pub made: Counter,
    pub served_from_store: Counter,
    pub make_seconds: Histogram,
}

pub struct Thumbnails {
    store: ImageStore,
    makers: Semaphore,
    /// The decode budget in MiB: a decode holds as many permits as its pixels take.
    memory: Semaphore,
    memory_mib: u32,
    failed: Mutex<HashMap<Uuid, String>>,
    metrics: ThumbnailMetrics,
}

/// The MiB an image is expected to need while its thumbnail is made, from what the index knows
/// of it: the original's bytes and its decoded pixels, shrunk as `shrink` shrinks a JPEG or PNG
/// (by the factor its size allows; a progressive JPEG or an interlaced PNG needs more, found in
/// its header) and whole for a WebP (the decoder's RGBA and the RGB copy); at most the whole
/// `budget_mib`. A 60 MB 48-megapixel JPEG needs about 62 MiB; as a WebP about 380 MiB.
fn making_cost_mib(
    size_bytes: i64,
    width: i32,
    height: i32,
    content_type: &str,
    budget_mib: u32,
) -> u32 {
    let (w, h) = (i64::from(width.max(0)), i64::from(height.max(0)));
    let decoded = if content_type == "image/webp" {
        w * h * 7
    } else {
        let k = i64::from(shrink::reduction(w as u32, h as u32, THUMBNAIL_SIDE, true));
        2 * (w / k + 1) * (h / k + 1) * 4
    };
    let bytes = size_bytes.max(0) + decoded + DECODER_OVERHEAD as i64;
    let mib = (bytes >> 20) + 1;
    u32::try_from(mib).unwrap_or(u32::MAX).min(budget_mib)
}

/// The decoders' own buffers (rows, entropy tables) on top of the pixels.
const DECODER_OVERHEAD: u64 = 16 << 20;

/// A decode's allowance: what its header says, a quarter more, and the decoders' own.
fn allowance(cost: u64) -> u64 {
    cost.saturating_add(cost / 4)
        .saturating_add(DECODER_OVERHEAD)
}

impl Thumbnails {
    pub fn new(
        store: ImageStore,
        concurrent_makers: usize,
        memory_bytes: u64,
        metrics: ThumbnailMetrics,
    ) -> Self {
        let memory_mib = u32::try_from(memory_bytes >> 20).unwrap_or(u32::MAX).max(1);
        Thumbnails {
            store,
            makers: Semaphore::new(concurrent_makers.max(1)),
            memory: Semaphore::new(memory_mib as usize),
            memory_mib,
            failed: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn remember_failure(&self, image_id: Uuid, detail: &str) {
        let mut failed = self.failed.lock().expect("not poisoned");
        if failed.len() >= REMEMBERED_FAILURES {
            failed.clear();
        }
        failed.insert(image_id, detail.to_string());
    }

    /// The thumbnail of a stored image, as JPEG bytes.
    pub async fn get(&self, image: &StoredImage) -> Result<Bytes, ThumbnailError> {
        let key = thumbnail_key(&image.entry.image_id);
        let image_id = image.entry.image_id.to_string();
        if let Some(detail) = self
            .failed
            .lock()
            .expect("not poisoned")
            .get(&image.entry.image_id)
        {
            return Err(ThumbnailError::Undecodable {
                image_id,
                detail: detail.clone(),
            });
        }
        match self.store.get(&key).await {
            Ok(bytes) => {
                self.metrics.served_from_store.inc();
                return Ok(bytes);
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let entry = &image.entry;
        let mut held = making_cost_mib(
            entry.size_bytes,
            entry.width,
            entry.height,
            &entry.content_type,
            self.memory_mib,
        );
        let mut memory = self
            .memory
            .acquire_many(held)
            .await
            .expect("the semaphore is never closed");
        let _maker = self
            .makers
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let started = Instant::now();
        let fail = |detail: String| {
            self.remember_failure(image.entry.image_id, &detail);
            ThumbnailError::Undecodable {
                image_id: image_id.clone(),
                detail,
            }
        };
        let (original, mib) = loop {
            let original = self.store.get(&image.entry.object_key).await?;
            let cost = decode_cost(&original, THUMBNAIL_SIDE).map_err(fail)?;
            let mib = u32::try_from(
                (original.len() as u64)
                    .saturating_add(allowance(cost))
                    .div_ceil(1 << 20),
            )
            .unwrap_or(u32::MAX);
            if mib > self.memory_mib {
                return Err(fail(format!(
                    "making its thumbnail takes {mib} MiB, more than the {} MiB of IMGSTREAM_SERVE_THUMBNAIL_MEMORY_MB",
                    self.memory_mib
                )));
            }
            if mib <= held {
                break (original, mib);
            }
            // Its header asks for more than the index suggested (a progressive JPEG, an
            // interlaced PNG): its bytes are let go while the larger share is waited for, so
            // nothing is held outside the budget, and read again.
            drop(original);
            drop(memory);
            memory = self
                .memory
                .acquire_many(mib)
                .await
                .expect("the semaphore is never closed");
            held = mib;
        };
        let _memory = memory;
        // Those who waited while another made this very thumbnail find it kept.
        match self.store.get(&key).await {
            Ok(bytes) => {
                self.metrics.served_from_store.inc();
                return Ok(bytes);
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let limit = (u64::from(mib.max(1)) << 20).saturating_sub(original.len() as u64);
        let made = tokio::task::spawn_blocking(move || {
            make_thumbnail_within(&original, THUMBNAIL_SIDE, limit)
        })
        .await
        .map_err(|e| ThumbnailError::Undecodable {
            image_id: image_id.clone(),
            detail: format!("the resize task failed: {e}"),
        })?
        .map_err(fail)?;
        let thumbnail = Bytes::from(made.jpeg);
        // Create-only, like every write to the bucket: two requests racing for the same thumbnail
        // write the same bytes, and the second finds them there. A failed write costs only a
        // remake next time, so the thumbnail is served either way.
        if let Err(e) = self
            .store
            .put_image_labelled(
                &key,
                thumbnail.clone(),
                "image/jpeg",
                &sha256_hex(&thumbnail),
                Some(ObjectLabels {
                    customer: &entry.customer_id,
                    source: &entry.source_id,
                }),
                false,
            )
            .await
        {
            tracing::warn!(key, error = %e, "thumbnail made but not kept");
        }
        self.metrics.made.inc();
        self.metrics
            .make_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(thumbnail)
    }
}

/// A thumbnail's JPEG bytes and size.
#[derive(Debug)]
pub struct Made {
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// The size that fits `width`×`height` into a `side`×`side` box, keeping the aspect ratio; never
/// larger than the original.
pub fn fit(width: u32, height: u32, side: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= side {
        return (width, height);
    }
    let scale = |n: u32| {
        ((u64::from(n) * u64::from(side) + u64::from(longest) / 2) / u64::from(longest)).max(1)
            as u32
    };
    (scale(width), scale(height))
}

/// The bytes decoding `original` for a thumbnail holds at its peak, beyond the original's own,
/// from its header alone (`shrink`).
pub fn decode_cost(original: &[u8], side: u32) -> Result<u64, String> {
    shrink::decode_cost(original, side)
}

/// Decodes an image (PNG, JPEG or WebP), shrinks it to fit a `side` box and encodes it as JPEG.
pub fn make_thumbnail(original: &[u8], side: u32) -> Result<Made, String> {
    let cost = decode_cost(original, side)?;
    make_thumbnail_within(original, side, allowance(cost))
}

/// [`make_thumbnail`], the decoder allowed `max_bytes` at most.
pub fn make_thumbnail_within(original: &[u8], side: u32, max_bytes: u64) -> Result<Made, String> {
    let ((width, height), shrunk) = shrink::decode_shrunk(original, side, max_bytes)?;
    // The thumbnail's size comes from the original's, whatever the shrunk one rounded to.
    let (tw, th) = fit(width, height, side);
    let pixel_type = shrunk.pixel_type;
    let resized = if (tw, th) == (shrunk.width, shrunk.height) {
        shrunk.pixels
    } else {
        let source = Image::from_vec_u8(shrunk.width, shrunk.height, shrunk.pixels, pixel_type)
            .map_err(|e| e.to_string())?;
        let mut target = Image::new(tw, th, pixel_type);
        // Hamming: bilinear's speed with close to bicubic's quality when shrinking.
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Hamming));
        Resizer::new()
            .resize(&source, &mut target, &options)
            .map_err(|e| e.to_string())?;
        target.into_vec()
    };
    let pixels = match pixel_type {
        PixelType::U8x4 => resized
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        _ => resized,
    };
    let (w16, h16) = (
        u16::try_from(tw).map_err(|_| "too wide".to_string())?,
        u16::try_from(th).map_err(|_| "too tall".to_string())?,
    );
    let mut jpeg = Vec::with_capacity(pixels.len() / 8);
    jpeg_encoder::Encoder::new(&mut jpeg, THUMBNAIL_QUALITY)
        .encode(&pixels, w16, h16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| e.to_string())?;
    Ok(Made {
        jpeg,
        width: tw,
        height: th,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_48_megapixel_jpeg_is_made_beside_others_in_512_mib_and_a_webp_of_its_size_alone() {
        const BUDGET: u32 = 512;
        // Shrunk to 1/8: its 60 MB and 2x750x1000x4 bytes of pixels, not 8000x6000x7.
        let jpeg = making_cost_mib(60 << 20, 8000, 6000, "image/jpeg", BUDGET);
        assert!(jpeg < 100, "{jpeg}");
        let webp = making_cost_mib(60 << 20, 8000, 6000, "image/webp", BUDGET);
        assert!(2 * webp > BUDGET && webp <= BUDGET, "{webp}");
        assert_eq!(
            making_cost_mib(500 << 20, 16000, 12000, "image/webp", BUDGET),
            BUDGET
        );
        assert!(making_cost_mib(300_000, 1024, 768, "image/png", BUDGET) <= 24);
        assert_eq!(making_cost_mib(-1, -1, 5, "image/png", BUDGET), 17);
    }

    use crate::domain::ImageFormat;
    use crate::generate::{ImageSpec, render};

    #[test]
    fn thumbnails_fit_the_box_and_keep_the_aspect_ratio() {
        assert_eq!(fit(1024, 768, 256), (256, 192));
        assert_eq!(fit(768, 1024, 256), (192, 256));
        assert_eq!(fit(4000, 10, 256), (256, 1));
        assert_eq!(
            fit(200, 100, 256),
            (200, 100),
            "small images are not enlarged"
        );
    }

    #[test]
    fn every_accepted_format_becomes_a_jpeg_thumbnail() {
        for format in ImageFormat::ALL {
            let spec = ImageSpec {
                width: 640,
                height: 360,
                format,
            };
            let original = render(&spec, 7).unwrap();
            let made = make_thumbnail(&original, 256).unwrap();
            assert_eq!((made.width, made.height), (256, 144), "{format}");
            let back = image::load_from_memory(&made.jpeg).unwrap();
            assert_eq!(back.width(), 256);
            assert_eq!(back.height(), 144);
            assert_eq!(
                image::guess_format(&made.jpeg).unwrap(),
                image::ImageFormat::Jpeg
            );
        }
    }

    #[test]
    fn bytes_that_are_not_an_image_are_refused_not_panicked_on() {
        let err = make_thumbnail(b"definitely not an image", 256).unwrap_err();
        assert!(!err.is_empty());
    }
}
