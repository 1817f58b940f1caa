//! What happens to a reading between the sensor and the broker.
//!
//! QoS 0: straight into the MQTT queue when connected; dropped (as QoS 0
//! allows) and counted when not. QoS 1/2, with a state directory: appended to
//! the outbox file (spool.rs) as made, synced before they are handed to MQTT
//! (one fdatasync for whatever arrived together), and trimmed from the file
//! only once the broker has confirmed everything handed so far (PUBACK,
//! PUBCOMP): so a restart, a kill or a power cut sends them later, in order,
//! with their original timestamps and seqs. The file is bounded
//! (`outbox.max_size`): past it the oldest unsent readings go first, counted.
//! Without a state directory, or once the disk fails, QoS 1/2 readings wait in
//! memory instead (`offline_buffer` of them), as before.
//! It knows nothing of sensors or readings: it sees only messages and their QoS.

use super::spool::Spool;
use crate::contract::Qos;
use crate::mqtt::{Handle, Link, Message, MqttError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

/// Messages taken from the inbox before one sync: a burst costs one fdatasync.
const BATCH: usize = 256;
/// Past this much confirmed space before the head, the file is rewritten.
const COMPACT_AT: u64 = 1 << 20;

/// What the outbox did, for `STATUS=` and the stop line.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Readings handed to the MQTT queue (not yet confirmed by the broker).
    pub published: u64,
    /// QoS 0 readings made while disconnected.
    pub dropped_offline: u64,
    /// QoS 1/2 readings pushed out of a full outbox or offline buffer.
    pub dropped_buffer_full: u64,
    /// QoS 0 readings refused by a full MQTT queue.
    pub dropped_queue_full: u64,
    /// QoS 1/2 readings only in memory when sensord stopped disconnected: gone.
    pub lost_at_exit: u64,
    /// QoS 1/2 readings left in the outbox file at a stop, for the next start.
    pub kept_on_disk: u64,
    /// Readings found in the outbox file at start, sent again.
    pub replayed: u64,
    /// Bytes of a torn or damaged tail cut off the outbox file at start.
    pub torn_bytes: u64,
}

/// What `STATUS=` shows of the outbox while it runs.
#[derive(Debug, Default)]
pub struct Gauge {
    /// QoS 1/2 readings waiting (in the file or in memory).
    pub waiting: AtomicU64,
    /// QoS 1/2 readings dropped because the outbox was full.
    pub dropped: AtomicU64,
}

/// A QoS 1/2 message waiting, and where its frame starts in the file (0
/// when it is in memory only).
type Waiting = (Message, u64);

/// Where the file's first unconfirmed frame starts once everything handed is
/// confirmed: the first unsent one, or past the end when none waits.
fn first_unsent(buffer: &VecDeque<Waiting>) -> u64 {
    buffer.front().map_or(u64::MAX, |(_, at)| *at)
}

/// Readings on their way to the broker: QoS 0 sent or dropped, QoS 1/2 kept (on disk, see spool.rs) until the broker confirms them.
pub struct Outbox {
    /// The connection: its link state decides between sending and keeping.
    mqtt: Arc<Handle>,
    /// The outbox file, if there is one and the disk works.
    spool: Option<Spool>,
    /// Bytes the file may hold.
    max_size: u64,
    /// The least time between two syncs (`outbox.sync_interval`; zero: each
    /// burst is synced at once). Readings wait unsent until they are synced.
    sync_every: Duration,
    last_sync: tokio::time::Instant,
    /// QoS 1/2 messages not handed to MQTT yet, oldest first.
    buffer: VecDeque<Waiting>,
    /// Handed to MQTT since the last confirmation: still in the file, in case
    /// the broker never confirms them (a kill, a power cut).
    in_flight: VecDeque<Waiting>,
    /// The config's `offline_buffer`: the bound in memory, without a file.
    capacity: usize,
    gauge: Arc<Gauge>,
    /// What became of each message, logged when sensord stops.
    pub counts: Counts,
}

impl Outbox {
    /// An outbox in memory only.
    pub fn new(mqtt: Arc<Handle>, capacity: usize) -> Outbox {
        Outbox {
            mqtt,
            spool: None,
            max_size: 0,
            sync_every: Duration::ZERO,
            last_sync: tokio::time::Instant::now(),
            buffer: VecDeque::new(),
            in_flight: VecDeque::new(),
            capacity,
            gauge: Arc::default(),
            counts: Counts::default(),
        }
    }

