//! The demo page over a real socket: `GET /` answers with it only when `[demo] enabled`, nothing
//! else changes, and the same-origin rule lets the page's own origin in. The browser itself is
//! tested by `browser/test.mjs` (see docs/demo.md).

mod common;

use std::io::{Read, Write};

use common::*;
use tungstenite::Message;

const PAGE_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: text/html\r\n\r\n";

fn head_and_body(response: &str) -> (&str, &str) {
    response.split_once("\r\n\r\n").unwrap_or((response, ""))
}

#[test]
fn get_root_is_the_page_only_when_enabled() {
    // Off (the default): today's answer to a request that is not an upgrade.
    let server = Setup::default().start();
    let off = server.raw_request(PAGE_REQUEST);
    assert!(off.starts_with("HTTP/1.1 400 "), "{off}");

    let mut setup = Setup::default();
    setup.set("demo", "enabled", "true");
    let server = setup.start();
    let on = server.raw_request(PAGE_REQUEST);
    let (head, body) = head_and_body(&on);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    };
    assert_eq!(header("Content-Type"), "text/html; charset=utf-8");
    assert_eq!(header("Content-Length"), body.len().to_string());
    assert_eq!(header("Cache-Control"), "no-store");
    assert_eq!(header("X-Content-Type-Options"), "nosniff");
    assert_eq!(header("Connection"), "close");
    assert!(header("Content-Security-Policy").starts_with("default-src 'none';"));
    assert!(body.contains(r#"data-channel="/chat/demo""#), "{body}");
    assert!(server.wait_log("demo page peer=", IO_TIMEOUT));

    // Everything else is answered as before.
    for (request, status) in [
        (
            &b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
            "400",
        ),
        (b"GET /chat/demo HTTP/1.1\r\nHost: localhost\r\n\r\n", "400"),
        (
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
            "405",
        ),
    ] {
        let answer = server.raw_request(request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{}: {answer}",
            String::from_utf8_lossy(request)
        );
    }
    // And the WebSocket channels still work.
    let mut ws = server.connect_as("/echo", ALICE);
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("still here"));
}

#[test]
fn a_demo_channel_without_a_broadcast_channel_is_a_config_error() {
    let mut setup = Setup::default();
    setup
        .set("demo", "enabled", "true")
        .set("demo", "channel", "/echo");
    let (_dir, config, _) = setup.write();
    let out = std::process::Command::new(bin())
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[demo] channel: the demo channel /echo is an echo channel"),
        "{stderr}"
    );
}

#[test]
fn the_pages_own_origin_passes_with_allow_same_origin() {
    let mut setup = Setup::default();
    setup.set("demo", "enabled", "true");
    let server = setup.start();
    let own = format!("https://localhost:{}", server.addr.port());
    let basic = format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{}:{}", ALICE.0, ALICE.1).as_bytes())
    );
    // tungstenite sends `Host: localhost:PORT`, as a browser would.
    let attempt = |server: &Server, origin: &str| {
        status_of(server.connect_with(
            "/chat/demo",
            &[("Authorization", basic.as_str()), ("Origin", origin)],
        ))
    };
    assert_eq!(attempt(&server, &own), 403);

    setup.set("origins", "allow_same_origin", "true");
    let server = setup.start();
    let own = format!("https://localhost:{}", server.addr.port());
    assert_eq!(attempt(&server, &own), 101);
    assert_eq!(attempt(&server, "https://evil.example"), 403);
    assert_eq!(attempt(&server, &own.replace("https:", "http:")), 403);
}

