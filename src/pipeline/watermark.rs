//! Per-partition commit watermarks: an offset is committed only when every event before it has
//! been acknowledged, so a crash never skips an unfinished event (at-least-once).
//!
//! Exactly-once uses the same bookkeeping per transaction: each event carries the epoch of the
//! transaction it was taken in, acknowledgements from an earlier (aborted) epoch are ignored, and
//! an abort rewinds every partition to where the last committed transaction left it.

use std::collections::{BTreeSet, HashMap};

/// Topic-partition key.
pub type Tp = (String, i32);

#[derive(Debug, Default)]
struct PartitionState {
    /// Offsets read and not yet acknowledged.
    pending: BTreeSet<i64>,
    /// One past the highest offset read so far.
    next: Option<i64>,
    /// Last offset committed (the next offset to read, Kafka convention).
    committed: Option<i64>,
    /// First offset read since the partition was assigned (or last rewound): the group's
    /// committed position then, as far as this consumer can tell.
    first: Option<i64>,
}

impl PartitionState {
    /// The offset that is safe to commit: the lowest unfinished offset, or one past everything read.
    fn watermark(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }
}

#[derive(Debug, Default)]
pub struct Watermarks {
    partitions: HashMap<Tp, PartitionState>,
    /// Acknowledgements count only from events taken in this epoch (always 0 at-least-once).
    epoch: u64,
}

impl Watermarks {
    /// An event was read; it must be acknowledged before the watermark can pass it.
    pub fn started(&mut self, tp: &Tp, offset: i64) {
        let state = self.partitions.entry(tp.clone()).or_default();
        state.pending.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
        state.first.get_or_insert(offset);
    }

    /// The broker acknowledged the event's verdict or DLQ record. Unknown offsets (a partition
    /// revoked meanwhile) and events of another epoch (a rewound transaction's) are ignored.
    pub fn acknowledged(&mut self, epoch: u64, tp: &Tp, offset: i64) {
        if epoch != self.epoch {
            return;
        }
        if let Some(state) = self.partitions.get_mut(tp) {
            state.pending.remove(&offset);
        }
    }

