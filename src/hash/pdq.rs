//! PDQ perceptual hash, bit-exact with facebook/ThreatExchange `pdq/cpp`.
//!
//! The reference computes in `float` with a fixed operation order and no FMA; bits of
//! low-contrast images (quality 0) come from its rounding alone, so every float operation here
//! happens in the same order on the same values. What differs is only the schedule:
//!
//! - luma is computed straight from the pixels (or from the sampled pixels of the 512×512
//!   nearest-neighbour resize of the `Cli` convention, which is never materialised);
//! - the box filter along rows runs on strips of 8 rows transposed into lanes, and the filter
//!   along columns runs on whole rows, so both are vectorised across independent sums;
//! - the second filter pass is computed only where the 64×64 decimation reads it: along rows it
//!   still runs every running sum but divides only at the 64 sampled columns, and along columns it
//!   runs only over those 64 columns.
//!
//! Each of those sums, quotients and products is the reference's own, in its own order.

// Index loops and `(n + 127) / 128` mirror the reference's code, which makes the port checkable.
#![allow(clippy::needless_range_loop, clippy::manual_div_ceil)]

use std::fmt;
use std::str::FromStr;

use crate::media::decode::{Channels, Image};

/// 256-bit PDQ hash. Text form: 64 lowercase hex characters exactly as `pdq-photo-hasher` prints.
///
/// The bytes are in text order: the reference's 16-bit word 15 first, high byte first. Bit `k`
/// of the reference (`k = 16·row + column` of the 16×16 DCT) is bit `k % 8` of byte
/// `2·(15 − k/16) + (1 − (k % 16)/8)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PdqHash(pub [u8; 32]);

/// `Cli`: side > 512 → nearest-neighbour resize to exactly 512×512 first (pdq-photo-hasher);
/// `Full`: full resolution (C++ library core, python-threatexchange).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Convention {
    #[default]
    Cli,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PdqOutput {
    pub hash: PdqHash,
    /// 0..=100
    pub quality: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PdqError {
    #[error("a PDQ hash is 64 hex characters, got {0}")]
    BadLength(usize),
    #[error("a PDQ hash holds only hex digits")]
    BadDigit,
}

impl PdqHash {
    pub const ZERO: PdqHash = PdqHash([0; 32]);

    /// Hamming distance.
    pub fn distance(&self, other: &PdqHash) -> u32 {
        let (a, b) = (self.words(), other.words());
        (0..4).map(|i| (a[i] ^ b[i]).count_ones()).sum()
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    /// The 256 bits as four integers, for fast distances and index keys.
    #[inline]
    pub fn words(&self) -> [u64; 4] {
        let mut w = [0u64; 4];
        for (i, chunk) in self.0.chunks_exact(8).enumerate() {
            w[i] = u64::from_be_bytes(chunk.try_into().expect("8-byte chunk"));
        }
        w
    }

    pub fn from_words(w: [u64; 4]) -> PdqHash {
        let mut b = [0u8; 32];
        for i in 0..4 {
            b[i * 8..i * 8 + 8].copy_from_slice(&w[i].to_be_bytes());
        }
        PdqHash(b)
    }

    /// Bit `k` in the reference's numbering (`Hash256::setBit`).
    fn set_bit(&mut self, k: usize) {
        let word = k >> 4;
        let bit = k & 15;
        let byte = 2 * (15 - word) + usize::from(bit < 8);
        self.0[byte] |= 1 << (bit & 7);
    }
}

impl fmt::Display for PdqHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One write, not 32 formatted bytes: bank loads print a million of these.
        let mut text = [0u8; 64];
        hex::encode_to_slice(self.0, &mut text).expect("64 hex digits for 32 bytes");
        f.write_str(std::str::from_utf8(&text).expect("hex is ASCII"))
    }
}

impl FromStr for PdqHash {
    type Err = PdqError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(PdqError::BadLength(s.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| PdqError::BadDigit)?;
        Ok(PdqHash(out))
    }
}

impl serde::Serialize for PdqHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PdqHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Side of the `Cli` resize (`DOWNSAMPLE_DIMS` in pdqio.cpp).
pub const CLI_SIDE: usize = 512;
const MIN_HASHABLE_DIM: usize = 5;

pub fn hash(img: &Image, convention: Convention) -> PdqOutput {
    let (dct, quality) = match dct16(img, convention, false) {
        Some(x) => x,
        None => return PdqOutput { hash: PdqHash::ZERO, quality: 0 },
    };
    PdqOutput { hash: bits_from_dct(&dct), quality }
}

