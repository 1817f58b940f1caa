//! Property tests for everything that parses untrusted input: reading payloads
//! and topics from the network, config files from operators. Whatever the input,
//! the answer is a value or an error, never a panic.

use proptest::prelude::*;
use roomsense::config::{AggregatordConfig, ConfigError, SensordConfig};
use roomsense::contract::{topic, validate_reading, SensorTopic, SensorType};
use std::path::Path;

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// JSON-ish payloads: mostly well-formed readings with hostile values.
fn payloads() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        any::<f64>().prop_map(|v| format!("{v}")),
        Just("1e400".to_owned()),
        Just("-0".to_owned()),
        Just("\"22\"".to_owned()),
        Just("null".to_owned()),
        Just("[1]".to_owned()),
        "[0-9]{1,400}".prop_map(|s| s),
    ];
    let text = prop_oneof![
        "\\PC{0,20}",
        Just("temperature".to_owned()),
        Just("temp_001".to_owned()),
        Just("celsius".to_owned())
    ];
    let ts = prop_oneof![
        Just("2026-01-24T10:00:00.123Z".to_owned()),
        Just("2026-01-24T10:00:00.123456".to_owned()),
        Just("9999-12-31T23:59:59Z".to_owned()),
        "\\PC{0,30}",
    ];
    let reading = (
        text.clone(),
        text.clone(),
        value,
        text,
        ts,
        any::<Option<u64>>(),
    )
        .prop_map(|(id, ty, v, unit, ts, seq)| {
            let seq = seq.map(|s| format!(",\"seq\":{s}")).unwrap_or_default();
            format!(
                r#"{{"sensor_id":{},"sensor_type":{},"value":{v},"unit":{},"timestamp":{}{seq}}}"#,
                json(&id),
                json(&ty),
                json(&unit),
                json(&ts)
            )
            .into_bytes()
        });
    prop_oneof![
        4 => reading,
        1 => proptest::collection::vec(any::<u8>(), 0..6000),
        1 => (1usize..5000).prop_map(|depth| "[".repeat(depth).into_bytes()),
        1 => (1usize..3000).prop_map(|depth| format!("{}1{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
    ]
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_payload_is_a_valid_reading_or_a_reasoned_rejection(payload in payloads(), ty in "\\PC{0,12}|temperature", id in "\\PC{0,12}|temp_001") {
        // A type the contract does not know is refused with the topic (ingest).
        let Some(Ok(t)) = SensorTopic::parse(&format!("b/f/r/{ty}/{id}")) else {
            return Ok(());
        };
        match validate_reading(&t, &payload, now()) {
            Ok(r) => {
                // Whatever passed is consistent with its topic and physically plausible.
                prop_assert_eq!(r.sensor_type.as_str(), t.sensor_type().as_str());
                prop_assert_eq!(r.sensor_id.as_str(), t.sensor_id());
                let kind: SensorType = r.sensor_type.parse().map_err(|()| TestCaseError::fail("unknown type accepted"))?;
                prop_assert!(kind.accepts(r.value) && r.value.is_finite());
                prop_assert_eq!(r.unit.as_str(), kind.unit());
            }
            Err(rejection) => prop_assert!(!rejection.reason.as_str().is_empty()),
        }
    }

    #[test]
    fn topic_parsing_is_total_and_round_trips(levels in proptest::collection::vec("[^/\\u{0}]{0,8}", 0..8)) {
        let t = levels.join("/");
        match topic::parse(&t) {
            topic::Parsed::Reading { prefix, sensor_type, sensor_id } => {
                prop_assert_eq!(format!("{prefix}/{sensor_type}/{sensor_id}"), t);
            }
            topic::Parsed::Status { prefix } => prop_assert_eq!(format!("{prefix}/status"), t),
            topic::Parsed::Alert { prefix, rule } => prop_assert_eq!(format!("{prefix}/alerts/{rule}"), t),
            topic::Parsed::Unrecognized => {}
        }
    }

    /// `since`/`until` in the dashboard's query string and on dump's command
    /// line (`since=300000y` once panicked on the subtraction).
    #[test]
    fn any_time_text_is_a_time_or_an_error(text in "[0-9]{1,24}(y|d|h|m|s|ms|us|ns)|[+-]?[0-9]{1,6}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?|\\PC{0,30}") {
        if let Ok(t) = roomsense::contract::Timestamp::parse_ago(&text) {
            // Whatever it parsed to can be shown and compared, as the API does.
            prop_assert!(!t.to_string().is_empty());
            let _ = t.micros();
        }
    }

    /// The control socket's one request line, from any local client.
    #[test]
    fn any_control_request_line_is_a_request_or_an_error(
        since in proptest::option::of("[0-9]{1,7}-[0-9]{2}-[0-9]{2}T00:00:00Z|\\PC{0,10}"),
        limit in proptest::option::of(any::<i128>()),
        junk in "\\PC{0,40}",
    ) {
        let mut line = serde_json::json!({ "what": "readings", "format": "jsonl", "query": { "since": since, "limit": limit.map(|l| l.to_string()) } }).to_string();
        let _ = serde_json::from_str::<roomsense::aggregatord::Request>(&line);
        let mut at = line.len() / 2;
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        line.insert_str(at, &junk);
        let _ = serde_json::from_str::<roomsense::aggregatord::Request>(&line);
    }

    #[test]
    fn any_config_text_loads_or_names_file_key_and_line(text in config_texts()) {
        let file = Path::new("/etc/roomsense/test.yaml");
        check_config::<SensordConfig>(file, &text)?;
        check_config::<AggregatordConfig>(file, &text)?;
    }
}

fn check_config<T: roomsense::config::DaemonConfig>(
    file: &Path,
    text: &str,
) -> Result<(), TestCaseError> {
    match roomsense::config::from_text::<T>(file, text) {
        Ok(_) => {}
        Err(ConfigError::Invalid {
            file: f,
            key,
            message,
            ..
        }) => {
            prop_assert_eq!(f.as_path(), file);
            prop_assert!(!key.is_empty() && !message.is_empty());
        }
        Err(other) => prop_assert!(false, "unexpected {other}"),
    }
    Ok(())
}

/// The shipped example configs with lines dropped, duplicated or scrambled, and
/// random text: the shapes real mistakes take.
fn config_texts() -> impl Strategy<Value = String> {
    let examples = [
        include_str!("../config/sensord/room101.yaml"),
        include_str!("../config/aggregatord.yaml"),
    ];
    let mutated = (
        0usize..2,
        proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, "\\PC{0,6}"), 1..4),
    )
        .prop_map(move |(which, edits)| {
            let mut lines: Vec<String> = examples[which].lines().map(str::to_owned).collect();
            for (at, kind, junk) in edits {
                if lines.is_empty() {
                    break;
                }
                let i = at.index(lines.len());
                match kind {
                    0 => {
                        lines.remove(i);
                    }
                    1 => lines.insert(i, lines[i].clone()),
                    2 => lines[i] = format!("{}{junk}", lines[i]),
                    _ => lines[i] = lines[i].replacen(':', &junk, 1),
                }
            }
            lines.join("\n")
        });
    prop_oneof![4 => mutated, 1 => "\\PC{0,200}"]
}
