//! `perisai policy replay` from the command line, on files (no broker): the transitions and the
//! precision/recall it prints for a fixed history equal what this test counts from the scores,
//! thresholds and labels; a bad policy file is refused naming its key; and the HTML report renders
//! in a real headless browser (Debian's `chromium`, which scripts/deps installs) without console
//! errors, with its charts drawn.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

mod common;

/// The current configuration's bands and the proposed ones (written into the files below).
const CURRENT: (f32, f32) = (0.7, 0.97);
const PROPOSED: (f32, f32) = (0.5, 0.9);

const CONFIG: &str = "[policy]\nversion = \"current-1\"\n\n[policy.bands]\nreview = 0.7\nblock = 0.97\n";
const POLICY: &str = "[policy]\nversion = \"proposed-2\"\nmedia_error_action = \"review\"\n\n[policy.bands]\nreview = 0.5\nblock = 0.9\n";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Act {
    Allow,
    Review,
    Block,
}

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::Allow => "allow",
            Act::Review => "review",
            Act::Block => "block",
        }
    }
}

/// One upload: tenant, surface, classifier score (none: blocked by hash or a media error).
struct Upload {
    id: String,
    tenant: &'static str,
    surface: Option<&'static str>,
    score: Option<f32>,
    hash_block: bool,
    media_error: bool,
    day: u32,
    /// A reviewer's decision.
    violating: Option<bool>,
}

fn action(upload: &Upload, (review, block): (f32, f32)) -> Act {
    if upload.hash_block {
        return Act::Block;
    }
    match upload.score {
        Some(s) if s >= block => Act::Block,
        Some(s) if s >= review => Act::Review,
        Some(_) => Act::Allow,
        None if upload.media_error => Act::Review, // media_error_action = review, before and after
        None => Act::Allow,
    }
}

fn history() -> Vec<Upload> {
    let mut uploads = Vec::new();
    for i in 0..40u32 {
        let (tenant, surface) = if i % 2 == 0 { ("acme", Some("post")) } else { ("globex", None) };
        let score = i as f32 * 0.025;
        uploads.push(Upload {
            id: format!("e-{i:03}"),
            tenant,
            surface,
            score: Some(score),
            hash_block: false,
            media_error: false,
            day: 1 + i % 3,
            // Mostly violating above 0.6, with a few reviewers disagreeing with the score.
            violating: (i % 4 != 3).then_some((score >= 0.6) != (i % 7 == 0)),
        });
    }
    for (i, (hash_block, media_error)) in [(true, false), (true, false), (false, true), (false, true)].into_iter().enumerate() {
        uploads.push(Upload {
            id: format!("n-{i}"),
            tenant: "acme",
            surface: Some("post"),
            score: None,
            hash_block,
            media_error,
            day: 2,
            violating: Some(true),
        });
    }
    uploads
}

fn verdict_line(upload: &Upload) -> String {
    let mut reasons = Vec::new();
    if upload.hash_block {
        reasons.push(json!({"kind":"hash_match","bank":"csam","signal":"pdq","entry":"c-1","action":"block","distance":3,"quality":92}));
    }
    if let Some(score) = upload.score {
        let band = match action(upload, CURRENT) {
            Act::Block => "block",
            Act::Review => "review",
            Act::Allow => "none",
        };
        reasons.push(json!({"kind":"classifier","model":"open_nsfw","model_sha256":"864bb37bf886","label":"nsfw","score":score,"band":band}));
    }
    if upload.media_error {
        reasons.push(json!({"kind":"media_error","error":"decode","detail":"truncated JPEG"}));
    }
    let mut verdict = json!({
        "schema":"perisai.verdict/v1","event_id":upload.id,"media_id":format!("m-{}", upload.id),"tenant":upload.tenant,
        "action":action(upload, CURRENT).name(),"reasons":reasons,"signals":{},"policy":"current-1",
        "decided_at":format!("2026-12-0{}T08:30:00Z", upload.day),"latency_ms":4.0
    });
    if let Some(surface) = upload.surface {
        verdict["surface"] = json!(surface);
    }
    verdict.to_string()
}

