//! `perisai policy replay`: what a proposed policy would have decided on recorded verdicts, before
//! anyone changes a number.
//!
//! Each verdict is re-decided from its recorded reasons alone — no media is fetched and no model
//! is run: the classifier reason's score falls into the proposed bands for its tenant and surface
//! ([`policy::bands_for`]), an `unscreened` reason takes the proposed `non_image_action`, and
//! [`policy::action_of`] applies the workers' precedence with the proposed `media_error_action`.
//! Bank matches stay as recorded. Verdicts are counted per tenant and surface: transitions
//! (allow → review, …), review volume per day, and, where reviewers' labels exist, precision and
//! recall of the review and block bands at the recorded and the proposed thresholds.
//!
//! Which verdicts count: one per upload (`event_id`); when the same upload's verdict was read more
//! than once (at-least-once redelivery, a worker re-run), the latest `decided_at` wins, and the
//! one read last among equals. Retroactive verdicts (`retro`) are skipped: they change bank
//! matches only and carry the first verdict's classifier reason unchanged, so the bands' effect
//! shows on the first verdict. Verdicts scored by another model than the one the proposed policy
//! names (`policy.model_sha256`) are reported apart and left out of every table.

pub mod report;
pub mod review;
pub mod source;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::Deserialize;

use crate::config::{Bands, PolicySettings, Settings};
use crate::event::{Action, Reason, Verdict, VERDICT_SCHEMA};
use crate::policy;
use review::{parse_review, Decision};
use source::{Origin, SourceError};

/// Problems kept word for word; the rest are counted.
const PROBLEMS_KEPT: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("policy file {path}: {message}")]
    PolicyFile { path: String, message: String },
    #[error("reading verdicts: {0}")]
    Verdicts(SourceError),
    #[error("reading reviews: {0}")]
    Reviews(SourceError),
}

/// A proposed policy file: a `[policy]` table, the schema of the configuration's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    policy: PolicySettings,
}

/// Parses and validates a proposed policy with the rules the configuration's policy section
/// follows. The error names the offending key.
pub fn parse_policy(text: &str) -> Result<PolicySettings, String> {
    let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
    let problems = file.policy.problems();
    if problems.is_empty() {
        Ok(file.policy)
    } else {
        Err(problems.join("; "))
    }
}

