//! Decoding an image no larger than its thumbnail needs, so a 200 MB scan does not become
//! gigabytes of pixels on the way to a 256-pixel thumbnail:
//!
//! - a JPEG is decoded by jpeg-decoder with a scaled inverse DCT, at 1/2, 1/4 or 1/8 of its size
//!   (the largest that still leaves twice the thumbnail); a progressive JPEG also holds its
//!   coefficients, two bytes per sample of the full image, until its last scan;
//! - a PNG (not interlaced) is read a row at a time into a box filter that averages blocks of
//!   `k`x`k` pixels, so it holds a row and the shrunk image;
//! - a WebP or an interlaced PNG is decoded whole (their decoders have no smaller output).
//!
//! [`decode_cost`] says from the header alone what [`decode_shrunk`] will hold, so the server's
//! memory budget can be taken before decoding; the decoders are held to it.

use fast_image_resize::PixelType;
use std::io::Cursor;

/// The original's size, and its pixels shrunk.
type Decoded = ((u32, u32), Shrunk);

/// Pixels shrunk to at least twice the thumbnail's size (the resize to the thumbnail then has
/// neighbours to filter), as RGB or RGBA.
pub struct Shrunk {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
    pub pixel_type: PixelType,
}

enum Format {
    Jpeg,
    Png,
    Other,
}

fn format_of(original: &[u8]) -> Format {
    if original.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Format::Jpeg
    } else if original.starts_with(b"\x89PNG\r\n\x1a\n") {
        Format::Png
    } else {
        Format::Other
    }
}

/// The largest of 1, 2, 4 and 8 that shrinks `width`x`height` no smaller than twice `side` on
/// its longest edge: the JPEG decoder's choices, and the box filter's factor for PNG (which may
/// go further, up to any integer).
pub(super) fn reduction(width: u32, height: u32, side: u32, powers_of_two: bool) -> u32 {
    let room = width.max(height) / (2 * side.max(1));
    let k = room.max(1);
    if powers_of_two {
        [8, 4, 2, 1].into_iter().find(|f| *f <= k).unwrap_or(1)
    } else {
        k
    }
}

/// What decoding `original` for a `side` thumbnail holds at its peak, beyond the original's own
/// bytes, read from its header: the shrunk pixels (twice over for the JPEG decoder, which
/// keeps planes and the interleaved image), a progressive JPEG's coefficients, a PNG's rows;
/// or, decoded whole, the pixels plus an RGB copy when they are neither RGB nor RGBA.
pub fn decode_cost(original: &[u8], side: u32) -> Result<u64, String> {
    match format_of(original) {
        Format::Jpeg => {
            let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(original));
            decoder.read_info().map_err(|e| e.to_string())?;
            let info = decoder.info().ok_or("a JPEG without a frame header")?;
            let (w, h) = (u64::from(info.width), u64::from(info.height));
            let samples = info.pixel_format.pixel_bytes() as u64;
            let k = u64::from(reduction(info.width.into(), info.height.into(), side, true));
            let shrunk = w.div_ceil(k) * h.div_ceil(k) * samples.max(3);
            let coefficients = match info.coding_process {
                jpeg_decoder::CodingProcess::DctProgressive => w * h * samples * 2,
                _ => 0,
            };
            Ok(2 * shrunk + coefficients)
        }
        Format::Png => {
            let reader = png::Decoder::new(Cursor::new(original))
                .read_info()
                .map_err(|e| e.to_string())?;
            let info = reader.info();
            if info.interlaced {
                return whole_cost(original);
            }
            let (w, h) = (u64::from(info.width), u64::from(info.height));
            let k = u64::from(reduction(info.width, info.height, side, false));
            // Rows at up to 16 bits and 4 channels: the current, the previous, and a converted one.
            let rows = 3 * w * 8;
            let shrunk = w.div_ceil(k) * h.div_ceil(k) * 4;
            let sums = w.div_ceil(k) * 4 * 4;
            Ok(rows + shrunk + sums)
        }
        Format::Other => whole_cost(original),
    }
}

fn whole_cost(original: &[u8]) -> Result<u64, String> {
    use image::ImageDecoder;
    let mut reader = whole_reader(original)?;
    reader.no_limits();
    let decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    let converted = match decoder.color_type() {
        image::ColorType::Rgb8 | image::ColorType::Rgba8 => 0,
        _ => pixels * 3,
    };
    Ok(decoder.total_bytes().saturating_add(converted))
}

fn whole_reader(original: &[u8]) -> Result<image::ImageReader<Cursor<&[u8]>>, String> {
    image::ImageReader::new(Cursor::new(original))
        .with_guessed_format()
        .map_err(|e| e.to_string())
}

