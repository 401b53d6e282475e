//! The core server, end to end: real binary, real TLS on 127.0.0.1, real WebSocket clients.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// No secret a test used may ever appear in the server's log.
fn assert_no_secrets(server: &Server) {
    let logs = server.logs();
    for secret in [ALICE.1, BOB.1, "wrong-password"] {
        assert!(!logs.contains(secret), "secret {secret:?} in log:\n{logs}");
    }
    for (u, p) in [ALICE, BOB, ("alice", "wrong-password")] {
        let b64 = data_encoding::BASE64.encode(format!("{u}:{p}").as_bytes());
        assert!(!logs.contains(&b64), "basic credentials in log:\n{logs}");
    }
    assert!(!logs.contains("panicked"), "panic in log:\n{logs}");
}

#[test]
fn echo_round_trip_text_and_binary() {
    let server = Setup::default().start();
    let mut ws = server.connect_as("/echo", ALICE);
    ws.send(Message::text("hello")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("hello"));
    let blob: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    ws.send(Message::binary(blob.clone())).unwrap();
    assert_eq!(next_data(&mut ws), Message::binary(blob));
    ws.close(None).unwrap();
    assert_eq!(close_code(&mut ws), 1005);
    assert!(server.wait_log("close peer=", IO_TIMEOUT));
    assert_no_secrets(&server);
}

#[test]
fn broadcast_reaches_every_other_subscriber_but_not_the_sender() {
    let server = Setup::default().start();
    let mut sender = server.connect_as("/chat/room1", ALICE);
    let mut others: Vec<Client> = (0..3)
        .map(|_| server.connect_as("/chat/room1", BOB))
        .collect();
    let mut elsewhere = server.connect_as("/chat/room2", BOB);
    // Everyone has joined once their upgrade completed; broadcast.
    sender.send(Message::text("to the room")).unwrap();
    sender.send(Message::binary(vec![0u8, 1, 2])).unwrap();
    for ws in &mut others {
        assert_eq!(next_data(ws), Message::text("to the room"));
        assert_eq!(next_data(ws), Message::binary(vec![0u8, 1, 2]));
    }
    // The sender and the other room get nothing: a marker from each proves the order.
    others[0].send(Message::text("marker")).unwrap();
    assert_eq!(next_data(&mut sender), Message::text("marker"));
    elsewhere
        .get_mut()
        .sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        matches!(elsewhere.read(), Err(tungstenite::Error::Io(_))),
        "other room got a message"
    );
}

