//! vPDQ equality with Meta's vpdq 0.2.5 (its Python binding over the same FFmpeg libraries),
//! computed in this run on clips made in this run: which frames are sampled, their numbers,
//! qualities, PDQ hashes and timestamps, for each container and codec the helper must take, odd
//! sizes, 4:4:4, 60 fps, 29.97/23.976 fps, an audio track, variable frame rate, and the
//! every-frame and half-second modes.

mod video_support;

use std::path::Path;

use video_support::{clip, our_lines, reference_lines, reference_python};

struct Case {
    name: &'static str,
    source: &'static str,
    seconds: f64,
    codec: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case { name: "h264.mp4", source: "testsrc2=size=320x240:rate=30", seconds: 3.0, codec: &["-c:v", "libx264", "-pix_fmt", "yuv420p"] },
    Case { name: "h264_2997.mov", source: "testsrc2=size=318x238:rate=30000/1001", seconds: 3.0, codec: &["-c:v", "libx264", "-pix_fmt", "yuv420p"] },
    Case { name: "hevc.mp4", source: "testsrc2=size=320x240:rate=25", seconds: 3.0, codec: &["-c:v", "libx265", "-x265-params", "log-level=none"] },
    Case { name: "vp8.webm", source: "testsrc2=size=320x240:rate=30", seconds: 2.0, codec: &["-c:v", "libvpx"] },
    Case { name: "vp9_odd.webm", source: "testsrc2=size=321x243:rate=30000/1001", seconds: 3.0, codec: &["-c:v", "libvpx-vp9", "-b:v", "300k"] },
    Case { name: "av1.mkv", source: "testsrc2=size=320x240:rate=24", seconds: 2.0, codec: &["-c:v", "libaom-av1", "-cpu-used", "8"] },
    Case { name: "mpeg4_23976.avi", source: "testsrc2=size=320x240:rate=24000/1001", seconds: 3.0, codec: &["-c:v", "mpeg4"] },
    Case { name: "h264_444_60.mkv", source: "testsrc2=size=256x144:rate=60", seconds: 2.0, codec: &["-c:v", "libx264", "-pix_fmt", "yuv444p"] },
    // Variable frame rate: every fifth frame dropped, timestamps kept.
    Case {
        name: "h264_vfr.mp4",
        source: "testsrc2=size=320x240:rate=30",
        seconds: 3.0,
        codec: &["-vf", "select='not(eq(mod(n\\,5)\\,2))'", "-fps_mode", "vfr", "-c:v", "libx264"],
    },
];

#[test]
fn vpdq_hashes_equal_meta_s_vpdq_on_every_sampled_frame() {
    let python = reference_python();
    let dir = tempfile::tempdir().unwrap();
    for case in CASES {
        let file = clip(&dir.path().join(case.name), case.source, case.seconds, case.codec);
        for seconds_per_hash in [1.0, 0.5, 0.0] {
            let theirs = reference_lines(&python, &file, seconds_per_hash);
            let ours = our_lines(&file, seconds_per_hash);
            assert!(theirs.len() >= 2, "{}: vpdq gave {} lines", case.name, theirs.len());
            assert_eq!(ours, theirs, "{} at {seconds_per_hash} s a hash", case.name);
        }
    }
}

/// With an audio track: vpdq's own lines when the video is stream 0. When audio comes first, vpdq
/// never drains the decoder and forgets the frames it holds at the end; this helper decodes them,
/// so its lines are vpdq's followed by those last frames.
#[test]
fn an_audio_track_is_ignored_and_the_last_frames_are_not_forgotten() {
    let python = reference_python();
    let dir = tempfile::tempdir().unwrap();
    let video_first = video_support::ffmpeg(
        &dir.path().join("video_first.mp4"),
        &["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine", "-t", "3", "-c:v", "libx264", "-bf", "3", "-c:a", "aac"],
    );
    let audio_first = video_support::ffmpeg(
        &dir.path().join("audio_first.mp4"),
        &[
            "-f", "lavfi", "-i", "sine", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", "3",
            "-map", "0:a", "-map", "1:v", "-c:v", "libx264", "-bf", "3", "-c:a", "aac",
        ],
    );
    for seconds_per_hash in [1.0, 0.0] {
        assert_eq!(our_lines(&video_first, seconds_per_hash), reference_lines(&python, &video_first, seconds_per_hash));
    }
    let theirs = reference_lines(&python, &audio_first, 0.0);
    let ours = our_lines(&audio_first, 0.0);
    assert_eq!(&ours[..theirs.len()], &theirs[..], "vpdq's frames come first, equal");
    assert_eq!(ours.len(), 90, "every one of the 90 frames is hashed");
    assert!(theirs.len() < ours.len(), "vpdq forgets the held frames ({} of 90)", theirs.len());
    // Both files show the same pictures: their every-frame hashes agree.
    assert_eq!(our_lines(&video_first, 0.0), ours);
}

#[test]
fn a_file_that_is_not_a_video_is_an_error_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, b"\0\0\0\x18ftypisom this is not really a video").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_perisai"))
        .args(["hash", "--video"])
        .arg(&text)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unsupported_format") || stderr.contains("(decode)"), "{stderr}");
    assert!(Path::new(&text).exists());
}
