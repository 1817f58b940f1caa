//! The `broker:` block both daemons share, and where credentials come from. It only
//! describes the connection: `mqtt` reads the certificates and connects.

use super::{duration, resolve, Invalid};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the broker is and how to talk to it. Shared by both daemons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `host`: the broker's name or address; with TLS its certificate must name
    /// it. Required, unless `hosts` is given instead.
    #[serde(default)]
    pub host: Option<String>,
    /// `port`, default 8883 (MQTT over TLS); also the port of any `hosts`
    /// entry that names none.
    #[serde(default = "default_port")]
    pub port: u16,
    /// `hosts`: several brokers, tried in turn (`[{ host, port }, …]`, the
    /// members of a broker cluster): after each failed or lost connection the
    /// next one, with the usual backoff between attempts. Instead of `host`.
    /// Each broker's certificate must name its own host.
    #[serde(default)]
    pub hosts: Vec<HostPort>,
    /// `keep_alive`, default 30s: the MQTT keep-alive, 1s to 18h (whole seconds on the wire).
    #[serde(default = "default_keep_alive", with = "duration")]
    pub keep_alive: Duration,
    /// Required, unless `insecure_plaintext` is set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Plain MQTT, no TLS: for a broker on this machine only (a local test or a
    /// broker that terminates TLS elsewhere). Refused for any other host, and
    /// warned about at every start.
    /// Default false.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// `reconnect`: the backoff between attempts; default 1s, doubling up to 60s.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
}

/// One of `broker.hosts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPort {
    /// The broker's name or address.
    pub host: String,
    /// Default: `broker.port`.
    #[serde(default)]
    pub port: Option<u16>,
}

/// Mutual TLS: our CA (to check the broker) and this client's certificate and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `ca_file`: PEM CA certificate(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// `cert_file`: this client's PEM certificate; its CN must be the client id (the
    /// broker's ACL).
    pub cert_file: PathBuf,
    /// `key_file`: its private key, readable by its owner only; may be
    /// `${CREDENTIALS_DIRECTORY}/…` (see [`CREDENTIALS_VAR`]).
    pub key_file: PathBuf,
}

/// A client certificate and its key (a second identity, with the same CA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// `cert_file`: this identity's PEM certificate; its CN must be the client id of the
    /// connection that uses it.
    pub cert_file: PathBuf,
    /// `key_file`: its private key, readable by its owner only; may be
    /// `${CREDENTIALS_DIRECTORY}/…`.
    pub key_file: PathBuf,
}

impl BrokerConfig {
    /// What `mqtt` connects with.
    pub fn to_mqtt(&self) -> crate::mqtt::Broker {
        crate::mqtt::Broker {
            endpoints: self.endpoints(),
            keep_alive: self.keep_alive,
            tls: self.tls.as_ref().map(TlsConfig::to_mqtt),
            initial_delay: self.reconnect.initial_delay,
            max_delay: self.reconnect.max_delay,
        }
    }
}

impl TlsConfig {
    /// The files, as `mqtt` takes them.
    pub fn to_mqtt(&self) -> crate::mqtt::TlsFiles {
        crate::mqtt::TlsFiles {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

impl Identity {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.cert_file, &mut self.key_file] {
            expand_credentials(path);
            resolve_unless_credential(base, path);
        }
    }
}

/// Exponential backoff between connection attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectConfig {
    /// `initial_delay`, default 1s: the first wait (a random half to all of it); each
    /// failure doubles it, and a connection that lasted starts over. Above zero.
    #[serde(with = "duration", default = "default_initial_delay")]
    pub initial_delay: Duration,
    /// `max_delay`, default 60s: where the doubling stops; not below `initial_delay`.
    #[serde(with = "duration", default = "default_max_delay")]
    pub max_delay: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial_delay: default_initial_delay(),
            max_delay: default_max_delay(),
        }
    }
}

fn default_port() -> u16 {
    8883
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_initial_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(60)
}

impl BrokerConfig {
    /// The brokers to try, in order: `host`, or every entry of `hosts`.
    pub fn endpoints(&self) -> Vec<crate::mqtt::Endpoint> {
        let one = self.host.iter().map(|host| (host, None));
        let many = self.hosts.iter().map(|h| (&h.host, h.port));
        one.chain(many)
            .map(|(host, port)| crate::mqtt::Endpoint {
                host: host.clone(),
                port: port.unwrap_or(self.port),
            })
            .collect()
    }

