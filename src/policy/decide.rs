//! The upgrade decision ([`decide`]): path, Origin, credentials (asked through the
//! [`Verifier`]), roles; the [`Grant`] it gives and the [`Proof`] it keeps; the channel
//! [`route`]; and the demo page's login ([`decide_login`]), checked like a password upgrade.

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tungstenite::handshake::server::Request;
use tungstenite::http::{self};

use super::head::Target;
use super::offer::{Offer, OfferError, Offered, from_query, offered};
use super::recall::{Recall, recall};
use super::{ENVELOPE_SUBPROTOCOL, LogSafeUser, Method, Reason, safe_origin, safe_path};
use crate::config::{ChannelConfig, ChannelId, Config};
use crate::rules::acl;
use crate::rules::origin::OriginRefusal;

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
    /// The channel serving `path`, in the config the upgrade was decided against: whatever was
    /// built from that config for the channel (a proxy channel's backend, ready to dial) is
    /// found by it, with no second lookup.
    pub channel: ChannelId,
    pub may_publish: bool,
    pub subprotocol: Option<&'static str>,
    /// Broadcasts reach this client in the envelope (`wsgate.v1.json`, answered on broadcast
    /// channels only).
    pub envelope: bool,
    /// What the client asked of the channel's history (`Live` on a channel without one).
    pub recall: Recall,
    /// What proved the user, kept so a reload can ask whether it still holds ([`recheck`]).
    pub proof: Proof,
    /// The request came from a browser (it carried an allowed `Origin`): only then is the session
    /// also set as a cookie.
    pub browser: bool,
}

impl Grant {
    /// The user name for log lines (`-` when anonymous), control characters escaped.
    pub fn log_user(&self) -> LogSafeUser {
        LogSafeUser::new(self.user.as_deref().unwrap_or("-"))
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
    Bad {
        user: LogSafeUser,
        why: &'static str,
    },
    /// Too many recent failures: answered without checking anything.
    Throttled {
        user: LogSafeUser,
        retry_after: Duration,
    },
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

/// The channel serving `path`, refusing paths with dot or empty segments.
///
/// # Errors
/// [`Reason::UnknownPath`].
pub fn route<'c>(path: &str, config: &'c Config) -> Result<&'c ChannelConfig, Reason> {
    route_id(path, config).map(|id| config.channel(id))
}

/// [`route`]'s channel as its [`ChannelId`] in `config`.
///
/// # Errors
/// [`Reason::UnknownPath`].
fn route_id(path: &str, config: &Config) -> Result<ChannelId, Reason> {
    let clean = path.starts_with('/')
        && path.len() <= 1024
        && !path[1..]
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        && path.bytes().all(|b| b.is_ascii_graphic());
    if !clean {
        return Err(Reason::UnknownPath);
    }
    config.channel_id_for(path).ok_or(Reason::UnknownPath)
}

/// What `user` may do on `channel` (the one serving `path`), the roles being `config`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Allowed {
    pub(crate) may_publish: bool,
}

/// Why [`channel_rights`] keeps a user off a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// An anonymous client on a channel without `anonymous = true`.
    NeedsUser,
    /// No role lets this user (or the `anonymous` role) subscribe to the path.
    NoRole,
}

