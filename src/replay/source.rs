//! Where replay's records come from: a JSON-lines file, or a topic read once, without a consumer
//! group, up to the end offsets it had when reading began.
//!
//! Records are handed to a callback as bytes with their origin; decoding them is the caller's
//! business, so a bad record is the caller's to count and report, never an error here. The topic
//! reader commits nothing and joins no group: it assigns every partition itself, so analysts can
//! replay as often as they like without disturbing the workers or the retro role.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError as ClientError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::KafkaSettings;

/// Metadata, watermark and offset look-ups.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
/// Reading gives up when no record and no end-of-partition arrives for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("topic {topic:?}: {source}")]
    Client { topic: String, source: ClientError },
    #[error("topic {0:?} does not exist (check kafka.brokers and the topic's name in the configuration)")]
    Missing(String),
    #[error(
        "topic {topic:?}: nothing arrived for {} s while partitions {waiting:?} were short of the end offsets noted at start",
        STALL_TIMEOUT.as_secs()
    )]
    Stalled { topic: String, waiting: Vec<i32> },
}

/// Where a record was read, as problems name it: `FILE:LINE` or `TOPIC[PARTITION]@OFFSET`.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    Line { file: &'a str, line: usize },
    Record { topic: &'a str, partition: i32, offset: i64 },
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line { file, line } => write!(f, "{file}:{line}"),
            Origin::Record { topic, partition, offset } => write!(f, "{topic}[{partition}]@{offset}"),
        }
    }
}

/// Hands each non-blank line of a JSON-lines file to `each` (line numbers from 1).
pub fn read_json_lines(path: &Path, each: &mut dyn FnMut(Origin<'_>, Option<&[u8]>)) -> Result<(), SourceError> {
    let name = path.display().to_string();
    let io_err = |source| SourceError::File { path: name.clone(), source };
    let file = std::fs::File::open(path).map_err(io_err)?;
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(io_err)?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        each(Origin::Line { file: &name, line: i + 1 }, Some(line));
    }
    Ok(())
}

/// Collects the end-of-partition reports that librdkafka delivers through the error callback
/// rather than the consumer queue, so the reader sees them either way (as the bank feed does).
#[derive(Default)]
struct ReaderContext {
    eofs: Mutex<Vec<i32>>,
}

