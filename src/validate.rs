//! Checks a decoded record before anything is stored. Cheap on purpose: the image header is parsed
//! for its dimensions, the pixels are never decoded.

use crate::domain::{ImageFormat, ImageRecord, ImageReference, OBJECT_PREFIX, object_key};
use chrono::{DateTime, Utc};
use std::io::Cursor;
use thiserror::Error;

/// Limits a record must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted width × height; a guard against decompression bombs.
    pub max_pixels: u64,
    /// Largest accepted encoded image.
    pub max_image_bytes: usize,
    /// What `customer_id` and `source_id` may hold.
    pub ids: IdRules,
}

/// The shape of the identifiers a producer chooses (`customer_id`, `source_id`). They reach index
/// columns and their btree indexes, URLs of `serve` and log lines, so each is bounded at the door:
/// a NUL byte or an 8,000-character id would otherwise fail the index write and stop the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRules {
    /// Most characters an id may have. At most [`IdRules::MAX_CHARS`]: an id of that many 4-byte
    /// characters still fits PostgreSQL's btree entry (2,704 bytes) beside the other key columns.
    pub max_chars: usize,
    pub characters: IdCharacters,
}

impl IdRules {
    pub const MAX_CHARS: usize = 512;
}

impl Default for IdRules {
    fn default() -> Self {
        IdRules {
            max_chars: 128,
            characters: IdCharacters::Printable,
        }
    }
}

/// Which characters an id may hold (`IMGSTREAM_ID_CHARACTERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdCharacters {
    /// Any Unicode character except control and format characters, without leading or trailing
    /// whitespace: names in any script, never bytes that break a header, a log line or a column.
    Printable,
    /// ASCII letters and digits and `- . _ : @ / + =`: ids that need no quoting anywhere.
    Ascii,
}

impl IdCharacters {
    pub fn name(self) -> &'static str {
        match self {
            IdCharacters::Printable => "printable",
            IdCharacters::Ascii => "ascii",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [IdCharacters::Printable, IdCharacters::Ascii]
            .into_iter()
            .find(|c| c.name() == name)
    }

    fn allows(self, c: char) -> bool {
        match self {
            IdCharacters::Printable => !c.is_control() && !is_format_character(c),
            IdCharacters::Ascii => c.is_ascii_alphanumeric() || "-._:@/+=".contains(c),
        }
    }
}

/// Unicode's format characters (category Cf) that matter here: invisible, and able to make two
/// ids look alike or reorder text (bidirectional overrides, zero-width characters, BOM).
fn is_format_character(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

/// Earliest and latest `created_at` accepted: years 1 to 9999, what PostgreSQL's `timestamptz`,
/// RFC 3339 and every client that reads the index can represent.
fn created_at_range() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        DateTime::from_timestamp(-62_135_596_800, 0).expect("0001-01-01 is representable"),
        DateTime::from_timestamp(253_402_300_799, 0).expect("9999-12-31 is representable"),
    )
}

/// Why a record is refused. Every variant is permanent: retrying cannot change the bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Invalid {
    #[error("content type {0:?} is not one of image/png, image/jpeg, image/webp")]
    UnsupportedContentType(String),
    #[error("empty image payload")]
    Empty,
    #[error("image is {size} bytes, above the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("declared {width}x{height} is {pixels} pixels, above the limit of {limit}")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("declared dimensions {width}x{height} must both be positive")]
    ZeroDimension { width: u32, height: u32 },
    #[error("bytes are not a {declared} image (signature: {found})")]
    SignatureMismatch {
        declared: ImageFormat,
        found: String,
    },
    #[error("{format} header could not be parsed: {detail}")]
    UnreadableHeader { format: ImageFormat, detail: String },
    #[error(
        "header says {actual_width}x{actual_height}, record declares {declared_width}x{declared_height}"
    )]
    DimensionMismatch {
        declared_width: u32,
        declared_height: u32,
        actual_width: u32,
        actual_height: u32,
    },
    #[error("declared sha256 {0:?} is not 64 hex digits")]
    MalformedChecksum(String),
    #[error("{field} is empty")]
    MissingField { field: &'static str },
    #[error("{field} has {chars} characters, above the limit of {limit} (IMGSTREAM_MAX_ID_CHARS)")]
    FieldTooLong {
        field: &'static str,
        chars: usize,
        limit: usize,
    },
    #[error(
        "{field} holds {found} at character {position}, outside the {allowed} characters allowed (IMGSTREAM_ID_CHARACTERS)"
    )]
    ForbiddenCharacter {
        field: &'static str,
        /// The character, escaped: it may be a control character.
        found: String,
        position: usize,
        allowed: &'static str,
    },
    #[error("created_at {0} is outside years 1 to 9999")]
    CreatedAtOutOfRange(String),
    #[error("the record carries both image bytes and a reference; it must carry one")]
    ReferenceWithData,
    #[error("reference key {key:?} is outside imgstream's key space ({prefix})")]
    ReferenceOutsidePrefix { key: String, prefix: &'static str },
    #[error("reference key {key:?} is not this image's key {expected}")]
    ReferenceForeignKey { key: String, expected: String },
    #[error("reference sha256 {reference:?} is not the record's sha256 {declared:?}")]
    ReferenceChecksumDiffers { reference: String, declared: String },
}

