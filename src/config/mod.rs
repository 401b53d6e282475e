//! The configuration: the INI file parsed once into typed, validated values.
//! Owns every default, every unit, every cross-field rule; nothing downstream re-checks a value
//! or reads the INI again. A reload builds a whole new `Config` and swaps it in.
//!
//! Here: the typed [`Config`], its lookups and [`Config::load`], which runs the steps in order:
//! `scan.rs` (the one parse), the tables of `tables.rs` (every key, its default, parser and doc;
//! `keys.rs` says what a row is, `lookup.rs` finds a section's table and checks names against
//! them), `sections.rs` (each section into
//! its typed part, with the parsers of `values.rs` and the rules between keys of `validate.rs`).
//! [`ConfigError`] is in `error.rs`, the "did you mean" of unknown names in `suggest.rs`;
//! `changes.rs` tells a reload which keys changed and what each row says a reload does with it.

mod changes;
mod error;
mod keys;
mod lookup;
mod scan;
mod sections;
pub(crate) mod suggest;
mod tables;
mod validate;
mod values;

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::changes::{Change, reload_table};
pub use self::error::ConfigError;
pub use self::keys::Reload;
use self::keys::{CHANNEL_PREFIX, ROLE_PREFIX};
use self::scan::Section;
pub use self::tables::DEFAULT_ADMIN_MAX_CONNECTIONS;
use self::values::Bases;
pub use self::values::CREDENTIALS_ENV;
pub use self::values::MIN_BACKOFF;
use crate::rules::acl::{ChannelPattern, Role};
use crate::rules::origin::{OriginPattern, OriginPolicy};

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
    /// unless a role grants it (see [`crate::rules::acl`]).
    pub roles: Vec<Role>,
    /// `[admin]`: the admin endpoint, `None` when `listen` is not set.
    pub admin: Option<AdminConfig>,
    /// `[cluster]`: the Redis backbone between instances (inactive without `redis_url`).
    pub cluster: ClusterConfig,
    /// `[demo]`: the built-in demo page at `GET /` (off by default).
    pub demo: DemoConfig,
    pub log_level: log::LevelFilter,
    /// The file's sections and keys as written, for [`Config::changes_since`].
    written: Written,
}

/// The sections and keys as written. `Debug` shows only how many: the values may hold secrets
/// (a Redis password), which the typed fields keep out of `Debug`.
#[derive(Clone)]
struct Written(Vec<scan::ScannedSection>);

impl fmt::Debug for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Written({} sections)", self.0.len())
    }
}

/// `[server]`: the listener, the worker pool and its admission bounds.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `listen`, default `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// `workers`: threads, each serving one connection for its whole life. None (unset): as many
    /// as the host's memory holds beside everything else, at most 1024 (see
    /// `server::budget`); what grows with traffic is bounded by `memory_limit`, not by the
    /// product of per-connection maxima.
    pub workers: Option<NonZeroUsize>,
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
    /// worker. None (unset): half of `workers`, rounded up; never more than `workers`.
    pub max_pre_auth: Option<NonZeroUsize>,
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
    /// `max_concurrent_hashes`: Argon2 runs at once (each takes the users file's `m`, ~19 MiB).
    /// None (unset): 2, or 1 where the host's memory is small (see `server::budget`).
    pub max_concurrent_hashes: Option<NonZeroUsize>,
    /// `max_file_size`: the largest users or tokens file loaded (at start, a larger one fails;
    /// on reload, the running one is kept). Default 256 KiB.
    pub max_file_size: NonZeroUsize,
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
    /// `allow_hosts`: host names (normalised, no port) a request's `Host` may name besides the
    /// listen address (and `localhost` on a loopback or wildcard listen address).
    pub allow_hosts: Vec<String>,
    /// `allow_origins`: web page origins whose requests (`Origin`, `Sec-Fetch-Site`) the admin
    /// API takes; empty: none.
    pub allow_origins: Vec<OriginPattern>,
}

/// `[cluster]`: the broadcast backbone shared by several instances through a capped Redis Stream.
/// All of it is bound at start (a reload reports a change as needing a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis_url`: `redis://` or `rediss://` (TLS), optionally with a user and password. `None`
    /// (the default): a purely local hub, no Redis.
    pub redis_url: Option<RedisUrl>,
    /// `instance_id`: this instance's name on the backbone (with the process's random epoch, a
    /// message's origin). Default: the host name, the process id and a random part drawn at
    /// each start, joined by `-`.
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
    /// `read_buffer_size`, default 1 KiB.
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
    /// `mode`, with a proxy channel's `backend` and its settings.
    pub serving: Serving,
    pub limits: WsLimits,
    /// `anonymous`: clients without credentials may connect, with the rights of the role named
    /// `anonymous` (none if there is no such role). Default false.
    pub anonymous: bool,
    /// `on_forbidden`: what happens when a connected client without publish rights sends a
    /// message: `close` (1008 "publish not allowed", the default) or `drop` (dropped and counted).
    pub on_forbidden: Overflow,
    /// `history_size` and `history_ttl`: `Some` when a broadcast channel keeps its last
    /// broadcasts per path (see docs/history.md).
    pub history: Option<Retention>,
    /// `presence`: enveloped subscribers get a notice when someone joins or leaves their path.
    /// Default off; broadcast channels only.
    pub presence: bool,
    /// The section header's line in the config file (`None` if built in code).
    pub line: Option<usize>,
}

