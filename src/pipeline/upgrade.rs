//! The HTTP upgrade: reads the request head ourselves (bounded size and header count, under the
//! upgrade deadline), answers malformed requests with their status, then replays the bytes to
//! tungstenite, whose callback asks [`policy::decide`] and turns a refusal into its response.
//! With `[demo] enabled`, a plain `GET /` gets the [`demo`] page instead.
//! Never reads past its deadline; never logs a credential.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::server::{Request, Response, write_response};
use tungstenite::{WebSocket, http};

use crate::config::Config;
use crate::memory::Reader;
use crate::pipeline::deadline::{Deadline, Phase, is_timeout};
use crate::pipeline::demo;
use crate::pipeline::frames::{FrameLimit, FrameWatch};
use crate::pipeline::tls::Transport;
use crate::policy::{self, Grant, Reason, Target, Verifier};

/// How long a refused client gets to read our answer before the socket closes.
const LINGER: Duration = Duration::from_secs(2);
/// How much a refused client may still send while we linger.
const LINGER_DRAIN: usize = 64 * 1024;
/// How long a demo login's form body may take once its head is in (at most what is left of the
/// upgrade deadline): a few hundred bytes a browser sends with the head.
const LOGIN_BODY: Duration = Duration::from_secs(2);

/// The stream a WebSocket runs on: bytes already read while parsing the head, then the socket.
/// A read never returns head and post-head bytes together: tungstenite's handshake refuses a
/// request followed by "junk", so it sees the head alone, and the first frame a client sent in
/// the same segment is read by the WebSocket after the 101.
pub struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    head_len: usize,
    inner: S,
    /// Follows frame boundaries once the connection loop turns it on (after the handshake).
    watch: Option<FrameWatch>,
    /// The connection's place in the read share of the memory cap, and what it is charged there
    /// now: the larger of `unfinished` and `retained`.
    reader: Option<Reader>,
    read_charged: usize,
    /// Data payload bytes received and not yet handled by the loop (the message being read,
    /// and any read behind it).
    unfinished: usize,
    /// What the read buffer keeps after a message is handled: the largest frame received beyond
    /// `read_base` (tungstenite's read buffer keeps the capacity it grew to).
    retained: usize,
    /// `read_buffer_size`: the part of the read buffer that is base cost, not charged.
    read_base: usize,
}

