//! Acknowledgements, both ways: ours to the broker for what it delivered
//! ([`Acks`], written by the supervisor), and the broker's to us for what we
//! published ([`Unconfirmed`], counted so that a clean stop can wait for them).
//!
//! Plain shared counters and a queue: nothing here does I/O or knows rumqttc.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Counts QoS 1/2 publishes that the broker has yet to confirm, so that a clean
/// stop can wait for them (a QoS 2 reading dropped at exit would break the promise).
#[derive(Debug, Default)]
pub(crate) struct Unconfirmed {
    /// QoS 1/2 publishes handed to rumqttc (by the daemon or as birth messages).
    enqueued: AtomicU64,
    /// Of those, how many the broker confirmed (PUBACK, PUBCOMP), or that can no
    /// longer be confirmed (a QoS 2 flow of a session the broker lost).
    confirmed: AtomicU64,
    /// Woken whenever the count drops to zero.
    pub all_confirmed: tokio::sync::Notify,
}

impl Unconfirmed {
    pub fn count(&self) -> u64 {
        let done = self.confirmed.load(Ordering::Acquire);
        self.enqueued.load(Ordering::Acquire).saturating_sub(done)
    }

    pub fn enqueue(&self, n: u64) {
        self.enqueued.fetch_add(n, Ordering::AcqRel);
    }

    pub fn confirm(&self, n: u64) {
        self.confirmed.fetch_add(n, Ordering::AcqRel);
        if self.count() == 0 {
            self.all_confirmed.notify_waiters();
        }
    }
}

/// (connection generation, packet id, QoS 2?), in the order given.
pub(crate) type AckQueue = std::collections::VecDeque<(u64, u16, bool)>;

/// Acknowledgements waiting for the supervisor, which writes them straight to
/// the connection, many per write. (Through rumqttc's request queue each ack
/// costs one poll and one TLS write, and its event loop takes ten incoming
/// messages per ack: during a backlog, acks then piled up in that queue by the
/// hundred thousand, at 64 bytes each, and lagged seconds behind storage.)
#[derive(Debug, Default)]
pub(crate) struct Acks {
    /// What the daemon has acknowledged and the supervisor not yet written.
    queue: std::sync::Mutex<AckQueue>,
    /// Acks written to the connection (a metric).
    sent: Arc<AtomicU64>,
    /// The last wake could not be queued (rumqttc's request queue was full):
    /// the next `push` tries again.
    wake_failed: AtomicBool,
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, AckQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues acks; true if the supervisor needs waking to write them (the
    /// queue was empty, or the last wake failed). Under load it is rarely
    /// parked in a poll, and one wake serves a whole batch.
    pub fn push(&self, acks: impl IntoIterator<Item = (u64, u16, bool)>) -> bool {
        let mut queue = self.lock();
        let was_empty = queue.is_empty();
        queue.extend(acks);
        (was_empty && !queue.is_empty()) || self.wake_failed.load(Ordering::Acquire)
    }

    /// Whether the wake asked for by `push` was queued.
    pub fn woke(&self, queued: bool) {
        self.wake_failed.store(!queued, Ordering::Release);
    }

    /// Everything queued so far.
    pub fn take(&self) -> AckQueue {
        std::mem::take(&mut *self.lock())
    }

    pub fn count_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sent(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wake_per_batch_and_again_after_a_failed_one() {
        let acks = Acks::default();
        assert!(acks.push([(1, 1, false)]), "first ack wakes");
        acks.woke(true);
        assert!(
            !acks.push([(1, 2, false)]),
            "the supervisor is already woken"
        );
        assert_eq!(acks.take().len(), 2);
        assert!(acks.push([(1, 3, true)]));
        acks.woke(false);
        assert!(acks.push([(1, 4, false)]), "the failed wake is tried again");
    }

    #[test]
    fn unconfirmed_counts_down_to_zero() {
        let u = Unconfirmed::default();
        u.enqueue(2);
        u.confirm(1);
        assert_eq!(u.count(), 1);
        u.confirm(1);
        assert_eq!(u.count(), 0);
    }
}
