//! `make bench`: the pipeline against the machine's own ceiling, measured in the same run.
//!
//! For each image size: preload a topic, measure the ceilings (raw concurrent PUTs with the
//! consumer's client and concurrency; a raw Kafka consume), drain the topic with the real
//! consumer process (throughput, peak RSS, CPU), run a naive one-at-a-time reference, and measure
//! produce-to-index latency at half the pipeline's pace. Then scaling over 1, 2 and 4 partitions,
//! and the consumer's peak RSS over a 100,000-record backlog. Prints a table and writes JSON.

mod browse;
mod naive;
mod services;
mod soak;

use imgstream::config::Settings;
use imgstream::domain::{ImageFormat, ImageRecord, object_key, sha256_hex};
use imgstream::generate::{ImageSpec, render};
use imgstream::pipeline::{PipelineOptions, RunSummary};
use imgstream::schema::{IMAGE_RECORD_SCHEMA, codec, value_subject};
use imgstream::wiring;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One benchmarked image size.
struct Case {
    label: &'static str,
    target_bytes: usize,
    format: ImageFormat,
    records: usize,
    ceiling_puts: usize,
    naive_records: usize,
}

fn cases(quick: bool) -> Vec<Case> {
    let scale = if quick { 5 } else { 1 };
    vec![
        Case {
            label: "16KiB",
            target_bytes: 16 << 10,
            format: ImageFormat::Jpeg,
            records: 21_000 / scale,
            ceiling_puts: 10_000 / scale,
            naive_records: 600 / scale,
        },
        Case {
            label: "256KiB",
            target_bytes: 256 << 10,
            format: ImageFormat::Jpeg,
            records: 3_000 / scale,
            ceiling_puts: 2_000 / scale,
            naive_records: 200 / scale,
        },
        Case {
            label: "2MiB",
            target_bytes: 2 << 20,
            format: ImageFormat::Png,
            records: 1_200 / scale,
            ceiling_puts: 300 / scale,
            naive_records: 60 / scale,
        },
    ]
}

/// The drain of each size runs in this many rounds, each between two ceiling measurements.
const DRAIN_ROUNDS: usize = 3;

/// One round of a drain: the consumer's summary, the services' CPU meanwhile, and the PUT ceiling
/// measured on both sides of it.
struct Round {
    number: usize,
    summary: RunSummary,
    services: services::CpuDelta,
    put_ops: f64,
    ratio: f64,
}

/// Settings for one benchmark case: its own topic, bucket, group and database.
fn case_settings(
    base: &HashMap<String, String>,
    name: &str,
    database: &str,
    partitions: usize,
) -> (Settings, HashMap<String, String>) {
    let mut vars = base.clone();
    // The base connection string with its default applied, as `imgstream` reads it.
    let db = settings_or_exit(&vars).database_url.with_database(database);
    for (k, v) in [
        ("KAFKA_DATA_TOPIC", name.to_string()),
        ("KAFKA_GROUP_ID", name.to_string()),
        ("MINIO_BUCKET_NAME", name.to_string()),
        ("DATABASE_CONNECTION_STRING", db.expose().to_string()),
        ("KAFKA_TOPIC_PARTITIONS", partitions.to_string()),
        ("IMGSTREAM_ENV_FILE", "/nonexistent".to_string()),
    ] {
        vars.insert(k.into(), v);
    }
    (settings_or_exit(&vars), vars)
}

/// Settings from a variable map, or one line naming the variable at fault and an exit.
fn settings_or_exit(vars: &HashMap<String, String>) -> Settings {
    Settings::from_vars(vars).unwrap_or_else(|e| {
        eprintln!("imgstream-bench: configuration: {e}");
        std::process::exit(2)
    })
}

