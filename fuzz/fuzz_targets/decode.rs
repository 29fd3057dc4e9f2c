//! Any bytes as media: decode must return pixels or an error under small limits, never panic
//! (a panic caught inside decode still aborts here: libFuzzer's panic hook reports it), never
//! allocate past what the limits allow, and never return pixels that break the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perisai::media::decode::{decode, DecodeLimits};

const LIMITS: DecodeLimits = DecodeLimits { max_pixels: 1 << 20, max_side: 4096 };

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = decode(data, &LIMITS) {
        let (w, h) = (image.width as usize, image.height as usize);
        assert!(w > 0 && h > 0 && w <= 4096 && h <= 4096 && w * h <= 1 << 20, "{w}x{h}");
        assert_eq!(image.pixels.len(), w * h * image.channels.bytes_per_pixel());
    }
});
