//! The integration-test harness: every test gets its own topic, dead-letter topic, bucket,
//! PostgreSQL database, consumer group and registry subject, all created through `imgstream setup`
//! and removed when the test ends (also when it fails).
//!
//! Refuses to run unless the configured database's name says it is a test database.
#![allow(dead_code)]

pub mod chromium;
pub mod identities;
pub mod runs;
pub mod toxiproxy;

use imgstream::config::Settings;
use imgstream::index::ImageIndex;
use imgstream::schema::{IMAGE_RECORD_SCHEMA, RegistryClient};
use imgstream::store::ImageStore;
use imgstream::{setup, wiring};
use sqlx::Connection;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use uuid::Uuid;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// For tests that kill or freeze a consumer and wait for its group to hand the partitions on: a
/// 10 s session instead of the default 45 s, so the wait is short.
pub const SHORT_SESSION: (&str, &str) = ("KAFKA_SESSION_TIMEOUT_MS", "10000");

/// The base settings from the environment, with the test-database guard applied.
fn base_vars() -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    let url = vars
        .entry("DATABASE_CONNECTION_STRING".into())
        .or_insert_with(|| "postgres://imgstream:imgstream@127.0.0.1:5432/imgstream_test".into())
        .clone();
    if let Err(why) = check_test_database(&url) {
        panic!("{why}");
    }
    vars
}

/// Integration tests create and drop databases: only next to one whose name says "test".
pub fn check_test_database(url: &str) -> Result<(), String> {
    let parsed = imgstream::config::parse_database_url(url).map_err(|e| e.to_string())?;
    if parsed.database_name().to_lowercase().contains("test") {
        Ok(())
    } else {
        Err(format!(
            "refusing to run integration tests against database {:?}: its name must contain \"test\" \
             (e.g. DATABASE_CONNECTION_STRING=postgres://imgstream:imgstream@127.0.0.1:5432/imgstream_test)",
            parsed.database_name()
        ))
    }
}

/// One test's private corner of the stack.
pub struct TestEnv {
    pub name: String,
    pub vars: HashMap<String, String>,
    pub settings: Settings,
    /// The database this environment created, on the base server: dropped at the end even when
    /// a test points `DATABASE_CONNECTION_STRING` elsewhere (a closed port, another role).
    created_database: imgstream::config::DatabaseUrl,
}

impl TestEnv {
    /// Creates the names and runs `imgstream setup` (as a library call) against them.
    pub async fn new(label: &str) -> TestEnv {
        Self::with(label, &[]).await
    }

    pub async fn with(label: &str, overrides: &[(&str, &str)]) -> TestEnv {
        Self::prepared(Self::unprepared(label, overrides).await).await
    }

    /// Like [`TestEnv::with`], with `query` (e.g. `sslmode=verify-full&sslrootcert=…`) on the
    /// test database's connection string.
    pub async fn with_database_query(
        label: &str,
        overrides: &[(&str, &str)],
        query: &str,
    ) -> TestEnv {
        Self::prepared(Self::unprepared_in(label, overrides, Some(query)).await).await
    }

    async fn prepared(env: TestEnv) -> TestEnv {
        let items = setup::run(&env.settings, IMAGE_RECORD_SCHEMA, false).await;
        let problems: Vec<String> = items
            .iter()
            .filter(|i| i.state.is_problem())
            .map(|i| i.to_string())
            .collect();
        assert!(problems.is_empty(), "setup failed: {problems:?}");
        env
    }

    /// Names and an empty database, but no setup: for tests of setup itself.
    pub async fn unprepared(label: &str, overrides: &[(&str, &str)]) -> TestEnv {
        Self::unprepared_in(label, overrides, None).await
    }

