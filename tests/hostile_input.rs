//! Hostile input against a real worker process (`perisai run`) on a real Apache Kafka broker:
//! broken events, oversized events, malicious images and URLs that point inside the network.
//! Each input must get exactly one output with the stated outcome (a DLQ record of the right
//! class, or a verdict with a `media_error` reason of the right kind and action `review`), the
//! worker must stay alive and exit 0 on SIGTERM, and its peak resident memory (VmHWM) must stay
//! under a stated bound.
//!
//! The hostile files are built here, byte by byte where no encoder would write them (headers
//! claiming huge sizes, deflate streams of all-zero data), and checked by decoding small
//! instances of the same generators, so that a refusal is never just a broken test file.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(180);

/// Peak resident memory allowed to a worker over the whole hostile run. The largest legitimate
/// allocation in the run is one 7,000×7,000 RGB image (147 MB of pixels, just under the default
/// `decode.max_pixels`); everything else must be refused before it allocates.
const PEAK_RSS_LIMIT_KB: u64 = 600 * 1024;

/// `worker.max_event_bytes` and `media.max_bytes` in the test config, lowered from the defaults
/// so that the oversized cases stay quick to produce.
const MAX_EVENT_BYTES: usize = 4 << 20;
const MAX_MEDIA_BYTES: usize = 2 << 20;
/// The input topic's `max.message.bytes`, raised so the broker accepts a 10 MB event at all.
const TOPIC_MAX_MESSAGE: usize = 16 << 20;

// ------------------------------------------------------------------ hostile file builders

/// Deflate bit writer: values LSB first, Huffman codes MSB first (RFC 1951 §3.1.1).
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn new() -> Self {
        Bits { out: Vec::new(), acc: 0, n: 0 }
    }
    fn put(&mut self, value: u64, count: u32) {
        self.acc |= value << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }
    fn huff(&mut self, code: u32, len: u32) {
        let rev = (0..len).fold(0u64, |r, i| r | (u64::from((code >> i) & 1) << (len - 1 - i)));
        self.put(rev, len);
    }
    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A zlib stream inflating to `n` zero bytes at deflate's best ratio (2 bits per 258 bytes):
