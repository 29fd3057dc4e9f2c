//! Live hash banks on a real Apache Kafka broker: a hash imported with the CLI blocks its media on
//! every worker of a group within seconds, a withdrawal lets it through again and survives a
//! restart, and a worker is not ready until the whole bank topic is loaded.

mod common;
mod fault_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fault_support::{scrape_metrics, Seen, Watcher};
use perisai::hash::exact::exact_hashes;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

const PARTITIONS: i32 = 3;

/// Polls the watcher until `done` holds (or `timeout` passes) and returns what it saw.
fn wait_for(watch: &Watcher, timeout: Duration, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
    watch.wait_for(timeout, done);
    watch.snapshot()
}

/// Uploads of the target image to every input partition, round after round: event ids
/// `t-ROUND-PARTITION`, plus a clean image `c-ROUND-PARTITION`.
struct Feeder {
    round: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feeder {
    fn start(brokers: &str, topic: &str, target: Vec<u8>, clean: Vec<u8>) -> Self {
        Self::paced(brokers, topic, target, clean, Duration::from_millis(100))
    }

    /// Rounds `pause` apart.
    fn paced(brokers: &str, topic: &str, target: Vec<u8>, clean: Vec<u8>, pause: Duration) -> Self {
        let round = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st, brokers, topic) = (round.clone(), stop.clone(), brokers.to_string(), topic.to_string());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let producer: FutureProducer = producer(&brokers);
            while !st.load(Ordering::Relaxed) {
                let n = r.load(Ordering::SeqCst) + 1;
                runtime.block_on(async {
                    for p in 0..PARTITIONS {
                        for (prefix, media) in [("t", &target), ("c", &clean)] {
                            let id = format!("{prefix}-{n}-{p}");
                            let payload = event_json(&id, media, "image/png");
                            let record = FutureRecord::to(&topic).key(&id).payload(&payload).partition(p);
                            producer.send(record, Timeout::After(Duration::from_secs(10))).await.map_err(|(e, _)| e).expect("produce");
                        }
                    }
                });
                // Published only once acknowledged: a round number read later means "sent after".
                r.store(n, Ordering::SeqCst);
                std::thread::sleep(pause);
            }
        });
        Self { round, stop, thread: Some(thread) }
    }

    /// The last round fully acknowledged.
    fn round(&self) -> u64 {
        self.round.load(Ordering::SeqCst)
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn round_of(event_id: &str) -> u64 {
    event_id.split('-').nth(1).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// Target verdicts from rounds after `after`, grouped by worker: (worker → actions).
fn target_actions_after(seen: &[Seen], after: u64) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.event_id.starts_with("t-") && round_of(&s.event_id) > after) {
        out.entry(s.worker.clone()).or_default().push(s.action.clone());
    }
    out
}

fn live_bank_config(dir: &Path, brokers: &str, topics: &Topics) -> std::path::PathBuf {
    write_config(dir, brokers, topics, "\n[[banks]]\nname = \"live\"\naction = \"block\"\n")
}

