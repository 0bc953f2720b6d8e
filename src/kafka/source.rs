//! The record source port on a Kafka consumer group member.

use super::BrokerError;
use super::consumer::{GroupConsumer, offsets_list, payload_bytes};
use crate::domain::Origin;
use crate::pipeline::ports::next_positions;
use crate::pipeline::{
    BatchLimits, Committed, Failure, Partition, Polled, Positions, RecordSource,
};
use futures::future::BoxFuture;
use rdkafka::Offset;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// How long an offset query may take before the answer counts as "not known".
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a member may stay out of its group before it gives up. librdkafka rejoins by itself
/// within seconds after a broker comes back; but after a single broker's restart here its group
/// coordinator connection once stayed stuck for over 8 minutes ("GroupCoordinator: Timed out 0
/// in-flight, 0 retry-queued, 1 out-queue" every 60 s, the same class of hang as librdkafka
/// issues #3082 and #3396), so the member never got partitions back. Exiting lets a supervisor
/// (Kubernetes, systemd, a restart loop) start a fresh member; nothing is lost, since what was
/// not committed is replayed idempotently.
///
/// A member that lost its session rejoins under a new id, and the group waits for its old id to
/// time out first; a coordinator that moves meanwhile starts that wait again. So the deadline is
/// twice the session timeout with a margin, and never under 90 s.
pub fn rejoin_deadline(session_timeout: Duration) -> Duration {
    (session_timeout * 2 + Duration::from_secs(30)).max(Duration::from_secs(90))
}

/// Whether the brokers answer a client other than this member's: the member's own client may be
/// the part that is stuck.
pub type BrokerProbe = Arc<dyn Fn() -> bool + Send + Sync>;

pub struct KafkaSource {
    consumer: Arc<GroupConsumer>,
    bootstrap: String,
    probe: BrokerProbe,
    /// See [`rejoin_deadline`].
    rejoin_deadline: Duration,
    /// Batch requests to the fetch thread, each answered on its own channel.
    fetch_requests: mpsc::Sender<FetchRequest>,
    /// The fetch thread holds the consumer too, and ends once `fetch_requests` closes; it may be
    /// the last holder, whose drop closes the consumer and leaves the group.
    fetch_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// When the brokers were last asked whether they answer, while out of the group.
    membership_checked: std::sync::Mutex<Option<std::time::Instant>>,
    stall: std::sync::Mutex<Stall>,
}

/// When a record last arrived, and since when a stall was reported (if one is).
struct Stall {
    last_record: std::time::Instant,
    reported: Option<std::time::Instant>,
}

/// How long records may stop arriving, while some wait in the owned partitions, before the
/// consumer says so. librdkafka itself is silent until its request timeouts pass (a black-holed
/// connection: 60 s), and a lost session shows only later.
const STALL_AFTER: Duration = Duration::from_secs(5);

type FetchRequest = (BatchLimits, oneshot::Sender<Result<Vec<Polled>, Failure>>);

impl KafkaSource {
    /// A source on a consumer that is already subscribed; `probe` asks the brokers with a fresh
    /// client (blocking).
    ///
    /// Polling happens on a thread of its own: librdkafka runs the rebalance callback inside the
    /// poll, and that callback waits for the pipeline to finish the batches of the partitions
    /// being taken away (see [`OffsetLedger::drain`](crate::pipeline::ledger::OffsetLedger::drain)).
    /// On the pipeline's own runtime that wait would stop the very stages it waits for.
    pub fn new(
        consumer: Arc<GroupConsumer>,
        bootstrap: &str,
        session_timeout: Duration,
        probe: BrokerProbe,
    ) -> Result<Self, BrokerError> {
        let (fetch_requests, requests) = mpsc::channel(1);
        let fetcher = Fetcher {
            consumer: consumer.clone(),
            bootstrap: bootstrap.to_string(),
            reconnecting: AtomicBool::new(false),
        };
        let fetch_thread = std::thread::Builder::new()
            .name("kafka-fetch".into())
            .spawn(move || fetcher.serve(requests))
            .map_err(|e| BrokerError::Other(format!("cannot start the fetch thread: {e}")))?;
        Ok(KafkaSource {
            consumer,
            bootstrap: bootstrap.to_string(),
            probe,
            rejoin_deadline: rejoin_deadline(session_timeout),
            fetch_requests,
            fetch_thread: std::sync::Mutex::new(Some(fetch_thread)),
            membership_checked: std::sync::Mutex::new(None),
            stall: std::sync::Mutex::new(Stall {
                last_record: std::time::Instant::now(),
                reported: None,
            }),
        })
    }