#[test]
fn wrong_password_is_401_and_logged_for_fail2ban() {
    let server = Setup::default().start();
    let err = server
        .connect_with(
            "/echo",
            &[("Authorization", &basic("alice", "wrong-password"))],
        )
        .unwrap_err();
    match err {
        tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 401);
            assert_eq!(
                resp.headers()["www-authenticate"].to_str().unwrap(),
                "Basic realm=\"wsgate\", charset=\"UTF-8\""
            );
        }
        e => panic!("expected 401, got {e}"),
    }
    assert!(
        server.wait_log("auth failed: user=\"alice\" peer=127.0.0.1:", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    assert_no_secrets(&server);
}

#[test]
fn unknown_user_is_401_like_a_wrong_password() {
    let server = Setup::default().start();
    let status = status_of(server.connect_with(
        "/echo",
        &[("Authorization", &basic("mallory", "wrong-password"))],
    ));
    assert_eq!(status, 401);
    assert!(server.wait_log("auth failed: user=\"mallory\"", IO_TIMEOUT));
    // Same body as a wrong password: the response does not tell which one was wrong.
    let unknown = server.raw_request(&upgrade_request("/echo", &basic("mallory", "x")));
    let wrong = server.raw_request(&upgrade_request("/echo", &basic("alice", "x")));
    assert_eq!(unknown, wrong);
    assert_no_secrets(&server);
}

#[test]
fn no_credentials_is_401() {
    let server = Setup::default().start();
    assert_eq!(status_of(server.connect_with("/echo", &[])), 401);
    assert_eq!(status_of(server.connect_with("/echo?user=alice", &[])), 401);
}

#[test]
fn basic_and_query_credentials_both_work() {
    let server = Setup::default().start();
    let mut a = server
        .connect_with("/echo", &[("Authorization", &basic(ALICE.0, ALICE.1))])
        .unwrap();
    let mut b = server
        .connect_with(&format!("/echo?user={}&pass={}", BOB.0, BOB.1), &[])
        .unwrap();
    for ws in [&mut a, &mut b] {
        ws.send(Message::text("ping")).unwrap();
        assert_eq!(next_data(ws), Message::text("ping"));
    }
    // Percent-encoded query values are decoded.
    let mut c = server
        .connect_with("/echo?user=alice&pass=alice%2Dsecret%2Dpw", &[])
        .unwrap();
    c.send(Message::text("x")).unwrap();
    assert_eq!(next_data(&mut c), Message::text("x"));
    assert!(server.wait_log("open peer=", IO_TIMEOUT));
    assert_no_secrets(&server);
    assert!(!server.logs().contains("pass="), "query string in log");
}

#[test]
fn disallowed_origin_is_403_and_allowed_origins_pass() {
    let server = Setup::default().start();
    let creds = basic(ALICE.0, ALICE.1);
    let with_origin = |origin: &str| {
        status_of(server.connect_with("/echo", &[("Authorization", &creds), ("Origin", origin)]))
    };
    assert_eq!(with_origin("https://evil.example"), 403);
    assert_eq!(with_origin("https://app.example.com.evil.net"), 403);
    assert_eq!(with_origin("http://app.example.com"), 403);
    assert_eq!(with_origin("https://app.example.com:8443"), 403);
    assert_eq!(with_origin("null"), 403);
    assert_eq!(with_origin("https://example.org"), 403);
    assert_eq!(with_origin(ORIGIN_OK), 101);
    assert_eq!(with_origin("HTTPS://APP.EXAMPLE.COM:443"), 101);
    assert_eq!(with_origin("https://a.b.example.org"), 101);
    // Two Origin headers are refused even if one is allowed.
    let two = server.connect_with(
        "/echo",
        &[
            ("Authorization", &creds),
            ("Origin", ORIGIN_OK),
            ("Origin", ORIGIN_OK),
        ],
    );
    assert_eq!(status_of(two), 403);
    // Origin is checked before credentials: a hijacking page learns nothing about them.
    assert_eq!(
        status_of(server.connect_with("/echo", &[("Origin", "https://evil.example")])),
        403
    );
}

#[test]
fn missing_origin_follows_allow_missing() {
    let mut setup = Setup::default();
    setup.set("origins", "allow_missing", "false");
    let server = setup.start();
    let creds = basic(ALICE.0, ALICE.1);
    assert_eq!(
        status_of(server.connect_with("/echo", &[("Authorization", &creds)])),
        403
    );
    assert_eq!(
        status_of(
            server.connect_with("/echo", &[("Authorization", &creds), ("Origin", ORIGIN_OK)])
        ),
        101
    );
}

#[test]
fn unknown_path_is_404() {
    let server = Setup::default().start();
    let creds = basic(ALICE.0, ALICE.1);
    for path in [
        "/nope",
        "/chat",
        "/chat/",
        "/echo/extra",
        "/chat/../echo",
        "/chat//x",
    ] {
        assert_eq!(
            status_of(server.connect_with(path, &[("Authorization", &creds)])),
            404,
            "{path}"
        );
    }
}

#[test]
fn message_at_the_limit_passes_and_one_byte_over_closes_1009() {
    let mut setup = Setup::default();
    setup
        .set("limits", "max_message_size", "1KiB")
        .set("limits", "max_frame_size", "1KiB");
    let server = setup.start();
    let mut ws = server.connect_as("/echo", ALICE);
    ws.send(Message::binary(vec![7u8; 1024])).unwrap();
    assert_eq!(next_data(&mut ws), Message::binary(vec![7u8; 1024]));
    ws.send(Message::binary(vec![7u8; 1025])).unwrap();
    assert_eq!(close_code(&mut ws), 1009);
    assert!(server.wait_log("code=1009", IO_TIMEOUT));
}

#[test]
fn invalid_utf8_text_closes_1007() {
    let server = Setup::default().start();
    let mut ws = server.connect_as("/echo", ALICE);
    let frame = Frame::message(vec![b'o', b'k', 0xff, 0xfe], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).unwrap();
    assert_eq!(close_code(&mut ws), 1007);
}

#[test]
fn stalled_tls_handshake_is_dropped_at_the_deadline_while_others_work() {
    let mut setup = Setup::default();
    setup
        .set("server", "workers", "2")
        .set("server", "queue", "0")
        .set("tls", "handshake_timeout", "1s");
    let server = setup.start();
    let mut working = server.connect_as("/echo", ALICE);
    // One round trip: the server has finished this upgrade (and left the pre-auth budget).
    working.send(Message::text("up")).unwrap();
    assert_eq!(next_data(&mut working), Message::text("up"));
    // Takes the second worker and sends nothing.
    let mut stalled = server.tcp();
    let t0 = Instant::now();
    // Meanwhile the established client is unaffected.
    working.send(Message::text("still here")).unwrap();
    assert_eq!(next_data(&mut working), Message::text("still here"));
    // The server drops the staller at its deadline: we read EOF (or a reset).
    let mut buf = [0u8; 16];
    let n = stalled.read(&mut buf).unwrap_or(0);
    let waited = t0.elapsed();
    assert_eq!(n, 0);
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "dropped after {waited:?}"
    );
    // The worker is free again (its ticket is returned just after the socket closes): a new
    // client gets in.
    let mut again = connect_retrying(&server, BOB);
    again.send(Message::text("in")).unwrap();
    assert_eq!(next_data(&mut again), Message::text("in"));
}

