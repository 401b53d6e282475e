//! Every close wsgate sends after the upgrade: its code and reason text as one value
//! ([`CloseReason`]), and [`CloseReason::ALL`], the list docs/security.md's close-code table is
//! held to.

/// A close frame wsgate sends: the code and the reason text that goes with it. Made only from
/// the constants below, or [`CloseReason::backend`] for a code a proxied backend sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    code: u16,
    reason: &'static str,
}

impl CloseReason {
    const fn new(code: u16, reason: &'static str) -> CloseReason {
        CloseReason { code, reason }
    }

    /// The server is shutting down and this member has nothing left to deliver.
    pub const GOING_AWAY: CloseReason = CloseReason::new(1001, "going away");
    /// The peer was silent past `idle_timeout` (also what a proxied backend gets then).
    pub const IDLE_TIMEOUT: CloseReason = CloseReason::new(1001, "idle timeout");
    /// The client left a proxied connection: what its backend gets.
    pub const CLIENT_GONE: CloseReason = CloseReason::new(1001, "client gone");
    /// The client broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: CloseReason = CloseReason::new(1002, "protocol error");
    /// The client sent data after its close frame.
    pub const INVALID_CLOSE_SEQUENCE: CloseReason =
        CloseReason::new(1002, "invalid close sequence");
    /// A text message that is not UTF-8.
    pub const INVALID_UTF8: CloseReason = CloseReason::new(1007, "invalid utf-8");
    /// tungstenite's attack guard (a flood of tiny frames).
    pub const POLICY_VIOLATION: CloseReason = CloseReason::new(1008, "policy violation");
    /// More than `max_fragments` frames in one message.
    pub const TOO_MANY_FRAGMENTS: CloseReason = CloseReason::new(1008, "too many fragments");
    /// A fragmented message took longer than `message_timeout`.
    pub const MESSAGE_TOO_SLOW: CloseReason = CloseReason::new(1008, "message too slow");
    /// A subscriber whose outbox or backlog was full (`slow_consumer = disconnect`).
    pub const SLOW_CONSUMER: CloseReason = CloseReason::new(1008, "slow consumer");
    /// A message from a client without publish rights (`on_publish_denied = close`).
    pub const PUBLISH_NOT_ALLOWED: CloseReason = CloseReason::new(1008, "publish not allowed");
    /// A message over the channel's rates (`on_rate_limit = close`).
    pub const RATE_LIMIT: CloseReason = CloseReason::new(1008, "rate limit");
    /// A reload found the credential no longer proves the user.
    pub const CREDENTIAL_REVOKED: CloseReason = CloseReason::new(1008, "credential revoked");
    /// A reload found the path or the roles no longer let the connection in.
    pub const ACCESS_REVOKED: CloseReason = CloseReason::new(1008, "access revoked");
    /// An admin ended the connection (`POST /disconnect`).
    pub const DISCONNECTED_BY_ADMIN: CloseReason = CloseReason::new(1008, "disconnected by admin");
    /// A message over `max_message_size` or a frame over `max_frame_size`.
    pub const MESSAGE_TOO_BIG: CloseReason = CloseReason::new(1009, "message too big");
    /// The read share of the memory cap had no room and this connection held the most of it.
    pub const MEMORY_LIMIT: CloseReason = CloseReason::new(1009, "memory limit reached");
    /// An echo that did not fit the memory cap.
    pub const TRY_AGAIN_LATER: CloseReason = CloseReason::new(1013, "try again later");
    /// A proxied backend closed without a code.
    pub const BACKEND_CLOSED: CloseReason = CloseReason::new(1000, "backend closed");
    /// A proxied backend's connection ended under the relay without its close.
    pub const BACKEND_CLOSED_ABRUPTLY: CloseReason = CloseReason::new(1011, "backend closed");
    /// A proxied backend stopped reading past `write_timeout`.
    pub const BACKEND_NOT_READING: CloseReason = CloseReason::new(1011, "backend not reading");
    /// A proxied backend was silent past `idle_timeout`.
    pub const BACKEND_IDLE_TIMEOUT: CloseReason = CloseReason::new(1011, "backend idle timeout");
    /// A proxied backend broke the protocol, or closed with a code no endpoint may send.
    pub const BACKEND_PROTOCOL_ERROR: CloseReason =
        CloseReason::new(1011, "backend protocol error");
    /// A proxied backend sent a message over the channel's `max_message_size`.
    pub const BACKEND_MESSAGE_TOO_BIG: CloseReason =
        CloseReason::new(1011, "backend message too big");
    /// A proxied backend vanished without a close (crashed, reset).
    pub const BACKEND_VANISHED: CloseReason = CloseReason::new(1011, "backend vanished");
    /// A proxied backend's side failed some other way.
    pub const BACKEND_FAILED: CloseReason = CloseReason::new(1011, "backend failed");