/// The original's size and pixels shrunk for a `side` thumbnail (see the module's comment); the
/// decoders may allocate `max_bytes` at most.
pub fn decode_shrunk(original: &[u8], side: u32, max_bytes: u64) -> Result<Decoded, String> {
    match format_of(original) {
        Format::Jpeg => jpeg_shrunk(original, side, max_bytes),
        Format::Png => match png_shrunk(original, side, max_bytes)? {
            Some(shrunk) => Ok(shrunk),
            None => whole(original, max_bytes),
        },
        Format::Other => whole(original, max_bytes),
    }
}

fn jpeg_shrunk(original: &[u8], side: u32, max_bytes: u64) -> Result<Decoded, String> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(original));
    decoder.set_max_decoding_buffer_size(usize::try_from(max_bytes).unwrap_or(usize::MAX));
    decoder.read_info().map_err(|e| e.to_string())?;
    let info = decoder.info().ok_or("a JPEG without a frame header")?;
    let size = (u32::from(info.width), u32::from(info.height));
    let k = reduction(size.0, size.1, side, true);
    // The decoder picks the smallest scale that still reaches the requested size.
    let (width, height) = decoder
        .scale(
            info.width.div_ceil(k as u16).max(1),
            info.height.div_ceil(k as u16).max(1),
        )
        .map_err(|e| e.to_string())?;
    let decoded = decoder.decode().map_err(|e| e.to_string())?;
    let pixels = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => decoded,
        jpeg_decoder::PixelFormat::L8 => decoded.iter().flat_map(|&l| [l, l, l]).collect(),
        jpeg_decoder::PixelFormat::L16 => decoded
            .chunks_exact(2)
            .flat_map(|l| [l[0], l[0], l[0]])
            .collect(),
        // Adobe's CMYK JPEGs store inverted ink.
        jpeg_decoder::PixelFormat::CMYK32 => decoded
            .chunks_exact(4)
            .flat_map(|p| {
                let k = u16::from(p[3]);
                [p[0], p[1], p[2]].map(|c| ((u16::from(c) * k) / 255) as u8)
            })
            .collect(),
    };
    Ok((
        size,
        Shrunk {
            width: width.into(),
            height: height.into(),
            pixels,
            pixel_type: PixelType::U8x3,
        },
    ))
}

/// A PNG read a row at a time into the box filter; `None` for an interlaced one, whose rows come
/// in passes.
fn png_shrunk(original: &[u8], side: u32, max_bytes: u64) -> Result<Option<Decoded>, String> {
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(original),
        png::Limits {
            bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        },
    );
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let (width, height, interlaced) = {
        let info = reader.info();
        (info.width, info.height, info.interlaced)
    };
    if interlaced {
        return Ok(None);
    }
    let (color, _) = reader.output_color_type();
    let channels = match color {
        png::ColorType::Rgba | png::ColorType::GrayscaleAlpha => 4,
        _ => 3,
    };
    let k = reduction(width, height, side, false);
    let mut shrink = BoxShrink::new(width as usize, height as usize, k as usize, channels);
    let mut converted = vec![0u8; width as usize * channels];
    while let Some(row) = reader.next_row().map_err(|e| e.to_string())? {
        let data = row.data();
        let row: &[u8] = match color {
            png::ColorType::Rgb | png::ColorType::Rgba => data,
            png::ColorType::Grayscale => {
                for (px, &l) in converted.chunks_exact_mut(3).zip(data) {
                    px.copy_from_slice(&[l, l, l]);
                }
                &converted
            }
            png::ColorType::GrayscaleAlpha => {
                for (px, la) in converted.chunks_exact_mut(4).zip(data.chunks_exact(2)) {
                    px.copy_from_slice(&[la[0], la[0], la[0], la[1]]);
                }
                &converted
            }
            // EXPAND turns a palette into RGB or RGBA.
            png::ColorType::Indexed => return Err("a palette PNG left unexpanded".into()),
        };
        if row.len() < width as usize * channels {
            return Err("a PNG row shorter than its width".into());
        }
        shrink.push_row(row);
    }
    let (w, h, pixels) = shrink.finish();
    Ok(Some((
        (width, height),
        Shrunk {
            width: w,
            height: h,
            pixels,
            pixel_type: if channels == 4 {
                PixelType::U8x4
            } else {
                PixelType::U8x3
            },
        },
    )))
}

/// Decoded whole by the image crate, held to `max_bytes`.
fn whole(original: &[u8], max_bytes: u64) -> Result<Decoded, String> {
    let mut reader = whole_reader(original)?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_bytes);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| e.to_string())?;
    let (width, height) = (decoded.width(), decoded.height());
    // RGBA is resized as it is and loses its alpha at thumbnail size: converting a large image
    // to RGB first would hold a second copy of its pixels.
    let (pixels, pixel_type) = match decoded {
        image::DynamicImage::ImageRgba8(rgba) => (rgba.into_raw(), PixelType::U8x4),
        other => (other.into_rgb8().into_raw(), PixelType::U8x3),
    };
    Ok((
        (width, height),
        Shrunk {
            width,
            height,
            pixels,
            pixel_type,
        },
    ))
}

