//! The MQTT connection. This is the only module that knows rumqttc.
//!
//! [`connect`] builds the client and spawns the [supervisor](supervisor) task,
//! which owns the rumqttc `EventLoop` for the life of the process: it reconnects
//! with backoff, republishes the birth message on every connect, resubscribes when
//! the broker lost our session, and hands incoming messages to the daemon as
//! [`Event`]s. The daemon talks back through [`Handle`].
//! It knows nothing of readings, alerts or storage: messages are bytes on topics.

mod acks;
mod eventloop;
mod session;
mod supervisor;
mod tls;

use acks::{Acks, Unconfirmed};

pub use tls::{
    certificate_identity, check as check_tls_files, client_config as tls_client_config,
    issued_by_ca, CertIdentity, TlsError, TlsFiles, CREDENTIALS_VAR,
};

use crate::contract::Qos;
use rumqttc::{AsyncClient, LastWill, MqttOptions, Publish, QoS, Transport};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

impl From<Qos> for QoS {
    fn from(q: Qos) -> QoS {
        match q {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
            Qos::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

impl From<QoS> for Qos {
    fn from(q: QoS) -> Qos {
        match q {
            QoS::AtMostOnce => Qos::AtMostOnce,
            QoS::AtLeastOnce => Qos::AtLeastOnce,
            QoS::ExactlyOnce => Qos::ExactlyOnce,
        }
    }
}

/// Whether `topic` matches the MQTT `filter` (`+`, `#`): rumqttc's matching,
/// so there is one implementation of the spec's rules.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    rumqttc::matches(topic, filter)
}

/// Whether `filter` is a valid MQTT filter (MQTT 3.1.1 §4.7: `#` only as the
/// whole last level, `+` only as a whole level): rumqttc's check.
pub fn valid_filter(filter: &str) -> bool {
    rumqttc::valid_filter(filter)
}

/// A message we publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Where it is published.
    pub topic: String,
    /// Sent as is: this module never looks inside (JSON is the caller's business).
    pub payload: Vec<u8>,
    /// QoS 1/2 publishes are counted until the broker confirms them: what
    /// [`Handle::close`] waits for.
    pub qos: Qos,
    /// The broker keeps it as the topic's last value for later subscribers
    /// (e.g. status, discovery).
    pub retain: bool,
}

/// One broker to try: a cluster member, or the only broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Name or address; with TLS this broker's certificate must name it
    /// (checked per endpoint, on every connect).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Where the broker is and how to reach it: plain values, which the daemons
/// build from their config (this module reads no config file).
#[derive(Debug, Clone, PartialEq)]
pub struct Broker {
    /// Brokers to connect to, in order; after each failed or lost connection
    /// the next one is tried (round robin, with the backoff between attempts).
    /// One entry is the usual single broker. Never empty ([`MqttError::NoBroker`]).
    pub endpoints: Vec<Endpoint>,
    /// The MQTT keep-alive.
    pub keep_alive: Duration,
    /// Mutual TLS; `None` is plaintext (the config allows it only on loopback).
    pub tls: Option<TlsFiles>,
    /// The first wait before reconnecting (a random half to all of it).
    pub initial_delay: Duration,
    /// Where the doubling of that wait stops.
    pub max_delay: Duration,
}

/// Everything needed to open (and keep reopening) one MQTT session.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The MQTT client id (the broker makes it the certificate's CN).
    pub client_id: String,
    /// Where to connect, and how.
    pub broker: Broker,
    /// Published by the broker if the connection dies without a DISCONNECT.
    pub last_will: Option<Message>,
    /// Published on every successful connect, ahead of queued messages.
    pub birth: Vec<Message>,
    /// Resubscribed whenever the broker reports no stored session.
    pub subscriptions: Vec<(String, Qos)>,
    /// Incoming QoS 1/2 messages are acknowledged only by [`Handle::ack`].
    pub manual_acks: bool,
}

/// What the supervisor tells the daemon.
#[derive(Debug)]
pub enum Event {
    /// The broker accepted us (CONNACK), on the first connect and every reconnect.
    Connected {
        /// The broker still had our session; if not, what was published for us
        /// while we were away is gone (subscriptions are renewed).
        session_present: bool,
    },
    /// A connection that was up has broken (never sent for our own DISCONNECT);
    /// the supervisor retries with backoff.
    Disconnected {
        /// What went wrong, described for the log.
        reason: String,
    },
    /// A message on one of our subscriptions.
    Message(Delivery),
}

