//! The rules between keys: each a check over values already parsed by their rows, naming the key
//! to fix (the first of the keys involved that the file sets, so the line points at a value the
//! admin wrote). The section readers in [`super::sections`] call them as soon as the values they
//! compare are read, so the first mistake in a file is the one reported.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use super::scan::Section;
use super::{ChannelConfig, ClientAuth, ConfigError, DemoConfig, Endpoint, Mode, WsLimits};
use crate::rules::acl::{PathPattern, USER_PLACEHOLDER};

/// The largest WebSocket frame header: what must fit beside a full write buffer and a message.
const FRAME_HEADER_MAX: usize = 14;

/// `[server] max_pre_auth` is at most `workers`.
pub(super) fn pre_auth_within_workers(
    s: &Section<'_>,
    max_pre_auth: NonZeroUsize,
    workers: NonZeroUsize,
) -> Result<(), ConfigError> {
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
    Ok(())
}

/// `[server] tls = off` listens on a loopback address unless `allow_plaintext` says otherwise.
pub(super) fn plaintext_stays_local(
    s: &Section<'_>,
    listen: SocketAddr,
    tls: bool,
    allow_plaintext: bool,
) -> Result<(), ConfigError> {
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
    Ok(())
}

/// `[tls] cert` and `key` exist unless TLS is off (`enabled` false) or `self_signed` creates them.
pub(super) fn certificate_files(
    s: &Section<'_>,
    enabled: bool,
    self_signed: bool,
    cert: &Path,
    key: &Path,
) -> Result<(), ConfigError> {
    if enabled && !self_signed {
        if !cert.exists() && !key.exists() {
            return Err(s.invalid(
                Some("cert"),
                format!(
                    "file not found: {}; no certificate yet? `wsgate cert DIR` writes \
                     DIR/wsgate.crt and DIR/wsgate.key, a self-signed pair for this host's \
                     names (or set self_signed = true and serve writes one)",
                    cert.display()
                ),
            ));
        }
        s.require_file("cert", cert)?;
        s.require_file("key", key)?;
    }
    Ok(())
}

/// `[tls] client_auth` needs TLS on, and `client_ca` is set exactly when `client_auth` is not
/// `off`.
pub(super) fn client_auth_has_its_ca(
    s: &Section<'_>,
    enabled: bool,
    client_auth: ClientAuth,
) -> Result<(), ConfigError> {
    if !enabled && client_auth != ClientAuth::Off {
        return Err(s.invalid(
            Some("client_auth"),
            "client certificates need TLS, but [server] tls is off",
        ));
    }
    match (client_auth, s.is_set("client_ca")) {
        (ClientAuth::Off, true) => Err(s.invalid(
            Some("client_ca"),
            "set, but client_auth is off: set client_auth = optional or required, \
             or remove client_ca",
        )),
        (ClientAuth::Optional | ClientAuth::Required, false) => Err(s.invalid(
            Some("client_ca"),
            "missing; client_auth needs the CA file that signs client certificates",
        )),
        _ => Ok(()),
    }
}

/// `[auth] session_max_age` is at least `session_ttl` while sessions are on.
pub(super) fn session_lifetimes(
    s: &Section<'_>,
    session_ttl: Duration,
    session_max_age: Duration,
) -> Result<(), ConfigError> {
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
    Ok(())
}

/// `[limits] idle_timeout` is greater than `ping_interval`.
pub(super) fn idle_after_ping(
    s: &Section<'_>,
    idle_timeout: Duration,
    ping_interval: Duration,
) -> Result<(), ConfigError> {
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
    Ok(())
}

