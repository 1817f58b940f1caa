//! The energy meter's last value, kept across restarts in the state directory.
//!
//! A real meter keeps counting through a gateway restart; the simulated one
//! must not jump (it used to restart from a formula of the time of day) or run
//! backwards (aggregatord refuses that as `meter_decreased`). So the value is
//! saved, durably, *before* each energy reading is handed to MQTT: whatever
//! was published is never above what a restart resumes from.
//! It knows nothing of MQTT or the simulation: it keeps one number, and sensord
//! decides when to save it.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where one node keeps its meter: `{state_dir}/{node}.meter.json`.
pub struct MeterState {
    /// The meter file; `save` writes `{node}.meter.json.tmp` beside it, then renames.
    path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    /// The meter's value, kWh; `load` refuses a negative or non-finite one.
    energy_kwh: f64,
    /// When it was saved, for people reading the file; `load` needs it present
    /// but does not use its value.
    at: crate::contract::Timestamp,
}

impl MeterState {
    pub fn new(state_dir: &Path, node: &str) -> MeterState {
        MeterState {
            path: state_dir.join(format!("{node}.meter.json")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved reading, if there is a usable one. A missing file is a first
    /// start; an unreadable one is reported and the meter starts afresh.
    pub fn load(&self) -> Option<f64> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot read the saved energy meter; starting afresh");
                return None;
            }
        };
        match serde_json::from_str::<Saved>(&text) {
            Ok(saved) if saved.energy_kwh.is_finite() && saved.energy_kwh >= 0.0 => {
                Some(saved.energy_kwh)
            }
            _ => {
                tracing::warn!(file = %self.path.display(), "saved energy meter is not valid; starting afresh");
                None
            }
        }
    }

    /// Saves `kwh` atomically and durably (temporary file, fsync, rename).
    pub fn save(&self, kwh: f64) -> std::io::Result<()> {
        let saved = Saved {
            energy_kwh: kwh,
            at: crate::contract::Timestamp::now_millis(),
        };
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&mut file, &saved)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        // The rename itself must survive a power cut too.
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn saves_and_loads_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let m = super::MeterState::new(dir.path(), "room101");
        assert_eq!(m.load(), None);
        m.save(24435.4342).unwrap();
        assert_eq!(m.load(), Some(24435.4342));
        std::fs::write(m.path(), b"{not json").unwrap();
        assert_eq!(m.load(), None);
    }
}
