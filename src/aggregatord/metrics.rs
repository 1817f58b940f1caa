//! aggregatord's counters, shared by ingest (which counts), the log lines and
//! systemd status (which summarise), and `/metrics` (Prometheus text format).
//! It does no I/O and judges nothing: ingest counts into it, the dashboard serves
//! it.

use crate::contract::RejectionReason;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// aggregatord's counters and gauges, shared between ingest (which counts)
/// and the dashboard thread (which renders `/metrics`, `/readyz` and the
/// status line from them): atomics, so counting never waits.
#[derive(Default)]
pub struct Metrics {
    /// Every message the broker delivered (readings, statuses, anything), before checks.
    pub received: AtomicU64,
    /// Readings stored for the first time.
    pub stored: AtomicU64,
    /// Readings already stored (redeliveries), not written again.
    pub duplicates: AtomicU64,
    /// Messages refused, per reason (a handful of keys, so a map under a lock is cheap).
    rejected: Mutex<BTreeMap<RejectionReason, u64>>,
    /// Connections after the first.
    pub reconnects: AtomicU64,
    /// Reconnects on which the broker had lost our session (and queue).
    pub sessions_lost: AtomicU64,
    /// Alerts raised, counted once the change is stored with its batch.
    pub alerts_raised: AtomicU64,
    /// Alerts cleared, counted likewise.
    pub alerts_cleared: AtomicU64,
    /// Energy meters that dropped to a new series (see `ingest::meter_check`).
    pub meter_resets: AtomicU64,
    /// Readings missing from each sensor's seq numbering (gaps.rs), only
    /// sensors with some missing; and the sum.
    missing: Mutex<BTreeMap<String, u64>>,
    /// Readings missing over all sensors (`Gaps::total`), forgotten ones included.
    pub missing_total: AtomicU64,
    /// True from CONNACK to the link dropping; `/readyz` needs it.
    pub connected: AtomicBool,
    /// False after a failed write or flush, until one succeeds again.
    pub storage_ok: AtomicBool,
    /// Readings deleted to keep the store under `storage.max_size`.
    pub budget_deleted: AtomicU64,

    /// Damaged regions of acknowledged data the store found, at open or by
    /// reading (`Store::damage`, each logged with file and offset); set from
    /// it by the HTTP handlers that show it.
    pub storage_damage: AtomicU64,
    /// Browsers following `/events` now (up on connect, down when the stream ends).
    pub dashboard_clients: AtomicI64,
    /// Sensors and rooms known (see census.rs for the caps).
    pub known_sensors: AtomicI64,
    /// Rooms known; both set by ingest from the census.
    pub known_rooms: AtomicI64,
    /// One fsync per batch.
    pub flush_seconds: Histogram,
    /// What those fsyncs made durable, as sled counts it (its log, before the
    /// kernel rounds writes up to pages): bench/live sets it against the disk's
    /// count to show where flash wear comes from.
    pub flushed_bytes: AtomicU64,
    /// From a message's arrival to its acknowledgement.
    pub ack_lag_seconds: Histogram,
    /// From a reading's own timestamp (set by its sensor when it published) to
    /// its being on disk: end-to-end latency, if the clocks agree.
    pub reading_age_seconds: Histogram,
    /// The MQTT connection's count of acknowledgements written (set once connected).
    pub acks_sent: std::sync::OnceLock<std::sync::Arc<AtomicU64>>,
}

impl Metrics {
    pub fn reject(&self, reason: RejectionReason) -> u64 {
        let mut map = self
            .rejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(reason).or_default();
        *n += 1;
        *n
    }

