//! `make soak`: a long run at half the raw PUT ceiling with everything that goes wrong in a day
//! (not part of `make test`). One consumer stays up the whole time (its RSS is sampled every 10 s);
//! a second is SIGKILLed and restarted every two minutes (a fifteenth of the run); MinIO (30 s, at
//! a fifth of the run) and PostgreSQL (20 s, at two fifths) each have an outage; a third consumer
//! joins at half-time and leaves (SIGTERM) at three fifths. At the end the services must hold exactly one object and one
//! row per record produced, and nothing dead-lettered. Results: `docs/soak-<date>.json`.
//!
//! Images are 2 KiB: at half the ceiling, 16 KiB images would need more disk than these machines
//! have for thirty minutes (Kafka and MinIO each keep a copy).

use crate::ceilings::store_ceiling;
use crate::control::{binary, case_settings, cleanup, fresh_database, setup, signal};
use crate::fixtures::{image_pool, preload};
use imgstream::domain::ImageFormat;
use imgstream::wiring;
use rdkafka::consumer::Consumer;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// VmRSS of a process in MiB, from /proc.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn stack(service: &str, verb: &str) {
    let ok = Command::new(format!("scripts/stack/{service}.sh"))
        .arg(verb)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{service} {verb} failed");
}

/// Stops `service` for `secs` and starts it again, each step noted in `events`.
async fn outage(
    note: impl Fn(&mut Vec<Value>, &str),
    events: &mut Vec<Value>,
    service: &str,
    name: &str,
    secs: u64,
) {
    note(events, &format!("{name} stopped for {secs} s"));
    stack(service, "stop");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stack(service, "start");
    note(events, &format!("{name} started again"));
}

struct Consumers {
    vars: HashMap<String, String>,
    logs: PathBuf,
    spawned: usize,
}

impl Consumers {
    fn spawn(&mut self, name: &str) -> Child {
        self.spawned += 1;
        let log = std::fs::File::create(self.logs.join(format!("{name}-{}.log", self.spawned)))
            .expect("consumer log");
        Command::new(binary())
            .args(["consume", "--until-idle", "20", "--json"])
            .env_clear()
            .envs(&self.vars)
            .env("IMGSTREAM_LOG", "info,rdkafka=warn,sqlx=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn consumer")
    }
}

