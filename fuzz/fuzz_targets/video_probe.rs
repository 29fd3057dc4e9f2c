//! Any bytes as a video, through the helper's decoding in-process (FFmpeg's probing and
//! demuxing, the container limits read before decoding, the frame loop) under small limits:
//! a frame record or an error, never a panic, never a frame over the limits, never a run past
//! a few seconds. The worker's side of the bytes (which container the signatures name) too.
#![no_main]

use std::io::Write;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use perisai_video::{decode, Limits};

const LIMITS: Limits =
    Limits { seconds_per_hash: 0.0, max_pixels: 1 << 18, max_duration_s: 10.0, max_frames: 300, threads: 1 };

/// Checks every frame record the decoding writes, keeping none of it.
struct FrameCheck {
    pending: Vec<u8>,
}

impl Write for FrameCheck {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while self.pending.len() >= 5 {
            let len = u32::from_le_bytes(self.pending[1..5].try_into().unwrap()) as usize;
            if self.pending.len() < 5 + len {
                break;
            }
            if self.pending[0] == b'F' {
                let width = u32::from_le_bytes(self.pending[21..25].try_into().unwrap()) as u64;
                let height = u32::from_le_bytes(self.pending[25..29].try_into().unwrap()) as u64;
                assert!(width * height <= LIMITS.max_pixels && width > 0 && height > 0, "{width}x{height}");
                assert_eq!(len as u64, 24 + width * height * 3);
            }
            self.pending.drain(..5 + len);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = perisai::media::video::sniff(data);
    let _ = perisai::media::decode::sniff(data);
    let memory = rustix::fs::memfd_create("fuzz-video", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    let mut file = std::fs::File::from(memory);
    file.write_all(data).expect("memfd write");
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
    let started = Instant::now();
    let mut out = FrameCheck { pending: Vec::new() };
    let _ = decode(&LIMITS, &path, &mut out);
    assert!(started.elapsed() < Duration::from_secs(5), "ran {:?}", started.elapsed());
});
