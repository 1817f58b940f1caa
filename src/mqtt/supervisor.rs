//! The task that owns rumqttc's `EventLoop`.
//!
//! rumqttc reconnects as soon as `poll` is called again after an error, with no
//! delay of its own; all pacing lives here. One loop, one place that decides when
//! to wait, when to resubscribe and when to stop.

use super::{Delivery, Event, Link, Settings, Unconfirmed, Update};
use rumqttc::{AsyncClient, ConnectionError, EventLoop, Outgoing, Packet, Request};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// A connection that stays up this long counts as healthy again.
const STABLE_AFTER: Duration = Duration::from_secs(10);

pub(super) struct Supervisor {
    pub eventloop: EventLoop,
    pub client: AsyncClient,
    pub settings: Settings,
    pub events: mpsc::Sender<Event>,
    pub link: watch::Sender<Link>,
    pub unconfirmed: Arc<Unconfirmed>,
    pub closing: CancellationToken,
    pub updates: mpsc::UnboundedReceiver<Update>,
    /// Filters dropped by a reconfiguration, unsubscribed on the next connect
    /// (a resumed session would otherwise keep delivering them).
    pub dropped_filters: Vec<String>,
    /// Requests held back from rumqttc: what was in flight across a reconnect,
    /// fed back under its in-flight limit (see `feed`).
    pub backlog: VecDeque<Request>,
    /// New settings waiting for our DISCONNECT to go out, and whether it is queued.
    pub reconnect_to: Option<(Box<Settings>, Box<rumqttc::MqttOptions>)>,
    pub disconnect_queued: bool,
    /// How many of the requests rumqttc will hand back after a failure predate
    /// the backlog (its pending list and in-flight publishes); see `run`.
    pub older_than_backlog: usize,
    /// Counts connections; a delivery remembers the one it came on (see `Handle::ack`).
    pub generation: Arc<AtomicU64>,
    pub acks: Arc<super::Acks>,
}

