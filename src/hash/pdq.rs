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

// Interface placeholders until the PDQ implementation lands (replaced wholesale at merge).
impl std::str::FromStr for PdqHash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|e| e.to_string())?;
        Ok(PdqHash(out))
    }
}
impl std::fmt::Display for PdqHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl PdqHash {
    pub fn distance(&self, other: &PdqHash) -> u32 {
        self.0.iter().zip(other.0.iter()).map(|(a, b)| (a ^ b).count_ones()).sum()
    }
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}
pub fn hash_dihedral(img: &Image, convention: Convention) -> ([PdqHash; 8], u8) {
    let _ = (img, convention);
    ([PdqHash([0; 32]); 8], 0)
}
