//! Kafka glue: client configuration, the verdict/DLQ producer, and the
//! embedded broker used by `perisai demo`. Kept thin: no screening logic here.

pub mod embedded;
pub mod sink;
pub mod watchdog;

use rdkafka::config::ClientConfig;

use crate::config::KafkaSettings;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("embedded broker: {0}")]
    Embedded(String),
}

/// librdkafka settings for every client: bootstrap servers and statistics (the consumer lag
/// metric and the broker watchdog read them), then the `kafka.client` passthrough.
fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("statistics.interval.ms", settings.statistics_interval_ms.to_string());
    for (key, value) in &settings.client {
        config.set(key, value);
    }
    config
}

/// Consumer settings. Offsets are committed by the worker only (manual, watermark based), never
/// auto-stored, so a crash cannot commit past an unfinished event.
pub fn consumer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    for (key, value) in &settings.consumer {
        config.set(key, value);
    }
    config
}

/// Producer settings: acks from all in-sync replicas and idempotence, so retries neither lose
/// nor reorder verdicts.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = base_config(settings);
    config.set("acks", "all").set("enable.idempotence", "true").set("linger.ms", "5");
    for (key, value) in &settings.producer {
        config.set(key, value);
    }
    config
}
