//! Animated images are screened by the frames viewers play, not only their still image: a banned
//! frame blocks even behind a benign (or allowlisted) default image, an allowlist passes an
//! animation only when it covers every picture, the classifier's finding is the worst picture's,
//! and decoding runs under a deadline and a byte budget. Real photos, the real PDQ hasher and the
//! real classifier; bank hashes come from the original photos, not from the files screened.
//! Needs `make setup` (the real model).

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use image::{Frame, RgbaImage};
use perisai::app;
use perisai::bank::BankSet;
use perisai::config::{BankSettings, Settings, Switch};
use perisai::event::{Action, Reason, UploadEvent, Verdict};
use perisai::hash::pdq::{self, Convention};
use perisai::media::decode::{self, Channels, DecodeLimits, Image};
use perisai::metrics::Metrics;
use perisai::screen::{Mode, Screen};

const SIDE: u32 = 256;

/// A fixture photo, cropped to SIDE×SIDE from its top-left corner.
fn photo(name: &str) -> RgbaImage {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pdq/images").join(name);
    let img = decode::decode(&std::fs::read(path).unwrap(), &DecodeLimits::default()).unwrap();
    assert!(img.width >= SIDE && img.height >= SIDE, "{name} is too small");
    RgbaImage::from_fn(SIDE, SIDE, |x, y| {
        let i = (y * img.width + x) as usize;
        match img.channels {
            Channels::Rgb => image::Rgba([img.pixels[3 * i], img.pixels[3 * i + 1], img.pixels[3 * i + 2], 255]),
            Channels::Gray => image::Rgba([img.pixels[i], img.pixels[i], img.pixels[i], 255]),
        }
    })
}

fn rgb(img: &RgbaImage) -> Image {
    let pixels = img.as_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    Image { width: img.width(), height: img.height(), channels: Channels::Rgb, pixels }
}

fn pdq_hex(img: &RgbaImage) -> String {
    pdq::hash(&rgb(img), Convention::Cli).hash.to_string()
}

fn png(img: &RgbaImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// An APNG whose default image is `default` and whose animation plays `frames`. With
/// `hidden_default` the default image is not part of the animation: viewers that play APNG never
/// show it, those that do not show only it.
fn apng(default: &RgbaImage, frames: &[&RgbaImage], hidden_default: bool) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, SIDE, SIDE);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let played = frames.len() as u32 + u32::from(!hidden_default);
        encoder.set_animated(played, 0).unwrap();
        encoder.set_sep_def_img(hidden_default).unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(default.as_raw()).unwrap();
        for frame in frames {
            writer.write_image_data(frame.as_raw()).unwrap();
        }
        writer.finish().unwrap();
    }
    out
}

fn gif(frames: &[&RgbaImage]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 10);
        encoder.encode_frames(frames.iter().map(|f| Frame::new((*f).clone()))).unwrap();
    }
    out
}

/// An animated WebP: VP8X (animation flag), ANIM, then one ANMF per frame holding the frame's
/// lossless bitstream (`image` writes still WebPs only).
fn animated_webp(frames: &[&RgbaImage]) -> Vec<u8> {
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_vec();
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
        out
    }
    let u24 = |v: u32| v.to_le_bytes()[..3].to_vec();
    let mut body = b"WEBP".to_vec();
    body.extend(chunk(b"VP8X", &[&[0x02, 0, 0, 0][..], &u24(SIDE - 1), &u24(SIDE - 1)].concat()));
    body.extend(chunk(b"ANIM", &[0, 0, 0, 0, 0, 0]));
    for frame in frames {
        let mut still = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut still)
            .encode(frame.as_raw(), SIDE, SIDE, image::ExtendedColorType::Rgba8)
            .unwrap();
        // The still file is RIFF, size, WEBP, then its VP8L chunk.
        let vp8l = &still[12..];
        assert_eq!(&vp8l[..4], b"VP8L");
        let header = [u24(0), u24(0), u24(SIDE - 1), u24(SIDE - 1), u24(100), vec![0x02]].concat();
        body.extend(chunk(b"ANMF", &[&header[..], vp8l].concat()));
    }
    [&b"RIFF"[..], &(body.len() as u32).to_le_bytes(), &body].concat()
}

fn bank(dir: &Path, name: &str, action: Action, hashes: &[&str]) -> BankSettings {
    let file = dir.join(format!("{name}.csv"));
    let rows: String = hashes.iter().enumerate().map(|(i, h)| format!("pdq,{h},{name}-{i}\n")).collect();
    std::fs::write(&file, format!("signal,hash,entry\n{rows}")).unwrap();
    BankSettings { file: file.display().to_string(), ..BankSettings::new(name, action) }
}

