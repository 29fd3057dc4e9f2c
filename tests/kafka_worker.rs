//! The worker against a real Apache Kafka broker: counts in, counts out, through crashes,
//! graceful shutdowns and group rebalances.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use perisai::hash::exact::exact_hashes;

const WAIT: Duration = Duration::from_secs(120);

/// Bank files for the test: images 0..10 blocked by md5, 10..15 reviewed by sha256, 15 allowlisted
/// (also present in the block bank: the allowlist must win).
fn banks(dir: &std::path::Path) -> String {
    let mut block = String::from("signal,hash,entry\n");
    for i in 0..10 {
        block.push_str(&format!("md5,{},block-{i}\n", exact_hashes(&png(i, 24)).md5));
    }
    block.push_str(&format!("md5,{},block-15\n", exact_hashes(&png(15, 24)).md5));
    let mut review = String::from("signal,hash,entry\n");
    for i in 10..15 {
        review.push_str(&format!("sha256,{},review-{i}\n", exact_hashes(&png(i, 24)).sha256));
    }
    let allow = format!("signal,hash,entry\nmd5,{},allow-15\n", exact_hashes(&png(15, 24)).md5);
    write_file(&dir.join("block.csv"), &block);
    write_file(&dir.join("review.csv"), &review);
    write_file(&dir.join("allow.csv"), &allow);
    format!(
        r#"
[[banks]]
name = "block"
file = "{d}/block.csv"
action = "block"

[[banks]]
name = "review"
file = "{d}/review.csv"
action = "review"

[[banks]]
name = "allow"
file = "{d}/allow.csv"
action = "allow"
"#,
        d = dir.display()
    )
}

fn expected_action(i: u32) -> &'static str {
    match i {
        0..=9 => "block",
        10..=14 => "review",
        _ => "allow",
    }
}

/// (a) N events in → exactly one verdict per parseable event with the expected action, a DLQ
/// record for each broken one, every verdict valid against the published JSON Schema; SIGTERM
/// then exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn every_event_gets_exactly_one_output() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "exact", 3).await;
    let dir = temp_dir();
    let config = write_config(dir.path(), &brokers, &topics, &banks(dir.path()));
    let mut records = Vec::new();
    for i in 0..40u32 {
        records.push((format!("m-{i}"), event_json(&format!("e-{i}"), &png(i, 24), "image/png")));
    }
    let broken: Vec<&[u8]> = vec![b"{not json", br#"{"schema":"perisai.upload/v9"}"#, br#"{"schema":"perisai.upload/v1"}"#, b"\xff\xfe"];
    for (i, b) in broken.iter().enumerate() {
        records.push((format!("broken-{i}"), b.to_vec()));
    }
    // Undecodable media: a verdict (review, media_error), never a silent allow.
    records.push(("m-bad".into(), event_json("e-bad-image", b"definitely not an image", "image/jpeg")));
    produce_all(&producer(&brokers), &topics.input, &records).await;

    let mut worker = spawn_worker(&config, dir.path(), 0);
    let outputs = read_until(&brokers, &[&topics.verdicts, &topics.dlq], WAIT, |o| o.len() >= records.len());
    sigterm(&worker);
    let status = wait_exit(&mut worker, Duration::from_secs(20));
    assert!(status.success(), "worker exit {status:?}\n{}", worker_log(dir.path(), 0));

    let verdicts: Vec<_> = outputs.iter().filter(|o| o.topic == topics.verdicts).collect();
    let dlq: Vec<_> = outputs.iter().filter(|o| o.topic == topics.dlq).collect();
    assert_eq!(verdicts.len(), 41, "verdicts\n{}", worker_log(dir.path(), 0));
    assert_eq!(dlq.len(), broken.len());

    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../docs/schemas/verdict.schema.json")).expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let mut by_event = BTreeMap::new();
    for v in &verdicts {
        let json = v.json();
        if let Err(e) = validator.validate(&json) {
            panic!("verdict does not match docs/schemas/verdict.schema.json: {e}\n{json}");
        }
        assert_eq!(v.key.as_deref(), json["media_id"].as_str(), "verdicts are keyed by media_id");
        by_event.insert(json["event_id"].as_str().unwrap().to_string(), json);
    }
    for i in 0..40u32 {
        let v = &by_event[&format!("e-{i}")];
        assert_eq!(v["action"], expected_action(i), "event {i}: {v}");
        assert_eq!(v["attributes"]["test"], true, "attributes pass through");
    }
    let allow15 = &by_event["e-15"]["reasons"];
    assert_eq!(allow15.as_array().unwrap().len(), 2, "allowlist and block both reported: {allow15}");
    let bad = &by_event["e-bad-image"];
    assert_eq!(bad["action"], "review");
    assert_eq!(bad["reasons"][0]["kind"], "media_error");

    let classes: BTreeSet<_> = dlq.iter().map(|d| d.headers["perisai.error.class"].clone()).collect();
    assert_eq!(classes, BTreeSet::from(["invalid_json".to_string(), "schema_version".into(), "schema".into()]));
    for d in &dlq {
        assert_eq!(d.headers["perisai.source.topic"], topics.input);
        assert!(d.headers["perisai.source.offset"].parse::<i64>().is_ok());
        assert!(broken.iter().any(|b| *b == d.payload.as_slice()), "DLQ keeps the original bytes");
    }
    // The drain committed everything: offsets sum to the number of input records.
    let committed: i64 = committed(&brokers, &topics.group, &topics.input, 3).iter().sum();
    assert_eq!(committed, records.len() as i64);
}

