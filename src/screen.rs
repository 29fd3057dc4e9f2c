//! The screen: one event's media → signals → verdict. Knows nothing about Kafka; the worker,
//! the `scan` command and the tests all call it.
//!
//! Media is fetched once and decoded once; PDQ and the classifier share the pixels. CPU work runs
//! on blocking threads, at most `worker.cpu_threads` at a time, never on the async runtime.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::bank::flood::FloodWatch;
use crate::bank::{BankSet, PdqSignal};
use crate::classify::{preprocess, ClassifyError, ImageScorer};
use crate::config::Settings;
use crate::event::{Action, Signals, UploadEvent, Verdict, VERDICT_SCHEMA};
use crate::hash::{exact, pdq};
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
    metrics: Arc<Metrics>,
    mode: Mode,
    /// Workers count matches per entry to catch a flooding one (see `bank::flood`).
    flood: Option<Arc<FloodWatch>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScreenError {
    #[error("media fetcher: {0}")]
    Fetcher(#[from] FetchError),
}

/// What the CPU stage produced from the media bytes.
struct Examined {
    signals: Signals,
    image: Option<Image>,
    pdq: Option<PdqSignal>,
    media_error: Option<MediaErrorFinding>,
    is_image: bool,
    /// Non-image media: what was not screened.
    unscreened: Option<String>,
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
        Ok(Self {
            fetcher: MediaFetcher::new(&settings.media)?,
            settings,
            banks,
            classifier,
            cpu: Arc::new(Semaphore::new(threads)),
            metrics,
            mode,
            flood: None,
        })
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
        let banks = self.banks.match_media(&exact_of(&examined.signals), examined.pdq.as_ref());
        self.metrics.observe_stage("match", started.elapsed().as_secs_f64());
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
            (Some(classifier), Some(image)) => match self.classify(classifier.as_ref(), image).await {
                Ok(finding) => findings.classifier = Some(finding),
                Err(e) => {
                    findings.media_error.get_or_insert(MediaErrorFinding { kind: "classifier".into(), detail: e.to_string() });
                }
            },
        }
        let mut verdict = self.finish(event, findings, examined.signals, received);
        verdict.banks_version = banks_version;
        verdict
    }

    async fn classify(&self, classifier: &dyn ImageScorer, image: Image) -> Result<ClassifierFinding, ClassifyError> {
        let started = Instant::now();
        let input = self
            .on_cpu(move || preprocess::preprocess(&image))
            .await
            .map_err(|e| ClassifyError::Preprocess(format!("preprocessing thread: {e}")))??;
        let score = classifier.score(input).await?;
        self.metrics.observe_stage("classify", started.elapsed().as_secs_f64());
        Ok(ClassifierFinding {
            model: classifier.model_name().to_string(),
            model_sha256: classifier.model_sha256().chars().take(12).collect(),
            label: "nsfw".into(),
            score: score.nsfw,
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

    async fn examine(&self, bytes: Vec<u8>, content_type: Option<String>) -> Examined {
        let limits = DecodeLimits { max_pixels: self.settings.decode.max_pixels, max_side: self.settings.decode.max_side };
        let pdq_settings = self.settings.pdq.clone();
        let dihedral = self.banks.any_dihedral();
        let metrics = self.metrics.clone();
        let examined = self
            .on_cpu(move || examine_blocking(&bytes, content_type.as_deref(), &limits, &pdq_settings, dihedral, &metrics))
            .await;
        examined.unwrap_or_else(|e| Examined {
            signals: Signals::default(),
            image: None,
            pdq: None,
            media_error: Some(MediaErrorFinding { kind: "internal".into(), detail: e.to_string() }),
            is_image: false,
            unscreened: None,
        })
    }

    fn finish(&self, event: &UploadEvent, findings: Findings, signals: Signals, received: Instant) -> Verdict {
        let policy = &self.settings.policy;
        let bands = policy::bands_for(policy, &event.tenant, event.surface.as_deref());
        let (action, reasons) = policy::decide(&findings, policy, bands);
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

fn examine_blocking(
    bytes: &[u8],
    content_type: Option<&str>,
    limits: &DecodeLimits,
    pdq_settings: &crate::config::PdqSettings,
    dihedral: bool,
    metrics: &Metrics,
) -> Examined {
    let started = Instant::now();
    let hashes = exact::exact_hashes(bytes);
    metrics.observe_stage("exact_hash", started.elapsed().as_secs_f64());
    let mut signals = Signals { md5: Some(hashes.md5), sha256: Some(hashes.sha256), ..Default::default() };
    // The bytes decide, not the declaration: an image declared as video is decoded, and one in a
    // format that cannot be decoded is a media error, never an allow on exact hashes.
    match decode::sniff(bytes) {
        decode::Sniffed::NotImage if declared_non_image(content_type) => {
            let what = format!("non-image media declared {}: exact hashes only", content_type.unwrap_or_default().trim());
            return Examined { signals, image: None, pdq: None, media_error: None, is_image: false, unscreened: Some(what) };
        }
        decode::Sniffed::OtherImage(format) => {
            let media_error = Some(MediaErrorFinding {
                kind: "unsupported_format".into(),
                detail: format!("{format} images cannot be decoded here, so their pixels cannot be screened"),
            });
            return Examined { signals, image: None, pdq: None, media_error, is_image: true, unscreened: None };
        }
        _ => {}
    }
    let started = Instant::now();
    let decoded = decode::decode(bytes, limits);
    metrics.observe_stage("decode", started.elapsed().as_secs_f64());
    let image = match decoded {
        Ok(image) => image,
        Err(e) => {
            let media_error = Some(MediaErrorFinding { kind: e.kind().into(), detail: e.to_string() });
            return Examined { signals, image: None, pdq: None, media_error, is_image: true, unscreened: None };
        }
    };
    signals.width = Some(image.width);
    signals.height = Some(image.height);
    let pdq = pdq_settings.enabled.then(|| {
        let started = Instant::now();
        let signal = if dihedral {
            let (all, quality) = pdq::hash_dihedral(&image, pdq_settings.convention);
            PdqSignal { hash: all[0], quality, dihedral: Some(all) }
        } else {
            let out = pdq::hash(&image, pdq_settings.convention);
            PdqSignal { hash: out.hash, quality: out.quality, dihedral: None }
        };
        metrics.observe_stage("pdq", started.elapsed().as_secs_f64());
        signal
    });
    if let Some(p) = &pdq {
        signals.pdq = Some(p.hash.to_string());
        signals.pdq_quality = Some(p.quality);
    }
    // The `cli` convention hashes a sparse 512×512 sample of a large image: one whose sampled
    // pixels alone were replaced would hash as anything. Such an image goes to review, and no
    // allowlist match lets it through (see `policy::action_of`).
    let media_error = match (pdq.is_some() && pdq_settings.convention == pdq::Convention::Cli)
        .then(|| pdq::sampling_disagreement(&image))
        .flatten()
    {
        Some(d) if d > pdq::SCALING_ANOMALY_THRESHOLD => Some(MediaErrorFinding {
            kind: SCALING_ANOMALY.into(),
            detail: format!(
                "the 512x512 sample the PDQ hash is taken from disagrees with the picture ({d:.1} luma levels, over {}): an image-scaling attack?",
                pdq::SCALING_ANOMALY_THRESHOLD
            ),
        }),
        _ => None,
    };
    Examined { signals, image: Some(image), pdq, media_error, is_image: true, unscreened: None }
}
