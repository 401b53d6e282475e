//! The configuration: the INI file parsed once into typed, validated values.
//! Owns every default, every unit, every cross-field rule; nothing downstream re-checks a value
//! or reads the INI again. A reload builds a whole new `Config` and swaps it in.

pub(crate) mod suggest;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::policy::acl::{
    ANONYMOUS_ROLE, ChannelPattern, Members, PathPattern, Role, USER_PLACEHOLDER, check_path,
};
use crate::policy::origin::{OriginPattern, OriginPolicy};

/// Everything the server needs to run, as typed values. Built only by [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (error messages and relative paths use it).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub origins: OriginPolicy,
    pub auth: AuthConfig,
    pub limits: Limits,
    /// In file order; the first channel whose pattern matches a path serves it
    /// (exact paths are tried before prefix patterns).
    pub channels: Vec<ChannelConfig>,
    /// `[role:NAME]` sections in file order: who may subscribe and publish where. Access is denied
    /// unless a role grants it (see [`crate::policy::acl`]).
    pub roles: Vec<Role>,
    /// `[admin]`: the admin endpoint, `None` when `listen` is not set.
    pub admin: Option<AdminConfig>,
    /// `[cluster]`: the Redis backbone between instances (inactive without `redis_url`).
    pub cluster: ClusterConfig,
    /// `[demo]`: the built-in demo page at `GET /` (off by default).
    pub demo: DemoConfig,
    pub log_level: log::LevelFilter,
}

/// `[server]`: the listener, the worker pool and its admission bounds.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `listen`, default `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// `workers`: threads, each serving one connection for its whole life. Default 1024: an idle
    /// connection costs its base (~36 KiB), and what grows with traffic is bounded by
    /// `memory_limit`, not by the product of per-connection maxima.
    pub workers: NonZeroUsize,
    /// `queue`: accepted connections that may wait for a free worker. Default 16.
    pub queue: usize,
    /// `max_connections_per_ip`: concurrent connections (waiting or served) from one address. Default 16.
    pub max_connections_per_ip: NonZeroUsize,
    /// `worker_stack_size` in bytes: the stack of the connection loop. Default 256 KiB.
    pub worker_stack_size: NonZeroUsize,
    /// `handshake_stack_size` in bytes: the stack of the handshake threads, which run each
    /// connection's PROXY header, TLS handshake and upgrade. Default 192 KiB.
    pub handshake_stack_size: NonZeroUsize,
    /// `shutdown_grace`: how long SIGTERM waits for connections to finish closing. Default 5 s.
    pub shutdown_grace: Duration,
    /// `max_pre_auth`: connections that may be in the TLS handshake or the HTTP upgrade at once.
    /// Smaller than the pool, so clients that stall before authenticating cannot hold every
    /// worker. Default: half of `workers`, rounded up; never more than `workers`.
    pub max_pre_auth: NonZeroUsize,
    /// `proxy_protocol`: every connection starts with a PROXY protocol (v1 or v2) header from a
    /// load balancer, whose client address then stands for the peer everywhere. Default false.
    pub proxy_protocol: bool,
    /// `drain_delay`: after SIGTERM, how long to keep accepting while `/healthz` answers 503, so
    /// a load balancer's health check takes the instance out first. Default 0 s.
    pub drain_delay: Duration,
    /// `tls`: serve `wss://` (true) or plain `ws://` for a TLS-terminating proxy in front (false).
    /// Default true. Off on a non-loopback `listen` address needs `allow_plaintext`.
    pub tls: bool,
    /// `allow_plaintext`: lets `tls = off` listen on a non-loopback address. Default false, so
    /// plaintext credentials never cross a network unless the admin wrote so.
    pub allow_plaintext: bool,
    /// `memory_limit`: the cap on the bytes that grow with traffic, process-wide
    /// ([`crate::memory`]). Default: derived from the host at start.
    pub memory_limit: MemoryLimit,
}

/// `[server] memory_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    /// Not set: a fraction of the cgroup limit or `MemTotal`, with a floor
    /// ([`crate::memory::default_cap`]), read when the server starts.
    Host,
    /// `0`: no cap; nothing is counted.
    Off,
    /// A size in bytes.
    Bytes(NonZeroUsize),
}

/// `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// `cert`: PEM certificate chain, leaf first. Relative paths are relative to the config file.
    pub cert: PathBuf,
    /// `key`: PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `self_signed`: generate a self-signed cert/key at `cert`/`key` if both are missing. Default false.
    pub self_signed: bool,
    /// `handshake_timeout`: deadline for the whole TLS handshake, from accept. Default 10 s.
    pub handshake_timeout: Duration,
    /// `client_auth`: whether clients present a certificate. Default `off`.
    pub client_auth: ClientAuth,
    /// `client_ca`: PEM file of the CAs that sign client certificates. `Some` (and an existing
    /// file) exactly when `client_auth` is not `off`; setting it with `client_auth = off` is an
    /// error, so a half-done mTLS set-up is not mistaken for a working one.
    pub client_ca: Option<PathBuf>,
    /// `reload_check_interval`: how often the server compares the cert/key and users/tokens
    /// files' stamps and reloads when one changed. Default 60 s; zero turns the check off.
    pub reload_check_interval: Duration,
}

/// `[tls] client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates are asked for.
    Off,
    /// A client may present a certificate signed by `client_ca`; one that does not still connects.
    Optional,
    /// Every client must present a certificate signed by `client_ca`, or the handshake fails.
    Required,
}

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `users_file`: `name:argon2id-PHC` lines. Relative to the config file.
    pub users_file: PathBuf,
    /// `cache_size`: successful verifications remembered (0 turns the cache off). Default 1024.
    pub cache_size: usize,
    /// `cache_ttl`: how long a remembered verification is trusted. Default 10 min.
    pub cache_ttl: Duration,
    /// `max_concurrent_hashes`: Argon2 runs at once (each takes ~19 MiB). Default 2.
    pub max_concurrent_hashes: NonZeroUsize,
    /// `tokens_file`: API tokens (`wsgate token add` creates it). Relative to the config file.
    /// May be missing, meaning no tokens; if it exists it must be a regular file.
    /// Default `tokens` next to the config.
    pub tokens_file: PathBuf,
    /// `session_key_file`: the key that signs session cookies, created by the server at first
    /// start. May be missing; if it exists it must be a regular file. Default `session.key`.
    pub session_key_file: PathBuf,
    /// `session_ttl`: how long a session stays valid. Zero turns sessions off. Default 12 h.
    pub session_ttl: Duration,
    /// `session_max_age`: how long a session may be renewed, counted from the login that
    /// started it; no renewal extends it. Greater than zero, at least `session_ttl`. Default 7 d.
    pub session_max_age: Duration,
    /// `file_settle_time`: a reload reads the users and tokens files only once they have not
    /// changed for this long (a file caught mid-write is waited for). Zero: no wait. Default
    /// 200 ms.
    pub file_settle_time: Duration,
    /// `trusted_address_ttl`: how long an address where a user logged in successfully stays
    /// exempt from that user's failed-login block (not from its own). Zero turns the exemption
    /// off. Default 24 h.
    pub trusted_address_ttl: Duration,
    /// `max_failures`: failed logins allowed per peer IP and per user name within
    /// `failure_window` before further attempts get 429. Zero turns the throttle off. Default 5.
    pub max_failures: u32,
    /// `failure_window`: how long a failed login counts. Greater than zero. Default 5 min.
    pub failure_window: Duration,
    /// `max_pending_hashes`: password logins that may wait for an Argon2 permit; beyond that new
    /// password logins get 503 at once, so a password flood cannot hold every worker.
    /// Zero: no waiting. Default 32.
    pub max_pending_hashes: usize,
}

/// `[admin]`: the admin endpoint. Present only when `listen` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// `listen`: the admin endpoint's address; never the same as `[server] listen`.
    pub listen: SocketAddr,
    /// `max_connections`: admin clients served at once (default 32); one more evicts the
    /// oldest still sending its request.
    pub max_connections: NonZeroUsize,
    /// `token_file`: the bearer token the admin API's `/publish`, `/connections` and
    /// `/disconnect` require (`Authorization: Bearer TOKEN`). Relative to the config file.
    /// Required when `listen` is not a loopback address; `None`: no token (loopback only).
    pub token_file: Option<PathBuf>,
}

/// `[cluster]`: the broadcast backbone shared by several instances through a capped Redis Stream.
/// All of it is bound at start (a reload reports a change as needing a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis_url`: `redis://` or `rediss://` (TLS), optionally with a user and password. `None`
    /// (the default): a purely local hub, no Redis.
    pub redis_url: Option<RedisUrl>,
    /// `instance_id`: this instance's name on the backbone; messages carrying it are its own and
    /// are not delivered twice. Default: the host name, `-`, the process id.
    pub instance_id: String,
    /// `channel_prefix`: names the Redis key of the backbone's stream (`<prefix>broadcasts`).
    /// Default `wsgate:`.
    pub channel_prefix: String,
    /// `publish_queue`: broadcasts waiting to be published to Redis, also while it is
    /// unreachable; when full, the oldest is dropped (counted). Default 1024.
    pub publish_queue: NonZeroUsize,
    /// `max_backoff`: the cap of the reconnect delay, which starts at 100 ms and doubles. Default
    /// 5 s.
    pub max_backoff: Duration,
    /// `health_check`: how long an idle publisher link goes without an answer from Redis before
    /// it sends `PING`. Default 1 s.
    pub health_check: Duration,
    /// `health_timeout`: how long any Redis call (connect, `PING`, a pipeline, a read beyond
    /// its block time) may take before the link is declared down. Default 2 s.
    pub health_timeout: Duration,
    /// `stream_length`: about how many broadcasts the stream keeps (`XADD MAXLEN ~`), which is
    /// how far behind a reconnecting instance may fall and still lose nothing. Default 10000.
    pub stream_length: NonZeroUsize,
}

/// `[demo]`: the built-in demo page (see [`crate::pipeline::demo`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoConfig {
    /// `enabled`: `GET /` without an `Upgrade` header answers with the demo page. Default false.
    pub enabled: bool,
    /// `channel`: the path the page joins. When `enabled`, a broadcast channel must serve it
    /// (checked at load). Only `A-Z a-z 0-9 / _ . ~ -`, so it can be written into the page as
    /// it is. Default `/chat/demo`.
    pub channel: String,
}

/// A Redis URL that never shows its password: `Display` and `Debug` print it as `***`, so the
/// URL can be logged. [`RedisUrl::secret`] is the full URL, for connecting only.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    full: String,
    redacted: String,
}

impl RedisUrl {
    /// Checks `value` is a `redis://` or `rediss://` URL the redis crate accepts.
    ///
    /// # Errors
    /// What is wrong, in words that never repeat the value (it may hold a password).
    pub fn parse(value: &str) -> Result<RedisUrl, String> {
        const FORM: &str = "redis://[USER:PASSWORD@]HOST[:PORT][/DB] or rediss://… for TLS";
        let scheme = value.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("redis" | "rediss")) {
            return Err(format!("expected {FORM}"));
        }
        let Some(mut url) = redis::parse_redis_url(value) else {
            return Err(format!("not a valid URL; expected {FORM}"));
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("no host; expected {FORM}"));
        }
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(value) {
            // The crate's descriptions are fixed texts ("Invalid database number"), never the URL.
            let text = e.to_string();
            let why = text.split(" - ").next().unwrap_or(&text).to_lowercase();
            return Err(format!("{why}; expected {FORM}"));
        }
        if url.password().is_some() {
            // Cannot fail: the URL has a host, so it can have a password.
            let _ = url.set_password(Some("***"));
        }
        Ok(RedisUrl {
            full: value.to_string(),
            redacted: url.to_string(),
        })
    }

    /// The URL with its password, for connecting. Never log this.
    pub fn secret(&self) -> &str {
        &self.full
    }

    /// True for `rediss://` (TLS to Redis).
    pub fn is_tls(&self) -> bool {
        self.full.starts_with("rediss://")
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted)
    }
}

/// `[limits]`: deadlines and per-connection bounds; channels may override the `ws` part.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `upgrade_timeout`: deadline for reading the HTTP upgrade request after TLS. Default 10 s.
    pub upgrade_timeout: Duration,
    /// `max_request_head`: bytes of request line + headers. Default 8 KiB.
    pub max_request_head: NonZeroUsize,
    /// `max_headers`: header lines in the upgrade request. Default 32.
    pub max_headers: NonZeroUsize,
    /// `ping_interval`: the server pings a connection silent this long. Default 30 s.
    pub ping_interval: Duration,
    /// `idle_timeout`: a connection silent this long (pings unanswered) is closed. Default 75 s.
    /// Always greater than `ping_interval`.
    pub idle_timeout: Duration,
    /// `write_timeout`: a connection that cannot flush anything for this long is dropped. Default 30 s.
    pub write_timeout: Duration,
    /// `max_fragments`: frames one message may be split into before the sender is closed with
    /// 1008. Default 64.
    pub max_fragments: NonZeroUsize,
    /// `message_timeout`: how long a fragmented message may take to complete before the sender
    /// is closed with 1008. Default 30 s.
    pub message_timeout: Duration,
    pub ws: WsLimits,
}

/// Per-connection WebSocket bounds; `[limits]` gives the defaults, `[channel:…]` may override each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsLimits {
    /// `max_message_size`, default 64 KiB.
    pub max_message_size: NonZeroUsize,
    /// `max_frame_size`, default 64 KiB; never more than `max_message_size`.
    pub max_frame_size: NonZeroUsize,
    /// `read_buffer_size`, default 4 KiB.
    pub read_buffer_size: NonZeroUsize,
    /// `write_buffer_size`, default 8 KiB (0 allowed: write each frame at once).
    pub write_buffer_size: usize,
    /// `max_write_buffer_size`, default 128 KiB; at least `write_buffer_size + max_message_size + 14`
    /// (one whole frame must fit after a full write buffer).
    pub max_write_buffer_size: NonZeroUsize,
    /// `outbox`: messages queued for one subscriber before it counts as slow. Default 64.
    pub outbox: NonZeroUsize,
    /// `slow_consumer`: what happens when the outbox is full. Default `disconnect`.
    pub slow_consumer: SlowConsumer,
    /// `max_messages_per_sec`: messages one connection may send per second (a token bucket of
    /// one second's worth). Default 1000; zero means unlimited.
    pub max_messages_per_sec: u32,
    /// `max_bytes_per_sec`: message bytes one connection may send per second (a token bucket of
    /// one second's worth). Default 4 MiB; zero means unlimited. Otherwise at least
    /// `max_message_size`, or the largest allowed message could never pass.
    pub max_bytes_per_sec: usize,
    /// `on_rate_limit`: what happens to a message over either rate: `close` (with 1008, the
    /// default) or `drop` (dropped and counted).
    pub on_rate_limit: Overflow,
}

/// What happens to a client message that is over a limit or not allowed
/// (`on_rate_limit`, `on_forbidden`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Close the connection with 1008 and a reason.
    Close,
    /// Drop the message, count it, keep the connection.
    Drop,
}

impl Overflow {
    /// The config spelling: `close` or `drop`.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Close => "close",
            Overflow::Drop => "drop",
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a subscriber whose outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Close it with 1008 `slow consumer`: it knows it lost messages and can reconnect.
    Disconnect,
    /// Drop the message for that subscriber only, and count it.
    Drop,
}

/// `[channel:PATH]`.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub pattern: ChannelPattern,
    pub mode: Mode,
    pub limits: WsLimits,
    /// `anonymous`: clients without credentials may connect, with the rights of the role named
    /// `anonymous` (none if there is no such role). Default false.
    pub anonymous: bool,
    /// `on_forbidden`: what happens when a connected client without publish rights sends a
    /// message: `close` (1008 "publish not allowed", the default) or `drop` (dropped and counted).
    pub on_forbidden: Overflow,
    /// `backend` and its settings: `Some` exactly when `mode = proxy`.
    pub backend: Option<Backend>,
    /// The section header's line in the config file (`None` if built in code).
    pub line: Option<usize>,
}

/// Where a `mode = proxy` channel's connections go: the backend WebSocket the worker opens for
/// each client it lets in (`backend`, `backend_ca`, `backend_connect_timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub endpoint: Endpoint,
    /// The path of the `backend` URL (`/` when it has none); the part of the client's path after
    /// the channel prefix is appended to it.
    pub base_path: String,
    /// `backend_ca`: PEM file of the CAs a `wss://` backend's certificate must chain to. `None`:
    /// the system's root certificates.
    pub ca: Option<PathBuf>,
    /// `backend_connect_timeout`, default 5 s: TCP connect, TLS and the backend's 101, together.
    pub connect_timeout: Duration,
}

/// The transport of a [`Backend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `ws://HOST:PORT` (`tls` false, default port 80) or `wss://HOST:PORT` (default port 443).
    /// A host name is resolved at each connect.
    Tcp { host: String, port: u16, tls: bool },
    /// `unix:/ABSOLUTE/PATH`: a Unix domain socket (no TLS).
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    /// As the `backend` URL spells it, without the path: `ws://127.0.0.1:8080`, `unix:/run/app.sock`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port, tls } => {
                let scheme = if *tls { "wss" } else { "ws" };
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]:{port}")
                } else {
                    write!(f, "{scheme}://{host}:{port}")
                }
            }
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `mode` of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each message goes back to its sender.
    Echo,
    /// Each message goes to every other connection on the same path.
    Broadcast,
    /// Each connection is relayed to its own connection to the channel's `backend`.
    Proxy,
}

impl fmt::Display for Mode {
    /// The config spelling: `echo` or `broadcast`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Echo => "echo",
            Mode::Broadcast => "broadcast",
            Mode::Proxy => "proxy",
        })
    }
}

