//! The connection's session state, as pure logic: which [`Phase`] the connection
//! is in, what was in flight across a reconnect (the backlog) and how it goes
//! back to the broker, and which connection a delivery came on (the generation).
//!
//! It does no I/O and never touches rumqttc's event loop: the supervisor tells it
//! what happened (a CONNACK, our DISCONNECT sent, the link lost) and does what it
//! answers. That is what lets the unit tests below drive every transition
//! without a broker. It uses rumqttc's request and option types only as data.

use super::Settings;
use rumqttc::{MqttOptions, Request};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection that stays up this long counts as healthy again.
pub(super) const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Where the connection is.
#[derive(Debug)]
pub(super) enum Phase {
    /// No connection: connecting, or waiting out a backoff.
    Down,
    /// Connected.
    Up,
    /// Connected, and leaving: our DISCONNECT goes out (it is in rumqttc's queue
    /// once `queued`), then `then` happens.
    Leaving { then: Then, queued: bool },
    /// Stopped: the supervisor's loop ends.
    Stopped,
}

/// What follows our DISCONNECT.
#[derive(Debug)]
pub(super) enum Then {
    /// The daemon is stopping.
    Stop,
    /// New settings (a reload) apply, and we connect again with them.
    Reconnect(Box<(Settings, MqttOptions)>),
}

/// What the supervisor does after our DISCONNECT went out.
#[derive(Debug)]
pub(super) enum AfterDisconnect {
    /// Nothing: we were not leaving (a stale event of an earlier connection).
    Ignore,
    /// Read until the broker closes, then end.
    Stop,
    /// Read until the broker closes, then connect with these options.
    Reconnect(Box<MqttOptions>),
}

/// What the supervisor does after the link was lost.
#[derive(Debug, Default)]
pub(super) struct LinkLost {
    /// The daemon is stopping: end, there is nothing left to deliver on.
    pub stop: bool,
    /// Settings that were waiting for our DISCONNECT: use them for the next connect.
    pub apply: Option<Box<MqttOptions>>,
    /// The connection had lasted [`STABLE_AFTER`]: start backoff and logging afresh.
    pub recovered: bool,
}

/// What the supervisor does on a CONNACK.
#[derive(Debug, Default, PartialEq)]
pub(super) struct OnConnect {
    /// Send our SUBSCRIBE: the broker has no session, or the settings are new.
    pub subscribe: bool,
    /// Filters a reload dropped, which a resumed session still delivers.
    pub unsubscribe: Vec<String>,
    /// Publishes resent as new messages (the broker had no session for us).
    pub resent: usize,
    /// QoS 2 publishes the broker had already received (PUBREC) in a session it
    /// lost: they cannot be resent, so they count as confirmed.
    pub confirmed: u64,
}

/// The session state the supervisor keeps across connections.
pub(super) struct Session {
    /// Where the connection is; every transition goes through a method below.
    phase: Phase,
    /// The settings in use; the next connect uses them.
    settings: Settings,
    /// The next CONNACK is the first with the current settings: subscribe even
    /// if the broker resumed a session (it was made with the old filters).
    fresh: bool,
    /// Filters a reload dropped, unsubscribed on the next connect (a resumed
    /// session would otherwise keep delivering them).
    dropped_filters: Vec<String>,
    /// Requests held back from rumqttc: what was in flight across a reconnect,
    /// fed back under its in-flight limit (see [`Session::feed`]).
    backlog: VecDeque<Request>,
    /// How many of the requests rumqttc hands back after a failure predate the
    /// backlog (they were already in its hands: pending, or in flight).
    handed_to_rumqttc: usize,
    /// After the link dropped with our DISCONNECT queued for a reconnect: that
    /// DISCONNECT comes back among rumqttc's pending requests and must not be
    /// sent on the next connection.
    drop_queued_disconnect: bool,
    /// Counts connections; a delivery remembers the one it came on, and its ack
    /// is sent only on that one (see `Handle::ack`). Shared with the `Handle`.
    generation: Arc<AtomicU64>,
    /// When the current connection came up.
    connected_at: Option<Instant>,
    /// Index into `settings.broker.endpoints`: where the next connect goes.
    endpoint: usize,
}

impl Session {
    pub fn new(settings: Settings, generation: Arc<AtomicU64>) -> Session {
        Session {
            phase: Phase::Down,
            settings,
            fresh: true,
            dropped_filters: Vec::new(),
            backlog: VecDeque::new(),
            handed_to_rumqttc: 0,
            drop_queued_disconnect: false,
            generation,
            connected_at: None,
            endpoint: 0,
        }
    }

