//! Checking a reading that arrived from the broker. Anything can arrive here:
//! other clients, old firmware, an attacker with a valid certificate. Nothing in
//! this file may panic, whatever the bytes.
//!
//! It knows nothing of what is stored: checks that need history (a meter running
//! backwards, duplicates, the census caps, `max_age`) are ingest's.

use super::topic::SensorTopic;
use super::{Reading, Status, Timestamp};
use chrono::{DateTime, Utc};
use std::fmt;

/// Larger payloads are refused before parsing. Our readings are about 150 bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// How far ahead of our clock a reading's timestamp may be (clock skew).
const MAX_FUTURE: chrono::Duration = chrono::Duration::minutes(5);

/// Why a message was refused, by a stable `snake_case` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectionReason {
    /// Over [`MAX_PAYLOAD_BYTES`] (a reading or a status): refused before parsing.
    PayloadTooLarge,
    /// Not JSON, or not a reading's (or status's) fields and types, an unreadable
    /// timestamp included.
    Malformed,
    /// `sensor_id` or `sensor_type` differs from the topic's levels.
    TopicMismatch,
    /// A type the contract does not know.
    UnknownSensorType,
    /// Not the type's one unit.
    UnitMismatch,
    /// Outside the type's physical range (motion: not 0 or 1).
    OutOfRange,
    /// More than five minutes ahead of aggregatord's clock.
    FutureTimestamp,
    /// Not a reading, status or alert topic, or a level that is not a valid id.
    UnrecognizedTopic,
    /// An energy meter reading lower than an earlier one (checked against storage).
    MeterDecreased,
    /// A new sensor past `ingest.max_sensors` or `ingest.max_sensors_per_room`.
    TooManySensors,
    /// A new room past `ingest.max_rooms`.
    TooManyRooms,
    /// The identity (topic, timestamp, seq) of a stored reading with another
    /// value: the first is kept (a node restarted with its seq reset, say).
    ConflictingDuplicate,
    /// Older than `ingest.max_age` (by default the retention window): it would
    /// be counted as stored and then deleted by retention at once.
    TooOld,
}

impl RejectionReason {
    /// Stable `snake_case` name, used in logs, counters and the `rejected` tree.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionReason::PayloadTooLarge => "payload_too_large",
            RejectionReason::Malformed => "malformed",
            RejectionReason::TopicMismatch => "topic_mismatch",
            RejectionReason::UnknownSensorType => "unknown_sensor_type",
            RejectionReason::UnitMismatch => "unit_mismatch",
            RejectionReason::OutOfRange => "out_of_range",
            RejectionReason::FutureTimestamp => "future_timestamp",
            RejectionReason::UnrecognizedTopic => "unrecognized_topic",
            RejectionReason::MeterDecreased => "meter_decreased",
            RejectionReason::TooManySensors => "too_many_sensors",
            RejectionReason::TooManyRooms => "too_many_rooms",
            RejectionReason::TooOld => "too_old",
            RejectionReason::ConflictingDuplicate => "conflicting_duplicate",
        }
    }
}

impl fmt::Display for RejectionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message's reason and, in words, what exactly was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why, by a stable name (logs, counters, the `rejected` tree).
    pub reason: RejectionReason,
    /// What exactly, in words, for the operator.
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectionReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// Any message aggregatord parses (a reading or a status) is at most
/// [`MAX_PAYLOAD_BYTES`].
pub fn check_size(payload: &[u8]) -> Result<(), Rejection> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Rejection::new(
            RejectionReason::PayloadTooLarge,
            format!("{} bytes, limit {MAX_PAYLOAD_BYTES}", payload.len()),
        ));
    }
    Ok(())
}