/// Why a configuration could not be used. `Display` names the file, line (where there is one)
/// and key, so an admin can go straight to the mistake.
#[derive(Debug)]
pub enum ConfigError {
    /// The config file itself could not be read.
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The INI syntax is broken.
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// A section or key is wrong: unknown, repeated, bad value, missing file, cross-field rule.
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        section: String,
        key: Option<String>,
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates `path`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming file, line and key for the first problem found.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text` as if it had been read from `source`: relative paths resolve
    /// against `source`'s directory, and the files named (`[tls] cert`/`key` unless
    /// `self_signed`, `[auth] users_file`) must exist there. [`Config::load`] is this after
    /// reading the file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming file, line and key for the first problem found.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        let credentials = std::env::var_os(CREDENTIALS_ENV).map(PathBuf::from);
        parse_config(text, source, credentials.as_deref())
    }

    /// The channel serving `path`, if any (exact first, then the longest prefix).
    pub fn channel_for(&self, path: &str) -> Option<&ChannelConfig> {
        find_channel(&self.channels, path)
    }
}

/// The channel of `channels` serving `path`: an exact path first, else the longest matching
/// prefix pattern.
fn find_channel<'c>(channels: &'c [ChannelConfig], path: &str) -> Option<&'c ChannelConfig> {
    channels
        .iter()
        .find(|c| matches!(&c.pattern, ChannelPattern::Exact(p) if p == path))
        .or_else(|| {
            channels
                .iter()
                .filter(|c| match &c.pattern {
                    ChannelPattern::Prefix(p) => {
                        path.len() > p.len() && path.starts_with(p.as_str())
                    }
                    ChannelPattern::Exact(_) => false,
                })
                .max_by_key(|c| match &c.pattern {
                    ChannelPattern::Prefix(p) => p.len(),
                    ChannelPattern::Exact(p) => p.len(),
                })
        })
}

impl WsLimits {
    /// The tungstenite configuration these limits give.
    pub fn websocket_config(&self) -> tungstenite::protocol::WebSocketConfig {
        tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size.get())
            .write_buffer_size(self.write_buffer_size)
            .max_write_buffer_size(self.max_write_buffer_size.get())
            .max_message_size(Some(self.max_message_size.get()))
            .max_frame_size(Some(self.max_frame_size.get()))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => {
                write!(
                    f,
                    "config: {}: cannot read the file: {error}",
                    path.display()
                )
            }
            ConfigError::Syntax {
                path,
                line,
                message,
            } => {
                write!(f, "config: {}", path.display())?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                }
                write!(f, ": {message}")
            }
            ConfigError::Invalid {
                path,
                line,
                section,
                key,
                message,
            } => {
                write!(f, "config: {}", path.display())?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                }
                f.write_str(": ")?;
                match (section.is_empty(), key) {
                    (false, Some(key)) => write!(f, "[{section}] {key}: ")?,
                    (false, None) => write!(f, "[{section}]: ")?,
                    (true, Some(key)) => write!(f, "{key}: ")?,
                    (true, None) => {}
                }
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Defaults.

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;

/// Largest size any key accepts; keeps typos (`64G`) and the `+ 14` arithmetic sane.
const MAX_SIZE: usize = GIB;
/// Longest duration any key accepts; keeps `Instant + Duration` far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Smallest `worker_stack_size`. The connection loop (tungstenite, rustls records) touches about
/// 20 KiB of stack in a release build (48 KiB in a debug build), thread start included, and a
/// panic's message and backtrace about 30 KiB more (measured with 60000-byte echoes and
/// broadcasts; `scripts/smaps-summary.py` shows each stack's resident pages).
const MIN_WORKER_STACK: usize = 64 * KIB;
/// Smallest `handshake_stack_size`. The handshake (rustls with an ECDSA key, Argon2, the HTTP
/// head, tungstenite's accept) overflows 64 KiB in a release build and 112 KiB in a debug build
/// (it fits in 72 KiB and 120 KiB); a panic needs about 30 KiB more.
const MIN_HANDSHAKE_STACK: usize = 128 * KIB;
/// Default `worker_stack_size`. Only the touched pages (about 20 KiB) are resident; the rest is
/// address space.
const DEFAULT_WORKER_STACK: usize = 256 * KIB;
/// Default `handshake_stack_size`: 1.6 times what a debug build's handshake needs (120 KiB),
/// 2.7 times a release build's (72 KiB).
const DEFAULT_HANDSHAKE_STACK: usize = 192 * KIB;
/// The largest WebSocket frame header: what must fit beside a full write buffer and a message.
const FRAME_HEADER_MAX: usize = 14;

const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
const DEFAULT_CERT: &str = "wsgate.crt";
const DEFAULT_KEY: &str = "wsgate.key";
const DEFAULT_USERS: &str = "users";
const DEFAULT_TOKENS: &str = "tokens";
const DEFAULT_SESSION_KEY: &str = "session.key";
const DEFAULT_CHANNEL_PREFIX: &str = "wsgate:";
const DEFAULT_DEMO_CHANNEL: &str = "/chat/demo";
const DEFAULT_PUBLISH_QUEUE: usize = 1024;
/// `[admin] max_connections` when unset (see [`crate::ops::admin::DEFAULT_MAX_CONNECTIONS`]).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 32;
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
const DEFAULT_HEALTH_CHECK: Duration = Duration::from_secs(1);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_STREAM_LENGTH: usize = 10_000;
/// The shortest `health_check` and `health_timeout`: below it a loaded Redis would look dead.
const MIN_HEALTH: Duration = Duration::from_millis(100);
/// The first reconnect delay; `max_backoff` may not be below it.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest `instance_id`: it travels in a one-byte length field of every message.
const MAX_INSTANCE_ID: usize = 255;
/// Longest `channel_prefix`.
const MAX_CHANNEL_PREFIX: usize = 128;

/// A path value starting with this names a file in systemd's credentials directory
/// (`key = credential:wsgate.key` is `$CREDENTIALS_DIRECTORY/wsgate.key`).
const CREDENTIAL_PREFIX: &str = "credential:";
/// The environment variable systemd sets to the service's credentials directory.
const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";

/// Keys each fixed section accepts; `[channel:…]` accepts `CHANNEL_KEYS`.
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "listen",
            "workers",
            "queue",
            "max_connections_per_ip",
            "worker_stack_size",
            "handshake_stack_size",
            "shutdown_grace",
            "max_pre_auth",
            "proxy_protocol",
            "drain_delay",
            "tls",
            "allow_plaintext",
            "memory_limit",
        ],
    ),
    (
        "tls",
        &[
            "cert",
            "key",
            "self_signed",
            "handshake_timeout",
            "client_auth",
            "client_ca",
            "reload_check_interval",
        ],
    ),
    (
        "origins",
        &["allow", "allow_missing", "allow_any", "allow_same_origin"],
    ),
    (
        "auth",
        &[
            "users_file",
            "cache_size",
            "cache_ttl",
            "max_concurrent_hashes",
            "tokens_file",
            "session_key_file",
            "session_ttl",
            "session_max_age",
            "max_failures",
            "trusted_address_ttl",
            "file_settle_time",
            "failure_window",
            "max_pending_hashes",
        ],
    ),
    (
        "limits",
        &[
            "upgrade_timeout",
            "max_request_head",
            "max_headers",
            "ping_interval",
            "idle_timeout",
            "write_timeout",
            "max_fragments",
            "message_timeout",
            "max_message_size",
            "max_frame_size",
            "read_buffer_size",
            "write_buffer_size",
            "max_write_buffer_size",
            "outbox",
            "slow_consumer",
            "max_messages_per_sec",
            "max_bytes_per_sec",
            "on_rate_limit",
        ],
    ),
    ("log", &["level"]),
    ("admin", &["listen", "max_connections", "token_file"]),
    ("demo", &["enabled", "channel"]),
    (
        "cluster",
        &[
            "redis_url",
            "instance_id",
            "channel_prefix",
            "publish_queue",
            "max_backoff",
            "health_check",
            "health_timeout",
            "stream_length",
        ],
    ),
];

const CHANNEL_PREFIX: &str = "channel:";
const CHANNEL_KEYS: &[&str] = &[
    "mode",
    "max_message_size",
    "max_frame_size",
    "read_buffer_size",
    "write_buffer_size",
    "max_write_buffer_size",
    "outbox",
    "slow_consumer",
    "max_messages_per_sec",
    "max_bytes_per_sec",
    "on_rate_limit",
    "anonymous",
    "on_forbidden",
    "backend",
    "backend_ca",
    "backend_connect_timeout",
];

const ROLE_PREFIX: &str = "role:";
const ROLE_KEYS: &[&str] = &["members", "subscribe", "publish"];
const MAX_ROLE_NAME: usize = 64;

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

fn default_ws_limits() -> WsLimits {
    WsLimits {
        max_message_size: nz(64 * KIB),
        max_frame_size: nz(64 * KIB),
        read_buffer_size: nz(4 * KIB),
        write_buffer_size: 8 * KIB,
        max_write_buffer_size: nz(128 * KIB),
        outbox: nz(64),
        slow_consumer: SlowConsumer::Disconnect,
        max_messages_per_sec: 1000,
        max_bytes_per_sec: 4 * MIB,
        on_rate_limit: Overflow::Close,
    }
}

// ---------------------------------------------------------------------------------------------
// The scanner: the one parse of the file. It splits lines into sections and keys with their
// values and line numbers, and rejects what an INI reader would silently accept or misread (keys
// outside sections, repeated sections and keys, unterminated headers, line continuations, lines
// that are neither). Quotes and escapes are not interpreted, so `C:\certs\a.pem` and `"` survive
// as written; `#` and `;` start a comment only at the start of a line.

/// A key as found by the scan.
struct ScannedKey {
    key: String,
    /// Trimmed of surrounding whitespace, otherwise as written.
    value: String,
    line: usize,
}

/// A section as found by the scan, keys in file order.
struct ScannedSection {
    name: String,
    line: usize,
    keys: Vec<ScannedKey>,
}

/// Scans `text` into its sections, keys and values (see above for the rules).
fn scan(text: &str, source: &Path) -> Result<Vec<ScannedSection>, ConfigError> {
    let syntax = |line: usize, message: String| ConfigError::Syntax {
        path: source.to_path_buf(),
        line: Some(line),
        message,
    };
    let invalid =
        |line: usize, section: &str, key: Option<&str>, message: String| ConfigError::Invalid {
            path: source.to_path_buf(),
            line: Some(line),
            section: section.to_string(),
            key: key.map(str::to_string),
            message,
        };

    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut sections: Vec<ScannedSection> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if let Some(c) = raw.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(syntax(line, format!("control character {c:?} in the line")));
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(syntax(
                    line,
                    "section header must end with `]` (comments go on their own line)".into(),
                ));
            };
            if name.contains(['[', ']']) {
                return Err(syntax(line, "section header has a stray `[` or `]`".into()));
            }
            // rust-ini, the reader before this one, took `\]` for a `]` inside the name and read
            // on into the next lines; such a file never loaded, and must not now.
            if name.ends_with('\\') {
                return Err(syntax(
                    line,
                    "section header must not end with `\\]`".into(),
                ));
            }
            let name = name.trim();
            if name.is_empty() {
                return Err(syntax(line, "empty section name `[]`".into()));
            }
            if let Some(first) = sections.iter().find(|s| s.name == name) {
                return Err(invalid(
                    line,
                    name,
                    None,
                    format!(
                        "repeated section (first on line {}); merge the two",
                        first.line
                    ),
                ));
            }
            sections.push(ScannedSection {
                name: name.to_string(),
                line,
                keys: Vec::new(),
            });
        } else {
            let Some(split) = trimmed.find(['=', ':']) else {
                return Err(syntax(
                    line,
                    "expected `key = value`, a `[section]` header or a `#` comment".into(),
                ));
            };
            let key = trimmed[..split].trim();
            if key.is_empty() {
                return Err(syntax(line, "missing key before `=`".into()));
            }
            let value = trimmed[split + 1..].trim();
            if value.ends_with('\\') {
                return Err(invalid(
                    line,
                    sections.last().map_or("", |s| s.name.as_str()),
                    Some(key),
                    "a value must not end with `\\` (it would continue on the next line)".into(),
                ));
            }
            let Some(section) = sections.last_mut() else {
                return Err(invalid(
                    line,
                    "",
                    Some(key),
                    "key outside any section; put it under a `[section]` header".into(),
                ));
            };
            if let Some(first) = section.keys.iter().find(|k| k.key == key) {
                return Err(invalid(
                    line,
                    &section.name,
                    Some(key),
                    format!("repeated key (first set on line {}); keep one", first.line),
                ));
            }
            section.keys.push(ScannedKey {
                key: key.to_string(),
                value: value.to_string(),
                line,
            });
        }
    }
    Ok(sections)
}

// ---------------------------------------------------------------------------------------------
// Typed access to one section.

/// One section's keys and values, with what is needed to report errors.
#[derive(Clone)]
struct Section<'a> {
    source: &'a Path,
    name: &'a str,
    /// The header's line; `None` for a section absent from the file.
    line: Option<usize>,
    /// key → (value, line), in the order found.
    values: HashMap<&'a str, (&'a str, usize)>,
}

impl<'a> Section<'a> {
    fn absent(source: &'a Path, name: &'a str) -> Self {
        Section {
            source,
            name,
            line: None,
            values: HashMap::new(),
        }
    }

    /// An error about `key` (at its line if set here, else at the header).
    fn invalid(&self, key: Option<&str>, message: impl Into<String>) -> ConfigError {
        let line = key
            .and_then(|k| self.values.get(k))
            .map(|&(_, line)| line)
            .or(self.line);
        ConfigError::Invalid {
            path: self.source.to_path_buf(),
            line,
            section: self.name.to_string(),
            key: key.map(str::to_string),
            message: message.into(),
        }
    }

    fn is_set(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// `key` parsed by `parse`, or `default` when absent.
    fn get<T>(
        &self,
        key: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.values.get(key) {
            None => Ok(default),
            Some(&(value, _)) => parse(value).map_err(|m| self.invalid(Some(key), m)),
        }
    }

    fn duration(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.get(key, default, parse_duration)
    }

    /// A duration that must not be zero.
    fn positive_duration(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.get(key, default, |v| match parse_duration(v)? {
            d if d.is_zero() => Err("must be greater than 0".into()),
            d => Ok(d),
        })
    }

    fn size(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        self.get(key, default, parse_size)
    }

    fn nonzero_size(&self, key: &str, default: NonZeroUsize) -> Result<NonZeroUsize, ConfigError> {
        self.get(key, default, |v| {
            NonZeroUsize::new(parse_size(v)?).ok_or_else(|| "must be greater than 0".into())
        })
    }

    /// A thread's stack size: at least `min` bytes.
    fn stack_size(
        &self,
        key: &str,
        default: usize,
        min: usize,
    ) -> Result<NonZeroUsize, ConfigError> {
        self.get(key, nz(default), |v| {
            let size = NonZeroUsize::new(parse_size(v)?).ok_or("must be greater than 0")?;
            if size.get() < min {
                return Err(format!(
                    "{size} bytes is too small; at least {}KiB",
                    min / KIB
                ));
            }
            Ok(size)
        })
    }

    fn count(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        self.get(key, default, parse_count)
    }

    fn nonzero_count(&self, key: &str, default: NonZeroUsize) -> Result<NonZeroUsize, ConfigError> {
        self.get(key, default, |v| {
            NonZeroUsize::new(parse_count(v)?).ok_or_else(|| "must be at least 1".into())
        })
    }

    /// A whole number that fits in a `u32`.
    fn count_u32(&self, key: &str, default: u32) -> Result<u32, ConfigError> {
        self.get(key, default, |v| {
            u32::try_from(parse_count(v)?)
                .map_err(|_| format!("`{v}` is too large; at most {}", u32::MAX))
        })
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        self.get(key, default, parse_bool)
    }

    /// A path, resolved by [`resolve_path`] (against the config file's directory, or the
    /// credentials directory for `credential:NAME`).
    fn path(&self, key: &str, default: &str, base: &Bases<'_>) -> Result<PathBuf, ConfigError> {
        let value = self.values.get(key).map_or(default, |&(value, _)| value);
        resolve_path(value, base).map_err(|m| self.invalid(Some(key), m))
    }

    /// Fails unless `path` (the value of `key`) is an existing regular file.
    fn require_file(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(_) => {
                Err(self.invalid(Some(key), format!("not a regular file: {}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(self.invalid(Some(key), format!("file not found: {}", path.display())))
            }
            Err(e) => Err(self.invalid(
                Some(key),
                format!(
                    "cannot access {}: {}",
                    path.display(),
                    e.to_string().to_lowercase()
                ),
            )),
        }
    }

    /// Fails if `path` (the value of `key`) exists and is not a regular file; a missing file is
    /// fine (the server creates it, or it is optional).
    fn allow_missing_file(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            _ => self.require_file(key, path),
        }
    }

    /// `name = value` for messages, noting where an inherited value came from.
    fn describe(&self, key: &str, value: impl fmt::Display) -> String {
        if self.name.starts_with(CHANNEL_PREFIX) && !self.is_set(key) {
            format!("{key} ({value}, inherited from [limits])")
        } else {
            format!("{key} ({value})")
        }
    }

    /// The first of `keys` set in this section (the line to point at for a cross-field rule).
    fn first_set(&self, keys: &[&'static str]) -> Option<&'static str> {
        keys.iter().copied().find(|k| self.is_set(k))
    }
}

// ---------------------------------------------------------------------------------------------
// Value parsers: each returns a lower-case message saying what was expected.

/// What relative path values are resolved against.
struct Bases<'a> {
    /// The config file's directory.
    dir: &'a Path,
    /// `$CREDENTIALS_DIRECTORY`, if set (systemd sets it for services with `LoadCredential=`).
    credentials: Option<&'a Path>,
}

/// Resolves a path value: `credential:NAME` is NAME in the credentials directory (an error
/// without one), an absolute path stays, and a relative one is relative to the config file.
fn resolve_path(value: &str, base: &Bases<'_>) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("empty path".into());
    }
    let joined = match value.strip_prefix(CREDENTIAL_PREFIX) {
        Some(name) => {
            if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                return Err(format!(
                    "`{value}`: a credential is named by a file name (`credential:wsgate.key`), \
                     without `/`"
                ));
            }
            match base.credentials.filter(|d| !d.as_os_str().is_empty()) {
                Some(dir) => dir.join(name),
                None => {
                    return Err(format!(
                        "credential: paths need ${CREDENTIALS_ENV}, which systemd sets for \
                         LoadCredential= (to run wsgate by hand, set it to the directory \
                         holding the credential files)"
                    ));
                }
            }
        }
        None => base.dir.join(value),
    };
    Ok(std::path::absolute(&joined).unwrap_or(joined))
}

/// Splits `123unit` into the number and the (trimmed, lower-cased) unit.
fn number_and_unit(value: &str, what: &str) -> Result<(u64, String), String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("empty value; expected {what}"));
    }
    if value.starts_with('-') {
        return Err(format!("must not be negative; expected {what}"));
    }
    let end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let digits = &value[..end];
    if digits.is_empty() {
        return Err(format!("`{value}` is not a number; expected {what}"));
    }
    let n = digits
        .parse::<u64>()
        .map_err(|_| format!("`{value}` is too large"))?;
    Ok((n, value[end..].trim().to_ascii_lowercase()))
}