    /// The broker the next connect goes to (and the current one went to).
    pub fn endpoint(&self) -> (usize, Option<&super::Endpoint>) {
        (
            self.endpoint,
            self.settings.broker.endpoints.get(self.endpoint),
        )
    }

    /// After a failed or lost connection, the next broker in the list, round
    /// robin; `None` if there is only one. Every failure moves on, even after
    /// a connection that lasted: in a cluster any member serves our session,
    /// and a broker that just dropped us is the likeliest to be down.
    pub fn next_endpoint(&self) -> Option<usize> {
        let n = self.settings.broker.endpoints.len();
        (n > 1).then(|| (self.endpoint + 1) % n)
    }

    /// Connect to endpoint `index` from now on (the supervisor has pointed
    /// rumqttc there).
    pub fn use_endpoint(&mut self, index: usize) {
        self.endpoint = index;
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Connected (up, or leaving): a poll must not be cancelled.
    pub fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Up | Phase::Leaving { .. })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn next_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The daemon is stopping. Not connected, there is nothing to deliver on:
    /// stop now. Connected: leave with a DISCONNECT (already queued, if a
    /// reconnect had queued one).
    pub fn stop(&mut self) {
        self.phase = match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Down | Phase::Stopped => Phase::Stopped,
            Phase::Up => Phase::Leaving {
                then: Then::Stop,
                queued: false,
            },
            Phase::Leaving { queued, .. } => Phase::Leaving {
                then: Then::Stop,
                queued,
            },
        };
    }

    /// New birth messages: used from now on.
    /// (A reconnect still waiting for our DISCONNECT gets them too: its
    /// settings replace the current ones when it applies.)
    pub fn set_birth(&mut self, birth: Vec<super::Message>) {
        if let Phase::Leaving {
            then: Then::Reconnect(next),
            ..
        } = &mut self.phase
        {
            next.0.birth.clone_from(&birth);
        }
        self.settings.birth = birth;
    }

    /// New connection settings. Not connected, they apply now and the options
    /// are returned for the event loop. Connected, they wait for our DISCONNECT
    /// (so the broker drops our Last Will); a later reload replaces them. A
    /// stopping session ignores them.
    pub fn reconfigure(&mut self, settings: Settings, options: MqttOptions) -> Option<MqttOptions> {
        match &mut self.phase {
            Phase::Down => {
                self.apply(settings);
                Some(options)
            }
            Phase::Up => {
                self.phase = Phase::Leaving {
                    then: Then::Reconnect(Box::new((settings, options))),
                    queued: false,
                };
                None
            }
            Phase::Leaving {
                then: then @ Then::Reconnect(_),
                ..
            } => {
                *then = Then::Reconnect(Box::new((settings, options)));
                None
            }
            Phase::Leaving {
                then: Then::Stop, ..
            }
            | Phase::Stopped => None,
        }
    }

    /// Whether the supervisor should queue our DISCONNECT now: when leaving and
    /// it is not queued yet; a stop waits until the broker has confirmed every
    /// publish (`unconfirmed` is 0), a reconnect does not (what is in flight is
    /// resent on the next connection).
    pub fn wants_disconnect(&self, unconfirmed: u64) -> bool {
        match &self.phase {
            Phase::Leaving {
                queued: false,
                then: Then::Stop,
            } => unconfirmed == 0,
            Phase::Leaving {
                queued: false,
                then: Then::Reconnect(_),
            } => true,
            _ => false,
        }
    }

    /// Our DISCONNECT is in rumqttc's queue.
    pub fn disconnect_queued(&mut self) {
        if let Phase::Leaving { queued, .. } = &mut self.phase {
            *queued = true;
        }
    }

    /// A CONNACK. Puts what was in flight back in order for the new connection
    /// (see [`Session::restore`]) and says what to send first.
    pub fn connected(&mut self, session_present: bool, now: Instant) -> OnConnect {
        self.next_generation();
        self.phase = Phase::Up;
        self.connected_at = Some(now);
        let (resent, confirmed) = self.restore(session_present);
        let subscribe = !session_present || self.fresh;
        self.fresh = false;
        let unsubscribe = if session_present {
            std::mem::take(&mut self.dropped_filters)
        } else {
            // A new session has none of the old subscriptions.
            self.dropped_filters.clear();
            Vec::new()
        };
        OnConnect {
            subscribe,
            unsubscribe,
            resent,
            confirmed,
        }
    }

    /// Our DISCONNECT went out.
    pub fn disconnect_sent(&mut self) -> AfterDisconnect {
        if !matches!(self.phase, Phase::Leaving { .. }) {
            return AfterDisconnect::Ignore;
        }
        self.next_generation();
        self.connected_at = None;
        let Phase::Leaving {
            then: Then::Reconnect(next),
            ..
        } = std::mem::replace(&mut self.phase, Phase::Down)
        else {
            self.phase = Phase::Stopped;
            return AfterDisconnect::Stop;
        };
        let (settings, options) = *next;
        self.apply(settings);
        AfterDisconnect::Reconnect(Box::new(options))
    }

    /// The connection failed (or could not be made).
    pub fn link_lost(&mut self, now: Instant) -> LinkLost {
        // Deliveries of the dead connection must not be acked on the next.
        self.next_generation();
        let recovered = self
            .connected_at
            .take()
            .is_some_and(|t| now.duration_since(t) >= STABLE_AFTER);
        match std::mem::replace(&mut self.phase, Phase::Down) {
            Phase::Leaving {
                then: Then::Stop, ..
            }
            | Phase::Stopped => {
                self.phase = Phase::Stopped;
                LinkLost {
                    stop: true,
                    ..LinkLost::default()
                }
            }
            Phase::Leaving {
                then: Then::Reconnect(next),
                queued,
            } => {
                let (settings, options) = *next;
                self.apply(settings);
                self.drop_queued_disconnect = queued;
                LinkLost {
                    apply: Some(Box::new(options)),
                    recovered,
                    ..LinkLost::default()
                }
            }
            Phase::Up | Phase::Down => LinkLost {
                recovered,
                ..LinkLost::default()
            },
        }
    }

    /// Takes back what rumqttc holds while there is no connection (it would drop
    /// it all if the broker has no session for us). After a failure rumqttc's
    /// `clean()` lists first what was pending and in flight (older than the
    /// backlog), then what was still in its request queue (newer).
    pub fn hold(&mut self, from_rumqttc: impl IntoIterator<Item = Request>) {
        let mut held: VecDeque<Request> = from_rumqttc.into_iter().collect();
        if std::mem::take(&mut self.drop_queued_disconnect) {
            held.retain(|r| !matches!(r, Request::Disconnect(_)));
        }
        let older: Vec<Request> = held
            .drain(..self.handed_to_rumqttc.min(held.len()))
            .collect();
        self.backlog.extend(held);
        for r in older.into_iter().rev() {
            self.backlog.push_front(r);
        }
        self.handed_to_rumqttc = 0;
    }

    /// What to hand rumqttc now, given `room` free in-flight slots: requests
    /// from the front of the backlog, QoS 1/2 publishes only as far as `room`
    /// allows (so packet ids never wrap onto ones the broker has yet to ack).
    pub fn feed(&mut self, mut room: usize) -> Vec<Request> {
        let mut out = Vec::new();
        while let Some(front) = self.backlog.front() {
            if confirmable(front) {
                if room == 0 {
                    break;
                }
                room -= 1;
            }
            out.extend(self.backlog.pop_front());
        }
        out
    }

    /// How many requests rumqttc holds now (pending and in flight): on a
    /// failure they come back ahead of the backlog (see [`Session::hold`]).
    pub fn handed(&mut self, n: usize) {
        self.handed_to_rumqttc = n;
    }

    /// The birth messages for a CONNACK. Without a session they go ahead of
    /// everything (returned, for the front of rumqttc's queue), so an `online`
    /// status is never stuck behind a backlog. With a resumed session, resends
    /// keep their packet ids and a birth message ahead of them could take one
    /// of those ids, so they join the backlog behind them.
    pub fn birth(&mut self, session_present: bool) -> Vec<Request> {
        let births = self.settings.birth.iter().map(|m| {
            let mut p = rumqttc::Publish::new(&m.topic, m.qos.into(), m.payload.clone());
            p.retain = m.retain;
            Request::Publish(p)
        });
        if session_present {
            self.backlog.extend(births);
            Vec::new()
        } else {
            births.collect()
        }
    }

    /// What was in flight when the connection dropped (now in the backlog).
    /// With a resumed session it goes out as rumqttc would: under the same
    /// packet ids. Without one, the broker knows none of those ids, so
    /// publishes go again as new ones (QoS 1/2 promise at-least-once; receivers
    /// drop duplicates by seq). A QoS 2 message the broker had already
    /// acknowledged with PUBREC cannot be resent (rumqttc no longer has it) and
    /// counts as confirmed; acks and subscriptions of the old session mean
    /// nothing to a new one. Returns (resent, confirmed).
    fn restore(&mut self, session_present: bool) -> (usize, u64) {
        if session_present {
            return (0, 0);
        }
        let (mut resent, mut confirmed) = (0, 0);
        for request in std::mem::take(&mut self.backlog) {
            match request {
                Request::Publish(mut p) => {
                    p.pkid = 0;
                    p.dup = false;
                    resent += 1;
                    self.backlog.push_back(Request::Publish(p));
                }
                Request::PubRel(_) => confirmed += 1,
                _ => {}
            }
        }
        (resent, confirmed)
    }

    fn apply(&mut self, settings: Settings) {
        let kept: Vec<&String> = settings.subscriptions.iter().map(|(f, _)| f).collect();
        // A filter dropped by an earlier reload and wanted again stays subscribed.
        self.dropped_filters.retain(|f| !kept.contains(&f));
        self.dropped_filters.extend(
            self.settings
                .subscriptions
                .iter()
                .map(|(f, _)| f.clone())
                .filter(|f| !kept.contains(&f)),
        );
        self.settings = settings;
        self.fresh = true;
        // New settings are connected with their first broker (`Handle::reconfigure`).
        self.endpoint = 0;
    }
}

