//! vPDQ banks end to end on a real Apache Kafka broker: a video's vPDQ hash, made by Meta's vpdq
//! binding and written as python-threatexchange writes it, is imported as a ThreatExchange `vpdq`
//! line, exported back in canonical form and re-imported without publishing anything; a worker then
//! screens copies of the video (re-encoded, rescaled, trimmed, watermarked, padded), near-threshold
//! mixes and unrelated clips, and decides each exactly as python-threatexchange's brute-force
//! matcher does on the reference hashes (computed here, pairwise); once the entry is withdrawn, a
//! copy is allowed again.

mod common;
mod video_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sha2::{Digest, Sha256};
use video_support::{clip, ffmpeg, reference_lines, reference_python, reference_signal_string};

const BANK: &str = "videos";
const ENTRY: &str = "case-video-1";
/// A review bank matching at 1 % of the upload's frames: its matches report the partial shares
/// that the block bank's 80 % never lets through.
const REVIEW_BANK: &str = "videos-review";
const REVIEW_QUERY_PCT: f64 = 1.0;
/// The banked video's source: testsrc2 moves, so its frames a second apart are far apart in PDQ.
const ORIGINAL: &str = "testsrc2=size=320x240:rate=30";
/// Unrelated material (and the part of the mixes that is not the original).
const OTHER: &str = "mandelbrot=size=320x240:rate=30";
const X264: &[&str] = &["-c:v", "libx264", "-pix_fmt", "yuv420p"];

/// python-threatexchange's thresholds (vpdq_util.py): quality floor, Hamming distance, query %.
const QUALITY_FLOOR: u8 = 50;
const DISTANCE: u32 = 31;
const QUERY_PCT: f64 = 80.0;
const TARGET_PCT: f64 = 0.0;

/// One vPDQ feature: a sampled frame's PDQ hash, quality and timestamp (seconds).
#[derive(Debug, Clone, PartialEq)]
struct Feature {
    hash: [u8; 32],
    quality: u8,
    at: f64,
}

fn hash_of(hex_text: &str) -> [u8; 32] {
    let bytes = hex::decode(hex_text.trim()).unwrap_or_else(|e| panic!("PDQ hex {hex_text:?}: {e}"));
    bytes.try_into().unwrap_or_else(|b: Vec<u8>| panic!("PDQ hash of {} bytes", b.len()))
}

/// A `FRAME,QUALITY,HEX,TIMESTAMP` line of vpdq's.
fn from_reference_line(line: &str) -> Feature {
    let parts: Vec<&str> = line.split(',').collect();
    assert_eq!(parts.len(), 4, "vpdq line {line:?}");
    Feature { hash: hash_of(parts[2]), quality: parts[1].parse().unwrap(), at: parts[3].parse().unwrap() }
}

/// A signal string: a JSON list of `HEX,QUALITY,TIMESTAMP`.
fn from_signal_string(text: &str) -> Vec<Feature> {
    let items: Vec<String> = serde_json::from_str(text).unwrap_or_else(|e| panic!("signal string {text:?}: {e}"));
    items
        .iter()
        .map(|item| {
            let parts: Vec<&str> = item.split(',').collect();
            assert_eq!(parts.len(), 3, "feature {item:?}");
            Feature { hash: hash_of(parts[0]), quality: parts[1].parse().unwrap(), at: parts[2].parse().unwrap() }
        })
        .collect()
}

/// The canonical form the export promises: lowercase hex, 3-decimal timestamps, `", "` between.
fn canonical_items(features: &[Feature]) -> Vec<String> {
    features.iter().map(|f| format!("{},{},{:.3}", hex::encode(f.hash), f.quality, f.at)).collect()
}

