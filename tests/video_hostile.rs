//! Hostile videos against real worker processes (`perisai run`) on a real Apache Kafka broker.
//! Every video is decoded by the `perisai-video` helper (built by `cargo build --release
//! --workspace --bins`), a process of its own under rlimits, a seccomp filter and a deadline; a
//! video that lies about itself, is cut short, is damaged, runs too long, crashes or starves its
//! helper must cost that one upload a `media_error` (action `review`), never the worker, never
//! another event, and never an `allow` for a video that was not screened to its end.
//!
//! Four workers run side by side, each on its own topics (a helper's settings are a worker's):
//! - `streams`: the real helper, `video.deadline_ms` 1500, every frame hashed: headers claiming
//!   huge frames, days of duration or billions of frames, a decoded stream passing
//!   `video.max_frames`, truncated and corrupted streams, an audio-only file, a 4K clip that
//!   cannot finish within the deadline, and good clips between and after them;
//! - `rogue`: a stand-in helper script that crashes itself (SIGSEGV), is killed mid-decode
//!   (SIGKILL), writes garbage or a frame record claiming 30000x30000, or hangs, then runs the
//!   real helper on a good clip;
//! - `starved`: `video.helper_memory_bytes` at its documented minimum (256 MiB): a 4K clip fails,
//!   and the worker's own memory stays bounded;
//! - `missing`: a helper path that does not exist: `video_unavailable`, and images still screened.
//!
//! Each event must get exactly one verdict (no DLQ record, no duplicate), within its worker's
//! deadline (the verdict's `latency_ms`), every input offset committed (no event lost, the
//! partition never wedged), each worker alive until SIGTERM, exiting 0, without a panic, its
//! resident memory sampled throughout and under a bound. All cases are checked before the test
//! fails, so one run shows every outcome.
//!
//! The hostile files are made from real clips (`ffmpeg`, made in this run) by patching the fields
//! FFmpeg reads; the comments next to each builder say what `ffprobe` then reports.

mod common;
mod video_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use video_support::{clip, ffmpeg};

/// `video.deadline_ms` of the `streams` worker (the `rogue` worker's is `ROGUE_DEADLINE_MS`).
const DEADLINE_MS: u64 = 1500;
const ROGUE_DEADLINE_MS: u64 = 3000;
/// `video.max_frames` of the `streams` worker: a raw H.264 stream declares no length, so only
/// the decoded stream can pass it.
const MAX_FRAMES: u64 = 300;
/// `video.helper_memory_bytes`'s documented minimum (`src/config.rs` refuses less).
const HELPER_MEMORY_MIN: u64 = 256 << 20;
/// Resident memory allowed to each worker over its whole run (sampled every 20 ms, and VmHWM).
const RSS_LIMIT_KB: u64 = 600 * 1024;
/// Frames in the clips the truncated and corrupted cases are made from (2 s at 30 fps).
const CLIP_FRAMES: u64 = 60;
const WAIT: Duration = Duration::from_secs(75);

// ------------------------------------------------------------------ hostile file builders

fn find(bytes: &[u8], pattern: &[u8]) -> usize {
    bytes.windows(pattern.len()).position(|w| w == pattern).unwrap_or_else(|| panic!("{pattern:02x?} not found"))
}

fn find_once(bytes: &[u8], pattern: &[u8]) -> usize {
    let at = find(bytes, pattern);
    assert!(bytes[at + 1..].windows(pattern.len()).all(|w| w != pattern), "{pattern:02x?} found twice");
    at
}

/// An ISO box by its type, searched after `moov` (so that `ftyp`'s brands never match).
fn mp4_box(mp4: &[u8], kind: &[u8; 4]) -> usize {
    let moov = find(mp4, b"moov");
    moov + find(&mp4[moov..], kind)
}

/// `mvhd`'s duration set to three days: `ffprobe` reports a format duration of 259200 s (the
/// stream's own `mdhd` and `stts` still say 2 s).
fn mp4_days(mut mp4: Vec<u8>) -> Vec<u8> {
    let at = mp4_box(&mp4, b"mvhd");
    assert_eq!(mp4[at + 4], 0, "mvhd version 0");
    let timescale = u32::from_be_bytes(mp4[at + 16..at + 20].try_into().unwrap());
    mp4[at + 20..at + 24].copy_from_slice(&(timescale * 3 * 86_400).to_be_bytes());
    mp4
}

