//! The upgrade decisions, as pure functions over a parsed request: is this a well-formed WebSocket
//! upgrade, which channel serves the path, is the Origin allowed, who is asking and what may they
//! do. No sockets, no logging, no clocks: credential checks go through the [`Verifier`] trait, and
//! callers turn a [`Reason`] into its HTTP status and log it once.
//!
//! This file holds the refusals ([`Reason`]) and the shared names; [`head`] checks the request
//! head and parses its target, [`offer`] finds the credentials a request offers, [`recall`] the history a client asks for,
//! [`decide`] is
//! the upgrade decision, [`recheck`] a reload's decision for a live connection, [`close`] every
//! close sent after the upgrade ([`CloseReason`]). The rules they
//! apply (roles, Origin patterns, user names) are values in [`crate::rules`].

mod close;
mod decide;
mod head;
mod offer;
mod recall;
mod recheck;

pub use self::close::CloseReason;
pub use self::decide::{
    Grant, MAX_LOGIN_BODY, Proof, Verdict, Verifier, decide, decide_login, decide_logout, route,
};
pub use self::head::{Target, check_head};
pub(crate) use self::offer::percent_decode;
pub use self::offer::{Offer, OfferError, Offered, offered};
pub use self::recall::{MAX_EPOCH_LEN, Recall, RecallError, recall};
pub use self::recheck::{
    CredentialState, Holder, Revocation, access_holds, credential_holds, recheck,
};

use std::fmt;
use std::time::Duration;

use tungstenite::handshake::server::ErrorResponse;
use tungstenite::http::{self, StatusCode};

use crate::rules::origin::OriginRefusal;
use crate::rules::user_name::MAX_USER_NAME_LEN;

/// Longest password we hand to Argon2.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Longest bearer value (API or session token) we look at.
pub const MAX_TOKEN_LEN: usize = 512;
/// The subprotocol a browser lists next to `wsgate.bearer.<token>`; the server answers with it.
pub const SUBPROTOCOL: &str = "wsgate.v1";
/// The subprotocol that asks for the envelope around each broadcast (the sender as the server
/// authenticated it, the time, and the position where the channel keeps a history), answered on
/// broadcast channels (docs/history.md).
pub const ENVELOPE_SUBPROTOCOL: &str = "wsgate.v1.json";
/// The subprotocol prefix that carries a bearer token from browsers, which cannot set headers.
pub const BEARER_SUBPROTOCOL: &str = "wsgate.bearer.";
/// The session cookie's name. The `__Host-` prefix makes a browser accept it only with `Secure`,
/// `Path=/` and no `Domain`, so no sibling host or plain-http page can plant or widen it.
pub const SESSION_COOKIE: &str = "__Host-wsgate_session";