#[test]
fn full_pool_refuses_at_once_then_admits_when_a_slot_frees() {
    let mut setup = Setup::default();
    setup
        .set("server", "workers", "2")
        .set("server", "queue", "0");
    let server = setup.start();
    let mut a = server.connect_as("/echo", ALICE);
    let b = server.connect_as("/echo", BOB);
    // A third connection is closed by admission, without a TLS handshake.
    let mut third = server.tcp();
    let mut buf = [0u8; 16];
    assert_eq!(third.read(&mut buf).unwrap_or(0), 0);
    assert!(
        server.wait_log(": pool full", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    // Existing connections keep working.
    a.send(Message::text("ok")).unwrap();
    assert_eq!(next_data(&mut a), Message::text("ok"));
    // Free a slot: admitted again.
    drop(b);
    let mut c = connect_retrying(&server, BOB);
    c.send(Message::text("back")).unwrap();
    assert_eq!(next_data(&mut c), Message::text("back"));
}

/// The threads of process `pid` whose name is `name` (as /proc shows it: at most 15 bytes).
fn threads_named(pid: i32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[test]
fn a_connection_in_its_handshake_holds_no_worker_thread() {
    let mut setup = Setup::default();
    setup
        .set("server", "workers", "4")
        .set("server", "queue", "0")
        .set("server", "max_pre_auth", "3");
    let server = setup.start();
    // Two clients connect and stall before TLS: each holds a handshake thread, and nothing else.
    let _stalled = [server.tcp(), server.tcp()];
    let started = wait_until(IO_TIMEOUT, || {
        threads_named(server.pid(), "wsgate-handshak") >= 2
    });
    assert!(started, "no handshake threads; log:\n{}", server.logs());
    assert_eq!(
        threads_named(server.pid(), "wsgate-worker"),
        0,
        "a worker waits for a handshake"
    );
    // An upgraded connection runs on a worker, handed over by its handshake thread.
    let mut ws = server.connect_as("/echo", ALICE);
    ws.send(Message::text("on a worker")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("on a worker"));
    assert_eq!(threads_named(server.pid(), "wsgate-worker"), 1);
}

#[test]
fn a_client_waiting_for_a_worker_gets_its_101_when_one_frees_or_503_at_the_upgrade_deadline() {
    let mut setup = Setup::default();
    setup
        .set("server", "workers", "1")
        .set("server", "queue", "1")
        .set("limits", "upgrade_timeout", "2s")
        .set("admin", "listen", "127.0.0.1:0");
    let server = setup.start();
    let mut a = server.connect_as("/echo", ALICE);
    echoes(&mut a, "first");
    assert_eq!(metric(&server, r#"wsgate_pool_workers{state="busy"}"#), 1);
    // The one worker is taken: the next client is admitted (the queue has room), completes TLS
    // and its request, and waits for a worker; none frees, so it hears 503 at the deadline.
    let t0 = Instant::now();
    match server.connect_with("/echo", &[("Authorization", &basic(BOB.0, BOB.1))]) {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            assert_eq!(resp.headers()["Retry-After"], "1");
        }
        Ok(_) => panic!("upgraded without a free worker"),
        Err(e) => panic!("no status for a client that found no worker: {e}"),
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_secs(6),
        "503 after {waited:?}"
    );
    echoes(&mut a, "still served");
    // A client that waits while the worker frees gets its 101 then, and is served.
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            // Retried while the refused client's place is still being given back (its socket
            // lingers until it has read the 503).
            let mut ws = connect_retrying(&server, BOB);
            echoes(&mut ws, "second");
        });
        // It is counted as waiting for a worker while it waits.
        let until = Instant::now() + IO_TIMEOUT;
        while metric(&server, "wsgate_pool_queued") != 1 {
            assert!(Instant::now() < until, "never counted as waiting");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(a);
        waiting.join().expect("the waiting client was served");
    });
}

#[test]
fn a_client_waiting_for_a_worker_fills_the_queue_and_holds_a_pre_auth_place() {
    // Two workers, both serving. The next client is admitted and waits (the queue's N); one more
    // is refused at once, by the queue when it holds one, by the pre-auth budget when that has
    // one place (the queue has room then): the waiting client holds both places.
    for (queue, max_pre_auth, bound) in [("1", "2", "queue"), ("2", "1", "pre-auth budget")] {
        let mut setup = Setup::default();
        setup
            .set("server", "workers", "2")
            .set("server", "queue", queue)
            .set("server", "max_pre_auth", max_pre_auth)
            .set("limits", "upgrade_timeout", "30s")
            .set("admin", "listen", "127.0.0.1:0");
        let server = setup.start();
        let mut a = server.connect_as("/echo", ALICE);
        let mut b = server.connect_as("/echo", ALICE);
        echoes(&mut a, "a");
        echoes(&mut b, "b");
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| {
                let mut ws = server.connect_as("/echo", BOB);
                echoes(&mut ws, "served");
            });
            let until = Instant::now() + IO_TIMEOUT;
            while metric(&server, "wsgate_pool_queued") != 1 {
                assert!(Instant::now() < until, "never counted as waiting");
                std::thread::sleep(Duration::from_millis(20));
            }
            let t0 = Instant::now();
            let mut refused = server.tcp();
            let mut buf = [0u8; 16];
            assert_eq!(refused.read(&mut buf).unwrap_or(0), 0, "{bound}: admitted");
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "{bound}: not at once"
            );
            drop(a);
            waiting.join().expect("the waiting client was served");
        });
    }
}

