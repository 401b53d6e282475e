//! The hub: which connections are on which channel path, and fan-out of broadcast messages.
//! It never blocks. A member whose connection is idle (its loop asleep in `poll`, nothing queued
//! or stuck) gets the broadcast written straight into its socket by the publishing thread,
//! through [`DirectWrite`] — no wake-up, no context switch per delivery. Any other member gets it
//! in its bounded outbox and is woken; a full outbox is a slow consumer, handled by that
//! consumer's own policy. A broadcast larger than a member's own `max_message_size` (its
//! [`Intake`], fixed when it joined) is dropped for that member alone and counted: a reload or
//! another instance may send what its buffers were never sized for. Every connection joins
//! (echo ones too), so shutdown reaches all of them by dropping their senders.
//!
//! With a cluster bridge attached ([`Hub::set_outlet`]), a broadcast is also `try_send` into the
//! bridge's bounded queue after the local fan-out, and broadcasts from other instances come in
//! through [`Hub::deliver`]. The hub never waits for the bridge: a full queue is counted.
//!
//! Each member carries who it is ([`Profile`], set once after joining) and what it moved
//! ([`Traffic`]), so the admin API can list connections and end the ones it names (issue 16).
//! Every delivery that stays in memory (an outbox entry, a direct write the socket did not take
//! whole, a message in the bridge's queue) is charged to the process-wide [`Budget`] first. A
//! fan-out that does not fit closes the subscribers with the largest backlog with 1008 `slow
//! consumer` until it does ([`memory::choose_drops`]); nothing is queued past the cap.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tungstenite::Message;

pub(crate) mod cluster;
pub(crate) mod waker;

use crate::config::{Mode, SlowConsumer, WsLimits};
use crate::memory::{self, Account, Budget, Candidate, Charged, Room};
use crate::ops::metrics::Counter;
use crate::ops::metrics::Metrics;
pub use crate::policy::Holder;
use crate::policy::{Method, Revocation};
use waker::Waker;

/// A member's connection, as the hub may write a broadcast straight into it.
pub trait DirectWrite: Send + Sync {
    /// Writes `msg` now if that needs no waiting and overtakes nothing: the connection's lock is
    /// free (taken with `try_lock`), `outbox_empty()` holds under that lock, and nothing written
    /// earlier is still stuck in its buffers. The socket is non-blocking. `wire` is the message
    /// already encoded as a frame ([`crate::pipeline::frames::wire_frame`]) when it is small enough, the
    /// same bytes for every subscriber. The hub has charged `msg` to the member's memory account;
    /// unless it answers [`Handoff::Queue`], the connection takes that charge over.
    fn try_write(
        &self,
        msg: &Message,
        wire: Option<&[u8]>,
        outbox_empty: &dyn Fn() -> bool,
    ) -> Handoff;
}

/// What [`DirectWrite::try_write`] did with a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Written to the socket.
    Sent,
    /// Accepted, but the socket was full (or failed): the connection must be woken to finish
    /// the write (or to find the error).
    SentWake,
    /// Not taken: queue it in the outbox as usual.
    Queue,
}

/// What one member takes from the hub, fixed when it joins from its channel's limits at the
/// time: a reload changes the limits of new connections, never the buffers of a live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intake {
    /// Messages its outbox holds before it counts as slow (`outbox`).
    pub outbox: usize,
    /// What a full outbox gets (`slow_consumer`).
    pub slow_consumer: SlowConsumer,
    /// The largest broadcast it is sent (`max_message_size`). Its write buffer holds one such
    /// message whatever else is buffered (the config checks `max_write_buffer_size`), so a
    /// message it is sent always fits once the buffer has drained.
    pub max_message: usize,
}

impl Intake {
    /// The intake a connection with these channel limits gets.
    pub fn of(limits: &WsLimits) -> Intake {
        Intake {
            outbox: limits.outbox.get(),
            slow_consumer: limits.slow_consumer,
            max_message: limits.max_message_size.get(),
        }
    }
}

struct Member {
    id: u64,
    /// The outbox's sending side; at most `intake.outbox` messages queued (counted in
    /// [`MemberShared::queued`]).
    tx: Sender<Message>,
    /// The outbox's receiving side too, so that a member dropped at the memory cap gives its
    /// queued bytes back at once rather than when its loop ends.
    rx: Receiver<Message>,
    intake: Intake,
    shared: Arc<MemberShared>,
}

impl Member {
    /// Queues `msg` in the outbox unless it holds `intake.outbox` messages already. The caller
    /// has charged its bytes to the member's account; they stay charged while it is queued.
    fn try_queue(&self, msg: &Message) -> Result<(), TrySendError<()>> {
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= self.intake.outbox {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(()));
        }
        self.shared
            .queued_bytes
            .fetch_add(msg.len(), Ordering::Relaxed);
        self.tx.send(msg.clone()).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.shared
                .queued_bytes
                .fetch_sub(msg.len(), Ordering::Relaxed);
            TrySendError::Disconnected(())
        })
    }
}

