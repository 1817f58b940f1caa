//! Any bytes on any topic: validation answers, never panics; what it accepts is
//! consistent with its topic.  `cargo fuzz run payload`
#![no_main]
use libfuzzer_sys::fuzz_target;
use roomsense::contract::{topic, validate_reading};

fuzz_target!(|data: &[u8]| {
    // First line: the topic; the rest: the payload.
    let (t, payload) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
        None => ("building/floor1/room101/temperature/temp_001".to_owned(), data),
    };
    if let topic::Parsed::Reading { sensor_type, sensor_id, .. } = topic::parse(&t) {
        if let Ok(r) = validate_reading(sensor_type, sensor_id, payload, chrono::Utc::now()) {
            assert_eq!(r.sensor_id, sensor_id);
            assert!(r.value.is_finite());
        }
    }
});
