//! Against the secured side of the local stack (`make stack-up-secured`): Kafka over SASL_SSL with
//! SCRAM-SHA-512 and ACLs, PostgreSQL with `sslmode=verify-full`, MinIO over HTTPS, every
//! certificate from the stack's own CA. `setup` runs as the administrators; `produce` and
//! `consume` each as an identity that may do only its own job, and the services themselves
//! refuse those identities anything else.

mod common;

use common::identities::{KafkaUser, Mc, S3User, TestRole, policy};
use common::{TestEnv, stderr, stdout};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const SECURE_BOOTSTRAP: &str = "127.0.0.1:9192";
const HTTPS_MINIO: &str = "https://127.0.0.1:9010";
// The stack's SCRAM super user and MinIO's root (scripts/stack/kafka.sh, minio.sh).
const KAFKA_ADMIN: (&str, &str) = ("admin", "admin-secret");

fn stack_ca() -> String {
    let ca = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".stack/tls/ca.crt");
    assert!(
        ca.is_file(),
        "{} is missing: start the secured stack (make stack-up-secured)",
        ca.display()
    );
    ca.to_str().unwrap().to_string()
}

/// A test environment on the secured services, set up by the administrators.
async fn secured_env(label: &str, extra: &[(&str, &str)]) -> TestEnv {
    let ca = stack_ca();
    let mut overrides = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", SECURE_BOOTSTRAP),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        ("KAFKA_SASL_USERNAME", KAFKA_ADMIN.0),
        ("KAFKA_SASL_PASSWORD", KAFKA_ADMIN.1),
        ("KAFKA_SSL_CA_LOCATION", &ca),
        ("MINIO_CONNECTION_STRING", HTTPS_MINIO),
        ("MINIO_CA_FILE", &ca),
    ];
    overrides.extend_from_slice(extra);
    TestEnv::with_database_query(
        label,
        &overrides,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    )
    .await
}

/// The consumer's Kafka identity: read the data topic and its group, write dead letters.
fn consumer_identity(env: &TestEnv) -> KafkaUser {
    let kafka = &env.settings.kafka;
    let mut user = KafkaUser::create("consumer");
    user.allow(&["Read", "Describe"], "--topic", &kafka.data_topic)
        .allow(&["Read"], "--group", &kafka.group_id)
        .allow(&["Write", "Describe"], "--topic", &kafka.dlq_topic);
    user
}

/// The producer's: write the data topic.
fn producer_identity(env: &TestEnv) -> KafkaUser {
    let mut user = KafkaUser::create("producer");
    user.allow(
        &["Write", "Describe"],
        "--topic",
        &env.settings.kafka.data_topic,
    );
    user
}

/// `cmd` logged in to Kafka as `user`.
fn kafka_login<'c>(cmd: &'c mut Command, user: &KafkaUser) -> &'c mut Command {
    cmd.env("KAFKA_SASL_USERNAME", &user.name)
        .env("KAFKA_SASL_PASSWORD", &user.password)
}

/// `imgstream args` as the consumer: its Kafka user, its PostgreSQL role and its S3 key.
fn as_consumer(
    env: &TestEnv,
    args: &[&str],
    kafka: &KafkaUser,
    role: &TestRole,
    s3: &S3User<'_>,
) -> Command {
    let mut cmd = env.command(args);
    kafka_login(&mut cmd, kafka)
        .env("DATABASE_CONNECTION_STRING", role.url(env))
        .env("MINIO_ACCESS_KEY", &s3.access_key)
        .env("MINIO_SECRET_KEY", &s3.secret_key);
    cmd
}

