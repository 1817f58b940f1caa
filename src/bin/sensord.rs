//! `sensord`: publishes one node's sensor readings. The work is in `roomsense::sensord`.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Simulates one room's sensors and publishes their readings over MQTT (mutual TLS).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// YAML config file (see config/sensord/).
    #[arg(short, long)]
    config: PathBuf,
    /// Validate the config and exit (0 if valid, 78 if not).
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    roomsense::daemon::exit_status(roomsense::sensord::main(&cli.config, cli.check_config))
}
