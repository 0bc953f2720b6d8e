//! The machine's own ceilings, measured in the same run as the pipeline: a raw Kafka consume
//! and raw concurrent PUTs, each with nothing else in the way.

use crate::fixtures::TIMEOUT;
use imgstream::config::Settings;
use imgstream::domain::{object_key, sha256_hex};
use imgstream::generate::ImageSpec;
use imgstream::wiring;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use std::time::{Duration, Instant};

/// Raw consume of the whole topic: records/s and MB/s with no processing at all.
pub fn kafka_ceiling(settings: &Settings, expected: usize) -> (f64, f64) {
    let fetch = imgstream::kafka::consumer::FetchSettings::default();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .set("group.id", format!("{}-raw", settings.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set(
            "queued.max.messages.kbytes",
            fetch.queued_max_kbytes.to_string(),
        )
        .set(
            "fetch.queue.backoff.ms",
            fetch.fetch_queue_backoff_ms.to_string(),
        )
        .set("fetch.max.bytes", fetch.fetch_max_bytes.to_string())
        .set(
            "max.partition.fetch.bytes",
            fetch.max_partition_fetch_bytes.to_string(),
        )
        .create()
        .unwrap();
    let topic = &settings.kafka.data_topic;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut n, mut bytes) = (0usize, 0usize);
    let mut started = None;
    while n < expected {
        if let Some(Ok(m)) = consumer.poll(Duration::from_secs(5)) {
            started.get_or_insert_with(Instant::now);
            n += 1;
            bytes += m.payload().map_or(0, <[u8]>::len);
        }
    }
    let secs = started.unwrap().elapsed().as_secs_f64();
    (n as f64 / secs, bytes as f64 / secs / 1e6)
}

/// Raw concurrent PUTs, same client and concurrency as the consumer: objects/s and MB/s.
pub async fn store_ceiling(
    settings: &Settings,
    pool: &[(ImageSpec, Vec<u8>)],
    puts: usize,
    concurrency: usize,
) -> (f64, f64) {
    use futures::StreamExt;
    let store = wiring::store(settings).unwrap();
    let payloads: Vec<(bytes::Bytes, String)> = pool
        .iter()
        .map(|(_, d)| (bytes::Bytes::from(d.clone()), sha256_hex(d)))
        .collect();
    let started = Instant::now();
    let bytes: usize = futures::stream::iter(0..puts)
        .map(|i| {
            let (data, sha) = payloads[i % payloads.len()].clone();
            let store = &store;
            async move {
                let key = format!("ceiling/{}", object_key(&uuid::Uuid::new_v4()));
                store
                    .put_image(&key, data.clone(), "image/jpeg", &sha)
                    .await
                    .unwrap();
                data.len()
            }
        })
        .buffer_unordered(concurrency)
        .fold(0, |a, b| async move { a + b })
        .await;
    let secs = started.elapsed().as_secs_f64();
    (puts as f64 / secs, bytes as f64 / secs / 1e6)
}
