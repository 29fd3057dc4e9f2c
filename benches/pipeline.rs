//! Worker throughput on a real Apache Kafka broker, exact matching only.
//!
//! Pre-produces N upload events with distinct ~10 KB inline images to fresh 3-partition input
//! topics, then for each configuration starts the release `perisai run` binary as a subprocess
//! with a fresh consumer group and verdict topic, and times it from spawn until N verdicts are
//! acknowledged on the verdict topic (summed high watermarks). Afterwards it reads every
//! verdict back for `latency_ms` percentiles and checks one verdict per event.
//!
//! Two media kinds isolate the screening cost from the Kafka cost:
//! - `png`: `image/png` noise PNGs, decoded (PDQ and classifier disabled);
//! - `octet`: the same bytes with the PNG signature zeroed, declared
//!   `application/octet-stream`: exact hashes only, no decode. Same event sizes, same hits;
//! - `jpeg` (not in the default set): photo-like `image/jpeg` of `--jpeg-side` pixels square,
//!   about 10 KB at the default 192: more pixels per byte than noise, so a dearer decode;
//! - `photo` (not in the default set): the JPEG fixture photos (tests/fixtures/{pdq,nsfw}/images,
//!   20 KB–625 KB), each event a distinct file (a comment segment naming the event), with PDQ and
//!   the classifier on (`make setup`) and `--pdq-bank` random PDQ hashes (default 1,000,000) in
//!   the review bank: the whole screen through Kafka, beside `benches/whole_screen.rs`.
//! - `video` (not in the default set): `video/mp4` **path media**, `--video-size` (1280x720) by
//!   `--video-seconds` (30) H.264 clips made with the ffmpeg command (`testsrc2` with temporal
//!   noise at 30 fps, CRF 23, as `scripts/bench-video` makes them), each event a distinct file (the
//!   same stream remuxed with a comment naming the event). The whole screen as for `photo`, plus
//!   `--vpdq-bank` random 30-frame vPDQ videos (default 1,000) in the review bank. The worker's
//!   CPU includes its reaped helper processes; the helpers' peak RSS is sampled while they run.
//!   Needs the helper built beside the worker (`make build`).
//!
//! For each run it also reads, from /proc, the worker's CPU time split by thread (librdkafka's
//! `rdk:*` threads vs the rest) and its peak RSS (VmHWM), and the
//! `perisai_stage_duration_seconds` sums from its `/metrics`, all just before SIGTERM.
//!
//! `--delivery at_least_once,exactly_once` runs each configuration in both modes. Exactly-once
//! runs count as done when the group's committed offsets cover every event: the offsets are
//! committed in the same transactions as the verdicts, so that is when a read_committed reader
//! has them all (the verdict topic's high watermarks also count transaction markers).
//!
//! ```text
//! scripts/kafka start
//! cargo bench --bench pipeline -- [--events 100000] [--media png,octet] [--in-flight 256,1024]
//!                                 [--runs 3] [--image-side 57] [--jpeg-side 192] [--keep-topics]
//!                                 [--delivery at_least_once,exactly_once] [--pdq-bank 1000000]
//!                                 [--video-size 1280x720] [--video-seconds 30] [--vpdq-bank 1000]
//! ```
//! `PERISAI_BENCH_EXTRA_TOML` is appended to every run's configuration (tables such as
//! `[kafka.consumer]`, to try a librdkafka option).
//! `PERISAI_BENCH_BIN` overrides the worker binary (default: the release `perisai` cargo built).
//! `PERISAI_TEST_BROKERS` names the broker (default 127.0.0.1:19092); `PERISAI_BENCH_BROKER_PID`,
//! if set, adds the broker's CPU time during each run (it includes any other traffic).

#[path = "support/proc.rs"]
mod proc;

#[path = "support/photos.rs"]
mod photos;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::TopicPartitionList;

use perisai::hash::exact::exact_hashes;

const PARTITIONS: i32 = 3;
/// Bank filler entries that never match, so lookups run against a bank of realistic size.
const BANK_FILLER: usize = 2000;
/// Every HIT_EVERY-th event is in the block bank (md5), and every HIT_EVERY-th (offset by half)
/// in the review bank (sha256).
const HIT_EVERY: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum MediaKind {
    Png,
    Octet,
    Jpeg,
    Photo,
    Video,
}

impl MediaKind {
    fn name(self) -> &'static str {
        match self {
            MediaKind::Png => "png",
            MediaKind::Octet => "octet",
            MediaKind::Jpeg => "jpeg",
            MediaKind::Photo => "photo",
            MediaKind::Video => "video",
        }
    }
    fn content_type(self) -> &'static str {
        match self {
            MediaKind::Png => "image/png",
            MediaKind::Octet => "application/octet-stream",
            MediaKind::Jpeg | MediaKind::Photo => "image/jpeg",
            MediaKind::Video => "video/mp4",
        }
    }
    /// The whole screen (PDQ against a large bank, the classifier), not exact matching only.
    fn whole_screen(self) -> bool {
        matches!(self, MediaKind::Photo | MediaKind::Video)
    }
}

