//! The key tables, one per section: every key the config accepts, in the order
//! `[section] accepts …` lists them, each row naming its default, its parser, its doc line and
//! what a reload does when its value changed (see [`Key`] and [`Reload`]). Bounds of a single key are in its parser ([`super::values`]); rules between keys are
//! in [`super::validate`]. `conf/wsgate.ini` documents exactly these rows (a test holds them to
//! each other).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use super::keys::{Key, Reload, Row, Table};
use super::values::*;
use super::{ClientAuth, Endpoint, MemoryLimit, Mode, Overflow, RedisUrl, SlowConsumer};
use crate::rules::acl::{Members, PathPattern};
use crate::rules::origin::OriginPattern;

/// The sections with a fixed name, in the order errors list them.
pub(super) static FIXED: [&Table; 9] = [
    &server::TABLE,
    &tls::TABLE,
    &origins::TABLE,
    &auth::TABLE,
    &limits::TABLE,
    &log::TABLE,
    &admin::TABLE,
    &cluster::TABLE,
    &demo::TABLE,
];

/// `[admin] max_connections`' default as a number, for code that builds an admin endpoint without
/// a config (see [`crate::admin::DEFAULT_MAX_CONNECTIONS`]).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = whole_number(admin::MAX_CONNECTIONS.default);

/// A default that is a whole number, read at compile time.
const fn whole_number(text: Option<&str>) -> usize {
    let Some(text) = text else {
        panic!("no default")
    };
    let digits = text.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < digits.len() {
        assert!(digits[i].is_ascii_digit(), "not a whole number");
        n = n * 10 + (digits[i] - b'0') as usize;
        i += 1;
    }
    n
}

/// `[server]`: the listener, the worker pool and its admission bounds.
pub(super) mod server {
    use super::*;

    pub(in crate::config) const LISTEN: Key<SocketAddr> = Key {
        name: "listen",
        default: Some("0.0.0.0:8443"),
        parse: parse_listen,
        doc: "The address and port of the wss:// (or ws://) listener.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const WORKERS: Key<NonZeroUsize> = Key {
        name: "workers",
        default: None,
        parse: parse_nonzero_count,
        doc: "Worker threads, each serving one connection; unset: what the host's memory holds, at most 1024.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const QUEUE: Key<usize> = Key {
        name: "queue",
        default: Some("16"),
        parse: parse_count,
        doc: "Accepted connections that may wait for a free worker.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const MAX_CONNECTIONS_PER_IP: Key<NonZeroUsize> = Key {
        name: "max_connections_per_ip",
        default: Some("16"),
        parse: parse_nonzero_count,
        doc: "Concurrent connections (waiting or served) from one address.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const WORKER_STACK_SIZE: Key<NonZeroUsize> = Key {
        name: "worker_stack_size",
        default: Some("256KiB"),
        parse: parse_worker_stack_size,
        doc: "The stack of the connection loop, at least 64KiB.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const HANDSHAKE_STACK_SIZE: Key<NonZeroUsize> = Key {
        name: "handshake_stack_size",
        default: Some("192KiB"),
        parse: parse_handshake_stack_size,
        doc: "The stack of the handshake threads (PROXY header, TLS, upgrade), at least 128KiB.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const SHUTDOWN_GRACE: Key<Duration> = Key {
        name: "shutdown_grace",
        default: Some("5s"),
        parse: parse_duration,
        doc: "How long SIGTERM waits for connections to finish closing.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const MAX_PRE_AUTH: Key<NonZeroUsize> = Key {
        name: "max_pre_auth",
        default: None,
        parse: parse_nonzero_count,
        doc: "Connections in the TLS handshake or upgrade at once; unset: half of workers, rounded up.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const PROXY_PROTOCOL: Key<bool> = Key {
        name: "proxy_protocol",
        default: Some("false"),
        parse: parse_bool,
        doc: "Every connection starts with a PROXY protocol (v1 or v2) header.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const DRAIN_DELAY: Key<Duration> = Key {
        name: "drain_delay",
        default: Some("0s"),
        parse: parse_duration,
        doc: "After SIGTERM, how long to keep accepting while /healthz answers 503.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const TLS: Key<bool> = Key {
        name: "tls",
        default: Some("on"),
        parse: parse_bool,
        doc: "Serve wss:// (on) or plain ws:// behind a TLS-terminating proxy (off).",
        reload: Reload::Refused(
            "a reload cannot switch between TLS and plaintext: clients, the proxy in front and \
             the firewall were set up for one of them",
        ),
    };
    pub(in crate::config) const ALLOW_PLAINTEXT: Key<bool> = Key {
        name: "allow_plaintext",
        default: Some("false"),
        parse: parse_bool,
        doc: "Lets tls = off listen on a non-loopback address.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const MEMORY_LIMIT: Key<MemoryLimit> = Key {
        name: "memory_limit",
        default: None,
        parse: parse_memory_limit,
        doc: "The cap on the bytes that grow with traffic, 0 for none; unset: derived from the host.",
        reload: Reload::Restart,
    };

