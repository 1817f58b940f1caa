//! The kinds of sensor the contract knows, with their units and physical ranges.
//! It validates no payload itself: validate.rs applies `unit` and `accepts`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The kinds of sensor the contract knows, each with its one unit and range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorType {
    /// Air temperature, in `celsius`.
    Temperature,
    /// Relative humidity, in `percent`.
    Humidity,
    /// Movement: `1` when it starts, `0` once it stops (`boolean`); sent on change only.
    Motion,
    /// CO₂ concentration, in `ppm`.
    Co2,
    /// Power drawn now, in `W`.
    Power,
    /// An energy meter's count, in `kWh`: it only goes up (ingest checks against storage).
    Energy,
}

impl SensorType {
    pub const ALL: [SensorType; 6] = [
        SensorType::Temperature,
        SensorType::Humidity,
        SensorType::Motion,
        SensorType::Co2,
        SensorType::Power,
        SensorType::Energy,
    ];

    /// The topic level and payload `sensor_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            SensorType::Temperature => "temperature",
            SensorType::Humidity => "humidity",
            SensorType::Motion => "motion",
            SensorType::Co2 => "co2",
            SensorType::Power => "power",
            SensorType::Energy => "energy",
        }
    }

    /// The type `s` was probably meant to be: the one it begins (`temp`),
    /// or one a slip or two away (`humidty`).
    pub fn closest(s: &str) -> Option<SensorType> {
        let s = s.to_ascii_lowercase();
        if s.is_empty() {
            return None;
        }
        if let Some(t) = SensorType::ALL
            .into_iter()
            .find(|t| t.as_str().starts_with(&s))
        {
            return Some(t);
        }
        SensorType::ALL
            .into_iter()
            .map(|t| (edit_distance(&s, t.as_str()), t))
            .filter(|(d, _)| *d <= 2)
            .min_by_key(|(d, _)| *d)
            .map(|(_, t)| t)
    }

    /// The one unit a reading of this type may carry (the course brief's spelling).
    pub fn unit(self) -> &'static str {
        match self {
            SensorType::Temperature => "celsius",
            SensorType::Humidity => "percent",
            SensorType::Motion => "boolean",
            SensorType::Co2 => "ppm",
            SensorType::Power => "W",
            SensorType::Energy => "kWh",
        }
    }

    /// Physically plausible values; anything outside is a broken sensor or a forgery.
    pub fn accepts(self, value: f64) -> bool {
        match self {
            SensorType::Temperature => (-50.0..=150.0).contains(&value),
            SensorType::Humidity => (0.0..=100.0).contains(&value),
            SensorType::Motion => value == 0.0 || value == 1.0,
            SensorType::Co2 => (0.0..=10_000.0).contains(&value),
            // Generous, but finite: 100 MW, and 1 TWh on a meter (an
            // `energy=1e300` once locked its meter out for good).
            SensorType::Power => (0.0..=1e8).contains(&value),
            SensorType::Energy => (0.0..=1e9).contains(&value),
        }
    }
}

/// Levenshtein distance: insertions, deletions and substitutions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

impl FromStr for SensorType {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        SensorType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or(())
    }
}

impl fmt::Display for SensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
