//! Shared helpers for the black-box tests: start the real `wsgate` binary on 127.0.0.1:0 with a
//! certificate generated for the test, and connect real TLS WebSocket clients to it. Every socket
//! has a timeout, and the server is killed when the handle drops, so a hang fails instead of
//! stalling CI.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod cgroup;
pub mod prometheus;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

pub const ALICE: (&str, &str) = ("alice", "alice-secret-pw");
pub const BOB: (&str, &str) = ("bob", "bob-secret-pw");
pub const ORIGIN_OK: &str = "https://app.example.com";

pub type Tls = StreamOwned<ClientConnection, TcpStream>;
pub type Client = WebSocket<Tls>;

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsgate-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A users file line for each test user, hashed once per test process.
pub fn users_file_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        [ALICE, BOB]
            .iter()
            .map(|(u, p)| format!("{u}:{}\n", wsgate::auth::users::hash_password(p).unwrap()))
            .collect()
    })
}

/// The config the tests start from; `set` overrides keys, `section` adds sections.
pub struct Setup {
    sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for Setup {
    fn default() -> Self {
        let mut s = Setup {
            sections: BTreeMap::new(),
        };
        s.set("server", "listen", "127.0.0.1:0")
            .set("tls", "cert", "cert.pem")
            .set("tls", "key", "key.pem")
            .set(
                "origins",
                "allow",
                &format!("{ORIGIN_OK}, https://*.example.org"),
            )
            .set("origins", "allow_missing", "true")
            .set("auth", "users_file", "users")
            // The file watcher off the tests' path: a test that rewrites a file and reloads
            // sends SIGHUP and counts its line; the tests of the watcher set their own interval.
            .set("tls", "reload_check_interval", "60s")
            .set("log", "level", "debug")
            .set("channel:/echo", "mode", "echo")
            .set("channel:/chat/*", "mode", "broadcast")
            .set("channel:/news", "mode", "broadcast")
            .set("role:everyone", "members", "*")
            .set("role:everyone", "subscribe", "/echo, /chat/*, /news")
            .set("role:everyone", "publish", "/echo, /chat/*, /news");
        s
    }
}

impl Setup {
    pub fn set(&mut self, section: &str, key: &str, value: &str) -> &mut Self {
        self.sections
            .entry(section.into())
            .or_default()
            .insert(key.into(), value.into());
        self
    }

    /// Removes a key, so the server takes its default.
    pub fn unset(&mut self, section: &str, key: &str) -> &mut Self {
        if let Some(keys) = self.sections.get_mut(section) {
            keys.remove(key);
        }
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, keys) in &self.sections {
            out.push_str(&format!("[{name}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push('\n');
        }
        out
    }

    /// Writes cert, key, users and config into a fresh directory; returns it and the CA cert.
    pub fn write(&self) -> (TempDir, PathBuf, CertificateDer<'static>) {
        let dir = TempDir::new("srv");
        let pair = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        std::fs::write(dir.path().join("cert.pem"), pair.cert.pem()).unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
        // As `wsgate cert` writes it: a key others can read is warned about.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join("users"), users_file_text()).unwrap();
        let config = dir.path().join("wsgate.ini");
        std::fs::write(&config, self.render()).unwrap();
        (dir, config, pair.cert.der().clone())
    }

    pub fn start(&self) -> Server {
        let (dir, config, ca) = self.write();
        Server::spawn(dir, &config, ca)
    }
}

/// A running `wsgate serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub ca: CertificateDer<'static>,
    log: Arc<Mutex<Vec<String>>>,
    pub dir: TempDir,
}

/// The programs black-box tests drive, and the Debian package that carries each
/// (`scripts/test` installs them).
const PROGRAM_PACKAGES: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("haproxy", "haproxy"),
    ("openssl", "openssl"),
    ("prlimit", "util-linux"),
    ("setpriv", "util-linux"),
    ("systemd-analyze", "systemd"),
    ("timeout", "coreutils"),
];

