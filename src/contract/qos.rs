//! MQTT's quality of service, as the contract and the configs name it. Only the
//! number: `mqtt` maps it to its client library's type.

use serde::{Deserialize, Serialize};

/// MQTT quality of service, written 0, 1 or 2 in configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Qos {
    /// 0: sent once, lost if the link drops (motion, where the next one soon follows).
    AtMostOnce = 0,
    /// 1: resent until acknowledged; may arrive twice (receivers drop duplicates).
    AtLeastOnce = 1,
    /// 2: the four-step handshake; once, as far as the broker is concerned.
    ExactlyOnce = 2,
}

impl TryFrom<u8> for Qos {
    type Error = String;
    fn try_from(n: u8) -> Result<Self, String> {
        match n {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            2 => Ok(Qos::ExactlyOnce),
            _ => Err(format!("QoS is 0, 1 or 2, not {n}")),
        }
    }
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        q as u8
    }
}
