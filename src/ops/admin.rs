//! The admin endpoint: plain HTTP/1.1 `GET /healthz` and `GET /metrics` on its own thread and its
//! own listener, so it answers while every worker is busy, and the admin API (issue 16):
//! `POST /publish`, `GET /connections`, `POST /disconnect`, behind the optional bearer token of
//! `[admin] token_file`. One thread serves up to
//! `[admin] max_connections` clients at once from one `poll(2)` loop on non-blocking sockets, one
//! request per connection: a client must send its first byte within [`FIRST_BYTE`] and finish
//! its exchange within [`DEADLINE`], and when all places are taken a new client evicts the
//! oldest one still waiting for its request. So silent or slow clients never delay a health
//! probe (issue 11). It must never serve WebSocket traffic; bind it to a private address.
//!
//! A publish body is read only after its head passed every check (route, token, channel, size):
//! at most the channel's `max_message_size`, within the same [`DEADLINE`]. Refusals are logged
//! one line each (status, reason, peer), rate-limited; the request target and headers never are,
//! so a token sent in a query string or a header reaches no log.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

use rustix::event::{PollFd, PollFlags, poll};
use tungstenite::Message;

pub use crate::hub::Filter;
use crate::hub::Hub;
use crate::hub::waker::Waker;
use crate::ops::metrics::Counter;
use crate::ops::metrics::{Gauges, Metrics};
use crate::pipeline::ratelimit::TokenBucket;
use crate::policy::{percent_decode, safe_user};

/// The whole exchange with one admin client (reading the head and writing the answer) must
/// finish within this long.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// A new admin client must send its first byte within this long: a health probe sends its
/// request at once, a scanner that connects and waits gives its place back quickly.
pub const FIRST_BYTE: Duration = Duration::from_millis(500);
/// Admin clients served at once unless `[admin] max_connections` says otherwise. One more evicts
/// the oldest client still sending its request (head or publish body), so a flood of idle or
/// slow connections cannot keep a probe out (it sends its request at once and is answered within
/// a turn of the loop).
pub const DEFAULT_MAX_CONNECTIONS: usize = crate::config::DEFAULT_ADMIN_MAX_CONNECTIONS;
/// The largest request head read; a longer one gets 431.
pub const MAX_HEAD: usize = 4096;
const MAX_HEADERS: usize = 32;
/// After answering, how long and how much to read while waiting for the client to close.
const LINGER: Duration = Duration::from_millis(250);
const LINGER_BYTES: usize = 64 * 1024;
/// At most one accept-error log line per this interval.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// Refusal lines (401, 400, 404, 413...) logged per second at most; the rest are counted and the
/// count is logged with the next line.
const REFUSAL_LINES_PER_SEC: u64 = 5;
/// The longest line of a `/connections` answer: a user name (64 characters, each at most
/// `\u00XX`), a path (1024), a session id, the peer, six numbers and the keys. The memory budget
/// counts one answer of this much per connection per admin client.
pub const LISTED_CONNECTION_MAX: usize = 2048;
/// The shortest bearer token `[admin] token_file` may hold: a short one is guessable.
pub const MIN_TOKEN_LEN: usize = 16;
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
    /// The admin API, once the server attached it; without it only `/healthz` and `/metrics`.
    api: OnceLock<Api>,
    /// The refusal lines' budget, and how many were suppressed since the last line.
    refusals: Mutex<(TokenBucket, u64)>,
}

/// The largest message the broadcast channel serving a path takes (see [`Api::broadcast_limit`]).
pub type BroadcastLimit = dyn Fn(&str) -> Option<usize> + Send + Sync;

