use super::{resolve, BrokerConfig, DaemonConfig, Invalid};
use crate::contract::Ident;
use crate::mqtt::Qos;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `aggregatord`'s config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatordConfig {
    /// Fixed client id: the broker keeps our session (and queues readings) under it.
    pub client_id: Ident,
    pub broker: BrokerConfig,
    pub subscriptions: Vec<SubscriptionConfig>,
    pub storage: StorageConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
}

/// Group commit: one fsync covers a batch of readings, acknowledged together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// At most this many messages per batch.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// After the first message of a batch, wait at most this long for more.
    #[serde(default = "default_batch_window", with = "super::duration")]
    pub batch_window: std::time::Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_max: default_batch_max(),
            batch_window: default_batch_window(),
        }
    }
}

fn default_batch_max() -> usize {
    500
}
fn default_batch_window() -> std::time::Duration {
    std::time::Duration::from_millis(5)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub filter: String,
    pub qos: Qos,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Folder of the sled database.
    pub path: PathBuf,
}

impl DaemonConfig for AggregatordConfig {
    fn validate(&self) -> Result<(), Invalid> {
        self.broker.validate("broker")?;
        if self.subscriptions.is_empty() {
            return Err(Invalid::new(
                "subscriptions",
                "list at least one topic filter",
            ));
        }
        // Unacknowledged messages wait for their batch; the broker sends at most
        // max_inflight_messages (1000 in deploy/mosquitto) before it waits for acks.
        if !(1..=1000).contains(&self.ingest.batch_max) {
            return Err(Invalid::new(
                "ingest.batch_max",
                "must be 1 to 1000 (the broker's in-flight window)",
            ));
        }
        if self.ingest.batch_window > std::time::Duration::from_secs(1) {
            return Err(Invalid::new(
                "ingest.batch_window",
                "at most 1s: acknowledgements wait for it",
            ));
        }
        for (i, s) in self.subscriptions.iter().enumerate() {
            if let Err(why) = check_filter(&s.filter) {
                return Err(Invalid::new(format!("subscriptions[{i}].filter"), why));
            }
            // Measured (tests/system/durability.rs and README): after a broker
            // restart Mosquitto resends PUBREL for QoS 2 deliveries in flight, which
            // rumqttc 0.25 calls unsolicited and disconnects on, for ever
            // (bytebeamio/rumqtt#664). Storage is idempotent, so QoS 1 already
            // gives exactly-once storage.
            if s.qos == Qos::ExactlyOnce {
                return Err(Invalid::new(
                    format!("subscriptions[{i}].qos"),
                    "use 1: QoS 2 deliveries wedge rumqttc 0.25 after a broker restart (rumqtt#664), \
                     and storage already drops duplicates, so QoS 1 stores each reading exactly once",
                ));
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.broker.resolve_paths(base);
        resolve(base, &mut self.storage.path);
    }
}

/// MQTT 3.1.1 §4.7: `#` only as the whole last level, `+` only as a whole level.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("must not be empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("{filter:?}: '#' must be a whole last level"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters() {
        for ok in ["building/#", "building/+/+/status", "#", "a/b"] {
            assert!(super::check_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "a/+x/c"] {
            assert!(super::check_filter(bad).is_err(), "{bad}");
        }
    }
}