    async fn unprepared_in(
        label: &str,
        overrides: &[(&str, &str)],
        query: Option<&str>,
    ) -> TestEnv {
        let id = Uuid::new_v4().simple().to_string();
        let name = format!("t-{label}-{}", &id[..10])
            .to_lowercase()
            .replace('_', "-");
        let mut vars = base_vars();
        let base =
            imgstream::config::parse_database_url(&vars["DATABASE_CONNECTION_STRING"]).unwrap();
        let database = format!("{}_{}", base.database_name(), &id[..10]);
        let mut db_url = base.with_database(&database);
        if let Some(query) = query {
            db_url = imgstream::config::parse_database_url(&format!("{}?{query}", db_url.expose()))
                .expect("test database URL");
        }
        for (k, v) in [
            ("KAFKA_DATA_TOPIC", name.clone()),
            ("KAFKA_GROUP_ID", name.clone()),
            ("MINIO_BUCKET_NAME", name.clone()),
            ("DATABASE_CONNECTION_STRING", db_url.expose().to_string()),
            ("KAFKA_TOPIC_PARTITIONS", "3".to_string()),
            ("IMGSTREAM_ENV_FILE", "/nonexistent".to_string()),
        ] {
            vars.insert(k.to_string(), v);
        }
        for (k, v) in overrides {
            vars.insert(k.to_string(), v.to_string());
        }
        let settings = Settings::from_vars(&vars).expect("test settings");
        create_database(&base, &database).await;
        TestEnv {
            name,
            vars,
            settings,
            created_database: base.with_database(&database),
        }
    }

    pub fn store(&self) -> ImageStore {
        wiring::store(&self.settings).unwrap()
    }

    pub async fn index(&self) -> ImageIndex {
        wiring::index(&self.settings).await.unwrap()
    }

    pub fn registry(&self) -> RegistryClient {
        wiring::registry(&self.settings).unwrap()
    }

    /// The `imgstream` binary with this test's settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .env_clear()
            .envs(&self.vars)
            .env("IMGSTREAM_LOG", "info,rdkafka=warn,sqlx=warn");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run imgstream")
    }

    /// Starts `imgstream` in the background with its output in a log file (printed on failure).
    pub fn spawn(&self, args: &[&str], log: &str) -> Spawned {
        self.spawn_with(args, log, &[])
    }

    /// [`TestEnv::spawn`] with extra environment variables.
    pub fn spawn_with(&self, args: &[&str], log: &str, extra: &[(&str, &str)]) -> Spawned {
        let path = self.log_path(log);
        let file = std::fs::File::create(&path).expect("log file");
        let child = self
            .command(args)
            .envs(extra.iter().copied())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn imgstream");
        Spawned(Some(child))
    }

    /// [`TestEnv::spawn_with`] with stdout kept apart, in `<log>.out` ([`TestEnv::read_out`]), so
    /// that a `--json` summary can be read.
    pub fn spawn_apart(&self, args: &[&str], log: &str, extra: &[(&str, &str)]) -> Spawned {
        let out = std::fs::File::create(self.log_path(&format!("{log}.out"))).expect("out file");
        let err = std::fs::File::create(self.log_path(log)).expect("log file");
        let child = self
            .command(args)
            .envs(extra.iter().copied())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn imgstream");
        Spawned(Some(child))
    }

    /// What a process from [`TestEnv::spawn_apart`] wrote to stdout.
    pub fn read_out(&self, log: &str) -> String {
        self.read_log(&format!("{log}.out"))
    }

    pub fn log_path(&self, log: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&self.name);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(format!("{log}.log"))
    }

    pub fn read_log(&self, log: &str) -> String {
        std::fs::read_to_string(self.log_path(log)).unwrap_or_default()
    }

    /// Produces `count` images through the real CLI: small ones unless `extra` gives a size.
    pub fn produce(&self, count: u64, extra: &[&str]) -> Output {
        let count = count.to_string();
        let mut args = vec!["produce", "--count", &count, "--json"];
        if !extra.contains(&"--width") {
            args.extend_from_slice(&["--width", "64-160", "--height", "48-120"]);
        }
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "produce failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// What the services hold: (objects in the bucket, rows in the index).
    pub async fn counts(&self) -> (usize, i64) {
        let objects = self.store().list("images/").await.unwrap().len();
        let index = self.index().await;
        let rows = index.count().await.unwrap();
        index.close().await;
        (objects, rows)
    }

    async fn cleanup(&self) {
        if let Ok(admin) = wiring::topic_admin(&self.settings) {
            let _ = admin
                .delete(&[
                    &self.settings.kafka.data_topic,
                    &self.settings.kafka.dlq_topic,
                ])
                .await;
        }
        let _ = self.store().destroy_bucket().await;
        let url = &self.created_database;
        let maintenance = url.with_database("postgres");
        if let Ok(mut conn) = sqlx::PgConnection::connect(maintenance.expose()).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                url.database_name()
            ))
            .execute(&mut conn)
            .await;
        }
        let subject = imgstream::schema::value_subject(&self.settings.kafka.data_topic);
        if let Ok(registry) = imgstream::wiring::registry(&self.settings) {
            let _ = registry.delete_subject(&subject).await;
        }
    }
}

