//! A reviewer's label, `perisai.review/v1`: what a person decided about one upload. Written by the
//! platform's review tool to `kafka.reviews_topic`; docs/schemas/review.schema.json is its JSON
//! Schema, and the decoder here refuses exactly what the schema refuses (a test holds them to it).

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Deserializer};

pub const REVIEW_SCHEMA: &str = "perisai.review/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Violating,
    Benign,
}

/// One label. At least one of `event_id` and `media_id` names the upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub event_id: Option<String>,
    pub media_id: Option<String>,
    pub decision: Decision,
    pub category: Option<String>,
    pub decided_at: DateTime<FixedOffset>,
    pub reviewer: Option<String>,
}

/// The record as sent. Unknown fields are refused: a misspelt `decision` must not pass as a
/// label without one. Optional fields may be absent but not null (the schema says string).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    schema: String,
    #[serde(default, deserialize_with = "present_string")]
    event_id: Option<String>,
    #[serde(default, deserialize_with = "present_string")]
    media_id: Option<String>,
    decision: Decision,
    #[serde(default, deserialize_with = "present_string")]
    category: Option<String>,
    decided_at: String,
    #[serde(default, deserialize_with = "present_string")]
    reviewer: Option<String>,
}

fn present_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    String::deserialize(deserializer).map(Some)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("empty record")]
    Empty,
    #[error("does not match {REVIEW_SCHEMA}: {0}")]
    Schema(String),
    #[error("unsupported schema {0:?} (expected {REVIEW_SCHEMA:?})")]
    SchemaVersion(String),
    #[error("names no upload: give event_id or media_id (non-empty)")]
    NoUpload,
    #[error("decided_at {0:?} is not an RFC 3339 date-time")]
    DecidedAt(String),
}

/// Decodes one label.
pub fn parse_review(bytes: Option<&[u8]>) -> Result<Review, ReviewError> {
    let bytes = bytes.filter(|b| !b.is_empty()).ok_or(ReviewError::Empty)?;
    let wire: Wire = serde_json::from_slice(bytes).map_err(|e| ReviewError::Schema(e.to_string()))?;
    if wire.schema != REVIEW_SCHEMA {
        return Err(ReviewError::SchemaVersion(wire.schema));
    }
    let empty = |id: &Option<String>| id.as_deref().is_some_and(str::is_empty);
    if empty(&wire.event_id) || empty(&wire.media_id) || (wire.event_id.is_none() && wire.media_id.is_none()) {
        return Err(ReviewError::NoUpload);
    }
    let decided_at = DateTime::parse_from_rfc3339(&wire.decided_at).map_err(|_| ReviewError::DecidedAt(wire.decided_at.clone()))?;
    Ok(Review {
        event_id: wire.event_id,
        media_id: wire.media_id,
        decision: wire.decision,
        category: wire.category,
        decided_at,
        reviewer: wire.reviewer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoder and the published JSON Schema agree on good and bad labels alike.
    #[test]
    fn the_decoder_and_the_schema_accept_and_refuse_the_same_labels() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/schemas/review.schema.json")).expect("schema JSON");
        let validator = jsonschema::options().should_validate_formats(true).build(&schema).expect("valid schema");
        let cases: &[(&str, bool)] = &[
            (r#"{"schema":"perisai.review/v1","event_id":"e-1","decision":"violating","decided_at":"2026-12-01T10:00:00Z"}"#, true),
            (r#"{"schema":"perisai.review/v1","media_id":"m-1","decision":"benign","decided_at":"2026-12-01T10:00:00.5+01:00"}"#, true),
            (
                r#"{"schema":"perisai.review/v1","event_id":"e-1","media_id":"m-1","decision":"violating","category":"nudity","decided_at":"2026-12-01T10:00:00Z","reviewer":"r-7"}"#,
                true,
            ),
            // Names no upload.
            (r#"{"schema":"perisai.review/v1","decision":"benign","decided_at":"2026-12-01T10:00:00Z"}"#, false),
            (r#"{"schema":"perisai.review/v1","event_id":"","decision":"benign","decided_at":"2026-12-01T10:00:00Z"}"#, false),
            (r#"{"schema":"perisai.review/v1","event_id":null,"media_id":"m-1","decision":"benign","decided_at":"2026-12-01T10:00:00Z"}"#, false),
            // A decision that is neither.
            (r#"{"schema":"perisai.review/v1","event_id":"e-1","decision":"maybe","decided_at":"2026-12-01T10:00:00Z"}"#, false),
            (r#"{"schema":"perisai.review/v1","event_id":"e-1","decided_at":"2026-12-01T10:00:00Z"}"#, false),
            // Times that are not RFC 3339 date-times.
            (r#"{"schema":"perisai.review/v1","event_id":"e-1","decision":"benign","decided_at":"2026-12-01"}"#, false),
            (r#"{"schema":"perisai.review/v1","event_id":"e-1","decision":"benign","decided_at":"yesterday"}"#, false),
            (r#"{"schema":"perisai.review/v1","event_id":"e-1","decision":"benign","decided_at":"2026-13-01T10:00:00Z"}"#, false),
            (r#"{"schema":"perisai.review/v1","event_id":"e-1","decision":"benign"}"#, false),
            // Other versions, unknown or mistyped fields.
            (r#"{"schema":"perisai.review/v2","event_id":"e-1","decision":"benign","decided_at":"2026-12-01T10:00:00Z"}"#, false),
            (r#"{"schema":"perisai.review/v1","event_id":"e-1","decison":"benign","decision":"benign","decided_at":"2026-12-01T10:00:00Z"}"#, false),
            (r#"{"schema":"perisai.review/v1","event_id":"e-1","decision":"benign","decided_at":"2026-12-01T10:00:00Z","category":3}"#, false),
            (r#"{"schema":"perisai.review/v1","event_id":7,"decision":"benign","decided_at":"2026-12-01T10:00:00Z"}"#, false),
            (r#"["perisai.review/v1"]"#, false),
        ];
        for (text, valid) in cases {
            let json: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(validator.is_valid(&json), *valid, "schema on {text}");
            let decoded = parse_review(Some(text.as_bytes()));
            assert_eq!(decoded.is_ok(), *valid, "decoder on {text}: {decoded:?}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = parse_review(Some(br#"{"schema":"perisai.review/v1","decision":"benign","decided_at":"2026-12-01T10:00:00Z"}"#)).unwrap_err();
        assert_eq!(err, ReviewError::NoUpload);
        let err = parse_review(Some(br#"{"schema":"perisai.review/v1","event_id":"e","decision":"benign","decided_at":"soon"}"#)).unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
        assert_eq!(parse_review(Some(b"")).unwrap_err(), ReviewError::Empty);
        assert_eq!(parse_review(None).unwrap_err(), ReviewError::Empty);
    }
}
