//! What the archive's lifetime costs a running consumer (`--only erasure-check`, `--only
//! retain-latency`; not in the default run, the second seeds 200,000 rows and objects):
//! - [`erasure_check`]: the erasure query every batch asks (and its index transaction asks
//!   again), with no erasure recorded against 1,000: the consumer's throughput and CPU.
//! - [`retain_latency`]: produce-to-index latency of a paced consumer while `imgstream retain`
//!   removes 200,000 rows and their objects, against the same run without it.
//!
//! Each has databases of its own (`imgstream_bench_erasures_*`, `imgstream_bench_retain`),
//! dropped and made afresh, so that it never drops one another run is using.

use crate::control::{
    binary, case_settings, cleanup, consumer_log, fresh_database, run_consumers, settle_disk,
    setup, signal,
};
use crate::fixtures::{image_pool, preload, preload_while};
use crate::report::percentile;
use imgstream::config::Settings;
use imgstream::domain::{ErasureProbe, ImageFormat, IndexEntry, object_key, sha256_hex};
use imgstream::pipeline::RunSummary;
use imgstream::wiring;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The scenarios' names for `--only`.
pub const NAMES: [&str; 2] = ["erasure-check", "retain-latency"];

/// Sizes of one run: the full measurement, or a tiny one that proves the scenario works.
pub struct Sizes {
    /// Records drained per configuration (erasure-check).
    pub drained: usize,
    /// Erasures recorded in the second configuration.
    pub erasures: usize,
    /// Rows (and objects) older than the retention, for `retain` to remove.
    pub old_rows: usize,
    /// Paced records per second, and the baseline's length (retain-latency).
    pub rate: f64,
    pub baseline: Duration,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        match quick {
            false => Sizes {
                drained: 12_000,
                erasures: 1_000,
                old_rows: 200_000,
                rate: 50.0,
                baseline: Duration::from_secs(120),
            },
            true => Sizes {
                drained: 600,
                erasures: 1_000,
                old_rows: 2_000,
                rate: 20.0,
                baseline: Duration::from_secs(10),
            },
        }
    }
}

/// Drain rounds per configuration, alternating (A B B A …) so that drift in the machine's
/// speed falls on both alike.
const ROUNDS: usize = 4;

/// Records `n` finished erasures that cover none of the bench's records, in the proportions a
/// long-lived archive might hold: nine in ten of a customer, the rest of one image by id, and one
/// retention ten years back.
async fn record_erasures(settings: &Settings, n: usize) {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(settings.database_url.expose())
        .await
        .unwrap();
    let customers = (n * 9 / 10) as i64;
    let images = n as i64 - customers - 1;
    for sql in [
        "INSERT INTO erasures (kind, customer_id, cutoff, requested_by, finished_at)
         SELECT 'customer', 'gone-' || i, now(), 'bench', now() FROM generate_series(1, $1) i",
        "INSERT INTO erasures (kind, image_ids, requested_by, finished_at)
         SELECT 'images', ARRAY[gen_random_uuid()], 'bench', now() FROM generate_series(1, $1) i",
    ] {
        let count = if sql.contains("'customer'") {
            customers
        } else {
            images
        };
        sqlx::query(sql).bind(count).execute(&mut db).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO erasures (kind, cutoff, before_given, requested_by, finished_at)
         VALUES ('retention', now() - interval '10 years', true, 'bench', now())",
    )
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query("ANALYZE erasures")
        .execute(&mut db)
        .await
        .unwrap();
}

