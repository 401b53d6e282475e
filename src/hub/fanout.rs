//! Fan-out: a broadcast to every member of a path, charged to the memory cap first and written
//! straight into an idle connection or queued in its outbox; a member too slow or over the cap
//! closed; and what leaves for the other instances ([`Outbound`]). Never blocks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::TrySendError;
use tungstenite::Message;

use super::history::{Presence, Sender, Stamp, unix_ms};
use super::member::{Handoff, Hold, Member, discard_queued};
use super::{Filter, Hub};
use crate::config::{Retention, SlowConsumer};
use crate::memory::{self, Candidate, Charge, Room};
use crate::ops::metrics::Counter;

/// What a fan-out delivers.
#[derive(Clone, Copy)]
enum Delivery<'a> {
    /// A broadcast: the payload to plain members, the envelope `stamp` makes to enveloped ones.
    Broadcast(&'a Message, &'a Stamp),
    /// A presence notice, to enveloped members of channels with `presence` only.
    Notice(&'a Message),
}

/// What leaves this instance for the others, queued for the cluster bridge.
#[derive(Debug)]
pub enum Outbound {
    /// A broadcast published here on `path` by `from`. Its bytes are charged to the memory cap
    /// until it is dropped (by the bridge, once sent or discarded); `charge` is None in tests.
    Broadcast {
        path: String,
        from: Sender,
        msg: Message,
        charge: Option<Charge>,
        /// Set on a channel whose history Redis keeps: the publisher keeps it there.
        kept: Option<KeepIn>,
    },
    /// An admin's disconnect: every instance ends its connections that match.
    Disconnect(Filter),
    /// A subscriber here, `from`, joined or left `path`: the other instances tell theirs.
    Presence {
        path: String,
        from: Sender,
        what: Presence,
    },
}

/// How a broadcast on a channel whose history Redis keeps (`[cluster]`) is kept there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepIn {
    /// The channel's `history_size`.
    pub size: usize,
    /// When the server took it (ms since the Unix epoch).
    pub time_ms: u64,
    /// The publishing member, which its own instance does not deliver it to; None for the
    /// admin API.
    pub member: Option<u64>,
}

impl Outbound {
    /// A broadcast from `from` that carries no charge (a test's).
    pub fn broadcast(path: &str, from: Sender, msg: Message) -> Outbound {
        Outbound::Broadcast {
            path: path.to_string(),
            from,
            msg,
            charge: None,
            kept: None,
        }
    }
}

/// Equal when they carry the same thing (the charge is bookkeeping).
impl PartialEq for Outbound {
    fn eq(&self, other: &Outbound) -> bool {
        match (self, other) {
            (
                Outbound::Broadcast {
                    path, from, msg, ..
                },
                Outbound::Broadcast {
                    path: p2,
                    from: f2,
                    msg: m2,
                    ..
                },
            ) => path == p2 && from == f2 && msg == m2,
            (Outbound::Disconnect(a), Outbound::Disconnect(b)) => a == b,
            (
                Outbound::Presence { path, from, what },
                Outbound::Presence {
                    path: p2,
                    from: f2,
                    what: w2,
                },
            ) => path == p2 && from == f2 && what == w2,
            _ => false,
        }
    }
}
impl Hub {
    /// Sends `msg` from member `from` (whose user is `sender`) to every other member of
    /// `path`, keeping it in the path's history when `history` says so; then queues it for the
    /// other instances if a cluster bridge is attached. Never blocks.
    pub fn publish(
        &self,
        path: &str,
        from: u64,
        sender: &Sender,
        history: Option<Retention>,
        msg: &Message,
    ) {
        if !self.keep_in_redis(path, Some(from), sender, history, msg) {
            self.keep_and_fan_out(path, Some(from), sender, history, msg);
            self.forward(path, sender, msg, None);
        }
    }

