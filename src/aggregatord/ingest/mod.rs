//! The ingest loop: take what the broker delivered, validate it, store it,
//! evaluate alert rules, flush, and only then acknowledge it.
//!
//! Group commit: a batch is every event already waiting plus whatever arrives
//! within `batch_window` of the first (or, while it holds fewer than
//! `batch_fill`, within `batch_linger`), up to `batch_max`; one fsync covers it
//! (readings, rejections and any alert changes they caused), then every message
//! in it is acknowledged. Under load one fsync covers many readings; when idle a
//! reading waits at most the linger (flash wear: an fsync per reading or two
//! writes a page each time).
//!
//! It waits on no signal or timer of the daemon's (aggregatord's main loop
//! does, and calls `next`/`handle`), and knows no rumqttc or sled: it acks
//! through `mqtt::Acker` and writes through `store::Store`. This file is the
//! durability path (`next`, `handle`, `gather`, `sort`, `commit`); forgetting
//! is forget.rs's, the energy meter's rule meter.rs's, and what a topic or a
//! payload may be the contract's (`judge_topic`, `validate_*`).

mod forget;
mod meter;

use super::census::Census;
use super::dashboard::Live;
use super::metrics::Metrics;
use crate::alerts::Engine;
use crate::config::IngestConfig;
use crate::contract::{
    judge_topic, topic, validate_reading, validate_status, Alert, AlertState, Arrived, Rejection,
    RejectionReason, SensorTopic, Timestamp,
};
use crate::daemon::RateLimit;
use crate::mqtt::{Acker, Delivery, Event};
use crate::store::{Inserted, RejectedMessage, Store, StoreError, StoredReading};
use anyhow::Context;
use meter::{meter_check, Meter};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, error, info, warn};

/// Where ingest's results go besides storage: counters, the dashboard, and a
/// nudge for the alert publisher.
pub struct Outputs {
    /// The counters `/metrics` and the status line show.
    pub metrics: Arc<Metrics>,
    /// What the dashboard shows, fed after each commit.
    pub live: Arc<Live>,
    /// Nudges the alert publisher when the outbox has something new.
    pub alerts_ready: Arc<Notify>,
}

/// What ingest takes orders from besides the broker.
pub struct Inputs {
    /// The daemon's stop signal: ends storage retries.
    pub stop: tokio_util::sync::CancellationToken,
    /// `aggregatord forget` requests, from the control socket.
    pub forget_requests: mpsc::Receiver<super::control::Forget>,
}

/// What ingest has to do next: see [`Ingest::next`].
pub enum Work {
    /// The first event of a batch.
    Event(Event),
    /// The MQTT connection task ended: nothing more will arrive.
    Closed,
    /// Time to look at `for` durations and stale sensors.
    AlertTick,
    /// An `aggregatord forget` request.
    Forget(super::control::Forget),
    /// Time to look for sensors silent for `ingest.forget_after`.
    ForgetSilent,
}
/// The alert raised once when a cap on sensors or rooms first refuses one.
pub const LIMITS_RULE: &str = "limits";
/// How often `for` durations and stale sensors are checked.
const ALERT_TICK: Duration = Duration::from_secs(1);
/// How often sensors are checked against `ingest.forget_after`.
const FORGET_CHECK: Duration = Duration::from_secs(1);