/// Median milliseconds of the erasure question for one batch of `probes`, asked `times` times.
async fn erasure_query_ms(settings: &Settings, probes: &[ErasureProbe], times: usize) -> f64 {
    let index = wiring::index(settings).await.unwrap();
    let mut took = Vec::with_capacity(times);
    for _ in 0..times {
        let started = Instant::now();
        index.erased_among(probes).await.unwrap();
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    index.close().await;
    took.sort_by(f64::total_cmp);
    percentile(&took, 0.5)
}

/// The consumer with no erasure recorded against `sizes.erasures` of them: the same records
/// (one topic, a group, bucket and database for each), drained in alternating rounds.
pub async fn erasure_check(base: &HashMap<String, String>, run: &str, sizes: &Sizes) -> Value {
    let label = "[erasure-check]";
    let none_name = format!("bench-erasures-0-{run}");
    let (none, none_vars) = case_settings(base, &none_name, "imgstream_bench_erasures_none", 6);
    let (many, mut many_vars) = case_settings(
        base,
        &format!("bench-erasures-{}-{run}", sizes.erasures),
        "imgstream_bench_erasures_many",
        6,
    );
    many_vars.insert("KAFKA_DATA_TOPIC".into(), none.kafka.data_topic.clone());
    let mut many = many;
    many.kafka.data_topic = none.kafka.data_topic.clone();
    for settings in [&none, &many] {
        fresh_database(settings).await;
        setup(settings).await;
    }
    record_erasures(&many, sizes.erasures).await;
    let per_round = sizes.drained / ROUNDS;
    eprintln!("{label} preloading {} records", per_round * ROUNDS);
    let pool = image_pool(16 << 10, ImageFormat::Jpeg, 16);
    preload(&none, &pool, per_round * ROUNDS, None).await;

    let max = per_round.to_string();
    let mut rounds: [Vec<RunSummary>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let vars = [&none_vars, &many_vars][which];
            eprintln!(
                "{label} round {}: {} erasures",
                round + 1,
                [0, sizes.erasures][which]
            );
            settle_disk();
            let (summaries, _) = run_consumers(vars, 1, &["--max", &max]);
            let s = summaries.into_iter().next().expect("one consumer");
            assert_eq!(s.stored as usize, per_round, "round {round}: {s:?}");
            rounds[which].push(s);
        }
    }
    // The question itself, for a batch of the default size of records nobody erased.
    let probes: Vec<ErasureProbe> = (0
        ..imgstream::pipeline::PipelineOptions::DEFAULT_BATCH_RECORDS)
        .map(|i| ErasureProbe {
            image_id: uuid::Uuid::new_v4(),
            customer_id: "bench".into(),
            created_at: chrono::Utc::now() - chrono::Duration::seconds(i as i64),
        })
        .collect();
    let query_ms = [
        erasure_query_ms(&none, &probes, 50).await,
        erasure_query_ms(&many, &probes, 50).await,
    ];
    cleanup(&none).await;
    cleanup(&many).await;

    let describe = |which: usize| {
        let runs = &rounds[which];
        let mut ips: Vec<f64> = runs.iter().map(|s| s.busy_images_per_sec).collect();
        ips.sort_by(f64::total_cmp);
        let mut cpu: Vec<f64> = runs
            .iter()
            .map(|s| s.cpu_secs / s.stored as f64 * 1000.0)
            .collect();
        cpu.sort_by(f64::total_cmp);
        let erasures = [0, sizes.erasures][which];
        json!({
            "erasures": erasures,
            "images_per_sec_median": percentile(&ips, 0.5),
            "cpu_secs_per_1000_images_median": percentile(&cpu, 0.5),
            "erasure_query_ms_per_batch": query_ms[which],
            "rounds": runs.iter().map(|s| json!({
                "records": s.stored, "batches": s.batches, "images_per_sec": s.busy_images_per_sec,
                "cpu_secs": s.cpu_secs,
            })).collect::<Vec<_>>(),
        })
    };
    let (without, with) = (describe(0), describe(1));
    let ratio = |key: &str| {
        with[key].as_f64().unwrap_or(f64::NAN) / without[key].as_f64().unwrap_or(f64::NAN)
    };
    json!({
        "scenario": "erasure-check",
        "image_bytes": 16 << 10,
        "records_per_round": per_round,
        "without": without,
        "with": with,
        "throughput_with_over_without": ratio("images_per_sec_median"),
        "cpu_per_image_with_over_without": ratio("cpu_secs_per_1000_images_median"),
    })
}

