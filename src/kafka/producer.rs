//! The image producer: librdkafka's idempotent producer, every delivery report checked.

use super::{BrokerError, base_config, quiet};
use crate::config::{KafkaSettings, LimitSettings};
use crate::pipeline::RecordHeader;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::time::Duration;

pub struct ImageProducer {
    producer: FutureProducer,
    topic: String,
    bootstrap: String,
}

/// Producer settings tuned for multi-hundred-KiB image records.
pub fn producer_config(
    kafka: &KafkaSettings,
    limits: &LimitSettings,
    client_id: &str,
) -> rdkafka::ClientConfig {
    let mut config = base_config(kafka, client_id);
    quiet(&mut config)
        // Exactly-once per partition from the producer's side: retries never duplicate or reorder.
        .set("enable.idempotence", "true")
        // Java's partitioner (murmur2 of the key; a record without a key goes to a random
        // partition): a key lands in the partition a Java producer would put it in, so records
        // of one key from both stay in one partition, in order. librdkafka's default (CRC32)
        // does not, and it spread the demo's 16 sources over 5 of 6 partitions.
        .set("partitioner", "murmur2_random")
        .set("acks", "all")
        // Images are already compressed (PNG deflate, JPEG, WebP). Measured on 300 generated images
        // (scripts/measure-compression.sh): lz4 and snappy saved 0.0% of the broker's disk, gzip
        // 0.7% at less than half the produce rate. So none, unless KAFKA_COMPRESSION_TYPE says so.
        .set("compression.type", &kafka.compression)
        .set("linger.ms", "5")
        // No batch larger than the topic takes (`max.message.bytes`, which `setup` sizes from
        // IMGSTREAM_INLINE_MAX_BYTES; 1 MiB by default): at 4 MB, records piled up behind a slow
        // broker left as one batch the broker refused whole (MessageSizeTooLarge, tests/network.rs).
        // A single record that fits the topic always goes: librdkafka applies the bound after a
        // batch's first record.
        .set("batch.size", limits.max_message_bytes().to_string())
        .set(
            "message.max.bytes",
            (limits.max_message_bytes() + 1024).to_string(),
        )
        // Bounded memory: send() waits (QueueFull) rather than buffering more than this.
        .set("queue.buffering.max.kbytes", "262144")
        // A record that cannot be delivered within this time is reported as failed, not retried
        // forever. Two minutes: at 30 s, records sent while the network to the broker was capped
        // and then black-holed for 15 s timed out (tests/network.rs); librdkafka retries within
        // this bound, idempotently.
        .set("message.timeout.ms", "120000");
    config
}

impl ImageProducer {
    pub fn new(kafka: &KafkaSettings, limits: &LimitSettings) -> Result<Self, BrokerError> {
        let producer = producer_config(kafka, limits, "imgstream-producer")
            .create()
            .map_err(|e| BrokerError::from_kafka(&e, &kafka.bootstrap_servers))?;
        Ok(ImageProducer {
            producer,
            topic: kafka.data_topic.clone(),
            bootstrap: kafka.bootstrap_servers.clone(),
        })
    }

    /// Connects, learns the topic's partition leaders and gets the producer id now, so the first
    /// record does not wait for the client's start-up.
    ///
    /// An idempotent librdkafka producer (2.12) sends nothing before it has a producer id. It asks
    /// for one when a metadata answer arrives or when its retry timer fires, 500 ms after start,
    /// and only from a broker that is up. The first metadata answer comes over the bootstrap
    /// connection, which librdkafka drops once it has learnt the real brokers ("No brokers
    /// available for Idempotent producer" in its `eos` log): the id then waited for the timer,
    /// and so did every record of the first half second (the broker's request log showed
    /// InitProducerId 450-470 ms after the connection, in 3 of 4 starts). A second metadata
    /// request goes over a learnt broker's connection, and its answer asks for the id at once.
    pub async fn warm_up(&self, timeout: Duration) -> Result<(), BrokerError> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..2 {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), Timeout::After(timeout))?;
            }
            Ok(())
        })
        .await
        .expect("metadata fetch does not panic")
        .map_err(|e| BrokerError::from_kafka(&e, &self.bootstrap))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Enqueues one record; the returned future resolves with its delivery report.
    /// Waits while librdkafka's queue is full instead of failing.
    pub async fn enqueue(
        &self,
        key: &str,
        payload: &[u8],
        timestamp_ms: i64,
    ) -> Result<DeliveryFuture, BrokerError> {
        self.enqueue_with(key, payload, timestamp_ms, &[]).await
    }

    /// [`ImageProducer::enqueue`] with headers (the trace context); none is written when
    /// `headers` is empty.
    pub async fn enqueue_with(
        &self,
        key: &str,
        payload: &[u8],
        timestamp_ms: i64,
        headers: &[(&str, String)],
    ) -> Result<DeliveryFuture, BrokerError> {
        let owned = (!headers.is_empty()).then(|| {
            headers.iter().fold(
                OwnedHeaders::new_with_capacity(headers.len()),
                |hs, (k, v)| {
                    hs.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    })
                },
            )
        });
        loop {
            let mut record = FutureRecord::to(&self.topic)
                .key(key)
                .payload(payload)
                .timestamp(timestamp_ms);
            if let Some(owned) = &owned {
                record = record.headers(owned.clone());
            }
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(BrokerError::from_kafka(&e, &self.bootstrap)),
            }
        }
    }

    /// Sends one record exactly as given (a replayed dead letter) and waits for the broker.
    pub async fn send_as_is(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader],
    ) -> Result<(), BrokerError> {
        // Keys as bytes: a replayed record keeps a key that is not UTF-8 as it came.
        let hs = super::header_bytes::owned(headers);
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(hs);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| BrokerError::from_kafka(&e, &self.bootstrap))
    }

    /// Waits for everything in flight, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), BrokerError> {
        self.producer
            .flush(Timeout::After(timeout))
            .map_err(|e| BrokerError::from_kafka(&e, &self.bootstrap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn no_batch_outgrows_what_the_topic_takes() {
        for inline in ["1032192", "65536", "10485760"] {
            let vars = crate::config::tests::vars(&[("IMGSTREAM_INLINE_MAX_BYTES", inline)]);
            let settings = Settings::from_vars(&vars).unwrap();
            let config = producer_config(&settings.kafka, &settings.limits, "test");
            let batch: usize = config.get("batch.size").unwrap().parse().unwrap();
            // What `setup` gives the topic as `max.message.bytes`.
            assert_eq!(
                batch,
                settings.limits.max_message_bytes(),
                "inline {inline}"
            );
        }
    }
}
