//! Settings: `config/default.toml` values, then `--config FILE`, then `PERISAI__SECTION__KEY`
//! environment overrides. Unknown keys are errors; `validate()` names every bad key at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::Action;
use crate::hash::pdq::Convention;

/// The documented defaults, compiled in so that a bare `perisai run` behaves as documented.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub worker: WorkerSettings,
    pub media: MediaSettings,
    pub decode: DecodeSettings,
    pub video: VideoSettings,
    pub cache: CacheSettings,
    pub pdq: PdqSettings,
    #[serde(default)]
    pub banks: Vec<BankSettings>,
    pub classifier: ClassifierSettings,
    pub policy: PolicySettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
    pub retro: RetroSettings,
}

/// The retro role (`perisai retro`): remembers recent verdicts and re-decides them when the
/// banks change after the upload was screened.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetroSettings {
    /// Its consumer group on the verdict topic: replicas share the verdict partitions.
    pub group_id: String,
    /// How far back uploads are remembered: `<number><d|h|m|s>`, e.g. `30d`. The verdict topic's
    /// retention must be at least this long.
    pub window: String,
    /// Most uploads one replica remembers; the oldest are forgotten beyond it.
    pub max_uploads: usize,
}

impl RetroSettings {
    /// The window in seconds (validated).
    pub fn window_secs(&self) -> u64 {
        parse_duration_secs(&self.window).unwrap_or(0)
    }
}

/// `<number><d|h|m|s>` in seconds.
pub fn parse_duration_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    let unit = match text.chars().last()? {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    text[..text.len() - 1].parse::<u64>().ok().filter(|&n| n > 0)?.checked_mul(unit)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub verdict_topic: String,
    pub dlq_topic: String,
    /// Live bank entries (compacted); empty = bank files only.
    pub banks_topic: String,
    /// Reviewers' labels (`perisai.review/v1`), read by `perisai policy replay`; empty = none.
    pub reviews_topic: String,
    /// Workers' per-entry match counts (`perisai.flood_count/v1`), so that flood limits are
    /// fleet-wide; empty = each worker counts alone.
    pub flood_topic: String,
    pub delivery: Delivery,
    /// librdkafka options applied to every client (TLS, SASL, client.id, ...).
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// librdkafka options for the consumer only.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka options for the producer only.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
    /// librdkafka statistics interval; consumer lag is read from the statistics.
    pub statistics_interval_ms: u64,
    /// At-least-once: how often acknowledged offsets are committed. Exactly-once: how often
    /// the open transaction is committed (with the offsets inside it).
    pub commit_interval_ms: u64,
    /// Exactly-once only: `transactional.id` = this prefix + the worker's claimed replica name
    /// ([`crate::kafka::replica::Replica`]).
    pub transactional_id_prefix: String,
    /// Static group membership (on by default): `group.instance.id` = the replica name, so a
    /// replica restarted under the same name gets its partitions back at once, without a rebalance.
    pub static_membership: bool,
    /// Exactly-once only: librdkafka/broker `transaction.timeout.ms`. The broker aborts a
    /// transaction left open this long (a crashed worker's), so it bounds how long read_committed
    /// readers can be held up by one.
    pub transaction_timeout_ms: u64,
}

impl KafkaSettings {
    /// The producer's `transactional.id` in exactly-once mode. Stable across restarts of the same
    /// replica (no process id in it): a restarted worker's `init_transactions` then aborts the
    /// transaction its predecessor left open at once, instead of readers waiting for the timeout.
    pub fn transactional_id(&self, replica: &str) -> String {
        format!("{}{}", self.transactional_id_prefix, replica)
    }
}

/// Why a librdkafka passthrough option would void the delivery guarantee (in either mode), or
/// duplicate one of Perisai's own settings; `None` when it may be set.
fn voids_delivery(key: &str, value: &str) -> Option<&'static str> {
    let on = |v: &str| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1");
    match key {
        "enable.auto.commit" | "enable.auto.offset.store" | "auto.commit.enable" => {
            Some("offsets are committed by the worker only, once each event's verdict or DLQ record is acknowledged")
        }
        "enable.partition.eof" => Some("the worker reads without end-of-partition events"),
        "isolation.level" if value.trim() != "read_committed" => {
            Some("the worker reads committed input only: a record of an aborted transaction was never an upload")
        }
        "auto.offset.reset" if !matches!(value.trim(), "earliest" | "smallest" | "beginning") => Some(
            "a partition without a committed offset (a new group, offsets expired) is read from its start: \
             starting anywhere later would skip uploads without a verdict",
        ),
        "statistics.interval.ms" => Some("set by kafka.statistics_interval_ms (consumer lag and the broker watchdog read the statistics)"),
        "group.id" => Some("set by kafka.group_id"),
        "bootstrap.servers" | "metadata.broker.list" => Some("set by kafka.brokers"),
        "transactional.id" => Some("set from kafka.transactional_id_prefix, in exactly_once mode only"),
        "group.instance.id" => Some("set from the replica name by kafka.static_membership"),
        "acks" | "request.required.acks" if !matches!(value.trim(), "all" | "-1") => {
            Some("verdicts are acknowledged by all in-sync replicas (acks=all) before offsets move")
        }
        "enable.idempotence" if !on(value) => Some("retries must neither lose nor reorder verdicts (idempotence stays on)"),
        _ => None,
    }
}