/// Images close to the target size: dimensions scaled from one trial render.
fn image_pool(target: usize, format: ImageFormat, n: usize) -> Vec<(ImageSpec, Vec<u8>)> {
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

async fn setup(settings: &Settings) {
    let problems: Vec<String> = imgstream::setup::run(settings, IMAGE_RECORD_SCHEMA, false)
        .await
        .into_iter()
        .filter(|i| i.state.is_problem())
        .map(|i| i.to_string())
        .collect();
    assert!(problems.is_empty(), "bench setup failed: {problems:?}");
}

/// What producing the records came to: their rate, and how long each waited for its
/// acknowledgement from Kafka (seconds, sorted): the producer's share of the pipeline's latency.
struct Preloaded {
    records_per_sec: f64,
    ack_secs: Vec<f64>,
}

/// Produces `count` records of pooled images with fresh ids, at `rate` per second if given.
async fn preload(
    settings: &Settings,
    pool: &[(ImageSpec, Vec<u8>)],
    count: usize,
    rate: Option<f64>,
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
    let mut ack_secs = Vec::with_capacity(count);
    for i in 0..count {
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
    }
    use futures::StreamExt;
    while let Some(waited) = pending.next().await {
        ack_secs.push(waited.unwrap());
    }
    ack_secs.sort_by(f64::total_cmp);
    Preloaded {
        records_per_sec: count as f64 / started.elapsed().as_secs_f64(),
        ack_secs,
    }
}

/// Raw consume of the whole topic: records/s and MB/s with no processing at all.
fn kafka_ceiling(settings: &Settings, expected: usize) -> (f64, f64) {
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
async fn store_ceiling(
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

/// Lets the disk settle before a measurement, so that it measures this step and not the last:
/// - waits (up to three minutes) until MinIO has removed the objects earlier steps deleted:
///   MinIO moves them to its drive's `.minio.sys/tmp/.trash` and removes them later, in the
///   background. The stack's MinIO, in `BENCH_MINIO_DATA` (default `.stack/minio/data`); a
///   store elsewhere is not waited for.
/// - writes what earlier steps left in the page cache to disk: gigabytes of write-back from the
///   step before slowed MinIO's writes through the first seconds of the next (2 MiB
///   produce-to-index latencies of 0.6-0.8 s for four seconds, 0.19 s after).
fn settle_disk() {
    let data = std::env::var("BENCH_MINIO_DATA").unwrap_or_else(|_| ".stack/minio/data".into());
    let trash = std::path::Path::new(&data).join(".minio.sys/tmp/.trash");
    let waiting = Instant::now();
    let deleted_remain =
        || std::fs::read_dir(&trash).is_ok_and(|mut entries| entries.next().is_some());
    while deleted_remain() && waiting.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_millis(500));
    }
    if waiting.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "  waited {:.0}s for MinIO to remove deleted objects{}",
            waiting.elapsed().as_secs_f64(),
            if deleted_remain() {
                " (some remain)"
            } else {
                ""
            }
        );
    }
    let _ = Command::new("sync").status();
}

/// The log filter of the consumers under test: `BENCH_CONSUMER_LOG` (e.g. `info` or
/// `debug,rdkafka=info`) to see what they did during a slow second; warnings only by default.
fn consumer_log() -> String {
    std::env::var("BENCH_CONSUMER_LOG").unwrap_or_else(|_| "warn".into())
}

/// Runs the real consumer binary until the topic is drained; its summary, plus the CPU that
/// Kafka, MinIO and PostgreSQL spent meanwhile.
fn run_consumers(
    vars: &HashMap<String, String>,
    processes: usize,
    extra: &[&str],
) -> (Vec<RunSummary>, services::CpuDelta) {
    let before = services::cpu();
    let children: Vec<_> = (0..processes)
        .map(|_| {
            Command::new(binary())
                .args(["consume", "--until-idle", "3", "--json"])
                .args(extra)
                .env_clear()
                .envs(vars)
                .env("IMGSTREAM_LOG", consumer_log())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn consumer")
        })
        .collect();
    let summaries = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "consumer failed");
            serde_json::from_slice(&out.stdout).expect("consume --json prints a run summary")
        })
        .collect();
    (summaries, services::cpu().since(&before))
}

fn binary() -> PathBuf {
    std::env::current_exe().unwrap().with_file_name("imgstream")
}

async fn maintenance_connection(settings: &Settings) -> sqlx::PgConnection {
    use sqlx::Connection;
    let url = settings.database_url.with_database("postgres");
    sqlx::PgConnection::connect(url.expose()).await.unwrap()
}

async fn drop_database(settings: &Settings) {
    let name = settings.database_url.database_name();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut maintenance_connection(settings).await)
        .await
        .unwrap();
}

async fn fresh_database(settings: &Settings) {
    drop_database(settings).await;
    let name = settings.database_url.database_name();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut maintenance_connection(settings).await)
        .await
        .unwrap();
}