    /// Events taken from now on belong to this epoch.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// Forgets everything read since the last commit, except in `leaving` partitions (forgotten
    /// entirely), and returns where each remaining partition must be re-read from. Until the
    /// next `set_epoch`, no acknowledgement counts.
    pub fn rewind(&mut self, leaving: &[Tp]) -> Vec<(Tp, i64)> {
        self.epoch = 0;
        self.partitions.retain(|tp, _| !leaving.contains(tp));
        let mut points = Vec::new();
        for (tp, state) in &mut self.partitions {
            if let Some(point) = state.committed.or(state.first) {
                points.push((tp.clone(), point));
            }
            state.pending.clear();
            state.next = state.committed;
            state.first = None;
        }
        points
    }

    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.pending.len()).sum()
    }

    pub fn in_flight_for(&self, tp: &Tp) -> usize {
        self.partitions.get(tp).map_or(0, |s| s.pending.len())
    }

    /// Offsets to commit now: partitions whose watermark moved since the last commit.
    pub fn to_commit(&self) -> Vec<(Tp, i64)> {
        self.partitions
            .iter()
            .filter_map(|(tp, s)| s.watermark().filter(|w| Some(*w) != s.committed).map(|w| (tp.clone(), w)))
            .collect()
    }

    /// Every partition's watermark, whether or not it moved (final commit on shutdown).
    pub fn all(&self) -> Vec<(Tp, i64)> {
        self.partitions.iter().filter_map(|(tp, s)| s.watermark().map(|w| (tp.clone(), w))).collect()
    }

    /// Watermarks of the given partitions, whether or not they moved.
    pub fn watermarks_of(&self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        tps.iter().filter_map(|tp| self.partitions.get(tp)?.watermark().map(|w| (tp.clone(), w))).collect()
    }

    pub fn committed(&mut self, tp: &Tp, offset: i64) {
        if let Some(state) = self.partitions.get_mut(tp) {
            state.committed = Some(offset);
        }
    }

    /// Forget a partition (revoked): late acknowledgements for it are ignored.
    pub fn forget(&mut self, tp: &Tp) {
        self.partitions.remove(tp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp() -> Tp {
        ("t".into(), 0)
    }

    #[test]
    fn never_passes_an_unfinished_event() {
        let mut w = Watermarks::default();
        for o in 10..15 {
            w.started(&tp(), o);
        }
        w.acknowledged(0, &tp(), 10);
        w.acknowledged(0, &tp(), 12);
        w.acknowledged(0, &tp(), 13);
        assert_eq!(w.to_commit(), vec![(tp(), 11)]);
        w.acknowledged(0, &tp(), 11);
        assert_eq!(w.to_commit(), vec![(tp(), 14)]);
        w.acknowledged(0, &tp(), 14);
        assert_eq!(w.to_commit(), vec![(tp(), 15)]);
        w.committed(&tp(), 15);
        assert!(w.to_commit().is_empty());
    }

    #[test]
    fn rewind_returns_to_the_last_commit_and_ignores_the_old_epoch() {
        let other: Tp = ("t".into(), 1);
        let mut w = Watermarks::default();
        w.set_epoch(1);
        for o in 5..10 {
            w.started(&tp(), o);
        }
        w.started(&other, 40);
        for o in 5..10 {
            w.acknowledged(1, &tp(), o);
        }
        w.acknowledged(1, &other, 40);
        assert_eq!(sorted(w.to_commit()), vec![(tp(), 10), (other.clone(), 41)]);
        w.committed(&tp(), 10);
        w.committed(&other, 41);
        w.set_epoch(2);
        for o in 10..13 {
            w.started(&tp(), o);
        }
        w.acknowledged(2, &tp(), 10);
        // Abort: partition 0 goes back to its last commit, not to the offsets of this epoch.
        assert_eq!(sorted(w.rewind(&[])), vec![(tp(), 10), (other.clone(), 41)]);
        assert_eq!(w.in_flight(), 0);
        assert!(w.to_commit().is_empty(), "nothing new since the last commit");
        w.set_epoch(3);
        w.started(&tp(), 10);
        // A late acknowledgement from the aborted epoch must not finish the re-read event.
        w.acknowledged(2, &tp(), 10);
        assert_eq!(w.in_flight(), 1);
        w.acknowledged(3, &tp(), 10);
        assert_eq!(w.to_commit(), vec![(tp(), 11)]);
    }

    #[test]
    fn rewind_without_a_commit_goes_back_to_the_first_offset_read() {
        let mut w = Watermarks::default();
        w.set_epoch(1);
        w.started(&tp(), 7);
        w.started(&tp(), 9);
        w.started(&("t".into(), 2), 3);
        assert_eq!(w.rewind(&[("t".into(), 2)]), vec![(tp(), 7)]);
        assert_eq!(w.in_flight_for(&("t".into(), 2)), 0);
    }

    fn sorted(mut v: Vec<(Tp, i64)>) -> Vec<(Tp, i64)> {
        v.sort();
        v
    }

    proptest! {
        /// Whatever the order of acknowledgements, the watermark is exactly the lowest
        /// unacknowledged offset (or one past the last read).
        #[test]
        fn watermark_is_lowest_unacked(acks in proptest::collection::vec(0usize..50, 0..50)) {
            let mut w = Watermarks::default();
            for o in 0..50 { w.started(&tp(), o); }
            let mut done = std::collections::BTreeSet::new();
            for a in acks { w.acknowledged(0, &tp(), a as i64); done.insert(a as i64); }
            let expect = (0..50).find(|o| !done.contains(o)).unwrap_or(50);
            prop_assert_eq!(w.watermarks_of(&[tp()]), vec![(tp(), expect)]);
        }
    }
}