#[test]
fn a_client_waiting_for_a_worker_at_shutdown_hears_503_at_once() {
    let mut setup = Setup::default();
    setup
        .set("server", "workers", "1")
        .set("server", "queue", "1")
        .set("limits", "upgrade_timeout", "30s")
        .set("admin", "listen", "127.0.0.1:0");
    let server = setup.start();
    let mut a = server.connect_as("/echo", ALICE);
    echoes(&mut a, "first");
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            let result = server.connect_with("/echo", &[("Authorization", &basic(BOB.0, BOB.1))]);
            (status_of(result), Instant::now())
        });
        let until = Instant::now() + IO_TIMEOUT;
        while metric(&server, "wsgate_pool_queued") != 1 {
            assert!(Instant::now() < until, "never counted as waiting");
            std::thread::sleep(Duration::from_millis(20));
        }
        let stopped = Instant::now();
        server.terminate();
        assert_eq!(close_code(&mut a), 1001);
        let (status, answered) = waiting.join().unwrap();
        assert_eq!(status, 503);
        let took = answered - stopped;
        assert!(took < Duration::from_secs(5), "503 only after {took:?}");
    });
}

#[test]
fn per_ip_cap_refuses_extra_connections_from_one_address() {
    let mut setup = Setup::default();
    setup.set("server", "max_connections_per_ip", "1");
    let server = setup.start();
    let mut a = server.connect_as("/echo", ALICE);
    let mut second = server.tcp();
    let mut buf = [0u8; 16];
    assert_eq!(second.read(&mut buf).unwrap_or(0), 0);
    a.send(Message::text("ok")).unwrap();
    assert_eq!(next_data(&mut a), Message::text("ok"));
}

