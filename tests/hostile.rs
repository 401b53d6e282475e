//! The bad-input catalogue (`../shared/BAD-INPUT.md`), as black-box tests against the real binary
//! on loopback: raw TLS sockets where a client library would refuse to send the bad bytes,
//! `openssl s_client` for the TLS version and cipher rows. Rows already covered elsewhere
//! (handshake.rs, core.rs, access.rs, ops.rs, cli.rs) are not repeated here; README.md's
//! "Security testing" table maps every row to its test. After each case the server's log is
//! checked: no panic, no error line unless the case expects one, no secret.

mod common;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tungstenite::Message;

/// The log after a case: no panic, no ERROR line unless it contains one of `expected_errors`, and
/// none of the secrets the tests use (passwords, Basic values, credential query strings).
fn assert_clean_log(server: &Server, expected_errors: &[&str]) {
    let logs = server.logs();
    assert!(!logs.contains("panicked"), "panic in log:\n{logs}");
    for line in logs.lines().filter(|l| l.contains("ERROR")) {
        assert!(
            expected_errors.iter().any(|e| line.contains(e)),
            "unexpected error line {line:?}; log:\n{logs}"
        );
    }
    for (user, pass) in [ALICE, BOB] {
        assert!(!logs.contains(pass), "password in log:\n{logs}");
        let b64 = data_encoding::BASE64.encode(format!("{user}:{pass}").as_bytes());
        assert!(!logs.contains(&b64), "Basic value in log:\n{logs}");
    }
    assert!(!logs.contains("pass="), "credential query in log:\n{logs}");
}

