//! A running worker reloads its policy on SIGHUP and when its config file changes, under load and
//! on the real broker: verdicts before the reload carry the old version, after it the new one,
//! never a mix within one partition's order, none lost or duplicated; a file with an error is
//! refused and the old policy keeps deciding; SIGHUP never kills the worker.

mod common;
mod fault_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fault_support::{feed, produce_events_range, scrape_metrics, tally, Seen, Watcher};

/// The worker's config with its metrics on `port` and the given `[policy]` table.
fn config_text(base: &str, port: u16, policy: &str) -> String {
    format!("{}\n{policy}\n", base.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\"")))
}

fn policy(version: &str, review: f32, block: f32) -> String {
    format!("[policy]\nversion = \"{version}\"\n[policy.bands]\nreview = {review}\nblock = {block}\n")
}

/// Replaces the file in one step, as a ConfigMap update does (a reader never sees half a file).
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn sighup(pid: u32) {
    let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}

/// Waits until the worker's log holds `text` `times` times.
fn wait_log(dir: &Path, text: &str, times: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while worker_log(dir, 1).matches(text).count() < times {
        assert!(Instant::now() < deadline, "no {text:?} (x{times}) in the worker log:\n{}", worker_log(dir, 1));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn versions(seen: &[Seen], range: std::ops::Range<u32>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in seen {
        let i: u32 = s.event_id.trim_start_matches("e-").parse().unwrap();
        if range.contains(&i) {
            *out.entry(s.policy.clone()).or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_reloads_under_load_without_losing_an_event() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "reload", 2).await;
    let dir = temp_dir();
    let port = free_port();
    let config = write_config(dir.path(), &brokers, &topics, "");
    let base = std::fs::read_to_string(&config).unwrap();
    replace_file(&config, &config_text(&base, port, &policy("v1", 0.8, 0.98)));
    let mut worker = spawn_worker(&config, dir.path(), 1);
    let watch = Watcher::start(&brokers, &topics.verdicts);

    // Under load (about 300 events/s for 10 s), a new policy file and SIGHUP.
    let feeder = feed(&brokers, &topics.input, 0..3000, 300);
    watch.wait_for(Duration::from_secs(60), |seen| seen.len() >= 900);
    replace_file(&config, &config_text(&base, port, &policy("v2", 0.5, 0.9)));
    sighup(worker.id());
    wait_log(dir.path(), "policy reloaded", 1, Duration::from_secs(10));
    feeder.join().unwrap();
    assert!(watch.wait_for(Duration::from_secs(60), fault_support::all_seen(3000)), "every event answered");
    let seen = watch.snapshot();
    let t = tally(&seen, 3000);
    assert!(t.missing.is_empty() && t.duplicates == 0, "{t:?}");
    let counts = versions(&seen, 0..3000);
    assert!(counts.get("v1").is_some_and(|&n| n >= 900) && counts.get("v2").is_some_and(|&n| n > 0), "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    // Within each input partition, in offset order: the old version, then the new one, never back.
    let mut by_partition: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for s in &seen {
        by_partition.entry(s.source.0).or_default().push((s.source.1, s.policy.clone()));
    }
    for (partition, mut verdicts) in by_partition {
        verdicts.sort();
        let switched = verdicts.iter().position(|(_, v)| v == "v2").unwrap_or(verdicts.len());
        assert!(verdicts[..switched].iter().all(|(_, v)| v == "v1"), "partition {partition}");
        assert!(verdicts[switched..].iter().all(|(_, v)| v == "v2"), "partition {partition}: a v1 verdict after v2");
    }

    // A file with an error (bands inverted) is refused, whether it is noticed as a change or
    // signalled; the old policy keeps deciding and the worker stays up.
    replace_file(&config, &config_text(&base, port, &policy("v3", 0.9, 0.5)));
    wait_log(dir.path(), "policy reload refused", 1, Duration::from_secs(10));
    sighup(worker.id());
    wait_log(dir.path(), "policy reload refused", 2, Duration::from_secs(10));
    assert!(worker.try_wait().unwrap().is_none(), "SIGHUP did not stop the worker");
    produce_events_range(&brokers, &topics.input, 3000..3100).await;
    assert!(watch.wait_for(Duration::from_secs(60), fault_support::all_seen(3100)));
    assert_eq!(versions(&watch.snapshot(), 3000..3100), BTreeMap::from([("v2".to_string(), 100)]));

    // A corrected file, no signal: the change is noticed and applied.
    replace_file(&config, &config_text(&base, port, &policy("v3", 0.6, 0.95)));
    wait_log(dir.path(), "policy reloaded", 2, Duration::from_secs(10));
    produce_events_range(&brokers, &topics.input, 3100..3200).await;
    assert!(watch.wait_for(Duration::from_secs(60), fault_support::all_seen(3200)));
    assert_eq!(versions(&watch.snapshot(), 3100..3200), BTreeMap::from([("v3".to_string(), 100)]));

    let m = scrape_metrics(port).await;
    assert_eq!(m.get("perisai_policy_reload_total{result=\"applied\"}"), Some(&2.0), "{m:?}");
    assert!(m.get("perisai_policy_reload_total{result=\"error\"}").is_some_and(|&n| n >= 2.0), "{m:?}");
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
    let t = tally(&watch.snapshot(), 3200);
    assert!(t.missing.is_empty() && t.duplicates == 0, "{t:?}");
}
