//! Value parsers: one key's text into its typed value, each `fn(&str) -> Result<T, String>` with
//! a lower-case message saying what was expected. Pure (no file system, no other keys): the rows of
//! [`super::tables`] name them, and [`super::scan::Section`] puts the file, line and key in front of
//! the message.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ClientAuth, Endpoint, MemoryLimit, Mode, Overflow, SlowConsumer};
use crate::rules::acl::{ChannelPattern, Members, PathPattern, check_path};
use crate::rules::origin::OriginPattern;

const KIB: usize = 1024;
pub(super) const MIB: usize = 1024 * KIB;
pub(super) const GIB: usize = 1024 * MIB;

/// Largest size any key accepts; keeps typos (`64G`) and the `+ 14` arithmetic sane.
const MAX_SIZE: usize = GIB;

/// Longest duration any key accepts; keeps `Instant + Duration` far from overflow.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A path value starting with this names a file in systemd's credentials directory
/// (`key = credential:wsgate.key` is `$CREDENTIALS_DIRECTORY/wsgate.key`).
const CREDENTIAL_PREFIX: &str = "credential:";

/// The environment variable systemd sets to the service's credentials directory.
pub const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";

/// Longest `instance_id`: it travels in a one-byte length field of every message.
const MAX_INSTANCE_ID: usize = 255;

/// Longest `channel_prefix`.
const MAX_CHANNEL_PREFIX: usize = 128;

/// What relative path values are resolved against.
pub(super) struct Bases<'a> {
    /// The config file's directory.
    pub(super) dir: &'a Path,
    /// `$CREDENTIALS_DIRECTORY`, if set (systemd sets it for services with `LoadCredential=`).
    pub(super) credentials: Option<&'a Path>,
}

/// A path key's value as written, before [`resolve_path`] (which needs the config's directory).
pub(super) fn parse_path(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("empty path".into());
    }
    Ok(value.to_string())
}

/// Resolves a path value: `credential:NAME` is NAME in the credentials directory (an error
/// without one), an absolute path stays, and a relative one is relative to the config file.
pub(super) fn resolve_path(value: &str, base: &Bases<'_>) -> Result<PathBuf, String> {
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
                        "credential: paths need ${CREDENTIALS_ENV}, which systemd sets for the \
                         service's LoadCredential=; to run wsgate by hand, set it to the directory \
                         holding the credential files: `{CREDENTIALS_ENV}={} wsgate ...` where \
                         they sit beside the config, as the packaged unit's do",
                        std::path::absolute(base.dir)
                            .unwrap_or_else(|_| base.dir.to_path_buf())
                            .display()
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
    // Only digits: the parse fails only past u64::MAX, which each caller's bound then refuses
    // with what it accepts.
    let n = digits.parse::<u64>().unwrap_or(u64::MAX);
    Ok((n, value[end..].trim().to_ascii_lowercase()))
}

const DURATION_FORMS: &str = "a duration such as 500ms, 10s, 5m or 1h (a bare number is seconds)";

