//! The dead-letter writer: a refused record goes to the DLQ topic with its original key, value and
//! headers, plus headers that say why, so that it can be inspected and replayed. A tombstone stays
//! a tombstone (null value).

use super::BrokerError;
use super::producer::producer_config;
use crate::config::{KafkaSettings, LimitSettings};
use crate::pipeline::{DeadLetter, DeadLetterSink, Failure};
use chrono::Utc;
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

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
    /// Every header of ours starts so; the others are the original record's.
    pub const PREFIX: &str = "imgstream.dlq.";
    /// How many times `imgstream dlq replay` sent this record back; travels with the record.
    pub const REPLAY_COUNT: &str = "imgstream.replay.count";
}

/// A dead letter as read back from the topic.
#[derive(Debug, Clone)]
pub struct StoredLetter {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl StoredLetter {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// The letters of the dead-letter topic up to its end when the read starts: all of them, or with
/// `last`, only the last that many of each partition. Blocking: call it on the blocking pool.
pub fn read_letters(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
    last: Option<i64>,
) -> Result<Vec<StoredLetter>, BrokerError> {
    let failed = |e: KafkaError| BrokerError::Other(format!("reading {topic}: {e}"));
    let partitions = super::partition_ids(consumer, topic, timeout, "the cluster")?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(failed)?;
        let start = last.map_or(low, |n| (high - n.max(1)).max(low));
        if high > start {
            ends.insert(p, high);
            assignment
                .add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(failed)?;
        }
    }
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok(letters);
    }
    consumer.assign(&assignment).map_err(failed)?;
    let deadline = std::time::Instant::now() + timeout * 6;
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(BrokerError::Other(format!(
                "reading {topic}: the end was not reached within {}s",
                (timeout * 6).as_secs()
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = message.map_err(failed)?;
        let partition = m.partition();
        if ends.get(&partition).is_some_and(|end| m.offset() < *end) {
            letters.push(StoredLetter {
                partition,
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m.headers().map_or_else(Vec::new, |hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                }),
            });
        }
        if ends
            .get(&partition)
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            ends.remove(&partition);
        }
    }
    letters.sort_by_key(|l| (l.partition, l.offset));
    Ok(letters)
}

/// Delivery reports go back to the `send` call that is waiting for them.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let _ = waiting.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// Writes dead letters. A plain `BaseProducer`, polled only while a letter is in flight: rdkafka's
/// `FutureProducer` keeps a polling thread that spins through the last sub-millisecond of every
/// 100 ms wait (its timeout is truncated to 0 ms), about 1% of a core for a consumer that is
/// idle or has no bad records, which is nearly always.
pub struct DeadLetterWriter {
    producer: Arc<BaseProducer<Deliveries>>,
    topic: String,
    group: String,
    bootstrap: String,
}

/// How long one dead letter may take to reach the broker before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

impl DeadLetterWriter {
    pub fn new(kafka: &KafkaSettings, limits: &LimitSettings) -> Result<Self, BrokerError> {
        let producer = producer_config(kafka, limits, "imgstream-dlq")
            .create_with_context(Deliveries)
            .map_err(|e| BrokerError::from_kafka(&e, &kafka.bootstrap_servers))?;
        Ok(DeadLetterWriter {
            producer: Arc::new(producer),
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
        let reason = letter.refusal.message();
        let ours: [(&str, &str); 9] = [
            (headers::REASON, &reason),
            (headers::CODE, letter.refusal.code()),
            (headers::CLASS, letter.refusal.class().as_str()),
            (headers::ORIGINAL_TOPIC, &letter.origin.topic),
            (headers::ORIGINAL_PARTITION, &partition),
            (headers::ORIGINAL_OFFSET, &offset),
            (headers::ORIGINAL_TIMESTAMP, &original_ts),
            (headers::DEAD_LETTERED_AT, &now),
            (headers::GROUP, &self.group),
        ];
        // The original headers first, unchanged, so that a replay can send the record back as it
        // came; ours after them.
        let mut hs = OwnedHeaders::new_with_capacity(letter.headers.len() + ours.len());
        for (key, value) in &letter.headers {
            hs = hs.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        for (key, value) in ours {
            hs = hs.insert(Header {
                key,
                value: Some(value),
            });
        }
        let (delivered, mut report) = oneshot::channel();
        let mut record: BaseRecord<'_, [u8], [u8], _> =
            BaseRecord::with_opaque_to(&self.topic, Box::new(delivered)).headers(hs);
        if let Some(value) = &letter.value {
            record = record.payload(&value[..]);
        }
        if let Some(key) = &letter.key {
            record = record.key(&key[..]);
        }
        let failed = |e: KafkaError| BrokerError::from_kafka(&e, &self.bootstrap);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                // Only when many letters are queued at once: make room, then try again.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.poll_until_delivered(Duration::from_millis(100)).await;
                }
                Err((e, _)) => return Err(failed(e)),
            }
        }
        // `message.timeout.ms` bounds the wait: librdkafka reports a timed-out letter as failed.
        self.poll_until_delivered(DELIVERY_TIMEOUT + Duration::from_secs(5))
            .await;
        match report.try_recv() {
            Ok(result) => result.map_err(failed),
            Err(oneshot::error::TryRecvError::Empty) => Err(failed(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            ))),
            Err(oneshot::error::TryRecvError::Closed) => Err(failed(KafkaError::Canceled)),
        }
    }

    /// Serves delivery reports (on the blocking pool: librdkafka's poll blocks) until nothing is
    /// in flight or `limit` has passed.
    async fn poll_until_delivered(&self, limit: Duration) {
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(limit)).await;
    }
}

impl DeadLetterSink for DeadLetterWriter {
    fn send<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            DeadLetterWriter::send(self, letter)
                .await
                .map_err(Failure::from)
        })
    }
}
