//! The archive over its lifetime: an erasure removes a customer's images and keeps them out,
//! whoever replays their records (a running consumer, a rewound group, a fresh group, `dlq
//! replay`); an erase killed half-way is finished by running it again; bad requests change
//! nothing. Every count is read from PostgreSQL, the bucket and the topic.

mod common;

use common::{TestEnv, read_topic, read_topic_as, signal, stderr, stdout};
use imgstream::domain::ImageRecord;
use rdkafka::Message;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Every record on the data topic, decoded.
async fn topic_records(env: &TestEnv) -> Vec<ImageRecord> {
    let values = read_topic_as(env, &env.settings.kafka.data_topic, |m| {
        bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default())
    });
    let codec = imgstream::wiring::codec(&env.settings).unwrap();
    let mut out = Vec::new();
    for v in values {
        out.push(
            codec
                .decode(&v)
                .await
                .expect("our producer's records decode"),
        );
    }
    out
}

/// Rows per customer, from PostgreSQL.
async fn rows_by_customer(env: &TestEnv) -> BTreeMap<String, i64> {
    let mut conn = connect(env).await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT customer_id, count(*) FROM images GROUP BY customer_id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    rows.into_iter().collect()
}

async fn connect(env: &TestEnv) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(env.settings.database_url.expose())
        .await
        .unwrap()
}

