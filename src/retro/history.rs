//! The uploads a retro replica remembers, and how a bank change re-decides them. Plain data: no
//! Kafka, no clock (times come in with the records).
//!
//! Each upload keeps what its verdicts said and nothing of its media: its ids, the verdict
//! partition and offset, its exact hashes and PDQ hash, the action and bank matches of its
//! latest verdict (the first, or a later retroactive one) and that verdict's other reasons.
//! Exact hashes and event ids are found through hash tables that hold only slot numbers (many
//! uploads may share a hash), PDQ hashes through the same multi-index as the banks. A video also
//! keeps the vPDQ features its verdict carries (each frame's hash in a second multi-index, with
//! its quality and time: 45 bytes a frame, about 27 KB for ten minutes at one hash a second), so
//! a vPDQ or PDQ entry added later finds the earlier copies of a video too.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::Hash;

use hashbrown::HashTable;

use sha2::{Digest, Sha256};

use crate::bank::pdq_index::PdqIndex;
use crate::bank::{Applied, BankChange, BankSet, PdqSignal, ParsedHash, Signal, MAX_MORE_PDQ_IN_VERDICT};
use crate::hash::exact::ExactHashes;
use crate::hash::vpdq::{self, VpdqFeature};
use crate::config::BankSettings;
use crate::event::{Action, Reason, Retro, RetroChange, Signals, Verdict, MAX_VPDQ_IN_VERDICT, VERDICT_SCHEMA};
use crate::hash::pdq::PdqHash;
use crate::policy;


/// One remembered upload. Its ids and its latest verdict's other reasons share one allocation
/// ([`Upload::event_id`] and the like read them): a million uploads, three million fewer.
#[derive(Debug, Clone)]
pub struct Upload {
    /// event_id, media_id, tenant, then the other reasons as JSON (empty: none), back to back.
    text: Box<str>,
    /// Where the first three end in `text`.
    ends: [u32; 3],
    /// The event_id of its latest retroactive verdict; `None`: the first verdict is the latest.
    pub latest: Option<Box<str>>,
    pub partition: i32,
    /// The first verdict's offset and timestamp (ms).
    pub offset: i64,
    pub time_ms: i64,
    pub md5: Option<[u8; 16]>,
    pub sha256: Option<[u8; 32]>,
    /// The PDQ hash itself lives in the history's index.
    pub pdq_quality: Option<u8>,
    pub action: Action,
    /// The latest verdict's bank matches (`Reason::HashMatch` only).
    pub matches: Box<[Reason]>,
    /// A video's frames, in order: (id in the history's frame index, quality, time in ms).
    pub video: Option<Box<[(u32, u8, u32)]>>,
    /// An image's other PDQ hashes (`signals.more_pdq`): animation frames and full-resolution
    /// hashes, each (id in the frame index, quality, time in ms or [`NO_TIME`], full resolution).
    pub pictures: Option<Box<[(u32, u8, u32, bool)]>>,
    /// The still image's other seven dihedral hashes (`signals.pdq_dihedral`), by id in the
    /// frame index: what retro matches banks with `dihedral = true` by.
    pub dihedral: Option<Box<[u32; 7]>>,
}

/// A picture with no time: the still image.
const NO_TIME: u32 = u32::MAX;

impl Upload {
    fn texts(event_id: &str, media_id: &str, tenant: &str, others: &str) -> (Box<str>, [u32; 3]) {
        let mut text = String::with_capacity(event_id.len() + media_id.len() + tenant.len() + others.len());
        let mut ends = [0u32; 3];
        for (end, part) in ends.iter_mut().zip([event_id, media_id, tenant]) {
            text.push_str(part);
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        text.push_str(others);
        (text.into_boxed_str(), ends)
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = if i == 3 { self.text.len() } else { self.ends[i] as usize };
        &self.text[start..end]
    }

    pub fn event_id(&self) -> &str {
        self.part(0)
    }

    pub fn media_id(&self) -> &str {
        self.part(1)
    }

    pub fn tenant(&self) -> &str {
        self.part(2)
    }

    /// The latest verdict's other reasons (classifier, media error, low quality) as JSON.
    fn others(&self) -> &str {
        self.part(3)
    }
}

/// (bank, signal, entry id): a bank entry as verdicts name it.
pub type EntryKey = (String, String, String);

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
    hasher: ahash::RandomState,
    /// Slots by their upload's event id, MD5 and SHA-256 (hashed through the slot's upload).
    by_event: HashTable<u32>,
    md5: HashTable<u32>,
    sha256: HashTable<u32>,
    pdq: PdqIndex,
    /// Videos' frame hashes by frame id, each frame id's upload slot, and the ids to reuse.
    frames: PdqIndex,
    frame_slot: Vec<u32>,
    free_frames: Vec<u32>,
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

    /// The slot of the upload with this event id.
    pub fn slot_of(&self, event_id: &str) -> Option<u32> {
        let slots = &self.slots;
        self.by_event.find(self.hasher.hash_one(event_id), |&s| upload_at(slots, s).is_some_and(|u| u.event_id() == event_id)).copied()
    }