impl Supervisor {
    pub async fn run(mut self) {
        let broker = format!(
            "{}:{}",
            self.settings.broker.host, self.settings.broker.port
        );
        let mut backoff = Backoff::new(
            self.settings.broker.reconnect.initial_delay,
            self.settings.broker.reconnect.max_delay,
        );
        let mut closing = false;
        let mut disconnect_sent = false;
        let mut first_connect = true;
        // The last failure we logged at warn level, so a broker that stays down
        // (or keeps dropping us right after CONNACK) produces one line, not one
        // per attempt.
        let mut last_failure: Option<String> = None;
        let mut connected_at: Option<Instant> = None;

        loop {
            let connected = *self.link.borrow() == Link::Up;
            // Signals are looked at between polls. While connected, a poll is
            // never cancelled: rumqttc may be half-way through writing a packet
            // it has already recorded as sent. Handle::close and reconfigure
            // wake the poll with a harmless request instead (see WAKE_FILTER).
            if !closing && self.closing.is_cancelled() {
                closing = true;
            }
            if !closing {
                while self.reconnect_to.is_none() {
                    let Ok(update) = self.updates.try_recv() else {
                        break;
                    };
                    if self.update(update, connected) {
                        first_connect = true;
                        backoff.reset();
                    }
                }
            }
            if closing {
                if !connected {
                    break; // Nothing can be delivered; don't wait out the grace period.
                }
                if !disconnect_sent && self.unconfirmed.count() == 0 {
                    // FIFO behind everything already queued, acks included.
                    disconnect_sent = self.client.try_disconnect().is_ok();
                }
            }
            if self.reconnect_to.is_some() && !connected {
                // The link dropped before our DISCONNECT went out: just apply, and
                // make sure that DISCONNECT is not sent on the next connection.
                if let Some((settings, options)) = self.reconnect_to.take() {
                    self.eventloop
                        .pending
                        .retain(|r| !matches!(r, Request::Disconnect(_)));
                    self.backlog
                        .retain(|r| !matches!(r, Request::Disconnect(_)));
                    self.apply(*settings, *options);
                    first_connect = true;
                    backoff.reset();
                }
            }
            if self.reconnect_to.is_some() && !self.disconnect_queued {
                self.disconnect_queued = self.client.try_disconnect().is_ok();
            }
            if self.eventloop.network.is_none() {
                // Reconnecting: rumqttc would drop what it holds if the broker has
                // no session for us, so hold it ourselves (see `restore`). Its
                // `clean()` put what it had pending and in flight first (older than
                // our backlog), then what was still in the request queue (newer).
                let mut held: VecDeque<Request> = self.eventloop.pending.drain(..).collect();
                let older = held
                    .drain(..self.older_than_backlog.min(held.len()))
                    .collect::<Vec<_>>();
                self.backlog.extend(held);
                for r in older.into_iter().rev() {
                    self.backlog.push_front(r);
                }
                self.older_than_backlog = 0;
            } else {
                self.feed();
                self.older_than_backlog =
                    self.eventloop.pending.len() + usize::from(self.eventloop.state.inflight());
            }
            let polled = if connected {
                match self.send_acks().await {
                    Ok(()) => self.eventloop.poll().await,
                    Err(e) => {
                        // As rumqttc does when its own write fails.
                        self.eventloop.clean();
                        Err(e)
                    }
                }
            } else {
                // Connecting (or about to): cancelling this is harmless.
                tokio::select! {
                    biased;
                    _ = self.closing.cancelled(), if !closing => continue,
                    Some(update) = self.updates.recv(), if !closing => {
                        if self.update(update, false) {
                            first_connect = true;
                            backoff.reset();
                        }
                        continue;
                    }
                    polled = self.eventloop.poll() => polled,
                }
            };
            // Any packet from the broker proves the link alive, not only a
            // PINGRESP. rumqttc drops the connection when a PINGRESP has not
            // been read a keep-alive after its ping, but we read only as fast
            // as ingest stores, and Mosquitto 2.0.11 queues the PINGRESP behind
            // everything it is sending us (far past max_inflight_messages): under
            // a backlog, healthy connections were dropped (issue 18). A dead
            // link still fails: nothing arrives, and the next ping finds this set.
            if matches!(polled, Ok(rumqttc::Event::Incoming(_))) {
                self.eventloop.state.await_pingresp = false;
            }
            match polled {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                    connected_at = Some(Instant::now());
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    self.link.send_replace(Link::Up);
                    info!(broker = %broker, client_id = %self.settings.client_id, session_present = ack.session_present, "connected");
                    self.restore(ack.session_present);
                    // A resumed session keeps its subscriptions, but on our first
                    // connect the config may have changed since that session began.
                    if !ack.session_present || first_connect {
                        self.subscribe();
                    }
                    if ack.session_present {
                        for f in self.dropped_filters.drain(..) {
                            let _ = self.client.try_unsubscribe(f);
                        }
                    }
                    first_connect = false;
                    self.publish_birth(ack.session_present);
                    emit(
                        &self.events,
                        Event::Connected {
                            session_present: ack.session_present,
                        },
                    )
                    .await;
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                    let generation = self.generation.load(Ordering::Acquire);
                    emit(
                        &self.events,
                        Event::Message(Delivery {
                            publish: p,
                            generation,
                        }),
                    )
                    .await;
                }
                Ok(rumqttc::Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                    self.unconfirmed.confirm(1);
                }
                Ok(rumqttc::Event::Incoming(Packet::SubAck(ack))) => {
                    use rumqttc::SubscribeReasonCode::Failure;
                    if ack.return_codes.contains(&Failure) {
                        error!(return_codes = ?ack.return_codes, "broker refused a subscription (check the ACL)");
                    } else {
                        info!(return_codes = ?ack.return_codes, "subscribed");
                    }
                }
                Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) => {
                    debug!("sent DISCONNECT");
                    if closing {
                        break;
                    }
                    // Keep what was in flight (see `restore`), drop the socket,
                    // reconnect: with new settings if that is why we disconnected.
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    self.eventloop.clean();
                    self.link.send_replace(Link::Down);
                    connected_at = None;
                    if let Some((settings, options)) = self.reconnect_to.take() {
                        self.apply(*settings, *options);
                    }
                    first_connect = true;
                    backoff.reset();
                }
                Ok(_) => {}
                Err(e) => {
                    // Deliveries of the dead connection must not be acked on the next.
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    let was_up = self.link.send_replace(Link::Down) == Link::Up;
                    if closing {
                        break;
                    }
                    // A connection that lasted is a recovery: start backoff and
                    // logging afresh. One dropped right after CONNACK is not (a
                    // broker that accepts and then rejects us must not be hammered).
                    if connected_at
                        .take()
                        .is_some_and(|t| t.elapsed() >= STABLE_AFTER)
                    {
                        backoff.reset();
                        last_failure = None;
                    }
                    let reason = describe(&e);
                    if last_failure.as_deref() != Some(&reason) {
                        warn!(broker = %broker, error = %reason, "MQTT connection failed; retrying with backoff");
                        last_failure = Some(reason.clone());
                    }
                    if was_up {
                        emit(&self.events, Event::Disconnected { reason }).await;
                    }
                    let delay = backoff.next();
                    debug!(?delay, "waiting before reconnecting");
                    tokio::select! {
                        _ = self.closing.cancelled() => closing = true,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.link.send_replace(Link::Down);
    }

    /// Applies a settings update; true if it reconfigured the connection now
    /// (rather than after our DISCONNECT has gone out).
    fn update(&mut self, update: Update, connected: bool) -> bool {
        match update {
            Update::Birth(birth) => {
                self.settings.birth = birth;
                if connected {
                    self.publish_birth_now();
                }
                false
            }
            Update::Reconnect(settings, options) if connected => {
                // Cleanly, so the broker drops our Last Will; applied when the
                // DISCONNECT has gone out.
                info!("settings changed; reconnecting");
                self.disconnect_queued = self.client.try_disconnect().is_ok();
                self.reconnect_to = Some((settings, options));
                false
            }
            Update::Reconnect(settings, options) => {
                self.apply(*settings, *options);
                true
            }
        }
    }

    /// Writes the daemon's acknowledgements straight to the connection, all in
    /// one flush. Between polls, so nothing of rumqttc's is half-written. Acks
    /// of an earlier connection are dropped (see `Handle::ack`). A failed or
    /// stalled write (rumqttc's own timeout) fails the connection; the acks in
    /// hand are lost, which is harmless: the broker redelivers those messages
    /// on the next connection and storage recognises them.
    async fn send_acks(&mut self) -> Result<(), ConnectionError> {
        let queued = self.acks.take();
        if queued.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_secs(self.eventloop.network_options.connection_timeout());
        let Some(network) = self.eventloop.network.as_mut() else {
            return Ok(());
        };
        let generation = self.generation.load(Ordering::Acquire);
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
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(written)) => {
                self.acks.count_sent(written);
                Ok(())
            }
            Ok(Err(e)) => Err(ConnectionError::MqttState(e)),
            Err(_) => Err(ConnectionError::FlushTimeout),
        }
    }