/// Object keys under `images/` and every row's key: the bucket and the index hold the same set.
async fn assert_bucket_matches_index(env: &TestEnv) {
    let objects: HashSet<String> = env
        .store()
        .list("images/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    let mut conn = connect(env).await;
    let keys: Vec<String> = sqlx::query_scalar("SELECT object_key FROM images")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let keys: HashSet<String> = keys.into_iter().collect();
    assert_eq!(objects.len(), keys.len(), "objects against rows");
    assert!(objects == keys, "the bucket and the index differ");
}

/// A consume run to the end, as its `--json` summary says.
fn consume(env: &TestEnv, extra: &[(&str, &str)]) -> Value {
    let out = env
        .command(&["consume", "--until-idle", "3", "--json"])
        .envs(extra.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap()
}

fn erasures_json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}{}", stdout(out), stderr(out));
    serde_json::from_str(&stdout(out)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erased_customer_stays_erased_through_a_running_consumer_a_rewind_and_a_fresh_group() {
    let env = TestEnv::new("lifetime").await;
    for customer in ["alice", "bob", "carol"] {
        env.produce(
            1000,
            &[
                "--customer-id",
                customer,
                "--width",
                "16-32",
                "--height",
                "16-32",
            ],
        );
    }
    // A consumer stores while bob's images keep arriving, and bob is erased in the middle.
    let consumer = env.spawn_apart(
        &[
            "consume",
            "--batch-size",
            "50",
            "--until-idle",
            "4",
            "--json",
        ],
        "consumer",
        &[],
    );
    common::runs::wait_for_rows(&env, 600).await;
    let producer = env.spawn(
        &[
            "produce",
            "--duration",
            "5s",
            "--rate",
            "60",
            "--customer-id",
            "bob",
            "--width",
            "16-32",
            "--height",
            "16-32",
        ],
        "producer",
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let erased = erasures_json(&env.run(&["erase", "--customer", "bob", "--json"]));
    assert_eq!(erased["finished"], true, "{erased}");
    let cutoff =
        chrono::DateTime::parse_from_rfc3339(erased["erasure"]["started_at"].as_str().unwrap())
            .unwrap();
    assert!(producer.wait().success());
    assert!(consumer.wait().success(), "{}", env.read_log("consumer"));

    // What the topic holds decides what the services must hold: everything of alice and carol,
    // bob's images created at or after the cut-off, and nothing else.
    let records = topic_records(&env).await;
    let mut conn = connect(&env).await;
    let cutoff_db: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT cutoff FROM erasures")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(cutoff_db <= cutoff.with_timezone(&chrono::Utc) + chrono::Duration::seconds(1));
    let bob_before = records
        .iter()
        .filter(|r| r.customer_id == "bob" && r.created_at < cutoff_db)
        .count() as i64;
    let bob_after = records
        .iter()
        .filter(|r| r.customer_id == "bob" && r.created_at >= cutoff_db)
        .count() as i64;
    assert!(
        bob_before >= 1000 && bob_after > 0,
        "{bob_before} {bob_after}"
    );
    let expected = BTreeMap::from([
        ("alice".to_string(), 1000),
        ("bob".to_string(), bob_after),
        ("carol".to_string(), 1000),
    ]);
    assert_eq!(rows_by_customer(&env).await, expected);
    let bob_old: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM images WHERE customer_id = 'bob' AND created_at < $1",
    )
    .bind(cutoff_db)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(bob_old, 0);
    assert_bucket_matches_index(&env).await;
    assert!(read_topic(&env, &env.settings.kafka.dlq_topic).is_empty());
    let (rows_removed, objects_removed): (i64, i64) =
        sqlx::query_as("SELECT rows_removed, objects_removed FROM erasures")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    // The erasure removed what had been stored of bob before it; the rest never was.
    assert!(rows_removed > 0 && objects_removed >= rows_removed);
    let leftovers: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure_leftovers")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(leftovers, 0);

    // The group rewound to the start: every record read again, none of bob's old ones stored.
    let rewound = env.run(&["rewind", "--to", "earliest"]);
    assert!(rewound.status.success(), "{}", stderr(&rewound));
    assert!(stdout(&rewound).contains("old"), "{}", stdout(&rewound));
    let again = consume(&env, &[]);
    let total = records.len() as i64;
    assert_eq!(again["stored"], 0, "{again}");
    assert_eq!(again["erased"], bob_before, "{again}");
    assert_eq!(again["replayed"], total - bob_before, "{again}");
    assert_eq!(rows_by_customer(&env).await, expected);
    assert_bucket_matches_index(&env).await;

    // A fresh group reads the whole topic too: the same.
    let fresh_group = format!("{}-fresh", env.name);
    let fresh = consume(&env, &[("KAFKA_GROUP_ID", &fresh_group)]);
    assert_eq!(fresh["stored"], 0, "{fresh}");
    assert_eq!(fresh["erased"], bob_before, "{fresh}");
    assert_eq!(fresh["replayed"], total - bob_before, "{fresh}");
    assert_eq!(rows_by_customer(&env).await, expected);
    assert_bucket_matches_index(&env).await;
    assert!(read_topic(&env, &env.settings.kafka.dlq_topic).is_empty());
    let verify = env.run(&["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erase_killed_half_way_is_finished_by_running_it_again_as_one_erasure() {
    let env = TestEnv::new("erase-kill").await;
    env.produce(
        400,
        &[
            "--customer-id",
            "kim",
            "--width",
            "16-32",
            "--height",
            "16-32",
        ],
    );
    env.produce(
        50,
        &[
            "--customer-id",
            "lee",
            "--width",
            "16-32",
            "--height",
            "16-32",
        ],
    );
    consume(&env, &[]);
    let mut conn = connect(&env).await;
    let erase = env.spawn(
        &["erase", "--customer", "kim", "--batch-size", "5"],
        "erase",
    );
    let started = common::eventually(Duration::from_secs(30), || {
        let env = &env;
        async move {
            let mut conn = connect(env).await;
            let removed: Option<i64> = sqlx::query_scalar("SELECT rows_removed FROM erasures")
                .fetch_optional(&mut conn)
                .await
                .unwrap();
            removed.is_some_and(|n| n > 0)
        }
    })
    .await;
    assert!(started, "{}", env.read_log("erase"));
    signal(erase.child(), libc_sigkill());
    drop(erase);
    let (finished, removed): (Option<chrono::DateTime<chrono::Utc>>, i64) =
        sqlx::query_as("SELECT finished_at, rows_removed FROM erasures")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let kim_left = rows_by_customer(&env)
        .await
        .get("kim")
        .copied()
        .unwrap_or(0);
    assert!(finished.is_none(), "killed, it is not finished");
    assert!(
        kim_left > 0 && removed < 400,
        "killed mid-way: {removed} removed"
    );

    let again = erasures_json(&env.run(&["erase", "--customer", "kim", "--json"]));
    assert_eq!(again["resumed"], true, "{again}");
    assert_eq!(again["finished"], true, "{again}");
    let records: Vec<(i64, i64, bool)> = sqlx::query_as(
        "SELECT rows_removed, objects_removed, finished_at IS NOT NULL FROM erasures",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(records, vec![(400, 400, true)]);
    assert_eq!(
        rows_by_customer(&env).await,
        BTreeMap::from([("lee".to_string(), 50)])
    );
    assert_eq!(env.counts().await, (50, 50));
    assert_bucket_matches_index(&env).await;
}

fn libc_sigkill() -> i32 {
    9
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_replay_skips_an_erased_customers_letters_and_never_sends_a_letter_twice() {
    let env = TestEnv::new("erase-dlq").await;
    // Small images are stored; large ones are refused by a pixel limit, as dead letters that
    // carry the whole record.
    let small = ["--width", "16-32", "--height", "16-32"];
    let large = ["--width", "200", "--height", "200"];
    env.produce(5, &[&["--customer-id", "mia"][..], &small].concat());
    env.produce(4, &[&["--customer-id", "mia"][..], &large].concat());
    env.produce(3, &[&["--customer-id", "ned"][..], &large].concat());
    let first = consume(&env, &[("IMGSTREAM_MAX_PIXELS", "10000")]);
    assert_eq!(
        (first["stored"].as_u64(), first["dead_lettered"].as_u64()),
        (Some(5), Some(7))
    );

    let erased = erasures_json(&env.run(&["erase", "--customer", "mia", "--json"]));
    assert_eq!(erased["erasure"]["rows_removed"], 5, "{erased}");
    let listing: Value = serde_json::from_str(&stdout(&env.run(&["dlq", "ls", "--json"]))).unwrap();
    assert_eq!(listing["letters"].as_array().unwrap().len(), 3, "{listing}");
    assert_eq!(listing["erased"], 4, "{listing}");

    let replay: Value =
        serde_json::from_str(&stdout(&env.run(&["dlq", "replay", "--json"]))).unwrap();
    assert_eq!(replay["replayed"].as_array().unwrap().len(), 3, "{replay}");
    assert_eq!(replay["erased"], 4, "{replay}");
    let twice: Value =
        serde_json::from_str(&stdout(&env.run(&["dlq", "replay", "--json"]))).unwrap();
    assert_eq!(twice["replayed"].as_array().unwrap().len(), 0, "{twice}");
    assert_eq!(
        twice["already_replayed"].as_array().unwrap().len(),
        3,
        "{twice}"
    );

    let after = consume(&env, &[]);
    assert_eq!(after["stored"], 3, "{after}");
    assert_eq!(
        rows_by_customer(&env).await,
        BTreeMap::from([("ned".to_string(), 3)])
    );
    // On the data topic: the 12 produced and the 3 replayed, no more.
    assert_eq!(read_topic(&env, &env.settings.kafka.data_topic).len(), 15);
    assert_bucket_matches_index(&env).await;
}

/// Runs `imgstream args` expecting a refusal: non-zero, one line on stderr containing `says`.
fn refused(env: &TestEnv, args: &[&str], says: &str) {
    let out = env.run(args);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        stdout(&out)
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: {err}");
    assert!(lines[0].contains(says), "{args:?}: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_one_line_each_and_change_nothing() {
    let env = TestEnv::new("erase-bad").await;
    env.produce(
        30,
        &[
            "--customer-id",
            "olga",
            "--width",
            "16-32",
            "--height",
            "16-32",
        ],
    );
    consume(&env, &[]);
    let committed =
        || imgstream::audit::group_offsets(&env.settings, &env.settings.kafka.data_topic).unwrap();
    let before = committed();

    refused(&env, &["erase"], "needs a selector");
    refused(&env, &["erase", "--customer", "nobody"], "0 erased");
    refused(
        &env,
        &[
            "erase",
            "--customer",
            "olga",
            "--before",
            "2999-01-01T00:00:00Z",
        ],
        "in the future",
    );
    refused(&env, &["erase", "--image", "not-a-uuid"], "not an image id");
    refused(
        &env,
        &["rewind", "--to", "2999-01-01T00:00:00Z"],
        "no record of",
    );
    // A dry run says what it would do and does it not.
    let dry = env.run(&["erase", "--customer", "olga", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(stdout(&dry).contains("would erase"), "{}", stdout(&dry));

    let mut conn = connect(&env).await;
    let erasures: i64 = sqlx::query_scalar("SELECT count(*) FROM erasures")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(erasures, 0);
    assert_eq!(env.counts().await, (30, 30));
    assert_eq!(committed(), before);

    // A group with a member is not moved: the refusal names the member.
    let member = env.spawn(&["consume", "--until-idle", "60"], "member");
    let joined = common::eventually(Duration::from_secs(30), || async {
        let out = env.run(&["rewind", "--to", "earliest", "--dry-run"]);
        !out.status.success() && stderr(&out).contains("member")
    })
    .await;
    assert!(joined, "{}", env.read_log("member"));
    refused(&env, &["rewind", "--to", "earliest"], "member(s):");
    signal(member.child(), 15);
    member.wait_within(Duration::from_secs(20));
    assert_eq!(committed(), before);

    // One image by id: its object and row go, and verify stays clean.
    let id: uuid::Uuid = sqlx::query_scalar("SELECT image_id FROM images LIMIT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let id = id.to_string();
    let one = erasures_json(&env.run(&["erase", "--image", &id, "--json"]));
    assert_eq!(one["erasure"]["rows_removed"], 1, "{one}");
    assert_eq!(env.counts().await, (29, 29));
    let verify = env.run(&["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[tokio::test(flavor = "multi_thread")]
async fn retain_erases_what_is_older_than_the_retention_as_the_eraser_whom_the_consumer_cannot_be()
{
    use common::identities::{Mc, S3User, TestRole, policy};
    // Declared first, so they are dropped last: the roles outlive the database.
    let app = TestRole::create("app").await;
    let eraser = TestRole::create("eraser").await;
    let env = TestEnv::with(
        "retain",
        &[
            ("DATABASE_APP_ROLE", &app.name),
            ("DATABASE_ERASER_ROLE", &eraser.name),
        ],
    )
    .await;
    // Six images created 500 days ago and four today, one of each kind per key.
    let producer = common::raw_producer(&env);
    for n in 0..10u64 {
        let mut record = common::valid_record(n, imgstream::domain::ImageFormat::Png);
        if n < 6 {
            record.created_at -= chrono::Duration::days(500);
        }
        let value = common::encode(&env, &record).await;
        common::send_raw(&producer, &env.name, &format!("r{n}"), Some(&value)).await;
    }
    let app_url = app.url(&env);
    let first = consume(&env, &[("DATABASE_CONNECTION_STRING", &app_url)]);
    assert_eq!(first["stored"], 10, "{first}");

    // The consumer's identity may not delete, and no retention means nothing to do.
    let mut as_app = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&app_url).await.unwrap()
    };
    for sql in [
        "DELETE FROM images",
        "DELETE FROM erasures",
        "UPDATE erasures SET rows_removed = 0",
    ] {
        let answer = sqlx::query(sql).execute(&mut as_app).await;
        assert!(
            answer
                .as_ref()
                .is_err_and(|e| e.to_string().contains("permission denied")),
            "the consumer's role ran {sql}: {answer:?}"
        );
    }
    let unset = env.run(&["retain"]);
    assert!(
        stdout(&unset).contains("kept forever"),
        "{}",
        stdout(&unset)
    );

    let mc = Mc::new(&env);
    let bucket = env.settings.store.bucket.clone();
    let key = S3User::create(&mc, "eraser", &policy("s3-eraser.json", &bucket));
    let as_eraser = [
        ("DATABASE_CONNECTION_STRING", eraser.url(&env)),
        ("MINIO_ACCESS_KEY", key.access_key.clone()),
        ("MINIO_SECRET_KEY", key.secret_key.clone()),
        ("IMGSTREAM_RETENTION", "400d".to_string()),
    ];
    let dry = env
        .command(&["retain", "--dry-run"])
        .envs(as_eraser.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        stdout(&dry).contains("6 rows"),
        "{}{}",
        stdout(&dry),
        stderr(&dry)
    );
    let retained = env
        .command(&["retain", "--batch-size", "4", "--json"])
        .envs(as_eraser.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let report = erasures_json(&retained);
    assert_eq!(report["finished"], true, "{report}");
    assert_eq!(report["erasure"]["kind"], "retention", "{report}");
    assert_eq!(report["erasure"]["rows_removed"], 6, "{report}");
    assert_eq!(report["erasure"]["database_role"], eraser.name, "{report}");
    assert_eq!(env.counts().await, (4, 4));
    assert_bucket_matches_index(&env).await;

    // A fresh group reads all ten again: the old six stay erased.
    let fresh_group = format!("{}-fresh", env.name);
    let again = consume(
        &env,
        &[
            ("KAFKA_GROUP_ID", &fresh_group),
            ("DATABASE_CONNECTION_STRING", &app_url),
        ],
    );
    assert_eq!(
        (again["erased"].as_u64(), again["replayed"].as_u64()),
        (Some(6), Some(4)),
        "{again}"
    );
    assert_eq!(env.counts().await, (4, 4));
}

/// A session of the test's own holding the erasure lock exclusively: the lock a consumer's index
/// transaction takes shared and `erase` takes exclusively to record an erasure. Each of them
/// queues behind the gate as it arrives, and PostgreSQL grants them in that order once the gate
/// opens, so the test decides which goes first, by when it starts the other, not by timing.
struct Gate {
    conn: sqlx::PgConnection,
}

impl Gate {
    async fn close(env: &TestEnv) -> Gate {
        let mut conn = connect(env).await;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(imgstream::index::ERASURE_LOCK)
            .execute(&mut conn)
            .await
            .unwrap();
        Gate { conn }
    }

    /// Sessions waiting at the gate (a bigint advisory key shows as its two halves).
    async fn queued(&mut self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks
             WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND (classid::int8 << 32 | objid::int8) = $1",
        )
        .bind(imgstream::index::ERASURE_LOCK)
        .fetch_one(&mut self.conn)
        .await
        .unwrap()
    }

    /// Waits until `n` sessions queue at the gate, and `also` holds.
    async fn wait_for(&mut self, n: i64, env: &TestEnv, also: impl AsyncFn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while !(self.queued().await == n && also().await) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} sessions at the gate:\nconsumer: {}\nerase: {}",
                self.queued().await,
                env.read_log("consumer"),
                env.read_log("erase")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn open(mut self) {
        let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(imgstream::index::ERASURE_LOCK)
            .fetch_one(&mut self.conn)
            .await
            .unwrap();
        assert!(released);
    }
}

/// Which of the two passes the gate first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    /// The consumer checked and uploaded the batch and commits its rows; then the erasure is
    /// recorded, and `erase` finds the rows.
    ConsumerInsert,
    /// The consumer checked the batch (nothing erased yet) and uploaded it; the erasure is
    /// recorded before its index transaction, which then leaves the erased rows out and names
    /// their objects as leftovers, which `erase` removes once the group has committed.
    Erasure,
}

/// What an erase racing a consumer left: (consumer summary, erase report).
async fn erase_racing_a_consumer(env: &TestEnv, first: First) -> (Value, Value) {
    let small = ["--width", "16-32", "--height", "16-32"];
    // zoe is known to the index: two of her images stored before the race.
    env.produce(2, &[&["--customer-id", "zoe"][..], &small].concat());
    consume(env, &[]);
    // The batch the two race over: six of zoe's and four of yan's, all created before the
    // erasure is asked for, so all of zoe's are hers to erase.
    env.produce(6, &[&["--customer-id", "zoe"][..], &small].concat());
    env.produce(4, &[&["--customer-id", "yan"][..], &small].concat());
    let objects = async || env.store().list("images/").await.unwrap().len() == 12;
    let anyway = async || true;
    // One batch (one partition, room for all, a second to fill it): one index transaction.
    let consume_args = [
        "consume",
        "--batch-size",
        "100",
        "--linger-ms",
        "1000",
        "--until-idle",
        "5",
        "--json",
    ];
    let erase_args = ["erase", "--customer", "zoe", "--json"];
    let mut gate = Gate::close(env).await;
    let (consumer, eraser) = match first {
        First::ConsumerInsert => {
            let consumer = env.spawn_apart(&consume_args, "consumer", &[]);
            // Checked, uploaded (12 objects: 2 earlier and the batch), and queued to insert.
            gate.wait_for(1, env, objects).await;
            let eraser = env.spawn_apart(&erase_args, "erase", &[]);
            gate.wait_for(2, env, anyway).await;
            (consumer, eraser)
        }
        First::Erasure => {
            let eraser = env.spawn_apart(&erase_args, "erase", &[]);
            gate.wait_for(1, env, anyway).await;
            let consumer = env.spawn_apart(&consume_args, "consumer", &[]);
            gate.wait_for(2, env, objects).await;
            (consumer, eraser)
        }
    };
    let mut conn = connect(env).await;
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM erasures")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "the erasure is recorded only past the gate");
    gate.open().await;
    common::runs::wait_ok(eraser, env, "erase");
    common::runs::wait_ok(consumer, env, "consumer");
    let summary: Value = serde_json::from_str(env.read_out("consumer").trim()).unwrap();
    let report: Value = serde_json::from_str(&env.read_out("erase")).unwrap();
    assert_eq!(summary["batches"], 1, "{summary}");
    assert_eq!(report["finished"], true, "{report}");

    // Whichever went first, nothing of zoe is left: no row, no object, no thumbnail, no
    // leftover; yan's four are there, once; the erasure counts every object it removed.
    assert_eq!(
        rows_by_customer(env).await,
        BTreeMap::from([("yan".to_string(), 4)])
    );
    assert_bucket_matches_index(env).await;
    assert_eq!(env.counts().await, (4, 4));
    assert!(env.store().list("thumbnails/").await.unwrap().is_empty());
    let leftovers: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure_leftovers")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(leftovers, 0);
    let kept: Vec<(i64, i64, bool)> = sqlx::query_as(
        "SELECT rows_removed, objects_removed, finished_at IS NOT NULL FROM erasures",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!((kept[0].1, kept[0].2), (8, true), "{kept:?}");
    assert!(read_topic(env, &env.settings.kafka.dlq_topic).is_empty());
    let verify = env.run(&["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    (summary, report)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erasure_recorded_after_the_consumers_insert_finds_and_removes_its_rows() {
    let env = TestEnv::with("race-insert", &[("KAFKA_TOPIC_PARTITIONS", "1")]).await;
    let (summary, report) = erase_racing_a_consumer(&env, First::ConsumerInsert).await;
    // The consumer stored the whole batch; the erasure removed zoe's rows, hers from before too.
    assert_eq!(
        (summary["stored"].as_u64(), summary["erased"].as_u64()),
        (Some(10), Some(0)),
        "{summary}"
    );
    assert_eq!(report["erasure"]["rows_removed"], 8, "{report}");
    assert_eq!(report["leftovers_removed"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erasure_recorded_between_the_consumers_upload_and_insert_leaves_no_object_behind() {
    let env = TestEnv::with("race-upload", &[("KAFKA_TOPIC_PARTITIONS", "1")]).await;
    let (summary, report) = erase_racing_a_consumer(&env, First::Erasure).await;
    // The consumer uploaded zoe's six but its index transaction, after the erasure, left their
    // rows out and named the objects as leftovers; erase removed them once the group committed.
    assert_eq!(
        (summary["stored"].as_u64(), summary["erased"].as_u64()),
        (Some(4), Some(6)),
        "{summary}"
    );
    assert_eq!(report["erasure"]["rows_removed"], 2, "{report}");
    assert_eq!(report["leftovers_removed"], 6, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_not_stored_yet_is_erased_on_request_and_their_records_are_never_stored() {
    let env = TestEnv::new("erase-unseen").await;
    let small = ["--width", "16-32", "--height", "16-32"];
    // All of pia's records are on the topic, none consumed yet: the index has never held her.
    env.produce(20, &[&["--customer-id", "pia"][..], &small].concat());
    env.produce(5, &[&["--customer-id", "quinn"][..], &small].concat());
    refused(&env, &["erase", "--customer", "pia"], "--record-anyway");
    let dry = env.run(&["erase", "--customer", "pia", "--record-anyway", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains("no image of theirs yet"),
        "{}",
        stdout(&dry)
    );
    let mut conn = connect(&env).await;
    let count_erasures = async |conn: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM erasures")
            .fetch_one(conn)
            .await
            .unwrap()
    };
    assert_eq!(
        count_erasures(&mut conn).await,
        0,
        "refusals and dry runs record nothing"
    );

    let recorded = env.run(&["erase", "--customer", "pia", "--record-anyway"]);
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let said = stdout(&recorded);
    assert!(
        said.contains("no image of theirs was stored, 0 erased; recorded"),
        "{said}"
    );
    let kept: (String, i64, bool) =
        sqlx::query_as("SELECT customer_id, rows_removed, finished_at IS NOT NULL FROM erasures")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(kept, ("pia".to_string(), 0, true));

    // The consumer reaches her records after the erasure: none stored, none dead-lettered.
    let run = consume(&env, &[]);
    assert_eq!(
        (run["stored"].as_u64(), run["erased"].as_u64()),
        (Some(5), Some(20)),
        "{run}"
    );
    assert_eq!(
        rows_by_customer(&env).await,
        BTreeMap::from([("quinn".to_string(), 5)])
    );
    assert_bucket_matches_index(&env).await;
    assert!(read_topic(&env, &env.settings.kafka.dlq_topic).is_empty());
    assert_eq!(count_erasures(&mut conn).await, 1);
}