/// Takes one message off an outbox, keeping the counts in step (its bytes stay charged: they
/// move on to the write buffer).
fn take_queued(rx: &Receiver<Message>, shared: &MemberShared) -> Result<Message, TryRecvError> {
    let msg = rx.try_recv()?;
    shared.queued.fetch_sub(1, Ordering::AcqRel);
    shared.queued_bytes.fetch_sub(msg.len(), Ordering::Relaxed);
    Ok(msg)
}

/// Empties an outbox whose messages will never be written, giving their bytes back.
fn discard_queued(rx: &Receiver<Message>, shared: &MemberShared) {
    while let Ok(msg) = take_queued(rx, shared) {
        shared.account.release(msg.len());
    }
}

/// State the hub and the connection both see.
pub struct MemberShared {
    /// Wakes the connection's `poll` for queued broadcasts; only members of broadcast channels
    /// have one (an eventfd). An echo connection receives nothing from the hub, so it spends no
    /// descriptor on it: its one wake-up, the end (shutdown, revocation), shuts the read side of
    /// its socket instead ([`MemberShared::end`]).
    pub waker: Option<Waker>,
    /// The connection's socket, once its loop runs (see [`MemberShared::end`]).
    socket: OnceLock<Arc<TcpStream>>,
    /// Set by the hub when the outbox overflowed under the `disconnect` policy.
    slow: AtomicBool,
    /// Set when a reload took away this member's access; it closes with 1008 and the reason in
    /// `revocation`.
    revoked: AtomicBool,
    /// Why it was revoked (set before `revoked`).
    revocation: OnceLock<Revocation>,
    /// Who holds this membership, so a reload can re-check their access.
    pub holder: Holder,
    /// Messages in the outbox. The outbox is an unbounded channel bounded by this count, so its
    /// storage is allocated as messages queue (crossbeam's list flavour, blocks of 31) rather
    /// than up front: most subscribers get their broadcasts written directly and never queue.
    queued: AtomicUsize,
    /// Payload bytes in the outbox (what dropping the member at the memory cap frees at once).
    queued_bytes: AtomicUsize,
    /// What this connection holds against the memory cap: its outbox, its write buffer beyond
    /// what was flushed, the message it is reading. Released whole when the membership ends.
    pub account: Account,
    /// The connection's direct-write path, once its loop runs (see [`DirectWrite`]).
    pub direct: OnceLock<Arc<dyn DirectWrite>>,
    /// When the connection's loop entered the step it is in, in milliseconds after the hub's
    /// epoch plus one; 0 while it waits in `poll` (or has not started). For the watchdog: a step
    /// never waits, so one that lasts is a wedged worker ([`Hub::longest_step`]).
    step_since: AtomicU64,
    /// Who the connection is, for the admin API's listing; set once, just before the 101.
    pub profile: OnceLock<Profile>,
    /// What the connection moved so far.
    pub traffic: Traffic,
}

/// A connection as the admin API lists it. Holds no secret: the session id names a session,
/// it does not prove one (the signed session token does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub method: Method,
    pub mode: Mode,
    pub peer: SocketAddr,
    pub since: SystemTime,
    pub session_id: String,
}

/// Data messages and their payload bytes, each way, of one connection.
#[derive(Debug, Default)]
pub struct Traffic {
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Traffic {
    /// One data message of `len` bytes received.
    pub fn received(&self, len: usize) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// One data message of `len` bytes sent.
    pub fn sent(&self, len: usize) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
    }
}

impl MemberShared {
    /// Ends this member's connection with 1008 and the revocation's reason (`credential revoked`,
    /// `access revoked`, `disconnected by admin`) at its next wake-up, which this triggers.
    /// Returns false when it was revoked already (the first reason stands).
    pub fn revoke(&self, why: Revocation) -> bool {
        let _ = self.revocation.set(why);
        if self.revoked.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.end();
        true
    }

    /// Wakes the connection for queued broadcasts (members with a waker only).
    fn wake(&self) {
        if let Some(waker) = &self.waker {
            waker.wake();
        }
    }

    /// Wakes the connection to end it: the flag saying why (`slow`, `revoked`, the hub closed) is
    /// set before this. Without a waker, shutting the socket's read side makes its `poll` return;
    /// the loop checks the flags before reading, and can still write its close frame.
    fn end(&self) {
        if self.waker.is_some() {
            self.wake();
            return;
        }
        // Pairs with the fence in `attach_socket`: either the loop sees the flag, or we see the
        // socket.
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(socket) = self.socket.get() {
            let _ = socket.shutdown(Shutdown::Read);
        }
    }
}

