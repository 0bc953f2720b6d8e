//! Synthetic but realistic images for the producer: a gradient sky, overlapping shapes, a woven
//! texture and mild sensor noise. They decode like any photo and compress like one (neither blank
//! nor pure noise), and the same seed always yields the same bytes.
//!
//! The scene is drawn a row at a time ([`Scene`]), and PNG and JPEG are encoded from those rows
//! into any writer ([`render_to`]): an 8000x6000 image never exists as 144 MB of pixels, and its
//! encoding goes out as it is made. WebP's encoder takes the whole frame, so a WebP is drawn whole.

use crate::domain::ImageFormat;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::io::Write;
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

/// The encoder's output is handed to the writer in pieces of this size (PNG's IDAT chunks).
const PNG_CHUNK_BYTES: usize = 256 * 1024;

/// Renders and encodes one image. Deterministic in `(spec, seed)`.
pub fn render(spec: &ImageSpec, seed: u64) -> Result<Vec<u8>, GenerateError> {
    let mut out = Vec::new();
    render_to(spec, seed, &mut out)?;
    Ok(out)
}

/// Renders and encodes one image into `out` as it is made: PNG and JPEG hold a few rows of
/// pixels (a JPEG sixteen), never the frame. The bytes are those of [`render`].
pub fn render_to<W: Write>(spec: &ImageSpec, seed: u64, out: W) -> Result<(), GenerateError> {
    let (w, h) = (spec.width, spec.height);
    let result: Result<(), String> = match spec.format {
        ImageFormat::Png => encode_png(Scene::new(w, h, seed), out).map_err(|e| e.to_string()),
        // jpeg-encoder rather than the image crate's encoder: measured 2.2x faster
        // (benches/generate.rs); and it asks for its rows one at a time.
        ImageFormat::Jpeg => match (u16::try_from(w), u16::try_from(h)) {
            (Ok(w16), Ok(h16)) => {
                // The encoder writes its entropy-coded data a few bytes at a time.
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
                jpeg_encoder::Encoder::new(&mut out, JPEG_QUALITY)
                    .encode_image(SceneRows::new(Scene::new(w, h, seed), w16, h16))
                    .map_err(|e| e.to_string())
                    .and_then(|()| out.flush().map_err(|e| e.to_string()))
            }
            _ => Err("JPEG is limited to 65535 pixels a side".to_string()),
        },
        ImageFormat::Webp => {
            let pixels = draw_rgb(w, h, seed);
            WebPEncoder::new_lossless(out)
                .write_image(&pixels, w, h, ExtendedColorType::Rgb8)
                .map_err(|e| e.to_string())
        }
    };
    result.map_err(|detail| GenerateError::Encode {
        width: w,
        height: h,
        format: spec.format,
        detail,
    })
}

/// Fast deflate with adaptive filtering: ~the ratio of default settings at a fraction of the
/// time. Rows go through the stream writer, which compresses them as they come.
fn encode_png<W: Write>(mut scene: Scene, out: W) -> Result<(), png::EncodingError> {
    let mut encoder = png::Encoder::new(out, scene.width as u32, scene.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::Filter::Adaptive);
    let mut writer = encoder.write_header()?;
    let mut stream = writer.stream_writer_with_size(PNG_CHUNK_BYTES)?;
    let mut row = vec![0u8; scene.width * 3];
    for _ in 0..scene.height {
        scene.next_row(&mut row);
        stream.write_all(&row)?;
    }
    stream.finish()?;
    writer.finish()
}

/// The scene as jpeg-encoder's `ImageBuffer`: it asks for rows in order (the last one again to
/// pad the final block row), so the row asked for is drawn when first asked and kept.
struct SceneRows {
    width: u16,
    height: u16,
    drawn: RefCell<(Scene, Vec<u8>, Option<u16>)>,
}

impl SceneRows {
    fn new(scene: Scene, width: u16, height: u16) -> Self {
        let row = vec![0u8; usize::from(width) * 3];
        SceneRows {
            width,
            height,
            drawn: RefCell::new((scene, row, None)),
        }
    }
}

impl jpeg_encoder::ImageBuffer for SceneRows {
    fn get_jpeg_color_type(&self) -> jpeg_encoder::JpegColorType {
        jpeg_encoder::JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        self.width
    }

