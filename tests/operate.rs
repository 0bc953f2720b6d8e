//! What an operator watches, against the real stack: the group's lag as `imgstream monitor`
//! exports it while no consumer is alive, and the consumer's end-to-end latency histogram,
//! both compared with what Kafka and the index hold.

mod common;

use common::{TestEnv, encode, valid_record};
use imgstream::domain::ImageFormat;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const PARTITIONS: [i32; 3] = [0, 1, 2];

/// The value of one sample in Prometheus text: `name` with no labels, or with `labels` among its
/// labels (e.g. `partition="1"`).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (metric, rest) = l.split_at(l.find([' ', '{']).unwrap_or(l.len()));
            metric == name && (labels.is_empty() || rest.starts_with('{') && rest.contains(labels))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The metric families a scrape declares (its `# TYPE` lines), with their types.
fn families(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// The families deploy/metrics.txt lists for `command`: what the chart's alerts and dashboard
/// may use (`make check-deploy` holds them to it).
fn listed(command: &str) -> BTreeSet<(String, String)> {
    let list = include_str!("../deploy/metrics.txt");
    list.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (name, kind, commands) = (fields.next()?, fields.next()?, fields.next()?);
            commands
                .split(',')
                .any(|c| c == command)
                .then(|| (name.to_string(), kind.to_string()))
        })
        .collect()
}