impl<S> Replay<S> {
    /// `prefix[..head_len]` is the request head; the rest arrived behind it.
    pub fn new(prefix: Vec<u8>, head_len: usize, inner: S) -> Self {
        Replay {
            prefix,
            pos: 0,
            head_len,
            inner,
            watch: None,
            reader: None,
            read_charged: 0,
            unfinished: 0,
            retained: 0,
            read_base: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Starts following frame boundaries: reads fail with a [`FrameLimit`] error when a message
    /// has too many fragments or takes too long, or when the read share of the memory cap
    /// closes this connection ([`FrameLimit::MemoryFull`]: it had no room for the bytes that
    /// arrived, and this connection held the most, or another connection's charge chose it).
    /// Data payload bytes are charged to `reader` as they arrive until [`Replay::settle`].
    pub fn watch_frames(&mut self, watch: FrameWatch, reader: Reader, read_base: usize) {
        self.watch = Some(watch);
        self.reader = Some(reader);
        self.read_base = read_base;
    }

    /// The loop has handled a message of `len` payload bytes: they are given back, but for what
    /// the read buffer keeps (control frames are not charged).
    pub fn settle(&mut self, len: usize) {
        self.unfinished = self.unfinished.saturating_sub(len);
        let target = self.unfinished.max(self.retained);
        if let Some(reader) = &self.reader {
            if target < self.read_charged {
                reader.release(self.read_charged - target);
                self.read_charged = target;
            }
        }
    }

    /// When the fragmented message in progress must be complete.
    pub fn message_deadline(&self) -> Option<Instant> {
        self.watch.as_ref().and_then(FrameWatch::message_deadline)
    }

    /// Whether the read share has closed this connection.
    pub fn read_share_closed(&self) -> bool {
        self.reader.as_ref().is_some_and(Reader::closed)
    }

    fn observe(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(watch) = &mut self.watch else {
            return Ok(());
        };
        watch
            .observe(data, Instant::now())
            .map_err(FrameLimit::into_io)?;
        let received = usize::try_from(watch.take_received()).unwrap_or(usize::MAX);
        let largest = usize::try_from(watch.largest()).unwrap_or(usize::MAX);
        let Some(reader) = &self.reader else {
            return Ok(());
        };
        self.unfinished = self.unfinished.saturating_add(received);
        self.retained = largest.saturating_sub(self.read_base);
        let target = self.unfinished.max(self.retained);
        if target > self.read_charged {
            if !reader.try_charge(target - self.read_charged) {
                return Err(FrameLimit::MemoryFull.into_io());
            }
            self.read_charged = target;
        }
        Ok(())
    }
}

impl<S: Read> Read for Replay<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read_share_closed() {
            return Err(FrameLimit::MemoryFull.into_io());
        }
        if self.pos < self.prefix.len() {
            let end = if self.pos < self.head_len {
                self.head_len
            } else {
                self.prefix.len()
            };
            let n = (end - self.pos).min(buf.len());
            buf[..n].copy_from_slice(&self.prefix[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
                self.head_len = 0;
            }
            self.observe(&buf[..n])?;
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

impl<S: Write> Write for Replay<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub type WsStream = WebSocket<Replay<Transport>>;

/// How an upgrade ended without a WebSocket.
#[derive(Debug)]
pub enum UpgradeError {
    /// We answered with an HTTP error status (already written and lingered).
    Refused(Reason),
    /// The client went away, stalled past the deadline, or broke TLS.
    Io(io::Error),
    /// A plain `GET /` with `[demo] enabled`: the demo page was sent (and the socket closed).
    DemoPage,
    /// The demo page's `POST /login` succeeded for this user: answered 204 with the session
    /// cookie (and the socket closed). A failed one is `Refused`.
    DemoLogin(String),
    /// The demo page's `POST /logout`: answered 204 clearing the session cookie (and the socket
    /// closed). One from a foreign origin is `Refused`.
    DemoLogout,
}

/// Headers added to the 101 response (session token, cookie, subprotocol).
pub type ExtraHeaders = Vec<(&'static str, String)>;

/// Reads the upgrade request from `tls`, decides it, and completes the handshake.
/// `enter` runs on a granted request just before the 101 is sent (the server joins the hub and
/// issues the session there): it may add response headers, or still refuse (503 while shutting
/// down).
///
/// # Errors
/// [`UpgradeError`]; refusals have already been answered.
/// `login` gives the `Set-Cookie` value of a new session for a user the demo page's `POST
/// /login` proved, or the refusal when none can be issued (sessions off, the user deleted).
pub fn upgrade<T>(
    mut tls: Transport,
    config: &Config,
    verifier: &dyn Verifier,
    enter: impl FnOnce(&Grant, Deadline) -> Result<(T, ExtraHeaders), Reason>,
    login: impl FnOnce(&str) -> Result<String, Reason>,
) -> Result<(WsStream, Grant, T), UpgradeError> {
    // One piece: the callback tungstenite runs and the decision it leaves in `outcome` are
    // read in the one scope that owns the cell between them.
    let client_user = tls.client_user();
    let deadline = Deadline::new(
        Phase::Upgrade,
        Instant::now(),
        config.limits.upgrade_timeout,
    );
    let (bytes, head_len, target) = match read_head(&mut tls, config, deadline) {
        Ok(read) => read,
        Err(HeadError::Refuse(reason)) => {
            refuse(&mut tls, &reason);
            return Err(UpgradeError::Refused(reason));
        }
        Err(HeadError::Io(e)) => return Err(UpgradeError::Io(e)),
        Err(HeadError::DemoPage) => {
            let page = demo::response(&config.demo.channel);
            let sent = tls.write_all(&page);
            linger_close(&mut tls);
            return Err(sent.map_or_else(UpgradeError::Io, |()| UpgradeError::DemoPage));
        }
        Err(HeadError::Login(form)) => return Err(demo_login(tls, config, verifier, &form, login)),
        Err(HeadError::Logout(form)) => return Err(demo_logout(tls, config, &form)),
    };
    // The channel's limits size this connection's buffers; an unknown path is refused by the
    // callback (404), with the default limits in the meantime. The same `target` decides
    // access, the hub group, metrics and logs (in `decide`): one parse, one path.
    let ws_config = policy::route(&target.path, config)
        .map_or(&config.limits.ws, |c| &c.limits)
        .websocket_config();

    let outcome: RefCell<Option<Result<(Grant, T), Reason>>> = RefCell::new(None);
    #[allow(
        clippy::result_large_err,
        reason = "the error type is tungstenite's ErrorResponse"
    )]
    let callback = |req: &Request, mut resp: Response| {
        let decision = policy::decide(req, &target, config, verifier, client_user.as_deref())
            .and_then(|grant| enter(&grant, deadline).map(|entered| (grant, entered)));
        let answer = match &decision {
            Ok((_, (_, headers))) => {
                for (name, value) in headers {
                    // Values are our own tokens and fixed strings: always valid header values.
                    if let Ok(value) = http::HeaderValue::from_str(value) {
                        resp.headers_mut().append(*name, value);
                    }
                }
                Ok(resp)
            }
            Err(reason) => Err(reason.response()),
        };
        *outcome.borrow_mut() = Some(decision.map(|(grant, (t, _))| (grant, t)));
        answer
    };
    let result = tungstenite::accept_hdr_with_config(
        Replay::new(bytes, head_len, tls),
        callback,
        Some(ws_config),
    );
    let outcome = outcome.borrow_mut().take();
    match result {
        Ok(ws) => match outcome {
            Some(Ok((grant, entered))) => Ok((ws, grant, entered)),
            // Unreachable: tungstenite only accepts after the callback said yes.
            _ => Err(UpgradeError::Io(io::Error::other(
                "upgrade accepted without a decision",
            ))),
        },
        Err(HandshakeError::Failure(tungstenite::Error::Http(_))) => {
            let reason = match outcome {
                Some(Err(reason)) => reason,
                _ => Reason::Malformed,
            };
            Err(UpgradeError::Refused(reason))
        }
        Err(HandshakeError::Failure(tungstenite::Error::Io(e))) => Err(UpgradeError::Io(e)),
        Err(HandshakeError::Failure(e)) => Err(UpgradeError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            e,
        ))),
        Err(HandshakeError::Interrupted(_)) => Err(UpgradeError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{} deadline expired while answering", Phase::Upgrade),
        ))),
    }
}

