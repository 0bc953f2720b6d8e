//! Synthetic but realistic images for the producer: a gradient sky, overlapping shapes, a woven
//! texture and mild sensor noise. They decode like any photo and compress like one (neither blank
//! nor pure noise), and the same seed always yields the same bytes.

use crate::domain::ImageFormat;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

/// What to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpec {
    pub width: u32,
    pub height: u32,
    pub format: ImageFormat,
}

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error("cannot encode a {width}x{height} {format} image: {detail}")]
    Encode {
        width: u32,
        height: u32,
        format: ImageFormat,
        detail: String,
    },
}

/// JPEG quality: what cameras and phones commonly write.
const JPEG_QUALITY: u8 = 85;

/// Renders and encodes one image. Deterministic in `(spec, seed)`.
pub fn render(spec: &ImageSpec, seed: u64) -> Result<Vec<u8>, GenerateError> {
    let pixels = draw_rgb(spec.width, spec.height, seed);
    encode(&pixels, spec)
}

/// Raw RGB8 pixels of the scene.
pub fn draw_rgb(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; w * h * 3];

    // Background: a two-colour gradient along a random direction.
    let c0: [f32; 3] = random_color(&mut rng);
    let c1: [f32; 3] = random_color(&mut rng);
    let angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
    let (dx, dy) = (angle.cos(), angle.sin());
    let span = (w as f32 * dx.abs() + h as f32 * dy.abs()).max(1.0);
    let origin =
        (if dx < 0.0 { w as f32 } else { 0.0 }) * dx + (if dy < 0.0 { h as f32 } else { 0.0 }) * dy;
    // Texture: two separable waves, precomputed per row and per column to keep the inner loop cheap.
    let (fx, fy) = (rng.gen_range(0.02..0.2f32), rng.gen_range(0.02..0.2f32));
    let (px, py) = (rng.gen_range(0.0..6.3f32), rng.gen_range(0.0..6.3f32));
    let amp = rng.gen_range(3.0..12.0f32);
    let col_wave: Vec<f32> = (0..w).map(|x| amp * (fx * x as f32 + px).sin()).collect();
    let row_wave: Vec<f32> = (0..h).map(|y| amp * (fy * y as f32 + py).sin()).collect();

    // The gradient is linear in x, so each row is a start value plus a constant step per pixel:
    // additions only, no division in the inner loop. `origin` is the smallest projection over the
    // corners, so t stays within 0..=1.
    let step: [f32; 3] = std::array::from_fn(|c| (c1[c] - c0[c]) * dx / span);
    for y in 0..h {
        let row = &mut buf[y * w * 3..(y + 1) * w * 3];
        let t0 = (y as f32 * dy - origin) / span;
        let mut value: [f32; 3] =
            std::array::from_fn(|c| c0[c] + (c1[c] - c0[c]) * t0 + row_wave[y]);
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let wave = col_wave[x];
            for c in 0..3 {
                px[c] = (value[c] + wave).clamp(0.0, 255.0) as u8;
                value[c] += step[c];
            }
        }
    }

    // Foreground: a handful of shapes, drawn over their bounding boxes only.
    let shapes = rng.gen_range(3..9);
    for _ in 0..shapes {
        let color = random_color(&mut rng);
        let alpha = rng.gen_range(0.5..0.95f32);
        let cx = rng.gen_range(0.0..w as f32);
        let cy = rng.gen_range(0.0..h as f32);
        let rx = rng.gen_range(0.05..0.35f32) * w as f32;
        let ry = rng.gen_range(0.05..0.35f32) * h as f32;
        let ellipse = rng.gen_bool(0.6);
        // Fixed-point blend (alpha in 1/256ths): integer math in the inner loop.
        let a = (alpha * 256.0) as i32;
        let rgb = color.map(|c| c as i32);
        let y0 = (cy - ry).max(0.0) as usize;
        let y1 = ((cy + ry) as usize).min(h);
        for y in y0..y1 {
            // The shape's horizontal extent on this row: the whole box, or the ellipse's chord.
            let half = if ellipse {
                let ny = (y as f32 + 0.5 - cy) / ry;
                rx * (1.0 - ny * ny).max(0.0).sqrt()
            } else {
                rx
            };
            let x0 = (cx - half).max(0.0) as usize;
            let x1 = ((cx + half) as usize).min(w);
            if x0 >= x1 {
                continue;
            }
            for px in buf[(y * w + x0) * 3..(y * w + x1) * 3].chunks_exact_mut(3) {
                for c in 0..3 {
                    let under = px[c] as i32;
                    px[c] = (under + (((rgb[c] - under) * a) >> 8)) as u8;
                }
            }
        }
    }

    // Sensor noise: small (-3..=4), so the image stays compressible like a photo. One xorshift
    // step gives eight bytes of noise.
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15 | 1;
    for chunk in buf.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = state.to_le_bytes();
        for (v, n) in chunk.iter_mut().zip(noise) {
            *v = v.saturating_add_signed(((n & 7) as i8) - 3);
        }
    }
    buf
}

