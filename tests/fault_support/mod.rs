//! Helpers shared by the fault-injection tests (`tests/faults.rs`, `tests/broker_restart.rs`):
//! a verdict watcher that timestamps every verdict as it becomes readable, a paced event
//! feeder, and the bookkeeping for missing and duplicate verdicts.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use super::common::{event_json, png, produce_all, producer, unique};

/// One verdict as the watcher saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub event_id: String,
    /// `perisai.worker` header: `HOSTNAME-pid` of the process that wrote it.
    pub worker: String,
    /// The input record it answers (`perisai.source` header): partition and offset.
    pub source: (i32, i64),
    /// Where the verdict itself lies in the verdict topic.
    pub partition: i32,
    pub offset: i64,
    /// When the watcher read it.
    pub at: Instant,
    /// From the verdict itself: its action, the first hash match's entry, its bank state.
    pub action: String,
    pub entry: Option<String>,
    pub banks_version: Option<String>,
    /// The policy version that decided it.
    pub policy: String,
    /// The first hash match is on a quarantined entry.
    pub quarantined: bool,
    /// Retroactive verdicts: the upload they re-decide, and the verdict they supersede.
    pub retro_of: Option<String>,
    pub supersedes: Option<String>,
}

/// Reads a verdict topic from the beginning, continuously, on its own thread.
pub struct Watcher {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    brokers: String,
    topic: String,
}

impl Watcher {
    /// A read_committed watcher: what downstream consumers see.
    pub fn start(brokers: &str, topic: &str) -> Self {
        Self::start_with(brokers, topic, "read_committed")
    }

    /// `isolation` = `read_committed` or `read_uncommitted` (which also sees records of
    /// aborted and still open transactions).
    pub fn start_with(brokers: &str, topic: &str, isolation: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("watcher"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            // Arrival times are the measurement: do not let the broker hold fetches back.
            .set("fetch.wait.max.ms", "20")
            .create()
            .expect("watcher consumer");
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else { continue };
                    let header = |name: &str| {
                        m.headers()
                            .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
                            .map(|v| String::from_utf8_lossy(v).to_string())
                            .unwrap_or_default()
                    };
                    let source = parse_source(&header("perisai.source"));
                    let verdict: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                    let record = Seen {
                        event_id: header("perisai.event_id"),
                        worker: header("perisai.worker"),
                        source,
                        partition: m.partition(),
                        offset: m.offset(),
                        at: Instant::now(),
                        action: verdict["action"].as_str().unwrap_or_default().to_string(),
                        entry: verdict["reasons"]
                            .as_array()
                            .and_then(|r| r.iter().find(|r| r["kind"] == "hash_match"))
                            .and_then(|r| r["entry"].as_str())
                            .map(str::to_string),
                        banks_version: verdict["banks_version"].as_str().map(str::to_string),
                        policy: verdict["policy"].as_str().unwrap_or_default().to_string(),
                        quarantined: verdict["reasons"]
                            .as_array()
                            .and_then(|r| r.iter().find(|r| r["kind"] == "hash_match"))
                            .is_some_and(|r| r["quarantined"] == true),
                        retro_of: verdict["retro"]["upload_event_id"].as_str().map(str::to_string),
                        supersedes: verdict["retro"]["supersedes"].as_str().map(str::to_string),
                    };
                    seen.lock().unwrap().push(record);
                }
            })
        };
        Self { seen, stop, thread: Some(thread), brokers: brokers.to_string(), topic: topic.to_string() }
    }

    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Polls until `done` holds on what has been seen; false if `timeout` passes first.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Seen]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.seen.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until nothing new has arrived for `quiet` (at most `timeout`) and returns what was
    /// seen. For transactional topics, whose end offsets count commit markers, this is how to
    /// know a reader has everything once the writers have stopped.
    pub fn settle(&self, quiet: Duration, timeout: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        let mut last = (self.len(), Instant::now());
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.len();
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= quiet {
                break;
            }
        }
        self.snapshot()
    }

    /// Waits until the watcher has read everything the verdict topic held when this was
    /// called, and returns exactly those verdicts (nothing written after the call).
    pub fn caught_up(&self, timeout: Duration) -> Vec<Seen> {
        let ends = end_offsets(&self.brokers, &self.topic);
        let reached = |seen: &[Seen]| {
            ends.iter().all(|(p, end)| *end == 0 || seen.iter().any(|s| s.partition == *p && s.offset >= end - 1))
        };
        assert!(self.wait_for(timeout, reached), "watcher did not catch up with {ends:?} within {timeout:?}");
        self.snapshot().into_iter().filter(|s| s.offset < ends[&s.partition]).collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `topic/partition/offset` → (partition, offset); (-1, -1) when absent or malformed.
fn parse_source(text: &str) -> (i32, i64) {
    let mut parts = text.rsplitn(3, '/');
    let offset = parts.next().and_then(|o| o.parse().ok());
    let partition = parts.next().and_then(|p| p.parse().ok());
    match (partition, offset) {
        (Some(p), Some(o)) => (p, o),
        _ => (-1, -1),
    }
}

/// Each partition's end offset (the offset the next record will get).
pub fn end_offsets(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).expect("watermarks");
            (p.id(), high)
        })
        .collect()
}