const DURATION_FORMS: &str = "a duration such as 500ms, 10s, 5m or 1h (a bare number is seconds)";

fn parse_duration(value: &str) -> Result<Duration, String> {
    let (n, unit) = number_and_unit(value, DURATION_FORMS)?;
    let millis_per_unit: u64 = match unit.as_str() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "unknown unit in `{}`; expected {DURATION_FORMS}",
                value.trim()
            ));
        }
    };
    let d = n.checked_mul(millis_per_unit).map(Duration::from_millis);
    match d {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("`{}` is too long; at most 168h", value.trim())),
    }
}

const SIZE_FORMS: &str = "a size such as 65536, 64K, 64KiB, 1M or 1MiB (K = 1024)";

fn parse_size(value: &str) -> Result<usize, String> {
    let (n, unit) = number_and_unit(value, SIZE_FORMS)?;
    let per_unit: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB as u64,
        "m" | "mib" => MIB as u64,
        "g" | "gib" => GIB as u64,
        _ => {
            return Err(format!(
                "unknown unit in `{}`; expected {SIZE_FORMS}",
                value.trim()
            ));
        }
    };
    match n
        .checked_mul(per_unit)
        .and_then(|b| usize::try_from(b).ok())
    {
        Some(b) if b <= MAX_SIZE => Ok(b),
        _ => Err(format!("`{}` is too large; at most 1GiB", value.trim())),
    }
}

/// Largest `memory_limit`: sizes elsewhere stop at 1 GiB, a process-wide cap may be larger.
const MAX_MEMORY_LIMIT: u64 = 1 << 40;

/// `memory_limit`: a size (up to 1 TiB), `0` for off.
fn parse_memory_limit(value: &str) -> Result<MemoryLimit, String> {
    let (n, unit) = number_and_unit(value, SIZE_FORMS)?;
    let per_unit: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB as u64,
        "m" | "mib" => MIB as u64,
        "g" | "gib" => GIB as u64,
        _ => {
            return Err(format!(
                "unknown unit in `{}`; expected {SIZE_FORMS}, or 0 for no limit",
                value.trim()
            ));
        }
    };
    match n.checked_mul(per_unit) {
        Some(0) => Ok(MemoryLimit::Off),
        Some(b) if b <= MAX_MEMORY_LIMIT => usize::try_from(b)
            .ok()
            .and_then(NonZeroUsize::new)
            .map(MemoryLimit::Bytes)
            .ok_or_else(|| format!("`{}` is too large", value.trim())),
        _ => Err(format!("`{}` is too large; at most 1024GiB", value.trim())),
    }
}

fn parse_count(value: &str) -> Result<usize, String> {
    const WHAT: &str = "a whole number";
    let (n, unit) = number_and_unit(value, WHAT)?;
    if !unit.is_empty() {
        return Err(format!("`{}` is not a whole number", value.trim()));
    }
    usize::try_from(n).map_err(|_| format!("`{}` is too large", value.trim()))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!(
            "`{value}` is not a boolean; expected true or false (yes/no, on/off, 1/0)"
        )),
    }
}

/// One of a few words, case-insensitively; the error lists them (`expected a, b or c`).
fn choice<T: Copy>(value: &str, what: &str, options: &[(&str, T)]) -> Result<T, String> {
    let word = value.to_ascii_lowercase();
    if let Some(&(_, v)) = options.iter().find(|(name, _)| *name == word) {
        return Ok(v);
    }
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    let expected = match names.split_last() {
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(format!("`{value}` is not {what}; expected {expected}"))
}

fn parse_slow_consumer(value: &str) -> Result<SlowConsumer, String> {
    choice(
        value,
        "a slow_consumer action",
        &[
            ("disconnect", SlowConsumer::Disconnect),
            ("drop", SlowConsumer::Drop),
        ],
    )
}

fn parse_overflow(value: &str) -> Result<Overflow, String> {
    choice(
        value,
        "an action",
        &[("close", Overflow::Close), ("drop", Overflow::Drop)],
    )
}

fn parse_client_auth(value: &str) -> Result<ClientAuth, String> {
    choice(
        value,
        "a client_auth setting",
        &[
            ("off", ClientAuth::Off),
            ("optional", ClientAuth::Optional),
            ("required", ClientAuth::Required),
        ],
    )
}

fn parse_members(value: &str) -> Result<Members, String> {
    if value.trim() == "*" {
        return Ok(Members::Everyone);
    }
    let mut names: Vec<String> = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(if value.trim().is_empty() {
                "empty; list user names, or `*` for every authenticated user".to_string()
            } else {
                "empty entry in the list (a stray comma?)".to_string()
            });
        }
        if entry == "*" {
            return Err("`*` (every authenticated user) must stand alone".into());
        }
        crate::auth::users::check_user_name(entry).map_err(|e| format!("`{entry}`: {e}"))?;
        if names.iter().any(|n| n == entry) {
            return Err(format!("`{entry}` is listed twice"));
        }
        names.push(entry.to_string());
    }
    Ok(Members::Users(names))
}

fn parse_patterns(value: &str) -> Result<Vec<PathPattern>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut patterns: Vec<PathPattern> = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err("empty entry in the list (a stray comma?)".to_string());
        }
        let pattern = PathPattern::parse(entry)?;
        if patterns.contains(&pattern) {
            return Err(format!("`{entry}` is listed twice"));
        }
        patterns.push(pattern);
    }
    Ok(patterns)
}

fn parse_mode(value: &str) -> Result<Mode, String> {
    choice(
        value,
        "a mode",
        &[
            ("echo", Mode::Echo),
            ("broadcast", Mode::Broadcast),
            ("proxy", Mode::Proxy),
        ],
    )
}

fn parse_level(value: &str) -> Result<log::LevelFilter, String> {
    value.parse::<log::LevelFilter>().map_err(|_| {
        format!("`{value}` is not a log level; expected error, warn, info, debug, trace or off")
    })
}

fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("`{value}` is not an address:port; expected e.g. 0.0.0.0:8443 or [::]:8443")
    })
}

fn parse_allow(value: &str) -> Result<Vec<OriginPattern>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(str::trim)
        .map(|entry| {
            if entry.is_empty() {
                Err("empty entry in the list (a stray comma?)".to_string())
            } else {
                OriginPattern::parse(entry).map_err(|m| format!("`{entry}`: {m}"))
            }
        })
        .collect()
}

/// `[channel:PATH]`'s PATH as a pattern.
fn parse_channel_path(path: &str) -> Result<ChannelPattern, String> {
    let (prefix, is_prefix) = check_path(path, "channel path")?;
    Ok(if is_prefix {
        ChannelPattern::Prefix(prefix.to_string())
    } else {
        ChannelPattern::Exact(path.to_string())
    })
}

// ---------------------------------------------------------------------------------------------
// The sections.

fn parse_server(s: &Section<'_>) -> Result<ServerConfig, ConfigError> {
    let listen = s.get(
        "listen",
        DEFAULT_LISTEN.parse().expect("valid default"),
        parse_listen,
    )?;
    let workers = s.nonzero_count("workers", nz(1024))?;
    let queue = s.count("queue", 16)?;
    let max_connections_per_ip = s.nonzero_count("max_connections_per_ip", nz(16))?;
    let worker_stack_size =
        s.stack_size("worker_stack_size", DEFAULT_WORKER_STACK, MIN_WORKER_STACK)?;
    let handshake_stack_size = s.stack_size(
        "handshake_stack_size",
        DEFAULT_HANDSHAKE_STACK,
        MIN_HANDSHAKE_STACK,
    )?;
    let shutdown_grace = s.duration("shutdown_grace", Duration::from_secs(5))?;
    let max_pre_auth = s.nonzero_count("max_pre_auth", nz(workers.get().div_ceil(2)))?;
    if max_pre_auth > workers {
        let key = s.first_set(&["max_pre_auth", "workers"]);
        return Err(s.invalid(
            key,
            format!(
                "{} must not exceed {}",
                s.describe("max_pre_auth", max_pre_auth),
                s.describe("workers", workers)
            ),
        ));
    }
    let proxy_protocol = s.boolean("proxy_protocol", false)?;
    let drain_delay = s.duration("drain_delay", Duration::ZERO)?;
    let tls = s.boolean("tls", true)?;
    let allow_plaintext = s.boolean("allow_plaintext", false)?;
    if !tls && !allow_plaintext && !listen.ip().to_canonical().is_loopback() {
        return Err(s.invalid(
            Some("tls"),
            format!(
                "off on the non-loopback address {listen} would send credentials and messages \
                 in clear text over the network; listen on 127.0.0.1 or ::1 behind a \
                 TLS-terminating proxy, or write allow_plaintext = true if that is really meant"
            ),
        ));
    }
    let memory_limit = s.get("memory_limit", MemoryLimit::Host, parse_memory_limit)?;
    Ok(ServerConfig {
        memory_limit,
        listen,
        workers,
        queue,
        max_connections_per_ip,
        worker_stack_size,
        handshake_stack_size,
        shutdown_grace,
        max_pre_auth,
        proxy_protocol,
        drain_delay,
        tls,
        allow_plaintext,
    })
}

/// `[tls]`; with `enabled` false (`[server] tls = off`) the certificate and key are not needed.
fn parse_tls(s: &Section<'_>, base: &Bases<'_>, enabled: bool) -> Result<TlsConfig, ConfigError> {
    let cert = s.path("cert", DEFAULT_CERT, base)?;
    let key = s.path("key", DEFAULT_KEY, base)?;
    let self_signed = s.boolean("self_signed", false)?;
    if enabled && !self_signed {
        s.require_file("cert", &cert)?;
        s.require_file("key", &key)?;
    }
    let handshake_timeout = s.positive_duration("handshake_timeout", Duration::from_secs(10))?;
    let client_auth = s.get("client_auth", ClientAuth::Off, parse_client_auth)?;
    if !enabled && client_auth != ClientAuth::Off {
        return Err(s.invalid(
            Some("client_auth"),
            "client certificates need TLS, but [server] tls is off",
        ));
    }
    let client_ca = match (client_auth, s.is_set("client_ca")) {
        (ClientAuth::Off, false) => None,
        (ClientAuth::Off, true) => {
            return Err(s.invalid(
                Some("client_ca"),
                "set, but client_auth is off: set client_auth = optional or required, \
                 or remove client_ca",
            ));
        }
        (_, false) => {
            return Err(s.invalid(
                Some("client_ca"),
                "missing; client_auth needs the CA file that signs client certificates",
            ));
        }
        (_, true) => {
            let path = s.path("client_ca", "", base)?;
            s.require_file("client_ca", &path)?;
            Some(path)
        }
    };
    let reload_check_interval = s.duration("reload_check_interval", Duration::from_secs(60))?;
    Ok(TlsConfig {
        cert,
        key,
        self_signed,
        handshake_timeout,
        client_auth,
        client_ca,
        reload_check_interval,
    })
}

fn parse_origins(s: &Section<'_>) -> Result<OriginPolicy, ConfigError> {
    Ok(OriginPolicy {
        allow: s.get("allow", Vec::new(), parse_allow)?,
        allow_missing: s.boolean("allow_missing", false)?,
        allow_any: s.boolean("allow_any", false)?,
        allow_same_origin: s.boolean("allow_same_origin", false)?,
    })
}

/// The demo channel path: what a channel path may be, limited to characters that need no
/// escaping in HTML, JavaScript or a URL.
fn parse_demo_channel(value: &str) -> Result<String, String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"/_.~-".contains(&b);
    if !value.starts_with('/') || value.len() > 256 {
        return Err("must be a path starting with `/`, at most 256 characters".into());
    }
    if !value.bytes().all(plain) {
        return Err("only A-Z a-z 0-9 / _ . ~ - are allowed".into());
    }
    if value[1..]
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("empty, `.` and `..` segments are never served".into());
    }
    Ok(value.to_string())
}

fn parse_demo(s: &Section<'_>) -> Result<DemoConfig, ConfigError> {
    Ok(DemoConfig {
        enabled: s.boolean("enabled", false)?,
        channel: s.get(
            "channel",
            DEFAULT_DEMO_CHANNEL.to_string(),
            parse_demo_channel,
        )?,
    })
}

fn parse_auth(s: &Section<'_>, base: &Bases<'_>) -> Result<AuthConfig, ConfigError> {
    let users_file = s.path("users_file", DEFAULT_USERS, base)?;
    s.require_file("users_file", &users_file)?;
    let tokens_file = s.path("tokens_file", DEFAULT_TOKENS, base)?;
    s.allow_missing_file("tokens_file", &tokens_file)?;
    let session_key_file = s.path("session_key_file", DEFAULT_SESSION_KEY, base)?;
    s.allow_missing_file("session_key_file", &session_key_file)?;
    let session_ttl = s.duration("session_ttl", Duration::from_secs(12 * 3600))?;
    let session_max_age = s.positive_duration("session_max_age", Duration::from_secs(7 * 86400))?;
    if !session_ttl.is_zero() && session_max_age < session_ttl {
        let key = s
            .first_set(&["session_max_age", "session_ttl"])
            .unwrap_or("session_max_age");
        return Err(s.invalid(
            Some(key),
            format!(
                "session_max_age ({session_max_age:?}) must be at least session_ttl \
                 ({session_ttl:?}): no session can outlive its absolute lifetime"
            ),
        ));
    }
    Ok(AuthConfig {
        users_file,
        cache_size: s.count("cache_size", 1024)?,
        cache_ttl: s.duration("cache_ttl", Duration::from_secs(600))?,
        max_concurrent_hashes: s.nonzero_count("max_concurrent_hashes", nz(2))?,
        tokens_file,
        session_key_file,
        session_ttl,
        session_max_age,
        trusted_address_ttl: s.duration("trusted_address_ttl", Duration::from_secs(24 * 3600))?,
        file_settle_time: s.duration("file_settle_time", Duration::from_millis(200))?,
        max_failures: s.count_u32("max_failures", 5)?,
        failure_window: s.positive_duration("failure_window", Duration::from_secs(300))?,
        max_pending_hashes: s.count("max_pending_hashes", 32)?,
    })
}

/// The WebSocket bounds of `[limits]` or a channel, each key defaulting to `base`'s.
fn parse_ws(s: &Section<'_>, base: &WsLimits) -> Result<WsLimits, ConfigError> {
    let ws = WsLimits {
        max_message_size: s.nonzero_size("max_message_size", base.max_message_size)?,
        max_frame_size: s.nonzero_size("max_frame_size", base.max_frame_size)?,
        read_buffer_size: s.nonzero_size("read_buffer_size", base.read_buffer_size)?,
        write_buffer_size: s.size("write_buffer_size", base.write_buffer_size)?,
        max_write_buffer_size: s
            .nonzero_size("max_write_buffer_size", base.max_write_buffer_size)?,
        outbox: s.nonzero_count("outbox", base.outbox)?,
        slow_consumer: s.get("slow_consumer", base.slow_consumer, parse_slow_consumer)?,
        max_messages_per_sec: s.count_u32("max_messages_per_sec", base.max_messages_per_sec)?,
        max_bytes_per_sec: s.size("max_bytes_per_sec", base.max_bytes_per_sec)?,
        on_rate_limit: s.get("on_rate_limit", base.on_rate_limit, parse_overflow)?,
    };
    check_ws(s, &ws)?;
    Ok(ws)
}

/// The cross-field rules on effective limits (what tungstenite would otherwise assert on).
fn check_ws(s: &Section<'_>, ws: &WsLimits) -> Result<(), ConfigError> {
    let message = ws.max_message_size.get();
    let frame = ws.max_frame_size.get();
    if frame > message {
        let key = s.first_set(&["max_frame_size", "max_message_size"]);
        return Err(s.invalid(
            key.or(Some("max_frame_size")),
            format!(
                "{} must not exceed {}",
                s.describe("max_frame_size", frame),
                s.describe("max_message_size", message)
            ),
        ));
    }
    let write = ws.write_buffer_size;
    let max_write = ws.max_write_buffer_size.get();
    // Sizes are capped at 1GiB, so this cannot overflow; checked anyway.
    let needed = write
        .saturating_add(message)
        .saturating_add(FRAME_HEADER_MAX);
    if max_write < needed {
        let key = s.first_set(&[
            "max_write_buffer_size",
            "write_buffer_size",
            "max_message_size",
        ]);
        return Err(s.invalid(
            key.or(Some("max_write_buffer_size")),
            format!(
                "{} must be at least {} + {} + 14 = {needed} (a whole frame must fit after a full write buffer)",
                s.describe("max_write_buffer_size", max_write),
                s.describe("write_buffer_size", write),
                s.describe("max_message_size", message),
            ),
        ));
    }
    debug_assert!(max_write > write);
    let bytes = ws.max_bytes_per_sec;
    if bytes != 0 && bytes < message {
        let key = s.first_set(&["max_bytes_per_sec", "max_message_size"]);
        return Err(s.invalid(
            key.or(Some("max_bytes_per_sec")),
            format!(
                "{} must be 0 (unlimited) or at least {}: the rate bucket holds one second's \
                 worth, so a larger message could never pass",
                s.describe("max_bytes_per_sec", bytes),
                s.describe("max_message_size", message),
            ),
        ));
    }
    Ok(())
}

