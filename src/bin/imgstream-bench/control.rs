//! What the bench sets up, runs and tears down: each case's settings (its own topic, bucket,
//! group and database), its databases, the real consumer processes under test, and the disk
//! settling between measurements.

use crate::services;
use imgstream::config::Settings;
use imgstream::pipeline::RunSummary;
use imgstream::schema::{IMAGE_RECORD_SCHEMA, value_subject};
use imgstream::wiring;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Settings for one benchmark case: its own topic, bucket, group and database.
pub fn case_settings(
    base: &HashMap<String, String>,
    name: &str,
    database: &str,
    partitions: usize,
) -> (Settings, HashMap<String, String>) {
    let mut vars = base.clone();
    // The base connection string with its default applied, as `imgstream` reads it.
    let db = settings_or_exit(&vars).database_url.with_database(database);
    for (k, v) in [
        ("KAFKA_DATA_TOPIC", name.to_string()),
        ("KAFKA_GROUP_ID", name.to_string()),
        ("MINIO_BUCKET_NAME", name.to_string()),
        ("DATABASE_CONNECTION_STRING", db.expose().to_string()),
        ("KAFKA_TOPIC_PARTITIONS", partitions.to_string()),
        ("IMGSTREAM_ENV_FILE", "/nonexistent".to_string()),
    ] {
        vars.insert(k.into(), v);
    }
    // The size scenarios measure images of up to 2 MiB carried inline, as they were before the
    // claim check: their topics are sized for 10 MiB records unless the caller says otherwise.
    vars.entry("IMGSTREAM_INLINE_MAX_BYTES".into())
        .or_insert_with(|| (10 << 20).to_string());
    (settings_or_exit(&vars), vars)
}

/// Settings from a variable map, or one line naming the variable at fault and an exit.
fn settings_or_exit(vars: &HashMap<String, String>) -> Settings {
    Settings::from_vars(vars).unwrap_or_else(|e| {
        eprintln!("imgstream-bench: configuration: {e}");
        std::process::exit(2)
    })
}

/// Everything the pipeline needs for `settings`, as `imgstream setup` creates it.
pub async fn setup(settings: &Settings) {
    let problems: Vec<String> = imgstream::setup::run(settings, IMAGE_RECORD_SCHEMA, false)
        .await
        .into_iter()
        .filter(|i| i.state.is_problem())
        .map(|i| i.to_string())
        .collect();
    assert!(problems.is_empty(), "bench setup failed: {problems:?}");
}

/// The naive reference writes to its own bucket and database but reads the case's topic.
pub async fn setup_bucket_and_index(settings: &Settings) {
    let store = wiring::store(settings).unwrap();
    store.create_bucket().await.unwrap();
    let index = wiring::index(settings).await.unwrap();
    index.migrate().await.unwrap();
    index.close().await;
}

async fn maintenance_connection(settings: &Settings) -> sqlx::PgConnection {
    use sqlx::Connection;
    let url = settings.database_url.with_database("postgres");
    sqlx::PgConnection::connect(url.expose()).await.unwrap()
}

pub async fn drop_database(settings: &Settings) {
    let name = settings.database_url.database_name();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut maintenance_connection(settings).await)
        .await
        .unwrap();
}

pub async fn fresh_database(settings: &Settings) {
    drop_database(settings).await;
    let name = settings.database_url.database_name();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut maintenance_connection(settings).await)
        .await
        .unwrap();
}

/// Removes the case's topics, bucket and registered schema; its database stays for a look.
pub async fn cleanup(settings: &Settings) {
    if let Ok(admin) = wiring::topic_admin(settings) {
        let _ = admin
            .delete(&[&settings.kafka.data_topic, &settings.kafka.dlq_topic])
            .await;
    }
    let _ = wiring::store(settings).unwrap().destroy_bucket().await;
    if let Ok(registry) = wiring::registry(settings) {
        let _ = registry
            .delete_subject(&value_subject(&settings.kafka.data_topic))
            .await;
    }
}

