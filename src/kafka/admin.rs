//! Topic administration: the data and dead-letter topics, created by `imgstream setup`.
//!
//! Of a topic's settings imgstream owns three, each as a floor ([`Minimum`]); every other one is
//! the operator's. A change goes through an incremental alter ([`super::incremental`]) naming only
//! the settings that fall short, so nothing an operator set is reset or lowered.

use super::{BrokerError, SecurityWatch, base_config, incremental, quiet};
use crate::config::{KafkaSettings, LimitSettings};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaRespErr;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What a topic should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// The settings imgstream owns, each a floor: an operator may set any of them higher, and
    /// every setting not listed here is the operator's alone.
    pub minimums: Vec<Minimum>,
}

impl TopicSpec {
    /// The floor the spec sets for `key`, if it owns that setting.
    pub fn minimum(&self, key: &str) -> Option<i64> {
        self.minimums.iter().find(|m| m.key == key).map(|m| m.value)
    }
}

/// A topic setting that must be at least `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minimum {
    pub key: &'static str,
    pub value: i64,
    /// The setting `value` follows from, named in reports so an operator knows what to change.
    pub from: &'static str,
    pub need: Need,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Below it imgstream fails: records or dead letters refused as too large, or acknowledged
    /// writes lost with a broker. A producer or consumer does not start.
    Required,
    /// A setting of imgstream's (retention): below it `setup` raises it and `--check` and
    /// startup report it, but nothing breaks, so nothing refuses to start.
    Preferred,
}

impl Minimum {
    /// Whether a value found on the broker meets this floor. For retention, -1 is "forever",
    /// which meets any floor.
    fn is_met_by(&self, found: &str) -> bool {
        let Ok(found) = found.trim().parse::<i64>() else {
            return false;
        };
        let unlimited = |v: i64| self.key.starts_with("retention.") && v == -1;
        unlimited(found) || (!unlimited(self.value) && found >= self.value)
    }
}

/// The data topic: sized for the largest image we accept, kept as long as the settings say.
pub fn data_topic_spec(kafka: &KafkaSettings, limits: &LimitSettings) -> TopicSpec {
    TopicSpec {
        name: kafka.data_topic.clone(),
        partitions: kafka.partitions,
        replication_factor: kafka.replication_factor,
        minimums: minimums(
            kafka,
            limits,
            kafka.data_retention_ms,
            "KAFKA_DATA_RETENTION_MS",
        ),
    }
}

/// The dead-letter topic carries the original bytes, so it takes the same size; it is kept
/// longer by default, because someone has to look at it.
pub fn dlq_topic_spec(kafka: &KafkaSettings, limits: &LimitSettings) -> TopicSpec {
    TopicSpec {
        name: kafka.dlq_topic.clone(),
        partitions: 1,
        replication_factor: kafka.replication_factor,
        minimums: minimums(
            kafka,
            limits,
            kafka.dlq_retention_ms,
            "KAFKA_DLQ_RETENTION_MS",
        ),
    }
}

fn minimums(
    kafka: &KafkaSettings,
    limits: &LimitSettings,
    retention_ms: i64,
    retention_var: &'static str,
) -> Vec<Minimum> {
    vec![
        Minimum {
            key: "max.message.bytes",
            value: limits.max_message_bytes() as i64,
            from: "IMGSTREAM_MAX_IMAGE_BYTES",
            need: Need::Required,
        },
        Minimum {
            key: "min.insync.replicas",
            value: min_isr(kafka.replication_factor),
            from: "KAFKA_REPLICATION_FACTOR",
            need: Need::Required,
        },
        Minimum {
            key: "retention.ms",
            value: retention_ms,
            from: retention_var,
            need: Need::Preferred,
        },
    ]
}

fn min_isr(replication_factor: i32) -> i64 {
    // With three replicas, acks=all then survives one broker down without losing acknowledged writes.
    if replication_factor >= 3 { 2 } else { 1 }
}

/// What [`TopicAdmin::ensure`] did to a topic, and the shortfalls it leaves to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    pub done: Option<String>,
    pub left: Vec<String>,
}

/// One way a topic falls short of its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// e.g. "images retention.ms is 3600000, below the 604800000 that KAFKA_DATA_RETENTION_MS
    /// asks for".
    pub detail: String,
    /// A producer or consumer must not start while it lasts.
    pub blocks: bool,
    /// The setting and value `setup` writes to mend it; `None` when setup leaves it alone.
    fix: Option<(&'static str, String)>,
}

impl Shortfall {
    /// Whether `imgstream setup` mends it.
    pub fn setup_mends(&self) -> bool {
        self.fix.is_some()
    }
}

pub struct TopicAdmin {
    /// Shared with the thread that waits for an incremental alter, which keeps the client (and
    /// its `rd_kafka_t`) alive until the answer is in, even if the caller stopped waiting.
    client: Arc<AdminClient<DefaultClientContext>>,
    /// Asks for metadata, and sees why a connection failed: an admin client never polls the
    /// queue librdkafka reports login and TLS failures on.
    probe: BaseProducer<SecurityWatch>,
    bootstrap: String,
    timeout: Duration,
}

