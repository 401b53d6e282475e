//! Origin control against cross-site WebSocket hijacking: parsing allow-list entries and deciding
//! whether a request's `Origin` header is allowed. Pure functions only; no I/O, no logging.
//!
//! Matching is always whole-origin after normalisation (scheme and host lower case, port
//! explicit, IPv6 in canonical form); never prefix or substring matching. A wildcard entry
//! `scheme://*.domain[:port]` matches hosts with one or more labels in front of `domain`, never
//! `domain` itself.
//!
//! The request Origin `null` (sent by sandboxed frames, `file:` pages and after some redirects)
//! is well-formed but opaque: it is refused as [`OriginRefusal::NotAllowed`] unless `allow_any`
//! is set, and it cannot be put on the allow list.
//!
//! `allow_same_origin` also allows an `https` Origin whose host and port equal the request's
//! `Host` header (both normalised, default port explicit): the page was served by this server
//! (the built-in demo page) or by whatever shares its origin. A page on any other site always
//! sends its own, different Origin, and a browser sets `Host` from the URL it connects to, so a
//! hijacking page cannot make the two equal. `https` only: over TLS the browser has checked the
//! server's certificate against that host name, so a DNS-rebound name (`evil.example` pointed at
//! this server) cannot produce a matching pair without this server's key for `evil.example`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest `Origin` header value looked at; anything longer is [`OriginRefusal::TooLong`].
pub const MAX_ORIGIN_LEN: usize = 256;

/// One allow-list entry, normalised: scheme and host lower case, port explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: Scheme,
    host: HostPattern,
    port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// A normalised host: lower-case DNS name, dotted IPv4, or `[canonical IPv6]`.
    Exact(String),
    /// `*.example.com`, stored as `example.com`: matches `<one or more labels>.example.com`.
    Wildcard(String),
}

/// The Origin rules from `[origins]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// `allow`: exact origins and `scheme://*.domain[:port]` wildcards.
    pub allow: Vec<OriginPattern>,
    /// `allow_missing`: a request with no Origin header (a non-browser client) may pass.
    pub allow_missing: bool,
    /// `allow_any`: every origin passes (written deliberately; warned about at start).
    pub allow_any: bool,
    /// `allow_same_origin`: an `https` origin equal to `https://` + the request's `Host` passes.
    pub allow_same_origin: bool,
}

/// Why an Origin was refused (all become 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRefusal {
    Missing,
    Multiple,
    Malformed,
    TooLong,
    NotAllowed,
}

impl fmt::Display for OriginRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OriginRefusal::Missing => "no origin header",
            OriginRefusal::Multiple => "more than one origin header",
            OriginRefusal::Malformed => "malformed origin",
            OriginRefusal::TooLong => "origin too long",
            OriginRefusal::NotAllowed => "origin not allowed",
        })
    }
}

/// A parsed request origin (or the exact part of a pattern).
struct Origin {
    scheme: Scheme,
    host: ParsedHost,
    port: u16,
}

enum ParsedHost {
    /// Lower-case DNS name.
    Name(String),
    /// Dotted IPv4 or `[canonical IPv6]`.
    Ip(String),
    /// `*.name`, stored as `name` (only when wildcards are allowed).
    Wildcard(String),
}

/// What the shared parser accepts beyond a serialised origin.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// An allow-list entry: `*.` wildcard and a single trailing `/` tolerated.
    Pattern,
    /// A request `Origin` value: exactly `scheme://host[:port]`.
    Request,
}

fn parse_origin(s: &str, flavour: Flavour) -> Result<Origin, String> {
    if s.is_empty() {
        return Err("empty origin".into());
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(if c == ' ' || c == '\t' {
            "must not contain spaces".into()
        } else {
            format!("contains a character that is not visible ascii: {c:?}")
        });
    }
    if s.eq_ignore_ascii_case("null") {
        return Err(
            "`null` is the opaque origin shared by every sandboxed page and cannot be allowed"
                .into(),
        );
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err("expected scheme://host[:port], such as https://app.example.com".into());
    };
    let scheme = if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else {
        return Err(format!("scheme must be http or https, not `{scheme}`"));
    };
    if rest.contains('@') {
        return Err("must not contain user info (`user@`)".into());
    }
    if rest.contains('?') {
        return Err("must not contain a query (`?`)".into());
    }
    if rest.contains('#') {
        return Err("must not contain a fragment (`#`)".into());
    }
    let authority = match rest.find('/') {
        None => rest,
        Some(i) if flavour == Flavour::Pattern && i == rest.len() - 1 => &rest[..i],
        Some(_) => {
            return Err("must not contain a path; an origin is only scheme://host[:port]".into());
        }
    };
    if authority.is_empty() {
        return Err("missing host".into());
    }

    let (host, port) = if let Some(after_bracket) = authority.strip_prefix('[') {
        let Some((inside, after)) = after_bracket.split_once(']') else {
            return Err("unterminated `[` in ipv6 host".into());
        };
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("invalid ipv6 address `{inside}`"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("unexpected characters after `]`")?,
            ),
        };
        (ParsedHost::Ip(format!("[{ip}]")), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        (parse_host(host, flavour)?, port)
    };

    let port = match port {
        None => scheme.default_port(),
        Some(p) => parse_port(p)?,
    };
    Ok(Origin { scheme, host, port })
}

fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() {
        return Err("empty port after `:`".into());
    }
    if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port `{p}`"));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port must be 1 to 65535, not `{p}`")),
        Ok(n) => Ok(n),
    }
}

fn parse_host(host: &str, flavour: Flavour) -> Result<ParsedHost, String> {
    if host.is_empty() {
        return Err("missing host".into());
    }
    let host = host.to_ascii_lowercase();
    if let Some(domain) = host.strip_prefix("*.") {
        if flavour == Flavour::Request {
            return Err("wildcard in a request origin".into());
        }
        if domain.contains('*') {
            return Err("only one `*.` is allowed, at the start of the host".into());
        }
        if looks_numeric(domain) {
            return Err("a wildcard needs a domain name, not an ip address".into());
        }
        check_dns_name(domain)?;
        if !domain.contains('.') {
            return Err(format!(
                "wildcard domain `{domain}` is too broad; use at least two labels, such as *.example.com"
            ));
        }
        return Ok(ParsedHost::Wildcard(domain.to_string()));
    }
    if host.contains('*') {
        return Err("a wildcard is only allowed as a leading `*.` on the host".into());
    }
    if looks_numeric(&host) {
        let ip: Ipv4Addr = host
            .parse()
            .map_err(|_| format!("invalid ipv4 address `{host}`"))?;
        return Ok(ParsedHost::Ip(ip.to_string()));
    }
    check_dns_name(&host)?;
    Ok(ParsedHost::Name(host))
}

/// Digits and dots only (the last label of a DNS name is never all digits).
fn looks_numeric(host: &str) -> bool {
    host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn check_dns_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("host name longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("empty label in host `{name}`"));
        }
        if label.len() > 63 {
            return Err(format!("label longer than 63 characters in host `{name}`"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("invalid character in host `{name}`"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("a label of host `{name}` starts or ends with `-`"));
        }
    }
    Ok(())
}

impl OriginPattern {
    /// Parses an allow-list entry such as `https://app.example.com` or `https://*.example.com:8443`.
    ///
    /// # Errors
    /// A message saying what is wrong with the entry.
    pub fn parse(s: &str) -> Result<OriginPattern, String> {
        let o = parse_origin(s.trim(), Flavour::Pattern)?;
        let host = match o.host {
            ParsedHost::Name(h) | ParsedHost::Ip(h) => HostPattern::Exact(h),
            ParsedHost::Wildcard(d) => HostPattern::Wildcard(d),
        };
        Ok(OriginPattern {
            scheme: o.scheme,
            host,
            port: o.port,
        })
    }

    fn matches(&self, o: &Origin) -> bool {
        if self.scheme != o.scheme || self.port != o.port {
            return false;
        }
        match (&self.host, &o.host) {
            (HostPattern::Exact(p), ParsedHost::Name(h) | ParsedHost::Ip(h)) => p == h,
            (HostPattern::Wildcard(domain), ParsedHost::Name(h)) => h
                .strip_suffix(domain.as_str())
                .and_then(|front| front.strip_suffix('.'))
                .is_some_and(|front| !front.is_empty()),
            _ => false,
        }
    }
}

/// The normalised form, port always explicit: `https://*.example.com:443`.
impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(d) => format!("*.{d}"),
        };
        write!(f, "{}://{}:{}", self.scheme.as_str(), host, self.port)
    }
}

