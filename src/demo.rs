//! `perisai demo`: the whole path on one machine with nothing installed — an embedded
//! Kafka-protocol broker, a demo bank built from the sample media, a few dozen upload events
//! (banked, near-copies, clean, broken), one real worker, and a table of the verdicts. Midway a
//! victim's report arrives as a live bank record: the next upload of that media is blocked; the
//! hash is withdrawn, and the upload after that is allowed again. Last, a retro replica reads the
//! verdicts back (undoing the block that rested on the withdrawn hash) and a report about an image
//! uploaded and allowed long before takes down every copy retroactively. Videos go through the
//! `perisai-video` helper: a banked clip's vPDQ hash blocks its re-encoded and trimmed copies, an
//! unrelated clip is allowed. At the very end, the analysts' what-if: the same verdicts replayed
//! under a stricter policy (`perisai policy replay`).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::app;
use crate::bank::record::{record_key, BankEntryRecord, BANK_ENTRY_SCHEMA};
use crate::bank::{load_bank_bytes, BankSet, Signal};
use crate::kafka::bank_feed::{self, BankFeed};
use crate::config::{BandOverride, BankSettings, OnBadRow, Settings};
use crate::event::{Action, Reason, Verdict, UPLOAD_SCHEMA};
use crate::hash::vpdq;
use crate::hash::{exact, pdq};
use crate::kafka::embedded::{EmbeddedBroker, MOCK_CONSUMER_OPTIONS};
use crate::kafka::replica::Replica;
use crate::media::decode::{self, DecodeLimits};
use crate::metrics::{Metrics, MetricsServer, Readiness};
use crate::pipeline::Worker;
use crate::replay;
use crate::retro::RetroRole;
use crate::screen::Mode;

/// The sample media, compiled in so the demo runs from any directory (see demo/media/README.md).
pub const SAMPLES: &[(&str, &[u8])] = &[
    ("astronaut.jpg", include_bytes!("../demo/media/astronaut.jpg")),
    ("astronaut_small.jpg", include_bytes!("../demo/media/astronaut_small.jpg")),
    ("astronaut_q30.jpg", include_bytes!("../demo/media/astronaut_q30.jpg")),
    ("chelsea.jpg", include_bytes!("../demo/media/chelsea.jpg")),
    ("chelsea_mirrored.jpg", include_bytes!("../demo/media/chelsea_mirrored.jpg")),
    ("coffee.jpg", include_bytes!("../demo/media/coffee.jpg")),
    ("coffee_skin_tint.jpg", include_bytes!("../demo/media/coffee_skin_tint.jpg")),
    ("rocket.jpg", include_bytes!("../demo/media/rocket.jpg")),
];

/// Sample clips (FFmpeg's generated test patterns; see demo/media/README.md): `clip.mp4` is banked
/// by its vPDQ hash, the next two are copies of it, `other.mp4` is unrelated.
pub const VIDEOS: &[(&str, &[u8])] = &[
    ("clip.mp4", include_bytes!("../demo/media/clip.mp4")),
    ("clip_reencoded.webm", include_bytes!("../demo/media/clip_reencoded.webm")),
    ("clip_trimmed.mp4", include_bytes!("../demo/media/clip_trimmed.mp4")),
    ("other.mp4", include_bytes!("../demo/media/other.mp4")),
];

fn video_sample(name: &str) -> &'static [u8] {
    VIDEOS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b).expect("sample video exists")
}

