//! The configuration: the INI file parsed once into typed, validated values.
//! Owns every default, every unit, every cross-field rule; nothing downstream re-checks a value
//! or reads the INI again. A reload builds a whole new `Config` and swaps it in.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::origin::OriginPolicy;

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
    pub log_level: log::LevelFilter,
}

/// `[server]`: the listener, the worker pool and its admission bounds.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `listen`, default `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// `workers`: threads, each serving one connection for its whole life. Default 64.
    pub workers: NonZeroUsize,
    /// `queue`: accepted connections that may wait for a free worker. Default 16.
    pub queue: usize,
    /// `max_connections_per_ip`: concurrent connections (waiting or served) from one address. Default 16.
    pub max_connections_per_ip: NonZeroUsize,
    /// `worker_stack_size` in bytes. Default 256 KiB.
    pub worker_stack_size: NonZeroUsize,
    /// `shutdown_grace`: how long SIGTERM waits for connections to finish closing. Default 5 s.
    pub shutdown_grace: Duration,
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
    pub ws: WsLimits,
}

/// Per-connection WebSocket bounds; `[limits]` gives the defaults, `[channel:…]` may override each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsLimits {
    /// `max_message_size`, default 64 KiB.
    pub max_message_size: NonZeroUsize,
    /// `max_frame_size`, default 64 KiB; never more than `max_message_size`.
    pub max_frame_size: NonZeroUsize,
    /// `read_buffer_size`, default 8 KiB.
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
}

/// A channel path as written in the section name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelPattern {
    /// `[channel:/echo]` serves exactly `/echo`.
    Exact(String),
    /// `[channel:/chat/*]` serves `/chat/` followed by one or more characters; stored as `/chat/`.
    /// Each distinct path is its own broadcast group.
    Prefix(String),
}

/// `mode` of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each message goes back to its sender.
    Echo,
    /// Each message goes to every other connection on the same path.
    Broadcast,
}

/// Why a configuration could not be used. `Display` names the file, line (where there is one)
/// and key, so an admin can go straight to the mistake.
#[derive(Debug)]
pub enum ConfigError {
    /// The config file itself could not be read.
    Read { path: PathBuf, error: std::io::Error },
    /// The INI syntax is broken.
    Syntax { path: PathBuf, line: Option<usize>, message: String },
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
        let _ = path;
        todo!("config parsing")
    }

    /// The channel serving `path`, if any (exact first, then the longest prefix).
    pub fn channel_for(&self, path: &str) -> Option<&ChannelConfig> {
        self.channels
            .iter()
            .find(|c| matches!(&c.pattern, ChannelPattern::Exact(p) if p == path))
            .or_else(|| {
                self.channels
                    .iter()
                    .filter(|c| match &c.pattern {
                        ChannelPattern::Prefix(p) => path.len() > p.len() && path.starts_with(p.as_str()),
                        ChannelPattern::Exact(_) => false,
                    })
                    .max_by_key(|c| match &c.pattern {
                        ChannelPattern::Prefix(p) => p.len(),
                        ChannelPattern::Exact(p) => p.len(),
                    })
            })
    }
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
