//! What the fault tests check at the end of a run, the same way in every file: rows as the
//! index counts them, and "exactly once" read from the services.

use super::{TestEnv, read_topic, stdout};
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
    assert!(reached, "never reached {n} rows");
}

/// Exactly `n` objects and `n` rows, every checksum right (`verify --full`), nothing
/// dead-lettered, and the group's lag 0.
pub async fn assert_exactly_once(env: &TestEnv, n: usize) {
    assert_eq!(env.counts().await, (n, n as i64));
    let verify = env.run(&["verify", "--full"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    assert!(
        read_topic(env, &env.settings.kafka.dlq_topic).is_empty(),
        "records were dead-lettered"
    );
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["status", "--json"]))).unwrap();
    assert_eq!(status["total_lag"], 0, "{status}");
}
