//! The admin endpoint: plain HTTP/1.1 `GET /healthz` and `GET /metrics` on its own thread and its
//! own listener, so it answers while every worker is busy. One thread serves up to
//! `[admin] max_connections` clients at once from one `poll(2)` loop on non-blocking sockets, one
//! request per connection: a client must send its first byte within [`FIRST_BYTE`] and finish
//! its exchange within [`DEADLINE`], and when all places are taken a new client evicts the
//! oldest one still waiting for its request. So silent or slow clients never delay a health
//! probe (issue 11). It must never serve WebSocket traffic; bind it to a private address.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::num::NonZeroUsize;
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
/// A new admin client must send its first byte within this long: a health probe sends its
/// request at once, a scanner that connects and waits gives its place back quickly.
pub const FIRST_BYTE: Duration = Duration::from_millis(500);
/// Admin clients served at once unless `[admin] max_connections` says otherwise. One more evicts
/// the oldest client still reading its request, so a flood of idle connections cannot keep a
/// probe out (it sends its request at once and is answered within a turn of the loop).
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// The largest request head read; a longer one gets 431.
pub const MAX_HEAD: usize = 4096;
const MAX_HEADERS: usize = 32;
/// After answering, how long and how much to read while waiting for the client to close.
const LINGER: Duration = Duration::from_millis(250);
const LINGER_BYTES: usize = 64 * 1024;
/// At most one accept-error log line per this interval.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long accepting pauses after an accept error (out of descriptors or memory), while the
/// clients already in are still served.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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

    /// Stops the admin thread (clients still connected are dropped).
    pub fn stop(&self) {
        self.stop.wake();
    }
}

/// Serves `listener` on a new thread, up to `max_connections` clients at once, until
/// `state.stop` is woken.
///
/// # Errors
/// If the listener cannot be made non-blocking or the thread cannot be spawned.
pub fn spawn(
    listener: TcpListener,
    state: Arc<AdminState>,
    max_connections: NonZeroUsize,
) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("wsgate-admin".into())
        .spawn(move || {
            if let Err(e) = run(&listener, &state, max_connections.get()) {
                log::error!("admin endpoint stopped: {e}");
            }
        })
}

/// Where one admin client's exchange is.
enum Phase {
    /// Reading the request head (the bytes so far).
    Reading(Vec<u8>),
    /// Writing the answer (`sent` bytes of `out` are out).
    Writing { out: Vec<u8>, sent: usize },
    /// Answer sent and our FIN with it; reading what the client still sends until it closes, so
    /// unread bytes do not turn our close into a reset that destroys the answer.
    Lingering { until: Instant, drained: usize },
}

struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    phase: Phase,
}

/// What a turn did to a client.
enum Next {
    Stay,
    /// Done, or given up on: drop (close) the socket.
    Drop,
}

impl Client {
    /// When this client is dropped unless it gets further: [`FIRST_BYTE`] while nothing came,
    /// [`DEADLINE`] for the exchange, the linger's own end.
    fn deadline(&self) -> Instant {
        match &self.phase {
            Phase::Reading(buf) if buf.is_empty() => self.accepted + FIRST_BYTE,
            Phase::Reading(_) | Phase::Writing { .. } => self.accepted + DEADLINE,
            Phase::Lingering { until, .. } => *until,
        }
    }

    fn events(&self) -> PollFlags {
        match self.phase {
            Phase::Writing { .. } => PollFlags::OUT,
            Phase::Reading(_) | Phase::Lingering { .. } => PollFlags::IN,
        }
    }

    /// Does what the socket allows now without blocking; every loop here ends at `WouldBlock`
    /// or a bound (the head size, the linger budget).
    fn advance(&mut self, state: &AdminState) -> io::Result<Next> {
        let mut chunk = [0u8; 1024];
        loop {
            match &mut self.phase {
                Phase::Reading(buf) => {
                    let n = match self.stream.read(&mut chunk) {
                        Ok(0) => return Ok(Next::Drop), // closed before a whole head
                        Ok(n) => n,
                        Err(e) => return would_block(e),
                    };
                    // Look for the end only in the new bytes (and the three before them).
                    let from = buf.len().saturating_sub(3);
                    buf.extend_from_slice(&chunk[..n]);
                    let answer = match buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                        Some(end) if from + end + 4 <= MAX_HEAD => {
                            route(&buf[..from + end + 4], state)
                        }
                        Some(_) => head_too_large(),
                        None if buf.len() >= MAX_HEAD => head_too_large(),
                        None => continue,
                    };
                    self.phase = Phase::Writing {
                        out: answer.into_bytes(),
                        sent: 0,
                    };
                }
                Phase::Writing { out, sent } => {
                    match self.stream.write(&out[*sent..]) {
                        Ok(0) => return Ok(Next::Drop),
                        Ok(n) => *sent += n,
                        Err(e) => return would_block(e),
                    }
                    if *sent == out.len() {
                        self.stream.shutdown(Shutdown::Write)?;
                        self.phase = Phase::Lingering {
                            until: (Instant::now() + LINGER).min(self.accepted + DEADLINE),
                            drained: 0,
                        };
                    }
                }
                Phase::Lingering { drained, .. } => {
                    match self.stream.read(&mut chunk) {
                        Ok(0) => return Ok(Next::Drop),
                        Ok(n) => *drained += n,
                        Err(e) => return would_block(e),
                    }
                    if *drained >= LINGER_BYTES {
                        return Ok(Next::Drop);
                    }
                }
            }
        }
    }
}

