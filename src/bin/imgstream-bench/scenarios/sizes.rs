//! One image size at a time (16 KiB, 256 KiB, 2 MiB): preload a topic, measure the ceilings,
//! drain it with the real consumer in rounds between PUT-ceiling measurements (throughput, peak
//! RSS, CPU), run the naive one-at-a-time reference, and measure produce-to-index latency at
//! half the pipeline's pace.

use crate::ceilings::{kafka_ceiling, store_ceiling};
use crate::control::{
    SteadyWriteback, WritebackSampler, binary, case_settings, cleanup, consumer_log,
    fresh_database, run_consumers, settle_disk, setup, setup_bucket_and_index,
};
use crate::fixtures::{image_pool, preload};
use crate::report::percentile;
use crate::{naive, services};
use imgstream::config::Settings;
use imgstream::domain::ImageFormat;
use imgstream::pipeline::{PipelineOptions, RunSummary, usage};
use imgstream::wiring;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One benchmarked image size.
pub struct Case {
    pub label: &'static str,
    target_bytes: usize,
    format: ImageFormat,
    records: usize,
    ceiling_puts: usize,
    naive_records: usize,
    /// How long the paced latency measurement produces for.
    latency_window: Duration,
    /// How long the same paced load runs before that window, out of its p99.
    lead_in: Duration,
}

/// The sizes measured; `quick` takes a fifth of the records of each.
pub fn cases(quick: bool) -> Vec<Case> {
    let scale = if quick { 5 } else { 1 };
    // A p99 over a few seconds is decided by one slow moment; a minute shows whether a tail is
    // a moment or a steady state.
    let latency_window = Duration::from_secs(if quick { 12 } else { 60 });
    // A broker compiles the code a paced load runs the first time it sees that load: on a
    // broker started minutes before, its JIT compiler threads took 0.26-0.46 of a core for the
    // first 18 s of a 16 KiB window (the request threads ran slower meanwhile), and that window's
    // p99 was 270 ms against 95 ms on a warm broker. The window measures the pipeline warm; the
    // lead-in's own p99 and every second of it stay in the JSON.
    let lead_in = Duration::from_secs(if quick { 5 } else { 20 });
    vec![
        Case {
            label: "16KiB",
            target_bytes: 16 << 10,
            format: ImageFormat::Jpeg,
            records: 21_000 / scale,
            ceiling_puts: 10_000 / scale,
            naive_records: 600 / scale,
            latency_window,
            lead_in,
        },
        Case {
            label: "256KiB",
            target_bytes: 256 << 10,
            format: ImageFormat::Jpeg,
            records: 3_000 / scale,
            ceiling_puts: 2_000 / scale,
            naive_records: 200 / scale,
            latency_window,
            lead_in,
        },
        Case {
            label: "2MiB",
            target_bytes: 2 << 20,
            format: ImageFormat::Png,
            records: 1_200 / scale,
            ceiling_puts: 300 / scale,
            naive_records: 60 / scale,
            latency_window,
            lead_in,
        },
    ]
}

/// The drain of each size runs in this many rounds, each between two ceiling measurements.
const DRAIN_ROUNDS: usize = 3;

/// One PUT-ceiling measurement and the CPU it cost.
struct Ceiling {
    put_ops: f64,
    services: services::CpuDelta,
    client_cpu_secs: f64,
}

/// Milliseconds of CPU per image (or per PUT) of each service and of the one client (the consumer,
/// or the ceiling's PUT client): the rounds' and the ceilings' costs side by side, so a run
/// shows what the pipeline pays on top of a raw PUT.
fn per_image_cpu_ms(
    services: &services::CpuDelta,
    client: f64,
    name: &str,
    images: usize,
) -> Value {
    let ms = |secs: f64| secs / images.max(1) as f64 * 1000.0;
    json!({
        "minio": ms(services.minio), "kafka": ms(services.kafka), "postgresql": ms(services.postgres),
        name: ms(client),
    })
}

