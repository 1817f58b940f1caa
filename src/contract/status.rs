use super::Timestamp;
use serde::{Deserialize, Serialize};

/// The retained payload on `{prefix}/status`.
///
/// `online` is published by the node on every connect; `offline` either by the node
/// itself on a clean stop (`reason: "shutdown"`) or by the broker as the node's Last
/// Will when the connection dies (`reason: "connection_lost"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub status: NodeState,
    /// Informational: aggregatord takes the node from the topic, never from
    /// here (the course brief's client sends none; a payload could lie).
    #[serde(default)]
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Informational, as the course brief's Last Will carries it
    /// (`{"status": "offline", "client_id": "sensor_node_1"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensors: Vec<StatusSensor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Online,
    Offline,
}

/// One sensor as announced in the `online` status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSensor {
    pub id: String,
    #[serde(rename = "type")]
    pub sensor_type: String,
    pub unit: String,
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
