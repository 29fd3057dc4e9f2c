//! Decoding rules (see src/media/decode.rs) on real files and on generated bad inputs.

use std::path::PathBuf;

use perisai::media::decode::{decode, looks_like_image, Channels, DecodeError, DecodeLimits, Image};

fn fixture(rel: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pdq").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn dec(rel: &str) -> Image {
    decode(&fixture(rel), &DecodeLimits::default()).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The same file decoded by the `image` crate without our channel rules, for comparisons.
fn raw(rel: &str) -> image::DynamicImage {
    image::load_from_memory(&fixture(rel)).expect("image crate decode")
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| (i32::from(x) - i32::from(y)).abs() as f64).sum::<f64>() / a.len() as f64
}

#[test]
fn jpeg_pixels_equal_libjpeg_turbo_reference_decode() {
    // Each PNG holds libjpeg-turbo's ISLOW + fancy-upsampling decode of the JPEG of that name.
    for name in ["te_labelme_q0003", "sk_rocket", "te_bridge-mods_shrink-a-little", "te_bridge-mods_square-512x512"] {
        let jpg = dec(&format!("images/{name}.jpg"));
        let png = dec(&format!("images/{name}.png"));
        assert_eq!((jpg.width, jpg.height, jpg.channels), (png.width, png.height, png.channels), "{name}");
        assert!(jpg.pixels == png.pixels, "{name}: JPEG decode differs from libjpeg-turbo's");
    }
}

#[test]
fn greyscale_jpeg_is_gray() {
    let img = dec("images/jpg_grey_camera.jpg");
    assert_eq!(img.channels, Channels::Gray);
    assert_eq!(img.pixels.len(), (img.width * img.height) as usize);
}

#[test]
fn cmyk_jpeg_is_converted_like_pillow() {
    // edge_cmyk.jpg is the astronaut photo saved as Adobe CMYK.
    let cmyk = dec("decode/edge_cmyk.jpg");
    let photo = dec("decode/sk_astronaut.png");
    assert_eq!(cmyk.channels, Channels::Rgb);
    assert_eq!((cmyk.width, cmyk.height), (photo.width, photo.height));
    let d = mean_abs_diff(&cmyk.pixels, &photo.pixels);
    assert!(d < 4.0, "CMYK conversion far from the photo: mean diff {d}");
}

#[test]
fn exif_orientation_is_not_applied() {
    // Square photo with EXIF orientation 6: rotated it would be far from the unrotated photo.
    let img = dec("decode/edge_exif_rot6.jpg");
    let photo = dec("decode/sk_astronaut.png");
    assert!(mean_abs_diff(&img.pixels, &photo.pixels) < 4.0);
}

#[test]
fn sixteen_bit_grey_is_clipped_not_scaled() {
    let img = dec("decode/edge_gray16.png");
    assert_eq!(img.channels, Channels::Gray);
    let samples = raw("decode/edge_gray16.png").into_luma16().into_raw();
    assert_eq!(samples.len(), img.pixels.len());
    let mut clipped = 0;
    for (&s, &p) in samples.iter().zip(&img.pixels) {
        assert_eq!(p, s.min(255) as u8);
        clipped += usize::from(s > 255);
    }
    assert!(clipped > samples.len() / 2, "fixture should exercise clipping");
}

#[test]
fn sixteen_bit_rgb_keeps_the_high_byte() {
    let img = dec("decode/edge_rgb16.png");
    assert_eq!(img.channels, Channels::Rgb);
    let samples = raw("decode/edge_rgb16.png").into_rgb16().into_raw();
    assert!(samples.iter().zip(&img.pixels).all(|(&s, &p)| p == (s >> 8) as u8));
}

#[test]
fn alpha_is_dropped_without_compositing() {
    let la = dec("decode/edge_la.png");
    assert_eq!(la.channels, Channels::Gray);
    let la_raw = raw("decode/edge_la.png").into_luma_alpha8().into_raw();
    assert!(la_raw.chunks_exact(2).map(|p| p[0]).eq(la.pixels.iter().copied()));

    // Random RGB under alpha 0: compositing would flatten it.
    let rgba = dec("images/syn_rgba094_400x300_rgba.png");
    assert_eq!(rgba.channels, Channels::Rgb);
    let rgba_raw = raw("images/syn_rgba094_400x300_rgba.png").into_rgba8().into_raw();
    assert!(rgba_raw.chunks_exact(4).any(|p| p[3] == 0 && p[..3] != [0, 0, 0]));
    assert!(rgba_raw.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).eq(rgba.pixels.iter().copied()));
}

#[test]
fn palette_is_rgb_and_bilevel_is_gray_0_255() {
    assert_eq!(dec("decode/edge_palette.png").channels, Channels::Rgb);
    assert_eq!(dec("images/syn_pal4bit100_800x520_p.png").channels, Channels::Rgb);
    let bilevel = dec("images/syn_bilevel102_400x300_1.png");
    assert_eq!(bilevel.channels, Channels::Gray);
    assert!(bilevel.pixels.iter().all(|&p| p == 0 || p == 255));
    assert!(bilevel.pixels.contains(&0) && bilevel.pixels.contains(&255));
}

#[test]
fn gamma_chunk_is_not_applied() {
    let img = dec("images/syn_gama103_480x360_rgb.png");
    let stored = raw("images/syn_gama103_480x360_rgb.png").into_rgb8().into_raw();
    assert!(img.pixels == stored);
}

