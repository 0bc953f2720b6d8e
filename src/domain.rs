//! The image record and what we know about it. No client library types live here.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::fmt;
use uuid::Uuid;

/// The image encodings imgstream accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 3] = [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Webp];

    pub fn content_type(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }

    pub fn from_content_type(content_type: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.content_type().eq_ignore_ascii_case(content_type.trim()))
    }

    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Webp => "webp",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "png" => Some(ImageFormat::Png),
            "jpeg" | "jpg" => Some(ImageFormat::Jpeg),
            "webp" => Some(ImageFormat::Webp),
            _ => None,
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One image as carried on the data topic.
#[derive(Clone, PartialEq)]
pub struct ImageRecord {
    pub image_id: Uuid,
    pub customer_id: String,
    pub source_id: String,
    pub created_at: DateTime<Utc>,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    /// Lowercase hex SHA-256 of the image, as declared by the producer.
    pub sha256: String,
    /// The image bytes, when the record carries them (empty when it carries a `reference`).
    pub data: Bytes,
    /// Where the producer uploaded the image when it was too large for the topic (the claim
    /// check, docs/claim-check.md).
    pub reference: Option<ImageReference>,
}

/// An image the producer uploaded to the bucket before sending its record: what the record
/// claims is there. The consumer believes none of it until the store confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    pub key: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the object's bytes.
    pub sha256: String,
}

impl ImageRecord {
    /// The image's size in bytes: the inline bytes, or what the reference declares.
    pub fn size(&self) -> u64 {
        match &self.reference {
            Some(r) => r.size,
            None => self.data.len() as u64,
        }
    }
}

impl fmt::Debug for ImageRecord {
    // The image bytes would drown any log line they appear in.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageRecord")
            .field("image_id", &self.image_id)
            .field("customer_id", &self.customer_id)
            .field("source_id", &self.source_id)
            .field("created_at", &self.created_at)
            .field("content_type", &self.content_type)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("sha256", &self.sha256)
            .field("bytes", &self.data.len())
            .field("reference", &self.reference)
            .finish()
    }
}

/// Where a record was read from: the coordinates the commit protocol reasons about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// The object key of an image: a pure function of its identity and nothing else.
///
/// Why only the id: every other field (customer, time, format) could differ between two records that
/// claim the same id. If any of them went into the key, such records would land on two keys and one
/// would become an orphan; with the id alone they meet on one key, where the store's create-only
/// write lets the first win and exposes the second as a conflict instead of replacing the image.
/// The two-character fan-out keeps listings of a large bucket shallow.
pub fn object_key(image_id: &Uuid) -> String {
    let id = image_id.as_hyphenated().to_string();
    format!("{OBJECT_PREFIX}{}/{}", &id[..2], id)
}

/// Every image object lives under this prefix; anything else in the bucket is not ours to audit.
pub const OBJECT_PREFIX: &str = "images/";

/// Thumbnails live apart from the images, so `verify` and the commit protocol never see them.
pub const THUMBNAIL_PREFIX: &str = "thumbnails/";

/// The object key of an image's thumbnail: like [`object_key`], a function of the id alone.
pub fn thumbnail_key(image_id: &Uuid) -> String {
    let id = image_id.as_hyphenated().to_string();
    format!("{THUMBNAIL_PREFIX}{}/{}.jpg", &id[..2], id)
}

/// Lowercase hex SHA-256 of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A stored image's index entry: what the `images` table holds for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub image_id: Uuid,
    pub object_key: String,
    pub bucket: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub width: i32,
    pub height: i32,
    pub content_type: String,
    pub customer_id: String,
    pub source_id: String,
    pub created_at: DateTime<Utc>,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

impl IndexEntry {
    pub fn new(record: &ImageRecord, origin: &Origin, bucket: &str) -> Self {
        IndexEntry {
            image_id: record.image_id,
            object_key: object_key(&record.image_id),
            bucket: bucket.to_string(),
            // One spelling in the index, whatever case the producer used: `verify` compares it
            // with the lowercase hex it computes.
            sha256: record.sha256.to_ascii_lowercase(),
            size_bytes: record.size() as i64,
            width: record.width as i32,
            height: record.height as i32,
            content_type: record.content_type.clone(),
            customer_id: record.customer_id.clone(),
            source_id: record.source_id.clone(),
            created_at: record.created_at,
            kafka_topic: origin.topic.clone(),
            kafka_partition: origin.partition,
            kafka_offset: origin.offset,
        }
    }

