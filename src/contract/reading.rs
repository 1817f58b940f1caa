//! The reading payload. It only describes the shape: `validate_reading` decides
//! whether what arrives is acceptable.

use super::Timestamp;
use serde::{Deserialize, Serialize};

/// One sensor reading, as published on `{prefix}/{sensor_type}/{sensor_id}`.
///
/// This is the course brief's payload plus `seq`. `seq` counts up by one per sensor
/// from 1 each time sensord starts, so a gap means a lost reading and a drop back
/// to 1 means a restart. Readings from other clients may leave it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Must equal the topic's last level (else `topic_mismatch`).
    pub sensor_id: String,
    /// Must equal the topic's type level, and be a type the contract knows.
    pub sensor_type: String,
    /// In `unit`, within the type's physical range; motion is 0 or 1.
    pub value: f64,
    /// The type's one unit, as the course brief spells it (`celsius`, `kWh`).
    pub unit: String,
    /// When the sensor took it, by the node's clock; with topic and `seq`, its identity,
    /// never changed by buffering or redelivery.
    pub timestamp: Timestamp,
    /// Counts per sensor from 1 since sensord started (see above); absent from other clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}