struct Options {
    events: u32,
    media: Vec<MediaKind>,
    in_flight: Vec<usize>,
    runs: usize,
    image_side: u32,
    jpeg_side: u32,
    pdq_bank: usize,
    video_size: String,
    video_seconds: u32,
    vpdq_bank: usize,
    keep_topics: bool,
    delivery: Vec<&'static str>,
}

fn parse_args() -> Options {
    let mut o = Options {
        events: 100_000,
        media: vec![MediaKind::Png, MediaKind::Octet],
        in_flight: vec![256, 1024],
        runs: 3,
        image_side: 57,
        jpeg_side: 192,
        pdq_bank: 1_000_000,
        video_size: "1280x720".into(),
        video_seconds: 30,
        vpdq_bank: 1000,
        keep_topics: false,
        delivery: vec!["at_least_once"],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| die(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--events" => o.events = value().parse().unwrap_or_else(|_| die("--events: a number")),
            "--runs" => o.runs = value().parse().unwrap_or_else(|_| die("--runs: a number")),
            "--image-side" => o.image_side = value().parse().unwrap_or_else(|_| die("--image-side: a number")),
            "--jpeg-side" => o.jpeg_side = value().parse().unwrap_or_else(|_| die("--jpeg-side: a number")),
            "--pdq-bank" => o.pdq_bank = value().parse().unwrap_or_else(|_| die("--pdq-bank: a number")),
            "--vpdq-bank" => o.vpdq_bank = value().parse().unwrap_or_else(|_| die("--vpdq-bank: a number")),
            "--video-seconds" => o.video_seconds = value().parse().unwrap_or_else(|_| die("--video-seconds: a number")),
            "--video-size" => o.video_size = value(),
            "--in-flight" => {
                o.in_flight = value()
                    .split(',')
                    .map(|v| v.parse().unwrap_or_else(|_| die("--in-flight: numbers, comma separated")))
                    .collect()
            }
            "--media" => {
                o.media = value()
                    .split(',')
                    .map(|v| match v {
                        "png" => MediaKind::Png,
                        "octet" => MediaKind::Octet,
                        "jpeg" => MediaKind::Jpeg,
                        "photo" => MediaKind::Photo,
                        "video" => MediaKind::Video,
                        _ => die("--media: png, octet, jpeg, photo and/or video"),
                    })
                    .collect()
            }
            "--keep-topics" => o.keep_topics = true,
            "--delivery" => {
                o.delivery = value()
                    .split(',')
                    .map(|v| match v {
                        "at_least_once" => "at_least_once",
                        "exactly_once" => "exactly_once",
                        _ => die("--delivery: at_least_once and/or exactly_once"),
                    })
                    .collect()
            }
            // `cargo bench` passes --bench; a filter word may follow it.
            a if a.starts_with("--bench") => {}
            a => die(&format!("unknown argument {a}")),
        }
    }
    o
}

/// Topics this run created, deleted at the end (or on a fatal error) unless --keep-topics.
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static KEEP_TOPICS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn die(msg: &str) -> ! {
    eprintln!("pipeline bench: {msg}");
    cleanup_topics();
    std::process::exit(2)
}

/// Best effort, from any context: a runtime of its own on a thread of its own.
fn cleanup_topics() {
    if KEEP_TOPICS.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let topics = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    if topics.is_empty() {
        return;
    }
    let brokers = brokers();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(delete_topics(&brokers, &topics));
    })
    .join();
}

