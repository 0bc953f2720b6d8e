//! # imgstream
//!
//! Streams images from Apache Kafka into S3-compatible object storage, with an index in PostgreSQL.
//!
//! ## The shape
//!
//! - [`domain`] holds the image record, its metadata and its object key, free of client libraries.
//! - [`pipeline`] is the consumer and the commit protocol. It depends only on its [`pipeline::ports`]
//!   (a record source, an image sink, an index sink, a dead-letter sink) and on [`schema`]'s codec.
//!   Each stage has its own file: fetch, check, upload, index, commit, report; every reason a
//!   record is refused is one [`pipeline::Refusal`].
//! - The adapters implement the ports, one module per external system: [`kafka`] (the source on a
//!   consumer group, the dead-letter writer, also the producer and topic admin), [`store`] (S3 —
//!   *the* place where an image is written), [`index`] (PostgreSQL and its migrations), and
//!   [`schema`] (Avro, the Confluent wire format, the registry client).
//! - [`fakes`] are in-memory twins of the ports with injectable failures; `tests/protocol.rs` runs
//!   the real pipeline on them in seconds, with no service running.
//! - [`wiring`] is the one place where clients are built from [`config::Settings`]: the CLI,
//!   [`setup`], [`audit`], the benchmark and the tests all go through it.
//! - [`generate`] draws realistic images; [`produce`] sends them to the data topic.
//! - [`setup`] creates everything the pipeline needs, in code: migrations, topics, bucket, schema.
//! - [`audit`] compares the bucket with the index (`imgstream verify`) and reports lag
//!   (`imgstream status`); [`monitor`] is the consumer's live status line, [`metrics`] its
//!   Prometheus metrics and health endpoints; [`group_lag`] is `imgstream monitor`, the group's
//!   lag per partition read from the brokers, consumers alive or not.
//! - [`dlq`] lists dead letters and replays the ones whose cause is fixed (`imgstream dlq`).
//! - [`serve`] is `imgstream serve`: the gallery, image pages, the JSON API with presigned URLs,
//!   thumbnails and the pipeline page; [`search`] is what a search asks for and where a page ends.
//! - [`telemetry`] exports traces with OpenTelemetry when the `OTEL_*` variables ask for it: a
//!   span per record from the producer, carried in its `traceparent` header, through the
//!   consumer's stages to the commit.
//! - [`config`] reads settings once; [`shutdown`] turns SIGINT/SIGTERM into one flag.

pub mod audit;
pub mod config;
pub mod dlq;
pub mod domain;
pub mod erase;
#[cfg(any(test, feature = "test-util"))]
pub mod fakes;
pub mod generate;
pub mod group_lag;
pub mod index;
pub mod kafka;
pub mod metrics;
pub mod monitor;
pub mod pipeline;
pub mod produce;
pub mod schema;
pub mod search;
pub mod serve;
pub mod setup;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod validate;
pub mod wiring;
