//! Fuzzing the path every record takes before anything is stored: bytes → wire format → writer
//! schema → Avro → validation → refusal → dead letter. Whatever the bytes, the check returns (no
//! panic), allocates nothing much larger than the record, and ends in a record to store or a
//! refusal whose dead letter fits its topic.
//!
//! Three generators: arbitrary bytes behind a wire-format header, valid records mutated (bytes
//! flipped, cut, inserted, numbers swapped for huge ones), and records whose every field is
//! arbitrary. Writer schemas include our own (the fast path), a newer one with an array, a map
//! and a recursive record (apache-avro's path), and an id no registry knows.
//!
//! `make test` runs a few hundred cases of each; `make fuzz` runs many more
//! (`IMGSTREAM_FUZZ_CASES`). A failure is shrunk to a smallest input and printed.

use bytes::Bytes;
use imgstream::domain::{ImageFormat, ImageRecord, Origin, sha256_hex};
use imgstream::fakes::MemorySchemas;
use imgstream::generate::{ImageSpec, render};
use imgstream::pipeline::DeadLetter;
use imgstream::pipeline::check::{WriterSchemas, check_one};
use imgstream::pipeline::letter::{LetterBudget, Stamp, headers};
use imgstream::pipeline::ports::Polled;
use imgstream::schema::{IMAGE_RECORD_SCHEMA, ImageCodec, codec};
use imgstream::validate::Limits;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::{Arc, OnceLock};

/// Counts the largest single allocation of the current thread.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

const OURS: u32 = 1;
const NEWER: u32 = 2;
const UNKNOWN: u32 = 3;

/// Our schema and fields a later version could add: an array, a map and a recursive record.
fn newer_schema() -> String {
    let mut schema: serde_json::Value = serde_json::from_str(IMAGE_RECORD_SCHEMA).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    fields.push(serde_json::json!({"name": "tags", "type": {"type": "array", "items": "long"}, "default": []}));
    fields.push(serde_json::json!({"name": "labels", "type": {"type": "map", "values": "string"}, "default": {}}));
    fields.push(serde_json::json!({"name": "chain", "default": null, "type": ["null",
        {"type": "record", "name": "Link", "fields": [{"name": "next", "type": ["null", "Link"]}]}]}));
    schema.to_string()
}

struct Checker {
    codec: ImageCodec,
    schemas: WriterSchemas,
    newer: apache_avro::Schema,
    ours: apache_avro::Schema,
    limits: Limits,
}

fn checker() -> &'static Checker {
    static CHECKER: OnceLock<Checker> = OnceLock::new();
    CHECKER.get_or_init(|| {
        let newer = newer_schema();
        let registry = MemorySchemas::with(&[(OURS, IMAGE_RECORD_SCHEMA), (NEWER, &newer)]);
        let codec = ImageCodec::new(IMAGE_RECORD_SCHEMA, Arc::new(registry), "fuzz-value").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut schemas = WriterSchemas::new();
        for id in [OURS, NEWER] {
            let writer = runtime.block_on(codec.writer_schema(id)).unwrap();
            schemas.insert(id, Ok(writer));
        }
        Checker {
            codec,
            schemas,
            newer: apache_avro::Schema::parse_str(&newer).unwrap(),
            ours: apache_avro::Schema::parse_str(IMAGE_RECORD_SCHEMA).unwrap(),
            limits: Limits {
                max_pixels: 50_000_000,
                max_image_bytes: 10 << 20,
                ids: Default::default(),
            },
        }
    })
}

fn valid_record(seed: u64) -> ImageRecord {
    let format = ImageFormat::ALL[(seed % 3) as usize];
    let spec = ImageSpec {
        width: 6,
        height: 4,
        format,
    };
    let data = Bytes::from(render(&spec, seed).unwrap());
    ImageRecord {
        image_id: uuid::Uuid::from_u128(u128::from(seed) + 1),
        customer_id: "customer-1".into(),
        source_id: "cam-1".into(),
        created_at: chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap(),
        content_type: format.content_type().into(),
        width: 6,
        height: 4,
        sha256: sha256_hex(&data),
        data,
        reference: None,
    }
}

/// The check of one value, held to the promise: it returns, allocates within the record's
/// means, and ends stored or in a letter that fits.
fn check_value(value: Vec<u8>) -> Result<(), TestCaseError> {
    let c = checker();
    let size = value.len();
    let polled = Polled {
        origin: Origin {
            topic: "fuzz".into(),
            partition: 0,
            offset: 7,
        },
        key: Some(b"key".to_vec()),
        value: Some(Bytes::from(value)),
        headers: vec![],
        timestamp_ms: Some(0),
    };
    LARGEST.with(|l| l.set(0));
    let checked = check_one(&c.codec, &c.schemas, &c.limits, &polled);
    let largest = LARGEST.with(|l| l.get());
    // A decoded value costs a few times its bytes; collections are bounded apart (MAX_ITEMS).
    let allowed = 8 * size + (4 << 20);
    prop_assert!(
        largest <= allowed,
        "an allocation of {largest} bytes for a record of {size}"
    );
    match checked {
        Ok(record) => {
            prop_assert!(imgstream::validate::validate(&record, &c.limits).is_ok());
        }
        Err(refusal) => {
            let message = refusal.message();
            prop_assert!(
                message.len() <= 2048,
                "a reason of {} bytes: {}",
                message.len(),
                &message[..200]
            );
            let letter = DeadLetter::new(&polled, refusal);
            check_letter_fits(&letter, size + 64)?;
        }
    }
    Ok(())
}