/// Seeds `n` rows created 500 days ago, each with an object of `bytes`, as a consumer would
/// have stored them (the object first, then the row).
async fn seed_old_images(settings: &Settings, n: usize, bytes: &[u8]) {
    use futures::StreamExt;
    let store = wiring::store(settings).unwrap();
    let index = wiring::index(settings).await.unwrap();
    let sha = sha256_hex(bytes);
    let data = bytes::Bytes::copy_from_slice(bytes);
    let created = chrono::Utc::now() - chrono::Duration::days(500);
    let started = Instant::now();
    for chunk in 0..n.div_ceil(1000) {
        let entries: Vec<IndexEntry> = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| {
                let id = uuid::Uuid::new_v4();
                IndexEntry {
                    image_id: id,
                    object_key: object_key(&id),
                    bucket: settings.store.bucket.clone(),
                    sha256: sha.clone(),
                    size_bytes: bytes.len() as i64,
                    width: 16,
                    height: 16,
                    content_type: "image/png".into(),
                    customer_id: format!("old-{}", i % 100),
                    source_id: "cam-old".into(),
                    created_at: created + chrono::Duration::milliseconds(i as i64),
                    kafka_topic: settings.kafka.data_topic.clone(),
                    kafka_partition: 0,
                    kafka_offset: i as i64,
                }
            })
            .collect();
        let puts: Vec<_> = futures::stream::iter(&entries)
            .map(|e| store.put_image(&e.object_key, data.clone(), "image/png", &sha))
            .buffer_unordered(32)
            .collect()
            .await;
        for put in puts {
            put.unwrap();
        }
        index.insert_batch(&entries).await.unwrap();
        if chunk % 20 == 19 {
            eprintln!(
                "[retain-latency] seeded {} of {n} ({:.0}/s)",
                (chunk + 1) * 1000,
                ((chunk + 1) * 1000) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    index.close().await;
}

/// Produce-to-index latencies (seconds, sorted) of the records created in `[from, to)`.
async fn latencies_between(
    settings: &Settings,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Vec<f64> {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(settings.database_url.expose())
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT extract(epoch FROM stored_at - created_at)::float8 FROM images
         WHERE created_at >= $1 AND created_at < $2 ORDER BY 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut db)
    .await
    .unwrap()
}

/// One paced run: a consumer that runs throughout, records at `rate` for as long as
/// `more(records so far)` says (with `retain` started beside them if asked), then the latencies
/// of the records produced while retain ran (or all of them without it).
async fn paced_run(
    settings: &Settings,
    vars: &HashMap<String, String>,
    pool: &[(imgstream::generate::ImageSpec, Vec<u8>)],
    rate: f64,
    baseline: Duration,
    with_retain: bool,
) -> Value {
    let consumer = Command::new(binary())
        .args(["consume", "--json"])
        .env_clear()
        .envs(vars)
        .env("IMGSTREAM_LOG", consumer_log())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn consumer");
    tokio::time::sleep(Duration::from_secs(4)).await; // joined and assigned before the first record
    let from = chrono::Utc::now();
    let retaining = Arc::new(AtomicBool::new(with_retain));
    let retain = with_retain.then(|| {
        let child = Command::new(binary())
            .args(["retain", "--json"])
            .env_clear()
            .envs(vars)
            .env("IMGSTREAM_RETENTION", "400d")
            .env("IMGSTREAM_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn retain");
        let retaining = retaining.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let out = child.wait_with_output().unwrap();
            retaining.store(false, Ordering::SeqCst);
            (out, started.elapsed(), chrono::Utc::now())
        })
    });
    let minimum = (rate * baseline.as_secs_f64()) as usize;
    let paced = preload_while(settings, pool, Some(rate), |i| {
        i < minimum || retaining.load(Ordering::SeqCst)
    })
    .await;
    let produced_until = chrono::Utc::now();
    // Every record stored before the consumer is stopped (SIGTERM: it finishes and commits).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = latencies_between(settings, from, produced_until)
            .await
            .len();
        if n >= (paced.ack_secs.len()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let index = wiring::index(settings).await.unwrap();
    let rows_at_end = index.count().await.unwrap_or(0);
    index.close().await;
    signal(&consumer, 15);
    let out = tokio::task::block_in_place(|| consumer.wait_with_output().unwrap());
    let summary: Option<RunSummary> = serde_json::from_slice(&out.stdout).ok();
    let (retain_report, window_end, retain_secs) = match retain {
        Some(handle) => {
            let (out, took, ended) = tokio::task::block_in_place(|| handle.join().unwrap());
            assert!(out.status.success(), "retain failed: {:?}", out.status);
            let report: Value = serde_json::from_slice(&out.stdout).expect("retain --json");
            (report, ended.min(produced_until), Some(took.as_secs_f64()))
        }
        None => (Value::Null, produced_until, None),
    };
    let latencies = latencies_between(settings, from, window_end).await;
    let rows_removed = retain_report["erasure"]["rows_removed"].as_f64();
    json!({
        "retain": with_retain,
        "records_produced": paced.ack_secs.len(),
        "records_in_window": latencies.len(),
        "window_secs": (window_end - from).num_milliseconds() as f64 / 1000.0,
        "p50_ms": percentile(&latencies, 0.5) * 1000.0,
        "p99_ms": percentile(&latencies, 0.99) * 1000.0,
        "max_ms": latencies.last().copied().unwrap_or(f64::NAN) * 1000.0,
        "produce_ack_p99_ms": percentile(&paced.ack_secs, 0.99) * 1000.0,
        "consumer_cpu_secs": summary.as_ref().map(|s| s.cpu_secs),
        "rows_at_end": rows_at_end,
        "retain_secs": retain_secs,
        "retain_rows_removed": rows_removed,
        "retain_rows_per_sec": rows_removed.zip(retain_secs).map(|(r, s)| r / s),
        "retain_finished": retain_report.get("finished"),
    })
}

/// A paced consumer's produce-to-index latency without `retain`, then while `retain` removes
/// `sizes.old_rows` rows and their objects, on the same index (the old rows there in both).
pub async fn retain_latency(base: &HashMap<String, String>, run: &str, sizes: &Sizes) -> Value {
    let label = "[retain-latency]";
    let (settings, vars) = case_settings(
        base,
        &format!("bench-retain-{run}"),
        "imgstream_bench_retain",
        6,
    );
    fresh_database(&settings).await;
    setup(&settings).await;
    let old = image_pool(1 << 10, ImageFormat::Png, 1);
    eprintln!(
        "{label} seeding {} rows and objects 500 days old",
        sizes.old_rows
    );
    let seeding = Instant::now();
    seed_old_images(&settings, sizes.old_rows, &old[0].1).await;
    let seed_secs = seeding.elapsed().as_secs_f64();
    let pool = image_pool(16 << 10, ImageFormat::Jpeg, 16);
    settle_disk();
    eprintln!(
        "{label} without retain: {} records/s for {} s",
        sizes.rate,
        sizes.baseline.as_secs()
    );
    let without = paced_run(&settings, &vars, &pool, sizes.rate, sizes.baseline, false).await;
    settle_disk();
    eprintln!(
        "{label} with retain removing {} rows: {} records/s until it ends",
        sizes.old_rows, sizes.rate
    );
    let with = paced_run(&settings, &vars, &pool, sizes.rate, sizes.baseline, true).await;
    cleanup(&settings).await;
    let p99 = |v: &Value| v["p99_ms"].as_f64().unwrap_or(f64::NAN);
    json!({
        "scenario": "retain-latency",
        "old_rows": sizes.old_rows,
        "seed_secs": seed_secs,
        "paced_images_per_sec": sizes.rate,
        "image_bytes": 16 << 10,
        "without": without,
        "with": with,
        "p99_with_over_without": p99(&with) / p99(&without),
    })
}