impl Drop for TestEnv {
    // Runs on success and on panic alike; a fresh runtime on its own thread because Drop cannot await.
    fn drop(&mut self) {
        if std::env::var("IMGSTREAM_KEEP_TEST_DATA").is_ok() {
            return;
        }
        let env = TestEnv {
            name: self.name.clone(),
            vars: self.vars.clone(),
            settings: self.settings.clone(),
            created_database: self.created_database.clone(),
        };
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(env.cleanup());
            std::mem::forget(env);
        })
        .join();
    }
}

async fn create_database(base: &imgstream::config::DatabaseUrl, name: &str) {
    let maintenance = base.with_database("postgres");
    let mut conn = sqlx::PgConnection::connect(maintenance.expose())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {} ({e}); run `make stack-up`",
                base.host_port()
            )
        });
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .expect("create test database");
}

/// The `imgstream` binary cargo built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imgstream"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A plain producer for hand-made (often malformed) records.
pub fn raw_producer(env: &TestEnv) -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.bootstrap_servers)
        .set("message.max.bytes", "20000000")
        .create()
        .expect("raw producer")
}

/// The header every raw record carries: its key again, to check that dead letters keep headers.
pub const LABEL_HEADER: &str = "test-label";

/// Sends a record as is, with a `test-label` header; a `None` payload is a tombstone.
pub async fn send_raw(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: &str,
    payload: Option<&[u8]>,
) {
    let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: LABEL_HEADER,
        value: Some(key),
    });
    let mut record = rdkafka::producer::FutureRecord::<str, [u8]>::to(topic)
        .key(key)
        .headers(headers);
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("raw send");
}

/// The id under which setup registered the value schema.
pub async fn schema_id(env: &TestEnv) -> u32 {
    env.registry()
        .lookup(
            &imgstream::schema::value_subject(&env.name),
            IMAGE_RECORD_SCHEMA,
        )
        .await
        .unwrap()
        .expect("schema registered by setup")
        .id
}

/// A valid record of a small generated image.
pub fn valid_record(
    seed: u64,
    format: imgstream::domain::ImageFormat,
) -> imgstream::domain::ImageRecord {
    let spec = imgstream::generate::ImageSpec {
        width: 40,
        height: 30,
        format,
    };
    let data = imgstream::generate::render(&spec, seed).unwrap();
    imgstream::domain::ImageRecord {
        image_id: Uuid::new_v4(),
        customer_id: "test-customer".into(),
        source_id: "cam-1".into(),
        created_at: chrono::Utc::now(),
        content_type: format.content_type().into(),
        width: 40,
        height: 30,
        sha256: imgstream::domain::sha256_hex(&data),
        data: bytes::Bytes::from(data),
        reference: None,
    }
}

