//! The inbound-message path every loop after the upgrade shares — the connection loop
//! ([`crate::pipeline::connection`]) and the proxy relay ([`crate::pipeline::relay`]): frames
//! watched for the fragment cap and the message deadline, their bytes charged to the read share
//! of the memory cap as they arrive, then per message the metrics, the connection's traffic
//! counters, the publish right and the rate limit. Also the silence timers (ping, idle) and the
//! `poll(2)` wait both loops use. It decides what a message may do; where it goes is the loop's.

use std::io;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, poll};
use tungstenite::{Error as WsError, Message};

use crate::config::{Limits, Overflow, WsLimits};
use crate::hub::Membership;
use crate::memory::ReaderKey;
use crate::ops::metrics::Counter;
use crate::pipeline::end::{End, classify};
use crate::pipeline::frames::{FrameLimit, FrameWatch};
use crate::pipeline::ratelimit::MessageLimiter;
use crate::pipeline::upgrade::WsStream;
use crate::policy::CloseReason;

/// Messages read from one side in one step at most. A client that keeps its socket full would
/// otherwise keep the loop reading; after this many, the step goes on to the writes and the
/// deadline, revocation and shutdown checks, and the next step reads on at once.
pub const READS_PER_STEP: usize = 64;

/// What this connection may send, decided at upgrade.
#[derive(Debug, Clone, Copy)]
pub struct Rights {
    /// Whether a role lets this user publish on this path.
    pub may_publish: bool,
    /// What a message without publish rights gets.
    pub on_forbidden: Overflow,
    /// What a message over the rate limit gets.
    pub on_rate_limit: Overflow,
}

/// What [`Inbound::next`] read.
#[derive(Debug)]
pub enum Read {
    /// A data message that may go on (echoed, published, relayed). Its read charge is given
    /// back: where it goes charges it.
    Data(Message),
    /// The peer's close frame (tungstenite has queued the reply).
    Closed(Option<tungstenite::protocol::CloseFrame>),
    /// A ping: tungstenite has queued the pong, which the next flush (or read) sends.
    Pinged,
    /// A pong or a raw frame, or a data message dropped by the rights or the rate limit.
    Other,
    /// Nothing more without blocking.
    Empty,
}

/// When a silent peer is pinged (`ping_interval`) and given up on (`idle_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Silence {
    /// When it last sent us any frame (data, ping, pong).
    last_heard: Instant,
    /// A ping is out and unanswered.
    ping_sent: bool,
    ping_interval: Duration,
    idle_timeout: Duration,
}

/// What [`Silence::check`] found due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Silent for `ping_interval`: send one ping (marked sent).
    Ping,
    /// Silent for `idle_timeout`.
    Idle,
}

impl Silence {
    pub fn new(now: Instant, limits: &Limits) -> Silence {
        Silence {
            last_heard: now,
            ping_sent: false,
            ping_interval: limits.ping_interval,
            idle_timeout: limits.idle_timeout,
        }
    }

    /// The peer sent a frame.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.ping_sent = false;
    }

    /// What is due now; a ping is marked sent when it is.
    pub fn check(&mut self, now: Instant) -> Due {
        let silent = now.duration_since(self.last_heard);
        if silent >= self.idle_timeout {
            Due::Idle
        } else if silent >= self.ping_interval && !self.ping_sent {
            self.ping_sent = true;
            Due::Ping
        } else {
            Due::Nothing
        }
    }

    /// When the next ping or the idle timeout falls due.
    pub fn wake_at(&self) -> Instant {
        let idle = self.last_heard + self.idle_timeout;
        if self.ping_sent {
            idle
        } else {
            idle.min(self.last_heard + self.ping_interval)
        }
    }
}

/// One connection's inbound path: its rights and rate limit, and the client's silence.
pub struct Inbound {
    rights: Rights,
    limiter: MessageLimiter,
    silence: Silence,
}