/// Who may use a channel: an anonymous client (`user` None) only a channel with
/// `anonymous = true`, and anyone only with a role that lets them subscribe to `path`; publishing
/// takes a role that lets them publish. The one home of this rule: the upgrade applies it
/// ([`decide`]) and every reload applies it again to each live connection
/// ([`super::access_holds`]).
///
/// # Errors
/// The [`Denied`] that keeps the user off.
pub(crate) fn channel_rights(
    config: &Config,
    channel: &ChannelConfig,
    user: Option<&str>,
    path: &str,
) -> Result<Allowed, Denied> {
    if user.is_none() && !channel.anonymous {
        return Err(Denied::NeedsUser);
    }
    let access = acl::evaluate(&config.roles, user, path);
    if !access.can_subscribe() {
        return Err(Denied::NoRole);
    }
    Ok(Allowed {
        may_publish: access.can_publish(),
    })
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
    // One piece: the checks in the order their statuses take precedence (404, 403, then
    // 401/429/503, then 403), read top to bottom.
    let path = target.path.as_str();
    let channel_id = route_id(path, config)?;
    let channel = config.channel(channel_id);
    let origins: Vec<&[u8]> = req
        .headers()
        .get_all(http::header::ORIGIN)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let host = req.headers().get(http::header::HOST).map(|h| h.as_bytes());
    let refused = |refusal| Reason::Origin {
        refusal,
        origin: safe_origin(&origins),
    };
    config
        .origins
        .check_request(&origins, host)
        .map_err(refused)?;
    let Offered {
        offer,
        cookie,
        subprotocol,
        envelope,
    } = match offered(req.headers(), target.query.as_deref()) {
        Ok(found) => found,
        Err(OfferError::Unusable(user)) => {
            return Err(Reason::BadCredentials {
                user: LogSafeUser::new(&user),
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
            .map_err(refused)?;
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
            // A certificate's name is a user name like any other: the users file's rule holds
            // for it too, so no name with a control character, a space or a quote is ever let
            // in, forwarded to a backend or written unescaped to a log.
            Some(user) if crate::rules::user_name::check_user_name(user).is_err() => {
                return Err(Reason::BadCredentials {
                    user: LogSafeUser::new(user),
                    why: "client certificate names no valid user",
                });
            }
            Some(user) => (
                Some(user.to_string()),
                Method::ClientCert,
                None,
                Proof::ClientCert { chain: Vec::new() },
            ),
            // Let in only where the channel takes anonymous clients ([`channel_rights`]).
            None => (None, Method::Anonymous, None, Proof::Anonymous),
        },
    };
    let allowed =
        channel_rights(config, channel, user.as_deref(), path).map_err(|denied| match denied {
            Denied::NeedsUser => Reason::NoCredentials,
            Denied::NoRole => Reason::Forbidden {
                user: user.as_deref().map(LogSafeUser::new).unwrap_or_default(),
                path: safe_path(path),
            },
        })?;
    // The envelope wraps broadcasts: it is answered on broadcast channels only. History
    // requests exist only where a history is kept: elsewhere `last`/`since` are the app's keys.
    let envelope = envelope && channel.mode() == crate::config::Mode::Broadcast;
    let recall = match channel.history {
        Some(_) => recall(target.query.as_deref(), envelope).map_err(Reason::Recall)?,
        None => Recall::Live,
    };
    Ok(Grant {
        user,
        method,
        session_id,
        path: path.to_string(),
        query: target.query.clone(),
        channel: channel_id,
        may_publish: allowed.may_publish,
        subprotocol: if envelope {
            Some(ENVELOPE_SUBPROTOCOL)
        } else {
            subprotocol
        },
        envelope,
        recall,
        proof,
        browser: !origins.is_empty(),
    })
}

/// The demo page's log-out (`POST /logout`, `[demo] enabled`): the server answers by clearing the
/// session cookie in the browser. Like the login, only from an Origin the allow list (or
/// same-origin) names, so a foreign page cannot log a visitor out.
///
/// # Errors
/// [`Reason::Origin`].
pub fn decide_logout(
    origins: &[&[u8]],
    host: Option<&[u8]>,
    config: &Config,
) -> Result<(), Reason> {
    named_origin(origins, host, config)
}

/// What the demo page's own requests need, as the session cookie does: an Origin that `allow`
/// or `allow_same_origin` names (`allow_any` and `allow_missing` do not count).
fn named_origin(origins: &[&[u8]], host: Option<&[u8]>, config: &Config) -> Result<(), Reason> {
    let refused = |refusal| Reason::Origin {
        refusal,
        origin: safe_origin(origins),
    };
    if origins.is_empty() {
        return Err(refused(OriginRefusal::Missing));
    }
    config
        .origins
        .check_explicit(origins, host)
        .map_err(refused)
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
    named_origin(origins, host, config)?;
    let malformed = |user: &str| Reason::BadCredentials {
        user: LogSafeUser::new(user),
        why: "malformed login form",
    };
    let body = std::str::from_utf8(body).map_err(|_| malformed(""))?;
    let (user, password) = match from_query(Some(body.trim_end())) {
        Ok(Some(Offer::Password { user, password })) => (user, password),
        Ok(_) => return Err(malformed("")),
        Err(user) => return Err(malformed(&user)),
    };
    verifier
        .password(&user, &password)
        .proven()
        .map(|(user, _, _)| user)
}

#[cfg(test)]
mod tests {
    use tungstenite::http::StatusCode;

    use super::*;
    use crate::policy::SUBPROTOCOL;
    use crate::policy::fixtures::*;

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
            Reason::Origin {
                refusal: OriginRefusal::NotAllowed,
                origin: "\"https://evil.example\"".into()
            }
        );
        // allow_missing defaults to false: no Origin is refused.
        assert_eq!(
            get(&cfg, "/echo", basic).unwrap_err(),
            Reason::Origin {
                refusal: OriginRefusal::Missing,
                origin: String::new()
            }
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
                user: LogSafeUser::new("alice"),
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
                user: LogSafeUser::new("alice"),
                path: "/private".into()
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
                user: LogSafeUser::default(),
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
        // A certificate's name passes the users file's rule or is refused, escaped for the log.
        for (name, logged) in [
            ("ali\nce", "ali\\nce"),
            ("al ice", "al ice"),
            ("a\"b", "a\\\"b"),
            ("", ""),
        ] {
            let refused = decide(
                &request(&raw),
                &Target::parse("/echo").unwrap(),
                &cfg,
                &Fake,
                Some(name),
            )
            .unwrap_err();
            let Reason::BadCredentials { user, why } = refused else {
                panic!("{name:?}: {refused:?}");
            };
            assert_eq!(
                (user.as_str(), why),
                (logged, "client certificate names no valid user"),
                "{name:?}"
            );
        }
        let anon = get(&cfg, "/public", ORIGIN).unwrap();
        assert_eq!(
            (anon.user, anon.method, anon.may_publish),
            (None, Method::Anonymous, false)
        );
        // Offered credentials are still checked on an anonymous channel.
        assert!(get(&cfg, "/public?user=alice&pass=bad", ORIGIN).is_err());
    }

    #[test]
    fn same_origin_uses_the_requests_host_header() {
        let mut cfg = config();
        // `UPGRADE` sends `Host: h`.
        let own = "Authorization: Basic YWxpY2U6cHc=\r\nOrigin: https://h\r\n";
        assert_eq!(
            get(&cfg, "/echo", own).unwrap_err(),
            Reason::Origin {
                refusal: OriginRefusal::NotAllowed,
                origin: "\"https://h\"".into()
            }
        );
        cfg.origins.allow_same_origin = true;
        assert!(get(&cfg, "/echo", own).is_ok());
        assert_eq!(
            get(&cfg, "/echo", &own.replace("https://h", "https://h:8443")).unwrap_err(),
            Reason::Origin {
                refusal: OriginRefusal::NotAllowed,
                origin: "\"https://h:8443\"".into()
            }
        );
        assert_eq!(
            get(&cfg, "/echo", &own.replace("https://h", "http://h")).unwrap_err(),
            Reason::Origin {
                refusal: OriginRefusal::NotAllowed,
                origin: "\"http://h\"".into()
            }
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
        assert_eq!(LogSafeUser::new("a\nb\u{7}").as_str(), "a\\nb\\u{7}");
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
                Reason::Origin {
                    refusal: OriginRefusal::NotAllowed,
                    origin: format!("\"{origin}\"")
                },
                "{origin}"
            );
        }
        assert_eq!(
            get(&cfg, "/echo", cookie).unwrap_err(),
            Reason::Origin {
                refusal: OriginRefusal::Missing,
                origin: String::new()
            }
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
}
