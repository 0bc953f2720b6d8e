//! The bench's results: a table on stdout and JSON under `bench-results/`.

use serde_json::Value;
use std::path::PathBuf;

/// The value at quantile `p` of `sorted` (nearest rank); NaN for no values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Writes `bench-results/<kind>-<time>.json` and `bench-results/<kind>-latest.json`
/// (`latest.json` for the main bench).
pub fn write_report(kind: &str, report: &Value) {
    let dir = PathBuf::from("bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "{kind}-{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let text = serde_json::to_string_pretty(report).unwrap();
    std::fs::write(&path, &text).unwrap();
    let latest = if kind == "bench" {
        "latest.json".to_string()
    } else {
        format!("{kind}-latest.json")
    };
    std::fs::write(dir.join(latest), &text).unwrap();
    println!("\nwritten: {}", path.display());
}

pub fn print_table(r: &Value) {
    println!(
        "\n{:<8} {:>9} {:>11} {:>11} {:>10} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "size",
        "img/s",
        "MB/s",
        "put ceil/s",
        "kafka/s",
        "naive/s",
        "p/ceil",
        "p/naive",
        "RSS MiB",
        "cpu/1k",
        "cpu %",
        "p50 ms",
        "p99 ms"
    );
    for c in r["cases"].as_array().unwrap() {
        println!(
            "{:<8} {:>9.0} {:>11.1} {:>11.0} {:>10.0} {:>9.0} {:>8.2} {:>8.1} {:>9.0} {:>8.2} {:>8.1} {:>8.0} {:>8.0}",
            c["size"].as_str().unwrap(),
            c["pipeline"]["images_per_sec"].as_f64().unwrap(),
            c["pipeline"]["mb_per_sec"].as_f64().unwrap(),
            c["ceiling"]["put_objects_per_sec"].as_f64().unwrap(),
            c["ceiling"]["kafka_records_per_sec"].as_f64().unwrap(),
            c["naive"]["images_per_sec"].as_f64().unwrap(),
            c["ratios"]["pipeline_over_ceiling"].as_f64().unwrap(),
            c["ratios"]["pipeline_over_naive"].as_f64().unwrap(),
            c["pipeline"]["peak_rss_mib"].as_f64().unwrap(),
            c["pipeline"]["cpu_secs_per_1000_images"].as_f64().unwrap(),
            c["pipeline"]["consumer_cpu_share"].as_f64().unwrap() * 100.0,
            c["latency"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
            c["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    for c in r["cases"].as_array().unwrap() {
        println!(
            "latency {}: {} records paced at {:.0}/s over {:.0} s, p99 {:.0} ms (after a {:.0} s lead-in at that pace, p99 {:.0} ms)",
            c["size"].as_str().unwrap(),
            c["latency"]["records"],
            c["latency"]["paced_images_per_sec"]
                .as_f64()
                .unwrap_or(f64::NAN),
            c["latency"]["window_secs"].as_f64().unwrap_or(f64::NAN),
            c["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
            c["latency"]["lead_in"]["secs"].as_f64().unwrap_or(0.0),
            c["latency"]["lead_in"]["p99_ms"]
                .as_f64()
                .unwrap_or(f64::NAN)
        );
    }
    if !r["large"].is_null() {
        let l = &r["large"];
        println!(
            "{}: producer {:.2} images/s ({:.0} MB/s) against {:.2} raw PUTs/s ({:.0} MB/s); consumer {:.2} images/s; peak RSS producer {:.0} MiB, consumer {:.0} MiB",
            l["size"].as_str().unwrap_or("?"),
            l["producer"]["images_per_sec"].as_f64().unwrap(),
            l["producer"]["mb_per_sec"].as_f64().unwrap(),
            l["ceiling"]["put_objects_per_sec"].as_f64().unwrap(),
            l["ceiling"]["put_mb_per_sec"].as_f64().unwrap(),
            l["consumer"]["images_per_sec"].as_f64().unwrap(),
            l["producer"]["peak_rss_mib"].as_f64().unwrap(),
            l["consumer"]["peak_rss_mib"].as_f64().unwrap()
        );
    }
    if let Some(rows) = r["scaling"].as_array() {
        for row in rows {
            println!(
                "scaling: {} partition(s), {} process(es): {:.0} images/s",
                row["partitions"],
                row["processes"],
                row["images_per_sec"].as_f64().unwrap()
            );
        }
    }
    for run in r["rebalance"].as_array().into_iter().flatten() {
        println!(
            "rebalance 1->4->1 ({} protocol): {} of {} records processed more than once ({:.2}%), longest time with no row written {} ms",
            run["group_protocol"].as_str().unwrap_or("?"),
            run["processed_more_than_once"],
            run["records"],
            run["processed_more_than_once_share"].as_f64().unwrap() * 100.0,
            run["longest_gap_ms"]
        );
    }
    if !r["backlog"].is_null() {
        println!(
            "backlog: {} records drained, peak RSS {:.0} MiB",
            r["backlog"]["stored"],
            r["backlog"]["peak_rss_mib"].as_f64().unwrap()
        );
    }
}
