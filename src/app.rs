//! Assembling the parts from settings: banks, classifier, screen, worker. Shared by the `run`,
//! `demo` and `scan` commands and the tests, so every entry point screens the same way.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::admin;
use crate::bank::flood::FloodWatch;
use crate::bank::{BankFileError, BankSet};
use crate::classify::{ClassifyError, ImageScorer};
use crate::config::{Settings, Switch};
use crate::kafka::bank_feed::{self, BankFeed, BankFeedError};
use crate::metrics::{Metrics, Readiness};
use crate::screen::{Mode, Screen, ScreenError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Bank(#[from] BankFileError),
    #[error(transparent)]
    BankFeed(#[from] BankFeedError),
    #[error("classifier: {0} (set classifier.enabled = false to run without it)")]
    Classifier(#[from] ClassifyError),
    #[error(
        "classifier.enabled = true but {what} is missing at {path}: install it with `make setup` \
         (scripts/setup), or set classifier.enabled = \"auto\" or false"
    )]
    ClassifierMissing { what: &'static str, path: String },
    #[error(transparent)]
    Screen(#[from] ScreenError),
}

/// Whether the classifier runs, and why not when it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassifierPlan {
    Load,
    Off(String),
}

/// Decides from `classifier.enabled` and the files on disk. `true` with a file missing is an
/// error naming it; `auto` with a file missing is off, with the reason.
pub fn classifier_plan(settings: &Settings) -> Result<ClassifierPlan, AppError> {
    let c = &settings.classifier;
    let files = [("the model manifest", &c.manifest), ("the model weights", &c.model_path), ("ONNX Runtime", &c.ort_library)];
    let missing = files.iter().find(|(_, path)| !path.is_empty() && !std::path::Path::new(path.as_str()).is_file());
    match (c.enabled, missing) {
        (Switch::Off, _) => Ok(ClassifierPlan::Off("classifier.enabled = false".into())),
        (Switch::On, Some((what, path))) => Err(AppError::ClassifierMissing { what, path: path.to_string() }),
        (Switch::Auto, Some((what, path))) => {
            Ok(ClassifierPlan::Off(format!("{what} is not installed at {path}: run `make setup` (scripts/setup)")))
        }
        (_, None) => Ok(ClassifierPlan::Load),
    }
}

/// Loads the classifier when the plan says so. A model that is there but fails to load is an
/// error, never a silent skip; one that is not installed under `auto` is logged as off.
pub fn build_scorer(settings: &Settings, metrics: &Arc<Metrics>) -> Result<Option<Arc<dyn ImageScorer>>, AppError> {
    match classifier_plan(settings)? {
        ClassifierPlan::Off(why) => {
            metrics.classifier_up.set(0);
            if settings.classifier.enabled == Switch::Auto {
                tracing::warn!(reason = %why, "classifier off: uploads are screened by hash banks only");
            }
            Ok(None)
        }
        ClassifierPlan::Load => {
            let scorer = crate::classify::scorer(&settings.classifier, metrics.clone())?;
            metrics.classifier_up.set(1);
            Ok(Some(scorer))
        }
    }
}

/// Classifier and screen over `banks`, ready to use. A worker reading a bank topic also watches
/// for flooding entries (when a bank sets a limit) and quarantines them through the topic.
pub fn build_screen(
    settings: &Arc<Settings>,
    banks: Arc<BankSet>,
    metrics: &Arc<Metrics>,
    mode: Mode,
) -> Result<Arc<Screen>, AppError> {
    let scorer = build_scorer(settings, metrics)?;
    let flood = match mode {
        Mode::Worker if !settings.kafka.banks_topic.is_empty() => start_flood_watch(settings, &banks, metrics),
        _ => None,
    };
    Ok(Arc::new(Screen::new(settings.clone(), banks, scorer, metrics.clone(), mode)?.with_flood_watch(flood)))
}

/// The flood watch, sharing its counts with the fleet over `kafka.flood_topic`, and a task that
/// publishes each entry it flags to the bank topic as quarantined (every worker then applies
/// it). `None` when no bank sets a flood limit.
fn start_flood_watch(settings: &Arc<Settings>, banks: &Arc<BankSet>, metrics: &Arc<Metrics>) -> Option<Arc<FloodWatch>> {
    let (watch, mut requests) = FloodWatch::new(&settings.banks)?;
    let watch = Arc::new(watch);
    if !settings.kafka.flood_topic.is_empty() {
        crate::kafka::flood_counts::start(&settings.kafka, &watch, instance_name());
    }
    let settings = settings.clone();
    let metrics = metrics.clone();
    let banks = banks.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            // Another worker may have quarantined it meanwhile, or a person released it.
            if banks.status_of(&request.bank, &request.hash).is_some() {
                continue;
            }
            let (key, value) = admin::quarantine_record(&request.bank, &request.hash, "quarantined", "flood", Some(&request));
            // Retried a few times: a quarantine lost to a broker hiccup leaves the flood going.
            for attempt in 1..=5 {
                match bank_feed::publish(&settings.kafka, vec![(key.clone(), Some(value.clone()))]).await {
                    Ok(_) => {
                        metrics.bank_flood_quarantines.with_label_values(&[&request.bank]).inc();
                        tracing::warn!(bank = %request.bank, signal = request.hash.signal().as_str(),
                            matches_last_minute = request.matches_last_minute, baseline_per_minute = request.baseline_per_minute,
                            "bank entry flooding: quarantined fleet-wide (its matches now give review); \
                             `perisai bank release` lifts it");
                        break;
                    }
                    Err(error) => {
                        tracing::error!(bank = %request.bank, attempt, %error, "publishing a flood quarantine failed");
                        tokio::time::sleep(std::time::Duration::from_secs(attempt)).await;
                    }
                }
            }
        }
    });
    Some(watch)
}

/// The banks a worker screens with: every bank file, then (when `kafka.banks_topic` is set) the
/// whole bank topic, after which a feed keeps applying new records. Marks the banks loaded for
/// `/readyz` only once all of it is in: no upload is screened against a half-loaded bank.
pub async fn load_live_banks(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    readiness: &Arc<Readiness>,
) -> Result<(Arc<BankSet>, Option<BankFeed>), AppError> {
    let banks = Arc::new(BankSet::load(&settings.banks, metrics)?);
    let feed = if settings.kafka.banks_topic.is_empty() {
        None
    } else {
        let (feed, report) = BankFeed::start(&settings.kafka, banks.clone(), metrics.clone(), readiness.clone()).await?;
        tracing::info!(records = report.records, seconds = report.elapsed.as_secs_f64(), "banks ready");
        Some(feed)
    };
    readiness.banks_loaded.store(true, Ordering::Release);
    Ok((banks, feed))
}

/// Names this process in verdict headers: `POD_NAME`/`HOSTNAME` plus the process id.
pub fn instance_name() -> String {
    format!("{}-{}", crate::config::replica_name(), std::process::id())
}
