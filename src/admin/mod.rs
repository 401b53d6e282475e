//! The admin endpoint: plain HTTP/1.1 `GET /healthz` and `GET /metrics` on its own thread and its
//! own listener, so it answers while every worker is busy, and the admin API:
//! `POST /publish`, `GET /connections`, `POST /disconnect`, behind the optional bearer token of
//! `[admin] token_file`, and closed to what a web page sends ([`browser`]: a foreign `Host`, an
//! `Origin` or `Sec-Fetch-Site` not allowed in `[admin]`). One thread serves up to
//! `[admin] max_connections` clients at once from one `poll(2)` loop on non-blocking sockets, one
//! request per connection: a client must send its first byte within [`FIRST_BYTE`] and finish
//! its exchange within [`DEADLINE`], and when all places are taken a new client evicts the
//! oldest one still waiting for its request. So silent or slow clients never delay a health
//! probe. It must never serve WebSocket traffic; bind it to a private address.
//!
//! A publish body is read only after its head passed every check (route, token, channel, size):
//! at most the channel's `max_message_size`, within the same [`DEADLINE`]. Refusals are logged
//! one line each (status, reason, peer), rate-limited; the request target and headers never are,
//! so a token sent in a query string or a header reaches no log.
//!
//! This file holds the shared state, the limits and the thread; [`serve`] is the poll loop and
//! its client slots, [`routes`] what each request means, [`browser`] what a web page may send,
//! [`answer`] the HTTP answer, [`token`] the bearer token; a connection filter as a query string
//! is [`crate::hub::query`].

mod answer;
mod browser;
mod routes;
mod serve;
mod token;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use self::browser::BrowserGuard;
pub use self::token::{TokenFileError, read_token, token_digest};
pub use crate::hub::Filter;
use crate::hub::Hub;
pub use crate::hub::query::{FILTER_KEYS, parse_query, query_string};
use crate::hub::waker::Waker;
use crate::ops::metrics::{Gauges, Metrics};
use crate::pipeline::ratelimit::TokenBucket;

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

/// What the broadcast channel serving a path takes and keeps (see [`Api::broadcast_limit`]).
pub type BroadcastLimit = dyn Fn(&str) -> Option<BroadcastChannel> + Send + Sync;

/// What the admin API's publish needs of the broadcast channel serving a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastChannel {
    /// Its `max_message_size`.
    pub max_message: usize,
    /// What it keeps of its broadcasts (`history_size`, `history_ttl`).
    pub history: Option<crate::config::Retention>,
}

/// What the admin API acts on: the hub, the current channels, the bearer token.
pub struct Api {
    pub hub: Arc<Hub>,
    /// The `max_message_size` and history of the broadcast channel serving a path under the
    /// current config; `None` when no broadcast channel serves it (no channel, an echo channel,
    /// a path an upgrade would refuse).
    pub broadcast_limit: Box<BroadcastLimit>,
    /// SHA-256 of `[admin] token_file`'s token; `None`: no token asked for (loopback only).
    pub token: Option<[u8; 32]>,
    /// What a web browser may send the API (`Host`, `Origin`, `Sec-Fetch-Site`).
    pub browser: BrowserGuard,
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
            if let Err(e) = serve::run(&listener, &state, max_connections.get()) {
                log::error!("admin endpoint stopped: {e}");
            }
        })
}