/// Averages blocks of `k`x`k` pixels (smaller at the right and bottom edges) as rows come.
struct BoxShrink {
    width: usize,
    k: usize,
    channels: usize,
    out_width: usize,
    sums: Vec<u32>,
    rows_in_block: usize,
    out: Vec<u8>,
}

impl BoxShrink {
    fn new(width: usize, height: usize, k: usize, channels: usize) -> Self {
        let out_width = width.div_ceil(k);
        BoxShrink {
            width,
            k,
            channels,
            out_width,
            sums: vec![0; out_width * channels],
            rows_in_block: 0,
            out: Vec::with_capacity(out_width * height.div_ceil(k) * channels),
        }
    }

    fn push_row(&mut self, row: &[u8]) {
        let (k, ch) = (self.k, self.channels);
        for (ox, sum) in self.sums.chunks_exact_mut(ch).enumerate() {
            let block = &row[ox * k * ch..((ox + 1) * k).min(self.width) * ch];
            for px in block.chunks_exact(ch) {
                for c in 0..ch {
                    sum[c] += u32::from(px[c]);
                }
            }
        }
        self.rows_in_block += 1;
        if self.rows_in_block == k {
            self.emit();
        }
    }

    fn emit(&mut self) {
        let (k, ch, rows) = (self.k, self.channels, self.rows_in_block as u32);
        for (ox, sum) in self.sums.chunks_exact_mut(ch).enumerate() {
            let cols = (((ox + 1) * k).min(self.width) - ox * k) as u32;
            let n = cols * rows;
            for s in sum.iter_mut() {
                self.out.push(((*s + n / 2) / n) as u8);
                *s = 0;
            }
        }
        self.rows_in_block = 0;
    }

    fn finish(mut self) -> (u32, u32, Vec<u8>) {
        if self.rows_in_block > 0 {
            self.emit();
        }
        let height = self.out.len() / (self.out_width * self.channels).max(1);
        (self.out_width as u32, height as u32, self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ImageFormat;
    use crate::generate::{ImageSpec, render};

    fn original(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
        render(
            &ImageSpec {
                width,
                height,
                format,
            },
            3,
        )
        .unwrap()
    }

    // A 64-pixel thumbnail of a 1030x580 image shrinks as a 256-pixel one of a 4120x2320 image
    // would, at a sixteenth of the pixels to draw in a test.
    const SIDE: u32 = 64;

    #[test]
    fn a_large_jpeg_and_png_decode_shrunk_to_no_less_than_twice_the_thumbnail() {
        for format in [ImageFormat::Jpeg, ImageFormat::Png] {
            let image = original(format, 1030, 580);
            let ((w, h), shrunk) = decode_shrunk(&image, SIDE, 64 << 20).unwrap();
            assert_eq!((w, h), (1030, 580), "{format}");
            // 1030 / 128 = 8: a JPEG at 1/8 of its size, a PNG in 8x8 blocks.
            assert_eq!((shrunk.width, shrunk.height), (129, 73), "{format}");
            assert_eq!(shrunk.pixels.len(), 129 * 73 * 3, "{format}");
        }
    }

    #[test]
    fn decoding_a_large_image_for_a_thumbnail_costs_a_fraction_of_its_pixels() {
        let pixels = 1030 * 580 * 3;
        for format in [ImageFormat::Jpeg, ImageFormat::Png] {
            let cost = decode_cost(&original(format, 1030, 580), SIDE).unwrap();
            assert!(cost * 20 < pixels, "{format}: {cost} of {pixels}");
        }
        // WebP has no smaller output: its pixels whole.
        let cost = decode_cost(&original(ImageFormat::Webp, 300, 200), SIDE).unwrap();
        assert!(cost >= 300 * 200 * 3, "{cost}");
    }

    #[test]
    fn a_png_shrunk_in_blocks_is_the_average_of_each_block() {
        let image = original(ImageFormat::Png, 1030, 520);
        let ((_, _), shrunk) = decode_shrunk(&image, 256, 64 << 20).unwrap();
        // 1030 / 512 = 2: blocks of 2x2, the last column of blocks one pixel wide.
        assert_eq!((shrunk.width, shrunk.height), (515, 260));
        let full = image::load_from_memory(&image).unwrap().to_rgb8();
        for (x, y) in [(0u32, 0u32), (100, 37), (514, 259)] {
            for c in 0..3 {
                let mut sum = 0u32;
                let mut n = 0u32;
                for dy in 0..2 {
                    for dx in 0..2 {
                        let (fx, fy) = (2 * x + dx, 2 * y + dy);
                        if fx < 1030 && fy < 520 {
                            sum += u32::from(full.get_pixel(fx, fy)[c]);
                            n += 1;
                        }
                    }
                }
                let at = ((y * 515 + x) * 3) as usize + c;
                assert_eq!(u32::from(shrunk.pixels[at]), (sum + n / 2) / n, "({x},{y})");
            }
        }
    }
}
