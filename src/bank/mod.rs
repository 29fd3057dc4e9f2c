//! Hash banks: entries from files and from the bank topic, matched by exact hash or PDQ distance.
//!
//! A bank is a named list of known hashes with one action (block, review, or allow for
//! allowlists), holding one entry per hash. Its settings come from config; its entries from its
//! file (seed), from the bank topic's records ([`record`]), or both. The [`BankSet`] is shared by
//! every screening thread and changed in place as records arrive: the exact maps and the PDQ
//! index add and remove entries without a rebuild. Bank contents are sensitive: hashes are never
//! logged, and entry ids only appear in verdicts. Every reader of hash text (bank files, the
//! import formats, topic records, withdrawals) validates it through [`hash_text`].

pub mod file;
pub mod flood;
pub mod formats;
pub mod hash_text;
pub mod pdq_index;
pub mod record;
pub mod video;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use crate::config::BankSettings;
use crate::event::Action;
use crate::hash::exact::ExactHashes;
use crate::hash::pdq::PdqHash;
use crate::metrics::Metrics;
use crate::hash::vpdq::VpdqFeature;
use pdq_index::PdqIndex;
use record::{BankUpdate, Change, Rejection};
use video::{VideoEntry, VideoIndex};

pub use file::{load_bank_bytes, load_bank_file, BankFileError, LoadReport};

/// Maps keyed by hashes: aHash (keyed per process, so crafted keys cannot force collisions) is
/// several times faster than the standard SipHash on 16–32-byte keys, and start-up inserts millions.
type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// Which hash of the media an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    Md5,
    Sha256,
    Pdq,
    /// A video's vPDQ features; the entry's hash is the digest of its signal string.
    Vpdq,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Md5 => "md5",
            Signal::Sha256 => "sha256",
            Signal::Pdq => "pdq",
            Signal::Vpdq => "vpdq",
        }
    }

    pub fn parse(s: &str) -> Option<Signal> {
        match s.trim().to_ascii_lowercase().as_str() {
            "md5" => Some(Signal::Md5),
            "sha256" => Some(Signal::Sha256),
            "pdq" => Some(Signal::Pdq),
            "vpdq" => Some(Signal::Vpdq),
            _ => None,
        }
    }
}

/// One bank hit, before policy.
#[derive(Debug, Clone, PartialEq)]
pub struct BankMatch {
    pub bank: String,
    pub action: Action,
    pub signal: Signal,
    pub entry: String,
    /// PDQ only: Hamming distance and the upload's quality.
    pub distance: Option<u32>,
    pub quality: Option<u8>,
    /// PDQ dihedral matches: which transform of the upload matched.
    pub transform: Option<&'static str>,
    /// The entry's hash: kept inside the service (flood counting, retro), never in a verdict.
    pub hash: ParsedHash,
    /// The entry's quarantine status, if it has one.
    pub status: Option<EntryStatus>,
    /// An allowlist PDQ match the other PDQ convention did not confirm (see
    /// `Screen::confirm_allowlist`): reported, but it allows nothing.
    pub unconfirmed: bool,
    /// Video and animation frames: the timestamp of the upload's frame that matched.
    pub at: Option<f64>,
    /// Matched on the full-resolution hash of a picture whose PDQ sample disagreed with it.
    pub full_resolution: bool,
    /// vPDQ matches: how much of each video matched the other.
    pub vpdq: Option<VpdqMatch>,
}

/// The shares of a vPDQ match (percent) and the bank video's first matched frame (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VpdqMatch {
    pub query_pct: f64,
    pub target_pct: f64,
    pub entry_at: f64,
}

impl BankMatch {
    /// The entry flooded: this match is a reason for review, not its bank's action.
    pub fn quarantined(&self) -> bool {
        self.status == Some(EntryStatus::Quarantined)
    }
}

/// An upload too low in PDQ quality for a bank's floor: reported, never silently dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct LowQuality {
    pub bank: String,
    /// PDQ (an image, a frame) or vPDQ (no frame of a video at the floor).
    pub signal: Signal,
    pub quality: u8,
    pub floor: u8,
}

/// The PDQ hashes of an upload: the original, plus its 8 dihedral variants when any bank asks.
#[derive(Debug, Clone)]
pub struct PdqSignal {
    pub hash: PdqHash,
    pub quality: u8,
    /// In the reference order: original, rotate90, rotate180, rotate270, flipX, flipY, flipPlus1, flipMinus1.
    pub dihedral: Option<[PdqHash; 8]>,
    /// A video or animation frame's timestamp (seconds), named in the reasons it matches.
    pub at: Option<f64>,
    /// The full-resolution hash of a picture whose 512×512 sample disagreed with it (an
    /// image-scaling attack): what viewers see, matched against every bank.
    pub full_resolution: bool,
}

impl PdqSignal {
    pub fn new(hash: PdqHash, quality: u8) -> Self {
        Self { hash, quality, dihedral: None, at: None, full_resolution: false }
    }

    /// As a verdict's `signals.more_pdq` carries it: `HEX,QUALITY,AT` (AT in seconds with three
    /// decimals, `-` for the still image), `,full` after it for a full-resolution hash.
    pub fn to_item(&self) -> String {
        let at = self.at.map_or_else(|| "-".to_string(), |t| format!("{t:.3}"));
        let full = if self.full_resolution { ",full" } else { "" };
        format!("{},{},{at}{full}", self.hash, self.quality)
    }

    /// Reads [`PdqSignal::to_item`]'s form back; errors name the problem, never the value.
    pub fn parse_item(item: &str) -> Result<Self, String> {
        let mut parts = item.split(',');
        let hash = parts.next().unwrap_or_default().parse::<PdqHash>().map_err(|_| "not a PDQ hash".to_string())?;
        let quality = parts.next().and_then(|q| q.parse::<u8>().ok()).filter(|&q| q <= 100).ok_or("quality must be 0 to 100")?;
        let at = match parts.next() {
            Some("-") => None,
            Some(t) => Some(t.parse::<f64>().ok().filter(|t| t.is_finite() && *t >= 0.0).ok_or("time must be seconds or -")?),
            None => return Err("missing time".into()),
        };
        let full_resolution = match parts.next() {
            None => false,
            Some("full") => true,
            Some(_) => return Err("unknown marker".into()),
        };
        if parts.next().is_some() {
            return Err("too many fields".into());
        }
        Ok(Self { hash, quality, dihedral: None, at, full_resolution })
    }
}

