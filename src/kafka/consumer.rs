//! The group consumer: cooperative rebalancing, manual offset commits, bounded prefetch.

use super::{BrokerError, base_config, quiet};
use crate::config::KafkaSettings;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::{info, warn};

/// Logs rebalances and counts revocations, so the pipeline can tell that ownership moved.
#[derive(Default)]
pub struct GroupContext {
    pub revocations: AtomicU64,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                self.revocations.fetch_add(1, Ordering::SeqCst);
                info!(partitions = %describe(tpl), "partitions revoked");
            }
            Rebalance::Assign(tpl) => info!(partitions = %describe(tpl), "partitions assigned"),
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

fn describe(tpl: &rdkafka::TopicPartitionList) -> String {
    let parts: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}

pub type GroupConsumer = StreamConsumer<GroupContext>;

/// Knobs the benchmark tunes; the defaults are what it found best on a 2-core machine.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Upper bound of prefetched bytes held by librdkafka: the consumer's memory bound.
    pub queued_max_kbytes: u32,
    pub fetch_max_bytes: u32,
    pub max_partition_fetch_bytes: u32,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            queued_max_kbytes: 32 * 1024,
            fetch_max_bytes: 16 << 20,
            max_partition_fetch_bytes: 4 << 20,
        }
    }
}

pub fn group_consumer(
    kafka: &KafkaSettings,
    fetch: &FetchSettings,
) -> Result<GroupConsumer, BrokerError> {
    let mut config = base_config(kafka, "imgstream-consumer");
    quiet(&mut config)
        .set("group.id", &kafka.group_id)
        .set("auto.offset.reset", kafka.auto_offset_reset.as_str())
        // Offsets are committed by the pipeline, only after object and row are durable.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Cooperative rebalancing: a joining or leaving member does not stop everyone else.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // A dead or frozen member loses its partitions within ~10 s; its late writes are harmless
        // (create-only objects, idempotent rows) and its late commits are fenced by the generation.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set("max.poll.interval.ms", "300000")
        .set(
            "queued.max.messages.kbytes",
            fetch.queued_max_kbytes.to_string(),
        )
        .set("fetch.max.bytes", fetch.fetch_max_bytes.to_string())
        .set(
            "max.partition.fetch.bytes",
            fetch.max_partition_fetch_bytes.to_string(),
        )
        .set("fetch.wait.max.ms", "100");
    config
        .create_with_context(GroupContext::default())
        .map_err(|e| BrokerError::from_kafka(&e, &kafka.bootstrap_servers))
}
