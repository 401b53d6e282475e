//! What a web browser can send the admin API, refused unless an operator allowed it. Any page
//! the local browser opens can reach a loopback listener: a cross-site "simple" `POST` needs no
//! preflight, and a DNS-rebinding page sends its own host name in `Host`. So the API's endpoints
//! (not `/healthz` and `/metrics`, which only read and which scrapers reach by any name) take:
//!
//! - a `Host` that is the listen address, `localhost` on a loopback or wildcard listen address,
//!   or a name in `[admin] allow_hosts` (the port is not compared: a forwarded port is fine);
//!   else 421. A request without `Host` is no browser's;
//! - no `Origin` and no `Sec-Fetch-Site` other than `none` (typed into the address bar), unless
//!   the `Origin` is in `[admin] allow_origins`; else 403. An allowed origin gets the CORS
//!   headers that let its page read the answer, and an answer to its preflight.
//!
//! Pure: the request's headers in, a decision out. The bearer token, when configured, is checked
//! after this.

use std::net::{IpAddr, SocketAddr};

use super::answer::Answer;
use crate::rules::origin::{OriginPattern, OriginPolicy, request_host};

/// The rules, from `[admin]`.
pub struct BrowserGuard {
    listen: SocketAddr,
    hosts: Vec<String>,
    origins: OriginPolicy,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Two `Host` headers, or one that is not `host[:port]`.
    BadHost,
    /// A `Host` that names neither this listener nor an allowed name (DNS rebinding).
    ForeignHost,
    /// An `Origin` not in `allow_origins` (or several, or a malformed one).
    Origin,
    /// `Sec-Fetch-Site` other than `none` without an allowed `Origin`: a page sent it.
    FetchSite,
}

impl Refusal {
    pub(super) fn answer(self) -> Answer {
        match self {
            Refusal::BadHost => Answer::text(400, "Bad Request", "bad Host header\n"),
            Refusal::ForeignHost => Answer::text(
                421,
                "Misdirected Request",
                "the Host header names another host; add it to [admin] allow_hosts if it is this one\n",
            ),
            Refusal::Origin => Answer::text(
                403,
                "Forbidden",
                "a web page's request (Origin) not named in [admin] allow_origins\n",
            ),
            Refusal::FetchSite => Answer::text(
                403,
                "Forbidden",
                "a web page's request (Sec-Fetch-Site) without an Origin named in [admin] allow_origins\n",
            ),
        }
    }
}

impl BrowserGuard {
    /// The rules for an admin endpoint on `listen` with the configured names and origins.
    #[must_use]
    pub fn new(listen: SocketAddr, hosts: Vec<String>, origins: Vec<OriginPattern>) -> Self {
        BrowserGuard {
            listen,
            hosts,
            origins: OriginPolicy {
                allow: origins,
                ..OriginPolicy::default()
            },
        }
    }

