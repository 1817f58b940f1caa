//! aggregatord's config schema and its checks. It opens none of the files it names:
//! aggregatord's `preflight` checks the certificates and the dashboard token.

use super::{resolve, BrokerConfig, DaemonConfig, Invalid};
use crate::contract::{Ident, SensorType};
use crate::contract::{Qos, Severity};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `aggregatord`'s config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatordConfig {
    /// Fixed client id: the broker keeps our session (and queues readings) under it.
    pub client_id: Ident,
    /// `broker`: the broker; its `tls` certificate is the ingest connection's (and the
    /// alert connection's too, without `alert_identity`).
    pub broker: BrokerConfig,
    /// `subscriptions`: the topic filters ingest subscribes to; at least one.
    pub subscriptions: Vec<SubscriptionConfig>,
    /// `storage`: where the database lives; required.
    pub storage: StorageConfig,
    /// `ingest`: batching and caps; every key has a default.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// The certificate and key of the connection that publishes alerts: an
    /// identity of its own, because a broker that binds client ids to
    /// certificates (deploy/mosquitto: `use_username_as_clientid`) would
    /// otherwise let the two connections take each other's place.
    /// Default: none, the ingest certificate is shared (and warned about at start).
    #[serde(default)]
    pub alert_identity: Option<super::Identity>,
    /// `alerts`: the alert rules; none by default.
    #[serde(default)]
    pub alerts: Vec<RuleConfig>,
    /// `http`: the dashboard; on, at 127.0.0.1:8080, by default.
    #[serde(default)]
    pub http: HttpConfig,
    /// `log`: level and format; `info`, as text, by default.
    #[serde(default)]
    pub log: super::LogConfig,
}

/// The dashboard, metrics and health endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `enabled`, default true: serve the dashboard, its API, `/metrics` and health checks.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Loopback by default; any other address is an explicit choice (and logged).
    /// Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    /// Open HTTP connections at most; more are closed at once. Bounds memory
    /// and file descriptors whatever clients do.
    /// Default 256.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Browsers following `/events` at most; more get 503.
    /// Default 32.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// A connection that neither sends nor takes a byte for this long is closed:
    /// a client that never finishes its request, or a browser tab that stopped
    /// reading its event stream (which gets a keep-alive every 15 s).
    /// Default 30s; at least 1s.
    #[serde(default = "default_idle_timeout", with = "super::duration")]
    pub idle_timeout: std::time::Duration,
    /// A file holding the access token (16+ letters and digits, mode 0600):
    /// then every request but `/healthz` and `/favicon.ico` needs `Authorization: Bearer TOKEN`
    /// (or `?token=TOKEN`, which the page passes on to its own requests).
    /// Default: none, no token asked for (off loopback only with `insecure_public`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Serve a non-loopback address without a token: anyone who can reach it
    /// sees everything. Refused unless set, like `broker.insecure_plaintext`.
    /// Default false.
    #[serde(default)]
    pub insecure_public: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: default_listen(),
            max_connections: default_max_connections(),
            max_clients: default_max_clients(),
            idle_timeout: default_idle_timeout(),
            token_file: None,
            insecure_public: false,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_max_connections() -> usize {
    256
}
fn default_max_clients() -> usize {
    32
}
fn default_idle_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// An alert rule. Which of `above`/`below`, `stale_after`, `offline` or
/// `outside` is given decides its kind; exactly one must be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Also the last topic level: `{prefix}/alerts/{name}`.
    pub name: Ident,
    /// `severity`: `info`, `warning` (default) or `critical`; carried in the alert.
    #[serde(default)]
    pub severity: Severity,
    /// Only readings of this sensor type (required except for `offline`).
    #[serde(default, rename = "type")]
    pub sensor_type: Option<SensorType>,
    /// Only topics matching this MQTT filter (e.g. `building/floor2/#`).
    /// Default: every topic.
    #[serde(default)]
    pub filter: Option<String>,
    /// Threshold: raise above this…
    #[serde(default)]
    pub above: Option<f64>,
    /// …and clear only below this (hysteresis; default: `above`).
    #[serde(default)]
    pub clear_below: Option<f64>,
    /// Threshold the other way (not with `above`): raise below this…
    #[serde(default)]
    pub below: Option<f64>,
    /// …and clear only above this (hysteresis; default: `below`).
    #[serde(default)]
    pub clear_above: Option<f64>,
    /// The condition must hold this long before the alert is raised.
    /// Default: at once.
    #[serde(default, rename = "for", with = "super::duration::option")]
    pub lasting: Option<std::time::Duration>,
    /// Stale sensor: no reading for this long.
    #[serde(default, with = "super::duration::option")]
    pub stale_after: Option<std::time::Duration>,
    /// Node offline: its status went offline because the connection was lost.
    #[serde(default)]
    pub offline: bool,
    /// Motion outside these hours (local time).
    #[serde(default)]
    pub outside: Option<super::Schedule>,
}

