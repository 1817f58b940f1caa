//! What the dashboard shows, kept in memory and updated by ingest: each sensor's
//! latest value and last hour (thinned for sparklines), each node's status, the
//! active alerts, the message rate. Changes go out as small events; a browser
//! that (re)connects gets one snapshot and then only those events.
//! It does no I/O: ingest pushes every change in, and HTTP handlers read it.

use crate::contract::{topic, Alert, AlertState, NodeState, Status, Timestamp};
use crate::store::StoredReading;
use axum::body::Bytes;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Sparkline: one point per this many milliseconds, for the last hour.
const SPARK_STEP_MS: i64 = 10_000;
/// A sparkline keeps one point (the last reading) per step.
pub const SPARK_STEP: std::time::Duration = std::time::Duration::from_millis(SPARK_STEP_MS as u64);
const SPARK_SPAN_MS: i64 = 3_600_000;
/// Message rate: counted per second over this many seconds.
const RATE_WINDOW: usize = 10;

/// One sensor as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SensorView {
    /// The reading topic: the row's key.
    pub topic: String,
    /// Its room's topic prefix.
    pub room: String,
    /// The topic's last level.
    pub sensor_id: String,
    /// The topic's type level.
    pub sensor_type: String,
    /// The type's unit.
    pub unit: String,
    /// What the node says it publishes at (its `online` status), else as delivered.
    pub qos: u8,
    /// What the broker delivered to us at: at most the subscription's QoS.
    pub delivered_qos: u8,
    /// The newest reading's value, by its own timestamp: a late one does not replace it.
    pub value: f64,
    /// That reading's own timestamp.
    pub timestamp: Timestamp,
    /// `[milliseconds since the epoch, value]`, oldest first.
    pub spark: VecDeque<(i64, f64)>,
}

/// One node (room) as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// The node's topic prefix: the row's key.
    pub room: String,
    /// The prefix's last level (ingest takes it from the topic, not the payload).
    pub node: String,
    /// Online or offline, as last announced.
    pub status: NodeState,
    /// `shutdown` or `connection_lost` (or none): the page's stopped or lost badge.
    pub reason: Option<String>,
    /// When aggregatord received that status.
    pub since: Timestamp,
}

#[derive(Default)]
struct Inner {
    /// The QoS each node says it publishes each sensor at (its `online` status).
    /// Shown instead of the delivery QoS, which the subscription caps at 1.
    declared_qos: BTreeMap<(String, String), u8>,
    /// By reading topic.
    sensors: BTreeMap<String, SensorView>,
    /// By room prefix: one node per prefix.
    nodes: BTreeMap<String, NodeView>,
    /// Active alerts by (room, rule).
    alerts: BTreeMap<(String, String), Alert>,
    /// Readings per second, newest last: (unix second, count).
    rate: VecDeque<(i64, u64)>,
}

/// A snapshot is built at most this often, and shared by every browser that
/// (re)connects meanwhile: 500 tabs must not mean 500 copies of 12 MB.
const SNAPSHOT_REUSE: Duration = Duration::from_secs(1);

/// What the dashboard shows, kept by ingest after each commit (so it shows
/// only what is stored) and read by the HTTP handlers and event streams.
pub struct Live {
    /// Everything shown; locked briefly by ingest (writes) and handlers (reads).
    inner: Mutex<Inner>,
    /// Changes, each framed once as an SSE event and shared by every client.
    events: broadcast::Sender<Bytes>,
    /// The last snapshot event built, when, and at which `shape` generation.
    snapshot: Mutex<Option<(Instant, u64, Bytes)>>,
    /// Bumped when a node, an alert or a sensor appears or goes: a cached
    /// snapshot older than that is not reused (a missed reading only leaves a
    /// value a second old until the sensor's next one; a missed alert would stay).
    shape: AtomicU64,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            inner: Mutex::default(),
            // A browser that falls this far behind is sent a fresh snapshot.
            events: broadcast::channel(1024).0,
            snapshot: Mutex::new(None),
            shape: AtomicU64::new(0),
        }
    }
}

