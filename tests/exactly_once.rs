//! Exactly-once delivery (`kafka.delivery = "exactly_once"`) on a real Apache Kafka broker:
//! through SIGKILLs at random points, a verdict topic that refuses every record for a while
//! (abort and rewind), and a second worker with the same transactional.id (fencing), a
//! read_committed consumer sees each event's verdict exactly once. Each test prints its figures
//! (`--nocapture`).

mod common;
mod fault_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use fault_support::*;

const WAIT: Duration = Duration::from_secs(120);
/// Small enough to refuse any verdict batch (hundreds of bytes), large enough for the
/// transaction markers the broker writes on commit and abort (under 100 bytes). At 1 byte the
/// broker cannot write an abort marker and that transactional.id stays stuck until a restart.
const REFUSE_VERDICTS: &str = "200";

/// The shared test config in exactly-once mode, serving metrics on `port`.
fn eos_config(dir: &Path, brokers: &str, topics: &Topics, name: &str, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(write_config(dir, brokers, topics, "")).expect("config");
    let text = text
        // A shorter transaction timeout than the default bounds how long a wedged abort can take.
        .replace("commit_interval_ms = 100\n", "commit_interval_ms = 100\ndelivery = \"exactly_once\"\ntransaction_timeout_ms = 20000\n")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
    assert!(text.contains("exactly_once") && text.contains(&port.to_string()), "config template changed:\n{text}");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Verdicts written by the process `pid` (the `perisai.worker` header ends in `-pid`).
fn by_pid(seen: &[Seen], pid: u32) -> usize {
    let suffix = format!("-{pid}");
    seen.iter().filter(|s| s.worker.ends_with(&suffix)).count()
}

/// `perisai_transactions_total` by outcome, from a worker's /metrics (0 when unreachable).
async fn transactions(port: u16) -> (u64, u64) {
    let m = scrape_metrics(port).await;
    let get = |outcome: &str| m.get(&format!("perisai_transactions_total{{outcome=\"{outcome}\"}}")).copied().unwrap_or(0.0) as u64;
    (get("committed"), get("aborted"))
}

/// Mean commit duration in ms from a worker's /metrics (NaN when there was none).
async fn mean_commit_ms(port: u16) -> f64 {
    let m = scrape_metrics(port).await;
    let get = |name: &str| m.get(&format!("perisai_transaction_commit_duration_seconds_{name}")).copied().unwrap_or(0.0);
    get("sum") / get("count") * 1000.0
}

/// 10,000 events; the worker is SIGKILLed five times, each after a random number of its own
/// committed verdicts plus a random delay, and restarted under the same replica name. A
/// read_committed reader then sees every event's verdict exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_points_verdicts_exactly_once() {
    let brokers = brokers();
    let partitions = 3;
    let topics = create_topics(&brokers, "eos-crash", partitions).await;
    let dir = temp_dir();
    let n = 10_000u32;
    let feeding = feed(&brokers, &topics.input, 0..n, 160);
    let committed_view = Watcher::start(&brokers, &topics.verdicts);
    let uncommitted_view = Watcher::start_with(&brokers, &topics.verdicts, "read_uncommitted");
    let mut rng = rng("eos-crash");
    let kills = 5;
    // Restarts of one replica keep its name, as a Kubernetes container restart keeps its pod's.
    let replica = unique("eos-crash");
    let started = Instant::now();

    let mut recoveries = Vec::new();
    let mut kill_points = Vec::new();
    let mut pids = Vec::new();
    let mut txns = (0u64, 0u64);
    let mut last = None;
    for generation in 0..=kills {
        let port = free_port();
        let config = eos_config(dir.path(), &brokers, &topics, &format!("gen{generation}"), port);
        let spawned = Instant::now();
        let mut child = spawn_worker_as(&config, dir.path(), generation, &replica);
        let pid = child.id();
        pids.push(pid);
        let first = committed_view.wait_for(WAIT, |s| by_pid(s, pid) > 0);
        assert!(first, "worker {generation} committed no verdict within {WAIT:?}\n{}", worker_log(dir.path(), generation));
        let first_at = committed_view.snapshot().iter().find(|s| s.worker.ends_with(&format!("-{pid}"))).unwrap().at;
        recoveries.push(first_at - spawned);
        if generation == kills {
            last = Some((child, port));
            break;
        }
        // Events arrive for over a minute (160/s) and the five kills come within about 45 s
        // (≤ 1,500 verdicts each, ~6 s recoveries): every kill lands mid-stream.
        let target = random_between(&mut rng, 100, 1500) as usize;
        let delay = Duration::from_millis(random_between(&mut rng, 0, 300));
        assert!(
            committed_view.wait_for(WAIT, |s| by_pid(s, pid) >= target),
            "worker {generation} stalled before {target} verdicts\n{}",
            worker_log(dir.path(), generation)
        );
        std::thread::sleep(delay);
        // Counted just before the kill: a commit or two may still land after the scrape.
        let (c, a) = transactions(port).await;
        txns = (txns.0 + c, txns.1 + a);
        assert!(alive(&mut child), "worker {generation} exited by itself\n{}", worker_log(dir.path(), generation));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kill_points.push((target, delay));
    }

    let (mut worker, port) = last.expect("final worker");
    let done = committed_view.wait_for(WAIT, all_seen(n));
    feeding.join().expect("the feeding thread");
    let all_done = started.elapsed();
    let (c, a) = transactions(port).await;
    txns = (txns.0 + c, txns.1 + a);
    let commit_ms = mean_commit_ms(port).await;
    sigterm(&worker);
    let status = wait_exit(&mut worker, Duration::from_secs(30));
    let seen = committed_view.settle(Duration::from_secs(3), WAIT);
    let raw = uncommitted_view.settle(Duration::from_secs(3), WAIT);
    let t = tally(&seen, n);
    let raw_t = tally(&raw, n);
    let recovery_ms: Vec<u128> = recoveries.iter().map(|d| d.as_millis()).collect();
    for (k, (target, delay)) in kill_points.iter().enumerate() {
        println!(
            "eos crash: kill {} after {target} committed verdicts + {} ms: killed worker committed {}, successor's first committed verdict {} ms after spawn",
            k + 1,
            delay.as_millis(),
            by_pid(&seen, pids[k]),
            recovery_ms[k + 1]
        );
    }
    println!(
        "eos crash: events={n} kills={kills} read_committed: verdicts={} missing={} duplicates={}; read_uncommitted: records={} duplicates={} \
         (verdicts of transactions aborted or cut off by a kill); transactions committed>={} aborted>={} (scraped before each kill) \
         recovery_ms(spawn→first committed verdict; first is cold start)={recovery_ms:?} all_verdicts_at={:.1}s throughput={:.0} events/s incl. kills \
         last worker's mean commit={commit_ms:.1}ms",
        t.verdicts,
        t.missing.len(),
        t.duplicates,
        raw_t.verdicts,
        raw_t.duplicates,
        txns.0,
        txns.1,
        all_done.as_secs_f64(),
        f64::from(n) / all_done.as_secs_f64()
    );
    assert_exactly_once(done, &t, &worker_log(dir.path(), kills));
    assert_eq!(t.verdicts, n as usize);
    assert!(status.success(), "final worker exit {status:?}\n{}", worker_log(dir.path(), kills));
    assert_all_committed(&brokers, &topics, partitions, n);
}

