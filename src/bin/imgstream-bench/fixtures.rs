//! What the measurements run on: images close to a target size, and a topic preloaded with
//! records of them (at a rate, for the latency runs).

use imgstream::config::Settings;
use imgstream::domain::{ImageFormat, ImageRecord, sha256_hex};
use imgstream::generate::{ImageSpec, render};
use imgstream::schema::{IMAGE_RECORD_SCHEMA, codec, value_subject};
use imgstream::wiring;
use std::time::{Duration, Instant};

/// How long the bench's own clients wait for Kafka.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Images close to the target size: dimensions scaled from one trial render.
pub fn image_pool(target: usize, format: ImageFormat, n: usize) -> Vec<(ImageSpec, Vec<u8>)> {
    let mut side = 256u32;
    for _ in 0..4 {
        let bytes = render(
            &ImageSpec {
                width: side,
                height: side * 3 / 4,
                format,
            },
            1,
        )
        .unwrap()
        .len();
        let scale = (target as f64 / bytes as f64).sqrt();
        side = ((side as f64 * scale) as u32).clamp(16, 8192);
        if (0.9..1.1).contains(&scale) {
            break;
        }
    }
    let spec = ImageSpec {
        width: side,
        height: side * 3 / 4,
        format,
    };
    (0..n as u64)
        .map(|seed| (spec, render(&spec, seed + 100).unwrap()))
        .collect()
}

/// What producing the records came to: their rate, and how long each waited for its
/// acknowledgement from Kafka (seconds, sorted): the producer's share of the pipeline's latency.
pub struct Preloaded {
    pub records_per_sec: f64,
    pub ack_secs: Vec<f64>,
    /// From the first record sent to the last acknowledged.
    pub elapsed_secs: f64,
}

/// Produces `count` records of pooled images with fresh ids, at `rate` per second if given.
pub async fn preload(
    settings: &Settings,
    pool: &[(ImageSpec, Vec<u8>)],
    count: usize,
    rate: Option<f64>,
) -> Preloaded {
    preload_while(settings, pool, rate, |i| i < count).await
}

/// Produces records of pooled images with fresh ids, at `rate` per second if given, for as
/// long as `more(records so far)` says: a run that lasts as long as something else does.
pub async fn preload_while(
    settings: &Settings,
    pool: &[(ImageSpec, Vec<u8>)],
    rate: Option<f64>,
    more: impl Fn(usize) -> bool,
) -> Preloaded {
    let registry = wiring::registry(settings).unwrap();
    let schema_id = registry
        .register(
            &value_subject(&settings.kafka.data_topic),
            IMAGE_RECORD_SCHEMA,
        )
        .await
        .unwrap();
    let schema = apache_avro::Schema::parse_str(IMAGE_RECORD_SCHEMA).unwrap();
    let producer = wiring::producer(settings).unwrap();
    // Records are timestamped from here on: the client's start-up is not the pipeline's latency.
    producer.warm_up(TIMEOUT).await.unwrap();
    let shas: Vec<String> = pool.iter().map(|(_, d)| sha256_hex(d)).collect();
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut ack_secs = Vec::new();
    let mut i = 0;
    while more(i) {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let (spec, data) = &pool[i % pool.len()];
        let record = ImageRecord {
            image_id: uuid::Uuid::new_v4(),
            customer_id: "bench".into(),
            source_id: format!("cam-{}", i % 64),
            created_at: chrono::Utc::now(),
            content_type: spec.format.content_type().into(),
            width: spec.width,
            height: spec.height,
            sha256: shas[i % pool.len()].clone(),
            data: bytes::Bytes::from(data.clone()),
            reference: None,
        };
        let payload = codec::encode(&schema, schema_id, &record).unwrap();
        let delivery = producer
            .enqueue(
                &record.source_id,
                &payload,
                record.created_at.timestamp_millis(),
            )
            .await
            .unwrap();
        let enqueued = Instant::now();
        // A task of its own, so the acknowledgement is timed when it arrives, not when this
        // loop next looks.
        pending.push(tokio::spawn(async move {
            delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
            enqueued.elapsed().as_secs_f64()
        }));
        while pending.len() > 2000 {
            use futures::StreamExt;
            ack_secs.push(pending.next().await.unwrap().unwrap());
        }
        i += 1;
    }
    use futures::StreamExt;
    while let Some(waited) = pending.next().await {
        ack_secs.push(waited.unwrap());
    }
    ack_secs.sort_by(f64::total_cmp);
    let elapsed_secs = started.elapsed().as_secs_f64();
    Preloaded {
        records_per_sec: i as f64 / elapsed_secs,
        ack_secs,
        elapsed_secs,
    }
}
