//! Thumbnails: made on the first request, kept in the bucket under their own prefix, and read
//! from there afterwards. Making one (decode, resize, encode) runs on the blocking pool, a bounded
//! number at a time, so a cold gallery cannot take every core from the rest of the server.

use crate::domain::{StoredImage, sha256_hex, thumbnail_key};
use crate::store::{ImageStore, ObjectLabels, StoreError};
use bytes::Bytes;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer, images::Image};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::time::Instant;
use thiserror::Error;
use tokio::sync::Semaphore;

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
    /// MiB of memory thumbnails being made may hold together (see [`MAKING_BUDGET_MIB`]).
    memory: Semaphore,
    metrics: ThumbnailMetrics,
}

/// What the thumbnails being made may hold at once, in MiB: the original's bytes and its decoded
/// pixels (the decoder's RGBA and the RGB copy). A 48-megapixel scan needs about 400 MiB, so two
/// are never made at once; gallery-sized images (about 6 MiB) are made one per core, as before.
pub const MAKING_BUDGET_MIB: u32 = 512;

/// The MiB an image needs while its thumbnail is made, within the budget (a larger one waits
/// until it can be made alone).
fn making_cost_mib(size_bytes: i64, width: i32, height: i32) -> u32 {
    let pixels = i64::from(width.max(0)) * i64::from(height.max(0));
    let bytes = size_bytes.max(0) + pixels * 4 + pixels * 3;
    let mib = (bytes >> 20) + 1;
    u32::try_from(mib)
        .unwrap_or(u32::MAX)
        .min(MAKING_BUDGET_MIB)
}

impl Thumbnails {
    pub fn new(store: ImageStore, concurrent_makers: usize, metrics: ThumbnailMetrics) -> Self {
        Thumbnails {
            store,
            makers: Semaphore::new(concurrent_makers.max(1)),
            memory: Semaphore::new(MAKING_BUDGET_MIB as usize),
            metrics,
        }
    }

    /// The thumbnail of a stored image, as JPEG bytes.
    pub async fn get(&self, image: &StoredImage) -> Result<Bytes, ThumbnailError> {
        let key = thumbnail_key(&image.entry.image_id);
        match self.store.get(&key).await {
            Ok(bytes) => {
                self.metrics.served_from_store.inc();
                return Ok(bytes);
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let entry = &image.entry;
        let _memory = self
            .memory
            .acquire_many(making_cost_mib(entry.size_bytes, entry.width, entry.height))
            .await
            .expect("the semaphore is never closed");
        let _maker = self
            .makers
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let started = Instant::now();
        let original = self.store.get(&image.entry.object_key).await?;
        let image_id = image.entry.image_id.to_string();
        let made = tokio::task::spawn_blocking(move || make_thumbnail(&original, THUMBNAIL_SIDE))
            .await
            .map_err(|e| ThumbnailError::Undecodable {
                image_id: image_id.clone(),
                detail: format!("the resize task failed: {e}"),
            })?
            .map_err(|detail| ThumbnailError::Undecodable { image_id, detail })?;
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

/// Decodes an image (PNG, JPEG or WebP), shrinks it to fit a `side` box and encodes it as JPEG.
pub fn make_thumbnail(original: &[u8], side: u32) -> Result<Made, String> {
    let decoded = image::load_from_memory(original).map_err(|e| e.to_string())?;
    let rgb = decoded.into_rgb8();
    let (width, height) = rgb.dimensions();
    let (tw, th) = fit(width, height, side);
    let pixels = if (tw, th) == (width, height) {
        rgb.into_raw()
    } else {
        let source = Image::from_vec_u8(width, height, rgb.into_raw(), PixelType::U8x3)
            .map_err(|e| e.to_string())?;
        let mut target = Image::new(tw, th, PixelType::U8x3);
        // Hamming: bilinear's speed with close to bicubic's quality when shrinking.
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Hamming));
        Resizer::new()
            .resize(&source, &mut target, &options)
            .map_err(|e| e.to_string())?;
        target.into_vec()
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
    fn a_scan_of_48_megapixels_is_made_alone_and_gallery_images_side_by_side() {
        let scan = making_cost_mib(60 << 20, 8000, 6000);
        assert!(
            2 * scan > MAKING_BUDGET_MIB && scan <= MAKING_BUDGET_MIB,
            "{scan}"
        );
        assert_eq!(making_cost_mib(500 << 20, 16000, 12000), MAKING_BUDGET_MIB);
        assert!(making_cost_mib(300_000, 1024, 768) <= 6);
        assert_eq!(making_cost_mib(-1, -1, 5), 1);
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
