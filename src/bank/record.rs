//! The bank topic's records (`perisai.bank_entry/v1`): one live entry per key `BANK/SIGNAL/HASH`,
//! a null value (tombstone) withdraws it. The topic is log-compacted, so the last record per key
//! is the entry's state; docs/schemas/bank_entry.schema.json is the value's JSON Schema.
//!
//! Beside each entry's key, two status keys (values `perisai.bank_quarantine/v1`):
//! `BANK/SIGNAL/HASH/quarantine`, written `quarantined` by a worker that saw the entry flood, and
//! `BANK/SIGNAL/HASH/release`, written `released` by `perisai bank release` — a person's decision,
//! which wins over any quarantine, earlier or later (a worker that saw the flood late cannot undo
//! it, not even after compaction), and stops workers from quarantining the entry again. A
//! tombstone clears either. Keys apart from the entry's, so that re-importing a partner's list
//! never lifts a quarantine and lifting one never touches the entry.
//!
//! Records come from partners' lists, so each one is checked on its own: a bad record is
//! rejected with a reason ([`Rejection`]) and never stops the others. Rejections, like every
//! other bank error, never carry the hash.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::hash_text::parse_hash;
use super::{ParsedHash, Signal};
use crate::config::valid_bank_name;

pub const BANK_ENTRY_SCHEMA: &str = "perisai.bank_entry/v1";
pub const QUARANTINE_SCHEMA: &str = "perisai.bank_quarantine/v1";
/// The suffixes of the status keys: `BANK/SIGNAL/HASH/quarantine`, `BANK/SIGNAL/HASH/release`.
const QUARANTINE_SUFFIX: &str = "quarantine";
const RELEASE_SUFFIX: &str = "release";

/// Longest entry id kept (the partner's or case id): ids are echoed in every verdict.
pub const MAX_ENTRY_BYTES: usize = 256;

/// The record value. Readers ignore fields they do not know, so a later writer can add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankEntryRecord {
    pub schema: String,
    pub bank: String,
    /// md5 | sha256 | pdq | vpdq
    pub signal: String,
    /// Lowercase hex; for vpdq, the SHA-256 of the canonical signal string.
    pub hash: String,
    /// The partner's or case id; verdicts name it.
    pub entry: String,
    /// Who supplied it, e.g. stopncii, ncmec, threatexchange, manual.
    pub source: String,
    /// RFC 3339.
    pub added_at: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// vpdq only: the video's features, `PDQ_HEX,QUALITY,TIMESTAMP` each (python-threatexchange's
    /// signal string as a JSON list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpdq: Option<Vec<String>>,
}

/// The key form of a normalized hash: a vPDQ signal string's digest (lowercase hex), any other
/// hash as it is.
pub fn key_hash(signal: Signal, normalized: &str) -> String {
    if signal == Signal::Vpdq && normalized.trim_start().starts_with('[') {
        match super::video::VideoEntry::parse(normalized) {
            Ok(video) => return hex::encode(video.digest),
            Err(_) => return String::new(),
        }
    }
    normalized.to_ascii_lowercase()
}

/// The record key of one entry: `BANK/SIGNAL/HASH`, hash in lowercase hex.
pub fn record_key(bank: &str, signal: Signal, hash_hex: &str) -> String {
    format!("{bank}/{}/{}", signal.as_str(), key_hash(signal, hash_hex))
}

/// The key of an entry's quarantine status: `BANK/SIGNAL/HASH/quarantine`.
pub fn quarantine_key(bank: &str, signal: Signal, hash_hex: &str) -> String {
    format!("{}/{QUARANTINE_SUFFIX}", record_key(bank, signal, hash_hex))
}

/// The key of a person's release of an entry: `BANK/SIGNAL/HASH/release`.
pub fn release_key(bank: &str, signal: Signal, hash_hex: &str) -> String {
    format!("{}/{RELEASE_SUFFIX}", record_key(bank, signal, hash_hex))
}

/// A quarantine status value: why a worker quarantined an entry. Readers need only the schema
/// and the key fields; the rest is for the people who decide whether to release it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    pub schema: String,
    pub bank: String,
    pub signal: String,
    pub hash: String,
    /// quarantined | released
    pub status: String,
    /// e.g. `flood`, or the operator's note.
    pub reason: String,
    /// Flood quarantines: matches on the detecting worker in the last minute, and its
    /// per-minute baseline over the hour before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches_last_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_per_minute: Option<f64>,
    /// RFC 3339.
    pub at: String,
    /// The worker that saw the flood (host name or process id).
    pub by: String,
}