/// The verdict topic refuses every verdict (`max.message.bytes` = 200) for 8 s while events keep
/// arriving: each transaction that meets a refusal is aborted and the input rewound; once the
/// topic is writable again every event gets exactly one committed verdict.
#[tokio::test(flavor = "multi_thread")]
async fn verdict_refusal_aborts_rewinds_and_stays_exactly_once() {
    let brokers = brokers();
    let partitions = 3;
    let topics = create_topics(&brokers, "eos-outage", partitions).await;
    let dir = temp_dir();
    let port = free_port();
    let config = eos_config(dir.path(), &brokers, &topics, "outage", port);
    let n = 3000u32;
    let committed_view = Watcher::start(&brokers, &topics.verdicts);
    let uncommitted_view = Watcher::start_with(&brokers, &topics.verdicts, "read_uncommitted");
    let started = Instant::now();
    let feeder = feed(&brokers, &topics.input, 0..n, 150);
    let mut worker = spawn_worker_as(&config, dir.path(), 0, &unique("eos-outage"));
    assert!(committed_view.wait_for(WAIT, |s| s.len() >= 300), "healthy phase\n{}", worker_log(dir.path(), 0));
    let (committed_before, aborted_before) = transactions(port).await;

    set_topic_config(&brokers, &topics.verdicts, &[("max.message.bytes", REFUSE_VERDICTS)]).await;
    let outage_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = transactions(port).await;
    let at_restore = committed_view.len();
    set_topic_config(&brokers, &topics.verdicts, &[]).await;
    let restored = Instant::now();

    let done = committed_view.wait_for(WAIT, all_seen(n));
    feeder.join().expect("feeder");
    let (committed_txns, aborted_txns) = transactions(port).await;
    let commit_ms = mean_commit_ms(port).await;
    sigterm(&worker);
    let status = wait_exit(&mut worker, Duration::from_secs(30));
    let seen = committed_view.settle(Duration::from_secs(3), WAIT);
    let raw = uncommitted_view.settle(Duration::from_secs(3), WAIT);
    let t = tally(&seen, n);
    let raw_t = tally(&raw, n);
    let log = worker_log(dir.path(), 0);
    let rewinds = log.matches("input rewound to the last committed transaction").count();
    let recovery = seen.iter().map(|s| s.at).filter(|at| *at > restored).min().map(|at| at - restored);
    let grace = Duration::from_secs(3);
    let leaked = seen.iter().filter(|s| s.at > outage_start + grace && s.at < restored).count();
    println!(
        "eos outage: events={n} outage={:.1}s transactions before: committed={committed_before} aborted={aborted_before}; \
         at restore: committed={} aborted={}; at the end: committed={committed_txns} aborted={aborted_txns} mean_commit={commit_ms:.1}ms; rewinds={rewinds} \
         verdicts_committed_during_outage(after {}s grace)={leaked} verdicts_at_restore={at_restore} recovery_after_restore_ms={:?} \
         read_committed: verdicts={} missing={} duplicates={}; read_uncommitted: records={} duplicates={} wall={:.1}s",
        restored.duration_since(outage_start).as_secs_f64(),
        during.0,
        during.1,
        grace.as_secs(),
        recovery.map(|d| d.as_millis()),
        t.verdicts,
        t.missing.len(),
        t.duplicates,
        raw_t.verdicts,
        raw_t.duplicates,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(leaked, 0, "verdicts were committed while the topic refused every record: the fault was not injected");
    assert!(during.1 > aborted_before, "the refusals aborted transactions\n{log}");
    assert!(rewinds > 0, "the aborts rewound the input\n{log}");
    assert_exactly_once(done, &t, &log);
    assert!(status.success(), "worker exit {status:?}\n{log}");
    assert_all_committed(&brokers, &topics, partitions, n);
}

/// A second worker with the same transactional.id fences the first: the first stops with a
/// non-zero exit naming the fencing and never produces again, the second takes over, and every
/// verdict is still there exactly once. (Two replicas on different hosts under one name; on one
/// host the second would find the name claimed and take one of its own, so here the two reach
/// the same id from different names and prefixes: `perisai-` + `eos-twin-N`, `perisai-eos-` +
/// `twin-N`.)
#[tokio::test(flavor = "multi_thread")]
async fn same_transactional_id_fences_the_older_worker() {
    let brokers = brokers();
    let partitions = 3;
    let topics = create_topics(&brokers, "eos-fence", partitions).await;
    let dir = temp_dir();
    let n = 3000u32;
    let committed_view = Watcher::start(&brokers, &topics.verdicts);
    let feeder = feed(&brokers, &topics.input, 0..n, 200);
    let config_a = eos_config(dir.path(), &brokers, &topics, "a", free_port());
    let config_b = eos_config(dir.path(), &brokers, &topics, "b", free_port());
    let text = std::fs::read_to_string(&config_b).expect("config b");
    let text = text.replace("commit_interval_ms = 100\n", "commit_interval_ms = 100\ntransactional_id_prefix = \"perisai-eos-\"\n");
    std::fs::write(&config_b, text).expect("config b");
    let twin = unique("eos-twin");
    let mut a = spawn_worker_as(&config_a, dir.path(), 0, &twin);
    assert!(committed_view.wait_for(WAIT, |s| s.len() >= 300), "worker a\n{}", worker_log(dir.path(), 0));
    let mut b = spawn_worker_as(&config_b, dir.path(), 1, twin.strip_prefix("eos-").expect("unique keeps the prefix"));
    let (pid_a, pid_b) = (a.id(), b.id());
    let fenced_at = Instant::now();
    let status_a = wait_exit(&mut a, Duration::from_secs(60));
    let a_exit = fenced_at.elapsed();
    let a_total = by_pid(&committed_view.snapshot(), pid_a);
    let log_a = worker_log(dir.path(), 0);

    feeder.join().expect("feeder");
    let done = committed_view.wait_for(WAIT, all_seen(n));
    sigterm(&b);
    let status_b = wait_exit(&mut b, Duration::from_secs(30));
    let seen = committed_view.settle(Duration::from_secs(3), WAIT);
    let t = tally(&seen, n);
    println!(
        "eos fence: events={n} worker a exited {:.1}s after b started ({status_a:?}); a committed {} verdicts in all ({a_total} when it exited), b {}; \
         verdicts={} missing={} duplicates={}",
        a_exit.as_secs_f64(),
        by_pid(&seen, pid_a),
        by_pid(&seen, pid_b),
        t.verdicts,
        t.missing.len(),
        t.duplicates
    );
    assert!(!status_a.success(), "the fenced worker exits non-zero\n{log_a}");
    assert!(log_a.contains("fenced"), "the fenced worker says so\n{log_a}");
    assert_exactly_once(done, &t, &worker_log(dir.path(), 1));
    assert!(status_b.success(), "worker b exit {status_b:?}\n{}", worker_log(dir.path(), 1));
}

/// Every event has a verdict, and no event has two, as the read_committed reader saw them.
fn assert_exactly_once(done: bool, t: &Tally, log: &str) {
    assert!(done && t.missing.is_empty(), "missing verdicts for {:?}\n{log}", &t.missing[..t.missing.len().min(20)]);
    assert_eq!(t.duplicates, 0, "a read_committed reader saw verdicts twice");
}

/// The group's committed offsets cover every input record: the last transaction was committed.
fn assert_all_committed(brokers: &str, topics: &Topics, partitions: i32, n: u32) {
    let committed: i64 = committed(brokers, &topics.group, &topics.input, partitions).iter().sum();
    assert_eq!(committed, n as i64, "the final transaction commits every input offset");
}
