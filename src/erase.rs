//! `imgstream erase` and `imgstream retain`: forgetting images, each request kept as an erasure.
//!
//! One request, in this order:
//! 1. **Record it** ([`ImageIndex::open_erasure`]), under the erasure lock: from its commit on,
//!    every consumer leaves out what it covers, before uploading and again in its index
//!    transaction. A request that a killed run left unfinished is found and resumed instead, so
//!    a request is one erasure however many runs it takes.
//! 2. **Delete in batches**: a batch of rows it covers, their objects and thumbnails, then the
//!    rows (and the counts, in the same transaction). Objects go first: a run killed in between
//!    finds the same rows again; the other order would leave objects no row leads to.
//! 3. **Wait for the batches in flight** ([`crate::audit::settle`]): a consumer that checked a
//!    record before the erasure was recorded may still upload its object. Its index
//!    transaction refuses the row and names the object a leftover; once the group has committed
//!    what was on the topic when step 1 ended (or has no member), no such upload can come.
//! 4. **Remove the leftovers**, delete once more (step 2 again finds nothing, unless something
//!    slipped through), and only then mark the erasure finished. A group that does not settle
//!    leaves it unfinished, said so; the next run of the same request finishes it.

use crate::config::Settings;
use crate::domain::{Erasing, thumbnail_key};
use crate::index::{ErasureRecord, ImageIndex, IndexError};
use crate::store::{ImageStore, StoreError};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use thiserror::Error;

/// Deletes in flight at once.
const DELETES_IN_FLIGHT: usize = 16;

#[derive(Debug, Error)]
pub enum EraseError {
    /// The request cannot be carried out as asked; nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How to carry out a request.
#[derive(Debug, Clone)]
pub struct EraseOptions {
    /// Say what would be erased, change nothing.
    pub dry_run: bool,
    /// Rows (and their objects) per batch: bounds each transaction and the work lost to a kill.
    pub batch_size: usize,
    /// Who asked: kept with the erasure.
    pub requested_by: String,
    /// Record a customer's erasure even when the index holds no image of theirs yet: their
    /// records may still be on the topic, unconsumed, and would be stored later otherwise.
    pub record_anyway: bool,
}

/// What a request asks, before it is given a cut-off by the database's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A customer's images, created before `before` if given (else before the request).
    Customer {
        customer_id: String,
        before: Option<DateTime<Utc>>,
    },
    Images(Vec<uuid::Uuid>),
    /// Every image created longer ago than the retention period.
    Retention(std::time::Duration),
}

/// What a run did, or with --dry-run would do.
#[derive(Debug, Clone, Serialize)]
pub struct EraseReport {
    pub dry_run: bool,
    /// What is erased, in words.
    pub erasing: String,
    /// Rows the request covers now (with --dry-run: what a run would remove).
    pub rows_covered: i64,
    /// The erasure as recorded at the end of the run (none with --dry-run).
    pub erasure: Option<ErasureRecord>,
    /// A run killed earlier left this erasure unfinished, and this run went on with it.
    pub resumed: bool,
    /// Rows and objects this run removed (the erasure's totals include earlier runs).
    pub rows_removed_now: u64,
    pub objects_removed_now: u64,
    /// Objects consumers wrote for records already erased, removed now.
    pub leftovers_removed: u64,
    /// A customer the index holds no image of, recorded on request (--record-anyway): nothing
    /// was there to remove, and no consumer will store one of their images from before the cut-off.
    pub customer_unseen: bool,
    pub finished: bool,
    /// Why it is not finished, and what to do.
    pub unfinished_because: Option<String>,
}

impl EraseReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.dry_run {
            out.push_str(&format!(
                "dry run: would erase {} ({} rows, their objects and thumbnails){}; nothing changed\n",
                self.erasing,
                self.rows_covered,
                match self.customer_unseen {
                    true => ", and record it although the index holds no image of theirs yet",
                    false => "",
                }
            ));
            return out;
        }
        if self.customer_unseen && self.finished {
            out.push_str(&format!(
                "{}: no image of theirs was stored, 0 erased; recorded, so no consumer will store one from before the cut-off\n",
                self.erasing
            ));
        }
        if let Some(e) = &self.erasure {
            out.push_str(&format!(
                "erasure {} ({}): {}{}\n",
                e.erasure_id,
                self.erasing,
                if self.resumed {
                    "resumed an unfinished run; "
                } else {
                    ""
                },
                match self.finished {
                    true => "finished",
                    false => "NOT finished",
                }
            ));
            out.push_str(&format!(
                "  this run removed {} rows and {} objects ({} left by consumers); in all {} rows and {} objects\n",
                self.rows_removed_now,
                self.objects_removed_now,
                self.leftovers_removed,
                e.rows_removed,
                e.objects_removed
            ));
            out.push_str(&format!(
                "  requested by {} as {}, started {}{}\n",
                e.requested_by,
                e.database_role,
                e.started_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                e.finished_at
                    .map(|t| format!(
                        ", finished {}",
                        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    ))
                    .unwrap_or_default()
            ));
        }
        if let Some(why) = &self.unfinished_because {
            out.push_str(&format!("  not finished: {why}\n"));
        }
        out
    }
}