/// Encodes a record with the schema registered for this test.
pub async fn encode(env: &TestEnv, record: &imgstream::domain::ImageRecord) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(IMAGE_RECORD_SCHEMA).unwrap();
    imgstream::schema::codec::encode(&schema, schema_id(env).await, record).unwrap()
}

/// Every record currently on a topic, read from the beginning with a plain consumer.
pub fn read_topic(env: &TestEnv, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    read_topic_as(env, topic, |m| m.detach())
}

/// Every record currently on a topic, each as `read` makes it of the message.
pub fn read_topic_as<T>(
    env: &TestEnv,
    topic: &str,
    read: impl Fn(&rdkafka::message::BorrowedMessage<'_>) -> T,
) -> Vec<T> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.bootstrap_servers)
        .set("group.id", format!("reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut remaining = 0;
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), TIMEOUT).unwrap();
        remaining += high - low;
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (out.len() as i64) < remaining && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            out.push(read(&m));
        }
    }
    out
}

/// A header's value as text.
pub fn header(m: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::{Headers, Message};
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGCONT: i32 = 18;
pub const SIGSTOP: i32 = 19;

unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

/// A background `imgstream`, killed if the test ends (or fails) while it still runs, so that it
/// never outlives the topic and bucket the cleanup removes.
pub struct Spawned(Option<Child>);

impl From<Child> for Spawned {
    fn from(child: Child) -> Self {
        Spawned(Some(child))
    }
}

impl Spawned {
    pub fn child(&self) -> &Child {
        self.0.as_ref().expect("running")
    }

    pub fn is_running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    pub fn wait(mut self) -> std::process::ExitStatus {
        self.0.take().expect("running").wait().expect("wait")
    }

    /// Waits at most `limit`; a process still running then is killed and `None` returned, so a
    /// hang fails its test instead of stalling the whole run.
    pub fn wait_within(mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take().expect("running");
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned; no memory is shared.
    let rc = unsafe { kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({}, {sig}) failed", child.id());
}

/// A free local port for a server the test starts.
/// A tool the stack or `scripts/test-deps.sh` built into the cache (`mc`, `minio`, `toxiproxy`).
pub fn cached_binary(name: &str) -> PathBuf {
    let cache = std::env::var("IMGSTREAM_CACHE_DIR").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/imgstream"),
        PathBuf::from,
    );
    let binary = cache.join("bin").join(name);
    assert!(
        binary.exists(),
        "{} is missing; run scripts/test-deps.sh and make stack-up (make test does both)",
        binary.display()
    );
    binary
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A small real PNG image of `customer`, stored and indexed, so thumbnails and URLs work.
pub async fn stored_image(
    env: &TestEnv,
    customer: &str,
    minutes_ago: i64,
) -> imgstream::domain::IndexEntry {
    let image_id = Uuid::new_v4();
    let spec = imgstream::generate::ImageSpec {
        width: 64,
        height: 48,
        format: imgstream::domain::ImageFormat::Png,
    };
    let bytes = imgstream::generate::render(&spec, minutes_ago as u64).unwrap();
    let sha = imgstream::domain::sha256_hex(&bytes);
    let key = imgstream::domain::object_key(&image_id);
    env.store()
        .put_image(&key, bytes.clone().into(), "image/png", &sha)
        .await
        .unwrap();
    imgstream::domain::IndexEntry {
        image_id,
        object_key: key,
        bucket: env.settings.store.bucket.clone(),
        sha256: sha,
        size_bytes: bytes.len() as i64,
        width: 64,
        height: 48,
        content_type: "image/png".into(),
        customer_id: customer.into(),
        source_id: "cam-1".into(),
        created_at: chrono::Utc::now() - chrono::Duration::minutes(minutes_ago),
        kafka_topic: env.name.clone(),
        kafka_partition: 0,
        kafka_offset: minutes_ago,
    }
}