/// The durability path and the state it judges by: batches deliveries,
/// validates and stores them, runs the alert rules, makes it all durable,
/// then acknowledges. Driven by aggregatord's main loop through
/// [`Ingest::next`] and [`Ingest::handle`].
pub struct Ingest {
    /// The `ingest:` settings (batching, caps, `max_age`, `forget_after`).
    config: IngestConfig,
    /// Where readings, rejections and alert changes go.
    store: Store,
    /// Acknowledges on the ingest connection (which `aggregatord::run` owns).
    acker: Acker,
    /// Alert rules and their state; pure logic, fed every new reading.
    engine: Engine,
    /// Known sensors and rooms, and the caps on new ones.
    census: Census,
    /// Whether this run has raised its one `limits` alert yet.
    limit_alerted: bool,
    /// Holes in each sensor's seq numbering: loss upstream of us.
    gaps: super::gaps::Gaps,
    /// Tells the alert publisher there is something in the outbox.
    alerts_ready: Arc<Notify>,
    /// Counters, shared with the dashboard's `/metrics`.
    metrics: Arc<Metrics>,
    /// The dashboard's state, fed only after a commit (it shows what is stored).
    live: Arc<Live>,
    /// Rejections are logged at most once per reason per period.
    log_limit: RateLimit<RejectionReason>,
    /// Connections made so far: a lost session matters only after the first.
    connects: u64,
    /// Current wait between attempts while storage fails.
    storage_retry: Duration,
    /// The daemon's stop signal: ends storage retries.
    stop: tokio_util::sync::CancellationToken,
    /// `aggregatord forget` requests, from the control socket.
    forget_requests: mpsc::Receiver<super::control::Forget>,
    /// When to look at alert durations and stale sensors.
    alert_tick: tokio::time::Interval,
    /// When to look for sensors silent for `forget_after`.
    forget_check: tokio::time::Interval,
}

/// What one batch will write.
struct Batch {
    /// Valid readings, to be stored (or found stored already).
    readings: Vec<Arrival>,
    /// Refused messages, kept for `dump --rejected`.
    rejected: Vec<RejectedMessage>,
    /// Alert changes the batch caused (status messages, caps), before storage.
    alerts: Vec<Alert>,
    /// Every message of the batch, acknowledged once it is all on disk.
    acks: Vec<Delivery>,
    /// When its first message arrived (for the ack-lag histogram).
    started: std::time::Instant,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            readings: Vec::new(),
            rejected: Vec::new(),
            alerts: Vec::new(),
            acks: Vec::new(),
            started: std::time::Instant::now(),
        }
    }
}

/// A valid reading of a batch: its topic split once into typed parts (what
/// alerts, gaps and the meter check go by), and the record to store.
struct Arrival {
    /// Room, type and id, from the topic.
    sensor: SensorTopic,
    /// What storage keeps.
    record: StoredReading,
}

/// What became of a reading in storage.
enum Outcome {
    /// With the value it dropped from, if it was an energy meter reset.
    Stored(Inserted, Option<f64>),
    /// Refused on what is already stored (a meter running backwards).
    Refused(Rejection),
}

impl Ingest {
    pub fn new(
        config: IngestConfig,
        store: Store,
        acker: Acker,
        engine: Engine,
        census: Census,
        out: Outputs,
        inputs: Inputs,
    ) -> Self {
        let mut alert_tick = tokio::time::interval(ALERT_TICK);
        alert_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut forget_check = tokio::time::interval(FORGET_CHECK);
        forget_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut gaps = super::gaps::Gaps::default();
        // Holes across our restart count from each sensor's newest stored
        // reading; without it they would pass unseen (only a count is lost).
        match store.last_seqs() {
            Ok(seeds) => seeds.iter().for_each(|(topic, seq)| gaps.seed(topic, *seq)),
            Err(e) => warn!(error = %e, "readings missing across the restart will not be counted"),
        }
        Ingest {
            config,
            store,
            acker,
            engine,
            census,
            limit_alerted: false,
            gaps,
            alerts_ready: out.alerts_ready,
            metrics: out.metrics,
            live: out.live,
            log_limit: RateLimit::new(Duration::from_secs(10)),
            connects: 0,
            storage_retry: Duration::ZERO,
            stop: inputs.stop,
            forget_requests: inputs.forget_requests,
            alert_tick,
            forget_check,
        }
    }