/// Checks a payload that arrived on a reading topic, already split into typed
/// parts: it must parse, name that topic's sensor, use the type's unit, be
/// physically plausible and not be from the future. Returns the payload as sent.
pub fn validate_reading(
    topic: &SensorTopic,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<Reading, Rejection> {
    use RejectionReason::{FutureTimestamp, OutOfRange, UnitMismatch};
    let kind = topic.sensor_type();
    let reading = payload_of(kind.as_str(), topic.sensor_id(), payload)?;
    if reading.unit != kind.unit() {
        return Err(Rejection::new(
            UnitMismatch,
            format!(
                "{:?}, {kind} readings are in {:?}",
                reading.unit,
                kind.unit()
            ),
        ));
    }
    if !kind.accepts(reading.value) {
        return Err(Rejection::new(
            OutOfRange,
            format!("{} is not a plausible {kind} value", reading.value),
        ));
    }
    if reading.timestamp > Timestamp(now + MAX_FUTURE) {
        return Err(Rejection::new(
            FutureTimestamp,
            format!(
                "{} is ahead of this clock ({})",
                reading.timestamp,
                Timestamp(now)
            ),
        ));
    }
    Ok(reading)
}

/// Why a payload on a reading topic whose type level the contract does not
/// know is refused: the same checks, in the same order, as for a known type
/// (size, JSON, the topic's sensor), and then the unknown type.
pub fn refuse_unknown_type(type_level: &str, sensor_id: &str, payload: &[u8]) -> Rejection {
    match payload_of(type_level, sensor_id, payload) {
        Err(refused) => refused,
        Ok(_) => Rejection::new(
            RejectionReason::UnknownSensorType,
            format!("{type_level:?}"),
        ),
    }
}

/// What a delivery's topic is, judged once, where it arrives: see [`judge_topic`].
#[derive(Debug, PartialEq, Eq)]
pub enum Arrived<'a> {
    /// A reading's topic, split into typed parts (its payload still to check).
    Reading(SensorTopic),
    /// A node's status, under this room prefix (its payload still to check).
    Status { prefix: &'a str },
    /// An alert (ours, or another aggregator's): nothing to store.
    Alert,
}

/// A delivery's topic, parsed once and held to the contract: the shape
/// (`topic::parse`), every level of the room prefix and the sensor id a valid
/// id (`[A-Za-z0-9_-]{1,64}`, the id not a reserved word: `a b`, markup or
/// 3,000 characters are refused before they are stored or shown), and a type
/// the contract knows (refused with what is wrong with the payload too, if
/// anything: see [`refuse_unknown_type`]).
pub fn judge_topic<'a>(topic: &'a str, payload: &[u8]) -> Result<Arrived<'a>, Rejection> {
    use super::topic::{parse, Parsed};
    match parse(topic) {
        Parsed::Reading {
            prefix,
            sensor_type,
            sensor_id,
        } => {
            check_levels(prefix, Some(sensor_id))?;
            SensorTopic::from_parts(topic, prefix, sensor_type, sensor_id)
                .map(Arrived::Reading)
                .map_err(|_| refuse_unknown_type(sensor_type, sensor_id, payload))
        }
        Parsed::Status { prefix } => {
            check_levels(prefix, None)?;
            Ok(Arrived::Status { prefix })
        }
        Parsed::Alert { .. } => Ok(Arrived::Alert),
        Parsed::Unrecognized => Err(Rejection::new(
            RejectionReason::UnrecognizedTopic,
            "not a reading, status or alert topic",
        )),
    }
}

/// Every level of `prefix`, and `sensor_id`, are valid ids.
fn check_levels(prefix: &str, sensor_id: Option<&str>) -> Result<(), Rejection> {
    use super::Ident;
    let refuse = |what: &str, e: String| {
        Rejection::new(RejectionReason::UnrecognizedTopic, format!("{what}: {e}"))
    };
    for level in prefix.split('/') {
        // Reserved words are fine as room levels; only the id is a topic word.
        Ident::check_level(level).map_err(|e| refuse("room", e))?;
    }
    if let Some(id) = sensor_id {
        Ident::check(id).map_err(|e| refuse("sensor id", e))?;
    }
    Ok(())
}

/// A status payload from room `prefix`: `None` for an empty one (a retained
/// status being cleared), the status otherwise, with `node` taken from the
/// topic whatever the payload claims (a node can publish only under its own
/// room, by the ACL, so the topic is the authority).
pub fn validate_status(prefix: &str, payload: &[u8]) -> Result<Option<Status>, Rejection> {
    if payload.is_empty() {
        return Ok(None);
    }
    check_size(payload)?;
    let mut status: Status = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(RejectionReason::Malformed, e.to_string()))?;
    prefix
        .rsplit('/')
        .next()
        .unwrap_or(prefix)
        .clone_into(&mut status.node);
    Ok(Some(status))
}