/// A raw librdkafka client logged in as `user`, to ask Kafka itself what the identity may do.
fn client_as(user: &KafkaUser) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", SECURE_BOOTSTRAP)
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", &user.name)
        .set("sasl.password", &user.password)
        .set("ssl.ca.location", stack_ca())
        .set("log_level", "0");
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secured_run_stores_every_record_once_with_identities_that_can_do_nothing_else() {
    // Declared first, so they are dropped last: the roles outlive the database that refers to them.
    let app = TestRole::create("app").await;
    let reader = TestRole::create("reader").await;
    let env = secured_env(
        "secured",
        &[
            ("DATABASE_APP_ROLE", &app.name),
            ("DATABASE_READER_ROLE", &reader.name),
        ],
    )
    .await;
    let consumer = consumer_identity(&env);
    let producer = producer_identity(&env);
    let mc = Mc::new(&env);
    let bucket = env.settings.store.bucket.clone();
    let s3_consumer = S3User::create(&mc, "app", &policy("s3-consumer.json", &bucket));

    let produced = kafka_login(
        &mut env.command(&[
            "produce", "--count", "30", "--width", "64-160", "--height", "48-120",
        ]),
        &producer,
    )
    .output()
    .unwrap();
    assert!(produced.status.success(), "{}", stderr(&produced));

    let consumed = as_consumer(
        &env,
        &["consume", "--until-idle", "3", "--json"],
        &consumer,
        &app,
        &s3_consumer,
    )
    .output()
    .unwrap();
    assert!(consumed.status.success(), "{}", stderr(&consumed));
    assert_eq!(env.counts().await, (30, 30));
    let verify = env
        .command(&["verify"])
        .env("DATABASE_CONNECTION_STRING", reader.url(&env))
        .output()
        .unwrap();
    assert!(
        verify.status.success() && stdout(&verify).contains("verify: clean"),
        "{}{}",
        stdout(&verify),
        stderr(&verify)
    );

    // The consumer's own check passes; the topic settings its identity may not read are said
    // to be unchecked, not different.
    let check = as_consumer(&env, &["setup", "--check"], &consumer, &app, &s3_consumer)
        .output()
        .unwrap();
    let listing = stdout(&check);
    assert!(check.status.success(), "{listing}{}", stderr(&check));
    assert!(
        listing.contains(&format!(
            "unchecked   kafka      topic {}: exists",
            env.settings.kafka.data_topic
        )),
        "{listing}"
    );

    // Kafka refuses the consumer's identity a write to the data topic ...
    let as_consumer: FutureProducer = client_as(&consumer)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let write = as_consumer
        .send(
            FutureRecord::to(&env.settings.kafka.data_topic)
                .key("k")
                .payload("not from the producer"),
            Duration::from_secs(10),
        )
        .await;
    let refusal = write
        .expect_err("the consumer identity wrote to the data topic")
        .0;
    assert!(
        refusal.to_string().contains("Topic authorization failed"),
        "{refusal}"
    );
    // ... and reading any topic but the data topic (here, the dead letters it may only write).
    let reader_client: BaseConsumer = client_as(&consumer)
        .set("group.id", &env.settings.kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&env.settings.kafka.dlq_topic, 0, Offset::Beginning)
        .unwrap();
    reader_client.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        match reader_client.poll(Duration::from_millis(500)) {
            Some(answer) => break answer.map(|_| ()),
            None if Instant::now() < deadline => continue,
            None => panic!("no answer to a fetch of the dead-letter topic in 20 s"),
        }
    };
    let refusal = answer.expect_err("the consumer identity read the dead-letter topic");
    assert!(
        refusal.to_string().contains("authorization failed"),
        "{refusal}"
    );

    // PostgreSQL refuses the app role changes to what is stored; MinIO refuses its key a delete.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&app.url(&env))
        .await
        .unwrap();
    for sql in ["DELETE FROM images", "UPDATE images SET customer_id = 'x'"] {
        let refused = sqlx::query(sql).execute(&mut conn).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("permission denied")),
            "{sql}: {refused:?}"
        );
    }
    let mut settings = env.settings.clone();
    settings.store.access_key = s3_consumer.access_key.clone();
    settings.store.secret_key = s3_consumer.secret_key.clone();
    let app_store = imgstream::wiring::store(&settings).unwrap();
    let key = app_store.list("images/").await.unwrap()[0].key.clone();
    let denied = app_store.delete(&key).await;
    assert!(
        matches!(denied, Err(imgstream::store::StoreError::Denied { .. })),
        "{denied:?}"
    );
    assert_eq!(env.counts().await, (30, 30), "nothing changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_secured_setting_stops_the_consumer_at_once_with_one_line_naming_its_cause() {
    let env = secured_env("secured-bad", &[]).await;
    env.produce(5, &[]);
    let verify_full_by_name = env
        .settings
        .database_url
        .expose()
        .replace("@127.0.0.1:", "@localhost:");
    let cases: [(&str, &str, &[&str]); 8] = [
        (
            "KAFKA_SASL_PASSWORD",
            "not-the-password",
            &[
                "Kafka at 127.0.0.1:9192 refused the login",
                "KAFKA_SASL_PASSWORD",
            ],
        ),
        (
            "KAFKA_SASL_USERNAME",
            "nobody-we-know",
            &[
                "Kafka at 127.0.0.1:9192 refused the login",
                "KAFKA_SASL_USERNAME",
            ],
        ),
        (
            "KAFKA_SSL_CA_LOCATION",
            "/etc/ssl/certs/ca-certificates.crt",
            &[
                "TLS to Kafka at 127.0.0.1:9192 failed",
                "certificate verify failed",
                "KAFKA_SSL_CA_LOCATION",
            ],
        ),
        (
            // The brokers' certificate names 127.0.0.1 only.
            "KAFKA_BOOTSTRAP_SERVERS",
            "localhost:9192",
            &[
                "TLS to Kafka at localhost:9192 failed",
                "KAFKA_BOOTSTRAP_SERVERS",
            ],
        ),
        (
            "MINIO_SECRET_KEY",
            "not-the-secret",
            &["object store denied access", "MINIO_SECRET_KEY"],
        ),
        (
            "MINIO_CA_FILE",
            "/etc/ssl/certs/ca-certificates.crt",
            &[
                "TLS to the object store at https://127.0.0.1:9010 failed",
                "UnknownIssuer",
                "MINIO_CA_FILE",
            ],
        ),
        (
            "MINIO_CONNECTION_STRING",
            "https://localhost:9010",
            &[
                "TLS to the object store at https://localhost:9010 failed",
                "not valid for name \"localhost\"",
            ],
        ),
        (
            "DATABASE_CONNECTION_STRING",
            &verify_full_by_name,
            &[
                "TLS to PostgreSQL at localhost:5432 failed",
                "not valid for name \"localhost\"",
                "sslrootcert",
            ],
        ),
    ];
    for (var, value, expected) in cases {
        let started = Instant::now();
        let out = env
            .command(&["consume", "--until-idle", "2"])
            .env(var, value)
            .output()
            .unwrap();
        let elapsed = started.elapsed();
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!out.status.success(), "{var}={value}: exit 0\n{err}");
        assert_eq!(lines.len(), 1, "{var}={value}: not one line:\n{err}");
        for phrase in expected {
            assert!(
                lines[0].contains(phrase),
                "{var}={value}: no {phrase:?} in\n{err}"
            );
        }
        for secret in [KAFKA_ADMIN.1, "minioadmin:", ":imgstream@"] {
            assert!(!err.contains(secret), "{var}={value}: a secret in\n{err}");
        }
        // Refused at the first answer, not after the connect timeout (10 s) ran out.
        assert!(
            elapsed < Duration::from_secs(8),
            "{var}={value}: took {elapsed:?}"
        );
    }
    assert_eq!(
        env.counts().await,
        (0, 0),
        "a refused consumer stored something"
    );
    // Nothing was consumed either: the good settings find all five records still there.
    let out = env.run(&["consume", "--until-idle", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.counts().await, (5, 5));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_any_output_of_a_secured_run_at_debug_level() {
    let app = TestRole::create("app").await;
    let registry_secret = format!("registry-{}", uuid::Uuid::new_v4().simple());
    let env = secured_env(
        "secured-logs",
        &[
            ("DATABASE_APP_ROLE", &app.name),
            (
                "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
                &format!("imgstream:{registry_secret}"),
            ),
        ],
    )
    .await;
    let consumer = consumer_identity(&env);
    let producer = producer_identity(&env);
    let mc = Mc::new(&env);
    let s3 = S3User::create(
        &mc,
        "app",
        &policy("s3-consumer.json", &env.settings.store.bucket),
    );
    let secrets = [
        consumer.password.as_str(),
        producer.password.as_str(),
        app.password.as_str(),
        s3.secret_key.as_str(),
        registry_secret.as_str(),
        KAFKA_ADMIN.1,
    ];
    // Every run at debug level, librdkafka's own tracing included.
    let debug = |mut cmd: Command| {
        cmd.env("IMGSTREAM_LOG", "debug")
            .env("IMGSTREAM_KAFKA_DEBUG", "all")
            .output()
            .unwrap()
    };
    let consumer_run = |args: &[&str]| debug(as_consumer(&env, args, &consumer, &app, &s3));
    let mut produce = env.command(&[
        "produce", "--count", "10", "--json", "--width", "64", "--height", "48",
    ]);
    kafka_login(&mut produce, &producer);
    let mut refused = env.command(&["consume", "--until-idle", "1"]);
    kafka_login(&mut refused, &consumer)
        .env("KAFKA_SASL_PASSWORD", format!("{}x", consumer.password));
    let runs = [
        debug(produce),
        consumer_run(&["consume", "--until-idle", "3", "--json"]),
        consumer_run(&["setup", "--check"]),
        consumer_run(&["status", "--json"]),
        consumer_run(&["verify", "--json"]),
        // A refused login, at debug level too.
        debug(refused),
    ];
    assert!(runs[0].status.success() && runs[1].status.success());
    assert_eq!(env.counts().await, (10, 10));
    let mut scanned = 0;
    for out in &runs {
        let text = format!("{}{}", stdout(out), stderr(out));
        scanned += text.lines().count();
        for secret in secrets {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("a secret appears in the output: {line}");
            }
        }
    }
    // The scan read real debug output: librdkafka's own protocol tracing was in it.
    assert!(scanned > 1000, "only {scanned} lines of output");
    assert!(
        stderr(&runs[1]).contains("SASL") && stderr(&runs[1]).contains("librdkafka"),
        "no librdkafka debug output"
    );
}

