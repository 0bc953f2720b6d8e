//! Least privilege in PostgreSQL: `setup` runs as the owner of the index and gives the consumer's
//! role SELECT and INSERT on it, and a reader's role SELECT, and nothing more. The consumer does
//! its whole job as its role, and PostgreSQL itself refuses that role anything else.

mod common;

use common::TestEnv;
use common::identities::{Mc, S3User, TestRole, policy};
use imgstream::domain::sha256_hex;
use sqlx::Connection;

/// What PostgreSQL answers `sql` run as `url`: Ok, or its error message.
async fn run_as(url: &str, sql: &str) -> Result<(), String> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(sql)
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consumer_stores_everything_as_its_role_which_can_do_nothing_else() {
    // Declared first, so it is dropped last: the role outlives the database that refers to it.
    let app = TestRole::create("app").await;
    let reader = TestRole::create("reader").await;
    let env = TestEnv::with(
        "least-privilege",
        &[
            ("DATABASE_APP_ROLE", &app.name),
            ("DATABASE_READER_ROLE", &reader.name),
        ],
    )
    .await;
    env.produce(20, &[]);
    let out = env
        .command(&["consume", "--until-idle", "3", "--json"])
        .env("DATABASE_CONNECTION_STRING", app.url(&env))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(env.counts().await, (20, 20));
    let verify = env
        .command(&["verify"])
        .env("DATABASE_CONNECTION_STRING", reader.url(&env))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", common::stdout(&verify));

    // PostgreSQL itself refuses the app role anything beyond reading and inserting...
    let app_url = app.url(&env);
    let refused = [
        (
            "UPDATE images SET customer_id = 'x'",
            "permission denied for table images",
        ),
        ("DELETE FROM images", "permission denied for table images"),
        ("TRUNCATE images", "permission denied for table images"),
        ("DROP TABLE images", "must be owner of table images"),
        (
            "ALTER TABLE images ADD COLUMN x int",
            "must be owner of table images",
        ),
        (
            "CREATE TABLE stolen (x int)",
            "permission denied for schema public",
        ),
        (
            "DELETE FROM _sqlx_migrations",
            "permission denied for table _sqlx_migrations",
        ),
    ];
    for (sql, expected) in refused {
        let answer = run_as(&app_url, sql).await;
        assert!(
            answer.as_ref().is_err_and(|e| e.contains(expected)),
            "app role ran {sql:?}: {answer:?}"
        );
    }
    run_as(&app_url, "SELECT count(*) FROM images")
        .await
        .unwrap();
    // ... and the reader anything beyond reading.
    let reader_url = reader.url(&env);
    let answer = run_as(
        &reader_url,
        "INSERT INTO images SELECT * FROM images LIMIT 0",
    )
    .await;
    assert!(
        answer
            .as_ref()
            .is_err_and(|e| e.contains("permission denied for table images")),
        "reader inserted: {answer:?}"
    );
    run_as(&reader_url, "SELECT count(*) FROM images")
        .await
        .unwrap();

    let check = env.run(&["setup", "--check"]);
    assert!(check.status.success(), "{}", common::stdout(&check));
    let listing = common::stdout(&check);
    assert!(
        listing.contains(&format!(
            "role {} may only read and insert into the index",
            app.name
        )),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("role {} may only read the index", reader.name)),
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_takes_back_what_the_app_role_should_not_hold_and_check_reports_it() {
    let app = TestRole::create("app").await;
    let env = TestEnv::with("excess-grants", &[("DATABASE_APP_ROLE", &app.name)]).await;
    let owner_url = env.settings.database_url.expose().to_string();
    run_as(
        &owner_url,
        &format!("GRANT DELETE, UPDATE ON images TO {}", app.name),
    )
    .await
    .unwrap();
    // The erasure records are held to the role's access too: the consumer may not rewrite one.
    run_as(
        &owner_url,
        &format!("GRANT UPDATE ON erasures TO {}", app.name),
    )
    .await
    .unwrap();

    let check = env.run(&["setup", "--check"]);
    assert!(!check.status.success(), "check passed with excess grants");
    let listing = common::stdout(&check);
    assert!(
        listing.contains("also holds UPDATE on images, DELETE on images, UPDATE on erasures"),
        "{listing}"
    );

    let fix = env.run(&["setup"]);
    assert!(fix.status.success(), "{}", common::stdout(&fix));
    assert!(common::stdout(&fix).contains("granted and revoked"));
    let answer = run_as(&app.url(&env), "DELETE FROM images").await;
    assert!(answer.is_err(), "DELETE still allowed after setup");
    let answer = run_as(&app.url(&env), "UPDATE erasures SET requested_by = 'x'").await;
    assert!(
        answer
            .as_ref()
            .is_err_and(|e| e.contains("permission denied for table erasures")),
        "UPDATE on erasures still allowed after setup: {answer:?}"
    );
    let check = env.run(&["setup", "--check"]);
    assert!(check.status.success(), "{}", common::stdout(&check));
}

/// What PostgreSQL answers each of `statements` run as `url`: whether it was allowed.
async fn allowed(url: &str, statements: &[&str]) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for sql in statements {
        let answer = run_as(url, sql).await;
        if let Err(e) = &answer {
            assert!(e.contains("permission denied"), "{sql}: {e}");
        }
        out.push((sql.to_string(), answer.is_ok()));
    }
    out
}