/// One Server-Sent Event carrying `json` (which has no raw newlines).
pub fn sse_frame(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, kind: &str, data: &impl Serialize) {
        // Nobody watching (the usual case): nothing to build.
        if self.events.receiver_count() == 0 {
            return;
        }
        let json = serde_json::json!({ "type": kind, "data": data }).to_string();
        let _ = self.events.send(sse_frame(&json));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.events.subscribe()
    }

    /// The snapshot as an SSE event: the shared one if it is recent enough.
    pub fn snapshot_event(&self, now: Timestamp) -> Bytes {
        let shape = self.shape.load(Relaxed);
        let mut cached = self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, s, event)) = cached.as_ref() {
            if *s == shape && at.elapsed() < SNAPSHOT_REUSE {
                return event.clone();
            }
        }
        let json =
            serde_json::json!({ "type": "snapshot", "data": self.snapshot(now) }).to_string();
        let event = sse_frame(&json);
        *cached = Some((Instant::now(), shape, event.clone()));
        event
    }

    /// A stored reading; `history` readings (loaded at start) are not broadcast
    /// and do not count towards the rate.
    pub fn reading(&self, r: &StoredReading, history: bool) {
        let topic::Parsed::Reading { prefix, .. } = topic::parse(&r.topic) else {
            return;
        };
        let ms = r.reading.timestamp.0.timestamp_millis();
        let view = {
            let mut inner = self.lock();
            if !history {
                let second = r.received_at.0.timestamp();
                match inner.rate.back_mut() {
                    Some((s, n)) if *s == second => *n += 1,
                    _ => inner.rate.push_back((second, 1)),
                }
                while inner.rate.len() > RATE_WINDOW {
                    inner.rate.pop_front();
                }
            }
            let qos = inner
                .declared_qos
                .get(&(prefix.to_owned(), r.reading.sensor_id.clone()))
                .copied()
                .unwrap_or(r.qos);
            if !inner.sensors.contains_key(&r.topic) {
                self.shape.fetch_add(1, Relaxed);
            }
            let v = inner
                .sensors
                .entry(r.topic.clone())
                .or_insert_with(|| SensorView {
                    topic: r.topic.clone(),
                    room: prefix.to_owned(),
                    sensor_id: r.reading.sensor_id.clone(),
                    sensor_type: r.reading.sensor_type.clone(),
                    unit: r.reading.unit.clone(),
                    qos,
                    delivered_qos: r.qos,
                    value: r.reading.value,
                    timestamp: r.reading.timestamp,
                    spark: VecDeque::new(),
                });
            // Readings arriving late (from an offline buffer) do not move "latest" back.
            if r.reading.timestamp >= v.timestamp {
                v.value = r.reading.value;
                v.timestamp = r.reading.timestamp;
            }
            match v.spark.back_mut() {
                Some((t, value)) if ms / SPARK_STEP_MS == *t / SPARK_STEP_MS => {
                    *value = r.reading.value;
                }
                Some((t, _)) if ms < *t => {}
                _ => v.spark.push_back((ms, r.reading.value)),
            }
            while v
                .spark
                .front()
                .is_some_and(|(t, _)| *t < ms - SPARK_SPAN_MS)
            {
                v.spark.pop_front();
            }
            v.qos = qos;
            v.delivered_qos = r.qos;
            // What the event needs, not the whole view: this runs for every
            // reading ingest stores, and the sparkline can be hundreds of points.
            (v.value, v.timestamp, v.qos)
        };
        // Nobody watching (the usual case): no event to build.
        if !history && self.events.receiver_count() > 0 {
            let (value, timestamp, qos) = view;
            self.emit(
                "reading",
                &serde_json::json!({
                    "topic": r.topic, "room": prefix, "sensor_id": r.reading.sensor_id,
                    "sensor_type": r.reading.sensor_type, "unit": r.reading.unit, "qos": qos,
                    "delivered_qos": r.qos,
                    "value": value, "timestamp": timestamp, "point": [ms, r.reading.value],
                }),
            );
        }
    }

    pub fn status(&self, room: &str, s: &Status, at: Timestamp) {
        let view = NodeView {
            room: room.to_owned(),
            node: s.node.clone(),
            status: s.status,
            reason: s.reason.clone(),
            since: at,
        };
        {
            let mut inner = self.lock();
            for sensor in &s.sensors {
                inner
                    .declared_qos
                    .insert((room.to_owned(), sensor.id.clone()), sensor.qos);
            }
            inner.nodes.insert(room.to_owned(), view.clone());
        }
        self.shape.fetch_add(1, Relaxed);
        self.emit("status", &view);
    }

    pub fn alert(&self, a: &Alert) {
        {
            let mut inner = self.lock();
            let key = (a.room.clone(), a.rule.clone());
            match a.state {
                AlertState::Raised => inner.alerts.insert(key, a.clone()),
                AlertState::Cleared => inner.alerts.remove(&key),
            };
        }
        self.shape.fetch_add(1, Relaxed);
        self.emit("alert", a);
    }

    /// Forgotten sensors and rooms (`aggregatord forget`): their rows go, in
    /// every open browser too.
    pub fn forget(&self, topics: &[String], rooms: &[String]) {
        {
            let mut inner = self.lock();
            for t in topics {
                inner.sensors.remove(t);
            }
            for r in rooms {
                inner.nodes.remove(r);
                inner.declared_qos.retain(|(room, _), _| room != r);
            }
        }
        self.shape.fetch_add(1, Relaxed);
        self.emit(
            "forget",
            &serde_json::json!({ "topics": topics, "rooms": rooms }),
        );
    }

    /// Readings per second over the last few seconds.
    pub fn rate(&self, now: Timestamp) -> f64 {
        let inner = self.lock();
        let since = now.0.timestamp() - i64::try_from(RATE_WINDOW).unwrap_or(i64::MAX);
        let n: u64 = inner
            .rate
            .iter()
            .filter(|(s, _)| *s > since)
            .map(|(_, n)| n)
            .sum();
        n as f64 / RATE_WINDOW as f64
    }

    pub fn active_alerts(&self) -> Vec<Alert> {
        self.lock().alerts.values().cloned().collect()
    }

    pub fn snapshot(&self, now: Timestamp) -> serde_json::Value {
        let rate = self.rate(now);
        let inner = self.lock();
        serde_json::json!({
            "sensors": inner.sensors.values().collect::<Vec<_>>(),
            "nodes": inner.nodes.values().collect::<Vec<_>>(),
            "alerts": inner.alerts.values().collect::<Vec<_>>(),
            "rate": rate,
            "now": now,
        })
    }
}