impl Invalid {
    /// A short stable code for the dead-letter headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::UnsupportedContentType(_) => "unsupported-content-type",
            Invalid::Empty => "empty-image",
            Invalid::TooLarge { .. } => "image-too-large",
            Invalid::TooManyPixels { .. } => "too-many-pixels",
            Invalid::ZeroDimension { .. } => "zero-dimension",
            Invalid::SignatureMismatch { .. } => "signature-mismatch",
            Invalid::UnreadableHeader { .. } => "unreadable-header",
            Invalid::DimensionMismatch { .. } => "dimension-mismatch",
            Invalid::MalformedChecksum(_) => "malformed-checksum",
            Invalid::MissingField { .. } => "missing-field",
            Invalid::FieldTooLong { .. } => "field-too-long",
            Invalid::ForbiddenCharacter { .. } => "forbidden-character",
            Invalid::CreatedAtOutOfRange(_) => "created-at-out-of-range",
            Invalid::ReferenceWithData => "reference-with-data",
            Invalid::ReferenceOutsidePrefix { .. } => "reference-outside-prefix",
            Invalid::ReferenceForeignKey { .. } => "reference-foreign-key",
            Invalid::ReferenceChecksumDiffers { .. } => "reference-checksum-mismatch",
        }
    }
}

/// Accepts a record only if it can be stored and served as what it claims to be.
pub fn validate(record: &ImageRecord, limits: &Limits) -> Result<ImageFormat, Invalid> {
    check_id("customer_id", &record.customer_id, &limits.ids)?;
    check_id("source_id", &record.source_id, &limits.ids)?;
    // Exactly one of the canonical types: the value becomes a Content-Type header and an index
    // column, so nothing else may pass, not even trailing whitespace.
    let declared = ImageFormat::ALL
        .into_iter()
        .find(|f| f.content_type() == record.content_type)
        .ok_or_else(|| Invalid::UnsupportedContentType(bounded(&record.content_type)))?;
    let (earliest, latest) = created_at_range();
    if record.created_at < earliest || record.created_at > latest {
        return Err(Invalid::CreatedAtOutOfRange(record.created_at.to_string()));
    }
    let data = &record.data[..];
    let size = record.size();
    if size == 0 {
        return Err(Invalid::Empty);
    }
    if size > limits.max_image_bytes as u64 {
        return Err(Invalid::TooLarge {
            size: usize::try_from(size).unwrap_or(usize::MAX),
            limit: limits.max_image_bytes,
        });
    }
    // Declared dimensions are checked before the header is touched, so a bomb is refused unread.
    check_dimensions(record.width, record.height, limits)?;
    if let Some(reference) = &record.reference {
        // The image is in the bucket: what can be checked without it is checked here, the rest
        // (existence, size, checksum, signature, header) by the store's sink (store::claim).
        check_reference(record, reference)?;
        check_checksum_form(&record.sha256)?;
        return Ok(declared);
    }

    let found = sniff(data);
    if found != Some(declared) {
        return Err(Invalid::SignatureMismatch {
            declared,
            found: found.map_or_else(|| describe_unknown(data), |f| f.to_string()),
        });
    }
    let (actual_width, actual_height) = header_dimensions(data, declared)?;
    if (actual_width, actual_height) != (record.width, record.height) {
        return Err(Invalid::DimensionMismatch {
            declared_width: record.width,
            declared_height: record.height,
            actual_width,
            actual_height,
        });
    }
    // Only the form of the checksum is checked here: the object store hashes the bytes as it
    // persists them and refuses a mismatch (store::put_image), so the image is hashed once.
    check_checksum_form(&record.sha256)?;
    Ok(declared)
}