fn canonical(features: &[Feature]) -> String {
    let quoted: Vec<String> = canonical_items(features).iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn distance(a: &[u8; 32], b: &[u8; 32]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// vpdq_util's `quality_filter(dedupe(features))`: exact duplicate hashes dropped (the first kept),
/// then frames under the quality floor.
fn usable(features: &[Feature]) -> Vec<&Feature> {
    let mut seen = std::collections::HashSet::new();
    features.iter().filter(|f| seen.insert(f.hash)).filter(|f| f.quality >= QUALITY_FLOOR).collect()
}

/// What python-threatexchange's `match_VPDQ_hash_brute` says about an upload against the bank
/// video, plus the first matching timestamps on both sides (what the reason reports).
#[derive(Debug, Clone, PartialEq)]
struct Decision {
    matched: bool,
    query_pct: f64,
    target_pct: f64,
    usable_upload: usize,
    usable_bank: usize,
    at: Option<f64>,
    entry_at: Option<f64>,
}

fn brute_force(upload: &[Feature], bank: &[Feature], query_threshold: f64) -> Decision {
    let (query, target) = (usable(upload), usable(bank));
    let close = |a: &Feature, b: &Feature| distance(&a.hash, &b.hash) <= DISTANCE;
    let query_hits: Vec<&&Feature> = query.iter().filter(|q| target.iter().any(|t| close(q, t))).collect();
    let target_hits: Vec<&&Feature> = target.iter().filter(|t| query.iter().any(|q| close(q, t))).collect();
    let pct = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 * 100.0 / of as f64 };
    let (query_pct, target_pct) = (pct(query_hits.len(), query.len()), pct(target_hits.len(), target.len()));
    Decision {
        // An upload with no usable frame matches nothing (python would divide by zero).
        matched: !query.is_empty() && !target.is_empty() && query_pct >= query_threshold && target_pct >= TARGET_PCT,
        query_pct,
        target_pct,
        usable_upload: query.len(),
        usable_bank: target.len(),
        at: query_hits.first().map(|f| f.at),
        entry_at: target_hits.first().map(|f| f.at),
    }
}

struct Clip {
    name: &'static str,
    content_type: &'static str,
    /// What it is, for the messages.
    what: &'static str,
    /// The decision the rule must come to (checked on the reference hashes before the worker
    /// is asked), or None where only "as the rule decides" is asserted.
    expect_match: Option<bool>,
    path: PathBuf,
}

/// The original, its copies, mixes and unrelated clips, all made with the ffmpeg command.
fn make_clips(media: &Path) -> Vec<Clip> {
    let original = clip(&media.join("original.mp4"), ORIGINAL, 12.0, X264);
    let unrelated = clip(&media.join("unrelated.mp4"), OTHER, 12.0, X264);
    let (orig, other) = (original.to_str().unwrap(), unrelated.to_str().unwrap());
    let with = |args: &[&str], codec: &[&str]| -> Vec<String> { args.iter().chain(codec).map(|s| s.to_string()).collect() };
    // Two inputs, concatenated by `graph` (input 0 is the original).
    let concat = |second: &[&str], graph: &str| -> Vec<String> {
        let graph = format!("{graph}[a][b]concat=n=2:v=1[v]");
        let mut args = vec!["-i", orig];
        args.extend_from_slice(second);
        args.extend_from_slice(&["-filter_complex", &graph, "-map", "[v]"]);
        with(&args, X264)
    };
    let black = ["-f", "lavfi", "-t", "4", "-i", "color=c=black:size=320x240:rate=30"];
    let recipes: Vec<(&'static str, &'static str, &'static str, Option<bool>, Vec<String>)> = vec![
        ("reencoded.webm", "video/webm", "re-encoded as VP9 at 120 kb/s", Some(true),
            with(&["-i", orig, "-c:v", "libvpx-vp9", "-b:v", "120k", "-deadline", "realtime", "-cpu-used", "8"], &[])),
        ("larger.mp4", "video/mp4", "rescaled to 480x360", Some(true), with(&["-i", orig, "-vf", "scale=480:360"], X264)),
        ("smaller.mkv", "video/x-matroska", "rescaled to 160x120, MPEG-4 part 2", Some(true),
            with(&["-i", orig, "-vf", "scale=160:120", "-c:v", "mpeg4", "-q:v", "8"], &[])),
        ("trimmed.mp4", "video/mp4", "seconds 2 to 10 only", Some(true), with(&["-ss", "2", "-i", orig, "-t", "8"], X264)),
        ("watermarked.mp4", "video/mp4", "a translucent box in the bottom-right corner", Some(true),
            with(&["-i", orig, "-vf", "drawbox=x=iw-44:y=ih-34:w=40:h=30:color=white@0.5:t=fill"], X264)),
        // 4 s of black appended: those frames are one hash (deduplicated) of quality 0 (filtered).
        ("black_tail.mp4", "video/mp4", "4 s of black appended (dropped by the quality filter)", Some(true),
            concat(&black, "[0:v]format=yuv420p,setsar=1[a];[1:v]format=yuv420p,setsar=1[b];")),
        // 3 s of other material first: 12 of 15 sampled frames are the original's, exactly 80 %
        // (a match: >=), and the first matching upload frame is at 3 s.
        ("head_80.mp4", "video/mp4", "3 s of other material, then the whole original", Some(true),
            concat(&["-t", "3", "-i", other], "[1:v]format=yuv420p,setsar=1[a];[0:v]format=yuv420p,setsar=1[b];")),
        // 9 of 12: 75 %, no match.
        ("three_quarters.mp4", "video/mp4", "the first 9 s, then 3 s of other material", Some(false),
            concat(&["-t", "3", "-i", other], "[0:v]trim=duration=9,setpts=PTS-STARTPTS,format=yuv420p,setsar=1[a];[1:v]format=yuv420p,setsar=1[b];")),
        ("quarter.mp4", "video/mp4", "the first 3 s, then 9 s of other material", Some(false),
            concat(&["-t", "9", "-i", other], "[0:v]trim=duration=3,setpts=PTS-STARTPTS,format=yuv420p,setsar=1[a];[1:v]format=yuv420p,setsar=1[b];")),
        ("unrelated_life.webm", "video/webm", "unrelated (life), VP8", Some(false),
            with(&["-f", "lavfi", "-i", "life=size=320x240:rate=25:mold=10:ratio=0.3", "-t", "8",
                "-c:v", "libvpx", "-b:v", "400k", "-deadline", "realtime", "-cpu-used", "8"], &[])),
    ];
    let mut clips = vec![
        Clip { name: "original.mp4", content_type: "video/mp4", what: "the banked video itself", expect_match: Some(true), path: original.clone() },
        Clip { name: "unrelated.mp4", content_type: "video/mp4", what: "unrelated (mandelbrot)", expect_match: Some(false), path: unrelated.clone() },
    ];
    for (name, content_type, what, expect_match, args) in recipes {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let path = ffmpeg(&media.join(name), &args);
        clips.push(Clip { name, content_type, what, expect_match, path });
    }
    clips
}

/// Flips `per_substring[t]` bits in substring `t` of the bank's PDQ index layout (3 of 24 bits,
/// then 8 of 23; bit 0 the lowest of the first big-endian 64-bit word): spread this way, 31 flips
/// leave no substring closer than 2, the most the index's pigeonhole search must cover at 31.
/// Whatever the layout, the distance to the original frame is the sum.
fn flipped(hash: &[u8; 32], per_substring: &[usize; 11]) -> [u8; 32] {
    let mut out = *hash;
    let mut start = 0;
    for (t, &n) in per_substring.iter().enumerate() {
        for k in 0..n {
            let bit = start + 1 + 7 * k;
            let byte = (bit / 64) * 8 + 7 - (bit % 64) / 8;
            out[byte] ^= 1 << (bit % 8);
        }
        start += if t < 3 { 24 } else { 23 };
    }
    out
}

/// The worker, killed if the test fails before it stops it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// An upload event whose media is a path under the worker's media root.
fn path_event(event_id: &str, path: &str, content_type: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "perisai.upload/v1", "event_id": event_id, "media_id": format!("m-{event_id}"),
        "tenant": "acme", "surface": "post", "content_type": content_type,
        "media": {"path": path}
    }))
    .unwrap()
}

