//! Hashes of media: exact (MD5, SHA-256 of the bytes) and perceptual (PDQ of the pixels).
//! Knows no banks.

pub mod exact;
pub mod pdq;
pub mod vpdq;