/// one dynamic block whose only symbols are literal 0 (code 10), end of block (11) and length
/// 258 (0), with distance 1 (0). The shape of every decompression bomb.
fn zlib_zeros(n: u64) -> Vec<u8> {
    let mut b = Bits::new();
    b.put(1, 1); // BFINAL
    b.put(2, 2); // dynamic Huffman
    b.put(29, 5); // HLIT: 286 literal/length codes
    b.put(1, 5); // HDIST: 2 distance codes
    b.put(14, 4); // HCLEN: 18 code length codes
    // Code length alphabet: 18 (run of zeros) → "0", 1 → "10", 2 → "11".
    for sym in [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1] {
        b.put(match sym { 18 => 1, 1 | 2 => 2, _ => 0 }, 3);
    }
    let zeros = |b: &mut Bits, run: u64| {
        b.huff(0, 1);
        b.put(run - 11, 7);
    };
    b.huff(3, 2); // literal 0: length 2
    zeros(&mut b, 138); // literals 1..=138
    zeros(&mut b, 117); // literals 139..=255
    b.huff(3, 2); // 256 (end of block): length 2
    zeros(&mut b, 28); // 257..=284
    b.huff(2, 2); // 285 (length 258): length 1
    b.huff(2, 2); // distance 0: length 1
    b.huff(2, 2); // distance 1: length 1
    if n > 0 {
        b.huff(2, 2); // literal 0
        for _ in 0..(n - 1) / 258 {
            b.huff(0, 1); // length 258
            b.huff(0, 1); // distance 1
        }
        for _ in 0..(n - 1) % 258 {
            b.huff(2, 2);
        }
    }
    b.huff(3, 2); // end of block
    let mut out = vec![0x78, 0x01];
    out.extend(b.finish());
    let adler = (((n % 65521) as u32) << 16) | 1;
    out.extend(adler.to_be_bytes());
    out
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &byte in *part {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(kind);
    out.extend(data);
    out.extend(crc32(&[kind, data]).to_be_bytes());
}

fn ihdr(width: u32, height: u32) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend(width.to_be_bytes());
    d.extend(height.to_be_bytes());
    d.extend([8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive filters, not interlaced
    d
}

/// A complete, valid, black `width`×`height` 8-bit RGB PNG; tiny even when huge once decoded.
/// `iccp_bytes` adds an iCCP chunk whose profile inflates to that many bytes.
fn flat_png(width: u32, height: u32, iccp_bytes: Option<u64>) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &ihdr(width, height));
    if let Some(n) = iccp_bytes {
        let mut d = b"bomb\0\0".to_vec(); // profile name, compression method 0
        d.extend(zlib_zeros(n));
        png_chunk(&mut out, b"iCCP", &d);
    }
    let raw = u64::from(height) * (1 + 3 * u64::from(width)); // filter byte + pixels per row
    png_chunk(&mut out, b"IDAT", &zlib_zeros(raw));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// Only a header: IHDR claims `side`×`side`, the pixel data is a few bytes of nothing.
fn png_header_bomb(side: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &ihdr(side, side));
    png_chunk(&mut out, b"IDAT", &zlib_zeros(1024));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A GIF with a `screen_w`×`screen_h` canvas and `frames` frames of one pixel each (the first
/// one `first_w`×`first_h`). Decoding every frame onto the canvas would cost `frames` × canvas.
fn gif(screen_w: u16, screen_h: u16, frames: usize, first: (u16, u16)) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend(screen_w.to_le_bytes());
    out.extend(screen_h.to_le_bytes());
    out.extend([0x91, 0, 0]); // global colour table of 4 entries
    out.extend([0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 255]);
    out.extend(b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"); // loop forever
    for i in 0..frames {
        let (w, h) = if i == 0 { first } else { (1, 1) };
        let (left, top) = ((i % screen_w as usize) as u16, ((i / screen_w as usize) % screen_h as usize) as u16);
        out.extend([0x21, 0xf9, 0x04, 0x04, 0x01, 0x00, 0x00, 0x00]); // 10 ms, keep previous
        out.push(0x2c);
        for v in [left, top, w, h] {
            out.extend(v.to_le_bytes());
        }
        out.push(0);
        // LZW, minimum code size 2: clear (4), index (i % 4), end (5), 3 bits each.
        let codes = 4u16 | (((i % 4) as u16) << 3) | (5 << 6);
        out.extend([2, 2]);
        out.extend(codes.to_le_bytes());
        out.push(0);
    }
    out.push(0x3b);
    out
}

/// An uncompressed 16-bit RGBA TIFF header claiming `width`×`height`, with one strip of 8 bytes
/// (decoding would need width × height × 8 bytes before reading a pixel).
fn tiff_rgba16(width: u32, height: u32) -> Vec<u8> {
    let entries: [(u16, u16, u32, u32); 10] = [
        (256, 4, 1, width),      // ImageWidth, LONG
        (257, 4, 1, height),     // ImageLength
        (258, 3, 4, 0),          // BitsPerSample: 4 SHORTs at an offset, patched below
        (259, 3, 1, 1),          // Compression: none
        (262, 3, 1, 2),          // PhotometricInterpretation: RGB
        (273, 4, 1, 0),          // StripOffsets, patched below
        (277, 3, 1, 4),          // SamplesPerPixel
        (278, 4, 1, height),     // RowsPerStrip
        (279, 4, 1, 8),          // StripByteCounts
        (338, 3, 1, 2),          // ExtraSamples: unassociated alpha
    ];
    let ifd_len = 2 + entries.len() * 12 + 4;
    let (bits_at, strip_at) = (8 + ifd_len as u32, 8 + ifd_len as u32 + 8);
    let mut out = b"II*\0".to_vec();
    out.extend(8u32.to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    for (tag, kind, count, value) in entries {
        let value = match tag {
            258 => bits_at,
            273 => strip_at,
            _ => value,
        };
        out.extend(tag.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(count.to_le_bytes());
        if kind == 3 && count == 1 {
            out.extend((value as u16).to_le_bytes());
            out.extend([0, 0]);
        } else {
            out.extend(value.to_le_bytes());
        }
    }
    out.extend(0u32.to_le_bytes());
    for _ in 0..4 {
        out.extend(16u16.to_le_bytes());
    }
    out.extend([0u8; 8]);
    out
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pdq/images").join(name))
        .expect("fixture image")
}

/// The JPEG with its frame header (SOF0/1/2) patched to claim `width`×`height`.
fn jpeg_claiming(mut jpeg: Vec<u8>, width: u16, height: u16) -> Vec<u8> {
    let sof = jpeg.windows(2).position(|w| w[0] == 0xFF && matches!(w[1], 0xC0..=0xC2)).expect("SOF marker");
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// The builders make what they claim: small instances decode to the expected pixels.
#[test]
fn hostile_builders_make_valid_files() {
    let img = image::load_from_memory(&flat_png(300, 7, None)).expect("flat PNG decodes");
    assert_eq!((img.width(), img.height()), (300, 7));
    assert!(img.to_rgb8().into_raw().iter().all(|&v| v == 0));
    for n in [0, 1, 2, 258, 259, 260, 1000, 65521 * 3 + 7] {
        let png = flat_png(1, 1, Some(n));
        let mut dec = image::codecs::png::PngDecoder::new(std::io::Cursor::new(&png)).expect("PNG with iCCP");
        use image::ImageDecoder;
        let icc = dec.icc_profile().expect("icc").expect("profile present");
        assert_eq!(icc.len() as u64, n);
        assert!(icc.iter().all(|&v| v == 0));
    }
    let small = gif(4, 4, 20_000, (1, 1));
    let frames = image::AnimationDecoder::into_frames(
        image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&small)).expect("GIF header"),
    )
    .count();
    assert_eq!(frames, 20_000);
    let tiff = image::load_from_memory(&tiff_rgba16(1, 1)).expect("TIFF decodes");
    assert_eq!((tiff.width(), tiff.height(), tiff.color()), (1, 1, image::ColorType::Rgba16));
    let patched = jpeg_claiming(fixture("jpg_tiny_12x9.jpg"), 60_000, 50_000);
    let d = mozjpeg::Decompress::new_mem(&patched).expect("patched JPEG header");
    assert_eq!((d.width(), d.height()), (60_000, 50_000));
}

// ------------------------------------------------------------------ Kafka plumbing

async fn create_big_topics(brokers: &str, name: &str) -> Topics {
    let max = TOPIC_MAX_MESSAGE.to_string();
    create_topics_with(brokers, name, 2, &[("max.message.bytes", &max)]).await
}

/// Produces every case (a `None` payload is a tombstone) and waits for the acknowledgements.
async fn produce_cases(brokers: &str, topic: &str, cases: &[Case]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("message.max.bytes", (TOPIC_MAX_MESSAGE + 4096).to_string())
        .create()
        .expect("producer");
    for case in cases {
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(&case.key);
        if let Some(p) = &case.payload {
            record = record.payload(p.as_slice());
        }
        producer.send(record, Timeout::After(Duration::from_secs(30))).await.map_err(|(e, _)| e).expect("produced");
    }
}

/// True once the process has exited (a zombie until it is waited for).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("worker /proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM value")
}

// ------------------------------------------------------------------ cases and outcomes

#[derive(Debug, Clone)]
enum Expect {
    /// A DLQ record with this `perisai.error.class`.
    Dlq(&'static str),
    /// A verdict, action review, with a `media_error` reason of this error kind whose detail
    /// contains the text.
    MediaError(&'static str, &'static str),
    /// A verdict with the image decoded at this size and nothing wrong with it.
    Decoded(u32, u32),
    /// A verdict for declared non-image media: exact hashes only, allowed.
    HashedOnly,
}

struct Case {
    key: String,
    payload: Option<Vec<u8>>,
    expect: Expect,
    what: String,
}

fn event(key: &str, media: Value, content_type: Option<&str>) -> Vec<u8> {
    let mut e = json!({
        "schema": "perisai.upload/v1", "event_id": format!("e-{key}"), "media_id": key,
        "tenant": "acme", "surface": "post", "media": media,
    });
    if let Some(ct) = content_type {
        e["content_type"] = json!(ct);
    }
    serde_json::to_vec(&e).unwrap()
}

fn inline(bytes: &[u8]) -> Value {
    json!({ "inline": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

struct Cases(Vec<Case>);

impl Cases {
    fn raw(&mut self, what: &str, payload: Option<Vec<u8>>, expect: Expect) {
        let key = format!("c{:02}", self.0.len());
        self.0.push(Case { key, payload, expect, what: what.into() });
    }
    fn media(&mut self, what: &str, media: Value, content_type: Option<&str>, expect: Expect) {
        let key = format!("c{:02}", self.0.len());
        let payload = Some(event(&key, media, content_type));
        self.0.push(Case { key, payload, expect, what: what.into() });
    }
}

/// Checks one output against its case; returns a line for the printed matrix.
fn check(case: &Case, out: &Output, topics: &Topics, validator: &jsonschema::Validator) -> String {
    let size = case.payload.as_ref().map_or(0, Vec::len);
    match &case.expect {
        Expect::Dlq(class) => {
            assert_eq!(out.topic, topics.dlq, "{}: expected a DLQ record, got {:?}", case.what, out.payload);
            assert_eq!(out.headers["perisai.error.class"], *class, "{}: {:?}", case.what, out.headers);
            assert_eq!(out.headers["perisai.source.topic"], topics.input);
            assert_eq!(out.headers["perisai.original.size"], size.to_string());
            let original = case.payload.clone().unwrap_or_default();
            if original.len() > 1 << 20 {
                // Cut to fit the DLQ topic's default message size, and marked so.
                assert_eq!(out.headers.get("perisai.truncated").map(String::as_str), Some("true"));
                assert!(out.payload.len() < 1 << 20 && original.starts_with(&out.payload) && !out.payload.is_empty());
            } else {
                assert_eq!(out.payload, original, "{}: the DLQ keeps the original bytes", case.what);
            }
            format!("DLQ {class}")
        }
        expect => {
            assert_eq!(out.topic, topics.verdicts, "{}: expected a verdict, got DLQ {:?}", case.what, out.headers);
            let v = out.json();
            if let Err(e) = validator.validate(&v) {
                panic!("{}: verdict does not match the schema: {e}\n{v}", case.what);
            }
            assert_eq!(v["event_id"], format!("e-{}", case.key));
            let errors: Vec<&Value> =
                v["reasons"].as_array().unwrap().iter().filter(|r| r["kind"] == "media_error").collect();
            match expect {
                Expect::MediaError(kind, detail) => {
                    assert_eq!(v["action"], "review", "{}: {v}", case.what);
                    assert_eq!(errors.len(), 1, "{}: {v}", case.what);
                    assert_eq!(errors[0]["error"], *kind, "{}: {v}", case.what);
                    let text = errors[0]["detail"].as_str().unwrap();
                    assert!(text.contains(detail), "{}: detail {text:?} lacks {detail:?}", case.what);
                    format!("review, media_error {kind}: {text}")
                }
                Expect::Decoded(w, h) => {
                    assert!(errors.is_empty(), "{}: {v}", case.what);
                    assert_eq!(v["action"], "allow", "{}: {v}", case.what);
                    assert_eq!((v["signals"]["width"].as_u64(), v["signals"]["height"].as_u64()),
                        (Some(u64::from(*w)), Some(u64::from(*h))), "{}: {v}", case.what);
                    assert!(v["signals"]["pdq"].is_string(), "{}: {v}", case.what);
                    format!("allow, decoded {w}x{h}")
                }
                Expect::HashedOnly => {
                    assert!(errors.is_empty(), "{}: {v}", case.what);
                    assert_eq!(v["action"], "allow");
                    let unscreened = v["reasons"].as_array().unwrap().iter().any(|r| r["kind"] == "unscreened" && r["action"] == "allow");
                    assert!(unscreened, "{}: the verdict says the pixels were not screened: {v}", case.what);
                    assert!(v["signals"]["md5"].is_string() && v["signals"]["pdq"].is_null(), "{}: {v}", case.what);
                    "allow, exact hashes only".to_string()
                }
                Expect::Dlq(_) => unreachable!(),
            }
        }
    }
}

/// Runs one worker over the cases and checks: one output per case, each as expected, the worker
/// alive until SIGTERM and exiting 0, no panic in its log, peak RSS under the bound.
async fn run_cases(name: &str, cases: &[Case], media_config: &str) -> u64 {
    let brokers = brokers();
    let topics = create_big_topics(&brokers, name).await;
    let dir = temp_dir();
    let extra = format!(
        "{media_config}\n[decode]\nmax_pixels = 50000000\nmax_side = 20000\n"
    );
    let config = write_config(dir.path(), &brokers, &topics, &extra);
    // write_config's [worker] table already exists; append the limits under it.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[worker]\n",
        &format!("[worker]\nmax_event_bytes = {MAX_EVENT_BYTES}\ncpu_threads = 2\nmax_in_flight = 64\n"),
    );
    std::fs::write(&config, text).unwrap();
    produce_cases(&brokers, &topics.input, cases).await;

    let mut worker = spawn_worker(&config, dir.path(), 0);
    let pid = worker.id();
    let outputs =
        read_until(&brokers, &[&topics.verdicts, &topics.dlq], WAIT, |o| o.len() >= cases.len() || exited(pid));
    if let Some(status) = worker.try_wait().expect("try_wait") {
        panic!("worker died during the hostile run: {status:?}\n{}", worker_log(dir.path(), 0));
    }
    let peak_kb = peak_rss_kb(worker.id());
    sigterm(&worker);
    let status = wait_exit(&mut worker, Duration::from_secs(30));
    let log = worker_log(dir.path(), 0);
    assert!(status.success(), "worker exit {status:?}\n{log}");
    assert!(!log.contains("panicked"), "the worker panicked\n{log}");
    assert!(outputs.len() >= cases.len(), "{} outputs for {} cases\n{log}", outputs.len(), cases.len());

    // Read everything again after the exit: duplicates would show up here.
    let all = read_until(&brokers, &[&topics.verdicts, &topics.dlq], Duration::from_secs(5), |_| false);
    let mut by_key: BTreeMap<String, Vec<&Output>> = BTreeMap::new();
    for o in &all {
        by_key.entry(o.key.clone().unwrap_or_default()).or_default().push(o);
    }
    let schema: Value = serde_json::from_str(include_str!("../docs/schemas/verdict.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema");
    println!("\n{name}: {} inputs", cases.len());
    for case in cases {
        let outs = by_key.remove(&case.key).unwrap_or_default();
        assert_eq!(outs.len(), 1, "{} ({}): {} outputs\n{log}", case.key, case.what, outs.len());
        let line = check(case, outs[0], &topics, &validator);
        println!("  {:<58} → {line}", case.what);
    }
    assert!(by_key.is_empty(), "outputs for unknown keys: {:?}", by_key.keys().collect::<Vec<_>>());
    let committed: i64 = committed(&brokers, &topics.group, &topics.input, 2).iter().sum();
    assert_eq!(committed, cases.len() as i64, "every input offset committed");
    println!("{name}: worker peak RSS (VmHWM) {} MB, bound {} MB", peak_kb / 1024, PEAK_RSS_LIMIT_KB / 1024);
    assert!(peak_kb < PEAK_RSS_LIMIT_KB, "worker peak RSS {peak_kb} kB over the {PEAK_RSS_LIMIT_KB} kB bound");
    peak_kb
}

// ------------------------------------------------------------------ a hostile HTTP server

/// An HTTP/1.1 server on 127.0.0.1 that records every request path; `handler` writes the whole
/// response (or stalls). One thread per connection.
struct Server {
    port: u16,
    connections: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(handler: fn(&str, u16, &mut TcpStream) -> std::io::Result<()>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (c, p) = (connections.clone(), paths.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    p.lock().unwrap().push(path.clone());
                    let _ = handler(&path, port, &mut stream);
                });
            }
        });
        Server { port, connections, paths }
    }

    fn requests(&self, path: &str) -> usize {
        self.paths.lock().unwrap().iter().filter(|p| *p == path).count()
    }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

fn media_server(path: &str, port: u16, s: &mut TcpStream) -> std::io::Result<()> {
    let redirect = |s: &mut TcpStream, to: String| respond(s, "302 Found", &[("Location", to)], b"");
    match path {
        "/ok.png" => {
            let body = png(7, 64);
            respond(s, "200 OK", &[("Content-Type", "image/png".into()), ("Content-Length", body.len().to_string())], &body)
        }
        "/to-metadata" => redirect(s, "http://169.254.169.254/latest/meta-data/iam/security-credentials/".into()),
        "/to-mapped-metadata" => redirect(s, "http://[::ffff:a9fe:a9fe]/latest/meta-data/".into()),
        "/to-name" => redirect(s, format!("http://localhost:{port}/ok.png")),
        "/to-file" => redirect(s, "file:///etc/passwd".into()),
        "/loop" => redirect(s, "/loop".into()),
        "/hop1" => redirect(s, "/hop2".into()),
        "/hop2" => redirect(s, "/ok.png".into()),
        "/stall" => {
            std::thread::sleep(Duration::from_secs(60));
            Ok(())
        }
        "/trickle" => {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")?;
            for _ in 0..1000 {
                s.write_all(&[0u8; 100])?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        }
        "/huge-declared" => {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 50000000000\r\n\r\n")?;
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..100 {
                s.write_all(&chunk)?;
            }
            Ok(())
        }
        "/huge-chunked" => {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..(64 << 20) / chunk.len() {
                s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                s.write_all(&chunk)?;
                s.write_all(b"\r\n")?;
            }
            s.write_all(b"0\r\n\r\n")
        }
        _ => respond(s, "404 Not Found", &[("Content-Length", "0".into())], b""),
    }
}

// ------------------------------------------------------------------ the tests

/// Broken events, oversized events, malicious inline images, and URLs that name the worker's own
/// network: with `allow_private_addresses = false` every one of them is refused, and a server
/// listening on loopback sees no connection at all.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_events_and_media() {
    let server = Server::start(media_server);
    let port = server.port;
    let dir = temp_dir();
    let root = dir.path().join("media");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("escape.png")).unwrap();

    let mut c = Cases(Vec::new());
    // Events that cannot be parsed.
    c.raw("invalid JSON", Some(b"{not json".to_vec()), Expect::Dlq("invalid_json"));
    c.raw("invalid UTF-8", Some(b"\xff\xfe{\"schema\"".to_vec()), Expect::Dlq("invalid_json"));
    c.raw("JSON nested 100,000 deep", Some([b"[".repeat(100_000), b"]".repeat(100_000)].concat()), Expect::Dlq("invalid_json"));
    c.raw("JSON array, not an object", Some(b"[1,2,3]".to_vec()), Expect::Dlq("schema"));
    c.raw("JSON null", Some(b"null".to_vec()), Expect::Dlq("schema"));
    // Two readers must never see two different events in one record.
    let twice = br#"{"schema":"perisai.upload/v1","event_id":"e-dup","media_id":"m","tenant":"t","media":{"url":"https://a.example/x.jpg"},"media":{"inline":""}}"#;
    c.raw("`media` twice", Some(twice.to_vec()), Expect::Dlq("duplicate_key"));
    c.raw("UTF-8 byte order mark", Some([&[0xEF, 0xBB, 0xBF][..], br#"{"schema":"perisai.upload/v1"}"#].concat()), Expect::Dlq("invalid_json"));
    c.raw("schema perisai.upload/v2", Some(br#"{"schema":"perisai.upload/v2","event_id":"e"}"#.to_vec()), Expect::Dlq("schema_version"));
    c.raw("schema is a number", Some(br#"{"schema":1}"#.to_vec()), Expect::Dlq("schema"));
    c.raw("missing media", Some(br#"{"schema":"perisai.upload/v1","event_id":"e","media_id":"m","tenant":"t"}"#.to_vec()), Expect::Dlq("schema"));
    c.raw("missing event_id", Some(br#"{"schema":"perisai.upload/v1","media_id":"m","tenant":"t","media":{"inline":""}}"#.to_vec()), Expect::Dlq("schema"));
    c.raw("blank event_id", Some(br#"{"schema":"perisai.upload/v1","event_id":" ","media_id":"m","tenant":"t","media":{"inline":""}}"#.to_vec()), Expect::Dlq("schema"));
    c.raw("event_id is a number", Some(br#"{"schema":"perisai.upload/v1","event_id":5,"media_id":"m","tenant":"t","media":{"inline":""}}"#.to_vec()), Expect::Dlq("schema"));
    c.raw("unknown top-level field", Some(br#"{"schema":"perisai.upload/v1","event_id":"e","media_id":"m","tenant":"t","media":{"inline":""},"x":1}"#.to_vec()), Expect::Dlq("schema"));
    c.raw("media with two sources", Some(br#"{"schema":"perisai.upload/v1","event_id":"e","media_id":"m","tenant":"t","media":{"inline":"","url":"https://a/"}}"#.to_vec()), Expect::Dlq("schema"));
    c.raw("media of an unknown kind", Some(br#"{"schema":"perisai.upload/v1","event_id":"e","media_id":"m","tenant":"t","media":{"ftp":"x"}}"#.to_vec()), Expect::Dlq("schema"));
    c.raw("empty record", Some(Vec::new()), Expect::Dlq("empty"));
    c.raw("tombstone (null payload)", None, Expect::Dlq("empty"));
    let big = event("big", inline(&vec![7u8; 7_500_000]), Some("image/png"));
    assert!(big.len() > 10_000_000 && big.len() > MAX_EVENT_BYTES);
    c.raw("10 MB event (max_event_bytes 4 MiB)", Some(big), Expect::Dlq("too_large"));

    // Inline media that is not what it claims.
    c.media("bad base64 (invalid character)", json!({"inline": "iVBORw0KGgo@@@@"}), Some("image/png"), Expect::MediaError("invalid_base64", "invalid character"));
    c.media("bad base64 (impossible length)", json!({"inline": "abcde"}), Some("image/png"), Expect::MediaError("invalid_base64", "invalid length"));
    c.media("2.5 MiB media (media.max_bytes 2 MiB)", inline(&vec![1u8; 5 << 19]), Some("image/png"), Expect::MediaError("too_large", "2097152"));
    let large_ok = png(3, 800);
    assert!(large_ok.len() > 1 << 20);
    c.media("noise PNG 800x800, over 1 MiB (large, valid)", inline(&large_ok), Some("image/png"), Expect::Decoded(800, 800));
    let jpeg = fixture("te_bridge-mods_aaa-orig.jpg");
    c.media("truncated JPEG (first half)", inline(&jpeg[..jpeg.len() / 2]), Some("image/jpeg"), Expect::MediaError("decode", "truncated"));
    c.media("JPEG header claiming 60000x50000", inline(&jpeg_claiming(fixture("jpg_tiny_12x9.jpg"), 60_000, 50_000)), Some("image/jpeg"), Expect::MediaError("too_large", "60000x50000"));
    c.media("JPEG header claiming 8000x8000 (64 MP)", inline(&jpeg_claiming(fixture("jpg_progressive_chelsea.jpg"), 8_000, 8_000)), Some("image/jpeg"), Expect::MediaError("too_large", "8000x8000"));
    c.media("PNG header claiming 1000000x1000000", inline(&png_header_bomb(1_000_000)), Some("image/png"), Expect::MediaError("too_large", "image exceeds the decode limits"));
    let flat20k = flat_png(20_000, 20_000, None);
    assert!(flat20k.len() < 1_300_000, "20k PNG is {} bytes", flat20k.len());
    c.media("real 20000x20000 flat PNG (1.2 GB of pixels, 1.1 MB file)", inline(&flat20k), Some("image/png"), Expect::MediaError("too_large", "20000x20000"));
    c.media("real 7000x7000 flat PNG (49 MP, under max_pixels)", inline(&flat_png(7000, 7000, None)), Some("image/png"), Expect::Decoded(7000, 7000));
    // Three of them: with both CPU threads inflating one, the peak would pass the bound.
    for _ in 0..3 {
        c.media("PNG with an iCCP profile inflating to 380 MB", inline(&flat_png(16, 16, Some(380_000_000))), Some("image/png"), Expect::Decoded(16, 16));
    }
    // Every frame is composited on the whole canvas: the work is bounded by composited pixels
    // (and the deadline), and an animation that is not screened to its end is not allowed.
    c.media("GIF, 1000x1000 canvas, 20,000 frames", inline(&gif(1000, 1000, 20_000, (1, 1))), Some("image/gif"), Expect::MediaError("too_large", "composited pixels"));
    c.media("GIF, 100x100 canvas, 500 frames (screened, spread)", inline(&gif(100, 100, 500, (1, 1))), Some("image/gif"), Expect::Decoded(100, 100));
    // 40 bytes and a 7000x7000 canvas: the plan counts the canvas, the frame and the compositing
    // buffers from the header and refuses it before allocating any of them.
    c.media("GIF, 40 bytes, 7000x7000 canvas (under max_pixels)", inline(&gif(7000, 7000, 2, (1, 1))), Some("image/gif"), Expect::MediaError("too_large", "decode.max_bytes"));
    c.media("GIF, 1x1 canvas, first frame 65535x65535", inline(&gif(1, 1, 2, (65535, 65535))), Some("image/gif"), Expect::MediaError("too_large", "image exceeds the decode limits"));
    c.media("16-bit RGBA TIFF header, 7000x7000 (under max_pixels, 392 MB stored)", inline(&tiff_rgba16(7000, 7000)), Some("image/tiff"), Expect::MediaError("too_large", "decode.max_bytes"));
    c.media("GIF, canvas 65535x65535", inline(&gif(65535, 65535, 1, (1, 1))), Some("image/gif"), Expect::MediaError("too_large", "exceeds the decode limits"));
    c.media("PDF declared image/jpeg", inline(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n"), Some("image/jpeg"), Expect::MediaError("unsupported_format", ""));
    c.media("HTML declared image/png", inline(b"<!doctype html><script>alert(1)</script>"), Some("image/png"), Expect::MediaError("unsupported_format", ""));
    c.media("JPEG magic then garbage", inline(&[&[0xFF, 0xD8, 0xFF, 0xE0][..], &[0x55; 500]].concat()), Some("image/jpeg"), Expect::MediaError("decode", ""));
    c.media("PNG signature only", inline(b"\x89PNG\r\n\x1a\n"), Some("image/png"), Expect::MediaError("decode", ""));
    c.media("zero bytes, declared image/png", json!({"inline": ""}), Some("image/png"), Expect::MediaError("unsupported_format", ""));
    c.media("zero bytes, no content type", json!({"inline": ""}), None, Expect::MediaError("unsupported_format", ""));
    c.media("zero bytes, declared video/mp4", json!({"inline": ""}), Some("video/mp4"), Expect::HashedOnly);
    c.media("PNG declared application/octet-stream", inline(&png(9, 32)), Some("application/octet-stream"), Expect::Decoded(32, 32));
    // The bytes decide what is screened, not the declaration: never an allow on exact hashes
    // for an image.
    c.media("PNG declared video/mp4", inline(&png(10, 32)), Some("video/mp4"), Expect::Decoded(32, 32));
    let ico = [0u8, 0, 1, 0, 1, 0, 16, 16, 0, 0, 1, 0, 32, 0, 0x68, 4, 0, 0, 22, 0, 0, 0];
    c.media("ICO declared application/octet-stream", inline(&ico), Some("application/octet-stream"), Expect::MediaError("unsupported_format", "ICO"));
    let heic = [&[0u8, 0, 0, 0x18][..], b"ftypheic", &[0, 0, 0, 0], b"mif1heic"].concat();
    c.media("HEIC declared video/mp4", inline(&heic), Some("video/mp4"), Expect::MediaError("unsupported_format", "HEIF"));
    let junk = [&[0x00][..], &png(11, 32)].concat();
    c.media("PNG behind a junk byte, declared video/mp4", inline(&junk), Some("video/mp4"), Expect::MediaError("unsupported_format", "junk"));
    // Ordinary files whose text holds a short image signature (BM, P1…P7) or an ISO box name
    // are not images: exact hashes only.
    for (what, text, content_type) in [
        ("text 'IBM quarterly results'", &b"IBM quarterly results, Q3: revenue up 4 %"[..], "text/plain"),
        ("text 'BMW annual report'", b"BMW annual report 2026, page 1 of 212", "text/plain"),
        ("text 'APP1 notes'", b"APP1 notes: the P3 build ships Friday", "text/plain"),
        ("CSV header id,P2,P3", b"id,P2,P3\n1,0.5,0.25\n2,0.75,0.125\n", "text/csv"),
        ("text 'P2 notes' at offset 0", b"P2 notes from the meeting", "text/plain"),
        ("JSON holding BM", b"{\"BM\": 1, \"P5\": [2, 3]}", "application/json"),
        ("text 'Get free stuff' (an ISO box name at offset 4)", b"Get free stuff while it lasts, and more text after it", "text/plain"),
    ] {
        c.media(&format!("{what}, declared {content_type}"), inline(text), Some(content_type), Expect::HashedOnly);
    }

    // Path media.
    c.media("path ../../etc/passwd", json!({"path": "../../etc/passwd"}), Some("image/png"), Expect::MediaError("path", ""));
    c.media("path /etc/passwd (absolute)", json!({"path": "/etc/passwd"}), Some("image/png"), Expect::MediaError("path", ""));
    c.media("path symlink to /etc/passwd", json!({"path": "escape.png"}), Some("image/png"), Expect::MediaError("path", "outside the media root"));

    // URL media that names the worker's own network (allow_private_addresses = false). Every
    // IPv4 literal below is on the allowlist, so its refusal comes from the address check. The
    // configuration accepts no IPv6 literal in `allow_hosts`, so IPv6 hosts stop at the allowlist.
    let url = |u: String| json!({ "url": u });
    for (what, u, detail) in [
        ("URL loopback 127.0.0.1", format!("http://127.0.0.1:{port}/ok.png"), "loopback"),
        ("URL localhost (a name resolving to loopback)", format!("http://localhost:{port}/ok.png"), "loopback"),
        ("URL loopback [::1]", format!("http://[::1]:{port}/ok.png"), "not in media.http.allow_hosts"),
        ("URL IPv4-mapped IPv6 [::ffff:127.0.0.1]", format!("http://[::ffff:127.0.0.1]:{port}/ok.png"), "not in media.http.allow_hosts"),
        ("URL decimal-encoded 2130706433 (127.0.0.1)", format!("http://2130706433:{port}/ok.png"), "loopback"),
        ("URL hex/short form 0x7f.1 (127.0.0.1)", format!("http://0x7f.1:{port}/ok.png"), "loopback"),
        ("URL octal form 0177.0.0.01 (127.0.0.1)", format!("http://0177.0.0.01:{port}/ok.png"), "loopback"),
        ("URL 0.0.0.0", format!("http://0.0.0.0:{port}/ok.png"), "this network"),
        ("URL private 10.0.0.1", "http://10.0.0.1/a.png".to_string(), "private"),
        ("URL private 192.168.1.1", "http://192.168.1.1/a.png".to_string(), "private"),
        ("URL CGNAT 100.64.0.1", "http://100.64.0.1/a.png".to_string(), "carrier-grade NAT"),
        ("URL link-local metadata 169.254.169.254", "http://169.254.169.254/latest/meta-data/".to_string(), "link-local"),
        ("URL IPv4-mapped metadata [::ffff:169.254.169.254]", "http://[::ffff:169.254.169.254]/latest/meta-data/".to_string(), "not in media.http.allow_hosts"),
        ("URL link-local IPv6 [fe80::1]", "http://[fe80::1]/a.png".to_string(), "not in media.http.allow_hosts"),
        ("URL unique-local IPv6 [fd00::1]", "http://[fd00::1]/a.png".to_string(), "not in media.http.allow_hosts"),
        ("URL host not on the allowlist", "http://metadata.google.internal/computeMetadata/v1/".to_string(), "not in media.http.allow_hosts"),
        ("URL scheme file://", "file:///etc/passwd".to_string(), "scheme"),
        ("URL with credentials", format!("http://user:pw@127.0.0.1:{port}/ok.png"), "credentials"),
        ("URL that is not a URL", "http//:nope".to_string(), "not a valid URL"),
    ] {
        c.media(what, url(u), Some("image/png"), Expect::MediaError("guard", detail));
    }

    let media_config = format!(
        r#"
[media]
max_bytes = {MAX_MEDIA_BYTES}
path_root = "{root}"

[media.http]
allow_hosts = ["localhost", "127.0.0.1", "0.0.0.0", "10.0.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254"]
allow_schemes = ["http", "https"]
allow_private_addresses = false
connect_timeout_ms = 1000
total_timeout_ms = 3000
"#,
        root = root.display()
    );
    run_cases("hostile", &c.0, &media_config).await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 0, "no refused URL reached the loopback server");
}

/// URL media from a server the worker may reach (`allow_private_addresses = true` for
/// 127.0.0.1 only), which then misbehaves: redirects out of the allowlist, stalls, trickles,
/// and sends more than the limit. Every redirect hop is checked again, so the refused hop is
/// the second one; the server proves the refused targets were never requested.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_http_servers() {
    let server = Server::start(media_server);
    let base = format!("http://127.0.0.1:{}", server.port);
    let mut c = Cases(Vec::new());
    let mut url = |what: &str, path: &str, expect: Expect| {
        c.media(what, json!({ "url": format!("{base}{path}") }), Some("image/png"), expect)
    };
    url("allowlisted server, valid PNG", "/ok.png", Expect::Decoded(64, 64));
    url("two redirects within max_redirects", "/hop1", Expect::Decoded(64, 64));
    url("redirect to 169.254.169.254 (metadata)", "/to-metadata", Expect::MediaError("guard", "redirect 1 from"));
    url("redirect to [::ffff:169.254.169.254]", "/to-mapped-metadata", Expect::MediaError("guard", "not in media.http.allow_hosts"));
    url("redirect to localhost (not allowlisted)", "/to-name", Expect::MediaError("guard", "host localhost is not in media.http.allow_hosts"));
    url("redirect to file:///etc/passwd", "/to-file", Expect::MediaError("guard", "scheme \"file\" is not allowed"));
    url("redirect loop", "/loop", Expect::MediaError("guard", "too many redirects"));
    url("server that never answers", "/stall", Expect::MediaError("timeout", "total_timeout_ms"));
    url("body trickling 100 B / 100 ms", "/trickle", Expect::MediaError("timeout", "total_timeout_ms"));
    url("declares 50 GB", "/huge-declared", Expect::MediaError("too_large", "declares 50000000000 bytes"));
    url("64 MB chunked body, no length", "/huge-chunked", Expect::MediaError("too_large", "more than the limit"));
    url("HTTP 404", "/missing.png", Expect::MediaError("fetch", "404"));
    // The server accepts the connection and never answers the TLS ClientHello.
    let stalled_tls = json!({ "url": format!("https://127.0.0.1:{}/ok.png", server.port) });
    c.media("TLS handshake that stalls", stalled_tls, Some("image/png"), Expect::MediaError("timeout", "TLS handshake did not finish"));

    let media_config = format!(
        r#"
[media]
max_bytes = {MAX_MEDIA_BYTES}

[media.http]
allow_hosts = ["127.0.0.1"]
allow_schemes = ["http", "https"]
allow_private_addresses = true
connect_timeout_ms = 1000
total_timeout_ms = 2000
max_redirects = 3
"#
    );
    run_cases("hostile-http", &c.0, &media_config).await;
    // /ok.png was fetched for the direct case and through /hop1 → /hop2, never through /to-name.
    assert_eq!(server.requests("/ok.png"), 2, "{:?}", server.paths.lock().unwrap());
    assert_eq!(server.requests("/loop"), 4, "the loop is cut after max_redirects (3) hops");
}
