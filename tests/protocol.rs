//! The commit protocol, proven on the in-memory twins of the ports: the same pipeline code the
//! consumer runs, with no service started. Each test is one behaviour; crashes are made by
//! dropping the running pipeline at a chosen point, as a killed process would stop there.

use bytes::Bytes;
use imgstream::domain::{ImageFormat, ImageRecord, object_key, sha256_hex};
use imgstream::fakes::{Flaky, MemoryDeadLetters, MemoryIndex, MemorySchemas, MemorySource};
use imgstream::generate::{ImageSpec, render};
use imgstream::pipeline::letter::{MAX_REASON_BYTES, headers};
use imgstream::pipeline::retry::Backoff;
use imgstream::pipeline::{
    Failure, Pipeline, PipelineError, PipelineOptions, Ports, Positions, RecordHeader, RunSummary,
    StopReason,
};
use imgstream::schema::{IMAGE_RECORD_SCHEMA, ImageCodec, codec};
use imgstream::shutdown::{Shutdown, ShutdownTrigger};
use imgstream::store::ImageStore;
use imgstream::validate::Limits;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const TOPIC: &str = "images";
const SCHEMA_ID: u32 = 1;

/// The four ports in memory, each with scripted failures, and the registry.
struct Services {
    source: Arc<MemorySource>,
    images: Arc<Flaky<ImageStore>>,
    index: Arc<Flaky<MemoryIndex>>,
    letters: Arc<Flaky<MemoryDeadLetters>>,
    schemas: Arc<MemorySchemas>,
}

impl Services {
    fn new(partitions: i32) -> Self {
        Services {
            source: Arc::new(MemorySource::new(TOPIC, partitions)),
            images: Arc::new(Flaky::new(ImageStore::in_memory("bucket"))),
            index: Arc::new(Flaky::new(MemoryIndex::default())),
            letters: Arc::new(Flaky::new(MemoryDeadLetters::default())),
            schemas: Arc::new(MemorySchemas::with(&[(SCHEMA_ID, IMAGE_RECORD_SCHEMA)])),
        }
    }

    /// The same services, with a dead-letter topic that takes records up to `max_message_bytes`.
    fn with_dead_letter_limit(partitions: i32, max_message_bytes: usize) -> Self {
        Services {
            letters: Arc::new(Flaky::new(MemoryDeadLetters::with_max_message_bytes(
                max_message_bytes,
            ))),
            ..Services::new(partitions)
        }
    }

    fn pipeline(&self, opts: PipelineOptions) -> (Pipeline, ShutdownTrigger) {
        let (trigger, shutdown) = Shutdown::new();
        let ports = Ports {
            source: self.source.clone(),
            codec: Arc::new(
                ImageCodec::new(IMAGE_RECORD_SCHEMA, self.schemas.clone(), "images-value").unwrap(),
            ),
            images: self.images.clone(),
            index: self.index.clone(),
            dead_letters: self.letters.clone(),
        };
        (Pipeline::new(ports, opts, shutdown), trigger)
    }

    /// Runs a pipeline until it is idle; its result and summary.
    async fn run(&self, opts: PipelineOptions) -> (Result<StopReason, PipelineError>, RunSummary) {
        let (pipeline, _trigger) = self.pipeline(opts);
        let started = Instant::now();
        let result = pipeline.run().await;
        let reason = *result.as_ref().unwrap_or(&StopReason::Shutdown);
        (result, pipeline.summary(started.elapsed(), reason))
    }

    /// Runs a pipeline until `crash_point` resolves, then drops it mid-flight, as a kill would.
    async fn run_until_crash(&self, opts: PipelineOptions, crash_point: impl Future<Output = ()>) {
        let (pipeline, _trigger) = self.pipeline(opts);
        tokio::select! {
            result = pipeline.run() => panic!("the pipeline ended before the crash point: {result:?}"),
            _ = crash_point => {}
        }
    }

    fn publish(&self, partition: i32, record: &ImageRecord) {
        self.source.append(
            partition,
            Some(record.source_id.as_bytes()),
            Some(encode(record)),
            vec![(
                b"trace-id".to_vec(),
                Some(record.image_id.to_string().into_bytes()),
            )],
        );
    }

    /// Publishes `n` fresh images, spread round-robin over `partitions`.
    fn publish_images(&self, n: u64, partitions: i32) -> Vec<ImageRecord> {
        (0..n)
            .map(|i| {
                let record = image(i);
                self.publish((i % partitions as u64) as i32, &record);
                record
            })
            .collect()
    }

    async fn objects(&self) -> usize {
        self.images.inner.list("images/").await.unwrap().len()
    }

    fn rows(&self) -> usize {
        self.index.inner.len()
    }

