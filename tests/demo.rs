//! `perisai demo` (what `make demo` runs) on its embedded broker: every event answered, the live
//! bank story told in order (blocked after the report, allowed after the withdrawal), the
//! classifier sending the tinted landscape to review on profile pictures only, a retroactive
//! takedown of its earlier copies, and vPDQ blocking a banked clip's copies; last, a replay of its
//! verdicts under a stricter policy. Needs `make setup` and the video helper (`make build`).

use std::process::Command;

#[test]
fn the_demo_tells_its_stories() {
    let out = Command::new(env!("CARGO_BIN_EXE_perisai")).arg("demo").output().expect("run perisai demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // Rows of the events table (retroactive verdicts are listed apart, as `retro` rows).
    let row = |label: &str| -> Vec<&str> { stdout.lines().filter(|l| l.starts_with("e-") && l.contains(label)).collect() };

    let report = row("after victim's report");
    assert_eq!(report.len(), 1, "{stdout}");
    assert!(report[0].contains(" block ") && report[0].contains("demo-ncii md5 stopncii-case-314"), "{}", report[0]);
    let withdrawn = row("after withdrawal");
    assert_eq!(withdrawn.len(), 1, "{stdout}");
    assert!(withdrawn[0].contains(" allow ") && !withdrawn[0].contains("demo-ncii"), "{}", withdrawn[0]);
    assert!(withdrawn[0].contains("nsfw ") && withdrawn[0].contains(" at "), "the video's frames were scored: {}", withdrawn[0]);

    // Videos: the banked clip's re-encoded and trimmed copies are blocked by its vPDQ entry, an
    // unrelated clip is allowed (its frames scored by the classifier).
    for copy in ["clip_reencoded.webm", "clip_trimmed.mp4"] {
        let line = row(copy);
        assert_eq!(line.len(), 1, "{stdout}");
        assert!(line[0].contains(" block ") && line[0].contains("demo-block vpdq case-2001 frames 100%/"), "{}", line[0]);
    }
    let other = row("other.mp4");
    assert_eq!(other.len(), 1, "{stdout}");
    assert!(other[0].contains(" allow ") && !other[0].contains("vpdq"), "{}", other[0]);

    assert!(stdout.contains("classifier: on"), "the model is installed by `make setup`:\n{stdout}");
    let tinted = row("coffee_skin_tint.jpg");
    assert_eq!(tinted.len(), 4, "{stdout}");
    for line in &tinted {
        let on_profile = line.contains("initech");
        assert_eq!(line.contains(" review ") && line.contains("band=review"), on_profile, "{line}");
        assert_eq!(line.contains(" allow "), !on_profile, "{line}");
    }
    // Retroactive takedown: the report about the tinted landscape arrives after its four uploads,
    // each gets a superseding block verdict; the block that rested on the withdrawn video hash is
    // undone when the retro replica reads the verdicts back.
    let retro: Vec<&str> = stdout.lines().filter(|l| l.starts_with("retro ")).collect();
    assert_eq!(retro.len(), 5, "{stdout}");
    let retro_tinted: Vec<&&str> = retro.iter().filter(|l| l.contains("coffee_skin_tint.jpg")).collect();
    assert_eq!(retro_tinted.len(), 4, "{stdout}");
    for line in retro_tinted {
        assert!(line.contains(" block ") && line.contains("demo-ncii pdq stopncii-case-2718"), "{line}");
    }
    let undone = retro.iter().find(|l| l.contains("video after victim's report")).expect("the withdrawn block is undone");
    assert!(undone.contains(" allow ") && undone.contains("(block)"), "{undone}");
    // Last, the what-if: the tinted landscape (open_nsfw ≈ 0.58), allowed in posts and messages,
    // goes to review there once the review band drops to 0.4; profile pictures were review already.
    let replay = stdout.split("policy replay (perisai policy replay)").nth(1).expect("the demo ends with a policy replay");
    for group in ["acme / post", "acme / dm", "globex / dm"] {
        let line = replay.lines().find(|l| l.starts_with(group)).unwrap_or_else(|| panic!("{group} in:\n{replay}"));
        assert!(line.contains("allow → review"), "{line}");
    }
    let profile = replay.lines().find(|l| l.starts_with("initech / profile")).expect("profile row");
    assert!(!profile.contains("review → allow"), "a stricter policy never lets through what it reviewed: {profile}");
    let summary = stdout.lines().find(|l| l.contains(" events in ")).expect("summary line");
    let total: usize = summary.split_whitespace().next().unwrap().parse().unwrap();
    // The demo itself fails unless every event has a verdict or DLQ record.
    assert_eq!(stdout.lines().filter(|l| l.starts_with("e-")).count(), total, "one row per event");
}
