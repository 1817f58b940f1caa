//! sensord: one node's simulated sensors, published on their own schedules and QoS.
//!
//! One loop ([`drive`]) decides when each sensor reads and asks the simulated
//! [`Node`] for the value; the [`Outbox`] task gets each reading to the broker or
//! buffers it while offline; a small task answers MQTT events (Home Assistant
//! restarts). `--dry-run` uses the same loop, printing instead of publishing.
//! It simulates nothing itself (values come from `sensors::Node`) and keeps no
//! reading across a restart: only the energy meter's value is saved.

mod discovery;
mod meter;
mod outbox;
mod schedule;
mod spool;

use crate::config::{self, SensorConfig, SensordConfig};
use crate::contract::Qos;
use crate::contract::{
    topic, NodeState, Reading, SensorType, Status, StatusSensor, Timestamp, REASON_CONNECTION_LOST,
    REASON_SHUTDOWN,
};
use crate::daemon;
use crate::mqtt::{self, Event, Handle, Message};
use crate::sensors::Node;
use anyhow::Context;
use chrono::{DateTime, Utc};
use outbox::Outbox;
use schedule::Timetable;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How long a clean stop may take: sending what is buffered, the offline status,
/// and waiting for the broker to confirm QoS 1/2 messages.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Readings between the schedule loop and the outbox; the outbox never waits long.
const OUTBOX_QUEUE: usize = 1024;

/// Entry point for the `sensord` binary.
pub fn main(config_path: &Path, check_only: bool) -> anyhow::Result<()> {
    daemon::start(config_path, check_only, preflight, run)
}

/// What start-up would refuse, checked up front (and by `--check-config`,
/// which also refuses a certificate that is not this node's: at start that
/// is an ERROR, and the node keeps trying, since a renewed certificate is
/// picked up at the next connect).
fn preflight(config: &SensordConfig, path: &Path, checking: bool) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    if let Some(tls) = &config.broker.tls {
        daemon::check_tls(path, "broker.tls", &tls.to_mqtt(), &mut notes)?;
        if checking {
            check_identity(config, path, &tls.to_mqtt())?;
        }
    }
    if let Some(dir) = &config.state_dir {
        if !dir.is_dir() {
            return Err(config::ConfigError::Invalid {
                file: path.to_owned(),
                line: None,
                key: "state_dir".into(),
                message: format!("{}: not a directory", dir.display()),
            }
            .into());
        }
    }
    Ok(notes)
}

/// The node's certificate is its own, and usable now. With the shipped broker
/// a node is known by its certificate's CN, whatever client id it sends, and
/// may publish only under a prefix ending in that name: another node's
/// certificate would have every reading refused, which over MQTT 3.1.1 the
/// broker does silently (issue 25). Refused here, by key and line, instead.
fn check_identity(
    config: &SensordConfig,
    path: &Path,
    files: &crate::mqtt::TlsFiles,
) -> anyhow::Result<()> {
    let id = crate::mqtt::certificate_identity(files)
        .and_then(|id| crate::mqtt::issued_by_ca(files, &id).map(|()| id))
        .with_context(|| format!("{}: broker.tls.cert_file", path.display()))?;
    let node = config.node.id.as_str();
    if id.common_name.as_deref() != Some(node) {
        let cn = id.common_name.as_deref().unwrap_or("(none)");
        return Err(config::invalid(
            path,
            "node.id",
            format!(
                "is {node}, but broker.tls.cert_file ({}) is issued to CN={cn}: the broker knows this node as {cn} and refuses what it publishes under {}; use {node}'s certificate, or set node.id and topic_prefix to {cn}'s",
                files.cert_file.display(),
                config.node.topic_prefix.as_str()
            ),
        )
        .into());
    }
    let now = Timestamp::now_millis().0.timestamp();
    let date = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
    };
    if now > id.not_after {
        return Err(config::invalid(
            path,
            "broker.tls.cert_file",
            format!(
                "{}: expired on {}: the broker refuses it; renew it",
                files.cert_file.display(),
                date(id.not_after)
            ),
        )
        .into());
    }
    // A clock before the build's date is not set yet (a board without a
    // real-time clock, before NTP): its "not yet valid" would be the clock's.
    if now < id.not_before && daemon::clock_is_set() {
        return Err(config::invalid(
            path,
            "broker.tls.cert_file",
            format!(
                "{}: not valid before {} (this machine's clock says {})",
                files.cert_file.display(),
                date(id.not_before),
                date(now)
            ),
        )
        .into());
    }
    Ok(())
}