/// What a record asks of one bank; borrows from the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankUpdate<'a> {
    pub bank: &'a str,
    pub hash: ParsedHash,
    pub change: Change<'a>,
    /// A vPDQ entry's video (upserts only).
    pub video: Option<super::video::VideoEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<'a> {
    /// Add the entry, or replace the one this hash has.
    Upsert { entry: Cow<'a, str> },
    Withdraw,
    /// The entry's matches go to review instead of its bank's action (see the module docs).
    Quarantine,
    /// The quarantine key cleared (a tombstone).
    ClearQuarantine,
    /// A person released the entry: its bank's action applies, it is never quarantined again.
    Release,
    /// The release key cleared (a tombstone).
    ClearRelease,
}

/// Why a record was not applied; `reason()` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("record key is not BANK/SIGNAL/HASH")]
    BadKey,
    #[error("bank {0:?} is not declared in the configuration")]
    UndeclaredBank(String),
    #[error("value is not a perisai.bank_entry/v1 JSON object: {0}")]
    MalformedValue(String),
    #[error("unsupported schema (expected {BANK_ENTRY_SCHEMA}, or {QUARANTINE_SCHEMA} under a status key)")]
    SchemaVersion,
    #[error("value's bank, signal or hash differs from its key")]
    KeyMismatch,
    #[error("{0}")]
    BadHash(String),
    #[error("pdq hash is all zeros (a blank image would match every flat upload)")]
    ZeroPdq,
    #[error("entry id {0}")]
    BadEntry(&'static str),
    #[error("{0}")]
    IndexFull(String),
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::BadKey => "bad_key",
            Rejection::UndeclaredBank(_) => "undeclared_bank",
            Rejection::MalformedValue(_) => "malformed_value",
            Rejection::SchemaVersion => "schema_version",
            Rejection::KeyMismatch => "key_mismatch",
            Rejection::BadHash(_) => "bad_hash",
            Rejection::ZeroPdq => "zero_pdq",
            Rejection::BadEntry(_) => "bad_entry",
            Rejection::IndexFull(_) => "index_full",
        }
    }
}

/// The bank a record key names, when the key has the right shape (for metric labels).
pub fn bank_of_key(key: &[u8]) -> Option<&str> {
    let key = std::str::from_utf8(key).ok()?;
    let (bank, _) = key.split_once('/')?;
    valid_bank_name(bank).then_some(bank)
}

/// The value as read: every field optional, so that a missing one is named, strings borrowed
/// from the record (start-up reads millions of them).
#[derive(Deserialize)]
struct ValueView<'a> {
    #[serde(borrow)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow)]
    bank: Option<Cow<'a, str>>,
    #[serde(borrow)]
    signal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    hash: Option<Cow<'a, str>>,
    #[serde(borrow)]
    entry: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    added_at: Option<Cow<'a, str>>,
    /// Status values only (`quarantined` or `released`).
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    #[allow(dead_code)] // read to check its type; not kept
    tags: Option<Vec<Cow<'a, str>>>,
    /// vpdq entries: the features.
    #[serde(borrow, default)]
    vpdq: Option<&'a serde_json::value::RawValue>,
}

