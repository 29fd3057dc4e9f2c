//! What the screen learned from one media's bytes, kept by their SHA-256, so that a re-upload of
//! the same bytes (a viral image is re-uploaded thousands of times) costs a fetch, a SHA-256 and a
//! lookup instead of a decode, PDQ hashes and an inference.
//!
//! Only what follows from the bytes alone is kept: hashes, dimensions, deterministic media errors,
//! the classifier's score with the model that gave it. Bank matches and the policy are decided
//! again for every upload, on the banks and bands in force, so an entry added a second ago still
//! blocks a cached image. Never the media bytes, never pixels.

use std::sync::Arc;

use moka::future::Cache;

use crate::bank::PdqSignal;
use crate::event::Signals;
use crate::hash::vpdq::VpdqFeature;
use crate::metrics::Metrics;
use crate::policy::{ClassifierFinding, MediaErrorFinding};

/// What the screen learned from one media's bytes: the same for every upload of them.
#[derive(Debug, Clone, Default)]
pub struct Learned {
    pub signals: Signals,
    /// One PDQ hash per picture shown: the still image, then each animation frame screened; for
    /// a video, each sampled frame (in the banks' convention).
    pub pdq: Vec<PdqSignal>,
    /// A video's vPDQ features: every sampled frame, as vpdq hashes it.
    pub vpdq: Vec<VpdqFeature>,
    /// The bytes are a video (decoded by the helper, or not).
    pub is_video: bool,
    pub media_error: Option<MediaErrorFinding>,
    pub is_image: bool,
    /// Non-image media: what was not screened.
    pub unscreened: Option<String>,
    /// The classifier's finding (the highest score of the pictures), once the image was scored:
    /// a worker skips the classifier for an image a bank blocks.
    pub classifier: Option<ClassifierFinding>,
    /// The still image's full-resolution PDQ hash, once an allowlist match needed confirming.
    pub full_pdq: Option<PdqSignal>,
    /// The pixels decoded: what the classifier and the allowlist confirmation can be run on.
    pub decoded: bool,
}

/// Media errors that could go differently next time (a deadline, a thread that failed, the
/// classifier) are not kept: the next upload of the bytes is screened afresh.
const TRANSIENT_ERRORS: [&str; 5] = ["decode_timeout", "decode_crashed", "video_unavailable", "internal", "classifier"];

impl Learned {
    pub fn cacheable(&self) -> bool {
        self.media_error.as_ref().is_none_or(|e| !TRANSIENT_ERRORS.contains(&e.kind.as_str()))
    }

    /// Bytes this entry holds, for the cache's bound (the struct, its strings and hashes).
    fn weight(&self) -> usize {
        let strings = [&self.signals.md5, &self.signals.sha256, &self.signals.pdq, &self.unscreened]
            .iter()
            .map(|s| s.as_ref().map_or(0, String::len))
            .sum::<usize>();
        let error = self.media_error.as_ref().map_or(0, |e| e.kind.len() + e.detail.len());
        let classifier = self.classifier.as_ref().map_or(0, |c| c.model.len() + c.model_sha256.len() + c.label.len());
        std::mem::size_of::<Self>()
            + strings
            + error
            + classifier
            + (self.pdq.len() + usize::from(self.full_pdq.is_some())) * std::mem::size_of::<PdqSignal>()
            + self.vpdq.len() * std::mem::size_of::<VpdqFeature>()
            + self.signals.video.as_ref().map_or(0, |v| v.container.len() + v.codec.len())
            + [&self.signals.more_pdq, &self.signals.pdq_dihedral]
                .iter()
                .map(|list| list.as_ref().map_or(0, |l| l.iter().map(|s| s.len() + std::mem::size_of::<String>()).sum()))
                .sum::<usize>()
    }
}

/// The bounded cache of [`Learned`] facts by media SHA-256.
pub struct ScreenCache {
    entries: Cache<[u8; 32], Arc<Learned>>,
    metrics: Arc<Metrics>,
}

/// An allowance for what the cache's bookkeeping adds per entry (key, hash table slot, moka's
/// entry and eviction-order nodes, the `Arc`). With it the cache's count stays above what an
/// entry really costs: 1,219 counted against 626 bytes of resident growth per still photo's
/// entry (`cargo bench --bench screen_cache`, part 3; docs/BENCHMARKS.md).
pub const OVERHEAD_PER_ENTRY: usize = 160;

impl ScreenCache {
    /// At most `max_entries` entries and about `max_bytes` bytes. Each entry weighs at least
    /// `max_bytes / max_entries`, so one weighted bound enforces both.
    pub fn new(max_entries: u64, max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let floor = (max_bytes / max_entries.max(1)).max(1);
        let evictions = metrics.clone();
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |_key: &[u8; 32], learned: &Arc<Learned>| -> u32 {
                let weight = (learned.weight() + OVERHEAD_PER_ENTRY) as u64;
                u32::try_from(weight.max(floor)).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_key, _value, cause| {
                if cause.was_evicted() {
                    evictions.screen_cache_evictions.inc();
                }
            })
            .build();
        Self { entries, metrics }
    }

    /// The entry for `key`, computing it with `learn` when there is none. Concurrent callers for
    /// one key wait for the one computation. Returns the entry and whether this call computed it.
    pub async fn get_or_learn(&self, key: [u8; 32], learn: impl std::future::Future<Output = Arc<Learned>>) -> (Arc<Learned>, bool) {
        let entry = self.entries.entry(key).or_insert_with(learn).await;
        let fresh = entry.is_fresh();
        let learned = entry.into_value();
        if !learned.cacheable() {
            self.entries.invalidate(&key).await;
        }
        self.metrics.screen_cache_lookups.with_label_values(&[if fresh { "miss" } else { "hit" }]).inc();
        self.publish_size();
        (learned, fresh)
    }

    /// Keeps what a later upload of the bytes added (a score, a full-resolution hash).
    pub async fn update(&self, key: [u8; 32], learned: Arc<Learned>) {
        if learned.cacheable() {
            self.entries.insert(key, learned).await;
            self.publish_size();
        }
    }

    fn publish_size(&self) {
        self.metrics.screen_cache_entries.set(i64::try_from(self.entries.entry_count()).unwrap_or(i64::MAX));
        self.metrics.screen_cache_bytes.set(i64::try_from(self.entries.weighted_size()).unwrap_or(i64::MAX));
    }

    /// Entries and weighted bytes now (after pending maintenance).
    pub async fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks().await;
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}
