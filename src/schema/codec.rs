//! Avro encoding and decoding of image records in the Confluent wire format.
//!
//! Decoding uses the *writer's* schema, fetched from the registry by the id in the header (and
//! cached), resolved against our reader schema: a producer that added an optional field does not
//! break a running consumer.

use super::bounds;
use super::registry::{RegistryError, SchemaLookup};
use super::wire::{self, WireError};
use crate::domain::{ImageRecord, ImageReference};
use apache_avro::Schema;
use apache_avro::schema::RecordSchema;
use apache_avro::types::Value;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("schema id {0} is not known to the schema registry")]
    UnknownSchema(u32),
    #[error(
        "schema id {id} is not registered under subject {subject}: only the topic's own schemas are read"
    )]
    ForeignSchema { id: u32, subject: String },
    #[error("cannot fetch schema id {id}: {source}")]
    Registry { id: u32, source: RegistryError },
    #[error("schema id {id} does not parse as Avro: {detail}")]
    BadSchema { id: u32, detail: String },
    #[error("Avro datum does not match schema id {id}: {detail}")]
    Avro { id: u32, detail: String },
    #[error("field {field}: {detail}")]
    Field { field: &'static str, detail: String },
}

impl DecodeError {
    /// Only a registry that cannot be reached is worth waiting for; everything else is in the bytes.
    pub fn is_transient(&self) -> bool {
        matches!(self, DecodeError::Registry { source, .. } if source.is_transient())
    }

    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Wire(WireError::TooShort(_)) => "not-wire-format",
            DecodeError::Wire(WireError::BadMagic(_)) => "bad-magic-byte",
            DecodeError::UnknownSchema(_) => "unknown-schema-id",
            DecodeError::ForeignSchema { .. } => "foreign-schema-id",
            DecodeError::Registry { .. } => "registry-unavailable",
            DecodeError::BadSchema { .. } => "unparseable-schema",
            DecodeError::Avro { .. } => "malformed-avro",
            DecodeError::Field { .. } => "bad-field",
        }
    }
}

#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("the image record schema does not parse: {0}")]
    Schema(String),
    #[error("cannot encode image {image_id}: {detail}")]
    Avro { image_id: Uuid, detail: String },
}

/// A writer schema from the registry, and whether it is exactly the reader schema (the common
/// case, which decodes on the fast path).
pub struct Writer {
    pub schema: Schema,
    pub same_as_reader: bool,
}

/// Decodes with any schema registered under one subject (the data topic's value subject).
pub struct ImageCodec {
    reader: Schema,
    reader_form: String,
    registry: Arc<dyn SchemaLookup>,
    /// Writer schemas are read only when registered under this subject: any other id could name
    /// a schema someone registered elsewhere, shaped to make decoding costly.
    subject: String,
    writers: RwLock<HashMap<u32, Arc<Writer>>>,
}

impl ImageCodec {
    /// A codec that reads with `reader_schema` and looks writer schemas up in `registry`, among
    /// those registered under `subject`.
    pub fn new(
        reader_schema: &str,
        registry: Arc<dyn SchemaLookup>,
        subject: &str,
    ) -> Result<Self, EncodeError> {
        let reader =
            Schema::parse_str(reader_schema).map_err(|e| EncodeError::Schema(e.to_string()))?;
        Ok(ImageCodec {
            reader_form: reader.canonical_form(),
            reader,
            registry,
            subject: subject.to_string(),
            writers: RwLock::new(HashMap::new()),
        })
    }

    /// Wraps a parsed writer schema, noting whether it is the reader schema.
    pub fn writer(&self, schema: Schema) -> Writer {
        Writer {
            same_as_reader: schema.canonical_form() == self.reader_form,
            schema,
        }
    }

