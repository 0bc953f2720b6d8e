//! `imgstream status` and `imgstream verify`: what the services hold, read from the services.

use crate::config::Settings;
use crate::domain::sha256_hex;
use crate::index::{ImageIndex, IndexError};
use crate::kafka::{BrokerError, off_thread};
use crate::store::{ImageStore, StoreError};
use chrono::{Duration as Age, Utc};
use futures::{StreamExt, TryStreamExt};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: i32,
    /// Next offset to be written.
    pub high_watermark: i64,
    /// The group's committed offset, if it has one.
    pub committed: Option<i64>,
    pub lag: i64,
    /// Highest offset of this partition found in the index.
    pub max_indexed_offset: Option<i64>,
    pub indexed_rows: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    pub topic: String,
    pub group: String,
    pub partitions: Vec<PartitionStatus>,
    pub total_lag: i64,
    /// Rows of this bucket (the table may index other buckets too).
    pub index_rows: i64,
    pub bucket_objects: u64,
    pub dlq_topic: String,
    pub dlq_depth: i64,
}

/// One partition's offsets: its retained range and the group's committed position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    pub committed: Option<i64>,
}

/// `group_offsets` off the async thread: librdkafka's offset queries block.
async fn fetch_group_offsets(
    settings: &Settings,
    topic: &str,
) -> Result<Vec<PartitionOffsets>, BrokerError> {
    let (settings, topic) = (settings.clone(), topic.to_string());
    off_thread(move || group_offsets(&settings, &topic)).await
}

/// Offsets of a group on a topic, read without joining the group.
pub fn group_offsets(
    settings: &Settings,
    topic: &str,
) -> Result<Vec<PartitionOffsets>, BrokerError> {
    let bootstrap = &settings.kafka.bootstrap_servers;
    let consumer = crate::wiring::offsets_reader(settings)?;
    let timeout = settings.connect_timeout;
    let partitions = crate::kafka::partition_ids(&consumer, topic, timeout, bootstrap)?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(|e| BrokerError::from_kafka(&e, bootstrap))?;
    let mut out = Vec::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| BrokerError::from_kafka(&e, bootstrap))?;
        let c = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        out.push(PartitionOffsets {
            partition: p,
            low,
            high,
            committed: c,
        });
    }
    out.sort();
    Ok(out)
}

/// Joins the group's offsets with what the index holds per partition.
fn partition_statuses(
    offsets: Vec<PartitionOffsets>,
    positions: &HashMap<i32, (i64, i64)>,
) -> Vec<PartitionStatus> {
    offsets
        .into_iter()
        .map(|o| {
            let (max_indexed_offset, indexed_rows) = positions
                .get(&o.partition)
                .map_or((None, 0), |(max, n)| (Some(*max), *n));
            PartitionStatus {
                partition: o.partition,
                high_watermark: o.high,
                committed: o.committed,
                lag: o.high - o.committed.unwrap_or(o.low).max(o.low),
                max_indexed_offset,
                indexed_rows,
            }
        })
        .collect()
}

pub async fn status(
    settings: &Settings,
    store: &ImageStore,
    index: &ImageIndex,
) -> Result<Status, AuditError> {
    let topic = &settings.kafka.data_topic;
    let offsets = fetch_group_offsets(settings, topic).await?;
    let partitions = partition_statuses(offsets, &index.partition_positions(topic).await?);
    let dlq_depth = fetch_group_offsets(settings, &settings.kafka.dlq_topic)
        .await?
        .iter()
        .map(|p| p.high - p.low)
        .sum();
    Ok(Status {
        topic: topic.clone(),
        group: settings.kafka.group_id.clone(),
        total_lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
        index_rows: index.count_in_bucket(store.bucket()).await?,
        bucket_objects: store.list(crate::domain::OBJECT_PREFIX).await?.len() as u64,
        dlq_topic: settings.kafka.dlq_topic.clone(),
        dlq_depth,
    })
}

