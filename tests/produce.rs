//! The producer against the real stack: a registered contract any Avro reader can follow, seeded
//! reproducibility, clear failures, and schema evolution.

mod common;

use apache_avro::types::Value;
use common::{TestEnv, read_topic, stderr, stdout};
use imgstream::domain::sha256_hex;
use imgstream::schema::{IMAGE_RECORD_SCHEMA, wire};
use rdkafka::message::Message;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Decodes a value the way any Confluent Avro deserializer does: the schema comes from the
/// registry by the id in the header, with no knowledge of imgstream's types.
async fn generic_decode(registry_url: &str, payload: &[u8]) -> HashMap<String, Value> {
    let (id, mut datum) = wire::split(payload).expect("Confluent wire format");
    let body: serde_json::Value = reqwest::get(format!("{registry_url}/schemas/ids/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let writer = apache_avro::Schema::parse_str(body["schema"].as_str().unwrap()).unwrap();
    match apache_avro::from_avro_datum(&writer, &mut datum, None).unwrap() {
        Value::Record(fields) => fields.into_iter().collect(),
        other => panic!("not a record: {other:?}"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Uuid(u) => u.to_string(),
        other => panic!("not text: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn n_produced_are_n_records_each_readable_with_only_the_registry() {
    let env = TestEnv::new("contract").await;
    let out = env.produce(24, &["--sources", "5"]);
    let summary: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(summary["delivered"], 24);

    let records = read_topic(&env, &env.name);
    assert_eq!(records.len(), 24);
    let mut partitions_by_source: HashMap<String, i32> = HashMap::new();
    for m in &records {
        let fields = generic_decode(&env.settings.registry_url, m.payload().unwrap()).await;
        let Value::Bytes(data) = &fields["data"] else {
            panic!("data is not bytes")
        };
        assert_eq!(text(&fields["sha256"]), sha256_hex(data));
        assert!(uuid::Uuid::parse_str(&text(&fields["image_id"])).is_ok());
        assert_eq!(text(&fields["customer_id"]), env.settings.customer_id);
        assert!(matches!(fields["created_at"], Value::TimestampMicros(_)));
        let image = image::load_from_memory(data).expect("a decodable image");
        assert_eq!(fields["width"], Value::Int(image.width() as i32));
        assert_eq!(fields["height"], Value::Int(image.height() as i32));
        let declared =
            imgstream::domain::ImageFormat::from_content_type(&text(&fields["content_type"]));
        assert_eq!(declared, imgstream::validate::sniff(data));
        // The key is the source id, so one source's images stay on one partition, in order.
        let source = text(&fields["source_id"]);
        assert_eq!(m.key().unwrap(), source.as_bytes());
        let p = *partitions_by_source.entry(source).or_insert(m.partition());
        assert_eq!(p, m.partition());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_seed_yields_identical_images() {
    let env = TestEnv::new("seed").await;
    env.produce(5, &["--seed", "77"]);
    env.produce(5, &["--seed", "77"]);
    env.produce(5, &["--seed", "78"]);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in read_topic(&env, &env.name) {
        let fields = generic_decode(&env.settings.registry_url, m.payload().unwrap()).await;
        *seen.entry(text(&fields["sha256"])).or_default() += 1;
    }
    // Seed 77 twice: five images, each twice; seed 78: five others, once each.
    let mut counts: Vec<usize> = seen.values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_fails_the_producer_clearly_within_bounded_time() {
    let env = TestEnv::new("nobroker").await;
    let started = Instant::now();
    let out = env
        .command(&["produce", "--count", "5"])
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("IMGSTREAM_CONNECT_TIMEOUT_SECS", "3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Kafka at 127.0.0.1:1 is unreachable"), "{err}");
    assert!(!err.contains("panicked"));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_larger_than_the_topic_allows_is_refused_before_sending() {
    let env = TestEnv::with("toolarge", &[("IMGSTREAM_MAX_IMAGE_BYTES", "2048")]).await;
    let out = env.run(&[
        "produce", "--count", "3", "--width", "400", "--height", "300", "--format", "png",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refused before sending") && err.contains("IMGSTREAM_MAX_IMAGE_BYTES"),
        "{err}"
    );
    assert!(read_topic(&env, &env.name).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_id_consumers_would_refuse_stops_the_producer_before_sending() {
    let env = TestEnv::with("badcustomer", &[("PRODUCER_CUSTOMER_ID", "acme\ncorp")]).await;
    let out = env.run(&["produce", "--count", "3"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("forbidden-character") || err.contains("customer_id holds \\n"),
        "{err}"
    );
    assert!(err.contains("PRODUCER_CUSTOMER_ID"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(read_topic(&env, &env.name).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_producer_reports_exactly_what_was_delivered() {
    let env = TestEnv::new("sigint").await;
    let child = env
        .command(&[
            "produce", "--count", "100000", "--rate", "40", "--width", "64", "--height", "64",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    common::signal(&child, common::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(summary["interrupted"], true);
    let delivered = summary["delivered"].as_u64().unwrap();
    assert!(delivered > 0);
    assert_eq!(read_topic(&env, &env.name).len() as u64, delivered);
}

fn schema_with_field(field: serde_json::Value) -> String {
    let mut schema: serde_json::Value = serde_json::from_str(IMAGE_RECORD_SCHEMA).unwrap();
    schema["fields"].as_array_mut().unwrap().push(field);
    schema.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incompatible_schema_change_is_refused_with_the_registrys_reason() {
    let env = TestEnv::new("incompat").await;
    let path = env.log_path("incompatible").with_extension("avsc");
    std::fs::write(
        &path,
        schema_with_field(serde_json::json!({"name": "exposure_ms", "type": "int"})),
    )
    .unwrap();
    for command in ["setup", "produce"] {
        let mut args = vec![command, "--schema-file", path.to_str().unwrap()];
        if command == "produce" {
            args.extend(["--count", "1"]);
        }
        let out = env.run(&args);
        assert!(
            !out.status.success(),
            "{command} accepted an incompatible schema"
        );
        let shown = format!("{}{}", stdout(&out), stderr(&out));
        assert!(shown.contains("incompatible"), "{command}: {shown}");
        assert!(
            shown.contains("exposure_ms") || shown.contains("Incompatible"),
            "{command}: no reason: {shown}"
        );
    }
    assert!(read_topic(&env, &env.name).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compatible_schema_change_registers_and_the_running_consumer_keeps_storing() {
    let env = TestEnv::new("compat").await;
    let consumer = env.spawn(&["consume", "--until-idle", "8"], "consumer");
    env.produce(5, &[]);
    let path = env.log_path("compatible").with_extension("avsc");
    std::fs::write(
        &path,
        schema_with_field(
            serde_json::json!({"name": "exposure_ms", "type": ["null", "int"], "default": null}),
        ),
    )
    .unwrap();
    env.produce(5, &["--schema-file", path.to_str().unwrap()]);

    let versions: Vec<i64> = reqwest::get(format!(
        "{}/subjects/{}-value/versions",
        env.settings.registry_url, env.name
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        versions.len(),
        2,
        "the compatible schema should be version 2"
    );

    let status = consumer
        .wait_within(std::time::Duration::from_secs(300))
        .expect("the consumer did not exit within 300 s");
    assert!(status.success(), "{}", env.read_log("consumer"));
    assert_eq!(env.counts().await, (10, 10), "{}", env.read_log("consumer"));
    assert!(read_topic(&env, &format!("{}.dlq", env.name)).is_empty());
}

/// Murmur2 hashes of keys as Java's `Utils.murmur2` gives them, as published: the first six are
/// Kafka's own `UtilsTest.testMurmur2`, the rest librdkafka's unit test of its Java-compatible
/// murmur2 (`src/rdmurmur2.c`).
const JAVA_MURMUR2: [(&str, i32); 12] = [
    ("21", -973_932_308),
    ("foobar", -790_332_482),
    ("a-little-bit-long-string", -985_981_536),
    ("a-little-bit-longer-string", -1_486_304_829),
    (
        "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
        -58_897_971,
    ),
    ("abc", 479_470_107),
    ("kafka", 0xd067_cf64_u32 as i32),
    ("giberish123456789", 0x8f55_2b0c_u32 as i32),
    ("1234", 0x9fc9_7b14_u32 as i32),
    ("234", 0xe7c0_09ca_u32 as i32),
    ("34", 0x8739_30da_u32 as i32),
    ("4", 0x5a4b_5ca1),
];

/// A keyed record from imgstream's producer lands in the partition a Java producer would put
/// it in: `toPositive(murmur2(key)) % partitions`, read back from the broker.
#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_record_lands_in_the_partition_a_java_producer_would_choose() {
    // More partitions than keys, so that a chance agreement with another hash is unlikely.
    let partitions = 17;
    let env = TestEnv::with(
        "murmur2",
        &[("KAFKA_TOPIC_PARTITIONS", &partitions.to_string())],
    )
    .await;
    let producer =
        imgstream::kafka::producer::ImageProducer::new(&env.settings.kafka, &env.settings.limits)
            .unwrap();
    for (key, _) in JAVA_MURMUR2 {
        let delivery = producer.enqueue(key, b"not an image", 0).await.unwrap();
        delivery.await.unwrap().expect("the broker took the record");
    }
    let received: HashMap<String, i32> = read_topic(&env, &env.settings.kafka.data_topic)
        .iter()
        .map(|m| {
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            (key, m.partition())
        })
        .collect();
    let expected: HashMap<String, i32> = JAVA_MURMUR2
        .iter()
        .map(|(key, hash)| (key.to_string(), (hash & 0x7fff_ffff) % partitions))
        .collect();
    assert_eq!(received, expected);
}
