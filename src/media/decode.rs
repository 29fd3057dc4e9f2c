//! Decoding media bytes into 8-bit pixels, once per event, under size limits.
//!
//! JPEG goes through libjpeg-turbo code (the `mozjpeg` crate) with libjpeg's defaults (ISLOW IDCT,
//! fancy upsampling), because both references decode with libjpeg-turbo: CImg for PDQ and Pillow
//! for the classifier. A pure-Rust JPEG decoder differs from them by a few levels per pixel.
//! Every other format goes through the `image` crate. Conversions follow Pillow's rules where
//! the two references could disagree (CMYK, 16-bit), and never apply EXIF orientation, gamma or
//! alpha compositing: the hashes and scores of the references are computed on the stored samples.

use std::io::{self, BufRead, Cursor, Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use image::{AnimationDecoder, DynamicImage, ImageDecoder, ImageError, ImageFormat};

/// Channel layout of decoded pixels. Alpha is always dropped (never composited) and palettes are
/// expanded to RGB, which is what both references (CImg for PDQ, Pillow for the classifier) hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    Gray,
    Rgb,
}

impl Channels {
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::Rgb => 3,
        }
    }
}

/// Decoded pixels, row-major, interleaved (`Rgb`: 3 bytes a pixel; `Gray`: 1 byte a pixel).
#[derive(Debug, Clone)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub channels: Channels,
    pub pixels: Vec<u8>,
}

/// Bounds checked from the header before any pixel buffer is allocated, and the time decoding
/// may take.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    pub max_pixels: u64,
    pub max_side: u32,
    /// Most memory one decode may need, as [`plan`] counts it from the format's layout.
    pub max_bytes: u64,
    /// How long one upload's decoding (its still image and animation frames) may take.
    pub deadline: Duration,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: 50_000_000, max_side: 20_000, max_bytes: 512 << 20, deadline: Duration::from_secs(10) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a supported image format")]
    Unsupported,
    #[error("image {width}x{height} exceeds the decode limits")]
    TooLarge { width: u32, height: u32 },
    /// A decoder refused an allocation or a size the header did not show (a frame larger than
    /// the canvas, a header over the decoder's own limits): no trustworthy dimensions to report.
    #[error("image exceeds the decode limits: {0}")]
    LimitExceeded(String),
    /// The header shows a layout that needs more memory than one decode may take.
    #[error("decoding needs {needed} bytes, over the per-decode budget of {budget} (decode.max_bytes)")]
    OverBudget { needed: u64, budget: u64 },
    #[error("decoding did not finish within {0:?} (decode.deadline_ms)")]
    Deadline(Duration),
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

impl DecodeError {
    /// Stable label for metrics and `media_error` reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Unsupported => "unsupported_format",
            DecodeError::TooLarge { .. } | DecodeError::LimitExceeded(_) | DecodeError::OverBudget { .. } => {
                "too_large"
            }
            DecodeError::Deadline(_) => "decode_timeout",
            DecodeError::Corrupt(_) => "decode",
        }
    }
}

const JPEG_MAGIC: [u8; 3] = [0xFF, 0xD8, 0xFF];

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[..3] == JPEG_MAGIC
}

/// The formats decoded here besides JPEG; `image` can recognise more than it is built to decode.
fn other_format(bytes: &[u8]) -> Option<ImageFormat> {
    match image::guess_format(bytes).ok()? {
        f @ (ImageFormat::Png
        | ImageFormat::Gif
        | ImageFormat::Bmp
        | ImageFormat::WebP
        | ImageFormat::Tiff) => Some(f),
        _ => None,
    }
}

/// True when the bytes start like an image format this module decodes. BMP's two-byte `BM` also
/// begins ordinary text ("BMW annual report"), so it counts only with a header that parses.
pub fn looks_like_image(bytes: &[u8]) -> bool {
    match other_format(bytes) {
        Some(ImageFormat::Bmp) => bmp_header_parses(bytes),
        Some(_) => true,
        None => is_jpeg(bytes),
    }
}