const TENANTS: &[(&str, &str)] = &[("acme", "post"), ("globex", "dm"), ("initech", "profile"), ("acme", "dm")];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Kafka(#[from] crate::kafka::SetupError),
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    App(#[from] app::AppError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("demo bank: {0}")]
    Bank(String),
    #[error("timed out: {got} of {want} outputs after {secs} s")]
    Timeout { got: usize, want: usize, secs: u64 },
    #[error("metrics endpoint: {0}")]
    Metrics(std::io::Error),
    #[error(transparent)]
    BankFeed(#[from] bank_feed::BankFeedError),
}

pub struct DemoOptions {
    pub metrics_listen: String,
    /// Keep serving /metrics this long after the verdicts are in (for scraping).
    pub linger: Duration,
}

/// One row of the demo's table.
#[derive(Debug, Clone)]
pub struct Row {
    pub event_id: String,
    pub label: String,
    pub tenant: String,
    /// `block`, `review`, `allow`, or `dlq`
    pub outcome: String,
    pub why: String,
    pub latency_ms: Option<f64>,
}

pub struct DemoReport {
    pub rows: Vec<Row>,
    /// Superseding verdicts of the retro replica; `event_id` is the upload re-decided.
    pub retro_rows: Vec<Row>,
    /// The verdicts replayed under [`stricter_policy`]: its compact transition table.
    pub replay: String,
    pub metrics_addr: std::net::SocketAddr,
    pub classifier_enabled: bool,
    pub elapsed: Duration,
}

/// A demo event and what the table calls it.
struct DemoEvent {
    event_id: String,
    label: String,
    tenant: String,
    payload: Vec<u8>,
    key: String,
}

pub async fn run(options: DemoOptions) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let broker = EmbeddedBroker::start()?;
    let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new())?;
    settings.kafka.brokers = broker.bootstrap_servers();
    settings.kafka.group_id = "perisai-demo".into();
    settings.kafka.commit_interval_ms = 200;
    for (k, v) in MOCK_CONSUMER_OPTIONS {
        settings.kafka.consumer.insert(k.to_string(), v.to_string());
    }
    settings.metrics.listen = options.metrics_listen.clone();
    settings.policy.version = "demo-1".into();
    // A stricter band for profile pictures: the skin-tinted landscape (open_nsfw ≈ 0.58) is
    // allowed in posts and messages but goes to review as a profile picture.
    settings.policy.overrides.push(BandOverride { tenant: None, surface: Some("profile".into()), review: 0.5, block: 0.98 });
    // The classifier runs when `make setup` has installed the model and ONNX Runtime (the
    // default "auto"): see the summary line.
    broker.create_topic(&settings.kafka.input_topic, 3)?;
    broker.create_topic(&settings.kafka.verdict_topic, 1)?;
    broker.create_topic(&settings.kafka.dlq_topic, 1)?;
    broker.create_topic(&settings.kafka.banks_topic, 1)?;

    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());
    let banked_video = vpdq_of(&settings, video_sample("clip.mp4")).await?;
    let banks = demo_banks(&settings, &metrics, &banked_video)?;
    settings.banks = banks.settings();
    let settings = Arc::new(settings);
    let banks = Arc::new(banks);
    let (feed, _) = BankFeed::start(&settings.kafka, banks.clone(), metrics.clone(), readiness.clone()).await?;
    readiness.banks_loaded.store(true, std::sync::atomic::Ordering::Release);
    let screen = app::build_screen(&settings, banks.clone(), &metrics, Mode::Worker)?;
    let classifier_on = metrics.classifier_up.get() == 1;
    readiness.screen_ready.store(true, std::sync::atomic::Ordering::Release);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listen = settings.metrics.listen.parse().expect("validated address");
    let server = MetricsServer::start(listen, metrics.clone(), readiness.clone()).await.map_err(DemoError::Metrics)?;
    let metrics_addr = server.addr;
    let worker = Worker {
        settings: settings.clone(),
        screen,
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        instance: "demo-worker".into(),
        replica: Replica::unclaimed("demo-worker", settings.kafka.static_membership),
    };
    let worker = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));

    let mut events = demo_events();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &settings.kafka.brokers).create()?;
    for e in &events {
        send_event(&producer, &settings, e).await?;
    }
    let mut reader = OutputReader::new(&settings)?;
    let outputs = async {
        reader.wait_for(events.len(), Duration::from_secs(60)).await?;
        live_bank_story(&settings, &producer, &banks, &mut reader, &mut events).await?;
        retro_story(&settings, &banks, &metrics, &mut reader).await
    }
    .await;
    let _ = stop_tx.send(());
    let summary = worker.await.expect("worker task")?;
    tracing::debug!(?summary, "demo worker stopped");
    feed.stop();
    outputs?;
    let outputs = reader.outputs;
    if !options.linger.is_zero() {
        tokio::time::sleep(options.linger).await;
    }
    server.shutdown().await;

    let rows = events
        .iter()
        .map(|e| {
            let (outcome, why, latency_ms) = outputs.get(&e.event_id).cloned().unwrap_or_default();
            Row { event_id: e.event_id.clone(), label: e.label.clone(), tenant: e.tenant.clone(), outcome, why, latency_ms }
        })
        .collect();
    // The media's name, without the live story's timing note.
    let label_of = |id: &str| {
        let label = events.iter().find(|e| e.event_id == id).map(|e| e.label.as_str()).unwrap_or_default();
        label.split(" (+").next().unwrap_or_default().to_string()
    };
    let retro_rows = reader
        .retro
        .iter()
        .filter_map(|v| {
            let retro = v.retro.as_ref()?;
            let why = format!("supersedes {} ({}): {}", retro.upload_event_id, retro.previous_action.as_str(), explain(v));
            let label = format!("↳ {} {}", retro.upload_event_id, label_of(&retro.upload_event_id));
            Some(Row { event_id: "retro".into(), label, tenant: v.tenant.clone(), outcome: v.action.as_str().into(), why, latency_ms: None })
        })
        .collect();
    let replay = replay_under_stricter_policy(&settings, reader.verdicts);
    Ok(DemoReport { rows, retro_rows, replay, metrics_addr, classifier_enabled: classifier_on, elapsed: started.elapsed() })
}

