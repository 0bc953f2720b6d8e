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
///   background. The stack's MinIO, in `BENCH_MINIO_DATA` (default `minio/data` in the stack's
///   directory, `IMGSTREAM_STACK_DIR` or `.stack`); a store elsewhere is not waited for.
/// - waits, within the same three minutes, until the stack's Kafka has removed the topics
///   earlier steps deleted: it renames a partition's directory to `…-delete` and removes it
///   `file.delete.delay.ms` (60 s) later. A 2 MiB case started within that minute drained
///   while the broker unlinked the last run's gigabytes (13.5% of its samples in `unlink`).
/// - writes what earlier steps left in the page cache to disk: gigabytes of write-back from the
///   step before slowed MinIO's writes through the first seconds of the next (2 MiB
///   produce-to-index latencies of 0.6-0.8 s for four seconds, 0.19 s after).
pub fn settle_disk() {
    let stack = crate::services::stack_dir();
    let data = std::env::var("BENCH_MINIO_DATA")
        .map_or_else(|_| stack.join("minio/data"), std::path::PathBuf::from);
    let trash = data.join(".minio.sys/tmp/.trash");
    let minio_deletions =
        || std::fs::read_dir(&trash).is_ok_and(|mut entries| entries.next().is_some());
    let kafka_data = stack.join("kafka");
    let kafka_deletions = || topic_deletions_pending(&kafka_data);
    let waiting = Instant::now();
    while (minio_deletions() || kafka_deletions()) && waiting.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_millis(500));
    }
    if waiting.elapsed() > Duration::from_secs(1) {
        let remain = match (minio_deletions(), kafka_deletions()) {
            (false, false) => "",
            (true, false) => " (some of MinIO's remain)",
            (false, true) => " (some of Kafka's remain)",
            (true, true) => " (some of each remain)",
        };
        eprintln!(
            "  waited {:.0}s for MinIO and Kafka to remove deleted objects and topics{remain}",
            waiting.elapsed().as_secs_f64(),
        );
    }
    let _ = Command::new("sync").status();
}

