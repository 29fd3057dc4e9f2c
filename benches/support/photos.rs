//! The JPEG fixture photos the benches screen, and distinct files made from them.
// Each bench uses part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// tests/fixtures: the photos' folder, and the screen's path root in the benches.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The JPEG fixture photos (pdq/images, then nsfw/images, each sorted by name), as paths
/// relative to [`fixtures`].
pub fn photo_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["pdq/images", "nsfw/images"] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures().join(dir))
            .expect("fixture folder")
            .map(|e| Path::new(dir).join(e.expect("entry").file_name()))
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect();
        names.sort();
        out.extend(names);
    }
    assert!(out.len() >= 10, "{} fixture JPEGs", out.len());
    out
}

/// The photos' bytes, in the order of [`photo_paths`].
pub fn photos() -> Vec<Vec<u8>> {
    photo_paths().iter().map(|p| std::fs::read(fixtures().join(p)).expect("fixture photo")).collect()
}

/// `photo` with a comment segment holding `text` after its start marker: a distinct file (its
/// own SHA-256), the same picture and the same decode and inference cost.
pub fn with_comment(photo: &[u8], text: &str) -> Vec<u8> {
    let mut out = photo[..2].to_vec();
    out.extend([0xFF, 0xFE]);
    out.extend(u16::try_from(text.len() + 2).expect("a short comment").to_be_bytes());
    out.extend(text.as_bytes());
    out.extend(&photo[2..]);
    out
}
