//! `imgstream status` and `imgstream verify`: what the services hold, read from the services.

use crate::config::Settings;
use crate::domain::sha256_hex;
use crate::index::{ImageIndex, IndexError};
use crate::kafka::{BrokerError, off_thread};
use crate::store::{FetchedObject, ImageStore, StoreError, StoredObject};
use chrono::{DateTime, Duration as Age, Utc};
use futures::{StreamExt, TryStreamExt};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
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
    /// Objects under `images/`, counted by listing the bucket: `None` where that is too dear to
    /// ask often (the pipeline page, refreshed every few seconds, at millions of images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_objects: Option<u64>,
    pub dlq_topic: String,
    pub dlq_depth: i64,
}

impl Status {
    /// `imgstream status` for a person: a table of partitions, then the totals. `bucket` is the
    /// one the rows and objects were counted in.
    pub fn render(&self, bucket: &str) -> String {
        use std::fmt::Write;
        let dash = |n: Option<i64>| n.map_or("-".into(), |n| n.to_string());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "topic {} · group {}", self.topic, self.group);
        let _ = writeln!(
            out,
            "{:>9} {:>12} {:>12} {:>10} {:>14} {:>10}",
            "partition", "end offset", "committed", "lag", "max indexed", "rows"
        );
        for p in &self.partitions {
            let _ = writeln!(
                out,
                "{:>9} {:>12} {:>12} {:>10} {:>14} {:>10}",
                p.partition,
                p.high_watermark,
                dash(p.committed),
                p.lag,
                dash(p.max_indexed_offset),
                p.indexed_rows
            );
        }
        let _ = writeln!(out, "total lag        {}", self.total_lag);
        let _ = writeln!(
            out,
            "index rows       {} (bucket {bucket})",
            self.index_rows
        );
        if let Some(objects) = self.bucket_objects {
            let _ = writeln!(out, "bucket objects   {objects} (bucket {bucket})");
        }
        let _ = writeln!(
            out,
            "dead letters     {} (topic {})",
            self.dlq_depth, self.dlq_topic
        );
        out
    }
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
    let consumer = crate::wiring::offsets_reader(settings)?;
    group_offsets_on(
        &consumer,
        topic,
        settings.connect_timeout,
        &settings.kafka.bootstrap_servers,
    )
}

