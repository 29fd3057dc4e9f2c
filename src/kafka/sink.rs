//! The output side: verdict and DLQ records, built here and produced with acks=all and
//! idempotence. How a record is sent depends on the delivery mode, which the pipeline owns
//! (`pipeline::delivery`): [`Sink::send_acked`] retries until the broker acknowledges
//! (at-least-once), [`Sink::enqueue`] hands a record to the transactional producer once
//! (exactly-once, under the pipeline's transaction gate).
//!
//! Poison records: a record the broker refuses for itself (too large for the topic, invalid) is
//! never sent again as it was. The caller sends a reduced one instead — a compact verdict, a DLQ
//! record without payload and original headers — at once (at-least-once) or in the next
//! transaction (exactly-once: [`Sink::note_refused`] remembers the input offset, and the re-read
//! event is answered reduced). Only a reduced record that is refused too is retried (or aborted)
//! as before: then the topic refuses everything, which is an outage, not a poison record. DLQ
//! records are also cut to fit beforehand: key, original headers and payload each have a budget.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use super::replica::Replica;
use super::watchdog::BrokerWatch;
use super::{producer_config, SetupError};
use crate::config::KafkaSettings;
use crate::metrics::Metrics;

/// Where an input record came from, for DLQ headers and tracing.
#[derive(Debug, Clone)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Source {
    pub fn of(message: &OwnedMessage) -> Self {
        Self { topic: message.topic().to_string(), partition: message.partition(), offset: message.offset() }
    }
}

/// A DLQ payload larger than this is truncated (and marked so in its headers): the broker's
/// default `message.max.bytes` is about 1 MiB, and an oversized event must still leave a record.
pub const DLQ_MAX_PAYLOAD: usize = 768 * 1024;
/// The original headers a DLQ record keeps, in bytes (names and values); the rest are dropped and
/// counted in `perisai.original.headers.dropped`.
pub const DLQ_MAX_ORIGINAL_HEADERS: usize = 64 * 1024;
/// The longest original key a DLQ record keeps.
pub const DLQ_MAX_KEY: usize = 1024;
/// Input records whose output was refused, remembered for the next transaction (bounded).
const REFUSED_MEMORY: usize = 10_000;

const RETRY_BACKOFF_START: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The producer's context: its statistics feed the broker watchdog.
pub struct SinkContext {
    brokers: Arc<BrokerWatch>,
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        self.brokers.observe(&statistics);
    }
}

pub struct Sink {
    producer: FutureProducer<SinkContext>,
    verdict_topic: String,
    dlq_topic: String,
    instance: String,
    /// Input records (topic, partition, offset) whose full output was refused: answered reduced.
    refused: Mutex<std::collections::HashSet<(String, i32, i64)>>,
}

/// What an output record looks like: as built, or reduced after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Full,
    /// A compact verdict ([`crate::event::Verdict::compact`]); a DLQ record without payload or
    /// original headers.
    Reduced,
}

/// Which output topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Verdicts,
    Dlq,
}

/// One record for an output topic, built by [`Sink::verdict`] or [`Sink::dlq`].
pub struct Output {
    destination: Destination,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
}

/// Why a record was not produced.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("producing the record failed: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    /// Exactly-once: the transaction the record belonged to ended (aborted, or the worker is
    /// stopping) before the record was handed to the producer, so it was not produced.
    #[error("the record's transaction has ended; it was not produced")]
    TransactionEnded,
    /// The broker (or the client) refused this record itself — too large, invalid — rather than
    /// failing to take any record: sending it again cannot help; a smaller record may.
    #[error("record refused: {0}")]
    Refused(rdkafka::error::KafkaError),
}

impl SendError {
    /// Classifies a client error: a refusal of the record itself, or a failure to produce.
    pub fn of(error: rdkafka::error::KafkaError) -> Self {
        if is_refusal(&error) {
            SendError::Refused(error)
        } else {
            SendError::Client(error)
        }
    }
}

