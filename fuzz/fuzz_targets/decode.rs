//! Any bytes as media: planning and decoding (the still image and every animation frame) must
//! return pixels or an error under small limits, never panic (a panic caught inside decode still
//! aborts here: libFuzzer's panic hook reports it), never allocate past what the limits allow,
//! never run past the deadline by more than a read, and never return pixels that break the limits.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use perisai::media::decode::{animation_frames, decode_until, plan, DecodeLimits, Image};

const LIMITS: DecodeLimits =
    DecodeLimits { max_pixels: 1 << 20, max_side: 4096, max_bytes: 64 << 20, deadline: Duration::from_secs(2) };

fn check(image: &Image) {
    let (w, h) = (image.width as usize, image.height as usize);
    assert!(w > 0 && h > 0 && w <= 4096 && h <= 4096 && w * h <= 1 << 20, "{w}x{h}");
    assert_eq!(image.pixels.len(), w * h * image.channels.bytes_per_pixel());
}

fuzz_target!(|data: &[u8]| {
    // The worker decodes only what its plan admits; the plan itself must hold up to any bytes.
    let Ok(planned) = plan(data, &LIMITS) else { return };
    assert!(planned.bytes <= LIMITS.max_bytes);
    let deadline = Instant::now() + LIMITS.deadline;
    if let Ok(image) = decode_until(data, &LIMITS, deadline) {
        check(&image);
    }
    if planned.animated {
        let _ = animation_frames(data, &LIMITS, deadline, |_, frame| check(&frame.to_image()));
    }
    assert!(Instant::now() < deadline + Duration::from_secs(1), "ran past the deadline");
});
