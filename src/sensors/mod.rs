//! Simulated sensors. A [`Room`] holds the physical state (temperature, people,
//! CO₂, heater, energy used); each [`Sensor`] observes it with its own noise,
//! faults and sequence numbers. A [`Node`] is the room plus its sensors.
//! It knows no MQTT and sends nothing: sensord decides when to read, and publishes.

mod room;
mod sensor;

pub use room::Room;
pub use sensor::{Sensor, DEFAULT_CLEAR_AFTER};

use crate::config::SensordConfig;
use crate::contract::Reading;
use chrono::{DateTime, Utc};

/// A node's sensors and the room they observe.
pub struct Node {
    /// The physical state every sensor reads; advanced to a reading's time first.
    pub room: Room,
    /// In config order: [`Node::read`] takes an index into it.
    pub sensors: Vec<Sensor>,
}

impl Node {
    /// With `room.seed` set, every random choice follows from it and the node
    /// id: the same seed, node and sample times give the same readings, and two
    /// nodes with one seed still differ.
    pub fn new(config: &SensordConfig, started: DateTime<Utc>) -> Node {
        let node = stable_hash(config.node.id.as_str());
        let rng = |salt: &str| match config.room.seed {
            Some(seed) => fastrand::Rng::with_seed(seed ^ node ^ stable_hash(salt)),
            None => fastrand::Rng::new(),
        };
        // 0.25 to 0.75, fixed per node id.
        let meter_share = 0.25 + (node % 1000) as f64 / 2000.0;
        Node {
            room: Room::new(&config.room, rng("room"), meter_share),
            sensors: config
                .sensors
                .iter()
                .map(|s| Sensor::new(s.clone(), started, rng(s.id.as_str())))
                .collect(),
        }
    }

    /// The same node with a new config (a reload): the room carries on if its
    /// config is unchanged, and a sensor that keeps its id and type keeps its
    /// `seq` and state, so a reload does not look like a restart.
    pub fn reconfigure(
        &mut self,
        config: &SensordConfig,
        room_changed: bool,
        started: DateTime<Utc>,
    ) {
        let fresh = Node::new(config, started);
        if room_changed {
            // A new room model; the meter goes on counting.
            let kwh = self.room.energy();
            self.room = fresh.room;
            self.room.resume_meter(kwh);
        }
        let mut old = std::mem::take(&mut self.sensors);
        self.sensors = fresh
            .sensors
            .into_iter()
            .map(|s| {
                let same = |o: &Sensor| {
                    o.config.id == s.config.id && o.config.sensor_type == s.config.sensor_type
                };
                match old.iter().position(same) {
                    Some(i) => {
                        let mut kept = old.swap_remove(i);
                        kept.config = s.config;
                        kept
                    }
                    None => s,
                }
            })
            .collect();
    }

    /// Sensor `index`'s reading at `now`, if one is due.
    pub fn read(&mut self, index: usize, now: DateTime<Utc>) -> Option<Reading> {
        self.room.advance(now);
        self.sensors.get_mut(index)?.read(&self.room, now)
    }
}

