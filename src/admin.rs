//! The `perisai bank` commands for trust-and-safety teams: import a partner's list into the bank
//! topic, withdraw hashes, release quarantined entries, export a bank's live entries.
//!
//! Import compares with what the topic holds first, so running it twice publishes nothing the
//! second time (same key, same record), and a row that withdraws a hash the topic does not hold
//! publishes nothing either. Bad rows are reported with their line, never with their hash.

use std::collections::BTreeMap;

use crate::bank::hash_text::normalize_hash;
use crate::bank::formats::{self, Format, RowError};
use crate::bank::flood::QuarantineRequest;
use crate::bank::record::{self, quarantine_key, record_key, release_key, BankEntryRecord, QuarantineRecord, BANK_ENTRY_SCHEMA, QUARANTINE_SCHEMA};
use crate::bank::{BankSet, ParsedHash, Signal};
use crate::config::Settings;
use crate::kafka::bank_feed::{self, BankFeedError};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("bank {0:?} is not declared in the configuration ([[banks]]); workers would reject its records")]
    UndeclaredBank(String),
    #[error("kafka.banks_topic is empty: there is no bank topic to write to or read from")]
    NoTopic,
    #[error("{0}")]
    Format(#[from] formats::FormatError),
    #[error(transparent)]
    Feed(#[from] BankFeedError),
    #[error(transparent)]
    Bank(#[from] crate::bank::BankFileError),
}

pub struct ImportOptions {
    pub bank: String,
    pub format: Format,
    /// Overrides the format's default source (manual, threatexchange, stopncii).
    pub source: Option<String>,
    /// The entry id for rows whose format carries none (default: the source).
    pub entry: Option<String>,
}

#[derive(Debug, Default)]
pub struct ImportSummary {
    pub rows: usize,
    pub published: usize,
    pub unchanged: usize,
    pub withdrawn: usize,
    /// Withdrawal rows for hashes the topic does not hold.
    pub not_present: usize,
    pub rejected: Vec<RowError>,
}

impl std::fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows: {} published, {} unchanged, {} withdrawn, {} withdrawals of hashes not in the topic, {} rejected",
            self.rows,
            self.published,
            self.unchanged,
            self.withdrawn,
            self.not_present,
            self.rejected.len()
        )
    }
}

fn check_bank(settings: &Settings, bank: &str) -> Result<(), AdminError> {
    if settings.kafka.banks_topic.is_empty() {
        return Err(AdminError::NoTopic);
    }
    if !settings.banks.iter().any(|b| b.name == bank) {
        return Err(AdminError::UndeclaredBank(bank.to_string()));
    }
    Ok(())
}

/// Publishes a partner's list to the bank topic: new or changed entries, and tombstones for the
/// rows that withdraw a hash the topic holds.
pub async fn import(settings: &Settings, options: &ImportOptions, bytes: &[u8]) -> Result<ImportSummary, AdminError> {
    check_bank(settings, &options.bank)?;
    let (rows, rejected) = formats::parse(options.format, bytes)?;
    let mut summary = ImportSummary { rows: rows.len() + rejected.len(), rejected, ..Default::default() };
    let source = options.source.clone().unwrap_or_else(|| options.format.default_source().to_string());
    let metrics = Metrics::new();
    let live = bank_feed::read_values(&settings.kafka, &metrics, &format!("{}/", options.bank))?;
    let added_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // By key, so a hash listed twice in one file is published once, as its last row says.
    let mut out: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for row in rows {
        let key = record_key(&options.bank, row.signal, &row.hash);
        if row.withdraw {
            if live.contains_key(&key) {
                out.insert(key, None);
            } else if out.remove(&key).is_none() {
                // Neither in the topic nor added by an earlier row of this file.
                summary.not_present += 1;
            }
            continue;
        }
        let entry = row.entry.clone().or_else(|| options.entry.clone()).unwrap_or_else(|| source.clone());
        let entry = match record::check_entry(&entry) {
            Ok(e) => e.to_string(),
            Err(e) => {
                summary.rejected.push(RowError { line: row.line, problem: e.to_string() });
                continue;
            }
        };
        let value = BankEntryRecord {
            schema: BANK_ENTRY_SCHEMA.into(),
            bank: options.bank.clone(),
            signal: row.signal.as_str().into(),
            hash: record::key_hash(row.signal, &row.hash),
            entry,
            source: source.clone(),
            added_at: added_at.clone(),
            tags: row.tags.clone(),
            // The row's hash is the canonical signal string: a JSON list of strings.
            vpdq: (row.signal == Signal::Vpdq).then(|| serde_json::from_str(&row.hash).expect("canonical signal string")),
        };
        let same = live
            .get(&key)
            .and_then(|v| serde_json::from_slice::<BankEntryRecord>(v).ok())
            .is_some_and(|old| old.entry == value.entry && old.source == value.source && old.tags == value.tags);
        if same {
            // An earlier row of this file may have withdrawn it: the later row wins.
            out.remove(&key);
            summary.unchanged += 1;
            continue;
        }
        out.insert(key, Some(serde_json::to_vec(&value).expect("records serialize")));
    }
    summary.rejected.sort_by_key(|e| e.line);
    summary.published = out.values().filter(|v| v.is_some()).count();
    summary.withdrawn = out.len() - summary.published;
    bank_feed::publish(&settings.kafka, out.into_iter().collect()).await?;
    Ok(summary)
}