/// What an analyst would try before lowering the review bands: review at 0.4 (0.3 on profile
/// pictures) instead of 0.8 (0.5), blocks unchanged.
fn stricter_policy(current: &crate::config::PolicySettings) -> crate::config::PolicySettings {
    let mut stricter = current.clone();
    stricter.version = "demo-strict".into();
    stricter.bands.review = 0.4;
    for o in &mut stricter.overrides {
        o.review = 0.3;
    }
    stricter
}

/// The demo's own verdicts (retroactive ones are skipped by the replay) under [`stricter_policy`].
fn replay_under_stricter_policy(settings: &Settings, verdicts: Vec<Verdict>) -> String {
    let stricter = stricter_policy(&settings.policy);
    let mut recorded = replay::Verdicts::new(None);
    for verdict in verdicts {
        recorded.add_verdict(verdict);
    }
    let options = replay::Options { samples: 3, target_precision: None };
    let report = replay::replay(recorded, &replay::Labels::default(), &settings.policy, &stricter, &options);
    format!(
        "policy replay (perisai policy replay): the {} verdicts above under policy {:?}, review at 0.4 (0.3 on profile), block unchanged\n{}",
        report.input.replayed,
        stricter.version,
        replay::report::compact(&report)
    )
}

/// The demo's banks, built from the sample media and loaded through the ordinary CSV loader.
/// A clip's vPDQ signal string, hashed by the helper as the worker would.
async fn vpdq_of(settings: &Settings, bytes: &[u8]) -> Result<String, DemoError> {
    let (features, error) = vpdq::hash_video(bytes, &settings.video.limits()).await;
    match error {
        None => Ok(vpdq::to_signal_string(&features)),
        Some(e) => Err(DemoError::Bank(format!(
            "hashing the demo clip: {e} (`make demo` builds the perisai-video helper beside perisai: cargo build --release --workspace --bins)"
        ))),
    }
}