/// How thoroughly `verify` reads object bytes.
#[derive(Debug, Clone, Copy)]
pub enum Checksums {
    None,
    Sample(usize),
    All,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct VerifyReport {
    pub objects: usize,
    pub rows: usize,
    /// Rows whose object is gone.
    pub missing_objects: Vec<String>,
    /// Objects no row points to.
    pub orphan_objects: Vec<String>,
    /// Objects whose size differs from the row's.
    pub size_mismatches: Vec<String>,
    pub checksums_checked: usize,
    pub checksum_mismatches: Vec<String>,
    /// Orphans removed by --repair (older than the grace period).
    pub orphans_removed: Vec<String>,
    /// Orphans left alone because they are younger than the grace period (a write in flight).
    pub orphans_too_young: Vec<String>,
    pub partitions: Vec<PartitionStatus>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing_objects.is_empty()
            && self.size_mismatches.is_empty()
            && self.checksum_mismatches.is_empty()
            && self.orphan_objects.len() == self.orphans_removed.len()
    }
}

/// Object reads `verify` keeps in flight while it checks checksums.
const VERIFY_READS_IN_FLIGHT: usize = 16;

/// Audits bucket against index. With `repair`, removes orphans older than `grace` — longer than
/// any write in flight, because the protocol writes the object before its row and a consumer may
/// be between the two right now.
pub async fn verify(
    settings: &Settings,
    store: &ImageStore,
    index: &ImageIndex,
    checksums: Checksums,
    repair: Option<Duration>,
) -> Result<VerifyReport, AuditError> {
    let objects = store.list(crate::domain::OBJECT_PREFIX).await?;
    let rows = index.entries_in_bucket(store.bucket()).await?;
    let by_key: HashMap<&str, &crate::store::StoredObject> =
        objects.iter().map(|o| (o.key.as_str(), o)).collect();
    let row_keys: HashMap<&str, &crate::domain::IndexEntry> =
        rows.iter().map(|r| (r.object_key.as_str(), r)).collect();

    let mut report = VerifyReport {
        objects: objects.len(),
        rows: rows.len(),
        ..VerifyReport::default()
    };
    for row in &rows {
        match by_key.get(row.object_key.as_str()) {
            None => report.missing_objects.push(row.object_key.clone()),
            Some(o) if o.size as i64 != row.size_bytes => report.size_mismatches.push(format!(
                "{}: object {} bytes, row {} bytes",
                row.object_key, o.size, row.size_bytes
            )),
            Some(_) => {}
        }
    }
    for o in &objects {
        if !row_keys.contains_key(o.key.as_str()) {
            report.orphan_objects.push(o.key.clone());
        }
    }

    let present: Vec<&crate::domain::IndexEntry> = rows
        .iter()
        .filter(|r| by_key.contains_key(r.object_key.as_str()))
        .collect();
    let to_check: Vec<&crate::domain::IndexEntry> = match checksums {
        Checksums::None => Vec::new(),
        Checksums::All => present,
        Checksums::Sample(n) => {
            // An even spread over the key space, so repeated runs look at the same objects.
            let step = (present.len() / n.max(1)).max(1);
            present.into_iter().step_by(step).take(n).collect()
        }
    };
    // Every object is read back and hashed here, not taken from the checksum the store kept:
    // this is the check that the bytes can still be read. Reads overlap, since each one waits
    // mostly on the store (8000 objects of 357 KB: 18.4 s one at a time, 5.2-5.5 s sixteen at once).
    let mismatches: Vec<Option<String>> = futures::stream::iter(to_check.iter().copied())
        .map(|row| async move {
            let actual = sha256_hex(&store.get(&row.object_key).await?);
            Ok::<_, StoreError>((actual != row.sha256).then(|| {
                format!(
                    "{}: object sha256 {actual}, row {}",
                    row.object_key, row.sha256
                )
            }))
        })
        .buffered(VERIFY_READS_IN_FLIGHT)
        .try_collect()
        .await?;
    report.checksums_checked = mismatches.len();
    report.checksum_mismatches = mismatches.into_iter().flatten().collect();

    if let Some(grace) = repair {
        let cutoff = Utc::now() - Age::from_std(grace).unwrap_or(Age::MAX);
        let modified: BTreeMap<&str, _> = objects
            .iter()
            .map(|o| (o.key.as_str(), o.last_modified))
            .collect();
        for key in report.orphan_objects.clone() {
            if modified.get(key.as_str()).is_some_and(|m| *m < cutoff) {
                store.delete(&key).await?;
                report.orphans_removed.push(key);
            } else {
                report.orphans_too_young.push(key);
            }
        }
    }

    let topic = &settings.kafka.data_topic;
    let positions = index.partition_positions(topic).await?;
    if let Ok(offsets) = fetch_group_offsets(settings, topic).await {
        report.partitions = partition_statuses(offsets, &positions);
    }
    Ok(report)
}
