//! The worker: reads upload events, screens them, writes one verdict (or DLQ record) per event,
//! and commits what it answered.
//!
//! # Layout
//!
//! - [`ledger`]: the one owner of in-flight state — the bound, the per-partition watermarks
//!   ([`watermark`]), the in-flight gauge and the drain. Taking a record gives a ticket;
//!   answering the ticket is the acknowledgement.
//! - [`delivery`]: the seam between at-least-once and exactly-once ([`transaction`]): how an
//!   answer is sent, and what happens on each tick, on revoke and on shutdown.
//! - [`answer`]: one record from bytes to acknowledgement.
//! - [`callbacks`]: what librdkafka calls back into: rebalances and statistics.
//! - this module: start-up, the receive loop and shutdown.
//!
//! # Backpressure
//!
//! A place in the bound (`worker.max_in_flight`) is taken *before* a record is received, as a
//! server takes its connection permit before `accept`. With no place free the worker simply
//! stops receiving: librdkafka's queue fills to `queued.max.messages.kbytes` and stops fetching,
//! and nothing fetched is thrown away. Pausing the partitions would (librdkafka drops prefetched
//! records on pause and fetches them again on resume), so the worker pauses only when a stall
//! lasts [`PAUSE_AFTER`]: paused, it polls again, which serves rebalance callbacks and
//! statistics, without taking records. It resumes as soon as a place frees. A partition assigned
//! while paused is paused by the callback; a record that arrives anyway waits, untaken, until a
//! place frees — the bound is hard.
//!
//! # Shutdown
//!
//! Stop receiving, let in-flight events finish within `worker.drain_timeout_ms`, commit (or end
//! the last transaction), close the consumer. A dynamic member leaves the group then; a static
//! one (the default, [`Replica`]) stays in it until it comes back under its name or its session
//! times out.

mod answer;
mod callbacks;
mod delivery;
mod ledger;
mod transaction;
mod watermark;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::kafka::replica::Replica;
use crate::kafka::sink::Sink;
use crate::kafka::watchdog::BrokerWatch;
use crate::kafka::{consumer_config, SetupError};
use crate::metrics::{Metrics, Readiness};
use crate::screen::Screen;
use answer::Shared;
use callbacks::ConsumerCallbacks;
use delivery::Delivery;
use ledger::{Ledger, Permit};

/// Records taken one after another without looking at shutdown, the commit tick or a doomed
/// transaction.
const RUN_WITHOUT_SELECT: usize = 64;

/// How long the worker goes without a free place before it pauses its partitions to serve
/// rebalances and statistics (well under librdkafka's 300 s `max.poll.interval.ms`).
pub const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// A static member fenced under its own name makes a new consumer at most this many times in
/// [`RECREATE_WINDOW`] (see [`Worker::run`]); two replicas with one name fence each other faster.
pub const RECREATE_LIMIT: usize = 3;
pub const RECREATE_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Setup(#[from] SetupError),
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
        "consumer failed for good: {reason} ({code:?}). With static membership (kafka.static_membership) this means a \
         worker on another host or pod joined the group under this replica's name: give every replica its own POD_NAME or \
         HOSTNAME"
    )]
    ConsumerFatal { code: RDKafkaErrorCode, reason: String },
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
    /// Its name in the consumer group and for transactions.
    pub replica: Replica,
}

/// A started worker: its consumer, and what the receive loop keeps between iterations.
struct Running {
    consumer: StreamConsumer<ConsumerCallbacks>,
    shared: Arc<Shared>,
    ledger: Arc<Ledger>,
    readiness: Arc<Readiness>,
    commit_interval: Duration,
    /// Shared with the callbacks, which pause partitions assigned while this is set.
    paused: Arc<AtomicBool>,
    tasks: JoinSet<()>,
    summary: WorkerSummary,
}