/// What the admin API acts on: the hub, the current channels, the bearer token.
pub struct Api {
    pub hub: Arc<Hub>,
    /// The `max_message_size` of the broadcast channel serving a path under the current config;
    /// `None` when no broadcast channel serves it (no channel, an echo channel, a bad path).
    pub broadcast_limit: Box<BroadcastLimit>,
    /// SHA-256 of `[admin] token_file`'s token; `None`: no token asked for (loopback only).
    pub token: Option<[u8; 32]>,
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
            api: OnceLock::new(),
            refusals: Mutex::new((
                TokenBucket::new(REFUSAL_LINES_PER_SEC, REFUSAL_LINES_PER_SEC, Instant::now()),
                0,
            )),
        })
    }

    /// Turns on the admin API (once; a second call is ignored).
    pub fn attach_api(&self, api: Api) {
        let _ = self.api.set(api);
    }

    /// One line for a refused request, within the budget. `reason` is our own text, never
    /// anything the client sent.
    fn log_refusal(&self, peer: SocketAddr, status: u16, reason: &str) {
        let now = Instant::now();
        let suppressed = {
            let mut budget = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            if !budget.0.try_take(1, now) {
                budget.1 += 1;
                return;
            }
            std::mem::take(&mut budget.1)
        };
        if suppressed > 0 {
            log::warn!("{suppressed} admin refusal lines suppressed");
        }
        let reason = reason.trim_end();
        if status == 401 {
            log::warn!("admin request refused peer={peer} status={status} reason={reason}");
        } else {
            log::info!("admin request refused peer={peer} status={status} reason={reason}");
        }
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
    /// Reading a publish body of `need` bytes (the head passed every check).
    Body {
        publish: Publish,
        body: Vec<u8>,
        need: usize,
    },
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
            Phase::Reading(_) | Phase::Body { .. } | Phase::Writing { .. } => {
                self.accepted + DEADLINE
            }
            Phase::Lingering { until, .. } => *until,
        }
    }

    fn events(&self) -> PollFlags {
        match self.phase {
            Phase::Writing { .. } => PollFlags::OUT,
            Phase::Reading(_) | Phase::Body { .. } | Phase::Lingering { .. } => PollFlags::IN,
        }
    }

    /// Does what the socket allows now without blocking; every loop here ends at `WouldBlock`
    /// or a bound (the head size, the linger budget).
    fn advance(&mut self, state: &AdminState) -> io::Result<Next> {
        let mut chunk = [0u8; 8192];
        loop {
            match &mut self.phase {
                Phase::Reading(buf) => {
                    let want = (MAX_HEAD + 3)
                        .saturating_sub(buf.len())
                        .clamp(1, chunk.len());
                    let n = match self.stream.read(&mut chunk[..want]) {
                        Ok(0) => return Ok(Next::Drop), // closed before a whole head
                        Ok(n) => n,
                        Err(e) => return would_block(e),
                    };
                    // Look for the end only in the new bytes (and the three before them).
                    let from = buf.len().saturating_sub(3);
                    buf.extend_from_slice(&chunk[..n]);
                    let routed = match buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                        Some(end) if from + end + 4 <= MAX_HEAD => {
                            let head_len = from + end + 4;
                            match route(&buf[..head_len], state, self.peer) {
                                Routed::Body {
                                    publish,
                                    need,
                                    expect_continue,
                                } => {
                                    if expect_continue {
                                        const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
                                        // A fresh socket's buffer takes 25 bytes whole.
                                        if self.stream.write(CONTINUE)? != CONTINUE.len() {
                                            return Ok(Next::Drop);
                                        }
                                    }
                                    let mut body = buf.split_off(head_len);
                                    body.truncate(need);
                                    self.phase = Phase::Body {
                                        publish,
                                        body,
                                        need,
                                    };
                                    continue;
                                }
                                Routed::Answer(answer) => answer,
                            }
                        }
                        Some(_) => head_too_large(),
                        None if buf.len() >= MAX_HEAD => head_too_large(),
                        None => continue,
                    };
                    self.answer(routed, state);
                }
                Phase::Body {
                    publish,
                    body,
                    need,
                } => {
                    if body.len() < *need {
                        let want = (*need - body.len()).min(chunk.len());
                        match self.stream.read(&mut chunk[..want]) {
                            Ok(0) => return Ok(Next::Drop), // closed before the whole body
                            Ok(n) => body.extend_from_slice(&chunk[..n]),
                            Err(e) => return would_block(e),
                        }
                    }
                    if body.len() == *need {
                        let answer = publish_now(state, publish, std::mem::take(body), self.peer);
                        self.answer(answer, state);
                    }
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

impl Client {
    /// Writes `answer` next; a refusal gets its log line.
    fn answer(&mut self, answer: Answer, state: &AdminState) {
        if (400..500).contains(&answer.status) {
            state.log_refusal(self.peer, answer.status, &answer.body);
        }
        self.phase = Phase::Writing {
            out: answer.into_bytes(),
            sent: 0,
        };
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
                .filter(|(_, c)| matches!(c.phase, Phase::Reading(_) | Phase::Body { .. }))
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

/// What a complete request head leads to.
enum Routed {
    Answer(Answer),
    /// A publish whose head passed every check: read `need` body bytes, then publish.
    Body {
        publish: Publish,
        need: usize,
        expect_continue: bool,
    },
}

impl From<Answer> for Routed {
    fn from(a: Answer) -> Routed {
        Routed::Answer(a)
    }
}

/// A publish waiting for its body.
struct Publish {
    path: String,
    /// `Content-Type: application/octet-stream`: a binary message; otherwise text.
    binary: bool,
}

/// The endpoints, by request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Healthz,
    Metrics,
    Publish,
    Connections,
    Disconnect,
}

impl Endpoint {
    fn of(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/healthz" => Endpoint::Healthz,
            "/metrics" => Endpoint::Metrics,
            "/publish" => Endpoint::Publish,
            "/connections" => Endpoint::Connections,
            "/disconnect" => Endpoint::Disconnect,
            _ => return None,
        })
    }

    fn method(self) -> &'static str {
        match self {
            Endpoint::Healthz | Endpoint::Metrics | Endpoint::Connections => "GET",
            Endpoint::Publish | Endpoint::Disconnect => "POST",
        }
    }

    /// The query keys it takes (anything else is a 400: a typo must not widen a disconnect).
    fn keys(self) -> &'static [&'static str] {
        match self {
            Endpoint::Healthz | Endpoint::Metrics => &[],
            Endpoint::Publish => &["path"],
            Endpoint::Connections | Endpoint::Disconnect => FILTER_KEYS,
        }
    }
}

