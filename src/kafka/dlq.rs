//! The dead-letter writer: a refused record goes to the DLQ topic with its original key and bytes
//! and headers that say why, so that it can be inspected and replayed.

use super::BrokerError;
use super::producer::producer_config;
use crate::config::{KafkaSettings, LimitSettings};
use crate::domain::Origin;
use chrono::Utc;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

/// Header names on every dead-lettered record.
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
}

/// A record refused for good, with why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub origin: Origin,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub original_timestamp_ms: Option<i64>,
    /// Stable short code, e.g. `signature-mismatch`.
    pub code: &'static str,
    /// `invalid` (the bytes are wrong) or `conflict` (the identity is taken by a different image).
    pub class: &'static str,
    pub reason: String,
}

pub struct DeadLetterWriter {
    producer: FutureProducer,
    topic: String,
    group: String,
    bootstrap: String,
}

impl DeadLetterWriter {
    pub fn new(kafka: &KafkaSettings, limits: &LimitSettings) -> Result<Self, BrokerError> {
        let producer = producer_config(kafka, limits, "imgstream-dlq")
            .create()
            .map_err(|e| BrokerError::from_kafka(&e, &kafka.bootstrap_servers))?;
        Ok(DeadLetterWriter {
            producer,
            topic: kafka.dlq_topic.clone(),
            group: kafka.group_id.clone(),
            bootstrap: kafka.bootstrap_servers.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes one dead letter and waits until the broker has it (acks=all).
    pub async fn send(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        let partition = letter.origin.partition.to_string();
        let offset = letter.origin.offset.to_string();
        let original_ts = letter
            .original_timestamp_ms
            .map(|t| t.to_string())
            .unwrap_or_default();
        let now = Utc::now().to_rfc3339();
        let pairs: [(&str, &str); 9] = [
            (headers::REASON, &letter.reason),
            (headers::CODE, letter.code),
            (headers::CLASS, letter.class),
            (headers::ORIGINAL_TOPIC, &letter.origin.topic),
            (headers::ORIGINAL_PARTITION, &partition),
            (headers::ORIGINAL_OFFSET, &offset),
            (headers::ORIGINAL_TIMESTAMP, &original_ts),
            (headers::DEAD_LETTERED_AT, &now),
            (headers::GROUP, &self.group),
        ];
        let mut hs = OwnedHeaders::new_with_capacity(pairs.len());
        for (key, value) in pairs {
            hs = hs.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
            .payload(&letter.payload[..])
            .headers(hs);
        if let Some(key) = &letter.key {
            record = record.key(&key[..]);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| BrokerError::from_kafka(&e, &self.bootstrap))
    }
}
