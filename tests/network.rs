//! Network faults between the consumer and each service, injected by a real proxy (Toxiproxy):
//! added latency with jitter, a bandwidth cap, connections reset mid-request, a black hole that
//! swallows every byte for longer than the connect timeout, and a slow close. Records keep coming
//! meanwhile. Each run ends with exact counts from the services, nothing dead-lettered because of
//! the network, and the outage logged as an outage.

mod common;

use common::runs::{assert_exactly_once, rows, stop_once_stored};
use common::toxiproxy::{Proxy, Toxiproxy};
use common::{TestEnv, read_topic};
use serde_json::json;
use std::time::Duration;

/// Every fault in turn, each held for a few seconds, with a pause to recover in between.
async fn through_every_fault(proxy: &Proxy<'_>) {
    let faults = [
        ("latency", json!({"latency": 300, "jitter": 200}), 6),
        // KB/s: a 100 KB image takes over a second.
        ("bandwidth", json!({"rate": 64}), 6),
        // Every connection reset 200 ms after it opens: requests cut off mid-way.
        ("reset_peer", json!({"timeout": 200}), 4),
        // A black hole: bytes are swallowed and nothing is closed, for longer than the 10 s
        // connect timeout.
        ("timeout", json!({"timeout": 0}), 15),
        ("slow_close", json!({"delay": 3000}), 6),
    ];
    for (kind, attributes, secs) in faults {
        eprintln!("{kind} for {secs}s");
        proxy.add(kind, attributes).await;
        tokio::time::sleep(Duration::from_secs(secs)).await;
        proxy.remove(kind).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Produces for a while, consumes with `variable` pointed through the proxy, and runs the faults
/// mid-run; then checks the services hold each record exactly once.
async fn run_through_network_faults(label: &str, upstream: &str, variable: &str) {
    let toxiproxy = Toxiproxy::start().await;
    let proxy = toxiproxy.proxy(label, "127.0.0.1:0", upstream).await;
    let env = TestEnv::new(label).await;
    // The stack's defaults, unless the environment says otherwise.
    let direct = env
        .vars
        .get(variable)
        .cloned()
        .unwrap_or_else(|| upstream.to_string());
    assert!(
        direct.contains(upstream),
        "{variable}={direct} is not {upstream}"
    );
    let proxied = direct.replace(upstream, &proxy.listen);
    // The stores' outages are the pipeline's own: retried with backoff, logged when they start
    // and end.
    faults_mid_run(
        &env,
        &proxy,
        &[(variable, &proxied)],
        &["outage started", "outage ended"],
    )
    .await;
}

/// The run itself: a producer at a steady rate for 50 s, a consumer (with `consumer_vars`), the
/// faults once records flow, then exact counts, and each of `reported` in the consumer's log.
async fn faults_mid_run(
    env: &TestEnv,
    proxy: &Proxy<'_>,
    consumer_vars: &[(&str, &str)],
    reported: &[&str],
) {
    let producer = env.spawn_apart(
        &["produce", "--duration", "50s", "--rate", "20", "--json"],
        "producer",
        &[],
    );
    // Idle must outlast every fault: between imgstream and Kafka the 15 s black hole silences the
    // producer as well, and with it back a little later, 20 s of quiet ended a run mid-faults.
    let mut consumer = env.spawn_apart(
        &["consume", "--until-idle", "40", "--json"],
        "consumer",
        consumer_vars,
    );
    // Records flowing, so the faults land mid-run. (A producer starved of CPU makes as few as one
    // image a second; the run means as much with fewer.)
    let started =
        common::eventually(Duration::from_secs(90), || async { rows(env).await >= 10 }).await;
    assert!(started, "nothing stored:\n{}", env.read_log("consumer"));

    through_every_fault(proxy).await;
    assert!(
        consumer.is_running(),
        "the consumer exited during the faults:\n{}",
        env.read_log("consumer")
    );
    let status = producer.wait_within(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        env.read_log("producer")
    );
    let summary: serde_json::Value =
        serde_json::from_str(env.read_out("producer").trim()).expect("produce --json");
    let delivered = summary["delivered"].as_u64().unwrap();
    assert_eq!(summary["generated"], delivered, "{summary}");
    stop_once_stored(env, consumer, delivered as i64, "consumer").await;
    let log = env.read_log("consumer");

    assert_eq!(
        read_topic(env, &env.settings.kafka.data_topic).len() as u64,
        delivered,
        "the topic holds other than the acknowledged records"
    );
    assert_exactly_once(env, delivered as usize).await;
    for line in reported {
        assert!(
            log.contains(line),
            "the faults went unreported (no {line:?}):\n{log}"
        );
    }
    eprintln!("{delivered} records stored exactly once through the network faults");
}

#[tokio::test(flavor = "multi_thread")]
async fn network_faults_between_the_consumer_and_minio_lose_and_double_nothing() {
    run_through_network_faults("net-s3", "127.0.0.1:9000", "MINIO_CONNECTION_STRING").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn network_faults_between_the_consumer_and_postgresql_lose_and_double_nothing() {
    run_through_network_faults("net-pg", "127.0.0.1:5432", "DATABASE_CONNECTION_STRING").await;
}

/// Kafka through the proxy needs the broker to advertise the proxy: a single-node cluster of the
/// test's own (ports 29092-29093, data apart from the stack's) whose plaintext listener advertises
/// 127.0.0.1:39092, where the proxy listens. Every connection of the producer and the consumer,
/// bootstrap and after, passes through the faults. `make test` stops this broker afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn network_faults_between_imgstream_and_kafka_lose_and_double_nothing() {
    let toxiproxy = Toxiproxy::start().await;
    let proxy = toxiproxy
        .proxy("net-kafka", "127.0.0.1:39092", "127.0.0.1:29092")
        .await;
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/stack/kafka.sh");
    let started = std::process::Command::new(script)
        .arg("start")
        .env("KAFKA_PORT_BASE", "29090")
        .env("KAFKA_ADVERTISED_PORT_BASE", "39090")
        .status()
        .unwrap();
    assert!(started.success(), "the proxied broker did not start");
    let env = TestEnv::with(
        "net-kafka",
        &[("KAFKA_BOOTSTRAP_SERVERS", proxy.listen.as_str())],
    )
    .await;
    // librdkafka says nothing until its request timeouts pass; the consumer notices that records
    // stopped while some wait.
    faults_mid_run(
        &env,
        &proxy,
        &[],
        &[
            "no records from kafka",
            "records from kafka are flowing again",
        ],
    )
    .await;
}
