//! The consumer's metrics and health over HTTP (`consume --metrics-addr`): Prometheus text at
//! `/metrics`, `/healthz` (the process answers) and `/readyz` (no service in an outage).
//!
//! Counters are read from the pipeline's own [`Stats`] at each scrape, so the pipeline knows
//! nothing of Prometheus; request latencies are measured by wrapping the image and index sinks
//! ([`Timed`]); lag per partition comes from librdkafka's statistics. Stage times and each
//! record's end-to-end latency come through the pipeline's [`Timings`] hook. [`process`] adds the
//! build info and the process's own CPU, memory and file descriptors.
//!
//! This lag is only what live members own; the group's lag whether or not a consumer is alive is
//! `imgstream monitor`'s ([`crate::group_lag`]).

pub mod process;

use crate::domain::{ImageRecord, IndexEntry};
use crate::pipeline::{
    Failure, ImageSink, IndexSink, Indexed, Partition, Put, Stage, Stats, Timings,
};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tracing::info;

type LagReader = Arc<dyn Fn() -> BTreeMap<Partition, i64> + Send + Sync>;

/// A batch's time in one stage, by `stage`.
type StageHistograms = Family<[(&'static str, &'static str); 1], Histogram, fn() -> Histogram>;

/// The registry and the latency histograms the sinks and the pipeline feed.
pub struct Metrics {
    /// Unprefixed root: the `process_*` metrics keep their standard names; everything of
    /// imgstream's own is in its `imgstream_` sub-registry.
    registry: Registry,
    store_seconds: Histogram,
    index_seconds: Histogram,
    timings: Arc<PipelineTimings>,
    stats: Option<Arc<Stats>>,
}

/// 1 ms to about 33 s: a local PUT is a few ms, an outage retry many seconds.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The pipeline's [`Timings`] as histograms.
struct PipelineTimings {
    stages: StageHistograms,
    end_to_end: Histogram,
}

impl Timings for PipelineTimings {
    fn stage(&self, stage: Stage, seconds: f64) {
        self.stages
            .get_or_create(&[("stage", stage.as_str())])
            .observe(seconds);
    }

    fn end_to_end(&self, seconds: f64) {
        self.end_to_end.observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let store_seconds = request_buckets();
        let index_seconds = request_buckets();
        let timings = Arc::new(PipelineTimings {
            stages: StageHistograms::new_with_constructor(request_buckets),
            // 10 ms to about 164 s, doubling: a record stored within a batch's linger lands in
            // the first buckets, a backlog after an outage in the last ones; ×2 steps keep a
            // p99 read from the buckets within a factor of two of the truth.
            end_to_end: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
        });
        let mut root = Registry::default();
        process::register(&mut root);
        let registry = root.sub_registry_with_prefix("imgstream");
        registry.register_with_unit(
            "record_end_to_end",
            "From a record's Kafka timestamp to the insert of its index row",
            Unit::Seconds,
            timings.end_to_end.clone(),
        );
        registry.register_with_unit(
            "batch_stage_duration",
            "Time a batch spent in a pipeline stage (check, upload, index, commit), retries included",
            Unit::Seconds,
            timings.stages.clone(),
        );
        registry.register_with_unit(
            "object_store_request_duration",
            "Time of one image write to the object store, retries not included",
            Unit::Seconds,
            store_seconds.clone(),
        );
        registry.register_with_unit(
            "index_request_duration",
            "Time of one batch insert into PostgreSQL, retries not included",
            Unit::Seconds,
            index_seconds.clone(),
        );
        Metrics {
            registry: root,
            store_seconds,
            index_seconds,
            timings,
            stats: None,
        }
    }

    /// The image sink, timed.
    pub fn timed_images<T: ImageSink>(&self, inner: T) -> Timed<T> {
        Timed {
            inner,
            seconds: self.store_seconds.clone(),
        }
    }

    /// The index sink, timed.
    pub fn timed_index<T: IndexSink>(&self, inner: T) -> Timed<T> {
        Timed {
            inner,
            seconds: self.index_seconds.clone(),
        }
    }

    /// Reports the pipeline's counters and the source's lag from now on.
    pub fn watch(
        &mut self,
        stats: Arc<Stats>,
        lag: impl Fn() -> BTreeMap<Partition, i64> + Send + Sync + 'static,
    ) {
        self.stats = Some(stats.clone());
        stats.time_with(self.timings.clone());
        self.registry
            .sub_registry_with_prefix("imgstream")
            .register_collector(Box::new(PipelineCollector {
                stats,
                lag: Arc::new(lag),
            }));
    }

    /// Reports how often this member's assignment changed, by kind, and how long it has been
    /// out of its group, from now on.
    pub fn watch_rebalances(
        &mut self,
        counts: impl Fn() -> [(&'static str, u64); 3] + Send + Sync + 'static,
        out_of_group: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.registry
            .sub_registry_with_prefix("imgstream")
            .register_collector(Box::new(RebalanceCollector {
                counts: Box::new(counts),
                out_of_group: Box::new(out_of_group),
            }));
    }

    /// Prometheus text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Ready when no service is in an outage.
    pub fn ready(&self) -> bool {
        self.stats.as_ref().is_none_or(|s| !s.outages.any_ongoing())
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(self);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "metrics server stopped");
            }
        });
        info!(address = %bound, "metrics at /metrics, health at /healthz and /readyz");
        Ok(bound)
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "a service is in an outage\n",
        )
    }
}

