//! What to select from the stored readings: by sensor, room, type and time. The
//! store visits topics in name order, skips those that do not match, and within
//! a matching topic seeks straight to the time window (`readings/select.rs`).
//! It knows neither sled nor the layout: it only says what matches.

use crate::contract::{topic, SensorType, Timestamp};
use serde::{Deserialize, Serialize};

/// What to select. Empty fields match everything. Sent as JSON to a running
/// aggregatord by `aggregatord dump`, so it is (de)serializable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// One reading topic exactly.
    #[serde(default)]
    pub topic: Option<String>,
    /// Sensor id, the topic's last level (`temp_001`).
    pub sensor: Option<String>,
    /// Room: the level before the sensor type (`room101`).
    pub room: Option<String>,
    /// Sensor type, the level before the sensor id (`temperature`).
    pub sensor_type: Option<String>,
    /// Inclusive bounds on the reading's timestamp.
    pub since: Option<Timestamp>,
    /// The window's end, inclusive like `since`.
    pub until: Option<Timestamp>,
    /// At most this many rows.
    pub limit: Option<usize>,
}

impl Query {
    /// Refuses what can only be a mistake: a window that ends before it
    /// starts, or a type no sensor has (`--type temp` matched nothing, and
    /// said so only by an empty table).
    pub fn check(&self) -> Result<(), String> {
        if let Some(t) = &self.sensor_type {
            if t.parse::<SensorType>().is_err() {
                let all: Vec<&str> = SensorType::ALL.iter().map(|t| t.as_str()).collect();
                let hint = SensorType::closest(t)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "--type {t}: no such sensor type{hint}; the types are {}",
                    all.join(", ")
                ));
            }
        }
        match (self.since, self.until) {
            (Some(since), Some(until)) if since > until => Err(format!(
                "--since ({since}) is after --until ({until}): nothing can match; swap them"
            )),
            _ => Ok(()),
        }
    }

    /// For records other than readings (rejected messages, alerts): `topic` is
    /// the one they concern, `time` when they happened. Room, type and sensor are
    /// read from the topic's shape; a topic that has none of them (a rejected
    /// `foo/bar`) matches only a query that asks for none.
    pub fn admits(&self, t: &str, time: Timestamp) -> bool {
        let (room, sensor_type, sensor_id) = match topic::parse(t) {
            topic::Parsed::Reading {
                prefix,
                sensor_type,
                sensor_id,
            } => (Some(prefix), Some(sensor_type), Some(sensor_id)),
            topic::Parsed::Status { prefix } | topic::Parsed::Alert { prefix, .. } => {
                (Some(prefix), None, None)
            }
            topic::Parsed::Unrecognized => (None, None, None),
        };
        let room = room.map(|p| p.rsplit('/').next().unwrap_or(p));
        let wants = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        self.topic.as_deref().is_none_or(|x| x == t)
            && wants(&self.room, room)
            && wants(&self.sensor_type, sensor_type)
            && wants(&self.sensor, sensor_id)
            && self.since.is_none_or(|s| time >= s)
            && self.until.is_none_or(|u| time <= u)
    }

    pub fn matches_topic(&self, t: &str) -> bool {
        let topic::Parsed::Reading {
            prefix,
            sensor_type,
            sensor_id,
        } = topic::parse(t)
        else {
            return false;
        };
        let room = prefix.rsplit('/').next().unwrap_or(prefix);
        self.topic.as_deref().is_none_or(|x| x == t)
            && self.sensor.as_deref().is_none_or(|s| s == sensor_id)
            && self.room.as_deref().is_none_or(|r| r == room)
            && self
                .sensor_type
                .as_deref()
                .is_none_or(|ty| ty == sensor_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of_type(t: &str) -> Query {
        Query {
            sensor_type: Some(t.into()),
            ..Query::default()
        }
    }

    /// A type no sensor has is refused, with the near one named (issue 27,
    /// item 10: `--type temp` printed an empty table and exited 0).
    #[test]
    fn a_type_no_sensor_has_is_refused_with_the_near_one() {
        assert_eq!(of_type("temperature").check(), Ok(()));
        let temp = of_type("temp").check().unwrap_err();
        assert!(temp.contains("did you mean `temperature`"), "{temp}");
        let humidty = of_type("humidty").check().unwrap_err();
        assert!(humidty.contains("did you mean `humidity`"), "{humidty}");
        let nothing = of_type("floor1").check().unwrap_err();
        assert!(!nothing.contains("did you mean"), "{nothing}");
        assert!(nothing.contains("temperature, humidity, motion, co2, power, energy"));
    }
}