/// Whether the broker (or the client) refused the record itself: sending it again cannot work.
pub fn is_refusal(error: &rdkafka::error::KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            // Too large for the topic (the client's own check reports the same code), a record
            // the broker finds invalid or corrupt (e.g. no key on a compacted topic).
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

impl Sink {
    /// A plain idempotent producer, or a transactional one named after `replica` when
    /// `delivery = "exactly_once"` (the pipeline then calls `init_transactions` and
    /// `begin_transaction` on [`Sink::producer`]).
    pub fn new(settings: &KafkaSettings, replica: &Replica, instance: String, metrics: &Metrics) -> Result<Self, SetupError> {
        let brokers = Arc::new(BrokerWatch::new(
            "producer",
            &settings.brokers,
            metrics.kafka_broker_repairs.with_label_values(&["producer"]),
        ));
        // (The future producer wraps its context out of reach, hence the second handle.)
        let producer: FutureProducer<SinkContext> =
            producer_config(settings, Some(replica)).create_with_context(SinkContext { brokers: brokers.clone() })?;
        brokers.attach(producer.client());
        Ok(Self {
            producer,
            verdict_topic: settings.verdict_topic.clone(),
            dlq_topic: settings.dlq_topic.clone(),
            instance,
            refused: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The shape to answer this input record with: reduced once its full output was refused.
    pub fn shape_for(&self, source: &Source) -> Shape {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.is_empty() {
            return Shape::Full;
        }
        if refused.contains(&(source.topic.clone(), source.partition, source.offset)) {
            Shape::Reduced
        } else {
            Shape::Full
        }
    }

    /// The full output of this input record was refused: answer it reduced from now on (the
    /// next transaction re-reads it).
    pub fn note_refused(&self, source: &Source) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.len() >= REFUSED_MEMORY {
            refused.clear();
        }
        refused.insert((source.topic.clone(), source.partition, source.offset));
    }

    /// The producer, for the transaction calls (init, begin, offsets, commit, abort). Blocking calls.
    pub fn producer(&self) -> &FutureProducer<SinkContext> {
        &self.producer
    }

    /// A verdict keyed by media_id, with headers naming its schema, event, worker and source.
    pub fn verdict(&self, media_id: &str, event_id: &str, json: Vec<u8>, source: &Source) -> Output {
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header { key: "perisai.schema", value: Some(crate::event::VERDICT_SCHEMA) })
            .insert(Header { key: "perisai.event_id", value: Some(event_id) })
            .insert(Header { key: "perisai.worker", value: Some(self.instance.as_str()) })
            .insert(Header { key: "perisai.source", value: Some(&source_text(source)) });
        Output { destination: Destination::Verdicts, key: Some(media_id.as_bytes().to_vec()), payload: json, headers }
    }

    /// The original record for the DLQ — key, bytes and headers — with headers naming the error
    /// and where the record came from. `Shape::Full` keeps the payload and original headers
    /// within their budgets; `Shape::Reduced` keeps neither (for a DLQ topic that refused the
    /// full record).
    pub fn dlq(&self, original: &OwnedMessage, error_class: &str, error: &str, shape: Shape) -> Output {
        let source = Source::of(original);
        let full = shape == Shape::Full;
        let payload = if full { original.payload().unwrap_or_default() } else { &[] };
        let mut headers = OwnedHeaders::new();
        let mut dropped = 0usize;
        let mut kept_bytes = 0usize;
        for h in original.headers().into_iter().flat_map(|hs| hs.iter()) {
            let size = h.key.len() + h.value.map_or(0, <[u8]>::len);
            if full && kept_bytes + size <= DLQ_MAX_ORIGINAL_HEADERS {
                kept_bytes += size;
                headers = headers.insert(Header { key: h.key, value: h.value });
            } else {
                dropped += 1;
            }
        }
        let truncated = original.payload().unwrap_or_default().len() > payload.len().min(DLQ_MAX_PAYLOAD);
        let partition = source.partition.to_string();
        let offset = source.offset.to_string();
        let size = original.payload().map_or(0, <[u8]>::len).to_string();
        let dropped_text = dropped.to_string();
        let error = crate::event::truncate_utf8(error, 4096);
        headers = headers
            .insert(Header { key: "perisai.error", value: Some(error) })
            .insert(Header { key: "perisai.error.class", value: Some(error_class) })
            .insert(Header { key: "perisai.source.topic", value: Some(source.topic.as_str()) })
            .insert(Header { key: "perisai.source.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "perisai.source.offset", value: Some(offset.as_str()) })
            .insert(Header { key: "perisai.original.size", value: Some(size.as_str()) })
            .insert(Header { key: "perisai.worker", value: Some(self.instance.as_str()) });
        if truncated {
            headers = headers.insert(Header { key: "perisai.truncated", value: Some("true") });
        }
        if dropped > 0 {
            headers = headers.insert(Header { key: "perisai.original.headers.dropped", value: Some(dropped_text.as_str()) });
        }
        let key = original.key().map(|k| k[..k.len().min(if full { DLQ_MAX_KEY } else { 256 })].to_vec());
        let body = payload[..payload.len().min(DLQ_MAX_PAYLOAD)].to_vec();
        Output { destination: Destination::Dlq, key, payload: body, headers }
    }

    fn record<'a>(&'a self, output: &'a Output) -> FutureRecord<'a, [u8], [u8]> {
        let topic = match output.destination {
            Destination::Verdicts => &self.verdict_topic,
            Destination::Dlq => &self.dlq_topic,
        };
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(&output.payload).headers(output.headers.clone());
        if let Some(key) = &output.key {
            record = record.key(key);
        }
        record
    }

    /// Hands the record to the producer and returns the broker's answer to come, waiting while
    /// the producer's local queue is full. `admit` is asked before every attempt and what it
    /// returns is held while the record is handed over (exactly-once: the transaction gate, so a
    /// record joins its own transaction or none); its error is returned as is. Any other failure
    /// counts in `perisai_produce_errors_total`.
    pub async fn enqueue<G>(
        &self,
        output: &Output,
        metrics: &Metrics,
        admit: impl Fn() -> Result<G, SendError>,
    ) -> Result<DeliveryFuture, SendError> {
        loop {
            let attempt = {
                let _admitted = admit()?;
                self.producer.send_result(self.record(output)).map_err(|(e, _)| e)
            };
            match attempt {
                Ok(delivery) => return Ok(delivery),
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    metrics.produce_errors.inc();
                    return Err(SendError::of(e));
                }
            }
        }
    }

    /// Produces the record and waits for the broker's acknowledgement, retrying without limit
    /// while the broker fails — so a record is never dropped; a stuck output shows up as lag and
    /// `perisai_produce_errors_total`. Only a refusal of the record itself is returned.
    pub async fn send_acked(&self, output: &Output, metrics: &Metrics) -> Result<(), SendError> {
        let mut backoff = RETRY_BACKOFF_START;
        loop {
            let error = match self.enqueue(output, metrics, || Ok(())).await {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err((e, _))) => {
                        metrics.produce_errors.inc();
                        SendError::of(e)
                    }
                    // The producer went away (it lives as long as the sink): retry like a failure.
                    Err(_canceled) => SendError::Client(rdkafka::error::KafkaError::Canceled),
                },
                Err(e) => e,
            };
            if let SendError::Refused(_) = error {
                return Err(error);
            }
            tracing::warn!(topic = ?output.destination, %error, retry_in_ms = backoff.as_millis() as u64, "produce failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
    }

    /// Waits for queued records on shutdown.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(Timeout::After(timeout));
    }
}

fn source_text(s: &Source) -> String {
    format!("{}/{}/{}", s.topic, s.partition, s.offset)
}