/// This replica's name: `POD_NAME`, else `HOSTNAME`, else /etc/hostname, else `perisai`.
pub fn replica_name() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "perisai".into())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Events read but not yet acknowledged; the consumer pauses at this bound.
    pub max_in_flight: usize,
    /// On revoke or SIGTERM, how long in-flight events may take to finish before the worker
    /// leaves without committing them (they are then re-delivered).
    pub drain_timeout_ms: u64,
    /// Threads for CPU work (decode, hash, inference); 0 = one per core.
    pub cpu_threads: usize,
    /// Largest input event accepted, in bytes; larger events go to the DLQ.
    pub max_event_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSettings {
    /// Largest media accepted, in bytes, for every source (inline, path, url).
    pub max_bytes: usize,
    /// Root for `{"path": ...}` media; empty disables path media.
    pub path_root: String,
    pub http: HttpSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Hosts media may be fetched from (exact names, or `*.example.com`). Empty disables URL media.
    pub allow_hosts: Vec<String>,
    /// Schemes allowed; `http` only for tests and closed networks.
    pub allow_schemes: Vec<String>,
    /// Testing only: permit loopback/private addresses. Never enable in production.
    pub allow_private_addresses: bool,
    pub connect_timeout_ms: u64,
    pub total_timeout_ms: u64,
    pub max_redirects: usize,
}

/// The screen's cache of what it learned per media SHA-256 (see `screen::cache`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Most entries; 0 turns the cache off.
    pub max_entries: u64,
    /// Most bytes the entries hold, by the cache's own count.
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeSettings {
    pub max_pixels: u64,
    pub max_side: u32,
    /// Most memory one decode may need, counted from the header's layout (see `decode::plan`).
    pub max_bytes: u64,
    /// Memory all decodes of a worker may hold at once; a decode that does not fit waits.
    pub memory_budget_bytes: u64,
    /// How long one upload's decoding may take, its animation frames included.
    pub deadline_ms: u64,
    /// Animation frames the classifier scores per upload: all of them up to this many, spread
    /// evenly beyond. Every frame is PDQ-hashed and matched whatever this says.
    pub max_frames: usize,
}

/// Videos: decoded by the `perisai-video` helper process (see `media::video`), sampled as
/// Meta's vPDQ samples them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoSettings {
    /// The helper executable; empty = `perisai-video` beside the `perisai` executable.
    pub helper: String,
    /// Largest video accepted, in bytes (path and URL media; inline media is bounded by the event).
    pub max_bytes: usize,
    /// Refused from the container's header, before decoding, above these; and stopped when the
    /// decoded stream goes past them.
    pub max_duration_s: f64,
    pub max_pixels: u64,
    pub max_frames: u64,
    /// vPDQ's sampling: one frame hashed every this many seconds (0 = every frame).
    pub seconds_per_hash: f64,
    /// One video's decoding, from the helper's start; past it the helper is killed (`decode_timeout`).
    pub deadline_ms: u64,
    /// The helper's address space (RLIMIT_AS).
    pub helper_memory_bytes: u64,
    /// The helper's decoder threads.
    pub decoder_threads: usize,
    /// Sampled frames the classifier scores, spread evenly over the video.
    pub max_classified_frames: usize,
}