fn check_checksum_form(sha256: &str) -> Result<(), Invalid> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Invalid::MalformedChecksum(bounded(sha256)));
    }
    Ok(())
}

/// A reference may name only this record's own key: a producer cannot point the consumer at
/// another image's object, or at anything outside the image prefix (docs/claim-check.md).
fn check_reference(record: &ImageRecord, reference: &ImageReference) -> Result<(), Invalid> {
    if !record.data.is_empty() {
        return Err(Invalid::ReferenceWithData);
    }
    let expected = object_key(&record.image_id);
    if reference.key != expected {
        if !reference.key.starts_with(OBJECT_PREFIX) || reference.key.contains("..") {
            return Err(Invalid::ReferenceOutsidePrefix {
                key: bounded(&reference.key),
                prefix: OBJECT_PREFIX,
            });
        }
        return Err(Invalid::ReferenceForeignKey {
            key: bounded(&reference.key),
            expected,
        });
    }
    if !reference.sha256.eq_ignore_ascii_case(&record.sha256) {
        return Err(Invalid::ReferenceChecksumDiffers {
            reference: bounded(&reference.sha256),
            declared: bounded(&record.sha256),
        });
    }
    Ok(())
}

/// The checks of an inline image's bytes that a referenced image gets from the head of its
/// object (a ranged read): signature, and header dimensions against the declared ones.
pub fn validate_head(record: &ImageRecord, head: &[u8]) -> Result<(), Invalid> {
    let declared = ImageFormat::from_content_type(&record.content_type)
        .filter(|f| f.content_type() == record.content_type)
        .ok_or_else(|| Invalid::UnsupportedContentType(bounded(&record.content_type)))?;
    let found = sniff(head);
    if found != Some(declared) {
        return Err(Invalid::SignatureMismatch {
            declared,
            found: found.map_or_else(|| describe_unknown(head), |f| f.to_string()),
        });
    }
    let (actual_width, actual_height) = header_dimensions(head, declared)?;
    if (actual_width, actual_height) != (record.width, record.height) {
        return Err(Invalid::DimensionMismatch {
            declared_width: record.width,
            declared_height: record.height,
            actual_width,
            actual_height,
        });
    }
    Ok(())
}

/// An id is present, within its length and made of allowed characters.
pub fn check_id(field: &'static str, id: &str, rules: &IdRules) -> Result<(), Invalid> {
    if id.trim().is_empty() {
        return Err(Invalid::MissingField { field });
    }
    // Counting stops past the limit: an id of millions of characters costs no more than that.
    let chars = id.chars().take(rules.max_chars + 1).count();
    if chars > rules.max_chars {
        return Err(Invalid::FieldTooLong {
            field,
            chars: id.chars().count(),
            limit: rules.max_chars,
        });
    }
    let forbidden = id
        .chars()
        .enumerate()
        .find(|(_, c)| !rules.characters.allows(*c));
    if let Some((position, c)) = forbidden {
        return Err(Invalid::ForbiddenCharacter {
            field,
            found: c.escape_default().to_string(),
            position,
            allowed: rules.characters.name(),
        });
    }
    if id.trim() != id {
        return Err(Invalid::ForbiddenCharacter {
            field,
            found: "leading or trailing whitespace".into(),
            position: if id.starts_with(char::is_whitespace) {
                0
            } else {
                chars - 1
            },
            allowed: rules.characters.name(),
        });
    }
    Ok(())
}

