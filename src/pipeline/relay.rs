//! `mode = proxy`: the backend side of a proxied connection. Before the client's 101, [`connect`]
//! opens the backend WebSocket (TCP, Unix socket or verified TLS) under the named
//! `backend connect` deadline; after it, [`run`] relays messages both ways on the worker thread,
//! `poll(2)` over both sockets, with the client's limits on the client side and the same buffer
//! bounds and deadlines on both. It never decides access ([`crate::policy`] did) and never
//! forwards a client header or a query credential to the backend.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{ClientRequestBuilder, Error as WsError, Message, WebSocket};

use crate::config::{Backend, Endpoint, Limits, Overflow, WsLimits};
use crate::hub::Membership;
use crate::ops::metrics::Counter;
use crate::pipeline::certs::CertError;
use crate::pipeline::connection::{self, End, Rights};
use crate::pipeline::frames::FrameLimit;
use crate::pipeline::ratelimit::MessageLimiter;
use crate::pipeline::upgrade::WsStream;
use crate::policy::acl::ChannelPattern;
use crate::policy::{BackendFailure, Method};

/// The identity headers on every backend request, set by wsgate alone: the request is built
/// fresh, so a header of these names that a client sent never reaches the backend.
pub const USER_HEADER: &str = "X-Wsgate-User";
/// How the client proved who it is: `password`, `token`, `session`, `client-cert`, `anonymous`.
pub const AUTH_HEADER: &str = "X-Wsgate-Auth";
/// The client's IP address (behind a load balancer, the one its PROXY header carried).
pub const CLIENT_HEADER: &str = "X-Forwarded-For";
/// Query keys that carry credentials; never forwarded.
pub const CREDENTIAL_KEYS: [&str; 4] = ["user", "pass", "token", "session"];

/// Messages read from one side in one step at most (as [`crate::pipeline::connection`] does).
const READS_PER_STEP: usize = 64;
/// How long we wait for a peer's close frame after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why the backend WebSocket could not be opened; [`BackendError::failure`] gives the status for
/// the client and the label in `wsgate_proxy_backend_failures_total`.
#[derive(Debug)]
pub enum BackendError {
    /// Nothing listens (connection refused, no such socket file, host unreachable, name not
    /// resolved). 503: the backend is down; try again later.
    Down(io::Error),
    /// The `backend connect` deadline passed (connect, TLS or the backend's 101). 504.
    Timeout,
    /// The TLS handshake failed (certificate not trusted, wrong name, protocol). 502.
    Tls(io::Error),
    /// The backend answered, but not with a valid 101 (an HTTP error status, a bad accept
    /// key, junk). 502.
    Handshake(String),
}