    /// Every record is one object holding its bytes and one row, nothing is dead-lettered, and
    /// the committed offsets reach the end of every partition.
    async fn assert_exactly_once(&self, records: &[ImageRecord], ends: &[(i32, i64)]) {
        assert_eq!(self.objects().await, records.len(), "objects");
        assert_eq!(self.rows(), records.len(), "rows");
        for r in records {
            let stored = self.images.inner.get(&object_key(&r.image_id)).await;
            assert_eq!(stored.unwrap(), r.data, "bytes of {}", r.image_id);
        }
        assert!(self.letters.inner.letters().is_empty(), "no dead letters");
        assert_eq!(self.source.committed(), positions(ends));
    }
}

/// Fast settings: small batches, short waits, millisecond backoff.
fn options() -> PipelineOptions {
    let mut opts = PipelineOptions::new(Limits {
        max_pixels: 50_000_000,
        max_image_bytes: 10 << 20,
        ids: Default::default(),
    });
    opts.batch_max_records = 10;
    opts.poll_wait = Duration::from_millis(5);
    opts.batch_linger = Duration::from_millis(1);
    opts.until_idle = Some(Duration::from_millis(100));
    opts.backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(20),
        slow_after: Duration::from_secs(2),
    };
    opts
}

fn image(seed: u64) -> ImageRecord {
    let spec = ImageSpec {
        width: 8,
        height: 6,
        format: ImageFormat::Png,
    };
    let data = Bytes::from(render(&spec, seed).unwrap());
    ImageRecord {
        image_id: Uuid::new_v4(),
        customer_id: "customer-1".into(),
        source_id: format!("cam-{}", seed % 4),
        created_at: chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap(),
        content_type: spec.format.content_type().into(),
        width: spec.width,
        height: spec.height,
        sha256: sha256_hex(&data),
        data,
        reference: None,
    }
}

fn encode(record: &ImageRecord) -> Bytes {
    let schema = apache_avro::Schema::parse_str(IMAGE_RECORD_SCHEMA).unwrap();
    Bytes::from(codec::encode(&schema, SCHEMA_ID, record).unwrap())
}

fn positions(ends: &[(i32, i64)]) -> Positions {
    ends.iter()
        .map(|(p, o)| ((TOPIC.to_string(), *p), *o))
        .collect()
}

async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn every_record_becomes_one_object_and_one_row_and_the_offsets_reach_the_end() {
    let s = Services::new(3);
    let records = s.publish_images(30, 3);
    let (result, summary) = s.run(options()).await;
    assert_eq!(result.unwrap(), StopReason::Idle);
    s.assert_exactly_once(&records, &[(0, 10), (1, 10), (2, 10)])
        .await;
    assert_eq!((summary.stored, summary.replayed), (30, 0));
}

/// A slow first batch must not let a later, faster one commit past records not yet durable.
#[tokio::test]
async fn offsets_are_committed_in_fetch_order_even_when_a_later_batch_finishes_first() {
    struct SlowFirst {
        inner: ImageStore,
        slow: Vec<Uuid>,
    }
    impl imgstream::pipeline::ImageSink for SlowFirst {
        fn put<'a>(
            &'a self,
            record: &'a ImageRecord,
        ) -> futures::future::BoxFuture<'a, Result<imgstream::pipeline::Put, Failure>> {
            Box::pin(async move {
                if self.slow.contains(&record.image_id) {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                self.inner.put(record).await
            })
        }
        fn bucket(&self) -> &str {
            self.inner.bucket()
        }
    }

    let s = Services::new(1);
    let records = s.publish_images(30, 1);
    let slow_sink = Arc::new(SlowFirst {
        inner: ImageStore::in_memory("bucket"),
        slow: records[..10].iter().map(|r| r.image_id).collect(),
    });
    // At every commit, each record below the committed offset must have its row already.
    let index = s.index.clone();
    let violations = Arc::new(Mutex::new(Vec::new()));
    let seen = violations.clone();
    let ids: Vec<Uuid> = records.iter().map(|r| r.image_id).collect();
    s.source.on_commit(move |pending| {
        let rows: Vec<Uuid> = index.inner.rows().iter().map(|r| r.image_id).collect();
        for ((_, _), next) in pending {
            for id in &ids[..*next as usize] {
                if !rows.contains(id) {
                    seen.lock()
                        .unwrap()
                        .push(format!("offset {next} committed before {id}"));
                }
            }
        }
    });
    let (trigger_keep, shutdown) = Shutdown::new();
    let ports = Ports {
        source: s.source.clone(),
        codec: Arc::new(
            ImageCodec::new(IMAGE_RECORD_SCHEMA, s.schemas.clone(), "images-value").unwrap(),
        ),
        images: slow_sink.clone(),
        index: s.index.clone(),
        dead_letters: s.letters.clone(),
    };
    let pipeline = Pipeline::new(ports, options(), shutdown);
    assert_eq!(pipeline.run().await.unwrap(), StopReason::Idle);
    drop(trigger_keep);

    assert_eq!(*violations.lock().unwrap(), Vec::<String>::new());
    let commits: Vec<i64> = s
        .source
        .commits()
        .iter()
        .map(|c| c[&(TOPIC.into(), 0)])
        .collect();
    assert!(commits.windows(2).all(|w| w[0] < w[1]), "{commits:?}");
    assert_eq!(commits.last(), Some(&30));
    assert_eq!(s.rows(), 30);
}