/// A producer's string quoted in a refusal: escaped (it may hold control characters) and cut
/// short, so a refusal's reason stays one short line whatever the record holds.
fn bounded(s: &str) -> String {
    const QUOTED_CHARS: usize = 80;
    let mut out: String = s.chars().take(QUOTED_CHARS).collect::<String>();
    if s.chars().nth(QUOTED_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn check_dimensions(width: u32, height: u32, limits: &Limits) -> Result<(), Invalid> {
    if width == 0 || height == 0 {
        return Err(Invalid::ZeroDimension { width, height });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(Invalid::TooManyPixels {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// The format named by the file signature (magic bytes), if it is one we accept.
pub fn sniff(data: &[u8]) -> Option<ImageFormat> {
    match image::guess_format(data).ok()? {
        image::ImageFormat::Png => Some(ImageFormat::Png),
        image::ImageFormat::Jpeg => Some(ImageFormat::Jpeg),
        image::ImageFormat::WebP => Some(ImageFormat::Webp),
        _ => None,
    }
}

fn describe_unknown(data: &[u8]) -> String {
    match image::guess_format(data) {
        Ok(other) => format!("{other:?}"),
        Err(_) => format!(
            "unknown, starts with {}",
            hex::encode(&data[..data.len().min(8)])
        ),
    }
}

/// Width and height from the image header alone.
fn header_dimensions(data: &[u8], format: ImageFormat) -> Result<(u32, u32), Invalid> {
    let image_format = match format {
        ImageFormat::Png => image::ImageFormat::Png,
        // `image` copies a whole JPEG into a buffer before reading its header: for a 2 MB image
        // that copy cost more than the rest of the check, so the frame header is found here.
        ImageFormat::Jpeg => {
            return jpeg_dimensions(data).map_err(|detail| Invalid::UnreadableHeader {
                format,
                detail: detail.into(),
            });
        }
        ImageFormat::Webp => image::ImageFormat::WebP,
    };
    image::ImageReader::with_format(Cursor::new(data), image_format)
        .into_dimensions()
        .map_err(|e| Invalid::UnreadableHeader {
            format,
            detail: e.to_string(),
        })
}

/// Width and height from a JPEG's frame header (SOFn), walking the marker segments before it.
fn jpeg_dimensions(data: &[u8]) -> Result<(u32, u32), &'static str> {
    const TRUNCATED: &str = "truncated before the frame header";
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err("no start-of-image marker");
    }
    let mut pos = 2;
    loop {
        // A marker is 0xFF followed by its code; extra 0xFF bytes before it are fill.
        if *data.get(pos).ok_or(TRUNCATED)? != 0xFF {
            return Err("expected a marker between segments");
        }
        while *data.get(pos).ok_or(TRUNCATED)? == 0xFF {
            pos += 1;
        }
        let marker = data[pos];
        pos += 1;
        match marker {
            // Markers without a segment.
            0x01 | 0xD0..=0xD8 => continue,
            0xD9 | 0xDA => return Err("no frame header before the image data"),
            _ => {}
        }
        let segment = data.get(pos..pos + 2).ok_or(TRUNCATED)?;
        let len = usize::from(u16::from_be_bytes([segment[0], segment[1]]));
        if len < 2 {
            return Err("segment length below 2");
        }
        // Every SOFn except DHT (C4), JPG (C8) and DAC (CC): precision, height, width.
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let frame = data.get(pos + 2..pos + 7).ok_or(TRUNCATED)?;
            let height = u32::from(u16::from_be_bytes([frame[1], frame[2]]));
            let width = u32::from(u16::from_be_bytes([frame[3], frame[4]]));
            if height == 0 || width == 0 {
                // Height 0 defers it to a DNL marker after the first scan: not worth accepting.
                return Err("frame header without both dimensions");
            }
            return Ok((width, height));
        }
        pos += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sha256_hex;
    use crate::generate::{ImageSpec, render};
    use bytes::Bytes;
    use chrono::Utc;
    use uuid::Uuid;

    const LIMITS: Limits = Limits {
        max_pixels: 40_000_000,
        max_image_bytes: 8 << 20,
        ids: IdRules {
            max_chars: 128,
            characters: IdCharacters::Printable,
        },
    };

    fn record_with(format: ImageFormat, width: u32, height: u32) -> ImageRecord {
        let data = render(
            &ImageSpec {
                width,
                height,
                format,
            },
            7,
        )
        .expect("render");
        ImageRecord {
            image_id: Uuid::new_v4(),
            customer_id: "c1".into(),
            source_id: "cam-1".into(),
            created_at: Utc::now(),
            content_type: format.content_type().into(),
            width,
            height,
            sha256: sha256_hex(&data),
            data: Bytes::from(data),
            reference: None,
        }
    }

    #[test]
    fn a_well_formed_image_of_each_format_is_accepted() {
        for format in ImageFormat::ALL {
            let record = record_with(format, 64, 48);
            assert_eq!(validate(&record, &LIMITS), Ok(format), "{format}");
        }
    }

    #[test]
    fn bytes_that_are_not_an_image_are_refused_by_signature() {
        let mut record = record_with(ImageFormat::Png, 16, 16);
        record.data = Bytes::from_static(b"hello, I am plain text");
        record.sha256 = sha256_hex(&record.data);
        assert!(matches!(
            validate(&record, &LIMITS),
            Err(Invalid::SignatureMismatch { .. })
        ));
    }

    #[test]
    fn a_content_type_that_lies_about_the_bytes_is_refused() {
        let mut record = record_with(ImageFormat::Jpeg, 16, 16);
        record.content_type = "image/png".into();
        let err = validate(&record, &LIMITS).unwrap_err();
        assert_eq!(err.code(), "signature-mismatch");
        assert!(err.to_string().contains("Jpeg") || err.to_string().contains("jpeg"));
    }

    #[test]
    fn declared_dimensions_must_match_the_header() {
        let mut record = record_with(ImageFormat::Png, 32, 20);
        record.width = 33;
        assert_eq!(
            validate(&record, &LIMITS),
            Err(Invalid::DimensionMismatch {
                declared_width: 33,
                declared_height: 20,
                actual_width: 32,
                actual_height: 20
            })
        );
    }

    #[test]
    fn huge_declared_dimensions_are_refused_before_parsing() {
        let mut record = record_with(ImageFormat::Png, 16, 16);
        record.width = 100_000;
        record.height = 100_000;
        assert_eq!(
            validate(&record, &LIMITS).unwrap_err().code(),
            "too-many-pixels"
        );
    }

    #[test]
    fn a_checksum_that_is_not_64_hex_digits_is_refused() {
        for declared in ["", "abc", &"g".repeat(64), &format!("{} ", "a".repeat(63))] {
            let mut record = record_with(ImageFormat::Webp, 16, 16);
            record.sha256 = declared.to_string();
            assert_eq!(
                validate(&record, &LIMITS).unwrap_err().code(),
                "malformed-checksum",
                "{declared:?}"
            );
        }
    }

    #[test]
    fn a_wrong_but_well_formed_checksum_is_left_to_the_store() {
        // The store hashes what it persists and refuses a mismatch (store tests, consume tests).
        let mut record = record_with(ImageFormat::Webp, 16, 16);
        record.sha256 = sha256_hex(b"something else").to_uppercase();
        assert_eq!(validate(&record, &LIMITS), Ok(ImageFormat::Webp));
    }

    #[test]
    fn jpeg_dimensions_match_what_the_image_crate_reads() {
        for (width, height) in [(1, 1), (17, 9), (640, 480), (1000, 750)] {
            let record = record_with(ImageFormat::Jpeg, width, height);
            let by_image = image::ImageReader::with_format(
                Cursor::new(&record.data[..]),
                image::ImageFormat::Jpeg,
            )
            .into_dimensions()
            .expect("image crate reads it");
            assert_eq!(jpeg_dimensions(&record.data), Ok(by_image));
            assert_eq!(by_image, (width, height));
        }
    }

    #[test]
    fn jpeg_frame_header_is_found_after_other_segments_and_fill_bytes() {
        let progressive = [
            &[0xFF, 0xD8][..],                     // SOI
            &[0xFF, 0xE0, 0x00, 0x04, 0xAA, 0xBB], // APP0, 2 bytes of payload
            &[0xFF, 0xFF, 0xFF],                   // fill bytes before the next marker
            &[0xC4, 0x00, 0x03, 0x00],             // DHT: not a frame header
            &[
                0xFF, 0xC2, 0x00, 0x0B, 0x08, 0x01, 0x2C, 0x01, 0x90, 0x01, 0x01, 0x11, 0x00,
            ], // SOF2
        ]
        .concat();
        assert_eq!(jpeg_dimensions(&progressive), Ok((400, 300)));
    }

    #[test]
    fn jpeg_without_a_usable_frame_header_is_unreadable() {
        let cases: [(&[u8], &str); 5] = [
            (&[0xFF, 0xD8], "truncated before the frame header"),
            (
                &[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 0x00],
                "truncated before the frame header",
            ),
            (
                &[0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02],
                "no frame header before the image data",
            ),
            (
                &[0xFF, 0xD8, 0x12, 0x34],
                "expected a marker between segments",
            ),
            (
                &[
                    0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00, 0x00, 0x01, 0x00,
                ],
                "frame header without both dimensions",
            ),
        ];
        for (bytes, why) in cases {
            assert_eq!(jpeg_dimensions(bytes), Err(why), "{bytes:02x?}");
        }
    }

    #[test]
    fn a_truncated_header_is_refused() {
        let mut record = record_with(ImageFormat::Png, 16, 16);
        record.data = record.data.slice(..12);
        record.sha256 = sha256_hex(&record.data);
        assert_eq!(
            validate(&record, &LIMITS).unwrap_err().code(),
            "unreadable-header"
        );
    }

    #[test]
    fn unsupported_content_types_and_empty_fields_are_refused() {
        let mut record = record_with(ImageFormat::Png, 8, 8);
        record.content_type = "image/gif".into();
        assert_eq!(
            validate(&record, &LIMITS).unwrap_err().code(),
            "unsupported-content-type"
        );
        let mut record = record_with(ImageFormat::Png, 8, 8);
        record.customer_id = " ".into();
        assert_eq!(
            validate(&record, &LIMITS).unwrap_err().code(),
            "missing-field"
        );
    }

    #[test]
    fn an_image_above_the_byte_limit_is_refused() {
        let record = record_with(ImageFormat::Png, 64, 64);
        let small = Limits {
            max_image_bytes: 100,
            ..LIMITS
        };
        assert_eq!(
            validate(&record, &small).unwrap_err().code(),
            "image-too-large"
        );
    }

    #[test]
    fn a_content_type_must_be_exactly_canonical_because_it_becomes_a_header() {
        for declared in [
            "image/png\n",
            "image/png ",
            " image/png",
            "IMAGE/PNG",
            "image/png\0",
        ] {
            let mut record = record_with(ImageFormat::Png, 8, 8);
            record.content_type = declared.into();
            assert_eq!(
                validate(&record, &LIMITS).unwrap_err().code(),
                "unsupported-content-type",
                "{declared:?}"
            );
        }
    }

    #[test]
    fn an_id_longer_than_the_limit_is_refused_without_counting_all_of_it() {
        let mut record = record_with(ImageFormat::Png, 8, 8);
        record.source_id = "s".repeat(8_000);
        let err = validate(&record, &LIMITS).unwrap_err();
        assert_eq!(err.code(), "field-too-long");
        assert!(
            err.to_string().contains("source_id has 8000 characters"),
            "{err}"
        );
        // At the limit, in any script, it passes.
        record.source_id = "é".repeat(128);
        assert_eq!(validate(&record, &LIMITS), Ok(ImageFormat::Png));
    }

    #[test]
    fn control_and_invisible_characters_in_an_id_are_refused_and_named() {
        for (customer, shown) in [
            ("acme\0corp", "\\u{0}"),
            ("acme\ncorp", "\\n"),
            ("acme\u{202E}corp", "\\u{202e}"),
            ("acme\u{200B}", "\\u{200b}"),
            ("acme ", "whitespace"),
        ] {
            let mut record = record_with(ImageFormat::Png, 8, 8);
            record.customer_id = customer.into();
            let err = validate(&record, &LIMITS).unwrap_err();
            assert_eq!(err.code(), "forbidden-character", "{customer:?}");
            assert!(err.to_string().contains(shown), "{err} should show {shown}");
        }
        let mut record = record_with(ImageFormat::Png, 8, 8);
        record.customer_id = "Müller & Söhne 東京".into();
        assert_eq!(validate(&record, &LIMITS), Ok(ImageFormat::Png));
    }

    #[test]
    fn ascii_ids_allow_only_characters_that_need_no_quoting() {
        let ascii = Limits {
            ids: IdRules {
                max_chars: 128,
                characters: IdCharacters::Ascii,
            },
            ..LIMITS
        };
        let mut record = record_with(ImageFormat::Png, 8, 8);
        record.customer_id = "tenant-7/site_3:cam@a.b+c=d".into();
        assert_eq!(validate(&record, &ascii), Ok(ImageFormat::Png));
        record.customer_id = "Müller".into();
        assert_eq!(
            validate(&record, &ascii).unwrap_err().code(),
            "forbidden-character"
        );
    }

    #[test]
    fn a_creation_time_outside_years_1_to_9999_is_refused() {
        let mut record = record_with(ImageFormat::Png, 8, 8);
        record.created_at = DateTime::from_timestamp(253_402_300_800, 0).unwrap();
        assert_eq!(
            validate(&record, &LIMITS).unwrap_err().code(),
            "created-at-out-of-range"
        );
        record.created_at = DateTime::from_timestamp(-62_135_596_801, 0).unwrap();
        assert_eq!(
            validate(&record, &LIMITS).unwrap_err().code(),
            "created-at-out-of-range"
        );
    }

    #[test]
    fn a_refusal_quotes_a_long_field_only_in_part() {
        let mut record = record_with(ImageFormat::Png, 8, 8);
        record.content_type = "x".repeat(100_000);
        let err = validate(&record, &LIMITS).unwrap_err();
        assert!(err.to_string().len() < 200, "{}", err.to_string().len());
    }
}
