//! The upgrade decisions, as pure functions over a parsed request: is this a well-formed WebSocket
//! upgrade, which channel serves the path, is the Origin allowed, who is asking and what may they
//! do. No sockets, no logging, no clocks: credential checks go through the [`Verifier`] trait, and
//! callers turn a [`Reason`] into its HTTP status and log it once.

pub(crate) mod acl;
pub(crate) mod origin;

use std::fmt;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tungstenite::handshake::server::{ErrorResponse, Request};
use tungstenite::http::{self, HeaderMap, StatusCode};

use crate::auth::users::MAX_USER_NAME_LEN;
use crate::config::{ChannelConfig, Config};
use crate::policy::origin::OriginRefusal;

/// Longest password we hand to Argon2.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Longest bearer value (API or session token) we look at.
pub const MAX_TOKEN_LEN: usize = 512;
/// The subprotocol a browser lists next to `wsgate.bearer.<token>`; the server answers with it.
pub const SUBPROTOCOL: &str = "wsgate.v1";
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
    /// A demo login (`POST /login`) whose form body is missing its `Content-Length` or longer
    /// than [`MAX_LOGIN_BODY`]. 413.
    LoginTooLarge,
    /// A plain `GET` with no `Upgrade` header at all: a browser or a scanner asking for a page.
    /// 400, with a body saying this is a WebSocket endpoint and where its documentation is.
    PlainHttp,
    /// `Sec-WebSocket-Key` missing or not 16 base64-encoded bytes. 400.
    BadKey,
    /// `Sec-WebSocket-Version` other than 13. 426.
    WsVersion,
    /// A `wsgate.bearer.` subprotocol without `wsgate.v1` beside it to answer with. 400.
    Subprotocol,
    /// No channel serves this path. 404.
    UnknownPath,
    /// The Origin is not allowed. 403.
    Origin(OriginRefusal),
    /// No credentials were offered and the channel is not anonymous. 401.
    NoCredentials,
    /// Credentials were offered and are wrong. `why` says which kind failed, for the log only:
    /// the client gets the same 401 whatever it was.
    BadCredentials { user: String, why: &'static str },
    /// Too many failed logins from this address or for this user. 429 with `Retry-After`.
    Throttled { user: String, retry_after: Duration },
    /// Authenticated, but no role lets this user subscribe to this path. 403.
    Forbidden { user: String },
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
    /// Every worker stayed busy until the upgrade deadline (the connection waited in the
    /// `queue`), or a worker thread could not be started. 503 with `Retry-After`.
    NoWorker,
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
            | Reason::HttpVersion
            | Reason::NotUpgrade
            | Reason::PlainHttp
            | Reason::BadKey
            | Reason::Subprotocol => StatusCode::BAD_REQUEST,
            Reason::HeadTooLarge | Reason::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Reason::Method => StatusCode::METHOD_NOT_ALLOWED,
            Reason::LoginTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::WsVersion => StatusCode::UPGRADE_REQUIRED,
            Reason::UnknownPath => StatusCode::NOT_FOUND,
            Reason::Origin(_) | Reason::Forbidden { .. } => StatusCode::FORBIDDEN,
            Reason::NoCredentials | Reason::BadCredentials { .. } => StatusCode::UNAUTHORIZED,
            Reason::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Reason::Busy | Reason::ShuttingDown | Reason::MemoryFull | Reason::NoWorker => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
        if *self == Reason::PlainHttp {
            body.push_str(PLAIN_HTTP_TEXT);
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
            Reason::Busy | Reason::NoWorker => builder.header("Retry-After", "1"),
            Reason::MemoryFull => builder.header("Retry-After", "2"),
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
            Reason::HeadTooLarge => f.write_str("request head too large"),
            Reason::TooManyHeaders => f.write_str("too many headers"),
            Reason::Method => f.write_str("method not GET"),
            Reason::HttpVersion => f.write_str("not HTTP/1.1"),
            Reason::NotUpgrade => f.write_str("not a websocket upgrade"),
            Reason::PlainHttp => f.write_str("plain HTTP request, not a websocket upgrade"),
            Reason::LoginTooLarge => f.write_str("login form without a length or too long"),
            Reason::BadKey => f.write_str("bad Sec-WebSocket-Key"),
            Reason::WsVersion => f.write_str("unsupported Sec-WebSocket-Version"),
            Reason::Subprotocol => f.write_str("bearer subprotocol without wsgate.v1"),
            Reason::UnknownPath => f.write_str("unknown path"),
            Reason::Origin(r) => write!(f, "{r}"),
            Reason::NoCredentials => f.write_str("no credentials"),
            Reason::BadCredentials { why, .. } => f.write_str(why),
            Reason::Throttled { retry_after, .. } => {
                write!(
                    f,
                    "too many failed logins (retry after {}s)",
                    retry_after.as_secs().max(1)
                )
            }
            Reason::Forbidden { .. } => f.write_str("no role allows subscribing"),
            Reason::Busy => f.write_str("too many logins waiting for password checks"),
            Reason::ShuttingDown => f.write_str("shutting down"),
            Reason::Backend { detail, .. } => f.write_str(detail),
            Reason::MemoryFull => f.write_str("memory limit reached"),
            Reason::NoWorker => f.write_str("no worker free"),
        }
    }
}

/// What a plain HTTP `GET` (a browser opening the address, a scanner) reads below its 400.
const PLAIN_HTTP_TEXT: &str = "\nThis is wsgate, a WebSocket server: it serves no web pages here.\n\
Connect with a WebSocket client to wss://HOST:PORT/PATH, for example\n\
  websocat --basic-auth USER:PASSWORD wss://HOST:PORT/echo\n\
  new WebSocket(\"wss://HOST:PORT/chat/lobby\") in a page whose origin is allowed.\n\
The documentation is in /usr/share/doc/wsgate/ (README.md) where wsgate was\n\
installed as a package, and in README.md and docs/ of its source.\n";

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

/// What an accepted upgrade is allowed: who, how they proved it, which channel and path (the
/// broadcast group), whether they may publish, and the subprotocol to answer with.
#[derive(Debug, Clone)]
pub struct Grant {
    /// None for anonymous clients.
    pub user: Option<String>,
    pub method: Method,
    /// Set when the client resumed a session; the server makes a new one otherwise.
    pub session_id: Option<String>,
    pub path: String,
    /// The request's query, as sent: a proxy channel forwards it without its credentials
    /// ([`crate::pipeline::relay::forward_target`]).
    pub query: Option<String>,
    pub channel: ChannelConfig,
    pub may_publish: bool,
    pub subprotocol: Option<&'static str>,
    /// What proved the user, kept so a reload can ask whether it still holds ([`recheck`]).
    pub proof: Proof,
    /// The request came from a browser (it carried an allowed `Origin`): only then is the session
    /// also set as a cookie.
    pub browser: bool,
}

