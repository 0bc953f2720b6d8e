//! # imgstream
//!
//! Streams images from Apache Kafka into S3-compatible object storage, with an index in PostgreSQL.
//!
//! The pieces, in the order data flows through them:
//!
//! - [`generate`] draws realistic images; [`produce`] sends them as Avro records ([`schema`]) to
//!   the data topic through [`kafka::producer`].
//! - [`pipeline`] is the consumer: it polls batches ([`kafka::consumer`]), decodes them against
//!   the registry ([`schema`]), checks them ([`validate`]), writes each image as one object
//!   ([`store`] — *the* place where an image is written), indexes it in one batched idempotent
//!   statement ([`index`]), sends refused records to the dead-letter topic ([`kafka::dlq`]), and
//!   only then commits offsets.
//! - [`setup`] creates everything the pipeline needs, in code: migrations, topics, bucket, schema.
//! - [`audit`] compares the bucket against the index (`imgstream verify`) and reports lag
//!   (`imgstream status`).
//! - [`config`] reads settings once; [`domain`] holds the record types, free of client libraries.

pub mod audit;
pub mod config;
pub mod domain;
pub mod generate;
pub mod index;
pub mod kafka;

pub mod schema;
pub mod setup;

pub mod pipeline;
pub mod produce;
pub mod shutdown;
pub mod store;
pub mod validate;