/// Whether any running Kafka node under `kafka_dir` holds a partition directory of a deleted
/// topic, not yet removed. A stopped cluster's (the tests' three-node one) would wait forever.
fn topic_deletions_pending(kafka_dir: &std::path::Path) -> bool {
    crate::services::running_kafka_nodes(kafka_dir)
        .into_iter()
        .filter_map(|(node, _)| std::fs::read_dir(node.join("data")).ok())
        .flat_map(|partitions| partitions.flatten())
        .any(|partition| partition.file_name().to_string_lossy().ends_with("-delete"))
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

/// Keeps the memory this virtual machine frees backed by the host while the sizes are measured.
///
/// The guest here reports free memory to the host (virtio-balloon free page reporting, in blocks
/// of `page_reporting_order`), which takes it back; the next write that puts page cache there
/// faults every page in again from the host. Measured with `dd` of 1 GB into the page cache: 2.5–2.9
/// s of kernel CPU into reported memory, 0.18–0.26 s into memory freed moments before. Kafka's
/// and MinIO's writes pay that in their own CPU, so a window that starts after a cleanup freed
/// gigabytes ran its first seconds on twice the cores. The guard turns reporting off (an order
/// above the largest block), touches the free memory once so it is all backed, and puts the
/// previous order back when dropped, when the host may take the memory again.
/// `BENCH_PAGE_REPORTING=default` leaves it alone; without root or on a kernel without it,
/// nothing changes and the report says so.
pub struct KeptMemory {
    previous_order: Option<String>,
    backed_gib: f64,
    backing_secs: f64,
}

const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
const REPORTED_KIB: &str = "/sys/module/page_reporting/parameters/reported_kib";
/// Above every block order (MAX_PAGE_ORDER is 10): no free block qualifies to be reported.
const NO_REPORTING_ORDER: &str = "11";

impl KeptMemory {
    pub fn apply() -> Self {
        let unchanged = KeptMemory {
            previous_order: None,
            backed_gib: 0.0,
            backing_secs: 0.0,
        };
        if std::env::var("BENCH_PAGE_REPORTING").is_ok_and(|v| v == "default") {
            return unchanged;
        }
        let Ok(previous) =
            std::fs::read_to_string(PAGE_REPORTING_ORDER).map(|v| v.trim().to_string())
        else {
            return unchanged;
        };
        if let Err(e) = std::fs::write(PAGE_REPORTING_ORDER, NO_REPORTING_ORDER) {
            eprintln!(
                "  free page reporting stays on ({e}; run as root to keep freed memory backed)"
            );
            return unchanged;
        }
        let started = Instant::now();
        let backed = touch_free_memory();
        KeptMemory {
            previous_order: Some(previous),
            backed_gib: backed as f64 / f64::from(1u32 << 30),
            backing_secs: started.elapsed().as_secs_f64(),
        }
    }

    /// What the sizes ran under, for the report.
    pub fn describe(&self) -> Value {
        match &self.previous_order {
            Some(order) => json!({
                "free_page_reporting": "off", "order_before": order,
                "free_memory_backed_gib": (self.backed_gib * 10.0).round() / 10.0,
                "backing_secs": (self.backing_secs * 10.0).round() / 10.0,
            }),
            None => json!({"free_page_reporting": "the kernel's own"}),
        }
    }
}

impl Drop for KeptMemory {
    fn drop(&mut self) {
        if let Some(order) = self.previous_order.take()
            && let Err(e) = std::fs::write(PAGE_REPORTING_ORDER, order)
        {
            eprintln!("  could not turn free page reporting back on: {e}");
        }
    }
}

/// Writes one byte to every page of the machine's free memory, and 512 MiB more so that the
/// kernel hands over its last free pages too (it reclaims page cache for the rest), then frees
/// it: with reporting off, those pages stay backed. Never more than the available memory but
/// 1 GiB. Returns the bytes touched.
fn touch_free_memory() -> usize {
    use crate::services::meminfo_mib;
    let (Some(free), Some(available)) = (meminfo_mib("MemFree:"), meminfo_mib("MemAvailable:"))
    else {
        return 0;
    };
    // A window that starts with 1 GiB of free memory left untouched ran 5 seconds on 1.8-1.96
    // cores when its page cache reached it.
    let bytes = ((free + 512.0).min(available - 1024.0).max(0.0) as usize) << 20;
    let mut memory = vec![0u8; bytes];
    for page in memory.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&memory);
    bytes
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
    /// steal, kafka's JIT compiler threads (part of kafka)]`, in cores (CPU seconds per second).
    pub cpu: Vec<[f64; 10]>,
    /// `[second, free MiB, MiB reclaimed by kswapd, MiB reclaimed directly by allocating
    /// processes, allocation stalls, compaction stalls, MiB of free memory reported to the
    /// host]`: what the kernel did to find memory for the page cache meanwhile (reclaim in a
    /// write() is CPU charged to its process, and so is faulting reported memory back in).
    pub reclaim: Vec<[f64; 7]>,
    /// `[second, MiB written, writes completed, flushes completed, ms spent on flushes, ms
    /// spent on writes, requests in flight at the sample]` of the disk the stack writes to: a second in
    /// which the device completed little while requests waited is the disk's, not a process's.
    pub disk: Vec<[f64; 7]>,
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
                let mut vm_before = VmCounters::read();
                let disk = stack_disk();
                let mut disk_before = disk.as_deref().and_then(DiskCounters::read);
                let mut before = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(1));
                    let second = started.elapsed().as_secs_f64().round();
                    let vm = VmCounters::read();
                    if let Some(vm) = &vm {
                        seen.writeback
                            .push([second, vm.dirty_mib, vm.writeback_mib]);
                        if let Some(then) = &vm_before {
                            seen.reclaim.push(vm.reclaim_since(then, second));
                        }
                    }
                    vm_before = vm;
                    let disk_now = disk.as_deref().and_then(DiskCounters::read);
                    if let (Some(now), Some(then)) = (&disk_now, &disk_before) {
                        seen.disk.push(now.since(then, second));
                    }
                    disk_before = disk_now;
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
                            round2(spent.kafka_jit),
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

/// The block device to sample, as its /sys/block name: `BENCH_DISK`, or else the first disk by
/// name that is not a loop or RAM disk (this machine has one, which holds the stack's data).
fn stack_disk() -> Option<String> {
    if let Ok(disk) = std::env::var("BENCH_DISK") {
        return Some(disk);
    }
    std::fs::read_dir("/sys/block")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| !["loop", "zram", "ram"].iter().any(|p| name.starts_with(p)))
        .min()
}

/// A block device's counters (Documentation/block/stat.rst, counted from 0): 4-7 are writes,
/// 8 requests in flight, 15-16 flushes and their milliseconds.
struct DiskCounters {
    sectors_written: f64,
    writes: f64,
    write_ms: f64,
    in_flight: f64,
    flushes: f64,
    flush_ms: f64,
}