/// `stts`'s first entry claiming 3,000,000,000 samples: `ffprobe` reports nb_frames=3000000000.
fn mp4_billions_of_frames(mut mp4: Vec<u8>) -> Vec<u8> {
    let at = mp4_box(&mp4, b"stts");
    assert_eq!(u32::from_be_bytes(mp4[at + 8..at + 12].try_into().unwrap()), 1, "one stts entry");
    mp4[at + 12..at + 16].copy_from_slice(&3_000_000_000u32.to_be_bytes());
    mp4
}

/// IVF's header: width and height at bytes 12..16 (LE u16), the frame count at 24..28 (LE u32).
fn ivf_header(mut ivf: Vec<u8>, size: Option<(u16, u16)>, frames: Option<u32>) -> Vec<u8> {
    assert_eq!(&ivf[..4], b"DKIF");
    if let Some((w, h)) = size {
        ivf[12..14].copy_from_slice(&w.to_le_bytes());
        ivf[14..16].copy_from_slice(&h.to_le_bytes());
    }
    if let Some(n) = frames {
        ivf[24..28].copy_from_slice(&n.to_le_bytes());
    }
    ivf
}

/// The first VP8 key frame's own size (its bitstream, not the container) set to `side`×`side`:
/// the container still says 160x120; the decoder makes frames of `side`×`side`.
fn ivf_keyframe_size(mut ivf: Vec<u8>, side: u16) -> Vec<u8> {
    // 32-byte file header, 12-byte frame header, 3-byte VP8 frame tag, then the start code.
    assert_eq!(&ivf[47..50], &[0x9d, 0x01, 0x2a], "VP8 key frame start code");
    ivf[50..52].copy_from_slice(&side.to_le_bytes());
    ivf[52..54].copy_from_slice(&side.to_le_bytes());
    ivf
}

/// A Matroska file of uncompressed 256x256 frames whose PixelWidth and PixelHeight elements
/// (2-byte values) now claim `side`×`side`; nothing needs decoding to see it. `ffprobe` reports
/// 16000x16000 for 16000; for 30000, FFmpeg itself calls the size invalid and reports 0x0.
fn mkv_claiming(mut mkv: Vec<u8>, side: u16) -> Vec<u8> {
    for element in [0xB0u8, 0xBA] {
        let at = find_once(&mkv, &[element, 0x82, 0x01, 0x00]);
        mkv[at + 2..at + 4].copy_from_slice(&side.to_be_bytes());
    }
    mkv
}

/// WebM's Segment Duration (an 8-byte float, in TimecodeScale units of 1 ms) set to three days:
/// `ffprobe` reports a format duration of 259200 s.
fn webm_days(mut webm: Vec<u8>) -> Vec<u8> {
    find_once(&webm, &[0x2A, 0xD7, 0xB1, 0x83, 0x0F, 0x42, 0x40]); // TimecodeScale 1,000,000 ns
    let at = find_once(&webm, &[0x44, 0x89, 0x88]);
    assert_eq!(f64::from_be_bytes(webm[at + 3..at + 11].try_into().unwrap()), 2000.0);
    webm[at + 3..at + 11].copy_from_slice(&(3.0 * 86_400_000.0f64).to_be_bytes());
    webm
}

fn half(bytes: &[u8]) -> Vec<u8> {
    bytes[..bytes.len() / 2].to_vec()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `count` random bytes overwritten at random places in the middle third.
fn scattered(mut bytes: Vec<u8>, seed: u64, count: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let third = bytes.len() / 3;
    for _ in 0..count {
        let at = third + (rng.next() as usize) % third;
        bytes[at] = rng.next() as u8;
    }
    bytes
}

/// 4 KiB of random bytes over the middle of the file.
fn block(mut bytes: Vec<u8>, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 4096] {
        *b = rng.next() as u8;
    }
    bytes
}

// ------------------------------------------------------------------ cases and outcomes

#[derive(Debug, Clone)]
enum Expect {
    /// Action review, one `media_error` of this kind whose detail contains the text.
    MediaError(&'static str, &'static str),
    /// Action review, one `media_error` of one of these kinds.
    MediaErrorOneOf(&'static [&'static str]),
    /// Allowed, no media error, every one of these frames decoded, at least one hashed.
    Screened(u64),
    /// Damaged: allowed only if every one of these frames was decoded; otherwise review with a
    /// `media_error` of kind `decode`.
    ScreenedToEndOrDecodeError(u64),
    /// Damaged, and nothing declares its length: any single verdict, but an allow carries
    /// frames that were decoded and hashed.
    AnyVerdict,
    /// No video stream: allowed on exact hashes with an `unscreened` reason, no media error.
    Unscreened,
    /// An image, decoded at this size (a worker whose helper is missing still screens images).
    Image(u32, u32),
}

