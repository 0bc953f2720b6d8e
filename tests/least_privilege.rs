//! Least privilege in PostgreSQL: `setup` runs as the owner of the index and gives the consumer's
//! role SELECT and INSERT on it, and a reader's role SELECT, and nothing more. The consumer does
//! its whole job as its role, and PostgreSQL itself refuses that role anything else.

mod common;

use common::TestEnv;
use sqlx::Connection;
use std::collections::HashMap;
use uuid::Uuid;

/// A login role for one test, dropped when the test ends (after the test's database).
struct TestRole {
    name: String,
    password: String,
    admin_url: String,
}

impl TestRole {
    async fn create(label: &str) -> TestRole {
        let vars: HashMap<String, String> = std::env::vars().collect();
        let base = vars
            .get("DATABASE_CONNECTION_STRING")
            .cloned()
            .unwrap_or_else(|| {
                "postgres://imgstream:imgstream@127.0.0.1:5432/imgstream_test".into()
            });
        common::check_test_database(&base).unwrap();
        let admin_url = imgstream::config::parse_database_url(&base)
            .unwrap()
            .with_database("postgres")
            .expose()
            .to_string();
        let role = TestRole {
            name: format!("t_{label}_{}", &Uuid::new_v4().simple().to_string()[..10]),
            password: format!("pw-{}", Uuid::new_v4().simple()),
            admin_url,
        };
        let mut admin = sqlx::PgConnection::connect(&role.admin_url).await.unwrap();
        sqlx::query(&format!(
            "CREATE ROLE {} LOGIN PASSWORD '{}'",
            role.name, role.password
        ))
        .execute(&mut admin)
        .await
        .unwrap();
        role
    }

    /// The test database's URL, logging in as this role.
    fn url(&self, env: &TestEnv) -> String {
        let url = &env.settings.database_url;
        format!(
            "postgres://{}:{}@{}/{}",
            self.name,
            self.password,
            url.host_port(),
            url.database_name()
        )
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {name}"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

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

    let check = env.run(&["setup", "--check"]);
    assert!(!check.status.success(), "check passed with excess grants");
    let listing = common::stdout(&check);
    assert!(
        listing.contains("also holds UPDATE on images, DELETE on images"),
        "{listing}"
    );

    let fix = env.run(&["setup"]);
    assert!(fix.status.success(), "{}", common::stdout(&fix));
    assert!(common::stdout(&fix).contains("granted and revoked"));
    let answer = run_as(&app.url(&env), "DELETE FROM images").await;
    assert!(answer.is_err(), "DELETE still allowed after setup");
    let check = env.run(&["setup", "--check"]);
    assert!(check.status.success(), "{}", common::stdout(&check));
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
