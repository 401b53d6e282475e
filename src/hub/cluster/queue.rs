//! The publish queue between the hub and the publisher link: at most `publish_queue` broadcasts,
//! disconnects and presence notices waiting for Redis, one list for both sides. A push to a full
//! queue drops the oldest waiting presence notice, or else the oldest waiting entry (counted as
//! not forwarded), so what is kept is always the newest `publish_queue` — and a user whose
//! connections come and go faster than Redis answers pushes only notices out, never a broadcast. The hub pushes ([`Outlet::push`], never blocks); the publisher takes batches
//! from the front and gives back a batch Redis did not acknowledge, which goes before everything
//! newer and is trimmed by the same rule.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::{Receiver, Sender};

use crate::hub::Outbound;
use crate::ops::metrics::{Counter, Metrics};

/// One entry waiting for Redis; its sequence number is fixed when it is first sent, so a resend
/// carries the same one.
pub(super) struct Queued {
    pub(super) out: Outbound,
    pub(super) seq: Option<u64>,
}

/// The list both sides share.
struct Backlog {
    entries: Mutex<VecDeque<Queued>>,
    cap: usize,
    metrics: Arc<Metrics>,
}

impl Backlog {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops entries beyond the cap, counting each as not forwarded: the oldest presence notices
    /// first, then the oldest entries.
    fn trim(&self, entries: &mut VecDeque<Queued>) {
        let over = entries.len().saturating_sub(self.cap);
        if over == 0 {
            return;
        }
        let mut notices = over;
        entries.retain(|e| {
            let drop = notices > 0 && matches!(e.out, Outbound::Presence { .. });
            notices -= usize::from(drop);
            !drop
        });
        let rest = entries.len().saturating_sub(self.cap);
        entries.drain(..rest);
        self.metrics.bump(Counter::ClusterNotForwarded, over as u64);
    }
}

/// The hub's end: where each broadcast and disconnect for the other instances goes. Dropping it
/// (the hub's shutdown) tells the publisher that nothing more will come.
pub struct Outlet {
    backlog: Arc<Backlog>,
    /// Rung after each push (at most one ring waits: a burst wakes the publisher once).
    doorbell: Sender<()>,
}

impl Outlet {
    /// A queue of at most `cap` entries whose drops are counted in `metrics`; the publisher
    /// takes from the returned [`Queue`].
    pub(crate) fn new(cap: usize, metrics: Arc<Metrics>) -> (Outlet, Queue) {
        let backlog = Arc::new(Backlog {
            entries: Mutex::new(VecDeque::new()),
            cap,
            metrics,
        });
        let (doorbell, rung) = crossbeam_channel::bounded(1);
        let queue = Queue {
            backlog: Arc::clone(&backlog),
            rung,
        };
        (Outlet { backlog, doorbell }, queue)
    }

    /// Queues `out` for the other instances; at a full queue the oldest waiting entry makes
    /// room (counted as not forwarded). Never blocks.
    pub fn push(&self, out: Outbound) {
        {
            let mut entries = self.backlog.lock();
            entries.push_back(Queued { out, seq: None });
            self.backlog.trim(&mut entries);
        }
        // Full: a ring is already waiting. Disconnected: the bridge stopped; the entry waits,
        // bounded by the cap, until the hub drops this outlet.
        let _ = self.doorbell.try_send(());
    }
}

/// What the publisher sees of the queue.
pub(crate) struct Queue {
    backlog: Arc<Backlog>,
    rung: Receiver<()>,
}

impl Queue {
    /// The doorbell: a message after a push, disconnected once the hub dropped its [`Outlet`].
    pub(super) fn rung(&self) -> &Receiver<()> {
        &self.rung
    }

    /// Takes up to `max` entries from the front (the oldest first).
    pub(super) fn take(&self, max: usize) -> VecDeque<Queued> {
        let mut entries = self.backlog.lock();
        let n = entries.len().min(max);
        entries.drain(..n).collect()
    }