    /// With the outbox file in `dir`: what it holds unconfirmed goes first.
    /// A file that cannot be opened leaves the outbox in memory, said loudly.
    pub fn with_file(
        mut self,
        dir: &std::path::Path,
        max_size: u64,
        sync_every: Duration,
    ) -> Outbox {
        self.sync_every = sync_every;
        match Spool::open(dir) {
            Ok(opened) => {
                if opened.torn_bytes > 0 {
                    warn!(
                        file = %opened.spool.path().display(),
                        bytes = opened.torn_bytes,
                        "outbox: a torn or damaged tail was cut off (a power cut while writing); what it held is not sent"
                    );
                }
                if !opened.pending.is_empty() {
                    info!(
                        readings = opened.pending.len(),
                        "outbox: sending readings kept from before the restart"
                    );
                }
                self.counts.replayed = opened.pending.len() as u64;
                self.counts.torn_bytes = opened.torn_bytes;
                self.buffer.extend(opened.pending);
                self.spool = Some(opened.spool);
                self.max_size = max_size;
                self.gauge();
            }
            Err(e) => error!(
                dir = %dir.display(),
                error = %e,
                "outbox: cannot open its file; QoS 1/2 readings are kept in memory only (lost if sensord stops while the broker is away)"
            ),
        }
        self
    }

    pub fn gauge_handle(&self) -> Arc<Gauge> {
        self.gauge.clone()
    }