    /// Every close above: docs/security.md lists each in its close-code table.
    pub const ALL: &'static [CloseReason] = &[
        CloseReason::GOING_AWAY,
        CloseReason::IDLE_TIMEOUT,
        CloseReason::CLIENT_GONE,
        CloseReason::PROTOCOL_ERROR,
        CloseReason::INVALID_CLOSE_SEQUENCE,
        CloseReason::INVALID_UTF8,
        CloseReason::POLICY_VIOLATION,
        CloseReason::TOO_MANY_FRAGMENTS,
        CloseReason::MESSAGE_TOO_SLOW,
        CloseReason::SLOW_CONSUMER,
        CloseReason::PUBLISH_NOT_ALLOWED,
        CloseReason::RATE_LIMIT,
        CloseReason::CREDENTIAL_REVOKED,
        CloseReason::ACCESS_REVOKED,
        CloseReason::DISCONNECTED_BY_ADMIN,
        CloseReason::MESSAGE_TOO_BIG,
        CloseReason::MEMORY_LIMIT,
        CloseReason::TRY_AGAIN_LATER,
        CloseReason::BACKEND_CLOSED,
        CloseReason::BACKEND_CLOSED_ABRUPTLY,
        CloseReason::BACKEND_NOT_READING,
        CloseReason::BACKEND_IDLE_TIMEOUT,
        CloseReason::BACKEND_PROTOCOL_ERROR,
        CloseReason::BACKEND_MESSAGE_TOO_BIG,
        CloseReason::BACKEND_VANISHED,
        CloseReason::BACKEND_FAILED,
    ];

    /// The reason text that goes with a code a proxied backend closed with, passed on to its
    /// client as it is.
    pub const BACKEND_REASON: &'static str = "backend";

    /// A proxied backend's own close `code`, passed on to the client with
    /// [`CloseReason::BACKEND_REASON`]. The caller has checked that an endpoint may send it.
    #[must_use]
    pub const fn backend(code: u16) -> CloseReason {
        CloseReason::new(code, CloseReason::BACKEND_REASON)
    }

    /// The close code.
    #[must_use]
    pub const fn code(self) -> u16 {
        self.code
    }

    /// The reason text sent with the code.
    #[must_use]
    pub const fn reason(self) -> &'static str {
        self.reason
    }

    /// Whether this close waits for the peer's reply: after a polite close (1000, 1001, 1008)
    /// the peer is still worth hearing; after a protocol violation or a failure (1002, 1007,
    /// 1009, 1011…) nobody reads what a flooding peer still sends.
    #[must_use]
    pub const fn waits_for_reply(self) -> bool {
        matches!(self.code, 1000 | 1001 | 1008)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of docs/security.md's close-code table: `| 1008 | `slow consumer` | … |`.
    fn documented() -> Vec<(u16, String)> {
        let docs = include_str!("../../docs/security.md");
        let table = docs
            .split("## Close codes")
            .nth(1)
            .expect("docs/security.md has a `## Close codes` section");
        table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|row| {
                let mut cells = row.split('|').map(str::trim).skip(1);
                let code = cells.next()?.parse().ok()?;
                let reason = cells.next()?.trim_matches('`').to_owned();
                Some((code, reason))
            })
            .collect()
    }

    #[test]
    fn the_docs_close_code_table_lists_every_close_reason_and_nothing_else() {
        let docs = documented();
        let ours: Vec<(u16, String)> = CloseReason::ALL
            .iter()
            .map(|c| (c.code(), c.reason().to_owned()))
            .collect();
        for c in &ours {
            assert!(
                docs.contains(c),
                "docs/security.md's close codes lack {c:?}"
            );
        }
        for d in &docs {
            assert!(
                ours.contains(d),
                "docs/security.md lists {d:?}, which no close sends"
            );
        }
        assert_eq!(docs.len(), ours.len(), "a close is listed twice");
    }

    #[test]
    fn no_two_close_reasons_are_the_same() {
        for (i, a) in CloseReason::ALL.iter().enumerate() {
            assert!(!CloseReason::ALL[i + 1..].contains(a), "{a:?} twice");
        }
    }
}
