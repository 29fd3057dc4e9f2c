//! In-memory PDQ index: exact Hamming range search over many hashes, live add/remove.
//!
//! Multi-index hashing (Norouzi et al.): the 256 bits are cut into 11 substrings of 23–24 bits,
//! each with a table listing the entries by that substring's value. Two hashes within distance
//! `r` have, by pigeonhole, some substring within `⌊r/11⌋` (2 at the default threshold 31); so a
//! query visits, in each table, the substring values within that distance of its own, and checks
//! the full distance of the entries found there. The result is exactly the brute-force set.
//!
//! Why 11 tables of ~23 bits rather than the textbook 16 of 16: at 10M entries 16-bit keys
//! leave ~150 entries per value, and the ~41 000 candidates a query must verify are random
//! memory reads; 23-bit keys at radius 2 leave ~3 600 candidates for a similar number of probes,
//! and 11 tables take less memory than 16.
//!
//! A table is addressed by the top 18 bits of its substring; a bucket holds 32-bit words packing
//! the remaining 5–6 substring bits with the entry's slot, so the low bits are filtered while
//! scanning a bucket sequentially, before any hash is read.
//!
//! Memory per entry: the hash (32 bytes), its id (4), one word in each of the 11 tables (44,
//! plus bucket spare capacity kept near 6%) and the id → slot map (4 per id up to the largest:
//! ids are the bank's dense entry numbers).
//!
//! A bank loaded all at once (start-up) defers the tables: entries go in unindexed, then
//! [`PdqIndex::build_index`] builds each table in one counting pass, with exact bucket sizes —
//! far faster than inserting 10M entries one by one. Live updates then add and remove in place.
//!
//! A query's cost is memory latency: ~1 900 buckets and ~2 000 candidate hashes at random
//! addresses. It works in phases — prefetch every bucket header, then every bucket's contents,
//! scan them, then prefetch every candidate's hash and check it — so that hundreds of cache
//! misses are in flight together instead of a few.

use crate::hash::pdq::PdqHash;

/// (first bit, length) of each substring: 3 of 24 bits and 8 of 23 bits make 256.
const TABLES: usize = 11;
const LAYOUT: [(usize, usize); TABLES] = {
    let mut l = [(0usize, 0usize); TABLES];
    let mut start = 0;
    let mut t = 0;
    while t < TABLES {
        let len = if t < 3 { 24 } else { 23 };
        l[t] = (start, len);
        start += len;
        t += 1;
    }
    l
};
const _: () = assert!(LAYOUT[TABLES - 1].0 + LAYOUT[TABLES - 1].1 == 256);

/// Bits of a substring that select its bucket.
const PREFIX_BITS: usize = 18;
const BUCKETS: usize = 1 << PREFIX_BITS;
/// Bucket words: the substring's low bits above the slot number.
const SLOT_BITS: u32 = 26;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// Most entries an index holds (slots are 26-bit).
pub const CAPACITY: usize = 1 << SLOT_BITS;
/// Ids index a flat id → slot map, so they must stay below this (the map is then at most 512 MiB;
/// banks number their entries densely from 0).
pub const ID_LIMIT: u32 = 1 << 27;
const NO_SLOT: u32 = u32::MAX;

/// A hash as four words, aligned so that reading one touches a single cache line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(32))]
struct Words([u64; 4]);

impl Words {
    #[inline(always)]
    fn distance(&self, other: &Words) -> u32 {
        (self.0[0] ^ other.0[0]).count_ones()
            + (self.0[1] ^ other.0[1]).count_ones()
            + (self.0[2] ^ other.0[2]).count_ones()
            + (self.0[3] ^ other.0[3]).count_ones()
    }

    /// Substring `t` of the layout.
    #[inline(always)]
    fn substring(&self, t: usize) -> u32 {
        let (start, len) = LAYOUT[t];
        let (wi, off) = (start / 64, start % 64);
        let mut v = self.0[wi] >> off;
        if off + len > 64 {
            v |= self.0[wi + 1] << (64 - off);
        }
        (v & ((1u64 << len) - 1)) as u32
    }
}

