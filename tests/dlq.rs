//! `imgstream dlq`: dead letters listed by code, and the fixed ones replayed into exactly one
//! object and one row, against the real stack.

mod common;

use common::{LABEL_HEADER, TestEnv, header, raw_producer, read_topic, send_raw, stderr, stdout};
use imgstream::kafka::dlq::headers;
use serde_json::{Value, json};

fn json_of(env: &TestEnv, args: &[&str]) -> Value {
    let out = env.run(args);
    assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e})"))
}

fn consume(env: &TestEnv, extra_env: &[(&str, &str)]) -> Value {
    let out = env
        .command(&["consume", "--until-idle", "3", "--json"])
        .envs(extra_env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "consume failed: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).expect("consume --json")
}

#[tokio::test(flavor = "multi_thread")]
async fn letters_are_listed_by_code_and_fixed_ones_replay_into_exactly_one_object_and_row() {
    let env = TestEnv::new("dlqreplay").await;
    env.produce(5, &[]);
    let producer = raw_producer(&env);
    send_raw(&producer, &env.name, "garbage-1", Some(b"\x00")).await;
    send_raw(&producer, &env.name, "garbage-2", Some(b"\x00\x01")).await;

    // A pixel limit far too strict for these images: every image is refused.
    let summary = consume(&env, &[("IMGSTREAM_MAX_PIXELS", "100")]);
    assert_eq!(
        (
            summary["stored"].as_u64(),
            summary["dead_lettered"].as_u64()
        ),
        (Some(0), Some(7))
    );

    let listing = json_of(&env, &["dlq", "ls", "--json"]);
    assert_eq!(
        listing["counts"],
        json!({"too-many-pixels": 5, "not-wire-format": 2})
    );
    let garbage = json_of(&env, &["dlq", "ls", "--code", "not-wire-format", "--json"]);
    assert_eq!(garbage["letters"].as_array().unwrap().len(), 2);
    let future = json_of(
        &env,
        &["dlq", "ls", "--since", "2999-01-01T00:00:00Z", "--json"],
    );
    assert_eq!(future["letters"], json!([]));
    let recent = json_of(&env, &["dlq", "ls", "--since", "1h", "--json"]);
    assert_eq!(recent["letters"].as_array().unwrap().len(), 7);

    // A dry run sends nothing.
    let dry = json_of(
        &env,
        &[
            "dlq",
            "replay",
            "--code",
            "too-many-pixels",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(dry["replayed"].as_array().unwrap().len(), 5);
    assert_eq!(read_topic(&env, &env.name).len(), 7);

    // The limit is back to normal: replayed (twice, by mistake), each image is stored once.
    for _ in 0..2 {
        let report = json_of(
            &env,
            &["dlq", "replay", "--code", "too-many-pixels", "--json"],
        );
        assert_eq!(report["replayed"].as_array().unwrap().len(), 5);
    }
    let summary = consume(&env, &[]);
    assert_eq!(
        (summary["stored"].as_u64(), summary["replayed"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(env.counts().await, (5, 5));
    let verify = env.run(&["verify", "--full"]);
    assert!(verify.status.success(), "{}", stdout(&verify));

    // Garbage stays garbage: replayed, it comes back with its replay count raised and its
    // original headers.
    json_of(
        &env,
        &["dlq", "replay", "--code", "not-wire-format", "--json"],
    );
    let summary = consume(&env, &[]);
    assert_eq!(summary["dead_lettered"].as_u64(), Some(2));
    let again = read_topic(&env, &format!("{}.dlq", env.name));
    let returned: Vec<_> = again
        .iter()
        .filter(|m| header(m, headers::REPLAY_COUNT).as_deref() == Some("1"))
        .collect();
    assert_eq!(returned.len(), 2);
    for m in returned {
        assert!(header(m, LABEL_HEADER).unwrap().starts_with("garbage-"));
        assert_eq!(header(m, headers::CODE).as_deref(), Some("not-wire-format"));
    }

    // A letter replayed as often as allowed is held back.
    let report = json_of(
        &env,
        &[
            "dlq",
            "replay",
            "--code",
            "not-wire-format",
            "--max-replays",
            "1",
            "--json",
        ],
    );
    assert_eq!(report["held_back"].as_array().unwrap().len(), 2);
    assert_eq!(report["replayed"].as_array().unwrap().len(), 2);
}
