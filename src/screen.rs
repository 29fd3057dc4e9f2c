//! The screen: one event's media → signals → verdict. Knows nothing about Kafka; the worker,
//! the `scan` command and the tests all call it.
//!
//! Media is fetched once and decoded once; PDQ and the classifier share the pixels. CPU work runs
//! on blocking threads, at most `worker.cpu_threads` at a time, never on the async runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::bank::flood::FloodWatch;
use crate::bank::{BankMatch, BankSet, ParsedHash, PdqSignal, Signal};
use crate::classify::{preprocess, ClassifyError, ImageScorer};
use crate::config::Settings;
use crate::event::{Action, Signals, UploadEvent, Verdict, VERDICT_SCHEMA};
use crate::hash::{exact, pdq};
use crate::live_policy::LivePolicy;
use crate::media::decode::{self, DecodeLimits, Image};
use crate::media::fetch::{FetchError, MediaFetcher};
use crate::metrics::Metrics;
use crate::policy::{self, ClassifierFinding, Findings, MediaErrorFinding, SCALING_ANOMALY};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The worker: skip the classifier when a bank match already blocks.
    Worker,
    /// `perisai scan`: score every image, so scores can be checked file by file.
    ScoreAll,
}

pub struct Screen {
    settings: Arc<Settings>,
    fetcher: MediaFetcher,
    banks: Arc<BankSet>,
    classifier: Option<Arc<dyn ImageScorer>>,
    cpu: Arc<Semaphore>,
    /// The worker-wide decode memory budget, in KiB: a decode holds its planned bytes while it
    /// runs, and one that does not fit waits (see `decode.memory_budget_bytes`).
    decode_memory: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    mode: Mode,
    /// The policy in force: each verdict takes one snapshot (see `live_policy`).
    policy: Arc<LivePolicy>,
    /// Workers count matches per entry to catch a flooding one (see `bank::flood`).
    flood: Option<Arc<FloodWatch>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScreenError {
    #[error("media fetcher: {0}")]
    Fetcher(#[from] FetchError),
}

/// What the CPU stages produced from the media bytes.
#[derive(Default)]
struct Examined {
    signals: Signals,
    /// The still image, kept for the classifier (preprocessed only if it is scored).
    image: Option<Image>,
    /// One PDQ hash per picture shown: the still image, then each animation frame screened.
    pdq: Vec<PdqSignal>,
    /// The animation frames screened, preprocessed for the classifier (none without one).
    frame_inputs: Vec<Vec<f32>>,
    media_error: Option<MediaErrorFinding>,
    is_image: bool,
    /// Non-image media: what was not screened.
    unscreened: Option<String>,
    /// The decode's share of the memory budget, held while the pixels live.
    memory: Option<MemoryReservation>,
}

impl Examined {
    fn failed(signals: Signals, kind: &str, detail: String) -> Self {
        let media_error = Some(MediaErrorFinding { kind: kind.into(), detail });
        Examined { signals, media_error, is_image: true, ..Default::default() }
    }
}

/// How the screen treats one upload's pixels: the same for the still image and every frame.
#[derive(Clone)]
struct PixelWork {
    pdq: crate::config::PdqSettings,
    dihedral: bool,
    /// Animation frames are preprocessed for the classifier as they are decoded (their pixels
    /// are not kept); the still image is kept and preprocessed only if it is scored.
    classify_frames: bool,
    max_frames: usize,
}

impl Screen {
    pub fn new(
        settings: Arc<Settings>,
        banks: Arc<BankSet>,
        classifier: Option<Arc<dyn ImageScorer>>,
        metrics: Arc<Metrics>,
        mode: Mode,
    ) -> Result<Self, ScreenError> {
        let threads = match settings.worker.cpu_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let memory_kib = kib(settings.decode.memory_budget_bytes);
        Ok(Self {
            fetcher: MediaFetcher::new(&settings.media)?,
            policy: Arc::new(LivePolicy::new(settings.policy.clone())),
            settings,
            banks,
            classifier,
            cpu: Arc::new(Semaphore::new(threads)),
            decode_memory: Arc::new(Semaphore::new(memory_kib as usize)),
            metrics,
            mode,
            flood: None,
        })
    }

    /// The policy this screen decides with, for the reload watcher.
    pub fn live_policy(&self) -> Arc<LivePolicy> {
        self.policy.clone()
    }

    /// Counts every verdict's matches with `flood`.
    pub fn with_flood_watch(mut self, flood: Option<Arc<FloodWatch>>) -> Self {
        self.flood = flood;
        self
    }

    /// Screens one event. Never fails: media problems become a `media_error` reason.
    pub async fn screen(&self, event: &UploadEvent, received: Instant) -> Verdict {
        let started = Instant::now();
        let fetched = self.fetcher.fetch(&event.media).await;
        self.metrics.observe_stage("fetch", started.elapsed().as_secs_f64());
        match fetched {
            Ok(bytes) => self.screen_bytes(event, bytes, received).await,
            Err(e) => {
                let findings = Findings {
                    media_error: Some(MediaErrorFinding { kind: e.kind().into(), detail: e.to_string() }),
                    ..Default::default()
                };
                self.finish(event, findings, Signals::default(), received)
            }
        }
    }

    /// Screens media bytes already in hand (the `scan` command, tests).
    pub async fn screen_bytes(&self, event: &UploadEvent, bytes: Vec<u8>, received: Instant) -> Verdict {
        let examined = self.examine(bytes, event.content_type.clone()).await;
        let started = Instant::now();
        let mut banks = self.banks.match_media(&exact_of(&examined.signals), &examined.pdq);
        self.metrics.observe_stage("match", started.elapsed().as_secs_f64());
        if let Some(image) = &examined.image {
            self.confirm_allowlist(&mut banks.matches, image).await;
        }
        let mut findings = Findings {
            matches: banks.matches,
            low_quality: banks.low_quality,
            media_error: examined.media_error,
            unscreened: examined.unscreened,
            ..Default::default()
        };
        let banks_version = banks.version;

        let blocked = findings.matches.iter().any(|m| m.action == Action::Block);
        match (&self.classifier, examined.image) {
            (_, None) => {
                if !examined.is_image {
                    self.metrics.classifier_skipped.with_label_values(&["not_image"]).inc();
                }
            }
            (None, Some(_)) => self.metrics.classifier_skipped.with_label_values(&["disabled"]).inc(),
            (Some(_), Some(_)) if blocked && self.mode == Mode::Worker => {
                self.metrics.classifier_skipped.with_label_values(&["blocked_by_hash"]).inc()
            }
            (Some(classifier), Some(image)) => {
                match self.classify(classifier.as_ref(), image, examined.frame_inputs).await {
                    Ok(finding) => findings.classifier = Some(finding),
                    Err(e) => {
                        findings.media_error.get_or_insert(MediaErrorFinding { kind: "classifier".into(), detail: e.to_string() });
                    }
                }
            }
        }
        let mut verdict = self.finish(event, findings, examined.signals, received);
        verdict.banks_version = banks_version;
        verdict
    }

    /// An allowlist PDQ match under the `cli` convention rests on a 512×512 sample of the image,
    /// which an image-scaling attack controls below the scaling check's threshold too. So it
    /// allows only when the full image (the `full` convention) also matches that allowlist
    /// entry; otherwise it is marked unconfirmed and allows nothing. Costs one full-resolution
    /// hash, only for images over 512 px that match an allowlist by PDQ (animation frames are
    /// not confirmed one by one: the still image stands for them).
    async fn confirm_allowlist(&self, matches: &mut [BankMatch], image: &Image) {
        let resampled = image.width as usize > pdq::CLI_SIDE || image.height as usize > pdq::CLI_SIDE;
        let needs = |m: &BankMatch| m.action == Action::Allow && m.signal == Signal::Pdq;
        if self.settings.pdq.convention != pdq::Convention::Cli || !resampled || !matches.iter().any(needs) {
            return;
        }
        let image = image.clone();
        let dihedral = self.banks.any_dihedral();
        let full = self.on_cpu(move || {
            if dihedral {
                let (all, quality) = pdq::hash_dihedral(&image, pdq::Convention::Full);
                PdqSignal { hash: all[0], quality, dihedral: Some(all) }
            } else {
                let out = pdq::hash(&image, pdq::Convention::Full);
                PdqSignal { hash: out.hash, quality: out.quality, dihedral: None }
            }
        });
        let confirmed: Vec<(String, ParsedHash)> = match full.await {
            Ok(full) => {
                let none = exact::ExactHashes { md5: String::new(), sha256: String::new() };
                self.banks.match_media(&none, &[full]).matches.into_iter().map(|m| (m.bank, m.hash)).collect()
            }
            Err(_) => Vec::new(),
        };
        for m in matches.iter_mut().filter(|m| needs(m)) {
            m.unconfirmed = !confirmed.iter().any(|(bank, hash)| *bank == m.bank && *hash == m.hash);
        }
    }

    /// Scores the still image and any animation frames screened; the finding is the highest
    /// score, so the upload falls in the band of its worst picture.
    async fn classify(
        &self,
        classifier: &dyn ImageScorer,
        image: Image,
        frame_inputs: Vec<Vec<f32>>,
    ) -> Result<ClassifierFinding, ClassifyError> {
        let started = Instant::now();
        let input = self
            .on_cpu(move || preprocess::preprocess(&image))
            .await
            .map_err(|e| ClassifyError::Preprocess(format!("preprocessing thread: {e}")))??;
        // All at once, so the batcher can put the frames in one batch.
        let scores = futures::future::join_all(
            std::iter::once(input).chain(frame_inputs).map(|input| classifier.score(input)),
        )
        .await;
        let mut score = f32::MIN;
        for s in scores {
            score = score.max(s?.nsfw);
        }
        self.metrics.observe_stage("classify", started.elapsed().as_secs_f64());
        Ok(ClassifierFinding {
            model: classifier.model_name().to_string(),
            model_sha256: classifier.model_sha256().chars().take(12).collect(),
            label: "nsfw".into(),
            score,
        })
    }

    /// Runs CPU-bound work on a blocking thread, at most `cpu_threads` at once. A panic in the
    /// work comes back as an error for this event only.
    async fn on_cpu<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let _permit = self.cpu.acquire().await.expect("semaphore never closed");
        tokio::task::spawn_blocking(work).await
    }

    /// Exact hashes and sniffing, then — for images — the decode plan, a share of the decode
    /// memory budget, and the decode and PDQ hashing of the still image and animation frames.
    async fn examine(&self, bytes: Vec<u8>, content_type: Option<String>) -> Examined {
        let d = &self.settings.decode;
        let limits = DecodeLimits {
            max_pixels: d.max_pixels,
            max_side: d.max_side,
            max_bytes: d.max_bytes,
            deadline: Duration::from_millis(d.deadline_ms),
        };
        let metrics = self.metrics.clone();
        let plan_limits = limits.clone();
        let first = self.on_cpu(move || {
            let planned = inspect_blocking(&bytes, content_type.as_deref(), &plan_limits, &metrics);
            (bytes, planned)
        });
        let (bytes, (signals, plan)) = match first.await {
            Ok((bytes, Ok(planned))) => (bytes, planned),
            Ok((_, Err(examined))) => return examined,
            Err(e) => return Examined::failed(Signals::default(), "internal", e.to_string()),
        };
        let memory = self.reserve_decode_memory(plan.bytes).await;
        let work = PixelWork {
            pdq: self.settings.pdq.clone(),
            dihedral: self.banks.any_dihedral(),
            classify_frames: self.classifier.is_some(),
            max_frames: d.max_frames,
        };
        let metrics = self.metrics.clone();
        let examined = self.on_cpu(move || decode_blocking(&bytes, signals, plan, &limits, &work, &metrics)).await;
        let mut examined = examined.unwrap_or_else(|e| Examined::failed(Signals::default(), "internal", e.to_string()));
        // Given back when the still image is dropped, after the classifier has read it.
        examined.memory = Some(memory);
        examined
    }

    /// Waits for `bytes` of the decode memory budget (at most the whole budget) and holds them
    /// until the returned guard is dropped.
    async fn reserve_decode_memory(&self, bytes: u64) -> MemoryReservation {
        let permits = kib(bytes).min(kib(self.settings.decode.memory_budget_bytes));
        let permit = self.decode_memory.clone().acquire_many_owned(permits).await.expect("semaphore never closed");
        let bytes = i64::from(permits) * 1024;
        self.metrics.decode_memory_reserved.add(bytes);
        MemoryReservation { _permit: permit, bytes, metrics: self.metrics.clone() }
    }

    fn finish(&self, event: &UploadEvent, findings: Findings, signals: Signals, received: Instant) -> Verdict {
        let policy = self.policy.current();
        let bands = policy::bands_for(&policy, &event.tenant, event.surface.as_deref());
        let (action, reasons) = policy::decide(&findings, &policy, bands);
        for m in &findings.matches {
            self.metrics.matches.with_label_values(&[&m.bank, m.signal.as_str()]).inc();
        }
        if let Some(flood) = &self.flood {
            flood.observe(&findings.matches);
        }
        if let Some(e) = &findings.media_error {
            self.metrics.media_errors.with_label_values(&[&e.kind]).inc();
        }
        // Classifier scores are observed once, by the batcher that receives them from the model.
        Verdict {
            schema: VERDICT_SCHEMA.into(),
            event_id: event.event_id.clone(),
            media_id: event.media_id.clone(),
            tenant: event.tenant.clone(),
            surface: event.surface.clone(),
            action,
            reasons,
            signals,
            policy: policy.version.clone(),
            banks_version: None,
            decided_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            latency_ms: (received.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            attributes: event.attributes.clone(),
            retro: None,
            truncated: false,
        }
    }
}

fn exact_of(signals: &Signals) -> exact::ExactHashes {
    exact::ExactHashes {
        md5: signals.md5.clone().unwrap_or_default(),
        sha256: signals.sha256.clone().unwrap_or_default(),
    }
}

/// Media declared as something other than an image (video, audio, documents) is exact-hashed
/// only. Media declared as an image, or undeclared, must decode — or it gets a media error.
fn declared_non_image(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let ct = ct.trim().to_ascii_lowercase();
        !ct.is_empty() && !ct.starts_with("image/")
    })
}

