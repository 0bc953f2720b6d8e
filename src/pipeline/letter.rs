//! A dead letter as the dead-letter topic holds it, and why it always fits there.
//!
//! The topic refuses a record batch larger than its `max.message.bytes`. A refused letter stops
//! its partition for good: the offset may not pass a record that is neither stored nor
//! dead-lettered, and every retry meets the same refusal. The data topic takes records up to the
//! same size, so a record just under it plus our headers would not fit. The wire form is
//! therefore chosen against a [`LetterBudget`] by one pure function, [`DeadLetter::to_wire`],
//! which the Kafka writer and the in-memory twin both call. The first of these that fits:
//!
//! 1. the complete letter: the original key, value and headers, then ours;
//! 2. a reference instead of the value: `imgstream.dlq.omitted: value` and the value's size and
//!    sha256 next to the origin coordinates, enough to find the original on the data topic
//!    while it is retained and to check it is the one. The code stays the refusal's, so
//!    `dlq ls --code` finds the letter by why it was refused; `dlq replay` refuses it, having
//!    nothing to send;
//! 3. the reference without the producer's headers, then also without the key (each named in
//!    `imgstream.dlq.omitted`): only a producer that filled the record with headers or a key
//!    gets here.
//!
//! Ours are bounded so that the last form always fits a topic that takes a few KiB: the reason
//! is cut to [`MAX_REASON_BYTES`]; the other values are numbers, codes, times and names from
//! settings.
//!
//! Headers are also where a producer could speak for us: `dlq ls`, `--code` and the pipeline page
//! read `imgstream.dlq.*`. A producer's header under imgstream's namespace is renamed on the
//! letter (see [`letter_key`]), so what those read is always imgstream's verdict.

use super::RecordHeader;
use super::ports::DeadLetter;
use crate::domain::sha256_hex;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use std::borrow::Cow;

/// Header names of the dead-letter topic: part of the wire contract (`dlq ls`, `dlq replay`).
pub mod headers {
    pub const REASON: &str = "imgstream.dlq.reason";
    pub const CODE: &str = "imgstream.dlq.code";
    pub const CLASS: &str = "imgstream.dlq.class";
    pub const ORIGINAL_TOPIC: &str = "imgstream.dlq.original.topic";
    pub const ORIGINAL_PARTITION: &str = "imgstream.dlq.original.partition";
    pub const ORIGINAL_OFFSET: &str = "imgstream.dlq.original.offset";
    pub const ORIGINAL_TIMESTAMP: &str = "imgstream.dlq.original.timestamp";
    pub const DEAD_LETTERED_AT: &str = "imgstream.dlq.time";
    pub const GROUP: &str = "imgstream.dlq.group";
    /// What the letter leaves out of the original record, comma-separated (`value`,
    /// `headers`, `key`); absent on a complete letter.
    pub const OMITTED: &str = "imgstream.dlq.omitted";
    /// The original value's length in bytes, on a letter that omits it.
    pub const ORIGINAL_VALUE_SIZE: &str = "imgstream.dlq.original.value.size";
    /// The original value's sha256 (lowercase hex), on a letter that omits it.
    pub const ORIGINAL_VALUE_SHA256: &str = "imgstream.dlq.original.value.sha256";
    /// Every header of ours starts so.
    pub const PREFIX: &str = "imgstream.dlq.";
    /// A producer's header whose key was under [`NAMESPACE`], renamed with this prefix.
    pub const RENAMED: &str = "imgstream.dlq.producer-header.";
    /// imgstream's namespace: no producer header keeps a key under it on a letter.
    pub const NAMESPACE: &str = "imgstream.";
    /// How many times `imgstream dlq replay` sent this record back; travels with the record.
    pub const REPLAY_COUNT: &str = "imgstream.replay.count";
}

pub use super::refusal::{MAX_REASON_BYTES, bounded_reason, bounded_text};

/// How large a letter may be on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LetterBudget {
    bytes: usize,
}

impl LetterBudget {
    /// What a topic's `max.message.bytes` leaves out for a record batch of one letter: the batch
    /// header (61 bytes) with room to spare. The record's and headers' own framing is counted
    /// by [`WireLetter::size`].
    pub const HEADROOM: usize = 1024;