fn summary(child: Child) -> Value {
    let out = child.wait_with_output().expect("consumer");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The sum of the end offsets of `topic`'s partitions: every record it holds.
fn records_in(settings: &imgstream::config::Settings, topic: &str) -> i64 {
    let reader = wiring::offsets_reader(settings).unwrap();
    let metadata = reader
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (low, high) = reader
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

pub async fn soak(base: &HashMap<String, String>, run: &str, minutes: u64) -> Value {
    let total = Duration::from_secs(minutes * 60);
    let (settings, vars) = case_settings(base, &format!("bench-soak-{run}"), "imgstream_bench", 6);
    fresh_database(&settings).await;
    setup(&settings).await;
    let pool = image_pool(2 << 10, ImageFormat::Jpeg, 16);
    eprintln!("[soak] measuring the PUT ceiling for 2 KiB images");
    let (ceiling, _) = store_ceiling(&settings, &pool, 4000, 32).await;
    let rate = ceiling / 2.0;
    let records = (rate * total.as_secs_f64()) as usize;
    eprintln!("[soak] ceiling {ceiling:.0}/s: {records} records at {rate:.0}/s for {minutes} min");

    let logs = Path::new("bench-results").join(format!("soak-logs-{run}"));
    std::fs::create_dir_all(&logs).unwrap();
    let mut consumers = Consumers {
        vars,
        logs,
        spawned: 0,
    };
    let producing = {
        let settings = settings.clone();
        tokio::spawn(async move { preload(&settings, &pool, records, Some(rate)).await })
    };
    let started = Instant::now();
    let steady = consumers.spawn("steady");
    let mut killed = consumers.spawn("killed");
    let mut visitor: Option<Child> = None;
    let mut events: Vec<Value> = Vec::new();
    let mut rss: Vec<(f64, f64)> = Vec::new();
    let note = |events: &mut Vec<Value>, what: &str| {
        eprintln!("[soak] {:>6.0}s {what}", started.elapsed().as_secs_f64());
        events.push(json!({ "at_secs": started.elapsed().as_secs(), "event": what }));
    };
    let every_kill = total / 15;
    let mut next_kill = every_kill;
    // The outages come early, so that the second half shows the consumer's memory after the
    // backlogs they leave (librdkafka's prefetch fills up to its bound) with nothing new.
    let (minio_at, postgres_at) = (total / 5, total * 2 / 5);
    let (join_at, leave_at) = (total / 2, total * 3 / 5);
    let (mut minio_done, mut postgres_done) = (false, false);
    let mut next_sample = Duration::ZERO;
    let mut kills = 0;
    while started.elapsed() < total {
        let now = started.elapsed();
        if now >= next_sample {
            if let Some(mib) = rss_mib(steady.id()) {
                rss.push((now.as_secs_f64(), mib));
            }
            next_sample += Duration::from_secs(10);
        }
        if now >= next_kill {
            signal(&killed, 9);
            let _ = killed.wait();
            killed = consumers.spawn("killed");
            kills += 1;
            note(&mut events, "SIGKILL one consumer, restarted at once");
            next_kill = now + every_kill;
        }
        if visitor.is_none() && now >= join_at && now < leave_at {
            visitor = Some(consumers.spawn("visitor"));
            note(&mut events, "a third consumer joins");
        }
        if now >= leave_at
            && let Some(v) = visitor.take()
        {
            signal(&v, 15);
            let s = summary(v);
            note(
                &mut events,
                &format!("the third consumer leaves (SIGTERM): {s}"),
            );
        }
        if !minio_done && now >= minio_at {
            minio_done = true;
            outage(&note, &mut events, "minio", "MinIO", 30).await;
        }
        if !postgres_done && now >= postgres_at {
            postgres_done = true;
            outage(&note, &mut events, "postgres", "PostgreSQL", 20).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let produce_rate = producing.await.unwrap().records_per_sec;
    note(&mut events, "production ended");
    let index = wiring::index(&settings).await.unwrap();
    let drained = Instant::now();
    while (index.count().await.unwrap_or(0) as usize) < records
        && drained.elapsed() < Duration::from_secs(1200)
    {
        if let Some(mib) = rss_mib(steady.id()) {
            rss.push((started.elapsed().as_secs_f64(), mib));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    note(
        &mut events,
        "every record indexed (or the 20 min drain limit passed)",
    );
    // Both exit on their own once the group is caught up and quiet.
    let steady_summary = summary(steady);
    let _ = summary(killed);
    let rows = index.count().await.unwrap_or(-1);
    index.close().await;
    eprintln!("[soak] counting objects");
    let objects = wiring::store(&settings)
        .unwrap()
        .list("images/")
        .await
        .map_or(-1, |l| l.len() as i64);
    let in_topic = records_in(&settings, &settings.kafka.data_topic);
    let dead_letters = records_in(&settings, &settings.kafka.dlq_topic);
    // A leak grows with time at a steady load: the third quarter against the fourth, both after
    // the outages. The first quarter (after a minute of warm-up) is there for comparison.
    let span = total.as_secs_f64();
    let window = |from: f64, to: f64| {
        let mut values: Vec<f64> = rss
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, m)| *m)
            .collect();
        median(&mut values)
    };
    let rss_first = window(60.0, span / 4.0);
    let rss_third = window(span / 2.0, span * 3.0 / 4.0);
    let rss_last = window(span * 3.0 / 4.0, span + 1.0);
    let exact = objects == records as i64 && rows == records as i64 && in_topic == records as i64;
    cleanup(&settings).await;
    json!({
        "minutes": minutes,
        "image_bytes": 2 << 10,
        "put_ceiling_per_sec": ceiling,
        "target_rate_per_sec": rate,
        "produced_rate_per_sec": produce_rate,
        "records": records,
        "in_topic": in_topic,
        "objects": objects,
        "rows": rows,
        "dead_letters": dead_letters,
        "exactly_once": exact && dead_letters == 0,
        "consumer_kills": kills,
        "steady_consumer": steady_summary,
        "steady_rss_mib_median_first_quarter": rss_first,
        "steady_rss_mib_median_third_quarter": rss_third,
        "steady_rss_mib_median_last_quarter": rss_last,
        "steady_rss_growth_last_over_third_quarter": rss_last / rss_third,
        "steady_rss_mib": rss.iter().map(|(t, m)| json!([t.round(), (m * 10.0).round() / 10.0])).collect::<Vec<_>>(),
        "events": events,
        "elapsed_secs": started.elapsed().as_secs_f64(),
    })
}