    /// Publishes `msg` on `path` from outside any connection (the admin API's `POST /publish`),
    /// kept as `history` says: every member of `path` here, then the other instances. Returns
    /// how many members here took it (written or queued); on a channel whose history Redis
    /// keeps, how many members here it goes to once Redis has kept it. Never blocks.
    pub fn inject(&self, path: &str, msg: &Message, history: Option<Retention>) -> usize {
        if self.keep_in_redis(path, None, &Sender::Admin, history, msg) {
            return self
                .roster
                .snapshot(path)
                .map_or(0, |members| members.iter().filter(|m| m.receives).count());
        }
        let reached = self.keep_and_fan_out(path, None, &Sender::Admin, history, msg);
        self.forward(path, &Sender::Admin, msg, None);
        reached
    }

    /// With a history kept in Redis (`[cluster]` and `history`): queues `msg` for the publisher,
    /// which keeps it there and gives it its position; every instance, this one too, delivers it
    /// from the backbone in the order of the positions. False (nothing done) otherwise.
    fn keep_in_redis(
        &self,
        path: &str,
        from: Option<u64>,
        sender: &Sender,
        history: Option<Retention>,
        msg: &Message,
    ) -> bool {
        let Some(keep) = history.filter(|_| self.store.get().is_some()) else {
            return false;
        };
        let kept = KeepIn {
            size: keep.size.get(),
            time_ms: unix_ms(),
            member: from,
        };
        self.forward(path, sender, msg, Some(kept));
        true
    }

    /// Gives `msg` its position and keeps it when `history` says so, then fans it out, with the
    /// path's ring locked throughout: broadcasts on one path reach every member in the order
    /// of their positions, and a join's replay (under the same lock, with its entry into the
    /// roster) ends where live traffic begins: a broadcast either is in the replay or finds the
    /// member in its snapshot. Without a history, or at the cap for a new ring, it goes out
    /// without a position.
    fn keep_and_fan_out(
        &self,
        path: &str,
        from: Option<u64>,
        sender: &Sender,
        history: Option<Retention>,
        msg: &Message,
    ) -> usize {
        let ring = history.and_then(|_| self.histories.ring(path));
        match (ring, history) {
            (Some(ring), Some(keep)) => {
                let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
                let stamp =
                    self.histories
                        .keep(&mut ring, keep, sender.clone(), msg, Instant::now());
                self.fan_out(path, from, Delivery::Broadcast(msg, &stamp))
            }
            _ => self.fan_out(
                path,
                from,
                Delivery::Broadcast(msg, &Stamp::now(sender.clone())),
            ),
        }
    }

    /// Sends a presence notice to the enveloped members of `path` but `from` whose channel
    /// has `presence`.
    pub(super) fn notify(&self, path: &str, from: Option<u64>, notice: &Message) {
        self.fan_out(path, from, Delivery::Notice(notice));
    }

    /// Queues `msg` from `sender` for the other instances if a cluster bridge is attached (and
    /// for Redis to keep, with `kept`).
    fn forward(&self, path: &str, sender: &Sender, msg: &Message, kept: Option<KeepIn>) {
        let outlet = self.outlet.read().unwrap_or_else(|p| p.into_inner());
        if let Some(outlet) = outlet.as_ref() {
            // At the memory cap the message is not forwarded (counted).
            let Some(charge) = Charge::try_new(&self.budget, msg.len(), Room::Deliveries) else {
                self.metrics.bump(Counter::ClusterNotForwarded, 1);
                return;
            };
            let out = Outbound::Broadcast {
                path: path.to_string(),
                from: sender.clone(),
                msg: msg.clone(),
                charge: Some(charge),
                kept,
            };
            // At a full queue the oldest waiting entry makes room (counted there).
            outlet.push(out);
        }
    }

    /// Delivers a broadcast that another instance published (from `sender`, as that instance
    /// authenticated it) to every member of `path` here. It is never queued for the bridge
    /// again. Never blocks.
    pub fn deliver(&self, path: &str, sender: Sender, msg: &Message) {
        self.fan_out(path, None, Delivery::Broadcast(msg, &Stamp::now(sender)));
    }

