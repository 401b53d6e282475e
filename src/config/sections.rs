//! The section readers: each turns one scanned section into its typed part of the [`super::Config`],
//! reading every key through its row in [`super::tables`] and calling the rules of
//! [`super::validate`] as soon as the values they compare are read. Paths are resolved here, and
//! the files they name checked.

use std::num::NonZeroUsize;
use std::path::Path;

use super::scan::Section;
use super::tables::{
    admin, auth, channel, cluster, demo, limits, log, origins, role, server, tls, ws,
};
use super::validate;
use super::values::{Bases, default_instance_id, parse_channel_path};
use super::{
    AdminConfig, AuthConfig, Backend, ChannelConfig, ClusterConfig, ConfigError, DemoConfig,
    Limits, MemoryLimit, Mode, Retention, ServerConfig, Serving, TlsConfig, WsLimits,
};
use crate::rules::acl::{ANONYMOUS_ROLE, Members, Role};
use crate::rules::origin::OriginPolicy;

/// Longest role name.
const MAX_ROLE_NAME: usize = 64;

pub(super) fn server(s: &Section<'_>) -> Result<ServerConfig, ConfigError> {
    let listen = s.get(&server::LISTEN)?;
    let workers = s.optional(&server::WORKERS)?;
    let queue = s.get(&server::QUEUE)?;
    let max_connections_per_ip = s.get(&server::MAX_CONNECTIONS_PER_IP)?;
    let worker_stack_size = s.get(&server::WORKER_STACK_SIZE)?;
    let handshake_stack_size = s.get(&server::HANDSHAKE_STACK_SIZE)?;
    let shutdown_grace = s.get(&server::SHUTDOWN_GRACE)?;
    let max_pre_auth = s.optional(&server::MAX_PRE_AUTH)?;
    if let (Some(max_pre_auth), Some(workers)) = (max_pre_auth, workers) {
        validate::pre_auth_within_workers(s, max_pre_auth, workers)?;
    }
    let proxy_protocol = s.get(&server::PROXY_PROTOCOL)?;
    let drain_delay = s.get(&server::DRAIN_DELAY)?;
    let tls = s.get(&server::TLS)?;
    let allow_plaintext = s.get(&server::ALLOW_PLAINTEXT)?;
    validate::plaintext_stays_local(s, listen, tls, allow_plaintext)?;
    let memory_limit = s.get_or(&server::MEMORY_LIMIT, MemoryLimit::Host)?;
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
pub(super) fn tls(
    s: &Section<'_>,
    base: &Bases<'_>,
    enabled: bool,
) -> Result<TlsConfig, ConfigError> {
    let cert = s.path(&tls::CERT, base)?;
    let key = s.path(&tls::KEY, base)?;
    let self_signed = s.get(&tls::SELF_SIGNED)?;
    validate::certificate_files(s, enabled, self_signed, &cert, &key)?;
    let handshake_timeout = s.get(&tls::HANDSHAKE_TIMEOUT)?;
    let client_auth = s.get(&tls::CLIENT_AUTH)?;
    validate::client_auth_has_its_ca(s, enabled, client_auth)?;
    let client_ca = s.optional_path(&tls::CLIENT_CA, base)?;
    if let Some(path) = &client_ca {
        s.require_file(tls::CLIENT_CA.name, path)?;
    }
    let reload_check_interval = s.get(&tls::RELOAD_CHECK_INTERVAL)?;
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

pub(super) fn origins(s: &Section<'_>) -> Result<OriginPolicy, ConfigError> {
    Ok(OriginPolicy {
        allow: s.get(&origins::ALLOW)?,
        allow_missing: s.get(&origins::ALLOW_MISSING)?,
        allow_any: s.get(&origins::ALLOW_ANY)?,
        allow_same_origin: s.get(&origins::ALLOW_SAME_ORIGIN)?,
    })
}

pub(super) fn demo(s: &Section<'_>) -> Result<DemoConfig, ConfigError> {
    Ok(DemoConfig {
        enabled: s.get(&demo::ENABLED)?,
        channel: s.get(&demo::CHANNEL)?,
    })
}

pub(super) fn auth(s: &Section<'_>, base: &Bases<'_>) -> Result<AuthConfig, ConfigError> {
    let users_file = s.path(&auth::USERS_FILE, base)?;
    s.require_file(auth::USERS_FILE.name, &users_file)?;
    let tokens_file = s.path(&auth::TOKENS_FILE, base)?;
    s.allow_missing_file(auth::TOKENS_FILE.name, &tokens_file)?;
    let session_key_file = s.path(&auth::SESSION_KEY_FILE, base)?;
    s.allow_missing_file(auth::SESSION_KEY_FILE.name, &session_key_file)?;
    let session_ttl = s.get(&auth::SESSION_TTL)?;
    let session_max_age = s.get(&auth::SESSION_MAX_AGE)?;
    validate::session_lifetimes(s, session_ttl, session_max_age)?;
    Ok(AuthConfig {
        users_file,
        cache_size: s.get(&auth::CACHE_SIZE)?,
        cache_ttl: s.get(&auth::CACHE_TTL)?,
        max_concurrent_hashes: s.optional(&auth::MAX_CONCURRENT_HASHES)?,
        max_file_size: s.get(&auth::MAX_FILE_SIZE)?,
        tokens_file,
        session_key_file,
        session_ttl,
        session_max_age,
        trusted_address_ttl: s.get(&auth::TRUSTED_ADDRESS_TTL)?,
        file_settle_time: s.get(&auth::FILE_SETTLE_TIME)?,
        max_failures: s.get(&auth::MAX_FAILURES)?,
        failure_window: s.get(&auth::FAILURE_WINDOW)?,
        max_pending_hashes: s.get(&auth::MAX_PENDING_HASHES)?,
    })
}

/// The WebSocket bounds of `[limits]` (`base` `None`: the rows' defaults) or of a channel (each
/// key unset there inherits `base`'s value).
fn ws(s: &Section<'_>, base: Option<&WsLimits>) -> Result<WsLimits, ConfigError> {
    let ws = WsLimits {
        max_message_size: s.inherit(&ws::MAX_MESSAGE_SIZE, base.map(|b| b.max_message_size))?,
        max_frame_size: s.inherit(&ws::MAX_FRAME_SIZE, base.map(|b| b.max_frame_size))?,
        read_buffer_size: s.inherit(&ws::READ_BUFFER_SIZE, base.map(|b| b.read_buffer_size))?,
        write_buffer_size: s.inherit(&ws::WRITE_BUFFER_SIZE, base.map(|b| b.write_buffer_size))?,
        max_write_buffer_size: s.inherit(
            &ws::MAX_WRITE_BUFFER_SIZE,
            base.map(|b| b.max_write_buffer_size),
        )?,
        outbox: s.inherit(&ws::OUTBOX, base.map(|b| b.outbox))?,
        slow_consumer: s.inherit(&ws::SLOW_CONSUMER, base.map(|b| b.slow_consumer))?,
        max_messages_per_sec: s.inherit(
            &ws::MAX_MESSAGES_PER_SEC,
            base.map(|b| b.max_messages_per_sec),
        )?,
        max_bytes_per_sec: s.inherit(&ws::MAX_BYTES_PER_SEC, base.map(|b| b.max_bytes_per_sec))?,
        on_rate_limit: s.inherit(&ws::ON_RATE_LIMIT, base.map(|b| b.on_rate_limit))?,
    };
    validate::ws_limits(s, &ws)?;
    Ok(ws)
}

pub(super) fn limits(s: &Section<'_>) -> Result<Limits, ConfigError> {
    let upgrade_timeout = s.get(&limits::UPGRADE_TIMEOUT)?;
    let max_request_head = s.get(&limits::MAX_REQUEST_HEAD)?;
    let max_headers = s.get(&limits::MAX_HEADERS)?;
    let ping_interval = s.get(&limits::PING_INTERVAL)?;
    let idle_timeout = s.get(&limits::IDLE_TIMEOUT)?;
    let write_timeout = s.get(&limits::WRITE_TIMEOUT)?;
    let max_fragments = s.get(&limits::MAX_FRAGMENTS)?;
    let message_timeout = s.get(&limits::MESSAGE_TIMEOUT)?;
    validate::idle_after_ping(s, idle_timeout, ping_interval)?;
    let ws = ws(s, None)?;
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

pub(super) fn log_level(s: &Section<'_>) -> Result<::log::LevelFilter, ConfigError> {
    s.get(&log::LEVEL)
}

/// `[channel:PATH]`, its WebSocket bounds inheriting `base` (`[limits]`'s).
pub(super) fn channel(
    s: &Section<'_>,
    path: &str,
    base: &WsLimits,
    bases: &Bases<'_>,
) -> Result<ChannelConfig, ConfigError> {
    let pattern = parse_channel_path(path).map_err(|m| s.invalid(None, m))?;
    if !s.is_set(channel::MODE.name) {
        return Err(s.invalid(
            Some(channel::MODE.name),
            "missing; every channel needs mode = echo, broadcast or proxy",
        ));
    }
    let mode = s.get(&channel::MODE)?;
    let limits = ws(s, Some(base))?;
    let serving = serving(s, mode, bases)?;
    let history = history(s, mode, &limits)?;
    let presence = s.get(&channel::PRESENCE)?;
    validate::presence(s, mode, presence)?;
    Ok(ChannelConfig {
        pattern,
        serving,
        limits,
        anonymous: s.get(&channel::ANONYMOUS)?,
        on_forbidden: s.get(&channel::ON_FORBIDDEN)?,
        history,
        presence,
        line: s.line,
    })
}

/// `history_size` and `history_ttl`: `Some` when `history_size` is above 0.
fn history(
    s: &Section<'_>,
    mode: Mode,
    limits: &WsLimits,
) -> Result<Option<Retention>, ConfigError> {
    let size = s.get(&channel::HISTORY_SIZE)?;
    let ttl = s.get(&channel::HISTORY_TTL)?;
    validate::history(s, mode, size, limits)?;
    Ok(NonZeroUsize::new(size).map(|size| Retention {
        size,
        ttl: (!ttl.is_zero()).then_some(ttl),
    }))
}

/// `mode`, with a proxy channel's backend; the backend keys are refused on the other modes.
fn serving(s: &Section<'_>, mode: Mode, bases: &Bases<'_>) -> Result<Serving, ConfigError> {
    validate::backend_only_with_proxy(s, mode)?;
    match mode {
        Mode::Echo => Ok(Serving::Echo),
        Mode::Broadcast => Ok(Serving::Broadcast),
        Mode::Proxy => backend(s, bases).map(Serving::Proxy),
    }
}

/// A proxy channel's `backend`, `backend_ca` and `backend_connect_timeout`.
fn backend(s: &Section<'_>, bases: &Bases<'_>) -> Result<Backend, ConfigError> {
    let Some((endpoint, base_path)) = s.optional(&channel::BACKEND)? else {
        return Err(s.invalid(
            Some(channel::BACKEND.name),
            "missing; a mode = proxy channel needs backend = ws://HOST:PORT, wss://HOST:PORT or \
             unix:/PATH",
        ));
    };
    validate::backend_ca_with_wss(s, &endpoint)?;
    let ca = s.optional_path(&channel::BACKEND_CA, bases)?;
    if let Some(path) = &ca {
        s.require_file(channel::BACKEND_CA.name, path)?;
    }
    Ok(Backend {
        endpoint,
        base_path,
        ca,
        connect_timeout: s.get(&channel::BACKEND_CONNECT_TIMEOUT)?,
    })
}

/// `[role:NAME]`.
pub(super) fn role(s: &Section<'_>, name: &str) -> Result<Role, ConfigError> {
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
    validate::role_members(s, anonymous)?;
    let members = s.get_or(&role::MEMBERS, Members::Anonymous)?;
    let subscribe = s.get(&role::SUBSCRIBE)?;
    let publish = s.get(&role::PUBLISH)?;
    if anonymous {
        validate::anonymous_patterns(s, &subscribe, &publish)?;
    }
    Ok(Role {
        name: name.to_string(),
        members,
        subscribe,
        publish,
        line: s.line,
    })
}

pub(super) fn admin(
    s: &Section<'_>,
    server: &ServerConfig,
    base: &Bases<'_>,
) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(listen) = s.optional(&admin::LISTEN)? else {
        return Ok(None);
    };
    validate::admin_port_of_its_own(s, listen, server.listen)?;
    let max_connections = s.get(&admin::MAX_CONNECTIONS)?;
    let token_file = s.optional_path(&admin::TOKEN_FILE, base)?;
    if let Some(path) = &token_file {
        s.require_file(admin::TOKEN_FILE.name, path)?;
    }
    validate::admin_token_off_loopback(s, listen)?;
    Ok(Some(AdminConfig {
        listen,
        max_connections,
        token_file,
        allow_hosts: s.optional(&admin::ALLOW_HOSTS)?.unwrap_or_default(),
        allow_origins: s.optional(&admin::ALLOW_ORIGINS)?.unwrap_or_default(),
    }))
}

pub(super) fn cluster(s: &Section<'_>) -> Result<ClusterConfig, ConfigError> {
    let redis_url = s.optional(&cluster::REDIS_URL)?;
    let instance_id = match s.optional(&cluster::INSTANCE_ID)? {
        Some(id) => id,
        None => default_instance_id(),
    };
    Ok(ClusterConfig {
        redis_url,
        instance_id,
        channel_prefix: s.get(&cluster::CHANNEL_PREFIX)?,
        publish_queue: s.get(&cluster::PUBLISH_QUEUE)?,
        max_backoff: s.get(&cluster::MAX_BACKOFF)?,
        health_check: s.get(&cluster::HEALTH_CHECK)?,
        health_timeout: s.get(&cluster::HEALTH_TIMEOUT)?,
        stream_length: s.get(&cluster::STREAM_LENGTH)?,
    })
}

/// The `[…]` section of `sections` named `name`, or an empty one when the file has none.
pub(super) fn fixed<'a>(sections: &[Section<'a>], source: &'a Path, name: &'a str) -> Section<'a> {
    sections
        .iter()
        .find(|s| s.name == name)
        .map_or_else(|| Section::absent(source, name), Section::clone)
}