fn demo_banks(settings: &Settings, metrics: &Metrics, banked_video: &str) -> Result<BankSet, DemoError> {
    let sample = |name: &str| SAMPLES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b).expect("sample exists");
    let pdq_of = |name: &str| -> Result<String, DemoError> {
        let limits = DecodeLimits::default();
        let image = decode::decode(sample(name), &limits).map_err(|e| DemoError::Bank(e.to_string()))?;
        Ok(pdq::hash(&image, settings.pdq.convention).hash.to_string())
    };
    let bank = |name: &str, action: Action, dihedral: bool, csv: String| -> Result<_, DemoError> {
        let bank_settings = BankSettings {
            file: format!("<demo:{name}>"),
            on_bad_row: OnBadRow::Fail,
            dihedral,
            ..BankSettings::new(name, action)
        };
        load_bank_bytes(&bank_settings, csv.as_bytes()).map_err(|e| DemoError::Bank(e.to_string()))
    };
    let astronaut = exact::exact_hashes(sample("astronaut.jpg"));
    let coffee = exact::exact_hashes(sample("coffee.jpg"));
    let rocket = exact::exact_hashes(sample("rocket.jpg"));
    let block_csv = format!(
        "signal,hash,entry\nsha256,{},case-1001\npdq,{},case-1001\nmd5,{},case-1002\nvpdq,\"{}\",case-2001\n",
        astronaut.sha256,
        pdq_of("astronaut.jpg")?,
        rocket.md5,
        banked_video.replace('"', "\"\""),
    );
    let review_csv = format!("signal,hash,entry\npdq,{},report-77\nmd5,{},report-78\n", pdq_of("chelsea.jpg")?, coffee.md5);
    let allow_csv = format!("signal,hash,entry\nmd5,{},cleared-9\n", rocket.md5);
    let loaded = vec![
        bank("demo-block", Action::Block, false, block_csv)?,
        bank("demo-review", Action::Review, true, review_csv)?,
        bank("demo-allowlist", Action::Allow, false, allow_csv)?,
        // No file: fed by the bank topic alone, like a StopNCII bank.
        bank("demo-ncii", Action::Block, false, "signal,hash,entry\n".into())?,
    ];
    Ok(BankSet::from_loaded(loaded, metrics))
}

/// Upload event number `n` with inline media.
fn demo_event(n: usize, label: String, tenant: &str, surface: &str, content_type: &str, bytes: &[u8]) -> DemoEvent {
    let media = serde_json::json!({"inline": base64::engine::general_purpose::STANDARD.encode(bytes)});
    demo_event_with(n, label, tenant, surface, content_type, media)
}

fn demo_event_with(n: usize, label: String, tenant: &str, surface: &str, content_type: &str, media: serde_json::Value) -> DemoEvent {
    let event = serde_json::json!({
        "schema": UPLOAD_SCHEMA, "event_id": format!("e-{n:03}"), "media_id": format!("m-{n:03}"),
        "tenant": tenant, "surface": surface, "content_type": content_type, "media": media,
        "uploaded_at": chrono::Utc::now().to_rfc3339(), "attributes": {"uploader": format!("u-{}", n % 7)}
    });
    DemoEvent {
        event_id: format!("e-{n:03}"),
        label,
        tenant: tenant.into(),
        payload: serde_json::to_vec(&event).expect("json"),
        key: format!("m-{n:03}"),
    }
}

