//! YAML configuration: loading, error reporting, and the pieces both daemons share.
//!
//! Every config error names the file, the key and (when it can be found) the line,
//! so an operator can fix it without reading source code. Binaries map
//! [`ConfigError`] to exit status 78 (`EX_CONFIG`).
//! It never opens the files a config names: each daemon's `preflight` checks those
//! (certificates, keys, the dashboard token, the state directory).

mod aggregatord;
mod broker;
mod sensord;
mod spans;

pub use aggregatord::{
    AggregatordConfig, HttpConfig, IngestConfig, RuleConfig, StorageConfig, SubscriptionConfig,
};
pub use broker::{BrokerConfig, HostPort, Identity, ReconnectConfig, TlsConfig, CREDENTIALS_VAR};
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
    /// The file cannot be read (missing, not permitted, not UTF-8).
    #[error("{}: cannot read config", file.display())]
    Read {
        /// The config file, as named on the command line.
        file: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The file was read but is no usable config: YAML, types, a check on its values, or
    /// a file it names (found by `preflight`).
    #[error("{}", Located { file, line: *line, key, message })]
    Invalid {
        /// The config file, as named on the command line.
        file: PathBuf,
        /// One-based line number, when the key could be located.
        line: Option<usize>,
        /// Dotted path of the offending key, e.g. `sensors[1].qos`.
        key: String,
        /// What is wrong, in an operator's words.
        message: String,
    },
}

/// The parts of a [`ConfigError::Invalid`], borrowed, for its one-line message:
/// `file:line: key: message`.
struct Located<'a> {
    /// The config file.
    file: &'a Path,
    /// One-based; left out of the text when unknown.
    line: Option<usize>,
    /// Dotted path of the key.
    key: &'a str,
    /// What is wrong.
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
    /// Dotted path of the key (`sensors[1].qos`), by which spans.rs finds its line.
    pub key: String,
    /// What is wrong, in an operator's words.
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
    /// Default `info`.
    #[serde(default = "default_level")]
    pub level: String,
    /// Outside journald: `text` (for people) or `json` (for log shippers).
    /// Default `text`; under journald neither applies (fields go to the journal).
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

/// `log.format`: how log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people: `message key=value…`, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line, fields flattened, for log shippers.
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

/// A config error found after loading (by a daemon's checks of what the
/// config names): `key`'s line is looked up in `file` again.
pub fn invalid(file: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    let line = std::fs::read_to_string(file)
        .ok()
        .and_then(|text| spans::Spans::of(&text).ok()?.line(key));
    ConfigError::Invalid {
        file: file.to_owned(),
        line,
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Parses and validates config text that came from `file` (named in errors).
pub fn from_text<T: DaemonConfig>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let spans = spans::Spans::of(text);
    let mut config = parse::<T>(file, text, spans.as_ref())?;
    config.validate().map_err(|e| ConfigError::Invalid {
        file: file.to_owned(),
        line: spans.as_ref().ok().and_then(|s| s.line(&e.key)),
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

fn parse<T: DeserializeOwned>(
    file: &Path,
    text: &str,
    spans: Result<&spans::Spans, &spans::SyntaxError>,
) -> Result<T, ConfigError> {
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = match e.path().to_string() {
            p if p.is_empty() || p == "." => "(top level)".to_owned(),
            p => p,
        };
        let inner = e.into_inner();
        let parser_line = inner.location().map(|l| l.line());
        // Text that is not YAML at all: the parser's own position is the place.
        // Otherwise the key's own line: the deserializer's position is often
        // that of the enclosing mapping, or missing.
        let syntax = yaml_serde::from_str::<yaml_serde::Value>(text).is_err();
        let line = match spans {
            Ok(spans) if !syntax => spans.line(&key).or(parser_line),
            Ok(_) => parser_line,
            Err(e) => parser_line.or(Some(e.line)),
        };
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            message: plain(&strip_noise(&inner.to_string(), &key), &key),
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

/// serde's type errors in words an operator uses: `invalid type: string
/// "eighty", expected u16` at `broker.port` becomes `expected a port number,
/// not "eighty"`. Other messages are kept as they are.
fn plain(message: &str, key: &str) -> String {
    let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|m| m.split_once(", expected "))
    else {
        return message.to_owned();
    };
    let last = key.rsplit(['.', '[']).next().unwrap_or(key);
    let expected = match expected {
        "u16" if last == "port" => "a port number",
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "a whole number"
        }
        "f32" | "f64" => "a number",
        "a sequence" => "a list",
        "a map" => "a mapping (key: value)",
        e if e.starts_with("struct ") => "a mapping (key: value)",
        e => e,
    };
    let found = match found.split_once(' ') {
        // `string "eighty"`: the value as written.
        Some(("string", value)) => value.to_owned(),
        Some(("integer" | "floating" | "boolean", value)) => value
            .trim_start_matches("point ")
            .trim_matches('`')
            .to_owned(),
        _ => match found {
            "sequence" => "a list".to_owned(),
            "map" => "a mapping".to_owned(),
            "unit value" => "nothing".to_owned(),
            other => other.to_owned(),
        },
    };
    format!("expected {expected}, not {found}")
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

/// A duration, or `forever` (`None`): how long something is kept.
pub mod keep {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "forever" {
            return Ok(None);
        }
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. 30d, 1y, or forever"
            ))
        })
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_str("forever"),
        }
    }
}