    /// Moves held-back requests into rumqttc's `pending` list, which it sends
    /// without its in-flight limit: QoS 1/2 publishes only as far as that limit
    /// allows, so packet ids never wrap onto ones the broker has yet to ack.
    fn feed(&mut self) {
        let limit = usize::from(self.eventloop.mqtt_options.inflight());
        let confirmable =
            |r: &Request| matches!(r, Request::Publish(p) if p.qos != rumqttc::QoS::AtMostOnce);
        let queued = self
            .eventloop
            .pending
            .iter()
            .filter(|r| confirmable(r))
            .count();
        let mut room = limit.saturating_sub(usize::from(self.eventloop.state.inflight()) + queued);
        if self.eventloop.state.collision.is_some() {
            room = 0; // rumqttc holds one collided publish; another would overwrite it
        }
        while let Some(front) = self.backlog.front() {
            if confirmable(front) {
                if room == 0 {
                    break;
                }
                room -= 1;
            }
            if let Some(r) = self.backlog.pop_front() {
                self.eventloop.pending.push_back(r);
            }
        }
    }

    /// What was in flight when the connection dropped (now in `backlog`). With a
    /// resumed session it goes out as rumqttc would: under the same packet ids.
    /// Without one, the broker knows none of those ids, so publishes go again as
    /// new ones (QoS 1/2 promise at-least-once; receivers drop duplicates by seq).
    /// A QoS 2 message the broker had already acknowledged with PUBREC cannot be
    /// resent (rumqttc no longer has it) and is counted as confirmed; acks and
    /// subscriptions of the old session mean nothing to a new one.
    fn restore(&mut self, session_present: bool) {
        if session_present {
            return;
        }
        let mut resent = 0usize;
        let held: Vec<Request> = self.backlog.drain(..).collect();
        for request in held {
            match request {
                Request::Publish(mut p) => {
                    p.pkid = 0;
                    p.dup = false;
                    resent += 1;
                    self.backlog.push_back(Request::Publish(p));
                }
                Request::PubRel(_) => self.unconfirmed.confirm(1),
                _ => {}
            }
        }
        if resent > 0 {
            warn!(
                resent,
                "broker had no session for us; publishing unconfirmed messages again"
            );
        }
    }