fn screen_with(settings: Settings) -> Arc<Screen> {
    let settings = Arc::new(settings);
    let metrics = Metrics::new();
    let banks = Arc::new(BankSet::load(&settings.banks, &metrics).expect("banks"));
    app::build_screen(&settings, banks, &metrics, Mode::ScoreAll).unwrap_or_else(|e| panic!("{e} (run `make setup` first)"))
}

async fn screen(screen: &Screen, bytes: Vec<u8>) -> Verdict {
    let event = UploadEvent::local("upload", "t");
    screen.screen_bytes(&event, bytes, Instant::now()).await
}

fn banks_matched(v: &Verdict) -> Vec<String> {
    v.reasons
        .iter()
        .filter_map(|r| match r {
            Reason::HashMatch { bank, .. } => Some(bank.clone()),
            _ => None,
        })
        .collect()
}

fn media_error(v: &Verdict) -> Option<(String, String)> {
    v.reasons.iter().find_map(|r| match r {
        Reason::MediaError { error, detail } => Some((error.clone(), detail.clone())),
        _ => None,
    })
}

fn score(v: &Verdict) -> f32 {
    v.reasons
        .iter()
        .find_map(|r| match r {
            Reason::Classifier { score, .. } => Some(*score),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no classifier reason: {v:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_frames_block_whatever_the_still_image_shows() {
    let benign = photo("sk_coffee.png");
    let banned = photo("sk_astronaut.png");
    let other = photo("sk_chelsea.png");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    settings.classifier.enabled = Switch::Off;
    settings.banks = vec![
        bank(dir.path(), "known-good", Action::Allow, &[&pdq_hex(&benign)]),
        bank(dir.path(), "banned", Action::Block, &[&pdq_hex(&banned)]),
    ];
    settings.decode.max_frames = 16;
    let s = screen_with(settings);

    // Controls: each picture alone.
    let v = screen(&s, png(&benign)).await;
    assert_eq!((v.action, banks_matched(&v)), (Action::Allow, vec!["known-good".to_string()]), "{v:?}");
    let v = screen(&s, png(&banned)).await;
    assert_eq!((v.action, banks_matched(&v)), (Action::Block, vec!["banned".to_string()]), "{v:?}");
    let v = screen(&s, png(&other)).await;
    assert_eq!((v.action, banks_matched(&v)), (Action::Allow, vec![]), "{v:?}");

    // The case: a never-displayed benign default image, a banned animation frame.
    let v = screen(&s, apng(&benign, &[&banned], true)).await;
    assert_eq!(v.action, Action::Block, "{v:?}");
    assert_eq!(banks_matched(&v), vec!["banned".to_string()], "the allowlist does not cover the banned frame: {v:?}");
    assert_eq!((v.signals.frames, v.signals.frames_screened), (Some(1), Some(1)), "{v:?}");
    assert_eq!(v.signals.pdq.as_deref(), Some(pdq_hex(&benign).as_str()), "signals describe the still image");
    // An unknown frame behind an allowlisted default image: the allowlist does not vouch for it.
    let v = screen(&s, apng(&benign, &[&other], true)).await;
    assert_eq!((v.action, banks_matched(&v)), (Action::Allow, vec![]), "{v:?}");
    // The allowlist covers an animation of allowlisted pictures only.
    let v = screen(&s, apng(&benign, &[&benign, &benign], false)).await;
    assert_eq!((v.action, banks_matched(&v)), (Action::Allow, vec!["known-good".to_string()]), "{v:?}");
    assert_eq!(v.signals.frames, Some(3));

    // GIF (palette-quantised frames still match the original photo's hash) and animated WebP.
    for (format, bytes) in [("GIF", gif(&[&benign, &banned, &benign])), ("WebP", animated_webp(&[&benign, &banned, &benign]))] {
        let v = screen(&s, bytes).await;
        assert_eq!(v.action, Action::Block, "{format}: {v:?}");
        assert!(banks_matched(&v).contains(&"banned".to_string()), "{format}: {v:?}");
        assert_eq!((v.signals.frames, v.signals.frames_screened), (Some(3), Some(3)), "{format}: {v:?}");
        assert!(media_error(&v).is_none(), "{format}: {v:?}");
    }
    for (format, bytes) in [("GIF", gif(&[&benign, &benign])), ("WebP", animated_webp(&[&benign, &other]))] {
        let v = screen(&s, bytes).await;
        assert_eq!(v.action, Action::Allow, "{format}: {v:?}");
        assert!(!banks_matched(&v).contains(&"banned".to_string()), "{format}: {v:?}");
    }

    // Past max_frames every frame is still hashed and matched (only the classifier's frames
    // are spread): 40 frames of 100 ms, a banned one at index 25, which a spread of every
    // fourth frame would miss. The reason says when it plays; the verdict lists the distinct
    // frame hashes for retro.
    let mut long: Vec<&RgbaImage> = vec![&other; 40];
    long[25] = &banned;
    let v = screen(&s, timed_gif(&long, 100)).await;
    assert_eq!((v.signals.frames, v.signals.frames_screened), (Some(40), Some(40)), "{v:?}");
    assert_eq!(v.action, Action::Block, "{v:?}");
    let at = v.reasons.iter().find_map(|r| match r {
        Reason::HashMatch { bank, at, .. } if bank == "banned" => Some(*at),
        _ => None,
    });
    assert_eq!(at, Some(Some(2.5)), "{v:?}");
    let more = v.signals.more_pdq.as_deref().unwrap_or_default();
    assert_eq!(more.len(), 1, "the still image is `other`, so one more distinct picture: {more:?}");
    assert!(more[0].ends_with(",2.500"), "{more:?}");
}

/// A GIF whose frames each show for `delay_ms`.
fn timed_gif(frames: &[&RgbaImage], delay_ms: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 10);
        let delay = image::Delay::from_numer_denom_ms(delay_ms, 1);
        encoder.encode_frames(frames.iter().map(|f| Frame::from_parts((*f).clone(), 0, 0, delay))).unwrap();
    }
    out
}

/// The classifier's finding for an animation is its worst picture's score, each picture scored
/// as it would be alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classifier_scores_every_screened_frame() {
    let a = photo("sk_coffee.png");
    let b = photo("sk_astronaut.png");
    let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    settings.classifier.enabled = Switch::On;
    let s = screen_with(settings);
    let (score_a, score_b) = (score(&screen(&s, png(&a)).await), score(&screen(&s, png(&b)).await));
    assert_ne!(score_a, score_b);
    for (hidden, frames) in [(true, vec![&b]), (false, vec![&a, &b])] {
        let v = screen(&s, apng(&a, &frames, hidden)).await;
        assert_eq!(score(&v), score_a.max(score_b), "{v:?}");
    }
    let v = screen(&s, apng(&b, &[&a], true)).await;
    assert_eq!(score(&v), score_a.max(score_b), "{v:?}");
}

/// Decoding stops at its deadline and within its byte budget, with a media error (review),
/// never an allow; decodes that do not fit the worker's memory budget together wait their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoding_runs_under_a_deadline_and_a_byte_budget() {
    let noise = RgbaImage::from_fn(3000, 3000, |x, y| {
        let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519) >> 8;
        image::Rgba([v as u8, (v >> 8) as u8, (v >> 16) as u8, 255])
    });
    let big = png(&noise);

    let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    settings.classifier.enabled = Switch::Off;
    settings.decode.deadline_ms = 1;
    let v = screen(&screen_with(settings), big.clone()).await;
    assert_eq!(v.action, Action::Review, "{v:?}");
    let (kind, detail) = media_error(&v).expect("a media error");
    assert_eq!(kind, "decode_timeout", "{detail}");
    assert!(detail.contains("decode.deadline_ms"), "{detail}");

    // 3000×3000 RGBA: 36 MB stored, 27 MB as RGB; a 40 MB budget refuses it from the header.
    let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    settings.classifier.enabled = Switch::Off;
    settings.decode.max_bytes = 40 << 20;
    settings.decode.memory_budget_bytes = 40 << 20;
    let planned = decode::plan(&big, &DecodeLimits::default()).unwrap();
    assert_eq!(planned.bytes, 3000 * 3000 * (4 + 3));
    let v = screen(&screen_with(settings), big.clone()).await;
    let (kind, detail) = media_error(&v).expect("a media error");
    assert_eq!((v.action, kind.as_str()), (Action::Review, "too_large"), "{detail}");
    assert!(detail.contains("decode.max_bytes") && detail.contains("63000000"), "{detail}");

    // A budget that holds one such decode at a time: eight at once all decode, one after another.
    let mut settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    settings.classifier.enabled = Switch::Off;
    settings.decode.max_bytes = 64 << 20;
    settings.decode.memory_budget_bytes = 64 << 20;
    let s = screen_with(settings);
    let verdicts = futures::future::join_all((0..8).map(|_| screen(&s, big.clone()))).await;
    for v in verdicts {
        assert!(media_error(&v).is_none(), "{v:?}");
        assert_eq!(v.signals.width, Some(3000));
    }
}