async fn cleanup(settings: &Settings) {
    if let Ok(admin) = wiring::topic_admin(settings) {
        let _ = admin
            .delete(&[&settings.kafka.data_topic, &settings.kafka.dlq_topic])
            .await;
    }
    let _ = wiring::store(settings).unwrap().destroy_bucket().await;
    if let Ok(registry) = wiring::registry(settings) {
        let _ = registry
            .delete_subject(&value_subject(&settings.kafka.data_topic))
            .await;
    }
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn bench_case(base: &HashMap<String, String>, run: &str, case: &Case) -> Value {
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
    let uploads = PipelineOptions::new(wiring::limits(&settings)).uploads_in_flight;
    // On a single-threaded runtime of its own, like the consumer's (src/main.rs).
    let put_ceiling = || {
        settle_disk();
        tokio::task::block_in_place(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(store_ceiling(&settings, &pool, case.ceiling_puts, uploads))
        })
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
        let put = (ceilings[round - 1].0 + ceilings[round].0) / 2.0;
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

    eprintln!("[{}] latency at half pace", case.label);
    let paced_rate = (pipe_ips / 2.0).max(1.0);
    let paced_count = ((paced_rate * 10.0) as usize).clamp(20, case.records);
    let (lat_settings, lat_vars) =
        case_settings(base, &format!("{name}-lat"), "imgstream_bench", 6);
    setup(&lat_settings).await;
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
    tokio::time::sleep(Duration::from_secs(4)).await; // joined and assigned before the first record
    let since_records = chrono::Utc::now();
    eprintln!("[{}] paced records from {since_records}", case.label);
    let paced = preload(&lat_settings, &pool, paced_count, Some(paced_rate)).await;
    consumer.wait_with_output().unwrap();
    let index = wiring::index(&lat_settings).await.unwrap();
    let latencies = index
        .latencies_since(since_records.max(since))
        .await
        .unwrap();
    index.close().await;
    let by_second = latency_by_second(&lat_settings, since_records.max(since)).await;

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
            "put_objects_per_sec_between_rounds": ceilings.iter().map(|c| c.0).collect::<Vec<_>>(),
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
            })).collect::<Vec<_>>(),
        },
        "naive": { "images_per_sec": naive_ips, "records": case.naive_records },
        "latency": {
            "paced_images_per_sec": paced_rate, "records": latencies.len(),
            "p50_ms": percentile(&latencies, 0.5) * 1000.0, "p99_ms": percentile(&latencies, 0.99) * 1000.0,
            "produce_ack_p50_ms": percentile(&paced.ack_secs, 0.5) * 1000.0,
            "produce_ack_p99_ms": percentile(&paced.ack_secs, 0.99) * 1000.0,
            "by_second": by_second,
        },
        "ratios": {
            "pipeline_over_put_ceiling": pipe_ips / put_ops,
            "pipeline_over_kafka_ceiling": pipe_ips / kafka_rps,
            "pipeline_over_ceiling": pipe_ips / put_ops.min(kafka_rps),
            "pipeline_over_naive": pipe_ips / naive_ips,
        },
    })
}

/// The naive reference writes to its own bucket and database but reads the case's topic.
async fn setup_bucket_and_index(settings: &Settings) {
    let store = wiring::store(settings).unwrap();
    store.create_bucket().await.unwrap();
    let index = wiring::index(settings).await.unwrap();
    index.migrate().await.unwrap();
    index.close().await;
}