    /// Whether an existing row describes the same image. The Kafka coordinates are left out on
    /// purpose: a replay of the same record from another offset (a producer retry before
    /// idempotence, a re-publish) is the same image, not a conflict.
    pub fn same_image_as(&self, other: &IndexEntry) -> bool {
        self.image_id == other.image_id
            && self.object_key == other.object_key
            && self.bucket == other.bucket
            && self.sha256 == other.sha256
            && self.size_bytes == other.size_bytes
            && self.width == other.width
            && self.height == other.height
            && self.content_type == other.content_type
            && self.customer_id == other.customer_id
            && self.source_id == other.source_id
            && self.created_at == other.created_at
    }
}

/// What an erasure is matched against: an image's id, its customer and when it was created. A
/// record is erased when an erasure names its id, or its customer (or every customer, for
/// retention) with a cut-off later than its creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureProbe {
    pub image_id: Uuid,
    pub customer_id: String,
    pub created_at: DateTime<Utc>,
}

impl ErasureProbe {
    pub fn of(record: &ImageRecord) -> Self {
        ErasureProbe {
            image_id: record.image_id,
            customer_id: record.customer_id.clone(),
            created_at: record.created_at,
        }
    }
}

/// What an erasure asks to forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erasing {
    /// One customer's images created before `cutoff`; `before_given` when the request named
    /// the cut-off (otherwise it is the time the request started).
    Customer {
        customer_id: String,
        cutoff: DateTime<Utc>,
        before_given: bool,
    },
    /// These images, whoever they belong to; sorted, without repeats.
    Images(Vec<Uuid>),
    /// Every image created before `cutoff`: the retention period ran out.
    Retention { cutoff: DateTime<Utc> },
}

impl Erasing {
    pub fn kind(&self) -> &'static str {
        match self {
            Erasing::Customer { .. } => "customer",
            Erasing::Images(_) => "images",
            Erasing::Retention { .. } => "retention",
        }
    }

    /// Whether a record so described is erased by this.
    pub fn covers(&self, probe: &ErasureProbe) -> bool {
        match self {
            Erasing::Customer {
                customer_id,
                cutoff,
                ..
            } => probe.customer_id == *customer_id && probe.created_at < *cutoff,
            // Not a binary search: a list built by hand (the fakes, a test) need not be sorted.
            Erasing::Images(ids) => ids.contains(&probe.image_id),
            Erasing::Retention { cutoff } => probe.created_at < *cutoff,
        }
    }
}

impl fmt::Display for Erasing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Erasing::Customer {
                customer_id,
                cutoff,
                before_given,
            } => {
                let cutoff = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                if *before_given {
                    write!(
                        f,
                        "customer {customer_id:?}, images created before {cutoff}"
                    )
                } else {
                    write!(
                        f,
                        "customer {customer_id:?}, every image (created before {cutoff})"
                    )
                }
            }
            Erasing::Images(ids) if ids.len() == 1 => write!(f, "image {}", ids[0]),
            Erasing::Images(ids) => write!(f, "{} images by id", ids.len()),
            Erasing::Retention { cutoff } => write!(
                f,
                "retention: every image created before {}",
                cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        }
    }
}

