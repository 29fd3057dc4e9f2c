//! Assembling the parts from settings: banks, classifier, screen, worker. Shared by the `run`,
//! `demo` and `scan` commands and the tests, so every entry point screens the same way.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::bank::{BankFileError, BankSet};
use crate::classify::{ClassifyError, ImageScorer};
use crate::config::Settings;
use crate::kafka::bank_feed::{BankFeed, BankFeedError};
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
    #[error(transparent)]
    Screen(#[from] ScreenError),
}

/// Loads the classifier when enabled. A missing or broken model is an error, never a silent skip.
pub fn build_scorer(settings: &Settings, metrics: &Arc<Metrics>) -> Result<Option<Arc<dyn ImageScorer>>, AppError> {
    if !settings.classifier.enabled {
        metrics.classifier_up.set(0);
        return Ok(None);
    }
    let scorer = crate::classify::scorer(&settings.classifier, metrics.clone())?;
    metrics.classifier_up.set(1);
    Ok(Some(scorer))
}

/// Classifier and screen over `banks`, ready to use.
pub fn build_screen(
    settings: &Arc<Settings>,
    banks: Arc<BankSet>,
    metrics: &Arc<Metrics>,
    mode: Mode,
) -> Result<Arc<Screen>, AppError> {
    let scorer = build_scorer(settings, metrics)?;
    Ok(Arc::new(Screen::new(settings.clone(), banks, scorer, metrics.clone(), mode)?))
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
