//! Images larger than a topic carries, through the bucket (the claim check, docs/claim-check.md),
//! against the real stack with topics at `max.message.bytes=1048576`: a mix from 10 KB to 64 MB
//! stored once each, a producer killed between its upload and its record, a consumer killed mid
//! batch of references, forged references, confluent-kafka's deserializer on a reference record,
//! and the S3 write options (SSE-KMS, tags) on a MinIO of the test's own with a KMS key.

mod common;

use bytes::Bytes;
use common::{
    LABEL_HEADER, SIGKILL, Spawned, TestEnv, header, raw_producer, read_topic, send_raw, signal,
    stderr, stdout,
};
use imgstream::domain::{
    ImageFormat, ImageRecord, ImageReference, IndexEntry, object_key, sha256_hex,
};
use imgstream::kafka::dlq::headers;
use imgstream::store::{ImageStore, ObjectLabels, UploadShape};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

const MIB: usize = 1 << 20;

/// A PNG of `size` bytes: a real 320x240 image, then filler after its end, as a camera's
/// trailing metadata would be. The consumer reads only the head of a referenced image.
fn png_of_size(size: usize, seed: u64) -> Bytes {
    let spec = imgstream::generate::ImageSpec {
        width: 320,
        height: 240,
        format: ImageFormat::Png,
    };
    let mut data = imgstream::generate::render(&spec, seed).unwrap();
    let mut x = seed | 1;
    while data.len() < size {
        // xorshift: filler that no store or codec can shrink.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    Bytes::from(data)
}

/// A record for `data`: inline when it fits the topic, else with a reference to its own key.
fn record_for(data: &Bytes, inline_max: usize) -> ImageRecord {
    let image_id = Uuid::new_v4();
    let sha256 = sha256_hex(data);
    let (inline, reference) = if data.len() <= inline_max {
        (data.clone(), None)
    } else {
        let reference = ImageReference {
            key: object_key(&image_id),
            size: data.len() as u64,
            sha256: sha256.clone(),
        };
        (Bytes::new(), Some(reference))
    };
    ImageRecord {
        image_id,
        customer_id: "large-customer".into(),
        source_id: "scanner-1".into(),
        created_at: chrono::Utc::now(),
        content_type: "image/png".into(),
        width: 320,
        height: 240,
        sha256,
        data: inline,
        reference,
    }
}

fn shape(env: &TestEnv) -> UploadShape {
    UploadShape {
        part_bytes: env.settings.limits.upload_part_bytes,
        parts_in_flight: 2,
    }
}

/// What the producer does for a large image: the upload, create-only and checksummed.
async fn upload(store: &ImageStore, env: &TestEnv, record: &ImageRecord, data: &Bytes) {
    store
        .upload_image(
            &object_key(&record.image_id),
            data.clone(),
            &record.content_type,
            &record.sha256,
            ObjectLabels::of(record),
            shape(env),
        )
        .await
        .expect("upload");
}

/// Sends `record` as is, labelled `label`.
async fn send(env: &TestEnv, label: &str, record: &ImageRecord) {
    let payload = common::encode(env, record).await;
    send_raw(&raw_producer(env), &env.name, label, Some(&payload)).await;
}

/// Consumes until idle; the consumer must exit 0.
fn consume(env: &TestEnv, extra: &[&str]) -> Value {
    let mut args = vec!["consume", "--until-idle", "3", "--json"];
    args.extend_from_slice(extra);
    let out = env.run(&args);
    assert!(out.status.success(), "consume: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).expect("consume --json")
}

async fn rows(env: &TestEnv) -> Vec<IndexEntry> {
    let index = env.index().await;
    let rows = index.all_entries().await.unwrap();
    index.close().await;
    rows
}

/// Each dead letter's label and code.
fn letters(env: &TestEnv) -> BTreeMap<String, String> {
    read_topic(env, &env.settings.kafka.dlq_topic)
        .iter()
        .map(|m| {
            (
                header(m, LABEL_HEADER).unwrap_or_default(),
                header(m, headers::CODE).unwrap_or_default(),
            )
        })
        .collect()
}

fn verify(env: &TestEnv, args: &[&str]) -> Value {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let out = env.run(&all);
    serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("verify --json ({e}): {}", stderr(&out)))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mix_from_10_kb_to_64_mb_is_stored_once_each_with_the_bucket_holding_its_sha256() {
    let env = TestEnv::new("large-mix").await;
    let store = env.store();
    let inline_max = env.settings.limits.inline_max_bytes;
    // The topic as a broker's defaults leave it: 1 MiB.
    assert_eq!(env.settings.limits.max_message_bytes(), 1_048_576);
    // Inline (10 KB, 900 KB), one PUT (3 MB), multipart (20 MB: two parts, 64 MB: four).
    let sizes = [10_000, 900_000, 3 * MIB, 20 * MIB, 64 * MIB];
    let mut expected = BTreeMap::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let data = png_of_size(size, i as u64 + 1);
        let record = record_for(&data, inline_max);
        if record.reference.is_some() {
            upload(&store, &env, &record, &data).await;
        }
        send(&env, &format!("size-{size}"), &record).await;
        expected.insert(record.image_id, (size as i64, record.sha256.clone()));
    }
    // And the producer's own path: images too large for the topic, made and uploaded by
    // `imgstream produce` (PNG of 1.9 Mpx: megabytes of texture and noise).
    let produced = env.produce(
        2,
        &[
            "--width", "1600", "--height", "1200", "--format", "png", "--key", "image",
        ],
    );
    let summary: Value = serde_json::from_str(stdout(&produced).trim()).unwrap();
    assert_eq!(summary["uploaded"], 2, "{summary}");

    let consumed = consume(&env, &[]);
    assert_eq!(consumed["dead_lettered"], 0, "{consumed}");
    let rows = rows(&env).await;
    let objects = store.list("images/").await.unwrap();
    assert_eq!(rows.len(), sizes.len() + 2, "{consumed}");
    assert_eq!(
        objects.len(),
        rows.len(),
        "one object per row, nothing else"
    );
    for row in &rows {
        // The bytes in the bucket, hashed here, are what the row and the record say.
        let (digest, len) = store.streamed_sha256(&row.object_key).await.unwrap();
        assert_eq!(hex::encode(digest), row.sha256, "{}", row.object_key);
        assert_eq!(len as i64, row.size_bytes, "{}", row.object_key);
        if let Some((size, sha)) = expected.get(&row.image_id) {
            assert_eq!((&row.size_bytes, &row.sha256), (size, sha));
        }
    }
    assert!(rows.iter().any(|r| r.size_bytes == 64 * MIB as i64));
    let report = verify(&env, &["--full"]);
    assert_eq!(report["orphan_objects"], serde_json::json!([]), "{report}");
    assert_eq!(report["checksum_mismatches"], serde_json::json!([]));
    assert_eq!(report["checksums_checked"], rows.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_killed_between_upload_and_send_leaves_an_orphan_that_only_repair_removes() {
    // Records up to 64 KiB inline, so that small images are large here and quick to make.
    let env = TestEnv::with(
        "large-kill-producer",
        &[("IMGSTREAM_INLINE_MAX_BYTES", "65536")],
    )
    .await;
    let store = env.store();
    // Two large images, one every 20 s: the second is uploaded, then waits for its turn to be
    // sent; the producer is killed in that wait.
    let producer = env.spawn(
        &[
            "produce", "--count", "2", "--rate", "0.05", "--width", "640", "--height", "480",
            "--format", "png",
        ],
        "produce",
    );
    let two_uploaded = common::eventually(Duration::from_secs(60), || async {
        store.list("images/").await.unwrap().len() == 2
    })
    .await;
    assert!(two_uploaded, "{}", env.read_log("produce"));
    signal(producer.child(), SIGKILL);
    assert!(!producer.wait().success());
    assert_eq!(read_topic(&env, &env.name).len(), 1, "one record was sent");

    // Before the consumer has read the topic, an upload may still be named by a record on its
    // way: repair keeps both.
    let early = verify(&env, &["--repair", "--grace", "0s"]);
    assert_eq!(
        strings(&early["orphans_kept_unsettled"]).len(),
        2,
        "{early}"
    );
    assert_eq!(store.list("images/").await.unwrap().len(), 2);

    let consumed = consume(&env, &[]);
    assert_eq!(consumed["stored"], 1, "{consumed}");
    let rows = rows(&env).await;
    assert_eq!(rows.len(), 1);
    let orphan: Vec<String> = store
        .list("images/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| *k != rows[0].object_key)
        .collect();
    assert_eq!(orphan.len(), 1);
    // Reported while younger than the grace period, and kept.
    let report = verify(&env, &["--repair"]);
    assert_eq!(strings(&report["orphan_objects"]), orphan, "{report}");
    assert_eq!(strings(&report["orphans_too_young"]), orphan, "{report}");
    // Past it (0 s here), removed, and never indexed.
    let repaired = verify(&env, &["--repair", "--grace", "0s"]);
    assert_eq!(strings(&repaired["orphans_removed"]), orphan, "{repaired}");
    let left: Vec<String> = store
        .list("images/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(left, vec![rows[0].object_key.clone()]);
    assert_eq!(self::rows(&env).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_killed_mid_batch_of_references_stores_each_exactly_once_after_a_restart() {
    // Parts of 5 MiB (S3's smallest), so that a multipart upload is quick to make.
    let env = TestEnv::with(
        "large-kill-consumer",
        // A killed member's partitions go to the next one after 10 s, not 45.
        &[
            ("IMGSTREAM_UPLOAD_PART_BYTES", "5242880"),
            common::SHORT_SESSION,
        ],
    )
    .await;
    let store = env.store();
    let inline_max = env.settings.limits.inline_max_bytes;
    let count = 8;
    for i in 0..count {
        // 3 MB in one PUT, or 6 MB in two parts (a streamed hash on the consumer).
        let size = if i % 2 == 0 { 6 * MIB } else { 3 * MIB };
        let data = png_of_size(size, 100 + i);
        let record = record_for(&data, inline_max);
        upload(&store, &env, &record, &data).await;
        send(&env, &format!("ref-{i}"), &record).await;
    }
    // The first consumer reads the store at 2 MB/s through a proxy, one record at a time: a 6 MB
    // object's streamed hash takes about 3 s, so the kill lands mid-run. At full speed, or with
    // the checks side by side (the proxy's rate is per connection), the eight checks ended before
    // the kill, as the first rows were seen.
    let toxiproxy = common::toxiproxy::Toxiproxy::start().await;
    let direct = env
        .vars
        .get("MINIO_CONNECTION_STRING")
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:9000".to_string());
    let upstream = direct
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let proxy = toxiproxy
        .proxy("large-kill-store", "127.0.0.1:0", &upstream)
        .await;
    proxy
        .add("bandwidth", serde_json::json!({"rate": 2048}))
        .await;
    let proxied = direct.replace(&upstream, &proxy.listen);
    let consumer: Spawned = env.spawn_with(
        &[
            "consume",
            "--until-idle",
            "60",
            "--batch-size",
            "1",
            "--batches-in-flight",
            "1",
            "--uploads",
            "1",
        ],
        "consume-1",
        &[("MINIO_CONNECTION_STRING", &proxied)],
    );
    let some = common::eventually(Duration::from_secs(60), || async {
        let index = env.index().await;
        let n = index.count().await.unwrap();
        index.close().await;
        n >= 1
    })
    .await;
    assert!(some, "{}", env.read_log("consume-1"));
    signal(consumer.child(), SIGKILL);
    consumer.wait();
    let before = rows(&env).await.len();
    assert!(before < count as usize, "killed after all {before} rows");

    consume(&env, &[]);
    let rows = rows(&env).await;
    assert_eq!(rows.len(), count as usize);
    assert_eq!(store.list("images/").await.unwrap().len(), count as usize);
    assert!(letters(&env).is_empty(), "{:?}", letters(&env));
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_references_are_dead_lettered_each_with_its_code_and_nothing_is_indexed() {
    let env = TestEnv::new("large-forged").await;
    let store = env.store();
    let inline_max = env.settings.limits.inline_max_bytes;
    let data = |seed| png_of_size(2 * MIB, seed);

    // A genuine record, stored: its key is what one forgery points at.
    let genuine_data = data(1);
    let genuine = record_for(&genuine_data, inline_max);
    upload(&store, &env, &genuine, &genuine_data).await;
    send(&env, "genuine", &genuine).await;

    let mut expected = BTreeMap::new();
    // Another record's key.
    let mut foreign = record_for(&genuine_data, inline_max);
    foreign.reference.as_mut().unwrap().key = object_key(&genuine.image_id);
    expected.insert("foreign-key", (foreign, "reference-foreign-key"));
    // A key outside the image prefix.
    let mut outside = record_for(&data(2), inline_max);
    outside.reference.as_mut().unwrap().key = format!("thumbnails/{}", outside.image_id);
    expected.insert("outside", (outside, "reference-outside-prefix"));
    // An object of another size than the reference says.
    let sized_data = data(3);
    let mut sized = record_for(&sized_data, inline_max);
    upload(&store, &env, &sized, &sized_data).await;
    sized.reference.as_mut().unwrap().size += 1;
    expected.insert("size", (sized, "reference-size-mismatch"));
    // An object whose SHA-256 the store kept (one PUT) differs from the record's.
    let checked_data = data(4);
    let mut checked = record_for(&checked_data, inline_max);
    upload(&store, &env, &checked, &checked_data).await;
    let other = sha256_hex(b"another image");
    checked.sha256 = other.clone();
    checked.reference.as_mut().unwrap().sha256 = other.clone();
    expected.insert("checksum", (checked, "reference-checksum-mismatch"));
    // The same in multipart parts, where the consumer hashes the object itself.
    let parted_data = png_of_size(17 * MIB, 5);
    let mut parted = record_for(&parted_data, inline_max);
    upload(&store, &env, &parted, &parted_data).await;
    parted.sha256 = other.clone();
    parted.reference.as_mut().unwrap().sha256 = other;
    expected.insert("checksum-parts", (parted, "reference-checksum-mismatch"));
    // No object at all.
    let missing = record_for(&data(6), inline_max);
    expected.insert("missing", (missing, "reference-missing"));
    for (label, (record, _)) in &expected {
        send(&env, label, record).await;
    }

    let consumed = consume(&env, &[]);
    assert_eq!(consumed["dead_lettered"], expected.len(), "{consumed}");
    let codes = letters(&env);
    for (label, (_, code)) in &expected {
        assert_eq!(
            codes.get(*label).map(String::as_str),
            Some(*code),
            "{label}"
        );
    }
    let rows = rows(&env).await;
    assert_eq!(
        rows.iter().map(|r| r.image_id).collect::<Vec<_>>(),
        vec![genuine.image_id],
        "only the genuine record is indexed"
    );
}

/// The virtualenv scripts/test-deps.sh installs confluent-kafka 2.11.1 into.
fn foreign_python() -> PathBuf {
    let cache = std::env::var("IMGSTREAM_CACHE_DIR").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/imgstream"),
        PathBuf::from,
    );
    cache.join("venv-confluent-kafka-2.11.1/bin/python")
}

#[tokio::test(flavor = "multi_thread")]
async fn confluent_kafkas_deserializer_reads_a_reference_record_and_an_inline_one() {
    let env = TestEnv::new("large-foreign").await;
    let inline_max = env.settings.limits.inline_max_bytes;
    let small = png_of_size(20_000, 1);
    let inline = record_for(&small, inline_max);
    let large_data = png_of_size(2 * MIB, 2);
    let large = record_for(&large_data, inline_max);
    send(&env, "inline", &inline).await;
    send(&env, "large", &large).await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/foreign/reader.py");
    let out = Command::new(foreign_python())
        .arg(script)
        .args([
            &env.settings.kafka.bootstrap_servers,
            &env.name,
            &env.settings.registry_url,
            "2",
        ])
        .output()
        .expect("run the foreign reader (scripts/test-deps.sh installs it)");
    assert!(out.status.success(), "foreign reader: {}", stderr(&out));
    let read: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let by_id: BTreeMap<String, Value> = read["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["image_id"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    let inline_read = &by_id[&inline.image_id.to_string()];
    assert_eq!(inline_read["data_len"], small.len());
    assert_eq!(inline_read["reference"], Value::Null);
    let large_read = &by_id[&large.image_id.to_string()];
    let reference = large.reference.as_ref().unwrap();
    assert_eq!(large_read["data_len"], 0);
    assert_eq!(
        large_read["reference"],
        serde_json::json!({"key": reference.key, "size": reference.size, "sha256": reference.sha256})
    );
}

/// A MinIO of the test's own, with a static KMS key (the shared one has none), killed when dropped.
struct KmsMinio {
    endpoint: String,
    mc_config: PathBuf,
    _server: Spawned,
}

const KMS_KEY: &str = "imgstream-test-key";

impl KmsMinio {
    async fn start(dir: &std::path::Path) -> KmsMinio {
        let port = common::free_port();
        let log = std::fs::File::create(dir.join("minio.log")).unwrap();
        // MinIO's static key: NAME:base64 of 32 bytes.
        let secret = format!(
            "{KMS_KEY}:{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32])
        );
        let server = Command::new(common::cached_binary("minio"))
            .args(["server", "--address", &format!("127.0.0.1:{port}")])
            .args([
                "--console-address",
                &format!("127.0.0.1:{}", common::free_port()),
            ])
            .arg(dir.join("data"))
            .env("MINIO_ROOT_USER", "minioadmin")
            .env("MINIO_ROOT_PASSWORD", "minioadmin")
            .env("MINIO_UPDATE", "off")
            .env("MINIO_KMS_SECRET_KEY", secret)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start minio");
        let minio = KmsMinio {
            endpoint: format!("127.0.0.1:{port}"),
            mc_config: dir.join("mc"),
            _server: Spawned::from(server),
        };
        let url = format!("http://{}/minio/health/cluster", minio.endpoint);
        let up = common::eventually(Duration::from_secs(60), || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(
            up,
            "{}",
            std::fs::read_to_string(dir.join("minio.log")).unwrap_or_default()
        );
        let alias = minio.mc(&["alias", "set", "own", &format!("http://{}", minio.endpoint)]);
        assert!(alias.status.success(), "{}", stderr(&alias));
        minio
    }

    fn mc(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = args.to_vec();
        if args[0] == "alias" {
            all.extend(["minioadmin", "minioadmin"]);
        }
        Command::new(common::cached_binary("mc"))
            .arg("--config-dir")
            .arg(&self.mc_config)
            .args(&all)
            .output()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_object_written_carries_sse_kms_and_the_customer_and_source_tags() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kms-{}", &Uuid::new_v4().simple().to_string()[..8]));
    std::fs::create_dir_all(&dir).unwrap();
    let minio = KmsMinio::start(&dir).await;
    let env = TestEnv::with(
        "large-sse",
        &[
            ("MINIO_CONNECTION_STRING", &minio.endpoint),
            ("MINIO_SERVER_SIDE_ENCRYPTION", "aws:kms"),
            ("MINIO_SSE_KMS_KEY_ID", KMS_KEY),
            ("MINIO_OBJECT_TAGS", "customer,source"),
        ],
    )
    .await;
    let store = env.store();
    // One inline image through the consumer, one large through the producer's upload.
    let inline_max = env.settings.limits.inline_max_bytes;
    let small = png_of_size(30_000, 1);
    let inline = record_for(&small, inline_max);
    send(&env, "inline", &inline).await;
    let large_data = png_of_size(20 * MIB, 2);
    let large = record_for(&large_data, inline_max);
    upload(&store, &env, &large, &large_data).await;
    send(&env, "large", &large).await;
    let consumed = consume(&env, &[]);
    assert_eq!(consumed["stored"], 2, "{consumed}");

    for record in [&inline, &large] {
        let key = object_key(&record.image_id);
        let head = store.head(&key).await.unwrap();
        assert_eq!(head.encryption.as_deref(), Some("aws:kms"), "{key}");
        let path = format!("own/{}/{key}", env.settings.store.bucket);
        let tags = minio.mc(&["tag", "list", "--json", &path]);
        let tags: Value = serde_json::from_slice(&tags.stdout)
            .unwrap_or_else(|e| panic!("mc tag list ({e}): {}", stderr(&tags)));
        assert_eq!(tags["tagset"]["customer"], "large-customer", "{tags}");
        assert_eq!(tags["tagset"]["source"], "scanner-1", "{tags}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_refuses_an_encryption_option_stops_the_consumer_at_start_with_one_line() {
    // The shared MinIO has no KMS: SSE is a feature it lacks, which no retry changes.
    let env = TestEnv::new("large-sse-refused").await;
    let out = env
        .command(&["consume", "--until-idle", "3"])
        .env("MINIO_SERVER_SIDE_ENCRYPTION", "aws:kms")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("refused the write options"), "{err}");
    assert!(last.contains("MINIO_SERVER_SIDE_ENCRYPTION"), "{err}");
}

/// A process's peak resident memory (VmHWM) while it runs, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// `produce --json` with the smallest part S3 allows; its summary.
fn produce_with_parts(env: &TestEnv, part: usize, args: &[&str]) -> Value {
    let mut all = vec!["produce", "--count", "1", "--json", "--seed", "5"];
    all.extend_from_slice(args);
    let out = env
        .command(&all)
        .env("IMGSTREAM_UPLOAD_PART_BYTES", part.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "produce: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).expect("produce --json")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_image_is_made_and_uploaded_within_three_parts_of_memory() {
    let env = TestEnv::new("large-producer-memory").await;
    const PART: usize = 5 * MIB;
    // The process's own floor (librdkafka, the clients, the runtime): one small image.
    let small = produce_with_parts(&env, PART, &["--width", "64", "--height", "48"]);
    // 8000x6000: 144 MB of pixels, and a PNG of that noise tens of MB.
    let large = produce_with_parts(
        &env,
        PART,
        &["--width", "8000", "--height", "6000", "--format", "png"],
    );
    assert_eq!(large["uploaded"], 1, "{large}");
    let size = large["bytes_delivered"].as_u64().unwrap();
    assert!(
        size > 8 * PART as u64,
        "a multipart upload of many parts: {size}"
    );
    let floor = small["peak_rss_kib"].as_u64().unwrap() * 1024;
    let peak = large["peak_rss_kib"].as_u64().unwrap() * 1024;
    // Two parts in flight and one being filled, plus the encoder's rows and its chunk buffer
    // and the allocator's slack: nowhere near the image (tens of MB) or its pixels (144 MB).
    let bound = floor + 3 * PART as u64 + 24 * MIB as u64;
    eprintln!(
        "producer peak RSS: {} MiB for a {} MiB image (floor {} MiB, bound {} MiB)",
        peak >> 20,
        size >> 20,
        floor >> 20,
        bound >> 20
    );
    assert!(
        peak <= bound,
        "peak {} MiB above {} MiB for a {} MiB image",
        peak >> 20,
        bound >> 20,
        size >> 20
    );

    // And what went up in parts is the image the record names: the consumer checks its
    // size and streamed SHA-256, and its head.
    let consumed = consume(&env, &[]);
    assert_eq!(consumed["stored"], 2, "{consumed}");
    let rows = rows(&env).await;
    let big = rows.iter().find(|r| r.size_bytes as u64 == size).unwrap();
    let (digest, len) = env.store().streamed_sha256(&big.object_key).await.unwrap();
    assert_eq!((hex::encode(digest), len), (big.sha256.clone(), size));
}

#[tokio::test(flavor = "multi_thread")]
async fn thumbnails_of_large_images_are_decoded_shrunk_not_whole() {
    let env = TestEnv::new("large-thumbnails").await;
    // A 24-megapixel JPEG and PNG: 72 MB of RGB each when decoded whole.
    for format in ["jpeg", "png"] {
        let summary = produce_with_parts(
            &env,
            16 * MIB,
            &["--width", "6000", "--height", "4000", "--format", format],
        );
        assert_eq!(summary["delivered"], 1, "{summary}");
    }
    consume(&env, &[]);
    let rows = rows(&env).await;
    assert_eq!(rows.len(), 2);
    let originals: u64 = rows.iter().map(|r| r.size_bytes as u64).sum();

    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = env.spawn(
        &["serve", "--addr", &addr, "--thumbnail-makers", "2"],
        "serve",
    );
    let base = format!("http://{addr}");
    let up = common::eventually(Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(up, "{}", env.read_log("serve"));
    let pid = server.child().id();
    let floor = peak_rss(pid);
    // Both at once: each holds its original's bytes and its shrunk pixels.
    let made = futures::future::join_all(rows.iter().map(|r| {
        let url = format!("{base}/thumbnails/{}", r.image_id);
        async move {
            let response = reqwest::get(url).await.unwrap();
            (response.status().as_u16(), response.bytes().await.unwrap())
        }
    }))
    .await;
    for (status, body) in &made {
        assert_eq!(*status, 200, "{}", env.read_log("serve"));
        let thumbnail = image::load_from_memory(body).unwrap();
        assert_eq!((thumbnail.width(), thumbnail.height()), (256, 171));
    }
    let peak = peak_rss(pid);
    // The originals' bytes (each read whole), and per image its pixels at 1/8 (750x500, about a
    // MB) and the decoders' buffers; decoded whole, each would add 72 MB.
    let bound = originals + 64 * MIB as u64;
    eprintln!(
        "serve peak RSS: {} MiB over a floor of {} MiB for {} MiB of originals (bound {} MiB over the floor)",
        peak >> 20,
        floor >> 20,
        originals >> 20,
        bound >> 20
    );
    assert!(
        peak.saturating_sub(floor) <= bound,
        "serve grew by {} MiB making thumbnails of {} MiB of originals",
        (peak - floor) >> 20,
        originals >> 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_s3_and_the_storage_class_are_on_every_object_and_a_class_the_store_lacks_stops_the_start()
 {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "sse-s3-{}",
        &Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // SSE-S3 on MinIO needs a KMS as well: its keys are the KMS's, managed by the store.
    let minio = KmsMinio::start(&dir).await;
    let env = TestEnv::with(
        "large-sse-s3",
        &[
            ("MINIO_CONNECTION_STRING", &minio.endpoint),
            ("MINIO_SERVER_SIDE_ENCRYPTION", "AES256"),
            ("MINIO_STORAGE_CLASS", "REDUCED_REDUNDANCY"),
        ],
    )
    .await;
    let store = env.store();
    let inline_max = env.settings.limits.inline_max_bytes;
    let small = png_of_size(30_000, 1);
    let inline = record_for(&small, inline_max);
    send(&env, "inline", &inline).await;
    // And the producer's own uploads, one PUT and one in parts.
    for width in ["1000", "2400"] {
        let summary = produce_with_parts(
            &env,
            5 * MIB,
            &["--width", width, "--height", "2000", "--format", "png"],
        );
        assert_eq!(summary["uploaded"], 1, "{summary}");
    }
    let consumed = consume(&env, &[]);
    assert_eq!(consumed["stored"], 3, "{consumed}");
    for row in rows(&env).await {
        let stat = minio.mc(&[
            "stat",
            "--json",
            &format!("own/{}/{}", env.settings.store.bucket, row.object_key),
        ]);
        let stat: Value = serde_json::from_slice(&stat.stdout)
            .unwrap_or_else(|e| panic!("mc stat ({e}): {}", stderr(&stat)));
        let head = store.head(&row.object_key).await.unwrap();
        assert_eq!(head.encryption.as_deref(), Some("AES256"), "{stat}");
        assert_eq!(
            head.storage_class.as_deref(),
            Some("REDUCED_REDUNDANCY"),
            "{stat}"
        );
    }

    // A class this store does not offer: the consumer stops at start, one line naming the
    // setting, and nothing is dead-lettered.
    let out = env
        .command(&["consume", "--until-idle", "3"])
        .env("MINIO_STORAGE_CLASS", "GLACIER")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("refused the write options"), "{err}");
    assert!(last.contains("MINIO_STORAGE_CLASS"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orphan_written_back_by_repair_keeps_its_tags() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let env = TestEnv::with(
        "large-writeback",
        &[("MINIO_OBJECT_TAGS", "customer,source")],
    )
    .await;
    let store = env.store();
    // An image the consumer wrote (tags and all) but has not indexed yet: an orphan to repair.
    let data = png_of_size(40_000, 3);
    let record = record_for(&data, env.settings.limits.inline_max_bytes);
    let key = object_key(&record.image_id);
    store
        .put_image_labelled(
            &key,
            data.clone(),
            &record.content_type,
            &record.sha256,
            Some(ObjectLabels::of(&record)),
            false,
        )
        .await
        .unwrap();
    // A consumer of the group, with a record it has not committed: repair waits for it after
    // its deletes, and here the record is indexed meanwhile.
    send(&env, "pending", &record).await;
    let member: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.bootstrap_servers)
        .set("group.id", &env.settings.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    member.subscribe(&[&env.name]).unwrap();
    let mut polled = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while polled.is_none() && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = member.poll(Duration::from_millis(200)) {
            use rdkafka::message::Message;
            polled = Some((m.partition(), m.offset()));
        }
    }
    let (partition, offset) = polled.expect("the member read the record");
    // Listed times have whole seconds: older than a 0 s grace.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let repair = env.spawn_apart(
        &[
            "verify", "--sample", "0", "--repair", "--grace", "0s", "--json",
        ],
        "repair",
        &[],
    );
    let deleted = common::eventually(Duration::from_secs(60), || async {
        matches!(
            store.head(&key).await,
            Err(imgstream::store::StoreError::NotFound { .. })
        )
    })
    .await;
    assert!(deleted, "{}", env.read_log("repair"));
    // The consumer indexes it and commits: repair finds the row and writes the object back.
    let index = env.index().await;
    let mut entry = rows_entry(&env, &record);
    entry.kafka_partition = partition;
    entry.kafka_offset = offset;
    index.insert_batch(&[entry]).await.unwrap();
    index.close().await;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&env.name, partition, rdkafka::Offset::Offset(offset + 1))
        .unwrap();
    member.commit(&tpl, CommitMode::Sync).unwrap();
    let status = repair.wait_within(Duration::from_secs(180));
    assert!(status.is_some(), "{}", env.read_log("repair"));
    let report: Value = serde_json::from_str(env.read_out("repair").trim()).unwrap();
    assert_eq!(
        strings(&report["orphans_indexed_meanwhile"]),
        vec![key.clone()],
        "{report}"
    );

    // Back with its bytes and its tags, as the store reports them.
    let (digest, _) = store.streamed_sha256(&key).await.unwrap();
    assert_eq!(hex::encode(digest), record.sha256);
    let mc = common::identities::Mc::new(&env);
    let path = format!("admin/{}/{key}", env.settings.store.bucket);
    let tags: Value = serde_json::from_str(&mc.ok(&["tag", "list", "--json", &path])).unwrap();
    assert_eq!(tags["tagset"]["customer"], "large-customer", "{tags}");
    assert_eq!(tags["tagset"]["source"], "scanner-1", "{tags}");
}

fn denied<T>(result: &Result<T, imgstream::store::StoreError>) -> bool {
    matches!(result, Err(imgstream::store::StoreError::Denied { .. }))
}

/// The index row the consumer writes for `record`.
fn rows_entry(env: &TestEnv, record: &ImageRecord) -> IndexEntry {
    IndexEntry {
        image_id: record.image_id,
        object_key: object_key(&record.image_id),
        bucket: env.settings.store.bucket.clone(),
        sha256: record.sha256.clone(),
        size_bytes: record.data.len() as i64,
        width: record.width as i32,
        height: record.height as i32,
        content_type: record.content_type.clone(),
        customer_id: record.customer_id.clone(),
        source_id: record.source_id.clone(),
        created_at: record.created_at,
        kafka_topic: env.name.clone(),
        kafka_partition: 0,
        kafka_offset: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_with_its_own_key_uploads_large_images_and_may_not_delete_or_list() {
    let env = TestEnv::with(
        "large-producer-key",
        &[("MINIO_OBJECT_TAGS", "customer,source")],
    )
    .await;
    let mc = common::identities::Mc::new(&env);
    let bucket = env.settings.store.bucket.clone();
    let producer = common::identities::S3User::create(
        &mc,
        "producer",
        &common::identities::policy("s3-producer.json", &bucket),
    );
    // One PUT and one in parts, with tags: the write-options check at start passes too.
    for width in ["1000", "2400"] {
        let out = env
            .command(&[
                "produce", "--count", "1", "--json", "--width", width, "--height", "2000",
                "--format", "png",
            ])
            .env("IMGSTREAM_UPLOAD_PART_BYTES", (5 * MIB).to_string())
            .env("MINIO_ACCESS_KEY", &producer.access_key)
            .env("MINIO_SECRET_KEY", &producer.secret_key)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let summary: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(summary["uploaded"], 1, "{summary}");
    }
    let consumed = consume(&env, &[]);
    assert_eq!(consumed["stored"], 2, "{consumed}");

    // MinIO refuses the key a delete, a list, and a write outside images/.
    let mut settings = env.settings.clone();
    settings.store.access_key = producer.access_key.clone();
    settings.store.secret_key = producer.secret_key.clone();
    let as_producer = imgstream::wiring::store(&settings).unwrap();
    let key = rows(&env).await[0].object_key.clone();
    let deleted = as_producer.delete(&key).await;
    assert!(denied(&deleted), "delete: {deleted:?}");
    let listed = as_producer.list("images/").await;
    assert!(denied(&listed), "list: {listed:?}");
    let bytes = Bytes::from_static(b"elsewhere");
    let elsewhere = as_producer
        .put_image(
            "elsewhere/x",
            bytes.clone(),
            "image/png",
            &sha256_hex(&bytes),
        )
        .await;
    assert!(denied(&elsewhere), "write outside images/: {elsewhere:?}");
    assert!(
        env.store().head(&key).await.is_ok(),
        "the image is still there"
    );
}