impl Grant {
    /// The user name for log lines (`-` when anonymous), control characters escaped.
    pub fn log_user(&self) -> String {
        self.user
            .as_deref()
            .map_or_else(|| "-".to_string(), safe_user)
    }
}

/// A credential check's answer, from the server's [`Verifier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Proven: this user (and, for a resumed session, its id), and what proved it.
    Ok {
        user: String,
        session_id: Option<String>,
        proof: Proof,
    },
    /// Wrong: `user` as claimed (escaped for logs; empty if none), `why` for the log.
    Bad { user: String, why: &'static str },
    /// Too many recent failures: answered without checking anything.
    Throttled { user: String, retry_after: Duration },
    /// Too many password checks waiting.
    Busy,
}

impl Verdict {
    /// The proven user, session id and proof, or the refusal a failed check gets (one mapping for
    /// the upgrade and the demo login).
    ///
    /// # Errors
    /// `BadCredentials`, `Throttled` or `Busy`, as the verdict says.
    fn proven(self) -> Result<(String, Option<String>, Proof), Reason> {
        match self {
            Verdict::Ok {
                user,
                session_id,
                proof,
            } => Ok((user, session_id, proof)),
            Verdict::Bad { user, why } => Err(Reason::BadCredentials { user, why }),
            Verdict::Throttled { user, retry_after } => {
                Err(Reason::Throttled { user, retry_after })
            }
            Verdict::Busy => Err(Reason::Busy),
        }
    }
}

/// The server's credential checks. Implementations own the users file, API tokens, session key
/// and failed-login throttling; `decide` stays pure by asking through this trait.
pub trait Verifier {
    fn password(&self, user: &str, password: &str) -> Verdict;
    fn api_token(&self, token: &str) -> Verdict;
    fn session(&self, token: &str) -> Verdict;
}

/// What proved a connection's user at its upgrade, kept for the connection's life so that a
/// reload can ask whether it still holds. Holds no secret: digests and a fingerprint only (and a
/// client's public certificate chain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Proof {
    /// Nothing: an anonymous channel.
    #[default]
    Anonymous,
    /// A password, checked against the stored hash with this SHA-256 (of its PHC string).
    Password { hash: [u8; 32] },
    /// The API token with this SHA-256 (as the tokens file stores it).
    ApiToken { digest: [u8; 32] },
    /// A session token carrying this credential fingerprint, first issued at `login_unix` (the
    /// password or token login that started the session; renewals keep it), verified with the
    /// session key whose `SessionKey::id` is `key_id`.
    Session {
        fingerprint: [u8; 8],
        login_unix: u64,
        key_id: [u8; 8],
    },
    /// A TLS client certificate chain (end entity first), as verified at the handshake. `decide`
    /// leaves it empty; the server, which holds the TLS session, fills it in.
    ClientCert { chain: Vec<CertificateDer<'static>> },
}

/// Who holds a live connection, as far as a reload needs to know to re-check it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// None for an anonymous client.
    pub user: Option<String>,
    /// Whether the user was let in to publish (so a reload that takes that away closes it).
    pub may_publish: bool,
    /// What proved the user.
    pub proof: Proof,
}

/// The credentials as they are now (after a reload), as [`recheck`] asks about them. The server
/// implements it over its loaded users, tokens and client CA; tests with a fake.
pub trait CredentialState {
    /// SHA-256 of `user`'s stored password hash; None if the users file has no such user.
    fn password_hash(&self, user: &str) -> Option<[u8; 32]>;
    /// The owner of the API token with this digest, if the tokens file still has it.
    fn token_owner(&self, digest: &[u8; 32]) -> Option<String>;
    /// `user`'s credential fingerprint (see `session::user_fingerprint`); None if the users file
    /// has no such user.
    fn fingerprint(&self, user: &str) -> Option<[u8; 8]>;
    /// Whether the current client CA still trusts this chain (and client certificates are on).
    fn client_cert_trusted(&self, chain: &[CertificateDer<'static>]) -> bool;
    /// Whether a session verified with the key `key_id` and started at `login_unix` would still
    /// be accepted: sessions on, the same key, and `session_max_age` not yet reached.
    fn session_accepted(&self, key_id: &[u8; 8], login_unix: u64) -> bool;
}

/// Why a reload ends a live connection. Each is a 1008 close with its own reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// What proved the user no longer does: user deleted, password changed, token revoked,
    /// session fingerprint changed, client certificate no longer trusted.
    Credential,
    /// The credential holds, but the path is no longer served or the roles no longer allow
    /// subscribing (or publishing, for a connection let in to publish).
    Access,
    /// An admin ended it (`POST /disconnect` on the admin API, here or on another instance).
    Admin,
}

impl Revocation {
    /// The close frame's reason text.
    #[must_use]
    pub fn close_reason(self) -> &'static str {
        match self {
            Revocation::Credential => "credential revoked",
            Revocation::Access => "access revoked",
            Revocation::Admin => "disconnected by admin",
        }
    }
}

/// Whether a live connection may stay after a reload: its credential must still prove its user
/// ([`credential_holds`]), a channel must still serve its path, and the roles must still let it
/// subscribe (and publish, if it was let in to publish). The one home of this rule; the server
/// calls it for every live connection on each reload.
///
/// # Errors
/// The [`Revocation`] that ends the connection.
pub fn recheck(
    holder: &Holder,
    path: &str,
    config: &Config,
    state: &dyn CredentialState,
) -> Result<(), Revocation> {
    let user = holder.user.as_deref();
    if !credential_holds(user, &holder.proof, state) {
        return Err(Revocation::Credential);
    }
    let served = config
        .channel_for(path)
        .is_some_and(|c| user.is_some() || c.anonymous);
    let access = acl::evaluate(&config.roles, user, path);
    if served && access.can_subscribe() && (!holder.may_publish || access.can_publish()) {
        Ok(())
    } else {
        Err(Revocation::Access)
    }
}