/// Offsets of the group `consumer` was made for, on `topic`, with a client the caller keeps
/// (`imgstream monitor` asks every few seconds). Blocking.
pub fn group_offsets_on(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: Duration,
    bootstrap: &str,
) -> Result<Vec<PartitionOffsets>, BrokerError> {
    let partitions = crate::kafka::partition_ids(consumer, topic, timeout, bootstrap)?;
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

/// The pipeline's figures; `list_bucket` also counts the bucket's objects by listing it, which
/// takes minutes at millions of images.
pub async fn status(
    settings: &Settings,
    store: &ImageStore,
    index: &ImageIndex,
    list_bucket: bool,
) -> Result<Status, AuditError> {
    let topic = &settings.kafka.data_topic;
    // Each answer is independent of the others: asked side by side.
    let (offsets, positions, dlq_offsets, index_rows) = tokio::join!(
        fetch_group_offsets(settings, topic),
        index.partition_positions(topic),
        fetch_group_offsets(settings, &settings.kafka.dlq_topic),
        index.count_in_bucket(store.bucket()),
    );
    let partitions = partition_statuses(offsets?, &positions?);
    let dlq_depth = dlq_offsets?.iter().map(|p| p.high - p.low).sum();
    Ok(Status {
        topic: topic.clone(),
        group: settings.kafka.group_id.clone(),
        total_lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
        index_rows: index_rows?,
        bucket_objects: if list_bucket {
            Some(store.list(crate::domain::OBJECT_PREFIX).await?.len() as u64)
        } else {
            None
        },
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
    /// Orphans a consumer indexed while repair ran (a replay): left alone, or written back
    /// after their delete. They are orphans no longer.
    pub orphans_indexed_meanwhile: Vec<String>,
    /// Orphans deleted and then written back, because repair could not tell that no consumer
    /// was about to index them: the group did not finish what was on the topic within
    /// [`SETTLE_LIMIT`], or its offsets could not be read.
    pub orphans_kept_unsettled: Vec<String>,
    /// Rows an erasure covers whose objects are already gone: an erasure under way (or killed;
    /// running it again finishes it). Not missing objects.
    pub erased_objects_gone: Vec<String>,
    /// Orphans of erased images: objects a consumer wrote for an erased record, or that came
    /// back after their erasure. `imgstream erase` (any request) or `verify --repair` removes them.
    pub erased_objects_reappeared: Vec<String>,
    pub partitions: Vec<PartitionStatus>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing_objects.is_empty()
            && self.erased_objects_reappeared.is_empty()
            && self.size_mismatches.is_empty()
            && self.checksum_mismatches.is_empty()
            && self.orphan_objects.len()
                == self.orphans_removed.len() + self.orphans_indexed_meanwhile.len()
    }
}

/// `imgstream verify` for a person: the counts, one line per finding, each partition's offsets,
/// and what to do about missing objects. Every line ends in a newline.
impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "objects {} · rows {} · checksums checked {}",
            self.objects, self.rows, self.checksums_checked
        )?;
        let lists: [(&str, &Vec<String>); 10] = [
            ("missing object", &self.missing_objects),
            (
                "object gone, its row erased next (an erasure under way)",
                &self.erased_objects_gone,
            ),
            (
                "object of an erased image reappeared",
                &self.erased_objects_reappeared,
            ),
            ("orphan object", &self.orphan_objects),
            ("size mismatch", &self.size_mismatches),
            ("checksum mismatch", &self.checksum_mismatches),
            ("orphan removed", &self.orphans_removed),
            ("orphan kept (younger than grace)", &self.orphans_too_young),
            (
                "orphan kept (a consumer indexed it during repair)",
                &self.orphans_indexed_meanwhile,
            ),
            (
                "orphan kept (the consumer group did not settle)",
                &self.orphans_kept_unsettled,
            ),
        ];
        for (label, items) in lists {
            for item in items {
                writeln!(f, "{label}: {item}")?;
            }
        }
        let dash = |n: Option<i64>| n.map_or("-".into(), |n| n.to_string());
        for p in &self.partitions {
            writeln!(
                f,
                "partition {}: committed {} · highest indexed offset {} · end {}",
                p.partition,
                dash(p.committed),
                dash(p.max_indexed_offset),
                p.high_watermark
            )?;
        }
        if !self.missing_objects.is_empty() {
            writeln!(
                f,
                "missing objects cannot be rebuilt from the index; replay their records from Kafka while retained"
            )?;
        }
        Ok(())
    }
}

/// Sorts out what erasures explain: a missing object whose row an erasure covers is an erasure
/// under way, and an orphan that a consumer named as an erasure's leftover, or whose id an
/// erasure names, is an erased image that came back.
async fn erasures_seen(
    index: &ImageIndex,
    rows: &[crate::domain::IndexEntry],
    report: &mut VerifyReport,
) -> Result<(), AuditError> {
    use crate::domain::ErasureProbe;
    if !report.missing_objects.is_empty() {
        let missing: Vec<&crate::domain::IndexEntry> = rows
            .iter()
            .filter(|r| report.missing_objects.contains(&r.object_key))
            .collect();
        let probes: Vec<ErasureProbe> = missing
            .iter()
            .map(|r| ErasureProbe {
                image_id: r.image_id,
                customer_id: r.customer_id.clone(),
                created_at: r.created_at,
            })
            .collect();
        let erased = index.erased_among(&probes).await?;
        let gone: Vec<String> = missing
            .iter()
            .zip(erased)
            .filter(|(_, e)| *e)
            .map(|(r, _)| r.object_key.clone())
            .collect();
        report.missing_objects.retain(|k| !gone.contains(k));
        report.erased_objects_gone = gone;
    }
    if !report.orphan_objects.is_empty() {
        let leftovers = index.leftover_keys().await?;
        // An orphan has no row to say whose it is: only erasures by id can name it, with a
        // creation time no cut-off reaches.
        let ids: Vec<Option<uuid::Uuid>> = report
            .orphan_objects
            .iter()
            .map(|k| k.rsplit('/').next().and_then(|id| id.parse().ok()))
            .collect();
        let probes: Vec<ErasureProbe> = ids
            .iter()
            .flatten()
            .map(|id| ErasureProbe {
                image_id: *id,
                customer_id: String::new(),
                created_at: DateTime::<Utc>::MAX_UTC,
            })
            .collect();
        let mut by_id = index.erased_among(&probes).await?.into_iter();
        for (key, id) in report.orphan_objects.iter().zip(&ids) {
            let named = id.is_some() && by_id.next().unwrap_or(false);
            if named || leftovers.contains(key) {
                report.erased_objects_reappeared.push(key.clone());
            }
        }
    }
    Ok(())
}

