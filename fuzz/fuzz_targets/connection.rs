//! A whole connection after the upgrade, over in-memory bytes: the client's frames go through
//! `upgrade::Replay` with the server's `frames::FrameWatch` (fragment cap, message deadline) into
//! a server-role `tungstenite::WebSocket` configured with the server's own `WebSocketConfig`
//! (small limits here, so the fuzzer reaches them); data messages are echoed, and the connection
//! is closed the way `connection.rs` closes it. Also `FrameWatch::observe` alone, with the input
//! split at fuzzer-chosen points. Never a panic; the watch never reserves memory; every data
//! frame is charged to a memory cap as the server charges it, and given back as the server gives
//! it back, so the count ends at no more than the largest frame the read buffer still reserves.
#![no_main]

use std::io::{self, Read, Write};
use std::path::Path;
use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};
use wsgate::config::Config;
use wsgate::pipeline::frames::FrameWatch;
use wsgate::memory::{Budget, ReaderKey};
use wsgate::pipeline::upgrade::Replay;

/// The server's WebSocket settings for a config with small limits.
fn ws_config() -> (WebSocketConfig, usize, Duration, usize, usize) {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let text = format!(
            "[tls]\nself_signed = true\ncert = /nonexistent/c.pem\nkey = /nonexistent/k.pem\n\
             [auth]\nusers_file = {}/Cargo.toml\n\
             [limits]\nmax_message_size = 4KiB\nmax_frame_size = 1KiB\nmax_fragments = 8\n\
             read_buffer_size = 4KiB\nwrite_buffer_size = 4KiB\nmax_write_buffer_size = 16KiB\n\
             [channel:/echo]\nmode = echo\n",
            env!("CARGO_MANIFEST_DIR")
        );
        Config::parse(&text, Path::new("/nonexistent-wsgate-fuzz/wsgate.ini")).expect("fuzz config")
    });
    (
        config.limits.ws.websocket_config(),
        config.limits.max_fragments.get(),
        config.limits.message_timeout,
        config.limits.ws.max_frame_size.get(),
        config.limits.ws.read_buffer_size.get(),
    )
}

/// The client's bytes in, a bounded sink out (a peer that stops reading: `WouldBlock`).
struct Peer<'a> {
    input: &'a [u8],
    output: usize,
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.len().min(buf.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.output > 1 << 20 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.output += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let (config, max_fragments, message_timeout, max_frame, read_base) = ws_config();
    let now = Instant::now();

    // FrameWatch alone, fed in pieces whose sizes the first byte picks.
    let (step, rest) = match data.split_first() {
        Some((&s, rest)) => (usize::from(s).max(1), rest),
        None => (1, data),
    };
    let mut watch = FrameWatch::new(max_fragments, message_timeout);
    for chunk in rest.chunks(step) {
        if watch.observe(chunk, now).is_err() {
            break;
        }
    }

    // The connection: Replay + FrameWatch + server-role WebSocket, echoing.
    let mut replay = Replay::new(
        Vec::new(),
        0,
        Peer {
            input: rest,
            output: 0,
        },
    );
    let budget = Arc::new(Budget::new(NonZeroUsize::new(64 << 20)));
    let reader = budget.reader(ReaderKey::User("fuzz".into()), Box::new(|| {}));
    replay.watch_frames(
        FrameWatch::new(max_fragments, message_timeout),
        reader,
        read_base,
    );
    let mut ws = WebSocket::from_raw_socket(replay, Role::Server, Some(config));
    let mut messages = 0;
    let close = loop {
        match ws.read() {
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                ws.get_mut().settle(msg.len());
                messages += 1;
                if messages > 10_000 || ws.send(msg).is_err() {
                    break None;
                }
            }
            Ok(Message::Close(_)) => break None,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break None,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                break None;
            }
            Err(_) => break Some(1002),
        }
    };
    if let Some(code) = close {
        let _ = ws.close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "protocol error".into(),
        }));
        let _ = ws.flush();
    }
    // What stays charged is bounded by the limits, however the bytes came: the frames received
    // of one unfinished message (at most max_message_size and one frame).
    let max_message = config.max_message_size.unwrap_or(usize::MAX);
    assert!(
        budget.counted() <= max_message + max_frame,
        "{} bytes still charged",
        budget.counted()
    );
});
