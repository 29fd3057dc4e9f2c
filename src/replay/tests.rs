//! Replay on a fixed, generated history. Every expected number is computed here, from the scores,
//! the thresholds and the labels, by plain counting — never read back from the code under test.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::config::BandOverride;

const MODEL: &str = "864bb37bf886";
const OTHER_MODEL: &str = "0123456789ab";

/// One upload of the fixed history.
#[derive(Debug, Clone)]
struct Spec {
    event_id: String,
    media_id: String,
    tenant: &'static str,
    surface: Option<&'static str>,
    score: Option<f32>,
    /// A block bank matched (the classifier was skipped).
    hash_block: bool,
    /// A review bank matched (the classifier still ran).
    hash_review: bool,
    media_error: bool,
    unscreened: bool,
    day: &'static str,
    /// A reviewer's decision, and whether it names the upload by event id (else by media id).
    label: Option<(bool, bool)>,
}

fn old_policy() -> PolicySettings {
    PolicySettings {
        version: "old-1".into(),
        media_error_action: Action::Review,
        non_image_action: Action::Allow,
        bands: Bands { review: 0.8, block: 0.98 },
        overrides: vec![BandOverride { tenant: Some("acme".into()), surface: Some("dm".into()), review: 0.6, block: 0.9 }],
        model_sha256: None,
    }
}

const NEW_POLICY_TOML: &str = r#"
[policy]
version = "new-2"
media_error_action = "block"
non_image_action = "review"
model_sha256 = "864BB3"

[policy.bands]
review = 0.5
block = 0.95

[[policy.overrides]]
tenant = "acme"
surface = "dm"
review = 0.4
block = 0.85
"#;

fn new_policy() -> PolicySettings {
    parse_policy(NEW_POLICY_TOML).expect("the test's policy is valid")
}

/// The bands the test expects for a tenant/surface (written out, not looked up).
fn bands(policy: &PolicySettings, tenant: &str, surface: Option<&str>) -> (f32, f32) {
    match (policy.version.as_str(), tenant, surface) {
        ("old-1", "acme", Some("dm")) => (0.6, 0.9),
        ("old-1", ..) => (0.8, 0.98),
        ("new-2", "acme", Some("dm")) => (0.4, 0.85),
        ("new-2", ..) => (0.5, 0.95),
        _ => unreachable!(),
    }
}

/// The action the test expects: a block bank blocks; otherwise the strongest of the classifier
/// band, a review bank, the media-error action and the non-image action.
fn expected_action(spec: &Spec, policy: &PolicySettings) -> Action {
    if spec.hash_block {
        return Action::Block;
    }
    let (review, block) = bands(policy, spec.tenant, spec.surface);
    let mut action = Action::Allow;
    if let Some(score) = spec.score {
        if score >= block {
            action = Action::Block;
        } else if score >= review {
            action = action.max(Action::Review);
        }
    }
    if spec.hash_review {
        action = action.max(Action::Review);
    }
    if spec.media_error {
        action = action.max(policy.media_error_action);
    }
    if spec.unscreened {
        action = action.max(policy.non_image_action);
    }
    action
}

fn band_name(spec: &Spec, policy: &PolicySettings) -> &'static str {
    let (review, block) = bands(policy, spec.tenant, spec.surface);
    match spec.score {
        Some(s) if s >= block => "block",
        Some(s) if s >= review => "review",
        _ => "none",
    }
}