/// Object reads `verify` keeps in flight while it checks checksums.
const VERIFY_READS_IN_FLIGHT: usize = 16;

/// Audits bucket against index. With `repair`, removes orphans older than `grace` (see
/// [`repair_orphans`] for why that alone is not enough).
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
    erasures_seen(index, &rows, &mut report).await?;

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
            // Streamed: a 500 MB image costs one chunk of memory per read in flight.
            let actual = hex::encode(store.streamed_sha256(&row.object_key).await?.0);
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
        repair_orphans(settings, store, index, &objects, grace, &mut report).await?;
    }

    let topic = &settings.kafka.data_topic;
    let positions = index.partition_positions(topic).await?;
    if let Ok(offsets) = fetch_group_offsets(settings, topic).await {
        report.partitions = partition_statuses(offsets, &positions);
    }
    Ok(report)
}

/// Orphan bytes `repair` holds at once: each deleted orphan is kept until it is known to stay
/// deleted, so that a delete a consumer raced can be undone.
const REPAIR_CHUNK_BYTES: u64 = 256 << 20;

/// How long `repair` waits after its deletes for the consumer group to finish every record that
/// was on the topic then. A batch's uploads, insert and commit take seconds; a group that has not
/// caught up in two minutes may be stuck mid-batch, and the deletes are undone.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// Removes the orphans older than `grace` by the store's clock, and never one a consumer indexes.
///
/// The protocol writes an object before its row, so a consumer between the two leaves a young
/// orphan for a moment: the grace period covers that. It does not cover a replay: a consumer
/// re-reading a record whose object was written long ago (a crash between put and insert, a
/// group reset) finds the old object in place and indexes it, however old it is. And a batch's
/// rows are inserted after all its uploads, so the window between finding the object and
/// indexing it is as long as the batch takes. So each orphan is
/// 1. read whole and its age taken again (it may have been rewritten since the listing),
/// 2. checked against the index just before its delete, and deleted only if no row names it;
/// 3. once the deletes are done, repair waits until the group has committed every record that
///    was on the topic then (or has no member left): a row a consumer was about to insert is in
///    the index by then. Every deleted orphan that has a row now is written back, byte for byte.
///    If the group does not settle, every deleted orphan is written back.
///
/// Step 3 is what makes the guarantee: a consumer that found an object before its delete
/// inserts the row before it commits, and repair looks after that commit.
async fn repair_orphans(
    settings: &Settings,
    store: &ImageStore,
    index: &ImageIndex,
    objects: &[StoredObject],
    grace: Duration,
    report: &mut VerifyReport,
) -> Result<(), AuditError> {
    // Listed modification times are the store's; so is the time they are compared with. A
    // grace period too long to subtract leaves every orphan young.
    let now = store.clock().await?;
    let cutoff = Age::from_std(grace)
        .ok()
        .and_then(|grace| now.checked_sub_signed(grace));
    // The store's `Date` is in whole seconds and its listing's times are not: compared in whole
    // seconds, at the cutoff counting as old, so that `--grace 0s` means every orphan, one
    // written in this very second included.
    let is_old = |modified: DateTime<Utc>| {
        cutoff.is_some_and(|c| chrono::SubsecRound::trunc_subsecs(modified, 0) <= c)
    };
    let listed: HashMap<&str, &StoredObject> =
        objects.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut chunk: Vec<&StoredObject> = Vec::new();
    let mut chunk_bytes = 0;
    let mut uploads = Vec::new();
    for key in report.orphan_objects.clone() {
        match listed.get(key.as_str()) {
            Some(o) if is_old(o.last_modified) => {
                // A producer's upload whose record never came (or has not come yet) is repaired
                // apart: see `repair_uploads`.
                match store.head(&o.key).await {
                    Ok(head) if head.producer_upload => {
                        uploads.push(o.key.clone());
                        continue;
                    }
                    Ok(_) => {}
                    Err(StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
                if !chunk.is_empty() && chunk_bytes + o.size > REPAIR_CHUNK_BYTES {
                    repair_chunk(settings, store, index, &chunk, &is_old, report).await?;
                    (chunk, chunk_bytes) = (Vec::new(), 0);
                }
                chunk_bytes += o.size;
                chunk.push(o);
            }
            _ => report.orphans_too_young.push(key),
        }
    }
    if !chunk.is_empty() {
        repair_chunk(settings, store, index, &chunk, &is_old, report).await?;
    }
    repair_uploads(settings, store, index, uploads, report).await
}

/// Removes producers' uploads that no record will ever index (docs/claim-check.md). Unlike an
/// orphan the consumer wrote, such an object cannot be written again by a replay, so it is not
/// deleted and written back on suspicion: it is deleted only once the consumer group has
/// committed everything on the data topic (read after the listing, so any record sent before the
/// upload was listed is done with), and only when no row names it just before its delete. While
/// the group lags, or has no member while records wait, every upload is kept for the next run.
async fn repair_uploads(
    settings: &Settings,
    store: &ImageStore,
    index: &ImageIndex,
    uploads: Vec<String>,
    report: &mut VerifyReport,
) -> Result<(), AuditError> {
    if uploads.is_empty() {
        return Ok(());
    }
    let settled = {
        let settings = settings.clone();
        off_thread(move || settle_blocking(&settings, false))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the consumer group's progress");
                false
            })
    };
    if !settled {
        tracing::warn!(
            group = %settings.kafka.group_id,
            uploads = uploads.len(),
            "the consumer group has not consumed the data topic to its end; producers' uploads without a row are kept"
        );
        report.orphans_kept_unsettled.extend(uploads);
        return Ok(());
    }
    let bucket = store.bucket();
    for key in uploads {
        let rows = index
            .indexed_keys(bucket, std::slice::from_ref(&key))
            .await?;
        if !rows.is_empty() {
            report.orphans_indexed_meanwhile.push(key);
            continue;
        }
        store.delete(&key).await?;
        tracing::info!(key = %key, "removed a producer's upload whose record never came");
        report.orphans_removed.push(key);
    }
    Ok(())
}

