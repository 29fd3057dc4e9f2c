//! The output side: verdicts and DLQ records, produced with acks=all and idempotence.
//!
//! At-least-once: `send` returns only once the broker has acknowledged the record — the worker's
//! commit watermark depends on it — and retries without limit while the broker refuses, so a
//! record is never dropped; a stuck output shows up as lag and `perisai_produce_errors_total`.
//!
//! Exactly-once: the producer is transactional and each record is sent once, inside the
//! transaction open when its input record was taken (its *epoch*). A refusal is returned, not
//! retried: it leaves the transaction abortable, and the worker aborts and re-reads the input.
//! Once a transaction ends no record of it is handed to the producer any more, so a late event
//! task can never slip its verdict into the next transaction.
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
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use super::watchdog::BrokerWatch;
use super::{producer_config, KafkaError};
use crate::config::{Delivery, KafkaSettings};
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
    transactional: bool,
    gate: Mutex<Gate>,
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

/// Which transaction records may join now (exactly-once only).
#[derive(Debug, Default)]
struct Gate {
    epoch: u64,
    open: bool,
}

impl Sink {
    /// A plain idempotent producer, or a transactional one when `delivery = "exactly_once"`
    /// (then call `init_transactions` on [`Sink::producer`] and [`Sink::begin_transaction`]
    /// before sending).
    pub fn new(settings: &KafkaSettings, instance: String, metrics: &Metrics) -> Result<Self, KafkaError> {
        let brokers = Arc::new(BrokerWatch::new(
            "producer",
            &settings.brokers,
            metrics.kafka_broker_repairs.with_label_values(&["producer"]),
        ));
        // (The future producer wraps its context out of reach, hence the second handle.)
        let producer: FutureProducer<SinkContext> =
            producer_config(settings).create_with_context(SinkContext { brokers: brokers.clone() })?;
        brokers.attach(producer.client());
        Ok(Self {
            producer,
            verdict_topic: settings.verdict_topic.clone(),
            dlq_topic: settings.dlq_topic.clone(),
            instance,
            transactional: settings.delivery == Delivery::ExactlyOnce,
            gate: Mutex::new(Gate::default()),
            refused: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The shape to answer this input record with: reduced once its full output was refused.
    pub fn shape_for(&self, source: &Source) -> Shape {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
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

    /// The producer, for the transaction calls (offsets, commit, abort). Blocking calls.
    pub fn producer(&self) -> &FutureProducer<SinkContext> {
        &self.producer
    }

    /// Begins a transaction and lets records of the new epoch (returned) into it.
    pub fn begin_transaction(&self) -> Result<u64, KafkaError> {
        self.producer.begin_transaction()?;
        let mut gate = self.gate.lock().expect("gate lock");
        gate.epoch += 1;
        gate.open = true;
        Ok(gate.epoch)
    }

    /// No record is handed to the producer from now until the next `begin_transaction`; call it
    /// before committing or aborting.
    pub fn close_transaction(&self) {
        self.gate.lock().expect("gate lock").open = false;
    }

    /// The epoch records taken now belong to (0 when not transactional).
    pub fn epoch(&self) -> u64 {
        self.gate.lock().expect("gate lock").epoch
    }

    /// Produces a verdict keyed by media_id and waits for the broker's acknowledgement.
    /// `epoch`: the transaction its input record was taken in (ignored at-least-once, where
    /// this never fails).
    pub async fn send_verdict(
        &self,
        media_id: &str,
        event_id: &str,
        json: &[u8],
        source: &Source,
        metrics: &Metrics,
        epoch: u64,
    ) -> Result<(), KafkaError> {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "perisai.schema", value: Some(crate::event::VERDICT_SCHEMA) })
            .insert(Header { key: "perisai.event_id", value: Some(event_id) })
            .insert(Header { key: "perisai.worker", value: Some(self.instance.as_str()) })
            .insert(Header { key: "perisai.source", value: Some(&source_text(source)) });
        self.send(&self.verdict_topic, Some(media_id.as_bytes()), json, headers, metrics, epoch).await
    }

    /// Produces the original record to the DLQ — key, bytes and headers — with headers naming
    /// the error and where the record came from. `Shape::Full` keeps the payload and original headers within their budgets;
    /// `Shape::Reduced` keeps neither (for a DLQ topic that refused the full record).
    pub async fn send_dlq(
        &self,
        original: &OwnedMessage,
        error_class: &str,
        error: &str,
        shape: Shape,
        metrics: &Metrics,
        epoch: u64,
    ) -> Result<(), KafkaError> {
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
        let key = original.key().map(|k| &k[..k.len().min(if full { DLQ_MAX_KEY } else { 256 })]);
        let body = &payload[..payload.len().min(DLQ_MAX_PAYLOAD)];
        self.send(&self.dlq_topic, key, body, headers, metrics, epoch).await
    }

    async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        metrics: &Metrics,
        epoch: u64,
    ) -> Result<(), KafkaError> {
        if self.transactional {
            self.send_in_transaction(topic, key, payload, headers, metrics, epoch).await
        } else {
            self.send_acked(topic, key, payload, headers, metrics).await
        }
    }

    async fn send_in_transaction(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        metrics: &Metrics,
        epoch: u64,
    ) -> Result<(), KafkaError> {
        let delivery = loop {
            // The gate is held while the record is enqueued, so a record either joins its own
            // transaction or is never produced.
            let enqueued = {
                let gate = self.gate.lock().expect("gate lock");
                if !gate.open || gate.epoch != epoch {
                    return Err(KafkaError::TransactionEnded);
                }
                let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload).headers(headers.clone());
                if let Some(key) = key {
                    record = record.key(key);
                }
                self.producer.send_result(record).map_err(|(e, _)| e)
            };
            match enqueued {
                Ok(delivery) => break delivery,
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    metrics.produce_errors.inc();
                    return Err(if is_refusal(&e) { KafkaError::Refused(e) } else { e.into() });
                }
            }
        };
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            // Purged by an abort: the transaction ended; the broker refused nothing.
            Ok(Err((e, _)))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                ) =>
            {
                Err(KafkaError::TransactionEnded)
            }
            Ok(Err((e, _))) => {
                metrics.produce_errors.inc();
                tracing::warn!(topic, error = %e, "produce failed inside a transaction; it will be aborted");
                Err(if is_refusal(&e) { KafkaError::Refused(e) } else { e.into() })
            }
            Err(_canceled) => Err(KafkaError::TransactionEnded),
        }
    }

    /// Retries until acknowledged, except a refusal of the record itself, which is returned.
    async fn send_acked(&self, topic: &str, key: Option<&[u8]>, payload: &[u8], headers: OwnedHeaders, metrics: &Metrics) -> Result<(), KafkaError> {
        let mut backoff = RETRY_BACKOFF_START;
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload).headers(headers.clone());
            if let Some(key) = key {
                record = record.key(key);
            }
            match self.producer.send(record, Timeout::Never).await {
                Ok(_) => return Ok(()),
                Err((e, _)) if is_refusal(&e) => {
                    metrics.produce_errors.inc();
                    return Err(KafkaError::Refused(e));
                }
                Err((e, _)) => {
                    metrics.produce_errors.inc();
                    tracing::warn!(topic, error = %e, retry_in_ms = backoff.as_millis() as u64, "produce failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
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
