//! The worker: reads upload events, screens them, writes one verdict (or DLQ record) per event,
//! and commits each partition's offsets up to its watermark.
//!
//! Backpressure: at most `worker.max_in_flight` events are in flight; at the bound the consumer
//! pauses its partitions and resumes once half the bound is free. Shutdown: stop fetching, let in-flight
//! events finish within `worker.drain_timeout_ms`, commit, leave the group.

pub mod context;
pub mod watermark;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::event::parse_upload;
use context::WorkerContext;
use crate::kafka::sink::{Sink, Source};
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
    sink: Sink,
    watermarks: Arc<Mutex<Watermarks>>,
    metrics: Arc<Metrics>,
    max_event_bytes: usize,
    finished: Notify,
}

impl Worker {
    /// Runs until `shutdown` completes, then drains and commits.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<WorkerSummary, PipelineError> {
        let settings = &self.settings;
        let drain_timeout = Duration::from_millis(settings.worker.drain_timeout_ms);
        let watermarks = Arc::new(Mutex::new(Watermarks::default()));
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
        };
        let consumer: StreamConsumer<WorkerContext> =
            consumer_config(&settings.kafka).create_with_context(context).map_err(KafkaError::from)?;
        consumer.context().brokers.attach(consumer.client());
        consumer.subscribe(&[settings.kafka.input_topic.as_str()]).map_err(KafkaError::from)?;
        let shared = Arc::new(Shared {
            screen: self.screen.clone(),
            sink: Sink::new(&settings.kafka, self.instance.clone(), &self.metrics)?,
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
        tokio::pin!(shutdown);
        tracing::info!(topic = %settings.kafka.input_topic, group = %settings.kafka.group_id, "worker started");

        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "event task failed");
                }
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
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = commit_tick.tick() => commit(&consumer, &watermarks, &self.metrics, CommitMode::Async),
                _ = shared.finished.notified(), if paused => {}
                received = consumer.recv() => match received {
                    Err(e) => {
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
                        let in_flight = {
                            let mut w = watermarks.lock().expect("watermarks lock");
                            w.started(&tp, message.offset());
                            w.in_flight()
                        };
                        self.metrics.in_flight.set(in_flight as i64);
                        summary.events += 1;
                        tasks.spawn(handle(shared.clone(), message, permit, Instant::now()));
                    }
                },
            }
        }

        tracing::info!("shutting down: draining in-flight events");
        set_paused(&consumer, true);
        let deadline = Instant::now() + drain_timeout;
        loop {
            let in_flight = watermarks.lock().expect("watermarks lock").in_flight();
            if in_flight == 0 || Instant::now() >= deadline {
                summary.abandoned = in_flight;
                break;
            }
            tokio::select! {
                _ = shared.finished.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        if summary.abandoned > 0 {
            tracing::warn!(abandoned = summary.abandoned, "drain bound reached; unfinished events will be re-delivered");
        }
        tasks.abort_all();
        commit(&consumer, &watermarks, &self.metrics, CommitMode::Sync);
        shared.sink.flush(Duration::from_secs(1));
        self.readiness.assigned.store(false, std::sync::atomic::Ordering::Release);
        drop(consumer);
        tracing::info!(events = summary.events, "worker stopped");
        Ok(summary)
    }
}

async fn handle(shared: Arc<Shared>, message: OwnedMessage, permit: Option<OwnedSemaphorePermit>, received: Instant) {
    let source = Source::of(&message);
    let metrics = &shared.metrics;
    match parse_upload(message.payload(), shared.max_event_bytes) {
        Ok(event) => {
            let verdict = shared.screen.screen(&event, received).await;
            let json = serde_json::to_vec(&verdict).expect("verdicts always serialize");
            let started = Instant::now();
            shared.sink.send_verdict(&event.media_id, &event.event_id, &json, &source, metrics).await;
            metrics.observe_stage("produce", started.elapsed().as_secs_f64());
            metrics.verdicts.with_label_values(&[verdict.action.as_str()]).inc();
            metrics.events.with_label_values(&["verdict"]).inc();
        }
        Err(error) => {
            tracing::info!(topic = %source.topic, partition = source.partition, offset = source.offset,
                class = error.class(), "unparseable event sent to the DLQ");
            shared.sink.send_dlq(&message, error.class(), &error.to_string(), metrics).await;
            metrics.dlq_records.with_label_values(&[error.class()]).inc();
            metrics.events.with_label_values(&["dlq"]).inc();
        }
    }
    metrics.event_seconds.observe(received.elapsed().as_secs_f64());
    let in_flight = {
        let mut w = shared.watermarks.lock().expect("watermarks lock");
        w.finished(&(source.topic, source.partition), source.offset);
        w.in_flight()
    };
    metrics.in_flight.set(in_flight as i64);
    drop(permit);
    shared.finished.notify_one();
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
