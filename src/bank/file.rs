//! Bank files: CSV with a header holding at least `signal,hash,entry` (other columns ignored),
//! read by the same parser as `perisai bank import --format csv` ([`super::formats`]).
//!
//! A bad row fails the load with file and line, or — when the bank says `on_bad_row = "skip"` —
//! is skipped and counted. Hash values never appear in errors or logs: a bank is sensitive.

use std::path::Path;

use super::formats::{self, Format, RowError};
use super::video::VideoEntry;
use super::{Applied, Bank, ParsedHash, Signal};
use crate::config::{BankSettings, OnBadRow};
use crate::hash::pdq::PdqHash;

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

/// Validates a hash for its signal and returns it as lowercase hex; a vPDQ signal string as its
/// canonical form (see `video::canonical_signal_string`). Errors describe the problem, never the
/// value.
pub fn normalize_hash(signal: Signal, text: &str) -> Result<String, String> {
    if signal == Signal::Vpdq && text.trim_start().starts_with('[') {
        return VideoEntry::parse(text).map(|video| super::video::canonical_signal_string(&video.frames));
    }
    parse_hash(signal, text).map(|h| h.to_hex())
}

/// Validates a hash for its signal (hex in either case). Errors describe the problem, never
/// the value.
pub fn parse_hash(signal: Signal, text: &str) -> Result<ParsedHash, String> {
    let text = text.trim().as_bytes();
    let bad = || {
        let len = if signal == Signal::Md5 { 32 } else { 64 };
        format!("{} hash must be {len} hex characters", signal.as_str())
    };
    Ok(match signal {
        // A signal string (files, imports) or its digest (record keys, withdrawals).
        Signal::Vpdq if text.first() == Some(&b'[') => {
            ParsedHash::Vpdq(VideoEntry::parse(std::str::from_utf8(text).map_err(|_| bad())?)?.digest)
        }
        Signal::Vpdq => ParsedHash::Vpdq(decode_hex(text).ok_or_else(|| "vpdq hash must be a signal string or its 64-hex digest".to_string())?),
        Signal::Md5 => ParsedHash::Md5(decode_hex(text).ok_or_else(bad)?),
        Signal::Sha256 => ParsedHash::Sha256(decode_hex(text).ok_or_else(bad)?),
        Signal::Pdq => {
            let h = PdqHash(decode_hex(text).ok_or_else(bad)?);
            // An all-zero PDQ hash is what tiny or degenerate images give; banking it would match noise.
            if h.is_zero() {
                return Err("pdq hash is all zeros (degenerate image), refused".into());
            }
            ParsedHash::Pdq(h)
        }
    })
}

/// Hex (either case) of exactly `2 * N` characters. Start-up decodes millions of these: a table
/// lookup per character, since branching on random digits mispredicts half the time.
pub(crate) fn decode_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    const INVALID: u8 = 0xff;
    const TABLE: [u8; 256] = {
        let mut t = [INVALID; 256];
        let mut c = 0;
        while c < 256 {
            t[c] = match c as u8 {
                b @ b'0'..=b'9' => b - b'0',
                b @ b'a'..=b'f' => b - b'a' + 10,
                b @ b'A'..=b'F' => b - b'A' + 10,
                _ => INVALID,
            };
            c += 1;
        }
        t
    };
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut invalid = 0u8;
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (TABLE[pair[0] as usize], TABLE[pair[1] as usize]);
        invalid |= (high | low) & 0xf0;
        *o = high << 4 | (low & 0x0f);
    }
    (invalid == 0).then_some(out)
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
    fn hex_decoding_agrees_with_the_hex_crate_on_every_character() {
        for c in 0..=255u8 {
            let text = [b'a', c, b'F', b'0'];
            assert_eq!(decode_hex::<2>(&text), hex::decode(text).ok().map(|v| [v[0], v[1]]), "character {c}");
        }
        assert_eq!(decode_hex::<2>(b"abc"), None);
        assert_eq!(decode_hex::<2>(b"abcdef"), None);
    }

    #[test]
    fn missing_columns_rejected() {
        let err = load_bank_bytes(&settings(OnBadRow::Fail), b"hash,entry\n").unwrap_err();
        assert!(matches!(err, BankFileError::Header { .. }));
    }
}
