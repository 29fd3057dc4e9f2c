//! The screen with the real classifier counts each image's score once in
//! `perisai_classifier_score` (the batcher observes it; the screen used to observe it again).
//! Needs `make setup` (the real model).

use std::sync::Arc;
use std::time::Instant;

use perisai::app;
use perisai::bank::BankSet;
use perisai::config::{Settings, Switch};
use perisai::event::UploadEvent;
use perisai::metrics::Metrics;
use perisai::screen::Mode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_score_is_observed_once() {
    let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    settings.classifier.enabled = Switch::On;
    let settings = Arc::new(settings);
    let metrics = Metrics::new();
    let screen = app::build_screen(&settings, Arc::new(BankSet::default()), &metrics, Mode::ScoreAll)
        .unwrap_or_else(|e| panic!("{e} (run `make setup` first)"));
    let images = ["sk_chelsea.png", "sk_coffee.png", "pdq_bridge.jpg"];
    for (i, file) in images.iter().enumerate() {
        let bytes = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nsfw/images").join(file)).unwrap();
        let event = UploadEvent::local(&format!("{i}-{file}"), "t");
        let verdict = screen.screen_bytes(&event, bytes, Instant::now()).await;
        assert!(verdict.reasons.iter().any(|r| matches!(r, perisai::event::Reason::Classifier { .. })), "{verdict:?}");
    }
    let observed = metrics.classifier_score.with_label_values(&["open_nsfw"]).get_sample_count();
    assert_eq!(observed, images.len() as u64, "one observation per classified image");
}
