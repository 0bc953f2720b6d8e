//! Group lag from the outside (`imgstream monitor`): how far the consumer group is behind on
//! every partition of the data topic, in records and in seconds, whether or not any consumer is
//! alive.
//!
//! A consumer's own `imgstream_consumer_lag` covers only the partitions it owns, so when the
//! consumers crash-loop the lag disappears exactly when it matters. The monitor reads what the
//! brokers hold instead: the group's committed offsets and each partition's watermarks, every
//! `--interval`, with clients that never join the group.
//!
//! # Lag in records
//!
//! End offset minus the committed offset. A partition the group has not committed on yet counts
//! from its low watermark, as a consumer with `auto.offset.reset=earliest` (ours) would start
//! there; so does a commit older than what retention kept.
//!
//! # Lag in seconds: the oldest unconsumed record's timestamp
//!
//! The monitor reads the one record at the committed offset with a plain assigned consumer
//! and reports how long ago it was stamped. kafka-lag-exporter instead interpolates: it keeps a
//! table of (end offset, time) pairs and estimates when the committed offset was the end. We read
//! the record because
//! - it is exact: the age of a real record, not an estimate from a produce rate, so it is right
//!   after a burst, after a lull, and on the monitor's first read (interpolation needs a history
//!   and knows nothing of records produced before the monitor started);
//! - it is cheap here: the record is read only while the partition lags and only when the
//!   committed offset moved (the timestamp is kept per offset), so a stuck group costs nothing
//!   per interval, and a moving one one fetch per partition per interval.
//!
//! The cost is one fetch of (at most) one producer batch per lagging partition whose commit
//! moved, and trust in the record timestamps: with `CreateTime` (Kafka's default) a producer's
//! skewed clock skews the figure; a future timestamp reads as 0 s. A topic set to
//! `LogAppendTime` gives the broker's clock instead.

use crate::audit::{PartitionOffsets, group_offsets_on};
use crate::config::Settings;
use crate::kafka::BrokerError;
use crate::metrics::process;
use crate::shutdown::Shutdown;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long one read of the oldest unconsumed records may take.
const RECORD_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One partition's lag at one read.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLag {
    pub partition: i32,
    pub records: i64,
    /// Age of the oldest unconsumed record; `None` when it could not be read (its timestamp is
    /// missing, or the read timed out). 0 when nothing is unconsumed.
    pub seconds: Option<f64>,
}

/// Where the group will resume on a partition: its commit, or the low watermark when it has none
/// or retention has deleted past it (`auto.offset.reset=earliest`).
pub fn resume_offset(o: &PartitionOffsets) -> i64 {
    o.committed.unwrap_or(o.low).max(o.low)
}

/// Records between where the group resumes and the end of the partition.
pub fn lag_records(o: &PartitionOffsets) -> i64 {
    (o.high - resume_offset(o)).max(0)
}

/// Seconds from a record's timestamp to `now_ms`; a future timestamp (a skewed clock) is 0.
pub fn age_seconds(timestamp_ms: i64, now_ms: i64) -> f64 {
    (now_ms - timestamp_ms).max(0) as f64 / 1000.0
}

/// Reads the group's lag; keeps its two clients and the timestamps already read.
pub struct LagReader {
    topic: String,
    bootstrap: String,
    timeout: Duration,
    offsets: BaseConsumer,
    records: BaseConsumer,
    /// Per partition: the offset whose record was read last, and its timestamp.
    oldest: HashMap<i32, (i64, Option<i64>)>,
}

impl LagReader {
    pub fn new(settings: &Settings) -> Result<Self, BrokerError> {
        Ok(LagReader {
            topic: settings.kafka.data_topic.clone(),
            bootstrap: settings.kafka.bootstrap_servers.clone(),
            timeout: settings.connect_timeout,
            offsets: crate::wiring::offsets_reader(settings)?,
            records: crate::kafka::consumer::record_reader(&settings.kafka)?,
            oldest: HashMap::new(),
        })
    }

