//! The message contract: what goes on the wire between sensord, aggregatord and any
//! other MQTT client. Topics, reading payloads, status payloads and the rules for
//! validating what arrives. README.md ("Message contract") documents the same
//! thing for people; keep the two in step.
//! It knows neither the MQTT client nor storage: only types and checks, shared
//! by both daemons and their tools.

mod alert;
mod ident;
mod qos;
mod reading;
mod sensor_type;
mod status;
mod timestamp;
pub mod topic;
mod validate;

pub use alert::{Alert, AlertState, Severity};
pub use ident::{Ident, TopicPrefix};
pub use qos::Qos;
pub use reading::Reading;
pub use sensor_type::SensorType;
pub use status::{NodeState, Status, StatusSensor, REASON_CONNECTION_LOST, REASON_SHUTDOWN};
pub use timestamp::Timestamp;
pub use topic::SensorTopic;
pub use validate::{
    check_size, judge_topic, refuse_unknown_type, validate_reading, validate_status, Arrived,
    Rejection, RejectionReason, MAX_PAYLOAD_BYTES,
};
