//! The helper's decoding: one video from a path FFmpeg opens, its info and sampled frames written
//! as records (the binary, `main.rs`, adds its arguments and its sandbox):
//!
//! ```text
//! record = tag: u8, length: u32 LE, payload
//!   'I'  JSON Info: container, codec, width, height, frame_rate, duration_s, declared_frames
//!   'F'  frame_number: u64 LE, timestamp: f64 LE, width: u32 LE, height: u32 LE, RGB24 rows
//!   'E'  JSON End: frames_decoded, error {kind, detail} or null
//! ```
//!
//! Frames are chosen and converted as Meta's vpdq (0.2.5) does, so that the worker's PDQ hashes
//! equal vpdq's: the first video stream; frame rate `avg_frame_rate`, else `r_frame_rate`; frame
//! n (counted over decoded frames from 0) when `n % max(1, int(S × rate)) == 0`; timestamp
//! `float32(n) / float32(rate)`; conversion of the full frame to RGB24 by swscale with `SWS_AREA`.
//! One deliberate difference: vpdq drains the decoder at the end only when the video is stream 0,
//! so with audio first it forgets the last frames a reordering decoder holds; they are decoded
//! here (and, if sampled, written) like any other.

use std::io::{self, Write};

use ffmpeg_next as ffmpeg;
use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use serde::Serialize;

/// Demuxers a hostile file may pick. Playlists and concatenation formats (HLS, DASH, concat,
/// image sequences) are left out: they name other files or URLs to open.
const DEMUXERS: &str = "mov,matroska,avi,mpegts,flv,ogg,mpeg,ivf,asf,m4v,h264,hevc,obu";

#[derive(Debug, Clone)]
pub struct Limits {
    pub seconds_per_hash: f64,
    pub max_pixels: u64,
    pub max_duration_s: f64,
    pub max_frames: u64,
    pub threads: usize,
}

#[derive(Serialize)]
struct Info {
    container: String,
    codec: String,
    width: u32,
    height: u32,
    frame_rate: f64,
    duration_s: Option<f64>,
    declared_frames: Option<u64>,
}

#[derive(Serialize)]
pub struct End {
    pub frames_decoded: u64,
    pub error: Option<Failure>,
}

/// Why the video was not decoded to its end. `kind` is the worker's `media_error` label.
#[derive(Serialize, Debug)]
pub struct Failure {
    pub kind: &'static str,
    pub detail: String,
}

impl Failure {
    fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }
}

pub fn write_record(out: &mut impl Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    write_header(out, tag, payload.len())?;
    out.write_all(payload)
}

fn write_header(out: &mut impl Write, tag: u8, len: usize) -> io::Result<()> {
    let len = u32::try_from(len).map_err(|_| io::Error::other("record over 4 GiB"))?;
    out.write_all(&[tag])?;
    out.write_all(&len.to_le_bytes())
}

/// Frames decoded, or as many and why decoding stopped.
pub type Decoded = Result<u64, (u64, Failure)>;