    /// One read of every partition. Blocking: broker round trips.
    pub fn read(&mut self) -> Result<Vec<PartitionLag>, BrokerError> {
        let offsets = group_offsets_on(&self.offsets, &self.topic, self.timeout, &self.bootstrap)?;
        let lagging: Vec<(i32, i64)> = offsets
            .iter()
            .filter(|o| lag_records(o) > 0)
            .map(|o| (o.partition, resume_offset(o)))
            .collect();
        let unread: Vec<(i32, i64)> = lagging
            .iter()
            .filter(|(p, at)| self.oldest.get(p).is_none_or(|(read_at, _)| read_at != at))
            .copied()
            .collect();
        for (partition, timestamp) in self.timestamps_at(&unread) {
            let at = unread.iter().find(|(p, _)| *p == partition).map(|u| u.1);
            if let Some(at) = at {
                self.oldest.insert(partition, (at, timestamp));
            }
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        Ok(offsets
            .iter()
            .map(|o| {
                let records = lag_records(o);
                let seconds = if records == 0 {
                    Some(0.0)
                } else {
                    self.oldest
                        .get(&o.partition)
                        .filter(|(at, _)| *at == resume_offset(o))
                        .and_then(|(_, ts)| *ts)
                        .map(|ts| age_seconds(ts, now_ms))
                };
                PartitionLag {
                    partition: o.partition,
                    records,
                    seconds,
                }
            })
            .collect())
    }

    /// The timestamp of the first record at or after each (partition, offset); a partition whose
    /// record did not arrive within the timeout is left out and asked again next time.
    fn timestamps_at(&self, wanted: &[(i32, i64)]) -> Vec<(i32, Option<i64>)> {
        if wanted.is_empty() {
            return Vec::new();
        }
        let mut tpl = TopicPartitionList::new();
        for (p, at) in wanted {
            if let Err(e) = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*at)) {
                warn!(partition = p, error = %e, "cannot ask for the oldest unconsumed record");
            }
        }
        if let Err(e) = self.records.assign(&tpl) {
            warn!(error = %e, "cannot read the oldest unconsumed records");
            return Vec::new();
        }
        let mut found: Vec<(i32, Option<i64>)> = Vec::new();
        let deadline = Instant::now() + RECORD_READ_TIMEOUT;
        while found.len() < wanted.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.records.poll(left) {
                Some(Ok(m)) => {
                    let p = m.partition();
                    if wanted.iter().any(|w| w.0 == p) && !found.iter().any(|f| f.0 == p) {
                        found.push((p, m.timestamp().to_millis()));
                    }
                }
                Some(Err(e)) => warn!(error = %e, "reading an oldest unconsumed record failed"),
                None => {}
            }
        }
        // Drop what was prefetched: the next read assigns afresh.
        let _ = self.records.unassign();
        found
    }
}

/// The last read, for the scrapes.
#[derive(Debug, Default)]
struct LastRead {
    partitions: Vec<PartitionLag>,
    /// Unix seconds of the last successful read; 0 before the first.
    at_unix_secs: f64,
    at: Option<Instant>,
}

#[derive(Debug)]
struct LagCollector {
    group: String,
    topic: String,
    last: Arc<Mutex<LastRead>>,
    failures: Arc<AtomicU64>,
}

impl Collector for LagCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let last = self.last.lock().expect("lag lock");
        let labels = |p: &PartitionLag| {
            [
                ("group", self.group.clone()),
                ("topic", self.topic.clone()),
                ("partition", p.partition.to_string()),
            ]
        };
        let mut family = encoder.encode_descriptor(
            "group_lag_records",
            "Records the group has not committed yet, per partition (from the low watermark without a commit)",
            None,
            MetricType::Gauge,
        )?;
        for p in &last.partitions {
            ConstGauge::new(p.records).encode(family.encode_family(&labels(p))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "group_lag",
            "Age of the oldest record the group has not committed, per partition (0 when none)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for p in &last.partitions {
            if let Some(seconds) = p.seconds {
                ConstGauge::new(seconds).encode(family.encode_family(&labels(p))?)?;
            }
        }
        ConstGauge::new(last.at_unix_secs).encode(encoder.encode_descriptor(
            "group_lag_read_timestamp",
            "When the group's lag was last read successfully (Unix time; 0 before the first)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(self.failures.load(Ordering::Relaxed)).encode(
            encoder.encode_descriptor(
                "group_lag_read_failures",
                "Reads of the group's offsets that failed (the last figures stay exported)",
                None,
                MetricType::Counter,
            )?,
        )?;
        Ok(())
    }
}

