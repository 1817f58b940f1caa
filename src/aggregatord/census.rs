//! Which sensors and rooms aggregatord knows, and the caps on them.
//!
//! Every known sensor costs memory (alert conditions, the dashboard's row and
//! sparkline), so a node that invents sensor ids or rooms by the thousand (a
//! bug, or a stolen certificate) must hit a limit instead of slowing everyone
//! down. Past a cap, a *new* sensor or room is refused with its own reason;
//! known ones are never refused. Loaded from storage at start, so a restart
//! does not reset the count.

use crate::config::IngestConfig;
use crate::contract::{Rejection, RejectionReason};
use std::collections::{HashMap, HashSet};

#[derive(Default)]
pub struct Census {
    /// Room prefix → its sensors' reading topics.
    rooms: HashMap<String, HashSet<String>>,
    sensors: usize,
}

impl Census {
    pub fn new(topics: impl IntoIterator<Item = (String, String)>) -> Census {
        let mut census = Census::default();
        for (room, topic) in topics {
            if census.rooms.entry(room).or_default().insert(topic) {
                census.sensors += 1;
            }
        }
        census
    }

    pub fn sensors(&self) -> usize {
        self.sensors
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// A reading on `topic` in `room`: known, or newly admitted, or refused.
    pub fn admit_sensor(
        &mut self,
        room: &str,
        topic: &str,
        limits: &IngestConfig,
    ) -> Result<(), Rejection> {
        if self.rooms.get(room).is_some_and(|s| s.contains(topic)) {
            return Ok(());
        }
        self.admit_room(room, limits)?;
        let in_room = self.rooms.get(room).map_or(0, HashSet::len);
        if in_room >= limits.max_sensors_per_room {
            return Err(Rejection::new(
                RejectionReason::TooManySensors,
                format!(
                    "room already has {in_room} sensors (ingest.max_sensors_per_room = {})",
                    limits.max_sensors_per_room
                ),
            ));
        }
        if self.sensors >= limits.max_sensors {
            return Err(Rejection::new(
                RejectionReason::TooManySensors,
                format!(
                    "{} sensors known (ingest.max_sensors = {})",
                    self.sensors, limits.max_sensors
                ),
            ));
        }
        self.rooms
            .entry(room.to_owned())
            .or_default()
            .insert(topic.to_owned());
        self.sensors += 1;
        Ok(())
    }

    /// A message from `room` (a reading or a status): known, admitted, or refused.
    pub fn admit_room(&mut self, room: &str, limits: &IngestConfig) -> Result<(), Rejection> {
        if self.rooms.contains_key(room) {
            return Ok(());
        }
        if self.rooms.len() >= limits.max_rooms {
            return Err(Rejection::new(
                RejectionReason::TooManyRooms,
                format!(
                    "{} rooms known (ingest.max_rooms = {})",
                    self.rooms.len(),
                    limits.max_rooms
                ),
            ));
        }
        self.rooms.insert(room.to_owned(), HashSet::new());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(sensors: usize, per_room: usize, rooms: usize) -> IngestConfig {
        IngestConfig {
            max_sensors: sensors,
            max_sensors_per_room: per_room,
            max_rooms: rooms,
            ..IngestConfig::default()
        }
    }

    #[test]
    fn caps_refuse_only_what_is_new() {
        let l = limits(3, 2, 2);
        let mut c = Census::new([("r1".into(), "r1/t/a".into())]);
        assert!(c.admit_sensor("r1", "r1/t/b", &l).is_ok());
        let full = c.admit_sensor("r1", "r1/t/c", &l).unwrap_err();
        assert_eq!(full.reason, RejectionReason::TooManySensors);
        assert!(c.admit_sensor("r1", "r1/t/a", &l).is_ok(), "known: kept");
        assert!(c.admit_sensor("r2", "r2/t/a", &l).is_ok());
        let total = c.admit_sensor("r2", "r2/t/b", &l).unwrap_err();
        assert_eq!(total.reason, RejectionReason::TooManySensors);
        let rooms = c.admit_room("r3", &l).unwrap_err();
        assert_eq!(rooms.reason, RejectionReason::TooManyRooms);
        assert_eq!((c.sensors(), c.rooms()), (3, 2));
    }
}
