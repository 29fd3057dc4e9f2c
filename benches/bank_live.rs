//! Live hash banks on a real Apache Kafka broker: time to protection, start-up load, memory.
//!
//! ```text
//! scripts/kafka start
//! cargo bench --bench bank_live -- protection [--workers 3] [--steady 200] [--rate 1] [--burst 10000]
//! cargo bench --bench bank_live -- bootstrap [--entries 10000000]
//! cargo bench --bench bank_live -- memory [--signal pdq|md5|sha256] [--entries N]
//! ```
//!
//! `protection`: N workers (subprocesses of the release `perisai run`) in one group screen a
//! steady stream of uploads (100 events/s per worker, exact hashes only) while bank records are
//! appended to the bank topic (LogAppendTime): first `--steady` records at `--rate` per second,
//! then `--burst` records at once. Every verdict names the bank state that decided it
//! (`banks_version`: the next offset per bank topic partition), so for each record and worker the
//! time to protection is the first verdict of that worker whose state includes the record, minus
//! the record's append time. Reported as p50/p99 over (record, worker) pairs and over records
//! taking the slowest worker ("on every worker"). Resolution: the gap between a worker's verdicts
//! (~10 ms). As a check that "included" means "blocks", every 20th steady record's media is
//! uploaded once to each partition afterwards and must be blocked.
//!
//! `bootstrap`: appends `--entries` PDQ records to a fresh bank topic, then starts a worker and
//! times it from spawn until `/readyz` answers 200; reads its VmRSS/VmHWM and compares with a
//! worker started on an empty bank topic, for bytes per entry.
//!
//! `memory`: in-process, a bank of `--entries` entries of one signal through the ordinary
//! `Bank::upsert` (unique 11-character entry ids), RSS before and after, bytes per entry.
//!
//! `PERISAI_TEST_BROKERS` names the broker (default 127.0.0.1:19092); `PERISAI_BENCH_BIN`
//! overrides the worker binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use perisai::bank::{Bank, ParsedHash};
use perisai::config::{BankSettings, OnBadRow};
use perisai::event::Action;
use perisai::hash::exact::exact_hashes;
use perisai::hash::pdq::PdqHash;

#[path = "support/live.rs"]
mod live;

use live::{arg, brokers, die, free_port, perisai_binary, unique};

const PARTITIONS: i32 = 3;

/// (name, partitions, topic configs)
type TopicSpec<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

async fn create_topics(brokers: &str, topics: &[TopicSpec<'_>]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions, config)| {
            config.iter().fold(NewTopic::new(name, *partitions, TopicReplication::Fixed(1)), |t, (k, v)| t.set(k, v))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&new, &opts).await.unwrap_or_else(|e| die(&format!("create topics: {e}"))) {
        r.unwrap_or_else(|(t, e)| die(&format!("create topic {t}: {e}")));
    }
}

struct Topics {
    input: String,
    verdicts: String,
    dlq: String,
    banks: String,
    group: String,
}

async fn fresh_topics(brokers: &str, name: &str) -> Topics {
    let base = unique(name);
    let t = Topics {
        input: format!("{base}.uploads"),
        verdicts: format!("{base}.verdicts"),
        dlq: format!("{base}.dlq"),
        banks: format!("{base}.banks"),
        group: format!("{base}.group"),
    };
    let compact: &[(&str, &str)] = &[("cleanup.policy", "compact"), ("message.timestamp.type", "LogAppendTime")];
    create_topics(brokers, &[(&t.input, PARTITIONS, &[]), (&t.verdicts, PARTITIONS, &[]), (&t.dlq, 1, &[]), (&t.banks, 1, compact)]).await;
    t
}

