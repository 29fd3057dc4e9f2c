//! Classifier throughput: decode + preprocess + open_nsfw inference, images/s at batch 1, 8 and
//! 16, on the reference fixture images (tests/fixtures/nsfw), plus where one image's time goes.
//!
//! `cargo bench --bench classifier`; `scripts/bench-classifier` runs it beside the Python
//! reference and prints both. Needs `make setup` (scripts/setup).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use perisai::classify::onnx::OnnxClassifier;
use perisai::classify::preprocess::{jpeg_round_trip, preprocess, resize_crop, to_tensor, INPUT_LEN};
use perisai::classify::Classifier;
use perisai::config::ClassifierSettings;
use perisai::media::decode::{decode, DecodeLimits, Image};

/// The machine the figures are quoted for has two cores; ONNX Runtime gets both, as the
/// reference does, and preprocessing is spread over as many workers.
const THREADS: usize = 2;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load() -> OnnxClassifier {
    let r = root();
    let s = |p: &str| r.join(p).to_string_lossy().into_owned();
    let settings = ClassifierSettings {
        enabled: perisai::config::Switch::On,
        manifest: s("models/open_nsfw.toml"),
        model_path: s(".cache/models/open-nsfw.onnx"),
        ort_library: s(".cache/onnxruntime/libonnxruntime.so.1.32.0"),
        intra_threads: THREADS,
        max_batch: 16,
        max_wait_ms: 5,
    };
    OnnxClassifier::load(&settings).unwrap_or_else(|e| panic!("{e} (run `make setup` first)"))
}

/// The fixture images' bytes, in expected.csv order (the order the Python reference uses).
fn images() -> Vec<Vec<u8>> {
    let dir = root().join("tests/fixtures/nsfw");
    let list = std::fs::read_to_string(dir.join("expected.csv")).expect("expected.csv");
    list.lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .map(|f| std::fs::read(dir.join("images").join(f)).expect("fixture image"))
        .collect()
}

fn decode_preprocess(bytes: &[u8]) -> Vec<f32> {
    preprocess(&decode(bytes, &DecodeLimits::default()).expect("decode")).expect("preprocess")
}

/// Decode and preprocess `batch` on up to `THREADS` workers, as the service's CPU pool would.
fn prepare(batch: &[&[u8]]) -> Vec<Vec<f32>> {
    if batch.len() == 1 {
        return vec![decode_preprocess(batch[0])];
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, Vec<f32>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS.min(batch.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= batch.len() {
                            break mine;
                        }
                        mine.push((i, decode_preprocess(batch[i])));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, t)| t).collect()
}

fn end_to_end(c: &mut Criterion) {
    let model = load();
    let blobs = images();
    let mut g = c.benchmark_group("classifier_end_to_end");
    g.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(8));
    for batch in [1usize, 8, 16] {
        g.throughput(Throughput::Elements(batch as u64));
        let mut cursor = 0;
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| {
                let picked: Vec<&[u8]> = (0..batch).map(|j| blobs[(cursor + j) % blobs.len()].as_slice()).collect();
                cursor = (cursor + batch) % blobs.len();
                let scores = model.classify(&prepare(&picked)).expect("inference");
                assert_eq!(scores.len(), batch);
                scores
            })
        });
    }
    g.finish();
}

fn stages(c: &mut Criterion) {
    let model = load();
    let blobs = images();
    let decoded: Vec<Image> = blobs.iter().map(|b| decode(b, &DecodeLimits::default()).unwrap()).collect();
    let resized: Vec<Vec<u8>> = decoded.iter().map(|i| resize_crop(i).unwrap()).collect();
    let round_tripped: Vec<Vec<u8>> = resized.iter().map(|r| jpeg_round_trip(r).unwrap()).collect();
    let n = blobs.len() as u64;

    // Each iteration covers the whole image set once, single-threaded: time per element is the
    // mean cost of one image.
    let mut g = c.benchmark_group("classifier_stages");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(n));
    g.bench_function("decode", |b| {
        b.iter(|| blobs.iter().for_each(|x| drop(black_box(decode(x, &DecodeLimits::default()).unwrap()))))
    });
    g.bench_function("resize_crop", |b| {
        b.iter(|| decoded.iter().for_each(|i| drop(black_box(resize_crop(i).unwrap()))))
    });
    g.bench_function("jpeg_round_trip", |b| {
        b.iter(|| resized.iter().for_each(|r| drop(black_box(jpeg_round_trip(r).unwrap()))))
    });
    g.bench_function("tensor", |b| b.iter(|| round_tripped.iter().for_each(|r| drop(black_box(to_tensor(r))))));
    for batch in [1usize, 8, 16] {
        let inputs = vec![vec![0f32; INPUT_LEN]; batch];
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("inference", batch), &inputs, |b, inputs| {
            b.iter(|| model.classify(inputs).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, end_to_end, stages);
criterion_main!(benches);