/// Whether `proof` still proves `user`: the same password hash; the same token, still the user's,
/// and the user still in the users file (a deleted user's tokens are orphaned); the same
/// credential fingerprint for a session (which a password change, deletion or any change to the
/// user's tokens alters), still signed with the current key and within `session_max_age`; a
/// client certificate the current client CA still trusts.
#[must_use]
pub fn credential_holds(user: Option<&str>, proof: &Proof, state: &dyn CredentialState) -> bool {
    match (proof, user) {
        (Proof::Anonymous, None) => true,
        (Proof::Password { hash }, Some(user)) => state.password_hash(user) == Some(*hash),
        (Proof::ApiToken { digest }, Some(user)) => {
            state.token_owner(digest).as_deref() == Some(user)
                && state.password_hash(user).is_some()
        }
        (
            Proof::Session {
                fingerprint,
                login_unix,
                key_id,
            },
            Some(user),
        ) => {
            state.fingerprint(user) == Some(*fingerprint)
                && state.session_accepted(key_id, *login_unix)
        }
        (Proof::ClientCert { chain }, Some(_)) => state.client_cert_trusted(chain),
        // A user without a proof, or a proof without a user: never issued; end it.
        _ => false,
    }
}

/// Credentials as offered by a client. `Debug` never shows the secret.
#[derive(PartialEq, Eq)]
pub enum Offer {
    Password { user: String, password: String },
    ApiToken(String),
    Session(String),
}

impl fmt::Debug for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offer::Password { user, .. } => write!(f, "Password {{ user: {user:?}, .. }}"),
            Offer::ApiToken(_) => f.write_str("ApiToken(<redacted>)"),
            Offer::Session(_) => f.write_str("Session(<redacted>)"),
        }
    }
}

/// Classifies a bearer value: session tokens start with `s1.`, anything else is an API token.
fn bearer(value: &str) -> Offer {
    if value.starts_with("s1.") {
        Offer::Session(value.to_string())
    } else {
        Offer::ApiToken(value.to_string())
    }
}

/// What a request carries: the credentials it offers (if any), whether they came from the
/// session cookie, and the subprotocol to answer with.
#[derive(Debug, PartialEq, Eq)]
pub struct Offered {
    pub offer: Option<Offer>,
    /// The offer is the `__Host-wsgate_session` cookie, which a browser attaches by itself, so
    /// it needs an explicitly allowed Origin ([`decide`]).
    pub cookie: bool,
    pub subprotocol: Option<&'static str>,
}

/// Why the offered credentials cannot even be checked.
#[derive(Debug, PartialEq, Eq)]
pub enum OfferError {
    /// Present but unusable: bad base64, no colon, not UTF-8, too long, two `Authorization`
    /// headers, a user without a password, a user name that breaks the user-name rule. Carries
    /// the claimed user name only when it is a valid one (else empty: a malformed value may be
    /// a misplaced secret, as in `?user=alice;pass=secret`, and is never logged).
    Unusable(String),
    /// A `wsgate.bearer.` subprotocol without `wsgate.v1` to answer with.
    Subprotocol,
}

/// What the client offered, looked for in this order: `Authorization` (Basic or Bearer), a
/// `wsgate.bearer.<token>` subprotocol, the query (`user`+`pass`, `token`, `session`), the
/// `wsgate_session` cookie. Also the subprotocol to answer with (`wsgate.v1` when listed).
///
/// # Errors
/// [`OfferError`] for credentials that are present but unusable.
pub fn offered(headers: &HeaderMap, query: Option<&str>) -> Result<Offered, OfferError> {
    let protocols: Vec<&str> = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let subprotocol = protocols.contains(&SUBPROTOCOL).then_some(SUBPROTOCOL);
    let found = |offer| {
        Ok(Offered {
            offer,
            cookie: false,
            subprotocol,
        })
    };
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    if let Some(value) = auth.next() {
        if auth.next().is_some() {
            return Err(OfferError::Unusable(String::new()));
        }
        return found(Some(
            authorization(value.as_bytes()).map_err(OfferError::Unusable)?,
        ));
    }
    if let Some(token) = protocols
        .iter()
        .find_map(|p| p.strip_prefix(BEARER_SUBPROTOCOL))
    {
        if subprotocol.is_none() {
            return Err(OfferError::Subprotocol);
        }
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(OfferError::Unusable(String::new()));
        }
        return found(Some(bearer(token)));
    }
    if let Some(offer) = from_query(query).map_err(OfferError::Unusable)? {
        return found(Some(offer));
    }
    let cookie = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='));
    match cookie {
        Some(token) if !token.is_empty() && token.len() <= MAX_TOKEN_LEN => Ok(Offered {
            offer: Some(Offer::Session(token.to_string())),
            cookie: true,
            subprotocol,
        }),
        _ => found(None),
    }
}

/// `Authorization: Basic base64(user:password)` or `Authorization: Bearer TOKEN`.
fn authorization(value: &[u8]) -> Result<Offer, String> {
    let scheme = |name: &[u8]| {
        value
            .get(..name.len())
            .filter(|s| s.eq_ignore_ascii_case(name))
            .map(|_| value[name.len()..].trim_ascii())
    };
    if let Some(b64) = scheme(b"basic ") {
        let decoded = data_encoding::BASE64
            .decode(b64)
            .map_err(|_| String::new())?;
        let text = String::from_utf8(decoded).map_err(|_| String::new())?;
        let (user, password) = text.split_once(':').ok_or_else(String::new)?;
        return checked(user.to_string(), password.to_string());
    }
    if let Some(token) = scheme(b"bearer ") {
        let token = std::str::from_utf8(token).map_err(|_| String::new())?;
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(String::new());
        }
        return Ok(bearer(token));
    }
    Err(String::new())
}

/// `?user=&pass=`, `?token=`, `?session=`.
fn from_query(query: Option<&str>) -> Result<Option<Offer>, String> {
    let Some(query) = query else { return Ok(None) };
    let (mut user, mut password, mut token, mut session) = (None, None, None, None);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match k {
            "user" => &mut user,
            "pass" => &mut password,
            "token" => &mut token,
            "session" => &mut session,
            _ => continue,
        };
        *slot = Some(percent_decode(v).ok_or_else(String::new)?);
    }
    match (user, password) {
        (Some(user), Some(password)) => return checked(user, password).map(Some),
        (Some(user), None) => return Err(loggable_user(&user)),
        (None, Some(_)) => return Err(String::new()),
        (None, None) => {}
    }
    let limited = |t: String| {
        if t.is_empty() || t.len() > MAX_TOKEN_LEN {
            Err(String::new())
        } else {
            Ok(t)
        }
    };
    if let Some(token) = token {
        return limited(token).map(|t| Some(Offer::ApiToken(t)));
    }
    session
        .map(limited)
        .transpose()
        .map(|s| s.map(Offer::Session))
}

