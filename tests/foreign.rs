//! Records from a foreign client, confluent-kafka-python 2.11.1 (tests/foreign/producer.py), against
//! the real stack: every compression codec is read, and no record, however it is shaped, stops
//! the pipeline. Each hostile record is followed by a valid one on the same partition; the valid
//! one is stored, the hostile one dead-lettered with its own code, and the group commits to the
//! end of the topic.

mod common;

use common::{TestEnv, header, read_topic, stderr, stdout};
use imgstream::kafka::dlq::headers;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use uuid::Uuid;

/// The virtualenv scripts/test-deps.sh installs confluent-kafka 2.11.1 into.
fn foreign_python() -> PathBuf {
    let cache = std::env::var("IMGSTREAM_CACHE_DIR").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/imgstream"),
        PathBuf::from,
    );
    let python = cache.join("venv-confluent-kafka-2.11.1/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test-deps.sh",
        python.display()
    );
    python
}

/// Runs the foreign producer's `scenario`; what it sent, in order.
fn foreign_produce(env: &TestEnv, scenario: &str, extra: &[&str]) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/foreign/producer.py");
    let out = Command::new(foreign_python())
        .arg(script)
        .args([
            scenario,
            &env.settings.kafka.bootstrap_servers,
            &env.name,
            &env.settings.registry_url,
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "foreign producer: {}", stderr(&out));
    let report: Value = serde_json::from_str(stdout(&out).trim()).expect("producer's JSON");
    report["sent"].as_array().unwrap().clone()
}

/// Consumes until idle; the consumer must exit 0. Its JSON summary.
fn consume(env: &TestEnv) -> Value {
    let out = env
        .command(&["consume", "--until-idle", "5", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "consume exited {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    serde_json::from_str(stdout(&out).trim()).expect("consume --json")
}

/// The image ids the index holds.
async fn indexed_ids(env: &TestEnv) -> Vec<Uuid> {
    let index = env.index().await;
    let mut ids: Vec<Uuid> = index
        .all_entries()
        .await
        .unwrap()
        .iter()
        .map(|e| e.image_id)
        .collect();
    index.close().await;
    ids.sort();
    ids
}

fn expected_ids(sent: &[Value]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = sent
        .iter()
        .filter_map(|s| s["image_id"].as_str())
        .map(|id| id.parse().unwrap())
        .collect();
    ids.sort();
    ids
}

/// The group's lag over the whole topic, from `imgstream status`.
fn total_lag(env: &TestEnv) -> Value {
    let out = env.run(&["status", "--json"]);
    let status: Value = serde_json::from_str(&stdout(&out)).expect("status --json");
    status["total_lag"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn images_a_foreign_producer_compresses_with_any_codec_are_all_stored() {
    let env = TestEnv::new("codecs").await;
    let sent = foreign_produce(&env, "codecs", &["4"]);
    assert_eq!(sent.len(), 20, "four images for each of five codecs");

    let summary = consume(&env);
    assert_eq!(summary["stored"].as_u64(), Some(20), "{summary}");
    assert_eq!(summary["dead_lettered"].as_u64(), Some(0), "{summary}");
    assert_eq!(indexed_ids(&env).await, expected_ids(&sent));
    assert_eq!(env.counts().await, (20, 20));
    assert_eq!(total_lag(&env), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_record_a_foreign_producer_shapes_stops_the_pipeline() {
    // Topics of 10 MiB and 16 KiB, for the record just under that limit.
    let env = TestEnv::with("hostile", &[("IMGSTREAM_INLINE_MAX_BYTES", "10485760")]).await;
    let sent = foreign_produce(&env, "hostile", &[]);
    let refused: Vec<&str> = sent.iter().filter_map(|s| s["code"].as_str()).collect();
    let valid = expected_ids(&sent);
    assert!(
        refused.len() >= 7 && valid.len() == refused.len(),
        "{sent:?}"
    );

    let summary = consume(&env);
    // The producer registered a schema under a subject of its own: gone with the test.
    let elsewhere = format!("{}-elsewhere-value", env.name);
    env.registry().delete_subject(&elsewhere).await.unwrap();
    assert_eq!(
        summary["stored"].as_u64(),
        Some(valid.len() as u64),
        "{summary}"
    );
    assert_eq!(indexed_ids(&env).await, valid, "every valid record stored");
    assert_eq!(env.counts().await, (valid.len(), valid.len() as i64));
    assert_eq!(total_lag(&env), 0, "the group committed to the end");

    // One letter per hostile record, in order, each with imgstream's own verdict: never the
    // producer's forged headers.
    let letters = read_topic(&env, &env.settings.kafka.dlq_topic);
    let codes: Vec<String> = letters
        .iter()
        .map(|m| header(m, headers::CODE).unwrap_or_default())
        .collect();
    assert_eq!(codes, refused, "dead-letter codes");
    for letter in &letters {
        assert_eq!(
            header(letter, headers::ORIGINAL_TOPIC).as_deref(),
            Some(env.name.as_str())
        );
        let reason = header(letter, headers::REASON).unwrap_or_default();
        assert!(!reason.contains("the producer's own verdict"), "{reason}");
        assert!(reason.len() <= 2048, "a reason of {} bytes", reason.len());
    }
}
