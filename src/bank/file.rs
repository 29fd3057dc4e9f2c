//! Bank files: CSV with a header holding at least `signal,hash,entry` (other columns ignored),
//! read by the same parser as `perisai bank import --format csv` ([`super::formats`]).
//!
//! A bad row fails the load with file and line, or — when the bank says `on_bad_row = "skip"` —
//! is skipped and counted. Hash values never appear in errors or logs: a bank is sensitive.

use std::path::Path;

use super::formats::{self, Format, RowError};
use super::hash_text::parse_hash;
use super::video::VideoEntry;
use super::{Applied, Bank, ParsedHash, Signal};
use crate::config::{BankSettings, OnBadRow};

#[derive(Debug, thiserror::Error)]
pub enum BankFileError {
    #[error("bank {bank:?}: cannot read {file}: {source}")]
    Io { bank: String, file: String, source: std::io::Error },
    #[error("bank {bank:?}: {file}: {problem}")]
    Header { bank: String, file: String, problem: String },
    #[error("bank {bank:?}: {file}:{line}: {problem}")]
    Row { bank: String, file: String, line: u64, problem: String },
}

/// What a load did: kept entries per signal, skipped rows, and rows for a hash listed before.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub md5: usize,
    pub sha256: usize,
    pub pdq: usize,
    pub skipped: usize,
    pub duplicates: usize,
}

/// Loads a bank from its CSV file; a bank without a file starts empty (the bank topic feeds it).
/// Relative paths resolve against the working directory.
pub fn load_bank_file(settings: &BankSettings) -> Result<(Bank, LoadReport), BankFileError> {
    if settings.file.trim().is_empty() {
        return Ok((Bank::new(settings.clone()), LoadReport::default()));
    }
    let file = settings.file.clone();
    let bytes = std::fs::read(Path::new(&file))
        .map_err(|source| BankFileError::Io { bank: settings.name.clone(), file: file.clone(), source })?;
    load_bank_bytes(settings, &bytes)
}

pub fn load_bank_bytes(settings: &BankSettings, bytes: &[u8]) -> Result<(Bank, LoadReport), BankFileError> {
    let name = settings.name.clone();
    let file = settings.file.clone();
    // The same reader as `perisai bank import --format csv`: one set of rules for our CSV.
    let (rows, mut bad) = formats::parse(Format::Csv, bytes)
        .map_err(|e| BankFileError::Header { bank: name.clone(), file: file.clone(), problem: e.to_string() })?;
    let mut good = Vec::with_capacity(rows.len());
    for row in rows {
        match row.entry {
            Some(entry) if !row.withdraw => good.push((row.line, row.signal, row.hash, entry)),
            _ => bad.push(RowError { line: row.line, problem: "missing entry".into() }),
        }
    }
    if let (OnBadRow::Fail, Some(first)) = (settings.on_bad_row, bad.iter().min_by_key(|e| e.line)) {
        return Err(BankFileError::Row { bank: name, file, line: first.line, problem: first.problem.clone() });
    }
    let mut bank = Bank::new(settings.clone());
    bank.begin_bulk();
    let mut report = LoadReport { skipped: bad.len(), ..Default::default() };
    for (line, signal, hash, entry) in good {
        let row_error = |problem| BankFileError::Row { bank: name.clone(), file: file.clone(), line, problem };
        let video = if signal == Signal::Vpdq { Some(VideoEntry::parse(&hash).map_err(row_error)?) } else { None };
        let hash = match &video {
            Some(video) => ParsedHash::Vpdq(video.digest),
            None => parse_hash(signal, &hash).map_err(row_error)?,
        };
        match bank.upsert(&hash, &entry, video.as_ref()) {
            Err(full) => return Err(BankFileError::Row { bank: name, file, line, problem: full.to_string() }),
            // A hash listed twice keeps its last row's entry id: one entry per hash and bank.
            Ok(Applied::Replaced | Applied::Unchanged) => report.duplicates += 1,
            Ok(_) => {}
        }
    }
    bank.end_bulk();
    report.md5 = bank.count(Signal::Md5);
    report.sha256 = bank.count(Signal::Sha256);
    report.pdq = bank.count(Signal::Pdq);
    Ok((bank, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Action;

    fn settings(on_bad_row: OnBadRow) -> BankSettings {
        BankSettings {
            name: "t".into(),
            file: "t.csv".into(),
            action: Action::Block,
            on_bad_row,
            pdq_threshold: 31,
            vpdq_query_match_pct: 80.0,
            vpdq_target_match_pct: 0.0,
            pdq_quality_floor: 50,
            dihedral: false,
            flood_max_matches_per_minute: 0,
            flood_baseline_multiple: 10.0,
        }
    }

    const GOOD_MD5: &str = "900150983cd24fb0d6963f7d28e17f72";

    #[test]
    fn loads_rows_and_ignores_extra_columns() {
        let csv = format!("signal,hash,entry,note\nmd5,{GOOD_MD5},case-1,x\nSHA256,{},case-2,\n", "ab".repeat(32));
        let (bank, report) = load_bank_bytes(&settings(OnBadRow::Fail), csv.as_bytes()).unwrap();
        assert_eq!(report, LoadReport { md5: 1, sha256: 1, pdq: 0, skipped: 0, duplicates: 0 });
        assert_eq!(bank.count(Signal::Md5), 1);
    }

    #[test]
    fn bad_row_names_file_and_line_without_the_value() {
        let csv = format!("signal,hash,entry\nmd5,{GOOD_MD5},ok\nmd5,deadbeef,short\n");
        let err = load_bank_bytes(&settings(OnBadRow::Fail), csv.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("t.csv:3"), "{err}");
        assert!(!err.contains("deadbeef"), "hash value leaked: {err}");
    }

    #[test]
    fn skip_mode_counts_bad_rows() {
        let csv = format!("signal,hash,entry\nmd5,{GOOD_MD5},ok\nmd4,{GOOD_MD5},bad\npdq,{},zero\n", "0".repeat(64));
        let (_, report) = load_bank_bytes(&settings(OnBadRow::Skip), csv.as_bytes()).unwrap();
        assert_eq!((report.md5, report.skipped), (1, 2));
    }

    #[test]
    fn a_hash_listed_twice_keeps_its_last_entry() {
        let pdq = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22";
        let csv = format!("signal,hash,entry\npdq,{pdq},first\nmd5,{GOOD_MD5},a\nPDQ,{},second\nmd5,{GOOD_MD5},b\n", pdq.to_uppercase());
        let (bank, report) = load_bank_bytes(&settings(OnBadRow::Fail), csv.as_bytes()).unwrap();
        assert_eq!((report.pdq, report.md5, report.duplicates), (1, 1, 2));
        let entries = bank.entries();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().any(|(s, h, e)| *s == Signal::Pdq && h == pdq && *e == "second"), "{entries:?}");
        assert!(entries.iter().any(|(s, _, e)| *s == Signal::Md5 && *e == "b"));
    }

    #[test]
    fn missing_columns_rejected() {
        let err = load_bank_bytes(&settings(OnBadRow::Fail), b"hash,entry\n").unwrap_err();
        assert!(matches!(err, BankFileError::Header { .. }));
    }
}