/// tungstenite parses the handshake again with a fixed array of this many headers.
const MAX_HEADERS_LIMIT: usize = 124;
/// tungstenite refuses a handshake whose head exceeds this many bytes (`AttackCheck`'s
/// `MAX_BYTES`) with a bare reset, after our parser has accepted it.
const MAX_REQUEST_HEAD_LIMIT: usize = 64 * KIB;

fn parse_limits(s: &Section<'_>) -> Result<Limits, ConfigError> {
    let upgrade_timeout = s.positive_duration("upgrade_timeout", Duration::from_secs(10))?;
    let max_request_head = s.nonzero_size("max_request_head", nz(8 * KIB))?;
    if max_request_head.get() > MAX_REQUEST_HEAD_LIMIT {
        return Err(s.invalid(
            Some("max_request_head"),
            "must be at most 64KiB (the most tungstenite's handshake accepts; a longer head \
             would be reset without an answer)"
                .to_string(),
        ));
    }
    let max_headers = s.nonzero_count("max_headers", nz(32))?;
    if max_headers.get() > MAX_HEADERS_LIMIT {
        return Err(s.invalid(
            Some("max_headers"),
            format!("must be at most {MAX_HEADERS_LIMIT} (the most tungstenite's handshake parser accepts)"),
        ));
    }
    let ping_interval = s.positive_duration("ping_interval", Duration::from_secs(30))?;
    let idle_timeout = s.positive_duration("idle_timeout", Duration::from_secs(75))?;
    let write_timeout = s.positive_duration("write_timeout", Duration::from_secs(30))?;
    let max_fragments = s.nonzero_count("max_fragments", nz(64))?;
    let message_timeout = s.positive_duration("message_timeout", Duration::from_secs(30))?;
    if idle_timeout <= ping_interval {
        let key = s
            .first_set(&["idle_timeout", "ping_interval"])
            .unwrap_or("idle_timeout");
        return Err(s.invalid(
            Some(key),
            format!(
                "idle_timeout ({idle_timeout:?}) must be greater than ping_interval ({ping_interval:?}), \
                 so a ping can be answered before the connection counts as idle"
            ),
        ));
    }
    let ws = parse_ws(s, &default_ws_limits())?;
    Ok(Limits {
        upgrade_timeout,
        max_request_head,
        max_headers,
        ping_interval,
        idle_timeout,
        write_timeout,
        max_fragments,
        message_timeout,
        ws,
    })
}

fn parse_channel(
    s: &Section<'_>,
    path: &str,
    base: &WsLimits,
    bases: &Bases<'_>,
) -> Result<ChannelConfig, ConfigError> {
    let pattern = parse_channel_path(path).map_err(|m| s.invalid(None, m))?;
    if !s.is_set("mode") {
        return Err(s.invalid(
            Some("mode"),
            "missing; every channel needs mode = echo, broadcast or proxy",
        ));
    }
    let mode = s.get("mode", Mode::Echo, parse_mode)?;
    let limits = parse_ws(s, base)?;
    let backend = parse_backend(s, mode, bases)?;
    Ok(ChannelConfig {
        pattern,
        mode,
        limits,
        anonymous: s.boolean("anonymous", false)?,
        on_forbidden: s.get("on_forbidden", Overflow::Close, parse_overflow)?,
        backend,
        line: s.line,
    })
}

/// `backend`, `backend_ca` and `backend_connect_timeout`: required (`backend`) with
/// `mode = proxy`, refused with any other mode.
fn parse_backend(
    s: &Section<'_>,
    mode: Mode,
    bases: &Bases<'_>,
) -> Result<Option<Backend>, ConfigError> {
    const KEYS: [&str; 3] = ["backend", "backend_ca", "backend_connect_timeout"];
    if mode != Mode::Proxy {
        return match s.first_set(&KEYS) {
            Some(key) => Err(s.invalid(
                Some(key),
                format!("only a mode = proxy channel has a backend; this one is mode = {mode}"),
            )),
            None => Ok(None),
        };
    }
    if !s.is_set("backend") {
        return Err(s.invalid(
            Some("backend"),
            "missing; a mode = proxy channel needs backend = ws://HOST:PORT, wss://HOST:PORT or \
             unix:/PATH",
        ));
    }
    let (endpoint, base_path) = s.get(
        "backend",
        (Endpoint::Unix(PathBuf::new()), String::new()),
        parse_backend_url,
    )?;
    let ca = match (&endpoint, s.is_set("backend_ca")) {
        (Endpoint::Tcp { tls: true, .. }, true) => {
            let path = s.path("backend_ca", "", bases)?;
            s.require_file("backend_ca", &path)?;
            Some(path)
        }
        (_, true) => {
            return Err(s.invalid(
                Some("backend_ca"),
                "only a wss:// backend's certificate is verified; remove backend_ca or use wss://",
            ));
        }
        (_, false) => None,
    };
    Ok(Some(Backend {
        endpoint,
        base_path,
        ca,
        connect_timeout: s.positive_duration("backend_connect_timeout", Duration::from_secs(5))?,
    }))
}

/// `ws://HOST[:PORT][/PATH]`, `wss://HOST[:PORT][/PATH]` or `unix:/ABSOLUTE/PATH`. No user
/// information (credentials belong in no config URL a log may show), query or fragment.
fn parse_backend_url(value: &str) -> Result<(Endpoint, String), String> {
    let expected = "expected ws://HOST:PORT[/PATH], wss://HOST:PORT[/PATH] or unix:/PATH";
    if let Some(path) = value.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(format!(
                "`{value}`: the socket path must be absolute; {expected}"
            ));
        }
        return Ok((Endpoint::Unix(PathBuf::from(path)), "/".to_string()));
    }
    let (tls, rest) = if let Some(rest) = value.strip_prefix("ws://") {
        (false, rest)
    } else if let Some(rest) = value.strip_prefix("wss://") {
        (true, rest)
    } else {
        return Err(format!("`{value}` is not a backend URL; {expected}"));
    };
    if rest.contains(['?', '#', '@']) || rest.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "`{value}`: a backend URL has no user, query, fragment or spaces; {expected}"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{value}`: unclosed `[` in the host; {expected}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("`{value}`: junk after the host; {expected}")),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{value}` names no host; {expected}"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(format!(
                    "`{value}`: port `{p}` is not 1 to 65535; {expected}"
                ));
            }
        },
    };
    if path.parse::<tungstenite::http::Uri>().is_err() {
        return Err(format!(
            "`{value}`: the path is not a valid request path; {expected}"
        ));
    }
    Ok((
        Endpoint::Tcp {
            host: host.to_string(),
            port,
            tls,
        },
        path.to_string(),
    ))
}

fn parse_role(s: &Section<'_>, name: &str) -> Result<Role, ConfigError> {
    if name.is_empty()
        || name.len() > MAX_ROLE_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(s.invalid(
            None,
            format!(
                "role name `{}` must be 1 to {MAX_ROLE_NAME} characters of A-Z a-z 0-9 _ . -",
                name.escape_debug()
            ),
        ));
    }
    let anonymous = name == ANONYMOUS_ROLE;
    let members = match (anonymous, s.is_set("members")) {
        (true, false) => Members::Anonymous,
        (true, true) => {
            return Err(s.invalid(
                Some("members"),
                "the anonymous role applies to clients without credentials and takes no members",
            ));
        }
        (false, false) => {
            return Err(s.invalid(
                Some("members"),
                "missing; list user names, or `*` for every authenticated user",
            ));
        }
        (false, true) => s.get("members", Members::Everyone, parse_members)?,
    };
    let subscribe = s.get("subscribe", Vec::new(), parse_patterns)?;
    let publish = s.get("publish", Vec::new(), parse_patterns)?;
    if anonymous {
        for (key, patterns) in [("subscribe", &subscribe), ("publish", &publish)] {
            if let Some(p) = patterns.iter().find(|p| p.has_user()) {
                return Err(s.invalid(
                    Some(key),
                    format!(
                        "`{p}`: the anonymous role has no user name, so {USER_PLACEHOLDER} cannot be used"
                    ),
                ));
            }
        }
    }
    Ok(Role {
        name: name.to_string(),
        members,
        subscribe,
        publish,
        line: s.line,
    })
}

fn parse_admin(
    s: &Section<'_>,
    server: &ServerConfig,
    base: &Bases<'_>,
) -> Result<Option<AdminConfig>, ConfigError> {
    if !s.is_set("listen") {
        return Ok(None);
    }
    let listen = s.get("listen", server.listen, parse_listen)?;
    let main = server.listen;
    let clash = listen.port() != 0
        && listen.port() == main.port()
        && (listen.ip() == main.ip() || listen.ip().is_unspecified() || main.ip().is_unspecified());
    if clash {
        return Err(s.invalid(
            Some("listen"),
            format!(
                "`{listen}` clashes with [server] listen ({main}); the admin endpoint needs its own port"
            ),
        ));
    }
    let max_connections = s.nonzero_count("max_connections", nz(DEFAULT_ADMIN_MAX_CONNECTIONS))?;
    let token_file = if s.is_set("token_file") {
        let path = s.path("token_file", "", base)?;
        s.require_file("token_file", &path)?;
        Some(path)
    } else if listen.ip().is_loopback() {
        None
    } else {
        // The admin API can publish and disconnect: off a loopback address, only with a token.
        return Err(s.invalid(
            Some("token_file"),
            format!(
                "required when listen (`{listen}`) is not a loopback address: anyone who reaches \
                 it could publish and disconnect"
            ),
        ));
    };
    Ok(Some(AdminConfig {
        listen,
        max_connections,
        token_file,
    }))
}

/// The default `instance_id`: the host name, `-`, the process id (unique among instances on
/// one host, and recognisable in Redis' `CLIENT LIST` and our logs).
fn default_instance_id() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty() && h.len() < 200 && !h.contains(char::is_control))
        })
        .unwrap_or_else(|| "wsgate".to_string());
    format!("{host}-{}", std::process::id())
}