enum HeadError {
    Refuse(Reason),
    Io(io::Error),
    /// Not an upgrade but the demo page's `GET /`, and the page is enabled.
    DemoPage,
    /// The demo page's `POST /login`, its body read whole.
    Login(DemoForm),
    /// The demo page's `POST /logout` (its body, if any, is not read).
    Logout(DemoForm),
}

/// What a demo login or log-out decides on: its Origin and Host headers and its form body.
struct DemoForm {
    origins: Vec<Vec<u8>>,
    host: Option<Vec<u8>>,
    body: Vec<u8>,
}

/// Answers the demo page's login: 204 with the session cookie, or the refusal's status and text
/// (without `WWW-Authenticate`, which would make the browser show its own password dialog).
fn demo_login(
    mut tls: Transport,
    config: &Config,
    verifier: &dyn Verifier,
    form: &DemoForm,
    login: impl FnOnce(&str) -> Result<String, Reason>,
) -> UpgradeError {
    let origins: Vec<&[u8]> = form.origins.iter().map(Vec::as_slice).collect();
    let decided =
        policy::decide_login(&origins, form.host.as_deref(), &form.body, config, verifier);
    let (answer, result) = match decided.and_then(|user| Ok((login(&user)?, user))) {
        Ok((cookie, user)) => (
            format!(
                "HTTP/1.1 204 No Content\r\nSet-Cookie: {cookie}\r\nCache-Control: no-store\r\n\
                 Connection: close\r\n\r\n"
            ),
            UpgradeError::DemoLogin(user),
        ),
        Err(reason) => (
            String::from_utf8_lossy(&refusal_bytes(&reason)).into_owned(),
            UpgradeError::Refused(reason),
        ),
    };
    let sent = tls.write_all(answer.as_bytes());
    linger_close(&mut tls);
    match sent {
        Ok(()) => result,
        Err(e) => UpgradeError::Io(e),
    }
}

