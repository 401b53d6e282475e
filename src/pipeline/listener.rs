//! The listener: one thread in a blocking `poll` on the listening socket and a stop fd. It accepts
//! and hands each connection to admission, never reading a byte from a client (not even a PROXY
//! header), so no client can stall it. `accept` failures such as fd exhaustion back off instead of
//! spinning a core.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};

use crate::hub::waker::Waker;

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one accept-error log line per this interval.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Accepts until `stop` is woken, calling `handle` for each connection with its accept time.
///
/// # Errors
/// Only a failure of `poll` itself or of making the socket non-blocking.
pub fn run(
    listener: &TcpListener,
    stop: &Waker,
    handle: impl FnMut(TcpStream, SocketAddr, Instant),
) -> io::Result<()> {
    accept_loop(listener, Until::Woken(stop), handle)
}

/// Accepts until `until` (the drain delay after a stop: the stop fd is already signalled, so
/// only the clock ends this), calling `handle` as [`run`] does.
///
/// # Errors
/// As [`run`].
pub fn run_until(
    listener: &TcpListener,
    until: Instant,
    handle: impl FnMut(TcpStream, SocketAddr, Instant),
) -> io::Result<()> {
    accept_loop(listener, Until::Time(until), handle)
}

/// What ends an accept loop.
#[derive(Clone, Copy)]
enum Until<'a> {
    Woken(&'a Waker),
    Time(Instant),
}

fn accept_loop(
    listener: &TcpListener,
    until: Until<'_>,
    mut handle: impl FnMut(TcpStream, SocketAddr, Instant),
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut backoff = BACKOFF_MIN;
    let mut last_error_log: Option<Instant> = None;
    let mut suppressed = 0u64;
    loop {
        let ready = match until {
            Until::Woken(stop) => {
                let mut fds = [
                    PollFd::new(listener, PollFlags::IN),
                    PollFd::new(stop, PollFlags::IN),
                ];
                match poll(&mut fds, None) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
                if !fds[1].revents().is_empty() {
                    return Ok(());
                }
                !fds[0].revents().is_empty()
            }
            Until::Time(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                let timeout = rustix::event::Timespec::try_from(left).map_err(io::Error::other)?;
                let mut fds = [PollFd::new(listener, PollFlags::IN)];
                match poll(&mut fds, Some(&timeout)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
                !fds[0].revents().is_empty()
            }
        };
        if !ready {
            continue;
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    backoff = BACKOFF_MIN;
                    // Accepted sockets do not inherit O_NONBLOCK on Linux, but be explicit.
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_nodelay(true);
                    handle(stream, peer, Instant::now());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS/ENOMEM: resources run out. Wait for some to free.
                    let now = Instant::now();
                    if last_error_log.is_none_or(|t| now.duration_since(t) >= ERROR_LOG_EVERY) {
                        log::error!(
                            "accept failed: {e} (backing off; {suppressed} similar errors not logged)"
                        );
                        last_error_log = Some(now);
                        suppressed = 0;
                    } else {
                        suppressed += 1;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break;
                }
            }
        }
    }
}