pub fn load_policy(path: &Path) -> Result<PolicySettings, ReplayError> {
    let failed = |message: String| ReplayError::PolicyFile { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    parse_policy(&text).map_err(failed)
}

/// Bad records: how many, and the first few as `ORIGIN: why`.
#[derive(Debug, Clone, Default)]
pub struct Problems {
    pub count: u64,
    pub kept: Vec<String>,
}

impl Problems {
    fn add(&mut self, origin: Origin<'_>, why: impl Display) {
        self.count += 1;
        if self.kept.len() < PROBLEMS_KEPT {
            self.kept.push(format!("{origin}: {why}"));
        }
    }
}

/// What replay keeps of a verdict: enough to place it and re-decide it.
#[derive(Debug, Clone)]
struct Recorded {
    event_id: String,
    media_id: String,
    tenant: String,
    surface: Option<String>,
    decided_at: Option<DateTime<FixedOffset>>,
    action: Action,
    /// Low-quality reasons are dropped: they never change an action.
    reasons: Vec<Reason>,
    /// Read order: among verdicts of one upload with the same time, the last read wins.
    order: u64,
}

impl Recorded {
    fn recency(&self) -> (Option<DateTime<FixedOffset>>, u64) {
        (self.decided_at, self.order)
    }
}

/// The verdicts read so far: the latest per upload; retroactive ones counted and skipped.
#[derive(Debug, Default)]
pub struct Verdicts {
    tenant: Option<String>,
    uploads: HashMap<String, Recorded>,
    read: u64,
    retro_skipped: u64,
    duplicates: u64,
    other_tenants: u64,
    problems: Problems,
}

impl Verdicts {
    /// Keeps only `tenant`'s verdicts when given.
    pub fn new(tenant: Option<String>) -> Self {
        Self { tenant, ..Self::default() }
    }

    /// Takes one record; a malformed one is counted and reported, never fatal.
    pub fn add(&mut self, origin: Origin<'_>, bytes: Option<&[u8]>) {
        self.read += 1;
        match decode_verdict(bytes) {
            Ok(verdict) => self.take(verdict),
            Err(why) => self.problems.add(origin, why),
        }
    }

    /// Takes a verdict already decoded (the demo hands over the ones it read).
    pub fn add_verdict(&mut self, verdict: Verdict) {
        self.read += 1;
        self.take(verdict);
    }

    fn take(&mut self, verdict: Verdict) {
        if self.tenant.as_ref().is_some_and(|t| *t != verdict.tenant) {
            self.other_tenants += 1;
            return;
        }
        if verdict.retro.is_some() {
            self.retro_skipped += 1;
            return;
        }
        let recorded = Recorded {
            decided_at: DateTime::parse_from_rfc3339(&verdict.decided_at).ok(),
            event_id: verdict.event_id,
            media_id: verdict.media_id,
            tenant: verdict.tenant,
            surface: verdict.surface,
            action: verdict.action,
            reasons: verdict.reasons.into_iter().filter(|r| !matches!(r, Reason::LowQuality { .. })).collect(),
            order: self.read,
        };
        match self.uploads.entry(recorded.event_id.clone()) {
            Entry::Vacant(slot) => {
                slot.insert(recorded);
            }
            Entry::Occupied(mut slot) => {
                self.duplicates += 1;
                if recorded.recency() >= slot.get().recency() {
                    slot.insert(recorded);
                }
            }
        }
    }
}

fn decode_verdict(bytes: Option<&[u8]>) -> Result<Verdict, String> {
    let bytes = bytes.filter(|b| !b.is_empty()).ok_or("empty record")?;
    let verdict: Verdict = serde_json::from_slice(bytes).map_err(|e| format!("not a {VERDICT_SCHEMA} verdict: {e}"))?;
    if verdict.schema != VERDICT_SCHEMA {
        return Err(format!("unsupported schema {:?} (expected {VERDICT_SCHEMA:?})", verdict.schema));
    }
    Ok(verdict)
}

#[derive(Debug, Clone, Copy)]
struct Label {
    violating: bool,
    decided_at: DateTime<FixedOffset>,
    order: u64,
}

/// Reviewers' labels, by event id and by media id; the latest decision per id.
#[derive(Debug, Default)]
pub struct Labels {
    by_event: HashMap<String, Label>,
    by_media: HashMap<String, Label>,
    read: u64,
    problems: Problems,
}

impl Labels {
    /// Takes one `perisai.review/v1` record; a malformed one is counted and reported.
    pub fn add(&mut self, origin: Origin<'_>, bytes: Option<&[u8]>) {
        self.read += 1;
        let review = match parse_review(bytes) {
            Ok(review) => review,
            Err(why) => return self.problems.add(origin, why),
        };
        let label = Label { violating: review.decision == Decision::Violating, decided_at: review.decided_at, order: self.read };
        let keep = |map: &mut HashMap<String, Label>, id: String| {
            let slot = map.entry(id).or_insert(label);
            if (label.decided_at, label.order) >= (slot.decided_at, slot.order) {
                *slot = label;
            }
        };
        if let Some(id) = review.event_id {
            keep(&mut self.by_event, id);
        }
        if let Some(id) = review.media_id {
            keep(&mut self.by_media, id);
        }
    }

    /// Whether the upload was judged violating: by its event id, else by its media id.
    fn violating(&self, event_id: &str, media_id: &str) -> Option<bool> {
        self.by_event.get(event_id).or_else(|| self.by_media.get(media_id)).map(|l| l.violating)
    }

    fn is_empty(&self) -> bool {
        self.by_event.is_empty() && self.by_media.is_empty()
    }
}

/// A tenant and surface: the unit bands are set for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub tenant: String,
    pub surface: Option<String>,
}

