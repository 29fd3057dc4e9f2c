//! Every metric name the Grafana dashboard and the alert rules use is exported by a running
//! worker (real Kafka, real model), after events that exercise every labelled series.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

/// `perisai_*` names in a text, with histogram/summary suffixes folded to the family name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("perisai_") {
        let start = i + pos;
        let preceded_by_ident = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if !preceded_by_ident {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            names.insert(family.to_string());
        }
        i = end;
    }
    names
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alert_metrics_are_exported() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["config/default.toml"] {
        assert!(std::path::Path::new(root).join(file).exists());
    }
    let model = std::path::Path::new(root).join(".cache/models/open-nsfw.onnx");
    let ort = std::path::Path::new(root).join(".cache/onnxruntime/libonnxruntime.so.1.32.0");
    assert!(model.exists() && ort.exists(), "model or ONNX Runtime missing: run `make setup` (scripts/setup)");

    let used: BTreeSet<String> = [
        "docs/grafana-dashboard.json",
        "helm/perisai/templates/prometheusrule.yaml",
        "helm/perisai/templates/scaledobject.yaml",
        "helm/perisai/values.yaml",
    ]
    .iter()
    .flat_map(|f| metric_names(&repo_file(f)))
    .collect();
    assert!(used.len() >= 15, "expected the dashboard and rules to use many metrics, found {used:?}");

    let brokers = brokers();
    let topics = create_topics(&brokers, "metrics", 2).await;
    let dir = temp_dir();
    let blocked = png(1, 32);
    write_file(
        &dir.path().join("bank.csv"),
        &format!("signal,hash,entry\nmd5,{},case-1\nmd5,nothex,bad-row\n", perisai::hash::exact::exact_hashes(&blocked).md5),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!(
        r#"
[[banks]]
name = "block"
file = "{d}/bank.csv"
action = "block"
on_bad_row = "skip"

[classifier]
enabled = true
model_path = "{model}"
ort_library = "{ort}"
intra_threads = 1
"#,
        d = dir.path().display(),
        model = model.display(),
        ort = ort.display()
    );
    let config = write_config(dir.path(), &brokers, &topics, &extra);
    let text = std::fs::read_to_string(&config).unwrap().replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(&config, text).unwrap();

    // One of each: a bank match (classifier skipped), a clean image (classified), a media error,
    // an unparseable record (DLQ), a non-image.
    let records = vec![
        ("m1".to_string(), event_json("e1", &blocked, "image/png")),
        ("m2".to_string(), event_json("e2", &png(2, 64), "image/png")),
        ("m3".to_string(), event_json("e3", b"not an image", "image/png")),
        ("m4".to_string(), b"{broken".to_vec()),
        ("m5".to_string(), event_json("e5", b"\x00\x00\x00\x18ftypmp42", "video/mp4")),
    ];
    produce_all(&producer(&brokers), &topics.input, &records).await;
    // The bank panels: one record applied, one rejected (a bank no config declares).
    let banked = perisai::hash::exact::exact_hashes(&png(3, 32)).md5;
    let entry = |bank: &str| {
        serde_json::to_vec(&serde_json::json!({"schema": "perisai.bank_entry/v1", "bank": bank, "signal": "md5",
            "hash": banked, "entry": "case-2", "source": "test", "added_at": "2026-11-29T00:00:00Z"}))
        .unwrap()
    };
    let bank_records = vec![(format!("block/md5/{banked}"), entry("block")), (format!("nobank/md5/{banked}"), entry("nobank"))];
    produce_all(&producer(&brokers), &topics.banks, &bank_records).await;
    let mut worker = spawn_worker(&config, dir.path(), 0);
    let outputs = read_until(&brokers, &[&topics.verdicts, &topics.dlq], Duration::from_secs(60), |o| o.len() >= 5);
    assert_eq!(outputs.len(), 5, "{}", worker_log(dir.path(), 0));

    // Statistics (consumer lag) arrive every statistics_interval_ms; poll until everything shows.
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut missing = used.clone();
    for _ in 0..50 {
        let body = reqwest::get(&url).await.and_then(|r| r.error_for_status()).expect("GET /metrics");
        let exported = metric_names(&body.text().await.unwrap());
        missing = used.difference(&exported).cloned().collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.unwrap().status();
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(20)).success());
    assert!(missing.is_empty(), "used by the dashboard/alerts but not exported: {missing:?}\n{}", worker_log(dir.path(), 0));
    assert_eq!(ready, 200, "/readyz once banks are loaded and partitions assigned");
}
