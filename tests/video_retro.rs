//! Retroactive takedown of videos on a real Apache Kafka broker: a clip and its re-encoded copy
//! are screened and allowed before anyone reported them; then the clip's vPDQ hash is imported,
//! and the retro replica finds both by the features their verdicts carried and writes superseding
//! block verdicts (an unrelated clip is left alone); withdrawn, both are allowed again.

mod common;
mod fault_support;
mod video_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fault_support::{Seen, Watcher};
use video_support::{clip, ffmpeg};

fn spawn_retro(config: &Path, dir: &Path, port: u16) -> Child {
    let log = std::fs::File::create(dir.join("retro.log")).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_perisai"))
        .args(["retro", "--config"])
        .arg(config)
        .env("HOSTNAME", "video-retro")
        .env("PERISAI__METRICS__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn perisai retro")
}

fn retro_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("retro.log")).unwrap_or_default()
}

/// The latest retroactive verdict per upload.
fn latest_retro(seen: &[Seen]) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    for s in seen.iter().filter(|s| s.retro_of.is_some()) {
        out.insert(s.retro_of.clone().unwrap(), s.clone());
    }
    out
}

/// An upload event for a clip under the media root.
fn path_event(id: &str, file: &Path, content_type: &str) -> Vec<u8> {
    let name = file.file_name().unwrap().to_str().unwrap();
    serde_json::to_vec(&serde_json::json!({
        "schema": "perisai.upload/v1", "event_id": id, "media_id": format!("m-{id}"), "tenant": "acme",
        "content_type": content_type, "media": {"path": name}
    }))
    .unwrap()
}

/// The clip's signal string as `perisai hash --video` hashes it.
fn signal_string(file: &Path) -> String {
    let lines = video_support::our_lines(file, 1.0);
    let items: Vec<String> = lines
        .iter()
        .map(|l| {
            let parts: Vec<&str> = l.split(',').collect();
            format!("{},{},{}", parts[2], parts[1], parts[3])
        })
        .collect();
    serde_json::to_string(&items).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_video_reported_after_its_uploads_is_taken_down() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "video-retro", 1).await;
    let dir = temp_dir();
    let extra = format!(
        "\n[media]\npath_root = \"{}\"\n\n[[banks]]\nname = \"ncii\"\naction = \"block\"\n\n[retro]\ngroup_id = \"{}.retro\"\nwindow = \"1d\"\n",
        dir.path().display(),
        topics.group
    );
    let config = write_config(dir.path(), &brokers, &topics, &extra);
    let cfg = config.to_str().unwrap();

    let original = clip(&dir.path().join("original.mp4"), "testsrc2=size=320x240:rate=30", 8.0, &["-c:v", "libx264", "-pix_fmt", "yuv420p"]);
    let copy = ffmpeg(&dir.path().join("copy.webm"), &["-i", original.to_str().unwrap(), "-vf", "scale=240:180", "-c:v", "libvpx-vp9", "-b:v", "150k"]);
    let other = clip(&dir.path().join("other.mp4"), "mandelbrot=size=320x240:rate=30", 8.0, &["-c:v", "libx264", "-pix_fmt", "yuv420p"]);
    let uploads = [("original", &original, "video/mp4"), ("copy", &copy, "video/webm"), ("other", &other, "video/mp4")];

    let watch = Watcher::start(&brokers, &topics.verdicts);
    let mut worker = spawn_worker(&config, dir.path(), 0);
    let port = free_port();
    let mut retro = spawn_retro(&config, dir.path(), port);
    let records: Vec<(String, Vec<u8>)> = uploads.iter().map(|(id, file, ct)| (format!("m-{id}"), path_event(id, file, ct))).collect();
    produce_all(&producer(&brokers), &topics.input, &records).await;
    let firsts = |s: &[Seen]| s.iter().filter(|v| v.retro_of.is_none()).count() >= uploads.len();
    assert!(watch.wait_for(Duration::from_secs(60), firsts), "{}", worker_log(dir.path(), 0));
    for v in watch.snapshot().iter().filter(|v| v.retro_of.is_none()) {
        assert_eq!(v.action, "allow", "{v:?} before any report\n{}", worker_log(dir.path(), 0));
    }
    // The replica has read the verdicts back (it reports ready once its partitions are read).
    let started = Instant::now();
    while !reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.is_ok_and(|r| r.status().is_success()) {
        assert!(started.elapsed() < Duration::from_secs(60), "retro never ready\n{}", retro_log(dir.path()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::thread::sleep(Duration::from_secs(2));

    // The report arrives as a ThreatExchange vpdq line.
    let te = dir.path().join("report.te");
    write_file(&te, &format!("vpdq {}\n", signal_string(&original)));
    let imported = Instant::now();
    let out = perisai_in(dir.path(), &["bank", "import", "--config", cfg, "--bank", "ncii", "--format", "te", "--entry", "case-v", te.to_str().unwrap()]);
    assert!(out.status.success());
    let both_blocked = |s: &[Seen]| {
        let latest = latest_retro(s);
        ["original", "copy"].iter().all(|id| latest.get(*id).is_some_and(|v| v.action == "block"))
    };
    assert!(watch.wait_for(Duration::from_secs(60), both_blocked), "{:?}\n{}", latest_retro(&watch.snapshot()), retro_log(dir.path()));
    eprintln!("vPDQ import → both copies taken down in {:.2} s", imported.elapsed().as_secs_f64());
    let latest = latest_retro(&watch.snapshot());
    for id in ["original", "copy"] {
        let v = &latest[id];
        assert_eq!(v.entry.as_deref(), Some("case-v"), "{v:?}");
        assert_eq!(v.supersedes.as_deref(), Some(id), "it supersedes the first verdict: {v:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(!latest_retro(&watch.snapshot()).contains_key("other"), "the unrelated clip is left alone");

    // Withdrawn: both allowed again.
    let export = perisai_in(dir.path(), &["bank", "export", "--config", cfg, "--bank", "ncii", "--format", "te"]);
    let line = String::from_utf8(export.stdout).unwrap();
    let features = line.trim().strip_prefix("vpdq ").expect("the vpdq entry exported");
    let digest = hex::encode(perisai::bank::video::VideoEntry::parse(features).unwrap().digest);
    assert!(perisai_in(dir.path(), &["bank", "withdraw", "--config", cfg, "--bank", "ncii", "--signal", "vpdq", &digest]).status.success());
    let both_allowed = |s: &[Seen]| {
        let latest = latest_retro(s);
        ["original", "copy"].iter().all(|id| latest.get(*id).is_some_and(|v| v.action == "allow"))
    };
    assert!(watch.wait_for(Duration::from_secs(60), both_allowed), "{:?}\n{}", latest_retro(&watch.snapshot()), retro_log(dir.path()));

    sigterm(&retro);
    assert!(wait_exit(&mut retro, Duration::from_secs(30)).success(), "{}", retro_log(dir.path()));
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success(), "{}", worker_log(dir.path(), 0));
}