/// `sensord --dry-run`: readings as JSON lines on stdout, no broker. In real time
/// until Ctrl-C, or, with `simulate`, that much simulated time as fast as possible.
///
/// `from` sets where a simulation starts (default: now); with `room.seed` the
/// output is then the same on every run.
pub fn dry_run(
    config_path: &Path,
    simulate: Option<Duration>,
    from: Option<Timestamp>,
) -> anyhow::Result<()> {
    let config: SensordConfig = config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let (clock, stop) = match simulate {
            Some(span) => (Clock::Simulated { span }, CancellationToken::new()),
            None => (Clock::Realtime, daemon::signals()?.shutdown),
        };
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut failed = None;
        drive(&config, from, clock, &stop, |sensor, topic, reading| {
            #[derive(serde::Serialize)]
            struct Line<'a> {
                topic: &'a str,
                qos: u8,
                retain: bool,
                #[serde(flatten)]
                reading: &'a Reading,
            }
            if failed.is_some() {
                return;
            }
            let line = Line {
                topic,
                qos: sensor.qos().into(),
                retain: sensor.retain,
                reading: &reading,
            };
            let written = serde_json::to_writer(&mut out, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
                // In real time, show each reading as it happens.
                .and_then(|()| {
                    if simulate.is_none() {
                        out.flush()
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = written {
                failed = Some(e);
                stop.cancel();
            }
        })
        .await;
        match failed.map_or_else(|| out.flush(), Err) {
            // `sensord --dry-run | head` is normal use.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.context("writing readings"),
        }
    })
}

enum Clock {
    /// Sleeps until each reading is due: the daemon, and `--dry-run` without `--simulate`.
    Realtime,
    /// Never sleeps: readings are stamped `--from` (or now) + offset (`--simulate`).
    Simulated {
        /// Simulated time to cover; the run ends at the first reading due after it.
        span: Duration,
    },
}

/// Decides when each sensor reads and asks the simulated node for the value.
struct Driver {
    /// The config in force; a sensor's index is its place in `config.sensors`.
    config: SensordConfig,
    /// The simulated room and sensors: makes each reading (value, seq).
    node: Node,
    /// When each sensor reads next; rebuilt by `plan` on a reload.
    timetable: Timetable,
    /// Each sensor's reading topic, by index: built per plan, not per reading.
    topics: Vec<String>,
    /// Origin of the timetable's offsets (monotonic); reset when `plan` runs.
    started: tokio::time::Instant,
    /// Wall-clock start (or `--from`): simulated time, and sensors' faults and
    /// drift, count from it. Kept across reloads.
    started_at: DateTime<Utc>,
}

impl Driver {
    fn new(config: SensordConfig, start: Option<Timestamp>) -> Driver {
        let started_at = start.map_or_else(Utc::now, |t| t.0);
        let node = Node::new(&config, started_at);
        let mut d = Driver {
            timetable: Timetable::new(Vec::new(), fastrand::Rng::new()),
            topics: Vec::new(),
            node,
            config,
            started: tokio::time::Instant::now(),
            started_at,
        };
        d.plan();
        d
    }

    fn plan(&mut self) {
        let c = &self.config;
        self.topics = c
            .sensors
            .iter()
            .map(|s| topic::reading(&c.node.topic_prefix, s.sensor_type, &s.id))
            .collect();
        let intervals = c.sensors.iter().map(|s| s.interval).collect();
        let rng = c
            .room
            .seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        self.timetable = Timetable::new(intervals, rng);
        // A new timetable counts from now, not from the start.
        self.started = tokio::time::Instant::now();
    }

    /// New sensors or room, live: no reconnect, and surviving sensors keep their seq.
    fn reconfigure(&mut self, config: SensordConfig) {
        let room_changed = config.room != self.config.room;
        self.node
            .reconfigure(&config, room_changed, self.started_at);
        self.config = config;
        self.plan();
    }

    /// Waits for the next due reading (in real time) and takes it; `None` at the
    /// end of a simulated span. Cancel-safe: nothing changes until the wait is over.
    async fn next(&mut self, clock: &Clock) -> Option<(usize, Option<Reading>)> {
        let (i, due) = self.timetable.next()?;
        let (now, elapsed) = match clock {
            Clock::Realtime => {
                tokio::time::sleep_until(self.started + due).await;
                (Timestamp::now_millis().0, self.started.elapsed())
            }
            Clock::Simulated { span } => {
                if due > *span {
                    return None;
                }
                (millis(self.started_at + due), due)
            }
        };
        let reading = self.node.read(i, now);
        self.timetable.fired(i, elapsed);
        Some((i, reading))
    }
}

/// Runs every sensor's schedule until `stop` (or the end of a simulated span),
/// handing each reading to `emit` with its sensor and topic.
async fn drive(
    config: &SensordConfig,
    from: Option<Timestamp>,
    clock: Clock,
    stop: &CancellationToken,
    mut emit: impl FnMut(&SensorConfig, &str, Reading),
) {
    let mut driver = Driver::new(config.clone(), from);
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = driver.next(&clock) => next,
        };
        match next {
            None => return,
            Some((i, Some(reading))) => emit(&driver.config.sensors[i], &driver.topics[i], reading),
            Some((_, None)) => {}
        }
    }
}

fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// The MQTT settings a config implies: birth (online status, discovery), Last
/// Will, and the Home Assistant status subscription.
fn mqtt_settings(config: &SensordConfig, started_at: Timestamp) -> mqtt::Settings {
    let node = config.node.id.to_string();
    let online = Status {
        status: NodeState::Online,
        node: node.clone(),
        reason: None,
        client_id: None,
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        started_at: Some(started_at),
        sensors: config
            .sensors
            .iter()
            .map(|s| StatusSensor {
                id: s.id.to_string(),
                sensor_type: s.sensor_type.to_string(),
                unit: s.sensor_type.unit().to_owned(),
                qos: s.qos().into(),
            })
            .collect(),
    };
    let discovery = config
        .homeassistant
        .enabled
        .then(|| discovery::message(config));
    mqtt::Settings {
        client_id: node.clone(),
        broker: config.broker.to_mqtt(),
        last_will: Some(status_message(
            config,
            &Status::offline(&node, REASON_CONNECTION_LOST),
        )),
        birth: std::iter::once(status_message(config, &online))
            .chain(discovery.clone())
            .collect(),
        // Our own status comes back to us when the broker takes what we
        // publish (see `Echo`).
        subscriptions: std::iter::once((
            topic::status(&config.node.topic_prefix),
            Qos::AtLeastOnce,
        ))
        .chain(discovery.map(|_| (discovery::ha_status_topic(config), Qos::AtLeastOnce)))
        .collect(),
        manual_acks: false,
    }
}

fn status_message(config: &SensordConfig, s: &Status) -> Message {
    Message {
        topic: topic::status(&config.node.topic_prefix),
        payload: s.to_json(),
        qos: Qos::AtLeastOnce,
        retain: true,
    }
}

/// How often a clock not yet set is looked at again.
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// How often systemd's `STATUS=` line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);

