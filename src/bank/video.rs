//! vPDQ bank entries: each a video's frame hashes, matched by python-threatexchange's rule
//! (`vpdq_brute_matcher.py`), but looked up through one PDQ multi-index over the distinct frames
//! of every video in the bank instead of pairwise.
//!
//! The rule, on both sides: exact duplicate hashes are removed (the first kept), then frames below
//! the quality floor; an upload frame matches a bank video when some frame of that video is within
//! the bank's PDQ threshold, and a bank frame matches when some upload frame is. The bank video
//! matches when the upload's matched share is at least `vpdq_query_match_pct` and the bank
//! video's at least `vpdq_target_match_pct`.
//!
//! An entry's identity is the SHA-256 of its canonical signal string (see
//! [`canonical_signal_string`]), so the same feature list written by different tools is one key.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use super::pdq_index::{IndexError, PdqIndex};
use super::FastMap;
use crate::hash::pdq::PdqHash;
use crate::hash::vpdq::{self, VpdqFeature};

/// One frame of a bank video as stored: its hash, quality and timestamp in milliseconds (the
/// exchanged form has 3 decimals at most).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoFrame {
    pub hash: PdqHash,
    pub quality: u8,
    pub at_ms: u32,
}

impl VideoFrame {
    fn timestamp(&self) -> f64 {
        f64::from(self.at_ms) / 1000.0
    }
}

/// A bank video parsed from its signal string: its frames as given, and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoEntry {
    pub digest: [u8; 32],
    pub frames: Box<[VideoFrame]>,
}

impl VideoEntry {
    /// From a signal string (python-threatexchange's JSON list); errors name the feature, never
    /// its hash.
    pub fn parse(text: &str) -> Result<Self, String> {
        let features = vpdq::parse_signal_string(text).map_err(|e| format!("vpdq signal: {e}"))?;
        Self::from_features(&features)
    }

    pub fn from_features(features: &[VpdqFeature]) -> Result<Self, String> {
        let mut frames = Vec::with_capacity(features.len());
        for (i, f) in features.iter().enumerate() {
            let ms = (f.timestamp * 1000.0).round();
            if !(0.0..=f64::from(u32::MAX)).contains(&ms) {
                return Err(format!("vpdq signal: feature {i}: timestamp out of range"));
            }
            frames.push(VideoFrame { hash: f.hash, quality: f.quality, at_ms: ms as u32 });
        }
        if frames.iter().all(|f| f.hash.is_zero()) {
            return Err("vpdq signal: every frame hash is all zeros".into());
        }
        let frames = frames.into_boxed_slice();
        let digest = Sha256::digest(canonical_signal_string(&frames).as_bytes()).into();
        Ok(Self { digest, frames })
    }
}

/// The signal string every entry is keyed and exported by: lowercase hashes, 3-decimal timestamps,
/// the frames in their order (python-threatexchange reads it).
pub fn canonical_signal_string(frames: &[VideoFrame]) -> String {
    let features: Vec<VpdqFeature> =
        frames.iter().map(|f| VpdqFeature { frame: 0, quality: f.quality, hash: f.hash, timestamp: f.timestamp() }).collect();
    vpdq::to_signal_string(&features)
}

/// The matcher's filter: exact duplicates removed (the first kept), then frames under `floor`.
pub fn usable<'a, T>(items: &'a [T], hash: impl Fn(&T) -> PdqHash, quality: impl Fn(&T) -> u8, floor: u8) -> Vec<&'a T> {
    let mut seen = HashSet::with_capacity(items.len());
    items.iter().filter(|item| seen.insert(hash(item))).filter(|item| quality(item) >= floor).collect()
}

/// One bank video: its frames as given (for export), and its usable frames as frame ids with
/// the timestamp of each.
#[derive(Debug)]
struct Stored {
    digest: [u8; 32],
    frames: Box<[VideoFrame]>,
    usable: Box<[(u32, u32)]>,
}

/// A bank's videos, keyed by entry id, and the index of their distinct usable frames.
#[derive(Debug, Default)]
pub struct VideoIndex {
    videos: FastMap<u32, Stored>,
    /// Distinct frame hash → frame id, and frame id → the videos holding it.
    frame_ids: FastMap<PdqHash, u32>,
    holders: Vec<Vec<u32>>,
    free_frames: Vec<u32>,
    frames: PdqIndex,
}

