//! Test clips made by the `ffmpeg` command (Debian's, installed by `scripts/deps test`) and the
//! reference vPDQ hashes of Meta's vpdq 0.2.5 Python binding (`scripts/pyref video`), both made in
//! the test's own run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `ffmpeg -y ARGS… OUT` quietly; panics with what it said when it fails.
pub fn ffmpeg(out: &Path, args: &[&str]) -> PathBuf {
    let result = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ffmpeg ({e}): `scripts/deps test` installs it"));
    assert!(result.status.success(), "ffmpeg {args:?} {}: {}", out.display(), String::from_utf8_lossy(&result.stderr));
    out.to_path_buf()
}

/// A synthetic clip of `seconds` from lavfi `source` (e.g. `testsrc2=size=320x240:rate=30`),
/// encoded with `codec_args`.
pub fn clip(out: &Path, source: &str, seconds: f64, codec_args: &[&str]) -> PathBuf {
    let t = seconds.to_string();
    let mut args = vec!["-f", "lavfi", "-i", source, "-t", &t];
    args.extend_from_slice(codec_args);
    ffmpeg(out, &args)
}

/// The reference venv's interpreter (scripts/pyref video); a failure fails the test.
pub fn reference_python() -> PathBuf {
    let script = root().join("scripts/pyref");
    let out = Command::new(&script).arg("video").stdin(Stdio::null()).output().expect("run scripts/pyref");
    assert!(
        out.status.success(),
        "scripts/pyref video could not build Meta's vpdq binding (.cache/pyref-video), which this test needs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// vpdq's lines for `file` (`FRAME,QUALITY,HEX,TIMESTAMP`), from its Python binding.
pub fn reference_lines(python: &Path, file: &Path, seconds_per_hash: f64) -> Vec<String> {
    const SCRIPT: &str = "import sys, vpdq\n\
        for f in vpdq.computeHash(sys.argv[1], seconds_per_hash=float(sys.argv[2])):\n\
        \x20   print(f'{f.frame_number},{f.quality},{f.hex},{f.timestamp:.3f}')\n";
    run_reference(python, SCRIPT, file, seconds_per_hash).lines().map(str::to_string).collect()
}

/// Runs `script` on the reference binding with `file` and `seconds_per_hash` as its arguments.
fn run_reference(python: &Path, script: &str, file: &Path, seconds_per_hash: f64) -> String {
    let out = Command::new(python)
        .args(["-c", script])
        .arg(file)
        .arg(seconds_per_hash.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run the vpdq reference");
    assert!(out.status.success(), "vpdq on {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `perisai hash --video` lines for `file`.
pub fn our_lines(file: &Path, seconds_per_hash: f64) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_perisai"))
        .args(["hash", "--video", "--seconds-per-hash", &seconds_per_hash.to_string()])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run perisai hash --video");
    assert!(out.status.success(), "perisai hash --video {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

/// python-threatexchange's signal string for `file`, made by the reference binding as
/// `vpdq_util.vpdq_to_json(hash_file_compact(file))` makes it: a JSON list (`json.dumps`, so `", "`
/// between items) of `PDQ_HEX,QUALITY,TIMESTAMP`, the timestamp formatted `{:.3}` (Python's
/// general format: `1.0`, `0.967`, `11.0`).
pub fn reference_signal_string(python: &Path, file: &Path, seconds_per_hash: f64) -> String {
    const SCRIPT: &str = "import sys, json, vpdq\n\
        fs = vpdq.computeHash(sys.argv[1], seconds_per_hash=float(sys.argv[2]))\n\
        print(json.dumps([f'{f.hex},{f.quality},{f.timestamp:.3}' for f in fs]))\n";
    run_reference(python, SCRIPT, file, seconds_per_hash).trim().to_string()
}