/// The hashes by slot, in fixed-size chunks: growing never copies (a `Vec` of 32-byte-aligned
/// values cannot be grown in place, so at 10M entries its last doubling held 270 MB twice).
#[derive(Debug, Default)]
struct Slots {
    chunks: Vec<Box<[Words]>>,
    len: usize,
}

const CHUNK_BITS: u32 = 16;
const CHUNK: usize = 1 << CHUNK_BITS;

impl Slots {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    #[inline(always)]
    fn get(&self, slot: u32) -> &Words {
        &self.chunks[(slot >> CHUNK_BITS) as usize][slot as usize & (CHUNK - 1)]
    }

    fn push(&mut self, w: Words) {
        if self.len == self.capacity() {
            self.chunks.push(vec![Words([0; 4]); CHUNK].into_boxed_slice());
        }
        let slot = self.len as u32;
        self.len += 1;
        self.chunks[(slot >> CHUNK_BITS) as usize][slot as usize & (CHUNK - 1)] = w;
    }

    /// Moves the last hash into `slot` and drops the last; frees a chunk left empty.
    fn swap_remove(&mut self, slot: u32) {
        let last = (self.len - 1) as u32;
        let moved = *self.get(last);
        self.chunks[(slot >> CHUNK_BITS) as usize][slot as usize & (CHUNK - 1)] = moved;
        self.len -= 1;
        if self.capacity() - self.len > CHUNK {
            self.chunks.pop();
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Words> {
        self.chunks.iter().flat_map(|c| c.iter()).take(self.len)
    }
}

#[inline(always)]
fn split(t: usize, sub: u32) -> (usize, u32) {
    let low_bits = LAYOUT[t].1 - PREFIX_BITS;
    ((sub >> low_bits) as usize, sub & ((1 << low_bits) - 1))
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the PDQ index is full ({CAPACITY} entries)")]
    Full,
    #[error("PDQ index id {0} is not below the limit {ID_LIMIT}")]
    IdTooLarge(u32),
}

#[derive(Debug)]
pub struct PdqIndex {
    /// Entry slots: the hash and id of slot `s` are `hashes[s]`, `ids[s]`.
    hashes: Slots,
    ids: Vec<u32>,
    /// `slot_of[id]`, or `NO_SLOT`. A flat map rather than a hash map: a third of the memory at
    /// 10M entries, and growing it never holds two copies (large reallocations are remapped).
    slot_of: Vec<u32>,
    /// `tables[t][prefix]`: words `low << SLOT_BITS | slot` of the entries whose substring `t`
    /// has that prefix.
    tables: Vec<Vec<Vec<u32>>>,
    /// False while a bulk load defers the tables (queries then scan every hash).
    indexed: bool,
}

impl Default for PdqIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl PdqIndex {
    pub fn new() -> Self {
        PdqIndex {
            hashes: Slots::default(),
            ids: Vec::new(),
            slot_of: Vec::new(),
            tables: (0..TABLES).map(|_| vec![Vec::new(); BUCKETS]).collect(),
            indexed: true,
        }
    }

    /// Stops maintaining the tables until [`PdqIndex::build_index`]: for loading many entries at once.
    pub fn defer_index(&mut self) {
        if self.indexed {
            for bucket in self.tables.iter_mut().flatten() {
                *bucket = Vec::new();
            }
            self.indexed = false;
        }
    }

    /// Builds every table from the hashes in one counting pass each (tables in parallel, one
    /// per core), with buckets sized exactly. A no-op when the tables are maintained already.
    pub fn build_index(&mut self) {
        if self.indexed {
            return;
        }
        let hashes = &self.hashes;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, TABLES);
        let mut tables: Vec<(usize, &mut Vec<Vec<u32>>)> = self.tables.iter_mut().enumerate().collect();
        std::thread::scope(|scope| {
            for group in tables.chunks_mut(TABLES.div_ceil(threads)) {
                scope.spawn(move || {
                    for (t, table) in group.iter_mut() {
                        build_table(*t, table, hashes);
                    }
                });
            }
        });
        self.indexed = true;
    }

    /// The id holding exactly this hash, if any (a query at distance 0: 11 buckets).
    pub fn find(&self, hash: &PdqHash) -> Option<u32> {
        self.query(hash, 0).first().map(|&(id, _)| id)
    }

    /// Adds `hash` under `id`; an id already present is replaced. An index already holding
    /// [`CAPACITY`] entries ignores new ids; [`PdqIndex::try_insert`] reports it.
    pub fn insert(&mut self, id: u32, hash: PdqHash) {
        let _ = self.try_insert(id, hash);
    }

    pub fn try_insert(&mut self, id: u32, hash: PdqHash) -> Result<(), IndexError> {
        if id >= ID_LIMIT {
            return Err(IndexError::IdTooLarge(id));
        }
        self.remove(id);
        if self.hashes.len() >= CAPACITY {
            return Err(IndexError::Full);
        }
        let slot = self.hashes.len() as u32;
        let w = Words(hash.words());
        if self.indexed {
            for (t, table) in self.tables.iter_mut().enumerate() {
                let (prefix, low) = split(t, w.substring(t));
                push_compact(&mut table[prefix], low << SLOT_BITS | slot);
            }
        }
        self.hashes.push(w);
        self.ids.push(id);
        if self.slot_of.len() <= id as usize {
            self.slot_of.resize(id as usize + 1, NO_SLOT);
        }
        self.slot_of[id as usize] = slot;
        Ok(())
    }

    /// Removes the entry with this id; false when there was none.
    pub fn remove(&mut self, id: u32) -> bool {
        let Some(slot) = self.slot_of.get_mut(id as usize).map(|s| std::mem::replace(s, NO_SLOT)) else {
            return false;
        };
        if slot == NO_SLOT {
            return false;
        }
        let last = (self.hashes.len() - 1) as u32;
        let w = *self.hashes.get(slot);
        for (t, table) in self.tables.iter_mut().enumerate().filter(|_| self.indexed) {
            let bucket = &mut table[split(t, w.substring(t)).0];
            if let Some(pos) = bucket.iter().position(|&e| e & SLOT_MASK == slot) {
                bucket.swap_remove(pos);
            }
            shrink_compact(bucket);
        }
        if slot != last {
            // The last slot moves into the hole.
            let moved = *self.hashes.get(last);
            for (t, table) in self.tables.iter_mut().enumerate().filter(|_| self.indexed) {
                let bucket = &mut table[split(t, moved.substring(t)).0];
                if let Some(e) = bucket.iter_mut().find(|e| **e & SLOT_MASK == last) {
                    *e = (*e & !SLOT_MASK) | slot;
                }
            }
            let moved_id = self.ids[last as usize];
            self.slot_of[moved_id as usize] = slot;
        }
        self.hashes.swap_remove(slot);
        self.ids.swap_remove(slot as usize);
        true
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The hash held under `id`.
    pub fn hash_of(&self, id: u32) -> Option<PdqHash> {
        let slot = *self.slot_of.get(id as usize)?;
        (slot != NO_SLOT).then(|| PdqHash::from_words(self.hashes.get(slot).0))
    }

    /// Every (id, hash), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, PdqHash)> + '_ {
        self.hashes.iter().zip(&self.ids).map(|(w, &id)| (id, PdqHash::from_words(w.0)))
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Every (id, distance) with Hamming distance ≤ `max_distance`, any order.
    pub fn query(&self, hash: &PdqHash, max_distance: u32) -> Vec<(u32, u32)> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has POPCNT.
            return unsafe { self.query_popcnt(hash, max_distance) };
        }
        self.query_impl(hash, max_distance)
    }

