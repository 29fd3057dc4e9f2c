//! `perisai demo` (what `make demo` runs) on its embedded broker: every event answered, the live
//! bank story told in order (blocked after the report, allowed after the withdrawal), and the
//! classifier sending the tinted landscape to review on profile pictures only. Needs `make setup`.

use std::process::Command;

#[test]
fn the_demo_tells_its_stories() {
    let out = Command::new(env!("CARGO_BIN_EXE_perisai")).arg("demo").output().expect("run perisai demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let row = |label: &str| -> Vec<&str> { stdout.lines().filter(|l| l.contains(label)).collect() };

    let report = row("after victim's report");
    assert_eq!(report.len(), 1, "{stdout}");
    assert!(report[0].contains(" block ") && report[0].contains("demo-ncii md5 stopncii-case-314"), "{}", report[0]);
    let withdrawn = row("after withdrawal");
    assert_eq!(withdrawn.len(), 1, "{stdout}");
    assert!(withdrawn[0].contains(" allow ") && withdrawn[0].contains("no match"), "{}", withdrawn[0]);

    assert!(stdout.contains("classifier: on"), "the model is installed by `make setup`:\n{stdout}");
    let tinted = row("coffee_skin_tint.jpg");
    assert_eq!(tinted.len(), 4, "{stdout}");
    for line in &tinted {
        let on_profile = line.contains("initech");
        assert_eq!(line.contains(" review ") && line.contains("band=review"), on_profile, "{line}");
        assert_eq!(line.contains(" allow "), !on_profile, "{line}");
    }
    let summary = stdout.lines().find(|l| l.contains(" events in ")).expect("summary line");
    let total: usize = summary.split_whitespace().next().unwrap().parse().unwrap();
    // The demo itself fails unless every event has a verdict or DLQ record.
    assert_eq!(stdout.lines().filter(|l| l.starts_with("e-")).count(), total, "one row per event");
}
