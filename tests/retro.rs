//! Retroactive takedown on a real Apache Kafka broker: uploads screened and allowed before a hash
//! existed are found and re-decided when it arrives, a withdrawal undoes exactly the blocks that
//! rested on it, and a retro replica killed with SIGKILL and restarted in between still writes
//! every superseding verdict.

mod common;
mod fault_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fault_support::{scrape_metrics, Seen, Watcher};
use perisai::hash::exact::exact_hashes;
use perisai::hash::pdq;
use perisai::media::decode::{self, DecodeLimits};

const UPLOADS: u32 = 1_000;

fn perisai(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_perisai")).args(args).output().expect("run perisai");
    eprintln!("perisai {}: {}\n{}{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn spawn_retro(config: &Path, dir: &Path, n: usize, port: u16) -> Child {
    let log = std::fs::File::create(dir.join(format!("retro-{n}.log"))).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_perisai"))
        .args(["retro", "--config"])
        .arg(config)
        .env("HOSTNAME", format!("retro{n}"))
        .env("PERISAI__METRICS__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn perisai retro")
}

fn retro_log(dir: &Path, n: usize) -> String {
    std::fs::read_to_string(dir.join(format!("retro-{n}.log"))).unwrap_or_default()
}

async fn wait_ready(port: u16, timeout: Duration, log: impl Fn() -> String) {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < timeout, "retro never ready\n{}", log());
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn image_bytes(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn pdq_of(bytes: &[u8]) -> pdq::PdqHash {
    pdq::hash(&decode::decode(bytes, &DecodeLimits::default()).expect("decodes"), pdq::Convention::Cli).hash
}

/// Retroactive verdicts seen, by the upload they re-decide.
fn retro_by_upload(seen: &[Seen]) -> BTreeMap<String, Vec<Seen>> {
    let mut out: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.retro_of.is_some()) {
        out.entry(s.retro_of.clone().unwrap()).or_default().push(s.clone());
    }
    out
}

/// 1,000 uploads screened and allowed, then a PDQ hash matching 7 of them (3 exact copies, which
/// another bank already blocks, and 4 near copies) is imported: exactly those 7 get superseding
/// block verdicts. The retro replica is then killed (SIGKILL), the hash withdrawn while it is down,
/// and a fresh replica re-decides the same 7: the near copies are allowed again, the exact copies
/// stay blocked by the other bank. No upload gets two different verdicts for one change.
#[tokio::test(flavor = "multi_thread")]
async fn a_hash_that_arrives_after_the_uploads_still_takes_them_down() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "retro", 2).await;
    let dir = temp_dir();
    let extra = format!(
        "\n[[banks]]\nname = \"ncii\"\naction = \"block\"\n\n[[banks]]\nname = \"csam\"\naction = \"block\"\n\n\
         [retro]\ngroup_id = \"{}.retro\"\nwindow = \"1d\"\n",
        topics.group
    );
    let config = write_config(dir.path(), &brokers, &topics, &extra);
    let cfg = config.to_str().unwrap();

    // The target photo, 3 exact copies and 4 near copies (smaller, brighter, re-encoded).
    let target = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pdq/images/jpg_progressive_chelsea.jpg")).unwrap();
    // Decoded by the service's own JPEG decoder (the test's image crate has no JPEG support).
    let decoded = decode::decode(&target, &DecodeLimits::default()).unwrap();
    assert_eq!(decoded.pixels.len() as u32, decoded.width * decoded.height * 3, "an RGB photo");
    let photo = image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(decoded.width, decoded.height, decoded.pixels).unwrap());
    let (w, h) = (photo.width(), photo.height());
    let near: Vec<Vec<u8>> = vec![
        image_bytes(&photo.resize_exact(w * 9 / 10, h * 9 / 10, image::imageops::FilterType::Triangle), image::ImageFormat::Png),
        image_bytes(&photo.resize_exact(w * 3 / 4, h * 3 / 4, image::imageops::FilterType::Triangle), image::ImageFormat::Png),
        image_bytes(&photo.brighten(8), image::ImageFormat::Png),
        image_bytes(&photo.brighten(-8).resize_exact(w * 4 / 5, h * 4 / 5, image::imageops::FilterType::Triangle), image::ImageFormat::Png),
    ];
    let target_pdq = pdq_of(&target);
    for copy in &near {
        let d = target_pdq.distance(&pdq_of(copy));
        assert!(d <= 24, "a near copy is {d} bits away: the test needs copies within the default threshold");
    }
    // The exact copies are in the csam bank from the start.
    let list = dir.path().join("csam.csv");
    write_file(&list, &format!("signal,hash,entry\nmd5,{},csam-1\n", exact_hashes(&target).md5));
    assert!(perisai(&["bank", "import", "--config", cfg, "--bank", "csam", list.to_str().unwrap()]).status.success());

    let mut uploads: Vec<(String, Vec<u8>)> = (0..UPLOADS).map(|i| (format!("u-{i}"), png(50_000 + i, 32))).collect();
    let exact_ids: BTreeSet<String> = (0..3).map(|i| format!("exact-{i}")).collect();
    let near_ids: BTreeSet<String> = (0..near.len()).map(|i| format!("near-{i}")).collect();
    for (i, id) in exact_ids.iter().enumerate() {
        uploads.insert(100 + i * 300, (id.clone(), target.clone()));
    }
    for (i, (id, bytes)) in near_ids.iter().zip(&near).enumerate() {
        uploads.insert(50 + i * 200, (id.clone(), bytes.clone()));
    }
    let hits: BTreeSet<String> = exact_ids.union(&near_ids).cloned().collect();

    let watch = Watcher::start(&brokers, &topics.verdicts);
    let mut worker = spawn_worker(&config, dir.path(), 0);
    let port = free_port();
    let mut retro = spawn_retro(&config, dir.path(), 0, port);
    let records: Vec<(String, Vec<u8>)> = uploads.iter().map(|(id, bytes)| (format!("m-{id}"), event_json(id, bytes, "image/png"))).collect();
    produce_all(&producer(&brokers), &topics.input, &records).await;
    let total = uploads.len();
    let answered = |s: &[Seen]| s.iter().filter(|v| v.retro_of.is_none()).count() >= total;
    assert!(watch.wait_for(Duration::from_secs(180), answered), "worker answered {} of {total}\n{}", watch.len(), worker_log(dir.path(), 0));
    let first: BTreeMap<String, String> =
        watch.snapshot().into_iter().filter(|v| v.retro_of.is_none()).map(|v| (v.event_id, v.action)).collect();
    assert_eq!(first.len(), total);
    for (id, action) in &first {
        let expected = if exact_ids.contains(id) { "block" } else { "allow" };
        assert_eq!(action, expected, "{id} before the hash existed");
    }
    wait_ready(port, Duration::from_secs(60), || retro_log(dir.path(), 0)).await;

    // The hash arrives: exactly the 7 get superseding block verdicts.
    let imported = Instant::now();
    let list = dir.path().join("ncii.csv");
    write_file(&list, &format!("signal,hash,entry\npdq,{target_pdq},case-ncii-7\n"));
    assert!(perisai(&["bank", "import", "--config", cfg, "--bank", "ncii", list.to_str().unwrap()]).status.success());
    let all_seven = |s: &[Seen]| retro_by_upload(s).keys().filter(|k| hits.contains(*k)).count() == hits.len();
    assert!(watch.wait_for(Duration::from_secs(60), all_seven), "retro wrote {:?}\n{}", retro_by_upload(&watch.snapshot()).keys(), retro_log(dir.path(), 0));
    eprintln!("import → all 7 superseding verdicts in {:.2} s", imported.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(3));
    let taken_down = retro_by_upload(&watch.snapshot());
    assert_eq!(taken_down.keys().cloned().collect::<BTreeSet<_>>(), hits, "exactly the 7 are re-decided");
    for (upload, verdicts) in &taken_down {
        let ids: BTreeSet<&str> = verdicts.iter().map(|v| v.event_id.as_str()).collect();
        assert_eq!(ids.len(), 1, "{upload}: one re-decision (duplicates share an event_id): {verdicts:?}");
        let v = &verdicts[0];
        assert_eq!(v.action, "block", "{v:?}");
        assert_eq!(v.supersedes.as_deref(), Some(upload.as_str()), "it supersedes the first verdict");
        assert!(v.event_id.starts_with("retro-"), "its own event_id: {v:?}");
        assert!(v.banks_version.is_some());
    }
    let m = scrape_metrics(port).await;
    assert_eq!(m.get("perisai_retro_uploads").copied(), Some(total as f64), "every upload remembered");

    // SIGKILL the replica, withdraw the hash while it is down, start a fresh one.
    retro.kill().expect("SIGKILL retro");
    retro.wait().ok();
    let out = perisai(&["bank", "withdraw", "--config", cfg, "--bank", "ncii", "--signal", "pdq", &target_pdq.to_string()]);
    assert!(out.status.success());
    let port = free_port();
    let restarted = Instant::now();
    let mut retro = spawn_retro(&config, dir.path(), 1, port);
    let undone = |s: &[Seen]| {
        retro_by_upload(s).iter().filter(|(k, v)| hits.contains(*k) && v.iter().any(|x| x.supersedes.as_deref().is_some_and(|p| p.starts_with("retro-")))).count()
            == hits.len()
    };
    assert!(watch.wait_for(Duration::from_secs(120), undone), "after the restart: {:?}\n{}", retro_by_upload(&watch.snapshot()), retro_log(dir.path(), 1));
    eprintln!("restart → withdrawal re-decided in {:.2} s (read back {total} verdicts)", restarted.elapsed().as_secs_f64());
    wait_ready(port, Duration::from_secs(60), || retro_log(dir.path(), 1)).await;
    std::thread::sleep(Duration::from_secs(3));
    let seen = watch.snapshot();
    let by_upload = retro_by_upload(&seen);
    assert_eq!(by_upload.keys().cloned().collect::<BTreeSet<_>>(), hits, "nothing else was touched");
    for (upload, verdicts) in &by_upload {
        let decisions: BTreeMap<&str, &Seen> = verdicts.iter().map(|v| (v.event_id.as_str(), v)).collect();
        assert_eq!(decisions.len(), 2, "{upload}: the takedown and its undoing, nothing more: {verdicts:?}");
        let last = verdicts.last().unwrap();
        let expected = if exact_ids.contains(upload) { "block" } else { "allow" };
        assert_eq!(last.action, expected, "{upload} after the withdrawal: {last:?}");
        assert_eq!(last.supersedes.as_deref(), Some(verdicts[0].event_id.as_str()), "it supersedes the takedown");
    }
    let log = format!("{}{}", retro_log(dir.path(), 0), retro_log(dir.path(), 1));
    assert!(!log.contains(&target_pdq.to_string()), "a bank hash reached the retro log");

    sigterm(&retro);
    assert!(wait_exit(&mut retro, Duration::from_secs(30)).success(), "{}", retro_log(dir.path(), 1));
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(60)).success());
}