/// `WouldBlock` (and `Interrupted`) mean "not now"; anything else ends the client.
fn would_block(e: io::Error) -> io::Result<Next> {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Next::Stay),
        _ => Err(e),
    }
}

fn head_too_large() -> Answer {
    Answer::text(431, "Request Header Fields Too Large", "head too large\n")
}

fn run(listener: &TcpListener, state: &AdminState, max: usize) -> io::Result<()> {
    let mut clients: Vec<Client> = Vec::with_capacity(max);
    let mut last_error_log: Option<Instant> = None;
    let mut accept_paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if accept_paused_until.is_some_and(|t| now >= t) {
            accept_paused_until = None;
        }
        let wake_at = clients
            .iter()
            .map(Client::deadline)
            .chain(accept_paused_until)
            .min();
        let timeout = wake_at.map(|t| {
            rustix::event::Timespec::try_from(t.saturating_duration_since(now)).unwrap_or_default()
        });
        let accepting = accept_paused_until.is_none();
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(clients.len() + 2);
        fds.push(PollFd::new(&state.stop, PollFlags::IN));
        fds.push(PollFd::new(
            listener,
            if accepting {
                PollFlags::IN
            } else {
                PollFlags::empty()
            },
        ));
        fds.extend(clients.iter().map(|c| PollFd::new(&c.stream, c.events())));
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if !fds[0].revents().is_empty() {
            return Ok(());
        }
        let ready: Vec<bool> = fds[2..].iter().map(|f| !f.revents().is_empty()).collect();
        let new_clients = accepting && !fds[1].revents().is_empty();
        drop(fds);
        // Serve the clients the socket has news for; drop those past their deadline.
        let now = Instant::now();
        let mut ready = ready.into_iter();
        clients.retain_mut(|c| {
            let next = if ready.next().unwrap_or(false) {
                c.advance(state)
            } else {
                Ok(Next::Stay)
            };
            match next {
                Ok(Next::Stay) if now < c.deadline() => true,
                Ok(Next::Stay) => {
                    log::debug!("admin request from {} failed: deadline expired", c.peer);
                    false
                }
                Ok(Next::Drop) => false,
                Err(e) => {
                    log::debug!("admin request from {} failed: {e}", c.peer);
                    false
                }
            }
        });
        if new_clients {
            if let Err(e) = accept_some(listener, &mut clients, max, state) {
                let now = Instant::now();
                if last_error_log.is_none_or(|t| now.duration_since(t) >= ERROR_LOG_EVERY) {
                    log::error!("admin accept failed: {e}");
                    last_error_log = Some(now);
                }
                // Out of fds or memory: pause accepting rather than spin.
                accept_paused_until = Some(now + ACCEPT_BACKOFF);
            }
        }
    }
}

/// Accepts what is waiting, at most `max` in one turn, evicting the oldest client still reading
/// its request when all `max` places are taken. A new client is served at once: most
/// send their request with the connect.
///
/// # Errors
/// An accept error other than "nothing waiting" or an aborted connection.
fn accept_some(
    listener: &TcpListener,
    clients: &mut Vec<Client>,
    max: usize,
    state: &AdminState,
) -> io::Result<()> {
    for _ in 0..max {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if clients.len() >= max {
            let oldest = clients
                .iter()
                .enumerate()
                .filter(|(_, c)| matches!(c.phase, Phase::Reading(_)))
                .min_by_key(|(_, c)| c.accepted)
                .or_else(|| clients.iter().enumerate().min_by_key(|(_, c)| c.accepted))
                .map(|(i, _)| i);
            if let Some(i) = oldest {
                let evicted = clients.swap_remove(i);
                log::debug!(
                    "admin request from {} dropped: too many clients",
                    evicted.peer
                );
            }
        }
        let mut client = Client {
            stream,
            peer,
            accepted: Instant::now(),
            phase: Phase::Reading(Vec::new()),
        };
        match client.advance(state) {
            Ok(Next::Stay) => clients.push(client),
            Ok(Next::Drop) => {}
            Err(e) => log::debug!("admin request from {peer} failed: {e}"),
        }
    }
    Ok(())
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
