//! Topic layout. Everything a node publishes lives under its `topic_prefix`:
//!
//! ```text
//! {prefix}/{sensor_type}/{sensor_id}   readings
//! {prefix}/status                      retained online/offline (and Last Will)
//! {prefix}/alerts/{rule}               alerts raised by aggregatord
//! ```
//!
//! It judges shapes only: whether a level is a valid id is ident.rs's (ingest
//! checks), and payloads are validate.rs's.

use super::{Ident, SensorType, TopicPrefix};

pub fn reading(prefix: &TopicPrefix, sensor_type: SensorType, sensor_id: &Ident) -> String {
    format!("{prefix}/{sensor_type}/{sensor_id}")
}

pub fn status(prefix: &TopicPrefix) -> String {
    format!("{prefix}/status")
}

pub fn alert(prefix: &str, rule: &str) -> String {
    format!("{prefix}/alerts/{rule}")
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