fn brokers() -> String {
    std::env::var("PERISAI_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// Distinct, incompressible RGB noise: a PNG of about side² × 3 bytes.
fn noise_png(seed: u32, side: u32) -> Vec<u8> {
    let mut state = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut raw = vec![0u8; (side * side * 3) as usize];
    for chunk in raw.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let img = image::RgbImage::from_raw(side, side, raw).expect("buffer matches size");
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("png encode");
    out.into_inner()
}

/// A distinct photo-like JPEG (smooth gradients, a seeded pattern, mild grain): many more pixels
/// per byte than noise, so decoding costs what a real ~10 KB upload costs.
fn photo_jpeg(seed: u32, side: u32) -> Vec<u8> {
    let mut state = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let (fx, fy) = (1.0 + f64::from(seed % 7), 1.0 + f64::from(seed / 7 % 5));
    let mut pixels = Vec::with_capacity((side * side * 3) as usize);
    for y in 0..side {
        for x in 0..side {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let (u, v) = (f64::from(x) / f64::from(side), f64::from(y) / f64::from(side));
            let wave = ((u * fx * 6.3).sin() * (v * fy * 6.3).cos() + 1.0) * 60.0;
            let grain = (state & 0x1f) as f64;
            pixels.push((u * 120.0 + wave + grain) as u8);
            pixels.push((v * 120.0 + wave / 2.0 + grain) as u8);
            pixels.push(((1.0 - u) * 100.0 + wave + grain) as u8);
        }
    }
    let mut comp = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    // The mozjpeg defaults (trellis, scan optimisation) take ~10 ms an image: too slow to make 100k.
    comp.set_fastest_defaults();
    comp.set_size(side as usize, side as usize);
    comp.set_quality(80.0);
    let mut started = comp.start_compress(Vec::new()).expect("jpeg start");
    started.write_scanlines(&pixels).expect("jpeg scanlines");
    started.finish().expect("jpeg finish")
}

/// Fixture photo `i % n` (read once) with a comment segment naming `i`: a distinct file, the
/// same picture.
fn distinct_photo(i: u32) -> Vec<u8> {
    static PHOTOS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    let photos = PHOTOS.get_or_init(photos::photos);
    photos::with_comment(&photos[i as usize % photos.len()], &format!("event {i}"))
}

/// The `video` kind's files: the path-media root the worker reads, and the one encoded clip
/// every event's file is remuxed from.
struct Videos {
    root: tempfile::TempDir,
    clip: std::path::PathBuf,
    seconds: f64,
}

static VIDEOS: std::sync::OnceLock<Videos> = std::sync::OnceLock::new();

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .unwrap_or_else(|e| die(&format!("the ffmpeg command is needed for --media video: {e}")));
    if !out.status.success() {
        die(&format!("ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
}

/// Encodes the clip once: noise on every frame, so the decoder has real work on each.
fn prepare_videos(size: &str, seconds: u32) -> &'static Videos {
    VIDEOS.get_or_init(|| {
        let root = tempfile::tempdir().expect("temp dir");
        let clip = root.path().join("clip.mp4");
        let started = Instant::now();
        ffmpeg(&[
            "-f", "lavfi", "-i", &format!("testsrc2=size={size}:rate=30,noise=alls=12:allf=t+u"),
            "-t", &seconds.to_string(), "-c:v", "libx264", "-crf", "23", "-pix_fmt", "yuv420p",
            clip.to_str().expect("UTF-8 temp path"),
        ]);
        println!("encoded a {size} {seconds} s clip in {:.1} s", started.elapsed().as_secs_f64());
        Videos { root, clip, seconds: f64::from(seconds) }
    })
}

/// Event `i`'s video: the clip remuxed (no re-encode) with a comment naming the event, so each
/// event is a distinct file with the same frames.
fn distinct_video(i: u32) -> Vec<u8> {
    let videos = VIDEOS.get().expect("prepare_videos first");
    let file = videos.root.path().join(video_name(i));
    ffmpeg(&[
        "-i", videos.clip.to_str().expect("UTF-8"), "-c", "copy", "-metadata", &format!("comment=event {i}"),
        file.to_str().expect("UTF-8"),
    ]);
    std::fs::read(&file).expect("read remuxed clip")
}

fn video_name(i: u32) -> String {
    format!("v-{i}.mp4")
}

fn media_bytes(kind: MediaKind, i: u32, side: u32, jpeg_side: u32) -> Vec<u8> {
    match kind {
        MediaKind::Jpeg => return photo_jpeg(i, jpeg_side),
        MediaKind::Photo => return distinct_photo(i),
        MediaKind::Video => return distinct_video(i),
        MediaKind::Png | MediaKind::Octet => {}
    }
    let mut bytes = noise_png(i, side);
    if kind == MediaKind::Octet {
        // Without its signature the worker cannot sniff an image, so it only exact-hashes it.
        bytes[..8].fill(0);
    }
    bytes
}

fn event_json(i: u32, kind: MediaKind, media: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "perisai.upload/v1", "event_id": format!("e-{i}"), "media_id": format!("m-{i}"),
        "tenant": "bench", "surface": "post", "content_type": kind.content_type(),
        "media": if kind == MediaKind::Video {
            serde_json::json!({"path": video_name(i)})
        } else {
            serde_json::json!({"inline": base64::engine::general_purpose::STANDARD.encode(media)})
        },
        "attributes": {"bench": true}
    }))
    .expect("event JSON")
}

/// Bank rows for the hits of one input topic.
#[derive(Default)]
struct Hits {
    md5: Vec<String>,
    sha256: Vec<String>,
}

struct Input {
    kind: MediaKind,
    topic: String,
    hits: Hits,
    media_bytes: f64,
    event_bytes: f64,
}

