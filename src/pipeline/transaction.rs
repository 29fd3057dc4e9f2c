//! Exactly-once delivery (`kafka.delivery = "exactly_once"`): verdicts, DLQ records and the input
//! offsets they answer are written in one Kafka transaction.
//!
//! The cycle: events are screened concurrently as at-least-once, their records produced into the
//! open transaction. Every `kafka.commit_interval_ms` the worker stops taking records, waits until
//! none is in flight (bounded by `worker.drain_timeout_ms`), sends each partition's next offset
//! with the consumer group metadata, commits, and begins the next transaction. Waiting for the
//! in-flight events keeps the offsets simple — everything taken is finished — at the price of a
//! short stall per commit.
//!
//! The transaction gate lives here too: a record is handed to the producer only while the
//! transaction its input record was taken in is open, so a late event task can never slip its
//! verdict into the next transaction.
//!
//! Failures: a refused record, a drain that passes its bound, or an abortable commit error abort
//! the transaction and rewind the input to the last committed offsets, so the aborted events are
//! screened again into the next transaction. Fencing (a newer incarnation with the same
//! `transactional.id`, or a consumer group generation that moved on) and fatal producer errors
//! stop the worker: that producer never produces again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError as ClientError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use super::ledger::{Ledger, Which};
use super::watermark::Tp;
use super::PipelineError;
use crate::kafka::sink::{Output, SendError, Sink};
use crate::metrics::Metrics;

const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// No single blocking transaction call waits less than this, however little of the bound is left.
const MIN_CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Nor more than this, so that a long bound still logs each retry.
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(5);
const ABORT_BACKOFF_START: Duration = Duration::from_millis(100);
const ABORT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the worker does after finishing a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Begin the next transaction; after an abort, rewind the partitions that stay.
    Continue,
    /// The worker is leaving: neither rewind nor begin.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Nothing was taken since the last commit; the transaction stays open and empty.
    Idle,
    Committed,
    Aborted,
}

/// Why a transaction could not be committed.
enum Refusal {
    /// Events still in flight when the drain bound passed.
    NotDrained,
    /// A record of the transaction was refused by the broker.
    SendFailed,
    /// The consumer has no group metadata to send the offsets with.
    NoGroup,
    Client(ClientError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotDrained => f.write_str("events still in flight at the drain bound"),
            Refusal::SendFailed => f.write_str("a verdict or DLQ record was refused"),
            Refusal::NoGroup => f.write_str("the consumer has no group metadata"),
            Refusal::Client(e) => write!(f, "{e}"),
        }
    }
}

/// How to react to an error of a transaction call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Retriable,
    Abortable,
    /// Someone else owns the work now: a newer producer with our transactional.id, or a newer
    /// generation of the consumer group.
    Fenced,
    Fatal,
}

fn classify(e: &ClientError) -> Class {
    let ClientError::Transaction(rd) = e else {
        // Not from a transaction call (e.g. no group metadata): the transaction can still be aborted.
        return Class::Abortable;
    };
    let code = rd.code();
    let producer_fenced =
        matches!(code, RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch);
    let group_fenced = matches!(
        code,
        RDKafkaErrorCode::IllegalGeneration | RDKafkaErrorCode::UnknownMemberId | RDKafkaErrorCode::FencedInstanceId
    );
    if producer_fenced || group_fenced {
        Class::Fenced
    } else if rd.is_fatal() {
        Class::Fatal
    } else if rd.is_retriable() {
        Class::Retriable
    } else {
        // txn_requires_abort, or anything librdkafka leaves unclassified: aborting is always safe.
        Class::Abortable
    }
}

/// Which transaction records may join now.
#[derive(Debug, Default)]
struct Gate {
    epoch: u64,
    open: bool,
}

