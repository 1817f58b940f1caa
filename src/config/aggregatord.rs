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
        for (i, s) in self.subscriptions.iter().enumerate() {
            if let Err(why) = check_filter(&s.filter) {
                return Err(Invalid::new(format!("subscriptions[{i}].filter"), why));
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
