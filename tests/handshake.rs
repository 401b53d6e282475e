//! What malformed clients get before and during the upgrade: the status we write ourselves
//! (tungstenite alone would reset the connection), and a server that keeps serving.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

fn request(first_line: &str, headers: &[impl AsRef<str>]) -> Vec<u8> {
    let mut out = format!("{first_line}\r\n");
    for h in headers {
        out.push_str(h.as_ref());
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn upgrade_headers() -> Vec<String> {
    let auth = data_encoding::BASE64.encode(format!("{}:{}", ALICE.0, ALICE.1).as_bytes());
    vec![
        "Host: localhost".into(),
        "Upgrade: websocket".into(),
        "Connection: Upgrade".into(),
        format!("Sec-WebSocket-Key: {KEY}"),
        "Sec-WebSocket-Version: 13".into(),
        format!("Authorization: Basic {auth}"),
    ]
}

#[test]
fn malformed_upgrades_get_their_status_and_connection_close() {
    let server = Setup::default().start();
    let good = upgrade_headers();
    let without = |name: &str| {
        good.iter()
            .filter(|h| !h.starts_with(name))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut version_8 = without("Sec-WebSocket-Version");
    version_8.push("Sec-WebSocket-Version: 8".into());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (request("POST /echo HTTP/1.1", &good), "405"),
        (request("GET /echo HTTP/1.0", &good), "400"),
        (request("GET /echo HTTP/1.1", &without("Upgrade")), "400"),
        (request("GET /echo HTTP/1.1", &without("Host")), "400"),
        (
            request("GET /echo HTTP/1.1", &without("Sec-WebSocket-Key")),
            "400",
        ),
        (request("GET /echo HTTP/1.1", &version_8), "426"),
        (
            b"GET /echo HTTP/1.1\r\nHost: a\x00b\r\n\r\n".to_vec(),
            "400",
        ),
        (b"\x16\x03\x01garbage\r\n\r\n".to_vec(), "400"),
    ];
    for (req, want) in cases {
        let resp = server.raw_request(&req);
        assert!(
            status_line(&resp).starts_with(&format!("HTTP/1.1 {want}")),
            "want {want}, got {resp:?}"
        );
        assert!(
            resp.to_ascii_lowercase().contains("connection: close"),
            "{resp}"
        );
        if want == "426" {
            assert!(
                resp.contains("sec-websocket-version: 13")
                    || resp.contains("Sec-WebSocket-Version: 13")
            );
        }
    }
    still_serving(&server);
}

#[test]
fn header_count_limit_at_n_passes_and_n_plus_one_is_431() {
    let mut setup = Setup::default();
    setup.set("limits", "max_headers", "10");
    let server = setup.start();
    let mut headers = upgrade_headers();
    while headers.len() < 10 {
        headers.push(format!("X-Filler-{}: x", headers.len()));
    }
    let resp = server.raw_request(&request("GET /echo HTTP/1.1", &headers));
    assert!(status_line(&resp).starts_with("HTTP/1.1 101"), "{resp}");
    headers.push("X-One-Too-Many: x".into());
    let resp = server.raw_request(&request("GET /echo HTTP/1.1", &headers));
    assert!(status_line(&resp).starts_with("HTTP/1.1 431"), "{resp}");
    still_serving(&server);
}

#[test]
fn oversized_head_is_431_quickly_even_dripped_byte_by_byte() {
    let mut setup = Setup::default();
    setup.set("limits", "max_request_head", "2KiB");
    let server = setup.start();
    let mut headers = upgrade_headers();
    headers.push(format!("X-Big: {}", "a".repeat(4096)));
    let req = request("GET /echo HTTP/1.1", &headers);
    let t0 = Instant::now();
    let resp = server.raw_request(&req);
    assert!(status_line(&resp).starts_with("HTTP/1.1 431"), "{resp}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // The same head, one byte per TLS record.
    let mut tls = server.tls();
    for b in &req[..2100] {
        tls.write_all(std::slice::from_ref(b)).unwrap();
    }
    tls.flush().unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    assert!(status_line(&resp).starts_with("HTTP/1.1 431"), "{resp}");
    still_serving(&server);
}

#[test]
fn plain_http_on_the_tls_port_gets_a_plain_400_saying_to_use_https() {
    let server = Setup::default().start();
    // What a browser sends for http://localhost:PORT/ and a client for ws://.
    for request in [
        "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(),
        format!(
            "GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        ),
    ] {
        let mut tcp = server.tcp();
        tcp.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer)
            .unwrap_or_else(|e| panic!("no plain answer: {e}; log:\n{}", server.logs()));
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert!(
            answer.contains("use https:// (or wss:// for a WebSocket) instead of http://"),
            "{answer}"
        );
    }
    // One debug line each (browsers and scanners would flood the log at a higher level).
    assert!(
        server.wait_log("plain HTTP on the TLS port", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    assert!(
        server
            .logs()
            .lines()
            .any(|l| l.contains("plain HTTP on the TLS port") && l.contains("DEBUG"))
    );
    // A TLS client is not mistaken for one.
    still_serving(&server);
    assert!(!server.logs().contains("panicked"));
}

#[test]
fn handshake_and_first_frame_in_one_segment_are_both_served() {
    let server = Setup::default().start();
    let mut tls = server.tls();
    let mut bytes = request("GET /echo HTTP/1.1", &upgrade_headers());
    // A masked text frame "hi" (mask 1,2,3,4) right behind the head.
    bytes.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    tls.write_all(&bytes).unwrap();
    tls.flush().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let until = Instant::now() + IO_TIMEOUT;
    while !got.ends_with(&[0x81, 2, b'h', b'i']) && Instant::now() < until {
        let n = tls
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", server.logs()));
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(got.ends_with(&[0x81, 2, b'h', b'i']), "echo missing");
}

#[test]
fn a_flood_of_bad_requests_is_logged_at_a_bounded_rate() {
    let server = Setup::default().start();
    // 60 malformed requests in quick succession: each is answered, but only about 20 lines a
    // second are logged (a burst of 20, then 20 a second).
    let t0 = Instant::now();
    for _ in 0..60 {
        let resp = server.raw_request(b"POST /echo HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(status_line(&resp).starts_with("HTTP/1.1 405"), "{resp}");
    }
    let budget = 20 + (t0.elapsed().as_secs_f64() * 20.0).ceil() as usize + 1;
    assert!(
        budget < 60,
        "the flood took {:?}: too slow to test the limit",
        t0.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300));
    let logged = server.count_log("status=405");
    assert!(
        (20..=budget).contains(&logged),
        "{logged} lines logged, budget {budget}"
    );
    // The next line that gets through says how many were left out.
    let _ = server.raw_request(b"POST /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        server.wait_log("refusal lines suppressed", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    still_serving(&server);
}

#[test]
fn suppressed_refusal_lines_are_summarised_after_a_quiet_second() {
    let server = Setup::default().start();
    for _ in 0..60 {
        let resp = server.raw_request(b"POST /echo HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(status_line(&resp).starts_with("HTTP/1.1 405"), "{resp}");
    }
    // No refusal follows, yet within a quiet second (and a margin) the count is logged: the
    // lines logged and the counts summarised account for every refusal.
    let accounted = || {
        let logs = server.logs();
        let summarised: usize = logs
            .lines()
            .filter_map(|l| l.split_once(" refusal lines suppressed"))
            .map(|(head, _)| head.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
            .sum();
        summarised + server.count_log("status=405")
    };
    let until = Instant::now() + Duration::from_millis(2500);
    while accounted() != 60 {
        assert!(Instant::now() < until, "{}", server.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.logs().contains("refusal lines suppressed"));
    still_serving(&server);
}
