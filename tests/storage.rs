//! Storage faults on a MinIO of the test's own (the stack's binary, its drives on tmpfs mounts
//! the test makes): a four-drive erasure set losing a drive mid-run, and a drive running out of
//! space (MinIO answers 507) until space is freed. Each run ends with exact counts.
//!
//! Mounting tmpfs needs root (CAP_SYS_ADMIN), as `make test` runs here and in CI.

mod common;

use common::runs::{CONSUME_SLOWLY, assert_exactly_once, rows, stop_once_stored, wait_for_rows};
use common::{Spawned, TestEnv};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A tmpfs mounted at `path`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size_mib: u32) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs at {} failed (these tests need root): {}",
            path.display(),
            common::stderr(&out)
        );
        Tmpfs(path.to_path_buf())
    }

    /// The drive disappears: unmounted, and a plain file left where its mount point was. MinIO
    /// recreates a missing drive directory; on the root filesystem it refuses it ("root-mount"),
    /// but elsewhere (CI's work directory is another filesystem) it formats and heals it as a
    /// replacement drive, and the run would never have gone on from three drives. A file cannot
    /// become a drive, wherever it lies.
    /// MinIO may recreate the directory between its removal and the file's creation (seen with
    /// the drives under a tmpfs), so it tries again until the file is there.
    fn pull(&self) {
        unmount(&self.0);
        for _ in 0..100 {
            let _ = std::fs::remove_dir_all(&self.0);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.0);
            if let Ok(mut file) = file {
                std::io::Write::write_all(&mut file, b"pulled")
                    .expect("write the pulled drive's file");
                return;
            }
        }
        panic!("MinIO kept recreating {} as a directory", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

/// Lazily, so a MinIO still holding files there does not stop it; quietly, as a pulled drive is
/// already gone.
fn unmount(path: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(path)
        .stderr(Stdio::null())
        .status();
}

/// A MinIO server on `drives`, on free ports, killed when dropped.
struct OwnMinio {
    endpoint: String,
    _server: Spawned,
}

impl OwnMinio {
    async fn start(drives: &[PathBuf], log: &Path) -> OwnMinio {
        let port = common::free_port();
        let file = std::fs::File::create(log).unwrap();
        let server = Command::new(common::cached_binary("minio"))
            .args(["server", "--address", &format!("127.0.0.1:{port}")])
            .args([
                "--console-address",
                &format!("127.0.0.1:{}", common::free_port()),
            ])
            .args(drives)
            .env("MINIO_ROOT_USER", "minioadmin")
            .env("MINIO_ROOT_PASSWORD", "minioadmin")
            .env("MINIO_UPDATE", "off")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start minio");
        let minio = OwnMinio {
            endpoint: format!("127.0.0.1:{port}"),
            _server: Spawned::from(server),
        };
        // Writable: the cluster health check answers 200 only with write quorum.
        let url = format!("http://{}/minio/health/cluster", minio.endpoint);
        let up = common::eventually(Duration::from_secs(60), || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(
            up,
            "MinIO on {drives:?} did not come up:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        minio
    }
}

fn scratch(label: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{label}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drive_pulled_from_a_four_drive_erasure_set_mid_run_loses_and_doubles_nothing() {
    let dir = scratch("erasure");
    let drives: Vec<Tmpfs> = (1..=4)
        .map(|i| Tmpfs::mount(&dir.join(format!("drive{i}")), 256))
        .collect();
    let paths: Vec<PathBuf> = drives.iter().map(|d| d.0.clone()).collect();
    let minio = OwnMinio::start(&paths, &dir.join("minio.log")).await;
    let env = TestEnv::with("erasure", &[("MINIO_CONNECTION_STRING", &minio.endpoint)]).await;
    env.produce(800, &[]);
    let consumer = env.spawn(&CONSUME_SLOWLY, "consumer");
    wait_for_rows(&env, 100).await;
    drives[2].pull();
    let at_pull = rows(&env).await;
    eprintln!("drive 3 pulled at {at_pull} rows");
    stop_once_stored(&env, consumer, 800, "consumer").await;
    assert!(at_pull < 800, "the drive went after the end of the run");
    // Every object written before and after the loss reads back with its checksum (`verify
    // --full`), from three drives of four.
    assert_exactly_once(&env, 800).await;
    // The pulled drive is out of the set (MinIO says "offline"); the other three carried the run.
    let states = drive_states(&minio, &dir);
    assert_eq!(
        states.iter().filter(|s| *s == "ok").count(),
        3,
        "the run did not go on from three drives: {states:?}"
    );
    assert_ne!(states[2], "ok", "{states:?}");
}

/// Each drive's state as MinIO reports it (`mc admin info`), in the order the drives were given.
fn drive_states(minio: &OwnMinio, dir: &Path) -> Vec<String> {
    let mc = dir.join("mc");
    let mc_binary = common::cached_binary("mc");
    let alias = Command::new(&mc_binary)
        .arg("--config-dir")
        .arg(&mc)
        .args(["alias", "set", "own"])
        .arg(format!("http://{}", minio.endpoint))
        .args(["minioadmin", "minioadmin"])
        .output()
        .unwrap();
    assert!(alias.status.success(), "{}", common::stderr(&alias));
    let info = Command::new(&mc_binary)
        .arg("--config-dir")
        .arg(&mc)
        .args(["admin", "info", "own", "--json"])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("mc admin info");
    let mut drives: Vec<(String, String)> = info["info"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["drives"].as_array().cloned().unwrap_or_default())
        .map(|d| {
            (
                d["path"].as_str().unwrap_or_default().to_string(),
                d["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    drives.sort();
    drives.into_iter().map(|(_, state)| state).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_drive_is_an_outage_logged_with_minios_message_that_heals_when_space_returns() {
    let dir = scratch("full");
    let drive = Tmpfs::mount(&dir.join("drive"), 128);
    let minio = OwnMinio::start(std::slice::from_ref(&drive.0), &dir.join("minio.log")).await;
    let env = TestEnv::with("full", &[("MINIO_CONNECTION_STRING", &minio.endpoint)]).await;
    env.produce(600, &[]);
    let consumer = env.spawn(&CONSUME_SLOWLY, "consumer");
    wait_for_rows(&env, 50).await;
    // Fill what is left of the drive.
    let ballast = drive.0.join("ballast");
    let filled = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=200"])
        .arg(format!("of={}", ballast.display()))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!filled.success(), "dd should have run out of space");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rows(&env).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rows(&env).await;
    std::fs::remove_file(&ballast).unwrap();
    assert_eq!(during, after, "images were stored on a full drive");
    assert!(after < 600, "the drive filled after the end of the run");

    stop_once_stored(&env, consumer, 600, "consumer").await;
    let log = env.read_log("consumer");
    assert_exactly_once(&env, 600).await;
    assert!(
        log.contains("outage started") && log.contains("HTTP 507"),
        "the full drive was not logged as an outage with MinIO's answer:\n{log}"
    );
    assert!(log.contains("outage ended"), "{log}");
}