impl Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {}", self.tenant, self.surface.as_deref().unwrap_or("(no surface)"))
    }
}

/// Verdicts that went from one action to another (or stayed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    pub count: u64,
    /// Of which without a classifier score (hash-blocked, media errors, non-image media).
    pub no_score: u64,
    /// Event ids for spot checks (changed actions only), in order of decision time.
    pub samples: Vec<String>,
}

/// Verdicts with action `review` on one day, before and after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayReviews {
    pub before: u64,
    pub after: u64,
}

/// A band's hits against reviewers' labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quality {
    /// In the band and labelled violating.
    pub tp: u64,
    /// In the band and labelled benign.
    pub fp: u64,
    /// Below the band and labelled violating.
    pub missed: u64,
}

impl Quality {
    fn of<'a>(items: impl IntoIterator<Item = &'a Labelled>, in_band: impl Fn(&Labelled) -> bool) -> Self {
        let mut q = Quality::default();
        for item in items {
            match (in_band(item), item.violating) {
                (true, true) => q.tp += 1,
                (true, false) => q.fp += 1,
                (false, true) => q.missed += 1,
                (false, false) => {}
            }
        }
        q
    }

    /// None when nothing is in the band.
    pub fn precision(&self) -> Option<f64> {
        let flagged = self.tp + self.fp;
        (flagged > 0).then(|| self.tp as f64 / flagged as f64)
    }

    /// None when nothing is labelled violating.
    pub fn recall(&self) -> Option<f64> {
        let violating = self.tp + self.missed;
        (violating > 0).then(|| self.tp as f64 / violating as f64)
    }
}

/// A labelled, scored verdict.
#[derive(Debug, Clone)]
struct Labelled {
    score: f32,
    violating: bool,
    /// The band the worker recorded: the thresholds in force when it decided.
    recorded_band: String,
}

/// Precision and recall when everything scored at or above `threshold` is flagged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub threshold: f32,
    pub quality: Quality,
}

/// The answer to `--target-precision`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The lowest threshold whose precision on the labelled verdicts reaches the target; its
    /// support is `quality.tp + quality.fp` labelled verdicts at or above it.
    At(CurvePoint),
    NotReachable,
}

/// How the bands fare against reviewers' labels, in one tenant/surface.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelQuality {
    /// Labelled verdicts with a classifier score (the ones measured).
    pub labelled: u64,
    pub violating: u64,
    /// Labelled verdicts without a score (hash-blocked, media errors): not measured.
    pub unscored: u64,
    /// Review band (score ≥ review): by the recorded band, and at the proposed threshold.
    pub review_recorded: Quality,
    pub review_proposed: Quality,
    /// Block band (score ≥ block).
    pub block_recorded: Quality,
    pub block_proposed: Quality,
    /// Every distinct labelled score as a threshold, lowest first.
    pub curve: Vec<CurvePoint>,
    pub target: Option<Target>,
}

/// One tenant/surface's replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Bands of the current configuration (`--config`) and of the proposed policy.
    pub current: Bands,
    pub proposed: Bands,
    /// Verdicts replayed (model mismatches excluded).
    pub verdicts: u64,
    pub no_score: u64,
    pub transitions: BTreeMap<(Action, Action), Transition>,
    /// By decided_at date (UTC, `YYYY-MM-DD`); days without any review before or after are left out.
    pub review_per_day: BTreeMap<String, DayReviews>,
    /// Classifier scores of the verdicts replayed.
    pub scores: Vec<f32>,
    /// Verdicts scored by another model than the proposed policy's, by that model's sha256 prefix.
    pub mismatched: BTreeMap<String, u64>,
    pub labels: Option<LabelQuality>,
}

