//! The delivery seam: everything that differs between at-least-once and exactly-once, behind
//! one enum with the same five operations — send an answer, tick, revoke, shut down, and tell
//! when the open transaction is doomed. The rest of the pipeline (reading, screening, the
//! ledger) is the same in both modes, and the mode is decided once, in [`Delivery::start`].
//!
//! At-least-once commits the ledger's watermarks (asynchronously on each tick, synchronously on
//! revoke and shutdown); a send is retried until the broker acknowledges it. Exactly-once
//! ([`Transactions`]) writes answers and input offsets in one transaction per tick.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};

use super::ledger::{Ledger, Which};
use super::transaction::{blocking, Transactions};
use super::watermark::Tp;
use super::PipelineError;
use crate::config::Delivery as Mode;
use crate::kafka::sink::{Output, SendError, Shape, Sink, Source};
use crate::metrics::Metrics;

pub enum Delivery {
    AtLeastOnce(AtLeastOnce),
    ExactlyOnce(Transactions),
}

/// At-least-once: verdicts acknowledged before their offsets are committed.
pub struct AtLeastOnce {
    sink: Arc<Sink>,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    drain_bound: Duration,
}

impl Delivery {
    /// The one place the delivery mode is decided. Exactly-once fences earlier incarnations of
    /// this replica and begins the first transaction (blocking).
    pub fn start(
        mode: Mode,
        sink: Arc<Sink>,
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
        drain_bound: Duration,
        abort_bound: Duration,
    ) -> Result<Self, PipelineError> {
        Ok(match mode {
            Mode::AtLeastOnce => Delivery::AtLeastOnce(AtLeastOnce { sink, ledger, metrics, drain_bound }),
            Mode::ExactlyOnce => {
                Delivery::ExactlyOnce(blocking(|| Transactions::start(sink, ledger, metrics, drain_bound, abort_bound))?)
            }
        })
    }

    fn sink(&self) -> &Sink {
        match self {
            Delivery::AtLeastOnce(a) => &a.sink,
            Delivery::ExactlyOnce(t) => t.sink(),
        }
    }

    /// The transaction records taken now belong to (0 at-least-once).
    pub fn epoch(&self) -> u64 {
        match self {
            Delivery::AtLeastOnce(_) => 0,
            Delivery::ExactlyOnce(t) => t.epoch(),
        }
    }

    /// Sends the answer to the input record at `source`, built by `build` in the shape asked.
    ///
    /// A record the topic refuses for itself is answered reduced: at once at-least-once (and a
    /// reduced record refused too is retried until the topic takes it: an outage, not a poison
    /// record), in the next transaction exactly-once (this one is doomed; the re-read event is
    /// answered reduced). Only exactly-once returns errors.
    pub async fn send(&self, source: &Source, epoch: u64, what: &str, build: impl Fn(Shape) -> Output) -> Result<(), SendError> {
        let sink = self.sink();
        let mut shape = sink.shape_for(source);
        let mut backoff = Duration::from_millis(100);
        loop {
            let output = build(shape);
            let sent = match self {
                Delivery::AtLeastOnce(a) => sink.send_acked(&output, &a.metrics).await,
                Delivery::ExactlyOnce(t) => t.send(&output, epoch).await,
            };
            let Err(SendError::Refused(error)) = sent else { return sent };
            tracing::warn!(topic = %source.topic, partition = source.partition, offset = source.offset, %error, ?shape,
                "the output topic refused this event's {what}{}",
                if shape == Shape::Full { "; answering with a reduced one" } else { " even reduced: the topic refuses everything" });
            if shape == Shape::Full {
                sink.note_refused(source);
            }
            if let Delivery::ExactlyOnce(_) = self {
                return Err(SendError::Refused(error));
            }
            if shape == Shape::Reduced {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            shape = Shape::Reduced;
        }
    }

    /// Completes when the open transaction must end now rather than at the next tick (a record
    /// of it failed). Never at-least-once.
    pub async fn doomed(&self) {
        match self {
            Delivery::AtLeastOnce(_) => std::future::pending().await,
            Delivery::ExactlyOnce(t) => t.doomed().await,
        }
    }

    /// Every `kafka.commit_interval_ms`: commit what is answered (at-least-once), or end the
    /// open transaction and begin the next (exactly-once; the caller takes no record meanwhile).
    pub async fn on_tick<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K) -> Result<(), PipelineError> {
        match self {
            Delivery::AtLeastOnce(a) => {
                commit(consumer, &a.ledger, &a.metrics, Which::Moved, CommitMode::Async);
                Ok(())
            }
            Delivery::ExactlyOnce(t) => t.on_tick(consumer).await,
        }
    }

    /// Partitions are being revoked (on the thread polling the consumer): their in-flight events
    /// get the drain bound, what they answered is committed, then they are forgotten — so the
    /// new owner re-delivers only what this worker did not finish.
    pub fn on_revoke<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K, revoked: &[Tp]) {
        match self {
            Delivery::AtLeastOnce(a) => {
                let left = blocking(|| a.ledger.drain_blocking(Some(revoked), a.drain_bound));
                if left > 0 {
                    tracing::warn!(in_flight = left, "drain bound reached on revoke; unfinished events will be re-delivered");
                }
                // A lost assignment (the session timed out, e.g. while the broker was away) may
                // already be another member's: committing for it could only be refused — and
                // with static membership librdkafka takes that refusal as fatal.
                if consumer.assignment_lost() {
                    tracing::warn!(partitions = revoked.len(), "assignment lost: not committing for it; unfinished events will be re-delivered");
                } else {
                    // Off the runtime: with the coordinator gone it waits up to the session timeout.
                    blocking(|| commit(consumer, &a.ledger, &a.metrics, Which::Only(revoked), CommitMode::Sync));
                }
                a.ledger.forget(revoked);
            }
            Delivery::ExactlyOnce(t) => t.on_revoke(consumer, revoked),
        }
    }

    /// The worker stops: in-flight events get the drain bound, then the last commit. Returns how
    /// many events were left unfinished (they will be re-delivered).
    pub async fn on_shutdown<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K) -> Result<usize, PipelineError> {
        match self {
            Delivery::AtLeastOnce(a) => {
                let abandoned = a.ledger.drain(None, a.drain_bound).await;
                blocking(|| commit(consumer, &a.ledger, &a.metrics, Which::All, CommitMode::Sync));
                a.sink.flush(Duration::from_secs(1));
                Ok(abandoned)
            }
            Delivery::ExactlyOnce(t) => t.on_shutdown(consumer).await,
        }
    }

    /// A stop decided where it could not be returned (the rebalance callback).
    pub fn take_fatal(&self) -> Option<PipelineError> {
        match self {
            Delivery::AtLeastOnce(_) => None,
            Delivery::ExactlyOnce(t) => t.take_fatal(),
        }
    }
}

/// At-least-once: commits the ledger's offsets (`which`) and marks them committed. The one
/// place at-least-once commits. A failed commit is retried by the next one (the watermark has
/// not been marked committed); a failure on revoke means re-delivery of what was answered.
fn commit<C: ConsumerContext, K: Consumer<C>>(consumer: &K, ledger: &Ledger, metrics: &Metrics, which: Which<'_>, mode: CommitMode) {
    let offsets = ledger.offsets(which);
    if offsets.count() == 0 {
        return;
    }
    match consumer.commit(&offsets, mode) {
        Ok(()) => {
            metrics.offsets_committed.inc();
            ledger.committed(&offsets);
        }
        Err(e) => tracing::warn!(error = %e, ?mode, "offset commit failed; the next commit carries these offsets again"),
    }
}
