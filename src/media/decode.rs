//! Decoding media bytes into 8-bit pixels, once per event, under size limits.
//!
//! JPEG goes through libjpeg-turbo code (the `mozjpeg` crate) with libjpeg's defaults (ISLOW IDCT,
//! fancy upsampling), because both references decode with libjpeg-turbo: CImg for PDQ and Pillow
//! for the classifier. A pure-Rust JPEG decoder differs from them by a few levels per pixel.
//! Every other format goes through the `image` crate. Conversions follow Pillow's rules where
//! the two references could disagree (CMYK, 16-bit), and never apply EXIF orientation, gamma or
//! alpha compositing: the hashes and scores of the references are computed on the stored samples.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat};

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
    /// A decoder refused an allocation or a size the header did not show (a frame larger than
    /// the canvas, a header over the decoder's own limits): no trustworthy dimensions to report.
    #[error("image exceeds the decode limits: {0}")]
    LimitExceeded(String),
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

impl DecodeError {
    /// Stable label for metrics and `media_error` reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Unsupported => "unsupported_format",
            DecodeError::TooLarge { .. } | DecodeError::LimitExceeded(_) => "too_large",
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

/// True when the bytes start like an image format this module decodes.
pub fn looks_like_image(bytes: &[u8]) -> bool {
    is_jpeg(bytes) || other_format(bytes).is_some()
}

/// What the bytes are, whatever the upload declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A format [`decode`] takes.
    Decodable,
    /// An image this service cannot decode (the name says which): it cannot be screened.
    OtherImage(&'static str),
    /// Nothing says image.
    NotImage,
}

/// How far into the bytes an image signature still counts: a few junk bytes in front of a
/// picture break decoders, not every viewer.
const DISGUISE_WINDOW: usize = 16;

/// Looks at the first bytes: decodable image, another image format, or not an image at all.
/// Images behind a few junk bytes count as images (that cannot be decoded as they are).
pub fn sniff(bytes: &[u8]) -> Sniffed {
    if looks_like_image(bytes) {
        return Sniffed::Decodable;
    }
    if let Some(name) = other_image(bytes) {
        return Sniffed::OtherImage(name);
    }
    let disguised = (1..=DISGUISE_WINDOW.min(bytes.len().saturating_sub(1)))
        .any(|skip| looks_like_image(&bytes[skip..]) || other_image(&bytes[skip..]).is_some());
    if disguised {
        return Sniffed::OtherImage("image behind leading junk bytes");
    }
    Sniffed::NotImage
}

/// Image formats recognised by their signature but not decoded here.
fn other_image(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    // ISO base media files name their kind in the `ftyp` box: HEIF/HEIC and AVIF are images,
    // MP4 and QuickTime brands are video.
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        let brand = &bytes[8..12];
        let image_brands: [&[u8; 4]; 10] =
            [b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"];
        return image_brands.iter().any(|b| brand == *b).then_some("HEIF/AVIF");
    }
    if starts(&[0xFF, 0x0A]) || starts(b"\x00\x00\x00\x0cJXL \r\n\x87\n") {
        return Some("JPEG XL");
    }
    if starts(b"\x00\x00\x00\x0cjP  \r\n\x87\n") || starts(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return Some("JPEG 2000");
    }
    if starts(b"8BPS") {
        return Some("Photoshop");
    }
    let head = &bytes[..bytes.len().min(1024)];
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    if text.trim_start().starts_with("<svg") || (text.trim_start().starts_with("<?xml") && text.contains("<svg")) {
        return Some("SVG");
    }
    match image::guess_format(bytes).ok()? {
        ImageFormat::Ico => Some("ICO"),
        ImageFormat::Pnm => Some("PNM"),
        ImageFormat::Dds => Some("DDS"),
        ImageFormat::Hdr => Some("Radiance HDR"),
        ImageFormat::OpenExr => Some("OpenEXR"),
        ImageFormat::Farbfeld => Some("farbfeld"),
        ImageFormat::Qoi => Some("QOI"),
        // (TGA has no signature to recognise; AVIF is caught by its `ftyp` brand above.)
        _ => None,
    }
}

pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Image, DecodeError> {
    if is_jpeg(bytes) {
        return decode_jpeg(bytes, limits);
    }
    match other_format(bytes) {
        Some(format) => decode_other(bytes, format, limits),
        None => Err(DecodeError::Unsupported),
    }
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

fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<Image, DecodeError> {
    let scans = jpeg_scans(bytes);
    if scans > MAX_JPEG_SCANS {
        return Err(DecodeError::LimitExceeded(format!("{scans} JPEG scans, over the limit of {MAX_JPEG_SCANS}")));
    }
    match catch_unwind(AssertUnwindSafe(|| decode_jpeg_inner(bytes, limits))) {
        Ok(result) => result,
        Err(payload) => {
            let msg = if let Some(f) = payload.downcast_ref::<jpeg_errors::Fatal>() {
                f.0.clone()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_string()
            } else {
                "JPEG decoder failed".to_string()
            };
            Err(DecodeError::Corrupt(msg))
        }
    }
}

fn decode_jpeg_inner(bytes: &[u8], limits: &DecodeLimits) -> Result<Image, DecodeError> {
    let corrupt = |e: std::io::Error| DecodeError::Corrupt(e.to_string());
    let dec = mozjpeg::Decompress::with_err(jpeg_errors::manager()).from_mem(bytes).map_err(corrupt)?;
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
    let mut pos = 8; // signature
    let mut iccp = Vec::new();
    let mut indexed = false;
    while let Some(header) = bytes.get(pos..pos + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = &header[4..8];
        let data_start = pos + 8;
        match kind {
            b"IDAT" | b"IEND" => break,
            // Colour type is IHDR's tenth byte; 3 is indexed.
            b"IHDR" => indexed = bytes.get(data_start + 9) == Some(&3),
            b"iCCP" => iccp.push(pos..data_start.saturating_add(len).saturating_add(4).min(bytes.len())),
            b"PLTE" if indexed && len % 3 != 0 => {
                return Err(DecodeError::Corrupt(format!("PNG palette of {len} bytes, not a multiple of 3")));
            }
            _ => {}
        }
        // length, type, data, CRC
        pos = data_start.saturating_add(len).saturating_add(4).min(bytes.len());
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

fn decode_other(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits) -> Result<Image, DecodeError> {
    let stripped = if format == ImageFormat::Png { png_precheck(bytes)? } else { None };
    let bytes = stripped.as_deref().unwrap_or(bytes);
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(limits.max_side);
    lim.max_image_height = Some(limits.max_side);
    // Room for the widest sample layout (16-bit RGBA) of the largest allowed image.
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(1 << 20));
    reader.limits(lim);
    let decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    check_limits(u64::from(width), u64::from(height), limits)?;
    // Animated GIF/WebP/TIFF decoders read only the first frame through `ImageDecoder`.
    let img = catch_unwind(AssertUnwindSafe(|| DynamicImage::from_decoder(decoder)))
        .map_err(|_| DecodeError::Corrupt("image decoder failed".into()))?
        .map_err(map_image_error)?;
    from_dynamic(img)
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
    /// few junk bytes, are images (media errors downstream), video containers are not.
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
        assert_eq!(sniff(&box_of(b"isom")), Sniffed::NotImage, "MP4 video");
        assert_eq!(sniff(b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00"), Sniffed::OtherImage("JPEG XL"));
        assert_eq!(sniff(b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>"), Sniffed::OtherImage("SVG"));
        let mut junk = vec![0x00];
        junk.extend_from_slice(&png);
        assert_eq!(sniff(&junk), Sniffed::OtherImage("image behind leading junk bytes"));
        assert_eq!(decode(&junk, &DecodeLimits::default()).unwrap_err().kind(), "unsupported_format");
        assert_eq!(sniff(b"plain text, not a picture"), Sniffed::NotImage);
        let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert_eq!(sniff(&noise), Sniffed::NotImage);
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