/// Progress as rows are removed: (removed so far, rows covered when the run began).
pub trait Progress {
    fn removed(&self, done: u64, total: u64);
}

impl<F: Fn(u64, u64)> Progress for F {
    fn removed(&self, done: u64, total: u64) {
        self(done, total)
    }
}

/// Carries out one request: see the module's docs for the order and why.
pub async fn erase(
    settings: &Settings,
    index: &ImageIndex,
    store: &ImageStore,
    request: &Request,
    opts: &EraseOptions,
    progress: &dyn Progress,
) -> Result<EraseReport, EraseError> {
    let erasing = resolve(index, request).await?;
    let rows_covered = index.count_erasable(&erasing).await?;
    let mut report = EraseReport {
        dry_run: opts.dry_run,
        erasing: erasing.to_string(),
        rows_covered,
        erasure: None,
        resumed: false,
        rows_removed_now: 0,
        objects_removed_now: 0,
        leftovers_removed: 0,
        customer_unseen: false,
        finished: false,
        unfinished_because: None,
    };
    if let Erasing::Customer { customer_id, .. } = &erasing {
        // A typo must not pass for an erasure: a customer the index has never held is refused,
        // unless an earlier run of this request (which removed them all) is to be finished.
        let unfinished = index.erasures().await?.into_iter().any(|e| {
            e.finished_at.is_none()
                && matches!(&e.erasing, Erasing::Customer { customer_id: c, .. } if c == customer_id)
        });
        if !unfinished && !index.customer_known(customer_id).await? {
            if !opts.record_anyway {
                return Err(EraseError::Refused(format!(
                    "customer {customer_id:?} has no stored image: 0 erased, nothing recorded (customer ids are matched exactly); if their images may still be on the topic, unconsumed, add --record-anyway to record the erasure so that no consumer stores them"
                )));
            }
            report.customer_unseen = true;
        }
    }
    if opts.dry_run {
        return Ok(report);
    }
    let (erasure, resumed) = index.open_erasure(&erasing, &opts.requested_by).await?;
    // A resumed request keeps the cut-off of its first run.
    let erasing = erasure.erasing.clone();
    report.resumed = resumed;
    let total = rows_covered.max(0) as u64;
    let deleting = Deleting {
        index,
        store,
        erasing: &erasing,
        erasure_id: erasure.erasure_id,
        batch_size: opts.batch_size.max(1) as i64,
        progress: &|done| progress.removed(done, total),
    };
    deleting.covered(&mut report).await?;
    let settled = crate::audit::settle(settings).await;
    report.leftovers_removed = remove_leftovers(index, store, erasure.erasure_id).await?;
    report.objects_removed_now += report.leftovers_removed;
    // Anything a consumer committed before the erasure was recorded was found in the first
    // pass; this one costs one query and would catch what slipped through.
    deleting.covered(&mut report).await?;
    if settled {
        report.erasure = Some(index.finish_erasure(erasure.erasure_id).await?);
        report.finished = true;
    } else {
        report.erasure = Some(index.erasure(erasure.erasure_id).await?);
        report.unfinished_because = Some(format!(
            "consumer group {} did not finish the records it held within {} s (or Kafka did not answer), so a consumer may still write an object of this erasure; run the same command again",
            settings.kafka.group_id,
            crate::audit::SETTLE_LIMIT.as_secs()
        ));
    }
    Ok(report)
}