struct Case {
    key: String,
    payload: Vec<u8>,
    expect: Expect,
    what: String,
}

struct Cases(Vec<Case>);

impl Cases {
    fn add(&mut self, what: &str, media: Value, content_type: &str, expect: Expect) {
        let key = format!("c{:02}", self.0.len());
        let payload = serde_json::to_vec(&json!({
            "schema": "perisai.upload/v1", "event_id": format!("e-{key}"), "media_id": format!("m-{key}"),
            "tenant": "acme", "surface": "post", "content_type": content_type, "media": media,
        }))
        .unwrap();
        assert!(payload.len() < 900_000, "{what}: event of {} bytes (the topic takes 1 MB)", payload.len());
        self.0.push(Case { key, payload, expect, what: what.into() });
    }
    fn inline(&mut self, what: &str, bytes: &[u8], content_type: &str, expect: Expect) {
        let media = json!({ "inline": base64::engine::general_purpose::STANDARD.encode(bytes) });
        self.add(what, media, content_type, expect);
    }
    fn path(&mut self, what: &str, path: &str, content_type: &str, expect: Expect) {
        self.add(what, json!({ "path": path }), content_type, expect);
    }
}

/// Checks one verdict against its case: `Ok(line for the matrix)` or `Err(why)`.
fn check(case: &Case, out: &Output, topics: &Topics, validator: &jsonschema::Validator, latency_bound_ms: f64) -> Result<String, String> {
    if out.topic != topics.verdicts {
        return Err(format!("a DLQ record instead of a verdict: {:?}", out.headers));
    }
    let v = out.json();
    if let Err(e) = validator.validate(&v) {
        return Err(format!("the verdict does not match its schema: {e}\n{v}"));
    }
    if v["event_id"] != format!("e-{}", case.key) {
        return Err(format!("verdict for {} under key {}", v["event_id"], case.key));
    }
    let errors: Vec<&Value> = v["reasons"].as_array().unwrap().iter().filter(|r| r["kind"] == "media_error").collect();
    let action = v["action"].as_str().unwrap_or_default().to_string();
    let video = &v["signals"]["video"];
    let decoded = video["frames_decoded"].as_u64();
    let hashed = video["frames_hashed"].as_u64().unwrap_or(0);
    let latency = v["latency_ms"].as_f64().unwrap_or(f64::MAX);
    let summary = {
        let error = errors.first().map(|e| format!(", media_error {}: {}", e["error"].as_str().unwrap_or(""), e["detail"].as_str().unwrap_or("")));
        let frames = decoded.map(|d| format!(", {d} frames decoded, {hashed} hashed")).unwrap_or_default();
        format!("{action}{}{frames} ({latency:.0} ms)", error.unwrap_or_default())
    };
    let fail = |why: String| Err(format!("{why}; got: {summary}\n    {v}"));
    let one_error = |kinds: &[&str], detail: &str| -> Result<(), String> {
        if action != "review" {
            return Err(format!("action {action}, expected review"));
        }
        if errors.len() != 1 {
            return Err(format!("{} media_error reasons, expected 1", errors.len()));
        }
        let kind = errors[0]["error"].as_str().unwrap_or_default();
        if !kinds.contains(&kind) {
            return Err(format!("media_error {kind}, expected {}", kinds.join(" or ")));
        }
        let text = errors[0]["detail"].as_str().unwrap_or_default();
        if !text.contains(detail) {
            return Err(format!("detail {text:?} lacks {detail:?}"));
        }
        Ok(())
    };
    let screened = |frames: u64| -> Result<(), String> {
        if action != "allow" || !errors.is_empty() {
            return Err(format!("expected allow without a media error ({frames} frames screened)"));
        }
        if decoded != Some(frames) || hashed == 0 {
            return Err(format!("expected all {frames} frames decoded and some hashed"));
        }
        Ok(())
    };
    let outcome = match &case.expect {
        Expect::MediaError(kind, detail) => one_error(&[kind], detail),
        Expect::MediaErrorOneOf(kinds) => one_error(kinds, ""),
        Expect::Screened(frames) => screened(*frames),
        Expect::ScreenedToEndOrDecodeError(frames) => {
            if action == "allow" {
                screened(*frames).map_err(|e| format!("an allow for a video not screened to its end ({e})"))
            } else {
                one_error(&["decode"], "")
            }
        }
        Expect::AnyVerdict => {
            if action == "allow" && !(errors.is_empty() && decoded.is_some_and(|d| d > 0) && hashed > 0) {
                Err("an allow without decoded and hashed frames".to_string())
            } else {
                Ok(())
            }
        }
        Expect::Unscreened => {
            let unscreened = v["reasons"].as_array().unwrap().iter().any(|r| r["kind"] == "unscreened");
            if errors.is_empty() && unscreened && action == "allow" {
                Ok(())
            } else {
                Err("expected allow with an unscreened reason and no media error".to_string())
            }
        }
        Expect::Image(w, h) => {
            let size = (v["signals"]["width"].as_u64(), v["signals"]["height"].as_u64());
            if action == "allow" && errors.is_empty() && size == (Some(u64::from(*w)), Some(u64::from(*h))) && v["signals"]["pdq"].is_string() {
                Ok(())
            } else {
                Err(format!("expected the {w}x{h} image decoded and allowed"))
            }
        }
    };
    let outcome = outcome.and_then(|()| {
        if latency > latency_bound_ms {
            Err(format!("latency {latency:.0} ms over the {latency_bound_ms:.0} ms bound"))
        } else {
            Ok(())
        }
    });
    match outcome {
        Ok(()) => Ok(summary),
        Err(why) => fail(why),
    }
}

