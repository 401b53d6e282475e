//! What a reload does with each key, as the server says it: every key of docs/operations.md's
//! table (generated from the key tables' reload column) changed alone and reloaded is named as
//! applied, as needing a restart, or fails the reload, as the table says; and `[log] level`,
//! applied, changes what the running server logs.

mod common;

use common::*;

/// One row of the docs table: a key and what it says a reload does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Applied,
    Restart,
    Refused,
}

/// The keys of the fixed sections in docs/operations.md's reload table.
fn docs_table() -> Vec<(String, String, Kind)> {
    let docs = include_str!("../docs/operations.md");
    let mut keys = Vec::new();
    for line in docs.lines().filter(|l| l.starts_with("| `[")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let section = cells[1].trim_matches(|c| c == '`' || c == '[' || c == ']');
        if section.ends_with(":…") {
            // [channel:…] and [role:…]: the unit tests change each of their keys.
            continue;
        }
        for (cell, kind) in [(cells[2], Kind::Applied), (cells[3], Kind::Restart)] {
            for entry in cell.split(", ").filter(|e| e.starts_with('`')) {
                let key = entry.split('`').nth(1).unwrap();
                let kind = if entry.contains("fails") {
                    Kind::Refused
                } else {
                    kind
                };
                keys.push((section.to_string(), key.to_string(), kind));
            }
        }
    }
    keys
}

