//! The admin endpoint: plain HTTP/1.1 `GET /healthz` and `GET /metrics` on its own thread and its
//! own listener, so it answers while every worker is busy. One request per connection, one
//! connection at a time, each under [`DEADLINE`]: a slow or silent client delays the next one by
//! at most that long. It must never serve WebSocket traffic; bind it to a private address.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};

use crate::hub::Waker;
use crate::metrics::{Gauges, Metrics};

/// The whole exchange with one admin client (reading the head and writing the answer) must
/// finish within this long.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// The largest request head read; a longer one gets 431.
pub const MAX_HEAD: usize = 4096;
const MAX_HEADERS: usize = 32;
/// After answering, how long and how much to read while waiting for the client to close.
const LINGER: Duration = Duration::from_millis(250);
const LINGER_BYTES: usize = 64 * 1024;
/// At most one accept-error log line per this interval.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the admin endpoint reports, shared with the server.
pub struct AdminState {
    /// The counters `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// Reads the pool gauges at render time.
    pub gauges: Box<dyn Fn() -> Gauges + Send + Sync>,
    /// Set when the server starts draining (SIGTERM): `/healthz` answers 503 so load balancers
    /// stop sending new clients.
    pub draining: AtomicBool,
    /// Woken to stop the admin thread.
    pub stop: Waker,
}

impl AdminState {
    /// # Errors
    /// If the stop eventfd cannot be made.
    pub fn new(
        metrics: Arc<Metrics>,
        gauges: impl Fn() -> Gauges + Send + Sync + 'static,
    ) -> io::Result<AdminState> {
        Ok(AdminState {
            metrics,
            gauges: Box::new(gauges),
            draining: AtomicBool::new(false),
            stop: Waker::new()?,
        })
    }

    /// Makes `/healthz` answer 503 `draining` (true) or 200 `ok` (false).
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }

    /// Stops the admin thread (it finishes the exchange in progress first).
    pub fn stop(&self) {
        self.stop.wake();
    }
}

/// Serves `listener` on a new thread until `state.stop` is woken.
///
/// # Errors
/// If the listener cannot be made non-blocking or the thread cannot be spawned.
pub fn spawn(listener: TcpListener, state: Arc<AdminState>) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("wsgate-admin".into())
        .spawn(move || {
            if let Err(e) = run(&listener, &state) {
                log::error!("admin endpoint stopped: {e}");
            }
        })
}

fn run(listener: &TcpListener, state: &AdminState) -> io::Result<()> {
    let mut last_error_log: Option<Instant> = None;
    loop {
        let mut fds = [
            PollFd::new(listener, PollFlags::IN),
            PollFd::new(&state.stop, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if !fds[1].revents().is_empty() {
            return Ok(());
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = exchange(stream, state) {
                    log::debug!("admin request from {peer} failed: {e}");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                // Out of fds or memory: wait for some to free rather than spin.
                let now = Instant::now();
                if last_error_log.is_none_or(|t| now.duration_since(t) >= ERROR_LOG_EVERY) {
                    log::error!("admin accept failed: {e}");
                    last_error_log = Some(now);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One request and its answer, all within [`DEADLINE`].
fn exchange(mut stream: TcpStream, state: &AdminState) -> io::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    stream.set_nonblocking(false)?;
    let answer = match read_head(&mut stream, deadline)? {
        Head::Complete(buf) => route(&buf, state),
        Head::TooLarge => Answer::text(431, "Request Header Fields Too Large", "head too large\n"),
        Head::Closed => return Ok(()),
    };
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(&answer.into_bytes())?;
    stream.flush()?;
    linger_close(&mut stream, deadline);
    Ok(())
}

/// Sends our FIN, then reads what the client still sends (a body, the rest of an oversized
/// head) until it closes, briefly: closing with unread bytes makes the kernel send a reset,
/// which can destroy the answer before the client has read it.
fn linger_close(stream: &mut TcpStream, deadline: Instant) {
    if stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let until = deadline.min(Instant::now() + LINGER);
    let mut sink = [0u8; 1024];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let Ok(left) = remaining(until) else { return };
        if stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    /// The client closed before sending a whole head.
    Closed,
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "admin request deadline expired",
        ))
    } else {
        Ok(left)
    }
}

/// Reads until the blank line ending the head, at most [`MAX_HEAD`] bytes, by `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(Head::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "admin request deadline expired",
                ));
            }
            Err(e) => return Err(e),
        };
        // Look for the end only in the new bytes (and the three before them).
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + end + 4;
            if end > MAX_HEAD {
                return Ok(Head::TooLarge);
            }
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// The answer to one complete request head.
fn route(head: &[u8], state: &AdminState) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Answer::text(431, "Request Header Fields Too Large", "too many headers\n");
        }
        Ok(httparse::Status::Partial) | Err(_) => {
            return Answer::text(400, "Bad Request", "bad request\n");
        }
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Answer::text(400, "Bad Request", "bad request\n");
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let known = matches!(path, "/healthz" | "/metrics");
    if !known {
        return Answer::text(404, "Not Found", "not found\n");
    }
    if method != "GET" {
        let mut a = Answer::text(405, "Method Not Allowed", "method not allowed\n");
        a.extra = "Allow: GET\r\n";
        return a;
    }
    if path == "/healthz" {
        if state.draining.load(Ordering::Acquire) {
            Answer::text(503, "Service Unavailable", "draining\n")
        } else {
            // Without Redis this instance still serves its own clients: 200 either way, and
            // the backbone's state as a detail for whoever reads it.
            match state.metrics.cluster_state() {
                None => Answer::text(200, "OK", "ok\n"),
                Some(true) => Answer::text(200, "OK", "ok\ncluster: up\n"),
                Some(false) => Answer::text(200, "OK", "ok\ncluster: down\n"),
            }
        }
    } else {
        let gauges = (state.gauges)();
        Answer {
            status: 200,
            reason: "OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            extra: "",
            body: state.metrics.render(&gauges),
        }
    }
}

struct Answer {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra: &'static str,
    body: String,
}

impl Answer {
    fn text(status: u16, reason: &'static str, body: &str) -> Answer {
        Answer {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body: body.to_string(),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
             Connection: close\r\n{}\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AdminState {
        AdminState::new(Arc::new(Metrics::new(["/echo"])), Gauges::default).unwrap()
    }

    fn status(head: &[u8], st: &AdminState) -> u16 {
        route(head, st).status
    }

    #[test]
    fn routes() {
        let st = state();
        assert_eq!(status(b"GET /healthz HTTP/1.1\r\n\r\n", &st), 200);
        assert_eq!(status(b"GET /healthz?x=1 HTTP/1.0\r\n\r\n", &st), 200);
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", &st),
            200
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n", &st), 404);
        assert_eq!(status(b"POST /healthz HTTP/1.1\r\n\r\n", &st), 405);
        assert_eq!(status(b"GET /healthz HTTP/2.0\r\n\r\n", &st), 400);
        assert_eq!(status(b"\x00\x01 nonsense\r\n\r\n", &st), 400);
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET /healthz HTTP/1.1\r\n{many}\r\n");
        assert_eq!(status(head.as_bytes(), &st), 431);
        st.set_draining(true);
        let a = route(b"GET /healthz HTTP/1.1\r\n\r\n", &st);
        assert_eq!((a.status, a.body.as_str()), (503, "draining\n"));
    }

    #[test]
    fn answers_carry_length_and_close() {
        let a = Answer::text(200, "OK", "ok\n").into_bytes();
        let text = String::from_utf8(a).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nok\n"));
    }
}