fn u16_le(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_le(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// `BM`, then a DIB header of a size some version of the format has, one plane, a bit depth
/// BMP defines, a positive width and a nonzero height (negative: rows stored top-down).
fn bmp_header_parses(bytes: &[u8]) -> bool {
    let check = || -> Option<bool> {
        let dib = u32_le(bytes, 14)?;
        let (width, height, planes, bits) = match dib {
            12 => (i32::from(u16_le(bytes, 18)?), i32::from(u16_le(bytes, 20)?), u16_le(bytes, 22)?, u16_le(bytes, 24)?),
            40 | 52 | 56 | 64 | 108 | 124 => {
                (u32_le(bytes, 18)? as i32, u32_le(bytes, 22)? as i32, u16_le(bytes, 26)?, u16_le(bytes, 28)?)
            }
            _ => return Some(false),
        };
        let pixel_offset = u32_le(bytes, 10)?;
        Some(planes == 1 && [1, 2, 4, 8, 16, 24, 32, 64].contains(&bits) && width > 0 && height != 0 && pixel_offset >= 14 + dib)
    };
    bytes.starts_with(b"BM") && check().unwrap_or(false)
}

/// `P1`…`P7`, white space, then a width and a height in decimal (comments allowed between them,
/// PAM's `WIDTH`/`HEIGHT` lines for `P7`), as netpbm reads them.
fn pnm_header_parses(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(512)];
    let Some(kind @ b'1'..=b'7') = head.get(1).copied().filter(|_| head[0] == b'P') else { return false };
    if !head.get(2).is_some_and(|c| c.is_ascii_whitespace()) {
        return false;
    }
    let text = String::from_utf8_lossy(&head[2..]);
    let mut tokens = text.lines().map(|line| line.split('#').next().unwrap_or("")).flat_map(str::split_whitespace);
    let positive = |t: Option<&str>| t.is_some_and(|t| t.bytes().all(|c| c.is_ascii_digit()) && t.parse::<u32>().is_ok_and(|n| n > 0));
    if kind == b'7' {
        // PAM: header lines in any order; width and height must both be there.
        let (mut width, mut height) = (false, false);
        while let Some(token) = tokens.next() {
            match token {
                "WIDTH" => width = positive(tokens.next()),
                "HEIGHT" => height = positive(tokens.next()),
                "ENDHDR" => break,
                _ => {}
            }
        }
        return width && height;
    }
    positive(tokens.next()) && positive(tokens.next())
}

/// An ICO directory: reserved 0, type 1 (icon) or 2 (cursor), 1 to 256 images, each entry's data
/// starting after the directory.
fn ico_header_parses(bytes: &[u8]) -> bool {
    let check = || -> Option<bool> {
        let count = u16_le(bytes, 4)?;
        let offset = u32_le(bytes, 18)?;
        Some(u16_le(bytes, 0)? == 0 && matches!(u16_le(bytes, 2)?, 1 | 2) && (1..=256).contains(&count) && offset >= 6 + 16 * u32::from(count))
    };
    check().unwrap_or(false)
}

/// What the bytes are, whatever the upload declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A format [`decode`] takes.
    Decodable,
    /// An image this service cannot decode (the name says which): it cannot be screened.
    OtherImage(&'static str),
    /// A video container (the name says which): decoded by the video helper.
    Video(&'static str),
    /// Nothing says image.
    NotImage,
}

/// How far into the bytes an image signature still counts: a few junk bytes in front of a
/// picture break decoders, not every viewer.
const DISGUISE_WINDOW: usize = 16;

/// Looks at the first bytes: decodable image, another image format, or not an image at all.
/// Images behind a few junk bytes count as images (that cannot be decoded as they are), found
/// by their long signatures only: the short ones (`BM`, `P1`…`P7`, `FF 0A`) also occur in ordinary
/// text and count only at offset 0 with a header that parses.
pub fn sniff(bytes: &[u8]) -> Sniffed {
    if looks_like_image(bytes) {
        return Sniffed::Decodable;
    }
    if let Some(name) = other_image(bytes) {
        return Sniffed::OtherImage(name);
    }
    if let Some(name) = super::video::sniff(bytes) {
        return Sniffed::Video(name);
    }
    let disguised = (1..=DISGUISE_WINDOW.min(bytes.len().saturating_sub(1))).any(|skip| long_signature(&bytes[skip..]));
    if disguised {
        return Sniffed::OtherImage("image behind leading junk bytes");
    }
    Sniffed::NotImage
}

/// Image signatures that ordinary text and data do not contain by chance: six bytes or more, or
/// four with a byte no text has (a NUL, a byte over 0x7F, a control character), or BMP's `BM`
/// with the header that has to follow it. The formats are the ones [`other_format`] and
/// [`other_image`] recognise, less those whose signature is short or text: JPEG XL's bare
/// codestream (`FF 0A`), PNM (its header is text), ICO (zeros), QOI (four letters), SVG.
fn long_signature(bytes: &[u8]) -> bool {
    // JPEG: FF D8 FF and a marker that can follow SOI (APPn, DQT, SOFn, DHT, COM).
    let jpeg = bytes.len() >= 4 && is_jpeg(bytes) && matches!(bytes[3], 0xE0..=0xEF | 0xDB | 0xC0..=0xC2 | 0xC4 | 0xFE);
    let decodable = match other_format(bytes) {
        Some(ImageFormat::Bmp) => bmp_header_parses(bytes),
        // PNG, GIF, WebP and TIFF: 4 to 12 bytes, each with a byte text does not have.
        Some(_) => true,
        None => false,
    };
    let other = match other_image(bytes) {
        Some("JPEG XL") => bytes.starts_with(JXL_CONTAINER),
        Some(name) => ["HEIF/AVIF", "JPEG 2000", "Photoshop", "DDS", "Radiance HDR", "OpenEXR", "farbfeld"].contains(&name),
        None => false,
    };
    jpeg || decodable || other
}

/// A JPEG XL file in its ISO container (the bare codestream starts `FF 0A`).
const JXL_CONTAINER: &[u8] = b"\x00\x00\x00\x0cJXL \r\n\x87\n";

/// Image formats recognised by their signature but not decoded here.
fn other_image(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    // ISO base media files name their kind in the `ftyp` box: HEIF/HEIC and AVIF are images,
    // MP4 and QuickTime brands are video.
    let box_size = bytes.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" && (12..=1024).contains(&box_size) {
        let brand = &bytes[8..12];
        let image_brands: [&[u8; 4]; 10] =
            [b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"];
        return image_brands.iter().any(|b| brand == *b).then_some("HEIF/AVIF");
    }
    if starts(&[0xFF, 0x0A]) || starts(JXL_CONTAINER) {
        return Some("JPEG XL");
    }
    if starts(b"\x00\x00\x00\x0cjP  \r\n\x87\n") || starts(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return Some("JPEG 2000");
    }
    // Photoshop: `8BPS`, then version 1 (PSD) or 2 (PSB).
    if starts(b"8BPS\x00\x01") || starts(b"8BPS\x00\x02") {
        return Some("Photoshop");
    }
    // Radiance writes `#?RADIANCE`, other tools `#?RGBE` (the `image` crate knows the first only).
    if starts(b"#?RGBE") {
        return Some("Radiance HDR");
    }
    if looks_like_svg(&bytes[..bytes.len().min(1024)]) {
        return Some("SVG");
    }
    match image::guess_format(bytes).ok()? {
        // Short or zero-filled signatures: only with a header that parses.
        ImageFormat::Ico => ico_header_parses(bytes).then_some("ICO"),
        ImageFormat::Pnm => pnm_header_parses(bytes).then_some("PNM"),
        ImageFormat::Dds => starts(b"DDS \x7c\x00\x00\x00").then_some("DDS"),
        ImageFormat::Hdr => Some("Radiance HDR"),
        ImageFormat::OpenExr => Some("OpenEXR"),
        ImageFormat::Farbfeld => Some("farbfeld"),
        // `qoif`, a nonzero width and height (big-endian), 3 or 4 channels, colour space 0 or 1.
        ImageFormat::Qoi => {
            let size = |at: usize| bytes.get(at..at + 4).is_some_and(|b| b != [0; 4]);
            (size(4) && size(8) && matches!(bytes.get(12), Some(3 | 4)) && matches!(bytes.get(13), Some(0 | 1))).then_some("QOI")
        }
        // (TGA has no signature to recognise; AVIF is caught by its `ftyp` brand above.)
        _ => None,
    }
}

/// Decodes the image a still viewer shows (the first frame of an animation, the default image
/// of an APNG), within `limits.deadline` from now.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Image, DecodeError> {
    decode_until(bytes, limits, Instant::now() + limits.deadline)
}

/// [`decode`] against a deadline shared with other decoding of the same upload.
pub fn decode_until(bytes: &[u8], limits: &DecodeLimits, deadline: Instant) -> Result<Image, DecodeError> {
    if is_jpeg(bytes) {
        return decode_jpeg(bytes, limits, deadline);
    }
    match other_format(bytes) {
        Some(format) => decode_other(bytes, format, limits, deadline),
        None => Err(DecodeError::Unsupported),
    }
}

// ---------------------------------------------------------------- budgets

/// What decoding an upload will take, read from its header before any pixel buffer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub width: u32,
    pub height: u32,
    /// Peak memory of the decode, counted from the format's layout (see [`plan`]).
    pub bytes: u64,
    /// Whether [`animation_frames`] has frames to show besides the still image.
    pub animated: bool,
}

