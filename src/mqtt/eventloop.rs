//! Every use of rumqttc's internals, in one place.
//!
//! rumqttc's `EventLoop` exposes its state as public fields. We rely on these
//! (checked against rumqttc 0.25; re-check them when upgrading):
//!
//! - `EventLoop::pending` is sent before the request queue and without the
//!   in-flight limit; after a failure `clean()` puts what was in flight there,
//!   then drains the request queue into it. A CONNACK without a session clears
//!   it (hence `Session::hold`).
//! - `EventLoop::network` is `None` exactly while disconnected; `Network::write`
//!   and `flush` put packets on the socket, `Network::read` takes one packet.
//! - `MqttState::inflight`, `collision` (one collided publish is held; another
//!   would overwrite it) and `await_pingresp` (set by a ping, cleared by a
//!   PINGRESP; a second ping while set fails the connection).
//! - `EventLoop::poll` is not cancel-safe once connected: it may be half-way
//!   through writing a packet it has recorded as sent. It returns after any
//!   request it takes from its queue, so a request wakes it.
//! - `EventLoop::mqtt_options` is read at each connect.
//! - `MqttState::events` (what `poll` returns next, before any I/O) survives
//!   `clean()`: after a failure it can still hold the dead connection's
//!   deliveries and an `Outgoing::Disconnect` whose write failed. We empty it
//!   at every failure ([`Conn::forget_connection`]).
//!
//! The rest of the crate sees only [`Conn`]; it knows nothing of sessions or
//! phases (`session.rs`) nor of the daemon (`mod.rs`).

use super::acks::AckQueue;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, Request};
use std::time::Duration;

/// Unsubscribing from a filter nobody subscribes to: a request with no effect,
/// sent only to wake the supervisor's poll (never cancelled while connected)
/// when there is a stop, a settings change or an ack to act on. rumqttc has no
/// local-only request, so this costs an UNSUBSCRIBE and its UNSUBACK.
const WAKE_FILTER: &str = "roomsense/wake";

/// Wakes the supervisor's poll; false if rumqttc's request queue was full.
pub(super) fn wake(client: &AsyncClient) -> bool {
    client.try_unsubscribe(WAKE_FILTER).is_ok()
}

/// rumqttc's event loop, behind the operations the supervisor needs.
pub(super) struct Conn {
    /// Owned for the life of the process: its state survives reconnects.
    eventloop: EventLoop,
}

impl Conn {
    pub fn new(eventloop: EventLoop) -> Conn {
        Conn { eventloop }
    }

    /// Whether there is a socket (connected, or our DISCONNECT on its way).
    pub fn has_socket(&self) -> bool {
        self.eventloop.network.is_some()
    }

    /// Everything rumqttc would send next, taken back (while disconnected).
    pub fn take_pending(&mut self) -> Vec<Request> {
        self.eventloop.pending.drain(..).collect()
    }

    pub fn push_back(&mut self, requests: Vec<Request>) {
        self.eventloop.pending.extend(requests);
    }

    /// Ahead of everything else rumqttc holds, in the order given.
    pub fn push_front(&mut self, requests: Vec<Request>) {
        for r in requests.into_iter().rev() {
            self.eventloop.pending.push_front(r);
        }
    }

    /// Requests in rumqttc's hands: pending, and publishes in flight.
    pub fn held(&self) -> usize {
        self.eventloop.pending.len() + usize::from(self.eventloop.state.inflight())
    }

    /// In-flight slots free for more QoS 1/2 publishes: the limit, less what is
    /// in flight and what is pending. None while a publish has collided.
    pub fn room(&self) -> usize {
        if self.eventloop.state.collision.is_some() {
            return 0;
        }
        let limit = usize::from(self.eventloop.mqtt_options.inflight());
        let pending = self
            .eventloop
            .pending
            .iter()
            .filter(|r| super::session::confirmable(r))
            .count();
        limit.saturating_sub(usize::from(self.eventloop.state.inflight()) + pending)
    }

    /// Options for the next connect.
    pub fn set_options(&mut self, options: MqttOptions) {
        self.eventloop.mqtt_options = options;
    }