/// The end of partition 0 of `topic` (the bank topic has one partition).
fn high_watermark(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("consumer");
    consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).expect("watermarks").1
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The vPDQ hash_match reasons of a verdict.
fn vpdq_reasons(verdict: &serde_json::Value) -> Vec<serde_json::Value> {
    verdict["reasons"]
        .as_array()
        .map(|r| r.iter().filter(|r| r["kind"] == "hash_match" && r["signal"] == "vpdq").cloned().collect())
        .unwrap_or_default()
}

fn banks_offset(verdict: &serde_json::Value) -> Option<i64> {
    verdict["banks_version"].as_str()?.split(',').find_map(|p| p.strip_prefix("0:")).and_then(|o| o.parse().ok())
}

/// Reads verdicts until every id in `ids` has one; the verdicts by event id.
fn verdicts_for(brokers: &str, topic: &str, ids: &[String], timeout: Duration) -> BTreeMap<String, serde_json::Value> {
    let outputs = read_until(brokers, &[topic], timeout, |o| ids.iter().all(|id| o.iter().any(|v| &v.event_id() == id)));
    outputs.iter().filter(|o| ids.contains(&o.event_id())).map(|o| (o.event_id(), o.json())).collect()
}

/// A bank entry as the test made it: its bank, id, features, and its record key's digest.
struct Entry {
    bank: &'static str,
    entry: &'static str,
    features: Vec<Feature>,
    digest: String,
}