/// Why an upgrade request is refused. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Unparseable request line or headers (bare CR, bare LF, NUL, bad token…), or a body
    /// announced on the upgrade (`Content-Length`, `Transfer-Encoding`). 400.
    Malformed,
    /// A request target that is not origin-form (`/path?query`): absolute-form
    /// (`https://host/path`), authority- or asterisk-form, or one with a `#fragment`. 400.
    Target,
    /// A request path that some common reader (an app's URL parser, a file server) could resolve
    /// to other segments than wsgate reads: an encoded `.`, `/`, `\` or `%`, a backslash, an
    /// encoded control character or invalid UTF-8 ([`head::readers_may_differ`]). 400.
    AmbiguousPath,
    /// Request line plus headers longer than `max_request_head`. 431.
    HeadTooLarge,
    /// More header lines than `max_headers`. 431.
    TooManyHeaders,
    /// Not `GET`. 405.
    Method,
    /// Not HTTP/1.1. 400.
    HttpVersion,
    /// Missing `Host`, `Upgrade: websocket` or `Connection: Upgrade`. 400.
    NotUpgrade,
    /// A demo login (`POST /login`) whose `Content-Length` is larger than [`MAX_LOGIN_BODY`]. 413.
    LoginTooLarge,
    /// A demo login without a `Content-Length`, or with `Transfer-Encoding` (the form is read by
    /// its length alone). 411.
    LengthRequired,
    /// The request head, or a demo login's body, was not complete at its deadline (`what` names
    /// which: `request head`, `login body`). 408.
    Unfinished { what: &'static str },
    /// A plain `GET` with no `Upgrade` header at all: a browser or a scanner asking for a page.
    /// 400, with a body saying this is a WebSocket endpoint and where its documentation is.
    PlainHttp,
    /// `Sec-WebSocket-Key` missing or not 16 base64-encoded bytes. 400.
    BadKey,
    /// `Sec-WebSocket-Version` other than 13. 426.
    WsVersion,
    /// A `wsgate.bearer.` subprotocol without `wsgate.v1` beside it to answer with. 400.
    Subprotocol,
    /// A history request (`last`, `since`) on a channel that keeps one, malformed. 400.
    Recall(RecallError),
    /// No channel serves this path. 404.
    UnknownPath,
    /// The Origin is not allowed. 403. `origin` is the header as a log line may show it
    /// ([`safe_origin`]; empty when there was none), so the admin reads what to add.
    Origin {
        refusal: OriginRefusal,
        origin: String,
    },
    /// No credentials were offered and the channel is not anonymous. 401.
    NoCredentials,
    /// Credentials were offered and are wrong. `why` says which kind failed, for the log only:
    /// the client gets the same 401 whatever it was.
    BadCredentials {
        user: LogSafeUser,
        why: &'static str,
    },
    /// Too many failed logins from this address or for this user. 429 with `Retry-After`.
    Throttled {
        user: LogSafeUser,
        retry_after: Duration,
    },
    /// Authenticated, but no role lets this user subscribe to this path. 403. Both are as a log
    /// line may show them ([`LogSafeUser`], [`safe_path`]).
    Forbidden { user: LogSafeUser, path: String },
    /// Too many password checks are waiting for Argon2. 503 with `Retry-After`.
    Busy,
    /// The server is shutting down. 503.
    ShuttingDown,
    /// A `mode = proxy` channel's backend did not answer 101: 503 when it is down, 504 when it
    /// missed the `backend connect` deadline, 502 when it answered wrongly or failed TLS.
    /// `detail` is for the log (no secret: the backend's address and error).
    Backend {
        failure: BackendFailure,
        detail: String,
    },
    /// The memory cap is reached (`memory_limit`). 503 with `Retry-After`.
    MemoryFull,
    /// A history request (`last`, `since`) on a channel whose history Redis keeps (`[cluster]`),
    /// and Redis did not answer it within `health_timeout`. 503 with `Retry-After`.
    HistoryUnavailable,
    /// Every worker stayed busy until the upgrade deadline (the connection waited in the
    /// `queue`), or a worker thread could not be started. 503 with `Retry-After`.
    NoWorker,
    /// The connection's wake-up eventfd could not be created (the process is out of file
    /// descriptors, or the system out of memory): 503 with `Retry-After`, as descriptors free
    /// when connections end. The text is the system's error, for the log.
    NoWakeFd(String),
    /// The demo page's login with sessions off (`[auth] session_ttl = 0`): the page logs in only
    /// through a session, which this server does not issue. 501, without `Retry-After`: trying
    /// again does not help until the configuration changes.
    SessionsOff,
}

/// How a backend failed before the 101 ([`Reason::Backend`]); the `kind` label of
/// `wsgate_proxy_backend_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendFailure {
    /// Nothing listens: refused, no such socket, unreachable, name not resolved. 503.
    Down,
    /// The `backend connect` deadline passed. 504.
    Timeout,
    /// The TLS handshake with a `wss://` backend failed (untrusted certificate, wrong name). 502.
    Tls,
    /// The backend answered, but not with a valid 101. 502.
    Handshake,
}

impl BackendFailure {
    pub const ALL: [BackendFailure; 4] = [
        BackendFailure::Down,
        BackendFailure::Timeout,
        BackendFailure::Tls,
        BackendFailure::Handshake,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            BackendFailure::Down => StatusCode::SERVICE_UNAVAILABLE,
            BackendFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            BackendFailure::Tls | BackendFailure::Handshake => StatusCode::BAD_GATEWAY,
        }
    }

    /// The metric label.
    pub fn kind(self) -> &'static str {
        match self {
            BackendFailure::Down => "down",
            BackendFailure::Timeout => "timeout",
            BackendFailure::Tls => "tls",
            BackendFailure::Handshake => "handshake",
        }
    }
}

