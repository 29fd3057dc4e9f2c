//! The command line from any working directory: the classifier's files are found where
//! `make setup` installed them, relative paths in a config file resolve against that file, and a
//! classifier that is asked for but missing fails in one line that says how to install it.
//! Needs `make setup` (the real model); no broker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nsfw/images/sk_chelsea.png")
}

fn perisai(cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_perisai")).args(args).current_dir(cwd).output().expect("run perisai");
    eprintln!("perisai {}: {}\n{}{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

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