    /// The same code with the POPCNT instruction: the baseline x86-64 target counts bits with
    /// a dozen shifts and masks, and counting bits is most of what a query computes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    unsafe fn query_popcnt(&self, hash: &PdqHash, max_distance: u32) -> Vec<(u32, u32)> {
        self.query_impl(hash, max_distance)
    }

    #[inline(always)]
    fn query_impl(&self, hash: &PdqHash, max_distance: u32) -> Vec<(u32, u32)> {
        let q = Words(hash.words());
        let radius = max_distance / TABLES as u32;
        let mut out = Vec::new();
        if radius > 3 || !self.indexed {
            // From distance 44 on, the probed values cover a large part of the index: scan.
            // Without tables (a bulk load in progress) scanning is the only way.
            for (s, w) in self.hashes.iter().enumerate() {
                let d = w.distance(&q);
                if d <= max_distance {
                    out.push((self.ids[s], d));
                }
            }
            return out;
        }
        let mut subs = [0u32; TABLES];
        for (t, s) in subs.iter_mut().enumerate() {
            *s = q.substring(t);
        }
        // The buckets to scan: table, prefix, and how many of the radius's bit flips the prefix used.
        let mut visits: Vec<(u8, u32, u8)> = Vec::with_capacity(TABLES * 200);
        for (t, &sub) in subs.iter().enumerate() {
            let (qp, _) = split(t, sub);
            let qp = qp as u32;
            visits.push((t as u8, qp, 0));
            if radius >= 1 {
                for a in 0..PREFIX_BITS {
                    let pa = qp ^ (1 << a);
                    visits.push((t as u8, pa, 1));
                    if radius >= 2 {
                        for b in a + 1..PREFIX_BITS {
                            let pb = pa ^ (1 << b);
                            visits.push((t as u8, pb, 2));
                            if radius >= 3 {
                                for c in b + 1..PREFIX_BITS {
                                    visits.push((t as u8, pb ^ (1 << c), 3));
                                }
                            }
                        }
                    }
                }
            }
        }
        // Phase 1: every bucket header (random addresses in 6 MB tables).
        let headers: Vec<&Vec<u32>> = visits.iter().map(|v| &self.tables[v.0 as usize][v.1 as usize]).collect();
        for &h in &headers {
            prefetch(h as *const Vec<u32> as *const u8);
        }
        // Phase 2: every bucket's contents, one prefetch per cache line.
        let spans: Vec<&[u32]> = headers.iter().map(|h| h.as_slice()).collect();
        for span in &spans {
            for line in span.chunks(16) {
                prefetch(line.as_ptr() as *const u8);
            }
        }
        // Phase 3: keep the words whose low substring bits are within the remaining radius.
        let mut candidates: Vec<(u8, u32)> = Vec::new();
        for (&(t, _, used), span) in visits.iter().zip(&spans) {
            let ql = split(t as usize, subs[t as usize]).1;
            let budget = radius - u32::from(used);
            for &e in *span {
                if ((e >> SLOT_BITS) ^ ql).count_ones() <= budget {
                    candidates.push((t, e & SLOT_MASK));
                }
            }
        }
        // Phase 4: every candidate's hash, then the full distance.
        for &(_, slot) in &candidates {
            prefetch(self.hashes.get(slot) as *const Words as *const u8);
        }
        for &(t, slot) in &candidates {
            let w = self.hashes.get(slot);
            let d = w.distance(&q);
            // An entry near in several substrings is reported by the first table only.
            if d <= max_distance && (0..t as usize).all(|u| (w.substring(u) ^ subs[u]).count_ones() > radius) {
                out.push((self.ids[slot as usize], d));
            }
        }
        out
    }

    /// Bytes held by the index's own allocations (not counting allocator overhead).
    pub fn heap_bytes(&self) -> usize {
        let tables: usize = self
            .tables
            .iter()
            .map(|t| t.capacity() * std::mem::size_of::<Vec<u32>>() + t.iter().map(|b| b.capacity() * 4).sum::<usize>())
            .sum();
        self.hashes.capacity() * std::mem::size_of::<Words>()
            + self.ids.capacity() * 4
            + self.slot_of.capacity() * 4
            + tables
    }
}