    /// Lag of the partitions this member owns: end offset minus position. Blocking (a broker
    /// round trip per partition): call it on the blocking pool.
    pub fn owned_lag(&self) -> Option<i64> {
        let position = self.consumer.position().ok()?;
        let mut lag = 0;
        for e in position.elements() {
            let (low, high) = self
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
                .ok()?;
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            lag += (high - at).max(0);
        }
        Some(lag)
    }

    /// Rebalance callbacks this member has seen, by kind.
    pub fn rebalances(&self) -> [(&'static str, u64); 3] {
        self.consumer.context().rebalances.counts()
    }

    /// How long this member has been out of its consumer group, as librdkafka's statistics last
    /// said (0 while in it, or before any statistics arrived).
    pub fn out_of_group(&self) -> std::time::Duration {
        let membership = self
            .consumer
            .context()
            .membership
            .lock()
            .expect("membership lock");
        if !membership.observed {
            return std::time::Duration::ZERO;
        }
        membership.last_in_group.elapsed()
    }

    /// Lag per owned partition, as librdkafka's statistics last reported it.
    pub fn lag(&self) -> std::collections::BTreeMap<Partition, i64> {
        let owned = self.assignment();
        let lag = self.consumer.context().lag.lock().expect("lag lock");
        lag.iter()
            .filter(|(tp, _)| owned.contains(*tp))
            .map(|(tp, l)| (tp.clone(), *l))
            .collect()
    }

    /// A fatal failure once this member has been out of its group for longer than
    /// its rejoin deadline while the brokers answer a fresh client. While they do not, it is an
    /// outage and the member waits for them, however long. Checked at most every few seconds.
    async fn check_membership(&self) -> Result<(), Failure> {
        let membership = self
            .consumer
            .context()
            .membership
            .lock()
            .expect("membership lock")
            .clone();
        let Some(out) = membership.out_longer_than(self.rejoin_deadline, std::time::Instant::now())
        else {
            return Ok(());
        };
        {
            let mut checked = self.membership_checked.lock().expect("check lock");
            if checked.is_some_and(|at| at.elapsed() < QUERY_TIMEOUT * 2) {
                return Ok(());
            }
            *checked = Some(std::time::Instant::now());
        }
        // Asked with a fresh client: when this member's client is wedged, its own requests time
        // out too (seen: metadata failing while the restarted broker served everyone else).
        let probe = self.probe.clone();
        let brokers_answer = tokio::task::spawn_blocking(move || probe())
            .await
            .unwrap_or(false);
        if !brokers_answer {
            warn!(
                out_secs = out.as_secs(),
                group_state = %membership.state,
                "out of the consumer group, and the brokers do not answer either: waiting for them"
            );
            return Ok(());
        }
        Err(Failure::Fatal(format!(
            "this consumer has been out of its consumer group for {}s while the brokers answer (librdkafka group state {}) and did not rejoin; exiting so that a fresh consumer can take its place (restart it; records not yet committed are replayed, each stored once)",
            out.as_secs(),
            membership.state
        )))
    }

    async fn poll_batch(&self, limits: BatchLimits) -> Result<Vec<Polled>, Failure> {
        self.check_membership().await?;
        let stopped = || Failure::Fatal("the Kafka fetch thread stopped".into());
        let (reply, answer) = oneshot::channel();
        self.fetch_requests
            .send((limits, reply))
            .await
            .map_err(|_| stopped())?;
        let batch = answer.await.unwrap_or_else(|_| Err(stopped()))?;
        self.watch_for_stall(batch.is_empty());
        Ok(batch)
    }

    /// Records stop coming while the owned partitions have some waiting at the broker (as
    /// statistics taken since the last record say): the brokers are slow or unreachable. Said once per stall, and again when records
    /// flow.
    fn watch_for_stall(&self, empty: bool) {
        let mut stall = self.stall.lock().expect("stall lock");
        let now = std::time::Instant::now();
        if !empty {
            if stall.reported.take().is_some() {
                info!(
                    stalled_secs = now.duration_since(stall.last_record).as_secs(),
                    "records from kafka are flowing again"
                );
            }
            stall.last_record = now;
            return;
        }
        let quiet = now.duration_since(stall.last_record);
        if stall.reported.is_some() || quiet < STALL_AFTER {
            return;
        }
        // Only statistics taken after the last record say whether more wait.
        let context = self.consumer.context();
        let (taken, unread) = context.unread.lock().expect("unread lock").clone();
        if taken <= stall.last_record {
            return;
        }
        let owned = self.assignment();
        let owned_unread: Vec<(i32, i64)> = unread
            .iter()
            .filter(|(tp, _)| owned.contains(*tp))
            .map(|((_, partition), n)| (*partition, *n))
            .collect();
        let waiting: i64 = owned_unread.iter().map(|(_, n)| n).sum();
        tracing::debug!(
            quiet_secs = quiet.as_secs(),
            waiting,
            silent = ?context.silent_broker.lock().expect("broker lock"),
            "quiet: checking for a stall"
        );
        let silent = context
            .silent_broker
            .lock()
            .expect("broker lock")
            .clone()
            .filter(|(_, _, idle)| *idle >= STALL_AFTER);
        if let Some((broker, requests, idle)) = silent {
            warn!(
                broker = %broker,
                requests,
                silent_secs = idle.as_secs(),
                "no records from kafka: a broker has not answered for a while; the network or the broker is slow or down; waiting for it"
            );
            stall.reported = Some(now);
        } else if waiting > 0 {
            // The group's state and each owned partition's count tell a stall of the brokers from
            // a member between owners of a partition in a rebalance (seen as 5-17 s while members
            // joined and left).
            let group_state = context
                .membership
                .lock()
                .expect("membership lock")
                .state
                .clone();
            let partitions: Vec<String> = owned_unread
                .iter()
                .map(|(partition, n)| format!("{partition}:{n}"))
                .collect();
            // In a rebalance the wait is the group's, not the brokers': in session 17's rebalance
            // benches, 4 of 10 such warnings came from members handing partitions over (the other
            // 6, in `up/steady`, were under KIP-848, whose stalls librdkafka 2.12 is known for).
            let why = if group_state.ends_with("steady") {
                "the brokers are slow or unreachable; waiting for them"
            } else {
                "the group is rebalancing; waiting for it to settle"
            };
            warn!(
                quiet_secs = quiet.as_secs(),
                waiting,
                group_state = %group_state,
                partitions = %partitions.join(","),
                "no records from kafka while records wait in this consumer's partitions: {why}"
            );
            stall.reported = Some(now);
        }
    }

    /// The group's committed offsets of every partition of the subscribed topic against their
    /// end offsets: a member is not done while a partition it does not own (one in the middle of
    /// a hand-over, or whose owner just left) still has work. Blocking broker calls, so on the
    /// blocking pool.
    async fn group_caught_up(&self) -> Result<bool, Failure> {
        let consumer = self.consumer.clone();
        let bootstrap = self.bootstrap.clone();
        let failed = move |e: KafkaError| Failure::from(BrokerError::from_kafka(&e, &bootstrap));
        tokio::task::spawn_blocking(move || {
            let owned = consumer.assignment().map_err(&failed)?;
            let Some(topic) = owned.elements().first().map(|e| e.topic().to_string()) else {
                return Ok(false);
            };
            let metadata = consumer
                .fetch_metadata(Some(&topic), QUERY_TIMEOUT)
                .map_err(&failed)?;
            let mut all = rdkafka::TopicPartitionList::new();
            for t in metadata.topics() {
                for p in t.partitions() {
                    all.add_partition(t.name(), p.id());
                }
            }
            let committed = consumer
                .committed_offsets(all, QUERY_TIMEOUT)
                .map_err(&failed)?;
            for e in committed.elements() {
                let (low, high) = consumer
                    .fetch_watermarks(e.topic(), e.partition(), QUERY_TIMEOUT)
                    .map_err(&failed)?;
                let at = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                };
                if at < high {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
        .unwrap_or_else(|e| Err(Failure::Transient(format!("offset query stopped: {e}"))))
    }

    /// Stores the done offsets in librdkafka, which commits them (`auto.commit.interval.ms`,
    /// and before a revoked partition is handed over). Storing is local and never waits on the
    /// group; a crash before the next commit only means those records are replayed, idempotently.
    async fn commit_done(&self, done: &Positions) -> Result<Committed, Failure> {
        let ledger = &self.consumer.context().ledger;
        ledger.record(done);
        let owned = self.assignment();
        let pending = ledger.pending(|tp| owned.contains(tp));
        if pending.is_empty() {
            return Ok(Committed::Done);
        }
        match self.consumer.store_offsets(&offsets_list(&pending)) {
            Ok(()) => {
                ledger.committed(&pending);
                Ok(Committed::Done)
            }
            // The partitions left this member between our look and the store.
            Err(e) if moved_on(&e) || e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => {
                Ok(Committed::Deferred)
            }
            Err(e) => Err(Failure::Transient(
                BrokerError::from_kafka(&e, &self.bootstrap).to_string(),
            )),
        }
    }

    /// The last commit of a run, synchronous and bounded: what is stored is committed before the
    /// process exits, or the next owner replays it.
    async fn commit_before_exit(&self, within: Duration) -> Result<(), Failure> {
        self.commit_done(&Positions::new()).await?;
        self.consumer.context().ledger.close();
        let consumer = self.consumer.clone();
        let commit =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync));
        match tokio::time::timeout(within, commit).await {
            Ok(Ok(Ok(()))) => Ok(()),
            // Nothing stored since the last commit.
            Ok(Ok(Err(e))) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => Ok(()),
            Ok(Ok(Err(e))) => Err(Failure::Transient(
                BrokerError::from_kafka(&e, &self.bootstrap).to_string(),
            )),
            Ok(Err(e)) => Err(Failure::Transient(format!("final commit stopped: {e}"))),
            Err(_) => Err(Failure::Transient(format!(
                "the final offset commit got no answer within {}s; the next owner replays those records",
                within.as_secs()
            ))),
        }
    }
}

/// The fetch thread's side: builds batches from the consumer, and runs the rebalance callbacks
/// that librdkafka calls from inside the poll.
struct Fetcher {
    consumer: Arc<GroupConsumer>,
    bootstrap: String,
    /// Whether a connection problem was already reported, so an outage logs once, not per poll.
    reconnecting: AtomicBool,
}

impl Fetcher {
    /// Answers batch requests until the source is dropped.
    fn serve(self, mut requests: mpsc::Receiver<FetchRequest>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                warn!(error = %e, "cannot start the fetch thread's runtime");
                return;
            }
        };
        runtime.block_on(async {
            while let Some((limits, reply)) = requests.recv().await {
                let batch = self.collect(limits).await.map(|b| self.owned_only(b));
                let handed = batch.as_ref().map(|b| next_positions(b)).ok();
                // Only a batch the pipeline received is in flight; a refused reply means the
                // pipeline stopped waiting (shutdown) and these records are read again later.
                if reply.send(batch).is_ok()
                    && let Some(handed) = handed
                {
                    self.consumer.context().ledger.handed(&handed);
                }
            }
        });
    }

