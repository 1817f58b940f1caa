//! The task that owns the connection: a thin I/O loop around [`Session`] (what
//! to do) and [`Conn`] (rumqttc's event loop).
//!
//! rumqttc reconnects as soon as `poll` is called again after an error, with no
//! delay of its own; all pacing lives here. One loop, one place that decides when
//! to wait, when to resubscribe and when to stop. It knows nothing of what the
//! messages mean: that is the daemon's, on the other side of [`Event`].

use super::acks::{Acks, Unconfirmed};
use super::eventloop::Conn;
use super::session::{AfterDisconnect, Backoff, OnConnect, Phase, Session};
use super::{Delivery, Event, Link, Update};
use rumqttc::{AsyncClient, ConnectionError, Outgoing, Packet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// After our DISCONNECT, how long to wait for the broker to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub(super) struct Supervisor {
    /// rumqttc's event loop (the only way to it).
    pub conn: Conn,
    /// rumqttc's request queue: SUBSCRIBE, UNSUBSCRIBE, DISCONNECT go through it.
    pub client: AsyncClient,
    /// Phase, backlog, generation: every decision that needs no I/O.
    pub session: Session,
    /// To the daemon: connects, disconnects, deliveries.
    pub events: mpsc::Sender<Event>,
    /// The connection state the daemon sees.
    pub link: watch::Sender<Link>,
    /// The broker we connect to, for the daemon's `STATUS=`.
    pub in_use: Arc<std::sync::Mutex<super::Endpoint>>,
    /// Our QoS 1/2 publishes the broker has yet to confirm.
    pub unconfirmed: Arc<Unconfirmed>,
    /// Cancelled by `Handle::close`: leave cleanly and end.
    pub closing: CancellationToken,
    /// Settings changes from `Handle::reconfigure`.
    pub updates: mpsc::UnboundedReceiver<Update>,
    /// The daemon's acknowledgements, written before each poll.
    pub acks: Arc<Acks>,
    /// Why the TLS files could not be read again at the last attempt: said
    /// once, not at every retry.
    pub reread_failed: Option<String>,
}

