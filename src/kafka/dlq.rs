//! The dead-letter writer: a refused record goes to the DLQ topic with its original key, value and
//! headers, plus headers that say why, so that it can be inspected and replayed. A tombstone stays
//! a tombstone (null value). A letter that would not fit the topic carries a reference instead of
//! the original bytes: [`crate::pipeline::letter`] says which form, against the budget this
//! writer was given from the topic's `max.message.bytes`.

use super::producer::producer_config;
use super::{BrokerError, header_bytes};
use crate::config::{KafkaSettings, LimitSettings};
use crate::pipeline::letter::Stamp;
use crate::pipeline::{
    DeadLetter, DeadLetterSink, Failure, LetterBudget, RecordHeader, WireLetter,
};
use chrono::Utc;
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::warn;

/// Header names on every dead-lettered record (defined with the letter's wire form).
pub use crate::pipeline::letter::headers;

/// A dead letter as read back from the topic.
#[derive(Debug, Clone)]
pub struct StoredLetter {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<RecordHeader>,
}

impl StoredLetter {
    /// A header's value as text. The last one of that name: ours are written after the
    /// original's, so even a letter written before producers' `imgstream.*` headers were renamed
    /// reads imgstream's verdict, not a producer's forgery.
    pub fn header(&self, name: &str) -> Option<String> {
        crate::pipeline::letter::last_header(&self.headers, name)
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
                headers: header_bytes::of_message(&m),
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
    budget: LetterBudget,
}

/// How long one dead letter may take to reach the broker before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

impl DeadLetterWriter {
    /// A writer for a dead-letter topic whose `max.message.bytes` is `topic_max_message_bytes`
    /// (see [`wiring::dead_letters`](crate::wiring::dead_letters) for where it is read).
    pub fn new(
        kafka: &KafkaSettings,
        limits: &LimitSettings,
        topic_max_message_bytes: usize,
    ) -> Result<Self, BrokerError> {
        let budget = LetterBudget::for_topic(topic_max_message_bytes);
        let mut config = producer_config(kafka, limits, "imgstream-dlq");
        config
            // The budget is counted in uncompressed bytes, and images do not compress (snappy can
            // even grow them by a sixth): a letter's size on the wire must be the size counted.
            .set("compression.type", "none")
            // Letters go out up to 16 at a time and librdkafka batches them; the topic's limit
            // applies to the batch. librdkafka adds a letter to a batch only while the batch
            // stays within `batch.size` (the first one always), so no batch outgrows the budget
            // unless a single letter does, which `to_wire` prevents.
            .set("batch.size", budget.bytes().max(1).to_string())
            .set(
                "message.max.bytes",
                topic_max_message_bytes.max(1000).to_string(),
            );
        let producer = config
            .create_with_context(Deliveries)
            .map_err(|e| BrokerError::from_kafka(&e, &kafka.bootstrap_servers))?;
        Ok(DeadLetterWriter {
            producer: Arc::new(producer),
            topic: kafka.dlq_topic.clone(),
            group: kafka.group_id.clone(),
            bootstrap: kafka.bootstrap_servers.clone(),
            budget,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn budget(&self) -> LetterBudget {
        self.budget
    }

    /// Writes one dead letter and waits until the broker has it (acks=all).
    pub async fn send(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        let stamp = Stamp {
            group: &self.group,
            at: Utc::now(),
        };
        let wire = letter.to_wire(stamp, self.budget);
        let failed = |e: KafkaError| BrokerError::from_kafka(&e, &self.bootstrap);
        match self.send_wire(&wire).await {
            // The budget came from the topic's setting as read at start (or, hidden from this
            // identity, from the one `setup` writes); an operator may have lowered it since.
            // Refused as too large, the letter would be refused at every retry and stop the
            // partition: its smallest form, a reference to the original, goes instead.
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                let smallest = letter.to_wire(stamp, LetterBudget::for_topic(0));
                if smallest == wire {
                    return Err(failed(e));
                }
                warn!(
                    origin = %letter.origin,
                    size = wire.size(),
                    budget = self.budget.bytes(),
                    "{} refused a dead letter as too large; writing its reference instead",
                    self.topic
                );
                self.send_wire(&smallest).await.map_err(failed)
            }
            sent => sent.map_err(failed),
        }
    }

    async fn send_wire(&self, wire: &WireLetter) -> Result<(), KafkaError> {
        let (delivered, mut report) = oneshot::channel();
        let mut record: BaseRecord<'_, [u8], [u8], _> =
            BaseRecord::with_opaque_to(&self.topic, Box::new(delivered))
                .headers(header_bytes::owned(&wire.headers));
        if let Some(value) = &wire.value {
            record = record.payload(&value[..]);
        }
        if let Some(key) = &wire.key {
            record = record.key(&key[..]);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                // Only when many letters are queued at once: make room, then try again.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.poll_until_delivered(Duration::from_millis(100)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
        // `message.timeout.ms` bounds the wait: librdkafka reports a timed-out letter as failed.
        self.poll_until_delivered(DELIVERY_TIMEOUT + Duration::from_secs(5))
            .await;
        match report.try_recv() {
            Ok(result) => result,
            Err(oneshot::error::TryRecvError::Empty) => Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            )),
            Err(oneshot::error::TryRecvError::Closed) => Err(KafkaError::Canceled),
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
