//! `aggregatord`: stores every reading durably and shows the history. The work is
//! in `roomsense::aggregatord`.

use clap::{Parser, Subcommand};
use roomsense::aggregatord::{self, Format};
use std::path::PathBuf;
use std::process::ExitCode;

/// Subscribes to sensor readings, validates them and stores them durably.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// YAML config file (see config/aggregatord.yaml).
    #[arg(
        short,
        long,
        global = true,
        default_value = "/etc/roomsense/aggregatord.yaml"
    )]
    config: PathBuf,
    /// Validate the config and exit (0 if valid, 78 if not).
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Print the stored readings (aggregatord must be stopped: sled allows one process).
    Dump {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Show the rejected messages instead of readings.
        #[arg(long)]
        rejected: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => aggregatord::main(&cli.config, cli.check_config),
        Command::Dump { format, rejected } => aggregatord::dump_main(&cli.config, format, rejected),
    };
    roomsense::daemon::exit_status(result)
}