/// An incoming message. With manual acks, pass it back to [`Handle::ack`] once it
/// has been dealt with (stored, or rejected for good).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// rumqttc's packet: topic, payload, QoS, and the packet id an ack needs.
    publish: Publish,
    /// The connection it arrived on: its packet id means nothing on another.
    generation: u64,
}

impl Delivery {
    pub fn topic(&self) -> &str {
        &self.publish.topic
    }
    pub fn payload(&self) -> &[u8] {
        &self.publish.payload
    }
    pub fn qos(&self) -> Qos {
        self.publish.qos.into()
    }
}

/// Connection state, as last seen by the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Only the initial state: no connection has succeeded or failed yet.
    Connecting,
    /// Connected (CONNACK received): publishes go out now.
    Up,
    /// A connect failed, the connection broke, or we closed it; retried unless
    /// stopping.
    Down,
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The TLS files cannot be used: a config problem (exit 78 at start-up), not retried.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The supervisor task has ended: nothing more can be sent.
    #[error("the MQTT connection task has stopped")]
    Closed,
    /// [`Broker::endpoints`] is empty: nowhere to connect.
    #[error("no broker to connect to")]
    NoBroker,
    /// `try_publish` found rumqttc's request queue full; holds the queue's size.
    /// The caller still has the message.
    #[error("the outgoing queue is full ({0} messages)")]
    Full(usize),
}

/// Size of rumqttc's request queue for publishers: when full, `try_publish`
/// says so and the caller decides (sensord buffers or counts a drop).
const REQUEST_QUEUE: usize = 4096;
/// Incoming events not yet taken by the daemon; backpressure beyond that.
const EVENT_QUEUE: usize = 1024;
/// Broker-side limit is 64 KiB (deploy/mosquitto); anything larger can't arrive.
const MAX_PACKET: usize = 128 * 1024;

/// The daemon's side of the connection.
#[derive(Debug)]
pub struct Handle {
    /// rumqttc's request queue: our publishes go through it.
    client: AsyncClient,
    /// The connection state, as the supervisor last saw it.
    link: watch::Receiver<Link>,
    /// The endpoint the supervisor connects or connected to.
    in_use: Arc<std::sync::Mutex<Endpoint>>,
    /// Our QoS 1/2 publishes not yet confirmed: what a clean stop waits for.
    unconfirmed: Arc<Unconfirmed>,
    /// Tells the supervisor to leave cleanly and end.
    closing: CancellationToken,
    /// The supervisor task, awaited (with a deadline) by `close`.
    task: JoinHandle<()>,
    /// Settings changes for the supervisor.
    updates: mpsc::UnboundedSender<Update>,
    /// The settings in use, and the TLS files' contents they were built from:
    /// what `reconfigure` compares a reload with.
    current: std::sync::Mutex<(Settings, Vec<u8>)>,
    /// The current connection's number (shared with the supervisor).
    generation: Arc<AtomicU64>,
    /// Acks waiting for the supervisor (shared with every `Acker`).
    acks: Arc<Acks>,
    /// Whether acks are the daemon's to send (shared with every `Acker`).
    manual_acks: Arc<AtomicBool>,
}

/// Acknowledges deliveries: the part of [`Handle`] that ingest needs, so that
/// the daemon's main loop keeps the handle (reconfigure, close) to itself.
#[derive(Debug, Clone)]
pub struct Acker {
    /// Only to wake the supervisor (see eventloop.rs).
    client: AsyncClient,
    /// Where acks wait for the supervisor.
    acks: Arc<Acks>,
    /// The current connection: acks of an earlier one are dropped.
    generation: Arc<AtomicU64>,
    /// Whether acks are ours to send (else rumqttc sent them already).
    manual_acks: Arc<AtomicBool>,
}