/// Three workers in one group, uploads flowing: an imported hash blocks on all three within
/// seconds; a re-import publishes nothing; withdrawn, the media is allowed again on all three; a
/// worker restarted after the withdrawal does not resurrect the hash.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_hash_blocks_on_every_worker_and_its_withdrawal_sticks() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "live", PARTITIONS).await;
    let dir = temp_dir();
    let config = live_bank_config(dir.path(), &brokers, &topics);
    let cfg = config.to_str().unwrap();
    let target = png(777, 32);
    let md5 = exact_hashes(&target).md5;

    let watch = Watcher::start(&brokers, &topics.verdicts);
    let mut workers: Vec<_> = (0..3).map(|n| spawn_worker(&config, dir.path(), n)).collect();
    let feeder = Feeder::start(&brokers, &topics.input, target.clone(), png(778, 32));

    // Every worker answers before anything is banked, and allows the target.
    let seen = wait_for(&watch, Duration::from_secs(90), |s| target_actions_after(s, 0).len() == 3);
    let before = target_actions_after(&seen, 0);
    assert_eq!(before.len(), 3, "all three workers answer: {before:?}\n{}", worker_log(dir.path(), 0));
    assert!(before.values().flatten().all(|a| a == "allow"), "{before:?}");

    // Import: blocks on all three.
    let list = dir.path().join("list.csv");
    write_file(&list, &format!("signal,hash,entry\nmd5,{},case-live-1\n", md5.to_uppercase()));
    let imported = Instant::now();
    let out = perisai_in(Path::new(env!("CARGO_MANIFEST_DIR")), &["bank", "import", "--config", cfg, "--bank", "live", "--format", "csv", list.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 published"), "{}", String::from_utf8_lossy(&out.stdout));
    let after_import = feeder.round();
    let blocked_everywhere = |s: &[Seen]| {
        let by = target_actions_after(s, after_import);
        by.len() == 3 && by.values().all(|actions| actions.iter().any(|a| a == "block"))
    };
    let seen = wait_for(&watch, Duration::from_secs(30), blocked_everywhere);
    assert!(blocked_everywhere(&seen), "not blocked on every worker: {:?}", target_actions_after(&seen, after_import));
    eprintln!("import → block on all three workers in {:.2} s (upload rounds every 100 ms)", imported.elapsed().as_secs_f64());
    // Within a few seconds every later upload is blocked, everywhere, naming the entry and the bank state.
    let settled = feeder.round() + 1;
    let seen = wait_for(&watch, Duration::from_secs(30), |s| target_actions_after(s, settled + 5).len() == 3);
    let later: Vec<&Seen> = seen.iter().filter(|s| s.event_id.starts_with("t-") && round_of(&s.event_id) > settled).collect();
    assert!(!later.is_empty());
    for s in &later {
        assert_eq!(s.action, "block", "{s:?}");
        assert_eq!(s.entry.as_deref(), Some("case-live-1"), "{s:?}");
        assert!(s.banks_version.is_some(), "verdicts name the bank state: {s:?}");
    }
    assert!(seen.iter().filter(|s| s.event_id.starts_with("c-")).all(|s| s.action == "allow"), "the clean image stays allowed");

    // Idempotent: the same list again publishes nothing.
    let out = perisai_in(Path::new(env!("CARGO_MANIFEST_DIR")), &["bank", "import", "--config", cfg, "--bank", "live", list.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 published") && text.contains("1 unchanged"), "{text}");
    // Export shows the live entry.
    let out = perisai_in(Path::new(env!("CARGO_MANIFEST_DIR")), &["bank", "export", "--config", cfg, "--bank", "live"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("signal,hash,entry\nmd5,{md5},case-live-1\n"));

    // Withdraw: allowed again on all three.
    let out = perisai_in(Path::new(env!("CARGO_MANIFEST_DIR")), &["bank", "withdraw", "--config", cfg, "--bank", "live", "--signal", "md5", &md5]);
    assert!(out.status.success());
    let after_withdrawal = feeder.round();
    let allowed_everywhere = |s: &[Seen]| {
        let by = target_actions_after(s, after_withdrawal);
        by.len() == 3 && by.values().all(|actions| actions.iter().any(|a| a == "allow"))
    };
    let seen = wait_for(&watch, Duration::from_secs(30), allowed_everywhere);
    assert!(allowed_everywhere(&seen), "not allowed again everywhere: {:?}", target_actions_after(&seen, after_withdrawal));
    let out = perisai_in(Path::new(env!("CARGO_MANIFEST_DIR")), &["bank", "export", "--config", cfg, "--bank", "live"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "signal,hash,entry\n");

    // A worker restarted after the withdrawal does not resurrect the hash.
    sigterm(&workers[0]);
    assert!(wait_exit(&mut workers[0], Duration::from_secs(60)).success());
    let old_names: BTreeSet<String> = seen.iter().map(|s| s.worker.clone()).collect();
    workers[0] = spawn_worker(&config, dir.path(), 3);
    let restarted = |s: &[Seen]| s.iter().filter(|v| v.event_id.starts_with("t-") && !old_names.contains(&v.worker)).count() >= 5;
    let seen = wait_for(&watch, Duration::from_secs(90), restarted);
    let from_new: Vec<&Seen> = seen.iter().filter(|v| v.event_id.starts_with("t-") && !old_names.contains(&v.worker)).collect();
    assert!(from_new.len() >= 5, "the restarted worker answered {} target uploads\n{}", from_new.len(), worker_log(dir.path(), 3));
    assert!(from_new.iter().all(|v| v.action == "allow"), "withdrawn hash came back after a restart: {from_new:?}");

    drop(feeder);
    for w in &workers {
        sigterm(w);
    }
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(60)).success());
    }
}

/// A worker started while the bank topic holds 100k entries (and some bad records) is not ready
/// until every entry is loaded, and its first verdict already uses the last of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_is_not_ready_until_the_whole_bank_topic_is_loaded() {
    const ENTRIES: u32 = 100_000;
    let brokers = brokers();
    let topics = create_topics(&brokers, "bootstrap", 1).await;
    let dir = temp_dir();
    let port = free_port();
    let config = write_config(dir.path(), &brokers, &topics, "\n[[banks]]\nname = \"bulk\"\naction = \"block\"\n");
    let text = std::fs::read_to_string(&config).unwrap().replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(&config, text).unwrap();

    // 100k PDQ entries (random, never all-zero), a few bad records, and last the target's md5.
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let value = |signal: &str, hash: &str, entry: &str, bank: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schema": "perisai.bank_entry/v1", "bank": bank, "signal": signal, "hash": hash,
            "entry": entry, "source": "test", "added_at": "2026-11-29T00:00:00Z"
        }))
        .unwrap()
    };
    let mut records: Vec<(String, Vec<u8>)> = (0..ENTRIES - 1)
        .map(|i| {
            let hash: String = (0..4).map(|_| format!("{:016x}", next() | 1)).collect();
            (format!("bulk/pdq/{hash}"), value("pdq", &hash, &format!("bulk-{i}"), "bulk"))
        })
        .collect();
    let zero = "0".repeat(64);
    records.push((format!("bulk/pdq/{zero}"), value("pdq", &zero, "blank", "bulk")));
    records.push((format!("nobank/md5/{}", "a".repeat(32)), value("md5", &"a".repeat(32), "x", "nobank")));
    records.push((format!("bulk/md5/{}", "b".repeat(32)), b"{not json".to_vec()));
    let target = png(4242, 32);
    let md5 = exact_hashes(&target).md5;
    records.push((format!("bulk/md5/{md5}"), value("md5", &md5, "late-entry", "bulk")));
    let produce_started = Instant::now();
    produce_all(&producer(&brokers), &topics.banks, &records).await;
    eprintln!("{} bank records produced in {:.1} s", records.len(), produce_started.elapsed().as_secs_f64());
    produce_all(&producer(&brokers), &topics.input, &[("m-first".into(), event_json("first", &target, "image/png"))]).await;

    let started = Instant::now();
    let mut worker = spawn_worker(&config, dir.path(), 0);
    let client = reqwest::Client::new();
    let mut not_ready = Vec::new();
    let ready_at = loop {
        assert!(started.elapsed() < Duration::from_secs(120), "never ready\n{}", worker_log(dir.path(), 0));
        match client.get(format!("http://127.0.0.1:{port}/readyz")).send().await {
            Ok(r) if r.status().is_success() => break started.elapsed(),
            Ok(r) => not_ready.push(r.text().await.unwrap_or_default()),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let m = scrape_metrics(port).await;
    let entries = |signal: &str| m.get(&format!("perisai_bank_entries{{bank=\"bulk\",signal=\"{signal}\"}}")).copied();
    assert_eq!(entries("pdq"), Some(f64::from(ENTRIES - 1)), "every PDQ entry loaded when ready");
    assert_eq!(entries("md5"), Some(1.0), "the last record loaded when ready");
    let rejected = |reason: &str| -> f64 {
        m.iter().filter(|(k, _)| k.starts_with("perisai_bank_records_rejected_total") && k.contains(reason)).map(|(_, v)| v).sum()
    };
    assert_eq!(rejected("zero_pdq"), 1.0);
    assert_eq!(rejected("undeclared_bank"), 1.0);
    assert_eq!(rejected("malformed_value"), 1.0);
    eprintln!("ready after {:.2} s; not-ready answers seen: {} (e.g. {:?})", ready_at.as_secs_f64(), not_ready.len(), not_ready.last());
    for text in &not_ready {
        assert!(text.starts_with("not ready: "), "readyz says why: {text:?}");
    }

    let outputs = read_until(&brokers, &[&topics.verdicts], Duration::from_secs(60), |o| !o.is_empty());
    assert_eq!(outputs.len(), 1);
    let v = outputs[0].json();
    assert_eq!(v["action"], "block", "{v}");
    assert_eq!(v["reasons"][0]["entry"], "late-entry", "{v}");
    assert_eq!(v["banks_version"], format!("0:{}", records.len()), "{v}");
    let log = worker_log(dir.path(), 0);
    assert!(!log.contains(&md5), "a bank hash reached the log");
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(60)).success());
}

