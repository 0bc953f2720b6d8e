//! `imgstream rewind`: moves a consumer group's committed offsets to a point in time (Kafka's
//! offsets-for-times), to the start or to the end of the data topic, so that the next `consume`
//! reprocesses from there. What is already stored is found in place (counted as replayed), and
//! erased images are not stored again (the consumer asks the erasures first).
//!
//! It commits as a client that never joins the group, like `kafka-consumer-groups
//! --reset-offsets`, and for the same reason refuses while the group has members: a member
//! commits its own positions on top of ours and ignores the move.

use super::BrokerError;
use super::consumer::offsets_reader;
use crate::config::KafkaSettings;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::time::Duration;

/// Where to move the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewindTo {
    /// Each partition's oldest record still on the topic.
    Earliest,
    /// Each partition's end: everything there is counts as done.
    Latest,
    /// Each partition's first record with a timestamp at or after this time.
    Time(DateTime<Utc>),
}

impl std::fmt::Display for RewindTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RewindTo::Earliest => f.write_str("earliest"),
            RewindTo::Latest => f.write_str("latest"),
            RewindTo::Time(t) => {
                f.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            }
        }
    }
}

/// One partition's move.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionMove {
    pub partition: i32,
    /// The group's committed offset before; none when it had never committed there.
    pub old: Option<i64>,
    pub new: i64,
    /// Records between the old and the new offset: positive are read again, negative skipped.
    pub records: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RewindReport {
    pub group: String,
    pub topic: String,
    pub to: String,
    pub dry_run: bool,
    pub partitions: Vec<PartitionMove>,
}

impl RewindReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} group {} on {} to {}\n",
            if self.dry_run {
                "would move (dry run, nothing changed)"
            } else {
                "moved"
            },
            self.group,
            self.topic,
            self.to
        );
        out.push_str("partition        old        new    records\n");
        for p in &self.partitions {
            out.push_str(&format!(
                "{:>9} {:>10} {:>10} {:>+10}\n",
                p.partition,
                p.old.map_or("-".to_string(), |o| o.to_string()),
                p.new,
                p.records
            ));
        }
        let again: i64 = self.partitions.iter().map(|p| p.records.max(0)).sum();
        let skipped: i64 = self.partitions.iter().map(|p| (-p.records).max(0)).sum();
        out.push_str(&format!(
            "{again} records to read again, {skipped} skipped; the next consume stores what is missing (erased images excepted)\n"
        ));
        out
    }
}

/// Moves `kafka.group_id`'s offsets on the data topic to `to`. Blocking (librdkafka).
pub fn rewind(
    kafka: &KafkaSettings,
    to: RewindTo,
    dry_run: bool,
    timeout: Duration,
) -> Result<RewindReport, BrokerError> {
    let topic = &kafka.data_topic;
    let group = &kafka.group_id;
    let bootstrap = &kafka.bootstrap_servers;
    let consumer = offsets_reader(kafka)?;
    let broker = |e: rdkafka::error::KafkaError| BrokerError::from_kafka(&e, bootstrap);
    let groups = consumer
        .fetch_group_list(Some(group), timeout)
        .map_err(broker)?;
    let members: Vec<String> = groups
        .groups()
        .iter()
        .flat_map(|g| g.members())
        .map(|m| format!("{} ({}@{})", m.id(), m.client_id(), m.client_host()))
        .collect();
    if !members.is_empty() {
        return Err(BrokerError::Refused(format!(
            "group {group} has {} member(s): {}; stop its consumers first, a member would commit over the move",
            members.len(),
            members.join(", ")
        )));
    }
    let partitions = super::partition_ids(&consumer, topic, timeout, bootstrap)?;
    let mut asked = TopicPartitionList::new();
    for &p in &partitions {
        asked.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(asked.clone(), timeout)
        .map_err(broker)?;
    let by_time = match to {
        RewindTo::Time(t) => {
            let mut times = TopicPartitionList::new();
            for &p in &partitions {
                times
                    .add_partition_offset(topic, p, Offset::Offset(t.timestamp_millis()))
                    .map_err(broker)?;
            }
            Some(consumer.offsets_for_times(times, timeout).map_err(broker)?)
        }
        _ => None,
    };
    let mut moves = Vec::new();
    let mut past_the_end = 0;
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(broker)?;
        let old = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        let new = match to {
            RewindTo::Earliest => low,
            RewindTo::Latest => high,
            RewindTo::Time(_) => match by_time
                .as_ref()
                .and_then(|t| t.find_partition(topic, p))
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                // No record at or after the time: the partition's end.
                _ => {
                    past_the_end += 1;
                    high
                }
            },
        };
        moves.push(PartitionMove {
            partition: p,
            old,
            new,
            // A group that never committed starts where auto.offset.reset says: earliest.
            records: old.unwrap_or(low) - new,
        });
    }
    moves.sort_by_key(|m| m.partition);
    if let RewindTo::Time(t) = to
        && past_the_end == partitions.len()
    {
        let skipped: i64 = moves.iter().map(|m| (-m.records).max(0)).sum();
        return Err(BrokerError::Refused(format!(
            "no record of {topic} is at or after {}: every partition would move to its end, skipping the {skipped} records the group has not committed; nothing changed (use --to latest for that)",
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )));
    }
    if !dry_run {
        let mut tpl = TopicPartitionList::new();
        for m in &moves {
            tpl.add_partition_offset(topic, m.partition, Offset::Offset(m.new))
                .map_err(broker)?;
        }
        consumer.commit(&tpl, CommitMode::Sync).map_err(broker)?;
    }
    Ok(RewindReport {
        group: group.clone(),
        topic: topic.clone(),
        to: to.to_string(),
        dry_run,
        partitions: moves,
    })
}
