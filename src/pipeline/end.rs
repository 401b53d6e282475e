//! How a connection after its upgrade ends ([`End`], for its close and its log line), and how a
//! tungstenite error maps to that end ([`classify`]): shared by the connection loop, the relay
//! and the inbound path.

use std::fmt;
use std::io;

use tungstenite::Error as WsError;
use tungstenite::error::{CapacityError, ProtocolError};

use crate::pipeline::frames::FrameLimit;
use crate::policy::CloseReason;

/// How a connection ended, for the close log line. Only [`End::Closed`] is a close wsgate sends,
/// so only it is a [`CloseReason`] (held to docs/security.md's table); the peer's code is
/// whatever the peer chose, and a dropped connection had no close at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The peer started the close handshake with this code (1005: no code given).
    PeerClosed(u16),
    /// We closed with this code and reason.
    Closed(CloseReason),
    /// The transport failed or the peer vanished without a close frame.
    Dropped(String),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::PeerClosed(c) => write!(f, "code={c} by=peer"),
            End::Closed(c) => write!(f, "code={} by=server reason=\"{}\"", c.code(), c.reason()),
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
            End::Closed(CloseReason::MESSAGE_TOO_BIG)
        }
        WsError::Capacity(CapacityError::TooManyHeaders) => {
            End::Closed(CloseReason::PROTOCOL_ERROR)
        }
        WsError::Utf8(_) => End::Closed(CloseReason::INVALID_UTF8),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            End::Dropped("reset without closing handshake".into())
        }
        WsError::Protocol(ProtocolError::InvalidCloseSequence) => {
            End::Closed(CloseReason::INVALID_CLOSE_SEQUENCE)
        }
        WsError::Protocol(_) => End::Closed(CloseReason::PROTOCOL_ERROR),
        WsError::Io(e) if FrameLimit::from_io(&e).is_some() => End::Closed(
            FrameLimit::from_io(&e).map_or(CloseReason::POLICY_VIOLATION, FrameLimit::reason),
        ),
        WsError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            End::Dropped("closed without close_notify".into())
        }
        WsError::Io(e) => End::Dropped(e.to_string()),
        WsError::AttackAttempt => End::Closed(CloseReason::POLICY_VIOLATION),
        other => End::Dropped(other.to_string()),
    }
}
