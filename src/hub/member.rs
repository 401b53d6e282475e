//! A member's state, shared by the hub and its connection: the outbox and its counts, the end
//! flags (slow, revoked), the waker or socket that ends it, who it is and what it moved; the
//! [`Intake`] fixed when it joined; a broadcast on its way to it with its memory [`Charge`]
//! ([`Queued`]); and the [`DirectWrite`] path a broadcast takes into an idle connection.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tungstenite::Message;

use super::waker::Waker;
use crate::config::{ChannelConfig, Mode, Retention, SlowConsumer};
use crate::memory::{Account, Charge};
use crate::policy::Holder;
use crate::policy::{Method, Revocation};

/// A member's connection, as the hub may write a broadcast straight into it.
pub trait DirectWrite: Send + Sync {
    /// Writes `msg` now if that needs no waiting and overtakes nothing: the connection's lock is
    /// free (taken with `try_lock`), `outbox_empty()` holds under that lock, and nothing written
    /// earlier is still stuck in its buffers. The socket is non-blocking. `wire` is the message
    /// already encoded as a frame ([`super::fanout::wire_frame`]) when it is small enough, the
    /// same bytes for every subscriber. `charge` counts `msg` against the member's share of the
    /// memory cap: the connection keeps it with the bytes it took, or hands it back with
    /// [`Handoff::Queue`].
    fn try_write(
        &self,
        msg: &Message,
        wire: Option<&[u8]>,
        charge: Charge,
        outbox_empty: &dyn Fn() -> bool,
    ) -> Handoff;

    /// The member was closed at the memory cap: gives back now what the connection's write side
    /// holds against the cap, and writes nothing more but, when the socket takes it at once, its
    /// close. The bytes themselves are freed as the connection ends, at the wake-up the close
    /// sent it. False when the connection's loop holds its lock (it is working): it gives them
    /// back as it ends, at its next step.
    fn abandon(&self) -> bool;
}

/// What [`DirectWrite::try_write`] did with a broadcast.
#[derive(Debug)]
pub enum Handoff {
    /// Written to the socket.
    Sent,
    /// Accepted, but the socket was full (or failed): the connection must be woken to finish
    /// the write (or to find the error).
    SentWake,
    /// Not taken: queue it in the outbox as usual, with its charge.
    Queue(Charge),
}

/// A broadcast on its way to one member (in its outbox, or held back by its full write buffer)
/// with the charge for its bytes: whoever drops it unsent gives them back.
#[derive(Debug)]
pub struct Queued {
    pub msg: Message,
    pub charge: Charge,
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
    /// Broadcasts reach it in the envelope (`wsgate.v1.json`), not as plain payloads.
    pub envelope: bool,
    /// What its channel keeps of the broadcasts on its path (`history_size`, `history_ttl`):
    /// what it publishes is kept so.
    pub history: Option<Retention>,
    /// Its path's enveloped members are told when it joins and leaves (`presence`).
    pub presence: bool,
}

/// The longest header of a server frame (no mask): 2 bytes, and 8 of extended length.
const MAX_FRAME_HEADER: usize = 14;

impl Intake {
    /// The intake a connection of this channel gets; `envelope` when it asked for it. An
    /// enveloped member is sent envelopes larger than the payloads inside them: its bound is
    /// what its write buffer always takes (`max_write_buffer_size` less `write_buffer_size` and
    /// a frame header, which the config holds to at least `max_message_size`).
    pub fn of(channel: &ChannelConfig, envelope: bool) -> Intake {
        let limits = &channel.limits;
        let max_message = if envelope {
            (limits.max_write_buffer_size.get())
                .saturating_sub(limits.write_buffer_size + MAX_FRAME_HEADER)
                .max(limits.max_message_size.get())
        } else {
            limits.max_message_size.get()
        };
        Intake {
            outbox: limits.outbox.get(),
            slow_consumer: limits.slow_consumer,
            max_message,
            envelope,
            history: channel.history,
            presence: channel.presence,
        }
    }
}

