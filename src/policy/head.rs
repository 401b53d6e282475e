//! The request head before any decision: the request [`Target`] parsed once (origin-form only)
//! and [`check_head`], which gives every malformed upgrade its own status.

use tungstenite::http::{self};

use super::Reason;

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
    /// through but `http::Uri` refuses (`<`, `>`, `` ` ``); [`Reason::AmbiguousPath`] for a path
    /// another reader could resolve differently ([`readers_may_differ`]).
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
        if readers_may_differ(path) {
            return Err(Reason::AmbiguousPath);
        }
        Ok(Target {
            path: path.to_string(),
            query,
        })
    }
}

/// Code points that Unicode compatibility folding (NFKC, as some frameworks apply to paths)
/// turns into `.`, `/` or `\`: one dot leader, two dot leader, ellipsis, small full stop, small
/// reverse solidus, fullwidth full stop, solidus and reverse solidus.
const FOLDS_TO_A_SEPARATOR: [char; 8] = [
    '\u{2024}', '\u{2025}', '\u{2026}', '\u{FE52}', '\u{FE68}', '\u{FF0E}', '\u{FF0F}', '\u{FF3C}',
];

/// Whether some common reader of a path (a WHATWG URL parser such as Node's `new URL`, Python's
/// `urllib.parse.unquote` with `posixpath.normpath`, a servlet container, a static file server)
/// could resolve `path` to other segments than wsgate reads, which never decodes it: a
/// backslash (a segment separator to WHATWG URLs and Windows), a percent-encoded `.`, `/`, `\` or
/// `%` in any case (dot segments and separators after decoding; `%25` is double encoding), an
/// escape that is not two hex digits, an encoded control character, encoded bytes that are not
/// valid UTF-8 (overlong forms included) or that fold to a separator ([`FOLDS_TO_A_SEPARATOR`]),
/// and a segment that is a dot segment once its `;parameters` are cut (`..;x`, as servlet
/// containers read it). A path wsgate would refuse anyway (literal dot or empty segments: 404)
/// is left to [`super::route`].
pub fn readers_may_differ(path: &str) -> bool {
    if path.contains('\\') {
        return true;
    }
    let dot_with_parameters = path.split('/').any(|seg| {
        seg.split_once(';')
            .is_some_and(|(name, _)| name == "." || name == "..")
    });
    if dot_with_parameters {
        return true;
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        let Some(byte) = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        else {
            return true;
        };
        if matches!(byte, b'.' | b'/' | b'\\' | b'%') || byte.is_ascii_control() {
            return true;
        }
        decoded.push(byte);
        i += 3;
    }
    match std::str::from_utf8(&decoded) {
        Ok(text) => text.contains(FOLDS_TO_A_SEPARATOR),
        Err(_) => true,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fixtures::*;

    fn head(raw: &str) -> Result<(), Reason> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw.as_bytes()).unwrap().is_complete());
        check_head(&req)
    }

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
            head("GET /favicon.ico HTTP/1.1\r\nHost: h\r\n\r\n"),
            Err(Reason::PlainHttp)
        );
        // One header changed in a good upgrade: what each change gets. As tungstenite reads
        // them: one Upgrade header that is exactly websocket, one Connection header
        // listing upgrade, no body.
        for (from, to, want) in [
            ("Host: h\r\n", "", Some(Reason::NotUpgrade)),
            (
                "Upgrade: websocket",
                "Upgrade: h2c",
                Some(Reason::NotUpgrade),
            ),
            ("Upgrade: websocket\r\n", "", Some(Reason::PlainHttp)),
            ("Version: 13", "Version: 8", Some(Reason::WsVersion)),
            ("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=", Some(Reason::BadKey)),
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
            assert_eq!(head(&raw), want, "{from:?} -> {to:?}");
        }
        assert_eq!(
            Reason::WsVersion.response().headers()["sec-websocket-version"],
            "13"
        );
        assert_eq!(Reason::Method.status(), 405);
    }

    #[test]
    fn paths_other_readers_could_resolve_differently_are_refused() {
        for bad in [
            "/pub/%2e%2e/private/secret",
            "/pub/.%2e/private",
            "/pub/%2E%2E/private",
            "/pub/%2e",
            "/pub/a%2fb",
            "/pub/a%2Fb",
            "/pub/a%5cb",
            "/pub/a%5Cb",
            "/pub/..\\private\\x",
            "/pub/x/..\\..\\private",
            "/pub/%252e%252e/private",
            "/pub/%25",
            "/pub/%zz",
            "/pub/%2",
            "/pub/a%00b",
            "/pub/a%0a",
            "/pub/a%7f",
            "/pub/%c0%ae%c0%ae/private",
            "/pub/%e0%80%ae",
            "/pub/%ff",
            "/pub/%ef%bc%8e%ef%bc%8e/private",
            "/pub/%e2%80%a5/private",
            "/pub/..;x/private",
            "/pub/.;/private",
        ] {
            assert_eq!(
                Target::parse(bad).map(|t| t.path),
                Err(Reason::AmbiguousPath),
                "{bad}"
            );
            assert_eq!(Reason::AmbiguousPath.status(), 400);
        }
        for good in [
            "/pub/a",
            "/a/%62",
            "/chat/caf%C3%A9",
            "/pub/a;b",
            "/pub/a.b/..c/c..",
            "/pub/%20x",
        ] {
            assert_eq!(
                Target::parse(good).map(|t| t.path),
                Ok(good.into()),
                "{good}"
            );
        }
        // The query is not a path: it is left as sent.
        assert!(Target::parse("/pub/a?x=%2e%2e%2f%5c").is_ok());
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
}
