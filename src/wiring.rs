//! The wiring point: every client imgstream talks to is built here, from [`Settings`], and
//! nowhere else. The CLI, `setup`, `status`/`verify`, the benchmark and the tests all call these
//! functions, so a setting (an address, a timeout, later TLS and credentials) is applied in one
//! place for every command.

use crate::config::Settings;
use crate::index::{ImageIndex, IndexError};
use crate::kafka::BrokerError;
use crate::kafka::admin::{TopicAdmin, dlq_topic_spec};
use crate::kafka::consumer::{FetchSettings, group_consumer, offsets_reader as offsets_reader_for};
use crate::kafka::dlq::DeadLetterWriter;
use crate::kafka::producer::ImageProducer;
use crate::kafka::source::KafkaSource;
use crate::metrics::Metrics;
use crate::pipeline::{ImageSink, IndexSink, Pipeline, PipelineOptions, Ports};
use crate::schema::{
    EncodeError, IMAGE_RECORD_SCHEMA, ImageCodec, RegistryClient, RegistryError, value_subject,
};
use crate::shutdown::Shutdown;
use crate::store::{ImageStore, StoreError};
use crate::validate::Limits;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::sync::Arc;
use tracing::{info, warn};

pub fn registry(settings: &Settings) -> Result<RegistryClient, RegistryError> {
    RegistryClient::with_access(
        &settings.registry_url,
        settings.connect_timeout,
        settings.registry_auth.clone(),
        settings.registry_ca_file.as_deref(),
    )
}

/// The decoder for the data topic: our schema as reader, writer schemas from the registry.
pub fn codec(settings: &Settings) -> Result<ImageCodec, String> {
    let registry = registry(settings).map_err(|e| e.to_string())?;
    let subject = value_subject(&settings.kafka.data_topic);
    ImageCodec::new(IMAGE_RECORD_SCHEMA, Arc::new(registry), &subject)
        .map_err(|e: EncodeError| e.to_string())
}

pub fn store(settings: &Settings) -> Result<ImageStore, StoreError> {
    ImageStore::s3(&settings.store, settings.connect_timeout)
}

pub async fn index(settings: &Settings) -> Result<ImageIndex, IndexError> {
    ImageIndex::connect(&settings.database_url, settings.connect_timeout).await
}

pub fn topic_admin(settings: &Settings) -> Result<TopicAdmin, BrokerError> {
    TopicAdmin::new(&settings.kafka, settings.connect_timeout)
}

pub fn producer(settings: &Settings) -> Result<ImageProducer, BrokerError> {
    ImageProducer::new(&settings.kafka, &settings.limits)
}

/// The dead-letter writer, its letter budget from the DLQ topic's `max.message.bytes` as the
/// broker has it: an operator may have changed it since `setup`. An identity that may not
/// describe topic configs (the application identity needs no DescribeConfigs ACL) cannot read
/// it; the value `setup` writes stands in, and the writer still falls back to a letter's
/// reference if the broker refuses it as too large.
pub async fn dead_letters(settings: &Settings) -> Result<DeadLetterWriter, BrokerError> {
    let configured = dlq_topic_spec(&settings.kafka, &settings.limits)
        .minimum("max.message.bytes")
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(settings.limits.max_message_bytes());
    let topic = &settings.kafka.dlq_topic;
    let read = match topic_admin(settings) {
        Ok(admin) => admin.topic_configs(topic).await,
        Err(e) => Err(e),
    };
    let max_message_bytes = match read.map(|c| c.get("max.message.bytes").cloned()) {
        Ok(Some(value)) => value.parse().unwrap_or(configured),
        Ok(None) => {
            info!(
                "the configuration of {topic} is hidden from this identity; dead letters are sized for max.message.bytes {configured}, as setup writes it"
            );
            configured
        }
        Err(e) => {
            warn!(
                "cannot read max.message.bytes of {topic} ({e}); dead letters are sized for {configured}, as setup writes it"
            );
            configured
        }
    };
    DeadLetterWriter::new(&settings.kafka, &settings.limits, max_message_bytes)
}

/// A member of the consumer group, subscribed to the data topic.
pub fn source(settings: &Settings) -> Result<KafkaSource, BrokerError> {
    let kafka = &settings.kafka;
    let consumer = group_consumer(kafka, &FetchSettings::default())?;
    consumer.subscribe(&[&kafka.data_topic]).map_err(|e| {
        BrokerError::Other(format!("cannot subscribe to {}: {e}", kafka.data_topic))
    })?;
    let probe_settings = kafka.clone();
    let probe = Arc::new(move || {
        offsets_reader_for(&probe_settings).is_ok_and(|client| {
            let answered = client
                .fetch_metadata(None, std::time::Duration::from_secs(5))
                .is_ok();
            crate::kafka::close_in_background(client);
            answered
        })
    });
    KafkaSource::new(
        Arc::new(consumer),
        &kafka.bootstrap_servers,
        kafka.session_timeout,
        probe,
    )
}

/// Reads the group's committed offsets without joining it.
pub fn offsets_reader(settings: &Settings) -> Result<BaseConsumer, BrokerError> {
    offsets_reader_for(&settings.kafka)
}

/// The record limits the settings ask for.
pub fn limits(settings: &Settings) -> Limits {
    Limits {
        max_pixels: settings.limits.max_pixels,
        max_image_bytes: settings.limits.max_image_bytes,
        ids: settings.limits.ids,
    }
}

/// A consumer: the pipeline on the real services, its source (for the live lag figure), and its
/// metrics when asked for.
pub struct ConsumerPipeline {
    pub pipeline: Pipeline,
    pub source: Arc<KafkaSource>,
    pub metrics: Option<Arc<Metrics>>,
}

/// Builds every client the consumer needs and joins them into a pipeline; with `metrics`, the
/// sinks are timed and the pipeline's counters are exported.
pub async fn consumer(
    settings: &Settings,
    opts: PipelineOptions,
    shutdown: Shutdown,
    metrics: bool,
) -> Result<ConsumerPipeline, String> {
    let source = Arc::new(source(settings).map_err(|e| e.to_string())?);
    let images = store(settings).map_err(|e| e.to_string())?;
    let index = index(settings).await.map_err(|e| e.to_string())?;
    let mut metrics = metrics.then(Metrics::new);
    let (images, index): (Arc<dyn ImageSink>, Arc<dyn IndexSink>) = match &metrics {
        Some(m) => (
            Arc::new(m.timed_images(images)),
            Arc::new(m.timed_index(index)),
        ),
        None => (Arc::new(images), Arc::new(index)),
    };
    let ports = Ports {
        source: source.clone(),
        codec: Arc::new(codec(settings)?),
        images,
        index,
        dead_letters: Arc::new(dead_letters(settings).await.map_err(|e| e.to_string())?),
    };
    let pipeline = Pipeline::new(ports, opts, shutdown);
    if let Some(m) = &mut metrics {
        let lag_of = source.clone();
        m.watch(pipeline.stats(), move || lag_of.lag());
        let rebalances_of = source.clone();
        let membership_of = source.clone();
        m.watch_rebalances(
            move || rebalances_of.rebalances(),
            move || membership_of.out_of_group().as_secs_f64(),
        );
    }
    Ok(ConsumerPipeline {
        pipeline,
        source,
        metrics: metrics.map(Arc::new),
    })
}