pub(super) struct Member {
    pub(super) id: u64,
    /// Whether broadcasts on its path are delivered to it: members of broadcast channels only
    /// (an echo or proxied connection on a path gets none, and is never squeezed for them).
    pub(super) receives: bool,
    /// The outbox's sending side; at most `intake.outbox` messages queued (counted in
    /// [`MemberShared::queued`]).
    pub(super) tx: Sender<Queued>,
    /// The outbox's receiving side too, so that a member dropped at the memory cap gives its
    /// queued bytes back at once rather than when its loop ends.
    pub(super) rx: Receiver<Queued>,
    pub(super) intake: Intake,
    pub(super) shared: Arc<MemberShared>,
    /// The epoch and last position of the history Redis replayed to it at its join: live
    /// broadcasts up to there are skipped, being in the replay already. Set once, when its
    /// replay is queued.
    pub(super) replayed: OnceLock<(String, u64)>,
    /// While its join reads the history from Redis (the member is in the roster already, so no
    /// live broadcast passes it by): what is delivered to it meanwhile, queued after its replay
    /// once the read is done ([`Member::release`]). `holding` is set until then, so a fan-out
    /// takes the lock only for such a member.
    pub(super) holding: AtomicBool,
    pub(super) held: Mutex<Option<Vec<Held>>>,
}

/// A delivery held for a member whose join is reading the history from Redis: the message as
/// the member gets it, its charge, and its position (epoch, pos) when Redis kept it.
pub(super) struct Held {
    msg: Message,
    charge: Charge,
    at: Option<(String, u64)>,
}

/// What [`Member::hold`] did with a delivery.
pub(super) enum Hold {
    /// Held until the member's replay is queued.
    Taken,
    /// Its join holds as many as its outbox takes: a full outbox (the member's `slow_consumer`
    /// policy applies).
    Full,
    /// The member's replay is queued already: deliver it as usual.
    Released(Charge),
}

impl Member {
    /// A member of a `mode` channel on `intake`, with the outbox `tx`/`rx`.
    pub(super) fn new(
        id: u64,
        mode: Mode,
        (tx, rx): (Sender<Queued>, Receiver<Queued>),
        intake: Intake,
        shared: Arc<MemberShared>,
    ) -> Member {
        Member {
            id,
            receives: mode == Mode::Broadcast,
            tx,
            rx,
            intake,
            shared,
            replayed: OnceLock::new(),
            holding: AtomicBool::new(false),
            held: Mutex::new(None),
        }
    }

    /// This member, holding what is delivered to it until [`Member::release`]: its join reads
    /// its history from Redis.
    pub(super) fn holding(self) -> Member {
        Member {
            holding: AtomicBool::new(true),
            held: Mutex::new(Some(Vec::new())),
            ..self
        }
    }

    /// Whether a broadcast at `at` (epoch, position) was in this member's replay.
    pub(super) fn replayed_already(&self, at: Option<(&str, u64)>) -> bool {
        match (at, self.replayed.get()) {
            (Some((epoch, pos)), Some((replayed, through))) => epoch == replayed && pos <= *through,
            _ => false,
        }
    }

    /// Holds `msg` (with its `charge`, at position `at`) while this member's join reads its
    /// history; at most `intake.outbox` of them, as its outbox would.
    pub(super) fn hold(&self, msg: &Message, charge: Charge, at: Option<(&str, u64)>) -> Hold {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let Some(held) = held.as_mut() else {
            return Hold::Released(charge);
        };
        if held.len() >= self.intake.outbox {
            return Hold::Full;
        }
        held.push(Held {
            msg: msg.clone(),
            charge,
            at: at.map(|(e, p)| (e.to_string(), p)),
        });
        Hold::Taken
    }

    /// Ends the hold: queues `replay` (charged; it fits the empty outbox, being at most
    /// `history_size`), then what was held meanwhile that the replay (through `replayed`) did
    /// not have, all under the hold's lock, so no delivery overtakes them. Returns how many
    /// held deliveries found the outbox full.
    pub(super) fn release(&self, replay: Vec<(Message, Charge)>, replayed: (String, u64)) -> usize {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (msg, charge) in replay {
            let _ = self.try_queue(&msg, charge);
        }
        let _ = self.replayed.set(replayed);
        let mut full = 0;
        for h in held.take().unwrap_or_default() {
            let at = h.at.as_ref().map(|(e, p)| (e.as_str(), *p));
            if !self.replayed_already(at)
                && matches!(
                    self.try_queue(&h.msg, h.charge),
                    Err(TrySendError::Full(()))
                )
            {
                full += 1;
            }
        }
        self.holding.store(false, Ordering::Release);
        full
    }

    /// Gives back at once what is held for this member (it was closed at the memory cap): its
    /// release queues nothing of it.
    pub(super) fn discard_held(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = held.as_mut() {
            held.clear();
        }
    }

