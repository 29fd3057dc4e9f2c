//! The screen's cache by media SHA-256: what a duplicate upload costs against a fresh screen, and
//! the speed-up on a heavy-tailed stream of uploads.
//!
//! Uploads are the JPEG fixture photos (tests/fixtures/pdq/images, tests/fixtures/nsfw/images),
//! each made into many distinct files by a comment segment after its start marker (same pixels,
//! same decode and inference cost, different SHA-256). The whole screen runs: SHA-256/MD5,
//! decode, PDQ, an empty bank lookup and the real classifier (`make setup`), in worker mode.
//!
//! 1. Per upload, alternating rounds: a fresh screen (cache off, a file never seen) against a
//!    duplicate (cache on, the same file screened before), one upload at a time.
//! 2. A stream of uploads drawn from a Zipf distribution (s = 1.1 over 10,000 distinct files,
//!    fixed seed), screened 16 at a time, cache off against cache on (cold at the start of each
//!    round), alternating.
//! 3. Memory: 200,000 entries like a still photo's (hashes, one PDQ signal, a score) put in a
//!    cache, the process's resident memory before and after, against the cache's own count.
//!
//!     cargo bench --bench screen_cache [-- --uploads N --rounds R]

#[path = "support/photos.rs"]
mod photos;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use perisai::app;
use perisai::bank::BankSet;
use perisai::config::{Settings, Switch};
use perisai::event::UploadEvent;
use perisai::metrics::Metrics;
use perisai::screen::{Mode, Screen};
use rand::{Rng, SeedableRng};

const DISTINCT: usize = 10_000;
const ZIPF_S: f64 = 1.1;
const CONCURRENCY: usize = 16;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(default)
}

/// Photo `i % n` with a comment segment naming `i`: a distinct file, the same picture.
fn distinct(photos: &[Vec<u8>], i: usize) -> Vec<u8> {
    photos::with_comment(&photos[i % photos.len()], &format!("upload {i}"))
}

fn screen(cache: bool) -> Arc<Screen> {
    let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    settings.classifier.enabled = Switch::On;
    if !cache {
        settings.cache.max_entries = 0;
    }
    let settings = Arc::new(settings);
    app::build_screen(&settings, Arc::new(BankSet::default()), &Metrics::new(), Mode::Worker).expect("screen (run `make setup`)")
}

fn event() -> UploadEvent {
    UploadEvent::local("upload", "t")
}

/// Seconds per upload, one at a time.
async fn each(screen: &Screen, uploads: &[Vec<u8>]) -> f64 {
    let started = Instant::now();
    for bytes in uploads {
        screen.screen_bytes(&event(), bytes.clone(), Instant::now()).await;
    }
    started.elapsed().as_secs_f64() / uploads.len() as f64
}

/// Indexes drawn from Zipf(s) over `n` items (inverse of the cumulative weights).
fn zipf(n: usize, s: f64, draws: usize, seed: u64) -> Vec<usize> {
    let mut cumulative = Vec::with_capacity(n);
    let mut total = 0.0;
    for k in 1..=n {
        total += 1.0 / (k as f64).powf(s);
        cumulative.push(total);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..draws)
        .map(|_| {
            let x = rng.gen::<f64>() * total;
            cumulative.partition_point(|&c| c < x).min(n - 1)
        })
        .collect()
}

