//! PDQ perceptual hash, bit-exact with facebook/ThreatExchange `pdq/cpp`.
//!
//! OWNER: PDQ work (issue 3). This file is a stub fixing the interface; bodies to be written.

use crate::media::decode::Image;

/// 256-bit PDQ hash. Text form: 64 lowercase hex characters exactly as `pdq-photo-hasher` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PdqHash(pub [u8; 32]);

/// `Cli`: side > 512 → nearest-neighbour resize to exactly 512×512 first (pdq-photo-hasher);
/// `Full`: full resolution (C++ library core, python-threatexchange).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Convention {
    #[default]
    Cli,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PdqOutput {
    pub hash: PdqHash,
    /// 0..=100
    pub quality: u8,
}

pub fn hash(img: &Image, convention: Convention) -> PdqOutput {
    let _ = (img, convention);
    PdqOutput { hash: PdqHash([0; 32]), quality: 0 }
}
