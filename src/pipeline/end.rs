//! How a connection after its upgrade ends ([`End`], for its close and its log line), and how a
//! tungstenite error maps to that end ([`classify`]): shared by the connection loop, the relay
//! and the inbound path.

use std::fmt;
use std::io;

use tungstenite::Error as WsError;
use tungstenite::error::{CapacityError, ProtocolError};

use crate::pipeline::frames::FrameLimit;

/// How a connection ended, for the close log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The peer started the close handshake with this code (1005: no code given).
    PeerClosed(u16),
    /// We closed with this code and reason.
    Closed(u16, &'static str),
    /// The transport failed or the peer vanished without a close frame.
    Dropped(String),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::PeerClosed(c) => write!(f, "code={c} by=peer"),
            End::Closed(c, why) => write!(f, "code={c} by=server reason=\"{why}\""),
            End::Dropped(why) => write!(f, "code=1006 reason=\"{why}\""),
        }
    }
}

/// Maps a tungstenite error after the upgrade to how the connection ends (also the client side
/// of a proxied connection, [`crate::pipeline::relay`]).
pub(crate) fn classify(e: WsError) -> End {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => End::PeerClosed(1005),
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            End::Closed(1009, "message too big")
        }
        WsError::Capacity(CapacityError::TooManyHeaders) => End::Closed(1002, "protocol error"),
        WsError::Utf8(_) => End::Closed(1007, "invalid utf-8"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            End::Dropped("reset without closing handshake".into())
        }
        WsError::Protocol(ProtocolError::InvalidCloseSequence) => {
            End::Closed(1002, "invalid close sequence")
        }
        WsError::Protocol(_) => End::Closed(1002, "protocol error"),
        WsError::Io(e) if FrameLimit::from_io(&e) == Some(FrameLimit::MemoryFull) => {
            End::Closed(1009, FrameLimit::MemoryFull.reason())
        }
        WsError::Io(e) if FrameLimit::from_io(&e).is_some() => End::Closed(
            1008,
            FrameLimit::from_io(&e).map_or("policy violation", FrameLimit::reason),
        ),
        WsError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            End::Dropped("closed without close_notify".into())
        }
        WsError::Io(e) => End::Dropped(e.to_string()),
        WsError::AttackAttempt => End::Closed(1008, "policy violation"),
        other => End::Dropped(other.to_string()),
    }
}
