//! Dialing the backend of a `mode = proxy` channel, before the client's 101: a [`Dialer`] holds
//! the backend with its TLS settings ([`client_tls`]) built once; it opens the transport (TCP,
//! Unix socket or verified TLS), then the WebSocket handshake, all of it under the named
//! `backend connect` deadline; a failure is a [`BackendError`] with the client's status.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{ClientRequestBuilder, Error as WsError, WebSocket};

use super::forward::{Identity, identity_headers};
use crate::config::{Backend, Endpoint};
use crate::pipeline::certs::CertError;
use crate::policy::BackendFailure;

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
/// The TLS settings for a `wss://` peer (a backend, or `wsgate client`'s server): the certificates
/// in `ca`, or the system's roots (`SSL_CERT_FILE`, `SSL_CERT_DIR`, else the distribution's
/// store). `what` names the setting that gives `ca` (`backend_ca`, `--ca`).
///
/// # Errors
/// [`CertError::Pem`] when the CA file or the system store holds no usable certificate.
pub fn client_tls(ca: Option<&Path>, what: &'static str) -> Result<Arc<ClientConfig>, CertError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let ca_err = |error: String| CertError::Pem {
                path: path.to_path_buf(),
                what,
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
                    what,
                    error: format!("no system root certificates found; set {what}"),
                });
            }
        }
    }
    if roots.is_empty() {
        return Err(CertError::Pem {
            path: ca.map_or_else(|| "system root store".into(), Path::to_path_buf),
            what,
            error: "no CERTIFICATE block found".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CertError::Pem {
            path: ca.map_or_else(|| "system root store".into(), Path::to_path_buf),
            what,
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
    pub(super) fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
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

    pub(super) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            BackendStream::Tcp(s) => s.set_nonblocking(on),
            BackendStream::Tls(s) => s.sock.set_nonblocking(on),
            BackendStream::Unix(s) => s.set_nonblocking(on),
        }
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            BackendStream::Tcp(s) => s.as_fd(),
            BackendStream::Tls(s) => s.sock.as_fd(),
            BackendStream::Unix(s) => s.as_fd(),
        }
    }

    /// Ends the transport: a TLS backend gets its `close_notify` first (one try: the socket is
    /// non-blocking, and a backend that is not reading does not get to hold us).
    pub(super) fn shutdown(&mut self) {
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

/// A proxy channel's backend, ready to dial: its settings and, for a `wss://` backend, the TLS
/// client settings built from `backend_ca` (or the system's roots) once, when the configuration
/// is loaded, and used by every connection that configuration lets in.
pub struct Dialer {
    backend: Backend,
    /// Some exactly for a `wss://` backend: [`Dialer::new`] builds it from the endpoint.
    tls: Option<Arc<ClientConfig>>,
}

impl Dialer {
    /// `backend`, with its TLS settings loaded when it is `wss://`, so a bad `backend_ca` fails
    /// the start or the reload, not the first connection.
    ///
    /// # Errors
    /// [`CertError::Pem`] from [`client_tls`].
    pub fn new(backend: &Backend) -> Result<Dialer, CertError> {
        let tls = match backend.endpoint {
            Endpoint::Tcp { tls: true, .. } => {
                Some(client_tls(backend.ca.as_deref(), "backend_ca")?)
            }
            Endpoint::Tcp { tls: false, .. } | Endpoint::Unix(_) => None,
        };
        Ok(Dialer {
            backend: backend.clone(),
            tls,
        })
    }

    /// The backend's settings, as configured.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Opens the backend WebSocket for one client, all of it (connect, TLS, the 101) under
    /// `backend.connect_timeout`. Host names are resolved by the system resolver, whose own
    /// timeout applies.
    ///
    /// # Errors
    /// [`BackendError`], with the status the client gets.
    pub fn connect(
        &self,
        target: &str,
        who: &Identity<'_>,
        ws_config: WebSocketConfig,
    ) -> Result<BackendWs, BackendError> {
        let at = Instant::now() + self.backend.connect_timeout;
        let (stream, host) = match &self.backend.endpoint {
            Endpoint::Unix(path) => {
                // A Unix socket connect does not wait for the backend to accept: it fails at
                // once or lands in the listen queue.
                let s = UnixStream::connect(path).map_err(BackendError::Down)?;
                (BackendStream::Unix(s), "localhost".to_string())
            }
            Endpoint::Tcp { host, port, .. } => {
                let sock = dial_tcp(host, *port, at)?;
                let host_header = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                match &self.tls {
                    Some(config) => (secure_backend(config, host, sock, at)?, host_header),
                    None => (BackendStream::Tcp(sock), host_header),
                }
            }
        };
        upgrade_backend(stream, &host, target, who, ws_config, at)
    }
}

/// The backend's 101 over `stream`, asked for `target` with the client's identity, before `at`.
fn upgrade_backend(
    stream: BackendStream,
    host: &str,
    target: &str,
    who: &Identity<'_>,
    ws_config: WebSocketConfig,
    at: Instant,
) -> Result<BackendWs, BackendError> {
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

/// A TCP connection to the first of `host`'s addresses that answers before `at`, with Nagle
/// off.
fn dial_tcp(host: &str, port: u16, at: Instant) -> Result<TcpStream, BackendError> {
    let addrs: Vec<_> = (host, port)
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
    Ok(sock)
}

/// The TLS handshake with a `wss://` backend named `host` on `sock`, finished before `at`.
fn secure_backend(
    config: &Arc<ClientConfig>,
    host: &str,
    sock: TcpStream,
    at: Instant,
) -> Result<BackendStream, BackendError> {
    let name = ServerName::try_from(host.to_string())
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
    Ok(BackendStream::Tls(Box::new(s)))
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

#[cfg(test)]
mod tests {
    use super::*;

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