/// A refusal of the demo page's login or log-out, as bytes: the status and its text, without
/// `WWW-Authenticate`, which would make the browser show its own password dialog.
fn refusal_bytes(reason: &Reason) -> Vec<u8> {
    let mut response = reason.response();
    response
        .headers_mut()
        .remove(http::header::WWW_AUTHENTICATE);
    let mut out = Vec::with_capacity(256);
    if write_response(&mut out, &response).is_ok() {
        if let Some(body) = response.body() {
            out.extend_from_slice(body.as_bytes());
        }
    }
    out
}

/// Answers the demo page's log-out: 204 with the session cookie cleared, or the refusal.
fn demo_logout(mut tls: Transport, config: &Config, form: &DemoForm) -> UpgradeError {
    let origins: Vec<&[u8]> = form.origins.iter().map(Vec::as_slice).collect();
    let (answer, result) = match policy::decide_logout(&origins, form.host.as_deref(), config) {
        Ok(()) => (
            format!(
                "HTTP/1.1 204 No Content\r\nSet-Cookie: {}\r\nCache-Control: no-store\r\n\
                 Connection: close\r\n\r\n",
                policy::session_cookie("", Duration::ZERO)
            )
            .into_bytes(),
            UpgradeError::DemoLogout,
        ),
        Err(reason) => (refusal_bytes(&reason), UpgradeError::Refused(reason)),
    };
    let sent = tls.write_all(&answer);
    linger_close(&mut tls);
    match sent {
        Ok(()) => result,
        Err(e) => UpgradeError::Io(e),
    }
}