/// How `imgstream monitor` runs.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    pub addr: SocketAddr,
    pub interval: Duration,
}

struct Exporter {
    registry: Registry,
    last: Arc<Mutex<LastRead>>,
    interval: Duration,
}

impl Exporter {
    /// Ready while the last successful read is at most three intervals old.
    fn ready(&self) -> bool {
        let last = self.last.lock().expect("lag lock");
        last.at
            .is_some_and(|at| at.elapsed() <= self.interval * 3 + RECORD_READ_TIMEOUT)
    }
}

/// Reads the group's lag every `interval` and serves it at `/metrics` until `shutdown`. Returns
/// the address it listens on once it does; the reads go on in a thread of their own (librdkafka's
/// calls block).
pub async fn start(
    settings: &Settings,
    opts: MonitorOptions,
    shutdown: Shutdown,
) -> Result<SocketAddr, String> {
    let mut reader = LagReader::new(settings).map_err(|e| e.to_string())?;
    let last = Arc::new(Mutex::new(LastRead::default()));
    let failures = Arc::new(AtomicU64::new(0));
    let mut registry = Registry::default();
    process::register(&mut registry);
    registry
        .sub_registry_with_prefix("imgstream")
        .register_collector(Box::new(LagCollector {
            group: settings.kafka.group_id.clone(),
            topic: settings.kafka.data_topic.clone(),
            last: last.clone(),
            failures: failures.clone(),
        }));
    let exporter = Arc::new(Exporter {
        registry,
        last: last.clone(),
        interval: opts.interval,
    });
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}: {e}; choose another --metrics-addr",
                opts.addr
            )
        })?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(exporter);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    });
    let interval = opts.interval;
    std::thread::Builder::new()
        .name("group-lag".into())
        .spawn(move || {
            while !shutdown.is_triggered() {
                let started = Instant::now();
                match reader.read() {
                    Ok(partitions) => {
                        let mut l = last.lock().expect("lag lock");
                        l.partitions = partitions;
                        l.at_unix_secs = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
                        l.at = Some(Instant::now());
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "cannot read the group's lag; the last figures stay");
                    }
                }
                // Sleep in short steps so a signal ends the process promptly.
                let next = started + interval;
                while !shutdown.is_triggered() && Instant::now() < next {
                    std::thread::sleep(
                        next.saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(200)),
                    );
                }
            }
        })
        .map_err(|e| format!("cannot start the lag reader: {e}"))?;
    info!(address = %bound, group = %settings.kafka.group_id, topic = %settings.kafka.data_topic, "group lag at /metrics");
    Ok(bound)
}

async fn metrics(State(e): State<Arc<Exporter>>) -> impl IntoResponse {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &e.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

async fn readyz(State(e): State<Arc<Exporter>>) -> impl IntoResponse {
    if e.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the group's lag has not been read lately\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(low: i64, high: i64, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets {
            partition: 0,
            low,
            high,
            committed,
        }
    }

    #[test]
    fn a_partition_without_a_commit_lags_from_its_low_watermark() {
        assert_eq!(lag_records(&offsets(0, 10, None)), 10);
        assert_eq!(lag_records(&offsets(4, 10, None)), 6);
        assert_eq!(resume_offset(&offsets(4, 10, None)), 4);
    }

    #[test]
    fn a_commit_behind_retention_lags_from_the_low_watermark_and_a_caught_up_one_not_at_all() {
        assert_eq!(lag_records(&offsets(8, 10, Some(3))), 2);
        assert_eq!(lag_records(&offsets(0, 10, Some(7))), 3);
        assert_eq!(lag_records(&offsets(0, 10, Some(10))), 0);
        assert_eq!(lag_records(&offsets(0, 0, None)), 0);
    }

    #[test]
    fn a_record_stamped_in_the_future_is_zero_seconds_old() {
        assert_eq!(age_seconds(1_000, 3_500), 2.5);
        assert_eq!(age_seconds(5_000, 3_500), 0.0);
    }
}
