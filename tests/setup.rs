//! `imgstream setup`, settings, and what happens before setup or with a service down.

mod common;

use common::{TestEnv, stderr, stdout};
use std::time::{Duration, Instant};

#[test]
fn the_harness_refuses_a_database_that_is_not_a_test_database() {
    let err = common::check_test_database("postgres://u:p@127.0.0.1:5432/imgstream").unwrap_err();
    assert!(
        err.contains("refusing") && err.contains("imgstream"),
        "{err}"
    );
    assert!(common::check_test_database("postgresql+psycopg://u:p@h:5432/imgstream_test").is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_creates_everything_once_and_check_tells_missing_from_done() {
    let env = TestEnv::unprepared("setup", &[]).await;

    let fresh = env.run(&["setup", "--check"]);
    assert!(!fresh.status.success(), "check must fail on a fresh stack");
    let listed = stdout(&fresh);
    for missing in [
        "migrations",
        &format!("topic {}", env.name),
        &format!("topic {}.dlq", env.name),
        "bucket",
        "schema under",
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with("missing") && l.contains(missing)),
            "check does not list {missing:?} as missing:\n{listed}"
        );
    }
    assert!(stderr(&fresh).contains("run `imgstream setup`"));

    let first = env.run(&["setup"]);
    assert!(
        first.status.success(),
        "{}{}",
        stdout(&first),
        stderr(&first)
    );
    assert_eq!(
        stdout(&first)
            .lines()
            .filter(|l| l.starts_with("done"))
            .count(),
        6,
        "{}",
        stdout(&first)
    );

    let second = env.run(&["setup"]);
    assert!(second.status.success());
    assert!(
        stdout(&second).lines().all(|l| l.starts_with("ok")),
        "second setup changed something:\n{}",
        stdout(&second)
    );

    let check = env.run(&["setup", "--check"]);
    assert!(check.status.success(), "{}", stdout(&check));

    // What setup made is really there, read from the services themselves.
    let (objects, rows) = env.counts().await;
    assert_eq!((objects, rows), (0, 0));
    assert!(env.store().bucket_exists().await.unwrap());
    let level = env
        .registry()
        .compatibility_level(&format!("{}-value", env.name))
        .await
        .unwrap();
    assert_eq!(level.as_deref(), Some("FULL"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_service_is_named_with_its_address_within_bounded_time() {
    let cases = [
        (
            "KAFKA_BOOTSTRAP_SERVERS",
            "127.0.0.1:1",
            "Kafka at 127.0.0.1:1",
        ),
        (
            "MINIO_CONNECTION_STRING",
            "127.0.0.1:1",
            "http://127.0.0.1:1",
        ),
        (
            "SCHEMA_REGISTRY_URL",
            "http://127.0.0.1:1/apis/ccompat/v7",
            "127.0.0.1:1",
        ),
        (
            "DATABASE_CONNECTION_STRING",
            "postgres://imgstream:imgstream@127.0.0.1:1/imgstream_test_x",
            "127.0.0.1:1",
        ),
    ];
    for (var, value, named) in cases {
        let env = TestEnv::unprepared(
            "down",
            &[(var, value), ("IMGSTREAM_CONNECT_TIMEOUT_SECS", "3")],
        )
        .await;
        let started = Instant::now();
        let out = env.run(&["setup"]);
        let took = started.elapsed();
        assert!(
            !out.status.success(),
            "{var}: setup succeeded against a closed port"
        );
        let text = stdout(&out);
        assert!(
            text.lines()
                .any(|l| l.starts_with("unreachable") && l.contains(named)),
            "{var}: no line names {named:?} as unreachable:\n{text}"
        );
        assert!(took < Duration::from_secs(30), "{var}: took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn producing_or_consuming_before_setup_says_to_run_setup_in_one_line() {
    let env = TestEnv::unprepared("nosetup", &[]).await;
    for args in [
        &["produce", "--count", "1"][..],
        &["consume", "--until-idle", "1"][..],
    ] {
        let out = env.run(args);
        assert!(!out.status.success(), "{args:?} succeeded before setup");
        let err = stderr(&out);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("imgstream:"))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one error line:\n{err}");
        assert!(lines[0].contains("run `imgstream setup`"), "{}", lines[0]);
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_setting_is_reported_by_its_variable_name_without_a_panic() {
    let env = TestEnv::unprepared("badcfg", &[]).await;
    // The harness validated nothing itself: the binary reads the variables.
    let out = env
        .command(&["status"])
        .env("KAFKA_AUTO_OFFSET_RESET", "sometimes")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("imgstream: configuration: KAFKA_AUTO_OFFSET_RESET"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_env_file_fills_in_unset_settings_and_secrets_are_not_printed() {
    let env = TestEnv::unprepared("envfile", &[]).await;
    let dir = env.log_path("x").parent().unwrap().to_path_buf();
    let file = dir.join("test.env");
    std::fs::write(
        &file,
        "KAFKA_DATA_TOPIC=\"bad topic name\"\nMINIO_SECRET_KEY=sup3r-s3cret\n",
    )
    .unwrap();
    let mut cmd = env.command(&["setup", "--check"]);
    cmd.env_remove("KAFKA_DATA_TOPIC")
        .env("IMGSTREAM_ENV_FILE", &file);
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("KAFKA_DATA_TOPIC"),
        "the .env value was not read: {err}"
    );
    assert!(!err.contains("sup3r-s3cret") && !stdout(&out).contains("sup3r-s3cret"));
}

/// The local PostgreSQL offers TLS with a certificate from the stack's own CA
/// (scripts/stack/postgres.sh): the libpq parameters in the connection string decide.
#[tokio::test(flavor = "multi_thread")]
async fn postgresql_over_tls_is_verified_against_the_ca_the_connection_string_names() {
    let env = TestEnv::new("pgtls").await;
    let ca = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".stack/tls/ca.crt");
    assert!(
        ca.is_file(),
        "{} is missing: restart the stack (make stack-down stack-up)",
        ca.display()
    );
    let url = |params: &str| format!("{}?{params}", env.settings.database_url.expose());
    let verified = url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));

    // The connection is encrypted, as PostgreSQL itself reports.
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&verified).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(ssl, "the session is not encrypted");
    conn.close().await.unwrap();

    for params in [
        verified.as_str(),
        &url("sslmode=require"),
        &url("sslmode=disable"),
    ] {
        let out = env
            .command(&["setup", "--check"])
            .env("DATABASE_CONNECTION_STRING", params)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{params}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }

    // A CA that did not sign the server's certificate: refused, said in one line, not retried as
    // an outage.
    let wrong_ca = url("sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt");
    let out = env
        .command(&["setup", "--check"])
        .env("DATABASE_CONNECTION_STRING", &wrong_ca)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("TLS to PostgreSQL") && text.contains("sslrootcert"),
        "{text}"
    );
    assert!(!text.contains(":imgstream@"), "the password leaked: {text}");
}

/// What an operator does with `kafka-configs.sh --alter --add-config`: an incremental alter of
/// the named settings only, through the stack's own Kafka tools.
fn operator_sets(topic: &str, settings: &str) {
    common::identities::kafka_cli(&[
        "kafka.admin.ConfigCommand",
        "--alter",
        "--entity-type",
        "topics",
        "--entity-name",
        topic,
        "--add-config",
        settings,
    ]);
}

/// The topic's settings as the broker describes them.
async fn topic_config(env: &TestEnv, topic: &str) -> std::collections::HashMap<String, String> {
    let admin = imgstream::wiring::topic_admin(&env.settings).unwrap();
    admin
        .topic_configs(topic)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

fn topic_lines<'a>(out: &'a str, env: &TestEnv) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.contains(&format!("topic {}", env.name)))
        .collect()
}

