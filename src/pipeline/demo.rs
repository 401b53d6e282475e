//! The built-in demo page (`[demo] enabled`): one HTML file embedded in the binary, served at
//! `GET /` to show wsgate working in a browser, with its `POST /login` and `POST /logout`. Decides whether a request head asks for it and
//! builds the whole response; pure, no sockets. Never serves any other path or file.

use std::fmt::Write as _;

/// The page, with [`CHANNEL_MARK`] where the channel path goes.
const PAGE: &str = include_str!("demo.html");
/// Replaced by `[demo] channel` (restricted by the config to characters safe in HTML and URLs).
const CHANNEL_MARK: &str = "__WSGATE_CHANNEL__";

/// Whether the request is the demo page's: `GET /` (any query) without an `Upgrade` header.
/// Everything else, upgrades to `/` included, goes the usual way.
pub fn wants_page(req: &httparse::Request<'_, '_>) -> bool {
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    req.method == Some("GET")
        && path == "/"
        && !req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
}

/// Whether the request is the page's login: `POST /login` (any query is refused as a plain
/// request would be: only this exact target).
pub fn is_login(req: &httparse::Request<'_, '_>) -> bool {
    req.method == Some("POST") && req.path == Some("/login")
}

/// Whether the request is the page's log-out: `POST /logout`, this exact target.
pub fn is_logout(req: &httparse::Request<'_, '_>) -> bool {
    req.method == Some("POST") && req.path == Some("/logout")
}

/// The page for `channel`: the whole HTTP response, head and body, ending with `Connection:
/// close` (the server closes after writing it).
pub fn response(channel: &str) -> Vec<u8> {
    let body = PAGE.replace(CHANNEL_MARK, channel);
    let mut head = String::with_capacity(512);
    // Writing to a String cannot fail.
    let _ = write!(
        head,
        "HTTP/1.1 200 OK\r\n\
         Content-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Content-Security-Policy: {}\r\n\
         Cache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\n\
         Connection: close\r\n\r\n",
        body.len(),
        content_security_policy()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Only the page itself: its one inline script and style by hash, WebSocket connections to its
/// own origin (`'self'` covers `wss:` to the same host and port), no other fetch, frame, form
/// target, plugin or base URL. The empty `data:` favicon keeps the browser from asking for
/// `/favicon.ico`.
fn content_security_policy() -> String {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash_of("script"),
        hash_of("style")
    )
}

/// `sha256-BASE64` of the text inside the page's first `<tag>…</tag>`, as CSP hashes it.
fn hash_of(tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let inner = PAGE
        .split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map_or("", |(inner, _)| inner);
    let digest = ring::digest::digest(&ring::digest::SHA256, inner.as_bytes());
    format!("sha256-{}", data_encoding::BASE64.encode(digest.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(raw: &str) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw.as_bytes()).unwrap().is_complete());
        wants_page(&req)
    }

    #[test]
    fn only_a_plain_get_of_the_root_is_the_page() {
        assert!(wants("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(wants("GET /?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!wants(
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(!wants("GET /index.html HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!wants("GET /chat/demo HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!wants("GET //etc/passwd HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!wants("POST / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!wants("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"));
    }

    #[test]
    fn the_response_is_the_page_with_its_headers() {
        let out = String::from_utf8(response("/chat/demo")).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        for want in [
            "Content-Type: text/html; charset=utf-8",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            "Connection: close",
            &format!("Content-Length: {}", body.len()),
        ] {
            assert!(head.lines().any(|l| l == want), "{want} in {head}");
        }
        assert!(body.contains(r#"data-channel="/chat/demo""#));
        assert!(!body.contains(CHANNEL_MARK));
    }

    #[test]
    fn the_policy_allows_only_the_pages_own_script_and_style() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none'; "));
        assert!(csp.contains("connect-src 'self'"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe"));
        // One inline script and one style, each hashed (an empty body would hash "").
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert_eq!(PAGE.matches("<style>").count(), 1);
        for inline in [
            "<script src",
            "onclick=",
            "onload=",
            "onsubmit=",
            "onerror=",
            "style=\"",
        ] {
            assert!(
                !PAGE.contains(inline),
                "{inline}: CSP hashes do not cover it"
            );
        }
        let empty = {
            let d = ring::digest::digest(&ring::digest::SHA256, b"");
            format!("sha256-{}", data_encoding::BASE64.encode(d.as_ref()))
        };
        for tag in ["script", "style"] {
            let hash = hash_of(tag);
            assert_ne!(hash, empty, "{tag}");
            assert!(csp.contains(&format!("'{hash}'")), "{tag}");
        }
    }
}