/// A partner list carries the hash of an image everybody uploads: within seconds of it
/// flooding, one worker quarantines it fleet-wide and both workers send its matches to review
/// (flagged `quarantined`) instead of blocking; released by a person, it blocks again on both
/// and, though the flood goes on, is not quarantined again.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_entry_is_quarantined_on_every_worker_and_blocks_again_once_released() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "flood", PARTITIONS).await;
    let dir = temp_dir();
    let config = write_config(
        dir.path(),
        &brokers,
        &topics,
        "\n[[banks]]\nname = \"live\"\naction = \"block\"\nflood_max_matches_per_minute = 20\nflood_baseline_multiple = 10.0\n",
    );
    let cfg = config.to_str().unwrap();
    let target = png(9090, 32);
    let md5 = exact_hashes(&target).md5;
    let watch = Watcher::start(&brokers, &topics.verdicts);
    let mut workers: Vec<_> = (0..2).map(|n| spawn_worker(&config, dir.path(), n)).collect();
    let feeder = Feeder::start(&brokers, &topics.input, target.clone(), png(9091, 32));
    let seen = wait_for(&watch, Duration::from_secs(90), |s| target_actions_after(s, 0).len() == 2);
    assert_eq!(target_actions_after(&seen, 0).len(), 2, "both workers answer\n{}", worker_log(dir.path(), 0));

    let list = dir.path().join("meme.csv");
    write_file(&list, &format!("signal,hash,entry\nmd5,{md5},partner-meme\n"));
    assert!(perisai_in(Path::new(env!("CARGO_MANIFEST_DIR")), &["bank", "import", "--config", cfg, "--bank", "live", list.to_str().unwrap()]).status.success());
    let imported = feeder.round();
    // About 30 matching uploads a second: over 20 in a minute within a second or two.
    let quarantined_on_both = |s: &[Seen]| {
        let workers: BTreeSet<&str> = s
            .iter()
            .filter(|v| v.event_id.starts_with("t-") && round_of(&v.event_id) > imported && v.quarantined)
            .map(|v| v.worker.as_str())
            .collect();
        workers.len() == 2
    };
    let seen = wait_for(&watch, Duration::from_secs(30), quarantined_on_both);
    assert!(quarantined_on_both(&seen), "not quarantined on both: {:?}\n{}", target_actions_after(&seen, imported), worker_log(dir.path(), 0));
    let blocks_before = target_actions_after(&seen, imported).values().flatten().filter(|a| *a == "block").count();
    eprintln!("flood → quarantined on both workers after {blocks_before} blocked uploads");
    // Every later match is a review naming the quarantine.
    let settled = feeder.round() + 1;
    let seen = wait_for(&watch, Duration::from_secs(30), |s| target_actions_after(s, settled + 10).len() == 2);
    let later: Vec<&Seen> = seen.iter().filter(|v| v.event_id.starts_with("t-") && round_of(&v.event_id) > settled).collect();
    assert!(!later.is_empty());
    for v in &later {
        assert!(v.action == "review" && v.quarantined && v.entry.as_deref() == Some("partner-meme"), "{v:?}");
    }
    let logs = format!("{}{}", worker_log(dir.path(), 0), worker_log(dir.path(), 1));
    assert!(logs.contains("quarantined fleet-wide"), "the detecting worker says so");
    assert!(!logs.contains(&md5), "a bank hash reached the log");

    // Released: blocks again on both, and stays so while the flood goes on.
    let out = perisai_in(Path::new(env!("CARGO_MANIFEST_DIR")), &["bank", "release", "--config", cfg, "--bank", "live", "--signal", "md5", &md5]);
    assert!(out.status.success());
    let released = feeder.round();
    let blocked_on_both = |s: &[Seen]| {
        let by = target_actions_after(s, released);
        by.len() == 2 && by.values().all(|actions| actions.iter().any(|a| a == "block"))
    };
    let seen = wait_for(&watch, Duration::from_secs(30), blocked_on_both);
    assert!(blocked_on_both(&seen), "not blocking again on both: {:?}", target_actions_after(&seen, released));
    let settled = feeder.round() + 1;
    let seen = wait_for(&watch, Duration::from_secs(30), |s| target_actions_after(s, settled + 30).len() == 2);
    let later: Vec<&Seen> = seen.iter().filter(|v| v.event_id.starts_with("t-") && round_of(&v.event_id) > settled).collect();
    assert!(later.len() >= 30, "{} verdicts after the release", later.len());
    assert_eq!(later.iter().map(|v| v.worker.as_str()).collect::<BTreeSet<_>>().len(), 2);
    for v in &later {
        assert!(v.action == "block" && !v.quarantined, "after the release: {v:?}");
    }
    drop(feeder);
    for w in &workers {
        sigterm(w);
    }
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(60)).success());
    }
}