/// Group commit: one fsync covers a batch of readings, acknowledged together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// At most this many messages per batch.
    /// Default 500; 1 to 1000 (the broker's in-flight window).
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// After the first message of a batch, wait at most this long for more.
    /// Default 5ms; at most 1s (acknowledgements wait for it).
    #[serde(default = "default_batch_window", with = "super::duration")]
    pub batch_window: std::time::Duration,
    /// A batch still holding fewer than `batch_fill` messages when `batch_window`
    /// ends waits on for more, up to this long after its first. Each fsync
    /// writes at least a 4 KiB page however little it carries, so at a few
    /// hundred readings a second a 5 ms batch of two or three readings costs
    /// ~2 KB of flash wear per reading (BENCHMARKS, issue 15). Unset: no
    /// lingering. At most 1s (acknowledgements wait for it). The broker must let
    /// at least `batch_fill` messages be in flight to us
    /// (`max_inflight_messages`; Mosquitto's default is 20), or every batch
    /// waits the whole linger.
    #[serde(default, with = "super::duration::option")]
    pub batch_linger: Option<std::time::Duration>,
    /// See `batch_linger`. Unset: `batch_max`, so that every batch but a
    /// backlog's waits the linger (at 1,000 readings/s that wrote 36 bytes a
    /// reading against 51 at 128, BENCHMARKS.md). Use
    /// [`IngestConfig::batch_fill`] for the value in force.
    #[serde(default)]
    pub batch_fill: Option<usize>,
    /// Sensors (reading topics) aggregatord keeps track of, in all; past it a new
    /// one is refused (`too_many_sensors`). Every known sensor costs memory in
    /// alert state and on the dashboard, so one node inventing ids must not
    /// grow them without bound.
    /// Default 100000.
    #[serde(default = "default_max_sensors")]
    pub max_sensors: usize,
    /// Sensors in one room (one node's prefix).
    /// Default 256; past it `too_many_sensors`.
    #[serde(default = "default_max_sensors_per_room")]
    pub max_sensors_per_room: usize,
    /// Rooms (topic prefixes with readings or a status); past it `too_many_rooms`.
    /// Default 10000.
    #[serde(default = "default_max_rooms")]
    pub max_rooms: usize,
    /// Readings dated further back than this are refused (`too_old`). Unset:
    /// `storage.retention`, if set (retention would delete them at once).
    #[serde(default, with = "super::duration::option")]
    pub max_age: Option<std::time::Duration>,
    /// A sensor silent this long is forgotten, as by `aggregatord forget`: its
    /// alerts are cleared (a one-off sensor's `sensor_stale` would otherwise
    /// stay forever) and its dashboard row goes. Off by default: a dead sensor
    /// should stay visible until someone decides.
    #[serde(default, with = "super::duration::option")]
    pub forget_after: Option<std::time::Duration>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_max: default_batch_max(),
            batch_window: default_batch_window(),
            batch_linger: None,
            batch_fill: None,
            max_sensors: default_max_sensors(),
            max_sensors_per_room: default_max_sensors_per_room(),
            max_rooms: default_max_rooms(),
            max_age: None,
            forget_after: None,
        }
    }
}

fn default_batch_max() -> usize {
    500
}
fn default_batch_window() -> std::time::Duration {
    std::time::Duration::from_millis(5)
}
impl IngestConfig {
    /// The `batch_fill` in force: as set, else `batch_max`.
    #[must_use]
    pub fn batch_fill(&self) -> usize {
        self.batch_fill.unwrap_or(self.batch_max)
    }
}

fn default_max_sensors() -> usize {
    100_000
}
fn default_max_sensors_per_room() -> usize {
    256
}
fn default_max_rooms() -> usize {
    10_000
}

