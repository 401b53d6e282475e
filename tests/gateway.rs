//! `mode = proxy`, end to end: wsgate in front of a real plain WebSocket app (Python
//! `websockets`, tests/gateway_backend.py, started by each test on loopback). The backend learns
//! who the client is from wsgate's headers only; messages and close codes go both ways; a backend
//! that is down, silent or answering wrongly gets the client a 503, 504 or 502 before any 101;
//! a backend that fails or stops reading mid-session ends the client's connection, bounded in
//! memory and time; reload, revocation and shutdown reach proxied connections.
//!
//! Python 3 with `websockets` >= 14 must be available: `scripts/test` installs it into
//! target/test-venv (or set WSGATE_TEST_PYTHON to an interpreter that has it).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

// ------------------------------------------------------------------------------------------
// Helpers.

/// The Python interpreter with `websockets`: `WSGATE_TEST_PYTHON`, else the venv `scripts/test`
/// makes, else `python3`. Fails (never skips) when none has it.
fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python3");
    let candidates: Vec<PathBuf> = std::env::var_os("WSGATE_TEST_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv, PathBuf::from("python3")])
        .collect();
    for python in candidates {
        let ok = Command::new(&python)
            .args([
                "-c",
                "import websockets, sys; sys.exit(int(websockets.__version__.split('.')[0]) < 14)",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return python;
        }
    }
    panic!(
        "no python3 with websockets >= 14: tests/gateway.rs runs a real Python backend. Run \
         `scripts/test` (it installs websockets into target/test-venv) or set WSGATE_TEST_PYTHON"
    )
}

/// A running tests/gateway_backend.py; killed on drop. Its stdout lines are collected.
struct Backend {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// `ws://127.0.0.1:PORT`, `wss://localhost:PORT` or `unix:PATH`.
    url: String,
}

impl Backend {
    fn start(args: &[&str]) -> Backend {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gateway_backend.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Python backend");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut backend = Backend {
            child,
            lines,
            url: String::new(),
        };
        let listening = backend.wait_line("listening ");
        let at = listening.trim_start_matches("listening ");
        let tls = args.contains(&"--tls");
        backend.url = match at.strip_prefix("unix:") {
            Some(path) => format!("unix:{path}"),
            None if tls => format!("wss://localhost:{at}"),
            None => format!("ws://127.0.0.1:{at}"),
        };
        backend
    }

    /// The first line starting with `prefix` (waits for it).
    fn wait_line(&self, prefix: &str) -> String {
        self.wait_nth(prefix, 1)
    }

    /// The `n`th line starting with `prefix` (waits for it).
    fn wait_nth(&self, prefix: &str, n: usize) -> String {
        let until = Instant::now() + IO_TIMEOUT;
        loop {
            let found: Vec<String> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.starts_with(prefix))
                .cloned()
                .collect();
            if found.len() >= n {
                return found[n - 1].clone();
            }
            assert!(
                Instant::now() < until,
                "backend printed no {prefix:?} line #{n}; it printed:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The default test config plus `[channel:/app/*] mode = proxy` to `backend`, open to everyone.
fn gateway(backend: &str) -> Setup {
    let mut setup = Setup::default();
    setup
        .set("channel:/app/*", "mode", "proxy")
        .set("channel:/app/*", "backend", backend)
        .set("admin", "listen", "127.0.0.1:0")
        .set(
            "role:everyone",
            "subscribe",
            "/echo, /chat/*, /news, /app/*",
        )
        .set("role:everyone", "publish", "/echo, /chat/*, /news, /app/*");
    setup
}

/// The backend's hello: the JSON text it sends first, parsed loosely (field -> raw JSON value).
fn hello(ws: &mut Client) -> String {
    match next_data(ws) {
        Message::Text(t) => t.as_str().to_string(),
        other => panic!("expected the backend's hello, got {other:?}"),
    }
}

/// A port nothing listens on (bound, then closed).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ------------------------------------------------------------------------------------------
// The happy path.

#[test]
fn the_backend_learns_who_the_client_is_from_wsgate_alone_and_messages_go_both_ways() {
    let backend = Backend::start(&[]);
    let server = gateway(&backend.url).start();
    // Password in the query, a forged identity header, and a query the app wants.
    let mut ws = server
        .connect_with(
            "/app/room/7?user=alice&pass=alice-secret-pw&lang=en&us%65r=mallory&TOKEN=x",
            &[
                ("Origin", ORIGIN_OK),
                ("X-Wsgate-User", "mallory"),
                ("X-Wsgate-Auth", "client-cert"),
                ("X-Forwarded-For", "203.0.113.9"),
            ],
        )
        .unwrap_or_else(|e| panic!("connect: {e}; log:\n{}", server.logs()));
    let greeting = hello(&mut ws);
    assert!(
        greeting.contains(r#""path": "/room/7?lang=en""#),
        "{greeting}"
    );
    assert!(greeting.contains(r#""user": ["alice"]"#), "{greeting}");
    assert!(greeting.contains(r#""auth": ["password"]"#), "{greeting}");
    assert!(
        greeting.contains(r#""client": ["127.0.0.1"]"#),
        "{greeting}"
    );
    assert!(
        !greeting.contains("mallory") && !greeting.contains("203.0.113.9"),
        "{greeting}"
    );
    assert!(!greeting.contains("secret"), "{greeting}");
    assert_eq!(
        backend.wait_line("open "),
        "open path=/room/7?lang=en user=alice users=1 auth=password client=127.0.0.1"
    );

    ws.send(Message::text("héllo")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("héllo"));
    let blob: Vec<u8> = (0..=255u8).cycle().take(40_000).collect();
    ws.send(Message::binary(blob.clone())).unwrap();
    assert_eq!(next_data(&mut ws), Message::binary(blob));
    // A ping is answered by wsgate, data still flows after it.
    ws.send(Message::Ping(b"p".to_vec().into())).unwrap();
    ws.send(Message::text("after ping")).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"p"),
            Message::Text(t) => {
                assert_eq!(t.as_str(), "after ping");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(metric(&server, "wsgate_proxy_connections_total "), 1);
    assert!(
        server
            .logs()
            .contains(&format!("path=/app/room/7 backend={}", backend.url)),
        "{}",
        server.logs()
    );
    assert!(!server.logs().contains("alice-secret-pw"));

    // Credentials in `Authorization`: the header is not forwarded either.
    let mut bob = server.connect_as("/app/x", BOB);
    let h = hello(&mut bob);
    assert!(
        h.contains(r#""user": ["bob"]"#) && h.contains(r#""path": "/x""#),
        "{h}"
    );
    assert!(h.contains(r#""authorization": null"#), "{h}");
}

/// `GET /connections` on the admin API shows a proxied connection's traffic as it shows any
/// other's: what the client sent on to the backend (in) and what the backend sent it (out).
#[test]
fn the_admin_listing_shows_a_proxied_connections_traffic_both_ways() {
    let backend = Backend::start(&[]);
    let server = gateway(&backend.url).start();
    let mut ws = server.connect_as("/app/room", ALICE);
    let greeting = hello(&mut ws);
    ws.send(Message::text("four")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("four"));
    ws.send(Message::binary(vec![7u8; 300])).unwrap();
    assert_eq!(next_data(&mut ws), Message::binary(vec![7u8; 300]));
    let (status, body) = server.admin_get("/connections");
    assert_eq!(status, 200, "{body}");
    let listed = body
        .lines()
        .find(|l| l.contains(r#""path":"/app/room""#))
        .unwrap_or_else(|| panic!("no /app/room in {body}"));
    let traffic = format!(
        r#""messages_in":2,"bytes_in":304,"messages_out":3,"bytes_out":{},"#,
        greeting.len() + 304
    );
    assert!(
        listed.contains(r#""mode":"proxy""#) && listed.contains(&traffic),
        "want {traffic} in {listed}"
    );
}

#[test]
fn an_anonymous_client_reaches_the_backend_with_no_user_even_when_it_claims_one() {
    let backend = Backend::start(&[]);
    let mut setup = gateway(&backend.url);
    setup
        .set("channel:/app/*", "anonymous", "true")
        .set("role:anonymous", "subscribe", "/app/*")
        .set("role:anonymous", "publish", "/app/*");
    let server = setup.start();
    let mut ws = server
        .connect_with(
            "/app/public",
            &[("Origin", ORIGIN_OK), ("X-Wsgate-User", "admin")],
        )
        .unwrap_or_else(|e| panic!("connect: {e}; log:\n{}", server.logs()));
    let h = hello(&mut ws);
    assert!(
        h.contains(r#""user": []"#) && h.contains(r#""auth": ["anonymous"]"#),
        "{h}"
    );
    assert_eq!(
        backend.wait_line("open "),
        "open path=/public user=- users=0 auth=anonymous client=127.0.0.1"
    );
    echoes(&mut ws, "hello from nobody");
}

#[test]
fn close_codes_pass_through_in_both_directions() {
    let backend = Backend::start(&[]);
    let server = gateway(&backend.url).start();

    // Client closes with 4001: the backend sees 4001.
    let mut ws = server.connect_as("/app/a", ALICE);
    hello(&mut ws);
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "client says bye".into(),
    }))
    .unwrap();
    let _ = ws.flush();
    assert_eq!(
        backend.wait_line("closed "),
        "closed code=4001 reason=client says bye"
    );

    // Backend closes with 4002: the client sees 4002.
    let mut ws = server.connect_as("/app/b", ALICE);
    hello(&mut ws);
    ws.send(Message::text("close:4002")).unwrap();
    assert_eq!(close_code(&mut ws), 4002);
    assert!(
        server.wait_log("code=4002 by=server", IO_TIMEOUT),
        "{}",
        server.logs()
    );
}

#[test]
fn a_unix_socket_backend_works_like_a_tcp_one() {
    let dir = TempDir::new("unix-backend");
    let path = dir.path().join("app.sock");
    let backend = Backend::start(&["--unix", path.to_str().unwrap()]);
    let server = gateway(&backend.url).start();
    let mut ws = server.connect_as("/app/u?q=1", ALICE);
    let h = hello(&mut ws);
    assert!(h.contains(r#""path": "/u?q=1""#), "{h}");
    echoes(&mut ws, "over a unix socket");
}

// ------------------------------------------------------------------------------------------
// A backend that is down, silent or wrong: an HTTP error, never a 101 then a close.

#[test]
fn a_backend_that_is_down_gets_503_before_any_101() {
    let server = gateway(&format!("ws://127.0.0.1:{}", dead_port())).start();
    let result = server.connect_with(
        "/app/x",
        &[
            ("Authorization", &basic(ALICE.0, ALICE.1)),
            ("Origin", ORIGIN_OK),
        ],
    );
    assert_eq!(status_of(result), 503);
    assert!(
        server.wait_log("status=503 reason=ws://127.0.0.1:", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    assert!(server.logs().contains("backend down"), "{}", server.logs());
    assert_eq!(
        metric(
            &server,
            r#"wsgate_proxy_backend_failures_total{kind="down"}"#
        ),
        1
    );
    assert_eq!(
        metric(&server, r#"wsgate_connections_total{outcome="503"}"#),
        1
    );

    // A missing Unix socket is down too.
    let server = gateway("unix:/nonexistent/wsgate-test.sock").start();
    let result = server.connect_with(
        "/app/x",
        &[
            ("Authorization", &basic(ALICE.0, ALICE.1)),
            ("Origin", ORIGIN_OK),
        ],
    );
    assert_eq!(status_of(result), 503);
}

#[test]
fn a_backend_that_accepts_and_says_nothing_gets_504_at_the_connect_deadline() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || silent.accept().map(|(s, _)| s));
    let mut setup = gateway(&format!("ws://{addr}"));
    setup.set("channel:/app/*", "backend_connect_timeout", "1s");
    let server = setup.start();
    let started = Instant::now();
    let result = server.connect_with(
        "/app/x",
        &[
            ("Authorization", &basic(ALICE.0, ALICE.1)),
            ("Origin", ORIGIN_OK),
        ],
    );
    assert_eq!(status_of(result), 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        metric(
            &server,
            r#"wsgate_proxy_backend_failures_total{kind="timeout"}"#
        ),
        1
    );
    drop(held);
}

#[test]
fn a_backend_answering_without_101_gets_502() {
    let wrong = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = wrong.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = wrong.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let server = gateway(&format!("ws://{addr}")).start();
    let result = server.connect_with(
        "/app/x",
        &[
            ("Authorization", &basic(ALICE.0, ALICE.1)),
            ("Origin", ORIGIN_OK),
        ],
    );
    assert_eq!(status_of(result), 502);
    assert!(
        server.wait_log("answered 403 Forbidden", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    assert_eq!(
        metric(
            &server,
            r#"wsgate_proxy_backend_failures_total{kind="handshake"}"#
        ),
        1
    );
}

// ------------------------------------------------------------------------------------------
// Mid-session failures, bounded.

#[test]
fn a_backend_vanishing_mid_session_closes_the_client_with_1011() {
    let backend = Backend::start(&[]);
    let server = gateway(&backend.url).start();
    let mut ws = server.connect_as("/app/x", ALICE);
    hello(&mut ws);
    echoes(&mut ws, "before");
    ws.send(Message::text("drop")).unwrap();
    assert_eq!(close_frame(&mut ws), (1011, "backend vanished".to_string()));
    // The server is fine: a new proxied connection works.
    let mut again = server.connect_as("/app/y", ALICE);
    hello(&mut again);
    echoes(&mut again, "after");
}

#[test]
fn a_client_flooding_a_backend_that_stopped_reading_is_closed_in_bounded_time_and_memory() {
    let backend = Backend::start(&["--slow"]);
    let mut setup = gateway(&backend.url);
    setup
        .set("limits", "write_timeout", "2s")
        .set("channel:/app/*", "max_messages_per_sec", "0")
        .set("channel:/app/*", "max_bytes_per_sec", "0");
    let server = setup.start();
    let mut bystander = server.connect_as("/echo", BOB);
    let mut ws = server.connect_as("/app/flood", ALICE);
    hello(&mut ws);
    let rss_before = rss_kib(server.pid());
    let chunk = Message::binary(vec![7u8; 16 * 1024]);
    let started = Instant::now();
    let mut sent = 0usize;
    // Blocking writes: once every buffer on the way is full the next one waits, until wsgate gives
    // up on the backend and closes. Bounded by count and by time.
    while sent < 64 * 1024 * 1024 && started.elapsed() < Duration::from_secs(15) {
        if ws.send(chunk.clone()).is_err() {
            break;
        }
        sent += 16 * 1024;
    }
    let took = started.elapsed();
    if std::env::var_os("GATEWAY_DEBUG").is_some() {
        eprintln!(
            "sent {sent} took {took:?} wsgate rss {}",
            rss_kib(server.pid())
        );
        let _ = Command::new("ss").args(["-tnpi"]).status();
        let _ = Command::new("ps")
            .args(["-o", "pid,rss,args", "-C", "python3"])
            .status();
        eprintln!("{}", server.logs());
    }
    assert!(
        took < Duration::from_secs(12),
        "still sending after {took:?} ({sent} bytes)"
    );
    // What the socket buffers on the way hold (a few MiB each on loopback), not the whole flood.
    assert!(sent < 32 * 1024 * 1024, "{sent} bytes went somewhere");
    let grew = rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(
        grew < 8 * 1024,
        "wsgate grew by {grew} KiB while a client flooded"
    );
    assert!(
        server.wait_log("reason=\"backend not reading\"", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    // The stuck backend notices nothing (it reads nothing); wsgate's side of it is closed, which
    // the `close` line (logged after both sides are done) says.
    assert!(
        server.wait_log(
            "code=1011 by=server reason=\"backend not reading\"",
            IO_TIMEOUT
        ),
        "{}",
        server.logs()
    );
    echoes(&mut bystander, "unaffected");
}

#[test]
fn a_backend_flooding_a_client_that_stopped_reading_is_bounded_and_the_client_dropped() {
    let backend = Backend::start(&[]);
    let mut setup = gateway(&backend.url);
    setup.set("limits", "write_timeout", "2s");
    let server = setup.start();
    let mut ws = server.connect_as("/app/slow-reader", ALICE);
    hello(&mut ws);
    let rss_before = rss_kib(server.pid());
    // 64 MiB asked for; the client reads nothing from here on.
    ws.send(Message::text("flood:4096")).unwrap();
    assert!(
        server.wait_log("reason=\"write timeout\"", Duration::from_secs(15)),
        "{}",
        server.logs()
    );
    let grew = rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(
        grew < 8 * 1024,
        "wsgate grew by {grew} KiB while the app flooded"
    );
    assert_eq!(
        backend.wait_line("closed "),
        "closed code=1001 reason=client gone"
    );
}

#[test]
fn a_frozen_backend_is_pinged_and_the_client_closed_with_1011_at_the_idle_timeout() {
    let backend = Backend::start(&[]);
    let mut setup = gateway(&backend.url);
    setup
        .set("limits", "ping_interval", "1s")
        .set("limits", "idle_timeout", "2s");
    let server = setup.start();
    let mut ws = server.connect_as("/app/frozen", ALICE);
    hello(&mut ws);
    echoes(&mut ws, "alive");
    let pid = rustix::process::Pid::from_raw(backend.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let started = Instant::now();
    // The client keeps answering wsgate's pings (tungstenite does, on read): only the app is silent.
    assert_eq!(close_code(&mut ws), 1011);
    let took = started.elapsed();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        server.wait_log("reason=\"backend idle timeout\"", IO_TIMEOUT),
        "{}",
        server.logs()
    );
}

// ------------------------------------------------------------------------------------------
// State changes meeting live proxied connections.

#[test]
fn revocation_and_shutdown_reach_proxied_connections() {
    let backend = Backend::start(&[]);
    let mut server = gateway(&backend.url).start();
    let mut alice = server.connect_as("/app/a", ALICE);
    hello(&mut alice);
    let mut bob = server.connect_as("/app/b", BOB);
    hello(&mut bob);

    // Alice is deleted: her proxied connection closes with 1008, the backend hears 1001.
    passwd(&server, &["--delete"], "alice", "");
    server.reload_and_wait();
    assert_eq!(
        close_frame(&mut alice),
        (1008, "credential revoked".to_string())
    );
    assert_eq!(
        backend.wait_line("closed "),
        "closed code=1001 reason=client gone"
    );
    echoes(&mut bob, "bob stays");

    // Shutdown: 1001 to the client, and the process exits in its grace time.
    server.terminate();
    assert_eq!(close_code(&mut bob), 1001);
    assert_eq!(
        backend.wait_nth("closed ", 2),
        "closed code=1001 reason=client gone"
    );
    let status = server.wait_exit(IO_TIMEOUT).expect("wsgate did not exit");
    assert!(status.success(), "{status:?}");
}

#[test]
fn without_publish_rights_nothing_reaches_the_backend() {
    let backend = Backend::start(&[]);
    let mut setup = gateway(&backend.url);
    setup
        .set("role:everyone", "publish", "/echo, /chat/*, /news")
        .set("channel:/app/*", "on_forbidden", "drop");
    let server = setup.start();
    let mut ws = server.connect_as("/app/ro", ALICE);
    hello(&mut ws);
    ws.send(Message::text("not allowed")).unwrap();
    ws.send(Message::text("close:4003")).unwrap();
    // Both dropped: the backend never saw the close command, so the connection stays open.
    ws.get_ref()
        .sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(ws.read().is_err(), "the backend answered a dropped message");
    assert!(
        !backend
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("closed")),
        "the backend saw a close command"
    );
}

// ------------------------------------------------------------------------------------------
// A remote backend over TLS.

/// A `wss://` backend serving a new self-signed certificate for `localhost`, which it writes to
/// `dir` (`app.pem`, the path returned with it).
fn wss_backend(dir: &TempDir) -> (Backend, PathBuf) {
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("app.pem"), dir.path().join("app.key"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    let backend = Backend::start(&["--tls", cert.to_str().unwrap(), key.to_str().unwrap()]);
    (backend, cert)
}

#[test]
fn a_wss_backend_is_verified_against_backend_ca_and_an_untrusted_one_gets_502() {
    let dir = TempDir::new("wss-backend");
    let (backend, cert) = wss_backend(&dir);

    let mut setup = gateway(&backend.url);
    setup.set("channel:/app/*", "backend_ca", cert.to_str().unwrap());
    let server = setup.start();
    let mut ws = server.connect_as("/app/secure", ALICE);
    let h = hello(&mut ws);
    assert!(h.contains(r#""path": "/secure""#), "{h}");
    echoes(&mut ws, "over wss");

    // Another CA: the backend's certificate is not trusted, and the client is told 502.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let mut setup = gateway(&backend.url);
    setup.set("channel:/app/*", "backend_ca", other_ca.to_str().unwrap());
    let server = setup.start();
    let result = server.connect_with(
        "/app/secure",
        &[
            ("Authorization", &basic(ALICE.0, ALICE.1)),
            ("Origin", ORIGIN_OK),
        ],
    );
    assert_eq!(status_of(result), 502);
    assert!(
        server.wait_log("backend tls failed", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    assert_eq!(
        metric(
            &server,
            r#"wsgate_proxy_backend_failures_total{kind="tls"}"#
        ),
        1
    );
}

#[test]
fn a_reload_moves_new_connections_to_the_new_backend_and_keeps_live_ones_on_theirs() {
    let first = Backend::start(&[]);
    let second = Backend::start(&[]);
    let server = gateway(&first.url).start();
    let mut old = server.connect_as("/app/a", ALICE);
    hello(&mut old);
    let config = server.dir.path().join("wsgate.ini");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&first.url, &second.url)).unwrap();
    server.reload_and_wait();
    assert!(server.logs().contains("reloaded"), "{}", server.logs());

    let mut new = server.connect_as("/app/b", BOB);
    hello(&mut new);
    assert_eq!(
        second.wait_line("open "),
        "open path=/b user=bob users=1 auth=password client=127.0.0.1"
    );
    echoes(&mut old, "still on the first backend");
    echoes(&mut new, "on the second");
    assert_eq!(
        first
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("open "))
            .count(),
        1
    );

    // The channel removed: the live proxied connection loses its access.
    let text = std::fs::read_to_string(&config).unwrap();
    let without: String = text
        .split("\n\n")
        .filter(|section| !section.starts_with("[channel:/app/*]"))
        .collect::<Vec<_>>()
        .join("\n\n");
    std::fs::write(&config, without).unwrap();
    server.reload_and_wait();
    assert_eq!(close_frame(&mut old), (1008, "access revoked".to_string()));
    assert_eq!(
        first.wait_line("closed "),
        "closed code=1001 reason=client gone"
    );
}

#[test]
fn a_reload_adds_a_wss_backend_and_reads_its_backend_ca_again_and_a_bad_ca_keeps_the_running_one() {
    let dir = TempDir::new("wss-reload");
    let (secure, cert) = wss_backend(&dir);
    let plain = Backend::start(&[]);
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    // The file `backend_ca` names: first a CA that did not sign the backend's certificate.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, other.cert.pem()).unwrap();

    let mut setup = gateway(&plain.url);
    let everything = "/echo, /chat/*, /news, /app/*, /secure/*";
    setup
        .set("role:everyone", "subscribe", everything)
        .set("role:everyone", "publish", everything);
    let server = setup.start();
    let config = server.dir.path().join("wsgate.ini");
    let status = |path: &str| {
        let auth = basic(ALICE.0, ALICE.1);
        status_of(server.connect_with(path, &[("Authorization", &auth), ("Origin", ORIGIN_OK)]))
    };
    assert_eq!(status("/secure/a"), 404);

    // Added by a reload: the new channel's backend is verified against its backend_ca.
    setup
        .set("channel:/secure/*", "mode", "proxy")
        .set("channel:/secure/*", "backend", &secure.url)
        .set("channel:/secure/*", "backend_ca", ca.to_str().unwrap());
    std::fs::write(&config, setup.render()).unwrap();
    server.reload_and_wait();
    assert!(server.logs().contains("reloaded"), "{}", server.logs());
    assert_eq!(status("/secure/a"), 502);
    assert!(
        server.wait_log("backend tls failed", IO_TIMEOUT),
        "{}",
        server.logs()
    );

    // The same config, the CA file now holding the backend's own: a reload reads it again.
    std::fs::copy(&cert, &ca).unwrap();
    server.reload_and_wait();
    let mut live = server.connect_as("/secure/b", ALICE);
    let h = hello(&mut live);
    assert!(h.contains(r#""path": "/b""#), "{h}");
    echoes(&mut live, "over wss after a reload");

    // A CA file that holds no certificate fails the reload: the running configuration, whose
    // backend settings trust the backend, keeps serving old and new connections.
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let failed = server.count_log("reload failed");
    server.reload_and_wait();
    assert_eq!(
        server.count_log("reload failed"),
        failed + 1,
        "{}",
        server.logs()
    );
    assert!(
        server.logs().contains(ca.to_str().unwrap()),
        "{}",
        server.logs()
    );
    let mut new = server.connect_as("/secure/c", BOB);
    hello(&mut new);
    echoes(&mut new, "still trusted");
    echoes(&mut live, "still open");
}

// ------------------------------------------------------------------------------------------
// Paths, close codes and ends that a backend or a hostile client could turn.

/// Sends an upgrade for `target` as alice (raw bytes: a client library might rewrite the
/// target) and returns the status and, after a 101, the backend's hello (its first message).
fn raw_upgrade(server: &Server, target: &str) -> (u16, Option<String>) {
    let mut tls = server.tls();
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nAuthorization: {}\r\n\
         Origin: {ORIGIN_OK}\r\n\r\n",
        basic(ALICE.0, ALICE.1)
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.flush().unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            _ => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = status_line(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 101 {
        return (status, None);
    }
    // The backend's hello: one unmasked text frame from the server.
    let mut header = [0u8; 2];
    tls.read_exact(&mut header).unwrap();
    let mut len = usize::from(header[1] & 0x7f);
    if len == 126 {
        let mut ext = [0u8; 2];
        tls.read_exact(&mut ext).unwrap();
        len = usize::from(u16::from_be_bytes(ext));
    }
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload).unwrap();
    (101, Some(String::from_utf8(payload).unwrap()))
}

/// What an app's own reading makes of the paths the backend saw: `program` reads one backend
/// hello (JSON) a line on stdin and prints, for each, `in` when every reading of its path is
/// `prefix` or below it, else `out` and the readings.
fn readings(program: &Path, args: &[&str], hellos: &str) -> Vec<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(hellos.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{} failed", program.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Node's WHATWG `URL` (what the recipe in docs/gateway.md reads), then the path decoded and
/// normalised as `path.posix` does.
const NODE_READER: &str = r#"
const path = require('path');
const prefix = process.argv[1];
const under = p => p === prefix || p.startsWith(prefix + '/');
for (const line of require('fs').readFileSync(0, 'utf8').split('\n').filter(Boolean)) {
  const raw = JSON.parse(line).path;
  const seen = new URL(raw, 'http://app').pathname;
  let decoded = seen;
  for (let i = 0; i < 3; i++) { try { decoded = decodeURIComponent(decoded); } catch (e) {} }
  const readings = [raw, seen, path.posix.normalize(decoded.replace(/\\/g, '/'))];
  console.log(readings.every(under) ? 'in' : 'out ' + JSON.stringify(readings));
}
"#;

/// Python's `urllib.parse` (decoded until it stops changing, as an app that decodes twice
/// would) and `posixpath.normpath`, backslashes read as separators.
const PYTHON_READER: &str = r#"
import json, posixpath, sys, urllib.parse
prefix = sys.argv[1]
under = lambda p: p == prefix or p.startswith(prefix + "/")
for line in sys.stdin:
    raw = json.loads(line)["path"]
    path = urllib.parse.urlsplit(raw).path
    for _ in range(3):
        path = urllib.parse.unquote(path)
    readings = [raw, posixpath.normpath(path.replace("\\", "/"))]
    print("in" if all(map(under, readings)) else "out " + json.dumps(readings))
"#;

#[test]
fn every_spelling_of_a_path_reaches_the_backend_under_its_channels_path_or_is_refused() {
    let backend = Backend::start(&[]);
    let mut setup = Setup::default();
    setup
        .set("channel:/pub/*", "mode", "proxy")
        .set(
            "channel:/pub/*",
            "backend",
            &format!("{}/public", backend.url),
        )
        .set("channel:/priv/*", "mode", "proxy")
        .set(
            "channel:/priv/*",
            "backend",
            &format!("{}/private", backend.url),
        )
        .set("role:everyone", "subscribe", "/echo, /pub/*")
        .set("role:everyone", "publish", "/echo, /pub/*")
        .set("role:admins", "members", "root")
        .set("role:admins", "subscribe", "/priv/*");
    let server = setup.start();

    // Served: what any reader reads as the same path below /public.
    let served = [
        "/pub/room",
        "/pub/caf%C3%A9",
        "/pub/a%20b",
        "/pub/v1.2/x..y/.z",
        "/pub/a;b",
    ];
    // Refused with 400 before any backend is dialled: each one some reader resolves outside
    // /public, or otherwise than wsgate, which never decodes a path.
    let ambiguous = [
        "/pub/%2e%2e/private/secret",
        "/pub/.%2e/private/secret",
        "/pub/%2E%2E/private/secret",
        "/pub/%2e%2E/private/secret",
        "/pub/%2e",
        "/pub/..\\private\\x",
        "/pub/x/..\\..\\private",
        "/pub/%5c..%5cprivate",
        "/pub/%5C..%5Cprivate",
        "/pub/..%2fprivate",
        "/pub/..%2Fprivate",
        "/pub/x/%2e%2e%2f%2e%2e/private",
        "/pub/%252e%252e/private",
        "/pub/%25252e%25252e/private",
        "/pub/%c0%ae%c0%ae/private",
        "/pub/%e0%80%ae%e0%80%ae/private",
        "/pub/%ef%bc%8e%ef%bc%8e/private",
        "/pub/..;/private",
        "/pub/x%00/../../private",
    ];
    // Literal dot and empty segments: no channel serves them (404), as before.
    let unserved = ["/pub/../private/secret", "/pub/./x", "/pub//private"];

    let mut hellos = String::new();
    for target in served {
        let (status, hello) = raw_upgrade(&server, target);
        assert_eq!(status, 101, "{target}: {}", server.logs());
        hellos.push_str(&hello.unwrap());
        hellos.push('\n');
    }
    for target in ambiguous {
        let (status, hello) = raw_upgrade(&server, target);
        if let Some(hello) = hello {
            hellos.push_str(&hello);
            hellos.push('\n');
        }
        assert_eq!(status, 400, "{target}");
    }
    for target in unserved {
        assert_eq!(raw_upgrade(&server, target).0, 404, "{target}");
    }

    // Every path a backend saw, as the backend itself, Node and Python read it.
    let node = require_program("node");
    let by_node = readings(&node, &["-e", NODE_READER, "/public"], &hellos);
    let by_python = readings(&python(), &["-c", PYTHON_READER, "/public"], &hellos);
    let seen = hellos.lines().count();
    assert_eq!(
        seen,
        served.len(),
        "a refused path reached the backend:\n{hellos}"
    );
    for (reader, verdicts) in [("node", &by_node), ("python", &by_python)] {
        assert_eq!(verdicts.len(), seen, "{reader}");
        for (verdict, hello) in verdicts.iter().zip(hellos.lines()) {
            assert_eq!(verdict, "in", "{reader} reads {hello} outside /public");
        }
    }
    let lines = backend.lines.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .filter(|l| l.starts_with("open "))
            .all(|l| l.starts_with("open path=/public/")),
        "{lines:?}"
    );
    assert!(
        server.wait_log(
            "reason=request path other readers could resolve differently",
            IO_TIMEOUT
        ),
        "{}",
        server.logs()
    );
}

/// A backend that answers every upgrade, then closes with the close code its request path
/// ends in (`/app/1005` -> code 1005), written as raw bytes: no library sends a forbidden code.
fn closing_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            std::thread::spawn(move || {
                let mut path = String::new();
                #[allow(
                    clippy::result_large_err,
                    reason = "the error type is tungstenite's ErrorResponse"
                )]
                let callback =
                    |req: &tungstenite::handshake::server::Request,
                     resp: tungstenite::handshake::server::Response| {
                        path = req.uri().path().to_string();
                        Ok(resp)
                    };
                let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
                    return;
                };
                let code: u16 = path.rsplit('/').next().unwrap().parse().unwrap();
                let sock = ws.get_mut();
                let [hi, lo] = code.to_be_bytes();
                sock.write_all(&[0x88, 0x02, hi, lo]).unwrap();
                sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let mut sink = [0u8; 1024];
                while sock.read(&mut sink).is_ok_and(|n| n > 0) {}
            });
        }
    });
    url
}

#[test]
fn a_backend_close_code_no_endpoint_may_send_reaches_the_client_as_1011() {
    let server = gateway(&closing_backend()).start();
    for code in [
        0, 999, 1002, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65535,
    ] {
        let mut ws = server.connect_as(&format!("/app/{code}"), ALICE);
        assert_eq!(
            close_frame(&mut ws),
            (1011, "backend protocol error".to_string()),
            "backend code {code}"
        );
    }
    // Codes an endpoint may send pass as they are.
    for code in [1000, 1001, 1003, 1008, 1011, 3000, 4002] {
        let mut ws = server.connect_as(&format!("/app/{code}"), ALICE);
        assert_eq!(close_frame(&mut ws), (code, "backend".to_string()));
    }
}

/// Floods `ws` with 16 KiB messages from a thread until a write fails, and returns once the
/// flood is held back: no write has completed for half a second (wsgate stopped reading the
/// client because the backend reads nothing).
fn flood_until_held_back(mut ws: Client) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    ws.get_ref()
        .sock
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    let flooder = std::thread::spawn(move || {
        let chunk = Message::binary(vec![7u8; 16 * 1024]);
        while ws.send(chunk.clone()).is_ok() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let until = Instant::now() + Duration::from_secs(30);
    let mut last = (0, Instant::now());
    loop {
        assert!(Instant::now() < until, "the flood was never held back");
        let now = sent.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if now > 0 && last.1.elapsed() >= Duration::from_millis(500) {
            return flooder;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `/connections` no longer lists `path`.
fn wait_gone(server: &Server, path: &str) {
    let until = Instant::now() + IO_TIMEOUT;
    while server.admin_get("/connections").1.contains(path) {
        assert!(
            Instant::now() < until,
            "{path} still open after {IO_TIMEOUT:?}: {}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_admin_disconnect_a_revocation_and_shutdown_end_a_relay_held_back_by_full_buffers() {
    // Every deadline that could end the relay by itself is a minute away: only the end asked
    // for can end it within the test's wait.
    let backend = Backend::start(&["--slow"]);
    let mut setup = gateway(&backend.url);
    setup
        .set("limits", "write_timeout", "60s")
        .set("limits", "ping_interval", "60s")
        .set("limits", "idle_timeout", "120s")
        .set("server", "shutdown_grace", "60s")
        .set("channel:/app/*", "max_messages_per_sec", "0")
        .set("channel:/app/*", "max_bytes_per_sec", "0");
    let mut server = setup.start();
    let mut bystander = server.connect_as("/echo", BOB);

    // An admin's disconnect: the answer says it is closing, and it is gone at once.
    let mut ws = server.connect_as("/app/by-admin", ALICE);
    hello(&mut ws);
    let flooder = flood_until_held_back(ws);
    let admin = server.admin_addr();
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        s,
        "POST /disconnect?path=/app/by-admin HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.ends_with("{\"closing\":1,\"forwarded\":false}\n"),
        "{answer}"
    );
    wait_gone(&server, "/app/by-admin");
    flooder.join().unwrap();
    assert!(
        server.wait_log(
            "code=1008 by=server reason=\"disconnected by admin\"",
            IO_TIMEOUT
        ),
        "{}",
        server.logs()
    );

    // A revocation: alice is deleted, her relay ends at the reload.
    let mut ws = server.connect_as("/app/revoked", ALICE);
    hello(&mut ws);
    let flooder = flood_until_held_back(ws);
    passwd(&server, &["--delete"], "alice", "");
    server.reload_and_wait();
    wait_gone(&server, "/app/revoked");
    flooder.join().unwrap();
    echoes(&mut bystander, "unaffected");

    // Shutdown: the process exits in its own time, not at a deadline of the relay's.
    let mut ws = server.connect_as("/app/shutdown", BOB);
    hello(&mut ws);
    let flooder = flood_until_held_back(ws);
    server.terminate();
    let status = server.wait_exit(IO_TIMEOUT).expect("wsgate did not exit");
    assert!(status.success(), "{status:?}");
    assert!(
        server.logs().contains("shutdown complete"),
        "{}",
        server.logs()
    );
    flooder.join().unwrap();
}

/// Node's `URLSearchParams` with `toLowerCase`/`toUpperCase` and `qs`-style brackets cut, on the
/// query of each backend hello (one a line): prints the keys that read as a credential.
const NODE_QUERY_READER: &str = r#"
const names = ['user', 'pass', 'token', 'session'];
for (const line of require('fs').readFileSync(0, 'utf8').split('\n').filter(Boolean)) {
  const url = new URL(JSON.parse(line).path, 'http://app');
  for (const key of url.searchParams.keys()) {
    let k = key;
    for (let i = 0; i < 3; i++) { try { k = decodeURIComponent(k); } catch (e) {} }
    const base = k.split('[')[0].split('\0')[0].replace(/[\x00-\x1f\x7f]/g, '').trim();
    for (const form of [base.toLowerCase(), base.toUpperCase().toLowerCase(), base.normalize('NFKC').toLowerCase()]) {
      if (names.includes(form)) console.log(key);
    }
  }
}
"#;

#[test]
fn credential_like_query_keys_never_reach_the_backend_in_any_spelling_an_app_folds() {
    let backend = Backend::start(&[]);
    let server = gateway(&backend.url).start();
    // Each key reads as `user`, `pass`, `token` or `session` to some app's parser: bracket
    // suffixes (PHP, Rails, Node's qs), double encoding, Unicode case mapping and compatibility
    // folding (Kelvin sign, long s, fullwidth), NUL and control characters.
    let hostile = [
        "user[]=mallory",
        "pass[]=x",
        "PASS[a]=x",
        "to%E2%84%AAen=t",
        "%C5%BFession=s",
        "%EF%BD%95ser=mallory",
        "us%2565r=mallory",
        "user%00=mallory",
        "us%01er=mallory",
    ];
    let target = format!("/app/q?room=3&{}&lang=en&user_id=7", hostile.join("&"));
    let mut ws = server.connect_as(&target, ALICE);
    let greeting = hello(&mut ws);
    assert!(
        greeting.contains(r#""path": "/q?room=3&lang=en&user_id=7""#),
        "{greeting}"
    );
    assert_eq!(
        backend.wait_line("open "),
        "open path=/q?room=3&lang=en&user_id=7 user=alice users=1 auth=password client=127.0.0.1"
    );
    let node = require_program("node");
    let read = readings(&node, &["-e", NODE_QUERY_READER], &format!("{greeting}\n"));
    assert!(
        read.is_empty(),
        "node reads credentials in {greeting}: {read:?}"
    );
}