/// Decodes the video at `input` (a path FFmpeg opens: `/proc/self/fd/0` in the helper), writing
/// its info and sampled frames to `out`; the end record is the caller's to write.
pub fn decode(limits: &Limits, input: &str, out: &mut impl Write) -> Decoded {
    let failed = |kind, detail: String| Err((0, Failure::new(kind, detail)));
    if let Err(e) = ffmpeg::init() {
        return failed("decode", format!("FFmpeg did not initialise: {e}"));
    }
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Quiet);
    let mut options = ffmpeg::Dictionary::new();
    options.set("format_whitelist", DEMUXERS);
    options.set("protocol_whitelist", "file");
    let mut input = match open(input, options, limits) {
        Ok(input) => input,
        Err(failure) => return Err((0, failure)),
    };
    let Some(stream) = input.streams().find(|s| s.parameters().medium() == ffmpeg::media::Type::Video) else {
        return failed("no_video_stream", "the file holds no video stream".into());
    };
    let stream_index = stream.index();
    let rate = match frame_rate(stream.avg_frame_rate(), stream.rate()) {
        Some(rate) => rate,
        None => return failed("decode", "the video stream declares no frame rate".into()),
    };
    let mut context = match ffmpeg::codec::context::Context::from_parameters(stream.parameters()) {
        Ok(context) => context,
        Err(e) => return failed("decode", format!("codec parameters: {e}")),
    };
    // Frame threads decode several frames at once; the frames come out in the same order with
    // the same pixels, so the hashes are vpdq's, sooner.
    context.set_threading(ffmpeg::codec::threading::Config {
        kind: ffmpeg::codec::threading::Type::Frame,
        count: limits.threads.max(1),
        ..Default::default()
    });
    let mut decoder = match context.decoder().video() {
        Ok(decoder) => decoder,
        Err(ffmpeg::Error::DecoderNotFound) => return failed("unsupported_format", "no decoder for this video codec".into()),
        // The decoder exists but would not open (its parameters, or memory).
        Err(e) => return failed("decode", format!("the video decoder did not open: {e}")),
    };
    let (width, height) = (decoder.width(), decoder.height());
    let duration_s = duration_of(&input, &stream);
    let declared_frames = u64::try_from(stream.frames()).ok().filter(|&n| n > 0);
    // What the video alone should hold: its stream's frame count, else the container's duration
    // when nothing but the video is in it (an audio track may run longer).
    let video_duration = (input.nb_streams() == 1).then_some(duration_s).flatten();
    let info = Info {
        container: input.format().name().to_string(),
        codec: decoder.codec().map(|c| c.name().to_string()).unwrap_or_default(),
        width,
        height,
        frame_rate: rate.0 as f64 / rate.1 as f64,
        duration_s,
        declared_frames,
    };
    if let Err(e) = write_record(out, b'I', &serde_json::to_vec(&info).expect("plain data")) {
        return failed("decode", format!("writing to the worker: {e}"));
    }
    if width == 0 || height == 0 {
        return failed("decode", "the video stream declares no frame size".into());
    }
    if let Some(over) = over_limits(limits, width, height, duration_s, declared_frames, info.frame_rate) {
        return Err((0, over));
    }
    let every = sampling_interval(limits.seconds_per_hash, info.frame_rate);
    let mut frames = FrameWriter { every, rate: info.frame_rate as f32, limits, decoded: 0, corrupt: 0, scaler: None, out };
    let mut packet = ffmpeg::Packet::empty();
    let mut read_error = None;
    loop {
        match packet.read(&mut input) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(e) => {
                read_error = Some(Failure::new("decode", format!("the container is damaged after {} frames: {e}", frames.decoded)));
                break;
            }
        }
        if packet.stream() != stream_index {
            continue;
        }
        if let Err(e) = decoder.send_packet(&packet) {
            return Err((frames.decoded, Failure::new("decode", format!("the video stream is damaged after {} frames: {e}", frames.decoded))));
        }
        frames.receive(&mut decoder)?;
    }
    if decoder.send_eof().is_ok() {
        frames.receive(&mut decoder)?;
    }
    if let Some(failure) = read_error {
        return Err((frames.decoded, failure));
    }
    if frames.decoded == 0 {
        return Err((0, Failure::new("decode", "the video stream holds no decodable frame")));
    }
    // Cut short, or damaged so that the demuxer skipped some: the rest was never screened.
    if let Some(why) = missing_frames(frames.decoded, declared_frames, video_duration, info.frame_rate) {
        return Err((frames.decoded, Failure::new("decode", why)));
    }
    // The decoder concealed damage in these frames: what they show is partly made up.
    if frames.corrupt > 0 {
        return Err((frames.decoded, Failure::new("decode", format!("{} of {} frames are damaged", frames.corrupt, frames.decoded))));
    }
    Ok(frames.decoded)
}

/// Opens the container with the demuxer and protocol whitelists, and refuses a video stream whose
/// declared frame size is over the limit before FFmpeg probes it (probing opens the decoder,
/// which would allocate for that size, or refuse it and forget what was declared).
fn open(path: &str, options: ffmpeg::Dictionary, limits: &Limits) -> Result<ffmpeg::format::context::Input, Failure> {
    use ffmpeg::ffi;
    let refused = |e: i32| Failure::new("unsupported_format", format!("not a video this service decodes: {}", ffmpeg::Error::from(e)));
    let path = std::ffi::CString::new(path).map_err(|_| Failure::new("decode", "the input path holds a NUL"))?;
    // SAFETY: the FFmpeg calls below follow `avformat_open_input`'s contract: `context` starts
    // null, is only read after a successful open, and is closed on every path that does not
    // hand it to `Input::wrap`, which owns (and closes) it from then on.
    unsafe {
        let mut context: *mut ffi::AVFormatContext = std::ptr::null_mut();
        let mut dictionary = options.disown();
        let opened = ffi::avformat_open_input(&mut context, path.as_ptr(), std::ptr::null_mut(), &mut dictionary);
        drop(ffmpeg::Dictionary::own(dictionary));
        if opened < 0 {
            return Err(refused(opened));
        }
        // A file with no stream at all has a null array (a slice of it would be undefined).
        let streams: &[*mut ffi::AVStream] = match (*context).nb_streams {
            0 => &[],
            n if (*context).streams.is_null() => {
                ffi::avformat_close_input(&mut context);
                return Err(Failure::new("decode", format!("the container lists {n} streams and none")));
            }
            n => std::slice::from_raw_parts((*context).streams, n as usize),
        };
        for &stream in streams {
            let parameters = (*stream).codecpar;
            if (*parameters).codec_type != ffi::AVMediaType::AVMEDIA_TYPE_VIDEO {
                continue;
            }
            let (width, height) = ((*parameters).width.max(0) as u64, (*parameters).height.max(0) as u64);
            if width * height > limits.max_pixels {
                ffi::avformat_close_input(&mut context);
                return Err(Failure::new(
                    "too_large",
                    format!("frames of {width}x{height} are over video.max_pixels ({})", limits.max_pixels),
                ));
            }
            break;
        }
        let probed = ffi::avformat_find_stream_info(context, std::ptr::null_mut());
        if probed < 0 {
            ffi::avformat_close_input(&mut context);
            return Err(refused(probed));
        }
        Ok(ffmpeg::format::context::Input::wrap(context))
    }
}