    /// The budget of a topic whose `max.message.bytes` is `max_message_bytes`.
    pub fn for_topic(max_message_bytes: usize) -> LetterBudget {
        LetterBudget {
            bytes: max_message_bytes.saturating_sub(Self::HEADROOM),
        }
    }

    pub fn bytes(self) -> usize {
        self.bytes
    }
}

/// What the writer adds to every letter besides the verdict: who dead-lettered it and when.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub group: &'a str,
    pub at: DateTime<Utc>,
}

/// A letter exactly as it is written to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireLetter {
    pub key: Option<Vec<u8>>,
    /// `None`: the original was a tombstone, or its value is omitted (see [`headers::OMITTED`]).
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

/// A record's framing in a v2 batch, at most: length, attributes, timestamp and offset deltas,
/// key and value lengths and the header count, as varints.
const RECORD_FRAMING: usize = 40;
/// A header's framing: its key and value lengths, as varints.
const HEADER_FRAMING: usize = 10;

impl WireLetter {
    /// The letter's size in a record batch, at most, without the batch header.
    pub fn size(&self) -> usize {
        RECORD_FRAMING
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + headers_size(&self.headers)
    }

    /// A header's value as text (the last, if the key repeats).
    pub fn header(&self, name: &str) -> Option<String> {
        last_header(&self.headers, name)
    }
}