/// 300 uploads (and 24 on the thresholds) over three tenant/surfaces and three days: scored ones (scores on a 0.01 grid, so
/// many sit exactly on a threshold), hash-blocked, review-bank matches, media errors, non-image
/// media; about a third labelled, violating with a probability that grows with the score.
fn specs() -> Vec<Spec> {
    let groups = [("acme", Some("post")), ("acme", Some("dm")), ("globex", None)];
    let days = ["2026-12-01", "2026-12-02", "2026-12-03"];
    let mut state = 0x5eed_u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut specs: Vec<Spec> = (0..300)
        .map(|i| {
            let (tenant, surface) = groups[i % 3];
            let kind = next() % 20;
            let score = (next() % 101) as f32 / 100.0;
            let (hash_block, media_error, unscreened) = (kind == 0, kind == 1, kind == 2);
            let scored = !(hash_block || media_error || unscreened);
            let violating = (next() % 100) as f32 / 100.0 < score;
            Spec {
                event_id: format!("e-{i:04}"),
                media_id: format!("m-{i:04}"),
                tenant,
                surface,
                score: scored.then_some(score),
                hash_block,
                hash_review: kind == 3,
                media_error,
                unscreened,
                day: days[(i / 7) % 3],
                label: (next() % 3 == 0).then_some((violating, i % 2 == 0)),
            }
        })
        .collect();
    // Labelled scores exactly on every threshold, old and new: "≥" must count them in the band.
    for (g, (tenant, surface)) in groups.into_iter().enumerate() {
        for (j, score) in [0.4f32, 0.5, 0.6, 0.8, 0.85, 0.9, 0.95, 0.98].into_iter().enumerate() {
            let i = specs.len();
            specs.push(Spec {
                event_id: format!("e-{i:04}"),
                media_id: format!("m-{i:04}"),
                tenant,
                surface,
                score: Some(score),
                hash_block: false,
                hash_review: false,
                media_error: false,
                unscreened: false,
                day: days[j % 3],
                label: Some(((g + j) % 3 != 0, j % 2 == 0)),
            });
        }
    }
    specs
}

fn verdict_json(spec: &Spec, action: Action, band: &str, model: &str, decided_at: &str) -> String {
    let mut reasons = Vec::new();
    if spec.hash_block {
        reasons.push(json!({"kind":"hash_match","bank":"ncii","signal":"md5","entry":"case-1","action":"block"}));
    }
    if spec.hash_review {
        reasons.push(json!({"kind":"hash_match","bank":"reports","signal":"pdq","entry":"r-1","action":"review","distance":4,"quality":90}));
    }
    if let Some(score) = spec.score {
        reasons.push(json!({"kind":"classifier","model":"open_nsfw","model_sha256":model,"label":"nsfw","score":score,"band":band}));
    }
    if spec.media_error {
        reasons.push(json!({"kind":"media_error","error":"decode","detail":"truncated"}));
    }
    if spec.unscreened {
        reasons.push(json!({"kind":"unscreened","what":"non-image media: exact hashes only","action":"allow"}));
    }
    reasons.push(json!({"kind":"low_quality","signal":"pdq","quality":20,"floor":50}));
    let mut verdict = json!({
        "schema":"perisai.verdict/v1","event_id":spec.event_id,"media_id":spec.media_id,"tenant":spec.tenant,
        "action":action,"reasons":reasons,"signals":{"md5":"00"},"policy":"old-1","decided_at":decided_at,"latency_ms":3.5
    });
    if let Some(surface) = spec.surface {
        verdict["surface"] = json!(surface);
    }
    verdict.to_string()
}

fn recorded_json(spec: &Spec) -> String {
    let old = old_policy();
    verdict_json(spec, expected_action(spec, &old), band_name(spec, &old), MODEL, &format!("{}T12:00:00Z", spec.day))
}

/// The history as JSON lines, with what a real topic also holds: a retroactive verdict, a
/// redelivered verdict (read later, decided earlier, with other content), verdicts of another
/// model, and malformed records.
fn history_lines(specs: &[Spec]) -> Vec<String> {
    let mut lines: Vec<String> = specs.iter().map(recorded_json).collect();
    let mut retro: serde_json::Value = serde_json::from_str(&recorded_json(&specs[0])).unwrap();
    retro["event_id"] = json!("retro-0001");
    retro["action"] = json!("block");
    retro["retro"] = json!({"upload_event_id": specs[0].event_id, "supersedes": specs[0].event_id, "previous_action": "allow", "changes": []});
    lines.push(retro.to_string());
    let mut stale = specs[1].clone();
    stale.score = Some(0.01);
    stale.hash_block = false;
    lines.push(verdict_json(&stale, Action::Allow, "none", MODEL, &format!("{}T11:00:00Z", specs[1].day)));
    lines.push("not json at all".into());
    lines.push(recorded_json(&specs[2]).replace("perisai.verdict/v1", "perisai.verdict/v9"));
    lines
}

