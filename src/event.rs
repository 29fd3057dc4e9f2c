//! Wire types: upload events in (`perisai.upload/v1`), verdicts out (`perisai.verdict/v1`).
//! Plain data; docs/schemas/ holds the JSON Schemas these serialize to.

use serde::de::{Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub const UPLOAD_SCHEMA: &str = "perisai.upload/v1";
pub const VERDICT_SCHEMA: &str = "perisai.verdict/v1";

/// Longest ids an event may carry (bytes): every verdict repeats them, and a verdict must always
/// fit its topic (Kafka refuses records over `max.message.bytes`, 1 MiB by default). Longer ones
/// send the event to the DLQ (`field_too_large`) instead of wedging its partition.
pub const MAX_ID_BYTES: usize = 512;
/// Longest tenant, surface, content type and upload time.
pub const MAX_LABEL_BYTES: usize = 256;
/// Largest `attributes` object (as JSON): verdicts carry it back.
pub const MAX_ATTRIBUTES_BYTES: usize = 64 * 1024;

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
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    pub attributes: Attributes,
}

impl UploadEvent {
    /// An event for media already in hand (`perisai scan`, tests, benches): `name` is its event
    /// and media id and its path, with no surface, content type or attributes.
    pub fn local(name: &str, tenant: &str) -> Self {
        UploadEvent {
            schema: UPLOAD_SCHEMA.into(),
            event_id: name.into(),
            media_id: name.into(),
            tenant: tenant.into(),
            surface: None,
            content_type: None,
            media: MediaRef::Path(name.into()),
            uploaded_at: None,
            attributes: Attributes::default(),
        }
    }
}

/// An event's `attributes` object, kept as the JSON text it came in — numbers beyond 64 bits,
/// key order, escapes — so that verdicts hand it back byte for byte.
#[derive(Debug, Clone, Default)]
pub struct Attributes(Option<Box<RawValue>>);

impl Attributes {
    /// From JSON text, which must be an object.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let raw = RawValue::from_string(text.to_string()).map_err(|e| e.to_string())?;
        Self::checked(raw)
    }

    fn checked(raw: Box<RawValue>) -> Result<Self, String> {
        if raw.get().trim_start().starts_with('{') {
            Ok(Self(Some(raw)))
        } else {
            Err("`attributes` must be an object".into())
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|raw| raw.get().trim() == "{}")
    }

    /// The JSON text ("{}" when absent).
    pub fn json(&self) -> &str {
        self.0.as_ref().map_or("{}", |raw| raw.get())
    }
}

impl PartialEq for Attributes {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl Serialize for Attributes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(raw) => raw.serialize(serializer),
            None => serializer.serialize_map(Some(0)).and_then(serde::ser::SerializeMap::end),
        }
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::checked(Box::<RawValue>::deserialize(deserializer)?).map_err(D::Error::custom)
    }
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
        /// The entry is quarantined (it flooded): this match counts as review, not `action`.
        #[serde(default, skip_serializing_if = "is_false")]
        quarantined: bool,
        /// An allowlist PDQ match that hashing the full image (the other convention) did not
        /// confirm, or that the retro role found without pixels to confirm it: it allows nothing.
        #[serde(default, skip_serializing_if = "is_false")]
        unconfirmed: bool,
        /// Videos and animations: the timestamp (seconds) of the first upload frame that matched.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<f64>,
        /// Matched on the full-resolution hash of a picture whose PDQ sample disagreed with it
        /// (an image-scaling attack): what viewers see matched, whatever the sample showed.
        #[serde(default, skip_serializing_if = "is_false")]
        full_resolution: bool,
        /// vPDQ matches: the share of the upload's frames that matched the bank video, and of the
        /// bank video's frames that matched the upload (percent, after the quality filter and
        /// de-duplication), and the timestamp of the bank video's first matched frame.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query_match_pct: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_match_pct: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entry_at: Option<f64>,
    },
    /// A classifier score, with the band it fell in (`none` when below every band). For a video,
    /// the highest score of the frames scored and the timestamp of that frame (`at`).
    Classifier {
        model: String,
        model_sha256: String,
        label: String,
        score: f32,
        band: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<f64>,
    },
    /// PDQ quality below a bank's floor: no PDQ match was attempted against that bank.
    LowQuality { signal: String, quality: u8, floor: u8 },
    /// The media could not be fetched, decoded or classified.
    MediaError { error: String, detail: String },
    /// The pixels were not screened: non-image media (video, documents) gets exact hashes only.
    /// `action` is what `policy.non_image_action` gives that.
    Unscreened { what: String, action: Action },
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
    /// Animated images: the frames decoded, and how many of them were screened (every frame is
    /// PDQ-hashed and matched; the classifier scores up to `decode.max_frames` of them, spread
    /// evenly); the still image above is screened besides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames_screened: Option<u32>,
    /// Images: the other PDQ hashes matched besides `pdq`, distinct, `HEX,QUALITY,AT` each (AT:
    /// an animation frame's time in seconds, `-` for the still image), `,full` appended for the
    /// full-resolution hash of a picture whose 512×512 sample disagreed with it. At most
    /// [`crate::bank::MAX_MORE_PDQ_IN_VERDICT`]; what retro re-decides an animation with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more_pdq: Option<Vec<String>>,
    /// Images, when a bank matches rotations and flips (`dihedral = true`): the still image's
    /// other seven dihedral PDQ hashes in the reference order (rotate90, rotate180, rotate270,
    /// flip_x, flip_y, flip_plus1, flip_minus1), so that retro finds those matches too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdq_dihedral: Option<Vec<String>>,
    /// Videos: what the container said and how much of it was hashed (`width` and `height`
    /// above are the video's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoSignals>,
    /// Videos: the vPDQ features, `PDQ_HEX,QUALITY,TIMESTAMP` each (python-threatexchange's
    /// signal string as a list), exact duplicates left out, at most [`MAX_VPDQ_IN_VERDICT`]
    /// spread over the video. What retro re-decides a video with, and what a reviewer bans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpdq: Option<Vec<String>>,
}