    /// The writer schema for an id: from the cache, or once from the registry. Only schemas
    /// registered under the codec's subject are accepted (a refusal is not cached: the schema
    /// may be registered there later).
    pub async fn writer_schema(&self, id: u32) -> Result<Arc<Writer>, DecodeError> {
        if let Some(s) = self.writers.read().expect("schema cache poisoned").get(&id) {
            return Ok(s.clone());
        }
        let unavailable = |source| DecodeError::Registry { id, source };
        let text = self.registry.schema_text(id).await.map_err(|e| match e {
            RegistryError::NotFound { .. } => DecodeError::UnknownSchema(id),
            other => unavailable(other),
        })?;
        let ours = self
            .registry
            .registered_under(&self.subject, &text)
            .await
            .map_err(unavailable)?;
        if !ours {
            return Err(DecodeError::ForeignSchema {
                id,
                subject: self.subject.clone(),
            });
        }
        let schema = Schema::parse_str(&text).map_err(|e| DecodeError::BadSchema {
            id,
            detail: e.to_string(),
        })?;
        let writer = Arc::new(self.writer(schema));
        self.writers
            .write()
            .expect("schema cache poisoned")
            .insert(id, writer.clone());
        Ok(writer)
    }

    /// Decodes one Kafka value into a record.
    pub async fn decode(&self, payload: &Bytes) -> Result<ImageRecord, DecodeError> {
        let (id, _) = wire::split(payload)?;
        let writer = self.writer_schema(id).await?;
        self.decode_with(&writer, id, payload)
    }

    /// Decoding once the writer schema is known; synchronous so it can run off the async threads.
    /// The image bytes of the result share the payload's memory.
    pub fn decode_with(
        &self,
        writer: &Writer,
        id: u32,
        payload: &Bytes,
    ) -> Result<ImageRecord, DecodeError> {
        if writer.same_as_reader {
            return fast::decode(payload.slice(wire::HEADER_LEN.min(payload.len())..), id);
        }
        let (_, mut datum) = wire::split(payload)?;
        let malformed = |detail| DecodeError::Avro { id, detail };
        bounds::check(&writer.schema, datum).map_err(malformed)?;
        let value = apache_avro::from_avro_datum(&writer.schema, &mut datum, Some(&self.reader))
            .map_err(|e| DecodeError::Avro {
                id,
                detail: e.to_string(),
            })?;
        let mut record = record_from_value(value)?;
        // Generic decoding copied the image; when it ends the payload, share that memory instead.
        let n = record.data.len();
        if n > 0 && payload.len() >= n && payload.ends_with(&record.data) {
            record.data = payload.slice(payload.len() - n..);
        }
        Ok(record)
    }
}

/// Reads a record written with exactly the reader schema, field by field in its order, straight
/// from the payload: the image bytes are a slice of it, not a copy. Any other writer schema goes
/// through apache-avro's schema resolution instead.
mod fast {
    use super::DecodeError;
    use crate::domain::{ImageRecord, ImageReference};
    use bytes::Bytes;
    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    struct Reader {
        buf: Bytes,
        pos: usize,
        id: u32,
    }

    impl Reader {
        fn fail(&self, detail: String) -> DecodeError {
            DecodeError::Avro {
                id: self.id,
                detail,
            }
        }

        /// Avro's zig-zag varint long.
        fn long(&mut self) -> Result<i64, DecodeError> {
            let mut value: u64 = 0;
            for shift in (0..64).step_by(7) {
                let Some(&byte) = self.buf.get(self.pos) else {
                    return Err(self.fail("datum ends inside a number".into()));
                };
                self.pos += 1;
                value |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
                }
            }
            Err(self.fail("number longer than 10 bytes".into()))
        }

        fn int(&mut self, field: &'static str) -> Result<i32, DecodeError> {
            let v = self.long()?;
            i32::try_from(v).map_err(|_| self.fail(format!("{field}: {v} does not fit an int")))
        }