/// What leaves this instance for the others, queued for the cluster bridge.
#[derive(Debug)]
pub enum Outbound {
    /// A broadcast published here on `path`. Its bytes are charged to the memory cap until it
    /// is dropped (by the bridge, once sent or discarded); `charge` is None when the cap is off.
    Broadcast {
        path: String,
        msg: Message,
        charge: Option<Charged>,
    },
    /// An admin's disconnect: every instance ends its connections that match.
    Disconnect(Filter),
}

impl Outbound {
    /// A broadcast that carries no charge (the cap is off, or a test).
    pub fn broadcast(path: &str, msg: Message) -> Outbound {
        Outbound::Broadcast {
            path: path.to_string(),
            msg,
            charge: None,
        }
    }
}

/// Equal when they carry the same thing (the charge is bookkeeping).
impl PartialEq for Outbound {
    fn eq(&self, other: &Outbound) -> bool {
        match (self, other) {
            (
                Outbound::Broadcast { path, msg, .. },
                Outbound::Broadcast {
                    path: p2, msg: m2, ..
                },
            ) => path == p2 && msg == m2,
            (Outbound::Disconnect(a), Outbound::Disconnect(b)) => a == b,
            _ => false,
        }
    }
}

/// Which connections an admin means (`GET /connections`, `POST /disconnect`): every key given
/// must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `user`: that user's connections; `-` for anonymous ones.
    pub user: Option<String>,
    /// `session`: the connection(s) with that session id.
    pub session: Option<String>,
    /// `path`: connections on that path, or under it with a trailing `/*` (`/chat/*`).
    pub path: Option<String>,
}

impl Filter {
    /// True when no key is given (it would match every connection).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.session.is_none() && self.path.is_none()
    }

    /// Whether a connection of `user` (None: anonymous) on `path` with `session` matches every
    /// given key.
    #[must_use]
    pub fn matches(&self, user: Option<&str>, session: Option<&str>, path: &str) -> bool {
        let user_ok = self
            .user
            .as_deref()
            .is_none_or(|want| want == user.unwrap_or("-"));
        let session_ok = self
            .session
            .as_deref()
            .is_none_or(|want| Some(want) == session);
        let path_ok = self.path.as_deref().is_none_or(|want| {
            match want.strip_suffix('*').filter(|p| p.ends_with('/')) {
                Some(prefix) => path.starts_with(prefix),
                None => want == path,
            }
        });
        user_ok && session_ok && path_ok
    }
}

/// The registry of channel members.
pub struct Hub {
    groups: RwLock<HashMap<String, Vec<Member>>>,
    /// The cluster bridge's queue, while one is attached; taken (dropped) at shutdown.
    outlet: RwLock<Option<Sender<Outbound>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
    /// The process-wide memory cap every queued delivery is charged to.
    budget: Arc<Budget>,
    /// Serialises joins against shutdown so nobody joins a hub that is being emptied.
    gate: Mutex<()>,
    /// The zero of [`MemberShared`]'s step clock.
    epoch: Instant,
}

/// The hub is shutting down: no new members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubClosed;

/// A connection's membership; leaving the channel is dropping it.
pub struct Membership {
    hub: Arc<Hub>,
    path: String,
    pub id: u64,
    /// This connection's outbox (see [`Membership::next_queued`]).
    outbox: Receiver<Message>,
    pub shared: Arc<MemberShared>,
}

