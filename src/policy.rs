//! The policy: a pure function from an event's signals to an action and its reasons.
//!
//! Order of precedence: an allowlist match wins (the bytes are known good), then the strongest
//! of block/review from bank matches, classifier bands and media errors; with none, allow. A
//! match on a quarantined entry (one that flooded) counts as review whatever its bank's action.
//! The action follows from the reasons alone ([`action_of`]), so the retro role re-decides an
//! old verdict's reasons by the same rule.

use crate::bank::{BankMatch, LowQuality};
use crate::config::{Bands, PolicySettings};
use crate::event::{Action, Reason};

/// What the screen learned about one event's media.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    pub matches: Vec<BankMatch>,
    pub low_quality: Vec<LowQuality>,
    pub classifier: Option<ClassifierFinding>,
    pub media_error: Option<MediaErrorFinding>,
    /// What was not screened (non-image media), in words.
    pub unscreened: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ClassifierFinding {
    pub model: String,
    pub model_sha256: String,
    pub label: String,
    pub score: f32,
    /// Videos: the timestamp of the frame with the highest score.
    pub at: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct MediaErrorFinding {
    /// stable kind label, e.g. `decode`, `guard`, `timeout`
    pub kind: String,
    pub detail: String,
}

/// Where a classifier score falls for a tenant/surface.
pub fn band(bands: Bands, score: f32) -> (&'static str, Option<Action>) {
    if score >= bands.block {
        ("block", Some(Action::Block))
    } else if score >= bands.review {
        ("review", Some(Action::Review))
    } else {
        ("none", None)
    }
}

/// The bands in force for a tenant and surface: the first matching override, else the defaults.
pub fn bands_for(policy: &PolicySettings, tenant: &str, surface: Option<&str>) -> Bands {
    policy
        .overrides
        .iter()
        .find(|o| {
            o.tenant.as_deref().is_none_or(|t| t == tenant)
                && o.surface.as_deref().is_none_or(|s| Some(s) == surface)
        })
        .map(|o| Bands { review: o.review, block: o.block })
        .unwrap_or(policy.bands)
}

pub fn decide(findings: &Findings, policy: &PolicySettings, bands: Bands) -> (Action, Vec<Reason>) {
    let mut reasons: Vec<Reason> = findings.matches.iter().map(match_reason).collect();
    for low in &findings.low_quality {
        reasons.push(Reason::LowQuality { signal: low.signal.as_str().into(), quality: low.quality, floor: low.floor });
    }
    if let Some(c) = &findings.classifier {
        let (band_name, _) = band(bands, c.score);
        reasons.push(Reason::Classifier {
            model: c.model.clone(),
            model_sha256: c.model_sha256.clone(),
            label: c.label.clone(),
            score: c.score,
            band: band_name.into(),
            at: c.at,
        });
    }
    if let Some(e) = &findings.media_error {
        reasons.push(Reason::MediaError { error: e.kind.clone(), detail: e.detail.clone() });
    }
    if let Some(what) = &findings.unscreened {
        reasons.push(Reason::Unscreened { what: what.clone(), action: policy.non_image_action });
    }
    (action_of(&reasons, policy.media_error_action), reasons)
}

/// The reason a bank match gives.
pub fn match_reason(m: &BankMatch) -> Reason {
    Reason::HashMatch {
        bank: m.bank.clone(),
        signal: m.signal.as_str().to_string(),
        entry: m.entry.clone(),
        action: m.action,
        distance: m.distance,
        quality: m.quality,
        transform: m.transform.map(str::to_string),
        quarantined: m.quarantined(),
        unconfirmed: m.unconfirmed,
        at: m.at,
        full_resolution: m.full_resolution,
        query_match_pct: m.vpdq.map(|v| round2(v.query_pct)),
        target_match_pct: m.vpdq.map(|v| round2(v.target_pct)),
        entry_at: m.vpdq.map(|v| v.entry_at),
    }
}

/// Percentages in reasons: two decimals are plenty to read, and the rule compared the exact ones.
fn round2(pct: f64) -> f64 {
    (pct * 100.0).round() / 100.0
}

/// The media error of an image whose PDQ sample disagrees with its pixels (an image-scaling
/// attack): review, and no allowlist match can allow it, since the hash it matched on is suspect.
pub const SCALING_ANOMALY: &str = "scaling_anomaly";

/// The action a verdict's reasons call for (see the module docs for the precedence).
pub fn action_of(reasons: &[Reason], media_error_action: Action) -> Action {
    let mut action = Action::Allow;
    let mut allowlisted = false;
    let mut suspect_hash = false;
    for reason in reasons {
        match reason {
            Reason::HashMatch { quarantined: true, .. } => action = action.max(Action::Review),
            Reason::HashMatch { action: Action::Allow, unconfirmed: true, .. } => {}
            Reason::HashMatch { action: Action::Allow, .. } => allowlisted = true,
            Reason::HashMatch { action: bank_action, .. } => action = action.max(*bank_action),
            Reason::Classifier { band, .. } => match band.as_str() {
                "block" => action = action.max(Action::Block),
                "review" => action = action.max(Action::Review),
                _ => {}
            },
            Reason::LowQuality { .. } => {}
            Reason::MediaError { error, .. } => {
                action = action.max(media_error_action);
                suspect_hash |= error == SCALING_ANOMALY;
            }
            Reason::Unscreened { action: unscreened, .. } => action = action.max(*unscreened),
        }
    }
    if allowlisted && !suspect_hash {
        Action::Allow
    } else {
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::Signal;
    use crate::config::BandOverride;

    fn policy() -> PolicySettings {
        PolicySettings {
            version: "t".into(),
            media_error_action: Action::Review,
            non_image_action: Action::Allow,
            bands: Bands { review: 0.8, block: 0.98 },
            overrides: vec![BandOverride { tenant: Some("acme".into()), surface: Some("dm".into()), review: 0.5, block: 0.9 }],
            model_sha256: None,
        }
    }

    fn hit(bank: &str, action: Action) -> BankMatch {
        BankMatch {
            bank: bank.into(),
            action,
            signal: Signal::Md5,
            entry: "e".into(),
            distance: None,
            quality: None,
            transform: None,
            hash: crate::bank::ParsedHash::Md5([0; 16]),
            status: None,
            unconfirmed: false,
            at: None,
            full_resolution: false,
            vpdq: None,
        }
    }

    fn classifier(score: f32) -> Option<ClassifierFinding> {
        Some(ClassifierFinding { model: "m".into(), model_sha256: "00".into(), label: "nsfw".into(), score, at: None })
    }

    #[test]
    fn a_quarantined_entry_gives_review_not_its_banks_action() {
        let p = policy();
        let mut quarantined = hit("csam", Action::Block);
        quarantined.status = Some(crate::bank::EntryStatus::Quarantined);
        let f = Findings { matches: vec![quarantined.clone()], ..Default::default() };
        let (action, reasons) = decide(&f, &p, p.bands);
        assert_eq!(action, Action::Review);
        assert!(matches!(reasons[0], Reason::HashMatch { quarantined: true, action: Action::Block, .. }));
        // Another entry that is not quarantined still blocks.
        let f = Findings { matches: vec![quarantined, hit("csam", Action::Block)], ..Default::default() };
        assert_eq!(decide(&f, &p, p.bands).0, Action::Block);
    }

    /// The action re-derived from a verdict's reasons is the one decided with them.
    #[test]
    fn action_of_the_reasons_is_the_decided_action() {
        let p = policy();
        for (matches, score, error) in [
            (vec![], Some(0.99), false),
            (vec![], Some(0.85), false),
            (vec![], Some(0.1), true),
            (vec![hit("csam", Action::Block)], Some(0.1), false),
            (vec![hit("csam", Action::Block), hit("allow", Action::Allow)], None, true),
            (vec![hit("review", Action::Review)], None, false),
        ] {
            let f = Findings {
                matches,
                classifier: score.and_then(classifier),
                media_error: error.then(|| MediaErrorFinding { kind: "decode".into(), detail: "x".into() }),
                ..Default::default()
            };
            let (action, reasons) = decide(&f, &p, p.bands);
            assert_eq!(action_of(&reasons, p.media_error_action), action, "{reasons:?}");
        }
    }

    /// A hash taken from a suspect sample cannot vouch for the image: no allowlist pass.
    #[test]
    fn a_scaling_anomaly_voids_the_allowlist() {
        let p = policy();
        let f = Findings {
            matches: vec![hit("allow", Action::Allow)],
            media_error: Some(MediaErrorFinding { kind: SCALING_ANOMALY.into(), detail: "x".into() }),
            ..Default::default()
        };
        assert_eq!(decide(&f, &p, p.bands).0, Action::Review);
        let f = Findings { matches: vec![hit("allow", Action::Allow), hit("csam", Action::Block)], ..f };
        assert_eq!(decide(&f, &p, p.bands).0, Action::Block);
    }

    #[test]
    fn nothing_found_allows() {
        let p = policy();
        assert_eq!(decide(&Findings::default(), &p, p.bands), (Action::Allow, vec![]));
    }

    #[test]
    fn allowlist_wins_over_block_and_media_error() {
        let p = policy();
        let f = Findings {
            matches: vec![hit("csam", Action::Block), hit("allow", Action::Allow)],
            media_error: Some(MediaErrorFinding { kind: "decode".into(), detail: "x".into() }),
            ..Default::default()
        };
        let (action, reasons) = decide(&f, &p, p.bands);
        assert_eq!(action, Action::Allow);
        assert_eq!(reasons.len(), 3, "every finding is still reported");
    }

    #[test]
    fn block_beats_review() {
        let p = policy();
        let f = Findings { matches: vec![hit("r", Action::Review), hit("b", Action::Block)], ..Default::default() };
        assert_eq!(decide(&f, &p, p.bands).0, Action::Block);
    }

    #[test]
    fn classifier_bands() {
        let p = policy();
        for (score, want) in [(0.1, Action::Allow), (0.8, Action::Review), (0.97, Action::Review), (0.98, Action::Block)] {
            let f = Findings { classifier: classifier(score), ..Default::default() };
            assert_eq!(decide(&f, &p, p.bands).0, want, "score {score}");
        }
    }

    #[test]
    fn media_error_is_never_silently_allowed() {
        let p = policy();
        let f = Findings {
            media_error: Some(MediaErrorFinding { kind: "decode".into(), detail: "truncated".into() }),
            ..Default::default()
        };
        assert_eq!(decide(&f, &p, p.bands).0, Action::Review);
    }

    #[test]
    fn overrides_pick_tenant_and_surface() {
        let p = policy();
        assert_eq!(bands_for(&p, "acme", Some("dm")).review, 0.5);
        assert_eq!(bands_for(&p, "acme", Some("post")).review, 0.8);
        assert_eq!(bands_for(&p, "other", Some("dm")).review, 0.8);
    }
}