/// A valid change of `key` from the test's base config, and from the change before it in the
/// docs table (the reload compares with the running configuration): the key first, then any key
/// it needs beside it. A key the docs table lists and this does not fails the test, so a new key cannot
/// be left out.
fn change_of(section: &str, key: &str) -> Option<&'static [(&'static str, &'static str)]> {
    Some(match (section, key) {
        ("server", "listen") => &[("listen", "127.0.0.1:1")],
        ("server", "workers") => &[("workers", "8")],
        ("server", "queue") => &[("queue", "4")],
        ("server", "max_connections_per_ip") => &[("max_connections_per_ip", "4")],
        ("server", "worker_stack_size") => &[("worker_stack_size", "128KiB")],
        ("server", "handshake_stack_size") => &[("handshake_stack_size", "256KiB")],
        ("server", "shutdown_grace") => &[("shutdown_grace", "2s")],
        ("server", "max_pre_auth") => &[("max_pre_auth", "4")],
        ("server", "proxy_protocol") => &[("proxy_protocol", "true")],
        ("server", "drain_delay") => &[("drain_delay", "1s")],
        ("server", "tls") => &[("tls", "off")],
        ("server", "allow_plaintext") => &[("allow_plaintext", "true")],
        ("server", "memory_limit") => &[("memory_limit", "64MiB")],
        ("tls", "cert") => &[("cert", "cert2.pem")],
        ("tls", "key") => &[("key", "key2.pem")],
        ("tls", "self_signed") => &[("self_signed", "true")],
        ("tls", "handshake_timeout") => &[("handshake_timeout", "5s")],
        ("tls", "client_auth") => &[("client_auth", "optional"), ("client_ca", "ca.pem")],
        // Not client_auth's pair again, which the reload before this one set.
        ("tls", "client_ca") => &[("client_ca", "ca2.pem"), ("client_auth", "required")],
        ("tls", "reload_check_interval") => &[("reload_check_interval", "30s")],
        ("origins", "allow") => &[("allow", "https://other.example.com")],
        ("origins", "allow_missing") => &[("allow_missing", "false")],
        ("origins", "allow_any") => &[("allow_any", "true")],
        ("origins", "allow_same_origin") => &[("allow_same_origin", "true")],
        ("auth", "users_file") => &[("users_file", "users2")],
        ("auth", "cache_size") => &[("cache_size", "10")],
        ("auth", "cache_ttl") => &[("cache_ttl", "1m")],
        ("auth", "max_concurrent_hashes") => &[("max_concurrent_hashes", "1")],
        ("auth", "tokens_file") => &[("tokens_file", "tokens2")],
        ("auth", "session_key_file") => &[("session_key_file", "session2.key")],
        ("auth", "session_ttl") => &[("session_ttl", "1h")],
        ("auth", "session_max_age") => &[("session_max_age", "24h")],
        ("auth", "max_failures") => &[("max_failures", "3")],
        ("auth", "trusted_address_ttl") => &[("trusted_address_ttl", "1h")],
        ("auth", "file_settle_time") => &[("file_settle_time", "100ms")],
        ("auth", "failure_window") => &[("failure_window", "1m")],
        ("auth", "max_pending_hashes") => &[("max_pending_hashes", "4")],
        ("auth", "max_file_size") => &[("max_file_size", "128KiB")],
        ("limits", "upgrade_timeout") => &[("upgrade_timeout", "5s")],
        ("limits", "max_request_head") => &[("max_request_head", "16KiB")],
        ("limits", "max_headers") => &[("max_headers", "40")],
        ("limits", "ping_interval") => &[("ping_interval", "20s")],
        ("limits", "idle_timeout") => &[("idle_timeout", "90s")],
        ("limits", "write_timeout") => &[("write_timeout", "20s")],
        ("limits", "max_fragments") => &[("max_fragments", "32")],
        ("limits", "message_timeout") => &[("message_timeout", "20s")],
        ("limits", "max_message_size") => &[("max_message_size", "96KiB")],
        ("limits", "max_frame_size") => &[("max_frame_size", "32KiB")],
        ("limits", "read_buffer_size") => &[("read_buffer_size", "8KiB")],
        ("limits", "write_buffer_size") => &[("write_buffer_size", "4KiB")],
        ("limits", "max_write_buffer_size") => &[("max_write_buffer_size", "256KiB")],
        ("limits", "outbox") => &[("outbox", "32")],
        ("limits", "slow_consumer") => &[("slow_consumer", "drop")],
        ("limits", "max_messages_per_sec") => &[("max_messages_per_sec", "10")],
        ("limits", "max_bytes_per_sec") => &[("max_bytes_per_sec", "8MiB")],
        ("limits", "on_rate_limit") => &[("on_rate_limit", "drop")],
        ("log", "level") => &[("level", "trace")],
        ("admin", "listen") => &[("listen", "127.0.0.1:1")],
        ("admin", "max_connections") => &[("max_connections", "8")],
        ("admin", "token_file") => &[("token_file", "admin.token")],
        ("admin", "allow_hosts") => &[("allow_hosts", "wsgate.example.com")],
        ("admin", "allow_origins") => &[("allow_origins", "https://ops.example.com")],
        ("cluster", "redis_url") => &[("redis_url", "redis://127.0.0.1:1")],
        ("cluster", "instance_id") => &[("instance_id", "other-instance")],
        ("cluster", "channel_prefix") => &[("channel_prefix", "other:")],
        ("cluster", "publish_queue") => &[("publish_queue", "10")],
        ("cluster", "max_backoff") => &[("max_backoff", "1s")],
        ("cluster", "health_check") => &[("health_check", "500ms")],
        ("cluster", "health_timeout") => &[("health_timeout", "3s")],
        ("cluster", "stream_length") => &[("stream_length", "100")],
        ("demo", "enabled") => &[("enabled", "true")],
        ("demo", "channel") => &[("channel", "/news")],
        _ => return None,
    })
}

/// The base every change starts from: the tests' config with an admin endpoint.
fn base() -> Setup {
    let mut setup = Setup::default();
    setup
        .set("log", "level", "info")
        .set("admin", "listen", "127.0.0.1:0");
    setup
}

/// The keys `line` names after `prefix`, up to `suffix`.
fn named<'l>(line: &'l str, prefix: &str, suffix: &str) -> Vec<&'l str> {
    let rest = line.split(prefix).nth(1).unwrap_or("");
    let list = rest.split(suffix).next().unwrap_or("");
    list.split(", ").collect()
}

