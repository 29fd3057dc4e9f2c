//! The worker: reads upload events, screens them, writes one verdict (or DLQ record) per event,
//! and commits each partition's offsets up to its watermark.
//!
//! Backpressure: at most `worker.max_in_flight` events are in flight; at the bound the consumer
//! pauses its partitions and resumes once half the bound is free. Shutdown: stop fetching, let in-flight
//! events finish within `worker.drain_timeout_ms`, commit, leave the group.
//!
//! The delivery mode is decided once, in [`Worker::run`]: at-least-once commits watermarks,
//! exactly-once ([`transaction`]) commits transactions; reading and screening are the same.

pub mod context;
pub mod transaction;
pub mod watermark;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Delivery, Settings};
use crate::event::parse_upload;
use context::WorkerContext;
use transaction::{blocking, Outcome, Then, Transactions};
use crate::kafka::sink::{Shape, Sink, Source};
use crate::kafka::watchdog::BrokerWatch;
use crate::kafka::{consumer_config, KafkaError};
use crate::metrics::{Metrics, Readiness};
use crate::screen::Screen;
use watermark::Watermarks;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error(
        "fenced: {0}. Another worker owns this work now (a newer instance with the same transactional.id, \
         or a newer consumer group generation); this one stops and never produces again"
    )]
    Fenced(rdkafka::error::KafkaError),
    #[error("transactional producer failed: {0}")]
    TransactionFatal(rdkafka::error::KafkaError),
    #[error("could not rewind the input after an abort ({0}); stopping so a restart resumes from the committed offsets")]
    Rewind(String),
    #[error("the transactional producer was stopped by an earlier error")]
    Stopped,
    #[error(
        "consumer failed for good: {0}. With static membership (kafka.static_membership) this means another \
         worker joined the group under this replica's name: give every replica its own POD_NAME or HOSTNAME"
    )]
    ConsumerFatal(String),
}

/// What a worker did before it stopped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSummary {
    pub events: u64,
    /// Events still unfinished when the drain bound passed (they will be re-delivered).
    pub abandoned: usize,
}

/// Everything a worker needs besides its settings.
pub struct Worker {
    pub settings: Arc<Settings>,
    pub screen: Arc<Screen>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Names this worker in verdict headers (`perisai.worker`).
    pub instance: String,
}

/// Shared by the event tasks.
struct Shared {
    screen: Arc<Screen>,
    sink: Arc<Sink>,
    transactions: Option<Arc<Transactions>>,
    watermarks: Arc<Mutex<Watermarks>>,
    metrics: Arc<Metrics>,
    max_event_bytes: usize,
    finished: Notify,
}

