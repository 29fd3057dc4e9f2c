//! The screen's cache by media SHA-256 (issue: a viral re-upload costs a lookup): a re-upload skips
//! decode, PDQ and inference, yet is matched against the banks in force (an entry added after the
//! first upload still blocks it); a score from another model is not reused; concurrent duplicates
//! are screened once; entries hold no media. Real photos, the real PDQ hasher and the real
//! classifier (`make setup`); bank updates go through the same apply path as the bank topic's.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use perisai::bank::record::{record_key, BankEntryRecord, BANK_ENTRY_SCHEMA};
use perisai::bank::{Bank, BankSet, Signal, TopicRecord};
use perisai::classify::{Announcement, ClassifyError, ImageScorer, Score};
use perisai::config::{BankSettings, Settings, Switch};
use perisai::event::{Action, Reason, UploadEvent, Verdict};
use perisai::metrics::Metrics;
use perisai::screen::{Mode, Screen};
use perisai::app;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nsfw/images").join(name)).unwrap()
}

fn event() -> UploadEvent {
    UploadEvent::local("upload", "t")
}

struct World {
    screen: Arc<Screen>,
    banks: Arc<BankSet>,
    metrics: Arc<Metrics>,
    offset: i64,
}

impl World {
    fn new(mode: Mode) -> Self {
        let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
        settings.classifier.enabled = Switch::On;
        // A small floor per entry, so the cache's weighted size shows what an entry really holds.
        settings.cache.max_entries = 1_000_000;
        let settings = Arc::new(settings);
        let metrics = Metrics::new();
        let banks = Arc::new(BankSet::new(vec![Bank::new(BankSettings::new("ncii", Action::Block))]));
        let screen = app::build_screen(&settings, banks.clone(), &metrics, mode).unwrap_or_else(|e| panic!("{e} (run `make setup`)"));
        World { screen, banks, metrics, offset: 0 }
    }

    async fn screen(&self, bytes: &[u8]) -> Verdict {
        self.screen.screen_bytes(&event(), bytes.to_vec(), Instant::now()).await
    }

    /// Adds (`Some(entry)`) or withdraws (`None`) a PDQ hash in bank `ncii`, as the bank topic would.
    fn bank(&mut self, pdq_hex: &str, entry: Option<&str>) {
        let value = entry.map(|entry| {
            serde_json::to_vec(&BankEntryRecord {
                schema: BANK_ENTRY_SCHEMA.into(),
                bank: "ncii".into(),
                signal: "pdq".into(),
                hash: pdq_hex.into(),
                entry: entry.into(),
                source: "victim report".into(),
                added_at: "2026-12-07T00:00:00Z".into(),
                tags: vec![],
                vpdq: None,
            })
            .unwrap()
        });
        let key = record_key("ncii", Signal::Pdq, pdq_hex);
        let record = TopicRecord { partition: 0, offset: self.offset, timestamp_ms: None, key: Some(key.as_bytes()), value: value.as_deref() };
        self.offset += 1;
        let report = self.banks.apply(&[record], &self.metrics, true);
        assert_eq!(report.rejected, 0, "{report:?}");
    }

    fn decodes(&self) -> u64 {
        self.metrics.stage_seconds.with_label_values(&["decode"]).get_sample_count()
    }

    fn lookups(&self, result: &str) -> u64 {
        self.metrics.screen_cache_lookups.with_label_values(&[result]).get()
    }
}

fn blocked_by(v: &Verdict) -> Option<String> {
    v.reasons.iter().find_map(|r| match r {
        Reason::HashMatch { action: Action::Block, entry, .. } => Some(entry.clone()),
        _ => None,
    })
}

fn score(v: &Verdict) -> Option<(String, f32)> {
    v.reasons.iter().find_map(|r| match r {
        Reason::Classifier { model, score, .. } => Some((model.clone(), *score)),
        _ => None,
    })
}

/// The case: the image is seen, then reported; its next upload hits the cache and is
/// blocked by the entry added in between. Withdrawn, it is allowed again, still from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_image_is_matched_against_the_banks_in_force() {
    let mut w = World::new(Mode::Worker);
    let photo = fixture("pdq_bridge.jpg");
    let first = w.screen(&photo).await;
    assert_eq!((w.lookups("miss"), w.lookups("hit"), w.decodes()), (1, 0, 1));
    assert!(blocked_by(&first).is_none() && score(&first).is_some(), "{first:?}");
    let pdq = first.signals.pdq.clone().expect("a PDQ hash");

    w.bank(&pdq, Some("victim-1"));
    let again = w.screen(&photo).await;
    assert_eq!((w.lookups("hit"), w.decodes()), (1, 1), "a re-upload is a cache hit: no decode");
    assert_eq!(blocked_by(&again).as_deref(), Some("victim-1"), "{again:?}");
    assert_eq!(again.action, Action::Block);
    assert_eq!(again.signals, first.signals, "the same signals, from the cache");

    w.bank(&pdq, None);
    let after = w.screen(&photo).await;
    assert_eq!((w.lookups("hit"), w.decodes()), (2, 1));
    assert_eq!((after.action, score(&after)), (first.action, score(&first)), "{after:?}");
}