    pub(in crate::config) static TABLE: Table = Table {
        name: "server",
        groups: &[&[
            &LISTEN,
            &WORKERS,
            &QUEUE,
            &MAX_CONNECTIONS_PER_IP,
            &WORKER_STACK_SIZE,
            &HANDSHAKE_STACK_SIZE,
            &SHUTDOWN_GRACE,
            &MAX_PRE_AUTH,
            &PROXY_PROTOCOL,
            &DRAIN_DELAY,
            &TLS,
            &ALLOW_PLAINTEXT,
            &MEMORY_LIMIT,
        ]],
    };
}

/// `[tls]`: the certificate, its key and client certificates.
pub(super) mod tls {
    use super::*;

    pub(in crate::config) const CERT: Key<String> = Key {
        name: "cert",
        default: Some("wsgate.crt"),
        parse: parse_path,
        doc: "PEM certificate chain, leaf first.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const KEY: Key<String> = Key {
        name: "key",
        default: Some("wsgate.key"),
        parse: parse_path,
        doc: "PEM private key (PKCS#8, PKCS#1 or SEC1).",
        reload: Reload::Applies,
    };
    pub(in crate::config) const SELF_SIGNED: Key<bool> = Key {
        name: "self_signed",
        default: Some("false"),
        parse: parse_bool,
        doc: "Generate a self-signed cert and key at cert and key if both are missing.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const HANDSHAKE_TIMEOUT: Key<Duration> = Key {
        name: "handshake_timeout",
        default: Some("10s"),
        parse: parse_positive_duration,
        doc: "Deadline for the whole TLS handshake, from accept.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const CLIENT_AUTH: Key<ClientAuth> = Key {
        name: "client_auth",
        default: Some("off"),
        parse: parse_client_auth,
        doc: "Whether clients present a certificate: off, optional or required.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const CLIENT_CA: Key<String> = Key {
        name: "client_ca",
        default: None,
        parse: parse_path,
        doc: "PEM file of the CAs that sign client certificates; set exactly when client_auth is not off.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const RELOAD_CHECK_INTERVAL: Key<Duration> = Key {
        name: "reload_check_interval",
        default: Some("1s"),
        parse: parse_duration,
        doc: "How often changed cert, key, users and tokens files are reloaded; 0: never.",
        reload: Reload::Applies,
    };

    pub(in crate::config) static TABLE: Table = Table {
        name: "tls",
        groups: &[&[
            &CERT,
            &KEY,
            &SELF_SIGNED,
            &HANDSHAKE_TIMEOUT,
            &CLIENT_AUTH,
            &CLIENT_CA,
            &RELOAD_CHECK_INTERVAL,
        ]],
    };
}

/// `[origins]`: which web pages may connect.
pub(super) mod origins {
    use super::*;