pub(super) fn parse_duration(value: &str) -> Result<Duration, String> {
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

/// The bytes in one of a size's units (lower-cased; empty is bytes).
fn bytes_per_unit(unit: &str) -> Option<u64> {
    match unit {
        "" | "b" => Some(1),
        "k" | "kib" => Some(KIB as u64),
        "m" | "mib" => Some(MIB as u64),
        "g" | "gib" => Some(GIB as u64),
        _ => None,
    }
}

pub(super) fn parse_size(value: &str) -> Result<usize, String> {
    let (n, unit) = number_and_unit(value, SIZE_FORMS)?;
    let Some(per_unit) = bytes_per_unit(&unit) else {
        return Err(format!(
            "unknown unit in `{}`; expected {SIZE_FORMS}",
            value.trim()
        ));
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
pub(super) fn parse_memory_limit(value: &str) -> Result<MemoryLimit, String> {
    let (n, unit) = number_and_unit(value, SIZE_FORMS)?;
    let Some(per_unit) = bytes_per_unit(&unit) else {
        return Err(format!(
            "unknown unit in `{}`; expected {SIZE_FORMS}, or 0 for no limit",
            value.trim()
        ));
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

/// The largest count any key accepts: past every thread, connection, queue or rate a small
/// host can hold, and small enough that sums of counts (`workers + queue`) cannot wrap even in a
/// 32-bit `usize`. `max_fragments = 1000000` is what the Autobahn run sets.
pub(super) const MAX_COUNT: u64 = 1_000_000;

pub(super) fn parse_count(value: &str) -> Result<usize, String> {
    const WHAT: &str = "a whole number";
    let (n, unit) = number_and_unit(value, WHAT)?;
    if !unit.is_empty() {
        return Err(format!("`{}` is not a whole number", value.trim()));
    }
    match usize::try_from(n) {
        Ok(n) if n as u64 <= MAX_COUNT => Ok(n),
        _ => Err(format!(
            "`{}` is too large; at most {MAX_COUNT}",
            value.trim()
        )),
    }
}

/// A duration that must not be zero.
pub(super) fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        d if d.is_zero() => Err("must be greater than 0".into()),
        d => Ok(d),
    }
}

/// A duration of at least `min`; `why` follows the bound in the message.
fn parse_duration_from(value: &str, min: Duration, why: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        d if d < min => Err(format!("must be at least {}ms{why}", min.as_millis())),
        d => Ok(d),
    }
}

pub(super) fn parse_nonzero_size(value: &str) -> Result<NonZeroUsize, String> {
    NonZeroUsize::new(parse_size(value)?).ok_or_else(|| "must be greater than 0".into())
}

/// A thread's stack size: at least `min` bytes.
fn parse_stack_size(value: &str, min: usize) -> Result<NonZeroUsize, String> {
    let size = parse_nonzero_size(value)?;
    if size.get() < min {
        return Err(format!(
            "{size} bytes is too small; at least {}KiB",
            min / KIB
        ));
    }
    Ok(size)
}

pub(super) fn parse_nonzero_count(value: &str) -> Result<NonZeroUsize, String> {
    NonZeroUsize::new(parse_count(value)?).ok_or_else(|| "must be at least 1".into())
}

/// A whole number that fits in a `u32`.
pub(super) fn parse_count_u32(value: &str) -> Result<u32, String> {
    // At most MAX_COUNT, which fits.
    parse_count(value).map(|n| n as u32)
}

pub(super) fn parse_bool(value: &str) -> Result<bool, String> {
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

pub(super) fn parse_slow_consumer(value: &str) -> Result<SlowConsumer, String> {
    choice(
        value,
        "a slow_consumer action",
        &[
            ("disconnect", SlowConsumer::Disconnect),
            ("drop", SlowConsumer::Drop),
        ],
    )
}

pub(super) fn parse_overflow(value: &str) -> Result<Overflow, String> {
    choice(
        value,
        "an action",
        &[("close", Overflow::Close), ("drop", Overflow::Drop)],
    )
}

pub(super) fn parse_client_auth(value: &str) -> Result<ClientAuth, String> {
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

pub(super) fn parse_mode(value: &str) -> Result<Mode, String> {
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

pub(super) fn parse_level(value: &str) -> Result<log::LevelFilter, String> {
    value.parse::<log::LevelFilter>().map_err(|_| {
        format!("`{value}` is not a log level; expected error, warn, info, debug, trace or off")
    })
}

pub(super) fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("`{value}` is not an address:port; expected e.g. 0.0.0.0:8443 or [::]:8443")
    })
}

pub(super) fn parse_allow(value: &str) -> Result<Vec<OriginPattern>, String> {
    parse_list(value, |entry| {
        OriginPattern::parse(entry).map_err(|m| format!("`{entry}`: {m}"))
    })
}

/// A comma-separated list, each entry trimmed and read by `entry`; an empty value is none.
fn parse_list<T>(value: &str, entry: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(str::trim)
        .map(|e| {
            if e.is_empty() {
                Err("empty entry in the list (a stray comma?)".to_string())
            } else {
                entry(e)
            }
        })
        .collect()
}

/// A comma-separated list of host names or IP addresses, without ports, normalised as a `Host`
/// header's host is ([`crate::rules::origin::request_host`]).
pub(super) fn parse_host_names(value: &str) -> Result<Vec<String>, String> {
    parse_list(value, |entry| {
        match crate::rules::origin::request_host(entry.as_bytes()) {
            Some((_, true)) => Err(format!("`{entry}`: a host name without a port")),
            Some((host, false)) => Ok(host),
            None => Err(format!("`{entry}`: not a host name or an IP address")),
        }
    })
}

pub(super) fn parse_members(value: &str) -> Result<Members, String> {
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
        crate::rules::user_name::check_user_name(entry).map_err(|e| format!("`{entry}`: {e}"))?;
        if names.iter().any(|n| n == entry) {
            return Err(format!("`{entry}` is listed twice"));
        }
        names.push(entry.to_string());
    }
    Ok(Members::Users(names))
}

pub(super) fn parse_patterns(value: &str) -> Result<Vec<PathPattern>, String> {
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

/// `[channel:PATH]`'s PATH as a pattern.
pub(super) fn parse_channel_path(path: &str) -> Result<ChannelPattern, String> {
    let (prefix, is_prefix) = check_path(path, "channel path")?;
    Ok(if is_prefix {
        ChannelPattern::Prefix(prefix.to_string())
    } else {
        ChannelPattern::Exact(path.to_string())
    })
}

/// The demo channel path: what a channel path may be, limited to characters that need no
/// escaping in HTML, JavaScript or a URL.
pub(super) fn parse_demo_channel(value: &str) -> Result<String, String> {
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

/// `ws://HOST[:PORT][/PATH]`, `wss://HOST[:PORT][/PATH]` or `unix:/ABSOLUTE/PATH`. No user
/// information (credentials belong in no config URL a log may show), query or fragment.
pub(super) fn parse_backend_url(value: &str) -> Result<(Endpoint, String), String> {
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

/// The default `instance_id`: the host name, `-`, the process id, `-`, eight random hex digits
/// drawn at each start. Host name and pid make it recognisable in Redis' `CLIENT LIST` and our
/// logs; the random part keeps it unique where they repeat (containers that share a host name
/// and each run wsgate as PID 1). Nothing depends on it staying the same across restarts; an
/// operator who wants a stable name sets `instance_id`.
pub(super) fn default_instance_id() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty() && h.len() < 200 && !h.contains(char::is_control))
        })
        .unwrap_or_else(|| "wsgate".to_string());
    let random = ring::rand::generate::<[u8; 4]>(&ring::rand::SystemRandom::new()).map_or_else(
        // No randomness: the clock's nanoseconds still differ between two starts.
        |_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        },
        |r| u32::from_be_bytes(r.expose()),
    );
    format!("{host}-{}-{random:08x}", std::process::id())
}