/// Uploads scored by another model: reported apart.
fn other_model_specs() -> Vec<Spec> {
    (0..3)
        .map(|i| Spec {
            event_id: format!("x-{i}"),
            media_id: format!("xm-{i}"),
            tenant: "acme",
            surface: Some("post"),
            score: Some(0.9),
            hash_block: false,
            hash_review: false,
            media_error: false,
            unscreened: false,
            day: "2026-12-01",
            label: Some((true, true)),
        })
        .collect()
}

fn other_model_lines() -> Vec<String> {
    other_model_specs().iter().map(|s| verdict_json(s, Action::Review, "review", OTHER_MODEL, "2026-12-01T12:00:00Z")).collect()
}

fn review_json(spec: &Spec, violating: bool, by_event: bool, decided_at: &str) -> String {
    let mut review = json!({"schema":"perisai.review/v1","decision": if violating {"violating"} else {"benign"},"decided_at":decided_at,"reviewer":"r-1"});
    if by_event {
        review["event_id"] = json!(spec.event_id);
    } else {
        review["media_id"] = json!(spec.media_id);
    }
    review.to_string()
}

/// Labels of the specs that have one; for the first labelled upload, an older review that says
/// the opposite, read after the newer one (the newer must win); one malformed record.
fn review_lines(specs: &[Spec]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut contradicted = false;
    for spec in specs.iter().chain(other_model_specs().iter()) {
        if let Some((violating, by_event)) = spec.label {
            lines.push(review_json(spec, violating, by_event, "2026-12-05T10:00:00Z"));
            if !contradicted {
                lines.push(review_json(spec, !violating, by_event, "2026-12-04T10:00:00Z"));
                contradicted = true;
            }
        }
    }
    lines.push(r#"{"schema":"perisai.review/v1","decision":"benign","decided_at":"2026-12-05T10:00:00Z"}"#.into());
    lines
}

fn run_replay(specs: &[Spec], proposed: &PolicySettings, target_precision: Option<f64>) -> Report {
    let mut verdicts = Verdicts::new(None);
    for (i, line) in history_lines(specs).iter().chain(other_model_lines().iter()).enumerate() {
        verdicts.add(Origin::Line { file: "verdicts.jsonl", line: i + 1 }, Some(line.as_bytes()));
    }
    let mut labels = Labels::default();
    for (i, line) in review_lines(specs).iter().enumerate() {
        labels.add(Origin::Line { file: "reviews.jsonl", line: i + 1 }, Some(line.as_bytes()));
    }
    replay(verdicts, &labels, &old_policy(), proposed, &Options { samples: 3, target_precision })
}

fn key(spec: &Spec) -> GroupKey {
    GroupKey { tenant: spec.tenant.into(), surface: spec.surface.map(str::to_string) }
}

#[test]
fn transitions_match_a_count_from_the_scores_and_thresholds() {
    let specs = specs();
    let (old, new) = (old_policy(), new_policy());
    let report = run_replay(&specs, &new, None);

    // (transition) -> (count, of which without a score), per tenant/surface.
    let mut want: BTreeMap<GroupKey, BTreeMap<(Action, Action), (u64, u64)>> = BTreeMap::new();
    let mut want_days: BTreeMap<GroupKey, BTreeMap<String, DayReviews>> = BTreeMap::new();
    for spec in &specs {
        let (before, after) = (expected_action(spec, &old), expected_action(spec, &new));
        let cell = want.entry(key(spec)).or_default().entry((before, after)).or_default();
        cell.0 += 1;
        cell.1 += u64::from(spec.score.is_none());
        if before == Action::Review || after == Action::Review {
            let day = want_days.entry(key(spec)).or_default().entry(spec.day.to_string()).or_default();
            day.before += u64::from(before == Action::Review);
            day.after += u64::from(after == Action::Review);
        }
    }
    let mut changed_somewhere = 0;
    for (group_key, transitions) in &want {
        let group = &report.groups[group_key];
        let got: BTreeMap<(Action, Action), (u64, u64)> =
            group.transitions.iter().map(|(k, t)| (*k, (t.count, t.no_score))).collect();
        assert_eq!(&got, transitions, "{group_key}");
        assert_eq!(group.verdicts, transitions.values().map(|c| c.0).sum::<u64>(), "{group_key}");
        assert_eq!(group.review_per_day, want_days[group_key], "{group_key}");
        changed_somewhere += group.changed();
        for ((from, to), t) in &group.transitions {
            let expected_samples = if from == to { 0 } else { t.count.min(3) as usize };
            assert_eq!(t.samples.len(), expected_samples, "{group_key} {from:?}->{to:?}");
            for id in &t.samples {
                let spec = specs.iter().find(|s| &s.event_id == id).expect("a sample is a replayed upload");
                assert_eq!((expected_action(spec, &old), expected_action(spec, &new)), (*from, *to), "sample {id}");
            }
        }
    }
    assert!(changed_somewhere > 20, "the history exercises the new bands: {changed_somewhere} changes");
    // The stricter media-error and non-image actions move verdicts that have no score at all.
    let no_score_moves: u64 = report.groups.values().flat_map(|g| &g.transitions).filter(|((f, t), _)| f != t).map(|(_, t)| t.no_score).sum();
    let want_no_score_moves = specs.iter().filter(|s| s.score.is_none() && expected_action(s, &old) != expected_action(s, &new)).count();
    assert!(want_no_score_moves > 0);
    assert_eq!(no_score_moves, want_no_score_moves as u64);
    // Hash-blocked verdicts have no score and stay blocked.
    for spec in specs.iter().filter(|s| s.hash_block) {
        let t = &report.groups[&key(spec)].transitions[&(Action::Block, Action::Block)];
        assert!(t.no_score >= 1);
    }

    let input = &report.input;
    assert_eq!(input.replayed, specs.len() as u64);
    assert_eq!(input.retro_skipped, 1);
    assert_eq!(input.duplicates, 1, "the redelivered verdict");
    assert_eq!(input.model_mismatch, 3);
    assert_eq!(input.problems.count, 2);
    assert_eq!(input.read, specs.len() as u64 + 4 + 3);
    // Scores of the replayed verdicts only (the stale duplicate's 0.01 is not among them).
    let want_scores = specs.iter().filter(|s| s.score.is_some()).count();
    assert_eq!(report.groups.values().map(|g| g.scores.len()).sum::<usize>(), want_scores);
    // The duplicate kept is the later decision, though read first.
    let spec = &specs[1];
    let kept = (expected_action(spec, &old), expected_action(spec, &new));
    assert!(report.groups[&key(spec)].transitions.contains_key(&kept));
}

/// Brute force: for every candidate threshold, count.
fn brute_quality(items: &[(f32, bool)], threshold: f32) -> Quality {
    let tp = items.iter().filter(|(s, v)| *s >= threshold && *v).count() as u64;
    let fp = items.iter().filter(|(s, v)| *s >= threshold && !*v).count() as u64;
    let missed = items.iter().filter(|(s, v)| *s < threshold && *v).count() as u64;
    Quality { tp, fp, missed }
}

#[test]
fn precision_and_recall_match_a_count_from_the_labels() {
    let specs = specs();
    let (old, new) = (old_policy(), new_policy());
    let target = 0.9;
    let report = run_replay(&specs, &new, Some(target));
    assert_eq!(report.labels.as_ref().map(|l| l.problems.count), Some(1));

    let mut checked = 0;
    for group_key in report.groups.keys() {
        let members: Vec<&Spec> = specs.iter().filter(|s| &key(s) == group_key).collect();
        let labelled: Vec<(&Spec, bool)> = members.iter().filter_map(|s| s.label.map(|(v, _)| (*s, v))).collect();
        let scored: Vec<(f32, bool)> = labelled.iter().filter_map(|(s, v)| s.score.map(|score| (score, *v))).collect();
        let group = &report.groups[group_key];
        let Some(labels) = &group.labels else {
            assert!(labelled.is_empty(), "{group_key}");
            continue;
        };
        assert_eq!(labels.labelled, scored.len() as u64, "{group_key}");
        assert_eq!(labels.unscored, (labelled.len() - scored.len()) as u64, "{group_key}");
        assert_eq!(labels.violating, scored.iter().filter(|(_, v)| *v).count() as u64);
        let (old_review, old_block) = bands(&old, group_key.tenant.as_str(), group_key.surface.as_deref());
        let (new_review, new_block) = bands(&new, group_key.tenant.as_str(), group_key.surface.as_deref());
        // The recorded band is the old policy's: the same as thresholding at the old values.
        assert_eq!(labels.review_recorded, brute_quality(&scored, old_review), "{group_key}");
        assert_eq!(labels.block_recorded, brute_quality(&scored, old_block), "{group_key}");
        assert_eq!(labels.review_proposed, brute_quality(&scored, new_review), "{group_key}");
        assert_eq!(labels.block_proposed, brute_quality(&scored, new_block), "{group_key}");
        let q = labels.review_proposed;
        let tp = scored.iter().filter(|(s, v)| *s >= new_review && *v).count() as f64;
        let flagged = scored.iter().filter(|(s, _)| *s >= new_review).count() as f64;
        let violating = scored.iter().filter(|(_, v)| *v).count() as f64;
        assert_eq!(q.precision(), (flagged > 0.0).then(|| tp / flagged));
        assert_eq!(q.recall(), (violating > 0.0).then(|| tp / violating));

        // The lowest candidate threshold reaching the target, found by trying each in turn.
        let mut candidates: Vec<f32> = scored.iter().map(|(s, _)| *s).collect();
        candidates.sort_by(f32::total_cmp);
        candidates.dedup();
        let want = candidates.iter().copied().find(|&t| {
            let q = brute_quality(&scored, t);
            q.tp + q.fp > 0 && q.tp as f64 / (q.tp + q.fp) as f64 >= target
        });
        match (want, labels.target) {
            (Some(t), Some(Target::At(point))) => {
                assert_eq!(point.threshold, t, "{group_key}");
                assert_eq!(point.quality, brute_quality(&scored, t), "{group_key}");
            }
            (None, Some(Target::NotReachable)) => {}
            (want, got) => panic!("{group_key}: want {want:?}, got {got:?}"),
        }
        assert_eq!(labels.curve.len(), candidates.len());
        checked += 1;
    }
    assert_eq!(checked, 3, "every tenant/surface has labels");
    // Labels of the other model's verdicts are not joined: those verdicts are not replayed.
    let joined = specs.iter().filter(|s| s.label.is_some()).count() as u64;
    assert_eq!(report.labels.as_ref().unwrap().joined, joined);
    // An unreachable target says so.
    let report = run_replay(&specs, &new, Some(1.0));
    let reachable = report.groups.values().filter_map(|g| g.labels.as_ref()).filter(|l| matches!(l.target, Some(Target::At(_)))).count();
    let text = report::text(&report);
    assert!(reachable < 3 || !text.contains("not reachable"));
    if reachable < 3 {
        assert!(text.contains("target precision 1: not reachable"), "{text}");
    }
}

#[test]
fn the_newest_review_of_an_upload_wins() {
    let specs = specs();
    let first = specs.iter().find(|s| s.label.is_some() && s.score.is_some()).unwrap();
    let (violating, _) = first.label.unwrap();
    let mut labels = Labels::default();
    for (i, line) in review_lines(&specs).iter().enumerate() {
        labels.add(Origin::Line { file: "r", line: i + 1 }, Some(line.as_bytes()));
    }
    assert_eq!(labels.violating(&first.event_id, &first.media_id), Some(violating));
    // By media id when no label names the event.
    let by_media = specs.iter().find(|s| matches!(s.label, Some((_, false)))).unwrap();
    assert_eq!(labels.violating("no-such-event", &by_media.media_id), Some(by_media.label.unwrap().0));
    assert_eq!(labels.violating("no-such-event", "no-such-media"), None);
}

#[test]
fn model_mismatches_are_reported_apart() {
    let specs = specs();
    let report = run_replay(&specs, &new_policy(), None);
    let acme_post = GroupKey { tenant: "acme".into(), surface: Some("post".into()) };
    let group = &report.groups[&acme_post];
    assert_eq!(group.mismatched, BTreeMap::from([(OTHER_MODEL.to_string(), 3)]));
    assert_eq!(group.verdicts, specs.iter().filter(|s| key(s) == acme_post).count() as u64, "not in the table");
    let text = report::text(&report);
    assert!(text.contains("3 verdicts scored by another model are left out"), "{text}");
    assert!(text.contains(&format!("acme / post: 3 verdicts scored by model {OTHER_MODEL}")), "{text}");

    // Without a model in the policy, every verdict counts.
    let mut any_model = new_policy();
    any_model.model_sha256 = None;
    let report = run_replay(&specs, &any_model, None);
    assert_eq!(report.input.model_mismatch, 0);
    assert_eq!(report.groups[&acme_post].verdicts, group.verdicts + 3);
    // A full sha256 names the model whose prefix verdicts carry.
    assert!(same_model(&format!("{MODEL}{}", "0".repeat(52)), MODEL));
    assert!(!same_model("864bb4", MODEL));
    assert!(!same_model("864bb3", ""));
}

#[test]
fn a_policy_file_with_an_error_is_refused_naming_the_key() {
    let with = |from: &str, to: &str| NEW_POLICY_TOML.replacen(from, to, 1);
    for (text, names) in [
        (with("review = 0.5", "review = 1.5"), "policy.bands"),
        (with("review = 0.4", "review = 0.9"), "policy.overrides[0]"),
        (with("review = 0.5", "reveiw = 0.5"), "reveiw"),
        (with("media_error_action = \"block\"\n", ""), "media_error_action"),
        (with("media_error_action = \"block\"", "media_error_action = \"shrug\""), "shrug"),
        (with("model_sha256 = \"864BB3\"", "model_sha256 = \"open_nsfw\""), "policy.model_sha256"),
        (with("version = \"new-2\"", "version = \" \""), "policy.version"),
        (format!("{NEW_POLICY_TOML}\n[kafka]\nbrokers = \"x\"\n"), "kafka"),
        ("[bands]\nreview = 0.5\n".to_string(), "bands"),
    ] {
        let err = parse_policy(&text).expect_err(names);
        assert!(err.contains(names), "{names} not named in: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.toml");
    std::fs::write(&path, with("block = 0.95", "block = 0.45")).unwrap();
    let err = load_policy(&path).unwrap_err().to_string();
    assert!(err.contains("new.toml") && err.contains("policy.bands") && err.contains("review=0.5 block=0.45"), "{err}");
}

#[test]
fn malformed_lines_are_reported_with_file_and_line_and_the_rest_is_replayed() {
    let specs = specs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verdicts.jsonl");
    let good = recorded_json(&specs[5]);
    std::fs::write(&path, format!("{good}\n\n{{\"schema\":\"perisai.verdict/v1\"}}\r\n{}\n", recorded_json(&specs[6]))).unwrap();
    let mut verdicts = Verdicts::new(None);
    source::read_json_lines(&path, &mut |origin, bytes| verdicts.add(origin, bytes)).unwrap();
    assert_eq!(verdicts.read, 3, "the blank line is no record");
    assert_eq!(verdicts.problems.count, 1);
    let problem = &verdicts.problems.kept[0];
    assert!(problem.starts_with(&format!("{}:3: not a perisai.verdict/v1 verdict", path.display())), "{problem}");
    let report = replay(verdicts, &Labels::default(), &old_policy(), &new_policy(), &Options { samples: 5, target_precision: None });
    assert_eq!(report.input.replayed, 2);
    assert!(report.labels.is_none());
}

#[test]
fn tenant_filter_keeps_one_tenant() {
    let specs = specs();
    let mut verdicts = Verdicts::new(Some("globex".into()));
    for (i, line) in history_lines(&specs).iter().enumerate() {
        verdicts.add(Origin::Line { file: "v", line: i + 1 }, Some(line.as_bytes()));
    }
    let report = replay(verdicts, &Labels::default(), &old_policy(), &new_policy(), &Options { samples: 5, target_precision: None });
    assert_eq!(report.groups.keys().map(|k| k.tenant.as_str()).collect::<Vec<_>>(), vec!["globex"]);
    assert_eq!(report.input.replayed, specs.iter().filter(|s| s.tenant == "globex").count() as u64);
    assert!(report.input.other_tenants > 0);
}

#[test]
fn the_html_page_is_self_contained_with_one_chart_per_group_and_curve() {
    let specs = specs();
    let report = run_replay(&specs, &new_policy(), Some(0.8));
    let page = report::html(&report).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_eq!(page.matches("<svg class=\"histogram\"").count(), 3);
    assert_eq!(page.matches("<svg class=\"pr-curve\"").count(), 3);
    assert!(!page.contains("http"), "no URL of any kind");
    assert!(!page.contains("<script"), "no script");
    // The thresholds are drawn: each chart's legend names them.
    assert!(page.contains("proposed review 0.4") && page.contains("current review 0.6"), "acme/dm's bands");
}

#[test]
fn the_compact_table_lists_changes_per_group() {
    let specs = specs();
    let report = run_replay(&specs, &new_policy(), None);
    let table = report::compact(&report);
    assert_eq!(table.lines().count(), 1 + 3, "{table}");
    let acme_dm = table.lines().find(|l| l.starts_with("acme / dm")).unwrap();
    let group = &report.groups[&GroupKey { tenant: "acme".into(), surface: Some("dm".into()) }];
    assert!(acme_dm.contains(&format!(" {} ", group.changed())), "{acme_dm}");
}

/// The topic reader on the demo's in-process broker: every partition from its start up to the end
/// offsets noted when reading began (records written meanwhile are left out), each record handed
/// over with its partition and offset. (The mock broker cannot look offsets up by time, so the
/// `--since` start is left to the real-Kafka tests.)
#[test]
fn the_topic_reader_reads_every_partition_up_to_the_ends_noted_at_start() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let broker = crate::kafka::embedded::EmbeddedBroker::start().unwrap();
    broker.create_topic("verdicts", 2).unwrap();
    let mut settings = crate::config::Settings::load_with_env(None, Vec::<(String, String)>::new()).unwrap().kafka;
    settings.brokers = broker.bootstrap_servers();
    for (k, v) in crate::kafka::embedded::MOCK_CONSUMER_OPTIONS {
        settings.consumer.insert(k.to_string(), v.to_string());
    }
    let producer: BaseProducer = rdkafka::config::ClientConfig::new().set("bootstrap.servers", &settings.brokers).create().unwrap();
    let specs = specs();
    let send = |spec: &Spec, partition: i32| {
        let payload = recorded_json(spec);
        producer.send(BaseRecord::to("verdicts").key(&spec.media_id).payload(&payload).partition(partition)).map_err(|(e, _)| e).unwrap();
        producer.flush(std::time::Duration::from_secs(10)).unwrap();
    };
    for (i, spec) in specs.iter().take(7).enumerate() {
        send(spec, (i % 2) as i32);
    }

    let mut read = Vec::new();
    let covered = source::read_topic(&settings, "verdicts", None, &mut |origin, bytes| {
        if read.is_empty() {
            // Written after reading began: not part of this run.
            send(&specs[100], 0);
            send(&specs[101], 1);
        }
        read.push((origin.to_string(), decode_verdict(bytes).unwrap().event_id));
    })
    .unwrap();
    let mut got: Vec<String> = read.iter().map(|(_, id)| id.clone()).collect();
    got.sort();
    assert_eq!(got, specs.iter().take(7).map(|s| s.event_id.clone()).collect::<Vec<_>>());
    assert!(read.iter().any(|(origin, id)| origin == "verdicts[1]@2" && id == &specs[5].event_id), "{read:?}");
    assert_eq!(covered.ranges, BTreeMap::from([(0, (0, 4)), (1, (0, 3))]));
    assert_eq!(covered.records, 7);

    // The next run sees them; a topic that does not exist is said to be missing.
    let mut all = 0;
    source::read_topic(&settings, "verdicts", None, &mut |_, _| all += 1).unwrap();
    assert_eq!(all, 9);
    let err = source::read_topic(&settings, "no-such-topic", None, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, SourceError::Missing(_)), "{err}");
}
