//! Prometheus registry and the HTTP endpoints `/metrics`, `/healthz`, `/readyz`.
//!
//! Names follow Prometheus conventions: `perisai_` prefix, base units (seconds, bytes),
//! `_total` on counters. docs/metrics.md is the catalogue; the chart's dashboard and alert
//! rules use only names listed there (a test checks it against a running worker).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets from 0.5 ms to 30 s: decode and hash sit in the low milliseconds, URL fetches
/// and batched inference in the tens to hundreds, and a stalled broker shows up in the top buckets.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub struct Metrics {
    pub registry: Registry,
    /// outcome: verdict | dlq
    pub events: IntCounterVec,
    /// action: block | review | allow
    pub verdicts: IntCounterVec,
    /// bank, signal (md5 | sha256 | pdq)
    pub matches: IntCounterVec,
    /// kind: fetch | guard | too_large | timeout | decode | unsupported_format | classifier | ...
    pub media_errors: IntCounterVec,
    /// error: the DLQ error class (invalid_json | schema | ...)
    pub dlq_records: IntCounterVec,
    /// stage: fetch | exact_hash | decode | pdq | match | classify | produce
    pub stage_seconds: HistogramVec,
    /// From the event being read off the input topic to its verdict being acknowledged.
    pub event_seconds: Histogram,
    pub in_flight: IntGauge,
    /// The screen's cache by media SHA-256: lookups by result (hit, miss), evictions, size.
    pub screen_cache_lookups: IntCounterVec,
    pub screen_cache_evictions: IntCounter,
    pub screen_cache_entries: IntGauge,
    pub screen_cache_bytes: IntGauge,
    /// Policy reloads by result: applied, unchanged, error.
    pub policy_reloads: IntCounterVec,
    /// Bytes of the decode memory budget held by running decodes (their planned peaks).
    pub decode_memory_reserved: IntGauge,
    /// topic, partition
    pub consumer_lag: IntGaugeVec,
    pub offsets_committed: IntCounter,
    /// The worker paused its partitions: no place was free in its bound for a whole second.
    pub consumer_pauses: IntCounter,
    pub consumer_recreations: IntCounter,
    pub produce_errors: IntCounter,
    /// client: consumer | producer | banks
    pub kafka_broker_repairs: IntCounterVec,
    /// Exactly-once; outcome: committed | aborted
    pub transactions: IntCounterVec,
    /// Exactly-once: sending the offsets and committing, per transaction.
    pub transaction_commit_seconds: Histogram,
    /// bank, signal
    pub bank_entries: IntGaugeVec,
    /// bank: unix time of the last successful load or update
    pub bank_loaded_seconds: IntGaugeVec,
    /// bank: rows skipped under `on_bad_row = "skip"`
    pub bank_rows_skipped: IntCounterVec,
    /// bank ("-" when the key names no declared bank), reason: bad_key | undeclared_bank | ...
    pub bank_records_rejected: IntCounterVec,
    /// bank, change: added | replaced | unchanged | withdrawn | absent | quarantined | released
    pub bank_updates: IntCounterVec,
    /// Applying a live bank record minus its timestamp (records read at start-up are not observed).
    pub bank_update_lag_seconds: Histogram,
    /// partition: offset of the last bank topic record applied
    pub bank_topic_offset: IntGaugeVec,
    /// bank: entries quarantined now (their matches give review)
    pub bank_entries_quarantined: IntGaugeVec,
    /// bank: floods this worker detected and published as quarantines
    pub bank_flood_quarantines: IntCounterVec,
    /// Retro: uploads remembered now.
    pub retro_uploads: IntGauge,
    /// Retro, why: window | memory | revoked
    pub retro_evicted: IntCounterVec,
    /// Retro, change: added | withdrawn | released (what re-decided the upload)
    pub retro_verdicts: IntCounterVec,
    /// Retro: searching the remembered uploads for one bank change.
    pub retro_lookup_seconds: Histogram,
    /// Retro: reading a partition's window back after an assignment (start-up, rebalance).
    pub retro_rebuild_seconds: Histogram,
    pub classifier_up: IntGauge,
    pub classifier_batch_size: Histogram,
    pub classifier_inference_seconds: Histogram,
    /// model
    pub classifier_score: HistogramVec,
    /// reason: blocked_by_hash | not_image | disabled
    pub classifier_skipped: IntCounterVec,
    /// One video's decoding in the helper, start to end (seconds of wall time).
    pub video_decode_seconds: Histogram,
    pub video_frames_hashed: IntCounter,
    /// cause: ok | refused (the helper ended the video: a limit, damage, no video stream) |
    /// crashed | timeout | unavailable
    pub video_helper_exits: IntCounterVec,
    pub build_info: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let events = counter_vec("perisai_events_total", "Input events finished, by outcome.", &["outcome"]);
        let verdicts = counter_vec("perisai_verdicts_total", "Verdicts produced, by action.", &["action"]);
        let matches = counter_vec("perisai_matches_total", "Hash bank matches, by bank and signal.", &["bank", "signal"]);
        let media_errors =
            counter_vec("perisai_media_errors_total", "Media that could not be fetched or decoded, by kind.", &["kind"]);
        let dlq_records = counter_vec("perisai_dlq_records_total", "Events sent to the DLQ, by error.", &["error"]);
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("perisai_stage_duration_seconds", "Time spent per screening stage.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["stage"],
        )
        .expect("valid metric");
        registry.register(Box::new(stage_seconds.clone())).expect("unique metric");
        let event_seconds = histogram(
            "perisai_event_duration_seconds",
            "From reading an event to the broker acknowledging its verdict.",
            LATENCY_BUCKETS.to_vec(),
        );
        let in_flight = IntGauge::new("perisai_in_flight_events", "Events read but not yet acknowledged.").expect("valid");
        registry.register(Box::new(in_flight.clone())).expect("unique metric");
        let screen_cache_lookups = counter_vec(
            "perisai_screen_cache_lookups_total",
            "Lookups of the screen's cache by media SHA-256: hit (decode, PDQ and inference skipped) or miss.",
            &["result"],
        );
        let screen_cache_evictions =
            IntCounter::new("perisai_screen_cache_evictions_total", "Entries the screen's cache evicted to stay within its bounds.")
                .expect("valid");
        registry.register(Box::new(screen_cache_evictions.clone())).expect("unique metric");
        let screen_cache_entries =
            IntGauge::new("perisai_screen_cache_entries", "Entries in the screen's cache (approximate).").expect("valid");
        registry.register(Box::new(screen_cache_entries.clone())).expect("unique metric");
        let screen_cache_bytes = IntGauge::new(
            "perisai_screen_cache_bytes",
            "Bytes the screen's cache holds by its own count (entries weigh at least cache.max_bytes / cache.max_entries).",
        )
        .expect("valid");
        registry.register(Box::new(screen_cache_bytes.clone())).expect("unique metric");
        let policy_reloads = counter_vec(
            "perisai_policy_reload_total",
            "Policy reloads (SIGHUP or a changed config file) by result: applied, unchanged, error (the old policy stays).",
            &["result"],
        );
        // Every result from the start, at 0: an alert on increase() sees the first refusal.
        for result in ["applied", "unchanged", "error"] {
            policy_reloads.with_label_values(&[result]);
        }
        for result in ["hit", "miss"] {
            screen_cache_lookups.with_label_values(&[result]);
        }
        let decode_memory_reserved = IntGauge::new(
            "perisai_decode_memory_reserved_bytes",
            "Bytes of decode.memory_budget_bytes held by running decodes (their planned peaks).",
        )
        .expect("valid");
        registry.register(Box::new(decode_memory_reserved.clone())).expect("unique metric");
        let consumer_lag =
            gauge_vec("perisai_consumer_lag", "Messages behind the high watermark, per partition.", &["topic", "partition"]);
        let offsets_committed = IntCounter::new("perisai_offset_commits_total", "Offset commits sent.").expect("valid");
        registry.register(Box::new(offsets_committed.clone())).expect("unique metric");
        let consumer_pauses = IntCounter::new(
            "perisai_consumer_pauses_total",
            "Times the worker paused its partitions after its in-flight bound stayed full for a second.",
        )
        .expect("valid");
        registry.register(Box::new(consumer_pauses.clone())).expect("unique metric");
        let consumer_recreations = IntCounter::new(
            "perisai_consumer_recreations_total",
            "Times the worker replaced its consumer after its own static-membership rejoin fenced it.",
        )
        .expect("valid");
        registry.register(Box::new(consumer_recreations.clone())).expect("unique metric");
        let produce_errors =
            IntCounter::new("perisai_produce_errors_total", "Verdict or DLQ records the broker did not accept.").expect("valid");
        registry.register(Box::new(produce_errors.clone())).expect("unique metric");
        let kafka_broker_repairs = counter_vec(
            "perisai_kafka_broker_repairs_total",
            "Times a Kafka client had lost every broker and got the bootstrap servers again.",
            &["client"],
        );
        for client in ["consumer", "producer", "banks"] {
            kafka_broker_repairs.with_label_values(&[client]);
        }
        let transactions = counter_vec(
            "perisai_transactions_total",
            "Exactly-once transactions finished, by outcome (committed | aborted).",
            &["outcome"],
        );
        let transaction_commit_seconds = histogram(
            "perisai_transaction_commit_duration_seconds",
            "Exactly-once: time to send a transaction's offsets and commit it.",
            LATENCY_BUCKETS.to_vec(),
        );
        let bank_entries = gauge_vec("perisai_bank_entries", "Entries loaded per bank and signal.", &["bank", "signal"]);
        let bank_loaded_seconds =
            gauge_vec("perisai_bank_loaded_timestamp_seconds", "Unix time a bank was last loaded or updated.", &["bank"]);
        let bank_rows_skipped =
            counter_vec("perisai_bank_rows_skipped_total", "Bad bank rows skipped (on_bad_row = skip).", &["bank"]);
        let bank_records_rejected = counter_vec(
            "perisai_bank_records_rejected_total",
            "Bank topic records not applied, by bank and reason.",
            &["bank", "reason"],
        );
        let bank_updates = counter_vec(
            "perisai_bank_updates_total",
            "Bank topic records applied, by bank and what they changed.",
            &["bank", "change"],
        );
        let bank_update_lag_seconds = histogram(
            "perisai_bank_update_lag_seconds",
            "From a live bank record's timestamp to this worker applying it.",
            LATENCY_BUCKETS.to_vec(),
        );
        let bank_topic_offset =
            gauge_vec("perisai_bank_topic_offset", "Offset of the last bank topic record applied, per partition.", &["partition"]);
        let bank_entries_quarantined =
            gauge_vec("perisai_bank_entries_quarantined", "Bank entries quarantined now (their matches give review).", &["bank"]);
        let bank_flood_quarantines = counter_vec(
            "perisai_bank_flood_quarantines_total",
            "Bank entries this worker saw flood and quarantined fleet-wide.",
            &["bank"],
        );
        let retro_uploads = IntGauge::new("perisai_retro_uploads", "Uploads the retro role remembers now.").expect("valid");
        registry.register(Box::new(retro_uploads.clone())).expect("unique metric");
        let retro_evicted = counter_vec("perisai_retro_evicted_total", "Uploads the retro role forgot, by why.", &["why"]);
        let retro_verdicts = counter_vec(
            "perisai_retro_verdicts_total",
            "Superseding verdicts written by the retro role, by the bank change that caused them.",
            &["change"],
        );
        // Every label up front, so dashboards and alerts find the series before the first one.
        for change in ["added", "withdrawn", "released", "verdict", "rebuild"] {
            retro_verdicts.with_label_values(&[change]);
        }
        let retro_lookup_seconds = histogram(
            "perisai_retro_lookup_seconds",
            "Searching the remembered uploads for one bank change.",
            LATENCY_BUCKETS.to_vec(),
        );
        let retro_rebuild_seconds = histogram(
            "perisai_retro_rebuild_seconds",
            "Reading a verdict partition's window back after it was assigned.",
            vec![0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0],
        );
        let classifier_up = IntGauge::new("perisai_classifier_up", "1 when the classifier model is loaded.").expect("valid");
        registry.register(Box::new(classifier_up.clone())).expect("unique metric");
        let classifier_batch_size = histogram(
            "perisai_classifier_batch_size",
            "Images per inference batch.",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
        );
        let classifier_inference_seconds =
            histogram("perisai_classifier_inference_seconds", "Time per inference batch.", LATENCY_BUCKETS.to_vec());
        let classifier_score = HistogramVec::new(
            HistogramOpts::new("perisai_classifier_score", "Classifier scores (nsfw probability).")
                .buckets(vec![0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]),
            &["model"],
        )
        .expect("valid metric");
        registry.register(Box::new(classifier_score.clone())).expect("unique metric");
        let classifier_skipped =
            counter_vec("perisai_classifier_skipped_total", "Images not sent to the classifier, by reason.", &["reason"]);
        let video_decode_seconds = histogram(
            "perisai_video_decode_seconds",
            "One video's decoding by the helper process, from its start to its end.",
            vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
        );
        let video_frames_hashed = IntCounter::new("perisai_video_frames_hashed_total", "Video frames sampled and hashed (vPDQ).")
            .expect("valid metric");
        registry.register(Box::new(video_frames_hashed.clone())).expect("unique metric");
        let video_helper_exits = counter_vec(
            "perisai_video_helper_exits_total",
            "Video helper processes ended, by cause: ok, refused (a limit, damage, no video stream), crashed, timeout, unavailable.",
            &["cause"],
        );
        let build_info = gauge_vec("perisai_build_info", "Build information; always 1.", &["version"]);
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        Arc::new(Self {
            registry,
            events,
            verdicts,
            matches,
            media_errors,
            dlq_records,
            stage_seconds,
            event_seconds,
            in_flight,
            screen_cache_lookups,
            screen_cache_evictions,
            screen_cache_entries,
            screen_cache_bytes,
            policy_reloads,
            decode_memory_reserved,
            consumer_lag,
            offsets_committed,
            consumer_pauses,
            consumer_recreations,
            produce_errors,
            kafka_broker_repairs,
            transactions,
            transaction_commit_seconds,
            bank_entries,
            bank_loaded_seconds,
            bank_rows_skipped,
            bank_records_rejected,
            bank_updates,
            bank_update_lag_seconds,
            bank_topic_offset,
            bank_entries_quarantined,
            bank_flood_quarantines,
            retro_uploads,
            retro_evicted,
            retro_verdicts,
            retro_lookup_seconds,
            retro_rebuild_seconds,
            classifier_up,
            classifier_batch_size,
            classifier_inference_seconds,
            classifier_score,
            classifier_skipped,
            video_decode_seconds,
            video_frames_hashed,
            video_helper_exits,
            build_info,
        })
    }

    /// Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    pub fn observe_stage(&self, stage: &str, seconds: f64) {
        self.stage_seconds.with_label_values(&[stage]).observe(seconds);
    }
}