impl Group {
    fn new(current: Bands, proposed: Bands) -> Self {
        Group {
            current,
            proposed,
            verdicts: 0,
            no_score: 0,
            transitions: BTreeMap::new(),
            review_per_day: BTreeMap::new(),
            scores: Vec::new(),
            mismatched: BTreeMap::new(),
            labels: None,
        }
    }

    /// Verdicts whose action changes.
    pub fn changed(&self) -> u64 {
        self.transitions.iter().filter(|((from, to), _)| from != to).map(|(_, t)| t.count).sum()
    }
}

/// What was read, and how much of it counted.
#[derive(Debug, Clone, Default)]
pub struct InputSummary {
    /// Where the verdicts came from, in words.
    pub source: String,
    pub read: u64,
    pub replayed: u64,
    pub retro_skipped: u64,
    /// Verdicts of an upload already read (the latest was kept).
    pub duplicates: u64,
    /// Left out by `--tenant`.
    pub other_tenants: u64,
    pub model_mismatch: u64,
    pub problems: Problems,
}

#[derive(Debug, Clone, Default)]
pub struct LabelSummary {
    pub source: String,
    pub read: u64,
    /// Replayed verdicts a label was found for.
    pub joined: u64,
    pub problems: Problems,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub current_version: String,
    pub proposed_version: String,
    /// The model the proposed bands are calibrated for (`policy.model_sha256`).
    pub model: Option<String>,
    pub target_precision: Option<f64>,
    pub input: InputSummary,
    pub labels: Option<LabelSummary>,
    pub groups: BTreeMap<GroupKey, Group>,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Event ids listed per changed transition.
    pub samples: usize,
    pub target_precision: Option<f64>,
}

