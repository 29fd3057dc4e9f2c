//! The image-scaling attack on PDQ's `cli` convention: a large image of which only the pixels
//! the 512×512 nearest-neighbour resize samples (about 6 % at 2048 px) were replaced hashes as
//! whatever the attacker chose — an allowlisted photo, or nothing in any bank. The sampling check
//! (`pdq::sampling_disagreement`) must flag such images and no fixture photo.

use std::path::Path;

use perisai::hash::pdq::{self, Convention, SCALING_ANOMALY_THRESHOLD};
use perisai::media::decode::{self, Channels, DecodeLimits, Image};

fn images_under(dir: &Path) -> Vec<(String, Image)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("fixture directory") {
        let path = entry.unwrap().path();
        let Ok(bytes) = std::fs::read(&path) else { continue };
        if let Ok(image) = decode::decode(&bytes, &DecodeLimits::default()) {
            out.push((path.file_name().unwrap().to_string_lossy().to_string(), image));
        }
    }
    out
}

/// An RGB image `side`×`side` upscaled (nearest neighbour) from `img`, so that every fixture
/// photo can stand for a large upload.
fn upscaled(img: &Image, side: u32) -> Image {
    let bpp = img.channels.bytes_per_pixel();
    let mut pixels = Vec::with_capacity((side * side * 3) as usize);
    for y in 0..side {
        let sy = (y as u64 * u64::from(img.height) / u64::from(side)) as usize;
        for x in 0..side {
            let sx = (x as u64 * u64::from(img.width) / u64::from(side)) as usize;
            let i = (sy * img.width as usize + sx) * bpp;
            match img.channels {
                Channels::Gray => pixels.extend_from_slice(&[img.pixels[i]; 3]),
                Channels::Rgb => pixels.extend_from_slice(&img.pixels[i..i + 3]),
            }
        }
    }
    Image { width: side, height: side, channels: Channels::Rgb, pixels }
}

/// `victim` with only the pixels the `cli` resize samples replaced by `decoy` (512×512).
fn attacked(victim: &Image, decoy: &Image) -> Image {
    let mut out = victim.clone();
    let (w, h) = (victim.width as usize, victim.height as usize);
    for y in 0..512 {
        let sy = y * h / 512;
        for x in 0..512 {
            let sx = x * w / 512;
            let (d, o) = ((y * 512 + x) * 3, (sy * w + sx) * 3);
            out.pixels[o..o + 3].copy_from_slice(&decoy.pixels[d..d + 3]);
        }
    }
    out
}

#[test]
fn scaling_attacks_are_flagged_and_photos_are_not() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut photos = images_under(&root.join("tests/fixtures/pdq/images"));
    photos.extend(images_under(&root.join("tests/fixtures/nsfw/images")));
    photos.extend(images_under(&root.join("demo/media")));
    assert!(photos.len() > 100, "{} fixture images", photos.len());
    // Every fixture as a 2048×2048 upload (and the large ones as they are): none is flagged.
    let mut scores: Vec<(f32, String)> = Vec::new();
    for (name, photo) in &photos {
        for image in [Some(upscaled(photo, 2048)), (photo.width.max(photo.height) >= 1024).then(|| photo.clone())].into_iter().flatten() {
            scores.push((pdq::sampling_disagreement(&image).expect("resampled"), name.clone()));
        }
    }
    scores.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!("{} images checked; threshold {SCALING_ANOMALY_THRESHOLD}; largest disagreements {:?}", scores.len(), &scores[..6]);
    assert!(scores[0].0 < SCALING_ANOMALY_THRESHOLD, "a fixture image was flagged: {:?}", scores[0]);
    let photo = scores.iter().find(|(_, name)| !name.starts_with("syn_")).unwrap();
    eprintln!("largest on a photo (not a synthetic pattern): {photo:?}");

    // The attack: a photo that hashes as another one under `cli`, and is flagged.
    let named = |n: &str| photos.iter().find(|(name, _)| name == n).map(|(_, i)| i.clone()).unwrap();
    let victim = upscaled(&named("jpg_crop_1600x1200.jpg"), 2048);
    let decoy = upscaled(&named("sk_coffee.png"), 512);
    let forged = attacked(&victim, &decoy);
    let hash = |img: &Image| pdq::hash(img, Convention::Cli).hash;
    assert_eq!(hash(&forged), pdq::hash(&decoy, Convention::Full).hash, "the attack works on the cli convention");
    assert!(hash(&forged).distance(&hash(&victim)) > 64, "and hides the victim");
    let flagged = pdq::sampling_disagreement(&forged).unwrap();
    eprintln!("forged image disagreement {flagged:.2}");
    assert!(flagged > SCALING_ANOMALY_THRESHOLD, "{flagged}");
}
