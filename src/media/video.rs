//! Video decoding, outside this process: the `perisai-video` helper (a binary of its own that
//! links FFmpeg) decodes one upload under limits the worker sets, and hands back the frames that
//! vPDQ samples, as RGB. This module starts it, feeds it, reads it and judges how it ended.
//!
//! Why a process: demuxers and decoders parse hostile bytes, and a crash, a hang or a runaway
//! allocation there must cost one upload a `media_error`, never the worker. The helper gets:
//! - the media on its standard input as a sealed memory file (never a file on disk);
//! - address-space, CPU-time, open-file and file-size limits, set here between fork and exec, so
//!   they hold before any of its code runs; it dies with the worker (parent-death signal);
//! - its own seccomp filter (no sockets, no exec), entered before it reads a byte;
//! - a deadline, after which it is killed (`decode_timeout`).
//!
//! The record format it writes is documented in `video-helper/src/lib.rs`.

use std::io::{Seek, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;

use super::decode::{Channels, Image};

/// How the helper is run: where it is, what it may decode, and what it may use.
#[derive(Debug, Clone)]
pub struct VideoLimits {
    pub helper: PathBuf,
    /// vPDQ's sampling: one frame every `seconds_per_hash` (0: every frame).
    pub seconds_per_hash: f64,
    pub max_pixels: u64,
    pub max_duration_s: f64,
    pub max_frames: u64,
    /// The helper's decoder threads.
    pub threads: usize,
    /// The helper's address space (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// From the start of the helper to its end record; it is killed past this.
    pub deadline: Duration,
}

/// What the container says about the video (the helper's `I` record).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VideoInfo {
    pub container: String,
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub frame_rate: f64,
    pub duration_s: Option<f64>,
    pub declared_frames: Option<u64>,
}

/// One sampled frame: vPDQ's frame number and timestamp, and its pixels.
#[derive(Debug)]
pub struct Frame {
    pub number: u64,
    pub timestamp: f64,
    pub image: Image,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VideoError {
    #[error("the video helper could not be started ({helper}): {detail}")]
    Unavailable { helper: String, detail: String },
    #[error("the video decoder crashed ({0})")]
    Crashed(String),
    #[error("decoding the video did not finish within {0:?} (video.deadline_ms)")]
    Timeout(Duration),
    /// The helper ended the video itself: over a limit, damaged, not a video it decodes.
    #[error("{detail}")]
    Refused { kind: String, detail: String },
}

impl VideoError {
    /// The helper exit cause it counts as (`perisai_video_helper_exits_total`).
    pub fn cause(&self) -> &'static str {
        match self {
            VideoError::Unavailable { .. } => "unavailable",
            VideoError::Crashed(_) => "crashed",
            VideoError::Timeout(_) => "timeout",
            VideoError::Refused { .. } => "refused",
        }
    }

    /// Stable label for metrics and `media_error` reasons.
    pub fn kind(&self) -> &str {
        match self {
            VideoError::Unavailable { .. } => "video_unavailable",
            VideoError::Crashed(_) => "decode_crashed",
            VideoError::Timeout(_) => "decode_timeout",
            VideoError::Refused { kind, .. } => kind,
        }
    }
}

/// How one video's decoding ended: what the container said, how many frames were decoded, and
/// the error that cut it short, if any (frames already handed over still count).
#[derive(Debug)]
pub struct Decoded {
    pub info: Option<VideoInfo>,
    pub frames_decoded: u64,
    pub error: Option<VideoError>,
    /// How the helper process ended (`None`: killed at the deadline or never started).
    pub exit: Option<ExitStatus>,
}

#[derive(Deserialize)]
struct End {
    frames_decoded: u64,
    error: Option<Refusal>,
}

#[derive(Deserialize)]
struct Refusal {
    kind: String,
    detail: String,
}

