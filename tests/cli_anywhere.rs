//! The command line from any working directory: the classifier's files are found where
//! `make setup` installed them, relative paths in a config file resolve against that file, and a
//! classifier that is asked for but missing fails in one line that says how to install it.
//! Needs `make setup` (the real model); no broker.

use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nsfw/images/sk_chelsea.png")
}

mod common;

use common::perisai_in as perisai;

#[test]
fn scan_runs_the_classifier_from_any_directory() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/open-nsfw.onnx");
    assert!(model.is_file(), "the model is not installed: run `make setup` (scripts/setup) first");
    let elsewhere = tempfile::tempdir().unwrap();
    let out = perisai(elsewhere.path(), &["scan", fixture().to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("classifier on"), "scan says the classifier ran: {stderr}");
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one verdict");
    let reasons = verdict["reasons"].as_array().unwrap();
    assert!(reasons.iter().any(|r| r["kind"] == "classifier"), "{verdict}");
    assert!(!stderr.contains('\u{1b}'), "no colour codes when stderr is not a terminal: {stderr:?}");
}

#[test]
fn config_paths_resolve_against_the_config_file() {
    let config_dir = tempfile::tempdir().unwrap();
    let md5 = perisai::hash::exact::exact_hashes(&std::fs::read(fixture()).unwrap()).md5;
    std::fs::create_dir(config_dir.path().join("banks")).unwrap();
    std::fs::write(config_dir.path().join("banks/b.csv"), format!("signal,hash,entry\nmd5,{md5},case-7\n")).unwrap();
    let config = config_dir.path().join("perisai.toml");
    std::fs::write(&config, "[classifier]\nenabled = false\n\n[[banks]]\nname = \"b\"\nfile = \"banks/b.csv\"\naction = \"block\"\n").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = perisai(elsewhere.path(), &["scan", "--config", config.to_str().unwrap(), fixture().to_str().unwrap()]);
    assert!(out.status.success());
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one verdict");
    assert_eq!(verdict["action"], "block", "{verdict}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("classifier off"));
    // check-config shows the resolved paths.
    let out = perisai(elsewhere.path(), &["check-config", "--config", config.to_str().unwrap()]);
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("TOML");
    let bank_file = printed["banks"][0]["file"].as_str().unwrap();
    assert_eq!(Path::new(bank_file), config_dir.path().join("banks/b.csv"));
    let manifest = printed["classifier"]["manifest"].as_str().unwrap();
    assert!(Path::new(manifest).is_absolute() && Path::new(manifest).is_file(), "{manifest}");
}

#[test]
fn a_classifier_asked_for_but_missing_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("perisai.toml");
    std::fs::write(&config, "[classifier]\nenabled = true\nmodel_path = \"nowhere/model.onnx\"\n").unwrap();
    let out = perisai(dir.path(), &["scan", "--config", config.to_str().unwrap(), fixture().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("nowhere/model.onnx") && stderr.contains("make setup"), "{stderr}");
}

/// `scan` screens several files at once and still prints one verdict per file in the order
/// given, each the same as the file scanned alone; a file it cannot read is reported, not fatal.
#[test]
fn scan_screens_files_at_once_and_prints_them_in_order() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nsfw/images");
    let names = ["sk_coffee.png", "jd_tower.jpg", "missing.jpg", "sk_chelsea.png", "pdq_bridge.jpg", "sk_rocket.jpg"];
    let paths: Vec<String> = names.iter().map(|n| dir.join(n).display().to_string()).collect();
    let mut args = vec!["scan", "--jobs", "4"];
    args.extend(paths.iter().map(String::as_str));
    let out = perisai(&dir, &args);
    assert!(!out.status.success(), "a missing file fails the run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.jpg"));
    let together: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let order: Vec<&str> = together.iter().map(|v| v["media_id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = paths.iter().filter(|p| !p.ends_with("missing.jpg")).map(String::as_str).collect();
    assert_eq!(order, expected);
    for (verdict, path) in together.iter().zip(&expected) {
        let alone = perisai(&dir, &["scan", "--jobs", "1", path]);
        let alone: serde_json::Value = serde_json::from_slice(&alone.stdout).unwrap();
        assert_eq!((&verdict["reasons"], &verdict["signals"]), (&alone["reasons"], &alone["signals"]), "{path}");
    }
}
