//! Identities of a test's own in each service (a PostgreSQL role, a MinIO user with a policy, a
//! Kafka SCRAM user with ACLs), created by an administrator and removed when the test ends.

use super::TestEnv;
use sqlx::Connection;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use uuid::Uuid;

/// A login role for one test, dropped when the test ends (after the test's database).
pub struct TestRole {
    pub name: String,
    pub password: String,
    admin_url: String,
}

impl TestRole {
    pub async fn create(label: &str) -> TestRole {
        let vars: HashMap<String, String> = std::env::vars().collect();
        let base = vars
            .get("DATABASE_CONNECTION_STRING")
            .cloned()
            .unwrap_or_else(|| {
                "postgres://imgstream:imgstream@127.0.0.1:5432/imgstream_test".into()
            });
        super::check_test_database(&base).unwrap();
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

    /// The test database's URL (with its TLS parameters), logging in as this role.
    pub fn url(&self, env: &TestEnv) -> String {
        let mut url = url::Url::parse(env.settings.database_url.expose()).unwrap();
        url.set_username(&self.name).unwrap();
        url.set_password(Some(&self.password)).unwrap();
        url.to_string()
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

/// MinIO's `mc`, configured in a directory of the test's own (scripts/test-deps.sh builds it).
pub struct Mc {
    binary: PathBuf,
    pub config: PathBuf,
}

impl Mc {
    pub fn new(env: &TestEnv) -> Mc {
        let binary = super::cached_binary("mc");
        let config = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("mc-{}", env.name));
        let mc = Mc { binary, config };
        let store = &env.settings.store;
        // mc trusts the CAs in its configuration directory.
        if let Some(ca) = &store.ca_file {
            let cas = mc.config.join("certs/CAs");
            std::fs::create_dir_all(&cas).unwrap();
            std::fs::copy(ca, cas.join("ca.crt")).unwrap();
        }
        mc.ok(&[
            "alias",
            "set",
            "admin",
            &store.endpoint,
            &store.access_key,
            &store.secret_key,
        ]);
        mc
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.binary)
            .arg("--config-dir")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run mc")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "mc {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Mc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config);
    }
}

/// An S3 user of the test's own with `policy` attached; removed when the test ends.
pub struct S3User<'a> {
    mc: &'a Mc,
    pub access_key: String,
    pub secret_key: String,
    policy: String,
}

impl<'a> S3User<'a> {
    pub fn create(mc: &'a Mc, label: &str, policy_json: &str) -> S3User<'a> {
        let id = &Uuid::new_v4().simple().to_string()[..10];
        let user = S3User {
            mc,
            access_key: format!("t-{label}-{id}"),
            secret_key: format!("secret-{}", Uuid::new_v4().simple()),
            policy: format!("t-{label}-{id}"),
        };
        let file = mc.config.join(format!("{}.json", user.policy));
        std::fs::create_dir_all(&mc.config).unwrap();
        std::fs::write(&file, policy_json).unwrap();
        mc.ok(&[
            "admin",
            "user",
            "add",
            "admin",
            &user.access_key,
            &user.secret_key,
        ]);
        mc.ok(&[
            "admin",
            "policy",
            "create",
            "admin",
            &user.policy,
            file.to_str().unwrap(),
        ]);
        mc.ok(&[
            "admin",
            "policy",
            "attach",
            "admin",
            &user.policy,
            "--user",
            &user.access_key,
        ]);
        user
    }
}

impl Drop for S3User<'_> {
    fn drop(&mut self) {
        let _ = self
            .mc
            .run(&["admin", "user", "remove", "admin", &self.access_key]);
        let _ = self
            .mc
            .run(&["admin", "policy", "remove", "admin", &self.policy]);
    }
}

/// A policy of deploy/policies/, as README gives it, for `bucket`.
pub fn policy(file: &str, bucket: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/deploy/policies/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("BUCKET", bucket)
}

/// A Kafka SCRAM-SHA-512 user of the test's own, with ACLs; created and removed through the
/// stack's plaintext listener, whose principal is a super user (scripts/stack/kafka.sh).
pub struct KafkaUser {
    pub name: String,
    pub password: String,
    resources: Vec<(&'static str, String)>,
}

impl KafkaUser {
    pub fn create(label: &str) -> KafkaUser {
        let user = KafkaUser {
            name: format!("t-{label}-{}", &Uuid::new_v4().simple().to_string()[..10]),
            password: format!("pw-{}", Uuid::new_v4().simple()),
            resources: Vec::new(),
        };
        kafka_cli(&[
            "kafka.admin.ConfigCommand",
            "--alter",
            "--entity-type",
            "users",
            "--entity-name",
            &user.name,
            "--add-config",
            &format!("SCRAM-SHA-512=[password={}]", user.password),
        ]);
        user
    }

    /// Allows `operations` on a resource (`--topic NAME` or `--group NAME`), as README's commands do.
    pub fn allow(&mut self, operations: &[&str], kind: &'static str, name: &str) -> &mut Self {
        let principal = format!("User:{}", self.name);
        let mut args = vec![
            "org.apache.kafka.tools.AclCommand",
            "--add",
            "--allow-principal",
            &principal,
        ];
        for op in operations {
            args.extend_from_slice(&["--operation", op]);
        }
        args.extend_from_slice(&[kind, name]);
        kafka_cli(&args);
        self.resources.push((kind, name.to_string()));
        self
    }
}

impl Drop for KafkaUser {
    fn drop(&mut self) {
        // The resources are the test's own: every ACL on them goes.
        for (kind, name) in &self.resources {
            let out = try_kafka_cli(&[
                "org.apache.kafka.tools.AclCommand",
                "--remove",
                "--force",
                kind,
                name,
            ]);
            if !out.status.success() {
                eprintln!(
                    "removing the ACLs on {kind} {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = try_kafka_cli(&[
            "kafka.admin.ConfigCommand",
            "--alter",
            "--entity-type",
            "users",
            "--entity-name",
            &self.name,
            "--delete-config",
            "SCRAM-SHA-512",
        ]);
    }
}

fn try_kafka_cli(args: &[&str]) -> std::process::Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/stack/kafka.sh");
    let (class, rest) = args.split_first().unwrap();
    Command::new(script)
        .args(["cli", class, "--bootstrap-server", "127.0.0.1:9092"])
        .args(rest)
        .output()
        .expect("run scripts/stack/kafka.sh cli")
}

/// Runs a Kafka CLI class (first of `args`) against the stack's plaintext listener, as an
/// operator would with the `kafka-*.sh` scripts; panics with its output when it fails.
pub fn kafka_cli(args: &[&str]) {
    let out = try_kafka_cli(args);
    assert!(
        out.status.success(),
        "kafka {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
