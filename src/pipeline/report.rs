//! What a run did: live counters while it runs, and the typed summary it ends with.
//!
//! `stored` counts records whose index row this run inserted, so across the members of a group it
//! sums to the number of records, whoever redid what. Work found already complete (a replay after
//! a crash or a rebalance) counts as `replayed`, never as stored.

use super::retry::Outage;
use super::usage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::info;

/// One outage tracker per service, so each outage is logged once when it starts and once when it
/// ends; readiness and metrics read them too.
#[derive(Debug)]
pub struct Outages {
    pub store: Outage,
    pub index: Outage,
    pub registry: Outage,
    pub kafka: Outage,
}

impl Default for Outages {
    fn default() -> Self {
        Outages {
            store: Outage::new("object store"),
            index: Outage::new("postgresql"),
            registry: Outage::new("schema registry"),
            kafka: Outage::new("kafka"),
        }
    }
}

impl Outages {
    pub fn all(&self) -> [&Outage; 4] {
        [&self.store, &self.index, &self.registry, &self.kafka]
    }

    /// Whether any service is in an outage right now.
    pub fn any_ongoing(&self) -> bool {
        self.all().iter().any(|o| o.is_ongoing())
    }
}

/// A stage of the pipeline, as its batch timings name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Decode and validate.
    Check,
    /// Write the batch's objects.
    Upload,
    /// Insert the batch's rows.
    Index,
    /// Send the batch's dead letters and hand its offsets to the source.
    Commit,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Check => "check",
            Stage::Upload => "upload",
            Stage::Index => "index",
            Stage::Commit => "commit",
        }
    }
}

/// Where the pipeline reports how long things took. The metrics implement it, so the pipeline
/// stays free of Prometheus; without one installed, nothing is measured.
pub trait Timings: Send + Sync {
    /// One batch spent `seconds` in `stage`.
    fn stage(&self, stage: Stage, seconds: f64);
    /// A record's row was inserted `seconds` after the record's Kafka timestamp.
    fn end_to_end(&self, seconds: f64);
}

impl std::fmt::Debug for dyn Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Timings")
    }
}

/// Counters, shared with the live status line and the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub outages: Outages,
    timings: OnceLock<Arc<dyn Timings>>,
    /// Seconds since the Unix epoch when a record was last stored.
    pub last_stored_unix_secs: AtomicU64,
    pub stored: AtomicU64,
    pub replayed: AtomicU64,
    /// Records an erasure covers: not stored, not dead-lettered, their offsets committed.
    pub erased: AtomicU64,
    /// Records of partitions taken away (or of a stopping run) before their work started: left
    /// to whoever consumes them next.
    pub given_back: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Image bytes of the records counted as stored.
    pub bytes: AtomicU64,
    pub batches: AtomicU64,
    /// Commits deferred because the group was rebalancing.
    pub commits_deferred: AtomicU64,
    /// Object uploads running right now (for the debug timings).
    pub uploads_running: AtomicU64,
    /// Microseconds spent writing objects (retries included: the slot stays taken), summed over
    /// every upload: over the busy span, the mean number of uploads running at once.
    pub upload_micros: AtomicU64,
    /// Records polled so far (the backpressure tests read it).
    pub polled: AtomicU64,
    dead_lettered_by_code: Mutex<BTreeMap<String, u64>>,
    /// When the first record arrived and the last batch was committed: the busy span, without
    /// start-up and idle waiting, for throughput figures.
    pub first_record: OnceLock<Instant>,
    last_commit: Mutex<Option<Instant>>,
}

impl Stats {
    pub fn processed(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
            + self.replayed.load(Ordering::Relaxed)
            + self.erased.load(Ordering::Relaxed)
            + self.dead_lettered.load(Ordering::Relaxed)
    }