/// One round of a drain: the consumer's summary, the services' CPU meanwhile, and the PUT ceiling
/// measured on both sides of it.
struct Round {
    number: usize,
    summary: RunSummary,
    services: services::CpuDelta,
    put_ops: f64,
    ratio: f64,
}

/// Produce-to-index latency per second of production: `[second, records, mean ms, worst ms]`.
/// A tail is a moment or a steady state, and only the spread over time tells which.
async fn latency_by_second(settings: &Settings, since: chrono::DateTime<chrono::Utc>) -> Value {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(settings.database_url.expose())
        .await
        .unwrap();
    let rows: Vec<(f64, i64, f64, f64)> = sqlx::query_as(
        "SELECT extract(epoch FROM date_trunc('second', created_at) - date_trunc('second', $1::timestamptz))::float8,
                count(*), avg(extract(epoch FROM stored_at - created_at))::float8 * 1000,
                max(extract(epoch FROM stored_at - created_at))::float8 * 1000
         FROM images WHERE created_at >= $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(since)
    .fetch_all(&mut db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(second, n, mean, worst)| json!([second, n, mean.round(), worst.round()]))
        .collect()
}

/// What the machine can do end to end, producing and consuming at once, from what it did each
/// alone: the drains have the machine to themselves, and so does the preload, so a record's
/// share of the machine in both is the sum of its shares in each.
///
/// The latency window runs at half of this: half the drain pace alone, as before, loaded the
/// sizes unevenly, because producing a 2 MiB record costs the machine half what consuming it
/// does and a 16 KiB one a tenth of it. Half the drain pace was 56% of the end-to-end pace at
/// 16 KiB and 74% at 2 MiB (200 drained and 412 produced a second, paced at 100), where the
/// page cache filled within the window, the kernel reclaimed 350-400 MiB a second, both cores
/// ran at 1.8-1.96 and the p99 was 558 ms.
fn end_to_end_rate(drain_rate: f64, produce_rate: f64) -> f64 {
    1.0 / (1.0 / drain_rate + 1.0 / produce_rate)
}

/// When the first record produced since `since` was created: where the lead-in starts.
async fn first_record_since(
    settings: &Settings,
    since: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(settings.database_url.expose())
        .await
        .unwrap();
    sqlx::query_scalar("SELECT min(created_at) FROM images WHERE created_at >= $1")
        .bind(since)
        .fetch_one(&mut db)
        .await
        .unwrap()
}

/// The lead-in's latencies: those of all records (sorted) that are not the window's (sorted).
fn lead_in_part(all: &[f64], window: &[f64]) -> Vec<f64> {
    let mut window = window.iter().peekable();
    all.iter()
        .copied()
        .filter(|v| {
            if window.peek() == Some(&v) {
                window.next();
                false
            } else {
                true
            }
        })
        .collect()
}

/// With `BENCH_BROKER_REQUEST_LOG` set, the broker logs every request with its queue, local,
/// remote and send times while the latency is measured (scripts/broker-request-log.sh), so a
/// slow moment of the clients can be read beside the broker's own account of it.
fn broker_request_log(state: &str) {
    if std::env::var_os("BENCH_BROKER_REQUEST_LOG").is_none() {
        return;
    }
    let done = Command::new("scripts/broker-request-log.sh")
        .arg(state)
        .status();
    if !done.is_ok_and(|s| s.success()) {
        eprintln!("[bench] could not turn the broker's request log {state}");
    }
}

/// One size, start to end; its part of the JSON report.
pub async fn bench_case(base: &HashMap<String, String>, run: &str, case: &Case) -> Value {
    let name = format!("bench-{}-{run}", case.label.to_lowercase());
    let (settings, vars) = case_settings(base, &name, "imgstream_bench", 6);
    fresh_database(&settings).await;
    setup(&settings).await;
    eprintln!("[{}] preparing images", case.label);
    let pool = image_pool(case.target_bytes, case.format, 16);
    let image_bytes = pool.iter().map(|(_, d)| d.len()).sum::<usize>() / pool.len();

    eprintln!("[{}] preloading {} records", case.label, case.records);
    let produce_rate = preload(&settings, &pool, case.records, None)
        .await
        .records_per_sec;
    eprintln!("[{}] ceilings", case.label);
    let (kafka_rps, kafka_mbps) =
        tokio::task::block_in_place(|| kafka_ceiling(&settings, case.records));
    let uploads = PipelineOptions::DEFAULT_UPLOADS_IN_FLIGHT;
    // On a single-threaded runtime of its own, like the consumer's (src/main.rs), with the CPU
    // it cost: the services' and the PUT client's (this process, which does nothing else then).
    let put_ceiling = || {
        settle_disk();
        let (services_before, client_before) = (services::cpu(), usage::own().cpu_secs);
        let (ops, _) = tokio::task::block_in_place(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(store_ceiling(&settings, &pool, case.ceiling_puts, uploads))
        });
        Ceiling {
            put_ops: ops,
            services: services::cpu().since(&services_before),
            client_cpu_secs: usage::own().cpu_secs - client_before,
        }
    };
    // These machines swing by 10-50% from one few-second measurement to the next (disk
    // write-back, two shared cores): the drain runs in rounds, each between two PUT-ceiling
    // measurements, and the median round's ratio is the result. Every round is in the JSON.
    let extra: Vec<String> = std::env::var("BENCH_CONSUMER_ARGS")
        .map(|a| a.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let per_round = case.records / DRAIN_ROUNDS;
    let max = per_round.to_string();
    let mut ceilings = vec![put_ceiling()];
    let mut rounds = Vec::new();
    for round in 1..=DRAIN_ROUNDS {
        eprintln!("[{}] pipeline drain, round {round}", case.label);
        let mut args = extra.clone();
        args.extend(["--max", &max]);
        settle_disk();
        let (summaries, cpu) = run_consumers(&vars, 1, &args);
        let s = summaries.into_iter().next().expect("one consumer");
        assert_eq!(
            s.stored as usize, per_round,
            "round {round}: pipeline stored {} of {per_round}",
            s.stored
        );
        ceilings.push(put_ceiling());
        let put = (ceilings[round - 1].put_ops + ceilings[round].put_ops) / 2.0;
        rounds.push(Round {
            number: round,
            ratio: s.busy_images_per_sec / put.min(kafka_rps),
            put_ops: put,
            summary: s,
            services: cpu,
        });
    }
    let mut by_ratio: Vec<&Round> = rounds.iter().collect();
    by_ratio.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
    let median = by_ratio[by_ratio.len() / 2];
    let pipe_ips = median.summary.busy_images_per_sec;
    let pipe_mbps = median.summary.busy_mb_per_sec;
    let put_ops = median.put_ops;
    let put_mbps = put_ops * image_bytes as f64 / 1e6;
    let stored: u64 = rounds.iter().map(|r| r.summary.stored).sum();
    let consumer_cpu: f64 = rounds.iter().map(|r| r.summary.cpu_secs).sum();
    let cpu = rounds
        .iter()
        .fold(services::CpuDelta::default(), |a, r| a.plus(&r.services));
    let peak_rss_kib = rounds
        .iter()
        .map(|r| r.summary.peak_rss_kib)
        .max()
        .unwrap_or(0);

    eprintln!("[{}] naive reference", case.label);
    let (naive_settings, _) =
        case_settings(base, &format!("{name}-naive"), "imgstream_bench_naive", 6);
    fresh_database(&naive_settings).await;
    let mut naive_settings = naive_settings;
    naive_settings.kafka.data_topic = settings.kafka.data_topic.clone();
    setup_bucket_and_index(&naive_settings).await;
    let naive_ips = naive::run(&naive_settings, case.naive_records).await;

    eprintln!("[{}] latency at half the end-to-end pace", case.label);
    let mut paces: Vec<f64> = rounds
        .iter()
        .map(|r| r.summary.busy_images_per_sec)
        .collect();
    paces.sort_by(f64::total_cmp);
    // The rounds' median pace, not the pace of the round with the median ratio: that round can
    // be the fastest (2 MiB rounds of 154, 119 and 122 images/s).
    let drain_rate = paces[paces.len() / 2];
    let paced_rate = (end_to_end_rate(drain_rate, produce_rate) / 2.0).max(1.0);
    let paced_secs = (case.lead_in + case.latency_window).as_secs_f64();
    let paced_count = ((paced_rate * paced_secs) as usize).max(20);
    let (lat_settings, lat_vars) =
        case_settings(base, &format!("{name}-lat"), "imgstream_bench", 6);
    setup(&lat_settings).await;
    let writeback_setting = SteadyWriteback::apply();
    settle_disk();
    let since = chrono::Utc::now();
    let max = paced_count.to_string();
    let consumer = Command::new(binary())
        .args(["consume", "--max", &max, "--json"])
        .args(&extra)
        .env_clear()
        .envs(&lat_vars)
        .env("IMGSTREAM_LOG", consumer_log())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    broker_request_log("on");
    tokio::time::sleep(Duration::from_secs(4)).await; // joined and assigned before the first record
    let since_records = chrono::Utc::now();
    eprintln!("[{}] paced records from {since_records}", case.label);
    let writeback = WritebackSampler::start(consumer.id());
    let paced = preload(&lat_settings, &pool, paced_count, Some(paced_rate)).await;
    consumer.wait_with_output().unwrap();
    let writeback = writeback.finish();
    let writeback_threshold = writeback_setting.describe();
    drop(writeback_setting);
    broker_request_log("off");
    let first_record = first_record_since(&lat_settings, since_records.max(since)).await;
    let window_from = first_record + case.lead_in;
    let index = wiring::index(&lat_settings).await.unwrap();
    let latencies = index.latencies_since(window_from).await.unwrap();
    let all_latencies = index.latencies_since(first_record).await.unwrap();
    index.close().await;
    let lead_in_latencies = lead_in_part(&all_latencies, &latencies);
    // Per second from the lead-in's first record: seconds below `lead_in.secs` are the lead-in.
    let by_second = latency_by_second(&lat_settings, first_record).await;
    let window_secs = (chrono::Utc::now() - window_from).as_seconds_f64();

    cleanup(&settings).await;
    cleanup(&naive_settings).await;
    cleanup(&lat_settings).await;

    let total_cpu = consumer_cpu + cpu.total();
    json!({
        "size": case.label,
        "image_bytes_avg": image_bytes,
        "records": case.records,
        "produce_records_per_sec": produce_rate,
        "ceiling": {
            "put_objects_per_sec": put_ops, "put_mb_per_sec": put_mbps, "put_concurrency": uploads,
            "put_objects_per_sec_between_rounds": ceilings.iter().map(|c| c.put_ops).collect::<Vec<_>>(),
            "cpu_ms_per_put": per_image_cpu_ms(
                &ceilings.iter().fold(services::CpuDelta::default(), |a, c| a.plus(&c.services)),
                ceilings.iter().map(|c| c.client_cpu_secs).sum(),
                "client",
                ceilings.len() * case.ceiling_puts,
            ),
            "kafka_records_per_sec": kafka_rps, "kafka_mb_per_sec": kafka_mbps,
        },
        "pipeline": {
            "images_per_sec": pipe_ips, "mb_per_sec": pipe_mbps,
            "peak_rss_mib": peak_rss_kib as f64 / 1024.0,
            "cpu_secs_per_1000_images": consumer_cpu / stored as f64 * 1000.0,
            "consumer_cpu_secs": consumer_cpu,
            "services_cpu_secs": cpu.to_json(),
            "consumer_cpu_share": consumer_cpu / total_cpu,
            "rounds": rounds.iter().map(|r| json!({
                "round": r.number, "records": r.summary.stored, "images_per_sec": r.summary.busy_images_per_sec,
                "put_objects_per_sec": r.put_ops, "pipeline_over_ceiling": r.ratio,
                "mean_uploads_in_flight": r.summary.mean_uploads_in_flight,
            })).collect::<Vec<_>>(),
            "cpu_ms_per_image": per_image_cpu_ms(&cpu, consumer_cpu, "consumer", stored as usize),
        },
        "naive": { "images_per_sec": naive_ips, "records": case.naive_records },
        "latency": {
            "paced_images_per_sec": paced_rate, "records": latencies.len(),
            "pace": {
                "rule": "half the end-to-end pace",
                "drain_images_per_sec": drain_rate, "produce_records_per_sec": produce_rate,
                "end_to_end_images_per_sec": end_to_end_rate(drain_rate, produce_rate),
            },
            "window_secs": paced.elapsed_secs - case.lead_in.as_secs_f64(),
            "measured_until_secs": window_secs,
            "lead_in": {
                "secs": case.lead_in.as_secs_f64(), "records": lead_in_latencies.len(),
                "p50_ms": percentile(&lead_in_latencies, 0.5) * 1000.0,
                "p99_ms": percentile(&lead_in_latencies, 0.99) * 1000.0,
            },
            "p50_ms": percentile(&latencies, 0.5) * 1000.0, "p99_ms": percentile(&latencies, 0.99) * 1000.0,
            "produce_ack_p50_ms": percentile(&paced.ack_secs, 0.5) * 1000.0,
            "produce_ack_p99_ms": percentile(&paced.ack_secs, 0.99) * 1000.0,
            "by_second": by_second,
            "kernel_writeback": writeback_threshold,
            "dirty_and_writeback_mib_by_second": writeback.writeback,
            "reclaim_by_second": {
                "columns": ["second", "free_mib", "reclaimed_by_kswapd_mib", "reclaimed_directly_mib", "allocation_stalls", "compaction_stalls", "reported_to_host_mib"],
                "rows": writeback.reclaim,
            },
            "disk_by_second": {
                "columns": ["second", "written_mib", "writes", "flushes", "flush_ms", "write_ms", "in_flight"],
                "rows": writeback.disk,
            },
            "cpu_cores_by_second": {
                "columns": ["second", "kafka", "minio", "postgresql", "consumer", "bench_producer", "machine_busy", "machine_iowait", "machine_steal", "kafka_jit"],
                "rows": writeback.cpu,
            },
        },
        "ratios": {
            "pipeline_over_put_ceiling": pipe_ips / put_ops,
            "pipeline_over_kafka_ceiling": pipe_ips / kafka_rps,
            "pipeline_over_ceiling": pipe_ips / put_ops.min(kafka_rps),
            "pipeline_over_naive": pipe_ips / naive_ips,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_to_end_pace_counts_each_records_share_of_both_drain_and_produce() {
        assert_eq!(end_to_end_rate(200.0, 200.0), 100.0);
        let e = end_to_end_rate(200.0, 412.0);
        assert!((e - 134.6).abs() < 0.1, "{e}");
        // Producing that costs next to nothing leaves the drain's pace.
        assert!(end_to_end_rate(1500.0, 1e9) > 1499.9);
    }

    #[test]
    fn the_lead_in_is_every_latency_the_window_does_not_hold_duplicates_included() {
        let all = [0.01, 0.02, 0.02, 0.03, 0.3, 0.4];
        let window = [0.02, 0.03, 0.4];
        assert_eq!(lead_in_part(&all, &window), vec![0.01, 0.02, 0.3]);
        assert_eq!(lead_in_part(&all, &[]), all.to_vec());
        assert!(lead_in_part(&all, &all).is_empty());
    }
}