    /// Stores and publishes alert changes that no message caused.
    pub async fn record_alerts(&mut self, changes: Vec<Alert>) -> anyhow::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.commit(Batch {
            alerts: changes,
            ..Batch::default()
        })
        .await
    }

    /// New `ingest:` settings and alert rules (a reload).
    pub async fn reconfigure(
        &mut self,
        config: IngestConfig,
        rules: Vec<crate::alerts::Rule>,
    ) -> anyhow::Result<()> {
        self.config = config;
        let changes = self.engine.set_rules(rules);
        if !changes.is_empty() {
            self.commit(Batch {
                alerts: changes,
                ..Batch::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Waits for work: a message, a timer, a request. Cancel-safe (it only
    /// waits), so the daemon's main loop can select on it next to its signals;
    /// the work itself is done by [`Ingest::handle`], which is never cancelled.
    pub async fn next(&mut self, events: &mut mpsc::Receiver<Event>) -> Work {
        let has_rules = self.engine.has_rules();
        let forgets = self.config.forget_after.is_some();
        tokio::select! {
            event = events.recv() => event.map_or(Work::Closed, Work::Event),
            _ = self.alert_tick.tick(), if has_rules => Work::AlertTick,
            Some(request) = self.forget_requests.recv() => Work::Forget(request),
            _ = self.forget_check.tick(), if forgets => Work::ForgetSilent,
        }
    }

    /// Does one piece of work to the end. A message starts a batch: every
    /// event already waiting, and whatever arrives within `batch_window`, up
    /// to `batch_max`; then it is stored, flushed and acknowledged.
    pub async fn handle(
        &mut self,
        work: Work,
        events: &mut mpsc::Receiver<Event>,
    ) -> anyhow::Result<()> {
        match work {
            Work::Event(first) => {
                let batch = self.gather(first, events).await;
                self.commit(batch).await
            }
            Work::AlertTick => {
                let changes = self.engine.tick(Timestamp::now_millis());
                self.record_alerts(changes).await
            }
            Work::Forget(request) => {
                let answer = self
                    .forget(
                        &request.query,
                        "forgotten by the operator (aggregatord forget)",
                    )
                    .await?;
                let _ = request
                    .reply
                    .send(answer.map(|f| f.to_string()).map_err(|r| r.to_string()));
                Ok(())
            }
            Work::ForgetSilent => self.forget_silent().await,
            Work::Closed => Ok(()),
        }
    }

    /// A batch: `first`, what is already waiting, then what arrives within the
    /// window. Not cancel-safe (it holds deliveries), hence not in a select.
    async fn gather(&mut self, first: Event, events: &mut mpsc::Receiver<Event>) -> Batch {
        let mut batch = Batch::default();
        self.sort(first, &mut batch);
        let start = tokio::time::Instant::now();
        let window = start + self.config.batch_window;
        // Lingering only makes a batch longer, never shorter than the window.
        let linger = self
            .config
            .batch_linger
            .map_or(window, |l| (start + l).max(window));
        while batch.acks.len() < self.config.batch_max {
            // The window, or the linger while the batch is short of batch_fill.
            let deadline = if batch.acks.len() < self.config.batch_fill() {
                linger
            } else {
                window
            };
            // Take what is already waiting; then wait for more, up to the deadline.
            let event = match events.try_recv() {
                Ok(event) => event,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => event,
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                },
            };
            self.sort(event, &mut batch);
        }
        batch
    }

    /// Sorts one event into the batch; nothing is written yet.
    fn sort(&mut self, event: Event, batch: &mut Batch) {
        let delivery = match event {
            Event::Message(d) => d,
            other => return self.connection(&other),
        };
        self.metrics.received.fetch_add(1, Relaxed);
        let received_at = Timestamp::now_millis();
        let (topic, payload) = (delivery.topic(), delivery.payload());
        // The topic is parsed and held to the contract once, here.
        let outcome = judge_topic(topic, payload).and_then(|arrived| match arrived {
            Arrived::Reading(sensor) => {
                let reading = validate_reading(&sensor, payload, received_at.0)?;
                self.too_old(&reading, received_at)?;
                self.census.admit_sensor(
                    sensor.room(),
                    sensor.as_str(),
                    &self.config,
                    received_at,
                )?;
                let record = StoredReading {
                    topic: sensor.as_str().to_owned(),
                    reading,
                    received_at,
                    qos: delivery.qos().into(),
                };
                batch.readings.push(Arrival { sensor, record });
                Ok(())
            }
            Arrived::Status { prefix } => {
                self.census.admit_room(prefix, &self.config)?;
                let Some(status) = validate_status(prefix, payload)? else {
                    info!(prefix, "node status cleared");
                    return Ok(());
                };
                info!(
                    prefix,
                    node = %status.node,
                    status = ?status.status,
                    reason = status.reason.as_deref().unwrap_or(""),
                    client_id = status.client_id.as_deref().unwrap_or(""),
                    "node status"
                );
                self.live.status(prefix, &status, received_at);
                batch
                    .alerts
                    .extend(self.engine.status(prefix, &status, received_at));
                Ok(())
            }
            // Our own alerts (and other aggregators'): not readings, nothing to store.
            Arrived::Alert => Ok(()),
        });
        self.census_gauges();
        if let Err(rejection) = outcome {
            if matches!(
                rejection.reason,
                RejectionReason::TooManySensors | RejectionReason::TooManyRooms
            ) {
                batch
                    .alerts
                    .extend(self.limit_alert(topic, &rejection, received_at));
            }
            self.note_rejection(topic, &rejection);
            batch
                .rejected
                .push(rejected_message(topic, payload, rejection, received_at));
        }
        batch.acks.push(delivery);
    }

    /// A connection event: counted, and said when the broker lost our session.
    fn connection(&mut self, event: &Event) {
        match event {
            Event::Connected { session_present } => {
                self.connects += 1;
                self.metrics.connected.store(true, Relaxed);
                if self.connects > 1 {
                    self.metrics.reconnects.fetch_add(1, Relaxed);
                }
                // A fresh session on the very first start is expected; later it
                // means the broker forgot us, and readings sent meanwhile are gone.
                if !session_present && self.connects > 1 {
                    let lost = self.metrics.sessions_lost.fetch_add(1, Relaxed) + 1;
                    warn!(
                        sessions_lost = lost,
                        "BROKER LOST OUR SESSION: readings published while we were disconnected were not queued for us; resubscribing"
                    );
                }
            }
            Event::Disconnected { .. } => self.metrics.connected.store(false, Relaxed),
            Event::Message(_) => {}
        }
    }

    /// The first refusal past a cap raises one alert for the whole run, not one
    /// per sensor: thousands of alerts would be their own flood. It is cleared at
    /// the next start (no rule of that name exists to keep it).
    fn limit_alert(&mut self, topic: &str, r: &Rejection, now: Timestamp) -> Option<Alert> {
        if std::mem::replace(&mut self.limit_alerted, true) {
            return None;
        }
        let room = match topic::parse(topic) {
            topic::Parsed::Reading { prefix, .. } | topic::Parsed::Status { prefix } => prefix,
            _ => topic,
        };
        Some(Alert::warning(
            LIMITS_RULE,
            AlertState::Raised,
            (room, topic),
            format!("{}: {} (first refused: {topic})", r.reason, r.detail),
            now,
            now,
        ))
    }

    /// Refuses a reading older than `max_age`: retention would delete it at
    /// once (a clock in 1970, a node replaying a week-old buffer).
    fn too_old(&self, r: &crate::contract::Reading, now: Timestamp) -> Result<(), Rejection> {
        let Some(max_age) = self.config.max_age else {
            return Ok(());
        };
        let limit = chrono::Duration::from_std(max_age)
            .ok()
            .and_then(|age| now.0.checked_sub_signed(age));
        match limit {
            Some(limit) if r.timestamp.0 < limit => Err(Rejection::new(
                RejectionReason::TooOld,
                format!(
                    "{} is more than {} old (ingest.max_age, by default storage.retention)",
                    r.timestamp,
                    humantime::format_duration(max_age)
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A new reading's seq: counts holes (loss upstream), and raises or clears
    /// the room's `readings_missing` alert (see gaps.rs).
    fn gaps_seen(&mut self, a: &Arrival) -> Option<Alert> {
        let (r, prefix) = (&a.record, a.sensor.room());
        let seq = r.reading.seq?;
        let (before, missing, change) = self.gaps.seen(prefix, &r.topic, seq, r.received_at);
        // The shared map is touched only when the count moves, not per reading.
        if missing != before {
            self.metrics
                .set_missing(&r.topic, missing, self.gaps.total());
        }
        let (state, message) = match change? {
            super::gaps::Change::Raise(n) => (
                AlertState::Raised,
                format!(
                    "{n} readings missing from {} (lost before they reached us)",
                    r.topic
                ),
            ),
            super::gaps::Change::Clear => (
                AlertState::Cleared,
                format!(
                    "no new readings missing for {}",
                    humantime::format_duration(super::gaps::QUIET)
                ),
            ),
        };
        Some(Alert {
            value: Some(missing as f64),
            ..Alert::warning(
                super::gaps::RULE,
                state,
                (prefix, &r.topic),
                message,
                self.gaps.raised_at(prefix).unwrap_or(r.received_at),
                r.received_at,
            )
        })
    }

    /// The known-sensors and known-rooms gauges, from the census.
    fn census_gauges(&self) {
        let m = &self.metrics;
        m.known_sensors.store(
            i64::try_from(self.census.sensors()).unwrap_or(i64::MAX),
            Relaxed,
        );
        m.known_rooms.store(
            i64::try_from(self.census.rooms()).unwrap_or(i64::MAX),
            Relaxed,
        );
    }

    /// Counts and logs (rate-limited) a refused message.
    fn note_rejection(&mut self, topic: &str, r: &Rejection) {
        let total = self.metrics.reject(r.reason);
        if let Some(suppressed) = self.log_limit.allow(r.reason) {
            warn!(topic, reason = %r.reason, detail = %r.detail, total, suppressed, "rejected message");
        }
    }

    /// Writes the batch, makes it durable, then acknowledges it. The order is the
    /// durability promise: no ack leaves before its reading is on disk.
    ///
    /// If storage fails (disk full, I/O error), nothing is acknowledged: the
    /// batch is retried with backoff until storage works again (readiness says
    /// not ready meanwhile), while the broker holds everything unacknowledged.
    async fn commit(&mut self, batch: Batch) -> anyhow::Result<()> {
        let Batch {
            readings,
            rejected,
            alerts: mut changes,
            acks,
            started,
        } = batch;
        let readings = Arc::new(readings);
        // Alert rules see each new reading once, however many attempts it takes.
        let mut evaluated = vec![false; readings.len()];
        let mut seen_new = vec![false; readings.len()];
        let (flush_time, outcomes) = loop {
            // Insert every reading: after a failure the database may have been
            // reopened without what the failed attempt had not yet flushed.
            let (store, batch) = (self.store.clone(), readings.clone());
            let (outcomes, attempt) = tokio::task::spawn_blocking(move || {
                let mut outcomes = Vec::with_capacity(batch.len());
                let result = insert_all(&store, &batch, &mut outcomes);
                (outcomes, result)
            })
            .await
            .context("storage task panicked")?;
            // New is decided before the write; a failed attempt's writes may
            // still survive, and the retry would call those readings duplicates.
            for (i, outcome) in outcomes.iter().enumerate() {
                if matches!(outcome, Outcome::Stored(Inserted::New, _)) {
                    seen_new[i] = true;
                }
            }
            if let Err(e) = attempt {
                self.storage_failed(e).await?;
                continue;
            }
            let mut refused = rejected.clone();
            for (i, (a, outcome)) in readings.iter().zip(&outcomes).enumerate() {
                let r = &a.record;
                match outcome {
                    Outcome::Stored(..) if seen_new[i] => {
                        if !std::mem::replace(&mut evaluated[i], true) {
                            changes.extend(self.engine.reading(&a.sensor, r));
                            changes.extend(self.gaps_seen(a));
                        }
                    }
                    Outcome::Refused(why) => {
                        let payload = serde_json::to_vec(&r.reading).unwrap_or_default();
                        refused.push(rejected_message(
                            &r.topic,
                            &payload,
                            why.clone(),
                            r.received_at,
                        ));
                    }
                    Outcome::Stored(..) => {}
                }
            }
            // Then alert changes and rejections, and the one fsync. A retry may
            // record an alert change twice (then it is sent twice: at-least-once).
            let (store, c) = (self.store.clone(), changes.clone());
            let to_acknowledge = acks.len();
            let attempt = tokio::task::spawn_blocking(move || {
                store.record_alerts(&c)?;
                for m in &refused {
                    store.insert_rejected(m)?;
                }
                // Tests stop here (tests/system/durability.rs): nothing of this
                // batch may have been acknowledged yet.
                crate::faults::hold(
                    "ingest::before_flush",
                    to_acknowledge > 0,
                    format_args!("acks={to_acknowledge}"),
                );
                let t = std::time::Instant::now();
                let bytes = store.flush()?;
                Ok::<_, StoreError>((t.elapsed(), bytes))
            })
            .await
            .context("storage task panicked")?;
            match attempt {
                Ok((t, bytes)) => {
                    self.metrics
                        .flushed_bytes
                        .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Relaxed);
                    break (t, outcomes);
                }
                Err(e) => self.storage_failed(e).await?,
            }
        };
        let stored_at = chrono::Utc::now().timestamp_micros();
        for (i, (a, outcome)) in readings.iter().zip(outcomes).enumerate() {
            let r = &a.record;
            if seen_new[i] {
                let age = stored_at.saturating_sub(r.reading.timestamp.micros());
                let age = Duration::from_micros(u64::try_from(age).unwrap_or(0));
                self.metrics.reading_age_seconds.observe(age);
            }
            self.account(r, outcome, seen_new[i]);
        }
        if !self.metrics.storage_ok.swap(true, Relaxed) {
            info!("storage works again; acknowledging");
        }
        self.storage_retry = Duration::ZERO;
        self.metrics.flush_seconds.observe(flush_time);
        for a in &changes {
            let counter = match a.state {
                AlertState::Raised => &self.metrics.alerts_raised,
                AlertState::Cleared => &self.metrics.alerts_cleared,
            };
            counter.fetch_add(1, Relaxed);
            self.live.alert(a);
            info!(rule = %a.rule, room = %a.room, state = %a.state, value = ?a.value, "alert");
        }
        if !changes.is_empty() {
            self.alerts_ready.notify_one();
        }
        self.acker.ack(&acks);
        self.metrics
            .ack_lag_seconds
            .observe_n(started.elapsed(), acks.len() as u64);
        Ok(())
    }

    /// Counts one reading of a committed batch, and shows it on the dashboard.
    fn account(&mut self, r: &StoredReading, outcome: Outcome, new: bool) {
        match outcome {
            Outcome::Stored(_, reset) if new => {
                self.metrics.stored.fetch_add(1, Relaxed);
                if let Some(from) = reset {
                    self.metrics.meter_resets.fetch_add(1, Relaxed);
                    info!(topic = %r.topic, from, to = r.reading.value, "energy meter reset: a new series starts");
                }
                self.live.reading(r, false);
                debug!(topic = %r.topic, seq = ?r.reading.seq, "stored reading");
            }
            Outcome::Stored(..) => {
                self.metrics.duplicates.fetch_add(1, Relaxed);
                debug!(topic = %r.topic, seq = ?r.reading.seq, "duplicate reading");
            }
            Outcome::Refused(refusal) => self.note_rejection(&r.topic, &refusal),
        }
    }

    /// Storage refused a write: say so (once per outage), wait, let the caller
    /// retry. Gives up only when the daemon is stopping; what was not
    /// acknowledged is then redelivered by the broker after the restart.
    async fn storage_failed(&mut self, e: StoreError) -> anyhow::Result<()> {
        if self.metrics.storage_ok.swap(false, Relaxed) {
            error!(error = %e, "STORAGE FAILED: not acknowledging anything until it works again");
        } else {
            debug!(error = %e, "storage still failing");
        }
        self.storage_retry =
            (self.storage_retry * 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
        tokio::select! {
            () = self.stop.cancelled() => anyhow::bail!("stopping while storage fails: {e} (unacknowledged readings stay with the broker)"),
            () = tokio::time::sleep(self.storage_retry) => {}
        }
        // sled refuses every write after an I/O error until it is opened again.
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.reopen()).await {
            Ok(Ok(())) => info!("storage reopened"),
            Ok(Err(e)) => debug!(error = %e, "storage cannot be reopened yet"),
            Err(_) => {}
        }
        Ok(())
    }

    /// One line for systemd's `STATUS=`, after `link` (the connection's
    /// `Handle::describe_link`: which broker, in a cluster).
    pub fn status_line(&self, link: &str) -> String {
        let m = &self.metrics;
        format!(
            "{link}; {:.1} readings/s; stored {}, duplicates {}, rejected {}",
            self.live.rate(Timestamp::now_millis()),
            m.stored.load(Relaxed),
            m.duplicates.load(Relaxed),
            m.rejected_total()
        )
    }

    pub fn log_totals(&self, what: &str) {
        let m = &self.metrics;
        let by_reason = m
            .rejected()
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        info!(
            received = m.received.load(Relaxed),
            stored = m.stored.load(Relaxed),
            duplicates = m.duplicates.load(Relaxed),
            rejected = m.rejected_total(),
            rejected_by_reason = %by_reason,
            alerts = m.alerts_raised.load(Relaxed) + m.alerts_cleared.load(Relaxed),
            sessions_lost = m.sessions_lost.load(Relaxed),
            readings_missing = m.missing_total.load(Relaxed),
            "{what}"
        );
    }
}

/// What is kept of a refused message for `dump --rejected`: the payload as it
/// came, lossily decoded and cut to 1 KiB.
fn rejected_message(
    topic: &str,
    payload: &[u8],
    r: Rejection,
    received_at: Timestamp,
) -> RejectedMessage {
    RejectedMessage {
        topic: topic.to_owned(),
        reason: r.reason.to_string(),
        detail: r.detail,
        received_at,
        payload: String::from_utf8_lossy(&payload[..payload.len().min(1024)]).into_owned(),
    }
}

/// Stores a batch through one writer, recording each reading's outcome as it
/// is decided (so a caller sees them even when a later write fails).
fn insert_all(
    store: &Store,
    batch: &[Arrival],
    outcomes: &mut Vec<Outcome>,
) -> Result<(), StoreError> {
    let mut writer = store.reading_writer()?;
    for a in batch {
        let r = &a.record;
        outcomes.push(match meter_check(&writer, a)? {
            Meter::Refused(refusal) => Outcome::Refused(refusal),
            Meter::Counts => stored(r, writer.insert(r)?, None),
            Meter::Reset { from } => stored(r, writer.insert(r)?, Some(from)),
        });
    }
    writer.finish()
}

/// A conflict (same identity, another reading) is refused with its reason and
/// kept for inspection; the stored one stays.
fn stored(r: &StoredReading, inserted: Inserted, reset: Option<f64>) -> Outcome {
    match inserted {
        Inserted::Conflict => Outcome::Refused(Rejection::new(
            RejectionReason::ConflictingDuplicate,
            format!(
                "{} at {} seq {:?} is already stored with another value or seq; the first is kept",
                r.topic, r.reading.timestamp, r.reading.seq
            ),
        )),
        other => Outcome::Stored(other, reset),
    }
}