    pub(in crate::config) const ALLOW: Key<Vec<OriginPattern>> = Key {
        name: "allow",
        default: Some(""),
        parse: parse_allow,
        doc: "Origins allowed to connect, comma-separated.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const ALLOW_MISSING: Key<bool> = Key {
        name: "allow_missing",
        default: Some("false"),
        parse: parse_bool,
        doc: "Let clients that send no Origin header connect.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const ALLOW_ANY: Key<bool> = Key {
        name: "allow_any",
        default: Some("false"),
        parse: parse_bool,
        doc: "Let every origin connect.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const ALLOW_SAME_ORIGIN: Key<bool> = Key {
        name: "allow_same_origin",
        default: Some("false"),
        parse: parse_bool,
        doc: "Let an origin connect whose host is the request's Host.",
        reload: Reload::Applies,
    };

    pub(in crate::config) static TABLE: Table = Table {
        name: "origins",
        groups: &[&[&ALLOW, &ALLOW_MISSING, &ALLOW_ANY, &ALLOW_SAME_ORIGIN]],
    };
}

/// `[auth]`: users, tokens, sessions and the failed-login throttle.
pub(super) mod auth {
    use super::*;

    pub(in crate::config) const USERS_FILE: Key<String> = Key {
        name: "users_file",
        default: Some("users"),
        parse: parse_path,
        doc: "The users file: `name:argon2id-PHC` lines; must exist.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const CACHE_SIZE: Key<usize> = Key {
        name: "cache_size",
        default: Some("1024"),
        parse: parse_count,
        doc: "Successful verifications remembered; 0 turns the cache off.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const CACHE_TTL: Key<Duration> = Key {
        name: "cache_ttl",
        default: Some("10m"),
        parse: parse_duration,
        doc: "How long a remembered verification is trusted.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const MAX_CONCURRENT_HASHES: Key<NonZeroUsize> = Key {
        name: "max_concurrent_hashes",
        default: None,
        parse: parse_nonzero_count,
        doc: "Argon2 runs at once (each takes ~19 MiB); unset: 2, or 1 where the host's memory is small.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const MAX_FILE_SIZE: Key<NonZeroUsize> = Key {
        name: "max_file_size",
        default: Some("256KiB"),
        parse: parse_nonzero_size,
        doc: "The largest users or tokens file loaded; a larger one is refused.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const TOKENS_FILE: Key<String> = Key {
        name: "tokens_file",
        default: Some("tokens"),
        parse: parse_path,
        doc: "The API tokens file; may be missing (no tokens).",
        reload: Reload::Applies,
    };
    pub(in crate::config) const SESSION_KEY_FILE: Key<String> = Key {
        name: "session_key_file",
        default: Some("session.key"),
        parse: parse_path,
        doc: "The key that signs session cookies, created at first start.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const SESSION_TTL: Key<Duration> = Key {
        name: "session_ttl",
        default: Some("12h"),
        parse: parse_duration,
        doc: "How long a session stays valid; 0 turns sessions off.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const SESSION_MAX_AGE: Key<Duration> = Key {
        name: "session_max_age",
        default: Some("168h"),
        parse: parse_positive_duration,
        doc: "How long a session may be renewed from its login; at least session_ttl.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const MAX_FAILURES: Key<u32> = Key {
        name: "max_failures",
        default: Some("5"),
        parse: parse_count_u32,
        doc: "Failed logins per peer IP and per user within failure_window before 429; 0: no throttle.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const TRUSTED_ADDRESS_TTL: Key<Duration> = Key {
        name: "trusted_address_ttl",
        default: Some("24h"),
        parse: parse_duration,
        doc: "How long an address of a successful login is exempt from that user's block.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const FILE_SETTLE_TIME: Key<Duration> = Key {
        name: "file_settle_time",
        default: Some("200ms"),
        parse: parse_duration,
        doc: "How long the users and tokens files must be unchanged before they are read.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const FAILURE_WINDOW: Key<Duration> = Key {
        name: "failure_window",
        default: Some("5m"),
        parse: parse_positive_duration,
        doc: "How long a failed login counts.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const MAX_PENDING_HASHES: Key<usize> = Key {
        name: "max_pending_hashes",
        default: Some("32"),
        parse: parse_count,
        doc: "Password logins that may wait for an Argon2 permit before 503.",
        reload: Reload::Restart,
    };

