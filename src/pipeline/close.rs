//! Closing a WebSocket on a non-blocking socket: what is queued goes out first, then our close
//! frame, then (after a polite close) a short wait for the peer's, every wait in `poll(2)` under
//! a deadline. The one close loop of the connection loop ([`super::connection`]) and of both
//! sides of a proxied connection ([`super::relay`]); it never waits past its deadlines, whatever
//! the peer sends.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, WebSocket};

use crate::pipeline::tls::Transport;
use crate::pipeline::upgrade::{Replay, WsStream};
use crate::policy::CloseReason;

/// How long we wait for the peer's close frame after sending ours (and for the last bytes to go).
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The socket under a WebSocket, for `poll`.
pub(crate) trait PollSocket {
    fn poll_fd(&self) -> BorrowedFd<'_>;

    /// `poll` returned: a stream whose reads are `poll`-driven asks its socket again (and may
    /// read it now, see [`Transport::readable`]).
    fn readable(&mut self) {}
}

impl PollSocket for Replay<Transport> {
    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.get_ref().socket().as_fd()
    }

    fn readable(&mut self) {
        self.get_mut().readable();
    }
}

/// Our close frame for `why`.
pub(crate) fn frame(why: CloseReason) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(why.code()),
        reason: why.reason().into(),
    }
}

/// Sends a close (`send`: `Some(None)` is a close without a code) once what is queued has gone
/// out (within `flush_budget`; one try when it is zero), and with `wait_reply` waits up to
/// [`CLOSE_WAIT`] for the peer's close. A close the peer sent is answered by the flush: only
/// then is there sure to be room for our close frame, which tungstenite would otherwise refuse
/// as `WriteBufferFull`.
pub(crate) fn close<S: Read + Write + PollSocket>(
    ws: &mut WebSocket<S>,
    mut send: Option<Option<CloseFrame>>,
    flush_budget: Duration,
    wait_reply: bool,
) {
    let flush_deadline = Instant::now() + flush_budget;
    let mut reply_deadline = None;
    loop {
        let flushed = match ws.flush() {
            Ok(()) => true,
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => return, // close handshake complete, or the transport is gone
        };
        if flushed {
            if let Some(frame) = send.take() {
                match ws.close(frame) {
                    Ok(()) => {}
                    Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
                continue;
            }
            if !wait_reply {
                return;
            }
            reply_deadline.get_or_insert_with(|| Instant::now() + CLOSE_WAIT);
        }
        // Checked on every turn: a peer still sending data after our close must not keep this
        // loop reading past its deadline.
        if Instant::now() >= reply_deadline.unwrap_or(flush_deadline) {
            return;
        }
        if wait_reply {
            match ws.read() {
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(_) => continue,
                Err(_) => return,
            }
        }
        let left = reply_deadline
            .unwrap_or(flush_deadline)
            .saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let events = if flushed {
            PollFlags::IN
        } else {
            PollFlags::IN | PollFlags::OUT
        };
        let fd = ws.get_ref().poll_fd();
        let mut fds = [PollFd::new(&fd, events)];
        let t = rustix::event::Timespec::try_from(left).unwrap_or_default();
        if poll(&mut fds, Some(&t)).is_err() {
            return;
        }
        ws.get_mut().readable();
    }
}

/// Ends the client's TLS session cleanly (`close_notify`), after its WebSocket close.
pub(crate) fn end_tls(ws: &mut WsStream) {
    let tls = ws.get_mut().get_mut();
    tls.send_close_notify();
    let _ = Write::flush(tls);
}
