//! Throughput as partitions and consumer processes grow together: 1, 2 and 4.

use crate::control::{case_settings, cleanup, fresh_database, run_consumers, setup};
use crate::fixtures::{image_pool, preload};
use imgstream::domain::ImageFormat;
use imgstream::wiring;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Throughput with 1, 2 and 4 partitions and as many consumer processes.
pub async fn scaling(base: &HashMap<String, String>, run: &str, records: usize) -> Value {
    let pool = image_pool(16 << 10, ImageFormat::Jpeg, 16);
    let mut rows = Vec::new();
    for partitions in [1usize, 2, 4] {
        eprintln!("[scaling] {partitions} partition(s)");
        let (settings, vars) = case_settings(
            base,
            &format!("bench-scale{partitions}-{run}"),
            "imgstream_bench",
            partitions,
        );
        fresh_database(&settings).await;
        setup(&settings).await;
        preload(&settings, &pool, records, None).await;
        let index = wiring::index(&settings).await.unwrap();
        let watcher = tokio::spawn(async move {
            // Wall time from the first row to the last: the group's combined throughput.
            let mut first = None;
            loop {
                let n = index.count().await.unwrap_or(0) as usize;
                if n > 0 && first.is_none() {
                    first = Some(Instant::now());
                }
                if n >= records {
                    return first.map_or(0.0, |f: Instant| f.elapsed().as_secs_f64());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let (summaries, _) = tokio::task::block_in_place(|| run_consumers(&vars, partitions, &[]));
        let secs = watcher.await.unwrap();
        let stored: u64 = summaries.iter().map(|s| s.stored).sum();
        let replayed: u64 = summaries.iter().map(|s| s.replayed).sum();
        rows.push(
            json!({ "partitions": partitions, "processes": partitions, "stored": stored,
                    "replayed": replayed, "images_per_sec": records as f64 / secs }),
        );
        cleanup(&settings).await;
    }
    json!(rows)
}
