//! The credentials a request offers ([`offered`]), looked for in `Authorization`, a
//! `wsgate.bearer.` subprotocol, the query and the session cookie; checked for shape only (the
//! [`super::Verifier`] checks them), and never carried to a log unless well-formed.

use std::fmt;

use tungstenite::http::{self, HeaderMap};

use super::{
    BEARER_SUBPROTOCOL, ENVELOPE_SUBPROTOCOL, MAX_PASSWORD_LEN, MAX_TOKEN_LEN, SESSION_COOKIE,
    SUBPROTOCOL,
};

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
    /// `wsgate.v1.json` was listed: the client asks for the envelope (answered on broadcast
    /// channels only; the decision knows the channel).
    pub envelope: bool,
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
    let envelope = protocols.contains(&ENVELOPE_SUBPROTOCOL);
    let found = |offer| {
        Ok(Offered {
            offer,
            cookie: false,
            subprotocol,
            envelope,
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
        if subprotocol.is_none() && !envelope {
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
            envelope,
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
pub(super) fn from_query(query: Option<&str>) -> Result<Option<Offer>, String> {
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
    if crate::rules::user_name::check_user_name(&user).is_err() || password.len() > MAX_PASSWORD_LEN
    {
        return Err(loggable_user(&user));
    }
    Ok(Offer::Password { user, password })
}

/// The claimed user name as a log line may show it: as is when it is a valid user name, else
/// empty. A malformed value is never logged (it may hold a secret: `?user=alice;pass=secret`).
fn loggable_user(user: &str) -> String {
    if crate::rules::user_name::check_user_name(user).is_ok() {
        user.to_string()
    } else {
        String::new()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Reason;
    use crate::policy::fixtures::*;

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
                    user: crate::policy::LogSafeUser::default(),
                    why: "malformed credentials"
                },
                "{target}"
            );
        }
        // A valid name without a password is still named.
        assert_eq!(
            get(&cfg, "/echo?user=alice", ORIGIN).unwrap_err(),
            Reason::BadCredentials {
                user: crate::policy::LogSafeUser::new("alice"),
                why: "malformed credentials"
            }
        );
    }
}