/// The letter fits a dead-letter topic that takes what the data topic takes: at least the record
/// that arrived, and never less than the smallest limit `setup` writes (1 KiB images + 64 KiB).
fn check_letter_fits(letter: &DeadLetter, record_size: usize) -> Result<(), TestCaseError> {
    let topic_limit = (record_size + LetterBudget::HEADROOM).max(1024 + (64 << 10));
    let budget = LetterBudget::for_topic(topic_limit);
    let stamp = Stamp {
        group: "fuzz-group",
        at: chrono::Utc::now(),
    };
    let wire = letter.to_wire(stamp, budget);
    prop_assert!(
        wire.size() <= budget.bytes(),
        "a letter of {} bytes for a budget of {}",
        wire.size(),
        budget.bytes()
    );
    let written_code = wire.header(headers::CODE);
    prop_assert_eq!(written_code.as_deref(), Some(letter.refusal.code()));
    let code = letter.refusal.code();
    prop_assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
        "code {code:?}"
    );
    // The check refuses for the bytes only: conflicts are found by the store and the index.
    prop_assert_eq!(letter.refusal.class(), imgstream::pipeline::Class::Invalid);
    Ok(())
}

fn framed(id: u32, datum: &[u8]) -> Vec<u8> {
    imgstream::schema::wire::frame(id, datum)
}

fn cases() -> u32 {
    std::env::var("IMGSTREAM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// One change to a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bits: u8,
    },
    Cut {
        at: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    /// A varint claiming a huge length or count, where a number was.
    Huge {
        at: usize,
        claim: i64,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        any::<usize>().prop_map(|at| Mutation::Cut { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (
            any::<usize>(),
            prop_oneof![
                Just(i64::MAX),
                Just(i64::MIN),
                Just(500_000_000),
                Just(-1),
                any::<i64>()
            ]
        )
            .prop_map(|(at, claim)| Mutation::Huge { at, claim }),
    ]
}

fn zigzag(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        // Past the wire-format header, so the schema id stays one we know.
        let n = bytes.len().saturating_sub(5).max(1);
        match m {
            Mutation::Flip { at, bits } => {
                if let Some(b) = bytes.get_mut(5 + at % n) {
                    *b ^= bits;
                }
            }
            Mutation::Cut { at } => bytes.truncate(5 + at % n),
            Mutation::Insert { at, bytes: ins } => {
                let at = (5 + at % n).min(bytes.len());
                bytes.splice(at..at, ins.iter().copied());
            }
            Mutation::Huge { at, claim } => {
                let at = (5 + at % n).min(bytes.len());
                bytes.splice(at..at, zigzag(*claim));
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_behind_any_schema_id_are_stored_or_refused(
        id in prop_oneof![Just(OURS), Just(NEWER), Just(UNKNOWN)],
        datum in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        check_value(framed(id, &datum))?;
    }

    #[test]
    fn arbitrary_payloads_of_any_length_are_refused_not_read_past(
        payload in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        check_value(payload)?;
    }

    #[test]
    fn valid_records_mutated_are_stored_or_refused(
        seed in 0u64..64,
        newer in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let c = checker();
        let record = valid_record(seed);
        let (schema, id) = if newer { (&c.newer, NEWER) } else { (&c.ours, OURS) };
        let encoded = codec::encode(schema, id, &record).unwrap();
        check_value(apply(encoded, &mutations))?;
    }

    #[test]
    fn a_record_near_its_topics_limit_quoting_a_long_field_gets_a_letter_that_fits(
        seed in 0u64..64,
        field in 0usize..3,
        length in (64usize << 10)..(512 << 10),
        fill in any::<char>(),
    ) {
        let c = checker();
        let mut record = valid_record(seed);
        let long: String = std::iter::repeat_n(fill, length / fill.len_utf8()).collect();
        match field {
            0 => record.content_type = long,
            1 => record.sha256 = long,
            _ => record.source_id = long,
        }
        check_value(codec::encode(&c.ours, OURS, &record).unwrap())?;
    }

    #[test]
    fn records_with_arbitrary_fields_are_stored_or_refused(
        seed in 0u64..64,
        customer_id in any::<String>(),
        source_id in prop_oneof![Just("cam-1".to_string()), any::<String>(), "[a-z]{2000,9000}"],
        content_type in prop_oneof![
            Just("image/png".to_string()), Just("image/png\n".to_string()), any::<String>()
        ],
        micros in any::<i64>(),
        width in any::<u32>(),
        height in any::<u32>(),
        sha256 in prop_oneof![Just(None), any::<String>().prop_map(Some)],
        data in prop_oneof![Just(None), prop::collection::vec(any::<u8>(), 0..64).prop_map(Some)],
    ) {
        let c = checker();
        let mut record = valid_record(seed);
        record.customer_id = customer_id;
        record.source_id = source_id;
        record.content_type = content_type;
        if let Some(at) = chrono::DateTime::from_timestamp_micros(micros) {
            record.created_at = at;
        }
        record.width = width;
        record.height = height;
        if let Some(sha256) = sha256 {
            record.sha256 = sha256;
        }
        if let Some(data) = data {
            record.data = Bytes::from(data);
        }
        check_value(codec::encode(&c.ours, OURS, &record).unwrap())?;
    }
}
