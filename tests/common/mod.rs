//! Shared helpers for the integration tests that run against a real Apache Kafka broker
//! (started by `scripts/kafka start`; `make test` does it). Without a broker they fail loudly.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::TopicPartitionList;

pub const BROKERS_ENV: &str = "PERISAI_TEST_BROKERS";

/// The real broker's address. Panics (never skips) when it is not configured or not reachable.
pub fn brokers() -> String {
    let brokers = std::env::var(BROKERS_ENV).unwrap_or_else(|_| "127.0.0.1:19092".into());
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("client");
    if let Err(e) = consumer.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "no Apache Kafka broker at {brokers} ({e}). Start one with `scripts/kafka start` \
             (`make test` does this) or set {BROKERS_ENV}."
        );
    }
    brokers
}

/// Unique names per test run so tests never see each other's records.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

pub struct Topics {
    pub input: String,
    pub verdicts: String,
    pub dlq: String,
    /// The bank topic (compacted, 1 partition), empty at first.
    pub banks: String,
    /// The workers' flood counts (2 partitions).
    pub flood: String,
    pub group: String,
}

pub async fn create_topics(brokers: &str, name: &str, input_partitions: i32) -> Topics {
    create_topics_with(brokers, name, input_partitions, &[]).await
}

/// Like `create_topics`, with topic configs (e.g. `max.message.bytes`) on the input topic.
pub async fn create_topics_with(brokers: &str, name: &str, input_partitions: i32, input_config: &[(&str, &str)]) -> Topics {
    let base = unique(name);
    let topics = Topics {
        input: format!("{base}.uploads"),
        verdicts: format!("{base}.verdicts"),
        dlq: format!("{base}.dlq"),
        banks: format!("{base}.banks"),
        flood: format!("{base}.flood"),
        group: format!("{base}.group"),
    };
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let new = [
        input_config
            .iter()
            .fold(NewTopic::new(&topics.input, input_partitions, TopicReplication::Fixed(1)), |t, (k, v)| t.set(k, v)),
        NewTopic::new(&topics.verdicts, 2, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.dlq, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.banks, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact"),
        NewTopic::new(&topics.flood, 2, TopicReplication::Fixed(1)).set("retention.ms", "3600000"),
    ];
    let results = admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))).await.expect("create topics");
    for r in results {
        r.expect("topic created");
    }
    topics
}

/// A worker config file for these topics. `extra` is appended verbatim (banks, overrides). The
/// classifier is off unless `extra` has a `[classifier]` section: these tests are about delivery,
/// and open_nsfw on every image (its default wherever the model is installed) would slow them
/// several times over.
pub fn write_config(dir: &Path, brokers: &str, topics: &Topics, extra: &str) -> PathBuf {
    let path = dir.join("perisai.toml");
    let classifier = if extra.contains("[classifier]") { "" } else { "\n[classifier]\nenabled = false\n" };
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
input_topic = "{input}"
verdict_topic = "{verdicts}"
dlq_topic = "{dlq}"
banks_topic = "{banks}"
flood_topic = "{flood}"
commit_interval_ms = 100
statistics_interval_ms = 1000

[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[worker]
drain_timeout_ms = 10000

[metrics]
listen = "127.0.0.1:0"

[log]
level = "info"
{classifier}{extra}
"#,
        group = topics.group,
        input = topics.input,
        verdicts = topics.verdicts,
        dlq = topics.dlq,
        banks = topics.banks,
        flood = topics.flood,
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts `perisai run` with its log in `dir/worker-N.log`, named `workerN-<dir>`: `workerN-` is
/// what verdict headers are matched on, and the test's own directory keeps the name apart from
/// the workers of tests running beside it (a worker claims its name on the host; one finding it
/// taken would run as a dynamic member instead of a static one, depending on timing).
pub fn spawn_worker(config: &Path, dir: &Path, n: usize) -> Child {
    let tag: String = dir.file_name().map(|f| f.to_string_lossy().chars().filter(char::is_ascii_alphanumeric).collect()).unwrap_or_default();
    spawn_worker_as(config, dir, n, &format!("worker{n}-{tag}"))
}

/// Like `spawn_worker`, under the given HOSTNAME: restarts of one replica share it (its
/// exactly-once transactional.id is derived from it).
pub fn spawn_worker_as(config: &Path, dir: &Path, n: usize, hostname: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("worker-{n}.log"))).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_perisai"))
        .args(["run", "--config"])
        .arg(config)
        .env("HOSTNAME", hostname)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn perisai run")
}

pub fn worker_log(dir: &Path, n: usize) -> String {
    std::fs::read_to_string(dir.join(format!("worker-{n}.log"))).unwrap_or_default()
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

/// Waits for the child to exit within `timeout`; panics otherwise.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("worker did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces (key, payload) records and waits for every acknowledgement.
pub async fn produce_all(producer: &FutureProducer, topic: &str, records: &[(String, Vec<u8>)]) {
    let sends: Vec<_> = records
        .iter()
        .map(|(key, payload)| producer.send(FutureRecord::to(topic).key(key).payload(payload), Timeout::After(Duration::from_secs(30))))
        .collect();
    for s in futures::future::join_all(sends).await {
        s.expect("produced");
    }
}

/// An upload event with inline media.
pub fn event_json(event_id: &str, media: &[u8], content_type: &str) -> Vec<u8> {
    use base64::Engine;
    serde_json::to_vec(&serde_json::json!({
        "schema": "perisai.upload/v1", "event_id": event_id, "media_id": format!("m-{event_id}"),
        "tenant": "acme", "surface": "post", "content_type": content_type,
        "media": {"inline": base64::engine::general_purpose::STANDARD.encode(media)},
        "attributes": {"test": true}
    }))
    .unwrap()
}

/// A small, valid, distinct PNG for seed `i` (about `side`² × 3 bytes of noise-like pixels).
pub fn png(i: u32, side: u32) -> Vec<u8> {
    let mut state = i.wrapping_mul(2_654_435_761).wrapping_add(12345);
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let v = (state & 0x3f) as u8;
        image::Rgb([(x * 255 / side) as u8 ^ v, (y * 255 / side) as u8, v.wrapping_mul(3)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("png");
    out.into_inner()
}

/// One output record: verdict or DLQ.
#[derive(Debug, Clone)]
pub struct Output {
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Output {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("verdict JSON")
    }
    pub fn event_id(&self) -> String {
        self.headers.get("perisai.event_id").cloned().unwrap_or_default()
    }
}

/// Reads the topics from the beginning until `done(outputs)` holds or `timeout` passes.
pub fn read_until(brokers: &str, topics: &[&str], timeout: Duration, done: impl Fn(&[Output]) -> bool) -> Vec<Output> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning).unwrap();
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !done(&out) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| (x.key.to_string(), x.value.map(|v| String::from_utf8_lossy(v).to_string()).unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Output {
                topic: m.topic().to_string(),
                key: m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    out
}

/// Offsets the group has committed, per partition of `topic` (0 where it committed none).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    c.elements().iter().map(|e| e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0)).collect()
}

/// Runs the `perisai` binary in `cwd` and echoes what it printed (shown when a test fails).
pub fn perisai_in(cwd: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_perisai")).args(args).current_dir(cwd).output().expect("run perisai");
    eprintln!(
        "perisai {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A loopback port free right now (for a worker's metrics listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn write_file(path: &Path, text: &str) {
    std::fs::File::create(path).and_then(|mut f| f.write_all(text.as_bytes())).expect("write");
}
