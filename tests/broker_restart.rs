//! The broker restarts (`scripts/kafka stop` and `start`, data kept) while a worker works through
//! a stream: the same worker process recovers by itself and every event gets a verdict, as a
//! static member (the default) and as a dynamic one.
//!
//! This restarts the broker the tests share, so it is a test binary of its own (cargo runs test
//! binaries one after another, so `cargo test` never runs it alongside other broker tests). It
//! refuses to run unless the broker at `PERISAI_TEST_BROKERS` is the one `scripts/kafka`
//! manages (same port, `PERISAI_KAFKA_STATE`), so it never stops a broker it cannot restart.

mod common;
mod fault_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fault_support::*;

const WAIT: Duration = Duration::from_secs(120);

/// The restart takes the broker away from every test in this binary: they run one at a time.
static BROKER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn kafka_script(port: &str, command: &str) -> Command {
    let mut cmd = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka"));
    cmd.arg(command).env("PERISAI_KAFKA_PORT", port);
    cmd
}

/// Dynamic membership (`kafka.static_membership = false`), the broker back as soon as it restarts.
#[tokio::test(flavor = "multi_thread")]
async fn worker_rides_out_a_broker_restart() {
    ride_out_a_broker_restart("faults-restart", false).await;
}

/// With static membership (the default) the broker is away longer than the 6 s session timeout: librdkafka
/// resets the member id and a commit queued meanwhile is refused as fenced (librdkafka#3437), a
/// fatal error. The worker makes a new consumer under the same name instead of exiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_static_member_rides_out_a_broker_restart_longer_than_its_session() {
    ride_out_a_broker_restart("faults-restart-static", true).await;
}

// The lock is held across the whole test on purpose: the broker is down for everyone meanwhile.
#[allow(clippy::await_holding_lock)]
async fn ride_out_a_broker_restart(name: &str, static_membership: bool) {
    let _alone = BROKER.lock().unwrap_or_else(|e| e.into_inner());
    let brokers = brokers();
    assert!(!brokers.contains(','), "one broker expected, got {brokers}");
    let port = brokers.rsplit(':').next().expect("host:port").to_string();
    let status = kafka_script(&port, "status").output().expect("scripts/kafka status");
    assert!(
        status.status.success(),
        "the broker at {brokers} is not one `scripts/kafka` runs and can restart (check PERISAI_KAFKA_STATE): {}",
        String::from_utf8_lossy(&status.stderr)
    );

    let topics = create_topics(&brokers, name, 3).await;
    let dir = temp_dir();
    let config = write_config(dir.path(), &brokers, &topics, "");
    if !static_membership {
        let text = std::fs::read_to_string(&config).expect("config");
        let text = text.replace("commit_interval_ms = 100\n", "commit_interval_ms = 100\nstatic_membership = false\n");
        std::fs::write(&config, text).expect("config");
    }
    let n = 10_000u32;
    // Still arriving when the broker restarts (after 1,500 verdicts, ~4 s in): 25 s of events.
    let feeding = feed(&brokers, &topics.input, 0..n, 400);
    let watcher = Watcher::start(&brokers, &topics.verdicts);
    let started = Instant::now();
    let mut worker = spawn_worker(&config, dir.path(), 0);
    assert!(watcher.wait_for(WAIT, |s| s.len() >= 1500), "worker before the restart\n{}", worker_log(dir.path(), 0));

    let before = watcher.len();
    let restart_began = Instant::now();
    let stop = kafka_script(&port, "stop").output().expect("scripts/kafka stop");
    assert!(stop.status.success(), "stop failed: {}", String::from_utf8_lossy(&stop.stderr));
    if static_membership {
        // Away past the consumer's 6 s session timeout, so its session is lost for certain.
        std::thread::sleep(Duration::from_secs(8).saturating_sub(restart_began.elapsed()));
    }
    let start = kafka_script(&port, "start").output().expect("scripts/kafka start");
    let broker_back = Instant::now();
    assert!(start.status.success(), "start failed: {}", String::from_utf8_lossy(&start.stderr));
    assert!(alive(&mut worker), "worker died with the broker\n{}", worker_log(dir.path(), 0));

    let done = watcher.wait_for(WAIT, all_seen(n));
    feeding.join().expect("the feeding thread");
    let seen = watcher.snapshot();
    let t = tally(&seen, n);
    let still_alive = alive(&mut worker);
    let (stall, stall_began) = longest_gap(&seen, restart_began);
    let first_after = seen.iter().map(|s| s.at).filter(|at| *at > broker_back).min();
    let log = worker_log(dir.path(), 0);
    let refusals = log.matches("produce failed, retrying").count();
    // The watchdog's repairs (kafka::watchdog): librdkafka lost every broker handle.
    let repairs = log.matches("bootstrap servers added again").count();
    let recreations = log.matches("starting a new consumer from the committed offsets").count();
    for line in log.lines().filter(|l| l.contains("bootstrap servers added again")) {
        println!("watchdog: {line}");
    }
    println!(
        "broker restart: events={n} verdicts_before_restart={before} restart_took={:.1}s longest_stall={:.1}s (from {:+.1}s of the restart) \
         first_verdict_after_broker_back_ms={:?} refused_sends={refusals} watchdog_repairs={repairs} static_membership={static_membership} \
         consumer_recreations={recreations} verdicts={} missing={} duplicates={} wall={:.1}s",
        (broker_back - restart_began).as_secs_f64(),
        stall.as_secs_f64(),
        (stall_began - restart_began).as_secs_f64(),
        first_after.map(|at| (at - broker_back).as_millis()),
        t.verdicts,
        t.missing.len(),
        t.duplicates,
        started.elapsed().as_secs_f64()
    );
    assert!(done && t.missing.is_empty(), "missing verdicts for {:?}\n{}", &t.missing[..t.missing.len().min(20)], worker_log(dir.path(), 0));
    assert!(still_alive, "the worker exited instead of recovering\n{}", worker_log(dir.path(), 0));
    assert!(log.contains(&format!("static_member={static_membership}")), "membership not as configured\n{log}");
    assert!(first_after.is_some(), "no verdict after the broker came back: the stream ended before the restart");
    sigterm(&worker);
    let status = wait_exit(&mut worker, Duration::from_secs(30));
    assert!(status.success(), "worker exit {status:?}\n{}", worker_log(dir.path(), 0));
    let committed: i64 = committed(&brokers, &topics.group, &topics.input, 3).iter().sum();
    assert_eq!(committed, n as i64, "the final drain commits every input record");
}

/// The watchdog's repair on a real client: a consumer whose only broker is unreachable (as after
/// librdkafka drops every handle) reaches the cluster once the watchdog adds the bootstrap servers.
#[test]
fn watchdog_repair_reconnects_a_client_without_brokers() {
    let _alone = BROKER.lock().unwrap_or_else(|e| e.into_inner());
    use perisai::kafka::watchdog::BrokerWatch;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let brokers = brokers();
    // Port 1 on loopback: nothing listens, so the client has no usable broker.
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
        .set("group.id", "watchdog-repair")
        .create()
        .expect("consumer");
    assert!(consumer.fetch_metadata(None, Duration::from_secs(3)).is_err(), "no broker should answer on port 1");
    let watch = BrokerWatch::new("consumer", &brokers, prometheus::IntCounter::new("repairs", "repairs").unwrap());
    watch.attach(consumer.client());
    assert!(watch.repair());
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(20)).expect("metadata after the repair");
    assert!(!metadata.brokers().is_empty());
}
