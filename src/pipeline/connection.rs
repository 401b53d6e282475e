//! One connection's life after the upgrade, on its worker thread: read frames, echo or publish
//! them, write what the hub queued, ping the silent, close with the right code. The socket is
//! non-blocking; the thread sleeps in `poll(2)` on the socket and its hub wake-up fd, so an idle
//! connection costs no CPU and a broadcast reaches it at once. It never blocks on another
//! connection: the hub only ever `try_send`s into this connection's bounded outbox.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::TryRecvError;
use rustix::event::{PollFd, PollFlags};
use tungstenite::{Error as WsError, Message};

use crate::config::{Limits, WsLimits};
use crate::hub::{DirectWrite, Handoff, Membership, Queued};
use crate::memory::{Account, Charge, Room};
use crate::ops::metrics::Counter;
use crate::pipeline::close;
use crate::pipeline::end::{End, classify};
use crate::pipeline::frames;
use crate::pipeline::inbound::{self, Due, Inbound, READS_PER_STEP, Read, Rights};
use crate::pipeline::upgrade::WsStream;
use crate::policy::CloseReason;
/// Write rounds (drain the outbox, flush) in one step at most: a message held back by a full
/// write buffer is retried in the second round once a flush made room. If the socket keeps
/// taking bytes and the outbox keeps filling, the next step writes on at once, after the checks.
const WRITE_ROUNDS_PER_STEP: usize = 2;
/// A step never waits (the socket is non-blocking and every loop in it is bounded), so one that
/// has lasted this long is a wedged worker: the systemd watchdog stops vouching for the process
/// ([`crate::hub::Hub::longest_step`]). Far above the longest real step, a publisher's fan-out
/// to every subscriber of its path.
pub const WEDGED_STEP: Duration = Duration::from_secs(10);

/// Who hears what a client of the connection loop sends: the channel's `mode`, less `proxy` (a
/// proxied connection runs in [`crate::pipeline::relay`] instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Back to its sender (`mode = echo`).
    Echo,
    /// To every other connection on its path (`mode = broadcast`).
    Broadcast,
}

/// Sets the connection up for its loop ([`Conn::run`]): the socket non-blocking, the read path
/// watched and charged, the hub told where to write. Consumes the socket and the membership.
/// Not inlined: its temporaries would stay in the frame the loop runs under.
///
/// # Errors
/// How the connection ends when the socket cannot be made non-blocking.
#[inline(never)]
pub fn open(
    mut ws: Box<WsStream>,
    member: Membership,
    audience: Audience,
    rights: Rights,
    channel: &WsLimits,
    limits: &Limits,
) -> Result<Conn, End> {
    let now = Instant::now();
    let sock = ws.get_ref().get_ref().shared_socket();
    if let Err(e) = sock.set_nonblocking(true) {
        return Err(End::Dropped(format!("set non-blocking: {e}")));
    }
    let inbound = Inbound::new(&mut ws, &member, rights, channel, limits, now);
    let mut wire = Wire {
        ws,
        held: None,
        stalled_since: None,
        open: true,
        charge: member.account().nothing(),
        through_ws: 0,
        retained: 0,
        write_base: channel.write_buffer_size,
        account: member.account().clone(),
    };
    if audience == Audience::Broadcast {
        // The largest message the hub sends it: an envelope may be larger than a payload.
        let send_buffer = frames::send_buffer_for(member.intake().max_message);
        wire.ws.get_mut().get_mut().set_send_buffer(send_buffer);
    }
    let wire = Arc::new(Mutex::new(wire));
    member.attach_socket(Arc::clone(&sock));
    if audience == Audience::Broadcast {
        // Only this loop sets it, once; a second set cannot happen.
        let _ = member
            .shared
            .direct
            .set(Arc::clone(&wire) as Arc<dyn DirectWrite>);
        member.announce();
    }
    Ok(Conn {
        wire,
        sock,
        member,
        audience,
        inbound,
        max_write_buffer: channel.max_write_buffer_size.get(),
    })
}

