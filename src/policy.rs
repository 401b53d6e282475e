//! The upgrade decisions, as pure functions over a parsed request: is this a well-formed WebSocket
//! upgrade, which channel serves the path, is the Origin allowed, who is asking. No sockets, no
//! logging: callers turn a [`Reason`] into its HTTP status and log it once.

use std::fmt;

use tungstenite::handshake::server::{ErrorResponse, Request};
use tungstenite::http::{self, HeaderMap, StatusCode};

use crate::config::{ChannelConfig, Config};
use crate::origin::OriginRefusal;
use crate::users::AuthOutcome;

/// Longest user name we look up or log; longer ones are refused unread.
pub const MAX_USER_LEN: usize = 64;
/// Longest password we hand to Argon2.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Why an upgrade request is refused. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Unparseable request line or headers (bare CR, NUL, bad token…). 400.
    Malformed,
    /// Request line plus headers longer than `max_request_head`. 431.
    HeadTooLarge,
    /// More header lines than `max_headers`. 431.
    TooManyHeaders,
    /// Not `GET`. 405.
    Method,
    /// Not HTTP/1.1. 400.
    HttpVersion,
    /// Missing `Host`, `Upgrade: websocket` or `Connection: Upgrade`. 400 (426 when the
    /// request is otherwise plain HTTP: it needs to upgrade).
    NotUpgrade,
    /// `Sec-WebSocket-Key` missing or not 16 base64-encoded bytes. 400.
    BadKey,
    /// `Sec-WebSocket-Version` other than 13. 426.
    WsVersion,
    /// No channel serves this path. 404.
    UnknownPath,
    /// The Origin is not allowed. 403.
    Origin(OriginRefusal),
    /// No credentials were offered. 401.
    NoCredentials,
    /// Credentials were offered and are wrong (unknown user or bad password: same answer). 401.
    BadCredentials { user: String, unknown_user: bool },
    /// The server is shutting down. 503.
    ShuttingDown,
}

