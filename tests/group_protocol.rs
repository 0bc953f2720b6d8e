//! The consumer group protocol of KIP-848 (`KAFKA_GROUP_PROTOCOL=consumer`) against the stack's
//! broker: the broker moves partitions between members, and the hand-over (finish the batches
//! of a partition being taken away, store their offsets, let librdkafka commit them) still holds.

mod common;

use common::TestEnv;
use common::runs::{finish_group_change_without_redo, wait_assigned};
use common::stderr;
use std::time::Duration;

const CONSUMER_PROTOCOL: (&str, &str) = ("KAFKA_GROUP_PROTOCOL", "consumer");

/// Under the consumer protocol, a second member joining mid-run and leaving again (SIGTERM)
/// takes partitions from the first and gives them back without a record stored twice or left
/// behind: as many objects and rows as records, nothing redone, the group committed to the end,
/// both members exit 0. The first member is a static one (`KAFKA_GROUP_INSTANCE_ID`).
#[tokio::test(flavor = "multi_thread")]
async fn under_the_consumer_protocol_a_member_joining_and_leaving_mid_run_redoes_no_record() {
    let records = 3000;
    let env = TestEnv::with(
        "kip848",
        &[CONSUMER_PROTOCOL, ("KAFKA_TOPIC_PARTITIONS", "6")],
    )
    .await;
    env.produce(records, &["--key", "image"]);
    // Slow members (small batches, one upload at a time), so that the group changes mid-run.
    let consume = [
        "consume",
        "--batch-size",
        "5",
        "--uploads",
        "1",
        "--until-idle",
        "15",
        "--json",
    ];
    let first = env.spawn_apart(&consume, "first", &[("KAFKA_GROUP_INSTANCE_ID", "first")]);
    wait_assigned(&env, "first").await;
    let second = env.spawn_apart(&consume, "second", &[]);
    wait_assigned(&env, "second").await;
    // Both members work for a while before the second leaves.
    let rows_when_joined = env.counts().await.1;
    let worked = common::eventually(Duration::from_secs(60), || async {
        env.counts().await.1 >= rows_when_joined + 300
    })
    .await;
    assert!(worked, "no progress with two members");
    let (_, rows) = env.counts().await;
    assert!(
        rows < records as i64,
        "the group changed too late to mean anything"
    );
    finish_group_change_without_redo(&env, ("second", second), vec![("first", first)], records)
        .await;
}

/// A group protocol Kafka does not have is a setting error that names its variable, before any
/// service is asked.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_group_protocol_is_a_setting_error_naming_its_variable() {
    let env = TestEnv::new("bad-protocol").await;
    let out = env
        .command(&["consume", "--until-idle", "1"])
        .env("KAFKA_GROUP_PROTOCOL", "eager")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("KAFKA_GROUP_PROTOCOL") && err.contains("classic or consumer"),
        "{err}"
    );
}
