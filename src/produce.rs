//! `imgstream produce`: generates realistic images and sends them as Avro records, checking every
//! delivery report. Generation and encoding run on blocking workers (one per core) feeding a
//! bounded channel, so the producer never holds more than a few images it has not yet sent.
//!
//! An image is encoded into an [`UploadWriter`] as it is drawn: one too large for the topic goes
//! to the bucket in parts while it is still being made (docs/claim-check.md, "Memory"), so a
//! large image costs a few parts of memory, not its size; and large images are made one at a time.

use crate::config::Settings;
use crate::domain::{ImageFormat, ImageRecord, ImageReference, object_key};
use crate::generate::{ImageSpec, render, render_to};
use crate::kafka::BrokerError;
use crate::schema::{RegistryError, codec, value_subject};
use crate::shutdown::Shutdown;
use crate::store::{ImageStore, ObjectLabels, PendingUpload, SpoolError, SpooledBody, UploadShape};
use apache_avro::Schema;
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// Images per second; 0 means as fast as possible.
    pub rate: f64,
    pub width: (u32, u32),
    pub height: (u32, u32),
    pub formats: Vec<ImageFormat>,
    pub customer_id: String,
    pub seed: u64,
    pub sources: u32,
    /// What each record is keyed by, and so which partition it lands in.
    pub key: RecordKey,
    /// The value schema to register and write with (the repository's file unless overridden).
    pub schema: String,
    pub progress: bool,
}

/// The record key, which the producer's partitioner (murmur2, as Java's) hashes to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordKey {
    /// The source (camera) id: one source's images land on one partition, in the order sent,
    /// and are stored in that order; partitions fill as unevenly as the sources hash.
    #[default]
    Source,
    /// The image id: records spread evenly over the partitions, with no order kept between two
    /// images of the same source.
    Image,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProduceSummary {
    pub topic: String,
    pub schema_id: u32,
    pub generated: u64,
    pub delivered: u64,
    pub failed: u64,
    pub refused_too_large: u64,
    /// Images too large for the topic, uploaded to the bucket before their record was sent.
    pub uploaded: u64,
    pub bytes_delivered: u64,
    pub elapsed_secs: f64,
    pub images_per_sec: f64,
    pub mb_per_sec: f64,
    pub interrupted: bool,
    pub first_error: Option<String>,
    /// The producer's peak resident memory (VmHWM), for the memory bound of large images.
    pub peak_rss_kib: u64,
}

/// The one line `imgstream produce` prints.
impl std::fmt::Display for ProduceSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "produced {} of {} generated images to {} ({:.1} MB) in {:.1}s: {:.0} images/s, {:.1} MB/s; failed {}, refused as too large {}",
            self.delivered,
            self.generated,
            self.topic,
            self.bytes_delivered as f64 / 1e6,
            self.elapsed_secs,
            self.images_per_sec,
            self.mb_per_sec,
            self.failed,
            self.refused_too_large
        )
    }
}

#[derive(Debug, Error)]
pub enum ProduceError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("schema file is not valid Avro: {0}")]
    Schema(String),
    #[error("image generation failed: {0}")]
    Generate(String),
    #[error(
        "{0}; consumers would dead-letter every image, so nothing is sent (PRODUCER_CUSTOMER_ID)"
    )]
    CustomerId(crate::validate::Invalid),
}

/// One image made: a record ready to send, or why there is none.
enum Prepared {
    Record(Box<Ready>),
    /// Its encoding passed IMGSTREAM_MAX_IMAGE_BYTES; nothing was sent or kept.
    TooLarge,
    /// Its parts could not be uploaded.
    UploadFailed(String),
}

struct Ready {
    key: String,
    payload: Vec<u8>,
    timestamp_ms: i64,
    image_bytes: usize,
    /// An image too large for the topic: uploaded first, then the record (which references it)
    /// is sent.
    upload: Option<Upload>,
    /// Held until the image is uploaded and its record handed to the producer: large images are
    /// made and held one at a time (`LARGE_IMAGES_AT_ONCE`).
    _held: Option<tokio::sync::OwnedSemaphorePermit>,
}

struct Upload {
    object_key: String,
    body: UploadBody,
    content_type: String,
    sha256: String,
    customer_id: String,
    source_id: String,
}