    /// Checks a request's `Host`, `Origin` and `Sec-Fetch-Site`. `Ok(Some(origin))`: an
    /// allowed page's origin, to name in the answer's CORS headers.
    pub(super) fn check<'h>(
        &self,
        headers: &[httparse::Header<'h>],
    ) -> Result<Option<&'h str>, Refusal> {
        let values = |name: &str| -> Vec<&'h [u8]> {
            headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect()
        };
        match values("host")[..] {
            [] => {}
            [host] => self.check_host(host)?,
            _ => return Err(Refusal::BadHost),
        }
        let origins = values("origin");
        if !origins.is_empty() {
            self.origins
                .check_explicit(&origins, None)
                .map_err(|_| Refusal::Origin)?;
            // Checked: one value, UTF-8.
            return Ok(std::str::from_utf8(origins[0]).ok().map(str::trim));
        }
        let from_a_page = values("sec-fetch-site")
            .iter()
            .any(|v| !v.trim_ascii().eq_ignore_ascii_case(b"none"));
        if from_a_page {
            return Err(Refusal::FetchSite);
        }
        Ok(None)
    }

    fn check_host(&self, value: &[u8]) -> Result<(), Refusal> {
        let (host, _port) = request_host(value).ok_or(Refusal::BadHost)?;
        let listen = self.listen.ip();
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host)
            .parse::<IpAddr>()
            .ok();
        let fits = match ip {
            Some(ip) => listen.is_unspecified() || canonical(ip) == canonical(listen),
            None => host == "localhost" && (listen.is_loopback() || listen.is_unspecified()),
        };
        if fits || self.hosts.contains(&host) {
            Ok(())
        } else {
            Err(Refusal::ForeignHost)
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The headers that let an allowed page read an answer.
pub(super) fn cors_headers(origin: &str) -> String {
    format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n")
}

/// The answer to an allowed page's preflight (`OPTIONS`): which methods and headers it may send.
pub(super) fn preflight(origin: &str, method: &'static str) -> Answer {
    let mut a = Answer::text(204, "No Content", "");
    a.extra = format!(
        "{}Access-Control-Allow-Methods: {method}\r\nAccess-Control-Allow-Headers: Authorization, \
         Content-Type\r\nAccess-Control-Max-Age: 600\r\n",
        cors_headers(origin)
    );
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(listen: &str) -> BrowserGuard {
        BrowserGuard::new(
            listen.parse().unwrap(),
            vec!["admin.internal".into()],
            vec![OriginPattern::parse("https://ops.example").unwrap()],
        )
    }

    fn check(g: &BrowserGuard, headers: &[(&str, &str)]) -> Result<Option<String>, Refusal> {
        let headers: Vec<httparse::Header<'_>> = headers
            .iter()
            .map(|(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        g.check(&headers).map(|o| o.map(str::to_string))
    }

    #[test]
    fn curl_and_probes_pass_and_a_rebinding_host_is_misdirected() {
        let g = guard("127.0.0.1:9000");
        for host in [
            "127.0.0.1:9000",
            "127.0.0.1",
            "localhost:9000",
            "LOCALHOST",
            "admin.internal:1",
            "[::ffff:127.0.0.1]:9000",
        ] {
            assert_eq!(check(&g, &[("Host", host)]), Ok(None), "{host}");
        }
        assert_eq!(check(&g, &[]), Ok(None), "HTTP/1.0 without Host");
        for host in ["rebind.evil.example:9000", "127.0.0.2:9000", "[::1]:9000"] {
            assert_eq!(
                check(&g, &[("Host", host)]),
                Err(Refusal::ForeignHost),
                "{host}"
            );
        }
        assert_eq!(check(&g, &[("Host", "a b")]), Err(Refusal::BadHost));
        assert_eq!(
            check(&g, &[("Host", "127.0.0.1"), ("host", "127.0.0.1")]),
            Err(Refusal::BadHost)
        );
        // A wildcard listen address answers to any address of the host, and localhost.
        let any = guard("0.0.0.0:9000");
        for host in ["10.1.2.3:9000", "[fe80::1]", "localhost"] {
            assert_eq!(check(&any, &[("Host", host)]), Ok(None), "{host}");
        }
        assert_eq!(
            check(&any, &[("Host", "evil.example")]),
            Err(Refusal::ForeignHost)
        );
        // Off loopback, localhost is not this listener.
        let lan = guard("10.0.0.5:9000");
        assert_eq!(
            check(&lan, &[("Host", "localhost")]),
            Err(Refusal::ForeignHost)
        );
    }

    #[test]
    fn a_page_is_refused_unless_its_origin_is_allowed() {
        let g = guard("127.0.0.1:9000");
        let host = ("Host", "127.0.0.1:9000");
        assert_eq!(
            check(
                &g,
                &[
                    host,
                    ("Origin", "https://evil.example"),
                    ("Sec-Fetch-Site", "cross-site")
                ]
            ),
            Err(Refusal::Origin)
        );
        assert_eq!(check(&g, &[host, ("Origin", "null")]), Err(Refusal::Origin));
        assert_eq!(
            check(&g, &[host, ("Sec-Fetch-Site", "same-origin")]),
            Err(Refusal::FetchSite),
            "a no-cors GET carries no Origin"
        );
        assert_eq!(
            check(&g, &[host, ("Sec-Fetch-Site", "none")]),
            Ok(None),
            "typed into the address bar"
        );
        assert_eq!(
            check(
                &g,
                &[
                    host,
                    ("Origin", "https://ops.example"),
                    ("Sec-Fetch-Site", "cross-site")
                ]
            ),
            Ok(Some("https://ops.example".into()))
        );
        assert_eq!(
            check(
                &g,
                &[
                    host,
                    ("Origin", "https://ops.example"),
                    ("Origin", "https://ops.example")
                ]
            ),
            Err(Refusal::Origin)
        );
    }
}
