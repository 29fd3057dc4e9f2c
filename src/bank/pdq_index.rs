//! In-memory PDQ index: exact Hamming range search over many hashes, live add/remove.
//!
//! OWNER: PDQ work (issue 3). This file is a stub fixing the interface; bodies to be written.

use crate::hash::pdq::PdqHash;

#[derive(Debug, Default)]
pub struct PdqIndex {
    entries: Vec<(u32, PdqHash)>,
}

impl PdqIndex {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, id: u32, hash: PdqHash) {
        self.entries.push((id, hash));
    }
    pub fn remove(&mut self, id: u32) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(i, _)| *i != id);
        before != self.entries.len()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Every (id, distance) with Hamming distance ≤ `max_distance`, any order.
    pub fn query(&self, hash: &PdqHash, max_distance: u32) -> Vec<(u32, u32)> {
        let _ = (hash, max_distance);
        Vec::new()
    }
}