fn bad_request(why: &str) -> Answer {
    Answer::text(400, "Bad Request", &format!("{why}\n"))
}

/// The answer to one complete request head, or the body a publish still needs.
fn route(head: &[u8], state: &AdminState, peer: SocketAddr) -> Routed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Answer::text(431, "Request Header Fields Too Large", "too many headers\n")
                .into();
        }
        Ok(httparse::Status::Partial) | Err(_) => return bad_request("bad request").into(),
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return bad_request("bad request").into();
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(endpoint) = Endpoint::of(path) else {
        return Answer::text(404, "Not Found", "not found\n").into();
    };
    // The API's endpoints exist only once the server attached it.
    let api = match (endpoint, state.api.get()) {
        (Endpoint::Healthz | Endpoint::Metrics, _) => None,
        (_, Some(api)) => Some(api),
        (_, None) => return Answer::text(404, "Not Found", "not found\n").into(),
    };
    if method != endpoint.method() {
        let mut a = Answer::text(405, "Method Not Allowed", "method not allowed\n");
        a.extra = if endpoint.method() == "GET" {
            "Allow: GET\r\n"
        } else {
            "Allow: POST\r\n"
        };
        return a.into();
    }
    let Some(api) = api else {
        return health_or_metrics(endpoint, state).into();
    };
    if let Some(want) = &api.token {
        if let Err(why) = bearer_matches(req.headers, want) {
            let mut a = Answer::text(401, "Unauthorized", why);
            a.extra = "WWW-Authenticate: Bearer realm=\"wsgate-admin\"\r\n";
            return a.into();
        }
    }
    let query = match parse_query(query, endpoint.keys()) {
        Ok(q) => q,
        Err(why) => return bad_request(&why).into(),
    };
    match endpoint {
        Endpoint::Publish => route_publish(req.headers, &query, api),
        Endpoint::Connections => {
            let list = list_connections(&api.hub, &query);
            Answer::json(200, "OK", list).into()
        }
        Endpoint::Disconnect => {
            if query.is_empty() {
                return bad_request("name the connections to end: user, session or path").into();
            }
            let n = api.hub.disconnect(&query);
            state.metrics.bump(Counter::AdminDisconnects, n as u64);
            let forwarded = api.hub.forward_disconnect(&query);
            log::info!(
                "admin disconnect {} closed={n}{} peer={peer}",
                describe(&query),
                if forwarded {
                    " (sent to the other instances)"
                } else {
                    ""
                }
            );
            Answer::json(
                200,
                "OK",
                format!("{{\"disconnected\":{n},\"forwarded\":{forwarded}}}\n"),
            )
            .into()
        }
        Endpoint::Healthz | Endpoint::Metrics => unreachable!("answered above"),
    }
}