    /// Queues `msg` with its `charge` in the outbox unless it holds `intake.outbox` messages
    /// already; the charge stays with it while it is queued. Not queued, the charge is dropped:
    /// its bytes are given back.
    pub(super) fn try_queue(&self, msg: &Message, charge: Charge) -> Result<(), TrySendError<()>> {
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= self.intake.outbox {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(()));
        }
        self.shared
            .queued_bytes
            .fetch_add(msg.len(), Ordering::Relaxed);
        let queued = Queued {
            msg: msg.clone(),
            charge,
        };
        self.tx.send(queued).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.shared
                .queued_bytes
                .fetch_sub(msg.len(), Ordering::Relaxed);
            TrySendError::Disconnected(())
        })
    }
}

/// Takes one message off an outbox, keeping the counts in step; its charge comes with it.
pub(super) fn take_queued(
    rx: &Receiver<Queued>,
    shared: &MemberShared,
) -> Result<Queued, TryRecvError> {
    let queued = rx.try_recv()?;
    shared.queued.fetch_sub(1, Ordering::AcqRel);
    shared
        .queued_bytes
        .fetch_sub(queued.msg.len(), Ordering::Relaxed);
    Ok(queued)
}

/// Empties an outbox whose messages will never be written: dropped, their charges give their
/// bytes back.
pub(super) fn discard_queued(rx: &Receiver<Queued>, shared: &MemberShared) {
    while take_queued(rx, shared).is_ok() {}
}

/// State the hub and the connection both see.
pub struct MemberShared {
    /// Wakes the connection's `poll` for queued broadcasts, or a proxied connection to end; only
    /// members of broadcast and proxy channels have one (an eventfd). An echo connection
    /// receives nothing from the hub, so it spends no descriptor on it: its one wake-up, the end
    /// (shutdown, revocation), shuts the read side of its socket instead
    /// ([`MemberShared::end`]).
    pub waker: Option<Waker>,
    /// The connection's socket, once its loop runs (see [`MemberShared::end`]).
    pub(super) socket: OnceLock<Arc<TcpStream>>,
    /// Set by the hub when the outbox overflowed under the `disconnect` policy, or at the memory
    /// cap.
    pub(super) slow: AtomicBool,
    /// Set (before `slow`) when the memory cap closed it: it ends without waiting for its
    /// buffers to drain.
    pub(super) squeezed: AtomicBool,
    /// Set when a reload took away this member's access; it closes with 1008 and the reason in
    /// `revocation`.
    pub(super) revoked: AtomicBool,
    /// Why it was revoked (set before `revoked`).
    pub(super) revocation: OnceLock<Revocation>,
    /// Who holds this membership, so a reload can re-check their access.
    pub holder: Holder,
    /// Messages in the outbox. The outbox is an unbounded channel bounded by this count, so its
    /// storage is allocated as messages queue (crossbeam's list flavour, blocks of 31) rather
    /// than up front: most subscribers get their broadcasts written directly and never queue.
    pub(super) queued: AtomicUsize,
    /// Payload bytes in the outbox (what dropping the member at the memory cap frees at once).
    pub(super) queued_bytes: AtomicUsize,
    /// What this connection holds against the write share of the memory cap: the sum of its
    /// charges (its outbox, its write buffer beyond what was flushed, its echoes). What it is
    /// reading is its `Reader`'s, in the read share.
    pub account: Account,
    /// The connection's direct-write path, once its loop runs (see [`DirectWrite`]).
    pub direct: OnceLock<Arc<dyn DirectWrite>>,
    /// When the connection's loop entered the step it is in, in milliseconds after the hub's
    /// epoch plus one; 0 while it waits in `poll` (or has not started). For the watchdog: a step
    /// never waits, so one that lasts is a wedged worker ([`Hub::longest_step`]).
    pub(super) step_since: AtomicU64,
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
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
}

/// What a connection moved so far, read at one moment ([`Traffic::moved`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
}

impl Traffic {
    /// The counts now (each read on its own: a message in flight may show in one and not yet
    /// in another).
    pub fn moved(&self) -> Moved {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Moved {
            messages_in: n(&self.messages_in),
            bytes_in: n(&self.bytes_in),
            messages_out: n(&self.messages_out),
            bytes_out: n(&self.bytes_out),
        }
    }

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
    pub(super) fn wake(&self) {
        if let Some(waker) = &self.waker {
            waker.wake();
        }
    }

    /// Wakes the connection to end it: the flag saying why (`slow`, `revoked`, the hub closed) is
    /// set before this. Without a waker, shutting the socket's read side makes its `poll` return;
    /// the loop checks the flags before reading, and can still write its close frame.
    pub(super) fn end(&self) {
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