impl DiskCounters {
    fn read(disk: &str) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/sys/block/{disk}/stat")).ok()?;
        let f: Vec<f64> = stat
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
        Some(DiskCounters {
            writes: at(4),
            sectors_written: at(6),
            write_ms: at(7),
            in_flight: at(8),
            flushes: at(15),
            flush_ms: at(16),
        })
    }

    fn since(&self, then: &DiskCounters, second: f64) -> [f64; 7] {
        [
            second,
            // Sectors of 512 bytes.
            ((self.sectors_written - then.sectors_written) / 2048.0).round(),
            self.writes - then.writes,
            self.flushes - then.flushes,
            self.flush_ms - then.flush_ms,
            self.write_ms - then.write_ms,
            self.in_flight,
        ]
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

/// The page-cache and reclaim counters of /proc/vmstat, in MiB where they count pages.
struct VmCounters {
    dirty_mib: f64,
    writeback_mib: f64,
    free_mib: f64,
    stolen_by_kswapd_mib: f64,
    stolen_directly_mib: f64,
    allocation_stalls: f64,
    compaction_stalls: f64,
    reported_to_host_mib: f64,
}

impl VmCounters {
    fn read() -> Option<Self> {
        let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
        let sum = |prefix: &str| -> f64 {
            vmstat
                .lines()
                .filter_map(|l| l.split_once(' '))
                .filter(|(name, _)| name.starts_with(prefix))
                .filter_map(|(_, v)| v.parse::<f64>().ok())
                .sum()
        };
        let one = |name: &str| {
            vmstat
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        };
        // Pages of 4 KiB.
        let mib = |pages: f64| (pages * 4.0 / 1024.0).round();
        Some(VmCounters {
            dirty_mib: mib(one("nr_dirty")?),
            writeback_mib: mib(one("nr_writeback")?),
            free_mib: mib(one("nr_free_pages")?),
            stolen_by_kswapd_mib: mib(one("pgsteal_kswapd").unwrap_or(0.0)),
            stolen_directly_mib: mib(one("pgsteal_direct").unwrap_or(0.0)),
            allocation_stalls: sum("allocstall_"),
            compaction_stalls: one("compact_stall").unwrap_or(0.0),
            reported_to_host_mib: std::fs::read_to_string(REPORTED_KIB)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or(0.0, |kib| (kib / 1024.0).round()),
        })
    }

    fn reclaim_since(&self, then: &VmCounters, second: f64) -> [f64; 7] {
        [
            second,
            self.free_mib,
            self.stolen_by_kswapd_mib - then.stolen_by_kswapd_mib,
            self.stolen_directly_mib - then.stolen_directly_mib,
            self.allocation_stalls - then.allocation_stalls,
            self.compaction_stalls - then.compaction_stalls,
            self.reported_to_host_mib - then.reported_to_host_mib,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_topics_directory_is_pending_until_kafka_removes_it() {
        let kafka = std::env::temp_dir().join(format!("bench-kafka-{}", std::process::id()));
        let node = kafka.join("cluster-1/node1");
        let data = node.join("data");
        std::fs::create_dir_all(data.join("images-0")).unwrap();
        std::fs::write(node.join("kafka.pid"), std::process::id().to_string()).unwrap();
        assert!(!topic_deletions_pending(&kafka));
        let deleted = data.join("bench-2mib-4558b36b-1.fe9ba05b042241d88d45c5-delete");
        std::fs::create_dir_all(&deleted).unwrap();
        assert!(topic_deletions_pending(&kafka));
        std::fs::remove_dir(&deleted).unwrap();
        assert!(!topic_deletions_pending(&kafka));
        std::fs::create_dir_all(&deleted).unwrap();
        std::fs::write(node.join("kafka.pid"), "4294967295").unwrap();
        assert!(
            !topic_deletions_pending(&kafka),
            "a stopped node removes nothing: not waited for"
        );
        std::fs::remove_dir_all(&kafka).unwrap();
        assert!(
            !topic_deletions_pending(&kafka),
            "no stack, nothing to wait for"
        );
    }

    #[test]
    fn case_settings_apply_the_defaults_when_the_database_is_not_configured() {
        let (settings, vars) = case_settings(&HashMap::new(), "bench-x", "imgstream_bench", 6);
        assert_eq!(settings.database_url.database_name(), "imgstream_bench");
        assert_eq!(settings.kafka.data_topic, "bench-x");
        assert!(vars["DATABASE_CONNECTION_STRING"].ends_with("/imgstream_bench"));
    }
}