    pub(in crate::config) static TABLE: Table = Table {
        name: "auth",
        groups: &[&[
            &USERS_FILE,
            &CACHE_SIZE,
            &CACHE_TTL,
            &MAX_CONCURRENT_HASHES,
            &TOKENS_FILE,
            &SESSION_KEY_FILE,
            &SESSION_TTL,
            &SESSION_MAX_AGE,
            &MAX_FAILURES,
            &TRUSTED_ADDRESS_TTL,
            &FILE_SETTLE_TIME,
            &FAILURE_WINDOW,
            &MAX_PENDING_HASHES,
            &MAX_FILE_SIZE,
        ]],
    };
}

/// `[limits]`: deadlines and per-connection bounds; the WebSocket ones are [`ws`]'s rows.
pub(super) mod limits {
    use super::*;

    pub(in crate::config) const UPGRADE_TIMEOUT: Key<Duration> = Key {
        name: "upgrade_timeout",
        default: Some("10s"),
        parse: parse_positive_duration,
        doc: "Deadline for reading the HTTP upgrade request after TLS.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const MAX_REQUEST_HEAD: Key<NonZeroUsize> = Key {
        name: "max_request_head",
        default: Some("8KiB"),
        parse: parse_max_request_head,
        doc: "Bytes of request line and headers, at most 64KiB.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const MAX_HEADERS: Key<NonZeroUsize> = Key {
        name: "max_headers",
        default: Some("32"),
        parse: parse_max_headers,
        doc: "Header lines in the upgrade request, at most 124.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const PING_INTERVAL: Key<Duration> = Key {
        name: "ping_interval",
        default: Some("30s"),
        parse: parse_positive_duration,
        doc: "The server pings a connection silent this long.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const IDLE_TIMEOUT: Key<Duration> = Key {
        name: "idle_timeout",
        default: Some("75s"),
        parse: parse_positive_duration,
        doc: "A connection silent this long is closed; more than ping_interval.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const WRITE_TIMEOUT: Key<Duration> = Key {
        name: "write_timeout",
        default: Some("30s"),
        parse: parse_positive_duration,
        doc: "A connection that cannot flush anything for this long is dropped.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const MAX_FRAGMENTS: Key<NonZeroUsize> = Key {
        name: "max_fragments",
        default: Some("64"),
        parse: parse_nonzero_count,
        doc: "Frames one message may be split into before 1008.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const MESSAGE_TIMEOUT: Key<Duration> = Key {
        name: "message_timeout",
        default: Some("30s"),
        parse: parse_positive_duration,
        doc: "How long a fragmented message may take to complete before 1008.",
        reload: Reload::Applies,
    };

    pub(in crate::config) static TABLE: Table = Table {
        name: "limits",
        groups: &[
            &[
                &UPGRADE_TIMEOUT,
                &MAX_REQUEST_HEAD,
                &MAX_HEADERS,
                &PING_INTERVAL,
                &IDLE_TIMEOUT,
                &WRITE_TIMEOUT,
                &MAX_FRAGMENTS,
                &MESSAGE_TIMEOUT,
            ],
            ws::ROWS,
        ],
    };
}

/// The WebSocket bounds of `[limits]`, which `[channel:…]` may override one by one.
pub(super) mod ws {
    use super::*;

