//! The consumer against the real stack: exactly one object and one row per record, bad records in
//! the dead-letter topic with their reason, and the audit that finds what went wrong.

mod common;

use common::runs::{finish_group_change_without_redo, wait_assigned};
use common::{
    LABEL_HEADER, TestEnv, encode, header, raw_producer, read_topic, send_raw, stderr, stdout,
    valid_record,
};
use imgstream::domain::{ImageFormat, object_key, sha256_hex};
use imgstream::kafka::dlq::headers;
use imgstream::schema::wire;
use imgstream::store::{PutOutcome, StoreError};
use sqlx::Connection;
use std::collections::BTreeMap;

fn consume_until_idle(env: &TestEnv) -> serde_json::Value {
    let out = env.run(&["consume", "--until-idle", "3", "--json"]);
    assert!(out.status.success(), "consume failed: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).expect("consume --json")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_record_becomes_one_object_and_one_row_with_matching_sha256() {
    let env = TestEnv::new("exact").await;
    env.produce(40, &[]);
    let summary = consume_until_idle(&env);
    assert_eq!(summary["stored"], 40);

    assert_eq!(env.counts().await, (40, 40));
    let index = env.index().await;
    let store = env.store();
    for row in index.all_entries().await.unwrap() {
        let bytes = store.get(&row.object_key).await.unwrap();
        assert_eq!(sha256_hex(&bytes), row.sha256, "object {}", row.object_key);
        assert_eq!(bytes.len() as i64, row.size_bytes);
        assert_eq!(row.object_key, object_key(&row.image_id));
        assert_eq!(row.bucket, env.name);
        assert_eq!(row.kafka_topic, env.name);
    }
    let verify = env.run(&["verify", "--full"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    // With --json, stdout is one JSON document and nothing else.
    let verify = env.run(&["verify", "--full", "--json"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let report: serde_json::Value = serde_json::from_str(&stdout(&verify))
        .unwrap_or_else(|e| panic!("verify --json is not JSON ({e}):\n{}", stdout(&verify)));
    assert_eq!(report["checksums_checked"], 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_record_is_stored_once() {
    let env = TestEnv::new("replay").await;
    env.produce(12, &[]);
    consume_until_idle(&env);
    // A second group reads the same records again from the start: a full replay.
    let out = env
        .command(&["consume", "--until-idle", "3", "--json"])
        .env("KAFKA_GROUP_ID", format!("{}-again", env.name))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["replayed"], 12, "{summary}");
    assert_eq!(
        summary["stored"], 0,
        "a replay is not counted as stored: {summary}"
    );
    assert_eq!(summary["dead_lettered"], 0);
    assert_eq!(env.counts().await, (12, 12));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_records_are_dead_lettered_with_their_reason_and_valid_ones_stored() {
    let env = TestEnv::new("dlq").await;
    let producer = raw_producer(&env);
    let topic = env.name.clone();

    let mut expected: BTreeMap<String, &str> = BTreeMap::new();
    let mut send = async |label: &str, payload: Option<Vec<u8>>, code: &'static str| {
        send_raw(&producer, &topic, label, payload.as_deref()).await;
        expected.insert(label.to_string(), code);
    };
    send("garbage", Some(b"\x00\x01".to_vec()), "not-wire-format").await;
    // A tombstone (null value) is not a record either; its dead letter stays null.
    send("tombstone", None, "not-wire-format").await;
    send(
        "json",
        Some(br#"{"image": "nope"}"#.to_vec()),
        "bad-magic-byte",
    )
    .await;
    send(
        "unknown-schema",
        Some(wire::frame(987_654, b"\x02xx")),
        "unknown-schema-id",
    )
    .await;

    let mut text = valid_record(1, ImageFormat::Png);
    text.data = bytes::Bytes::from_static(b"this is not an image at all");
    text.sha256 = sha256_hex(&text.data);
    send(
        "not-an-image",
        Some(encode(&env, &text).await),
        "signature-mismatch",
    )
    .await;

    let mut lying = valid_record(2, ImageFormat::Jpeg);
    lying.content_type = "image/png".into();
    send(
        "lying-content-type",
        Some(encode(&env, &lying).await),
        "signature-mismatch",
    )
    .await;

    let mut bomb = valid_record(3, ImageFormat::Png);
    bomb.width = 100_000;
    bomb.height = 100_000;
    send(
        "huge-dimensions",
        Some(encode(&env, &bomb).await),
        "too-many-pixels",
    )
    .await;

    let mut wrong_sum = valid_record(4, ImageFormat::Webp);
    wrong_sum.sha256 = sha256_hex(b"other");
    send(
        "wrong-sha256",
        Some(encode(&env, &wrong_sum).await),
        "checksum-mismatch",
    )
    .await;

    let mut not_hex = valid_record(5, ImageFormat::Png);
    not_hex.sha256 = "z".repeat(64);
    send(
        "sha256-not-hex",
        Some(encode(&env, &not_hex).await),
        "malformed-checksum",
    )
    .await;

    env.produce(10, &[]);
    let summary = consume_until_idle(&env);
    assert_eq!(summary["stored"], 10, "{summary}");
    assert_eq!(summary["dead_lettered"], expected.len(), "{summary}");
    assert_eq!(env.counts().await, (10, 10));

    let letters = read_topic(&env, &format!("{topic}.dlq"));
    assert_eq!(letters.len(), expected.len());
    for m in &letters {
        use rdkafka::message::Message;
        let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
        let code = header(m, headers::CODE).unwrap();
        assert_eq!(Some(&code.as_str()), expected.get(&key), "record {key}");
        assert!(!header(m, headers::REASON).unwrap().is_empty());
        assert_eq!(header(m, headers::CLASS).as_deref(), Some("invalid"));
        assert_eq!(
            header(m, headers::ORIGINAL_TOPIC).as_deref(),
            Some(topic.as_str())
        );
        assert!(
            header(m, headers::ORIGINAL_PARTITION)
                .unwrap()
                .parse::<i32>()
                .is_ok()
        );
        assert!(
            header(m, headers::ORIGINAL_OFFSET)
                .unwrap()
                .parse::<i64>()
                .is_ok()
        );
        assert!(header(m, headers::DEAD_LETTERED_AT).is_some());
        // The original headers travel with the letter, unchanged.
        assert_eq!(header(m, LABEL_HEADER).as_deref(), Some(key.as_str()));
        assert_eq!(m.payload().is_none(), key == "tombstone", "record {key}");
    }

    // Nothing stuck: the group has committed to the end of every partition.
    let status = env.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(status["total_lag"], 0, "{status}");
    assert_eq!(status["dlq_depth"], expected.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_postgresql_refuses_is_that_rows_outcome_and_the_rest_of_its_batch_is_written() {
    use imgstream::domain::{IndexEntry, Origin};
    use imgstream::pipeline::{IndexSink, Indexed};
    let env = TestEnv::new("rowrefused").await;
    let origin = |offset| Origin {
        topic: env.name.clone(),
        partition: 0,
        offset,
    };
    let bucket = &env.settings.store.bucket;
    let good = [0, 2].map(|i| {
        IndexEntry::new(
            &valid_record(i, ImageFormat::Png),
            &origin(i as i64),
            bucket,
        )
    });
    // What the door refuses, written past it: PostgreSQL cannot store a NUL byte in text.
    let mut bad_record = valid_record(1, ImageFormat::Png);
    bad_record.customer_id = "acme\0corp".into();
    let bad = IndexEntry::new(&bad_record, &origin(1), bucket);
    let entries = [good[0].clone(), bad, good[1].clone()];

    let index = env.index().await;
    let outcomes = index
        .insert(&entries)
        .await
        .expect("a refused row is no failure");
    assert!(matches!(outcomes[0], Indexed::Inserted), "{outcomes:?}");
    assert!(
        matches!(&outcomes[1], Indexed::Refused(why) if why.contains("0x00")),
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[2], Indexed::Inserted), "{outcomes:?}");
    assert_eq!(index.count().await.unwrap(), 2);
    index.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn minio_refuses_bytes_that_do_not_match_their_sha256_even_as_a_replay() {
    let env = TestEnv::new("corrupt-copy").await;
    let store = env.store();
    let original = bytes::Bytes::from_static(b"original image bytes");
    let corrupt = bytes::Bytes::from_static(b"0riginal image bytes");
    let sha = sha256_hex(&original);

    let first = store.put_image("images/cc/one", original.clone(), "image/png", &sha);
    assert_eq!(first.await.unwrap(), PutOutcome::Created);
    let replay = store.put_image("images/cc/one", original.clone(), "image/png", &sha);
    assert_eq!(replay.await.unwrap(), PutOutcome::AlreadyStored);

    // A corrupt copy claiming the stored image's checksum, on the stored key and on a new one.
    for key in ["images/cc/one", "images/cc/two"] {
        let err = store
            .put_image(key, corrupt.clone(), "image/png", &sha)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::ChecksumMismatch { .. }),
            "{key}: {err}"
        );
    }
    assert_eq!(store.get("images/cc/one").await.unwrap(), original);
    assert!(
        store.get("images/cc/two").await.is_err(),
        "refused bytes were stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_id_reused_for_different_bytes_never_replaces_the_stored_image() {
    let env = TestEnv::new("conflict").await;
    let producer = raw_producer(&env);
    // Ten ids, each sent as original, impostor (same id, other bytes), original again, all on one
    // partition: the first record of an id must win, whatever the upload concurrency.
    let mut originals = Vec::new();
    for n in 0..10 {
        let original = valid_record(100 + n, ImageFormat::Png);
        let mut impostor = valid_record(200 + n, ImageFormat::Png);
        impostor.image_id = original.image_id;
        for record in [&original, &impostor, &original] {
            send_raw(
                &producer,
                &env.name,
                "cam-1",
                Some(&encode(&env, record).await),
            )
            .await;
        }
        originals.push(original);
    }

    let summary = consume_until_idle(&env);
    // The repeated original is a harmless duplicate (replayed, not stored again), the impostor a
    // conflict.
    assert_eq!(summary["stored"], 10, "{summary}");
    assert_eq!(summary["replayed"], 10, "{summary}");
    assert_eq!(summary["dead_lettered"], 10, "{summary}");
    assert_eq!(env.counts().await, (10, 10));
    for original in &originals {
        let stored = env
            .store()
            .get(&object_key(&original.image_id))
            .await
            .unwrap();
        assert_eq!(
            sha256_hex(&stored),
            original.sha256,
            "image {} was replaced",
            original.image_id
        );
    }

    let letters = read_topic(&env, &format!("{}.dlq", env.name));
    assert_eq!(letters.len(), 10);
    for letter in &letters {
        assert_eq!(header(letter, headers::CLASS).as_deref(), Some("conflict"));
        assert_eq!(
            header(letter, headers::CODE).as_deref(),
            Some("object-conflict")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_a_deleted_object_altered_bytes_and_a_planted_orphan_and_repairs_only_the_orphan()
 {
    let env = TestEnv::new("verify").await;
    env.produce(6, &[]);
    consume_until_idle(&env);
    let store = env.store();
    let index = env.index().await;
    let rows = index.all_entries().await.unwrap();
    let deleted = rows[0].object_key.clone();
    store.delete(&deleted).await.unwrap();
    let orphan = "images/zz/planted-orphan";
    store
        .put_image(
            orphan,
            bytes::Bytes::from_static(b"orphan"),
            "image/png",
            &sha256_hex(b"orphan"),
        )
        .await
        .unwrap();

    // Same size, other bytes: only reading the object back can tell.
    let altered = rows[2].object_key.clone();
    let mut other_bytes = store.get(&altered).await.unwrap().to_vec();
    other_bytes.reverse();
    store.delete(&altered).await.unwrap();
    store
        .put_image(
            &altered,
            bytes::Bytes::from(other_bytes.clone()),
            &rows[2].content_type,
            &sha256_hex(&other_bytes),
        )
        .await
        .unwrap();

    // A row of another bucket sharing the table is not this bucket's missing object.
    let mut elsewhere = rows[1].clone();
    elsewhere.image_id = uuid::Uuid::new_v4();
    elsewhere.object_key = object_key(&elsewhere.image_id);
    elsewhere.bucket = "another-bucket".into();
    index.insert_batch(&[elsewhere.clone()]).await.unwrap();

    let json = env.run(&["verify", "--full", "--json"]);
    assert!(!json.status.success(), "verify --json passed with damage");
    let report: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("JSON report");
    assert_eq!(report["missing_objects"], serde_json::json!([deleted]));

    let out = env.run(&["verify", "--full"]);
    assert!(!out.status.success(), "verify passed with damage");
    let text = stdout(&out);
    assert!(
        !text.contains(&elsewhere.object_key),
        "another bucket's row was audited:\n{text}"
    );
    assert!(
        text.contains(&format!("missing object: {deleted}")),
        "{text}"
    );
    assert!(text.contains(&format!("orphan object: {orphan}")), "{text}");
    assert!(
        text.contains(&format!("checksum mismatch: {altered}: object sha256")),
        "{text}"
    );

    // The orphan is younger than the grace period: a consumer could be mid-batch, so it stays.
    let young = env.run(&["verify", "--repair"]);
    assert!(stdout(&young).contains(&format!("orphan kept (younger than grace): {orphan}")));
    assert!(store.get(orphan).await.is_ok());

    // With no grace period, every orphan goes, one written in this very second included.
    let repaired = env.run(&["verify", "--repair", "--grace", "0s"]);
    assert!(
        stdout(&repaired).contains(&format!("orphan removed: {orphan}")),
        "{}",
        stdout(&repaired)
    );
    assert!(store.get(orphan).await.is_err());
    // A missing object cannot be repaired from the index; it is still reported.
    assert!(stdout(&repaired).contains(&format!("missing object: {deleted}")));
    assert_eq!(env.counts().await, (5, 7));
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_racing_a_replaying_consumer_leaves_every_indexed_image_its_object() {
    let env = TestEnv::new("repair-race").await;
    const IMAGES: usize = 400;
    env.produce(IMAGES as u64, &[]);
    consume_until_idle(&env);
    let store = env.store();
    let index = env.index().await;
    let bucket = env.settings.store.bucket.clone();

    // A crash between put and insert, for every record: the objects stay, the rows are gone,
    // and the group is gone too, so the next consumer replays the topic from the start and
    // finds each old object in place.
    let mut db = sqlx::PgConnection::connect(env.settings.database_url.expose())
        .await
        .unwrap();
    sqlx::query("DELETE FROM images")
        .execute(&mut db)
        .await
        .unwrap();
    let admin: rdkafka::admin::AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.bootstrap_servers)
        .create()
        .unwrap();
    let deleted = admin
        .delete_groups(
            &[&env.settings.kafka.group_id],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(deleted.iter().all(|r| r.is_ok()), "{deleted:?}");
    // And one orphan that no record will ever index: repair must still remove that one.
    let garbage = "images/zz/garbage-orphan";
    store
        .put_image(
            garbage,
            bytes::Bytes::from_static(b"garbage"),
            "image/png",
            &sha256_hex(b"garbage"),
        )
        .await
        .unwrap();
    // Listed times have whole seconds: two of them make every object older than a 0 s grace.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    // Batches of 100 uploaded one at a time, so that a batch's uploads find most objects in place
    // long before its insert. Repair starts with the replay and runs again until it is done:
    // the first run meets orphans the replay indexes, the next ones meet batches mid-way.
    let mut replay = env.spawn(
        &[
            "consume",
            "--until-idle",
            "3",
            "--batch-size",
            "100",
            "--uploads",
            "1",
        ],
        "replay",
    );
    let mut reports = Vec::new();
    loop {
        let running = replay.is_running();
        let out = env.run(&[
            "verify", "--sample", "0", "--repair", "--grace", "0s", "--json",
        ]);
        let report: serde_json::Value = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
        reports.push(report);
        if !running {
            break;
        }
    }
    let status = replay.wait();
    assert!(status.success(), "{}", env.read_log("replay"));

    // What the services hold: every row's object is in the bucket, and nothing else is.
    let listed: std::collections::BTreeSet<String> = store
        .list("images/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    let rows = index.entries_in_bucket(&bucket).await.unwrap();
    assert_eq!(rows.len(), IMAGES, "the replay indexed every record");
    let without_object: Vec<&str> = rows
        .iter()
        .map(|r| r.object_key.as_str())
        .filter(|k| !listed.contains(*k))
        .collect();
    assert!(
        without_object.is_empty(),
        "repair deleted {} indexed images, e.g. {:?}; reports: {reports:#?}",
        without_object.len(),
        &without_object[..without_object.len().min(5)]
    );
    assert!(!listed.contains(garbage), "the true orphan was not removed");
    assert_eq!(listed.len(), IMAGES);
    // The race was run: repair met orphans that the replay indexed under its hands.
    let raced: usize = reports
        .iter()
        .map(|r| {
            r["orphans_indexed_meanwhile"]
                .as_array()
                .map_or(0, Vec::len)
        })
        .sum();
    assert!(raced > 0, "repair never met the replay: {reports:#?}");
}

/// The value of one sample in Prometheus text, e.g. `imgstream_records_stored_total`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consumers_metrics_match_what_the_services_hold() {
    let env = TestEnv::new("metrics").await;
    env.produce(30, &[]);
    let producer = raw_producer(&env);
    send_raw(&producer, &env.name, "garbage", Some(b"\x00")).await;
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let consumer = env.spawn(
        &["consume", "--until-idle", "6", "--metrics-addr", &addr],
        "consumer",
    );
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http.get(url).send().await.ok()?;
            Some((r.status().as_u16(), r.text().await.ok()?))
        }
    };
    // Scrape until every record is accounted for (the consumer idles 6 s before it exits).
    let text = std::sync::Mutex::new(String::new());
    let done = common::eventually(std::time::Duration::from_secs(60), || async {
        if let Some((200, body)) = get("/metrics").await {
            *text.lock().unwrap() = body;
        }
        let text = text.lock().unwrap();
        sample(&text, "imgstream_records_stored_total") == Some(30.0)
            && sample(&text, "imgstream_records_dead_lettered_total") == Some(1.0)
    })
    .await;
    let text = text.into_inner().unwrap();
    assert!(
        done,
        "metrics never reached the counts:\n{text}\n{}",
        env.read_log("consumer")
    );
    assert_eq!(get("/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(get("/readyz").await.map(|r| r.0), Some(200));

    // The counters agree with what the services hold.
    let (objects, rows) = env.counts().await;
    assert_eq!((objects, rows), (30, 30));
    let bytes: i64 = env
        .index()
        .await
        .all_entries()
        .await
        .unwrap()
        .iter()
        .map(|r| r.size_bytes)
        .sum();
    assert_eq!(
        sample(&text, "imgstream_stored_bytes_total"),
        Some(bytes as f64)
    );
    assert_eq!(
        sample(&text, "imgstream_records_consumed_total"),
        Some(31.0)
    );
    assert!(
        text.contains(r#"imgstream_records_dead_lettered_total{code="not-wire-format"} 1"#),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "imgstream_object_store_request_duration_seconds_count"
        ) >= Some(30.0),
        "{text}"
    );
    assert!(
        sample(&text, "imgstream_last_stored_timestamp_seconds") > Some(1.7e9),
        "{text}"
    );
    assert!(
        text.contains(r#"imgstream_outage_in_progress{service="object store"} 0"#),
        "{text}"
    );
    let status = consumer
        .wait_within(std::time::Duration::from_secs(300))
        .expect("the consumer did not exit within 300 s");
    assert!(status.success(), "{}", env.read_log("consumer"));
}

/// The group's position follows the stored records while the consumer runs, not only when it
/// stops (a consumer killed after a quiet second replays nothing), and a consumer with nothing new
/// to commit sends no commits: during an outage, commits sent on every poll piled up in
/// librdkafka and kept a restarted broker's group from completing its rebalance.
#[tokio::test(flavor = "multi_thread")]
async fn offsets_are_committed_while_the_consumer_runs_and_only_when_they_moved() {
    let env = TestEnv::new("midrun-commit").await;
    let mut consumer = {
        let log = env.log_path("consumer");
        let file = std::fs::File::create(&log).unwrap();
        let child = env
            .command(&["consume"])
            .env("IMGSTREAM_KAFKA_DEBUG", "cgrp")
            .env("IMGSTREAM_LOG", "info,librdkafka=debug")
            .stdout(std::process::Stdio::from(file.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(file))
            .spawn()
            .unwrap();
        common::Spawned::from(child)
    };
    env.produce(25, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let lag = loop {
        let status = env.run(&["status", "--json"]);
        let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
        let lag = status["total_lag"].as_i64();
        if lag == Some(0) || std::time::Instant::now() > deadline {
            break lag;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(
        lag,
        Some(0),
        "the running consumer never committed what it stored"
    );
    assert_eq!(env.counts().await, (25, 25));
    // Caught up and committed: four quiet seconds send not one more commit.
    let commits = || {
        env.read_log("consumer")
            .lines()
            .filter(|l| l.contains("OffsetCommit for"))
            .count()
    };
    std::thread::sleep(std::time::Duration::from_secs(1));
    let before = commits();
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(before > 0, "no commit seen in the consumer's debug log");
    assert_eq!(commits(), before, "commits sent with nothing new to commit");
    assert!(consumer.is_running(), "the consumer stopped");
    // SIGKILL: no final commit. A second consumer finds nothing left to do.
    drop(consumer);
    let out = env.run(&["consume", "--until-idle", "2", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(summary["stored"], 0, "{summary}");
    assert_eq!(summary["replayed"], 0, "{summary}");
    assert_eq!(env.counts().await, (25, 25));
}

/// Members joining and leaving mid-run hand partitions over exactly where they stopped: a member
/// losing a partition finishes and commits the batches it holds of it first, and one shutting
/// down commits what it finished. Nobody redoes anybody's work.
#[tokio::test(flavor = "multi_thread")]
async fn members_joining_and_leaving_mid_run_redo_no_record() {
    let env = TestEnv::new("handover").await;
    // Enough backlog that the group changes mid-run: each rebalance round takes about 3 s, and
    // at 6,000 records two members had stored them all before the third got its partition.
    const RECORDS: u64 = 15_000;
    env.produce(RECORDS, &["--width", "32", "--height", "24"]);
    // Slow members (small batches, one upload at a time), so that the group changes mid-run.
    let consume = [
        "consume",
        "--batch-size",
        "5",
        "--uploads",
        "1",
        "--until-idle",
        "10",
        "--json",
    ];
    let first = env.spawn_apart(&consume, "first", &[]);
    wait_assigned(&env, "first").await;
    let second = env.spawn_apart(&consume, "second", &[]);
    wait_assigned(&env, "second").await;
    let third = env.spawn_apart(&consume, "third", &[]);
    wait_assigned(&env, "third").await;
    let (_, rows) = env.counts().await;
    assert!(
        (rows as u64) < RECORDS,
        "the group changed too late to mean anything"
    );
    finish_group_change_without_redo(
        &env,
        ("second", second),
        vec![("first", first), ("third", third)],
        RECORDS,
    )
    .await;
}

/// The partitions a member owns as its log tells it: incremental assignments add, revocations
/// and losses take away.
fn owned_partitions(log: &str) -> std::collections::BTreeSet<String> {
    let mut owned = std::collections::BTreeSet::new();
    for line in log.lines() {
        let Some(list) = line
            .split("partitions=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        else {
            continue;
        };
        let partitions = list.split(',').filter(|p| *p != "none").map(String::from);
        if line.contains("partitions assigned") {
            owned.extend(partitions);
        } else if line.contains("partitions revoked") || line.contains("partitions lost") {
            for p in partitions {
                owned.remove(&p);
            }
        }
    }
    owned
}

/// With static membership (`KAFKA_GROUP_INSTANCE_ID`), a member killed and restarted within the
/// session timeout takes its partitions back without a rebalance: the other member keeps its own
/// and sees no revocation or new assignment.
#[tokio::test(flavor = "multi_thread")]
async fn a_static_member_restarted_quickly_gets_its_partitions_back_without_a_rebalance() {
    // A 10 s session, so that "past the session timeout" below is a short wait.
    let env = TestEnv::with("static", &[common::SHORT_SESSION]).await;
    env.produce(30, &[]);
    let member = |name: &str| {
        env.spawn_apart(
            &["consume", "--until-idle", "60"],
            name,
            &[("KAFKA_GROUP_INSTANCE_ID", name)],
        )
    };
    let first = member("first");
    let second = member("second");
    // Settled: each owns some of the three partitions, together all of them.
    let settled = common::eventually(std::time::Duration::from_secs(60), || async {
        let (a, b) = (
            owned_partitions(&env.read_log("first")),
            owned_partitions(&env.read_log("second")),
        );
        !a.is_empty() && !b.is_empty() && a.len() + b.len() == 3 && a.is_disjoint(&b)
    })
    .await;
    assert!(settled, "{}", env.read_log("second"));
    let before = owned_partitions(&env.read_log("first"));
    let second_log_before = env.read_log("second");
    common::signal(first.child(), common::SIGKILL);
    drop(first);
    // Back well within the 10 s session timeout, under the same instance id.
    let restarted = env.spawn_apart(
        &["consume", "--until-idle", "60"],
        "first-again",
        &[("KAFKA_GROUP_INSTANCE_ID", "first")],
    );
    let back = common::eventually(std::time::Duration::from_secs(30), || async {
        !owned_partitions(&env.read_log("first-again")).is_empty()
    })
    .await;
    assert!(back, "{}", env.read_log("first-again"));
    assert_eq!(owned_partitions(&env.read_log("first-again")), before);
    // Past the session timeout: a rebalance would have happened by now if there were one.
    std::thread::sleep(std::time::Duration::from_secs(12));
    let second_log = env.read_log("second");
    let since = &second_log[second_log_before.len()..];
    assert!(
        !since.contains("partitions revoked") && !since.contains("partitions assigned"),
        "the other member saw a rebalance:\n{since}"
    );
    assert_eq!(env.counts().await, (30, 30));
    drop((restarted, second));
}

/// A member stopped by SIGTERM leaves its group on the way out (a LeaveGroup), so the group
/// hands its partitions on at once, not after the 10 s session timeout. The process used to
/// exit while its fetch thread was still closing the consumer.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_stopped_by_sigterm_leaves_its_group_at_once() {
    let env = TestEnv::new("leave").await;
    env.produce(200, &[]);
    let member = env.spawn_apart(&["consume", "--json"], "member", &[]);
    let assigned = common::eventually(std::time::Duration::from_secs(60), || async {
        common::runs::was_assigned_partitions(&env.read_log("member"))
    })
    .await;
    assert!(assigned, "no partitions:\n{}", env.read_log("member"));
    common::signal(member.child(), common::SIGTERM);
    let status = member.wait_within(std::time::Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "ended with {status:?}:\n{}",
        env.read_log("member")
    );
    assert_eq!(
        group_members(&env),
        0,
        "the stopped member is still in its group: it did not leave, and the group waits for its session to time out"
    );
}

/// How many members the broker counts in the test's consumer group.
fn group_members(env: &TestEnv) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let kafka = &env.settings.kafka;
    let client: BaseConsumer = imgstream::kafka::base_config(kafka, "test-group-members")
        .create()
        .expect("a client");
    let groups = client
        .fetch_group_list(Some(&kafka.group_id), std::time::Duration::from_secs(10))
        .expect("the group's description");
    groups.groups().iter().map(|g| g.members().len()).sum()
}
