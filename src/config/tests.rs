//! The configuration's specification: files in, `Config` values or error lines out, through
//! [`Config::parse`] as the server and `wsgate check-config` read them.

use super::values::{
    Bases, GIB, MAX_DURATION, MIB, parse_bool, parse_duration, parse_size, resolve_path,
};
use super::*;
use crate::rules::acl::{Members, PathPattern};
use crate::rules::origin::OriginPattern;
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

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
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
    assert_eq!(c.server.workers, None);
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
    assert_eq!(c.auth.max_concurrent_hashes, None);
    assert_eq!(c.auth.max_file_size.get(), 256 * 1024);
    let l = &c.limits;
    assert_eq!(l.upgrade_timeout, Duration::from_secs(10));
    assert_eq!(l.max_request_head.get(), 8192);
    assert_eq!(l.max_headers.get(), 32);
    assert_eq!(l.ping_interval, Duration::from_secs(30));
    assert_eq!(l.idle_timeout, Duration::from_secs(75));
    assert_eq!(l.write_timeout, Duration::from_secs(30));
    assert_eq!(l.max_fragments.get(), 64);
    assert_eq!(l.message_timeout, Duration::from_secs(30));
    assert_eq!(l.ws.max_message_size.get(), 65536);
    assert_eq!(l.ws.max_frame_size.get(), 65536);
    assert_eq!(l.ws.read_buffer_size.get(), 1024);
    assert_eq!(l.ws.write_buffer_size, 8192);
    assert_eq!(l.ws.max_write_buffer_size.get(), 131072);
    assert_eq!(l.ws.outbox.get(), 64);
    assert_eq!(l.ws.slow_consumer, SlowConsumer::Disconnect);
    assert_eq!(c.log_level, log::LevelFilter::Info);
    assert_eq!(c.channels.len(), 1);
    assert_eq!(c.channels[0].pattern, ChannelPattern::Exact("/echo".into()));
    assert_eq!(c.channels[0].mode(), Mode::Echo);
    assert_eq!(c.channels[0].limits, l.ws);
    // The defaults are a valid tungstenite configuration.
    let _ = l.ws.websocket_config();
    // Access, rate limits and the rest.
    assert_eq!(c.server.max_pre_auth, None);
    assert_eq!(c.tls.client_auth, ClientAuth::Off);
    assert_eq!(c.tls.client_ca, None);
    assert_eq!(c.tls.reload_check_interval, Duration::from_secs(1));
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
    assert_eq!(c.server.max_pre_auth, NonZeroUsize::new(5));
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
            allow_hosts: Vec::new(),
            allow_origins: Vec::new(),
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
fn max_pre_auth_is_at_most_the_workers_when_both_are_set() {
    // Unset, both are sized by the memory budget at start (server::budget).
    let c = ok(&with("[server]\nworkers = 65\n"));
    assert_eq!(c.server.max_pre_auth, None);
    assert_eq!(
        err(&with("[server]\nworkers = 4\nmax_pre_auth = 5\n")),
        "config: F:7: [server] max_pre_auth: max_pre_auth (5) must not exceed workers (4)"
    );
    assert_eq!(
        ok(&with("[server]\nmax_pre_auth = 1025\n"))
            .server
            .max_pre_auth,
        NonZeroUsize::new(1025)
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
    // Host name, process id, eight random hex digits drawn at each start.
    let (front, random) = c.cluster.instance_id.rsplit_once('-').unwrap();
    let (host, pid) = front.rsplit_once('-').unwrap();
    assert!(!host.is_empty());
    assert_eq!(pid, std::process::id().to_string());
    assert!(random.len() == 8 && random.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(
        ok(&with("")).cluster.instance_id,
        c.cluster.instance_id,
        "a new id at each start, even with the same host name and pid"
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
fn admin_names_hosts_without_ports_and_origins_as_origins_does() {
    let admin = |lines: &str| with(&format!("[admin]\nlisten = 127.0.0.1:9480\n{lines}\n"));
    let c = ok(&admin(
        "allow_hosts = Admin.Internal, 10.0.0.5, [0::1]\nallow_origins = https://ops.example",
    ));
    let a = c.admin.unwrap();
    assert_eq!(a.allow_hosts, ["admin.internal", "10.0.0.5", "[::1]"]);
    assert_eq!(a.allow_origins.len(), 1);
    for (line, want) in [
        (
            "allow_hosts = admin.internal:9480",
            "[admin] allow_hosts: `admin.internal:9480`: a host name without a port",
        ),
        (
            "allow_hosts = a b",
            "[admin] allow_hosts: `a b`: not a host name or an IP address",
        ),
        (
            "allow_hosts = a,,b",
            "[admin] allow_hosts: empty entry in the list",
        ),
        (
            "allow_origins = ops.example",
            "[admin] allow_origins: `ops.example`: ",
        ),
    ] {
        let e = err(&admin(line));
        assert!(
            e.starts_with(&format!("config: F:7: {want}")),
            "{line}: {e}"
        );
    }
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
        err(&with("[role:x]\nmembers = *\n[role:x]\nmembers = a\n")).contains("repeated section")
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
    assert_eq!(c.server.workers, NonZeroUsize::new(3));
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

/// What a missing certificate and key (both) are answered with, after the path.
const CERT_HINT: &str = "; no certificate yet? `wsgate cert DIR` writes DIR/wsgate.crt and DIR/wsgate.key, a self-signed pair for this host's names (or set self_signed = true and serve writes one)";

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
        format!("config: F:1: [tls] cert: file not found: D/wsgate.crt{CERT_HINT}")
    );
    assert_eq!(
        err("[channel:/a]\nmode = echo\n"),
        format!("config: F: [tls] cert: file not found: D/wsgate.crt{CERT_HINT}")
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
        let shown_dir = dir.ini().parent().unwrap().display().to_string();
        assert_eq!(
            e.replace(&dir.ini().display().to_string(), "F")
                .replace(&shown_dir, "D"),
            "config: F:3: [tls] key: credential: paths need $CREDENTIALS_DIRECTORY, which \
             systemd sets for the service's LoadCredential=; to run wsgate by hand, set it to \
             the directory holding the credential files: `CREDENTIALS_DIRECTORY=D wsgate ...` \
             where they sit beside the config, as the packaged unit's do"
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
    assert!(err(&with("[server]\nlisten = a\rb\n")).starts_with("config: F:6: control character"));
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
        err(&with("[server]\nWorkers = 2\n"))
            .starts_with("config: F:6: [server] Workers: unknown key (did you mean `workers`?)")
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
    let c =
        ok("[tls]\nself_signed = true\ncert = C:\\certs\\\"a\".pem\n[channel:/a]\nmode = echo\n");
    assert!(
        c.tls
            .cert
            .to_string_lossy()
            .ends_with("C:\\certs\\\"a\".pem"),
        "{:?}",
        c.tls.cert
    );
    // `key: value` is the other separator.
    assert_eq!(
        ok(&with("[server]\nworkers: 7\n")).server.workers,
        NonZeroUsize::new(7)
    );
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
        format!("config: F: [tls] cert: file not found: D/wsgate.crt{CERT_HINT}")
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
    assert_eq!(c.channels[1].mode(), Mode::Broadcast);
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
    let b = |path: &str| c.channel_for(path).unwrap().backend().cloned().unwrap();
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
    assert!(c.channel_for("/echo").unwrap().backend().is_none());
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
    assert_eq!(big.read_buffer_size.get(), 1024);
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
        .map(|c| (c.pattern.clone(), c.mode()))
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
    let written = |v: &[PathPattern]| v.iter().map(|p| p.as_str().to_string()).collect::<Vec<_>>();
    assert_eq!(
        written(&users.subscribe),
        ["/echo", "/chat/*", "/broadcast"]
    );
    assert_eq!(written(&users.publish), ["/echo", "/chat/*", "/broadcast"]);
    // Under default deny, the demo user can still use every demo channel.
    for path in ["/echo", "/chat/lobby", "/broadcast"] {
        let a = crate::rules::acl::evaluate(&c.roles, Some("demo"), path);
        assert!(a.can_subscribe() && a.can_publish(), "{path}");
    }
    assert_eq!(
        crate::cli::access_report::lint(&c, &["demo"]),
        Vec::<String>::new()
    );
}

/// The `key = value` lines of `conf/wsgate.ini` as `(section, key, value, commented)`: the
/// settings of the example, and the `#key = value` lines that document a key (a `#` directly in
/// front of a lower-case key).
fn shipped_lines(text: &str) -> Vec<(String, String, String, bool)> {
    let mut section = String::new();
    let mut lines = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_end_matches(']').to_string();
            continue;
        }
        let (commented, rest) = match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => (true, rest),
            Some(_) => continue,
            None => (false, line),
        };
        if section.is_empty() {
            continue;
        }
        let Some((key, value)) = rest.split_once(" = ") else {
            assert!(commented || rest.trim().is_empty(), "{line}");
            continue;
        };
        lines.push((
            section.clone(),
            key.to_string(),
            value.to_string(),
            commented,
        ));
    }
    lines
}

/// The example is the manual, held to the tables: every key of every section is in it, each
/// `#key = value` line shows the row's default (or, for a key without one, a value it accepts),
/// and no line names a key the code does not know. Uncommenting every default (except where the
/// example sets the key) changes nothing.
#[test]
fn shipped_example_documents_the_defaults() {
    let (text, dir) = shipped();
    let lines = shipped_lines(&text);
    for (section, key, value, commented) in &lines {
        let row = lookup::table(section)
            .and_then(|t| t.rows().find(|row| row.name() == key))
            .unwrap_or_else(|| panic!("[{section}] {key} in conf/wsgate.ini is not a key"));
        if *commented {
            match row.default() {
                Some(default) => assert!(
                    row.is_default(value),
                    "[{section}] {key}: conf/wsgate.ini shows {value}, the default is {default}"
                ),
                None => assert!(row.accepts(value), "[{section}] {key} = {value}"),
            }
        }
    }
    for table in tables::FIXED {
        for row in table.rows() {
            assert!(
                lines
                    .iter()
                    .any(|(s, k, _, _)| s == table.name && k == row.name()),
                "[{}] {} is not in conf/wsgate.ini",
                table.name,
                row.name()
            );
        }
    }
    for prefix in [keys::CHANNEL_PREFIX, keys::ROLE_PREFIX] {
        for row in lookup::table(prefix).unwrap().rows() {
            let key = row.name();
            assert!(
                text.lines()
                    .any(|l| l.starts_with('#') && l.contains(&format!("{key} "))
                        || l.starts_with(&format!("{key} = "))),
                "{prefix} key {key} is not described in conf/wsgate.ini"
            );
        }
    }
    // Uncommented, the defaults change nothing.
    let set: Vec<(&str, &str)> = lines
        .iter()
        .filter(|(_, _, _, commented)| !commented)
        .map(|(s, k, _, _)| (s.as_str(), k.as_str()))
        .collect();
    let mut section = "";
    let mut uncommented = String::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_end_matches(']');
        }
        let key = line
            .strip_prefix('#')
            .and_then(|rest| rest.split_once(" = "))
            .map(|(key, _)| key);
        let has_default = |key: &str| {
            lookup::table(section)
                .and_then(|t| t.rows().find(|row| row.name() == key))
                .is_some_and(|row| row.default().is_some())
        };
        match key {
            Some(key) if has_default(key) && !set.contains(&(section, key)) => {
                uncommented.push_str(&line[1..]);
            }
            _ => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    let a = Config::parse(&text, &dir.ini()).unwrap();
    let mut b = Config::parse(&uncommented, &dir.ini()).unwrap_or_else(|e| panic!("{e}"));
    // The default instance_id draws its random part at each parse.
    b.cluster.instance_id.clone_from(&a.cluster.instance_id);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(
        b.changes_since(&a),
        vec![],
        "a reload would see these as changed"
    );
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

#[test]
fn history_and_presence_on_broadcast_channels_only_and_history_within_the_outbox() {
    let c = ok(&with(
        "[channel:/chat/*]\nmode = broadcast\nhistory_size = 20\nhistory_ttl = 10m\n\
         presence = on\n[channel:/news]\nmode = broadcast\n",
    ));
    let chat = c.channel_for("/chat/a").unwrap();
    assert_eq!(
        chat.history,
        Some(Retention {
            size: nz(20),
            ttl: Some(Duration::from_secs(600)),
        })
    );
    assert!(chat.presence);
    let news = c.channel_for("/news").unwrap();
    assert_eq!((news.history, news.presence), (None, false));
    let cases = [
        (
            "mode = echo\nhistory_size = 5\n",
            "F:7: [channel:/p] history_size: only a mode = broadcast channel keeps a history",
        ),
        (
            "mode = broadcast\nhistory_size = 65\n",
            "F:7: [channel:/p] history_size: 65 is more than this channel's outbox (64)",
        ),
        (
            "mode = broadcast\nhistory_ttl = 1m\n",
            "F:7: [channel:/p] history_ttl: keeps nothing without history_size",
        ),
        (
            "mode = proxy\nbackend = ws://a:1\npresence = on\n",
            "F:8: [channel:/p] presence: only a mode = broadcast channel has presence",
        ),
    ];
    for (body, want) in cases {
        let e = err(&with(&format!("[channel:/p]\n{body}")));
        assert!(e.contains(want), "{body}: {e}");
    }
}

#[test]
fn a_huge_count_is_refused_at_its_line_and_no_sum_of_counts_wraps() {
    assert_eq!(
        err(&format!(
            "{MINIMAL}[server]\nworkers = 18446744073709551615\nqueue = 16\n"
        )),
        "config: F:6: [server] workers: `18446744073709551615` is too large; at most 1000000"
    );
    assert_eq!(
        err(&format!(
            "{MINIMAL}[limits]\noutbox = 99999999999999999999999\n"
        )),
        "config: F:6: [limits] outbox: `99999999999999999999999` is too large; at most 1000000"
    );
    let c = ok(&format!(
        "{MINIMAL}[server]\nworkers = 1000000\nqueue = 1000000\nmax_pre_auth = 1000000\n"
    ));
    assert_eq!(c.server.workers.unwrap().get() + c.server.queue, 2_000_000);
}