async fn scrape(addr: &str) -> Option<String> {
    let r = reqwest::get(format!("http://{addr}/metrics")).await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

/// Lag in records per partition, as the monitor exports it.
fn exported_lag(text: &str) -> BTreeMap<i32, f64> {
    PARTITIONS
        .iter()
        .filter_map(|p| {
            let labels = format!("partition=\"{p}\"");
            Some((*p, sample(text, "imgstream_group_lag_records", &labels)?))
        })
        .collect()
}

/// Lag in records per partition, as the brokers hold it (end offset minus commit).
fn broker_lag(env: &TestEnv) -> BTreeMap<i32, f64> {
    imgstream::audit::group_offsets(&env.settings, &env.name)
        .unwrap()
        .iter()
        .map(|o| (o.partition, imgstream::group_lag::lag_records(o) as f64))
        .collect()
}

/// Sends `per_partition` valid records to each partition, stamped `timestamp_ms`.
async fn send_stamped(
    env: &TestEnv,
    producer: &FutureProducer,
    per_partition: usize,
    timestamp_ms: i64,
) {
    for p in PARTITIONS {
        for i in 0..per_partition {
            let record = valid_record(i as u64, ImageFormat::Png);
            let payload = encode(env, &record).await;
            let key = record.image_id.to_string();
            producer
                .send(
                    FutureRecord::to(&env.name)
                        .partition(p)
                        .key(&key)
                        .payload(&payload)
                        .timestamp(timestamp_ms),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("send");
        }
    }
}

/// Scrapes `addr` until `done` holds for a scrape (up to `limit`); returns the last scrape.
async fn scrape_until(addr: &str, limit: Duration, done: impl Fn(&str) -> bool) -> (bool, String) {
    let deadline = std::time::Instant::now() + limit;
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        if let Some(text) = scrape(addr).await {
            if done(&text) {
                return (true, text);
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (false, last)
}

#[tokio::test(flavor = "multi_thread")]
async fn group_lag_rises_while_the_consumers_are_dead_and_falls_to_zero_when_one_catches_up() {
    let env = TestEnv::new("grouplag").await;
    let producer = common::raw_producer(&env);
    let now_ms = || chrono::Utc::now().timestamp_millis();
    send_stamped(&env, &producer, 2, now_ms()).await;

    // A consumer stores everything and commits, then is SIGKILLed and not restarted.
    let mut consumer = env.spawn(&["consume"], "consumer");
    let committed = common::eventually(Duration::from_secs(90), || async {
        broker_lag(&env).values().all(|l| *l == 0.0)
    })
    .await;
    assert!(committed, "never committed:\n{}", env.read_log("consumer"));
    common::signal(consumer.child(), 9);
    while consumer.is_running() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let addr = format!("127.0.0.1:{}", common::free_port());
    let _monitor = env.spawn(
        &["monitor", "--metrics-addr", &addr, "--interval", "1"],
        "monitor",
    );
    let (zero, text) = scrape_until(&addr, Duration::from_secs(30), |t| {
        exported_lag(t).values().filter(|l| **l == 0.0).count() == PARTITIONS.len()
    })
    .await;
    assert!(
        zero,
        "no zero lag exported:\n{text}\n{}",
        env.read_log("monitor")
    );

    // Records stamped 30 s ago arrive: lag rises on every partition, and its age is theirs.
    let stamped = now_ms() - 30_000;
    send_stamped(&env, &producer, 3, stamped).await;
    let (risen, text) = scrape_until(&addr, Duration::from_secs(30), |t| {
        exported_lag(t).values().filter(|l| **l == 3.0).count() == PARTITIONS.len()
    })
    .await;
    assert!(risen, "lag never reached 3 per partition:\n{text}");
    assert_eq!(
        families(&text),
        listed("monitor"),
        "deploy/metrics.txt lists other metrics than the monitor exports"
    );
    assert_eq!(exported_lag(&text), broker_lag(&env));
    let truth = (now_ms() - stamped) as f64 / 1000.0;
    for p in PARTITIONS {
        let seconds = sample(
            &text,
            "imgstream_group_lag_seconds",
            &format!("partition=\"{p}\""),
        )
        .unwrap_or_else(|| panic!("no lag in seconds:\n{text}\n{}", env.read_log("monitor")));
        assert!(
            (seconds - truth).abs() <= 2.0,
            "partition {p}: {seconds} s exported, {truth} s true"
        );
    }

    // More records: lag keeps rising with them, per partition.
    send_stamped(&env, &producer, 2, now_ms()).await;
    let (rose, text) = scrape_until(&addr, Duration::from_secs(30), |t| {
        exported_lag(t).values().filter(|l| **l == 5.0).count() == PARTITIONS.len()
    })
    .await;
    assert!(rose, "lag never reached 5 per partition:\n{text}");
    assert_eq!(exported_lag(&text), broker_lag(&env));
    assert!(sample(&text, "imgstream_group_lag_seconds", "partition=\"0\"") >= Some(30.0));

    // A consumer catches up: lag falls to 0 in records and in seconds.
    let catching_up = env.spawn(&["consume", "--until-idle", "5"], "catching-up");
    let (caught_up, text) = scrape_until(&addr, Duration::from_secs(90), |t| {
        PARTITIONS.iter().all(|p| {
            let labels = format!("partition=\"{p}\"");
            sample(t, "imgstream_group_lag_records", &labels) == Some(0.0)
                && sample(t, "imgstream_group_lag_seconds", &labels) == Some(0.0)
        })
    })
    .await;
    assert!(
        caught_up,
        "lag never fell to 0:\n{text}\n{}",
        env.read_log("catching-up")
    );
    let status = catching_up
        .wait_within(Duration::from_secs(120))
        .expect("the consumer did not exit");
    assert!(status.success(), "{}", env.read_log("catching-up"));
    assert_eq!(env.counts().await, (21, 21));
    assert_eq!(broker_lag(&env).values().sum::<f64>(), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_end_to_end_histogram_counts_every_record_the_index_holds() {
    let env = TestEnv::new("endtoend").await;
    env.produce(25, &[]);
    let addr = format!("127.0.0.1:{}", common::free_port());
    let consumer = env.spawn(
        &["consume", "--until-idle", "6", "--metrics-addr", &addr],
        "consumer",
    );
    let (stored, text) = scrape_until(&addr, Duration::from_secs(90), |t| {
        sample(t, "imgstream_records_stored_total", "") == Some(25.0)
    })
    .await;
    assert!(
        stored,
        "never stored 25:\n{text}\n{}",
        env.read_log("consumer")
    );
    let (_, rows) = env.counts().await;
    assert_eq!(rows, 25);
    assert_eq!(
        families(&text),
        listed("consume"),
        "deploy/metrics.txt lists other metrics than the consumer exports"
    );
    assert_eq!(
        sample(&text, "imgstream_record_end_to_end_seconds_count", ""),
        Some(rows as f64),
        "{text}"
    );
    // Every record was produced moments ago: well under the last bucket.
    let sum = sample(&text, "imgstream_record_end_to_end_seconds_sum", "").unwrap();
    assert!(sum > 0.0 && sum / (rows as f64) < 60.0, "{text}");
    // The p99 a dashboard shows (histogram_quantile over the buckets) against the bench's own
    // measure, the index's stored_at - created_at of every row: within one bucket's width.
    let (estimate, low, high) =
        histogram_quantile(&text, "imgstream_record_end_to_end_seconds", 0.99);
    let measured = index_p99_seconds(&env).await;
    assert!(
        (estimate - measured).abs() <= high - low,
        "histogram p99 {estimate:.3}s (bucket {low}..{high}s) against the index's {measured:.3}s"
    );
    for stage in ["check", "upload", "index", "commit"] {
        let labels = format!("stage=\"{stage}\"");
        assert!(
            sample(
                &text,
                "imgstream_batch_stage_duration_seconds_count",
                &labels
            ) >= Some(1.0),
            "{stage}: {text}"
        );
    }
    assert!(
        text.contains(&format!(
            "imgstream_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(
        sample(&text, "process_cpu_seconds_total", "") > Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "process_resident_memory_bytes", "") > Some(1e6),
        "{text}"
    );
    assert!(sample(&text, "process_open_fds", "") > Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "imgstream_outages_total", "service=\"postgresql\""),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "imgstream_rebalances_total", "kind=\"assign\"") >= Some(1.0),
        "{text}"
    );
    let status = consumer
        .wait_within(Duration::from_secs(120))
        .expect("the consumer did not exit");
    assert!(status.success(), "{}", env.read_log("consumer"));
}

/// Prometheus's `histogram_quantile`: the bucket holding the `q` quantile of a histogram's
/// cumulative `_bucket` samples, and a linear estimate inside it. Returns (estimate, low, high).
fn histogram_quantile(text: &str, name: &str, q: f64) -> (f64, f64, f64) {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, rest) = l.split_once('"')?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().expect("a histogram has a +Inf bucket").1;
    let rank = q * total;
    let (mut low, mut below) = (0.0, 0.0);
    for (le, cumulative) in buckets {
        if cumulative >= rank {
            assert!(
                le.is_finite(),
                "the {q} quantile is beyond the last bucket: {text}"
            );
            let estimate = low + (le - low) * (rank - below) / (cumulative - below);
            return (estimate, low, le);
        }
        (low, below) = (le, cumulative);
    }
    unreachable!("the +Inf bucket holds every observation")
}

/// The 99th percentile of produce-to-index time as the bench measures it: the index's
/// `stored_at - created_at` over every row.
async fn index_p99_seconds(env: &TestEnv) -> f64 {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(env.settings.database_url.expose())
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - created_at))::float8 FROM images",
    )
    .fetch_one(&mut db)
    .await
    .unwrap()
}

/// One span as an OTLP exporter sent it, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: otlp::trace::v1::Span,
}