/// Decodes one record of the bank topic. `value` is `None` for a tombstone.
pub fn decode<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> Result<BankUpdate<'a>, Rejection> {
    let key = key.and_then(|k| std::str::from_utf8(k).ok()).ok_or(Rejection::BadKey)?;
    let mut parts = key.splitn(4, '/');
    let (Some(bank), Some(signal_text), Some(hash_text)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Rejection::BadKey);
    };
    let status_key = match parts.next() {
        None => None,
        Some(suffix @ (QUARANTINE_SUFFIX | RELEASE_SUFFIX)) => Some(suffix),
        Some(_) => return Err(Rejection::BadKey),
    };
    let signal = Signal::parse(signal_text).filter(|s| s.as_str() == signal_text).ok_or(Rejection::BadKey)?;
    if !valid_bank_name(bank) {
        return Err(Rejection::BadKey);
    }
    let hash = checked_hash(signal, hash_text)?;
    if let Some(suffix) = status_key {
        let change = match (suffix, value) {
            (QUARANTINE_SUFFIX, None) => Change::ClearQuarantine,
            (_, None) => Change::ClearRelease,
            (_, Some(value)) => {
                let expected = if suffix == QUARANTINE_SUFFIX { "quarantined" } else { "released" };
                check_status(value, bank, signal_text, hash_text, expected)?;
                if suffix == QUARANTINE_SUFFIX {
                    Change::Quarantine
                } else {
                    Change::Release
                }
            }
        };
        return Ok(BankUpdate { bank, hash, change, video: None });
    }
    let Some(value) = value else {
        return Ok(BankUpdate { bank, hash, change: Change::Withdraw, video: None });
    };
    let view: ValueView<'a> = serde_json::from_slice(value).map_err(|e| Rejection::MalformedValue(without_input(&e)))?;
    match view.schema.as_deref() {
        Some(BANK_ENTRY_SCHEMA) => {}
        Some(_) => return Err(Rejection::SchemaVersion),
        None => return Err(Rejection::MalformedValue("missing field `schema`".into())),
    }
    let required = [("bank", &view.bank), ("signal", &view.signal), ("hash", &view.hash), ("entry", &view.entry), ("source", &view.source), ("added_at", &view.added_at)];
    if let Some((name, _)) = required.iter().find(|(_, v)| v.is_none()) {
        return Err(Rejection::MalformedValue(format!("missing field `{name}`")));
    }
    // The key was checked above; the value must repeat it exactly (the hash in lowercase too).
    if view.bank.as_deref() != Some(bank) || view.signal.as_deref() != Some(signal_text) || view.hash.as_deref() != Some(hash_text) {
        return Err(Rejection::KeyMismatch);
    }
    let entry = match view.entry {
        Some(Cow::Borrowed(e)) => Cow::Borrowed(check_entry(e)?),
        Some(Cow::Owned(e)) => Cow::Owned(check_entry(&e)?.to_string()),
        None => unreachable!("checked above"),
    };
    // A vPDQ entry carries its features, and its key is their digest.
    let video = match (signal, view.vpdq) {
        (Signal::Vpdq, Some(features)) => {
            let video = super::video::VideoEntry::parse(features.get()).map_err(Rejection::BadHash)?;
            if ParsedHash::Vpdq(video.digest) != hash {
                return Err(Rejection::KeyMismatch);
            }
            Some(video)
        }
        (Signal::Vpdq, None) => return Err(Rejection::MalformedValue("missing field `vpdq`".into())),
        _ => None,
    };
    Ok(BankUpdate { bank, hash, change: Change::Upsert { entry }, video })
}

/// A status value must name its schema, repeat its key and say the status its key holds; the
/// rest is informative.
fn check_status(value: &[u8], bank: &str, signal: &str, hash: &str, expected: &str) -> Result<(), Rejection> {
    let view: ValueView<'_> = serde_json::from_slice(value).map_err(|e| Rejection::MalformedValue(without_input(&e)))?;
    match view.schema.as_deref() {
        Some(QUARANTINE_SCHEMA) => {}
        Some(_) => return Err(Rejection::SchemaVersion),
        None => return Err(Rejection::MalformedValue("missing field `schema`".into())),
    }
    if view.bank.as_deref() != Some(bank) || view.signal.as_deref() != Some(signal) || view.hash.as_deref() != Some(hash) {
        return Err(Rejection::KeyMismatch);
    }
    match view.status.as_deref() {
        Some(status) if status == expected => Ok(()),
        Some(_) => Err(Rejection::MalformedValue(format!("`status` must be {expected} under this key"))),
        None => Err(Rejection::MalformedValue("missing field `status`".into())),
    }
}

/// Keys hold lowercase hex only: an uppercase key would be a second key for the same hash,
/// which compaction would keep apart (and a tombstone of one would not withdraw the other).
fn checked_hash(signal: Signal, text: &str) -> Result<ParsedHash, Rejection> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(Rejection::BadHash(format!("{} hash must be lowercase hex", signal.as_str())));
    }
    parse_hash(signal, text).map_err(|problem| {
        if problem.contains("all zeros") {
            Rejection::ZeroPdq
        } else {
            Rejection::BadHash(problem)
        }
    })
}

