//! Publishes alert changes, on a connection of its own (client id
//! `<client_id>-alerts`): a QoS 2 flow waiting on its handshakes must not hold
//! up, or be held up by, ingest's connection and its backlog.
//! It knows no rumqttc (only `mqtt::Handle`) and decides no alert: it sends what
//! the outbox holds.
//!
//! Changes come from the store's alert outbox, written in the same flush as the
//! change itself; an entry leaves the outbox only after the broker confirmed it
//! (PUBCOMP). A crash in between means it is sent again: QoS 2 on the wire,
//! at-least-once end to end, and subscribers can tell repeats by `time`.

use crate::contract::Qos;
use crate::contract::{Alert, AlertState};
use crate::mqtt::{Handle, Message};
use crate::store::Store;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub async fn run(store: Store, mqtt: &Handle, wake: Arc<Notify>, stop: CancellationToken) {
    let mut link = mqtt.link();
    loop {
        let pending = {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.alert_outbox()).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot read the alert outbox");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            }
        };
        if !pending.is_empty() && mqtt.is_connected() {
            for (_, alert) in &pending {
                for m in messages(alert) {
                    tokio::select! {
                        sent = mqtt.publish(m) => if sent.is_err() { return },
                        () = stop.cancelled() => return,
                    }
                }
                info!(rule = %alert.rule, room = %alert.room, state = %alert.state, "alert published");
            }
            tokio::select! {
                () = mqtt.wait_confirmed() => {}
                () = stop.cancelled() => return,
            }
            let ids: Vec<u64> = pending.iter().map(|(id, _)| *id).collect();
            let store = store.clone();
            // sled's fsync blocks; not on the thread that runs both connections.
            let done = tokio::task::spawn_blocking(move || {
                store
                    .remove_from_outbox(&ids)
                    .and_then(|()| store.flush().map(drop))
            })
            .await;
            if !matches!(done, Ok(Ok(()))) {
                warn!("cannot update the alert outbox; its alerts will be sent again");
            }
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            _ = link.changed() => {}
            () = stop.cancelled() => return,
        }
        // Mark the current link state seen, so `changed` waits for the next one.
        link.borrow_and_update();
    }
}

/// Raised: the alert, retained. Cleared: the `cleared` event, then an empty
/// retained message, so the retained set on `…/alerts/#` is the active alerts.
fn messages(alert: &Alert) -> Vec<Message> {
    let topic = alert.topic();
    let payload = serde_json::to_vec(alert).unwrap_or_default();
    let m = |payload: Vec<u8>, retain| Message {
        topic: topic.clone(),
        payload,
        qos: Qos::ExactlyOnce,
        retain,
    };
    match alert.state {
        AlertState::Raised => vec![m(payload, true)],
        AlertState::Cleared => vec![m(payload, false), m(Vec::new(), true)],
    }
}
