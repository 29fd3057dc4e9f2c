//! The uploads a retro replica remembers, and how a bank change re-decides them. Plain data: no
//! Kafka, no clock (times come in with the records).
//!
//! Each upload keeps what its verdicts said and nothing of its media: its ids, the verdict
//! partition and offset, its exact hashes and PDQ hash, the action and bank matches of its
//! latest verdict (the first, or a later retroactive one) and that verdict's other reasons.
//! Exact hashes are found through hash maps (many uploads may share one), PDQ hashes through the
//! same multi-index as the banks.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use sha2::{Digest, Sha256};

use crate::bank::pdq_index::PdqIndex;
use crate::bank::{Applied, BankChange, BankSet, ParsedHash};
use crate::config::BankSettings;
use crate::event::{Action, Reason, Retro, RetroChange, Signals, Verdict, VERDICT_SCHEMA};
use crate::hash::pdq::PdqHash;
use crate::policy;

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// One remembered upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub event_id: Box<str>,
    pub media_id: Box<str>,
    pub tenant: Box<str>,
    /// The event_id of its latest retroactive verdict; `None`: the first verdict is the latest.
    pub latest: Option<Box<str>>,
    pub partition: i32,
    /// The first verdict's offset and timestamp (ms).
    pub offset: i64,
    pub time_ms: i64,
    pub md5: Option<[u8; 16]>,
    pub sha256: Option<[u8; 32]>,
    pub pdq: Option<(PdqHash, u8)>,
    pub action: Action,
    /// The latest verdict's bank matches (`Reason::HashMatch` only).
    pub matches: Box<[Reason]>,
    /// The latest verdict's other reasons (classifier, media error, low quality) as JSON.
    pub others: Option<Box<str>>,
}

/// A re-decision: the verdict to write, and the state to record once it is written.
#[derive(Debug, Clone)]
pub struct Redecision {
    pub slot: u32,
    pub partition: i32,
    pub verdict: Verdict,
}

/// Why `remember` did not keep a verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("already remembered")]
    Duplicate,
    #[error("a retroactive verdict for an upload not remembered")]
    Unknown,
}