/// Most vPDQ features a verdict carries (about 75 bytes each): ten minutes at one a second fit
/// whole; beyond, an even spread.
pub const MAX_VPDQ_IN_VERDICT: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VideoSignals {
    /// The demuxer FFmpeg chose, e.g. `mov,mp4,m4a,3gp,3g2,mj2`, `matroska,webm`.
    pub container: String,
    /// The video stream's codec, e.g. `h264`, `vp9`.
    pub codec: String,
    /// Seconds, as the container declares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    pub frame_rate: f64,
    /// Frames decoded, and frames sampled and hashed (vPDQ), of which the classifier scored
    /// `frames_classified`.
    pub frames_decoded: u64,
    pub frames_hashed: u32,
    #[serde(default)]
    pub frames_classified: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub schema: String,
    pub event_id: String,
    pub media_id: String,
    pub tenant: String,
    /// The upload event's surface, when it named one: with the tenant, it picks the classifier
    /// bands (policy replay re-decides with them). Optional in v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surface: Option<String>,
    pub action: Action,
    pub reasons: Vec<Reason>,
    pub signals: Signals,
    pub policy: String,
    /// The bank state that decided it: the bank topic's next offset per partition
    /// (`PARTITION:OFFSET,...`). Absent when banks come from files only. Optional in v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banks_version: Option<String>,
    pub decided_at: String,
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    pub attributes: Attributes,
    /// Present only on a retroactive verdict: one the retro role wrote because the banks changed
    /// after the upload was screened. Its `event_id` is its own (consumers deduplicate on it);
    /// the same re-decision written twice has the same `event_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retro: Option<Retro>,
    /// The verdict topic refused the whole verdict as too large: this one has no attributes and
    /// only the decisive reasons (see [`Verdict::compact`]). The action is the same.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

impl Verdict {
    /// The same decision in a record that fits any sane topic limit: attributes and a video's
    /// vPDQ features dropped, at most 8 hash matches, the classifier and media-error reasons
    /// (details cut to 256 bytes).
    pub fn compact(&self) -> Verdict {
        let mut matches = 0;
        let reasons = self
            .reasons
            .iter()
            .filter_map(|r| match r {
                Reason::HashMatch { .. } => {
                    matches += 1;
                    (matches <= 8).then(|| r.clone())
                }
                Reason::Classifier { .. } => Some(r.clone()),
                Reason::MediaError { error, detail } => {
                    Some(Reason::MediaError { error: error.clone(), detail: truncate_utf8(detail, 256).to_string() })
                }
                Reason::LowQuality { .. } => None,
                Reason::Unscreened { .. } => Some(r.clone()),
            })
            .collect();
        let signals = Signals { vpdq: None, more_pdq: None, pdq_dihedral: None, ..self.signals.clone() };
        Verdict { reasons, signals, attributes: Attributes::default(), retro: None, truncated: true, ..self.clone() }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retro {
    /// The upload this re-decides: the event_id of its upload event and first verdict.
    pub upload_event_id: String,
    /// The event_id of the verdict this one replaces (the first, or an earlier retroactive one).
    pub supersedes: String,
    pub previous_action: Action,
    /// The bank changes that made the difference.
    pub changes: Vec<RetroChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RetroChange {
    /// added (the upload now matches the entry) | removed (it no longer does: withdrawn, or replaced)
    pub change: String,
    pub bank: String,
    pub signal: String,
    pub entry: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why an input record could not be parsed as an upload event; it goes to the DLQ.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("empty record")]
    Empty,
    #[error("event is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("unsupported schema {0:?} (expected {UPLOAD_SCHEMA:?})")]
    SchemaVersion(String),
    #[error("does not match {UPLOAD_SCHEMA}: {0}")]
    Schema(String),
    #[error("`{field}` is {size} bytes, over the {limit}-byte limit")]
    FieldTooLarge { field: &'static str, size: usize, limit: usize },
    /// The same key twice in one object: JSON parsers disagree on which one wins.
    #[error("{0}")]
    DuplicateKey(String),
}

impl EventError {
    /// Stable class for DLQ headers and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            EventError::Empty => "empty",
            EventError::TooLarge { .. } => "too_large",
            EventError::InvalidJson(_) => "invalid_json",
            EventError::SchemaVersion(_) => "schema_version",
            EventError::Schema(_) => "schema",
            EventError::FieldTooLarge { .. } => "field_too_large",
            EventError::DuplicateKey(_) => "duplicate_key",
        }
    }
}

/// Parses and validates one upload event. The size check comes first, so a huge record costs no parsing.
pub fn parse_upload(payload: Option<&[u8]>, max_bytes: usize) -> Result<UploadEvent, EventError> {
    let bytes = payload.filter(|p| !p.is_empty()).ok_or(EventError::Empty)?;
    if bytes.len() > max_bytes {
        return Err(EventError::TooLarge { size: bytes.len(), limit: max_bytes });
    }
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(EventError::InvalidJson("starts with a UTF-8 byte order mark: send the JSON without it".into()));
    }
    // Syntax and duplicate keys first, in one pass over the whole document: "last wins" would
    // let two readers of the same event see different media.
    serde_json::from_slice::<NoDuplicateKeys>(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => EventError::DuplicateKey(e.to_string()),
        _ => EventError::InvalidJson(e.to_string()),
    })?;
    // The version decides before the shape: an event of another version is named as such even
    // when its fields differ. Probed only when the event does not parse, so a good event is
    // read twice (duplicate keys, then the event), not three times.
    let event = match serde_json::from_slice::<UploadEvent>(bytes) {
        Ok(event) if event.schema == UPLOAD_SCHEMA => event,
        Ok(event) => return Err(EventError::SchemaVersion(event.schema)),
        Err(e) => {
            #[derive(Deserialize)]
            struct SchemaOnly {
                schema: Option<serde_json::Value>,
            }
            let probe: Option<SchemaOnly> = serde_json::from_slice(bytes).ok();
            return Err(match probe.and_then(|p| p.schema) {
                Some(serde_json::Value::String(s)) if s == UPLOAD_SCHEMA => EventError::Schema(e.to_string()),
                Some(serde_json::Value::String(s)) => EventError::SchemaVersion(s),
                _ => EventError::Schema("missing string field `schema`".into()),
            });
        }
    };
    for (field, value) in [("event_id", &event.event_id), ("media_id", &event.media_id), ("tenant", &event.tenant)] {
        if value.trim().is_empty() {
            return Err(EventError::Schema(format!("`{field}` must not be empty")));
        }
    }
    let labels = [
        ("event_id", event.event_id.len(), MAX_ID_BYTES),
        ("media_id", event.media_id.len(), MAX_ID_BYTES),
        ("tenant", event.tenant.len(), MAX_LABEL_BYTES),
        ("surface", event.surface.as_deref().map_or(0, str::len), MAX_LABEL_BYTES),
        ("content_type", event.content_type.as_deref().map_or(0, str::len), MAX_LABEL_BYTES),
        ("uploaded_at", event.uploaded_at.as_deref().map_or(0, str::len), MAX_LABEL_BYTES),
        ("attributes", event.attributes.json().len(), MAX_ATTRIBUTES_BYTES),
    ];
    if let Some(&(field, size, limit)) = labels.iter().find(|(_, size, limit)| size > limit) {
        return Err(EventError::FieldTooLarge { field, size, limit });
    }
    Ok(event)
}