/// The WebSocket and what its writes owe. The loop holds its lock while it works and lets go
/// while it sleeps in `poll`, so a publisher on another thread can write a broadcast straight
/// into the socket of an idle subscriber (see the [`DirectWrite`] impl).
struct Wire {
    /// Boxed (see the worker's `Opened`): the loop's stack never holds the WebSocket itself.
    ws: Box<WsStream>,
    /// A message the write buffer had no room for, with its charge; sent before anything else
    /// from the outbox.
    held: Option<Queued>,
    /// Since when our writes have been blocked by a full socket.
    stalled_since: Option<Instant>,
    /// False once the loop has ended: nothing more may be written but the close.
    open: bool,
    /// What the write side holds against the memory cap: the charges of the data messages
    /// written into the WebSocket since its buffers were last flushed whole (a bound on the
    /// write buffer beyond its base, and on rustls' buffer behind it), merged as they are taken,
    /// plus `retained`. Shrunk to `retained` when a flush goes through; dropped with the wire.
    charge: Charge,
    /// Payload bytes of data messages that went through tungstenite's write buffer since the
    /// last whole flush (the rest went to rustls as pre-encoded frames, whose buffer keeps
    /// nothing once sent).
    through_ws: usize,
    /// What stays charged after a whole flush: the most `through_ws` has been beyond
    /// `write_base`. tungstenite's write buffer is a `Vec` that keeps the capacity it grew to,
    /// so a connection that once buffered a 64 KiB message holds 64 KiB until it closes.
    retained: usize,
    /// `write_buffer_size`: the part of the write buffer that is base cost, not charged.
    write_base: usize,
    /// The member's account, told how much of `charge` is `retained` ([`Account::keeps`]).
    account: Account,
}

fn lock(wire: &Mutex<Wire>) -> MutexGuard<'_, Wire> {
    wire.lock().unwrap_or_else(|p| p.into_inner())
}

/// The hub's way into an idle subscriber's socket (one pointer away from the hub's member entry:
/// fan-out to a thousand subscribers is bound by cache misses as much as by work).
impl DirectWrite for Mutex<Wire> {
    fn try_write(
        &self,
        msg: &Message,
        wire: Option<&[u8]>,
        charge: Charge,
        outbox_empty: &dyn Fn() -> bool,
    ) -> Handoff {
        let Ok(mut w) = self.try_lock() else {
            // The loop is working (it drains the outbox) or poisoned.
            return Handoff::Queue(charge);
        };
        if !w.open || w.held.is_some() || w.stalled_since.is_some() || !outbox_empty() {
            return Handoff::Queue(charge);
        }
        match wire {
            // Not stalled, so tungstenite's and rustls' buffers are empty (the last flush went
            // through) and the WebSocket is open: the pre-encoded frame goes to rustls whole (its
            // send buffer takes the largest frame this member is sent; `send_buffer_for`).
            Some(frame) if w.ws.get_ref().get_ref().is_tls() => {
                match io::Write::write(w.ws.get_mut(), frame) {
                    Ok(n) if n == frame.len() => {}
                    // Cannot happen with an empty send buffer; if it did, the frame is cut:
                    // end the connection rather than send a corrupt stream on.
                    Ok(_) => {
                        w.open = false;
                        w.charge.absorb(charge); // the connection holds the charge now
                        log::error!("direct write cut a frame; closing the connection");
                        let _ = w.ws.get_ref().get_ref().socket().shutdown(Shutdown::Both);
                        return Handoff::SentWake;
                    }
                    Err(_) => return Handoff::Queue(charge),
                }
            }
            _ => match w.ws.write(msg.clone()) {
                Ok(()) => w.through_ws += msg.len(),
                // Queued in the write buffer; flushing below finds out how far it got.
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    w.through_ws += msg.len();
                }
                // Not taken (full, or the connection is failing): the loop deals with it.
                Err(_) => return Handoff::Queue(charge),
            },
        }
        // Taken: the hub's charge for it is the connection's now (`Wire::charge`), settled
        // when a flush goes through, here or in the loop.
        w.charge.absorb(charge);
        match w.ws.flush() {
            Ok(()) => {
                settle_flushed(&mut w);
                Handoff::Sent
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                w.stalled_since.get_or_insert_with(Instant::now);
                Handoff::SentWake
            }
            Err(_) => Handoff::SentWake,
        }
    }

    fn abandon(&self) -> bool {
        let Ok(mut w) = self.try_lock() else {
            return false; // the loop is working: it ends at its next step
        };
        w.open = false;
        w.held = None;
        w.charge.shrink_to(0);
        w.retained = 0;
        w.account.keeps(0);
        true
    }
}