impl Received {
    fn name(&self) -> &str {
        &self.span.name
    }

    fn attribute(&self, key: &str) -> Option<String> {
        use otlp::common::v1::any_value::Value;
        let value = self.span.attributes.iter().find(|a| a.key == key)?;
        match value.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

use opentelemetry_proto::tonic as otlp;

/// An OTLP/HTTP receiver of the test's own (what an OpenTelemetry Collector's `otlphttp`
/// receiver does): it decodes each export request with OpenTelemetry's protobuf types and keeps
/// every span.
async fn otlp_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Received>>>) {
    use axum::body::Bytes;
    use axum::extract::State;
    use otlp::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use prost::Message;
    type Spans = std::sync::Arc<std::sync::Mutex<Vec<Received>>>;

    async fn export(State(spans): State<Spans>, body: Bytes) -> impl axum::response::IntoResponse {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
        let mut spans = spans.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    otlp::common::v1::any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        (
            [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
    }

    let spans = Spans::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(export))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_images_spans_from_produce_to_commit_share_a_trace_and_its_batch_links_to_it() {
    use otlp::trace::v1::span::SpanKind;
    let env = TestEnv::new("traces").await;
    let (endpoint, received) = otlp_receiver().await;
    let otel = |service: &'static str| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_SERVICE_NAME", service.to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ]
    };
    let small = ["--width", "64-96", "--height", "48-64", "--key", "image"];
    let produced = env
        .command(&[&["produce", "--count", "3"][..], &small].concat())
        .envs(otel("producer"))
        .output()
        .unwrap();
    assert!(produced.status.success(), "{}", common::stderr(&produced));
    // Tracing off: the record carries no trace context; nor does one from another producer,
    // which is not even an image.
    env.produce(1, &small);
    let producer = common::raw_producer(&env);
    common::send_raw(&producer, &env.name, "garbage", Some(b"not an image")).await;

    let mut consumer = env.command(&["consume", "--until-idle", "3"]);
    let consumed = consumer.envs(otel("consumer")).output().unwrap();
    assert!(consumed.status.success(), "{}", common::stderr(&consumed));
    assert_eq!(env.counts().await, (4, 4));

    // Each process sent what it still held when it exited.
    let spans = received.lock().unwrap().clone();
    let produce: Vec<&Received> = spans.iter().filter(|s| s.name() == "produce").collect();
    assert_eq!(produce.len(), 3, "{spans:#?}");
    let records = common::read_topic(&env, &env.name);
    let traced: Vec<String> = records
        .iter()
        .filter_map(|m| common::header(m, "traceparent"))
        .collect();
    assert_eq!(
        traced.len(),
        3,
        "two records were produced with tracing off"
    );
    for p in &produce {
        assert_eq!(p.service, "producer");
        assert_eq!(p.span.kind, SpanKind::Producer as i32);
        assert!(p.span.parent_span_id.is_empty());
        assert_eq!(
            p.attribute("messaging.destination.name"),
            Some(env.name.clone())
        );
        let trace = &p.span.trace_id;
        let traceparent = format!("00-{}-{}-01", hex(trace), hex(&p.span.span_id));
        assert!(
            traced.contains(&traceparent),
            "{traceparent} not in {traced:?}"
        );

        // The consumer continues the producer's trace: a process span, child of the produce span.
        let in_trace = |s: &&Received| &s.span.trace_id == trace;
        let process: Vec<&Received> = spans
            .iter()
            .filter(in_trace)
            .filter(|s| s.name() == "process")
            .collect();
        assert_eq!(process.len(), 1, "{spans:#?}");
        let process = process[0];
        assert_eq!(process.service, "consumer");
        assert_eq!(process.span.kind, SpanKind::Consumer as i32);
        assert_eq!(process.span.parent_span_id, p.span.span_id);
        assert!(process.attribute("messaging.kafka.offset").is_some());

        // Its stages, children of it, one after another, within it.
        let mut last_end = process.span.start_time_unix_nano;
        for stage in ["check", "upload", "index", "commit"] {
            let found: Vec<&Received> = spans
                .iter()
                .filter(in_trace)
                .filter(|s| s.name() == stage)
                .collect();
            assert_eq!(found.len(), 1, "{stage}: {spans:#?}");
            let s = &found[0].span;
            assert_eq!(s.parent_span_id, process.span.span_id, "{stage}");
            assert!(
                s.start_time_unix_nano >= last_end,
                "{stage} began before the stage before it ended"
            );
            assert!(
                s.end_time_unix_nano <= process.span.end_time_unix_nano,
                "{stage}"
            );
            last_end = s.end_time_unix_nano;
        }

        // The batch that held it: a root span of its own, linked to where the record was made.
        let batches: Vec<&Received> = spans
            .iter()
            .filter(|s| s.name() == "batch")
            .filter(|s| {
                s.span
                    .links
                    .iter()
                    .any(|l| &l.trace_id == trace && l.span_id == p.span.span_id)
            })
            .collect();
        assert_eq!(
            batches.len(),
            1,
            "no batch links to {traceparent}: {spans:#?}"
        );
        assert!(batches[0].span.parent_span_id.is_empty());
        assert_ne!(&batches[0].span.trace_id, trace);
    }
    // The records without a context started traces of their own in the consumer; the one
    // refused says why, and went through check and commit only.
    let roots: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name() == "process" && s.span.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 2, "{spans:#?}");
    let refused: Vec<&&Received> = roots
        .iter()
        .filter(|r| r.attribute("imgstream.dead_letter.code").is_some())
        .collect();
    assert_eq!(refused.len(), 1, "{roots:#?}");
    let mut stages: Vec<&str> = spans
        .iter()
        .filter(|s| s.span.parent_span_id == refused[0].span.span_id)
        .map(Received::name)
        .collect();
    stages.sort();
    assert_eq!(stages, ["check", "commit"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_the_producer_did_not_sample_leave_no_span_in_the_consumer() {
    let env = TestEnv::new("unsampled").await;
    let (endpoint, received) = otlp_receiver().await;
    let small = ["--width", "64-96", "--height", "48-64"];
    let produced = env
        .command(&[&["produce", "--count", "3"][..], &small].concat())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_TRACES_SAMPLER", "always_off")
        .output()
        .unwrap();
    assert!(produced.status.success(), "{}", common::stderr(&produced));
    // The context travels, flagged not sampled.
    for m in common::read_topic(&env, &env.name) {
        let traceparent = common::header(&m, "traceparent").expect("a traceparent");
        assert!(traceparent.ends_with("-00"), "{traceparent}");
    }
    let consumed = env
        .command(&["consume", "--until-idle", "3"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .output()
        .unwrap();
    assert!(consumed.status.success(), "{}", common::stderr(&consumed));
    assert_eq!(env.counts().await, (3, 3));
    let spans = received.lock().unwrap().clone();
    assert!(spans.is_empty(), "{spans:#?}");
}