/// A password offer whose user name follows the users file's rule and whose password is not
/// too long; else the error carries the name only if it is valid ([`loggable_user`]).
fn checked(user: String, password: String) -> Result<Offer, String> {
    if crate::auth::users::check_user_name(&user).is_err() || password.len() > MAX_PASSWORD_LEN {
        return Err(loggable_user(&user));
    }
    Ok(Offer::Password { user, password })
}

/// The request target, parsed once (by [`crate::pipeline::upgrade`], from the raw request line) into the
/// path that routing, limits, access, the hub group, metrics and logs all use, and the query the
/// credentials may be in. Nothing else looks at the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Everything before the `?`, as sent (no percent-decoding: `/a/%62` is not `/a/b`).
    pub path: String,
    /// Everything after the first `?`, if there is one.
    pub query: Option<String>,
}

impl Target {
    /// Parses an origin-form target, `/path` or `/path?query`: the only form a WebSocket client
    /// sends (RFC 6455 §4.1: the /resource name/).
    ///
    /// # Errors
    /// [`Reason::Target`] for absolute-form (`https://host/path`: refused rather than checked
    /// against `Host`, which no WebSocket client needs), authority- and asterisk-form, any `#`
    /// (a fragment is never part of a request target, RFC 9112 §3.2), and bytes httparse lets
    /// through but `http::Uri` refuses (`<`, `>`, `` ` ``).
    pub fn parse(raw: &str) -> Result<Target, Reason> {
        // tungstenite parses the same bytes into an `http::Uri` before our callback runs, and
        // answers a failure with a bare close: refused here first, with its status.
        if !raw.starts_with('/') || raw.contains('#') || raw.parse::<http::Uri>().is_err() {
            return Err(Reason::Target);
        }
        let (path, query) = match raw.split_once('?') {
            Some((path, query)) => (path, Some(query.to_string())),
            None => (raw, None),
        };
        Ok(Target {
            path: path.to_string(),
            query,
        })
    }
}

/// The claimed user name as a log line may show it: as is when it is a valid user name, else
/// empty. A malformed value is never logged (it may hold a secret: `?user=alice;pass=secret`).
fn loggable_user(user: &str) -> String {
    if crate::auth::users::check_user_name(user).is_ok() {
        user.to_string()
    } else {
        String::new()
    }
}

/// Checks that a parsed request head is a WebSocket upgrade tungstenite will accept, so that every
/// malformed request gets its status from us instead of a bare reset.
///
/// # Errors
/// The first [`Reason`] the request fails.
pub fn check_head(req: &httparse::Request<'_, '_>) -> Result<(), Reason> {
    if req.method != Some("GET") {
        return Err(Reason::Method);
    }
    if req.version != Some(1) {
        return Err(Reason::HttpVersion);
    }
    let header = |name: &str| -> Vec<&[u8]> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    if header("upgrade").is_empty() {
        return Err(Reason::PlainHttp);
    }
    let single = |name: &str| -> Option<&[u8]> {
        let values = header(name);
        if values.len() == 1 {
            Some(values[0])
        } else {
            None
        }
    };
    if single("host").is_none_or(|h| h.is_empty()) {
        return Err(Reason::NotUpgrade);
    }
    // As tungstenite reads them: the first `Connection` header lists `upgrade` (split on
    // spaces and commas), the first `Upgrade` header is `websocket` and nothing else. A second
    // header of either, or `Upgrade: websocket, h2c`, would pass a looser check here and then
    // get a bare close from tungstenite: it gets its 400 from us instead.
    let connection_upgrade = single("connection").is_some_and(|v| {
        v.split(|&b| b == b',' || b == b' ')
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
    });
    let upgrade_websocket =
        single("upgrade").is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    if !connection_upgrade || !upgrade_websocket {
        return Err(Reason::NotUpgrade);
    }
    // An upgrade has no body: bytes after the head are WebSocket frames, so a body announced
    // here would be read as frames.
    if !header("content-length").is_empty() || !header("transfer-encoding").is_empty() {
        return Err(Reason::Malformed);
    }
    if single("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(Reason::WsVersion);
    }
    let key_ok = single("sec-websocket-key")
        .and_then(|k| data_encoding::BASE64.decode(k.trim_ascii()).ok())
        .is_some_and(|k| k.len() == 16);
    if !key_ok {
        return Err(Reason::BadKey);
    }
    Ok(())
}

/// The channel serving `path`, refusing paths with dot or empty segments.
///
/// # Errors
/// [`Reason::UnknownPath`].
pub fn route<'c>(path: &str, config: &'c Config) -> Result<&'c ChannelConfig, Reason> {
    let clean = path.starts_with('/')
        && path.len() <= 1024
        && !path[1..]
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        && path.bytes().all(|b| b.is_ascii_graphic());
    if !clean {
        return Err(Reason::UnknownPath);
    }
    config.channel_for(path).ok_or(Reason::UnknownPath)
}

/// A user name fit for a log line: control characters escaped, length capped.
pub fn safe_user(user: &str) -> String {
    user.chars()
        .take(MAX_USER_NAME_LEN)
        .flat_map(char::escape_debug)
        .collect()
}