/// The hashes of the 8 rotations and flips of the image, from one DCT, in the reference's
/// order: original, rotate90, rotate180, rotate270, flipX, flipY, flipPlus1, flipMinus1.
pub fn hash_dihedral(img: &Image, convention: Convention) -> ([PdqHash; 8], u8) {
    // pdqDihedralHash256esFromFloatLuma always filters, even a 64×64 input that
    // pdqHash256FromFloatLuma would take as is.
    let (dct, quality) = match dct16(img, convention, true) {
        Some(x) => x,
        None => return ([PdqHash::ZERO; 8], 0),
    };
    let mut out = [PdqHash::ZERO; 8];
    let mut aux = [[0f32; 16]; 16];
    out[0] = bits_from_dct(&dct);
    // (transpose, sign flip for odd row, sign flip for odd column, sign flip for odd row+column,
    //  negate everything first) for each transform, as in dct16OriginalTo*.
    let transforms: [Transform; 7] = [
        |i, j, v| (j, i, if j & 1 == 1 { v } else { -v }),       // rotate90
        |i, j, v| (i, j, if (i + j) & 1 == 1 { -v } else { v }), // rotate180
        |i, j, v| (j, i, if i & 1 == 1 { v } else { -v }),       // rotate270
        |i, j, v| (i, j, if i & 1 == 1 { v } else { -v }),       // flipX
        |i, j, v| (i, j, if j & 1 == 1 { v } else { -v }),       // flipY
        |i, j, v| (j, i, v),                                     // flipPlus1
        |i, j, v| (j, i, if (i + j) & 1 == 1 { -v } else { v }), // flipMinus1
    ];
    for (t, f) in transforms.iter().enumerate() {
        for i in 0..16 {
            for j in 0..16 {
                let (a, b, v) = f(i, j, dct[i][j]);
                aux[a][b] = v;
            }
        }
        out[t + 1] = bits_from_dct(&aux);
    }
    (out, quality)
}

/// Where coefficient (i, j) goes, and its sign, in a rotated or flipped image's DCT.
type Transform = fn(usize, usize, f32) -> (usize, usize, f32);

// ---------------------------------------------------------------- scaling attacks

/// Cells per side of the thumbnails [`sampling_disagreement`] compares.
const THUMB: usize = 32;

/// Above this [`sampling_disagreement`] (mean luma levels) an image is a `scaling_anomaly`. Over the
/// 237 fixture images (as 2048×2048 uploads, and the large ones as they are) the largest is about
/// 13, on synthetic 5-pixel-wide stripes; real photos stay far lower. An attack that hides a photo
/// behind another scores about 70 (tests/scaling_attack.rs prints both).
pub const SCALING_ANOMALY_THRESHOLD: f32 = 25.0;

/// How far the `Cli` convention's 512×512 nearest-neighbour grid is from the picture it stands
/// for: the mean absolute luma difference (0–255) between a 32×32 thumbnail of that grid and one
/// of a second grid sampled between its points, at an offset drawn at random (so that no one can
/// plant pixels on both). On a photo the two agree within a few levels; an image whose sampled
/// pixels alone were replaced (an image-scaling attack: the hash is then anything the attacker
/// likes) disagrees by tens. `None` when the image is not resampled (no side over 512), or when
/// its cells are under two pixels wide and the grids would share their pixels.
pub fn sampling_disagreement(img: &Image) -> Option<f32> {
    let (w, h) = (img.width as usize, img.height as usize);
    if w < 2 * CLI_SIDE && h < 2 * CLI_SIDE {
        return None;
    }
    let offset = || rand::random::<f64>() * 0.4 + 0.3;
    let (ox, oy) = (offset(), offset());
    let map = |src: usize, shift: f64| -> Vec<usize> {
        (0..CLI_SIDE).map(|x| (((x as f64 + shift) * src as f64 / CLI_SIDE as f64) as usize).min(src - 1)).collect()
    };
    let thumb = |cols: &[usize], rows: &[usize]| -> Vec<f32> {
        let bpp = img.channels.bytes_per_pixel();
        let (cr, cg, cb) = luma_coeffs();
        let mut cells = vec![0f32; THUMB * THUMB];
        for (y, &sy) in rows.iter().enumerate() {
            let row = &img.pixels[sy * w * bpp..(sy + 1) * w * bpp];
            for (x, &sx) in cols.iter().enumerate() {
                let luma = match img.channels {
                    Channels::Gray => f32::from(row[sx]),
                    Channels::Rgb => cr * f32::from(row[sx * 3]) + cg * f32::from(row[sx * 3 + 1]) + cb * f32::from(row[sx * 3 + 2]),
                };
                cells[(y * THUMB / CLI_SIDE) * THUMB + x * THUMB / CLI_SIDE] += luma;
            }
        }
        let per_cell = (CLI_SIDE / THUMB * CLI_SIDE / THUMB) as f32;
        cells.iter_mut().for_each(|c| *c /= per_cell);
        cells
    };
    let sampled = thumb(&map(w, 0.0), &map(h, 0.0));
    let between = thumb(&map(w, ox), &map(h, oy));
    let total: f32 = sampled.iter().zip(&between).map(|(a, b)| (a - b).abs()).sum();
    Some(total / (THUMB * THUMB) as f32)
}

