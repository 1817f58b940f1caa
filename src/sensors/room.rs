//! The simulated room: one physical state that all of a node's sensors observe,
//! so that humidity falls when the heating warms the air, CO₂ climbs during a
//! meeting, and motion, CO₂ and power agree about whether anyone is there.
//! It knows no sensors: noise, faults and numbering are sensor.rs's.

use crate::config::{FixedOccupancy, Occupancy, RoomConfig};
use chrono::{DateTime, Datelike, Local, Timelike, Utc};
use std::f64::consts::TAU;

/// Integration step: fine enough for dynamics measured in minutes and hours.
const STEP_SECS: f64 = 10.0;
/// After a gap this long (a suspended laptop), restart from equilibrium instead
/// of integrating through it.
const MAX_CATCH_UP_SECS: f64 = 6.0 * 3600.0;

/// Outdoor-driven comfort baseline, °C: warmest mid-afternoon.
const BASE_TEMP: f64 = 20.5;
const DAILY_SWING: f64 = 1.5;
/// Minutes for the room's temperature to settle towards the baseline.
const THERMAL_TAU_MIN: f64 = 120.0;
/// °C per hour the heater adds, and people add.
const HEATER_RATE: f64 = 2.0;
const PEOPLE_HEAT_RATE: f64 = 0.3;
/// Thermostat dead band, ± °C.
const HYSTERESIS: f64 = 0.3;
const OUTDOOR_CO2: f64 = 420.0;
/// ppm per hour while in use; and minutes to air out when empty.
const CO2_RISE: f64 = 400.0;
const CO2_TAU_MIN: f64 = 30.0;
/// Mean length of a stay (meeting, work session) and of a gap between stays, minutes.
const MEAN_STAY_MIN: f64 = 40.0;
const MEAN_GAP_MIN: f64 = 20.0;
/// Watts: standby load, people (lights, screens), the heater.
const BASE_POWER: f64 = 35.0;
const PEOPLE_POWER: f64 = 120.0;
const HEATER_POWER: f64 = 800.0;
/// A new energy meter starts where it would be had the room drawn a share of
/// its maximum power since 2024-01-01: a plausible meter reading, different
/// per node (`meter_share`). A restart resumes from the saved reading instead
/// (sensord/meter.rs), so the meter neither jumps nor runs backwards.
const METER_EPOCH_SECS: i64 = 1_704_067_200;

/// The simulated room: occupancy, temperature, humidity, CO₂ and power, advanced in time.
pub struct Room {
    /// Presence changes and temperature drift; seeded from `room.seed` when set.
    rng: fastrand::Rng,
    /// When people may be in (`room.occupancy`).
    occupancy: Occupancy,
    /// Thermostat set point, °C; `None`: no heating at all.
    setpoint: Option<f64>,
    /// The instant the state describes; `None` until the first `advance`, which starts
    /// from equilibrium.
    now: Option<DateTime<Utc>>,
    /// Air temperature, °C.
    temperature: f64,
    /// A slow random walk added to the daily baseline, °C, within ±0.8.
    drift: f64,
    /// CO₂, ppm: from the outdoor 420 up to at most 5000.
    co2: f64,
    /// Whether people are in now: drives motion, CO₂, their heat and power.
    in_use: bool,
    /// Whether the heater is on (thermostat with a ±0.3 °C dead band).
    heating: bool,
    /// The meter, kWh: only goes up. 0 means not started yet: `settle` then starts it
    /// (see [`METER_EPOCH_SECS`]); a resumed meter carries on instead.
    energy_kwh: f64,
    /// The share (0.25 to 0.75) of maximum power a new meter starts from.
    meter_share: f64,
}

impl Room {
    /// `meter_share`: see [`METER_EPOCH_SECS`]; from the node id, so that
    /// every node's meter starts somewhere else.
    pub fn new(config: &RoomConfig, rng: fastrand::Rng, meter_share: f64) -> Room {
        Room {
            rng,
            occupancy: config.occupancy.clone(),
            setpoint: config.thermostat.as_ref().map(|t| t.setpoint),
            now: None,
            temperature: BASE_TEMP,
            drift: 0.0,
            co2: OUTDOOR_CO2,
            in_use: false,
            heating: false,
            energy_kwh: 0.0,
            meter_share,
        }
    }

    /// Continues a meter from its last saved reading, kWh (before the first reading).
    pub fn resume_meter(&mut self, kwh: f64) {
        self.energy_kwh = kwh;
    }