/// What only an eraser may do: delete rows, record and update an erasure, clear leftovers.
const ERASER_WRITES: [&str; 4] = [
    "DELETE FROM images WHERE false",
    "INSERT INTO erasures (kind, customer_id, cutoff, requested_by)
     VALUES ('customer', 'nobody', now(), 'least-privilege test')",
    "UPDATE erasures SET rows_removed = rows_removed WHERE false",
    "DELETE FROM erasure_leftovers WHERE false",
];

#[tokio::test(flavor = "multi_thread")]
async fn check_audits_the_erasure_tables_so_only_the_eraser_may_delete_or_record_an_erasure() {
    let app = TestRole::create("app").await;
    let eraser = TestRole::create("eraser").await;
    let env = TestEnv::with(
        "erasure-grants",
        &[
            ("DATABASE_APP_ROLE", &app.name),
            ("DATABASE_ERASER_ROLE", &eraser.name),
        ],
    )
    .await;
    let check = env.run(&["setup", "--check"]);
    let listing = common::stdout(&check);
    assert!(check.status.success(), "{listing}");
    assert!(
        listing.contains(&format!(
            "ok          postgresql role {} may only read and delete from the index",
            eraser.name
        )),
        "{listing}"
    );
    // As setup left them, PostgreSQL lets the eraser do each and the consumer none.
    let both = |may: bool| ERASER_WRITES.iter().map(move |s| (s.to_string(), may));
    assert_eq!(
        allowed(&eraser.url(&env), &ERASER_WRITES).await,
        both(true).collect::<Vec<_>>()
    );
    assert_eq!(
        allowed(&app.url(&env), &ERASER_WRITES).await,
        both(false).collect::<Vec<_>>()
    );

    // Grants drift: the consumer gets what only the eraser should hold, the eraser loses some.
    let owner_url = env.settings.database_url.expose().to_string();
    for grant in [
        format!("GRANT INSERT, UPDATE ON erasures TO {}", app.name),
        format!("GRANT DELETE ON erasure_leftovers TO {}", app.name),
        format!("REVOKE DELETE ON images FROM {}", eraser.name),
        format!("REVOKE UPDATE ON erasures FROM {}", eraser.name),
    ] {
        run_as(&owner_url, &grant).await.unwrap();
    }
    let check = env.run(&["setup", "--check"]);
    let listing = common::stdout(&check);
    assert!(
        !check.status.success(),
        "check passed with drifted grants: {listing}"
    );
    assert!(
        listing.contains(&format!(
            "role {} may only read and insert into the index: also holds INSERT on erasures, UPDATE on erasures, DELETE on erasure_leftovers",
            app.name
        )),
        "{listing}"
    );
    assert!(
        listing.contains(&format!(
            "role {} may only read and delete from the index: lacks DELETE on images, UPDATE on erasures",
            eraser.name
        )),
        "{listing}"
    );

    // setup puts both back, and PostgreSQL agrees again.
    let fix = env.run(&["setup"]);
    assert!(fix.status.success(), "{}", common::stdout(&fix));
    let check = env.run(&["setup", "--check"]);
    assert!(check.status.success(), "{}", common::stdout(&check));
    assert_eq!(
        allowed(&app.url(&env), &ERASER_WRITES).await,
        both(false).collect::<Vec<_>>()
    );
    assert_eq!(
        allowed(&eraser.url(&env), &ERASER_WRITES).await,
        both(true).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_setup_cannot_narrow_is_a_failure_that_says_why() {
    // A role that does not exist: setup says how to create it.
    let env = TestEnv::unprepared("missing-role", &[("DATABASE_APP_ROLE", "t_no_such_role")]).await;
    let out = env.run(&["setup"]);
    assert!(!out.status.success());
    let listing = common::stdout(&out);
    assert!(
        listing.contains("role t_no_such_role does not exist; create it (CREATE ROLE t_no_such_role LOGIN PASSWORD"),
        "{listing}"
    );

    // The owner itself (here also a superuser) as the app role: no grant can narrow it, and setup
    // changes nothing rather than revoke the owner's own rights.
    let owner = env.settings.database_url.clone();
    let owner_name = owner
        .expose()
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split([':', '@']).next())
        .unwrap()
        .to_string();
    let out = env
        .command(&["setup"])
        .env("DATABASE_APP_ROLE", &owner_name)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let listing = common::stdout(&out);
    assert!(
        listing.contains(&format!("role {owner_name} has ownership of images and superuser, which no grant can narrow; give the application a role of its own")),
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consumer_stores_with_an_s3_key_that_can_neither_delete_nor_write_elsewhere() {
    let env = TestEnv::new("s3-least").await;
    let mc = Mc::new(&env);
    let bucket = env.settings.store.bucket.clone();
    let user = S3User::create(&mc, "app", &policy("s3-consumer.json", &bucket));
    env.produce(20, &[]);
    let out = env
        .command(&["consume", "--until-idle", "3"])
        .env("MINIO_ACCESS_KEY", &user.access_key)
        .env("MINIO_SECRET_KEY", &user.secret_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(env.counts().await, (20, 20));

    // MinIO itself refuses the key anything else.
    let mut settings = env.settings.clone();
    settings.store.access_key = user.access_key.clone();
    settings.store.secret_key = user.secret_key.clone();
    let app = imgstream::wiring::store(&settings).unwrap();
    let stored = app.list("images/").await.unwrap();
    assert_eq!(stored.len(), 20, "the key may list and read what it stored");
    let key = &stored[0].key;
    let bytes = app.get(key).await.unwrap();
    let denied = app.delete(key).await;
    assert!(
        matches!(denied, Err(imgstream::store::StoreError::Denied { .. })),
        "delete: {denied:?}"
    );
    let sha = sha256_hex(&bytes);
    let elsewhere = app
        .put_image("elsewhere/x", bytes.clone(), "image/png", &sha)
        .await;
    assert!(
        matches!(elsewhere, Err(imgstream::store::StoreError::Denied { .. })),
        "write outside images/: {elsewhere:?}"
    );
    // The create-only write of the same bytes is what a replay does: still answered as stored.
    assert_eq!(
        app.put_image(key, bytes.clone(), "image/png", &sha)
            .await
            .unwrap(),
        imgstream::store::PutOutcome::AlreadyStored
    );
    assert_eq!(
        env.store().get(key).await.unwrap(),
        bytes,
        "the object is unchanged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_and_repair_each_work_with_their_own_key_and_only_repair_may_delete() {
    let env = TestEnv::new("s3-roles").await;
    let mc = Mc::new(&env);
    let bucket = env.settings.store.bucket.clone();
    let consumer = S3User::create(&mc, "app", &policy("s3-consumer.json", &bucket));
    let server = S3User::create(&mc, "serve", &policy("s3-serve.json", &bucket));
    let repair = S3User::create(&mc, "repair", &policy("s3-repair.json", &bucket));
    env.produce(5, &[]);
    let out = env.run(&["consume", "--until-idle", "3"]);
    assert!(out.status.success(), "{}", common::stderr(&out));

    // serve, with its key: a thumbnail is made and kept, and a presigned URL works.
    let mut settings = env.settings.clone();
    settings.store.access_key = server.access_key.clone();
    settings.store.secret_key = server.secret_key.clone();
    let opts = imgstream::serve::ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        thumbnail_makers: 1,
        ..imgstream::serve::ServeOptions::default()
    };
    let serving = imgstream::serve::start(&settings, opts).await.unwrap();
    let base = format!("http://{}", serving.addr);
    let page: serde_json::Value = reqwest::get(format!("{base}/api/images"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = page["images"][0]["image_id"].as_str().unwrap().to_string();
    let thumbnail = reqwest::get(format!("{base}/thumbnails/{id}"))
        .await
        .unwrap();
    assert_eq!(thumbnail.status().as_u16(), 200);
    let kept = env
        .store()
        .get(&imgstream::domain::thumbnail_key(&id.parse().unwrap()))
        .await;
    assert!(
        kept.is_ok(),
        "thumbnail not kept with the serve key: {kept:?}"
    );
    let signed: serde_json::Value = reqwest::get(format!("{base}/api/images/{id}/url"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fetched = reqwest::get(signed["url"].as_str().unwrap()).await.unwrap();
    assert_eq!(
        fetched.status().as_u16(),
        200,
        "a URL signed with the serve key"
    );

    // An orphan object: `verify --repair` with the consumer's key cannot remove it, with the
    // repair key it does.
    let orphan = "images/00/00000000-0000-4000-8000-000000000000";
    let bytes = bytes::Bytes::from_static(b"not indexed");
    env.store()
        .put_image(orphan, bytes.clone(), "image/png", &sha256_hex(&bytes))
        .await
        .unwrap();
    let repair_with = |user: &S3User| {
        env.command(&["verify", "--repair", "--grace", "0s", "--json"])
            .env("MINIO_ACCESS_KEY", &user.access_key)
            .env("MINIO_SECRET_KEY", &user.secret_key)
            .output()
            .unwrap()
    };
    let refused = repair_with(&consumer);
    assert!(
        !refused.status.success(),
        "the consumer's key removed an object"
    );
    assert!(
        common::stderr(&refused).contains("object store denied access to bucket"),
        "{}{}",
        common::stderr(&refused),
        common::stdout(&refused)
    );
    assert!(
        env.store().get(orphan).await.is_ok(),
        "the orphan is still there"
    );
    let repaired = repair_with(&repair);
    assert!(
        repaired.status.success(),
        "{}{}",
        common::stdout(&repaired),
        common::stderr(&repaired)
    );
    assert!(
        env.store().get(orphan).await.is_err(),
        "the repair key removed the orphan"
    );
}