// ---------------------------------------------------------------- pixels to luma rows

/// Where luma rows come from: the image itself, or its nearest-neighbour resize.
struct LumaSource<'a> {
    img: &'a Image,
    rows: usize,
    cols: usize,
    /// Source column of each output column, `None` when not resized.
    col_map: Option<Vec<usize>>,
    /// Source row of each output row, `None` when not resized.
    row_map: Option<Vec<usize>>,
}

fn luma_coeffs() -> (f32, f32, f32) {
    // The reference declares them `const float x = 0.299;`: the double literal rounded to float.
    (0.299f64 as f32, 0.587f64 as f32, 0.114f64 as f32)
}

impl<'a> LumaSource<'a> {
    fn new(img: &'a Image, convention: Convention) -> LumaSource<'a> {
        let (w, h) = (img.width as usize, img.height as usize);
        if convention == Convention::Cli && (w > CLI_SIDE || h > CLI_SIDE) {
            // CImg resize(512,512) with nearest neighbour: floor(x·W/512).
            let map = |src: usize| (0..CLI_SIDE).map(|x| x * src / CLI_SIDE).collect::<Vec<_>>();
            LumaSource { img, rows: CLI_SIDE, cols: CLI_SIDE, col_map: Some(map(w)), row_map: Some(map(h)) }
        } else {
            LumaSource { img, rows: h, cols: w, col_map: None, row_map: None }
        }
    }

    /// Luma of output row `y` into `out[..cols]`, as fillFloatLumaFromRGB / FromGrey.
    #[inline(always)]
    fn row(&self, y: usize, out: &mut [f32]) {
        let (w, bpp) = (self.img.width as usize, self.img.channels.bytes_per_pixel());
        let sy = self.row_map.as_ref().map_or(y, |m| m[y]);
        let src = &self.img.pixels[sy * w * bpp..(sy + 1) * w * bpp];
        let out = &mut out[..self.cols];
        let (cr, cg, cb) = luma_coeffs();
        match (self.img.channels, &self.col_map) {
            (Channels::Gray, None) => {
                for (o, &p) in out.iter_mut().zip(src) {
                    *o = f32::from(p);
                }
            }
            (Channels::Rgb, None) => rgb_luma(out, src, |x| x * 3, (cr, cg, cb)),
            (Channels::Gray, Some(m)) => {
                for (o, &x) in out.iter_mut().zip(m) {
                    *o = f32::from(src[x]);
                }
            }
            (Channels::Rgb, Some(m)) => rgb_luma(out, src, |x| m[x] * 3, (cr, cg, cb)),
        }
    }
}

/// Luma of `out.len()` pixels, pixel `x` being the three bytes of `src` at `offset(x)`.
///
/// The bytes are first copied into one plane per channel, then the reference's expression is
/// evaluated over the planes, in its order (`cr·r + cg·g`, then `+ cb·b`, no fused multiply-add),
/// which the compiler turns into SIMD lanes; evaluated pixel by pixel straight from the
/// interleaved bytes it stayed scalar and took about half of a 512×512 hash.
#[inline(always)]
fn rgb_luma(out: &mut [f32], src: &[u8], offset: impl Fn(usize) -> usize, (cr, cg, cb): (f32, f32, f32)) {
    const BLOCK: usize = 256;
    let mut planes = [[0u8; BLOCK]; 3];
    for (block, chunk) in out.chunks_mut(BLOCK).enumerate() {
        for i in 0..chunk.len() {
            let o = offset(block * BLOCK + i);
            let p = &src[o..o + 3];
            planes[0][i] = p[0];
            planes[1][i] = p[1];
            planes[2][i] = p[2];
        }
        let [r, g, b] = &planes;
        for (((o, &r), &g), &b) in chunk.iter_mut().zip(r).zip(g).zip(b) {
            *o = cr * f32::from(r) + cg * f32::from(g) + cb * f32::from(b);
        }
    }
}

// ---------------------------------------------------------------- core

/// `computeJaroszFilterWindowSize(old, 64)`.
fn window_size(old: usize) -> usize {
    (old + 2 * 64 - 1) / (2 * 64)
}

/// `decimateFloat`'s source index for output index `out` of 64.
fn decimation_index(out: usize, len: usize) -> usize {
    (((out as f64 + 0.5) * len as f64) / 64.0) as usize
}

type Dct16 = [[f32; 16]; 16];

/// 16×16 DCT and quality, or `None` for an image with a side under 5 px.
fn dct16(img: &Image, convention: Convention, always_filter: bool) -> Option<(Dct16, u8)> {
    let expected = img.width as usize * img.height as usize * img.channels.bytes_per_pixel();
    if img.pixels.len() < expected {
        // Malformed Image values (not from `decode`) hash like an unhashable image, never panic.
        return None;
    }
    let src = LumaSource::new(img, convention);
    if src.rows < MIN_HASHABLE_DIM || src.cols < MIN_HASHABLE_DIM {
        return None;
    }
    let mut a = Box::new([[0f32; 64]; 64]);
    if src.rows == 64 && src.cols == 64 && !always_filter {
        for (y, row) in a.iter_mut().enumerate() {
            src.row(y, row);
        }
    } else {
        filter::downsample(&src, &mut a);
    }
    let quality = quality(&a);
    Some((dct64_to_16(&a), quality))
}

/// `pdqImageDomainQualityMetric`.
fn quality(a: &[[f32; 64]; 64]) -> u8 {
    let mut gradient_sum: i32 = 0;
    let step = |u: f32, v: f32| -> i32 {
        let d = ((u - v) * 100.0) / 255.0;
        (d as i32).abs()
    };
    for i in 0..63 {
        for j in 0..64 {
            gradient_sum += step(a[i][j], a[i + 1][j]);
        }
    }
    for i in 0..64 {
        for j in 0..63 {
            gradient_sum += step(a[i][j], a[i][j + 1]);
        }
    }
    (gradient_sum / 90).min(100) as u8
}

/// Rows 1..=16 of the 64-point DCT-II matrix, as the reference builds it: the scale factor in
/// float, the cosine in double, the product rounded to float.
fn dct_matrix() -> &'static [[f32; 64]; 16] {
    static M: std::sync::OnceLock<[[f32; 64]; 16]> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let scale = (2.0f64 / 64.0).sqrt() as f32;
        let mut m = [[0f32; 64]; 16];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let angle = (std::f64::consts::PI / 2.0 / 64.0) * (i + 1) as f64 * (2 * j + 1) as f64;
                *v = (f64::from(scale) * angle.cos()) as f32;
            }
        }
        m
    })
}

