//! Retroactive takedown at scale: a retro replica remembering 1M uploads, on a real broker.
//!
//! ```text
//! scripts/kafka start
//! cargo bench --bench retro_live -- takedown [--uploads 1000000] [--entries 40] [--copies 5]
//! cargo bench --bench retro_live -- memory [--uploads 1000000] [--queries 2000]
//! ```
//!
//! `takedown`: writes `--uploads` verdicts, as workers write them (signals, a classifier reason,
//! 3 partitions), straight to a fresh verdict topic; among them, for each of `--entries` future
//! bank entries, `--copies` uploads whose PDQ hash is a near copy (a few bits off) of it. Starts
//! `perisai retro` (the release binary) and times it from spawn until `/readyz` answers 200: the
//! rebuild (bank topic, group join, reading every verdict back, re-deciding each upload). Reads
//! its VmRSS then, and that of a replica started the same way on an empty verdict topic, for
//! bytes per remembered upload. Then publishes the entries one at a time to the bank topic and,
//! for each, times from the publish call to the last of its superseding verdicts read back from
//! the verdict topic (end to end: bank topic, replica, lookup, verdict topic, reader). Reported as
//! p50/p99/max over the entries; every expected re-decision must arrive, and nothing else.
//!
//! `memory`: in-process, the same uploads remembered by `retro::history::History` (RSS before
//! and after) and the time one bank change's lookup takes on them (PDQ within 31 bits, exact).
//!
//! `PERISAI_TEST_BROKERS` names the broker (default 127.0.0.1:19092); `PERISAI_BENCH_BIN`
//! overrides the binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use perisai::bank::{Applied, BankChange, ParsedHash};
use perisai::config::BankSettings;
use perisai::event::{Action, Reason, Signals, Verdict, VERDICT_SCHEMA};
use perisai::hash::pdq::PdqHash;
use perisai::retro::history::History;

#[path = "support/live.rs"]
mod live;

use live::{arg, brokers, die, free_port, perisai_binary, unique};

const PARTITIONS: i32 = 3;

/// A deterministic stream of 64-bit values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pdq(&mut self) -> PdqHash {
        PdqHash::from_words([self.next(), self.next(), self.next(), self.next()])
    }
}

/// `h` with `bits` distinct bits flipped.
fn near(h: PdqHash, bits: u32, rng: &mut Rng) -> PdqHash {
    let mut w = h.words();
    let mut flipped = BTreeSet::new();
    while flipped.len() < bits as usize {
        flipped.insert(rng.next() % 256);
    }
    for b in flipped {
        w[(b / 64) as usize] ^= 1 << (b % 64);
    }
    PdqHash::from_words(w)
}

/// The uploads: (event id, PDQ hash), with the entries and which uploads are near copies of each.
struct Corpus {
    pdq: Vec<PdqHash>,
    entries: Vec<(PdqHash, Vec<u32>)>,
}

fn corpus(uploads: u32, entries: u32, copies: u32) -> Corpus {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut pdq: Vec<PdqHash> = (0..uploads).map(|_| rng.pdq()).collect();
    let mut planted = Vec::new();
    let stride = uploads / (entries * copies).max(1);
    for e in 0..entries {
        let entry = rng.pdq();
        let slots: Vec<u32> = (0..copies).map(|c| (e * copies + c) * stride + stride / 2).collect();
        for &s in &slots {
            pdq[s as usize] = near(entry, 2 + (rng.next() % 12) as u32, &mut rng);
        }
        planted.push((entry, slots));
    }
    Corpus { pdq, entries: planted }
}

