//! Any config text: loads, or an error naming file and key; never a panic.
//! `cargo fuzz run config`
#![no_main]
use libfuzzer_sys::fuzz_target;
use roomsense::config::{from_text, AggregatordConfig, ConfigError, SensordConfig};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = Path::new("fuzz.yaml");
    for result in [from_text::<SensordConfig>(file, text).err(), from_text::<AggregatordConfig>(file, text).err()] {
        if let Some(ConfigError::Invalid { key, .. }) = result {
            assert!(!key.is_empty());
        }
    }
});