/// Lets the disk settle before a measurement, so that it measures this step and not the last:
/// - waits (up to three minutes) until MinIO has removed the objects earlier steps deleted:
///   MinIO moves them to its drive's `.minio.sys/tmp/.trash` and removes them later, in the
///   background. The stack's MinIO, in `BENCH_MINIO_DATA` (default `.stack/minio/data`); a
///   store elsewhere is not waited for.
/// - writes what earlier steps left in the page cache to disk: gigabytes of write-back from the
///   step before slowed MinIO's writes through the first seconds of the next (2 MiB
///   produce-to-index latencies of 0.6-0.8 s for four seconds, 0.19 s after).
pub fn settle_disk() {
    let data = std::env::var("BENCH_MINIO_DATA").unwrap_or_else(|_| ".stack/minio/data".into());
    let trash = std::path::Path::new(&data).join(".minio.sys/tmp/.trash");
    let waiting = Instant::now();
    let deleted_remain =
        || std::fs::read_dir(&trash).is_ok_and(|mut entries| entries.next().is_some());
    while deleted_remain() && waiting.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_millis(500));
    }
    if waiting.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "  waited {:.0}s for MinIO to remove deleted objects{}",
            waiting.elapsed().as_secs_f64(),
            if deleted_remain() {
                " (some remain)"
            } else {
                ""
            }
        );
    }
    let _ = Command::new("sync").status();
}

/// The log filter of the consumers under test: `BENCH_CONSUMER_LOG` (e.g. `info` or
/// `debug,rdkafka=info`) to see what they did during a slow second; warnings only by default.
pub fn consumer_log() -> String {
    std::env::var("BENCH_CONSUMER_LOG").unwrap_or_else(|_| "warn".into())
}

/// Runs the real consumer binary until the topic is drained; its summary, plus the CPU that
/// Kafka, MinIO and PostgreSQL spent meanwhile.
pub fn run_consumers(
    vars: &HashMap<String, String>,
    processes: usize,
    extra: &[&str],
) -> (Vec<RunSummary>, services::CpuDelta) {
    let before = services::cpu();
    let children: Vec<_> = (0..processes)
        .map(|_| {
            Command::new(binary())
                .args(["consume", "--until-idle", "3", "--json"])
                .args(extra)
                .env_clear()
                .envs(vars)
                .env("IMGSTREAM_LOG", consumer_log())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn consumer")
        })
        .collect();
    let summaries = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "consumer failed");
            serde_json::from_slice(&out.stdout).expect("consume --json prints a run summary")
        })
        .collect();
    (summaries, services::cpu().since(&before))
}

/// The `imgstream` binary built beside this one.
pub fn binary() -> PathBuf {
    std::env::current_exe().unwrap().with_file_name("imgstream")
}

unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

/// Sends `sig` to a consumer the bench spawned.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child we spawned.
    unsafe { kill(child.id() as i32, sig) };
}

/// Steady write-back for a latency window: the kernel starts writing dirty pages back once they
/// pass 64 MiB, instead of 10% of memory (about 1.9 GB here). All the stack's services write to
/// one disk on this machine; with the default, MinIO's and Kafka's pages piled up to that
/// threshold and were then written back in bursts of up to 1.4 GB, and each burst stalled the
/// index's commits (PostgreSQL waits for its WAL to reach the disk): a 2 MiB window's p99 was
/// 1,160 ms with every slow second at a burst, and 201 ms with 64 MiB. Kafka's documentation
/// advises tuning this for brokers. The previous values come back when the guard is dropped;
/// `BENCH_WRITEBACK=default` leaves the kernel's alone. Needs root; without it, the default stays
/// and the report says so.
pub struct SteadyWriteback {
    previous: Option<(String, String)>,
}

const DIRTY_BACKGROUND_BYTES: &str = "/proc/sys/vm/dirty_background_bytes";
const DIRTY_BACKGROUND_RATIO: &str = "/proc/sys/vm/dirty_background_ratio";
const STEADY_DIRTY_BACKGROUND_BYTES: u64 = 64 << 20;

impl SteadyWriteback {
    pub fn apply() -> Self {
        if std::env::var("BENCH_WRITEBACK").is_ok_and(|v| v == "default") {
            return SteadyWriteback { previous: None };
        }
        let read = |path| std::fs::read_to_string(path).map(|v| v.trim().to_string());
        let (Ok(bytes), Ok(ratio)) = (read(DIRTY_BACKGROUND_BYTES), read(DIRTY_BACKGROUND_RATIO))
        else {
            return SteadyWriteback { previous: None };
        };
        match std::fs::write(
            DIRTY_BACKGROUND_BYTES,
            STEADY_DIRTY_BACKGROUND_BYTES.to_string(),
        ) {
            Ok(()) => SteadyWriteback {
                previous: Some((bytes, ratio)),
            },
            Err(e) => {
                eprintln!(
                    "  the kernel's write-back stays as it is ({e}; run as root for steady write-back)"
                );
                SteadyWriteback { previous: None }
            }
        }
    }

    /// What the window ran under, for the report.
    pub fn describe(&self) -> Value {
        match &self.previous {
            Some(_) => json!({"dirty_background_bytes": STEADY_DIRTY_BACKGROUND_BYTES}),
            None => json!("the kernel's own"),
        }
    }
}