impl Reason {
    pub fn status(&self) -> StatusCode {
        match self {
            Reason::Malformed
            | Reason::Target
            | Reason::AmbiguousPath
            | Reason::HttpVersion
            | Reason::NotUpgrade
            | Reason::PlainHttp
            | Reason::BadKey
            | Reason::Subprotocol
            | Reason::Recall(_) => StatusCode::BAD_REQUEST,
            Reason::HeadTooLarge | Reason::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Reason::Method => StatusCode::METHOD_NOT_ALLOWED,
            Reason::LoginTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Reason::Unfinished { .. } => StatusCode::REQUEST_TIMEOUT,
            Reason::WsVersion => StatusCode::UPGRADE_REQUIRED,
            Reason::UnknownPath => StatusCode::NOT_FOUND,
            Reason::Origin { .. } | Reason::Forbidden { .. } => StatusCode::FORBIDDEN,
            Reason::NoCredentials | Reason::BadCredentials { .. } => StatusCode::UNAUTHORIZED,
            Reason::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Reason::Busy
            | Reason::ShuttingDown
            | Reason::MemoryFull
            | Reason::HistoryUnavailable
            | Reason::NoWorker
            | Reason::NoWakeFd(_) => StatusCode::SERVICE_UNAVAILABLE,
            Reason::SessionsOff => StatusCode::NOT_IMPLEMENTED,
            Reason::Backend { failure, .. } => failure.status(),
        }
    }

    /// The response sent for this refusal: status, a one-line body, `Connection: close`, and the
    /// header the status calls for (`WWW-Authenticate`, `Sec-WebSocket-Version`, `Allow`,
    /// `Retry-After`).
    pub fn response(&self) -> ErrorResponse {
        let status = self.status();
        let mut body = format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        match self {
            Reason::PlainHttp => body.push_str(PLAIN_HTTP_TEXT),
            Reason::Recall(why) => body.push_str(&format!("{why}\n")),
            Reason::SessionsOff => {
                body.push_str(
                    "sessions are off ([auth] session_ttl = 0): the demo page needs them\n",
                );
            }
            _ => {}
        }
        if let Some(told) = self.told() {
            body.push_str(&format!("{told}\n"));
        }
        let mut builder = http::Response::builder()
            .status(status)
            .header("Connection", "close")
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Content-Length", body.len().to_string());
        builder = match self {
            Reason::NoCredentials | Reason::BadCredentials { .. } => builder.header(
                "WWW-Authenticate",
                "Basic realm=\"wsgate\", charset=\"UTF-8\"",
            ),
            Reason::WsVersion => builder.header("Sec-WebSocket-Version", "13"),
            Reason::Method => builder.header("Allow", "GET"),
            Reason::Throttled { retry_after, .. } => {
                builder.header("Retry-After", retry_after.as_secs().max(1).to_string())
            }
            Reason::Busy | Reason::NoWorker | Reason::NoWakeFd(_) => {
                builder.header("Retry-After", "1")
            }
            Reason::MemoryFull | Reason::HistoryUnavailable => builder.header("Retry-After", "2"),
            Reason::ShuttingDown => builder.header("Retry-After", "5"),
            Reason::Backend {
                failure: BackendFailure::Down,
                ..
            } => builder.header("Retry-After", "5"),
            _ => builder,
        };
        // Every header above is a valid static name and ASCII value.
        builder
            .body(Some(body))
            .unwrap_or_else(|_| http::Response::new(None))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Malformed => f.write_str("malformed request"),
            Reason::Target => f.write_str("request target not in origin form"),
            Reason::AmbiguousPath => {
                f.write_str("request path other readers could resolve differently")
            }
            Reason::HeadTooLarge => f.write_str("request head too large"),
            Reason::TooManyHeaders => f.write_str("too many headers"),
            Reason::Method => f.write_str("method not GET"),
            Reason::HttpVersion => f.write_str("not HTTP/1.1"),
            Reason::NotUpgrade => f.write_str("not a websocket upgrade"),
            Reason::PlainHttp => f.write_str("plain HTTP request, not a websocket upgrade"),
            Reason::LoginTooLarge => f.write_str("login form too long"),
            Reason::LengthRequired => f.write_str("login form without a Content-Length"),
            Reason::Unfinished { what } => write!(f, "{what} not complete at its deadline"),
            Reason::BadKey => f.write_str("bad Sec-WebSocket-Key"),
            Reason::WsVersion => f.write_str("unsupported Sec-WebSocket-Version"),
            Reason::Subprotocol => f.write_str("bearer subprotocol without wsgate.v1"),
            Reason::Recall(why) => write!(f, "history request: {why}"),
            Reason::UnknownPath => f.write_str("unknown path"),
            Reason::Origin { refusal, origin } => match refusal {
                OriginRefusal::Missing => f.write_str(
                    "no origin header (clients other than browsers send none: set [origins] \
                     allow_missing = true to let them in)",
                ),
                OriginRefusal::NotAllowed => write!(
                    f,
                    "origin not allowed: {origin} (add it to [origins] allow if it is yours)"
                ),
                OriginRefusal::Malformed => write!(f, "malformed origin: {origin}"),
                OriginRefusal::Multiple | OriginRefusal::TooLong => write!(f, "{refusal}"),
            },
            Reason::NoCredentials => f.write_str("no credentials"),
            Reason::BadCredentials { why, .. } => f.write_str(why),
            Reason::Throttled { retry_after, .. } => {
                write!(
                    f,
                    "too many failed logins (retry after {}s)",
                    retry_after.as_secs().max(1)
                )
            }
            Reason::Forbidden { user, path } => write!(
                f,
                "no role lets user \"{user}\" subscribe to {path} (see `wsgate check-access \
                 {user} {path}`)"
            ),
            Reason::Busy => f.write_str("too many logins waiting for password checks"),
            Reason::ShuttingDown => f.write_str("shutting down"),
            Reason::Backend { detail, .. } => f.write_str(detail),
            Reason::MemoryFull => f.write_str("memory limit reached"),
            Reason::NoWorker => f.write_str("no worker free"),
            Reason::HistoryUnavailable => {
                f.write_str("the channel's history (in Redis) is unavailable")
            }
            Reason::NoWakeFd(error) => write!(f, "cannot create the wake-up fd (eventfd): {error}"),
            Reason::SessionsOff => f.write_str(
                "demo login with sessions off ([auth] session_ttl = 0); the page needs them",
            ),
        }
    }
}

