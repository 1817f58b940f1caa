//! Topic layout. Everything a node publishes lives under its `topic_prefix`:
//!
//! ```text
//! {prefix}/{sensor_type}/{sensor_id}   readings
//! {prefix}/status                      retained online/offline (and Last Will)
//! {prefix}/alerts/{rule}               alerts raised by aggregatord
//! ```
//!
//! It judges shapes only: whether a level is a valid id is ident.rs's (held
//! to it by `validate::judge_topic`), and payloads are validate.rs's.

use super::{Ident, SensorType, TopicPrefix};
use std::fmt;

pub fn reading(prefix: &TopicPrefix, sensor_type: SensorType, sensor_id: &Ident) -> String {
    format!("{prefix}/{sensor_type}/{sensor_id}")
}

pub fn status(prefix: &TopicPrefix) -> String {
    format!("{prefix}/status")
}

pub fn alert(prefix: &str, rule: &str) -> String {
    format!("{prefix}/alerts/{rule}")
}

/// A reading's topic, split into typed parts once, where it arrives: the room
/// prefix, a sensor type the contract knows, and the sensor id. Everything
/// after ingest takes these from here instead of splitting the topic again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SensorTopic {
    /// The whole topic, as it arrived.
    topic: String,
    /// Where the room prefix ends: `topic[..room_end]`.
    room_end: usize,
    /// Where the sensor id begins: `topic[id_start..]`.
    id_start: usize,
    /// The type level.
    sensor_type: SensorType,
}

impl SensorTopic {
    /// The topic of a reading (`{prefix}/{type}/{id}`); `Err` with the type
    /// level if the contract does not know that type. `None` for any other
    /// shape (see [`parse`]).
    pub fn parse(topic: &str) -> Option<Result<SensorTopic, String>> {
        let Parsed::Reading {
            prefix,
            sensor_type,
            sensor_id,
        } = parse(topic)
        else {
            return None;
        };
        Some(Self::from_parts(topic, prefix, sensor_type, sensor_id))
    }

    /// From the parts [`parse`] split `topic` into (so it is split once).
    pub(super) fn from_parts(
        topic: &str,
        prefix: &str,
        sensor_type: &str,
        sensor_id: &str,
    ) -> Result<SensorTopic, String> {
        match sensor_type.parse::<SensorType>() {
            Ok(kind) => Ok(SensorTopic {
                topic: topic.to_owned(),
                room_end: prefix.len(),
                id_start: topic.len() - sensor_id.len(),
                sensor_type: kind,
            }),
            Err(()) => Err(sensor_type.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.topic
    }

    /// The room prefix (`building/floor1/room101`).
    pub fn room(&self) -> &str {
        &self.topic[..self.room_end]
    }

    pub fn sensor_type(&self) -> SensorType {
        self.sensor_type
    }

    pub fn sensor_id(&self) -> &str {
        &self.topic[self.id_start..]
    }
}

impl fmt::Display for SensorTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.topic)
    }
}

/// What an incoming topic is, by its shape alone (the payload is checked elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// `{prefix}/{sensor_type}/{sensor_id}`, none of the three empty.
    Reading {
        /// The node's topic prefix: the room.
        prefix: &'a str,
        /// As written: not checked against the known types here.
        sensor_type: &'a str,
        /// The last level.
        sensor_id: &'a str,
    },
    /// `{prefix}/status`: a node's retained online/offline.
    Status {
        /// The node's topic prefix.
        prefix: &'a str,
    },
    /// `{prefix}/alerts/{rule}`: an alert (ours too, when a subscription covers them).
    Alert {
        /// The room the alert is about.
        prefix: &'a str,
        /// The rule's name.
        rule: &'a str,
    },
    /// Anything else: too few levels, or an empty one.
    Unrecognized,
}

pub fn parse(topic: &str) -> Parsed<'_> {
    let mut levels = topic.rsplitn(3, '/');
    let (Some(last), Some(second)) = (levels.next(), levels.next()) else {
        return Parsed::Unrecognized;
    };
    let rest = levels.next();
    if last == "status" {
        let prefix = &topic[..topic.len() - "/status".len()];
        return Parsed::Status { prefix };
    }
    match rest {
        Some(prefix) if second == "alerts" => Parsed::Alert { prefix, rule: last },
        Some(prefix) if !prefix.is_empty() && !second.is_empty() && !last.is_empty() => {
            Parsed::Reading {
                prefix,
                sensor_type: second,
                sensor_id: last,
            }
        }
        _ => Parsed::Unrecognized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_brief_topics() {
        let prefix = TopicPrefix::try_from("building/floor1/room101".to_owned()).unwrap();
        let id = Ident::try_from("temp_001".to_owned()).unwrap();
        assert_eq!(
            reading(&prefix, SensorType::Temperature, &id),
            "building/floor1/room101/temperature/temp_001"
        );
        assert_eq!(status(&prefix), "building/floor1/room101/status");
    }

    #[test]
    fn a_sensor_topic_is_split_once_into_typed_parts() {
        let t = SensorTopic::parse("building/floor1/room101/co2/co2_001")
            .unwrap()
            .unwrap();
        assert_eq!(t.room(), "building/floor1/room101");
        assert_eq!(t.sensor_type(), SensorType::Co2);
        assert_eq!(t.sensor_id(), "co2_001");
        assert_eq!(t.as_str(), "building/floor1/room101/co2/co2_001");
        assert_eq!(
            SensorTopic::parse("b/f/r/light/l1"),
            Some(Err("light".to_owned()))
        );
        assert_eq!(SensorTopic::parse("b/f/r/status"), None);
    }

    #[test]
    fn parses_each_shape() {
        assert_eq!(
            parse("building/floor1/room101/temperature/temp_001"),
            Parsed::Reading {
                prefix: "building/floor1/room101",
                sensor_type: "temperature",
                sensor_id: "temp_001"
            }
        );
        assert_eq!(
            parse("building/floor1/room101/status"),
            Parsed::Status {
                prefix: "building/floor1/room101"
            }
        );
        assert_eq!(
            parse("building/floor1/room101/alerts/too_hot"),
            Parsed::Alert {
                prefix: "building/floor1/room101",
                rule: "too_hot"
            }
        );
        for odd in ["", "x", "a/b", "a//b", "a/b/"] {
            assert_eq!(parse(odd), Parsed::Unrecognized, "{odd:?}");
        }
    }
}
