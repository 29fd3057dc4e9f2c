//! The reference's two Jarosz passes (box filter along rows, then along columns, twice) and its
//! 64×64 decimation, computed only where the decimation reads.
//!
//! Every output is `box1DFloat`'s: a running float sum that adds the entering sample, then
//! subtracts the leaving one, divided by the current window length. Sums of different rows (or
//! columns) are independent, so they run side by side in SIMD lanes without changing any value.

#![allow(clippy::needless_range_loop)] // fixed-width lane loops, vectorised as written

use std::cell::RefCell;

use super::{decimation_index, window_size, LumaSource};

/// Lanes of a strip: rows filtered together along their length.
const L: usize = 8;

/// The three operations of `box1DFloat`, on one or many independent running sums.
/// (A trait rather than closures: closures are separate functions that do not get the
/// caller's `target_feature`, and would not be vectorised with AVX2.)
trait BoxOps {
    /// Add the sample at this index to the running sum.
    fn add(&mut self, r: usize);
    /// Subtract the sample at this index.
    fn sub(&mut self, r: usize);
    /// The sum is final for output `o`; divide it by the window length `count`.
    fn emit(&mut self, o: usize, count: f32);
}

/// The four phases of `box1DFloat` over `n` samples, in the reference's order.
#[inline(always)]
fn box_schedule(n: usize, window: usize, ops: &mut impl BoxOps) {
    let half = (window + 2) / 2;
    let p1 = half - 1;
    let p2 = window - half + 1;
    let p3 = n - window;
    let p4 = half - 1;
    let (mut ri, mut li, mut oi, mut count) = (0usize, 0usize, 0usize, 0usize);
    for _ in 0..p1 {
        ops.add(ri);
        count += 1;
        ri += 1;
    }
    for _ in 0..p2 {
        ops.add(ri);
        count += 1;
        ops.emit(oi, count as f32);
        ri += 1;
        oi += 1;
    }
    let full = count as f32;
    for _ in 0..p3 {
        ops.add(ri);
        ops.sub(li);
        ops.emit(oi, full);
        li += 1;
        ri += 1;
        oi += 1;
    }
    for _ in 0..p4 {
        ops.sub(li);
        count -= 1;
        ops.emit(oi, count as f32);
        li += 1;
        oi += 1;
    }
}

/// Running sums down the rows of a row-major `n × width` matrix, one per column.
struct Down<'a> {
    inp: &'a [f32],
    out: &'a mut [f32],
    sums: &'a mut [f32],
    width: usize,
}

impl BoxOps for Down<'_> {
    #[inline(always)]
    fn add(&mut self, r: usize) {
        let w = self.width;
        for (s, &v) in self.sums.iter_mut().zip(&self.inp[r * w..(r + 1) * w]) {
            *s += v;
        }
    }
    #[inline(always)]
    fn sub(&mut self, r: usize) {
        let w = self.width;
        for (s, &v) in self.sums.iter_mut().zip(&self.inp[r * w..(r + 1) * w]) {
            *s -= v;
        }
    }
    #[inline(always)]
    fn emit(&mut self, o: usize, count: f32) {
        let w = self.width;
        for (d, &s) in self.out[o * w..(o + 1) * w].iter_mut().zip(self.sums.iter()) {
            *d = s / count;
        }
    }
}

/// Box filter down the rows of a row-major `n × width` matrix, for every column at once.
#[inline(always)]
fn box_down(inp: &[f32], out: &mut [f32], n: usize, width: usize, window: usize, sums: &mut Vec<f32>) {
    sums.clear();
    sums.resize(width, 0.0);
    box_schedule(n, window, &mut Down { inp, out, sums: &mut sums[..], width });
}

/// Running sums along a strip of `L` rows stored transposed (`tile[x][lane]`).
struct Across<'a> {
    tile: &'a [[f32; L]],
    out: &'a mut [[f32; L]],
    sums: [f32; L],
    keep: Option<&'a [usize; 64]>,
    next: usize,
}

impl BoxOps for Across<'_> {
    #[inline(always)]
    fn add(&mut self, r: usize) {
        let t = &self.tile[r];
        for k in 0..L {
            self.sums[k] += t[k];
        }
    }
    #[inline(always)]
    fn sub(&mut self, r: usize) {
        let t = &self.tile[r];
        for k in 0..L {
            self.sums[k] -= t[k];
        }
    }
    #[inline(always)]
    fn emit(&mut self, o: usize, count: f32) {
        match self.keep {
            None => {
                let d = &mut self.out[o];
                for k in 0..L {
                    d[k] = self.sums[k] / count;
                }
            }
            Some(keep) => {
                while self.next < 64 && keep[self.next] == o {
                    let d = &mut self.out[self.next];
                    for k in 0..L {
                        d[k] = self.sums[k] / count;
                    }
                    self.next += 1;
                }
            }
        }
    }
}