/// A request head for `path` with the upgrade headers, Alice's credentials and `extra` headers.
fn upgrade_head(path: &str, extra: &[String]) -> Vec<u8> {
    let mut out = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nAuthorization: {}\r\n",
        basic(ALICE.0, ALICE.1)
    );
    for h in extra {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// An upgrade head of exactly `total` bytes (padded with an `X-Pad` header).
fn sized_head(total: usize) -> Vec<u8> {
    let base = upgrade_head("/echo", &["X-Pad: ".into()]);
    let pad = total - base.len();
    upgrade_head("/echo", &[format!("X-Pad: {}", "a".repeat(pad))])
}

/// Sends a raw request over TLS and returns the response head (without waiting for the close
/// that a 101 never brings).
fn ask(server: &Server, request: &[u8]) -> String {
    let mut tls = server.tls();
    tls.write_all(request).unwrap();
    tls.flush().unwrap();
    read_head(&mut tls)
}

/// Reads a response head byte by byte (never past the blank line, so frames stay unread).
fn read_head(tls: &mut Tls) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A TLS connection upgraded with raw bytes (as `user`), ready for hand-made frames. Retries the
/// TLS handshake while a slot is still being released.
fn open_raw(server: &Server, path: &str, (user, pass): (&str, &str)) -> Tls {
    let until = Instant::now() + IO_TIMEOUT;
    let mut tls = loop {
        match server.try_tls() {
            Ok(tls) => break tls,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no TLS: {e}; log:\n{}", server.logs()),
        }
    };
    let head = String::from_utf8(upgrade_head(path, &[]))
        .unwrap()
        .replace(&basic(ALICE.0, ALICE.1), &basic(user, pass));
    tls.write_all(head.as_bytes()).unwrap();
    tls.flush().unwrap();
    let resp = read_head(&mut tls);
    assert!(
        status_line(&resp).starts_with("HTTP/1.1 101"),
        "{resp}; log:\n{}",
        server.logs()
    );
    tls
}

/// A client frame: FIN, RSV bits (0..=7), opcode, masked unless `unmasked`.
fn frame_with(fin: bool, rsv: u8, opcode: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode];
    let mask_bit = if unmasked { 0 } else { 0x80 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=65535 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x11, 0x22, 0x33, 0x44];
    if unmasked {
        out.extend_from_slice(payload);
    } else {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    out
}

fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(fin, 0, opcode, payload, false)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Reads one server frame: (opcode, payload), or None when the stream ends.
fn read_frame(tls: &mut Tls) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    tls.read_exact(&mut h).ok()?;
    assert_eq!(h[1] & 0x80, 0, "server frames are never masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            tls.read_exact(&mut b).ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            tls.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).unwrap()];
    tls.read_exact(&mut payload).ok()?;
    Some((h[0] & 0x0f, payload))
}

/// Reads until the server's close frame; its code (1005 for none), or None if the stream ended
/// without one.
fn server_close_code(tls: &mut Tls) -> Option<u16> {
    loop {
        let (opcode, payload) = read_frame(tls)?;
        if opcode == 8 {
            return Some(if payload.len() >= 2 {
                u16::from_be_bytes([payload[0], payload[1]])
            } else {
                1005
            });
        }
    }
}

/// Reads data frames until one arrives; returns (opcode, payload).
fn next_data_raw(tls: &mut Tls) -> (u8, Vec<u8>) {
    loop {
        let (opcode, payload) = read_frame(tls).expect("stream ended");
        assert_ne!(opcode, 8, "closed: {payload:?}");
        if opcode == 1 || opcode == 2 {
            return (opcode, payload);
        }
    }
}

/// Ends the TCP connection under a TLS stream without close_notify or a close frame.
fn vanish(tls: &Tls) {
    let _ = tls.sock.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------------
// A. Handshake and HTTP

/// Rows 1, 2 (head size at N and N+1), 3 (one 2 MB header), 7 and 8 (the cases handshake.rs
/// does not have: malformed key, missing Connection, 10 KB request line, bare CR).
#[test]
fn junk_oversized_and_malformed_heads_get_their_status_from_us() {
    let server = Setup::default().start(); // max_request_head 8 KiB, max_headers default
    // Row 1: 2000 junk headers before valid upgrade headers.
    let mut junk: Vec<String> = (0..2000).map(|i| format!("X-Junk-{i}: y")).collect();
    junk.reverse();
    let mut req = b"GET /echo HTTP/1.1\r\n".to_vec();
    for h in &junk {
        req.extend_from_slice(h.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(&upgrade_head("/echo", &[])[b"GET /echo HTTP/1.1\r\n".len()..]);
    let t0 = Instant::now();
    let resp = server.raw_request(&req);
    let status = status_line(&resp);
    assert!(
        status.starts_with("HTTP/1.1 431") || status.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    assert!(resp.to_ascii_lowercase().contains("connection: close"));
    assert!(t0.elapsed() < Duration::from_secs(3));

    // Row 2: a head of exactly max_request_head bytes passes, one byte more is 431.
    let exact = sized_head(8192);
    assert_eq!(exact.len(), 8192);
    let resp = ask(&server, &exact);
    assert!(status_line(&resp).starts_with("HTTP/1.1 101"), "{resp}");
    let resp = server.raw_request(&sized_head(8193));
    assert!(status_line(&resp).starts_with("HTTP/1.1 431"), "{resp}");

    // Row 3: one 2 MB header, written while we watch for the answer.
    let mut big = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    big.resize(big.len() + (2 << 20), b'a');
    big.extend_from_slice(b"\r\n\r\n");
    let mut tls = server.tls();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    for chunk in big.chunks(16 * 1024) {
        if tls.write_all(chunk).and_then(|()| tls.flush()).is_err() {
            break;
        }
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        if got.starts_with(b"HTTP/1.1 ") && got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let answered = t0.elapsed();
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(status_line(&got).starts_with("HTTP/1.1 431"), "{got:?}");
    assert!(
        answered < Duration::from_secs(1),
        "answered after {answered:?}"
    );
    drop(tls);

    // Rows 7 and 8: the malformations handshake.rs does not send.
    let good = String::from_utf8(upgrade_head("/echo", &[])).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (good.replace(KEY, "not base64!"), "400"),
        (good.replace(KEY, "c2hvcnQ="), "400"), // valid base64, 5 bytes
        (good.replace("Connection: Upgrade\r\n", ""), "400"),
        (good.replace("Upgrade: websocket\r\n", ""), "400"),
        (
            good.replace("GET /echo", &format!("GET /echo?{}", "q".repeat(10 * 1024))),
            "431",
        ),
        (good.replace("Host: localhost", "Host: local\rhost"), "400"),
        (good.replace("GET /echo", "DELETE /echo"), "405"),
    ];
    for (req, want) in cases {
        let resp = server.raw_request(req.as_bytes());
        assert!(
            status_line(&resp).starts_with(&format!("HTTP/1.1 {want}")),
            "want {want} for {:?}, got {resp:?}",
            &req[..60.min(req.len())]
        );
        assert!(resp.to_ascii_lowercase().contains("connection: close"));
    }
    still_serving(&server);
    assert_clean_log(&server, &[]);
}

/// Row 4 (a head dripped byte by byte, faster than any per-read timeout: 408 at the upgrade
/// deadline) and row 5 (a ClientHello and then nothing): each dropped at its deadline, the
/// worker freed.
#[test]
fn dripped_heads_and_stalled_client_hellos_are_dropped_at_their_deadlines() {
    let mut setup = Setup::default();
    setup
        .set("server", "workers", "2")
        .set("server", "queue", "0")
        .set("tls", "handshake_timeout", "1s")
        .set("limits", "upgrade_timeout", "1s");
    let server = setup.start();

    // Row 4: one byte every 100 ms; the 1 s deadline covers the whole head, and a head begun
    // and not finished gets 408 then.
    let head = upgrade_head("/echo", &[]);
    let mut tls = server.tls();
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t0 = Instant::now();
    let mut sent = 0;
    let mut byte = [0u8; 1];
    let dropped_after = loop {
        assert!(t0.elapsed() < Duration::from_secs(5), "never dropped");
        if sent < head.len() - 1 {
            // The server reads until it answers, so a write never fails before the answer.
            tls.write_all(&head[sent..=sent])
                .and_then(|()| tls.flush())
                .unwrap_or_else(|e| panic!("dropped without a status: {e}"));
            sent += 1;
        }
        match tls.read(&mut byte) {
            Ok(0) => panic!("closed without a status"),
            Ok(_) => {
                let at = t0.elapsed();
                let mut answer = vec![byte[0]];
                tls.sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let _ = tls.read_to_end(&mut answer);
                let answer = String::from_utf8_lossy(&answer);
                assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
                assert!(
                    answer.to_ascii_lowercase().contains("connection: close"),
                    "{answer}"
                );
                break at;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("dropped without a status: {e}"),
        }
    };
    assert!(
        dropped_after >= Duration::from_millis(800) && dropped_after < Duration::from_secs(3),
        "dropped after {dropped_after:?}"
    );
    drop(tls);

    // Row 5: a ClientHello, then silence, on both workers at once. A hello counts once the
    // server's first flight arrives (a slot still being released refuses without one).
    let hello = || loop {
        let mut tcp = server.tcp();
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = ClientConnection::new(server.client_config(), name).unwrap();
        conn.write_tls(&mut tcp).unwrap();
        let mut first = [0u8; 1];
        if tcp.read(&mut first).unwrap_or(0) == 1 {
            return (tcp, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stalled = [hello(), hello()];
    for (mut tcp, since) in stalled {
        let mut sink = Vec::new();
        // The rest of the server's first flight, then EOF (or a reset) at the deadline.
        let _ = tcp.read_to_end(&mut sink);
        let waited = since.elapsed();
        assert!(
            waited >= Duration::from_millis(700) && waited < Duration::from_secs(4),
            "dropped after {waited:?}"
        );
    }
    // Both workers are free again.
    let mut a = connect_retrying(&server, ALICE);
    let mut b = connect_retrying(&server, BOB);
    for ws in [&mut a, &mut b] {
        ws.send(Message::text("in")).unwrap();
        assert_eq!(next_data(ws), Message::text("in"));
    }
    assert_clean_log(&server, &[]);
}

/// Row 15: a pathological protocol list is answered at once, and only `wsgate.v1` is ever
/// echoed. Row 16: permessage-deflate (and a 64 KiB extension string) gets a 101 without an
/// extensions header.
#[test]
fn protocol_and_extension_headers_are_never_echoed_unless_ours() {
    // With the default 8 KiB head the 100k-space header is refused by size first.
    let small = Setup::default().start();
    let nasty = format!("Sec-WebSocket-Protocol: b{}x", " ".repeat(100_000));
    let t0 = Instant::now();
    let resp = small.raw_request(&upgrade_head("/echo", std::slice::from_ref(&nasty)));
    assert!(status_line(&resp).starts_with("HTTP/1.1 431"), "{resp}");
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_clean_log(&small, &[]);
    drop(small);

    // With room for it (64 KiB, the most tungstenite's handshake accepts), a 60,000-space
    // version is parsed in milliseconds and nothing is echoed. The head limit holds at N and N+1
    // there too.
    let mut setup = Setup::default();
    setup.set("limits", "max_request_head", "64KiB");
    let server = setup.start();
    let resp = ask(&server, &sized_head(64 * 1024));
    assert!(status_line(&resp).starts_with("HTTP/1.1 101"), "{resp}");
    let resp = server.raw_request(&sized_head(64 * 1024 + 1));
    assert!(status_line(&resp).starts_with("HTTP/1.1 431"), "{resp}");
    let nasty = format!("Sec-WebSocket-Protocol: b{}x", " ".repeat(60_000));
    let cases: Vec<(String, Option<&str>)> = vec![
        (nasty, None),
        ("Sec-WebSocket-Protocol: chat, superchat".into(), None),
        ("Sec-WebSocket-Protocol: wsgate.v1x".into(), None),
        (
            "Sec-WebSocket-Protocol: chat, wsgate.v1".into(),
            Some("wsgate.v1"),
        ),
        (
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits".into(),
            None,
        ),
        (
            format!(
                "Sec-WebSocket-Extensions: permessage-deflate; {}",
                "x=1;".repeat(15 * 1024)
            ),
            None,
        ),
    ];
    for (header, echoed) in cases {
        let t0 = Instant::now();
        let resp = ask(
            &server,
            &upgrade_head("/echo", std::slice::from_ref(&header)),
        );
        let took = t0.elapsed();
        let head = resp.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(status_line(&resp).starts_with("HTTP/1.1 101"), "{resp}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert!(!head.contains("sec-websocket-extensions"), "{head}");
        match echoed {
            Some(p) => assert!(
                head.contains(&format!("sec-websocket-protocol: {p}")),
                "{head}"
            ),
            None => assert!(!head.contains("sec-websocket-protocol"), "{head}"),
        }
    }
    still_serving(&server);
    assert_clean_log(&server, &[]);
}

// ---------------------------------------------------------------------------------------------
// B. TLS

/// Runs `openssl s_client` against the server with `args`; returns its combined output.
fn s_client(server: &Server, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(server.addr.to_string())
        .args(["-servername", "localhost"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A hand-made ClientHello with `legacy_version` TLS 1.1 and a `signature_algorithms`
/// extension (which openssl's TLS 1.0/1.1 hellos lack, see below).
fn client_hello_tls11() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // TLS 1.1
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x09, 0xc0, 0x13]); // two CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
    let ext = [0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04];
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

/// Rows 18 and 19. A ClientHello offering only TLS 1.1 gets a fatal `protocol_version` alert.
/// Real TLS 1.0/1.1 clients (openssl `-tls1`, `-tls1_1`) send no `signature_algorithms`
/// extension, and rustls refuses that first, with `handshake_failure`: refused either way, with
/// a fatal alert. TLS 1.2 with only CBC or RSA key exchange suites gets `handshake_failure`.
/// A modern client next to them is unaffected.
#[test]
fn old_tls_versions_and_weak_suites_are_refused_with_alerts() {
    let server = Setup::default().start();
    let mut tcp = server.tcp();
    tcp.write_all(&client_hello_tls11()).unwrap();
    let mut alert = [0u8; 7];
    tcp.read_exact(&mut alert).unwrap();
    // An alert record: level fatal (2), description protocol_version (70).
    assert_eq!(alert[0], 0x15, "not an alert: {alert:02x?}");
    assert_eq!(&alert[5..], &[2, 70], "not protocol_version: {alert:02x?}");
    for version in ["-tls1", "-tls1_1"] {
        // SECLEVEL=0: Debian's OpenSSL would not even offer TLS 1.0/1.1 otherwise.
        let out = s_client(&server, &[version, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(
            out.contains("alert handshake failure") || out.contains("alert protocol version"),
            "{version}: no fatal alert:\n{out}"
        );
        assert!(
            out.contains("Cipher is (NONE)"),
            "{version}: connected:\n{out}"
        );
    }
    for suite in [
        "ECDHE-ECDSA-AES128-SHA", // CBC
        "ECDHE-RSA-AES128-SHA",   // CBC
        "AES128-SHA",             // RSA key exchange, CBC
        "AES128-GCM-SHA256",      // RSA key exchange
    ] {
        let out = s_client(
            &server,
            &["-tls1_2", "-cipher", &format!("{suite}@SECLEVEL=0")],
        );
        assert!(
            out.contains("alert handshake failure"),
            "{suite}: no handshake_failure alert:\n{out}"
        );
    }
    // The same tool with a modern suite gets in.
    let out = s_client(
        &server,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    );
    assert!(out.contains("ECDHE-ECDSA-AES128-GCM-SHA256"), "{out}");
    still_serving(&server);
    assert!(server.wait_log("tls handshake failed", IO_TIMEOUT));
    assert_clean_log(&server, &[]);
}

/// Row 21: a TCP connection dropped without close_notify, idle or mid-message, frees its slot
/// (one worker: the next client gets in) with no error-level line.
#[test]
fn connections_dropped_without_close_notify_free_their_slot() {
    let mut setup = Setup::default();
    setup
        .set("server", "workers", "1")
        .set("server", "queue", "0")
        .set("admin", "listen", "127.0.0.1:0");
    let server = setup.start();
    // Idle.
    let ws = server.connect_as("/echo", ALICE);
    vanish(ws.get_ref());
    let mut next = connect_retrying(&server, BOB);
    next.send(Message::text("one")).unwrap();
    assert_eq!(next_data(&mut next), Message::text("one"));
    vanish(next.get_ref());
    // Mid-message: the header of a 100-byte frame and 10 bytes of it.
    let mut tls = open_raw(&server, "/echo", ALICE);
    let charged = metric(&server, "wsgate_memory_bytes");
    let whole = frame(true, 2, &[7u8; 100]);
    tls.write_all(&whole[..16]).unwrap();
    tls.flush().unwrap();
    // The 10 bytes that arrived are charged (to the read share) once the server has read them.
    wait_metric(&server, "wsgate_memory_bytes", |b| b >= charged + 10);
    vanish(&tls);
    let mut last = connect_retrying(&server, BOB);
    last.send(Message::text("two")).unwrap();
    assert_eq!(next_data(&mut last), Message::text("two"));
    assert!(server.wait_log("code=1006", IO_TIMEOUT));
    assert!(server.count_log("code=1006") >= 3, "{}", server.logs());
    assert_clean_log(&server, &[]);
}

/// A client configuration trusting `server` that presents `cert` (signed with `key`).
fn with_client_cert(
    server: &Server,
    cert: CertificateDer<'static>,
    key: &rcgen::KeyPair,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(server.ca.clone()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)
            .unwrap(),
    )
}

/// Whether a TLS connection with `config` is refused (TLS 1.3 reports a refused client
/// certificate on the first read).
fn tls_refused(server: &Server, config: Arc<ClientConfig>) -> bool {
    server
        .tls_with(config)
        .and_then(|mut t| {
            t.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
            t.flush()?;
            let mut b = [0u8; 1];
            t.read(&mut b).map(|_| ())
        })
        .is_err()
}

/// Row 20: with client certificates required, a self-signed certificate and an expired one
/// issued by the trusted CA are refused in TLS, with one log line each; a valid one gets in.
/// (No certificate at all: access.rs::client_certificates_required_and_optional.)
#[test]
fn self_signed_and_expired_client_certificates_are_refused_in_tls() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test client CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf = |expired: bool| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.der().clone(), key)
    };
    let mut setup = Setup::default();
    setup
        .set("tls", "client_auth", "required")
        .set("tls", "client_ca", "client-ca.pem");
    let (dir, config, server_ca) = setup.write();
    std::fs::write(dir.path().join("client-ca.pem"), ca.pem()).unwrap();
    let server = Server::spawn(dir, &config, server_ca);

    let rogue_key = rcgen::KeyPair::generate().unwrap();
    let mut rogue = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    rogue
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    let rogue = rogue.self_signed(&rogue_key).unwrap();
    let (expired, expired_key) = leaf(true);
    for (what, cert, key) in [
        ("self-signed", rogue.der().clone(), &rogue_key),
        ("expired", expired, &expired_key),
    ] {
        let before = server.count_log("tls handshake failed");
        assert!(
            tls_refused(&server, with_client_cert(&server, cert, key)),
            "{what} client certificate got through"
        );
        let until = Instant::now() + IO_TIMEOUT;
        while server.count_log("tls handshake failed") == before && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            server.count_log("tls handshake failed"),
            before + 1,
            "{what}: one line; log:\n{}",
            server.logs()
        );
    }
    let (good, good_key) = leaf(false);
    let (mut ws, _) = server
        .connect_full("/echo", &[], with_client_cert(&server, good, &good_key))
        .unwrap_or_else(|e| panic!("valid client certificate: {e}; log:\n{}", server.logs()));
    ws.send(Message::text("mtls")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("mtls"));
    assert_clean_log(&server, &[]);
}

// ---------------------------------------------------------------------------------------------
// C. Frames after the upgrade

/// Rows 24 to 34: each bad frame on a fresh connection gets its close code; the good ones next
/// to them (limits at N, split UTF-8, unsolicited pong, valid close codes) are served.
#[test]
fn frame_level_violations_get_their_close_codes() {
    let mut setup = Setup::default();
    setup
        .set("limits", "max_frame_size", "1KiB")
        .set("limits", "max_message_size", "4KiB");
    let server = setup.start();

    let mut bad: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", frame_with(true, 0, 1, b"hi", true), 1002),
        ("rsv1", frame_with(true, 4, 1, b"hi", false), 1002),
        ("rsv2", frame_with(true, 2, 1, b"hi", false), 1002),
        ("rsv3", frame_with(true, 1, 2, b"hi", false), 1002),
        ("ping 126 bytes", frame(true, 9, &[0u8; 126]), 1002),
        ("fragmented ping", frame(false, 9, b"p"), 1002),
        ("continuation first", frame(true, 0, b"x"), 1002),
        (
            "data inside fragmented message",
            [frame(false, 1, b"a"), frame(true, 1, b"b")].concat(),
            1002,
        ),
        (
            "invalid utf-8 split across fragments",
            [
                frame(false, 1, &[b'o', 0xe2, 0x82]),
                frame(true, 0, &[0x28]),
            ]
            .concat(),
            1007,
        ),
        (
            "utf-8 cut short at the end of the message",
            [frame(false, 1, b"ok"), frame(true, 0, &[0xe2, 0x82])].concat(),
            1007,
        ),
        ("close with 1-byte payload", frame(true, 8, &[3]), 1002),
        (
            "close reason not utf-8",
            frame(true, 8, &close_payload(1000, &[0xff, 0xfe])),
            1007,
        ),
        (
            "64-bit length with the top bit set",
            vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0x10, 1, 2, 3, 4],
            1009,
        ),
        (
            "2^62-byte header and no payload",
            vec![0x82, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            1009,
        ),
        (
            "frame one byte over max_frame_size",
            frame(true, 2, &[1u8; 1025]),
            1009,
        ),
        (
            "fragmented message one byte over max_message_size",
            [
                frame(false, 2, &[1u8; 1024]),
                frame(false, 0, &[1u8; 1024]),
                frame(false, 0, &[1u8; 1024]),
                frame(false, 0, &[1u8; 1024]),
                frame(true, 0, &[1u8; 1]),
            ]
            .concat(),
            1009,
        ),
    ];
    for opcode in [3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        bad.push(("reserved opcode", frame(true, opcode, b"x"), 1002));
    }
    for code in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
        bad.push((
            "close code",
            frame(true, 8, &close_payload(code, b"")),
            1002,
        ));
    }
    for (what, bytes, want) in bad {
        let mut tls = open_raw(&server, "/echo", ALICE);
        let t0 = Instant::now();
        tls.write_all(&bytes).unwrap();
        tls.flush().unwrap();
        let got = server_close_code(&mut tls);
        assert_eq!(
            got,
            Some(want),
            "{what} ({:02x?}); log:\n{}",
            &bytes[..bytes.len().min(14)],
            server.logs()
        );
        assert!(t0.elapsed() < Duration::from_secs(2), "{what}: slow close");
    }

    // The valid neighbours of those cases are served.
    let mut tls = open_raw(&server, "/echo", ALICE);
    // Row 27: an unsolicited pong is ignored.
    tls.write_all(&frame(true, 10, b"unasked")).unwrap();
    tls.write_all(&frame(true, 1, b"after pong")).unwrap();
    tls.flush().unwrap();
    assert_eq!(next_data_raw(&mut tls), (1, b"after pong".to_vec()));
    // A 125-byte ping is answered.
    tls.write_all(&frame(true, 9, &[9u8; 125])).unwrap();
    tls.flush().unwrap();
    assert_eq!(read_frame(&mut tls), Some((10, vec![9u8; 125])));
    // Row 29: valid UTF-8 split across fragments (a euro sign) is delivered whole.
    tls.write_all(&[frame(false, 1, &[0xe2, 0x82]), frame(true, 0, &[0xac])].concat())
        .unwrap();
    tls.flush().unwrap();
    assert_eq!(next_data_raw(&mut tls), (1, "€".as_bytes().to_vec()));
    // Row 33: a frame of exactly max_frame_size.
    tls.write_all(&frame(true, 2, &[5u8; 1024])).unwrap();
    tls.flush().unwrap();
    assert_eq!(next_data_raw(&mut tls), (2, vec![5u8; 1024]));
    // Row 34: a message of exactly max_message_size in four frames, a ping between them.
    let mut exact = frame(false, 2, &[6u8; 1024]);
    exact.extend(frame(false, 0, &[6u8; 1024]));
    exact.extend(frame(true, 9, b"mid"));
    exact.extend(frame(false, 0, &[6u8; 1024]));
    exact.extend(frame(true, 0, &[6u8; 1024]));
    tls.write_all(&exact).unwrap();
    tls.flush().unwrap();
    assert_eq!(next_data_raw(&mut tls), (2, vec![6u8; 4096]));
    // Row 30: valid close codes are answered with the same code.
    tls.write_all(&frame(true, 8, &close_payload(4999, b"bye")))
        .unwrap();
    tls.flush().unwrap();
    assert_eq!(server_close_code(&mut tls), Some(4999));
    for code in [1000, 3000] {
        let mut tls = open_raw(&server, "/echo", ALICE);
        tls.write_all(&frame(true, 8, &close_payload(code, b"")))
            .unwrap();
        tls.flush().unwrap();
        assert_eq!(server_close_code(&mut tls), Some(code));
    }
    assert!(server.wait_log("code=1002 by=server", IO_TIMEOUT));
    assert!(server.wait_log("code=1007 by=server", IO_TIMEOUT));
    assert!(server.wait_log("code=1009 by=server", IO_TIMEOUT));
    still_serving(&server);
    assert_clean_log(&server, &[]);
}

/// Row 32, second half: connections that declare a whole `max_frame_size` frame and then stall
/// are pinged and dropped at the idle timeout (a single unfinished frame holds no message
/// deadline), each holding what arrived of it, never the frame it declared.
#[test]
fn connections_stalled_inside_a_max_size_frame_are_dropped_at_the_idle_timeout() {
    let mut setup = Setup::default();
    setup
        .set("limits", "max_frame_size", "64KiB")
        .set("limits", "ping_interval", "500ms")
        .set("limits", "idle_timeout", "1500ms")
        .set("admin", "listen", "127.0.0.1:0");
    let server = setup.start();
    let mut stalled: Vec<Tls> = (0..8).map(|_| open_raw(&server, "/echo", ALICE)).collect();
    still_serving(&server); // both password-hashing buffers are allocated before we measure
    let before = rss_kib(server.pid());
    let t0 = Instant::now();
    for tls in &mut stalled {
        let whole = frame(true, 2, &vec![0u8; 64 * 1024]);
        tls.write_all(&whole[..14 + 100]).unwrap();
        tls.flush().unwrap();
    }
    // What arrived of each frame (100 bytes) is charged to the read share once read: once all
    // eight are, the server has read every header and what followed it.
    wait_metric(&server, "wsgate_memory_bytes", |b| b >= 8 * 100);
    let grown = rss_kib(server.pid()).saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "RSS grew by {grown} KiB for 8 x 64 KiB frames"
    );
    for tls in &mut stalled {
        assert_eq!(server_close_code(tls), Some(1001));
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // Each close line follows the close handshake's wait for our (never sent) reply.
    wait_until(IO_TIMEOUT, || {
        server.count_log("reason=\"idle timeout\"") >= 8
    });
    assert_eq!(
        server.count_log("reason=\"idle timeout\""),
        8,
        "{}",
        server.logs()
    );
    still_serving(&server);
    assert_clean_log(&server, &[]);
}

/// The server's CPU time so far (user + system), in clock ticks, from /proc.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from 3 after the comm field.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Row 36, the ping half: 20,000 pings sent without reading a single pong. The server keeps at
/// most its write buffer plus one pending pong (tungstenite replaces an unsent pong), stays
/// within memory, serves others meanwhile, and the flooder still works once it reads. (The
/// tiny-message half is access.rs::message_rate_limit_closes_a_flooder_while_others_are_unaffected.)
#[test]
fn a_ping_flood_costs_bounded_memory_and_disturbs_no_one() {
    let mut setup = Setup::default();
    setup
        .set("limits", "max_message_size", "4KiB")
        .set("limits", "max_frame_size", "4KiB")
        .set("limits", "write_buffer_size", "4KiB")
        .set("limits", "max_write_buffer_size", "16KiB");
    let server = setup.start();
    // The first login allocates the password-hashing memory: measure after it.
    still_serving(&server);
    let mut tls = open_raw(&server, "/echo", ALICE);
    let before = rss_kib(server.pid());
    let ping = frame(true, 9, &[b'p'; 125]);
    let pings = 20_000;
    let flood: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * pings)
        .collect();
    for chunk in flood.chunks(64 * 1024) {
        tls.write_all(chunk).unwrap();
    }
    tls.flush().unwrap();
    still_serving(&server);
    let grown = rss_kib(server.pid()).saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    // Drain the pongs, then the connection still echoes.
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut pongs = 0;
    while let Some((opcode, _)) = read_frame(&mut tls) {
        assert_eq!(opcode, 10);
        pongs += 1;
    }
    assert!(pongs >= 1 && pongs <= pings, "{pongs} pongs");
    tls.sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tls.write_all(&frame(true, 1, b"still here")).unwrap();
    tls.flush().unwrap();
    assert_eq!(next_data_raw(&mut tls), (1, b"still here".to_vec()));
    assert_clean_log(&server, &[]);
}

/// Row 38: the first fragment of a broadcast message, then a reset: subscribers never see a
/// partial message, and the next whole message is the next thing they get.
#[test]
fn a_publisher_reset_mid_message_broadcasts_nothing_partial() {
    let mut setup = Setup::default();
    setup.set("admin", "listen", "127.0.0.1:0");
    let server = setup.start();
    let mut subscriber = server.connect_as("/chat/r38", ALICE);
    let mut publisher = open_raw(&server, "/chat/r38", BOB);
    let charged = metric(&server, "wsgate_memory_bytes");
    publisher.write_all(&frame(false, 1, b"partial-")).unwrap();
    publisher.write_all(&frame(false, 0, b"more-")).unwrap();
    publisher.flush().unwrap();
    // Both fragments are read (and charged while the message is assembled) before the reset.
    wait_metric(&server, "wsgate_memory_bytes", |b| b >= charged + 13);
    vanish(&publisher);
    assert!(
        server.wait_log("code=1006", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    let mut second = server.connect_as("/chat/r38", BOB);
    second.send(Message::text("whole")).unwrap();
    assert_eq!(next_data(&mut subscriber), Message::text("whole"));
    subscriber
        .get_ref()
        .sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    match subscriber.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_clean_log(&server, &[]);
}

// ---------------------------------------------------------------------------------------------
// D. Resources

/// Row 41: with 64 file descriptors and a flood of connections, `accept` fails; the failure is
/// logged at most once per interval, the listener backs off instead of spinning, and clients get
/// in again once descriptors free up.
#[test]
fn fd_exhaustion_backs_off_logs_rarely_and_recovers() {
    let mut setup = Setup::default();
    setup
        .set("server", "workers", "100")
        .set("server", "queue", "0")
        .set("server", "max_pre_auth", "100")
        .set("server", "max_connections_per_ip", "200")
        .set("tls", "handshake_timeout", "3s");
    let (dir, config, ca) = setup.write();
    let server = Server::spawn_wrapped(dir, &config, ca, &["prlimit", "--nofile=64:64", "--"]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 64 ")),
        "{limits}"
    );
    // Silent connections until the server runs out of descriptors.
    let flood: Vec<_> = (0..90)
        .map(|i| {
            std::net::TcpStream::connect_timeout(&server.addr, IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("connection {i}: {e}; log:\n{}", server.logs()))
        })
        .collect();
    assert!(
        server.wait_log("accept failed", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    let ticks = cpu_ticks(server.pid());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(server.pid()) - ticks;
    // A spinning accept loop would burn ~100 ticks a second.
    assert!(spent < 30, "{spent} ticks in one second");
    drop(flood);
    // Recovery: the stallers hit their deadline or are read as closed; then a client gets in.
    let until = Instant::now() + Duration::from_secs(15);
    let mut failures = Vec::new();
    let mut ws = loop {
        let attempt = std::net::TcpStream::connect_timeout(&server.addr, IO_TIMEOUT)
            .map_err(|e| e.to_string())
            .and_then(|tcp| {
                tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                server
                    .connect_over(tcp, "/echo", ALICE)
                    .map_err(|e| e.to_string())
            });
        match attempt {
            Ok(ws) => break ws,
            Err(e) => {
                failures.push(e);
                assert!(
                    Instant::now() < until,
                    "no recovery: {failures:?}; log:\n{}",
                    server.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    ws.send(Message::text("back")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("back"));
    assert!(server.count_log("accept failed") <= 2, "{}", server.logs());
    assert_clean_log(&server, &["accept failed", "wake-up fd"]);
}

// ---------------------------------------------------------------------------------------------
// E. Configuration and process

/// Runs `wsgate serve` to its exit (at most 10 s); returns the exit code and stderr.
fn serve_until_exit(config: &std::path::Path) -> (Option<i32>, String) {
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + IO_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

/// Row 44: a users file with a line that has no hash, an unknown hash type, a plain password or
/// a duplicate user stops the start with exit 2 and the line number; blank lines, comments and
/// CRLF line ends are fine; a world-readable file starts with a warning.
#[test]
fn bad_users_files_are_refused_at_start_with_line_numbers() {
    let (dir, config, ca) = Setup::default().write();
    let users = dir.path().join("users");
    let text = users_file_text();
    let alice = text.lines().next().unwrap();
    let bob = text.lines().nth(1).unwrap();
    let cases = [
        (format!("{alice}\nbob:\n"), 2, "hash"),
        (
            format!(
                "# comment\n{alice}\nbob:$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\n"
            ),
            3,
            "2b",
        ),
        (format!("{alice}\n\n{bob}\n{alice}\n"), 4, "alice"),
        (format!("{alice}\nbob:{}\n", BOB.1), 2, "bob"),
    ];
    for (content, line, word) in cases {
        std::fs::write(&users, &content).unwrap();
        let (code, stderr) = serve_until_exit(&config);
        assert_eq!(code, Some(2), "{content:?}: {stderr}");
        assert!(
            stderr.contains(&format!("users:{line}")),
            "line {line}: {stderr}"
        );
        assert!(stderr.contains(word), "{word}: {stderr}");
        assert!(!stderr.contains(BOB.1), "password shown: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Blank lines, a comment and CRLF line ends: served; world-readable: a warning.
    std::fs::write(&users, format!("\r\n# users\r\n{alice}\r\n\r\n{bob}\r\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::spawn(dir, &config, ca);
    assert!(
        server.logs().contains("accessible by group/others"),
        "{}",
        server.logs()
    );
    // Said once: reloads reading the same file with the same mode do not repeat it.
    for _ in 0..3 {
        server.reload_and_wait();
    }
    assert_eq!(
        server.count_log("accessible by group/others"),
        1,
        "{}",
        server.logs()
    );
    let mut ws = server.connect_as("/echo", ALICE);
    ws.send(Message::text("crlf")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("crlf"));
    still_serving(&server);
    assert_clean_log(&server, &[]);
}

// ---------------------------------------------------------------------------------------------
// Issue 11: no connection can wedge a worker; one parse of the request target.

/// `[channel:/chat/*]` with 1 KiB messages and a 10 KiB write buffer, and the admin endpoint.
fn small_chat() -> Setup {
    let mut setup = Setup::default();
    setup
        .set("admin", "listen", "127.0.0.1:0")
        .set("channel:/chat/*", "max_message_size", "1KiB")
        .set("channel:/chat/*", "max_frame_size", "1KiB")
        .set("channel:/chat/*", "max_write_buffer_size", "10KiB");
    setup
}

/// The reproduction, without the request-target trick: a subscriber joined with 1 KiB
/// messages and a 10 KiB write buffer; a reload raises the channel's limits; a publisher that
/// joined after the reload broadcasts a zero-length message, one of exactly the subscriber's
/// `max_message_size`, one byte more, one whose frame is exactly the subscriber's write buffer,
/// one byte more, and 60 KB. The subscriber gets the first two and the marker after them; the
/// other four are dropped for it alone and counted; its worker does not spin, and idle timeout,
/// its close and SIGTERM all still reach it.
#[test]
fn a_broadcast_over_a_subscribers_own_limits_is_dropped_for_it_and_its_worker_stays_free() {
    let mut setup = small_chat();
    setup
        .set("limits", "idle_timeout", "60s")
        .set("server", "shutdown_grace", "3s");
    let mut server = setup.start();
    let mut subscriber = server.connect_as("/chat/wedge", ALICE);
    setup
        .set("channel:/chat/*", "max_message_size", "64KiB")
        .set("channel:/chat/*", "max_frame_size", "64KiB")
        .set("channel:/chat/*", "max_write_buffer_size", "128KiB");
    std::fs::write(server.dir.path().join("wsgate.ini"), setup.render()).unwrap();
    server.reload_and_wait();
    assert!(
        server.wait_log("reloaded ", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    let mut publisher = server.connect_as("/chat/wedge", BOB);
    let write_buffer = 10 * 1024;
    let sizes = [0, 1024, 1025, write_buffer - 4, write_buffer - 3, 60_000];
    for n in sizes {
        publisher.send(Message::binary(vec![b'x'; n])).unwrap();
    }
    publisher.send(Message::text("marker")).unwrap();
    // A wedged subscriber never gets the marker: its read times out.
    let mut got = Vec::new();
    loop {
        match next_data(&mut subscriber) {
            Message::Text(t) if t.as_str() == "marker" => break,
            other => got.push(other.len()),
        }
    }
    assert_eq!(got, [0, 1024], "sizes the subscriber got");
    assert_eq!(metric(&server, "wsgate_broadcast_too_big_total"), 4);
    // No worker spins: the whole process uses well under a core over a second.
    let before = cpu_ticks(server.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(server.pid()) - before;
    assert!(used < 30, "{used} ticks of CPU in one idle second");
    // The subscriber still echoes nothing of its own but closes normally, and SIGTERM finds no
    // connection it cannot reach.
    drop(publisher);
    server.terminate();
    assert_eq!(close_code(&mut subscriber), 1001);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", server.logs());
    assert!(
        server.logs().contains("shutdown complete"),
        "{}",
        server.logs()
    );
    assert_clean_log(&server, &[]);
}

/// Issue 11, item 2: the request target is parsed once, and that path decides the limits, the
/// access, the hub group and the logs. With `[channel:/a/b]` at 1 KiB and `[channel:/a/*]` at
/// 1 MiB: origin-form (with or without a query) gets /a/b's limits, so 2 KiB closes 1009; a
/// `#fragment` and absolute-form are refused with 400 instead of getting another channel's (or
/// the default) limits; `//host/a/b` is a path with an empty segment (404).
#[test]
fn every_spelling_of_a_request_target_gets_one_paths_limits_or_a_400() {
    let mut setup = Setup::default();
    setup
        .set("channel:/a/b", "mode", "broadcast")
        .set("channel:/a/b", "max_message_size", "1KiB")
        .set("channel:/a/b", "max_frame_size", "1KiB")
        .set("channel:/a/*", "mode", "broadcast")
        .set("channel:/a/*", "max_message_size", "1MiB")
        .set("channel:/a/*", "max_frame_size", "1MiB")
        .set("channel:/a/*", "max_write_buffer_size", "2MiB")
        .set(
            "role:everyone",
            "subscribe",
            "/echo, /chat/*, /news, /a/b, /a/*",
        )
        .set(
            "role:everyone",
            "publish",
            "/echo, /chat/*, /news, /a/b, /a/*",
        );
    let server = setup.start();
    for target in ["/a/b", "/a/b?x=1", "/a/b?"] {
        let mut tls = server.tls();
        tls.write_all(&upgrade_head(target, &[])).unwrap();
        tls.flush().unwrap();
        let resp = read_head(&mut tls);
        assert!(
            status_line(&resp).starts_with("HTTP/1.1 101"),
            "{target}: {resp}"
        );
        tls.write_all(&frame(true, 2, &[0u8; 2048])).unwrap();
        tls.flush().unwrap();
        assert_eq!(server_close_code(&mut tls), Some(1009), "{target}");
    }
    for (target, want) in [
        ("/a/b#x", "400"),
        ("/a/b#/../x", "400"),
        ("/a/b?x=1#y", "400"),
        ("https://localhost/a/b", "400"),
        ("wss://localhost/a/b", "400"),
        ("/a/<b>", "400"),
        ("//localhost/a/b", "404"),
    ] {
        let resp = ask(&server, &upgrade_head(target, &[]));
        assert!(
            status_line(&resp).starts_with(&format!("HTTP/1.1 {want} ")),
            "{target}: {resp}"
        );
    }
    // The open and close lines name the one path, never a spelling of it.
    let logs = server.logs();
    for line in logs.lines().filter(|l| l.contains(" open peer=")) {
        assert!(line.ends_with(" path=/a/b"), "{line}");
    }
    still_serving(&server);
    assert_clean_log(&server, &[]);
}

/// Issue 11, item 3: heads that passed our checks and then got a bare close from tungstenite,
/// or waited for the upgrade deadline, get their status at once: `Upgrade: websocket, h2c` and
/// a second `Connection` header (tungstenite reads only the first of each), bare-LF line endings,
/// and a body announced by `Content-Length` or `Transfer-Encoding` (its bytes would otherwise be
/// read as WebSocket frames).
#[test]
fn heads_tungstenite_would_drop_without_a_status_get_400_at_once() {
    let mut setup = Setup::default();
    setup.set("limits", "upgrade_timeout", "8s");
    let server = setup.start();
    let bare_lf = String::from_utf8(upgrade_head("/echo", &[]))
        .unwrap()
        .replace("\r\n", "\n")
        .into_bytes();
    let mut body = upgrade_head("/echo", &["Content-Length: 5".into()]);
    body.extend_from_slice(b"hello");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Upgrade: websocket, h2c",
            String::from_utf8(upgrade_head("/echo", &[]))
                .unwrap()
                .replace("Upgrade: websocket", "Upgrade: websocket, h2c")
                .into_bytes(),
        ),
        (
            "two Connection headers",
            String::from_utf8(upgrade_head("/echo", &[]))
                .unwrap()
                .replace(
                    "Connection: Upgrade\r\n",
                    "Connection: keep-alive\r\nConnection: Upgrade\r\n",
                )
                .into_bytes(),
        ),
        ("bare LF", bare_lf),
        ("Content-Length with a body", body),
        (
            "Content-Length: 0",
            upgrade_head("/echo", &["Content-Length: 0".into()]),
        ),
        (
            "Transfer-Encoding: chunked",
            upgrade_head("/echo", &["Transfer-Encoding: chunked".into()]),
        ),
    ];
    for (name, request) in cases {
        let started = Instant::now();
        let resp = ask(&server, &request);
        let took = started.elapsed();
        assert!(
            status_line(&resp).starts_with("HTTP/1.1 400 "),
            "{name}: {resp:?}; log:\n{}",
            server.logs()
        );
        assert!(
            resp.to_ascii_lowercase().contains("connection: close\r\n"),
            "{name}: {resp}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{name}: answered after {took:?}"
        );
    }
    still_serving(&server);
    assert_clean_log(&server, &[]);
}

/// Issue 11, the class: a client that keeps the server's socket full of tiny messages (rate
/// limits off) must not keep its loop reading past the checks, nor its close from ending: SIGTERM
/// reaches it, and the close handshake ends at its deadline although the flood goes on.
#[test]
fn a_client_flooding_without_pause_is_still_reached_by_shutdown() {
    let mut setup = Setup::default();
    setup
        .set("channel:/chat/*", "max_messages_per_sec", "0")
        .set("channel:/chat/*", "max_bytes_per_sec", "0")
        .set("server", "shutdown_grace", "5s");
    let mut server = setup.start();
    let mut tls = open_raw(&server, "/chat/flood", ALICE);
    let burst: Vec<u8> = frame(true, 2, b"xy")
        .into_iter()
        .cycle()
        .take(8 * 8192)
        .collect();
    let flooder = std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(12) {
            if tls.write_all(&burst).is_err() {
                break;
            }
        }
        started.elapsed()
    });
    std::thread::sleep(Duration::from_secs(1));
    let signalled = Instant::now();
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(15));
    let took = signalled.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{}", server.logs());
    assert!(
        server.logs().contains("shutdown complete"),
        "after {took:?}: {}",
        server.logs()
    );
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    let flooded = flooder.join().unwrap();
    assert!(flooded < Duration::from_secs(12), "the flood was never cut");
}