impl Acker {
    /// Acknowledges incoming messages (PUBACK, or PUBREC for QoS 2), in order.
    /// QoS 0 messages need none.
    /// A message that arrived on an earlier connection is not acknowledged: its
    /// packet id may now name another message (after a broker restart that lost
    /// our session), and a resumed session redelivers it anyway.
    pub fn ack<'d>(&self, deliveries: impl IntoIterator<Item = &'d Delivery>) {
        if !self.manual_acks.load(Ordering::Acquire) {
            return; // rumqttc has acknowledged them already.
        }
        let generation = self.generation.load(Ordering::Acquire);
        let wake = self.acks.push(
            deliveries
                .into_iter()
                .filter(|d| d.generation == generation && d.publish.qos != QoS::AtMostOnce)
                .map(|d| {
                    (
                        d.generation,
                        d.publish.pkid,
                        d.publish.qos == QoS::ExactlyOnce,
                    )
                }),
        );
        // The supervisor looks at the queue before every poll; if it is parked
        // in one (nothing arriving), a harmless request wakes it.
        if wake {
            self.acks.woke(eventloop::wake(&self.client));
        }
    }
}

/// Builds the client and starts the supervisor. Fails only on local problems
/// (unreadable certificates); broker trouble is retried, never returned.
pub fn connect(settings: Settings) -> Result<(Handle, mpsc::Receiver<Event>), MqttError> {
    let tls_files = tls_fingerprint(&settings)?;
    let options = options(&settings, 0)?;
    let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
    let generation = Arc::new(AtomicU64::new(0));
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (link_tx, link_rx) = watch::channel(Link::Connecting);
    let first = settings
        .broker
        .endpoints
        .first()
        .ok_or(MqttError::NoBroker)?;
    let in_use = Arc::new(std::sync::Mutex::new(first.clone()));
    let (updates_tx, updates_rx) = mpsc::unbounded_channel();
    let unconfirmed = Arc::new(Unconfirmed::default());
    let acks = Arc::new(Acks::default());
    let closing = CancellationToken::new();
    let manual_acks = Arc::new(AtomicBool::new(settings.manual_acks));
    let task = tokio::spawn(
        supervisor::Supervisor {
            conn: eventloop::Conn::new(eventloop),
            client: client.clone(),
            session: session::Session::new(settings.clone(), generation.clone()),
            events: events_tx,
            link: link_tx,
            in_use: in_use.clone(),
            unconfirmed: unconfirmed.clone(),
            closing: closing.clone(),
            updates: updates_rx,
            acks: acks.clone(),
            reread_failed: None,
        }
        .run(),
    );
    let handle = Handle {
        client,
        link: link_rx,
        in_use,
        unconfirmed,
        closing,
        task,
        updates: updates_tx,
        current: std::sync::Mutex::new((settings, tls_files)),
        acks,
        generation,
        manual_acks,
    };
    Ok((handle, events_rx))
}

/// rumqttc's options for connecting to `settings.broker.endpoints[endpoint]`,
/// including a fresh TLS config from the files: rustls checks the broker's
/// certificate against that endpoint's host.
fn options(settings: &Settings, endpoint: usize) -> Result<MqttOptions, MqttError> {
    let b = &settings.broker;
    let at = b.endpoints.get(endpoint).ok_or(MqttError::NoBroker)?;
    let mut options = MqttOptions::new(settings.client_id.clone(), at.host.clone(), at.port);
    options
        .set_keep_alive(b.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(settings.manual_acks)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(files) = &b.tls {
        let tls = tls::client_config(files)?;
        options.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
        ));
    } else {
        // Config validation allows this only for a loopback host.
        warn!(host = %at.host, "insecure_plaintext: MQTT WITHOUT TLS; readings and identities travel in clear");
        options.set_transport(Transport::Tcp);
    }
    if let Some(will) = &settings.last_will {
        options.set_last_will(LastWill::new(
            will.topic.clone(),
            will.payload.clone(),
            will.qos.into(),
            will.retain,
        ));
    }
    Ok(options)
}

fn tls_fingerprint(settings: &Settings) -> Result<Vec<u8>, MqttError> {
    match &settings.broker.tls {
        Some(files) => Ok(tls::fingerprint(files)?),
        None => Ok(Vec::new()),
    }
}

/// A change of settings sent to the supervisor.
pub(crate) enum Update {
    /// Only the birth messages changed: publish them now, use them from now on.
    Birth(Vec<Message>),
    /// Anything about the connection changed: disconnect cleanly, reconnect so.
    Reconnect(Box<Settings>, Box<MqttOptions>),
}

impl Handle {
    pub fn is_connected(&self) -> bool {
        *self.link.borrow() == Link::Up
    }

    /// "connected to host:port" or "not connected (host:port)", naming the
    /// broker of the current connection or of the last attempt: the start of
    /// both daemons' `STATUS=` line, so an operator sees a failover.
    pub fn describe_link(&self) -> String {
        let at = self
            .in_use
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if self.is_connected() {
            format!("connected to {at}")
        } else {
            format!("not connected ({at})")
        }
    }