    /// Delivers a broadcast Redis kept (`stamp` has its position and epoch) to every member of
    /// `path` here but `from` (its publisher, when it is of this process); called by the bridge
    /// in the order of the positions. A member whose replay already held this position skips
    /// it; one whose join is still reading the history holds it. Never blocks.
    pub fn deliver_kept(&self, path: &str, from: Option<u64>, stamp: &Stamp, msg: &Message) {
        self.fan_out(path, from, Delivery::Broadcast(msg, stamp));
    }

    /// Sends `what` to every member of `path` except `from` (a broadcast to all, in the
    /// envelope to those that asked for it; a notice to those only), and to none whose own
    /// limits are smaller than what it gets (dropped for that member and counted). Each delivery
    /// is charged to the member's account first; those that do not fit under the memory cap are settled by
    /// [`Hub::squeeze`]. Returns how many took it (written or queued).
    ///
    /// It works on a snapshot of the path's members and holds no lock while it writes: a
    /// member that joins meanwhile gets the next broadcast, one that leaves may still get this
    /// one (its charge is given back with the member).
    fn fan_out(&self, path: &str, from: Option<u64>, what: Delivery<'_>) -> usize {
        let Some(members) = self.roster.snapshot(path) else {
            return 0;
        };
        let mut reached = 0;
        // Each form encoded once, at its first use, for every subscriber that takes it.
        let plain_wire = std::cell::OnceCell::new();
        let enveloped = std::cell::OnceCell::new();
        let enveloped_wire = std::cell::OnceCell::new();
        let mut dropped = 0;
        // Where Redis kept it (epoch, position): a member whose join replayed it skips it.
        let at = match what {
            Delivery::Broadcast(_, stamp) => stamp.epoch.as_deref().zip(stamp.pos),
            Delivery::Notice(_) => None,
        };
        for (i, m) in members.iter().enumerate() {
            // A member already closing as slow never reads its outbox again.
            if Some(m.id) == from || !m.receives || m.shared.slow.load(Ordering::Acquire) {
                continue;
            }
            // Not charged for what its replay had (checked again as it is delivered).
            if m.replayed_already(at) {
                continue;
            }
            let (msg, wire) = match (what, m.intake.envelope) {
                (Delivery::Broadcast(plain, stamp), true) => (
                    enveloped.get_or_init(|| self.histories.envelope(stamp, plain)),
                    &enveloped_wire,
                ),
                (Delivery::Broadcast(plain, _), false) => (plain, &plain_wire),
                (Delivery::Notice(notice), true) if m.intake.presence => (notice, &plain_wire),
                (Delivery::Notice(_), _) => continue,
            };
            if msg.len() > m.intake.max_message {
                // Its write buffer may be too small to ever take it: retried, it would wedge
                // the member's loop.
                self.metrics.bump(Counter::BroadcastTooBig, 1);
                continue;
            }
            let charge = match m.shared.account.charge(msg.len(), Room::Deliveries) {
                Some(charge) => charge,
                None => {
                    dropped += self.squeeze(&members, from, i, msg.len());
                    let retried = if m.shared.slow.load(Ordering::Acquire) {
                        None
                    } else {
                        m.shared.account.charge(msg.len(), Room::Deliveries)
                    };
                    match retried {
                        Some(charge) => charge,
                        // Dropped to make room, or the room went to another publisher
                        // meanwhile: nothing is queued past the cap.
                        None => {
                            if self.drop_at_cap(m) {
                                dropped += 1;
                            }
                            continue;
                        }
                    }
                }
            };
            if self.deliver_charged(m, msg, charge, wire, at) {
                reached += 1;
            }
        }
        if dropped > 0 {
            self.metrics.bump(Counter::MemoryDrops, dropped as u64);
            self.budget.dropped(dropped);
        }
        reached
    }