    pub(in crate::config) const MAX_MESSAGE_SIZE: Key<NonZeroUsize> = Key {
        name: "max_message_size",
        default: Some("64KiB"),
        parse: parse_nonzero_size,
        doc: "The largest message a client may send.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const MAX_FRAME_SIZE: Key<NonZeroUsize> = Key {
        name: "max_frame_size",
        default: Some("64KiB"),
        parse: parse_nonzero_size,
        doc: "The largest frame; at most max_message_size.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const READ_BUFFER_SIZE: Key<NonZeroUsize> = Key {
        name: "read_buffer_size",
        default: Some("1KiB"),
        parse: parse_nonzero_size,
        doc: "The read buffer of each connection.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const WRITE_BUFFER_SIZE: Key<usize> = Key {
        name: "write_buffer_size",
        default: Some("8KiB"),
        parse: parse_size,
        doc: "Bytes collected before a write; 0 writes each frame at once.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const MAX_WRITE_BUFFER_SIZE: Key<NonZeroUsize> = Key {
        name: "max_write_buffer_size",
        default: Some("128KiB"),
        parse: parse_nonzero_size,
        doc: "The most bytes waiting to be written; a whole frame must fit after a full write buffer.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const OUTBOX: Key<NonZeroUsize> = Key {
        name: "outbox",
        default: Some("64"),
        parse: parse_nonzero_count,
        doc: "Messages queued for one subscriber before it counts as slow.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const SLOW_CONSUMER: Key<SlowConsumer> = Key {
        name: "slow_consumer",
        default: Some("disconnect"),
        parse: parse_slow_consumer,
        doc: "What happens when the outbox is full: disconnect or drop.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const MAX_MESSAGES_PER_SEC: Key<u32> = Key {
        name: "max_messages_per_sec",
        default: Some("1000"),
        parse: parse_count_u32,
        doc: "Messages one connection may send per second; 0: unlimited.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const MAX_BYTES_PER_SEC: Key<usize> = Key {
        name: "max_bytes_per_sec",
        default: Some("4MiB"),
        parse: parse_size,
        doc: "Message bytes one connection may send per second; 0: unlimited, else at least max_message_size.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const ON_RATE_LIMIT: Key<Overflow> = Key {
        name: "on_rate_limit",
        default: Some("close"),
        parse: parse_overflow,
        doc: "What happens to a message over either rate: close (1008) or drop.",
        reload: Reload::Applies,
    };

    pub(in crate::config) static ROWS: &[&dyn Row] = &[
        &MAX_MESSAGE_SIZE,
        &MAX_FRAME_SIZE,
        &READ_BUFFER_SIZE,
        &WRITE_BUFFER_SIZE,
        &MAX_WRITE_BUFFER_SIZE,
        &OUTBOX,
        &SLOW_CONSUMER,
        &MAX_MESSAGES_PER_SEC,
        &MAX_BYTES_PER_SEC,
        &ON_RATE_LIMIT,
    ];
}

/// `[log]`.
pub(super) mod log {
    use super::*;

    pub(in crate::config) const LEVEL: Key<::log::LevelFilter> = Key {
        name: "level",
        default: Some("info"),
        parse: parse_level,
        doc: "error, warn, info, debug, trace or off.",
        reload: Reload::Applies,
    };

    pub(in crate::config) static TABLE: Table = Table {
        name: "log",
        groups: &[&[&LEVEL]],
    };
}

/// `[admin]`: the admin endpoint.
pub(super) mod admin {
    use super::*;

    pub(in crate::config) const LISTEN: Key<SocketAddr> = Key {
        name: "listen",
        default: None,
        parse: parse_listen,
        doc: "The admin endpoint's address; unset: no admin endpoint.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const MAX_CONNECTIONS: Key<NonZeroUsize> = Key {
        name: "max_connections",
        default: Some("32"),
        parse: parse_nonzero_count,
        doc: "Admin clients served at once; one more evicts the oldest still sending.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const TOKEN_FILE: Key<String> = Key {
        name: "token_file",
        default: None,
        parse: parse_path,
        doc: "The bearer token the admin API requires; required off a loopback listen.",
        reload: Reload::Restart,
    };