/// The classifier reason's score, band and model, if the verdict has one (the highest score
/// should there be several).
fn classifier_of(reasons: &[Reason]) -> Option<(f32, &str, &str)> {
    reasons
        .iter()
        .filter_map(|r| match r {
            Reason::Classifier { score, band, model_sha256, .. } => Some((*score, band.as_str(), model_sha256.as_str())),
            _ => None,
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// Whether a verdict's model (a sha256 prefix) is the one a policy names (another prefix).
fn same_model(wanted: &str, recorded: &str) -> bool {
    let (wanted, recorded) = (wanted.to_ascii_lowercase(), recorded.to_ascii_lowercase());
    !recorded.is_empty() && (recorded.starts_with(&wanted) || wanted.starts_with(&recorded))
}

/// The action `policy` gives a verdict's recorded reasons.
fn redecide(row: &Recorded, policy: &PolicySettings) -> Action {
    let bands = policy::bands_for(policy, &row.tenant, row.surface.as_deref());
    let reasons: Vec<Reason> = row
        .reasons
        .iter()
        .map(|reason| match reason {
            Reason::Classifier { model, model_sha256, label, score, at, .. } => Reason::Classifier {
                model: model.clone(),
                model_sha256: model_sha256.clone(),
                label: label.clone(),
                score: *score,
                band: policy::band(bands, *score).0.into(),
                at: *at,
            },
            Reason::Unscreened { what, .. } => Reason::Unscreened { what: what.clone(), action: policy.non_image_action },
            other => other.clone(),
        })
        .collect();
    policy::action_of(&reasons, policy.media_error_action)
}

/// Re-decides every verdict under `proposed` and counts the outcome per tenant/surface.
/// `current` is the configuration's policy: its bands are drawn beside the proposed ones.
pub fn replay(verdicts: Verdicts, labels: &Labels, current: &PolicySettings, proposed: &PolicySettings, options: &Options) -> Report {
    let mut input = InputSummary {
        read: verdicts.read,
        retro_skipped: verdicts.retro_skipped,
        duplicates: verdicts.duplicates,
        other_tenants: verdicts.other_tenants,
        problems: verdicts.problems,
        ..InputSummary::default()
    };
    let mut rows: Vec<Recorded> = verdicts.uploads.into_values().collect();
    // Decision time order (unknown times first), so samples and output never depend on hashing.
    rows.sort_by(|a, b| (a.decided_at, &a.event_id).cmp(&(b.decided_at, &b.event_id)));

    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    let mut labelled: BTreeMap<GroupKey, (Vec<Labelled>, u64)> = BTreeMap::new();
    let mut joined = 0;
    for row in &rows {
        let key = GroupKey { tenant: row.tenant.clone(), surface: row.surface.clone() };
        let group = groups.entry(key.clone()).or_insert_with(|| {
            Group::new(
                policy::bands_for(current, &row.tenant, row.surface.as_deref()),
                policy::bands_for(proposed, &row.tenant, row.surface.as_deref()),
            )
        });
        let classifier = classifier_of(&row.reasons);
        if let (Some(wanted), Some((_, _, recorded))) = (&proposed.model_sha256, classifier) {
            if !same_model(wanted, recorded) {
                let model = if recorded.is_empty() { "(none recorded)" } else { recorded };
                *group.mismatched.entry(model.to_string()).or_default() += 1;
                input.model_mismatch += 1;
                continue;
            }
        }
        input.replayed += 1;
        let (before, after) = (row.action, redecide(row, proposed));
        group.verdicts += 1;
        match classifier {
            Some((score, ..)) => group.scores.push(score),
            None => group.no_score += 1,
        }
        let transition = group.transitions.entry((before, after)).or_default();
        transition.count += 1;
        transition.no_score += u64::from(classifier.is_none());
        if before != after && transition.samples.len() < options.samples {
            transition.samples.push(row.event_id.clone());
        }
        if before == Action::Review || after == Action::Review {
            let day = row.decided_at.map_or_else(|| "unknown".to_string(), |t| t.with_timezone(&Utc).format("%Y-%m-%d").to_string());
            let reviews = group.review_per_day.entry(day).or_default();
            reviews.before += u64::from(before == Action::Review);
            reviews.after += u64::from(after == Action::Review);
        }
        if let Some(violating) = labels.violating(&row.event_id, &row.media_id) {
            joined += 1;
            let (items, unscored) = labelled.entry(key).or_default();
            match classifier {
                Some((score, band, _)) => items.push(Labelled { score, violating, recorded_band: band.to_string() }),
                None => *unscored += 1,
            }
        }
    }
    for (key, (items, unscored)) in labelled {
        if let Some(group) = groups.get_mut(&key) {
            group.labels = Some(label_quality(&items, unscored, group.proposed, options.target_precision));
        }
    }
    Report {
        current_version: current.version.clone(),
        proposed_version: proposed.version.clone(),
        model: proposed.model_sha256.clone(),
        target_precision: options.target_precision,
        input,
        labels: (!labels.is_empty() || labels.read > 0).then(|| LabelSummary {
            source: String::new(),
            read: labels.read,
            joined,
            problems: labels.problems.clone(),
        }),
        groups,
    }
}

fn label_quality(items: &[Labelled], unscored: u64, proposed: Bands, target_precision: Option<f64>) -> LabelQuality {
    let curve = curve(items);
    let target = target_precision.map(|wanted| {
        curve
            .iter()
            // A hair of slack so that 9/10 meets 0.9 whatever the rounding.
            .find(|p| p.quality.precision().is_some_and(|precision| precision >= wanted - 1e-12))
            .map_or(Target::NotReachable, |p| Target::At(*p))
    });
    LabelQuality {
        labelled: items.len() as u64,
        violating: items.iter().filter(|i| i.violating).count() as u64,
        unscored,
        review_recorded: Quality::of(items, |i| i.recorded_band == "review" || i.recorded_band == "block"),
        review_proposed: Quality::of(items, |i| i.score >= proposed.review),
        block_recorded: Quality::of(items, |i| i.recorded_band == "block"),
        block_proposed: Quality::of(items, |i| i.score >= proposed.block),
        curve,
        target,
    }
}

/// Precision and recall at each distinct labelled score used as the threshold, lowest first:
/// one pass down the scores, counting what lies at or above each.
fn curve(items: &[Labelled]) -> Vec<CurvePoint> {
    let violating = items.iter().filter(|i| i.violating).count() as u64;
    let mut sorted: Vec<&Labelled> = items.iter().collect();
    sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut points = Vec::new();
    let (mut tp, mut fp) = (0, 0);
    for (i, item) in sorted.iter().enumerate() {
        if item.violating {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_score = sorted.get(i + 1).is_none_or(|next| next.score != item.score);
        if last_of_score {
            points.push(CurvePoint { threshold: item.score, quality: Quality { tp, fp, missed: violating - tp } });
        }
    }
    points.reverse();
    points
}

/// What `perisai policy replay` was asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub policy: PathBuf,
    /// Read the verdict topic from this long ago (seconds), when `from` is not given.
    pub since_secs: u64,
    /// A JSON-lines file of verdicts instead of the topic.
    pub from: Option<PathBuf>,
    pub tenant: Option<String>,
    /// A JSON-lines file of reviews instead of the reviews topic.
    pub reviews: Option<PathBuf>,
    pub options: Options,
}

/// Reads the proposed policy, the verdicts and the labels, and replays. Labels come from
/// `--reviews FILE`, else from `kafka.reviews_topic` when verdicts come from the verdict topic
/// (a replay of a file needs no broker).
pub fn run(settings: &Settings, request: &Request) -> Result<Report, ReplayError> {
    let proposed = load_policy(&request.policy)?;
    let kafka = &settings.kafka;
    let mut verdicts = Verdicts::new(request.tenant.clone());
    let source = match &request.from {
        Some(file) => {
            source::read_json_lines(file, &mut |origin, bytes| verdicts.add(origin, bytes)).map_err(ReplayError::Verdicts)?;
            format!("file {}", file.display())
        }
        None => {
            // A --since longer than the epoch is old simply reads from the beginning.
            let window_ms = i64::try_from(request.since_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            let since_ms = Utc::now().timestamp_millis().saturating_sub(window_ms).max(0);
            let read = source::read_topic(kafka, &kafka.verdict_topic, Some(since_ms), &mut |origin, bytes| verdicts.add(origin, bytes))
                .map_err(ReplayError::Verdicts)?;
            let since = DateTime::from_timestamp_millis(since_ms).unwrap_or_default();
            format!(
                "topic {} from {} up to the end offsets at start ({} records in {} partitions)",
                kafka.verdict_topic,
                since.to_rfc3339_opts(SecondsFormat::Secs, true),
                read.records,
                read.ranges.len()
            )
        }
    };
    let mut labels = Labels::default();
    let labels_source = match (&request.reviews, &request.from) {
        (Some(file), _) => {
            source::read_json_lines(file, &mut |origin, bytes| labels.add(origin, bytes)).map_err(ReplayError::Reviews)?;
            Some(format!("file {}", file.display()))
        }
        (None, None) if !kafka.reviews_topic.is_empty() => {
            match source::read_topic(kafka, &kafka.reviews_topic, None, &mut |origin, bytes| labels.add(origin, bytes)) {
                Ok(_) => Some(format!("topic {}", kafka.reviews_topic)),
                // No labels yet is a normal state for a platform: replay without them.
                Err(SourceError::Missing(topic)) => Some(format!("none: topic {topic} does not exist")),
                Err(e) => return Err(ReplayError::Reviews(e)),
            }
        }
        _ => None,
    };
    let mut report = replay(verdicts, &labels, &settings.policy, &proposed, &request.options);
    report.input.source = source;
    if let Some(labels_source) = labels_source {
        report.labels.get_or_insert_with(LabelSummary::default).source = labels_source;
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
