//! Topic administration: the data and dead-letter topics, created by `imgstream setup`.

use super::{BrokerError, SecurityWatch, base_config, quiet};
use crate::config::{KafkaSettings, LimitSettings};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaRespErr;
use std::collections::BTreeMap;
use std::time::Duration;

/// What a topic should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: BTreeMap<&'static str, String>,
}

/// The data topic: sized for the largest image we accept, kept for a week.
pub fn data_topic_spec(kafka: &KafkaSettings, limits: &LimitSettings) -> TopicSpec {
    let mut configs = BTreeMap::new();
    configs.insert("max.message.bytes", limits.max_message_bytes().to_string());
    configs.insert("retention.ms", (7 * 24 * 3600 * 1000u64).to_string());
    configs.insert("min.insync.replicas", min_isr(kafka.replication_factor));
    TopicSpec {
        name: kafka.data_topic.clone(),
        partitions: kafka.partitions,
        replication_factor: kafka.replication_factor,
        configs,
    }
}

/// The dead-letter topic carries the original bytes, so it takes the same size; kept for 30 days
/// because someone has to look at it.
pub fn dlq_topic_spec(kafka: &KafkaSettings, limits: &LimitSettings) -> TopicSpec {
    let mut configs = BTreeMap::new();
    configs.insert("max.message.bytes", limits.max_message_bytes().to_string());
    configs.insert("retention.ms", (30 * 24 * 3600 * 1000u64).to_string());
    configs.insert("min.insync.replicas", min_isr(kafka.replication_factor));
    TopicSpec {
        name: kafka.dlq_topic.clone(),
        partitions: 1,
        replication_factor: kafka.replication_factor,
        configs,
    }
}

fn min_isr(replication_factor: i32) -> String {
    // With three replicas, acks=all then survives one broker down without losing acknowledged writes.
    (if replication_factor >= 3 { 2 } else { 1 }).to_string()
}

pub struct TopicAdmin {
    client: AdminClient<DefaultClientContext>,
    /// Asks for metadata, and sees why a connection failed: an admin client never polls the
    /// queue librdkafka reports login and TLS failures on.
    probe: BaseProducer<SecurityWatch>,
    bootstrap: String,
    timeout: Duration,
}

/// How a topic on the broker differs from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    Missing,
    Ok,
    Different(Vec<String>),
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
            client,
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
        let mut differences = Vec::new();
        if partitions < spec.partitions as usize {
            differences.push(format!(
                "{} has {partitions} partitions, expected at least {}",
                spec.name, spec.partitions
            ));
        }
        let actual = self.topic_configs(&spec.name).await?;
        if actual.is_empty() {
            // A real topic always describes dozens of settings: none means they are hidden.
            return Ok(if differences.is_empty() {
                TopicState::ConfigHidden
            } else {
                TopicState::Different(differences)
            });
        }
        for (key, expected) in &spec.configs {
            let found = actual.get(*key).map(String::as_str).unwrap_or("<unset>");
            if found != expected {
                differences.push(format!(
                    "{} {key} is {found}, expected {expected}",
                    spec.name
                ));
            }
        }
        Ok(if differences.is_empty() {
            TopicState::Ok
        } else {
            TopicState::Different(differences)
        })
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

    /// Creates the topic, or brings its settings in line; returns what it did.
    pub async fn ensure(&self, spec: &TopicSpec) -> Result<Option<String>, BrokerError> {
        match self.state(spec).await? {
            TopicState::Ok => Ok(None),
            TopicState::ConfigHidden => Err(BrokerError::Refused(format!(
                "not allowed to read the configuration of topic {}; run setup as an identity that may (DescribeConfigs)",
                spec.name
            ))),
            TopicState::Missing => {
                let mut topic = NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
                );
                for (k, v) in &spec.configs {
                    topic = topic.set(k, v);
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
                Ok(Some(format!(
                    "created topic {} ({} partitions, replication {})",
                    spec.name, spec.partitions, spec.replication_factor
                )))
            }
            TopicState::Different(differences) => {
                // Settings can be aligned in place; a partition count is never lowered here.
                let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&spec.name));
                for (k, v) in &spec.configs {
                    alter = alter.set(k, v);
                }
                let results = self
                    .client
                    .alter_configs([&alter], &self.opts())
                    .await
                    .map_err(|e| self.err(e))?;
                for result in results {
                    result.map_err(|(_, code)| {
                        BrokerError::Refused(format!("altering topic {}: {code}", spec.name))
                    })?;
                }
                Ok(Some(format!(
                    "updated topic {}: {}",
                    spec.name,
                    differences.join("; ")
                )))
            }
        }
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