/// Entry ids are echoed in verdicts, exports and logs' readers' terminals. Accepted: 1 to 256
/// bytes of UTF-8 after trimming white space, no control characters and no invisible formatting
/// characters (zero-width spaces and joiners, bidirectional marks, overrides and isolates, word
/// joiners, the byte order mark) that could make one id read as another.
pub fn check_entry(entry: &str) -> Result<&str, Rejection> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(Rejection::BadEntry("is empty"));
    }
    if entry.len() > MAX_ENTRY_BYTES {
        return Err(Rejection::BadEntry("longer than 256 bytes"));
    }
    if entry.chars().any(char::is_control) {
        return Err(Rejection::BadEntry("contains control characters"));
    }
    if entry.chars().any(invisible_format) {
        return Err(Rejection::BadEntry("contains invisible formatting characters"));
    }
    Ok(entry)
}

fn invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// serde_json's message without the offending input (it could be a hash).
fn without_input(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "unreadable".into(),
        Category::Syntax => format!("invalid JSON at line {} column {}", e.line(), e.column()),
        Category::Eof => "truncated JSON".into(),
        // Only messages that name a field, never one that quotes a value ("invalid type: string
        // \"…\""), which could be a hash.
        Category::Data => {
            let text = e.to_string();
            let text = text.split(" at line ").next().unwrap_or_default();
            if text.starts_with("missing field") || text.starts_with("duplicate field") {
                text.to_string()
            } else {
                "a field has the wrong type".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PDQ: &str = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22";
    const MD5: &str = "900150983cd24fb0d6963f7d28e17f72";

    fn value(bank: &str, signal: &str, hash: &str, entry: &str) -> Vec<u8> {
        serde_json::to_vec(&BankEntryRecord {
            schema: BANK_ENTRY_SCHEMA.into(),
            bank: bank.into(),
            signal: signal.into(),
            hash: hash.into(),
            entry: entry.into(),
            source: "manual".into(),
            added_at: "2026-11-29T12:00:00Z".into(),
            tags: vec![],
            vpdq: None,
        })
        .unwrap()
    }

    #[test]
    fn upserts_and_tombstones() {
        let key = record_key("ncii", Signal::Pdq, PDQ);
        assert_eq!(key, format!("ncii/pdq/{PDQ}"));
        let bytes = value("ncii", "pdq", PDQ, "case-1");
        let up = decode(Some(key.as_bytes()), Some(&bytes)).unwrap();
        assert_eq!(up.bank, "ncii");
        assert_eq!(up.change, Change::Upsert { entry: Cow::Borrowed("case-1") });
        let down = decode(Some(key.as_bytes()), None).unwrap();
        assert_eq!(down.change, Change::Withdraw);
        assert_eq!(down.hash, up.hash);
    }

    #[test]
    fn unknown_fields_are_ignored_for_later_writers() {
        let mut v: serde_json::Value = serde_json::from_slice(&value("b", "md5", MD5, "e")).unwrap();
        v["status"] = "quarantined".into();
        let key = record_key("b", Signal::Md5, MD5);
        assert!(decode(Some(key.as_bytes()), Some(&serde_json::to_vec(&v).unwrap())).is_ok());
    }

    #[test]
    fn each_class_of_bad_record_is_rejected_with_its_reason_and_without_the_hash() {
        let good_key = record_key("b", Signal::Md5, MD5);
        let secret = "deadbeefdeadbeefdeadbeefdeadbee"; // 31 characters: a bad md5
        type Case = (Option<Vec<u8>>, Option<Vec<u8>>, &'static str);
        let cases: Vec<Case> = vec![
            (None, None, "bad_key"),
            (Some(b"no-slashes".to_vec()), None, "bad_key"),
            (Some(format!("b/sha1/{MD5}").into_bytes()), None, "bad_key"),
            (Some(format!("b/MD5/{MD5}").into_bytes()), None, "bad_key"),
            (Some(format!("a b/md5/{MD5}").into_bytes()), None, "bad_key"),
            (Some(format!("b/md5/{secret}").into_bytes()), None, "bad_hash"),
            (Some(format!("b/md5/{}", MD5.to_uppercase()).into_bytes()), None, "bad_hash"),
            (Some(format!("b/pdq/{}", "0".repeat(64)).into_bytes()), None, "zero_pdq"),
            (Some(good_key.clone().into_bytes()), Some(b"{not json".to_vec()), "malformed_value"),
            (Some(good_key.clone().into_bytes()), Some(br#"{"schema":"perisai.bank_entry/v1"}"#.to_vec()), "malformed_value"),
            (Some(good_key.clone().into_bytes()), Some(br#"{"schema":"perisai.bank_entry/v9"}"#.to_vec()), "schema_version"),
            (Some(good_key.clone().into_bytes()), Some(value("other", "md5", MD5, "e")), "key_mismatch"),
            (Some(good_key.clone().into_bytes()), Some(value("b", "md5", "00000000000000000000000000000001", "e")), "key_mismatch"),
            (Some(good_key.clone().into_bytes()), Some(value("b", "md5", MD5, " ")), "bad_entry"),
            (
                Some(good_key.clone().into_bytes()),
                Some(format!(r#"{{"schema":"perisai.bank_entry/v1","bank":"b","signal":"md5","hash":"{MD5}","entry":"e","source":"s","added_at":"t","tags":"{secret}"}}"#).into_bytes()),
                "malformed_value",
            ),
            (
                Some(good_key.clone().into_bytes()),
                Some(br#"{"schema":"perisai.bank_entry/v1","schema":"x","bank":"b"}"#.to_vec()),
                "malformed_value",
            ),
            (Some(good_key.clone().into_bytes()), Some(value("b", "md5", MD5, &"x".repeat(257))), "bad_entry"),
            (Some(good_key.clone().into_bytes()), Some(value("b", "md5", MD5, "a\u{1b}[31m")), "bad_entry"),
        ];
        for (key, value, reason) in cases {
            let err = decode(key.as_deref(), value.as_deref()).unwrap_err();
            assert_eq!(err.reason(), reason, "{err} for key {:?}", key.as_deref().map(String::from_utf8_lossy));
            assert!(!err.to_string().contains(secret) && !err.to_string().contains(MD5), "hash leaked: {err}");
        }
    }

    /// The published JSON Schema and the decoder agree: what one accepts the other does, for a
    /// good record and for each way a value can be wrong.
    #[test]
    fn records_match_the_published_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/schemas/bank_entry.schema.json")).expect("schema JSON");
        let validator = jsonschema::validator_for(&schema).expect("valid schema");
        let check = |bank: &str, signal: &str, hash: &str, entry: &str, valid: bool| {
            let bytes = value(bank, signal, hash, entry);
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(validator.is_valid(&json), valid, "schema on {json}");
            let key = format!("{bank}/{signal}/{hash}");
            assert_eq!(decode(Some(key.as_bytes()), Some(&bytes)).is_ok(), valid, "decoder on {json}");
        };
        check("ncii", "pdq", PDQ, "case-1", true);
        check("ncii", "md5", MD5, "case-1", true);
        check("ncii", "md5", PDQ, "case-1", false);
        check("ncii", "pdq", MD5, "case-1", false);
        check("ncii", "pdq", &PDQ.to_uppercase(), "case-1", false);
        check("a b", "md5", MD5, "case-1", false);
        check("ncii", "sha1", MD5, "case-1", false);
        check("ncii", "md5", MD5, "", false);
        check("ncii", "md5", MD5, &"x".repeat(257), false);
    }

    /// A vPDQ entry: its key's hash is the digest of its features, which the value carries; the
    /// schema and the decoder agree on the shape, the decoder alone checks the digest.
    #[test]
    fn vpdq_records_carry_their_features_under_their_digest() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/schemas/bank_entry.schema.json")).expect("schema JSON");
        let validator = jsonschema::validator_for(&schema).expect("valid schema");
        let features = vec![format!("{PDQ},100,0.000"), format!("{PDQ},90,1.000")];
        let video = super::super::video::VideoEntry::parse(&serde_json::to_string(&features).unwrap()).unwrap();
        let digest = hex::encode(video.digest);
        let record = |hash: &str, vpdq: Option<Vec<String>>| {
            let value = BankEntryRecord {
                schema: BANK_ENTRY_SCHEMA.into(),
                bank: "ncii".into(),
                signal: "vpdq".into(),
                hash: hash.into(),
                entry: "case-9".into(),
                source: "threatexchange".into(),
                added_at: "2026-12-08T00:00:00Z".into(),
                tags: vec![],
                vpdq,
            };
            serde_json::to_vec(&value).unwrap()
        };
        let key = format!("ncii/vpdq/{digest}");
        assert_eq!(record_key("ncii", Signal::Vpdq, &serde_json::to_string(&features).unwrap()), key, "keyed by the digest");
        let good = record(&digest, Some(features.clone()));
        assert!(validator.is_valid(&serde_json::from_slice(&good).unwrap()));
        let update = decode(Some(key.as_bytes()), Some(&good)).unwrap();
        assert_eq!(update.video.as_ref().map(|v| v.frames.len()), Some(2));
        let bare = record(&digest, None);
        assert!(!validator.is_valid(&serde_json::from_slice(&bare).unwrap()));
        assert_eq!(decode(Some(key.as_bytes()), Some(&bare)).unwrap_err().reason(), "malformed_value");
        let other = record(&digest, Some(vec![features[1].clone(), features[0].clone()]));
        assert_eq!(decode(Some(key.as_bytes()), Some(&other)).unwrap_err().reason(), "key_mismatch", "features of another video");
        let withdraw = decode(Some(key.as_bytes()), None).unwrap();
        assert_eq!(withdraw.change, Change::Withdraw);
    }

    #[test]
    fn quarantine_status_records() {
        let key = quarantine_key("ncii", Signal::Pdq, PDQ);
        let release = release_key("ncii", Signal::Pdq, PDQ);
        let record = |bank: &str, schema: &str, status: &str| {
            serde_json::to_vec(&QuarantineRecord {
                schema: schema.into(),
                bank: bank.into(),
                signal: "pdq".into(),
                hash: PDQ.into(),
                status: status.into(),
                reason: "flood".into(),
                matches_last_minute: Some(900),
                baseline_per_minute: Some(1.5),
                at: "2026-11-29T12:00:00Z".into(),
                by: "w-1".into(),
            })
            .unwrap()
        };
        let status = |bank: &str, schema: &str| record(bank, schema, "quarantined");
        let quarantined = status("ncii", QUARANTINE_SCHEMA);
        assert_eq!(decode(Some(key.as_bytes()), Some(&quarantined)).unwrap().change, Change::Quarantine);
        let released = record("ncii", QUARANTINE_SCHEMA, "released");
        assert_eq!(decode(Some(release.as_bytes()), Some(&released)).unwrap().change, Change::Release);
        assert_eq!(decode(Some(key.as_bytes()), None).unwrap().change, Change::ClearQuarantine);
        assert_eq!(decode(Some(release.as_bytes()), None).unwrap().change, Change::ClearRelease);
        // Each key holds its own status only.
        assert_eq!(decode(Some(key.as_bytes()), Some(&released)).unwrap_err().reason(), "malformed_value");
        assert_eq!(decode(Some(release.as_bytes()), Some(&quarantined)).unwrap_err().reason(), "malformed_value");
        assert_eq!(
            decode(Some(key.as_bytes()), Some(&record("ncii", QUARANTINE_SCHEMA, "maybe"))).unwrap_err().reason(),
            "malformed_value"
        );
        let reason = |k: &str, v: Option<&[u8]>| decode(Some(k.as_bytes()), v).unwrap_err().reason();
        assert_eq!(reason(&key, Some(&status("other", QUARANTINE_SCHEMA))), "key_mismatch");
        assert_eq!(reason(&key, Some(&status("ncii", BANK_ENTRY_SCHEMA))), "schema_version");
        assert_eq!(reason(&format!("ncii/pdq/{PDQ}/other"), None), "bad_key");
        // An entry value under a quarantine key (or the other way round) is refused.
        assert_eq!(reason(&key, Some(&value("ncii", "pdq", PDQ, "e"))), "schema_version");
        assert_eq!(reason(&record_key("ncii", Signal::Pdq, PDQ), Some(&status("ncii", QUARANTINE_SCHEMA))), "schema_version");
    }

    #[test]
    fn bank_of_key_only_for_well_formed_names() {
        assert_eq!(bank_of_key(format!("ncii/md5/{MD5}").as_bytes()), Some("ncii"));
        assert_eq!(bank_of_key(b"a b/md5/x"), None);
        assert_eq!(bank_of_key(b"nokey"), None);
    }
}