/// The path of `program` (on PATH, or in /usr/sbin or /sbin, where Debian puts daemons and which a
/// user's PATH may lack). A missing program fails the test with the package to install: a test
/// never skips because its peer is absent.
pub fn require_program(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        let package = PROGRAM_PACKAGES
            .iter()
            .find(|(p, _)| *p == program)
            .map_or(program, |(_, pkg)| pkg);
        panic!(
            "{program} is not installed: this test drives it. Run `scripts/test` (it installs what \
             the tests need) or `sudo apt-get install {package}`"
        )
    })
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wsgate")
}

impl Server {
    pub fn spawn(dir: TempDir, config: &Path, ca: CertificateDer<'static>) -> Server {
        Server::spawn_with_env(dir, config, ca, &[])
    }

    /// Starts the server with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn spawn_with_env(
        dir: TempDir,
        config: &Path,
        ca: CertificateDer<'static>,
        env: &[(&str, &str)],
    ) -> Server {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied());
        Server::from_command(dir, cmd, ca)
    }

    /// Starts `wsgate serve OPTIONS --config CONFIG`.
    pub fn spawn_with_options(
        dir: TempDir,
        config: &Path,
        ca: CertificateDer<'static>,
        options: &[&str],
    ) -> Server {
        let mut cmd = Command::new(bin());
        cmd.arg("serve").args(options).arg("--config").arg(config);
        Server::from_command(dir, cmd, ca)
    }

    /// Starts `wsgate serve CONFIG`, the config given as the command's argument.
    pub fn spawn_positional(dir: TempDir, config: &Path, ca: CertificateDer<'static>) -> Server {
        let mut cmd = Command::new(bin());
        cmd.arg("serve").arg(config);
        Server::from_command(dir, cmd, ca)
    }

    /// Starts the server under a wrapper command (e.g. `prlimit --nofile=64 --`, which execs
    /// wsgate, so the child's pid is the server's).
    pub fn spawn_wrapped(
        dir: TempDir,
        config: &Path,
        ca: CertificateDer<'static>,
        wrapper: &[&str],
    ) -> Server {
        let mut cmd = Command::new(require_program(wrapper[0]));
        cmd.args(&wrapper[1..])
            .arg(bin())
            .args(["serve", "--config"])
            .arg(config);
        Server::from_command(dir, cmd, ca)
    }

    /// Spawns `cmd` (which runs `wsgate serve`) and waits for its `listening on` line.
    fn from_command(dir: TempDir, mut cmd: Command, ca: CertificateDer<'static>) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wsgate");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let Ok(addr) = rx.recv_timeout(START_TIMEOUT) else {
            let _ = child.kill();
            panic!(
                "server did not start; log:\n{}",
                log.lock().unwrap().join("\n")
            );
        };
        Server {
            child,
            addr: addr.parse().unwrap(),
            ca,
            log,
            dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.log.lock().unwrap().iter().any(|l| l.contains(needle))
        })
    }

    /// Counts log lines containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        trusting(&self.ca)
    }

    /// A TCP connection to the server with timeouts.
    pub fn tcp(&self) -> TcpStream {
        let tcp = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp
    }

    /// A TLS connection to the server (handshake completed).
    pub fn tls(&self) -> Tls {
        self.try_tls().expect("tls handshake")
    }

    /// A TLS connection, or the error that ended its handshake.
    pub fn try_tls(&self) -> std::io::Result<Tls> {
        self.tls_with(self.client_config())
    }

    /// A TLS connection with the given client configuration.
    pub fn tls_with(&self, config: Arc<ClientConfig>) -> std::io::Result<Tls> {
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(config, name).unwrap();
        let mut tls = StreamOwned::new(conn, self.tcp());
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(tls)
    }

    /// A TLS connection over a socket the test connected itself (to a load balancer, or after
    /// writing a PROXY header).
    pub fn tls_over(&self, tcp: TcpStream) -> std::io::Result<Tls> {
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(self.client_config(), name).unwrap();
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(tls)
    }

    /// Opens a WebSocket on `path` as `user` (Basic credentials, allowed Origin) over a socket the
    /// test connected itself.
    pub fn connect_over(
        &self,
        tcp: TcpStream,
        path: &str,
        (user, pass): (&str, &str),
    ) -> Result<Client, tungstenite::Error> {
        let port = tcp.peer_addr()?.port();
        let mut req = format!("wss://localhost:{port}{path}").into_client_request()?;
        let basic = format!(
            "Basic {}",
            data_encoding::BASE64.encode(format!("{user}:{pass}").as_bytes())
        );
        for (k, v) in [("Authorization", basic.as_str()), ("Origin", ORIGIN_OK)] {
            req.headers_mut()
                .append(k, HeaderValue::from_str(v).unwrap());
        }
        match tungstenite::client::client(req, self.tls_over(tcp)?) {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("handshake interrupted"),
        }
    }

    /// The admin endpoint's address, from its start-up log line (`[admin] listen` must be set).
    pub fn admin_addr(&self) -> SocketAddr {
        assert!(
            self.wait_log("admin endpoint", IO_TIMEOUT),
            "no admin endpoint; log:\n{}",
            self.logs()
        );
        let logs = self.logs();
        let line = logs.lines().find(|l| l.contains("admin endpoint")).unwrap();
        line.rsplit("http://")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Opens a WebSocket on `path_query` with extra request headers.
    pub fn connect_with(
        &self,
        path_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        self.connect_full(path_query, headers, self.client_config())
            .map(|(ws, _)| ws)
    }

    /// Opens a WebSocket with a given TLS client configuration (e.g. a client certificate) and
    /// returns the 101 response too (session headers, subprotocol).
    pub fn connect_full(
        &self,
        path_query: &str,
        headers: &[(&str, &str)],
        tls: Arc<ClientConfig>,
    ) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
        let url = format!("wss://localhost:{}{path_query}", self.addr.port());
        let mut req = url.into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().append(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
        match tungstenite::client::client_with_config(req, self.tls_with(tls)?, Some(config)) {
            Ok(done) => Ok(done),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("handshake interrupted"),
        }
    }

    /// Opens a WebSocket as `user` with Basic credentials and the allowed Origin.
    pub fn connect_as(&self, path: &str, (user, pass): (&str, &str)) -> Client {
        let basic = format!(
            "Basic {}",
            data_encoding::BASE64.encode(format!("{user}:{pass}").as_bytes())
        );
        self.connect_with(path, &[("Authorization", &basic), ("Origin", ORIGIN_OK)])
            .unwrap_or_else(|e| panic!("connect {path} as {user}: {e}; log:\n{}", self.logs()))
    }

    /// Sends a raw request over TLS and returns the whole response text (until close).
    pub fn raw_request(&self, request: &[u8]) -> String {
        let mut tls = self.tls();
        tls.write_all(request).unwrap();
        tls.flush().unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// Sends SIGHUP (reload).
    pub fn reload(&self) {
        self.signal(rustix::process::Signal::HUP);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Sends SIGHUP and waits for the reload's log line (success or failure).
    pub fn reload_and_wait(&self) {
        let before = self.count_log("reloaded ") + self.count_log("reload failed");
        self.reload();
        let done = wait_until(IO_TIMEOUT, || {
            self.count_log("reloaded ") + self.count_log("reload failed") > before
        });
        assert!(done, "no reload line; log:\n{}", self.logs());
    }

    /// Waits for the process to exit, returning its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut exited = None;
        wait_until(timeout, || {
            exited = self.child.try_wait().unwrap();
            exited.is_some()
        });
        exited
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP status a refused handshake got.
pub fn status_of(result: Result<Client, tungstenite::Error>) -> u16 {
    match result {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// The `Retry-After` seconds of a refused handshake that must be a 429.
pub fn retry_after_of_429(result: Result<Client, tungstenite::Error>) -> u64 {
    match result {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
}

/// Reads the next data message, skipping pings/pongs.
pub fn next_data(ws: &mut Client) -> Message {
    loop {
        match ws.read().expect("read") {
            m @ (Message::Text(_) | Message::Binary(_)) => return m,
            Message::Close(f) => panic!("unexpected close {f:?}"),
            _ => {}
        }
    }
}

/// Reads until the server's close frame; returns its code.
pub fn close_code(ws: &mut Client) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return u16::from(f.code),
            Ok(Message::Close(None)) => return 1005,
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// A valid `Sec-WebSocket-Key` (RFC 6455's sample nonce), for hand-written upgrade requests.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The first line of an HTTP response (`HTTP/1.1 101 Switching Protocols`), or "".
pub fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

/// The well-behaved client that must keep working next to each bad one: `bob` echoes on /echo.
pub fn still_serving(server: &Server) {
    let mut ws = server.connect_as("/echo", BOB);
    ws.send(Message::text("alive")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("alive"));
}

/// Connects to /echo as `user`, retrying while the server is still releasing a slot (a refused
/// connection is reset before the TLS handshake completes).
pub fn connect_retrying(server: &Server, (user, pass): (&str, &str)) -> Client {
    let mut last = None;
    let mut client = None;
    wait_until(IO_TIMEOUT, || {
        match server.connect_with("/echo", &[("Authorization", &basic(user, pass))]) {
            Ok(c) => client = Some(c),
            Err(e) => last = Some(e),
        }
        client.is_some()
    });
    client.unwrap_or_else(|| panic!("never admitted: {last:?}; log:\n{}", server.logs()))
}

/// A TLS client configuration that trusts `ca` alone (ring provider, safe default versions).
pub fn trusting(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// An `Authorization: Basic` value.
pub fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{user}:{pass}").as_bytes())
    )
}

impl Server {
    /// A plain HTTP GET to the admin endpoint: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        // The listener's own address as `Host`, as curl sends it.
        self.admin_exchange(|addr| format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"))
    }

    /// The admin API's `POST /publish?path=PATH` with `body`: (status, answer body).
    pub fn admin_publish(&self, path: &str, body: &str) -> (u16, String) {
        self.admin_exchange(|addr| {
            format!(
                "POST /publish?path={path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        })
    }

    /// Sends the request `request` makes for the admin address and reads the answer to its
    /// end: (status, body).
    fn admin_exchange(&self, request: impl FnOnce(SocketAddr) -> String) -> (u16, String) {
        let addr = self.admin_addr();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(request(addr).as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Logs in to /echo with a password and returns the session token the 101 carried.
    pub fn login_session(&self, (user, pass): (&str, &str)) -> String {
        let (_ws, resp) = self
            .connect_full(
                "/echo",
                &[("Authorization", &basic(user, pass))],
                self.client_config(),
            )
            .unwrap_or_else(|e| panic!("login as {user}: {e}"));
        resp.headers()["x-wsgate-session"]
            .to_str()
            .unwrap()
            .to_string()
    }
}

/// Runs `wsgate ARGS…` to completion.
pub fn run_wsgate<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(bin()).args(args).output().unwrap()
}

/// `wsgate check-config PATH`: (exit code, stderr).
pub fn check_config(path: &Path) -> (i32, String) {
    let out = run_wsgate([std::ffi::OsStr::new("check-config"), path.as_os_str()]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a finished command succeeded; returns its stdout.
pub fn stdout_of_success(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A client CA and one client certificate it signed for `cn`.
pub struct ClientPki {
    pub ca_pem: String,
    pub leaf: CertificateDer<'static>,
    pub leaf_key: Vec<u8>,
}

pub fn client_pki(cn: &str) -> ClientPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test client CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    ClientPki {
        ca_pem: ca.pem(),
        leaf: leaf.der().clone(),
        leaf_key: leaf_key.serialize_der(),
    }
}

impl ClientPki {
    /// A client configuration that trusts `server` and presents the client certificate.
    pub fn config_for(&self, server: &Server) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(server.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.clone()));
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![self.leaf.clone()], key)
                .unwrap(),
        )
    }
}

/// Starts `cmd` with its output captured and `stdin` fed to it (then closed); `wait_with_output`
/// gives the result. The one way tests run a command that reads stdin (`wsgate passwd`).
pub fn spawn_with_stdin(cmd: &mut Command, stdin: &str) -> Child {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child
}

/// Runs `cmd` to success with `stdin` fed to it; returns its stdout.
pub fn run_ok(mut cmd: Command, stdin: &str) -> String {
    let out = spawn_with_stdin(&mut cmd, stdin)
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `wsgate ARGS --config CONFIG`.
pub fn wsgate(args: &[&str], config: &std::path::Path) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(args).arg("--config").arg(config);
    run_ok(cmd, "")
}

/// `wsgate passwd [OPTIONS] USERS_FILE USER` on the server's users file, with `stdin`.
pub fn passwd(server: &Server, options: &[&str], user: &str, stdin: &str) {
    let mut cmd = Command::new(bin());
    cmd.arg("passwd")
        .args(options)
        .arg(server.dir.path().join("users"))
        .arg(user);
    run_ok(cmd, stdin);
}

/// Reads until the server's close frame; returns its code and reason.
pub fn close_frame(ws: &mut Client) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// Sends `text` and expects it echoed back: the connection is alive.
pub fn echoes(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).unwrap();
    assert_eq!(next_data(ws), Message::text(text));
}

/// A PROXY protocol v1 header carrying `source` as the client's address (for a server with
/// `[server] proxy_protocol = true`: how a test speaks from many addresses).
pub fn proxy_v1(source: SocketAddr) -> Vec<u8> {
    let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    let dest = if source.is_ipv4() {
        "192.0.2.1"
    } else {
        "2001:db8::1"
    };
    format!(
        "PROXY {proto} {} {dest} {} 443\r\n",
        source.ip(),
        source.port()
    )
    .into_bytes()
}

impl Server {
    /// A TCP connection to the server that has already sent `header`.
    pub fn tcp_with(&self, header: &[u8]) -> TcpStream {
        let mut tcp = self.tcp();
        tcp.write_all(header).unwrap();
        tcp
    }
}

/// A `redis-server` on a free port of 127.0.0.1, without persistence; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Redis {
    /// A Redis on a free port. The port is free when chosen, but another test's listener may
    /// take it before redis-server binds it; a redis-server that exits at once is started again
    /// on another port.
    pub fn start() -> Redis {
        for _ in 0..5 {
            let mut redis = Redis::on_port(free_port());
            if redis.try_spawn() {
                return redis;
            }
        }
        panic!("redis-server exited at once on five free ports in a row");
    }

    /// A Redis that is not running yet (see [`Redis::spawn`]).
    pub fn on_port(port: u16) -> Redis {
        Redis {
            port,
            child: None,
            dir: TempDir::new("redis"),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis-server exited at once (port {} taken?)",
            self.port
        );
    }

    /// Starts redis-server and waits until it answers PING; false if it exited first (its
    /// port was taken).
    fn try_spawn(&mut self) -> bool {
        assert!(self.child.is_none(), "redis is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): these tests need it on PATH; .ci/run installs \
                     it (apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        let until = Instant::now() + IO_TIMEOUT;
        while !self.answers_ping() {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes Redis (SIGSTOP) or thaws it (SIGCONT).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis is running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Sends one command and returns the reply's text (a bulk string's body, or the line).
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut reader = std::io::BufReader::new(s);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        match line.strip_prefix('$') {
            Some(n) => {
                let n: usize = n.trim().parse().unwrap();
                let mut body = vec![0u8; n + 2];
                reader.read_exact(&mut body).unwrap();
                String::from_utf8_lossy(&body[..n]).into_owned()
            }
            None => line.trim_end().to_string(),
        }
    }

    /// Kills the client connections whose `CLIENT LIST` line contains every one of `marks`
    /// (e.g. `name=wsgate-subscriber:a`); returns how many.
    pub fn kill_clients(&self, marks: &[&str]) -> usize {
        let list = self.command(&["CLIENT", "LIST"]);
        let ids: Vec<String> = list
            .lines()
            .filter(|l| marks.iter().all(|m| l.split(' ').any(|f| f == *m)))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_string)
            .collect();
        for id in &ids {
            self.command(&["CLIENT", "KILL", "ID", id]);
        }
        ids.len()
    }

    pub fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
/// A TCP connection to `to` from the loopback address `from` (127.0.0.x: every address of
/// 127.0.0.0/8 is the local host, and each counts as its own peer for per-IP limits), with the
/// receive buffer set to `rcvbuf` bytes before connecting when given (the window a stalled
/// reader offers), and the usual timeouts.
pub fn tcp_from(from: std::net::Ipv4Addr, to: SocketAddr, rcvbuf: Option<usize>) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        socket.set_recv_buffer_size(n).unwrap();
    }
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket.connect_timeout(&to.into(), IO_TIMEOUT).unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp
}

/// One sample of the server's `/metrics`, named as it is written there (`name` or
/// `name{label="value"}`); panics, with the whole exposition, when it is absent.
pub fn metric(server: &Server, sample: &str) -> u64 {
    let sample = sample.trim_end();
    let (status, text) = server.admin_get("/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in /metrics:\n{text}"))
}

/// The demo page's `POST /login` with `body` as its form, from `origin`.
pub fn login_request(origin: Option<&str>, body: &str) -> Vec<u8> {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /login HTTP/1.1\r\nHost: localhost\r\n{origin}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Whether the peer still holds `s` open: nothing to read yet, neither data nor its end.
pub fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let open = matches!(s.peek(&mut [0]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

/// Waits until `done` holds, checking every 20 ms, for at most `timeout`; false if it never
/// did. The one polling loop of the tests: they wait for a condition, never for a time.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the `/metrics` sample `sample` satisfies `ok`, and returns its value then;
/// panics with the last value after [`IO_TIMEOUT`].
pub fn wait_metric(server: &Server, sample: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let mut last = 0;
    let met = wait_until(IO_TIMEOUT, || {
        last = metric(server, sample);
        ok(last)
    });
    assert!(met, "{sample} stayed at {last}; log:\n{}", server.logs());
    last
}

/// The resident set size of process `pid`, in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Raises this process's soft limit on open files to at least `n` (up to the hard limit), so a
/// test holding `n` sockets (and the server it spawns, which inherits the limit) does not run out.
pub fn raise_nofile(n: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c < n) {
        limit.current = Some(limit.maximum.map_or(n, |max| max.min(n)));
        setrlimit(Resource::Nofile, limit).unwrap();
    }
}

/// The envelope subprotocol (docs/history.md).
pub const ENVELOPE: &str = "wsgate.v1.json";

/// Connects as `who` to `path_query`, asking for the envelope; checks the 101 answered it.
pub fn enveloped(server: &Server, path_query: &str, (user, pass): (&str, &str)) -> Client {
    let (ws, resp) = server
        .connect_full(
            path_query,
            &[
                ("Authorization", &basic(user, pass)),
                ("Sec-WebSocket-Protocol", ENVELOPE),
            ],
            server.client_config(),
        )
        .unwrap_or_else(|e| panic!("connect {path_query}: {e}; log:\n{}", server.logs()));
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some(ENVELOPE)
    );
    ws
}

/// The text of the next data message.
pub fn next_text(ws: &mut Client) -> String {
    match next_data(ws) {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The raw JSON value of `key` in a flat envelope (a string keeps its quotes).
pub fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let start = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + key.len()
        + 3;
    let rest = &json[start..];
    let end = if let Some(inside) = rest.strip_prefix('"') {
        // The closing quote: the first one no backslash escapes.
        let mut escaped = false;
        let close = inside
            .char_indices()
            .find(|&(_, c)| {
                let end = !escaped && c == '"';
                escaped = !escaped && c == '\\';
                end
            })
            .unwrap()
            .0;
        close + 2
    } else if rest.starts_with('{') {
        rest.find('}').unwrap() + 1
    } else {
        rest.find([',', '}']).unwrap()
    };
    &rest[..end]
}