/// Throughput with 1, 2 and 4 partitions and as many consumer processes.
async fn scaling(base: &HashMap<String, String>, run: &str, records: usize) -> Value {
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

/// Records processed more than once while a drain grows from one consumer to four and shrinks
/// back: members join every few seconds, then leave (SIGTERM) one by one. Every record a member
/// finds already stored is work redone because of a hand-over.
async fn rebalance_redo(base: &HashMap<String, String>, run: &str, records: usize) -> Value {
    const STEP: Duration = Duration::from_secs(4);
    eprintln!("[rebalance] preloading {records} records");
    let (settings, vars) = case_settings(
        base,
        &format!("bench-rebalance-{run}"),
        "imgstream_bench",
        8,
    );
    fresh_database(&settings).await;
    setup(&settings).await;
    let pool = image_pool(16 << 10, ImageFormat::Jpeg, 16);
    preload(&settings, &pool, records, None).await;
    let index = wiring::index(&settings).await.unwrap();
    let spawn = || {
        Command::new(binary())
            .args(["consume", "--until-idle", "5", "--json"])
            .env_clear()
            .envs(&vars)
            .env("IMGSTREAM_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn consumer")
    };
    let started = Instant::now();
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
        soak::signal(&leaving, 15);
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
    cleanup(&settings).await;
    let stored: u64 = summaries.iter().map(|s| s.stored).sum();
    let replayed: u64 = summaries.iter().map(|s| s.replayed).sum();
    let changed_mid_drain = stored_at_steps
        .last()
        .is_some_and(|&n| (n as usize) < records);
    json!({ "records": records, "partitions": 8, "stored": stored, "rows": rows,
            "processed_more_than_once": replayed,
            "processed_more_than_once_share": replayed as f64 / records as f64,
            "rows_at_each_step": stored_at_steps,
            "group_changed_mid_drain": changed_mid_drain,
            "elapsed_secs": started.elapsed().as_secs_f64() })
}

/// Peak RSS of one consumer draining a 100,000-record backlog of 16 KiB images.
async fn backlog_rss(base: &HashMap<String, String>, run: &str, records: usize) -> Value {
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

#[tokio::main]
async fn main() {
    // The bench's own clients (the producer above all) log only when asked: `BENCH_LOG=debug`.
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<&str> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    // Read the way `imgstream` reads them: the environment, then `.env`.
    let base = imgstream::config::load_vars().unwrap_or_else(|e| {
        eprintln!("imgstream-bench: configuration: {e}");
        std::process::exit(2)
    });
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let started = Instant::now();
    if args.iter().any(|a| a == "--soak") {
        let minutes = flag_value(&args, "--minutes").unwrap_or(30);
        let report = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "machine": services::machine(),
            "versions": services::versions(),
            "soak": soak::soak(&base, &run, minutes).await,
        });
        println!("{}", serde_json::to_string_pretty(&report["soak"]).unwrap());
        write_report("soak", &report);
        return;
    }
    if args.iter().any(|a| a == "--browse") {
        let rows = flag_value(&args, "--rows").unwrap_or(1_000_000);
        let report = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "machine": services::machine(),
            "browse": browse::bench_browse(&base, &run, rows).await,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report["browse"]).unwrap()
        );
        write_report("browse", &report);
        return;
    }

    let mut results = Vec::new();
    for case in cases(quick) {
        if only.is_some_and(|o| !o.split(',').any(|x| x.eq_ignore_ascii_case(case.label))) {
            continue;
        }
        results.push(bench_case(&base, &run, &case).await);
    }
    let scale = if only.is_none() {
        Some(scaling(&base, &run, if quick { 4_000 } else { 12_000 }).await)
    } else {
        None
    };
    let rebalance = if only.is_none() || only == Some("rebalance") {
        Some(rebalance_redo(&base, &run, if quick { 10_000 } else { 30_000 }).await)
    } else {
        None
    };
    let backlog = if only.is_none() && !quick {
        Some(backlog_rss(&base, &run, 100_000).await)
    } else {
        None
    };

    let report = json!({
        "when": chrono::Utc::now().to_rfc3339(),
        "elapsed_secs": started.elapsed().as_secs_f64(),
        "machine": services::machine(),
        "versions": services::versions(),
        "consumer_defaults": { "batch_size": 500, "batch_mib": 16, "uploads_in_flight": 32, "batches_in_flight": "3, up to 6 while upload slots are idle", "linger_ms": 20, "fetch_queue_backoff_ms": 10, "object_store_client": "object_store (reqwest)" },
        "cases": results,
        "scaling": scale,
        "rebalance": rebalance,
        "backlog": backlog,
    });
    print_table(&report);
    write_report("bench", &report);
    println!("({:.0}s)", started.elapsed().as_secs_f64());
}

/// Writes `bench-results/<kind>-<time>.json` and `bench-results/<kind>-latest.json`.
/// The value after `flag` on the command line, when it is there and parses.
fn flag_value<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1)?.parse().ok()
}

fn write_report(kind: &str, report: &Value) {
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

fn print_table(r: &Value) {
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
    if !r["rebalance"].is_null() {
        println!(
            "rebalance 1->4->1: {} of {} records processed more than once ({:.2}%)",
            r["rebalance"]["processed_more_than_once"],
            r["rebalance"]["records"],
            r["rebalance"]["processed_more_than_once_share"]
                .as_f64()
                .unwrap()
                * 100.0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_settings_apply_the_defaults_when_the_database_is_not_configured() {
        let (settings, vars) = case_settings(&HashMap::new(), "bench-x", "imgstream_bench", 6);
        assert_eq!(settings.database_url.database_name(), "imgstream_bench");
        assert_eq!(settings.kafka.data_topic, "bench-x");
        assert!(vars["DATABASE_CONNECTION_STRING"].ends_with("/imgstream_bench"));
    }
}