#[test]
fn gif_decodes_only_the_first_frame() {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, Frame, RgbaImage};
    let mut bytes = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut bytes);
        enc.set_repeat(Repeat::Infinite).unwrap();
        for i in 0..2000u32 {
            let v = if i == 0 { 200 } else { (i % 100) as u8 };
            let frame = RgbaImage::from_pixel(32, 32, image::Rgba([v, v / 2, 10, 255]));
            enc.encode_frame(Frame::from_parts(frame, 0, 0, Delay::from_numer_denom_ms(10, 1))).unwrap();
        }
    }
    let img = decode(&bytes, &DecodeLimits::default()).expect("gif");
    assert_eq!((img.width, img.height, img.channels), (32, 32, Channels::Rgb));
    assert!(img.pixels.chunks_exact(3).all(|p| p == [200, 100, 10]));
}

fn assert_kind(bytes: &[u8], limits: &DecodeLimits, kind: &str) {
    match decode(bytes, limits) {
        Ok(img) => panic!("decoded {}x{}, wanted {kind}", img.width, img.height),
        Err(e) => assert_eq!(e.kind(), kind, "{e}"),
    }
}

#[test]
fn unknown_and_empty_bytes_are_unsupported() {
    let limits = DecodeLimits::default();
    assert_kind(&[], &limits, "unsupported_format");
    assert_kind(&[0u8; 1000], &limits, "unsupported_format");
    assert_kind(b"%PDF-1.7 not an image at all", &limits, "unsupported_format");
    assert!(!looks_like_image(b"hello"));
    assert!(looks_like_image(&fixture("images/jpg_tiny_12x9.jpg")));
    assert!(looks_like_image(&fixture("decode/edge_la.png")));
}

#[test]
fn truncated_files_are_corrupt() {
    let limits = DecodeLimits::default();
    let jpg = fixture("images/jpg_crop_513x300.jpg");
    assert_kind(&jpg[..jpg.len() / 2], &limits, "decode");
    assert_kind(&jpg[..200], &limits, "decode");
    let progressive = fixture("images/jpg_progressive_chelsea.jpg");
    assert_kind(&progressive[..progressive.len() * 2 / 3], &limits, "decode");
    let png = fixture("decode/edge_la.png");
    assert_kind(&png[..png.len() / 2], &limits, "decode");
}

#[test]
fn damaged_files_never_panic() {
    let limits = DecodeLimits::default();
    for rel in ["images/jpg_tiny_12x9.jpg", "images/jpg_progressive_chelsea.jpg", "images/syn_pal099_300x200_p.png"] {
        let good = fixture(rel);
        for cut in (0..good.len()).step_by(good.len() / 40 + 1) {
            let _ = decode(&good[..cut], &limits);
        }
        let mut state = 0x2545_f491_u32;
        for _ in 0..40 {
            let mut bad = good.clone();
            for _ in 0..8 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let i = 2 + state as usize % (bad.len() - 2);
                bad[i] = (state >> 24) as u8;
            }
            let _ = decode(&bad, &limits);
        }
    }
}

/// A JPEG whose SOF0 claims `w × h`.
fn jpeg_with_dimensions(w: u16, h: u16) -> Vec<u8> {
    let mut bytes = fixture("images/jpg_tiny_12x9.jpg");
    let sof = (0..bytes.len() - 1)
        .find(|&i| bytes[i] == 0xFF && (0xC0..=0xC2).contains(&bytes[i + 1]))
        .expect("SOF marker");
    bytes[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG whose IHDR claims `w × h` (with a valid chunk CRC).
fn png_with_dimensions(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = fixture("decode/edge_la.png");
    assert_eq!(&bytes[12..16], b"IHDR");
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn decompression_bombs_are_refused_from_the_header() {
    let limits = DecodeLimits::default();
    for bytes in [jpeg_with_dimensions(60_000, 60_000), jpeg_with_dimensions(15_000, 15_000)] {
        match decode(&bytes, &limits) {
            Err(DecodeError::TooLarge { width, height }) => assert!(width >= 15_000 && height >= 15_000),
            other => panic!("bomb not refused: {other:?}"),
        }
    }
    // The png decoder refuses this header itself, before dimensions reach our check.
    match decode(&png_with_dimensions(100_000, 100_000), &limits) {
        Err(DecodeError::TooLarge { .. } | DecodeError::LimitExceeded(_)) => {}
        other => panic!("PNG bomb not refused: {other:?}"),
    }
    match decode(&png_with_dimensions(19_000, 19_000), &limits) {
        Err(DecodeError::TooLarge { width: 19_000, height: 19_000 }) => {}
        other => panic!("PNG bomb not refused: {other:?}"),
    }
    // Within the side limit but over the pixel budget.
    let small = DecodeLimits { max_pixels: 10_000, max_side: 20_000, ..DecodeLimits::default() };
    assert_kind(&fixture("images/jpg_crop_513x300.jpg"), &small, "too_large");
    assert_kind(&fixture("decode/edge_la.png"), &small, "too_large");
    let narrow = DecodeLimits { max_pixels: u64::MAX, max_side: 100, ..DecodeLimits::default() };
    assert_kind(&fixture("images/jpg_crop_513x300.jpg"), &narrow, "too_large");
}