/// Most entries of a verdict's `signals.more_pdq`; an upload with more distinct pictures keeps
/// the first ones, and retro then only adds matches on those pictures.
pub const MAX_MORE_PDQ_IN_VERDICT: usize = 1024;

/// Most PDQ matches one bank reports for one upload (the closest ones).
pub const MAX_PDQ_MATCHES_PER_BANK: usize = 16;

pub const DIHEDRAL_NAMES: [&str; 8] =
    ["original", "rotate90", "rotate180", "rotate270", "flip_x", "flip_y", "flip_plus1", "flip_minus1"];

/// What one change did to a bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Applied {
    Added,
    /// The hash was there under another entry id; the new id replaces it.
    Replaced,
    /// The same hash and entry id again (a re-import, or a re-read of the topic).
    Unchanged,
    Withdrawn,
    /// A withdrawal of a hash the bank does not hold.
    Absent,
    /// The hash was quarantined (it need not be in the bank: the status waits for it).
    Quarantined,
    /// A quarantine lifted, by a person or by clearing the status.
    Released,
}

impl Applied {
    const COUNT: usize = 7;
    const ALL: [Applied; Applied::COUNT] = [
        Applied::Added,
        Applied::Replaced,
        Applied::Unchanged,
        Applied::Withdrawn,
        Applied::Absent,
        Applied::Quarantined,
        Applied::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Added => "added",
            Applied::Replaced => "replaced",
            Applied::Unchanged => "unchanged",
            Applied::Withdrawn => "withdrawn",
            Applied::Absent => "absent",
            Applied::Quarantined => "quarantined",
            Applied::Released => "released",
        }
    }
}

#[derive(Debug)]
pub struct Bank {
    pub settings: BankSettings,
    md5: FastMap<[u8; 16], u32>,
    sha256: FastMap<[u8; 32], u32>,
    pdq: PdqIndex,
    /// PDQ hash → id while a bulk load defers the index (the index finds them afterwards).
    pdq_staging: Option<Staging>,
    /// vPDQ entries: digest → id, and the videos' frames indexed.
    vpdq: FastMap<[u8; 32], u32>,
    videos: VideoIndex,
    /// Entry ids by internal id; `None` for a freed id. Ids are reused, so the index's flat
    /// id → slot map stays as small as the bank.
    entries: Vec<Option<Box<str>>>,
    free: Vec<u32>,
    /// Hashes quarantined, and hashes a person released (which wins): see `record`.
    quarantined: HashSet<ParsedHash, ahash::RandomState>,
    released: HashSet<ParsedHash, ahash::RandomState>,
}

/// An entry's quarantine status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStatus {
    /// Its matches give review.
    Quarantined,
    /// A person released it: it matches as usual and is never quarantined automatically again.
    Released,
}

/// PDQ hash → id during a bulk load, keyed by the hash's first 64 bits (a 16-byte bucket instead
/// of 40: a 10M-entry load probes this map at random, so its size is its speed). The index holds
/// the whole hash, so a hit is checked against it; the rare hashes whose first 64 bits an earlier
/// one already took live in a small map of their own.
#[derive(Debug, Default)]
struct Staging {
    by_prefix: FastMap<u64, u32>,
    others: FastMap<PdqHash, u32>,
}

impl Staging {
    fn prefix(h: &PdqHash) -> u64 {
        h.words()[0]
    }

    fn get(&self, h: &PdqHash, index: &PdqIndex) -> Option<u32> {
        match self.by_prefix.get(&Self::prefix(h)) {
            Some(&id) if index.hash_of(id) == Some(*h) => Some(id),
            _ => self.others.get(h).copied(),
        }
    }

    /// The id holding `h`, or `None` after recording it under `id` (which the caller then
    /// inserts into the index).
    fn find_or_insert(&mut self, h: PdqHash, id: u32, index: &PdqIndex) -> Option<u32> {
        if let Some(&found) = self.others.get(&h) {
            return Some(found);
        }
        match self.by_prefix.entry(Self::prefix(&h)) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(id);
                None
            }
            std::collections::hash_map::Entry::Occupied(slot) if index.hash_of(*slot.get()) == Some(h) => Some(*slot.get()),
            std::collections::hash_map::Entry::Occupied(_) => {
                self.others.insert(h, id);
                None
            }
        }
    }

    /// Forgets `h`, held under `id` (ids are one hash's each, so the prefix map holding `id`
    /// means it holds `h`).
    fn remove(&mut self, h: &PdqHash, id: u32) {
        let prefix = Self::prefix(h);
        if self.by_prefix.get(&prefix) == Some(&id) {
            self.by_prefix.remove(&prefix);
        } else {
            self.others.remove(h);
        }
    }
}

