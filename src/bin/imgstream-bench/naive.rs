//! The naive reference, the way the original Python demo worked: one record at a time — poll,
//! decode, PUT, INSERT, commit — with no batching and no concurrency.

use imgstream::config::Settings;
use imgstream::domain::{IndexEntry, Origin, object_key};
use imgstream::validate::validate;
use imgstream::wiring;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::time::Instant;

/// Stores `records` records of the settings' topic one by one; returns images per second.
pub async fn run(settings: &Settings, records: usize) -> f64 {
    let codec = wiring::codec(settings).unwrap();
    let store = wiring::store(settings).unwrap();
    let index = wiring::index(settings).await.unwrap();
    let limits = wiring::limits(settings);
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .set("group.id", format!("{}-naive", settings.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&settings.kafka.data_topic]).unwrap();
    let mut started = None;
    for _ in 0..records {
        let m = consumer.recv().await.unwrap();
        started.get_or_insert_with(Instant::now);
        let record = codec
            .decode(&bytes::Bytes::copy_from_slice(m.payload().unwrap()))
            .await
            .unwrap();
        validate(&record, &limits).unwrap();
        let key = object_key(&record.image_id);
        store
            .put_image(
                &key,
                record.data.clone(),
                &record.content_type,
                &record.sha256,
            )
            .await
            .unwrap();
        let origin = Origin {
            topic: m.topic().into(),
            partition: m.partition(),
            offset: m.offset(),
        };
        index
            .insert_batch(&[IndexEntry::new(&record, &origin, store.bucket())])
            .await
            .unwrap();
        consumer.commit_message(&m, CommitMode::Sync).unwrap();
    }
    let secs = started.unwrap().elapsed().as_secs_f64();
    index.close().await;
    records as f64 / secs
}