/// Box filter along a strip of `L` rows stored transposed, with outputs only at the ascending
/// positions `keep` (all positions when `keep` is `None`).
#[inline(always)]
fn box_tile(tile: &[[f32; L]], out: &mut [[f32; L]], window: usize, keep: Option<&[usize; 64]>) {
    box_schedule(tile.len(), window, &mut Across { tile, out, sums: [0.0; L], keep, next: 0 });
}

#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    tile_in: Vec<[f32; L]>,
    tile_out: Vec<[f32; L]>,
    row: Vec<f32>,
    sums: Vec<f32>,
    narrow: Vec<f32>,
    narrow_out: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Scratch kept per thread between images, except after very large ones.
const KEEP_SCRATCH_FLOATS: usize = 16 << 20;

pub(super) fn downsample(src: &LumaSource<'_>, out: &mut [[f32; 64]; 64]) {
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let s = &mut *guard;
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                unsafe { downsample_avx2(src, out, s) };
            } else {
                downsample_impl(src, out, s);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        downsample_impl(src, out, s);
        if s.a.capacity() > KEEP_SCRATCH_FLOATS {
            *s = Scratch::default();
        }
    });
}

/// The same code with 256-bit vectors. No FMA: Rust never contracts a*b+c, and the reference
/// is compiled without it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,avx2")]
unsafe fn downsample_avx2(src: &LumaSource<'_>, out: &mut [[f32; 64]; 64], s: &mut Scratch) {
    downsample_impl(src, out, s)
}

#[inline(always)]
fn downsample_impl(src: &LumaSource<'_>, out: &mut [[f32; 64]; 64], s: &mut Scratch) {
    let (rows, cols) = (src.rows, src.cols);
    let along_rows = window_size(cols);
    let along_cols = window_size(rows);
    let mut col_keep = [0usize; 64];
    let mut row_keep = [0usize; 64];
    for i in 0..64 {
        col_keep[i] = decimation_index(i, cols);
        row_keep[i] = decimation_index(i, rows);
    }

    s.a.resize(rows * cols, 0.0);
    s.b.resize(rows * cols, 0.0);
    s.tile_in.resize(cols, [0.0; L]);
    s.tile_out.resize(cols.max(64), [0.0; L]);
    s.row.resize(cols, 0.0);
    s.narrow.resize(rows * 64, 0.0);
    s.narrow_out.resize(rows * 64, 0.0);

    // Pass 1 along rows: luma straight into transposed strips.
    for y0 in (0..rows).step_by(L) {
        let n = L.min(rows - y0);
        for r in 0..n {
            src.row(y0 + r, &mut s.row);
            for (t, &v) in s.tile_in.iter_mut().zip(&s.row) {
                t[r] = v;
            }
        }
        box_tile(&s.tile_in, &mut s.tile_out, along_rows, None);
        for r in 0..n {
            let dst = &mut s.a[(y0 + r) * cols..(y0 + r + 1) * cols];
            for (d, t) in dst.iter_mut().zip(&s.tile_out) {
                *d = t[r];
            }
        }
    }
    // Pass 1 along columns.
    box_down(&s.a, &mut s.b, rows, cols, along_cols, &mut s.sums);
    // Pass 2 along rows, kept only at the 64 sampled columns.
    for y0 in (0..rows).step_by(L) {
        let n = L.min(rows - y0);
        for r in 0..n {
            let srow = &s.b[(y0 + r) * cols..(y0 + r + 1) * cols];
            for (t, &v) in s.tile_in.iter_mut().zip(srow) {
                t[r] = v;
            }
        }
        box_tile(&s.tile_in, &mut s.tile_out, along_rows, Some(&col_keep));
        for r in 0..n {
            let dst = &mut s.narrow[(y0 + r) * 64..(y0 + r + 1) * 64];
            for (d, t) in dst.iter_mut().zip(&s.tile_out[..64]) {
                *d = t[r];
            }
        }
    }
    // Pass 2 along columns, over the 64 sampled columns only.
    box_down(&s.narrow, &mut s.narrow_out, rows, 64, along_cols, &mut s.sums);
    for (i, &r) in row_keep.iter().enumerate() {
        out[i].copy_from_slice(&s.narrow_out[r * 64..(r + 1) * 64]);
    }
}
