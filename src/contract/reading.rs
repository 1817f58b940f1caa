use super::Timestamp;
use serde::{Deserialize, Serialize};

/// One sensor reading, as published on `{prefix}/{sensor_type}/{sensor_id}`.
///
/// This is the course brief's payload plus `seq`. `seq` counts up by one per sensor
/// from 1 each time sensord starts, so a gap means a lost reading and a drop back
/// to 1 means a restart. Readings from other clients may leave it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub sensor_id: String,
    pub sensor_type: String,
    pub value: f64,
    pub unit: String,
    pub timestamp: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}
