//! Partner hash-list formats: turn an uploaded file into import rows.
//!
//! Three formats are read:
//!
//! - `csv` (ours): a header naming at least `signal`, `hash` and `entry` (any case, any order;
//!   other columns ignored), plus an optional `tags` column whose tags are separated by `;` or
//!   whitespace. `#` comment lines and blank lines are skipped.
//! - `te` (ThreatExchange), in one of two shapes told apart by the first line that carries data:
//!   plain `<signal_type> <hash>` lines (anything after the hash is ignored: the CLI appends the
//!   collaboration and metadata there), or the CLI's CSV export with the header
//!   `signal_type,signal_str,collab,category,tags`. Only hash types we match on are accepted.
//! - `stopncii`: JSON lines, one StopNCII hash record per line; or a whole file holding one
//!   `{"hashRecords": [...]}` response or a JSON array of records. `hashStatus` `Withdrawn` or
//!   `Deleted` makes the row a withdrawal.
//!
//! A UTF-8 byte order mark is skipped and CRLF line endings work in every format. Bad rows do not
//! stop a parse: they come back as [`RowError`]s beside the good rows.
//!
//! Bank contents are sensitive, so no error built here ever contains a hash value (or an entry
//! id or tag). Names read from the file (signal types, statuses, header columns) are echoed only
//! when they look like names, never when they could be a hash (see `shown`).

use serde_json::{Map, Value};

use super::hash_text::normalize_hash;
use super::record::check_entry;
use super::Signal;

/// Which partner format a file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Te,
    StopNcii,
}

impl Format {
    /// `csv`, `te` or `stopncii` (any case).
    pub fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "te" => Some(Format::Te),
            "stopncii" => Some(Format::StopNcii),
            _ => None,
        }
    }

    /// The source an import in this format is recorded under when the operator names none.
    pub fn default_source(self) -> &'static str {
        match self {
            Format::Csv => "manual",
            Format::Te => "threatexchange",
            Format::StopNcii => "stopncii",
        }
    }
}

/// One usable row of an import file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRow {
    /// 1-based line number in the file. For a `stopncii` file that is one JSON document
    /// (`{"hashRecords": [...]}` or an array) it is the 1-based index of the record instead:
    /// serde_json does not report where inside a document each element started.
    pub line: u64,
    pub signal: Signal,
    /// Lowercase hex, validated by `normalize_hash`.
    pub hash: String,
    /// The partner's / case id when the format carries one.
    pub entry: Option<String>,
    pub tags: Vec<String>,
    /// True: this row withdraws the hash (it becomes a tombstone).
    pub withdraw: bool,
}

/// A rejected row: line and problem, never the hash value itself (banks are sensitive).
/// `line` follows the same rule as [`ImportRow::line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub problem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file as a whole is unusable (e.g. CSV header without the needed columns).
    #[error("{0}")]
    Unusable(String),
}

/// Parses a whole file. Good rows and bad rows are both returned (bad rows do not stop the parse);
/// only a file-level problem is an Err.
pub fn parse(format: Format, bytes: &[u8]) -> Result<(Vec<ImportRow>, Vec<RowError>), FormatError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Parsed::default();
    match format {
        Format::Csv => parse_csv(bytes, &mut out)?,
        Format::Te => parse_te(bytes, &mut out)?,
        Format::StopNcii => parse_stopncii(bytes, &mut out)?,
    }
    Ok((out.rows, out.errors))
}

#[derive(Default)]
struct Parsed {
    rows: Vec<ImportRow>,
    errors: Vec<RowError>,
}