impl Worker {
    /// Runs until `shutdown` completes, then drains and commits. Exactly-once: returns an error
    /// (and never produces again) when fenced or when the producer fails fatally.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<WorkerSummary, PipelineError> {
        let settings = &self.settings;
        let drain_timeout = Duration::from_millis(settings.worker.drain_timeout_ms);
        let watermarks = Arc::new(Mutex::new(Watermarks::default()));
        let sink = Arc::new(Sink::new(&settings.kafka, self.instance.clone(), &self.metrics)?);
        // The one place the delivery mode is decided; below, `transactions` is Some in exactly-once mode.
        let transactions = match settings.kafka.delivery {
            Delivery::AtLeastOnce => None,
            Delivery::ExactlyOnce => {
                let (sink, watermarks, metrics) = (sink.clone(), watermarks.clone(), self.metrics.clone());
                let abort_bound = Duration::from_millis(settings.kafka.transaction_timeout_ms);
                Some(Arc::new(blocking(|| Transactions::start(sink, watermarks, metrics, drain_timeout, abort_bound))?))
            }
        };
        let context = WorkerContext {
            watermarks: watermarks.clone(),
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            drain_timeout,
            brokers: BrokerWatch::new(
                "consumer",
                &settings.kafka.brokers,
                self.metrics.kafka_broker_repairs.with_label_values(&["consumer"]),
            ),
            transactions: transactions.clone(),
        };
        let consumer: StreamConsumer<WorkerContext> =
            consumer_config(&settings.kafka).create_with_context(context).map_err(KafkaError::from)?;
        consumer.context().brokers.attach(consumer.client());
        consumer.subscribe(&[settings.kafka.input_topic.as_str()]).map_err(KafkaError::from)?;
        let shared = Arc::new(Shared {
            screen: self.screen.clone(),
            sink: sink.clone(),
            transactions: transactions.clone(),
            watermarks: watermarks.clone(),
            metrics: self.metrics.clone(),
            max_event_bytes: settings.worker.max_event_bytes,
            finished: Notify::new(),
        });
        let capacity = Arc::new(Semaphore::new(settings.worker.max_in_flight));
        let resume_at = settings.worker.max_in_flight.div_ceil(2);
        let mut tasks = JoinSet::new();
        let mut commit_tick = tokio::time::interval(Duration::from_millis(settings.kafka.commit_interval_ms));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut paused = false;
        let mut summary = WorkerSummary::default();
        let mut failure: Option<PipelineError> = None;
        tokio::pin!(shutdown);
        tracing::info!(topic = %settings.kafka.input_topic, group = %settings.kafka.group_id,
            delivery = ?settings.kafka.delivery, "worker started");

        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "event task failed");
                }
            }
            if let Some(e) = transactions.as_ref().and_then(|t| t.take_fatal()) {
                failure = Some(e);
                break;
            }
            // Pause at the bound, resume only once half the bound is free again: librdkafka drops
            // prefetched records on pause and re-fetches them on resume, so toggling at every
            // finished event would re-fetch each record from the broker.
            let free = capacity.available_permits();
            if !paused && free == 0 {
                set_paused(&consumer, true);
                paused = true;
            } else if paused && free >= resume_at {
                set_paused(&consumer, false);
                paused = false;
            }
            let doomed = async {
                match &transactions {
                    Some(t) if !t.has_failed() => t.failure.notified().await,
                    Some(_) => {}
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                // A refused record dooms the open transaction: end it now rather than at the tick.
                _ = doomed => {
                    if let Err(e) = self.end_transaction(&consumer, &shared, drain_timeout).await {
                        failure = Some(e);
                        break;
                    }
                }
                _ = commit_tick.tick() => match &transactions {
                    None => commit(&consumer, &watermarks, &self.metrics, CommitMode::Async),
                    Some(_) => {
                        if let Err(e) = self.end_transaction(&consumer, &shared, drain_timeout).await {
                            failure = Some(e);
                            break;
                        }
                    }
                },
                _ = shared.finished.notified(), if paused => {}
                received = consumer.recv() => match received {
                    Err(e) => {
                        // A fatal error (e.g. fenced by another static member with this replica's
                        // name) never recovers: stop rather than sit idle holding nothing.
                        if let Some((code, reason)) = consumer.client().fatal_error() {
                            failure = Some(PipelineError::ConsumerFatal(format!("{reason} ({code:?})")));
                            break;
                        }
                        // librdkafka recovers by itself; the pause keeps a persistent error from spinning.
                        tracing::warn!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(message) => {
                        let message = message.detach();
                        // At the bound the partitions are paused; a record fetched just before the
                        // pause is still taken (without a permit) rather than dropped.
                        let permit = capacity.clone().try_acquire_owned().ok();
                        let tp = (message.topic().to_string(), message.partition());
                        let epoch = sink.epoch();
                        let in_flight = {
                            let mut w = watermarks.lock().expect("watermarks lock");
                            w.started(&tp, message.offset());
                            w.in_flight()
                        };
                        self.metrics.in_flight.set(in_flight as i64);
                        summary.events += 1;
                        tasks.spawn(handle(shared.clone(), message, permit, Instant::now(), epoch));
                    }
                },
            }
        }

        set_paused(&consumer, true);
        if let Some(e) = failure {
            // Fenced or failed: nothing more is committed or produced; the broker (or this
            // replica's next incarnation) aborts the open transaction.
            tasks.abort_all();
            self.readiness.assigned.store(false, std::sync::atomic::Ordering::Release);
            return Err(e);
        }
        tracing::info!("shutting down: draining in-flight events");
        summary.abandoned = if transactions.as_ref().is_some_and(|t| t.has_failed()) {
            // Its records are held until the abort purges them; waiting would only run the bound out.
            watermarks.lock().expect("watermarks lock").in_flight()
        } else {
            drain(&watermarks, &shared.finished, drain_timeout).await
        };
        if summary.abandoned > 0 {
            tracing::warn!(abandoned = summary.abandoned, "drain bound reached; unfinished events will be re-delivered");
        }
        tasks.abort_all();
        match &transactions {
            None => {
                commit(&consumer, &watermarks, &self.metrics, CommitMode::Sync);
                sink.flush(Duration::from_secs(1));
            }
            Some(t) => {
                let drained = summary.abandoned == 0;
                blocking(|| t.finish(&consumer, drained, &[], Then::Stop))?;
            }
        }
        self.readiness.assigned.store(false, std::sync::atomic::Ordering::Release);
        drop(consumer);
        tracing::info!(events = summary.events, "worker stopped");
        Ok(summary)
    }

    /// Exactly-once: stop taking records, let the in-flight ones finish, commit (or abort and
    /// rewind), begin the next transaction. After an abort, waits a growing backoff.
    async fn end_transaction(
        &self,
        consumer: &StreamConsumer<WorkerContext>,
        shared: &Shared,
        drain_timeout: Duration,
    ) -> Result<(), PipelineError> {
        let Some(t) = &shared.transactions else { return Ok(()) };
        // A doomed transaction is aborted at once: its queued records would only be purged, and
        // its other events are ignored once the epoch moves on.
        let drained = t.has_failed() || {
            let left = drain(&shared.watermarks, &shared.finished, drain_timeout).await;
            if left > 0 {
                tracing::warn!(in_flight = left, "drain bound reached before a commit; aborting the transaction");
            }
            left == 0
        };
        let outcome = blocking(|| t.finish(consumer, drained, &[], Then::Continue))?;
        if outcome == Outcome::Aborted {
            tokio::time::sleep(t.backoff()).await;
        }
        Ok(())
    }
}

