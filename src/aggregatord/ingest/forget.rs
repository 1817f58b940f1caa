//! Forgetting sensors and rooms (`aggregatord forget`, `ingest.forget_after`):
//! their alerts cleared through the same stored outbox as any alert change,
//! their dashboard rows gone, the caps freed. Ingest does it because it owns
//! the state forgetting changes (engine, census, gaps, dashboard).

use super::Ingest;
use crate::contract::{Alert, AlertState, Timestamp};
use crate::store::Query;
use std::fmt;
use tracing::info;

/// What a forget did, for the operator (one line each).
#[derive(Debug, Default)]
pub struct Forgotten {
    /// Sensors forgotten, by topic.
    pub sensors: Vec<String>,
    /// Rooms forgotten, by prefix.
    pub rooms: Vec<String>,
    /// Alerts cleared (rule, room).
    pub cleared: Vec<(String, String)>,
}

impl fmt::Display for Forgotten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for topic in &self.sensors {
            writeln!(f, "forgot sensor {topic}")?;
        }
        for room in &self.rooms {
            writeln!(f, "forgot room {room}")?;
        }
        for (rule, room) in &self.cleared {
            writeln!(f, "cleared alert {rule} in {room}")?;
        }
        Ok(())
    }
}

/// Why nothing was forgotten.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The query names no sensor, type, topic or room.
    NothingNamed,
    /// A room no sensor or status was seen from.
    NoSuchRoom(String),
    /// Sensors named, none of them known.
    NoMatch,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::NothingNamed => {
                f.write_str("name what to forget: --room, --sensor, --type or --topic")
            }
            Refused::NoSuchRoom(room) => write!(f, "no known room is named {room}"),
            Refused::NoMatch => f.write_str("no known sensor matches"),
        }
    }
}

impl Ingest {
    /// Forgets the sensors `query` selects (`aggregatord forget`, or
    /// `forget_after`): their alerts are cleared with `why` and sent, their
    /// dashboard rows go, they no longer count towards the caps. A query naming
    /// only a room forgets the room too (its status). Their stored history stays
    /// (retention deletes it in time). `Err` when nothing matches.
    pub(super) async fn forget(
        &mut self,
        query: &Query,
        why: &str,
    ) -> anyhow::Result<Result<Forgotten, Refused>> {
        let names_sensors =
            query.topic.is_some() || query.sensor.is_some() || query.sensor_type.is_some();
        let (sensors, rooms) = match (&query.room, names_sensors) {
            // Sensors (in a room, if one is named): Query matches them as it does for dump.
            (_, true) => (self.census.matching(|t| query.matches_topic(t)), Vec::new()),
            (Some(room), false) => {
                let rooms = self.census.rooms_named(room);
                if rooms.is_empty() {
                    return Ok(Err(Refused::NoSuchRoom(room.clone())));
                }
                let in_rooms = |t: &str| {
                    rooms.iter().any(|r| {
                        t.strip_prefix(r.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                    })
                };
                (self.census.matching(in_rooms), rooms)
            }
            (None, false) => return Ok(Err(Refused::NothingNamed)),
        };
        if sensors.is_empty() && rooms.is_empty() {
            return Ok(Err(Refused::NoMatch));
        }
        self.forget_sensors(sensors, rooms, why).await.map(Ok)
    }

    /// Forgets sensors silent for `ingest.forget_after`.
    pub(super) async fn forget_silent(&mut self) -> anyhow::Result<()> {
        let Some(after) = self.config.forget_after else {
            return Ok(());
        };
        let Some(cutoff) = chrono::Duration::from_std(after)
            .ok()
            .and_then(|d| Timestamp::now_millis().0.checked_sub_signed(d))
        else {
            return Ok(());
        };
        let silent = self.census.silent_since(Timestamp(cutoff));
        if silent.is_empty() {
            return Ok(());
        }
        let why = format!(
            "forgotten: silent for {} (ingest.forget_after)",
            humantime::format_duration(after)
        );
        let report = self.forget_sensors(silent, Vec::new(), &why).await?;
        info!(forgotten = %report.to_string().trim_end(), "forgot silent sensors");
        Ok(())
    }

    async fn forget_sensors(
        &mut self,
        sensors: Vec<(String, String)>,
        rooms: Vec<String>,
        why: &str,
    ) -> anyhow::Result<Forgotten> {
        let now = Timestamp::now_millis();
        let mut topics: Vec<String> = sensors.iter().map(|(_, t)| t.clone()).collect();
        topics.extend(rooms.iter().map(|r| format!("{r}/status")));
        let mut changes = self.engine.forget(&topics, why, now);
        for (room, topic) in &sensors {
            self.census.forget(room, topic);
            self.gaps.forget(topic);
        }
        for room in &rooms {
            self.census.forget_room(room);
            if let Some(raised_at) = self.gaps.forget_room(room) {
                changes.push(Alert::warning(
                    crate::aggregatord::gaps::RULE,
                    AlertState::Cleared,
                    (room, &format!("{room}/status")),
                    why.to_owned(),
                    raised_at,
                    now,
                ));
            }
        }
        self.live.forget(&topics[..sensors.len()], &rooms);
        let report = Forgotten {
            sensors: sensors.into_iter().map(|(_, topic)| topic).collect(),
            rooms,
            cleared: changes
                .iter()
                .map(|a| (a.rule.clone(), a.room.clone()))
                .collect(),
        };
        self.census_gauges();
        self.record_alerts(changes).await?;
        Ok(report)
    }
}