/// The payload parsed, if it fits and names the topic's sensor.
fn payload_of(topic_type: &str, topic_id: &str, payload: &[u8]) -> Result<Reading, Rejection> {
    use RejectionReason::{Malformed, TopicMismatch};
    check_size(payload)?;
    let reading: Reading =
        serde_json::from_slice(payload).map_err(|e| Rejection::new(Malformed, e.to_string()))?;
    if reading.sensor_type != topic_type || reading.sensor_id != topic_id {
        return Err(Rejection::new(
            TopicMismatch,
            format!(
                "payload says {}/{}, topic says {topic_type}/{topic_id}",
                reading.sensor_type, reading.sensor_id
            ),
        ));
    }
    Ok(reading)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RejectionReason::*;

    fn temp_001() -> SensorTopic {
        SensorTopic::parse("b/f/r/temperature/temp_001")
            .unwrap()
            .unwrap()
    }

    fn check(payload: &str) -> Result<Reading, RejectionReason> {
        validate_reading(&temp_001(), payload.as_bytes(), Utc::now()).map_err(|r| r.reason)
    }

    #[test]
    fn accepts_ours_and_the_briefs() {
        let ours = r#"{"sensor_id":"temp_001","sensor_type":"temperature","value":22.34,"unit":"celsius","timestamp":"2026-01-24T10:00:00.123Z","seq":7}"#;
        assert_eq!(check(ours).unwrap().seq, Some(7));
        let brief = r#"{"sensor_id": "temp_001", "sensor_type": "temperature", "value": 22.34, "unit": "celsius", "timestamp": "2026-01-24T10:00:00.123456"}"#;
        assert_eq!(check(brief).unwrap().seq, None);
    }

    #[test]
    fn each_reason() {
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_PAYLOAD_BYTES));
        assert_eq!(check(&big), Err(PayloadTooLarge));
        assert_eq!(check("{not json"), Err(Malformed));
        assert_eq!(check(r#"{"sensor_id":"temp_001"}"#), Err(Malformed));
        let r = |id: &str, ty: &str, v: &str, unit: &str, ts: &str| {
            format!(
                r#"{{"sensor_id":"{id}","sensor_type":"{ty}","value":{v},"unit":"{unit}","timestamp":"{ts}"}}"#
            )
        };
        let ts = "2026-01-24T10:00:00Z";
        assert_eq!(
            check(&r("temp_002", "temperature", "1", "celsius", ts)),
            Err(TopicMismatch)
        );
        assert_eq!(
            check(&r("temp_001", "humidity", "1", "percent", ts)),
            Err(TopicMismatch)
        );
        assert_eq!(
            check(&r("temp_001", "temperature", "1", "kelvin", ts)),
            Err(UnitMismatch)
        );
        assert_eq!(
            check(&r("temp_001", "temperature", "151", "celsius", ts)),
            Err(OutOfRange)
        );
        assert_eq!(
            check(&r("temp_001", "temperature", "1e400", "celsius", ts)),
            Err(Malformed)
        );
        assert_eq!(
            check(&r(
                "temp_001",
                "temperature",
                "20",
                "celsius",
                "2999-01-01T00:00:00Z"
            )),
            Err(FutureTimestamp)
        );
        assert_eq!(
            check(&r("temp_001", "temperature", "20", "celsius", "soon")),
            Err(Malformed)
        );
        // Kept as refused, with the reason; not stored as the next second.
        let leap = r(
            "temp_001",
            "temperature",
            "20",
            "celsius",
            "2016-12-31T23:59:60Z",
        );
        let refused = validate_reading(&temp_001(), leap.as_bytes(), Utc::now()).unwrap_err();
        assert_eq!(refused.reason, Malformed);
        assert!(refused.detail.contains("leap second"), "{}", refused.detail);
        let unknown = r#"{"sensor_id":"x","sensor_type":"light","value":1,"unit":"lux","timestamp":"2026-01-24T10:00:00Z"}"#;
        assert_eq!(
            refuse_unknown_type("light", "x", unknown.as_bytes()).reason,
            UnknownSensorType
        );
        // The payload's own faults come first, as for a known type.
        assert_eq!(refuse_unknown_type("light", "x", b"{").reason, Malformed);
    }

    #[test]
    fn invalid_utf8_is_malformed_not_a_panic() {
        assert_eq!(
            validate_reading(&temp_001(), &[0xff, 0xfe, b'{'], Utc::now()).map_err(|r| r.reason),
            Err(Malformed)
        );
    }

    #[test]
    fn a_topic_is_judged_once_shape_ids_and_type() {
        let judged = |t: &'static str| judge_topic(t, b"{}").map_err(|r| r.reason);
        assert_eq!(
            judged("b/f/room101/temperature/temp_001"),
            Ok(Arrived::Reading(
                SensorTopic::parse("b/f/room101/temperature/temp_001")
                    .unwrap()
                    .unwrap()
            ))
        );
        assert_eq!(
            judged("b/f/room101/status"),
            Ok(Arrived::Status {
                prefix: "b/f/room101"
            })
        );
        assert_eq!(judged("b/f/room101/alerts/hot"), Ok(Arrived::Alert));
        assert_eq!(judged("b/f/room 101/status"), Err(UnrecognizedTopic));
        assert_eq!(judged("b/f/r/temperature/<script>"), Err(UnrecognizedTopic));
        assert_eq!(judged("nothing"), Err(UnrecognizedTopic));
        // An unknown type is said as such once the payload itself is sound.
        assert_eq!(judged("b/f/r/light/l1"), Err(Malformed));
    }

    #[test]
    fn a_status_takes_its_node_from_the_topic() {
        let s = validate_status("b/f/room101", br#"{"status":"online","node":"room999"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.node, "room101");
        assert_eq!(validate_status("b/f/room101", b""), Ok(None));
        assert_eq!(
            validate_status("b/f/room101", b"{").map_err(|r| r.reason),
            Err(Malformed)
        );
    }
}
