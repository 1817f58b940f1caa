//! `aggregatord`: stores every reading durably and shows the history. The work is
//! in `roomsense::aggregatord`.
//! This file only parses arguments (refusing bad combinations) and turns the
//! result into an exit status.
#![forbid(unsafe_code)]

use clap::{Args, CommandFactory, Parser, Subcommand};
use roomsense::aggregatord::{self, Format, Request, RequestKind};

use roomsense::contract::Timestamp;
use roomsense::store::Query;
use std::path::PathBuf;
use std::process::ExitCode;

/// Subscribes to sensor readings, validates them and stores them durably.
#[derive(Parser)]
#[command(name = "aggregatord", version)]
struct Cli {
    /// YAML config file (see config/aggregatord.yaml).
    #[arg(
        short,
        long,
        global = true,
        default_value = "/etc/roomsense/aggregatord.yaml"
    )]
    /// The config file.
    config: PathBuf,
    /// Validate the config and exit (0 if valid, 78 if not).
    #[arg(long)]
    check_config: bool,
    /// What to do; none means `run`. (clap shows no doc of a subcommand field.)
    #[command(subcommand)]
    command: Option<Command>,
}

/// `--format`: the library's [`Format`], as a command-line choice (clap stays
/// in the binaries).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    /// Aligned columns, for people.
    Table,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated, with a header line.
    Csv,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Table => Format::Table,
            FormatArg::Jsonl => Format::Jsonl,
            FormatArg::Csv => Format::Csv,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Print stored readings (or rejected messages, or alerts). Works whether
    /// aggregatord is running (through its control socket) or not.
    Dump {
        /// Output format.
        #[arg(long, value_enum, default_value_t = FormatArg::Table)]
        format: FormatArg,
        /// Rejected messages instead of readings.
        #[arg(long, conflicts_with = "alerts")]
        rejected: bool,
        /// Alert history instead of readings.
        #[arg(long, conflicts_with = "tier")]
        alerts: bool,
        /// A rollup tier's rows instead of readings: `1m` or `1h` (per
        /// sensor and minute or hour: count, min, max, mean, first, last).
        /// They reach back past `storage.retention`.
        #[arg(long, conflicts_with_all = ["rejected", "also"])]
        tier: Option<roomsense::store::Tier>,
        /// Another instance's config: its readings too, merged (a reading
        /// stored by several instances shows once). Repeatable.
        #[arg(long, value_name = "CONFIG", conflicts_with_all = ["rejected", "alerts"])]
        also: Vec<PathBuf>,
        /// The N newest readings of those selected (of every sensor),
        /// oldest of them first; without it readings go by sensor, then
        /// time, and `--limit` keeps the first.
        #[arg(long, value_name = "N", conflicts_with_all = ["rejected", "alerts", "tier", "limit"])]
        latest: Option<usize>,
        /// Which rows: sensors, time range, at most how many.
        #[command(flatten)]
        filter: Filter,
    },
    /// Forget sensors (by --sensor, --type, --topic, optionally in --room) or a
    /// whole --room: their alerts are cleared (and the clears published), their
    /// dashboard rows go. Their stored history stays. Needs the running daemon.
    Forget {
        /// With only --room: the whole room.
        #[command(flatten)]
        which: Which,
        /// One reading topic exactly.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Per sensor: count, min, max, mean, first and last reading.
    Stats {
        /// Output format.
        #[arg(long, value_enum, default_value_t = FormatArg::Table)]
        format: FormatArg,
        /// Another instance's config: statistics over its readings too,
        /// each reading counted once. Repeatable.
        #[arg(long, value_name = "CONFIG")]
        also: Vec<PathBuf>,
        /// Which readings the statistics cover: sensors, time range, limit.
        #[command(flatten)]
        filter: Filter,
    },
}

/// Which sensors: shared by the history commands and `forget`.
#[derive(Args)]
struct Which {
    /// Sensor id, e.g. `temp_001`.
    #[arg(long)]
    sensor: Option<String>,
    /// Room (node id), e.g. room101.
    #[arg(long)]
    room: Option<String>,
    /// Sensor type, e.g. temperature.
    #[arg(long = "type")]
    sensor_type: Option<String>,
}

#[derive(Args)]
struct Filter {
    /// Which sensors: --sensor, --room, --type.
    #[command(flatten)]
    which: Which,
    /// From this time: a duration ago (`1h`, `30m`) or RFC 3339.
    #[arg(long, value_parser = Timestamp::parse_ago)]
    since: Option<Timestamp>,
    /// Up to this time: a duration ago or RFC 3339.
    #[arg(long, value_parser = Timestamp::parse_ago)]
    until: Option<Timestamp>,
    /// At most this many rows: the first (readings go by sensor, then
    /// time; `dump --latest N` gives the newest).
    #[arg(long)]
    limit: Option<usize>,
}

impl From<Filter> for Query {
    fn from(f: Filter) -> Query {
        let query = Query {
            sensor: f.which.sensor,
            room: f.which.room,
            sensor_type: f.which.sensor_type,
            since: f.since,
            until: f.until,
            limit: f.limit,
            topic: None,
        };
        // A usage error (exit 2, like clap's own), not an empty table.
        if let Err(e) = query.check() {
            Cli::command()
                .error(clap::error::ErrorKind::ArgumentConflict, e)
                .exit();
        }
        query
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    roomsense::daemon::private_files();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => aggregatord::main(&cli.config, cli.check_config),
        Command::Dump {
            format,
            rejected,
            alerts,
            tier,
            also,
            latest,
            filter,
        } => {
            let what = if let Some(tier) = tier {
                RequestKind::Rollups(tier)
            } else if rejected {
                RequestKind::Rejected
            } else if alerts {
                RequestKind::Alerts
            } else {
                RequestKind::Readings
            };
            aggregatord::dump_main(
                &cli.config,
                &also,
                &Request {
                    what,
                    format: format.into(),
                    query: filter.into(),
                    latest,
                },
            )
        }
        Command::Forget { which, topic } => {
            let Which {
                sensor,
                room,
                sensor_type,
            } = which;
            if sensor.is_none() && room.is_none() && sensor_type.is_none() && topic.is_none() {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::MissingRequiredArgument,
                        "name what to forget: --room, --sensor, --type or --topic",
                    )
                    .exit();
            }
            aggregatord::dump_main(
                &cli.config,
                &[],
                &Request {
                    what: RequestKind::Forget,
                    format: Format::Table,
                    query: Query {
                        sensor,
                        room,
                        sensor_type,
                        topic,
                        ..Query::default()
                    },
                    latest: None,
                },
            )
        }
        Command::Stats {
            format,
            also,
            filter,
        } => aggregatord::dump_main(
            &cli.config,
            &also,
            &Request {
                what: RequestKind::Stats,
                format: format.into(),
                query: filter.into(),
                latest: None,
            },
        ),
    };
    roomsense::daemon::exit_status(result)
}