fn random_color(rng: &mut SmallRng) -> [f32; 3] {
    [
        rng.gen_range(20.0..235.0),
        rng.gen_range(20.0..235.0),
        rng.gen_range(20.0..235.0),
    ]
}

/// Encodes RGB8 pixels in the requested format.
pub fn encode(pixels: &[u8], spec: &ImageSpec) -> Result<Vec<u8>, GenerateError> {
    let mut out = Vec::with_capacity(pixels.len() / 4);
    let (w, h) = (spec.width, spec.height);
    let result: Result<(), String> = match spec.format {
        // Fast deflate with adaptive filtering: ~the ratio of default settings at a fraction of the time.
        ImageFormat::Png => {
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
                .write_image(pixels, w, h, ExtendedColorType::Rgb8)
                .map_err(|e| e.to_string())
        }
        // jpeg-encoder rather than the image crate's encoder: measured 2.2x faster (benches/generate.rs).
        ImageFormat::Jpeg => match (u16::try_from(w), u16::try_from(h)) {
            (Ok(w16), Ok(h16)) => jpeg_encoder::Encoder::new(&mut out, JPEG_QUALITY)
                .encode(pixels, w16, h16, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| e.to_string()),
            _ => Err("JPEG is limited to 65535 pixels a side".to_string()),
        },
        ImageFormat::Webp => WebPEncoder::new_lossless(&mut out)
            .write_image(pixels, w, h, ExtendedColorType::Rgb8)
            .map_err(|e| e.to_string()),
    };
    result.map_err(|detail| GenerateError::Encode {
        width: w,
        height: h,
        format: spec.format,
        detail,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_yields_identical_bytes() {
        let spec = ImageSpec {
            width: 96,
            height: 64,
            format: ImageFormat::Png,
        };
        assert_eq!(render(&spec, 42).unwrap(), render(&spec, 42).unwrap());
        assert_ne!(render(&spec, 42).unwrap(), render(&spec, 43).unwrap());
    }

    #[test]
    fn every_format_decodes_back_to_the_requested_size() {
        for format in ImageFormat::ALL {
            let spec = ImageSpec {
                width: 120,
                height: 80,
                format,
            };
            let bytes = render(&spec, 1).unwrap();
            let img = image::load_from_memory(&bytes).expect("decodable");
            assert_eq!((img.width(), img.height()), (120, 80), "{format}");
        }
    }

    #[test]
    fn images_compress_like_pictures_neither_blank_nor_noise() {
        let spec = ImageSpec {
            width: 256,
            height: 256,
            format: ImageFormat::Png,
        };
        let raw = 256 * 256 * 3;
        for seed in 0..5 {
            let png = render(&spec, seed).unwrap().len();
            // Pure noise does not compress (ratio ~1); a blank frame compresses ~100x or more.
            let ratio = raw as f64 / png as f64;
            assert!(
                (1.3..30.0).contains(&ratio),
                "seed {seed}: ratio {ratio:.2}"
            );
        }
    }
}
