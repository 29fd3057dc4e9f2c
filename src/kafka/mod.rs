//! Kafka glue: client configuration, the verdict/DLQ producer, the bank topic reader and writer,
//! and the embedded broker used by `perisai demo`. Kept thin: no screening logic here.

pub mod bank_feed;
pub mod flood_counts;
pub mod embedded;
pub mod replica;
pub mod sink;
pub mod watchdog;

use rdkafka::config::ClientConfig;

use crate::config::{Delivery, KafkaSettings};

/// Creating a Kafka client or the embedded broker failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("creating the kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("embedded broker: {0}")]
    Embedded(String),
}

/// librdkafka settings for every client: bootstrap servers and statistics (the consumer lag
/// metric and the broker watchdog read them), then the `kafka.client` passthrough.
pub(crate) fn base_config(settings: &KafkaSettings) -> ClientConfig {
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
///
/// Fail-over in seconds at the defaults: librdkafka's 45 s session timeout would leave a crashed
/// worker's partitions idle for most of a minute; 6 s (the broker's default minimum) with a
/// heartbeat every 1.5 s moves them in about 6 s. Static membership (the worker adds
/// `group.instance.id` from its [`replica::Replica`]) gives a replica that restarts under the same
/// name its partitions back without waiting at all. The timings can be overridden under
/// `[kafka.consumer]`.
pub fn consumer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1500")
        // The worker stops receiving when its in-flight bound is full and lets this queue hold
        // what was fetched: 16 MiB rather than 64 bounds the memory that takes. Once the queue
        // was over it, librdkafka waits fetch.queue.backoff.ms (1 s by default) before fetching
        // again: the worker had emptied it long before, and throughput was capped near 8,000
        // events/s whatever the CPU (docs/BENCHMARKS.md, Pipeline).
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.queue.backoff.ms", "20");
    for (key, value) in &settings.consumer {
        config.set(key, value);
    }
    if settings.delivery == Delivery::ExactlyOnce {
        // Input written by transactional producers is read only once committed; aborted
        // records never get a verdict. (The config check refuses an override of it.)
        config.set("isolation.level", "read_committed");
    }
    config
}

/// Producer settings: acks from all in-sync replicas and idempotence, so retries neither lose
/// nor reorder verdicts. In exactly-once mode the producer is transactional, its id made from
/// `replica` (the worker's claimed name); other producers pass `None` and are not.
pub fn producer_config(settings: &KafkaSettings, replica: Option<&replica::Replica>) -> ClientConfig {
    let mut config = base_config(settings);
    // linger.ms 1 rather than 5: a verdict's event holds its in-flight place until the broker
    // acknowledges it, so linger is paid by throughput at a small bound and by every verdict's
    // latency; batches still form while earlier requests are in flight.
    config.set("acks", "all").set("enable.idempotence", "true").set("linger.ms", "1");
    for (key, value) in &settings.producer {
        config.set(key, value);
    }
    if let (Delivery::ExactlyOnce, Some(replica)) = (settings.delivery, replica) {
        // One id per worker, not per input partition: the consumer group metadata sent with the
        // offsets (KIP-447) lets the broker fence a zombie that lost its partitions, whatever its
        // transactional.id. The id only fences an earlier incarnation of the same replica.
        config
            .set("transactional.id", settings.transactional_id(replica.name()))
            .set("transaction.timeout.ms", settings.transaction_timeout_ms.to_string());
    }
    config
}