/// Container signatures at offset 0 (or 4, for ISO media's `ftyp`): the bytes say video.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| bytes.get(offset..offset + magic.len()) == Some(magic);
    // An ISO box's name sits at offset 4 behind its size; text such as "Get free…" has a name
    // there too, so the size must be one a box has: not four characters of text.
    let size = bytes.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let size_is_text = bytes.get(..4).is_some_and(|b| b.iter().all(|c| (0x09..=0x7E).contains(c)));
    if at(4, b"ftyp") && (12..=1024).contains(&size) && size % 4 == 0 {
        return Some("ISO media (MP4/QuickTime)");
    }
    // QuickTime files without `ftyp` start with another top-level atom (size 0: to the end of
    // the file, 1: a 64-bit size follows).
    if [b"moov", b"mdat", b"wide", b"free"].iter().any(|atom| at(4, *atom))
        && bytes.len() >= 16
        && (size <= 1 || size >= 8)
        && !size_is_text
    {
        return Some("QuickTime");
    }
    if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some("Matroska/WebM");
    }
    if at(0, b"RIFF") && at(8, b"AVI ") {
        return Some("AVI");
    }
    if at(0, b"FLV\x01") {
        return Some("FLV");
    }
    if at(0, b"DKIF") {
        return Some("IVF");
    }
    if at(0, &[0x00, 0x00, 0x01, 0xBA]) {
        return Some("MPEG program stream");
    }
    if at(0, &[0x30, 0x26, 0xB2, 0x75, 0x8E, 0x66, 0xCF, 0x11]) {
        return Some("ASF/WMV");
    }
    // A transport stream is a run of 188-byte packets, each starting with 0x47.
    if bytes.len() >= 188 * 3 && (0..3).all(|i| bytes[i * 188] == 0x47) {
        return Some("MPEG transport stream");
    }
    if at(0, b"OggS") {
        // Ogg holds audio more often than video; the helper finds whether a video stream is there.
        return Some("Ogg");
    }
    None
}

/// Frames read ahead of the one being hashed: the helper keeps decoding while the worker hashes.
pub const READ_AHEAD: usize = 2;

/// The helper's error kind for a file with no video stream (audio, say): not a media error, the
/// upload is exact-hashed only, like other non-image media.
pub const NO_VIDEO_STREAM: &str = "no_video_stream";

/// One video being decoded by its helper: [`VideoRun::next_frame`] until `None`, then
/// [`VideoRun::finish`]. Dropping it kills the helper.
pub struct VideoRun {
    updates: tokio::sync::mpsc::Receiver<Update>,
    reader: tokio::task::JoinHandle<Decoded>,
    deadline: Instant,
    info: Option<VideoInfo>,
    timed_out: bool,
    limits: VideoLimits,
}

/// What the reader task passes on, in the helper's order.
enum Update {
    Info(VideoInfo),
    Frame(Frame),
}

impl VideoRun {
    /// Starts the helper on `bytes`. Never fails: a helper that cannot start is the error
    /// [`VideoRun::finish`] reports.
    pub fn start(bytes: &[u8], limits: &VideoLimits) -> Self {
        let deadline = Instant::now() + limits.deadline;
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let reader = match spawn(bytes, limits) {
            Ok(child) => tokio::spawn(read_all(child, tx, limits.clone(), deadline)),
            Err(e) => {
                let error = VideoError::Unavailable { helper: limits.helper.display().to_string(), detail: e.to_string() };
                tokio::spawn(std::future::ready(Decoded { info: None, frames_decoded: 0, error: Some(error), exit: None }))
            }
        };
        Self { updates: rx, reader, deadline, info: None, timed_out: false, limits: limits.clone() }
    }

    /// The next sampled frame, or `None` at the end, on an error or at the deadline (checked
    /// before frames already read are handed out: a worker slower than its helper is still
    /// bounded by the deadline).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if Instant::now() >= self.deadline {
                self.timed_out = true;
                return None;
            }
            match tokio::time::timeout_at(self.deadline, self.updates.recv()).await {
                Ok(Some(Update::Info(info))) => self.info = Some(info),
                Ok(Some(Update::Frame(frame))) => return Some(frame),
                Ok(None) => return None,
                Err(_) => {
                    self.timed_out = true;
                    return None;
                }
            }
        }
    }

    /// How the decoding ended (waits for the helper, at most until the deadline).
    pub async fn finish(mut self) -> Decoded {
        self.updates.close();
        if !self.timed_out {
            if let Ok(Ok(mut decoded)) = tokio::time::timeout_at(self.deadline, &mut self.reader).await {
                while let Ok(update) = self.updates.try_recv() {
                    if let Update::Info(info) = update {
                        self.info = Some(info);
                    }
                }
                decoded.info = self.info.take();
                return decoded;
            }
        }
        // Aborting the reader drops the child, which kills the helper (`kill_on_drop`).
        self.reader.abort();
        Decoded { info: self.info.take(), frames_decoded: 0, error: Some(VideoError::Timeout(self.limits.deadline)), exit: None }
    }
}

