//! The consumer's peak memory on a large backlog: the bound on work in flight, measured.

use crate::control::{case_settings, cleanup, fresh_database, run_consumers, setup};
use crate::fixtures::{image_pool, preload};
use imgstream::domain::ImageFormat;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Peak RSS of one consumer draining a 100,000-record backlog of 16 KiB images.
pub async fn backlog_rss(base: &HashMap<String, String>, run: &str, records: usize) -> Value {
    eprintln!("[backlog] preloading {records} records");
    let (settings, vars) =
        case_settings(base, &format!("bench-backlog-{run}"), "imgstream_bench", 6);
    fresh_database(&settings).await;
    setup(&settings).await;
    let pool = image_pool(16 << 10, ImageFormat::Jpeg, 16);
    preload(&settings, &pool, records, None).await;
    eprintln!("[backlog] draining");
    let (summaries, _) = tokio::task::block_in_place(|| run_consumers(&vars, 1, &[]));
    cleanup(&settings).await;
    let s = &summaries[0];
    json!({ "records": records, "stored": s.stored, "peak_rss_mib": s.peak_rss_kib as f64 / 1024.0,
            "images_per_sec": s.busy_images_per_sec })
}