/// One entry of `subscriptions:`: a topic filter and its QoS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// `filter`: an MQTT topic filter (`building/#`); wildcards only as whole
    /// levels. A shared subscription, `$share/<group>/<filter>`, spreads the
    /// matching messages over the group's members (SCALING.md).
    pub filter: String,
    /// `qos`: the most the broker may deliver at: 0 or 1 (2 is refused, see `validate`).
    pub qos: Qos,
    /// `by_topic`: for a `$share/` filter only: the broker gives all of a
    /// topic's messages to the same member (EMQX's `hash_topic` strategy),
    /// so alert rules, which need all of a sensor's readings, still work.
    /// Default false: per message (Mosquitto), refused with alert rules.
    #[serde(default)]
    pub by_topic: bool,
}

impl SubscriptionConfig {
    /// The group and the filter of a `$share/<group>/<filter>` subscription.
    #[must_use]
    pub fn shared(&self) -> Option<(&str, &str)> {
        self.filter.strip_prefix("$share/")?.split_once('/')
    }
}

/// `storage:`: where the store is, how long each form of history is kept, its disk budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Folder of the sled database.
    /// Required; a relative path is taken from the config file's folder.
    pub path: PathBuf,
    /// Control socket for `aggregatord dump` while running; default `<path>.sock`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Readings older than this are deleted (in small steps, in the background).
    /// Default: none, keep everything; at most 100 years.
    #[serde(default, with = "super::duration::option")]
    pub retention: Option<std::time::Duration>,
    /// A disk budget for the store's folder (`10GiB`, `500MB`, or bytes):
    /// past it the oldest raw readings are deleted, a slice at a time,
    /// until under it; rollups never are (README). Default: none; at least 1 MiB.
    #[serde(default)]
    pub max_size: Option<bytesize::ByteSize>,
    /// How long each rollup tier is kept, past the raw readings.
    #[serde(default)]
    pub rollups: RollupsConfig,
}

/// `storage.rollups`: per sensor, a row per minute and per hour (count,
/// min, max, mean, first, last), made as readings are stored and kept long
/// after `retention` deleted the readings themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupsConfig {
    /// Rows per minute: a duration, or `forever`. Default 365d.
    #[serde(default = "a_year", with = "super::keep")]
    pub minutes: Option<std::time::Duration>,
    /// Rows per hour. Default forever.
    #[serde(default, with = "super::keep")]
    pub hours: Option<std::time::Duration>,
}

#[allow(clippy::unnecessary_wraps)] // serde's default for an Option field
fn a_year() -> Option<std::time::Duration> {
    Some(std::time::Duration::from_secs(365 * 86_400))
}

impl Default for RollupsConfig {
    fn default() -> Self {
        RollupsConfig {
            minutes: a_year(),
            hours: None,
        }
    }
}

impl StorageConfig {
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| {
            let mut p = self.path.clone().into_os_string();
            p.push(".sock");
            p.into()
        })
    }
}

impl DaemonConfig for AggregatordConfig {
    fn log(&self) -> &super::LogConfig {
        &self.log
    }

