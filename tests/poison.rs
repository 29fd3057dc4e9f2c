//! Poison records on a real Apache Kafka broker, in both delivery modes: records whose verdict or
//! DLQ record the output topics refuse — a huge event id, megabytes of attributes, unparseable
//! bytes under a megabyte of headers, a huge key, a verdict over the verdict topic's limit — are
//! interleaved with good events. Every good event is answered, every poison record ends in a
//! record that fits (the DLQ with its reason, or a compact verdict), the committed offsets reach
//! the end of the input, and a graceful restart re-delivers nothing.

mod common;
mod fault_support;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use common::*;
use fault_support::{end_offsets, set_topic_config};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

const GOOD: u32 = 40;

/// (key, payload, headers, expected outcome: "verdict" | "compact" | a DLQ error class)
type Input = (String, Vec<u8>, Vec<(String, Vec<u8>)>, &'static str);

fn event_with(event_id: &str, attributes: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "perisai.upload/v1", "event_id": event_id, "media_id": format!("m-{}", event_id.len()),
        "tenant": "acme", "content_type": "image/png",
        "media": {"inline": base64::engine::general_purpose::STANDARD.encode(png(7, 16))},
        "attributes": attributes
    }))
    .unwrap()
}

async fn run(mode: &str) {
    let brokers = brokers();
    let topics = create_topics_with(&brokers, &format!("poison-{mode}"), 2, &[("max.message.bytes", "4000000")]).await;
    // A small output limit, on the topics and (as it must be) on the producer, which otherwise
    // batches records up to its own limit and the topic refuses the whole batch: a verdict with
    // 8 KB of attributes is too large, and so is a DLQ record that keeps an oversized event.
    set_topic_config(&brokers, &topics.verdicts, &[("max.message.bytes", "6000")]).await;
    set_topic_config(&brokers, &topics.dlq, &[("max.message.bytes", "6000")]).await;
    let dir = temp_dir();
    let config = write_config(dir.path(), &brokers, &topics, "\n[kafka.producer]\n\"message.max.bytes\" = \"6000\"\n");
    if mode == "exactly_once" {
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace("commit_interval_ms = 100\n", "commit_interval_ms = 100\ndelivery = \"exactly_once\"\ntransaction_timeout_ms = 20000\n");
        assert!(text.contains("exactly_once"));
        std::fs::write(&config, text).unwrap();
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer");
    let mut records: Vec<Input> = Vec::new();
    for i in 0..GOOD {
        let id = format!("e-{i}");
        records.push((id.clone(), event_json(&id, &png(100 + i, 16), "image/png"), vec![], "verdict"));
        match i {
            5 => records.push(("p-id".into(), event_with(&"x".repeat(300_000), serde_json::json!({})), vec![], "field_too_large")),
            12 => records.push(("p-attrs".into(), event_with("p-attrs", serde_json::json!({"blob": "y".repeat(2_000_000)})), vec![], "field_too_large")),
            19 => {
                let headers = (0..9).map(|h| (format!("h{h}"), vec![b'z'; 100_000])).collect();
                records.push(("p-headers".into(), b"{not json".to_vec(), headers, "invalid_json"));
            }
            26 => records.push(("k".repeat(500_000), b"\x00\x01 binary".to_vec(), vec![], "invalid_json")),
            33 => records.push(("p-compact".into(), event_with("p-compact", serde_json::json!({"note": "n".repeat(8_000)})), vec![], "compact")),
            _ => {}
        }
    }
    for (i, (key, payload, headers, _)) in records.iter().enumerate() {
        let mut h = OwnedHeaders::new();
        for (name, value) in headers {
            h = h.insert(Header { key: name, value: Some(value) });
        }
        let record = FutureRecord::to(&topics.input).key(key).payload(payload).headers(h).partition(i as i32 % 2);
        producer.send(record, Timeout::After(Duration::from_secs(30))).await.map_err(|(e, _)| e).expect("produce");
    }

    let mut worker = spawn_worker(&config, dir.path(), 0);
    let expected = records.len();
    let outputs = read_until(&brokers, &[&topics.verdicts, &topics.dlq], Duration::from_secs(120), |o| o.len() >= expected);
    let log = worker_log(dir.path(), 0);
    assert!(outputs.len() >= expected, "{} of {expected} outputs\n{log}", outputs.len());
    let mut verdicts: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let mut dlq: BTreeMap<String, String> = BTreeMap::new();
    for o in &outputs {
        if o.topic == topics.dlq {
            let key = o.key.clone().unwrap_or_default();
            let key = if key.len() > 64 { format!("long-key-{}", key.len()) } else { key };
            dlq.insert(key, o.headers.get("perisai.error.class").cloned().unwrap_or_default());
        } else {
            let v = o.json();
            verdicts.entry(v["event_id"].as_str().unwrap_or_default().to_string()).or_default().push(v);
        }
    }
    for i in 0..GOOD {
        let answers = &verdicts[&format!("e-{i}")];
        assert_eq!(answers.len(), 1, "e-{i}: {answers:?}");
        assert!(answers[0]["truncated"].is_null(), "a good verdict is whole");
    }
    let compact = &verdicts["p-compact"][0];
    assert_eq!(compact["truncated"], true, "{compact}");
    assert!(compact["attributes"].is_null(), "{compact}");
    assert_eq!(compact["action"], "allow");
    assert_eq!(dlq.get("p-id").map(String::as_str), Some("field_too_large"), "{dlq:?}\n{log}");
    assert_eq!(dlq.get("p-attrs").map(String::as_str), Some("field_too_large"), "{dlq:?}");
    assert_eq!(dlq.get("p-headers").map(String::as_str), Some("invalid_json"), "{dlq:?}");
    assert_eq!(dlq.get("long-key-1024").map(String::as_str), Some("invalid_json"), "the key is cut to 1 KiB: {dlq:?}");
    let headers_record = outputs.iter().find(|o| o.key.as_deref() == Some("p-headers")).unwrap();
    assert_eq!(headers_record.headers.get("perisai.original.headers.dropped").map(String::as_str), Some("9"), "{:?}", headers_record.headers);
    assert!(log.contains("refused this event's verdict"), "the refusal is logged\n{log}");

    // Committed offsets reach the end of the input; a graceful restart re-delivers nothing.
    let ends = end_offsets(&brokers, &topics.input);
    let reached = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        committed(&brokers, &topics.group, &topics.input, 2).iter().enumerate().all(|(p, &c)| c >= ends[&(p as i32)])
    });
    assert!(reached, "committed {:?} vs end {ends:?}\n{log}", committed(&brokers, &topics.group, &topics.input, 2));
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(60)).success(), "{log}");
    let before = read_until(&brokers, &[&topics.verdicts, &topics.dlq], Duration::from_secs(5), |_| false).len();
    let mut worker = spawn_worker(&config, dir.path(), 1);
    std::thread::sleep(Duration::from_secs(8));
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(60)).success());
    let after = read_until(&brokers, &[&topics.verdicts, &topics.dlq], Duration::from_secs(5), |_| false).len();
    assert_eq!(after, before, "the restarted worker re-delivered records\n{}", worker_log(dir.path(), 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_never_wedge_a_partition_at_least_once() {
    run("at_least_once").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_never_wedge_a_partition_exactly_once() {
    run("exactly_once").await;
}