    fn subscribe(&mut self) {
        if self.settings.subscriptions.is_empty() {
            return;
        }
        let filters = self
            .settings
            .subscriptions
            .iter()
            .map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), (*q).into()));
        // try_: this task is the queue's only consumer, so it must never wait on it.
        if let Err(e) = self.client.try_subscribe_many(filters) {
            error!(error = %e, "could not queue SUBSCRIBE");
        }
    }

    fn apply(&mut self, settings: Settings, options: rumqttc::MqttOptions) {
        let kept: Vec<&String> = settings.subscriptions.iter().map(|(f, _)| f).collect();
        self.dropped_filters.extend(
            self.settings
                .subscriptions
                .iter()
                .map(|(f, _)| f.clone())
                .filter(|f| !kept.contains(&f)),
        );
        self.eventloop.mqtt_options = options;
        self.settings = settings;
    }

    /// New birth messages while connected: queue them now (behind what is queued).
    fn publish_birth_now(&mut self) {
        for m in &self.settings.birth {
            let published =
                self.client
                    .try_publish(m.topic.clone(), m.qos.into(), m.retain, m.payload.clone());
            if published.is_ok() && m.qos != super::Qos::AtMostOnce {
                self.unconfirmed.enqueued.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Birth messages jump the queue (rumqttc sends `pending` first), so an
    /// `online` status is never stuck behind a backlog of readings.
    fn publish_birth(&mut self, session_present: bool) {
        for m in self.settings.birth.iter().rev() {
            let mut p = rumqttc::Publish::new(&m.topic, m.qos.into(), m.payload.clone());
            p.retain = m.retain;
            if m.qos != super::Qos::AtMostOnce {
                self.unconfirmed.enqueued.fetch_add(1, Ordering::AcqRel);
            }
            if session_present {
                // Resends keep their packet ids; a birth message ahead of them
                // could take one of those ids. Behind them, `feed` paces it.
                self.backlog.push_back(Request::Publish(p));
            } else {
                self.eventloop.pending.push_front(Request::Publish(p));
            }
        }
    }
}

/// A free function, not a method: `&Supervisor` is not `Send` (rumqttc's socket
/// is not `Sync`), so no borrow of it may live across an `.await`.
async fn emit(events: &mpsc::Sender<Event>, event: Event) {
    // A closed receiver means the daemon is shutting down; nothing to tell.
    let _ = events.send(event).await;
}

/// One line an operator can act on.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?}")
        }
        ConnectionError::NetworkTimeout => "timed out connecting to the broker".into(),
        ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp) => {
            "no answer to keep-alive ping; link presumed dead".into()
        }
        other => other.to_string(),
    }
}

/// Exponential backoff with "equal jitter": half the delay fixed, half random,
/// so a building full of nodes does not reconnect in lockstep after an outage.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    fn next(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base / 2 + base.mul_f64(fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let delays: Vec<Duration> = (0..6).map(|_| b.next()).collect();
        let bases = [1, 2, 4, 8, 8, 8];
        for (d, base) in delays.iter().zip(bases) {
            let base = Duration::from_secs(base);
            assert!(
                *d >= base / 2 && *d <= base,
                "{d:?} not in [{:?}, {base:?}]",
                base / 2
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_secs(1));
    }
}
