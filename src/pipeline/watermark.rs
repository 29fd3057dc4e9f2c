//! Per-partition commit watermarks: an offset is committed only when every event before it has
//! been acknowledged, so a crash never skips an unfinished event (at-least-once).

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
}

impl Watermarks {
    /// An event was read; it must be acknowledged before the watermark can pass it.
    pub fn started(&mut self, tp: &Tp, offset: i64) {
        let state = self.partitions.entry(tp.clone()).or_default();
        state.pending.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The broker acknowledged the event's verdict or DLQ record. Unknown offsets (a partition
    /// revoked meanwhile) are ignored.
    pub fn finished(&mut self, tp: &Tp, offset: i64) {
        if let Some(state) = self.partitions.get_mut(tp) {
            state.pending.remove(&offset);
        }
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
        w.finished(&tp(), 10);
        w.finished(&tp(), 12);
        w.finished(&tp(), 13);
        assert_eq!(w.to_commit(), vec![(tp(), 11)]);
        w.finished(&tp(), 11);
        assert_eq!(w.to_commit(), vec![(tp(), 14)]);
        w.finished(&tp(), 14);
        assert_eq!(w.to_commit(), vec![(tp(), 15)]);
        w.committed(&tp(), 15);
        assert!(w.to_commit().is_empty());
    }

    proptest! {
        /// Whatever the order of acknowledgements, the watermark is exactly the lowest
        /// unacknowledged offset (or one past the last read).
        #[test]
        fn watermark_is_lowest_unacked(acks in proptest::collection::vec(0usize..50, 0..50)) {
            let mut w = Watermarks::default();
            for o in 0..50 { w.started(&tp(), o); }
            let mut done = std::collections::BTreeSet::new();
            for a in acks { w.finished(&tp(), a as i64); done.insert(a as i64); }
            let expect = (0..50).find(|o| !done.contains(o)).unwrap_or(50);
            prop_assert_eq!(w.watermarks_of(&[tp()]), vec![(tp(), expect)]);
        }
    }
}
