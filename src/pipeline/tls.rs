//! TLS on the worker: the rustls server configuration, the handshake under its deadline, and
//! [`Transport`], the Read/Write stream the upgrade and the connection loop run on: a
//! [`TlsStream`], or the bare socket on a plaintext listener (`[server] tls = off`, behind a
//! TLS-terminating proxy). It works on blocking sockets (handshake, upgrade) and non-blocking ones
//! (connection loop) alike: `WouldBlock` passes through as a normal state, never a corrupt one.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use crate::pipeline::certs::{CertError, CertifiedKey};
use crate::pipeline::deadline::{Deadline, is_timeout};

/// Whether and how clients present certificates (mTLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts<'a> {
    /// No client certificates are asked for.
    Off,
    /// Asked for and verified against the CA file when presented; clients without one pass TLS.
    Optional(&'a Path),
    /// Every client must present a certificate the CA file vouches for.
    Required(&'a Path),
}

/// Builds the rustls configuration: `ring` provider, TLS 1.3 and 1.2 with rustls' safe default
/// suites only (no CBC, no RSA key exchange), ALPN `http/1.1`, and client certificate
/// verification when `client` asks for it.
///
/// # Errors
/// [`CertError::Rejected`] when rustls refuses the pair (for example a key that does not match);
/// [`CertError::Pem`] when the client CA file is unusable.
pub fn server_config(
    pair: CertifiedKey,
    cert_path: &Path,
    key_path: &Path,
    client: ClientCerts<'_>,
) -> Result<(Arc<ServerConfig>, Arc<dyn ClientCertVerifier>), CertError> {
    let rejected = |error| CertError::Rejected {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        error,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match client {
        ClientCerts::Off => WebPkiClientVerifier::no_client_auth(),
        ClientCerts::Optional(ca) | ClientCerts::Required(ca) => {
            let ca_err = |error: String| CertError::Pem {
                path: ca.to_path_buf(),
                what: "client CA",
                error,
            };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| ca_err(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| ca_err(e.to_string()))?)
                    .map_err(|e| ca_err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_err("no CERTIFICATE block found".into()));
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let builder = if matches!(client, ClientCerts::Optional(_)) {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder.build().map_err(|e| ca_err(e.to_string()))?
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rejected)?
        .with_client_cert_verifier(Arc::clone(&verifier))
        .with_single_cert(pair.chain, pair.key)
        .map_err(rejected)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), verifier))
}

/// A TLS session over a TCP socket, readable and writable like a plain stream.
pub struct TlsStream {
    conn: ServerConnection,
    /// Shared with the connection loop, which polls it without holding the stream.
    sock: Arc<TcpStream>,
    /// Reads are driven by `poll` ([`TlsStream::poll_driven`]): a short socket read means the
    /// kernel buffer is empty, so the next read answers `WouldBlock` without a syscall until
    /// [`TlsStream::readable`] says `poll` reported the socket readable again.
    poll_driven: bool,
    /// The last socket read came back short (see `poll_driven`).
    drained: bool,
    /// What went wrong in a fetch [`TlsStream::readable`] made: the next read returns it.
    pending: Option<io::Error>,
}

/// Runs the server side of the TLS handshake, giving up at `deadline`. A client that speaks
/// plain HTTP instead (`http://` typed for `https://`) gets a plain-HTTP 400 saying so.
///
/// # Errors
/// `TimedOut` naming the phase when the client stalls; `InvalidData` for a client that does not
/// speak TLS or offers nothing acceptable (rustls has already sent the alert, or we the 400);
/// other I/O errors.
pub fn handshake(
    sock: TcpStream,
    config: Arc<ServerConfig>,
    deadline: Deadline,
) -> io::Result<TlsStream> {
    if speaks_plain_http(&sock, deadline)? {
        answer_plain_http(&sock, deadline);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "plain HTTP on the TLS port (answered 400: use https:// or wss://)",
        ));
    }
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = TlsStream {
        conn,
        sock: Arc::new(sock),
        poll_driven: false,
        drained: false,
        pending: None,
    };
    while tls.conn.is_handshaking() {
        deadline.arm(&tls.sock)?;
        match tls.conn.complete_io(&mut &*tls.sock) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(tls)
}

