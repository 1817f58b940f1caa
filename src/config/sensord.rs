//! sensord's config schema and its checks. It only describes the simulation (the
//! model is sensors/) and opens none of the files it names: sensord's `preflight`
//! checks the certificates and `state_dir`.

use super::{duration, BrokerConfig, DaemonConfig, Invalid};
use crate::contract::Qos;
use crate::contract::{Ident, SensorType, TopicPrefix};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// `sensord`'s config: one node (one room) and its sensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensordConfig {
    /// `node`: who this node is and where it publishes; required.
    pub node: NodeConfig,
    /// `broker`: the broker, and this node's certificate; required.
    pub broker: BrokerConfig,
    /// `room`: the simulated room; default office hours, no thermostat, unseeded.
    #[serde(default)]
    pub room: RoomConfig,
    /// QoS 1/2 readings kept while disconnected; the oldest go first when full.
    /// Default 10000; at most 1000000; a change applies at the next start.
    #[serde(default = "default_offline_buffer")]
    pub offline_buffer: usize,
    /// `outbox`: QoS 1/2 readings kept on disk in `state_dir` until the
    /// broker confirms them; on by default where there is a state directory.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// `homeassistant`: MQTT discovery; off by default.
    #[serde(default)]
    pub homeassistant: HomeAssistantConfig,
    /// `log`: level and format; `info`, as text, by default.
    #[serde(default)]
    pub log: super::LogConfig,
    /// Where the node keeps what must survive a restart (its energy meter).
    /// Default: `$STATE_DIRECTORY` (systemd's `StateDirectory=`); with neither,
    /// nothing is kept and a meter starts afresh at every start.
    #[serde(default)]
    pub state_dir: Option<std::path::PathBuf>,
    /// `sensors`: at least one; ids unique within the node.
    pub sensors: Vec<SensorConfig>,
}

impl SensordConfig {
    /// `state_dir`, or systemd's state directory for the unit.
    pub fn state_dir(&self) -> Option<std::path::PathBuf> {
        self.state_dir
            .clone()
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(std::path::PathBuf::from))
    }
}

fn default_offline_buffer() -> usize {
    10_000
}

/// `outbox`: see outbox.rs. A change applies at the next start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Off: QoS 1/2 readings wait in memory (`offline_buffer`), lost at a
    /// kill or power cut while disconnected.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The most the file holds; past it the oldest unsent readings go first.
    /// Default 16 MiB, many weeks of the example room (BENCHMARKS.md,
    /// "sensord's outbox", measures what a week takes).
    #[serde(default = "default_outbox_size")]
    pub max_size: bytesize::ByteSize,
    /// The least time between two syncs of the file; each QoS 1/2 reading
    /// waits up to this long before it is sent. Default 100ms: at most ten
    /// syncs a second however busy the node (a tenth of the bytes written at
    /// 1,000 readings/s, BENCHMARKS.md "sensord's outbox"); `0s` syncs each
    /// burst at once.
    #[serde(default = "default_sync_interval", with = "duration")]
    pub sync_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            enabled: true,
            max_size: default_outbox_size(),
            sync_interval: default_sync_interval(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_sync_interval() -> Duration {
    Duration::from_millis(100)
}

fn default_outbox_size() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(16)
}

/// `node:`: who this node is, and where its topics live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// MQTT client id; must equal the certificate's CN for the broker's ACL.
    pub id: Ident,
    /// `topic_prefix`: everything the node publishes goes under it
    /// (`building/floor1/room101`); to aggregatord it is the room.
    pub topic_prefix: TopicPrefix,
}

/// The simulated room all of a node's sensors observe.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    /// Makes every value model deterministic (for a given sequence of sample times).
    /// Default: none, different values every run.
    #[serde(default)]
    pub seed: Option<u64>,
    /// `occupancy`: when people may be in: `always`, `never` or a weekly schedule; default
    /// office hours.
    #[serde(default)]
    pub occupancy: Occupancy,
    /// Heating set point, °C; without one the room just follows the day.
    #[serde(default)]
    pub thermostat: Option<Thermostat>,
}

/// `room.thermostat`: a heater the simulated room switches on below its setpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thermostat {
    /// `setpoint`: °C below which the heater comes on (±0.3 dead band); 5 to 35.
    pub setpoint: f64,
}