fn write_config(dir: &Path, brokers: &str, t: &Topics, port: u16, n: usize) -> PathBuf {
    let path = dir.join(format!("worker-{n}.toml"));
    let text = format!(
        "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{group}\"\ninput_topic = \"{input}\"\nverdict_topic = \"{verdicts}\"\n\
         dlq_topic = \"{dlq}\"\nbanks_topic = \"{banks}\"\ncommit_interval_ms = 200\n\n\
         [kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\n\
         [pdq]\nenabled = true\n\n[classifier]\nenabled = false\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [log]\nlevel = \"warn\"\n\n[[banks]]\nname = \"bench\"\naction = \"block\"\n",
        group = t.group,
        input = t.input,
        verdicts = t.verdicts,
        dlq = t.dlq,
        banks = t.banks,
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn spawn_worker(config: &Path, log: &Path, name: &str) -> Child {
    Command::new(perisai_binary())
        .args(["run", "--config"])
        .arg(config)
        .env("HOSTNAME", name)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .unwrap_or_else(|e| die(&format!("spawn perisai run: {e}")))
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

async fn wait_ready(port: u16, timeout: Duration) -> Duration {
    let started = Instant::now();
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/readyz")).send().await {
            if r.status().is_success() {
                return started.elapsed();
            }
        }
        if started.elapsed() > timeout {
            die(&format!("worker on port {port} not ready within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn bank_value(signal: &str, hash: &str, entry: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "perisai.bank_entry/v1", "bank": "bench", "signal": signal, "hash": hash,
        "entry": entry, "source": "bench", "added_at": "2026-11-29T00:00:00Z"
    }))
    .expect("json")
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// Produces records with bounded concurrency; returns each record's offset, in input order.
async fn produce(producer: &FutureProducer, topic: &str, records: Vec<(String, Vec<u8>)>) -> Vec<i64> {
    let sends = futures::stream::iter(records.into_iter().enumerate())
        .map(|(i, (key, value))| async move {
            let record = FutureRecord::to(topic).key(&key).payload(&value);
            let delivery = producer.send(record, Timeout::After(Duration::from_secs(60))).await.map_err(|(e, _)| e).expect("produce");
            (i, delivery.offset)
        })
        .buffer_unordered(20_000);
    let mut out: Vec<(usize, i64)> = sends.collect().await;
    out.sort_unstable();
    out.into_iter().map(|(_, o)| o).collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summarize(what: &str, mut values: Vec<f64>) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{what}: n={} p50={:.0} ms p99={:.0} ms max={:.0} ms",
        values.len(),
        percentile(&values, 0.5),
        percentile(&values, 0.99),
        values.last().copied().unwrap_or(f64::NAN)
    );
}

/// One verdict: (worker, decided_at ms, next bank offset of partition 0, action, event id).
type Decision = (String, i64, i64, String, String);

fn watch_verdicts(brokers: &str, topic: &str, stop: Arc<AtomicBool>) -> (Arc<Mutex<Vec<Decision>>>, std::thread::JoinHandle<()>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("watch"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("watcher");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let thread = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else { continue };
            let worker = m
                .headers()
                .and_then(|h| h.iter().find(|x| x.key == "perisai.worker").and_then(|x| x.value))
                .map(|v| String::from_utf8_lossy(v).to_string())
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("verdict");
            let decided = chrono::DateTime::parse_from_rfc3339(v["decided_at"].as_str().unwrap_or_default())
                .map(|t| t.timestamp_millis())
                .unwrap_or(0);
            let version = v["banks_version"]
                .as_str()
                .and_then(|s| s.split(',').find_map(|p| p.strip_prefix("0:")))
                .and_then(|o| o.parse().ok())
                .unwrap_or(-1);
            let action = v["action"].as_str().unwrap_or_default().to_string();
            let event = v["event_id"].as_str().unwrap_or_default().to_string();
            s.lock().unwrap().push((worker, decided, version, action, event));
        }
    });
    (seen, thread)
}

/// Append timestamps of the bank topic's records (LogAppendTime), by offset.
fn append_times(brokers: &str, topic: &str, want: usize) -> BTreeMap<i64, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("times"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).expect("assign");
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.insert(m.offset(), m.timestamp().to_millis().unwrap_or(0));
        }
    }
    out
}

