//! What the backend request carries from the client's: the target ([`forward_target`]: the path
//! below the backend's, the query without credentials) and the identity headers wsgate sets
//! alone ([`identity_headers`]). Never a client header or a query credential.

use std::net::IpAddr;

use crate::config::Backend;
use crate::policy::Method;
use crate::rules::acl::ChannelPattern;

/// The identity headers on every backend request, set by wsgate alone: the request is built
/// fresh, so a header of these names that a client sent never reaches the backend.
pub const USER_HEADER: &str = "X-Wsgate-User";
/// How the client proved who it is: `password`, `token`, `session`, `client-cert`, `anonymous`.
pub const AUTH_HEADER: &str = "X-Wsgate-Auth";
/// The client's IP address (behind a load balancer, the one its PROXY header carried).
pub const CLIENT_HEADER: &str = "X-Forwarded-For";
/// Query keys that carry credentials; never forwarded.
pub const CREDENTIAL_KEYS: [&str; 4] = ["user", "pass", "token", "session"];

/// Who the client is, for the backend request's identity headers.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    pub user: Option<&'a str>,
    pub method: Method,
    pub client: IpAddr,
}

/// The backend request target: the backend URL's path, then the client's path after the channel
/// prefix (nothing for an exact channel), then the client's query without its credentials.
/// Pairs are split on `&` as [`crate::policy`] reads them; a pair is dropped when its key is a
/// [`CREDENTIAL_KEYS`] name in any spelling an app might read as one — percent-encoded once or
/// more (`us%65r`, `us%2565r`), in another letter case (`USER`), with a bracket suffix
/// (`user[]`), a NUL or control character, a non-ASCII letter that folds to ASCII (`to%E2%84%AAen`),
/// or behind a `;` (`room=1;user=x`, which some query parsers split) — or cannot be decoded at all
/// ([`may_read_as_a_credential`]). A naive app reading `?user=` must never see one the client
/// chose.
pub fn forward_target(
    backend: &Backend,
    pattern: &ChannelPattern,
    path: &str,
    query: Option<&str>,
) -> String {
    let rest = match pattern {
        ChannelPattern::Prefix(prefix) => path.strip_prefix(prefix.as_str()).unwrap_or(""),
        ChannelPattern::Exact(_) => "",
    };
    let mut target = backend.base_path.clone();
    if !rest.is_empty() {
        if !target.ends_with('/') {
            target.push('/');
        }
        target.push_str(rest);
    }
    let kept: Vec<&str> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.is_empty() && !names_a_credential(pair))
        .collect();
    if !kept.is_empty() {
        target.push('?');
        target.push_str(&kept.join("&"));
    }
    target
}

/// How many times a key is percent-decoded at most, as apps that decode more than once would: a
/// key still changing after that is taken for a credential.
const DECODE_ROUNDS: usize = 4;

/// Whether a query pair's key, or that of any `;`-separated part of it, may read as a credential
/// key in some app ([`may_read_as_a_credential`]).
fn names_a_credential(pair: &str) -> bool {
    pair.split(';').any(|part| {
        let key = part.split_once('=').map_or(part, |(k, _)| k);
        may_read_as_a_credential(key)
    })
}

/// Whether an app's query parser could read `key` as one of [`CREDENTIAL_KEYS`]: after
/// percent-decoding it until it stops changing (`us%2565r` is `user` to an app that decodes
/// twice), in any letter case, with a bracket suffix cut (`user[]`, `PASS[a]`: PHP, Rails and
/// Node's `qs` read the value under `user`), cut at a NUL (C strings) or with its control
/// characters dropped, and with surrounding whitespace trimmed. A key that does not decode, or
/// that decodes to anything but ASCII, counts too: Unicode case mapping and compatibility
/// folding make `to\u{212A}en` (Kelvin sign) `token` and `\u{17F}ession` (long s) `session`, and
/// fullwidth letters ASCII, so rather than follow every table no such key reaches an app.
fn may_read_as_a_credential(key: &str) -> bool {
    let mut key = key.to_string();
    for _ in 0..DECODE_ROUNDS {
        match crate::policy::percent_decode(&key) {
            None => return true,
            Some(decoded) if decoded == key => break,
            Some(decoded) => key = decoded,
        }
    }
    if crate::policy::percent_decode(&key).is_none_or(|more| more != key) || !key.is_ascii() {
        return true;
    }
    let names = |k: &str| {
        let name = k.split('[').next().unwrap_or(k).trim();
        CREDENTIAL_KEYS.iter().any(|c| name.eq_ignore_ascii_case(c))
    };
    let without_controls: String = key.chars().filter(|c| !c.is_ascii_control()).collect();
    names(&key) || names(key.split('\0').next().unwrap_or("")) || names(&without_controls)
}

