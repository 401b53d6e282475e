//! The admin thread's loop: one `poll(2)` over the stop fd, the listener and up to
//! `max_connections` client slots on non-blocking sockets. Each client moves from its request
//! head (and a publish body) to the answer and a short linger, within [`FIRST_BYTE`] and
//! [`DEADLINE`]; when every slot is taken a new client evicts the oldest one still sending. What a
//! request means is [`super::routes`]'s; this file only moves bytes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, poll};

use super::answer::Answer;
use super::routes::{Publish, Routed, publish_now, route};
use super::{
    ACCEPT_BACKOFF, AdminState, DEADLINE, ERROR_LOG_EVERY, FIRST_BYTE, LINGER, LINGER_BYTES,
    MAX_HEAD,
};

/// Where one admin client's exchange is.
enum Exchange {
    /// Reading the request head (the bytes so far).
    Reading(Vec<u8>),
    /// Reading a publish body of `need` bytes (the head passed every check).
    Body {
        publish: Publish,
        body: Vec<u8>,
        need: usize,
    },
    /// Writing the answer (`sent` bytes of `out` are out).
    Writing { out: Vec<u8>, sent: usize },
    /// Answer sent and our FIN with it; reading what the client still sends until it closes, so
    /// unread bytes do not turn our close into a reset that destroys the answer.
    Lingering { until: Instant, drained: usize },
}

struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    phase: Exchange,
}

/// What a turn did to a client.
enum Next {
    Stay,
    /// Done, or given up on: drop (close) the socket.
    Drop,
}

impl Client {
    /// When this client is dropped unless it gets further: [`FIRST_BYTE`] while nothing came,
    /// [`DEADLINE`] for the exchange, the linger's own end.
    fn deadline(&self) -> Instant {
        match &self.phase {
            Exchange::Reading(buf) if buf.is_empty() => self.accepted + FIRST_BYTE,
            Exchange::Reading(_) | Exchange::Body { .. } | Exchange::Writing { .. } => {
                self.accepted + DEADLINE
            }
            Exchange::Lingering { until, .. } => *until,
        }
    }

    fn events(&self) -> PollFlags {
        match self.phase {
            Exchange::Writing { .. } => PollFlags::OUT,
            Exchange::Reading(_) | Exchange::Body { .. } | Exchange::Lingering { .. } => {
                PollFlags::IN
            }
        }
    }

    /// Does what the socket allows now without blocking; every loop here ends at `WouldBlock`
    /// or a bound (the head size, the linger budget).
    fn advance(&mut self, state: &AdminState) -> io::Result<Next> {
        // One piece: one loop whose arms are the connection's phases; a phase that ends hands over
        // to the next in the same pass, and the arms share one read chunk.
        let mut chunk = [0u8; 8192];
        loop {
            match &mut self.phase {
                Exchange::Reading(buf) => {
                    let want = (MAX_HEAD + 3)
                        .saturating_sub(buf.len())
                        .clamp(1, chunk.len());
                    let n = match self.stream.read(&mut chunk[..want]) {
                        Ok(0) => return Ok(Next::Drop), // closed before a whole head
                        Ok(n) => n,
                        Err(e) => return would_block(e),
                    };
                    // Look for the end only in the new bytes (and the three before them).
                    let from = buf.len().saturating_sub(3);
                    buf.extend_from_slice(&chunk[..n]);
                    let routed = match buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                        Some(end) if from + end + 4 <= MAX_HEAD => {
                            let head_len = from + end + 4;
                            match route(&buf[..head_len], state, self.peer) {
                                Routed::Body {
                                    publish,
                                    need,
                                    expect_continue,
                                } => {
                                    if expect_continue {
                                        const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
                                        // A fresh socket's buffer takes 25 bytes whole.
                                        if self.stream.write(CONTINUE)? != CONTINUE.len() {
                                            return Ok(Next::Drop);
                                        }
                                    }
                                    let mut body = buf.split_off(head_len);
                                    body.truncate(need);
                                    self.phase = Exchange::Body {
                                        publish,
                                        body,
                                        need,
                                    };
                                    continue;
                                }
                                Routed::Answer(answer) => answer,
                            }
                        }
                        Some(_) => head_too_large(),
                        None if buf.len() >= MAX_HEAD => head_too_large(),
                        None => continue,
                    };
                    self.answer(routed, state);
                }
                Exchange::Body {
                    publish,
                    body,
                    need,
                } => {
                    if body.len() < *need {
                        let want = (*need - body.len()).min(chunk.len());
                        match self.stream.read(&mut chunk[..want]) {
                            Ok(0) => return Ok(Next::Drop), // closed before the whole body
                            Ok(n) => body.extend_from_slice(&chunk[..n]),
                            Err(e) => return would_block(e),
                        }
                    }
                    if body.len() == *need {
                        let answer = publish_now(state, publish, std::mem::take(body), self.peer);
                        self.answer(answer, state);
                    }
                }
                Exchange::Writing { out, sent } => {
                    match self.stream.write(&out[*sent..]) {
                        Ok(0) => return Ok(Next::Drop),
                        Ok(n) => *sent += n,
                        Err(e) => return would_block(e),
                    }
                    if *sent == out.len() {
                        self.stream.shutdown(Shutdown::Write)?;
                        self.phase = Exchange::Lingering {
                            until: (Instant::now() + LINGER).min(self.accepted + DEADLINE),
                            drained: 0,
                        };
                    }
                }
                Exchange::Lingering { drained, .. } => {
                    match self.stream.read(&mut chunk) {
                        Ok(0) => return Ok(Next::Drop),
                        Ok(n) => *drained += n,
                        Err(e) => return would_block(e),
                    }
                    if *drained >= LINGER_BYTES {
                        return Ok(Next::Drop);
                    }
                }
            }
        }
    }
}