    /// Records of partitions revoked while the batch filled belong to their new owner.
    fn owned_only(&self, mut batch: Vec<Polled>) -> Vec<Polled> {
        if batch.is_empty() {
            return batch;
        }
        let Ok(owned) = self.consumer.assignment() else {
            return batch;
        };
        let owned: HashSet<Partition> = owned
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        batch.retain(|p| owned.contains(&p.partition()));
        batch
    }

    fn polled(&self, m: rdkafka::message::BorrowedMessage<'_>) -> Polled {
        let origin = Origin {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
        };
        let key = m.key().map(<[u8]>::to_vec);
        let timestamp_ms = m.timestamp().to_millis();
        // Not rdkafka's `headers()`: its keys are `&str`, unwrapped, and a producer may send any
        // bytes.
        let headers = super::header_bytes::of_message(&m);
        let value = m
            .payload()
            .is_some()
            .then(|| payload_bytes(&self.consumer, m));
        Polled {
            origin,
            key,
            value,
            headers,
            timestamp_ms,
        }
    }

    /// A consumer error: a missing topic stops the consumer; anything else librdkafka recovers
    /// from by itself, so it is said once per outage.
    fn on_error(&self, e: KafkaError) -> Result<(), Failure> {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Err(Failure::Fatal(format!(
                    "subscribed topic is missing ({e}); run `imgstream setup`"
                )))
            }
            _ => {
                let err = BrokerError::from_kafka(&e, &self.bootstrap);
                if !err.is_transient() {
                    warn!(error = %e, "kafka consumer error");
                } else if !self.reconnecting.swap(true, Ordering::Relaxed) {
                    warn!(error = %e, "kafka consumer error; librdkafka is reconnecting");
                }
                Ok(())
            }
        }
    }

    async fn collect(&self, limits: BatchLimits) -> Result<Vec<Polled>, Failure> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut deadline = tokio::time::Instant::now() + limits.wait;
        while batch.len() < limits.max_records && bytes < limits.max_bytes {
            let received = tokio::select! {
                m = self.consumer.recv() => m,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match received {
                Ok(m) => {
                    if batch.is_empty() {
                        deadline = tokio::time::Instant::now() + limits.linger;
                    }
                    self.reconnecting.store(false, Ordering::Relaxed);
                    bytes += m.payload_len();
                    batch.push(self.polled(m));
                }
                Err(e) => self.on_error(e)?,
            }
        }
        Ok(batch)
    }
}

