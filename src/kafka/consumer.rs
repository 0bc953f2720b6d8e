//! The group consumer: cooperative rebalancing, manual offset commits, bounded prefetch.

use super::{BrokerError, base_config, quiet};
use crate::config::{GroupProtocol, KafkaSettings};
use crate::pipeline::ledger::OffsetLedger;
use crate::pipeline::{Partition, Positions};
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Logs rebalances and commit answers; keeps the lag and the group state librdkafka's statistics report.
pub struct GroupContext {
    pub ledger: Arc<OffsetLedger>,
    /// Per owned partition, the lag librdkafka last reported (end offset minus committed).
    pub lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// Per partition, records at the broker not yet handed to this consumer (end offset minus
    /// the application's position), and when the statistics said so.
    pub unread: Mutex<(Instant, PartitionCounts)>,
    /// The broker that has left requests unanswered longest, if any: (name, requests waiting,
    /// time since it last sent anything), as of the last statistics.
    pub silent_broker: Mutex<Option<SilentBroker>>,
    /// When each broker was last heard from, across reconnections.
    pub heard: Mutex<BrokerHearing>,
    pub membership: Mutex<Membership>,
    /// Rebalance callbacks seen: partitions assigned, revoked (handed over), lost.
    pub rebalances: Rebalances,
}

/// How often this member's assignment changed, by kind: many in a short time mean a group that
/// does not settle (members crash-looping or stalling past their poll interval).
#[derive(Debug, Default)]
pub struct Rebalances {
    pub assigned: AtomicU64,
    pub revoked: AtomicU64,
    pub lost: AtomicU64,
}

impl Rebalances {
    /// (kind, count) for each kind, as the metrics label them.
    pub fn counts(&self) -> [(&'static str, u64); 3] {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        [
            ("assign", load(&self.assigned)),
            ("revoke", load(&self.revoked)),
            ("lost", load(&self.lost)),
        ]
    }
}

/// A number per partition.
pub type PartitionCounts = BTreeMap<(String, i32), i64>;

/// (broker name and state, requests waiting, how long it has been silent).
pub type SilentBroker = (String, i64, Duration);

/// When each broker last sent anything, kept across its reconnections: a broker behind a black
/// hole cycles through connect, API-version query, time-out and back off, and the age of each
/// state never grows past a few seconds, so a state's age alone hid such a stall (seen in CI).
#[derive(Debug, Default)]
pub struct BrokerHearing {
    brokers: BTreeMap<String, HeardBroker>,
}

#[derive(Debug)]
struct HeardBroker {
    last_heard: Instant,
    state: String,
    waiting: i64,
}

impl BrokerHearing {
    /// One broker in one statistics report: its state, requests sent or queued to it, and
    /// microseconds since it last sent anything on its connection (-1: nothing yet).
    pub fn observe(&mut self, name: &str, state: &str, waiting: i64, rxidle_us: i64, now: Instant) {
        let broker = self
            .brokers
            .entry(name.to_string())
            .or_insert_with(|| HeardBroker {
                last_heard: now,
                state: String::new(),
                waiting: 0,
            });
        if state == "UP" && rxidle_us >= 0 {
            let heard = now
                .checked_sub(Duration::from_micros(rxidle_us as u64))
                .unwrap_or(broker.last_heard);
            broker.last_heard = broker.last_heard.max(heard);
        }
        // Connected with nothing asked of it, a broker has nothing to say: not silence.
        if state == "UP" && waiting == 0 {
            broker.last_heard = now;
        }
        broker.state = state.to_string();
        broker.waiting = waiting;
    }

    /// The broker silent longest among those that are asked something or are (re)connecting,
    /// as (name and state, requests waiting, time since it last sent anything).
    pub fn silent(&self, now: Instant) -> Option<SilentBroker> {
        self.brokers
            .iter()
            .filter(|(_, b)| b.state != "INIT" && (b.state != "UP" || b.waiting > 0))
            .map(|(name, b)| {
                (
                    format!("{name} ({})", b.state),
                    b.waiting,
                    now.saturating_duration_since(b.last_heard),
                )
            })
            .max_by_key(|(_, _, idle)| *idle)
    }
}

impl Default for GroupContext {
    fn default() -> Self {
        GroupContext {
            ledger: Arc::default(),
            lag: Mutex::default(),
            unread: Mutex::new((Instant::now(), BTreeMap::new())),
            silent_broker: Mutex::default(),
            heard: Mutex::default(),
            membership: Mutex::new(Membership::new(Instant::now())),
            rebalances: Rebalances::default(),
        }
    }
}

