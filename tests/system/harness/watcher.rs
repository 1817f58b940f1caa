//! An MQTT client for watching (and publishing to) the wire.

use super::*;
use rumqttc::tokio_rustls::rustls;
use std::sync::Arc;
use std::time::Duration;

/// A valid reading payload for temperature sensor `temp_001`, numbered `seq`,
/// with a distinct timestamp per seq.
pub fn reading_payload(seq: u64) -> Vec<u8> {
    let ts = chrono::DateTime::from_timestamp_millis(1_780_000_000_000 + seq as i64).unwrap();
    format!(
        r#"{{"sensor_id":"temp_001","sensor_type":"temperature","value":{},"unit":"celsius","timestamp":"{}","seq":{seq}}}"#,
        20.0 + (seq % 100) as f64 / 10.0,
        ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
    .into_bytes()
}

/// Recorded in place of a message when a SUBACK arrives, so `subscribe` can wait.
const SUBACK: &str = "<suback>";

/// Recorded when the broker confirms one of our QoS 1/2 publishes.
const CONFIRMED: &str = "<confirmed>";

/// Recorded when the broker's CONNACK says it had a session for us.
pub const SESSION_PRESENT: &str = "<session present>";

/// A message as a test client received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("payload is JSON")
    }
}

/// An MQTT client (rumqttc, mutual TLS) that records everything it receives.
pub struct Watcher {
    pub client: rumqttc::Client,
    seen: Shared<Vec<Seen>>,
    /// The outcome of the first connection attempt, once known.
    connected: Shared<Option<Result<(), String>>>,
}

pub fn tls(pki: &Pki, name: &str) -> rustls::ClientConfig {
    roomsense::mqtt::tls_client_config(&roomsense::mqtt::TlsFiles {
        ca_file: pki.path("ca.crt"),
        cert_file: pki.path(&format!("{name}.crt")),
        key_file: pki.path(&format!("{name}.key")),
    })
    .expect("client TLS config")
}

impl Watcher {
    /// Connects as certificate `name`; panics if the broker does not accept it.
    pub fn connect(broker: &Broker, pki: &Pki, name: &str) -> Watcher {
        let w = Watcher::try_connect(
            broker,
            tls(pki, name),
            &format!("watcher-{}", fastrand::u32(..)),
        );
        if let Err(e) = w.wait_connected() {
            panic!("watcher could not connect: {e}");
        }
        w
    }

    /// Starts connecting with any TLS config; see [`Watcher::wait_connected`].
    pub fn try_connect(broker: &Broker, tls: rustls::ClientConfig, client_id: &str) -> Watcher {
        Watcher::try_connect_session(broker, tls, client_id, true)
    }

    /// As [`Watcher::try_connect`], asking for a persistent session when
    /// `clean_session` is false; records the CONNACK's session-present flag.
    pub fn try_connect_session(
        broker: &Broker,
        tls: rustls::ClientConfig,
        client_id: &str,
        clean_session: bool,
    ) -> Watcher {
        let mut options = rumqttc::MqttOptions::new(client_id, "localhost", broker.port);
        options
            .set_clean_session(clean_session)
            // Up to the broker's own limit (max_packet_size 65536), not
            // rumqttc's default 10 KiB: tests send oversized payloads on purpose.
            .set_max_packet_size(65_536, 65_536)
            .set_keep_alive(Duration::from_secs(5))
            .set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
            ));
        let (client, mut connection) = rumqttc::Client::new(options, 100);
        let seen = Shared::new(Vec::new());
        let connected = Shared::new(None);
        let (seen2, connected2) = (seen.clone(), connected.clone());
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                        if ack.session_present {
                            let marker = Seen {
                                topic: SESSION_PRESENT.into(),
                                payload: vec![],
                                qos: 0,
                                retain: false,
                            };
                            seen2.update(|s| s.push(marker));
                        }
                        connected2.update(|c| *c = Some(Ok(())));
                    }
                    Ok(rumqttc::Event::Incoming(
                        rumqttc::Packet::PubAck(_) | rumqttc::Packet::PubComp(_),
                    )) => {
                        let marker = Seen {
                            topic: CONFIRMED.into(),
                            payload: vec![],
                            qos: 0,
                            retain: false,
                        };
                        seen2.update(|s| s.push(marker));
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let marker = Seen {
                            topic: SUBACK.into(),
                            payload: vec![],
                            qos: 0,
                            retain: false,
                        };
                        seen2.update(|s| s.push(marker));
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let seen = Seen {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            qos: p.qos as u8,
                            retain: p.retain,
                        };
                        seen2.update(|s| s.push(seen));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        connected2.update(|c| {
                            c.get_or_insert(Err(e.to_string()));
                        });
                        // A test watcher does not reconnect: it reports and stops.
                        break;
                    }
                }
            }
        });
        Watcher {
            client,
            seen,
            connected,
        }
    }

    /// The outcome of the first connection attempt.
    pub fn wait_connected(&self) -> Result<(), String> {
        let (outcome, _) = self.connected.wait(std::option::Option::is_some);
        outcome
            .clone()
            .unwrap_or_else(|| Err(format!("no CONNACK or error within {PATIENCE:?}")))
    }

    /// Subscribes and waits for the SUBACK.
    pub fn subscribe(&self, filter: &str, qos: u8) {
        let subacks = |all: &[Seen]| all.iter().filter(|s| s.topic == SUBACK).count();
        let before = subacks(&self.seen.lock());
        let qos = match qos {
            0 => rumqttc::QoS::AtMostOnce,
            1 => rumqttc::QoS::AtLeastOnce,
            _ => rumqttc::QoS::ExactlyOnce,
        };
        self.client.subscribe(filter, qos).expect("queue SUBSCRIBE");
        self.wait_until(|all| subacks(all) > before);
    }

    pub fn publish(&self, topic: &str, payload: &[u8], qos: u8) {
        let qos = match qos {
            0 => rumqttc::QoS::AtMostOnce,
            1 => rumqttc::QoS::AtLeastOnce,
            _ => rumqttc::QoS::ExactlyOnce,
        };
        self.client
            .publish(topic, qos, false, payload.to_vec())
            .expect("queue PUBLISH");
    }

    /// Waits until `done` holds for everything received so far.
    pub fn wait_until(&self, done: impl Fn(&[Seen]) -> bool) {
        let (all, ok) = self.seen.wait(|all| done(all));
        let report = if ok {
            String::new()
        } else {
            format!("{:#?}", &*all)
        };
        drop(all); // Not held while panicking: the failure report needs it.
        assert!(
            ok,
            "watcher: condition not met within {PATIENCE:?}; received {report}"
        );
    }

    /// Waits for a message on `topic` matching `pred`; returns it.
    pub fn wait_for(&self, topic: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        let matches = |s: &Seen| s.topic == topic && pred(s);
        self.wait_until(|all| all.iter().any(matches));
        self.seen
            .lock()
            .iter()
            .find(|s| matches(s))
            .cloned()
            .expect("just matched")
    }

    /// Waits until the broker has confirmed `n` of our QoS 1/2 publishes.
    pub fn wait_confirmed(&self, n: usize) {
        self.wait_until(|all| all.iter().filter(|s| s.topic == CONFIRMED).count() >= n);
    }

    /// Every message received so far (SUBACK markers left out).
    pub fn messages(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .iter()
            .filter(|s| s.topic != SUBACK)
            .cloned()
            .collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}