/// The first CPU stage: exact hashes, what the bytes are, and for a decodable image its decode
/// plan. `Err` is the whole result (non-image media, an image that cannot be decoded).
fn inspect_blocking(
    bytes: &[u8],
    content_type: Option<&str>,
    limits: &DecodeLimits,
    metrics: &Metrics,
) -> Result<(Signals, decode::Plan), Examined> {
    let started = Instant::now();
    let hashes = exact::exact_hashes(bytes);
    metrics.observe_stage("exact_hash", started.elapsed().as_secs_f64());
    let signals = Signals { md5: Some(hashes.md5), sha256: Some(hashes.sha256), ..Default::default() };
    // The bytes decide, not the declaration: an image declared as video is decoded, and one in a
    // format that cannot be decoded is a media error, never an allow on exact hashes.
    match decode::sniff(bytes) {
        decode::Sniffed::NotImage if declared_non_image(content_type) => {
            let what = format!("non-image media declared {}: exact hashes only", content_type.unwrap_or_default().trim());
            return Err(Examined { signals, unscreened: Some(what), ..Default::default() });
        }
        decode::Sniffed::OtherImage(format) => {
            let detail = format!("{format} images cannot be decoded here, so their pixels cannot be screened");
            return Err(Examined::failed(signals, "unsupported_format", detail));
        }
        _ => {}
    }
    match decode::plan(bytes, limits) {
        Ok(plan) => Ok((signals, plan)),
        Err(e) => Err(Examined::failed(signals, e.kind(), e.to_string())),
    }
}