/// When fewer frames were decoded than the container declares (its frame count, or its duration
/// at the frame rate, with a little slack for rounding): why.
fn missing_frames(decoded: u64, declared_frames: Option<u64>, duration_s: Option<f64>, rate: f64) -> Option<String> {
    if let Some(declared) = declared_frames {
        return (decoded + 2 < declared).then(|| format!("only {decoded} of the {declared} frames the container declares were decoded"));
    }
    let expected = duration_s? * rate;
    (expected.is_finite() && (decoded as f64) < expected * 0.9 - 2.0)
        .then(|| format!("only {decoded} frames were decoded of about {expected:.0} the container's duration implies"))
}

/// `avg_frame_rate`, else `r_frame_rate` (vpdq's choice), as numerator and denominator.
fn frame_rate(average: ffmpeg::Rational, real: ffmpeg::Rational) -> Option<(i32, i32)> {
    let usable = |r: ffmpeg::Rational| r.numerator() != 0 && r.denominator() != 0;
    let rate = if usable(average) { average } else { real };
    (usable(rate) && (rate.numerator() > 0) == (rate.denominator() > 0)).then(|| (rate.numerator(), rate.denominator()))
}

/// Seconds, from the container or else the stream; `None` when neither says.
fn duration_of(input: &ffmpeg::format::context::Input, stream: &ffmpeg::format::stream::Stream) -> Option<f64> {
    let container = input.duration();
    if container > 0 {
        return Some(container as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE));
    }
    let tb = stream.time_base();
    (stream.duration() > 0 && tb.denominator() != 0)
        .then(|| stream.duration() as f64 * f64::from(tb.numerator()) / f64::from(tb.denominator()))
}

/// What the container declares, against the limits: over any of them, nothing is decoded.
fn over_limits(
    limits: &Limits,
    width: u32,
    height: u32,
    duration_s: Option<f64>,
    declared_frames: Option<u64>,
    rate: f64,
) -> Option<Failure> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Some(Failure::new("too_large", format!("frames of {width}x{height} are over video.max_pixels ({})", limits.max_pixels)));
    }
    if let Some(d) = duration_s.filter(|&d| d > limits.max_duration_s) {
        return Some(Failure::new("too_large", format!("a duration of {d:.1} s is over video.max_duration_s ({})", limits.max_duration_s)));
    }
    let frames = declared_frames.unwrap_or(0).max(duration_s.map_or(0, |d| (d * rate).ceil().min(u64::MAX as f64) as u64));
    if frames > limits.max_frames {
        return Some(Failure::new("too_large", format!("{frames} frames are over video.max_frames ({})", limits.max_frames)));
    }
    None
}

/// vpdq's rule: every `int(S × rate)`-th frame, at least every frame (`S = 0` is every frame).
fn sampling_interval(seconds_per_hash: f64, rate: f64) -> u64 {
    let every = (seconds_per_hash * rate) as i64; // truncation, as C++'s static_cast<int>
    every.max(1) as u64
}

/// Receives decoded frames, counts them, and converts and writes the sampled ones.
struct FrameWriter<'a, W: Write> {
    every: u64,
    rate: f32,
    limits: &'a Limits,
    decoded: u64,
    /// Frames the decoder marked corrupt (damage it concealed).
    corrupt: u64,
    /// Created for the first sampled frame, again when the frame size or format changes.
    scaler: Option<(scaling::Context, (Pixel, u32, u32))>,
    out: &'a mut W,
}

