//! The client's loop, once the server said 101: one `poll(2)` over the socket (non-blocking) and
//! the input. What arrives is printed, one message per line; each input line is sent as a message
//! (text when it is UTF-8, binary otherwise). Input is read only while the socket takes what was
//! queued, so a server that stops reading stops the client reading, and memory stays bounded.
//! The end of the input sends a close (1000); the server's answer, or its own close, ends the run.

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
    };
    loop {
        if let Some(ending) = pump.receive() {
            return ending;
        }
        pump.flush()?;
        if pump
            .closing_since
            .is_some_and(|t| t.elapsed() >= CLOSE_WAIT)
        {
            if pump.their_close.is_some() {
                return pump.ending();
            }
            return Err(ClientError::Network(format!(
                "the server did not answer the close within {} s",
                CLOSE_WAIT.as_secs()
            )));
        }
        let (socket_ready, input_ready) = pump.wait().map_err(lost)?;
        if input_ready {
            pump.send_input()?;
        }
        if socket_ready && pump.blocked {
            pump.flush()?;
        }
    }
}

impl Pump {
    /// Reads and prints every message the socket holds; `Some` once the connection has ended.
    fn receive(&mut self) -> Option<Result<(), ClientError>> {
        loop {
            match self.ws.read() {
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
    /// read). Returns which are ready.
    fn wait(&self) -> io::Result<(bool, bool)> {
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
        let timeout = self
            .closing_since
            .map(|t| CLOSE_WAIT.saturating_sub(t.elapsed()))
            .and_then(|left| Timespec::try_from(left).ok());
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok((false, false)),
            Err(e) => return Err(e.into()),
        }
        let ready = |fd: &PollFd<'_>| !fd.revents().is_empty();
        Ok((ready(&fds[0]), fds.get(1).is_some_and(ready)))
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
        self.queued(written)
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
        self.queued(flushed)
    }

    /// A write's result: done, or queued behind a full socket (`blocked`), or the end.
    fn queued(&mut self, result: tungstenite::Result<()>) -> Result<(), ClientError> {
        match result {
            Ok(()) => {
                self.blocked = false;
                Ok(())
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
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