impl BackendError {
    /// Which kind of failure: its status and metric label.
    pub fn failure(&self) -> BackendFailure {
        match self {
            BackendError::Down(_) => BackendFailure::Down,
            BackendError::Timeout => BackendFailure::Timeout,
            BackendError::Tls(_) => BackendFailure::Tls,
            BackendError::Handshake(_) => BackendFailure::Handshake,
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Down(e) => write!(f, "backend down: {e}"),
            BackendError::Timeout => f.write_str("backend connect deadline expired"),
            BackendError::Tls(e) => write!(f, "backend tls failed: {e}"),
            BackendError::Handshake(why) => write!(f, "backend refused the upgrade: {why}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// Who the client is, for the backend request's identity headers.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    pub user: Option<&'a str>,
    pub method: Method,
    pub client: IpAddr,
}

/// The backend request target: the backend URL's path, then the client's path after the channel
/// prefix (nothing for an exact channel), then the client's query without its credentials.
/// Pairs are split on `&` as [`crate::policy`] reads them; a pair is dropped when its key is a
/// [`CREDENTIAL_KEYS`] name in any spelling an app might decode to one — percent-encoded
/// (`us%65r`), in another letter case (`USER`), or behind a `;` (`room=1;user=x`, which some
/// query parsers split) — or cannot be decoded at all. A naive app reading `?user=` must never see
/// one the client chose.
pub fn forward_target(
    backend: &Backend,
    pattern: &ChannelPattern,
    path: &str,
    query: Option<&str>,
) -> String {
    let rest = match pattern {
        ChannelPattern::Prefix(prefix) => path.strip_prefix(prefix.as_str()).unwrap_or(""),
        ChannelPattern::Exact(_) => "",
    };
    let mut target = backend.base_path.clone();
    if !rest.is_empty() {
        if !target.ends_with('/') {
            target.push('/');
        }
        target.push_str(rest);
    }
    let kept: Vec<&str> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.is_empty() && !names_a_credential(pair))
        .collect();
    if !kept.is_empty() {
        target.push('?');
        target.push_str(&kept.join("&"));
    }
    target
}

/// Whether a query pair's key, or that of any `;`-separated part of it, decodes to a credential
/// key (or does not decode).
fn names_a_credential(pair: &str) -> bool {
    pair.split(';').any(|part| {
        let key = part.split_once('=').map_or(part, |(k, _)| k);
        match crate::policy::percent_decode(key) {
            Some(key) => CREDENTIAL_KEYS
                .iter()
                .any(|c| key.trim().eq_ignore_ascii_case(c)),
            None => true,
        }
    })
}

/// The identity headers for `who`, in order. A user name is a checked name (no control
/// characters), so every value is a valid header value.
pub fn identity_headers(who: &Identity<'_>) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(3);
    if let Some(user) = who.user {
        headers.push((USER_HEADER, user.to_string()));
    }
    headers.push((AUTH_HEADER, who.method.to_string()));
    headers.push((CLIENT_HEADER, who.client.to_string()));
    headers
}

/// The TLS settings for a `wss://` backend: `backend_ca`'s certificates, or the system's roots.
///
/// # Errors
/// [`CertError::Pem`] when the CA file or the system store holds no usable certificate.
pub fn client_tls(ca: Option<&Path>) -> Result<Arc<ClientConfig>, CertError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let ca_err = |error: String| CertError::Pem {
                path: path.to_path_buf(),
                what: "backend CA",
                error,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| ca_err(e.to_string()))?)
                    .map_err(|e| ca_err(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(CertError::Pem {
                    path: "system root store".into(),
                    what: "backend CA",
                    error: "no system root certificates found; set backend_ca".into(),
                });
            }
        }
    }
    if roots.is_empty() {
        return Err(CertError::Pem {
            path: ca.map_or_else(|| "system root store".into(), Path::to_path_buf),
            what: "backend CA",
            error: "no CERTIFICATE block found".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CertError::Pem {
            path: ca.map_or_else(|| "system root store".into(), Path::to_path_buf),
            what: "backend CA",
            error: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The backend connection's transport.
pub enum BackendStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl BackendStream {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            BackendStream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            BackendStream::Tls(s) => {
                s.sock.set_read_timeout(t)?;
                s.sock.set_write_timeout(t)
            }
            BackendStream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            BackendStream::Tcp(s) => s.set_nonblocking(on),
            BackendStream::Tls(s) => s.sock.set_nonblocking(on),
            BackendStream::Unix(s) => s.set_nonblocking(on),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            BackendStream::Tcp(s) => s.as_fd(),
            BackendStream::Tls(s) => s.sock.as_fd(),
            BackendStream::Unix(s) => s.as_fd(),
        }
    }

    /// Ends the transport: a TLS backend gets its `close_notify` first (one try: the socket is
    /// non-blocking, and a backend that is not reading does not get to hold us).
    fn shutdown(&mut self) {
        let _ = match self {
            BackendStream::Tcp(s) => s.shutdown(Shutdown::Both),
            BackendStream::Tls(s) => {
                s.conn.send_close_notify();
                let _ = s.conn.write_tls(&mut s.sock);
                s.sock.shutdown(Shutdown::Both)
            }
            BackendStream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for BackendStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BackendStream::Tcp(s) => s.read(buf),
            BackendStream::Tls(s) => s.read(buf),
            BackendStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for BackendStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BackendStream::Tcp(s) => s.write(buf),
            BackendStream::Tls(s) => s.write(buf),
            BackendStream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BackendStream::Tcp(s) => s.flush(),
            BackendStream::Tls(s) => s.flush(),
            BackendStream::Unix(s) => s.flush(),
        }
    }
}

/// An open backend WebSocket.
pub type BackendWs = WebSocket<BackendStream>;

/// The time left before `at`, or [`BackendError::Timeout`].
fn left(at: Instant) -> Result<Duration, BackendError> {
    let left = at.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(BackendError::Timeout)
    } else {
        Ok(left)
    }
}

/// An I/O error during connect: a timeout is the deadline's, anything else is `kind`.
fn io_failure(e: io::Error, at: Instant, kind: fn(io::Error) -> BackendError) -> BackendError {
    if crate::pipeline::deadline::is_timeout(&e) || Instant::now() >= at {
        BackendError::Timeout
    } else {
        kind(e)
    }
}

/// Opens the backend WebSocket for one client, all of it (connect, TLS, the 101) under
/// `backend.connect_timeout`. `tls` is the channel's [`client_tls`] for a `wss://` backend.
/// Host names are resolved by the system resolver, whose own timeout applies.
///
/// # Errors
/// [`BackendError`], with the status the client gets.
pub fn connect(
    backend: &Backend,
    tls: Option<&Arc<ClientConfig>>,
    target: &str,
    who: &Identity<'_>,
    ws_config: WebSocketConfig,
) -> Result<BackendWs, BackendError> {
    let at = Instant::now() + backend.connect_timeout;
    let (stream, host) = match &backend.endpoint {
        Endpoint::Unix(path) => {
            // A Unix socket connect does not wait for the backend to accept: it fails at once or
            // lands in the listen queue.
            let s = UnixStream::connect(path).map_err(BackendError::Down)?;
            (BackendStream::Unix(s), "localhost".to_string())
        }
        Endpoint::Tcp {
            host,
            port,
            tls: secure,
        } => {
            let addrs: Vec<_> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(BackendError::Down)?
                .collect();
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
            let mut sock = None;
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, left(at)?) {
                    Ok(s) => {
                        sock = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let sock = sock.ok_or_else(|| io_failure(last, at, BackendError::Down))?;
            let _ = sock.set_nodelay(true);
            let host_header = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            if *secure {
                let config = tls.ok_or_else(|| {
                    BackendError::Tls(io::Error::other("no TLS settings for a wss:// backend"))
                })?;
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| BackendError::Tls(io::Error::other(e)))?;
                let conn = ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| BackendError::Tls(io::Error::other(e)))?;
                let mut s = StreamOwned::new(conn, sock);
                while s.conn.is_handshaking() {
                    let t = left(at)?;
                    s.sock
                        .set_read_timeout(Some(t))
                        .and_then(|()| s.sock.set_write_timeout(Some(t)))
                        .map_err(BackendError::Down)?;
                    match s.conn.complete_io(&mut s.sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_failure(e, at, BackendError::Tls)),
                    }
                }
                (BackendStream::Tls(Box::new(s)), host_header)
            } else {
                (BackendStream::Tcp(sock), host_header)
            }
        }
    };
    let uri: tungstenite::http::Uri = format!("ws://{host}{target}")
        .parse()
        .map_err(|e| BackendError::Handshake(format!("request target: {e}")))?;
    let mut request = ClientRequestBuilder::new(uri);
    for (name, value) in identity_headers(who) {
        request = request.with_header(name, value);
    }
    stream
        .set_timeouts(Some(left(at)?))
        .map_err(BackendError::Down)?;
    let mut attempt = tungstenite::client::client_with_config(request, stream, Some(ws_config));
    loop {
        match attempt {
            Ok((ws, _)) => return Ok(ws),
            Err(HandshakeError::Interrupted(mid)) => {
                let t = left(at)?;
                mid.get_ref()
                    .get_ref()
                    .set_timeouts(Some(t))
                    .map_err(BackendError::Down)?;
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(e)) => return Err(handshake_failure(e, at)),
        }
    }
}