#[tokio::test]
async fn a_crash_between_put_and_insert_is_repaired_by_the_restart() {
    let s = Services::new(2);
    let records = s.publish_images(20, 2);
    s.index.faults.hold();
    s.run_until_crash(
        options(),
        eventually("every object is written", async || s.objects().await == 20),
    )
    .await;
    assert_eq!((s.objects().await, s.rows()), (20, 0));
    assert!(s.source.committed().is_empty(), "nothing is committed");

    s.index.faults.release();
    s.source.restart();
    let (result, summary) = s.run(options()).await;
    result.unwrap();
    s.assert_exactly_once(&records, &[(0, 10), (1, 10)]).await;
    // The rows are new: this run stored the records; their objects were found in place.
    assert_eq!((summary.stored, summary.replayed), (20, 0));
}

#[tokio::test]
async fn a_crash_between_insert_and_commit_is_replayed_without_doubling() {
    let s = Services::new(2);
    let records = s.publish_images(20, 2);
    s.source.commit_faults.hold();
    // The commit stage takes one batch at a time: the first batch's rows are written and its
    // commit is under way when the process dies.
    s.run_until_crash(
        options(),
        eventually("the first batch waits for its commit", async || {
            s.rows() == 10 && s.source.commit_faults.calls() > 0
        }),
    )
    .await;
    assert!(s.source.committed().is_empty(), "nothing is committed");

    s.source.commit_faults.release();
    s.source.restart();
    let (result, summary) = s.run(options()).await;
    result.unwrap();
    s.assert_exactly_once(&records, &[(0, 10), (1, 10)]).await;
    // The first batch is found complete; the rest is new.
    assert_eq!((summary.stored, summary.replayed), (10, 10));
}

#[tokio::test]
async fn an_image_id_reused_for_other_bytes_is_dead_lettered_and_the_first_image_kept() {
    let s = Services::new(1);
    let first = image(1);
    let mut impostor = image(2);
    impostor.image_id = first.image_id;
    let mut renamed = first.clone();
    renamed.customer_id = "someone-else".into();
    s.publish(0, &first);
    s.publish(0, &impostor);
    s.publish(0, &renamed);
    let (result, _) = s.run(options()).await;
    result.unwrap();

    assert_eq!(
        s.letters.inner.codes(),
        ["object-conflict", "index-conflict"]
    );
    let kept = s
        .images
        .inner
        .get(&object_key(&first.image_id))
        .await
        .unwrap();
    assert_eq!(kept, first.data);
    let rows = s.index.inner.rows();
    assert_eq!((rows.len(), rows[0].kafka_offset), (1, 0));
    assert_eq!(s.source.committed(), positions(&[(0, 3)]));
}

#[tokio::test]
async fn an_exact_replay_is_stored_once_and_reported_as_replayed_not_stored() {
    let s = Services::new(1);
    let record = image(7);
    s.publish(0, &record);
    s.publish(0, &record);
    let (result, summary) = s.run(options()).await;
    result.unwrap();
    assert_eq!((s.objects().await, s.rows()), (1, 1));
    assert!(s.letters.inner.letters().is_empty());
    assert_eq!((summary.stored, summary.replayed), (1, 1));
}

#[tokio::test]
async fn a_transient_store_failure_is_retried_with_backoff_until_it_heals() {
    let s = Services::new(1);
    let records = s.publish_images(1, 1);
    s.images
        .faults
        .fail_next(3, Failure::Transient("connection reset".into()));
    let started = Instant::now();
    let (result, _) = s.run(options()).await;
    result.unwrap();
    s.assert_exactly_once(&records, &[(0, 1)]).await;
    assert_eq!(s.images.faults.calls(), 1 + 3);
    // Three waits, each at least half its backoff step (10, 20, 20 ms): never a busy loop.
    assert!(started.elapsed() >= Duration::from_millis(25));
}

#[tokio::test]
async fn a_record_the_store_refuses_is_dead_lettered_and_the_offset_moves_past_it() {
    let s = Services::new(1);
    let good = image(1);
    let mut tampered = image(2);
    tampered.sha256 = sha256_hex(b"other bytes");
    s.publish(0, &good);
    s.publish(0, &tampered);
    let (result, summary) = s.run(options()).await;
    result.unwrap();
    assert_eq!(s.letters.inner.codes(), ["checksum-mismatch"]);
    assert_eq!(s.letters.inner.letters()[0].origin.offset, 1);
    assert_eq!((s.objects().await, s.rows()), (1, 1));
    assert_eq!(s.source.committed(), positions(&[(0, 2)]));
    assert_eq!(summary.dead_lettered_by_code["checksum-mismatch"], 1);
}