/// Reads the helper's records until its end record, passing them on; then waits for it. At the
/// deadline (reading, or waiting for the caller to take a frame) the helper is killed.
async fn read_all(mut child: tokio::process::Child, updates: tokio::sync::mpsc::Sender<Update>, limits: VideoLimits, deadline: Instant) -> Decoded {
    let mut decoded = Decoded { info: None, frames_decoded: 0, error: None, exit: None };
    let mut stdout = child.stdout.take().expect("piped");
    let mut records = 0usize;
    let read = async {
        loop {
            let record = read_record(&mut stdout, &limits).await?;
            records += 1;
            let update = match record {
                Record::Info(info) => Update::Info(info),
                Record::Frame(frame) => Update::Frame(frame),
                Record::End(end) => return Ok::<_, String>(Some(end)),
            };
            // The caller stopped listening: it wants no more frames.
            if updates.send(update).await.is_err() {
                return Ok(None);
            }
        }
    };
    let Ok(outcome) = tokio::time::timeout_at(deadline, read).await else {
        let _ = child.kill().await;
        decoded.error = Some(VideoError::Timeout(limits.deadline));
        return decoded;
    };
    drop(stdout);
    let exit = tokio::time::timeout_at(deadline, child.wait()).await.ok().and_then(Result::ok);
    if exit.is_none() {
        let _ = child.kill().await;
    }
    decoded.exit = exit;
    match outcome {
        Ok(Some(end)) => {
            decoded.frames_decoded = end.frames_decoded;
            decoded.error = end.error.map(|r| VideoError::Refused { kind: r.kind, detail: r.detail });
        }
        Ok(None) => {}
        // Status 127 before a word: the dynamic loader could not start it (a missing library,
        // or an address-space limit too small to map FFmpeg's).
        Err(_) if records == 0 && exit.and_then(|s| s.code()) == Some(127) => {
            decoded.error = Some(VideoError::Unavailable {
                helper: limits.helper.display().to_string(),
                detail: "it exited with status 127 before writing anything: its libraries did not load (is video.helper_memory_bytes large enough?)".into(),
            });
        }
        // The stream broke off: the helper died (a crash, or a limit's signal) or wrote nonsense.
        Err(broken) => decoded.error = Some(VideoError::Crashed(describe_exit(exit, &broken))),
    }
    decoded
}

const SIGXCPU: i32 = 24;

fn describe_exit(exit: Option<ExitStatus>, broken: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    match exit.and_then(|s| s.signal()) {
        Some(SIGXCPU) => "killed by its CPU-time limit".into(),
        Some(signal) => format!("killed by signal {signal}"),
        None => match exit.and_then(|s| s.code()) {
            Some(code) => format!("exited with status {code}: {broken}"),
            None => broken.to_string(),
        },
    }
}

fn spawn(bytes: &[u8], limits: &VideoLimits) -> std::io::Result<tokio::process::Child> {
    let media = sealed_memory(bytes)?;
    let mut command = Command::new(&limits.helper);
    command
        .arg("--seconds-per-hash")
        .arg(limits.seconds_per_hash.to_string())
        .arg("--max-pixels")
        .arg(limits.max_pixels.to_string())
        .arg("--max-duration-s")
        .arg(limits.max_duration_s.to_string())
        .arg("--max-frames")
        .arg(limits.max_frames.to_string())
        .arg("--threads")
        .arg(limits.threads.to_string())
        .env_clear()
        .stdin(Stdio::from(media))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // CPU time counts every decoder thread: the wall-clock deadline is the bound, this one only
    // stops a helper that spins where the worker cannot see it.
    let threads = limits.threads.max(1) as u64 + 1;
    let (memory, cpu_seconds) = (limits.memory_bytes, limits.deadline.as_secs_f64().ceil() as u64 * threads + 1);
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, prctl) are made,
    // on values computed before the fork.
    unsafe {
        command.pre_exec(move || confine(memory, cpu_seconds));
    }
    command.spawn()
}

/// The helper's resource limits, set in the child before exec, and nothing open in it but its
/// standard streams: descriptors the worker inherited without close-on-exec (from whatever
/// started it) would otherwise reach the helper, and fill its few allowed files.
fn confine(memory: u64, cpu_seconds: u64) -> std::io::Result<()> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    // Marked close-on-exec rather than closed: the spawning code still reports a failed exec
    // through a pipe of its own until then.
    // SAFETY: close_range and fcntl are async-signal-safe; the standard streams (0-2) are set up
    // before this runs and stay.
    unsafe {
        const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
            // Kernels before 5.11: one by one, up to the descriptor limit in force.
            for fd in 3..1024 {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    let limit = |resource, soft: u64, hard: u64| {
        setrlimit(resource, Rlimit { current: Some(soft), maximum: Some(hard) }).map_err(std::io::Error::from)
    };
    limit(Resource::As, memory, memory)?;
    // SIGXCPU at the soft limit, SIGKILL a second later.
    limit(Resource::Cpu, cpu_seconds, cpu_seconds + 1)?;
    // Standard streams, the media reopened, and FFmpeg's few: no room to collect descriptors.
    limit(Resource::Nofile, 16, 16)?;
    limit(Resource::Fsize, 0, 0)?;
    limit(Resource::Core, 0, 0)?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).map_err(std::io::Error::from)
}

