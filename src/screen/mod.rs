//! The screen: one event's media → signals → verdict. Knows nothing about Kafka; the worker,
//! the `scan` command and the tests all call it.
//!
//! Media is fetched once and decoded once; PDQ and the classifier share the pixels. CPU work runs
//! on blocking threads, at most `worker.cpu_threads` at a time, never on the async runtime. What
//! the bytes alone decide is kept in a [`cache::ScreenCache`] by SHA-256, so a re-upload skips the
//! decode, hashing and inference; bank matching and the policy run for every upload.

pub mod cache;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::bank::flood::FloodWatch;
use crate::bank::{BankMatch, BankSet, PdqSignal, Signal, MAX_MORE_PDQ_IN_VERDICT};
use crate::classify::{preprocess, ClassifyError, ImageScorer};
use crate::config::Settings;
use crate::event::{Action, Signals, UploadEvent, Verdict, VideoSignals, MAX_VPDQ_IN_VERDICT, VERDICT_SCHEMA};
use crate::hash::vpdq::{self, VpdqFeature};
use crate::hash::pdq::PdqHash;
use crate::hash::{exact, pdq};
use crate::live_policy::LivePolicy;
use crate::media::decode::{self, DecodeLimits, Image};
use crate::media::fetch::{FetchError, MediaFetcher};
use crate::media::video::{self, VideoRun};
use crate::metrics::Metrics;
use crate::policy::{self, ClassifierFinding, Findings, MediaErrorFinding, SCALING_ANOMALY};
use cache::{Learned, ScreenCache};

