//! Kafka: every librdkafka setting lives in this module. Producer, consumer, admin (topics) and
//! the dead-letter writer are built from the same base configuration.

pub mod admin;
pub mod consumer;
pub mod dlq;
pub mod header_bytes;
pub mod incremental;
pub mod producer;
pub mod rewind;
pub mod source;

use crate::config::KafkaSettings;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("Kafka at {bootstrap} is unreachable ({detail}); is it running? (make stack-up)")]
    Unreachable { bootstrap: String, detail: String },
    #[error("topic {topic} does not exist; run `imgstream setup`")]
    MissingTopic { topic: String },
    #[error(
        "Kafka at {bootstrap} refused the login ({detail}); check KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
    )]
    LoginRefused { bootstrap: String, detail: String },
    #[error(
        "TLS to Kafka at {bootstrap} failed ({detail}); check KAFKA_SSL_CA_LOCATION, and that the brokers' certificates name the hosts in KAFKA_BOOTSTRAP_SERVERS"
    )]
    Tls { bootstrap: String, detail: String },
    #[error("Kafka refused: {0}")]
    Refused(String),
    #[error("Kafka error: {0}")]
    Other(String),
}

impl From<BrokerError> for crate::pipeline::Failure {
    fn from(e: BrokerError) -> Self {
        crate::pipeline::Failure::judged(&e, e.is_transient())
    }
}

impl BrokerError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BrokerError::Unreachable { .. })
    }

    /// The single place where a librdkafka error is judged.
    pub fn from_kafka(e: &KafkaError, bootstrap: &str) -> BrokerError {
        let code = e.rdkafka_error_code();
        let detail = e.to_string();
        use RDKafkaErrorCode as C;
        match code {
            Some(
                C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::NetworkException
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::CoordinatorLoadInProgress
                | C::BrokerNotAvailable
                | C::Resolve
                | C::QueueFull
                | C::MessageTimedOut,
            ) => BrokerError::Unreachable {
                bootstrap: bootstrap.to_string(),
                detail,
            },
            Some(C::UnknownTopicOrPartition | C::UnknownTopic) => BrokerError::Other(detail),
            Some(C::MessageSizeTooLarge | C::InvalidRecord | C::TopicAuthorizationFailed) => {
                BrokerError::Refused(detail)
            }
            _ => BrokerError::Other(detail),
        }
    }
}

/// The partition ids of `topic`, from the cluster's metadata; `MissingTopic` when it is not
/// there. Blocking.
pub fn partition_ids(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: std::time::Duration,
    bootstrap: &str,
) -> Result<Vec<i32>, BrokerError> {
    use rdkafka::consumer::Consumer;
    let metadata =
        consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| BrokerError::Unreachable {
                bootstrap: bootstrap.to_string(),
                detail: e.to_string(),
            })?;
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .ok_or_else(|| BrokerError::MissingTopic {
            topic: topic.to_string(),
        })
}

/// A client context that keeps the first login or TLS failure librdkafka reports. Those arrive
/// only through the error callback; the call that then fails (metadata) says no more than
/// "transport failure", which would send the user looking for a broker that is running.
#[derive(Default)]
pub struct SecurityWatch {
    failure: std::sync::Mutex<Option<(RDKafkaErrorCode, String)>>,
}

impl SecurityWatch {
    pub fn has_failure(&self) -> bool {
        self.failure.lock().expect("security watch lock").is_some()
    }

    /// What a failed call should be reported as, given what the callbacks saw.
    pub fn explain(&self, bootstrap: &str, detail: String) -> BrokerError {
        let seen = self.failure.lock().expect("security watch lock").clone();
        match seen {
            Some((RDKafkaErrorCode::Authentication, why)) => BrokerError::LoginRefused {
                bootstrap: bootstrap.to_string(),
                detail: why,
            },
            Some((_, why)) => BrokerError::Tls {
                bootstrap: bootstrap.to_string(),
                detail: why,
            },
            None => BrokerError::Unreachable {
                bootstrap: bootstrap.to_string(),
                detail,
            },
        }
    }
}