fn demo_events() -> Vec<DemoEvent> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut events = Vec::new();
    let mut push = |label: String, tenant: &str, surface: &str, content_type: &str, media: serde_json::Value| {
        let n = events.len() + 1;
        events.push(demo_event_with(n, label, tenant, surface, content_type, media));
    };
    for (i, (name, bytes)) in SAMPLES.iter().cycle().take(SAMPLES.len() * TENANTS.len()).enumerate() {
        let (tenant, surface) = TENANTS[i / SAMPLES.len()];
        push(name.to_string(), tenant, surface, "image/jpeg", serde_json::json!({"inline": b64(bytes)}));
    }
    let coffee = SAMPLES.iter().find(|(n, _)| *n == "coffee.jpg").expect("sample").1;
    push("truncated JPEG".into(), "acme", "post", "image/jpeg", serde_json::json!({"inline": b64(&coffee[..coffee.len() / 3])}));
    push("not base64".into(), "acme", "post", "image/jpeg", serde_json::json!({"inline": "@@not-base64@@"}));
    for (name, content_type) in [("clip_reencoded.webm", "video/webm"), ("clip_trimmed.mp4", "video/mp4"), ("other.mp4", "video/mp4")] {
        push(name.into(), "globex", "post", content_type, serde_json::json!({"inline": b64(video_sample(name))}));
    }
    push("URL media (none allowlisted)".into(), "globex", "post", "image/jpeg", serde_json::json!({"url": "https://media.example/x.jpg"}));
    // Records that are not upload events at all: the DLQ keeps them.
    let n = events.len();
    for (i, (label, payload)) in [
        ("invalid JSON", b"{\"schema\": \"perisai.upload/v1\", oops".to_vec()),
        ("wrong schema version", br#"{"schema":"perisai.upload/v0","event_id":"x"}"#.to_vec()),
        ("missing media", br#"{"schema":"perisai.upload/v1","event_id":"x","media_id":"m","tenant":"t"}"#.to_vec()),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("e-{:03}", n + i + 1);
        events.push(DemoEvent { event_id: id.clone(), label: label.into(), tenant: "-".into(), payload, key: id });
    }
    events
}

type Outputs = BTreeMap<String, (String, String, Option<f64>)>;

/// Reads verdicts and DLQ records as they arrive.
struct OutputReader {
    consumer: StreamConsumer,
    verdict_topic: String,
    dlq_topic: String,
    outputs: Outputs,
    /// Retroactive verdicts, in the order read.
    retro: Vec<Verdict>,
    /// Every verdict, in the order read (for the replay at the end).
    verdicts: Vec<Verdict>,
}

impl OutputReader {
    fn new(settings: &Settings) -> Result<Self, DemoError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka.brokers)
            .set("group.id", "perisai-demo-reader")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "5")
            .create()?;
        consumer.subscribe(&[&settings.kafka.verdict_topic, &settings.kafka.dlq_topic])?;
        Ok(Self {
            consumer,
            verdict_topic: settings.kafka.verdict_topic.clone(),
            dlq_topic: settings.kafka.dlq_topic.clone(),
            outputs: Outputs::new(),
            retro: Vec::new(),
            verdicts: Vec::new(),
        })
    }

    /// Reads until `want` events have an output.
    async fn wait_for(&mut self, want: usize, timeout: Duration) -> Result<(), DemoError> {
        self.wait_until(|r| r.outputs.len() >= want, want, timeout).await
    }

    async fn wait_until(&mut self, done: impl Fn(&Self) -> bool, want: usize, timeout: Duration) -> Result<(), DemoError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            let message = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => return Err(DemoError::Timeout { got: self.outputs.len(), want, secs: timeout.as_secs() }),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(m)) => m,
            };
            if message.topic() == self.dlq_topic {
                let header = |name: &str| {
                    message.headers().and_then(|h| h.iter().find(|x| x.key == name)).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).to_string())
                };
                let id = message.key().map(|k| String::from_utf8_lossy(k).to_string()).unwrap_or_default();
                self.outputs.insert(id, ("dlq".into(), format!("DLQ: {}", header("perisai.error.class").unwrap_or_default()), None));
            } else if message.topic() == self.verdict_topic {
                if let Some(Ok(verdict)) = message.payload().map(serde_json::from_slice::<Verdict>) {
                    self.verdicts.push(verdict.clone());
                    if verdict.retro.is_some() {
                        self.retro.push(verdict);
                        continue;
                    }
                    self.outputs.insert(verdict.event_id.clone(), (verdict.action.as_str().into(), explain(&verdict), Some(verdict.latency_ms)));
                }
            }
        }
        Ok(())
    }
}