/// Reads the header and counts the memory decoding will take at its peak: the decoder's own
/// buffers in the stored layout (16-bit samples, alpha, CMYK, a progressive JPEG's coefficients,
/// a GIF's canvas), the 8-bit RGB result, and for animations the compositing canvases and one
/// frame. Refuses what is over the pixel limits or `limits.max_bytes`, so that a 40-byte GIF
/// with a huge canvas costs a header read, not hundreds of megabytes.
pub fn plan(bytes: &[u8], limits: &DecodeLimits) -> Result<Plan, DecodeError> {
    let (width, height, layout, animated) = if is_jpeg(bytes) {
        jpeg_layout(bytes)?
    } else {
        match other_format(bytes) {
            Some(format) => other_layout(bytes, format, limits)?,
            None => return Err(DecodeError::Unsupported),
        }
    };
    check_limits(u64::from(width), u64::from(height), limits)?;
    let pixels = u64::from(width) * u64::from(height);
    let rgb = pixels.saturating_mul(3);
    // Canvas, previous canvas and the frame being composited (RGBA each), then the frame as RGB.
    let animation = if animated { pixels.saturating_mul(12).saturating_add(rgb) } else { 0 };
    let needed = layout.saturating_add(rgb).saturating_add(animation);
    if needed > limits.max_bytes {
        return Err(DecodeError::OverBudget { needed, budget: limits.max_bytes });
    }
    Ok(Plan { width, height, bytes: needed, animated })
}

/// Width, height, bytes of libjpeg's buffers and output, and never animated.
fn jpeg_layout(bytes: &[u8]) -> Result<(u32, u32, u64, bool), DecodeError> {
    let header = catch_unwind(AssertUnwindSafe(|| {
        mozjpeg::Decompress::with_err(jpeg_errors::manager())
            .from_mem(bytes)
            .map(|d| (d.width() as u64, d.height() as u64, d.components().len().max(1) as u64))
    }));
    let (width, height, components) = match header {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(DecodeError::Corrupt(e.to_string())),
        Err(payload) => return Err(DecodeError::Corrupt(unwound_message(payload.as_ref()))),
    };
    // libjpeg pads to whole 16-pixel MCUs.
    let padded = width.div_ceil(16).saturating_mul(16).saturating_mul(height.div_ceil(16).saturating_mul(16));
    let output = padded.saturating_mul(components);
    // A progressive file keeps every coefficient (2 bytes a sample) until its last scan. Any
    // progressive frame marker counts: over-counting only makes the estimate safer.
    let progressive = bytes.windows(2).any(|w| w[0] == 0xFF && matches!(w[1], 0xC2 | 0xC6 | 0xCA | 0xCE));
    let coefficients = if progressive { output.saturating_mul(2) } else { 0 };
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok((clamp(width), clamp(height), output.saturating_add(coefficients), false))
}

/// Width, height, bytes of the decoder's buffer in the stored layout (plus a GIF's canvas), and
/// whether the image is animated.
fn other_layout(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits) -> Result<(u32, u32, u64, bool), DecodeError> {
    let stripped = if format == ImageFormat::Png { png_precheck(bytes)? } else { None };
    let mut reader = image::ImageReader::with_format(Cursor::new(stripped.as_deref().unwrap_or(bytes)), format);
    reader.limits(image_limits(limits));
    let decoder = catch_unwind(AssertUnwindSafe(|| reader.into_decoder()))
        .map_err(|_| DecodeError::Corrupt("image decoder failed".into()))?
        .map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    let mut layout = decoder.total_bytes();
    if format == ImageFormat::Gif {
        layout = layout.saturating_add(u64::from(width) * u64::from(height) * 4);
    }
    Ok((width, height, layout, is_animated(bytes, format)))
}

/// Whether the image has animation frames viewers play. GIFs always go through the animation
/// path (a GIF's frame count is only known by reading it), PNGs with an `acTL` chunk before
/// their image data (APNG), WebPs whose `VP8X` header sets the animation flag.
fn is_animated(bytes: &[u8], format: ImageFormat) -> bool {
    match format {
        ImageFormat::Gif => true,
        ImageFormat::Png => png_chunks_before_idat(bytes).any(|(kind, _)| kind == *b"acTL"),
        ImageFormat::WebP => bytes.len() > 20 && &bytes[12..16] == b"VP8X" && bytes[20] & 0x02 != 0,
        _ => false,
    }
}

// ---------------------------------------------------------------- deadline

/// How many bytes a decoder gets per read: small enough that the deadline is checked often.
const READ_CHUNK: usize = 64 << 10;

/// Hands a decoder its input in slices of at most [`READ_CHUNK`] and fails every read once the
/// deadline has passed. Decoders pull input as they go (libjpeg between scans and rows, the
/// `image` decoders per chunk and frame), so a decode that runs long stops at its next read
/// instead of holding a thread for tens of seconds.
struct TimedReader<'a> {
    inner: Cursor<&'a [u8]>,
    deadline: Instant,
}