enum UploadBody {
    /// At most one part: uploaded in one PUT by the sending loop.
    Whole(Bytes),
    /// Uploaded in parts while it was made; completed by the sending loop.
    Parts(Box<PendingUpload>),
}

/// Images above this many pixels are made at most [`LARGE_IMAGES_AT_ONCE`] at a time: their
/// encoding goes out in parts as it is made, so one costs `(parts in flight + 1) * part size`
/// of memory, and two would cost twice that.
const LARGE_IMAGE_PIXELS: u64 = 4_000_000;

/// Inside one image, encoding already overlaps its uploads.
const LARGE_IMAGES_AT_ONCE: usize = 1;

/// Parts of one image on their way to the store while the next is filled.
const PARTS_IN_FLIGHT: usize = 2;

/// The per-image seed: the run's seed mixed with the image's index (splitmix64), so image `n` of
/// a seeded run is the same whatever the number of workers.
fn image_seed(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What image `n` of a run shows: its size and format, its source, and the seed it is drawn with.
fn seeded_spec(opts: &ProduceOptions, n: u64) -> (ImageSpec, String, u64) {
    let seed = image_seed(opts.seed, n);
    let mut rng = SmallRng::seed_from_u64(seed);
    let spec = ImageSpec {
        width: rng.gen_range(opts.width.0..=opts.width.1),
        height: rng.gen_range(opts.height.0..=opts.height.1),
        format: opts.formats[rng.gen_range(0..opts.formats.len())],
    };
    let source = format!("source-{:04}", rng.gen_range(0..opts.sources.max(1)));
    (spec, source, seed)
}

/// The image (not the record) that image `n` of a run shows: its size, format, source and bytes.
pub fn seeded_image(opts: &ProduceOptions, n: u64) -> Result<(ImageSpec, String, Vec<u8>), String> {
    let (spec, source, seed) = seeded_spec(opts, n);
    let data = render(&spec, seed).map_err(|e| e.to_string())?;
    Ok((spec, source, data))
}

/// What every worker needs to make an image into a record.
struct Maker {
    opts: ProduceOptions,
    schema: Schema,
    schema_id: u32,
    inline_max_bytes: usize,
    max_image_bytes: usize,
    store: ImageStore,
    shape: UploadShape,
    runtime: tokio::runtime::Handle,
}

/// Draws and encodes image `n` into an upload writer, which keeps it whole while it is small and
/// uploads it in parts once it passes a part; then makes its record: inline, or a reference.
fn prepare(m: &Maker, n: u64) -> Result<Prepared, String> {
    let (spec, source_id, seed) = seeded_spec(&m.opts, n);
    let image_id = Uuid::new_v4();
    let object_key = object_key(&image_id);
    let content_type = spec.format.content_type().to_string();
    let labels = ObjectLabels {
        customer: &m.opts.customer_id,
        source: &source_id,
    };
    let mut writer = m.store.upload_writer(
        m.runtime.clone(),
        &object_key,
        &content_type,
        labels,
        m.shape,
        m.max_image_bytes as u64,
    );
    let rendered = render_to(&spec, seed, &mut writer);
    // The writer's failure is the cause of any the encoder reports.
    let spooled = match writer.finish() {
        Ok(spooled) => spooled,
        Err(SpoolError::TooLarge { .. }) => return Ok(Prepared::TooLarge),
        Err(SpoolError::Store(e)) => {
            return Ok(Prepared::UploadFailed(format!(
                "upload of {object_key} failed: {e}"
            )));
        }
    };
    rendered.map_err(|e| e.to_string())?;
    let created_at = Utc::now();
    let image_bytes = spooled.size as usize;
    let mut record = ImageRecord {
        image_id,
        customer_id: m.opts.customer_id.clone(),
        source_id: source_id.clone(),
        created_at,
        content_type,
        width: spec.width,
        height: spec.height,
        sha256: spooled.sha256,
        data: Bytes::new(),
        reference: None,
    };
    let upload = match spooled.body {
        SpooledBody::Whole(data) if data.len() <= m.inline_max_bytes => {
            record.data = data;
            None
        }
        body => {
            // Too large for the topic: the claim check (docs/claim-check.md). The record names
            // the image's own key, its size and checksum, and carries no bytes.
            record.reference = Some(ImageReference {
                key: object_key.clone(),
                size: image_bytes as u64,
                sha256: record.sha256.clone(),
            });
            Some(Upload {
                object_key,
                body: match body {
                    SpooledBody::Whole(data) => UploadBody::Whole(data),
                    SpooledBody::Parts(pending) => UploadBody::Parts(pending),
                },
                content_type: record.content_type.clone(),
                sha256: record.sha256.clone(),
                customer_id: record.customer_id.clone(),
                source_id: record.source_id.clone(),
            })
        }
    };
    let payload = codec::encode(&m.schema, m.schema_id, &record).map_err(|e| e.to_string())?;
    let key = match m.opts.key {
        RecordKey::Source => source_id,
        RecordKey::Image => record.image_id.to_string(),
    };
    Ok(Prepared::Record(Box::new(Ready {
        key,
        payload,
        timestamp_ms: created_at.timestamp_millis(),
        image_bytes,
        upload,
        _held: None,
    })))
}

/// Produces until the count or duration is reached, or shutdown; then waits for every delivery
/// report still outstanding and returns the tally.
pub async fn produce(
    settings: &Settings,
    opts: ProduceOptions,
    shutdown: Shutdown,
) -> Result<ProduceSummary, ProduceError> {
    let schema =
        Schema::parse_str(&opts.schema).map_err(|e| ProduceError::Schema(e.to_string()))?;
    crate::validate::check_id("customer_id", &opts.customer_id, &settings.limits.ids)
        .map_err(ProduceError::CustomerId)?;
    let registry = crate::wiring::registry(settings)?;
    // Registering is idempotent: the id of an identical schema comes back. An incompatible change
    // is refused here with the registry's reason, before anything is sent.
    let schema_id = registry
        .register(&value_subject(&settings.kafka.data_topic), &opts.schema)
        .await?;
    let producer = Arc::new(crate::wiring::producer(settings)?);
    // Best effort: an unreachable broker is reported by the deliveries, as before.
    if let Err(e) = producer.warm_up(settings.connect_timeout).await {
        tracing::debug!(error = %e, "producer warm-up failed");
    }
    let max_image_bytes = settings.limits.max_image_bytes;
    let max_payload = settings.limits.max_message_bytes();
    let inline_max_bytes = settings.limits.inline_max_bytes;
    // The bucket, for images too large for the topic (building the client sends nothing).
    let largest = u64::from(opts.width.1) * u64::from(opts.height.1);
    let store = crate::wiring::store(settings)?;
    let shape = UploadShape {
        part_bytes: settings.limits.upload_part_bytes,
        parts_in_flight: PARTS_IN_FLIGHT,
    };
    let large_images = (largest > LARGE_IMAGE_PIXELS)
        .then(|| Arc::new(tokio::sync::Semaphore::new(LARGE_IMAGES_AT_ONCE)));
    let runtime = tokio::runtime::Handle::current();

    let started = Instant::now();
    let total = opts.count.unwrap_or(u64::MAX);
    let deadline = opts.duration.map(|d| started + d);
    let stop = Arc::new(AtomicBool::new(false));
    let next_index = Arc::new(AtomicU64::new(0));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (tx, mut rx) = mpsc::channel::<Result<Prepared, String>>(workers * 2);
    let maker = Arc::new(Maker {
        opts: opts.clone(),
        schema,
        schema_id,
        inline_max_bytes,
        max_image_bytes,
        store: store.clone(),
        shape,
        runtime: runtime.clone(),
    });
    for _ in 0..workers {
        let (tx, stop, next_index, maker) =
            (tx.clone(), stop.clone(), next_index.clone(), maker.clone());
        let (large_images, runtime) = (large_images.clone(), runtime.clone());
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::Relaxed) {
                let held = match &large_images {
                    Some(s) => match runtime.block_on(s.clone().acquire_owned()) {
                        Ok(permit) => Some(permit),
                        Err(_) => break,
                    },
                    None => None,
                };
                let n = next_index.fetch_add(1, Ordering::Relaxed);
                if n >= total || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let prepared = prepare(&maker, n).map(|mut p| {
                    if let Prepared::Record(ready) = &mut p {
                        ready._held = held;
                    }
                    p
                });
                if tx.blocking_send(prepared).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let progress = Progress::new(opts.progress, opts.count);
    let mut summary = ProduceSummary {
        topic: producer.topic().to_string(),
        schema_id,
        generated: 0,
        delivered: 0,
        failed: 0,
        refused_too_large: 0,
        uploaded: 0,
        bytes_delivered: 0,
        elapsed_secs: 0.0,
        images_per_sec: 0.0,
        mb_per_sec: 0.0,
        interrupted: false,
        first_error: None,
        peak_rss_kib: 0,
    };
    let mut in_flight = FuturesUnordered::new();
    let interval = (opts.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / opts.rate));
    let mut next_send = tokio::time::Instant::now();

    loop {
        let prepared = tokio::select! {
            biased;
            _ = shutdown.triggered() => { summary.interrupted = true; break; }
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                tally(&mut summary, done, &progress);
                continue;
            }
            p = rx.recv() => match p { Some(p) => p, None => break },
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(ProduceError::Generate(e));
            }
        };
        summary.generated += 1;
        let prepared = match prepared {
            Prepared::Record(ready) => ready,
            Prepared::TooLarge => {
                summary.refused_too_large += 1;
                let msg = format!(
                    "image larger than {max_image_bytes} bytes refused before sending (IMGSTREAM_MAX_IMAGE_BYTES); use a smaller --width/--height"
                );
                if summary.first_error.is_none() {
                    warn!("{msg}");
                    summary.first_error = Some(msg);
                }
                continue;
            }
            Prepared::UploadFailed(msg) => {
                summary.failed += 1;
                if summary.first_error.is_none() {
                    warn!("{msg}");
                    summary.first_error = Some(msg);
                }
                continue;
            }
        };
        if prepared.image_bytes > max_image_bytes || prepared.payload.len() > max_payload {
            summary.refused_too_large += 1;
            let msg = format!(
                "image of {} bytes refused before sending: the limit is {max_image_bytes} bytes (IMGSTREAM_MAX_IMAGE_BYTES; topic max.message.bytes {max_payload}); use a smaller --width/--height",
                prepared.image_bytes
            );
            if summary.first_error.is_none() {
                warn!("{msg}");
                summary.first_error = Some(msg);
            }
            continue;
        }
        let mut prepared = prepared;
        if let Some(upload) = prepared.upload.take() {
            // The upload first, and only then (after the pacing of --rate) the record that names
            // it: a record never points at an object that is not there yet. A producer that dies
            // in between leaves an orphan for `verify --repair` (docs/claim-check.md). Parts
            // uploaded while the image was made are invisible until completed here.
            let Upload {
                object_key,
                body,
                content_type,
                sha256,
                customer_id,
                source_id,
            } = upload;
            let labels = ObjectLabels {
                customer: &customer_id,
                source: &source_id,
            };
            let uploading = async {
                match body {
                    UploadBody::Whole(data) => {
                        store
                            .upload_image(&object_key, data, &content_type, &sha256, labels, shape)
                            .await
                    }
                    UploadBody::Parts(pending) => pending.complete().await,
                }
            };
            let uploaded = tokio::select! {
                biased;
                _ = shutdown.triggered() => { summary.interrupted = true; break; }
                u = uploading => u,
            };
            if let Err(e) = uploaded {
                summary.failed += 1;
                let msg = format!("upload of {object_key} failed: {e}");
                if summary.first_error.is_none() {
                    warn!("{msg}");
                    summary.first_error = Some(msg);
                }
                continue;
            }
            summary.uploaded += 1;
        }
        if let Some(interval) = interval {
            tokio::select! {
                _ = tokio::time::sleep_until(next_send) => {}
                _ = shutdown.triggered() => { summary.interrupted = true; break; }
            }
            next_send = next_send.max(tokio::time::Instant::now() - interval) + interval;
        }
        // A span per record while tracing is on, ended by the broker's acknowledgement; its
        // context travels in the record's `traceparent` header.
        let span = crate::telemetry::spans::produce(producer.topic(), &prepared.key);
        let headers = span.as_ref().map_or(&[][..], |s| &s.headers[..]);
        let delivery = producer
            .enqueue_with(
                &prepared.key,
                &prepared.payload,
                prepared.timestamp_ms,
                headers,
            )
            .await?;
        let size = prepared.image_bytes as u64;
        // The image's bytes (and its place among the large ones) go now: the record is sent.
        drop(prepared);
        in_flight.push(async move {
            let report = delivery.await;
            if let (Some(span), Ok(Err((e, _)))) = (&span, &report) {
                span.failed(&e.to_string());
            }
            (report, size)
        });
        // Delivery reports are drained as they come, so this set stays near the broker's pace.
        while in_flight.len() > 10_000 {
            if let Some(done) = in_flight.next().await {
                tally(&mut summary, done, &progress);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    if summary.interrupted {
        info!(
            in_flight = in_flight.len(),
            "interrupted: waiting for the records already sent"
        );
    }
    // Every record handed to librdkafka gets its report: delivered, or failed after message.timeout.ms.
    while let Some(done) = in_flight.next().await {
        tally(&mut summary, done, &progress);
    }
    progress.finish();
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    summary.elapsed_secs = elapsed;
    summary.images_per_sec = summary.delivered as f64 / elapsed;
    summary.mb_per_sec = summary.bytes_delivered as f64 / elapsed / 1e6;
    summary.peak_rss_kib = crate::pipeline::usage::own().peak_rss_kib;
    Ok(summary)
}

type Report = (
    Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
    u64,
);

fn tally(summary: &mut ProduceSummary, (report, size): Report, progress: &Progress) {
    match report {
        Ok(Ok(_)) => {
            summary.delivered += 1;
            summary.bytes_delivered += size;
            progress.delivered(summary.delivered, summary.bytes_delivered);
        }
        Ok(Err((e, _))) => {
            summary.failed += 1;
            if summary.first_error.is_none() {
                let msg = format!("delivery failed: {e}");
                warn!("{msg}");
                summary.first_error = Some(msg);
            }
        }
        Err(_) => {
            summary.failed += 1;
            summary
                .first_error
                .get_or_insert_with(|| "delivery report lost (producer dropped)".into());
        }
    }
}

/// A progress bar on a terminal, a log line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_log: std::sync::Mutex<Instant>,
}

impl Progress {
    fn new(terminal: bool, total: Option<u64>) -> Self {
        let bar = terminal.then(|| {
            let bar = match total {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::no_length(),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} images  {per_sec}  {msg}  ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
            last_log: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn delivered(&self, count: u64, bytes: u64) {
        let mb_s = bytes as f64 / self.started.elapsed().as_secs_f64().max(1e-9) / 1e6;
        if let Some(bar) = &self.bar {
            bar.set_position(count);
            bar.set_message(format!("{mb_s:.1} MB/s"));
        } else if let Ok(mut last) = self.last_log.lock()
            && last.elapsed() >= Duration::from_secs(5)
        {
            *last = Instant::now();
            let rate = count as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            info!(
                delivered = count,
                images_per_sec = format!("{rate:.0}"),
                mb_per_sec = format!("{mb_s:.1}"),
                "producing"
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::IMAGE_RECORD_SCHEMA;

    fn opts(seed: u64) -> ProduceOptions {
        ProduceOptions {
            count: Some(3),
            duration: None,
            rate: 0.0,
            width: (32, 64),
            height: (32, 64),
            formats: ImageFormat::ALL.to_vec(),
            customer_id: "c".into(),
            seed,
            sources: 4,
            key: RecordKey::Source,
            schema: IMAGE_RECORD_SCHEMA.into(),
            progress: false,
        }
    }

    #[test]
    fn a_seed_fixes_every_image_of_a_run() {
        for n in 0..5 {
            assert_eq!(
                seeded_image(&opts(9), n).unwrap(),
                seeded_image(&opts(9), n).unwrap()
            );
        }
        assert_ne!(
            seeded_image(&opts(9), 0).unwrap().2,
            seeded_image(&opts(10), 0).unwrap().2
        );
    }

    #[test]
    fn sizes_formats_and_sources_stay_within_the_options() {
        let o = opts(1);
        for n in 0..30 {
            let (spec, source, _) = seeded_image(&o, n).unwrap();
            assert!((32..=64).contains(&spec.width) && (32..=64).contains(&spec.height));
            assert!(source.starts_with("source-000") && source.as_str() < "source-0004");
        }
    }
}