/// A QoS 1/2 publish: it takes an in-flight slot and a packet id.
pub(super) fn confirmable(r: &Request) -> bool {
    matches!(r, Request::Publish(p) if p.qos != rumqttc::QoS::AtMostOnce)
}

/// Exponential backoff with "equal jitter": half the delay fixed, half random,
/// so a building full of nodes does not reconnect in lockstep after an outage.
pub(super) struct Backoff {
    /// The first delay, and the one after a reset.
    initial: Duration,
    /// The cap on the doubling.
    max: Duration,
    /// The base of the next delay (doubles up to `max`).
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    pub fn next(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base / 2 + base.mul_f64(fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Qos;
    use crate::mqtt::Message;
    use rumqttc::{Disconnect, PubRel, Publish, QoS};

    fn settings(filters: &[&str]) -> Settings {
        let broker = crate::mqtt::Broker {
            endpoints: vec![crate::mqtt::Endpoint {
                host: "localhost".into(),
                port: 1883,
            }],
            keep_alive: Duration::from_secs(5),
            tls: None,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
        };
        Settings {
            client_id: "node".into(),
            broker,
            last_will: None,
            birth: vec![Message {
                topic: "b/status".into(),
                payload: b"online".to_vec(),
                qos: Qos::AtLeastOnce,
                retain: true,
            }],
            subscriptions: filters
                .iter()
                .map(|f| (f.to_string(), Qos::AtLeastOnce))
                .collect(),
            manual_acks: true,
        }
    }

    fn session(filters: &[&str]) -> Session {
        Session::new(settings(filters), Arc::new(AtomicU64::new(0)))
    }

    fn options() -> MqttOptions {
        MqttOptions::new("node", "localhost", 1883)
    }

    fn publish(pkid: u16, qos: QoS) -> Request {
        let mut p = Publish::new("t", qos, vec![pkid.to_le_bytes()[0]]);
        p.pkid = pkid;
        Request::Publish(p)
    }

    fn pkids(requests: &[Request]) -> Vec<u16> {
        requests
            .iter()
            .map(|r| match r {
                Request::Publish(p) => p.pkid,
                Request::PubRel(r) => r.pkid,
                _ => u16::MAX,
            })
            .collect()
    }

    #[test]
    fn brokers_are_tried_round_robin_and_new_settings_start_at_the_first() {
        let mut three = settings(&[]);
        three.broker.endpoints = ["a", "b", "c"]
            .iter()
            .map(|h| crate::mqtt::Endpoint {
                host: (*h).into(),
                port: 1883,
            })
            .collect();
        let mut s = Session::new(three.clone(), Arc::new(AtomicU64::new(0)));
        let mut seen = vec![];
        for _ in 0..4 {
            let next = s.next_endpoint().expect("three brokers");
            s.use_endpoint(next);
            seen.push(s.endpoint().1.map(|e| e.host.clone()));
        }
        assert_eq!(seen, ["b", "c", "a", "b"].map(|h| Some(h.to_owned())));
        assert!(s.reconfigure(three, options()).is_some(), "down: at once");
        assert_eq!(s.endpoint().0, 0);
        assert_eq!(session(&[]).next_endpoint(), None, "one broker: stay");
    }

    #[test]
    fn a_stop_while_down_stops_at_once_and_while_up_waits_for_confirmations() {
        let mut s = session(&[]);
        s.stop();
        assert!(matches!(s.phase(), Phase::Stopped));

        let mut s = session(&[]);
        s.connected(false, Instant::now());
        s.stop();
        assert!(s.is_connected(), "still connected until DISCONNECT is out");
        assert!(!s.wants_disconnect(3), "publishes still unconfirmed");
        assert!(s.wants_disconnect(0));
        s.disconnect_queued();
        assert!(!s.wants_disconnect(0), "queued once");
        assert!(matches!(s.disconnect_sent(), AfterDisconnect::Stop));
        assert!(matches!(s.phase(), Phase::Stopped));
    }

    #[test]
    fn a_reload_while_up_waits_for_our_disconnect_then_applies() {
        let mut s = session(&["a/#", "b/#"]);
        let first = s.connected(false, Instant::now());
        assert!(first.subscribe);
        assert!(s.reconfigure(settings(&["a/#"]), options()).is_none());
        assert!(
            s.wants_disconnect(5),
            "a reconnect does not wait for confirmations"
        );
        s.disconnect_queued();
        assert!(matches!(s.disconnect_sent(), AfterDisconnect::Reconnect(_)));
        assert!(matches!(s.phase(), Phase::Down));
        // The broker resumes the session made with both filters.
        let again = s.connected(true, Instant::now());
        assert!(
            again.subscribe,
            "new settings subscribe even on a resumed session"
        );
        assert_eq!(again.unsubscribe, vec!["b/#".to_string()]);
        let later = s.connected(true, Instant::now());
        assert_eq!(later, OnConnect::default(), "only once");
    }

    #[test]
    fn a_stop_during_a_reload_keeps_the_queued_disconnect() {
        let mut s = session(&[]);
        s.connected(false, Instant::now());
        s.reconfigure(settings(&[]), options());
        s.disconnect_queued();
        s.stop();
        assert!(
            !s.wants_disconnect(0),
            "the queued DISCONNECT serves the stop"
        );
        assert!(matches!(s.disconnect_sent(), AfterDisconnect::Stop));
    }

    #[test]
    fn a_link_lost_before_the_reload_disconnect_applies_and_drops_that_disconnect() {
        let mut s = session(&[]);
        s.connected(false, Instant::now());
        s.reconfigure(settings(&["x/#"]), options());
        s.disconnect_queued();
        s.handed(1);
        let lost = s.link_lost(Instant::now());
        assert!(!lost.stop);
        assert!(lost.apply.is_some());
        // rumqttc hands back its in-flight publish, then the queued DISCONNECT.
        s.hold([
            publish(7, QoS::AtLeastOnce),
            Request::Disconnect(Disconnect),
            publish(0, QoS::AtLeastOnce),
        ]);
        let out = s.feed(10);
        assert!(
            !out.iter().any(|r| matches!(r, Request::Disconnect(_))),
            "{out:?}"
        );
        assert_eq!(out.len(), 2);
        assert!(s.connected(true, Instant::now()).subscribe);
    }

    #[test]
    fn a_disconnect_we_did_not_ask_for_changes_nothing() {
        let mut s = session(&[]);
        s.connected(false, Instant::now());
        let g = s.generation();
        assert!(matches!(s.disconnect_sent(), AfterDisconnect::Ignore));
        assert!(matches!(s.phase(), Phase::Up));
        assert_eq!(s.generation(), g);
    }

    #[test]
    fn new_birth_messages_during_a_reload_survive_it() {
        let mut s = session(&[]);
        s.connected(false, Instant::now());
        s.reconfigure(settings(&["x/#"]), options());
        let birth = vec![Message {
            topic: "b/status".into(),
            payload: b"online, v2".to_vec(),
            qos: Qos::AtLeastOnce,
            retain: true,
        }];
        s.set_birth(birth.clone());
        s.disconnect_queued();
        s.disconnect_sent();
        assert_eq!(s.settings().birth, birth);
    }

    #[test]
    fn a_filter_dropped_then_wanted_again_is_not_unsubscribed() {
        let mut s = session(&["a/#", "b/#"]);
        s.connected(false, Instant::now());
        s.link_lost(Instant::now());
        assert!(s.reconfigure(settings(&["a/#"]), options()).is_some());
        assert!(s
            .reconfigure(settings(&["a/#", "b/#"]), options())
            .is_some());
        let on = s.connected(true, Instant::now());
        assert!(on.subscribe);
        assert!(on.unsubscribe.is_empty(), "{:?}", on.unsubscribe);
    }

    #[test]
    fn a_link_lost_while_stopping_stops() {
        let mut s = session(&[]);
        s.connected(false, Instant::now());
        s.stop();
        assert!(s.link_lost(Instant::now()).stop);
        assert!(matches!(s.phase(), Phase::Stopped));
    }

    #[test]
    fn held_requests_keep_their_order_and_resend_as_new_without_a_session() {
        let mut s = session(&[]);
        s.connected(false, Instant::now());
        // Backlog from an earlier drop, fed in part: 3 in rumqttc's hands.
        s.hold([publish(4, QoS::AtLeastOnce), publish(5, QoS::AtLeastOnce)]);
        s.handed(3);
        s.link_lost(Instant::now());
        // rumqttc gives back its three (older) and one newer request.
        s.hold([
            publish(1, QoS::AtLeastOnce),
            publish(2, QoS::ExactlyOnce),
            Request::PubRel(PubRel::new(3)),
            publish(9, QoS::AtLeastOnce),
        ]);
        let on = s.connected(false, Instant::now());
        assert_eq!(on.resent, 5);
        assert_eq!(
            on.confirmed, 1,
            "the PUBREC'd QoS 2 message counts as confirmed"
        );
        let out = s.feed(100);
        let payloads: Vec<u8> = out
            .iter()
            .map(|r| match r {
                Request::Publish(p) => p.payload[0],
                _ => 0,
            })
            .collect();
        assert_eq!(payloads, vec![1, 2, 4, 5, 9], "oldest first");
        assert!(pkids(&out).iter().all(|&id| id == 0), "new packet ids");
    }

    #[test]
    fn a_resumed_session_resends_under_the_same_ids_and_births_queue_behind() {
        let mut s = session(&[]);
        s.connected(false, Instant::now());
        s.link_lost(Instant::now());
        s.hold([
            publish(1, QoS::AtLeastOnce),
            Request::PubRel(PubRel::new(2)),
        ]);
        let on = s.connected(true, Instant::now());
        assert_eq!((on.resent, on.confirmed), (0, 0));
        assert!(s.birth(true).is_empty(), "births join the backlog");
        let out = s.feed(100);
        assert_eq!(pkids(&out), vec![1, 2, 0], "resends first, birth last");
        assert_eq!(s.birth(false).len(), 1, "without a session: to the front");
    }

    #[test]
    fn feeding_respects_the_in_flight_room_but_not_for_qos_0() {
        let mut s = session(&[]);
        s.hold([
            publish(0, QoS::AtLeastOnce),
            publish(0, QoS::AtMostOnce),
            publish(0, QoS::AtLeastOnce),
            publish(0, QoS::AtMostOnce),
        ]);
        assert_eq!(
            s.feed(1).len(),
            2,
            "one confirmable and the QoS 0 behind it"
        );
        assert_eq!(s.feed(0).len(), 0);
        assert_eq!(s.feed(1).len(), 2);
    }

    #[test]
    fn every_connection_change_moves_the_generation() {
        let mut s = session(&[]);
        let g0 = s.generation();
        s.connected(false, Instant::now());
        let g1 = s.generation();
        s.link_lost(Instant::now());
        let g2 = s.generation();
        s.connected(true, Instant::now());
        s.stop();
        s.disconnect_sent();
        assert!(g0 < g1 && g1 < g2 && g2 < s.generation());
    }

    #[test]
    fn a_connection_that_lasted_is_a_recovery() {
        let mut s = session(&[]);
        let t = Instant::now();
        s.connected(false, t);
        assert!(!s.link_lost(t + Duration::from_secs(1)).recovered);
        s.connected(false, t);
        assert!(s.link_lost(t + STABLE_AFTER).recovered);
        assert!(
            !s.link_lost(t + STABLE_AFTER * 2).recovered,
            "not connected"
        );
    }

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