    /// Brings the room's state forward to `now` (never backwards).
    pub fn advance(&mut self, now: DateTime<Utc>) {
        let Some(last) = self.now else {
            self.settle(now);
            return;
        };
        let mut left = (now - last).num_milliseconds() as f64 / 1000.0;
        if left <= 0.0 {
            return;
        }
        if left > MAX_CATCH_UP_SECS {
            self.settle(now);
            return;
        }
        let mut t = last;
        while left > 0.0 {
            let dt = left.min(STEP_SECS);
            // dt is at most STEP_SECS: far inside i64 milliseconds.
            #[allow(clippy::cast_possible_truncation)]
            let step = (dt * 1000.0) as i64;
            t += chrono::Duration::milliseconds(step);
            self.step(t, dt);
            left -= dt;
        }
        self.now = Some(now);
    }

    /// Equilibrium at `now`: the starting point of a run.
    fn settle(&mut self, now: DateTime<Utc>) {
        self.now = Some(now);
        self.in_use = matches!(self.occupancy, Occupancy::Fixed(FixedOccupancy::Always));
        self.temperature = self.setpoint.unwrap_or_else(|| baseline(now));
        self.co2 = OUTDOOR_CO2;
        // A meter that already counts (resumed, or after a long gap) goes on.
        if self.energy_kwh == 0.0 {
            let max_watts = BASE_POWER + PEOPLE_POWER + HEATER_POWER;
            let hours = (now.timestamp() - METER_EPOCH_SECS).max(0) as f64 / 3600.0;
            self.energy_kwh = self.meter_share * max_watts * hours / 1000.0;
        }
    }

    fn step(&mut self, t: DateTime<Utc>, dt: f64) {
        let minutes = dt / 60.0;
        let hours = dt / 3600.0;
        // Presence: a two-state Markov chain while the schedule allows it.
        self.in_use = match &self.occupancy {
            Occupancy::Fixed(FixedOccupancy::Always) => true,
            Occupancy::Fixed(FixedOccupancy::Never) => false,
            Occupancy::Schedule(_) if !self.open(t) => false,
            Occupancy::Schedule(_) => {
                let mean = if self.in_use {
                    MEAN_STAY_MIN
                } else {
                    MEAN_GAP_MIN
                };
                let flip = self.rng.f64() < minutes / mean;
                self.in_use != flip
            }
        };
        if let Some(sp) = self.setpoint {
            if self.temperature < sp - HYSTERESIS {
                self.heating = true;
            } else if self.temperature > sp + HYSTERESIS {
                self.heating = false;
            }
        }
        self.drift = (self.drift + 0.02 * (self.rng.f64() - 0.5)).clamp(-0.8, 0.8);
        let target = baseline(t) + self.drift;
        let gains = f64::from(u8::from(self.heating)) * HEATER_RATE
            + f64::from(u8::from(self.in_use)) * PEOPLE_HEAT_RATE;
        self.temperature += (target - self.temperature) * minutes / THERMAL_TAU_MIN + gains * hours;
        self.co2 = if self.in_use {
            (self.co2 + CO2_RISE * hours).min(5000.0)
        } else {
            self.co2 - (self.co2 - OUTDOOR_CO2) * (minutes / CO2_TAU_MIN).min(1.0)
        };
        self.energy_kwh += self.power() * hours / 1000.0;
    }

    /// Whether the weekly schedule allows people in at `t` (local time).
    pub fn open(&self, t: DateTime<Utc>) -> bool {
        match &self.occupancy {
            Occupancy::Fixed(f) => *f == FixedOccupancy::Always,
            Occupancy::Schedule(s) => {
                let local = t.with_timezone(&Local);
                let time = local.time();
                s.days.contains(&local.weekday()) && time >= s.from && time < s.to
            }
        }
    }

    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// Relative humidity: the same water in warmer air is a lower percentage.
    pub fn humidity(&self) -> f64 {
        let people = if self.in_use { 4.0 } else { 0.0 };
        (50.0 - 2.5 * (self.temperature - 21.0) + people).clamp(0.0, 100.0)
    }

    pub fn in_use(&self) -> bool {
        self.in_use
    }

    pub fn co2(&self) -> f64 {
        self.co2
    }

    pub fn power(&self) -> f64 {
        BASE_POWER
            + f64::from(u8::from(self.in_use)) * PEOPLE_POWER
            + f64::from(u8::from(self.heating)) * HEATER_POWER
    }

    /// Energy used since the run began, kWh: only ever goes up.
    pub fn energy(&self) -> f64 {
        self.energy_kwh
    }
}

/// Baseline indoor temperature without heating: follows the day, peak at 15:00.
fn baseline(t: DateTime<Utc>) -> f64 {
    let local = t.with_timezone(&Local);
    let hours = f64::from(local.hour()) + f64::from(local.minute()) / 60.0;
    BASE_TEMP + DAILY_SWING * (TAU * (hours - 9.0) / 24.0).sin()
}