impl VideoSettings {
    /// How the screen runs the helper.
    pub fn limits(&self) -> crate::media::video::VideoLimits {
        crate::media::video::VideoLimits {
            helper: PathBuf::from(&self.helper),
            seconds_per_hash: self.seconds_per_hash,
            max_pixels: self.max_pixels,
            max_duration_s: self.max_duration_s,
            max_frames: self.max_frames,
            threads: self.decoder_threads,
            memory_bytes: self.helper_memory_bytes,
            deadline: std::time::Duration::from_millis(self.deadline_ms),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdqSettings {
    pub enabled: bool,
    /// How uploads are hashed; banks must use the same convention.
    pub convention: Convention,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRow {
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankSettings {
    /// Part of the bank topic's record keys (`BANK/SIGNAL/HASH`): see [`valid_bank_name`].
    pub name: String,
    /// Seed entries (CSV); empty = the bank is fed by the bank topic alone.
    #[serde(default)]
    pub file: String,
    pub action: Action,
    #[serde(default = "default_on_bad_row")]
    pub on_bad_row: OnBadRow,
    #[serde(default = "default_pdq_threshold")]
    pub pdq_threshold: u32,
    /// vPDQ entries: a bank video matches when at least this share of the upload's frames
    /// (percent, after the quality filter and de-duplication) match some frame of it...
    #[serde(default = "default_vpdq_query_match_pct")]
    pub vpdq_query_match_pct: f64,
    /// ...and at least this share of its own frames match some frame of the upload.
    #[serde(default = "default_vpdq_target_match_pct")]
    pub vpdq_target_match_pct: f64,
    #[serde(default = "default_pdq_quality_floor")]
    pub pdq_quality_floor: u8,
    #[serde(default)]
    pub dihedral: bool,
    /// Flood quarantine: an entry that matches more than this many uploads in a minute on one
    /// worker, and more than `flood_baseline_multiple` times its own per-minute rate over the hour
    /// before, is quarantined fleet-wide (its matches give review). 0 = off. Ignored for allow banks.
    #[serde(default)]
    pub flood_max_matches_per_minute: u32,
    #[serde(default = "default_flood_baseline_multiple")]
    pub flood_baseline_multiple: f64,
}

impl BankSettings {
    /// A bank with every optional setting at its default (no file: fed by the bank topic).
    pub fn new(name: &str, action: Action) -> Self {
        Self {
            name: name.into(),
            file: String::new(),
            action,
            on_bad_row: default_on_bad_row(),
            pdq_threshold: default_pdq_threshold(),
            vpdq_query_match_pct: default_vpdq_query_match_pct(),
            vpdq_target_match_pct: default_vpdq_target_match_pct(),
            pdq_quality_floor: default_pdq_quality_floor(),
            dihedral: false,
            flood_max_matches_per_minute: 0,
            flood_baseline_multiple: default_flood_baseline_multiple(),
        }
    }
}

/// python-threatexchange's defaults for vPDQ matching.
fn default_vpdq_query_match_pct() -> f64 {
    80.0
}

fn default_vpdq_target_match_pct() -> f64 {
    0.0
}

fn default_non_image_action() -> Action {
    Action::Allow
}

fn default_flood_baseline_multiple() -> f64 {
    10.0
}

/// Bank names appear in the bank topic's keys (`BANK/SIGNAL/HASH`) and in metric labels, so
/// they keep to a small alphabet: no `/`, nothing a label or a shell would need to quote.
pub fn valid_bank_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn default_on_bad_row() -> OnBadRow {
    OnBadRow::Fail
}
fn default_pdq_threshold() -> u32 {
    31
}
fn default_pdq_quality_floor() -> u8 {
    50
}

/// `classifier.enabled`: `"auto"` (on when the model and ONNX Runtime are installed), `true`, `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Auto,
    On,
    Off,
}

impl Serialize for Switch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Switch::Auto => s.serialize_str("auto"),
            Switch::On => s.serialize_bool(true),
            Switch::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Switch::On),
            Raw::Bool(false) => Ok(Switch::Off),
            Raw::Text(t) => match t.as_str() {
                "auto" => Ok(Switch::Auto),
                "true" | "on" => Ok(Switch::On),
                "false" | "off" => Ok(Switch::Off),
                other => Err(serde::de::Error::custom(format!("{other:?} is not true, false or \"auto\""))),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSettings {
    /// `auto` (default): on wherever the model and ONNX Runtime are installed.
    pub enabled: Switch,
    /// Model manifest (name, file, sha256, input/output, labels).
    pub manifest: String,
    /// Weights file; empty = the manifest's `file` next to the manifest's directory's `.cache`.
    pub model_path: String,
    /// Full versioned path of libonnxruntime.so.1.32.0.
    pub ort_library: String,
    pub intra_threads: usize,
    pub max_batch: usize,
    pub max_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Stamped on every verdict; bump it whenever banks' actions or bands change.
    pub version: String,
    /// Action for media that cannot be fetched or decoded. Never silently allowed by default.
    pub media_error_action: Action,
    /// Action for non-image media (video, audio, documents), whose pixels are not screened
    /// (exact hashes only) when no bank matches. Its verdicts always say so (`unscreened`).
    #[serde(default = "default_non_image_action")]
    pub non_image_action: Action,
    pub bands: Bands,
    #[serde(default)]
    pub overrides: Vec<BandOverride>,
    /// The model these bands are calibrated for: a prefix of its weights' sha256 (hex). Only
    /// `perisai policy replay` reads it, to keep verdicts scored by another model out of its
    /// tables; workers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
}

impl PolicySettings {
    /// Every invalid value of the section, each naming its key (`policy.…`). Settings'
    /// validation and the policy files of `perisai policy replay` share these rules.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check_bands = |key: String, review: f32, block: f32| {
            let in_range = |v: f32| (0.0..=1.0).contains(&v);
            if !(in_range(review) && in_range(block) && review <= block) {
                problems.push(format!("{key}: need 0 <= review <= block <= 1, got review={review} block={block}"));
            }
        };
        check_bands("policy.bands".into(), self.bands.review, self.bands.block);
        for (i, o) in self.overrides.iter().enumerate() {
            check_bands(format!("policy.overrides[{i}]"), o.review, o.block);
        }
        if self.version.trim().is_empty() {
            problems.push("policy.version: must not be empty".into());
        }
        if let Some(sha) = &self.model_sha256 {
            if sha.is_empty() || sha.len() > 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(format!("policy.model_sha256: {sha:?} is not 1 to 64 hex digits (a prefix of the model's sha256)"));
            }
        }
        problems
    }
}

/// Classifier score bands: score ≥ block → block, ≥ review → review.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bands {
    pub review: f32,
    pub block: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandOverride {
    /// Matches any tenant when absent.
    pub tenant: Option<String>,
    /// Matches any surface when absent.
    pub surface: Option<String>,
    pub review: f32,
    pub block: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`
    pub format: String,
    /// tracing filter, e.g. `info,perisai=debug`
    pub level: String,
}

const PASSTHROUGH_PREFIXES: &[(&str, &str)] = &[
    ("PERISAI__KAFKA__CLIENT__", "client"),
    ("PERISAI__KAFKA__CONSUMER__", "consumer"),
    ("PERISAI__KAFKA__PRODUCER__", "producer"),
];

/// `SASL_PASSWORD` or `SASL.PASSWORD` → `sasl.password` (librdkafka names use no underscores).
fn librdkafka_key(env_suffix: &str) -> String {
    env_suffix.to_ascii_lowercase().replace('_', ".")
}

impl Settings {
    /// Defaults, then `file` if given, then `PERISAI__SECTION__KEY` variables.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml).required(true));
        }
        // librdkafka option names contain dots, which the config crate would read as nesting, so
        // the passthrough maps take their environment overrides directly.
        let mut passthrough: Vec<(&'static str, String, String)> = Vec::new();
        let mut overrides: config::Map<String, String> = config::Map::new();
        // (`overrides` keys are the variables' names, e.g. PERISAI__CLASSIFIER__MODEL_PATH.)
        for (key, value) in env.into_iter().filter(|(k, _)| k.starts_with("PERISAI__")) {
            match PASSTHROUGH_PREFIXES.iter().find(|(prefix, _)| key.starts_with(prefix)) {
                Some((prefix, map)) => passthrough.push((map, librdkafka_key(&key[prefix.len()..]), value)),
                None => {
                    overrides.insert(key, value);
                }
            }
        }
        let env_keys: Vec<String> = overrides.keys().cloned().collect();
        builder = builder.add_source(
            config::Environment::with_prefix("PERISAI")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("media.http.allow_hosts")
                .with_list_parse_key("media.http.allow_schemes")
                .source(Some(overrides)),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.resolve_paths(file, &env_keys)?;
        for (map, key, value) in passthrough {
            let target = match map {
                "client" => &mut settings.kafka.client,
                "consumer" => &mut settings.kafka.consumer,
                _ => &mut settings.kafka.producer,
            };
            target.insert(key, value);
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Every invalid value, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                errors.push(msg)
            }
        };
        let k = &self.kafka;
        check(!k.brokers.trim().is_empty(), "kafka.brokers: must name at least one broker".into());
        for (key, value) in [
            ("kafka.group_id", &k.group_id),
            ("retro.group_id", &self.retro.group_id),
            ("kafka.input_topic", &k.input_topic),
            ("kafka.verdict_topic", &k.verdict_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
        ] {
            check(!value.trim().is_empty(), format!("{key}: must not be empty"));
        }
        check(k.input_topic != k.verdict_topic, "kafka.verdict_topic: must differ from kafka.input_topic".into());
        for (key, value) in [("kafka.input_topic", &k.input_topic), ("kafka.verdict_topic", &k.verdict_topic), ("kafka.dlq_topic", &k.dlq_topic)] {
            check(
                k.banks_topic.is_empty() || &k.banks_topic != value,
                format!("kafka.banks_topic: must differ from {key}"),
            );
        }
        for (key, value) in [
            ("kafka.input_topic", &k.input_topic),
            ("kafka.verdict_topic", &k.verdict_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
            ("kafka.banks_topic", &k.banks_topic),
        ] {
            check(
                k.reviews_topic.is_empty() || &k.reviews_topic != value,
                format!("kafka.reviews_topic: must differ from {key}"),
            );
            check(k.flood_topic.is_empty() || &k.flood_topic != value, format!("kafka.flood_topic: must differ from {key}"));
        }
        check(k.flood_topic.is_empty() || k.flood_topic != k.reviews_topic, "kafka.flood_topic: must differ from kafka.reviews_topic".into());
        check(k.commit_interval_ms > 0, "kafka.commit_interval_ms: must be > 0".into());
        check(
            parse_duration_secs(&self.retro.window).is_some(),
            format!("retro.window: {:?} is not <number><d|h|m|s>, e.g. 30d", self.retro.window),
        );
        check(self.retro.max_uploads > 0, "retro.max_uploads: must be > 0".into());
        check(self.retro.group_id != k.group_id, "retro.group_id: must differ from kafka.group_id".into());
        let w = &self.worker;
        if k.delivery == Delivery::ExactlyOnce {
            // A transaction lives through one commit interval plus, at its end, the drain bound;
            // the broker must not time it out meanwhile.
            let needed = k.commit_interval_ms.saturating_add(w.drain_timeout_ms);
            check(
                k.transaction_timeout_ms > needed,
                format!(
                    "kafka.transaction_timeout_ms: must exceed kafka.commit_interval_ms + worker.drain_timeout_ms ({needed}) in exactly_once mode"
                ),
            );
            // The broker's default transaction.max.timeout.ms; a larger value is refused at start.
            check(k.transaction_timeout_ms <= 900_000, "kafka.transaction_timeout_ms: must be <= 900000".into());
            for (map, options) in [("client", &k.client), ("producer", &k.producer), ("consumer", &k.consumer)] {
                // (transactional.id and auto-commit are refused in both modes below.)
                for key in ["isolation.level", "enable.idempotence"] {
                    // (A value the loop below refuses in both modes is named there, once.)
                    check(
                        options.get(key).is_none_or(|value| voids_delivery(key, value).is_some()),
                        format!("kafka.{map}.\"{key}\": set by kafka.delivery = \"exactly_once\"; remove it"),
                    );
                }
            }
        }
        for (map, options) in [("client", &k.client), ("producer", &k.producer), ("consumer", &k.consumer)] {
            for (key, value) in options.iter() {
                if let Some(why) = voids_delivery(key, value) {
                    check(false, format!("kafka.{map}.\"{key}\" = {value:?}: {why}; remove it"));
                }
            }
        }
        check(w.max_in_flight > 0, "worker.max_in_flight: must be > 0 (it bounds memory and backpressure)".into());
        check(w.max_in_flight <= 100_000, "worker.max_in_flight: must be <= 100000".into());
        check(w.drain_timeout_ms > 0, "worker.drain_timeout_ms: must be > 0".into());
        check(w.max_event_bytes >= 1024, "worker.max_event_bytes: must be >= 1024".into());
        let m = &self.media;
        check(m.max_bytes > 0, "media.max_bytes: must be > 0".into());
        for (i, host) in m.http.allow_hosts.iter().enumerate() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            let valid = !bare.is_empty()
                && url::Host::parse(bare).is_ok()
                && !bare.contains(['/', ':', '@', '*']);
            check(valid, format!("media.http.allow_hosts[{i}]: {host:?} is not a host name (use `name` or `*.domain`)"));
        }
        for (i, scheme) in m.http.allow_schemes.iter().enumerate() {
            check(
                scheme == "https" || scheme == "http",
                format!("media.http.allow_schemes[{i}]: {scheme:?} is not http or https"),
            );
        }
        check(m.http.connect_timeout_ms > 0, "media.http.connect_timeout_ms: must be > 0".into());
        check(m.http.total_timeout_ms > 0, "media.http.total_timeout_ms: must be > 0".into());
        check(self.decode.max_pixels > 0, "decode.max_pixels: must be > 0".into());
        check(self.decode.max_side > 0, "decode.max_side: must be > 0".into());
        check(self.decode.max_bytes > 0, "decode.max_bytes: must be > 0".into());
        check(
            self.decode.memory_budget_bytes >= self.decode.max_bytes,
            "decode.memory_budget_bytes: must be at least decode.max_bytes, or the largest allowed decode could never start".into(),
        );
        check(self.decode.deadline_ms > 0, "decode.deadline_ms: must be > 0".into());
        check(self.decode.max_frames > 0, "decode.max_frames: must be > 0".into());
        let v = &self.video;
        check(v.max_bytes > 0, "video.max_bytes: must be > 0".into());
        check(v.max_duration_s.is_finite() && v.max_duration_s > 0.0, "video.max_duration_s: must be a number > 0".into());
        check(v.max_pixels > 0, "video.max_pixels: must be > 0".into());
        check(v.max_frames > 0, "video.max_frames: must be > 0".into());
        check(
            v.seconds_per_hash.is_finite() && v.seconds_per_hash >= 0.0,
            "video.seconds_per_hash: must be a number >= 0 (0 hashes every frame)".into(),
        );
        check(v.deadline_ms > 0, "video.deadline_ms: must be > 0".into());
        // Below ~200 MiB Debian's FFmpeg libraries do not even load; 4K frames need ~400 MiB.
        check(v.helper_memory_bytes >= 256 << 20, "video.helper_memory_bytes: must be at least 256 MiB".into());
        check((1..=64).contains(&v.decoder_threads), "video.decoder_threads: must be 1 to 64".into());
        check(
            self.cache.max_entries == 0 || self.cache.max_bytes >= 1 << 20,
            "cache.max_bytes: must be at least 1 MiB when the cache is on (cache.max_entries > 0)".into(),
        );
        let mut names = std::collections::HashSet::new();
        for (i, bank) in self.banks.iter().enumerate() {
            check(
                valid_bank_name(&bank.name),
                format!("banks[{i}].name: {:?} must be 1-64 letters, digits, '.', '_' or '-'", bank.name),
            );
            check(names.insert(bank.name.clone()), format!("banks[{i}].name: {:?} is used twice", bank.name));
            check(
                !bank.file.trim().is_empty() || !k.banks_topic.trim().is_empty(),
                format!("banks[{i}].file: must name a file when kafka.banks_topic is empty (the bank would stay empty)"),
            );
            check(bank.pdq_threshold <= 128, format!("banks[{i}].pdq_threshold: must be <= 128"));
            // Above 0: python-threatexchange would match every bank video at 0 %, a bank that
            // blocks everything; this service looks only at bank videos some frame came near.
            check(
                bank.vpdq_query_match_pct > 0.0 && bank.vpdq_query_match_pct <= 100.0,
                format!("banks[{i}].vpdq_query_match_pct: must be above 0 and at most 100"),
            );
            check(
                (0.0..=100.0).contains(&bank.vpdq_target_match_pct),
                format!("banks[{i}].vpdq_target_match_pct: must be 0 to 100"),
            );
            check(
                bank.flood_baseline_multiple.is_finite() && bank.flood_baseline_multiple >= 1.0,
                format!("banks[{i}].flood_baseline_multiple: must be a number >= 1"),
            );
            check(bank.pdq_quality_floor <= 100, format!("banks[{i}].pdq_quality_floor: must be <= 100"));
        }
        let c = &self.classifier;
        if c.enabled != Switch::Off {
            check(c.max_batch > 0 && c.max_batch <= 256, "classifier.max_batch: must be in 1..=256".into());
            check(c.intra_threads > 0, "classifier.intra_threads: must be > 0".into());
        }
        for problem in self.policy.problems() {
            check(false, problem);
        }
        check(
            self.metrics.listen.parse::<SocketAddr>().is_ok(),
            format!("metrics.listen: {:?} is not an address like 0.0.0.0:9464", self.metrics.listen),
        );
        check(
            self.log.format == "text" || self.log.format == "json",
            format!("log.format: {:?} is not text or json", self.log.format),
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Makes every configured path absolute, so the binary works from any directory: a relative
    /// path from the config file resolves against that file's directory, one from an environment
    /// variable against the working directory, and the compiled-in classifier defaults against
    /// where `make setup` or the container image installed the files ([`installed`]).
    fn resolve_paths(&mut self, file: Option<&Path>, env_keys: &[String]) -> Result<(), ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let from_file: Option<(PathBuf, toml::Value)> = match file {
            None => None,
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| ConfigError::Invalid(vec![format!("{}: {e}", f.display())]))?;
                let value = toml::from_str::<toml::Value>(&text)
                    .map_err(|e| ConfigError::Invalid(vec![format!("{}: {e}", f.display())]))?;
                let dir = f.parent().map(|d| if d.as_os_str().is_empty() { cwd.clone() } else { cwd.join(d) });
                Some((dir.unwrap_or_else(|| cwd.clone()), value))
            }
        };
        let in_file = |section: &str, key: &str| {
            from_file.as_ref().is_some_and(|(_, v)| v.get(section).and_then(|s| s.get(key)).is_some())
        };
        let file_dir = from_file.as_ref().map(|(d, _)| d.clone()).unwrap_or_else(|| cwd.clone());
        let env_has = |name: &str| env_keys.iter().any(|k| k.eq_ignore_ascii_case(name));
        let resolve = |value: &mut String, section: &str, key: &str, default_install: Option<&str>| {
            if value.is_empty() || Path::new(value.as_str()).is_absolute() {
                return;
            }
            let env_name = format!("PERISAI__{}__{}", section.to_ascii_uppercase(), key.to_ascii_uppercase());
            let resolved = if env_has(&env_name) {
                cwd.join(value.as_str())
            } else if in_file(section, key) {
                file_dir.join(value.as_str())
            } else {
                installed(value, default_install)
            };
            *value = resolved.to_string_lossy().into_owned();
        };
        let c = &mut self.classifier;
        resolve(&mut c.manifest, "classifier", "manifest", Some("/opt/perisai/models/open_nsfw.toml"));
        resolve(&mut c.model_path, "classifier", "model_path", Some("/opt/perisai/models/open-nsfw.onnx"));
        resolve(&mut c.ort_library, "classifier", "ort_library", Some("/opt/perisai/lib/libonnxruntime.so.1.32.0"));
        resolve(&mut self.media.path_root, "media", "path_root", None);
        resolve(&mut self.video.helper, "video", "helper", None);
        if self.video.helper.is_empty() {
            self.video.helper = helper_beside_this_binary().to_string_lossy().into_owned();
        }
        // Banks are only ever declared in a file.
        for bank in &mut self.banks {
            if !bank.file.is_empty() && Path::new(&bank.file).is_relative() {
                bank.file = file_dir.join(&bank.file).to_string_lossy().into_owned();
            }
        }
        Ok(())
    }
}

/// `perisai-video` beside the running executable; for test and bench binaries (in `deps/`), the
/// one in the directory above; in the container image, /usr/local/bin. The first that exists,
/// else the first (errors then name it).
fn helper_beside_this_binary() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = exe.as_deref().and_then(Path::parent) {
        candidates.push(dir.join("perisai-video"));
        candidates.extend(dir.parent().map(|up| up.join("perisai-video")));
    }
    candidates.push(PathBuf::from("/usr/local/bin/perisai-video"));
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| candidates.swap_remove(0))
}

/// Where a compiled-in default path points: the first that exists of the checkout this binary
/// runs from (`target/<profile>/perisai` → the checkout), the checkout it was built from, and the
/// container image's location; the checkout it runs from when none exists (errors then name it).
fn installed(relative: &str, image_path: Option<&str>) -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(checkout) = std::env::current_exe().ok().and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf)) {
        candidates.push(checkout.join(relative));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative));
    candidates.extend(image_path.map(PathBuf::from));
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| candidates.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.kafka.input_topic, "perisai.uploads");
        assert_eq!(s.worker.max_in_flight, 256);
    }

    #[test]
    fn environment_overrides_including_librdkafka_passthrough() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("PERISAI__KAFKA__BROKERS", "k1:9092,k2:9092"),
                ("PERISAI__WORKER__MAX_IN_FLIGHT", "512"),
                ("PERISAI__KAFKA__CLIENT__SASL.PASSWORD", "secret"),
                ("PERISAI__KAFKA__CLIENT__SECURITY_PROTOCOL", "SASL_SSL"),
                ("PERISAI__KAFKA__PRODUCER__LINGER.MS", "20"),
                ("PERISAI__MEDIA__HTTP__ALLOW_HOSTS", "a.example,*.b.example"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(s.worker.max_in_flight, 512);
        assert_eq!(s.kafka.client["sasl.password"], "secret");
        assert_eq!(s.kafka.client["security.protocol"], "SASL_SSL");
        assert_eq!(s.kafka.producer["linger.ms"], "20");
        assert_eq!(s.media.http.allow_hosts, vec!["a.example", "*.b.example"]);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[worker]\nmax_in_flite = 3\n").unwrap();
        let err = Settings::load_with_env(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("max_in_flite"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_keys() {
        let err = Settings::load_with_env(
            None,
            env(&[
                ("PERISAI__WORKER__MAX_IN_FLIGHT", "0"),
                ("PERISAI__MEDIA__HTTP__ALLOW_HOSTS", "http://bad/"),
                ("PERISAI__METRICS__LISTEN", "nowhere"),
            ]),
        )
        .unwrap_err()
        .to_string();
        for key in ["worker.max_in_flight", "media.http.allow_hosts[0]", "metrics.listen"] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn exactly_once_is_accepted_and_its_bounds_checked() {
        let s = Settings::load_with_env(None, env(&[("PERISAI__KAFKA__DELIVERY", "exactly_once")])).unwrap();
        assert_eq!(s.kafka.delivery, Delivery::ExactlyOnce);
        let err = Settings::load_with_env(
            None,
            env(&[
                ("PERISAI__KAFKA__DELIVERY", "exactly_once"),
                ("PERISAI__KAFKA__TRANSACTION_TIMEOUT_MS", "5000"),
                ("PERISAI__KAFKA__PRODUCER__TRANSACTIONAL.ID", "mine"),
            ]),
        )
        .unwrap_err()
        .to_string();
        for key in ["kafka.transaction_timeout_ms", "kafka.producer.\"transactional.id\""] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
        // The same values mean nothing in at-least-once mode and are not refused there.
        Settings::load_with_env(None, env(&[("PERISAI__KAFKA__TRANSACTION_TIMEOUT_MS", "5000")])).unwrap();
    }

    /// Passthrough options that would void the delivery guarantee are refused in both modes,
    /// each named; harmless ones and the safe values of guarded ones pass.
    #[test]
    fn overrides_that_void_the_guarantee_are_refused_in_both_modes() {
        for delivery in ["at_least_once", "exactly_once"] {
            let err = Settings::load_with_env(
                None,
                env(&[
                    ("PERISAI__KAFKA__DELIVERY", delivery),
                    ("PERISAI__KAFKA__CONSUMER__ENABLE.AUTO.COMMIT", "true"),
                    ("PERISAI__KAFKA__CONSUMER__ENABLE.AUTO.OFFSET.STORE", "true"),
                    ("PERISAI__KAFKA__PRODUCER__ACKS", "1"),
                    ("PERISAI__KAFKA__CLIENT__GROUP.ID", "other"),
                    ("PERISAI__KAFKA__PRODUCER__TRANSACTIONAL.ID", "mine"),
                    ("PERISAI__KAFKA__CONSUMER__GROUP.INSTANCE.ID", "mine"),
                    ("PERISAI__KAFKA__CONSUMER__ISOLATION.LEVEL", "read_uncommitted"),
                    ("PERISAI__KAFKA__CONSUMER__AUTO.OFFSET.RESET", "latest"),
                    ("PERISAI__KAFKA__CLIENT__STATISTICS.INTERVAL.MS", "0"),
                ]),
            )
            .unwrap_err()
            .to_string();
            for key in [
                "kafka.consumer.\"enable.auto.commit\"",
                "kafka.consumer.\"enable.auto.offset.store\"",
                "kafka.producer.\"acks\"",
                "kafka.client.\"group.id\"",
                "kafka.producer.\"transactional.id\"",
                "kafka.consumer.\"group.instance.id\"",
                "kafka.consumer.\"isolation.level\"",
                "kafka.consumer.\"auto.offset.reset\"",
                "kafka.client.\"statistics.interval.ms\"",
            ] {
                assert!(err.contains(key), "{delivery}: {key} missing from: {err}");
                assert_eq!(err.matches(key).count(), 1, "{delivery}: {key} named more than once: {err}");
            }
            Settings::load_with_env(
                None,
                env(&[
                    ("PERISAI__KAFKA__DELIVERY", delivery),
                    ("PERISAI__KAFKA__PRODUCER__ACKS", "all"),
                    ("PERISAI__KAFKA__CONSUMER__FETCH.WAIT.MAX.MS", "50"),
                    ("PERISAI__KAFKA__CLIENT__CLIENT.ID", "perisai-test"),
                    ("PERISAI__KAFKA__CONSUMER__AUTO.OFFSET.RESET", "earliest"),
                ]),
            )
            .unwrap_or_else(|e| panic!("{delivery}: safe overrides refused: {e}"));
        }
        // At-least-once, read_committed is librdkafka's default and may be spelled out.
        Settings::load_with_env(None, env(&[("PERISAI__KAFKA__CONSUMER__ISOLATION.LEVEL", "read_committed")]))
            .unwrap_or_else(|e| panic!("read_committed refused at least once: {e}"));
    }

    #[test]
    fn bank_names_keep_to_the_key_alphabet_and_files_are_optional_with_a_topic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[[banks]]\nname = \"ncii\"\naction = \"block\"\n").unwrap();
        let s = Settings::load_with_env(Some(&file), env(&[])).unwrap();
        assert_eq!(s.banks[0].file, "");
        let err = Settings::load_with_env(Some(&file), env(&[("PERISAI__KAFKA__BANKS_TOPIC", "")])).unwrap_err().to_string();
        assert!(err.contains("banks[0].file"), "{err}");
        std::fs::write(&file, "[[banks]]\nname = \"a/b\"\naction = \"block\"\n").unwrap();
        let err = Settings::load_with_env(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("banks[0].name"), "{err}");
        for (name, ok) in [("ncii", true), ("NCMEC.csam_v2-1", true), ("", false), ("a b", false), ("a/b", false), (&"x".repeat(65), false)] {
            assert_eq!(valid_bank_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file_or_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[classifier]\nmodel_path = \"weights/m.onnx\"\n[media]\npath_root = \"media\"\n\n[[banks]]\nname = \"b\"\nfile = \"banks/b.csv\"\naction = \"block\"\n",
        )
        .unwrap();
        let s = Settings::load_with_env(Some(&file), env(&[("PERISAI__CLASSIFIER__ORT_LIBRARY", "lib/ort.so")])).unwrap();
        assert_eq!(Path::new(&s.classifier.model_path), dir.path().join("weights/m.onnx"));
        assert_eq!(Path::new(&s.media.path_root), dir.path().join("media"));
        assert_eq!(Path::new(&s.banks[0].file), dir.path().join("banks/b.csv"));
        assert_eq!(Path::new(&s.classifier.ort_library), std::env::current_dir().unwrap().join("lib/ort.so"));
        // The manifest was left at its default: it resolves to an installed copy (this checkout's).
        assert!(Path::new(&s.classifier.manifest).is_absolute() && Path::new(&s.classifier.manifest).exists(), "{}", s.classifier.manifest);
    }

    #[test]
    fn classifier_switch_takes_booleans_and_auto() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.classifier.enabled, Switch::Auto);
        for (v, want) in [("true", Switch::On), ("false", Switch::Off), ("auto", Switch::Auto)] {
            let s = Settings::load_with_env(None, env(&[("PERISAI__CLASSIFIER__ENABLED", v)])).unwrap();
            assert_eq!(s.classifier.enabled, want);
        }
        let err = Settings::load_with_env(None, env(&[("PERISAI__CLASSIFIER__ENABLED", "maybe")])).unwrap_err().to_string();
        assert!(err.contains("maybe"), "{err}");
    }

    #[test]
    fn unknown_action_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[policy]\nmedia_error_action = \"shrug\"\n").unwrap();
        let err = Settings::load_with_env(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("media_error_action") && err.contains("shrug"), "{err}");
    }
}