/// A flood spread over three workers, none of which sees enough of it to trip the limit alone:
/// about 60 matches a minute each against a limit of 100, 180 over the fleet. The workers share
/// their counts over the flood topic, so the entry is quarantined fleet-wide before any one of
/// them reaches 100.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_no_single_worker_sees_is_caught_fleet_wide() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "fleet-flood", PARTITIONS).await;
    let dir = temp_dir();
    let config = write_config(
        dir.path(),
        &brokers,
        &topics,
        "\n[[banks]]\nname = \"live\"\naction = \"block\"\nflood_max_matches_per_minute = 100\nflood_baseline_multiple = 10.0\n",
    );
    let cfg = config.to_str().unwrap();
    let target = png(9190, 32);
    let md5 = exact_hashes(&target).md5;
    let watch = Watcher::start(&brokers, &topics.verdicts);
    let mut workers: Vec<_> = (0..3).map(|n| spawn_worker(&config, dir.path(), n)).collect();
    // One target upload a second on each of the three partitions: one partition a worker.
    let feeder = Feeder::paced(&brokers, &topics.input, target.clone(), png(9191, 32), Duration::from_secs(1));
    let all_three = |s: &[Seen]| target_actions_after(s, feeder.round().saturating_sub(3)).len() == 3;
    let seen = wait_for(&watch, Duration::from_secs(90), all_three);
    assert!(all_three(&seen), "three workers answer: {:?}\n{}", target_actions_after(&seen, 0).keys(), worker_log(dir.path(), 0));

    let list = dir.path().join("meme.csv");
    write_file(&list, &format!("signal,hash,entry\nmd5,{md5},partner-meme\n"));
    assert!(perisai_in(Path::new(env!("CARGO_MANIFEST_DIR")), &["bank", "import", "--config", cfg, "--bank", "live", list.to_str().unwrap()]).status.success());
    let imported = feeder.round();
    let quarantined = |s: &[Seen]| s.iter().any(|v| v.event_id.starts_with("t-") && round_of(&v.event_id) > imported && v.quarantined);
    let seen = wait_for(&watch, Duration::from_secs(120), quarantined);
    assert!(quarantined(&seen), "never quarantined: {:?}\n{}", target_actions_after(&seen, imported), worker_log(dir.path(), 0));
    // Before the first quarantined verdict, no worker had blocked 100 of them: none could have
    // seen the flood alone.
    let first = seen.iter().filter(|v| v.event_id.starts_with("t-") && v.quarantined).map(|v| v.at).min().unwrap();
    let mut blocks: BTreeMap<&str, usize> = BTreeMap::new();
    for v in seen.iter().filter(|v| v.event_id.starts_with("t-") && round_of(&v.event_id) > imported && v.at < first && v.action == "block") {
        *blocks.entry(v.worker.as_str()).or_default() += 1;
    }
    eprintln!("blocked per worker before the quarantine: {blocks:?}");
    assert_eq!(blocks.len(), 3, "all three matched it: {blocks:?}");
    assert!(blocks.values().all(|&n| n < 100), "{blocks:?}");
    // The fleet counted over 100 in a minute; a few of those verdicts may reach the watcher late.
    assert!(blocks.values().sum::<usize>() > 80, "the fleet did: {blocks:?}");
    drop(feeder);
    for w in &workers {
        sigterm(w);
    }
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(60)).success());
    }
    // Read once the workers are gone: the detecting worker logs after the broker acknowledged
    // the quarantine, which the others may have applied (and the watcher seen) before that.
    let logs: String = (0..3).map(|n| worker_log(dir.path(), n)).collect();
    assert!(logs.contains("quarantined fleet-wide"), "the detecting worker says so");
    assert!(!logs.contains(&md5), "a bank hash reached the log");
}