/// Decodes `%XX` escapes and `+` (as space), as `application/x-www-form-urlencoded` does.
/// The one decoder of query values: the upgrade's and the admin API's.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The upgrade decision, in order: path (404), Origin (403), credentials (401, 429, 503),
/// subscribe permission (403). `target` is the request target as [`Target::parse`] read it from
/// the request line; `req`'s own URI is never looked at. `client_user` is the user a verified
/// TLS client certificate names.
///
/// # Errors
/// The [`Reason`] for refusing.
pub fn decide(
    req: &Request,
    target: &Target,
    config: &Config,
    verifier: &dyn Verifier,
    client_user: Option<&str>,
) -> Result<Grant, Reason> {
    let path = target.path.as_str();
    let channel = route(path, config)?;
    let origins: Vec<&[u8]> = req
        .headers()
        .get_all(http::header::ORIGIN)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let host = req.headers().get(http::header::HOST).map(|h| h.as_bytes());
    config
        .origins
        .check_request(&origins, host)
        .map_err(Reason::Origin)?;
    let Offered {
        offer,
        cookie,
        subprotocol,
    } = match offered(req.headers(), target.query.as_deref()) {
        Ok(found) => found,
        Err(OfferError::Unusable(user)) => {
            return Err(Reason::BadCredentials {
                user,
                why: "malformed credentials",
            });
        }
        Err(OfferError::Subprotocol) => return Err(Reason::Subprotocol),
    };
    // A browser attaches the cookie to any page's request, so the cookie alone proves nothing
    // about who asks: it counts only with an Origin the allow list (or same-origin) names
    // explicitly, whatever `allow_any` and `allow_missing` say.
    if cookie {
        config
            .origins
            .check_explicit(&origins, host)
            .map_err(Reason::Origin)?;
    }
    let verdict = match &offer {
        Some(Offer::Password { user, password }) => {
            Some((verifier.password(user, password), Method::Password))
        }
        Some(Offer::ApiToken(token)) => Some((verifier.api_token(token), Method::ApiToken)),
        Some(Offer::Session(token)) => Some((verifier.session(token), Method::Session)),
        None => None,
    };
    let (user, method, session_id, proof) = match verdict {
        Some((verdict, method)) => {
            let (user, session_id, proof) = verdict.proven()?;
            (Some(user), method, session_id, proof)
        }
        None => match client_user {
            Some(user) => (
                Some(user.to_string()),
                Method::ClientCert,
                None,
                Proof::ClientCert { chain: Vec::new() },
            ),
            None if channel.anonymous => (None, Method::Anonymous, None, Proof::Anonymous),
            None => return Err(Reason::NoCredentials),
        },
    };
    let access = acl::evaluate(&config.roles, user.as_deref(), path);
    if !access.can_subscribe() {
        return Err(Reason::Forbidden {
            user: user.as_deref().map_or_else(String::new, safe_user),
        });
    }
    Ok(Grant {
        user,
        method,
        session_id,
        path: path.to_string(),
        query: target.query.clone(),
        channel: channel.clone(),
        may_publish: access.can_publish(),
        subprotocol,
        proof,
        browser: !origins.is_empty(),
    })
}

/// The longest demo login form body: a user name and a password, percent-encoded.
pub const MAX_LOGIN_BODY: usize = 4096;