async fn create_topics(brokers: &str, names: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let new: Vec<_> = names.iter().map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new, &opts).await.unwrap_or_else(|e| die(&format!("create topics: {e}")));
    for r in results {
        match r {
            Ok(name) => CREATED.lock().unwrap_or_else(|e| e.into_inner()).push(name),
            Err((name, e)) => die(&format!("create topic {name}: {e}")),
        }
    }
}

async fn delete_topics(brokers: &str, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    match admin.delete_topics(&refs, &opts).await {
        Ok(results) => {
            for r in results {
                if let Err((topic, e)) = r {
                    eprintln!("could not delete {topic}: {e}");
                }
            }
        }
        Err(e) => eprintln!("could not delete topics: {e}"),
    }
}

async fn produce_input(brokers: &str, topic: &str, kind: MediaKind, events: u32, side: u32, jpeg_side: u32) -> Input {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .expect("producer");
    let started = Instant::now();
    let mut hits = Hits::default();
    let (mut media_total, mut event_total) = (0usize, 0usize);
    const WINDOW: u32 = 2000;
    let mut i = 0;
    while i < events {
        let end = (i + WINDOW).min(events);
        let records: Vec<(String, Vec<u8>)> = (i..end)
            .map(|n| {
                let media = media_bytes(kind, n, side, jpeg_side);
                if n % HIT_EVERY == 0 {
                    hits.md5.push(exact_hashes(&media).md5);
                } else if n % HIT_EVERY == HIT_EVERY / 2 {
                    hits.sha256.push(exact_hashes(&media).sha256);
                }
                media_total += media.len();
                let event = event_json(n, kind, &media);
                event_total += event.len();
                (format!("m-{n}"), event)
            })
            .collect();
        let sends: Vec<_> = records
            .iter()
            .map(|(k, v)| producer.send(FutureRecord::to(topic).key(k).payload(v), Timeout::After(Duration::from_secs(60))))
            .collect();
        for s in futures::future::join_all(sends).await {
            if let Err((e, _)) = s {
                die(&format!("producing to {topic}: {e}"));
            }
        }
        i = end;
    }
    let secs = started.elapsed().as_secs_f64();
    let input = Input {
        kind,
        topic: topic.to_string(),
        hits,
        media_bytes: media_total as f64 / f64::from(events),
        event_bytes: event_total as f64 / f64::from(events),
    };
    println!(
        "produced {events} {} events to {topic} in {secs:.1} s (media {:.0} B, event {:.0} B on average; {} md5 + {} sha256 hits)",
        kind.name(),
        input.media_bytes,
        input.event_bytes,
        input.hits.md5.len(),
        input.hits.sha256.len()
    );
    input
}

/// Block bank: filler md5s plus the md5 hits; review bank: filler sha256s plus the sha256 hits,
/// `pdq` random PDQ hashes and `vpdq` random 30-frame vPDQ videos.
fn write_banks(dir: &Path, hits: &Hits, pdq: usize, vpdq: usize) -> String {
    let filler = |i: usize| exact_hashes(format!("bank-filler-{i}").as_bytes());
    let mut block = String::from("signal,hash,entry\n");
    let mut review = String::from("signal,hash,entry\n");
    for i in 0..BANK_FILLER {
        let h = filler(i);
        block.push_str(&format!("md5,{},filler-{i}\n", h.md5));
        review.push_str(&format!("sha256,{},filler-{i}\n", h.sha256));
    }
    for (i, h) in hits.md5.iter().enumerate() {
        block.push_str(&format!("md5,{h},hit-{i}\n"));
    }
    for (i, h) in hits.sha256.iter().enumerate() {
        review.push_str(&format!("sha256,{h},hit-{i}\n"));
    }
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let mut random_pdq = || {
        let mut hex = String::with_capacity(64);
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            hex.push_str(&format!("{state:016x}"));
        }
        hex
    };
    for i in 0..pdq {
        review.push_str(&format!("pdq,{},pdq-filler-{i}\n", random_pdq()));
    }
    for i in 0..vpdq {
        // python-threatexchange's signal string, a JSON list, quoted as one CSV field.
        let frames: Vec<String> = (0..30).map(|t| format!("\"\"{},100,{t}.000\"\"", random_pdq())).collect();
        review.push_str(&format!("vpdq,\"[{}]\",vpdq-filler-{i}\n", frames.join(",")));
    }
    std::fs::write(dir.join("block.csv"), block).expect("write bank");
    std::fs::write(dir.join("review.csv"), review).expect("write bank");
    format!(
        "[[banks]]\nname = \"block\"\nfile = \"{d}/block.csv\"\naction = \"block\"\n\n\
         [[banks]]\nname = \"review\"\nfile = \"{d}/review.csv\"\naction = \"review\"\n",
        d = dir.display()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct ProcSample {
    /// (thread name, CPU seconds) for live threads.
    threads: Vec<(String, f64)>,
    /// Whole process, exited threads included.
    cpu: f64,
    /// Its children that exited and were reaped (the video helpers).
    children_cpu: f64,
    hwm_kib: u64,
}

/// From a /proc stat line: the name, utime + stime, and cutime + cstime (reaped children), in ticks.
fn stat_cpu(text: &str) -> Option<(String, u64, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    // After the name: state is field 3, then utime, stime, cutime, cstime are fields 14 to 17
    // (1-based, whole line).
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((name, ticks(11)? + ticks(12)?, ticks(13)? + ticks(14)?))
}

/// A process's peak RSS (VmHWM) in KiB from its /proc status file (0 without the line); `None`
/// when the process is gone.
fn peak_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0),
    )
}

