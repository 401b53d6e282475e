//! Refusals under the name of what happened: a connection the server cannot give a wake-up fd,
//! a demo login while sessions are off, and a count past its bound in the config file, each with
//! its own status (or exit code) and its own words in the log, never "shutting down".

mod common;

use rustix::process::{Pid, Resource, Rlimit, prlimit};
use tungstenite::Error as WsError;

use common::*;

/// Lowers `pid`'s soft limit on open files so that exactly one descriptor number is still
/// free: the next descriptor the process opens takes it, and the one after fails with EMFILE.
/// Returns the limit it had.
fn leave_one_free_fd(pid: i32) -> Rlimit {
    let open: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let free = (0..).find(|n| !open.contains(n)).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let hard = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
    let lowered = Rlimit {
        current: Some(free + 1),
        maximum: hard,
    };
    prlimit(Some(Pid::from_raw(pid).unwrap()), Resource::Nofile, lowered).unwrap()
}

#[test]
fn a_connection_without_a_wake_up_fd_gets_503_retry_after_1_named_for_the_fd() {
    let mut setup = Setup::default();
    setup.set("admin", "listen", "127.0.0.1:0");
    let server = setup.start();
    let old = leave_one_free_fd(server.pid());
    // The socket takes the last descriptor; the broadcast channel's eventfd finds none.
    let auth = basic(ALICE.0, ALICE.1);
    let refused = server.connect_with("/chat/room", &[("Authorization", &auth)]);
    let Err(WsError::Http(response)) = refused else {
        panic!(
            "not refused: {:?}; log:\n{}",
            refused.map(|_| ()),
            server.logs()
        );
    };
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    logged_as(
        &server,
        "status=503 reason=cannot create the wake-up fd (eventfd)",
    );
    prlimit(Pid::from_raw(server.pid()), Resource::Nofile, old).unwrap();
    assert_eq!(
        metric(&server, r#"wsgate_connections_total{outcome="503"}"#),
        1
    );
    // The descriptor came back with the refused socket: the next client is served.
    let mut ws = server.connect_as("/chat/room", ALICE);
    ws.send(tungstenite::Message::text("after")).unwrap();
}

/// The refusal's one log line says `line`, and nothing says "shutting down".
fn logged_as(server: &Server, line: &str) {
    assert!(server.wait_log(line, IO_TIMEOUT), "{}", server.logs());
    assert!(
        !server.logs().contains("shutting down"),
        "{}",
        server.logs()
    );
}

#[test]
fn a_demo_login_with_sessions_off_gets_501_named_sessions_off() {
    let mut setup = Setup::default();
    setup
        .set("demo", "enabled", "true")
        .set("auth", "session_ttl", "0")
        .set("admin", "listen", "127.0.0.1:0");
    let server = setup.start();
    let form = format!("user={}&pass={}", ALICE.0, ALICE.1);
    let answer = server.raw_request(&login_request(Some(ORIGIN_OK), &form));
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 501 Not Implemented",
        "{answer}"
    );
    assert!(!answer.contains("Retry-After"), "{answer}");
    assert!(!answer.contains("Set-Cookie"), "{answer}");
    assert!(
        answer.contains("sessions are off ([auth] session_ttl = 0)"),
        "{answer}"
    );
    logged_as(
        &server,
        "status=501 reason=demo login with sessions off ([auth] session_ttl = 0)",
    );
    assert_eq!(
        metric(&server, r#"wsgate_connections_total{outcome="501"}"#),
        1
    );
}

#[test]
fn check_config_refuses_a_count_past_its_bound_at_its_line() {
    for (section, key, value) in [
        ("server", "workers", "18446744073709551615"),
        ("server", "queue", "1000001"),
        ("limits", "outbox", "99999999999999999999999"),
        ("cluster", "stream_length", "4294967296"),
    ] {
        let mut setup = Setup::default();
        setup.set(section, key, value);
        let (_dir, config, _ca) = setup.write();
        let text = std::fs::read_to_string(&config).unwrap();
        let line = 1 + text
            .lines()
            .position(|l| l == format!("{key} = {value}"))
            .unwrap();
        let (code, stderr) = check_config(&config);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "wsgate.ini:{line}: [{section}] {key}: `{value}` is too large; at most 1000000"
            )),
            "{stderr}"
        );
    }
}
