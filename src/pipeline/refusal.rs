//! Every reason a record is refused, as one type. The dead letter that carries a refusal crosses
//! a port, so it lives with the ports ([`super::ports::DeadLetter`]).
//!
//! A refusal is about one record and no retry changes it: the bytes are wrong (`invalid`) or the
//! image's identity is taken by a different image (`conflict`). Its code is the stable short name
//! written to the `imgstream.dlq.code` header; the codes are part of the wire contract.

use crate::domain::IndexEntry;
use crate::schema::DecodeError;
use crate::validate::Invalid;
use uuid::Uuid;

/// Why a record cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The value is not a record of the contract (wire format, schema, Avro, a field).
    Undecodable { code: &'static str, message: String },
    /// The record decodes but is not an image it may store.
    Invalid { image_id: Uuid, invalid: Invalid },
    /// The store computed another sha256 than the record declares.
    ChecksumMismatch { image_id: Uuid, detail: String },
    /// The image's key already holds different bytes.
    ObjectConflict {
        image_id: Uuid,
        key: String,
        existing_sha256: String,
        sha256: String,
    },
    /// The image's id is already indexed with different metadata.
    IndexConflict {
        image_id: Uuid,
        existing: Box<IndexEntry>,
    },
    /// The index refused the image's row for a value it holds: a check the door does not make.
    IndexRefused { image_id: Uuid, detail: String },
    /// No request to the store can be built from the record's fields.
    Unstorable { image_id: Uuid, detail: String },
    /// The object a reference names is not what it claims (missing, another size, another
    /// sha256): `reference-missing`, `reference-size-mismatch`, `reference-checksum-mismatch`.
    Reference {
        image_id: Uuid,
        code: &'static str,
        detail: String,
    },
}

/// The two kinds of refusal, as written to the `imgstream.dlq.class` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The bytes are wrong.
    Invalid,
    /// The identity is taken by a different image.
    Conflict,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Invalid => "invalid",
            Class::Conflict => "conflict",
        }
    }
}

impl Refusal {
    pub fn from_decode(e: &DecodeError) -> Refusal {
        Refusal::Undecodable {
            code: e.code(),
            message: e.to_string(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Undecodable { code, .. } => code,
            Refusal::Invalid { invalid, .. } => invalid.code(),
            Refusal::ChecksumMismatch { .. } => "checksum-mismatch",
            Refusal::ObjectConflict { .. } => "object-conflict",
            Refusal::IndexConflict { .. } => "index-conflict",
            Refusal::IndexRefused { .. } => "index-refused",
            Refusal::Unstorable { .. } => "unstorable-record",
            Refusal::Reference { code, .. } => code,
        }
    }

    pub fn class(&self) -> Class {
        match self {
            Refusal::ObjectConflict { .. } | Refusal::IndexConflict { .. } => Class::Conflict,
            _ => Class::Invalid,
        }
    }

    /// One line for a person: what is wrong with which image.
    pub fn message(&self) -> String {
        match self {
            Refusal::Undecodable { message, .. } => message.clone(),
            Refusal::Invalid { image_id, invalid } => format!("image {image_id}: {invalid}"),
            Refusal::ChecksumMismatch { image_id, detail }
            | Refusal::IndexRefused { image_id, detail }
            | Refusal::Unstorable { image_id, detail }
            | Refusal::Reference {
                image_id, detail, ..
            } => format!("image {image_id}: {detail}"),
            Refusal::ObjectConflict {
                image_id,
                key,
                existing_sha256,
                sha256,
            } => format!(
                "image {image_id} claims key {key}, which already holds different bytes (sha256 {existing_sha256}, this record {sha256})"
            ),
            Refusal::IndexConflict { image_id, existing } => format!(
                "image {image_id} is already indexed with different metadata (customer {}, sha256 {}, from {}/{}@{})",
                existing.customer_id,
                existing.sha256,
                existing.kafka_topic,
                existing.kafka_partition,
                existing.kafka_offset
            ),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

/// The longest reason a letter carries, in bytes. A reason may quote a field of the record, and
/// a field may be as long as the record: 1 KiB says what is wrong and leaves the rest of the
/// budget to the original bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// The reason, cut to [`MAX_REASON_BYTES`] on a character boundary, with an ellipsis when cut.
pub fn bounded_reason(reason: String) -> String {
    bounded_text(reason, MAX_REASON_BYTES)
}

/// `text` cut to at most `max` bytes (`max` ≥ 3) on a character boundary, ending with an
/// ellipsis when cut.
pub fn bounded_text(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}
