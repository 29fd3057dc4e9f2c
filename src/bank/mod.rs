//! Hash banks: entries loaded from files, matched by exact hash or PDQ distance.
//!
//! A bank is a named list of known hashes with one action (block, review, or allow for
//! allowlists). Bank contents are sensitive: hashes and entry ids are never logged.

pub mod file;
pub mod pdq_index;

use std::collections::HashMap;

use crate::config::BankSettings;
use crate::event::Action;
use crate::hash::exact::ExactHashes;
use crate::hash::pdq::PdqHash;
use pdq_index::PdqIndex;

pub use file::{load_bank_bytes, load_bank_file, BankFileError, LoadReport};

/// Which hash of the media an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Md5,
    Sha256,
    Pdq,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Md5 => "md5",
            Signal::Sha256 => "sha256",
            Signal::Pdq => "pdq",
        }
    }

    pub fn parse(s: &str) -> Option<Signal> {
        match s.trim().to_ascii_lowercase().as_str() {
            "md5" => Some(Signal::Md5),
            "sha256" => Some(Signal::Sha256),
            "pdq" => Some(Signal::Pdq),
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
}

/// An upload too low in PDQ quality for a bank's floor: reported, never silently dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct LowQuality {
    pub bank: String,
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
}

pub const DIHEDRAL_NAMES: [&str; 8] =
    ["original", "rotate90", "rotate180", "rotate270", "flip_x", "flip_y", "flip_plus1", "flip_minus1"];

#[derive(Debug)]
pub struct Bank {
    pub settings: BankSettings,
    md5: HashMap<[u8; 16], Vec<u32>>,
    sha256: HashMap<[u8; 32], Vec<u32>>,
    pdq: PdqIndex,
    /// Entry names by internal id; ids are stable for the life of the bank so the index can remove them.
    entries: Vec<String>,
}

impl Bank {
    pub fn new(settings: BankSettings) -> Self {
        Self { settings, md5: HashMap::new(), sha256: HashMap::new(), pdq: PdqIndex::new(), entries: Vec::new() }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Adds one entry. `hash` must already be validated for its signal (see `file::parse_hash`).
    /// Fails only when the PDQ index is at its capacity.
    pub fn add(&mut self, hash: &ParsedHash, entry: String) -> Result<(), pdq_index::IndexError> {
        let id = u32::try_from(self.entries.len()).map_err(|_| pdq_index::IndexError::Full)?;
        match hash {
            ParsedHash::Md5(h) => self.md5.entry(*h).or_default().push(id),
            ParsedHash::Sha256(h) => self.sha256.entry(*h).or_default().push(id),
            ParsedHash::Pdq(h) => self.pdq.try_insert(id, *h)?,
        }
        self.entries.push(entry);
        Ok(())
    }

    pub fn count(&self, signal: Signal) -> usize {
        match signal {
            Signal::Md5 => self.md5.values().map(Vec::len).sum(),
            Signal::Sha256 => self.sha256.values().map(Vec::len).sum(),
            Signal::Pdq => self.pdq.len(),
        }
    }

    pub fn wants_pdq(&self) -> bool {
        !self.pdq.is_empty()
    }

    fn hit(&self, signal: Signal, id: u32) -> BankMatch {
        BankMatch {
            bank: self.settings.name.clone(),
            action: self.settings.action,
            signal,
            entry: self.entries[id as usize].clone(),
            distance: None,
            quality: None,
            transform: None,
        }
    }

    pub fn match_exact(&self, hashes: &ExactHashes, out: &mut Vec<BankMatch>) {
        if let Some(ids) = decode_hex::<16>(&hashes.md5).and_then(|h| self.md5.get(&h)) {
            out.extend(ids.iter().map(|&id| self.hit(Signal::Md5, id)));
        }
        if let Some(ids) = decode_hex::<32>(&hashes.sha256).and_then(|h| self.sha256.get(&h)) {
            out.extend(ids.iter().map(|&id| self.hit(Signal::Sha256, id)));
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
        for (id, (distance, transform)) in hits {
            let mut m = self.hit(Signal::Pdq, id);
            m.distance = Some(distance);
            m.quality = Some(pdq.quality);
            m.transform = (transform != DIHEDRAL_NAMES[0]).then_some(transform);
            out.push(m);
        }
    }
}

/// A validated hash from a bank file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedHash {
    Md5([u8; 16]),
    Sha256([u8; 32]),
    Pdq(PdqHash),
}

fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Every configured bank, loaded. Shared read-only by the screen.
#[derive(Debug, Default)]
pub struct BankSet {
    pub banks: Vec<Bank>,
}

impl BankSet {
    pub fn any_pdq(&self) -> bool {
        self.banks.iter().any(Bank::wants_pdq)
    }

    pub fn any_dihedral(&self) -> bool {
        self.banks.iter().any(|b| b.wants_pdq() && b.settings.dihedral)
    }

    pub fn match_exact(&self, hashes: &ExactHashes) -> Vec<BankMatch> {
        let mut out = Vec::new();
        for bank in &self.banks {
            bank.match_exact(hashes, &mut out);
        }
        out
    }

    pub fn match_pdq(&self, pdq: &PdqSignal) -> (Vec<BankMatch>, Vec<LowQuality>) {
        let (mut out, mut low) = (Vec::new(), Vec::new());
        for bank in &self.banks {
            bank.match_pdq(pdq, &mut out, &mut low);
        }
        (out, low)
    }
}

impl BankSet {
    /// Loads every configured bank from its file; the first bad file stops the load (unless the
    /// bank skips bad rows).
    pub fn load(settings: &[crate::config::BankSettings], metrics: &crate::metrics::Metrics) -> Result<Self, BankFileError> {
        let loaded = settings.iter().map(load_bank_file).collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_loaded(loaded, metrics))
    }

    /// Assembles loaded banks and publishes their sizes.
    pub fn from_loaded(loaded: Vec<(Bank, LoadReport)>, metrics: &crate::metrics::Metrics) -> Self {
        let mut banks = Vec::with_capacity(loaded.len());
        for (bank, report) in loaded {
            let name = bank.name().to_string();
            for (signal, count) in [("md5", report.md5), ("sha256", report.sha256), ("pdq", report.pdq)] {
                metrics.bank_entries.with_label_values(&[&name, signal]).set(count as i64);
            }
            metrics.bank_rows_skipped.with_label_values(&[&name]).inc_by(report.skipped as u64);
            metrics.bank_loaded_seconds.with_label_values(&[&name]).set(chrono::Utc::now().timestamp());
            if report.skipped > 0 {
                tracing::warn!(bank = %name, skipped = report.skipped, "bad bank rows skipped");
            }
            tracing::info!(bank = %name, md5 = report.md5, sha256 = report.sha256, pdq = report.pdq, "bank loaded");
            banks.push(bank);
        }
        Self { banks }
    }
}