/// A deleted orphan, held until it is known to stay deleted.
struct Deleted {
    key: String,
    object: FetchedObject,
    /// Its tags, which a write-back carries again (lifecycle rules and cost reports select by
    /// them).
    tags: Vec<(String, String)>,
}

/// Steps 1-3 of [`repair_orphans`] for orphans whose bytes fit in memory together.
async fn repair_chunk(
    settings: &Settings,
    store: &ImageStore,
    index: &ImageIndex,
    orphans: &[&StoredObject],
    is_old: &impl Fn(DateTime<Utc>) -> bool,
    report: &mut VerifyReport,
) -> Result<(), AuditError> {
    let bucket = store.bucket();
    let mut deleted = Vec::new();
    // An error stops the deletes, but what was deleted is still settled and, if need be, written
    // back before the error is reported.
    let mut failed = None;
    for orphan in orphans {
        let key = &orphan.key;
        let object = match store.fetch(key).await {
            Ok(object) => object,
            // Gone since the listing: someone else's delete, nothing to repair.
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => {
                failed = Some(e.into());
                break;
            }
        };
        if !is_old(object.last_modified) {
            report.orphans_too_young.push(key.clone());
            continue;
        }
        match index.indexed_keys(bucket, std::slice::from_ref(key)).await {
            Ok(rows) if !rows.is_empty() => {
                report.orphans_indexed_meanwhile.push(key.clone());
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                failed = Some(e.into());
                break;
            }
        }
        let tags = match store.object_tags(key).await {
            Ok(tags) => tags,
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => {
                failed = Some(e.into());
                break;
            }
        };
        if let Err(e) = store.delete(key).await {
            failed = Some(e.into());
            break;
        }
        deleted.push(Deleted {
            key: key.clone(),
            object,
            tags,
        });
    }
    if !deleted.is_empty() {
        let settled = settle(settings).await;
        if !settled {
            tracing::warn!(
                group = %settings.kafka.group_id,
                limit_secs = SETTLE_LIMIT.as_secs(),
                "the consumer group did not finish the records on the topic in time; deleted orphans are written back"
            );
        }
        let keys: Vec<String> = deleted.iter().map(|d| d.key.clone()).collect();
        // Without an answer from the index, every delete is undone: any of them may be raced.
        let indexed = index.indexed_keys(bucket, &keys).await;
        for d in deleted {
            let indexed_now = indexed.as_ref().map_or(true, |rows| rows.contains(&d.key));
            if settled && !indexed_now {
                report.orphans_removed.push(d.key);
                continue;
            }
            write_back(store, &d).await?;
            if indexed_now && indexed.is_ok() {
                report.orphans_indexed_meanwhile.push(d.key);
            } else {
                report.orphans_kept_unsettled.push(d.key);
            }
        }
        indexed?;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes a deleted orphan back as it was, its tags included, with the encryption and storage
/// class of every write. A consumer may have written it already (its replay came after the
/// delete): then the store holds the same bytes, and that is success.
async fn write_back(store: &ImageStore, d: &Deleted) -> Result<(), StoreError> {
    let content_type = d
        .object
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let sha256 = sha256_hex(&d.object.bytes);
    store
        .put_image_restored(
            &d.key,
            d.object.bytes.clone(),
            content_type,
            &sha256,
            &d.tags,
        )
        .await?;
    tracing::info!(key = %d.key, "orphan written back: a consumer indexed it during repair");
    Ok(())
}

/// Waits until no batch that was in flight when it was called can still insert a row: the
/// group has committed up to the end the data topic had then, or has no member left. False
/// after [`SETTLE_LIMIT`], or when Kafka cannot say.
pub(crate) async fn settle(settings: &Settings) -> bool {
    let settings = settings.clone();
    off_thread(move || settle_blocking(&settings, true))
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the consumer group's progress");
            false
        })
}

