//! The bank topic: reading it into a [`BankSet`] (whole at start-up, then live) and writing to it
//! (the `perisai bank` commands).
//!
//! Every worker holds every bank, so the topic is read without a consumer group: all partitions
//! assigned from the beginning, nothing committed. Start-up follows Kafka Streams' GlobalKTable:
//! note each partition's end offset, apply records until every partition reaches it (tombstones
//! delete), build the PDQ indexes once, and only then report ready; afterwards keep tailing and
//! apply each record in place. Reading from offset 0 every time (never from a local snapshot)
//! is what makes withdrawals stick: a tombstone is kept `delete.retention.ms` (24 h by default)
//! after compaction, which a reader starting from the beginning always reaches in time.
//!
//! The reader runs on a thread of its own: a burst of records or a slow broker never holds up the
//! async runtime, and the screening threads only wait for the bank lock while a batch applies.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError as ClientError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::watchdog::BrokerWatch;
use super::base_config;
use crate::bank::{BankSet, TopicRecord};
use crate::config::KafkaSettings;
use crate::metrics::{Metrics, Readiness};

/// Records applied under one lock: large enough to load millions quickly, small enough that a
/// screening thread never waits long for the lock.
const BATCH: usize = 2_000;
const POLL: Duration = Duration::from_millis(100);
/// Start-up progress is logged this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long start-up waits for the bank topic's partitions to have leaders.
const LEADER_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BankFeedError {
    #[error("bank topic {topic:?}: {source}")]
    Client { topic: String, source: ClientError },
    #[error(
        "bank topic {0:?} does not exist: create it log-compacted (cleanup.policy=compact; see \
         docs/operations.md), or set kafka.banks_topic = \"\" to use bank files only"
    )]
    Missing(String),
    #[error("bank feed thread stopped before the banks were loaded")]
    Gone,
    #[error("bank topic {topic:?}: producing a record failed: {source}")]
    Produce { topic: String, source: ClientError },
}

struct FeedContext {
    brokers: BrokerWatch,
    /// End-of-partition reports that librdkafka delivers through the error callback rather than
    /// the consumer queue; collected here so the reader sees them either way.
    eofs: Mutex<Vec<i32>>,
}

impl ClientContext for FeedContext {
    fn stats(&self, statistics: Statistics) {
        self.brokers.observe(&statistics);
    }

    fn error(&self, error: ClientError, reason: &str) {
        match error {
            ClientError::PartitionEOF(p) => self.eofs.lock().unwrap_or_else(|e| e.into_inner()).push(p),
            // End of partition without its number: the reader learns it from the offsets.
            ClientError::Global(RDKafkaErrorCode::PartitionEOF) => tracing::trace!(reason, "bank topic end of partition"),
            // Connection trouble also shows in the reader's poll: one warning there is enough.
            error => tracing::debug!(%error, reason, "bank topic client error"),
        }
    }
}

impl ConsumerContext for FeedContext {}

/// A group-less reader of the whole bank topic.
struct TopicReader {
    consumer: BaseConsumer<FeedContext>,
    topic: String,
    /// The end offset of each partition when reading began.
    ends: BTreeMap<i32, i64>,
    /// The next offset of each partition: what has been read.
    next: BTreeMap<i32, i64>,
    /// Partitions that reached their end offset (or reported end-of-partition).
    caught_up: BTreeMap<i32, bool>,
}

/// Each partition's (end, start) offsets, or `None` when the topic does not exist.
type Offsets = (BTreeMap<i32, i64>, BTreeMap<i32, i64>);

fn offsets(consumer: &BaseConsumer<FeedContext>, topic: &str) -> Result<Option<Offsets>, ClientError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
    match found.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
        Some(code) => return Err(ClientError::MetadataFetch(code)),
    }
    if found.partitions().is_empty() {
        return Ok(None);
    }
    let (mut ends, mut starts) = (BTreeMap::new(), BTreeMap::new());
    for partition in found.partitions() {
        if let Some(code) = partition.error().map(RDKafkaErrorCode::from) {
            return Err(ClientError::MetadataFetch(code));
        }
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(30))?;
        ends.insert(partition.id(), high);
        starts.insert(partition.id(), low);
    }
    Ok(Some((ends, starts)))
}

