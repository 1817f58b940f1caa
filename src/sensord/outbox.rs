//! What happens to a reading between the sensor and the broker.
//!
//! Connected: straight into the MQTT queue. Disconnected: QoS 0 readings are
//! dropped (as QoS 0 allows) and counted; QoS 1/2 readings wait in a bounded
//! buffer (oldest dropped first, counted) and go out in order, with their
//! original timestamps and seq, once the connection is back.
//! It knows nothing of sensors or readings: it sees only messages and their QoS.

use crate::contract::Qos;
use crate::mqtt::{Handle, Link, Message, MqttError};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Readings handed to the MQTT queue (not yet confirmed by the broker).
    pub published: u64,
    /// QoS 0 readings made while disconnected.
    pub dropped_offline: u64,
    /// QoS 1/2 readings pushed out of a full offline buffer.
    pub dropped_buffer_full: u64,
    /// QoS 0 readings refused by a full MQTT queue.
    pub dropped_queue_full: u64,
    /// QoS 1/2 readings still buffered when sensord stopped disconnected.
    pub lost_at_exit: u64,
}

pub struct Outbox {
    /// The connection: its link state decides between sending and buffering.
    mqtt: Arc<Handle>,
    /// QoS 1/2 messages waiting for the link (or for queue room), oldest first.
    buffer: VecDeque<Message>,
    /// The config's `offline_buffer`: once `buffer` holds this many, the oldest goes.
    capacity: usize,
    /// What became of each message, logged when sensord stops.
    pub counts: Counts,
}

impl Outbox {
    pub fn new(mqtt: Arc<Handle>, capacity: usize) -> Outbox {
        Outbox {
            mqtt,
            buffer: VecDeque::new(),
            capacity,
            counts: Counts::default(),
        }
    }

    /// Runs until the sending side closes, then sends what it still can.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Message>) -> Outbox {
        let mut link = self.mqtt.link();
        loop {
            let up = *link.borrow_and_update() == Link::Up;
            if up {
                self.drain();
            }
            tokio::select! {
                message = inbox.recv() => match message {
                    Some(m) => self.offer(m, up),
                    None => break,
                },
                _ = link.changed() => {}
                // Only when the MQTT queue was full during a drain: try again shortly.
                () = tokio::time::sleep(Duration::from_millis(100)), if up && !self.buffer.is_empty() => {}
            }
        }
        self.finish().await;
        self
    }

    fn offer(&mut self, m: Message, up: bool) {
        if m.qos == Qos::AtMostOnce {
            if !up {
                self.counts.dropped_offline += 1;
                return;
            }
            match self.mqtt.try_publish(&m) {
                Ok(()) => self.counts.published += 1,
                Err(_) => self.counts.dropped_queue_full += 1,
            }
            return;
        }
        // Behind anything already buffered, so each stream stays in order.
        if up && self.buffer.is_empty() && self.mqtt.try_publish(&m).is_ok() {
            self.counts.published += 1;
            return;
        }
        if self.buffer.len() >= self.capacity {
            self.buffer.pop_front();
            self.counts.dropped_buffer_full += 1;
            if self.counts.dropped_buffer_full.is_power_of_two() {
                warn!(
                    capacity = self.capacity,
                    dropped = self.counts.dropped_buffer_full,
                    "offline buffer full; dropping the oldest readings"
                );
            }
        }
        debug!(topic = %m.topic, buffered = self.buffer.len() + 1, "buffered while offline");
        self.buffer.push_back(m);
    }

    /// Moves buffered readings into the MQTT queue while it has room.
    fn drain(&mut self) {
        let before = self.buffer.len();
        while let Some(m) = self.buffer.front() {
            match self.mqtt.try_publish(m) {
                Ok(()) => {
                    self.buffer.pop_front();
                    self.counts.published += 1;
                }
                Err(MqttError::Full(_)) => break,
                Err(_) => return,
            }
        }
        let sent = before - self.buffer.len();
        if sent > 0 {
            info!(
                sent,
                left = self.buffer.len(),
                "sending readings buffered while offline"
            );
        }
    }

    /// At exit: wait for queue room rather than give up (the caller bounds the time).
    async fn finish(&mut self) {
        while self.mqtt.is_connected() {
            let Some(m) = self.buffer.front().cloned() else {
                break;
            };
            if self.mqtt.publish(m).await.is_err() {
                break;
            }
            self.buffer.pop_front();
            self.counts.published += 1;
        }
        self.counts.lost_at_exit = self.buffer.len() as u64;
    }
}
