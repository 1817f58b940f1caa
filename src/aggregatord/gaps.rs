//! Seq gaps: readings a sensor made that never reached aggregatord.
//! It does no I/O and raises nothing itself: ingest turns a [`Change`] into the
//! room's alert.
//!
//! sensord numbers each sensor's readings (`seq`), so a hole in the numbers is
//! a reading lost upstream: dropped by the node's full buffer, or by a broker
//! whose queue for us overflowed. Without this, such loss showed nowhere in
//! aggregatord's metrics (issue 18: 56,338 readings dropped by Mosquitto).
//! Late readings that fill a hole make it smaller again.

use crate::contract::Timestamp;
use std::collections::HashMap;
use std::time::Duration;

/// The alert a room gets when its readings start going missing.
pub const RULE: &str = "readings_missing";
/// A raised `readings_missing` clears after this long without a new hole
/// (checked as the room's readings arrive).
pub const QUIET: Duration = Duration::from_secs(600);

/// What a reading did to its room's alert.
pub enum Change {
    /// Readings went missing (this many, for the sensor).
    Raise(u64),
    /// No new hole for [`QUIET`]: the room's alert clears.
    Clear,
}

/// One sensor's numbering since it last started from 1.
#[derive(Default, Clone, Copy)]
struct Track {
    /// The lowest seq seen in this series (a late reading can lower it).
    first: u64,
    /// The highest seq seen in this series.
    max: u64,
    /// Readings of this series seen; each counts once, since only new ones get here.
    seen: u64,
    /// Missing from earlier series (before the node restarted its numbering).
    carried: u64,
    /// The newest stored seq when we started (0: none): holes at or below
    /// it were judged before our restart (in memory, so lost), and readings
    /// there, late ones, neither make nor fill holes.
    floor: u64,
}

impl Track {
    fn missing(&self) -> u64 {
        self.carried + (self.max - self.first + 1).saturating_sub(self.seen)
    }
}

/// Holes in each sensor's seq numbering (readings lost before they reached us), and the room alerts they raise.
#[derive(Default)]
pub struct Gaps {
    /// Per reading topic, its numbering; seeded at start with each sensor's
    /// newest stored seq ([`Gaps::seed`]), so a hole across our restart counts.
    topics: HashMap<String, Track>,
    /// Readings missing over all sensors, forgotten ones included: a running sum, so
    /// the gauge never adds up every sensor.
    total: u64,
    /// Rooms with a raised alert: when it was raised, and the last new hole.
    rooms: HashMap<String, (Timestamp, Timestamp)>,
}

impl Gaps {
    /// A newly stored reading's seq, in `room`: the sensor's readings missing
    /// before and after it, and what that does to the room's alert.
    pub fn seen(
        &mut self,
        room: &str,
        topic: &str,
        seq: u64,
        now: Timestamp,
    ) -> (u64, u64, Option<Change>) {
        let (before, missing) = self.count(topic, seq);
        let change = match self.rooms.get_mut(room) {
            None if missing > before => {
                self.rooms.insert(room.to_owned(), (now, now));
                Some(Change::Raise(missing))
            }
            Some((_, last)) if missing > before => {
                *last = now;
                None
            }
            Some((_, last)) if elapsed(*last, now) >= QUIET => {
                self.rooms.remove(room);
                Some(Change::Clear)
            }
            _ => None,
        };
        (before, missing, change)
    }

    /// A sensor's newest stored seq, at start: the next reading's hole is
    /// counted from it.
    pub fn seed(&mut self, topic: &str, seq: u64) {
        let t = Track {
            first: seq,
            max: seq,
            seen: 1,
            carried: 0,
            floor: seq,
        };
        self.topics.insert(topic.to_owned(), t);
    }

