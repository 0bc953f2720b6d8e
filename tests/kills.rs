//! Faults that strike the consumer itself: killed at several points, one of two killed, frozen
//! past its session, stopped with SIGTERM, and refused connections by PostgreSQL for its own role.
//! The shared services stay up throughout, so `make test` runs these beside the other integration
//! tests (the service outages are in tests/faults.rs). Each run ends with exact counts read from
//! the services.

mod common;

use common::runs::{
    CONSUME_SLOWLY, assert_exactly_once, rows, stop_once_stored, wait_for_rows, wait_ok,
};
use common::{SHORT_SESSION, SIGCONT, SIGKILL, SIGSTOP, TestEnv, signal, stdout};
use std::time::Duration;

const CONSUME: [&str; 5] = ["consume", "--batch-size", "20", "--until-idle", "25"];

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_killed_at_several_points_and_restarted_stores_each_record_once() {
    let env = TestEnv::with("sigkill", &[SHORT_SESSION]).await;
    // Enough records that four short runs cannot drain them all before their kill.
    env.produce(1000, &[]);
    let mut rows_at_kill = Vec::new();
    for round in 0..4u64 {
        let run = env.spawn(&CONSUME_SLOWLY[..5], &format!("run{round}"));
        let before = rows(&env).await;
        // Kill once this run has stored something (mid-stream, not during start-up), at a
        // different moment of the batch cycle each round.
        let progressed = common::eventually(Duration::from_secs(60), || async {
            rows(&env).await > before
        })
        .await;
        assert!(
            progressed,
            "run {round} made no progress:\n{}",
            env.read_log(&format!("run{round}"))
        );
        tokio::time::sleep(Duration::from_millis(37 * round)).await;
        signal(run.child(), SIGKILL);
        let _ = run.wait();
        rows_at_kill.push(rows(&env).await);
    }
    assert!(
        rows_at_kill.iter().all(|&r| r < 1000),
        "kills came too late to mean anything: {rows_at_kill:?}"
    );
    let last = env.spawn(&["consume", "--until-idle", "4"], "final");
    wait_ok(last, &env, "final");
    assert_exactly_once(&env, 1000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_of_two_consumers_killed_mid_run_leaves_the_other_to_finish_exactly() {
    let env = TestEnv::with("twokill", &[("KAFKA_TOPIC_PARTITIONS", "4"), SHORT_SESSION]).await;
    env.produce(500, &[]);
    let a = env.spawn(&CONSUME, "a");
    let b = env.spawn(&CONSUME, "b");
    wait_for_rows(&env, 60).await;
    signal(a.child(), SIGKILL);
    let _ = a.wait();
    // b takes over a's partitions once a's session expires, and drains them.
    stop_once_stored(&env, b, 500, "b").await;
    assert_exactly_once(&env, 500).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_frozen_past_its_session_then_resumed_neither_doubles_nor_overwrites() {
    let env = TestEnv::with("zombie", &[("KAFKA_TOPIC_PARTITIONS", "4"), SHORT_SESSION]).await;
    env.produce(500, &[]);
    let a = env.spawn(&CONSUME, "a");
    let b = env.spawn(&CONSUME, "b");
    wait_for_rows(&env, 60).await;
    signal(a.child(), SIGSTOP);
    // Past the session timeout (10 s here): the group gives a's partitions to b while a is frozen.
    tokio::time::sleep(Duration::from_secs(16)).await;
    signal(a.child(), SIGCONT);
    wait_ok(a, &env, "a");
    wait_ok(b, &env, "b");
    assert_exactly_once(&env, 500).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_uploads_under_way_commits_them_and_exits_zero() {
    let env = TestEnv::new("sigterm").await;
    env.produce(400, &[]);
    let consumer = env.spawn(&CONSUME_SLOWLY[..5], "consumer");
    wait_for_rows(&env, 40).await;
    signal(consumer.child(), common::SIGTERM);
    let status = consumer
        .wait_within(std::time::Duration::from_secs(300))
        .expect("the consumer did not exit within 300 s");
    assert!(
        status.success(),
        "exit {status:?}:\n{}",
        env.read_log("consumer")
    );
    // Everything stored was committed: the group's committed offsets cover exactly the rows.
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["status", "--json"]))).unwrap();
    let committed: i64 = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["committed"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(committed, rows(&env).await, "{status}");
    assert!(committed < 400, "the run finished before the signal");
    let rest = env.spawn(&["consume", "--until-idle", "3"], "rest");
    wait_ok(rest, &env, "rest");
    assert_exactly_once(&env, 400).await;
}

/// PostgreSQL refusing the consumer's connections ("too many connections for role", SQLSTATE
/// 53300, the way a full server refuses them) is an outage: logged with PostgreSQL's own message,
/// retried, and the run completes once connections are allowed again.
#[tokio::test(flavor = "multi_thread")]
async fn postgresql_out_of_connections_is_an_outage_that_heals() {
    use sqlx::Connection;
    let app = common::identities::TestRole::create("conns").await;
    let env = TestEnv::with("pgconns", &[("DATABASE_APP_ROLE", &app.name)]).await;
    env.produce(600, &[]);
    let consumer = env.spawn_with(
        &CONSUME_SLOWLY,
        "consumer",
        &[("DATABASE_CONNECTION_STRING", &app.url(&env))],
    );
    wait_for_rows(&env, 50).await;
    let admin_url = env.settings.database_url.with_database("postgres");
    let mut admin = sqlx::PgConnection::connect(admin_url.expose())
        .await
        .unwrap();
    let limit = |n: i32| format!("ALTER ROLE {} CONNECTION LIMIT {n}", app.name);
    sqlx::query(&limit(0)).execute(&mut admin).await.unwrap();
    // The pool's open connections go too, as a restarted server's would.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&app.name)
        .execute(&mut admin)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rows(&env).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rows(&env).await;
    sqlx::query(&limit(-1)).execute(&mut admin).await.unwrap();
    assert_eq!(
        during, after,
        "rows were written while no connection was allowed"
    );
    assert!(after < 600, "the outage came after the end of the run");

    stop_once_stored(&env, consumer, 600, "consumer").await;
    assert_exactly_once(&env, 600).await;
    let log = env.read_log("consumer");
    assert!(
        log.contains("outage started") && log.contains("too many connections for role"),
        "the outage was not logged with PostgreSQL's message:\n{log}"
    );
    assert!(log.contains("outage ended"), "{log}");
}