/// The history's files: verdicts (with a retroactive verdict and a malformed line), reviews,
/// the current configuration and the proposed policy.
struct Files {
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

fn write_files(uploads: &[Upload]) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut verdicts: Vec<String> = uploads.iter().map(verdict_line).collect();
    let mut retro: serde_json::Value = serde_json::from_str(&verdicts[0]).unwrap();
    retro["event_id"] = json!("retro-1");
    retro["action"] = json!("block");
    retro["retro"] = json!({"upload_event_id":"e-000","supersedes":"e-000","previous_action":"allow","changes":[]});
    verdicts.push(retro.to_string());
    verdicts.insert(5, "{\"schema\": \"perisai.verdict/v1\", broken".into());
    std::fs::write(path.join("verdicts.jsonl"), verdicts.join("\n") + "\n").unwrap();
    let reviews: Vec<String> = uploads
        .iter()
        .filter_map(|u| {
            let decision = if u.violating? { "violating" } else { "benign" };
            Some(json!({"schema":"perisai.review/v1","event_id":u.id,"decision":decision,"decided_at":"2026-12-05T09:00:00Z"}).to_string())
        })
        .collect();
    std::fs::write(path.join("reviews.jsonl"), reviews.join("\n") + "\n").unwrap();
    std::fs::write(path.join("perisai.toml"), CONFIG).unwrap();
    std::fs::write(path.join("new.toml"), POLICY).unwrap();
    Files { _dir: dir, dir: path }
}

use common::perisai_in as perisai;

/// A group's section of the text report: from its `== ` heading to the next.
fn section<'a>(stdout: &'a str, heading: &str) -> &'a str {
    let start = stdout.find(&format!("== {heading}:")).unwrap_or_else(|| panic!("no section {heading}:\n{stdout}"));
    let rest = &stdout[start + 3..];
    &rest[..rest.find("\n== ").unwrap_or(rest.len())]
}

/// Transition rows of a section: (before, after) → (count, no score).
fn transitions(section: &str) -> BTreeMap<(String, String), (u64, u64)> {
    section
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [from, "→", to, count, _rate, no_score, ..] if count.parse::<u64>().is_ok() => {
                    Some(((from.to_string(), to.to_string()), (count.parse().ok()?, no_score.parse().ok()?)))
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn replay_prints_the_transitions_and_band_quality_this_test_counts() {
    let uploads = history();
    let files = write_files(&uploads);
    let out = perisai(
        &files.dir,
        &[
            "policy", "replay", "--policy", "new.toml", "--config", "perisai.toml", "--from", "verdicts.jsonl", "--reviews",
            "reviews.jsonl", "--target-precision", "0.8", "--samples", "2",
        ],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("verdicts.jsonl:6: not a perisai.verdict/v1 verdict"), "the malformed line, by file and line: {stderr}");
    assert!(stdout.contains("1 retroactive"), "{stdout}");

    for (heading, tenant) in [("acme / post", "acme"), ("globex / (no surface)", "globex")] {
        let members: Vec<&Upload> = uploads.iter().filter(|u| u.tenant == tenant).collect();
        let mut want: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for u in &members {
            let cell = want.entry((action(u, CURRENT).name().into(), action(u, PROPOSED).name().into())).or_default();
            cell.0 += 1;
            cell.1 += u64::from(u.score.is_none());
        }
        let text = section(&stdout, heading);
        assert_eq!(transitions(text), want, "{heading}:\n{text}");
        assert!(text.contains(&format!("bands: review {} → {}, block {} → {}", CURRENT.0, PROPOSED.0, CURRENT.1, PROPOSED.1)), "{text}");

        // The review band at the proposed threshold against the labels, counted here.
        let labelled: Vec<(f32, bool)> = members.iter().filter_map(|u| Some((u.score?, u.violating?))).collect();
        let tp = labelled.iter().filter(|(s, v)| *s >= PROPOSED.0 && *v).count();
        let flagged = labelled.iter().filter(|(s, _)| *s >= PROPOSED.0).count();
        let violating = labelled.iter().filter(|(_, v)| *v).count();
        let line = text.lines().find(|l| l.contains(&format!("proposed ≥ {}", PROPOSED.0))).expect("review band row");
        assert!(line.contains(&format!("({tp}/{flagged})")) && line.contains(&format!("({tp}/{violating})")), "{line}");
        let precision = format!("{:.2}", tp as f64 / flagged as f64);
        assert!(line.contains(&precision), "{precision} in {line}");
    }
    let labelled_unscored = uploads.iter().filter(|u| u.score.is_none() && u.violating.is_some()).count();
    assert!(section(&stdout, "acme / post").contains(&format!("{labelled_unscored} labelled without a score")), "{stdout}");

    // A policy with an error is refused, naming the key.
    std::fs::write(files.dir.join("bad.toml"), POLICY.replace("block = 0.9", "block = 0.3")).unwrap();
    let out = perisai(&files.dir, &["policy", "replay", "--policy", "bad.toml", "--from", "verdicts.jsonl"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml") && stderr.contains("policy.bands"), "{stderr}");
}

/// `chromium`, or a failure that says how to install it: CI must run this test, never skip it.
fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed (CI={}): the HTML report is checked in a real browser; \
             install Debian's package: apt-get install -y chromium (scripts/deps does)",
            std::env::var("CI").unwrap_or_default()
        )
    })
}