/// A sink whose calls are timed into a histogram.
pub struct Timed<T> {
    inner: T,
    seconds: Histogram,
}

impl<T: ImageSink> ImageSink for Timed<T> {
    fn put<'a>(&'a self, record: &'a ImageRecord) -> BoxFuture<'a, Result<Put, Failure>> {
        Box::pin(async move {
            let started = Instant::now();
            let put = self.inner.put(record).await;
            self.seconds.observe(started.elapsed().as_secs_f64());
            put
        })
    }

    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
}

impl<T: IndexSink> IndexSink for Timed<T> {
    fn insert<'a>(
        &'a self,
        entries: &'a [IndexEntry],
    ) -> BoxFuture<'a, Result<Vec<Indexed>, Failure>> {
        Box::pin(async move {
            let started = Instant::now();
            let inserted = self.inner.insert(entries).await;
            self.seconds.observe(started.elapsed().as_secs_f64());
            inserted
        })
    }

    fn erased<'a>(
        &'a self,
        probes: &'a [crate::domain::ErasureProbe],
    ) -> BoxFuture<'a, Result<Vec<bool>, Failure>> {
        Box::pin(async move {
            let started = Instant::now();
            let erased = self.inner.erased(probes).await;
            self.seconds.observe(started.elapsed().as_secs_f64());
            erased
        })
    }
}

/// The pipeline's counters, read at each scrape.
struct PipelineCollector {
    stats: Arc<Stats>,
    lag: LagReader,
}

impl std::fmt::Debug for PipelineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineCollector").finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, MetricType::Counter)?)
}

impl Collector for PipelineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        counter(
            &mut encoder,
            "records_consumed",
            "Records polled from the data topic",
            None,
            load(&s.polled),
        )?;
        counter(
            &mut encoder,
            "records_stored",
            "Records this process stored (object written, row inserted)",
            None,
            load(&s.stored),
        )?;
        counter(
            &mut encoder,
            "records_replayed",
            "Records found already stored and indexed",
            None,
            load(&s.replayed),
        )?;
        counter(
            &mut encoder,
            "records_erased",
            "Records an erasure covers, left unstored with their offsets committed",
            None,
            load(&s.erased),
        )?;
        counter(
            &mut encoder,
            "stored",
            "Image bytes of the records stored",
            Some(&Unit::Bytes),
            load(&s.bytes),
        )?;
        counter(
            &mut encoder,
            "batches_committed",
            "Batches whose offsets were committed",
            None,
            load(&s.batches),
        )?;
        counter(
            &mut encoder,
            "slow_waits",
            "Calls seen still waiting for an answer after the slow threshold",
            None,
            s.outages.all().iter().map(|o| o.slow_waits()).sum(),
        )?;
        let mut family = encoder.encode_descriptor(
            "records_dead_lettered",
            "Records sent to the dead-letter topic, by refusal code",
            None,
            MetricType::Counter,
        )?;
        for (code, n) in s.dead_lettered_by_code() {
            ConstCounter::new(n).encode(family.encode_family(&[("code", code.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "service_retries",
            "Failed calls to a service that were retried (after backoff)",
            None,
            MetricType::Counter,
        )?;
        for outage in s.outages.all() {
            ConstCounter::new(outage.retries())
                .encode(family.encode_family(&[("service", outage.service())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "outages",
            "Outages that began (a service failing twice in a row)",
            None,
            MetricType::Counter,
        )?;
        for outage in s.outages.all() {
            ConstCounter::new(outage.started())
                .encode(family.encode_family(&[("service", outage.service())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "outage_in_progress",
            "1 while a service is in an outage",
            None,
            MetricType::Gauge,
        )?;
        for outage in s.outages.all() {
            ConstGauge::new(i64::from(outage.is_ongoing()))
                .encode(family.encode_family(&[("service", outage.service())])?)?;
        }
        let last = ConstGauge::new(load(&s.last_stored_unix_secs) as i64);
        last.encode(encoder.encode_descriptor(
            "last_stored_timestamp",
            "When a record was last stored (Unix time; 0 before the first)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "consumer_lag",
            "Records behind the end of each owned partition (librdkafka statistics)",
            None,
            MetricType::Gauge,
        )?;
        for ((topic, partition), lag) in (self.lag)() {
            let partition = partition.to_string();
            ConstGauge::new(lag).encode(family.encode_family(&[
                ("topic", topic.as_str()),
                ("partition", partition.as_str()),
            ])?)?;
        }
        Ok(())
    }
}

type RebalanceCounts = Box<dyn Fn() -> [(&'static str, u64); 3] + Send + Sync>;

/// The member's rebalance callbacks and its time out of the group, read at each scrape.
struct RebalanceCollector {
    counts: RebalanceCounts,
    out_of_group: Box<dyn Fn() -> f64 + Send + Sync>,
}

impl std::fmt::Debug for RebalanceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebalanceCollector").finish_non_exhaustive()
    }
}

impl Collector for RebalanceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "rebalances",
            "Changes of this member's assignment: partitions assigned, revoked, or lost to the group",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in (self.counts)() {
            ConstCounter::new(n).encode(family.encode_family(&[("kind", kind)])?)?;
        }
        // librdkafka rejoins by itself within seconds; a member out for long owns nothing while
        // its group may think it alive (it exits after 90 s when the brokers answer).
        ConstGauge::new((self.out_of_group)()).encode(encoder.encode_descriptor(
            "consumer_out_of_group",
            "How long this member has been out of its consumer group (0 while in it), from librdkafka's statistics",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}