/// The identity headers for `who`, in order. A user name is a checked name (no control
/// characters), so every value is a valid header value.
pub fn identity_headers(who: &Identity<'_>) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(3);
    if let Some(user) = who.user {
        headers.push((USER_HEADER, user.to_string()));
    }
    headers.push((AUTH_HEADER, who.method.to_string()));
    headers.push((CLIENT_HEADER, who.client.to_string()));
    headers
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::config::Endpoint;

    fn backend(base: &str) -> Backend {
        Backend {
            endpoint: Endpoint::Unix(PathBuf::from("/run/app.sock")),
            base_path: base.into(),
            ca: None,
            connect_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_path_after_the_prefix_goes_below_the_backend_path() {
        let prefix = ChannelPattern::Prefix("/app/".into());
        let b = backend("/");
        assert_eq!(forward_target(&b, &prefix, "/app/room/1", None), "/room/1");
        let b = backend("/ws");
        assert_eq!(forward_target(&b, &prefix, "/app/chat", None), "/ws/chat");
        let b = backend("/ws/");
        assert_eq!(forward_target(&b, &prefix, "/app/chat", None), "/ws/chat");
        let exact = ChannelPattern::Exact("/app".into());
        assert_eq!(forward_target(&b, &exact, "/app", None), "/ws/");
    }

    #[test]
    fn credentials_never_leave_the_query() {
        let prefix = ChannelPattern::Prefix("/app/".into());
        let b = backend("/");
        let cases = [
            ("user=alice&pass=pw&room=3", "/x?room=3"),
            ("token=t&session=s", "/x"),
            ("room=3&user=alice&lang=en&pass=", "/x?room=3&lang=en"),
            ("pass", "/x"),
            ("&&room=3&", "/x?room=3"),
            // Other keys stay, as sent.
            (
                "username=a&passes=b&q=%20x",
                "/x?username=a&passes=b&q=%20x",
            ),
            // Spellings an app may decode to a credential key are dropped too.
            ("us%65r=admin&room=3", "/x?room=3"),
            ("USER=admin&Pass=x&room=3", "/x?room=3"),
            ("room=3;user=admin&lang=en", "/x?lang=en"),
            ("us+er=a&user+=b&room=3", "/x?us+er=a&room=3"),
            ("%zz=1&room=3", "/x?room=3"),
            // Through every normalisation an app might apply.
            ("user[]=a&pass[]=b&room=3", "/x?room=3"),
            ("PASS[a]=x&Token[0][1]=t&room=3", "/x?room=3"),
            ("us%2565r=a&%2575ser=b&us%252565r=c&room=3", "/x?room=3"),
            (
                "to%E2%84%AAen=t&%C5%BFession=s&%EF%BD%95ser=u&room=3",
                "/x?room=3",
            ),
            (
                "user%00=a&user%00x=b&us%01er=c&%09pass=d&room=3",
                "/x?room=3",
            ),
            ("us%25252525252565r=a&room=3", "/x?room=3"),
            // A non-ASCII key is dropped whatever it is; near misses stay.
            ("caf%C3%A9=1&room=3", "/x?room=3"),
            (
                "user_id=1&users[]=2&passport=3&us%20er=4",
                "/x?user_id=1&users[]=2&passport=3&us%20er=4",
            ),
        ];
        for (query, want) in cases {
            assert_eq!(
                forward_target(&b, &prefix, "/app/x", Some(query)),
                want,
                "{query}"
            );
        }
    }

    #[test]
    fn identity_headers_name_the_user_the_method_and_the_address() {
        let who = Identity {
            user: Some("alice"),
            method: Method::Password,
            client: "192.0.2.7".parse().unwrap(),
        };
        assert_eq!(
            identity_headers(&who),
            vec![
                (USER_HEADER, "alice".to_string()),
                (AUTH_HEADER, "password".to_string()),
                (CLIENT_HEADER, "192.0.2.7".to_string()),
            ]
        );
        let anon = Identity {
            user: None,
            method: Method::Anonymous,
            client: "::1".parse().unwrap(),
        };
        assert_eq!(
            identity_headers(&anon),
            vec![
                (AUTH_HEADER, "anonymous".to_string()),
                (CLIENT_HEADER, "::1".to_string()),
            ]
        );
    }
}