    /// `key` is where this block sits in its file, for error messages.
    pub(crate) fn validate(&self, key: &str) -> Result<(), Invalid> {
        match (&self.host, self.hosts.is_empty()) {
            (None, true) => {
                return Err(Invalid::new(
                    format!("{key}.host"),
                    "required: the broker's name or address (or hosts: a list of brokers)",
                ))
            }
            (Some(_), false) => {
                return Err(Invalid::new(
                    format!("{key}.hosts"),
                    "remove it, or remove host: not both",
                ))
            }
            (Some(host), true) if host.trim().is_empty() => {
                return Err(Invalid::new(format!("{key}.host"), "must not be empty"));
            }
            _ => {}
        }
        if self.port == 0 {
            return Err(Invalid::new(format!("{key}.port"), "must be 1 to 65535"));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let at = format!("{key}.hosts[{i}]");
            if h.host.trim().is_empty() {
                return Err(Invalid::new(format!("{at}.host"), "must not be empty"));
            }
            if h.port == Some(0) {
                return Err(Invalid::new(format!("{at}.port"), "must be 1 to 65535"));
            }
        }
        let endpoints = self.endpoints();
        for (i, e) in endpoints.iter().enumerate() {
            if endpoints[..i].contains(e) {
                return Err(Invalid::new(
                    format!("{key}.hosts[{i}]"),
                    format!("{e} is listed twice"),
                ));
            }
        }
        // MQTT carries keep-alive as whole seconds in 16 bits.
        let ka = self.keep_alive;
        if ka < Duration::from_secs(1) || ka > Duration::from_secs(u64::from(u16::MAX)) {
            return Err(Invalid::new(
                format!("{key}.keep_alive"),
                "must be between 1s and 18h (65535s)",
            ));
        }
        match (&self.tls, self.insecure_plaintext) {
            (None, false) => {
                return Err(Invalid::new(
                    format!("{key}.tls"),
                    "required: ca_file, cert_file and key_file (or insecure_plaintext: true, loopback only)",
                ))
            }
            (Some(_), true) => {
                return Err(Invalid::new(format!("{key}.insecure_plaintext"), "remove it, or remove tls: not both"));
            }
            (None, true) => {
                if let Some(e) = endpoints.iter().find(|e| !is_loopback(&e.host)) {
                    return Err(Invalid::new(
                        format!("{key}.insecure_plaintext"),
                        format!("only for a broker on this machine (localhost, 127.0.0.1, ::1), not {:?}", e.host),
                    ));
                }
            }
            _ => {}
        }
        let r = &self.reconnect;
        if r.initial_delay.is_zero() {
            return Err(Invalid::new(
                format!("{key}.reconnect.initial_delay"),
                "must be above zero, or a dead broker is hammered",
            ));
        }
        if r.max_delay < r.initial_delay {
            return Err(Invalid::new(
                format!("{key}.reconnect.max_delay"),
                "must not be shorter than initial_delay",
            ));
        }
        Ok(())
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(tls) = &mut self.tls {
            for path in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file] {
                expand_credentials(path);
                resolve_unless_credential(base, path);
            }
        }
    }
}

/// Under systemd, a key can come from `LoadCredential=`: the unit copies it
/// (readable by root only on disk) into a private folder for this service
/// alone, and names that folder in `$CREDENTIALS_DIRECTORY`. A path written
/// `${CREDENTIALS_DIRECTORY}/room101.key` points there. Without the variable
/// the path is left as written, and reading it fails with a hint (mqtt/tls.rs):
/// `dump` and `--check-config` run outside the unit never need the key.
pub use crate::mqtt::CREDENTIALS_VAR;

pub(crate) fn expand_credentials(path: &mut PathBuf) {
    let Some(rest) = path.to_str().and_then(|p| p.strip_prefix(CREDENTIALS_VAR)) else {
        return;
    };
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        *path = Path::new(&dir).join(rest.trim_start_matches('/'));
    }
}

/// A `${CREDENTIALS_DIRECTORY}` path left unexpanded (outside the unit) stays
/// as written, not joined to the config's folder: errors and `--check-config`
/// then recognise it and say where the key comes from.
fn resolve_unless_credential(base: &Path, path: &mut PathBuf) {
    if !path.starts_with(CREDENTIALS_VAR) {
        resolve(base, path);
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use crate::config::{from_text, ConfigError, SensordConfig};
    use std::path::Path;

    fn parse(broker: &str) -> Result<SensordConfig, ConfigError> {
        from_text(
            Path::new("f.yaml"),
            &format!(
                "node: {{ id: n, topic_prefix: b/f/n }}\n\
                 broker:\n{broker}\
                 sensors: [{{ id: t, type: temperature, interval: 1s }}]\n"
            ),
        )
    }

    fn refused(broker: &str) -> (String, Option<usize>, String) {
        match parse(broker) {
            Err(ConfigError::Invalid {
                key, line, message, ..
            }) => (key, line, message),
            other => panic!("{broker}: {:?}", other.map(|_| ())),
        }
    }

    const TLS: &str = "  tls: { ca_file: a, cert_file: b, key_file: c }\n";

    #[test]
    fn hosts_list_the_brokers_in_order_with_the_shared_port_as_default() {
        let config = parse(&format!(
            "  port: 8884\n  hosts:\n    - {{ host: mq1 }}\n    - {{ host: mq2, port: 9000 }}\n{TLS}"
        ))
        .expect("valid");
        let endpoints: Vec<String> = config
            .broker
            .endpoints()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(endpoints, ["mq1:8884", "mq2:9000"]);
        let one = parse(&format!("  host: mq1\n{TLS}")).expect("valid");
        assert_eq!(one.broker.endpoints()[0].to_string(), "mq1:8883");
    }

    #[test]
    fn hosts_are_refused_by_name_and_line() {
        let (key, line, _) = refused(&format!("  port: 8883\n{TLS}"));
        assert_eq!((key.as_str(), line), ("broker.host", Some(2)));
        let (key, line, _) = refused(&format!("  host: a\n  hosts: [{{ host: b }}]\n{TLS}"));
        assert_eq!((key.as_str(), line), ("broker.hosts", Some(4)));
        let (key, line, message) = refused(&format!(
            "  hosts:\n    - {{ host: a }}\n    - {{ host: a, port: 8883 }}\n{TLS}"
        ));
        assert_eq!(
            (key.as_str(), line),
            ("broker.hosts[1]", Some(5)),
            "{message}"
        );
        let (key, line, _) = refused(&format!("  hosts:\n    - {{ host: a, port: 0 }}\n{TLS}"));
        assert_eq!((key.as_str(), line), ("broker.hosts[0].port", Some(4)));
        let (key, _, message) =
            refused("  hosts: [{ host: localhost }, { host: mq2 }]\n  insecure_plaintext: true\n");
        assert_eq!(key, "broker.insecure_plaintext");
        assert!(message.contains("mq2"), "{message}");
    }
}