/// A bank video an upload matched, by the matcher's rule.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoHit {
    pub video: u32,
    pub digest: [u8; 32],
    pub query_pct: f64,
    pub target_pct: f64,
    /// The first upload frame that matched, and the bank video's first matched frame (seconds).
    pub at: f64,
    pub entry_at: f64,
}

impl VideoIndex {
    pub fn len(&self) -> usize {
        self.videos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.videos.is_empty()
    }

    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Adds video `id` (an id not in the index). Fails only when the frame index is full.
    pub fn insert(&mut self, id: u32, entry: &VideoEntry, floor: u8) -> Result<(), IndexError> {
        let usable_frames = usable(&entry.frames, |f| f.hash, |f| f.quality, floor);
        let mut usable_ids = Vec::with_capacity(usable_frames.len());
        for frame in usable_frames {
            let frame_id = match self.frame_ids.get(&frame.hash) {
                Some(&frame_id) => frame_id,
                None => {
                    let frame_id = match self.free_frames.pop() {
                        Some(id) => id,
                        None => u32::try_from(self.holders.len()).map_err(|_| IndexError::Full)?,
                    };
                    if let Err(e) = self.frames.try_insert(frame_id, frame.hash) {
                        self.free_frames.push(frame_id);
                        self.remove_frames(id, &usable_ids);
                        return Err(e);
                    }
                    self.frame_ids.insert(frame.hash, frame_id);
                    if frame_id as usize == self.holders.len() {
                        self.holders.push(Vec::new());
                    }
                    frame_id
                }
            };
            self.holders[frame_id as usize].push(id);
            usable_ids.push((frame_id, frame.at_ms));
        }
        self.videos.insert(id, Stored { digest: entry.digest, frames: entry.frames.clone(), usable: usable_ids.into_boxed_slice() });
        Ok(())
    }

    /// Removes video `id`; its frames leave the index when no other video holds them.
    pub fn remove(&mut self, id: u32) {
        if let Some(stored) = self.videos.remove(&id) {
            self.remove_frames(id, &stored.usable);
        }
    }

    fn remove_frames(&mut self, id: u32, frames: &[(u32, u32)]) {
        for &(frame_id, _) in frames {
            let holders = &mut self.holders[frame_id as usize];
            holders.retain(|&v| v != id);
            if holders.is_empty() {
                if let Some(hash) = self.frames.hash_of(frame_id) {
                    self.frame_ids.remove(&hash);
                }
                self.frames.remove(frame_id);
                self.free_frames.push(frame_id);
            }
        }
    }

    /// A video's usable frames (after the matcher's filter), in order: what retro looks for.
    pub fn usable_hashes(&self, id: u32) -> Vec<PdqHash> {
        let Some(stored) = self.videos.get(&id) else { return Vec::new() };
        stored.usable.iter().filter_map(|&(frame_id, _)| self.frames.hash_of(frame_id)).collect()
    }