    fn validate(&self) -> Result<(), Invalid> {
        self.broker.validate("broker")?;
        if self.alert_identity.is_some() && self.broker.tls.is_none() {
            return Err(Invalid::new(
                "alert_identity",
                "a certificate needs TLS: set broker.tls, or remove alert_identity",
            ));
        }
        if self.alert_identity.is_none() && self.broker.tls.is_some() {
            // Once only a warning: the two connections then took each other's
            // place every second, and nothing was stored (issue 25).
            return Err(Invalid::new(
                "alert_identity",
                "required with broker.tls: alerts go out on a second connection, which needs a certificate of its own (e.g. aggregatord-alerts, allowed to write building/+/+/alerts/#); with one certificate for both, a broker that knows clients by their certificate (deploy/mosquitto) makes the two connections take each other's place, and nothing is stored",
            ));
        }
        if self.subscriptions.is_empty() {
            return Err(Invalid::new(
                "subscriptions",
                "list at least one topic filter",
            ));
        }
        // Unacknowledged messages wait for their batch; the broker sends at most
        // max_inflight_messages (1000 in deploy/mosquitto) before it waits for acks.
        if !(1..=1000).contains(&self.ingest.batch_max) {
            return Err(Invalid::new(
                "ingest.batch_max",
                "must be 1 to 1000 (the broker's in-flight window)",
            ));
        }
        for (key, n) in [
            ("http.max_connections", self.http.max_connections),
            ("http.max_clients", self.http.max_clients),
            ("ingest.max_sensors", self.ingest.max_sensors),
            (
                "ingest.max_sensors_per_room",
                self.ingest.max_sensors_per_room,
            ),
            ("ingest.max_rooms", self.ingest.max_rooms),
        ] {
            if n == 0 {
                return Err(Invalid::new(key, "must be at least 1"));
            }
        }
        if self.http.enabled
            && !self.http.listen.ip().is_loopback()
            && self.http.token_file.is_none()
            && !self.http.insecure_public
        {
            return Err(Invalid::new(
                "http.listen",
                format!(
                    "{} is reachable from other machines: set http.token_file (clients send \
                     Authorization: Bearer), or http.insecure_public: true to show everything to anyone",
                    self.http.listen
                ),
            ));
        }
        if self.http.idle_timeout < std::time::Duration::from_secs(1) {
            return Err(Invalid::new(
                "http.idle_timeout",
                "at least 1s: slower clients are cut off",
            ));
        }
        if self.ingest.batch_window > std::time::Duration::from_secs(1) {
            return Err(Invalid::new(
                "ingest.batch_window",
                "at most 1s: acknowledgements wait for it",
            ));
        }
        if self
            .ingest
            .batch_linger
            .is_some_and(|l| l > std::time::Duration::from_secs(1))
        {
            return Err(Invalid::new(
                "ingest.batch_linger",
                "at most 1s: acknowledgements wait for it",
            ));
        }
        if self
            .ingest
            .batch_fill
            .is_some_and(|f| f > self.ingest.batch_max)
        {
            return Err(Invalid::new(
                "ingest.batch_fill",
                format!(
                    "at most batch_max ({}): a batch never holds more",
                    self.ingest.batch_max
                ),
            ));
        }
        if self
            .storage
            .retention
            .is_some_and(|r| r > std::time::Duration::from_secs(100 * 365 * 86_400))
        {
            return Err(Invalid::new(
                "storage.retention",
                "at most 100 years (leave it out to keep everything)",
            ));
        }
        let rollups = &self.storage.rollups;
        for (key, keep) in [
            ("storage.rollups.minutes", rollups.minutes),
            ("storage.rollups.hours", rollups.hours),
        ] {
            if keep.is_some_and(|r| r > std::time::Duration::from_secs(100 * 365 * 86_400)) {
                return Err(Invalid::new(key, "at most 100 years, or forever"));
            }
        }
        if let (Some(minutes), Some(hours)) = (rollups.minutes, rollups.hours) {
            if hours < minutes {
                return Err(Invalid::new(
                    "storage.rollups.hours",
                    format!(
                        "shorter than storage.rollups.minutes ({}): hourly rows are the ones kept longest",
                        humantime::format_duration(minutes)
                    ),
                ));
            }
        }
        if self
            .storage
            .max_size
            .is_some_and(|m| m.as_u64() < bytesize::ByteSize::mib(1).as_u64())
        {
            return Err(Invalid::new(
                "storage.max_size",
                "at least 1MiB (leave it out for no budget)",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.alerts.iter().enumerate() {
            let at = |key: &str| format!("alerts[{i}].{key}");
            if !names.insert(&r.name) {
                return Err(Invalid::new(
                    at("name"),
                    format!("{} is used by an earlier rule", r.name),
                ));
            }
            let kinds = [
                r.above.is_some() || r.below.is_some(),
                r.stale_after.is_some(),
                r.offline,
                r.outside.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(Invalid::new(
                    at("name"),
                    "give exactly one of: above/below (threshold), stale_after, offline, outside",
                ));
            }
            if r.above.is_some() && r.below.is_some() {
                return Err(Invalid::new(
                    at("below"),
                    "use one rule for above and another for below",
                ));
            }
            if let (Some(a), Some(c)) = (r.above, r.clear_below) {
                if c > a {
                    return Err(Invalid::new(at("clear_below"), "must not be above `above`"));
                }
            }
            if let (Some(b), Some(c)) = (r.below, r.clear_above) {
                if c < b {
                    return Err(Invalid::new(at("clear_above"), "must not be below `below`"));
                }
            }
            if !r.offline && r.sensor_type.is_none() {
                return Err(Invalid::new(
                    at("type"),
                    "say which sensor type the rule watches",
                ));
            }
            if r.outside.is_some() && r.sensor_type != Some(SensorType::Motion) {
                return Err(Invalid::new(
                    at("type"),
                    "`outside` rules watch motion sensors",
                ));
            }
            if let Some(f) = &r.filter {
                if let Err(why) = check_filter(f) {
                    return Err(Invalid::new(at("filter"), why));
                }
            }
        }
        for (i, s) in self.subscriptions.iter().enumerate() {
            let key = format!("subscriptions[{i}].filter");
            // A shared subscription's own filter follows its group.
            let filter = if let Some((group, filter)) = s.shared() {
                if group.is_empty() || group.contains(['+', '#']) {
                    return Err(Invalid::new(
                        key,
                        format!("{group:?}: a share group is a name, without '+' or '#'"),
                    ));
                }
                // Per message, each member sees part of every sensor: a
                // hysteresis, a `for` or a stale check would judge fragments.
                if !s.by_topic && !self.alerts.is_empty() {
                    return Err(Invalid::new(
                        key,
                        "a shared subscription spreads each sensor's readings over the group \
                         message by message, and alert rules need all of them; split the load \
                         by topic filter instead (SCALING.md), or set by_topic: true if the \
                         broker gives each topic to one member (EMQX's hash_topic)",
                    ));
                }
                filter
            } else if s.filter.starts_with("$share") {
                return Err(Invalid::new(key, "write $share/<group>/<filter>"));
            } else if s.by_topic {
                return Err(Invalid::new(
                    format!("subscriptions[{i}].by_topic"),
                    "only for a $share/<group>/<filter> subscription",
                ));
            } else {
                &s.filter
            };
            if let Err(why) = check_filter(filter) {
                return Err(Invalid::new(key, why));
            }
            // Measured (tests/system/durability.rs and README): after a broker
            // restart Mosquitto resends PUBREL for QoS 2 deliveries in flight, which
            // rumqttc 0.25 calls unsolicited and disconnects on, for ever
            // (bytebeamio/rumqtt#664). Storage is idempotent, so QoS 1 already
            // gives exactly-once storage.
            if s.qos == Qos::ExactlyOnce {
                return Err(Invalid::new(
                    format!("subscriptions[{i}].qos"),
                    "use 1: QoS 2 deliveries wedge rumqttc 0.25 after a broker restart (rumqtt#664), \
                     and storage already drops duplicates, so QoS 1 stores each reading exactly once",
                ));
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.broker.resolve_paths(base);
        if let Some(id) = &mut self.alert_identity {
            id.resolve_paths(base);
        }
        resolve(base, &mut self.storage.path);
        if let Some(token) = &mut self.http.token_file {
            super::broker::expand_credentials(token);
            resolve(base, token);
        }
        if let Some(socket) = &mut self.storage.socket {
            resolve(base, socket);
        }
    }
}

/// MQTT 3.1.1 §4.7, as the MQTT client checks it.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("must not be empty".into());
    }
    if !crate::mqtt::valid_filter(filter) {
        return Err(format!(
            "{filter:?}: '#' may only be the whole last level, '+' only a whole level"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters() {
        for ok in ["building/#", "building/+/+/status", "#", "a/b"] {
            assert!(super::check_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "a/+x/c"] {
            assert!(super::check_filter(bad).is_err(), "{bad}");
        }
    }

    /// `$share/` (issue 17): allowed without alert rules, or with `by_topic`;
    /// refused where a sensor's readings would be split under alert rules.
    #[test]
    fn shared_subscriptions_are_refused_where_they_would_split_a_sensor() {
        let parse = |subscription: &str, alerts: &str| {
            crate::config::from_text::<super::AggregatordConfig>(
                std::path::Path::new("f.yaml"),
                &format!(
                    "client_id: agg\n\
                     subscriptions: [{subscription}]\n\
                     broker: {{ host: localhost, insecure_plaintext: true }}\n\
                     storage: {{ path: /tmp/x }}\n{alerts}"
                ),
            )
        };
        let rule = "alerts: [{ name: hot, type: temperature, above: 30, severity: warning }]\n";
        let shared = "{ filter: $share/agg/building/#, qos: 1 }";
        assert!(parse(shared, "").is_ok());
        let by_topic = "{ filter: $share/agg/building/#, qos: 1, by_topic: true }";
        assert!(parse(by_topic, rule).is_ok());
        for (subscription, alerts, want) in [
            (shared, rule, "subscriptions[0].filter"),
            (
                "{ filter: $share/a+/b/#, qos: 1 }",
                "",
                "subscriptions[0].filter",
            ),
            (
                "{ filter: $share/agg/b/#/c, qos: 1 }",
                "",
                "subscriptions[0].filter",
            ),
            (
                "{ filter: $shared/b, qos: 1 }",
                "",
                "subscriptions[0].filter",
            ),
            (
                "{ filter: b/#, qos: 1, by_topic: true }",
                "",
                "subscriptions[0].by_topic",
            ),
        ] {
            match parse(subscription, alerts) {
                Err(crate::config::ConfigError::Invalid { key, line, .. }) => {
                    assert_eq!((key.as_str(), line), (want, Some(2)), "{subscription}");
                }
                other => panic!("{subscription}: {:?}", other.map(|_| ())),
            }
        }
    }

    /// A minimal config (storage on line 4) with `storage` added to the
    /// storage section and `more` after it.
    fn minimal(
        storage: &str,
        more: &str,
    ) -> Result<super::AggregatordConfig, crate::config::ConfigError> {
        crate::config::from_text::<super::AggregatordConfig>(
            std::path::Path::new("f.yaml"),
            &format!(
                "client_id: agg\n\
                 subscriptions: [{{ filter: building/#, qos: 1 }}]\n\
                 broker: {{ host: localhost, insecure_plaintext: true }}\n\
                 storage: {{ path: /tmp/x{storage} }}\n{more}"
            ),
        )
    }

    /// `storage.max_size` takes units or bytes; below 1 MiB it is refused
    /// by name and line.
    #[test]
    fn max_size_reads_units_and_has_a_floor() {
        let parse = |size: &str| minimal(&format!(", max_size: {size}"), "");
        let bytes = |size: &str| {
            parse(size)
                .expect("valid")
                .storage
                .max_size
                .map(|m| m.as_u64())
        };
        assert_eq!(bytes("10GiB"), Some(10 << 30));
        assert_eq!(bytes("\"500 MB\""), Some(500_000_000));
        assert_eq!(bytes("2097152"), Some(2 << 20));
        for small in ["100KB", "1000"] {
            match parse(small) {
                Err(crate::config::ConfigError::Invalid { key, line, .. }) => {
                    assert_eq!(
                        (key.as_str(), line),
                        ("storage.max_size", Some(4)),
                        "{small}"
                    );
                }
                other => panic!("{small}: {:?}", other.map(|_| ())),
            }
        }
    }

    /// `storage.rollups`: a year of minutes and hours for ever by default;
    /// `forever` or a duration each; hours kept shorter than minutes is
    /// refused by name and line.
    #[test]
    fn rollup_tiers_keep_a_year_and_forever_unless_told() {
        let parse = |rollups: &str| minimal(&format!(", rollups: {rollups}"), "");
        let keep = |text: &str| {
            let r = parse(text).expect("valid").storage.rollups;
            (
                r.minutes.map(|d| d.as_secs() / 86_400),
                r.hours.map(|d| d.as_secs() / 86_400),
            )
        };
        assert_eq!(keep("{}"), (Some(365), None));
        assert_eq!(keep("{ minutes: forever }"), (None, None));
        assert_eq!(keep("{ minutes: 90d, hours: 10y }"), (Some(90), Some(3652)));
        match parse("{ minutes: 30d, hours: 7d }") {
            Err(crate::config::ConfigError::Invalid { key, line, .. }) => {
                assert_eq!((key.as_str(), line), ("storage.rollups.hours", Some(4)));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(parse("{ minutes: sometimes }").is_err());
    }

    /// A config lowering `batch_max` alone stays valid (CI caught 128 > 50);
    /// an explicit `batch_fill` above it is refused by name.
    #[test]
    fn batch_fill_follows_a_lower_batch_max_unless_set() {
        let parse = |ingest: &str| minimal("", &format!("ingest: {ingest}\n"));
        let config = parse("{ batch_max: 50 }").expect("valid");
        assert_eq!(config.ingest.batch_fill(), 50);
        let config = parse("{ batch_max: 500 }").expect("valid");
        assert_eq!(config.ingest.batch_fill(), 500);
        let config = parse("{ batch_max: 500, batch_fill: 128 }").expect("valid");
        assert_eq!(config.ingest.batch_fill(), 128);
        match parse("{ batch_max: 50, batch_fill: 60 }") {
            Err(crate::config::ConfigError::Invalid { key, line, .. }) => {
                assert_eq!((key.as_str(), line), ("ingest.batch_fill", Some(5)));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
