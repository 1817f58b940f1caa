//! System tests: the real daemons, a real Mosquitto with mutual TLS, real storage.
//! One test binary (faster to build than one per file); see harness/ for the rig.
//!
//! Pedantic lints allowed here, for test scenarios only: counts are small
//! constants cast where a helper wants `usize`/`i64`; a scenario's constants sit
//! next to the step that uses them; `require_failpoints` asserts on a cfg on
//! purpose; the rig's structs and helpers favour short calls over borrowing.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::items_after_statements,
    clippy::manual_assert,
    clippy::needless_pass_by_value,
    clippy::struct_field_names,
    clippy::format_push_string
)]

mod harness;
mod machine;

mod aggregatord;
mod bench;
mod clients;
mod config;
mod containers;
mod damage;
mod dashboard;
mod demo;
mod deploy;
mod durability;
mod fleet;
mod hostile;
mod lifecycle;
mod outbox;
mod pipeline;
mod reconnect;
mod reliability;
mod rollups;
mod scaling;
mod security;
mod sensord;
mod status;
mod systemd;
mod tls;
