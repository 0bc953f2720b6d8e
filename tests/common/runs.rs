//! What the fault tests check at the end of a run, the same way in every file: rows as the
//! index counts them, and "exactly once" read from the services.

use super::{SIGTERM, Spawned, TestEnv, read_topic, signal, stdout};
use std::time::Duration;

/// A deliberately slow consumer (small batches, two uploads at a time), so that a fault injected
/// after the first rows lands in the middle of the run and not after its end.
pub const CONSUME_SLOWLY: [&str; 7] = [
    "consume",
    "--batch-size",
    "10",
    "--uploads",
    "2",
    "--until-idle",
    "25",
];

/// Rows in the test's index; -1 while PostgreSQL cannot be reached (a fault may be under way).
pub async fn rows(env: &TestEnv) -> i64 {
    match imgstream::index::ImageIndex::connect(&env.settings.database_url, Duration::from_secs(2))
        .await
    {
        Ok(index) => {
            let n = index.count().await.unwrap_or(-1);
            index.close().await;
            n
        }
        Err(_) => -1,
    }
}

/// Waits until at least `n` rows are indexed: proof that a run is under way before the fault.
pub async fn wait_for_rows(env: &TestEnv, n: i64) {
    let reached =
        super::eventually(Duration::from_secs(90), || async { rows(env).await >= n }).await;
    assert!(
        reached,
        "never reached {n} rows:\n{}",
        env.read_log("consumer")
    );
}

/// Ends a consumer once the index holds `n` rows: SIGTERM, so it finishes the batch in flight,
/// commits and exits 0 (checked). Waiting for `--until-idle` instead cost every run its idle
/// time, 20 to 40 s each; `--until-idle` stays on as the backstop for a run that never gets there.
pub async fn stop_once_stored(env: &TestEnv, consumer: Spawned, n: i64, log: &str) {
    let stored =
        super::eventually(Duration::from_secs(300), || async { rows(env).await >= n }).await;
    assert!(
        stored,
        "{log} never stored {n} rows ({} stored):\n{}",
        rows(env).await,
        env.read_log(log)
    );
    stop(env, consumer, log);
}

/// SIGTERM, then an exit 0 within two minutes: what a supervisor's stop must get.
pub fn stop(env: &TestEnv, consumer: Spawned, log: &str) {
    signal(consumer.child(), SIGTERM);
    let status = consumer.wait_within(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "{log} ended with {status:?} on SIGTERM (None: still running after 120 s, killed):\n{}",
        env.read_log(log)
    );
}

/// Exactly `n` objects and `n` rows, every checksum right (`verify --full`), nothing
/// dead-lettered, and the group's lag 0.
pub async fn assert_exactly_once(env: &TestEnv, n: usize) {
    assert_eq!(env.counts().await, (n, n as i64));
    let verify = env.run(&["verify", "--full"]);
    assert!(
        verify.status.success(),
        "verify --full failed:\n{}\n{}",
        stdout(&verify),
        super::stderr(&verify)
    );
    assert!(
        read_topic(env, &env.settings.kafka.dlq_topic).is_empty(),
        "records were dead-lettered"
    );
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["status", "--json"]))).unwrap();
    assert_eq!(status["total_lag"], 0, "{status}");
}

/// Whether a member's log shows it was given at least one partition.
pub fn was_assigned_partitions(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("partitions assigned") && !l.contains("partitions=none"))
}

/// Waits until the member logging to `name` owns at least one partition.
pub async fn wait_assigned(env: &TestEnv, name: &str) {
    let assigned = super::eventually(Duration::from_secs(60), || async {
        was_assigned_partitions(&env.read_log(name))
    })
    .await;
    assert!(
        assigned,
        "{name} got no partitions:\n{}",
        env.read_log(name)
    );
}

/// The end of a group change mid-run: `leaving` is stopped (SIGTERM, exit 0), the `staying`
/// members are stopped once all `records` are stored, and then nobody redid anybody's work: the
/// members' `--json` summaries add up to `records` stored and none replayed, objects and rows
/// match, the first staying member handed partitions over only after finishing their batches,
/// and the group committed to the end.
pub async fn finish_group_change_without_redo(
    env: &TestEnv,
    leaving: (&str, Spawned),
    staying: Vec<(&str, Spawned)>,
    records: u64,
) {
    let mut names = vec![leaving.0];
    stop(env, leaving.1, leaving.0);
    let stored_all = super::eventually(Duration::from_secs(300), || async {
        rows(env).await >= records as i64
    })
    .await;
    assert!(stored_all, "only {} of {records} stored", rows(env).await);
    for (name, member) in staying {
        stop(env, member, name);
        names.push(name);
    }
    let (mut stored, mut replayed) = (0, 0);
    for name in &names {
        let summary: serde_json::Value =
            serde_json::from_str(env.read_out(name).trim()).expect("consume --json");
        stored += summary["stored"].as_u64().unwrap();
        replayed += summary["replayed"].as_u64().unwrap();
    }
    assert_eq!(env.counts().await, (records as usize, records as i64));
    assert_eq!(
        (stored, replayed),
        (records, 0),
        "stored and replayed by {names:?}"
    );
    let first = names[1];
    assert!(
        env.read_log(first)
            .contains("partitions revoked after their batches were finished"),
        "{first} never handed a partition over:\n{}",
        env.read_log(first)
    );
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["status", "--json"]))).unwrap();
    assert_eq!(status["total_lag"], 0, "{status}");
}

/// Every consumer in the fault tests ends well within this; one that does not is a hang.
pub const EXIT_WITHIN: Duration = Duration::from_secs(300);

/// Waits for a consumer to exit 0 on its own, within [`EXIT_WITHIN`].
pub fn wait_ok(process: Spawned, env: &TestEnv, log: &str) {
    let status = process.wait_within(EXIT_WITHIN);
    assert!(
        status.is_some_and(|s| s.success()),
        "{log} ended with {status:?} (None: still running after {}s, killed):\n{}",
        EXIT_WITHIN.as_secs(),
        env.read_log(log)
    );
}
