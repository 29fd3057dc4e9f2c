//! Perisai screens uploaded images and videos in real time: known abuse material is blocked by
//! hash banks (exact MD5/SHA-256, PDQ perceptual hashes, Meta's vPDQ for video), unknown but
//! likely harmful media is routed to human review by an ONNX classifier. Workers read upload
//! events from Kafka and write one verdict per event.
//!
//! # Layout
//!
//! - [`config`]: settings, defaults, environment overrides, validation.
//! - [`event`]: wire types (upload events, verdicts, reasons). Plain data.
//! - [`media`]: getting media bytes (inline, path, guarded URL fetch) and decoding them under limits;
//!   videos through the `perisai-video` helper process (`video-helper/`, the only code that links
//!   FFmpeg), which `media::video` starts, confines and reads.
//! - [`hash`]: exact hashes, PDQ, and vPDQ's frame features and signal strings. Knows no banks.
//! - [`bank`]: hash banks, their file and import formats, the bank topic's records (entries and
//!   quarantine/release statuses), the PDQ index, vPDQ entries and their frame index (`video`),
//!   the live bank set every screening thread shares, and flood detection.
//! - [`classify`]: the classifier trait, ONNX model, preprocessing, micro-batching.
//! - [`policy`]: the pure decision from signals to a verdict.
//! - [`live_policy`]: the policy in force, reloaded on SIGHUP or when the config file changes.
//! - [`screen`]: one event's media → signals → verdict. Knows nothing about Kafka.
//! - [`kafka`]: client settings, the verdict/DLQ sink, the bank topic's reader (start-up load, then
//!   live tail) and writer, the workers' flood counts exchange, the broker watchdog, the demo's
//!   embedded broker.
//! - [`pipeline`]: the worker: the receive loop, the in-flight ledger (bound, watermarks,
//!   drain), backpressure, shutdown, and the delivery seam (at-least-once commits, the
//!   exactly-once transaction cycle).
//! - [`metrics`]: Prometheus registry and the HTTP endpoints.
//! - [`app`]: assembling banks, classifier and screen from settings (shared by `run`, `demo`, `scan`).
//! - [`retro`]: the retro role: remembers recent verdicts and re-decides them when a bank entry
//!   is added, withdrawn or released after the upload was screened (retroactive takedown).
//! - [`admin`]: the `perisai bank` commands: import partner lists, withdraw, export.
//! - [`replay`]: `perisai policy replay`: re-decides recorded verdicts under a proposed policy
//!   (from their reasons; no media, no model), joins reviewers' labels (`perisai.review/v1`) and
//!   reports transitions, review volume, precision and recall as text or one HTML page.
//! - [`demo`]: the embedded demo: mock broker, sample media, a table of verdicts.
//!
//! Dependencies point one way: app/demo/admin/retro/replay → pipeline, kafka, and pipeline → screen → media,
//! hash, bank, classify, live_policy, policy → event. Bank updates reach the bank set as plain records
//! ([`bank::TopicRecord`]) handed over by `kafka::bank_feed`. `screen`, `media`, `hash`, `bank`, `classify` and `policy` never
//! import `kafka` or `pipeline`; `hash` knows no banks; `policy` sees scores, not models.

pub mod admin;
pub mod app;
pub mod bank;
pub mod classify;
pub mod config;
pub mod demo;
pub mod event;
pub mod hash;
pub mod kafka;
pub mod live_policy;
pub mod media;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod replay;
pub mod retro;
pub mod screen;