#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// One table from scratch: count each bucket's entries, allocate it exactly, fill it in slot order.
fn build_table(t: usize, table: &mut [Vec<u32>], hashes: &Slots) {
    let mut counts = vec![0u32; BUCKETS];
    for w in hashes.iter() {
        counts[split(t, w.substring(t)).0] += 1;
    }
    for (bucket, &n) in table.iter_mut().zip(&counts) {
        *bucket = Vec::with_capacity(n as usize);
    }
    for (slot, w) in hashes.iter().enumerate() {
        let (prefix, low) = split(t, w.substring(t));
        table[prefix].push(low << SLOT_BITS | slot as u32);
    }
}

/// Push with growth by an eighth, so that spare capacity stays near 6% on average instead of
/// the 25–50% of doubling; still amortised O(1).
fn push_compact(bucket: &mut Vec<u32>, word: u32) {
    if bucket.len() == bucket.capacity() {
        bucket.reserve_exact(bucket.len() / 8 + 4);
    }
    bucket.push(word);
}

fn shrink_compact(bucket: &mut Vec<u32>) {
    if bucket.capacity() > 16 && bucket.len() < bucket.capacity() / 2 {
        bucket.shrink_to(bucket.len() + bucket.len() / 8 + 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute(entries: &[(u32, PdqHash)], q: &PdqHash, r: u32) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> =
            entries.iter().map(|(id, h)| (*id, h.distance(q))).filter(|&(_, d)| d <= r).collect();
        v.sort_unstable();
        v
    }

    fn flip(h: &PdqHash, bits: &[u8]) -> PdqHash {
        let mut b = h.0;
        for &k in bits {
            b[(k / 8) as usize] ^= 1 << (k % 8);
        }
        PdqHash(b)
    }

    fn sorted(mut v: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
        v.sort_unstable();
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random hashes plus planted neighbours at chosen distances around the queries,
        /// queried at thresholds on both sides of each substring radius, before and after
        /// removing entries (some of them planted matches).
        #[test]
        fn query_equals_brute_force(
            seeds in proptest::collection::vec(any::<[u8; 32]>(), 1..40),
            plants in proptest::collection::vec((0usize..40, proptest::collection::vec(any::<u8>(), 0..70)), 0..80),
            radii in proptest::collection::vec(prop_oneof![0u32..=50, Just(10), Just(11), Just(21), Just(22), Just(31), Just(32), Just(33), Just(43), Just(44), 44u32..=256], 1..6),
            removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let mut entries: Vec<(u32, PdqHash)> = Vec::new();
            let mut next_id = 1000u32;
            for s in &seeds {
                entries.push((next_id, PdqHash(*s)));
                next_id += 7;
            }
            for (base, bits) in &plants {
                let h = flip(&PdqHash(seeds[base % seeds.len()]), bits);
                entries.push((next_id, h));
                next_id += 7;
            }
            let mut index = PdqIndex::new();
            for (id, h) in &entries {
                index.insert(*id, *h);
            }
            prop_assert_eq!(index.len(), entries.len());
            let queries: Vec<PdqHash> = seeds.iter().map(|s| PdqHash(*s))
                .chain(plants.iter().take(5).map(|(b, bits)| flip(&PdqHash(seeds[b % seeds.len()]), &bits[..bits.len() / 2])))
                .collect();
            for q in &queries {
                for &r in &radii {
                    prop_assert_eq!(sorted(index.query(q, r)), brute(&entries, q, r));
                }
            }
            for ix in &removals {
                if entries.is_empty() { break; }
                let (id, _) = entries.remove(ix.index(entries.len()));
                prop_assert!(index.remove(id));
                prop_assert!(!index.remove(id));
            }
            prop_assert_eq!(index.len(), entries.len());
            for q in &queries {
                for &r in &radii {
                    prop_assert_eq!(sorted(index.query(q, r)), brute(&entries, q, r));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// A deferred load (inserts, replacements and removals without tables, then one build)
        /// answers exactly like brute force, and keeps doing so through live changes afterwards.
        #[test]
        fn bulk_build_equals_brute_force(
            seeds in proptest::collection::vec(any::<[u8; 32]>(), 1..30),
            plants in proptest::collection::vec((0usize..30, proptest::collection::vec(any::<u8>(), 0..40)), 0..60),
            removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            r in prop_oneof![0u32..=40, Just(31)],
        ) {
            let mut entries: Vec<(u32, PdqHash)> = seeds.iter().enumerate().map(|(i, s)| (i as u32 * 3, PdqHash(*s))).collect();
            for (k, (base, bits)) in plants.iter().enumerate() {
                entries.push((1000 + k as u32, flip(&PdqHash(seeds[base % seeds.len()]), bits)));
            }
            let mut index = PdqIndex::new();
            index.defer_index();
            for (id, h) in &entries {
                index.insert(*id, *h);
            }
            for ix in &removals {
                if entries.is_empty() { break; }
                let (id, _) = entries.remove(ix.index(entries.len()));
                prop_assert!(index.remove(id));
            }
            // Queries before the build scan, and are exact too.
            let q = PdqHash(seeds[0]);
            prop_assert_eq!(sorted(index.query(&q, r)), brute(&entries, &q, r));
            index.build_index();
            for (_, h) in entries.iter().take(10) {
                prop_assert_eq!(sorted(index.query(h, r)), brute(&entries, h, r));
                prop_assert!(index.find(h).is_some());
            }
            // Live changes after the build.
            let extra = flip(&q, &[1, 2, 3]);
            index.insert(5000, extra);
            entries.push((5000, extra));
            if let Some((id, _)) = entries.first().copied() {
                index.remove(id);
                entries.remove(0);
            }
            prop_assert_eq!(sorted(index.query(&q, r)), brute(&entries, &q, r));
        }
    }

    #[test]
    fn removes_across_a_chunk_boundary_keep_every_hash() {
        // Deterministic distinct hashes: entry i has its index in the first 4 bytes.
        let hash = |i: u32| {
            let mut b = [0x5au8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            b[31] = (i % 251) as u8;
            PdqHash(b)
        };
        let n = CHUNK as u32 + 10;
        let mut index = PdqIndex::new();
        for i in 0..n {
            index.insert(i, hash(i));
        }
        // Remove from both chunks, so slots move from the second chunk into the first and the
        // second chunk empties.
        for i in (0..20).chain(n - 15..n) {
            assert!(index.remove(i));
        }
        assert_eq!(index.len(), n as usize - 35);
        assert_eq!(index.hashes.chunks.len(), 1);
        for i in [20, 100, CHUNK as u32 - 100, n - 16] {
            assert_eq!(index.query(&hash(i), 0), vec![(i, 0)], "entry {i}");
        }
        for i in [0, 19, CHUNK as u32 - 1, n - 1] {
            assert!(index.query(&hash(i), 0).is_empty(), "removed entry {i}");
        }
    }

    #[test]
    fn ids_must_stay_below_the_limit() {
        let mut index = PdqIndex::new();
        assert!(matches!(index.try_insert(ID_LIMIT, PdqHash([1; 32])), Err(IndexError::IdTooLarge(_))));
        assert!(index.is_empty());
        // Sparse ids work; ids never inserted (below, between and above) are absent.
        assert!(index.try_insert(1000, PdqHash([1; 32])).is_ok());
        assert_eq!(index.query(&PdqHash([1; 32]), 0), vec![(1000, 0)]);
        assert!(!index.remove(ID_LIMIT));
        assert!(!index.remove(5));
        assert!(!index.remove(2000));
        assert!(index.remove(1000));
    }

    #[test]
    fn reinserting_an_id_replaces_its_hash() {
        let a = PdqHash([0x11; 32]);
        let b = PdqHash([0xee; 32]);
        let mut index = PdqIndex::new();
        index.insert(7, a);
        index.insert(7, b);
        assert_eq!(index.len(), 1);
        assert!(index.query(&a, 31).is_empty());
        assert_eq!(index.query(&b, 0), vec![(7, 0)]);
        assert!(index.remove(7));
        assert!(index.is_empty());
        assert!(index.query(&b, 256).is_empty());
    }
}
