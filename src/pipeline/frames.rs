//! Follows client frame boundaries in the raw byte stream after the upgrade, to bound what
//! tungstenite does not: how many frames one message may be split into and how long it may take.
//! It parses only frame headers (2 to 14 bytes) and skips payloads by count: constant memory,
//! a few instructions per frame. Protocol errors are left to tungstenite. It also counts the
//! payload bytes of data frames as they arrive — what tungstenite really buffers and assembles,
//! never what a header declares: what the connection charges to the read share of the memory
//! cap for a message being read.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use crate::policy::CloseReason;

/// Why a sender was stopped (close 1008; 1009 when the read share closes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLimit {
    /// More than `max_fragments` frames in one message.
    TooManyFragments,
    /// A fragmented message took longer than `message_timeout`.
    TooSlow,
    /// The read share of the memory cap had no room, and this connection held the most of it
    /// (close 1009: its message in progress is too big to be read now).
    MemoryFull,
}

impl FrameLimit {
    /// The close this limit ends the connection with.
    pub fn reason(self) -> CloseReason {
        match self {
            FrameLimit::TooManyFragments => CloseReason::TOO_MANY_FRAGMENTS,
            FrameLimit::TooSlow => CloseReason::MESSAGE_TOO_SLOW,
            FrameLimit::MemoryFull => CloseReason::MEMORY_LIMIT,
        }
    }

    /// The `io::Error` a read returns for this limit; [`FrameLimit::from_io`] recognises it.
    pub fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// The limit an I/O error carries, if it is one of ours.
    pub fn from_io(e: &io::Error) -> Option<FrameLimit> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<FrameLimit>())
            .copied()
    }
}

impl fmt::Display for FrameLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason().reason())
    }
}

impl std::error::Error for FrameLimit {}

/// The frame-boundary state machine for one connection's incoming bytes.
#[derive(Debug, Clone)]
pub struct FrameWatch {
    max_fragments: usize,
    message_timeout: Duration,
    header: [u8; 14],
    header_len: usize,
    /// Header bytes needed once the first two are known.
    header_need: usize,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// Frames so far of the message in progress, and when its first frame's header arrived.
    fragments: usize,
    started: Option<Instant>,
    /// Whether the payload being skipped is a data frame's (text, binary, continuation).
    in_data: bool,
    /// Payload bytes of the current data frame received so far.
    frame_received: u64,
    /// Data payload bytes received since [`FrameWatch::take_received`].
    received: u64,
    /// The most payload bytes one data frame has had received.
    largest: u64,
}

impl FrameWatch {
    pub fn new(max_fragments: usize, message_timeout: Duration) -> FrameWatch {
        FrameWatch {
            in_data: false,
            frame_received: 0,
            received: 0,
            largest: 0,
            max_fragments,
            message_timeout,
            header: [0; 14],
            header_len: 0,
            header_need: 2,
            skip: 0,
            fragments: 0,
            started: None,
        }
    }

    /// Payload bytes of data frames (text, binary, continuation) received since the last call.
    pub fn take_received(&mut self) -> u64 {
        std::mem::take(&mut self.received)
    }

    /// The most payload bytes one data frame has had received so far: tungstenite's read buffer
    /// holds a frame whole and keeps the capacity it grew to (it reserves what the header
    /// declares, but only the bytes written into it take memory).
    pub fn largest(&self) -> u64 {
        self.largest
    }

    /// When the fragmented message in progress must be complete, if one is in progress.
    pub fn message_deadline(&self) -> Option<Instant> {
        self.started.map(|t| t + self.message_timeout)
    }

