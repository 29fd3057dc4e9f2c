//! The in-flight ledger: the one owner of what the worker has taken and not yet answered.
//!
//! It holds together what must never disagree: the bound (`worker.max_in_flight` permits), the
//! per-partition watermarks that say what is safe to commit, the `perisai_events_in_flight`
//! gauge, and the wake-up for whoever waits for events to finish (a drain).
//!
//! A record is taken with a [`Permit`] acquired *before* it is received, and becomes a
//! [`Ticket`]. [`Ticket::answered`] is the acknowledgement: the offset may be committed. A ticket
//! dropped unanswered (its task aborted at shutdown) frees its permit but leaves its offset
//! pending, so the watermark never passes an event without a verdict.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::watermark::{Tp, Watermarks};

/// A free place in the bound, taken before a record is received.
#[derive(Debug)]
pub struct Permit(OwnedSemaphorePermit);

/// One taken record: answer it, or drop it to leave it pending (re-delivered later).
#[derive(Debug)]
pub struct Ticket {
    ledger: Arc<Ledger>,
    tp: Tp,
    offset: i64,
    epoch: u64,
    _permit: OwnedSemaphorePermit,
}

impl Ticket {
    /// The transaction epoch the record was taken in (0 at-least-once).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The record's verdict or DLQ record was acknowledged (or, exactly-once, its transaction
    /// ended): the watermark may pass it.
    pub fn answered(self) {
        let in_flight = {
            let mut marks = self.ledger.marks();
            marks.acknowledged(self.epoch, &self.tp, self.offset);
            marks.in_flight()
        };
        self.ledger.gauge.set(in_flight as i64);
        self.ledger.changed.notify_waiters();
    }
}

/// Which partitions' watermarks to commit.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    /// Those whose watermark moved since their last commit.
    Moved,
    /// Every partition, moved or not (a last commit: an earlier async commit may have failed).
    All,
    /// These partitions (revoked ones), moved or not.
    Only(&'a [Tp]),
}

#[derive(Debug)]
pub struct Ledger {
    permits: Arc<Semaphore>,
    bound: usize,
    watermarks: Mutex<Watermarks>,
    gauge: IntGauge,
    /// Notified whenever a ticket is answered or the bookkeeping is reset.
    changed: Notify,
}