/// The first byte of every TLS connection: a handshake record (`ClientHello`).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Whether the client's first byte starts an HTTP request line (a method is upper-case ASCII)
/// instead of a TLS record. Peeks without consuming; a client that sends nothing before the
/// deadline, or closes, is left to the handshake to report.
fn speaks_plain_http(sock: &TcpStream, deadline: Deadline) -> io::Result<bool> {
    let mut first = [0u8; 1];
    loop {
        deadline.arm(sock)?;
        match sock.peek(&mut first) {
            Ok(0) => return Ok(false),
            Ok(_) => {
                return Ok(first[0] != TLS_HANDSHAKE_RECORD && first[0].is_ascii_uppercase());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// What a browser shows for `http://` typed to the TLS port.
const PLAIN_HTTP_ON_TLS: &str = "400 Bad Request\n\nThis port speaks TLS: use https:// (or wss:// \
for a WebSocket) instead of http:// (or ws://).\n";

/// The most of a plain-HTTP request read before its 400, so the close does not reset the
/// connection under the answer.
const PLAIN_HTTP_DRAIN: usize = 16 * 1024;

/// Reads what the client has sent (bounded), answers the 400, and closes our side; under
/// `deadline`. Errors only mean the client is gone: there is nothing more to tell it.
fn answer_plain_http(sock: &TcpStream, deadline: Deadline) {
    let mut reader = sock;
    let mut buf = [0u8; 2048];
    let mut read = 0;
    // The request head arrives in one segment or few; stop at its end or the bound.
    let mut tail = Vec::with_capacity(4);
    while read < PLAIN_HTTP_DRAIN && deadline.arm(sock).is_ok() {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                read += n;
                tail.extend_from_slice(&buf[..n]);
                let keep = tail.len().saturating_sub(4);
                tail.drain(..keep);
                if tail.ends_with(b"\r\n\r\n") || tail.ends_with(b"\n\n") {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{PLAIN_HTTP_ON_TLS}",
        PLAIN_HTTP_ON_TLS.len()
    );
    let mut writer = sock;
    if deadline.arm(sock).is_ok() && writer.write_all(answer.as_bytes()).is_ok() {
        let _ = sock.shutdown(std::net::Shutdown::Write);
    }
}

impl TlsStream {
    /// The TCP socket underneath, for timeouts, non-blocking mode and `poll`.
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// The user name a verified client certificate maps to: its subject's common name, else its
    /// first DNS subject alternative name. None without a (verified) client certificate.
    pub fn client_user(&self) -> Option<String> {
        self.conn
            .peer_certificates()?
            .first()
            .and_then(crate::pipeline::certs::user_name)
    }

    /// The client's verified certificate chain (end entity first); empty without one.
    pub fn client_chain(&self) -> Vec<CertificateDer<'static>> {
        self.conn
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default()
    }

    /// Queues a TLS `close_notify`; the next flush sends it.
    pub fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    /// Sets how many bytes rustls buffers for sending before a write takes no more
    /// ([`crate::pipeline::frames::send_buffer_for`]).
    pub fn set_send_buffer(&mut self, bytes: usize) {
        self.conn.set_buffer_limit(Some(bytes));
    }

    /// Switches reads to `poll`-driven mode (for a non-blocking socket; see the field's doc), or
    /// back to plain reads (`false`).
    pub fn poll_driven(&mut self, on: bool) {
        self.poll_driven = on;
        self.drained = false;
    }

    /// `poll` reported the socket readable (or failed): what the socket holds is read and
    /// decrypted now, unless rustls still holds plaintext to be read first; a failure is kept
    /// for the next read. Decrypting here, in the loop's own frame, rather than under
    /// tungstenite's read and our stream's layers, keeps the worker's stack about 1 KiB
    /// shallower: an idle connection's pong or a small message then stays within the stack
    /// pages its loop already touched (docs/benchmarks.md, "The worker's stack").
    #[inline]
    pub fn readable(&mut self) {
        self.drained = false;
        if self.poll_driven && self.pending.is_none() && self.conn.wants_read() {
            match self.fetch() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.drained = true,
                Err(e) => self.pending = Some(e),
            }
        }
    }

    /// One socket read into rustls and the records it completes decrypted; replies rustls
    /// queued meanwhile (key updates, alerts) are sent as far as the socket takes them.
    /// `WouldBlock` and `TimedOut` pass to the caller.
    #[inline(never)]
    fn fetch(&mut self) -> io::Result<()> {
        let mut sock = ShortReads {
            sock: &self.sock,
            short: false,
        };
        self.conn.read_tls(&mut sock)?;
        self.drained = sock.short;
        if let Err(e) = self.conn.process_new_packets() {
            // Best effort to tell the peer why (the alert is queued by rustls).
            let _ = self.write_records();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        if self.conn.wants_write() {
            // Handshake-layer replies (key updates, alerts). A full socket is fine: flush retries.
            match self.write_records() {
                Err(e) if !is_timeout(&e) => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn write_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut Sender(&self.sock))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        loop {
            match self.conn.reader().read(buf) {
                // Ok(0) here is a clean close_notify; a TCP close without one is UnexpectedEof.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // No plaintext buffered: fetch more records. WouldBlock/TimedOut pass to the caller.
            if self.poll_driven && self.drained {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.fetch()?;
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let n = self.conn.writer().write(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // rustls' send buffer is at its limit: move records to the socket first.
            if self.conn.write_tls(&mut Sender(&self.sock))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_records()
    }
}

/// The socket as rustls writes to it: one buffer goes out with `send(2)`, several with
/// `writev(2)`. Most writes after the handshake are one record, and `send` skips the vectored
/// path's per-call work (measured ~7% of the kernel's cost of a small loopback write).
struct Sender<'a>(&'a TcpStream);

impl Write for Sender<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&mut &*self.0).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut full = bufs.iter().filter(|b| !b.is_empty());
        match (full.next(), full.next()) {
            (Some(one), None) => self.write(one),
            (None, _) => Ok(0),
            _ => (&mut &*self.0).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket as rustls reads it, noting a read that returned less than was asked for.
struct ShortReads<'a> {
    sock: &'a TcpStream,
    short: bool,
}

impl Read for ShortReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&mut &*self.sock).read(buf)?;
        self.short |= n < buf.len();
        Ok(n)
    }
}

impl AsFd for TlsStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// What a connection runs on after accept: TLS, or the bare socket on a plaintext listener
/// (`[server] tls = off`). The rest of the pipeline sees one type and never asks which.
#[allow(
    clippy::large_enum_variant,
    reason = "one per connection, held by its worker for the connection's life, as the bare \
              TlsStream was; boxing would add an allocation per TLS connection to save bytes \
              only on plaintext ones"
)]
pub enum Transport {
    Tls(TlsStream),
    Plain(Arc<TcpStream>),
}

impl Transport {
    /// The TCP socket underneath, for timeouts, non-blocking mode and `poll`.
    pub fn socket(&self) -> &TcpStream {
        match self {
            Transport::Tls(tls) => tls.socket(),
            Transport::Plain(sock) => sock,
        }
    }

    /// Whether this is TLS (whose writes rustls buffers whole up to its send buffer's limit).
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The TCP socket underneath, shared: for a loop that polls it while another thread may be
    /// writing to the stream.
    pub fn shared_socket(&self) -> Arc<TcpStream> {
        match self {
            Transport::Tls(tls) => Arc::clone(&tls.sock),
            Transport::Plain(sock) => Arc::clone(sock),
        }
    }

    /// The user a verified client certificate names; always None without TLS.
    pub fn client_user(&self) -> Option<String> {
        match self {
            Transport::Tls(tls) => tls.client_user(),
            Transport::Plain(_) => None,
        }
    }

    /// See [`TlsStream::client_chain`]; empty without TLS.
    pub fn client_chain(&self) -> Vec<CertificateDer<'static>> {
        match self {
            Transport::Tls(tls) => tls.client_chain(),
            Transport::Plain(_) => Vec::new(),
        }
    }

    /// Queues a TLS `close_notify` (the next flush sends it); nothing to do without TLS.
    pub fn send_close_notify(&mut self) {
        if let Transport::Tls(tls) = self {
            tls.send_close_notify();
        }
    }

    /// See [`TlsStream::set_send_buffer`]; nothing to do without TLS.
    pub fn set_send_buffer(&mut self, bytes: usize) {
        if let Transport::Tls(tls) = self {
            tls.set_send_buffer(bytes);
        }
    }

    /// See [`TlsStream::poll_driven`]; plaintext reads always ask the socket.
    pub fn poll_driven(&mut self, on: bool) {
        if let Transport::Tls(tls) = self {
            tls.poll_driven(on);
        }
    }

    /// See [`TlsStream::readable`].
    pub fn readable(&mut self) {
        if let Transport::Tls(tls) = self {
            tls.readable();
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tls(tls) => tls.read(buf),
            Transport::Plain(sock) => (&mut &**sock).read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tls(tls) => tls.write(buf),
            Transport::Plain(sock) => (&mut &**sock).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Tls(tls) => tls.flush(),
            Transport::Plain(sock) => (&mut &**sock).flush(),
        }
    }
}

impl AsFd for Transport {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket().as_fd()
    }
}