/// The host of a `Host` header value (`host[:port]`), normalised as origins are: a lower-case
/// DNS name, a dotted IPv4 address, or `[canonical IPv6]`; and whether it named a port. `None`
/// for anything else (user info, a path, a bad port, invalid characters, too long).
#[must_use]
pub fn request_host(value: &[u8]) -> Option<(String, bool)> {
    if value.len() > MAX_ORIGIN_LEN {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    let has_port = match text.strip_prefix('[') {
        Some(v6) => v6
            .split_once(']')
            .is_some_and(|(_, after)| !after.is_empty()),
        None => text.contains(':'),
    };
    let parsed = parse_origin(&format!("http://{text}"), Flavour::Request).ok()?;
    match parsed.host {
        ParsedHost::Name(h) | ParsedHost::Ip(h) => Some((h, has_port)),
        ParsedHost::Wildcard(_) => None,
    }
}

/// Whether `origin` is `https` with the host and port of the `Host` header value `host` (port
/// 443 when the header has none). A `Host` that is not a plain `host[:port]` never matches.
fn same_origin(origin: &Origin, host: &[u8]) -> bool {
    if origin.scheme != Scheme::Https || host.len() > MAX_ORIGIN_LEN {
        return false;
    }
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let Ok(own) = parse_origin(&format!("https://{}", host.trim()), Flavour::Request) else {
        return false;
    };
    let name = |h: &ParsedHost| match h {
        ParsedHost::Name(n) | ParsedHost::Ip(n) => Some(n.clone()),
        ParsedHost::Wildcard(_) => None,
    };
    own.port == origin.port && name(&own.host).is_some() && name(&own.host) == name(&origin.host)
}

impl OriginPolicy {
    /// Decides on the request's Origin header values (zero, one or several), without a `Host`
    /// (so `allow_same_origin` never applies).
    ///
    /// # Errors
    /// The reason the origin is refused.
    pub fn check(&self, values: &[&[u8]]) -> Result<(), OriginRefusal> {
        self.check_request(values, None)
    }

    /// Decides on the request's Origin header values, given its `Host` header value for
    /// `allow_same_origin`.
    ///
    /// # Errors
    /// The reason the origin is refused.
    pub fn check_request(
        &self,
        values: &[&[u8]],
        host: Option<&[u8]>,
    ) -> Result<(), OriginRefusal> {
        self.check_with(values, host, Leniency::AsConfigured)
    }

    /// Like [`OriginPolicy::check_request`], but only an Origin that `allow` or
    /// `allow_same_origin` names passes: `allow_any` and `allow_missing` do not count. For
    /// credentials a browser sends by itself (the session cookie).
    ///
    /// # Errors
    /// The reason the origin is refused.
    pub fn check_explicit(
        &self,
        values: &[&[u8]],
        host: Option<&[u8]>,
    ) -> Result<(), OriginRefusal> {
        self.check_with(values, host, Leniency::NamedOnly)
    }

    fn check_with(
        &self,
        values: &[&[u8]],
        host: Option<&[u8]>,
        leniency: Leniency,
    ) -> Result<(), OriginRefusal> {
        let (allow_any, allow_missing) = match leniency {
            Leniency::AsConfigured => (self.allow_any, self.allow_missing),
            Leniency::NamedOnly => (false, false),
        };
        let value = match values {
            [] => {
                return if allow_missing {
                    Ok(())
                } else {
                    Err(OriginRefusal::Missing)
                };
            }
            [one] => *one,
            _ => return Err(OriginRefusal::Multiple),
        };
        if value.len() > MAX_ORIGIN_LEN {
            return Err(OriginRefusal::TooLong);
        }
        let text = std::str::from_utf8(value).map_err(|_| OriginRefusal::Malformed)?;
        let text = text.trim_matches([' ', '\t']);
        if text == "null" {
            return if allow_any {
                Ok(())
            } else {
                Err(OriginRefusal::NotAllowed)
            };
        }
        let origin = parse_origin(text, Flavour::Request).map_err(|_| OriginRefusal::Malformed)?;
        let same = self.allow_same_origin && host.is_some_and(|h| same_origin(&origin, h));
        if allow_any || same || self.allow.iter().any(|p| p.matches(&origin)) {
            Ok(())
        } else {
            Err(OriginRefusal::NotAllowed)
        }
    }
}

/// Whether a check honours `allow_any` and `allow_missing`.
#[derive(Debug, Clone, Copy)]
enum Leniency {
    /// As the configuration says (every upgrade).
    AsConfigured,
    /// Only origins `allow` or `allow_same_origin` name (the session cookie).
    NamedOnly,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> OriginPolicy {
        OriginPolicy {
            allow: allow
                .iter()
                .map(|s| OriginPattern::parse(s).unwrap())
                .collect(),
            allow_missing: false,
            allow_any: false,
            allow_same_origin: false,
        }
    }

    fn check(p: &OriginPolicy, origin: &str) -> Result<(), OriginRefusal> {
        p.check(&[origin.as_bytes()])
    }

    #[test]
    fn exact_match() {
        let p = policy(&["https://app.example.com"]);
        assert_eq!(check(&p, "https://app.example.com"), Ok(()));
        assert_eq!(
            check(&p, "https://other.example.com"),
            Err(OriginRefusal::NotAllowed)
        );
    }

    #[test]
    fn no_prefix_or_substring_matching() {
        let p = policy(&["https://app.example.com"]);
        assert_eq!(
            check(&p, "https://app.example.com.evil.net"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            check(&p, "https://evil.net/app.example.com"),
            Err(OriginRefusal::Malformed)
        );
        assert_eq!(
            check(&p, "https://evilapp.example.com"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            check(&p, "https://app.example.co"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            check(&p, "https://app.example.com@evil.net"),
            Err(OriginRefusal::Malformed)
        );
    }

    #[test]
    fn null_origin() {
        let p = policy(&["https://app.example.com"]);
        assert_eq!(check(&p, "null"), Err(OriginRefusal::NotAllowed));
        assert!(OriginPattern::parse("null").is_err());
        let any = OriginPolicy {
            allow_any: true,
            ..OriginPolicy::default()
        };
        assert_eq!(check(&any, "null"), Ok(()));
    }

    #[test]
    fn scheme_and_port_must_match() {
        let p = policy(&["https://a.com"]);
        assert_eq!(check(&p, "http://a.com"), Err(OriginRefusal::NotAllowed));
        assert_eq!(
            check(&p, "https://a.com:8443"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(check(&p, "ftp://a.com"), Err(OriginRefusal::Malformed));
        assert_eq!(check(&p, "wss://a.com"), Err(OriginRefusal::Malformed));
        let p = policy(&["http://a.com:8080"]);
        assert_eq!(check(&p, "http://a.com:8080"), Ok(()));
        assert_eq!(check(&p, "http://a.com"), Err(OriginRefusal::NotAllowed));
    }

    #[test]
    fn default_port_explicit_equals_implicit() {
        assert_eq!(
            OriginPattern::parse("https://a.com:443").unwrap(),
            OriginPattern::parse("https://a.com").unwrap()
        );
        assert_eq!(
            OriginPattern::parse("http://a.com:80").unwrap(),
            OriginPattern::parse("http://a.com/").unwrap()
        );
        assert_ne!(
            OriginPattern::parse("http://a.com:443").unwrap(),
            OriginPattern::parse("https://a.com").unwrap()
        );
        let p = policy(&["https://a.com:443"]);
        assert_eq!(check(&p, "https://a.com"), Ok(()));
        let p = policy(&["https://a.com"]);
        assert_eq!(check(&p, "https://a.com:443"), Ok(()));
    }

    #[test]
    fn case_insensitive_scheme_and_host() {
        let p = policy(&["HTTPS://App.Example.COM"]);
        assert_eq!(check(&p, "https://app.example.com"), Ok(()));
        assert_eq!(check(&p, "HtTpS://APP.EXAMPLE.com"), Ok(()));
        assert_eq!(
            OriginPattern::parse("HTTPS://App.Example.COM")
                .unwrap()
                .to_string(),
            "https://app.example.com:443"
        );
    }

    #[test]
    fn wildcards() {
        let p = policy(&["https://*.example.com"]);
        assert_eq!(check(&p, "https://a.example.com"), Ok(()));
        assert_eq!(check(&p, "https://a.b.example.com"), Ok(()));
        assert_eq!(
            check(&p, "https://example.com"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            check(&p, "https://evilexample.com"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            check(&p, "https://a.example.com.evil.net"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            check(&p, "http://a.example.com"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            check(&p, "https://a.example.com:8443"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            check(&p, "https://*.example.com"),
            Err(OriginRefusal::Malformed)
        );
        assert_eq!(
            check(&p, "https://.example.com"),
            Err(OriginRefusal::Malformed)
        );
        let p = policy(&["https://*.example.com:8443"]);
        assert_eq!(check(&p, "https://a.example.com:8443"), Ok(()));
        assert_eq!(
            check(&p, "https://a.example.com"),
            Err(OriginRefusal::NotAllowed)
        );
    }

    #[test]
    fn bad_wildcards_rejected() {
        for bad in [
            "https://*",
            "https://*.com",
            "https://a.*.example.com",
            "https://*example.com",
            "https://*.*.example.com",
            "https://*.1.2.3",
            "https://ex*ample.com",
        ] {
            assert!(
                OriginPattern::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn ipv4_and_ipv6() {
        let p = policy(&["https://[::1]:8443", "http://127.0.0.1:8080"]);
        assert_eq!(check(&p, "https://[::1]:8443"), Ok(()));
        assert_eq!(check(&p, "https://[0:0:0:0:0:0:0:1]:8443"), Ok(()));
        assert_eq!(check(&p, "https://[::1]"), Err(OriginRefusal::NotAllowed));
        assert_eq!(
            check(&p, "https://[::2]:8443"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(check(&p, "http://127.0.0.1:8080"), Ok(()));
        assert_eq!(
            check(&p, "http://127.0.0.2:8080"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(check(&p, "https://[::1"), Err(OriginRefusal::Malformed));
        assert_eq!(check(&p, "https://::1"), Err(OriginRefusal::Malformed));
        assert_eq!(
            check(&p, "http://127.0.0.256:8080"),
            Err(OriginRefusal::Malformed)
        );
        assert!(OriginPattern::parse("https://[fe80::1%eth0]").is_err());
        assert_eq!(
            OriginPattern::parse("https://[FE80::0:1]")
                .unwrap()
                .to_string(),
            "https://[fe80::1]:443"
        );
    }

    #[test]
    fn pattern_errors() {
        for bad in [
            "",
            "app.example.com",
            "ftp://a.com",
            "https://",
            "https://a.com/path",
            "https://a.com//",
            "https://a.com?x",
            "https://a.com#x",
            "https://user@a.com",
            "https://a.com:",
            "https://a.com:0",
            "https://a.com:65536",
            "https://a.com:+80",
            "https://a .com",
            "https://a..com",
            "https://-a.com",
            "https://a.com.",
        ] {
            let e = OriginPattern::parse(bad).expect_err(bad);
            assert_eq!(e, e.to_lowercase(), "error for {bad} should be lower case");
        }
        assert!(OriginPattern::parse("https://a.com/").is_ok());
        assert!(OriginPattern::parse("https://a.com:65535").is_ok());
    }

    #[test]
    fn request_origin_forms() {
        let p = policy(&["https://a.com"]);
        assert_eq!(check(&p, "https://a.com/"), Err(OriginRefusal::Malformed));
        assert_eq!(
            check(&p, "https://a.com\u{e9}"),
            Err(OriginRefusal::Malformed)
        );
        assert_eq!(
            p.check(&[b"https://a.com\xff"]),
            Err(OriginRefusal::Malformed)
        );
        assert_eq!(
            p.check(&[b"https://a.com\x00"]),
            Err(OriginRefusal::Malformed)
        );
        assert_eq!(check(&p, ""), Err(OriginRefusal::Malformed));
        assert_eq!(check(&p, " https://a.com "), Ok(()));
    }

    #[test]
    fn multiple_headers() {
        let p = policy(&["https://a.com"]);
        assert_eq!(
            p.check(&[b"https://a.com", b"https://a.com"]),
            Err(OriginRefusal::Multiple)
        );
        let any = OriginPolicy {
            allow_any: true,
            allow_missing: true,
            ..OriginPolicy::default()
        };
        assert_eq!(
            any.check(&[b"https://a.com", b"https://b.com"]),
            Err(OriginRefusal::Multiple)
        );
    }

    #[test]
    fn too_long() {
        let p = policy(&["https://a.com"]);
        let host = "a".repeat(MAX_ORIGIN_LEN);
        assert_eq!(
            check(&p, &format!("https://{host}")),
            Err(OriginRefusal::TooLong)
        );
        let exact = format!(
            "https://{}.com",
            "a".repeat(MAX_ORIGIN_LEN - "https://.com".len())
        );
        assert_eq!(exact.len(), MAX_ORIGIN_LEN);
        assert_ne!(check(&p, &exact), Err(OriginRefusal::TooLong));
    }

    #[test]
    fn missing() {
        let mut p = policy(&["https://a.com"]);
        assert_eq!(p.check(&[]), Err(OriginRefusal::Missing));
        p.allow_missing = true;
        assert_eq!(p.check(&[]), Ok(()));
    }

    #[test]
    fn allow_any() {
        let p = OriginPolicy {
            allow_any: true,
            ..OriginPolicy::default()
        };
        assert_eq!(check(&p, "https://whatever.example"), Ok(()));
        assert_eq!(check(&p, "http://10.0.0.1:1234"), Ok(()));
        assert_eq!(check(&p, "not an origin"), Err(OriginRefusal::Malformed));
        assert_eq!(p.check(&[]), Err(OriginRefusal::Missing));
    }

    #[test]
    fn empty_allow_list_fails_closed() {
        let p = OriginPolicy::default();
        assert_eq!(check(&p, "https://a.com"), Err(OriginRefusal::NotAllowed));
        assert_eq!(p.check(&[]), Err(OriginRefusal::Missing));
    }

    #[test]
    fn same_origin_matches_the_host_header() {
        let mut p = policy(&["https://app.example.com"]);
        let at = |p: &OriginPolicy, origin: &str, host: &str| {
            p.check_request(&[origin.as_bytes()], Some(host.as_bytes()))
        };
        // Off by default: the Host header changes nothing.
        assert_eq!(
            at(&p, "https://localhost:8443", "localhost:8443"),
            Err(OriginRefusal::NotAllowed)
        );
        p.allow_same_origin = true;
        assert_eq!(at(&p, "https://localhost:8443", "localhost:8443"), Ok(()));
        assert_eq!(at(&p, "https://LocalHost:8443", "localhost:8443"), Ok(()));
        assert_eq!(at(&p, "https://pi.local", "pi.local:443"), Ok(()));
        assert_eq!(at(&p, "https://pi.local:443", "PI.local"), Ok(()));
        assert_eq!(at(&p, "https://127.0.0.1:8443", "127.0.0.1:8443"), Ok(()));
        assert_eq!(at(&p, "https://[::1]:8443", "[0::1]:8443"), Ok(()));
        // The allow list still applies beside it.
        assert_eq!(at(&p, "https://app.example.com", "pi.local"), Ok(()));
        // A different site, port or scheme is another origin.
        for (origin, host) in [
            ("https://evil.example:8443", "localhost:8443"),
            ("https://localhost:9000", "localhost:8443"),
            ("https://localhost", "localhost:8443"),
            ("http://localhost:8443", "localhost:8443"),
            ("http://localhost", "localhost:80"),
            ("https://localhost.evil.example:8443", "localhost:8443"),
            ("https://127.0.0.1:8443", "localhost:8443"),
        ] {
            assert_eq!(
                at(&p, origin, host),
                Err(OriginRefusal::NotAllowed),
                "{origin} {host}"
            );
        }
        // A Host that is not a plain host[:port] never matches.
        for host in [
            "",
            "localhost:8443/x",
            "user@localhost:8443",
            "*.localhost:8443",
            "localhost:0",
            "local host:8443",
            "localhost:8443?",
        ] {
            assert_eq!(
                at(&p, "https://localhost:8443", host),
                Err(OriginRefusal::NotAllowed),
                "{host:?}"
            );
        }
        assert_eq!(
            p.check_request(&[b"https://localhost:8443"], Some(b"localhost:8443\xff")),
            Err(OriginRefusal::NotAllowed)
        );
        // Without a Host header (or through `check`) it never applies; null stays refused.
        assert_eq!(
            p.check_request(&[b"https://localhost:8443"], None),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            p.check(&[b"https://localhost:8443"]),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            at(&p, "null", "localhost:8443"),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            p.check_request(&[], Some(b"localhost:8443")),
            Err(OriginRefusal::Missing)
        );
    }

    #[test]
    fn a_host_header_is_normalised_like_an_origin() {
        let host = |v: &str| request_host(v.as_bytes());
        assert_eq!(
            host("Admin.Example:9000"),
            Some(("admin.example".into(), true))
        );
        assert_eq!(host("127.0.0.1"), Some(("127.0.0.1".into(), false)));
        assert_eq!(host("[0:0::1]:9"), Some(("[::1]".into(), true)));
        assert_eq!(host("[::1]"), Some(("[::1]".into(), false)));
        for bad in [
            "",
            "a b",
            "user@host",
            "host/x",
            "host:0",
            "host:x",
            "*.example.com",
            "[::1",
        ] {
            assert_eq!(host(bad), None, "{bad}");
        }
    }
}