impl Parsed {
    fn push(&mut self, line: u64, result: Result<ImportRow, String>) {
        match result {
            Ok(row) => self.rows.push(row),
            Err(problem) => self.errors.push(RowError { line, problem }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// csv (ours)

/// The first characters a spreadsheet evaluates a cell on (a formula, or a command through DDE).
const FORMULA_TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A cell as our CSV files write it (OWASP's advice against CSV injection): one that begins with a
/// character a spreadsheet would evaluate gets an apostrophe in front, which spreadsheets show as
/// text and [`from_spreadsheet_safe`] removes again.
pub fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(FORMULA_TRIGGERS) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

/// A CSV cell as [`spreadsheet_safe`] wrote it, back to its value: so an export imports unchanged.
fn from_spreadsheet_safe(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(FORMULA_TRIGGERS) => rest,
        _ => cell,
    }
}

fn parse_csv(bytes: &[u8], out: &mut Parsed) -> Result<(), FormatError> {
    let mut records = Records::new(bytes);
    let header = match records.next() {
        None => return Err(FormatError::Unusable("no header line (need columns signal, hash, entry)".into())),
        Some((_, Err(problem))) => return Err(FormatError::Unusable(format!("header line: {problem}"))),
        Some((_, Ok(header))) => header,
    };
    let column = |want: &str| header.iter().position(|h| h.eq_ignore_ascii_case(want));
    let (Some(signal_col), Some(hash_col), Some(entry_col)) = (column("signal"), column("hash"), column("entry"))
    else {
        let found: Vec<String> = header.iter().map(|h| shown(h)).collect();
        return Err(FormatError::Unusable(format!(
            "header must contain columns signal, hash, entry (found: {})",
            found.join(", ")
        )));
    };
    let tags_col = column("tags");
    for (line, fields) in records {
        let result = fields.and_then(|fields| {
            let field = |i: usize| fields.get(i).map_or("", |f| from_spreadsheet_safe(f));
            let signal = match field(signal_col) {
                "" => return Err("missing signal".to_string()),
                text => Signal::parse(text)
                    .ok_or_else(|| format!("unknown signal {} (expected md5, sha256 or pdq)", shown(text)))?,
            };
            let tags = tags_col.map_or_else(Vec::new, |i| split_tags(field(i), &[';']));
            build(line, signal, field(hash_col), Some(field(entry_col)), tags, false)
        });
        out.push(line, result);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// te (ThreatExchange)

fn parse_te(bytes: &[u8], out: &mut Parsed) -> Result<(), FormatError> {
    let (body, _) = skip_preamble(bytes);
    let first = body.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first).to_ascii_lowercase();
    let columns: Vec<&str> = first.split(',').map(|c| c.trim().trim_matches('"')).collect();
    if columns.contains(&"signal_type") && columns.contains(&"signal_str") {
        parse_te_csv(bytes, out);
    } else {
        for (line, raw) in lines(bytes) {
            if let Some(result) = te_plain_line(line, raw) {
                out.push(line, result);
            }
        }
    }
    Ok(())
}

/// The CLI's `--csv` export: `signal_type,signal_str,collab,category,tags`, columns found by name.
fn parse_te_csv(bytes: &[u8], out: &mut Parsed) {
    let mut records = Records::new(bytes);
    // parse_te only comes here when the first line names signal_type and signal_str.
    let Some((_, Ok(header))) = records.next() else { return };
    let column = |want: &str| header.iter().position(|h| h.eq_ignore_ascii_case(want));
    let (Some(type_col), Some(str_col)) = (column("signal_type"), column("signal_str")) else { return };
    let (collab_col, category_col, tags_col) = (column("collab"), column("category"), column("tags"));
    for (line, fields) in records {
        let result = fields.and_then(|fields| {
            let field = |i: Option<usize>| i.and_then(|i| fields.get(i)).map_or("", String::as_str);
            let signal = te_signal(field(Some(type_col)))?;
            let mut tags = split_tags(field(tags_col), &[',', ';']);
            if !field(category_col).is_empty() {
                tags.push(field(category_col).to_string());
            }
            build(line, signal, field(Some(str_col)), Some(field(collab_col)), tags, false)
        });
        out.push(line, result);
    }
}

/// One plain `<signal_type> <hash>` line; None for blank and comment lines.
fn te_plain_line(line: u64, raw: &[u8]) -> Option<Result<ImportRow, String>> {
    let Ok(text) = std::str::from_utf8(raw) else { return Some(Err("invalid UTF-8".into())) };
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    // A lone token is refused rather than guessed at: it may be a hash printed without its type.
    let Some((kind, rest)) = text.split_once(char::is_whitespace) else {
        return Some(Err("expected `<signal_type> <hash>`".into()));
    };
    Some(te_signal(kind).and_then(|signal| {
        // A vPDQ signal string (a JSON list) holds spaces; other hashes are one token.
        let hash = if signal == Signal::Vpdq { rest.trim() } else { rest.split_whitespace().next().unwrap_or_default() };
        build(line, signal, hash, None, Vec::new(), false)
    }))
}

/// ThreatExchange signal type names for the hashes we can match; text, URL and TMK signals are not.
fn te_signal(name: &str) -> Result<Signal, String> {
    match name.trim().to_ascii_lowercase().as_str() {
        "" => Err("missing signal type".into()),
        "pdq" => Ok(Signal::Pdq),
        "md5" | "video_md5" | "photo_md5" => Ok(Signal::Md5),
        "sha256" | "video_sha256" | "photo_sha256" => Ok(Signal::Sha256),
        "vpdq" => Ok(Signal::Vpdq),
        _ => Err(format!("unsupported signal type {}", shown(name.trim()))),
    }
}

// ---------------------------------------------------------------------------------------------
// stopncii

fn parse_stopncii(bytes: &[u8], out: &mut Parsed) -> Result<(), FormatError> {
    // A whole-file document (an API response saved as is) is tried first; anything that does not
    // parse as one document is read as JSON lines.
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    if matches!(bytes.get(start), Some(b'{' | b'[')) {
        if let Ok(document) = serde_json::from_slice::<Value>(bytes) {
            let records = match document {
                Value::Array(records) => records,
                Value::Object(mut response) if response.contains_key("hashRecords") => {
                    match response.remove("hashRecords") {
                        Some(Value::Array(records)) => records,
                        _ => return Err(FormatError::Unusable("hashRecords is not an array".into())),
                    }
                }
                // One record, perhaps pretty-printed over several lines: its line is where it starts.
                record => {
                    let line = 1 + bytes[..start].iter().filter(|&&b| b == b'\n').count() as u64;
                    out.push(line, ncii_record(line, &record));
                    return Ok(());
                }
            };
            for (index, record) in (1u64..).zip(&records) {
                out.push(index, ncii_record(index, record));
            }
            return Ok(());
        }
    }
    for (line, raw) in lines(bytes) {
        if raw.trim_ascii().is_empty() {
            continue;
        }
        let result = match std::str::from_utf8(raw) {
            Err(_) => Err("invalid UTF-8".to_string()),
            // serde_json's own message is not passed on: only its column, which says nothing of the data.
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Err(e) => Err(format!("not a JSON object (invalid JSON at column {})", e.column())),
                Ok(record) => ncii_record(line, &record),
            },
        };
        out.push(line, result);
    }
    Ok(())
}

fn ncii_record(line: u64, record: &Value) -> Result<ImportRow, String> {
    let Value::Object(record) = record else { return Err("not a JSON object".into()) };
    let signal = match json_str(record, "signalType")? {
        None => return Err("missing signalType".into()),
        Some(t) if t.trim().eq_ignore_ascii_case("ImagePDQ") => Signal::Pdq,
        Some(t) if t.trim().eq_ignore_ascii_case("VideoMD5") => Signal::Md5,
        Some(t) => return Err(format!("unsupported signal type {}", shown(t.trim()))),
    };
    let hash = json_str(record, "hashValue")?.ok_or("missing hashValue")?;
    // The reference Python client looks at the wrong field and so never withdraws; hashStatus is
    // the record's aggregate state, and Withdrawn/Deleted mean "delete this hash".
    let withdraw = match json_str(record, "hashStatus")? {
        None => false,
        Some(status) => match status.trim().to_ascii_lowercase().as_str() {
            "active" => false,
            "withdrawn" | "deleted" => true,
            _ => {
                return Err(format!(
                    "unknown hashStatus {} (expected Active, Withdrawn or Deleted)",
                    shown(status.trim())
                ))
            }
        },
    };
    let entry = case_number(record.get("caseNumbers"))?;
    let tags = match record.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| t.as_str().map(|t| t.trim().to_string()).ok_or("tags must be strings"))
            .filter(|t| !matches!(t, Ok(t) if t.is_empty()))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("tags must be an array".into()),
    };
    build(line, signal, hash, entry.as_deref(), tags, withdraw)
}

/// A string field: absent or null is None; any other type is an error naming the field only.
fn json_str<'a>(record: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match record.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

/// The first case number. The API documents an array of strings or numbers; the reference client
/// models it as an object keyed by case number, so an object's smallest key is accepted too
/// (smallest, not first: key order depends on serde_json's `preserve_order` feature).
fn case_number(value: Option<&Value>) -> Result<Option<String>, String> {
    let first = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => match items.first() {
            None => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err("caseNumbers must hold strings or numbers".into()),
        },
        Some(Value::Object(cases)) => match cases.keys().min() {
            None => return Ok(None),
            Some(key) => key.clone(),
        },
        Some(_) => return Err("caseNumbers must be an array".into()),
    };
    Ok(Some(first))
}

// ---------------------------------------------------------------------------------------------
// shared

/// Builds a row: validates the hash (lowercased; all-zero PDQ refused), the entry id and tags.
fn build(
    line: u64,
    signal: Signal,
    hash: &str,
    entry: Option<&str>,
    tags: Vec<String>,
    withdraw: bool,
) -> Result<ImportRow, String> {
    if hash.trim().is_empty() {
        return Err("missing hash".into());
    }
    let hash = normalize_hash(signal, hash)?;
    let entry = match entry.map(str::trim) {
        None | Some("") => None,
        // The same rules as a bank topic record's entry id.
        Some(e) => Some(check_entry(e).map_err(|rejection| rejection.to_string())?.to_string()),
    };
    // Tags end up in review screens and metrics labels: no control characters, no repeats.
    let mut unique: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        if tag.chars().any(char::is_control) {
            return Err("tag contains control characters".into());
        }
        if !unique.contains(&tag) {
            unique.push(tag);
        }
    }
    Ok(ImportRow { line, signal, hash, entry, tags: unique, withdraw })
}

