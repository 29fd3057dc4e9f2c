//! The consumer's context: what happens on rebalance and on librdkafka statistics.
//!
//! On revoke, the partitions' in-flight events get up to the drain bound to finish, then their
//! watermarks are committed synchronously before the partitions move to another worker — so the
//! new owner re-delivers only what this worker did not finish.
//!
//! Exactly-once: a transaction spans every partition, so on revoke *all* in-flight events get the
//! drain bound, then the open transaction is committed (offsets included) before the partitions
//! move; the new owner starts exactly where it ended. Committing rather than aborting keeps the
//! work already done and lets the hand-over re-screen nothing. If the drain bound passes or the
//! commit fails, the transaction is aborted instead: the new owner re-screens from the last
//! committed offsets, and the partitions this worker keeps (cooperative rebalancing) are rewound.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::kafka::watchdog::{group_stalled, BrokerWatch};
use crate::metrics::{Metrics, Readiness};
use super::transaction::{blocking, Then, Transactions};
use super::watermark::{Tp, Watermarks};

pub struct WorkerContext {
    pub watermarks: Arc<Mutex<Watermarks>>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub drain_timeout: Duration,
    pub brokers: BrokerWatch,
    /// Present in exactly-once mode.
    pub transactions: Option<Arc<Transactions>>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        self.brokers.observe(&statistics);
        let stalled = group_stalled(&statistics);
        if stalled && !self.readiness.group_stalled.load(std::sync::atomic::Ordering::Acquire) {
            tracing::error!("consumer group not joined for over two minutes; /healthz now fails");
        }
        self.readiness.group_stalled.store(stalled, std::sync::atomic::Ordering::Release);
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // librdkafka reports -1 for partitions this consumer does not fetch.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag.with_label_values(&[topic, &partition.to_string()]).set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        let tps: Vec<Tp> = revoked.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        if let Some(transactions) = &self.transactions {
            // The callback runs on the thread polling the consumer; let the runtime move other
            // tasks (the ones finishing these events) off it while we wait.
            blocking(|| {
                let all = self.watermarks.lock().expect("watermarks lock").partitions();
                // A doomed transaction's records are held until the abort purges them: no wait.
                let drained = transactions.has_failed() || self.drain(&all);
                if let Err(e) = transactions.finish(consumer, drained, &tps, Then::Continue) {
                    transactions.keep_fatal(e);
                }
            });
            self.forget(&tps);
            return;
        }
        blocking(|| self.drain(&tps));
        let mut tpl = TopicPartitionList::new();
        let offsets = self.watermarks.lock().expect("watermarks lock").watermarks_of(&tps);
        for ((topic, partition), offset) in &offsets {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        if tpl.count() > 0 {
            // Off the runtime too: with the coordinator gone it waits up to the session timeout.
            match blocking(|| consumer.commit(&tpl, CommitMode::Sync)) {
                Ok(()) => self.metrics.offsets_committed.inc(),
                Err(e) => tracing::warn!(error = %e, "commit on revoke failed; uncommitted events will be re-delivered"),
            }
        }
        self.forget(&tps);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.readiness.assigned.store(assigned > 0, std::sync::atomic::Ordering::Release);
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

impl WorkerContext {
    fn forget(&self, tps: &[Tp]) {
        let mut w = self.watermarks.lock().expect("watermarks lock");
        for tp in tps {
            w.forget(tp);
            self.metrics.consumer_lag.remove_label_values(&[&tp.0, &tp.1.to_string()]).ok();
        }
        tracing::info!(partitions = tps.len(), "partitions revoked");
    }

    /// Waits until the partitions have no event in flight, or the drain bound passes; true when
    /// nothing is left in flight.
    fn drain(&self, tps: &[Tp]) -> bool {
        let deadline = Instant::now() + self.drain_timeout;
        loop {
            let pending: usize = {
                let w = self.watermarks.lock().expect("watermarks lock");
                tps.iter().map(|tp| w.in_flight_for(tp)).sum()
            };
            if pending == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(pending, "drain bound reached on revoke; unfinished events will be re-delivered");
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
