//! Delivery guarantees under faults, on a real Apache Kafka broker: workers SIGKILLed at
//! random points, a group scaled 1 → 3 → 1 while events keep arriving, and a verdict topic
//! that refuses every record for a while. Each test prints its figures (`--nocapture`).
//! The broker restart lives in `tests/broker_restart.rs`: it disturbs every client of the broker.

mod common;
mod fault_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use fault_support::*;

const WAIT: Duration = Duration::from_secs(120);

/// 10,000 events; the worker is SIGKILLed five times, each after a random number of its own
/// verdicts plus a random delay, and restarted: every event still gets a verdict.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_points_loses_nothing() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "faults-crash", 3).await;
    let dir = temp_dir();
    let config = write_config(dir.path(), &brokers, &topics, "");
    let n = 10_000u32;
    let feeding = feed(&brokers, &topics.input, 0..n, 160);
    let watcher = Watcher::start(&brokers, &topics.verdicts);
    let mut rng = rng("crash");
    let kills = 5;
    let started = Instant::now();

    let mut recoveries = Vec::new();
    let mut kill_points = Vec::new();
    let mut worker = None;
    for generation in 0..=kills {
        let spawned = Instant::now();
        let mut child = spawn_worker(&config, dir.path(), generation);
        let first = watcher.wait_for(WAIT, |s| by_worker(s, generation) > 0);
        assert!(first, "worker {generation} wrote no verdict within {WAIT:?}\n{}", worker_log(dir.path(), generation));
        let first_at = watcher.snapshot().iter().find(|s| s.worker.starts_with(&format!("worker{generation}-"))).unwrap().at;
        recoveries.push(first_at - spawned);
        if generation == kills {
            worker = Some(child);
            break;
        }
        // Events arrive for over a minute (160/s) and the five kills come within about 45 s
        // (≤ 1,500 verdicts each, ~6 s recoveries): every kill lands mid-stream.
        let target = random_between(&mut rng, 100, 1500) as usize;
        let delay = Duration::from_millis(random_between(&mut rng, 0, 300));
        assert!(
            watcher.wait_for(WAIT, |s| by_worker(s, generation) >= target),
            "worker {generation} stalled before {target} verdicts\n{}",
            worker_log(dir.path(), generation)
        );
        std::thread::sleep(delay);
        assert!(alive(&mut child), "worker {generation} exited by itself\n{}", worker_log(dir.path(), generation));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kill_points.push((target, delay));
    }

    let mut last = worker.expect("final worker");
    let done = watcher.wait_for(WAIT, all_seen(n));
    feeding.join().expect("the feeding thread");
    let seen = watcher.snapshot();
    let t = tally(&seen, n);
    sigterm(&last);
    let status = wait_exit(&mut last, Duration::from_secs(30));
    let recovery_ms: Vec<u128> = recoveries.iter().map(|d| d.as_millis()).collect();
    let redelivered = redelivered_by_generation(&seen, kills);
    for (k, (target, delay)) in kill_points.iter().enumerate() {
        println!(
            "crash: kill {} after {target} verdicts + {} ms: killed worker wrote {}, its successor re-did {} of them and wrote its first verdict {} ms after spawn",
            k + 1,
            delay.as_millis(),
            by_worker(&seen, k),
            redelivered[k + 1],
            recovery_ms[k + 1]
        );
    }
    println!(
        "crash: events={n} kills={kills} verdicts={} missing={} duplicates={} recovery_ms(spawn→first new verdict; first is cold start)={recovery_ms:?} wall={:.1}s",
        t.verdicts,
        t.missing.len(),
        t.duplicates,
        started.elapsed().as_secs_f64()
    );
    assert!(done && t.missing.is_empty(), "missing verdicts for {:?}\n{}", &t.missing[..t.missing.len().min(20)], worker_log(dir.path(), kills));
    assert!(status.success(), "final worker exit {status:?}\n{}", worker_log(dir.path(), kills));
    let committed: i64 = committed(&brokers, &topics.group, &topics.input, 3).iter().sum();
    assert_eq!(committed, n as i64, "the final drain commits every input record");
}

/// For each worker generation, how many of its verdicts answer events an earlier generation
/// had already answered (the re-delivery caused by the kill before it).
fn redelivered_by_generation(seen: &[Seen], last: usize) -> Vec<usize> {
    let mut answered = BTreeSet::new();
    (0..=last)
        .map(|g| {
            let prefix = format!("worker{g}-");
            let mine: Vec<&str> = seen.iter().filter(|s| s.worker.starts_with(&prefix)).map(|s| s.event_id.as_str()).collect();
            let again = mine.iter().filter(|e| answered.contains(*e)).count();
            answered.extend(mine);
            again
        })
        .collect()
}

