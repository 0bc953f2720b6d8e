//! A replicated Kafka cluster losing brokers mid-run, after Kafka's own `replication_test`: three
//! brokers, replication 3, `min.insync.replicas` 2, the idempotent producer with acks=all.
//! Partition leaders are killed (SIGKILL) and restarted five times, then the active controller
//! once, while records are produced and consumed. Every acknowledged record ends as one object and
//! one row, the topic holds no duplicate from the producer, and the consumer never exits on its
//! own.
//!
//! The cluster runs beside the stack's own broker, on ports 19092-19097 with its own data
//! (`KAFKA_BROKERS=3 KAFKA_PORT_BASE=19090 scripts/stack/kafka.sh`). The test starts it (an
//! idempotent start); `make test` stops it after the fault tests.

mod common;

use common::runs::{assert_exactly_once, rows, stop_once_stored};
use common::{SIGTERM, TestEnv, read_topic, signal, stdout};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BOOTSTRAP: &str = "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096";

/// Runs `scripts/stack/kafka.sh` for the three-node cluster.
fn cluster(args: &[&str]) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/stack/kafka.sh");
    Command::new(script)
        .args(args)
        .env("KAFKA_BROKERS", "3")
        .env("KAFKA_PORT_BASE", "19090")
        .output()
        .expect("kafka.sh")
}

fn cluster_ok(args: &[&str]) -> String {
    let out = cluster(args);
    assert!(
        out.status.success(),
        "kafka.sh {args:?} failed:\n{}",
        common::stderr(&out)
    );
    stdout(&out)
}

/// Per partition of `topic`: (partition, leader node, in-sync replicas).
fn partitions(topic: &str) -> Vec<(i32, i32, usize)> {
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .set("log_level", "0")
        .create()
        .unwrap();
    let Ok(metadata) = client.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return Vec::new();
    };
    metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), p.leader(), p.isr().len()))
        .collect()
}

/// Waits until every partition of the data and dead-letter topics has a leader and all three
/// replicas in sync: only then may the next broker go, or acks=all could not be met.
async fn wait_fully_replicated(env: &TestEnv) {
    let topics = [
        &env.settings.kafka.data_topic,
        &env.settings.kafka.dlq_topic,
    ];
    let started = Instant::now();
    let replicated = common::eventually(Duration::from_secs(180), || async {
        topics.iter().all(|t| {
            let ps = partitions(t);
            !ps.is_empty() && ps.iter().all(|(_, leader, isr)| *leader >= 1 && *isr == 3)
        })
    })
    .await;
    assert!(
        replicated,
        "the cluster did not heal within 180 s: {:?}",
        partitions(&env.settings.kafka.data_topic)
    );
    eprintln!("fully replicated again after {:?}", started.elapsed());
}

/// Kills `node`, lets the run go on without it for a while, and restarts it.
async fn bounce(env: &TestEnv, node: i32, why: &str) {
    let before = rows(env).await;
    cluster_ok(&["kill-node", &node.to_string()]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    eprintln!(
        "killed node {node} ({why}); {} rows stored while it was down",
        rows(env).await - before
    );
    cluster_ok(&["start"]);
    wait_fully_replicated(env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leaders_and_the_controller_killed_mid_run_lose_and_double_nothing() {
    cluster_ok(&["start"]);
    let env = TestEnv::with(
        "replicated",
        &[
            ("KAFKA_BOOTSTRAP_SERVERS", BOOTSTRAP),
            ("KAFKA_REPLICATION_FACTOR", "3"),
        ],
    )
    .await;
    let data = env.settings.kafka.data_topic.clone();
    assert!(
        partitions(&data).iter().all(|(_, _, isr)| *isr == 3),
        "{:?}",
        partitions(&data)
    );
    let mut producer = env.spawn_apart(
        &[
            "produce",
            "--duration",
            "30m",
            "--rate",
            "20",
            "--width",
            "64-160",
            "--height",
            "64-120",
            "--json",
        ],
        "producer",
        &[],
    );
    let mut consumer = env.spawn_apart(
        &["consume", "--until-idle", "20", "--json"],
        "consumer",
        &[],
    );
    let started =
        common::eventually(Duration::from_secs(90), || async { rows(&env).await >= 40 }).await;
    assert!(started, "nothing stored:\n{}", env.read_log("consumer"));

    for round in 1..=5 {
        let leader = partitions(&data)
            .iter()
            .find(|(p, _, _)| *p == 0)
            .map(|(_, leader, _)| *leader)
            .expect("partition 0 has a leader");
        bounce(
            &env,
            leader,
            &format!("leader of partition 0, round {round}"),
        )
        .await;
        assert!(producer.is_running(), "{}", env.read_log("producer"));
        assert!(consumer.is_running(), "{}", env.read_log("consumer"));
    }
    let controller: i32 = cluster_ok(&["active-controller"]).trim().parse().unwrap();
    bounce(&env, controller, "the active controller").await;
    assert!(producer.is_running(), "{}", env.read_log("producer"));
    assert!(
        consumer.is_running(),
        "the consumer exited on its own:\n{}",
        env.read_log("consumer")
    );

    // Interrupted, the producer waits for the records already sent and exits 130.
    signal(producer.child(), SIGTERM);
    let status = producer.wait_within(Duration::from_secs(90));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(130),
        "producer:\n{}",
        env.read_log("producer")
    );
    let summary: serde_json::Value =
        serde_json::from_str(env.read_out("producer").trim()).expect("produce --json");
    assert_eq!(summary["interrupted"], true, "{summary}");
    let delivered = summary["delivered"].as_u64().unwrap();
    // Acknowledged or failed: none failed. (The record generated when the signal came, waiting
    // for its turn at the set rate, was never sent.)
    assert_eq!(summary["failed"], 0, "{summary}");
    stop_once_stored(&env, consumer, delivered as i64, "consumer").await;

    // A broker's death costs the consumer no group session: its coordinator answers heartbeats
    // again once the controller fences the dead broker (~10 s), well within the 45 s session.
    // (With a 10 s session, every kill of a broker in the coordinator's ISR cost the member its
    // session, and coordinator moves kept its rejoin waiting until it gave up.)
    let log = env.read_log("consumer");
    assert!(
        !log.contains("partitions lost"),
        "the consumer dropped out of its group:\n{log}"
    );

    // The topic holds each acknowledged record once: no duplicate from the producer's retries.
    let records = read_topic(&env, &data);
    let distinct: HashSet<&[u8]> = records
        .iter()
        .map(|m| rdkafka::Message::payload(m).unwrap_or_default())
        .collect();
    assert_eq!(
        (records.len() as u64, distinct.len() as u64),
        (delivered, delivered)
    );
    assert_exactly_once(&env, delivered as usize).await;
    eprintln!("{delivered} records produced and stored exactly once through 6 broker kills");
}