fn handshake_failure(e: WsError, at: Instant) -> BackendError {
    match e {
        WsError::Http(response) => BackendError::Handshake(status_line(&response)),
        WsError::Io(e) => io_failure(e, at, |e| {
            BackendError::Handshake(format!("connection failed before the 101: {e}"))
        }),
        WsError::Tls(e) => BackendError::Tls(io::Error::other(e.to_string())),
        other => BackendError::Handshake(other.to_string()),
    }
}

fn status_line(response: &tungstenite::http::Response<Option<Vec<u8>>>) -> String {
    let status = response.status();
    format!(
        "answered {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

/// A side of the relay: one WebSocket, its write state and its silence.
struct Side<S> {
    ws: WebSocket<S>,
    /// A message this side's write buffer had no room for; reading the other side waits for it.
    held: Option<Message>,
    /// Since when writes to this side have been blocked by a full socket.
    stalled_since: Option<Instant>,
    /// When this side last sent us any frame.
    last_heard: Instant,
    ping_sent: bool,
}

impl<S: Read + Write> Side<S> {
    fn new(ws: WebSocket<S>, now: Instant) -> Self {
        Side {
            ws,
            held: None,
            stalled_since: None,
            last_heard: now,
            ping_sent: false,
        }
    }

    /// Queues `msg`; a full write buffer holds it (the reader of the other side pauses).
    fn send(&mut self, msg: Message) -> Result<(), WsError> {
        match self.ws.write(msg) {
            Ok(()) => Ok(()),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(WsError::WriteBufferFull(msg)) => {
                self.held = Some(*msg);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Retries the held message and flushes, in two rounds: a message held by a full write
    /// buffer fits once a flush has emptied it (both sides' messages are bounded by the channel's
    /// `max_message_size`, which the write buffer always has room for). Remembers when the
    /// socket stopped taking bytes.
    fn write_out(&mut self) -> Result<(), WsError> {
        for _ in 0..2 {
            if let Some(msg) = self.held.take() {
                self.send(msg)?;
            }
            match self.ws.flush() {
                Ok(()) => self.stalled_since = None,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled_since.get_or_insert_with(Instant::now);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            if self.held.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// The socket under a side, for `poll`.
trait PollSocket {
    fn poll_fd(&self) -> BorrowedFd<'_>;
}

impl PollSocket for crate::pipeline::upgrade::Replay<crate::pipeline::tls::Transport> {
    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.get_ref().socket().as_fd()
    }
}

impl PollSocket for BackendStream {
    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

/// What the backend gets when the relay ends.
enum BackendEnd {
    /// A close frame (none: a close without a code, as the client sent it).
    Close(Option<CloseFrame>),
    /// The backend closed or failed: only its close is answered, if it sent one.
    Closed,
}

/// How the relay ended: the client's [`End`], and the close the backend gets.
struct Ending {
    client: End,
    backend: BackendEnd,
}

impl Ending {
    /// wsgate ends it: the client gets `code`, the backend 1001.
    fn both(code: u16, why: &'static str) -> Ending {
        Ending {
            client: End::Closed(code, why),
            backend: client_gone(),
        }
    }
}

fn client_gone() -> BackendEnd {
    BackendEnd::Close(Some(close(1001, "client gone")))
}

fn close(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }
}

/// Runs a proxied connection until either side ends, then closes the other. Consumes both.
pub fn run(
    client: WsStream,
    backend: BackendWs,
    member: Membership,
    rights: Rights,
    channel: &WsLimits,
    limits: &Limits,
) -> End {
    let now = Instant::now();
    let sock = client.get_ref().get_ref().shared_socket();
    if let Err(e) = sock
        .set_nonblocking(true)
        .and_then(|()| backend.get_ref().set_nonblocking(true))
        .and_then(|()| backend.get_ref().set_timeouts(None))
    {
        return End::Dropped(format!("set non-blocking: {e}"));
    }
    let mut client = Side::new(client, now);
    // The client's frames are charged to the memory cap as a connection loop's are, and given
    // back once each message is handed to the backend (its write buffer is bounded per
    // connection by `max_write_buffer_size`, not by the cap).
    connection::watch_client(&mut client.ws, &member, channel, limits);
    member.attach_socket(Arc::clone(&sock));
    let mut relay = Relay {
        client,
        backend: Side::new(backend, now),
        sock,
        member,
        rights,
        limiter: MessageLimiter::new(
            channel.max_messages_per_sec,
            channel.max_bytes_per_sec as u64,
            now,
        ),
    };
    let ending = relay.serve(limits);
    relay.finish(&ending, limits.write_timeout);
    ending.client
}

struct Relay {
    client: Side<crate::pipeline::upgrade::Replay<crate::pipeline::tls::Transport>>,
    backend: Side<BackendStream>,
    /// The client's socket, shared with the hub (shutdown and revocation shut its read side).
    sock: Arc<TcpStream>,
    member: Membership,
    rights: Rights,
    limiter: MessageLimiter,
}

impl Relay {
    fn serve(&mut self, limits: &Limits) -> Ending {
        let mut client_readable = false;
        loop {
            if client_readable {
                self.client.ws.get_mut().get_mut().readable();
            }
            self.member.step_began();
            let step = self.step(limits);
            self.member.step_ended();
            let (wake_at, more) = match step {
                Ok(turn) => turn,
                Err(ending) => return ending,
            };
            if more {
                client_readable = true;
                continue;
            }
            let timeout = wake_at.saturating_duration_since(Instant::now());
            match self.wait(timeout) {
                Ok(r) => client_readable = r,
                Err(e) => {
                    return Ending {
                        client: End::Dropped(format!("poll: {e}")),
                        backend: client_gone(),
                    };
                }
            }
        }
    }

    /// One turn: end flags, reads from each side into the other (paused while the other side
    /// holds a message), writes, timers. Returns when to wake at the latest and whether a read
    /// stopped at its bound with more to read.
    fn step(&mut self, limits: &Limits) -> Result<(Instant, bool), Ending> {
        if let Some((code, why)) = self.member.ended() {
            return Err(Ending::both(code, why));
        }
        let mut more = false;
        let client_paused = self.backend.held.is_some();
        let backend_paused = self.client.held.is_some();
        if !client_paused {
            more |= self.read_client()?;
        }
        if !backend_paused {
            more |= self.read_backend()?;
        }
        self.backend.write_out().map_err(backend_failed)?;
        self.client.write_out().map_err(client_failed)?;
        // A side whose reads resume may have whole messages waiting in its TLS or WebSocket
        // buffers, which `poll` does not report: the next step reads it at once.
        if (client_paused && self.backend.held.is_none())
            || (backend_paused && self.client.held.is_none())
        {
            more = true;
        }
        let now = Instant::now();
        if let Some(since) = self.client.stalled_since {
            if now.duration_since(since) >= limits.write_timeout {
                return Err(Ending {
                    client: End::Dropped("write timeout".into()),
                    backend: client_gone(),
                });
            }
        }
        if let Some(since) = self.backend.stalled_since {
            if now.duration_since(since) >= limits.write_timeout {
                return Err(Ending::both(1011, "backend not reading"));
            }
        }
        if now.duration_since(self.client.last_heard) >= limits.idle_timeout {
            return Err(Ending::both(1001, "idle timeout"));
        }
        if now.duration_since(self.backend.last_heard) >= limits.idle_timeout {
            return Err(Ending {
                client: End::Closed(1011, "backend idle timeout"),
                backend: BackendEnd::Close(Some(close(1001, "idle timeout"))),
            });
        }
        let message_deadline = self.client.ws.get_ref().message_deadline();
        if message_deadline.is_some_and(|d| now >= d) {
            return Err(Ending::both(1008, FrameLimit::TooSlow.reason()));
        }
        ping_if_silent(&mut self.client, limits, now).map_err(client_failed)?;
        ping_if_silent(&mut self.backend, limits, now).map_err(backend_failed)?;
        let mut wake_at = now + limits.idle_timeout;
        for (heard, pinged, stalled) in [
            (
                self.client.last_heard,
                self.client.ping_sent,
                self.client.stalled_since,
            ),
            (
                self.backend.last_heard,
                self.backend.ping_sent,
                self.backend.stalled_since,
            ),
        ] {
            wake_at = wake_at.min(heard + limits.idle_timeout);
            if !pinged {
                wake_at = wake_at.min(heard + limits.ping_interval);
            }
            if let Some(since) = stalled {
                wake_at = wake_at.min(since + limits.write_timeout);
            }
        }
        if let Some(deadline) = message_deadline {
            wake_at = wake_at.min(deadline);
        }
        Ok((wake_at, more))
    }

    /// Client to backend: data with the channel's rights and rate limit applied, its close code
    /// passed on. Pings are answered by tungstenite.
    fn read_client(&mut self) -> Result<bool, Ending> {
        for _ in 0..READS_PER_STEP {
            let msg = match self.client.ws.read() {
                Ok(msg) => msg,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(client_failed(e)),
            };
            self.client.last_heard = Instant::now();
            self.client.ping_sent = false;
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    self.member.metrics().message_in(msg.len());
                    self.client.ws.get_mut().settle(msg.len());
                    if !self.admit(&msg)? {
                        continue;
                    }
                    self.backend.send(msg).map_err(backend_failed)?;
                    if self.backend.held.is_some() {
                        return Ok(false);
                    }
                }
                Message::Close(frame) => {
                    let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                    return Err(Ending {
                        client: End::PeerClosed(code),
                        backend: BackendEnd::Close(frame),
                    });
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Ok(true)
    }

    /// Publish rights and the rate limit, as on an echo channel: whether `msg` goes on.
    fn admit(&mut self, msg: &Message) -> Result<bool, Ending> {
        let metrics = self.member.metrics();
        if !self.rights.may_publish {
            metrics.bump(Counter::PublishDenied, 1);
            return match self.rights.on_forbidden {
                Overflow::Close => Err(Ending::both(1008, "publish not allowed")),
                Overflow::Drop => Ok(false),
            };
        }
        if !self.limiter.allow(msg.len(), Instant::now()) {
            metrics.bump(Counter::RateLimited, 1);
            return match self.rights.on_rate_limit {
                Overflow::Close => Err(Ending::both(1008, "rate limit")),
                Overflow::Drop => Ok(false),
            };
        }
        Ok(true)
    }

    /// Backend to client: data as it is, the backend's close code passed on.
    fn read_backend(&mut self) -> Result<bool, Ending> {
        for _ in 0..READS_PER_STEP {
            let msg = match self.backend.ws.read() {
                Ok(msg) => msg,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(backend_failed(e)),
            };
            self.backend.last_heard = Instant::now();
            self.backend.ping_sent = false;
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    self.member.metrics().message_out(msg.len());
                    self.client.send(msg).map_err(client_failed)?;
                    if self.client.held.is_some() {
                        return Ok(false);
                    }
                }
                Message::Close(frame) => {
                    let end = match &frame {
                        Some(f) if sendable(f.code) => End::Closed(u16::from(f.code), "backend"),
                        _ => End::Closed(1000, "backend closed"),
                    };
                    return Err(Ending {
                        client: end,
                        backend: BackendEnd::Closed,
                    });
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Ok(true)
    }

    /// Sleeps until a socket is readable (or writable where a side is stalled) or `timeout`.
    /// A side whose reads are paused (the other side holds a message) is not polled for input.
    /// Returns whether the client socket reported an event.
    fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut client_events = PollFlags::empty();
        let mut backend_events = PollFlags::empty();
        if self.backend.held.is_none() {
            client_events |= PollFlags::IN;
        }
        if self.client.held.is_none() {
            backend_events |= PollFlags::IN;
        }
        if self.client.stalled_since.is_some() {
            client_events |= PollFlags::OUT;
        }
        if self.backend.stalled_since.is_some() {
            backend_events |= PollFlags::OUT;
        }
        let backend_fd = self.backend.ws.get_ref().fd();
        let mut fds = [
            PollFd::new(&*self.sock, client_events),
            PollFd::new(&backend_fd, backend_events),
        ];
        let timeout =
            rustix::event::Timespec::try_from(timeout).unwrap_or(rustix::event::Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) => Ok(!fds[0].revents().is_empty()),
            Err(rustix::io::Errno::INTR) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Closes both sides as `ending` says, the backend first (it is usually local and quick).
    /// What is queued gets `write_timeout` to go out, except to a side that already missed it;
    /// a peer's close reply is awaited ([`CLOSE_WAIT`]) only after a polite close (1000, 1001,
    /// 1008, as [`crate::pipeline::connection`] does): after 1011 nobody reads what a flooding client still
    /// sends.
    fn finish(&mut self, ending: &Ending, write_timeout: Duration) {
        self.client.ws.get_mut().get_mut().poll_driven(false);
        let budget = |side_stalled: bool| {
            if side_stalled {
                Duration::ZERO
            } else {
                write_timeout
            }
        };
        let backend_stuck = self.backend.stalled_since.is_some();
        match &ending.backend {
            BackendEnd::Close(frame) => close_side(
                &mut self.backend.ws,
                Some(frame.clone()),
                budget(backend_stuck),
                !backend_stuck,
            ),
            // Its close (if it sent one) is answered by the flush.
            BackendEnd::Closed => {
                close_side(&mut self.backend.ws, None, budget(backend_stuck), false)
            }
        }
        self.backend.ws.get_mut().shutdown();
        let (client_close, wait_reply) = match &ending.client {
            End::Closed(code, reason) => (
                Some(Some(close(*code, reason))),
                matches!(code, 1000 | 1001 | 1008),
            ),
            End::PeerClosed(_) => (None, false),
            End::Dropped(_) => {
                let _ = self.sock.shutdown(Shutdown::Both);
                return;
            }
        };
        let client_stuck = self.client.stalled_since.is_some();
        close_side(
            &mut self.client.ws,
            client_close,
            budget(client_stuck),
            wait_reply,
        );
        let tls = self.client.ws.get_mut().get_mut();
        tls.send_close_notify();
        let _ = Write::flush(tls);
    }
}

/// Whether a close code a backend sent may be sent to the client as it is.
fn sendable(code: CloseCode) -> bool {
    code.is_allowed() && u16::from(code) != 1005
}

/// Pings a side silent for `ping_interval` (once until it answers).
fn ping_if_silent<S: Read + Write>(
    side: &mut Side<S>,
    limits: &Limits,
    now: Instant,
) -> Result<(), WsError> {
    if !side.ping_sent && now.duration_since(side.last_heard) >= limits.ping_interval {
        side.ping_sent = true;
        side.send(Message::Ping(Default::default()))?;
        side.write_out()?;
    }
    Ok(())
}

/// The client failed or broke the protocol: its end as [`crate::pipeline::connection`] has it; the
/// backend gets 1001.
fn client_failed(e: WsError) -> Ending {
    Ending {
        client: connection::classify(e),
        backend: client_gone(),
    }
}

/// The backend failed (vanished without a close, broke the protocol, sent more than the
/// channel's message size): the client gets 1011.
fn backend_failed(e: WsError) -> Ending {
    let why = match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => "backend message too big",
        WsError::ConnectionClosed | WsError::AlreadyClosed => "backend closed",
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) | WsError::Io(_) => {
            "backend vanished"
        }
        WsError::Protocol(_) | WsError::Utf8(_) | WsError::Capacity(_) => "backend protocol error",
        _ => "backend failed",
    };
    log::debug!("backend side ended: {e}");
    Ending {
        client: End::Closed(1011, why),
        backend: BackendEnd::Closed,
    }
}

/// Sends a close (`send`: `Some(None)` is a close without a code) once what is queued has gone
/// out (within `flush_budget`; one try when it is zero), and with `wait_reply` waits up to
/// [`CLOSE_WAIT`] for the peer's close. A close the peer sent is answered by the flush.
fn close_side<S: Read + Write + PollSocket>(
    ws: &mut WebSocket<S>,
    mut send: Option<Option<CloseFrame>>,
    flush_budget: Duration,
    wait_reply: bool,
) {
    let flush_deadline = Instant::now() + flush_budget;
    let mut reply_deadline = None;
    loop {
        let flushed = match ws.flush() {
            Ok(()) => true,
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => return,
        };
        if flushed {
            if let Some(frame) = send.take() {
                match ws.close(frame) {
                    Ok(()) => {}
                    Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
                continue;
            }
            if !wait_reply {
                return;
            }
            reply_deadline.get_or_insert_with(|| Instant::now() + CLOSE_WAIT);
        }
        // Checked on every turn: a peer still sending data after our close must not keep this
        // loop reading past its deadline.
        if Instant::now() >= reply_deadline.unwrap_or(flush_deadline) {
            return;
        }
        if wait_reply {
            match ws.read() {
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(_) => continue,
                Err(_) => return,
            }
        }
        let left = reply_deadline
            .unwrap_or(flush_deadline)
            .saturating_duration_since(Instant::now());
        let events = if flushed {
            PollFlags::IN
        } else {
            PollFlags::IN | PollFlags::OUT
        };
        let fd = ws.get_ref().poll_fd();
        let mut fds = [PollFd::new(&fd, events)];
        let t = rustix::event::Timespec::try_from(left).unwrap_or_default();
        if poll(&mut fds, Some(&t)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn backend(base: &str) -> Backend {
        Backend {
            endpoint: Endpoint::Unix(PathBuf::from("/run/app.sock")),
            base_path: base.into(),
            ca: None,
            connect_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_path_after_the_prefix_goes_below_the_backend_path() {
        let prefix = ChannelPattern::Prefix("/app/".into());
        let b = backend("/");
        assert_eq!(forward_target(&b, &prefix, "/app/room/1", None), "/room/1");
        let b = backend("/ws");
        assert_eq!(forward_target(&b, &prefix, "/app/chat", None), "/ws/chat");
        let b = backend("/ws/");
        assert_eq!(forward_target(&b, &prefix, "/app/chat", None), "/ws/chat");
        let exact = ChannelPattern::Exact("/app".into());
        assert_eq!(forward_target(&b, &exact, "/app", None), "/ws/");
    }

    #[test]
    fn credentials_never_leave_the_query() {
        let prefix = ChannelPattern::Prefix("/app/".into());
        let b = backend("/");
        let cases = [
            ("user=alice&pass=pw&room=3", "/x?room=3"),
            ("token=t&session=s", "/x"),
            ("room=3&user=alice&lang=en&pass=", "/x?room=3&lang=en"),
            ("pass", "/x"),
            ("&&room=3&", "/x?room=3"),
            // Other keys stay, as sent.
            (
                "username=a&passes=b&q=%20x",
                "/x?username=a&passes=b&q=%20x",
            ),
            // Spellings an app may decode to a credential key are dropped too.
            ("us%65r=admin&room=3", "/x?room=3"),
            ("USER=admin&Pass=x&room=3", "/x?room=3"),
            ("room=3;user=admin&lang=en", "/x?lang=en"),
            ("us+er=a&user+=b&room=3", "/x?us+er=a&room=3"),
            ("%zz=1&room=3", "/x?room=3"),
        ];
        for (query, want) in cases {
            assert_eq!(
                forward_target(&b, &prefix, "/app/x", Some(query)),
                want,
                "{query}"
            );
        }
    }

    #[test]
    fn identity_headers_name_the_user_the_method_and_the_address() {
        let who = Identity {
            user: Some("alice"),
            method: Method::Password,
            client: "192.0.2.7".parse().unwrap(),
        };
        assert_eq!(
            identity_headers(&who),
            vec![
                (USER_HEADER, "alice".to_string()),
                (AUTH_HEADER, "password".to_string()),
                (CLIENT_HEADER, "192.0.2.7".to_string()),
            ]
        );
        let anon = Identity {
            user: None,
            method: Method::Anonymous,
            client: "::1".parse().unwrap(),
        };
        assert_eq!(
            identity_headers(&anon),
            vec![
                (AUTH_HEADER, "anonymous".to_string()),
                (CLIENT_HEADER, "::1".to_string()),
            ]
        );
    }

    #[test]
    fn each_backend_failure_has_its_status() {
        let status = |e: BackendError| e.failure().status().as_u16();
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(status(BackendError::Down(refused)), 503);
        assert_eq!(status(BackendError::Timeout), 504);
        assert_eq!(status(BackendError::Handshake("x".into())), 502);
        assert_eq!(status(BackendError::Tls(io::Error::other("x"))), 502);
    }
}
