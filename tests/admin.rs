//! The admin endpoint in-process on 127.0.0.1:0: health, metrics, refusals, and that a silent or
//! trickling client delays others by at most the per-connection deadline. Every socket has a
//! timeout, so a hang fails instead of stalling CI.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::IO_TIMEOUT;
use common::prometheus::validate_exposition;
use wsgate::admin::{self, AdminState};
use wsgate::ops::metrics::{Gauges, Metrics, Outcome};

struct Admin {
    addr: SocketAddr,
    state: Arc<AdminState>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    fn start() -> Admin {
        let metrics = Arc::new(Metrics::new(["/echo", "/chat/*"]));
        let gauges = || Gauges {
            pool_busy: 5,
            pool_idle: 59,
            pool_queued: 1,
            ..Gauges::default()
        };
        let state = Arc::new(AdminState::new(metrics, gauges).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let max = std::num::NonZeroUsize::new(admin::DEFAULT_MAX_CONNECTIONS).unwrap();
        let thread = admin::spawn(listener, Arc::clone(&state), max).unwrap();
        Admin {
            addr,
            state,
            thread: Some(thread),
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    /// Sends `request` as is and returns the parsed answer.
    fn raw(&self, request: &[u8]) -> Response {
        let mut s = self.connect();
        s.write_all(request).unwrap();
        read_response(&mut s)
    }

    fn get(&self, path: &str) -> Response {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
    }

    /// Stops the thread and waits for it, failing if it takes longer than the deadline.
    fn stop(mut self) {
        self.state.stop();
        let thread = self.thread.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(thread.join().is_ok());
        });
        let joined = rx
            .recv_timeout(admin::DEADLINE + Duration::from_secs(3))
            .expect("admin thread did not stop");
        assert!(joined, "admin thread panicked");
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads to EOF (the server always closes) and checks the framing every answer must have.
fn read_response(s: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let r = Response {
        status,
        headers,
        body: body.to_string(),
    };
    assert_eq!(r.header("Connection"), Some("close"), "{text}");
    assert_eq!(
        r.header("Content-Length")
            .map(|v| v.parse::<usize>().unwrap()),
        Some(r.body.len()),
        "{text}"
    );
    r
}

#[test]
fn healthz_follows_the_draining_flag() {
    let admin = Admin::start();
    let r = admin.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    admin.state.set_draining(true);
    let r = admin.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (503, "draining\n"));
    admin.state.set_draining(false);
    assert_eq!(admin.get("/healthz").status, 200);
    admin.stop();
}

#[test]
fn metrics_is_valid_exposition_with_live_values() {
    let admin = Admin::start();
    admin.state.metrics.outcome(Outcome::Accepted);
    admin.state.metrics.outcome(Outcome::Forbidden);
    admin.state.metrics.channel_opened("/chat/*");
    admin
        .state
        .metrics
        .observe_upgrade(Duration::from_millis(3));
    let r = admin.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    validate_exposition(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body));
    for line in [
        "wsgate_connections_total{outcome=\"accepted\"} 1",
        "wsgate_connections_total{outcome=\"403\"} 1",
        "wsgate_connections_open{channel=\"/chat/*\"} 1",
        "wsgate_connections_open{channel=\"/echo\"} 0",
        "wsgate_upgrade_duration_seconds_bucket{le=\"0.005\"} 1",
        "wsgate_upgrade_duration_seconds_count 1",
        "wsgate_pool_workers{state=\"busy\"} 5",
        "wsgate_pool_workers{state=\"idle\"} 59",
        "wsgate_pool_queued 1",
    ] {
        assert!(
            r.body.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            r.body
        );
    }
    // A query string is ignored, as scrapers sometimes add one.
    assert_eq!(admin.get("/metrics?format=text").status, 200);
    admin.stop();
}

#[test]
fn bad_paths_methods_and_heads_get_404_405_400_or_431_and_it_keeps_serving() {
    let admin = Admin::start();
    assert_eq!(admin.get("/").status, 404);
    assert_eq!(admin.get("/healthz/").status, 404);
    assert_eq!(admin.get("/metricsx").status, 404);
    let r = admin.raw(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET"));
    assert_eq!(admin.raw(b"DELETE /healthz HTTP/1.1\r\n\r\n").status, 405);
    assert_eq!(admin.raw(b"GET /healthz HTTP/9.9\r\n\r\n").status, 400);
    assert_eq!(admin.raw(b"\x16\x03\x01\x00\xa5\r\n\r\n").status, 400);
    assert_eq!(admin.raw(b"GET\r\n\r\n").status, 400);
    let big = format!(
        "GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(admin::MAX_HEAD)
    );
    assert_eq!(admin.raw(big.as_bytes()).status, 431);
    // Still serving after all that.
    assert_eq!(admin.get("/healthz").status, 200);
    admin.stop();
}

#[test]
fn a_silent_client_delays_others_by_at_most_the_deadline() {
    let admin = Admin::start();
    let mut silent = admin.connect();
    // Make sure the admin thread has taken the silent client before the second one arrives.
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let r = admin.get("/healthz");
    let waited = start.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        waited < admin::DEADLINE + Duration::from_millis(1500),
        "second client waited {waited:?}"
    );
    // The silent client was dropped without an answer.
    let mut buf = [0u8; 16];
    match silent.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "silent client got bytes"),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "not closed"),
    }
    admin.stop();
}

#[test]
fn a_trickling_client_is_cut_off_at_the_deadline() {
    let admin = Admin::start();
    let mut trickle = admin.connect();
    let addr = admin.addr;
    // One byte every 200 ms would take far longer than the deadline to finish its head.
    let dripper = std::thread::spawn(move || {
        let started = Instant::now();
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter().cycle() {
            if trickle.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(8) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let r = read_response(&mut s);
    let waited = start.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        waited < admin::DEADLINE + Duration::from_millis(1500),
        "second client waited {waited:?}"
    );
    let dripped = dripper.join().unwrap();
    assert!(
        dripped < Duration::from_secs(8),
        "trickling client was never cut off"
    );
    admin.stop();
}

#[test]
fn more_silent_clients_than_places_do_not_keep_a_probe_out() {
    let admin = Admin::start();
    let silent: Vec<TcpStream> = (0..2 * admin::DEFAULT_MAX_CONNECTIONS)
        .map(|_| admin.connect())
        .collect();
    assert_eq!(admin.get("/healthz").status, 200);
    // The probe took the place of an evicted client; it did not wait for the silent ones'
    // first-byte deadline: the newest of them are still held. (A place freed by that deadline
    // would come only once every silent client had been dropped.)
    let held = silent.iter().filter(|s| common::still_open(s)).count();
    assert!(
        held > 0,
        "every silent client was dropped before the probe got in"
    );
    drop(silent);
    admin.stop();
}
