//! Wire types: upload events in (`perisai.upload/v1`), verdicts out (`perisai.verdict/v1`).
//! Plain data; docs/schemas/ holds the JSON Schemas these serialize to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const UPLOAD_SCHEMA: &str = "perisai.upload/v1";
pub const VERDICT_SCHEMA: &str = "perisai.verdict/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadEvent {
    pub schema: String,
    pub event_id: String,
    pub media_id: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub media: MediaRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_at: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// Exactly one of inline bytes, a URL on an allowlisted host, or a path under the configured root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MediaRef {
    /// base64 (standard alphabet, padding optional)
    Inline(String),
    Url(String),
    Path(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Review,
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Review => "review",
            Action::Block => "block",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The media matched a bank entry.
    HashMatch {
        bank: String,
        /// md5 | sha256 | pdq
        signal: String,
        entry: String,
        /// The bank's action, so a reader sees why an allowlist or review bank fired.
        action: Action,
        #[serde(skip_serializing_if = "Option::is_none")]
        distance: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        quality: Option<u8>,
        /// For dihedral matches: which rotation/flip of the upload matched.
        #[serde(skip_serializing_if = "Option::is_none")]
        transform: Option<String>,
    },
    /// A classifier score, with the band it fell in (`none` when below every band).
    Classifier { model: String, model_sha256: String, label: String, score: f32, band: String },
    /// PDQ quality below a bank's floor: no PDQ match was attempted against that bank.
    LowQuality { signal: String, quality: u8, floor: u8 },
    /// The media could not be fetched, decoded or classified.
    MediaError { error: String, detail: String },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdq: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdq_quality: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub schema: String,
    pub event_id: String,
    pub media_id: String,
    pub tenant: String,
    pub action: Action,
    pub reasons: Vec<Reason>,
    pub signals: Signals,
    pub policy: String,
    pub decided_at: String,
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
}