impl Hub {
    /// An empty hub that counts drops and slow consumers in `metrics`, without a memory cap.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Hub> {
        Hub::with_budget(metrics, Arc::new(Budget::off()))
    }

    /// An empty hub that charges what it queues to `budget`.
    pub fn with_budget(metrics: Arc<Metrics>, budget: Arc<Budget>) -> Arc<Hub> {
        Arc::new(Hub {
            budget,
            groups: RwLock::default(),
            outlet: RwLock::new(None),
            next_id: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            metrics,
            gate: Mutex::new(()),
            epoch: Instant::now(),
        })
    }

    /// Adds a connection to `path` that takes broadcasts as `intake` says; `receives` is false
    /// for an echo connection, which gets no broadcasts (and no eventfd).
    ///
    /// # Errors
    /// `Ok(Err(HubClosed))` during shutdown; `Err` if no eventfd could be made.
    pub fn join(
        self: &Arc<Self>,
        path: &str,
        receives: bool,
        intake: Intake,
        holder: Holder,
    ) -> io::Result<Result<Membership, HubClosed>> {
        let shared = Arc::new(MemberShared {
            waker: if receives { Some(Waker::new()?) } else { None },
            slow: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            revocation: OnceLock::new(),
            holder,
            socket: OnceLock::new(),
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            account: Account::new(Arc::clone(&self.budget)),
            direct: OnceLock::new(),
            step_since: AtomicU64::new(0),
            profile: OnceLock::new(),
            traffic: Traffic::default(),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return Ok(Err(HubClosed));
        }
        let member = Member {
            id,
            tx,
            rx: rx.clone(),
            intake,
            shared: Arc::clone(&shared),
        };
        self.write_groups()
            .entry(path.to_string())
            .or_default()
            .push(member);
        Ok(Ok(Membership {
            hub: Arc::clone(self),
            path: path.to_string(),
            id,
            outbox: rx,
            shared,
        }))
    }

    /// Attaches the cluster bridge: from now on every broadcast is also queued on `outlet`.
    pub fn set_outlet(&self, outlet: Sender<Outbound>) {
        *self.outlet.write().unwrap_or_else(|p| p.into_inner()) = Some(outlet);
    }

    /// Sends `msg` to every member of `path` except `from`, then queues it for the other
    /// instances if a cluster bridge is attached. Never blocks.
    pub fn publish(&self, path: &str, from: u64, msg: &Message) {
        self.fan_out(path, Some(from), msg);
        self.forward(path, msg);
    }

    /// Publishes `msg` on `path` from outside any connection (the admin API's `POST /publish`):
    /// every member of `path` here, then the other instances. Returns how many members here
    /// took it (written or queued). Never blocks.
    pub fn inject(&self, path: &str, msg: &Message) -> usize {
        let reached = self.fan_out(path, None, msg);
        self.forward(path, msg);
        reached
    }

    /// Queues `msg` for the other instances if a cluster bridge is attached.
    fn forward(&self, path: &str, msg: &Message) {
        let outlet = self.outlet.read().unwrap_or_else(|p| p.into_inner());
        if let Some(outlet) = outlet.as_ref() {
            // At the memory cap the message is not forwarded, as with a full queue.
            let charge = if self.budget.cap().is_some() {
                match Charged::try_new(&self.budget, msg.len(), Room::Deliveries) {
                    Some(charge) => Some(charge),
                    None => {
                        self.metrics.bump(Counter::ClusterNotForwarded, 1);
                        return;
                    }
                }
            } else {
                None
            };
            let out = Outbound::Broadcast {
                path: path.to_string(),
                msg: msg.clone(),
                charge,
            };
            // Full: the bridge is behind (or Redis slow); Disconnected: the bridge stopped.
            if outlet.try_send(out).is_err() {
                self.metrics.bump(Counter::ClusterNotForwarded, 1);
            }
        }
    }

    /// Delivers a broadcast that another instance published to every member of `path` here.
    /// It is never queued for the bridge again. Never blocks.
    pub fn deliver(&self, path: &str, msg: &Message) {
        self.fan_out(path, None, msg);
    }

    /// Sends `msg` to every member of `path` except `from`, and to none whose own limits are
    /// smaller than it (dropped for that member and counted). Each delivery is charged to the
    /// member's account first; those that do not fit under the memory cap are settled by
    /// [`Hub::squeeze`]. Returns how many took it (written or queued).
    fn fan_out(&self, path: &str, from: Option<u64>, msg: &Message) -> usize {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        let Some(members) = groups.get(path) else {
            return 0;
        };
        let mut reached = 0;
        // Encoded once, at the first direct write, for every subscriber.
        let wire = std::cell::OnceCell::new();
        let mut dropped = 0;
        for (i, m) in members.iter().enumerate() {
            // A member already closing as slow never reads its outbox again.
            if Some(m.id) == from
                || m.shared.waker.is_none()
                || m.shared.slow.load(Ordering::Acquire)
            {
                continue;
            }
            if msg.len() > m.intake.max_message {
                // Its write buffer may be too small to ever take it: retried, it would wedge
                // the member's loop (issue 11).
                self.metrics.bump(Counter::BroadcastTooBig, 1);
                continue;
            }
            if !m.shared.account.try_charge(msg.len(), Room::Deliveries) {
                dropped += self.squeeze(members, from, i, msg.len());
                if m.shared.slow.load(Ordering::Acquire)
                    || !m.shared.account.try_charge(msg.len(), Room::Deliveries)
                {
                    // Dropped to make room, or the room went to another publisher meanwhile:
                    // nothing is queued past the cap.
                    if self.drop_at_cap(m) {
                        dropped += 1;
                    }
                    continue;
                }
            }
            if self.deliver_charged(m, msg, &wire) {
                reached += 1;
            }
        }
        if dropped > 0 {
            self.metrics.bump(Counter::MemoryDrops, dropped as u64);
            self.budget.dropped(dropped);
        }
        reached
    }

    /// Delivers `msg`, already charged to `m`'s account: straight into its socket when it is
    /// idle, else into its outbox. The charge stays with whatever still holds the bytes (the
    /// outbox, or the write buffer a direct write could not flush) and is given back otherwise.
    /// Returns whether the member took it (written or queued).
    fn deliver_charged(
        &self,
        m: &Member,
        msg: &Message,
        wire: &std::cell::OnceCell<Option<Vec<u8>>>,
    ) -> bool {
        if let Some(direct) = m.shared.direct.get() {
            if !m.shared.revoked.load(Ordering::Acquire) {
                let frame = wire.get_or_init(|| crate::pipeline::frames::wire_frame(msg));
                match direct.try_write(msg, frame.as_deref(), &|| m.tx.is_empty()) {
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
                    Handoff::Queue => {}
                }
            }
        }
        match m.try_queue(msg) {
            Ok(()) => {
                m.shared.wake();
                true
            }
            Err(TrySendError::Full(())) => {
                m.shared.account.release(msg.len());
                match m.intake.slow_consumer {
                    SlowConsumer::Drop => self.metrics.bump(Counter::BroadcastDropped, 1),
                    SlowConsumer::Disconnect => {
                        self.close_slow(m);
                    }
                }
                false
            }
            // The member is leaving; its Membership drop removes it.
            Err(TrySendError::Disconnected(_)) => {
                m.shared.account.release(msg.len());
                false
            }
        }
    }

    /// Ends every member here that `filter` matches with 1008 `disconnected by admin`; returns
    /// how many (not counting those already ending). An empty filter matches nobody. Also
    /// called for a disconnect from another instance.
    pub fn disconnect(&self, filter: &Filter) -> usize {
        if filter.is_empty() {
            return 0;
        }
        let mut n = 0;
        self.for_each_member(|path, m| {
            let session = m.profile.get().map(|p| p.session_id.as_str());
            if filter.matches(m.holder.user.as_deref(), session, path)
                && m.revoke(Revocation::Admin)
            {
                n += 1;
            }
        });
        n
    }

    /// Queues `filter` for the other instances, which end their matching members; false
    /// without a cluster bridge, or when its queue is full (counted as not forwarded).
    pub fn forward_disconnect(&self, filter: &Filter) -> bool {
        let outlet = self.outlet.read().unwrap_or_else(|p| p.into_inner());
        let Some(outlet) = outlet.as_ref() else {
            return false;
        };
        let sent = outlet
            .try_send(Outbound::Disconnect(filter.clone()))
            .is_ok();
        if !sent {
            self.metrics.bump(Counter::ClusterNotForwarded, 1);
        }
        sent
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
    /// backlog (1008 `slow consumer`, their outbox given back at once) until `len` bytes fit,
    /// which may be `members[short]` itself. Members already closing are not candidates: they
    /// get nothing more. Returns how many it closed.
    fn squeeze(&self, members: &[Member], from: Option<u64>, short: usize, len: usize) -> usize {
        let eligible: Vec<usize> = (0..members.len())
            .filter(|&i| {
                let m = &members[i];
                Some(m.id) != from
                    && m.shared.waker.is_some()
                    && !m.shared.slow.load(Ordering::Acquire)
            })
            .collect();
        let candidates: Vec<Candidate> = eligible
            .iter()
            .map(|&i| {
                let m = &members[i];
                Candidate {
                    backlog: m.shared.account.held(),
                    frees: m.shared.queued_bytes.load(Ordering::Relaxed),
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

    /// Closes `m` at the memory cap as a slow consumer and gives its outbox back now; true if
    /// this call closed it.
    fn drop_at_cap(&self, m: &Member) -> bool {
        let closed = self.close_slow(m);
        discard_queued(&m.rx, &m.shared);
        closed
    }

    /// Calls `f` with every member's path and shared state (for re-checking access on reload).
    pub fn for_each_member(&self, mut f: impl FnMut(&str, &MemberShared)) {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        for (path, members) in groups.iter() {
            for m in members {
                f(path, &m.shared);
            }
        }
    }

    /// How long the connection that has been in its current loop step the longest has been in
    /// it; None when no connection is in a step. Takes the members' read lock briefly.
    pub fn longest_step(&self) -> Option<Duration> {
        let now = self.clock();
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups
            .values()
            .flatten()
            .map(|m| m.shared.step_since.load(Ordering::Acquire))
            .filter(|&since| since != 0)
            .map(|since| Duration::from_millis(now.saturating_sub(since)))
            .max()
    }

    /// Milliseconds since the epoch, plus one (0 means "not in a step").
    fn clock(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// The memory cap this hub charges to.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// True once shutdown began.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Members currently on `path`.
    pub fn members(&self, path: &str) -> usize {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .map_or(0, Vec::len)
    }

    /// Members on all paths.
    pub fn total_members(&self) -> usize {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Refuses new members and disconnects every outbox, waking each member so that it closes
    /// with 1001 (going away). Detaches the cluster bridge (its queue reports Disconnected).
    pub fn shutdown(&self) {
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::Release);
        drop(
            self.outlet
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let groups = std::mem::take(&mut *self.write_groups());
        for member in groups.into_values().flatten() {
            let shared = Arc::clone(&member.shared);
            drop(member); // drops the sender: the outbox reports Disconnected
            shared.end();
        }
    }

    fn write_groups(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Vec<Member>>> {
        self.groups.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Membership {
    /// The server's counters, for the connection loop's per-message figures.
    pub fn metrics(&self) -> &Metrics {
        &self.hub.metrics
    }

    /// Broadcasts `msg` to the other members of this path.
    pub fn publish(&self, msg: &Message) {
        self.hub.publish(&self.path, self.id, msg);
    }

    /// Gives the hub the connection's socket, so that ending a member without a waker can wake
    /// its `poll` (see [`MemberShared::end`]). Check the end flags after this.
    pub fn attach_socket(&self, socket: Arc<TcpStream>) {
        let _ = self.shared.socket.set(socket);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Why the hub wants this connection to end, if it does: a slow consumer or revoked access
    /// (1008), or shutdown with nothing left to deliver (1001).
    pub fn ended(&self) -> Option<(u16, &'static str)> {
        if self.shared.slow.load(Ordering::Acquire) {
            Some((1008, "slow consumer"))
        } else if self.shared.revoked.load(Ordering::Acquire) {
            let why = self.shared.revocation.get().copied();
            Some((1008, why.unwrap_or(Revocation::Access).close_reason()))
        } else if self.hub.is_closed() && self.outbox.is_empty() {
            Some((1001, "going away"))
        } else {
            None
        }
    }

    /// Messages waiting in this connection's outbox now.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// The connection's loop enters a step (see [`Hub::longest_step`]).
    pub fn step_began(&self) {
        self.shared
            .step_since
            .store(self.hub.clock(), Ordering::Release);
    }

    /// The connection's loop left its step, to wait in `poll` or to end.
    pub fn step_ended(&self) {
        self.shared.step_since.store(0, Ordering::Release);
    }

    /// The next message in this connection's outbox. `Disconnected` means the server is
    /// shutting down.
    ///
    /// # Errors
    /// `Empty` when nothing is queued.
    pub fn next_queued(&self) -> Result<Message, TryRecvError> {
        take_queued(&self.outbox, &self.shared)
    }

    /// Empties the outbox, giving its bytes back to the memory cap: the connection is ending and
    /// will write none of it.
    pub fn discard_queued(&self) {
        discard_queued(&self.outbox, &self.shared);
    }

    /// This connection's share of the memory cap.
    pub fn account(&self) -> &Account {
        &self.shared.account
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut groups = self.hub.write_groups();
        if let Some(members) = groups.get_mut(&self.path) {
            members.retain(|m| m.id != self.id);
            if members.is_empty() {
                groups.remove(&self.path);
            }
        }
        drop(groups);
        // Out of the hub, so no fan-out charges it any more: whatever it still holds (outbox,
        // write buffer, a message half read) is given back.
        self.shared.account.release_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::text(s)
    }

    fn hub() -> Arc<Hub> {
        Hub::new(Arc::new(Metrics::new(["/c"])))
    }

    fn intake(outbox: usize, slow_consumer: SlowConsumer) -> Intake {
        Intake {
            outbox,
            slow_consumer,
            max_message: 1024,
        }
    }

    fn join(hub: &Arc<Hub>, path: &str, outbox: usize, policy: SlowConsumer) -> Membership {
        hub.join(path, true, intake(outbox, policy), Holder::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn longest_step_reports_only_connections_inside_a_step() {
        let hub = hub();
        let a = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let b = join(&hub, "/d", 4, SlowConsumer::Disconnect);
        assert_eq!(hub.longest_step(), None);
        a.step_began();
        std::thread::sleep(Duration::from_millis(30));
        b.step_began();
        let longest = hub.longest_step().unwrap();
        assert!(longest >= Duration::from_millis(25), "{longest:?}");
        a.step_ended();
        assert!(hub.longest_step().unwrap() < Duration::from_millis(25));
        b.step_ended();
        assert_eq!(hub.longest_step(), None);
    }

    #[test]
    fn a_broadcast_over_a_members_own_limit_is_dropped_for_it_alone_and_counted() {
        let hub = hub();
        let sender = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let small = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let large = hub
            .join(
                "/c",
                true,
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
            std::iter::from_fn(|| m.next_queued().ok())
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
        assert_eq!(b.next_queued().unwrap(), text("hi"));
        assert!(a.next_queued().is_err());
        assert!(other.next_queued().is_err());
    }

    #[test]
    fn an_echo_member_gets_no_broadcasts_and_is_ended_through_its_socket() {
        let hub = hub();
        let sender = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let echo = hub
            .join(
                "/c",
                false,
                intake(4, SlowConsumer::Disconnect),
                Holder::default(),
            )
            .unwrap()
            .unwrap();
        assert!(echo.shared.waker.is_none(), "no eventfd for an echo member");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        echo.attach_socket(Arc::new(server_side));
        hub.publish("/c", sender.id, &text("x"));
        assert!(matches!(echo.next_queued(), Err(TryRecvError::Empty)));
        assert_eq!(echo.ended(), None);
        // Revocation shuts the read side: the loop's poll wakes, and the flag says why.
        echo.shared.revoke(Revocation::Access);
        let sock = echo.shared.socket.get().unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &**sock,
            rustix::event::PollFlags::IN,
        )];
        let second = rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        assert_eq!(rustix::event::poll(&mut fds, Some(&second)).unwrap(), 1);
        assert_eq!(echo.ended(), Some((1008, "access revoked")));
        drop(client);
    }

    #[test]
    fn shutdown_ends_every_member_with_1001_once_its_outbox_is_empty() {
        let hub = hub();
        let a = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let b = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        hub.publish("/c", a.id, &text("last"));
        hub.shutdown();
        assert_eq!(b.ended(), None, "a queued message goes out first");
        assert_eq!(b.next_queued().unwrap(), text("last"));
        assert_eq!(b.ended(), Some((1001, "going away")));
        assert_eq!(a.ended(), Some((1001, "going away")));
    }

    #[test]
    fn outbox_bound_counts_only_what_is_still_queued() {
        let hub = hub();
        let sender = join(&hub, "/c", 1, SlowConsumer::Drop);
        let b = join(&hub, "/c", 2, SlowConsumer::Drop);
        for round in 0..3 {
            for i in 0..3 {
                hub.publish("/c", sender.id, &text(&format!("{round}.{i}")));
            }
            // Two fit, the third is dropped; draining makes room for the next round.
            assert_eq!(b.next_queued().unwrap(), text(&format!("{round}.0")));
            assert_eq!(b.next_queued().unwrap(), text(&format!("{round}.1")));
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
        assert_eq!(dropper.next_queued().unwrap(), text("1"));
    }

    #[test]
    fn outlet_gets_broadcasts_once_and_counts_a_full_queue() {
        let metrics = Arc::new(Metrics::new(["/c"]));
        let hub = Hub::new(Arc::clone(&metrics));
        let a = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let b = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        // No bridge: local only, nothing counted.
        a.publish(&text("local"));
        assert_eq!(b.next_queued().unwrap(), text("local"));
        assert_eq!(metrics.count(Counter::ClusterNotForwarded), 0);

        let (tx, rx) = crossbeam_channel::bounded(1);
        hub.set_outlet(tx);
        a.publish(&text("1"));
        a.publish(&text("2")); // the queue holds one: not forwarded
        assert_eq!(b.next_queued().unwrap(), text("1"));
        assert_eq!(b.next_queued().unwrap(), text("2"));
        assert_eq!(rx.try_recv().unwrap(), Outbound::broadcast("/c", text("1")));
        assert!(rx.try_recv().is_err());
        assert_eq!(metrics.count(Counter::ClusterNotForwarded), 1);

        // From another instance: every member here gets it (the publisher is elsewhere), and
        // it is not queued for Redis again.
        hub.deliver("/c", &Message::binary(vec![0u8, 255]));
        assert_eq!(a.next_queued().unwrap(), Message::binary(vec![0u8, 255]));
        assert_eq!(b.next_queued().unwrap(), Message::binary(vec![0u8, 255]));
        assert!(rx.try_recv().is_err());

        // Shutdown detaches the bridge.
        hub.shutdown();
        assert!(matches!(
            rx.recv_timeout(std::time::Duration::from_secs(1)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        ));
    }

    #[test]
    fn inject_reaches_every_member_counts_them_and_forwards_once() {
        let metrics = Arc::new(Metrics::new(["/c"]));
        let hub = Hub::new(Arc::clone(&metrics));
        let a = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let b = join(&hub, "/c", 1, SlowConsumer::Drop);
        let _other = join(&hub, "/d", 4, SlowConsumer::Disconnect);
        assert_eq!(hub.inject("/c", &text("1")), 2, "both, none excluded");
        assert_eq!(hub.inject("/c", &text("2")), 1, "b's outbox is full");
        assert_eq!(hub.inject("/nobody", &text("3")), 0);
        assert_eq!(a.next_queued().unwrap(), text("1"));
        assert_eq!(b.next_queued().unwrap(), text("1"));
        let (tx, rx) = crossbeam_channel::bounded(4);
        hub.set_outlet(tx);
        hub.inject("/c", &text("4"));
        assert_eq!(rx.try_recv().unwrap(), Outbound::broadcast("/c", text("4")));
        assert!(rx.try_recv().is_err());
    }

    fn member_of(hub: &Arc<Hub>, path: &str, user: Option<&str>, session: &str) -> Membership {
        let holder = Holder {
            user: user.map(str::to_string),
            ..Holder::default()
        };
        let m = hub
            .join(path, true, intake(4, SlowConsumer::Disconnect), holder)
            .unwrap()
            .unwrap();
        m.shared
            .profile
            .set(Profile {
                method: Method::Password,
                mode: Mode::Broadcast,
                peer: "127.0.0.1:1".parse().unwrap(),
                since: SystemTime::now(),
                session_id: session.to_string(),
            })
            .unwrap();
        m
    }

    #[test]
    fn disconnect_ends_the_members_every_key_matches_once_and_is_forwarded() {
        let hub = hub();
        let alice = member_of(&hub, "/chat/a", Some("alice"), "s1");
        let alice2 = member_of(&hub, "/news", Some("alice"), "s2");
        let bob = member_of(&hub, "/chat/b", Some("bob"), "s3");
        let anon = member_of(&hub, "/chat/b", None, "s4");
        let f = |user: Option<&str>, session: Option<&str>, path: Option<&str>| Filter {
            user: user.map(str::to_string),
            session: session.map(str::to_string),
            path: path.map(str::to_string),
        };
        assert_eq!(
            hub.disconnect(&Filter::default()),
            0,
            "empty matches nobody"
        );
        assert_eq!(hub.disconnect(&f(Some("alice"), None, Some("/chat/*"))), 1);
        assert_eq!(alice.ended(), Some((1008, "disconnected by admin")));
        assert_eq!(alice2.ended(), None);
        assert_eq!(
            hub.disconnect(&f(Some("alice"), None, None)),
            1,
            "once each"
        );
        assert_eq!(hub.disconnect(&f(Some("-"), None, None)), 1);
        assert_eq!(anon.ended(), Some((1008, "disconnected by admin")));
        assert_eq!(hub.disconnect(&f(None, Some("s3"), Some("/chat"))), 0);
        assert_eq!(hub.disconnect(&f(None, Some("s3"), None)), 1);
        assert_eq!(bob.ended(), Some((1008, "disconnected by admin")));
        // Only with a bridge.
        assert!(!hub.forward_disconnect(&f(Some("x"), None, None)));
        let (tx, rx) = crossbeam_channel::bounded(1);
        hub.set_outlet(tx);
        assert!(hub.forward_disconnect(&f(Some("x"), None, None)));
        assert!(
            !hub.forward_disconnect(&f(Some("y"), None, None)),
            "queue full"
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            Outbound::Disconnect(f(Some("x"), None, None))
        );
        assert_eq!(hub.metrics.count(Counter::ClusterNotForwarded), 1);
    }

    #[test]
    fn a_filter_path_matches_exactly_or_under_a_trailing_slash_star() {
        let f = |p: &str| Filter {
            path: Some(p.into()),
            ..Filter::default()
        };
        assert!(f("/chat/a").matches(None, None, "/chat/a"));
        assert!(!f("/chat/a").matches(None, None, "/chat/ab"));
        assert!(f("/chat/*").matches(None, None, "/chat/a/b"));
        assert!(!f("/chat/*").matches(None, None, "/chatroom"));
        assert!(
            !f("/chat*").matches(None, None, "/chatroom"),
            "only after a slash"
        );
        assert!(f("/chat*").matches(None, None, "/chat*"));
    }

    #[test]
    fn leaving_and_shutdown() {
        let hub = hub();
        let a = join(&hub, "/c", 1, SlowConsumer::Disconnect);
        let b = join(&hub, "/c", 1, SlowConsumer::Disconnect);
        drop(a);
        assert_eq!(hub.members("/c"), 1);
        hub.shutdown();
        assert!(matches!(
            b.next_queued(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        ));
        assert_eq!(
            hub.join("/c", true, intake(1, SlowConsumer::Drop), Holder::default())
                .unwrap()
                .err(),
            Some(HubClosed)
        );
        drop(b);
        assert_eq!(hub.total_members(), 0);
    }
}