    /// Slots whose upload has this exact hash.
    fn with_hash<K: Hash + PartialEq + Copy>(&self, table: &HashTable<u32>, key: K, of: fn(&Upload) -> Option<K>) -> Vec<u32> {
        table.iter_hash(self.hasher.hash_one(key)).copied().filter(|&s| upload_at(&self.slots, s).and_then(of) == Some(key)).collect()
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
                let slot = self.slot_of(&retro.upload_event_id).ok_or(Skip::Unknown)?;
                let upload = self.get(slot).ok_or(Skip::Unknown)?;
                let latest = upload.latest.as_deref().unwrap_or(upload.event_id());
                // Only the verdict that supersedes the latest one moves the upload on: one this
                // replica wrote itself is known already, and an older one read back late (or one
                // superseding a verdict that is no longer the latest) would move it back.
                if verdict.event_id != latest && retro.supersedes == latest {
                    self.record(slot, &verdict);
                }
                Ok(None)
            }
            None => self.remember(verdict, partition, offset, time_ms).map(Some),
        }
    }

    fn remember(&mut self, verdict: Verdict, partition: i32, offset: i64, time_ms: i64) -> Result<u32, Skip> {
        if self.slot_of(&verdict.event_id).is_some() {
            return Err(Skip::Duplicate);
        }
        let (matches, others) = split_reasons(verdict.reasons);
        let signals = &verdict.signals;
        let (text, ends) = Upload::texts(&verdict.event_id, &verdict.media_id, &verdict.tenant, &others);
        let pdq = signals.pdq.as_deref().and_then(|h| h.parse::<PdqHash>().ok());
        let upload = Upload {
            text,
            ends,
            latest: None,
            partition,
            offset,
            time_ms,
            md5: signals.md5.as_deref().and_then(|h| crate::bank::hash_text::decode_hex::<16>(h.as_bytes())),
            sha256: signals.sha256.as_deref().and_then(|h| crate::bank::hash_text::decode_hex::<32>(h.as_bytes())),
            pdq_quality: pdq.map(|_| signals.pdq_quality.unwrap_or(0)),
            action: verdict.action,
            matches,
            video: None,
            pictures: None,
            dihedral: None,
        };
        // An unreadable feature list is no video to look for: the upload is kept for its other hashes.
        let features = signals.vpdq.as_deref().and_then(|items| vpdq::parse_items(items).ok());
        let dihedral: Option<[PdqHash; 7]> = signals.pdq_dihedral.as_deref().filter(|_| pdq.is_some()).and_then(|hashes| {
            let parsed: Vec<PdqHash> = hashes.iter().map(|h| h.parse().ok()).collect::<Option<_>>()?;
            parsed.try_into().ok()
        });
        // Likewise an unreadable picture list: without it, retro only adds to the frame matches.
        let pictures: Option<Vec<PdqSignal>> =
            signals.more_pdq.as_deref().and_then(|items| items.iter().map(|i| PdqSignal::parse_item(i)).collect::<Result<_, _>>().ok());
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let (event_hash, md5, sha256) = (self.hasher.hash_one(upload.event_id()), upload.md5, upload.sha256);
        if !upload.matches.is_empty() {
            self.matched.insert(slot);
        }
        // In its slot first: growing a table rehashes its entries through their uploads.
        self.slots[slot as usize] = Some(upload);
        let Self { slots, hasher, by_event, md5: md5_table, sha256: sha_table, .. } = self;
        by_event.insert_unique(event_hash, slot, |&s| upload_at(slots, s).map_or(0, |u| hasher.hash_one(u.event_id())));
        if let Some(h) = md5 {
            md5_table.insert_unique(hasher.hash_one(h), slot, |&s| upload_at(slots, s).and_then(|u| u.md5).map_or(0, |h| hasher.hash_one(h)));
        }
        if let Some(h) = sha256 {
            sha_table.insert_unique(hasher.hash_one(h), slot, |&s| {
                upload_at(slots, s).and_then(|u| u.sha256).map_or(0, |h| hasher.hash_one(h))
            });
        }
        if let Some(h) = pdq {
            self.pdq.insert(slot, h);
        }
        if let Some(features) = features {
            let frames = features.iter().map(|f| (self.add_frame(slot, f.hash), f.quality, (f.timestamp * 1000.0).round() as u32)).collect();
            if let Some(upload) = self.slots[slot as usize].as_mut() {
                upload.video = Some(frames);
            }
        }
        if let Some(hashes) = dihedral {
            let ids = hashes.map(|h| self.add_frame(slot, h));
            if let Some(upload) = self.slots[slot as usize].as_mut() {
                upload.dihedral = Some(Box::new(ids));
            }
        }
        if let Some(pictures) = pictures {
            let ms = |at: Option<f64>| at.map_or(NO_TIME, |t| ((t * 1000.0).round() as u32).min(NO_TIME - 1));
            let kept = pictures.iter().map(|p| (self.add_frame(slot, p.hash), p.quality, ms(p.at), p.full_resolution)).collect();
            if let Some(upload) = self.slots[slot as usize].as_mut() {
                upload.pictures = Some(kept);
            }
        }
        self.partitions.entry(partition).or_default().push_back((offset, slot));
        self.len += 1;
        Ok(slot)
    }

    /// The still image's PDQ signal as the screen matched it: with its seven other dihedral
    /// hashes when the verdict carried them.
    fn still_signal(&self, upload: &Upload, hash: PdqHash, quality: u8) -> PdqSignal {
        let others = upload.dihedral.as_deref().and_then(|ids| {
            let others: Vec<PdqHash> = ids.iter().map(|&id| self.frames.hash_of(id)).collect::<Option<_>>()?;
            <[PdqHash; 7]>::try_from(others).ok()
        });
        let dihedral = others.map(|o| [hash, o[0], o[1], o[2], o[3], o[4], o[5], o[6]]);
        PdqSignal { dihedral, ..PdqSignal::new(hash, quality) }
    }

    fn add_frame(&mut self, slot: u32, hash: PdqHash) -> u32 {
        let id = self.free_frames.pop().unwrap_or(self.frame_slot.len() as u32);
        if id as usize == self.frame_slot.len() {
            self.frame_slot.push(slot);
        } else {
            self.frame_slot[id as usize] = slot;
        }
        self.frames.insert(id, hash);
        id
    }

    /// The slots of the videos with a frame within `threshold` of one of `hashes`.
    fn with_frame_near(&self, hashes: &[PdqHash], threshold: u32) -> Vec<u32> {
        hashes.iter().flat_map(|h| self.frames.query(h, threshold)).map(|(id, _)| self.frame_slot[id as usize]).collect()
    }

    /// A remembered video's features, as its verdict gave them (frame numbers are positions).
    fn features_of(&self, upload: &Upload) -> Vec<VpdqFeature> {
        let frames = upload.video.as_deref().unwrap_or_default();
        frames
            .iter()
            .enumerate()
            .filter_map(|(i, &(id, quality, ms))| {
                Some(VpdqFeature { frame: i as u64, quality, hash: self.frames.hash_of(id)?, timestamp: f64::from(ms) / 1000.0 })
            })
            .collect()
    }

    /// Records a verdict that superseded the upload's latest one (read back, or just written).
    pub fn record(&mut self, slot: u32, verdict: &Verdict) {
        let Some(upload) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        let (matches, others) = split_reasons(verdict.reasons.clone());
        upload.latest = Some(verdict.event_id.as_str().into());
        upload.action = verdict.action;
        upload.matches = matches;
        if upload.others() != others {
            (upload.text, upload.ends) = Upload::texts(upload.event_id(), upload.media_id(), upload.tenant(), &others);
        }
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
        remove_slot(&mut self.by_event, self.hasher.hash_one(upload.event_id()), slot);
        if let Some(h) = upload.md5 {
            remove_slot(&mut self.md5, self.hasher.hash_one(h), slot);
        }
        if let Some(h) = upload.sha256 {
            remove_slot(&mut self.sha256, self.hasher.hash_one(h), slot);
        }
        if upload.pdq_quality.is_some() {
            self.pdq.remove(slot);
        }
        let pictures = upload.pictures.as_deref().unwrap_or_default().iter().map(|&(id, ..)| id);
        let dihedral = upload.dihedral.as_deref().into_iter().flatten().copied();
        for id in upload.video.as_deref().unwrap_or_default().iter().map(|&(id, ..)| id).chain(pictures).chain(dihedral) {
            self.frames.remove(id);
            self.free_frames.push(id);
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
                ParsedHash::Md5(h) => out.extend(self.with_hash(&self.md5, *h, |u| u.md5)),
                ParsedHash::Sha256(h) => out.extend(self.with_hash(&self.sha256, *h, |u| u.sha256)),
                ParsedHash::Pdq(h) => {
                    out.extend(self.pdq.query(h, bank.pdq_threshold).into_iter().map(|(slot, _)| slot));
                    out.extend(self.with_frame_near(std::slice::from_ref(h), bank.pdq_threshold));
                }
                ParsedHash::Vpdq(_) => out.extend(self.with_frame_near(change.video_frames.as_deref().unwrap_or_default(), bank.pdq_threshold)),
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
    /// them (retro does not act on a flood), and so are the matches retro cannot derive again
    /// from the hashes it remembers (see [`rederivable`]) unless their entry is in `removed`
    /// (withdrawn or replaced since).
    pub fn redecide(
        &self,
        slot: u32,
        banks: &BankSet,
        removed: &BTreeSet<EntryKey>,
        media_error_action: Action,
        policy_version: &str,
    ) -> Option<Redecision> {
        let upload = self.get(slot)?;
        let pdq = upload.pdq_quality.and_then(|q| Some((self.pdq.hash_of(slot)?, q)));
        // A verdict carries at most MAX_VPDQ_IN_VERDICT features: a list that long may be a spread,
        // on which the shares differ from the screen's.
        let video = upload.video.as_deref().is_some_and(|frames| frames.len() < MAX_VPDQ_IN_VERDICT);
        let exact = ExactHashes {
            md5: upload.md5.map(hex::encode).unwrap_or_default(),
            sha256: upload.sha256.map(hex::encode).unwrap_or_default(),
        };
        let found = if video {
            // A video is matched as the screen matched it: its features against the vPDQ
            // entries, each frame (hashed in the `full` convention) against the PDQ entries.
            let features = self.features_of(upload);
            let frames: Vec<PdqSignal> = features
                .iter()
                .map(|f| PdqSignal { at: Some(f.timestamp), ..PdqSignal::new(f.hash, f.quality) })
                .collect();
            banks.match_media(&exact, &frames, &features)
        } else {
            // An image as the screen matched it: the still image (with its rotations and flips
            // when remembered), then its animation frames and full-resolution hashes.
            let mut all: Vec<PdqSignal> = pdq.map(|(hash, quality)| self.still_signal(upload, hash, quality)).into_iter().collect();
            all.extend(upload.pictures.as_deref().unwrap_or_default().iter().filter_map(|&(id, quality, ms, full_resolution)| {
                let at = (ms != NO_TIME).then(|| f64::from(ms) / 1000.0);
                Some(PdqSignal { at, full_resolution, ..PdqSignal::new(self.frames.hash_of(id)?, quality) })
            }));
            banks.match_media(&exact, &all, &[])
        };
        let remembered = Remembered {
            video,
            pictures: upload.pictures.as_deref().is_some_and(|p| p.len() < MAX_MORE_PDQ_IN_VERDICT),
            dihedral: upload.dihedral.is_some(),
        };
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
                let mut reason = policy::match_reason(m);
                // An allowlist PDQ match allows only once the full image confirmed it (see
                // `Screen::confirm_allowlist`); without the pixels, retro keeps what the screen
                // decided and cannot confirm a match the screen never saw.
                if m.action == Action::Allow && m.signal == Signal::Pdq {
                    let confirmed = matches!(current.get(&key), Some(Reason::HashMatch { unconfirmed: false, .. }));
                    if let Reason::HashMatch { unconfirmed, .. } = &mut reason {
                        *unconfirmed = !confirmed;
                    }
                }
                now.insert(key, reason);
            }
        }
        for (key, &reason) in &current {
            if !rederivable(reason, remembered) && !removed.contains(key) {
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
        let others: Vec<Reason> = serde_json::from_str(upload.others()).unwrap_or_default();
        let mut reasons: Vec<Reason> = now.into_values().collect();
        reasons.extend(others);
        let action = policy::action_of(&reasons, media_error_action);
        let supersedes = upload.latest.as_deref().unwrap_or(upload.event_id()).to_string();
        let event_id = supersession_id(upload.event_id(), &supersedes, action, &reasons);
        let verdict = Verdict {
            schema: VERDICT_SCHEMA.into(),
            event_id,
            media_id: upload.media_id().to_string(),
            tenant: upload.tenant().to_string(),
            surface: None,
            action,
            reasons,
            signals: Signals {
                md5: upload.md5.map(hex::encode),
                sha256: upload.sha256.map(hex::encode),
                pdq: pdq.map(|(h, _)| h.to_string()),
                pdq_quality: pdq.map(|(_, q)| q),
                ..Default::default()
            },
            policy: policy_version.to_string(),
            banks_version: found.version,
            decided_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            latency_ms: 0.0,
            attributes: Default::default(),
            retro: Some(Retro {
                upload_event_id: upload.event_id().to_string(),
                supersedes,
                previous_action: upload.action,
                changes,
            }),
            truncated: false,
        };
        Some(Redecision { slot, partition: upload.partition, verdict })
    }
}

/// What retro remembers of an upload beyond its exact hashes and its still image's PDQ hash.
#[derive(Debug, Clone, Copy)]
struct Remembered {
    /// A video's whole feature list.
    video: bool,
    /// An image's whole picture list (animation frames, full-resolution hashes).
    pictures: bool,
    /// The still image's rotations and flips.
    dihedral: bool,
}

/// Whether retro can find a match again from the hashes it remembers of an upload. Not a video
/// frame's PDQ match (retro has the frame's `full` hash, the banks may use the `cli` convention),
/// nor a dihedral match of an animation frame or full-resolution hash (the verdict carries only
/// the still image's rotations), nor anything a verdict left out: those stay until their entry
/// goes, and retro only adds to them.
fn rederivable(r: &Reason, remembered: Remembered) -> bool {
    match r {
        Reason::HashMatch { signal, .. } if signal == "vpdq" => remembered.video,
        Reason::HashMatch { at, full_resolution, transform, .. } if at.is_some() || *full_resolution => {
            remembered.pictures && transform.is_none()
        }
        Reason::HashMatch { transform: Some(_), .. } => remembered.dihedral,
        _ => true,
    }
}

fn quarantined(r: &Reason) -> bool {
    matches!(r, Reason::HashMatch { quarantined: true, .. })
}

fn upload_at(slots: &[Option<Upload>], slot: u32) -> Option<&Upload> {
    slots.get(slot as usize)?.as_ref()
}

/// Removes `slot` from a table it was inserted into under `hash`.
fn remove_slot(table: &mut HashTable<u32>, hash: u64, slot: u32) {
    if let Ok(entry) = table.find_entry(hash, |&s| s == slot) {
        entry.remove();
    }
}

/// Bank matches apart from the other reasons, which are kept as JSON (empty: none).
fn split_reasons(reasons: Vec<Reason>) -> (Box<[Reason]>, String) {
    let (matches, others): (Vec<Reason>, Vec<Reason>) = reasons.into_iter().partition(|r| matches!(r, Reason::HashMatch { .. }));
    let others = if others.is_empty() { String::new() } else { serde_json::to_string(&others).expect("reasons serialize") };
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

/// A verdict's `banks_version` (`PARTITION:NEXT_OFFSET,...`) as a map; unreadable parts are left out.
pub fn parse_version(version: &str) -> BTreeMap<i32, i64> {
    version
        .split(',')
        .filter_map(|part| part.split_once(':'))
        .filter_map(|(p, o)| Some((p.trim().parse().ok()?, o.trim().parse().ok()?)))
        .collect()
}

/// Whether a bank state (next offset per partition) includes every record `version` names.
pub fn covers(state: &BTreeMap<i32, i64>, version: &BTreeMap<i32, i64>) -> bool {
    version.iter().all(|(p, o)| state.get(p).is_some_and(|next| next >= o))
}

/// Raises `into` to `version` partition by partition (the newest bank state of several verdicts).
pub fn merge_version(into: &mut BTreeMap<i32, i64>, version: &BTreeMap<i32, i64>) {
    for (&p, &o) in version {
        let next = into.entry(p).or_insert(o);
        *next = (*next).max(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::record::{quarantine_key, record_key, release_key, BankEntryRecord, BANK_ENTRY_SCHEMA};
    use crate::bank::{Bank, Signal, TopicRecord};
    use crate::metrics::Metrics;

    fn settings(name: &str) -> BankSettings {
        BankSettings::new(name, Action::Block)
    }

    fn pdq(seed: u64) -> PdqHash {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut words = [0u64; 4];
        for w in &mut words {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *w = x;
        }
        PdqHash::from_words(words)
    }

    /// `bits` bits of `h` flipped.
    fn near(h: PdqHash, bits: u32) -> PdqHash {
        let mut w = h.words();
        for b in 0..bits {
            w[(b % 4) as usize] ^= 1 << (b * 7 % 64);
        }
        PdqHash::from_words(w)
    }

    fn md5(i: u32) -> String {
        format!("{:032x}", u128::from(i) * 0x1234_5678_9abc_def1 + 7)
    }

    fn verdict(event: &str, md5_hex: &str, pdq: Option<PdqHash>) -> Verdict {
        Verdict {
            schema: VERDICT_SCHEMA.into(),
            event_id: event.into(),
            media_id: format!("m-{event}"),
            tenant: "t".into(),
            surface: None,
            action: Action::Allow,
            reasons: vec![Reason::Classifier {
                model: "m".into(),
                model_sha256: "00".into(),
                label: "nsfw".into(),
                score: 0.1,
                band: "none".into(),
                at: None,
            }],
            signals: Signals {
                md5: Some(md5_hex.into()),
                sha256: None,
                pdq: pdq.map(|h| h.to_string()),
                pdq_quality: pdq.map(|_| 90),
                ..Default::default()
            },
            policy: "p".into(),
            banks_version: None,
            decided_at: "2026-11-29T00:00:00Z".into(),
            latency_ms: 1.0,
            attributes: Default::default(),
            retro: None,
            truncated: false,
        }
    }

    /// The bank set, applied through topic records as the feed would, journaling changes.
    struct Banks {
        set: BankSet,
        metrics: std::sync::Arc<Metrics>,
        offset: i64,
    }

    impl Banks {
        fn new(names: &[&str]) -> Self {
            Self::with(names.iter().map(|n| settings(n)).collect())
        }

        fn with(settings: Vec<BankSettings>) -> Self {
            let set = BankSet::new(settings.into_iter().map(Bank::new).collect());
            set.record_changes();
            Self { set, metrics: Metrics::new(), offset: 0 }
        }

        fn put(&mut self, bank: &str, signal: Signal, hash: &str, entry: &str) -> Vec<BankChange> {
            let value = serde_json::to_vec(&BankEntryRecord {
                schema: BANK_ENTRY_SCHEMA.into(),
                bank: bank.into(),
                signal: signal.as_str().into(),
                hash: hash.into(),
                entry: entry.into(),
                source: "test".into(),
                added_at: "2026-11-29T00:00:00Z".into(),
                tags: vec![],
                vpdq: None,
            })
            .unwrap();
            self.send(record_key(bank, signal, hash), Some(value))
        }

        fn send(&mut self, key: String, value: Option<Vec<u8>>) -> Vec<BankChange> {
            let record = TopicRecord { partition: 0, offset: self.offset, timestamp_ms: None, key: Some(key.as_bytes()), value: value.as_deref() };
            self.offset += 1;
            self.set.apply(&[record], &self.metrics, true);
            self.set.take_changes()
        }
    }

    fn removed_of(changes: &[BankChange]) -> BTreeSet<EntryKey> {
        changes
            .iter()
            .filter_map(|c| Some((c.bank.clone(), c.hash.signal().as_str().to_string(), c.old_entry.clone()?)))
            .collect()
    }

    fn redecide_all(history: &mut History, banks: &Banks, changes: &[BankChange]) -> Vec<Verdict> {
        let mut out = Vec::new();
        for change in changes {
            let bank = banks.set.settings().into_iter().find(|b| b.name == change.bank).unwrap();
            for slot in history.candidates(change, &bank) {
                if let Some(r) = history.redecide(slot, &banks.set, &removed_of(changes), Action::Review, "p2") {
                    history.record(slot, &r.verdict);
                    out.push(r.verdict);
                }
            }
        }
        out
    }

    /// A video uploaded first, its vPDQ reported later: retro finds the earlier copy through the
    /// features its verdict carried and blocks it; a PDQ entry matching one frame does too (the
    /// reason names the second); withdrawn, the vPDQ block is undone, the frame's stays.
    #[test]
    fn a_video_entry_added_later_takes_down_the_earlier_copies() {
        let mut banks = Banks::new(&["ncii"]);
        let mut history = History::new();
        let frames: Vec<PdqHash> = (0..10).map(|i| pdq(500 + i)).collect();
        let item = |h: &PdqHash, t: usize| format!("{h},100,{t}.000");
        let mut video = verdict("video", &md5(1), None);
        video.signals.vpdq = Some(frames.iter().enumerate().map(|(t, h)| item(&near(*h, 9), t)).collect());
        history.take(video, 0, 0, 0).unwrap();
        let other = verdict("other", &md5(2), Some(frames[0]));
        history.take(other, 0, 1, 0).unwrap();
        // The bank's copy: the same frames, and two of its own (80 % of the upload's match).
        let banked: Vec<String> = frames.iter().take(8).chain([pdq(900), pdq(901)].iter()).enumerate().map(|(t, h)| item(h, t)).collect();
        let text = serde_json::to_string(&banked).unwrap();
        let digest = hex::encode(crate::bank::video::VideoEntry::parse(&text).unwrap().digest);
        let value = serde_json::to_vec(&BankEntryRecord {
            schema: BANK_ENTRY_SCHEMA.into(),
            bank: "ncii".into(),
            signal: "vpdq".into(),
            hash: digest.clone(),
            entry: "v-1".into(),
            source: "test".into(),
            added_at: "2026-11-29T00:00:00Z".into(),
            tags: vec![],
            vpdq: Some(banked),
        })
        .unwrap();
        let changes = banks.send(format!("ncii/vpdq/{digest}"), Some(value));
        assert!(changes[0].video_frames.as_ref().is_some_and(|f| f.len() == 10));
        let out = redecide_all(&mut history, &banks, &changes);
        assert_eq!(out.len(), 1, "only the video: {out:?}");
        let v = &out[0];
        assert_eq!((v.media_id.as_str(), v.action), ("m-video", Action::Block));
        assert!(
            v.reasons.iter().any(|r| matches!(r, Reason::HashMatch { signal, query_match_pct: Some(q), .. } if signal == "vpdq" && *q == 80.0)),
            "{v:?}"
        );
        // A photo banked later, shown at second 3 of the video.
        let changes = banks.put("ncii", Signal::Pdq, &frames[3].to_string(), "p-1");
        let out = redecide_all(&mut history, &banks, &changes);
        let video = out.iter().find(|v| v.media_id == "m-video").expect("the video is re-decided");
        assert!(video.reasons.iter().any(|r| matches!(r, Reason::HashMatch { entry, at: Some(at), .. } if entry == "p-1" && *at == 3.0)), "{video:?}");
        // The vPDQ entry withdrawn: its match goes, the frame's PDQ match still blocks.
        let changes = banks.send(format!("ncii/vpdq/{digest}"), None);
        let out = redecide_all(&mut history, &banks, &changes);
        let video = out.iter().find(|v| v.media_id == "m-video").expect("re-decided");
        assert!(!video.reasons.iter().any(|r| matches!(r, Reason::HashMatch { signal, .. } if signal == "vpdq")), "{video:?}");
        assert_eq!(video.action, Action::Block);
    }

    /// An animation's other frames and a forged image's full-resolution hash reach retro in
    /// `signals.more_pdq`: an entry added later finds the banned frame (the reason says when it
    /// plays) and the picture viewers see; withdrawn, both matches go again, since retro holds
    /// every picture the screen matched.
    #[test]
    fn an_entry_added_later_finds_animation_frames_and_full_resolution_hashes() {
        let mut banks = Banks::new(&["ncii"]);
        let mut history = History::new();
        let (still, frame, viewed) = (pdq(700), pdq(701), pdq(702));
        let mut animation = verdict("animation", &md5(1), Some(still));
        let frames = [PdqSignal { at: Some(2.5), ..PdqSignal::new(frame, 90) }];
        animation.signals.more_pdq = Some(frames.iter().map(PdqSignal::to_item).collect());
        history.take(animation, 0, 0, 0).unwrap();
        let mut forged = verdict("forged", &md5(2), Some(pdq(703)));
        forged.signals.more_pdq = Some(vec![PdqSignal { full_resolution: true, ..PdqSignal::new(viewed, 80) }.to_item()]);
        history.take(forged, 0, 1, 0).unwrap();

        let changes = banks.put("ncii", Signal::Pdq, &near(frame, 5).to_string(), "frame-entry");
        let out = redecide_all(&mut history, &banks, &changes);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].media_id.as_str(), out[0].action), ("m-animation", Action::Block));
        assert!(out[0].reasons.iter().any(|r| matches!(r, Reason::HashMatch { at: Some(at), .. } if *at == 2.5)), "{:?}", out[0]);

        let changes = banks.put("ncii", Signal::Pdq, &viewed.to_string(), "viewed-entry");
        let out = redecide_all(&mut history, &banks, &changes);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].media_id.as_str(), out[0].action), ("m-forged", Action::Block));
        assert!(out[0].reasons.iter().any(|r| matches!(r, Reason::HashMatch { full_resolution: true, .. })), "{:?}", out[0]);

        for (entry_hash, media) in [(near(frame, 5), "m-animation"), (viewed, "m-forged")] {
            let changes = banks.send(record_key("ncii", Signal::Pdq, &entry_hash.to_string()), None);
            let out = redecide_all(&mut history, &banks, &changes);
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!((out[0].media_id.as_str(), out[0].action), (media, Action::Allow), "{:?}", out[0]);
        }
    }

    /// Upload first, hash later: exactly the uploads the new entry reaches are re-decided (exact
    /// and PDQ within the threshold), once; a withdrawal undoes it except where another entry
    /// still blocks.
    #[test]
    fn an_entry_added_later_finds_its_uploads_and_its_withdrawal_undoes_them() {
        let mut banks = Banks::new(&["ncii", "csam"]);
        let mut history = History::new();
        let target = pdq(1);
        for i in 0..200u32 {
            let hash = match i {
                10 => Some(near(target, 5)),
                11 => Some(near(target, 31)),
                12 => Some(near(target, 40)),
                _ => Some(pdq(1000 + u64::from(i))),
            };
            let md5_hex = if i == 20 || i == 21 { md5(999) } else { md5(i) };
            history.take(verdict(&format!("e{i}"), &md5_hex, hash), 0, i64::from(i), 1_000).unwrap();
        }
        assert_eq!(history.len(), 200);
        let mut changes = banks.put("ncii", Signal::Pdq, &target.to_string(), "case-1");
        changes.extend(banks.put("ncii", Signal::Md5, &md5(999), "case-2"));
        let written = redecide_all(&mut history, &banks, &changes);
        let mut hit: Vec<&str> = written.iter().map(|v| v.retro.as_ref().unwrap().upload_event_id.as_str()).collect();
        hit.sort();
        assert_eq!(hit, ["e10", "e11", "e20", "e21"], "distance 40 is beyond the threshold of 31");
        for v in &written {
            assert_eq!(v.action, Action::Block);
            let retro = v.retro.as_ref().unwrap();
            assert_eq!((retro.previous_action, retro.supersedes.as_str()), (Action::Allow, retro.upload_event_id.as_str()));
            assert_eq!(retro.changes[0].change, "added");
            assert!(v.event_id.starts_with("retro-") && v.event_id != retro.upload_event_id);
            assert!(v.reasons.iter().any(|r| matches!(r, Reason::Classifier { .. })), "the other reasons are kept");
        }
        // Nothing more to do: a second pass writes nothing.
        assert!(redecide_all(&mut history, &banks, &changes).is_empty());
        // e20 is blocked by a second bank too; withdrawing case-2 leaves it blocked.
        let slot20 = history.slot_of("e20").unwrap();
        let changes = banks.put("csam", Signal::Md5, &md5(999), "h-9");
        let again = redecide_all(&mut history, &banks, &changes);
        assert_eq!(again.len(), 2, "e20 and e21 gain the csam match");
        let changes = banks.send(record_key("ncii", Signal::Md5, &md5(999)), None);
        let undone = redecide_all(&mut history, &banks, &changes);
        assert_eq!(undone.len(), 2);
        assert!(undone.iter().all(|v| v.action == Action::Block), "still blocked by csam");
        assert_eq!(history.get(slot20).unwrap().matches.len(), 1);
        let changes = banks.send(record_key("ncii", Signal::Pdq, &target.to_string()), None);
        let undone = redecide_all(&mut history, &banks, &changes);
        assert_eq!(undone.len(), 2);
        for v in &undone {
            assert_eq!(v.action, Action::Allow);
            let retro = v.retro.as_ref().unwrap();
            assert_eq!(retro.previous_action, Action::Block);
            assert!(retro.supersedes.starts_with("retro-"), "it supersedes the earlier retroactive verdict");
            assert_eq!(retro.changes[0].change, "removed");
        }
    }

    #[test]
    fn the_same_redecision_has_the_same_id_and_a_later_one_a_new_id() {
        let mut banks = Banks::new(&["ncii"]);
        let mut history = History::new();
        history.take(verdict("e1", &md5(1), None), 0, 0, 0).unwrap();
        banks.put("ncii", Signal::Md5, &md5(1), "c");
        let first = history.redecide(0, &banks.set, &BTreeSet::new(), Action::Review, "p").unwrap();
        let twice = history.redecide(0, &banks.set, &BTreeSet::new(), Action::Review, "p").unwrap();
        assert_eq!(first.verdict.event_id, twice.verdict.event_id, "a replica that writes it twice writes a duplicate");
        history.record(0, &first.verdict);
        banks.send(record_key("ncii", Signal::Md5, &md5(1)), None);
        let undone = history.redecide(0, &banks.set, &BTreeSet::new(), Action::Review, "p").unwrap();
        history.record(0, &undone.verdict);
        banks.put("ncii", Signal::Md5, &md5(1), "c");
        let redone = history.redecide(0, &banks.set, &BTreeSet::new(), Action::Review, "p").unwrap();
        assert_eq!(redone.verdict.action, first.verdict.action);
        assert_ne!(redone.verdict.event_id, first.verdict.event_id, "it supersedes another verdict: a new id");
    }

    /// Read back from the topic: a retroactive verdict updates its upload, a repeated first
    /// verdict is a duplicate, one for an upload not remembered is skipped.
    #[test]
    fn retroactive_verdicts_read_back_update_instead_of_looping() {
        let mut banks = Banks::new(&["ncii"]);
        let mut history = History::new();
        history.take(verdict("e1", &md5(1), None), 3, 40, 0).unwrap();
        assert_eq!(history.take(verdict("e1", &md5(1), None), 3, 41, 0), Err(Skip::Duplicate));
        banks.put("ncii", Signal::Md5, &md5(1), "c");
        let r = history.redecide(0, &banks.set, &BTreeSet::new(), Action::Review, "p").unwrap();
        assert_eq!(r.partition, 3);
        assert_eq!(history.take(r.verdict.clone(), 3, 50, 0), Ok(None));
        assert_eq!(history.get(0).unwrap().action, Action::Block);
        assert!(history.redecide(0, &banks.set, &BTreeSet::new(), Action::Review, "p").is_none());
        let mut stranger = r.verdict;
        stranger.retro.as_mut().unwrap().upload_event_id = "nobody".into();
        assert_eq!(history.take(stranger, 3, 51, 0), Err(Skip::Unknown));
        assert_eq!(history.len(), 1);
    }

    /// Its own verdicts read back late never move an upload back: after "block" then "allow"
    /// were written, reading the "block" back changes nothing, and re-adding the entry blocks.
    #[test]
    fn a_late_read_back_never_moves_an_upload_back() {
        let mut banks = Banks::new(&["ncii"]);
        let mut history = History::new();
        history.take(verdict("e1", &md5(1), None), 0, 0, 0).unwrap();
        let mut written = Vec::new();
        for value in [true, false] {
            if value {
                banks.put("ncii", Signal::Md5, &md5(1), "c");
            } else {
                banks.send(record_key("ncii", Signal::Md5, &md5(1)), None);
            }
            let r = history.redecide(0, &banks.set, &BTreeSet::new(), Action::Review, "p").unwrap();
            history.record(0, &r.verdict);
            written.push(r.verdict);
        }
        for v in &written {
            history.take(v.clone(), 0, 1, 0).unwrap();
        }
        assert_eq!(history.get(0).unwrap().action, Action::Allow, "the latest stays the latest");
        banks.put("ncii", Signal::Md5, &md5(1), "c");
        let again = history.redecide(0, &banks.set, &BTreeSet::new(), Action::Review, "p").expect("re-added: block again");
        assert_eq!(again.verdict.action, Action::Block);
        assert_eq!(again.verdict.retro.unwrap().supersedes, written[1].event_id);
    }

    /// Retro has no pixels to confirm an allowlist PDQ match with the full image, so a match it
    /// finds on its own allows nothing: a block entry added later still blocks.
    #[test]
    fn an_allowlist_match_found_by_retro_does_not_override_a_block() {
        let mut banks = Banks::with(vec![BankSettings::new("good", Action::Allow), settings("csam")]);
        let mut history = History::new();
        let hash = pdq(77);
        history.take(verdict("e1", &md5(1), Some(hash)), 0, 0, 0).unwrap();
        let decide = |changes: &[BankChange], banks: &Banks, history: &mut History| {
            let r = history.redecide(0, &banks.set, &removed_of(changes), Action::Review, "p2").expect("a re-decision");
            history.record(0, &r.verdict);
            r.verdict
        };
        let changes = banks.put("good", Signal::Pdq, &hash.to_string(), "g-1");
        let v = decide(&changes, &banks, &mut history);
        assert!(v.reasons.iter().any(|r| matches!(r, Reason::HashMatch { unconfirmed: true, .. })), "{v:?}");
        assert_eq!(v.action, Action::Allow, "nothing to override");
        let changes = banks.put("csam", Signal::Pdq, &hash.to_string(), "c-1");
        let v = decide(&changes, &banks, &mut history);
        assert_eq!(v.action, Action::Block, "{v:?}");
    }

    /// A video's matches (vPDQ, and a frame's PDQ match) cannot be recomputed from what retro
    /// remembers either: they stay until their entry goes.
    #[test]
    fn a_video_s_matches_go_only_with_their_entries() {
        let banks = Banks::new(&["ncii"]);
        let mut history = History::new();
        let mut v = verdict("e1", &md5(1), None);
        v.action = Action::Block;
        let hit = |signal: &str, entry: &str, at: f64, pct: Option<f64>| Reason::HashMatch {
            bank: "ncii".into(),
            signal: signal.into(),
            entry: entry.into(),
            action: Action::Block,
            distance: None,
            quality: None,
            transform: None,
            quarantined: false,
            unconfirmed: false,
            at: Some(at),
            full_resolution: false,
            query_match_pct: pct,
            target_match_pct: pct,
            entry_at: pct.map(|_| 0.0),
        };
        v.reasons.push(hit("vpdq", "v-1", 0.0, Some(100.0)));
        v.reasons.push(hit("pdq", "p-1", 3.0, None));
        history.take(v, 0, 0, 0).unwrap();
        assert!(history.redecide(0, &banks.set, &BTreeSet::new(), Action::Review, "p").is_none(), "kept as it was");
        let removed: BTreeSet<EntryKey> = [("ncii".to_string(), "vpdq".to_string(), "v-1".to_string())].into_iter().collect();
        let still = history.redecide(0, &banks.set, &removed, Action::Review, "p").expect("the vPDQ match went");
        assert_eq!(still.verdict.action, Action::Block, "the frame's PDQ match still blocks: {:?}", still.verdict);
        assert_eq!(still.verdict.retro.as_ref().unwrap().changes.len(), 1);
    }

    /// With the still image's rotations and flips in the verdict (`signals.pdq_dihedral`), retro
    /// finds a dihedral bank's entry added later for a rotated copy, names the transform, and
    /// undoes it when the entry goes; a bank without `dihedral` ignores the rotations.
    #[test]
    fn an_entry_added_later_finds_rotated_uploads_in_dihedral_banks() {
        let mut banks = Banks::with(vec![BankSettings { dihedral: true, ..settings("ncii") }, settings("plain")]);
        let mut history = History::new();
        let rotations: Vec<PdqHash> = (0..7).map(|i| pdq(800 + i)).collect();
        let mut v = verdict("rotated", &md5(1), Some(pdq(799)));
        v.signals.pdq_dihedral = Some(rotations.iter().map(PdqHash::to_string).collect());
        history.take(v, 0, 0, 0).unwrap();

        let changes = banks.put("plain", Signal::Pdq, &rotations[0].to_string(), "plain-1");
        assert!(redecide_all(&mut history, &banks, &changes).is_empty(), "a bank without dihedral matching ignores rotations");
        let changes = banks.put("ncii", Signal::Pdq, &near(rotations[0], 4).to_string(), "rot-1");
        let out = redecide_all(&mut history, &banks, &changes);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].action, Action::Block);
        assert!(
            out[0].reasons.iter().any(|r| matches!(r, Reason::HashMatch { transform: Some(t), entry, .. } if t == "rotate90" && entry == "rot-1")),
            "{:?}",
            out[0]
        );
        let changes = banks.send(record_key("ncii", Signal::Pdq, &near(rotations[0], 4).to_string()), None);
        let out = redecide_all(&mut history, &banks, &changes);
        assert_eq!((out.len(), out[0].action), (1, Action::Allow), "{out:?}");
    }

    /// A dihedral match of a verdict without the rotations (which retro then cannot recompute)
    /// stays, unless its entry was withdrawn.
    #[test]
    fn a_dihedral_match_goes_only_with_its_entry() {
        let banks = Banks::new(&["ncii"]);
        let mut history = History::new();
        let mut v = verdict("e1", &md5(1), Some(pdq(5)));
        v.action = Action::Block;
        v.reasons.push(Reason::HashMatch {
            bank: "ncii".into(),
            signal: "pdq".into(),
            entry: "d-1".into(),
            action: Action::Block,
            distance: Some(3),
            quality: Some(90),
            transform: Some("rotate90".into()),
            quarantined: false,
            unconfirmed: false,
            at: None,
            full_resolution: false,
            query_match_pct: None,
            target_match_pct: None,
            entry_at: None,
        });
        history.take(v, 0, 0, 0).unwrap();
        assert!(history.redecide(0, &banks.set, &BTreeSet::new(), Action::Review, "p").is_none(), "kept as it was");
        let removed: BTreeSet<EntryKey> = [("ncii".to_string(), "pdq".to_string(), "d-1".to_string())].into_iter().collect();
        let undone = history.redecide(0, &banks.set, &removed, Action::Review, "p").expect("withdrawn: undone");
        assert_eq!(undone.verdict.action, Action::Allow);
    }

    /// Retro does not act on a quarantined entry; once released, it does.
    #[test]
    fn quarantined_entries_are_left_alone_until_released() {
        let mut banks = Banks::new(&["ncii"]);
        let mut history = History::new();
        history.take(verdict("e1", &md5(1), None), 0, 0, 0).unwrap();
        let quarantine = |status: &str| {
            let (key, value) =
                crate::admin::quarantine_record("ncii", &ParsedHash::Md5(crate::bank::hash_text::decode_hex::<16>(md5(1).as_bytes()).unwrap()), status, "t", None);
            let expected = if status == "released" { release_key("ncii", Signal::Md5, &md5(1)) } else { quarantine_key("ncii", Signal::Md5, &md5(1)) };
            assert_eq!(key, expected);
            (key, Some(value))
        };
        let (key, value) = quarantine("quarantined");
        let changes = banks.send(key, value);
        assert_eq!(changes[0].applied, Applied::Quarantined);
        let changes = banks.put("ncii", Signal::Md5, &md5(1), "c");
        assert!(redecide_all(&mut history, &banks, &changes).is_empty(), "a quarantined entry is not acted on");
        let (key, value) = quarantine("released");
        let changes = banks.send(key, value);
        assert_eq!(changes[0].applied, Applied::Released);
        let written = redecide_all(&mut history, &banks, &changes);
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].action, Action::Block);
    }

    #[test]
    fn uploads_leave_by_window_memory_and_partition_and_floors_follow() {
        let mut history = History::new();
        for i in 0..10i64 {
            history.take(verdict(&format!("a{i}"), &md5(i as u32), Some(pdq(i as u64))), 0, 100 + i, i * 1000).unwrap();
            history.take(verdict(&format!("b{i}"), &md5(50 + i as u32), None), 1, 200 + i, i * 1000 + 500).unwrap();
        }
        assert_eq!((history.floor(0), history.floor(1)), (Some(100), Some(200)));
        assert_eq!(history.evict(3_000, usize::MAX), (6, 0), "a0..a2 and b0..b2 are older than 3 s");
        assert_eq!((history.floor(0), history.floor(1)), (Some(103), Some(203)));
        assert_eq!(history.evict(0, 10), (0, 4), "the oldest across partitions go first");
        assert_eq!((history.floor(0), history.floor(1)), (Some(105), Some(205)));
        assert_eq!(history.drop_partition(1), 5);
        assert_eq!(history.len(), 5);
        // Freed slots are reused and forgotten hashes are not found.
        let banks = Banks::new(&["ncii"]);
        let change = BankChange { bank: "ncii".into(), hash: ParsedHash::Pdq(pdq(0)), applied: Applied::Added, old_entry: None, video_frames: None };
        assert!(history.candidates(&change, &settings("ncii")).is_empty());
        history.take(verdict("c", &md5(77), Some(pdq(0))), 0, 300, 9_999).unwrap();
        assert_eq!(history.candidates(&change, &settings("ncii")).len(), 1);
        drop(banks);
    }

    #[test]
    fn covers_compares_every_partition() {
        let state: BTreeMap<i32, i64> = [(0, 10), (1, 5)].into_iter().collect();
        assert!(covers(&state, &BTreeMap::new()), "bank files only: nothing to wait for");
        assert!(covers(&state, &parse_version("0:10,1:5")));
        assert!(covers(&state, &parse_version("0:3")));
        assert!(!covers(&state, &parse_version("0:11,1:5")));
        assert!(!covers(&state, &parse_version("2:1")));
        let mut merged = parse_version("0:3,1:9");
        merge_version(&mut merged, &parse_version("0:7,2:1"));
        assert_eq!(merged, parse_version("0:7,1:9,2:1"));
    }
}
