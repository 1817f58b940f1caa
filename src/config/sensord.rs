use super::{duration, BrokerConfig, DaemonConfig, Invalid};
use crate::contract::{Ident, SensorType, TopicPrefix};
use crate::mqtt::Qos;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// `sensord`'s config: one node (one room) and its sensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensordConfig {
    pub node: NodeConfig,
    pub broker: BrokerConfig,
    pub sensors: Vec<SensorConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// MQTT client id; must equal the certificate's CN for the broker's ACL.
    pub id: Ident,
    pub topic_prefix: TopicPrefix,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    pub id: Ident,
    #[serde(rename = "type")]
    pub sensor_type: SensorType,
    #[serde(with = "duration")]
    pub interval: Duration,
    pub qos: Qos,
    #[serde(default)]
    pub retain: bool,
}

impl DaemonConfig for SensordConfig {
    fn validate(&self) -> Result<(), Invalid> {
        self.broker.validate("broker")?;
        if self.sensors.is_empty() {
            return Err(Invalid::new("sensors", "list at least one sensor"));
        }
        let mut seen = HashSet::new();
        for (i, s) in self.sensors.iter().enumerate() {
            if !seen.insert(&s.id) {
                return Err(Invalid::new(
                    format!("sensors[{i}].id"),
                    format!("{} is used by an earlier sensor", s.id),
                ));
            }
            if s.interval < Duration::from_millis(10) {
                return Err(Invalid::new(
                    format!("sensors[{i}].interval"),
                    "must be at least 10ms",
                ));
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.broker.resolve_paths(base);
    }
}