    /// One step of rumqttc: connect, or send and receive. Any packet from the
    /// broker proves the link alive, not only a PINGRESP: rumqttc drops the
    /// connection when a PINGRESP has not been read a keep-alive after its
    /// ping, but we read only as fast as ingest stores, and Mosquitto 2.0.11
    /// queues the PINGRESP behind everything it is sending us (far past
    /// `max_inflight_messages)`: under a backlog, healthy connections were
    /// dropped (issue 18). A dead link still fails: nothing arrives, and the
    /// next ping finds the flag set.
    pub async fn poll(&mut self) -> Result<Event, ConnectionError> {
        let polled = self.eventloop.poll().await;
        match polled {
            Ok(Event::Incoming(_)) => self.eventloop.state.await_pingresp = false,
            // rumqttc has already cleaned up (`clean()`), but not its events.
            Err(_) => self.eventloop.state.events.clear(),
            Ok(_) => {}
        }
        polled
    }

    /// Ends the connection on our side: what was in flight goes back to
    /// `pending` (for the next connection), and what rumqttc had read or
    /// queued as events of this connection is dropped. Its deliveries were not
    /// acknowledged, so the broker sends them again; one of them acked on the
    /// next connection would name another message.
    fn forget_connection(&mut self) {
        self.eventloop.clean();
        self.eventloop.state.events.clear();
    }

    /// Writes acknowledgements straight to the socket, all in one flush,
    /// bypassing rumqttc's request queue (see `Acks`). Between polls, so
    /// nothing of rumqttc's is half-written. Acks of another connection than
    /// `generation` are dropped. A failed or stalled write (rumqttc's own
    /// timeout) fails the connection as rumqttc's own writes do; the acks in
    /// hand are lost, which is harmless: the broker redelivers those messages
    /// on the next connection and storage recognises them. Returns how many
    /// were written.
    pub async fn write_acks(
        &mut self,
        queued: AckQueue,
        generation: u64,
    ) -> Result<u64, ConnectionError> {
        if queued.is_empty() {
            return Ok(0);
        }
        let timeout = Duration::from_secs(self.eventloop.network_options.connection_timeout());
        let Some(network) = self.eventloop.network.as_mut() else {
            return Ok(0);
        };
        let write = async {
            let mut written = 0;
            for (g, pkid, exactly_once) in queued {
                if g != generation {
                    continue;
                }
                let packet = if exactly_once {
                    Packet::PubRec(rumqttc::PubRec::new(pkid))
                } else {
                    Packet::PubAck(rumqttc::PubAck::new(pkid))
                };
                network.write(packet).await?;
                written += 1;
            }
            network.flush().await?;
            Ok::<_, rumqttc::StateError>(written)
        };
        let result = match tokio::time::timeout(timeout, write).await {
            Ok(Ok(written)) => return Ok(written),
            Ok(Err(e)) => ConnectionError::MqttState(e),
            Err(_) => ConnectionError::FlushTimeout,
        };
        self.forget_connection();
        Err(result)
    }

    /// After our DISCONNECT: reads (and discards) what the broker still sends
    /// until it closes the connection, at most `limit`, then lets go of the
    /// socket. Closing a socket with unread data makes the kernel reset the
    /// connection, and the broker may then lose what it had not yet read of
    /// ours: the last acks and the DISCONNECT itself ("disconnected: Protocol
    /// error" in Mosquitto's log, and acknowledged messages redelivered).
    /// What is discarded here was not acknowledged; the broker keeps it.
    pub async fn close_after_disconnect(&mut self, limit: Duration) {
        if let Some(network) = self.eventloop.network.as_mut() {
            let _ =
                tokio::time::timeout(limit, async { while network.read().await.is_ok() {} }).await;
        }
        // What was in flight stays with us (pending) for the next connection.
        self.forget_connection();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stale_event() -> Event {
        Event::Outgoing(rumqttc::Outgoing::Disconnect)
    }

    #[test]
    fn a_failure_leaves_no_event_of_the_dead_connection() {
        // A port nothing listens on: the poll fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let (_client, eventloop) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", port), 10);
        let mut conn = Conn::new(eventloop);
        conn.eventloop.state.events.push_back(stale_event());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        assert!(runtime.block_on(conn.poll()).is_err());
        assert!(conn.eventloop.state.events.is_empty());

        conn.eventloop.state.events.push_back(stale_event());
        conn.forget_connection();
        assert!(conn.eventloop.state.events.is_empty());
    }
}
