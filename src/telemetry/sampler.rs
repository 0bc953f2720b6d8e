//! The configured sampler, plus one rule: a root span with a sampled link is kept.
//!
//! A consumer's `batch` span is a root (a batch belongs to no one producer's trace) that links to
//! its records. Left to a ratio sampler, a batch would be kept independently of its records: at
//! 1%, the batch of a kept record would be missing 99 times in 100. Keeping every batch that
//! holds a kept record costs one span per such batch.

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};

#[derive(Debug, Clone)]
pub struct KeepLinked {
    inner: Box<dyn ShouldSample>,
}

impl KeepLinked {
    pub fn new(inner: Box<dyn ShouldSample>) -> Self {
        KeepLinked { inner }
    }
}

impl ShouldSample for KeepLinked {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let root = parent_context.is_none_or(|cx| !cx.has_active_span());
        if root && links.iter().any(|l| l.span_context.is_sampled()) {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.inner
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags};
    use opentelemetry_sdk::trace::Sampler;

    fn link(sampled: bool) -> Link {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let cx = SpanContext::new(
            TraceId::from(7u128),
            SpanId::from(9u64),
            flags,
            true,
            TraceState::default(),
        );
        Link::new(cx, Vec::new(), 0)
    }

    fn decide(links: &[Link]) -> SamplingDecision {
        KeepLinked::new(Box::new(Sampler::AlwaysOff))
            .should_sample(
                None,
                TraceId::from(1u128),
                "batch",
                &SpanKind::Consumer,
                &[],
                links,
            )
            .decision
    }

    #[test]
    fn a_root_span_linking_to_a_sampled_span_is_kept_whatever_the_sampler_says() {
        assert_eq!(
            decide(&[link(false), link(true)]),
            SamplingDecision::RecordAndSample
        );
    }

    #[test]
    fn without_a_sampled_link_the_configured_sampler_decides() {
        assert_eq!(decide(&[link(false)]), SamplingDecision::Drop);
        assert_eq!(decide(&[]), SamplingDecision::Drop);
    }
}