impl ClientContext for ReaderContext {
    fn error(&self, error: ClientError, reason: &str) {
        match error {
            ClientError::PartitionEOF(p) => self.eofs.lock().unwrap_or_else(|e| e.into_inner()).push(p),
            // Without its partition: the reader's position check finds the end instead.
            ClientError::Global(RDKafkaErrorCode::PartitionEOF) => tracing::trace!(reason, "end of partition"),
            error => tracing::debug!(%error, reason, "client error"),
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// What reading a topic covered.
#[derive(Debug, Clone, Default)]
pub struct TopicRead {
    /// Per partition: the first offset read and the end offset noted at start.
    pub ranges: BTreeMap<i32, (i64, i64)>,
    pub records: u64,
}

/// Reads `topic` from the first record at or after `since_ms` (milliseconds since the epoch; the
/// beginning when `None`) up to the end offsets noted when reading began, and hands each record
/// to `each`. Records written meanwhile are left for the next run: a replay describes a fixed
/// stretch of history however long it takes.
pub fn read_topic(
    settings: &KafkaSettings,
    topic: &str,
    since_ms: Option<i64>,
    each: &mut dyn FnMut(Origin<'_>, Option<&[u8]>),
) -> Result<TopicRead, SourceError> {
    let client_err = |source| SourceError::Client { topic: topic.to_string(), source };
    let mut config: ClientConfig = crate::kafka::base_config(settings);
    for (key, value) in &settings.consumer {
        config.set(key, value);
    }
    // Partitions are assigned, never subscribed: this group id is never joined, nothing is
    // committed (librdkafka wants one to assign). Only committed records of transactional
    // writers (exactly-once workers) count as verdicts.
    config
        .set("group.id", format!("perisai-replay-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer<ReaderContext> = config.create_with_context(ReaderContext::default()).map_err(client_err)?;

    let metadata = consumer.fetch_metadata(Some(topic), LOOKUP_TIMEOUT).map_err(client_err)?;
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    let Some(found) = found.filter(|t| !t.partitions().is_empty()) else { return Err(SourceError::Missing(topic.into())) };
    match found.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Err(SourceError::Missing(topic.into())),
        Some(code) => return Err(client_err(ClientError::MetadataFetch(code))),
    }
    let mut ends = BTreeMap::new();
    for partition in found.partitions() {
        let (_, high) = consumer.fetch_watermarks(topic, partition.id(), LOOKUP_TIMEOUT).map_err(client_err)?;
        ends.insert(partition.id(), high);
    }

    // Where to start: the earliest offset whose timestamp is at or after `since_ms`. A partition
    // with no such record answers End: nothing of it falls in the window.
    let mut starts: BTreeMap<i32, i64> = ends.keys().map(|&p| (p, 0)).collect();
    if let Some(since_ms) = since_ms {
        let mut query = TopicPartitionList::new();
        for &p in ends.keys() {
            query.add_partition_offset(topic, p, Offset::Offset(since_ms)).map_err(client_err)?;
        }
        let answer = consumer.offsets_for_times(query, LOOKUP_TIMEOUT).map_err(client_err)?;
        for element in answer.elements() {
            element.error().map_err(client_err)?;
            let start = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => ends.get(&element.partition()).copied().unwrap_or(0),
            };
            starts.insert(element.partition(), start);
        }
    } else {
        for &p in ends.keys() {
            let (low, _) = consumer.fetch_watermarks(topic, p, LOOKUP_TIMEOUT).map_err(client_err)?;
            starts.insert(p, low);
        }
    }

    let mut waiting: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for (&p, &end) in &ends {
        let start = starts[&p];
        if start < end {
            waiting.insert(p, end);
            assignment.add_partition_offset(topic, p, Offset::Offset(start)).map_err(client_err)?;
        }
    }
    let ranges = ends.iter().map(|(&p, &end)| (p, (starts[&p].min(end), end))).collect();
    let mut read = TopicRead { ranges, records: 0 };
    if waiting.is_empty() {
        return Ok(read);
    }
    consumer.assign(&assignment).map_err(client_err)?;

    let mut last_progress = Instant::now();
    while !waiting.is_empty() {
        match consumer.poll(POLL) {
            None => {
                // Idle: a partition whose position passed its noted end (over transaction markers,
                // which never arrive as records) is done even without an end-of-partition report.
                if let Ok(positions) = consumer.position() {
                    for element in positions.elements_for_topic(topic) {
                        if let (Offset::Offset(at), Some(&end)) = (element.offset(), waiting.get(&element.partition())) {
                            if at >= end {
                                waiting.remove(&element.partition());
                            }
                        }
                    }
                }
                if waiting.is_empty() {
                    break;
                }
                if last_progress.elapsed() > STALL_TIMEOUT {
                    return Err(SourceError::Stalled { topic: topic.into(), waiting: waiting.keys().copied().collect() });
                }
            }
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let (partition, offset) = (message.partition(), message.offset());
                let Some(&end) = waiting.get(&partition) else { continue };
                if offset >= end {
                    // Written after reading began: outside the stretch this run describes.
                    waiting.remove(&partition);
                    continue;
                }
                read.records += 1;
                each(Origin::Record { topic, partition, offset }, message.payload());
                if offset + 1 >= end {
                    waiting.remove(&partition);
                }
            }
            // The partition's end: what remains below the noted end are transaction markers or
            // records of transactions still open, neither of them verdicts yet.
            Some(Err(ClientError::PartitionEOF(partition))) => {
                last_progress = Instant::now();
                waiting.remove(&partition);
            }
            // librdkafka retries by itself; a lasting error ends in the stall timeout.
            Some(Err(error)) => tracing::warn!(topic, %error, "read error"),
        }
        for partition in std::mem::take(&mut *consumer.context().eofs.lock().unwrap_or_else(|e| e.into_inner())) {
            last_progress = Instant::now();
            waiting.remove(&partition);
        }
    }
    Ok(read)
}