/// Withdraws hashes from a bank: one tombstone each, whether or not the topic holds the hash (an
/// entry seeded from the bank's file is withdrawn the same way). Returns how many were published
/// and the arguments refused (position, problem).
pub async fn withdraw(
    settings: &Settings,
    bank: &str,
    signal: Signal,
    hashes: &[String],
) -> Result<(usize, Vec<RowError>), AdminError> {
    check_bank(settings, bank)?;
    let (hashes, refused) = parse_arguments(signal, hashes);
    let records = hashes.iter().map(|hash| (record_key(bank, signal, &hash.to_hex()), None)).collect();
    let published = bank_feed::publish(&settings.kafka, records).await?;
    Ok((published, refused))
}

/// Releases quarantined entries (the trust-and-safety decision that the matches were not a
/// flood): a `released` status each under the release key, which wins over any quarantine, so
/// workers apply the bank's action again and never quarantine the entry automatically; and a
/// tombstone on the quarantine key, which is then stale. Returns how many entries were released
/// and the arguments refused.
pub async fn release(
    settings: &Settings,
    bank: &str,
    signal: Signal,
    hashes: &[String],
) -> Result<(usize, Vec<RowError>), AdminError> {
    check_bank(settings, bank)?;
    let (hashes, refused) = parse_arguments(signal, hashes);
    let mut records = Vec::with_capacity(hashes.len() * 2);
    for hash in &hashes {
        let (key, value) = quarantine_record(bank, hash, "released", "released by an operator", None);
        records.push((key, Some(value)));
        records.push((quarantine_key(bank, signal, &hash.to_hex()), None));
    }
    bank_feed::publish(&settings.kafka, records).await?;
    Ok((hashes.len(), refused))
}

/// The hashes given on the command line, validated: the good ones, and each refused one by position.
fn parse_arguments(signal: Signal, texts: &[String]) -> (Vec<ParsedHash>, Vec<RowError>) {
    let mut hashes = Vec::new();
    let mut refused = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match normalize_hash(signal, text).and_then(|hex| crate::bank::hash_text::parse_hash(signal, &hex)) {
            Ok(hash) => hashes.push(hash),
            Err(problem) => refused.push(RowError { line: i as u64 + 1, problem }),
        }
    }
    (hashes, refused)
}

/// The bank topic record that sets an entry's status (see `bank::record`): `quarantined` under
/// its quarantine key, `released` under its release key.
pub fn quarantine_record(
    bank: &str,
    hash: &ParsedHash,
    status: &str,
    reason: &str,
    flood: Option<&QuarantineRequest>,
) -> (String, Vec<u8>) {
    let hex = hash.to_hex();
    let value = QuarantineRecord {
        schema: QUARANTINE_SCHEMA.into(),
        bank: bank.into(),
        signal: hash.signal().as_str().into(),
        hash: hex.clone(),
        status: status.into(),
        reason: reason.into(),
        matches_last_minute: flood.map(|f| f.matches_last_minute),
        baseline_per_minute: flood.map(|f| (f.baseline_per_minute * 100.0).round() / 100.0),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        by: crate::config::replica_name(),
    };
    let key = if status == "released" { release_key(bank, hash.signal(), &hex) } else { quarantine_key(bank, hash.signal(), &hex) };
    (key, serde_json::to_vec(&value).expect("records serialize"))
}

/// Output formats of `perisai bank export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// `signal,hash,entry` with a header: what `bank import --format csv` and bank files read.
    Csv,
    /// ThreatExchange `<signal_type> <hash>` lines (md5 and sha256 as video_md5 / video_sha256).
    Te,
}

/// A bank's live entries as a worker holds them now: its file, then the whole topic.
pub fn export(settings: &Settings, bank: &str, format: ExportFormat) -> Result<String, AdminError> {
    if !settings.banks.iter().any(|b| b.name == bank) {
        return Err(AdminError::UndeclaredBank(bank.to_string()));
    }
    let metrics = Metrics::new();
    let banks = BankSet::load(&settings.banks, &metrics)?;
    if !settings.kafka.banks_topic.is_empty() {
        bank_feed::read_into(&settings.kafka, &banks, &metrics)?;
    }
    let entries = banks.entries_of(bank).unwrap_or_default();
    let mut out = String::new();
    match format {
        ExportFormat::Csv => {
            out.push_str("signal,hash,entry\n");
            let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
            for (signal, hash, entry) in &entries {
                // Analysts open exports in spreadsheets: an entry id such as `=HYPERLINK(…)` must
                // stay text there.
                writer.write_record([signal.as_str(), hash, &formats::spreadsheet_safe(entry)]).expect("writing to memory");
            }
            out.push_str(&String::from_utf8(writer.into_inner().expect("writing to memory")).expect("UTF-8 fields"));
        }
        ExportFormat::Te => {
            for (signal, hash, _) in &entries {
                let te = match signal {
                    Signal::Pdq => "pdq",
                    Signal::Md5 => "video_md5",
                    Signal::Sha256 => "video_sha256",
                    Signal::Vpdq => "vpdq",
                };
                out.push_str(&format!("{te} {hash}\n"));
            }
        }
    }
    Ok(out)
}