impl Drop for SteadyWriteback {
    fn drop(&mut self) {
        if let Some((bytes, ratio)) = self.previous.take() {
            // Writing one of the pair zeroes the other: the one that was set is written back.
            let restored = if bytes != "0" {
                std::fs::write(DIRTY_BACKGROUND_BYTES, bytes)
            } else {
                std::fs::write(DIRTY_BACKGROUND_RATIO, ratio)
            };
            if let Err(e) = restored {
                eprintln!("  could not restore the kernel's write-back threshold: {e}");
            }
        }
    }
}

/// The kernel's dirty and under-write-back page cache, sampled every second while a latency
/// window runs: all services write to one disk here, and a write-back burst stalls the index's
/// commits (PostgreSQL waits for its WAL to reach the disk) behind gigabytes of others' pages.
/// Each second's CPU is sampled beside it, by service and for the whole machine (busy, waiting
/// on the disk, and stolen by the hypervisor), so a slow second that is not write-back can be
/// told apart: a service busy, the machine short of CPU, or this virtual machine not running.
pub struct WritebackSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Seconds>,
}

/// What [`WritebackSampler`] saw, one entry per second.
#[derive(Default)]
pub struct Seconds {
    /// `[second, dirty MiB, write-back MiB]`.
    pub writeback: Vec<[f64; 3]>,
    /// `[second, kafka, minio, postgresql, consumer, bench (the producer), machine busy, iowait,
    /// steal]`, in cores (CPU seconds per second).
    pub cpu: Vec<[f64; 9]>,
}

impl WritebackSampler {
    /// `consumer`: the pid of the consumer under test, whose CPU is sampled too.
    pub fn start(consumer: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let started = Instant::now();
                let mut seen = Seconds::default();
                let clients = || {
                    let of = |pid: u32| imgstream::pipeline::usage::cpu_secs(pid).unwrap_or(0.0);
                    [of(consumer), of(std::process::id())]
                };
                let mut services_before = crate::services::cpu();
                let mut clients_before = clients();
                let mut machine_before = machine_ticks();
                let mut before = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(1));
                    let second = started.elapsed().as_secs_f64().round();
                    if let Some((dirty, writeback)) = dirty_and_writeback_mib() {
                        seen.writeback.push([second, dirty, writeback]);
                    }
                    let services = crate::services::cpu();
                    let clients_now = clients();
                    let machine = machine_ticks();
                    let secs = before.elapsed().as_secs_f64();
                    before = Instant::now();
                    let spent = services.since(&services_before);
                    let round2 = |v: f64| (v / secs * 100.0).round() / 100.0;
                    if let (Some(now), Some(then)) = (machine, machine_before) {
                        // /proc/stat counts in USER_HZ, 100 per second.
                        let cores = |i: usize| round2((now[i] - then[i]) / 100.0);
                        seen.cpu.push([
                            second,
                            round2(spent.kafka),
                            round2(spent.minio),
                            round2(spent.postgres),
                            // A consumer that has exited reads as 0: its last second is not counted.
                            round2((clients_now[0] - clients_before[0]).max(0.0)),
                            round2(clients_now[1] - clients_before[1]),
                            cores(0),
                            cores(1),
                            cores(2),
                        ]);
                    }
                    services_before = services;
                    clients_before = clients_now;
                    machine_before = machine;
                }
                seen
            }
        });
        WritebackSampler { stop, thread }
    }

    pub fn finish(self) -> Seconds {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The machine's busy, iowait and steal ticks so far, from the first line of /proc/stat
/// (`cpu user nice system idle iowait irq softirq steal ...`).
fn machine_ticks() -> Option<[f64; 3]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    Some([busy, at(4), at(7)])
}

fn dirty_and_writeback_mib() -> Option<(f64, f64)> {
    let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
    let pages = |name: &str| {
        vmstat
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    // Pages of 4 KiB.
    Some((
        (pages("nr_dirty")? * 4.0 / 1024.0).round(),
        (pages("nr_writeback")? * 4.0 / 1024.0).round(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_settings_apply_the_defaults_when_the_database_is_not_configured() {
        let (settings, vars) = case_settings(&HashMap::new(), "bench-x", "imgstream_bench", 6);
        assert_eq!(settings.database_url.database_name(), "imgstream_bench");
        assert_eq!(settings.kafka.data_topic, "bench-x");
        assert!(vars["DATABASE_CONNECTION_STRING"].ends_with("/imgstream_bench"));
    }
}
