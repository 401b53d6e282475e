//! The client's loop, once the server said 101: one `poll(2)` over the socket (non-blocking) and
//! the input. What arrives is printed, one message per line; each input line is sent as a message
//! (text when it is UTF-8, binary otherwise). Input is read only while the socket takes what was
//! queued, so a server that stops reading stops the client reading, and memory stays bounded.
//! The end of the input sends a close (1000); the server's answer, or its own close, ends the run.
//! A server that stops answering ends it too, at a named deadline: [`WRITE_STALL`] while the
//! socket takes nothing of what is queued, [`QUIET`] then [`PONG_WAIT`] while nothing arrives
//! (the server is pinged in between), [`CLOSE_WAIT`] for the close handshake.

use std::fs::File;
use std::io::{self, Stdout, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, Message, WebSocket};

use super::dial::Transport;
use super::{ClientError, Input};

/// A line longer than this is sent as the message it is so far.
const MAX_LINE: usize = 1 << 20;

/// How long the server has to answer our close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// How long the socket may take nothing of what is queued for the server (a frozen server or
/// host: its receive buffer stays full) before the client gives up.
const WRITE_STALL: Duration = Duration::from_secs(10);

/// A server that sent no frame for this long is pinged (a live wsgate also pings a silent client,
/// every `ping_interval`, 30 s by default)...
const QUIET: Duration = Duration::from_secs(20);

/// ...and given up on when no frame at all arrived this long after the ping.
const PONG_WAIT: Duration = Duration::from_secs(10);

/// What the client sends from.
pub(super) enum Source {
    Stdin(io::Stdin),
    File(File),
    Nothing,
}

impl Source {
    pub(super) fn open(input: &Input) -> Result<Source, ClientError> {
        Ok(match input {
            Input::Stdin => Source::Stdin(io::stdin()),
            Input::File(path) => Source::File(
                File::open(path)
                    .map_err(|e| ClientError::Setup(format!("--send {}: {e}", path.display())))?,
            ),
            Input::Nothing => Source::Nothing,
        })
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Source::Stdin(s) => Some(s.as_fd()),
            Source::File(f) => Some(f.as_fd()),
            Source::Nothing => None,
        }
    }
}

/// Whether the input can still give lines.
#[derive(PartialEq, Eq)]
enum Reading {
    Open,
    /// Ended (our close is sent), or never read (`--no-send`: the server ends the connection).
    Done,
}

struct Pump {
    ws: WebSocket<Transport>,
    source: Source,
    reading: Reading,
    /// The input line read so far.
    line: Vec<u8>,
    out: Stdout,
    /// The socket did not take everything queued: input waits, the socket is polled for space.
    blocked: bool,
    /// When the close handshake began (our close sent, or the server's received): the other
    /// side has [`CLOSE_WAIT`] from then to finish it.
    closing_since: Option<Instant>,
    /// The close handshake began with ours.
    we_closed: bool,
    /// The server's close frame, once it came.
    their_close: Option<Option<CloseFrame>>,
    /// When the last frame (of any kind) arrived, or the connection opened.
    heard: Instant,
    /// A ping went out after [`QUIET`] and nothing arrived since.
    pinged: bool,
    /// While `blocked`: when the socket last took some of what is queued, or blocked began.
    writable: Instant,
}

/// Runs the connection until it ends: `Ok` for a close with 1000 (or our close answered).
pub(super) fn run(ws: WebSocket<Transport>, source: Source) -> Result<(), ClientError> {
    let lost = |e: io::Error| ClientError::Network(format!("connection: {e}"));
    let tcp = ws.get_ref().tcp();
    tcp.set_nonblocking(true).map_err(lost)?;
    let reading = match source {
        Source::Nothing => Reading::Done,
        _ => Reading::Open,
    };
    let mut pump = Pump {
        ws,
        source,
        reading,
        line: Vec::new(),
        out: io::stdout(),
        blocked: false,
        closing_since: None,
        we_closed: false,
        their_close: None,
        heard: Instant::now(),
        pinged: false,
        writable: Instant::now(),
    };
    loop {
        if let Some(ending) = pump.receive() {
            return ending;
        }
        pump.flush()?;
        if let Some(ending) = pump.deadlines(Instant::now()) {
            return ending;
        }
        let (socket, input_ready) = pump.wait().map_err(lost)?;
        if input_ready {
            pump.send_input()?;
        }
        if pump.blocked && socket.contains(PollFlags::OUT) {
            pump.writable = Instant::now();
        }
        if !socket.is_empty() && pump.blocked {
            pump.flush()?;
        }
    }
}

