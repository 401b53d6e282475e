//! `mode = proxy`: the backend side of a proxied connection. Before the client's 101, the
//! channel's [`Dialer`] (built with the configuration) opens the backend WebSocket (TCP, Unix
//! socket or verified TLS) under the named `backend connect` deadline; after it, [`run`] relays
//! messages both ways on the worker thread, `poll(2)` over both sockets, with the client's limits
//! on the client side and the same buffer bounds and deadlines on both. It never decides access
//! ([`crate::policy`] did) and never forwards a client header or a query credential to the
//! backend.
//!
//! This file is the relay loop; [`dial`] opens the backend, [`forward`] says what its request
//! carries from the client's.

mod dial;
mod forward;

pub use self::dial::{BackendStream, BackendWs, Dialer, client_tls};
pub use self::forward::{Identity, forward_target};

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::config::{Limits, WsLimits};
use crate::hub::Membership;
use crate::pipeline::close::{self, PollSocket};
use crate::pipeline::end::{End, classify};
use crate::pipeline::inbound::{self, Due, Inbound, READS_PER_STEP, Rights, Silence};
use crate::pipeline::upgrade::WsStream;
use crate::policy::CloseReason;

/// What each side gets, when the server ends a relay (revocation, an admin's disconnect,
/// shutdown), to take what is queued for it and the close frame; then both sockets are shut
/// down, whatever their buffers still hold. Backend then client: under a second in all.
const IMPOSED_END: Duration = Duration::from_millis(400);

/// A side of the relay: one WebSocket and its write state.
struct Side<S> {
    /// Boxed, as the connection loop's: the worker's stack never holds a WebSocket itself.
    ws: Box<WebSocket<S>>,
    /// A message this side's write buffer had no room for; reading the other side waits for it.
    held: Option<Message>,
    /// Since when writes to this side have been blocked by a full socket.
    stalled_since: Option<Instant>,
}

impl<S: Read + Write> Side<S> {
    fn new(ws: Box<WebSocket<S>>) -> Self {
        Side {
            ws,
            held: None,
            stalled_since: None,
        }
    }

