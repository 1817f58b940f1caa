//! When each sensor reads: its own fixed grid (start phase + k × interval), so
//! there is no drift over hours; a tick missed while the process was stalled is
//! skipped, not made up in a burst; a little jitter per tick keeps sensors with
//! equal intervals from publishing in lockstep.
//! It keeps no clock and knows nothing of what sensors read: a sensor is an index
//! with an interval, and times are offsets from a start the caller keeps.

use std::time::Duration;

/// When each sensor reads next: its interval, with jitter.
pub struct Timetable {
    /// Each sensor's reading interval, indexed like the sensors; also bounds its jitter.
    intervals: Vec<Duration>,
    /// Next grid point of each sensor, as an offset from the start.
    grid: Vec<Duration>,
    /// When each sensor actually fires next: grid point plus jitter.
    due: Vec<Duration>,
    /// Draws the start phases and each tick's jitter; the caller seeds it for a
    /// repeatable run.
    rng: fastrand::Rng,
}

impl Timetable {
    pub fn new(intervals: Vec<Duration>, mut rng: fastrand::Rng) -> Timetable {
        // First reading soon after start, phases spread over a second at most.
        let grid: Vec<Duration> = intervals
            .iter()
            .map(|i| i.min(&Duration::from_secs(1)).mul_f64(rng.f64()))
            .collect();
        let mut t = Timetable {
            due: grid.clone(),
            intervals,
            grid,
            rng,
        };
        for i in 0..t.due.len() {
            t.due[i] = t.grid[i] + t.jitter(i);
        }
        t
    }

    fn jitter(&mut self, i: usize) -> Duration {
        let max = (self.intervals[i] / 100).min(Duration::from_millis(50));
        max.mul_f64(self.rng.f64())
    }

    /// The sensor that fires next, and when (offset from the start).
    pub fn next(&self) -> Option<(usize, Duration)> {
        self.due
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, due)| *due)
    }

    /// Sensor `i` has fired; `elapsed` is the time now (offset from the start).
    pub fn fired(&mut self, i: usize, elapsed: Duration) {
        let interval = self.intervals[i];
        let mut next = self.grid[i] + interval;
        if next <= elapsed {
            // Stalled past one or more grid points: jump to the next one ahead.
            let behind = elapsed.checked_sub(next).unwrap().as_nanos() / interval.as_nanos() + 1;
            next += interval * u32::try_from(behind).unwrap_or(u32::MAX);
        }
        self.grid[i] = next;
        self.due[i] = next + self.jitter(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_drift_and_missed_ticks_are_skipped() {
        let ms = Duration::from_millis;
        let mut t = Timetable::new(vec![ms(1000), ms(300)], fastrand::Rng::with_seed(1));
        let mut fired = [Vec::new(), Vec::new()];
        while let Some((i, due)) = t.next() {
            if due > ms(10_000) {
                break;
            }
            fired[i].push(due);
            t.fired(i, due);
        }
        assert_eq!(fired[0].len(), 10);
        // Grid points stay put however long it runs: the 10th is 9 s after the 1st, plus jitter.
        let span = fired[0][9].checked_sub(fired[0][0]).unwrap();
        assert!(span >= ms(8990) && span <= ms(9010), "{span:?}");

        // A stall of 5 s: the next reading comes at the next grid point, once.
        let (i, due) = t.next().unwrap();
        t.fired(i, due + ms(5000));
        let (j, next) = t.next().unwrap();
        if j == i {
            assert!(next > due + ms(5000));
        }
    }
}