impl Bank {
    pub fn new(settings: BankSettings) -> Self {
        Self {
            settings,
            md5: FastMap::default(),
            sha256: FastMap::default(),
            pdq: PdqIndex::new(),
            pdq_staging: None,
            vpdq: FastMap::default(),
            videos: VideoIndex::default(),
            entries: Vec::new(),
            free: Vec::new(),
            quarantined: HashSet::default(),
            released: HashSet::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    fn id_of(&self, hash: &ParsedHash) -> Option<u32> {
        match hash {
            ParsedHash::Md5(h) => self.md5.get(h).copied(),
            ParsedHash::Sha256(h) => self.sha256.get(h).copied(),
            ParsedHash::Pdq(h) => match &self.pdq_staging {
                Some(staging) => staging.get(h, &self.pdq),
                None => self.pdq.find(h),
            },
            ParsedHash::Vpdq(d) => self.vpdq.get(d).copied(),
        }
    }

    /// Adds an entry, or gives the hash's entry a new id. `hash` must already be validated
    /// (see `hash_text::parse_hash`); a vPDQ entry comes with its video. Fails only when a PDQ index
    /// is at its capacity, or a vPDQ hash comes without its video.
    pub fn upsert(&mut self, hash: &ParsedHash, entry: &str, video: Option<&VideoEntry>) -> Result<Applied, pdq_index::IndexError> {
        if let (ParsedHash::Pdq(h), Some(_)) = (hash, &self.pdq_staging) {
            return self.upsert_staged(*h, entry);
        }
        if let Some(id) = self.id_of(hash) {
            let slot = &mut self.entries[id as usize];
            if slot.as_deref() == Some(entry) {
                return Ok(Applied::Unchanged);
            }
            *slot = Some(entry.into());
            return Ok(Applied::Replaced);
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => u32::try_from(self.entries.len()).map_err(|_| pdq_index::IndexError::Full)?,
        };
        let inserted = match hash {
            ParsedHash::Md5(h) => {
                self.md5.insert(*h, id);
                Ok(())
            }
            ParsedHash::Sha256(h) => {
                self.sha256.insert(*h, id);
                Ok(())
            }
            ParsedHash::Pdq(h) => self.pdq.try_insert(id, *h),
            ParsedHash::Vpdq(d) => match video {
                Some(video) => self.videos.insert(id, video, self.settings.pdq_quality_floor).map(|()| {
                    self.vpdq.insert(*d, id);
                }),
                // Every decoder attaches the video to a vPDQ upsert (see `record::decode`,
                // `file::load_bank_bytes`); without its frames there is nothing to index.
                None => Err(pdq_index::IndexError::Full),
            },
        };
        if let Err(e) = inserted {
            self.free.push(id);
            return Err(e);
        }
        self.set_entry(id, entry);
        Ok(Applied::Added)
    }

    /// [`Bank::upsert`] of a PDQ hash during a bulk load: one probe of the staging map finds the
    /// hash's id or takes its place (start-up inserts millions; this map was a fifth of it).
    fn upsert_staged(&mut self, h: PdqHash, entry: &str) -> Result<Applied, pdq_index::IndexError> {
        let Self { pdq_staging: Some(staging), pdq, entries, free, .. } = self else { unreachable!("checked by the caller") };
        let next = match free.last() {
            Some(&id) => id,
            None => u32::try_from(entries.len()).map_err(|_| pdq_index::IndexError::Full)?,
        };
        match staging.find_or_insert(h, next, pdq) {
            Some(id) => {
                let slot = &mut entries[id as usize];
                if slot.as_deref() == Some(entry) {
                    return Ok(Applied::Unchanged);
                }
                *slot = Some(entry.into());
                Ok(Applied::Replaced)
            }
            None => {
                if let Err(e) = pdq.try_insert(next, h) {
                    staging.remove(&h, next);
                    return Err(e);
                }
                if free.last() == Some(&next) {
                    free.pop();
                }
                self.set_entry(next, entry);
                Ok(Applied::Added)
            }
        }
    }

    fn set_entry(&mut self, id: u32, entry: &str) {
        match self.entries.get_mut(id as usize) {
            Some(slot) => *slot = Some(entry.into()),
            None => self.entries.push(Some(entry.into())),
        }
    }

    pub fn withdraw(&mut self, hash: &ParsedHash) -> Applied {
        let Some(id) = self.id_of(hash) else { return Applied::Absent };
        match hash {
            ParsedHash::Md5(h) => {
                self.md5.remove(h);
            }
            ParsedHash::Sha256(h) => {
                self.sha256.remove(h);
            }
            ParsedHash::Pdq(h) => {
                if let Some(staging) = &mut self.pdq_staging {
                    staging.remove(h, id);
                }
                self.pdq.remove(id);
            }
            ParsedHash::Vpdq(d) => {
                self.vpdq.remove(d);
                self.videos.remove(id);
            }
        }
        self.entries[id as usize] = None;
        self.free.push(id);
        Applied::Withdrawn
    }

    /// The entry id a hash has now.
    pub fn entry_of(&self, hash: &ParsedHash) -> Option<&str> {
        self.id_of(hash).and_then(|id| self.entries[id as usize].as_deref())
    }

    /// A hash's status: a release wins over a quarantine.
    pub fn status_of(&self, hash: &ParsedHash) -> Option<EntryStatus> {
        if self.released.contains(hash) {
            Some(EntryStatus::Released)
        } else if self.quarantined.contains(hash) {
            Some(EntryStatus::Quarantined)
        } else {
            None
        }
    }

    /// Applies a status change: Quarantined or Released when it changed whether the hash's
    /// matches are quarantined, else Unchanged.
    fn change_status(&mut self, hash: &ParsedHash, change: &Change<'_>) -> Applied {
        let was = self.status_of(hash) == Some(EntryStatus::Quarantined);
        match change {
            Change::Quarantine => self.quarantined.insert(*hash),
            Change::ClearQuarantine => self.quarantined.remove(hash),
            Change::Release => self.released.insert(*hash),
            Change::ClearRelease => self.released.remove(hash),
            Change::Upsert { .. } | Change::Withdraw => false,
        };
        match (was, self.status_of(hash) == Some(EntryStatus::Quarantined)) {
            (false, true) => Applied::Quarantined,
            (true, false) => Applied::Released,
            _ => Applied::Unchanged,
        }
    }

    pub fn quarantined_count(&self) -> usize {
        self.quarantined.iter().filter(|h| !self.released.contains(*h)).count()
    }

    pub fn count(&self, signal: Signal) -> usize {
        match signal {
            Signal::Md5 => self.md5.len(),
            Signal::Sha256 => self.sha256.len(),
            Signal::Pdq => self.pdq.len(),
            Signal::Vpdq => self.videos.len(),
        }
    }

    /// Many changes ahead (start-up): stop maintaining the PDQ index until [`Bank::end_bulk`].
    fn begin_bulk(&mut self) {
        if self.pdq_staging.is_none() {
            let mut staging = Staging::default();
            for (id, h) in self.pdq.iter() {
                staging.find_or_insert(h, id, &self.pdq);
            }
            self.pdq_staging = Some(staging);
            self.pdq.defer_index();
        }
    }

    fn end_bulk(&mut self) {
        if self.pdq_staging.take().is_some() {
            self.pdq.build_index();
        }
    }

    /// Every live entry: (signal, lowercase hex hash, entry id); a vPDQ entry's "hash" is its
    /// canonical signal string, which imports read back.
    pub fn entries(&self) -> Vec<(Signal, String, &str)> {
        let name = |id: u32| self.entries[id as usize].as_deref().unwrap_or_default();
        let mut out: Vec<(Signal, String, &str)> = Vec::with_capacity(self.md5.len() + self.sha256.len() + self.pdq.len());
        out.extend(self.md5.iter().map(|(h, &id)| (Signal::Md5, hex::encode(h), name(id))));
        out.extend(self.sha256.iter().map(|(h, &id)| (Signal::Sha256, hex::encode(h), name(id))));
        out.extend(self.pdq.iter().map(|(id, h)| (Signal::Pdq, h.to_string(), name(id))));
        out.extend(self.videos.ids().filter_map(|id| {
            let frames = self.videos.frames_of(id)?;
            Some((Signal::Vpdq, video::canonical_signal_string(frames), name(id)))
        }));
        out.sort_unstable();
        out
    }

    fn hit(&self, hash: ParsedHash, id: u32) -> BankMatch {
        BankMatch {
            bank: self.settings.name.clone(),
            action: self.settings.action,
            signal: hash.signal(),
            entry: self.entries[id as usize].as_deref().unwrap_or_default().to_string(),
            distance: None,
            quality: None,
            transform: None,
            status: self.status_of(&hash),
            hash,
            unconfirmed: false,
            at: None,
            full_resolution: false,
            vpdq: None,
        }
    }

    pub fn match_exact(&self, hashes: &ExactHashes, out: &mut Vec<BankMatch>) {
        if let Some(h) = hash_text::decode_hex::<16>(hashes.md5.as_bytes()) {
            if let Some(&id) = self.md5.get(&h) {
                out.push(self.hit(ParsedHash::Md5(h), id));
            }
        }
        if let Some(h) = hash_text::decode_hex::<32>(hashes.sha256.as_bytes()) {
            if let Some(&id) = self.sha256.get(&h) {
                out.push(self.hit(ParsedHash::Sha256(h), id));
            }
        }
    }

    /// The bank videos an upload's vPDQ features match (see [`video`] for the rule); an upload
    /// with no frame at the quality floor is reported low quality.
    pub fn match_vpdq(&self, features: &[VpdqFeature], out: &mut Vec<BankMatch>, low: &mut Vec<LowQuality>) {
        if features.is_empty() || self.videos.is_empty() {
            return;
        }
        let floor = self.settings.pdq_quality_floor;
        let upload = video::usable(features, |f| f.hash, |f| f.quality, floor);
        if upload.is_empty() {
            let quality = features.iter().map(|f| f.quality).max().unwrap_or(0);
            low.push(LowQuality { bank: self.settings.name.clone(), signal: Signal::Vpdq, quality, floor });
            return;
        }
        let s = &self.settings;
        let hits = self.videos.query(&upload, s.pdq_threshold, s.vpdq_query_match_pct, s.vpdq_target_match_pct);
        for hit in hits.into_iter().take(MAX_PDQ_MATCHES_PER_BANK) {
            let mut m = self.hit(ParsedHash::Vpdq(hit.digest), hit.video);
            m.at = Some(hit.at);
            m.vpdq = Some(VpdqMatch { query_pct: hit.query_pct, target_pct: hit.target_pct, entry_at: hit.entry_at });
            out.push(m);
        }
    }

    /// PDQ matches within the bank's threshold; below the quality floor no match is attempted.
    pub fn match_pdq(&self, pdq: &PdqSignal, out: &mut Vec<BankMatch>, low: &mut Vec<LowQuality>) {
        if self.pdq.is_empty() {
            return;
        }
        if pdq.quality < self.settings.pdq_quality_floor {
            low.push(LowQuality {
                bank: self.settings.name.clone(),
                signal: Signal::Pdq,
                quality: pdq.quality,
                floor: self.settings.pdq_quality_floor,
            });
            return;
        }
        let threshold = self.settings.pdq_threshold;
        // Best distance per entry: a symmetric image can match an entry under several transforms.
        let mut best: HashMap<u32, (u32, &'static str)> = HashMap::new();
        let variants: Vec<(&PdqHash, &'static str)> = match (&pdq.dihedral, self.settings.dihedral) {
            (Some(all), true) => all.iter().zip(DIHEDRAL_NAMES).collect(),
            _ => vec![(&pdq.hash, DIHEDRAL_NAMES[0])],
        };
        for (hash, transform) in variants {
            for (id, distance) in self.pdq.query(hash, threshold) {
                let slot = best.entry(id).or_insert((distance, transform));
                if distance < slot.0 {
                    *slot = (distance, transform);
                }
            }
        }
        let mut hits: Vec<_> = best.into_iter().collect();
        hits.sort_by_key(|(id, (distance, _))| (*distance, *id));
        // The closest few are reason enough; a bank of near-duplicate entries must not make one
        // upload's verdict too large for its topic.
        for (id, (distance, transform)) in hits.into_iter().take(MAX_PDQ_MATCHES_PER_BANK) {
            let Some(hash) = self.pdq.hash_of(id) else { continue };
            let mut m = self.hit(ParsedHash::Pdq(hash), id);
            m.distance = Some(distance);
            m.quality = Some(pdq.quality);
            m.transform = (transform != DIHEDRAL_NAMES[0]).then_some(transform);
            m.at = pdq.at;
            m.full_resolution = pdq.full_resolution;
            out.push(m);
        }
    }
}

/// A validated hash from a bank file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParsedHash {
    Md5([u8; 16]),
    Sha256([u8; 32]),
    Pdq(PdqHash),
    /// The SHA-256 of a video's canonical vPDQ signal string (see [`video`]).
    Vpdq([u8; 32]),
}

impl ParsedHash {
    pub fn signal(&self) -> Signal {
        match self {
            ParsedHash::Md5(_) => Signal::Md5,
            ParsedHash::Sha256(_) => Signal::Sha256,
            ParsedHash::Pdq(_) => Signal::Pdq,
            ParsedHash::Vpdq(_) => Signal::Vpdq,
        }
    }

    /// Lowercase hex, as in the bank topic's keys.
    pub fn to_hex(&self) -> String {
        match self {
            ParsedHash::Md5(h) => hex::encode(h),
            ParsedHash::Sha256(h) => hex::encode(h),
            ParsedHash::Pdq(h) => h.to_string(),
            ParsedHash::Vpdq(d) => hex::encode(d),
        }
    }
}


/// One record of the bank topic, as the Kafka side hands it over (no Kafka types here).
#[derive(Debug, Clone, Copy)]
pub struct TopicRecord<'a> {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (ms since the epoch), for the update-lag metric.
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    /// `None`: a tombstone.
    pub value: Option<&'a [u8]>,
}

/// What the banks found for one upload.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    pub matches: Vec<BankMatch>,
    pub low_quality: Vec<LowQuality>,
    /// The bank state that decided them (see [`BankSet::version`]); `None` without a bank topic.
    pub version: Option<String>,
}

