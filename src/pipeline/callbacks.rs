//! What librdkafka calls back into while the worker polls its consumer: rebalances and
//! statistics. Both run on the thread that polls, so they are served whenever the worker
//! receives — and, while it takes no records for lack of room, once the stall has lasted long
//! enough for the worker to pause its partitions and poll again (see [`super`]).
//!
//! On revoke the delivery mode decides what happens to the partitions' in-flight events
//! ([`Delivery::on_revoke`]); on assign, partitions that arrive while the worker is paused are
//! paused too, so they deliver nothing the worker has no room for.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use super::delivery::Delivery;
use super::watermark::Tp;
use crate::kafka::watchdog::{group_stalled, BrokerWatch};
use crate::metrics::{Metrics, Readiness};

pub struct ConsumerCallbacks {
    pub delivery: Arc<Delivery>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub brokers: BrokerWatch,
    /// Set while the worker has paused its assignment for lack of room.
    pub paused: Arc<AtomicBool>,
    /// Partitions assigned, counted from the rebalance events (readiness follows it).
    pub assigned: AtomicUsize,
}

impl ClientContext for ConsumerCallbacks {
    fn stats(&self, statistics: Statistics) {
        self.brokers.observe(&statistics);
        let stalled = group_stalled(&statistics);
        if stalled && !self.readiness.group_stalled.load(Ordering::Acquire) {
            tracing::error!("consumer group not joined for over two minutes; /healthz now fails");
        }
        self.readiness.group_stalled.store(stalled, Ordering::Release);
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

impl ConsumerContext for ConsumerCallbacks {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        let tps: Vec<Tp> = revoked.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        self.delivery.on_revoke(consumer, &tps);
        for tp in &tps {
            self.metrics.consumer_lag.remove_label_values(&[&tp.0, &tp.1.to_string()]).ok();
        }
        tracing::info!(partitions = tps.len(), "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Counted from the event, not asked of librdkafka: `assignment()` (and the rebalance
        // protocol) wait on the group's thread, which never answers while the consumer closes (a
        // fenced static member's consumer hung in its drop that way, past SIGTERM). A revoke names
        // what it takes away (all of it, eager); a rebalance error leaves nothing assigned.
        let assigned = match rebalance {
            Rebalance::Assign(tpl) => self.assigned.fetch_add(tpl.count(), Ordering::AcqRel) + tpl.count(),
            Rebalance::Revoke(tpl) => {
                let after = self.assigned.load(Ordering::Acquire).saturating_sub(tpl.count());
                self.assigned.store(after, Ordering::Release);
                after
            }
            Rebalance::Error(_) => {
                self.assigned.store(0, Ordering::Release);
                0
            }
        };
        self.readiness.assigned.store(assigned > 0, Ordering::Release);
        if let Rebalance::Assign(tpl) = rebalance {
            if self.paused.load(Ordering::Acquire) && tpl.count() > 0 {
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(error = %e, "pausing newly assigned partitions failed");
                }
            }
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}