async fn protection(args: &[String]) {
    let workers: usize = arg(args, "--workers", 3);
    let steady: usize = arg(args, "--steady", 200);
    let rate: f64 = arg(args, "--rate", 1.0);
    let burst: usize = arg(args, "--burst", 10_000);
    let brokers = brokers();
    let t = fresh_topics(&brokers, "protection").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for n in 0..workers {
        let port = free_port();
        let config = write_config(dir.path(), &brokers, &t, port, n);
        children.push(spawn_worker(&config, &dir.path().join(format!("worker-{n}.log")), &format!("bench-w{n}")));
        ports.push(port);
    }
    for &port in &ports {
        wait_ready(port, Duration::from_secs(120)).await;
    }
    let stop_flag = Arc::new(AtomicBool::new(false));
    let (seen, watcher) = watch_verdicts(&brokers, &t.verdicts, stop_flag.clone());

    // Background uploads: 100 events/s per worker, spread over the partitions.
    let upload_stop = stop_flag.clone();
    let (b, input) = (brokers.clone(), t.input.clone());
    let per_second = 100 * workers as u64;
    let uploader = std::thread::spawn(move || {
        let producer = producer(&b);
        let started = Instant::now();
        let mut n = 0u64;
        while !upload_stop.load(Ordering::Relaxed) {
            let due = started + Duration::from_secs_f64(n as f64 / per_second as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let payload = upload(&format!("bg-{n}"), format!("background-{n}").as_bytes());
            let p = (n % PARTITIONS as u64) as i32;
            let key = format!("bg-{n}");
            let record = FutureRecord::to(&input).key(&key).payload(&payload).partition(p);
            // Fire and forget: queued, acknowledged in the background.
            let _ = producer.send_result(record);
            n += 1;
        }
        producer.flush(Duration::from_secs(10)).ok();
    });
    // Let every worker answer before measuring.
    let warm = Instant::now();
    while seen.lock().unwrap().iter().map(|d| d.0.clone()).collect::<std::collections::BTreeSet<_>>().len() < workers {
        if warm.elapsed() > Duration::from_secs(120) {
            die("not every worker answered uploads");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let bank_producer = producer(&brokers);
    let media = |k: usize| format!("banked-media-{k}").into_bytes();
    let record = |k: usize| {
        let md5 = exact_hashes(&media(k)).md5;
        (format!("bench/md5/{md5}"), bank_value("md5", &md5, &format!("case-{k}")))
    };
    eprintln!("steady: {steady} records at {rate}/s");
    let mut steady_offsets = Vec::new();
    let started = Instant::now();
    for k in 0..steady {
        let due = started + Duration::from_secs_f64(k as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        steady_offsets.extend(produce(&bank_producer, &t.banks, vec![record(k)]).await);
    }
    eprintln!("burst: {burst} records");
    let burst_offsets = produce(&bank_producer, &t.banks, (steady..steady + burst).map(record).collect()).await;
    let last = burst_offsets.last().or(steady_offsets.last()).copied().unwrap_or(0);
    // Until every worker's state covers the last record.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let covered: std::collections::BTreeSet<String> =
            seen.lock().unwrap().iter().filter(|d| d.2 > last).map(|d| d.0.clone()).collect();
        if covered.len() >= workers {
            break;
        }
        if Instant::now() > deadline {
            die("workers did not reach the last bank record within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Check: every 20th steady record's media is blocked on every partition.
    let checks: Vec<(String, Vec<u8>, i32)> = (0..steady)
        .step_by(20)
        .flat_map(|k| (0..PARTITIONS).map(move |p| (format!("check-{k}-{p}"), k, p)))
        .map(|(id, k, p)| (id.clone(), upload(&id, &media(k)), p))
        .collect();
    for (id, payload, p) in &checks {
        let record = FutureRecord::to(&t.input).key(id).payload(payload).partition(*p);
        bank_producer.send(record, Timeout::After(Duration::from_secs(10))).await.map_err(|(e, _)| e).expect("check upload");
    }
    let check_deadline = Instant::now() + Duration::from_secs(60);
    let check_results = loop {
        let results: Vec<String> =
            seen.lock().unwrap().iter().filter(|d| d.4.starts_with("check-")).map(|d| d.3.clone()).collect();
        if results.len() >= checks.len() || Instant::now() > check_deadline {
            break results;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop_flag.store(true, Ordering::Relaxed);
    uploader.join().ok();
    watcher.join().ok();
    for c in &mut children {
        stop(c);
    }
    let times = append_times(&brokers, &t.banks, steady + burst);
    let decisions = seen.lock().unwrap().clone();
    // Per worker, its verdicts in decision order.
    let mut by_worker: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (worker, decided, version, _, _) in &decisions {
        by_worker.entry(worker.clone()).or_default().push((*decided, *version));
    }
    for v in by_worker.values_mut() {
        v.sort_unstable();
    }
    let latencies = |offsets: &[i64]| -> (Vec<f64>, Vec<f64>) {
        let (mut pairs, mut everywhere) = (Vec::new(), Vec::new());
        for &o in offsets {
            let appended = times.get(&o).copied().unwrap_or_else(|| die(&format!("no append time for offset {o}")));
            let mut slowest: f64 = 0.0;
            for verdicts in by_worker.values() {
                let first = verdicts.iter().find(|(_, version)| *version > o).map(|(d, _)| *d);
                let ms = first.map_or(f64::INFINITY, |d| (d - appended) as f64);
                pairs.push(ms);
                slowest = slowest.max(ms);
            }
            everywhere.push(slowest);
        }
        (pairs, everywhere)
    };
    println!("workers: {workers}, verdicts observed: {}", decisions.len());
    let (pairs, everywhere) = latencies(&steady_offsets);
    summarize(&format!("steady {steady} records at {rate}/s, per (record, worker)"), pairs);
    summarize(&format!("steady {steady} records at {rate}/s, on every worker"), everywhere);
    let (pairs, everywhere) = latencies(&burst_offsets);
    summarize(&format!("burst of {burst}, per (record, worker)"), pairs);
    summarize(&format!("burst of {burst}, on every worker"), everywhere);
    let blocked = check_results.iter().filter(|a| *a == "block").count();
    println!("check: {blocked} of {} uploads of banked media blocked ({} answered)", checks.len(), check_results.len());
    if blocked != checks.len() {
        die("a banked upload was not blocked");
    }
}

fn upload(event_id: &str, media: &[u8]) -> Vec<u8> {
    use base64::Engine;
    serde_json::to_vec(&serde_json::json!({
        "schema": "perisai.upload/v1", "event_id": event_id, "media_id": event_id, "tenant": "bench",
        "content_type": "application/octet-stream",
        "media": {"inline": base64::engine::general_purpose::STANDARD.encode(media)}
    }))
    .expect("json")
}

async fn bootstrap(args: &[String]) {
    let entries: usize = arg(args, "--entries", 10_000_000);
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("temp dir");
    // Baseline: a worker on an empty bank topic.
    let empty = fresh_topics(&brokers, "empty").await;
    let port = free_port();
    let config = write_config(dir.path(), &brokers, &empty, port, 0);
    let mut base = spawn_worker(&config, &dir.path().join("empty.log"), "bench-empty");
    wait_ready(port, Duration::from_secs(60)).await;
    let base_rss = proc_kib(base.id(), "VmRSS:");
    stop(&mut base);

    let t = fresh_topics(&brokers, "bootstrap").await;
    let producer = producer(&brokers);
    let started = Instant::now();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    const CHUNK: usize = 200_000;
    let mut produced = 0;
    while produced < entries {
        let n = CHUNK.min(entries - produced);
        let records: Vec<(String, Vec<u8>)> = (produced..produced + n)
            .map(|i| {
                let hash: String = (0..4)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        format!("{:016x}", state | 1)
                    })
                    .collect();
                (format!("bench/pdq/{hash}"), bank_value("pdq", &hash, &format!("case-{i:07}")))
            })
            .collect();
        produce(&producer, &t.banks, records).await;
        produced += n;
    }
    println!("{entries} PDQ records appended in {:.1} s", started.elapsed().as_secs_f64());
    let port = free_port();
    let config = write_config(dir.path(), &brokers, &t, port, 1);
    let mut worker = spawn_worker(&config, &dir.path().join("bootstrap.log"), "bench-bootstrap");
    let ready = wait_ready(port, Duration::from_secs(600)).await;
    let (rss, hwm) = (proc_kib(worker.id(), "VmRSS:"), proc_kib(worker.id(), "VmHWM:"));
    stop(&mut worker);
    let log = std::fs::read_to_string(dir.path().join("bootstrap.log")).unwrap_or_default();
    println!("worker ready {:.1} s after spawn ({:.0} records/s)", ready.as_secs_f64(), entries as f64 / ready.as_secs_f64());
    println!(
        "RSS: empty-bank worker {:.0} MiB; loaded {:.0} MiB (peak {:.0} MiB): {:.0} bytes per PDQ entry ({:.0} at peak)",
        base_rss as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        (rss.saturating_sub(base_rss) * 1024) as f64 / entries as f64,
        (hwm.saturating_sub(base_rss) * 1024) as f64 / entries as f64
    );
    if let Some(line) = log.lines().find(|l| l.contains("bank topic loaded")) {
        println!("worker log: {line}");
    }
}

fn rss_bytes() -> u64 {
    proc_kib(std::process::id(), "VmRSS:") * 1024
}

fn memory(args: &[String]) {
    let entries: u64 = arg(args, "--entries", 10_000_000);
    let signal: String = arg(args, "--signal", "md5".to_string());
    let settings = BankSettings { on_bad_row: OnBadRow::Fail, ..BankSettings::new("bench", Action::Block) };
    let before = rss_bytes();
    let started = Instant::now();
    let mut bank = Bank::new(settings);
    let empty = rss_bytes();
    for i in 0..entries {
        let mut bytes = [0u8; 32];
        let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555;
        for chunk in bytes.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let hash = match signal.as_str() {
            "md5" => ParsedHash::Md5(bytes[..16].try_into().unwrap()),
            "sha256" => ParsedHash::Sha256(bytes),
            "pdq" => ParsedHash::Pdq(PdqHash(bytes)),
            other => die(&format!("--signal {other}: expected md5, sha256 or pdq")),
        };
        bank.upsert(&hash, &format!("case-{:06}", i % 1_000_000), None).unwrap_or_else(|e| die(&e.to_string()));
    }
    let after = rss_bytes();
    println!(
        "{entries} {signal} entries in {:.1} s: RSS {:.0} MiB → {:.0} MiB (empty bank {:.0} MiB): {:.1} bytes per entry",
        started.elapsed().as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        empty as f64 / 1048576.0,
        (after - empty) as f64 / entries as f64
    );
    drop(bank);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mode = args.first().cloned().unwrap_or_else(|| "protection".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match mode.as_str() {
        "protection" => runtime.block_on(protection(&args)),
        "bootstrap" => runtime.block_on(bootstrap(&args)),
        "memory" => memory(&args),
        other => die(&format!("unknown mode {other:?}: protection, bootstrap or memory")),
    }
}