/// Whether this member is in its group, as librdkafka's statistics say every few seconds: in it
/// means the group handler is `up` and its join state `steady` (an empty assignment is still
/// membership: a group can have more members than partitions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// When the member was last seen in its group (or was created).
    pub last_in_group: Instant,
    /// librdkafka's `state/join_state`, for the message when it is out too long.
    pub state: String,
    /// Whether statistics arrived at all: without them (statistics turned off through the client
    /// properties) nothing is known, and nothing is concluded.
    pub observed: bool,
}

impl Membership {
    pub fn new(now: Instant) -> Self {
        Membership {
            last_in_group: now,
            state: "init/init".into(),
            observed: false,
        }
    }

    pub fn observe(&mut self, state: &str, join_state: &str, now: Instant) {
        self.observed = true;
        self.state = format!("{state}/{join_state}");
        if state == "up" && join_state == "steady" {
            self.last_in_group = now;
        }
    }

    /// How long the member has been out of its group, once that is longer than `deadline`.
    pub fn out_longer_than(&self, deadline: Duration, now: Instant) -> Option<Duration> {
        let out = now.saturating_duration_since(self.last_in_group);
        (self.observed && out > deadline).then_some(out)
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        debug!(group = ?statistics.cgrp, "librdkafka statistics");
        if let Some(group) = &statistics.cgrp {
            self.membership.lock().expect("membership lock").observe(
                &group.state,
                &group.join_state,
                Instant::now(),
            );
        }
        let mut lag = BTreeMap::new();
        let mut unread = BTreeMap::new();
        for (name, topic) in &statistics.topics {
            for (id, p) in &topic.partitions {
                // Partition -1 is librdkafka's internal one; a negative lag means "not known".
                if *id >= 0 && p.consumer_lag >= 0 {
                    lag.insert((name.clone(), *id), p.consumer_lag);
                }
                if *id >= 0 && p.hi_offset >= 0 && p.app_offset >= 0 {
                    unread.insert((name.clone(), *id), (p.hi_offset - p.app_offset).max(0));
                }
            }
        }
        let now = Instant::now();
        let silent = {
            let mut heard = self.heard.lock().expect("heard lock");
            for b in statistics.brokers.values().filter(|b| b.nodeid >= 0) {
                heard.observe(
                    &b.name,
                    &b.state,
                    b.waitresp_cnt + b.outbuf_cnt,
                    b.rxidle,
                    now,
                );
            }
            heard.silent(now)
        };
        *self.lag.lock().expect("lag lock") = lag;
        *self.silent_broker.lock().expect("broker lock") = silent;
        *self.unread.lock().expect("unread lock") = (now, unread);
    }
}

