//! The daemons as users run them: their configs, starting them, and the
//! aggregatord site most tests begin with ([`aggregatord_for`]); `dump`, HTTP.

use super::*;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A config file in a temporary folder.
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn write_config(yaml: &str) -> ConfigFile {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    ConfigFile { _dir: dir, path }
}

/// A sensord config with one `(id, type, interval, qos)` per sensor. The room is
/// always occupied and motion clears after one interval, so motion sensors report
/// often whatever the time of day the test runs.
pub fn sensord_yaml(
    broker: &Broker,
    pki: &Pki,
    node: &str,
    prefix: &str,
    sensors: &[(&str, &str, &str, u8)],
) -> String {
    sensord_yaml_on(broker.port, pki, node, prefix, sensors, "")
}

/// The same, for a broker at `port`, with `extra` top-level YAML.
pub fn sensord_yaml_on(
    port: u16,
    pki: &Pki,
    node: &str,
    prefix: &str,
    sensors: &[(&str, &str, &str, u8)],
    extra: &str,
) -> String {
    let mut yaml = format!(
        "node: {{ id: {node}, topic_prefix: {prefix} }}\n{}room: {{ occupancy: always }}\n{extra}sensors:\n",
        broker_yaml(port, pki, node)
    );
    for (id, kind, interval, qos) in sensors {
        let clear = if *kind == "motion" {
            format!(", clear_after: {interval}")
        } else {
            String::new()
        };
        yaml.push_str(&format!(
            "  - {{ id: {id}, type: {kind}, interval: {interval}, qos: {qos}{clear} }}\n"
        ));
    }
    yaml
}

pub fn aggregatord_yaml(broker: &Broker, pki: &Pki, storage: &Path) -> String {
    aggregatord_yaml_with(broker, pki, storage, 1, "")
}

/// With the subscription at `qos` and `extra` top-level YAML.
pub fn aggregatord_yaml_with(
    broker: &Broker,
    pki: &Pki,
    storage: &Path,
    qos: u8,
    extra: &str,
) -> String {
    // Tests run side by side: each dashboard on a port of the kernel's choosing.
    let http = if extra.contains("http:") {
        ""
    } else {
        "http: { listen: \"127.0.0.1:0\" }\n"
    };
    format!(
        "client_id: aggregatord\n{}alert_identity: {{ cert_file: {}, key_file: {} }}\nsubscriptions:\n  - {{ filter: \"building/#\", qos: {qos} }}\nstorage:\n  path: {}\n{extra}{http}",
        broker.yaml(pki, "aggregatord"),
        pki.path("aggregatord-alerts.crt").display(),
        pki.path("aggregatord-alerts.key").display(),
        storage.display()
    )
}

/// A running aggregatord on its own broker, and what a test needs to reach it.
pub struct Agg {
    pub pki: Pki,
    pub broker: Broker,
    pub _storage: tempfile::TempDir,
    pub config: ConfigFile,
    pub agg: Proc,
    pub addr: String,
}

/// The aggregatord site most tests begin with, built up as the test needs
/// it: certificates for aggregatord and the nodes, a broker, a store, and
/// aggregatord subscribed; [`Site::start`] returns the guards ([`Agg`]).
///
/// `Site::new(&["room101"]).extra("ingest: { batch_max: 10 }\n").env("FAILPOINTS", "…").start()`
pub struct Site {
    names: Vec<String>,
    extra: String,
    env: Vec<(String, String)>,
    logging_packets: bool,
    edit: Option<Box<dyn Fn(String) -> String>>,
}

impl Site {
    /// Certificates for aggregatord (and its alert identity) and `nodes`.
    pub fn new(nodes: &[&str]) -> Site {
        Site {
            names: nodes.iter().map(|n| (*n).to_owned()).collect(),
            extra: String::new(),
            env: Vec::new(),
            logging_packets: false,
            edit: None,
        }
    }

    /// YAML after the storage section's `path:` line: indented, it is part
    /// of that section; otherwise top-level.
    pub fn extra(mut self, yaml: &str) -> Site {
        self.extra.push_str(yaml);
        self
    }

    /// An environment variable for aggregatord (`FAILPOINTS`).
    pub fn env(mut self, key: &str, value: &str) -> Site {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// A broker that logs every packet: a broker-side observer of acks.
    pub fn logging_packets(mut self) -> Site {
        self.logging_packets = true;
        self
    }

    /// The config as written, changed by `edit` first (`keep_alive: 1s`).
    pub fn edit(mut self, edit: impl Fn(String) -> String + 'static) -> Site {
        self.edit = Some(Box::new(edit));
        self
    }

    /// Starts it all; returns once aggregatord has subscribed.
    pub fn start(self) -> Agg {
        let mut names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        names.push("aggregatord");
        let pki = Pki::new(&names);
        let broker = if self.logging_packets {
            Broker::start_logging_packets(&pki)
        } else {
            Broker::start(&pki)
        };
        let storage = tempfile::tempdir().unwrap();
        let yaml = aggregatord_yaml_with(&broker, &pki, storage.path(), 1, &self.extra);
        let yaml = match &self.edit {
            Some(edit) => edit(yaml),
            None => yaml,
        };
        let config = write_config(&yaml);
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let agg = start_daemon_with(AGGREGATORD, &config.path, &env);
        let addr = dashboard_addr(&agg.log);
        agg.log.wait_for(&["subscribed"]);
        Agg {
            pki,
            broker,
            _storage: storage,
            config,
            agg,
            addr,
        }
    }
}

/// A broker with certificates for aggregatord and `nodes`, and aggregatord
/// (with `extra` config) subscribed to it.
pub fn aggregatord_for(nodes: &[&str], extra: &str) -> Agg {
    Site::new(nodes).extra(extra).start()
}

/// How many readings a stopped sensord says it published (its last line).
pub fn published(node: &Proc) -> u64 {
    node.log
        .wait_for(&["sensord stopped"])
        .split("published=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("published= in the stop line")
}

pub fn start_daemon(bin: &str, config: &Path) -> Proc {
    start_daemon_with(bin, config, &[])
}

/// With extra environment variables (e.g. `NOTIFY_SOCKET`).
pub fn start_daemon_with(bin: &str, config: &Path, env: &[(&str, &str)]) -> Proc {
    let name = Path::new(bin)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    Proc::spawn(
        &name,
        Command::new(bin)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,roomsense=debug")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied()),
    )
}

/// Runs `aggregatord dump` to completion and returns its stdout.
pub fn dump(config: &Path, args: &[&str]) -> String {
    stdout_of(
        Command::new(AGGREGATORD)
            .arg("--config")
            .arg(config)
            .arg("dump")
            .args(args),
    )
}

/// The `seq` of every stored reading, in dump order (topic, then time).
pub fn stored_seqs(config: &Path) -> Vec<u64> {
    seqs_of(&dump(config, &["--format", "jsonl"]))
}

/// The `seq` of every reading in a `dump --format jsonl`.
pub fn seqs_of(jsonl: &str) -> Vec<u64> {
    jsonl
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("jsonl")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect()
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `host:port` of a running aggregatord's dashboard, from its log.
pub fn dashboard_addr(log: &Log) -> String {
    let line = log.wait_for(&["dashboard listening"]);
    let url = line.split("http://").nth(1).expect("url in the log line");
    url.split('/').next().unwrap_or(url).to_owned()
}

/// Runs a command to completion; fails the test (showing stderr) unless it succeeds.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        output_text(&out)
    );
    String::from_utf8(out.stdout).expect("output is UTF-8")
}

/// A finished command's stdout and stderr, for a failure message.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
