//! Assembling the parts from settings: banks, classifier, screen, worker. Shared by the `run`,
//! `demo` and `scan` commands and the tests, so every entry point screens the same way.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::bank::{BankFileError, BankSet};
use crate::classify::{ClassifyError, ImageScorer};
use crate::config::Settings;
use crate::metrics::{Metrics, Readiness};
use crate::screen::{Mode, Screen, ScreenError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Bank(#[from] BankFileError),
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

/// Banks, classifier and screen, ready to use; marks the banks loaded for `/readyz`.
pub fn build_screen(
    settings: &Arc<Settings>,
    banks: BankSet,
    metrics: &Arc<Metrics>,
    readiness: &Readiness,
    mode: Mode,
) -> Result<Arc<Screen>, AppError> {
    let scorer = build_scorer(settings, metrics)?;
    let screen = Screen::new(settings.clone(), Arc::new(banks), scorer, metrics.clone(), mode)?;
    readiness.banks_loaded.store(true, Ordering::Release);
    Ok(Arc::new(screen))
}

/// Names this process in verdict headers: `POD_NAME`/`HOSTNAME` plus the process id.
pub fn instance_name() -> String {
    format!("{}-{}", crate::config::replica_name(), std::process::id())
}