impl ConsumerContext for GroupContext {
    /// The answer to librdkafka's own commit of the stored offsets (every
    /// `auto.commit.interval.ms`, and for partitions being handed over). A refused one is simply
    /// made again with the next: the stored offsets stay until a commit takes them.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => debug!(partitions = %describe(offsets), "offsets committed"),
            Err(e) => debug!(error = %e, "offset commit not accepted; the next one carries it"),
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.hand_over(consumer, tpl),
            Rebalance::Assign(tpl) => {
                self.rebalances.assigned.fetch_add(1, Ordering::Relaxed);
                self.ledger.assigned(&partitions(tpl));
                info!(partitions = %describe(tpl), "partitions assigned");
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

/// How long a member finishes the batches of partitions being taken away before it lets them
/// go. Within it, the new owner starts exactly where this member stopped; past it (an outage
/// mid-rebalance), the new owner redoes the unfinished records, idempotently. The group waits
/// for this member meanwhile, up to `max.poll.interval.ms`.
pub const HANDOVER_DEADLINE: Duration = Duration::from_secs(30);

impl GroupContext {
    /// Partitions are being taken away: finish what the pipeline holds of them, store their last
    /// done offsets, and return; librdkafka commits those offsets before it lets the partitions
    /// go (the unassign waits for that commit). Runs on the fetch thread, inside its poll.
    fn hand_over(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked = partitions(tpl);
        if consumer.assignment_lost() {
            self.rebalances.lost.fetch_add(1, Ordering::Relaxed);
            // The group already gave them to someone else: a commit would be refused.
            let _ = self.ledger.abandon(&revoked);
            warn!(partitions = %describe(tpl), "partitions lost; their new owner replays what was not committed");
            return;
        }
        self.rebalances.revoked.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let drained = self.ledger.drain(&revoked, HANDOVER_DEADLINE);
        if !drained.finished.is_empty()
            && let Err(e) = consumer.store_offsets(&offsets_list(&drained.finished))
        {
            if self.ledger.is_closed() && e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) {
                // Closing during a rebalance: librdkafka let the partitions go before serving this
                // revoke, and the run's final commit already carried what was finished (it logs
                // its own failure), so the refused store loses nothing.
                debug!(partitions = %describe(tpl), "revoked while closing; offsets went with the final commit");
            } else {
                warn!(error = %e, "could not store the offsets of revoked partitions; their new owner replays from the last commit");
            }
        }
        if drained.unfinished.is_empty() {
            info!(partitions = %describe(tpl), finished_in_ms = started.elapsed().as_millis() as u64, "partitions revoked after their batches were finished");
        } else {
            warn!(
                partitions = %describe(tpl),
                unfinished = ?drained.unfinished,
                "partitions revoked with batches still unfinished after {}s; their new owner redoes those records",
                HANDOVER_DEADLINE.as_secs()
            );
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// Positions as the list librdkafka commits.
pub fn offsets_list(positions: &Positions) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in positions {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
    }
    tpl
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

/// A polled message's payload as `Bytes`, without copying it out of librdkafka's fetch buffer.
///
/// Copying every image once more cost the consumer a memcpy plus a fresh page fault per 4 KiB
/// (the profile of a 1 MB-image drain put half its page faults on that copy). The message keeps
/// its fetch buffer alive until the last slice of the payload is dropped, and the consumer it
/// came from is kept alive alongside, so librdkafka is never torn down under it.
pub fn payload_bytes(consumer: &Arc<GroupConsumer>, message: BorrowedMessage<'_>) -> Bytes {
    if message.payload_len() == 0 {
        return Bytes::new();
    }
    // SAFETY: a `BorrowedMessage` borrows its client only to keep the client alive while the
    // message lives (its data belongs to the message's own event handle, freed on drop). The
    // `Arc` stored next to it in `KafkaPayload` gives that same guarantee for as long as the
    // payload lives, and the field order drops the message before the client.
    let message: BorrowedMessage<'static> = unsafe { std::mem::transmute(message) };
    Bytes::from_owner(KafkaPayload {
        message,
        _consumer: consumer.clone(),
    })
}

struct KafkaPayload {
    // Dropped first: fields drop in declaration order.
    message: BorrowedMessage<'static>,
    _consumer: Arc<GroupConsumer>,
}

impl AsRef<[u8]> for KafkaPayload {
    fn as_ref(&self) -> &[u8] {
        self.message.payload().unwrap_or_default()
    }
}

/// Knobs the benchmark tunes; the defaults are what it found best on a 2-core machine.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Upper bound of prefetched bytes held by librdkafka: the consumer's memory bound.
    pub queued_max_kbytes: u32,
    pub fetch_max_bytes: u32,
    pub max_partition_fetch_bytes: u32,
    pub fetch_queue_backoff_ms: u32,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            // Four fetches' worth: with only two librdkafka waited for room before each next
            // fetch (2 MB images drained at 63-79/s against 87-105/s with four), and a fetch
            // larger than half the queue stalls outright (32 MiB fetches into 32 MiB: 28-31/s).
            // Records polled point into their fetch's buffer, which lives until the last of them
            // is committed: 8 MiB fetches into 32 MiB, rather than 16 into 64, kept 2 MiB images
            // at the same pace (pipeline/ceiling 0.83-0.92 in seven runs) and took peak RSS from
            // 260-285 MiB to 216-237.
            queued_max_kbytes: 32 * 1024,
            fetch_max_bytes: 8 << 20,
            max_partition_fetch_bytes: 4 << 20,
            // When the queue above is full, librdkafka waits this long before it fetches for a
            // partition again (default 1000 ms). Large images drain a full queue in well under a
            // second, and the pipeline then sat with nothing to upload: 2 MiB polls waited 500-800
            // ms with no upload running. At 10 ms: 102-125 images/s against 75-81 (three runs each).
            fetch_queue_backoff_ms: 10,
        }
    }
}

pub fn group_consumer(
    kafka: &KafkaSettings,
    fetch: &FetchSettings,
) -> Result<GroupConsumer, BrokerError> {
    group_consumer_config(kafka, fetch)
        .create_with_context(GroupContext::default())
        .map_err(|e| BrokerError::from_kafka(&e, &kafka.bootstrap_servers))
}

/// The group consumer's librdkafka configuration.
pub fn group_consumer_config(
    kafka: &KafkaSettings,
    fetch: &FetchSettings,
) -> rdkafka::ClientConfig {
    let mut config = base_config(kafka, "imgstream-consumer");
    quiet(&mut config)
        .set("group.id", &kafka.group_id)
        .set("auto.offset.reset", kafka.auto_offset_reset.as_str())
        // The pipeline stores an offset only once every record below it is durable (object and
        // row, or dead letter); librdkafka commits what is stored, at most once a second and
        // before partitions are handed over. Its own store on poll stays off. Committing from
        // the pipeline instead sent a commit per poll during outages, each one counted by the
        // unassign that waits for outstanding commits: after a broker restart a member stayed
        // in wait-incr-unassign-to-complete for good.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
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
        .set(
            "fetch.queue.backoff.ms",
            fetch.fetch_queue_backoff_ms.to_string(),
        )
        .set("fetch.wait.max.ms", "100")
        // Per-partition lag for the metrics, every 5 s.
        .set("statistics.interval.ms", "5000");
    group_protocol_config(&mut config, kafka);
    if let Some(id) = &kafka.group_instance_id {
        config.set("group.instance.id", id);
    }
    config
}

/// The settings of the group protocol. Under `consumer` (KIP-848) the broker assigns and owns
/// the session timeout and heartbeat interval, and librdkafka refuses to create a consumer that
/// sets `partition.assignment.strategy`, `session.timeout.ms`, `heartbeat.interval.ms` or
/// `group.protocol.type`; its rebalances are incremental, so the revoke callback (and the
/// hand-over in it) runs for exactly the partitions that move, as under cooperative-sticky.
pub fn group_protocol_config(config: &mut rdkafka::ClientConfig, kafka: &KafkaSettings) {
    config.set("group.protocol", kafka.group_protocol.as_str());
    if kafka.group_protocol == GroupProtocol::Consumer {
        return;
    }
    config
        // Cooperative rebalancing: a joining or leaving member does not stop everyone else.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // A dead or frozen member loses its partitions after the session timeout; its late
        // writes are harmless (create-only objects, idempotent rows) and its late commits are
        // fenced by the generation. At 10 s, a member lost its session whenever a broker of a
        // replicated cluster died: its heartbeats went unanswered until the broker was fenced.
        .set(
            "session.timeout.ms",
            kafka.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            heartbeat_interval(kafka.session_timeout)
                .as_millis()
                .to_string(),
        );
}

/// A fifth of the session timeout, at most Kafka's default 3 s: several heartbeats may go
/// unanswered before the session is at risk.
pub fn heartbeat_interval(session_timeout: Duration) -> Duration {
    (session_timeout / 5).min(Duration::from_secs(3))
}

/// A consumer that reads the group's committed offsets and the partitions' watermarks without
/// joining the group (`status`, `verify`).
pub fn offsets_reader(kafka: &KafkaSettings) -> Result<BaseConsumer, BrokerError> {
    let mut config = base_config(kafka, "imgstream-status");
    quiet(&mut config)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| BrokerError::from_kafka(&e, &kafka.bootstrap_servers))
}