impl<W: Write> FrameWriter<'_, W> {
    fn receive(&mut self, decoder: &mut ffmpeg::decoder::Video) -> Result<(), (u64, Failure)> {
        let mut frame = ffmpeg::frame::Video::empty();
        loop {
            match decoder.receive_frame(&mut frame) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
                Err(e) => return Err(self.fail("decode", format!("the video stream is damaged after {} frames: {e}", self.decoded))),
            }
            let number = self.decoded;
            self.decoded += 1;
            // SAFETY: reading a field of the frame the decoder just filled.
            let concealed = unsafe { (*frame.as_ptr()).decode_error_flags } != 0;
            self.corrupt += u64::from(frame.is_corrupt() || concealed);
            if self.decoded > self.limits.max_frames {
                return Err(self.fail("too_large", format!("more than video.max_frames ({}) frames", self.limits.max_frames)));
            }
            if f64::from(number as f32 / self.rate) > self.limits.max_duration_s {
                return Err(self.fail("too_large", format!("frames beyond video.max_duration_s ({} s)", self.limits.max_duration_s)));
            }
            if number % self.every == 0 {
                self.write(&frame, number)?;
            }
        }
    }

    fn fail(&self, kind: &'static str, detail: String) -> (u64, Failure) {
        (self.decoded, Failure::new(kind, detail))
    }

    fn write(&mut self, frame: &ffmpeg::frame::Video, number: u64) -> Result<(), (u64, Failure)> {
        let (width, height, format) = (frame.width(), frame.height(), frame.format());
        if u64::from(width) * u64::from(height) > self.limits.max_pixels {
            return Err(self.fail("too_large", format!("a frame of {width}x{height} is over video.max_pixels")));
        }
        if width < 1 || height < 1 {
            return Err(self.fail("decode", "a frame without pixels".into()));
        }
        let shape = (format, width, height);
        if self.scaler.as_ref().is_none_or(|(_, s)| *s != shape) {
            match scaling::Context::get(format, width, height, Pixel::RGB24, width, height, scaling::Flags::AREA) {
                Ok(scaler) => self.scaler = Some((scaler, shape)),
                Err(e) => return Err(self.fail("decode", format!("no conversion from {format:?} to RGB: {e}"))),
            }
        }
        let (scaler, _) = self.scaler.as_mut().expect("set above");
        let mut rgb = ffmpeg::frame::Video::empty();
        if let Err(e) = scaler.run(frame, &mut rgb) {
            return Err(self.fail("decode", format!("converting frame {number} to RGB: {e}")));
        }
        let timestamp = f64::from(number as f32 / self.rate);
        let row = width as usize * 3;
        let written = (|| {
            write_header(self.out, b'F', 24 + row * height as usize)?;
            self.out.write_all(&number.to_le_bytes())?;
            self.out.write_all(&timestamp.to_le_bytes())?;
            self.out.write_all(&width.to_le_bytes())?;
            self.out.write_all(&height.to_le_bytes())?;
            let (data, stride) = (rgb.data(0), rgb.stride(0));
            for y in 0..height as usize {
                self.out.write_all(&data[y * stride..y * stride + row])?;
            }
            Ok::<(), io::Error>(())
        })();
        written.map_err(|e| self.fail("decode", format!("writing to the worker: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_vpdq_truncation() {
        assert_eq!(sampling_interval(1.0, 30000.0 / 1001.0), 29);
        assert_eq!(sampling_interval(0.5, 30000.0 / 1001.0), 14);
        assert_eq!(sampling_interval(1.0, 25.0), 25);
        assert_eq!(sampling_interval(0.0, 25.0), 1);
        assert_eq!(sampling_interval(0.01, 25.0), 1);
    }

    #[test]
    fn frame_rate_falls_back_to_the_real_rate() {
        let r = ffmpeg::Rational::new;
        assert_eq!(frame_rate(r(30, 1), r(60, 1)), Some((30, 1)));
        assert_eq!(frame_rate(r(0, 1), r(25, 1)), Some((25, 1)));
        assert_eq!(frame_rate(r(0, 0), r(0, 1)), None);
        assert_eq!(frame_rate(r(-1, 1), r(0, 1)), None);
    }

    #[test]
    fn a_video_cut_short_is_missing_frames() {
        assert_eq!(missing_frames(60, Some(60), Some(2.0), 30.0), None);
        assert_eq!(missing_frames(58, Some(60), None, 30.0), None, "a little slack");
        assert!(missing_frames(22, Some(60), None, 30.0).unwrap().contains("22 of the 60"));
        assert!(missing_frames(25, None, Some(2.0), 30.0).is_some(), "from the duration");
        assert_eq!(missing_frames(57, None, Some(2.0), 30.0), None);
        assert_eq!(missing_frames(10, None, None, 30.0), None, "nothing declared, nothing to miss");
    }

    #[test]
    fn declared_limits_refuse_before_decoding() {
        let limits = Limits { seconds_per_hash: 1.0, max_pixels: 1000, max_duration_s: 10.0, max_frames: 100, threads: 1 };
        assert!(over_limits(&limits, 30000, 30000, None, None, 30.0).is_some());
        assert!(over_limits(&limits, 10, 10, Some(86400.0), None, 30.0).is_some());
        assert!(over_limits(&limits, 10, 10, None, Some(1 << 40), 30.0).is_some());
        assert!(over_limits(&limits, 10, 10, Some(5.0), Some(50), 10.0).is_none());
    }
}