impl<'a> TimedReader<'a> {
    fn new(bytes: &'a [u8], deadline: Instant) -> Self {
        Self { inner: Cursor::new(bytes), deadline }
    }
}

impl Read for TimedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for TimedReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "decode deadline passed"));
        }
        let data: &[u8] = self.inner.get_ref();
        let start = (self.inner.position() as usize).min(data.len());
        Ok(&data[start..(start + READ_CHUNK).min(data.len())])
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
    }
}

impl Seek for TimedReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// A decoder's failure, named as the deadline when that is what stopped it.
fn failed_by(error: DecodeError, deadline: Instant, limits: &DecodeLimits) -> DecodeError {
    match error {
        DecodeError::Corrupt(_) | DecodeError::Unsupported if Instant::now() >= deadline => {
            DecodeError::Deadline(limits.deadline)
        }
        other => other,
    }
}

// ---------------------------------------------------------------- animation

/// Most animation frames decoded for one upload, screened or not.
pub const MAX_ANIMATION_FRAMES: usize = 10_000;

/// Most canvas pixels composited for one upload's animation (frames × canvas): every frame is
/// composited on the whole canvas, so a long animation on a large canvas costs seconds even when
/// each frame is a single pixel. About a second of CPU; a 480×270 GIF may have 7,700 frames.
pub const MAX_ANIMATION_PIXELS: u64 = 1_000_000_000;

/// One composited animation frame, as a viewer shows it.
pub struct Frame<'a>(&'a image::RgbaImage, f64);

impl Frame<'_> {
    /// When the frame is shown: the delays of the frames before it, in seconds.
    pub fn at_seconds(&self) -> f64 {
        self.1
    }

    /// The frame's pixels, alpha dropped as for still images.
    pub fn to_image(&self) -> Image {
        let (width, height) = self.0.dimensions();
        let pixels = self.0.as_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        Image { width, height, channels: Channels::Rgb, pixels }
    }
}

/// Decodes the frames an animated GIF, APNG or WebP plays, each composited on the canvas as
/// viewers show it, and hands them to `visit` in order with their index. Returns how many there
/// were: 0 for still images (and for an APNG's default image, which is not a frame unless the
/// file says so; [`decode`] covers it).
pub fn animation_frames(
    bytes: &[u8],
    limits: &DecodeLimits,
    deadline: Instant,
    mut visit: impl FnMut(usize, Frame<'_>),
) -> Result<usize, DecodeError> {
    let Some(format) = other_format(bytes).filter(|&f| is_animated(bytes, f)) else {
        return Ok(0);
    };
    let stripped = if format == ImageFormat::Png { png_precheck(bytes)? } else { None };
    let bytes = stripped.as_deref().unwrap_or(bytes);
    let decode_all = || -> Result<usize, DecodeError> {
        let reader = TimedReader::new(bytes, deadline);
        let frames = match format {
            ImageFormat::Png => image::codecs::png::PngDecoder::with_limits(reader, image_limits(limits))
                .and_then(|d| d.apng())
                .map(|d| d.into_frames()),
            ImageFormat::Gif => image::codecs::gif::GifDecoder::new(reader).and_then(|mut d| {
                d.set_limits(image_limits(limits))?;
                Ok(d.into_frames())
            }),
            _ => image::codecs::webp::WebPDecoder::new(reader).and_then(|mut d| {
                d.set_limits(image_limits(limits))?;
                Ok(d.into_frames())
            }),
        }
        .map_err(map_image_error)?;
        let mut count = 0;
        let mut composited = 0u64;
        let mut shown_at_ms = 0.0_f64;
        for frame in frames {
            let frame = frame.map_err(map_image_error)?;
            if Instant::now() >= deadline {
                return Err(DecodeError::Deadline(limits.deadline));
            }
            let (width, height) = frame.buffer().dimensions();
            composited = composited.saturating_add(u64::from(width) * u64::from(height));
            if count == MAX_ANIMATION_FRAMES || composited > MAX_ANIMATION_PIXELS {
                return Err(DecodeError::LimitExceeded(format!(
                    "animation longer than {count} frames of {width}x{height}: over {MAX_ANIMATION_FRAMES} frames or {MAX_ANIMATION_PIXELS} composited pixels"
                )));
            }
            visit(count, Frame(frame.buffer(), shown_at_ms / 1000.0));
            let (numerator, denominator) = frame.delay().numer_denom_ms();
            shown_at_ms += f64::from(numerator) / f64::from(denominator.max(1));
            count += 1;
        }
        Ok(count)
    };
    catch_unwind(AssertUnwindSafe(decode_all))
        .unwrap_or_else(|_| Err(DecodeError::Corrupt("animation decoder failed".into())))
        .map_err(|e| failed_by(e, deadline, limits))
}

fn check_limits(width: u64, height: u64, limits: &DecodeLimits) -> Result<(), DecodeError> {
    let too_large = || DecodeError::TooLarge {
        width: u32::try_from(width).unwrap_or(u32::MAX),
        height: u32::try_from(height).unwrap_or(u32::MAX),
    };
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt(format!("empty image {width}x{height}")));
    }
    if width > u64::from(limits.max_side) || height > u64::from(limits.max_side) {
        return Err(too_large());
    }
    match width.checked_mul(height) {
        Some(n) if n <= limits.max_pixels => Ok(()),
        _ => Err(too_large()),
    }
}

// ---------------------------------------------------------------- JPEG

