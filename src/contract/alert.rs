//! The alert payload, as published and stored. It decides nothing: raising and
//! clearing are `alerts::Engine`'s, storing is ingest's, and sending the publisher's.

use super::Timestamp;
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
    /// The rule's `name` (or a built-in: `readings_missing`, `limits`); the topic's last level.
    pub rule: String,
    /// Copied from the rule: a label for people (dashboard, dump); nothing acts on it.
    pub severity: Severity,
    /// Raised or cleared: one alert's life is two changes.
    pub state: AlertState,
    /// The room's topic prefix, e.g. `building/floor1/room101`.
    pub room: String,
    /// The reading (or status) topic that triggered it.
    pub topic: String,
    /// The value behind the change (a reading's, or how many readings are missing), when
    /// there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// For people: what happened, e.g. `30.5 above 26` or `24.9 back below 25`.
    pub message: String,
    /// When the alert was raised; a clear keeps it, so it tells how long the alert lasted.
    pub raised_at: Timestamp,
    /// When this state began (equal to `raised_at` for `raised`).
    pub time: Timestamp,
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition held (for the rule's `for`): published retained until cleared.
    Raised,
    /// No longer holds (or was forgotten): published once, then the retained raise removed.
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
    /// A built-in alert (a warning, with no value): `rule` in `room`, about
    /// `topic`, changing to `state` at `time`, raised at `raised_at`.
    pub fn warning(
        rule: &str,
        state: AlertState,
        (room, topic): (&str, &str),
        message: String,
        raised_at: Timestamp,
        time: Timestamp,
    ) -> Alert {
        Alert {
            rule: rule.to_owned(),
            severity: Severity::Warning,
            state,
            room: room.to_owned(),
            topic: topic.to_owned(),
            value: None,
            message,
            raised_at,
            time,
        }
    }

    /// Where it is published: `{room}/alerts/{rule}`.
    pub fn topic(&self) -> String {
        super::topic::alert(&self.room, &self.rule)
    }
}

/// How much an alert matters, for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For information; nothing to do.
    Info,
    /// Needs a look (the default; also the built-in alerts' severity).
    #[default]
    Warning,
    /// Needs action now.
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}
