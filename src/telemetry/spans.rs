//! The spans of one record's trip, and the W3C trace context that carries it through Kafka.
//!
//! Every function here returns at once, with nothing made, while tracing is off ([`enabled`]).
//! With tracing on, a span that the sampler drops is not kept past its creation: the producer
//! still writes its `traceparent` (flagged not sampled, so the consumer drops it too under the
//! default parent-based sampler), and the consumer makes no stage spans for it.

use super::{TARGET, enabled};
use crate::domain::Origin;
use crate::pipeline::RecordHeader;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The longest `traceparent` or `tracestate` value read from a record: version 00's
/// `traceparent` is 55 characters and the specification bounds `tracestate` at 512. A header
/// comes from an untrusted writer; a longer one is ignored rather than parsed.
const MAX_CONTEXT_HEADER: usize = 512;

/// A producer's span for one record, and the headers that carry its context.
pub struct Produced {
    span: Span,
    /// `traceparent` (and `tracestate` when there is one), to add to the record.
    pub headers: Vec<(&'static str, String)>,
}

impl Produced {
    /// The broker refused the record: the span says so. It ends when this is dropped.
    pub fn failed(&self, error: &str) {
        self.span.record("otel.status_code", "error");
        self.span.record("otel.status_description", error);
    }
}

/// Starts the `produce` span of one record (a root: the sampler decides), to be dropped once the
/// broker acknowledged it; `None` while tracing is off.
pub fn produce(topic: &str, key: &str) -> Option<Produced> {
    if !enabled() {
        return None;
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "produce",
        otel.kind = "producer",
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    let cx = span.context();
    let mut headers = Headers(Vec::with_capacity(1));
    TraceContextPropagator::new().inject_context(&cx, &mut headers);
    if cx.span().span_context().is_sampled() {
        span.set_attribute("messaging.system", "kafka");
        span.set_attribute("messaging.operation.type", "send");
        span.set_attribute("messaging.destination.name", topic.to_string());
        span.set_attribute("messaging.kafka.message.key", key.to_string());
    }
    Some(Produced {
        span,
        headers: headers.0,
    })
}

struct Headers(Vec<(&'static str, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        let key = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((key, value));
    }
}

/// A polled record's headers, as the propagator reads them: the first header of a name, UTF-8
/// and within [`MAX_CONTEXT_HEADER`], or nothing.
struct RecordHeaders<'a>(&'a [RecordHeader]);

impl Extractor for RecordHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let (_, value) = self.0.iter().find(|(k, _)| k == key.as_bytes())?;
        let value = value.as_deref()?;
        if value.len() > MAX_CONTEXT_HEADER {
            return None;
        }
        std::str::from_utf8(value).ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|(k, _)| std::str::from_utf8(k).ok())
            .collect()
    }
}

/// The context a record's producer wrote (`traceparent`), if any and valid.
pub fn record_context(headers: &[RecordHeader]) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&RecordHeaders(headers));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The consumer's spans for one batch: a `process` span per sampled record (child of the
/// record's producer span, or a root), ended when this is dropped after the batch's commit, and
/// the `batch` span linking to them. Empty while tracing is off.
#[derive(Default)]
pub struct RecordSpans {
    batch: Option<Span>,
    records: HashMap<(i32, i64), Span>,
}