/// True once the group has committed up to the end the data topic had when called. With
/// `memberless_settles`, a group without members counts as settled too (it has no batch in
/// flight); without it, a group without members is not waited for: false at once.
fn settle_blocking(settings: &Settings, memberless_settles: bool) -> Result<bool, BrokerError> {
    let topic = &settings.kafka.data_topic;
    let bootstrap = &settings.kafka.bootstrap_servers;
    let timeout = settings.connect_timeout;
    let ends = group_offsets(settings, topic)?;
    let consumer = crate::wiring::offsets_reader(settings)?;
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let mut tpl = TopicPartitionList::new();
        for end in &ends {
            tpl.add_partition(topic, end.partition);
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .map_err(|e| BrokerError::from_kafka(&e, bootstrap))?;
        let caught_up = ends.iter().all(|end| {
            let at = committed
                .find_partition(topic, end.partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            // Nothing to consume (an empty partition, or one retention emptied) counts as done.
            at.unwrap_or(end.low).max(end.low) >= end.high
        });
        if caught_up {
            return Ok(true);
        }
        // A group without members has no batch in flight: a member that left mid-batch stopped.
        let groups = consumer
            .fetch_group_list(Some(&settings.kafka.group_id), timeout)
            .map_err(|e| BrokerError::from_kafka(&e, bootstrap))?;
        if groups.groups().iter().all(|g| g.members().is_empty()) {
            return Ok(memberless_settles);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(partition: i32, committed: Option<i64>, indexed: Option<i64>) -> PartitionStatus {
        PartitionStatus {
            partition,
            high_watermark: 10,
            committed,
            lag: 10 - committed.unwrap_or(0),
            max_indexed_offset: indexed,
            indexed_rows: indexed.map_or(0, |o| o + 1),
        }
    }

    #[test]
    fn status_renders_a_table_of_partitions_then_the_totals() {
        let status = Status {
            topic: "images".into(),
            group: "imgstream".into(),
            partitions: vec![partition(0, Some(8), Some(7)), partition(1, None, None)],
            total_lag: 12,
            index_rows: 8,
            bucket_objects: Some(9),
            dlq_topic: "images-dlq".into(),
            dlq_depth: 1,
        };
        assert_eq!(
            status.render("pictures").lines().collect::<Vec<_>>(),
            [
                "topic images · group imgstream",
                "partition   end offset    committed        lag    max indexed       rows",
                "        0           10            8          2              7          8",
                "        1           10            -         10              -          0",
                "total lag        12",
                "index rows       8 (bucket pictures)",
                "bucket objects   9 (bucket pictures)",
                "dead letters     1 (topic images-dlq)",
            ]
        );
    }

    #[test]
    fn a_verify_report_renders_one_line_per_finding_and_what_to_do_about_missing_objects() {
        let report = VerifyReport {
            objects: 2,
            rows: 2,
            missing_objects: vec!["images/aa/x".into()],
            orphans_too_young: vec!["images/bb/y".into()],
            checksums_checked: 1,
            partitions: vec![partition(0, Some(5), None)],
            ..VerifyReport::default()
        };
        assert_eq!(
            report.to_string(),
            "objects 2 · rows 2 · checksums checked 1\n\
             missing object: images/aa/x\n\
             orphan kept (younger than grace): images/bb/y\n\
             partition 0: committed 5 · highest indexed offset - · end 10\n\
             missing objects cannot be rebuilt from the index; replay their records from Kafka while retained\n"
        );
    }
}
