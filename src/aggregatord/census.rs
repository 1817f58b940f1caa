//! Which sensors and rooms aggregatord knows, and the caps on them.
//! It does no I/O: ingest hands it the stored topics at start, and decides when
//! to forget.
//!
//! Every known sensor costs memory (alert conditions, the dashboard's row and
//! sparkline), so a node that invents sensor ids or rooms by the thousand (a
//! bug, or a stolen certificate) must hit a limit instead of slowing everyone
//! down. Past a cap, a *new* sensor or room is refused with its own reason;
//! known ones are never refused. Loaded from storage at start, so a restart
//! does not reset the count.

use crate::config::IngestConfig;
use crate::contract::{Rejection, RejectionReason, Timestamp};
use std::collections::HashMap;

/// The sensors and rooms known, when each was last heard, and the caps on new ones.
#[derive(Default)]
pub struct Census {
    /// Room prefix → its sensors' reading topics → when each was last heard
    /// (for `ingest.forget_after`).
    rooms: HashMap<String, HashMap<String, Timestamp>>,
    /// Sensors over all rooms, kept so that `max_sensors` is checked without counting.
    sensors: usize,
}

impl Census {
    /// `topics`: (room, topic) pairs from storage; taken as heard `now`, so
    /// `forget_after` counts from the start for them.
    pub fn new(topics: impl IntoIterator<Item = (String, String)>, now: Timestamp) -> Census {
        let mut census = Census::default();
        for (room, topic) in topics {
            if census
                .rooms
                .entry(room)
                .or_default()
                .insert(topic, now)
                .is_none()
            {
                census.sensors += 1;
            }
        }
        census
    }

    /// Known (room, topic) pairs whose topic `wanted` accepts.
    pub fn matching(&self, wanted: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = self
            .rooms
            .iter()
            .flat_map(|(room, topics)| topics.keys().map(move |t| (room, t)))
            .filter(|(_, t)| wanted(t))
            .map(|(r, t)| (r.clone(), t.clone()))
            .collect();
        found.sort();
        found
    }

    /// (room, topic) of the sensors last heard before `cutoff`. Runs every
    /// second with `forget_after`: it copies only what it finds.
    pub fn silent_since(&self, cutoff: Timestamp) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (room, topics) in &self.rooms {
            for (topic, heard) in topics {
                if *heard < cutoff {
                    found.push((room.clone(), topic.clone()));
                }
            }
        }
        found.sort();
        found
    }

    /// Forgets a sensor; the room too once it has none left.
    pub fn forget(&mut self, room: &str, topic: &str) {
        if let Some(topics) = self.rooms.get_mut(room) {
            if topics.remove(topic).is_some() {
                self.sensors -= 1;
            }
            if topics.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Forgets a room with no sensors left (known only by its status).
    pub fn forget_room(&mut self, room: &str) {
        if self.rooms.get(room).is_some_and(HashMap::is_empty) {
            self.rooms.remove(room);
        }
    }

    /// Room prefixes whose last level or whole prefix is `name`.
    pub fn rooms_named(&self, name: &str) -> Vec<String> {
        let mut found: Vec<String> = self
            .rooms
            .keys()
            .filter(|r| r.as_str() == name || r.rsplit('/').next() == Some(name))
            .cloned()
            .collect();
        found.sort();
        found
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
        now: Timestamp,
    ) -> Result<(), Rejection> {
        if let Some(heard) = self.rooms.get_mut(room).and_then(|s| s.get_mut(topic)) {
            *heard = now;
            return Ok(());
        }
        self.admit_room(room, limits)?;
        let in_room = self.rooms.get(room).map_or(0, HashMap::len);
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
            .insert(topic.to_owned(), now);
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
        self.rooms.insert(room.to_owned(), HashMap::new());
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
    fn silent_sensors_are_those_not_heard_since() {
        let l = limits(10, 10, 10);
        let t = |s: i64| Timestamp::from_micros(1_800_000_000_000_000 + s * 1_000_000).unwrap();
        let mut c = Census::new([("r1".into(), "r1/t/a".into())], t(0));
        c.admit_sensor("r1", "r1/t/b", &l, t(5)).unwrap();
        c.admit_sensor("r2", "r2/t/a", &l, t(1)).unwrap();
        c.admit_sensor("r1", "r1/t/a", &l, t(9)).unwrap();
        assert_eq!(
            c.silent_since(t(6)),
            [
                ("r1".into(), "r1/t/b".into()),
                ("r2".into(), "r2/t/a".into())
            ]
        );
        assert!(
            c.silent_since(t(1)).is_empty(),
            "heard at 1 is not before 1"
        );
    }

    #[test]
    fn caps_refuse_only_what_is_new() {
        let l = limits(3, 2, 2);
        let now = Timestamp::now_millis();
        let mut c = Census::new([("r1".into(), "r1/t/a".into())], now);
        assert!(c.admit_sensor("r1", "r1/t/b", &l, now).is_ok());
        let full = c.admit_sensor("r1", "r1/t/c", &l, now).unwrap_err();
        assert_eq!(full.reason, RejectionReason::TooManySensors);
        assert!(
            c.admit_sensor("r1", "r1/t/a", &l, now).is_ok(),
            "known: kept"
        );
        assert!(c.admit_sensor("r2", "r2/t/a", &l, now).is_ok());
        let total = c.admit_sensor("r2", "r2/t/b", &l, now).unwrap_err();
        assert_eq!(total.reason, RejectionReason::TooManySensors);
        let rooms = c.admit_room("r3", &l).unwrap_err();
        assert_eq!(rooms.reason, RejectionReason::TooManyRooms);
        assert_eq!((c.sensors(), c.rooms()), (3, 2));
        c.forget("r2", "r2/t/a");
        assert_eq!((c.sensors(), c.rooms()), (2, 1), "an empty room goes too");
        assert!(c.admit_sensor("r1", "r1/t/c", &l, now).is_err());
        c.forget("r1", "r1/t/b");
        assert!(
            c.admit_sensor("r1", "r1/t/c", &l, now).is_ok(),
            "room for it now"
        );
    }
}