/// One worker, then three, then one again, while events arrive at a steady rate: every event
/// gets a verdict, and nothing is re-delivered: on the scale-up the revoking worker drains and
/// commits on revoke; on the scale-down the stopping workers drain and commit before they exit
/// (static members, their partitions move once their sessions time out).
#[tokio::test(flavor = "multi_thread")]
async fn scale_one_three_one_while_producing() {
    let brokers = brokers();
    let partitions = 6;
    let topics = create_topics(&brokers, "faults-scale", partitions).await;
    let dir = temp_dir();
    let config = write_config(dir.path(), &brokers, &topics, "");
    let n = 6000u32;
    let watcher = Watcher::start(&brokers, &topics.verdicts);
    let started = Instant::now();
    let feeder = feed(&brokers, &topics.input, 0..n, 200);

    let mut a = spawn_worker(&config, dir.path(), 0);
    assert!(watcher.wait_for(WAIT, |s| by_worker(s, 0) >= 400), "worker 0 alone\n{}", worker_log(dir.path(), 0));
    let scaled_up = started.elapsed();
    let alone = by_worker(&watcher.snapshot(), 0);
    let mut b = spawn_worker(&config, dir.path(), 1);
    let mut c = spawn_worker(&config, dir.path(), 2);
    // Long enough in the three-worker shape that each worker does a real share of the work.
    let shared = watcher.wait_for(WAIT, |s| by_worker(s, 0) >= alone + 300 && by_worker(s, 1) >= 300 && by_worker(s, 2) >= 300);
    assert!(shared, "workers 1 and 2 got partitions\n{}\n{}", worker_log(dir.path(), 1), worker_log(dir.path(), 2));
    let scaled_down = started.elapsed();
    sigterm(&b);
    sigterm(&c);
    let (sb, sc) = (wait_exit(&mut b, Duration::from_secs(30)), wait_exit(&mut c, Duration::from_secs(30)));
    assert!(sb.success() && sc.success(), "scale-down exits {sb:?} {sc:?}");
    let before_alone = by_worker(&watcher.snapshot(), 0);

    feeder.join().expect("feeder");
    let fed = started.elapsed();
    let done = watcher.wait_for(WAIT, all_seen(n));
    let seen = watcher.snapshot();
    let t = tally(&seen, n);
    sigterm(&a);
    let status = wait_exit(&mut a, Duration::from_secs(30));
    let per_worker: Vec<usize> = (0..3).map(|k| by_worker(&seen, k)).collect();
    println!(
        "rebalance: events={n} partitions={partitions} verdicts={} missing={} duplicates={} per_worker={per_worker:?} \
         scale_up_at={:.1}s scale_down_at={:.1}s feed_done_at={:.1}s all_done_at={:.1}s",
        t.verdicts,
        t.missing.len(),
        t.duplicates,
        scaled_up.as_secs_f64(),
        scaled_down.as_secs_f64(),
        fed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(done && t.missing.is_empty(), "missing verdicts for {:?}", &t.missing[..t.missing.len().min(20)]);
    assert!(per_worker[0] > before_alone, "worker 0 took the partitions back after the scale-down");
    // Every hand-over here is graceful: the worker giving partitions up drains and commits before
    // they move, so nothing is answered twice.
    assert_eq!(t.duplicates, 0, "graceful rebalances re-delivered events");
    assert!(status.success(), "worker 0 exit {status:?}\n{}", worker_log(dir.path(), 0));
    let committed: i64 = committed(&brokers, &topics.group, &topics.input, partitions).iter().sum();
    assert_eq!(committed, n as i64, "the final drain commits every input record");
}

/// Input offsets `< committed[p]` that have no verdict in `answered`: must always be empty.
fn unanswered_commits(committed: &[i64], answered: &BTreeSet<(i32, i64)>) -> Vec<(i32, i64)> {
    let mut bad = Vec::new();
    for (p, &c) in committed.iter().enumerate() {
        bad.extend((0..c).map(|o| (p as i32, o)).filter(|k| !answered.contains(k)));
    }
    bad
}

/// The verdict topic refuses every record (its `max.message.bytes` set to 1) for 12 s while
/// events keep arriving. Throughout, no committed input offset passes an event whose verdict
/// the broker has not acknowledged; once the topic is writable again, every event gets one.
#[tokio::test(flavor = "multi_thread")]
async fn verdict_outage_never_commits_unanswered_events() {
    let brokers = brokers();
    let partitions = 3;
    let topics = create_topics(&brokers, "faults-outage", partitions).await;
    let dir = temp_dir();
    let config = write_config(dir.path(), &brokers, &topics, "");
    let n = 4000u32;
    let watcher = Watcher::start(&brokers, &topics.verdicts);
    let started = Instant::now();
    let feeder = feed(&brokers, &topics.input, 0..n, 150);
    let mut worker = spawn_worker(&config, dir.path(), 0);
    assert!(watcher.wait_for(WAIT, |s| s.len() >= 300), "healthy phase\n{}", worker_log(dir.path(), 0));

    set_topic_config(&brokers, &topics.verdicts, &[("max.message.bytes", "1")]).await;
    let outage_start = Instant::now();
    let outage = Duration::from_secs(12);
    let mut samples = Vec::new();
    while outage_start.elapsed() < outage {
        samples.push((outage_start.elapsed(), committed(&brokers, &topics.group, &topics.input, partitions)));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every verdict the broker accepted before this point; later ones cannot justify earlier commits.
    let acknowledged = watcher.caught_up(Duration::from_secs(30));
    let input_ends: i64 = end_offsets(&brokers, &topics.input).values().sum();
    set_topic_config(&brokers, &topics.verdicts, &[]).await;
    let restored = Instant::now();
    let outage_taken = restored - outage_start;

    let answered: BTreeSet<(i32, i64)> = acknowledged.iter().map(|s| s.source).collect();
    for (at, offsets) in &samples {
        let bad = unanswered_commits(offsets, &answered);
        assert!(
            bad.is_empty(),
            "{:.1}s into the outage, committed {offsets:?} passes {} events without a verdict, e.g. {:?}",
            at.as_secs_f64(),
            bad.len(),
            &bad[..bad.len().min(10)]
        );
    }
    // The outage was real: nothing got through after the in-flight batches at its start.
    let grace = Duration::from_secs(3);
    let leaked = acknowledged.iter().filter(|s| s.at > outage_start + grace).count();
    assert_eq!(leaked, 0, "verdicts accepted during the outage: the fault was not injected");
    let committed_during: i64 = samples.last().unwrap().1.iter().sum();
    let waiting = input_ends - committed_during;
    assert!(waiting > 0, "events were waiting on the outage");

    let done = watcher.wait_for(WAIT, all_seen(n));
    feeder.join().expect("feeder");
    let seen = watcher.snapshot();
    let t = tally(&seen, n);
    let recovery = seen.iter().map(|s| s.at).filter(|at| *at > restored).min().map(|at| at - restored);
    sigterm(&worker);
    let status = wait_exit(&mut worker, Duration::from_secs(30));
    let sums: Vec<i64> = samples.iter().map(|(_, o)| o.iter().sum()).collect();
    // A topic that refuses every record: each verdict is refused whole, then compact, then retried.
    let log = worker_log(dir.path(), 0);
    let refusals = log.matches("produce failed, retrying").count() + log.matches("refused this event's verdict").count();
    println!(
        "outage: events={n} outage={:.1}s commit_samples={} committed_sum_during=[{}..{}] verdicts_acked_before_restore={} \
         input_at_restore={input_ends} waiting_at_restore={waiting} refused_sends={refusals} recovery_after_restore_ms={:?} verdicts={} missing={} duplicates={} wall={:.1}s",
        outage_taken.as_secs_f64(),
        samples.len(),
        sums.iter().min().unwrap(),
        sums.iter().max().unwrap(),
        acknowledged.len(),
        recovery.map(|d| d.as_millis()),
        t.verdicts,
        t.missing.len(),
        t.duplicates,
        started.elapsed().as_secs_f64()
    );
    assert!(done && t.missing.is_empty(), "missing verdicts for {:?}\n{}", &t.missing[..t.missing.len().min(20)], worker_log(dir.path(), 0));
    assert!(refusals > 0, "the worker saw its verdicts refused and retried them");
    assert!(status.success(), "worker exit {status:?}\n{}", worker_log(dir.path(), 0));
    let committed: i64 = committed(&brokers, &topics.group, &topics.input, partitions).iter().sum();
    assert_eq!(committed, n as i64, "the final drain commits every input record");
}