/// Which deadline a [`Pump`] is waiting on, and when it falls due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Our close or the server's is being answered: [`CLOSE_WAIT`] from its start.
    Close(Instant),
    /// The socket takes nothing: [`WRITE_STALL`] after it last did.
    WriteStall(Instant),
    /// Nothing arrived for [`QUIET`]: a ping goes out.
    Ping(Instant),
    /// Nothing arrived for [`PONG_WAIT`] after the ping.
    Silence(Instant),
}

impl Due {
    fn at(self) -> Instant {
        match self {
            Due::Close(at) | Due::WriteStall(at) | Due::Ping(at) | Due::Silence(at) => at,
        }
    }
}

impl Pump {
    /// The deadlines running now: the close handshake's alone once it began; else the write
    /// stall's while the socket is blocked, and the silence's (the ping, then the give-up).
    fn due(&self) -> impl Iterator<Item = Due> + use<> {
        if let Some(since) = self.closing_since {
            return [Some(Due::Close(since + CLOSE_WAIT)), None]
                .into_iter()
                .flatten();
        }
        let stall = self
            .blocked
            .then(|| Due::WriteStall(self.writable + WRITE_STALL));
        let silence = if self.pinged {
            Due::Silence(self.heard + QUIET + PONG_WAIT)
        } else {
            Due::Ping(self.heard + QUIET)
        };
        [stall, Some(silence)].into_iter().flatten()
    }

    /// Acts on the deadlines passed at `now`: a ping sent, or `Some` ending of the run: the
    /// error that names the deadline (or, in a close handshake the server began, its close).
    fn deadlines(&mut self, now: Instant) -> Option<Result<(), ClientError>> {
        for due in self.due() {
            if now < due.at() {
                continue;
            }
            let network = |message: String| Some(Err(ClientError::Network(message)));
            match due {
                Due::Close(_) if self.their_close.is_some() => return Some(self.ending()),
                Due::Close(_) => {
                    return network(format!(
                        "the server did not answer the close within {} s",
                        CLOSE_WAIT.as_secs()
                    ));
                }
                Due::WriteStall(_) => {
                    return network(format!(
                        "the server took nothing of what was sent for {} s (write deadline): it \
                         or its host stopped reading",
                        WRITE_STALL.as_secs()
                    ));
                }
                Due::Silence(_) => {
                    return network(format!(
                        "the server sent nothing for {} s and did not answer a ping within {} s \
                         (silence deadline): it or its host stopped answering",
                        QUIET.as_secs(),
                        PONG_WAIT.as_secs()
                    ));
                }
                Due::Ping(_) => {
                    self.pinged = true;
                    let written = self.ws.write(Message::Ping(Default::default()));
                    if let Err(e) = self.queued(written, false).and_then(|()| self.flush()) {
                        return Some(Err(e));
                    }
                }
            }
        }
        None
    }

