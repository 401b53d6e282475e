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
        // them (issue 11): one Upgrade header that is exactly websocket, one Connection header
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