fn bank_rule(bank: &str) -> (f64, &'static str) {
    if bank == REVIEW_BANK {
        (REVIEW_QUERY_PCT, "review")
    } else {
        (QUERY_PCT, "block")
    }
}

/// Every entry's decision for one upload, by the brute-force rule with its bank's threshold:
/// ((bank, entry), decision).
fn decide(upload: &[Feature], entries: &[&Entry]) -> Vec<((&'static str, &'static str), Decision)> {
    entries.iter().map(|e| ((e.bank, e.entry), brute_force(upload, &e.features, bank_rule(e.bank).0))).collect()
}

/// What is wrong with a verdict, given each live entry's decision by the rule, if anything: the
/// vpdq reasons must be exactly the matching entries, each with its bank's action, the rule's
/// percentages and first matching timestamps; the action the most severe of them, allow without.
fn check(verdict: &serde_json::Value, decisions: &[((&str, &str), Decision)], banks_version: &str) -> Option<String> {
    if verdict["banks_version"] != banks_version {
        return Some(format!("decided with bank state {} instead of {banks_version}", verdict["banks_version"]));
    }
    let reasons = vpdq_reasons(verdict);
    let matched: Vec<&((&str, &str), Decision)> = decisions.iter().filter(|(_, d)| d.matched).collect();
    let actions: Vec<&str> = matched.iter().map(|((bank, _), _)| bank_rule(bank).1).collect();
    let want_action = ["block", "review"].into_iter().find(|a| actions.contains(a)).unwrap_or("allow");
    if verdict["action"] != want_action {
        return Some(format!("action {}, expected {want_action} (the classifier is off)", verdict["action"]));
    }
    let mut named: Vec<(&str, &str)> =
        reasons.iter().map(|r| (r["bank"].as_str().unwrap_or("?"), r["entry"].as_str().unwrap_or("?"))).collect();
    named.sort_unstable();
    let mut want: Vec<(&str, &str)> = matched.iter().map(|(key, _)| *key).collect();
    want.sort_unstable();
    if named != want {
        return Some(format!("vpdq matches with {named:?}, the reference matcher's with {want:?}"));
    }
    for r in &reasons {
        let ((bank, entry), d) = matched.iter().find(|((b, e), _)| r["bank"] == *b && r["entry"] == *e).expect("named above");
        let close = |k: &str, want: Option<f64>, tolerance: f64| match (r[k].as_f64(), want) {
            (Some(got), Some(want)) if (got - want).abs() <= tolerance => None,
            (got, want) => Some(format!("{bank}/{entry}: {k} = {got:?}, expected {want:?}")),
        };
        if r["action"] != bank_rule(bank).1 {
            return Some(format!("reason {r}: action {} in bank {bank}", r["action"]));
        }
        let problem = close("query_match_pct", Some(d.query_pct), 0.01)
            .or_else(|| close("target_match_pct", Some(d.target_pct), 0.01))
            // The worker's timestamps are vpdq's own (float32 quotients), the reference's printed
            // to 3 decimals.
            .or_else(|| close("at", d.at, 0.0015))
            .or_else(|| close("entry_at", d.entry_at, 0.0005));
        if problem.is_some() {
            return problem;
        }
    }
    None
}