/// `url` with `user:secret@` in front of its host.
fn with_userinfo(url: &str, user: &str, secret: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    format!("{scheme}://{user}:{secret}@{rest}")
}

/// What `cmd` printed (stdout, then stderr) within `limit`; a run still going then is stopped,
/// since a consumer that cannot reach a service keeps retrying.
fn output_within(mut cmd: Command, dir: &std::path::Path, name: &str, limit: Duration) -> String {
    let (out, err) = (
        dir.join(format!("{name}.out")),
        dir.join(format!("{name}.err")),
    );
    let child = cmd
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn imgstream");
    let _ = common::Spawned::from(child).wait_within(limit);
    std::fs::read_to_string(&out).unwrap() + &std::fs::read_to_string(&err).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_a_url_setting_appears_in_any_output_reachable_or_not() {
    let app = TestRole::create("app").await;
    let env = secured_env("url-secrets", &[("DATABASE_APP_ROLE", &app.name)]).await;
    env.produce(4, &[]);
    let consumer = consumer_identity(&env);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (registry_secret, store_secret) = (format!("registry-{id}"), format!("store-{id}"));
    let closed = common::free_port();
    let mut unreachable_db = url::Url::parse(&app.url(&env)).unwrap();
    unreachable_db.set_port(Some(closed)).unwrap();
    let registry = &env.settings.registry_url;
    let registry_path = registry
        .split_once("://")
        .unwrap()
        .1
        .split_once('/')
        .unwrap()
        .1;
    let settings = [
        (
            "reachable",
            [
                with_userinfo(registry, "reader", &registry_secret),
                with_userinfo(HTTPS_MINIO, "proxy", &store_secret),
                app.url(&env),
            ],
        ),
        (
            "unreachable",
            [
                format!("http://reader:{registry_secret}@127.0.0.1:{closed}/{registry_path}"),
                format!("https://proxy:{store_secret}@127.0.0.1:{closed}"),
                unreachable_db.to_string(),
            ],
        ),
    ];
    let secrets = [
        registry_secret.as_str(),
        store_secret.as_str(),
        app.password.as_str(),
        consumer.password.as_str(),
    ];
    let dir = env.log_path("url-secrets");
    let dir = dir.parent().unwrap();
    let mut outputs = Vec::new();
    for (reach, [registry_url, store_url, database_url]) in &settings {
        for level in ["info,rdkafka=warn,sqlx=warn", "debug"] {
            for args in [
                &["setup", "--check"][..],
                &["status", "--json"],
                &["consume", "--until-idle", "2", "--json"],
            ] {
                let mut cmd = env.command(args);
                kafka_login(&mut cmd, &consumer)
                    .env("SCHEMA_REGISTRY_URL", registry_url)
                    .env("MINIO_CONNECTION_STRING", store_url)
                    .env("DATABASE_CONNECTION_STRING", database_url)
                    .env("IMGSTREAM_CONNECT_TIMEOUT_SECS", "2")
                    .env("IMGSTREAM_LOG", level);
                let name = format!("{reach}-{}-{}", args[0], level.len());
                let text = output_within(cmd, dir, &name, Duration::from_secs(40));
                outputs.push((name, text));
            }
        }
    }
    for (name, text) in &outputs {
        for secret in secrets {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("{name}: a secret appears in the output: {line}");
            }
        }
    }
    // The scan read the messages that name the URLs: the unreachable services are named, their
    // credentials masked, at the default level too.
    let check = &outputs
        .iter()
        .find(|(name, _)| name.starts_with("unreachable-setup-"))
        .unwrap()
        .1;
    for masked in [
        format!("reader:***@127.0.0.1:{closed}"),
        format!("proxy:***@127.0.0.1:{closed}"),
    ] {
        assert!(check.contains(&masked), "{masked} not in\n{check}");
    }
    // And the debug lines of the libraries that talk to the services (hyper names connections
    // by host, userinfo included).
    let lines: usize = outputs.iter().map(|(_, t)| t.lines().count()).sum();
    assert!(lines > 100, "only {lines} lines of output");
    assert!(
        outputs
            .iter()
            .any(|(_, t)| t.contains("pooling idle connection")),
        "no connection-pool debug line was scanned"
    );
}