/// Splits a tags field on whitespace and the given separators, dropping empty pieces.
fn split_tags(text: &str, separators: &[char]) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || separators.contains(&c))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// A name read from the file (signal type, status, header column), quoted for an error message,
/// or a placeholder when it could be bank data. Hashes are hex, so a run of 8 or more hex digits,
/// anything long, or anything outside a plain name alphabet is never echoed.
fn shown(name: &str) -> String {
    let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b' '));
    let mut hex_run = 0;
    let hexy = name.bytes().any(|b| {
        hex_run = if b.is_ascii_hexdigit() { hex_run + 1 } else { 0 };
        hex_run >= 8
    });
    if !name.is_empty() && name.len() <= 24 && plain && !hexy {
        format!("{name:?}")
    } else {
        "(value not shown)".into()
    }
}

/// Lines numbered from 1, split on `\n` with a trailing `\r` removed.
fn lines(bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    (1u64..).zip(bytes.split(|&b| b == b'\n')).map(|(n, l)| (n, l.strip_suffix(b"\r").unwrap_or(l)))
}

fn is_blank_or_comment(line: &[u8]) -> bool {
    let line = line.trim_ascii();
    line.is_empty() || line.starts_with(b"#")
}

/// Skips the blank and `#` comment lines before a header, so the header is the first line with
/// data; returns the rest and how many lines were skipped.
fn skip_preamble(bytes: &[u8]) -> (&[u8], u64) {
    let mut rest = bytes;
    let mut skipped = 0;
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1);
        if !is_blank_or_comment(&rest[..end]) {
            break;
        }
        rest = &rest[end..];
        skipped += 1;
    }
    (rest, skipped)
}

/// CSV records as (line, trimmed fields), skipping comments and blank rows. A row that is not
/// UTF-8 is an error for that row only. The header is the first record: the caller takes it.
struct Records<'a> {
    body: &'a [u8],
    reader: csv::Reader<&'a [u8]>,
    record: csv::ByteRecord,
    /// Lines before `body` in the file.
    skipped: u64,
    /// Newlines in `body[..counted_to]`: record offsets only grow, so they are counted once.
    newlines: u64,
    counted_to: usize,
}