#[test]
fn a_plain_get_with_the_demo_off_says_what_this_is_and_logs_below_warn() {
    let server = Setup::default().start();
    for request in [
        PAGE_REQUEST,
        b"GET /favicon.ico HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUser-Agent: scanner\r\n\r\n",
    ] {
        let answer = server.raw_request(request);
        let (head, body) = head_and_body(&answer);
        assert!(head.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain"),
            "{head}"
        );
        assert!(
            body.contains("This is wsgate, a WebSocket server")
                && body.contains("wss://HOST:PORT/")
                && body.contains("docs/"),
            "{body}"
        );
    }
    // A malformed upgrade still gets the short answer.
    let bad = server.raw_request(
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    );
    let (_, body) = head_and_body(&bad);
    assert_eq!(body, "400 Bad Request\n");
    // Browsers and scanners do not reach the log at warn (or info): a scanner would flood it.
    assert!(
        server.wait_log("reason=plain HTTP request", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    let logs = server.logs();
    for line in logs.lines().filter(|l| l.contains("plain HTTP request")) {
        assert!(line.starts_with("DEBUG"), "{line}");
    }
}

#[test]
fn the_demo_login_sets_the_session_cookie_or_says_why_not() {
    let mut setup = Setup::default();
    setup.set("demo", "enabled", "true");
    let server = setup.start();
    let good = format!("user={}&pass={}", ALICE.0, ALICE.1);

    // A good login: 204 and the session cookie, which then opens the demo channel by itself.
    let answer = server.raw_request(&login_request(Some(ORIGIN_OK), &good));
    assert!(answer.starts_with("HTTP/1.1 204 "), "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .unwrap_or_else(|| panic!("no cookie in {answer}"));
    assert!(cookie.starts_with("__Host-wsgate_session=s1."), "{cookie}");
    assert!(
        cookie.contains("Secure; HttpOnly; SameSite=Strict; Path=/"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let ws = server.connect_with("/chat/demo", &[("Cookie", pair), ("Origin", ORIGIN_OK)]);
    assert_eq!(status_of(ws), 101);
    assert!(server.wait_log("demo login peer=", IO_TIMEOUT));

    // A wrong password: 401 without a Basic challenge (the browser would pop up its own dialog),
    // and the same fail2ban line as any failed login; never the password.
    let bad = format!("user={}&pass=wrong-password", ALICE.0);
    let answer = server.raw_request(&login_request(Some(ORIGIN_OK), &bad));
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("www-authenticate"),
        "{answer}"
    );
    assert!(!answer.contains("Set-Cookie"), "{answer}");
    assert!(server.wait_log("auth failed: user=\"alice\"", IO_TIMEOUT));
    assert!(!server.logs().contains("wrong-password"));

    // No Origin, or a foreign one: 403 before any password check.
    for origin in [None, Some("https://evil.example"), Some("null")] {
        let answer = server.raw_request(&login_request(origin, &good));
        assert!(answer.starts_with("HTTP/1.1 403 "), "{origin:?}: {answer}");
    }
    // A form without a length: 411; too long: 413; a malformed one: 401.
    let answer = server.raw_request(
        b"POST /login HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");
    let long = format!("{good}&x={}", "a".repeat(5000));
    let answer = server.raw_request(&login_request(Some(ORIGIN_OK), &long));
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    let answer = server.raw_request(&login_request(Some(ORIGIN_OK), "user=alice"));
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    // The form limit (4096 bytes): a form of exactly that length is read and checked (its long
    // password is refused as malformed, 401); one byte more is 413 unread.
    let at_limit = |extra: usize| {
        let head = format!("user={}&pass=", ALICE.0);
        format!("{head}{}", "p".repeat(4096 - head.len() + extra))
    };
    assert_eq!(at_limit(0).len(), 4096);
    let answer = server.raw_request(&login_request(Some(ORIGIN_OK), &at_limit(0)));
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    let answer = server.raw_request(&login_request(Some(ORIGIN_OK), &at_limit(1)));
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");

    // With the demo off there is no login: a POST gets 405 as before.
    let off = Setup::default().start();
    let answer = off.raw_request(&login_request(Some(ORIGIN_OK), &good));
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
}

#[test]
fn the_demo_logout_clears_the_cookie_only_for_the_pages_own_origins() {
    let mut setup = Setup::default();
    setup.set("demo", "enabled", "true");
    let server = setup.start();
    let logout = |origin: Option<&str>| {
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        server.raw_request(
            format!(
                "POST /logout HTTP/1.1\r\nHost: localhost\r\n{origin}Content-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    // From an allowed origin: 204, the cookie set empty and expired, one info line.
    let answer = logout(Some(ORIGIN_OK));
    assert!(answer.starts_with("HTTP/1.1 204 "), "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .unwrap_or_else(|| panic!("no cookie in {answer}"));
    assert!(
        cookie.starts_with("__Host-wsgate_session=;")
            && cookie.contains("Secure; HttpOnly; SameSite=Strict; Path=/")
            && cookie.ends_with("Max-Age=0"),
        "{cookie}"
    );
    assert!(server.wait_log("demo logout peer=", IO_TIMEOUT));
    // No Origin, or a foreign one: 403, nothing cleared (a foreign page cannot log anyone out).
    for origin in [None, Some("https://evil.example")] {
        let answer = logout(origin);
        assert!(answer.starts_with("HTTP/1.1 403 "), "{origin:?}: {answer}");
        assert!(!answer.contains("Set-Cookie"), "{answer}");
    }
    // With the demo off there is no log-out: 405 as for any POST.
    let off = Setup::default().start();
    let answer = off.raw_request(
        format!("POST /logout HTTP/1.1\r\nHost: localhost\r\nOrigin: {ORIGIN_OK}\r\n\r\n")
            .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
}

#[test]
fn a_login_body_short_of_its_length_or_chunked_gets_its_status_at_once_or_at_its_deadline() {
    // The upgrade deadline is far off: the short body's 408 comes from the login body's own.
    let mut setup = Setup::default();
    setup
        .set("demo", "enabled", "true")
        .set("limits", "upgrade_timeout", "60s");
    let server = setup.start();
    let head = |length: &str| {
        format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nOrigin: {ORIGIN_OK}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n{length}\r\n"
        )
    };
    let read_answer = |tls: &mut Tls| {
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };

    // Ten bytes of a hundred, and the client waits: 408 at the login body deadline.
    let mut tls = server.tls();
    tls.write_all(format!("{}user=alice", head("Content-Length: 100\r\n")).as_bytes())
        .unwrap();
    tls.flush().unwrap();
    let answer = read_answer(&mut tls);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(
        server.wait_log("reason=login body not complete at its deadline", IO_TIMEOUT),
        "{}",
        server.logs()
    );

    // Ten bytes of a hundred, and the client shuts its side: 400 at once.
    let mut tls = server.tls();
    tls.write_all(format!("{}user=alice", head("Content-Length: 100\r\n")).as_bytes())
        .unwrap();
    tls.flush().unwrap();
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = read_answer(&mut tls);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");

    // Chunked, with or without a length: 411, the form is read by its length alone.
    for framing in [
        "Transfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 10\r\n",
    ] {
        let answer =
            server.raw_request(format!("{}a\r\nuser=alice\r\n0\r\n\r\n", head(framing)).as_bytes());
        assert!(answer.starts_with("HTTP/1.1 411 "), "{framing:?}: {answer}");
    }
    // Two lengths, or one that is not a number: 400.
    for framing in [
        "Content-Length: 10\r\nContent-Length: 10\r\n",
        "Content-Length: 1e3\r\n",
    ] {
        let answer = server.raw_request(format!("{}user=alice", head(framing)).as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400 "), "{framing:?}: {answer}");
    }
    still_serving(&server);
}