impl Supervisor {
    pub async fn run(mut self) {
        let broker = &self.session.settings().broker;
        let mut backoff = Backoff::new(broker.initial_delay, broker.max_delay);
        // The failures logged at warn level (broker and reason), so a broker
        // that stays down (or keeps dropping us right after CONNACK) produces
        // one line, not one per attempt, however many brokers we rotate over.
        let mut failures_logged: Vec<String> = Vec::new();

        loop {
            // Signals are looked at between polls. While connected, a poll is
            // never cancelled (see eventloop.rs): Handle::close and reconfigure
            // wake it with a harmless request instead.
            if self.closing.is_cancelled() {
                self.session.stop();
            }
            while let Ok(update) = self.updates.try_recv() {
                self.update(update, &mut backoff);
            }
            if matches!(self.session.phase(), Phase::Stopped) {
                break;
            }
            // FIFO behind everything already queued; our acks go before each poll.
            if self.session.wants_disconnect(self.unconfirmed.count())
                && self.client.try_disconnect().is_ok()
            {
                self.session.disconnect_queued();
            }
            if self.conn.has_socket() {
                let fed = self.session.feed(self.conn.room());
                self.conn.push_back(fed);
                self.session.handed(self.conn.held());
            } else {
                self.session.hold(self.conn.take_pending());
            }

            let polled = if self.session.is_connected() {
                match self
                    .conn
                    .write_acks(self.acks.take(), self.session.generation())
                    .await
                {
                    Ok(written) => {
                        self.acks.count_sent(written);
                        self.conn.poll().await
                    }
                    Err(e) => Err(e),
                }
            } else {
                // Connecting (or about to): cancelling this is harmless.
                tokio::select! {
                    biased;
                    () = self.closing.cancelled() => continue,
                    Some(update) = self.updates.recv() => {
                        self.update(update, &mut backoff);
                        continue;
                    }
                    polled = self.conn.poll() => polled,
                }
            };

            match polled {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                    let plan = self.session.connected(ack.session_present, Instant::now());
                    self.link.send_replace(Link::Up);
                    info!(broker = %self.broker(), client_id = %self.session.settings().client_id, session_present = ack.session_present, "connected");
                    self.on_connect(plan, ack.session_present);
                    emit(
                        &self.events,
                        Event::Connected {
                            session_present: ack.session_present,
                        },
                    )
                    .await;
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(publish))) => {
                    let generation = self.session.generation();
                    emit(
                        &self.events,
                        Event::Message(Delivery {
                            publish,
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
                    let after = self.session.disconnect_sent();
                    if matches!(after, AfterDisconnect::Ignore) {
                        continue;
                    }
                    debug!("sent DISCONNECT");
                    self.link.send_replace(Link::Down);
                    // Both ways, so that the broker reads our last acks and the
                    // DISCONNECT itself (see eventloop.rs).
                    self.conn.close_after_disconnect(CLOSE_WAIT).await;
                    // The daemon sees the link go down (readiness, STATUS=);
                    // at a stop nobody listens any more, which is fine.
                    let reason = "disconnected cleanly".to_owned();
                    emit(&self.events, Event::Disconnected { reason }).await;
                    match after {
                        AfterDisconnect::Stop => break,
                        AfterDisconnect::Reconnect(options) => {
                            self.conn.set_options(*options);
                            self.note_in_use();
                            backoff.reset();
                        }
                        AfterDisconnect::Ignore => {} // handled above
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // Named before a new broker or new settings replace it.
                    let failed = self.broker();
                    let lost = self.session.link_lost(Instant::now());
                    let was_up = self.link.send_replace(Link::Down) == Link::Up;
                    if lost.stop {
                        break;
                    }
                    if let Some(options) = lost.apply {
                        // New settings: a fresh start for the backoff too.
                        self.conn.set_options(*options);
                        self.note_in_use();
                        backoff.reset();
                    } else {
                        self.next_endpoint();
                    }
                    // A connection that lasted is a recovery: start backoff and
                    // logging afresh. One dropped right after CONNACK is not (a
                    // broker that accepts and then rejects us must not be hammered).
                    if lost.recovered {
                        backoff.reset();
                        failures_logged.clear();
                    }
                    let reason = describe(&e);
                    let failure = format!("{failed} {reason}");
                    if !failures_logged.contains(&failure) {
                        warn!(broker = %failed, error = %reason, "MQTT connection failed; retrying with backoff");
                        if failures_logged.len() >= 64 {
                            failures_logged.clear(); // bounded; at worst it says it again
                        }
                        failures_logged.push(failure);
                    }
                    if was_up {
                        emit(&self.events, Event::Disconnected { reason }).await;
                    }
                    let delay = backoff.next();
                    debug!(?delay, "waiting before reconnecting");
                    tokio::select! {
                        () = self.closing.cancelled() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.link.send_replace(Link::Down);
    }

    /// The broker in use, for the log.
    fn broker(&self) -> String {
        self.session
            .endpoint()
            .1
            .map_or_else(|| "none".to_owned(), ToString::to_string)
    }

    /// Prepares the next connect: the next broker in the list (if there is
    /// more than one), with the TLS files read again, so a certificate and key
    /// renewed in place are used at the next reconnect without a reload (the
    /// operator's renewal needs no signal). The backoff still applies between
    /// attempts: a whole cluster down must not be hammered either.
    fn next_endpoint(&mut self) {
        let index = self
            .session
            .next_endpoint()
            .unwrap_or(self.session.endpoint().0);
        match super::options(self.session.settings(), index) {
            Ok(options) => {
                self.conn.set_options(options);
                self.session.use_endpoint(index);
                self.note_in_use();
                self.reread_failed = None;
                debug!(broker = %self.broker(), "next attempt");
            }
            // The TLS files went bad since they were loaded (a renewal half
            // done): keep what was loaded and say so; the next attempt, or
            // the reload that fixes them, reads them again.
            Err(e) => {
                let why = e.to_string();
                if self.reread_failed.as_ref() != Some(&why) {
                    error!(error = %why, "cannot read the TLS files again; keeping the ones loaded");
                    self.reread_failed = Some(why);
                }
            }
        }
    }

    /// Tells the daemon which broker we now connect to.
    fn note_in_use(&self) {
        if let Some(endpoint) = self.session.endpoint().1 {
            endpoint.clone_into(
                &mut self
                    .in_use
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
    }

    /// Applies a settings update.
    fn update(&mut self, update: Update, backoff: &mut Backoff) {
        match update {
            Update::Birth(birth) => {
                self.session.set_birth(birth);
                if self.session.is_connected() {
                    self.publish_birth_now();
                }
            }
            Update::Reconnect(settings, options) => {
                if self.session.is_connected() {
                    // Cleanly, so the broker drops our Last Will; applied when
                    // the DISCONNECT has gone out.
                    info!("settings changed; reconnecting");
                }
                if let Some(options) = self.session.reconfigure(*settings, *options) {
                    self.conn.set_options(options);
                    self.note_in_use();
                    backoff.reset();
                }
            }
        }
    }

    /// What a CONNACK asks for: subscriptions, and the birth messages ahead of
    /// (or, with a resumed session, behind) what was in flight.
    fn on_connect(&mut self, plan: OnConnect, session_present: bool) {
        if plan.resent > 0 {
            warn!(
                resent = plan.resent,
                "broker had no session for us; publishing unconfirmed messages again"
            );
        }
        self.unconfirmed.confirm(plan.confirmed);
        if plan.subscribe {
            self.subscribe();
        }
        for filter in plan.unsubscribe {
            let _ = self.client.try_unsubscribe(filter);
        }
        self.count_births();
        let front = self.session.birth(session_present);
        self.conn.push_front(front);
    }

    fn count_births(&self) {
        let confirmable = self
            .session
            .settings()
            .birth
            .iter()
            .filter(|m| m.qos != crate::contract::Qos::AtMostOnce)
            .count();
        self.unconfirmed.enqueue(confirmable as u64);
    }

    fn subscribe(&mut self) {
        let subscriptions = &self.session.settings().subscriptions;
        if subscriptions.is_empty() {
            return;
        }
        let filters = subscriptions
            .iter()
            .map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), (*q).into()));
        // try_: this task is the queue's only consumer, so it must never wait on it.
        if let Err(e) = self.client.try_subscribe_many(filters) {
            error!(error = %e, "could not queue SUBSCRIBE");
        }
    }

    /// New birth messages while connected: queue them now (behind what is queued).
    fn publish_birth_now(&mut self) {
        for m in &self.session.settings().birth {
            let published =
                self.client
                    .try_publish(m.topic.clone(), m.qos.into(), m.retain, m.payload.clone());
            if published.is_ok() && m.qos != crate::contract::Qos::AtMostOnce {
                self.unconfirmed.enqueue(1);
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