/// Runs headless chromium on a page (bounded by `timeout`); its own profile directory, so runs
/// never share state.
fn browse(chromium: &Path, profile: &Path, page: &Path, mode: &str) -> Output {
    let out = Command::new("timeout")
        .arg("120")
        .arg(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--window-size=1200,2000"])
        .args(["--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium {mode} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// Console messages (any at all, on a page with no script, is a fault) and uncaught errors.
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught")).collect()
}

/// The width and height attributes of every `<svg` element with this class.
fn svg_sizes(dom: &str, class: &str) -> Vec<(u32, u32)> {
    let attribute = |tag: &str, name: &str| -> u32 {
        let at = tag.find(&format!(" {name}=\"")).unwrap_or_else(|| panic!("no {name} in {tag}")) + name.len() + 3;
        tag[at..].split('"').next().unwrap().parse().unwrap_or_else(|_| panic!("{name} is not a whole number in {tag}"))
    };
    dom.match_indices("<svg ")
        .map(|(at, _)| &dom[at..at + dom[at..].find('>').unwrap()])
        .filter(|tag| tag.contains(&format!("class=\"{class}\"")))
        .map(|tag| (attribute(tag, "width"), attribute(tag, "height")))
        .collect()
}

#[test]
fn the_html_report_renders_in_headless_chromium() {
    let chromium = chromium();
    let uploads = history();
    let files = write_files(&uploads);
    let out = perisai(
        &files.dir,
        &["policy", "replay", "--policy", "new.toml", "--from", "verdicts.jsonl", "--reviews", "reviews.jsonl", "--html", "report.html"],
    );
    assert!(out.status.success());
    let page = files.dir.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("http") && !html.contains("<script") && !html.contains(" src="), "self-contained: no URL, no script");

    let profile = tempfile::tempdir().unwrap();
    let shot = files.dir.join("report.png");
    let screenshot = browse(&chromium, profile.path(), &page, &format!("--screenshot={}", shot.display()));
    let dumped = browse(&chromium, profile.path(), &page, "--dump-dom");
    let (shot_log, dom_log) = (String::from_utf8_lossy(&screenshot.stderr), String::from_utf8_lossy(&dumped.stderr));
    assert!(console_errors(&shot_log).is_empty() && console_errors(&dom_log).is_empty(), "console:\n{shot_log}\n{dom_log}");

    // Two tenant/surfaces, both labelled: a histogram and a precision/recall chart each.
    let dom = String::from_utf8_lossy(&dumped.stdout);
    assert!(dom.contains("<h2>acme / post</h2>") && dom.contains("<h2>globex / (no surface)</h2>"), "{dom}");
    for class in ["histogram", "pr-curve"] {
        let sizes = svg_sizes(&dom, class);
        assert_eq!(sizes.len(), 2, "{class} charts: {sizes:?}");
        assert!(sizes.iter().all(|&(w, h)| w > 0 && h > 0), "{class}: {sizes:?}");
    }
    assert!(dom.matches("<rect").count() > 20, "the histograms have bars");
    assert!(dom.contains("proposed review 0.5") && dom.contains("current review 0.8"), "the thresholds are labelled");

    // The screenshot shows a page, not a blank: many colours, a fair share of non-white pixels.
    let image = image::open(&shot).expect("a PNG screenshot").to_rgb8();
    assert_eq!(image.dimensions(), (1200, 2000));
    let mut colours = std::collections::HashSet::new();
    let mut inked = 0u64;
    for pixel in image.pixels() {
        colours.insert(pixel.0);
        inked += u64::from(pixel.0.iter().any(|&c| c < 230));
    }
    let share = inked as f64 / (1200.0 * 2000.0);
    assert!(colours.len() > 16, "{} colours", colours.len());
    assert!(share > 0.02, "{:.3} of the pixels are not white", share);
}

/// The same history read from the broker: the verdict topic from an hour ago (an older verdict
/// is left out), the labels from the reviews topic; the transitions equal what this test counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_the_verdict_and_review_topics_since_a_time() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::FutureRecord;
    use rdkafka::util::Timeout;
    use std::time::Duration;

    let brokers = common::brokers();
    let topics = common::create_topics(&brokers, "replay", 1).await;
    let reviews_topic = format!("{}.reviews", topics.group);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let created = admin
        .create_topics(&[NewTopic::new(&reviews_topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap();
    created.into_iter().for_each(|r| {
        r.expect("reviews topic created");
    });

    let uploads = history();
    let producer = common::producer(&brokers);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let send = |topic: &str, key: String, payload: String, timestamp: i64| {
        let producer = producer.clone();
        let topic = topic.to_string();
        async move {
            producer
                .send(FutureRecord::to(&topic).key(&key).payload(&payload).timestamp(timestamp), Timeout::After(Duration::from_secs(30)))
                .await
                .expect("produced");
        }
    };
    // Two hours old, from a tenant no other verdict has: --since 1h must leave it out.
    let old = Upload { id: "old-1".into(), tenant: "initech", surface: None, score: Some(0.99), hash_block: false, media_error: false, day: 1, violating: None };
    send(&topics.verdicts, "m-old-1".into(), verdict_line(&old), now_ms - 2 * 3_600_000).await;
    for u in &uploads {
        send(&topics.verdicts, format!("m-{}", u.id), verdict_line(u), now_ms).await;
        if let Some(violating) = u.violating {
            let decision = if violating { "violating" } else { "benign" };
            let review = json!({"schema":"perisai.review/v1","event_id":u.id,"decision":decision,"decided_at":"2026-12-05T09:00:00Z"});
            send(&reviews_topic, u.id.clone(), review.to_string(), now_ms).await;
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let kafka = format!("[kafka]\nbrokers = \"{brokers}\"\nverdict_topic = \"{}\"\nreviews_topic = \"{reviews_topic}\"\n\n", topics.verdicts);
    std::fs::write(dir.path().join("perisai.toml"), kafka + CONFIG).unwrap();
    std::fs::write(dir.path().join("new.toml"), POLICY).unwrap();
    let out = perisai(dir.path(), &["policy", "replay", "--policy", "new.toml", "--config", "perisai.toml", "--since", "1h"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("initech"), "the verdict from before --since is not replayed:\n{stdout}");
    for (heading, tenant) in [("acme / post", "acme"), ("globex / (no surface)", "globex")] {
        let mut want: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for u in uploads.iter().filter(|u| u.tenant == tenant) {
            let cell = want.entry((action(u, CURRENT).name().into(), action(u, PROPOSED).name().into())).or_default();
            cell.0 += 1;
            cell.1 += u64::from(u.score.is_none());
        }
        assert_eq!(transitions(section(&stdout, heading)), want, "{heading}:\n{stdout}");
    }
    let labelled = uploads.iter().filter(|u| u.violating.is_some()).count();
    assert!(stdout.contains(&format!("{labelled} read, {labelled} joined")), "the labels came from the reviews topic:\n{stdout}");
}