/// Counts of one [`BankSet::apply`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub replaced: usize,
    pub unchanged: usize,
    pub withdrawn: usize,
    pub absent: usize,
    pub rejected: usize,
}

/// Every configured bank, shared by the screening threads and updated in place by the bank feed.
///
/// One lock for all banks and the topic positions, so a verdict's `banks_version` names exactly
/// the state its matches came from. Readers hold it for one upload's lookups (well under a
/// millisecond per bank); the feed holds it to apply one batch of records.
#[derive(Debug, Default)]
pub struct BankSet {
    state: RwLock<BankState>,
}

#[derive(Debug, Default)]
struct BankState {
    banks: Vec<Bank>,
    /// Bank topic: the next offset to apply, per partition.
    positions: BTreeMap<i32, i64>,
    /// (bank, reason) pairs already logged: each is logged once, then only counted.
    logged: HashSet<(String, &'static str)>,
    /// Live changes not yet taken, when someone asked for them (the retro role).
    journal: Option<Vec<BankChange>>,
}

/// One change the bank feed applied after start-up, for the retro role (see
/// [`BankSet::record_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankChange {
    pub bank: String,
    pub hash: ParsedHash,
    /// Added, Replaced, Withdrawn, Quarantined or Released.
    pub applied: Applied,
    /// The entry id the hash had before (replaced or withdrawn).
    pub old_entry: Option<String>,
    /// A vPDQ entry that now applies (added, replaced, released): its usable frames, which
    /// retro looks for among the frames of the videos it remembers.
    pub video_frames: Option<Box<[PdqHash]>>,
}