/// Errors that a leader election or a broker restart cause, and that end by themselves.
fn is_leader_change(error: &ClientError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerNotAvailable
        )
    )
}

impl TopicReader {
    fn open(settings: &KafkaSettings, metrics: &Metrics) -> Result<Self, BankFeedError> {
        let topic = settings.banks_topic.clone();
        let client_err = |source| BankFeedError::Client { topic: topic.clone(), source };
        let mut config: ClientConfig = base_config(settings);
        // Start-up reads the topic end to end as fast as it can apply it. librdkafka's defaults are
        // made for steady consumption: 1 MiB per partition fetch, and a pause of a whole second
        // (fetch.queue.backoff.ms) whenever its queue holds queued.min.messages (100 000) — which
        // one 16 MiB fetch exceeds — so the reader would sit idle a third of the time.
        // Measured on 10M entries: 64 s → 34 s. kafka.consumer overrides these.
        config
            .set("max.partition.fetch.bytes", "16777216")
            .set("queued.min.messages", "500000")
            .set("fetch.queue.backoff.ms", "5");
        for (key, value) in &settings.consumer {
            config.set(key, value);
        }
        // Every worker reads every partition and commits nothing: the partitions are assigned,
        // never subscribed, so this group id is never joined (librdkafka wants one to assign).
        config
            .set("group.id", format!("perisai-banks-reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true");
        let context = FeedContext {
            brokers: BrokerWatch::new("banks", &settings.brokers, metrics.kafka_broker_repairs.with_label_values(&["banks"])),
            eofs: Mutex::new(Vec::new()),
        };
        let consumer: BaseConsumer<FeedContext> = config.create_with_context(context).map_err(client_err)?;
        consumer.context().brokers.attach(consumer.client());
        // A partition without a leader (a topic just created, a broker restarting, an election)
        // is a matter of seconds: wait for it rather than fail the worker's start.
        let deadline = Instant::now() + LEADER_WAIT;
        let (ends, next): Offsets = loop {
            match offsets(&consumer, &topic) {
                Ok(Some(found)) => break found,
                Ok(None) => return Err(BankFeedError::Missing(topic)),
                Err(source) if is_leader_change(&source) && Instant::now() < deadline => {
                    tracing::info!(error = %source, topic, "bank topic: waiting for partition leaders");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(source) => return Err(client_err(source)),
            }
        };
        let caught_up = ends.iter().map(|(&p, &high)| (p, high <= next[&p])).collect();
        let mut assignment = TopicPartitionList::new();
        for &p in ends.keys() {
            assignment.add_partition_offset(&topic, p, Offset::Beginning).map_err(client_err)?;
        }
        consumer.assign(&assignment).map_err(client_err)?;
        Ok(Self { consumer, topic, ends, next, caught_up })
    }

    /// Records at most, from the start offsets to the end offsets noted (compaction leaves gaps).
    fn expected(&self) -> u64 {
        self.ends.iter().map(|(p, end)| (end - self.next[p]).max(0) as u64).sum()
    }

    fn all_caught_up(&self) -> bool {
        self.caught_up.values().all(|&c| c)
    }

    /// Polls up to [`BATCH`] records, waiting up to `wait` for the first; hands them to `apply`.
    fn poll_batch(&mut self, wait: Duration, apply: &mut dyn FnMut(&[TopicRecord<'_>])) -> usize {
        let mut messages: Vec<BorrowedMessage<'_>> = Vec::new();
        let mut eofs = Vec::new();
        let mut timeout = wait;
        while messages.len() < BATCH {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => messages.push(m),
                Some(Err(ClientError::PartitionEOF(p))) => eofs.push(p),
                Some(Err(e)) => {
                    // librdkafka retries by itself; a persistent error shows in the logs and lag.
                    tracing::warn!(topic = %self.topic, error = %e, "bank topic read error");
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        let records: Vec<TopicRecord<'_>> = messages
            .iter()
            .map(|m| TopicRecord {
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key(),
                value: m.payload(),
            })
            .collect();
        apply(&records);
        let count = records.len();
        for r in &records {
            let next = self.next.entry(r.partition).or_insert(0);
            *next = (*next).max(r.offset + 1);
            if self.ends.get(&r.partition).is_some_and(|end| *next >= *end) {
                self.caught_up.insert(r.partition, true);
            }
        }
        drop(records);
        drop(messages);
        eofs.append(&mut self.consumer.context().eofs.lock().unwrap_or_else(|e| e.into_inner()));
        // End of partition: everything up to the end offset seen now (≥ the one noted) is read,
        // even when the last offsets are transaction markers that never arrive as records.
        for p in eofs {
            self.caught_up.insert(p, true);
        }
        count
    }
}

/// Tails the bank topic into a [`BankSet`] on a thread of its own until stopped.
pub struct BankFeed {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What start-up loading read.
#[derive(Debug, Clone, Copy)]
pub struct BootstrapReport {
    pub records: u64,
    pub elapsed: Duration,
}

impl BankFeed {
    /// Reads the whole bank topic into `banks`, then returns, leaving a thread that applies new
    /// records as they arrive. `readiness` reports progress while loading; the caller marks the
    /// banks loaded once this returns.
    pub async fn start(
        settings: &KafkaSettings,
        banks: Arc<BankSet>,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> Result<(BankFeed, BootstrapReport), BankFeedError> {
        let settings = settings.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bank-feed".into())
            .spawn(move || {
                // A feed that ends without being asked to (a panic) would leave the banks frozen
                // while uploads go on being screened: /healthz then fails, so the worker restarts.
                let _watch = FeedExitWatch { stop: thread_stop.clone(), readiness: readiness.clone() };
                let mut reader = match TopicReader::open(&settings, &metrics) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                let report = load(&mut reader, &banks, &metrics, &readiness, &thread_stop);
                let loaded = report.is_ok();
                let _ = loaded_tx.send(report);
                if loaded {
                    tail(&mut reader, &banks, &metrics, &thread_stop);
                }
            })
            .expect("spawning the bank feed thread");
        let feed = BankFeed { stop, thread: Some(thread) };
        match loaded_rx.await {
            Ok(Ok(report)) => Ok((feed, report)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BankFeedError::Gone),
        }
    }

    /// Stops tailing and waits for the thread (at most one poll interval).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct FeedExitWatch {
    stop: Arc<AtomicBool>,
    readiness: Arc<Readiness>,
}

impl Drop for FeedExitWatch {
    fn drop(&mut self) {
        if !self.stop.load(Ordering::Acquire) && self.readiness.banks_loaded.load(Ordering::Acquire) {
            tracing::error!("the bank feed stopped: live bank updates no longer apply; /healthz now fails");
            self.readiness.bank_feed_failed.store(true, Ordering::Release);
        }
    }
}

impl Drop for BankFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Start-up: every record up to the end offsets noted, with the PDQ indexes built once at the end.
fn load(
    reader: &mut TopicReader,
    banks: &BankSet,
    metrics: &Metrics,
    readiness: &Readiness,
    stop: &AtomicBool,
) -> Result<BootstrapReport, BankFeedError> {
    let started = Instant::now();
    let expected = reader.expected();
    readiness.bank_records_expected.store(expected, Ordering::Relaxed);
    tracing::info!(topic = %reader.topic, partitions = reader.ends.len(), records_at_most = expected, "loading the bank topic");
    banks.begin_bulk();
    let mut records = 0u64;
    let mut last_log = Instant::now();
    while !reader.all_caught_up() {
        if stop.load(Ordering::Acquire) {
            return Err(BankFeedError::Gone);
        }
        records += reader.poll_batch(POLL, &mut |batch| {
            banks.apply(batch, metrics, false);
        }) as u64;
        readiness.bank_records_read.store(records, Ordering::Relaxed);
        if last_log.elapsed() >= PROGRESS_EVERY {
            tracing::info!(records, records_at_most = expected, "loading the bank topic");
            last_log = Instant::now();
        }
    }
    banks.end_bulk(&reader.next, metrics);
    let report = BootstrapReport { records, elapsed: started.elapsed() };
    tracing::info!(records, seconds = report.elapsed.as_secs_f64(), version = ?banks.version(), "bank topic loaded");
    Ok(report)
}

fn tail(reader: &mut TopicReader, banks: &BankSet, metrics: &Metrics, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        reader.poll_batch(POLL, &mut |batch| {
            let report = banks.apply(batch, metrics, true);
            if report.added + report.replaced + report.withdrawn > 0 {
                tracing::info!(added = report.added, replaced = report.replaced, withdrawn = report.withdrawn,
                    rejected = report.rejected, version = ?banks.version(), "bank update applied");
            }
        });
    }
}

/// Reads the whole bank topic once (as a worker does at start-up) into `banks`; for the
/// `perisai bank` commands. Returns how many records were read.
pub fn read_into(settings: &KafkaSettings, banks: &BankSet, metrics: &Metrics) -> Result<u64, BankFeedError> {
    let readiness = Readiness::default();
    let mut reader = TopicReader::open(settings, metrics)?;
    let report = load(&mut reader, banks, metrics, &readiness, &AtomicBool::new(false))?;
    Ok(report.records)
}

/// The bank topic's live values, by key (tombstoned keys removed): for comparing before writing.
pub fn read_values(settings: &KafkaSettings, metrics: &Metrics, key_prefix: &str) -> Result<HashMap<String, Vec<u8>>, BankFeedError> {
    let mut reader = TopicReader::open(settings, metrics)?;
    let mut values: HashMap<String, Vec<u8>> = HashMap::new();
    while !reader.all_caught_up() {
        reader.poll_batch(POLL, &mut |batch| {
            for r in batch {
                let Some(key) = r.key.and_then(|k| std::str::from_utf8(k).ok()).filter(|k| k.starts_with(key_prefix)) else {
                    continue;
                };
                match r.value {
                    Some(v) => values.insert(key.to_string(), v.to_vec()),
                    None => values.remove(key),
                };
            }
        });
    }
    Ok(values)
}

/// Writes bank records (`None` value = tombstone) with acks from all in-sync replicas and an
/// idempotent producer; returns once every record is acknowledged, or at the first failure.
pub async fn publish(settings: &KafkaSettings, records: Vec<(String, Option<Vec<u8>>)>) -> Result<usize, BankFeedError> {
    let topic = settings.banks_topic.clone();
    let mut config = base_config(settings);
    for (key, value) in &settings.producer {
        config.set(key, value);
    }
    config.set("acks", "all").set("enable.idempotence", "true").set("linger.ms", "5");
    let producer: FutureProducer =
        config.create().map_err(|source| BankFeedError::Client { topic: topic.clone(), source })?;
    let count = records.len();
    // Bounded concurrency: a list of millions must not queue millions of futures at once.
    let mut sends = futures::stream::iter(records)
        .map(|(key, value)| {
            let producer = &producer;
            let topic = &topic;
            async move {
                let mut record = FutureRecord::<String, Vec<u8>>::to(topic).key(&key);
                if let Some(v) = &value {
                    record = record.payload(v);
                }
                producer.send(record, Timeout::After(Duration::from_secs(60))).await.map_err(|(e, _)| e)
            }
        })
        .buffer_unordered(10_000);
    while let Some(sent) = sends.next().await {
        sent.map_err(|source| BankFeedError::Produce { topic: topic.clone(), source })?;
    }
    Ok(count)
}