/// libjpeg reports a premature end of data as a warning and pads the rest of the image with grey;
/// Pillow refuses such files ("image file is truncated"), so it becomes an error here.
/// libjpeg reports fatal errors through `error_exit`, which must not return: it unwinds, and
/// `decode_jpeg` catches that unwind.
mod jpeg_errors {
    use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, JWRN_JPEG_EOF};
    use std::os::raw::c_int;

    pub(super) struct Fatal(pub String);

    fn message(cinfo: &mut jpeg_common_struct) -> String {
        // SAFETY: libjpeg hands callbacks a valid cinfo whose `err` points at our manager.
        unsafe {
            let err = &*cinfo.err;
            let mut buf = [0u8; 80];
            match err.format_message {
                Some(format) => {
                    // The binding types the buffer as shared; libjpeg writes into it.
                    let f: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 80]) =
                        std::mem::transmute(format);
                    f(cinfo, &mut buf);
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    String::from_utf8_lossy(&buf[..end]).into_owned()
                }
                None => format!("libjpeg error code {}", err.msg_code),
            }
        }
    }

    extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
        let msg = message(cinfo);
        std::panic::resume_unwind(Box::new(Fatal(msg)));
    }

    extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
        // SAFETY: as above.
        let code = unsafe { (*cinfo.err).msg_code };
        if level < 0 && code == JWRN_JPEG_EOF as c_int {
            std::panic::resume_unwind(Box::new(Fatal("truncated JPEG data".into())));
        }
    }

    pub(super) fn manager() -> jpeg_error_mgr {
        // SAFETY: jpeg_std_error fills every field of a zeroed manager.
        unsafe {
            let mut err: jpeg_error_mgr = std::mem::zeroed();
            mozjpeg_sys::jpeg_std_error(&mut err);
            err.error_exit = Some(error_exit);
            err.emit_message = Some(emit_message);
            err
        }
    }
}

/// Most scans a JPEG may have. A baseline file has one, a progressive one about ten; each scan
/// re-walks the whole coefficient buffer, so a few thousand tiny scans keep libjpeg busy for tens
/// of seconds on a small file (what djpeg's `-maxscans` guards against).
pub const MAX_JPEG_SCANS: usize = 100;

/// Scans in a JPEG: its start-of-scan markers. Entropy-coded data stuffs every 0xFF byte with a
/// zero, so `FF DA` there is always a marker; metadata segments could hold one by chance, which
/// only ever over-counts.
fn jpeg_scans(bytes: &[u8]) -> usize {
    bytes.windows(2).filter(|w| w[0] == 0xFF && w[1] == 0xDA).count()
}

fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits, deadline: Instant) -> Result<Image, DecodeError> {
    let scans = jpeg_scans(bytes);
    if scans > MAX_JPEG_SCANS {
        return Err(DecodeError::LimitExceeded(format!("{scans} JPEG scans, over the limit of {MAX_JPEG_SCANS}")));
    }
    catch_unwind(AssertUnwindSafe(|| decode_jpeg_inner(bytes, limits, deadline)))
        .unwrap_or_else(|payload| Err(DecodeError::Corrupt(unwound_message(payload.as_ref()))))
        .map_err(|e| failed_by(e, deadline, limits))
}

/// What libjpeg said when it gave up (its `error_exit` unwinds with it), or a panic's message.
fn unwound_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(f) = payload.downcast_ref::<jpeg_errors::Fatal>() {
        f.0.clone()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "JPEG decoder failed".to_string()
    }
}

fn decode_jpeg_inner(bytes: &[u8], limits: &DecodeLimits, deadline: Instant) -> Result<Image, DecodeError> {
    let corrupt = |e: std::io::Error| DecodeError::Corrupt(e.to_string());
    let reader = TimedReader::new(bytes, deadline);
    let dec = mozjpeg::Decompress::with_err(jpeg_errors::manager()).from_reader(reader).map_err(corrupt)?;
    let (width, height) = (dec.width() as u64, dec.height() as u64);
    // Before jpeg_start_decompress, which allocates the coefficient buffers of progressive files.
    check_limits(width, height, limits)?;
    let (w, h) = (width as u32, height as u32);
    match dec.image().map_err(corrupt)? {
        mozjpeg::Format::RGB(mut started) => {
            let pixels = started.read_scanlines::<u8>().map_err(corrupt)?;
            started.finish().map_err(corrupt)?;
            Ok(Image { width: w, height: h, channels: Channels::Rgb, pixels })
        }
        mozjpeg::Format::Gray(mut started) => {
            let pixels = started.read_scanlines::<u8>().map_err(corrupt)?;
            started.finish().map_err(corrupt)?;
            Ok(Image { width: w, height: h, channels: Channels::Gray, pixels })
        }
        mozjpeg::Format::CMYK(mut started) => {
            let cmyk = started.read_scanlines::<u8>().map_err(corrupt)?;
            started.finish().map_err(corrupt)?;
            Ok(Image { width: w, height: h, channels: Channels::Rgb, pixels: cmyk_to_rgb(&cmyk) })
        }
    }
}

/// Pillow's path for 4-component JPEGs: libjpeg's CMYK output (YCCK already turned into CMYK) is
/// read as Adobe-inverted ("CMYK;I", inverted whatever the APP14 marker says), then converted
/// without colour management: channel = (255-k) - round((255-k)*c/255), in Pillow's fixed point.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let nk = u32::from(px[3]); // inverted k is 255 - (255 - stored k)
        for &stored in &px[..3] {
            let c = 255 - u32::from(stored);
            let t = c * nk + 128;
            let scaled = ((t >> 8) + t) >> 8;
            out.push((nk - scaled) as u8);
        }
    }
    out
}

// ---------------------------------------------------------------- other formats

fn map_image_error(e: ImageError) -> DecodeError {
    match e {
        ImageError::Limits(e) => DecodeError::LimitExceeded(e.to_string()),
        ImageError::Unsupported(_) => DecodeError::Unsupported,
        other => DecodeError::Corrupt(other.to_string()),
    }
}

/// Checks a PNG's chunks up to the first IDAT and returns the bytes to decode: a copy without
/// iCCP chunks when there are any, `None` when the input can be decoded as it is.
///
/// The png crate inflates an ICC profile as soon as it reads the header, bounded only by the
/// allocation limit meant for pixels (hundreds of MB from a few hundred KB of input), and
/// nothing here uses the profile: pixels are never colour-managed. The decoder refuses an
/// iCCP after IDAT, so only the chunks before it are looked at.
///
/// An indexed image whose PLTE length is not a multiple of 3 is invalid (PNG spec 11.2.3) and
/// makes png 0.18 slice past the palette and panic while expanding it; it is refused here.
fn png_precheck(bytes: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
    let mut iccp = Vec::new();
    let mut indexed = false;
    for (kind, chunk) in png_chunks_before_idat(bytes) {
        let declared = &bytes[chunk.start..chunk.start + 4];
        let len = u32::from_be_bytes([declared[0], declared[1], declared[2], declared[3]]) as usize;
        match &kind {
            // Colour type is IHDR's tenth byte; 3 is indexed.
            b"IHDR" => indexed = bytes.get(chunk.start + 8 + 9) == Some(&3),
            b"iCCP" => iccp.push(chunk),
            b"PLTE" if indexed && len % 3 != 0 => {
                return Err(DecodeError::Corrupt(format!("PNG palette of {len} bytes, not a multiple of 3")));
            }
            _ => {}
        }
    }
    if iccp.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut from = 0;
    for range in iccp {
        out.extend_from_slice(&bytes[from..range.start]);
        from = range.end;
    }
    out.extend_from_slice(&bytes[from..]);
    Ok(Some(out))
}