/// The rules between the effective WebSocket limits of `[limits]` or a channel (what tungstenite
/// would otherwise assert on at run time).
pub(super) fn ws_limits(s: &Section<'_>, ws: &WsLimits) -> Result<(), ConfigError> {
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

/// A channel's `backend` keys are set only with `mode = proxy` (which needs `backend`: the
/// proxy channel's parser says so).
pub(super) fn backend_only_with_proxy(s: &Section<'_>, mode: Mode) -> Result<(), ConfigError> {
    const KEYS: [&str; 3] = ["backend", "backend_ca", "backend_connect_timeout"];
    if mode == Mode::Proxy {
        return Ok(());
    }
    match s.first_set(&KEYS) {
        Some(key) => Err(s.invalid(
            Some(key),
            format!("only a mode = proxy channel has a backend; this one is mode = {mode}"),
        )),
        None => Ok(()),
    }
}

/// `backend_ca` only with a `wss://` backend, whose certificate it verifies.
pub(super) fn backend_ca_with_wss(s: &Section<'_>, endpoint: &Endpoint) -> Result<(), ConfigError> {
    match endpoint {
        Endpoint::Tcp { tls: true, .. } => Ok(()),
        _ if s.is_set("backend_ca") => Err(s.invalid(
            Some("backend_ca"),
            "only a wss:// backend's certificate is verified; remove backend_ca or use wss://",
        )),
        _ => Ok(()),
    }
}

/// The role named `anonymous` has no `members` (it is for clients without credentials) and no
/// `%u` in its patterns; every other role lists its `members`.
pub(super) fn role_members(s: &Section<'_>, anonymous: bool) -> Result<(), ConfigError> {
    match (anonymous, s.is_set("members")) {
        (true, true) => Err(s.invalid(
            Some("members"),
            "the anonymous role applies to clients without credentials and takes no members",
        )),
        (false, false) => Err(s.invalid(
            Some("members"),
            "missing; list user names, or `*` for every authenticated user",
        )),
        _ => Ok(()),
    }
}

/// No `%u` in the anonymous role's `subscribe` and `publish`: it has no user name.
pub(super) fn anonymous_patterns(
    s: &Section<'_>,
    subscribe: &[PathPattern],
    publish: &[PathPattern],
) -> Result<(), ConfigError> {
    for (key, patterns) in [("subscribe", subscribe), ("publish", publish)] {
        if let Some(p) = patterns.iter().find(|p| p.has_user()) {
            return Err(s.invalid(
                Some(key),
                format!(
                    "`{p}`: the anonymous role has no user name, so {USER_PLACEHOLDER} cannot be used"
                ),
            ));
        }
    }
    Ok(())
}

/// `[admin] listen` has a port of its own.
pub(super) fn admin_port_of_its_own(
    s: &Section<'_>,
    listen: SocketAddr,
    main: SocketAddr,
) -> Result<(), ConfigError> {
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
    Ok(())
}

/// `[admin] token_file` is set when `listen` is not a loopback address.
pub(super) fn admin_token_off_loopback(
    s: &Section<'_>,
    listen: SocketAddr,
) -> Result<(), ConfigError> {
    if !s.is_set("token_file") && !listen.ip().is_loopback() {
        // The admin API can publish and disconnect: off a loopback address, only with a token.
        return Err(s.invalid(
            Some("token_file"),
            format!(
                "required when listen (`{listen}`) is not a loopback address: anyone who reaches \
                 it could publish and disconnect"
            ),
        ));
    }
    Ok(())
}

/// No two channels share a path pattern.
pub(super) fn channel_is_new(
    s: &Section<'_>,
    channels: &[ChannelConfig],
    channel: &ChannelConfig,
) -> Result<(), ConfigError> {
    if channels.iter().any(|c| c.pattern == channel.pattern) {
        return Err(s.invalid(None, "another channel already has this path"));
    }
    Ok(())
}

/// A channel's history: on broadcast channels only, no larger than the outbox (a recovery is
/// queued there whole).
pub(super) fn history(
    s: &Section<'_>,
    mode: Mode,
    size: usize,
    limits: &WsLimits,
) -> Result<(), ConfigError> {
    const KEYS: [&str; 2] = ["history_size", "history_ttl"];
    if size == 0 {
        if s.is_set("history_ttl") {
            return Err(s.invalid(
                Some("history_ttl"),
                "keeps nothing without history_size; set history_size too",
            ));
        }
        return Ok(());
    }
    if mode != Mode::Broadcast {
        let key = s.first_set(&KEYS);
        return Err(s.invalid(
            key,
            format!("only a mode = broadcast channel keeps a history; this one is mode = {mode}"),
        ));
    }
    if size > limits.outbox.get() {
        return Err(s.invalid(
            Some("history_size"),
            format!(
                "{size} is more than this channel's outbox ({}): a recovery is queued in the \
                 outbox whole; raise outbox or lower history_size",
                limits.outbox
            ),
        ));
    }
    Ok(())
}

/// `presence` on broadcast channels only (the notices travel in the broadcast envelope).
pub(super) fn presence(s: &Section<'_>, mode: Mode, presence: bool) -> Result<(), ConfigError> {
    if presence && mode != Mode::Broadcast {
        return Err(s.invalid(
            Some("presence"),
            format!("only a mode = broadcast channel has presence; this one is mode = {mode}"),
        ));
    }
    Ok(())
}

/// At least one channel.
pub(super) fn something_to_serve(
    source: &Path,
    channels: &[ChannelConfig],
) -> Result<(), ConfigError> {
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
    Ok(())
}

/// With `[demo] enabled`, a broadcast channel serves the demo channel.
pub(super) fn demo_channel_served(
    s: &Section<'_>,
    demo: &DemoConfig,
    channels: &[ChannelConfig],
) -> Result<(), ConfigError> {
    if !demo.enabled {
        return Ok(());
    }
    let key = if s.is_set("channel") {
        "channel"
    } else {
        "enabled"
    };
    match super::find_channel(channels, &demo.channel).map(ChannelConfig::mode) {
        Some(Mode::Broadcast) => Ok(()),
        Some(mode @ (Mode::Echo | Mode::Proxy)) => {
            let kind = if mode == Mode::Echo {
                "an echo"
            } else {
                "a proxy"
            };
            Err(s.invalid(
                Some(key),
                format!(
                    "the demo channel {} is {kind} channel; the page needs a broadcast channel",
                    demo.channel
                ),
            ))
        }
        None => Err(s.invalid(
            Some(key),
            format!(
                "no channel serves the demo channel {}; add a broadcast [channel:…] for it",
                demo.channel
            ),
        )),
    }
}