/// Uploads `clips` again and again until each has a verdict decided with the bank topic read past
/// `applied` (verdicts name their bank state), and checks those verdicts against the rule over
/// `entries`. Earlier verdicts (the worker had not read that far yet) are only printed.
async fn reupload_until_applied(
    brokers: &str,
    topics: &Topics,
    producer: &rdkafka::producer::FutureProducer,
    phase: &str,
    clips: &[(&Clip, &[Feature])],
    entries: &[&Entry],
    applied: i64,
    log: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending: Vec<&(&Clip, &[Feature])> = clips.iter().collect();
    for attempt in 1.. {
        let ids: Vec<String> = pending.iter().map(|(c, _)| format!("{phase}-{attempt}-{}", c.name)).collect();
        let events: Vec<(String, Vec<u8>)> =
            pending.iter().zip(&ids).map(|((c, _), id)| (id.clone(), path_event(id, c.name, c.content_type))).collect();
        produce_all(producer, &topics.input, &events).await;
        let verdicts = verdicts_for(brokers, &topics.verdicts, &ids, Duration::from_secs(30));
        let mut still = Vec::new();
        for (clip, id) in pending.iter().zip(&ids) {
            let v = verdicts.get(id).unwrap_or_else(|| panic!("no verdict for {id}\n{}", log()));
            match banks_offset(v) {
                Some(offset) if offset >= applied => {
                    if let Some(problem) = check(v, &decide(clip.1, entries), &format!("0:{applied}")) {
                        panic!("{phase}: {}: {problem}\n  verdict {v}", clip.0.name);
                    }
                    eprintln!("{phase}: {} → {} {:?} (attempt {attempt})", clip.0.name, v["action"], vpdq_reasons(v).iter().map(|r| format!("{}/{}", r["bank"].as_str().unwrap_or("?"), r["entry"].as_str().unwrap_or("?"))).collect::<Vec<_>>());
                }
                Some(offset) => {
                    eprintln!("{phase}: {} decided at bank state {offset} < {applied}: {}", clip.0.name, v["action"]);
                    still.push(*clip);
                }
                None => panic!("a verdict without banks_version: {v}"),
            }
        }
        pending = still;
        if pending.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{phase}: the worker never read the bank topic to {applied}\n{}", log());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vpdq_banks_block_copies_exactly_as_the_reference_matcher_decides() {
    let started = Instant::now();
    let brokers = brokers();
    let topics = create_topics(&brokers, "vpdq", 2).await;
    let dir = temp_dir();
    let media = dir.path().join("media");
    std::fs::create_dir(&media).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let log = || worker_log(dir.path(), 0);

    // 1. Clips, and the reference's hashes of each.
    let python = reference_python();
    let clips = make_clips(&media);
    eprintln!("{} clips made in {:.1} s", clips.len(), started.elapsed().as_secs_f64());
    let reference: Vec<Vec<Feature>> =
        clips.iter().map(|c| reference_lines(&python, &c.path, 1.0).iter().map(|l| from_reference_line(l)).collect()).collect();
    let index = |name: &str| clips.iter().position(|c| c.name == name).unwrap();

    // 2. The original's vPDQ hash as python-threatexchange writes it, and two entries made from
    // it with every frame 31 and 32 bits away (the threshold is inclusive).
    let signal = reference_signal_string(&python, &clips[0].path, 1.0);
    let bank_video = from_signal_string(&signal);
    assert_eq!(bank_video.len(), 12, "one frame a second of a 12 s clip: {signal}");
    assert_eq!(
        bank_video.iter().map(|f| (f.hash, f.quality)).collect::<Vec<_>>(),
        reference[0].iter().map(|f| (f.hash, f.quality)).collect::<Vec<_>>(),
        "the signal string holds the reference's frames"
    );
    assert!(bank_video.iter().all(|f| f.quality >= QUALITY_FLOOR), "every frame of the original is usable: {signal}");
    assert_ne!(signal, canonical(&bank_video), "python-threatexchange's form (timestamps `1.0`) differs from the canonical one");
    let away = |per_substring: [usize; 11]| -> Vec<Feature> {
        bank_video.iter().map(|f| Feature { hash: flipped(&f.hash, &per_substring), ..f.clone() }).collect()
    };
    let (edge_31, edge_32) = (away([3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2]), away([3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2]));
    let entries: Vec<Entry> = [
        (BANK, ENTRY, bank_video.clone()),
        (BANK, "edge-31", edge_31.clone()),
        (BANK, "edge-32", edge_32),
        // The same video in the review bank: the same digest, another key.
        (REVIEW_BANK, "edge-31", edge_31),
    ]
    .into_iter()
    .map(|(bank, entry, features)| Entry { bank, entry, digest: hex::encode(Sha256::digest(canonical(&features).as_bytes())), features })
    .collect();
    for (e, d) in [(&entries[1], 31), (&entries[2], 32)] {
        assert!(e.features.iter().zip(&bank_video).all(|(a, b)| distance(&a.hash, &b.hash) == d), "{}", e.entry);
    }
    // What the partner sends: the original in python-threatexchange's own form; the edge entries
    // in another spelling of the same list (uppercase hex, no spaces, `5.0`).
    let te_texts: Vec<String> = entries
        .iter()
        .map(|e| {
            if (e.bank, e.entry) == (BANK, ENTRY) {
                return format!("# from a partner\nvpdq {signal}\n");
            }
            let items: Vec<String> =
                e.features.iter().map(|f| format!("\"{},{},{:.1}\"", hex::encode_upper(f.hash), f.quality, f.at)).collect();
            format!("vpdq [{}]\n", items.join(","))
        })
        .collect();

    let config = write_config(
        dir.path(),
        &brokers,
        &topics,
        &format!(
            "\n[media]\npath_root = \"{}\"\n\n[[banks]]\nname = \"{BANK}\"\naction = \"block\"\n\n\
             [[banks]]\nname = \"{REVIEW_BANK}\"\naction = \"review\"\nvpdq_query_match_pct = {REVIEW_QUERY_PCT:.1}\n",
            media.display()
        ),
    );
    let cfg = config.to_str().unwrap();
    let import = |file: &Path, bank: &str, entry: &str| {
        perisai_in(root, &["bank", "import", "--config", cfg, "--bank", bank, "--format", "te", "--entry", entry, file.to_str().unwrap()])
    };
    let export = |bank: &str| {
        let out = perisai_in(root, &["bank", "export", "--config", cfg, "--bank", bank, "--format", "te"]);
        assert!(out.status.success(), "export of {bank} failed");
        stdout_of(&out)
    };
    let te_files: Vec<PathBuf> = entries.iter().map(|e| dir.path().join(format!("{}-{}.te", e.bank, e.entry))).collect();
    for ((e, text), file) in entries.iter().zip(&te_texts).zip(&te_files) {
        write_file(file, text);
        let out = import(file, e.bank, e.entry);
        assert!(out.status.success(), "import of {}/{} failed", e.bank, e.entry);
        assert!(stdout_of(&out).contains("1 rows: 1 published, 0 unchanged"), "{}/{}: {}", e.bank, e.entry, stdout_of(&out));
    }
    assert_eq!(high_watermark(&brokers, &topics.banks), 4, "one record per entry on the bank topic");

    // The records: key BANK/vpdq/DIGEST (sha256 of the canonical signal string), the features.
    let records = read_until(&brokers, &[&topics.banks], Duration::from_secs(20), |o| o.len() >= 4);
    assert_eq!(records.len(), 4, "{records:?}");
    for e in &entries {
        let key = format!("{}/vpdq/{}", e.bank, e.digest);
        let record = records.iter().find(|r| r.key.as_deref() == Some(key.as_str()));
        let record = record.unwrap_or_else(|| panic!("no record {key}: {:?}", records.iter().map(|r| &r.key).collect::<Vec<_>>()));
        let value = record.json();
        assert_eq!(value["signal"], "vpdq", "{value}");
        assert_eq!(value["hash"], e.digest.as_str(), "{value}");
        assert_eq!(value["entry"], e.entry, "{value}");
        assert_eq!(value["bank"], e.bank, "{value}");
        assert_eq!(value["vpdq"], serde_json::json!(canonical_items(&e.features)), "{value}");
    }

    // Export: the canonical form of the same features, one line per entry.
    for bank in [BANK, REVIEW_BANK] {
        let exported = export(bank);
        let mut lines: Vec<&str> = exported.lines().collect();
        lines.sort_unstable();
        let mut want: Vec<String> = entries.iter().filter(|e| e.bank == bank).map(|e| format!("vpdq {}", canonical(&e.features))).collect();
        want.sort_unstable();
        assert_eq!(lines, want, "the export of {bank} is canonical:\n{exported}");
    }
    let exported = export(BANK);
    let lines: Vec<&str> = exported.lines().collect();
    let main_line = lines.iter().find(|l| l.contains(&hex::encode(bank_video[0].hash))).unwrap().to_string();
    assert_eq!(from_signal_string(main_line.strip_prefix("vpdq ").unwrap()), bank_video, "the export round-trips the features");

    // Idempotent: the partner's file again, and the exported line fed back, publish nothing.
    let export_file = dir.path().join("export.te");
    write_file(&export_file, &format!("{main_line}\n"));
    for file in [&te_files[0], &export_file] {
        let out = import(file, BANK, ENTRY);
        assert!(out.status.success());
        assert!(stdout_of(&out).contains("1 rows: 0 published, 1 unchanged"), "{}: {}", file.display(), stdout_of(&out));
    }
    assert_eq!(high_watermark(&brokers, &topics.banks), 4, "the re-imports published nothing");

    // 3./4. The expected decisions, pairwise over the reference hashes.
    let all: Vec<&Entry> = entries.iter().collect();
    let expected: Vec<Vec<((&str, &str), Decision)>> = reference.iter().map(|upload| decide(upload, &all)).collect();
    for (c, decisions) in clips.iter().zip(&expected) {
        for ((bank, entry), d) in decisions {
            eprintln!(
                "{:<20} {:<26} {}: query {:.2} % of {}, target {:.2} % of {}, at {:?}, entry_at {:?}",
                c.name, format!("{bank}/{entry}"), if d.matched { "MATCH   " } else { "no match" }, d.query_pct, d.usable_upload, d.target_pct, d.usable_bank, d.at, d.entry_at
            );
        }
        if let Some(m) = c.expect_match {
            assert_eq!(decisions[0].1.matched, m, "{} ({}): the clip is not what it was made to be: {:?}", c.name, c.what, decisions[0]);
        }
    }
    // The clips sit where they were meant to: on the thresholds.
    let original = &expected[0];
    assert!(original[1].1.matched && original[1].1.query_pct == 100.0, "every frame 31 bits away matches: {:?}", original[1]);
    assert!(!original[2].1.matched, "32 bits away matches nothing: {:?}", original[2]);
    let head_80 = &expected[index("head_80.mp4")][0].1;
    assert_eq!((head_80.query_pct, head_80.at), (80.0, Some(3.0)), "the boundary clip sits exactly on the threshold");
    assert_eq!(expected[index("three_quarters.mp4")][0].1.query_pct, 75.0);
    assert_eq!(expected[index("trimmed.mp4")][0].1.entry_at, Some(2.0));
    assert!(reference[index("black_tail.mp4")].iter().any(|f| f.quality < QUALITY_FLOOR), "black frames are below the quality floor");
    let partial = expected.iter().filter(|d| d[3].1.matched && d[3].1.query_pct < 80.0 && d[3].1.target_pct < 100.0).count();
    assert!(partial >= 3, "the review bank reports partial shares for a few clips ({partial})");

    // The worker, started after the imports: it loads the bank before it takes uploads.
    let mut worker = KillOnDrop(spawn_worker(&config, dir.path(), 0));
    let producer = producer(&brokers);
    let ids: Vec<String> = clips.iter().map(|c| format!("v-{}", c.name)).collect();
    let events: Vec<(String, Vec<u8>)> =
        clips.iter().zip(&ids).map(|(c, id)| (id.clone(), path_event(id, c.name, c.content_type))).collect();
    produce_all(&producer, &topics.input, &events).await;
    let verdicts = verdicts_for(&brokers, &topics.verdicts, &ids, Duration::from_secs(60));
    assert_eq!(verdicts.len(), ids.len(), "verdicts for {:?} only\n{}", verdicts.keys(), log());
    eprintln!("{} verdicts after {:.1} s", verdicts.len(), started.elapsed().as_secs_f64());

    let mut failures = Vec::new();
    for ((c, decisions), id) in clips.iter().zip(&expected).zip(&ids) {
        let v = &verdicts[id];
        match check(v, decisions, "0:4") {
            Some(problem) => failures.push(format!("{} ({}): {problem}\n  expected {decisions:?}\n  verdict {v}", c.name, c.what)),
            None => eprintln!("{:<20} worker: {} {}", c.name, v["action"], vpdq_reasons(v).iter().map(|r| r.to_string()).collect::<Vec<_>>().join(" ")),
        }
    }
    assert!(failures.is_empty(), "the worker decided otherwise than the reference matcher:\n{}", failures.join("\n"));

    // 5. Withdraw the partner's entry by its digest: the original no longer matches it (the edge
    // entries, still live, decide), then the others: copies are allowed.
    let reuploads: Vec<(&Clip, &[Feature])> =
        ["original.mp4", "larger.mp4"].iter().map(|n| (&clips[index(n)], reference[index(n)].as_slice())).collect();
    let out = perisai_in(root, &["bank", "withdraw", "--config", cfg, "--bank", BANK, "--signal", "vpdq", &entries[0].digest]);
    assert!(out.status.success());
    assert!(stdout_of(&out).contains(&format!("1 withdrawn from {BANK}, 0 refused")), "{}", stdout_of(&out));
    assert_eq!(high_watermark(&brokers, &topics.banks), 5, "one tombstone");
    let left = export(BANK);
    assert!(!left.contains(&main_line), "withdrawn, yet exported: {left}");
    assert_eq!(left.lines().count(), 2, "{left}");
    reupload_until_applied(&brokers, &topics, &producer, "withdrawn-1", &reuploads, &all[1..], 5, &log).await;

    let out = perisai_in(root, &["bank", "withdraw", "--config", cfg, "--bank", BANK, "--signal", "vpdq", &entries[1].digest, &entries[2].digest]);
    assert!(out.status.success());
    assert!(stdout_of(&out).contains(&format!("2 withdrawn from {BANK}, 0 refused")), "{}", stdout_of(&out));
    let out = perisai_in(root, &["bank", "withdraw", "--config", cfg, "--bank", REVIEW_BANK, "--signal", "vpdq", &entries[3].digest]);
    assert!(out.status.success());
    assert!(stdout_of(&out).contains(&format!("1 withdrawn from {REVIEW_BANK}, 0 refused")), "{}", stdout_of(&out));
    assert_eq!(high_watermark(&brokers, &topics.banks), 8);
    assert_eq!((export(BANK), export(REVIEW_BANK)), (String::new(), String::new()), "nothing left to export");
    reupload_until_applied(&brokers, &topics, &producer, "withdrawn-all", &reuploads, &[], 8, &log).await;

    sigterm(&worker.0);
    assert!(wait_exit(&mut worker.0, Duration::from_secs(30)).success(), "{}", log());
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
}