pub async fn run(config: SensordConfig, config_path: std::path::PathBuf) -> anyhow::Result<()> {
    let signals = daemon::signals().context("installing signal handlers")?;
    let started_at = Timestamp::now_millis();
    let (mqtt, events) = mqtt::connect(mqtt_settings(&config, started_at))?;
    let mqtt = Arc::new(mqtt);
    info!(node = %config.node.id, sensors = config.sensors.len(), "sensord started");
    if let Some(tls) = &config.broker.tls {
        if let Err(e) = check_identity(&config, &config_path, &tls.to_mqtt()) {
            error!(error = %format!("{e:#}"), "this node's certificate will not do; trying anyway (a renewed one is read at each connect)");
        }
    }

    // Which discovery config to republish when Home Assistant restarts, and
    // where it says so; both follow reloads.
    let (discovery_tx, discovery_rx) = tokio::sync::watch::channel(Discovery::of(&config));
    let echo = Arc::new(Echo::default());
    let (status_topic_tx, status_topic_rx) =
        tokio::sync::watch::channel(topic::status(&config.node.topic_prefix));
    let events = tokio::spawn(answer_events(
        events,
        mqtt.clone(),
        discovery_rx,
        (echo.clone(), status_topic_rx, started_at),
    ));
    let (outbox_tx, outbox_rx) = mpsc::channel(OUTBOX_QUEUE);
    let mut outbox = Outbox::new(mqtt.clone(), config.offline_buffer);
    match (config.outbox.enabled, config.state_dir()) {
        (true, Some(dir)) => {
            outbox = outbox.with_file(
                &dir,
                config.outbox.max_size.as_u64(),
                config.outbox.sync_interval,
            );
        }
        (true, None) => warn!("no state_dir (nor $STATE_DIRECTORY): QoS 1/2 readings wait in memory only, lost if sensord stops while the broker is away"),
        (false, _) => info!("outbox off: QoS 1/2 readings wait in memory only"),
    }
    let outbox_gauge = outbox.gauge_handle();
    let mut outbox = tokio::spawn(outbox.run(outbox_rx));

    let meter = config
        .state_dir()
        .map(|dir| meter::MeterState::new(&dir, config.node.id.as_str()));
    let resumed = meter.as_ref().and_then(meter::MeterState::load);
    let mut driver = Driver::new(config, None);
    if let Some(kwh) = resumed {
        info!(
            energy_kwh = kwh,
            "energy meter resumed from its saved reading"
        );
        driver.node.room.resume_meter(kwh);
    }
    let mut meter_warned = daemon::RateLimit::new(Duration::from_secs(60));
    let mut outbox_full = 0u64;
    let mut made = 0u64;
    let mut watchdog = daemon::Watchdog::new();
    let mut status_every = tokio::time::interval(STATUS_EVERY);
    // For systemd's STATUS=: connection state, and readings per second since
    // the previous line.
    let mut last_status = (tokio::time::Instant::now(), 0u64);
    let mut status_line = |mqtt: &Handle, made: u64| {
        let (at, before) = std::mem::replace(&mut last_status, (tokio::time::Instant::now(), made));
        let rate = (made - before) as f64 / at.elapsed().as_secs_f64().max(0.001);
        let dropping = if echo.missing() {
            "; THE BROKER DROPS WHAT WE PUBLISH (see the log)"
        } else {
            ""
        };
        let waiting = outbox_gauge
            .waiting
            .load(std::sync::atomic::Ordering::Relaxed);
        let dropped = outbox_gauge
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        let outbox = match (waiting, dropped) {
            (0, 0) => String::new(),
            (w, 0) => format!("; {w} waiting in the outbox"),
            (w, d) => format!("; {w} waiting in the outbox, {d} DROPPED (outbox full)"),
        };
        format!(
            "{}; {rate:.1} readings/s; {made} made{outbox}{dropping}",
            mqtt.describe_link()
        )
    };
    // A board without a real-time clock starts with a wrong one until NTP
    // sets it: readings dated then would be refused (`too_old`) or misfiled.
    // So none is made until the clock is past this release's date (the
    // unit also orders after time-sync.target).
    let mut clock_wait = (!daemon::clock_is_set()).then(|| {
        warn!(
            clock = %Utc::now().to_rfc3339(),
            "waiting for the clock to be set (it is before this release's date); no reading is made until then"
        );
        tokio::time::interval(CLOCK_CHECK)
    });
    daemon::notify_ready(&status_line(&mqtt, made));
    loop {
        let next = tokio::select! {
            () = signals.shutdown.cancelled() => break,
            () = async { if let Some(w) = clock_wait.as_mut() { w.tick().await; } }, if clock_wait.is_some() => {
                if daemon::clock_is_set() {
                    info!(clock = %Utc::now().to_rfc3339(), "the clock is set; readings start");
                    clock_wait = None;
                }
                continue;
            }
            () = signals.reload.notified() => {
                if let Some(new) = daemon::reload_config::<SensordConfig>(&config_path) {
                    let changed = config::changed_keys(&driver.config, &new);
                    match mqtt.reconfigure(mqtt_settings(&new, started_at)) {
                        Ok(reconnecting) => {
                            info!(changed = ?changed, reconnecting, "configuration reloaded");
                            discovery_tx.send_replace(Discovery::of(&new));
                            status_topic_tx.send_replace(topic::status(&new.node.topic_prefix));
                            if new.offline_buffer != driver.config.offline_buffer {
                                warn!("offline_buffer takes effect at the next start");
                            }
                            driver.reconfigure(new);
                        }
                        Err(e) => error!(error = %e, "reload failed; still running on the previous configuration"),
                    }
                }
                daemon::notify_ready(&status_line(&mqtt, made));
                continue;
            }
            () = watchdog.tick() => continue,
            _ = status_every.tick() => {
                daemon::notify_status(&status_line(&mqtt, made));
                continue;
            }
            next = driver.next(&Clock::Realtime), if clock_wait.is_none() => next,
        };
        let Some((i, Some(reading))) = next else {
            continue;
        };
        made += 1;
        echo.made();
        let (sensor, topic) = (&driver.config.sensors[i], &driver.topics[i]);
        // Saved before it is published (see meter.rs); one small fsync per
        // energy reading, seconds apart, is fine on this thread.
        if let (Some(meter), SensorType::Energy) = (&meter, sensor.sensor_type) {
            if let Err(e) = meter.save(reading.value) {
                if let Some(suppressed) = meter_warned.allow(()) {
                    warn!(file = %meter.path().display(), error = %e, suppressed, "cannot save the energy meter; a restart will start it afresh");
                }
            }
        }
        debug!(topic = %topic, seq = ?reading.seq, value = reading.value, "reading");
        let message = Message {
            topic: topic.clone(),
            // A Reading (finite numbers, strings) always serializes.
            payload: serde_json::to_vec(&reading).unwrap_or_default(),
            qos: sensor.qos(),
            retain: sensor.retain,
        };
        if outbox_tx.try_send(message).is_err() {
            outbox_full += 1;
        }
    }

    // Stop: let the outbox send what it holds, say goodbye, disconnect.
    drop(outbox_tx);
    let mut outbox = if let Ok(done) = tokio::time::timeout(CLOSE_GRACE, &mut outbox).await {
        Some(done.context("outbox task failed")?.stopped())
    } else {
        outbox.abort();
        let _ = outbox.await;
        warn!("stopped before every buffered reading was sent");
        None
    };
    events.abort();
    let _ = events.await;
    let mqtt = Arc::into_inner(mqtt).context("a task still holds the MQTT connection")?;
    if mqtt.is_connected() {
        let node = driver.config.node.id.to_string();
        mqtt.publish(status_message(
            &driver.config,
            &Status::offline(&node, REASON_SHUTDOWN),
        ))
        .await?;
    }
    let unconfirmed = mqtt.close(CLOSE_GRACE).await;
    if unconfirmed > 0 {
        warn!(
            unconfirmed,
            "stopped before the broker confirmed every QoS 1/2 message"
        );
    }
    let counts = outbox.as_mut().map_or_else(outbox::Counts::default, |o| {
        o.closed(unconfirmed == 0);
        o.counts.clone()
    });
    info!(
        published = counts.published,
        dropped_offline = counts.dropped_offline,
        dropped_buffer_full = counts.dropped_buffer_full,
        dropped_queue_full = counts.dropped_queue_full + outbox_full,
        lost_at_exit = counts.lost_at_exit,
        outbox_kept = counts.kept_on_disk,
        outbox_replayed = counts.replayed,
        outbox_torn_bytes = counts.torn_bytes,
        likely_dropped_by_broker = echo.dropped(),
        "sensord stopped"
    );
    Ok(())
}

