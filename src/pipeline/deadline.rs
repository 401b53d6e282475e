//! Named deadlines for blocking phases. A per-read timeout alone lets a client trickle one byte at
//! a time forever, so each phase carries one absolute deadline and every blocking call gets only
//! the time that is left of it.

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The phases of a connection that have a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The PROXY header and the TLS handshake (`[tls] handshake_timeout`, from accept).
    TlsHandshake,
    /// Reading the HTTP upgrade request and waiting for a free worker (`[limits]
    /// upgrade_timeout`).
    Upgrade,
    /// Reading the demo page's `POST /login` form body, once its head is in
    /// ([`crate::pipeline::upgrade`]'s `LOGIN_BODY`, within the upgrade deadline).
    LoginBody,
    /// Writing a refusal and letting the client read it before the socket closes.
    Linger,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::TlsHandshake => "tls handshake",
            Phase::Upgrade => "upgrade request",
            Phase::LoginBody => "login body",
            Phase::Linger => "lingering close",
        })
    }
}

/// An absolute point in time by which `phase` must be over.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub phase: Phase,
    pub at: Instant,
}

impl Deadline {
    pub fn new(phase: Phase, start: Instant, budget: Duration) -> Self {
        Deadline {
            phase,
            at: start + budget,
        }
    }

    /// Time left, or a `TimedOut` error naming the phase.
    ///
    /// # Errors
    /// `io::ErrorKind::TimedOut` once the deadline has passed.
    pub fn remaining(&self) -> io::Result<Duration> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} deadline expired", self.phase),
            ))
        } else {
            Ok(left)
        }
    }

    /// Gives the socket's next blocking reads and writes only the time left of this deadline.
    ///
    /// # Errors
    /// `TimedOut` if the deadline has passed; socket option errors.
    pub fn arm(&self, sock: &TcpStream) -> io::Result<()> {
        let left = self.remaining()?;
        sock.set_read_timeout(Some(left))?;
        sock.set_write_timeout(Some(left))
    }
}

/// True for the errors a socket timeout produces (`WouldBlock` on Linux, `TimedOut` elsewhere):
/// the caller re-checks its deadline rather than treating them as faults.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