    /// Delivers `msg` (at `at`, where Redis kept it) with its `charge` (on `m`'s account):
    /// held while its join reads its history, else straight into its socket when it is idle,
    /// else into its outbox. The charge goes with whatever still holds the bytes (the
    /// outbox, or the write buffer a direct write could not flush) and is dropped, giving them
    /// back, otherwise. Returns whether the member took it (written or queued).
    fn deliver_charged(
        &self,
        m: &Member,
        msg: &Message,
        mut charge: Charge,
        wire: &std::cell::OnceCell<Option<Vec<u8>>>,
        at: Option<(&str, u64)>,
    ) -> bool {
        // A member whose join is reading its history holds what it gets until its replay is
        // queued (see `Hub::join_reading`).
        if m.holding.load(Ordering::Acquire) {
            match m.hold(msg, charge, at) {
                Hold::Taken => return true,
                Hold::Full => {
                    self.outbox_full(m);
                    return false;
                }
                Hold::Released(back) => charge = back,
            }
        }
        // Its hold over (or never held): its replay may have had this one. (The fan-out's
        // check before the charge may have come while it was still reading.)
        if m.replayed_already(at) {
            return false;
        }
        if let Some(direct) = m.shared.direct.get() {
            if !m.shared.revoked.load(Ordering::Acquire) {
                let frame = wire.get_or_init(|| wire_frame(msg));
                match direct.try_write(msg, frame.as_deref(), charge, &|| m.tx.is_empty()) {
                    // Taken: the connection holds the charge now, and settles it as its
                    // buffers drain (see `DirectWrite::try_write`).
                    Handoff::Sent => {
                        self.metrics.message_out(msg.len());
                        m.shared.traffic.sent(msg.len());
                        return true;
                    }
                    Handoff::SentWake => {
                        self.metrics.message_out(msg.len());
                        m.shared.traffic.sent(msg.len());
                        m.shared.wake();
                        return true;
                    }
                    Handoff::Queue(back) => charge = back,
                }
            }
        }
        match m.try_queue(msg, charge) {
            Ok(()) => {
                m.shared.wake();
                true
            }
            Err(TrySendError::Full(())) => {
                self.outbox_full(m);
                false
            }
            // The member is leaving; its Membership drop removes it.
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// A delivery found `m`'s outbox full: dropped (counted) or the member closed as slow, as
    /// its `slow_consumer` says.
    pub(super) fn outbox_full(&self, m: &Member) {
        match m.intake.slow_consumer {
            SlowConsumer::Drop => self.metrics.bump(Counter::BroadcastDropped, 1),
            SlowConsumer::Disconnect => {
                self.close_slow(m);
            }
        }
    }

    /// Ends `m` with 1008 `slow consumer` (once); true if this call did it.
    fn close_slow(&self, m: &Member) -> bool {
        if m.shared.slow.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.metrics.bump(Counter::SlowConsumerCloses, 1);
        m.shared.end();
        true
    }

    /// A delivery to `members[short]` met the memory cap: closes the members with the largest
    /// backlog (1008 `slow consumer`, what they hold given back at once) until `len` bytes fit,
    /// which may be `members[short]` itself. Members already closing are not candidates: they
    /// get nothing more. Returns how many it closed.
    fn squeeze(
        &self,
        members: &[Arc<Member>],
        from: Option<u64>,
        short: usize,
        len: usize,
    ) -> usize {
        let eligible: Vec<usize> = (0..members.len())
            .filter(|&i| {
                let m = &members[i];
                Some(m.id) != from && m.receives && !m.shared.slow.load(Ordering::Acquire)
            })
            .collect();
        let candidates: Vec<Candidate> = eligible
            .iter()
            .map(|&i| {
                let m = &members[i];
                Candidate {
                    backlog: m.shared.account.backlog(),
                    frees: m.shared.account.held(),
                    needs: if i == short { len } else { 0 },
                }
            })
            .collect();
        let chosen = memory::choose_drops(&candidates, self.budget.room(Room::Deliveries));
        chosen
            .into_iter()
            .filter(|&c| self.drop_at_cap(&members[eligible[c]]))
            .count()
    }

    /// Closes `m` at the memory cap as a slow consumer and gives back now what it holds for
    /// deliveries: its outbox, and its write side unless its loop is working
    /// ([`super::DirectWrite::abandon`]). True if this call closed it.
    fn drop_at_cap(&self, m: &Member) -> bool {
        m.shared.squeezed.store(true, Ordering::Release);
        let closed = self.close_slow(m);
        discard_queued(&m.rx, &m.shared);
        m.discard_held();
        if let Some(direct) = m.shared.direct.get() {
            direct.abandon();
        }
        closed
    }
}

/// A broadcast as it goes on the wire to every client: one final, unmasked frame (a server's
/// frames are the same bytes for every client), so a fan-out encodes it once instead of once per
/// subscriber. None for anything but a text or binary message.
pub(super) fn wire_frame(msg: &tungstenite::Message) -> Option<Vec<u8>> {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let (opcode, payload): (OpCode, tungstenite::Bytes) = match msg {
        tungstenite::Message::Text(text) => (OpCode::Data(Data::Text), text.clone().into()),
        tungstenite::Message::Binary(bytes) => (OpCode::Data(Data::Binary), bytes.clone()),
        _ => return None,
    };
    let frame = Frame::message(payload, opcode, true);
    let mut out = Vec::with_capacity(frame.len());
    frame.format(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crossbeam_channel::TryRecvError;

    use super::*;
    use crate::config::Mode;
    use crate::hub::cluster::Outlet;
    use crate::hub::fixtures::*;
    use crate::hub::{Intake, Membership};
    use crate::ops::metrics::Metrics;
    use crate::policy::Holder;

    #[test]
    fn a_wire_frame_is_what_tungstenite_reads_back() {
        use tungstenite::protocol::frame::FrameHeader;
        for msg in [
            tungstenite::Message::text("hello"),
            tungstenite::Message::binary(vec![7u8; 300]),
            tungstenite::Message::binary(vec![1u8; 16_000]),
        ] {
            let wire = wire_frame(&msg).unwrap();
            let mut cursor = std::io::Cursor::new(&wire[..]);
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(len as usize, msg.len());
            assert_eq!(&wire[cursor.position() as usize..], &msg.into_data()[..]);
        }
        assert!(wire_frame(&tungstenite::Message::Ping(Default::default())).is_none());
    }

    #[test]
    fn a_broadcast_over_a_members_own_limit_is_dropped_for_it_alone_and_counted() {
        let hub = hub();
        let sender = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let small = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let large = hub
            .join(
                "/c",
                Mode::Broadcast,
                Intake {
                    max_message: 4096,
                    ..intake(4, SlowConsumer::Disconnect)
                },
                Holder::default(),
            )
            .unwrap()
            .unwrap();
        for n in [0, 1024, 1025, 4096, 4097] {
            sender.publish(&Message::binary(vec![0u8; n]));
        }
        let got = |m: &Membership| {
            std::iter::from_fn(|| m.next_queued().ok().map(|q| q.msg))
                .map(|msg| msg.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(got(&small), [0, 1024]);
        assert_eq!(got(&large), [0, 1024, 1025, 4096]);
        assert_eq!(hub.metrics.count(Counter::BroadcastTooBig), 4);
        assert!(
            !small.shared.slow.load(Ordering::Acquire),
            "dropped, not slow"
        );
    }

    #[test]
    fn broadcast_reaches_others_not_sender() {
        let hub = hub();
        let a = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let b = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let other = join(&hub, "/d", 4, SlowConsumer::Disconnect);
        a.publish(&text("hi"));
        assert_eq!(b.next_queued().unwrap().msg, text("hi"));
        assert!(a.next_queued().is_err());
        assert!(other.next_queued().is_err());
    }

    #[test]
    fn outbox_bound_counts_only_what_is_still_queued() {
        let hub = hub();
        let sender = join(&hub, "/c", 1, SlowConsumer::Drop);
        let b = join(&hub, "/c", 2, SlowConsumer::Drop);
        for round in 0..3 {
            for i in 0..3 {
                sender.publish(&text(&format!("{round}.{i}")));
            }
            // Two fit, the third is dropped; draining makes room for the next round.
            assert_eq!(b.next_queued().unwrap().msg, text(&format!("{round}.0")));
            assert_eq!(b.next_queued().unwrap().msg, text(&format!("{round}.1")));
            assert!(matches!(b.next_queued(), Err(TryRecvError::Empty)));
        }
    }

    #[test]
    fn full_outbox_marks_slow_or_drops() {
        let hub = hub();
        let a = join(&hub, "/c", 1, SlowConsumer::Disconnect);
        let slow = join(&hub, "/c", 1, SlowConsumer::Disconnect);
        let dropper = join(&hub, "/c", 1, SlowConsumer::Drop);
        a.publish(&text("1"));
        a.publish(&text("2"));
        assert!(slow.shared.slow.load(Ordering::Acquire));
        assert!(!dropper.shared.slow.load(Ordering::Acquire));
        assert_eq!(hub.metrics.count(Counter::BroadcastDropped), 1);
        assert_eq!(hub.metrics.count(Counter::SlowConsumerCloses), 1);
        assert_eq!(dropper.next_queued().unwrap().msg, text("1"));
    }

    #[test]
    fn outlet_gets_broadcasts_once_and_counts_a_full_queue() {
        let metrics = Arc::new(Metrics::new(["/c"]));
        let hub = Hub::new(Arc::clone(&metrics));
        let a = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let b = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        // No bridge: local only, nothing counted.
        a.publish(&text("local"));
        assert_eq!(b.next_queued().unwrap().msg, text("local"));
        assert_eq!(metrics.count(Counter::ClusterNotForwarded), 0);

        let (outlet, queue) = Outlet::new(1, Arc::clone(&metrics));
        hub.set_outlet(outlet);
        a.publish(&text("1"));
        a.publish(&text("2")); // the queue holds one: the oldest makes room
        assert_eq!(b.next_queued().unwrap().msg, text("1"));
        assert_eq!(b.next_queued().unwrap().msg, text("2"));
        assert_eq!(
            queue.drain(),
            [Outbound::broadcast("/c", Sender::Anonymous, text("2"))]
        );
        assert_eq!(metrics.count(Counter::ClusterNotForwarded), 1);

        // From another instance: every member here gets it (the publisher is elsewhere), and
        // it is not queued for Redis again.
        hub.deliver(
            "/c",
            Sender::User("al".into()),
            &Message::binary(vec![0u8, 255]),
        );
        assert_eq!(
            a.next_queued().unwrap().msg,
            Message::binary(vec![0u8, 255])
        );
        assert_eq!(
            b.next_queued().unwrap().msg,
            Message::binary(vec![0u8, 255])
        );
        assert_eq!(queue.drain(), []);

        // Shutdown detaches the bridge.
        assert!(!queue.closed());
        hub.shutdown();
        assert!(queue.closed());
    }

    #[test]
    fn inject_reaches_every_member_counts_them_and_forwards_once() {
        let metrics = Arc::new(Metrics::new(["/c"]));
        let hub = Hub::new(Arc::clone(&metrics));
        let a = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let b = join(&hub, "/c", 1, SlowConsumer::Drop);
        let _other = join(&hub, "/d", 4, SlowConsumer::Disconnect);
        assert_eq!(hub.inject("/c", &text("1"), None), 2, "both, none excluded");
        assert_eq!(hub.inject("/c", &text("2"), None), 1, "b's outbox is full");
        assert_eq!(hub.inject("/nobody", &text("3"), None), 0);
        assert_eq!(a.next_queued().unwrap().msg, text("1"));
        assert_eq!(b.next_queued().unwrap().msg, text("1"));
        let (outlet, queue) = Outlet::new(4, Arc::clone(&metrics));
        hub.set_outlet(outlet);
        hub.inject("/c", &text("4"), None);
        assert_eq!(
            queue.drain(),
            [Outbound::broadcast("/c", Sender::Admin, text("4"))]
        );
    }
}

/// The fan-out beside joins, leaves and the memory cap, with connections that are fakes of
/// [`DirectWrite`](super::DirectWrite).
#[cfg(test)]
mod snapshot_tests {
    use std::num::NonZeroUsize;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crossbeam_channel::{Receiver, Sender};

    use super::*;
    use crate::hub::fixtures::*;
    use crate::hub::{DirectWrite, Membership};
    use crate::memory::Budget;
    use crate::ops::metrics::Metrics;

    /// How long a fake waits for the test's go-ahead before it gives up (a watchdog, not a
    /// measurement: the test fails when it fires).
    const WATCHDOG: Duration = Duration::from_secs(10);

    /// A connection whose socket takes nothing: it keeps every charge it is handed until it is
    /// abandoned (a subscriber that never reads), or, with `flushes`, drops each at once (one
    /// that keeps up).
    #[derive(Default)]
    struct Fake {
        flushes: bool,
        kept: Mutex<Vec<Charge>>,
        abandoned: std::sync::atomic::AtomicBool,
    }

    impl DirectWrite for Fake {
        fn try_write(
            &self,
            _msg: &Message,
            _wire: Option<&[u8]>,
            charge: Charge,
            _outbox_empty: &dyn Fn() -> bool,
        ) -> Handoff {
            if !self.flushes {
                self.kept.lock().unwrap().push(charge);
            }
            Handoff::Sent
        }

        fn abandon(&self) -> bool {
            self.abandoned.store(true, Ordering::Release);
            self.kept.lock().unwrap().clear();
            true
        }
    }

    fn attach(m: &Membership, fake: Arc<dyn DirectWrite>) {
        assert!(m.shared.direct.set(fake).is_ok());
    }

    /// The first time, writes nothing until the test says so, after telling it that a fan-out
    /// is inside it.
    struct Paused {
        inside: Sender<()>,
        go: Receiver<()>,
        went: std::sync::atomic::AtomicBool,
    }

    impl DirectWrite for Paused {
        fn try_write(
            &self,
            _msg: &Message,
            _wire: Option<&[u8]>,
            _charge: Charge,
            _outbox_empty: &dyn Fn() -> bool,
        ) -> Handoff {
            if !self.went.load(Ordering::Acquire) {
                self.inside.send(()).unwrap();
                let went = self.go.recv_timeout(WATCHDOG).is_ok();
                self.went.store(went, Ordering::Release);
            }
            Handoff::Sent
        }

        fn abandon(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_join_and_a_leave_complete_while_a_fan_out_is_inside_a_write() {
        let hub = hub();
        let publisher = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let writing = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let leaving = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let (inside_tx, inside) = crossbeam_channel::bounded(1);
        let (go, go_rx) = crossbeam_channel::bounded(1);
        let paused = Arc::new(Paused {
            inside: inside_tx,
            go: go_rx,
            went: Default::default(),
        });
        attach(&writing, Arc::clone(&paused) as Arc<dyn DirectWrite>);
        let fan_out = {
            let hub = Arc::clone(&hub);
            std::thread::spawn(move || {
                hub.publish(
                    "/c",
                    publisher.id,
                    &super::Sender::Anonymous,
                    None,
                    &text("x"),
                )
            })
        };
        inside.recv_timeout(WATCHDOG).unwrap();
        // The fan-out is inside a subscriber's write: a join and a leave on its path, and a
        // listing of every member, go through now.
        let joined = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        drop(leaving);
        let mut listed = 0;
        hub.for_each_member(|_, _| listed += 1);
        go.send(()).unwrap();
        fan_out.join().unwrap();
        assert!(paused.went.load(Ordering::Acquire), "the write was let go");
        assert_eq!((hub.members("/c"), listed), (3, 3));
        // The one that joined during the fan-out gets the next broadcast.
        hub.inject("/c", &text("y"), None);
        assert_eq!(joined.next_queued().unwrap().msg, text("y"));
    }

    #[test]
    fn a_join_inside_a_listing_does_not_wait_for_it() {
        let hub = hub();
        let _a = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let (done, finished) = crossbeam_channel::bounded(1);
        let lister = {
            let hub = Arc::clone(&hub);
            std::thread::spawn(move || {
                let mut joined = Vec::new();
                hub.for_each_member(|_, _| {
                    joined.push(join(&hub, "/c", 4, SlowConsumer::Disconnect));
                });
                done.send(hub.members("/c")).unwrap();
            })
        };
        assert_eq!(finished.recv_timeout(WATCHDOG), Ok(2));
        lister.join().unwrap();
    }

    #[test]
    fn the_squeeze_closes_the_stalled_and_gives_back_what_they_held_at_once() {
        // Deliveries may use 7/8 of 8 KiB: seven 1 KiB messages.
        let budget = Arc::new(Budget::new(NonZeroUsize::new(8 * 1024)));
        let hub = Hub::with_budget(Arc::new(Metrics::new(["/c"])), Arc::clone(&budget));
        let publisher = join(&hub, "/c", 64, SlowConsumer::Disconnect);
        let reader = join(&hub, "/c", 64, SlowConsumer::Disconnect);
        attach(
            &reader,
            Arc::new(Fake {
                flushes: true,
                ..Fake::default()
            }),
        );
        let stalled: Vec<(Membership, Arc<Fake>)> = (0..3)
            .map(|_| {
                let m = join(&hub, "/c", 64, SlowConsumer::Disconnect);
                let fake = Arc::new(Fake::default());
                attach(&m, Arc::clone(&fake) as Arc<dyn DirectWrite>);
                (m, fake)
            })
            .collect();
        let msg = Message::binary(vec![0u8; 1024]);
        // Three stalled members hold 1 KiB a message each: the third message does not fit.
        for _ in 0..3 {
            publisher.publish(&msg);
        }
        let closed: Vec<bool> = stalled
            .iter()
            .map(|(m, _)| m.shared.slow.load(Ordering::Acquire))
            .collect();
        assert!(closed.iter().any(|&c| c), "someone stalled was closed");
        assert!(
            !reader.shared.slow.load(Ordering::Acquire),
            "not the reader"
        );
        for ((m, fake), closed) in stalled.iter().zip(closed) {
            if closed {
                assert!(fake.abandoned.load(Ordering::Acquire));
                assert_eq!(m.ended(), Some(crate::policy::CloseReason::SLOW_CONSUMER));
                assert!(m.closed_at_cap());
                assert_eq!(m.account().held(), 0, "given back at once");
            }
        }
        // What is counted is what the open stalled members still hold, and nothing else.
        let open: usize = stalled
            .iter()
            .map(|(_, fake)| {
                fake.kept
                    .lock()
                    .unwrap()
                    .iter()
                    .map(Charge::bytes)
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(budget.used(), open);
        assert!(budget.used() <= 7 * 1024);
    }

    #[test]
    fn an_outbox_entry_gives_its_charge_back_with_the_member_a_snapshot_kept() {
        let budget = Arc::new(Budget::new(NonZeroUsize::new(1 << 20)));
        let hub = Hub::with_budget(Arc::new(Metrics::new(["/c"])), Arc::clone(&budget));
        let publisher = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let member = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        publisher.publish(&Message::binary(vec![0u8; 1000]));
        assert_eq!((budget.used(), member.account().held()), (1000, 1000));
        // Taken off the outbox, the charge travels with the message.
        let queued = member.next_queued().unwrap();
        assert_eq!((queued.charge.bytes(), budget.used()), (1000, 1000));
        drop(queued);
        assert_eq!(budget.used(), 0);
        // Left while a fan-out's snapshot still holds it: what that fan-out queued goes with
        // the snapshot.
        publisher.publish(&Message::binary(vec![0u8; 500]));
        let snapshot = hub.roster.snapshot("/c").unwrap();
        drop(member);
        assert_eq!(
            budget.used(),
            500,
            "still queued in the member the snapshot holds"
        );
        drop(snapshot);
        assert_eq!(budget.used(), 0);
    }
}
