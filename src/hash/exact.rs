//! Exact hashes of the media bytes. StopNCII shares MD5 for video; banks may carry either.

use md5::{Digest, Md5};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactHashes {
    /// lowercase hex
    pub md5: String,
    /// lowercase hex
    pub sha256: String,
}

pub fn exact_hashes(bytes: &[u8]) -> ExactHashes {
    ExactHashes { md5: hex::encode(Md5::digest(bytes)), sha256: hex::encode(Sha256::digest(bytes)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let h = exact_hashes(b"abc");
        assert_eq!(h.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(h.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