/// A consumer that reads single records at chosen offsets by assignment (`imgstream monitor`
/// reads the timestamp of each partition's oldest unconsumed record). It never subscribes, so it
/// never joins the group, and it never commits. librdkafka refuses an assignment without a
/// `group.id` ("Unknown group"); it carries the group's own, which the consumers' credentials may
/// already use, rather than a second group that ACLs would have to allow. Its prefetch is kept
/// to one fetch per partition: it wants one record, and images are large.
pub fn record_reader(kafka: &KafkaSettings) -> Result<BaseConsumer, BrokerError> {
    let mut config = base_config(kafka, "imgstream-monitor");
    quiet(&mut config)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("queued.min.messages", "1")
        .set("queued.max.messages.kbytes", "1024")
        .create()
        .map_err(|e| BrokerError::from_kafka(&e, &kafka.bootstrap_servers))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_broker_reconnecting_over_and_over_is_silent_since_it_last_answered() {
        let start = Instant::now();
        let mut h = BrokerHearing::default();
        h.observe("b/1", "UP", 1, 100_000, start);
        // A black hole: each report finds the connection in another young state.
        h.observe("b/1", "TRY_CONNECT", 0, -1, start + 5 * S);
        h.observe("b/1", "APIVERSION_QUERY", 1, -1, start + 10 * S);
        h.observe("b/1", "TRY_CONNECT", 2, -1, start + 15 * S);
        let (name, waiting, idle) = h.silent(start + 15 * S).expect("silent");
        assert_eq!((name.as_str(), waiting), ("b/1 (TRY_CONNECT)", 2));
        assert!(idle >= 14 * S, "{idle:?}");
    }

    #[test]
    fn a_broker_that_answers_or_is_asked_nothing_is_not_silent() {
        let start = Instant::now();
        let mut h = BrokerHearing::default();
        h.observe("b/1", "UP", 0, 30_000_000, start + 30 * S);
        h.observe("b/2", "INIT", 0, -1, start + 30 * S);
        assert_eq!(h.silent(start + 30 * S), None);
        // Asked, and it answered 200 ms ago.
        h.observe("b/1", "UP", 1, 200_000, start + 40 * S);
        let (_, _, idle) = h.silent(start + 40 * S).expect("a broker with a request");
        assert!(idle < S, "{idle:?}");
    }

    #[test]
    fn an_answer_after_the_stall_ends_the_silence() {
        let start = Instant::now();
        let mut h = BrokerHearing::default();
        h.observe("b/1", "UP", 1, 0, start);
        h.observe("b/1", "APIVERSION_QUERY", 1, -1, start + 20 * S);
        h.observe("b/1", "UP", 1, 500_000, start + 25 * S);
        let (_, _, idle) = h.silent(start + 25 * S).expect("a broker with a request");
        assert!(idle <= S, "{idle:?}");
    }

    #[test]
    fn a_member_is_out_of_its_group_only_while_not_up_and_steady() {
        let start = Instant::now();
        let deadline = Duration::from_secs(90);
        let mut m = Membership::new(start);
        assert_eq!(
            m.out_longer_than(deadline, start + Duration::from_secs(500)),
            None,
            "without statistics nothing is concluded"
        );
        m.observe("up", "steady", start + Duration::from_secs(5));
        // Rejoining after a broker restart: out, but not yet for long.
        m.observe("query-coord", "init", start + Duration::from_secs(60));
        assert_eq!(
            m.out_longer_than(deadline, start + Duration::from_secs(60)),
            None
        );
        // Still not back 100 s after it was last in: too long.
        assert_eq!(
            m.out_longer_than(deadline, start + Duration::from_secs(105)),
            Some(Duration::from_secs(100))
        );
        assert_eq!(m.state, "query-coord/init");
        // Back in the group (with or without partitions): the clock starts again.
        m.observe("up", "steady", start + Duration::from_secs(106));
        assert_eq!(
            m.out_longer_than(deadline, start + Duration::from_secs(150)),
            None
        );
    }

    // A runtime, because a stream consumer is created inside one.
    #[tokio::test]
    async fn the_consumer_protocol_leaves_out_what_librdkafka_refuses_under_it() {
        let mut kafka = crate::config::Settings::from_vars(&Default::default())
            .unwrap()
            .kafka;
        kafka.group_instance_id = Some("pod-0".into());
        let classic = group_consumer_config(&kafka, &FetchSettings::default());
        assert_eq!(classic.get("group.protocol"), Some("classic"));
        assert_eq!(
            classic.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        kafka.group_protocol = GroupProtocol::Consumer;
        let consumer = group_consumer_config(&kafka, &FetchSettings::default());
        assert_eq!(consumer.get("group.protocol"), Some("consumer"));
        for refused in [
            "partition.assignment.strategy",
            "session.timeout.ms",
            "heartbeat.interval.ms",
            "group.protocol.type",
        ] {
            assert_eq!(consumer.get(refused), None, "{refused}");
        }
        assert_eq!(consumer.get("group.instance.id"), Some("pod-0"));
        // librdkafka itself accepts the result (it checks these when the client is created).
        let created: KafkaResult<GroupConsumer> =
            consumer.create_with_context(GroupContext::default());
        assert!(created.is_ok(), "librdkafka refused: {:?}", created.err());
    }

    #[test]
    fn heartbeats_come_five_times_a_session_at_most_every_three_seconds() {
        assert_eq!(
            heartbeat_interval(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_secs(45)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn a_member_waits_out_two_session_timeouts_before_giving_up_on_rejoining() {
        use crate::kafka::source::rejoin_deadline;
        assert_eq!(
            rejoin_deadline(Duration::from_secs(10)),
            Duration::from_secs(90)
        );
        assert_eq!(
            rejoin_deadline(Duration::from_secs(45)),
            Duration::from_secs(120)
        );
    }
}
