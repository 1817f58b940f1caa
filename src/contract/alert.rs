use super::Timestamp;
use crate::config::Severity;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An alert, as published on `{prefix}/alerts/{rule}` (QoS 2) and stored.
///
/// While an alert is active its `raised` message is retained on that topic, so a
/// subscriber to `building/+/+/alerts/#` learns every active alert at once. On
/// clear, a `cleared` message is published (not retained), then an empty retained
/// message removes the retained `raised` one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule: String,
    pub severity: Severity,
    pub state: AlertState,
    /// The room's topic prefix, e.g. `building/floor1/room101`.
    pub room: String,
    /// The reading (or status) topic that triggered it.
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub message: String,
    pub raised_at: Timestamp,
    /// When this state began (equal to `raised_at` for `raised`).
    pub time: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Raised,
    Cleared,
}

impl fmt::Display for AlertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AlertState::Raised => "raised",
            AlertState::Cleared => "cleared",
        })
    }
}

impl Alert {
    pub fn topic(&self) -> String {
        super::topic::alert(&self.room, &self.rule)
    }
}
