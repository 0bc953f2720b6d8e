//! The 32 MiB case: images 32 times what a topic at Kafka's default carries, through the claim
//! check. The real `imgstream produce` makes them and uploads them to the bucket in parts while
//! they are made; its upload rate is set against raw PUTs of objects of the same size (the
//! independent ceiling, with as many in flight as the producer's parts), and the real consumer,
//! whose work per image is a check of the object and an insert, drains what it sent. Peak RSS of
//! both: each should stay under 256 MiB, whatever the images' size.

use crate::ceilings::store_ceiling;
use crate::control::{
    binary, case_settings, cleanup, fresh_database, run_consumers, settle_disk, setup,
};
use crate::fixtures::image_pool;
use imgstream::domain::ImageFormat;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Command, Stdio};

pub const LABEL: &str = "32MiB";
const TARGET_BYTES: usize = 32 << 20;
/// The producer's parts in flight (src/produce.rs): the ceiling PUTs as many at once.
const PUTS_IN_FLIGHT: usize = 2;

pub async fn bench_large(base: &HashMap<String, String>, run: &str, quick: bool) -> Value {
    let images = if quick { 3 } else { 30 };
    let name = format!("bench-32mib-{run}");
    let mut base = base.clone();
    // Topics as a broker's defaults leave them (1 MiB): every image goes through the bucket.
    base.insert(
        "IMGSTREAM_INLINE_MAX_BYTES".into(),
        imgstream::config::DEFAULT_INLINE_MAX_BYTES.to_string(),
    );
    let (settings, vars) = case_settings(&base, &name, "imgstream_bench", 6);
    fresh_database(&settings).await;
    setup(&settings).await;

    eprintln!("[{LABEL}] sizing images");
    // Two images of the size: the ceiling's objects, and the dimensions the producer draws.
    let pool = image_pool(TARGET_BYTES, ImageFormat::Png, 2);
    let spec = pool[0].0;
    let image_bytes = pool.iter().map(|(_, d)| d.len()).sum::<usize>() / pool.len();

    eprintln!(
        "[{LABEL}] producing {images} images of {}x{} ({:.1} MiB)",
        spec.width,
        spec.height,
        image_bytes as f64 / (1 << 20) as f64
    );
    settle_disk();
    let (width, height, count) = (
        spec.width.to_string(),
        spec.height.to_string(),
        images.to_string(),
    );
    let produced = Command::new(binary())
        .args(["produce", "--count", &count, "--json", "--format", "png"])
        .args(["--width", &width, "--height", &height, "--key", "image"])
        .env_clear()
        .envs(&vars)
        .env("IMGSTREAM_LOG", crate::control::consumer_log())
        .stdout(Stdio::piped())
        .output()
        .expect("spawn producer");
    assert!(produced.status.success(), "producer failed");
    let producer: Value =
        serde_json::from_slice(&produced.stdout).expect("produce --json prints a summary");
    assert_eq!(producer["uploaded"], images, "{producer}");
    let producer_secs = producer["elapsed_secs"].as_f64().unwrap();
    let producer_bytes = producer["bytes_delivered"].as_f64().unwrap();
    let producer_ips = images as f64 / producer_secs;

    eprintln!("[{LABEL}] PUT ceiling");
    settle_disk();
    let (put_ops, put_mbps) = store_ceiling(&settings, &pool, images.max(4), PUTS_IN_FLIGHT).await;

    eprintln!("[{LABEL}] consumer drain");
    settle_disk();
    let max = images.to_string();
    let (summaries, services) = run_consumers(&vars, 1, &["--max", &max]);
    let consumer = summaries.into_iter().next().expect("one consumer");
    assert_eq!(
        consumer.stored as usize, images,
        "consumer stored {} of {images}",
        consumer.stored
    );
    cleanup(&settings).await;

    let producer_rss = producer["peak_rss_kib"].as_f64().unwrap() / 1024.0;
    let consumer_rss = consumer.peak_rss_kib as f64 / 1024.0;
    json!({
        "size": LABEL,
        "images": images,
        "width": spec.width,
        "height": spec.height,
        "image_bytes_avg": producer_bytes / images as f64,
        "producer": {
            "images_per_sec": producer_ips,
            "mb_per_sec": producer_bytes / producer_secs / 1e6,
            "peak_rss_mib": producer_rss,
            "note": "drawing and encoding each image is part of the producer's time",
        },
        "ceiling": {
            "put_objects_per_sec": put_ops,
            "put_mb_per_sec": put_mbps,
            "put_concurrency": PUTS_IN_FLIGHT,
        },
        "consumer": {
            "images_per_sec": consumer.busy_images_per_sec,
            "mb_per_sec": consumer.busy_mb_per_sec,
            "peak_rss_mib": consumer_rss,
            "cpu_secs": consumer.cpu_secs,
            "services_cpu_secs": services.to_json(),
        },
        "ratios": {
            "producer_over_put_ceiling": producer_ips / put_ops,
            "consumer_over_producer": consumer.busy_images_per_sec / producer_ips,
        },
        "rss_under_256_mib": producer_rss < 256.0 && consumer_rss < 256.0,
    })
}