#[tokio::test]
async fn a_fatal_store_failure_stops_the_consumer_with_its_message_and_commits_nothing() {
    let s = Services::new(1);
    s.publish_images(5, 1);
    s.images.faults.fail_next(
        1,
        Failure::Fatal("object store refused the credentials; check MINIO_ACCESS_KEY".into()),
    );
    let (result, _) = s.run(options()).await;
    let error = result.unwrap_err().to_string();
    assert!(error.contains("MINIO_ACCESS_KEY"), "{error}");
    assert!(s.source.committed().is_empty());
    assert!(s.letters.inner.letters().is_empty());
}

/// A partition revoked mid-run is handed over at a position below which everything is done and
/// committed, and past which this member wrote nothing: the new owner redoes nothing.
#[tokio::test]
async fn a_hand_over_waits_only_for_uploads_under_way_and_leaves_the_rest_to_the_new_owner() {
    hand_over_while_uploads_wait(options().uploads_in_flight, 0).await;
}

#[tokio::test]
async fn a_hand_over_after_some_uploads_went_through_on_few_slots_leaves_nothing_to_redo() {
    // Fewer slots than a batch has records, and twenty uploads through before the store stalls.
    hand_over_while_uploads_wait(4, 20).await;
}

/// Revokes partition 1 while the store holds every upload after the first `through`.
async fn hand_over_while_uploads_wait(uploads_in_flight: usize, through: u64) {
    let s = Services::new(2);
    let records = s.publish_images(400, 2);
    s.images.faults.hold_after(through);
    let (pipeline, trigger) = s.pipeline(PipelineOptions {
        until_idle: None,
        uploads_in_flight,
        ..options()
    });
    let revoke_while_uploads_wait = async {
        // Every upload slot is taken and more batches wait behind them.
        eventually("the upload slots are full", async || {
            s.images.faults.calls() >= through + uploads_in_flight as u64
        })
        .await;
        let release_soon = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.images.faults.release();
        };
        let (drained, ()) = tokio::join!(s.source.revoke(1, Duration::from_secs(5)), release_soon);
        eventually("partition 0 is committed to its end", async || {
            s.source.committed().get(&(TOPIC.into(), 0)) == Some(&200)
        })
        .await;
        eventually("every batch is through", async || {
            pipeline.held_bytes() == 0
        })
        .await;
        trigger.trigger();
        drained
    };
    let (result, drained) = tokio::join!(pipeline.run(), revoke_while_uploads_wait);
    assert_eq!(result.unwrap(), StopReason::Shutdown);
    assert!(drained.unfinished.is_empty(), "{drained:?}");
    let handed_over_at = drained.finished[&(TOPIC.to_string(), 1)];
    let summary = pipeline.summary(Duration::from_secs(1), StopReason::Shutdown);
    assert!(
        summary.given_back > 0,
        "records fetched but not started were left behind: {summary:?}"
    );
    // Partition 1 holds records 1, 3, 5, …: the one at offset o is records[2o + 1]. This member
    // wrote exactly those before the hand-over point, none after it.
    for (offset, record) in records.iter().skip(1).step_by(2).enumerate() {
        let written = s
            .images
            .inner
            .get(&object_key(&record.image_id))
            .await
            .is_ok();
        assert_eq!(
            written,
            (offset as i64) < handed_over_at,
            "partition 1 offset {offset}, handed over at {handed_over_at}"
        );
    }

    // The new owner does the rest once: nothing is redone, nothing is missing.
    s.source.restart();
    let (result, summary) = s.run(options()).await;
    result.unwrap();
    s.assert_exactly_once(&records, &[(0, 200), (1, 200)]).await;
    assert_eq!(summary.replayed, 0);
    assert_eq!(summary.stored, 200 - handed_over_at as u64);
}