/// What PDQ and the scaling check make of one picture.
struct Hashed {
    pdq: Option<PdqSignal>,
    /// How far the `cli` convention's 512×512 sample disagrees with the picture, when over the
    /// threshold: an image-scaling attack?
    anomaly: Option<f32>,
}

fn hash_picture(image: &Image, work: &PixelWork, metrics: &Metrics) -> Hashed {
    if !work.pdq.enabled {
        return Hashed { pdq: None, anomaly: None };
    }
    let started = Instant::now();
    let pdq = if work.dihedral {
        let (all, quality) = pdq::hash_dihedral(image, work.pdq.convention);
        PdqSignal { hash: all[0], quality, dihedral: Some(all) }
    } else {
        let out = pdq::hash(image, work.pdq.convention);
        PdqSignal { hash: out.hash, quality: out.quality, dihedral: None }
    };
    metrics.observe_stage("pdq", started.elapsed().as_secs_f64());
    // The `cli` convention hashes a sparse 512×512 sample of a large image: one whose sampled
    // pixels alone were replaced would hash as anything. Such an image goes to review, and no
    // allowlist match lets it through (see `policy::action_of`).
    let anomaly = (work.pdq.convention == pdq::Convention::Cli)
        .then(|| pdq::sampling_disagreement(image))
        .flatten()
        .filter(|&d| d > pdq::SCALING_ANOMALY_THRESHOLD);
    Hashed { pdq: Some(pdq), anomaly }
}