    /// Runs until the sending side closes, then sends what it still can.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Message>) -> Outbox {
        let mut link = self.mqtt.link();
        let mqtt = self.mqtt.clone();
        loop {
            let up = *link.borrow_and_update() == Link::Up;
            let due = self.sync_due();
            if due.is_some_and(|d| d <= tokio::time::Instant::now()) {
                self.sync();
            }
            if up {
                self.drain();
            }
            let due = self.sync_due();
            tokio::select! {
                message = inbox.recv() => match message {
                    Some(m) => {
                        self.offer(m, up);
                        // Whatever else arrived with it: one sync for all.
                        for _ in 1..BATCH {
                            match inbox.try_recv() {
                                Ok(m) => self.offer(m, up),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = link.changed() => {}
                // The broker confirmed everything handed so far.
                () = mqtt.wait_confirmed(), if !self.in_flight.is_empty() => self.confirmed(),
                // Appended, waiting for the next sync (outbox.sync_interval).
                () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {}
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
        if let Some(spool) = &mut self.spool {
            match spool.append(&m) {
                Ok(at) => {
                    self.buffer.push_back((m, at));
                    self.bound();
                    return;
                }
                Err(e) => self.disk_failed(&e),
            }
        }
        // In memory. Behind anything already waiting, so each stream stays in order.
        if up && self.buffer.is_empty() && self.mqtt.try_publish(&m).is_ok() {
            self.counts.published += 1;
            return;
        }
        if self.buffer.len() >= self.capacity {
            self.buffer.pop_front();
            self.dropped(1);
        }
        debug!(topic = %m.topic, buffered = self.buffer.len() + 1, "buffered while offline");
        self.buffer.push_back((m, 0));
        self.gauge();
    }

    /// Keeps the file within `max_size`: the oldest unsent readings go, down
    /// to nine tenths of it (so the rewrite that follows is not paid per reading).
    fn bound(&mut self) {
        let Some(spool) = &self.spool else { return };
        if spool.live() <= self.max_size {
            self.gauge();
            return;
        }
        let target = self.max_size / 10 * 9;
        let mut live = spool.live();
        let mut dropped = 0;
        while live > target {
            let Some((m, _)) = self.buffer.pop_front() else {
                break;
            };
            live = live.saturating_sub(super::spool::encode(&m).len() as u64);
            dropped += 1;
        }
        self.dropped(dropped);
        self.rewrite();
    }

    fn dropped(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        let before = self.counts.dropped_buffer_full;
        self.counts.dropped_buffer_full += n;
        self.gauge
            .dropped
            .store(self.counts.dropped_buffer_full, Ordering::Relaxed);
        // Said at 1, 2, 4, 8… drops: loud, but not a line per reading.
        if (before + 1..=self.counts.dropped_buffer_full).any(u64::is_power_of_two) {
            warn!(
                dropped = self.counts.dropped_buffer_full,
                "outbox full; dropping the oldest unsent readings"
            );
        }
    }

    /// The file holds exactly what is in flight and waiting, from its start.
    fn rewrite(&mut self) {
        let Some(spool) = &mut self.spool else { return };
        let all = self
            .in_flight
            .iter()
            .chain(self.buffer.iter())
            .map(|(m, _)| m);
        match spool.rewrite(all) {
            Ok(starts) => {
                let mut starts = starts.into_iter();
                for (_, at) in self.in_flight.iter_mut().chain(self.buffer.iter_mut()) {
                    *at = starts.next().unwrap_or(0);
                }
            }
            Err(e) => self.disk_failed(&e),
        }
        self.gauge();
    }

    /// When appended frames are to be synced, if any are waiting.
    fn sync_due(&self) -> Option<tokio::time::Instant> {
        let spool = self.spool.as_ref()?;
        spool.dirty().then_some(self.last_sync + self.sync_every)
    }

    /// Syncs what was appended; a failed sync means the file cannot be trusted.
    fn sync(&mut self) {
        let Some(spool) = &mut self.spool else { return };
        self.last_sync = tokio::time::Instant::now();
        match spool.sync() {
            Ok(true) => debug!(waiting = self.buffer.len(), "outbox synced"),
            Ok(false) => {}
            Err(e) => self.disk_failed(&e),
        }
    }

    /// A full or failing disk: on in memory, never a crash; said once.
    fn disk_failed(&mut self, e: &std::io::Error) {
        if let Some(spool) = self.spool.take() {
            error!(
                file = %spool.path().display(),
                error = %e,
                "outbox: cannot write its file; QoS 1/2 readings are kept in memory only from now on (lost if sensord stops while the broker is away)"
            );
        }
    }

    /// Moves waiting readings into the MQTT queue while it has room (after
    /// [`Self::sync`]: what is handed is on disk).
    fn drain(&mut self) {
        let before = self.buffer.len();
        while let Some((m, at)) = self.buffer.front() {
            // Only what is on disk leaves it.
            if self.spool.as_ref().is_some_and(|s| !s.is_synced(*at)) {
                break;
            }
            match self.mqtt.try_publish(m) {
                Ok(()) => {
                    if let Some(w) = self.buffer.pop_front() {
                        if self.spool.is_some() {
                            self.in_flight.push_back(w);
                        }
                    }
                    self.counts.published += 1;
                }
                Err(MqttError::Full(_)) => break,
                Err(_) => return,
            }
        }
        let sent = before - self.buffer.len();
        if sent > 1 {
            info!(
                sent,
                left = self.buffer.len(),
                "sending readings kept while offline"
            );
        }
        self.gauge();
    }

    /// The broker has confirmed everything handed: trim it from the file.
    fn confirmed(&mut self) {
        self.in_flight.clear();
        let Some(spool) = &mut self.spool else { return };
        let head = first_unsent(&self.buffer);
        if let Err(e) = spool.confirm_to(head) {
            self.disk_failed(&e);
            return;
        }
        if head != u64::MAX && head > COMPACT_AT {
            self.rewrite();
        }
        self.gauge();
    }

    /// At exit: wait for queue room rather than give up (the caller bounds the time).
    async fn finish(&mut self) {
        self.sync();
        while self.mqtt.is_connected() {
            let Some((m, _)) = self.buffer.front().cloned() else {
                break;
            };
            if self.mqtt.publish(m).await.is_err() {
                break;
            }
            if let Some(w) = self.buffer.pop_front() {
                if self.spool.is_some() {
                    self.in_flight.push_back(w);
                }
            }
            self.counts.published += 1;
        }
        if self.spool.is_some() {
            self.counts.kept_on_disk = (self.buffer.len() + self.in_flight.len()) as u64;
        } else {
            self.counts.lost_at_exit = self.buffer.len() as u64;
        }
    }

    /// What is left once the task ended: without the connection, which the
    /// daemon closes next.
    pub fn stopped(self) -> Stopped {
        Stopped {
            spool: self.spool,
            in_flight: self.in_flight,
            buffer: self.buffer,
            counts: self.counts,
        }
    }

    fn gauge(&self) {
        let waiting = self.buffer.len() + self.in_flight.len();
        self.gauge.waiting.store(waiting as u64, Ordering::Relaxed);
    }
}

/// The outbox after its task, while the daemon closes the connection.
pub struct Stopped {
    spool: Option<Spool>,
    in_flight: VecDeque<Waiting>,
    buffer: VecDeque<Waiting>,
    pub counts: Counts,
}

impl Stopped {
    /// After the connection closed: if the broker confirmed everything, the
    /// file keeps only what was never handed.
    pub fn closed(&mut self, all_confirmed: bool) {
        if let Some(spool) = &mut self.spool {
            if all_confirmed && !self.in_flight.is_empty() {
                self.in_flight.clear();
                let head = first_unsent(&self.buffer);
                if let Err(e) = spool.confirm_to(head) {
                    warn!(error = %e, "outbox: cannot trim what the broker confirmed; it is sent again at the next start (harmless)");
                }
            }
            if let Err(e) = spool.close() {
                warn!(error = %e, "outbox: cannot sync its file at the stop; confirmed readings may be sent again at the next start (harmless)");
            }
            self.counts.kept_on_disk = (self.buffer.len() + self.in_flight.len()) as u64;
        }
    }
}
