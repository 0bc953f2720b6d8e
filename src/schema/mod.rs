//! The message contract: the Avro schema file, the Confluent wire format, and the registry client.

pub mod bounds;
pub mod codec;
pub mod registry;
pub mod wire;

pub use codec::{DecodeError, EncodeError, ImageCodec};
pub use registry::{RegistryClient, RegistryError, SchemaLookup};

/// The value schema, kept in the repository and compiled into the binary.
pub const IMAGE_RECORD_SCHEMA: &str = include_str!("../../schema/image-record.avsc");

/// The compatibility level set on the value subject. FULL because both sides evolve on their own:
/// a new producer must not break running consumers (forward) and a new consumer must still read the
/// backlog (backward).
pub const SUBJECT_COMPATIBILITY: &str = "FULL";

/// Subject for a topic's values under the default TopicNameStrategy.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}