fn verdict(i: u32, pdq: PdqHash) -> Verdict {
    let md5 = format!("{:032x}", u128::from(i) * 0x1234_5678_9abc_def1 + 7);
    let sha = format!("{md5}{md5}");
    Verdict {
        schema: VERDICT_SCHEMA.into(),
        event_id: format!("evt-{i:09}"),
        media_id: format!("media-{i:09}"),
        tenant: "acme".into(),
        surface: None,
        action: Action::Allow,
        reasons: vec![Reason::Classifier {
            model: "open_nsfw".into(),
            model_sha256: "c1b1ed9b6d73".into(),
            label: "nsfw".into(),
            score: 0.0123,
            band: "none".into(),
            at: None,
        }],
        signals: Signals { md5: Some(md5), sha256: Some(sha), pdq: Some(pdq.to_string()), pdq_quality: Some(90), width: Some(1024), height: Some(768), ..Default::default() },
        policy: "default-1".into(),
        banks_version: Some("0:0".into()),
        decided_at: "2026-11-29T12:00:00.000Z".into(),
        latency_ms: 31.5,
        attributes: perisai::event::Attributes::from_json(r#"{"uploader":"u-1234"}"#).expect("an object"),
        retro: None,
        truncated: false,
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Topics {
    verdicts: String,
    banks: String,
    base: String,
}

async fn fresh_topics(brokers: &str) -> Topics {
    let base = unique("retro");
    let t = Topics { verdicts: format!("{base}.verdicts"), banks: format!("{base}.banks"), base: base.clone() };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin");
    let new = [
        NewTopic::new(&t.verdicts, PARTITIONS, TopicReplication::Fixed(1)),
        NewTopic::new(&t.banks, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact"),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&new, &opts).await.unwrap_or_else(|e| die(&format!("create topics: {e}"))) {
        r.unwrap_or_else(|(t, e)| die(&format!("create topic {t}: {e}")));
    }
    t
}

fn write_config(dir: &Path, brokers: &str, t: &Topics, port: u16) -> PathBuf {
    let path = dir.join(format!("retro-{port}.toml"));
    let text = format!(
        "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{base}.group\"\ninput_topic = \"{base}.uploads\"\nverdict_topic = \"{verdicts}\"\n\
         dlq_topic = \"{base}.dlq\"\nbanks_topic = \"{banks}\"\n\n\
         [kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\n\
         [classifier]\nenabled = false\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[log]\nlevel = \"warn\"\n\n\
         [retro]\ngroup_id = \"{base}.retro\"\nwindow = \"30d\"\nmax_uploads = 5000000\n\n\
         [[banks]]\nname = \"ncii\"\naction = \"block\"\n",
        base = t.base,
        verdicts = t.verdicts,
        banks = t.banks,
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn spawn_retro(config: &Path, log: &Path) -> Child {
    Command::new(perisai_binary())
        .args(["retro", "--config"])
        .arg(config)
        .env("HOSTNAME", "bench-retro")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .unwrap_or_else(|e| die(&format!("spawn perisai retro: {e}")))
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

async fn wait_ready(port: u16, timeout: Duration, log: &Path) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            if r.status().is_success() {
                return started.elapsed();
            }
        }
        if started.elapsed() > timeout {
            die(&format!("retro not ready within {timeout:?}:\n{}", std::fs::read_to_string(log).unwrap_or_default()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("batch.size", "1000000")
        .create()
        .expect("producer")
}

async fn acknowledge(deliveries: impl Iterator<Item = rdkafka::producer::DeliveryFuture>) {
    for r in futures::future::join_all(deliveries).await {
        match r {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => die(&format!("produce: {e}")),
            Err(_) => die("produce: delivery cancelled"),
        }
    }
}

/// (upload event id, when its superseding verdict was read)
type Arrivals = Arc<Mutex<Vec<(String, Instant)>>>;

/// Retroactive verdicts read from the end of the verdict topic, and the flag that stops reading.
fn watch_retro(brokers: &str, topic: &str) -> (Arrivals, Arc<std::sync::atomic::AtomicBool>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("watch"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("watcher");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::End).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, st) = (seen.clone(), stop.clone());
    std::thread::spawn(move || {
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else { continue };
            let at = Instant::now();
            if let Some(Ok(v)) = m.payload().map(serde_json::from_slice::<Verdict>) {
                if let Some(retro) = v.retro {
                    s.lock().unwrap().push((retro.upload_event_id, at));
                }
            }
        }
    });
    (seen, stop)
}

async fn takedown(args: &[String]) {
    let uploads: u32 = arg(args, "--uploads", 1_000_000);
    let entries: u32 = arg(args, "--entries", 40);
    let copies: u32 = arg(args, "--copies", 5);
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("temp dir");
    let corpus = corpus(uploads, entries, copies);

    // An empty replica first: the baseline for memory.
    let empty = fresh_topics(&brokers).await;
    let port = free_port();
    let log = dir.path().join("retro-empty.log");
    let mut baseline = spawn_retro(&write_config(dir.path(), &brokers, &empty, port), &log);
    wait_ready(port, Duration::from_secs(120), &log).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline_kib = rss_kib(baseline.id());
    stop(&mut baseline);

    let topics = fresh_topics(&brokers).await;
    let started = Instant::now();
    let producer = producer(&brokers);
    let mut pending = Vec::with_capacity(50_000);
    let mut bytes = 0usize;
    for (i, pdq) in corpus.pdq.iter().enumerate() {
        let v = verdict(i as u32, *pdq);
        let payload = serde_json::to_vec(&v).expect("json");
        bytes += payload.len();
        // send_result copies the record into the client's queue and returns an owned future.
        let delivery = loop {
            let record = FutureRecord::to(&topics.verdicts).key(&v.media_id).payload(&payload).partition(i as i32 % PARTITIONS);
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err((e, _)) => die(&format!("produce: {e}")),
            }
        };
        pending.push(delivery);
        if pending.len() == 50_000 {
            acknowledge(pending.drain(..)).await;
        }
    }
    acknowledge(pending.drain(..)).await;
    println!("{uploads} verdicts ({:.0} B each) written in {:.1} s", bytes as f64 / f64::from(uploads), started.elapsed().as_secs_f64());

    let port = free_port();
    let log = dir.path().join("retro.log");
    let config = write_config(dir.path(), &brokers, &topics, port);
    let mut retro = spawn_retro(&config, &log);
    let rebuild = wait_ready(port, Duration::from_secs(900), &log).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_kib = rss_kib(retro.id());
    println!(
        "rebuild: ready after {:.1} s (spawn → /readyz 200: bank topic, group join, {uploads} verdicts read back and re-decided)",
        rebuild.as_secs_f64()
    );
    println!(
        "memory: VmRSS {} MiB, empty replica {} MiB → {:.0} bytes per remembered upload",
        rss_kib / 1024,
        baseline_kib / 1024,
        (rss_kib.saturating_sub(baseline_kib) * 1024) as f64 / f64::from(uploads)
    );

    let (seen, stop_watch) = watch_retro(&brokers, &topics.verdicts);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut latencies = Vec::new();
    for (e, (hash, slots)) in corpus.entries.iter().enumerate() {
        let want: BTreeSet<String> = slots.iter().map(|s| format!("evt-{s:09}")).collect();
        let key = format!("ncii/pdq/{hash}");
        let value = serde_json::to_vec(&serde_json::json!({
            "schema": "perisai.bank_entry/v1", "bank": "ncii", "signal": "pdq", "hash": hash.to_string(),
            "entry": format!("case-{e}"), "source": "bench", "added_at": "2026-11-29T00:00:00Z"
        }))
        .expect("json");
        let sent = Instant::now();
        producer
            .send(FutureRecord::to(&topics.banks).key(&key).payload(&value), Timeout::After(Duration::from_secs(10)))
            .await
            .unwrap_or_else(|(e, _)| die(&format!("produce bank record: {e}")));
        let deadline = sent + Duration::from_secs(120);
        let last = loop {
            let arrived: BTreeMap<String, Instant> =
                seen.lock().unwrap().iter().filter(|(id, _)| want.contains(id)).map(|(id, at)| (id.clone(), *at)).collect();
            if arrived.len() == want.len() {
                break *arrived.values().max().expect("some");
            }
            if Instant::now() > deadline {
                die(&format!("entry {e}: {} of {} superseding verdicts after 120 s", arrived.len(), want.len()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        latencies.push(last.duration_since(sent).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written: Vec<String> = seen.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
    let expected: BTreeSet<String> = corpus.entries.iter().flat_map(|(_, s)| s.iter().map(|s| format!("evt-{s:09}"))).collect();
    let unexpected: Vec<&String> = written.iter().filter(|id| !expected.contains(*id)).collect();
    if !unexpected.is_empty() {
        die(&format!("{} superseding verdicts for uploads no entry matches, e.g. {:?}", unexpected.len(), unexpected.first()));
    }
    stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
    latencies.sort_by(f64::total_cmp);
    println!(
        "takedown: new entry → all {copies} superseding verdicts read back, over {entries} entries on {uploads} remembered uploads: \
         p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} verdicts written, {} expected)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        written.len(),
        expected.len()
    );
    stop(&mut retro);
}

fn memory(args: &[String]) {
    let uploads: u32 = arg(args, "--uploads", 1_000_000);
    let queries: u32 = arg(args, "--queries", 2_000);
    let corpus = corpus(uploads, 1, 1);
    let before = rss_kib(std::process::id());
    let started = Instant::now();
    let mut history = History::new();
    // Each verdict made as it is taken: nothing but the history grows.
    for (i, h) in corpus.pdq.iter().enumerate() {
        history.take(verdict(i as u32, *h), i as i32 % PARTITIONS, i as i64, 0).expect("remembered");
    }
    let built = started.elapsed();
    let after = rss_kib(std::process::id());
    println!("one upload's record: {} bytes in place, plus its strings on the heap", std::mem::size_of::<Option<perisai::retro::history::Upload>>());
    println!(
        "memory: {uploads} uploads remembered in {:.1} s, {:.0} bytes each (RSS {} → {} MiB)",
        built.as_secs_f64(),
        ((after - before) * 1024) as f64 / f64::from(uploads),
        before / 1024,
        after / 1024
    );
    let bank = BankSettings::new("ncii", Action::Block);
    let mut rng = Rng(42);
    for (name, make) in [
        ("pdq within 31 bits", Box::new(|rng: &mut Rng| ParsedHash::Pdq(rng.pdq())) as Box<dyn Fn(&mut Rng) -> ParsedHash>),
        ("md5", Box::new(|rng: &mut Rng| ParsedHash::Md5((u128::from(rng.next()) << 64 | u128::from(rng.next())).to_be_bytes()))),
    ] {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..queries {
            let change = BankChange { bank: "ncii".into(), hash: make(&mut rng), applied: Applied::Added, old_entry: None, video_frames: None };
            let t = Instant::now();
            found += history.candidates(&change, &bank).len();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "lookup ({name}) on {uploads} uploads: p50 {:.3} ms, p99 {:.3} ms over {queries} changes ({found} candidates)",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mode = args.first().cloned().unwrap_or_else(|| "takedown".into());
    match mode.as_str() {
        "takedown" => tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime").block_on(takedown(&args)),
        "memory" => memory(&args),
        other => die(&format!("unknown mode {other:?}: takedown or memory")),
    }
}
