//! Behind a load balancer, end to end: the PROXY protocol (v1 and v2) from a raw client, the
//! per-IP cap and the login throttle on the carried address, and a real HAProxy (TLS passthrough,
//! `send-proxy-v2`, health checks on `/healthz`) in front of two instances, drained one at a time
//! with no failed client connect. HAProxy must be installed: `.ci/run` installs it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

// ------------------------------------------------------------------------------------------
// Helpers.

fn proxied_setup() -> Setup {
    let mut setup = Setup::default();
    setup.set("server", "proxy_protocol", "true");
    setup
}

/// A TCP connection to `addr` with timeouts.
fn tcp_to(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp
}

fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x20 | command, family]);
    out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    out.extend_from_slice(addresses);
    out
}

fn v2_tcp6(source: Ipv6Addr, port: u16) -> Vec<u8> {
    let mut a = source.octets().to_vec();
    a.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    a.extend_from_slice(&port.to_be_bytes());
    a.extend_from_slice(&443u16.to_be_bytes());
    // A NOOP TLV, which the server must skip.
    a.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
    v2(1, 0x21, &a)
}

/// One echo round trip, then a clean close.
fn echo(ws: &mut Client, text: &str) -> Result<(), String> {
    ws.send(Message::text(text)).map_err(|e| e.to_string())?;
    loop {
        match ws.read().map_err(|e| e.to_string())? {
            Message::Text(t) if t.as_str() == text => break,
            Message::Ping(_) | Message::Pong(_) => {}
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    let _ = ws.close(None);
    while ws.read().is_ok() {}
    Ok(())
}

/// True when `log` has a line opening a connection for `peer`.
fn opened(log: &str, peer: SocketAddr) -> bool {
    log.contains(&format!("open peer={peer} "))
}

// ------------------------------------------------------------------------------------------
// The PROXY protocol from a raw client.

#[test]
fn v1_and_v2_headers_carry_the_client_address_into_the_log() {
    let server = proxied_setup().start();
    let v4: SocketAddr = "203.0.113.7:40001".parse().unwrap();
    let mut ws = server
        .connect_over(server.tcp_with(&proxy_v1(v4)), "/echo", ALICE)
        .unwrap();
    echo(&mut ws, "over v1").unwrap();
    let v6: SocketAddr = "[2001:db8::7]:40002".parse().unwrap();
    let header = v2_tcp6("2001:db8::7".parse().unwrap(), 40002);
    let mut ws = server
        .connect_over(server.tcp_with(&header), "/echo", ALICE)
        .unwrap();
    echo(&mut ws, "over v2").unwrap();
    // LOCAL (a balancer's own connection): the socket's peer stands.
    let tcp = server.tcp_with(&v2(0, 0x00, &[]));
    let local = tcp.local_addr().unwrap();
    let mut ws = server.connect_over(tcp, "/echo", ALICE).unwrap();
    echo(&mut ws, "local").unwrap();
    // v1 UNKNOWN: the same.
    let tcp = server.tcp_with(b"PROXY UNKNOWN\r\n");
    let unknown = tcp.local_addr().unwrap();
    let mut ws = server.connect_over(tcp, "/echo", ALICE).unwrap();
    echo(&mut ws, "unknown").unwrap();
    assert!(server.wait_log("close peer=127.0.0.1", IO_TIMEOUT));
    let log = server.logs();
    for peer in [v4, v6, local, unknown] {
        assert!(opened(&log, peer), "no open line for {peer}; log:\n{log}");
    }
}

#[test]
fn without_a_valid_header_the_connection_is_dropped_and_with_proxy_off_a_header_is_garbage() {
    let server = proxied_setup().start();
    // A plain TLS client: its ClientHello is not a PROXY header.
    assert!(server.try_tls().is_err());
    // A malformed header, then TLS.
    let bad = server.tcp_with(b"PROXY TCP4 203.0.113.7 192.0.2.1 40001\r\n");
    assert!(server.tls_over(bad).is_err());
    assert!(server.wait_log("proxy header failed via=127.0.0.1:", IO_TIMEOUT));
    assert!(server.wait_log("malformed proxy v1 header", IO_TIMEOUT));
    assert!(!server.logs().contains("open peer="));

    let plain = Setup::default().start();
    let header = proxy_v1("203.0.113.7:40001".parse().unwrap());
    assert!(plain.tls_over(plain.tcp_with(&header)).is_err());
    assert!(plain.wait_log("tls handshake failed peer=127.0.0.1:", IO_TIMEOUT));
    // And the server still serves ordinary clients.
    let mut ws = plain.connect_as("/echo", ALICE);
    echo(&mut ws, "still fine").unwrap();
}

#[test]
fn the_per_ip_cap_counts_carried_addresses() {
    let mut setup = proxied_setup();
    setup.set("server", "max_connections_per_ip", "1");
    let server = setup.start();
    let (one, two): (SocketAddr, SocketAddr) = (
        "198.51.100.1:5001".parse().unwrap(),
        "198.51.100.2:5002".parse().unwrap(),
    );
    // Two clients, both from 127.0.0.1 on the socket, with different carried addresses: both in.
    let first = server
        .connect_over(server.tcp_with(&proxy_v1(one)), "/echo", ALICE)
        .unwrap();
    let mut second = server
        .connect_over(server.tcp_with(&proxy_v1(two)), "/echo", ALICE)
        .unwrap();
    echo(&mut second, "two").unwrap();
    // A second connection carrying the first address: refused by closing.
    let again: SocketAddr = "198.51.100.1:5003".parse().unwrap();
    assert!(
        server
            .connect_over(server.tcp_with(&proxy_v1(again)), "/echo", ALICE)
            .is_err()
    );
    assert!(server.wait_log("refused peer=198.51.100.1:5003 via=127.0.0.1:", IO_TIMEOUT));
    assert!(server.logs().contains("per-ip connection cap reached"));
    // Once the first closes, its address gets in again.
    drop(first);
    let until = Instant::now() + IO_TIMEOUT;
    loop {
        let tcp = server.tcp_with(&proxy_v1(again));
        match server.connect_over(tcp, "/echo", ALICE) {
            Ok(mut ws) => break echo(&mut ws, "again").unwrap(),
            Err(e) => assert!(Instant::now() < until, "still refused: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_login_throttle_counts_carried_addresses() {
    let mut setup = proxied_setup();
    setup.set("auth", "max_failures", "2");
    let server = setup.start();
    let attacker: SocketAddr = "198.51.100.66:6000".parse().unwrap();
    let status = |from: SocketAddr, user| {
        let tcp = server.tcp_with(&proxy_v1(from));
        match server.connect_over(tcp, "/echo", user) {
            Ok(_) => 101,
            Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("{e}"),
        }
    };
    // Two failures from the carried address, each against a different name.
    assert_eq!(status(attacker, ("nobody1", "x")), 401);
    assert_eq!(status(attacker, ("nobody2", "x")), 401);
    // That address is now throttled, even with the right password...
    assert_eq!(status(attacker, ALICE), 429);
    // ...while another carried address, on the same socket peer, is not.
    assert_eq!(status("198.51.100.7:6001".parse().unwrap(), ALICE), 101);
    assert!(server.logs().contains("peer=198.51.100.66:6000"));
}

// ------------------------------------------------------------------------------------------
// A real HAProxy in front of two instances.

/// The haproxy binary: on PATH, or where Debian puts it (`/usr/sbin`, not on a user's PATH).
fn haproxy_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "haproxy is not installed (not on PATH): these tests run a real HAProxy. \
                 .ci/run installs it (apt-get install haproxy)"
            )
        })
}

/// `haproxy -c` on a config text: it parses, and every file it names loads.
fn haproxy_accepts(name: &str, config: &str) {
    let dir = TempDir::new("haproxy-check");
    let path = dir.path().join(name);
    std::fs::write(&path, config).unwrap();
    let out = Command::new(haproxy_bin())
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haproxy -c {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shipped_haproxy_examples_are_valid() {
    let read = |name: &str| {
        std::fs::read_to_string(format!("{}/conf/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    haproxy_accepts("haproxy.cfg", &read("haproxy.cfg"));
    // The TLS-terminating example names certificate files: give it real ones.
    let dir = TempDir::new("haproxy-certs");
    let pair = rcgen::generate_simple_self_signed(vec!["wsgate.internal".to_string()]).unwrap();
    let (crt, bundle) = (dir.path().join("ca.pem"), dir.path().join("wss.pem"));
    std::fs::write(&crt, pair.cert.pem()).unwrap();
    std::fs::write(&bundle, pair.cert.pem() + &pair.signing_key.serialize_pem()).unwrap();
    let text = read("haproxy-tls-terminated.cfg");
    for path in [
        "/etc/haproxy/certs/wss.example.com.pem",
        "/etc/haproxy/wsgate-ca.pem",
    ] {
        assert!(text.contains(path), "{path}");
    }
    let text = text
        .replace(
            "/etc/haproxy/certs/wss.example.com.pem",
            bundle.to_str().unwrap(),
        )
        .replace("/etc/haproxy/wsgate-ca.pem", crt.to_str().unwrap());
    haproxy_accepts("haproxy-tls-terminated.cfg", &text);
}

/// A running `haproxy -db` on a generated config; killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Haproxy {
    /// TLS passthrough to `servers` (each its wss address and admin address) with
    /// `send-proxy-v2`, health checks on `/healthz` every 200 ms, down after 2 failures.
    fn start(servers: &[(SocketAddr, SocketAddr)]) -> Haproxy {
        let bin = haproxy_bin();
        let dir = TempDir::new("haproxy");
        // A free port for the frontend (HAProxy cannot report a port 0 bind).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut config = format!(
            "global\n    maxconn 256\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    \
             timeout server 30s\n    timeout tunnel 1h\n    timeout check 1s\n\n\
             frontend wss\n    bind {addr}\n    default_backend wsgate\n\n\
             backend wsgate\n    balance roundrobin\n    option httpchk\n    \
             http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host wsgate\n    \
             http-check expect status 200\n    \
             default-server check inter 200ms fall 2 rise 2 send-proxy-v2\n"
        );
        for (i, (wss, admin)) in servers.iter().enumerate() {
            config.push_str(&format!("    server s{i} {wss} port {}\n", admin.port()));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config).unwrap();
        let mut child = Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let mut haproxy = Haproxy {
            child,
            addr,
            log,
            _dir: dir,
        };
        // Ready when the frontend accepts (the probe is closed before any byte is sent).
        let until = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!(
                    "haproxy exited ({status}); config:\n{config}\nlog:\n{}",
                    haproxy.logs()
                );
            }
            assert!(Instant::now() < until, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the first health checks pass (rise 2 x inter 200ms).
        std::thread::sleep(Duration::from_millis(600));
        haproxy
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two instances sharing one certificate (a client cannot tell which one it reached) with the
/// PROXY protocol on and admin endpoints for the health checks.
fn two_instances(drain_delay: &str) -> (Server, Server) {
    let mut setup = proxied_setup();
    setup
        .set("admin", "listen", "127.0.0.1:0")
        .set("server", "drain_delay", drain_delay)
        .set("server", "shutdown_grace", "1s");
    let a = setup.start();
    let (dir, config, _) = setup.write();
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(a.dir.path().join(file), dir.path().join(file)).unwrap();
    }
    let b = Server::spawn(dir, &config, a.ca.clone());
    (a, b)
}

/// Connects through `lb`, echoes once and closes; returns the client's own address.
fn through(lb: &Haproxy, server: &Server, text: &str) -> Result<SocketAddr, String> {
    let tcp = tcp_to(lb.addr);
    let me = tcp.local_addr().unwrap();
    let mut ws = server
        .connect_over(tcp, "/echo", ALICE)
        .map_err(|e| format!("{me}: {e}"))?;
    echo(&mut ws, text).map_err(|e| format!("{me}: {e}"))?;
    Ok(me)
}

#[test]
fn through_haproxy_the_instances_see_the_clients_own_addresses() {
    let (a, b) = two_instances("0s");
    let lb = Haproxy::start(&[(a.addr, a.admin_addr()), (b.addr, b.admin_addr())]);
    let clients: Vec<SocketAddr> = (0..6)
        .map(|i| through(&lb, &a, &format!("hello {i}")).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    // The instances' log lines are read on other threads: wait for each client's.
    wait_until(IO_TIMEOUT, || {
        let (log_a, log_b) = (a.logs(), b.logs());
        clients
            .iter()
            .all(|c| opened(&log_a, *c) || opened(&log_b, *c))
    });
    let (log_a, log_b) = (a.logs(), b.logs());
    for client in &clients {
        assert!(
            opened(&log_a, *client) || opened(&log_b, *client),
            "no instance logged {client} (the client's own address and port)\n\
             A:\n{log_a}\nB:\n{log_b}\nhaproxy:\n{}",
            lb.logs()
        );
    }
    // Round robin: both served, and every open line is one of the clients (none is HAProxy's
    // own outgoing address).
    let opens = |log: &str| log.lines().filter(|l| l.contains(" open peer=")).count();
    assert!(
        opens(&log_a) >= 1 && opens(&log_b) >= 1,
        "A:\n{log_a}\nB:\n{log_b}"
    );
    assert_eq!(opens(&log_a) + opens(&log_b), clients.len());
}

#[test]
fn draining_an_instance_behind_haproxy_fails_no_client_connect() {
    // drain_delay 2s > HAProxy's inter 200ms x fall 2.
    let (mut a, b) = two_instances("2s");
    let lb = Haproxy::start(&[(a.addr, a.admin_addr()), (b.addr, b.admin_addr())]);
    let start = Instant::now();
    let mut terminated = None;
    let mut served = Vec::new();
    while start.elapsed() < Duration::from_secs(5) {
        if terminated.is_none() && start.elapsed() >= Duration::from_millis(800) {
            a.terminate();
            terminated = Some(Instant::now());
        }
        let at = Instant::now();
        match through(&lb, &a, "drain") {
            Ok(me) => served.push((at, me)),
            Err(e) => panic!(
                "a client connect failed during the drain after {} ok: {e}\nA:\n{}\nB:\n{}\nhaproxy:\n{}",
                served.len(),
                a.logs(),
                b.logs(),
                lb.logs()
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let terminated = terminated.unwrap();
    let status = a.wait_exit(IO_TIMEOUT).expect("A exits after draining");
    assert!(status.success(), "A exited with {status}");
    assert!(a.logs().contains("draining: /healthz answers 503"));
    std::thread::sleep(Duration::from_millis(200));
    let (log_a, log_b) = (a.logs(), b.logs());
    // Every connect succeeded; those made once A's port had closed were all served by B.
    let late: Vec<_> = served
        .iter()
        .filter(|(at, _)| *at > terminated + Duration::from_millis(2100))
        .collect();
    assert!(!late.is_empty());
    for (_, me) in late {
        assert!(opened(&log_b, *me), "{me} not served by B\nB:\n{log_b}");
    }
    // Before the SIGTERM both instances were in rotation.
    assert!(log_a.contains(" open peer=") && log_b.contains(" open peer="));
}