impl RecordSpans {
    /// Starts the spans of a batch just polled.
    pub fn start<'a>(records: impl Iterator<Item = (&'a Origin, &'a [RecordHeader])>) -> Self {
        if !enabled() {
            return RecordSpans::default();
        }
        let mut spans = RecordSpans::default();
        let mut links = Vec::new();
        for (origin, headers) in records {
            let parent = record_context(headers);
            let span = tracing::info_span!(
                target: TARGET,
                parent: None,
                "process",
                otel.kind = "consumer",
                imgstream.dead_letter.code = Empty,
            );
            if let Some(parent) = &parent {
                let _ = span.set_parent(
                    opentelemetry::Context::new().with_remote_span_context(parent.clone()),
                );
            }
            let own = span.context().span().span_context().clone();
            if !own.is_sampled() {
                continue;
            }
            span.set_attribute("messaging.system", "kafka");
            span.set_attribute("messaging.operation.type", "process");
            span.set_attribute("messaging.destination.name", origin.topic.clone());
            span.set_attribute(
                "messaging.destination.partition.id",
                origin.partition.to_string(),
            );
            span.set_attribute("messaging.kafka.offset", origin.offset);
            // The batch links to where each record was created (the producer's span), as
            // OpenTelemetry's messaging conventions ask; to the record's own span without one.
            links.push(parent.filter(SpanContext::is_sampled).unwrap_or(own));
            spans
                .records
                .insert((origin.partition, origin.offset), span);
        }
        if !links.is_empty() {
            let batch = tracing::info_span!(
                target: TARGET,
                parent: None,
                "batch",
                otel.kind = "consumer",
                messaging.batch.message_count = links.len(),
            );
            for link in links {
                batch.add_link(link);
            }
            spans.batch = Some(batch);
        }
        spans
    }

    /// A child span of each sampled record for one stage of the batch (`check`, `index`,
    /// `commit`: the records go through them together), ended when dropped.
    pub fn stage(&self, stage: &'static str) -> Vec<Span> {
        self.records
            .values()
            .map(|parent| stage_span(parent, stage))
            .collect()
    }

    /// One record's child span for a stage it goes through alone (`upload`); disabled when the
    /// record is not sampled.
    pub fn record_stage(&self, origin: &Origin, stage: &'static str) -> Span {
        match self.records.get(&(origin.partition, origin.offset)) {
            Some(parent) => stage_span(parent, stage),
            None => Span::none(),
        }
    }

    /// [`RecordSpans::record_stage`] for several records at once (`index`: the records whose
    /// objects are stored); nothing is allocated while no record is sampled.
    pub fn records_stage<'a>(
        &self,
        origins: impl Iterator<Item = &'a Origin>,
        stage: &'static str,
    ) -> Vec<Span> {
        if self.records.is_empty() {
            return Vec::new();
        }
        origins
            .filter_map(|o| self.records.get(&(o.partition, o.offset)))
            .map(|parent| stage_span(parent, stage))
            .collect()
    }

    /// The record went to the dead-letter topic, with this code.
    pub fn dead_lettered(&self, origin: &Origin, code: &str) {
        if let Some(span) = self.records.get(&(origin.partition, origin.offset)) {
            span.record("imgstream.dead_letter.code", code);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn stage_span(parent: &Span, stage: &'static str) -> Span {
    tracing::info_span!(target: TARGET, parent: parent, "stage", otel.name = stage)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn header(key: &str, value: &[u8]) -> RecordHeader {
        (key.as_bytes().to_vec(), Some(value.to_vec()))
    }

    #[test]
    fn a_record_carries_its_producers_context_in_traceparent() {
        let sc = record_context(&[
            header("other", b"x"),
            header("traceparent", PARENT.as_bytes()),
        ])
        .expect("a context");
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote());
    }

    #[test]
    fn a_missing_malformed_oversized_or_binary_traceparent_gives_no_context() {
        assert!(record_context(&[]).is_none());
        assert!(record_context(&[header("traceparent", b"00-zz-01")]).is_none());
        assert!(record_context(&[header("traceparent", &[0xff; 55])]).is_none());
        let long = format!("{PARENT}{}", "-0".repeat(300));
        assert!(record_context(&[header("traceparent", long.as_bytes())]).is_none());
        assert!(record_context(&[(b"traceparent".to_vec(), None)]).is_none());
    }

    #[test]
    fn with_tracing_off_nothing_is_made() {
        assert!(produce("t", "k").is_none());
        let origin = Origin {
            topic: "t".into(),
            partition: 0,
            offset: 1,
        };
        let headers = [header("traceparent", PARENT.as_bytes())];
        let spans = RecordSpans::start([(&origin, &headers[..])].into_iter());
        assert!(spans.is_empty() && spans.batch.is_none());
        assert!(spans.record_stage(&origin, "upload").is_none());
    }
}