    /// Forgets a sensor's numbering (`aggregatord forget`); the total stays.
    pub fn forget(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// Forgets a room: whether it had a raised alert (to be cleared), and since when.
    pub fn forget_room(&mut self, room: &str) -> Option<Timestamp> {
        self.rooms.remove(room).map(|(raised, _)| raised)
    }

    /// When the room's alert was raised, while it is.
    pub fn raised_at(&self, room: &str) -> Option<Timestamp> {
        self.rooms.get(room).map(|(raised, _)| *raised)
    }

    /// The sensor's readings missing before and after `seq`.
    fn count(&mut self, topic: &str, seq: u64) -> (u64, u64) {
        let Some(t) = self.topics.get_mut(topic) else {
            // First seen (maybe mid-series, after a restart of ours): no hole yet.
            let first = Track {
                first: seq,
                max: seq,
                seen: 1,
                carried: 0,
                floor: 0,
            };
            self.topics.insert(topic.to_owned(), first);
            return (0, 0);
        };
        let before = t.missing();
        if seq == 1 && t.max > 1 && t.seen > 0 {
            // The node started counting again (a restart): a new series.
            *t = Track {
                first: 1,
                max: 1,
                seen: 0,
                carried: before,
                floor: 0,
            };
        } else if seq <= t.floor {
            return (before, before);
        } else if seq < t.first {
            t.first = seq;
        }
        t.max = t.max.max(seq);
        t.seen += 1;
        let after = t.missing();
        // `before` is part of the total: swap it for `after`.
        self.total = self.total.saturating_sub(before) + after;
        (before, after)
    }

    /// Readings missing over all sensors.
    pub fn total(&self) -> u64 {
        self.total
    }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    (now.0 - since.0).to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_count_late_fills_shrink_them_and_a_restart_starts_over() {
        let mut g = Gaps::default();
        for s in [1, 2, 3] {
            assert_eq!(g.count("t", s).1, 0);
        }
        assert_eq!(g.count("t", 7).1, 3, "4, 5, 6 missing");
        assert_eq!(g.count("t", 5).1, 2, "5 came late");
        assert_eq!(g.total(), 2);
        assert_eq!(g.count("t", 1).1, 2, "a restart keeps what was missing");
        assert_eq!(g.count("t", 3).1, 3, "and counts the new series' holes");
        assert_eq!(g.count("u", 10).1, 0, "a sensor first seen mid-series");
        assert_eq!(g.total(), 3);
    }

    /// Seeded with the newest stored seq (aggregatord restarted): a hole
    /// after it counts; a late reading at or below it changes nothing; the
    /// node's own restart starts a new series as before.
    #[test]
    fn a_hole_across_our_restart_counts_from_the_newest_stored() {
        let mut g = Gaps::default();
        g.seed("t", 10);
        assert_eq!(g.count("t", 15).1, 4, "11 to 14 missing");
        assert_eq!(g.count("t", 7).1, 4, "late, below the seed: judged before");
        assert_eq!(g.count("t", 12).1, 3, "12 came late");
        assert_eq!(g.count("t", 1).1, 3, "the node restarted: a new series");
        assert_eq!(g.count("t", 3).1, 4, "2 missing in it");
    }

    #[test]
    fn a_room_is_alerted_once_per_episode_and_cleared_when_quiet() {
        let mut g = Gaps::default();
        let at =
            |s: i64| Timestamp(chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap());
        assert!(g.seen("r", "r/t/a", 1, at(0)).2.is_none());
        assert!(matches!(
            g.seen("r", "r/t/a", 3, at(1)).2,
            Some(Change::Raise(1))
        ));
        assert!(g.seen("r", "r/t/a", 5, at(2)).2.is_none(), "still raised");
        assert!(
            g.seen("r", "r/t/a", 6, at(100)).2.is_none(),
            "not quiet long enough"
        );
        assert!(matches!(
            g.seen("r", "r/t/a", 7, at(700)).2,
            Some(Change::Clear)
        ));
        assert!(g.seen("r", "r/t/a", 8, at(701)).2.is_none());
    }
}
