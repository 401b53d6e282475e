//! The admin API with the real binary (issue 16): `POST /publish` puts a message in every
//! subscriber of a broadcast channel, `GET /connections` lists who is connected, `POST
//! /disconnect` ends connections with 1008, `wsgate connections` / `wsgate disconnect` ask the
//! same from a terminal, and with `[cluster]` on a publish and a disconnect reach every instance
//! (a real `redis-server`). Hostile input: huge and slow bodies, bad paths and queries, missing,
//! wrong and misplaced tokens, none of which reaches the log. Every socket has a timeout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    ALICE, BOB, Client, IO_TIMEOUT, Redis, Server, Setup, close_frame, echoes, free_port, metric,
    next_data, run_wsgate, wait_metric, wait_until,
};
use tungstenite::Message;

/// The bearer token of the token tests (a file's content, never logged).
const TOKEN: &str = "S3CRET-admin-token-0123456789";

/// An answer: status, head, body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Sends `request` as is to `addr` and reads the answer until the server closes.
fn raw(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request).unwrap();
    read_answer(&mut s)
}

fn read_answer(s: &mut TcpStream) -> Answer {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Answer {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `METHOD target` with `headers` and `body` (Content-Length added when there is a body).
fn request(addr: SocketAddr, method: &str, target: &str, headers: &[&str], body: &[u8]) -> Answer {
    request_to(addr, "localhost", method, target, headers, body)
}

/// [`request`] with `host` as the `Host` header.
fn request_to(
    addr: SocketAddr,
    host: &str,
    method: &str,
    target: &str,
    headers: &[&str],
    body: &[u8],
) -> Answer {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

fn publish(addr: SocketAddr, path: &str, body: &[u8]) -> Answer {
    request(addr, "POST", &format!("/publish?path={path}"), &[], body)
}

/// A server with the admin endpoint on a free loopback port (so the config names the real port
/// for `wsgate connections`), `/news` limited to 1 KiB messages.
fn setup() -> Setup {
    let mut setup = Setup::default();
    setup
        .set("admin", "listen", &format!("127.0.0.1:{}", free_port()))
        .set("channel:/news", "max_message_size", "1KiB")
        .set("channel:/news", "max_frame_size", "1KiB");
    setup
}

/// The next data message within `wait`, or `None`.
fn try_next(ws: &mut Client, wait: Duration) -> Option<Message> {
    ws.get_mut().sock.set_read_timeout(Some(wait)).unwrap();
    let got = loop {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => break Some(m),
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    ws.get_mut()
        .sock
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap();
    got
}

/// `curl` with a deadline; returns (exit status success, stdout).
fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::require_program("curl"))
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_publish_reaches_every_subscriber_of_the_channel_and_answers_202_with_their_count() {
    let server = setup().start();
    let admin = server.admin_addr();
    let mut alice = server.connect_as("/news", ALICE);
    let mut bob = server.connect_as("/news", BOB);
    let mut elsewhere = server.connect_as("/chat/a", BOB);

    // The recipe of docs/admin-api.md, with curl.
    let (ok, body) = curl(&[
        "-w",
        " %{http_code}",
        "-d",
        "21.5",
        &format!("http://{admin}/publish?path=/news"),
    ]);
    assert!(ok);
    assert_eq!(body, "{\"subscribers\":2}\n 202");
    for ws in [&mut alice, &mut bob] {
        assert_eq!(next_data(ws), Message::text("21.5"));
    }
    // Binary with its content type, text by default.
    let a = request(
        admin,
        "POST",
        "/publish?path=/news",
        &["Content-Type: application/octet-stream"],
        &[0, 255, 1],
    );
    assert_eq!(a.status, 202, "{}", a.body);
    for ws in [&mut alice, &mut bob] {
        assert_eq!(next_data(ws), Message::binary(vec![0u8, 255, 1]));
    }
    assert!(a.head.contains("Content-Type: application/json"));
    // An empty message is a message; a subscriber on another path gets none of them.
    assert_eq!(publish(admin, "/news", b"").status, 202);
    for ws in [&mut alice, &mut bob] {
        assert_eq!(next_data(ws), Message::text(""));
    }
    assert_eq!(try_next(&mut elsewhere, Duration::from_millis(300)), None);
    // Under a prefix channel, the exact path; percent-encoded like the upgrade's query.
    let a = publish(admin, "%2Fchat%2Fa", b"hi");
    assert_eq!((a.status, a.body.as_str()), (202, "{\"subscribers\":1}\n"));
    assert_eq!(next_data(&mut elsewhere), Message::text("hi"));
    // A large body arrives whole, through curl's `Expect: 100-continue`.
    let big = "x".repeat(1024);
    let file = server.dir.path().join("big");
    std::fs::write(&file, &big).unwrap();
    let started = Instant::now();
    let (ok, body) = curl(&[
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://{admin}/publish?path=/news"),
    ]);
    assert!(ok && body == "{\"subscribers\":2}\n", "{body}");
    let took = started.elapsed();
    eprintln!("figure: 1 KiB publish with Expect: 100-continue answered in {took:?}");
    for ws in [&mut alice, &mut bob] {
        assert_eq!(next_data(ws), Message::text(big.clone()));
    }
    // curl gets on without the interim answer after a second; the server sends it at once,
    // before a byte of the body.
    let mut s = TcpStream::connect_timeout(&admin, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let head = format!(
        "POST /publish?path=/news HTTP/1.1\r\nHost: {admin}\r\nExpect: 100-continue\r\n\
         Content-Length: 2\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hi").unwrap();
    assert_eq!(read_answer(&mut s).status, 202);
    for ws in [&mut alice, &mut bob] {
        assert_eq!(next_data(ws), Message::text("hi"));
    }
    // 200 publishes one after the other: every one arrives, in order.
    let started = Instant::now();
    for i in 0..200 {
        assert_eq!(
            publish(admin, "/news", format!("{i}").as_bytes()).status,
            202
        );
    }
    let took = started.elapsed();
    eprintln!(
        "figure: 200 sequential publishes (new TCP connection each, 2 subscribers) in {took:?}, \
         {:?} each",
        took / 200
    );
    for ws in [&mut alice, &mut bob] {
        for i in 0..200 {
            assert_eq!(next_data(ws), Message::text(format!("{i}")));
        }
    }
    assert_eq!(metric(&server, "wsgate_admin_publishes_total"), 206);
}

#[test]
fn presence_answers_for_the_one_spelling_a_client_is_served_on_and_404_for_the_others() {
    let server = setup().start();
    let _alice = server.connect_as("/chat/a", ALICE);
    let listed = r#"{"path":"/chat/a","subscribers":[{"user":"alice","connections":1}]}"#;
    let presence = |query: &str| {
        let (status, body) = server.admin_get(&format!("/presence?path={query}"));
        (status, body.trim().to_string())
    };
    assert!(
        wait_until(IO_TIMEOUT, || presence("/chat/a")
            == (200, listed.to_string())),
        "alice listed on /chat/a: {:?}",
        presence("/chat/a")
    );
    // The query's own encoding of the same path.
    assert_eq!(presence("%2Fchat%2Fa"), (200, listed.to_string()));
    for other in [
        "/chat//a",
        "/chat/a/",
        "/chat/./a",
        "/chat/a%252Fb",
        "/chat/%252E%252E/news",
        "/chat/a%5Cb",
        "/chat/a%3Fx",
        "/chat/a%23x",
        "/missing",
        "/echo",
    ] {
        assert_eq!(
            presence(other),
            (404, "no broadcast channel serves this path".to_string()),
            "{other}"
        );
    }
}

/// A request and the status it must get: method, target, headers, body, status.
type Case<'a> = (&'a str, &'a str, &'a [&'a str], &'a [u8], u16);

#[test]
fn a_publish_is_refused_for_paths_no_broadcast_channel_serves_and_bodies_it_cannot_take() {
    let server = setup().start();
    let admin = server.admin_addr();
    let mut alice = server.connect_as("/news", ALICE);
    let at_limit = vec![b'a'; 1024];
    let over = vec![b'a'; 1025];
    let cases: &[Case<'_>] = &[
        ("POST", "/publish?path=/echo", &[], b"x", 404),
        ("POST", "/publish?path=/missing", &[], b"x", 404),
        ("POST", "/publish?path=/chat/", &[], b"x", 404),
        ("POST", "/publish?path=/chat/../news", &[], b"x", 404),
        ("POST", "/publish?path=/chat/%2E%2E/x", &[], b"x", 404),
        // Decoded, these are paths the upgrade refuses as ambiguous (400): no client is there.
        ("POST", "/publish?path=/chat/%252E%252E/x", &[], b"x", 404),
        ("POST", "/publish?path=/chat/a%252Fb", &[], b"x", 404),
        ("POST", "/publish?path=/chat/a%5Cb", &[], b"x", 404),
        ("POST", "/publish?path=/chat/a%3Fb", &[], b"x", 404),
        ("POST", "/publish?path=/chat/a%23b", &[], b"x", 404),
        ("POST", "/publish?path=news", &[], b"x", 404),
        ("POST", "/publish?path=%zz", &[], b"x", 400),
        ("POST", "/publish", &[], b"x", 400),
        ("POST", "/publish?path=/news&path=/news", &[], b"x", 400),
        ("POST", "/publish?path=/news&token=x", &[], b"x", 400),
        ("GET", "/publish?path=/news", &[], b"", 405),
        ("POST", "/publish?path=/news", &[], &over, 413),
        (
            "POST",
            "/publish?path=/news",
            &["Content-Type: text/plain"],
            b"\xff\xfe",
            400,
        ),
        ("POST", "/publish?path=/news", &[], &at_limit, 202),
    ];
    for (method, target, headers, body, want) in cases {
        let a = request(admin, method, target, headers, body);
        assert_eq!(a.status, *want, "{method} {target}: {}", a.body);
    }
    // Only the last one was published.
    assert_eq!(next_data(&mut alice), Message::text("a".repeat(1024)));
    assert_eq!(try_next(&mut alice, Duration::from_millis(300)), None);
    // No length, a chunked body, two lengths, a bad length.
    for head in [
        "POST /publish?path=/news HTTP/1.1\r\n\r\n",
        "POST /publish?path=/news HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        "POST /publish?path=/news HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        "POST /publish?path=/news HTTP/1.1\r\nContent-Length: -1\r\n\r\nx",
        "POST /publish?path=/news HTTP/1.1\r\nContent-Length: 0x1\r\n\r\nx",
    ] {
        let a = raw(admin, head.as_bytes());
        assert!(
            a.status == 411 || a.status == 400,
            "{head:?}: {} {}",
            a.status,
            a.body
        );
    }
    assert_eq!(try_next(&mut alice, Duration::from_millis(200)), None);
    assert_eq!(metric(&server, "wsgate_admin_publishes_total"), 1);
    assert!(server.wait_log("admin request refused", IO_TIMEOUT));

    // A scanner's burst: one line per refusal within the budget (5 a second), the rest counted
    // in the next line.
    std::thread::sleep(Duration::from_millis(1100));
    let before = server.count_log("admin request refused");
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(request(admin, "GET", "/wp-login.php", &[], b"").status, 404);
    }
    let secs = started.elapsed().as_secs();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(request(admin, "GET", "/.env", &[], b"").status, 404);
    assert!(server.wait_log("admin refusal lines suppressed", IO_TIMEOUT));
    let logged = server.count_log("admin request refused") - before;
    assert!(
        logged <= 6 + 5 * secs as usize,
        "{logged} lines for 101 refusals"
    );
}

#[test]
fn a_publish_follows_the_channels_of_the_current_config_after_a_reload() {
    let mut setup = setup();
    let server = setup.start();
    let admin = server.admin_addr();
    let mut alice = server.connect_as("/news", ALICE);
    assert_eq!(publish(admin, "/news", &[b'a'; 1024]).status, 202);
    assert_eq!(next_data(&mut alice).len(), 1024);
    // /news now takes 512 bytes at most, and /chat/* becomes an echo channel.
    setup
        .set("channel:/news", "max_message_size", "512")
        .set("channel:/news", "max_frame_size", "512")
        .set("channel:/chat/*", "mode", "echo");
    std::fs::write(server.dir.path().join("wsgate.ini"), setup.render()).unwrap();
    server.reload_and_wait();
    assert!(server.logs().contains("reloaded "), "{}", server.logs());
    assert_eq!(publish(admin, "/news", &[b'a'; 513]).status, 413);
    assert_eq!(publish(admin, "/news", &[b'a'; 512]).status, 202);
    assert_eq!(publish(admin, "/chat/a", b"x").status, 404);
}

#[test]
fn a_subscriber_that_stops_reading_never_slows_a_publish_and_stops_being_counted() {
    let mut setup = setup();
    setup
        .set("channel:/chat/*", "outbox", "4")
        .set("channel:/chat/*", "slow_consumer", "drop");
    let server = setup.start();
    let admin = server.admin_addr();
    let _stuck = server.connect_as("/chat/room", ALICE); // never reads
    let body = vec![b'x'; 64 * 1024];
    let mut slowest = Duration::ZERO;
    let mut counts = Vec::new();
    for _ in 0..400 {
        let started = Instant::now();
        let a = publish(admin, "/chat/room", &body);
        slowest = slowest.max(started.elapsed());
        assert_eq!(a.status, 202, "{}", a.body);
        counts.push(a.body);
    }
    // A publish that waited for the stuck subscriber would never be answered: `publish` reads
    // under IO_TIMEOUT, and its 202 is asserted above. The time is a figure, not a bound.
    eprintln!("figure: slowest of 400 64 KiB publishes to a stuck subscriber: {slowest:?}");
    // First taken (socket buffers, then its outbox), then dropped for it and not counted.
    assert_eq!(counts[0], "{\"subscribers\":1}\n");
    assert_eq!(counts[399], "{\"subscribers\":0}\n");
    assert!(metric(&server, "wsgate_broadcast_dropped_total") > 0);
}

#[test]
fn a_huge_declared_body_is_refused_at_once_and_a_slow_body_is_dropped_at_the_deadline() {
    let server = setup().start();
    let admin = server.admin_addr();
    let mut alice = server.connect_as("/news", ALICE);
    // 1 PB declared, nothing sent: 413 from the head alone.
    let started = Instant::now();
    let a = raw(
        admin,
        b"POST /publish?path=/news HTTP/1.1\r\nContent-Length: 1000000000000000\r\n\r\n",
    );
    // Answered from the head alone: no body byte was ever sent.
    assert_eq!(a.status, 413);
    let took = started.elapsed();
    eprintln!("figure: 1 PB declared body refused with 413 in {took:?}");
    let a = raw(
        admin,
        b"POST /publish?path=/news HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    );
    assert_eq!(a.status, 413);

    // A body sent one byte every 300 ms: dropped when the exchange's 2 s are up, nothing
    // published; health probes answered meanwhile.
    let mut slow = TcpStream::connect(admin).unwrap();
    slow.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    slow.write_all(b"POST /publish?path=/news HTTP/1.1\r\nContent-Length: 20\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let dripped = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&dripped);
    let dripper = std::thread::spawn(move || {
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(300));
            if slow.write_all(b"x").is_err() {
                break;
            }
            counted.fetch_add(1, Ordering::SeqCst);
        }
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest);
        rest
    });
    assert!(wait_until(IO_TIMEOUT, || dripped.load(Ordering::SeqCst) > 0));
    let probe = Instant::now();
    assert_eq!(server.admin_get("/healthz").0, 200);
    let probed = probe.elapsed();
    eprintln!("figure: /healthz during a dripped body answered in {probed:?}");
    // Answered while the body was still dripping, not after its exchange ended.
    assert!(!dripper.is_finished() && dripped.load(Ordering::SeqCst) < 20);
    let rest = dripper.join().unwrap();
    let took = started.elapsed();
    eprintln!("figure: body dripped 1 byte/300 ms dropped after {took:?}");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // Dropped at the exchange's deadline: the client could not send its whole body.
    let sent = dripped.load(Ordering::SeqCst);
    assert!(sent < 20, "all {sent} bytes sent; dropped after {took:?}");
    assert_eq!(try_next(&mut alice, Duration::from_millis(200)), None);
    // A body that stops short (the client closes) publishes nothing either.
    let mut short = TcpStream::connect(admin).unwrap();
    short
        .write_all(b"POST /publish?path=/news HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    drop(short);
    assert_eq!(try_next(&mut alice, Duration::from_millis(300)), None);
    assert_eq!(metric(&server, "wsgate_admin_publishes_total"), 0);
    // The server is fine.
    assert_eq!(publish(admin, "/news", b"after").status, 202);
    assert_eq!(next_data(&mut alice), Message::text("after"));
}

#[test]
fn publish_bodies_that_never_finish_cannot_keep_a_health_probe_out() {
    let mut setup = setup();
    setup.set("admin", "max_connections", "3");
    let server = setup.start();
    let admin = server.admin_addr();
    let mut alice = server.connect_as("/news", ALICE);
    // Every place taken by a publish whose body stops after 3 of 100 bytes.
    let stuck: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(admin).unwrap();
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s.write_all(b"POST /publish?path=/news HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // A probe takes the oldest one's place at once.
    let started = Instant::now();
    assert_eq!(server.admin_get("/healthz").0, 200);
    let took = started.elapsed();
    eprintln!("figure: /healthz with every admin place held by a stuck body answered in {took:?}");
    // By taking the oldest's place, not by waiting for the stuck bodies' deadline: the other
    // two are still held.
    let held = stuck.iter().filter(|s| common::still_open(s)).count();
    assert_eq!(
        held, 2,
        "stuck bodies still held when the probe was answered"
    );
    // Each stuck client is dropped (evicted, or at the deadline) without an answer.
    for mut s in stuck {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }
    assert_eq!(try_next(&mut alice, Duration::from_millis(200)), None);
}

/// The connection objects of a `/connections` answer, one per line.
fn objects(body: &str) -> Vec<String> {
    body.lines()
        .map(|l| l.trim_end_matches(','))
        .filter(|l| l.starts_with('{'))
        .map(str::to_string)
        .collect()
}

/// The value of `"key":` in a connection object (a string's contents, or a number).
fn field(object: &str, key: &str) -> String {
    let rest = object
        .split_once(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {object}"))
        .1;
    let end = rest.find([',', '}']).unwrap();
    rest[..end].trim_matches('"').to_string()
}

#[test]
fn connections_lists_each_open_connection_with_its_metadata_and_filters_by_user_and_path() {
    let server = setup().start();
    let admin = server.admin_addr();
    let (status, body) = server.admin_get("/connections");
    assert_eq!((status, body.as_str()), (200, "[]\n"));
    let _alice = server.connect_as("/news", ALICE);
    let mut bob = server.connect_as("/echo", BOB);
    echoes(&mut bob, "four");
    echoes(&mut bob, "five!");

    let a = request(admin, "GET", "/connections", &[], b"");
    assert_eq!(a.status, 200);
    assert!(a.head.contains("Content-Type: application/json"));
    let all = objects(&a.body);
    assert_eq!(all.len(), 2, "{}", a.body);
    assert!(a.body.starts_with('[') && a.body.trim_end().ends_with(']'));
    let bob_line = all.iter().find(|o| o.contains("\"user\":\"bob\"")).unwrap();
    assert_eq!(field(bob_line, "auth"), "password");
    assert_eq!(field(bob_line, "path"), "/echo");
    assert_eq!(field(bob_line, "mode"), "echo");
    assert!(field(bob_line, "peer").starts_with("127.0.0.1:"));
    assert_eq!(field(bob_line, "messages_in"), "2");
    assert_eq!(field(bob_line, "bytes_in"), "9");
    assert_eq!(field(bob_line, "messages_out"), "2");
    assert_eq!(field(bob_line, "bytes_out"), "9");
    let since: u64 = field(bob_line, "since").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(since <= now && now - since < 60);
    assert!(field(bob_line, "session").len() >= 16);
    // Never a secret: no password, no session token.
    for secret in [ALICE.1, BOB.1, "Basic ", "token"] {
        assert!(!a.body.contains(secret), "{secret} in {}", a.body);
    }

    let only = |query: &str| objects(&server.admin_get(&format!("/connections{query}")).1);
    assert_eq!(only("?user=alice").len(), 1);
    assert_eq!(field(&only("?user=alice")[0], "mode"), "broadcast");
    assert_eq!(only("?path=/echo").len(), 1);
    assert_eq!(only("?user=alice&path=/echo").len(), 0);
    assert_eq!(only("?user=-").len(), 0);
    assert_eq!(only("?user=nobody").len(), 0);
    let session = field(bob_line, "session");
    assert_eq!(only(&format!("?session={session}")).len(), 1);
    assert_eq!(server.admin_get("/connections?usr=alice").0, 400);
    assert_eq!(server.admin_get("/connections?user=").0, 400);
    assert_eq!(request(admin, "POST", "/connections", &[], b"").status, 405);
}

#[test]
fn disconnect_closes_the_matching_connections_with_1008_and_answers_how_many() {
    let server = setup().start();
    let admin = server.admin_addr();
    let mut alice1 = server.connect_as("/news", ALICE);
    let mut alice2 = server.connect_as("/chat/x", ALICE);
    let mut bob = server.connect_as("/echo", BOB);
    let mut bob_news = server.connect_as("/news", BOB);

    // Without a filter nothing is closed: a typo must not end everyone.
    for target in ["/disconnect", "/disconnect?", "/disconnect?usr=alice"] {
        assert_eq!(
            request(admin, "POST", target, &[], b"").status,
            400,
            "{target}"
        );
    }
    assert_eq!(
        request(admin, "GET", "/disconnect?user=alice", &[], b"").status,
        405
    );
    let a = request(admin, "POST", "/disconnect?user=alice", &[], b"");
    assert_eq!(
        (a.status, a.body.as_str()),
        (200, "{\"closing\":2,\"forwarded\":false}\n")
    );
    for ws in [&mut alice1, &mut alice2] {
        assert_eq!(close_frame(ws), (1008, "disconnected by admin".to_string()));
    }
    echoes(&mut bob, "still here");
    // By session, then by path (prefix form).
    let listed = objects(&server.admin_get("/connections?user=bob&path=/echo").1);
    let session = field(&listed[0], "session");
    let a = request(
        admin,
        "POST",
        &format!("/disconnect?session={session}"),
        &[],
        b"",
    );
    assert_eq!(a.body, "{\"closing\":1,\"forwarded\":false}\n");
    assert_eq!(close_frame(&mut bob).0, 1008);
    // The recipe of docs/admin-api.md: curl -X POST, no body.
    let (ok, body) = curl(&[
        "-X",
        "POST",
        &format!("http://{admin}/disconnect?path=/news"),
    ]);
    assert!(ok);
    assert_eq!(body, "{\"closing\":1,\"forwarded\":false}\n");
    assert_eq!(close_frame(&mut bob_news).0, 1008);
    let a = request(admin, "POST", "/disconnect?user=alice", &[], b"");
    assert_eq!(a.body, "{\"closing\":0,\"forwarded\":false}\n");
    assert_eq!(metric(&server, "wsgate_admin_disconnects_total"), 4);
    assert!(server.wait_log("admin disconnect user=\"alice\" closing=2", IO_TIMEOUT));
    // A disconnect is not a ban: alice comes back.
    let mut again = server.connect_as("/echo", ALICE);
    echoes(&mut again, "back");
}

/// A server whose admin API wants `TOKEN` (from a 0600 file next to the config).
fn with_token() -> Server {
    let mut setup = setup();
    setup.set("admin", "token_file", "admin.token");
    let (dir, config, ca) = setup.write();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    Server::spawn(dir, &config, ca)
}

#[test]
fn with_a_token_file_the_api_wants_the_bearer_token_and_no_token_ever_reaches_the_log() {
    let server = with_token();
    let admin = server.admin_addr();
    let mut alice = server.connect_as("/news", ALICE);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let wrong = "Authorization: Bearer S3CRET-admin-token-0123456788".to_string();
    let query = format!("/publish?path=/news&token={TOKEN}");
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("POST", "/publish?path=/news", None, 401),
        ("POST", "/publish?path=/news", Some(&wrong), 401),
        (
            "POST",
            "/publish?path=/news",
            Some("Authorization: Basic YTpi"),
            401,
        ),
        (
            "POST",
            "/publish?path=/news",
            Some("Authorization: Bearer"),
            401,
        ),
        ("POST", &query, None, 401),
        ("GET", "/connections", None, 401),
        ("GET", &format!("/connections?token={TOKEN}"), None, 401),
        ("POST", "/disconnect?user=alice", Some(&wrong), 401),
        // Health and metrics stay open for probes and scrapers.
        ("GET", "/healthz", None, 200),
        ("GET", "/metrics", None, 200),
    ];
    for (method, target, header, want) in cases {
        let headers: Vec<&str> = header.iter().copied().collect();
        let a = request(admin, method, target, &headers, b"x");
        assert_eq!(a.status, *want, "{method} {target} {header:?}: {}", a.body);
        if *want == 401 {
            assert!(a.head.contains("WWW-Authenticate: Bearer"), "{}", a.head);
        }
    }
    assert_eq!(try_next(&mut alice, Duration::from_millis(200)), None);
    // The token in the query string with the right header is still refused (unknown key), so
    // nobody learns to put it there.
    let a = request(admin, "POST", &query, &[&bearer], b"x");
    assert_eq!(a.status, 400);
    // A token pasted as a bare key: refused, and its refusal line (the budget refilled first,
    // so it is written) does not name it.
    std::thread::sleep(Duration::from_millis(1100));
    let before = server.count_log("reason=unknown query key");
    let bare = format!("/publish?path=/news&{TOKEN}");
    assert_eq!(request(admin, "POST", &bare, &[&bearer], b"x").status, 400);
    let logged = wait_until(IO_TIMEOUT, || {
        server.count_log("reason=unknown query key") > before
    });
    assert!(logged, "no refusal line:\n{}", server.logs());
    let a = request(admin, "POST", "/publish?path=/news", &[&bearer], b"ok");
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(next_data(&mut alice), Message::text("ok"));
    // Header name and scheme in any case, spaces around the token.
    let lower = format!("authorization: bearer  {TOKEN} ");
    let a = request(admin, "GET", "/connections", &[&lower], b"");
    assert_eq!(a.status, 200, "{}", a.body);
    // The CLI reads the token file itself.
    let config = server.dir.path().join("wsgate.ini");
    let out = run_wsgate(["connections".as_ref(), "-c".as_ref(), config.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"user\":\"alice\""));

    assert!(server.wait_log("status=401 reason=wrong token", IO_TIMEOUT));
    // Written 0644 by this test: said once at start, like every secret file.
    assert!(
        server.logs().contains("[admin] token_file ")
            && server
                .logs()
                .contains("is accessible by group/others (mode 644)"),
        "{}",
        server.logs()
    );
    let (code, out) = {
        let out = run_wsgate(["check-config".as_ref(), config.as_os_str()]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0));
    assert!(out.contains("warning: [admin] token_file "), "{out}");
    let logs = server.logs();
    assert!(logs.contains("status=401 reason=bearer token required"));
    assert!(!logs.contains("S3CRET"), "a token reached the log:\n{logs}");
    assert!(!logs.contains("YTpi"));
}

#[test]
fn an_admin_listener_off_loopback_without_a_token_file_is_a_config_error() {
    let mut setup = Setup::default();
    setup.set("admin", "listen", "0.0.0.0:0");
    let (_dir, config, _ca) = setup.write();
    let (code, stderr) = common::check_config(&config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "[admin] token_file: required when listen (`0.0.0.0:0`) is not a loopback address"
        ),
        "{stderr}"
    );
    let out = run_wsgate(["serve".as_ref(), config.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    // A token file too short to guard anything is refused at start, naming the file only.
    setup.set("admin", "token_file", "admin.token");
    let (dir, config, _ca) = setup.write();
    std::fs::write(dir.path().join("admin.token"), "short\n").unwrap();
    let (code, stderr) = common::check_config(&config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("at least 16 visible characters"),
        "{stderr}"
    );
    let out = run_wsgate(["serve".as_ref(), config.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("at least 16 visible characters"),
        "{stderr}"
    );
}

/// `wsgate ARGS -c CONFIG`: (exit code, stdout, stderr).
fn cli(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = Command::new(common::bin())
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_connections_and_disconnect_commands_ask_the_admin_endpoint_named_in_the_config() {
    let mut server = setup().start();
    server.admin_addr();
    let config = server.dir.path().join("wsgate.ini");
    let mut alice = server.connect_as("/news", ALICE);
    let mut bob = server.connect_as("/echo", BOB);
    let (code, out, err) = cli(&["connections"], &config);
    assert_eq!(code, 0, "{err}");
    assert_eq!(objects(&out).len(), 2, "{out}");
    let (code, out, _) = cli(&["connections", "--user", "bob"], &config);
    assert_eq!((code, objects(&out).len()), (0, 1));
    let (code, out, _) = cli(&["connections", "--path", "/chat/*"], &config);
    assert_eq!((code, objects(&out).len()), (0, 0));
    let (code, out, err) = cli(&["disconnect", "--user", "alice"], &config);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "{\"closing\":1,\"forwarded\":false}\n");
    assert_eq!(close_frame(&mut alice).0, 1008);
    echoes(&mut bob, "fine");
    // No filter: a usage error before anything is asked.
    let (code, _, err) = cli(&["disconnect"], &config);
    assert_eq!(code, 2);
    assert!(err.contains("name the connections to close"), "{err}");
    server.terminate();
    assert!(server.wait_exit(IO_TIMEOUT).is_some());
    // The server gone: exit 1, saying where it asked.
    let (code, _, err) = cli(&["connections"], &config);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot ask the admin endpoint at 127.0.0.1:"),
        "{err}"
    );
    // A config without an admin endpoint: exit 2.
    let (_dir, plain, _ca) = Setup::default().write();
    let (code, _, err) = cli(&["connections"], &plain);
    assert_eq!(code, 2);
    assert!(err.contains("no [admin] listen"), "{err}");
}

/// An instance on the backbone at `url` with its admin endpoint.
fn instance(url: &str, id: &str) -> Server {
    let mut setup = setup();
    setup
        .set("cluster", "redis_url", url)
        .set("cluster", "instance_id", id)
        .set("cluster", "max_backoff", "300ms");
    setup.start()
}

/// Waits until both of the instance's Redis links are up.
fn wait_joined(server: &Server) {
    wait_metric(server, "wsgate_cluster_connected", |n| n == 1);
}

#[test]
fn with_a_cluster_a_publish_and_a_disconnect_reach_every_instance() {
    let redis = Redis::start();
    let a = instance(&redis.url(), "a");
    let b = instance(&redis.url(), "b");
    wait_joined(&a);
    wait_joined(&b);
    let mut on_a = a.connect_as("/news", BOB);
    let mut on_b = b.connect_as("/news", BOB);
    let mut alice_b = b.connect_as("/chat/room", ALICE);
    let mut alice_a = a.connect_as("/echo", ALICE);

    // Published on a: a's subscriber counted and served, b's served through Redis.
    let answer = publish(a.admin_addr(), "/news", b"21.5");
    assert_eq!(answer.body, "{\"subscribers\":1}\n");
    assert_eq!(next_data(&mut on_a), Message::text("21.5"));
    assert_eq!(try_next(&mut on_b, IO_TIMEOUT), Some(Message::text("21.5")));

    // Disconnected on a: alice is closed on a and on b.
    let answer = request(a.admin_addr(), "POST", "/disconnect?user=alice", &[], b"");
    assert_eq!(answer.body, "{\"closing\":1,\"forwarded\":true}\n");
    assert_eq!(
        close_frame(&mut alice_a),
        (1008, "disconnected by admin".into())
    );
    assert_eq!(
        close_frame(&mut alice_b),
        (1008, "disconnected by admin".into())
    );
    assert!(b.wait_log("cluster: disconnect from instance `a`", IO_TIMEOUT));
    // Bob is untouched on both.
    assert_eq!(publish(b.admin_addr(), "/news", b"still").status, 202);
    assert_eq!(next_data(&mut on_b), Message::text("still"));
    assert_eq!(
        try_next(&mut on_a, IO_TIMEOUT),
        Some(Message::text("still"))
    );
    assert_eq!(metric(&b, "wsgate_admin_disconnects_total"), 1);
    assert_eq!(metric(&a, "wsgate_admin_disconnects_total"), 1);
}

/// What a page in a browser on this host can send without any preflight: a cross-site "simple"
/// POST, a no-cors GET, and a DNS-rebinding page's requests (its own host name in `Host`, which
/// the browser then deems same-origin). Each is refused, with a token configured too; curl,
/// which sends no `Origin`, is served; `/healthz` and `/metrics` stay open to any scraper.
#[test]
fn what_a_web_page_sends_the_api_is_refused_and_curl_is_served() {
    for token in [false, true] {
        let server = if token { with_token() } else { setup().start() };
        let admin = server.admin_addr();
        let here = admin.to_string();
        let bearer = format!("Authorization: Bearer {TOKEN}");
        let with_auth = |headers: &[&'static str]| -> Vec<String> {
            let mut all: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
            if token {
                all.push(bearer.clone());
            }
            all
        };
        let send = |host: &str, method: &str, target: &str, headers: &[String], body: &[u8]| {
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            request_to(admin, host, method, target, &headers, body)
        };
        let mut bob = server.connect_as("/news", BOB);

        let cross_site = with_auth(&[
            "Origin: https://evil.example",
            "Sec-Fetch-Site: cross-site",
            "Content-Type: text/plain",
        ]);
        let a = send(&here, "POST", "/publish?path=/news", &cross_site, b"forged");
        assert_eq!(a.status, 403, "token={token}: {}", a.body);
        let a = send(&here, "POST", "/disconnect?path=/*", &cross_site, b"");
        assert_eq!(a.status, 403, "token={token}: {}", a.body);
        let a = send(&here, "GET", "/connections", &cross_site, b"");
        assert_eq!(a.status, 403, "token={token}: {}", a.body);
        // A page's no-cors GET carries no Origin, but Sec-Fetch-Site.
        let no_cors = with_auth(&["Sec-Fetch-Site: same-site"]);
        let a = send(&here, "GET", "/connections", &no_cors, b"");
        assert_eq!(a.status, 403, "token={token}: {}", a.body);
        // A DNS-rebinding page: its host name resolves to 127.0.0.1 by now.
        let rebound = format!("rebind.evil.example:{}", admin.port());
        let same_origin = with_auth(&["Sec-Fetch-Site: same-origin"]);
        let a = send(&rebound, "GET", "/connections", &same_origin, b"");
        assert_eq!(a.status, 421, "token={token}: {}", a.body);
        assert!(!a.body.contains("bob"), "{}", a.body);
        let a = send(
            &rebound,
            "POST",
            "/disconnect?user=bob",
            &with_auth(&[]),
            b"",
        );
        assert_eq!(a.status, 421, "token={token}: {}", a.body);

        // curl: no Origin, the listener's address as Host. The forged message never came:
        // the first Bob gets is curl's.
        let mut args = vec![
            "-w".to_string(),
            " %{http_code}".into(),
            "-d".into(),
            "from curl".into(),
        ];
        if token {
            args.extend(["-H".to_string(), bearer.clone()]);
        }
        args.push(format!("http://{admin}/publish?path=/news"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, body) = curl(&args);
        assert!(ok);
        assert_eq!(body, "{\"subscribers\":1}\n 202");
        assert_eq!(next_data(&mut bob), Message::text("from curl"));
        let a = send("localhost", "GET", "/connections", &with_auth(&[]), b"");
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.contains("\"user\":\"bob\""), "{}", a.body);
        // Read-only health and metrics answer whatever the Host.
        for path in ["/healthz", "/metrics"] {
            assert_eq!(send(&rebound, "GET", path, &[], b"").status, 200, "{path}");
        }
        assert!(
            server.wait_log("status=421", IO_TIMEOUT),
            "{}",
            server.logs()
        );
        assert!(
            server.wait_log("status=403", IO_TIMEOUT),
            "{}",
            server.logs()
        );
        assert!(!server.logs().contains("forged"), "{}", server.logs());
    }
}

/// An operator may let a page of a named origin use the API, and a host name reach it: the page
/// gets its preflight answered and the CORS headers that let it read the answers.
#[test]
fn an_origin_and_a_host_named_in_admin_are_served_with_cors_headers() {
    let mut setup = setup();
    setup
        .set("admin", "allow_origins", "https://ops.example")
        .set("admin", "allow_hosts", "Admin.Internal");
    let server = setup.start();
    let admin = server.admin_addr();
    let host = format!("admin.internal:{}", admin.port());
    let mut bob = server.connect_as("/news", BOB);
    let page = [
        "Origin: https://ops.example",
        "Sec-Fetch-Site: cross-site",
        "Access-Control-Request-Method: POST",
        "Access-Control-Request-Headers: content-type",
    ];
    let a = request_to(admin, &host, "OPTIONS", "/publish?path=/news", &page, b"");
    assert_eq!(a.status, 204, "{}", a.body);
    assert!(
        a.head
            .contains("Access-Control-Allow-Origin: https://ops.example\r\n")
    );
    assert!(a.head.contains("Access-Control-Allow-Methods: POST\r\n"));
    assert!(a.head.contains("Vary: Origin\r\n"));
    let a = request_to(
        admin,
        &host,
        "POST",
        "/publish?path=/news",
        &page[..2],
        b"hello",
    );
    assert_eq!(a.status, 202, "{}", a.body);
    assert!(
        a.head
            .contains("Access-Control-Allow-Origin: https://ops.example\r\n")
    );
    assert_eq!(next_data(&mut bob), Message::text("hello"));
    let a = request_to(admin, &host, "GET", "/connections", &page[..2], b"");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.head
            .contains("Access-Control-Allow-Origin: https://ops.example\r\n")
    );
    // Another origin, its preflight, and an unnamed host are still refused.
    let other = [
        "Origin: https://ops.example.evil",
        "Sec-Fetch-Site: cross-site",
    ];
    for method in ["OPTIONS", "POST"] {
        let a = request_to(admin, &host, method, "/publish?path=/news", &other, b"x");
        assert_eq!(a.status, 403, "{method}: {}", a.body);
        assert!(!a.head.contains("Access-Control-Allow-Origin"));
    }
    let a = request_to(admin, "other.internal", "GET", "/connections", &[], b"");
    assert_eq!(a.status, 421, "{}", a.body);
    // Without an allowed Origin, OPTIONS is a method the API does not take.
    let a = request_to(admin, &host, "OPTIONS", "/connections", &[], b"");
    assert_eq!(a.status, 405, "{}", a.body);
}