impl Reason {
    /// The refusal's reason as the client may read it below the status line, where it tells the
    /// client only about its own request: the Origin, the path, the role, the throttle, the load.
    /// Shorter than the log's line, which tells the operator what to change. Never for a
    /// credential (every wrong one gets the same 401) nor a backend (its address is the
    /// operator's).
    fn told(&self) -> Option<String> {
        match self {
            Reason::Origin { refusal, .. } => Some(refusal.to_string()),
            Reason::Forbidden { .. } => Some("no role allows subscribing".into()),
            Reason::UnknownPath
            | Reason::Throttled { .. }
            | Reason::Busy
            | Reason::ShuttingDown
            | Reason::MemoryFull
            | Reason::HistoryUnavailable
            | Reason::NoWorker => Some(self.to_string()),
            _ => None,
        }
    }
}

/// What a plain HTTP `GET` (a browser opening the address, a scanner) reads below its 400.
const PLAIN_HTTP_TEXT: &str = "\nThis is wsgate, a WebSocket server: it serves no web pages here.\n\
Connect with a WebSocket client to wss://HOST:PORT/PATH, for example\n\
  wsgate client --user USER wss://HOST:PORT/echo\n\
  websocat --basic-auth USER:PASSWORD wss://HOST:PORT/echo\n\
  new WebSocket(\"wss://HOST:PORT/chat/lobby\") in a page whose origin is allowed.\n\
The documentation is in /usr/share/doc/wsgate/ (README.md) where wsgate was\n\
installed as a package, and in README.md and docs/ of its source.\n";

/// The `Set-Cookie` value carrying a session `token` for `max_age`: only sent over TLS,
/// invisible to page scripts, never sent cross-site, host-only (the `__Host-` name makes a
/// browser insist on `Secure`, `Path=/` and no `Domain`). An empty token with a zero age is the
/// log-out: the browser drops the cookie.
pub fn session_cookie(token: &str, max_age: Duration) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        max_age.as_secs()
    )
}

/// How a client proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Password,
    ApiToken,
    Session,
    ClientCert,
    /// Nothing: an anonymous channel, governed by the `anonymous` role.
    Anonymous,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Password => "password",
            Method::ApiToken => "token",
            Method::Session => "session",
            Method::ClientCert => "client-cert",
            Method::Anonymous => "anonymous",
        })
    }
}

/// A user name fit for a log line or a header: control characters and quotes escaped, length
/// capped. Only [`LogSafeUser::new`] makes one, so a name of this type
/// has been through the check wherever it goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSafeUser(String);