/// Temporary credentials for `user` from MinIO's STS (AssumeRole, signed with the user's own
/// keys): (access key id, secret access key, session token), valid for 15 minutes.
async fn assume_role(env: &TestEnv, user: &S3User<'_>) -> (String, String, String) {
    use object_store::aws::{AwsAuthorizer, AwsCredential};
    let url = format!("{}/", env.settings.store.endpoint);
    let form = "Action=AssumeRole&Version=2011-06-15&DurationSeconds=900";
    let mut request = http::Request::builder()
        .method("POST")
        .uri(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(object_store::client::HttpRequestBody::from(
            form.as_bytes().to_vec(),
        ))
        .unwrap();
    let credential = AwsCredential {
        key_id: user.access_key.clone(),
        secret_key: user.secret_key.clone(),
        token: None,
    };
    AwsAuthorizer::new(&credential, "sts", &env.settings.store.region)
        .with_sign_payload(true)
        .try_authorize(&mut request, None)
        .unwrap();
    let ca = std::fs::read(stack_ca()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
        .build()
        .unwrap();
    let mut post = client.post(&url).body(form);
    for (name, value) in request.headers() {
        post = post.header(name, value);
    }
    let answer = post.send().await.unwrap();
    let status = answer.status();
    let xml = answer.text().await.unwrap();
    assert!(status.is_success(), "AssumeRole: {status} {xml}");
    let field = |name: &str| {
        let start = xml.find(&format!("<{name}>")).expect(name) + name.len() + 2;
        let end = xml[start..].find('<').unwrap() + start;
        xml[start..end].to_string()
    };
    (
        field("AccessKeyId"),
        field("SecretAccessKey"),
        field("SessionToken"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consumer_stores_with_temporary_credentials_from_the_aws_chain() {
    let env = secured_env("aws-chain", &[]).await;
    let mc = Mc::new(&env);
    let user = S3User::create(
        &mc,
        "app",
        &policy("s3-consumer.json", &env.settings.store.bucket),
    );
    let (key_id, secret, token) = assume_role(&env, &user).await;
    env.produce(12, &[]);
    // No MINIO_ keys: the AWS variables, session token included, are the chain's first source.
    let consume = |token: &str| {
        env.command(&["consume", "--until-idle", "3"])
            .env_remove("MINIO_ACCESS_KEY")
            .env_remove("MINIO_SECRET_KEY")
            .env("AWS_ACCESS_KEY_ID", &key_id)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .env("AWS_SESSION_TOKEN", token)
            .output()
            .unwrap()
    };
    // The token is what makes these keys valid: without the right one, MinIO refuses them.
    let refused = consume("not-the-session-token");
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(err.contains("object store denied access"), "{err}");
    assert!(!err.contains(&secret) && !err.contains(&token), "{err}");
    assert_eq!(env.counts().await, (0, 0));

    let out = consume(&token);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.counts().await, (12, 12));
    let verify = env.run(&["verify"]);
    assert!(
        stdout(&verify).contains("verify: clean"),
        "{}",
        stdout(&verify)
    );
}

/// `serve`'s Kafka identity: it reads the group's offsets and the dead letters, and writes
/// nothing.
fn serve_identity(env: &TestEnv) -> KafkaUser {
    let kafka = &env.settings.kafka;
    let mut user = KafkaUser::create("serve");
    user.allow(&["Describe"], "--topic", &kafka.data_topic)
        .allow(&["Describe"], "--group", &kafka.group_id)
        .allow(&["Read", "Describe"], "--topic", &kafka.dlq_topic);
    user
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_works_as_its_own_identity_which_may_write_nothing_but_thumbnails() {
    // Declared first, so it is dropped last: the role outlives the database that refers to it.
    let serve_role = TestRole::create("serve").await;
    let env = secured_env(
        "secured-serve",
        &[("DATABASE_SERVE_ROLE", serve_role.name.as_str())],
    )
    .await;
    // Five images and one dead letter, stored by the administrators.
    env.produce(5, &[]);
    let plain: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .create()
        .unwrap();
    plain
        .send(
            FutureRecord::to(&env.settings.kafka.data_topic)
                .key("garbage")
                .payload("not an image record"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let consumed = env.run(&["consume", "--until-idle", "3"]);
    assert!(consumed.status.success(), "{}", stderr(&consumed));
    assert_eq!(env.counts().await, (5, 5));

    let kafka = serve_identity(&env);
    let mc = Mc::new(&env);
    let bucket = env.settings.store.bucket.clone();
    let s3 = S3User::create(&mc, "serve", &policy("s3-serve.json", &bucket));
    // The store settings name a key that does not exist: every read and signature must come
    // from serve's own.
    let port = common::free_port();
    let serve_url = serve_role.url(&env);
    let _serving = env.spawn_with(
        &["serve", "--addr", &format!("127.0.0.1:{port}")],
        "serve",
        &[
            ("DATABASE_CONNECTION_STRING", serve_url.as_str()),
            ("KAFKA_SASL_USERNAME", kafka.name.as_str()),
            ("KAFKA_SASL_PASSWORD", kafka.password.as_str()),
            ("MINIO_ACCESS_KEY", "no-such-key"),
            ("MINIO_SECRET_KEY", "no-such-secret"),
            ("IMGSTREAM_SERVE_S3_ACCESS_KEY", s3.access_key.as_str()),
            ("IMGSTREAM_SERVE_S3_SECRET_KEY", s3.secret_key.as_str()),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    let ca = std::fs::read(stack_ca()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
        .build()
        .unwrap();
    let ready = common::eventually(Duration::from_secs(30), || async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(ready, "serve did not get ready: {}", env.read_log("serve"));
    let get = |path: &str| {
        let request = http.get(format!("{base}{path}"));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (status, content_type, response.bytes().await.unwrap())
        }
    };

    // It does its whole job: the gallery, the API, a thumbnail (made and kept), a presigned URL
    // and a download through one, the pipeline (offsets and dead letters from Kafka).
    let (status, _, body) = get("/api/images").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<String> = page["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 5, "{page}");
    let (status, _, html) = get("/").await;
    assert_eq!(status, 200);
    let html = String::from_utf8_lossy(&html);
    for id in &ids {
        assert!(
            html.contains(&format!("/thumbnails/{id}")),
            "{id} not in the gallery"
        );
    }
    let id = &ids[0];
    let (status, content_type, thumbnail) = get(&format!("/thumbnails/{id}")).await;
    assert_eq!((status, content_type.as_str()), (200, "image/jpeg"));
    assert!(thumbnail.starts_with(&[0xff, 0xd8]));
    let kept = env
        .store()
        .get(&imgstream::domain::thumbnail_key(&id.parse().unwrap()))
        .await;
    assert!(kept.is_ok(), "the thumbnail was not kept: {kept:?}");
    let original = env
        .store()
        .get(page["images"][0]["object_key"].as_str().unwrap())
        .await
        .unwrap();
    let (status, _, body) = get(&format!("/api/images/{id}/url")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let signed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let url = signed["url"].as_str().unwrap();
    assert!(
        url.contains(&format!("X-Amz-Credential={}", s3.access_key)),
        "signed with another key: {url}"
    );
    let fetched = http.get(url).send().await.unwrap();
    assert_eq!(fetched.status().as_u16(), 200);
    assert_eq!(fetched.bytes().await.unwrap(), original);
    // The download link redirects to a fresh presigned URL, which the client follows.
    let (status, _, downloaded) = get(&format!("/images/{id}/download")).await;
    assert_eq!(status, 200);
    assert_eq!(downloaded, original);
    let (status, _, body) = get("/api/pipeline").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let pipeline: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(pipeline["index_rows"], 5, "{pipeline}");
    assert_eq!(pipeline["dlq_depth"], 1, "{pipeline}");
    assert_eq!(
        pipeline["recent_dead_letters"].as_array().unwrap().len(),
        1,
        "{pipeline}"
    );

    // MinIO refuses its key any write but a thumbnail, and every delete.
    let mut settings = env.settings.clone();
    settings.store.access_key = s3.access_key.clone();
    settings.store.secret_key = s3.secret_key.clone();
    let as_serve = imgstream::wiring::store(&settings).unwrap();
    let key = page["images"][0]["object_key"].as_str().unwrap();
    let bytes = bytes::Bytes::from_static(b"not an image");
    let sha = imgstream::domain::sha256_hex(&bytes);
    let written = as_serve
        .put_image(
            "images/00/00000000-0000-4000-8000-000000000000",
            bytes.clone(),
            "image/png",
            &sha,
        )
        .await;
    assert!(
        matches!(written, Err(imgstream::store::StoreError::Denied { .. })),
        "write under images/: {written:?}"
    );
    for target in [
        key.to_string(),
        imgstream::domain::thumbnail_key(&id.parse().unwrap()),
    ] {
        let denied = as_serve.delete(&target).await;
        assert!(
            matches!(denied, Err(imgstream::store::StoreError::Denied { .. })),
            "delete {target}: {denied:?}"
        );
    }

    // PostgreSQL refuses its role any change, and the erasure records it has no use for.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&serve_url)
        .await
        .unwrap();
    for sql in [
        "INSERT INTO images SELECT * FROM images LIMIT 1",
        "DELETE FROM images",
        "UPDATE images SET customer_id = 'x'",
        "SELECT count(*) FROM erasures",
    ] {
        let refused = sqlx::query(sql).execute(&mut conn).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("permission denied")),
            "{sql}: {refused:?}"
        );
    }
    let check = env.run(&["setup", "--check"]);
    assert!(
        stdout(&check).contains(&format!(
            "role {} may only read the images of the index",
            serve_role.name
        )),
        "{}",
        stdout(&check)
    );

    // Kafka refuses its identity a write to either topic.
    let producer: FutureProducer = client_as(&kafka)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    for topic in [
        &env.settings.kafka.data_topic,
        &env.settings.kafka.dlq_topic,
    ] {
        let write = producer
            .send(
                FutureRecord::to(topic).key("k").payload("not from serve"),
                Duration::from_secs(10),
            )
            .await;
        let refusal = write.expect_err("serve's identity wrote to a topic").0;
        assert!(
            refusal.to_string().contains("Topic authorization failed"),
            "{topic}: {refusal}"
        );
    }
    assert_eq!(env.counts().await, (5, 5), "nothing changed");
}