/// An image blocked when first seen is not scored by a worker; once its entry is withdrawn, its
/// next upload needs a score the cache lacks: decoded again, scored, and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_score_the_cache_lacks_is_computed_once_when_needed() {
    let mut w = World::new(Mode::Worker);
    let photo = fixture("sk_coffee.png");
    let probe = World::new(Mode::ScoreAll).screen(&photo).await;
    let pdq = probe.signals.pdq.clone().unwrap();
    w.bank(&pdq, Some("c-1"));
    let blocked = w.screen(&photo).await;
    assert!(blocked_by(&blocked).is_some() && score(&blocked).is_none(), "{blocked:?}");
    w.bank(&pdq, None);
    let allowed = w.screen(&photo).await;
    assert_eq!(score(&allowed), score(&probe), "scored now, as the image scores alone");
    assert_eq!((w.lookups("hit"), w.decodes()), (1, 2), "decoded again, once");
    let again = w.screen(&photo).await;
    assert_eq!((score(&again), w.decodes()), (score(&probe), 2), "the score is kept");
}

/// A scorer standing for another model (its weights' sha256 differs), with a score of its own.
struct OtherModel;

impl ImageScorer for OtherModel {
    fn model_name(&self) -> &str {
        "open_nsfw"
    }
    fn model_sha256(&self) -> &str {
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    }
    fn score(&self, input: Vec<f32>, _: Announcement) -> Pin<Box<dyn Future<Output = Result<Score, ClassifyError>> + Send + '_>> {
        assert_eq!(input.len(), perisai::classify::preprocess::INPUT_LEN, "a real preprocessed image");
        Box::pin(async { Ok(Score { sfw: 0.58, nsfw: 0.42 }) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_change_misses_the_cached_score() {
    let w = World::new(Mode::ScoreAll);
    let photo = fixture("sk_chelsea.png");
    let real = w.screen(&photo).await;
    let (model, real_score) = score(&real).unwrap();
    assert_ne!(real_score, 0.42);
    // Another screen sharing the cache, with another model.
    let settings = Arc::new(Settings::load_with_env(None, Vec::<(String, String)>::new()).unwrap());
    let metrics = Metrics::new();
    let other = Screen::new(settings, w.banks.clone(), Some(Arc::new(OtherModel)), metrics.clone(), Mode::ScoreAll)
        .unwrap()
        .with_cache(w.screen.cache());
    let v = other.screen_bytes(&event(), photo.clone(), Instant::now()).await;
    assert_eq!(score(&v), Some((model, 0.42)), "scored by the other model, not taken from the cache: {v:?}");
    assert_eq!(metrics.stage_seconds.with_label_values(&["decode"]).get_sample_count(), 1, "decoded for it");
    assert_eq!(v.signals, real.signals);
}

/// Eight uploads of one new image at the same moment: one decode, one inference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_are_screened_once() {
    let w = World::new(Mode::Worker);
    let photo = fixture("jd_tower.jpg");
    let verdicts = futures::future::join_all((0..8).map(|_| w.screen(&photo))).await;
    assert!(verdicts.iter().all(|v| score(v) == score(&verdicts[0]) && score(v).is_some()));
    assert_eq!((w.lookups("miss"), w.lookups("hit"), w.decodes()), (1, 7, 1));
    assert_eq!(w.metrics.classifier_score.with_label_values(&["open_nsfw"]).get_sample_count(), 1, "one inference");
}

/// An entry holds what was learned, not the media: a 2.4 MB image's entry is a few hundred bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_holds_no_media() {
    let w = World::new(Mode::Worker);
    let noise = image::RgbImage::from_fn(900, 900, |x, y| {
        let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519) >> 8;
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    noise.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();
    assert!(png.len() > 2_000_000);
    w.screen(&png).await;
    let (entries, bytes) = w.screen.cache().unwrap().size().await;
    assert_eq!(entries, 1);
    assert!(bytes < 2_048, "one entry weighs {bytes} bytes");
}
