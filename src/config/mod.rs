//! YAML configuration: loading, error reporting, and the pieces both daemons share.
//!
//! Every config error names the file, the key and (when it can be found) the line,
//! so an operator can fix it without reading source code. Binaries map
//! [`ConfigError`] to exit status 78 (`EX_CONFIG`).

mod aggregatord;
mod broker;
mod sensord;

pub use aggregatord::{
    AggregatordConfig, HttpConfig, IngestConfig, RuleConfig, Severity, StorageConfig,
    SubscriptionConfig,
};
pub use broker::{BrokerConfig, ReconnectConfig, TlsConfig};
pub use sensord::{
    default_qos, FaultConfig, FaultKind, FixedOccupancy, HomeAssistantConfig, NodeConfig,
    Occupancy, RoomConfig, Schedule, SensorConfig, SensordConfig, Thermostat,
};

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A config file that cannot be used, and where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", Located { file, line: *line, key, message })]
    Invalid {
        file: PathBuf,
        /// One-based line number, when the key could be located.
        line: Option<usize>,
        /// Dotted path of the offending key, e.g. `sensors[1].qos`.
        key: String,
        message: String,
    },
}

struct Located<'a> {
    file: &'a Path,
    line: Option<usize>,
    key: &'a str,
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}: {}", self.key, self.message)
    }
}

/// A semantic problem found after parsing: which key, and what is wrong with it.
#[derive(Debug)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `log:` in both daemons' configs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `info,roomsense=debug`… `RUST_LOG` wins.
    #[serde(default = "default_level")]
    pub level: String,
    /// Outside journald: `text` (for people) or `json` (for log shippers).
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Implemented by each daemon's top-level config.
pub trait DaemonConfig: DeserializeOwned + serde::Serialize {
    fn log(&self) -> &LogConfig;
    /// Checks that need more than one field (duplicates, orderings).
    fn validate(&self) -> Result<(), Invalid>;
    /// Makes relative paths absolute, relative to the config file's folder.
    fn resolve_paths(&mut self, base: &Path);
}

/// Reads, parses and validates a config file.
pub fn load<T: DaemonConfig>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    from_text(file, &text)
}

/// Parses and validates config text that came from `file` (named in errors).
pub fn from_text<T: DaemonConfig>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let mut config = parse::<T>(file, text)?;
    config.validate().map_err(|e| ConfigError::Invalid {
        file: file.to_owned(),
        line: locate(text, &e.key),
        key: e.key,
        message: e.message,
    })?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    config.resolve_paths(base);
    Ok(config)
}

fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = match e.path().to_string() {
            p if p.is_empty() || p == "." => "(top level)".to_owned(),
            p => p,
        };
        let inner = e.into_inner();
        // The parser's own position often points at the start of the enclosing
        // mapping, not at the key; find the key itself when we can.
        let line = locate(text, &key).or_else(|| inner.location().map(|l| l.line()));
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            message: strip_noise(&inner.to_string(), &key),
            key,
        }
    })
}

/// The YAML library puts its own (partial) key path in front and "at line L
/// column C" behind; we report both separately, so keep only the message itself.
fn strip_noise(message: &str, key: &str) -> String {
    let message = match message.find(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    match message.split_once(": ") {
        Some((path, rest)) if key.starts_with(path) => rest.to_owned(),
        _ => message.to_owned(),
    }
}

/// Best-effort line lookup for a key path such as `sensors[2].id`, for errors found
/// after parsing (the parser's own errors carry their line). Handles block and flow
/// style as written in our example configs; returns `None` rather than guess wrong.
pub(crate) fn locate(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = 0usize;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !name.is_empty() {
            at += lines[at..].iter().position(|l| has_key(l, name))?;
        }
        if let Some(index) = index {
            // A flow sequence (`days: [mon, tue]`) is all on the key's line.
            if !name.is_empty() && lines[at].contains('[') {
                continue;
            }
            // Block sequence items: lines starting with "- " after the key line.
            let items: Vec<usize> = (at + 1..lines.len())
                .filter(|&i| lines[i].trim_start().starts_with("- "))
                .collect();
            at = *items.get(index)?;
        }
    }
    Some(at + 1)
}

fn has_key(line: &str, name: &str) -> bool {
    let code = line.split('#').next().unwrap_or("");
    code.match_indices(name).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + name.len()..].trim_start();
        matches!(before, None | Some(' ' | '{' | ',' | '-' | '\t')) && after.starts_with(':')
    })
}

/// Serde adapter for durations written the human way: `500ms`, `30s`, `2m`, `1h`.
pub mod duration {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. 500ms, 30s, 2m"
            ))
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// The same, for optional keys.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] Duration);
            Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(d)| d))
        }

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
    }
}

/// The keys whose values differ between two configs, two levels deep
/// (`broker.tls`, `sensors`), for "reloaded: changed …" log lines.
pub fn changed_keys<C: serde::Serialize>(old: &C, new: &C) -> Vec<String> {
    use serde_json::Value;
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut changed = Vec::new();
    for (key, va) in &a {
        match (va, b.get(key)) {
            (Value::Object(ma), Some(Value::Object(mb))) => {
                for (sub, sa) in ma {
                    if mb.get(sub) != Some(sa) {
                        changed.push(format!("{key}.{sub}"));
                    }
                }
                changed.extend(
                    mb.keys()
                        .filter(|k| !ma.contains_key(*k))
                        .map(|k| format!("{key}.{k}")),
                );
            }
            (va, vb) if vb != Some(va) => changed.push(key.clone()),
            _ => {}
        }
    }
    changed.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    changed
}

/// Joins `path` onto `base` unless it is already absolute.
pub(crate) fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_before_any_key_still_names_one() {
        // Found by the `config` fuzz target: a lone YAML indicator.
        for text in ["?", "- [", ": x"] {
            match parse::<crate::config::SensordConfig>(Path::new("f.yaml"), text) {
                Err(ConfigError::Invalid { key, .. }) => assert!(!key.is_empty(), "{text:?}"),
                Err(other) => panic!("{text:?}: {other}"),
                Ok(_) => panic!("{text:?} parsed"),
            }
        }
    }

    #[test]
    fn locates_block_and_flow_keys() {
        let text = "node:\n  id: a\nsensors:\n  - { id: t1, type: temperature }\n  - id: t2\n    type: humidity\n";
        assert_eq!(locate(text, "node.id"), Some(2));
        assert_eq!(locate(text, "sensors[0].id"), Some(4));
        assert_eq!(locate(text, "sensors[1].id"), Some(5));
        assert_eq!(locate(text, "sensors[1].type"), Some(6));
        assert_eq!(locate(text, "nothing"), None);
        let flow = "room:\n  occupancy: { days: [mon, xyz] }\nsensors:\n  - { id: a }\n";
        assert_eq!(locate(flow, "room.occupancy.days[1]"), Some(2));
    }
}
