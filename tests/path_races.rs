//! Path media under attack, on a real Apache Kafka broker: while one thread keeps swapping a
//! directory of the media root for a symlink to a directory outside it, and a file for a FIFO,
//! a worker screens a few hundred path events. No verdict ever carries the hash of a file
//! outside the root, nothing hangs, and SIGTERM ends the worker cleanly. A hard link to an
//! outside file is refused too.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use perisai::hash::exact::exact_hashes;

const EVENTS: u32 = 300;

fn path_event(event_id: &str, path: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "perisai.upload/v1", "event_id": event_id, "media_id": format!("m-{event_id}"),
        "tenant": "acme", "content_type": "image/png", "media": {"path": path}
    }))
    .unwrap()
}

/// Swaps `root/race` between a directory and a symlink to `outside`, and `root/swap.png` between
/// a regular file and a FIFO, until stopped; counts the swaps.
fn swapper(root: &Path, outside: &Path, stop: Arc<AtomicBool>, swaps: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    let (root, outside) = (root.to_path_buf(), outside.to_path_buf());
    std::thread::spawn(move || {
        let (race, parked_dir) = (root.join("race"), root.join("race.parked"));
        let (swap, parked_file) = (root.join("swap.png"), root.join("swap.parked"));
        while !stop.load(Ordering::Relaxed) {
            std::fs::rename(&race, &parked_dir).expect("park the directory");
            std::os::unix::fs::symlink(&outside, &race).expect("symlink in its place");
            std::fs::rename(&swap, &parked_file).expect("park the file");
            rustix::fs::mknodat(rustix::fs::CWD, &swap, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
                .expect("FIFO in its place");
            std::thread::yield_now();
            std::fs::remove_file(&race).expect("remove the symlink");
            std::fs::rename(&parked_dir, &race).expect("directory back");
            std::fs::remove_file(&swap).expect("remove the FIFO");
            std::fs::rename(&parked_file, &swap).expect("file back");
            swaps.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn path_media_never_leaves_its_root_under_swaps() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "path-races", 2).await;
    let dir = temp_dir();
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    std::fs::create_dir_all(root.join("race")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let (inside_img, outside_img, secret) = (png(1, 32), png(2, 32), png(3, 32));
    std::fs::write(root.join("race/img.png"), &inside_img).unwrap();
    std::fs::write(root.join("swap.png"), &inside_img).unwrap();
    std::fs::write(outside.join("img.png"), &outside_img).unwrap();
    std::fs::write(outside.join("secret.png"), &secret).unwrap();
    std::fs::hard_link(outside.join("secret.png"), root.join("hard.png")).unwrap();
    let outside_md5 = [exact_hashes(&outside_img).md5, exact_hashes(&secret).md5];
    let config = write_config(dir.path(), &brokers, &topics, &format!("\n[media]\npath_root = \"{}\"\n", root.display()));

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapping = swapper(&root, &outside, stop.clone(), swaps.clone());
    let mut worker = spawn_worker(&config, dir.path(), 0);
    let mut records: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|i| {
            let path = if i % 2 == 0 { "race/img.png" } else { "swap.png" };
            (format!("m-{i}"), path_event(&format!("e-{i}"), path))
        })
        .collect();
    records.push(("m-hard".into(), path_event("e-hard", "hard.png")));
    produce_all(&producer(&brokers), &topics.input, &records).await;
    let outputs = read_until(&brokers, &[&topics.verdicts], Duration::from_secs(120), |o| o.len() > EVENTS as usize);
    let log = worker_log(dir.path(), 0);
    assert_eq!(outputs.len(), records.len(), "every path event answered, none hung\n{log}");

    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outputs {
        let v = o.json();
        let md5 = v["signals"]["md5"].as_str().unwrap_or_default();
        assert!(!outside_md5.iter().any(|m| m == md5), "a file outside the root was read: {v}");
        let outcome = match v["reasons"].as_array().unwrap().iter().find(|r| r["kind"] == "media_error") {
            Some(e) => format!("{} {}", v["action"].as_str().unwrap(), e["error"].as_str().unwrap()),
            None => {
                assert_eq!(md5, exact_hashes(&inside_img).md5, "{v}");
                format!("{} decoded", v["action"].as_str().unwrap())
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    let hard = outputs.iter().map(|o| o.json()).find(|v| v["event_id"] == "e-hard").unwrap();
    let detail = hard["reasons"][0]["detail"].as_str().unwrap_or_default();
    assert!(hard["reasons"][0]["error"] == "path" && detail.contains("hard links"), "{hard}");
    eprintln!("{} swaps during the run; outcomes {outcomes:?}", swaps.load(Ordering::Relaxed));
    assert!(swaps.load(Ordering::Relaxed) > 10, "the swaps ran");

    let started = Instant::now();
    sigterm(&worker);
    let status = wait_exit(&mut worker, Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    swapping.join().unwrap();
    assert!(status.success(), "clean exit\n{log}");
    eprintln!("SIGTERM → exit in {:.2} s", started.elapsed().as_secs_f64());
}