        fn bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
            let len = self.long()?;
            let end = usize::try_from(len)
                .ok()
                .and_then(|l| self.pos.checked_add(l))
                .filter(|end| *end <= self.buf.len())
                .ok_or_else(|| self.fail(format!("{field}: length {len} runs past the datum")))?;
            let out = self.buf.slice(self.pos..end);
            self.pos = end;
            Ok(out)
        }

        fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
            let raw = self.bytes(field)?;
            String::from_utf8(raw.to_vec()).map_err(|_| self.fail(format!("{field}: not UTF-8")))
        }
    }

    pub(super) fn decode(datum: Bytes, id: u32) -> Result<ImageRecord, DecodeError> {
        let mut r = Reader {
            buf: datum,
            pos: 0,
            id,
        };
        let image_id = r.string("image_id")?;
        let image_id = Uuid::parse_str(&image_id).map_err(|e| DecodeError::Field {
            field: "image_id",
            detail: e.to_string(),
        })?;
        let customer_id = r.string("customer_id")?;
        let source_id = r.string("source_id")?;
        let micros = r.long()?;
        let created_at =
            DateTime::<Utc>::from_timestamp_micros(micros).ok_or(DecodeError::Field {
                field: "created_at",
                detail: format!("{micros} out of range"),
            })?;
        let content_type = r.string("content_type")?;
        let width = r.int("width")?;
        let height = r.int("height")?;
        let sha256 = r.string("sha256")?;
        let data = r.bytes("data")?;
        // The union ["null", ImageReference]: branch 0 or 1, nothing else.
        let reference = match r.long()? {
            0 => None,
            1 => {
                let key = r.string("reference.key")?;
                let size = r.long()?;
                let sha256 = r.string("reference.sha256")?;
                let size = u64::try_from(size).map_err(|_| DecodeError::Field {
                    field: "reference.size",
                    detail: format!("{size} is negative"),
                })?;
                Some(ImageReference { key, size, sha256 })
            }
            n => return Err(r.fail(format!("reference: union branch {n} does not exist"))),
        };
        if r.pos != r.buf.len() {
            return Err(r.fail(format!(
                "{} bytes left after the record",
                r.buf.len() - r.pos
            )));
        }
        let dimension = |v: i32, field: &'static str| {
            u32::try_from(v).map_err(|_| DecodeError::Field {
                field,
                detail: format!("{v} is negative"),
            })
        };
        Ok(ImageRecord {
            image_id,
            customer_id,
            source_id,
            created_at,
            content_type,
            width: dimension(width, "width")?,
            height: dimension(height, "height")?,
            sha256,
            data,
            reference,
        })
    }
}

/// Encodes a record with `schema` (any version of the contract: fields we do not know take their
/// declared default) and frames it for `schema_id`.
pub fn encode(
    schema: &Schema,
    schema_id: u32,
    record: &ImageRecord,
) -> Result<Vec<u8>, EncodeError> {
    let fail = |detail: String| EncodeError::Avro {
        image_id: record.image_id,
        detail,
    };
    let Schema::Record(RecordSchema { fields, .. }) = schema else {
        return Err(EncodeError::Schema(
            "the top-level schema is not a record".into(),
        ));
    };
    let mut values = Vec::with_capacity(fields.len());
    for field in fields {
        let value = match field.name.as_str() {
            "image_id" => Value::Uuid(record.image_id),
            "customer_id" => Value::String(record.customer_id.clone()),
            "source_id" => Value::String(record.source_id.clone()),
            "created_at" => Value::TimestampMicros(record.created_at.timestamp_micros()),
            "content_type" => Value::String(record.content_type.clone()),
            "width" => Value::Int(record.width as i32),
            "height" => Value::Int(record.height as i32),
            "sha256" => Value::String(record.sha256.clone()),
            "data" => Value::Bytes(record.data.to_vec()),
            "reference" => match &record.reference {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(r) => Value::Union(
                    1,
                    Box::new(Value::Record(vec![
                        ("key".into(), Value::String(r.key.clone())),
                        ("size".into(), Value::Long(r.size as i64)),
                        ("sha256".into(), Value::String(r.sha256.clone())),
                    ])),
                ),
            },
            other => {
                let default = field.default.clone().ok_or_else(|| {
                    fail(format!(
                        "schema field {other:?} has no default and imgstream has no value for it"
                    ))
                })?;
                Value::from(default)
                    .resolve(&field.schema)
                    .map_err(|e| fail(format!("default of field {other:?}: {e}")))?
            }
        };
        values.push((field.name.clone(), value));
    }
    let datum = apache_avro::to_avro_datum(schema, Value::Record(values))
        .map_err(|e| fail(e.to_string()))?;
    Ok(wire::frame(schema_id, &datum))
}