impl BankSet {
    pub fn new(banks: Vec<Bank>) -> Self {
        Self { state: RwLock::new(BankState { banks, ..Default::default() }) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BankState> {
        // A panic while holding the lock leaves the banks as they were between two records.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BankState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads every configured bank's file (a bank without one starts empty); the first bad
    /// file stops the load (unless the bank skips bad rows).
    pub fn load(settings: &[BankSettings], metrics: &Metrics) -> Result<Self, BankFileError> {
        let loaded = settings.iter().map(load_bank_file).collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_loaded(loaded, metrics))
    }

    /// Assembles loaded banks and publishes their sizes.
    pub fn from_loaded(loaded: Vec<(Bank, LoadReport)>, metrics: &Metrics) -> Self {
        let mut banks = Vec::with_capacity(loaded.len());
        for (bank, report) in loaded {
            let name = bank.name().to_string();
            metrics.bank_rows_skipped.with_label_values(&[&name]).inc_by(report.skipped as u64);
            if report.skipped > 0 {
                tracing::warn!(bank = %name, skipped = report.skipped, "bad bank rows skipped");
            }
            if !bank.settings.file.is_empty() {
                tracing::info!(bank = %name, md5 = report.md5, sha256 = report.sha256, pdq = report.pdq, "bank file loaded");
            }
            banks.push(bank);
        }
        let set = Self::new(banks);
        set.publish_sizes(&set.read(), metrics, true);
        set
    }

    pub fn settings(&self) -> Vec<BankSettings> {
        self.read().banks.iter().map(|b| b.settings.clone()).collect()
    }

    /// Whether uploads need their 8 dihedral PDQ hashes: some bank matches rotations and flips.
    /// Decided by settings, not contents: a bank empty now may receive entries any moment.
    pub fn any_dihedral(&self) -> bool {
        self.read().banks.iter().any(|b| b.settings.dihedral)
    }

    /// Every bank's matches for one upload, and the bank state they came from. `pdq` holds one
    /// hash per picture the upload shows: the still image, then any animation frames screened (a
    /// video's sampled frames); `vpdq`, a video's features, for the vPDQ entries.
    ///
    /// A block or review bank matches the upload when it matches any picture (closest matches
    /// first, at most [`MAX_PDQ_MATCHES_PER_BANK`]); an allowlist's PDQ matches count only when
    /// it matches every picture, so a known-good default image cannot vouch for banned frames.
    /// Exact hashes cover the file's bytes, and so everything it shows.
    pub fn match_media(&self, exact: &ExactHashes, pdq: &[PdqSignal], vpdq: &[VpdqFeature]) -> Findings {
        let state = self.read();
        let mut findings = Findings { version: version_of(&state.positions), ..Default::default() };
        for bank in &state.banks {
            bank.match_exact(exact, &mut findings.matches);
            let mut low = Vec::new();
            bank.match_vpdq(vpdq, &mut findings.matches, &mut low);
            findings.low_quality.extend(low);
        }
        for bank in &state.banks {
            let mut per_picture = Vec::with_capacity(pdq.len());
            let mut low = Vec::new();
            for signal in pdq {
                let mut matches = Vec::new();
                bank.match_pdq(signal, &mut matches, &mut low);
                per_picture.push(matches);
            }
            // A video's dark or flat frames are ordinary: it is reported only when no frame
            // reached the floor.
            let reported = vpdq.is_empty() || low.len() == pdq.len();
            if let Some(lowest) = low.into_iter().min_by_key(|l| l.quality).filter(|_| reported) {
                findings.low_quality.push(lowest);
            }
            if per_picture.len() <= 1 {
                findings.matches.extend(per_picture.into_iter().flatten());
                continue;
            }
            if bank.settings.action == Action::Allow {
                // An allowlist vouches for an upload when it matches every picture shown. A
                // full-resolution hash is not one more picture: it is the check on a suspect
                // sample, which `Screen::confirm_allowlist` and the policy weigh.
                let mut shown = per_picture.into_iter().zip(pdq).filter(|(_, signal)| !signal.full_resolution).map(|(m, _)| m);
                let first = shown.next().unwrap_or_default();
                if !first.is_empty() && shown.all(|m| !m.is_empty()) {
                    findings.matches.extend(first);
                }
                continue;
            }
            let mut closest: HashMap<ParsedHash, BankMatch> = HashMap::new();
            for m in per_picture.into_iter().flatten() {
                match closest.get(&m.hash) {
                    Some(seen) if seen.distance <= m.distance => {}
                    _ => {
                        closest.insert(m.hash, m);
                    }
                }
            }
            let mut merged: Vec<BankMatch> = closest.into_values().collect();
            merged.sort_by(|a, b| (a.distance, &a.entry).cmp(&(b.distance, &b.entry)));
            merged.truncate(MAX_PDQ_MATCHES_PER_BANK);
            findings.matches.extend(merged);
        }
        findings
    }

    /// The bank topic position this state reflects: `PARTITION:NEXT_OFFSET` per partition, comma
    /// separated (e.g. `0:1235,1:88`). A record at partition p, offset o was applied iff the
    /// version's next offset for p is greater than o. `None` when no bank topic is read.
    pub fn version(&self) -> Option<String> {
        version_of(&self.read().positions)
    }

    /// Entry counts per bank: (name, action, md5, sha256, pdq, vpdq).
    pub fn counts(&self) -> Vec<(String, Action, usize, usize, usize, usize)> {
        self.read()
            .banks
            .iter()
            .map(|b| {
                let n = |signal| b.count(signal);
                (b.name().to_string(), b.settings.action, n(Signal::Md5), n(Signal::Sha256), n(Signal::Pdq), n(Signal::Vpdq))
            })
            .collect()
    }

    /// One bank's live entries (signal, lowercase hex, entry id), sorted; `None` for an unknown bank.
    pub fn entries_of(&self, bank: &str) -> Option<Vec<(Signal, String, String)>> {
        let state = self.read();
        let bank = state.banks.iter().find(|b| b.name() == bank)?;
        Some(bank.entries().into_iter().map(|(s, h, e)| (s, h, e.to_string())).collect())
    }

    /// From now on, remember each change a live apply makes, for [`BankSet::take_changes`].
    pub fn record_changes(&self) {
        self.write().journal.get_or_insert_with(Vec::new);
    }

    /// The changes applied since the last call (none unless [`BankSet::record_changes`] was called).
    pub fn take_changes(&self) -> Vec<BankChange> {
        self.write().journal.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The quarantine status of one bank's hash (`None` also for an unknown bank).
    pub fn status_of(&self, bank: &str, hash: &ParsedHash) -> Option<EntryStatus> {
        self.read().banks.iter().find(|b| b.name() == bank)?.status_of(hash)
    }

    /// The bank state's position as a map (partition → next offset): see [`BankSet::version`].
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        self.read().positions.clone()
    }

    /// Before reading the whole topic: defer the PDQ indexes (built once by [`BankSet::end_bulk`]).
    pub fn begin_bulk(&self) {
        for bank in &mut self.write().banks {
            bank.begin_bulk();
        }
    }

    /// Builds the deferred PDQ indexes; `positions` are where the topic was read up to (every
    /// partition, empty ones too), so that verdicts name the state from their first one.
    pub fn end_bulk(&self, positions: &BTreeMap<i32, i64>, metrics: &Metrics) {
        let mut state = self.write();
        for bank in &mut state.banks {
            bank.end_bulk();
        }
        for (&partition, &next) in positions {
            let position = state.positions.entry(partition).or_insert(next);
            *position = (*position).max(next);
        }
        self.publish_sizes(&state, metrics, true);
    }

    /// Applies bank topic records in order. Bad records are rejected, counted
    /// (`perisai_bank_records_rejected_total`) and logged once per bank and reason, never with the
    /// hash; the others apply regardless. `live`: records arriving after start-up, whose lag from
    /// their timestamp is measured.
    pub fn apply(&self, records: &[TopicRecord<'_>], metrics: &Metrics, live: bool) -> ApplyReport {
        let mut report = ApplyReport::default();
        if records.is_empty() {
            return report;
        }
        // Decoding (JSON, hex) is most of the work and needs no lock: done first, on two threads
        // for large batches (start-up), so readers wait only for the inserts.
        let decoded = decode_all(records);
        let mut state = self.write();
        let state = &mut *state;
        // Counted per batch, published once after it: start-up applies millions of records.
        let mut changes: Vec<[u64; Applied::COUNT]> = vec![[0; Applied::COUNT]; state.banks.len()];
        let mut rejections: HashMap<(String, &'static str), u64> = HashMap::new();
        let mut last_offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let journal = if live { state.journal.as_mut() } else { None };
        let mut journal = journal;
        for (r, update) in records.iter().zip(decoded) {
            match update.and_then(|update| apply_one(&mut state.banks, &update, journal.as_deref_mut())) {
                Ok((bank, applied)) => changes[bank][applied as usize] += 1,
                Err(rejection) => {
                    report.rejected += 1;
                    // Only declared banks label the metric: a flood of made-up names must not
                    // create unbounded label values.
                    let declared = r.key.and_then(record::bank_of_key).filter(|b| state.banks.iter().any(|x| x.name() == *b));
                    let label = declared.unwrap_or("-").to_string();
                    if state.logged.insert((label.clone(), rejection.reason())) {
                        tracing::warn!(bank = %label, reason = rejection.reason(), partition = r.partition, offset = r.offset,
                            error = %rejection, "bank record rejected (further ones for this bank and reason are only counted)");
                    }
                    *rejections.entry((label, rejection.reason())).or_default() += 1;
                }
            }
            let next = state.positions.entry(r.partition).or_insert(0);
            *next = (*next).max(r.offset + 1);
            last_offsets.insert(r.partition, r.offset);
        }
        let total = |applied: Applied| changes.iter().map(|c| c[applied as usize] as usize).sum();
        report.added = total(Applied::Added);
        report.replaced = total(Applied::Replaced);
        report.unchanged = total(Applied::Unchanged);
        report.withdrawn = total(Applied::Withdrawn);
        report.absent = total(Applied::Absent);
        let now_ms = chrono::Utc::now().timestamp_millis();
        if live {
            for ts in records.iter().filter_map(|r| r.timestamp_ms) {
                metrics.bank_update_lag_seconds.observe((now_ms - ts).max(0) as f64 / 1000.0);
            }
        }
        for (partition, offset) in last_offsets {
            metrics.bank_topic_offset.with_label_values(&[&partition.to_string()]).set(offset);
        }
        for ((label, reason), n) in rejections {
            metrics.bank_records_rejected.with_label_values(&[&label, reason]).inc_by(n);
        }
        let mut changed = false;
        for (bank, counts) in changes.iter().enumerate().filter(|(_, c)| c.iter().any(|&n| n > 0)) {
            let name = state.banks[bank].name();
            for (applied, &n) in Applied::ALL.iter().zip(counts).filter(|(_, &n)| n > 0) {
                metrics.bank_updates.with_label_values(&[name, applied.as_str()]).inc_by(n);
            }
            metrics.bank_loaded_seconds.with_label_values(&[name]).set(now_ms / 1000);
            changed = true;
        }
        if changed {
            self.publish_sizes(state, metrics, false);
        }
        report
    }

    /// Entry counts per bank and signal; `loaded`: also stamp every bank as loaded now.
    fn publish_sizes(&self, state: &BankState, metrics: &Metrics, loaded: bool) {
        let now = chrono::Utc::now().timestamp();
        for bank in &state.banks {
            if loaded {
                metrics.bank_loaded_seconds.with_label_values(&[bank.name()]).set(now);
            }
            for signal in [Signal::Md5, Signal::Sha256, Signal::Pdq, Signal::Vpdq] {
                metrics.bank_entries.with_label_values(&[bank.name(), signal.as_str()]).set(bank.count(signal) as i64);
            }
            metrics.bank_entries_quarantined.with_label_values(&[bank.name()]).set(bank.quarantined_count() as i64);
        }
    }
}

/// Decodes a batch; a large one on two threads, one half each.
fn decode_all<'a>(records: &[TopicRecord<'a>]) -> Vec<Result<BankUpdate<'a>, Rejection>> {
    let decode = |r: &TopicRecord<'a>| record::decode(r.key, r.value);
    if records.len() < 512 {
        return records.iter().map(decode).collect();
    }
    let (first, second) = records.split_at(records.len() / 2);
    std::thread::scope(|scope| {
        let helper = scope.spawn(|| second.iter().map(decode).collect::<Vec<_>>());
        let mut out: Vec<_> = first.iter().map(decode).collect();
        out.extend(helper.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        out
    })
}

/// Applies one decoded record to its bank: (the bank's index, what happened); a change that
/// did something goes to `journal` when there is one.
fn apply_one(banks: &mut [Bank], update: &BankUpdate<'_>, journal: Option<&mut Vec<BankChange>>) -> Result<(usize, Applied), Rejection> {
    let index = banks
        .iter()
        .position(|b| b.name() == update.bank)
        .ok_or_else(|| Rejection::UndeclaredBank(update.bank.to_string()))?;
    let bank = &mut banks[index];
    let old_entry = journal.as_ref().and_then(|_| bank.entry_of(&update.hash)).map(str::to_string);
    let applied = match &update.change {
        Change::Upsert { entry } => {
            bank.upsert(&update.hash, entry, update.video.as_ref()).map_err(|e| Rejection::IndexFull(e.to_string()))?
        }
        Change::Withdraw => bank.withdraw(&update.hash),
        change @ (Change::Quarantine | Change::ClearQuarantine | Change::Release | Change::ClearRelease) => {
            bank.change_status(&update.hash, change)
        }
    };
    if let Some(journal) = journal {
        if !matches!(applied, Applied::Unchanged | Applied::Absent) {
            let applies = matches!(applied, Applied::Added | Applied::Replaced | Applied::Released);
            let video_frames = match (update.hash, applies) {
                (ParsedHash::Vpdq(_), true) => bank.id_of(&update.hash).map(|id| bank.videos.usable_hashes(id).into_boxed_slice()),
                _ => None,
            };
            journal.push(BankChange { bank: update.bank.to_string(), hash: update.hash, applied, old_entry, video_frames });
        }
    }
    Ok((index, applied))
}

fn version_of(positions: &BTreeMap<i32, i64>) -> Option<String> {
    if positions.is_empty() {
        return None;
    }
    Some(positions.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(","))
}

#[cfg(test)]
mod tests {
    use super::record::{record_key, BankEntryRecord, BANK_ENTRY_SCHEMA};
    use super::*;

    fn settings(name: &str) -> BankSettings {
        BankSettings {
            name: name.into(),
            file: String::new(),
            action: Action::Block,
            on_bad_row: crate::config::OnBadRow::Fail,
            pdq_threshold: 31,
            vpdq_query_match_pct: 80.0,
            vpdq_target_match_pct: 0.0,
            pdq_quality_floor: 50,
            dihedral: false,
            flood_max_matches_per_minute: 0,
            flood_baseline_multiple: 10.0,
        }
    }

    /// A bulk load keys its staging map by the first 64 bits of a PDQ hash: hashes sharing
    /// them (crafted, or by chance) are still told apart, through replace, withdraw and add
    /// again, and the bank ends as a bank loaded entry by entry does.
    #[test]
    fn a_bulk_load_tells_apart_hashes_sharing_their_first_64_bits() {
        let hash = |rest: u64| PdqHash::from_words([0xdead_beef_0000_0001, rest, !rest, rest.rotate_left(9)]);
        let (a, b, c) = (ParsedHash::Pdq(hash(1)), ParsedHash::Pdq(hash(2)), ParsedHash::Pdq(hash(3)));
        let steps = |bank: &mut Bank| {
            assert_eq!(bank.upsert(&a, "a", None).unwrap(), Applied::Added);
            assert_eq!(bank.upsert(&b, "b", None).unwrap(), Applied::Added);
            assert_eq!(bank.upsert(&b, "b", None).unwrap(), Applied::Unchanged);
            assert_eq!(bank.upsert(&a, "a2", None).unwrap(), Applied::Replaced);
            assert_eq!(bank.withdraw(&a), Applied::Withdrawn);
            assert_eq!(bank.entry_of(&b), Some("b"), "b survives a's withdrawal");
            assert_eq!(bank.upsert(&b, "b2", None).unwrap(), Applied::Replaced);
            assert_eq!(bank.upsert(&c, "c", None).unwrap(), Applied::Added);
            assert_eq!(bank.withdraw(&a), Applied::Absent);
            assert_eq!(bank.upsert(&a, "a3", None).unwrap(), Applied::Added);
        };
        let mut plain = Bank::new(settings("p"));
        steps(&mut plain);
        let mut bulk = Bank::new(settings("b"));
        bulk.upsert(&ParsedHash::Pdq(hash(9)), "before", None).unwrap();
        bulk.begin_bulk();
        assert_eq!(bulk.entry_of(&ParsedHash::Pdq(hash(9))), Some("before"), "entries from before the bulk load");
        steps(&mut bulk);
        bulk.end_bulk();
        for (h, entry) in [(a, "a3"), (b, "b2"), (c, "c")] {
            assert_eq!(plain.entry_of(&h), Some(entry));
            assert_eq!(bulk.entry_of(&h), Some(entry), "after the bulk load");
        }
        assert_eq!(bulk.count(Signal::Pdq), 4);
        assert_eq!(bulk.pdq.find(&hash(2)), bulk.id_of(&b));
    }

    fn md5_of(i: u32) -> String {
        format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15 + 1)
    }

    fn upsert(bank: &str, i: u32, entry: &str) -> (String, Option<Vec<u8>>) {
        let hash = md5_of(i);
        let value = BankEntryRecord {
            schema: BANK_ENTRY_SCHEMA.into(),
            bank: bank.into(),
            signal: "md5".into(),
            hash: hash.clone(),
            entry: entry.into(),
            source: "test".into(),
            added_at: "2026-11-29T00:00:00Z".into(),
            tags: vec![],
            vpdq: None,
        };
        (record_key(bank, Signal::Md5, &hash), Some(serde_json::to_vec(&value).unwrap()))
    }

    fn records(raw: &[(String, Option<Vec<u8>>)]) -> Vec<TopicRecord<'_>> {
        raw.iter()
            .enumerate()
            .map(|(i, (k, v))| TopicRecord { partition: 0, offset: i as i64, timestamp_ms: None, key: Some(k.as_bytes()), value: v.as_deref() })
            .collect()
    }