    pub(in crate::config) const ALLOW_HOSTS: Key<Vec<String>> = Key {
        name: "allow_hosts",
        default: None,
        parse: parse_host_names,
        doc: "Host names the admin API answers besides listen's address; unset: none.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const ALLOW_ORIGINS: Key<Vec<OriginPattern>> = Key {
        name: "allow_origins",
        default: None,
        parse: parse_allow,
        doc: "Web page origins allowed to call the admin API; unset: no browser page may.",
        reload: Reload::Restart,
    };

    pub(in crate::config) static TABLE: Table = Table {
        name: "admin",
        groups: &[&[
            &LISTEN,
            &MAX_CONNECTIONS,
            &TOKEN_FILE,
            &ALLOW_HOSTS,
            &ALLOW_ORIGINS,
        ]],
    };
}

/// `[cluster]`: the Redis backbone between instances.
pub(super) mod cluster {
    use super::*;

    pub(in crate::config) const REDIS_URL: Key<RedisUrl> = Key {
        name: "redis_url",
        default: None,
        parse: RedisUrl::parse,
        doc: "redis:// or rediss:// URL of the backbone; unset: a purely local hub.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const INSTANCE_ID: Key<String> = Key {
        name: "instance_id",
        default: None,
        parse: parse_instance_id,
        doc: "This instance's name on the backbone; unset: host name, process id, a random part.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const CHANNEL_PREFIX: Key<String> = Key {
        name: "channel_prefix",
        default: Some("wsgate:"),
        parse: parse_channel_prefix,
        doc: "Names the backbone's Redis stream (`<prefix>broadcasts`).",
        reload: Reload::Restart,
    };
    pub(in crate::config) const PUBLISH_QUEUE: Key<NonZeroUsize> = Key {
        name: "publish_queue",
        default: Some("1024"),
        parse: parse_nonzero_count,
        doc: "Broadcasts waiting to be published to Redis; when full, the oldest is dropped.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const MAX_BACKOFF: Key<Duration> = Key {
        name: "max_backoff",
        default: Some("5s"),
        parse: parse_max_backoff,
        doc: "The cap of the reconnect delay, at least 100ms.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const HEALTH_CHECK: Key<Duration> = Key {
        name: "health_check",
        default: Some("1s"),
        parse: parse_health,
        doc: "How long an idle publisher link waits for Redis before it sends PING.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const HEALTH_TIMEOUT: Key<Duration> = Key {
        name: "health_timeout",
        default: Some("2s"),
        parse: parse_health,
        doc: "How long any Redis call may take before the link counts as down.",
        reload: Reload::Restart,
    };
    pub(in crate::config) const STREAM_LENGTH: Key<NonZeroUsize> = Key {
        name: "stream_length",
        default: Some("10000"),
        parse: parse_nonzero_count,
        doc: "About how many broadcasts the stream keeps (XADD MAXLEN ~).",
        reload: Reload::Restart,
    };

    pub(in crate::config) static TABLE: Table = Table {
        name: "cluster",
        groups: &[&[
            &REDIS_URL,
            &INSTANCE_ID,
            &CHANNEL_PREFIX,
            &PUBLISH_QUEUE,
            &MAX_BACKOFF,
            &HEALTH_CHECK,
            &HEALTH_TIMEOUT,
            &STREAM_LENGTH,
        ]],
    };
}

/// `[demo]`: the built-in demo page.
pub(super) mod demo {
    use super::*;

    pub(in crate::config) const ENABLED: Key<bool> = Key {
        name: "enabled",
        default: Some("false"),
        parse: parse_bool,
        doc: "GET / without an Upgrade header answers with the demo page.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const CHANNEL: Key<String> = Key {
        name: "channel",
        default: Some("/chat/demo"),
        parse: parse_demo_channel,
        doc: "The broadcast channel path the page joins.",
        reload: Reload::Applies,
    };

    pub(in crate::config) static TABLE: Table = Table {
        name: "demo",
        groups: &[&[&ENABLED, &CHANNEL]],
    };
}