fn record_from_value(value: Value) -> Result<ImageRecord, DecodeError> {
    let Value::Record(fields) = value else {
        return Err(DecodeError::Field {
            field: "<record>",
            detail: "top-level value is not a record".into(),
        });
    };
    let mut fields: HashMap<String, Value> = fields.into_iter().collect();
    let mut take = |name: &'static str| {
        fields.remove(name).ok_or(DecodeError::Field {
            field: name,
            detail: "missing".into(),
        })
    };
    let image_id = match take("image_id")? {
        Value::Uuid(u) => u,
        Value::String(s) => Uuid::parse_str(&s).map_err(|e| bad("image_id", e))?,
        other => return Err(bad("image_id", format!("unexpected {}", kind(&other)))),
    };
    let created_at = match take("created_at")? {
        Value::TimestampMicros(t) | Value::Long(t) => DateTime::<Utc>::from_timestamp_micros(t)
            .ok_or_else(|| bad("created_at", format!("{t} out of range")))?,
        other => return Err(bad("created_at", format!("unexpected {}", kind(&other)))),
    };
    Ok(ImageRecord {
        image_id,
        customer_id: string(take("customer_id")?, "customer_id")?,
        source_id: string(take("source_id")?, "source_id")?,
        created_at,
        content_type: string(take("content_type")?, "content_type")?,
        width: dimension(take("width")?, "width")?,
        height: dimension(take("height")?, "height")?,
        sha256: string(take("sha256")?, "sha256")?,
        data: match take("data")? {
            Value::Bytes(b) => Bytes::from(b),
            other => return Err(bad("data", format!("unexpected {}", kind(&other)))),
        },
        // A writer without the field: the reader's default, null.
        reference: match fields.remove("reference") {
            None => None,
            Some(value) => reference_from_value(value)?,
        },
    })
}

fn reference_from_value(value: Value) -> Result<Option<ImageReference>, DecodeError> {
    let value = match value {
        Value::Union(_, inner) => *inner,
        other => other,
    };
    let fields = match value {
        Value::Null => return Ok(None),
        Value::Record(fields) => fields,
        other => return Err(bad("reference", format!("unexpected {}", kind(&other)))),
    };
    let mut fields: HashMap<String, Value> = fields.into_iter().collect();
    let mut take = |name: &'static str| {
        fields.remove(name).ok_or(DecodeError::Field {
            field: name,
            detail: "missing".into(),
        })
    };
    let size = match take("size")? {
        Value::Long(n) if n >= 0 => n as u64,
        Value::Int(n) if n >= 0 => n as u64,
        other => {
            return Err(bad(
                "reference.size",
                format!("unexpected {}", kind(&other)),
            ));
        }
    };
    Ok(Some(ImageReference {
        key: string(take("key")?, "reference.key")?,
        size,
        sha256: string(take("sha256")?, "reference.sha256")?,
    }))
}

fn bad(field: &'static str, detail: impl ToString) -> DecodeError {
    DecodeError::Field {
        field,
        detail: detail.to_string(),
    }
}

fn string(value: Value, field: &'static str) -> Result<String, DecodeError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(bad(
            field,
            format!("expected a string, got {}", kind(&other)),
        )),
    }
}

fn dimension(value: Value, field: &'static str) -> Result<u32, DecodeError> {
    match value {
        Value::Int(n) if n >= 0 => Ok(n as u32),
        Value::Int(n) => Err(bad(field, format!("{n} is negative"))),
        other => Err(bad(field, format!("expected an int, got {}", kind(&other)))),
    }
}