/// The media in an anonymous memory file, sealed against every change: the helper reads (and
/// seeks) it like a file, and nothing reaches a disk.
fn sealed_memory(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
    let fd = memfd_create("perisai-media", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL)?;
    // From the start, for a helper that reads its input as it is.
    file.seek(std::io::SeekFrom::Start(0))?;
    Ok(file.into())
}

enum Record {
    Info(VideoInfo),
    Frame(Frame),
    End(End),
}

/// Largest JSON record the helper writes (its info and end records are a few hundred bytes).
const MAX_JSON_RECORD: usize = 64 * 1024;
const FRAME_HEADER: usize = 24;

async fn read_record(input: &mut (impl AsyncRead + Unpin), limits: &VideoLimits) -> Result<Record, String> {
    let mut head = [0u8; 5];
    input.read_exact(&mut head).await.map_err(|e| format!("reading its output: {e}"))?;
    let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    let json = |payload: &[u8]| String::from_utf8_lossy(payload).into_owned();
    match head[0] {
        b'I' | b'E' if len <= MAX_JSON_RECORD => {
            let mut payload = vec![0; len];
            input.read_exact(&mut payload).await.map_err(|e| format!("reading its output: {e}"))?;
            if head[0] == b'I' {
                serde_json::from_slice(&payload).map(Record::Info).map_err(|e| format!("bad info record {}: {e}", json(&payload)))
            } else {
                serde_json::from_slice(&payload).map(Record::End).map_err(|e| format!("bad end record {}: {e}", json(&payload)))
            }
        }
        b'F' if len >= FRAME_HEADER => {
            let mut header = [0u8; FRAME_HEADER];
            input.read_exact(&mut header).await.map_err(|e| format!("reading a frame: {e}"))?;
            let number = u64::from_le_bytes(header[0..8].try_into().expect("8 bytes"));
            let timestamp = f64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let width = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
            let height = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"));
            let pixels = u64::from(width) * u64::from(height);
            // The helper checks its limits; a frame over them means it is not the helper talking.
            if pixels > limits.max_pixels || (len - FRAME_HEADER) as u64 != pixels * 3 {
                return Err(format!("a frame record of {width}x{height} and {len} bytes"));
            }
            let mut rgb = vec![0; len - FRAME_HEADER];
            input.read_exact(&mut rgb).await.map_err(|e| format!("reading a frame: {e}"))?;
            Ok(Record::Frame(Frame { number, timestamp, image: Image { width, height, channels: Channels::Rgb, pixels: rgb } }))
        }
        tag => Err(format!("an unknown record (tag {tag}, {len} bytes)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_recognised_by_their_signatures() {
        let mut mp4 = vec![0, 0, 0, 0x20];
        mp4.extend_from_slice(b"ftypisom\0\0\x02\0");
        assert_eq!(sniff(&mp4), Some("ISO media (MP4/QuickTime)"));
        assert_eq!(sniff(&[0x1A, 0x45, 0xDF, 0xA3, 0x9F]), Some("Matroska/WebM"));
        assert_eq!(sniff(b"RIFF\0\0\0\0AVI LIST"), Some("AVI"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), None);
        // Box names behind sizes no box has: text, not QuickTime.
        assert_eq!(sniff(b"Get free stuff while it lasts"), None);
        assert_eq!(sniff(b"abcdftypisom and more text here"), None);
        assert_eq!(sniff(b"\0\0\0\x08wide\0\0\0\x10mdat12345678"), Some("QuickTime"));
        let ts: Vec<u8> = (0..188 * 3).map(|i| if i % 188 == 0 { 0x47 } else { 0 }).collect();
        assert_eq!(sniff(&ts), Some("MPEG transport stream"));
        assert_eq!(sniff(b"GIF89a"), None);
        assert_eq!(sniff(b"hello, world"), None);
    }
}