/// A connection in its loop (see [`open`]).
pub struct Conn {
    wire: Arc<Mutex<Wire>>,
    /// The socket, for `poll` while the wire is unlocked.
    sock: Arc<TcpStream>,
    member: Membership,
    /// Who hears what the client sends.
    audience: Audience,
    /// Reads, rights, rate limit, the client's silence.
    inbound: Inbound,
    /// This connection's `max_write_buffer_size`: a message whose frame is larger can never be
    /// written, and is dropped instead of held.
    max_write_buffer: usize,
}

/// What a step of the loop decided.
type Step = Result<(), End>;

/// Whether a step stopped at its bound with work left (see [`READS_PER_STEP`] and
/// [`WRITE_ROUNDS_PER_STEP`]): the next step then runs at once instead of waiting in `poll`,
/// which would not report bytes already buffered in rustls or tungstenite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Nothing,
    More,
}

/// What one step decided when it did not end the connection.
struct Turn {
    /// Wait for the socket to take writes too.
    write_out: bool,
    /// Wake up by then at the latest.
    wake_at: Instant,
    left: Left,
}

impl Conn {
    /// Runs the connection until it ends, and closes it. Inlined into its caller, so that the
    /// loop and the close each run in their own frame right under the caller's: the close's
    /// reads (the peer's close frame, its `close_notify`) then decrypt no deeper than the
    /// loop's (docs/benchmarks.md, "The worker's stack").
    #[inline(always)]
    pub fn run(&mut self, limits: &Limits) -> End {
        let end = self.serve(limits);
        self.finish(&end, limits.write_timeout);
        end
    }

    /// Every turn of this loop goes through [`Conn::step`], which checks the end flags and the
    /// deadlines; nothing in a step waits or loops without a bound.
    #[inline(never)]
    fn serve(&mut self, limits: &Limits) -> End {
        let wire = Arc::clone(&self.wire);
        // The first step asks the socket: the client may have written before the loop began.
        let mut readable = true;
        loop {
            let mut w = lock(&wire);
            if readable {
                w.ws.get_mut().get_mut().readable();
            }
            self.member.step_began();
            let turn = self.step(&mut w, limits);
            self.member.step_ended();
            let turn = match turn {
                Ok(turn) => turn,
                Err(end) => {
                    w.open = false;
                    return end;
                }
            };
            drop(w);
            if turn.left == Left::More {
                readable = true;
                continue;
            }
            let timeout = turn.wake_at.saturating_duration_since(Instant::now());
            match self.wait(turn.write_out, timeout) {
                Ok(r) => readable = r,
                Err(e) => {
                    lock(&wire).open = false;
                    return End::Dropped(format!("poll: {e}"));
                }
            }
        }
    }

    /// One turn of the loop with the wire locked: read, write, check the timers. Returns whether
    /// to wait for the socket to take writes, when to wake up at the latest, and whether work
    /// was left for the next step.
    fn step(&mut self, w: &mut Wire, limits: &Limits) -> Result<Turn, End> {
        // Before reading: a member without a waker is woken to end by a shut read side, which
        // reads as the peer vanishing.
        if let Some(why) = self.member.ended() {
            return Err(End::Closed(why));
        }
        let read_left = self.read_available(w)?;
        let write_left = self.write_available(w)?;
        let now = Instant::now();
        if let Some(since) = w.stalled_since {
            if now.duration_since(since) >= limits.write_timeout {
                return Err(End::Dropped("write timeout".into()));
            }
        }
        if self.inbound.check(&w.ws, now)? == Due::Ping {
            let nothing = self.member.account().nothing();
            self.send(w, Message::Ping(Default::default()), nothing)?;
            flush(w)?;
        }
        let mut wake_at = self.inbound.wake_at(&w.ws);
        if let Some(since) = w.stalled_since {
            wake_at = wake_at.min(since + limits.write_timeout);
        }
        let left = if read_left == Left::More || write_left == Left::More {
            Left::More
        } else {
            Left::Nothing
        };
        Ok(Turn {
            write_out: w.stalled_since.is_some(),
            wake_at,
            left,
        })
    }