/// The request with its cut-off by the database's clock, checked.
async fn resolve(index: &ImageIndex, request: &Request) -> Result<Erasing, EraseError> {
    let now = index.now().await?;
    Ok(match request {
        Request::Customer {
            customer_id,
            before,
        } => {
            if customer_id.trim().is_empty() {
                return Err(EraseError::Refused(
                    "--customer is empty; name the customer whose images to erase".into(),
                ));
            }
            if let Some(before) = before
                && *before > now
            {
                return Err(EraseError::Refused(format!(
                    "--before {} is in the future (the database's clock says {}); images not yet created cannot be erased, leave --before out to erase everything so far",
                    before.to_rfc3339(),
                    now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
            Erasing::Customer {
                customer_id: customer_id.clone(),
                cutoff: before.unwrap_or(now),
                before_given: before.is_some(),
            }
        }
        Request::Images(ids) => {
            let mut ids = ids.clone();
            ids.sort();
            ids.dedup();
            if ids.is_empty() {
                return Err(EraseError::Refused("--image names no image".into()));
            }
            Erasing::Images(ids)
        }
        Request::Retention(period) => {
            let period = chrono::Duration::from_std(*period)
                .map_err(|_| EraseError::Refused("the retention period is too long".into()))?;
            let cutoff = now.checked_sub_signed(period).ok_or_else(|| {
                EraseError::Refused("the retention period reaches before any date".into())
            })?;
            Erasing::Retention { cutoff }
        }
    })
}

/// Step 2 of one erasure: what it deletes and where, and whom to tell how far it got.
struct Deleting<'a> {
    index: &'a ImageIndex,
    store: &'a ImageStore,
    erasing: &'a Erasing,
    erasure_id: i64,
    batch_size: i64,
    progress: &'a dyn Fn(u64),
}

impl Deleting<'_> {
    /// Batches of rows, objects first, until none is covered.
    async fn covered(&self, report: &mut EraseReport) -> Result<(), EraseError> {
        let (index, store) = (self.index, self.store);
        loop {
            let batch = index.erasable_batch(self.erasing, self.batch_size).await?;
            if batch.is_empty() {
                return Ok(());
            }
            if let Some(other) = batch.iter().find(|b| b.bucket != store.bucket()) {
                return Err(EraseError::Refused(format!(
                    "image {} is in bucket {}, but MINIO_BUCKET_NAME is {}; erase with that bucket's settings",
                    other.image_id,
                    other.bucket,
                    store.bucket()
                )));
            }
            let keys: Vec<String> = batch.iter().map(|b| b.object_key.clone()).collect();
            let thumbnails: Vec<String> =
                batch.iter().map(|b| thumbnail_key(&b.image_id)).collect();
            delete_objects(store, keys.iter().chain(&thumbnails)).await?;
            let ids: Vec<_> = batch.iter().map(|b| b.image_id).collect();
            let removed = index
                .remove_rows(self.erasure_id, &ids, batch.len() as i64)
                .await?;
            report.rows_removed_now += removed;
            report.objects_removed_now += batch.len() as u64;
            (self.progress)(report.rows_removed_now);
        }
    }
}

/// Step 4: objects consumers wrote for records they then found erased. An object that a row
/// names now belongs to that row (another record of the same id and bytes) and stays.
async fn remove_leftovers(
    index: &ImageIndex,
    store: &ImageStore,
    erasure_id: i64,
) -> Result<u64, EraseError> {
    let mut removed = 0;
    loop {
        let found = index.leftovers(500).await?;
        if found.is_empty() {
            return Ok(removed);
        }
        let unowned: Vec<String> = found
            .iter()
            .filter(|(_, bucket, indexed)| !indexed && bucket == store.bucket())
            .map(|(key, _, _)| key.clone())
            .collect();
        let thumbnails: Vec<String> = unowned
            .iter()
            .filter_map(|k| k.rsplit('/').next().and_then(|id| id.parse().ok()))
            .map(|id| thumbnail_key(&id))
            .collect();
        delete_objects(store, unowned.iter().chain(&thumbnails)).await?;
        let keys: Vec<String> = found.into_iter().map(|(key, _, _)| key).collect();
        index
            .remove_leftovers(erasure_id, &keys, unowned.len() as i64)
            .await?;
        removed += unowned.len() as u64;
    }
}

async fn delete_objects<'a>(
    store: &ImageStore,
    keys: impl Iterator<Item = &'a String>,
) -> Result<(), StoreError> {
    let results: Vec<Result<(), StoreError>> = futures::stream::iter(keys)
        .map(|key| store.delete(key))
        .buffer_unordered(DELETES_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}