    /// Puts back a batch Redis did not acknowledge, before everything queued since, then drops
    /// the oldest beyond the cap (counted as not forwarded).
    pub(super) fn give_back(&self, batch: VecDeque<Queued>) {
        let mut entries = self.backlog.lock();
        for e in batch.into_iter().rev() {
            entries.push_front(e);
        }
        self.backlog.trim(&mut entries);
    }

    /// How many entries wait.
    pub(super) fn len(&self) -> usize {
        self.backlog.lock().len()
    }

    /// Whether the hub dropped its outlet (any waiting ring is consumed), for the tests.
    #[cfg(test)]
    pub(crate) fn closed(&self) -> bool {
        loop {
            match self.rung.try_recv() {
                Ok(()) => {}
                Err(crossbeam_channel::TryRecvError::Empty) => return false,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Everything waiting, for the hub's tests.
    #[cfg(test)]
    pub(crate) fn drain(&self) -> Vec<Outbound> {
        self.take(usize::MAX).into_iter().map(|e| e.out).collect()
    }
}

#[cfg(test)]
mod tests {
    use tungstenite::Message;

    use super::*;
    use crate::hub::history::Sender;

    fn text(n: usize) -> Outbound {
        Outbound::broadcast("/c", Sender::Anonymous, Message::text(n.to_string()))
    }

    #[test]
    fn a_full_queue_keeps_the_newest_and_counts_each_drop() {
        let metrics = Arc::new(Metrics::new(["/c"]));
        let (outlet, queue) = Outlet::new(3, Arc::clone(&metrics));
        for n in 0..5 {
            outlet.push(text(n));
        }
        assert_eq!(metrics.count(Counter::ClusterNotForwarded), 2);
        assert_eq!(queue.drain(), [text(2), text(3), text(4)]);
        assert!(queue.rung().try_recv().is_ok(), "rung once for the burst");
        assert!(queue.rung().try_recv().is_err());
    }

    fn joined(user: &str) -> Outbound {
        Outbound::Presence {
            path: "/c".into(),
            from: Sender::User(user.into()),
            what: crate::hub::history::Presence::Join,
        }
    }

    #[test]
    fn a_full_queue_drops_presence_notices_before_any_broadcast() {
        let metrics = Arc::new(Metrics::new(["/c"]));
        let (outlet, queue) = Outlet::new(3, Arc::clone(&metrics));
        outlet.push(text(0));
        // A user coming and going while Redis is away: its notices fill the queue...
        for _ in 0..10 {
            outlet.push(joined("mallory"));
        }
        // ...and push out only notices, of its own, and then broadcasts make room the same way.
        outlet.push(text(1));
        outlet.push(text(2));
        assert_eq!(metrics.count(Counter::ClusterNotForwarded), 10);
        assert_eq!(queue.drain(), [text(0), text(1), text(2)]);
        // Without notices waiting, the oldest entry goes, as always.
        for n in 3..7 {
            outlet.push(text(n));
        }
        assert_eq!(metrics.count(Counter::ClusterNotForwarded), 11);
        assert_eq!(queue.drain(), [text(4), text(5), text(6)]);
        // A notice older than the broadcasts waiting goes before them.
        outlet.push(joined("alice"));
        for n in 7..10 {
            outlet.push(text(n));
        }
        assert_eq!(queue.drain(), [text(7), text(8), text(9)]);
    }

    #[test]
    fn a_batch_given_back_goes_first_and_the_oldest_are_trimmed() {
        let metrics = Arc::new(Metrics::new(["/c"]));
        let (outlet, queue) = Outlet::new(3, Arc::clone(&metrics));
        outlet.push(text(0));
        outlet.push(text(1));
        let mut batch = queue.take(2);
        batch[0].seq = Some(7);
        outlet.push(text(2));
        outlet.push(text(3));
        queue.give_back(batch);
        assert_eq!(metrics.count(Counter::ClusterNotForwarded), 1);
        let kept = queue.take(10);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [None; 3]);
        let kept: Vec<Outbound> = kept.into_iter().map(|e| e.out).collect();
        assert_eq!(kept, [text(1), text(2), text(3)]);
        assert!(!queue.closed());
        drop(outlet);
        assert!(queue.closed());
    }
}