/// Reads until the blank line ending the head, returning every byte read (the head and anything
/// the client sent after it), the head's length and the request target. Parses once, when the
/// head is complete, so a head dripped one byte at a time costs linear work.
fn read_head(
    tls: &mut Transport,
    config: &Config,
    deadline: Deadline,
) -> Result<(Vec<u8>, usize, Target), HeadError> {
    // One piece: the bytes read, the one parse of them and the demo requests it recognises
    // share the buffer the parsed request borrows.
    let max = config.limits.max_request_head.get();
    let mut buf = Vec::with_capacity(1024.min(max));
    let mut chunk = [0u8; 1024];
    let head_len = loop {
        // A head begun and not finished gets its 408; a client that sent nothing is dropped.
        deadline
            .arm(tls.socket())
            .map_err(|e| match buf.is_empty() {
                false if is_timeout(&e) => HeadError::Refuse(Reason::Unfinished {
                    what: "request head",
                }),
                _ => HeadError::Io(e),
            })?;
        let n = match tls.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => continue, // the deadline check above decides
            Err(e) => return Err(HeadError::Io(e)),
        };
        let scan_from = buf.len().saturating_sub(3);
        let new_from = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        // A line ending in a bare LF would never end the head (we look for CRLF CRLF): refused
        // at once instead of at the deadline.
        if (new_from..buf.len()).any(|i| buf[i] == b'\n' && (i == 0 || buf[i - 1] != b'\r')) {
            return Err(HeadError::Refuse(Reason::Malformed));
        }
        if let Some(end) = buf[scan_from..].windows(4).position(|w| w == b"\r\n\r\n") {
            break scan_from + end + 4;
        }
        if buf.len() >= max {
            return Err(HeadError::Refuse(Reason::HeadTooLarge));
        }
    };
    if head_len > max {
        return Err(HeadError::Refuse(Reason::HeadTooLarge));
    }
    let mut headers = vec![httparse::EMPTY_HEADER; config.limits.max_headers.get()];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Refuse(Reason::Malformed)),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Refuse(Reason::TooManyHeaders));
        }
        Err(_) => return Err(HeadError::Refuse(Reason::Malformed)),
    }
    if config.demo.enabled && demo::wants_page(&req) {
        return Err(HeadError::DemoPage);
    }
    let header = |name: &str| -> Vec<Vec<u8>> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.to_vec())
            .collect()
    };
    if config.demo.enabled && demo::is_logout(&req) {
        return Err(HeadError::Logout(DemoForm {
            origins: header("origin"),
            host: header("host").into_iter().next(),
            body: Vec::new(),
        }));
    }
    if config.demo.enabled && demo::is_login(&req) {
        let length = login_length(&req).map_err(HeadError::Refuse)?;
        let origins = header("origin");
        let host = header("host").into_iter().next();
        let mut body = buf[head_len..].to_vec();
        let body_deadline = Deadline::new(
            Phase::LoginBody,
            Instant::now(),
            LOGIN_BODY.min(deadline.at.saturating_duration_since(Instant::now())),
        );
        while body.len() < length {
            body_deadline.arm(tls.socket()).map_err(|e| {
                if is_timeout(&e) {
                    HeadError::Refuse(Reason::Unfinished { what: "login body" })
                } else {
                    HeadError::Io(e)
                }
            })?;
            match tls.read(&mut chunk) {
                // The client shut its side with the body short: it can still read our answer.
                Ok(0) => return Err(HeadError::Refuse(Reason::Malformed)),
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
                Err(e) => return Err(HeadError::Io(e)),
            }
        }
        body.truncate(length);
        return Err(HeadError::Login(DemoForm {
            origins,
            host,
            body,
        }));
    }
    policy::check_head(&req).map_err(HeadError::Refuse)?;
    let target = Target::parse(req.path.unwrap_or_default()).map_err(HeadError::Refuse)?;
    Ok((buf, head_len, target))
}

/// A demo login's body length: its one `Content-Length`, at most [`policy::MAX_LOGIN_BODY`].
///
/// # Errors
/// 411 without a `Content-Length` or with `Transfer-Encoding` (the form is read by its length
/// alone), 400 for a length that is not one number, 413 for one too long.
fn login_length(req: &httparse::Request<'_, '_>) -> Result<usize, Reason> {
    let values = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect::<Vec<_>>()
    };
    let lengths = values("content-length");
    if !values("transfer-encoding").is_empty() || lengths.is_empty() {
        return Err(Reason::LengthRequired);
    }
    let [length] = lengths[..] else {
        return Err(Reason::Malformed);
    };
    let digits = std::str::from_utf8(length)
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(Reason::Malformed)?;
    // Too many digits for a usize is too long as well.
    match digits.parse::<usize>() {
        Ok(n) if n <= policy::MAX_LOGIN_BODY => Ok(n),
        _ => Err(Reason::LoginTooLarge),
    }
}

/// Writes the refusal for `reason` and closes politely.
fn refuse(tls: &mut Transport, reason: &Reason) {
    let response = reason.response();
    let mut out = Vec::with_capacity(256);
    if write_response(&mut out, &response).is_ok() {
        if let Some(body) = response.body() {
            out.extend_from_slice(body.as_bytes());
        }
        let _ = tls.write_all(&out);
    }
    linger_close(tls);
}

/// Flushes what is pending, sends close_notify, half-closes, then reads and discards what the
/// client still sends (bounded in bytes and time) so our answer is not lost to a reset.
pub fn linger_close(tls: &mut Transport) {
    let deadline = Deadline::new(Phase::Linger, Instant::now(), LINGER);
    tls.send_close_notify();
    if deadline.arm(tls.socket()).is_err() || tls.flush().is_err() {
        return;
    }
    let _ = tls.socket().shutdown(Shutdown::Write);
    let mut drained = 0;
    let mut sink = [0u8; 4096];
    while drained < LINGER_DRAIN && deadline.arm(tls.socket()).is_ok() {
        match tls.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}