fn proc_sample(pid: u32, ticks: f64) -> Option<ProcSample> {
    let base = format!("/proc/{pid}");
    let (_, total, children) = stat_cpu(&std::fs::read_to_string(format!("{base}/stat")).ok()?)?;
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(format!("{base}/task")).ok()?.flatten() {
        if let Some((name, t, _)) = std::fs::read_to_string(entry.path().join("stat")).ok().and_then(|s| stat_cpu(&s)) {
            threads.push((name, t as f64 / ticks));
        }
    }
    let hwm_kib = peak_rss_kib(&pid.to_string())?;
    Some(ProcSample { threads, cpu: total as f64 / ticks, children_cpu: children as f64 / ticks, hwm_kib })
}

/// The largest VmHWM among `pid`'s live children (any thread's), in KiB: the video helpers.
fn children_peak_kib(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let mut peak = 0;
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        peak = children.split_whitespace().filter_map(peak_rss_kib).fold(peak, u64::max);
    }
    peak
}

fn cpu_seconds_of(pid: u32, ticks: f64) -> Option<f64> {
    let (_, t, _) = stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    Some(t as f64 / ticks)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `perisai_stage_duration_seconds_sum` per stage, and the event duration sum.
async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else { return out };
    let Ok(text) = resp.text().await else { return out };
    for line in text.lines() {
        let mut parts = line.rsplitn(2, ' ');
        let (Some(value), Some(name)) = (parts.next(), parts.next()) else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        if let Some(rest) = name.strip_prefix("perisai_stage_duration_seconds_sum{stage=\"") {
            out.insert(rest.trim_end_matches("\"}").to_string(), value);
        } else if name == "perisai_video_decode_seconds_sum" {
            // Videos are decoded (and hashed frame by frame) outside the decode stage.
            out.insert("video".into(), value);
        } else if name == "perisai_event_duration_seconds_sum" {
            out.insert("event_total".into(), value);
        }
    }
    out
}

fn high_watermarks(consumer: &BaseConsumer, topic: &str, partitions: i32) -> i64 {
    (0..partitions)
        .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(5)).map(|(_, high)| high).unwrap_or(0))
        .sum()
}

struct Verdicts {
    count: usize,
    distinct: usize,
    actions: BTreeMap<String, usize>,
    latency_ms: Vec<f64>,
}

/// The group's committed offsets on `topic`, summed.
fn committed_sum(consumer: &BaseConsumer, topic: &str, partitions: i32) -> i64 {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .map(|c| c.elements().iter().filter_map(|e| e.offset().to_raw()).filter(|o| *o > 0).sum())
        .unwrap_or(0)
}

fn read_verdicts(brokers: &str, topic: &str, partitions: i32, expected: usize) -> Verdicts {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}.reader"))
        .set("enable.auto.commit", "false")
        // Exactly-once runs: records of aborted transactions are not verdicts.
        .set("isolation.level", "read_committed")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut seen = HashSet::new();
    let mut v = Verdicts { count: 0, distinct: 0, actions: BTreeMap::new(), latency_ms: Vec::with_capacity(expected) };
    let mut idle_since = Instant::now();
    while v.count < expected && idle_since.elapsed() < Duration::from_secs(15) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else { continue };
        idle_since = Instant::now();
        v.count += 1;
        let json: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("verdict JSON");
        seen.insert(json["event_id"].as_str().unwrap_or_default().to_string());
        *v.actions.entry(json["action"].as_str().unwrap_or("?").to_string()).or_insert(0) += 1;
        v.latency_ms.push(json["latency_ms"].as_f64().unwrap_or(f64::NAN));
    }
    v.distinct = seen.len();
    v.latency_ms.sort_by(f64::total_cmp);
    v
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[derive(Clone)]
struct RunResult {
    kind: MediaKind,
    in_flight: usize,
    delivery: &'static str,
    /// From spawn to all verdicts acknowledged.
    wall: f64,
    /// From the first verdict to the last.
    steady: f64,
    events_per_s: f64,
    steady_per_s: f64,
    p50: f64,
    p99: f64,
    rss_mib: f64,
    cpu: f64,
    /// The video helpers' CPU (reaped children) and their largest sampled peak RSS.
    helper_cpu: f64,
    helper_rss_mib: f64,
    rdkafka_cpu: f64,
    broker_cpu: Option<f64>,
    actions: BTreeMap<String, usize>,
    duplicates: usize,
    stages: BTreeMap<String, f64>,
    load: String,
}

