//! PDQ hash core, the image-scaling check, and decode+hash throughput.
//!
//! Test images come from the fixture photo `tests/fixtures/pdq/images/jpg_crop_1600x1200.jpg`,
//! decoded once: "1 MP" is its top-left 1024×1024 crop, "12 MP" is 4000×3000 tiled from the
//! whole photo. The decode+hash cases encode the 1 MP crop as baseline 4:2:0 JPEGs at qualities
//! 75, 85 and 90 in memory (entropy decoding, the largest part of a decode, grows with quality),
//! then decode and hash one (Cli) per iteration. `animation_frames` decodes a 100-frame GIF with
//! and without hashing every frame: what hashing every frame of an animation costs.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use perisai::hash::pdq::{hash, sampling_disagreement, Convention};
use perisai::media::decode::{animation_frames, decode, Channels, DecodeLimits, Image};

fn photo() -> Image {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pdq/images/jpg_crop_1600x1200.jpg");
    decode(&std::fs::read(path).expect("fixture"), &DecodeLimits::default()).expect("decode")
}

/// `w × h` RGB image whose pixel (x, y) is the photo's (x mod W, y mod H).
fn tiled(src: &Image, w: u32, h: u32) -> Image {
    assert_eq!(src.channels, Channels::Rgb);
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        let sy = (y % src.height) as usize;
        for x in 0..w {
            let sx = (x % src.width) as usize;
            let i = (sy * src.width as usize + sx) * 3;
            pixels.extend_from_slice(&src.pixels[i..i + 3]);
        }
    }
    Image { width: w, height: h, channels: Channels::Rgb, pixels }
}

fn encode_jpeg(img: &Image, quality: f32) -> Vec<u8> {
    std::panic::catch_unwind(|| {
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        c.set_size(img.width as usize, img.height as usize);
        c.set_fastest_defaults();
        c.set_quality(quality);
        let mut started = c.start_compress(Vec::new()).expect("start");
        started.write_scanlines(&img.pixels).expect("write");
        started.finish().expect("finish")
    })
    .expect("encode")
}

fn bench(c: &mut Criterion) {
    let photo = photo();
    let one = tiled(&photo, 1024, 1024);
    let twelve = tiled(&photo, 4000, 3000);

    // Printed so that a run can be checked against the reference driver on the same pixels.
    for (name, img) in [("1MP", &one), ("12MP", &twelve)] {
        for conv in [Convention::Full, Convention::Cli] {
            let out = hash(img, conv);
            eprintln!("hash {conv:?} {name}: {} q{}", out.hash, out.quality);
        }
    }

    let mut g = c.benchmark_group("pdq_hash");
    g.sample_size(20);
    for (name, img) in [("1MP", &one), ("12MP", &twelve)] {
        for conv in [Convention::Full, Convention::Cli] {
            g.bench_with_input(BenchmarkId::new(format!("{conv:?}"), name), img, |b, img| {
                b.iter(|| hash(std::hint::black_box(img), conv))
            });
        }
    }
    g.finish();

    // The image-scaling check every `cli` hash of an image over 512 px pays, beside that hash.
    let mut g = c.benchmark_group("scaling_check");
    g.sample_size(20);
    for (name, img) in [("1MP", &one), ("12MP", &twelve)] {
        g.bench_with_input(BenchmarkId::new("hash_cli", name), img, |b, img| {
            b.iter(|| hash(std::hint::black_box(img), Convention::Cli))
        });
        g.bench_with_input(BenchmarkId::new("sampling_disagreement", name), img, |b, img| {
            b.iter(|| sampling_disagreement(std::hint::black_box(img)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("decode_and_hash");
    g.sample_size(30);
    g.throughput(Throughput::Elements(1));
    for quality in [75u8, 85, 90] {
        let jpeg = encode_jpeg(&one, f32::from(quality));
        eprintln!("jpeg 1MP q{quality}: {} bytes", jpeg.len());
        g.bench_with_input(BenchmarkId::new("jpeg_1MP_cli", format!("q{quality}")), &jpeg, |b, jpeg| {
            b.iter(|| {
                let img = decode(std::hint::black_box(jpeg), &DecodeLimits::default()).expect("decode");
                hash(&img, Convention::Cli)
            })
        });
        g.bench_with_input(BenchmarkId::new("jpeg_1MP_decode_only", format!("q{quality}")), &jpeg, |b, jpeg| {
            b.iter(|| decode(std::hint::black_box(jpeg), &DecodeLimits::default()).expect("decode"))
        });
    }
    g.finish();

    // Every animation frame is hashed: a 100-frame 480×270 GIF (crops of the photo sliding
    // across it), its frames decoded and composited as the worker does, with and without the
    // PDQ hash (Cli, as the worker's default) of each.
    let frames: Vec<image::Frame> = (0..100u32)
        .map(|i| {
            let buffer = image::RgbaImage::from_fn(480, 270, |x, y| {
                let j = (((y + i * 3) % photo.height) * photo.width + (x + i * 5) % photo.width) as usize * 3;
                image::Rgba([photo.pixels[j], photo.pixels[j + 1], photo.pixels[j + 2], 255])
            });
            image::Frame::new(buffer)
        })
        .collect();
    let mut gif = Vec::new();
    image::codecs::gif::GifEncoder::new_with_speed(&mut gif, 10).encode_frames(frames).expect("gif");
    eprintln!("gif 100 frames 480x270: {} bytes", gif.len());
    let limits = DecodeLimits::default();
    let mut g = c.benchmark_group("animation_frames");
    g.sample_size(10);
    g.throughput(Throughput::Elements(100));
    g.bench_function("gif_100x480x270_decode_only", |b| {
        b.iter(|| {
            let deadline = std::time::Instant::now() + limits.deadline;
            animation_frames(&gif, &limits, deadline, |_, frame| {
                std::hint::black_box(frame.to_image());
            })
            .expect("frames")
        })
    });
    g.bench_function("gif_100x480x270_decode_and_hash", |b| {
        b.iter(|| {
            let deadline = std::time::Instant::now() + limits.deadline;
            animation_frames(&gif, &limits, deadline, |_, frame| {
                std::hint::black_box(hash(&frame.to_image(), Convention::Cli));
            })
            .expect("frames")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