    /// Reads and handles the messages available without blocking, at most [`READS_PER_STEP`].
    fn read_available(&mut self, w: &mut Wire) -> Result<Left, End> {
        for _ in 0..READS_PER_STEP {
            match self.inbound.next(&mut w.ws, &self.member)? {
                Read::Data(msg) => self.deliver(w, msg)?,
                // tungstenite queued the reply; the next read reports ConnectionClosed once it
                // is flushed.
                Read::Closed(frame) => {
                    return Err(End::PeerClosed(frame.map_or(1005, |f| u16::from(f.code))));
                }
                // The pong goes out now, from the loop's frame: tungstenite's next read would
                // write it from 0.6 KiB deeper in the worker's stack (docs/benchmarks.md).
                Read::Pinged => flush(w)?,
                Read::Other => {}
                Read::Empty => return Ok(Left::Nothing),
            }
        }
        Ok(Left::More)
    }

    /// Echoes or publishes a message [`Inbound`] let through.
    fn deliver(&mut self, w: &mut Wire, msg: Message) -> Step {
        match self.audience {
            Audience::Echo => {
                // The echo's bytes are charged to the write share before they are written; the
                // read share's charge of the same message is given back once this returns.
                let Some(charge) = self.member.account().charge(msg.len(), Room::Deliveries) else {
                    return Err(End::Closed(CloseReason::TRY_AGAIN_LATER));
                };
                self.send(w, msg, charge)
            }
            Audience::Broadcast => {
                self.member.publish(&msg);
                Ok(())
            }
        }
    }

    /// Writes queued messages until the outbox is empty or the socket is full, in at most
    /// [`WRITE_ROUNDS_PER_STEP`] rounds. A message held back by a full write buffer is retried as
    /// soon as a flush made room, not at the next wake-up; it fits the emptied buffer, since
    /// [`Conn::send`] drops what never could, so each round moves at least one message.
    fn write_available(&mut self, w: &mut Wire) -> Result<Left, End> {
        for _ in 0..WRITE_ROUNDS_PER_STEP {
            self.drain_outbox(w)?;
            flush(w)?;
            if w.held.is_none() || w.stalled_since.is_some() {
                return Ok(Left::Nothing);
            }
        }
        Ok(Left::More)
    }