impl Reason {
    pub fn status(&self) -> StatusCode {
        match self {
            Reason::Malformed | Reason::HttpVersion | Reason::NotUpgrade | Reason::BadKey => {
                StatusCode::BAD_REQUEST
            }
            Reason::HeadTooLarge | Reason::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Reason::Method => StatusCode::METHOD_NOT_ALLOWED,
            Reason::WsVersion => StatusCode::UPGRADE_REQUIRED,
            Reason::UnknownPath => StatusCode::NOT_FOUND,
            Reason::Origin(_) => StatusCode::FORBIDDEN,
            Reason::NoCredentials | Reason::BadCredentials { .. } => StatusCode::UNAUTHORIZED,
            Reason::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The response sent for this refusal: status, a one-line body, `Connection: close`, and the
    /// header the status calls for (`WWW-Authenticate`, `Sec-WebSocket-Version`, `Allow`).
    pub fn response(&self) -> ErrorResponse {
        let status = self.status();
        let body = format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
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
            Reason::ShuttingDown => builder.header("Retry-After", "5"),
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
            Reason::HeadTooLarge => f.write_str("request head too large"),
            Reason::TooManyHeaders => f.write_str("too many headers"),
            Reason::Method => f.write_str("method not GET"),
            Reason::HttpVersion => f.write_str("not HTTP/1.1"),
            Reason::NotUpgrade => f.write_str("not a websocket upgrade"),
            Reason::BadKey => f.write_str("bad Sec-WebSocket-Key"),
            Reason::WsVersion => f.write_str("unsupported Sec-WebSocket-Version"),
            Reason::UnknownPath => f.write_str("unknown path"),
            Reason::Origin(r) => write!(f, "{r}"),
            Reason::NoCredentials => f.write_str("no credentials"),
            Reason::BadCredentials {
                unknown_user: true, ..
            } => f.write_str("unknown user"),
            Reason::BadCredentials {
                unknown_user: false,
                ..
            } => f.write_str("bad password"),
            Reason::ShuttingDown => f.write_str("shutting down"),
        }
    }
}

/// What an accepted upgrade is allowed: who, which channel, which path (the broadcast group).
#[derive(Debug, Clone)]
pub struct Grant {
    pub user: String,
    pub path: String,
    pub channel: ChannelConfig,
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
    let has_token = |name: &str, token: &str| {
        header(name).iter().any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Reason::NotUpgrade);
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

/// Credentials as offered by a client. `Debug` never shows the password.
#[derive(PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Finds credentials: `Authorization: Basic` first, else `?user=&pass=` in the query.
/// `Ok(None)` when none are offered; `Err(user)` when some are offered but unusable
/// (bad base64, no colon, not UTF-8, too long, two Authorization headers).
pub fn credentials(
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<Credentials>, String> {
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    if let Some(value) = auth.next() {
        if auth.next().is_some() {
            return Err(String::new());
        }
        let value = value.as_bytes();
        let Some(b64) = value
            .get(..6)
            .filter(|s| s.eq_ignore_ascii_case(b"basic "))
            .map(|_| value[6..].trim_ascii())
        else {
            return Err(String::new());
        };
        let decoded = data_encoding::BASE64
            .decode(b64)
            .map_err(|_| String::new())?;
        let text = String::from_utf8(decoded).map_err(|_| String::new())?;
        let (user, password) = text.split_once(':').ok_or_else(String::new)?;
        return checked(user.to_string(), password.to_string()).map(Some);
    }
    let Some(query) = query else { return Ok(None) };
    let (mut user, mut password) = (None, None);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "user" => user = Some(percent_decode(v).ok_or_else(String::new)?),
            "pass" => password = Some(percent_decode(v).ok_or_else(String::new)?),
            _ => {}
        }
    }
    match (user, password) {
        (None, None) => Ok(None),
        (Some(user), Some(password)) => checked(user, password).map(Some),
        (Some(user), None) => Err(safe_user(&user)),
        (None, Some(_)) => Err(String::new()),
    }
}

fn checked(user: String, password: String) -> Result<Credentials, String> {
    if user.is_empty()
        || user.len() > MAX_USER_LEN
        || user.chars().any(char::is_control)
        || password.len() > MAX_PASSWORD_LEN
    {
        return Err(safe_user(&user));
    }
    Ok(Credentials { user, password })
}

/// A user name fit for a log line: control characters escaped, length capped.
pub fn safe_user(user: &str) -> String {
    user.chars()
        .take(MAX_USER_LEN)
        .flat_map(char::escape_debug)
        .collect()
}

/// Decodes `%XX` escapes and `+` (as space), as `application/x-www-form-urlencoded` does.
fn percent_decode(s: &str) -> Option<String> {
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

/// The upgrade decision, in order: path (404), Origin (403), credentials (401).
/// `verify` checks a user name and password (Argon2 behind a cache in the server; a stub in tests).
///
/// # Errors
/// The [`Reason`] for refusing.
pub fn decide(
    req: &Request,
    config: &Config,
    verify: impl FnOnce(&str, &str) -> AuthOutcome,
) -> Result<Grant, Reason> {
    let path = req.uri().path();
    let channel = route(path, config)?;
    let origins: Vec<&[u8]> = req
        .headers()
        .get_all(http::header::ORIGIN)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    config.origins.check(&origins).map_err(Reason::Origin)?;
    let creds = match credentials(req.headers(), req.uri().query()) {
        Ok(Some(c)) => c,
        Ok(None) => return Err(Reason::NoCredentials),
        Err(user) => {
            return Err(Reason::BadCredentials {
                user,
                unknown_user: false,
            });
        }
    };
    match verify(&creds.user, &creds.password) {
        AuthOutcome::Ok => Ok(Grant {
            user: creds.user,
            path: path.to_string(),
            channel: channel.clone(),
        }),
        outcome => Err(Reason::BadCredentials {
            user: safe_user(&creds.user),
            unknown_user: outcome == AuthOutcome::UnknownUser,
        }),
    }
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
             [channel:/echo]\nmode = echo\n[channel:/chat/*]\nmode = broadcast\n",
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

    fn alice_ok(user: &str, pass: &str) -> AuthOutcome {
        match (user, pass) {
            ("alice", "pw") => AuthOutcome::Ok,
            ("alice", _) => AuthOutcome::BadPassword,
            _ => AuthOutcome::UnknownUser,
        }
    }

    #[test]
    fn head_checks_give_each_malformation_its_status() {
        let with = |first: &str, from: &str, to: &str| {
            head(&format!("{first}\r\n{}\r\n", UPGRADE.replace(from, to)))
        };
        assert_eq!(with("GET / HTTP/1.1", "", ""), Ok(()));
        let cases = [
            ("POST / HTTP/1.1", "", "", Reason::Method),
            ("GET / HTTP/1.0", "", "", Reason::HttpVersion),
            ("GET / HTTP/1.1", "Host: h\r\n", "", Reason::NotUpgrade),
            (
                "GET / HTTP/1.1",
                "Upgrade: websocket",
                "Upgrade: h2c",
                Reason::NotUpgrade,
            ),
            (
                "GET / HTTP/1.1",
                "Version: 13",
                "Version: 8",
                Reason::WsVersion,
            ),
            (
                "GET / HTTP/1.1",
                "dGhlIHNhbXBsZSBub25jZQ==",
                "c2hvcnQ=",
                Reason::BadKey,
            ),
        ];
        for (first, from, to, reason) in cases {
            assert_eq!(with(first, from, to), Err(reason), "{first} {from} -> {to}");
        }
        assert_eq!(
            Reason::WsVersion.response().headers()["sec-websocket-version"],
            "13"
        );
        assert_eq!(Reason::Method.status(), 405);
    }

    #[test]
    fn decide_checks_path_then_origin_then_credentials() {
        let cfg = config();
        let get = |target: &str, extra: &str| {
            decide(
                &request(&format!("GET {target} HTTP/1.1\r\n{UPGRADE}{extra}\r\n")),
                &cfg,
                alice_ok,
            )
        };
        // Basic "alice:pw"
        let basic = "Authorization: Basic YWxpY2U6cHc=\r\n";
        assert_eq!(get("/nope", basic).unwrap_err(), Reason::UnknownPath);
        assert_eq!(
            get("/echo", &format!("{basic}Origin: https://evil.example\r\n")).unwrap_err(),
            Reason::Origin(OriginRefusal::NotAllowed)
        );
        // allow_missing defaults to false: no Origin is refused.
        assert_eq!(
            get("/echo", basic).unwrap_err(),
            Reason::Origin(OriginRefusal::Missing)
        );
        let origin = "Origin: https://app.example.com\r\n";
        assert_eq!(get("/echo", origin).unwrap_err(), Reason::NoCredentials);
        let grant = get("/chat/room?x=1", &format!("{basic}{origin}")).unwrap();
        assert_eq!(
            (grant.user.as_str(), grant.path.as_str()),
            ("alice", "/chat/room")
        );
        let grant = get("/echo?user=alice&pass=pw", origin).unwrap();
        assert_eq!(grant.user, "alice");
        assert_eq!(
            get("/echo?user=alice&pass=bad", origin).unwrap_err(),
            Reason::BadCredentials {
                user: "alice".into(),
                unknown_user: false
            }
        );
        assert_eq!(
            get("/echo?user=bob&pass=pw", origin).unwrap_err(),
            Reason::BadCredentials {
                user: "bob".into(),
                unknown_user: true
            }
        );
    }

    #[test]
    fn credentials_parse_basic_and_query_and_refuse_junk() {
        let mut h = HeaderMap::new();
        assert_eq!(credentials(&h, Some("a=1")), Ok(None));
        assert_eq!(
            credentials(&h, Some("user=al%20ice&pass=p%2Bw+x"))
                .unwrap()
                .unwrap(),
            Credentials {
                user: "al ice".into(),
                password: "p+w x".into()
            }
        );
        assert!(credentials(&h, Some("user=alice")).is_err());
        assert!(credentials(&h, Some("user=alice&pass=%zz")).is_err());
        h.insert(
            http::header::AUTHORIZATION,
            "Basic YWxpY2U6cDp3".parse().unwrap(),
        ); // alice:p:w
        assert_eq!(credentials(&h, None).unwrap().unwrap().password, "p:w");
        h.insert(http::header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert!(credentials(&h, None).is_err());
        h.insert(http::header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(credentials(&h, None).is_err());
        assert!(
            !format!(
                "{:?}",
                Credentials {
                    user: "u".into(),
                    password: "s3cret".into()
                }
            )
            .contains("s3cret")
        );
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
}
