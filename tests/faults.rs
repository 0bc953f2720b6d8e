//! Outages of the stack's own services mid-run: MinIO stopped and frozen, PostgreSQL restarted,
//! the broker restarted. Each ends with exact counts read from the services. These tests stop
//! shared services, so `make test` runs them alone, one at a time (faults of the consumer itself
//! are in tests/kills.rs).

mod common;

use common::TestEnv;
use common::runs::{
    CONSUME_SLOWLY, EXIT_WITHIN, assert_exactly_once, rows, stop_once_stored, wait_for_rows,
    wait_ok,
};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Runs `scripts/stack/<service>.sh <verb>`.
fn stack(service: &str, verb: &str) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("scripts/stack/{service}.sh"));
    let status = Command::new(&script)
        .arg(verb)
        .status()
        .expect("stack script");
    assert!(status.success(), "{service} {verb} failed");
}

/// Brings a stopped service back even when the test fails halfway.
struct Restart(&'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        stack(self.0, "start");
    }
}

/// Stops a service for a while in the middle of a run; the run must log the outage, heal by
/// itself and end exactly once.
async fn outage_mid_run_heals(label: &str, service: &'static str, down_for: Duration) {
    let env = TestEnv::new(label).await;
    env.produce(400, &[]);
    let consumer = env.spawn(&CONSUME_SLOWLY, "consumer");
    wait_for_rows(&env, 40).await;
    assert!(
        rows(&env).await < 400,
        "the run ended before the outage could matter"
    );
    {
        let _restart = Restart(service);
        stack(service, "stop");
        tokio::time::sleep(down_for).await;
    }
    // The consumer met the outage: it says so in its log (checked below) and still ends exact.
    stop_once_stored(&env, consumer, 400, "consumer").await;
    let log = env.read_log("consumer");
    assert!(
        log.contains("outage started") && log.contains("outage ended"),
        "{log}"
    );
    assert_exactly_once(&env, 400).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn minio_stopped_mid_run_then_started_again_loses_and_doubles_nothing() {
    outage_mid_run_heals("minio", "minio", Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_restarted_mid_run_loses_and_doubles_nothing() {
    outage_mid_run_heals("pgrestart", "postgres", Duration::from_secs(6)).await;
}

/// A broker restart can cost the consumer its group membership; a run that stops when idle must
/// still end with nothing left behind (it once stopped "idle" with a lag of 852). Whether the
/// membership is lost depends on timing, so this run guards the outcome (lag 0 at exit) but does
/// not always reach the old failure; `quiet_is_not_idle_while_committed_offsets_are_behind_the_end`
/// in tests/protocol.rs proves the rule itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_run_ends_idle_only_when_nothing_is_left() {
    let env = TestEnv::new("brokerbounce").await;
    env.produce(1500, &[]);
    let args = [&CONSUME_SLOWLY[..5], &["--until-idle", "8"]].concat();
    // librdkafka's group log, kept for the runs that end stuck (see below).
    let consumer = env.spawn_with(
        &args,
        "consumer",
        &[
            ("IMGSTREAM_KAFKA_DEBUG", "cgrp"),
            (
                "IMGSTREAM_LOG",
                "info,librdkafka=debug,rdkafka=warn,sqlx=warn",
            ),
        ],
    );
    wait_for_rows(&env, 40).await;
    assert!(rows(&env).await < 1500, "the run ended before the restart");
    {
        let _restart = Restart("kafka");
        stack("kafka", "stop");
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    let status = consumer.wait_within(EXIT_WITHIN);
    let log = env.read_log("consumer");
    // librdkafka sometimes never rejoins the group after this restart (its coordinator connection
    // stays stuck); the consumer then exits saying so, and what a supervisor does, starting a
    // fresh one, must finish the job exactly.
    if status.is_some_and(|s| !s.success()) && log.contains("out of its consumer group") {
        // The group log of a stuck run outlives the test's own directory, for diagnosis.
        let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "stuck-group-{}.log",
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        ));
        let _ = std::fs::write(&kept, &log);
        eprintln!(
            "the consumer left a stuck group and is restarted, as a supervisor would (group log: {})",
            kept.display()
        );
        let again = env.spawn(&args, "consumer-restarted");
        wait_ok(again, &env, "consumer-restarted");
    } else {
        assert!(
            status.is_some_and(|s| s.success()),
            "consumer ended with {status:?}:\n{log}"
        );
    }
    // Lag 0 is part of the exact-once check.
    assert_exactly_once(&env, 1500).await;
}

/// MinIO frozen (SIGSTOP) answers nothing and refuses nothing: the consumer must say it is
/// waiting, while it waits, and still end exact once MinIO thaws.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_minio_is_reported_while_it_is_frozen() {
    let env = TestEnv::new("frozen").await;
    env.produce(400, &[]);
    let consumer = env.spawn(&CONSUME_SLOWLY, "consumer");
    wait_for_rows(&env, 40).await;
    assert!(rows(&env).await < 400, "the run ended before the freeze");
    let pidfile = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".stack/minio/minio.pid");
    let pid = std::fs::read_to_string(&pidfile).expect("minio pid file");
    let pid = pid.lines().next().unwrap_or_default().trim().to_string();
    /// Thaws MinIO even when the test fails halfway.
    struct Thaw(String);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-CONT", &self.0]).status();
        }
    }
    let log_while_frozen = {
        let _thaw = Thaw(pid.clone());
        let frozen = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        assert!(frozen.success(), "kill -STOP {pid}");
        tokio::time::sleep(Duration::from_secs(12)).await;
        env.read_log("consumer")
    };
    assert!(
        log_while_frozen.contains("still waiting for an answer")
            && log_while_frozen.contains("object store"),
        "nothing said while MinIO was frozen:\n{log_while_frozen}"
    );
    stop_once_stored(&env, consumer, 400, "consumer").await;
    assert_exactly_once(&env, 400).await;
}

/// `/readyz`, of the consumer and of `imgstream serve`, says "not ready" while MinIO is away and
/// "ready" once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_a_minio_outage() {
    let env = TestEnv::new("readyz").await;
    env.produce(400, &[]);
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut args = CONSUME_SLOWLY.to_vec();
    args.extend(["--metrics-addr", &addr]);
    let consumer = env.spawn(&args, "consumer");
    let serve_addr = format!("127.0.0.1:{}", common::free_port());
    let _server = env.spawn(&["serve", "--addr", &serve_addr], "serve");
    wait_for_rows(&env, 40).await;
    let readyz = |addr: &str| {
        let url = format!("http://{addr}/readyz");
        async move {
            reqwest::get(url)
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let both = |status: u16| {
        let (consumer, server) = (readyz(&addr), readyz(&serve_addr));
        async move { consumer.await == status && server.await == status }
    };
    assert!(
        common::eventually(Duration::from_secs(20), || both(200)).await,
        "not ready before the outage:\n{}",
        env.read_log("serve")
    );
    {
        let _restart = Restart("minio");
        stack("minio", "stop");
        let unready = common::eventually(Duration::from_secs(30), || both(503)).await;
        assert!(unready, "/readyz stayed ready while MinIO was stopped");
    }
    let ready = common::eventually(Duration::from_secs(60), || both(200)).await;
    assert!(
        ready,
        "/readyz did not recover:\n{}\n{}",
        env.read_log("consumer"),
        env.read_log("serve")
    );
    stop_once_stored(&env, consumer, 400, "consumer").await;
    assert_exactly_once(&env, 400).await;
}