/// FNV-1a over the string's UTF-8 bytes: the same on every Rust version, run
/// and platform. (`str::hash` would not do: its byte layout, a 0xff terminator
/// today, is not a stable promise, and `DefaultHasher` is seeded per process.)
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::SensorType;
    use chrono::{Datelike, TimeZone, Timelike};

    #[test]
    fn the_seed_hash_is_fnv_1a_of_the_bytes() {
        // Reference values of 64-bit FNV-1a: a seeded simulation stays the same
        // on every Rust version.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    fn config(extra: &str, sensors: &str) -> SensordConfig {
        let yaml = format!(
            "node: {{ id: n, topic_prefix: b/f/n }}\nbroker: {{ host: h, tls: {{ ca_file: a, cert_file: b, key_file: c }} }}\n{extra}\nsensors:\n{sensors}"
        );
        yaml_serde::from_str(&yaml).expect("test config parses")
    }

    /// Every reading of sensor `index` every `step` for `span`, from a Monday 00:00 local.
    fn series(
        cfg: &SensordConfig,
        index: usize,
        step: chrono::Duration,
        span: chrono::Duration,
    ) -> Vec<(DateTime<Utc>, f64)> {
        let start = chrono::Local
            .with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        let mut node = Node::new(cfg, start);
        let mut out = Vec::new();
        let mut t = start;
        while t < start + span {
            if let Some(r) = node.read(index, t) {
                out.push((t, r.value));
            }
            t += step;
        }
        out
    }

    const ALL: &str = "  - { id: t, type: temperature, interval: 1m }\n  - { id: h, type: humidity, interval: 1m }\n  - { id: m, type: motion, interval: 1m }\n  - { id: c, type: co2, interval: 1m }\n  - { id: p, type: power, interval: 1m }\n  - { id: e, type: energy, interval: 1m }\n";

    #[test]
    fn a_week_stays_in_physical_range_and_the_meter_only_counts_up() {
        let cfg = config("room: { seed: 3, thermostat: { setpoint: 21 } }", ALL);
        let week = chrono::Duration::days(7);
        for (i, s) in cfg.sensors.iter().enumerate() {
            let values = series(&cfg, i, chrono::Duration::minutes(1), week);
            assert!(!values.is_empty(), "{}", s.sensor_type);
            for (t, v) in &values {
                assert!(s.sensor_type.accepts(*v), "{} = {v} at {t}", s.sensor_type);
            }
            if s.sensor_type == SensorType::Energy {
                assert!(
                    values.windows(2).all(|w| w[1].1 >= w[0].1),
                    "energy went down"
                );
                assert!(values.last().unwrap().1 > values[0].1, "energy never rose");
            }
        }
    }

    #[test]
    fn humidity_moves_against_temperature() {
        let cfg = config("room: { seed: 5, occupancy: never }", ALL);
        let day = chrono::Duration::days(2);
        let step = chrono::Duration::minutes(5);
        let temps: Vec<f64> = series(&cfg, 0, step, day)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let hums: Vec<f64> = series(&cfg, 1, step, day)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (mt, mh) = (mean(&temps), mean(&hums));
        let covariance: f64 = temps
            .iter()
            .zip(&hums)
            .map(|(t, h)| (t - mt) * (h - mh))
            .sum();
        assert!(
            covariance < 0.0,
            "covariance {covariance} should be negative"
        );
    }

    #[test]
    fn motion_only_in_occupied_hours() {
        let cfg = config(
            "room: { seed: 11, occupancy: { days: [mon, tue, wed, thu, fri], from: \"09:00\", to: \"17:00\" } }",
            "  - { id: m, type: motion, interval: 10s, clear_after: 1m }\n",
        );
        let values = series(
            &cfg,
            0,
            chrono::Duration::seconds(10),
            chrono::Duration::days(7),
        );
        let detections: Vec<DateTime<chrono::Local>> = values
            .iter()
            .filter(|(_, v)| *v == 1.0)
            .map(|(t, _)| t.with_timezone(&chrono::Local))
            .collect();
        assert!(
            detections.len() > 10,
            "only {} detections in a week",
            detections.len()
        );
        for t in detections {
            assert!(t.weekday().num_days_from_monday() < 5, "motion on {t}");
            assert!((9..17).contains(&t.hour()), "motion at {t}");
        }
        // Event-driven: no two equal values in a row.
        assert!(values.windows(2).all(|w| w[0].1 != w[1].1));
    }

    #[test]
    fn same_seed_same_series_other_seed_other_series() {
        let run = |seed: u64| {
            let cfg = config(&format!("room: {{ seed: {seed} }}"), ALL);
            (0..cfg.sensors.len())
                .map(|i| {
                    series(
                        &cfg,
                        i,
                        chrono::Duration::minutes(7),
                        chrono::Duration::days(2),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn faults_spike_stick_drift_and_drop_out_on_schedule() {
        let cfg = config(
            "room: { seed: 1, occupancy: never }",
            "  - { id: t, type: temperature, interval: 1m, faults: [ { kind: spike, value: 45, after: 10m, for: 5m }, { kind: dropout, after: 20m, for: 5m }, { kind: stuck, after: 30m, for: 5m }, { kind: drift, rate: 1, after: 40m } ] }\n",
        );
        let values = series(
            &cfg,
            0,
            chrono::Duration::minutes(1),
            chrono::Duration::minutes(60),
        );
        let at = |m: i64| {
            values
                .iter()
                .find(|(t, _)| (*t - values[0].0).num_minutes() == m)
                .map(|(_, v)| *v)
        };
        assert_eq!(at(9).map(|v| v < 30.0), Some(true));
        assert_eq!(at(10), Some(45.0));
        assert_eq!(at(14), Some(45.0));
        assert_ne!(at(15), Some(45.0));
        assert_eq!(at(20), None, "dropout publishes nothing");
        assert_eq!(at(24), None);
        assert!(at(25).is_some());
        assert_eq!(at(30), at(34), "stuck");
        let drift = at(59).unwrap() - at(40).unwrap();
        assert!(
            (17.0..21.0).contains(&drift),
            "drift of 1/min over 19 min gave {drift}"
        );
    }
}