impl ChannelConfig {
    /// Its `mode`, without what a proxy channel's carries.
    pub fn mode(&self) -> Mode {
        match self.serving {
            Serving::Echo => Mode::Echo,
            Serving::Broadcast => Mode::Broadcast,
            Serving::Proxy(_) => Mode::Proxy,
        }
    }

    /// A proxy channel's backend; `None` for the other modes.
    pub fn backend(&self) -> Option<&Backend> {
        match &self.serving {
            Serving::Proxy(backend) => Some(backend),
            Serving::Echo | Serving::Broadcast => None,
        }
    }
}

/// What a channel does with its connections: its `mode`, a proxy channel's with its backend.
#[derive(Debug, Clone)]
pub enum Serving {
    /// `mode = echo`.
    Echo,
    /// `mode = broadcast`.
    Broadcast,
    /// `mode = proxy`, to this backend.
    Proxy(Backend),
}

/// What a broadcast channel keeps of its broadcasts, per path (`history_size`, `history_ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `history_size`: the most broadcasts kept; at most the channel's `outbox`, since a
    /// recovery is queued in the outbox whole.
    pub size: NonZeroUsize,
    /// `history_ttl`: a kept broadcast older than this is dropped; `None` (`0s`, the default):
    /// only `size` pushes broadcasts out.
    pub ttl: Option<Duration>,
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

    /// [`Config::load`] with `credentials` standing for `$CREDENTIALS_DIRECTORY` (what
    /// `credential:` paths are relative to), whatever the environment says.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_with_credentials(
        path: &Path,
        credentials: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        parse_config(&text, path, credentials)
    }

    /// The channel serving `path`, if any (exact first, then the longest prefix).
    pub fn channel_for(&self, path: &str) -> Option<&ChannelConfig> {
        find_channel(&self.channels, path)
    }

    /// Which channel serves `path`, if any, as [`Config::channel_for`] finds it.
    pub fn channel_id_for(&self, path: &str) -> Option<ChannelId> {
        find_channel_index(&self.channels, path).map(ChannelId)
    }

    /// The channel `id` names: `id` must come from this config ([`Config::channel_id_for`]).
    pub fn channel(&self, id: ChannelId) -> &ChannelConfig {
        &self.channels[id.0]
    }
}

/// One of a [`Config`]'s channels: its place in `channels`, made only by
/// [`Config::channel_id_for`]. It means something only with the config that gave it (and with
/// what was built from that config in the same order, channel by channel); a reload's config is
/// another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelId(usize);

impl ChannelId {
    /// The channel's place in `channels`, for a list built from them in order.
    pub fn index(self) -> usize {
        self.0
    }
}

/// The channel of `channels` serving `path`: an exact path first, else the longest matching
/// prefix pattern.
fn find_channel<'c>(channels: &'c [ChannelConfig], path: &str) -> Option<&'c ChannelConfig> {
    find_channel_index(channels, path).map(|i| &channels[i])
}

/// [`find_channel`]'s answer as a place in `channels`.
fn find_channel_index(channels: &[ChannelConfig], path: &str) -> Option<usize> {
    let exact = channels
        .iter()
        .position(|c| matches!(&c.pattern, ChannelPattern::Exact(p) if p == path));
    exact.or_else(|| {
        channels
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match &c.pattern {
                ChannelPattern::Prefix(p)
                    if path.len() > p.len() && path.starts_with(p.as_str()) =>
                {
                    Some((i, p.len()))
                }
                _ => None,
            })
            .max_by_key(|&(_, len)| len)
            .map(|(i, _)| i)
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

/// Parses `text` read from `source`; `credentials` is `$CREDENTIALS_DIRECTORY` (a parameter, so
/// tests need not set the environment).
fn parse_config(
    text: &str,
    source: &Path,
    credentials: Option<&Path>,
) -> Result<Config, ConfigError> {
    let scanned = scan::scan(text, source)?;
    let sections: Vec<Section<'_>> = scanned.iter().map(|s| Section::new(source, s)).collect();
    lookup::check_names(&sections)?;

    let base = Bases {
        dir: source.parent().unwrap_or(Path::new("")),
        credentials,
    };
    let fixed = |name| sections::fixed(&sections, source, name);
    let server = sections::server(&fixed("server"))?;
    let tls = sections::tls(&fixed("tls"), &base, server.tls)?;
    let origins = sections::origins(&fixed("origins"))?;
    let auth = sections::auth(&fixed("auth"), &base)?;
    let limits = sections::limits(&fixed("limits"))?;
    let log_level = sections::log_level(&fixed("log"))?;
    let admin = sections::admin(&fixed("admin"), &server, &base)?;
    let cluster = sections::cluster(&fixed("cluster"))?;
    let demo_section = fixed("demo");
    let demo = sections::demo(&demo_section)?;

    let mut channels: Vec<ChannelConfig> = Vec::new();
    for s in &sections {
        if let Some(path) = s.name.strip_prefix(CHANNEL_PREFIX) {
            let channel = sections::channel(s, path, &limits.ws, &base)?;
            validate::channel_is_new(s, &channels, &channel)?;
            channels.push(channel);
        }
    }
    validate::something_to_serve(source, &channels)?;
    let mut roles: Vec<Role> = Vec::new();
    for s in &sections {
        if let Some(name) = s.name.strip_prefix(ROLE_PREFIX) {
            roles.push(sections::role(s, name)?);
        }
    }
    validate::demo_channel_served(&demo_section, &demo, &channels)?;

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
        written: Written(scanned),
    })
}

#[cfg(test)]
mod tests;