    /// Follows `data`, the next bytes the client sent.
    ///
    /// # Errors
    /// The [`FrameLimit`] the bytes break.
    pub fn observe(&mut self, mut data: &[u8], now: Instant) -> Result<(), FrameLimit> {
        while !data.is_empty() {
            if self.skip > 0 {
                let take = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.skip -= take as u64;
                data = &data[take..];
                if self.in_data {
                    self.received += take as u64;
                    self.frame_received += take as u64;
                    self.largest = self.largest.max(self.frame_received);
                }
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if self.header_len == 2 {
                let len7 = self.header[1] & 0x7f;
                let ext = match len7 {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
                self.header_need = 2 + ext + mask;
            }
            if self.header_len == self.header_need {
                self.frame(now)?;
            }
        }
        if self.message_deadline().is_some_and(|d| now > d) {
            return Err(FrameLimit::TooSlow);
        }
        Ok(())
    }

    /// A whole header has arrived.
    fn frame(&mut self, now: Instant) -> Result<(), FrameLimit> {
        let fin = self.header[0] & 0x80 != 0;
        let opcode = self.header[0] & 0x0f;
        let len7 = self.header[1] & 0x7f;
        self.skip = match len7 {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        self.header_len = 0;
        self.header_need = 2;
        self.in_data = opcode <= 2;
        self.frame_received = 0;
        match opcode {
            // A text or binary frame starts a message; without FIN, more frames follow.
            1 | 2 if !fin => {
                self.fragments = 1;
                self.started = Some(now);
            }
            0 if self.started.is_some() => {
                self.fragments += 1;
                if self.fragments > self.max_fragments {
                    return Err(FrameLimit::TooManyFragments);
                }
                if fin {
                    self.fragments = 0;
                    self.started = None;
                }
            }
            // Whole messages, control frames (allowed between fragments) and protocol errors,
            // which tungstenite answers.
            _ => {}
        }
        Ok(())
    }
}

/// rustls' default send buffer limit.
const RUSTLS_SEND_BUFFER: usize = 64 * 1024;

/// The rustls send buffer limit of a broadcast subscriber whose `max_message_size` is
/// `max_message`: large enough that an empty buffer takes the largest frame it is sent in one
/// write, so a frame the hub encoded once for every subscriber is never split by a full socket.
/// The frame goes to rustls, which encrypts it into records it frees as they are sent, rather
/// than through tungstenite's write buffer, a `Vec` that would keep the capacity of the largest
/// message for the connection's life (memory outside any cap). What waits in it is charged to
/// the memory cap like the write buffer.
pub fn send_buffer_for(max_message: usize) -> usize {
    RUSTLS_SEND_BUFFER.max(max_message.saturating_add(14))
}

/// A data message's payload bytes, also when tungstenite handed it back as a frame (a held-back
/// message): what was charged for it to the memory cap.
pub fn payload_len(msg: &tungstenite::Message) -> usize {
    match msg {
        tungstenite::Message::Frame(frame) => frame.payload().len(),
        _ => msg.len(),
    }
}

/// How many bytes `msg` takes in a write buffer as one unmasked server frame (a held-back
/// message comes back from tungstenite as the frame itself).
pub fn server_frame_len(msg: &tungstenite::Message) -> usize {
    let payload = match msg {
        tungstenite::Message::Frame(frame) => return frame.len(),
        // The close code's two bytes come before the reason.
        tungstenite::Message::Close(Some(_)) => msg.len() + 2,
        _ => msg.len(),
    };
    let extended_length = match payload {
        0..=125 => 0,
        126..=0xffff => 2,
        _ => 8,
    };
    2 + extended_length + payload
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_frame_len_counts_the_header_tungstenite_writes() {
        use tungstenite::Message;
        for n in [0, 125, 126, 0xffff, 0x10000] {
            let msg = Message::binary(vec![0u8; n]);
            let frame = tungstenite::protocol::frame::Frame::message(
                vec![0u8; n],
                tungstenite::protocol::frame::coding::OpCode::Data(
                    tungstenite::protocol::frame::coding::Data::Binary,
                ),
                true,
            );
            assert_eq!(super::server_frame_len(&msg), frame.len(), "{n}");
            assert_eq!(
                super::server_frame_len(&Message::Frame(frame.clone())),
                frame.len()
            );
        }
    }

    #[test]
    fn the_largest_frame_a_subscriber_is_sent_fits_its_send_buffer_whole() {
        for max in [1, 16 * 1024, 64 * 1024, 1 << 20] {
            let frame = super::server_frame_len(&tungstenite::Message::binary(vec![0u8; max]));
            assert!(frame <= super::send_buffer_for(max), "{max}");
        }
    }

    use super::*;

    /// A masked client frame header for `len` payload bytes (payload zeros follow).
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(std::iter::repeat_n(0u8, len));
        out
    }

    #[test]
    fn counts_fragments_up_to_the_limit_and_one_over() {
        let now = Instant::now();
        let mut w = FrameWatch::new(3, Duration::from_secs(10));
        let mut bytes = frame(false, 1, 5);
        bytes.extend(frame(false, 0, 0));
        bytes.extend(frame(true, 0, 300));
        assert_eq!(w.observe(&bytes, now), Ok(()), "3 frames are allowed");
        assert_eq!(w.message_deadline(), None);
        let mut over = frame(false, 2, 1);
        for _ in 0..3 {
            over.extend(frame(false, 0, 1));
        }
        assert_eq!(w.observe(&over, now), Err(FrameLimit::TooManyFragments));
    }

    #[test]
    fn byte_by_byte_and_control_frames_between_fragments() {
        let now = Instant::now();
        let mut w = FrameWatch::new(2, Duration::from_secs(10));
        let mut bytes = frame(false, 1, 70_000);
        bytes.extend(frame(true, 9, 4)); // a ping in the middle
        bytes.extend(frame(true, 0, 2));
        bytes.extend(frame(true, 1, 3)); // a whole message after
        for b in &bytes {
            assert_eq!(w.observe(std::slice::from_ref(b), now), Ok(()));
        }
        assert_eq!(w.message_deadline(), None);
    }

    #[test]
    fn a_fragmented_message_has_a_deadline() {
        let t0 = Instant::now();
        let mut w = FrameWatch::new(100, Duration::from_secs(2));
        assert_eq!(w.observe(&frame(false, 1, 1), t0), Ok(()));
        assert_eq!(w.message_deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(
            w.observe(&frame(false, 0, 1), t0 + Duration::from_secs(1)),
            Ok(())
        );
        assert_eq!(
            w.observe(&frame(false, 0, 1), t0 + Duration::from_secs(3)),
            Err(FrameLimit::TooSlow)
        );
    }

    #[test]
    fn data_frames_count_the_payload_received_never_what_they_declare() {
        let now = Instant::now();
        let mut w = FrameWatch::new(8, Duration::from_secs(10));
        let mut bytes = frame(false, 2, 300);
        bytes.extend(frame(true, 9, 4)); // a ping: not data
        bytes.extend(frame(true, 0, 200));
        assert_eq!(w.observe(&bytes, now), Ok(()));
        assert_eq!(w.take_received(), 500);
        assert_eq!(w.take_received(), 0);
        // A header declaring 700 with 100 of its bytes: 100 received.
        let big = frame(true, 1, 700);
        assert_eq!(w.observe(&big[..8 + 100], now), Ok(()));
        assert_eq!((w.take_received(), w.largest()), (100, 300));
        assert_eq!(w.observe(&big[8 + 100..], now), Ok(()));
        assert_eq!((w.take_received(), w.largest()), (600, 700));
        // A header declaring 2^62 bytes with 10 of them: 10.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        huge.extend_from_slice(&[0; 10]);
        let mut w = FrameWatch::new(8, Duration::from_secs(10));
        assert_eq!(w.observe(&huge, now), Ok(()));
        assert_eq!((w.take_received(), w.largest()), (10, 10));
    }

    #[test]
    fn limits_travel_through_io_errors() {
        let e = FrameLimit::TooSlow.into_io();
        assert_eq!(FrameLimit::from_io(&e), Some(FrameLimit::TooSlow));
        assert_eq!(FrameLimit::from_io(&io::Error::other("x")), None);
    }
}