/// When people may be in the room: `always`, `never`, or a weekly schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Occupancy {
    /// `always` or `never`.
    Fixed(FixedOccupancy),
    /// `{ days, from, to }`: people come and go at random within these hours only.
    Schedule(Schedule),
}

/// `room.occupancy` as a fixed state instead of a timetable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FixedOccupancy {
    /// Always in use: people all the time.
    Always,
    /// Never in use: no motion, and CO₂ stays at the outdoor level.
    Never,
}

/// Office hours by default: Monday to Friday, 08:00 to 18:00 local time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// `days`, default Monday to Friday (`mon` … `fri`).
    #[serde(default = "weekdays")]
    pub days: Vec<chrono::Weekday>,
    /// `from`, default 08:00 local time, inclusive.
    #[serde(default = "eight")]
    pub from: chrono::NaiveTime,
    /// `to`, default 18:00 local time, exclusive; a `to` before `from` never matches.
    #[serde(default = "eighteen")]
    pub to: chrono::NaiveTime,
}

// By hand rather than `untagged`, so a mistake inside a schedule is reported as
// itself ("unknown variant `xyz`") and not as "did not match any variant".
impl<'de> Deserialize<'de> for Occupancy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Occupancy;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`always`, `never`, or { days, from, to }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Occupancy, E> {
                use serde::de::IntoDeserializer;
                FixedOccupancy::deserialize(s.into_deserializer()).map(Occupancy::Fixed)
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<Occupancy, M::Error> {
                Schedule::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Occupancy::Schedule)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Default for Occupancy {
    fn default() -> Self {
        Occupancy::Schedule(Schedule {
            days: weekdays(),
            from: eight(),
            to: eighteen(),
        })
    }
}

fn weekdays() -> Vec<chrono::Weekday> {
    use chrono::Weekday::{Fri, Mon, Thu, Tue, Wed};
    vec![Mon, Tue, Wed, Thu, Fri]
}
fn eight() -> chrono::NaiveTime {
    chrono::NaiveTime::from_hms_opt(8, 0, 0).unwrap_or_default()
}
fn eighteen() -> chrono::NaiveTime {
    chrono::NaiveTime::from_hms_opt(18, 0, 0).unwrap_or_default()
}

/// Home Assistant MQTT discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// `enabled`, default false: publish a retained discovery config for Home Assistant.
    #[serde(default)]
    pub enabled: bool,
    /// `prefix`, default `homeassistant`: its discovery prefix; sensord also follows
    /// `{prefix}/status` to republish when Home Assistant restarts.
    #[serde(default = "default_ha_prefix")]
    pub prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            enabled: false,
            prefix: default_ha_prefix(),
        }
    }
}

fn default_ha_prefix() -> String {
    "homeassistant".into()
}

/// One entry of `sensors:`: a sensor, its interval and QoS, and its faults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    /// `id`: the reading topic's last level; unique within the node.
    pub id: Ident,
    /// `type`: what it measures; sets the unit and, by default, the QoS.
    #[serde(rename = "type")]
    pub sensor_type: SensorType,
    /// `interval`: how often a reading is taken and published; at least 10ms.
    /// For motion: how often to look for movement; readings are sent on change.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Default by type: see [`default_qos`].
    #[serde(default)]
    pub qos: Option<Qos>,
    /// `retain`, default false: publish readings retained, so a new subscriber gets the
    /// latest at once.
    #[serde(default)]
    pub retain: bool,
    /// Motion only: how long without movement before `0` is sent.
    /// Default 30s.
    #[serde(default, with = "duration::option")]
    pub clear_after: Option<Duration>,
    /// `faults`: deliberate faults, none by default; when several are active, the first
    /// listed wins.
    #[serde(default)]
    pub faults: Vec<FaultConfig>,
}

impl SensorConfig {
    pub fn qos(&self) -> Qos {
        self.qos.unwrap_or(default_qos(self.sensor_type))
    }
}

/// Frequent, redundant readings at 0; events at 1; what must not be lost or
/// counted twice (the billing meter) at 2.
pub fn default_qos(t: SensorType) -> Qos {
    match t {
        SensorType::Motion => Qos::AtLeastOnce,
        SensorType::Energy => Qos::ExactlyOnce,
        _ => Qos::AtMostOnce,
    }
}

