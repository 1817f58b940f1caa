//! Seq gaps: readings a sensor made that never reached aggregatord.
//!
//! sensord numbers each sensor's readings (`seq`), so a hole in the numbers is
//! a reading lost upstream: dropped by the node's full buffer, or by a broker
//! whose queue for us overflowed. Without this, such loss showed nowhere in
//! aggregatord's metrics (issue 18: 56,338 readings dropped by Mosquitto).
//! Late readings that fill a hole make it smaller again.

use std::collections::HashMap;

/// One sensor's numbering since it last started from 1.
#[derive(Default, Clone, Copy)]
struct Track {
    first: u64,
    max: u64,
    seen: u64,
    /// Missing from earlier series (before the node restarted its numbering).
    carried: u64,
}

impl Track {
    fn missing(&self) -> u64 {
        self.carried + (self.max - self.first + 1).saturating_sub(self.seen)
    }
}

#[derive(Default)]
pub struct Gaps {
    topics: HashMap<String, Track>,
    total: u64,
}

impl Gaps {
    /// A newly stored reading's seq; returns the sensor's readings missing so far.
    pub fn seen(&mut self, topic: &str, seq: u64) -> u64 {
        let Some(t) = self.topics.get_mut(topic) else {
            // First seen (maybe mid-series, after a restart of ours): no hole yet.
            let first = Track {
                first: seq,
                max: seq,
                seen: 1,
                carried: 0,
            };
            self.topics.insert(topic.to_owned(), first);
            return 0;
        };
        let before = t.missing();
        if seq == 1 && t.max > 1 && t.seen > 0 {
            // The node started counting again (a restart): a new series.
            *t = Track {
                first: 1,
                max: 1,
                seen: 0,
                carried: before,
            };
        } else if seq < t.first {
            t.first = seq;
        }
        t.max = t.max.max(seq);
        t.seen += 1;
        let after = t.missing();
        // `before` is part of the total: swap it for `after`.
        self.total = self.total.saturating_sub(before) + after;
        after
    }

    /// Readings missing over all sensors.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_count_late_fills_shrink_them_and_a_restart_starts_over() {
        let mut g = Gaps::default();
        for s in [1, 2, 3] {
            assert_eq!(g.seen("t", s), 0);
        }
        assert_eq!(g.seen("t", 7), 3, "4, 5, 6 missing");
        assert_eq!(g.seen("t", 5), 2, "5 came late");
        assert_eq!(g.total(), 2);
        assert_eq!(g.seen("t", 1), 2, "a restart keeps what was missing");
        assert_eq!(g.seen("t", 3), 3, "and counts the new series' holes");
        assert_eq!(g.seen("u", 10), 0, "a sensor first seen mid-series");
        assert_eq!(g.total(), 3);
    }
}