/// The `image` decoders' own allocation limits: the same sides, and no more bytes than a whole
/// decode may take.
fn image_limits(limits: &DecodeLimits) -> image::Limits {
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(limits.max_side);
    lim.max_image_height = Some(limits.max_side);
    lim.max_alloc = Some(limits.max_bytes);
    lim
}

/// A PNG's chunks before its first `IDAT` (or `IEND`): each one's type and byte range (length,
/// type, data and CRC, cut at the end of the input).
fn png_chunks_before_idat(bytes: &[u8]) -> impl Iterator<Item = ([u8; 4], std::ops::Range<usize>)> + '_ {
    let mut pos = 8; // signature
    std::iter::from_fn(move || {
        let header = bytes.get(pos..pos + 8)?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = [header[4], header[5], header[6], header[7]];
        if &kind == b"IDAT" || &kind == b"IEND" {
            return None;
        }
        let start = pos;
        pos = (pos + 8).saturating_add(len).saturating_add(4).min(bytes.len());
        Some((kind, start..pos))
    })
}

fn decode_other(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits, deadline: Instant) -> Result<Image, DecodeError> {
    let stripped = if format == ImageFormat::Png { png_precheck(bytes)? } else { None };
    let bytes = stripped.as_deref().unwrap_or(bytes);
    let decode_still = || -> Result<Image, DecodeError> {
        let mut reader = image::ImageReader::with_format(TimedReader::new(bytes, deadline), format);
        reader.limits(image_limits(limits));
        let decoder = reader.into_decoder().map_err(map_image_error)?;
        let (width, height) = decoder.dimensions();
        check_limits(u64::from(width), u64::from(height), limits)?;
        // Animated GIF/WebP/APNG decoders read only the first (or default) image through
        // `ImageDecoder`; [`animation_frames`] reads the rest.
        from_dynamic(DynamicImage::from_decoder(decoder).map_err(map_image_error)?)
    };
    catch_unwind(AssertUnwindSafe(decode_still))
        .unwrap_or_else(|_| Err(DecodeError::Corrupt("image decoder failed".into())))
        .map_err(|e| failed_by(e, deadline, limits))
}

fn from_dynamic(img: DynamicImage) -> Result<Image, DecodeError> {
    let (width, height) = (img.width(), img.height());
    let gray = |pixels| Ok(Image { width, height, channels: Channels::Gray, pixels });
    let rgb = |pixels| Ok(Image { width, height, channels: Channels::Rgb, pixels });
    match img {
        DynamicImage::ImageLuma8(b) => gray(b.into_raw()),
        DynamicImage::ImageLumaA8(b) => gray(b.into_raw().chunks_exact(2).map(|p| p[0]).collect()),
        DynamicImage::ImageRgb8(b) => rgb(b.into_raw()),
        DynamicImage::ImageRgba8(b) => {
            rgb(b.into_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect())
        }
        // Pillow opens 16-bit greyscale as I;16 and its conversion to 8 bits clips, not scales.
        DynamicImage::ImageLuma16(b) => gray(b.into_raw().into_iter().map(|v| v.min(255) as u8).collect()),
        // Pillow reads 16-bit LA, RGB and RGBA through 8-bit raw modes that keep the high byte.
        DynamicImage::ImageLumaA16(b) => {
            gray(b.into_raw().chunks_exact(2).map(|p| (p[0] >> 8) as u8).collect())
        }
        DynamicImage::ImageRgb16(b) => rgb(b.into_raw().into_iter().map(|v| (v >> 8) as u8).collect()),
        DynamicImage::ImageRgba16(b) => rgb(
            b.into_raw()
                .chunks_exact(4)
                .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
                .collect(),
        ),
        other => rgb(other.to_rgb8().into_raw()),
    }
}

