//! `perisai-video`: decodes one video in a process of its own, so that a hostile file that
//! crashes, hangs or exhausts FFmpeg hurts this process and not the worker.
//!
//! The worker starts it with the media on standard input (a sealed memory file, never a file on
//! disk), its limits as arguments, and address-space, CPU-time, open-file and file-size limits
//! already set; it kills it at the upload's deadline. The helper refuses itself sockets and exec
//! (seccomp) before it reads a byte, then writes the records `perisai_video` (lib.rs) describes
//! to standard output, the end record last.

mod sandbox;

use std::io::{self, Write};
use std::process::ExitCode;

use perisai_video::{decode, write_record, End, Limits};

fn main() -> ExitCode {
    let limits = match parse_args(std::env::args().skip(1)) {
        Ok(limits) => limits,
        Err(e) => {
            eprintln!("perisai-video: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = sandbox::enter() {
        eprintln!("perisai-video: cannot enter the sandbox: {e}");
        return ExitCode::from(3);
    }
    let mut out = io::BufWriter::with_capacity(1 << 20, io::stdout().lock());
    // Standard input is a sealed memory file: opened again through /proc it can be sought, which
    // MP4 files whose index sits at the end need.
    let (frames_decoded, error) = match decode(&limits, "/proc/self/fd/0", &mut out) {
        Ok(n) => (n, None),
        Err((n, failure)) => (n, Some(failure)),
    };
    let end = End { frames_decoded, error };
    let written = write_record(&mut out, b'E', &serde_json::to_vec(&end).expect("plain data")).and_then(|()| out.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // The worker stopped reading (it gave up on this video): nothing more to say.
        Err(_) => ExitCode::from(4),
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Limits, String> {
    let mut limits =
        Limits { seconds_per_hash: 1.0, max_pixels: 8_294_400, max_duration_s: 3600.0, max_frames: 1_000_000, threads: 1 };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--seconds-per-hash" => limits.seconds_per_hash = value.parse().map_err(|e| bad(&e))?,
            "--max-pixels" => limits.max_pixels = value.parse().map_err(|e| bad(&e))?,
            "--max-duration-s" => limits.max_duration_s = value.parse().map_err(|e| bad(&e))?,
            "--max-frames" => limits.max_frames = value.parse().map_err(|e| bad(&e))?,
            "--threads" => limits.threads = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if !(limits.seconds_per_hash >= 0.0 && limits.seconds_per_hash.is_finite()) {
        return Err("--seconds-per-hash must be a finite number >= 0".into());
    }
    Ok(limits)
}