impl<'a> Records<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        // Blank and comment lines before the header are skipped here so that an indented
        // comment (which the csv reader does not know) cannot be taken for the header.
        let (body, skipped) = skip_preamble(bytes);
        let reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).comment(Some(b'#')).from_reader(body);
        Records { body, reader, record: csv::ByteRecord::new(), skipped, newlines: 0, counted_to: 0 }
    }

    /// The file line of the record the reader places at byte `at`. The csv crate's own line
    /// numbers drift on blank lines, comments and CRLF, and its byte offset is where the previous
    /// record ended, so the line ends, blank lines and comments that lie between are passed over
    /// here (the same ones the reader skips) before counting newlines.
    fn line_at(&mut self, at: u64) -> u64 {
        let body = self.body;
        let mut at = usize::try_from(at).map_or(body.len(), |at| at.min(body.len()));
        loop {
            match body.get(at) {
                Some(b'\r' | b'\n') => at += 1,
                Some(b'#') if at == 0 || body[at - 1] == b'\n' => {
                    at = body[at..].iter().position(|&b| b == b'\n').map_or(body.len(), |i| at + i + 1);
                }
                _ => break,
            }
        }
        if at > self.counted_to {
            self.newlines += body[self.counted_to..at].iter().filter(|&&b| b == b'\n').count() as u64;
            self.counted_to = at;
        }
        self.skipped + 1 + self.newlines
    }
}