/// The demo page's login (`POST /login`, `[demo] enabled`): the form body `user=NAME&pass=PASSWORD`
/// (percent-encoded, as `encodeURIComponent` writes it) checked like a password upgrade, so the
/// page can say "login failed" instead of watching a WebSocket close with 1006. It only ever
/// leads to a session cookie, which counts only with an explicitly allowed Origin: the login
/// needs one too, so a foreign page can neither log a visitor in nor probe passwords through it.
/// Returns the user whose session the server issues.
///
/// # Errors
/// The [`Reason`] to answer with: `Origin`, `BadCredentials` (malformed body included),
/// `Throttled`, `Busy`.
pub fn decide_login(
    origins: &[&[u8]],
    host: Option<&[u8]>,
    body: &[u8],
    config: &Config,
    verifier: &dyn Verifier,
) -> Result<String, Reason> {
    if origins.is_empty() {
        return Err(Reason::Origin(OriginRefusal::Missing));
    }
    config
        .origins
        .check_explicit(origins, host)
        .map_err(Reason::Origin)?;
    let malformed = |user: String| Reason::BadCredentials {
        user,
        why: "malformed login form",
    };
    let body = std::str::from_utf8(body).map_err(|_| malformed(String::new()))?;
    let (user, password) = match from_query(Some(body.trim_end())) {
        Ok(Some(Offer::Password { user, password })) => (user, password),
        Ok(_) => return Err(malformed(String::new())),
        Err(user) => return Err(malformed(user)),
    };
    verifier
        .password(&user, &password)
        .proven()
        .map(|(user, _, _)| user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        // Any existing regular file will do as the users file: policy never reads it.
        let text = format!(
            "[tls]\nself_signed = true\ncert = /nonexistent/c.pem\nkey = /nonexistent/k.pem\n\
             [auth]\nusers_file = {}/Cargo.toml\n\
             [origins]\nallow = https://app.example.com\n\
             [channel:/echo]\nmode = echo\n[channel:/chat/*]\nmode = broadcast\n\
             [channel:/feed]\nmode = broadcast\n[channel:/private]\nmode = broadcast\n\
             [channel:/public]\nmode = broadcast\nanonymous = true\n\
             [role:everyone]\nmembers = *\nsubscribe = /echo, /chat/*, /feed\npublish = /echo, /chat/*\n\
             [role:operators]\nmembers = root\nsubscribe = /private\n\
             [role:anonymous]\nsubscribe = /public\n",
            env!("CARGO_MANIFEST_DIR")
        );
        Config::parse(&text, Path::new("/tmp/policy-test.ini")).unwrap()
    }

    /// Parses a raw request head into tungstenite's request type, as the callback sees it.
    fn request(raw: &str) -> Request {
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

    fn head(raw: &str) -> Result<(), Reason> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw.as_bytes()).unwrap().is_complete());
        check_head(&req)
    }

    const UPGRADE: &str = "Host: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                           Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    /// A fake credential store: alice/pw, token `wsg_good` for bob, session `s1.good` for carol.
    struct Fake;

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
                    user: user.into(),
                    retry_after: Duration::from_secs(30),
                },
                ("alice", _) => Verdict::Bad {
                    user: user.into(),
                    why: "bad password",
                },
                _ => Verdict::Bad {
                    user: user.into(),
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
                    user: String::new(),
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
                    user: String::new(),
                    why: "bad session",
                },
            }
        }
    }

    fn get(cfg: &Config, target: &str, extra: &str) -> Result<Grant, Reason> {
        let raw = format!("GET {target} HTTP/1.1\r\n{UPGRADE}{extra}\r\n");
        decide(&request(&raw), &Target::parse(target)?, cfg, &Fake, None)
    }

    const ORIGIN: &str = "Origin: https://app.example.com\r\n";

    #[test]
    fn head_checks_give_each_malformation_its_status() {
        assert_eq!(head(&format!("GET / HTTP/1.1\r\n{UPGRADE}\r\n")), Ok(()));
        assert_eq!(
            head(&format!("POST / HTTP/1.1\r\n{UPGRADE}\r\n")),
            Err(Reason::Method)
        );
        assert_eq!(
            head(&format!("GET / HTTP/1.0\r\n{UPGRADE}\r\n")),
            Err(Reason::HttpVersion)
        );
        assert_eq!(
            head(&format!(
                "GET / HTTP/1.1\r\n{}\r\n",
                UPGRADE.replace("Host: h\r\n", "")
            )),
            Err(Reason::NotUpgrade)
        );
        assert_eq!(
            head(&format!(
                "GET / HTTP/1.1\r\n{}\r\n",
                UPGRADE.replace("Upgrade: websocket", "Upgrade: h2c")
            )),
            Err(Reason::NotUpgrade)
        );
        assert_eq!(
            head(&format!(
                "GET / HTTP/1.1\r\n{}\r\n",
                UPGRADE.replace("Upgrade: websocket\r\n", "")
            )),
            Err(Reason::PlainHttp)
        );
        assert_eq!(
            head("GET /favicon.ico HTTP/1.1\r\nHost: h\r\n\r\n"),
            Err(Reason::PlainHttp)
        );
        assert_eq!(
            head(&format!(
                "GET / HTTP/1.1\r\n{}\r\n",
                UPGRADE.replace("Version: 13", "Version: 8")
            )),
            Err(Reason::WsVersion)
        );
        assert_eq!(
            head(&format!(
                "GET / HTTP/1.1\r\n{}\r\n",
                UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")
            )),
            Err(Reason::BadKey)
        );
        // As tungstenite reads them (issue 11): one Upgrade header that is exactly websocket,
        // one Connection header listing upgrade, no body.
        for (from, to, want) in [
            (
                "Upgrade: websocket",
                "Upgrade: websocket, h2c",
                Some(Reason::NotUpgrade),
            ),
            ("Upgrade: websocket", "Upgrade: WebSocket ", None),
            (
                "Upgrade: websocket",
                "Upgrade: websocket\r\nUpgrade: websocket",
                Some(Reason::NotUpgrade),
            ),
            (
                "Connection: keep-alive, Upgrade",
                "Connection: keep-alive\r\nConnection: Upgrade",
                Some(Reason::NotUpgrade),
            ),
            (
                "Connection: keep-alive, Upgrade",
                "Connection: upgrade",
                None,
            ),
            (
                "Host: h",
                "Host: h\r\nContent-Length: 0",
                Some(Reason::Malformed),
            ),
            (
                "Host: h",
                "Host: h\r\nTransfer-Encoding: chunked",
                Some(Reason::Malformed),
            ),
        ] {
            let want = want.map_or(Ok(()), Err);
            let raw = format!("GET / HTTP/1.1\r\n{}\r\n", UPGRADE.replace(from, to));
            assert_eq!(head(&raw), want, "{to}");
        }
        assert_eq!(
            Reason::WsVersion.response().headers()["sec-websocket-version"],
            "13"
        );
        assert_eq!(Reason::Method.status(), 405);
    }

    #[test]
    fn decide_checks_path_then_origin_then_credentials_then_roles() {
        let cfg = config();
        // Basic "alice:pw"
        let basic = "Authorization: Basic YWxpY2U6cHc=\r\n";
        assert_eq!(get(&cfg, "/nope", basic).unwrap_err(), Reason::UnknownPath);
        assert_eq!(
            get(
                &cfg,
                "/echo",
                &format!("{basic}Origin: https://evil.example\r\n")
            )
            .unwrap_err(),
            Reason::Origin(OriginRefusal::NotAllowed)
        );
        // allow_missing defaults to false: no Origin is refused.
        assert_eq!(
            get(&cfg, "/echo", basic).unwrap_err(),
            Reason::Origin(OriginRefusal::Missing)
        );
        assert_eq!(
            get(&cfg, "/echo", ORIGIN).unwrap_err(),
            Reason::NoCredentials
        );
        let grant = get(&cfg, "/chat/room?x=1", &format!("{basic}{ORIGIN}")).unwrap();
        assert_eq!(
            (grant.user.as_deref(), grant.path.as_str()),
            (Some("alice"), "/chat/room")
        );
        assert_eq!(grant.method, Method::Password);
        assert!(grant.may_publish);
        assert_eq!(
            get(&cfg, "/echo?user=alice&pass=pw", ORIGIN)
                .unwrap()
                .user
                .as_deref(),
            Some("alice")
        );
        assert_eq!(
            get(&cfg, "/echo?user=alice&pass=bad", ORIGIN).unwrap_err(),
            Reason::BadCredentials {
                user: "alice".into(),
                why: "bad password"
            }
        );
        assert_eq!(
            get(&cfg, "/echo?user=locked&pass=x", ORIGIN)
                .unwrap_err()
                .status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            get(&cfg, "/echo?user=slow&pass=x", ORIGIN).unwrap_err(),
            Reason::Busy
        );
        // A role that may subscribe but not publish; no role at all for /private.
        let grant = get(&cfg, "/feed", &format!("{basic}{ORIGIN}")).unwrap();
        assert!(!grant.may_publish);
        assert_eq!(
            get(&cfg, "/private", &format!("{basic}{ORIGIN}")).unwrap_err(),
            Reason::Forbidden {
                user: "alice".into()
            }
        );
    }

    #[test]
    fn tokens_and_sessions_are_taken_from_every_place() {
        let cfg = config();
        let ok = |target: &str, extra: &str| get(&cfg, target, &format!("{ORIGIN}{extra}"));
        let via_bearer = ok("/echo", "Authorization: Bearer wsg_good\r\n").unwrap();
        assert_eq!(
            (via_bearer.user.as_deref(), via_bearer.method),
            (Some("bob"), Method::ApiToken)
        );
        assert_eq!(
            ok("/echo?token=wsg_good", "").unwrap().user.as_deref(),
            Some("bob")
        );
        let via_protocol = ok(
            "/echo",
            "Sec-WebSocket-Protocol: wsgate.bearer.wsg_good, wsgate.v1\r\n",
        )
        .unwrap();
        assert_eq!(via_protocol.user.as_deref(), Some("bob"));
        assert_eq!(via_protocol.subprotocol, Some(SUBPROTOCOL));
        assert_eq!(
            ok(
                "/echo",
                "Sec-WebSocket-Protocol: wsgate.bearer.wsg_good\r\n"
            )
            .unwrap_err(),
            Reason::Subprotocol
        );
        let session = ok(
            "/echo",
            "Cookie: theme=dark; __Host-wsgate_session=s1.good\r\n",
        )
        .unwrap();
        assert_eq!(
            (
                session.user.as_deref(),
                session.method,
                session.session_id.as_deref()
            ),
            (Some("carol"), Method::Session, Some("sid1"))
        );
        assert_eq!(
            ok("/echo?session=s1.good", "").unwrap().method,
            Method::Session
        );
        assert_eq!(
            ok("/echo", "Authorization: Bearer s1.good\r\n")
                .unwrap()
                .method,
            Method::Session
        );
        assert_eq!(
            ok("/echo", "Authorization: Bearer wsg_bad\r\n").unwrap_err(),
            Reason::BadCredentials {
                user: String::new(),
                why: "bad token"
            }
        );
        assert_eq!(
            ok("/echo?session=s1.forged", "").unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        // No subprotocol is answered unless wsgate.v1 was offered.
        assert_eq!(ok("/echo?token=wsg_good", "").unwrap().subprotocol, None);
    }

    #[test]
    fn client_certificates_and_anonymous_channels() {
        let cfg = config();
        let raw = format!("GET /echo HTTP/1.1\r\n{UPGRADE}{ORIGIN}\r\n");
        let grant = decide(
            &request(&raw),
            &Target::parse("/echo").unwrap(),
            &cfg,
            &Fake,
            Some("alice"),
        )
        .unwrap();
        assert_eq!(
            (grant.user.as_deref(), grant.method),
            (Some("alice"), Method::ClientCert)
        );
        let anon = get(&cfg, "/public", ORIGIN).unwrap();
        assert_eq!(
            (anon.user, anon.method, anon.may_publish),
            (None, Method::Anonymous, false)
        );
        // Offered credentials are still checked on an anonymous channel.
        assert!(get(&cfg, "/public?user=alice&pass=bad", ORIGIN).is_err());
    }

    #[test]
    fn offered_credentials_parse_and_refuse_junk() {
        let mut h = HeaderMap::new();
        assert_eq!(offered(&h, Some("a=1")).unwrap().offer, None);
        assert_eq!(
            offered(&h, Some("user=al%2Bice&pass=p%2Bw+x"))
                .unwrap()
                .offer,
            Some(Offer::Password {
                user: "al+ice".into(),
                password: "p+w x".into()
            })
        );
        // A name the users file could not hold is malformed, and not carried to the log.
        assert_eq!(
            offered(&h, Some("user=al%20ice&pass=x")),
            Err(OfferError::Unusable(String::new()))
        );
        assert!(offered(&h, Some("user=alice")).is_err());
        assert!(offered(&h, Some("user=alice&pass=%zz")).is_err());
        assert!(offered(&h, Some("token=")).is_err());
        h.insert(
            http::header::AUTHORIZATION,
            "Basic YWxpY2U6cDp3".parse().unwrap(),
        ); // alice:p:w
        assert_eq!(
            offered(&h, None).unwrap().offer,
            Some(Offer::Password {
                user: "alice".into(),
                password: "p:w".into()
            })
        );
        h.insert(http::header::AUTHORIZATION, "Digest xyz".parse().unwrap());
        assert!(offered(&h, None).is_err());
        h.insert(http::header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(offered(&h, None).is_err());
        for offer in [
            Offer::Password {
                user: "u".into(),
                password: "s3cret".into(),
            },
            Offer::ApiToken("s3cret".into()),
            Offer::Session("s3cret".into()),
        ] {
            assert!(!format!("{offer:?}").contains("s3cret"));
        }
    }

    #[test]
    fn same_origin_uses_the_requests_host_header() {
        let mut cfg = config();
        // `UPGRADE` sends `Host: h`.
        let own = "Authorization: Basic YWxpY2U6cHc=\r\nOrigin: https://h\r\n";
        assert_eq!(
            get(&cfg, "/echo", own).unwrap_err(),
            Reason::Origin(OriginRefusal::NotAllowed)
        );
        cfg.origins.allow_same_origin = true;
        assert!(get(&cfg, "/echo", own).is_ok());
        assert_eq!(
            get(&cfg, "/echo", &own.replace("https://h", "https://h:8443")).unwrap_err(),
            Reason::Origin(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            get(&cfg, "/echo", &own.replace("https://h", "http://h")).unwrap_err(),
            Reason::Origin(OriginRefusal::NotAllowed)
        );
        // The allow list still works beside it.
        assert!(
            get(
                &cfg,
                "/echo",
                &format!("Authorization: Basic YWxpY2U6cHc=\r\n{ORIGIN}")
            )
            .is_ok()
        );
    }

    #[test]
    fn only_origin_form_targets_without_a_fragment_are_parsed() {
        let t = |raw: &str| Target::parse(raw).map(|t| (t.path, t.query));
        assert_eq!(t("/a/b"), Ok(("/a/b".into(), None)));
        assert_eq!(t("/a/b?x=1&y"), Ok(("/a/b".into(), Some("x=1&y".into()))));
        assert_eq!(t("/a/b?"), Ok(("/a/b".into(), Some(String::new()))));
        assert_eq!(t("/a/%62"), Ok(("/a/%62".into(), None)));
        for bad in [
            "https://localhost/a/b",
            "wss://localhost/a/b",
            "localhost:443",
            "*",
            "/a/b#x",
            "/a/b#/../x",
            "/a/b?q#x",
            "/a/<b>",
            "/a/`b`",
            "",
        ] {
            assert_eq!(t(bad), Err(Reason::Target), "{bad}");
        }
        // The one parse feeds the decision: the path and the query both come from it.
        let cfg = config();
        let grant = get(&cfg, "/chat/a?user=alice&pass=pw", ORIGIN).unwrap();
        assert_eq!(
            (grant.path.as_str(), grant.user.as_deref()),
            ("/chat/a", Some("alice"))
        );
        assert_eq!(get(&cfg, "/chat/a#x", ORIGIN).unwrap_err(), Reason::Target);
    }

    #[test]
    fn routes_refuse_dot_and_empty_segments() {
        let cfg = config();
        assert!(route("/echo", &cfg).is_ok());
        assert!(route("/chat/a", &cfg).is_ok());
        for bad in [
            "/chat/../echo",
            "/chat/./a",
            "/chat//a",
            "/chat/",
            "echo",
            "/chat/a b",
            "/nope",
        ] {
            assert_eq!(route(bad, &cfg).unwrap_err(), Reason::UnknownPath, "{bad}");
        }
        assert_eq!(safe_user("a\nb\u{7}"), "a\\nb\\u{7}");
    }

    #[test]
    fn the_session_cookie_needs_an_explicitly_allowed_origin() {
        let mut cfg = config();
        cfg.origins.allow_any = true;
        cfg.origins.allow_missing = true;
        let cookie = "Cookie: __Host-wsgate_session=s1.good\r\n";
        for origin in ["https://evil.example", "null"] {
            assert_eq!(
                get(&cfg, "/echo", &format!("{cookie}Origin: {origin}\r\n")).unwrap_err(),
                Reason::Origin(OriginRefusal::NotAllowed),
                "{origin}"
            );
        }
        assert_eq!(
            get(&cfg, "/echo", cookie).unwrap_err(),
            Reason::Origin(OriginRefusal::Missing)
        );
        let grant = get(&cfg, "/echo", &format!("{cookie}{ORIGIN}")).unwrap();
        assert_eq!(grant.method, Method::Session);
        assert!(grant.browser);
        // The same token as a query or bearer is not the cookie: allow_any applies as usual.
        let by_query = get(
            &cfg,
            "/echo?session=s1.good",
            "Origin: https://evil.example\r\n",
        );
        assert!(by_query.is_ok());
        assert!(!get(&cfg, "/echo?session=s1.good", "").unwrap().browser);
    }

    #[test]
    fn malformed_user_names_are_never_carried_to_the_log() {
        let cfg = config();
        for target in [
            "/echo?user=alice;pass=secret",
            "/echo?user=alice;pass=secret&pass=x",
            "/echo?user=al%0Aice&pass=x",
        ] {
            assert_eq!(
                get(&cfg, target, ORIGIN).unwrap_err(),
                Reason::BadCredentials {
                    user: String::new(),
                    why: "malformed credentials"
                },
                "{target}"
            );
        }
        // A valid name without a password is still named.
        assert_eq!(
            get(&cfg, "/echo?user=alice", ORIGIN).unwrap_err(),
            Reason::BadCredentials {
                user: "alice".into(),
                why: "malformed credentials"
            }
        );
    }

    /// Credentials as a reload sees them: alice's password hash is [1;32], token [2;32] is
    /// bob's, carol's fingerprint is [3;8], certificates signed "good" are trusted.
    struct Now {
        deleted: &'static [&'static str],
    }

    impl CredentialState for Now {
        fn password_hash(&self, user: &str) -> Option<[u8; 32]> {
            (!self.deleted.contains(&user)).then_some(if user == "alice" {
                [1; 32]
            } else {
                [9; 32]
            })
        }
        fn token_owner(&self, digest: &[u8; 32]) -> Option<String> {
            (*digest == [2; 32]).then(|| "bob".to_string())
        }
        fn fingerprint(&self, user: &str) -> Option<[u8; 8]> {
            self.password_hash(user).map(|_| [3; 8])
        }
        fn client_cert_trusted(&self, chain: &[CertificateDer<'static>]) -> bool {
            chain.first().is_some_and(|c| c.as_ref() == b"good")
        }
        // Key [6;8]; sessions that started before 10 are past their max age.
        fn session_accepted(&self, key_id: &[u8; 8], login_unix: u64) -> bool {
            *key_id == [6; 8] && login_unix >= 10
        }
    }

    fn holder(user: Option<&str>, proof: Proof) -> Holder {
        Holder {
            user: user.map(str::to_string),
            may_publish: false,
            proof,
        }
    }

    #[test]
    fn recheck_asks_each_credential_kind_whether_it_still_holds() {
        let cfg = config();
        let now = Now { deleted: &[] };
        let session_with = |login_unix, key_id| Proof::Session {
            fingerprint: [3; 8],
            login_unix,
            key_id,
        };
        let session = session_with(10, [6; 8]);
        let cert = |der: &'static [u8]| Proof::ClientCert {
            chain: vec![CertificateDer::from(der)],
        };
        let cases: &[(Option<&str>, Proof, Result<(), Revocation>)] = &[
            (Some("alice"), Proof::Password { hash: [1; 32] }, Ok(())),
            // A new password: the old one no longer proves alice.
            (
                Some("alice"),
                Proof::Password { hash: [7; 32] },
                Err(Revocation::Credential),
            ),
            (Some("bob"), Proof::ApiToken { digest: [2; 32] }, Ok(())),
            // Revoked token; a token that is someone else's.
            (
                Some("bob"),
                Proof::ApiToken { digest: [5; 32] },
                Err(Revocation::Credential),
            ),
            (
                Some("alice"),
                Proof::ApiToken { digest: [2; 32] },
                Err(Revocation::Credential),
            ),
            (Some("carol"), session.clone(), Ok(())),
            (
                Some("carol"),
                Proof::Session {
                    fingerprint: [4; 8],
                    login_unix: 10,
                    key_id: [6; 8],
                },
                Err(Revocation::Credential),
            ),
            // Signed with a key that was replaced since; past session_max_age.
            (
                Some("carol"),
                session_with(10, [7; 8]),
                Err(Revocation::Credential),
            ),
            (
                Some("carol"),
                session_with(9, [6; 8]),
                Err(Revocation::Credential),
            ),
            (Some("dave"), cert(b"good"), Ok(())),
            (Some("dave"), cert(b"other CA"), Err(Revocation::Credential)),
            (
                Some("dave"),
                Proof::ClientCert { chain: vec![] },
                Err(Revocation::Credential),
            ),
            (None, Proof::Anonymous, Err(Revocation::Access)), // /echo is not anonymous
            (Some("x"), Proof::Anonymous, Err(Revocation::Credential)),
        ];
        for (user, proof, want) in cases {
            let got = recheck(&holder(*user, proof.clone()), "/echo", &cfg, &now);
            assert_eq!(got, *want, "{user:?} {proof:?}");
        }
        // Deleting bob orphans his token and ends his session; alice is untouched.
        let gone = Now { deleted: &["bob"] };
        let bob_token = holder(Some("bob"), Proof::ApiToken { digest: [2; 32] });
        assert_eq!(
            recheck(&bob_token, "/echo", &cfg, &gone),
            Err(Revocation::Credential)
        );
        assert_eq!(
            recheck(&holder(Some("bob"), session), "/echo", &cfg, &gone),
            Err(Revocation::Credential)
        );
        let alice = holder(Some("alice"), Proof::Password { hash: [1; 32] });
        assert_eq!(recheck(&alice, "/echo", &cfg, &gone), Ok(()));
        // The credential holds but the roles no longer allow: access revoked.
        assert_eq!(
            recheck(&alice, "/private", &cfg, &now),
            Err(Revocation::Access)
        );
        let publisher = Holder {
            may_publish: true,
            ..alice.clone()
        };
        assert_eq!(
            recheck(&publisher, "/feed", &cfg, &now),
            Err(Revocation::Access)
        );
        assert_eq!(recheck(&publisher, "/chat/a", &cfg, &now), Ok(()));
        assert_eq!(Revocation::Credential.close_reason(), "credential revoked");
    }
}