pub(super) fn parse_instance_id(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > MAX_INSTANCE_ID {
        return Err(format!("must be 1 to {MAX_INSTANCE_ID} bytes"));
    }
    if value.contains(|c: char| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(value.to_string())
}

pub(super) fn parse_channel_prefix(value: &str) -> Result<String, String> {
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

// ---------------------------------------------------------------------------------------------
// The bounds of single keys.

/// Smallest `worker_stack_size`. The connection loop (tungstenite, rustls records) touches about
/// 20 KiB of stack in a release build (48 KiB in a debug build), thread start included, and a
/// panic's message and backtrace about 30 KiB more (measured with 60000-byte echoes and
/// broadcasts; `scripts/smaps-summary.py` shows each stack's resident pages).
const MIN_WORKER_STACK: usize = 64 * KIB;
/// Smallest `handshake_stack_size`. The handshake (rustls with an ECDSA key, Argon2, the HTTP
/// head, tungstenite's accept) overflows 64 KiB in a release build and 112 KiB in a debug build
/// (it fits in 72 KiB and 120 KiB); a panic needs about 30 KiB more.
const MIN_HANDSHAKE_STACK: usize = 128 * KIB;
/// tungstenite parses the handshake again with a fixed array of this many headers.
const MAX_HEADERS_LIMIT: usize = 124;
/// tungstenite refuses a handshake whose head exceeds this many bytes (`AttackCheck`'s
/// `MAX_BYTES`) with a bare reset, after our parser has accepted it.
const MAX_REQUEST_HEAD_LIMIT: usize = 64 * KIB;
/// The shortest `health_check` and `health_timeout`: below it a loaded Redis would look dead.
const MIN_HEALTH: Duration = Duration::from_millis(100);
/// The first reconnect delay; `max_backoff` may not be below it.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);

pub(super) fn parse_worker_stack_size(value: &str) -> Result<NonZeroUsize, String> {
    parse_stack_size(value, MIN_WORKER_STACK)
}

pub(super) fn parse_handshake_stack_size(value: &str) -> Result<NonZeroUsize, String> {
    parse_stack_size(value, MIN_HANDSHAKE_STACK)
}

pub(super) fn parse_max_request_head(value: &str) -> Result<NonZeroUsize, String> {
    match parse_nonzero_size(value)? {
        n if n.get() > MAX_REQUEST_HEAD_LIMIT => Err(
            "must be at most 64KiB (the most tungstenite's handshake accepts; a longer head \
             would be reset without an answer)"
                .to_string(),
        ),
        n => Ok(n),
    }
}

pub(super) fn parse_max_headers(value: &str) -> Result<NonZeroUsize, String> {
    match parse_nonzero_count(value)? {
        n if n.get() > MAX_HEADERS_LIMIT => Err(format!(
            "must be at most {MAX_HEADERS_LIMIT} (the most tungstenite's handshake parser accepts)"
        )),
        n => Ok(n),
    }
}

pub(super) fn parse_max_backoff(value: &str) -> Result<Duration, String> {
    parse_duration_from(value, MIN_BACKOFF, " (the first reconnect delay)")
}

pub(super) fn parse_health(value: &str) -> Result<Duration, String> {
    parse_duration_from(value, MIN_HEALTH, "")
}