    pub fn rejected(&self) -> BTreeMap<RejectionReason, u64> {
        self.rejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set_missing(&self, topic: &str, n: u64, total: u64) {
        let mut map = self
            .missing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if n == 0 {
            map.remove(topic);
        } else {
            map.insert(topic.to_owned(), n);
        }
        self.missing_total.store(total, Relaxed);
    }

    /// The store's size on disk by part, in the exposition format: what
    /// `storage.max_size` bounds.
    pub fn render_usage(out: &mut String, usage: &crate::store::Usage) {
        let _ = writeln!(out, "# HELP roomsense_storage_bytes The store's files on disk, by part (storage.max_size bounds their sum).\n# TYPE roomsense_storage_bytes gauge");
        for (part, bytes) in [
            ("segments", usage.segments),
            ("journal", usage.journal),
            ("sled", usage.sled),
        ] {
            let _ = writeln!(out, "roomsense_storage_bytes{{part=\"{part}\"}} {bytes}");
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected().values().sum()
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP roomsense_{name} {help}\n# TYPE roomsense_{name} counter\nroomsense_{name} {v}");
        };
        counter(
            "readings_received_total",
            "Messages delivered by the broker.",
            self.received.load(Relaxed),
        );
        counter(
            "readings_stored_total",
            "Readings stored (new rows).",
            self.stored.load(Relaxed),
        );
        counter(
            "readings_duplicate_total",
            "Redelivered readings already stored.",
            self.duplicates.load(Relaxed),
        );
        counter(
            "storage_flushed_bytes_total",
            "Bytes the batch fsyncs made durable, as sled counts them (its log, before page rounding).",
            self.flushed_bytes.load(Relaxed),
        );
        counter(
            "mqtt_acks_sent_total",
            "Acknowledgements sent to the broker (each after its reading was on disk).",
            self.acks_sent.get().map_or(0, |n| n.load(Relaxed)),
        );
        counter(
            "mqtt_reconnects_total",
            "Connections after the first.",
            self.reconnects.load(Relaxed),
        );
        counter(
            "mqtt_sessions_lost_total",
            "Reconnects on which the broker had no session for us.",
            self.sessions_lost.load(Relaxed),
        );
        counter(
            "meter_resets_total",
            "Energy meter readings that started a new series (a drop to less than half).",
            self.meter_resets.load(Relaxed),
        );
        counter(
            "alerts_raised_total",
            "Alerts raised.",
            self.alerts_raised.load(Relaxed),
        );
        counter(
            "alerts_cleared_total",
            "Alerts cleared.",
            self.alerts_cleared.load(Relaxed),
        );
        counter(
            "storage_budget_deleted_total",
            "Readings deleted, the oldest first, to keep the store under storage.max_size.",
            self.budget_deleted.load(Relaxed),
        );

        let _ = writeln!(out, "# HELP roomsense_readings_rejected_total Messages refused, by reason.\n# TYPE roomsense_readings_rejected_total counter");
        for (reason, n) in self.rejected() {
            let _ = writeln!(
                out,
                "roomsense_readings_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP roomsense_sensor_readings_missing Readings a sensor numbered (seq) that never arrived: lost upstream (node buffer, broker queue).\n# TYPE roomsense_sensor_readings_missing gauge");
        for (topic, n) in self
            .missing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "roomsense_sensor_readings_missing{{topic=\"{topic}\"}} {n}"
            );
        }
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP roomsense_{name} {help}\n# TYPE roomsense_{name} gauge\nroomsense_{name} {v}");
        };
        gauge(
            "mqtt_connected",
            "1 while connected to the broker.",
            i64::from(self.connected.load(Relaxed)),
        );
        gauge(
            "storage_ok",
            "1 while storage accepts writes.",
            i64::from(self.storage_ok.load(Relaxed)),
        );
        gauge(
            "storage_damage",
            "Damaged regions of acknowledged data found in the store's files since start (each logged with file and offset).",
            i64::try_from(self.storage_damage.load(Relaxed)).unwrap_or(i64::MAX),
        );
        gauge(
            "dashboard_clients",
            "Browsers following /events.",
            self.dashboard_clients.load(Relaxed),
        );
        gauge(
            "readings_missing",
            "Readings missing from all sensors' seq numbering (sum of roomsense_sensor_readings_missing).",
            self.missing_total.load(Relaxed).cast_signed(),
        );
        gauge(
            "known_sensors",
            "Sensors (reading topics) known; new ones past ingest.max_sensors are refused.",
            self.known_sensors.load(Relaxed),
        );
        gauge(
            "known_rooms",
            "Rooms known; new ones past ingest.max_rooms are refused.",
            self.known_rooms.load(Relaxed),
        );
        self.flush_seconds.render(
            &mut out,
            "storage_flush_seconds",
            "Time for one batch's fsync.",
        );
        self.ack_lag_seconds.render(
            &mut out,
            "ack_lag_seconds",
            "From a message's arrival to its acknowledgement.",
        );
        self.reading_age_seconds.render(
            &mut out,
            "reading_age_at_store_seconds",
            "From a reading's own timestamp to its being on disk (publish to stored, if the sensor's clock agrees).",
        );
        out
    }
}

const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// A Prometheus histogram of durations, lock-free.
#[derive(Default)]
pub struct Histogram {
    /// Cumulative is computed on render; each slot counts its own bucket (+Inf last).
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of every observation, microseconds (rendered as seconds).
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// `n` observations of the same duration (a whole batch at once).
    pub fn observe_n(&self, d: Duration, n: u64) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[slot].fetch_add(n, Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros())
                .unwrap_or(u64::MAX)
                .saturating_mul(n),
            Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(
            out,
            "# HELP roomsense_{name} {help}\n# TYPE roomsense_{name} histogram"
        );
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            let le = BUCKETS
                .get(i)
                .map_or("+Inf".to_owned(), std::string::ToString::to_string);
            let _ = writeln!(out, "roomsense_{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "roomsense_{name}_sum {sum}\nroomsense_{name}_count {cumulative}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_labels_and_cumulative_buckets() {
        let m = Metrics::default();
        m.stored.fetch_add(3, Relaxed);
        m.reject(RejectionReason::Malformed);
        m.reject(RejectionReason::Malformed);
        m.flush_seconds.observe(Duration::from_micros(300));
        m.flush_seconds.observe(Duration::from_millis(20));
        let text = m.render();
        assert!(text.contains("roomsense_readings_stored_total 3\n"));
        assert!(text.contains("roomsense_readings_rejected_total{reason=\"malformed\"} 2\n"));
        assert!(text.contains("roomsense_storage_flush_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("roomsense_storage_flush_seconds_bucket{le=\"0.025\"} 2\n"));
        assert!(text.contains("roomsense_storage_flush_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("roomsense_storage_flush_seconds_count 2\n"));
    }
}