/// Commit errors that say this member's view of the group is outdated (a rebalance, a lost
/// membership): retrying the same commit cannot succeed, the ledger keeps it for later.
fn moved_on(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::IllegalGeneration
                | C::UnknownMemberId
                | C::RebalanceInProgress
                | C::FencedInstanceId
                | C::StaleMemberEpoch
                | C::UnknownPartition
                | C::UnknownTopicOrPartition
                | C::AssignmentLost
                | C::NoOffset
                | C::State
        )
    )
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Closing revokes every partition: nothing in flight will finish, so no drain waits.
        self.consumer.context().ledger.close();
        super::close_in_background(self.consumer.clone());
        // Whichever thread drops the consumer last closes it. Untracked, the fetch thread was
        // that thread, and the process exited mid-close: the group dropped the member only
        // after its session timeout, not at once on a LeaveGroup.
        if let Some(fetch_thread) = self.fetch_thread.lock().expect("fetch thread lock").take() {
            super::closing(fetch_thread);
        }
    }
}

impl RecordSource for KafkaSource {
    fn poll(&self, limits: BatchLimits) -> BoxFuture<'_, Result<Vec<Polled>, Failure>> {
        Box::pin(self.poll_batch(limits))
    }

    fn assignment(&self) -> HashSet<Partition> {
        self.consumer.assignment().map_or_else(
            |_| HashSet::new(),
            |tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect()
            },
        )
    }

    fn commit<'a>(&'a self, done: &'a Positions) -> BoxFuture<'a, Result<Committed, Failure>> {
        Box::pin(self.commit_done(done))
    }

    fn caught_up(&self) -> BoxFuture<'_, Result<bool, Failure>> {
        Box::pin(self.group_caught_up())
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Failure>> {
        Box::pin(self.commit_before_exit(QUERY_TIMEOUT * 2))
    }

    fn is_leaving(&self, topic: &str, partition: i32) -> bool {
        self.consumer.context().ledger.is_leaving(topic, partition)
    }

    fn give_back(&self, tp: &Partition, from: i64) {
        self.consumer.context().ledger.give_back(tp, from);
    }

    fn leave_all(&self) {
        self.consumer.context().ledger.leave_all();
    }
}