/// An indexed image as the index returns it: its entry and when it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub entry: IndexEntry,
    pub stored_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_key_depends_only_on_the_image_id() {
        let id = Uuid::parse_str("3f2a0c1e-8b7d-4c6e-9a51-0d2e4f6a8b9c").unwrap();
        assert_eq!(
            object_key(&id),
            "images/3f/3f2a0c1e-8b7d-4c6e-9a51-0d2e4f6a8b9c"
        );
        assert_eq!(object_key(&id), object_key(&id));
    }

    #[test]
    fn content_types_round_trip_case_insensitively() {
        for f in ImageFormat::ALL {
            assert_eq!(ImageFormat::from_content_type(f.content_type()), Some(f));
            assert_eq!(
                ImageFormat::from_content_type(&f.content_type().to_uppercase()),
                Some(f)
            );
        }
        assert_eq!(ImageFormat::from_content_type("text/plain"), None);
    }

    #[test]
    fn sha256_hex_is_lowercase_hex_of_the_bytes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_index_keeps_a_declared_sha256_in_lowercase() {
        let data = Bytes::from_static(b"bytes");
        let record = ImageRecord {
            image_id: Uuid::nil(),
            customer_id: "c".into(),
            source_id: "s".into(),
            created_at: Utc::now(),
            content_type: "image/png".into(),
            width: 1,
            height: 1,
            sha256: sha256_hex(&data).to_uppercase(),
            data: data.clone(),
            reference: None,
        };
        let origin = Origin {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        };
        assert_eq!(
            IndexEntry::new(&record, &origin, "b").sha256,
            sha256_hex(&data)
        );
    }

    /// A record of `customer` created at `created_at`, with a fixed id.
    fn probe(customer: &str, created_at: DateTime<Utc>) -> ErasureProbe {
        ErasureProbe {
            image_id: Uuid::from_u128(7),
            customer_id: customer.into(),
            created_at,
        }
    }

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
    }

    #[test]
    fn a_customer_erasure_covers_that_customers_images_created_strictly_before_its_cutoff() {
        let cutoff = at("2026-03-01T12:00:00Z");
        // With --before (a cut-off asked for) and without (the time the request started): the
        // same rule, the flag only says where the cut-off came from.
        for before_given in [true, false] {
            let erasing = Erasing::Customer {
                customer_id: "bob".into(),
                cutoff,
                before_given,
            };
            let tick = chrono::Duration::microseconds(1);
            assert!(erasing.covers(&probe("bob", cutoff - tick)));
            assert!(erasing.covers(&probe("bob", cutoff - chrono::Duration::days(3650))));
            // Created at exactly the cut-off, or after: kept. A record made as the request
            // started is not one the request could have meant.
            assert!(!erasing.covers(&probe("bob", cutoff)));
            assert!(!erasing.covers(&probe("bob", cutoff + tick)));
            // Another customer, however old, and ids matched exactly (no case folding, no
            // prefix, no trimming).
            for other in ["alice", "Bob", "bo", "bob ", "bobby", ""] {
                assert!(
                    !erasing.covers(&probe(other, cutoff - tick)),
                    "{other:?} is not bob"
                );
            }
        }
    }

    #[test]
    fn an_erasure_by_id_covers_those_images_whoever_they_belong_to_and_whenever_made() {
        let ids = [Uuid::from_u128(9), Uuid::from_u128(3), Uuid::from_u128(5)];
        // In the order given: the list need not be sorted to be matched.
        let erasing = Erasing::Images(ids.to_vec());
        for id in ids {
            for (customer, created_at) in [
                ("anyone", at("1999-01-01T00:00:00Z")),
                ("someone", at("2999-01-01T00:00:00Z")),
            ] {
                let p = ErasureProbe {
                    image_id: id,
                    customer_id: customer.into(),
                    created_at,
                };
                assert!(erasing.covers(&p), "{id} of {customer}");
            }
        }
        for other in [Uuid::nil(), Uuid::from_u128(4), Uuid::from_u128(7)] {
            let p = ErasureProbe {
                image_id: other,
                ..probe("anyone", at("2000-01-01T00:00:00Z"))
            };
            assert!(!erasing.covers(&p), "{other} was not named");
        }
        assert!(!Erasing::Images(Vec::new()).covers(&probe("x", at("2000-01-01T00:00:00Z"))));
    }

    #[test]
    fn a_retention_erasure_covers_every_customers_images_created_strictly_before_its_cutoff() {
        let cutoff = at("2025-01-01T00:00:00Z");
        let erasing = Erasing::Retention { cutoff };
        let tick = chrono::Duration::microseconds(1);
        for customer in ["alice", "bob", ""] {
            assert!(erasing.covers(&probe(customer, cutoff - tick)));
            assert!(!erasing.covers(&probe(customer, cutoff)));
            assert!(!erasing.covers(&probe(customer, cutoff + tick)));
        }
    }

    #[test]
    fn the_cutoff_is_compared_as_an_instant_whatever_the_offset_it_was_written_with() {
        let erasing = Erasing::Customer {
            customer_id: "bob".into(),
            cutoff: at("2026-03-01T12:00:00+02:00"),
            before_given: true,
        };
        assert!(erasing.covers(&probe("bob", at("2026-03-01T09:59:59.999Z"))));
        assert!(!erasing.covers(&probe("bob", at("2026-03-01T10:00:00Z"))));
        assert!(!erasing.covers(&probe("bob", at("2026-03-01T11:00:00Z"))));
    }
}
