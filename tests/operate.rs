//! What an operator watches, against the real stack: the group's lag as `imgstream monitor`
//! exports it while no consumer is alive, and the consumer's end-to-end latency histogram,
//! both compared with what Kafka and the index hold.

mod common;

use common::{TestEnv, encode, valid_record};
use imgstream::domain::ImageFormat;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::time::Duration;

const PARTITIONS: [i32; 3] = [0, 1, 2];

/// The value of one sample in Prometheus text: `name` with no labels, or with `labels` among its
/// labels (e.g. `partition="1"`).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (metric, rest) = l.split_at(l.find([' ', '{']).unwrap_or(l.len()));
            metric == name && (labels.is_empty() || rest.starts_with('{') && rest.contains(labels))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn scrape(addr: &str) -> Option<String> {
    let r = reqwest::get(format!("http://{addr}/metrics")).await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

/// Lag in records per partition, as the monitor exports it.
fn exported_lag(text: &str) -> BTreeMap<i32, f64> {
    PARTITIONS
        .iter()
        .filter_map(|p| {
            let labels = format!("partition=\"{p}\"");
            Some((*p, sample(text, "imgstream_group_lag_records", &labels)?))
        })
        .collect()
}

/// Lag in records per partition, as the brokers hold it (end offset minus commit).
fn broker_lag(env: &TestEnv) -> BTreeMap<i32, f64> {
    imgstream::audit::group_offsets(&env.settings, &env.name)
        .unwrap()
        .iter()
        .map(|o| (o.partition, imgstream::group_lag::lag_records(o) as f64))
        .collect()
}

/// Sends `per_partition` valid records to each partition, stamped `timestamp_ms`.
async fn send_stamped(
    env: &TestEnv,
    producer: &FutureProducer,
    per_partition: usize,
    timestamp_ms: i64,
) {
    for p in PARTITIONS {
        for i in 0..per_partition {
            let record = valid_record(i as u64, ImageFormat::Png);
            let payload = encode(env, &record).await;
            let key = record.image_id.to_string();
            producer
                .send(
                    FutureRecord::to(&env.name)
                        .partition(p)
                        .key(&key)
                        .payload(&payload)
                        .timestamp(timestamp_ms),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("send");
        }
    }
}

/// Scrapes `addr` until `done` holds for a scrape (up to `limit`); returns the last scrape.
async fn scrape_until(addr: &str, limit: Duration, done: impl Fn(&str) -> bool) -> (bool, String) {
    let deadline = std::time::Instant::now() + limit;
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        if let Some(text) = scrape(addr).await {
            if done(&text) {
                return (true, text);
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (false, last)
}

#[tokio::test(flavor = "multi_thread")]
async fn group_lag_rises_while_the_consumers_are_dead_and_falls_to_zero_when_one_catches_up() {
    let env = TestEnv::new("grouplag").await;
    let producer = common::raw_producer(&env);
    let now_ms = || chrono::Utc::now().timestamp_millis();
    send_stamped(&env, &producer, 2, now_ms()).await;

    // A consumer stores everything and commits, then is SIGKILLed and not restarted.
    let mut consumer = env.spawn(&["consume"], "consumer");
    let committed = common::eventually(Duration::from_secs(90), || async {
        broker_lag(&env).values().all(|l| *l == 0.0)
    })
    .await;
    assert!(committed, "never committed:\n{}", env.read_log("consumer"));
    common::signal(consumer.child(), 9);
    while consumer.is_running() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let addr = format!("127.0.0.1:{}", common::free_port());
    let _monitor = env.spawn(
        &["monitor", "--metrics-addr", &addr, "--interval", "1"],
        "monitor",
    );
    let (zero, text) = scrape_until(&addr, Duration::from_secs(30), |t| {
        exported_lag(t).values().filter(|l| **l == 0.0).count() == PARTITIONS.len()
    })
    .await;
    assert!(
        zero,
        "no zero lag exported:\n{text}\n{}",
        env.read_log("monitor")
    );

    // Records stamped 30 s ago arrive: lag rises on every partition, and its age is theirs.
    let stamped = now_ms() - 30_000;
    send_stamped(&env, &producer, 3, stamped).await;
    let (risen, text) = scrape_until(&addr, Duration::from_secs(30), |t| {
        exported_lag(t).values().filter(|l| **l == 3.0).count() == PARTITIONS.len()
    })
    .await;
    assert!(risen, "lag never reached 3 per partition:\n{text}");
    assert_eq!(exported_lag(&text), broker_lag(&env));
    let truth = (now_ms() - stamped) as f64 / 1000.0;
    for p in PARTITIONS {
        let seconds = sample(
            &text,
            "imgstream_group_lag_seconds",
            &format!("partition=\"{p}\""),
        )
        .unwrap_or_else(|| panic!("no lag in seconds:\n{text}\n{}", env.read_log("monitor")));
        assert!(
            (seconds - truth).abs() <= 2.0,
            "partition {p}: {seconds} s exported, {truth} s true"
        );
    }

    // More records: lag keeps rising with them, per partition.
    send_stamped(&env, &producer, 2, now_ms()).await;
    let (rose, text) = scrape_until(&addr, Duration::from_secs(30), |t| {
        exported_lag(t).values().filter(|l| **l == 5.0).count() == PARTITIONS.len()
    })
    .await;
    assert!(rose, "lag never reached 5 per partition:\n{text}");
    assert_eq!(exported_lag(&text), broker_lag(&env));
    assert!(sample(&text, "imgstream_group_lag_seconds", "partition=\"0\"") >= Some(30.0));

    // A consumer catches up: lag falls to 0 in records and in seconds.
    let catching_up = env.spawn(&["consume", "--until-idle", "5"], "catching-up");
    let (caught_up, text) = scrape_until(&addr, Duration::from_secs(90), |t| {
        PARTITIONS.iter().all(|p| {
            let labels = format!("partition=\"{p}\"");
            sample(t, "imgstream_group_lag_records", &labels) == Some(0.0)
                && sample(t, "imgstream_group_lag_seconds", &labels) == Some(0.0)
        })
    })
    .await;
    assert!(
        caught_up,
        "lag never fell to 0:\n{text}\n{}",
        env.read_log("catching-up")
    );
    let status = catching_up
        .wait_within(Duration::from_secs(120))
        .expect("the consumer did not exit");
    assert!(status.success(), "{}", env.read_log("catching-up"));
    assert_eq!(env.counts().await, (21, 21));
    assert_eq!(broker_lag(&env).values().sum::<f64>(), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_end_to_end_histogram_counts_every_record_the_index_holds() {
    let env = TestEnv::new("endtoend").await;
    env.produce(25, &[]);
    let addr = format!("127.0.0.1:{}", common::free_port());
    let consumer = env.spawn(
        &["consume", "--until-idle", "6", "--metrics-addr", &addr],
        "consumer",
    );
    let (stored, text) = scrape_until(&addr, Duration::from_secs(90), |t| {
        sample(t, "imgstream_records_stored_total", "") == Some(25.0)
    })
    .await;
    assert!(
        stored,
        "never stored 25:\n{text}\n{}",
        env.read_log("consumer")
    );
    let (_, rows) = env.counts().await;
    assert_eq!(rows, 25);
    assert_eq!(
        sample(&text, "imgstream_record_end_to_end_seconds_count", ""),
        Some(rows as f64),
        "{text}"
    );
    // Every record was produced moments ago: well under the last bucket.
    let sum = sample(&text, "imgstream_record_end_to_end_seconds_sum", "").unwrap();
    assert!(sum > 0.0 && sum / (rows as f64) < 60.0, "{text}");
    for stage in ["check", "upload", "index", "commit"] {
        let labels = format!("stage=\"{stage}\"");
        assert!(
            sample(
                &text,
                "imgstream_batch_stage_duration_seconds_count",
                &labels
            ) >= Some(1.0),
            "{stage}: {text}"
        );
    }
    assert!(
        text.contains(&format!(
            "imgstream_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(
        sample(&text, "process_cpu_seconds_total", "") > Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "process_resident_memory_bytes", "") > Some(1e6),
        "{text}"
    );
    assert!(sample(&text, "process_open_fds", "") > Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "imgstream_outages_total", "service=\"postgresql\""),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "imgstream_rebalances_total", "kind=\"assign\"") >= Some(1.0),
        "{text}"
    );
    let status = consumer
        .wait_within(Duration::from_secs(120))
        .expect("the consumer did not exit");
    assert!(status.success(), "{}", env.read_log("consumer"));
}
