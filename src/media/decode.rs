//! Decoding media bytes into 8-bit pixels, once per event, under size limits.
//!
//! OWNER: PDQ work (issue 3). This is the classifier work's interim copy, used to test the
//! classifier until the PDQ branch's decoder lands; the lead keeps that one at merge.
//!
//! Conversions follow what Pillow does for the classifier reference (the PDQ reference agrees on
//! everything but grey, which it keeps as grey too):
//! - JPEG through libjpeg-turbo code (ISLOW IDCT, fancy upsampling), EXIF orientation ignored;
//!   CMYK/YCCK JPEGs are read as inverted (Adobe) CMYK and converted with Pillow's plain formula.
//! - 16-bit grey is clipped to 0..=255 (Pillow's `I;16` → `L`), other 16-bit samples keep the high
//!   byte; palettes are expanded; alpha is dropped without compositing.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Channel layout of decoded pixels. Alpha is always dropped (never composited) and palettes are
/// expanded to RGB, which is what both references (CImg for PDQ, Pillow for the classifier) hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    Gray,
    Rgb,
}

/// Decoded pixels, row-major, interleaved (`Rgb`: 3 bytes a pixel; `Gray`: 1 byte a pixel).
#[derive(Debug, Clone)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub channels: Channels,
    pub pixels: Vec<u8>,
}

/// Bounds checked from the header before any pixel buffer is allocated.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    pub max_pixels: u64,
    pub max_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: 50_000_000, max_side: 20_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a supported image format")]
    Unsupported,
    #[error("image {width}x{height} exceeds the decode limits")]
    TooLarge { width: u32, height: u32 },
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

impl DecodeError {
    /// Stable label for metrics and `media_error` reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Unsupported => "unsupported_format",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Corrupt(_) => "decode",
        }
    }
}

/// True when the bytes start like an image format this module decodes.
pub fn looks_like_image(bytes: &[u8]) -> bool {
    image::guess_format(bytes).is_ok()
}

pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Image, DecodeError> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg(bytes, limits)
    } else {
        decode_other(bytes, limits)
    }
}

fn check_limits(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt("image has no pixels".into()));
    }
    if width > limits.max_side || height > limits.max_side || u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(DecodeError::TooLarge { width, height });
    }
    Ok(())
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "libjpeg error".into())
}

fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<Image, DecodeError> {
    use mozjpeg::ColorSpace;
    // libjpeg reports errors by unwinding out of the C code (see the mozjpeg crate docs).
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<Image, DecodeError> {
        let d = mozjpeg::Decompress::new_mem(bytes).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        let (w, h) = d.size();
        let (width, height) = (w as u32, h as u32);
        check_limits(width, height, limits)?;
        let corrupt = |e: std::io::Error| DecodeError::Corrupt(e.to_string());
        match d.color_space() {
            ColorSpace::JCS_GRAYSCALE => {
                let mut s = d.grayscale().map_err(corrupt)?;
                let pixels: Vec<u8> = s.read_scanlines().map_err(corrupt)?;
                s.finish().map_err(corrupt)?;
                Ok(Image { width, height, channels: Channels::Gray, pixels })
            }
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
                let mut s = d.to_colorspace(ColorSpace::JCS_CMYK).map_err(corrupt)?;
                let cmyk: Vec<u8> = s.read_scanlines().map_err(corrupt)?;
                s.finish().map_err(corrupt)?;
                Ok(Image { width, height, channels: Channels::Rgb, pixels: inverted_cmyk_to_rgb(&cmyk) })
            }
            _ => {
                let mut s = d.rgb().map_err(corrupt)?;
                let pixels: Vec<u8> = s.read_scanlines().map_err(corrupt)?;
                s.finish().map_err(corrupt)?;
                Ok(Image { width, height, channels: Channels::Rgb, pixels })
            }
        }
    }));
    let image = result.map_err(|p| DecodeError::Corrupt(panic_message(p)))??;
    let expected = image.width as usize * image.height as usize * if image.channels == Channels::Rgb { 3 } else { 1 };
    if image.pixels.len() != expected {
        return Err(DecodeError::Corrupt("truncated JPEG".into()));
    }
    Ok(image)
}

/// Pillow reads 4-component JPEGs as Adobe (inverted) CMYK and converts to RGB with
/// `R = 255 - K' - C'·(255 - K')/255` in its fixed-point MULDIV255 (no ICC, no undercolour).
fn inverted_cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let nk = i32::from(px[3]); // 255 - (255 - stored k)
        for &c in &px[..3] {
            let c = 255 - i32::from(c);
            out.push((nk - muldiv255(c, nk)).clamp(0, 255) as u8);
        }
    }
    out
}

fn decode_other(bytes: &[u8], limits: &DecodeLimits) -> Result<Image, DecodeError> {
    use image::DynamicImage as D;
    let reader = |bytes| {
        image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| DecodeError::Corrupt(e.to_string()))
    };
    let probe = reader(bytes)?;
    if probe.format().is_none() {
        return Err(DecodeError::Unsupported);
    }
    let (width, height) = probe.into_dimensions().map_err(image_error)?;
    check_limits(width, height, limits)?;

    let mut r = reader(bytes)?;
    let mut l = image::Limits::default();
    l.max_image_width = Some(width);
    l.max_image_height = Some(height);
    // Largest decoded layout (16-bit RGBA) plus decoder scratch.
    l.max_alloc = Some(u64::from(width) * u64::from(height) * 8 + (64 << 20));
    r.limits(l);
    let img = r.decode().map_err(image_error)?;

    let (channels, pixels) = match img {
        D::ImageLuma8(b) => (Channels::Gray, b.into_raw()),
        D::ImageLumaA8(b) => (Channels::Gray, b.into_raw().chunks_exact(2).map(|p| p[0]).collect()),
        D::ImageRgb8(b) => (Channels::Rgb, b.into_raw()),
        D::ImageRgba8(b) => (Channels::Rgb, drop_alpha(&b.into_raw())),
        D::ImageLuma16(b) => (Channels::Gray, b.into_raw().into_iter().map(|v| v.min(255) as u8).collect()),
        D::ImageLumaA16(b) => (Channels::Gray, b.into_raw().chunks_exact(2).map(|p| (p[0] >> 8) as u8).collect()),
        D::ImageRgb16(b) => (Channels::Rgb, b.into_raw().into_iter().map(|v| (v >> 8) as u8).collect()),
        D::ImageRgba16(b) => (
            Channels::Rgb,
            b.into_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).map(|v| (v >> 8) as u8).collect(),
        ),
        other => (Channels::Rgb, other.to_rgb8().into_raw()),
    };
    Ok(Image { width, height, channels, pixels })
}

fn drop_alpha(rgba: &[u8]) -> Vec<u8> {
    rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect()
}

fn image_error(e: image::ImageError) -> DecodeError {
    match e {
        image::ImageError::Unsupported(_) => DecodeError::Unsupported,
        image::ImageError::Limits(_) => DecodeError::Corrupt(format!("decoder limit: {e}")),
        other => DecodeError::Corrupt(other.to_string()),
    }
}