async fn stream(screen: &Screen, uploads: &[Vec<u8>]) -> Duration {
    let started = Instant::now();
    let event = event();
    futures::stream::iter(uploads)
        .map(|bytes| screen.screen_bytes(&event, bytes.clone(), Instant::now()))
        .buffer_unordered(CONCURRENCY)
        .count()
        .await;
    started.elapsed()
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

/// Bytes per entry of `n` entries like a screened still photo's: by the cache's count, and in
/// resident memory (the process's growth while they are inserted).
async fn memory_per_entry(n: usize) -> (f64, f64) {
    use perisai::bank::PdqSignal;
    use perisai::event::Signals;
    use perisai::hash::pdq::PdqHash;
    use perisai::policy::ClassifierFinding;
    use perisai::screen::cache::{Learned, ScreenCache};
    let cache = ScreenCache::new(u64::MAX / 4096, u64::MAX / 4, Metrics::new());
    let before = resident_bytes();
    for i in 0..n as u64 {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&i.to_le_bytes());
        let hash = PdqHash::from_words([i, i ^ 0x5555, !i, i.rotate_left(7)]);
        let learned = Learned {
            signals: Signals {
                md5: Some(format!("{:032x}", u128::from(i))),
                sha256: Some(hex::encode(key)),
                pdq: Some(hash.to_string()),
                pdq_quality: Some(90),
                width: Some(1024),
                height: Some(768),
                ..Default::default()
            },
            pdq: vec![PdqSignal::new(hash, 90)],
            is_image: true,
            decoded: true,
            classifier: Some(ClassifierFinding {
                model: "open_nsfw".into(),
                model_sha256: "864bb37bf886".into(),
                label: "nsfw".into(),
                score: 0.1,
                at: None,
            }),
            ..Default::default()
        };
        cache.update(key, Arc::new(learned)).await;
    }
    let (entries, counted) = cache.size().await;
    let grown = resident_bytes().saturating_sub(before);
    (counted as f64 / entries as f64, grown as f64 / entries as f64)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let photos = photos::photos();
        let rounds = arg("--rounds", 3);
        let draws = arg("--uploads", 1500);
        println!("{} fixture JPEGs; {rounds} rounds", photos.len());

        println!("\n1. per upload, one at a time (ms)");
        println!("round  fresh (cache off)  duplicate (cache on)  duplicate / fresh");
        let (off, on) = (screen(false), screen(true));
        let hot = distinct(&photos, 0);
        on.screen_bytes(&event(), hot.clone(), Instant::now()).await;
        let mut ratios = Vec::new();
        for round in 0..rounds {
            let fresh: Vec<Vec<u8>> = (0..30).map(|k| distinct(&photos, 1_000_000 + round * 100 + k)).collect();
            let fresh_s = each(&off, &fresh).await;
            let dup_s = each(&on, &vec![hot.clone(); 200]).await;
            ratios.push(dup_s / fresh_s);
            println!("{round:>5}  {:>17.2}  {:>20.3}  {:>16.1}%", fresh_s * 1e3, dup_s * 1e3, 100.0 * dup_s / fresh_s);
        }

        let picks = zipf(DISTINCT, ZIPF_S, draws, 7);
        let uploads: Vec<Vec<u8>> = picks.iter().map(|&i| distinct(&photos, i)).collect();
        let unique = picks.iter().collect::<std::collections::HashSet<_>>().len();
        println!("\n2. Zipf s={ZIPF_S} over {DISTINCT} files: {draws} uploads, {unique} distinct, {CONCURRENCY} at a time (s)");
        println!("round  cache off  cache on  speed-up");
        let mut speedups = Vec::new();
        for round in 0..rounds.min(2) {
            let off_t = stream(&screen(false), &uploads).await;
            let on_t = stream(&screen(true), &uploads).await;
            speedups.push(off_t.as_secs_f64() / on_t.as_secs_f64());
            println!("{round:>5}  {:>9.1}  {:>8.1}  {:>7.2}x", off_t.as_secs_f64(), on_t.as_secs_f64(), speedups[round]);
        }
        let (counted, resident) = memory_per_entry(200_000).await;
        println!("\n3. memory per entry: {counted:.0} bytes by the cache's count, {resident:.0} bytes resident");
        println!(
            "{}",
            serde_json::json!({"bench": "screen_cache", "duplicate_over_fresh": ratios, "zipf_speedup": speedups, "uploads": draws, "distinct": unique, "entry_bytes_counted": counted, "entry_bytes_resident": resident})
        );
    });
}
