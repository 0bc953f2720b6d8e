//! Avro encoding and decoding of image records in the Confluent wire format.
//!
//! Decoding uses the *writer's* schema, fetched from the registry by the id in the header (and
//! cached), resolved against our reader schema: a producer that added an optional field does not
//! break a running consumer.

use super::registry::{RegistryClient, RegistryError};
use super::wire::{self, WireError};
use crate::domain::ImageRecord;
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

/// Encodes with one schema (the one registered for producing) and decodes with any registered one.
pub struct ImageCodec {
    reader: Schema,
    registry: RegistryClient,
    writers: RwLock<HashMap<u32, Arc<Schema>>>,
}

impl ImageCodec {
    pub fn new(reader_schema: &str, registry: RegistryClient) -> Result<Self, EncodeError> {
        let reader =
            Schema::parse_str(reader_schema).map_err(|e| EncodeError::Schema(e.to_string()))?;
        Ok(ImageCodec {
            reader,
            registry,
            writers: RwLock::new(HashMap::new()),
        })
    }

    /// The writer schema for an id: from the cache, or once from the registry.
    pub async fn writer_schema(&self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        if let Some(s) = self.writers.read().expect("schema cache poisoned").get(&id) {
            return Ok(s.clone());
        }
        let text = self.registry.schema_by_id(id).await.map_err(|e| match e {
            RegistryError::NotFound { .. } => DecodeError::UnknownSchema(id),
            other => DecodeError::Registry { id, source: other },
        })?;
        let schema = Arc::new(
            Schema::parse_str(&text).map_err(|e| DecodeError::BadSchema {
                id,
                detail: e.to_string(),
            })?,
        );
        self.writers
            .write()
            .expect("schema cache poisoned")
            .insert(id, schema.clone());
        Ok(schema)
    }

    /// Decodes one Kafka value into a record.
    pub async fn decode(&self, payload: &[u8]) -> Result<ImageRecord, DecodeError> {
        let (id, _) = wire::split(payload)?;
        let writer = self.writer_schema(id).await?;
        self.decode_with(&writer, id, payload)
    }

    /// Decoding once the writer schema is known; synchronous so it can run off the async threads.
    pub fn decode_with(
        &self,
        writer: &Schema,
        id: u32,
        payload: &[u8],
    ) -> Result<ImageRecord, DecodeError> {
        let (_, mut datum) = wire::split(payload)?;
        let value =
            apache_avro::from_avro_datum(writer, &mut datum, Some(&self.reader)).map_err(|e| {
                DecodeError::Avro {
                    id,
                    detail: e.to_string(),
                }
            })?;
        record_from_value(value)
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
        other => return Err(bad("image_id", format!("unexpected {other:?}"))),
    };
    let created_at = match take("created_at")? {
        Value::TimestampMicros(t) | Value::Long(t) => DateTime::<Utc>::from_timestamp_micros(t)
            .ok_or_else(|| bad("created_at", format!("{t} out of range")))?,
        other => return Err(bad("created_at", format!("unexpected {other:?}"))),
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
            other => return Err(bad("data", format!("unexpected {other:?}"))),
        },
    })
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
        other => Err(bad(field, format!("expected a string, got {other:?}"))),
    }
}

fn dimension(value: Value, field: &'static str) -> Result<u32, DecodeError> {
    match value {
        Value::Int(n) if n >= 0 => Ok(n as u32),
        Value::Int(n) => Err(bad(field, format!("{n} is negative"))),
        other => Err(bad(field, format!("expected an int, got {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sha256_hex;
    use crate::schema::IMAGE_RECORD_SCHEMA;
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
        }
    }

    fn codec() -> ImageCodec {
        // The registry is never contacted by decode_with.
        let registry = RegistryClient::new("http://127.0.0.1:1", Duration::from_secs(1)).unwrap();
        ImageCodec::new(IMAGE_RECORD_SCHEMA, registry).unwrap()
    }

    #[test]
    fn a_record_round_trips_through_the_wire_format() {
        let schema = Schema::parse_str(IMAGE_RECORD_SCHEMA).unwrap();
        let record = sample();
        let bytes = encode(&schema, 42, &record).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 42]);
        assert_eq!(codec().decode_with(&schema, 42, &bytes).unwrap(), record);
    }

    #[test]
    fn a_newer_writer_with_an_optional_field_is_still_readable() {
        let mut v2: serde_json::Value = serde_json::from_str(IMAGE_RECORD_SCHEMA).unwrap();
        v2["fields"].as_array_mut().unwrap().push(serde_json::json!(
            {"name": "exposure_ms", "type": ["null", "int"], "default": null}
        ));
        let v2 = Schema::parse_str(&v2.to_string()).unwrap();
        let record = sample();
        let bytes = encode(&v2, 43, &record).unwrap();
        assert_eq!(codec().decode_with(&v2, 43, &bytes).unwrap(), record);
    }

    #[test]
    fn bytes_that_do_not_match_the_schema_are_a_permanent_error() {
        let schema = Schema::parse_str(IMAGE_RECORD_SCHEMA).unwrap();
        let err = codec()
            .decode_with(&schema, 1, &wire::frame(1, b"\x02garbage"))
            .unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(err.code(), "malformed-avro");
    }
}