async fn send_event(producer: &FutureProducer, settings: &Settings, e: &DemoEvent) -> Result<(), DemoError> {
    let record = FutureRecord::to(&settings.kafka.input_topic).key(&e.key).payload(&e.payload);
    producer.send(record, Timeout::After(Duration::from_secs(10))).await.map_err(|(e, _)| e)?;
    Ok(())
}

/// The live bank part: a victim reports the demo's video (StopNCII shares MD5s for video); its
/// hash arrives on the bank topic and the next upload is blocked; withdrawn, the one after is
/// allowed. Each upload is sent only once the worker's banks show the change, and the next
/// change waits for its verdict, so the table shows cause and effect.
async fn live_bank_story(
    settings: &Settings,
    producer: &FutureProducer,
    banks: &BankSet,
    reader: &mut OutputReader,
    events: &mut Vec<DemoEvent>,
) -> Result<(), DemoError> {
    let video = video_sample("other.mp4");
    let md5 = exact::exact_hashes(video).md5;
    let key = record_key("demo-ncii", Signal::Md5, &md5);
    let value = BankEntryRecord {
        schema: BANK_ENTRY_SCHEMA.into(),
        bank: "demo-ncii".into(),
        signal: "md5".into(),
        hash: md5.clone(),
        entry: "stopncii-case-314".into(),
        source: "stopncii".into(),
        added_at: chrono::Utc::now().to_rfc3339(),
        tags: vec![],
        vpdq: None,
    };
    let steps: [(Option<Vec<u8>>, usize, &str); 2] = [
        (Some(serde_json::to_vec(&value).expect("json")), 1, "video after victim's report"),
        (None, 0, "video after withdrawal"),
    ];
    for (value, want, label) in steps {
        let published = Instant::now();
        bank_feed::publish(&settings.kafka, vec![(key.clone(), value)]).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while banks.counts().iter().find(|c| c.0 == "demo-ncii").map(|c| c.2) != Some(want) {
            if Instant::now() > deadline {
                return Err(DemoError::Bank("the live bank update was not applied within 10 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let applied_ms = published.elapsed().as_secs_f64() * 1000.0;
        let event = demo_event(events.len() + 1, format!("{label} (+{applied_ms:.0} ms)"), "acme", "post", "video/mp4", video);
        send_event(producer, settings, &event).await?;
        events.push(event);
        reader.wait_for(events.len(), Duration::from_secs(30)).await?;
    }
    Ok(())
}

/// The retroactive part: a retro replica starts and reads every verdict back — the block that
/// rested on the withdrawn video hash is undone — then a victim reports the tinted landscape,
/// uploaded and allowed four times before: each copy gets a superseding block verdict.
async fn retro_story(settings: &Arc<Settings>, banks: &Arc<BankSet>, metrics: &Arc<Metrics>, reader: &mut OutputReader) -> Result<(), DemoError> {
    let mut retro_settings = (**settings).clone();
    retro_settings.retro.group_id = "perisai-demo-retro".into();
    let readiness = Arc::new(Readiness::default());
    readiness.banks_loaded.store(true, std::sync::atomic::Ordering::Release);
    readiness.screen_ready.store(true, std::sync::atomic::Ordering::Release);
    let role = RetroRole::new(Arc::new(retro_settings), banks.clone(), metrics.clone(), readiness.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let role_stop = stop.clone();
    let role = tokio::task::spawn_blocking(move || role.run(&role_stop));
    let outcome = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while readiness.not_ready_because().is_some() {
            if Instant::now() > deadline {
                return Err(DemoError::Bank(format!("retro replica not ready: {}", readiness.not_ready_because().unwrap_or_default())));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reader.wait_until(|r| !r.retro.is_empty(), 1, Duration::from_secs(30)).await?;
        let sample = SAMPLES.iter().find(|(n, _)| *n == "coffee_skin_tint.jpg").expect("sample").1;
        let image = decode::decode(sample, &DecodeLimits::default()).map_err(|e| DemoError::Bank(e.to_string()))?;
        let hash = pdq::hash(&image, settings.pdq.convention).hash.to_string();
        let value = BankEntryRecord {
            schema: BANK_ENTRY_SCHEMA.into(),
            bank: "demo-ncii".into(),
            signal: "pdq".into(),
            hash: hash.clone(),
            entry: "stopncii-case-2718".into(),
            source: "stopncii".into(),
            added_at: chrono::Utc::now().to_rfc3339(),
            tags: vec![],
        vpdq: None,
        };
        let record = (record_key("demo-ncii", Signal::Pdq, &hash), Some(serde_json::to_vec(&value).expect("json")));
        bank_feed::publish(&settings.kafka, vec![record]).await?;
        reader.wait_until(|r| r.retro.len() >= 5, 5, Duration::from_secs(30)).await
    }
    .await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    if let Ok(Err(e)) = role.await {
        return Err(DemoError::Bank(e.to_string()));
    }
    outcome
}

/// A short, human reading of a verdict's reasons.
pub fn explain(verdict: &Verdict) -> String {
    let parts: Vec<String> = verdict
        .reasons
        .iter()
        .map(|r| match r {
            Reason::HashMatch { bank, signal, entry, distance, transform, query_match_pct, target_match_pct, .. } => {
                let mut s = format!("{bank} {signal} {entry}");
                if let Some(d) = distance {
                    s.push_str(&format!(" d={d}"));
                }
                if let (Some(q), Some(t)) = (query_match_pct, target_match_pct) {
                    s.push_str(&format!(" frames {q:.0}%/{t:.0}%"));
                }
                if let Some(t) = transform {
                    s.push_str(&format!(" ({t})"));
                }
                s
            }
            Reason::Classifier { score, band, at: Some(at), .. } => format!("nsfw {score:.3} band={band} at {at:.1}s"),
            Reason::Classifier { score, band, .. } => format!("nsfw {score:.3} band={band}"),
            Reason::LowQuality { signal, quality, floor, .. } => format!("{signal} quality {quality} < {floor}"),
            Reason::MediaError { error, .. } => format!("media_error {error}"),
            Reason::Unscreened { .. } => "not an image: exact hashes only".into(),
        })
        .collect();
    if parts.is_empty() {
        "no match".into()
    } else {
        parts.join("; ")
    }
}

/// Renders the report as a table and a summary.
pub fn render(report: &DemoReport) -> String {
    let mut out = String::new();
    out.push_str(&format!("{:<6} {:<36} {:<8} {:<7} {:>8}  {}\n", "event", "media", "tenant", "verdict", "ms", "why"));
    out.push_str(&format!("{}\n", "-".repeat(100)));
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &report.rows {
        *counts.entry(r.outcome.as_str()).or_default() += 1;
        let ms = r.latency_ms.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into());
        out.push_str(&format!("{:<6} {:<36} {:<8} {:<7} {:>8}  {}\n", r.event_id, r.label, r.tenant, r.outcome, ms, r.why));
    }
    if !report.retro_rows.is_empty() {
        out.push_str("retroactive verdicts (perisai retro): a bank change after the upload re-decides it\n");
        for r in &report.retro_rows {
            out.push_str(&format!("{:<6} {:<36} {:<8} {:<7} {:>8}  {}\n", r.event_id, r.label, r.tenant, r.outcome, "-", r.why));
        }
    }
    out.push_str(&format!("{}\n", "-".repeat(100)));
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&format!(
        "{} events in {:.1} s: {}\nclassifier: {}\nmetrics were served at http://{}/metrics\n",
        report.rows.len(),
        report.elapsed.as_secs_f64(),
        summary.join(" "),
        if report.classifier_enabled { "on" } else { "off (run `make setup` to install the model)" },
        report.metrics_addr
    ));
    out.push_str(&format!("{}\n{}", "-".repeat(100), report.replay));
    out
}
