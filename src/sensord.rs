//! sensord: one node's sensors, published on their own schedules and QoS.

use crate::config::{SensorConfig, SensordConfig};
use crate::contract::{
    topic, NodeState, Reading, Status, StatusSensor, Timestamp, REASON_CONNECTION_LOST,
    REASON_SHUTDOWN,
};
use crate::daemon;
use crate::mqtt::{self, Handle, Message, MqttError, Qos};
use crate::sensors::Model;
use anyhow::Context;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a clean stop may wait for the broker to confirm what we sent.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Entry point for the `sensord` binary.
pub fn main(config_path: &Path, check_only: bool) -> anyhow::Result<()> {
    daemon::start(config_path, check_only, run)
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    /// QoS 0 readings produced while disconnected: dropped, as QoS 0 allows.
    dropped_offline: AtomicU64,
    /// Readings dropped because the outgoing queue was full.
    dropped_full: AtomicU64,
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
                qos: s.qos.into(),
            })
            .collect(),
    };
    let (mqtt, mut events) = mqtt::connect(mqtt::Settings {
        client_id: node.clone(),
        broker: config.broker.clone(),
        last_will: Some(status(&Status::offline(&node, REASON_CONNECTION_LOST))),
        birth: Some(status(&online)),
        subscriptions: Vec::new(),
        manual_acks: false,
    })?;
    let mqtt = Arc::new(mqtt);
    info!(node = %node, sensors = config.sensors.len(), "sensord started");

    // The supervisor logs connection changes itself; drain its events so it never blocks.
    tokio::spawn(async move { while events.recv().await.is_some() {} });

    let counters = Arc::new(Counters::default());
    let sensors: Vec<_> = config
        .sensors
        .iter()
        .map(|s| {
            tokio::spawn(run_sensor(
                s.clone(),
                topic::reading(&config.node.topic_prefix, s.sensor_type, &s.id),
                mqtt.clone(),
                shutdown.clone(),
                counters.clone(),
            ))
        })
        .collect();

    shutdown.cancelled().await;
    for task in sensors {
        // A sensor task only ends by returning; a panic would be a bug worth surfacing.
        task.await.context("sensor task failed")?;
    }
    let mqtt = Arc::into_inner(mqtt).context("sensor tasks still hold the connection")?;
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
        published = counters.published.load(Relaxed),
        dropped_offline = counters.dropped_offline.load(Relaxed),
        dropped_full = counters.dropped_full.load(Relaxed),
        "sensord stopped"
    );
    Ok(())
}

async fn run_sensor(
    sensor: SensorConfig,
    topic: String,
    mqtt: Arc<Handle>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let mut model = Model::new(sensor.sensor_type, fastrand::Rng::new());
    // Spread first ticks a little so sensors with equal intervals don't publish in bursts.
    let start = Instant::now() + sensor.interval.mul_f64(fastrand::f64() * 0.1);
    let mut ticker = tokio::time::interval_at(start, sensor.interval);
    // A tick missed while the process was stalled is skipped, not published in a burst.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last = Instant::now();
    let mut seq = 0u64;
    loop {
        let now = tokio::select! {
            _ = stop.cancelled() => return,
            now = ticker.tick() => now,
        };
        seq += 1;
        let reading = Reading {
            sensor_id: sensor.id.to_string(),
            sensor_type: sensor.sensor_type.to_string(),
            value: model.sample(chrono::Utc::now(), now - last),
            unit: sensor.sensor_type.unit().to_owned(),
            timestamp: Timestamp::now_millis(),
            seq: Some(seq),
        };
        last = now;
        if sensor.qos == Qos::AtMostOnce && !mqtt.is_connected() {
            counters.dropped_offline.fetch_add(1, Relaxed);
            continue;
        }
        let message = Message {
            topic: topic.clone(),
            payload: serde_json::to_vec(&reading).unwrap_or_default(),
            qos: sensor.qos,
            retain: sensor.retain,
        };
        match mqtt.try_publish(message) {
            Ok(()) => {
                counters.published.fetch_add(1, Relaxed);
                debug!(topic = %topic, seq, value = reading.value, "published");
            }
            Err(MqttError::Full(n)) => {
                let dropped = counters.dropped_full.fetch_add(1, Relaxed) + 1;
                if dropped.is_power_of_two() {
                    warn!(topic = %topic, queue = n, dropped, "outgoing queue full; dropping readings");
                }
            }
            Err(_) => return,
        }
    }
}