/// What `/readyz` reports: ready once banks are loaded (files and the whole bank topic) and the
/// consumer holds an assignment; and what `/healthz` reports: alive unless the consumer group has
/// been stuck out of state `up` (see `kafka::watchdog`).
#[derive(Default)]
pub struct Readiness {
    pub banks_loaded: AtomicBool,
    /// Bank topic records read so far at start-up, and how many there were at most when it began.
    pub bank_records_read: AtomicU64,
    pub bank_records_expected: AtomicU64,
    /// The screen is built: the classifier loaded (or deliberately off).
    pub screen_ready: AtomicBool,
    pub assigned: AtomicBool,
    pub group_stalled: AtomicBool,
    /// The bank feed thread ended by itself: live bank updates stopped applying.
    pub bank_feed_failed: AtomicBool,
    /// Retro: verdict partitions being read back after an assignment.
    pub retro_rebuilding: AtomicU64,
}

impl Readiness {
    /// Why `/readyz` says no, in words for the person reading the probe's output.
    pub fn not_ready_because(&self) -> Option<String> {
        if !self.banks_loaded.load(Ordering::Acquire) {
            return Some(format!(
                "loading banks: {} of at most {} bank topic records read",
                self.bank_records_read.load(Ordering::Relaxed),
                self.bank_records_expected.load(Ordering::Relaxed)
            ));
        }
        if !self.screen_ready.load(Ordering::Acquire) {
            return Some("banks loaded; loading the classifier".into());
        }
        if !self.assigned.load(Ordering::Acquire) {
            return Some("banks and classifier loaded; no input partitions assigned yet".into());
        }
        let rebuilding = self.retro_rebuilding.load(Ordering::Acquire);
        if rebuilding > 0 {
            return Some(format!("reading back the window of {rebuilding} verdict partitions"));
        }
        None
    }
}

