//! One simulated sensor: reads the room, adds its own measurement noise, applies
//! any configured faults, and numbers its readings.
//! It keeps no schedule and publishes nothing: sensord asks for a reading when one
//! is due.

use super::Room;
use crate::config::{FaultConfig, FaultKind, SensorConfig};
use crate::contract::{Reading, SensorType, Timestamp};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Chance that a motion sensor sees movement on one check while the room is in use.
const DETECT_PROBABILITY: f64 = 0.3;
/// Motion reports `0` after this long without movement, unless configured.
pub const DEFAULT_CLEAR_AFTER: Duration = Duration::from_secs(30);

/// One simulated sensor: its config, its seq, and the state its faults need.
pub struct Sensor {
    /// Its config; a reload replaces it while `seq` and the state below carry on.
    pub config: SensorConfig,
    /// Measurement noise and motion detection; seeded from `room.seed` when set.
    rng: fastrand::Rng,
    /// When the run started (a dry run's `from`): faults' `after` and drift count from it.
    started: DateTime<Utc>,
    /// The last seq given out: 0 before the first reading, so the first is 1.
    seq: u64,
    /// Motion: what was last reported, and when movement was last seen.
    motion: Option<f64>,
    /// When movement was last seen; `None` until then.
    last_movement: Option<DateTime<Utc>>,
    /// `stuck` faults freeze at the value they first see.
    frozen: Option<f64>,
}

impl Sensor {
    pub fn new(config: SensorConfig, started: DateTime<Utc>, rng: fastrand::Rng) -> Sensor {
        Sensor {
            config,
            rng,
            started,
            seq: 0,
            motion: None,
            last_movement: None,
            frozen: None,
        }
    }

    /// The reading due at `now`, if any. Motion reports only changes; a `dropout`
    /// fault reports nothing. `room` must already be advanced to `now`.
    pub fn read(&mut self, room: &Room, now: DateTime<Utc>) -> Option<Reading> {
        // Cloned: a few bytes, and it frees `self` for the mutable calls below.
        let fault = self.active_fault(now).cloned();
        let fault = fault.as_ref();
        if matches!(fault, Some(f) if f.kind == FaultKind::Dropout) {
            return None;
        }
        let value = if self.config.sensor_type == SensorType::Motion {
            self.motion(room, now, fault)?
        } else {
            let value = self.measure(room);
            self.apply(fault, value, now)
        };
        self.seq += 1;
        Some(Reading {
            sensor_id: self.config.id.to_string(),
            sensor_type: self.config.sensor_type.to_string(),
            value: round(self.config.sensor_type, value),
            unit: self.config.sensor_type.unit().to_owned(),
            timestamp: Timestamp(now),
            seq: Some(self.seq),
        })
    }

    fn measure(&mut self, room: &Room) -> f64 {
        let noise = self.rng.f64() - 0.5;
        match self.config.sensor_type {
            SensorType::Temperature => room.temperature() + 0.2 * noise,
            SensorType::Humidity => (room.humidity() + noise).clamp(0.0, 100.0),
            SensorType::Co2 => (room.co2() + 20.0 * noise).max(0.0),
            SensorType::Power => (room.power() * (1.0 + 0.06 * noise)).max(0.0),
            // A meter has no noise: it counts.
            SensorType::Energy => room.energy(),
            SensorType::Motion => 0.0, // handled by `motion`
        }
    }

    /// Event-driven: `1` when movement starts, `0` after `clear_after` without any.
    fn motion(
        &mut self,
        room: &Room,
        now: DateTime<Utc>,
        fault: Option<&FaultConfig>,
    ) -> Option<f64> {
        if room.in_use() && self.rng.f64() < DETECT_PROBABILITY {
            self.last_movement = Some(now);
        }
        let clear_after = self.config.clear_after.unwrap_or(DEFAULT_CLEAR_AFTER);
        let moving = self
            .last_movement
            .is_some_and(|t| (now - t).to_std().unwrap_or_default() < clear_after);
        let mut state = f64::from(u8::from(moving));
        match fault.map(|f| (f.kind, f.value)) {
            Some((FaultKind::Spike, Some(v))) => state = v,
            Some((FaultKind::Stuck, _)) => state = self.motion.unwrap_or(state),
            _ => {}
        }
        if self.motion == Some(state) {
            return None;
        }
        self.motion = Some(state);
        Some(state)
    }

    fn active_fault(&self, now: DateTime<Utc>) -> Option<&FaultConfig> {
        let elapsed = (now - self.started).to_std().unwrap_or_default();
        self.config
            .faults
            .iter()
            .find(|f| elapsed >= f.after && f.lasts.is_none_or(|d| elapsed < f.after + d))
    }

    fn apply(&mut self, fault: Option<&FaultConfig>, value: f64, now: DateTime<Utc>) -> f64 {
        let Some(f) = fault else {
            self.frozen = None;
            return value;
        };
        match f.kind {
            FaultKind::Spike => f.value.unwrap_or(value),
            FaultKind::Stuck => *self.frozen.get_or_insert(f.value.unwrap_or(value)),
            FaultKind::Drift => {
                let since = (now - self.started)
                    .to_std()
                    .unwrap_or_default()
                    .saturating_sub(f.after);
                value + f.rate.unwrap_or(0.0) * since.as_secs_f64() / 60.0
            }
            FaultKind::Dropout => value,
        }
    }
}

/// Readings carry the precision a real device of the type would report.
fn round(t: SensorType, v: f64) -> f64 {
    let digits = match t {
        SensorType::Temperature => 2,
        SensorType::Humidity | SensorType::Power => 1,
        SensorType::Co2 | SensorType::Motion => 0,
        SensorType::Energy => 4,
    };
    let k = 10f64.powi(digits);
    (v * k).round() / k
}