/// Event `i` of a run: id `e-{i}`, a small distinct PNG inline.
pub fn event(i: u32) -> (String, Vec<u8>) {
    (format!("m-{i}"), event_json(&format!("e-{i}"), &png(i % 64, 16), "image/png"))
}

/// Events `0..n` of a run, produced to `topic` and acknowledged before the worker starts.
pub async fn produce_events(brokers: &str, topic: &str, n: u32) {
    produce_events_range(brokers, topic, 0..n).await;
}

/// Events `range`, produced to `topic` and acknowledged.
pub async fn produce_events_range(brokers: &str, topic: &str, range: std::ops::Range<u32>) {
    let records: Vec<_> = range.map(event).collect();
    produce_all(&producer(brokers), topic, &records).await;
}

/// Counts of a finished run.
#[derive(Debug)]
pub struct Tally {
    pub verdicts: usize,
    pub distinct: usize,
    pub missing: Vec<u32>,
    pub duplicates: usize,
}

/// Which of events `0..n` have no verdict, and how many verdicts repeat an event.
pub fn tally(seen: &[Seen], n: u32) -> Tally {
    let ids: BTreeSet<&str> = seen.iter().map(|s| s.event_id.as_str()).collect();
    let missing = (0..n).filter(|i| !ids.contains(format!("e-{i}").as_str())).collect();
    Tally { verdicts: seen.len(), distinct: ids.len(), missing, duplicates: seen.len() - ids.len() }
}

pub fn all_seen(n: u32) -> impl Fn(&[Seen]) -> bool {
    move |seen| tally(seen, n).missing.is_empty()
}

/// Verdicts written by the worker `spawn_worker` started as number `k` (HOSTNAME `worker{k}-...`).
pub fn by_worker(seen: &[Seen], k: usize) -> usize {
    let prefix = format!("worker{k}-");
    seen.iter().filter(|s| s.worker.starts_with(&prefix)).count()
}

/// Produces events `range` at about `per_second`, waiting for every acknowledgement, on a
/// thread of its own (its own runtime), so the test can inject faults meanwhile — and so that
/// the stream is still arriving when they land, however fast the worker clears a backlog.
pub fn feed(brokers: &str, topic: &str, range: std::ops::Range<u32>, per_second: u32) -> JoinHandle<()> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .create()
                .expect("producer");
            let tick = Duration::from_millis(50);
            let per_tick = (per_second / 20).max(1);
            let started = Instant::now();
            let mut next = range.start;
            let mut ticks = 0u32;
            while next < range.end {
                let batch: Vec<_> = (next..(next + per_tick).min(range.end)).map(event).collect();
                next += batch.len() as u32;
                let sends: Vec<_> = batch
                    .iter()
                    .map(|(k, v)| producer.send(FutureRecord::to(&topic).key(k).payload(v), Timeout::After(Duration::from_secs(120))))
                    .collect();
                for s in futures::future::join_all(sends).await {
                    s.expect("feeder produced");
                }
                ticks += 1;
                let due = started + tick * ticks;
                tokio::time::sleep_until(due.into()).await;
            }
        })
    })
}

/// Reproducible randomness: `FAULTS_SEED` replays a run; the seed is printed either way.
pub fn rng(test: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("{test}: seed {seed} (FAULTS_SEED={seed} replays it)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

pub fn random_between(rng: &mut impl Rng, low: u64, high: u64) -> u64 {
    rng.gen_range(low..=high)
}

/// True while the child has not exited.
pub fn alive(child: &mut Child) -> bool {
    child.try_wait().expect("try_wait").is_none()
}

/// The longest gap between consecutive verdict arrivals in `seen`, from `from` onwards
/// (counting `from` itself as the first arrival), with the time it started.
pub fn longest_gap(seen: &[Seen], from: Instant) -> (Duration, Instant) {
    let mut times: Vec<Instant> = seen.iter().map(|s| s.at).filter(|t| *t >= from).collect();
    times.sort();
    let mut last = from;
    let mut best = (Duration::ZERO, from);
    for t in times {
        if t - last > best.0 {
            best = (t - last, last);
        }
        last = t;
    }
    best
}

/// Sets a topic's config overrides (e.g. `max.message.bytes` = 1 makes it refuse every record).
pub async fn set_topic_config(brokers: &str, topic: &str, entries: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    // AlterConfigs replaces the topic's whole override set: no entries restores the defaults.
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in entries {
        alter = alter.set(k, v);
    }
    let results = admin.alter_configs([&alter], &AdminOptions::new()).await.expect("alter configs");
    for r in results {
        r.expect("topic config altered");
    }
}

/// Scrapes a worker's `/metrics`: every sample (`name{labels}` → value).
pub async fn scrape_metrics(port: u16) -> BTreeMap<String, f64> {
    let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else { return BTreeMap::new() };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}
