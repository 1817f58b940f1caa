//! `sensord`: publishes one node's sensor readings. The work is in `roomsense::sensord`.
//! This file only parses arguments and turns the result into an exit status.
#![forbid(unsafe_code)]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Simulates one room's sensors and publishes their readings over MQTT (mutual TLS).
#[derive(Parser)]
#[command(name = "sensord", version)]
struct Cli {
    /// YAML config file (see config/sensord/).
    #[arg(short, long)]
    config: PathBuf,
    /// Validate the config and exit (0 if valid, 78 if not).
    #[arg(long)]
    check_config: bool,
    /// Print readings as JSON lines on stdout instead of publishing; no broker needed.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: simulate this much time (e.g. 24h) as fast as possible.
    #[arg(long, requires = "dry_run", value_parser = humantime::parse_duration)]
    simulate: Option<std::time::Duration>,
    /// With --simulate: start the simulated time here (RFC 3339), not now.
    #[arg(long, requires = "simulate", value_parser = roomsense::contract::Timestamp::parse)]
    from: Option<roomsense::contract::Timestamp>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = if cli.dry_run {
        roomsense::sensord::dry_run(&cli.config, cli.simulate, cli.from)
    } else {
        roomsense::sensord::main(&cli.config, cli.check_config)
    };
    roomsense::daemon::exit_status(result)
}