    /// Moves messages from the hub's outbox into the WebSocket write buffer until either is empty
    /// or the write buffer is full. Takes at most what was queued when it started: what the hub
    /// queues meanwhile has woken the loop again (the wake-up is reset first).
    fn drain_outbox(&mut self, w: &mut Wire) -> Step {
        // Slow-consumer and revocation flags are checked by `step` before reading; the hub wakes
        // the loop after setting one, so a flag set during this step ends the next one.
        let Some(waker) = &self.member.shared.waker else {
            return Ok(()); // an echo connection: nothing is ever queued for it
        };
        waker.reset();
        // The wake-up just consumed may have announced an end flag set after `step` looked (the
        // hub closing, a revocation, a slow-consumer close): look again now, or the loop would
        // sleep in `poll` with nothing left to wake it, and never send its close frame.
        if let Some(why) = self.member.ended() {
            return Err(End::Closed(why));
        }
        if let Some(Queued { msg, charge }) = w.held.take() {
            self.send(w, msg, charge)?;
            if w.held.is_some() {
                return Ok(());
            }
        }
        for _ in 0..self.member.queued() {
            match self.member.next_queued() {
                Ok(Queued { msg, charge }) => {
                    self.send(w, msg, charge)?;
                    if w.held.is_some() {
                        return Ok(());
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    return Err(End::Closed(CloseReason::GOING_AWAY));
                }
            }
        }
        // Shutdown announced by a wake-up consumed above ends once the outbox it let drain is
        // empty: no later wake-up is coming for it.
        match self.member.ended() {
            Some(why) => Err(End::Closed(why)),
            None => Ok(()),
        }
    }

    /// Queues one message with its `charge` (the hub's, the echo's, or nothing for a control
    /// frame). A full write buffer holds it back (outbox messages) or, for an echo the peer is not
    /// reading, ends the connection as a slow consumer.
    fn send(&mut self, w: &mut Wire, msg: Message, charge: Charge) -> Step {
        // Data messages, and data frames held back earlier, count as sent once accepted. Once
        // written, the charge is the write buffer's, given back by the next whole flush.
        let data = matches!(
            msg,
            Message::Text(_) | Message::Binary(_) | Message::Frame(_)
        );
        let len = msg.len();
        let through_ws = if data { frames::payload_len(&msg) } else { 0 };
        let written = match w.ws.write(msg) {
            // The frame is in the write buffer; only flushing it would have blocked.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        };
        match written {
            Ok(()) => {
                w.charge.absorb(charge);
                w.through_ws += through_ws;
                if data {
                    inbound::sent(&self.member, len);
                }
                Ok(())
            }
            // Larger than this connection's whole write buffer: held, it would be retried
            // forever (a broadcast sized by limits newer than this connection's). The hub
            // already drops those (`Intake`); this is the last line.
            Err(WsError::WriteBufferFull(msg))
                if frames::server_frame_len(&msg) > self.max_write_buffer =>
            {
                self.member.metrics().bump(Counter::BroadcastTooBig, 1);
                drop(charge); // its bytes are given back
                log::debug!(
                    "dropped a {}-byte message larger than the write buffer ({} bytes)",
                    msg.len(),
                    self.max_write_buffer
                );
                Ok(())
            }
            // Held, it keeps its charge.
            Err(WsError::WriteBufferFull(msg)) => {
                if self.audience == Audience::Echo {
                    return Err(End::Closed(CloseReason::SLOW_CONSUMER));
                }
                w.held = Some(Queued { msg: *msg, charge });
                Ok(())
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// Sleeps until the socket is readable (or writable, when `write_out`), the hub wakes us, or
    /// `timeout` passes. Returns whether the socket reported an event (so reads must ask it).
    fn wait(&self, write_out: bool, timeout: Duration) -> io::Result<bool> {
        let mut sock_events = PollFlags::IN;
        if write_out {
            sock_events |= PollFlags::OUT;
        }
        let waker = self.member.shared.waker.as_ref();
        let mut fds = [
            PollFd::new(&*self.sock, sock_events),
            match waker {
                Some(waker) => PollFd::new(waker, PollFlags::IN),
                None => PollFd::new(&*self.sock, PollFlags::empty()), // not polled
            },
        ];
        inbound::wait(&mut fds[..if waker.is_some() { 2 } else { 1 }], timeout)
    }

    /// Sends our close frame where one is due, waits briefly for the peer's, and ends TLS cleanly.
    /// Bytes already queued go out first (up to `write_timeout`, so a slow consumer still gets
    /// everything before its 1008): only then is there sure to be room for the close frame, which
    /// tungstenite would otherwise refuse as `WriteBufferFull`. Not inlined: the loop's frame
    /// need not hold what closing takes.
    #[inline(never)]
    fn finish(&mut self, end: &End, write_timeout: Duration) {
        // Queued broadcasts are never written now: their memory goes at once, not when the
        // close below has finished (a slow consumer at the memory cap frees its outbox first).
        self.member.discard_queued();
        let wire = Arc::clone(&self.wire);
        let mut w = lock(&wire);
        w.open = false;
        // Reads stay `poll`-driven: the close loop tells the stream when `poll` returned.
        let (send, wait_reply) = match end {
            End::Closed(why) => (Some(Some(close::frame(*why))), why.waits_for_reply()),
            // Its close is answered by the flush; then the close handshake is complete.
            End::PeerClosed(_) => (None, true),
            End::Dropped(_) => return,
        };
        if self.member.closed_at_cap() {
            // Its buffers were given back to the cap when it was closed: they are freed now,
            // not kept for a client that is not reading. The close goes only if the socket
            // takes what is buffered and the close frame at once.
            close::close(&mut w.ws, send, Duration::ZERO, false);
            return;
        }
        close::close(&mut w.ws, send, write_timeout, wait_reply);
        close::end_tls(&mut w.ws);
    }
}

/// Writes out what is buffered; remembers when the socket stopped taking bytes.
fn flush(w: &mut Wire) -> Step {
    match w.ws.flush() {
        Ok(()) => {
            w.stalled_since = None;
            settle_flushed(w);
            Ok(())
        }
        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
            w.stalled_since.get_or_insert_with(Instant::now);
            Ok(())
        }
        Err(e) => Err(classify(e)),
    }
}

/// After a whole flush: of what the write side held ([`Wire::charge`]), it keeps what its
/// buffer grew to beyond the base (see [`Wire::retained`]) and gives the rest back.
fn settle_flushed(w: &mut Wire) {
    let grown = std::mem::take(&mut w.through_ws).saturating_sub(w.write_base);
    if grown > w.retained {
        w.retained = grown;
        w.account.keeps(grown);
    }
    w.charge.shrink_to(w.retained);
}