    fn height(&self) -> u16 {
        self.height
    }

    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let mut drawn = self.drawn.borrow_mut();
        let (scene, row, current) = &mut *drawn;
        if *current != Some(y) {
            // Rows come in order; an encoder that went back would get the scene drawn again
            // from its top, which is slow but still the same image.
            if current.is_some_and(|c| y < c) || (current.is_none() && scene.next_y != 0) {
                *scene = scene.restarted();
            }
            while scene.next_y <= usize::from(y) {
                scene.next_row(row);
            }
            *current = Some(y);
        }
        for px in row.chunks_exact(3) {
            let (l, cb, cr) = jpeg_encoder::rgb_to_ycbcr(px[0], px[1], px[2]);
            buffers[0].push(l);
            buffers[1].push(cb);
            buffers[2].push(cr);
        }
    }
}

/// Raw RGB8 pixels of the whole scene.
pub fn draw_rgb(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut scene = Scene::new(width, height, seed);
    let mut buf = vec![0u8; scene.width * scene.height * 3];
    for row in buf.chunks_exact_mut(scene.width * 3) {
        scene.next_row(row);
    }
    buf
}

/// One shape of the foreground.
struct Shape {
    rgb: [i32; 3],
    /// Fixed-point blend (alpha in 1/256ths): integer math in the inner loop.
    alpha: i32,
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    ellipse: bool,
    /// The rows it covers.
    rows: std::ops::Range<usize>,
}

/// The scene, drawn a row at a time from the top: every pixel is the background, then each shape
/// blended over it in order, then the sensor noise, so a row needs nothing from the others.
pub struct Scene {
    width: usize,
    height: usize,
    seed: u64,
    c0: [f32; 3],
    c1: [f32; 3],
    dy: f32,
    span: f32,
    origin: f32,
    step: [f32; 3],
    col_wave: Vec<f32>,
    amp: f32,
    fy: f32,
    py: f32,
    shapes: Vec<Shape>,
    /// The noise generator runs along the whole frame, eight bytes a step, across row ends.
    noise_state: u64,
    noise: [u8; 8],
    noise_used: usize,
    next_y: usize,
}

impl Scene {
    pub fn new(width: u32, height: u32, seed: u64) -> Self {
        let (w, h) = (width as usize, height as usize);
        let mut rng = SmallRng::seed_from_u64(seed);

        // Background: a two-colour gradient along a random direction.
        let c0: [f32; 3] = random_color(&mut rng);
        let c1: [f32; 3] = random_color(&mut rng);
        let angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        let (dx, dy) = (angle.cos(), angle.sin());
        let span = (w as f32 * dx.abs() + h as f32 * dy.abs()).max(1.0);
        let origin = (if dx < 0.0 { w as f32 } else { 0.0 }) * dx
            + (if dy < 0.0 { h as f32 } else { 0.0 }) * dy;
        // Texture: two separable waves; the column wave is precomputed, the row wave is one sine
        // per row.
        let (fx, fy) = (rng.gen_range(0.02..0.2f32), rng.gen_range(0.02..0.2f32));
        let (px, py) = (rng.gen_range(0.0..6.3f32), rng.gen_range(0.0..6.3f32));
        let amp = rng.gen_range(3.0..12.0f32);
        let col_wave: Vec<f32> = (0..w).map(|x| amp * (fx * x as f32 + px).sin()).collect();
        // The gradient is linear in x, so each row is a start value plus a constant step per
        // pixel: additions only, no division in the inner loop. `origin` is the smallest
        // projection over the corners, so t stays within 0..=1.
        let step: [f32; 3] = std::array::from_fn(|c| (c1[c] - c0[c]) * dx / span);

        // Foreground: a handful of shapes, drawn over their bounding boxes only.
        let count = rng.gen_range(3..9);
        let shapes = (0..count)
            .map(|_| {
                let color = random_color(&mut rng);
                let alpha = rng.gen_range(0.5..0.95f32);
                let cx = rng.gen_range(0.0..w as f32);
                let cy = rng.gen_range(0.0..h as f32);
                let rx = rng.gen_range(0.05..0.35f32) * w as f32;
                let ry = rng.gen_range(0.05..0.35f32) * h as f32;
                let ellipse = rng.gen_bool(0.6);
                Shape {
                    rgb: color.map(|c| c as i32),
                    alpha: (alpha * 256.0) as i32,
                    cx,
                    cy,
                    rx,
                    ry,
                    ellipse,
                    rows: (cy - ry).max(0.0) as usize..((cy + ry) as usize).min(h),
                }
            })
            .collect();
        Scene {
            width: w,
            height: h,
            seed,
            c0,
            c1,
            dy,
            span,
            origin,
            step,
            col_wave,
            amp,
            fy,
            py,
            shapes,
            // Sensor noise: small (-3..=4), so the image stays compressible like a photo. One
            // xorshift step gives eight bytes of noise.
            noise_state: seed ^ 0x9E37_79B9_7F4A_7C15 | 1,
            noise: [0; 8],
            noise_used: 8,
            next_y: 0,
        }
    }

