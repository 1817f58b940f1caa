//! Simulated sensors: a value model per sensor type.
//!
//! Deliberately simple for now: plausible values inside each type's physical range,
//! a daily cycle for temperature (and humidity moving against it), a meter that
//! only counts up for energy.

use crate::contract::SensorType;
use chrono::{DateTime, Timelike, Utc};
use std::f64::consts::TAU;
use std::time::Duration;

pub struct Model {
    kind: SensorType,
    rng: fastrand::Rng,
    /// Slow random walk around the base value (temperature, co2).
    drift: f64,
    /// Running total for the energy meter, kWh.
    meter: f64,
}

impl Model {
    pub fn new(kind: SensorType, rng: fastrand::Rng) -> Self {
        Model {
            kind,
            rng,
            drift: 0.0,
            meter: 0.0,
        }
    }

    /// The next value at `now`, `elapsed` after the previous one.
    pub fn sample(&mut self, now: DateTime<Utc>, elapsed: Duration) -> f64 {
        let hours = now.hour() as f64 + now.minute() as f64 / 60.0;
        // Warmest mid-afternoon, coolest before dawn.
        let daily = (TAU * (hours - 9.0) / 24.0).sin();
        let noise = self.rng.f64() - 0.5;
        match self.kind {
            SensorType::Temperature => {
                self.walk(0.05, 1.0);
                round(21.0 + 1.5 * daily + self.drift + 0.2 * noise, 2)
            }
            SensorType::Humidity => round((45.0 - 6.0 * daily + 2.0 * noise).clamp(0.0, 100.0), 1),
            SensorType::Motion => f64::from(u8::from(self.rng.f64() < 0.2)),
            SensorType::Co2 => {
                self.walk(10.0, 300.0);
                round(650.0 + self.drift + 20.0 * noise, 0)
            }
            SensorType::Power => round(120.0 + 60.0 * daily.max(0.0) + 20.0 * noise, 1),
            SensorType::Energy => {
                let watts = 120.0 + 20.0 * noise;
                self.meter += watts * elapsed.as_secs_f64() / 3_600_000.0;
                round(self.meter, 4)
            }
        }
    }

    fn walk(&mut self, step: f64, bound: f64) {
        self.drift = (self.drift + step * (self.rng.f64() - 0.5) * 2.0).clamp(-bound, bound);
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (v * k).round() / k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_in_physical_range() {
        let start = Utc::now();
        for kind in SensorType::ALL {
            let mut m = Model::new(kind, fastrand::Rng::with_seed(7));
            let mut last_energy = 0.0;
            for i in 0..5_000 {
                let now = start + chrono::Duration::minutes(i);
                let v = m.sample(now, Duration::from_secs(60));
                assert!(kind.accepts(v), "{kind} produced {v}");
                if kind == SensorType::Energy {
                    assert!(v >= last_energy, "energy went down: {last_energy} -> {v}");
                    last_energy = v;
                }
            }
        }
    }

    #[test]
    fn same_seed_same_series() {
        let now = Utc::now();
        let series = |seed| {
            let mut m = Model::new(SensorType::Temperature, fastrand::Rng::with_seed(seed));
            (0..50)
                .map(|_| m.sample(now, Duration::from_secs(5)))
                .collect::<Vec<_>>()
        };
        assert_eq!(series(1), series(1));
        assert_ne!(series(1), series(2));
    }
}