fn bulk(n: u32) -> Vec<(String, Vec<u8>)> {
    (0..n).map(|i| (format!("m-{i}"), event_json(&format!("e-{i}"), &png(i % 64, 16), "image/png"))).collect()
}

fn distinct_events(outputs: &[Output]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for o in outputs {
        *seen.entry(o.event_id()).or_insert(0) += 1;
    }
    seen
}

/// (b) SIGKILL the worker midway, start another: every event has at least one verdict.
#[tokio::test(flavor = "multi_thread")]
async fn crash_midway_loses_nothing() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "crash", 3).await;
    let dir = temp_dir();
    let config = write_config(dir.path(), &brokers, &topics, "");
    let n = 3000;
    produce_all(&producer(&brokers), &topics.input, &bulk(n)).await;

    let mut first = spawn_worker(&config, dir.path(), 0);
    let partial = read_until(&brokers, &[&topics.verdicts], WAIT, |o| o.len() >= 300);
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    assert!(partial.len() >= 300, "first worker made progress\n{}", worker_log(dir.path(), 0));

    let mut second = spawn_worker(&config, dir.path(), 1);
    let outputs = read_until(&brokers, &[&topics.verdicts], WAIT, |o| distinct_events(o).len() >= n as usize);
    sigterm(&second);
    assert!(wait_exit(&mut second, Duration::from_secs(20)).success());
    let seen = distinct_events(&outputs);
    let missing = (0..n).filter(|i| !seen.contains_key(&format!("e-{i}"))).count();
    let duplicates = outputs.len() - seen.len();
    println!("crash test: events={n} missing={missing} duplicates={duplicates}");
    assert_eq!(missing, 0, "{}", worker_log(dir.path(), 1));
}

/// (c) SIGTERM mid-stream: the worker drains and commits, exits 0, and the next worker
/// re-delivers nothing the first one acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_commits() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "term", 3).await;
    let dir = temp_dir();
    let config = write_config(dir.path(), &brokers, &topics, "");
    let n = 3000;
    produce_all(&producer(&brokers), &topics.input, &bulk(n)).await;

    let mut first = spawn_worker(&config, dir.path(), 0);
    read_until(&brokers, &[&topics.verdicts], WAIT, |o| o.len() >= 300);
    sigterm(&first);
    let status = wait_exit(&mut first, Duration::from_secs(20));
    assert!(status.success(), "{}", worker_log(dir.path(), 0));
    let after_first = read_until(&brokers, &[&topics.verdicts], Duration::from_secs(5), |_| false);
    let committed_after_first: i64 = committed(&brokers, &topics.group, &topics.input, 3).iter().sum();
    assert_eq!(
        committed_after_first,
        after_first.len() as i64,
        "every acknowledged verdict is committed, nothing more\n{}",
        worker_log(dir.path(), 0)
    );

    let mut second = spawn_worker(&config, dir.path(), 1);
    let outputs = read_until(&brokers, &[&topics.verdicts], WAIT, |o| distinct_events(o).len() >= n as usize);
    sigterm(&second);
    assert!(wait_exit(&mut second, Duration::from_secs(20)).success());
    let seen = distinct_events(&outputs);
    let duplicates = outputs.len() - seen.len();
    println!("sigterm test: events={n} first_worker={} duplicates={duplicates}", after_first.len());
    assert_eq!(seen.len(), n as usize);
    assert_eq!(duplicates, 0, "nothing acknowledged before SIGTERM is re-delivered");
}

/// (d) Two workers in one group split the partitions and together produce every verdict.
#[tokio::test(flavor = "multi_thread")]
async fn two_workers_share_the_partitions() {
    let brokers = brokers();
    let topics = create_topics(&brokers, "group", 4).await;
    let dir = temp_dir();
    let config = write_config(dir.path(), &brokers, &topics, "");
    let mut a = spawn_worker(&config, dir.path(), 0);
    let mut b = spawn_worker(&config, dir.path(), 1);
    // Let both join before the records arrive, so both get partitions with work on them.
    std::thread::sleep(Duration::from_secs(4));
    let n = 2000;
    produce_all(&producer(&brokers), &topics.input, &bulk(n)).await;
    let outputs = read_until(&brokers, &[&topics.verdicts], WAIT, |o| distinct_events(o).len() >= n as usize);
    sigterm(&a);
    sigterm(&b);
    assert!(wait_exit(&mut a, Duration::from_secs(20)).success());
    assert!(wait_exit(&mut b, Duration::from_secs(20)).success());
    let seen = distinct_events(&outputs);
    let workers: BTreeMap<String, usize> = outputs.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o.headers["perisai.worker"].split('-').next().unwrap().to_string()).or_insert(0) += 1;
        m
    });
    println!("group test: per worker {workers:?}");
    assert_eq!(seen.len(), n as usize, "missing verdicts");
    assert_eq!(workers.len(), 2, "both workers produced verdicts: {workers:?}");
}