/// `dct64To16`: B = D A Dᵀ, each dot product summed in k order from 0.
fn dct64_to_16(a: &[[f32; 64]; 64]) -> Dct16 {
    let d = dct_matrix();
    let mut t = [[0f32; 64]; 16];
    for i in 0..16 {
        let ti = &mut t[i];
        for k in 0..64 {
            let dik = d[i][k];
            let ak = &a[k];
            for j in 0..64 {
                ti[j] += dik * ak[j];
            }
        }
    }
    let mut b = [[0f32; 16]; 16];
    for i in 0..16 {
        for k in 0..64 {
            let tik = t[i][k];
            for j in 0..16 {
                b[i][j] += tik * d[j][k];
            }
        }
    }
    b
}

/// `torben`: the median of the 256 coefficients, as the reference selects it.
fn torben(m: &[f32]) -> f32 {
    let n = m.len();
    let half = (n + 1) / 2;
    let (mut min, mut max) = (m[0], m[0]);
    for &v in &m[1..] {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    loop {
        let guess = (min + max) / 2.0;
        let (mut less, mut greater, mut equal) = (0usize, 0usize, 0usize);
        let (mut maxltguess, mut mingtguess) = (min, max);
        for &v in m {
            if v < guess {
                less += 1;
                if v > maxltguess {
                    maxltguess = v;
                }
            } else if v > guess {
                greater += 1;
                if v < mingtguess {
                    mingtguess = v;
                }
            } else {
                equal += 1;
            }
        }
        if less <= half && greater <= half {
            return if less >= half {
                maxltguess
            } else if less + equal >= half {
                guess
            } else {
                mingtguess
            };
        } else if less > greater {
            max = maxltguess;
        } else {
            min = mingtguess;
        }
    }
}

/// `pdqBuffer16x16ToBits`: a bit for every coefficient above the median.
fn bits_from_dct(dct: &Dct16) -> PdqHash {
    let flat: Vec<f32> = dct.iter().flatten().copied().collect();
    let median = torben(&flat);
    let mut h = PdqHash::ZERO;
    for (k, &v) in flat.iter().enumerate() {
        if v > median {
            h.set_bit(k);
        }
    }
    h
}

mod filter;
