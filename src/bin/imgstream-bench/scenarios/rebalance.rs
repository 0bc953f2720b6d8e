//! Work redone when the consumer group changes mid-drain (`--only rebalance` runs it alone).

use crate::control::{binary, case_settings, cleanup, consumer_log, fresh_database, setup, signal};
use crate::fixtures::{image_pool, preload};
use imgstream::domain::ImageFormat;
use imgstream::pipeline::RunSummary;
use imgstream::wiring;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Records processed more than once while a drain grows from one consumer to four and shrinks
/// back: members join every few seconds, then leave (SIGTERM) one by one. Every record a member
/// finds already stored is work redone because of a hand-over. Also the longest time no row was
/// written meanwhile: how long the group stood still for a change of members. Under `protocol`
/// (`KAFKA_GROUP_PROTOCOL`).
pub async fn rebalance_redo(
    base: &HashMap<String, String>,
    run: &str,
    records: usize,
    protocol: &str,
) -> Value {
    const STEP: Duration = Duration::from_secs(4);
    eprintln!("[rebalance] group protocol {protocol}: preloading {records} records");
    let mut base = base.clone();
    base.insert("KAFKA_GROUP_PROTOCOL".into(), protocol.into());
    let (settings, vars) = case_settings(
        &base,
        &format!("bench-rebalance-{protocol}-{run}"),
        "imgstream_bench",
        8,
    );
    fresh_database(&settings).await;
    setup(&settings).await;
    let pool = image_pool(16 << 10, ImageFormat::Jpeg, 16);
    preload(&settings, &pool, records, None).await;
    let index = wiring::index(&settings).await.unwrap();
    let mut spawned = 0;
    let mut spawn = || {
        spawned += 1;
        Command::new(binary())
            .args(["consume", "--until-idle", "5", "--json"])
            .env_clear()
            .envs(&vars)
            .env("IMGSTREAM_LOG", consumer_log())
            // librdkafka's own debug contexts (e.g. `cgrp`), for a member's log.
            .envs(std::env::var("IMGSTREAM_KAFKA_DEBUG").map(|v| ("IMGSTREAM_KAFKA_DEBUG", v)))
            .stdout(Stdio::piped())
            .stderr(member_log(protocol, spawned))
            .spawn()
            .expect("spawn consumer")
    };
    let started = Instant::now();
    let gaps = tokio::spawn(longest_gap(settings.clone(), records as i64));
    let mut members = vec![spawn()];
    let mut stored_at_steps = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(STEP).await;
        members.push(spawn());
        stored_at_steps.push(index.count().await.unwrap_or(0));
    }
    let mut summaries: Vec<RunSummary> = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(STEP).await;
        let leaving = members.pop().unwrap();
        signal(&leaving, 15);
        let out = tokio::task::block_in_place(|| leaving.wait_with_output().unwrap());
        summaries.push(serde_json::from_slice(&out.stdout).expect("consume --json"));
        stored_at_steps.push(index.count().await.unwrap_or(0));
    }
    let last = members.pop().unwrap();
    let out = tokio::task::block_in_place(|| last.wait_with_output().unwrap());
    assert!(out.status.success(), "the last consumer failed");
    summaries.push(serde_json::from_slice(&out.stdout).expect("consume --json"));
    let rows = index.count().await.unwrap_or(0);
    index.close().await;
    let longest_gap = gaps.await.unwrap_or_default();
    cleanup(&settings).await;
    let stored: u64 = summaries.iter().map(|s| s.stored).sum();
    let replayed: u64 = summaries.iter().map(|s| s.replayed).sum();
    // Rows are counted right after each join or leave: one below `records` means that change
    // met records still to store, which is what a rebalance must hand over.
    let changes_mid_drain = stored_at_steps
        .iter()
        .filter(|&&n| (n as usize) < records)
        .count();
    json!({ "group_protocol": protocol, "records": records, "partitions": 8,
            "longest_gap_ms": longest_gap.as_millis() as u64, "stored": stored, "rows": rows,
            "processed_more_than_once": replayed,
            "processed_more_than_once_share": replayed as f64 / records as f64,
            "rows_at_each_step": stored_at_steps,
            "membership_changes": stored_at_steps.len(),
            "membership_changes_mid_drain": changes_mid_drain,
            "elapsed_secs": started.elapsed().as_secs_f64() })
}

/// Where a member's log goes: `BENCH_MEMBER_LOGS=<dir>` gives each member a file of its own
/// (`rebalance-<protocol>-<n>.log`), so one member's hand-overs read in order; otherwise the
/// bench's own stderr.
fn member_log(protocol: &str, member: usize) -> Stdio {
    let Ok(dir) = std::env::var("BENCH_MEMBER_LOGS") else {
        return Stdio::inherit();
    };
    let path = std::path::Path::new(&dir).join(format!("rebalance-{protocol}-{member}.log"));
    std::fs::File::create(&path).map_or_else(|_| Stdio::inherit(), Stdio::from)
}

/// The longest time the index's row count stood still between the first row and the last
/// (`records`), sampled every 50 ms: no record was stored by anyone meanwhile.
async fn longest_gap(settings: imgstream::config::Settings, records: i64) -> Duration {
    let index = wiring::index(&settings).await.unwrap();
    let (mut last_count, mut last_change, mut longest) = (0, Instant::now(), Duration::ZERO);
    while last_count < records {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(count) = index.count().await else {
            continue;
        };
        if count != last_count {
            // Before the first row the consumer is starting, not rebalancing.
            if last_count > 0 {
                longest = longest.max(last_change.elapsed());
            }
            (last_count, last_change) = (count, Instant::now());
        }
    }
    index.close().await;
    longest
}