    /// The same scene, from its first row again.
    fn restarted(&self) -> Self {
        Scene::new(self.width as u32, self.height as u32, self.seed)
    }

    /// Draws the next row (top to bottom) into `row`, `width * 3` bytes of RGB.
    pub fn next_row(&mut self, row: &mut [u8]) {
        let (w, y) = (self.width, self.next_y);
        debug_assert!(y < self.height && row.len() == w * 3);
        self.next_y += 1;

        let row_wave = self.amp * (self.fy * y as f32 + self.py).sin();
        let t0 = (y as f32 * self.dy - self.origin) / self.span;
        let (c0, c1) = (self.c0, self.c1);
        let mut value: [f32; 3] = std::array::from_fn(|c| c0[c] + (c1[c] - c0[c]) * t0 + row_wave);
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let wave = self.col_wave[x];
            for c in 0..3 {
                px[c] = (value[c] + wave).clamp(0.0, 255.0) as u8;
                value[c] += self.step[c];
            }
        }

        for shape in &self.shapes {
            if !shape.rows.contains(&y) {
                continue;
            }
            // The shape's horizontal extent on this row: the whole box, or the ellipse's chord.
            let half = if shape.ellipse {
                let ny = (y as f32 + 0.5 - shape.cy) / shape.ry;
                shape.rx * (1.0 - ny * ny).max(0.0).sqrt()
            } else {
                shape.rx
            };
            let x0 = (shape.cx - half).max(0.0) as usize;
            let x1 = ((shape.cx + half) as usize).min(w);
            if x0 >= x1 {
                continue;
            }
            for px in row[x0 * 3..x1 * 3].chunks_exact_mut(3) {
                for (v, &over) in px.iter_mut().zip(&shape.rgb) {
                    let under = *v as i32;
                    *v = (under + (((over - under) * shape.alpha) >> 8)) as u8;
                }
            }
        }

        for v in row.iter_mut() {
            if self.noise_used == 8 {
                let s = &mut self.noise_state;
                *s ^= *s << 13;
                *s ^= *s >> 7;
                *s ^= *s << 17;
                self.noise = s.to_le_bytes();
                self.noise_used = 0;
            }
            let n = self.noise[self.noise_used];
            self.noise_used += 1;
            *v = v.saturating_add_signed(((n & 7) as i8) - 3);
        }
    }
}

fn random_color(rng: &mut SmallRng) -> [f32; 3] {
    [
        rng.gen_range(20.0..235.0),
        rng.gen_range(20.0..235.0),
        rng.gen_range(20.0..235.0),
    ]
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
    fn a_png_streamed_row_by_row_holds_the_scene_drawn_whole() {
        let (w, h) = (131, 77);
        let spec = ImageSpec {
            width: w,
            height: h,
            format: ImageFormat::Png,
        };
        let decoded = image::load_from_memory(&render(&spec, 5).unwrap()).unwrap();
        assert_eq!(decoded.to_rgb8().into_raw(), draw_rgb(w, h, 5));
    }

    #[test]
    fn a_jpeg_drawn_row_by_row_is_the_scene() {
        // Lossy: each channel close to the scene's on average, not equal.
        let (w, h) = (131, 77);
        let spec = ImageSpec {
            width: w,
            height: h,
            format: ImageFormat::Jpeg,
        };
        let decoded = image::load_from_memory(&render(&spec, 5).unwrap()).unwrap();
        let pixels = decoded.to_rgb8().into_raw();
        let scene = draw_rgb(w, h, 5);
        let error: u64 = pixels
            .iter()
            .zip(&scene)
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        assert!(
            error / (scene.len() as u64) < 8,
            "mean error {}",
            error / scene.len() as u64
        );
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
