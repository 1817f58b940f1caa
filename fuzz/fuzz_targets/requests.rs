//! What local clients send: a control-socket request line (`aggregatord dump`
//! talks JSON to the running daemon) and the dashboard's `since`/`until`
//! texts. Parsing answers, never panics (`since=300000y` once did).
//! `cargo fuzz run requests`
#![no_main]
use libfuzzer_sys::fuzz_target;
use roomsense::aggregatord::Request;
use roomsense::contract::Timestamp;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (line, times) = text.split_once('\n').unwrap_or((&text, ""));
    let _ = serde_json::from_str::<Request>(line);
    for t in times.split('&') {
        if let Ok(ts) = Timestamp::parse_ago(t) {
            // Shown and compared, as the API does with it.
            let _ = ts.to_string();
            let _ = ts.micros();
        }
    }
});