impl rdkafka::producer::ProducerContext for SecurityWatch {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

impl rdkafka::ClientContext for SecurityWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if let Some(code @ (RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)) = code {
            // "sasl_ssl://host:port/bootstrap: SASL authentication error: … (after 5ms in state
            // AUTH_REQ)": the cause without the broker's name (said by the caller) or the timing.
            let why = reason.split_once(": ").map_or(reason, |(_, why)| why);
            let why = why.split(" (after ").next().unwrap_or(why);
            self.failure
                .lock()
                .expect("security watch lock")
                .get_or_insert((code, why.to_string()));
        } else {
            tracing::debug!(%error, reason, "librdkafka");
        }
    }

    /// The failures this context watches for are reported by the caller, once.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, fac, log_message, "librdkafka");
    }
}

/// Settings every client shares.
pub fn base_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id)
        // Fail fast and clearly when the broker is not there, instead of librdkafka's silent retries.
        .set("socket.connection.setup.timeout.ms", "10000")
        .set("log_level", if kafka.debug.is_some() { "7" } else { "4" });
    if let Some(debug) = &kafka.debug {
        config.set("debug", debug);
    }
    // Security (TLS, SASL) and anything else the user passed, last so that it is what applies.
    for (key, value) in kafka.client.iter() {
        config.set(key, value);
    }
    config
}

/// librdkafka logs connection failures on its own threads; we report them ourselves, once.
/// Runs a blocking librdkafka call (metadata, offsets) on the blocking pool, off the async thread.
pub async fn off_thread<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or_else(|e| Err(BrokerError::Other(format!("broker query stopped: {e}"))))
}

pub fn quiet(config: &mut ClientConfig) -> &mut ClientConfig {
    config.set("log.connection.close", "false")
}

/// Kafka clients being closed on threads of their own (see [`close_in_background`]).
static CLOSING: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Closes a client without waiting for it. Dropping a consumer leaves its group politely, which
/// waits for the group coordinator; after a broker restart that wait once never ended, and the
/// process hung after its work was done. The process waits for these closes a bounded time at
/// exit ([`wait_for_closes`]).
pub fn close_in_background<T: Send + 'static>(client: T) {
    closing(std::thread::spawn(move || drop(client)));
}

/// A thread that may be the one to drop a client's last handle, and so close it: the process
/// waits for it at exit like for [`close_in_background`]'s own.
pub fn closing(thread: std::thread::JoinHandle<()>) {
    CLOSING.lock().expect("closing lock").push(thread);
}

/// Waits up to `limit` for the clients being closed; false when some are still closing.
pub fn wait_for_closes(limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let handles = std::mem::take(&mut *CLOSING.lock().expect("closing lock"));
    for handle in handles {
        while !handle.is_finished() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::BaseConsumer;

    /// librdkafka refuses `sasl.oauthbearer.method=oidc` when it was built without libcurl; with
    /// it, a client fetching its tokens from an OpenID Connect token endpoint can be created.
    #[test]
    fn oauthbearer_with_an_oidc_token_endpoint_is_supported() {
        let consumer: Result<BaseConsumer, _> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "oidc-check")
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanism", "OAUTHBEARER")
            .set("sasl.oauthbearer.method", "oidc")
            .set("sasl.oauthbearer.client.id", "imgstream")
            .set("sasl.oauthbearer.client.secret", "secret")
            .set(
                "sasl.oauthbearer.token.endpoint.url",
                "http://127.0.0.1:1/realms/imgstream/protocol/openid-connect/token",
            )
            .create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
    }

    /// Every codec a producer may use: a client compressing with each can be created (librdkafka
    /// refuses a codec it was built without at configuration time).
    #[test]
    fn every_compression_codec_is_built_in() {
        for codec in ["gzip", "snappy", "lz4", "zstd"] {
            let producer: Result<rdkafka::producer::BaseProducer, _> = ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:1")
                .set("compression.type", codec)
                .create();
            assert!(producer.is_ok(), "{codec}: {:?}", producer.err());
        }
    }
}