impl Iterator for Records<'_> {
    type Item = (u64, Result<Vec<String>, String>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.reader.read_byte_record(&mut self.record) {
                Ok(false) => return None,
                Ok(true) => {
                    let line = self.line_at(self.record.position().map_or(0, |p| p.byte()));
                    let fields: Result<Vec<String>, _> =
                        self.record.iter().map(|f| std::str::from_utf8(f).map(|f| f.trim().to_string())).collect();
                    match fields {
                        Ok(fields) if fields.iter().all(String::is_empty) => continue,
                        Ok(fields) => return Some((line, Ok(fields))),
                        Err(_) => return Some((line, Err("invalid UTF-8".into()))),
                    }
                }
                // Not expected from a flexible reader over a slice; csv's message may quote the
                // row, so only the fact is passed on.
                Err(e) => {
                    let line = self.line_at(e.position().map_or(0, |p| p.byte()));
                    return Some((line, Err("malformed CSV row".into())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MD5: &str = "900150983cd24fb0d6963f7d28e17f72";
    const SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const PDQ: &str = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22";
    /// 31 hex characters: a bad hash that must never appear in an error.
    const PLANT: &str = "deadbeefdeadbeefdeadbeefdeadbee";

    fn ok(format: Format, text: &str) -> (Vec<ImportRow>, Vec<RowError>) {
        match parse(format, text.as_bytes()) {
            Ok(parsed) => parsed,
            Err(e) => panic!("file refused: {e}"),
        }
    }

    fn lines_of(errors: &[RowError]) -> Vec<u64> {
        errors.iter().map(|e| e.line).collect()
    }

    fn zero_pdq() -> String {
        "0".repeat(64)
    }

    #[test]
    fn format_names_and_sources() {
        assert_eq!(Format::parse("csv"), Some(Format::Csv));
        assert_eq!(Format::parse(" TE "), Some(Format::Te));
        assert_eq!(Format::parse("StopNCII"), Some(Format::StopNcii));
        assert_eq!(Format::parse("ncmec"), None);
        assert_eq!(Format::Csv.default_source(), "manual");
        assert_eq!(Format::Te.default_source(), "threatexchange");
        assert_eq!(Format::StopNcii.default_source(), "stopncii");
    }

    // ---- csv

    #[test]
    fn cells_a_spreadsheet_would_evaluate_are_written_as_text_and_read_back() {
        for cell in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            let safe = spreadsheet_safe(cell);
            assert_eq!(safe, format!("'{cell}"));
            assert_eq!(from_spreadsheet_safe(&safe), cell);
        }
        for cell in ["case-1", "'quoted", "a=b", ""] {
            assert_eq!(spreadsheet_safe(cell), cell);
            assert_eq!(from_spreadsheet_safe(cell), cell);
        }
        let text = format!("signal,hash,entry\nmd5,{},'=HYPERLINK(1)\n", "a".repeat(32));
        let (rows, errors) = ok(Format::Csv, &text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rows[0].entry.as_deref(), Some("=HYPERLINK(1)"));
        let text = format!("signal,hash,entry\nmd5,{},case\u{202E}gpj.exe\n", "a".repeat(32));
        let (rows, errors) = ok(Format::Csv, &text);
        assert!(rows.is_empty() && errors[0].problem.contains("invisible formatting"), "{errors:?}");
    }

    #[test]
    fn csv_reads_columns_by_name_in_any_order() {
        let text = format!(
            "Entry,note,HASH,Signal,Tags\n\
             case-1,x,{},md5,a;b  c\n\
             ,y,{SHA256},SHA256,\n\
             \"case, 3\",z,{PDQ},pdq,a;a\n",
            MD5.to_uppercase()
        );
        let (rows, errors) = ok(Format::Csv, &text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            rows,
            vec![
                ImportRow {
                    line: 2,
                    signal: Signal::Md5,
                    hash: MD5.into(),
                    entry: Some("case-1".into()),
                    tags: vec!["a".into(), "b".into(), "c".into()],
                    withdraw: false,
                },
                ImportRow {
                    line: 3,
                    signal: Signal::Sha256,
                    hash: SHA256.into(),
                    entry: None,
                    tags: vec![],
                    withdraw: false,
                },
                ImportRow {
                    line: 4,
                    signal: Signal::Pdq,
                    hash: PDQ.into(),
                    entry: Some("case, 3".into()),
                    tags: vec!["a".into()],
                    withdraw: false,
                },
            ]
        );
    }

    #[test]
    fn csv_skips_comments_and_blank_lines_keeping_line_numbers() {
        let text = format!("# exported 2024-01-01\n\n  # indented comment\nsignal,hash,entry\n\n# note\n   \nmd5,{MD5},e1\n,,\nmd5,{MD5},e2\n");
        let (rows, errors) = ok(Format::Csv, &text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![8, 10]);
        assert_eq!(rows[1].entry.as_deref(), Some("e2"));
    }

    #[test]
    fn csv_mixed_good_and_bad_rows_report_their_lines() {
        let text = format!(
            "signal,hash,entry\n\
             md5,{MD5},good-2\n\
             md4,{MD5},bad-3\n\
             pdq,{zero},bad-4\n\
             md5,,bad-5\n\
             ,{MD5},bad-6\n\
             sha256,{MD5},bad-7\n\
             md5,{MD5},{long}\n\
             md5,{MD5},a\u{7}b\n\
             md5,{MD5},good-10\n\
             md5,{MD5}\n",
            zero = zero_pdq(),
            long = "x".repeat(257)
        );
        let (rows, errors) = ok(Format::Csv, &text);
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 10, 11]);
        assert_eq!(rows[2].entry, None, "short row: entry column absent");
        assert_eq!(lines_of(&errors), vec![3, 4, 5, 6, 7, 8, 9]);
        let problems: Vec<&str> = errors.iter().map(|e| e.problem.as_str()).collect();
        assert_eq!(problems[0], "unknown signal \"md4\" (expected md5, sha256 or pdq)");
        assert!(problems[1].contains("all zeros"), "{}", problems[1]);
        assert_eq!(problems[2], "missing hash");
        assert_eq!(problems[3], "missing signal");
        assert_eq!(problems[4], "sha256 hash must be 64 hex characters");
        assert_eq!(problems[5], "entry id longer than 256 bytes");
        assert_eq!(problems[6], "entry id contains control characters");
    }

    #[test]
    fn csv_line_numbers_survive_quotes_comments_and_crlf() {
        // The csv crate's own line count drifts on each of these; ours must not.
        let text = format!(
            "signal,hash,entry,note\r\n\r\n\r\n# c\r\nmd5,{MD5},e5,\"multi\r\nline\"\r\n#c2\r\n\r\nmd5,bad,e9\r\nmd5,{MD5},e10\r\n"
        );
        let (rows, errors) = ok(Format::Csv, &text);
        let got: Vec<(u64, Option<&str>)> = rows.iter().map(|r| (r.line, r.entry.as_deref())).collect();
        assert_eq!(got, vec![(5, Some("e5")), (10, Some("e10"))]);
        assert_eq!(lines_of(&errors), vec![9]);
    }

    #[test]
    fn csv_invalid_utf8_row_is_a_row_error() {
        let mut bytes = format!("signal,hash,entry\nmd5,{MD5},a\n").into_bytes();
        bytes.extend_from_slice(b"md5,x,\xff\xfe\n");
        bytes.extend_from_slice(format!("md5,{MD5},c\n").as_bytes());
        let (rows, errors) = parse(Format::Csv, &bytes).expect("parse");
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(errors, vec![RowError { line: 3, problem: "invalid UTF-8".into() }]);
    }

    #[test]
    fn csv_header_without_needed_columns_is_unusable() {
        let err = parse(Format::Csv, b"hash,Entry,notes\nx,y,z\n").expect_err("must refuse");
        let FormatError::Unusable(message) = &err;
        assert!(message.contains("signal, hash, entry"), "{message}");
        assert!(message.contains("\"hash\", \"Entry\", \"notes\""), "{message}");
    }

    #[test]
    fn csv_empty_file_is_unusable() {
        assert!(parse(Format::Csv, b"").is_err());
        assert!(parse(Format::Csv, b"\xEF\xBB\xBF\n# only a comment\n").is_err());
    }

    #[test]
    fn csv_header_only_is_an_empty_import() {
        let (rows, errors) = ok(Format::Csv, "signal,hash,entry\n");
        assert!(rows.is_empty() && errors.is_empty());
    }

    #[test]
    fn csv_header_that_is_really_a_data_row_does_not_echo_it() {
        let err = parse(Format::Csv, format!("md5,{MD5},case-1\n").as_bytes()).expect_err("no header");
        let message = err.to_string();
        assert!(!message.contains(MD5), "{message}");
        assert!(message.contains("(value not shown)"), "{message}");
        assert!(message.contains("\"md5\""), "a plain name is still shown: {message}");
    }

    // ---- te

    #[test]
    fn te_plain_lines_map_signal_types() {
        let text = format!(
            "# from threatexchange dataset -S\n\
             pdq {PDQ}\n\
             video_md5\t{MD5}\n\
             photo_md5   {MD5}\n\
             md5 {MD5}\n\
             \n\
             video_sha256 {SHA256}\n\
             photo_sha256 {SHA256}\n\
             SHA256 \t {SHA256}\n\
             PDQ {} 'My Collab' metadata(...)\n",
            PDQ.to_uppercase()
        );
        let (rows, errors) = ok(Format::Te, &text);
        assert!(errors.is_empty(), "{errors:?}");
        let got: Vec<(u64, Signal)> = rows.iter().map(|r| (r.line, r.signal)).collect();
        assert_eq!(
            got,
            vec![
                (2, Signal::Pdq),
                (3, Signal::Md5),
                (4, Signal::Md5),
                (5, Signal::Md5),
                (7, Signal::Sha256),
                (8, Signal::Sha256),
                (9, Signal::Sha256),
                (10, Signal::Pdq),
            ]
        );
        assert_eq!(rows[7].hash, PDQ, "uppercase lowercased");
        assert!(rows.iter().all(|r| r.entry.is_none() && r.tags.is_empty() && !r.withdraw));
    }

    #[test]
    fn te_plain_bad_lines() {
        let mut bytes =
            format!("pdq {PDQ}\nurl https://example.com/x\nraw_text hello there\n{MD5}\npdq {}\n", zero_pdq())
                .into_bytes();
        bytes.extend_from_slice(b"pdq \xff\n");
        bytes.extend_from_slice(format!("md5 {MD5}\n").as_bytes());
        let (rows, errors) = parse(Format::Te, &bytes).expect("parse");
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![1, 7]);
        assert_eq!(lines_of(&errors), vec![2, 3, 4, 5, 6]);
        assert_eq!(errors[0].problem, "unsupported signal type \"url\"");
        assert_eq!(errors[1].problem, "unsupported signal type \"raw_text\"");
        assert_eq!(errors[2].problem, "expected `<signal_type> <hash>`");
        assert!(errors[3].problem.contains("all zeros"));
        assert_eq!(errors[4].problem, "invalid UTF-8");
    }

    #[test]
    fn te_csv_export() {
        let text = format!(
            "Signal_Type,Signal_Str,Collab,Category,Tags\n\
             pdq,{PDQ},My Collab,TRUE_POSITIVE,tag1 tag2\n\
             video_md5,{MD5},,,\"a,b;c\"\n\
             url,https://example.com,My Collab,TRUE_POSITIVE,\n\
             photo_sha256,{SHA256}, Other ,INVESTIGATION_SEED,x\n"
        );
        let (rows, errors) = ok(Format::Te, &text);
        assert_eq!(
            rows,
            vec![
                ImportRow {
                    line: 2,
                    signal: Signal::Pdq,
                    hash: PDQ.into(),
                    entry: Some("My Collab".into()),
                    tags: vec!["tag1".into(), "tag2".into(), "TRUE_POSITIVE".into()],
                    withdraw: false,
                },
                ImportRow {
                    line: 3,
                    signal: Signal::Md5,
                    hash: MD5.into(),
                    entry: None,
                    tags: vec!["a".into(), "b".into(), "c".into()],
                    withdraw: false,
                },
                ImportRow {
                    line: 5,
                    signal: Signal::Sha256,
                    hash: SHA256.into(),
                    entry: Some("Other".into()),
                    tags: vec!["x".into(), "INVESTIGATION_SEED".into()],
                    withdraw: false,
                },
            ]
        );
        assert_eq!(errors, vec![RowError { line: 4, problem: "unsupported signal type \"url\"".into() }]);
    }

    #[test]
    fn te_csv_columns_found_by_name_after_a_preamble() {
        let text = format!("\n# saved by ops\ntags,signal_str,signal_type\nx,{MD5},md5\n\n,{},pdq\n", zero_pdq());
        let (rows, errors) = ok(Format::Te, &text);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].line, rows[0].signal, rows[0].entry.clone()), (4, Signal::Md5, None));
        assert_eq!(rows[0].tags, vec!["x".to_string()]);
        assert_eq!(lines_of(&errors), vec![6]);
    }

    #[test]
    fn te_empty_file_is_an_empty_import() {
        let (rows, errors) = ok(Format::Te, "\n# nothing yet\n");
        assert!(rows.is_empty() && errors.is_empty());
    }

    // ---- stopncii

    #[test]
    fn stopncii_json_lines_statuses() {
        let text = format!(
            "{{\"hashValue\":\"{PDQ}\",\"signalType\":\"ImagePDQ\",\"hashStatus\":\"Active\",\"caseNumbers\":[\"C-1\",\"C-2\"],\"tags\":[\"t1\",\"\"],\"lastModtimestamp\":1}}\n\
             {{\"hashValue\":\"{MD5}\",\"signalType\":\"VideoMD5\",\"hashStatus\":\"Withdrawn\",\"caseNumbers\":[42]}}\n\
             \n\
             {{\"hashValue\":\"{}\",\"signalType\":\"imagepdq\",\"hashStatus\":\"DELETED\"}}\n\
             {{\"hashValue\":\"{PDQ}\",\"signalType\":\"ImagePDQ\"}}\n\
             {{\"hashValue\":\"{PDQ}\",\"signalType\":\"ImagePDQ\",\"hashStatus\":null,\"caseNumbers\":{{\"K-2\":\"Active\",\"K-1\":\"Active\"}}}}\n",
            PDQ.to_uppercase()
        );
        let (rows, errors) = ok(Format::StopNcii, &text);
        assert!(errors.is_empty(), "{errors:?}");
        let got: Vec<(u64, Signal, bool, Option<&str>)> =
            rows.iter().map(|r| (r.line, r.signal, r.withdraw, r.entry.as_deref())).collect();
        assert_eq!(
            got,
            vec![
                (1, Signal::Pdq, false, Some("C-1")),
                (2, Signal::Md5, true, Some("42")),
                (4, Signal::Pdq, true, None),
                (5, Signal::Pdq, false, None),
                (6, Signal::Pdq, false, Some("K-1")),
            ]
        );
        assert_eq!(rows[0].tags, vec!["t1".to_string()]);
        assert_eq!(rows[2].hash, PDQ, "uppercase lowercased");
    }

    #[test]
    fn stopncii_bad_lines() {
        let mut text = format!(
            "{{\"hashValue\":\"{PDQ}\",\"signalType\":\"VideoTMK\"}}\n\
             {{\"hashValue\":\"{PDQ}\",\"signalType\":\"ImagePDQ\",\"hashStatus\":\"Received\"}}\n\
             [1,2]\n\
             {{\"hashValue\":\n\
             {{\"signalType\":\"ImagePDQ\"}}\n\
             {{\"hashValue\":12,\"signalType\":\"ImagePDQ\"}}\n\
             {{\"hashValue\":\"{}\",\"signalType\":\"ImagePDQ\"}}\n\
             {{\"hashValue\":\"{PDQ}\",\"signalType\":\"ImagePDQ\",\"caseNumbers\":[true]}}\n\
             {{\"hashValue\":\"{PDQ}\",\"signalType\":\"ImagePDQ\",\"tags\":\"x\"}}\n\
             {{\"hashValue\":\"{MD5}\",\"signalType\":\"VideoMD5\",\"hashStatus\":\"Deleted\"}}\n",
            zero_pdq()
        )
        .into_bytes();
        text.extend_from_slice(b"{\"hashValue\":\"\xff\"}\n");
        let (rows, errors) = parse(Format::StopNcii, &text).expect("parse");
        assert_eq!(rows.iter().map(|r| (r.line, r.withdraw)).collect::<Vec<_>>(), vec![(10, true)]);
        assert_eq!(lines_of(&errors), vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 11]);
        let problems: Vec<&str> = errors.iter().map(|e| e.problem.as_str()).collect();
        assert_eq!(problems[0], "unsupported signal type \"VideoTMK\"");
        assert_eq!(problems[1], "unknown hashStatus \"Received\" (expected Active, Withdrawn or Deleted)");
        assert_eq!(problems[2], "not a JSON object");
        assert!(problems[3].starts_with("not a JSON object (invalid JSON"), "{}", problems[3]);
        assert_eq!(problems[4], "missing hashValue");
        assert_eq!(problems[5], "hashValue must be a string");
        assert!(problems[6].contains("all zeros"));
        assert_eq!(problems[7], "caseNumbers must hold strings or numbers");
        assert_eq!(problems[8], "tags must be an array");
        assert_eq!(problems[9], "invalid UTF-8");
    }

    #[test]
    fn stopncii_hash_records_response_uses_record_index() {
        let text = format!(
            "{{\n  \"count\": 3,\n  \"nextPageToken\": null,\n  \"hashRecords\": [\n    \
             {{\"hashValue\": \"{PDQ}\", \"signalType\": \"ImagePDQ\", \"hashStatus\": \"Active\"}},\n    \
             {{\"hashValue\": \"short\", \"signalType\": \"ImagePDQ\"}},\n    \
             {{\"hashValue\": \"{MD5}\", \"signalType\": \"VideoMD5\", \"hashStatus\": \"Withdrawn\"}}\n  ]\n}}\n"
        );
        let (rows, errors) = ok(Format::StopNcii, &text);
        assert_eq!(rows.iter().map(|r| (r.line, r.withdraw)).collect::<Vec<_>>(), vec![(1, false), (3, true)]);
        assert_eq!(errors, vec![RowError { line: 2, problem: "pdq hash must be 64 hex characters".into() }]);
    }

    #[test]
    fn stopncii_array_of_records() {
        let text = format!("[{{\"hashValue\":\"{MD5}\",\"signalType\":\"VideoMD5\"}}, 7]");
        let (rows, errors) = ok(Format::StopNcii, &text);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].line, 1);
        assert_eq!(errors, vec![RowError { line: 2, problem: "not a JSON object".into() }]);
    }

    #[test]
    fn stopncii_pretty_printed_single_record() {
        let text = format!("\n\n{{\n  \"hashValue\": \"{MD5}\",\n  \"signalType\": \"VideoMD5\"\n}}\n");
        let (rows, errors) = ok(Format::StopNcii, &text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((rows.len(), rows[0].line), (1, 3));
    }

    #[test]
    fn stopncii_hash_records_not_an_array_is_unusable() {
        let err = parse(Format::StopNcii, b"{\"hashRecords\": {}}").expect_err("must refuse");
        assert_eq!(err.to_string(), "hashRecords is not an array");
    }

    // ---- every format

    #[test]
    fn bom_and_crlf_work_everywhere() {
        // (format, file, line of the good row); the bad row is always two lines further on.
        let cases = [
            (Format::Csv, format!("\u{feff}signal,hash,entry\r\nmd5,{MD5},e1\r\n\r\nmd5,bad,e2\r\n"), 2),
            (Format::Te, format!("\u{feff}md5 {MD5}\r\n\r\nmd5 bad\r\n"), 1),
            (Format::Te, format!("\u{feff}signal_type,signal_str,collab\r\nmd5,{MD5},c1\r\n\r\nmd5,bad,c2\r\n"), 2),
            (
                Format::StopNcii,
                format!("\u{feff}{{\"hashValue\":\"{MD5}\",\"signalType\":\"VideoMD5\",\"caseNumbers\":[\"c1\"]}}\r\n\r\n{{\"hashValue\":\"bad\",\"signalType\":\"VideoMD5\"}}\r\n"),
                1,
            ),
        ];
        for (format, text, good_line) in cases {
            let (rows, errors) = ok(format, &text);
            assert_eq!(rows.len(), 1, "{format:?}: {errors:?}");
            assert_eq!((rows[0].line, rows[0].hash.as_str()), (good_line, MD5), "{format:?}");
            // The entry is the last field of the line: a stray \r would end up in it.
            if good_line == 2 || format == Format::StopNcii {
                assert_eq!(rows[0].entry.as_deref().map(|e| e.ends_with('1')), Some(true), "{format:?}");
            }
            assert_eq!(lines_of(&errors), vec![good_line + 2], "{format:?}");
            assert_eq!(errors[0].problem, "md5 hash must be 32 hex characters", "{format:?}");
        }
    }

    #[test]
    fn all_zero_pdq_is_refused_everywhere() {
        let zero = zero_pdq();
        let cases = [
            (Format::Csv, format!("signal,hash,entry\npdq,{zero},e\n")),
            (Format::Te, format!("pdq {zero}\n")),
            (Format::Te, format!("signal_type,signal_str\npdq,{zero}\n")),
            (Format::StopNcii, format!("{{\"hashValue\":\"{zero}\",\"signalType\":\"ImagePDQ\"}}\n")),
        ];
        for (format, text) in cases {
            let (rows, errors) = ok(format, &text);
            assert!(rows.is_empty(), "{format:?}");
            assert_eq!(errors.len(), 1, "{format:?}");
            assert_eq!(errors[0].problem, "pdq hash is all zeros (degenerate image), refused", "{format:?}");
        }
    }

    #[test]
    fn entry_ids_trimmed_and_bounded() {
        let exact = "e".repeat(crate::bank::record::MAX_ENTRY_BYTES);
        // 129 two-byte characters: 258 bytes although only 129 characters.
        let wide = "é".repeat(129);
        let text = format!(
            "signal,hash,entry\nmd5,{MD5},  padded  \nmd5,{MD5},{exact}\nmd5,{MD5},{wide}\nmd5,{MD5},\"a\tb\"\n"
        );
        let (rows, errors) = ok(Format::Csv, &text);
        assert_eq!(rows.iter().map(|r| r.entry.clone()).collect::<Vec<_>>(), vec![Some("padded".into()), Some(exact)]);
        assert_eq!(lines_of(&errors), vec![4, 5]);
        assert_eq!(errors[0].problem, "entry id longer than 256 bytes");
        assert_eq!(errors[1].problem, "entry id contains control characters");
    }

    #[test]
    fn tags_with_control_characters_refused() {
        let text = format!("{{\"hashValue\":\"{MD5}\",\"signalType\":\"VideoMD5\",\"tags\":[\"ok\",\"b\\u0001d\"]}}\n");
        let (rows, errors) = ok(Format::StopNcii, &text);
        assert!(rows.is_empty());
        assert_eq!(errors, vec![RowError { line: 1, problem: "tag contains control characters".into() }]);
    }

    /// The planted value in every field a partner controls; no error, nor its Debug form, may
    /// carry it (or its uppercase form).
    #[test]
    fn errors_never_echo_hash_values() {
        let p = PLANT;
        let upper = PLANT.to_uppercase();
        let long_entry = format!("{p}{}", "x".repeat(300));
        let csv_cases = [
            format!("signal,hash,entry\nmd5,{p},e\nsha256,{upper},e\npdq,{p},e\n{p},{MD5},e\nmd5,{MD5},{long_entry}\nmd5,{MD5},{p}\u{1}\n"),
            format!("signal,{p},entry\nmd5,{MD5},e\n"),
            format!("{p},md5,entry\n"),
        ];
        let te_cases = [
            format!("pdq {p}\nmd5 {upper}\nvideo_sha256 {p}\n{p} {MD5}\n{p}\nurl_{p} x\n"),
            format!("signal_type,signal_str,collab,category,tags\npdq,{p},c,,\n{p},{MD5},c,,\nmd5,{MD5},{long_entry},,\nmd5,{MD5},c,,a\u{1}{p}\n"),
        ];
        let ncii_cases = [
            format!(
                "{{\"hashValue\":\"{p}\",\"signalType\":\"ImagePDQ\"}}\n\
                 {{\"hashValue\":\"{upper}\",\"signalType\":\"VideoMD5\"}}\n\
                 {{\"hashValue\":\"{MD5}\",\"signalType\":\"{p}\"}}\n\
                 {{\"hashValue\":\"{MD5}\",\"signalType\":\"VideoMD5\",\"hashStatus\":\"{p}\"}}\n\
                 {{\"hashValue\":\"{MD5}\",\"signalType\":\"VideoMD5\",\"caseNumbers\":[\"{long_entry}\"]}}\n\
                 {{\"hashValue\":\"{p}\n\
                 \"{p}\"\n\
                 {{\"{p}\":1}}\n"
            ),
            format!("{{\"hashRecords\":[{{\"hashValue\":\"{p}\",\"signalType\":\"ImagePDQ\"}},\"{p}\"]}}"),
        ];
        let all = csv_cases
            .iter()
            .map(|t| (Format::Csv, t))
            .chain(te_cases.iter().map(|t| (Format::Te, t)))
            .chain(ncii_cases.iter().map(|t| (Format::StopNcii, t)));
        let mut checked = 0;
        for (format, text) in all {
            let reports: Vec<String> = match parse(format, text.as_bytes()) {
                Ok((rows, errors)) => {
                    assert!(rows.is_empty(), "{format:?}: every row here is bad: {rows:?}");
                    assert!(!errors.is_empty(), "{format:?}");
                    errors.iter().flat_map(|e| [e.problem.clone(), format!("{e:?}")]).collect()
                }
                Err(e) => vec![e.to_string(), format!("{e:?}")],
            };
            for report in &reports {
                let lower = report.to_ascii_lowercase();
                assert!(!lower.contains(&p[..8]), "{format:?} leaked the planted value: {report}");
                checked += 1;
            }
        }
        assert!(checked >= 40, "only {checked} reports checked");
    }

    #[test]
    fn shown_hides_anything_hash_like() {
        assert_eq!(shown("url"), "\"url\"");
        assert_eq!(shown("video_tmk_pdqf"), "\"video_tmk_pdqf\"");
        assert_eq!(shown("deadbeef"), "(value not shown)");
        assert_eq!(shown("x_0123abcd"), "(value not shown)");
        assert_eq!(shown("a\"b"), "(value not shown)");
        assert_eq!(shown(""), "(value not shown)");
        assert_eq!(shown(&"z".repeat(25)), "(value not shown)");
    }
}
