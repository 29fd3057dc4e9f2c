//! Bank files: CSV with a header holding at least `signal,hash,entry` (other columns ignored).
//!
//! A bad row fails the load with file and line, or — when the bank says `on_bad_row = "skip"` —
//! is skipped and counted. Hash values never appear in errors or logs: a bank is sensitive.

use std::path::Path;

use super::{Bank, ParsedHash, Signal};
use crate::config::{BankSettings, OnBadRow};
use crate::hash::pdq::PdqHash;

#[derive(Debug, thiserror::Error)]
pub enum BankFileError {
    #[error("bank {bank:?}: cannot read {file}: {source}")]
    Io { bank: String, file: String, source: std::io::Error },
    #[error("bank {bank:?}: {file}: header must contain columns signal, hash, entry (found: {found})")]
    Header { bank: String, file: String, found: String },
    #[error("bank {bank:?}: {file}:{line}: {problem}")]
    Row { bank: String, file: String, line: u64, problem: String },
}

/// What a load did: kept entries per signal and skipped rows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub md5: usize,
    pub sha256: usize,
    pub pdq: usize,
    pub skipped: usize,
}

/// Loads a bank from its CSV file. Relative paths resolve against the working directory.
pub fn load_bank_file(settings: &BankSettings) -> Result<(Bank, LoadReport), BankFileError> {
    let file = settings.file.clone();
    let bytes = std::fs::read(Path::new(&file))
        .map_err(|source| BankFileError::Io { bank: settings.name.clone(), file: file.clone(), source })?;
    load_bank_bytes(settings, &bytes)
}

pub fn load_bank_bytes(settings: &BankSettings, bytes: &[u8]) -> Result<(Bank, LoadReport), BankFileError> {
    let name = settings.name.clone();
    let file = settings.file.clone();
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).comment(Some(b'#')).from_reader(bytes);
    let header_err = |found: String| BankFileError::Header { bank: name.clone(), file: file.clone(), found };
    let headers = reader.headers().map_err(|e| header_err(e.to_string()))?.clone();
    let column = |want: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(want));
    let (Some(signal_col), Some(hash_col), Some(entry_col)) = (column("signal"), column("hash"), column("entry")) else {
        return Err(header_err(headers.iter().collect::<Vec<_>>().join(",")));
    };
    let mut bank = Bank::new(settings.clone());
    let mut report = LoadReport::default();
    for record in reader.records() {
        let parsed = match record {
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                Err((line, format!("unreadable row: {}", e.kind_summary())))
            }
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line());
                parse_row(&record, signal_col, hash_col, entry_col).map_err(|problem| (line, problem))
            }
        };
        match parsed {
            Ok((hash, entry)) => {
                if let Err(full) = bank.add(&hash, entry) {
                    let line = reader.position().line();
                    return Err(BankFileError::Row { bank: name, file, line, problem: full.to_string() });
                }
                match hash {
                    ParsedHash::Md5(_) => report.md5 += 1,
                    ParsedHash::Sha256(_) => report.sha256 += 1,
                    ParsedHash::Pdq(_) => report.pdq += 1,
                }
            }
            Err((line, problem)) => match settings.on_bad_row {
                OnBadRow::Fail => return Err(BankFileError::Row { bank: name, file, line, problem }),
                OnBadRow::Skip => report.skipped += 1,
            },
        }
    }
    Ok((bank, report))
}

trait KindSummary {
    fn kind_summary(&self) -> String;
}

impl KindSummary for csv::Error {
    /// The csv error without the offending bytes (they may be hashes).
    fn kind_summary(&self) -> String {
        match self.kind() {
            csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".into(),
            csv::ErrorKind::UnequalLengths { .. } => "wrong number of fields".into(),
            _ => "malformed CSV".into(),
        }
    }
}

fn parse_row(
    record: &csv::StringRecord,
    signal_col: usize,
    hash_col: usize,
    entry_col: usize,
) -> Result<(ParsedHash, String), String> {
    let field = |i: usize, what: &str| record.get(i).filter(|v| !v.is_empty()).ok_or_else(|| format!("missing {what}"));
    let signal_text = field(signal_col, "signal")?;
    let signal = Signal::parse(signal_text)
        .ok_or_else(|| format!("unknown signal {signal_text:?} (expected md5, sha256 or pdq)"))?;
    let hash = parse_hash(signal, field(hash_col, "hash")?)?;
    let entry = field(entry_col, "entry")?.to_string();
    Ok((hash, entry))
}

/// Validates a hash for its signal. Errors describe the problem, never the value.
pub fn parse_hash(signal: Signal, text: &str) -> Result<ParsedHash, String> {
    let text = text.trim();
    let expect_len = match signal {
        Signal::Md5 => 32,
        Signal::Sha256 | Signal::Pdq => 64,
    };
    if text.len() != expect_len || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{} hash must be {expect_len} hex characters", signal.as_str()));
    }
    let lower = text.to_ascii_lowercase();
    Ok(match signal {
        Signal::Md5 => {
            let mut h = [0u8; 16];
            hex::decode_to_slice(&lower, &mut h).map_err(|_| "invalid hex".to_string())?;
            ParsedHash::Md5(h)
        }
        Signal::Sha256 => {
            let mut h = [0u8; 32];
            hex::decode_to_slice(&lower, &mut h).map_err(|_| "invalid hex".to_string())?;
            ParsedHash::Sha256(h)
        }
        Signal::Pdq => {
            let h: PdqHash = lower.parse().map_err(|_| "invalid pdq hash".to_string())?;
            // An all-zero PDQ hash is what tiny or degenerate images give; banking it would match noise.
            if h.is_zero() {
                return Err("pdq hash is all zeros (degenerate image), refused".into());
            }
            ParsedHash::Pdq(h)
        }
    })
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
            pdq_quality_floor: 50,
            dihedral: false,
        }
    }

    const GOOD_MD5: &str = "900150983cd24fb0d6963f7d28e17f72";

    #[test]
    fn loads_rows_and_ignores_extra_columns() {
        let csv = format!("signal,hash,entry,note\nmd5,{GOOD_MD5},case-1,x\nSHA256,{},case-2,\n", "ab".repeat(32));
        let (bank, report) = load_bank_bytes(&settings(OnBadRow::Fail), csv.as_bytes()).unwrap();
        assert_eq!(report, LoadReport { md5: 1, sha256: 1, pdq: 0, skipped: 0 });
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
    fn missing_columns_rejected() {
        let err = load_bank_bytes(&settings(OnBadRow::Fail), b"hash,entry\n").unwrap_err();
        assert!(matches!(err, BankFileError::Header { .. }));
    }
}
