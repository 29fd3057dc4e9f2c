//! vPDQ, Meta's video hash: the PDQ hash of every sampled frame (full resolution, the `full`
//! convention), with the frame's number, quality and timestamp. Which frames are sampled and how
//! they become RGB is the video helper's part (see `media::video`); this module hashes a frame
//! and writes and reads the two text forms partners exchange.

use std::fmt::Write as _;

use super::pdq::{self, Convention, PdqHash};
use crate::media::decode::Image;
use crate::media::video::{VideoError, VideoLimits, VideoRun};

/// One sampled frame's hash.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VpdqFeature {
    pub frame: u64,
    pub quality: u8,
    pub hash: PdqHash,
    /// Seconds: frame number / frame rate, computed in float32 as vpdq does.
    pub timestamp: f64,
}

impl VpdqFeature {
    /// Hashes one sampled frame as vpdq does: PDQ of the whole frame at its own resolution.
    pub fn of_frame(frame: u64, timestamp: f64, image: &Image) -> Self {
        let out = pdq::hash(image, Convention::Full);
        Self { frame, quality: out.quality, hash: out.hash, timestamp }
    }

    /// The line vpdq's hasher writes: `FRAME_NUMBER,QUALITY,PDQ_HEX,TIMESTAMP` (3 decimals).
    pub fn line(&self) -> String {
        format!("{},{},{},{:.3}", self.frame, self.quality, self.hash, self.timestamp)
    }
}

/// A whole video's features, decoded by the helper under `limits`: every sampled frame hashed
/// on this task as it arrives, and the error that cut decoding short, if any (the features hashed
/// before it are returned too). For one-off hashing (`perisai hash --video`, the demo's bank);
/// the screen hashes frames on its CPU pool instead.
pub async fn hash_video(bytes: &[u8], limits: &VideoLimits) -> (Vec<VpdqFeature>, Option<VideoError>) {
    let mut run = VideoRun::start(bytes, limits);
    let mut features = Vec::new();
    while let Some(frame) = run.next_frame().await {
        features.push(VpdqFeature::of_frame(frame.number, frame.timestamp, &frame.image));
    }
    (features, run.finish().await.error)
}

/// python-threatexchange's `vpdq` signal string: a JSON list of `"PDQ_HEX,QUALITY,TIMESTAMP"`.
/// Timestamps are written with 3 decimals (python-threatexchange writes 3 significant digits and
/// reads any decimal number).
pub fn to_signal_string(features: &[VpdqFeature]) -> String {
    let mut out = String::from("[");
    for (i, f) in features.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "\"{}\"", signal_item(f));
    }
    out.push(']');
    out
}

/// One feature as python-threatexchange's signal string holds it: `PDQ_HEX,QUALITY,TIMESTAMP`.
pub fn signal_item(f: &VpdqFeature) -> String {
    format!("{},{},{:.3}", f.hash, f.quality, f.timestamp)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VpdqParseError {
    #[error("not a JSON list of strings")]
    NotAList,
    #[error("feature {0}: expected \"PDQ_HEX,QUALITY,TIMESTAMP\"")]
    Shape(usize),
    #[error("feature {0}: the PDQ hash is not 64 hex characters")]
    Hash(usize),
    #[error("feature {0}: quality must be 0 to 100")]
    Quality(usize),
    #[error("feature {0}: the timestamp must be a number >= 0")]
    Timestamp(usize),
    #[error("no features")]
    Empty,
}

/// Reads a signal string (frame numbers are not in it: features are numbered in order).
pub fn parse_signal_string(text: &str) -> Result<Vec<VpdqFeature>, VpdqParseError> {
    let items: Vec<String> = serde_json::from_str(text).map_err(|_| VpdqParseError::NotAList)?;
    parse_items(&items)
}

/// Reads the items of a signal string (see [`parse_signal_string`]).
pub fn parse_items(items: &[String]) -> Result<Vec<VpdqFeature>, VpdqParseError> {
    if items.is_empty() {
        return Err(VpdqParseError::Empty);
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut parts = item.split(',');
            let (Some(hash), Some(quality), Some(timestamp), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
                return Err(VpdqParseError::Shape(i));
            };
            let hash = hash.trim();
            if hash.len() != 64 {
                return Err(VpdqParseError::Hash(i));
            }
            let hash: PdqHash = hash.to_ascii_lowercase().parse().map_err(|_| VpdqParseError::Hash(i))?;
            let quality: u8 = quality.trim().parse().ok().filter(|q| *q <= 100).ok_or(VpdqParseError::Quality(i))?;
            let timestamp: f64 =
                timestamp.trim().parse().ok().filter(|t: &f64| t.is_finite() && *t >= 0.0).ok_or(VpdqParseError::Timestamp(i))?;
            Ok(VpdqFeature { frame: i as u64, quality, hash, timestamp })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_strings_round_trip() {
        let hash: PdqHash = format!("{:064x}", 0xdead_beefu64).parse().unwrap();
        let features = vec![
            VpdqFeature { frame: 0, quality: 100, hash, timestamp: 0.0 },
            VpdqFeature { frame: 1, quality: 49, hash, timestamp: 0.9676666 },
        ];
        let text = to_signal_string(&features);
        assert_eq!(text, format!("[\"{hash},100,0.000\", \"{hash},49,0.968\"]"));
        let back = parse_signal_string(&text).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!((back[1].hash, back[1].quality, back[1].timestamp), (hash, 49, 0.968));
        // python-threatexchange's own 3-significant-digit form reads too.
        let theirs = format!("[\"{hash},100,1e+02\"]");
        assert_eq!(parse_signal_string(&theirs).unwrap()[0].timestamp, 100.0);
    }

    #[test]
    fn bad_signal_strings_say_which_feature() {
        let hash = "f".repeat(64);
        assert_eq!(parse_signal_string("{}"), Err(VpdqParseError::NotAList));
        assert_eq!(parse_signal_string("[]"), Err(VpdqParseError::Empty));
        assert_eq!(parse_signal_string(&format!("[\"{hash},100,0.0\", \"{hash},101,0.0\"]")), Err(VpdqParseError::Quality(1)));
        assert_eq!(parse_signal_string(&format!("[\"{hash},100\"]")), Err(VpdqParseError::Shape(0)));
        assert_eq!(parse_signal_string("[\"abc,100,0.0\"]"), Err(VpdqParseError::Hash(0)));
        assert_eq!(parse_signal_string(&format!("[\"{hash},100,-1\"]")), Err(VpdqParseError::Timestamp(0)));
    }

    #[test]
    fn lines_are_vpdq_s() {
        let hash: PdqHash = "0".repeat(63).chars().chain(std::iter::once('1')).collect::<String>().parse().unwrap();
        let f = VpdqFeature { frame: 29, quality: 87, hash, timestamp: f64::from(29f32 / 29.97f32) };
        assert_eq!(f.line(), format!("29,87,{hash},0.968"));
    }
}
