//! System tests: the real daemons, a real Mosquitto with mutual TLS, real storage.
//! One test binary (faster to build than one per file); see harness.rs for the rig.

mod harness;

mod aggregatord;
mod bench;
mod clients;
mod config;
mod dashboard;
mod demo;
mod deploy;
mod durability;
mod hostile;
mod lifecycle;
mod pipeline;
mod reconnect;
mod reliability;
mod security;
mod sensord;
mod status;
mod systemd;
mod tls;
