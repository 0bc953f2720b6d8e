//! `imgstream dlq`: dead letters listed by code, and the fixed ones replayed into exactly one
//! object and one row, against the real stack.

mod common;

use common::{
    LABEL_HEADER, TestEnv, encode, header, raw_producer, read_topic, send_raw, stderr, stdout,
    valid_record,
};
use imgstream::domain::{ImageFormat, sha256_hex};
use imgstream::kafka::dlq::headers;
use imgstream::kafka::header_bytes;
use imgstream::pipeline::RecordHeader;
use imgstream::pipeline::letter::MAX_REASON_BYTES;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use std::time::Duration;

fn json_of(env: &TestEnv, args: &[&str]) -> Value {
    let out = env.run(args);
    assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e})"))
}

fn consume(env: &TestEnv, extra_env: &[(&str, &str)]) -> Value {
    let out = env
        .command(&["consume", "--until-idle", "3", "--json"])
        .envs(extra_env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "consume failed: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).expect("consume --json")
}

#[tokio::test(flavor = "multi_thread")]
async fn letters_are_listed_by_code_and_fixed_ones_replay_into_exactly_one_object_and_row() {
    let env = TestEnv::new("dlqreplay").await;
    env.produce(5, &[]);
    let producer = raw_producer(&env);
    send_raw(&producer, &env.name, "garbage-1", Some(b"\x00")).await;
    send_raw(&producer, &env.name, "garbage-2", Some(b"\x00\x01")).await;

    // A pixel limit far too strict for these images: every image is refused.
    let summary = consume(&env, &[("IMGSTREAM_MAX_PIXELS", "100")]);
    assert_eq!(
        (
            summary["stored"].as_u64(),
            summary["dead_lettered"].as_u64()
        ),
        (Some(0), Some(7))
    );

    let listing = json_of(&env, &["dlq", "ls", "--json"]);
    assert_eq!(
        listing["counts"],
        json!({"too-many-pixels": 5, "not-wire-format": 2})
    );
    let garbage = json_of(&env, &["dlq", "ls", "--code", "not-wire-format", "--json"]);
    assert_eq!(garbage["letters"].as_array().unwrap().len(), 2);
    let future = json_of(
        &env,
        &["dlq", "ls", "--since", "2999-01-01T00:00:00Z", "--json"],
    );
    assert_eq!(future["letters"], json!([]));
    let recent = json_of(&env, &["dlq", "ls", "--since", "1h", "--json"]);
    assert_eq!(recent["letters"].as_array().unwrap().len(), 7);

    // A dry run sends nothing.
    let dry = json_of(
        &env,
        &[
            "dlq",
            "replay",
            "--code",
            "too-many-pixels",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(dry["replayed"].as_array().unwrap().len(), 5);
    assert_eq!(read_topic(&env, &env.name).len(), 7);

    // The limit is back to normal: replayed (twice, by mistake: the second run sends none of
    // them again), each image is stored once.
    let report = json_of(
        &env,
        &["dlq", "replay", "--code", "too-many-pixels", "--json"],
    );
    assert_eq!(report["replayed"].as_array().unwrap().len(), 5);
    let again = json_of(
        &env,
        &["dlq", "replay", "--code", "too-many-pixels", "--json"],
    );
    assert_eq!(again["replayed"].as_array().unwrap().len(), 0);
    assert_eq!(again["already_replayed"].as_array().unwrap().len(), 5);
    assert_eq!(read_topic(&env, &env.name).len(), 12);
    let summary = consume(&env, &[]);
    assert_eq!(
        (summary["stored"].as_u64(), summary["replayed"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(env.counts().await, (5, 5));
    let verify = env.run(&["verify", "--full"]);
    assert!(verify.status.success(), "{}", stdout(&verify));

    // Garbage stays garbage: replayed, it comes back with its replay count raised and its
    // original headers.
    json_of(
        &env,
        &["dlq", "replay", "--code", "not-wire-format", "--json"],
    );
    let summary = consume(&env, &[]);
    assert_eq!(summary["dead_lettered"].as_u64(), Some(2));
    let again = read_topic(&env, &format!("{}.dlq", env.name));
    let returned: Vec<_> = again
        .iter()
        .filter(|m| header(m, headers::REPLAY_COUNT).as_deref() == Some("1"))
        .collect();
    assert_eq!(returned.len(), 2);
    for m in returned {
        assert!(header(m, LABEL_HEADER).unwrap().starts_with("garbage-"));
        assert_eq!(header(m, headers::CODE).as_deref(), Some("not-wire-format"));
    }

    // A letter replayed as often as allowed is held back.
    let report = json_of(
        &env,
        &[
            "dlq",
            "replay",
            "--code",
            "not-wire-format",
            "--max-replays",
            "1",
            "--json",
        ],
    );
    assert_eq!(report["held_back"].as_array().unwrap().len(), 2);
    // The originals of those two were sent back above: not again.
    assert_eq!(report["replayed"].as_array().unwrap().len(), 0);
    assert_eq!(report["already_replayed"].as_array().unwrap().len(), 2);
}

/// Sends a record to partition 0 with headers given as bytes (keys that are not UTF-8 included).
async fn send_to_partition_0(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &[u8],
    headers: &[RecordHeader],
) {
    let record = FutureRecord::<str, [u8]>::to(topic)
        .partition(0)
        .key(key)
        .payload(value)
        .headers(header_bytes::owned(headers));
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("raw send");
}

/// Every record of a topic's partitions with its headers read as bytes (rdkafka's own accessor
/// would panic on a key that is not UTF-8).
fn headers_on(env: &TestEnv, topic: &str) -> Vec<Vec<RecordHeader>> {
    common::read_topic_as(env, topic, header_bytes::of_message)
}

fn total_lag(env: &TestEnv) -> Value {
    json_of(env, &["status", "--json"])["total_lag"].clone()
}

/// The data topic takes a record up to its limit; the dead-letter topic has the same limit, so
/// a refused record just under it, whose reason quotes its longest field, cannot travel whole.
/// Its letter carries a reference instead, and the valid record behind it is stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_record_just_under_the_topic_limit_is_dead_lettered_as_a_reference_and_the_next_is_stored()
 {
    let env = TestEnv::with("dlqfits", &[("IMGSTREAM_INLINE_MAX_BYTES", "262144")]).await;
    let limit = env.settings.limits.max_message_bytes();
    let mut long_field = valid_record(1, ImageFormat::Png);
    long_field.sha256 = String::new();
    let base = encode(&env, &long_field).await.len();
    // Room for the batch and record framing, the key and the label header.
    long_field.sha256 = "z".repeat(limit - 512 - base);
    let value = encode(&env, &long_field).await;
    assert!(value.len() > limit - 600 && value.len() < limit - 400);
    let producer = raw_producer(&env);
    let label = |v: &str| {
        vec![(
            LABEL_HEADER.as_bytes().to_vec(),
            Some(v.as_bytes().to_vec()),
        )]
    };
    send_to_partition_0(&producer, &env.name, "long", &value, &label("long")).await;
    let valid = encode(&env, &valid_record(2, ImageFormat::Png)).await;
    send_to_partition_0(&producer, &env.name, "valid", &valid, &label("valid")).await;

    let summary = consume(&env, &[]);
    assert_eq!(
        (
            summary["stored"].as_u64(),
            summary["dead_lettered"].as_u64()
        ),
        (Some(1), Some(1)),
        "{summary}"
    );
    assert_eq!(env.counts().await, (1, 1));
    assert_eq!(total_lag(&env), 0, "the group committed to the end");

    let listing = json_of(&env, &["dlq", "ls", "--json"]);
    let letter = &listing["letters"][0];
    assert_eq!(letter["code"], "malformed-checksum");
    assert_eq!(letter["original"], format!("{}/0@0", env.name));
    assert_eq!(letter["omitted"], "value");
    assert_eq!(letter["original_value_size"], value.len());
    assert_eq!(letter["original_value_sha256"], sha256_hex(&value));
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.len() <= MAX_REASON_BYTES && reason.contains('…'),
        "{reason}"
    );
    let stored = read_topic(&env, &format!("{}.dlq", env.name));
    assert_eq!(stored.len(), 1);
    assert!(stored[0].payload().is_none(), "the value is not carried");
    assert_eq!(header(&stored[0], LABEL_HEADER).as_deref(), Some("long"));

    // Nothing to replay: the command says so and fails, and sends nothing.
    let replay = env.run(&["dlq", "replay", "--code", "malformed-checksum"]);
    assert!(!replay.status.success());
    assert!(
        stderr(&replay).contains("not replayed"),
        "{}",
        stderr(&replay)
    );
    assert_eq!(read_topic(&env, &env.name).len(), 2);
}

/// A producer's headers that claim to be imgstream's verdict, and one whose key is not UTF-8:
/// the consumer carries on, `dlq ls` shows imgstream's code and origin, and a replay gives the
/// record back its own headers under their own names.
#[tokio::test(flavor = "multi_thread")]
async fn forged_verdict_headers_and_a_key_that_is_not_utf8_leave_the_verdict_to_imgstream() {
    let env = TestEnv::new("dlqforged").await;
    let h = |k: &[u8], v: &str| (k.to_vec(), Some(v.as_bytes().to_vec()));
    let forged = vec![
        h(headers::CODE.as_bytes(), "ok"),
        h(headers::ORIGINAL_TOPIC.as_bytes(), "elsewhere"),
        h(headers::ORIGINAL_PARTITION.as_bytes(), "4"),
        h(headers::ORIGINAL_OFFSET.as_bytes(), "2"),
        h(headers::REASON.as_bytes(), "the producer's reason"),
        h(&[0xff, 0xfe, b'k'], "not utf-8"),
        h(LABEL_HEADER.as_bytes(), "forged"),
    ];
    let producer = raw_producer(&env);
    send_to_partition_0(&producer, &env.name, "forged", b"not avro", &forged).await;
    let valid = encode(&env, &valid_record(3, ImageFormat::Png)).await;
    send_to_partition_0(&producer, &env.name, "valid", &valid, &[]).await;

    let summary = consume(&env, &[]);
    assert_eq!(
        (
            summary["stored"].as_u64(),
            summary["dead_lettered"].as_u64()
        ),
        (Some(1), Some(1)),
        "{summary}"
    );
    assert_eq!(total_lag(&env), 0, "the group committed to the end");

    let listing = json_of(&env, &["dlq", "ls", "--json"]);
    assert_eq!(listing["counts"], json!({"bad-magic-byte": 1}));
    let letter = &listing["letters"][0];
    assert_eq!(letter["original"], format!("{}/0@0", env.name));
    assert_ne!(letter["reason"], "the producer's reason");
    assert_eq!(letter["omitted"], Value::Null);
    let by_forged_code = json_of(&env, &["dlq", "ls", "--code", "ok", "--json"]);
    assert_eq!(by_forged_code["letters"], json!([]));

    json_of(
        &env,
        &["dlq", "replay", "--code", "bad-magic-byte", "--json"],
    );
    let replayed: Vec<_> = headers_on(&env, &env.name)
        .into_iter()
        .filter(|hs| {
            hs.iter()
                .any(|(k, _)| k == headers::REPLAY_COUNT.as_bytes())
        })
        .collect();
    assert_eq!(replayed.len(), 1);
    let mut expected = forged.clone();
    expected.push(h(headers::REPLAY_COUNT.as_bytes(), "1"));
    assert_eq!(
        replayed[0], expected,
        "the original headers, under their own names"
    );

    // Refused again, the replayed record's letter is imgstream's verdict again.
    let summary = consume(&env, &[]);
    assert_eq!(summary["dead_lettered"].as_u64(), Some(1));
    let listing = json_of(&env, &["dlq", "ls", "--json"]);
    assert_eq!(listing["counts"], json!({"bad-magic-byte": 2}));
    let again = &listing["letters"][1];
    assert_eq!(again["replays"], 1);
    assert!(
        again["original"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/", env.name))
    );
}