fn scaling_anomaly(disagreement: f32, picture: &str) -> MediaErrorFinding {
    MediaErrorFinding {
        kind: SCALING_ANOMALY.into(),
        detail: format!(
            "the 512x512 sample the PDQ hash of {picture} is taken from disagrees with the picture ({disagreement:.1} luma levels, over {}): an image-scaling attack?",
            pdq::SCALING_ANOMALY_THRESHOLD
        ),
    }
}

/// The second CPU stage: decode the still image and hash it, then decode the animation frames
/// and hash (and preprocess) those screened, all before one deadline.
fn decode_blocking(
    bytes: &[u8],
    mut signals: Signals,
    plan: decode::Plan,
    limits: &DecodeLimits,
    work: &PixelWork,
    metrics: &Metrics,
) -> Examined {
    let deadline = Instant::now() + limits.deadline;
    let started = Instant::now();
    let decoded = decode::decode_until(bytes, limits, deadline);
    metrics.observe_stage("decode", started.elapsed().as_secs_f64());
    let image = match decoded {
        Ok(image) => image,
        Err(e) => return Examined::failed(signals, e.kind(), e.to_string()),
    };
    signals.width = Some(image.width);
    signals.height = Some(image.height);
    let still = hash_picture(&image, work, metrics);
    let mut media_error = still.anomaly.map(|d| scaling_anomaly(d, "the image"));
    let mut pdq: Vec<PdqSignal> = still.pdq.into_iter().collect();
    if let Some(p) = pdq.first() {
        signals.pdq = Some(p.hash.to_string());
        signals.pdq_quality = Some(p.quality);
    }
    let mut frame_inputs = Vec::new();
    if plan.animated {
        let mut screened = Spread::new(work.max_frames);
        let mut preprocess_error = None;
        let decoded = decode::animation_frames(bytes, limits, deadline, |index, frame| {
            if !screened.wants(index) {
                return;
            }
            let frame = frame.to_image();
            let hashed = hash_picture(&frame, work, metrics);
            let input = if work.classify_frames {
                match preprocess::preprocess(&frame) {
                    Ok(input) => Some(input),
                    Err(e) => {
                        preprocess_error.get_or_insert(e);
                        None
                    }
                }
            } else {
                None
            };
            screened.keep(index, (hashed, input));
        });
        let frames = screened.into_kept();
        signals.frames_screened = Some(frames.len() as u32);
        for (index, (hashed, input)) in frames {
            pdq.extend(hashed.pdq);
            frame_inputs.extend(input);
            if let (None, Some(d)) = (&media_error, hashed.anomaly) {
                media_error = Some(scaling_anomaly(d, &format!("animation frame {index}")));
            }
        }
        match decoded {
            Ok(count) => signals.frames = Some(count as u32),
            // What was screened still counts (a banned frame still blocks); the rest of the
            // animation was not screened, which must not pass as an allow.
            Err(e) => {
                media_error.get_or_insert(MediaErrorFinding { kind: e.kind().into(), detail: format!("animation: {e}") });
            }
        }
        if let Some(e) = preprocess_error {
            media_error.get_or_insert(MediaErrorFinding { kind: "classifier".into(), detail: format!("animation frame: {e}") });
        }
    }
    Examined { signals, image: Some(image), pdq, frame_inputs, media_error, is_image: true, ..Default::default() }
}