/// What sensord answers Home Assistant's restarts with.
#[derive(Debug, Clone)]
struct Discovery {
    /// The retained discovery config, published again.
    config: Message,
    /// Where Home Assistant says `online` when it (re)starts.
    ha_status: String,
}

impl Discovery {
    /// None when discovery is off.
    fn of(config: &SensordConfig) -> Option<Discovery> {
        config.homeassistant.enabled.then(|| Discovery {
            config: discovery::message(config),
            ha_status: discovery::ha_status_topic(config),
        })
    }
}

/// How long after connecting our own status must have come back.
const ECHO_DEADLINE: Duration = Duration::from_secs(15);

/// Whether the broker takes what we publish. Over MQTT 3.1.1 a broker that
/// refuses a publish (its ACL: another node's certificate, a prefix outside
/// the node's own) still acknowledges it, and drops it: sensord's counts
/// would say all was sent (issue 25). So sensord subscribes to its own status
/// topic; the birth message it publishes on every connect (retained, stamped
/// with this process's start) must come back within [`ECHO_DEADLINE`].
#[derive(Default)]
struct Echo {
    /// Set when the deadline passed without it; cleared when it comes.
    missing: AtomicBool,
    /// Whether it came since the last connect.
    seen: AtomicBool,
    /// Readings made since the last connect while it has not come yet.
    pending: AtomicU64,
    /// Readings made while it was missing, or before a deadline that passed:
    /// most likely dropped by the broker.
    dropped: AtomicU64,
}