#[tokio::test]
async fn a_partition_whose_batches_miss_the_handover_deadline_is_left_for_its_new_owner_to_redo() {
    let s = Services::new(2);
    let records = s.publish_images(20, 2);
    s.images.faults.hold();
    let (pipeline, trigger) = s.pipeline(PipelineOptions {
        until_idle: None,
        ..options()
    });
    let revoke_mid_batch = async {
        eventually("uploads are under way", async || {
            s.images.faults.calls() > 0
        })
        .await;
        let drained = s.source.revoke(1, Duration::from_millis(50)).await;
        s.images.faults.release();
        eventually("partition 0 is committed to its end", async || {
            s.source.committed().get(&(TOPIC.into(), 0)) == Some(&10)
        })
        .await;
        // Let the batches finish too: what was under way for partition 1 is written, but never
        // committed by this member; what had not started is left to the new owner.
        eventually("every batch is through", async || {
            pipeline.held_bytes() == 0
        })
        .await;
        trigger.trigger();
        drained
    };
    let (result, drained) = tokio::join!(pipeline.run(), revoke_mid_batch);
    assert_eq!(result.unwrap(), StopReason::Shutdown);
    assert_eq!(drained.unfinished, [(TOPIC.to_string(), 1)]);

    let committed = s.source.committed();
    assert_eq!(committed.get(&(TOPIC.into(), 0)), Some(&10));
    assert_eq!(committed.get(&(TOPIC.into(), 1)), None, "{committed:?}");
    // What was in flight for partition 1 was written, idempotently, for its new owner to find.
    assert_eq!(s.objects().await, s.rows());
    let in_flight = s.rows() as u64 - 10;
    assert!(in_flight > 0);

    s.source.restart();
    let (result, summary) = s.run(options()).await;
    result.unwrap();
    s.assert_exactly_once(&records, &[(0, 10), (1, 10)]).await;
    assert_eq!(
        (summary.replayed, summary.stored),
        (in_flight, 10 - in_flight)
    );
}

#[tokio::test]
async fn fetching_stops_while_uploads_are_stuck_and_resumes_when_they_move() {
    let s = Services::new(1);
    let records = s.publish_images(400, 1);
    s.images.faults.hold();
    let opts = options();
    let bound = opts.records_in_flight_bound();
    let (pipeline, _trigger) = s.pipeline(opts);
    let stats = pipeline.stats();
    let stuck_then_released = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let polled = stats.polled.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let later = stats.polled.load(std::sync::atomic::Ordering::Relaxed);
        s.images.faults.release();
        (polled, later)
    };
    let (result, (polled, later)) = tokio::join!(pipeline.run(), stuck_then_released);
    result.unwrap();
    assert!(
        polled > 0 && polled as usize <= bound,
        "{polled} polled, bound {bound}"
    );
    assert_eq!(
        polled, later,
        "polling went on while nothing could be stored"
    );
    s.assert_exactly_once(&records, &[(0, 400)]).await;
}

/// Runs a pipeline with every upload held by the store until what was admitted is all there
/// is; reads `measure` then, releases the store and lets the run finish.
async fn measure_while_uploads_are_held<T>(
    s: &Services,
    opts: PipelineOptions,
    measure: impl FnOnce(&Pipeline) -> T,
) -> T {
    s.images.faults.hold();
    let (pipeline, _trigger) = s.pipeline(opts);
    let held_then_released = async {
        eventually("uploads are under way", async || {
            s.images.faults.calls() > 0
        })
        .await;
        // Nothing finishes while the store holds every call.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let measured = measure(&pipeline);
        s.images.faults.release();
        measured
    };
    let (result, measured) = tokio::join!(pipeline.run(), held_then_released);
    result.unwrap();
    measured
}

/// Batches of a few large images would leave most upload slots idle: a batch leaves the upload
/// stage only when its slowest image is stored.
#[tokio::test]
async fn batches_of_few_images_take_up_to_twice_the_batches_in_flight_to_fill_idle_upload_slots() {
    let s = Services::new(1);
    let records = s.publish_images(100, 1);
    let mut opts = options();
    opts.batch_max_records = 4;
    opts.batches_in_flight = 2;
    opts.uploads_in_flight = 32;
    let uploading = measure_while_uploads_are_held(&s, opts, |_| s.images.faults.calls()).await;
    // Two batches of four would have kept 8 uploads going; four batches of four keep 16.
    assert_eq!(uploading, 16, "uploads started while the store held them");
    s.assert_exactly_once(&records, &[(0, 100)]).await;
}