/// Publishes `count` messages of `size` bytes on `path`, each only after `fast` received the
/// previous one, so only a subscriber that does not read can fall behind.
fn publish_lockstep(server: &Server, path: &str, fast: &mut Client, count: usize, size: usize) {
    let mut publisher = server.connect_as(path, ALICE);
    for i in 0..count {
        let mut body = vec![0u8; size];
        body[..8].copy_from_slice(&(i as u64).to_be_bytes());
        publisher.send(Message::binary(body)).unwrap();
        match next_data(fast) {
            Message::Binary(b) => assert_eq!(
                u64::from_be_bytes(b[..8].try_into().unwrap()),
                i as u64,
                "out of order"
            ),
            m => panic!("unexpected {m:?}"),
        }
    }
}

#[test]
fn slow_consumer_is_closed_1008_while_a_fast_subscriber_gets_every_message() {
    let mut setup = Setup::default();
    setup
        .set("channel:/chat/*", "outbox", "16")
        // 48 MiB in a few seconds: far over the default rate limits, which are not under test.
        .set("channel:/chat/*", "max_bytes_per_sec", "0")
        .set("channel:/chat/*", "max_messages_per_sec", "0");
    let server = setup.start();
    let mut slow = server.connect_as("/chat/load", BOB);
    slow.get_mut()
        .sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut fast = server.connect_as("/chat/load", BOB);
    // 1500 x 32 KiB = 48 MiB: far more than socket buffers, write buffer and outbox hold.
    publish_lockstep(&server, "/chat/load", &mut fast, 1500, 32 * 1024);
    // The slow one gets what was already in flight, in order, then the 1008 (the server keeps
    // flushing to it for up to write_timeout before the close frame).
    let mut expected = 0u64;
    loop {
        match slow.read().expect("read") {
            Message::Binary(b) => {
                assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), expected);
                expected += 1;
            }
            Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 1008);
                assert_eq!(f.reason.as_str(), "slow consumer");
                break;
            }
            m => panic!("unexpected {m:?}"),
        }
    }
    assert!(expected < 1500);
    assert!(
        server.wait_log("reason=\"slow consumer\"", IO_TIMEOUT),
        "{}",
        server.logs()
    );
}

#[test]
fn slow_consumer_under_drop_policy_loses_messages_but_stays() {
    let mut setup = Setup::default();
    setup
        .set("channel:/chat/*", "outbox", "16")
        .set("channel:/chat/*", "max_bytes_per_sec", "0")
        .set("channel:/chat/*", "max_messages_per_sec", "0")
        .set("channel:/chat/*", "slow_consumer", "drop");
    let server = setup.start();
    let mut slow = server.connect_as("/chat/load", BOB);
    let mut fast = server.connect_as("/chat/load", BOB);
    publish_lockstep(&server, "/chat/load", &mut fast, 1500, 32 * 1024);
    // Drain what the slow one got: increasing sequence numbers with a gap, no close.
    slow.get_mut()
        .sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut last = None;
    let mut got = 0;
    while let Ok(msg) = slow.read() {
        match msg {
            Message::Binary(b) => {
                let seq = u64::from_be_bytes(b[..8].try_into().unwrap());
                assert!(last.is_none_or(|l| seq > l), "out of order");
                last = Some(seq);
                got += 1;
            }
            Message::Close(f) => panic!("closed under drop policy: {f:?}"),
            _ => {}
        }
    }
    assert!(got < 1500, "nothing was dropped");
    // Still subscribed: a new message arrives.
    slow.get_mut()
        .sock
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap();
    fast.send(Message::text("after")).unwrap();
    assert_eq!(next_data(&mut slow), Message::text("after"));
}

#[test]
fn sigterm_sends_1001_to_clients_and_exits_zero() {
    let mut server = Setup::default().start();
    let mut a = server.connect_as("/echo", ALICE);
    let mut b = server.connect_as("/chat/x", BOB);
    server.terminate();
    assert_eq!(close_code(&mut a), 1001);
    assert_eq!(close_code(&mut b), 1001);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("server did not exit");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        server.logs().contains("shutdown complete"),
        "{}",
        server.logs()
    );
}