fn health_or_metrics(endpoint: Endpoint, state: &AdminState) -> Answer {
    if endpoint == Endpoint::Healthz {
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

/// Whether the request carries `Authorization: Bearer TOKEN` with the configured token,
/// compared as SHA-256 digests in constant time. The error is our text for the 401 and the log.
fn bearer_matches(headers: &[httparse::Header<'_>], want: &[u8; 32]) -> Result<(), &'static str> {
    let mut auth = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"));
    let (Some(h), None) = (auth.next(), auth.next()) else {
        return Err("bearer token required\n");
    };
    let value = std::str::from_utf8(h.value).map_err(|_| "bearer token required\n")?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or("bearer token required\n")?;
    if crate::auth::tokens::digests_equal(&token_digest(token), want) {
        Ok(())
    } else {
        Err("wrong token\n")
    }
}

/// SHA-256 of a bearer token, as [`Api::token`] holds it.
#[must_use]
pub fn token_digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Why `[admin] token_file` cannot be used.
#[derive(Debug)]
pub enum TokenFileError {
    Read(io::Error),
    /// Empty, or shorter than [`MIN_TOKEN_LEN`], or with a space or control character inside.
    Unfit,
}

impl std::fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenFileError::Read(e) => {
                write!(f, "cannot read it: {}", e.to_string().to_lowercase())
            }
            TokenFileError::Unfit => write!(
                f,
                "it must hold one token of at least {MIN_TOKEN_LEN} visible characters \
                 (e.g. `head -c 32 /dev/urandom | base64 > FILE`)"
            ),
        }
    }
}

impl std::error::Error for TokenFileError {}

/// Reads the bearer token from `[admin] token_file`: its one line, surrounding whitespace
/// trimmed, opened as every secret file is ([`crate::auth::files::open_private`]: a regular file, a
/// warning when group or others may read it). The server keeps only its digest; `wsgate
/// connections` sends it.
///
/// # Errors
/// The file cannot be read, or does not hold a token fit to guard the API.
pub fn read_token(path: &Path) -> Result<String, TokenFileError> {
    let (mut file, _) = crate::auth::files::open_private(path, "[admin] token_file")
        .map_err(TokenFileError::Read)?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(TokenFileError::Read)?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenFileError::Unfit);
    }
    Ok(token.to_string())
}

/// For a log line: the filter's keys, escaped.
fn describe(f: &Filter) -> String {
    let mut out = String::new();
    for (key, value) in [
        ("user", &f.user),
        ("session", &f.session),
        ("path", &f.path),
    ] {
        if let Some(v) = value {
            let _ = write!(out, "{key}=\"{}\" ", safe_user(v));
        }
    }
    out.trim_end().to_string()
}