/// An SVG document by its first bytes: `<svg`, or an XML declaration followed by `<svg`, after
/// an optional byte-order mark and white space, in any case. Compared as bytes: most uploads
/// are binary, and converting their head to text first was a fifth of an exact-only worker's
/// CPU.
fn looks_like_svg(head: &[u8]) -> bool {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head).trim_ascii_start();
    let starts = |prefix: &[u8]| head.len() >= prefix.len() && head[..prefix.len()].eq_ignore_ascii_case(prefix);
    starts(b"<svg") || (starts(b"<?xml") && head.windows(4).any(|w| w.eq_ignore_ascii_case(b"<svg")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_png() -> Vec<u8> {
        let img = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// The bytes decide what is screened: images in formats that cannot be decoded, or behind a
    /// few junk bytes, are images (media errors downstream); video containers are videos.
    #[test]
    fn sniffing_finds_images_whatever_they_are_declared() {
        let png = small_png();
        assert_eq!(sniff(&png), Sniffed::Decodable);
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]), Sniffed::Decodable);
        let ico = [0u8, 0, 1, 0, 1, 0, 16, 16, 0, 0, 1, 0, 32, 0, 0x68, 4, 0, 0, 22, 0, 0, 0];
        assert_eq!(sniff(&ico), Sniffed::OtherImage("ICO"));
        let box_of = |brand: &[u8; 4]| [&[0u8, 0, 0, 0x18][..], b"ftyp", brand, &[0, 0, 0, 0], b"mif1"].concat();
        assert_eq!(sniff(&box_of(b"heic")), Sniffed::OtherImage("HEIF/AVIF"));
        assert_eq!(sniff(&box_of(b"avif")), Sniffed::OtherImage("HEIF/AVIF"));
        assert_eq!(sniff(&box_of(b"isom")), Sniffed::Video("ISO media (MP4/QuickTime)"), "MP4 video");
        assert_eq!(sniff(b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00"), Sniffed::OtherImage("JPEG XL"));
        assert_eq!(sniff(b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>"), Sniffed::OtherImage("SVG"));
        assert_eq!(sniff(b"\xEF\xBB\xBF \r\n<SVG width=\"1\"/>"), Sniffed::OtherImage("SVG"), "a BOM, white space, upper case");
        assert_eq!(sniff(b"<?xml version=\"1.0\"?><note/>"), Sniffed::NotImage, "XML that is not SVG");
        let mut junk = vec![0x00];
        junk.extend_from_slice(&png);
        assert_eq!(sniff(&junk), Sniffed::OtherImage("image behind leading junk bytes"));
        assert_eq!(decode(&junk, &DecodeLimits::default()).unwrap_err().kind(), "unsupported_format");
        assert_eq!(sniff(b"plain text, not a picture"), Sniffed::NotImage);
        let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert_eq!(sniff(&noise), Sniffed::NotImage);
    }

    /// Two- and three-byte signatures occur in ordinary text: they count at offset 0 only, and
    /// only with a header that parses; behind junk only long signatures count, and real images
    /// behind junk stay caught.
    #[test]
    fn ordinary_text_is_not_an_image() {
        for text in [
            &b"IBM quarterly results, Q3"[..],
            b"BMW annual report 2026 with many pages",
            b"APP1 notes: the P3 build",
            b"id,P2,P3\n1,2,3\n",
            b"P2 notes from the meeting",
            b"P6 is the sixth item",
            b"{\"BM\": 1, \"P5\": [2, 3]}",
            b"8BPS rule of thumb",
            b"DDS system manual",
            b"qoif, said the bird",
            b"Get free stuff while it lasts and more",
            b"mdat",
        ] {
            assert_eq!(sniff(text), Sniffed::NotImage, "{}", String::from_utf8_lossy(text));
        }
        // Real headers at offset 0 still count.
        let mut bmp = Cursor::new(Vec::new());
        image::RgbImage::new(3, 2).write_to(&mut bmp, ImageFormat::Bmp).unwrap();
        let bmp = bmp.into_inner();
        assert_eq!(sniff(&bmp), Sniffed::Decodable);
        assert_eq!(sniff(b"P6\n3 2\n255\n\x00\x01\x02"), Sniffed::OtherImage("PNM"));
        assert_eq!(sniff(b"P2 # a comment\n# another\n 4\n4 15\n"), Sniffed::OtherImage("PNM"));
        assert_eq!(sniff(b"P7\nWIDTH 4\nHEIGHT 2\nDEPTH 3\nMAXVAL 255\nENDHDR\n"), Sniffed::OtherImage("PNM"));
        assert_eq!(sniff(b"qoif\x00\x00\x00\x04\x00\x00\x00\x04\x04\x00"), Sniffed::OtherImage("QOI"));
        assert_eq!(sniff(b"8BPS\x00\x01\x00\x00\x00\x00"), Sniffed::OtherImage("Photoshop"));
        assert_eq!(sniff(b"#?RGBE\nFORMAT=32-bit_rle_rgbe\n"), Sniffed::OtherImage("Radiance HDR"));
        // Behind junk: the long signatures of real images, never BMP's or PNM's two bytes.
        let png = small_png();
        let mut gif = Cursor::new(Vec::new());
        image::RgbImage::new(2, 2).write_to(&mut gif, ImageFormat::Gif).unwrap();
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'];
        for image in [&png[..], &gif.into_inner(), &jpeg, b"II*\x00\x08\x00\x00\x00", b"RIFF\x10\x00\x00\x00WEBPVP8 "] {
            for skip in [1, 7, 16] {
                let disguised = [&b"junk-bytes-before-it"[..skip], image].concat();
                assert_eq!(sniff(&disguised), Sniffed::OtherImage("image behind leading junk bytes"), "{skip} bytes before {:?}", &image[..4]);
            }
        }
        // A BMP's two letters only with its 40-odd header bytes behind them; PNM's never.
        assert_eq!(sniff(&[&b"x"[..], &bmp].concat()), Sniffed::OtherImage("image behind leading junk bytes"));
        assert_eq!(sniff(b"xP6\n3 2\n255\n\x00\x01\x02"), Sniffed::NotImage);
        assert_eq!(sniff(&[&[b'x'; 17][..], &png].concat()), Sniffed::NotImage, "beyond the window");
    }

    /// A progressive JPEG with thousands of scans is refused before libjpeg spends seconds on
    /// it; real progressive photos are far below the cap.
    #[test]
    fn jpegs_with_too_many_scans_are_refused_up_front() {
        let photo = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pdq/images/jpg_progressive_chelsea.jpg")).unwrap();
        let scans = jpeg_scans(&photo);
        assert!((2..=20).contains(&scans), "{scans} scans");
        assert!(decode(&photo, &DecodeLimits::default()).is_ok());
        // The same header, then thousands of (empty) scans.
        let sos = photo.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut bomb = photo[..sos].to_vec();
        for _ in 0..5_000 {
            bomb.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00]);
        }
        bomb.extend_from_slice(&[0xFF, 0xD9]);
        let err = decode(&bomb, &DecodeLimits::default()).unwrap_err();
        assert_eq!(err.kind(), "too_large");
        assert!(err.to_string().contains("5000 JPEG scans"), "{err}");
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/pdq/images/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// The plan counts what the decode will hold: libjpeg's output (whole MCUs), a progressive
    /// file's coefficients, the RGB result; a GIF's canvas and compositing buffers.
    #[test]
    fn plans_count_the_stored_layout() {
        let limits = DecodeLimits::default();
        for (name, progressive) in [("jpg_444_coffee.jpg", false), ("jpg_progressive_chelsea.jpg", true)] {
            let p = plan(&fixture(name), &limits).unwrap();
            let (w, h) = (u64::from(p.width), u64::from(p.height));
            let output = w.div_ceil(16) * 16 * (h.div_ceil(16) * 16) * 3;
            let coefficients = if progressive { 2 * output } else { 0 };
            assert_eq!(p.bytes, output + coefficients + w * h * 3, "{name}");
            assert!(!p.animated);
            assert!(decode(&fixture(name), &limits).is_ok());
        }
        // 40-odd bytes, a 7000×7000 canvas: under max_pixels, over the byte budget.
        let mut gif = b"GIF89a".to_vec();
        gif.extend([0x58, 0x1b, 0x58, 0x1b, 0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
        gif.extend([0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 0x01, 0, 0x3b]);
        match plan(&gif, &limits) {
            Err(DecodeError::OverBudget { needed, budget }) => {
                let canvas = 7000 * 7000;
                assert_eq!(needed, canvas * 4 * 2 + canvas * 3 + canvas * 12 + canvas * 3);
                assert_eq!(budget, limits.max_bytes);
            }
            other => panic!("expected the budget to refuse it: {other:?}"),
        }
        let small = DecodeLimits { max_bytes: 1 << 40, ..DecodeLimits::default() };
        assert!(plan(&gif, &small).unwrap().animated, "GIFs always go through the animation path");
    }

    /// The fuzz seeds for the animation path are what they claim: an APNG whose default image is
    /// not a frame, an animated WebP, a GIF; each frame composited at the canvas size.
    #[test]
    fn animation_seeds_play_their_frames() {
        let limits = DecodeLimits::default();
        for (name, frames, side) in
            [("apng_hidden_default_2x2.png", 2, 2), ("anim_2frames_1x1.webp", 2, 1), ("anim_3x2.gif", 2, 3)]
        {
            let bytes = std::fs::read(format!("{}/fuzz/seeds/decode/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            assert!(plan(&bytes, &limits).unwrap().animated, "{name}");
            let still = decode(&bytes, &limits).unwrap();
            let mut sizes = Vec::new();
            let count = animation_frames(&bytes, &limits, Instant::now() + limits.deadline, |i, frame| {
                let image = frame.to_image();
                sizes.push((i, image.width, image.height));
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(count, frames, "{name}");
            assert!(sizes.iter().all(|&(_, w, h)| (w, h) == (still.width, still.height) && w == side), "{name}: {sizes:?}");
        }
        // The APNG's frames differ from its default image, which is not part of the animation.
        let apng = std::fs::read(format!("{}/fuzz/seeds/decode/apng_hidden_default_2x2.png", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let still = decode(&apng, &limits).unwrap();
        let mut first = None;
        animation_frames(&apng, &limits, Instant::now() + limits.deadline, |i, frame| {
            if i == 0 {
                first = Some(frame.to_image().pixels);
            }
        })
        .unwrap();
        assert_eq!(&still.pixels[..3], &[10, 245, 5]);
        assert_eq!(&first.unwrap()[..3], &[200, 55, 100]);
    }

    /// A decode past its deadline stops at its next read and says so.
    #[test]
    fn decodes_stop_at_the_deadline() {
        let limits = DecodeLimits::default();
        for bytes in [fixture("jpg_progressive_chelsea.jpg"), fixture("sk_coffee.png")] {
            let err = decode_until(&bytes, &limits, Instant::now()).unwrap_err();
            assert_eq!(err.kind(), "decode_timeout", "{err}");
            assert!(decode_until(&bytes, &limits, Instant::now() + Duration::from_secs(5)).is_ok());
        }
    }

    #[test]
    fn iccp_chunks_are_dropped_before_decoding() {
        let png = small_png();
        assert!(png_precheck(&png).unwrap().is_none());
        // After the IHDR chunk (8-byte signature + 25-byte chunk): two iCCP chunks.
        let iccp = |n: u8| [&[0, 0, 0, 3][..], b"iCCP", &[n, 0, 0], &[0xde, 0xad, 0xbe, 0xef]].concat();
        let with = [&png[..33], &iccp(1), &iccp(2), &png[33..]].concat();
        assert_eq!(png_precheck(&with).unwrap().unwrap(), png);
        let a = decode(&png, &DecodeLimits::default()).unwrap();
        let b = decode(&with, &DecodeLimits::default()).unwrap();
        assert_eq!((a.width, a.height, a.pixels), (b.width, b.height, b.pixels));
        // Lengths running past the end, and every truncation, neither panic nor loop.
        let mut huge = with.clone();
        huge[33..37].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(png_precheck(&huge).unwrap().unwrap(), &with[..33]);
        for end in 0..with.len() {
            let _ = png_precheck(&with[..end]);
        }
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

    /// A 1×1 indexed PNG (pixel = index 0) with the given PLTE and tRNS chunk data.
    fn indexed_png(plte: &[u8], trns: Option<&[u8]>) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8; 4], data: &[u8]| {
            out.extend((data.len() as u32).to_be_bytes());
            out.extend(kind);
            out.extend(data);
            out.extend(crc32(&[&kind[..], data].concat()).to_be_bytes());
        };
        chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 3, 0, 0, 0]);
        chunk(b"PLTE", plte);
        if let Some(t) = trns {
            chunk(b"tRNS", t);
        }
        // zlib, one stored block holding the row: filter 0, index 0.
        chunk(b"IDAT", &[0x78, 0x01, 0x01, 0x02, 0x00, 0xfd, 0xff, 0, 0, 0x00, 0x02, 0x00, 0x01]);
        chunk(b"IEND", &[]);
        out
    }

    #[test]
    fn malformed_palettes_are_refused_not_panicked_on() {
        let ok = decode(&indexed_png(&[10, 20, 30, 40, 50, 60], Some(&[255, 0])), &DecodeLimits::default()).unwrap();
        assert_eq!((ok.width, ok.height, ok.pixels), (1, 1, vec![10, 20, 30]));
        for png in [indexed_png(&[10, 20, 30, 40], None), indexed_png(&[10, 20, 30, 40, 50], Some(&[255]))] {
            match decode(&png, &DecodeLimits::default()) {
                Err(DecodeError::Corrupt(msg)) => assert!(msg.contains("PNG"), "{msg}"),
                other => panic!("expected a corrupt-image error, got {other:?}"),
            }
        }
    }
}