/// Media up to this size is hashed and inspected on the task's own thread: tens of
/// microseconds, less than handing it to a blocking thread and back costs (two thread wake-ups
/// per event, a tenth of an exact-only worker's CPU). Larger media go to the CPU pool.
const INSPECT_INLINE_MAX: usize = 64 * 1024;

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
    /// What the screen learned per media SHA-256; `None` when `cache.max_entries` is 0.
    cache: Option<Arc<ScreenCache>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScreenError {
    #[error("media fetcher: {0}")]
    Fetcher(#[from] FetchError),
}

/// One decode's pixels, for the classifier and the allowlist confirmation. Never cached.
struct Pixels {
    /// The still image (shared with the CPU pool's work, never copied); `None` for a video.
    image: Option<Arc<Image>>,
    /// The animation or video frames screened, preprocessed for the classifier (none without
    /// one), with a video frame's timestamp.
    frame_inputs: Vec<(Option<f64>, Vec<f32>)>,
    /// The decode's share of the memory budget, held while the pixels live.
    _memory: MemoryReservation,
}

/// The media being screened: its bytes (kept to decode again when a cached entry lacks what
/// this upload needs) and its declared type.
struct Media {
    bytes: Arc<Vec<u8>>,
    content_type: Option<String>,
}

impl Learned {
    fn failed(signals: Signals, kind: &str, detail: String) -> Self {
        let media_error = Some(MediaErrorFinding { kind: kind.into(), detail });
        Learned { signals, media_error, is_image: true, ..Default::default() }
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

/// What one upload still needs beyond what was learned from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Needs {
    score: bool,
    full_pdq: bool,
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
        let cache = (settings.cache.max_entries > 0)
            .then(|| Arc::new(ScreenCache::new(settings.cache.max_entries, settings.cache.max_bytes, metrics.clone())));
        Ok(Self {
            fetcher: MediaFetcher::with_video_max_bytes(&settings.media, settings.video.max_bytes)?,
            policy: Arc::new(LivePolicy::new(settings.policy.clone())),
            settings,
            banks,
            classifier,
            cpu: Arc::new(Semaphore::new(threads)),
            decode_memory: Arc::new(Semaphore::new(memory_kib as usize)),
            metrics,
            mode,
            flood: None,
            cache,
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

    /// Shares `cache` (tests: two screens, one cache) instead of this screen's own.
    pub fn with_cache(mut self, cache: Option<Arc<ScreenCache>>) -> Self {
        self.cache = cache;
        self
    }

    /// This screen's cache, to share or inspect.
    pub fn cache(&self) -> Option<Arc<ScreenCache>> {
        self.cache.clone()
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
        let media = Media { bytes: Arc::new(bytes), content_type: event.content_type.clone() };
        let (mut learned, mut pixels, key) = self.learn(&media).await;
        let started = Instant::now();
        let mut banks = self.banks.match_media(&exact_of(&learned.signals), &learned.pdq, &learned.vpdq);
        self.metrics.observe_stage("match", started.elapsed().as_secs_f64());
        // A cached entry may lack what this upload needs now (the image was blocked when it was
        // first seen, so never scored): fill it in from the pixels, decoding again if need be.
        let needs = self.needs(&learned, &banks.matches);
        if self.lacks(&learned, needs) {
            let mut more = (*learned).clone();
            self.complete(&mut more, &mut pixels, &media, needs).await;
            learned = Arc::new(more);
            if let (Some(cache), Some(key)) = (&self.cache, key) {
                cache.update(key, learned.clone()).await;
            }
        }
        drop(pixels);
        self.confirm_allowlist(&mut banks.matches, learned.full_pdq.as_ref());
        let mut findings = Findings {
            matches: banks.matches,
            low_quality: banks.low_quality,
            media_error: learned.media_error.clone(),
            unscreened: learned.unscreened.clone(),
            ..Default::default()
        };
        if learned.decoded {
            match (&self.classifier, needs.score) {
                (None, _) => self.metrics.classifier_skipped.with_label_values(&["disabled"]).inc(),
                (Some(_), false) => self.metrics.classifier_skipped.with_label_values(&["blocked_by_hash"]).inc(),
                (Some(_), true) => findings.classifier = learned.classifier.clone(),
            }
        } else if !learned.is_image {
            self.metrics.classifier_skipped.with_label_values(&["not_image"]).inc();
        }
        let mut signals = learned.signals.clone();
        if learned.is_video && !learned.vpdq.is_empty() {
            signals.vpdq = Some(verdict_features(&learned.vpdq));
        }
        let mut verdict = self.finish(event, findings, signals, received);
        verdict.banks_version = banks.version;
        verdict
    }

    /// What the bytes tell, from the cache when an upload of the same bytes was screened before
    /// (concurrent uploads of one new image are screened once), else from a decode. Returns the
    /// pixels when this call decoded them, and the cache key.
    async fn learn(&self, media: &Media) -> (Arc<Learned>, Option<Pixels>, Option<[u8; 32]>) {
        let limits = self.limits();
        let metrics = self.metrics.clone();
        let inspected = if media.bytes.len() <= INSPECT_INLINE_MAX {
            Ok(inspect_blocking(&media.bytes, media.content_type.as_deref(), &limits, &metrics))
        } else {
            let (bytes, content_type) = (media.bytes.clone(), media.content_type.clone());
            self.on_cpu(move || inspect_blocking(&bytes, content_type.as_deref(), &limits, &metrics)).await
        };
        let (signals, plan) = match inspected {
            Ok(Inspected::Image(signals, plan)) => (signals, Some(plan)),
            Ok(Inspected::Video(signals)) => (signals, None),
            Ok(Inspected::Done(learned)) => return (Arc::new(learned), None, None),
            Err(e) => return (Arc::new(Learned::failed(Signals::default(), "internal", e.to_string())), None, None),
        };
        let key = signals.sha256.as_deref().and_then(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?).ok());
        let (Some(cache), Some(key)) = (&self.cache, key) else {
            let (mut learned, mut pixels) = self.decode_any(media, signals, plan).await;
            self.complete_fresh(&mut learned, &mut pixels, media).await;
            return (Arc::new(learned), pixels, None);
        };
        // The computing caller keeps its pixels; callers that waited for it get none.
        let slot = Mutex::new(None);
        let (learned, _fresh) = cache
            .get_or_learn(key, async {
                let (mut learned, mut pixels) = self.decode_any(media, signals, plan).await;
                self.complete_fresh(&mut learned, &mut pixels, media).await;
                *slot.lock().expect("slot") = pixels;
                Arc::new(learned)
            })
            .await;
        (learned, slot.into_inner().expect("slot"), Some(key))
    }

    /// After a fresh decode: what the upload needs on the banks as they are now, so that
    /// concurrent duplicates waiting for this one find it done.
    async fn complete_fresh(&self, learned: &mut Learned, pixels: &mut Option<Pixels>, media: &Media) {
        let matches = self.banks.match_media(&exact_of(&learned.signals), &learned.pdq, &learned.vpdq).matches;
        let needs = self.needs(learned, &matches);
        self.complete(learned, pixels, media, needs).await;
    }

    /// What the verdict on these matches needs from the pixels: a classifier score (unless a
    /// bank blocks and this is a worker), the full-resolution hash (an allowlist PDQ match of a
    /// resampled image, see [`Screen::confirm_allowlist`]).
    fn needs(&self, learned: &Learned, matches: &[BankMatch]) -> Needs {
        let blocked = matches.iter().any(|m| m.action == Action::Block);
        let resampled = learned.signals.width.zip(learned.signals.height).is_some_and(|(w, h)| {
            w as usize > pdq::CLI_SIDE || h as usize > pdq::CLI_SIDE
        });
        Needs {
            score: learned.decoded && self.classifier.is_some() && (self.mode == Mode::ScoreAll || !blocked),
            full_pdq: learned.decoded
                && !learned.is_video
                && resampled
                && self.settings.pdq.enabled
                && self.settings.pdq.convention == pdq::Convention::Cli
                && matches.iter().any(|m| m.action == Action::Allow && m.signal == Signal::Pdq),
        }
    }

    fn lacks(&self, learned: &Learned, needs: Needs) -> bool {
        let scored_by_this_model = learned.classifier.as_ref().zip(self.classifier.as_ref()).is_some_and(|(finding, model)| {
            finding.model == model.model_name() && model.model_sha256().starts_with(finding.model_sha256.as_str())
        });
        (needs.score && !scored_by_this_model) || (needs.full_pdq && learned.full_pdq.is_none())
    }

    /// Fills in what `needs` asks and `learned` lacks, from `pixels` or from a fresh decode.
    async fn complete(&self, learned: &mut Learned, pixels: &mut Option<Pixels>, media: &Media, needs: Needs) {
        if !self.lacks(learned, needs) {
            return;
        }
        if pixels.is_none() {
            let plan = if learned.is_video {
                None
            } else {
                let Ok(plan) = decode::plan(&media.bytes, &self.limits()) else { return };
                Some(plan)
            };
            let (again, decoded) = self.decode_any(media, learned.signals.clone(), plan).await;
            if decoded.is_none() {
                learned.media_error.get_or_insert(again.media_error.unwrap_or_else(|| MediaErrorFinding {
                    kind: "internal".into(),
                    detail: "the media decoded before did not decode again".into(),
                }));
                return;
            }
            *pixels = decoded;
        }
        let Some(p) = pixels.as_ref() else { return };
        if let (true, None, Some(image)) = (needs.full_pdq, &learned.full_pdq, &p.image) {
            let image = image.clone();
            let dihedral = self.banks.any_dihedral();
            learned.full_pdq = self.on_cpu(move || pdq_signal(&image, pdq::Convention::Full, dihedral)).await.ok();
        }
        if needs.score {
            if let Some(classifier) = &self.classifier {
                // The classifier is last and lets the pixels go once they are preprocessed (a
                // later need decodes again, which is rare).
                let p = pixels.take().expect("checked above");
                match self.classify(classifier.as_ref(), p).await {
                    Ok(finding) => learned.classifier = Some(finding),
                    Err(e) => {
                        learned.media_error.get_or_insert(MediaErrorFinding { kind: "classifier".into(), detail: e.to_string() });
                    }
                }
            }
        }
    }

    /// An allowlist PDQ match under the `cli` convention rests on a 512×512 sample of the image,
    /// which an image-scaling attack controls below the scaling check's threshold too. So it
    /// allows only when the full image (the `full` convention) also matches that allowlist
    /// entry; otherwise it is marked unconfirmed and allows nothing. The full-resolution hash is
    /// taken only for images over 512 px that match an allowlist by PDQ (animation frames are
    /// not confirmed one by one: the still image stands for them).
    fn confirm_allowlist(&self, matches: &mut [BankMatch], full: Option<&PdqSignal>) {
        let needs = |m: &BankMatch| m.action == Action::Allow && m.signal == Signal::Pdq;
        if self.settings.pdq.convention != pdq::Convention::Cli || !matches.iter().any(needs) {
            return;
        }
        let Some(full) = full else {
            // Not resampled (cli and full hash the same pixels) or not decoded: nothing to confirm.
            return;
        };
        let none = exact::ExactHashes { md5: String::new(), sha256: String::new() };
        let confirmed: Vec<_> =
            self.banks.match_media(&none, std::slice::from_ref(full), &[]).matches.into_iter().map(|m| (m.bank, m.hash)).collect();
        for m in matches.iter_mut().filter(|m| needs(m)) {
            m.unconfirmed = !confirmed.iter().any(|(bank, hash)| *bank == m.bank && *hash == m.hash);
        }
    }

    /// Scores the still image and any animation frames screened; the finding is the highest
    /// score, so the upload falls in the band of its worst picture. The pixels (and their share
    /// of the decode memory budget) are let go as soon as they are preprocessed: under load most
    /// of an upload's life is the wait for inference, and a decoded photo is many times the size
    /// of its model input.
    async fn classify(&self, classifier: &dyn ImageScorer, pixels: Pixels) -> Result<ClassifierFinding, ClassifyError> {
        let started = Instant::now();
        // Announced before preprocessing, so a batch forming meanwhile waits for this image (and
        // the frames are announced before any is sent, so they go in one batch).
        let announced = classifier.announce();
        let Pixels { image, mut frame_inputs, _memory: memory } = pixels;
        if let Some(image) = image {
            let input = self
                .on_cpu(move || preprocess::preprocess(&image))
                .await
                .map_err(|e| ClassifyError::Preprocess(format!("preprocessing thread: {e}")))??;
            frame_inputs.insert(0, (None, input));
        }
        drop(memory);
        // All at once, so the batcher can put the frames in one batch (the first was announced
        // before preprocessing).
        let mut announced = Some(announced);
        let (times, inputs): (Vec<_>, Vec<_>) = frame_inputs.into_iter().unzip();
        let scores = futures::future::join_all(
            inputs.into_iter().map(|input| classifier.score(input, announced.take().unwrap_or_else(|| classifier.announce()))),
        )
        .await;
        let (mut score, mut at) = (f32::MIN, None);
        for (s, time) in scores.into_iter().zip(times) {
            let nsfw = s?.nsfw;
            if nsfw > score {
                (score, at) = (nsfw, time);
            }
        }
        self.metrics.observe_stage("classify", started.elapsed().as_secs_f64());
        Ok(ClassifierFinding {
            model: classifier.model_name().to_string(),
            model_sha256: classifier.model_sha256().chars().take(12).collect(),
            label: "nsfw".into(),
            score,
            at,
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

    fn limits(&self) -> DecodeLimits {
        let d = &self.settings.decode;
        DecodeLimits {
            max_pixels: d.max_pixels,
            max_side: d.max_side,
            max_bytes: d.max_bytes,
            deadline: Duration::from_millis(d.deadline_ms),
        }
    }

    /// An image's decode (with its plan) or a video's (without).
    async fn decode_any(&self, media: &Media, signals: Signals, plan: Option<decode::Plan>) -> (Learned, Option<Pixels>) {
        match plan {
            Some(plan) => self.decode(media, signals, plan).await,
            None => self.decode_video(media, signals).await,
        }
    }

    /// A video, decoded by the helper process: every sampled frame hashed as vpdq hashes it (and
    /// in the banks' PDQ convention, for the image banks), up to `video.max_classified_frames`
    /// of them, spread over the video, preprocessed for the classifier. Frames hashed before an
    /// error still count; the error is the upload's media error.
    async fn decode_video(&self, media: &Media, mut signals: Signals) -> (Learned, Option<Pixels>) {
        let v = &self.settings.video;
        // Frames read ahead and the one being read, 3 bytes a pixel each, and the one being hashed
        // with PDQ's float buffers (8 more bytes a pixel): each frame at most max_pixels.
        let per_pixel = 3 * (video::READ_AHEAD as u64 + 2) + 8;
        let in_flight = per_pixel.saturating_mul(v.max_pixels);
        let memory = self.reserve_decode_memory(in_flight).await;
        let started = Instant::now();
        let work = FrameWork {
            convention: self.settings.pdq.enabled.then_some(self.settings.pdq.convention),
            dihedral: self.banks.any_dihedral(),
        };
        let classify = self.classifier.is_some() && v.max_classified_frames > 0;
        let mut scored = Spread::new(v.max_classified_frames);
        let mut learned = Learned { is_video: true, ..Default::default() };
        let mut preprocess_error = None;
        let mut run = VideoRun::start(&media.bytes, &v.limits());
        let mut sampled = 0;
        while let Some(frame) = run.next_frame().await {
            let preprocess = classify && scored.wants(sampled);
            match self.on_cpu(move || hash_video_frame(frame, work, preprocess)).await {
                Ok(hashed) => {
                    learned.vpdq.push(hashed.feature);
                    learned.pdq.extend(hashed.pdq);
                    match hashed.input {
                        Some(Ok(input)) => scored.keep(sampled, (Some(to_millis(hashed.feature.timestamp)), input)),
                        Some(Err(e)) => {
                            preprocess_error.get_or_insert(e);
                        }
                        None => {}
                    }
                }
                Err(e) => {
                    learned.media_error = Some(MediaErrorFinding { kind: "internal".into(), detail: format!("hashing a video frame: {e}") });
                    break;
                }
            }
            sampled += 1;
        }
        let decoded = run.finish().await;
        self.metrics.video_decode_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.video_frames_hashed.inc_by(learned.vpdq.len() as u64);
        self.metrics.video_helper_exits.with_label_values(&[decoded.error.as_ref().map_or("ok", |e| e.cause())]).inc();
        if let Some(info) = &decoded.info {
            signals.width = Some(info.width);
            signals.height = Some(info.height);
        }
        let frame_inputs = scored.into_kept().into_iter().map(|(_, input)| input).collect::<Vec<_>>();
        signals.video = decoded.info.as_ref().map(|info| VideoSignals {
            container: info.container.clone(),
            codec: info.codec.clone(),
            duration_s: info.duration_s,
            frame_rate: info.frame_rate,
            frames_decoded: decoded.frames_decoded,
            frames_hashed: learned.vpdq.len() as u32,
            frames_classified: frame_inputs.len() as u32,
        });
        learned.signals = signals;
        learned.decoded = !learned.vpdq.is_empty();
        match decoded.error {
            // Audio, or another stream with no pictures: nothing to screen but the bytes.
            Some(e) if e.kind() == video::NO_VIDEO_STREAM => {
                learned.unscreened = Some(format!("media without a video stream ({e}): exact hashes only"));
            }
            Some(e) => {
                learned.media_error.get_or_insert(MediaErrorFinding { kind: e.kind().to_string(), detail: e.to_string() });
            }
            None => {}
        }
        if let Some(e) = preprocess_error {
            learned.media_error.get_or_insert(MediaErrorFinding { kind: "classifier".into(), detail: format!("video frame: {e}") });
        }
        let pixels = learned.decoded.then(|| Pixels { image: None, frame_inputs, _memory: memory });
        (learned, pixels)
    }

    /// A share of the decode memory budget, then the decode and PDQ hashing of the still image
    /// and the animation frames. The pixels come back unless decoding failed.
    async fn decode(&self, media: &Media, signals: Signals, plan: decode::Plan) -> (Learned, Option<Pixels>) {
        let memory = self.reserve_decode_memory(plan.bytes).await;
        let work = PixelWork {
            pdq: self.settings.pdq.clone(),
            dihedral: self.banks.any_dihedral(),
            classify_frames: self.classifier.is_some(),
            max_frames: self.settings.decode.max_frames,
        };
        let (bytes, limits, metrics) = (media.bytes.clone(), self.limits(), self.metrics.clone());
        match self.on_cpu(move || decode_blocking(&bytes, signals, plan, &limits, &work, &metrics)).await {
            Ok((learned, Some((image, frame_inputs)))) => {
                let frame_inputs = frame_inputs.into_iter().map(|input| (None, input)).collect();
                (learned, Some(Pixels { image: Some(Arc::new(image)), frame_inputs, _memory: memory }))
            }
            Ok((learned, None)) => (learned, None),
            Err(e) => (Learned::failed(Signals::default(), "internal", e.to_string()), None),
        }
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

fn declared_video(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with("video/"))
}

/// Media declared as something other than an image (video, audio, documents) is exact-hashed
/// only. Media declared as an image, or undeclared, must decode — or it gets a media error.
fn declared_non_image(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let ct = ct.trim().to_ascii_lowercase();
        !ct.is_empty() && !ct.starts_with("image/")
    })
}

/// What the first CPU stage found the bytes to be.
enum Inspected {
    /// A decodable image, with its decode plan.
    Image(Signals, decode::Plan),
    /// A video container: the helper decodes it.
    Video(Signals),
    /// The whole result (non-image media, an image that cannot be decoded).
    Done(Learned),
}

/// The first CPU stage: exact hashes, what the bytes are, and for a decodable image its decode
/// plan.
fn inspect_blocking(bytes: &[u8], content_type: Option<&str>, limits: &DecodeLimits, metrics: &Metrics) -> Inspected {
    match inspect_bytes(bytes, content_type, limits, metrics) {
        Ok((signals, Some(plan))) => Inspected::Image(signals, plan),
        Ok((signals, None)) => Inspected::Video(signals),
        Err(learned) => Inspected::Done(learned),
    }
}

/// [`inspect_blocking`]'s work: `Ok` with no plan for a video, `Err` for the whole result.
fn inspect_bytes(
    bytes: &[u8],
    content_type: Option<&str>,
    limits: &DecodeLimits,
    metrics: &Metrics,
) -> Result<(Signals, Option<decode::Plan>), Learned> {
    let started = Instant::now();
    let hashes = exact::exact_hashes(bytes);
    metrics.observe_stage("exact_hash", started.elapsed().as_secs_f64());
    let signals = Signals { md5: Some(hashes.md5), sha256: Some(hashes.sha256), ..Default::default() };
    // The bytes decide, not the declaration: an image declared as video is decoded, and one in a
    // format that cannot be decoded is a media error, never an allow on exact hashes.
    match decode::sniff(bytes) {
        decode::Sniffed::Video(_) => return Ok((signals, None)),
        // A declared video in a container the signatures miss: the helper probes it (a media
        // error if it is no video at all, never an allow on exact hashes).
        decode::Sniffed::NotImage if declared_video(content_type) && !bytes.is_empty() => return Ok((signals, None)),
        decode::Sniffed::NotImage if declared_non_image(content_type) => {
            let what = format!("non-image media declared {}: exact hashes only", content_type.unwrap_or_default().trim());
            return Err(Learned { signals, unscreened: Some(what), ..Default::default() });
        }
        decode::Sniffed::OtherImage(format) => {
            let detail = format!("{format} images cannot be decoded here, so their pixels cannot be screened");
            return Err(Learned::failed(signals, "unsupported_format", detail));
        }
        _ => {}
    }
    match decode::plan(bytes, limits) {
        Ok(plan) => Ok((signals, Some(plan))),
        Err(e) => Err(Learned::failed(signals, e.kind(), e.to_string())),
    }
}

/// What PDQ and the scaling check make of one picture.
struct Hashed {
    pdq: Option<PdqSignal>,
    /// How far the `cli` convention's 512×512 sample disagrees with the picture, when over the
    /// threshold: an image-scaling attack?
    anomaly: Option<f32>,
    /// With an anomaly: the hash of what viewers see (the full resolution), matched against
    /// every bank so that the attacker does not choose the outcome.
    viewed: Option<PdqSignal>,
}

fn hash_picture(image: &Image, work: &PixelWork, metrics: &Metrics) -> Hashed {
    if !work.pdq.enabled {
        return Hashed { pdq: None, anomaly: None, viewed: None };
    }
    let started = Instant::now();
    let pdq = pdq_signal(image, work.pdq.convention, work.dihedral);
    metrics.observe_stage("pdq", started.elapsed().as_secs_f64());
    // The `cli` convention hashes a sparse 512×512 sample of a large image: one whose sampled
    // pixels alone were replaced would hash as anything. Such an image goes to review, and no
    // allowlist match lets it through (see `policy::action_of`).
    let anomaly = (work.pdq.convention == pdq::Convention::Cli)
        .then(|| pdq::sampling_disagreement(image))
        .flatten()
        .filter(|&d| d > pdq::SCALING_ANOMALY_THRESHOLD);
    let viewed = anomaly.map(|_| PdqSignal { full_resolution: true, ..pdq_signal(image, pdq::Convention::Full, work.dihedral) });
    Hashed { pdq: Some(pdq), anomaly, viewed }
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
) -> (Learned, Option<(Image, Vec<Vec<f32>>)>) {
    let deadline = Instant::now() + limits.deadline;
    let started = Instant::now();
    let decoded = decode::decode_until(bytes, limits, deadline);
    metrics.observe_stage("decode", started.elapsed().as_secs_f64());
    let image = match decoded {
        Ok(image) => image,
        Err(e) => return (Learned::failed(signals, e.kind(), e.to_string()), None),
    };
    signals.width = Some(image.width);
    signals.height = Some(image.height);
    let still = hash_picture(&image, work, metrics);
    let mut media_error = still.anomaly.map(|d| scaling_anomaly(d, "the image"));
    let mut pdq = Pictures::default();
    if let Some(p) = &still.pdq {
        signals.pdq = Some(p.hash.to_string());
        signals.pdq_quality = Some(p.quality);
        signals.pdq_dihedral = p.dihedral.map(|all| all[1..].iter().map(PdqHash::to_string).collect());
    }
    pdq.extend(still.pdq);
    pdq.extend(still.viewed.clone());
    let mut frame_inputs = Vec::new();
    if plan.animated {
        // Every frame is hashed and matched (PDQ is cheap next to decoding); only a spread of
        // them is scored by the classifier.
        let mut scored = Spread::new(work.max_frames);
        let mut preprocess_error = None;
        let mut screened = 0;
        let decoded = decode::animation_frames(bytes, limits, deadline, |index, frame| {
            let at = frame.at_seconds();
            let frame = frame.to_image();
            let hashed = hash_picture(&frame, work, metrics);
            screened += u32::from(hashed.pdq.is_some() || work.classify_frames);
            if let (None, Some(d)) = (&media_error, hashed.anomaly) {
                media_error = Some(scaling_anomaly(d, &format!("animation frame {index}")));
            }
            for mut signal in hashed.pdq.into_iter().chain(hashed.viewed) {
                signal.at = Some(at);
                pdq.push(signal);
            }
            if work.classify_frames && scored.wants(index) {
                match preprocess::preprocess(&frame) {
                    Ok(input) => scored.keep(index, input),
                    Err(e) => {
                        preprocess_error.get_or_insert(e);
                    }
                }
            }
        });
        signals.frames_screened = Some(screened);
        frame_inputs.extend(scored.into_kept().into_iter().map(|(_, input)| input));
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
    let pdq = pdq.into_vec();
    if pdq.len() > 1 {
        signals.more_pdq = Some(pdq[1..].iter().take(MAX_MORE_PDQ_IN_VERDICT).map(PdqSignal::to_item).collect());
    }
    let full_pdq = still.viewed;
    let learned = Learned { signals, pdq, media_error, full_pdq, is_image: true, decoded: true, ..Default::default() };
    (learned, Some((image, frame_inputs)))
}

/// An image's PDQ hashes, each distinct one once (an animation repeats its frames): the still
/// image's first.
#[derive(Default)]
struct Pictures {
    list: Vec<PdqSignal>,
    seen: HashSet<(PdqHash, bool)>,
}

impl Pictures {
    fn push(&mut self, signal: PdqSignal) {
        if self.seen.insert((signal.hash, signal.full_resolution)) {
            self.list.push(signal);
        }
    }

    fn extend(&mut self, signals: impl IntoIterator<Item = PdqSignal>) {
        for signal in signals {
            self.push(signal);
        }
    }

    fn into_vec(self) -> Vec<PdqSignal> {
        self.list
    }
}

/// How a video frame is hashed for the image banks: their convention (`None`: PDQ is off), and
/// all 8 transforms when a bank asks for them.
#[derive(Debug, Clone, Copy)]
struct FrameWork {
    convention: Option<pdq::Convention>,
    dihedral: bool,
}

struct HashedFrame {
    feature: VpdqFeature,
    pdq: Option<PdqSignal>,
    input: Option<Result<Vec<f32>, ClassifyError>>,
}

/// One sampled video frame: its vPDQ feature (PDQ of the full frame), its PDQ signal for the
/// image banks (the same hash unless their convention or dihedral matching needs another), and
/// its classifier input when it is one of those scored.
fn hash_video_frame(frame: video::Frame, work: FrameWork, preprocess: bool) -> HashedFrame {
    let feature = VpdqFeature::of_frame(frame.number, frame.timestamp, &frame.image);
    let resampled = |c| c == pdq::Convention::Cli && (frame.image.width.max(frame.image.height) as usize > pdq::CLI_SIDE);
    let pdq = work.convention.map(|convention| {
        let mut signal = if work.dihedral || resampled(convention) {
            pdq_signal(&frame.image, convention, work.dihedral)
        } else {
            PdqSignal::new(feature.hash, feature.quality)
        };
        signal.at = Some(to_millis(feature.timestamp));
        signal
    });
    let input = preprocess.then(|| preprocess::preprocess(&frame.image));
    HashedFrame { feature, pdq, input }
}

/// A video's features as its verdict carries them: exact duplicates left out (the matcher drops
/// them first), at most `MAX_VPDQ_IN_VERDICT`, spread evenly.
fn verdict_features(features: &[VpdqFeature]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut kept = Spread::new(MAX_VPDQ_IN_VERDICT);
    for (i, f) in features.iter().filter(|f| seen.insert(f.hash)).enumerate() {
        if kept.wants(i) {
            kept.keep(i, vpdq::signal_item(f));
        }
    }
    kept.into_kept().into_iter().map(|(_, item)| item).collect()
}

/// A frame's timestamp as reasons give it: milliseconds (vpdq's are float32 quotients).
fn to_millis(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// A picture's PDQ hash in `convention` (all 8 transforms when a bank asks for them).
fn pdq_signal(image: &Image, convention: pdq::Convention, dihedral: bool) -> PdqSignal {
    if dihedral {
        let (all, quality) = pdq::hash_dihedral(image, convention);
        PdqSignal { dihedral: Some(all), ..PdqSignal::new(all[0], quality) }
    } else {
        let out = pdq::hash(image, convention);
        PdqSignal::new(out.hash, out.quality)
    }
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
