//! Media: fetching the bytes an event points at, and decoding them under limits.

pub mod decode;
pub mod fetch;
pub mod video;