/// A deliberate fault, for demos and tests (e.g. to trigger an alert).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// `kind`: what goes wrong.
    pub kind: FaultKind,
    /// Starts this long after sensord starts.
    /// Default 0s: from the start.
    #[serde(default, with = "duration")]
    pub after: Duration,
    /// Lasts this long; forever if absent.
    #[serde(default, rename = "for", with = "duration::option")]
    pub lasts: Option<Duration>,
    /// `spike`: the value reported; `stuck`: the value (default: the last real one).
    #[serde(default)]
    pub value: Option<f64>,
    /// `drift`: units added per minute since the fault began.
    #[serde(default)]
    pub rate: Option<f64>,
}

/// What an injected fault does to a sensor's readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Reports one value throughout: `value`, or the one measured when the fault
    /// began (motion: the state last sent, whatever `value` says).
    Stuck,
    /// Reports `value` instead of the measurement.
    Spike,
    /// Adds `rate` units per minute since the fault began.
    Drift,
    /// Publishes nothing.
    Dropout,
}

impl DaemonConfig for SensordConfig {
    fn log(&self) -> &super::LogConfig {
        &self.log
    }

    fn validate(&self) -> Result<(), Invalid> {
        self.broker.validate("broker")?;
        // The room is the prefix's last level: to aggregatord, and to the
        // broker's ACL (`building/+/%u/...`), which refuses the rest silently.
        let prefix = self.node.topic_prefix.as_str();
        let room = prefix.rsplit('/').next().unwrap_or(prefix);
        if room != self.node.id.as_str() {
            return Err(Invalid::new(
                "node.topic_prefix",
                format!(
                    "{prefix} ends in {room}, not in node.id ({}): the broker lets a node publish only under a prefix ending in its own name, and drops the rest without a word",
                    self.node.id
                ),
            ));
        }
        if self.sensors.is_empty() {
            return Err(Invalid::new("sensors", "list at least one sensor"));
        }
        if self.offline_buffer > 1_000_000 {
            return Err(Invalid::new("offline_buffer", "at most 1000000"));
        }
        let size = self.outbox.max_size.as_u64();
        if !(64 * 1024..=1 << 40).contains(&size) {
            return Err(Invalid::new("outbox.max_size", "between 64KiB and 1TiB"));
        }
        if self.outbox.sync_interval > Duration::from_secs(10) {
            return Err(Invalid::new(
                "outbox.sync_interval",
                "at most 10s (readings wait that long before they are sent)",
            ));
        }
        if let Some(t) = &self.room.thermostat {
            if !(5.0..=35.0).contains(&t.setpoint) {
                return Err(Invalid::new(
                    "room.thermostat.setpoint",
                    "must be 5 to 35 °C",
                ));
            }
        }
        let ha = &self.homeassistant.prefix;
        if ha.is_empty() || ha.contains(['+', '#']) || ha.starts_with('/') || ha.ends_with('/') {
            return Err(Invalid::new(
                "homeassistant.prefix",
                "must be a plain topic, e.g. homeassistant",
            ));
        }
        let mut seen = HashSet::new();
        for (i, s) in self.sensors.iter().enumerate() {
            let at = |key: &str| format!("sensors[{i}].{key}");
            if !seen.insert(&s.id) {
                return Err(Invalid::new(
                    at("id"),
                    format!("{} is used by an earlier sensor", s.id),
                ));
            }
            if s.interval < Duration::from_millis(10) {
                return Err(Invalid::new(at("interval"), "must be at least 10ms"));
            }
            if s.clear_after.is_some() && s.sensor_type != SensorType::Motion {
                return Err(Invalid::new(
                    at("clear_after"),
                    "only motion sensors have it",
                ));
            }
            for (j, f) in s.faults.iter().enumerate() {
                let at = |key: &str| format!("sensors[{i}].faults[{j}].{key}");
                match f.kind {
                    FaultKind::Spike if f.value.is_none() => {
                        return Err(Invalid::new(
                            at("value"),
                            "a spike needs the value to report",
                        ));
                    }
                    FaultKind::Drift if f.rate.is_none() => {
                        return Err(Invalid::new(
                            at("rate"),
                            "a drift needs a rate (units per minute)",
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.broker.resolve_paths(base);
        if let Some(dir) = &mut self.state_dir {
            super::resolve(base, dir);
        }
    }
}