/// Exported CSV is safe to open in a spreadsheet: entry ids that would run as formulas get an
/// apostrophe in front (OWASP's advice), and the export imports back unchanged; ids with
/// invisible direction marks are refused at import.
#[tokio::test(flavor = "multi_thread")]
async fn exports_are_safe_to_open_in_a_spreadsheet() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "csv-safe", 1).await;
    let dir = temp_dir();
    let config = live_bank_config(dir.path(), &brokers, &topics);
    let cfg = config.to_str().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let md5 = |i: u32| format!("{:032x}", 0xabc0_0000_u128 + u128::from(i));
    let ids = ["=HYPERLINK(\"\"http://evil.example\"\",\"\"open\"\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A2)", "case-plain"];
    let mut list = String::from("signal,hash,entry\n");
    for (i, id) in ids.iter().enumerate() {
        list.push_str(&format!("md5,{},\"{id}\"\n", md5(i as u32)));
    }
    list.push_str(&format!("md5,{},case\u{202E}txt.exe\n", md5(99)));
    let file = dir.path().join("list.csv");
    write_file(&file, &list);
    let out = perisai_in(root, &["bank", "import", "--config", cfg, "--bank", "live", file.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("5 published"), "{text}");
    assert!(text.contains("invisible formatting characters"), "the bidi override is refused: {text}");

    let out = perisai_in(root, &["bank", "export", "--config", cfg, "--bank", "live"]);
    assert!(out.status.success());
    let export = String::from_utf8(out.stdout).unwrap();
    let mut reader = csv::ReaderBuilder::new().from_reader(export.as_bytes());
    let cells: Vec<String> = reader.records().map(|r| r.unwrap()[2].to_string()).collect();
    assert_eq!(cells.len(), 5, "{export}");
    for cell in &cells {
        assert!(!cell.starts_with(['=', '+', '-', '@', '\t', '\r']), "a spreadsheet would evaluate {cell:?}");
    }
    assert!(cells.contains(&"case-plain".to_string()) && cells.contains(&"'@SUM(A1:A2)".to_string()), "{cells:?}");
    // The export is a list like any other: imported again, nothing changes.
    let exported = dir.path().join("export.csv");
    write_file(&exported, &export);
    let out = perisai_in(root, &["bank", "import", "--config", cfg, "--bank", "live", exported.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 published") && text.contains("5 unchanged"), "{text}");
}