impl Inbound {
    /// Sets the client's WebSocket up for its loop: frames watched for the fragment cap and the
    /// message deadline and charged to the read share (the member's user's part, or its
    /// address's when anonymous) as they arrive, and reads driven by `poll`.
    pub fn new(
        ws: &mut WsStream,
        member: &Membership,
        rights: Rights,
        channel: &WsLimits,
        limits: &Limits,
        now: Instant,
    ) -> Inbound {
        let transport = ws.get_ref().get_ref();
        let key = match (&member.shared.holder.user, member.shared.profile.get()) {
            (Some(user), _) => ReaderKey::User(user.clone()),
            (None, Some(profile)) => ReaderKey::Address(profile.peer.ip()),
            (None, None) => ReaderKey::Address(
                transport
                    .socket()
                    .peer_addr()
                    .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip()),
            ),
        };
        // Closing a connection for the read share shuts its read side: its `poll` returns, and
        // its next read fails with `FrameLimit::MemoryFull` before it looks at the socket.
        let socket = transport.shared_socket();
        let wake = Box::new(move || {
            let _ = socket.shutdown(std::net::Shutdown::Read);
        });
        let reader = member.account().reader(key, wake);
        ws.get_mut().watch_frames(
            FrameWatch::new(limits.max_fragments.get(), limits.message_timeout),
            reader,
            channel.read_buffer_size.get(),
        );
        ws.get_mut().get_mut().poll_driven(true);
        Inbound {
            rights,
            limiter: MessageLimiter::new(
                channel.max_messages_per_sec,
                channel.max_bytes_per_sec as u64,
                now,
            ),
            silence: Silence::new(now, limits),
        }
    }

    /// Reads the next message without blocking and applies the rights and the rate limit to a
    /// data message (counted in the metrics and the connection's traffic either way).
    ///
    /// # Errors
    /// How the connection ends: the client broke the protocol or a limit, vanished, or a
    /// message it may not send closes it.
    pub fn next(&mut self, ws: &mut WsStream, member: &Membership) -> Result<Read, End> {
        let msg = loop {
            match ws.read() {
                Ok(msg) => break msg,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Read::Empty);
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(e)),
            }
        };
        self.silence.heard(Instant::now());
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                let len = msg.len();
                ws.get_mut().settle(len);
                let metrics = member.metrics();
                metrics.message_in(len);
                member.shared.traffic.received(len);
                if !self.rights.may_publish {
                    metrics.bump(Counter::PublishDenied, 1);
                    return match self.rights.on_forbidden {
                        Overflow::Close => Err(End::Closed(CloseReason::PUBLISH_NOT_ALLOWED)),
                        Overflow::Drop => Ok(Read::Other),
                    };
                }
                if !self.limiter.allow(len, Instant::now()) {
                    metrics.bump(Counter::RateLimited, 1);
                    return match self.rights.on_rate_limit {
                        Overflow::Close => Err(End::Closed(CloseReason::RATE_LIMIT)),
                        Overflow::Drop => Ok(Read::Other),
                    };
                }
                Ok(Read::Data(msg))
            }
            Message::Close(frame) => Ok(Read::Closed(frame)),
            // Pings are answered by tungstenite; pongs and raw frames need nothing.
            Message::Ping(_) => Ok(Read::Pinged),
            Message::Pong(_) | Message::Frame(_) => Ok(Read::Other),
        }
    }

    /// The client's timers: the read share closing it, the fragmented message's deadline, the
    /// idle timeout; and whether a ping is due.
    ///
    /// # Errors
    /// How the connection ends when one has passed.
    pub fn check(&mut self, ws: &WsStream, now: Instant) -> Result<Due, End> {
        if ws.get_ref().read_share_closed() {
            return Err(End::Closed(FrameLimit::MemoryFull.reason()));
        }
        if ws.get_ref().message_deadline().is_some_and(|d| now >= d) {
            return Err(End::Closed(FrameLimit::TooSlow.reason()));
        }
        match self.silence.check(now) {
            Due::Idle => Err(End::Closed(CloseReason::IDLE_TIMEOUT)),
            due => Ok(due),
        }
    }

    /// When the client's next timer falls due.
    pub fn wake_at(&self, ws: &WsStream) -> Instant {
        let at = self.silence.wake_at();
        ws.get_ref().message_deadline().map_or(at, |d| at.min(d))
    }
}

/// A data message of `len` payload bytes went out to the client: the metrics and the
/// connection's traffic counters.
pub fn sent(member: &Membership, len: usize) {
    member.metrics().message_out(len);
    member.shared.traffic.sent(len);
}

/// Sleeps in `poll(2)` on `fds` until an event or `timeout`. Returns whether the first
/// descriptor (the client's socket) reported an event — or may have: a signal that interrupted
/// the wait counts as one, so the caller asks the socket.
///
/// # Errors
/// `poll`'s own failure.
pub fn wait(fds: &mut [PollFd<'_>], timeout: Duration) -> io::Result<bool> {
    let timeout = rustix::event::Timespec::try_from(timeout).unwrap_or(rustix::event::Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    });
    match poll(fds, Some(&timeout)) {
        Ok(_) => Ok(!fds[0].revents().is_empty()),
        Err(rustix::io::Errno::INTR) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silence(now: Instant) -> Silence {
        Silence {
            last_heard: now,
            ping_sent: false,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
        }
    }

    #[test]
    fn a_silent_peer_is_pinged_once_then_given_up_on_and_a_frame_starts_over() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut quiet = silence(t0);
        assert_eq!(quiet.wake_at(), s(30));
        assert_eq!(quiet.check(s(29)), Due::Nothing);
        assert_eq!(quiet.check(s(30)), Due::Ping);
        assert_eq!(
            quiet.check(s(31)),
            Due::Nothing,
            "one ping until it answers"
        );
        assert_eq!(quiet.wake_at(), s(75));
        assert_eq!(quiet.check(s(75)), Due::Idle);
        quiet.heard(s(40));
        assert_eq!((quiet.check(s(69)), quiet.wake_at()), (Due::Nothing, s(70)));
        assert_eq!(quiet.check(s(70)), Due::Ping);
    }
}