impl Worker {
    /// Runs until `shutdown` completes, then drains and commits. Exactly-once: returns an error
    /// (and never produces again) when fenced or when the producer fails fatally.
    ///
    /// A static member fenced under its own name is the one failure it recovers from in place:
    /// librdkafka (confluentinc/librdkafka#3437) resets the member id of a consumer whose session
    /// timed out while the broker was away, and a commit queued meanwhile comes back
    /// `FENCED_INSTANCE_ID`, which it treats as fatal. The worker then drops the consumer and the
    /// producer (exactly-once: the open transaction is aborted when the new producer, with the
    /// same transactional id, starts) and starts again from the committed offsets, keeping its
    /// banks, model and cache. At most [`RECREATE_LIMIT`] times in [`RECREATE_WINDOW`]: beyond
    /// that another replica has this one's name, and it stops.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<WorkerSummary, PipelineError> {
        tokio::pin!(shutdown);
        let mut events = 0;
        let mut recreated: VecDeque<Instant> = VecDeque::new();
        loop {
            let mut running = self.start()?;
            let failure = running.receive(shutdown.as_mut()).await;
            let fenced_as_itself = self.replica.group_instance_id().is_some() && failure.as_ref().is_some_and(fenced_instance);
            events += running.summary.events;
            match running.shut_down(failure).await {
                Ok(summary) => return Ok(WorkerSummary { events, ..summary }),
                Err(e) if fenced_as_itself && may_recreate(&mut recreated, Instant::now()) => {
                    tracing::warn!(error = %e, "fenced under this replica's own name after a lost session: \
                        starting a new consumer from the committed offsets");
                    self.metrics.consumer_recreations.inc();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Builds the sink, the ledger and the delivery mode, then subscribes.
    fn start(&self) -> Result<Running, PipelineError> {
        let settings = &self.settings;
        let drain_bound = Duration::from_millis(settings.worker.drain_timeout_ms);
        let sink = Arc::new(Sink::new(&settings.kafka, &self.replica, self.instance.clone(), &self.metrics)?);
        let ledger = Ledger::new(settings.worker.max_in_flight, self.metrics.in_flight.clone());
        let delivery = Arc::new(Delivery::start(
            settings.kafka.delivery,
            sink.clone(),
            ledger.clone(),
            self.metrics.clone(),
            drain_bound,
            Duration::from_millis(settings.kafka.transaction_timeout_ms),
        )?);
        let paused = Arc::new(AtomicBool::new(false));
        let callbacks = ConsumerCallbacks {
            delivery: delivery.clone(),
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            brokers: BrokerWatch::new(
                "consumer",
                &settings.kafka.brokers,
                self.metrics.kafka_broker_repairs.with_label_values(&["consumer"]),
            ),
            paused: paused.clone(),
            assigned: AtomicUsize::new(0),
        };
        let mut config = consumer_config(&settings.kafka);
        if let Some(id) = self.replica.group_instance_id() {
            config.set("group.instance.id", id);
        }
        let consumer: StreamConsumer<ConsumerCallbacks> = config.create_with_context(callbacks).map_err(SetupError::from)?;
        consumer.context().brokers.attach(consumer.client());
        consumer.subscribe(&[settings.kafka.input_topic.as_str()]).map_err(SetupError::from)?;
        tracing::info!(topic = %settings.kafka.input_topic, group = %settings.kafka.group_id,
            delivery = ?settings.kafka.delivery, replica = %self.replica.name(),
            static_member = self.replica.group_instance_id().is_some(), "worker started");
        Ok(Running {
            consumer,
            shared: Arc::new(Shared {
                screen: self.screen.clone(),
                sink,
                delivery,
                metrics: self.metrics.clone(),
                max_event_bytes: settings.worker.max_event_bytes,
            }),
            ledger,
            readiness: self.readiness.clone(),
            commit_interval: Duration::from_millis(settings.kafka.commit_interval_ms),
            paused,
            tasks: JoinSet::new(),
            summary: WorkerSummary::default(),
        })
    }
}

impl Running {
    /// The receive loop, until `shutdown` completes (returns None) or the worker must stop
    /// (returns why).
    async fn receive(&mut self, shutdown: impl Future<Output = ()>) -> Option<PipelineError> {
        let delivery = self.shared.delivery.clone();
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut place: Option<Permit> = None;
        // Records received while paused without a place: taken first once a place frees.
        let mut waiting: VecDeque<OwnedMessage> = VecDeque::new();
        let mut stalled_since: Option<tokio::time::Instant> = None;
        let mut run = 0;
        tokio::pin!(shutdown);
        loop {
            while let Some(done) = self.tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "event task failed");
                }
            }
            if let Some(e) = delivery.take_fatal() {
                return Some(e);
            }
            if place.is_none() {
                place = self.ledger.try_permit();
            }
            if place.is_some() {
                stalled_since = None;
                if self.is_paused() {
                    self.set_paused(false);
                }
                if let Some(message) = waiting.pop_front() {
                    // Its partition may have been revoked meanwhile: then it is the new owner's.
                    if self.is_assigned(&message) {
                        self.take(place.take().expect("checked"), message);
                    }
                    continue;
                }
            } else {
                stalled_since.get_or_insert_with(tokio::time::Instant::now);
            }
            // Records already fetched are taken without a trip through the select below (most of
            // the loop's cost per record otherwise), up to a run of RUN_WITHOUT_SELECT, so that
            // shutdown and the commit tick are still seen under a steady stream.
            if place.is_some() && waiting.is_empty() && run < RUN_WITHOUT_SELECT {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(message)) => {
                        run += 1;
                        self.take(place.take().expect("checked"), message.detach());
                        continue;
                    }
                    Some(Err(e)) => {
                        if let Some(fatal) = self.consumer_error(e).await {
                            return Some(fatal);
                        }
                        continue;
                    }
                    None => {}
                }
            }
            run = 0;
            let paused = self.is_paused();
            let pause_at = stalled_since.filter(|_| !paused).map(|since| since + PAUSE_AFTER);
            tokio::select! {
                biased;
                _ = &mut shutdown => return None,
                // A failed record dooms the open transaction: end it now rather than at the tick.
                _ = delivery.doomed() => {
                    if let Err(e) = delivery.on_tick(&self.consumer).await {
                        return Some(e);
                    }
                }
                _ = commit_tick.tick() => {
                    if let Err(e) = delivery.on_tick(&self.consumer).await {
                        return Some(e);
                    }
                }
                free = self.ledger.permit(), if place.is_none() => place = Some(free),
                _ = tokio::time::sleep_until(pause_at.unwrap_or_else(far_future)), if pause_at.is_some() => {
                    tracing::debug!(in_flight = self.ledger.bound(), "no place free for {PAUSE_AFTER:?}: pausing the partitions");
                    self.shared.metrics.consumer_pauses.inc();
                    self.set_paused(true);
                }
                received = self.consumer.recv(), if place.is_some() || paused => match received {
                    Err(e) => {
                        if let Some(fatal) = self.consumer_error(e).await {
                            return Some(fatal);
                        }
                    }
                    Ok(message) => {
                        let message = message.detach();
                        match place.take() {
                            Some(free) => self.take(free, message),
                            None => {
                                // Paused with no place: a partition assigned during the pause
                                // delivered before the callback paused it. Pause it and keep
                                // the record, untaken, for the first free place.
                                self.pause_partition_of(&message);
                                waiting.push_back(message);
                            }
                        }
                    }
                },
            }
        }
    }

    /// A fatal consumer error (e.g. fenced by another static member with this replica's name)
    /// never recovers: the worker stops rather than sit idle holding nothing. Others librdkafka
    /// recovers from by itself; the pause keeps a persistent one from spinning.
    async fn consumer_error(&self, e: rdkafka::error::KafkaError) -> Option<PipelineError> {
        if let Some((code, reason)) = self.consumer.client().fatal_error() {
            return Some(PipelineError::ConsumerFatal { code, reason });
        }
        tracing::warn!(error = %e, "consumer error");
        tokio::time::sleep(Duration::from_millis(100)).await;
        None
    }

    /// Takes a record into the ledger and starts answering it.
    fn take(&mut self, place: Permit, message: OwnedMessage) {
        let ticket =
            self.ledger.take(place, message.topic(), message.partition(), message.offset(), self.shared.delivery.epoch());
        self.summary.events += 1;
        self.tasks.spawn(answer::answer(self.shared.clone(), message, ticket, Instant::now()));
    }

    /// Stops fetching, drains and commits (or, after a failure, abandons the in-flight events).
    async fn shut_down(mut self, failure: Option<PipelineError>) -> Result<WorkerSummary, PipelineError> {
        self.set_paused(true);
        if let Some(e) = failure {
            // Fenced or failed: nothing more is committed or produced; the broker (or this
            // replica's next incarnation) aborts the open transaction.
            self.tasks.abort_all();
            self.readiness.assigned.store(false, Ordering::Release);
            return Err(e);
        }
        tracing::info!("shutting down: draining in-flight events");
        let ended = self.shared.delivery.on_shutdown(&self.consumer).await;
        self.tasks.abort_all();
        self.readiness.assigned.store(false, Ordering::Release);
        self.summary.abandoned = ended?;
        if self.summary.abandoned > 0 {
            tracing::warn!(abandoned = self.summary.abandoned, "drain bound reached; unfinished events will be re-delivered");
        }
        drop(self.consumer);
        tracing::info!(events = self.summary.events, "worker stopped");
        Ok(self.summary)
    }

    fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Pauses or resumes the whole assignment.
    fn set_paused(&self, pause: bool) {
        self.paused.store(pause, Ordering::Release);
        let Ok(assignment) = self.consumer.assignment() else { return };
        if assignment.count() == 0 {
            return;
        }
        let result = if pause { self.consumer.pause(&assignment) } else { self.consumer.resume(&assignment) };
        if let Err(e) = result {
            tracing::warn!(error = %e, pause, "pause/resume failed");
        }
    }

    fn is_assigned(&self, message: &OwnedMessage) -> bool {
        self.consumer.assignment().is_ok_and(|a| a.find_partition(message.topic(), message.partition()).is_some())
    }

    fn pause_partition_of(&self, message: &OwnedMessage) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(message.topic(), message.partition());
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::warn!(error = %e, "pausing a partition assigned during a pause failed");
        }
    }
}

/// Fenced as a static member (`FENCED_INSTANCE_ID`): by the consumer's heartbeat or commit, or,
/// exactly-once, by the offsets sent to the transaction. A producer fenced by a newer instance of
/// its transactional id is not this: that replica's successor owns the work.
fn fenced_instance(failure: &PipelineError) -> bool {
    match failure {
        PipelineError::ConsumerFatal { code, .. } => *code == RDKafkaErrorCode::FencedInstanceId,
        PipelineError::Fenced(e) | PipelineError::TransactionFatal(e) => {
            e.rdkafka_error_code() == Some(RDKafkaErrorCode::FencedInstanceId)
        }
        _ => false,
    }
}

/// Whether another consumer may be made now: fewer than [`RECREATE_LIMIT`] in the last
/// [`RECREATE_WINDOW`] (`recent` keeps their times).
fn may_recreate(recent: &mut VecDeque<Instant>, now: Instant) -> bool {
    while recent.front().is_some_and(|t| now.duration_since(*t) > RECREATE_WINDOW) {
        recent.pop_front();
    }
    if recent.len() >= RECREATE_LIMIT {
        return false;
    }
    recent.push_back(now);
    true
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}