impl Echo {
    fn missing(&self) -> bool {
        self.missing.load(Relaxed)
    }

    /// A reading was made.
    fn made(&self) {
        if self.missing() {
            self.dropped.fetch_add(1, Relaxed);
        } else if !self.seen.load(Relaxed) {
            self.pending.fetch_add(1, Relaxed);
        }
    }

    /// Connected: waiting for it again.
    fn connected(&self) {
        self.seen.store(false, Relaxed);
    }

    /// It came; returns whether it had been missing.
    fn came(&self) -> bool {
        self.seen.store(true, Relaxed);
        self.pending.store(0, Relaxed);
        self.missing.swap(false, Relaxed)
    }

    /// The deadline passed without it; returns whether that is news.
    fn overdue(&self) -> bool {
        let pending = self.pending.swap(0, Relaxed);
        self.dropped.fetch_add(pending, Relaxed);
        !self.missing.swap(true, Relaxed)
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

/// Republishes the discovery config when Home Assistant says it (re)started,
/// and watches for our own status coming back ([`Echo`]).
async fn answer_events(
    mut events: mpsc::Receiver<Event>,
    mqtt: Arc<Handle>,
    discovery: tokio::sync::watch::Receiver<Option<Discovery>>,
    (echo, status_topic, started_at): (Arc<Echo>, tokio::sync::watch::Receiver<String>, Timestamp),
) {
    // Armed at each connect, until our birth message is seen.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let due = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
            () = due => {
                deadline = None;
                if echo.overdue() {
                    error!(
                        topic = %*status_topic.borrow(),
                        waited = %humantime::format_duration(ECHO_DEADLINE),
                        "THE BROKER DROPS WHAT WE PUBLISH: our own status never came back. Readings are acknowledged and thrown away. Likely: this node's certificate is another node's (the broker knows a node by its certificate's CN), or topic_prefix is not one the broker's ACL allows this node (deploy/mosquitto/acl: building/<floor>/<node id>, and reading its own status)"
                    );
                }
                continue;
            }
        };
        if let Event::Connected { .. } = &event {
            echo.connected();
            deadline = Some(tokio::time::Instant::now() + ECHO_DEADLINE);
            continue;
        }
        let Event::Message(d) = &event else { continue };
        if d.topic() == status_topic.borrow().as_str() {
            let ours = serde_json::from_slice::<Status>(d.payload())
                .is_ok_and(|s| s.status == NodeState::Online && s.started_at == Some(started_at));
            if ours {
                deadline = None;
                if echo.came() {
                    info!("the broker delivers what we publish again");
                }
            }
            continue;
        }
        // The current config's, not start-up's: a reload may move the topic.
        let current = discovery.borrow().clone();
        if let Some(discovery) = current {
            if d.topic() == discovery.ha_status && d.payload() == b"online" {
                info!("Home Assistant started; republishing discovery config");
                if let Err(e) = mqtt.try_publish(&discovery.config) {
                    warn!(error = %e, "could not queue discovery config");
                }
            }
        }
    }
}