    /// Queues `msg`; a full write buffer holds it (the reader of the other side pauses).
    fn send(&mut self, msg: Message) -> Result<(), WsError> {
        match self.ws.write(msg) {
            Ok(()) => Ok(()),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(WsError::WriteBufferFull(msg)) => {
                self.held = Some(*msg);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Retries the held message and flushes, in two rounds: a message held by a full write
    /// buffer fits once a flush has emptied it (both sides' messages are bounded by the channel's
    /// `max_message_size`, which the write buffer always has room for). Remembers when the
    /// socket stopped taking bytes.
    fn write_out(&mut self) -> Result<(), WsError> {
        for _ in 0..2 {
            if let Some(msg) = self.held.take() {
                self.send(msg)?;
            }
            match self.ws.flush() {
                Ok(()) => self.stalled_since = None,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled_since.get_or_insert_with(Instant::now);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            if self.held.is_none() {
                break;
            }
        }
        Ok(())
    }
}

impl PollSocket for BackendStream {
    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

/// What the backend gets when the relay ends.
enum BackendEnd {
    /// A close frame (none: a close without a code, as the client sent it).
    Close(Option<CloseFrame>),
    /// The backend closed or failed: only its close is answered, if it sent one.
    Closed,
}

/// How the relay ended: the client's [`End`], the close the backend gets, and whether the hub
/// ended it (revocation, an admin's disconnect, shutdown): then each side gets at most
/// [`IMPOSED_END`] for its close.
struct Ending {
    client: End,
    backend: BackendEnd,
    imposed: bool,
}

impl Ending {
    /// wsgate ends it: the client gets `why`, the backend 1001.
    fn both(why: CloseReason) -> Ending {
        Ending {
            client: End::Closed(why),
            backend: client_gone(),
            imposed: false,
        }
    }

    /// The client or the backend ended it, or broke something: the server's close (if any) gets
    /// the usual budget.
    fn by_peer(client: End, backend: BackendEnd) -> Ending {
        Ending {
            client,
            backend,
            imposed: false,
        }
    }
}

fn client_gone() -> BackendEnd {
    BackendEnd::Close(Some(close::frame(CloseReason::CLIENT_GONE)))
}

/// Sets a proxied connection up for its loop ([`Relay::run`]): both sockets non-blocking, the
/// client's read path watched and charged. Consumes both. Not inlined: its temporaries would
/// stay in the frame the loop runs under.
///
/// # Errors
/// How the connection ends when a socket cannot be made non-blocking.
#[inline(never)]
pub fn open(
    mut client: Box<WsStream>,
    backend: Box<BackendWs>,
    member: Membership,
    rights: Rights,
    channel: &WsLimits,
    limits: &Limits,
) -> Result<Relay, End> {
    let now = Instant::now();
    let sock = client.get_ref().get_ref().shared_socket();
    if let Err(e) = sock
        .set_nonblocking(true)
        .and_then(|()| backend.get_ref().set_nonblocking(true))
        .and_then(|()| backend.get_ref().set_timeouts(None))
    {
        return Err(End::Dropped(format!("set non-blocking: {e}")));
    }
    // The client's messages take the connection loop's inbound path: their read charge is given
    // back once each is handed to the backend (its write buffer is bounded per connection by
    // `max_write_buffer_size`, not by the cap).
    let inbound = Inbound::new(&mut client, &member, rights, channel, limits, now);
    member.attach_socket(Arc::clone(&sock));
    Ok(Relay {
        client: Side::new(client),
        backend: Side::new(backend),
        backend_silence: Silence::new(now, limits),
        sock,
        member,
        inbound,
    })
}

/// A proxied connection in its loop (see [`open`]).
pub struct Relay {
    client: Side<crate::pipeline::upgrade::Replay<crate::pipeline::tls::Transport>>,
    backend: Side<BackendStream>,
    backend_silence: Silence,
    /// The client's socket, shared with the hub (shutdown and revocation shut its read side).
    sock: Arc<TcpStream>,
    member: Membership,
    /// The client's reads, rights, rate limit and silence.
    inbound: Inbound,
}

impl Relay {
    /// Runs a proxied connection until either side ends, then closes the other.
    #[inline(never)]
    pub fn run(&mut self, limits: &Limits) -> End {
        let ending = self.serve(limits);
        self.finish(&ending, limits.write_timeout);
        ending.client
    }

    fn serve(&mut self, limits: &Limits) -> Ending {
        // The first step asks the client's socket: it may have written before the loop began.
        let mut client_readable = true;
        loop {
            if client_readable {
                self.client.ws.get_mut().get_mut().readable();
            }
            self.member.step_began();
            let step = self.step(limits);
            self.member.step_ended();
            let (wake_at, more) = match step {
                Ok(turn) => turn,
                Err(ending) => return ending,
            };
            if more {
                client_readable = true;
                continue;
            }
            let timeout = wake_at.saturating_duration_since(Instant::now());
            match self.wait(timeout) {
                Ok(r) => client_readable = r,
                Err(e) => {
                    return Ending::by_peer(End::Dropped(format!("poll: {e}")), client_gone());
                }
            }
        }
    }

    /// One turn: end flags, reads from each side into the other (paused while the other side
    /// holds a message), writes, timers. Returns when to wake at the latest and whether a read
    /// stopped at its bound with more to read.
    fn step(&mut self, limits: &Limits) -> Result<(Instant, bool), Ending> {
        // Reset before the flags are read: an end flagged after this wakes the next poll.
        if let Some(waker) = &self.member.shared.waker {
            waker.reset();
        }
        if let Some(why) = self.member.ended() {
            return Err(Ending {
                imposed: true,
                ..Ending::both(why)
            });
        }
        let mut more = false;
        let client_paused = self.backend.held.is_some();
        let backend_paused = self.client.held.is_some();
        if !client_paused {
            more |= self.read_client()?;
        }
        if !backend_paused {
            more |= self.read_backend()?;
        }
        self.backend.write_out().map_err(backend_failed)?;
        self.client.write_out().map_err(client_failed)?;
        // A side whose reads resume may have whole messages waiting in its TLS or WebSocket
        // buffers, which `poll` does not report: the next step reads it at once.
        if (client_paused && self.backend.held.is_none())
            || (backend_paused && self.client.held.is_none())
        {
            more = true;
        }
        let now = Instant::now();
        if let Some(since) = self.client.stalled_since {
            if now.duration_since(since) >= limits.write_timeout {
                return Err(Ending::by_peer(
                    End::Dropped("write timeout".into()),
                    client_gone(),
                ));
            }
        }
        if let Some(since) = self.backend.stalled_since {
            if now.duration_since(since) >= limits.write_timeout {
                return Err(Ending::both(CloseReason::BACKEND_NOT_READING));
            }
        }
        let client_due = self
            .inbound
            .check(&self.client.ws, now)
            .map_err(client_ended)?;
        let backend_due = match self.backend_silence.check(now) {
            Due::Idle => {
                return Err(Ending::by_peer(
                    End::Closed(CloseReason::BACKEND_IDLE_TIMEOUT),
                    BackendEnd::Close(Some(close::frame(CloseReason::IDLE_TIMEOUT))),
                ));
            }
            due => due,
        };
        if client_due == Due::Ping {
            ping(&mut self.client).map_err(client_failed)?;
        }
        if backend_due == Due::Ping {
            ping(&mut self.backend).map_err(backend_failed)?;
        }
        let mut wake_at = self
            .inbound
            .wake_at(&self.client.ws)
            .min(self.backend_silence.wake_at());
        for since in [self.client.stalled_since, self.backend.stalled_since]
            .into_iter()
            .flatten()
        {
            wake_at = wake_at.min(since + limits.write_timeout);
        }
        Ok((wake_at, more))
    }

    /// Client to backend: data with the channel's rights and rate limit applied, its close code
    /// passed on. Pings are answered by tungstenite.
    fn read_client(&mut self) -> Result<bool, Ending> {
        for _ in 0..READS_PER_STEP {
            match self
                .inbound
                .next(&mut self.client.ws, &self.member)
                .map_err(client_ended)?
            {
                inbound::Read::Data(msg) => {
                    self.backend.send(msg).map_err(backend_failed)?;
                    if self.backend.held.is_some() {
                        return Ok(false);
                    }
                }
                inbound::Read::Closed(frame) => {
                    let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                    return Err(Ending::by_peer(
                        End::PeerClosed(code),
                        BackendEnd::Close(frame),
                    ));
                }
                inbound::Read::Pinged | inbound::Read::Other => {}
                inbound::Read::Empty => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Backend to client: data as it is, the backend's close code passed on.
    fn read_backend(&mut self) -> Result<bool, Ending> {
        for _ in 0..READS_PER_STEP {
            let msg = match self.backend.ws.read() {
                Ok(msg) => msg,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(backend_failed(e)),
            };
            self.backend_silence.heard(Instant::now());
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    inbound::sent(&self.member, msg.len());
                    self.client.send(msg).map_err(client_failed)?;
                    if self.client.held.is_some() {
                        return Ok(false);
                    }
                }
                Message::Close(frame) => {
                    return Err(Ending::by_peer(
                        backend_close(frame.as_ref()),
                        BackendEnd::Closed,
                    ));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Ok(true)
    }

    /// Sleeps until a socket is readable (or writable where a side is stalled) or `timeout`.
    /// A side whose reads are paused (the other side holds a message) is not polled for input.
    /// Returns whether the client socket reported an event.
    fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut client_events = PollFlags::empty();
        let mut backend_events = PollFlags::empty();
        if self.backend.held.is_none() {
            client_events |= PollFlags::IN;
        }
        if self.client.held.is_none() {
            backend_events |= PollFlags::IN;
        }
        if self.client.stalled_since.is_some() {
            client_events |= PollFlags::OUT;
        }
        if self.backend.stalled_since.is_some() {
            backend_events |= PollFlags::OUT;
        }
        let backend_fd = self.backend.ws.get_ref().fd();
        // The hub's wake-up to end is watched whatever else is paused.
        let waker = self.member.shared.waker.as_ref();
        let mut fds = [
            PollFd::new(&*self.sock, client_events),
            PollFd::new(&backend_fd, backend_events),
            match waker {
                Some(waker) => PollFd::new(waker, PollFlags::IN),
                None => PollFd::new(&*self.sock, PollFlags::empty()),
            },
        ];
        inbound::wait(&mut fds, timeout)
    }

    /// Closes both sides as `ending` says, the backend first (it is usually local and quick).
    /// What is queued gets `write_timeout` to go out ([`IMPOSED_END`] when the hub ended the
    /// relay), except to a side that already missed it; a peer's close reply is awaited
    /// ([`close::CLOSE_WAIT`]) only after a polite close (1000, 1001, 1008, as
    /// [`crate::pipeline::connection`] does) that no one imposed: after 1011 nobody reads what a
    /// flooding client still sends, and an imposed end does not wait on either peer.
    fn finish(&mut self, ending: &Ending, write_timeout: Duration) {
        self.client.ws.get_mut().get_mut().poll_driven(false);
        let budget = |side_stalled: bool| {
            if side_stalled {
                Duration::ZERO
            } else if ending.imposed {
                IMPOSED_END.min(write_timeout)
            } else {
                write_timeout
            }
        };
        let backend_stuck = self.backend.stalled_since.is_some();
        match &ending.backend {
            BackendEnd::Close(frame) => close::close(
                &mut self.backend.ws,
                Some(frame.clone()),
                budget(backend_stuck),
                !backend_stuck && !ending.imposed,
            ),
            // Its close (if it sent one) is answered by the flush.
            BackendEnd::Closed => {
                close::close(&mut self.backend.ws, None, budget(backend_stuck), false)
            }
        }
        self.backend.ws.get_mut().shutdown();
        let (client_close, wait_reply) = match &ending.client {
            End::Closed(why) => (
                Some(Some(close::frame(*why))),
                why.waits_for_reply() && !ending.imposed,
            ),
            End::PeerClosed(_) => (None, false),
            End::Dropped(_) => {
                let _ = self.sock.shutdown(Shutdown::Both);
                return;
            }
        };
        let client_stuck = self.client.stalled_since.is_some();
        close::close(
            &mut self.client.ws,
            client_close,
            budget(client_stuck),
            wait_reply,
        );
        close::end_tls(&mut self.client.ws);
        if ending.imposed {
            // Done with it at once, whatever the client still sends or has not read yet.
            let _ = self.sock.shutdown(Shutdown::Both);
        }
    }
}

/// What the client gets when the backend closes with `frame`: its code as it is, 1000 `backend
/// closed` for a close without a code, and 1011 `backend protocol error` for a code no endpoint
/// may send (1004, 1005, 1006, 1015, below 1000, 1016–2999, 5000 and above) and for 1002.
/// tungstenite hands such a code to us as 1002 (and answers the backend with 1002 itself); a
/// 1002 the backend sent says the link between wsgate and it broke the protocol. Either way the
/// client broke nothing, and a 1002 would tell it that it did.
fn backend_close(frame: Option<&CloseFrame>) -> End {
    match frame.map(|f| f.code) {
        None => End::Closed(CloseReason::BACKEND_CLOSED),
        Some(code) if code.is_allowed() && !matches!(u16::from(code), 1002 | 1005) => {
            End::Closed(CloseReason::backend(u16::from(code)))
        }
        Some(_) => End::Closed(CloseReason::BACKEND_PROTOCOL_ERROR),
    }
}

/// Pings a side whose silence made one due.
fn ping<S: Read + Write>(side: &mut Side<S>) -> Result<(), WsError> {
    side.send(Message::Ping(Default::default()))?;
    side.write_out()
}

/// The client's side ended the relay (a limit, a refusal, its timers): the backend gets 1001.
fn client_ended(client: End) -> Ending {
    Ending::by_peer(client, client_gone())
}

/// The client failed or broke the protocol: its end as [`classify`] has it; the
/// backend gets 1001.
fn client_failed(e: WsError) -> Ending {
    client_ended(classify(e))
}

/// The backend failed (vanished without a close, broke the protocol, sent more than the
/// channel's message size): the client gets 1011.
fn backend_failed(e: WsError) -> Ending {
    let why = match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            CloseReason::BACKEND_MESSAGE_TOO_BIG
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => CloseReason::BACKEND_CLOSED_ABRUPTLY,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) | WsError::Io(_) => {
            CloseReason::BACKEND_VANISHED
        }
        WsError::Protocol(_) | WsError::Utf8(_) | WsError::Capacity(_) => {
            CloseReason::BACKEND_PROTOCOL_ERROR
        }
        _ => CloseReason::BACKEND_FAILED,
    };
    log::debug!("backend side ended: {e}");
    Ending::by_peer(End::Closed(why), BackendEnd::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_close_the_client_may_not_receive_becomes_1011() {
        let end = |code: u16| {
            let frame = CloseFrame {
                code: code.into(),
                reason: "x".into(),
            };
            match backend_close(Some(&frame)) {
                End::Closed(why) => (why.code(), why.reason()),
                other => panic!("{other:?}"),
            }
        };
        for code in [1000, 1001, 1003, 1007, 1008, 1011, 3000, 4001, 4999] {
            assert_eq!(end(code), (code, "backend"), "{code}");
        }
        for code in [
            0, 999, 1002, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65535,
        ] {
            assert_eq!(end(code), (1011, "backend protocol error"), "{code}");
        }
        assert!(matches!(
            backend_close(None),
            End::Closed(CloseReason::BACKEND_CLOSED)
        ));
    }
}