    /// A receiver that sees every change of connection state.
    pub fn link(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }

    /// Queues a message; waits while rumqttc's queue is full.
    pub async fn publish(&self, m: Message) -> Result<(), MqttError> {
        let qos = m.qos;
        self.client
            .publish(m.topic, qos.into(), m.retain, m.payload)
            .await
            .map_err(|_| MqttError::Closed)?;
        self.note_enqueued(qos);
        Ok(())
    }

    /// Queues a message without waiting. On `Full` the caller still has it.
    pub fn try_publish(&self, m: &Message) -> Result<(), MqttError> {
        let qos = m.qos;
        self.client
            .try_publish(m.topic.clone(), qos.into(), m.retain, m.payload.clone())
            .map_err(|e| match e {
                rumqttc::ClientError::TryRequest(_) => MqttError::Full(REQUEST_QUEUE),
                rumqttc::ClientError::Request(_) => MqttError::Closed,
            })?;
        self.note_enqueued(qos);
        Ok(())
    }

    fn note_enqueued(&self, qos: Qos) {
        if qos != Qos::AtMostOnce {
            self.unconfirmed.enqueue(1);
        }
    }

    /// Waits until the broker has confirmed every QoS 1/2 message queued so far
    /// (PUBACK, or PUBCOMP for QoS 2). Across reconnects too: what was in flight
    /// is resent.
    pub async fn wait_confirmed(&self) {
        loop {
            let notified = self.unconfirmed.all_confirmed.notified();
            if self.unconfirmed.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// What ingest needs to acknowledge deliveries, without the handle itself.
    pub fn acker(&self) -> Acker {
        Acker {
            client: self.client.clone(),
            acks: self.acks.clone(),
            generation: self.generation.clone(),
            manual_acks: self.manual_acks.clone(),
        }
    }

    /// Counts acknowledgements written to the connection.
    pub fn acks_sent(&self) -> Arc<AtomicU64> {
        self.acks.sent()
    }

    /// Applies new settings (a config reload). If only the birth messages differ,
    /// they are published at once and nothing else happens. If anything about the
    /// connection differs, including the *contents* of the certificate and key
    /// files (renewed in place), the connection is closed cleanly (DISCONNECT, so
    /// no Last Will) and reopened with the new settings. Returns whether it
    /// reconnects; errors (unreadable new certificates) leave everything as it was.
    pub fn reconfigure(&self, new: Settings) -> Result<bool, MqttError> {
        let files = tls_fingerprint(&new)?;
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (old, old_files) = &*current;
        let same_connection = old.client_id == new.client_id
            && old.broker == new.broker
            && old.last_will == new.last_will
            && old.subscriptions == new.subscriptions
            && old.manual_acks == new.manual_acks
            && *old_files == files;
        let update = if same_connection {
            if old.birth == new.birth {
                return Ok(false);
            }
            Update::Birth(new.birth.clone())
        } else {
            Update::Reconnect(Box::new(new.clone()), Box::new(options(&new, 0)?))
        };
        self.updates.send(update).map_err(|_| MqttError::Closed)?;
        self.manual_acks.store(new.manual_acks, Ordering::Release);
        let _ = eventloop::wake(&self.client);
        *current = (new, files);
        Ok(!same_connection)
    }

    /// Clean stop: waits (up to `grace`) until the broker has confirmed every QoS 1/2
    /// message we queued, then sends DISCONNECT, so the broker discards our Last
    /// Will and keeps our session. Returns the number of publishes left unconfirmed.
    pub async fn close(self, grace: Duration) -> u64 {
        self.closing.cancel();
        let _ = eventloop::wake(&self.client);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            abort.abort();
        }
        self.unconfirmed.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matching() {
        assert!(filter_matches("building/#", "building/f/r/temperature/t"));
        assert!(filter_matches(
            "building/+/+/temperature/#",
            "building/f/r/temperature/t"
        ));
        assert!(filter_matches("#", "a"));
        assert!(filter_matches("a/b/#", "a/b"));
        assert!(!filter_matches(
            "building/+/r2/#",
            "building/f/r/temperature/t"
        ));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/b/c", "a/b"));
        assert!(filter_matches("a/+", "a/b"));
    }
}