/// Waits until no event is in flight or `bound` passes; returns how many are still in flight.
async fn drain(watermarks: &Mutex<Watermarks>, finished: &Notify, bound: Duration) -> usize {
    let deadline = Instant::now() + bound;
    loop {
        let in_flight = watermarks.lock().expect("watermarks lock").in_flight();
        if in_flight == 0 || Instant::now() >= deadline {
            return in_flight;
        }
        tokio::select! {
            _ = finished.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    message: OwnedMessage,
    permit: Option<OwnedSemaphorePermit>,
    received: Instant,
    epoch: u64,
) {
    let source = Source::of(&message);
    let metrics = &shared.metrics;
    // Reduced when this record's full output was refused before (exactly-once re-reads it).
    let shape = shared.sink.shape_for(&source);
    let sent = match parse_upload(message.payload(), shared.max_event_bytes) {
        Ok(event) => {
            let verdict = shared.screen.screen(&event, received).await;
            let started = Instant::now();
            let sent = send_with_fallback(&shared, &source, shape, "verdict", |shape| {
                let json = match shape {
                    Shape::Full => serde_json::to_vec(&verdict),
                    Shape::Reduced => serde_json::to_vec(&verdict.compact()),
                }
                .expect("verdicts always serialize");
                let sink = shared.sink.clone();
                let (media_id, event_id, source) = (event.media_id.clone(), event.event_id.clone(), source.clone());
                let metrics = shared.metrics.clone();
                async move { sink.send_verdict(&media_id, &event_id, &json, &source, &metrics, epoch).await }
            })
            .await;
            metrics.observe_stage("produce", started.elapsed().as_secs_f64());
            if sent.is_ok() {
                metrics.verdicts.with_label_values(&[verdict.action.as_str()]).inc();
                metrics.events.with_label_values(&["verdict"]).inc();
            }
            sent
        }
        Err(error) => {
            tracing::info!(topic = %source.topic, partition = source.partition, offset = source.offset,
                class = error.class(), "unparseable event sent to the DLQ");
            let message = &message;
            let (class, text) = (error.class(), error.to_string());
            let sent = send_with_fallback(&shared, &source, shape, "DLQ record", |shape| {
                let sink = shared.sink.clone();
                let metrics = shared.metrics.clone();
                let text = text.clone();
                async move { sink.send_dlq(message, class, &text, shape, &metrics, epoch).await }
            })
            .await;
            if sent.is_ok() {
                metrics.dlq_records.with_label_values(&[error.class()]).inc();
                metrics.events.with_label_values(&["dlq"]).inc();
            }
            sent
        }
    };
    // Only exactly-once sends fail; the transaction must be aborted before the event counts as
    // finished, or a drain could see it finished and commit the doomed transaction.
    match (sent, &shared.transactions) {
        (Ok(()), _) => {}
        (Err(KafkaError::TransactionEnded), _) => {}
        (Err(_), Some(t)) => t.send_failed(epoch),
        (Err(_), None) => {}
    }
    metrics.event_seconds.observe(received.elapsed().as_secs_f64());
    let in_flight = {
        let mut w = shared.watermarks.lock().expect("watermarks lock");
        w.finished(epoch, &(source.topic, source.partition), source.offset);
        w.in_flight()
    };
    metrics.in_flight.set(in_flight as i64);
    drop(permit);
    shared.finished.notify_one();
}

/// Sends an event's output; when the topic refuses the record itself (too large, invalid), sends
/// it reduced instead: at once at-least-once, in the next transaction exactly-once (this one
/// aborts; the re-read event is answered reduced). A reduced record refused too means the topic
/// refuses everything: at-least-once retries it until the topic takes it, exactly-once aborts.
async fn send_with_fallback<F, Fut>(shared: &Shared, source: &Source, shape: Shape, what: &str, send: F) -> Result<(), KafkaError>
where
    F: Fn(Shape) -> Fut,
    Fut: Future<Output = Result<(), KafkaError>>,
{
    let mut shape = shape;
    let mut backoff = Duration::from_millis(100);
    loop {
        match send(shape).await {
            Err(KafkaError::Refused(error)) => {
                tracing::warn!(topic = %source.topic, partition = source.partition, offset = source.offset, %error, ?shape,
                    "the output topic refused this event's {what}{}",
                    if shape == Shape::Full { "; answering with a reduced one" } else { " even reduced: the topic refuses everything" });
                if shape == Shape::Full {
                    shared.sink.note_refused(source);
                }
                if shared.transactions.is_some() {
                    return Err(KafkaError::Refused(error));
                }
                if shape == Shape::Reduced {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                shape = Shape::Reduced;
            }
            other => return other,
        }
    }
}

fn set_paused(consumer: &StreamConsumer<WorkerContext>, pause: bool) {
    let Ok(assignment) = consumer.assignment() else { return };
    if assignment.count() == 0 {
        return;
    }
    let result = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
    if let Err(e) = result {
        tracing::warn!(error = %e, pause, "pause/resume failed");
    }
}

/// Commits every partition whose watermark moved.
fn commit(consumer: &StreamConsumer<WorkerContext>, watermarks: &Mutex<Watermarks>, metrics: &Metrics, mode: CommitMode) {
    // A synchronous commit (shutdown) re-sends every watermark: an earlier async commit may have failed.
    let offsets = {
        let w = watermarks.lock().expect("watermarks lock");
        if matches!(mode, CommitMode::Sync) { w.all() } else { w.to_commit() }
    };
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in &offsets {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            metrics.offsets_committed.inc();
            let mut w = watermarks.lock().expect("watermarks lock");
            for (tp, offset) in &offsets {
                w.committed(tp, *offset);
            }
        }
        Err(e) => tracing::warn!(error = %e, "offset commit failed; will retry"),
    }
}
