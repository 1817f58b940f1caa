//! roomsense: building telemetry over MQTT.
//!
//! Two daemons share this library: `sensord` (a node's simulated sensors) and
//! `aggregatord` (durable ingest and history). See ARCHITECTURE.md for the map.
//! It parses no command line: clap stays in the thin binaries in src/bin.
#![forbid(unsafe_code)]

pub mod aggregatord;
pub mod alerts;
pub mod config;
pub mod contract;
pub mod daemon;
pub mod faults;
pub mod journal;
pub mod mqtt;
pub mod sensord;
pub mod sensors;
pub mod store;
