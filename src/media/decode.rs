//! Decoding media bytes into 8-bit pixels, once per event, under size limits.
//!
//! OWNER: PDQ work (issue 3). This file is a stub fixing the interface; bodies to be written.

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
    let _ = (bytes, limits);
    Err(DecodeError::Unsupported)
}