/// The keys whose values differ between two configs, two levels deep
/// (`broker.tls`, `sensors`), for "reloaded: changed …" log lines only: it
/// compares the serialized form, generically. Decisions (reconnect, what to
/// apply) compare typed values.
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
            match from_text::<crate::config::SensordConfig>(Path::new("f.yaml"), text) {
                Err(ConfigError::Invalid { key, .. }) => assert!(!key.is_empty(), "{text:?}"),
                Err(other) => panic!("{text:?}: {other}"),
                Ok(_) => panic!("{text:?} parsed"),
            }
        }
    }

    fn error(text: &str) -> (Option<usize>, String, String) {
        match from_text::<crate::config::SensordConfig>(Path::new("f.yaml"), text) {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted:\n{text}"),
        }
    }

    /// A sensord config with nested lists and flow mappings in its sensors
    /// list before the third item, which starts on line 17 (the old guess,
    /// counting `- ` lines, put its keys on line 14).
    fn sensord(third_sensor: &str) -> String {
        format!(
            "node:\n  id: room101\n  topic_prefix: building/floor1/room101\n\
             broker: {{ host: localhost, insecure_plaintext: true }}\n\
             # Three sensors.\n\
             sensors:\n\
             \x20 - id: t1\n\
             \x20   type: temperature\n\
             \x20   interval: 5s\n\
             \x20   faults:\n\
             \x20     - {{ kind: stuck, after: 1m, for: 1m }}\n\
             \x20     - kind: spike\n\
             \x20       value: 99.5\n\
             \x20 - {{ id: h1, type: humidity, interval: 5s }}\n\
             \x20 - type: co2\n\
             \x20   interval: 5s\n\
             {third_sensor}"
        )
    }

    #[test]
    fn a_duplicate_in_a_list_after_nested_lists_is_on_its_own_line() {
        let text = sensord("    id: t1\n");
        assert_eq!(text.lines().nth(16), Some("    id: t1"));
        let (line, key, message) = error(&text);
        assert_eq!(
            (line, key.as_str()),
            (Some(17), "sensors[2].id"),
            "{message}"
        );
    }

    #[test]
    fn a_syntax_error_is_where_the_parser_found_it() {
        // Line 18 opens a flow list that never closes; the parser notices on 18
        // or 19, never back at the start of the item.
        let text = sensord("    id: c1\n    qos: [1, 2\n    unit: x\n");
        let (line, _, message) = error(&text);
        assert!(matches!(line, Some(18..=19)), "line {line:?}: {message}");
    }

    #[test]
    fn flow_mappings_and_type_errors_read_plainly() {
        let text = "node: { id: room101, topic_prefix: building/floor1/room101 }\n\
                    broker: { host: localhost, port: eighty, insecure_plaintext: true }\n\
                    sensors: [{ id: t, type: temperature, interval: 1s }]\n";
        let (line, key, message) = error(text);
        assert_eq!((line, key.as_str()), (Some(2), "broker.port"));
        assert_eq!(message, r#"expected a port number, not "eighty""#);
    }

    #[test]
    fn a_missing_key_is_reported_where_its_mapping_is() {
        let text = "node:\n  id: room101\n  topic_prefix: building/floor1/room101\n\
                    broker: { host: localhost, port: 8883, insecure_plaintext: true }\n\
                    sensors:\n  - id: t\n    type: temperature\n    interval: 1s\n  - id: u\n    interval: 1s\n";
        let (line, key, message) = error(text);
        assert_eq!((line, key.as_str()), (Some(9), "sensors[1]"), "{message}");
        assert!(message.contains("type"), "{message}");
    }
}