const GIB: &str = "1073741824";
const THIRTY_DAYS_MS: &str = "2592000000";
const SIXTY_DAYS_MS: &str = "5184000000";

#[tokio::test(flavor = "multi_thread")]
async fn an_operators_longer_retention_and_retention_bytes_survive_two_setups() {
    let env = TestEnv::new("keepcfg").await;
    let dlq = env.settings.kafka.dlq_topic.clone();
    operator_sets(
        &env.name,
        &format!("retention.ms={THIRTY_DAYS_MS},retention.bytes={GIB}"),
    );
    operator_sets(
        &dlq,
        &format!("retention.ms={SIXTY_DAYS_MS},retention.bytes={GIB}"),
    );

    for run in ["first", "second"] {
        let out = env.run(&["setup"]);
        let text = stdout(&out);
        assert!(out.status.success(), "{run} setup: {text}{}", stderr(&out));
        let lines = topic_lines(&text, &env);
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines.iter().all(|l| l.starts_with("ok")),
            "{run} setup touched a topic an operator tuned:\n{text}"
        );
    }
    for (topic, retention) in [(&env.name, THIRTY_DAYS_MS), (&dlq, SIXTY_DAYS_MS)] {
        let config = topic_config(&env, topic).await;
        assert_eq!(config["retention.ms"], retention, "{topic}");
        assert_eq!(config["retention.bytes"], GIB, "{topic}");
    }

    // Neither a check nor a producer or consumer calls the longer retention a difference.
    let check = env.run(&["setup", "--check"]);
    assert!(check.status.success(), "{}", stdout(&check));
    assert!(
        topic_lines(&stdout(&check), &env)
            .iter()
            .all(|l| l.starts_with("ok")),
        "{}",
        stdout(&check)
    );
    env.produce(2, &[]);
    let consumed = env.run(&["consume", "--until-idle", "2", "--json"]);
    assert!(consumed.status.success(), "{}", stderr(&consumed));
    assert_eq!(env.counts().await, (2, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shorter_retention_is_noted_not_refused_and_setup_raises_only_it() {
    let env = TestEnv::new("shortret").await;
    operator_sets(
        &env.name,
        &format!("retention.ms=3600000,retention.bytes={GIB}"),
    );

    let check = env.run(&["setup", "--check"]);
    let text = stdout(&check);
    assert!(
        check.status.success(),
        "a retention is no reason to fail:\n{text}"
    );
    let noted = text
        .lines()
        .find(|l| l.starts_with("note") && l.contains("retention.ms is 3600000"))
        .unwrap_or_else(|| panic!("the short retention is not noted:\n{text}"));
    assert!(noted.contains("KAFKA_DATA_RETENTION_MS"), "{noted}");

    // A producer starts, and says what it saw.
    let produced = env.produce(1, &[]);
    assert!(
        stderr(&produced).contains("retention.ms is 3600000"),
        "no warning: {}",
        stderr(&produced)
    );

    // setup raises what falls short of its setting through an incremental alter: the operator's
    // retention.bytes stays.
    let out = env.run(&["setup"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        topic_lines(&stdout(&out), &env)
            .iter()
            .any(|l| l.starts_with("done") && l.contains("retention.ms")),
        "{}",
        stdout(&out)
    );
    let config = topic_config(&env, &env.name).await;
    assert_eq!(config["retention.ms"], "604800000");
    assert_eq!(config["retention.bytes"], GIB);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_max_message_bytes_too_small_for_an_image_stops_produce_and_consume_until_setup() {
    let env = TestEnv::new("smallmsg").await;
    operator_sets(
        &env.name,
        &format!("max.message.bytes=100000,retention.bytes={GIB}"),
    );

    let check = env.run(&["setup", "--check"]);
    assert!(!check.status.success(), "{}", stdout(&check));
    assert!(
        stdout(&check)
            .lines()
            .any(|l| l.starts_with("missing") && l.contains("max.message.bytes is 100000")),
        "{}",
        stdout(&check)
    );
    for args in [
        &["produce", "--count", "1"][..],
        &["consume", "--until-idle", "1"][..],
    ] {
        let out = env.run(args);
        assert!(
            !out.status.success(),
            "{args:?} started on a too-small topic"
        );
        let err = stderr(&out);
        assert!(
            err.contains("max.message.bytes is 100000") && err.contains("run `imgstream setup`"),
            "{args:?}: {err}"
        );
    }

    let out = env.run(&["setup"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let config = topic_config(&env, &env.name).await;
    assert_eq!(
        config["max.message.bytes"],
        env.settings.limits.max_message_bytes().to_string()
    );
    assert_eq!(config["retention.bytes"], GIB);
    env.produce(1, &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_alter_sets_only_what_it_names_and_a_refused_one_says_why_and_sets_nothing()
{
    use imgstream::kafka::incremental::set_topic_configs;
    use rdkafka::error::RDKafkaErrorCode;
    let env = TestEnv::new("incr").await;
    let client: rdkafka::admin::AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.bootstrap_servers)
        .create()
        .unwrap();
    let set = |key: &str, value: &str| (key.to_string(), value.to_string());
    let timeout = Duration::from_secs(10);

    set_topic_configs(&client, &env.name, &[set("retention.bytes", GIB)], timeout).unwrap();
    let config = topic_config(&env, &env.name).await;
    assert_eq!(config["retention.bytes"], GIB);
    assert_eq!(
        config["retention.ms"], "604800000",
        "a setting it did not name"
    );

    // One resource's changes are applied together or not at all.
    let refused = set_topic_configs(
        &client,
        &env.name,
        &[set("retention.ms", "soon"), set("retention.bytes", "-1")],
        timeout,
    )
    .unwrap_err();
    assert_eq!(refused.code, RDKafkaErrorCode::InvalidConfig, "{refused:?}");
    assert!(refused.detail.contains("retention.ms"), "{refused:?}");
    assert_eq!(topic_config(&env, &env.name).await["retention.bytes"], GIB);

    let missing = format!("{}-nowhere", env.name);
    let refused =
        set_topic_configs(&client, &missing, &[set("retention.bytes", GIB)], timeout).unwrap_err();
    assert_eq!(
        refused.code,
        RDKafkaErrorCode::UnknownTopicOrPartition,
        "{refused:?}"
    );
}