#[test]
fn server_pings_and_drops_a_silent_peer_at_the_idle_timeout() {
    let mut setup = Setup::default();
    setup
        .set("limits", "ping_interval", "300ms")
        .set("limits", "idle_timeout", "1s");
    let server = setup.start();
    let mut ws = server.connect_as("/echo", ALICE);
    // A client that reads answers pings automatically (tungstenite queues pongs) and stays.
    let until = Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    ws.get_mut()
        .sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < until {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::Io(_)) => {
                let _ = ws.flush();
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(pings >= 2, "only {pings} pings");
    // A raw TLS client that upgrades and then never answers is dropped at the idle timeout.
    let mut silent = server.tls();
    silent
        .write_all(&upgrade_request("/echo", &basic(BOB.0, BOB.1)))
        .unwrap();
    let t0 = Instant::now();
    let mut sink = Vec::new();
    let _ = silent.read_to_end(&mut sink);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "dropped after {waited:?}"
    );
    assert!(server.wait_log("reason=\"idle timeout\"", IO_TIMEOUT));
}

/// A complete, valid upgrade request with the given Authorization header.
pub fn upgrade_request(path: &str, authorization: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: {authorization}\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn clients_that_stall_before_authenticating_hold_only_the_pre_auth_budget() {
    let mut setup = Setup::default();
    setup
        .set("server", "workers", "4")
        .set("server", "queue", "0")
        .set("server", "max_pre_auth", "2")
        .set("tls", "handshake_timeout", "1s");
    let server = setup.start();
    let mut established = server.connect_as("/echo", ALICE);
    // One round trip: the server has finished this upgrade (and left the pre-auth budget).
    established.send(Message::text("up")).unwrap();
    assert_eq!(next_data(&mut established), Message::text("up"));
    // The listener admits in the order the connections arrived: the stallers first.
    let _stallers: Vec<_> = (0..2).map(|_| server.tcp()).collect();
    // Two workers are free, but the pre-auth budget is spent: a third silent client is closed
    // by admission, not at its handshake deadline.
    let mut third = server.tcp();
    let mut buf = [0u8; 8];
    assert_eq!(third.read(&mut buf).unwrap_or(0), 0);
    assert!(
        server.wait_log(": too many connections not yet authenticated", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    assert_eq!(
        server.count_log("too many connections not yet authenticated"),
        1
    );
    // The authenticated connection is unaffected, and new clients get in once the stallers'
    // deadline frees the budget.
    established.send(Message::text("fine")).unwrap();
    assert_eq!(next_data(&mut established), Message::text("fine"));
    let mut later = connect_retrying(&server, BOB);
    later.send(Message::text("in")).unwrap();
    assert_eq!(next_data(&mut later), Message::text("in"));
}

#[test]
fn endless_continuations_close_1008_at_the_fragment_cap_and_at_the_message_deadline() {
    let mut setup = Setup::default();
    setup
        .set("limits", "max_fragments", "8")
        .set("limits", "message_timeout", "500ms");
    let server = setup.start();
    let continuation = |fin| {
        Message::Frame(Frame::message(
            vec![b'x'],
            OpCode::Data(Data::Continue),
            fin,
        ))
    };
    // Exactly 8 frames: delivered.
    let mut ws = server.connect_as("/echo", ALICE);
    ws.send(Message::Frame(Frame::message(
        vec![b'x'],
        OpCode::Data(Data::Text),
        false,
    )))
    .unwrap();
    for i in 1..8 {
        ws.send(continuation(i == 7)).unwrap();
    }
    assert_eq!(next_data(&mut ws), Message::text("xxxxxxxx"));
    // A 9th frame in one message: 1008.
    ws.send(Message::Frame(Frame::message(
        vec![b'x'],
        OpCode::Data(Data::Text),
        false,
    )))
    .unwrap();
    for _ in 1..9 {
        ws.send(continuation(false)).unwrap();
    }
    assert_eq!(close_code(&mut ws), 1008);
    assert!(server.wait_log("reason=\"too many fragments\"", IO_TIMEOUT));
    // A message started and never finished: 1008 at the message deadline, pings or not.
    let mut slow = server.connect_as("/echo", BOB);
    slow.send(Message::Frame(Frame::message(
        vec![b'x'],
        OpCode::Data(Data::Text),
        false,
    )))
    .unwrap();
    let t0 = Instant::now();
    slow.send(Message::Ping(Default::default())).unwrap();
    assert_eq!(close_code(&mut slow), 1008);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(server.wait_log("reason=\"message too slow\"", IO_TIMEOUT));
}