impl Client {
    /// Writes `answer` next; a refusal gets its log line.
    fn answer(&mut self, answer: Answer, state: &AdminState) {
        if (400..500).contains(&answer.status) {
            state.log_refusal(self.peer, answer.status, &answer.body);
        }
        self.phase = Exchange::Writing {
            out: answer.into_bytes(),
            sent: 0,
        };
    }
}

/// `WouldBlock` (and `Interrupted`) mean "not now"; anything else ends the client.
fn would_block(e: io::Error) -> io::Result<Next> {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Next::Stay),
        _ => Err(e),
    }
}

fn head_too_large() -> Answer {
    Answer::text(431, "Request Header Fields Too Large", "head too large\n")
}

pub(super) fn run(listener: &TcpListener, state: &AdminState, max: usize) -> io::Result<()> {
    let mut clients: Vec<Client> = Vec::with_capacity(max);
    let mut last_error_log: Option<Instant> = None;
    let mut accept_paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if accept_paused_until.is_some_and(|t| now >= t) {
            accept_paused_until = None;
        }
        let wake_at = clients
            .iter()
            .map(Client::deadline)
            .chain(accept_paused_until)
            .min();
        let timeout = wake_at.map(|t| {
            rustix::event::Timespec::try_from(t.saturating_duration_since(now)).unwrap_or_default()
        });
        let accepting = accept_paused_until.is_none();
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(clients.len() + 2);
        fds.push(PollFd::new(&state.stop, PollFlags::IN));
        fds.push(PollFd::new(
            listener,
            if accepting {
                PollFlags::IN
            } else {
                PollFlags::empty()
            },
        ));
        fds.extend(clients.iter().map(|c| PollFd::new(&c.stream, c.events())));
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if !fds[0].revents().is_empty() {
            return Ok(());
        }
        let ready: Vec<bool> = fds[2..].iter().map(|f| !f.revents().is_empty()).collect();
        let new_clients = accepting && !fds[1].revents().is_empty();
        drop(fds);
        // Serve the clients the socket has news for; drop those past their deadline.
        let now = Instant::now();
        let mut ready = ready.into_iter();
        clients.retain_mut(|c| {
            let next = if ready.next().unwrap_or(false) {
                c.advance(state)
            } else {
                Ok(Next::Stay)
            };
            match next {
                Ok(Next::Stay) if now < c.deadline() => true,
                Ok(Next::Stay) => {
                    log::debug!("admin request from {} failed: deadline expired", c.peer);
                    false
                }
                Ok(Next::Drop) => false,
                Err(e) => {
                    log::debug!("admin request from {} failed: {e}", c.peer);
                    false
                }
            }
        });
        if new_clients {
            if let Err(e) = accept_some(listener, &mut clients, max, state) {
                let now = Instant::now();
                if last_error_log.is_none_or(|t| now.duration_since(t) >= ERROR_LOG_EVERY) {
                    log::error!("admin accept failed: {e}");
                    last_error_log = Some(now);
                }
                // Out of fds or memory: pause accepting rather than spin.
                accept_paused_until = Some(now + ACCEPT_BACKOFF);
            }
        }
    }
}

/// Accepts what is waiting, at most `max` in one turn, evicting the oldest client still reading
/// its request when all `max` places are taken. A new client is served at once: most
/// send their request with the connect.
///
/// # Errors
/// An accept error other than "nothing waiting" or an aborted connection.
fn accept_some(
    listener: &TcpListener,
    clients: &mut Vec<Client>,
    max: usize,
    state: &AdminState,
) -> io::Result<()> {
    for _ in 0..max {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if clients.len() >= max {
            let oldest = clients
                .iter()
                .enumerate()
                .filter(|(_, c)| matches!(c.phase, Exchange::Reading(_) | Exchange::Body { .. }))
                .min_by_key(|(_, c)| c.accepted)
                .or_else(|| clients.iter().enumerate().min_by_key(|(_, c)| c.accepted))
                .map(|(i, _)| i);
            if let Some(i) = oldest {
                let evicted = clients.swap_remove(i);
                log::debug!(
                    "admin request from {} dropped: too many clients",
                    evicted.peer
                );
            }
        }
        let mut client = Client {
            stream,
            peer,
            accepted: Instant::now(),
            phase: Exchange::Reading(Vec::new()),
        };
        match client.advance(state) {
            Ok(Next::Stay) => clients.push(client),
            Ok(Next::Drop) => {}
            Err(e) => log::debug!("admin request from {peer} failed: {e}"),
        }
    }
    Ok(())
}