/// What kind of value a field holds, for a refusal: never the value itself, which a writer
/// controls and which may be megabytes long.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Boolean(_) => "a boolean",
        Value::Int(_) => "an int",
        Value::Long(_) => "a long",
        Value::Float(_) | Value::Double(_) => "a floating-point number",
        Value::Bytes(_) | Value::Fixed(..) => "bytes",
        Value::String(_) => "a string",
        Value::Enum(..) => "an enum symbol",
        Value::Union(..) => "a union",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Record(_) => "a record",
        _ => "a logical-type value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sha256_hex;
    use crate::schema::IMAGE_RECORD_SCHEMA;
    use crate::schema::RegistryClient;
    use std::time::Duration;

    fn sample() -> ImageRecord {
        let data = Bytes::from_static(b"\x89PNG\r\n\x1a\nnot really");
        ImageRecord {
            image_id: Uuid::new_v4(),
            customer_id: "c-7".into(),
            source_id: "cam-3".into(),
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            content_type: "image/png".into(),
            width: 640,
            height: 480,
            sha256: sha256_hex(&data),
            data,
            reference: None,
        }
    }

    fn codec() -> ImageCodec {
        // The registry is never contacted by decode_with.
        let registry = RegistryClient::new("http://127.0.0.1:1", Duration::from_secs(1)).unwrap();
        ImageCodec::new(IMAGE_RECORD_SCHEMA, Arc::new(registry), "images-value").unwrap()
    }

    #[test]
    fn a_record_round_trips_through_the_wire_format() {
        let schema = Schema::parse_str(IMAGE_RECORD_SCHEMA).unwrap();
        let record = sample();
        let bytes = Bytes::from(encode(&schema, 42, &record).unwrap());
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 42]);
        let codec = codec();
        let writer = codec.writer(schema);
        assert!(
            writer.same_as_reader,
            "the fast path applies to our own schema"
        );
        assert_eq!(codec.decode_with(&writer, 42, &bytes).unwrap(), record);
        // The generic path reads the same record.
        let generic = Writer {
            same_as_reader: false,
            ..writer
        };
        assert_eq!(codec.decode_with(&generic, 42, &bytes).unwrap(), record);
    }

    #[test]
    fn a_reference_record_round_trips_on_both_paths() {
        let schema = Schema::parse_str(IMAGE_RECORD_SCHEMA).unwrap();
        let mut record = sample();
        record.reference = Some(ImageReference {
            key: format!("images/ab/{}", record.image_id),
            size: 64 << 20,
            sha256: record.sha256.clone(),
        });
        record.data = Bytes::new();
        let bytes = Bytes::from(encode(&schema, 42, &record).unwrap());
        let codec = codec();
        let writer = codec.writer(schema);
        assert_eq!(codec.decode_with(&writer, 42, &bytes).unwrap(), record);
        let generic = Writer {
            same_as_reader: false,
            ..writer
        };
        assert_eq!(codec.decode_with(&generic, 42, &bytes).unwrap(), record);
    }

    #[test]
    fn a_record_written_before_references_existed_reads_as_inline() {
        // The schema as it was: without the reference field.
        let mut v1: serde_json::Value = serde_json::from_str(IMAGE_RECORD_SCHEMA).unwrap();
        v1["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "reference");
        let v1 = Schema::parse_str(&v1.to_string()).unwrap();
        let record = sample();
        let bytes = Bytes::from(encode(&v1, 41, &record).unwrap());
        let codec = codec();
        let writer = codec.writer(v1);
        assert!(!writer.same_as_reader);
        assert_eq!(codec.decode_with(&writer, 41, &bytes).unwrap(), record);
    }

    #[test]
    fn a_newer_writer_with_an_optional_field_is_still_readable() {
        let mut v2: serde_json::Value = serde_json::from_str(IMAGE_RECORD_SCHEMA).unwrap();
        v2["fields"].as_array_mut().unwrap().push(serde_json::json!(
            {"name": "exposure_ms", "type": ["null", "int"], "default": null}
        ));
        let v2 = Schema::parse_str(&v2.to_string()).unwrap();
        let record = sample();
        let bytes = Bytes::from(encode(&v2, 43, &record).unwrap());
        let codec = codec();
        let writer = codec.writer(v2);
        assert!(!writer.same_as_reader);
        assert_eq!(codec.decode_with(&writer, 43, &bytes).unwrap(), record);
    }

    #[test]
    fn bytes_that_do_not_match_the_schema_are_a_permanent_error() {
        let schema = Schema::parse_str(IMAGE_RECORD_SCHEMA).unwrap();
        let codec = codec();
        for same_as_reader in [true, false] {
            let writer = Writer {
                schema: schema.clone(),
                same_as_reader,
            };
            let err = codec
                .decode_with(&writer, 1, &Bytes::from(wire::frame(1, b"\x02garbage")))
                .unwrap_err();
            assert!(!err.is_transient());
            assert!(
                ["malformed-avro", "bad-field"].contains(&err.code()),
                "fast path {same_as_reader}: {err}"
            );
        }
    }

    #[test]
    fn a_truncated_record_is_refused_not_read_past_its_end() {
        let schema = Schema::parse_str(IMAGE_RECORD_SCHEMA).unwrap();
        let bytes = encode(&schema, 7, &sample()).unwrap();
        let codec = codec();
        let writer = codec.writer(schema);
        for cut in [6, 20, bytes.len() - 1] {
            let err = codec
                .decode_with(&writer, 7, &Bytes::copy_from_slice(&bytes[..cut]))
                .unwrap_err();
            assert_eq!(err.code(), "malformed-avro", "cut at {cut}: {err}");
        }
    }

    /// Our schema with one more field appended: an optional array of longs, empty by default.
    fn schema_with_tags() -> Schema {
        let mut v2: serde_json::Value = serde_json::from_str(IMAGE_RECORD_SCHEMA).unwrap();
        v2["fields"].as_array_mut().unwrap().push(serde_json::json!(
            {"name": "tags", "type": {"type": "array", "items": "long"}, "default": []}
        ));
        Schema::parse_str(&v2.to_string()).unwrap()
    }

    #[test]
    fn an_array_claiming_500_million_elements_is_refused_not_allocated() {
        let v2 = schema_with_tags();
        let mut bytes = encode(&v2, 43, &sample()).unwrap();
        // The empty array is the datum's last byte (a block count of 0): claim 500 million longs.
        assert_eq!(bytes.pop(), Some(0));
        bytes.extend_from_slice(&[0x80, 0x94, 0xeb, 0xdc, 0x03]); // zig-zag 500,000,000
        bytes.extend_from_slice(&[2, 4, 6, 0]);
        let codec = codec();
        let writer = codec.writer(v2);
        let err = codec
            .decode_with(&writer, 43, &Bytes::from(bytes))
            .unwrap_err();
        assert_eq!(err.code(), "malformed-avro");
        assert!(err.to_string().contains("65536 elements"), "{err}");
    }

    #[tokio::test]
    async fn only_writer_schemas_registered_under_the_topics_subject_are_read() {
        use crate::fakes::MemorySchemas;
        let foreign = schema_with_tags().canonical_form();
        let schemas = MemorySchemas::with(&[(1, IMAGE_RECORD_SCHEMA)]).with_foreign(9, &foreign);
        let codec =
            ImageCodec::new(IMAGE_RECORD_SCHEMA, Arc::new(schemas), "images-value").unwrap();
        assert!(codec.writer_schema(1).await.is_ok());
        let err = codec
            .writer_schema(9)
            .await
            .err()
            .expect("foreign id refused");
        assert_eq!(err.code(), "foreign-schema-id");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("images-value"), "{err}");
    }
}