#[test]
fn every_key_a_reload_changes_is_named_applied_restart_or_refused_as_the_docs_table_says() {
    let keys = docs_table();
    // Every fixed section's key, the three kinds among them.
    assert!(keys.len() > 60, "{keys:?}");
    for kind in [Kind::Applied, Kind::Restart, Kind::Refused] {
        assert!(
            keys.iter().any(|k| k.2 == kind),
            "no {kind:?} key: {keys:?}"
        );
    }
    let server = base().start();
    let dir = server.dir.path();
    for (from, to) in [
        ("cert.pem", "cert2.pem"),
        ("key.pem", "key2.pem"),
        ("users", "users2"),
    ] {
        std::fs::copy(dir.join(from), dir.join(to)).unwrap();
    }
    std::fs::write(dir.join("ca.pem"), client_pki("alice").ca_pem).unwrap();
    std::fs::write(dir.join("ca2.pem"), client_pki("bob").ca_pem).unwrap();
    std::fs::write(
        dir.join("admin.token"),
        "a-long-enough-admin-token-for-the-test\n",
    )
    .unwrap();

    for (section, key, kind) in &keys {
        let change = change_of(section, key)
            .unwrap_or_else(|| panic!("[{section}] {key}: give it a value in change_of"));
        let mut setup = base();
        for (k, v) in change {
            setup.set(section, k, v);
        }
        std::fs::write(dir.join("wsgate.ini"), setup.render()).unwrap();
        let before = server.logs().lines().count();
        server.reload_and_wait();
        let logs = server.logs();
        let new: Vec<&str> = logs.lines().skip(before).collect();
        let line = |needle: &str| new.iter().find(|l| l.contains(needle)).copied();
        let name = format!("[{section}] {key}");
        let applied = line("reload: applied ")
            .map(|l| named(l, "reload: applied ", "\n"))
            .unwrap_or_default();
        let restart = line("take effect only after a restart")
            .map(|l| named(l, "reload: ", " changed;"))
            .unwrap_or_default();
        let failed = line("reload failed");
        match kind {
            Kind::Applied => {
                assert!(
                    applied.contains(&name.as_str()),
                    "{name} not applied: {new:#?}"
                );
                assert!(!restart.contains(&name.as_str()), "{name}: {new:#?}");
                assert!(failed.is_none(), "{name}: {new:#?}");
            }
            Kind::Restart => {
                assert!(
                    restart.contains(&name.as_str()),
                    "{name} not named: {new:#?}"
                );
                assert!(!applied.contains(&name.as_str()), "{name}: {new:#?}");
                assert!(failed.is_none(), "{name}: {new:#?}");
            }
            Kind::Refused => {
                let failed = failed.unwrap_or_else(|| panic!("{name} reloaded: {new:#?}"));
                assert!(
                    failed.contains(&format!("{name}: changed from")),
                    "{failed}"
                );
            }
        }
    }
}

#[test]
fn a_key_that_needs_a_restart_is_named_at_every_reload_until_the_file_says_what_runs() {
    let server = base().start();
    let write = |setup: &Setup| {
        std::fs::write(server.dir.path().join("wsgate.ini"), setup.render()).unwrap();
    };
    let mut changed = base();
    changed.set("server", "max_pre_auth", "4");
    write(&changed);
    server.reload_and_wait();
    server.reload_and_wait();
    assert_eq!(
        server.count_log(
            "reload: [server] max_pre_auth changed; these take effect only after a restart"
        ),
        2,
        "{}",
        server.logs()
    );
    write(&base());
    server.reload_and_wait();
    assert_eq!(server.count_log("take effect only after a restart"), 2);
}

#[test]
fn a_reload_to_debug_makes_the_running_server_log_debug_lines() {
    let server = base().start();
    let mut debug = base();
    debug.set("log", "level", "debug");
    std::fs::write(server.dir.path().join("wsgate.ini"), debug.render()).unwrap();
    server.reload_and_wait();
    assert_eq!(
        server.count_log("reload: applied [log] level"),
        1,
        "{}",
        server.logs()
    );
    // A plain HTTP request's refusal is logged at debug only.
    let answer = server.raw_request(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request");
    assert!(
        server.wait_log("reason=plain HTTP request", IO_TIMEOUT),
        "no debug line after the reload to debug:\n{}",
        server.logs()
    );
}

#[test]
fn a_log_level_given_on_the_command_line_outlasts_a_reload() {
    let (dir, config, ca) = base().write();
    let server = Server::spawn_with_options(dir, &config, ca, &["--log-level", "debug"]);
    let mut warn = base();
    warn.set("log", "level", "warn");
    std::fs::write(&config, warn.render()).unwrap();
    server.reload_and_wait();
    assert_eq!(
        server.count_log("[log] level changed; the --log-level given on the command line stays"),
        1,
        "{}",
        server.logs()
    );
    assert_eq!(server.count_log("reload: applied [log] level"), 0);
    let answer = server.raw_request(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request");
    assert!(
        server.wait_log("reason=plain HTTP request", IO_TIMEOUT),
        "{}",
        server.logs()
    );
}