// ------------------------------------------------------------------ workers

/// Samples a process's resident memory (VmRSS) every 20 ms until stopped; the largest seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max_kb: Arc<AtomicU64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let (stop, max_kb) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (s, m) = (stop.clone(), max_kb.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kb) = status_kb(pid, "VmRSS:") {
                    m.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler { stop, max_kb }
    }
    fn stop(&self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.max_kb.load(Ordering::Relaxed)
    }
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// True once the process has exited (a zombie until it is waited for).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

struct Run {
    name: &'static str,
    cases: Vec<Case>,
    /// Appended to the worker's config (`[video]`, `[media]`).
    extra: String,
    /// Added under `[worker]`.
    worker: &'static str,
    latency_bound_ms: f64,
}

struct Started {
    run: Run,
    topics: Topics,
    dir: tempfile::TempDir,
    worker: std::process::Child,
    rss: RssSampler,
}

async fn start(brokers: &str, run: Run, media_root: &Path) -> Started {
    let topics = create_topics(brokers, &format!("video-hostile-{}", run.name), 1).await;
    let dir = temp_dir();
    let extra = format!("{}\n[media]\npath_root = \"{}\"\n", run.extra, media_root.display());
    let config = write_config(dir.path(), brokers, &topics, &extra);
    let text = std::fs::read_to_string(&config).unwrap().replace("[worker]\n", &format!("[worker]\n{}\n", run.worker));
    std::fs::write(&config, text).unwrap();
    let records: Vec<(String, Vec<u8>)> = run.cases.iter().map(|c| (c.key.clone(), c.payload.clone())).collect();
    produce_all(&producer(brokers), &topics.input, &records).await;
    let worker = spawn_worker(&config, dir.path(), 0);
    let rss = RssSampler::start(worker.id());
    Started { run, topics, dir, worker, rss }
}

