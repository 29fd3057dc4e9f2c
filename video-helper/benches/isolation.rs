//! What the helper process costs against decoding in the worker's own process.
//!
//! Makes a clip with the ffmpeg command (`testsrc2` with temporal noise, H.264 CRF 23, 30 fps, as
//! `scripts/bench-video` makes them), then alternates, `--runs` times each:
//! - in-process: `perisai_video::decode` on the file, its records written to a sink;
//! - helper: the `perisai-video` binary started as the worker starts it (the file on standard
//!   input, the same limits as arguments), every record read from its standard output.
//!
//! Both decode and convert the same sampled frames; the difference is the process start, the
//! sandbox, FFmpeg's start-up in a fresh process, and the frames' trip through the pipe. The
//! worker's own resource limits and sealed memory file are left out (both cost microseconds).
//!
//! ```text
//! cargo bench -p perisai-video --bench isolation -- [--runs 7] [--size 1280x720] [--seconds 30]
//!                                                   [--seconds-per-hash 1] [--threads 2]
//! ```

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use perisai_video::{decode, write_record, End, Limits};

struct Options {
    runs: usize,
    size: String,
    seconds: u32,
    seconds_per_hash: f64,
    threads: usize,
}

fn parse_args() -> Options {
    let mut o = Options { runs: 7, size: "1280x720".into(), seconds: 30, seconds_per_hash: 1.0, threads: 2 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| die(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--runs" => o.runs = value().parse().unwrap_or_else(|_| die("--runs: a number")),
            "--size" => o.size = value(),
            "--seconds" => o.seconds = value().parse().unwrap_or_else(|_| die("--seconds: a number")),
            "--seconds-per-hash" => o.seconds_per_hash = value().parse().unwrap_or_else(|_| die("--seconds-per-hash: a number")),
            "--threads" => o.threads = value().parse().unwrap_or_else(|_| die("--threads: a number")),
            a if a.starts_with("--bench") => {}
            a => die(&format!("unknown argument {a}")),
        }
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("isolation bench: {msg}");
    std::process::exit(2)
}

/// A writer that only counts: the in-process side keeps nothing, as the helper side keeps
/// nothing but what it reads.
#[derive(Default)]
struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn limits(o: &Options) -> Limits {
    Limits { seconds_per_hash: o.seconds_per_hash, max_pixels: 8_294_400, max_duration_s: 3600.0, max_frames: 1_000_000, threads: o.threads }
}

/// (wall seconds, bytes of records) in this process.
fn in_process(clip: &Path, limits: &Limits) -> (f64, u64) {
    let started = Instant::now();
    let mut out = Count::default();
    let frames_decoded = match decode(limits, clip.to_str().expect("UTF-8 path"), &mut out) {
        Ok(n) => n,
        Err((_, failure)) => die(&format!("in-process decode failed: {failure:?}")),
    };
    // The end record the helper writes last, so both sides write the same bytes.
    let end = End { frames_decoded, error: None };
    write_record(&mut out, b'E', &serde_json::to_vec(&end).expect("plain data")).expect("a counter");
    (started.elapsed().as_secs_f64(), out.0)
}

/// (wall seconds, bytes of records) through the helper binary.
fn through_helper(clip: &Path, limits: &Limits) -> (f64, u64) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_perisai-video"))
        .args(["--seconds-per-hash", &limits.seconds_per_hash.to_string()])
        .args(["--max-pixels", &limits.max_pixels.to_string()])
        .args(["--max-duration-s", &limits.max_duration_s.to_string()])
        .args(["--max-frames", &limits.max_frames.to_string()])
        .args(["--threads", &limits.threads.to_string()])
        .env_clear()
        .stdin(std::fs::File::open(clip).expect("open clip"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the helper");
    let mut stdout = child.stdout.take().expect("piped");
    let mut buf = vec![0; 1 << 20];
    let mut bytes = 0u64;
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => die(&format!("reading the helper: {e}")),
        }
    }
    let status = child.wait().expect("wait for the helper");
    if !status.success() {
        die(&format!("the helper exited {status}"));
    }
    (started.elapsed().as_secs_f64(), bytes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let o = parse_args();
    let dir = std::env::temp_dir().join(format!("perisai-isolation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let clip = dir.join("clip.mp4");
    let made = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={}:rate=30,noise=alls=12:allf=t+u", o.size))
        .args(["-t", &o.seconds.to_string(), "-c:v", "libx264", "-crf", "23", "-pix_fmt", "yuv420p"])
        .arg(&clip)
        .status()
        .unwrap_or_else(|e| die(&format!("the ffmpeg command is needed: {e}")));
    if !made.success() {
        die("ffmpeg could not make the clip");
    }
    let limits = limits(&o);
    let (mut inside, mut helper) = (Vec::new(), Vec::new());
    for run in 0..o.runs {
        let (a, bytes_a) = in_process(&clip, &limits);
        let (b, bytes_b) = through_helper(&clip, &limits);
        // The same records both ways: the same frames were decoded.
        if bytes_a != bytes_b {
            die(&format!("in-process wrote {bytes_a} bytes of records, the helper {bytes_b}"));
        }
        println!("run {run}: in-process {a:.3} s, helper {b:.3} s ({:.1} MB of frames)", bytes_a as f64 / 1e6);
        inside.push(a);
        helper.push(b);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (a, b) = (median(inside), median(helper));
    println!(
        "\n{} {} s clip, {} decoder threads, medians of {} alternating runs: in-process {a:.3} s, helper {b:.3} s: \
         isolation costs {:.0} ms a video ({:+.1} %)",
        o.size,
        o.seconds,
        o.threads,
        o.runs,
        (b - a) * 1e3,
        (b / a - 1.0) * 100.0
    );
}