impl LogSafeUser {
    /// `user` escaped and capped for a log line.
    #[must_use]
    pub fn new(user: &str) -> Self {
        LogSafeUser(bounded(user, MAX_USER_NAME_LEN))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LogSafeUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest request path or Origin a log line shows, in characters; the rest is cut with `…`.
const MAX_LOGGED_LEN: usize = 128;

/// A request path fit for a log line: control characters and quotes escaped, length capped.
pub fn safe_path(path: &str) -> String {
    bounded(path, MAX_LOGGED_LEN)
}

/// The Origin header value(s) of a refused request as a log line shows them: each quoted, not
/// UTF-8 bytes replaced, control characters escaped, length capped; empty when there is none.
pub fn safe_origin(values: &[&[u8]]) -> String {
    values
        .iter()
        .map(|v| {
            format!(
                "\"{}\"",
                bounded(&String::from_utf8_lossy(v), MAX_LOGGED_LEN)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `text` with control characters, quotes and backslashes escaped, cut after `max` characters.
fn bounded(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// What the tests of the decision files share: a config, requests, a fake [`Verifier`].
#[cfg(test)]
mod fixtures {
    use std::path::Path;
    use std::time::Duration;

    use tungstenite::handshake::server::Request;
    use tungstenite::http;

    use super::*;
    use crate::config::Config;

    /// The channels and roles of [`config`].
    pub(super) const CHANNELS_AND_ROLES: &str = "\
        [channel:/echo]\nmode = echo\n[channel:/chat/*]\nmode = broadcast\n\
        [channel:/feed]\nmode = broadcast\n[channel:/private]\nmode = broadcast\n\
        [channel:/public]\nmode = broadcast\nanonymous = true\n\
        [role:everyone]\nmembers = *\nsubscribe = /echo, /chat/*, /feed\npublish = /echo, /chat/*\n\
        [role:operators]\nmembers = root\nsubscribe = /private\n\
        [role:anonymous]\nsubscribe = /public\n";

    pub(super) fn config() -> Config {
        config_with(CHANNELS_AND_ROLES)
    }

    /// A config allowing [`ORIGIN`] with these channels and roles.
    pub(super) fn config_with(channels_and_roles: &str) -> Config {
        // Any existing regular file will do as the users file: policy never reads it.
        let text = format!(
            "[tls]\nself_signed = true\ncert = /nonexistent/c.pem\nkey = /nonexistent/k.pem\n\
             [auth]\nusers_file = {}/Cargo.toml\n\
             [origins]\nallow = https://app.example.com\n{channels_and_roles}",
            env!("CARGO_MANIFEST_DIR")
        );
        Config::parse(&text, Path::new("/tmp/policy-test.ini")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Parses a raw request head into tungstenite's request type, as the callback sees it.
    pub(super) fn request(raw: &str) -> Request {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw.as_bytes()).unwrap().is_complete());
        let mut builder = http::Request::builder()
            .method(req.method.unwrap())
            .uri(req.path.unwrap());
        for h in req.headers.iter() {
            builder = builder.header(h.name, h.value);
        }
        builder.body(()).unwrap()
    }

    pub(super) const UPGRADE: &str = "Host: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                           Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    /// A fake credential store: alice/pw, token `wsg_good` for bob, session `s1.good` for carol.
    pub(super) struct Fake;

    impl Verifier for Fake {
        fn password(&self, user: &str, password: &str) -> Verdict {
            match (user, password) {
                ("alice", "pw") => Verdict::Ok {
                    user: "alice".into(),
                    session_id: None,
                    proof: Proof::Password { hash: [1; 32] },
                },
                ("slow", _) => Verdict::Busy,
                ("locked", _) => Verdict::Throttled {
                    user: LogSafeUser::new(user),
                    retry_after: Duration::from_secs(30),
                },
                ("alice", _) => Verdict::Bad {
                    user: LogSafeUser::new(user),
                    why: "bad password",
                },
                _ => Verdict::Bad {
                    user: LogSafeUser::new(user),
                    why: "unknown user",
                },
            }
        }
        fn api_token(&self, token: &str) -> Verdict {
            match token {
                "wsg_good" => Verdict::Ok {
                    user: "bob".into(),
                    session_id: None,
                    proof: Proof::ApiToken { digest: [2; 32] },
                },
                _ => Verdict::Bad {
                    user: LogSafeUser::default(),
                    why: "bad token",
                },
            }
        }
        fn session(&self, token: &str) -> Verdict {
            match token {
                "s1.good" => Verdict::Ok {
                    user: "carol".into(),
                    session_id: Some("sid1".into()),
                    proof: Proof::Session {
                        fingerprint: [3; 8],
                        login_unix: 100,
                        key_id: [6; 8],
                    },
                },
                _ => Verdict::Bad {
                    user: LogSafeUser::default(),
                    why: "bad session",
                },
            }
        }
    }

    pub(super) fn get(cfg: &Config, target: &str, extra: &str) -> Result<Grant, Reason> {
        let raw = format!("GET {target} HTTP/1.1\r\n{UPGRADE}{extra}\r\n");
        decide(&request(&raw), &Target::parse(target)?, cfg, &Fake, None)
    }

    pub(super) const ORIGIN: &str = "Origin: https://app.example.com\r\n";
}