/// Waits for the run's verdicts, stops its worker, and returns the lines of the matrix and the
/// failures (every case is checked; nothing panics before the summary is printed).
fn finish(brokers: &str, s: &mut Started, deadline: Instant, failures: &mut Vec<String>) -> Vec<String> {
    let pid = s.worker.id();
    let n = s.run.cases.len();
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    let first = read_until(brokers, &[&s.topics.verdicts, &s.topics.dlq], left, |o| o.len() >= n || exited(pid));
    let mut lines = Vec::new();
    let name = s.run.name;
    if let Some(status) = s.worker.try_wait().expect("try_wait") {
        failures.push(format!("{name}: the worker died during the run: {status:?}\n{}", worker_log(s.dir.path(), 0)));
    } else {
        let hwm = status_kb(pid, "VmHWM:").unwrap_or(0);
        let sampled = s.rss.stop();
        let peak = hwm.max(sampled);
        lines.push(format!("{name}: worker peak RSS {} MB (VmHWM {} MB), bound {} MB", peak / 1024, hwm / 1024, RSS_LIMIT_KB / 1024));
        if peak >= RSS_LIMIT_KB {
            failures.push(format!("{name}: worker peak RSS {peak} kB over the {RSS_LIMIT_KB} kB bound"));
        }
        sigterm(&s.worker);
        let status = wait_exit(&mut s.worker, Duration::from_secs(30));
        if !status.success() {
            failures.push(format!("{name}: worker exit {status:?}\n{}", worker_log(s.dir.path(), 0)));
        }
    }
    s.rss.stop();
    let log = worker_log(s.dir.path(), 0);
    if log.contains("panicked") {
        failures.push(format!("{name}: the worker panicked\n{log}"));
    }
    if first.len() < n {
        failures.push(format!("{name}: {} outputs for {n} events within {WAIT:?}", first.len()));
    }
    lines.push(format!("{name}: {n} events"));
    lines
}

/// The whole run's outputs, read again after every worker exited (duplicates show here), checked
/// case by case.
fn judge(s: &Started, all: &[Output], validator: &jsonschema::Validator, brokers: &str, lines: &mut Vec<String>, failures: &mut Vec<String>) {
    let name = s.run.name;
    let mut by_key: BTreeMap<String, Vec<&Output>> = BTreeMap::new();
    for o in all.iter().filter(|o| o.topic == s.topics.verdicts || o.topic == s.topics.dlq) {
        // A verdict is keyed by media_id; a DLQ record keeps the input's key.
        let key = if o.topic == s.topics.verdicts {
            o.json()["event_id"].as_str().unwrap_or_default().trim_start_matches("e-").to_string()
        } else {
            o.key.clone().unwrap_or_default()
        };
        by_key.entry(key).or_default().push(o);
    }
    for case in &s.run.cases {
        let outs = by_key.remove(&case.key).unwrap_or_default();
        let line = match outs.as_slice() {
            [one] => match check(case, one, &s.topics, validator, s.run.latency_bound_ms) {
                Ok(line) => format!("  ok    {:<62} → {line}", case.what),
                Err(why) => {
                    failures.push(format!("{name} {} ({}): {why}", case.key, case.what));
                    format!("  FAIL  {:<62} → {}", case.what, why.lines().next().unwrap_or(""))
                }
            },
            outs => {
                failures.push(format!("{name} {} ({}): {} outputs, expected exactly 1", case.key, case.what, outs.len()));
                format!("  FAIL  {:<62} → {} outputs", case.what, outs.len())
            }
        };
        lines.push(line);
    }
    if !by_key.is_empty() {
        failures.push(format!("{name}: outputs for unknown keys {:?}", by_key.keys().collect::<Vec<_>>()));
    }
    let committed: i64 = committed(brokers, &s.topics.group, &s.topics.input, 1).iter().sum();
    if committed != s.run.cases.len() as i64 {
        failures.push(format!("{name}: {committed} input offsets committed for {} events", s.run.cases.len()));
    }
}

// ------------------------------------------------------------------ the test

/// A stand-in helper for the `rogue` worker: it picks its misbehaviour by the media's first 8
/// bytes, and runs the real helper on anything else, killed with SIGKILL half a second in when
/// the media is over 1 MB. Standard input is the sealed memory file, its offset at its end (the
/// worker wrote it); like the real helper, the script reopens it through /proc to read it from
/// the start. The environment is empty: every command by its path.
fn rogue_helper(dir: &Path, real: &Path) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
real='{real}'
magic=$(/usr/bin/head -c 8 /proc/self/fd/0 | /usr/bin/tr -d '\000')
case "$magic" in
  SEGVSELF) /usr/bin/head -c 64 /proc/self/fd/0 >/dev/null; kill -SEGV $$; /bin/sleep 5; exit 0 ;;
  GARBAGE!) printf 'Zthis is not a record of the protocol'; exit 0 ;;
  HUGEFRAM) printf 'F\030\273\356\240\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\060\165\000\000\060\165\000\000'; exit 0 ;;
  HANGHANG) exec /bin/sleep 600 ;;
esac
size=$(/usr/bin/stat -L -c %s /proc/self/fd/0)
if [ "$size" -gt 1000000 ]; then
  ( /bin/sleep 0.5; kill -KILL $$ ) </dev/null >/dev/null 2>&1 &