fn parse_instance_id(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > MAX_INSTANCE_ID {
        return Err(format!("must be 1 to {MAX_INSTANCE_ID} bytes"));
    }
    if value.contains(|c: char| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(value.to_string())
}

fn parse_channel_prefix(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > MAX_CHANNEL_PREFIX {
        return Err(format!("must be 1 to {MAX_CHANNEL_PREFIX} bytes"));
    }
    // Part of a Redis key name that operators grep and pattern-match (`SCAN MATCH wsgate:*`):
    // keep it free of glob characters.
    if value.contains(|c: char| c.is_control() || c.is_whitespace() || "*?[]\\".contains(c)) {
        return Err(
            "must not contain spaces, control characters or the pattern characters * ? [ ] \\"
                .into(),
        );
    }
    Ok(value.to_string())
}

fn parse_cluster(s: &Section<'_>) -> Result<ClusterConfig, ConfigError> {
    let redis_url = s.get("redis_url", None, |v| RedisUrl::parse(v).map(Some))?;
    let instance_id = match s.values.get("instance_id") {
        None => default_instance_id(),
        Some(_) => s.get("instance_id", String::new(), parse_instance_id)?,
    };
    let channel_prefix = s.get(
        "channel_prefix",
        DEFAULT_CHANNEL_PREFIX.to_string(),
        parse_channel_prefix,
    )?;
    let publish_queue = s.nonzero_count("publish_queue", nz(DEFAULT_PUBLISH_QUEUE))?;
    let max_backoff = s.get(
        "max_backoff",
        DEFAULT_MAX_BACKOFF,
        |v| match parse_duration(v)? {
            d if d < MIN_BACKOFF => Err(format!(
                "must be at least {}ms (the first reconnect delay)",
                MIN_BACKOFF.as_millis()
            )),
            d => Ok(d),
        },
    )?;
    let at_least_min_health = |v: &str| match parse_duration(v)? {
        d if d < MIN_HEALTH => Err(format!("must be at least {}ms", MIN_HEALTH.as_millis())),
        d => Ok(d),
    };
    let health_check = s.get("health_check", DEFAULT_HEALTH_CHECK, at_least_min_health)?;
    let health_timeout = s.get(
        "health_timeout",
        DEFAULT_HEALTH_TIMEOUT,
        at_least_min_health,
    )?;
    let stream_length = s.nonzero_count("stream_length", nz(DEFAULT_STREAM_LENGTH))?;
    Ok(ClusterConfig {
        redis_url,
        instance_id,
        channel_prefix,
        publish_queue,
        max_backoff,
        health_check,
        health_timeout,
        stream_length,
    })
}

/// Parses `text` read from `source`; `credentials` is `$CREDENTIALS_DIRECTORY` (a parameter, so
/// tests need not set the environment).
fn parse_config(
    text: &str,
    source: &Path,
    credentials: Option<&Path>,
) -> Result<Config, ConfigError> {
    let scanned = scan(text, source)?;
    let sections: Vec<Section<'_>> = scanned
        .iter()
        .map(|sc| Section {
            source,
            name: &sc.name,
            line: Some(sc.line),
            values: sc
                .keys
                .iter()
                .map(|k| (k.key.as_str(), (k.value.as_str(), k.line)))
                .collect(),
        })
        .collect();

    // Unknown sections and keys first, in file order.
    for (s, sc) in sections.iter().zip(&scanned) {
        let allowed = if s.name.starts_with(CHANNEL_PREFIX) {
            CHANNEL_KEYS
        } else if s.name.starts_with(ROLE_PREFIX) {
            ROLE_KEYS
        } else if let Some((_, keys)) = SECTIONS.iter().find(|(name, _)| *name == s.name) {
            keys
        } else {
            return Err(s.invalid(
                None,
                format!(
                    "unknown section{}; expected server, tls, origins, auth, limits, log, admin, cluster, demo, channel:/path or role:NAME",
                    crate::config::suggest::hint(s.name, SECTIONS.iter().map(|(name, _)| *name))
                ),
            ));
        };
        if let Some(k) = sc.keys.iter().find(|k| !allowed.contains(&k.key.as_str())) {
            return Err(s.invalid(
                Some(&k.key),
                format!(
                    "unknown key{}; [{}] accepts {}",
                    crate::config::suggest::hint(&k.key, allowed.iter().copied()),
                    s.name,
                    allowed.join(", ")
                ),
            ));
        }
    }

    let base = Bases {
        dir: source.parent().unwrap_or(Path::new("")),
        credentials,
    };
    let fixed = |name: &'static str| {
        sections
            .iter()
            .find(|s| s.name == name)
            .map_or_else(|| Section::absent(source, name), Section::clone)
    };

    let server = parse_server(&fixed("server"))?;
    let tls = parse_tls(&fixed("tls"), &base, server.tls)?;
    let origins = parse_origins(&fixed("origins"))?;
    let auth = parse_auth(&fixed("auth"), &base)?;
    let limits = parse_limits(&fixed("limits"))?;
    let log_level = fixed("log").get("level", log::LevelFilter::Info, parse_level)?;
    let admin = parse_admin(&fixed("admin"), &server, &base)?;
    let cluster = parse_cluster(&fixed("cluster"))?;
    let demo_section = fixed("demo");
    let demo = parse_demo(&demo_section)?;

    let mut channels: Vec<ChannelConfig> = Vec::new();
    for s in &sections {
        let Some(path) = s.name.strip_prefix(CHANNEL_PREFIX) else {
            continue;
        };
        let channel = parse_channel(s, path, &limits.ws, &base)?;
        if channels.iter().any(|c| c.pattern == channel.pattern) {
            return Err(s.invalid(None, "another channel already has this path"));
        }
        channels.push(channel);
    }
    if channels.is_empty() {
        return Err(ConfigError::Invalid {
            path: source.to_path_buf(),
            line: None,
            section: String::new(),
            key: None,
            message: "nothing to serve: add at least one [channel:/path] section with a mode"
                .into(),
        });
    }

    let mut roles: Vec<Role> = Vec::new();
    for s in &sections {
        if let Some(name) = s.name.strip_prefix(ROLE_PREFIX) {
            roles.push(parse_role(s, name)?);
        }
    }
    if demo.enabled {
        let key = if demo_section.is_set("channel") {
            "channel"
        } else {
            "enabled"
        };
        match find_channel(&channels, &demo.channel).map(|c| c.mode) {
            Some(Mode::Broadcast) => {}
            Some(mode @ (Mode::Echo | Mode::Proxy)) => {
                let kind = if mode == Mode::Echo {
                    "an echo"
                } else {
                    "a proxy"
                };
                return Err(demo_section.invalid(
                    Some(key),
                    format!(
                        "the demo channel {} is {kind} channel; the page needs a broadcast channel",
                        demo.channel
                    ),
                ));
            }
            None => {
                return Err(demo_section.invalid(
                    Some(key),
                    format!(
                        "no channel serves the demo channel {}; add a broadcast [channel:…] for it",
                        demo.channel
                    ),
                ));
            }
        }
    }

    Ok(Config {
        source: source.to_path_buf(),
        server,
        tls,
        origins,
        auth,
        limits,
        channels,
        roles,
        admin,
        cluster,
        demo,
        log_level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A temporary directory holding `wsgate.ini`'s neighbours (`users`, `c.crt`, `c.key`).
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("wsgate-config-test-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["users", "c.crt", "c.key"] {
                std::fs::write(dir.join(f), "").unwrap();
            }
            Dir(dir)
        }

        fn ini(&self) -> PathBuf {
            self.0.join("wsgate.ini")
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MINIMAL: &str = "[tls]\nself_signed = true\n[channel:/echo]\nmode = echo\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = Dir::new();
        Config::parse(text, &dir.ini())
    }

    fn ok(text: &str) -> Config {
        parse(text).unwrap_or_else(|e| panic!("{e}\n--- in ---\n{text}"))
    }

    /// The error's Display with the temp path replaced by `F`.
    fn err(text: &str) -> String {
        let dir = Dir::new();
        let e = Config::parse(text, &dir.ini()).expect_err(text);
        let s = e.to_string();
        s.replace(&dir.ini().display().to_string(), "F")
            .replace(&dir.0.display().to_string(), "D")
    }

    /// `MINIMAL` plus `extra`; `extra` starts on line 5.
    fn with(extra: &str) -> String {
        format!("{MINIMAL}{extra}")
    }

    #[test]
    fn session_max_age_is_at_least_session_ttl() {
        assert_eq!(
            err(&with("[auth]\nsession_ttl = 2h\nsession_max_age = 1h\n")),
            "config: F:7: [auth] session_max_age: session_max_age (3600s) must be at least \
             session_ttl (7200s): no session can outlive its absolute lifetime"
        );
        assert_eq!(
            err(&with("[auth]\nsession_max_age = 0\n")),
            "config: F:6: [auth] session_max_age: must be greater than 0"
        );
        // Sessions off: no constraint; equal is fine.
        ok(&with("[auth]\nsession_ttl = 0\nsession_max_age = 1s\n"));
        let c = ok(&with("[auth]\nsession_ttl = 1h\nsession_max_age = 1h\n"));
        assert_eq!(c.auth.session_max_age, c.auth.session_ttl);
    }

    #[test]
    fn defaults() {
        let dir = Dir::new();
        let c = Config::parse(MINIMAL, &dir.ini()).unwrap();
        assert_eq!(c.source, dir.ini());
        assert_eq!(c.server.listen, "0.0.0.0:8443".parse().unwrap());
        assert!(c.server.tls && !c.server.allow_plaintext);
        assert_eq!(c.server.workers.get(), 1024);
        assert_eq!(c.server.memory_limit, MemoryLimit::Host);
        assert_eq!(c.server.queue, 16);
        assert_eq!(c.server.max_connections_per_ip.get(), 16);
        assert_eq!(c.server.worker_stack_size.get(), 256 * 1024);
        assert_eq!(c.server.handshake_stack_size.get(), 192 * 1024);
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(5));
        assert!(!c.server.proxy_protocol);
        assert_eq!(c.server.drain_delay, Duration::ZERO);
        assert_eq!(c.tls.cert, dir.0.join("wsgate.crt"));
        assert_eq!(c.tls.key, dir.0.join("wsgate.key"));
        assert!(c.tls.self_signed);
        assert_eq!(c.tls.handshake_timeout, Duration::from_secs(10));
        assert!(c.origins.allow.is_empty());
        assert!(!c.origins.allow_missing);
        assert!(!c.origins.allow_any);
        assert!(!c.origins.allow_same_origin);
        assert_eq!(
            c.demo,
            DemoConfig {
                enabled: false,
                channel: "/chat/demo".into()
            }
        );
        assert_eq!(c.auth.users_file, dir.0.join("users"));
        assert_eq!(c.auth.cache_size, 1024);
        assert_eq!(c.auth.cache_ttl, Duration::from_secs(600));
        assert_eq!(c.auth.max_concurrent_hashes.get(), 2);
        let l = &c.limits;
        assert_eq!(l.upgrade_timeout, Duration::from_secs(10));
        assert_eq!(l.max_request_head.get(), 8192);
        assert_eq!(l.max_headers.get(), 32);
        assert_eq!(l.ping_interval, Duration::from_secs(30));
        assert_eq!(l.idle_timeout, Duration::from_secs(75));
        assert_eq!(l.write_timeout, Duration::from_secs(30));
        assert_eq!(l.max_fragments.get(), 64);
        assert_eq!(l.message_timeout, Duration::from_secs(30));
        assert_eq!(l.ws, default_ws_limits());
        assert_eq!(l.ws.max_message_size.get(), 65536);
        assert_eq!(l.ws.max_frame_size.get(), 65536);
        assert_eq!(l.ws.read_buffer_size.get(), 4096);
        assert_eq!(l.ws.write_buffer_size, 8192);
        assert_eq!(l.ws.max_write_buffer_size.get(), 131072);
        assert_eq!(l.ws.outbox.get(), 64);
        assert_eq!(l.ws.slow_consumer, SlowConsumer::Disconnect);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert_eq!(c.channels.len(), 1);
        assert_eq!(c.channels[0].pattern, ChannelPattern::Exact("/echo".into()));
        assert_eq!(c.channels[0].mode, Mode::Echo);
        assert_eq!(c.channels[0].limits, l.ws);
        // The defaults are a valid tungstenite configuration.
        let _ = l.ws.websocket_config();
        // Access, rate limits and the rest.
        assert_eq!(c.server.max_pre_auth.get(), 512);
        assert_eq!(c.tls.client_auth, ClientAuth::Off);
        assert_eq!(c.tls.client_ca, None);
        assert_eq!(c.tls.reload_check_interval, Duration::from_secs(60));
        assert_eq!(c.auth.tokens_file, dir.0.join("tokens"));
        assert_eq!(c.auth.session_key_file, dir.0.join("session.key"));
        assert_eq!(c.auth.session_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(c.auth.session_max_age, Duration::from_secs(7 * 86400));
        assert_eq!(c.auth.trusted_address_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.auth.file_settle_time, Duration::from_millis(200));
        assert_eq!(c.auth.max_failures, 5);
        assert_eq!(c.auth.failure_window, Duration::from_secs(300));
        assert_eq!(c.auth.max_pending_hashes, 32);
        assert_eq!(l.ws.max_messages_per_sec, 1000);
        assert_eq!(l.ws.max_bytes_per_sec, 4 << 20);
        assert_eq!(l.ws.on_rate_limit, Overflow::Close);
        assert!(!c.channels[0].anonymous);
        assert_eq!(c.channels[0].on_forbidden, Overflow::Close);
        assert_eq!(c.channels[0].line, Some(3));
        assert!(c.roles.is_empty());
        assert_eq!(c.admin, None);
    }

    #[test]
    fn set_access_and_limit_values() {
        let dir = Dir::new();
        std::fs::write(dir.0.join("ca.pem"), "").unwrap();
        let c = Config::parse(
            &with(
                "[server]
workers = 5
max_pre_auth = 5
                 [tls]
",
            )
            .replace(
                "[tls]
self_signed = true
",
                "",
            )
            .replace(
                "[tls]
",
                "[tls]
self_signed = true
client_auth = Required
client_ca = ca.pem
                 reload_check_interval = 0
",
            ),
            &dir.ini(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.server.max_pre_auth.get(), 5);
        assert_eq!(c.tls.client_auth, ClientAuth::Required);
        assert_eq!(c.tls.client_ca, Some(dir.0.join("ca.pem")));
        assert_eq!(c.tls.reload_check_interval, Duration::ZERO);
        let c = ok(&with(
            "[auth]
tokens_file = sub/t
session_key_file = /var/lib/wsgate/s.key
             session_ttl = 0
max_failures = 0
failure_window = 1h
max_pending_hashes = 0
             [limits]
max_messages_per_sec = 0
max_bytes_per_sec = 0
on_rate_limit = drop
             [channel:/x]
mode = broadcast
anonymous = yes
on_forbidden = DROP
             max_messages_per_sec = 10
max_bytes_per_sec = 64K
on_rate_limit = close
             [admin]
listen = [::1]:9480
",
        ));
        assert!(c.auth.tokens_file.ends_with("sub/t"));
        assert_eq!(c.auth.session_key_file, Path::new("/var/lib/wsgate/s.key"));
        assert_eq!(c.auth.session_ttl, Duration::ZERO);
        assert_eq!(c.auth.max_failures, 0);
        assert_eq!(c.auth.failure_window, Duration::from_secs(3600));
        assert_eq!(c.auth.max_pending_hashes, 0);
        let echo = &c.channels[0];
        assert_eq!(echo.limits.max_messages_per_sec, 0);
        assert_eq!(echo.limits.max_bytes_per_sec, 0);
        assert_eq!(echo.limits.on_rate_limit, Overflow::Drop);
        assert!(!echo.anonymous);
        let x = &c.channels[1];
        assert!(x.anonymous);
        assert_eq!(x.on_forbidden, Overflow::Drop);
        assert_eq!(x.limits.max_messages_per_sec, 10);
        assert_eq!(x.limits.max_bytes_per_sec, 64 * 1024);
        assert_eq!(x.limits.on_rate_limit, Overflow::Close);
        assert_eq!(x.line, Some(16));
        assert_eq!(
            c.admin,
            Some(AdminConfig {
                listen: "[::1]:9480".parse().unwrap(),
                max_connections: nz(32),
                token_file: None,
            })
        );
        assert_eq!(Overflow::Drop.to_string(), "drop");
        assert_eq!(Mode::Broadcast.to_string(), "broadcast");
        assert_eq!(
            ChannelPattern::Prefix("/chat/".into()).to_string(),
            "/chat/*"
        );
    }

    #[test]
    fn max_pre_auth_defaults_to_half_the_workers() {
        for (workers, want) in [(1, 1), (2, 1), (3, 2), (64, 32), (65, 33)] {
            let c = ok(&with(&format!("[server]\nworkers = {workers}\n")));
            assert_eq!(c.server.max_pre_auth.get(), want, "{workers}");
        }
        assert_eq!(
            err(&with("[server]\nworkers = 4\nmax_pre_auth = 5\n")),
            "config: F:7: [server] max_pre_auth: max_pre_auth (5) must not exceed workers (4)"
        );
        assert_eq!(
            err(&with("[server]\nmax_pre_auth = 1025\n")),
            "config: F:6: [server] max_pre_auth: max_pre_auth (1025) must not exceed workers (1024)"
        );
        assert_eq!(
            err(&with("[server]\nmax_pre_auth = 0\n")),
            "config: F:6: [server] max_pre_auth: must be at least 1"
        );
    }

    #[test]
    fn client_auth_needs_a_ca() {
        let head = "[channel:/echo]\nmode = echo\n[tls]\nself_signed = true\n";
        assert_eq!(
            err(&format!("{head}client_auth = optional\n")),
            "config: F:3: [tls] client_ca: missing; client_auth needs the CA file that signs client certificates"
        );
        assert_eq!(
            err(&format!(
                "{head}client_auth = required\nclient_ca = nope.pem\n"
            )),
            "config: F:6: [tls] client_ca: file not found: D/nope.pem"
        );
        assert_eq!(
            err(&format!("{head}client_ca = c.crt\n")),
            "config: F:5: [tls] client_ca: set, but client_auth is off: set client_auth = optional or required, or remove client_ca"
        );
        assert_eq!(
            err(&format!("{head}client_auth = maybe\n")),
            "config: F:5: [tls] client_auth: `maybe` is not a client_auth setting; expected off, optional or required"
        );
        let c = ok(&format!(
            "{head}client_auth = optional\nclient_ca = c.crt\n"
        ));
        assert_eq!(c.tls.client_auth, ClientAuth::Optional);
    }

    #[test]
    fn optional_auth_files() {
        // Missing is fine; a directory is not.
        ok(&with(
            "[auth]\ntokens_file = none/yet\nsession_key_file = later.key\n",
        ));
        assert_eq!(
            err(&with("[auth]\ntokens_file = .\n")),
            "config: F:6: [auth] tokens_file: not a regular file: D"
        );
        assert_eq!(
            err(&with("[auth]\nsession_key_file = .\n")),
            "config: F:6: [auth] session_key_file: not a regular file: D"
        );
        assert_eq!(
            err(&with("[auth]\ntokens_file =\n")),
            "config: F:6: [auth] tokens_file: empty path"
        );
        // Existing files are accepted.
        ok(&with(
            "[auth]\ntokens_file = users\nsession_key_file = c.key\n",
        ));
    }

    #[test]
    fn admin_listen_must_differ() {
        let clash = [
            ("127.0.0.1:8443", "0.0.0.0:8443"),
            ("127.0.0.1:9000", "127.0.0.1:9000"),
            ("0.0.0.0:9000", "127.0.0.1:9000"),
            ("[::]:9000", "[::1]:9000"),
        ];
        for (admin, main) in clash {
            let e = err(&with(&format!(
                "[server]\nlisten = {main}\n[admin]\nlisten = {admin}\n"
            )));
            assert_eq!(
                e,
                format!(
                    "config: F:8: [admin] listen: `{admin}` clashes with [server] listen ({main}); the admin endpoint needs its own port"
                )
            );
        }
        for (admin, main) in [
            ("127.0.0.1:9480", "127.0.0.1:8443"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("127.0.0.2:9000", "127.0.0.1:9000"),
        ] {
            let c = ok(&with(&format!(
                "[server]\nlisten = {main}\n[admin]\nlisten = {admin}\n"
            )));
            assert_eq!(c.admin.unwrap().listen, admin.parse().unwrap());
        }
        let c = ok(&with(
            "[admin]\nlisten = 127.0.0.1:9480\nmax_connections = 4\n",
        ));
        assert_eq!(c.admin.unwrap().max_connections, nz(4));
        assert!(
            err(&with(
                "[admin]\nlisten = 127.0.0.1:9480\nmax_connections = 0\n"
            ))
            .contains("[admin] max_connections: ")
        );
        // An empty [admin] section is no admin endpoint.
        assert_eq!(ok(&with("[admin]\n")).admin, None);
    }

    #[test]
    fn admin_off_loopback_requires_a_token_file() {
        for listen in ["0.0.0.0:9480", "192.168.1.2:9480", "[::]:9480"] {
            assert_eq!(
                err(&with(&format!("[admin]\nlisten = {listen}\n"))),
                format!(
                    "config: F:5: [admin] token_file: required when listen (`{listen}`) is not a \
                     loopback address: anyone who reaches it could publish and disconnect"
                )
            );
        }
        let dir = Dir::new();
        let c = Config::parse(
            &with("[admin]\nlisten = 0.0.0.0:9480\ntoken_file = users\n"),
            &dir.ini(),
        )
        .unwrap();
        assert_eq!(c.admin.unwrap().token_file, Some(dir.0.join("users")));
        // Optional on loopback; a named file must exist.
        assert_eq!(
            ok(&with("[admin]\nlisten = [::1]:9480\n"))
                .admin
                .unwrap()
                .token_file,
            None
        );
        assert_eq!(
            err(&with(
                "[admin]\nlisten = 127.0.0.1:9480\ntoken_file = nope\n"
            )),
            "config: F:7: [admin] token_file: file not found: D/nope"
        );
        assert!(
            err(&with("[admin]\nlisten = 9480\n"))
                .starts_with("config: F:6: [admin] listen: `9480` is not an address:port")
        );
    }

    #[test]
    fn cluster_settings() {
        let c = ok(&with(""));
        assert_eq!(c.cluster.redis_url, None);
        assert_eq!(
            c.cluster.instance_id,
            format!(
                "{}-{}",
                c.cluster.instance_id.rsplit_once('-').unwrap().0,
                std::process::id()
            )
        );
        assert_eq!(c.cluster.channel_prefix, "wsgate:");
        assert_eq!(c.cluster.publish_queue.get(), 1024);
        assert_eq!(c.cluster.max_backoff, Duration::from_secs(5));
        assert_eq!(c.cluster.health_check, Duration::from_secs(1));
        assert_eq!(c.cluster.health_timeout, Duration::from_secs(2));
        assert_eq!(c.cluster.stream_length.get(), 10_000);

        let c = ok(&with(
            "[cluster]\nredis_url = rediss://app:s3cret@redis.example.com:6380/2\n\
             instance_id = pi-1\nchannel_prefix = home:\npublish_queue = 10\nmax_backoff = 250ms\n\
             health_check = 500ms\nhealth_timeout = 1s\nstream_length = 50\n",
        ));
        let url = c.cluster.redis_url.as_ref().unwrap();
        assert_eq!(url.secret(), "rediss://app:s3cret@redis.example.com:6380/2");
        assert!(url.is_tls());
        // The password never shows in what is logged or debug-printed.
        assert_eq!(url.to_string(), "rediss://app:***@redis.example.com:6380/2");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.cluster.instance_id, "pi-1");
        assert_eq!(c.cluster.channel_prefix, "home:");
        assert_eq!(c.cluster.publish_queue.get(), 10);
        assert_eq!(c.cluster.max_backoff, Duration::from_millis(250));
        assert_eq!(c.cluster.health_check, Duration::from_millis(500));
        assert_eq!(c.cluster.health_timeout, Duration::from_secs(1));
        assert_eq!(c.cluster.stream_length.get(), 50);
        let plain = ok(&with("[cluster]\nredis_url = redis://127.0.0.1\n"));
        let plain = plain.cluster.redis_url.unwrap();
        assert_eq!(plain.to_string(), "redis://127.0.0.1");
        assert!(!plain.is_tls());

        let cases = [
            (
                "redis_url = http://127.0.0.1/",
                "[cluster] redis_url: expected redis://",
            ),
            (
                "redis_url = 127.0.0.1:6379",
                "[cluster] redis_url: expected redis://",
            ),
            ("redis_url = redis://", "[cluster] redis_url: "),
            (
                "redis_url = redis://:hunter2@127.0.0.1/x",
                "[cluster] redis_url: invalid database number",
            ),
            (
                "instance_id = a b",
                "[cluster] instance_id: must not contain spaces",
            ),
            (
                "channel_prefix = ws*",
                "[cluster] channel_prefix: must not contain",
            ),
            (
                "channel_prefix = ",
                "[cluster] channel_prefix: must be 1 to 128 bytes",
            ),
            (
                "publish_queue = 0",
                "[cluster] publish_queue: must be at least 1",
            ),
            (
                "max_backoff = 50ms",
                "[cluster] max_backoff: must be at least 100ms",
            ),
            (
                "health_check = 99ms",
                "[cluster] health_check: must be at least 100ms",
            ),
            (
                "health_timeout = 0s",
                "[cluster] health_timeout: must be at least 100ms",
            ),
            (
                "stream_length = 0",
                "[cluster] stream_length: must be at least 1",
            ),
        ];
        for (line, want) in cases {
            let e = err(&with(&format!("[cluster]\n{line}\n")));
            assert!(
                e.starts_with(&format!("config: F:6: {want}")),
                "{line}: {e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
        let long = "x".repeat(256);
        assert!(
            err(&with(&format!("[cluster]\ninstance_id = {long}\n")))
                .contains("must be 1 to 255 bytes")
        );
    }

    #[test]
    fn byte_rate_holds_a_message() {
        ok(&with("[limits]\nmax_bytes_per_sec = 64K\n"));
        assert_eq!(
            err(&with("[limits]\nmax_bytes_per_sec = 65535\n")),
            "config: F:6: [limits] max_bytes_per_sec: max_bytes_per_sec (65535) must be 0 (unlimited) \
             or at least max_message_size (65536): the rate bucket holds one second's worth, so a \
             larger message could never pass"
        );
        // Inherited on a channel that raises its message size.
        let e = err(&with(
            "[channel:/big]\nmode = echo\nmax_message_size = 8M\nmax_frame_size = 1M\n\
             max_write_buffer_size = 9M\n",
        ));
        assert!(
            e.starts_with("config: F:7: [channel:/big] max_message_size: max_bytes_per_sec (4194304, inherited from [limits]) must be 0 (unlimited) or at least max_message_size (8388608)"),
            "{e}"
        );
        ok(&with(
            "[channel:/big]\nmode = echo\nmax_message_size = 8M\nmax_frame_size = 1M\n\
             max_write_buffer_size = 9M\nmax_bytes_per_sec = 0\n",
        ));
    }

    #[test]
    fn roles() {
        let c = ok(&with(
            "[channel:/chat/*]\nmode = broadcast\n\
             [role:ops.team-1_]\nmembers = alice , bob@x.org\nsubscribe = /chat/*, /echo\n\
             publish = /user/%u/*, /inbox/u-%u\n\
             [role:all]\nmembers = *\n\
             [role:anonymous]\nsubscribe = /echo\npublish =\n",
        ));
        assert_eq!(c.roles.len(), 3);
        let ops = &c.roles[0];
        assert_eq!(ops.name, "ops.team-1_");
        assert_eq!(ops.line, Some(7));
        assert_eq!(
            ops.members,
            Members::Users(vec!["alice".into(), "bob@x.org".into()])
        );
        let shown: Vec<_> = ops.subscribe.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown, ["/chat/*", "/echo"]);
        assert!(ops.subscribe[0].is_prefix() && !ops.subscribe[0].has_user());
        assert_eq!(ops.publish[0].as_str(), "/user/%u/*");
        assert!(ops.publish[0].is_prefix() && ops.publish[0].has_user());
        assert!(ops.publish[1].matches("/inbox/u-alice", Some("alice")));
        let all = &c.roles[1];
        assert_eq!(all.members, Members::Everyone);
        assert!(all.subscribe.is_empty() && all.publish.is_empty());
        let anon = &c.roles[2];
        assert_eq!(anon.members, Members::Anonymous);
        assert!(anon.publish.is_empty());
    }

    #[test]
    fn role_errors() {
        let cases = [
            (
                5,
                "[role:x]\n",
                "[role:x] members: missing; list user names, or `*` for every authenticated user",
            ),
            (
                6,
                "[role:x]\nmembers =\n",
                "[role:x] members: empty; list user names, or `*` for every authenticated user",
            ),
            (
                6,
                "[role:x]\nmembers = a,\n",
                "[role:x] members: empty entry in the list (a stray comma?)",
            ),
            (
                6,
                "[role:x]\nmembers = a, *\n",
                "[role:x] members: `*` (every authenticated user) must stand alone",
            ),
            (
                6,
                "[role:x]\nmembers = a, a\n",
                "[role:x] members: `a` is listed twice",
            ),
            (
                6,
                "[role:x]\nmembers = a b\n",
                "[role:x] members: `a b`: user name \"a b\" has characters outside",
            ),
            (
                6,
                "[role:anonymous]\nmembers = *\n",
                "[role:anonymous] members: the anonymous role applies to clients without credentials and takes no members",
            ),
            (
                6,
                "[role:anonymous]\nsubscribe = /inbox/%u\n",
                "[role:anonymous] subscribe: `/inbox/%u`: the anonymous role has no user name, so %u cannot be used",
            ),
            (
                6,
                "[role:anonymous]\npublish = /a, /u/%u/*\n",
                "[role:anonymous] publish: `/u/%u/*`: the anonymous role has no user name",
            ),
            (
                7,
                "[role:x]\nmembers = *\nsubscribe = echo\n",
                "[role:x] subscribe: pattern `echo` must start with `/`",
            ),
            (
                7,
                "[role:x]\nmembers = *\nsubscribe = /a,,/b\n",
                "[role:x] subscribe: empty entry in the list (a stray comma?)",
            ),
            (
                7,
                "[role:x]\nmembers = *\npublish = /chat*\n",
                "[role:x] publish: pattern `/chat*`: `*` is only allowed as a single trailing `/*`",
            ),
            (
                7,
                "[role:x]\nmembers = *\npublish = /a?b\n",
                "[role:x] publish: pattern `/a?b` must not contain `?`",
            ),
            (
                7,
                "[role:x]\nmembers = *\npublish = /a, /a\n",
                "[role:x] publish: `/a` is listed twice",
            ),
            (
                7,
                "[role:x]\nmembers = *\nbogus = 1\n",
                "[role:x] bogus: unknown key; [role:x] accepts members, subscribe, publish",
            ),
            (
                5,
                "[role:]\nmembers = *\n",
                "[role:]: role name `` must be 1 to 64 characters of A-Z a-z 0-9 _ . -",
            ),
            (
                5,
                "[role:a b]\nmembers = *\n",
                "[role:a b]: role name `a b` must be 1 to 64",
            ),
            (
                5,
                "[role:a/b]\nmembers = *\n",
                "[role:a/b]: role name `a/b` must be 1 to 64",
            ),
        ];
        for (line, extra, want) in cases {
            let e = err(&with(extra));
            let want = format!("config: F:{line}: {want}");
            assert!(e.starts_with(&want), "got  {e}\nwant {want}");
        }
        let long = "r".repeat(65);
        assert!(err(&with(&format!("[role:{long}]\nmembers = *\n"))).contains("must be 1 to 64"));
        ok(&with(&format!("[role:{}]\nmembers = *\n", "r".repeat(64))));
        assert!(
            err(&with("[role:x]\nmembers = *\n[role:x]\nmembers = a\n"))
                .contains("repeated section")
        );
    }

    #[test]
    fn set_values() {
        let c = ok(&with(
            "[server]\nlisten = [::1]:9000\nworkers = 3\nqueue = 0\nmax_connections_per_ip = 2\n\
             worker_stack_size = 64K\nhandshake_stack_size = 1M\nshutdown_grace = 0\nproxy_protocol = on\ndrain_delay = 1500ms\n\
             [auth]\nusers_file = users\ncache_size = 0\ncache_ttl = 1h\n\
             max_concurrent_hashes = 1\n\
             [log]\nlevel = DEBUG\n\
             [origins]\nallow = https://a.com , https://*.b.com:8443\nallow_missing = yes\nallow_any = off\n",
        ));
        assert_eq!(c.server.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(c.server.workers.get(), 3);
        assert_eq!(c.server.queue, 0);
        assert_eq!(c.server.worker_stack_size.get(), 65536);
        assert_eq!(c.server.handshake_stack_size.get(), 1024 * 1024);
        assert_eq!(c.server.shutdown_grace, Duration::ZERO);
        assert!(c.server.proxy_protocol);
        assert_eq!(c.server.drain_delay, Duration::from_millis(1500));
        assert_eq!(c.auth.cache_size, 0);
        assert_eq!(c.auth.cache_ttl, Duration::from_secs(3600));
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert_eq!(c.origins.allow.len(), 2);
        assert_eq!(
            c.origins.allow[1],
            OriginPattern::parse("https://*.B.com:8443").unwrap()
        );
        assert!(c.origins.allow_missing);
        assert!(!c.origins.allow_any);
        assert!(c.origins.check(&[b"https://x.b.com:8443"]).is_ok());
    }

    #[test]
    fn durations() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("10", Duration::from_secs(10)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("2 S", Duration::from_secs(2)),
            ("0", Duration::ZERO),
            ("168h", MAX_DURATION),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "-1s",
            "1.5s",
            "s",
            "10 sec",
            "1d",
            "169h",
            "99999999999999999999",
            "1h30m",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(
                e.starts_with(|c: char| c.is_ascii_lowercase() || c == '`'),
                "{e}"
            );
        }
        let c = ok(&with("[auth]\ncache_ttl = 1500ms\n"));
        assert_eq!(c.auth.cache_ttl, Duration::from_millis(1500));
    }

    #[test]
    fn memory_limit_is_a_size_zero_is_off_and_unset_is_the_host() {
        let limit = |v: &str| {
            ok(&with(&format!("[server]\nmemory_limit = {v}\n")))
                .server
                .memory_limit
        };
        assert_eq!(limit("0"), MemoryLimit::Off);
        assert_eq!(limit("32MiB"), MemoryLimit::Bytes(nz(32 * MIB)));
        assert_eq!(limit("4G"), MemoryLimit::Bytes(nz(4 * GIB)));
        assert_eq!(limit("1024GiB"), MemoryLimit::Bytes(nz(1024 * GIB)));
        for (bad, why) in [
            ("1025GiB", "`1025GiB` is too large; at most 1024GiB"),
            ("-1", "must not be negative"),
            ("lots", "is not"),
            ("5 furlongs", "unknown unit"),
        ] {
            let e = err(&with(&format!("[server]\nmemory_limit = {bad}\n")));
            assert!(
                e.contains("[server] memory_limit") && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn sizes() {
        let cases = [
            ("65536", 65536),
            ("64K", 65536),
            ("64k", 65536),
            ("64KiB", 65536),
            ("64 kib", 65536),
            ("1M", 1 << 20),
            ("1MiB", 1 << 20),
            ("1G", 1 << 30),
            ("100b", 100),
            ("0", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in ["", "-1", "64KB", "1.5M", "K", "2G", "1T", "64 K B", "0x10"] {
            let e = parse_size(bad).expect_err(bad);
            assert!(
                e.starts_with(|c: char| c.is_ascii_lowercase() || c == '`'),
                "{e}"
            );
        }
    }

    #[test]
    fn booleans() {
        for t in ["true", "TRUE", "yes", "on", "1"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["false", "No", "off", "0"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["", "2", "y", "enabled"] {
            assert!(parse_bool(bad).is_err(), "{bad}");
        }
        assert_eq!(
            err(&with("[origins]\nallow_any = maybe\n")),
            "config: F:6: [origins] allow_any: `maybe` is not a boolean; expected true or false (yes/no, on/off, 1/0)"
        );
    }

    #[test]
    fn display_format() {
        assert_eq!(
            err(&with("[tls]\n")),
            "config: F:5: [tls]: repeated section (first on line 1); merge the two"
        );
        let e = err("[tls]\ncert = c.crt\nkey = nope/k.pem\n[channel:/a]\nmode = echo\n");
        assert_eq!(e, "config: F:3: [tls] key: file not found: D/nope/k.pem");
        let e = ConfigError::Read {
            path: "x.ini".into(),
            error: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(
            e.to_string()
                .starts_with("config: x.ini: cannot read the file: "),
            "{e}"
        );
        let e = ConfigError::Syntax {
            path: "x.ini".into(),
            line: None,
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "config: x.ini: m");
        let e = ConfigError::Invalid {
            path: "x.ini".into(),
            line: None,
            section: "s".into(),
            key: None,
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "config: x.ini: [s]: m");
    }

    #[test]
    fn load_reads_the_file() {
        let dir = Dir::new();
        std::fs::write(dir.ini(), MINIMAL).unwrap();
        let c = Config::load(&dir.ini()).unwrap();
        assert_eq!(c.channels.len(), 1);
        let missing = dir.0.join("missing.ini");
        assert!(matches!(
            Config::load(&missing),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn tls_files() {
        // Present files are accepted, relative to the config file's directory.
        let dir = Dir::new();
        let c = Config::parse(
            "[tls]\ncert = c.crt\nkey = ./c.key\n[channel:/a]\nmode = echo\n",
            &dir.ini(),
        )
        .unwrap();
        assert_eq!(c.tls.cert, dir.0.join("c.crt"));
        assert!(c.tls.key.ends_with("c.key"));
        assert!(c.tls.key.is_absolute());
        assert!(!c.tls.self_signed);
        // Missing defaults are reported against the section header, or without a line.
        assert_eq!(
            err("[tls]\n[channel:/a]\nmode = echo\n"),
            "config: F:1: [tls] cert: file not found: D/wsgate.crt"
        );
        assert_eq!(
            err("[channel:/a]\nmode = echo\n"),
            "config: F: [tls] cert: file not found: D/wsgate.crt"
        );
        assert_eq!(
            err("[tls]\ncert = c.crt\n[channel:/a]\nmode = echo\n"),
            "config: F:1: [tls] key: file not found: D/wsgate.key"
        );
        assert_eq!(
            err("[tls]\ncert = .\nkey = c.key\n[channel:/a]\nmode = echo\n"),
            "config: F:2: [tls] cert: not a regular file: D"
        );
        // self_signed skips the checks.
        ok("[tls]\nself_signed = on\ncert = a/b.crt\nkey = a/b.key\n[channel:/a]\nmode = echo\n");
        assert_eq!(
            err(&with("[server]\n[tls]\n")),
            "config: F:6: [tls]: repeated section (first on line 1); merge the two"
        );
    }

    #[test]
    fn relative_paths_use_the_config_directory() {
        let dir = Dir::new();
        std::fs::create_dir_all(dir.0.join("sub")).unwrap();
        std::fs::write(dir.0.join("sub/u"), "").unwrap();
        let nested = dir.0.join("sub").join("wsgate.ini");
        let c = Config::parse(&with("[auth]\nusers_file = u\n"), &nested).unwrap();
        assert_eq!(c.auth.users_file, dir.0.join("sub/u"));
        assert_eq!(c.source, nested);
        // Absolute paths are kept.
        let abs = dir.0.join("users");
        let c = Config::parse(
            &with(&format!("[auth]\nusers_file = {}\n", abs.display())),
            &nested,
        )
        .unwrap();
        assert_eq!(c.auth.users_file, abs);
    }

    #[test]
    fn credential_paths_resolve_in_the_credentials_directory() {
        let dir = Dir::new();
        let creds = dir.0.join("creds");
        std::fs::create_dir_all(&creds).unwrap();
        for f in ["wsgate.key", "users", "tokens"] {
            std::fs::write(creds.join(f), "").unwrap();
        }
        let text = "[tls]\ncert = c.crt\nkey = credential:wsgate.key\n\
                    [auth]\nusers_file = credential:users\ntokens_file = credential:tokens\n\
                    [channel:/a]\nmode = echo\n";
        let c = parse_config(text, &dir.ini(), Some(&creds)).unwrap();
        assert_eq!(c.tls.cert, dir.0.join("c.crt"));
        assert_eq!(c.tls.key, creds.join("wsgate.key"));
        assert_eq!(c.auth.users_file, creds.join("users"));
        assert_eq!(c.auth.tokens_file, creds.join("tokens"));
        // Files in the credentials directory are checked like any other.
        let e = parse_config(
            "[auth]\nusers_file = credential:nobody\n[tls]\nself_signed = true\n\
             [channel:/a]\nmode = echo\n",
            &dir.ini(),
            Some(&creds),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.ends_with(&format!(
                ":2: [auth] users_file: file not found: {}",
                creds.join("nobody").display()
            )),
            "{e}"
        );

        // Without $CREDENTIALS_DIRECTORY (or with it empty): an error at the key's line.
        for unset in [None, Some(Path::new(""))] {
            let e = parse_config(text, &dir.ini(), unset)
                .unwrap_err()
                .to_string();
            assert_eq!(
                e.replace(&dir.ini().display().to_string(), "F"),
                "config: F:3: [tls] key: credential: paths need \
                 $CREDENTIALS_DIRECTORY, which systemd sets for LoadCredential= (to run wsgate \
                 by hand, set it to the directory holding the credential files)"
            );
        }

        // A credential is a file name, nothing else.
        for bad in [
            "credential:",
            "credential:a/b",
            "credential:..",
            "credential:/etc/x",
        ] {
            let e = parse_config(
                &with(&format!("[auth]\nusers_file = {bad}\n")),
                &dir.ini(),
                Some(&creds),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(":6: [auth] users_file: `") && e.contains("without `/`"),
                "{bad}: {e}"
            );
        }

        // The pure resolver: only the prefix matters, and plain paths ignore the directory.
        let base = Bases {
            dir: Path::new("/etc/wsgate"),
            credentials: Some(Path::new("/run/credentials/wsgate.service")),
        };
        assert_eq!(
            resolve_path("credential:wsgate.key", &base).unwrap(),
            Path::new("/run/credentials/wsgate.service/wsgate.key")
        );
        assert_eq!(
            resolve_path("users", &base).unwrap(),
            Path::new("/etc/wsgate/users")
        );
        assert_eq!(
            resolve_path("/var/lib/wsgate/session.key", &base).unwrap(),
            Path::new("/var/lib/wsgate/session.key")
        );
        assert_eq!(
            resolve_path("./credential:x", &base).unwrap(),
            Path::new("/etc/wsgate/credential:x")
        );
    }

    #[test]
    fn users_file_must_exist() {
        assert_eq!(
            err(&with("[auth]\nusers_file = nobody\n")),
            "config: F:6: [auth] users_file: file not found: D/nobody"
        );
        assert_eq!(
            err(&with("[auth]\nusers_file =\n")),
            "config: F:6: [auth] users_file: empty path"
        );
        let dir = Dir::new();
        std::fs::remove_file(dir.0.join("users")).unwrap();
        let e = Config::parse(MINIMAL, &dir.ini()).unwrap_err().to_string();
        assert!(
            e.ends_with(&format!(
                ": [auth] users_file: file not found: {}",
                dir.0.join("users").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn structure_errors() {
        assert_eq!(
            err(&format!("workers = 2\n{MINIMAL}")),
            "config: F:1: workers: key outside any section; put it under a `[section]` header"
        );
        assert_eq!(
            err(&with("[bogus]\n")),
            "config: F:5: [bogus]: unknown section; expected server, tls, origins, auth, limits, log, admin, cluster, demo, channel:/path or role:NAME"
        );
        assert_eq!(
            err(&with("[channel]\nmode = echo\n")),
            "config: F:5: [channel]: unknown section; expected server, tls, origins, auth, limits, log, admin, cluster, demo, channel:/path or role:NAME"
        );
        assert_eq!(
            err(&with("[server]\nworkers = 2\n\n# comment\nworkers = 3\n")),
            "config: F:9: [server] workers: repeated key (first set on line 6); keep one"
        );
        assert_eq!(
            err(&with("[channel:/echo]\nmode = echo\n")),
            "config: F:5: [channel:/echo]: repeated section (first on line 3); merge the two"
        );
        assert_eq!(
            err(&with("[server\nworkers = 2\n")),
            "config: F:5: section header must end with `]` (comments go on their own line)"
        );
        assert_eq!(err(&with("[]\n")), "config: F:5: empty section name `[]`");
        assert_eq!(
            err(&with("[server]\njust words\n")),
            "config: F:6: expected `key = value`, a `[section]` header or a `#` comment"
        );
        assert_eq!(
            err(&with("[server]\n= 3\n")),
            "config: F:6: missing key before `=`"
        );
        assert_eq!(err(&with("[tls]\ncert = C:\\certs\\\n")).lines().count(), 1);
        assert!(
            err(&with("[server]\nlisten = a\rb\n")).starts_with("config: F:6: control character")
        );
    }

    #[test]
    fn unknown_keys_in_every_section() {
        for section in [
            "server",
            "tls",
            "origins",
            "auth",
            "limits",
            "log",
            "cluster",
            "demo",
            "channel:/other",
        ] {
            let e = err(&format!(
                "[channel:/echo]\nmode = echo\n\n\n[{section}]\nbogus = 1\n"
            ));
            assert!(
                e.starts_with(&format!(
                    "config: F:6: [{section}] bogus: unknown key; [{section}] accepts "
                )),
                "{e}"
            );
        }
        // Keys are case-sensitive.
        assert!(
            err(&with("[server]\nWorkers = 2\n")).starts_with(
                "config: F:6: [server] Workers: unknown key (did you mean `workers`?)"
            )
        );
        // A typo names the key meant, before the list of every key.
        assert!(err(&with("[server]\nlisen = 127.0.0.1:1\n")).starts_with(
            "config: F:6: [server] lisen: unknown key (did you mean `listen`?); [server] accepts"
        ));
        assert!(
            err(&with("[limts]\nbogus = 1\n"))
                .starts_with("config: F:5: [limts]: unknown section (did you mean `limits`?)")
        );
        // Channel-only keys are not accepted in [limits] and vice versa.
        assert!(
            err(&with("[limits]\nmode = echo\n"))
                .starts_with("config: F:6: [limits] mode: unknown key")
        );
        assert!(
            err(&with("[channel:/x]\nmode = echo\nping_interval = 1s\n"))
                .starts_with("config: F:7: [channel:/x] ping_interval: unknown key")
        );
    }

    #[test]
    fn demo_page_settings() {
        // Off, the channel need not exist.
        let c = ok(&with("[demo]\nchannel = /nowhere\n"));
        assert!(!c.demo.enabled);
        let c = ok(&with(
            "[channel:/chat/*]\nmode = broadcast\n[demo]\nenabled = true\n\
             [origins]\nallow_same_origin = true\n",
        ));
        assert!(c.demo.enabled && c.origins.allow_same_origin);
        assert_eq!(c.demo.channel, "/chat/demo");
        let c = ok(&with(
            "[channel:/room]\nmode = broadcast\n[demo]\nenabled = yes\nchannel = /room\n",
        ));
        assert_eq!(c.demo.channel, "/room");
        assert_eq!(
            err(&with("[demo]\nenabled = true\n")),
            "config: F:6: [demo] enabled: no channel serves the demo channel /chat/demo; add a broadcast [channel:…] for it"
        );
        assert_eq!(
            err(&with("[demo]\nenabled = true\nchannel = /echo\n")),
            "config: F:7: [demo] channel: the demo channel /echo is an echo channel; the page needs a broadcast channel"
        );
        for (bad, why) in [
            ("chat", "must be a path starting with `/`"),
            ("/chat/a b", "only A-Z a-z 0-9"),
            ("/chat/\"x", "only A-Z a-z 0-9"),
            ("/chat/<b>", "only A-Z a-z 0-9"),
            ("/chat?x", "only A-Z a-z 0-9"),
            ("/chat//a", "empty, `.` and `..` segments"),
            ("/chat/../echo", "empty, `.` and `..` segments"),
            ("/chat/", "empty, `.` and `..` segments"),
        ] {
            let e = err(&with(&format!("[demo]\nchannel = {bad}\n")));
            assert!(
                e.starts_with(&format!("config: F:6: [demo] channel: {why}")),
                "{bad}: {e}"
            );
        }
    }

    /// `(section, key, value, line)` of every key `scan` finds in `text`.
    fn scanned(text: &str) -> Vec<(String, String, String, usize)> {
        let sections = scan(text, Path::new("F")).unwrap_or_else(|e| panic!("{e}"));
        sections
            .into_iter()
            .flat_map(|s| {
                s.keys
                    .into_iter()
                    .map(move |k| (s.name.clone(), k.key, k.value, k.line))
            })
            .collect()
    }

    /// The scan reads every accepted file as rust-ini (escapes, quotes and multi-line values
    /// off) read the scan's cleaned copy of it, before the scan became the only parser.
    #[test]
    fn the_scan_reads_values_as_written() {
        let one = |text: &str| {
            let keys = scanned(text);
            assert_eq!(keys.len(), 1, "{text:?}");
            keys[0].2.clone()
        };
        // Quotes are kept, single or double, matched or not.
        assert_eq!(one("[a]\nk = \"x y\"\n"), "\"x y\"");
        assert_eq!(one("[a]\nk = 'x'\n"), "'x'");
        assert_eq!(one("[a]\nk = \"x\n"), "\"x");
        // Escapes are kept as written.
        assert_eq!(
            one("[a]\nk = C:\\certs\\n\\t\\x41\\\\b\n"),
            "C:\\certs\\n\\t\\x41\\\\b"
        );
        // `#` and `;` after the start of a line are part of the value.
        assert_eq!(one("[a]\nk = 2 # two\n"), "2 # two");
        assert_eq!(one("[a]\nk = x;y ; z\n"), "x;y ; z");
        // Whitespace around keys and values goes (tabs too); inside, it stays.
        assert_eq!(
            scanned("  [a]  \n\t key one \t=\t x  y \t\n"),
            [("a".into(), "key one".into(), "x  y".into(), 2)]
        );
        // The first `=` or `:` splits; the rest is the value.
        assert_eq!(
            scanned("[a]\nk: v = w\nl = 127.0.0.1:9\nm :=x\n"),
            [
                ("a".into(), "k".into(), "v = w".into(), 2),
                ("a".into(), "l".into(), "127.0.0.1:9".into(), 3),
                ("a".into(), "m".into(), "=x".into(), 4),
            ]
        );
        // An empty value is the empty string.
        assert_eq!(one("[a]\nk =\n"), "");
        // Section names are trimmed and keep their case; keys keep theirs.
        assert_eq!(
            scanned("[ Server ]\nWorkers = 1\nworkers = 2\n"),
            [
                ("Server".into(), "Workers".into(), "1".into(), 2),
                ("Server".into(), "workers".into(), "2".into(), 3),
            ]
        );
        // A backslash inside a section name or key is kept.
        assert_eq!(
            scanned("[channel:/a\\b]\nk\\l = 1\n"),
            [("channel:/a\\b".into(), "k\\l".into(), "1".into(), 2)]
        );
        // Comments, blank lines, a byte-order mark and CRLF line ends are skipped.
        assert_eq!(
            scanned("\u{feff}# c\n; c\n\n  # c\n[a]\r\nk = v\r\n"),
            [("a".into(), "k".into(), "v".into(), 6)]
        );
    }

    /// What rust-ini would have misread, or merged silently, is refused with its line.
    #[test]
    fn the_scan_refuses_what_an_ini_reader_would_misread() {
        let refused = |text: &str| match scan(text, Path::new("F")) {
            Ok(_) => panic!("accepted: {text:?}"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            refused("[a]\nk = 1\nk = 2\n"),
            "config: F:3: [a] k: repeated key (first set on line 2); keep one"
        );
        assert_eq!(
            refused("[a]\n[a]\n"),
            "config: F:2: [a]: repeated section (first on line 1); merge the two"
        );
        assert_eq!(
            refused("k = 1\n[a]\n"),
            "config: F:1: k: key outside any section; put it under a `[section]` header"
        );
        assert_eq!(
            refused("[a]\nk = C:\\\n"),
            "config: F:2: [a] k: a value must not end with `\\` (it would continue on the next line)"
        );
        // rust-ini read `\]` as part of the name and the following lines with it.
        assert_eq!(
            refused("[channel:/a\\]\nmode = echo\n"),
            "config: F:1: section header must not end with `\\]`"
        );
        assert_eq!(
            refused("[a] # c\n"),
            "config: F:1: section header must end with `]` (comments go on their own line)"
        );
        assert_eq!(
            refused("[a]\n\u{b}k = 1\n"),
            "config: F:2: control character '\\u{b}' in the line"
        );
    }

    #[test]
    fn comments_and_whitespace() {
        let c = ok(
            "# top\n; also a comment\n\n  [tls]  \n   self_signed   =   true   \n\t# indented comment\n[channel:/echo]\r\nmode=echo\r\n",
        );
        assert!(c.tls.self_signed);
        // An inline comment is part of the value, and so an error.
        assert_eq!(
            err(&with("[server]\nworkers = 2 # two\n")),
            "config: F:6: [server] workers: `2 # two` is not a whole number"
        );
        // Escapes and quotes are off: Windows paths and quotes survive.
        let c = ok(
            "[tls]\nself_signed = true\ncert = C:\\certs\\\"a\".pem\n[channel:/a]\nmode = echo\n",
        );
        assert!(
            c.tls
                .cert
                .to_string_lossy()
                .ends_with("C:\\certs\\\"a\".pem"),
            "{:?}",
            c.tls.cert
        );
        // `key: value` is rust-ini's other separator.
        assert_eq!(ok(&with("[server]\nworkers: 7\n")).server.workers.get(), 7);
        // A byte-order mark is ignored.
        ok(&format!("\u{feff}{MINIMAL}"));
    }

    #[test]
    fn bad_values() {
        let cases = [
            (
                "[server]\nlisten = 8443\n",
                "[server] listen: `8443` is not an address:port",
            ),
            (
                "[server]\nlisten = localhost:8443\n",
                "[server] listen: `localhost:8443` is not an address:port",
            ),
            (
                "[server]\nworkers = 0\n",
                "[server] workers: must be at least 1",
            ),
            (
                "[server]\nworkers = -1\n",
                "[server] workers: must not be negative",
            ),
            (
                "[server]\nworkers = 2K\n",
                "[server] workers: `2K` is not a whole number",
            ),
            ("[server]\nworkers =\n", "[server] workers: empty value"),
            (
                "[server]\nqueue = -3\n",
                "[server] queue: must not be negative",
            ),
            (
                "[server]\nmax_connections_per_ip = 0\n",
                "[server] max_connections_per_ip: must be at least 1",
            ),
            (
                "[server]\nworker_stack_size = 0\n",
                "[server] worker_stack_size: must be greater than 0",
            ),
            (
                "[server]\nworker_stack_size = 65535\n",
                "[server] worker_stack_size: 65535 bytes is too small; at least 64kib",
            ),
            (
                "[server]\nhandshake_stack_size = 0\n",
                "[server] handshake_stack_size: must be greater than 0",
            ),
            (
                "[server]\nhandshake_stack_size = 127K\n",
                "[server] handshake_stack_size: 130048 bytes is too small; at least 128kib",
            ),
            (
                "[server]\nhandshake_stack_size = lots\n",
                "[server] handshake_stack_size: ",
            ),
            (
                "[server]\nshutdown_grace = -5s\n",
                "[server] shutdown_grace: must not be negative",
            ),
            (
                "[server]\ndrain_delay = -1s\n",
                "[server] drain_delay: must not be negative",
            ),
            (
                "[server]\nproxy_protocol = v2\n",
                "[server] proxy_protocol: `v2` is not a boolean",
            ),
            (
                "[tls]\nhandshake_timeout = 0s\n",
                "[tls] handshake_timeout: must be greater than 0",
            ),
            (
                "[tls]\nself_signed = 2\n",
                "[tls] self_signed: `2` is not a boolean",
            ),
            (
                "[origins]\nallow = https://a.com,\n",
                "[origins] allow: empty entry in the list (a stray comma?)",
            ),
            (
                "[origins]\nallow = https://a.com, a.com\n",
                "[origins] allow: `a.com`: expected scheme://host[:port]",
            ),
            (
                "[origins]\nallow = ftp://a.com\n",
                "[origins] allow: `ftp://a.com`: scheme must be http or https",
            ),
            (
                "[origins]\nallow = null\n",
                "[origins] allow: `null`: `null` is the opaque origin",
            ),
            (
                "[auth]\ncache_size = -1\n",
                "[auth] cache_size: must not be negative",
            ),
            (
                "[auth]\nmax_concurrent_hashes = 0\n",
                "[auth] max_concurrent_hashes: must be at least 1",
            ),
            (
                "[auth]\ncache_ttl = 10 minutes\n",
                "[auth] cache_ttl: unknown unit in `10 minutes`",
            ),
            (
                "[limits]\nupgrade_timeout = 0\n",
                "[limits] upgrade_timeout: must be greater than 0",
            ),
            (
                "[limits]\nmax_request_head = 0\n",
                "[limits] max_request_head: must be greater than 0",
            ),
            (
                "[limits]\nmax_request_head = 65537\n",
                "[limits] max_request_head: must be at most 64KiB",
            ),
            (
                "[limits]\nmax_headers = 0\n",
                "[limits] max_headers: must be at least 1",
            ),
            (
                "[limits]\nmax_headers = 125\n",
                "[limits] max_headers: must be at most 124",
            ),
            (
                "[limits]\nping_interval = 0\n",
                "[limits] ping_interval: must be greater than 0",
            ),
            (
                "[limits]\nwrite_timeout = 0ms\n",
                "[limits] write_timeout: must be greater than 0",
            ),
            (
                "[limits]\nmax_message_size = 0\n",
                "[limits] max_message_size: must be greater than 0",
            ),
            (
                "[limits]\nread_buffer_size = 0\n",
                "[limits] read_buffer_size: must be greater than 0",
            ),
            (
                "[limits]\noutbox = 0\n",
                "[limits] outbox: must be at least 1",
            ),
            (
                "[limits]\nslow_consumer = block\n",
                "[limits] slow_consumer: `block` is not a slow_consumer action; expected disconnect or drop",
            ),
            (
                "[limits]\nmax_message_size = 2G\n",
                "[limits] max_message_size: `2G` is too large; at most 1gib",
            ),
            (
                "[log]\nlevel = verbose\n",
                "[log] level: `verbose` is not a log level",
            ),
            (
                "[channel:/x]\nmode = fanout\n",
                "[channel:/x] mode: `fanout` is not a mode; expected echo, broadcast or proxy",
            ),
            (
                "[channel:/x]\nmode = echo\noutbox = 0\n",
                "[channel:/x] outbox: must be at least 1",
            ),
        ];
        for (extra, want) in cases {
            // [tls] is in MINIMAL; these cases bring their own, after four lines.
            let text = match extra.strip_prefix("[tls]\n") {
                Some(rest) => {
                    format!(
                        "[channel:/echo]\nmode = echo\n\n\n[tls]\n{rest}cert = c.crt\nkey = c.key\n"
                    )
                }
                None => with(extra),
            };
            let e = err(&text);
            let line = 4 + extra.matches('\n').count();
            let want = format!("config: F:{line}: {want}");
            assert!(
                e.to_lowercase().starts_with(&want.to_lowercase()),
                "got  {e}\nwant {want}"
            );
        }
        // The write buffer may be 0.
        assert_eq!(
            ok(&with("[limits]\nwrite_buffer_size = 0\n"))
                .limits
                .ws
                .write_buffer_size,
            0
        );
    }

    #[test]
    fn nothing_to_serve() {
        assert_eq!(
            err("[tls]\nself_signed = true\n"),
            "config: F: nothing to serve: add at least one [channel:/path] section with a mode"
        );
        assert_eq!(
            err(""),
            "config: F: [tls] cert: file not found: D/wsgate.crt"
        );
    }

    #[test]
    fn channel_paths() {
        let c = ok(&with(
            "[channel:/chat/*]\nmode = broadcast\n[channel:/*]\nmode = echo\n[channel:/a/b.c-d_e~%20]\nmode = echo\n",
        ));
        assert_eq!(
            c.channels[1].pattern,
            ChannelPattern::Prefix("/chat/".into())
        );
        assert_eq!(c.channels[1].mode, Mode::Broadcast);
        assert_eq!(c.channels[2].pattern, ChannelPattern::Prefix("/".into()));
        assert_eq!(
            c.channels[3].pattern,
            ChannelPattern::Exact("/a/b.c-d_e~%20".into())
        );
        let bad = [
            ("[channel:echo]", "channel path `echo` must start with `/`"),
            ("[channel:]", "channel path `` must start with `/`"),
            ("[channel:/a?b]", "channel path `/a?b` must not contain `?`"),
            ("[channel:/a#b]", "channel path `/a#b` must not contain `#`"),
            (
                "[channel:/a b]",
                "channel path `/a b` contains ' '; only visible ascii, no spaces",
            ),
            (
                "[channel:/chat*]",
                "channel path `/chat*`: `*` is only allowed as a single trailing `/*` (e.g. /chat/*)",
            ),
            ("[channel:/*/x]", "channel path `/*/x`: `*` is only allowed"),
            (
                "[channel:/a/*/*]",
                "channel path `/a/*/*`: `*` is only allowed",
            ),
            (
                "[channel:/a/**]",
                "channel path `/a/**`: `*` is only allowed",
            ),
            (
                "[channel:/caf\u{e9}]",
                "channel path `/caf\u{e9}` contains '\u{e9}'",
            ),
        ];
        for (header, want) in bad {
            let e = err(&with(&format!("{header}\nmode = echo\n")));
            let name = &header[1..header.len() - 1];
            let want = format!("config: F:5: [{name}]: {want}");
            assert!(e.starts_with(&want), "got  {e}\nwant {want}");
        }
        assert_eq!(
            err(&with("[channel:/x]\nslow_consumer = drop\n")),
            "config: F:5: [channel:/x] mode: missing; every channel needs mode = echo, broadcast or proxy"
        );
    }

    #[test]
    fn duplicate_channel_patterns() {
        // Only reachable through the same section name, which is a repeated section.
        assert!(err(&with("[channel:/echo]\nmode = broadcast\n")).contains("repeated section"));
        // `/chat/*` and `/chat/` are different patterns.
        let c = ok(&with(
            "[channel:/chat/*]\nmode = broadcast\n[channel:/chat/]\nmode = echo\n",
        ));
        assert_eq!(c.channels.len(), 3);
    }

    #[test]
    fn proxy_channels_name_their_backend() {
        let c = ok(&with(
            "[channel:/app/*]\nmode = proxy\nbackend = ws://127.0.0.1:8080\n\
             [channel:/sock]\nmode = proxy\nbackend = unix:/run/app.sock\n\
             backend_connect_timeout = 2s\n\
             [channel:/remote]\nmode = proxy\nbackend = wss://[::1]/ws/\n",
        ));
        let b = |path: &str| c.channel_for(path).unwrap().backend.clone().unwrap();
        let app = b("/app/x");
        assert_eq!(
            app.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 8080,
                tls: false
            }
        );
        assert_eq!(app.base_path, "/");
        assert_eq!(app.connect_timeout, Duration::from_secs(5));
        let sock = b("/sock");
        assert_eq!(
            sock.endpoint,
            Endpoint::Unix(PathBuf::from("/run/app.sock"))
        );
        assert_eq!(sock.connect_timeout, Duration::from_secs(2));
        let remote = b("/remote");
        assert_eq!(remote.endpoint.to_string(), "wss://[::1]:443");
        assert_eq!(
            (remote.base_path.as_str(), remote.ca.as_ref()),
            ("/ws/", None)
        );
        assert!(c.channel_for("/echo").unwrap().backend.is_none());
    }

    #[test]
    fn bad_backends_are_refused_with_what_is_accepted() {
        let cases = [
            (
                "mode = proxy\n",
                "backend: missing; a mode = proxy channel needs backend",
            ),
            (
                "mode = echo\nbackend = ws://a:1\n",
                "backend: only a mode = proxy channel",
            ),
            (
                "mode = proxy\nbackend = http://a:1\n",
                "backend: `http://a:1` is not a backend URL",
            ),
            (
                "mode = proxy\nbackend = ws://u:p@a:1\n",
                "a backend URL has no user, query",
            ),
            (
                "mode = proxy\nbackend = ws://a:1/?x=1\n",
                "a backend URL has no user, query",
            ),
            (
                "mode = proxy\nbackend = ws://a:0\n",
                "port `0` is not 1 to 65535",
            ),
            ("mode = proxy\nbackend = ws://:80\n", "names no host"),
            (
                "mode = proxy\nbackend = unix:run/app.sock\n",
                "the socket path must be absolute",
            ),
            (
                "mode = proxy\nbackend = ws://a:1\nbackend_ca = ca.pem\n",
                "backend_ca: only a wss:// backend's certificate is verified",
            ),
            (
                "mode = proxy\nbackend = wss://a:1\nbackend_ca = missing.pem\n",
                "backend_ca: file not found",
            ),
            (
                "mode = proxy\nbackend = ws://a:1\nbackend_connect_timeout = 0s\n",
                "backend_connect_timeout: must be greater than 0",
            ),
        ];
        for (body, want) in cases {
            let e = err(&with(&format!("[channel:/p]\n{body}")));
            assert!(e.contains(want), "{body}: got {e}\nwant {want}");
        }
    }

    #[test]
    fn channel_for() {
        let c = ok(&with(
            "[channel:/chat/*]\nmode = broadcast\n[channel:/chat/vip/*]\nmode = broadcast\n\
             [channel:/chat/lobby]\nmode = echo\n",
        ));
        let pat = |p: &str| c.channel_for(p).map(|c| c.pattern.clone());
        assert_eq!(pat("/echo"), Some(ChannelPattern::Exact("/echo".into())));
        assert_eq!(pat("/echo/"), None);
        assert_eq!(pat("/ech"), None);
        assert_eq!(
            pat("/chat/lobby"),
            Some(ChannelPattern::Exact("/chat/lobby".into()))
        );
        assert_eq!(
            pat("/chat/room"),
            Some(ChannelPattern::Prefix("/chat/".into()))
        );
        assert_eq!(
            pat("/chat/a/b"),
            Some(ChannelPattern::Prefix("/chat/".into()))
        );
        assert_eq!(
            pat("/chat/vip/x"),
            Some(ChannelPattern::Prefix("/chat/vip/".into()))
        );
        assert_eq!(
            pat("/chat/vip/"),
            Some(ChannelPattern::Prefix("/chat/".into()))
        );
        assert_eq!(pat("/chat/"), None);
        assert_eq!(pat("/chat"), None);
        assert_eq!(pat("/other"), None);
    }

    #[test]
    fn channel_limits_inherit_and_override() {
        let c = ok(&with(
            "[limits]\nmax_message_size = 32K\nmax_frame_size = 16K\noutbox = 8\n\
             [channel:/big]\nmode = broadcast\nmax_message_size = 1M\nmax_frame_size = 1M\n\
             max_write_buffer_size = 2M\nslow_consumer = drop\n",
        ));
        let echo = &c.channels[0].limits;
        assert_eq!(echo, &c.limits.ws);
        assert_eq!(echo.max_message_size.get(), 32 * 1024);
        assert_eq!(echo.max_frame_size.get(), 16 * 1024);
        assert_eq!(echo.outbox.get(), 8);
        let big = &c.channels[1].limits;
        assert_eq!(big.max_message_size.get(), 1 << 20);
        assert_eq!(big.max_frame_size.get(), 1 << 20);
        assert_eq!(big.max_write_buffer_size.get(), 2 << 20);
        assert_eq!(big.outbox.get(), 8);
        assert_eq!(big.read_buffer_size.get(), 4096);
        assert_eq!(big.slow_consumer, SlowConsumer::Drop);
        let _ = big.websocket_config();
    }

    #[test]
    fn frame_not_larger_than_message() {
        ok(&with(
            "[limits]\nmax_message_size = 1000\nmax_frame_size = 1000\n",
        ));
        assert_eq!(
            err(&with(
                "[limits]\nmax_message_size = 1000\nmax_frame_size = 1001\n"
            )),
            "config: F:7: [limits] max_frame_size: max_frame_size (1001) must not exceed max_message_size (1000)"
        );
        // On a channel, against the inherited value, pointing at the key the channel set.
        assert_eq!(
            err(&with("[channel:/x]\nmode = echo\nmax_message_size = 1K\n")),
            "config: F:7: [channel:/x] max_message_size: max_frame_size (65536, inherited from [limits]) must not exceed max_message_size (1024)"
        );
        ok(&with(
            "[channel:/x]\nmode = echo\nmax_message_size = 1K\nmax_frame_size = 1K\n",
        ));
    }

    #[test]
    fn write_buffer_must_hold_a_frame() {
        // Defaults: 8K + 64K + 14 = 73742.
        ok(&with("[limits]\nmax_write_buffer_size = 73742\n"));
        assert_eq!(
            err(&with("[limits]\nmax_write_buffer_size = 73741\n")),
            "config: F:6: [limits] max_write_buffer_size: max_write_buffer_size (73741) must be at least \
             write_buffer_size (8192) + max_message_size (65536) + 14 = 73742 (a whole frame must fit after a full write buffer)"
        );
        // write_buffer_size 0: max_write_buffer_size must still exceed it by message + 14.
        ok(&with(
            "[limits]\nwrite_buffer_size = 0\nmax_message_size = 100\nmax_frame_size = 100\nmax_write_buffer_size = 114\n",
        ));
        assert!(err(&with("[limits]\nwrite_buffer_size = 0\nmax_message_size = 100\nmax_frame_size = 100\nmax_write_buffer_size = 113\n"))
            .starts_with("config: F:9: [limits] max_write_buffer_size: "));
        // Raising the message size in a channel breaks the inherited write buffer.
        let e = err(&with(
            "[channel:/x]\nmode = echo\nmax_message_size = 120K\nmax_frame_size = 1K\n",
        ));
        assert!(
            e.starts_with("config: F:7: [channel:/x] max_message_size: max_write_buffer_size (131072, inherited from [limits]) must be at least write_buffer_size (8192, inherited from [limits]) + max_message_size (122880) + 14 = 131086"),
            "{e}"
        );
        ok(&with(
            "[channel:/x]\nmode = echo\nmax_message_size = 120K\nmax_frame_size = 1K\nmax_write_buffer_size = 131086\n",
        ));
        assert!(err(&with("[channel:/x]\nmode = echo\nmax_message_size = 120K\nmax_frame_size = 1K\nmax_write_buffer_size = 131085\n"))
            .starts_with("config: F:9: [channel:/x] max_write_buffer_size: "));
        // write_buffer_size equal to max_write_buffer_size is refused (tungstenite would panic).
        assert!(
            err(&with("[limits]\nwrite_buffer_size = 128K\n"))
                .starts_with("config: F:6: [limits] write_buffer_size: ")
        );
    }

    #[test]
    fn idle_timeout_exceeds_ping_interval() {
        ok(&with(
            "[limits]\nping_interval = 10s\nidle_timeout = 10001ms\n",
        ));
        assert_eq!(
            err(&with("[limits]\nping_interval = 10s\nidle_timeout = 10s\n")),
            "config: F:7: [limits] idle_timeout: idle_timeout (10s) must be greater than ping_interval (10s), so a ping can be answered before the connection counts as idle"
        );
        assert!(err(&with("[limits]\nping_interval = 2m\n")).starts_with("config: F:6: [limits] ping_interval: idle_timeout (75s) must be greater than ping_interval (120s)"));
    }

    #[test]
    fn plaintext_listener_needs_loopback_or_allow_plaintext() {
        // No [tls] section at all: with tls off neither cert nor key is needed.
        let chan = "[channel:/echo]\nmode = echo\n";
        for listen in ["127.0.0.1:9001", "[::1]:9001", "[::ffff:127.0.0.1]:9001"] {
            let c = ok(&format!("[server]\nlisten = {listen}\ntls = off\n{chan}"));
            assert!(!c.server.tls && !c.server.allow_plaintext, "{listen}");
        }
        for listen in ["0.0.0.0:9001", "[::]:9001", "192.0.2.7:9001"] {
            let e = err(&format!("[server]\nlisten = {listen}\ntls = off\n{chan}"));
            assert!(
                e.starts_with(&format!(
                    "config: F:3: [server] tls: off on the non-loopback address {}",
                    listen.parse::<SocketAddr>().unwrap()
                )) && e.contains("allow_plaintext = true"),
                "{e}"
            );
        }
        let c = ok(&format!(
            "[server]\nlisten = 0.0.0.0:9001\ntls = off\nallow_plaintext = true\n{chan}"
        ));
        assert!(!c.server.tls && c.server.allow_plaintext);
        // TLS on (the default) still needs its files, whatever allow_plaintext says.
        assert!(
            err(&format!("[server]\nallow_plaintext = true\n{chan}"))
                .starts_with("config: F: [tls] cert: file not found")
        );
        assert_eq!(
            err(&format!(
                "[server]\nlisten = 127.0.0.1:1\ntls = off\n[tls]\nclient_auth = required\n{chan}"
            )),
            "config: F:5: [tls] client_auth: client certificates need TLS, but [server] tls is off"
        );
    }

    /// Reads `conf/wsgate.ini` and parses it from a temporary directory holding a `users` file.
    fn shipped() -> (String, Dir) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/wsgate.ini");
        (std::fs::read_to_string(path).unwrap(), Dir::new())
    }

    #[test]
    fn shipped_example_parses() {
        let (text, dir) = shipped();
        let c = Config::parse(&text, &dir.ini()).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.tls.self_signed);
        assert_eq!(c.tls.cert, dir.0.join("../certs/wsgate.crt"));
        assert_eq!(c.tls.key, dir.0.join("../certs/wsgate.key"));
        assert!(c.origins.allow_missing);
        assert!(!c.origins.allow_any);
        assert_eq!(
            c.origins.allow,
            vec![OriginPattern::parse("https://localhost:8443").unwrap()]
        );
        assert_eq!(c.auth.users_file, dir.0.join("users"));
        assert_eq!(c.server.listen, "127.0.0.1:8443".parse().unwrap());
        let patterns: Vec<_> = c
            .channels
            .iter()
            .map(|c| (c.pattern.clone(), c.mode))
            .collect();
        assert_eq!(
            patterns,
            vec![
                (ChannelPattern::Exact("/echo".into()), Mode::Echo),
                (ChannelPattern::Prefix("/chat/".into()), Mode::Broadcast),
                (ChannelPattern::Exact("/broadcast".into()), Mode::Broadcast),
            ]
        );
        assert_eq!(c.admin, None);
        assert_eq!(c.roles.len(), 1);
        let users = &c.roles[0];
        assert_eq!(users.name, "users");
        assert_eq!(users.members, Members::Everyone);
        let written =
            |v: &[PathPattern]| v.iter().map(|p| p.as_str().to_string()).collect::<Vec<_>>();
        assert_eq!(
            written(&users.subscribe),
            ["/echo", "/chat/*", "/broadcast"]
        );
        assert_eq!(written(&users.publish), ["/echo", "/chat/*", "/broadcast"]);
        // Under default deny, the demo user can still use every demo channel.
        for path in ["/echo", "/chat/lobby", "/broadcast"] {
            let a = crate::policy::acl::evaluate(&c.roles, Some("demo"), path);
            assert!(a.can_subscribe() && a.can_publish(), "{path}");
        }
        assert_eq!(
            crate::cli::access_report::lint(&c, &["demo"]),
            Vec::<String>::new()
        );
    }

    /// Keys without a default: the example shows them with an example value, left commented out.
    /// (`memory_limit`'s default is derived from the host at start; the example shows it for a
    /// 1 GB host.)
    const UNSET_BY_DEFAULT: &[(&str, &str)] = &[
        ("server", "memory_limit"),
        ("tls", "client_ca"),
        ("admin", "listen"),
        ("admin", "token_file"),
        ("cluster", "redis_url"),
        ("cluster", "instance_id"),
    ];

    /// Every `#key = value` line in the example documents the true default: uncommenting them all
    /// (except where the example sets the key, or the key has no default) changes nothing, and
    /// every known key is listed, channel and role keys included.
    #[test]
    fn shipped_example_documents_the_defaults() {
        let (text, dir) = shipped();
        let mut section = String::new();
        let mut active: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[') {
                section = name.trim_end_matches(']').to_string();
            } else if !line.starts_with('#') && line.contains('=') {
                active.push((
                    section.clone(),
                    line.split('=').next().unwrap().trim().to_string(),
                ));
            }
        }
        let mut documented: Vec<(String, String)> = Vec::new();
        let mut uncommented = String::new();
        section.clear();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[') {
                section = name.trim_end_matches(']').to_string();
            }
            let default = Some(line)
                .filter(|_| !section.is_empty())
                .and_then(|line| line.strip_prefix('#'))
                .filter(|rest| rest.starts_with(|c: char| c.is_ascii_lowercase()))
                .and_then(|rest| rest.split_once(" = "))
                .map(|(k, _)| k.to_string());
            match default {
                Some(key) => {
                    documented.push((section.clone(), key.clone()));
                    let entry = (section.clone(), key);
                    if active.contains(&entry) || UNSET_BY_DEFAULT.contains(&(&entry.0, &entry.1)) {
                        uncommented.push_str(line);
                    } else {
                        uncommented.push_str(&line[1..]);
                    }
                }
                None => uncommented.push_str(line),
            }
            uncommented.push('\n');
        }
        let a = Config::parse(&text, &dir.ini()).unwrap();
        let b = Config::parse(&uncommented, &dir.ini()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        for (name, keys) in SECTIONS {
            for key in *keys {
                let entry = (name.to_string(), key.to_string());
                assert!(
                    documented.contains(&entry) || active.contains(&entry),
                    "[{name}] {key} is not in conf/wsgate.ini"
                );
            }
        }
        for key in CHANNEL_KEYS.iter().chain(ROLE_KEYS) {
            assert!(
                text.lines()
                    .any(|l| l.starts_with('#') && l.contains(&format!("{key} "))
                        || l.starts_with(&format!("{key} = "))),
                "channel/role key {key} is not described in conf/wsgate.ini"
            );
        }
        // The example values of keys without a default are valid.
        let admin = text.replace("#listen = 127.0.0.1:9480", "listen = 127.0.0.1:9480");
        let c = Config::parse(&admin, &dir.ini()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.admin.unwrap().listen, "127.0.0.1:9480".parse().unwrap());
        let cluster = text
            .replace(
                "#redis_url = redis://127.0.0.1:6379/",
                "redis_url = redis://127.0.0.1:6379/",
            )
            .replace("#instance_id = pi-kitchen", "instance_id = pi-kitchen");
        let c = Config::parse(&cluster, &dir.ini()).unwrap_or_else(|e| panic!("{e}"));
        let url = c.cluster.redis_url.unwrap();
        assert_eq!(url.secret(), "redis://127.0.0.1:6379/");
        assert_eq!(c.cluster.instance_id, "pi-kitchen");
        std::fs::write(dir.0.join("clients-ca.pem"), "").unwrap();
        let mtls = text.replace(
            "#client_ca = clients-ca.pem",
            "client_ca = clients-ca.pem\nclient_auth = required",
        );
        let c = Config::parse(&mtls, &dir.ini()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.tls.client_ca, Some(dir.0.join("clients-ca.pem")));
    }
}