/// The transactional side of one worker, shared by the main loop, the event tasks (through the
/// gate) and the rebalance callback.
pub struct Transactions {
    sink: Arc<Sink>,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    /// Held while a record is handed to the producer, so a record joins the transaction open
    /// when its input record was taken, or is never produced.
    gate: Mutex<Gate>,
    /// Bound on retrying a commit (the drain bound).
    bound: Duration,
    /// Bound on retrying an abort: the transaction timeout. librdkafka's abort waits for records
    /// already sent, and those may take until `message.timeout.ms` (= `transaction.timeout.ms`)
    /// to fail; by then the broker has aborted the transaction anyway.
    abort_bound: Duration,
    /// The epoch of a transaction one of whose records was refused (0: none): it can only be
    /// aborted. An epoch, not a flag, so that a late refusal cannot doom the next transaction.
    failed: AtomicU64,
    /// Wakes the main loop when `failed` is set, so the doomed transaction is not carried on.
    failure: Notify,
    /// Set once the worker must stop; no transaction call is made after it.
    stopped: AtomicBool,
    /// A stop decided in the rebalance callback, for the main loop to return.
    fatal: Mutex<Option<PipelineError>>,
    aborts_in_a_row: AtomicU32,
}

impl Transactions {
    /// Fences earlier incarnations of this replica (aborting what they left open) and begins the
    /// first transaction. Blocking.
    pub fn start(
        sink: Arc<Sink>,
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
        bound: Duration,
        abort_bound: Duration,
    ) -> Result<Self, PipelineError> {
        let t = Self {
            sink,
            ledger,
            metrics,
            gate: Mutex::new(Gate::default()),
            bound,
            abort_bound,
            failed: AtomicU64::new(0),
            failure: Notify::new(),
            stopped: AtomicBool::new(false),
            fatal: Mutex::new(None),
            aborts_in_a_row: AtomicU32::new(0),
        };
        t.retry("init_transactions", t.bound, |timeout| t.sink.producer().init_transactions(timeout)).map_err(|e| t.stop_for(e))?;
        t.begin()?;
        Ok(t)
    }

    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// The transaction records taken now belong to.
    pub fn epoch(&self) -> u64 {
        self.gate().epoch
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Produces a record into transaction `epoch` and waits for the broker's answer. The record
    /// is sent once: a failure dooms the transaction (it is aborted and its input re-read).
    pub async fn send(&self, output: &Output, epoch: u64) -> Result<(), SendError> {
        let admit = || {
            let gate = self.gate();
            if gate.open && gate.epoch == epoch {
                Ok(gate)
            } else {
                Err(SendError::TransactionEnded)
            }
        };
        let delivery = match self.sink.enqueue(output, &self.metrics, admit).await {
            Ok(delivery) => delivery,
            Err(SendError::TransactionEnded) => return Err(SendError::TransactionEnded),
            Err(e) => {
                self.doom(epoch);
                return Err(e);
            }
        };
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            // Purged by an abort: the transaction ended; the broker refused nothing.
            Ok(Err((e, _)))
                if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)) =>
            {
                Err(SendError::TransactionEnded)
            }
            Ok(Err((e, _))) => {
                self.metrics.produce_errors.inc();
                tracing::warn!(error = %e, "produce failed inside a transaction; it will be aborted");
                self.doom(epoch);
                Err(SendError::of(e))
            }
            Err(_canceled) => Err(SendError::TransactionEnded),
        }
    }

    /// A record of the transaction `epoch` failed: that transaction can only be aborted.
    fn doom(&self, epoch: u64) {
        self.failed.store(epoch, Ordering::Release);
        self.failure.notify_one();
    }

    /// The open transaction is doomed: abort it without waiting for its events (librdkafka holds
    /// the records of a failed transaction until the abort purges them).
    pub fn is_doomed(&self) -> bool {
        self.failed.load(Ordering::Acquire) == self.epoch()
    }

    /// Completes once the open transaction is doomed (never, while it is not).
    pub async fn doomed(&self) {
        if !self.is_doomed() {
            self.failure.notified().await;
        }
    }

    /// Every `kafka.commit_interval_ms`, and at once when the transaction is doomed: stop taking
    /// records (the caller does), let the in-flight ones finish, commit (or abort and rewind),
    /// begin the next transaction. After an abort, waits a growing backoff.
    pub async fn on_tick<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K) -> Result<(), PipelineError> {
        // A doomed transaction is aborted at once: its queued records would only be purged, and
        // its other events are ignored once the epoch moves on.
        let drained = self.is_doomed() || {
            let left = self.ledger.drain(None, self.bound).await;
            if left > 0 {
                tracing::warn!(in_flight = left, "drain bound reached before a commit; aborting the transaction");
            }
            left == 0
        };
        let outcome = blocking(|| self.end(consumer, drained, &[], Then::Continue))?;
        if outcome == Outcome::Aborted {
            tokio::time::sleep(self.backoff()).await;
        }
        Ok(())
    }

    /// Partitions are being revoked: a transaction spans every partition, so *all* in-flight
    /// events get the drain bound, then the open transaction is committed (offsets included)
    /// before the partitions move — the new owner starts exactly where it ended. If the bound
    /// passes or the commit fails it is aborted instead, and the partitions kept are rewound.
    /// Runs on the thread polling the consumer (the rebalance callback).
    pub fn on_revoke<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K, revoked: &[Tp]) {
        // Let the runtime move other tasks (the ones finishing these events) off this thread.
        blocking(|| {
            // A doomed transaction's records are held until the abort purges them: no wait.
            let drained = self.is_doomed() || self.ledger.drain_blocking(None, self.bound) == 0;
            if let Err(e) = self.end(consumer, drained, revoked, Then::Continue) {
                self.keep_fatal(e);
            }
        });
        self.ledger.forget(revoked);
    }

    /// The worker stops: lets in-flight events finish within the drain bound, commits (or
    /// aborts) the last transaction. Returns how many events were left unfinished.
    pub async fn on_shutdown<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K) -> Result<usize, PipelineError> {
        let abandoned = if self.is_doomed() {
            // Its records are held until the abort purges them; waiting would only run the bound out.
            self.ledger.in_flight(None)
        } else {
            self.ledger.drain(None, self.bound).await
        };
        blocking(|| self.end(consumer, abandoned == 0, &[], Then::Stop))?;
        Ok(abandoned)
    }

    /// A stop decided where it could not be returned (the rebalance callback).
    pub fn take_fatal(&self) -> Option<PipelineError> {
        self.fatal.lock().expect("fatal lock").take()
    }

    /// Time to wait before taking records again after consecutive aborts (zero after a commit),
    /// so that a verdict topic refusing everything is not hammered.
    fn backoff(&self) -> Duration {
        match self.aborts_in_a_row.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            n => (ABORT_BACKOFF_START * 2u32.saturating_pow(n.min(16) - 1)).min(ABORT_BACKOFF_MAX),
        }
    }

    /// Ends the open transaction: commits it with every partition's next offset when `drained`
    /// (nothing in flight) and no record failed, else aborts it and — with `Then::Continue` —
    /// rewinds the partitions not in `leaving`. Then begins the next one unless `Then::Stop`.
    /// Blocking. An error means the worker must stop.
    fn end<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        drained: bool,
        leaving: &[Tp],
        then: Then,
    ) -> Result<Outcome, PipelineError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PipelineError::Stopped);
        }
        let offsets = self.ledger.offsets(Which::Moved);
        let failed = self.is_doomed();
        if drained && !failed && offsets.count() == 0 {
            return Ok(Outcome::Idle);
        }
        // From here on no event task hands a record of this transaction to the producer.
        self.gate().open = false;
        let refusal = if failed {
            Some(Refusal::SendFailed)
        } else if !drained {
            Some(Refusal::NotDrained)
        } else {
            self.commit(consumer, &offsets).err()
        };
        let outcome = match refusal {
            None => {
                self.ledger.committed(&offsets);
                self.metrics.transactions.with_label_values(&["committed"]).inc();
                self.metrics.offsets_committed.inc();
                self.aborts_in_a_row.store(0, Ordering::Relaxed);
                Outcome::Committed
            }
            Some(refusal) => {
                if let Refusal::Client(e) = &refusal {
                    match classify(e) {
                        Class::Fenced => {
                            // Abort if the producer still may (group fencing), so readers need not
                            // wait for the transaction timeout; a fenced producer cannot.
                            let _ = self.sink.producer().abort_transaction(MIN_CALL_TIMEOUT);
                            return Err(self.stop_for(e.clone()));
                        }
                        Class::Fatal => return Err(self.stop_for(e.clone())),
                        Class::Retriable | Class::Abortable => {}
                    }
                }
                tracing::warn!(reason = %refusal, "aborting the transaction; its events will be screened again");
                self.retry("abort_transaction", self.abort_bound, |timeout| self.sink.producer().abort_transaction(timeout))
                    .map_err(|e| self.stop_for(e))?;
                self.metrics.transactions.with_label_values(&["aborted"]).inc();
                self.aborts_in_a_row.fetch_add(1, Ordering::Relaxed);
                if then == Then::Continue {
                    self.rewind(consumer, leaving)?;
                }
                Outcome::Aborted
            }
        };
        if then == Then::Continue {
            self.begin()?;
        }
        Ok(outcome)
    }

    /// Begins a transaction and lets records of the new epoch into it.
    fn begin(&self) -> Result<(), PipelineError> {
        self.sink.producer().begin_transaction().map_err(|e| self.stop_for(e))?;
        let epoch = {
            let mut gate = self.gate();
            gate.epoch += 1;
            gate.open = true;
            gate.epoch
        };
        self.ledger.set_epoch(epoch);
        Ok(())
    }

    fn commit<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K, offsets: &TopicPartitionList) -> Result<(), Refusal> {
        let started = Instant::now();
        let group = consumer.group_metadata().ok_or(Refusal::NoGroup)?;
        let producer = self.sink.producer();
        self.retry("send_offsets_to_transaction", self.bound, |timeout| producer.send_offsets_to_transaction(offsets, &group, timeout))
            .map_err(Refusal::Client)?;
        self.retry("commit_transaction", self.bound, |timeout| producer.commit_transaction(timeout)).map_err(Refusal::Client)?;
        let took = started.elapsed();
        self.metrics.transaction_commit_seconds.observe(took.as_secs_f64());
        tracing::debug!(partitions = offsets.count(), ms = took.as_millis() as u64, "transaction committed");
        Ok(())
    }

    /// Runs a transaction call, again while it fails with a retriable error and the bound allows.
    fn retry(
        &self,
        what: &str,
        bound: Duration,
        mut call: impl FnMut(Duration) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + bound;
        loop {
            let timeout = deadline.saturating_duration_since(Instant::now()).clamp(MIN_CALL_TIMEOUT, MAX_CALL_TIMEOUT);
            match call(timeout) {
                Ok(()) => return Ok(()),
                Err(e) if classify(&e) == Class::Retriable && Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::warn!(call = what, error = %e, "transaction call failed; retrying");
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Seeks every partition that stays back to its last committed offset. A partition that
    /// cannot be rewound would later commit past events whose verdicts were aborted, so a failed
    /// seek stops the worker (its successor starts from the committed offsets).
    fn rewind<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K, leaving: &[Tp]) -> Result<(), PipelineError> {
        let points = self.ledger.rewind(leaving);
        if points.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &points {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)).map_err(|e| self.stop(PipelineError::Client(e)))?;
        }
        let result = consumer.seek_partitions(tpl, self.bound.max(MIN_CALL_TIMEOUT));
        let failed: Vec<String> = match &result {
            Ok(done) => done
                .elements()
                .iter()
                .filter_map(|e| e.error().err().map(|err| format!("{}/{}: {err}", e.topic(), e.partition())))
                .collect(),
            Err(e) => vec![e.to_string()],
        };
        if !failed.is_empty() {
            return Err(self.stop(PipelineError::Rewind(failed.join("; "))));
        }
        tracing::info!(partitions = points.len(), "input rewound to the last committed transaction");
        Ok(())
    }

    /// Stops for a client error that cannot be recovered from, naming fencing as such.
    fn stop_for(&self, e: ClientError) -> PipelineError {
        let error = if classify(&e) == Class::Fenced { PipelineError::Fenced(e) } else { PipelineError::TransactionFatal(e) };
        self.stop(error)
    }

    fn stop(&self, error: PipelineError) -> PipelineError {
        self.stopped.store(true, Ordering::Release);
        self.gate().open = false;
        tracing::error!(error = %error, "exactly-once: stopping the worker");
        error
    }

    /// Keeps a stop decided in the rebalance callback for the main loop.
    fn keep_fatal(&self, error: PipelineError) {
        self.fatal.lock().expect("fatal lock").get_or_insert(error);
    }
}

/// Runs a blocking call from async code: on a multi-thread runtime the worker thread hands its
/// other tasks (the event tasks) to the rest of the pool meanwhile.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
