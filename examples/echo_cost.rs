//! What the memory cap's shared counter costs an echo: server CPU per message with
//! `memory_limit` on (derived from the host) and off (`0`), measured in one run. Two release
//! servers are started (pinned to CPU 0 by `scripts/echo-cost.sh`, which pins this client to CPU
//! 1); each gets the same closed-loop load (CONNS connections each echoing 32-byte text messages)
//! for SECS seconds, alternating on/off for ROUNDS rounds, and the server's user+system CPU time
//! (from /proc/PID/stat) is divided by the messages echoed.
//!
//!     scripts/echo-cost.sh [CONNS] [SECS] [ROUNDS]      defaults: 50 5 3
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;

const USER: (&str, &str) = ("bench", "bench-password");

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, name: &str, memory_limit: &str, server_cpu: &str) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join(format!("{name}.ini"));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = 127.0.0.1:{port}\nmemory_limit = {memory_limit}\nmax_connections_per_ip = 1000\n\
             [tls]\ncert = cert.pem\nkey = key.pem\n[origins]\nallow_missing = true\n\
             [auth]\nusers_file = users\n[log]\nlevel = info\n\
             [channel:/echo]\nmode = echo\nmax_messages_per_sec = 0\nmax_bytes_per_sec = 0\n\
             [role:all]\nmembers = *\nsubscribe = /echo\npublish = /echo\n"
        ),
    )
    .unwrap();
    let bin = std::env::var("WSGATE").unwrap_or_else(|_| "target/release/wsgate".into());
    let child = Command::new("taskset")
        .args(["-c", server_cpu, &bin, "serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wsgate (taskset, target/release/wsgate)");
    let pid = child.id();
    let mut server = Server { child, port };
    let stderr = server.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("memory limit") {
                let _ = tx.send(line.clone());
            }
            if line.contains("ERROR") || line.contains("WARN") {
                eprintln!("{line}");
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("start-up line");
    eprintln!("{name}: {line}");
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "{name} (pid {pid}) does not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// User + system CPU time of the whole process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3).
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

type Client = tungstenite::WebSocket<StreamOwned<ClientConnection, TcpStream>>;

fn connect(port: u16, tls: &Arc<ClientConfig>) -> Client {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let conn =
        ClientConnection::new(Arc::clone(tls), ServerName::try_from("localhost").unwrap()).unwrap();
    let stream = StreamOwned::new(conn, tcp);
    let mut req = format!("wss://localhost:{port}/echo")
        .into_client_request()
        .unwrap();
    let basic = data_encoding::BASE64.encode(format!("{}:{}", USER.0, USER.1).as_bytes());
    req.headers_mut().append(
        "Authorization",
        HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
    );
    tungstenite::client::client(req, stream)
        .map_err(|e| format!("{e}"))
        .unwrap()
        .0
}

/// Runs CONNS closed-loop echo clients for `secs`; returns (messages echoed, server CPU s).
fn load(server: &Server, tls: &Arc<ClientConfig>, conns: usize, secs: u64) -> (u64, f64) {
    let mut clients: Vec<Client> = (0..conns).map(|_| connect(server.port, tls)).collect();
    // Warm-up: one echo each.
    for c in &mut clients {
        c.send(Message::text("warm-up-32-bytes-of-text-payload"))
            .unwrap();
        c.read().unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds(server.child.id());
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
            std::thread::spawn(move || {
                let msg = Message::text("0123456789abcdef0123456789abcdef");
                while !stop.load(Ordering::Relaxed) {
                    c.send(msg.clone()).unwrap();
                    loop {
                        match c.read().unwrap() {
                            Message::Text(_) => break,
                            _ => continue,
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
                let _ = c.close(None);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    let cpu = cpu_seconds(server.child.id()) - cpu0;
    for t in threads {
        t.join().unwrap();
    }
    (n, cpu)
}

/// The counters' own cost per echoed message, in-process and without the machine's noise: an
/// echo charges and releases its read (the read share) and its write (the write share), here on
/// two threads sharing the counters as two busy workers would. Nanoseconds per message.
fn counter_ns_per_message() -> f64 {
    use wsgate::memory::{Account, Budget, ReaderKey, Room};
    const N: u32 = 2_000_000;
    let budget = Arc::new(Budget::new(std::num::NonZeroUsize::new(256 << 20)));
    let start = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let account = Account::new(Arc::clone(&budget));
            let reader = account.reader(ReaderKey::User(format!("user{i}")), Box::new(|| {}));
            std::thread::spawn(move || {
                // The connection's write side, as in its loop: the echo's charge is merged into
                // it when written and given back when the flush goes through.
                let mut wire = account.nothing();
                for _ in 0..N {
                    assert!(reader.try_charge(std::hint::black_box(32)));
                    let echo = account.charge(std::hint::black_box(32), Room::Deliveries);
                    wire.absorb(echo.unwrap());
                    reader.release(std::hint::black_box(32));
                    wire.shrink_to(0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Two threads ran N messages each at once: wall time per message of one thread.
    start.elapsed().as_nanos() as f64 / f64::from(N)
}

fn main() {
    let counter_ns = counter_ns_per_message();
    println!(
        "the counter alone: {counter_ns:.1} ns per echoed message (2 charges + 2 releases, 2 threads sharing it)"
    );
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("CONNS SECS ROUNDS"))
        .collect();
    let conns = *args.first().unwrap_or(&50) as usize;
    let secs = *args.get(1).unwrap_or(&5);
    let rounds = *args.get(2).unwrap_or(&3);
    let server_cpu = std::env::var("SERVER_CPU").unwrap_or_else(|_| "0".into());
    let dir = PathBuf::from(format!("/tmp/wsgate-echo-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), pair.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), pair.signing_key.serialize_pem()).unwrap();
    let hash = wsgate::auth::users::hash_password(USER.1).unwrap();
    std::fs::write(dir.join("users"), format!("{}:{hash}\n", USER.0)).unwrap();
    let mut perms = std::fs::metadata(dir.join("users")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(dir.join("users"), perms).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(pair.cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let on = start(&dir, "cap-on", "256MiB", &server_cpu);
    let off = start(&dir, "cap-off", "0", &server_cpu);
    let mut totals = [(0u64, 0f64); 2];
    for round in 1..=rounds {
        for (i, (name, server)) in [("on", &on), ("off", &off)].into_iter().enumerate() {
            let (n, cpu) = load(server, &tls, conns, secs);
            totals[i].0 += n;
            totals[i].1 += cpu;
            println!(
                "round {round} cap {name:>3}: {n} messages, {cpu:.2} s server CPU, {:.2} CPU-us/message",
                cpu * 1e6 / n as f64
            );
        }
    }
    let per = |(n, cpu): (u64, f64)| cpu * 1e6 / n as f64;
    let (on_us, off_us) = (per(totals[0]), per(totals[1]));
    println!(
        "echo, {conns} connections x 32 B, {rounds} x {secs} s each: cap on {on_us:.2} CPU-us/message, \
         cap off {off_us:.2} CPU-us/message, ratio on/off {:.3}",
        on_us / off_us
    );
    drop((on, off));
    let _ = std::fs::remove_dir_all(&dir);
}
