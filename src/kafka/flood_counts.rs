//! Fleet-wide flood counts over `kafka.flood_topic`: every bucket (10 s) each worker publishes its
//! own per-entry match counts, and reads every other worker's into its [`FloodWatch`], which sums
//! them (see `bank::flood`). Reports matter for seconds, so a worker reads the topic from its end
//! (a worker just started misses at most the last bucket's reports) and the topic keeps an hour at
//! most. Both halves live as long as the watch: they hold it weakly and stop once it is gone.
//!
//! Records: key `INSTANCE/BANK/SIGNAL/HASH`, value `perisai.flood_count/v1` JSON. They name bank
//! hashes, as the bank topic does; they are never logged.

use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::base_config;
use crate::bank::hash_text::parse_hash;
use crate::bank::flood::{EntryCounts, FloodWatch, BUCKET_SECS};
use crate::bank::Signal;
use crate::config::KafkaSettings;

pub const FLOOD_COUNT_SCHEMA: &str = "perisai.flood_count/v1";

/// One worker's counts for one entry.
#[derive(Debug, Serialize, Deserialize)]
struct FloodCountRecord {
    schema: String,
    instance: String,
    bank: String,
    signal: String,
    hash: String,
    matches_last_minute: u64,
    baseline_per_minute: f64,
}

/// Starts publishing `watch`'s counts as `instance` and reading the other workers' into it. A
/// topic that cannot be read or written is logged (once a minute at most) and retried: the
/// worker then counts alone, as without a flood topic.
pub fn start(settings: &KafkaSettings, watch: &Arc<FloodWatch>, instance: String) {
    let reader = (settings.clone(), Arc::downgrade(watch), instance.clone());
    std::thread::Builder::new()
        .name("flood-counts".into())
        .spawn(move || read(&reader.0, &reader.1, &reader.2))
        .expect("spawning the flood counts reader");
    tokio::spawn(publish(settings.clone(), Arc::downgrade(watch), instance));
}

async fn publish(settings: KafkaSettings, watch: Weak<FloodWatch>, instance: String) {
    let mut config = base_config(&settings);
    for (key, value) in &settings.producer {
        config.set(key, value);
    }
    // Counts are re-sent every bucket: one lost is replaced by the next, so no retries to wait on.
    config.set("acks", "1").set("linger.ms", "50").set("message.timeout.ms", "5000");
    let producer: FutureProducer = match config.create() {
        Ok(producer) => producer,
        Err(error) => {
            tracing::error!(%error, "flood counts: no producer; this worker counts floods alone");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(BUCKET_SECS));
    let mut warned: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        let Some(counts) = watch.upgrade().map(|w| w.own_counts()) else { return };
        let records: Vec<(String, Vec<u8>)> = counts.iter().map(|c| record(&instance, c)).collect();
        let sends = records.iter().map(|(key, value)| {
            producer.send(FutureRecord::to(&settings.flood_topic).key(key).payload(value), Duration::from_secs(5))
        });
        for result in futures::future::join_all(sends).await {
            if let Err((error, _)) = result {
                if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(topic = %settings.flood_topic, %error, "flood counts: a report was not published; other workers count without it");
                    warned = Some(std::time::Instant::now());
                }
            }
        }
    }
}

fn record(instance: &str, counts: &EntryCounts) -> (String, Vec<u8>) {
    let (signal, hash) = (counts.hash.signal().as_str(), counts.hash.to_hex());
    let value = FloodCountRecord {
        schema: FLOOD_COUNT_SCHEMA.into(),
        instance: instance.into(),
        bank: counts.bank.clone(),
        signal: signal.into(),
        hash: hash.clone(),
        matches_last_minute: counts.matches_last_minute,
        baseline_per_minute: counts.baseline_per_minute,
    };
    (format!("{instance}/{}/{signal}/{hash}", counts.bank), serde_json::to_vec(&value).expect("records serialize"))
}

/// Another worker's report, or `None` for this worker's own, another schema, or a bad record.
fn parse(instance: &str, payload: &[u8]) -> Option<(String, EntryCounts)> {
    let r: FloodCountRecord = serde_json::from_slice(payload).ok()?;
    if r.schema != FLOOD_COUNT_SCHEMA || r.instance == instance || !r.baseline_per_minute.is_finite() {
        return None;
    }
    let hash = parse_hash(Signal::parse(&r.signal)?, &r.hash).ok()?;
    let counts = EntryCounts { bank: r.bank, hash, matches_last_minute: r.matches_last_minute, baseline_per_minute: r.baseline_per_minute };
    Some((r.instance, counts))
}

/// Reads every partition from its end into the watch until the watch is gone, reopening the
/// topic after an error.
fn read(settings: &KafkaSettings, watch: &Weak<FloodWatch>, instance: &str) {
    let mut warned: Option<std::time::Instant> = None;
    while watch.strong_count() > 0 {
        if let Err(error) = read_until_gone(settings, watch, instance) {
            if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(topic = %settings.flood_topic, %error, "flood counts: cannot read the other workers' counts; counting alone meanwhile");
                warned = Some(std::time::Instant::now());
            }
            std::thread::sleep(Duration::from_secs(BUCKET_SECS));
        }
    }
}

fn read_until_gone(settings: &KafkaSettings, watch: &Weak<FloodWatch>, instance: &str) -> Result<(), String> {
    let mut config = base_config(settings);
    for (key, value) in &settings.consumer {
        config.set(key, value);
    }
    // Assigned, never subscribed: this group id is never joined (librdkafka wants one to assign).
    config.set("group.id", format!("perisai-flood-reader-{}", std::process::id())).set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    let metadata = consumer.fetch_metadata(Some(&settings.flood_topic), Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == settings.flood_topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err("the topic does not exist".into());
    }
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment.add_partition_offset(&settings.flood_topic, p, Offset::End).map_err(|e| e.to_string())?;
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    loop {
        let Some(watch) = watch.upgrade() else { return Ok(()) };
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                if let Some((from, counts)) = message.payload().and_then(|p| parse(instance, p)) {
                    watch.merge_peer(&from, &counts);
                }
            }
            Some(Err(error)) => return Err(error.to_string()),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::ParsedHash;

    #[test]
    fn records_round_trip_and_a_worker_skips_its_own() {
        let counts = EntryCounts { bank: "ncii".into(), hash: ParsedHash::Md5([7; 16]), matches_last_minute: 12, baseline_per_minute: 0.5 };
        let (key, value) = record("w1", &counts);
        assert_eq!(key, format!("w1/ncii/md5/{}", "07".repeat(16)));
        assert_eq!(parse("w2", &value), Some(("w1".to_string(), counts)));
        assert_eq!(parse("w1", &value), None, "its own report");
        assert_eq!(parse("w2", b"{\"schema\":\"other\"}"), None);
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/schemas/flood_count.schema.json")).expect("schema JSON");
        let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert!(jsonschema::validator_for(&schema).expect("valid schema").is_valid(&json), "{json}");
        let bad = String::from_utf8(value).unwrap().replace("0707", "zz07");
        assert_eq!(parse("w2", bad.as_bytes()), None, "a hash that does not parse");
    }
}