    pub(super) fn count_dead_letter(&self, code: &str) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        *self
            .dead_lettered_by_code
            .lock()
            .expect("stats lock")
            .entry(code.to_string())
            .or_default() += 1;
    }

    pub(super) fn batch_committed(&self) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        *self.last_commit.lock().expect("stats lock") = Some(Instant::now());
    }

    /// Reports stage and end-to-end times to `timings` from now on (once; later calls are ignored).
    pub fn time_with(&self, timings: Arc<dyn Timings>) {
        let _ = self.timings.set(timings);
    }

    pub(super) fn stage_took(&self, stage: Stage, took: std::time::Duration) {
        if let Some(t) = self.timings.get() {
            t.stage(stage, took.as_secs_f64());
        }
    }

    /// A record's row is in the index: its age since the producer stamped it. A record without a
    /// timestamp, or stamped in the future by a skewed clock, is not measured (a negative age
    /// would land in the lowest bucket and hide the skew).
    pub(super) fn indexed_record(&self, timestamp_ms: Option<i64>) {
        let (Some(t), Some(stamped)) = (self.timings.get(), timestamp_ms) else {
            return;
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        if now_ms >= stamped {
            t.end_to_end((now_ms - stamped) as f64 / 1000.0);
        }
    }

    pub(super) fn count_stored(&self, bytes: u64) {
        self.stored.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_stored_unix_secs.store(now, Ordering::Relaxed);
    }

    pub fn dead_lettered_by_code(&self) -> BTreeMap<String, u64> {
        self.dead_lettered_by_code
            .lock()
            .expect("stats lock")
            .clone()
    }

    /// Seconds from the first record received to the last batch committed.
    pub fn busy_secs(&self) -> f64 {
        match (
            self.first_record.get(),
            *self.last_commit.lock().expect("stats lock"),
        ) {
            (Some(first), Some(last)) => last.saturating_duration_since(*first).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// The end-of-run summary.
    pub fn summary(&self, elapsed: Duration, stopped: StopReason) -> RunSummary {
        let stored = self.stored.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-9);
        let busy = self.busy_secs();
        let per_busy_sec = |n: f64| if busy > 0.0 { n / busy } else { 0.0 };
        let usage = usage::own();
        RunSummary {
            stopped,
            stored,
            replayed: self.replayed.load(Ordering::Relaxed),
            erased: self.erased.load(Ordering::Relaxed),
            given_back: self.given_back.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            dead_lettered_by_code: self
                .dead_lettered_by_code
                .lock()
                .expect("stats lock")
                .clone(),
            bytes,
            batches: self.batches.load(Ordering::Relaxed),
            commits_deferred: self.commits_deferred.load(Ordering::Relaxed),
            slow_waits: self.outages.all().iter().map(|o| o.slow_waits()).sum(),
            elapsed_secs: secs,
            images_per_sec: stored as f64 / secs,
            mb_per_sec: bytes as f64 / secs / 1e6,
            busy_secs: busy,
            busy_images_per_sec: per_busy_sec(stored as f64),
            busy_mb_per_sec: per_busy_sec(bytes as f64 / 1e6),
            mean_uploads_in_flight: per_busy_sec(
                self.upload_micros.load(Ordering::Relaxed) as f64 / 1e6,
            ),
            peak_rss_kib: usage.peak_rss_kib,
            cpu_secs: usage.cpu_secs,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Idle,
    MaxRecords,
    Shutdown,
}

/// The end-of-run figures; `consume --json` prints it and the benchmark reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub stopped: StopReason,
    /// Records whose object and row this run completed.
    pub stored: u64,
    /// Records found already stored and indexed (redone work after a crash or rebalance).
    pub replayed: u64,
    /// Records an erasure covers, left unstored (their offsets committed, no dead letter).
    #[serde(default)]
    pub erased: u64,
    /// Records of partitions a rebalance took away, or of a run stopped by a signal, before
    /// their work started: not done here, not committed, done once by whoever consumes next.
    #[serde(default)]
    pub given_back: u64,
    pub dead_lettered: u64,
    pub dead_lettered_by_code: BTreeMap<String, u64>,
    pub bytes: u64,
    pub batches: u64,
    pub commits_deferred: u64,
    /// Calls to a service seen still waiting for an answer after the slow threshold.
    pub slow_waits: u64,
    pub elapsed_secs: f64,
    pub images_per_sec: f64,
    pub mb_per_sec: f64,
    /// From the first record received to the last batch committed.
    pub busy_secs: f64,
    pub busy_images_per_sec: f64,
    pub busy_mb_per_sec: f64,
    /// Uploads running at once, on average over the busy span: how much of `--uploads` the
    /// pipeline kept busy.
    #[serde(default)]
    pub mean_uploads_in_flight: f64,
    pub peak_rss_kib: u64,
    pub cpu_secs: f64,
}

impl RunSummary {
    /// One log line for the end of a run.
    pub fn log(&self) {
        info!(
            reason = ?self.stopped,
            stored = self.stored,
            replayed = self.replayed,
            erased = self.erased,
            given_back = self.given_back,
            dead_lettered = self.dead_lettered,
            bytes = self.bytes,
            images_per_sec = self.images_per_sec,
            mb_per_sec = self.mb_per_sec,
            "consumer stopped"
        );
    }
}