/// Uploads by slot, with the lookups a bank change needs.
#[derive(Default)]
pub struct History {
    slots: Vec<Option<Upload>>,
    free: Vec<u32>,
    by_event: FastMap<Box<str>, u32>,
    md5: FastMap<[u8; 16], Vec<u32>>,
    sha256: FastMap<[u8; 32], Vec<u32>>,
    pdq: PdqIndex,
    /// Slots whose latest verdict has bank matches (the ones a withdrawal can change).
    matched: BTreeSet<u32>,
    /// Per verdict partition, slots in offset order: the oldest go first.
    partitions: BTreeMap<i32, VecDeque<(i64, u32)>>,
    len: usize,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, slot: u32) -> Option<&Upload> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// Slots of one verdict partition, oldest first.
    pub fn slots_of(&self, partition: i32) -> Vec<u32> {
        self.partitions.get(&partition).map(|q| q.iter().map(|&(_, s)| s).collect()).unwrap_or_default()
    }

    /// The offset of the oldest upload remembered from `partition`: a replica that takes the
    /// partition over reads from there.
    pub fn floor(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition)?.front().map(|&(offset, _)| offset)
    }

    /// Takes in a verdict read from the verdict topic: a first verdict is remembered (returns its
    /// slot); a retroactive one updates the upload it supersedes.
    pub fn take(&mut self, verdict: Verdict, partition: i32, offset: i64, time_ms: i64) -> Result<Option<u32>, Skip> {
        match &verdict.retro {
            Some(retro) => {
                let slot = *self.by_event.get(retro.upload_event_id.as_str()).ok_or(Skip::Unknown)?;
                self.record(slot, &verdict);
                Ok(None)
            }
            None => self.remember(verdict, partition, offset, time_ms).map(Some),
        }
    }

    fn remember(&mut self, verdict: Verdict, partition: i32, offset: i64, time_ms: i64) -> Result<u32, Skip> {
        if self.by_event.contains_key(verdict.event_id.as_str()) {
            return Err(Skip::Duplicate);
        }
        let (matches, others) = split_reasons(verdict.reasons);
        let signals = &verdict.signals;
        let upload = Upload {
            event_id: verdict.event_id.into(),
            media_id: verdict.media_id.into(),
            tenant: verdict.tenant.into(),
            latest: None,
            partition,
            offset,
            time_ms,
            md5: signals.md5.as_deref().and_then(|h| crate::bank::file::decode_hex::<16>(h.as_bytes())),
            sha256: signals.sha256.as_deref().and_then(|h| crate::bank::file::decode_hex::<32>(h.as_bytes())),
            pdq: signals.pdq.as_deref().and_then(|h| h.parse::<PdqHash>().ok()).map(|h| (h, signals.pdq_quality.unwrap_or(0))),
            action: verdict.action,
            matches,
            others,
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.by_event.insert(upload.event_id.clone(), slot);
        if let Some(h) = upload.md5 {
            self.md5.entry(h).or_default().push(slot);
        }
        if let Some(h) = upload.sha256 {
            self.sha256.entry(h).or_default().push(slot);
        }
        if let Some((h, _)) = upload.pdq {
            self.pdq.insert(slot, h);
        }
        if !upload.matches.is_empty() {
            self.matched.insert(slot);
        }
        self.partitions.entry(partition).or_default().push_back((offset, slot));
        self.slots[slot as usize] = Some(upload);
        self.len += 1;
        Ok(slot)
    }

    /// Records a verdict that superseded the upload's latest one (read back, or just written).
    pub fn record(&mut self, slot: u32, verdict: &Verdict) {
        let Some(upload) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        let (matches, others) = split_reasons(verdict.reasons.clone());
        upload.latest = Some(verdict.event_id.as_str().into());
        upload.action = verdict.action;
        upload.matches = matches;
        upload.others = others;
        if upload.matches.is_empty() {
            self.matched.remove(&slot);
        } else {
            self.matched.insert(slot);
        }
    }

    /// Forgets uploads older than `cutoff_ms`, then the oldest beyond `max` uploads; returns
    /// (by window, by memory).
    pub fn evict(&mut self, cutoff_ms: i64, max: usize) -> (usize, usize) {
        let mut by_window = 0;
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        for p in partitions {
            while let Some(&(_, slot)) = self.partitions[&p].front() {
                if self.get(slot).is_some_and(|u| u.time_ms >= cutoff_ms) {
                    break;
                }
                self.partitions.get_mut(&p).expect("listed").pop_front();
                by_window += usize::from(self.forget(slot));
            }
        }
        let mut by_memory = 0;
        while self.len > max {
            // The partition whose oldest upload is the oldest of all.
            let oldest = self
                .partitions
                .iter()
                .filter_map(|(&p, q)| q.front().map(|&(_, s)| (self.get(s).map_or(i64::MIN, |u| u.time_ms), p)))
                .min();
            let Some((_, p)) = oldest else { break };
            if let Some((_, slot)) = self.partitions.get_mut(&p).and_then(VecDeque::pop_front) {
                by_memory += usize::from(self.forget(slot));
            }
        }
        (by_window, by_memory)
    }

    /// Forgets every upload of a partition (it was assigned to another replica); returns how many.
    pub fn drop_partition(&mut self, partition: i32) -> usize {
        let slots = self.partitions.remove(&partition).unwrap_or_default();
        slots.into_iter().map(|(_, slot)| usize::from(self.forget(slot))).sum()
    }

    fn forget(&mut self, slot: u32) -> bool {
        let Some(upload) = self.slots.get_mut(slot as usize).and_then(Option::take) else { return false };
        self.by_event.remove(&upload.event_id);
        if let Some(h) = upload.md5 {
            remove_from(&mut self.md5, h, slot);
        }
        if let Some(h) = upload.sha256 {
            remove_from(&mut self.sha256, h, slot);
        }
        if upload.pdq.is_some() {
            self.pdq.remove(slot);
        }
        self.matched.remove(&slot);
        self.free.push(slot);
        self.len -= 1;
        true
    }

    /// The uploads a bank change may re-decide: those whose hashes are within the bank's reach
    /// of an entry that now applies, and those whose latest verdict matched an entry that no
    /// longer does. A quarantine changes nothing here: retro does not act on quarantined entries.
    pub fn candidates(&self, change: &BankChange, bank: &BankSettings) -> Vec<u32> {
        let mut out = Vec::new();
        if matches!(change.applied, Applied::Added | Applied::Replaced | Applied::Released) {
            match &change.hash {
                ParsedHash::Md5(h) => out.extend(self.md5.get(h).into_iter().flatten()),
                ParsedHash::Sha256(h) => out.extend(self.sha256.get(h).into_iter().flatten()),
                ParsedHash::Pdq(h) => out.extend(self.pdq.query(h, bank.pdq_threshold).into_iter().map(|(slot, _)| slot)),
            }
        }
        if let (Applied::Withdrawn | Applied::Replaced, Some(old)) = (change.applied, &change.old_entry) {
            let signal = change.hash.signal().as_str();
            out.extend(self.matched.iter().copied().filter(|&slot| {
                self.get(slot).is_some_and(|u| {
                    u.matches.iter().any(|m| {
                        matches!(m, Reason::HashMatch { bank: b, signal: s, entry, .. }
                            if *b == change.bank && s == signal && entry == old)
                    })
                })
            }));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Re-decides one upload with the banks as they are now: `None` when its bank matches are
    /// what its latest verdict says. Matches on quarantined entries are left as the verdict had
    /// them (retro does not act on a flood), and so are dihedral matches (the verdict carries
    /// the upload's PDQ hash as uploaded, not its rotations).
    pub fn redecide(&self, slot: u32, banks: &BankSet, media_error_action: Action, policy_version: &str) -> Option<Redecision> {
        let upload = self.get(slot)?;
        let found = banks.match_signals(upload.md5.as_ref(), upload.sha256.as_ref(), upload.pdq);
        let key_of = |r: &Reason| match r {
            Reason::HashMatch { bank, signal, entry, .. } => Some((bank.clone(), signal.clone(), entry.clone())),
            _ => None,
        };
        let current: BTreeMap<_, &Reason> = upload.matches.iter().filter_map(|r| Some((key_of(r)?, r))).collect();
        let mut now: BTreeMap<(String, String, String), Reason> = BTreeMap::new();
        for m in &found.matches {
            let key = (m.bank.clone(), m.signal.as_str().to_string(), m.entry.clone());
            if m.quarantined() {
                if let Some(&kept) = current.get(&key) {
                    now.insert(key, kept.clone());
                }
            } else {
                now.insert(key, policy::match_reason(m));
            }
        }
        for (key, &reason) in &current {
            if matches!(reason, Reason::HashMatch { transform: Some(_), .. }) {
                now.entry(key.clone()).or_insert_with(|| reason.clone());
            }
        }
        let same = now.len() == current.len()
            && now.iter().all(|(k, r)| current.get(k).is_some_and(|c| quarantined(c) == quarantined(r)));
        if same {
            return None;
        }
        let mut changes: Vec<RetroChange> = Vec::new();
        for (bank, signal, entry) in now.keys().filter(|k| current.get(*k).is_none_or(|c| quarantined(c) != quarantined(&now[*k]))) {
            changes.push(RetroChange { change: "added".into(), bank: bank.clone(), signal: signal.clone(), entry: entry.clone() });
        }
        for (bank, signal, entry) in current.keys().filter(|k| !now.contains_key(*k)) {
            changes.push(RetroChange { change: "removed".into(), bank: bank.clone(), signal: signal.clone(), entry: entry.clone() });
        }
        let others: Vec<Reason> = upload.others.as_deref().and_then(|json| serde_json::from_str(json).ok()).unwrap_or_default();
        let mut reasons: Vec<Reason> = now.into_values().collect();
        reasons.extend(others);
        let action = policy::action_of(&reasons, media_error_action);
        let supersedes = upload.latest.as_deref().unwrap_or(&upload.event_id).to_string();
        let event_id = supersession_id(&upload.event_id, &supersedes, action, &reasons);
        let verdict = Verdict {
            schema: VERDICT_SCHEMA.into(),
            event_id,
            media_id: upload.media_id.to_string(),
            tenant: upload.tenant.to_string(),
            action,
            reasons,
            signals: Signals {
                md5: upload.md5.map(hex::encode),
                sha256: upload.sha256.map(hex::encode),
                pdq: upload.pdq.map(|(h, _)| h.to_string()),
                pdq_quality: upload.pdq.map(|(_, q)| q),
                width: None,
                height: None,
            },
            policy: policy_version.to_string(),
            banks_version: found.version,
            decided_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            latency_ms: 0.0,
            attributes: Default::default(),
            retro: Some(Retro {
                upload_event_id: upload.event_id.to_string(),
                supersedes,
                previous_action: upload.action,
                changes,
            }),
        };
        Some(Redecision { slot, partition: upload.partition, verdict })
    }

    /// Bytes held on the heap, roughly (for the memory benchmark's cross-check).
    pub fn heap_bytes(&self) -> usize {
        self.pdq.heap_bytes()
    }
}

fn quarantined(r: &Reason) -> bool {
    matches!(r, Reason::HashMatch { quarantined: true, .. })
}

fn remove_from<K: std::hash::Hash + Eq>(map: &mut FastMap<K, Vec<u32>>, key: K, slot: u32) {
    if let Some(slots) = map.get_mut(&key) {
        slots.retain(|&s| s != slot);
        if slots.is_empty() {
            map.remove(&key);
        }
    }
}

/// Bank matches apart from the other reasons, which are kept as one JSON string.
fn split_reasons(reasons: Vec<Reason>) -> (Box<[Reason]>, Option<Box<str>>) {
    let (matches, others): (Vec<Reason>, Vec<Reason>) = reasons.into_iter().partition(|r| matches!(r, Reason::HashMatch { .. }));
    let others = (!others.is_empty()).then(|| serde_json::to_string(&others).expect("reasons serialize").into_boxed_str());
    (matches.into_boxed_slice(), others)
}

/// A retroactive verdict's event_id: the same re-decision of the same verdict always gets the
/// same id (a replica that writes it twice, before and after a crash, writes a duplicate that
/// consumers drop), and a later re-decision (it supersedes another verdict) a new one.
fn supersession_id(upload: &str, supersedes: &str, action: Action, reasons: &[Reason]) -> String {
    let mut digest = Sha256::new();
    for part in [upload, supersedes, action.as_str()] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    digest.update(serde_json::to_vec(reasons).expect("reasons serialize"));
    format!("retro-{}", &hex::encode(digest.finalize())[..32])
}

/// Whether a bank state (`next` offset per partition) includes every record a verdict's
/// `banks_version` names; a verdict without one (bank files only) is always covered.
pub fn covers(state: &BTreeMap<i32, i64>, banks_version: Option<&str>) -> bool {
    let Some(version) = banks_version else { return true };
    version.split(',').filter_map(|part| part.split_once(':')).all(|(p, o)| {
        match (p.trim().parse::<i32>(), o.trim().parse::<i64>()) {
            (Ok(p), Ok(o)) => state.get(&p).is_some_and(|&next| next >= o),
            _ => true,
        }
    })
}