/// Batches of many images fill the upload slots by themselves: no more than the configured
/// batches upload at once.
#[tokio::test]
async fn batches_that_fill_the_upload_slots_keep_to_the_batches_in_flight() {
    let s = Services::new(1);
    let records = s.publish_images(200, 1);
    let mut opts = options();
    opts.batch_max_records = 20;
    opts.batches_in_flight = 2;
    opts.uploads_in_flight = 8;
    let polled = measure_while_uploads_are_held(&s, opts, |pipeline| {
        pipeline
            .stats()
            .polled
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    // Two batches of 20 uploading (8 of them holding the slots), and one batch in each place
    // before the upload stage: the checked channel, the check stage, the polled channel and the
    // fetch stage. Each further batch admitted to the upload stage would add 20.
    assert_eq!(polled, 6 * 20);
    s.assert_exactly_once(&records, &[(0, 200)]).await;
}

/// Batches of large images each fill their byte limit, and every place for a batch in the
/// stages filled held 224 MiB of 2 MiB images. The pipeline asks for another batch only while
/// the bytes it holds are under its limit, so it holds at most the limit and one batch.
#[tokio::test]
async fn the_bytes_held_stay_within_the_memory_bound_however_many_places_batches_have() {
    let s = Services::new(1);
    let records = s.publish_images(200, 1);
    let largest = records.iter().map(|r| encode(r).len()).max().unwrap();
    let mut opts = options();
    opts.batch_max_records = 100;
    opts.batch_max_bytes = 4 * largest;
    opts.batches_in_flight = 1;
    opts.uploads_in_flight = 32;
    let (limit, batch_bytes) = (opts.held_bytes_limit(), opts.batch_max_bytes);
    let (held, polled) = measure_while_uploads_are_held(&s, opts, |pipeline| {
        let polled = pipeline
            .stats()
            .polled
            .load(std::sync::atomic::Ordering::Relaxed);
        (pipeline.held_bytes(), polled)
    })
    .await;
    // A batch stops at the first record that reaches its byte limit.
    assert!(
        held <= limit + batch_bytes + largest,
        "{held} bytes held, limit {limit} and one batch of {batch_bytes}"
    );
    // Places for six batches of at least four records: two uploading, one in each channel and
    // stage before them.
    assert!(
        polled < 6 * 4,
        "{polled} records polled: the bound did not hold them back"
    );
    s.assert_exactly_once(&records, &[(0, 200)]).await;
}

#[tokio::test]
async fn the_summary_says_how_many_uploads_ran_at_once_on_average() {
    // Four slots, four records, and a store that answers only after 300 ms: for most of the
    // busy span all four uploads run at once.
    let s = Services::new(1);
    let records = s.publish_images(4, 1);
    s.images.faults.hold();
    let (pipeline, _trigger) = s.pipeline(PipelineOptions {
        uploads_in_flight: 4,
        ..options()
    });
    let release_later = async {
        eventually("every upload is waiting", async || {
            s.images.faults.calls() >= 4
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.images.faults.release();
    };
    let started = Instant::now();
    let (result, ()) = tokio::join!(pipeline.run(), release_later);
    let summary = pipeline.summary(started.elapsed(), result.unwrap());
    assert_eq!(summary.stored, 4);
    assert!(
        (3.0..=4.0).contains(&summary.mean_uploads_in_flight),
        "{} uploads at once on average over {} s",
        summary.mean_uploads_in_flight,
        summary.busy_secs
    );
    s.assert_exactly_once(&records, &[(0, 4)]).await;
}

#[tokio::test]
async fn shutdown_mid_batch_finishes_the_uploads_under_way_commits_them_and_leaves_the_rest() {
    let s = Services::new(1);
    let records = s.publish_images(200, 1);
    s.images.faults.hold();
    let (pipeline, trigger) = s.pipeline(options());
    let stop_mid_batch = async {
        eventually("uploads are under way", async || {
            s.images.faults.calls() > 0
        })
        .await;
        trigger.trigger();
        s.images.faults.release();
    };
    let (result, ()) = tokio::join!(pipeline.run(), stop_mid_batch);
    assert_eq!(result.unwrap(), StopReason::Shutdown);

    let next = s.source.committed()[&(TOPIC.into(), 0)];
    assert!(next > 0 && next < 200, "committed {next} of 200");
    // The batches held besides the uploads under way were not worked through: their records are
    // left to the next run.
    let summary = pipeline.summary(Duration::from_secs(1), StopReason::Shutdown);
    assert!(summary.given_back > 0, "{summary:?}");
    assert_eq!(summary.stored as i64, next);
    let rows = s.index.inner.rows();
    assert_eq!(
        rows.len() as i64,
        next,
        "every committed record has its row"
    );
    assert_eq!(s.objects().await, rows.len());
    let ids: Vec<Uuid> = rows.iter().map(|r| r.image_id).collect();
    assert_eq!(
        ids,
        records[..next as usize]
            .iter()
            .map(|r| r.image_id)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_registry_refusing_the_consumer_stops_it_without_dead_lettering_or_committing() {
    let s = Services::new(1);
    s.publish_images(3, 1);
    s.schemas.answer_with(401);
    let (result, _) = s.run(options()).await;
    let error = result.unwrap_err().to_string();
    assert!(
        error.contains("401") && error.contains("SCHEMA_REGISTRY_URL"),
        "{error}"
    );
    assert!(
        s.letters.inner.letters().is_empty(),
        "nothing is dead-lettered"
    );
    assert!(s.source.committed().is_empty(), "no offset moves");
}

#[tokio::test]
async fn a_registry_outage_is_waited_out_and_nothing_is_dead_lettered() {
    let s = Services::new(1);
    let records = s.publish_images(3, 1);
    s.schemas.answer_with(503);
    let heal = async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        s.schemas.answer_normally();
    };
    let ((result, _), ()) = tokio::join!(s.run(options()), heal);
    result.unwrap();
    s.assert_exactly_once(&records, &[(0, 3)]).await;
}

#[tokio::test]
async fn a_record_with_an_unknown_schema_id_is_dead_lettered() {
    let s = Services::new(1);
    let mut value = encode(&image(1)).to_vec();
    value[1..5].copy_from_slice(&99u32.to_be_bytes());
    s.source.append(0, None, Some(Bytes::from(value)), vec![]);
    let (result, _) = s.run(options()).await;
    result.unwrap();
    assert_eq!(s.letters.inner.codes(), ["unknown-schema-id"]);
    assert_eq!(s.source.committed(), positions(&[(0, 1)]));
}

#[tokio::test]
async fn a_record_whose_writer_schema_belongs_to_another_subject_is_dead_lettered() {
    let mut s = Services::new(1);
    // The same contract, registered under some other subject: its id must not be read here.
    let elsewhere = format!("{} ", IMAGE_RECORD_SCHEMA);
    s.schemas = Arc::new(
        MemorySchemas::with(&[(SCHEMA_ID, IMAGE_RECORD_SCHEMA)]).with_foreign(77, &elsewhere),
    );
    let mut value = encode(&image(1)).to_vec();
    value[1..5].copy_from_slice(&77u32.to_be_bytes());
    s.source.append(0, None, Some(Bytes::from(value)), vec![]);
    let valid = image(2);
    s.publish(0, &valid);
    let (result, _) = s.run(options()).await;
    result.unwrap();
    assert_eq!(s.letters.inner.codes(), ["foreign-schema-id"]);
    assert_eq!((s.objects().await, s.rows()), (1, 1));
    assert_eq!(s.source.committed(), positions(&[(0, 2)]));
}

#[tokio::test]
async fn a_row_the_index_refuses_is_dead_lettered_and_the_rest_of_its_batch_indexed() {
    let s = Services::new(1);
    let records = s.publish_images(3, 1);
    s.index.inner.refuse(
        records[1].image_id,
        "index row size 8040 exceeds btree version 4 maximum 2704",
    );
    let (result, summary) = s.run(options()).await;
    result.unwrap();
    assert_eq!(s.letters.inner.codes(), ["index-refused"]);
    let letter = &s.letters.inner.letters()[0];
    assert_eq!(letter.origin.offset, 1);
    assert!(
        letter.refusal.message().contains("btree"),
        "{}",
        letter.refusal
    );
    assert_eq!(s.rows(), 2);
    assert_eq!(s.source.committed(), positions(&[(0, 3)]));
    assert_eq!(summary.dead_lettered_by_code["index-refused"], 1);
}

#[tokio::test]
async fn a_tombstone_is_dead_lettered_with_a_null_value_and_its_original_headers() {
    let s = Services::new(1);
    let headers = vec![
        (b"trace-id".to_vec(), Some(b"abc".to_vec())),
        (b"empty".to_vec(), None),
    ];
    s.source.append(0, Some(b"cam-1"), None, headers.clone());
    s.source.append(
        0,
        Some(b"cam-2"),
        Some(Bytes::from_static(b"not avro")),
        headers.clone(),
    );
    let (result, _) = s.run(options()).await;
    result.unwrap();

    let letters = s.letters.inner.letters();
    assert_eq!(
        s.letters.inner.codes(),
        ["not-wire-format", "bad-magic-byte"]
    );
    assert_eq!(letters[0].value, None, "a tombstone stays null");
    assert_eq!(letters[1].value.as_deref(), Some(&b"not avro"[..]));
    for letter in &letters {
        assert_eq!(letter.headers, headers);
    }
    assert_eq!(letters[0].key.as_deref(), Some(&b"cam-1"[..]));
}

/// After a broker restart a member can sit without records while it rejoins its group: quiet,
/// but not done.
#[tokio::test]
async fn quiet_is_not_idle_while_committed_offsets_are_behind_the_end() {
    let s = Services::new(2);
    let records = s.publish_images(10, 2);
    s.source.stall(true);
    let rejoin = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.source.stall(false);
    };
    let ((result, _), ()) = tokio::join!(s.run(options()), rejoin);
    assert_eq!(result.unwrap(), StopReason::Idle);
    s.assert_exactly_once(&records, &[(0, 5), (1, 5)]).await;
}

#[tokio::test]
async fn a_service_that_stops_answering_is_reported_while_it_hangs() {
    let s = Services::new(1);
    let records = s.publish_images(3, 1);
    s.images.faults.hold();
    let mut opts = options();
    opts.backoff.slow_after = Duration::from_millis(30);
    let (pipeline, _trigger) = s.pipeline(opts);
    let thaw = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let seen_while_frozen = pipeline.slow_waits();
        s.images.faults.release();
        seen_while_frozen
    };
    let (result, seen_while_frozen) = tokio::join!(pipeline.run(), thaw);
    result.unwrap();
    assert!(
        seen_while_frozen >= 3,
        "{seen_while_frozen} slow waits reported"
    );
    s.assert_exactly_once(&records, &[(0, 3)]).await;
}

/// A consumer without `--until-idle` on a quiet topic must still stop on a fatal error, not wait
/// for a next record to notice it.
#[tokio::test]
async fn a_fatal_failure_stops_a_long_running_consumer_even_when_nothing_more_arrives() {
    let s = Services::new(1);
    s.publish_images(3, 1);
    s.index.faults.fail_next(
        1,
        Failure::Fatal("the images table is missing; run `imgstream setup`".into()),
    );
    let mut opts = options();
    opts.until_idle = None;
    let (pipeline, _trigger) = s.pipeline(opts);
    let result = tokio::time::timeout(Duration::from_secs(3), pipeline.run())
        .await
        .expect("the pipeline stopped on its own");
    assert!(result.unwrap_err().to_string().contains("imgstream setup"));
    assert!(s.source.committed().is_empty());
}

/// A record as large as the dead-letter topic takes, refused with a reason that quotes its
/// longest field: its letter carries a reference instead of the value, and the record behind it
/// is stored.
#[tokio::test]
async fn a_refused_record_too_large_for_its_letter_is_dead_lettered_as_a_reference() {
    const TOPIC_LIMIT: usize = 64 * 1024;
    let s = Services::with_dead_letter_limit(1, TOPIC_LIMIT);
    let mut long_field = image(1);
    // The value alone is larger than the topic's budget for a letter (its limit less 1 KiB).
    long_field.sha256 = "z".repeat(TOPIC_LIMIT - 600);
    let value = encode(&long_field);
    s.source
        .append(0, Some(b"cam-1"), Some(value.clone()), vec![]);
    let valid = image(2);
    s.publish(0, &valid);

    let (result, _) = s.run(options()).await;
    result.unwrap();

    assert_eq!(s.letters.inner.codes(), ["malformed-checksum"]);
    let written = &s.letters.inner.written()[0];
    assert!(written.size() < TOPIC_LIMIT, "{} bytes", written.size());
    assert_eq!(written.value, None);
    assert_eq!(written.header(headers::OMITTED).as_deref(), Some("value"));
    assert_eq!(
        written.header(headers::ORIGINAL_VALUE_SIZE),
        Some(value.len().to_string())
    );
    assert_eq!(
        written.header(headers::ORIGINAL_VALUE_SHA256),
        Some(sha256_hex(&value))
    );
    assert_eq!(
        written.header(headers::ORIGINAL_OFFSET).as_deref(),
        Some("0")
    );
    assert!(written.header(headers::REASON).unwrap().len() <= MAX_REASON_BYTES);
    assert_eq!(s.rows(), 1);
    assert_eq!(s.source.committed(), positions(&[(0, 2)]));
}

/// What a letter says about why and where from is imgstream's, whatever the producer's headers
/// claim; the producer's headers are kept, renamed, keys that are not UTF-8 included.
#[tokio::test]
async fn a_producers_forged_verdict_headers_are_renamed_on_its_letter() {
    let s = Services::new(1);
    let forged: Vec<RecordHeader> = vec![
        (headers::CODE.as_bytes().to_vec(), Some(b"ok".to_vec())),
        (
            headers::ORIGINAL_TOPIC.as_bytes().to_vec(),
            Some(b"elsewhere".to_vec()),
        ),
        (vec![0xff, 0xfe, b'k'], Some(b"v".to_vec())),
    ];
    s.source.append(
        0,
        Some(b"cam-1"),
        Some(Bytes::from_static(b"not avro")),
        forged.clone(),
    );
    let (result, _) = s.run(options()).await;
    result.unwrap();

    let written = &s.letters.inner.written()[0];
    let codes: Vec<_> = written
        .headers
        .iter()
        .filter(|(k, _)| k == headers::CODE.as_bytes())
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(codes, [Some(b"bad-magic-byte".to_vec())]);
    assert_eq!(
        written.header(headers::ORIGINAL_TOPIC).as_deref(),
        Some(TOPIC)
    );
    let carried: Vec<&[u8]> = written.headers[..3].iter().map(|(k, _)| &k[..]).collect();
    assert_eq!(
        carried,
        [
            &b"imgstream.dlq.producer-header.imgstream.dlq.code"[..],
            b"imgstream.dlq.producer-header.imgstream.dlq.original.topic",
            &[0xff, 0xfe, b'k'],
        ]
    );
    assert_eq!(s.source.committed(), positions(&[(0, 1)]));
}