/// Keeps at most `cap` items of a stream of unknown length, spread evenly: every item until
/// the cap, then every second one, every fourth... (each time the kept ones overflow, the
/// stride doubles and the kept items off the new stride are dropped).
struct Spread<T> {
    cap: usize,
    stride: usize,
    kept: Vec<(usize, T)>,
}

impl<T> Spread<T> {
    fn new(cap: usize) -> Self {
        Self { cap: cap.max(1), stride: 1, kept: Vec::new() }
    }

    /// Whether the item at `index` would be kept (items are offered in order).
    fn wants(&self, index: usize) -> bool {
        index % self.stride == 0
    }

    fn keep(&mut self, index: usize, item: T) {
        self.kept.push((index, item));
        while self.kept.len() > self.cap {
            self.stride *= 2;
            let stride = self.stride;
            self.kept.retain(|(i, _)| i % stride == 0);
        }
    }

    fn into_kept(self) -> Vec<(usize, T)> {
        self.kept
    }
}

/// A share of the decode memory budget, given back (and taken off the gauge) when dropped.
struct MemoryReservation {
    _permit: tokio::sync::OwnedSemaphorePermit,
    bytes: i64,
    metrics: Arc<Metrics>,
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        self.metrics.decode_memory_reserved.sub(self.bytes);
    }
}

/// Semaphore permits for a number of bytes (the budget counts KiB, so permits fit in a u32).
fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_keeps_everything_up_to_the_cap_then_an_even_spread() {
        let run = |cap: usize, n: usize| {
            let mut spread = Spread::new(cap);
            for i in 0..n {
                if spread.wants(i) {
                    spread.keep(i, ());
                }
            }
            spread.into_kept().into_iter().map(|(i, _)| i).collect::<Vec<_>>()
        };
        assert_eq!(run(4, 3), vec![0, 1, 2]);
        assert_eq!(run(4, 4), vec![0, 1, 2, 3]);
        assert_eq!(run(4, 5), vec![0, 2, 4]);
        assert_eq!(run(16, 1000).len(), 16, "{:?}", run(16, 1000));
        let kept = run(16, 1000);
        let gaps: Vec<usize> = kept.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g == gaps[0]), "evenly spread: {kept:?}");
        assert!(*kept.last().unwrap() >= 1000 - gaps[0], "reaches the end: {kept:?}");
        for n in 1..200 {
            let kept = run(7, n);
            assert!(!kept.is_empty() && kept.len() <= 7 && kept[0] == 0, "{n}: {kept:?}");
        }
    }
}
