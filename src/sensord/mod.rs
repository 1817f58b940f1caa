//! sensord: one node's simulated sensors, published on their own schedules and QoS.
//!
//! One loop ([`drive`]) decides when each sensor reads and asks the simulated
//! [`Node`] for the value; the [`Outbox`] task gets each reading to the broker or
//! buffers it while offline; a small task answers MQTT events (Home Assistant
//! restarts). `--dry-run` uses the same loop, printing instead of publishing.

mod discovery;
mod outbox;
mod schedule;

use crate::config::{self, SensorConfig, SensordConfig};
use crate::contract::{
    topic, NodeState, Reading, Status, StatusSensor, Timestamp, REASON_CONNECTION_LOST,
    REASON_SHUTDOWN,
};
use crate::daemon;
use crate::mqtt::{self, Event, Handle, Message, Qos};
use crate::sensors::Node;
use anyhow::Context;
use chrono::{DateTime, Utc};
use outbox::Outbox;
use schedule::Timetable;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a clean stop may take: sending what is buffered, the offline status,
/// and waiting for the broker to confirm QoS 1/2 messages.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Readings between the schedule loop and the outbox; the outbox never waits long.
const OUTBOX_QUEUE: usize = 1024;

/// Entry point for the `sensord` binary.
pub fn main(config_path: &Path, check_only: bool) -> anyhow::Result<()> {
    daemon::start(config_path, check_only, run)
}

/// `sensord --dry-run`: readings as JSON lines on stdout, no broker. In real time
/// until Ctrl-C, or, with `simulate`, that much simulated time as fast as possible.
pub fn dry_run(config_path: &Path, simulate: Option<Duration>) -> anyhow::Result<()> {
    let config: SensordConfig = config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let (clock, stop) = match simulate {
            Some(span) => (Clock::Simulated { span }, CancellationToken::new()),
            None => (Clock::Realtime, daemon::shutdown_on_signals()?),
        };
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut failed = None;
        drive(&config, clock, &stop, |sensor, topic, reading| {
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
    Realtime,
    Simulated { span: Duration },
}

/// Runs every sensor's schedule until `stop` (or the end of a simulated span),
/// handing each reading to `emit` with its sensor and topic.
async fn drive(
    config: &SensordConfig,
    clock: Clock,
    stop: &CancellationToken,
    mut emit: impl FnMut(&SensorConfig, &str, Reading),
) {
    let started_at = Utc::now();
    let started = tokio::time::Instant::now();
    let mut node = Node::new(config, started_at);
    let topics: Vec<String> = config
        .sensors
        .iter()
        .map(|s| topic::reading(&config.node.topic_prefix, s.sensor_type, &s.id))
        .collect();
    let intervals = config.sensors.iter().map(|s| s.interval).collect();
    let rng = config
        .room
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    let mut timetable = Timetable::new(intervals, rng);
    while let Some((i, due)) = timetable.next() {
        let (now, elapsed) = match clock {
            Clock::Realtime => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(started + due) => {}
                }
                (Timestamp::now_millis().0, started.elapsed())
            }
            Clock::Simulated { span } => {
                if due > span || stop.is_cancelled() {
                    return;
                }
                (millis(started_at + due), due)
            }
        };
        if let Some(reading) = node.read(i, now) {
            emit(&config.sensors[i], &topics[i], reading);
        }
        timetable.fired(i, elapsed);
    }
}

fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

pub async fn run(config: SensordConfig) -> anyhow::Result<()> {
    let shutdown = daemon::shutdown_on_signals().context("installing signal handlers")?;
    let node = config.node.id.to_string();
    let status_topic = topic::status(&config.node.topic_prefix);
    let status = |s: &Status| Message {
        topic: status_topic.clone(),
        payload: s.to_json(),
        qos: Qos::AtLeastOnce,
        retain: true,
    };
    let online = Status {
        status: NodeState::Online,
        node: node.clone(),
        reason: None,
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        started_at: Some(Timestamp::now_millis()),
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
        .then(|| discovery::message(&config));
    let ha_status = discovery::ha_status_topic(&config);
    let (mqtt, events) = mqtt::connect(mqtt::Settings {
        client_id: node.clone(),
        broker: config.broker.clone(),
        last_will: Some(status(&Status::offline(&node, REASON_CONNECTION_LOST))),
        birth: std::iter::once(status(&online))
            .chain(discovery.clone())
            .collect(),
        subscriptions: match discovery {
            Some(_) => vec![(ha_status.clone(), Qos::AtLeastOnce)],
            None => Vec::new(),
        },
        manual_acks: false,
    })?;
    let mqtt = Arc::new(mqtt);
    info!(node = %node, sensors = config.sensors.len(), "sensord started");

    let events = tokio::spawn(answer_events(events, mqtt.clone(), discovery, ha_status));
    let (outbox_tx, outbox_rx) = mpsc::channel(OUTBOX_QUEUE);
    let mut outbox = tokio::spawn(Outbox::new(mqtt.clone(), config.offline_buffer).run(outbox_rx));

    let mut outbox_full = 0u64;
    drive(
        &config,
        Clock::Realtime,
        &shutdown,
        |sensor, topic, reading| {
            debug!(topic = %topic, seq = ?reading.seq, value = reading.value, "reading");
            let message = Message {
                topic: topic.to_owned(),
                // A Reading (finite numbers, strings) always serializes.
                payload: serde_json::to_vec(&reading).unwrap_or_default(),
                qos: sensor.qos(),
                retain: sensor.retain,
            };
            if outbox_tx.try_send(message).is_err() {
                outbox_full += 1;
            }
        },
    )
    .await;

    // Stop: let the outbox send what it holds, say goodbye, disconnect.
    drop(outbox_tx);
    let counts = match tokio::time::timeout(CLOSE_GRACE, &mut outbox).await {
        Ok(done) => done.context("outbox task failed")?.counts,
        Err(_) => {
            outbox.abort();
            let _ = outbox.await;
            warn!("stopped before every buffered reading was sent");
            outbox::Counts::default()
        }
    };
    events.abort();
    let _ = events.await;
    let mqtt = Arc::into_inner(mqtt).context("a task still holds the MQTT connection")?;
    if mqtt.is_connected() {
        mqtt.publish(status(&Status::offline(&node, REASON_SHUTDOWN)))
            .await?;
    }
    let unconfirmed = mqtt.close(CLOSE_GRACE).await;
    if unconfirmed > 0 {
        warn!(
            unconfirmed,
            "stopped before the broker confirmed every QoS 1/2 message"
        );
    }
    info!(
        published = counts.published,
        dropped_offline = counts.dropped_offline,
        dropped_buffer_full = counts.dropped_buffer_full,
        dropped_queue_full = counts.dropped_queue_full + outbox_full,
        lost_at_exit = counts.lost_at_exit,
        "sensord stopped"
    );
    Ok(())
}

/// Republishes the discovery config when Home Assistant says it (re)started.
async fn answer_events(
    mut events: mpsc::Receiver<Event>,
    mqtt: Arc<Handle>,
    discovery: Option<Message>,
    ha_status: String,
) {
    while let Some(event) = events.recv().await {
        if let (Event::Message(d), Some(discovery)) = (&event, &discovery) {
            if d.topic() == ha_status && d.payload() == b"online" {
                info!("Home Assistant started; republishing discovery config");
                if let Err(e) = mqtt.try_publish(discovery) {
                    warn!(error = %e, "could not queue discovery config");
                }
            }
        }
    }
}