impl Ledger {
    pub fn new(bound: usize, gauge: IntGauge) -> Arc<Self> {
        gauge.set(0);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(bound)),
            bound,
            watermarks: Mutex::new(Watermarks::default()),
            gauge,
            changed: Notify::new(),
        })
    }

    fn marks(&self) -> MutexGuard<'_, Watermarks> {
        // A panic while holding the lock cannot leave the plain maps half-updated in a way that
        // matters more than stopping would: keep going.
        self.watermarks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a free place in the bound.
    pub async fn permit(&self) -> Permit {
        Permit(self.permits.clone().acquire_owned().await.expect("the ledger's semaphore is never closed"))
    }

    /// A free place now, if there is one.
    pub fn try_permit(&self) -> Option<Permit> {
        self.permits.clone().try_acquire_owned().ok().map(Permit)
    }

    /// Places free in the bound.
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.permits.available_permits()
    }

    pub fn bound(&self) -> usize {
        self.bound
    }

    /// Records a received record as in flight in transaction `epoch` (0 at-least-once).
    pub fn take(self: &Arc<Self>, permit: Permit, topic: &str, partition: i32, offset: i64, epoch: u64) -> Ticket {
        let tp = (topic.to_string(), partition);
        let in_flight = {
            let mut marks = self.marks();
            marks.started(&tp, offset);
            marks.in_flight()
        };
        self.gauge.set(in_flight as i64);
        Ticket { ledger: self.clone(), tp, offset, epoch, _permit: permit.0 }
    }

    /// Events taken and not yet answered, in all partitions or in `tps`.
    pub fn in_flight(&self, tps: Option<&[Tp]>) -> usize {
        let marks = self.marks();
        match tps {
            None => marks.in_flight(),
            Some(tps) => tps.iter().map(|tp| marks.in_flight_for(tp)).sum(),
        }
    }

    /// Waits until nothing is in flight (in `tps`, or anywhere) or `bound` passes; returns how
    /// many events are still in flight.
    pub async fn drain(&self, tps: Option<&[Tp]>, bound: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Registered before the check, so an answer between the check and the wait wakes it.
            let changed = self.changed.notified();
            let left = self.in_flight(tps);
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.in_flight(tps);
            }
        }
    }

    /// [`Ledger::drain`] for a thread that must not return until done (the rebalance callback,
    /// which runs on the thread polling the consumer).
    pub fn drain_blocking(&self, tps: Option<&[Tp]>, bound: Duration) -> usize {
        let deadline = Instant::now() + bound;
        loop {
            let left = self.in_flight(tps);
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The offsets to commit, as a list for the client: each partition's next offset to read.
    pub fn offsets(&self, which: Which<'_>) -> TopicPartitionList {
        let marks = self.marks();
        let offsets = match which {
            Which::Moved => marks.to_commit(),
            Which::All => marks.all(),
            Which::Only(tps) => marks.watermarks_of(tps),
        };
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for ((topic, partition), offset) in &offsets {
            // Only fails for an invalid offset, which watermarks never hold.
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        tpl
    }

    /// These offsets are committed: the next `Which::Moved` leaves them out until they move.
    pub fn committed(&self, offsets: &TopicPartitionList) {
        let mut marks = self.marks();
        for e in offsets.elements() {
            if let Offset::Offset(offset) = e.offset() {
                marks.committed(&(e.topic().to_string(), e.partition()), offset);
            }
        }
    }

    /// Forgets revoked partitions: late answers for them are ignored.
    pub fn forget(&self, tps: &[Tp]) {
        let in_flight = {
            let mut marks = self.marks();
            for tp in tps {
                marks.forget(tp);
            }
            marks.in_flight()
        };
        self.gauge.set(in_flight as i64);
        self.changed.notify_waiters();
    }

    /// Exactly-once: records taken from now on belong to transaction `epoch`.
    pub fn set_epoch(&self, epoch: u64) {
        self.marks().set_epoch(epoch);
    }

    /// Exactly-once, after an abort: forgets everything taken since the last commit (and the
    /// `leaving` partitions entirely) and returns where each remaining partition must be re-read
    /// from. Answers of the aborted transaction no longer count.
    pub fn rewind(&self, leaving: &[Tp]) -> Vec<(Tp, i64)> {
        let points = self.marks().rewind(leaving);
        self.gauge.set(0);
        self.changed.notify_waiters();
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(bound: usize) -> Arc<Ledger> {
        Ledger::new(bound, IntGauge::new("in_flight", "test").unwrap())
    }

    fn offsets(l: &Ledger, which: Which<'_>) -> Vec<(String, i32, i64)> {
        let mut v: Vec<_> = l
            .offsets(which)
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition(), e.offset().to_raw().unwrap()))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn the_bound_is_hard_and_the_gauge_follows_the_tickets() {
        let l = ledger(2);
        let a = l.take(l.permit().await, "t", 0, 10, 0);
        let b = l.take(l.try_permit().unwrap(), "t", 0, 11, 0);
        assert!(l.try_permit().is_none(), "no third record without a permit");
        assert_eq!(l.gauge.get(), 2);
        b.answered();
        assert_eq!(l.gauge.get(), 1);
        assert_eq!(offsets(&l, Which::Moved), vec![("t".into(), 0, 10)], "10 is still unanswered");
        let c = l.take(l.try_permit().expect("b's place is free again"), "t", 0, 12, 0);
        a.answered();
        c.answered();
        assert_eq!(offsets(&l, Which::Moved), vec![("t".into(), 0, 13)]);
        assert_eq!((l.gauge.get(), l.free()), (0, 2));
    }

    #[tokio::test]
    async fn a_ticket_dropped_unanswered_frees_its_place_but_is_never_committed_past() {
        let l = ledger(1);
        let t = l.take(l.permit().await, "t", 3, 5, 0);
        drop(t);
        assert_eq!(l.free(), 1);
        assert_eq!(l.in_flight(None), 1);
        assert_eq!(offsets(&l, Which::All), vec![("t".into(), 3, 5)]);
    }

    #[tokio::test]
    async fn drain_waits_for_the_named_partitions_only_and_respects_its_bound() {
        let l = ledger(4);
        let slow = l.take(l.permit().await, "t", 0, 1, 0);
        let quick = l.take(l.permit().await, "t", 1, 1, 0);
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.drain(Some(&[("t".into(), 1)]), Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        quick.answered();
        assert_eq!(waiter.await.unwrap(), 0, "partition 1 drained while partition 0 still works");
        let started = Instant::now();
        assert_eq!(l.drain(None, Duration::from_millis(50)).await, 1);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(l.drain_blocking(None, Duration::from_millis(10)), 1);
        slow.answered();
        assert_eq!(l.drain(None, Duration::from_secs(5)).await, 0);
    }

    #[tokio::test]
    async fn committed_offsets_are_not_committed_again_until_they_move() {
        let l = ledger(4);
        l.take(l.permit().await, "t", 0, 7, 0).answered();
        let tpl = l.offsets(Which::Moved);
        l.committed(&tpl);
        assert!(offsets(&l, Which::Moved).is_empty());
        assert_eq!(offsets(&l, Which::All), vec![("t".into(), 0, 8)]);
        assert_eq!(offsets(&l, Which::Only(&[("t".into(), 0)])), vec![("t".into(), 0, 8)]);
        assert!(offsets(&l, Which::Only(&[("t".into(), 9)])).is_empty());
    }

    #[tokio::test]
    async fn forgotten_partitions_and_old_epochs_do_not_count() {
        let l = ledger(4);
        l.set_epoch(1);
        let old = l.take(l.permit().await, "t", 0, 1, 1);
        let gone = l.take(l.permit().await, "t", 1, 1, 1);
        l.forget(&[("t".into(), 1)]);
        gone.answered();
        assert_eq!(l.in_flight(None), 1);
        assert_eq!(l.rewind(&[]), vec![(("t".into(), 0), 1)]);
        l.set_epoch(2);
        let again = l.take(l.permit().await, "t", 0, 1, 2);
        old.answered();
        assert_eq!(l.in_flight(None), 1, "the aborted transaction's answer does not finish the re-read event");
        again.answered();
        assert_eq!(l.in_flight(None), 0);
    }
}