/// The filter as a query string (`user=alice&path=%2Fchat`, without `?`), values
/// percent-encoded but for unreserved characters, `/` and `*`: how `wsgate disconnect` asks, and
/// how a disconnect travels to the other instances. [`parse_query`] reads it back.
#[must_use]
pub fn query_string(f: &Filter) -> String {
    let mut out = String::new();
    for (key, value) in [
        ("user", &f.user),
        ("session", &f.session),
        ("path", &f.path),
    ] {
        if let Some(v) = value {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(key);
            out.push('=');
            for b in v.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~/*".contains(&b) {
                    out.push(char::from(b));
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
    }
    out
}

/// The keys a [`Filter`] has, for [`parse_query`].
pub const FILTER_KEYS: &[&str] = &["user", "session", "path"];

/// Parses `query` (`a=1&b=2`) into a [`Filter`], taking only `keys`: each key at most once,
/// not empty, values percent-decoded as the upgrade's query values are ([`percent_decode`]).
///
/// # Errors
/// What is wrong, for a 400.
pub fn parse_query(query: &str, keys: &[&str]) -> Result<Filter, String> {
    let mut f = Filter::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "user" if keys.contains(&"user") => &mut f.user,
            "session" if keys.contains(&"session") => &mut f.session,
            "path" if keys.contains(&"path") => &mut f.path,
            _ => {
                // Not named: what a client puts there (a token, say) must not reach the log.
                let known = if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                };
                return Err(format!("unknown query key; this endpoint takes {known}"));
            }
        };
        if slot.is_some() {
            return Err(format!("query key `{key}` given twice"));
        }
        let value =
            percent_decode(value).ok_or_else(|| format!("query key `{key}`: bad escape"))?;
        if value.is_empty() {
            return Err(format!("query key `{key}` is empty"));
        }
        *slot = Some(value);
    }
    Ok(f)
}

/// A publish head's checks: a path a broadcast channel serves (404), a declared length
/// (411; no chunked bodies) within that channel's `max_message_size` (413).
fn route_publish(headers: &[httparse::Header<'_>], query: &Filter, api: &Api) -> Routed {
    let Some(path) = &query.path else {
        return bad_request("name the channel: /publish?path=/CHANNEL").into();
    };
    let Some(limit) = (api.broadcast_limit)(path) else {
        return Answer::text(404, "Not Found", "no broadcast channel serves this path\n").into();
    };
    let header = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("transfer-encoding").next().is_some() {
        return Answer::text(
            411,
            "Length Required",
            "send the body with Content-Length\n",
        )
        .into();
    }
    let mut lengths = header("content-length");
    let need = match (lengths.next(), lengths.next()) {
        (None, _) => {
            return Answer::text(
                411,
                "Length Required",
                "send the body with Content-Length\n",
            )
            .into();
        }
        (Some(v), None) => match std::str::from_utf8(v)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .map(str::parse::<u64>)
        {
            Some(Ok(n)) => n,
            Some(Err(_)) => u64::MAX, // more digits than a u64: over any limit
            None => return bad_request("bad Content-Length").into(),
        },
        (Some(_), Some(_)) => return bad_request("Content-Length given twice").into(),
    };
    let Some(need) = usize::try_from(need).ok().filter(|&n| n <= limit) else {
        return Answer::text(
            413,
            "Content Too Large",
            &format!("message larger than the channel's max_message_size ({limit} bytes)\n"),
        )
        .into();
    };
    let binary = header("content-type").next().is_some_and(|v| {
        let media = v.split(|&b| b == b';').next().unwrap_or_default();
        media
            .trim_ascii()
            .eq_ignore_ascii_case(b"application/octet-stream")
    });
    let expect_continue = header("expect")
        .next()
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    Routed::Body {
        publish: Publish {
            path: path.clone(),
            binary,
        },
        need,
        expect_continue,
    }
}

/// Publishes a complete body: 202 with the number of local subscribers it reached.
fn publish_now(state: &AdminState, publish: &Publish, body: Vec<u8>, peer: SocketAddr) -> Answer {
    let Some(api) = state.api.get() else {
        return Answer::text(404, "Not Found", "not found\n");
    };
    let len = body.len();
    let msg = if publish.binary {
        Message::binary(body)
    } else {
        match String::from_utf8(body) {
            Ok(text) => Message::text(text),
            Err(_) => {
                return bad_request(
                    "the body is not UTF-8 text; send binary with Content-Type: application/octet-stream",
                );
            }
        }
    };
    let reached = api.hub.inject(&publish.path, &msg);
    state.metrics.bump(Counter::AdminPublishes, 1);
    log::debug!(
        "admin publish path={} bytes={len} subscribers={reached} peer={peer}",
        publish.path
    );
    Answer::json(202, "Accepted", format!("{{\"subscribers\":{reached}}}\n"))
}

/// The open connections `filter` matches, as a JSON array (one object per line).
fn list_connections(hub: &Hub, filter: &Filter) -> String {
    let mut out = String::from("[");
    let mut first = true;
    hub.for_each_member(|path, m| {
        let Some(p) = m.profile.get() else {
            return; // still in its handshake
        };
        let user = m.holder.user.as_deref();
        if !filter.matches(user, Some(&p.session_id), path) {
            return;
        }
        let t = &m.traffic;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let since = p
            .since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        out.push_str(if first { "\n" } else { ",\n" });
        first = false;
        let _ = write!(
            out,
            "{{\"user\":{},\"auth\":\"{}\",\"path\":{},\"mode\":\"{}\",\"peer\":\"{}\",\
             \"since\":{since},\"messages_in\":{},\"bytes_in\":{},\"messages_out\":{},\
             \"bytes_out\":{},\"session\":{}}}",
            user.map_or_else(|| "null".to_string(), json_string),
            p.method,
            json_string(path),
            p.mode,
            p.peer,
            n(&t.messages_in),
            n(&t.bytes_in),
            n(&t.messages_out),
            n(&t.bytes_out),
            json_string(&p.session_id),
        );
    });
    out.push_str(if first { "]\n" } else { "\n]\n" });
    out
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
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

    fn json(status: u16, reason: &'static str, body: String) -> Answer {
        Answer {
            status,
            reason,
            content_type: "application/json",
            extra: "",
            body,
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

    fn answer(head: &[u8], st: &AdminState) -> Answer {
        match route(head, st, "127.0.0.1:1".parse().unwrap()) {
            Routed::Answer(a) => a,
            Routed::Body { .. } => panic!("wants a body"),
        }
    }

    fn status(head: &[u8], st: &AdminState) -> u16 {
        answer(head, st).status
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
        let a = answer(b"GET /healthz HTTP/1.1\r\n\r\n", &st);
        assert_eq!((a.status, a.body.as_str()), (503, "draining\n"));
    }

    #[test]
    fn queries_parse_once_per_key_decoded_and_nothing_else() {
        let f = parse_query("user=al%20ice&path=/chat/*", FILTER_KEYS).unwrap();
        assert_eq!(
            f,
            Filter {
                user: Some("al ice".into()),
                session: None,
                path: Some("/chat/*".into())
            }
        );
        assert_eq!(parse_query(&query_string(&f), FILTER_KEYS), Ok(f));
        assert_eq!(parse_query("", FILTER_KEYS), Ok(Filter::default()));
        assert_eq!(parse_query("&&", FILTER_KEYS), Ok(Filter::default()));
        for (query, why) in [
            ("user=a&user=b", "query key `user` given twice"),
            ("user=", "query key `user` is empty"),
            ("path", "query key `path` is empty"),
            ("path=%zz", "query key `path`: bad escape"),
            (
                "S3CRET",
                "unknown query key; this endpoint takes user, session, path",
            ),
        ] {
            assert_eq!(parse_query(query, FILTER_KEYS).unwrap_err(), why, "{query}");
        }
        // `;` is no separator: one value.
        assert_eq!(
            parse_query("user=a;path=/x", FILTER_KEYS)
                .unwrap()
                .user
                .as_deref(),
            Some("a;path=/x")
        );
        assert_eq!(
            parse_query("session=x", &["path"]).unwrap_err(),
            "unknown query key; this endpoint takes path"
        );
    }

    #[test]
    fn the_bearer_token_is_compared_as_a_digest() {
        let want = token_digest("0123456789abcdef");
        let check = |value: &str| {
            let headers = [httparse::Header {
                name: "Authorization",
                value: value.as_bytes(),
            }];
            bearer_matches(&headers, &want)
        };
        assert_eq!(check("Bearer 0123456789abcdef"), Ok(()));
        assert_eq!(check("bearer   0123456789abcdef  "), Ok(()));
        assert_eq!(check("Bearer 0123456789abcdeF"), Err("wrong token\n"));
        assert_eq!(
            check("Basic 0123456789abcdef"),
            Err("bearer token required\n")
        );
        assert_eq!(check("Bearer"), Err("bearer token required\n"));
        assert_eq!(bearer_matches(&[], &want), Err("bearer token required\n"));
        let two = [
            httparse::Header {
                name: "authorization",
                value: b"Bearer 0123456789abcdef",
            },
            httparse::Header {
                name: "Authorization",
                value: b"Bearer 0123456789abcdef",
            },
        ];
        assert_eq!(bearer_matches(&two, &want), Err("bearer token required\n"));
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(
            json_string("a\"b\\c\u{1}\u{7f}é"),
            "\"a\\\"b\\\\c\\u0001\\u007fé\""
        );
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
