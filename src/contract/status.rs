//! The node status payload. It does not judge what an `offline` means: the alert
//! engine and the dashboard read `reason`.

use super::Timestamp;
use serde::{Deserialize, Serialize};

/// The retained payload on `{prefix}/status`.
///
/// `online` is published by the node on every connect; `offline` either by the node
/// itself on a clean stop (`reason: "shutdown"`) or by the broker as the node's Last
/// Will when the connection dies (`reason: "connection_lost"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Online or offline.
    pub status: NodeState,
    /// Informational: aggregatord takes the node from the topic, never from
    /// here (the course brief's client sends none; a payload could lie).
    #[serde(default)]
    pub node: String,
    /// Offline only: `shutdown` for a clean stop, `connection_lost` in the Last Will;
    /// none from clients like the course brief's (taken as a lost connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Informational, as the course brief's Last Will carries it
    /// (`{"status": "offline", "client_id": "sensor_node_1"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The sensord version that published it (`online` only); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When that sensord started (`online` only); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// The node's sensors (`online` only): the dashboard shows each one's declared QoS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensors: Vec<StatusSensor>,
}

/// A node's state in its status message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Connected: published by the node on every connect, retained.
    Online,
    /// Gone: a clean stop, or the broker's Last Will for a lost connection.
    Offline,
}

/// One sensor as announced in the `online` status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSensor {
    /// The sensor id: its reading topic's last level.
    pub id: String,
    /// Its type; `type` on the wire.
    #[serde(rename = "type")]
    pub sensor_type: String,
    /// The unit its readings carry.
    pub unit: String,
    /// The QoS the node publishes its readings at (what we receive may be lower).
    pub qos: u8,
}

pub const REASON_SHUTDOWN: &str = "shutdown";
pub const REASON_CONNECTION_LOST: &str = "connection_lost";

impl Status {
    pub fn offline(node: &str, reason: &str) -> Self {
        Status {
            status: NodeState::Offline,
            node: node.to_owned(),
            reason: Some(reason.to_owned()),
            client_id: None,
            version: None,
            started_at: None,
            sensors: Vec::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
