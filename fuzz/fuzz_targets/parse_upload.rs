//! Any bytes as a Kafka record: parse_upload must return Ok or a classified error, never panic,
//! and an event it accepts must survive being written back out and parsed again, its attributes
//! byte for byte (numbers beyond 64 bits, escapes and key order included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use perisai::event::parse_upload;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = parse_upload(Some(data), 1 << 20) else { return };
    let again = serde_json::to_vec(&event).expect("an accepted event serializes");
    let reparsed = parse_upload(Some(&again), usize::MAX).expect("an accepted event, written back out, parses");
    assert_eq!(
        (&reparsed.event_id, &reparsed.media_id, &reparsed.tenant, &reparsed.media, &reparsed.attributes),
        (&event.event_id, &event.media_id, &event.tenant, &event.media, &event.attributes)
    );
});