/// How a topic on the broker stands against its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    Missing,
    /// The topic exists; how it falls short of the spec, if at all (empty: it meets it).
    Present(Vec<Shortfall>),
    /// The topic exists but its configuration is hidden from this identity (no DescribeConfigs
    /// ACL, which an application identity does not need).
    ConfigHidden,
}

impl TopicAdmin {
    pub fn new(kafka: &KafkaSettings, timeout: Duration) -> Result<Self, BrokerError> {
        let config = quiet(&mut base_config(kafka, "imgstream-admin")).clone();
        let created = |e| BrokerError::from_kafka(&e, &kafka.bootstrap_servers);
        let client = config.create().map_err(created)?;
        let probe = config
            .create_with_context(SecurityWatch::default())
            .map_err(created)?;
        Ok(TopicAdmin {
            client: Arc::new(client),
            probe,
            bootstrap: kafka.bootstrap_servers.clone(),
            timeout,
        })
    }

    fn opts(&self) -> AdminOptions {
        AdminOptions::new()
            .operation_timeout(Some(self.timeout))
            .request_timeout(Some(self.timeout))
    }

    fn err(&self, e: rdkafka::error::KafkaError) -> BrokerError {
        BrokerError::from_kafka(&e, &self.bootstrap)
    }

    /// Cluster metadata; also the reachability probe (bounded by the timeout).
    pub fn metadata(&self, topic: Option<&str>) -> Result<Metadata, BrokerError> {
        // In slices, so that a refused login or certificate ends the wait at once.
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            let slice = self.timeout.min(Duration::from_secs(1));
            let result = self.probe.client().fetch_metadata(topic, slice);
            let e = match result {
                Ok(metadata) => return Ok(metadata),
                Err(e) => e,
            };
            for _ in 0..64 {
                self.probe.poll(Duration::ZERO);
            }
            let watch = self.probe.context();
            if watch.has_failure() || std::time::Instant::now() >= deadline {
                return Err(watch.explain(&self.bootstrap, e.to_string()));
            }
        }
    }

    /// The topic's partition count, `None` when it does not exist; a topic this identity may not
    /// describe is refused by name (under ACLs Kafka does not say whether it exists).
    pub fn partition_count(&self, topic: &str) -> Result<Option<usize>, BrokerError> {
        let metadata = self.metadata(Some(topic))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match found.error() {
            None => Ok(Some(found.partitions().len())),
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) => {
                Err(BrokerError::Refused(format!(
                    "not authorized to describe topic {topic}; the identity needs an ACL for it (see README, Least privilege)"
                )))
            }
            Some(_) => Ok(None),
        }
    }

    pub async fn state(&self, spec: &TopicSpec) -> Result<TopicState, BrokerError> {
        let Some(partitions) = self.partition_count(&spec.name)? else {
            return Ok(TopicState::Missing);
        };
        let mut shortfalls = Vec::new();
        if partitions < spec.partitions as usize {
            // Fewer partitions limit how many consumers share the work; nothing is lost, and
            // setup does not repartition a topic whose keys may already be spread over them.
            shortfalls.push(Shortfall {
                detail: format!(
                    "{} has {partitions} partitions, fewer than the {} KAFKA_TOPIC_PARTITIONS asks for; setup leaves that to you",
                    spec.name, spec.partitions
                ),
                blocks: false,
                fix: None,
            });
        }
        let actual = self.topic_configs(&spec.name).await?;
        if actual.is_empty() {
            // A real topic always describes dozens of settings: none means they are hidden.
            return Ok(TopicState::ConfigHidden);
        }
        for minimum in &spec.minimums {
            let found = actual.get(minimum.key).map(String::as_str);
            if found.is_some_and(|found| minimum.is_met_by(found)) {
                continue;
            }
            let wanted = match minimum.value {
                -1 => "-1 (forever)".to_string(),
                v => v.to_string(),
            };
            let blocks = minimum.need == Need::Required;
            shortfalls.push(Shortfall {
                detail: format!(
                    "{} {} is {}, below the {wanted} that {} asks for",
                    spec.name,
                    minimum.key,
                    found.unwrap_or("<unset>"),
                    minimum.from,
                ),
                blocks,
                fix: Some((minimum.key, minimum.value.to_string())),
            });
        }
        Ok(TopicState::Present(shortfalls))
    }

    /// Every setting of a topic the broker describes to this identity; empty when they are
    /// hidden from it (no DescribeConfigs ACL).
    pub async fn topic_configs(
        &self,
        topic: &str,
    ) -> Result<BTreeMap<String, String>, BrokerError> {
        let results = self
            .client
            .describe_configs([&ResourceSpecifier::Topic(topic)], &self.opts())
            .await
            .map_err(|e| self.err(e))?;
        let mut out = BTreeMap::new();
        for result in results {
            let resource = result.map_err(|code| {
                BrokerError::Refused(format!("describing topic {topic}: {code}"))
            })?;
            for entry in resource.entries {
                if let Some(value) = entry.value {
                    out.insert(entry.name, value);
                }
            }
        }
        Ok(out)
    }

    /// Creates the topic, or raises the settings it owns that fall short; returns what it did and
    /// what it left as it found it.
    pub async fn ensure(&self, spec: &TopicSpec) -> Result<Ensured, BrokerError> {
        let shortfalls = match self.state(spec).await? {
            TopicState::Present(shortfalls) => shortfalls,
            TopicState::ConfigHidden => {
                return Err(BrokerError::Refused(format!(
                    "not allowed to read the configuration of topic {}; run setup as an identity that may (DescribeConfigs)",
                    spec.name
                )));
            }
            TopicState::Missing => {
                self.create(spec).await?;
                return Ok(Ensured {
                    done: Some(format!(
                        "created topic {} ({} partitions, replication {})",
                        spec.name, spec.partitions, spec.replication_factor
                    )),
                    left: Vec::new(),
                });
            }
        };
        let (fixable, left): (Vec<Shortfall>, Vec<Shortfall>) =
            shortfalls.into_iter().partition(|s| s.fix.is_some());
        let left = left.into_iter().map(|s| s.detail).collect();
        if fixable.is_empty() {
            return Ok(Ensured { done: None, left });
        }
        // Only the settings that fall short, each set on its own: whatever else an operator set
        // on the topic stays (the legacy AlterConfigs would reset it to the broker's default).
        let entries: Vec<(String, String)> = fixable
            .iter()
            .filter_map(|s| s.fix.clone())
            .map(|(key, value)| (key.to_string(), value))
            .collect();
        let (client, topic, timeout) = (self.client.clone(), spec.name.clone(), self.timeout);
        let bootstrap = self.bootstrap.clone();
        super::off_thread(move || {
            incremental::set_topic_configs(&*client, &topic, &entries, timeout).map_err(|e| {
                match BrokerError::from_kafka(&KafkaError::AdminOp(e.code), &bootstrap) {
                    unreachable @ BrokerError::Unreachable { .. } => unreachable,
                    _ => BrokerError::Refused(format!("altering topic {topic}: {}", e.detail)),
                }
            })
        })
        .await?;
        let done = fixable
            .iter()
            .map(|s| s.detail.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Ensured {
            done: Some(format!("raised on topic {}: {done}", spec.name)),
            left,
        })
    }

    async fn create(&self, spec: &TopicSpec) -> Result<(), BrokerError> {
        let values: Vec<(&str, String)> = spec
            .minimums
            .iter()
            .map(|m| (m.key, m.value.to_string()))
            .collect();
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication_factor),
        );
        for (key, value) in &values {
            topic = topic.set(key, value);
        }
        let results = self
            .client
            .create_topics([&topic], &self.opts())
            .await
            .map_err(|e| self.err(e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BrokerError::Refused(format!(
                        "creating topic {name}: {code}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Deletes topics; for test teardown.
    pub async fn delete(&self, topics: &[&str]) -> Result<(), BrokerError> {
        let results = self
            .client
            .delete_topics(topics, &self.opts())
            .await
            .map_err(|e| self.err(e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, code)) => {
                    return Err(BrokerError::Refused(format!(
                        "deleting topic {name}: {code}"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn spec_minimum(key: &str) -> Minimum {
        let settings = Settings::from_vars(&crate::config::tests::vars(&[])).unwrap();
        data_topic_spec(&settings.kafka, &settings.limits)
            .minimums
            .into_iter()
            .find(|m| m.key == key)
            .unwrap()
    }

    #[test]
    fn a_longer_or_unlimited_retention_meets_the_setting_and_a_shorter_one_does_not() {
        let week = spec_minimum("retention.ms");
        assert_eq!(week.value, 604_800_000);
        assert_eq!(week.need, Need::Preferred);
        for found in ["604800000", "2592000000", "-1"] {
            assert!(week.is_met_by(found), "{found}");
        }
        for found in ["3600000", "", "forever"] {
            assert!(!week.is_met_by(found), "{found}");
        }
        let forever = Minimum { value: -1, ..week };
        assert!(forever.is_met_by("-1"));
        assert!(!forever.is_met_by("2592000000"), "only forever is as long");
    }

    #[test]
    fn only_the_size_limit_and_min_insync_replicas_are_required_and_minus_one_meets_neither() {
        for key in ["max.message.bytes", "min.insync.replicas"] {
            let minimum = spec_minimum(key);
            assert_eq!(minimum.need, Need::Required, "{key}");
            assert!(!minimum.is_met_by("-1"), "{key}");
            assert!(
                !minimum.is_met_by(&(minimum.value - 1).to_string()),
                "{key}"
            );
            assert!(minimum.is_met_by(&(minimum.value + 1).to_string()), "{key}");
        }
        assert_eq!(min_isr(1), 1);
        assert_eq!(min_isr(3), 2);
    }
}