/// Walks a JSON document and fails on an object with the same key twice, at any depth.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicateKeysVisitor)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !keys.insert(key.clone()) {
                return Err(A::Error::custom(format!("duplicate key {:?}", truncate_utf8(&key, 64))));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"schema":"perisai.upload/v1","event_id":"e-1","media_id":"m-1","tenant":"acme",
        "surface":"post","content_type":"image/jpeg","media":{"url":"https://media.example/abc.jpg"},
        "uploaded_at":"2026-11-28T12:00:00Z","attributes":{"uploader":"u-9"}}"#;

    #[test]
    fn parses_the_documented_example() {
        let e = parse_upload(Some(GOOD.as_bytes()), 1 << 20).unwrap();
        assert_eq!(e.media, MediaRef::Url("https://media.example/abc.jpg".into()));
        assert_eq!(e.attributes.json(), r#"{"uploader":"u-9"}"#);
    }

    /// Attributes come back byte for byte: integers beyond 64 bits, key order, escapes.
    #[test]
    fn attributes_pass_through_byte_exact() {
        let attributes = r#"{"z":1, "big":123456789012345678901234567890,"f":1.10,"s":"\u00e9"}"#;
        let text = GOOD.replace(r#"{"uploader":"u-9"}"#, attributes);
        let e = parse_upload(Some(text.as_bytes()), 1 << 20).unwrap();
        assert_eq!(e.attributes.json(), attributes);
        let out = serde_json::to_string(&e).unwrap();
        assert!(out.contains(attributes), "{out}");
    }

    #[test]
    fn duplicate_keys_and_byte_order_marks_are_refused_by_name() {
        for (text, needle) in [
            (GOOD.replacen(r#""event_id":"e-1","#, r#""event_id":"e-1","event_id":"e-2","#, 1), "event_id"),
            (GOOD.replacen(r#""schema":"perisai.upload/v1","#, r#""schema":"perisai.upload/v1","schema":"perisai.upload/v1","#, 1), "schema"),
            (GOOD.replacen(r#"{"uploader":"u-9"}"#, r#"{"a":{"b":1,"b":2}}"#, 1), "b"),
        ] {
            let err = parse_upload(Some(text.as_bytes()), 1 << 20).unwrap_err();
            assert_eq!(err.class(), "duplicate_key", "{text}");
            assert!(err.to_string().contains(&format!("{needle:?}")), "{err}");
        }
        let twice = GOOD.replacen(r#""media":{"url":"https://media.example/abc.jpg"}"#, r#""media":{"url":"https://media.example/abc.jpg","url":"https://evil.example/x.jpg"}"#, 1);
        assert_eq!(parse_upload(Some(twice.as_bytes()), 1 << 20).unwrap_err().class(), "duplicate_key");
        let bom = [&[0xEF, 0xBB, 0xBF][..], GOOD.as_bytes()].concat();
        let err = parse_upload(Some(&bom), 1 << 20).unwrap_err();
        assert_eq!(err.class(), "invalid_json");
        assert!(err.to_string().contains("byte order mark"), "{err}");
    }

    #[test]
    fn classes_of_bad_events() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"{not json", "invalid_json"),
            (br#"{"schema":"perisai.upload/v2"}"#, "schema_version"),
            (br#"{"event_id":"e"}"#, "schema"),
            (br#"{"schema":"perisai.upload/v1","event_id":"e","media_id":"m","tenant":"t"}"#, "schema"),
            (br#"{"schema":"perisai.upload/v1","event_id":"e","media_id":"m","tenant":"t","media":{"inline":"","url":"x"}}"#, "schema"),
            (br#"{"schema":"perisai.upload/v1","event_id":"","media_id":"m","tenant":"t","media":{"inline":""}}"#, "schema"),
        ];
        for (bytes, class) in cases {
            let err = parse_upload(Some(bytes), 1 << 20).unwrap_err();
            assert_eq!(err.class(), *class, "{}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(parse_upload(Some(GOOD.as_bytes()), 10).unwrap_err().class(), "too_large");
        // Fields every verdict repeats are bounded, so a verdict always fits its topic.
        let long = |field: &str, value: serde_json::Value| {
            let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
            v[field] = value;
            parse_upload(Some(&serde_json::to_vec(&v).unwrap()), 16 << 20).unwrap_err()
        };
        for field in ["event_id", "media_id", "tenant", "surface", "content_type", "uploaded_at"] {
            let err = long(field, "x".repeat(MAX_ID_BYTES + 1).into());
            assert_eq!(err.class(), "field_too_large", "{field}");
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = long("attributes", serde_json::json!({"blob": "y".repeat(MAX_ATTRIBUTES_BYTES)}));
        assert_eq!(err.class(), "field_too_large");
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["event_id"] = "x".repeat(MAX_ID_BYTES).into();
        assert!(parse_upload(Some(&serde_json::to_vec(&v).unwrap()), 16 << 20).is_ok(), "at the limit is fine");
        assert_eq!(parse_upload(None, 10).unwrap_err().class(), "empty");
    }
}
