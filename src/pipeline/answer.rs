//! One taken record, from bytes to acknowledgement: parse it, screen the upload, send the
//! verdict (or, for a record that is not an upload event, a DLQ record), then answer the ticket.

use std::sync::Arc;
use std::time::Instant;

use rdkafka::message::{Message, OwnedMessage};

use super::delivery::Delivery;
use super::ledger::Ticket;
use crate::event::parse_upload;
use crate::kafka::sink::{Shape, Sink, Source};
use crate::metrics::Metrics;
use crate::screen::Screen;

/// What every event task shares.
pub struct Shared {
    pub screen: Arc<Screen>,
    pub sink: Arc<Sink>,
    pub delivery: Arc<Delivery>,
    pub metrics: Arc<Metrics>,
    pub max_event_bytes: usize,
}

/// Answers one record. The ticket is answered whatever happens to the send: at-least-once a send
/// only returns once acknowledged; exactly-once a failed send has doomed its transaction before
/// it returns, so a drain that sees the ticket answered cannot commit that transaction.
pub async fn answer(shared: Arc<Shared>, message: OwnedMessage, ticket: Ticket, received: Instant) {
    let source = Source::of(&message);
    let epoch = ticket.epoch();
    let metrics = &shared.metrics;
    match parse_upload(message.payload(), shared.max_event_bytes) {
        Ok(event) => {
            let verdict = shared.screen.screen(&event, received).await;
            let started = Instant::now();
            let sent = shared
                .delivery
                .send(&source, epoch, "verdict", |shape| {
                    let json = match shape {
                        Shape::Full => serde_json::to_vec(&verdict),
                        Shape::Reduced => serde_json::to_vec(&verdict.compact()),
                    }
                    .expect("verdicts always serialize");
                    shared.sink.verdict(&event.media_id, &event.event_id, json, &source)
                })
                .await;
            metrics.observe_stage("produce", started.elapsed().as_secs_f64());
            if sent.is_ok() {
                metrics.verdicts.with_label_values(&[verdict.action.as_str()]).inc();
                metrics.events.with_label_values(&["verdict"]).inc();
            }
        }
        Err(error) => {
            tracing::info!(topic = %source.topic, partition = source.partition, offset = source.offset,
                class = error.class(), "unparseable event sent to the DLQ");
            let text = error.to_string();
            let sent = shared
                .delivery
                .send(&source, epoch, "DLQ record", |shape| shared.sink.dlq(&message, error.class(), &text, shape))
                .await;
            if sent.is_ok() {
                metrics.dlq_records.with_label_values(&[error.class()]).inc();
                metrics.events.with_label_values(&["dlq"]).inc();
            }
        }
    }
    metrics.event_seconds.observe(received.elapsed().as_secs_f64());
    ticket.answered();
}