/// The HTTP endpoints, running on the runtime until `shutdown`.
pub struct MetricsServer {
    /// The bound address (the port is chosen by the OS when the configured one is 0).
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl MetricsServer {
    /// Binds `listen` (a bind failure is returned here, not lost in a task) and starts serving.
    pub async fn start(listen: SocketAddr, metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, metrics, readiness, async move {
            let _ = stopped.await;
        }));
        Ok(Self { addr, stop, task })
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::{http::StatusCode, routing::get, Router};
    let app = Router::new()
        .route(
            "/metrics",
            get({
                let metrics = metrics.clone();
                move || async move {
                    ([("content-type", "text/plain; version=0.0.4")], metrics.render())
                }
            }),
        )
        .route(
            "/healthz",
            get({
                let readiness = readiness.clone();
                move || async move {
                    if readiness.group_stalled.load(Ordering::Acquire) {
                        (StatusCode::SERVICE_UNAVAILABLE, "consumer group not joined for over two minutes\n")
                    } else if readiness.bank_feed_failed.load(Ordering::Acquire) {
                        (StatusCode::SERVICE_UNAVAILABLE, "the bank feed stopped: live bank updates no longer apply\n")
                    } else {
                        (StatusCode::OK, "ok\n")
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || async move {
                match readiness.not_ready_because() {
                    None => (StatusCode::OK, "ready\n".to_string()),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
