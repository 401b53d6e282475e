//! What a client asks of a channel's history on its upgrade URL ([`recall`]): `?last=N`, the
//! latest N broadcasts kept, or `?since=EPOCH:POS`, every broadcast after the position it saw
//! last. Read only on channels that keep a history; elsewhere these keys are the app's.

use std::fmt;

/// The longest epoch a client may name: the server's are 16 hex digits.
pub const MAX_EPOCH_LEN: usize = 32;

/// A client's history request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Recall {
    /// Live broadcasts only: what every client gets without `last` or `since`.
    #[default]
    Live,
    /// The latest `n` kept broadcasts (at most the channel's `history_size`), then live ones.
    Last(usize),
    /// Every kept broadcast after `pos` of `epoch`, then live ones; or a `reset` when the history
    /// no longer reaches back that far.
    Since { epoch: String, pos: u64 },
}

/// Why a history request is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecallError {
    /// `last` is not a whole number from 1.
    Last,
    /// `since` is not `EPOCH:POS` (hex digits, a colon, a whole number).
    Since,
    /// `last` and `since` together, or either twice.
    Twice,
    /// `since` without the `wsgate.v1.json` subprotocol: a plain client never saw a position.
    Plain,
}

impl fmt::Display for RecallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecallError::Last => "last must be a whole number from 1",
            RecallError::Since => "since must be EPOCH:POS as the envelope gave them",
            RecallError::Twice => "at most one of last and since, once",
            RecallError::Plain => "since needs the wsgate.v1.json subprotocol",
        })
    }
}

/// The history request in `query` (`last`, `since`; other keys are ignored). `envelope`: the
/// client is answered with the `wsgate.v1.json` subprotocol.
///
/// # Errors
/// [`RecallError`] for a value that is not what it should be.
pub fn recall(query: Option<&str>, envelope: bool) -> Result<Recall, RecallError> {
    let mut found = Recall::Live;
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let asked = match key {
            "last" => Recall::Last(
                whole(value)
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n >= 1)
                    .ok_or(RecallError::Last)?,
            ),
            "since" => {
                let (epoch, pos) = value.split_once(':').ok_or(RecallError::Since)?;
                let hex = !epoch.is_empty()
                    && epoch.len() <= MAX_EPOCH_LEN
                    && epoch.bytes().all(|b| b.is_ascii_hexdigit());
                let pos = whole(pos).filter(|_| hex).ok_or(RecallError::Since)?;
                if !envelope {
                    return Err(RecallError::Plain);
                }
                Recall::Since {
                    epoch: epoch.to_ascii_lowercase(),
                    pos,
                }
            }
            _ => continue,
        };
        if found != Recall::Live {
            return Err(RecallError::Twice);
        }
        found = asked;
    }
    Ok(found)
}

/// A whole number in plain decimal digits (no sign, no spaces), that fits a u64.
fn whole(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_requests_are_read_from_the_query_and_bad_ones_refused() {
        let since = |e: &str, p| Recall::Since {
            epoch: e.to_string(),
            pos: p,
        };
        let cases: &[(Option<&str>, bool, Result<Recall, RecallError>)] = &[
            (None, false, Ok(Recall::Live)),
            (Some("token=abc&x"), false, Ok(Recall::Live)),
            (Some("last=1"), false, Ok(Recall::Last(1))),
            (Some("token=t&last=20"), true, Ok(Recall::Last(20))),
            (Some("since=00ff:7"), true, Ok(since("00ff", 7))),
            (Some("since=00FF:0&token=t"), true, Ok(since("00ff", 0))),
            (Some("since=00ff:7"), false, Err(RecallError::Plain)),
            (Some("last=0"), true, Err(RecallError::Last)),
            (Some("last=-1"), true, Err(RecallError::Last)),
            (Some("last=+1"), true, Err(RecallError::Last)),
            (Some("last="), true, Err(RecallError::Last)),
            (
                Some("last=99999999999999999999999"),
                true,
                Err(RecallError::Last),
            ),
            (Some("since=7"), true, Err(RecallError::Since)),
            (Some("since=:7"), true, Err(RecallError::Since)),
            (Some("since=xyz:7"), true, Err(RecallError::Since)),
            (Some("since=ab:"), true, Err(RecallError::Since)),
            (Some("since=ab:1:2"), true, Err(RecallError::Since)),
            (
                Some(&*format!("since={}:1", "a".repeat(33))),
                true,
                Err(RecallError::Since),
            ),
            (Some("last=1&last=2"), true, Err(RecallError::Twice)),
            (Some("last=1&since=ab:2"), true, Err(RecallError::Twice)),
        ];
        for (query, envelope, want) in cases {
            assert_eq!(&recall(*query, *envelope), want, "{query:?} {envelope}");
        }
    }
}