    /// A video's frames as given (for export).
    pub fn frames_of(&self, id: u32) -> Option<&[VideoFrame]> {
        self.videos.get(&id).map(|s| &*s.frames)
    }

    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.videos.keys().copied()
    }

    /// The bank videos `upload` (its usable frames, in order) matches within `threshold`, by the
    /// percentages given.
    pub fn query(&self, upload: &[&VpdqFeature], threshold: u32, query_pct: f64, target_pct: f64) -> Vec<VideoHit> {
        if upload.is_empty() || self.videos.is_empty() {
            return Vec::new();
        }
        // Per bank video: upload frames matched (and the first one's time), its own frames matched.
        let mut matched: HashMap<u32, (usize, f64, HashSet<u32>)> = HashMap::new();
        for feature in upload {
            let mut videos_hit: HashSet<u32> = HashSet::new();
            for (frame_id, _) in self.frames.query(&feature.hash, threshold) {
                for &video in &self.holders[frame_id as usize] {
                    let slot = matched.entry(video).or_insert_with(|| (0, feature.timestamp, HashSet::new()));
                    slot.2.insert(frame_id);
                    videos_hit.insert(video);
                }
            }
            for video in videos_hit {
                matched.get_mut(&video).expect("inserted above").0 += 1;
            }
        }
        let mut hits: Vec<VideoHit> = matched
            .into_iter()
            .filter_map(|(video, (upload_matched, at, frames_matched))| {
                let stored = self.videos.get(&video)?;
                let q = upload_matched as f64 * 100.0 / upload.len() as f64;
                let t = frames_matched.len() as f64 * 100.0 / stored.usable.len() as f64;
                let entry_at = stored
                    .usable
                    .iter()
                    .find(|(frame_id, _)| frames_matched.contains(frame_id))
                    .map_or(0.0, |&(_, ms)| f64::from(ms) / 1000.0);
                (q >= query_pct && t >= target_pct).then_some(VideoHit { video, digest: stored.digest, query_pct: q, target_pct: t, at, entry_at })
            })
            .collect();
        hits.sort_by(|a, b| b.query_pct.total_cmp(&a.query_pct).then(a.video.cmp(&b.video)));
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(seed: u64) -> PdqHash {
        let mut bytes = [0u8; 32];
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for b in &mut bytes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        PdqHash(bytes)
    }

    fn features(seeds: &[u64]) -> Vec<VpdqFeature> {
        seeds.iter().enumerate().map(|(i, &s)| VpdqFeature { frame: i as u64, quality: 100, hash: hash(s), timestamp: i as f64 }).collect()
    }

    fn flip(h: PdqHash, bits: usize) -> PdqHash {
        let mut b = h.0;
        for i in 0..bits {
            b[i / 8] ^= 1 << (i % 8);
        }
        PdqHash(b)
    }

    /// The rule of python-threatexchange's brute matcher, written out pairwise, against the index.
    #[test]
    fn the_index_decides_as_the_pairwise_rule_does() {
        let bank_video = features(&[1, 2, 3, 4]);
        let entry = VideoEntry::from_features(&bank_video).unwrap();
        let mut index = VideoIndex::default();
        index.insert(7, &entry, 50).unwrap();
        let pairwise = |upload: &[VpdqFeature]| {
            let q = upload.iter().filter(|u| bank_video.iter().any(|b| b.hash.distance(&u.hash) <= 31)).count();
            let t = bank_video.iter().filter(|b| upload.iter().any(|u| b.hash.distance(&u.hash) <= 31)).count();
            (q as f64 * 100.0 / upload.len() as f64, t as f64 * 100.0 / bank_video.len() as f64)
        };
        let near = |seeds: &[u64], bits| features(seeds).into_iter().map(|mut f| { f.hash = flip(f.hash, bits); f }).collect::<Vec<_>>();
        for upload in [near(&[1, 2, 3, 4], 20), near(&[1, 2, 3, 4, 9], 31), near(&[1, 2], 0), near(&[1, 9, 10, 11], 5), near(&[1, 2, 3, 4], 32)] {
            let refs: Vec<&VpdqFeature> = upload.iter().collect();
            let (q, t) = pairwise(&upload);
            let hits = index.query(&refs, 31, 80.0, 0.0);
            assert_eq!(!hits.is_empty(), q >= 80.0, "q={q} t={t}");
            if let Some(hit) = hits.first() {
                assert_eq!((hit.query_pct, hit.target_pct), (q, t));
            }
        }
    }

    #[test]
    fn duplicates_go_before_the_quality_filter_and_frames_are_shared() {
        let mut low_then_high = features(&[1, 1, 2]);
        low_then_high[0].quality = 10;
        let usable_frames = usable(&low_then_high, |f| f.hash, |f| f.quality, 50);
        assert_eq!(usable_frames.len(), 1, "the duplicate of a low-quality frame goes with it, as in the reference");
        let mut index = VideoIndex::default();
        index.insert(1, &VideoEntry::from_features(&features(&[1, 2])).unwrap(), 50).unwrap();
        index.insert(2, &VideoEntry::from_features(&features(&[2, 3])).unwrap(), 50).unwrap();
        assert_eq!(index.frame_count(), 3);
        index.remove(1);
        assert_eq!(index.frame_count(), 2, "frame 2 stays for video 2");
        let upload = features(&[2]);
        let hits = index.query(&upload.iter().collect::<Vec<_>>(), 31, 80.0, 0.0);
        assert_eq!(hits.iter().map(|h| h.video).collect::<Vec<_>>(), vec![2]);
        index.remove(2);
        assert_eq!(index.frame_count(), 0);
    }

    #[test]
    fn digests_ignore_the_text_form() {
        let a = VideoEntry::from_features(&features(&[1, 2])).unwrap();
        let text = canonical_signal_string(&a.frames);
        let upper = text.to_uppercase().replace("E+", "e+");
        assert_eq!(VideoEntry::parse(&upper).unwrap().digest, a.digest);
        let b = VideoEntry::from_features(&features(&[2, 1])).unwrap();
        assert_ne!(a.digest, b.digest, "order is part of a video");
    }
}
