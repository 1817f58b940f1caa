//! Home Assistant MQTT discovery: one retained device config that makes the node
//! and each of its sensors appear in Home Assistant, available while the node's
//! status says `online`.
//! Format: <https://www.home-assistant.io/integrations/mqtt/#device-discovery-payload>
//! It only builds the message: when to publish it (birth, Home Assistant's
//! restarts) is sensord's mod.rs's call.

use crate::config::SensordConfig;
use crate::contract::Qos;
use crate::contract::{topic, SensorType};
use crate::mqtt::Message;
use serde_json::{json, Map, Value};

/// Where Home Assistant announces its own restarts (`online`), so we republish.
pub fn ha_status_topic(config: &SensordConfig) -> String {
    format!("{}/status", config.homeassistant.prefix)
}

pub fn message(config: &SensordConfig) -> Message {
    let node = config.node.id.as_str();
    let prefix = &config.node.topic_prefix;
    let version = env!("CARGO_PKG_VERSION");
    let mut components = Map::new();
    for s in &config.sensors {
        let unique_id = format!("roomsense_{node}_{}", s.id);
        let mut c = json!({
            "platform": "sensor",
            "unique_id": unique_id,
            "name": format!("{} {}", s.sensor_type, s.id),
            "state_topic": topic::reading(prefix, s.sensor_type, &s.id),
            "value_template": "{{ value_json.value }}",
        });
        let (device_class, unit, state_class) = match s.sensor_type {
            SensorType::Temperature => ("temperature", Some("°C"), Some("measurement")),
            SensorType::Humidity => ("humidity", Some("%"), Some("measurement")),
            SensorType::Co2 => ("carbon_dioxide", Some("ppm"), Some("measurement")),
            SensorType::Power => ("power", Some("W"), Some("measurement")),
            SensorType::Energy => ("energy", Some("kWh"), Some("total_increasing")),
            SensorType::Motion => ("motion", None, None),
        };
        c["device_class"] = json!(device_class);
        if let Some(unit) = unit {
            c["unit_of_measurement"] = json!(unit);
        }
        if let Some(state_class) = state_class {
            c["state_class"] = json!(state_class);
        }
        if s.sensor_type == SensorType::Motion {
            c["platform"] = json!("binary_sensor");
            c["value_template"] = json!("{{ value_json.value | int }}");
            c["payload_on"] = json!("1");
            c["payload_off"] = json!("0");
        }
        components.insert(unique_id, c);
    }
    let payload = json!({
        "device": {
            "identifiers": [format!("roomsense_{node}")],
            "name": node,
            "manufacturer": "roomsense",
            "model": "sensord",
            "sw_version": version,
        },
        "origin": { "name": "roomsense", "sw_version": version },
        "availability": [{
            "topic": topic::status(prefix),
            "value_template": "{{ value_json.status }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }],
        "components": Value::Object(components),
        "qos": 1,
    });
    Message {
        topic: format!("{}/device/{node}/config", config.homeassistant.prefix),
        payload: payload.to_string().into_bytes(),
        qos: Qos::AtLeastOnce,
        retain: true,
    }
}