/// The worker binary: `PERISAI_BENCH_BIN` if set (a copy that a concurrent build in a shared
/// target dir cannot replace mid-run), else the one cargo built with this bench.
fn worker_binary() -> std::path::PathBuf {
    std::env::var_os("PERISAI_BENCH_BIN").map_or_else(|| env!("CARGO_BIN_EXE_perisai").into(), Into::into)
}

fn spawn_worker(config: &Path, log: &Path) -> Child {
    Command::new(worker_binary())
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn perisai run")
}

async fn run_once(
    brokers: &str,
    input: &Input,
    events: u32,
    in_flight: usize,
    delivery: &'static str,
    banks: (usize, usize),
    ticks: f64,
) -> RunResult {
    let base = format!("{}.{}-{in_flight}-{}", input.topic, input.kind.name(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 1_000_000);
    let verdict_topic = format!("{base}.verdicts");
    let dlq_topic = format!("{base}.dlq");
    create_topics(brokers, &[(&verdict_topic, PARTITIONS), (&dlq_topic, 1)]).await;

    let dir = tempfile::tempdir().expect("temp dir");
    // Photos and videos get the whole screen: PDQ against a large bank, and the classifier.
    let whole = input.kind.whole_screen();
    let (pdq_bank, vpdq_bank) = banks;
    let banks = write_banks(
        dir.path(),
        &input.hits,
        if whole { pdq_bank } else { 0 },
        if input.kind == MediaKind::Video { vpdq_bank } else { 0 },
    );
    let media = VIDEOS
        .get()
        .filter(|_| input.kind == MediaKind::Video)
        .map(|v| format!("[media]\npath_root = \"{}\"\n\n", v.root.path().display()))
        .unwrap_or_default();
    let port = free_port();
    let config = dir.path().join("perisai.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{base}.group\"\ninput_topic = \"{input_topic}\"\n\
             verdict_topic = \"{verdict_topic}\"\ndlq_topic = \"{dlq_topic}\"\nbanks_topic = \"\"\n\
             delivery = \"{delivery}\"\n\n\
             [worker]\nmax_in_flight = {in_flight}\n\n[pdq]\nenabled = {whole}\n\n[classifier]\nenabled = {whole}\n\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[log]\nlevel = \"warn\"\n\n{media}{banks}\n{extra}",
            input_topic = input.topic,
            extra = std::env::var("PERISAI_BENCH_EXTRA_TOML").unwrap_or_default(),
        ),
    )
    .expect("write config");

    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{base}.group"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("watcher");
    let broker_pid: Option<u32> = std::env::var("PERISAI_BENCH_BROKER_PID").ok().and_then(|p| p.trim().parse().ok());
    let broker_cpu_start = broker_pid.and_then(|p| cpu_seconds_of(p, ticks));
    let load_start = load_average();
    let log = dir.path().join("worker.log");
    let started = Instant::now();
    let mut worker = spawn_worker(&config, &log);
    let pid = worker.id();
    let mut first: Option<(Instant, i64)> = None;
    let mut helper_peak_kib = 0;
    let deadline = started + Duration::from_secs(1800);
    loop {
        let done = if delivery == "exactly_once" {
            committed_sum(&watcher, &input.topic, PARTITIONS)
        } else {
            high_watermarks(&watcher, &verdict_topic, PARTITIONS)
        };
        helper_peak_kib = helper_peak_kib.max(children_peak_kib(pid));
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done));
        }
        if done >= i64::from(events) {
            break;
        }
        if let Some(status) = worker.try_wait().expect("try_wait") {
            die(&format!("worker exited early ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
        }
        if Instant::now() > deadline {
            let _ = worker.kill();
            die("worker did not finish within 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = Instant::now();
    let sample = proc_sample(pid, ticks).unwrap_or_else(|| die("worker vanished before sampling"));
    let broker_cpu = match (broker_pid, broker_cpu_start) {
        (Some(p), Some(start)) => cpu_seconds_of(p, ticks).map(|end| end - start),
        _ => None,
    };
    let stages = scrape(port).await;
    let load = format!("{load_start} → {}", load_average());
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = worker.try_wait().expect("try_wait") {
            if !status.success() {
                eprintln!("worker exit {status}:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            break;
        }
        if Instant::now() > deadline {
            let _ = worker.kill();
            eprintln!("worker did not exit within 30 s of SIGTERM");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let verdicts = read_verdicts(brokers, &verdict_topic, PARTITIONS, events as usize);
    if verdicts.distinct != events as usize {
        eprintln!("WARNING: {} distinct event_ids among {} verdicts, expected {events}", verdicts.distinct, verdicts.count);
    }
    let expected_hits = events.div_ceil(HIT_EVERY) as usize;
    if verdicts.actions.get("block").copied().unwrap_or(0) < expected_hits {
        eprintln!("WARNING: fewer block verdicts than bank hits: {:?}", verdicts.actions);
    }
    let wall = (finished - started).as_secs_f64();
    let (first_at, first_count) = first.expect("at least one verdict");
    let steady = (finished - first_at).as_secs_f64();
    let rdkafka_cpu: f64 = sample.threads.iter().filter(|(n, _)| n.starts_with("rdk:")).map(|(_, t)| t).sum();
    RunResult {
        kind: input.kind,
        in_flight,
        delivery,
        wall,
        steady,
        events_per_s: f64::from(events) / wall,
        // NaN when every verdict showed up in the first poll (tiny runs): no interval to divide by.
        steady_per_s: if first_count < i64::from(events) { (i64::from(events) - first_count) as f64 / steady } else { f64::NAN },
        p50: percentile(&verdicts.latency_ms, 0.50),
        p99: percentile(&verdicts.latency_ms, 0.99),
        rss_mib: sample.hwm_kib as f64 / 1024.0,
        cpu: sample.cpu,
        helper_cpu: sample.children_cpu,
        helper_rss_mib: helper_peak_kib as f64 / 1024.0,
        rdkafka_cpu,
        broker_cpu,
        duplicates: verdicts.count - verdicts.distinct,
        actions: verdicts.actions,
        stages,
        load,
    }
}

fn print_run(r: &RunResult, events: u32) {
    let per_event_us = |s: f64| s / f64::from(events) * 1e6;
    let stage = |name: &str| r.stages.get(name).copied().unwrap_or(0.0);
    println!(
        "run media={} in_flight={} delivery={}: {:.0} ev/s from spawn ({:.1} s), {:.0} ev/s first→last verdict ({:.1} s); \
         latency_ms p50 {:.2} p99 {:.2}; peak RSS {:.0} MiB; CPU {:.1} s = {:.0} µs/event \
         (librdkafka threads {:.1} s = {:.0} µs/event, other {:.0} µs/event); \
         stage sums µs/event: fetch {:.0} exact_hash {:.0} decode {:.0} match {:.1} produce-wait {:.0}; \
         verdicts {:?} duplicates {}{}; load {}",
        r.kind.name(),
        r.in_flight,
        r.delivery,
        r.events_per_s,
        r.wall,
        r.steady_per_s,
        r.steady,
        r.p50,
        r.p99,
        r.rss_mib,
        r.cpu,
        per_event_us(r.cpu),
        r.rdkafka_cpu,
        per_event_us(r.rdkafka_cpu),
        per_event_us(r.cpu - r.rdkafka_cpu),
        per_event_us(stage("fetch")),
        per_event_us(stage("exact_hash")),
        per_event_us(stage("decode")),
        per_event_us(stage("match")),
        per_event_us(stage("produce")),
        r.actions,
        r.duplicates,
        r.broker_cpu.map(|c| format!("; broker CPU {c:.1} s")).unwrap_or_default(),
        r.load
    );
    if let Some(videos) = VIDEOS.get().filter(|_| r.kind == MediaKind::Video) {
        let video_seconds = f64::from(events) * videos.seconds;
        println!(
            "  video: {:.2} videos/s, {:.1} video s per wall s; CPU per video second: worker {:.3} s + helpers {:.3} s = {:.3} s; \
             helper peak RSS {:.0} MiB (sampled); video decode and hash {:.2} s per video",
            r.events_per_s,
            video_seconds / r.wall,
            r.cpu / video_seconds,
            r.helper_cpu / video_seconds,
            (r.cpu + r.helper_cpu) / video_seconds,
            r.helper_rss_mib,
            r.stages.get("video").copied().unwrap_or(0.0) / f64::from(events)
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let opts = parse_args();
    KEEP_TOPICS.store(opts.keep_topics, std::sync::atomic::Ordering::Relaxed);
    let brokers = brokers();
    let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("client");
    if let Err(e) = probe.fetch_metadata(None, Duration::from_secs(10)) {
        die(&format!("no Kafka broker at {brokers} ({e}); start one with `scripts/kafka start`"));
    }
    let ticks = proc::clock_ticks();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 1_000_000;
    let prefix = format!("bench-pipeline-{}-{stamp}", std::process::id());
    let mut inputs = Vec::new();
    for &kind in &opts.media {
        if kind == MediaKind::Video {
            prepare_videos(&opts.video_size, opts.video_seconds);
        }
        let topic = format!("{prefix}.{}.uploads", kind.name());
        create_topics(&brokers, &[(&topic, PARTITIONS)]).await;
        inputs.push(produce_input(&brokers, &topic, kind, opts.events, opts.image_side, opts.jpeg_side).await);
    }

    // Configurations take turns, so drift in the shared machine's load spreads over all of them.
    let mut results: Vec<RunResult> = Vec::new();
    for _ in 0..opts.runs {
        for input in &inputs {
            for &in_flight in &opts.in_flight {
                for &delivery in &opts.delivery {
                    let r = run_once(&brokers, input, opts.events, in_flight, delivery, (opts.pdq_bank, opts.vpdq_bank), ticks).await;
                    print_run(&r, opts.events);
                    results.push(r);
                }
            }
        }
    }

    println!("\nAll runs, in the order run:");
    println!("| media | max_in_flight | delivery | events/s (from spawn) | events/s (first→last verdict) | latency_ms p50 | p99 | peak RSS MiB | worker CPU s | librdkafka threads CPU s | broker CPU s | load average (1/5/15 min) before → after |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &results {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} | {} | {} |",
            r.kind.name(),
            r.in_flight,
            r.delivery,
            r.events_per_s,
            r.steady_per_s,
            r.p50,
            r.p99,
            r.rss_mib,
            r.cpu,
            r.rdkafka_cpu,
            r.broker_cpu.map_or("-".into(), |c| format!("{c:.1}")),
            r.load
        );
    }

    println!("\nMedians over {} runs of {} events each (2 shared cores; other processes were running):", opts.runs, opts.events);
    println!("| media | max_in_flight | delivery | events/s (from spawn) | events/s (first→last verdict) | latency_ms p50 | latency_ms p99 | peak RSS MiB | worker CPU µs/event | librdkafka threads µs/event | other threads µs/event | decode stage µs/event |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for input in &inputs {
        for &in_flight in &opts.in_flight {
            for &delivery in &opts.delivery {
                let rs: Vec<&RunResult> =
                    results.iter().filter(|r| r.kind == input.kind && r.in_flight == in_flight && r.delivery == delivery).collect();
                let med = |f: &dyn Fn(&RunResult) -> f64| median(&mut rs.iter().map(|r| f(r)).collect::<Vec<_>>());
                let us = |s: f64| s / f64::from(opts.events) * 1e6;
                println!(
                    "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    input.kind.name(),
                    in_flight,
                    delivery,
                    med(&|r| r.events_per_s),
                    med(&|r| r.steady_per_s),
                    med(&|r| r.p50),
                    med(&|r| r.p99),
                    med(&|r| r.rss_mib),
                    us(med(&|r| r.cpu)),
                    us(med(&|r| r.rdkafka_cpu)),
                    us(med(&|r| r.cpu - r.rdkafka_cpu)),
                    us(med(&|r| r.stages.get("decode").copied().unwrap_or(0.0))),
                );
            }
        }
    }
    if let Some(videos) = VIDEOS.get() {
        println!("\nVideo medians ({} s clips, path media, worker CPU includes its helpers):", videos.seconds);
        println!("| max_in_flight | delivery | videos/s (from spawn) | videos/s (first→last verdict) | video s per wall s | CPU s per video s (worker + helpers) | helpers' share | worker peak RSS MiB | helper peak RSS MiB |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for &in_flight in &opts.in_flight {
            for &delivery in &opts.delivery {
                let rs: Vec<&RunResult> =
                    results.iter().filter(|r| r.kind == MediaKind::Video && r.in_flight == in_flight && r.delivery == delivery).collect();
                let med = |f: &dyn Fn(&RunResult) -> f64| median(&mut rs.iter().map(|r| f(r)).collect::<Vec<_>>());
                let video_seconds = f64::from(opts.events) * videos.seconds;
                println!(
                    "| {in_flight} | {delivery} | {:.2} | {:.2} | {:.1} | {:.3} | {:.0} % | {:.0} | {:.0} |",
                    med(&|r| r.events_per_s),
                    med(&|r| r.steady_per_s),
                    med(&|r| video_seconds / r.wall),
                    med(&|r| (r.cpu + r.helper_cpu) / video_seconds),
                    med(&|r| 100.0 * r.helper_cpu / (r.cpu + r.helper_cpu)),
                    med(&|r| r.rss_mib),
                    med(&|r| r.helper_rss_mib),
                );
            }
        }
    }
    cleanup_topics();
}