fi
exec "$real" "$@"
"#,
        real = real.display()
    );
    let path = dir.join("rogue-helper.sh");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_videos_each_get_one_verdict_and_never_hurt_the_worker() {
    let started_at = Instant::now();
    let real_helper = Path::new(env!("CARGO_BIN_EXE_perisai")).with_file_name("perisai-video");
    assert!(
        real_helper.is_file(),
        "{} is missing: build it with `cargo build --release --workspace --bins`",
        real_helper.display()
    );
    let brokers = brokers();
    let work = temp_dir();
    let media = work.path().join("media");
    std::fs::create_dir(&media).unwrap();
    let w = |name: &str| work.path().join(name);
    let read = |p: PathBuf| std::fs::read(p).unwrap();

    // ---- clips (2 s at 30 fps unless said otherwise)
    const X264: &[&str] = &["-c:v", "libx264", "-pix_fmt", "yuv420p"];
    let src = "testsrc2=size=160x120:rate=30";
    let mp4 = read(clip(&w("moov_last.mp4"), src, 2.0, X264));
    let fast = read(clip(&w("fast.mp4"), src, 2.0, &["-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]));
    let webm = read(clip(&w("vp8.webm"), src, 2.0, &["-c:v", "libvpx"]));
    let ivf = read(clip(&w("vp8.ivf"), src, 2.0, &["-c:v", "libvpx"]));
    let h264 = read(clip(&w("raw.h264"), src, 2.0, &["-c:v", "libx264", "-f", "h264"]));
    let long_h264 = read(clip(&w("long.h264"), "testsrc2=size=64x64:rate=30", 15.0, &["-c:v", "libx264", "-f", "h264"]));
    let raw_mkv = read(clip(&w("raw.mkv"), "testsrc2=size=256x256:rate=1", 1.0, &["-c:v", "rawvideo", "-pix_fmt", "gray"]));
    let audio = read(ffmpeg(&w("audio.m4a"), &["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac"]));
    let good = |name: &str, size: &str, codec: &[&str]| read(clip(&w(name), &format!("testsrc2=size={size}:rate=30"), 2.0, codec));
    let good_a = good("good_a.mp4", "176x144", X264);
    let good_b = good("good_b.webm", "192x108", &["-c:v", "libvpx-vp9", "-b:v", "200k"]);
    let good_c = good("good_c.mp4", "208x120", X264);
    let good_d = good("good_d.mp4", "224x128", X264);
    // 4K: one second encoded, six times over (stream copy, no encoding): 180 frames of 3840x2160
    // whose decoding alone takes seconds, and hashing every one of them longer still.
    let second = clip(&w("uhd1.mp4"), "testsrc2=size=3840x2160:rate=30", 1.0, &["-c:v", "libx264", "-preset", "ultrafast", "-crf", "40", "-pix_fmt", "yuv420p"]);
    let list = w("uhd.txt");
    std::fs::write(&list, format!("file '{}'\n", second.display()).repeat(6)).unwrap();
    ffmpeg(&media.join("uhd.mp4"), &["-f", "concat", "-safe", "0", "-i", list.to_str().unwrap(), "-c", "copy"]);
    assert!(std::fs::metadata(media.join("uhd.mp4")).unwrap().len() > 1_000_000, "the rogue helper kills videos over 1 MB");
    println!("clips made in {:.1} s", started_at.elapsed().as_secs_f64());

    // ---- the `streams` worker: the real helper
    let mut c = Cases(Vec::new());
    c.inline("good clip first (176x144 H.264)", &good_a, "video/mp4", Expect::Screened(CLIP_FRAMES));
    // Sizes.
    c.inline("Matroska header claiming 30000x30000 (raw frames, 65 KB)", &mkv_claiming(raw_mkv.clone(), 30_000), "video/x-matroska", Expect::MediaError("too_large", "30000x30000"));
    c.inline("Matroska header claiming 16000x16000 (raw frames, 65 KB)", &mkv_claiming(raw_mkv.clone(), 16_000), "video/x-matroska", Expect::MediaError("too_large", "16000x16000"));
    c.inline("VP8 key frame claiming 12000x12000 (IVF header says 160x120)", &ivf_keyframe_size(ivf.clone(), 12_000), "video/x-ivf", Expect::MediaError("too_large", "12000x12000"));
    // The declared size alone is refused, before FFmpeg probes (and sizes its decoder for) it.
    c.inline("IVF header claiming 30000x30000, real 160x120 VP8 frames", &ivf_header(ivf.clone(), Some((30_000, 30_000)), None), "video/x-ivf", Expect::MediaError("too_large", "30000x30000"));
    // Durations and frame counts.
    c.inline("MP4 mvhd declaring 3 days", &mp4_days(mp4.clone()), "video/mp4", Expect::MediaError("too_large", "video.max_duration_s"));
    c.inline("WebM Duration declaring 3 days", &webm_days(webm.clone()), "video/webm", Expect::MediaError("too_large", "video.max_duration_s"));
    c.inline("IVF frame count 4,000,000,000 (FFmpeg: 1,500 days)", &ivf_header(ivf.clone(), None, Some(4_000_000_000)), "video/x-ivf", Expect::MediaError("too_large", "video.max_duration_s"));
    c.inline("MP4 stts declaring 3,000,000,000 frames", &mp4_billions_of_frames(mp4.clone()), "video/mp4", Expect::MediaError("too_large", "video.max_frames"));
    c.inline("raw H.264, no declared length, 450 frames (max_frames 300)", &long_h264, "video/h264", Expect::MediaError("too_large", "video.max_frames"));
    // Truncated: frames are missing, the video was not screened to its end.
    c.inline("MP4 cut at half (moov at the end: lost)", &half(&mp4), "video/mp4", Expect::MediaErrorOneOf(&["decode", "unsupported_format"]));
    c.inline("MP4 cut at half (faststart: moov kept, 2 s declared)", &half(&fast), "video/mp4", Expect::MediaError("decode", ""));
    c.inline("WebM cut at half (2 s declared)", &half(&webm), "video/webm", Expect::MediaError("decode", ""));
    c.inline("IVF cut at half (2 s declared)", &half(&ivf), "video/x-ivf", Expect::MediaError("decode", ""));
    // Corrupted.
    c.inline("H.264 MP4, 64 random bytes in the middle third (seed 1)", &scattered(fast.clone(), 0x9E37_79B9_7F4A_7C15, 64), "video/mp4", Expect::ScreenedToEndOrDecodeError(CLIP_FRAMES));
    c.inline("H.264 MP4, 64 random bytes in the middle third (seed 2)", &scattered(fast.clone(), 0xD1B5_4A32_D192_ED03, 64), "video/mp4", Expect::ScreenedToEndOrDecodeError(CLIP_FRAMES));
    c.inline("H.264 MP4, 4 KiB of random bytes in the middle", &block(fast.clone(), 7), "video/mp4", Expect::ScreenedToEndOrDecodeError(CLIP_FRAMES));
    c.inline("VP8 WebM, 4 KiB of random bytes in the middle", &block(webm.clone(), 7), "video/webm", Expect::ScreenedToEndOrDecodeError(CLIP_FRAMES));
    c.inline("VP8 WebM, 64 random bytes in the middle third", &scattered(webm.clone(), 0x2545_F491_4F6C_DD1D, 64), "video/webm", Expect::ScreenedToEndOrDecodeError(CLIP_FRAMES));
    c.inline("raw H.264 (no declared length), 4 KiB random in the middle", &block(h264.clone(), 7), "video/h264", Expect::AnyVerdict);
    // Not pictures.
    c.inline("audio only (AAC in MP4)", &audio, "video/mp4", Expect::Unscreened);
    c.inline("text with an ftyp box, declared video/mp4", b"\0\0\0\x18ftypisom this is not really a video", "video/mp4", Expect::MediaError("unsupported_format", ""));
    // Runs past the deadline.
    c.path("4K clip, 180 frames, every frame hashed, deadline 1500 ms", "uhd.mp4", "video/mp4", Expect::MediaError("decode_timeout", "video.deadline_ms"));
    c.inline("good clip after the timeout (192x108 VP9)", &good_b, "video/webm", Expect::Screened(CLIP_FRAMES));
    let streams = Run {
        name: "streams",
        cases: c.0,
        extra: format!("[video]\ndeadline_ms = {DEADLINE_MS}\nseconds_per_hash = 0.0\nmax_frames = {MAX_FRAMES}\n"),
        // One event at a time: each video's deadline measures its own work, not its neighbours'.
        worker: "max_in_flight = 1",
        latency_bound_ms: (DEADLINE_MS + 1500) as f64,
    };

    // ---- the `rogue` worker: a helper that misbehaves
    let mut c = Cases(Vec::new());
    c.inline("helper kills itself with SIGSEGV after reading 64 bytes", b"SEGVSELF and some more bytes", "video/mp4", Expect::MediaError("decode_crashed", "signal 11"));
    c.inline("helper writes bytes that are no record", b"GARBAGE! and some more bytes", "video/mp4", Expect::MediaError("decode_crashed", ""));
    c.inline("helper writes a frame record claiming 30000x30000 (2.7 GB)", b"HUGEFRAM and some more bytes", "video/mp4", Expect::MediaError("decode_crashed", "30000x30000"));
    c.inline("helper hangs (sleeps), deadline 3000 ms", b"HANGHANG and some more bytes", "video/mp4", Expect::MediaError("decode_timeout", "video.deadline_ms"));
    c.path("real helper on the 4K clip, SIGKILL 0.5 s in", "uhd.mp4", "video/mp4", Expect::MediaError("decode_crashed", "signal 9"));
    c.inline("good clip after them (208x120 H.264, the real helper)", &good_c, "video/mp4", Expect::Screened(CLIP_FRAMES));
    let rogue = Run {
        name: "rogue",
        cases: c.0,
        extra: format!("[video]\nhelper = \"{}\"\ndeadline_ms = {ROGUE_DEADLINE_MS}\n", rogue_helper(work.path(), &real_helper).display()),
        worker: "",
        latency_bound_ms: (ROGUE_DEADLINE_MS + 2000) as f64,
    };

    // ---- the `starved` worker: the helper's address space at its minimum
    let mut c = Cases(Vec::new());
    c.path("4K clip, helper_memory_bytes 256 MiB", "uhd.mp4", "video/mp4", Expect::MediaErrorOneOf(&["decode_crashed", "decode", "too_large", "video_unavailable"]));
    // A setting the configuration accepts should still screen a small clip.
    c.inline("small clip (224x128 H.264), helper_memory_bytes 256 MiB", &good_d, "video/mp4", Expect::Screened(CLIP_FRAMES));
    c.inline("PNG image (no helper involved)", &png(5, 64), "image/png", Expect::Image(64, 64));
    let starved = Run {
        name: "starved",
        cases: c.0,
        extra: format!("[video]\nhelper_memory_bytes = {HELPER_MEMORY_MIN}\n"),
        worker: "",
        latency_bound_ms: 10_000.0,
    };

    // ---- the `missing` worker: no helper at all
    let mut c = Cases(Vec::new());
    c.inline("helper path does not exist (H.264 clip)", &good_a, "video/mp4", Expect::MediaError("video_unavailable", "no-such-helper"));
    c.inline("PNG image, screened without the helper", &png(6, 48), "image/png", Expect::Image(48, 48));
    c.inline("helper path does not exist (VP9 clip)", &good_b, "video/webm", Expect::MediaError("video_unavailable", "no-such-helper"));
    let missing = Run {
        name: "missing",
        cases: c.0,
        extra: format!("[video]\nhelper = \"{}\"\n", work.path().join("no-such-helper").display()),
        worker: "",
        latency_bound_ms: 10_000.0,
    };

    // ---- run them side by side
    let mut started = Vec::new();
    for run in [streams, rogue, starved, missing] {
        started.push(start(&brokers, run, &media).await);
    }
    let schema: Value = serde_json::from_str(include_str!("../docs/schemas/verdict.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema");
    let deadline = Instant::now() + WAIT;
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    let brokers_ref = brokers.clone();
    for s in &mut started {
        lines.extend(finish(&brokers_ref, s, deadline, &mut failures));
    }
    // Everything once more, after every worker exited: a duplicate shows here.
    let topics: Vec<&str> = started.iter().flat_map(|s| [s.topics.verdicts.as_str(), s.topics.dlq.as_str()]).collect();
    let all = read_until(&brokers, &topics, Duration::from_secs(4), |_| false);
    let mut matrix = Vec::new();
    for s in &started {
        matrix.push(format!("\n{}:", s.run.name));
        judge(s, &all, &validator, &brokers, &mut matrix, &mut failures);
    }
    println!("\n{}", lines.join("\n"));
    println!("{}", matrix.join("\n"));
    println!("\nwhole test: {:.1} s", started_at.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n\n"));
}