    /// Reads and prints every message the socket holds; `Some` once the connection has ended.
    fn receive(&mut self) -> Option<Result<(), ClientError>> {
        loop {
            let read = self.ws.read();
            if read.is_ok() {
                self.heard = Instant::now();
                self.pinged = false;
            }
            match read {
                Ok(Message::Text(text)) => self.print(text.as_bytes()),
                Ok(Message::Binary(bytes)) => self.print(&bytes),
                Ok(Message::Close(frame)) => {
                    self.their_close = Some(frame);
                    self.closing_since.get_or_insert_with(Instant::now);
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(WsError::ConnectionClosed) => return Some(self.ending()),
                // After the server's close frame, how the transport ends (a reset, no TLS
                // close_notify) changes nothing: the frame said why.
                Err(_) if self.their_close.is_some() => return Some(self.ending()),
                Err(e) => {
                    return Some(Err(ClientError::Network(format!(
                        "connection lost without a close frame: {e}"
                    ))));
                }
            }
        }
    }

    /// What the close says: `Ok` for 1000, or for no code in answer to our own close.
    fn ending(&self) -> Result<(), ClientError> {
        match &self.their_close {
            Some(Some(frame)) if frame.code == CloseCode::Normal => Ok(()),
            Some(None) if self.we_closed => Ok(()),
            Some(Some(frame)) => Err(ClientError::Closed {
                code: frame.code.into(),
                reason: frame.reason.to_string(),
            }),
            Some(None) => Err(ClientError::Closed {
                code: 1005,
                reason: "(no status code)".into(),
            }),
            None => Err(ClientError::Network(
                "connection closed without a close frame".into(),
            )),
        }
    }

    /// One message on stdout, on its own line. A stdout nobody reads any more ends the input.
    fn print(&mut self, message: &[u8]) {
        let mut out = self.out.lock();
        let written = out
            .write_all(message)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if written.is_err() && self.reading == Reading::Open {
            self.line.clear();
            self.end_input();
        }
    }

    /// Waits for the socket (to read, or to write when blocked) and the input (when it may be
    /// read), until the next deadline. Returns the socket's events and whether the input is
    /// ready.
    fn wait(&self) -> io::Result<(PollFlags, bool)> {
        let mut socket = PollFlags::IN;
        if self.blocked {
            socket |= PollFlags::OUT;
        }
        let tcp = self.ws.get_ref().tcp();
        let input_fd = self.source.fd().filter(|_| self.may_read_input());
        let mut fds = vec![PollFd::new(tcp, socket)];
        if let Some(fd) = &input_fd {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        let next = self.due().map(Due::at).min();
        let timeout = next
            .map(|at| at.saturating_duration_since(Instant::now()))
            .and_then(|left| Timespec::try_from(left).ok());
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok((PollFlags::empty(), false)),
            Err(e) => return Err(e.into()),
        }
        let ready = |fd: &PollFd<'_>| !fd.revents().is_empty();
        Ok((fds[0].revents(), fds.get(1).is_some_and(ready)))
    }

    fn may_read_input(&self) -> bool {
        self.reading == Reading::Open && !self.blocked && self.their_close.is_none()
    }

    /// Reads what the input has and sends each whole line; at its end, the rest and the close.
    fn send_input(&mut self) -> Result<(), ClientError> {
        let Some(fd) = self.source.fd() else {
            return Ok(());
        };
        let mut chunk = [0u8; 8192];
        let n = match rustix::io::read(fd, &mut chunk) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => return Ok(()),
            Err(e) => {
                return Err(ClientError::Network(format!("reading the input: {e}")));
            }
        };
        if n == 0 {
            if !self.line.is_empty() {
                let last = std::mem::take(&mut self.line);
                self.send(last)?;
            }
            self.end_input();
            return self.flush();
        }
        for &b in &chunk[..n] {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.send(line)?;
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    let long = std::mem::take(&mut self.line);
                    self.send(long)?;
                }
            }
        }
        self.flush()
    }

    /// Queues one message: text when it is UTF-8, binary otherwise.
    fn send(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        let message = match String::from_utf8(bytes) {
            Ok(text) => Message::text(text),
            Err(e) => Message::binary(e.into_bytes()),
        };
        let written = self.ws.write(message);
        self.queued(written, false)
    }

    /// The input is over: send our close (1000).
    fn end_input(&mut self) {
        self.reading = Reading::Done;
        if self.closing_since.is_none() {
            self.closing_since = Some(Instant::now());
            self.we_closed = true;
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            // Queued whatever the socket says; `flush` and the loop report a failure.
            let _ = self.ws.close(Some(frame));
        }
    }

    /// Writes what is queued, as far as the socket takes it.
    fn flush(&mut self) -> Result<(), ClientError> {
        let flushed = self.ws.flush();
        self.queued(flushed, true)
    }

    /// A write's or a `flush`'s result: done, or queued behind a full socket (`blocked`), or the
    /// end. Only a flush that wrote everything (`flushed`) unblocks: a write that only queued
    /// a frame (a ping, a line) says nothing of the socket, and must not restart the write
    /// deadline.
    fn queued(
        &mut self,
        result: tungstenite::Result<()>,
        flushed: bool,
    ) -> Result<(), ClientError> {
        match result {
            Ok(()) => {
                if flushed {
                    self.blocked = false;
                }
                Ok(())
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                if !self.blocked {
                    self.writable = Instant::now();
                }
                self.blocked = true;
                Ok(())
            }
            // The server closed first: its close frame, read next, says why.
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Ok(()),
            Err(WsError::Protocol(_)) if self.their_close.is_some() => Ok(()),
            Err(e) => Err(ClientError::Network(format!("sending: {e}"))),
        }
    }
}