    fn exact(i: u32) -> ExactHashes {
        ExactHashes { md5: md5_of(i), sha256: String::new() }
    }

    /// A batch large enough to be decoded on two threads applies in order: an add, its
    /// replacement and its withdrawal in one batch end withdrawn; bad records are skipped.
    #[test]
    fn a_large_batch_applies_in_record_order() {
        let metrics = Metrics::new();
        let set = BankSet::new(vec![Bank::new(settings("b"))]);
        let mut raw: Vec<_> = (0..1500).map(|i| upsert("b", i, &format!("e-{i}"))).collect();
        raw.push(upsert("b", 7, "e-7-again"));
        raw.push((record_key("b", Signal::Md5, &md5_of(9)), None));
        raw.push(upsert("undeclared", 1, "x"));
        raw.push((record_key("b", Signal::Md5, &md5_of(3)), Some(b"{bad".to_vec())));
        raw.push(upsert("b", 9, "e-9-back"));
        raw.push((record_key("b", Signal::Md5, &md5_of(11)), None));
        let report = set.apply(&records(&raw), &metrics, true);
        assert_eq!((report.added, report.replaced, report.withdrawn, report.rejected), (1501, 1, 2, 2));
        assert_eq!(set.counts()[0].2, 1499);
        assert_eq!(set.version().as_deref(), Some(format!("0:{}", raw.len()).as_str()));
        let found = |i| set.match_media(&exact(i), &[], &[]).matches.first().map(|m| m.entry.clone());
        assert_eq!(found(7).as_deref(), Some("e-7-again"));
        assert_eq!(found(9).as_deref(), Some("e-9-back"));
        assert_eq!(found(11), None);
        assert_eq!(found(1499).as_deref(), Some("e-1499"));
        let rejected = metrics.bank_records_rejected.with_label_values(&["-", "undeclared_bank"]).get()
            + metrics.bank_records_rejected.with_label_values(&["b", "malformed_value"]).get();
        assert_eq!(rejected, 2);
        assert_eq!(metrics.bank_entries.with_label_values(&["b", "md5"]).get(), 1499);
    }

    /// Freed ids are reused and a reused id carries only its new entry.
    #[test]
    fn withdrawn_ids_are_reused_without_leaking_old_entries() {
        let mut bank = Bank::new(settings("b"));
        let h = |i: u32| ParsedHash::Md5(hash_text::decode_hex::<16>(md5_of(i).as_bytes()).unwrap());
        assert_eq!(bank.upsert(&h(1), "one", None).unwrap(), Applied::Added);
        assert_eq!(bank.upsert(&h(1), "one", None).unwrap(), Applied::Unchanged);
        assert_eq!(bank.withdraw(&h(1)), Applied::Withdrawn);
        assert_eq!(bank.withdraw(&h(1)), Applied::Absent);
        assert_eq!(bank.upsert(&h(2), "two", None).unwrap(), Applied::Added);
        assert_eq!(bank.entries.len(), 1, "the freed id was reused");
        let entries = bank.entries();
        assert_eq!(entries, vec![(Signal::Md5, md5_of(2), "two")]);
    }
}
