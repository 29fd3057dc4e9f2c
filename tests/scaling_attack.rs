//! The image-scaling attack on PDQ's `cli` convention: a large image of which only the pixels
//! the 512×512 nearest-neighbour resize samples (about 6 % at 2048 px) were replaced hashes as
//! whatever the attacker chose — an allowlisted photo, or nothing in any bank. The sampling check
//! (`pdq::sampling_disagreement`) must flag such images and no fixture photo.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use perisai::app;
use perisai::bank::BankSet;
use perisai::config::{BankSettings, Settings, Switch};
use perisai::event::{Action, Reason, UploadEvent, Verdict};
use perisai::hash::pdq::{self, Convention, SCALING_ANOMALY_THRESHOLD};
use perisai::media::decode::{self, Channels, DecodeLimits, Image};
use perisai::metrics::Metrics;
use perisai::policy;
use perisai::screen::Mode;

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

fn png_of(img: &Image) -> Vec<u8> {
    let rgb = image::RgbImage::from_raw(img.width, img.height, img.pixels.clone()).expect("RGB pixels");
    let mut out = std::io::Cursor::new(Vec::new());
    rgb.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn allow_match(v: &Verdict) -> Option<bool> {
    v.reasons.iter().find_map(|r| match r {
        Reason::HashMatch { action: Action::Allow, unconfirmed, .. } => Some(*unconfirmed),
        _ => None,
    })
}

/// Below the scaling check's threshold an attack would still pass the `cli` sample, so an
/// allowlist PDQ match allows only if the full image matches the entry too: an honest large
/// upload of an allowlisted picture is allowed, the forged one's match is reported unconfirmed
/// and allows nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlist_match_needs_the_full_image_to_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let photos = images_under(&root.join("tests/fixtures/pdq/images"));
    let named = |n: &str| photos.iter().find(|(name, _)| name == n).map(|(_, i)| i.clone()).unwrap();
    let victim = upscaled(&named("jpg_crop_1600x1200.jpg"), 2048);
    let honest = upscaled(&named("sk_coffee.png"), 1024);
    let forged = attacked(&victim, &upscaled(&named("sk_coffee.png"), 512));
    let cli = |img: &Image| pdq::hash(img, Convention::Cli).hash.to_string();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("known-good.csv");
    std::fs::write(&file, format!("signal,hash,entry\npdq,{},honest\npdq,{},forged\n", cli(&honest), cli(&forged))).unwrap();
    let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    settings.classifier.enabled = Switch::Off;
    settings.banks = vec![BankSettings { file: file.display().to_string(), ..BankSettings::new("known-good", Action::Allow) }];
    let settings = Arc::new(settings);
    let metrics = Metrics::new();
    let banks = Arc::new(BankSet::load(&settings.banks, &metrics).unwrap());
    let screen = app::build_screen(&settings, banks, &metrics, Mode::ScoreAll).unwrap();
    let event = UploadEvent::local("upload", "t");
    let v = screen.screen_bytes(&event, png_of(&honest), Instant::now()).await;
    assert_eq!((v.action, allow_match(&v)), (Action::Allow, Some(false)), "{v:?}");
    let v = screen.screen_bytes(&event, png_of(&forged), Instant::now()).await;
    assert_eq!(allow_match(&v), Some(true), "the forged image's allowlist match is unconfirmed: {v:?}");
    assert_eq!(v.action, Action::Review, "{v:?}");
    // The same reasons without the unconfirmed mark would have allowed it.
    let mut trusted = v.reasons.clone();
    for r in &mut trusted {
        if let Reason::HashMatch { unconfirmed, .. } = r {
            *unconfirmed = false;
        }
    }
    trusted.retain(|r| !matches!(r, Reason::MediaError { .. }));
    assert_eq!(policy::action_of(&trusted, Action::Review), Action::Allow);
}

/// A known image forged so that its 512×512 sample shows something innocent is matched by what
/// viewers see: its full-resolution hash goes against every bank, so it gets the block bank's
/// action, not a review the attacker chose, and the anomaly stays in the reasons. The bank holds
/// the original photo's hash as a partner would compute it (the `cli` convention on the photo as
/// it is), not the forged file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_known_image_gets_the_bank_s_action() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let photos = images_under(&root.join("tests/fixtures/pdq/images"));
    let named = |n: &str| photos.iter().find(|(name, _)| name == n).map(|(_, i)| i.clone()).unwrap();
    let original = named("jpg_crop_1600x1200.jpg");
    let forged = attacked(&upscaled(&original, 2048), &upscaled(&named("sk_coffee.png"), 512));
    let known = pdq::hash(&original, Convention::Cli).hash;
    assert!(pdq::hash(&forged, Convention::Cli).hash.distance(&known) > 64, "the sample hides the known image");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("csam.csv");
    std::fs::write(&file, format!("signal,hash,entry\npdq,{known},case-1\n")).unwrap();
    let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    settings.classifier.enabled = Switch::Off;
    settings.banks = vec![BankSettings { file: file.display().to_string(), ..BankSettings::new("csam", Action::Block) }];
    let settings = Arc::new(settings);
    let metrics = Metrics::new();
    let banks = Arc::new(BankSet::load(&settings.banks, &metrics).unwrap());
    let screen = app::build_screen(&settings, banks, &metrics, Mode::Worker).unwrap();
    let v = screen.screen_bytes(&UploadEvent::local("upload", "t"), png_of(&forged), Instant::now()).await;
    assert_eq!(v.action, Action::Block, "{v:?}");
    let matched = v.reasons.iter().find_map(|r| match r {
        Reason::HashMatch { bank, entry, full_resolution, distance, .. } if bank == "csam" => Some((entry.clone(), *full_resolution, *distance)),
        _ => None,
    });
    let (entry, full_resolution, distance) = matched.unwrap_or_else(|| panic!("no match on the known image: {v:?}"));
    eprintln!("full-resolution match at distance {distance:?}");
    assert_eq!((entry.as_str(), full_resolution), ("case-1", true), "{v:?}");
    assert!(
        v.reasons.iter().any(|r| matches!(r, Reason::MediaError { error, .. } if error == policy::SCALING_ANOMALY)),
        "the anomaly stays in the reasons: {v:?}"
    );
    // Retro gets the same hash from the verdict.
    let more = v.signals.more_pdq.clone().unwrap_or_default();
    assert!(more.len() == 1 && more[0].ends_with(",-,full"), "{more:?}");
    // An honest upload of the original is blocked by its sample, with no anomaly.
    let v = screen.screen_bytes(&UploadEvent::local("honest", "t"), png_of(&upscaled(&original, 2048)), Instant::now()).await;
    assert_eq!(v.action, Action::Block, "{v:?}");
    assert!(v.signals.more_pdq.is_none() && !v.reasons.iter().any(|r| matches!(r, Reason::MediaError { .. })), "{v:?}");
}