/// `[channel:PATH]`: what serves PATH, with the WebSocket bounds of [`ws`] (inherited from `[limits]` when unset).
pub(super) mod channel {
    use super::*;

    pub(in crate::config) const MODE: Key<Mode> = Key {
        name: "mode",
        default: None,
        parse: parse_mode,
        doc: "echo, broadcast or proxy; required.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const ANONYMOUS: Key<bool> = Key {
        name: "anonymous",
        default: Some("false"),
        parse: parse_bool,
        doc: "Clients without credentials may connect, with the anonymous role's rights.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const ON_FORBIDDEN: Key<Overflow> = Key {
        name: "on_forbidden",
        default: Some("close"),
        parse: parse_overflow,
        doc: "What happens to a message from a client without publish rights: close (1008) or drop.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const BACKEND: Key<(Endpoint, String)> = Key {
        name: "backend",
        default: None,
        parse: parse_backend_url,
        doc: "A proxy channel's backend: ws://HOST:PORT, wss://HOST:PORT or unix:/PATH; required with mode = proxy.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const BACKEND_CA: Key<String> = Key {
        name: "backend_ca",
        default: None,
        parse: parse_path,
        doc: "PEM file of the CAs a wss:// backend's certificate must chain to; unset: the system's roots.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const BACKEND_CONNECT_TIMEOUT: Key<Duration> = Key {
        name: "backend_connect_timeout",
        default: Some("5s"),
        parse: parse_positive_duration,
        doc: "TCP connect, TLS and the backend's 101, together.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const HISTORY_SIZE: Key<usize> = Key {
        name: "history_size",
        default: Some("0"),
        parse: parse_count,
        doc: "Broadcasts a mode = broadcast channel keeps per path for late joiners and recovery; 0: none; at most outbox.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const HISTORY_TTL: Key<Duration> = Key {
        name: "history_ttl",
        default: Some("0s"),
        parse: parse_duration,
        doc: "How long a kept broadcast stays in the history; 0s: until history_size pushes it out.",
        reload: Reload::Applies,
    };

    pub(in crate::config) const PRESENCE: Key<bool> = Key {
        name: "presence",
        default: Some("off"),
        parse: parse_bool,
        doc: "On a mode = broadcast channel: enveloped subscribers are told who joins and leaves their path.",
        reload: Reload::Applies,
    };

    pub(in crate::config) static TABLE: Table = Table {
        name: "channel",
        groups: &[
            &[&MODE],
            ws::ROWS,
            &[
                &ANONYMOUS,
                &ON_FORBIDDEN,
                &BACKEND,
                &BACKEND_CA,
                &BACKEND_CONNECT_TIMEOUT,
                &HISTORY_SIZE,
                &HISTORY_TTL,
                &PRESENCE,
            ],
        ],
    };
}

/// `[role:NAME]`: who may subscribe and publish where.
pub(super) mod role {
    use super::*;

    pub(in crate::config) const MEMBERS: Key<Members> = Key {
        name: "members",
        default: None,
        parse: parse_members,
        doc: "User names, or `*` for every authenticated user; required except in [role:anonymous].",
        reload: Reload::Applies,
    };
    pub(in crate::config) const SUBSCRIBE: Key<Vec<PathPattern>> = Key {
        name: "subscribe",
        default: Some(""),
        parse: parse_patterns,
        doc: "Paths whose channel a member may connect to and receive from.",
        reload: Reload::Applies,
    };
    pub(in crate::config) const PUBLISH: Key<Vec<PathPattern>> = Key {
        name: "publish",
        default: Some(""),
        parse: parse_patterns,
        doc: "Paths a member may send messages to.",
        reload: Reload::Applies,
    };

    pub(in crate::config) static TABLE: Table = Table {
        name: "role",
        groups: &[&[&MEMBERS, &SUBSCRIBE, &PUBLISH]],
    };
}
