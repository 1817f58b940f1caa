//! The ingest loop: take what the broker delivered, validate it, store it, flush,
//! and only then acknowledge it.
//!
//! Group commit: a batch is every event already waiting plus whatever arrives
//! within `batch_window` of the first, up to `batch_max`; one fsync covers it,
//! then every message in it is acknowledged. Under load one fsync covers many
//! readings; when idle a reading waits at most `batch_window`.

use crate::config::IngestConfig;
use crate::contract::Timestamp;
use crate::contract::{topic, validate_reading, Rejection, RejectionReason, Status};
use crate::daemon::RateLimit;
use crate::mqtt::{Delivery, Event, Handle};
use crate::store::{Inserted, RejectedMessage, Store, StoredReading};
use anyhow::Context;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const SUMMARY_EVERY: Duration = Duration::from_secs(60);

pub struct Ingest {
    config: IngestConfig,
    store: Store,
    mqtt: Handle,
    counts: Counts,
    log_limit: RateLimit<RejectionReason>,
    connects: u64,
}

#[derive(Default, Debug)]
struct Counts {
    received: u64,
    stored: u64,
    duplicates: u64,
    rejected: BTreeMap<RejectionReason, u64>,
}

/// What one batch will write.
#[derive(Default)]
struct Batch {
    readings: Vec<StoredReading>,
    rejected: Vec<RejectedMessage>,
    acks: Vec<Delivery>,
}

impl Ingest {
    pub fn new(config: IngestConfig, store: Store, mqtt: Handle) -> Self {
        Ingest {
            config,
            store,
            mqtt,
            counts: Counts::default(),
            log_limit: RateLimit::new(Duration::from_secs(10)),
            connects: 0,
        }
    }

    pub fn into_mqtt(self) -> Handle {
        self.mqtt
    }

    pub async fn run(
        &mut self,
        mut events: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut summary = tokio::time::interval(SUMMARY_EVERY);
        summary.tick().await;
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = summary.tick() => {
                    self.log_totals("ingest totals");
                    continue;
                }
                event = events.recv() => match event {
                    Some(event) => event,
                    None => return Ok(()),
                },
            };
            let mut batch = Batch::default();
            self.take(first, &mut batch);
            let deadline = tokio::time::Instant::now() + self.config.batch_window;
            while batch.acks.len() < self.config.batch_max {
                // Take what is already waiting; then wait for more, up to the window.
                let event = match events.try_recv() {
                    Ok(event) => event,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                        event = events.recv() => match event {
                            Some(event) => event,
                            None => break,
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                    },
                };
                self.take(event, &mut batch);
            }
            self.commit(batch).await?;
        }
    }

    /// Sorts one event into the batch; nothing is written yet.
    fn take(&mut self, event: Event, batch: &mut Batch) {
        let delivery = match event {
            Event::Message(d) => d,
            Event::Connected { session_present } => {
                self.connects += 1;
                // A fresh session on first ever start is expected; later, it means the
                // broker forgot us and readings sent meanwhile were not queued.
                if !session_present && self.connects > 1 {
                    warn!("broker had no session for us: readings published while we were away are lost; resubscribing");
                }
                return;
            }
            Event::Disconnected { .. } => return,
        };
        self.counts.received += 1;
        let received_at = Timestamp::now_millis();
        let outcome = match topic::parse(delivery.topic()) {
            topic::Parsed::Reading {
                sensor_type,
                sensor_id,
                ..
            } => validate_reading(sensor_type, sensor_id, delivery.payload(), received_at.0).map(
                |reading| {
                    batch.readings.push(StoredReading {
                        topic: delivery.topic().to_owned(),
                        reading,
                        received_at,
                        qos: delivery.qos().into(),
                    })
                },
            ),
            topic::Parsed::Status { prefix } => note_status(prefix, delivery.payload()),
            // Our own alerts (and other aggregators'): not readings, nothing to store.
            topic::Parsed::Alert { .. } => Ok(()),
            topic::Parsed::Unrecognized => Err(Rejection::new(
                RejectionReason::UnrecognizedTopic,
                "not a reading, status or alert topic",
            )),
        };
        if let Err(rejection) = outcome {
            self.reject(&delivery, rejection, received_at, batch);
        }
        batch.acks.push(delivery);
    }

    fn reject(&mut self, d: &Delivery, r: Rejection, received_at: Timestamp, batch: &mut Batch) {
        let total = self.counts.rejected.entry(r.reason).or_default();
        *total += 1;
        if let Some(suppressed) = self.log_limit.allow(r.reason) {
            warn!(
                topic = d.topic(),
                reason = %r.reason,
                detail = %r.detail,
                total = *total,
                suppressed,
                "rejected message"
            );
        }
        let payload = d.payload();
        batch.rejected.push(RejectedMessage {
            topic: d.topic().to_owned(),
            reason: r.reason.to_string(),
            detail: r.detail,
            received_at,
            payload: String::from_utf8_lossy(&payload[..payload.len().min(1024)]).into_owned(),
        });
    }

    /// Writes the batch, makes it durable, then acknowledges it. The order is the
    /// durability promise: no ack leaves before its reading is on disk.
    async fn commit(&mut self, batch: Batch) -> anyhow::Result<()> {
        let Batch {
            readings,
            rejected,
            acks,
        } = batch;
        let store = self.store.clone();
        // sled's fsync blocks; keep it off the thread that polls the network.
        let (readings, outcomes) = tokio::task::spawn_blocking(move || {
            let mut outcomes = Vec::with_capacity(readings.len());
            for r in &readings {
                outcomes.push(store.insert_reading(r)?);
            }
            for r in &rejected {
                store.insert_rejected(r)?;
            }
            store.flush()?;
            Ok::<_, crate::store::StoreError>((readings, outcomes))
        })
        .await
        .context("storage task panicked")?
        .context("storing readings")?;

        for (r, outcome) in readings.iter().zip(outcomes) {
            match outcome {
                Inserted::New => {
                    self.counts.stored += 1;
                    debug!(topic = %r.topic, seq = ?r.reading.seq, "stored reading");
                }
                Inserted::Duplicate => {
                    self.counts.duplicates += 1;
                    debug!(topic = %r.topic, seq = ?r.reading.seq, "duplicate reading");
                }
            }
        }
        for d in &acks {
            self.mqtt.ack(d).await.context("acknowledging")?;
        }
        Ok(())
    }

    pub fn log_totals(&self, what: &str) {
        let rejected: u64 = self.counts.rejected.values().sum();
        let by_reason = self
            .counts
            .rejected
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        info!(
            received = self.counts.received,
            stored = self.counts.stored,
            duplicates = self.counts.duplicates,
            rejected,
            rejected_by_reason = %by_reason,
            "{what}"
        );
    }
}

/// Status messages are logged (the dashboard will show them); a malformed one is
/// rejected like any other bad payload.
fn note_status(prefix: &str, payload: &[u8]) -> Result<(), Rejection> {
    if payload.is_empty() {
        // An empty retained message clears the status (a node being retired).
        info!(prefix, "node status cleared");
        return Ok(());
    }
    let status: Status = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(RejectionReason::Malformed, e.to_string()))?;
    info!(
        prefix,
        node = %status.node,
        status = ?status.status,
        reason = status.reason.as_deref().unwrap_or(""),
        "node status"
    );
    Ok(())
}