/// The value of the last header named `name`, as text: ours are written after the producer's.
pub fn last_header(headers: &[RecordHeader], name: &str) -> Option<String> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k == name.as_bytes())
        .and_then(|(_, v)| v.as_deref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn headers_size(headers: &[RecordHeader]) -> usize {
    headers
        .iter()
        .map(|(k, v)| HEADER_FRAMING + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum()
}

/// A producer's header key as a letter carries it. A key under imgstream's namespace gets the
/// [`headers::RENAMED`] prefix, so that it cannot pass for ours; renaming rather than dropping
/// keeps the record whole for a replay. The rename is injective: a key already under the prefix
/// gets it once more, and [`original_key`] strips exactly one. The replay count is the one key
/// under the namespace that stays: `dlq replay` writes it on the data topic on purpose, and it
/// travels with the record.
pub fn letter_key(key: &[u8]) -> Cow<'_, [u8]> {
    if key.starts_with(headers::NAMESPACE.as_bytes()) && key != headers::REPLAY_COUNT.as_bytes() {
        Cow::Owned([headers::RENAMED.as_bytes(), key].concat())
    } else {
        Cow::Borrowed(key)
    }
}

/// The key a letter's header had on the original record, or `None` for a header of ours.
pub fn original_key(key: &[u8]) -> Option<&[u8]> {
    if let Some(original) = key.strip_prefix(headers::RENAMED.as_bytes()) {
        Some(original)
    } else if key.starts_with(headers::PREFIX.as_bytes()) {
        None
    } else {
        Some(key)
    }
}

impl DeadLetter {
    /// The letter to write: the first form (see the module's notes) that fits `budget`, or the
    /// smallest form if none does.
    pub fn to_wire(&self, stamp: Stamp<'_>, budget: LetterBudget) -> WireLetter {
        let producer: Vec<RecordHeader> = self
            .headers
            .iter()
            .map(|(k, v)| (letter_key(k).into_owned(), v.clone()))
            .collect();
        let verdict = self.verdict(stamp);
        let fixed = RECORD_FRAMING + headers_size(&verdict);
        let key_size = self.key.as_ref().map_or(0, Vec::len);
        let value_size = self.value.as_ref().map_or(0, Bytes::len);
        let producer_size = headers_size(&producer);
        if fixed + key_size + value_size + producer_size <= budget.bytes() {
            return WireLetter {
                key: self.key.clone(),
                value: self.value.clone(),
                headers: [producer, verdict].concat(),
            };
        }
        // A reference instead of the value; then also without the headers, then the key.
        let value_sha256 = self.value.as_deref().map(sha256_hex);
        let reference = |omitted: &[&str]| -> Vec<RecordHeader> {
            let mut hs = vec![header(headers::OMITTED, &omitted.join(","))];
            if let Some(sha256) = &value_sha256 {
                hs.push(header(
                    headers::ORIGINAL_VALUE_SIZE,
                    &value_size.to_string(),
                ));
                hs.push(header(headers::ORIGINAL_VALUE_SHA256, sha256));
            }
            hs
        };
        let mut omitted = Vec::new();
        if self.value.is_some() {
            omitted.push("value");
        }
        let with_headers = reference(&omitted);
        if fixed + headers_size(&with_headers) + key_size + producer_size <= budget.bytes() {
            return WireLetter {
                key: self.key.clone(),
                value: None,
                headers: [producer, verdict, with_headers].concat(),
            };
        }
        if !self.headers.is_empty() {
            omitted.push("headers");
        }
        let with_key = reference(&omitted);
        if fixed + headers_size(&with_key) + key_size <= budget.bytes() {
            return WireLetter {
                key: self.key.clone(),
                value: None,
                headers: [verdict, with_key].concat(),
            };
        }
        if self.key.is_some() {
            omitted.push("key");
        }
        WireLetter {
            key: None,
            value: None,
            headers: [verdict, reference(&omitted)].concat(),
        }
    }

    /// Our headers: why, what, where from, when, by whom.
    fn verdict(&self, stamp: Stamp<'_>) -> Vec<RecordHeader> {
        let original_ts = self
            .original_timestamp_ms
            .map(|t| t.to_string())
            .unwrap_or_default();
        vec![
            header(headers::REASON, &self.reason),
            header(headers::CODE, self.refusal.code()),
            header(headers::CLASS, self.refusal.class().as_str()),
            header(headers::ORIGINAL_TOPIC, &self.origin.topic),
            header(
                headers::ORIGINAL_PARTITION,
                &self.origin.partition.to_string(),
            ),
            header(headers::ORIGINAL_OFFSET, &self.origin.offset.to_string()),
            header(headers::ORIGINAL_TIMESTAMP, &original_ts),
            header(
                headers::DEAD_LETTERED_AT,
                &stamp.at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ),
            header(headers::GROUP, stamp.group),
        ]
    }
}

fn header(name: &str, value: &str) -> RecordHeader {
    (name.as_bytes().to_vec(), Some(value.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Origin;
    use crate::pipeline::{Polled, Refusal};

    fn polled(key: &[u8], value: Option<Vec<u8>>, headers: Vec<RecordHeader>) -> Polled {
        Polled {
            origin: Origin {
                topic: "images".into(),
                partition: 4,
                offset: 2,
            },
            key: Some(key.to_vec()),
            value: value.map(Bytes::from),
            headers,
            timestamp_ms: Some(1_700_000_000_000),
        }
    }

    fn refusal(message: &str) -> Refusal {
        Refusal::Undecodable {
            code: "bad-field",
            message: message.into(),
        }
    }

    fn stamp() -> Stamp<'static> {
        Stamp {
            group: "imgstream",
            at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        }
    }

    fn h(k: &str, v: &str) -> RecordHeader {
        header(k, v)
    }

    #[test]
    fn a_long_reason_is_cut_to_the_bound_on_a_character_boundary() {
        let reason = bounded_reason(format!("field {:?}", "é".repeat(5000)));
        assert!(reason.len() <= MAX_REASON_BYTES, "{} bytes", reason.len());
        assert!(reason.len() > MAX_REASON_BYTES - 8);
        assert!(reason.ends_with('…'));
        assert_eq!(bounded_reason("short".into()), "short");
    }

    #[test]
    fn a_letter_that_fits_carries_the_original_bytes_then_the_verdict() {
        let p = polled(b"cam-1", Some(vec![7; 1000]), vec![h("trace-id", "t1")]);
        let wire =
            DeadLetter::new(&p, refusal("why")).to_wire(stamp(), LetterBudget::for_topic(1 << 20));
        assert_eq!(wire.value.as_deref(), Some(&[7u8; 1000][..]));
        assert_eq!(wire.key.as_deref(), Some(&b"cam-1"[..]));
        assert_eq!(wire.headers[0], h("trace-id", "t1"));
        assert_eq!(wire.header(headers::CODE).as_deref(), Some("bad-field"));
        assert_eq!(wire.header(headers::OMITTED), None);
    }

    #[test]
    fn a_value_too_large_for_the_budget_is_replaced_by_its_size_and_sha256() {
        let value = vec![1u8; 20_000];
        let reason = format!(
            "declared sha256 {:?} is not 64 hex digits",
            "z".repeat(9000)
        );
        let p = polled(b"cam-1", Some(value.clone()), vec![h("trace-id", "t1")]);
        let letter = DeadLetter::new(&p, refusal(&reason));
        let budget = LetterBudget::for_topic(20_500);
        let wire = letter.to_wire(stamp(), budget);
        assert!(
            wire.size() <= budget.bytes(),
            "{} > {}",
            wire.size(),
            budget.bytes()
        );
        assert_eq!(wire.value, None);
        assert_eq!(
            wire.key.as_deref(),
            Some(&b"cam-1"[..]),
            "the key still fits"
        );
        assert_eq!(wire.headers[0], h("trace-id", "t1"), "so do the headers");
        assert_eq!(wire.header(headers::OMITTED).as_deref(), Some("value"));
        assert_eq!(
            wire.header(headers::ORIGINAL_VALUE_SIZE).as_deref(),
            Some("20000")
        );
        assert_eq!(
            wire.header(headers::ORIGINAL_VALUE_SHA256),
            Some(sha256_hex(&value))
        );
        assert_eq!(wire.header(headers::CODE).as_deref(), Some("bad-field"));
        assert_eq!(wire.header(headers::ORIGINAL_OFFSET).as_deref(), Some("2"));
        assert!(wire.header(headers::REASON).unwrap().len() <= MAX_REASON_BYTES);
    }

    #[test]
    fn headers_and_then_the_key_are_left_out_when_even_the_reference_does_not_fit() {
        let big_headers: Vec<RecordHeader> = (0..100)
            .map(|i| (format!("h{i}").into_bytes(), Some(vec![b'x'; 1000])))
            .collect();
        let p = polled(&[b'k'; 50_000], Some(vec![1; 10]), big_headers.clone());
        let letter = DeadLetter::new(&p, refusal("why"));

        let budget = LetterBudget::for_topic(60_000);
        let wire = letter.to_wire(stamp(), budget);
        assert!(wire.size() <= budget.bytes());
        assert_eq!(
            wire.header(headers::OMITTED).as_deref(),
            Some("value,headers")
        );
        assert!(wire.key.is_some());
        assert!(!wire.headers.iter().any(|(k, _)| k == b"h0"));

        let budget = LetterBudget::for_topic(8_000);
        let wire = letter.to_wire(stamp(), budget);
        assert!(wire.size() <= budget.bytes());
        assert_eq!(
            wire.header(headers::OMITTED).as_deref(),
            Some("value,headers,key")
        );
        assert_eq!(wire.key, None);
    }

    #[test]
    fn a_producers_headers_under_our_namespace_are_renamed_and_cannot_pass_for_the_verdict() {
        let forged = vec![
            h(headers::CODE, "ok"),
            h(headers::ORIGINAL_TOPIC, "elsewhere"),
            h("imgstream.custom", "x"),
            h(&format!("{}{}", headers::RENAMED, "a"), "nested"),
            h(headers::REPLAY_COUNT, "1"),
            (vec![0xff, b'k'], Some(b"bytes".to_vec())),
        ];
        let p = polled(b"cam-1", Some(vec![1]), forged.clone());
        let wire =
            DeadLetter::new(&p, refusal("why")).to_wire(stamp(), LetterBudget::for_topic(1 << 20));
        let codes: Vec<_> = wire
            .headers
            .iter()
            .filter(|(k, _)| k == headers::CODE.as_bytes())
            .collect();
        assert_eq!(codes, [&h(headers::CODE, "bad-field")], "only ours");
        assert_eq!(
            wire.header(headers::ORIGINAL_TOPIC).as_deref(),
            Some("images")
        );
        let keys: Vec<&[u8]> = wire.headers[..forged.len()]
            .iter()
            .map(|(k, _)| &k[..])
            .collect();
        assert_eq!(
            keys,
            [
                &b"imgstream.dlq.producer-header.imgstream.dlq.code"[..],
                b"imgstream.dlq.producer-header.imgstream.dlq.original.topic",
                b"imgstream.dlq.producer-header.imgstream.custom",
                b"imgstream.dlq.producer-header.imgstream.dlq.producer-header.a",
                b"imgstream.replay.count",
                &[0xff, b'k'],
            ]
        );
        // Every producer header maps back to its original key; none of ours does.
        let restored: Vec<RecordHeader> = wire
            .headers
            .iter()
            .filter_map(|(k, v)| original_key(k).map(|k| (k.to_vec(), v.clone())))
            .collect();
        assert_eq!(restored, forged);
    }
}
