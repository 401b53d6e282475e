//! The PROXY protocol (v1 text, v2 binary) a load balancer sends first on each connection to carry
//! the client's address. Parsing is pure; [`read_header`] reads exactly the header's bytes, under
//! the TLS handshake deadline, and never a byte of the TLS stream behind it.
//!
//! Specification: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};

use crate::pipeline::deadline::{Deadline, is_timeout};

/// The longest v1 header (`PROXY UNKNOWN <39> <39> 65535 65535\r\n`), CRLF included.
pub const V1_MAX: usize = 107;
/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version/command, family/transport, length.
pub const V2_FIXED: usize = 16;
/// The largest v2 address block (addresses plus TLVs) accepted. Addresses take at most 216 bytes
/// (AF_UNIX); the rest leaves room for the TLVs cloud load balancers add (VPC endpoint ids,
/// ALPN, authority). Anything longer is refused rather than buffered.
pub const V2_MAX_LEN: usize = 1024;

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A relayed connection: the client's address and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The load balancer's own connection (v2 `LOCAL`, v1 `UNKNOWN`, v2 `AF_UNSPEC`), such as a
    /// health check: the socket's peer address stands.
    Local,
}

impl Header {
    /// The address to treat as the client: the carried source, or `peer` for [`Header::Local`].
    pub fn client(&self, peer: SocketAddr) -> SocketAddr {
        match self {
            Header::Proxied { source, .. } => *source,
            Header::Local => peer,
        }
    }
}

/// Why a connection did not start with a usable PROXY header.
#[derive(Debug)]
pub enum ProxyError {
    /// Reading failed: the deadline expired (`TimedOut`), the peer closed (`UnexpectedEof`), or
    /// another socket error.
    Io(io::Error),
    /// The bytes end before the header does (only from [`parse`] on a partial buffer).
    Truncated,
    /// The first bytes are neither `PROXY ` nor the v2 signature (a TLS ClientHello, garbage).
    NotProxy,
    /// A v1 line with no CRLF within [`V1_MAX`] bytes.
    V1TooLong,
    /// A v1 line that does not follow the grammar; says which part.
    V1Malformed(&'static str),
    /// A v2 header whose version nibble is not 2.
    V2Version(u8),
    /// A v2 command other than `LOCAL` (0) or `PROXY` (1).
    V2Command(u8),
    /// A v2 address block longer than [`V2_MAX_LEN`].
    V2TooLong(usize),
    /// A v2 family/transport byte other than TCP over IPv4/IPv6 or `AF_UNSPEC`.
    V2Unsupported(u8),
    /// A v2 address block shorter than its family's addresses.
    V2Short { family: u8, len: usize },
}

impl ProxyError {
    /// True when the handshake deadline expired while waiting for the header.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ProxyError::Io(e) if is_timeout(e))
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Io(e) => write!(f, "reading the proxy header: {e}"),
            ProxyError::Truncated => f.write_str("proxy header truncated"),
            ProxyError::NotProxy => f.write_str("no proxy protocol header"),
            ProxyError::V1TooLong => write!(f, "proxy v1 header without CRLF in {V1_MAX} bytes"),
            ProxyError::V1Malformed(what) => write!(f, "malformed proxy v1 header: {what}"),
            ProxyError::V2Version(v) => write!(f, "proxy v2 header with version {v}"),
            ProxyError::V2Command(c) => write!(f, "proxy v2 header with unknown command {c}"),
            ProxyError::V2TooLong(n) => {
                write!(
                    f,
                    "proxy v2 address block of {n} bytes (at most {V2_MAX_LEN})"
                )
            }
            ProxyError::V2Unsupported(b) => {
                write!(
                    f,
                    "proxy v2 family/transport {b:#04x} is not tcp over ipv4/ipv6"
                )
            }
            ProxyError::V2Short { family, len } => write!(
                f,
                "proxy v2 address block of {len} bytes is too short for family {family:#04x}"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

impl From<io::Error> for ProxyError {
    fn from(e: io::Error) -> Self {
        ProxyError::Io(e)
    }
}

/// Parses a header at the start of `buf`; returns it and its length in bytes.
///
/// # Errors
/// [`ProxyError::Truncated`] when `buf` ends inside a header that is valid so far; the other
/// variants when it cannot be one.
pub fn parse(buf: &[u8]) -> Result<(Header, usize), ProxyError> {
    match buf.first() {
        None => Err(ProxyError::Truncated),
        Some(b'P') => {
            let window = &buf[..buf.len().min(V1_MAX)];
            match window.windows(2).position(|w| w == b"\r\n") {
                Some(end) => Ok((parse_v1(&buf[..end + 2])?, end + 2)),
                None if buf.len() >= V1_MAX => Err(ProxyError::V1TooLong),
                None => {
                    check_v1_prefix(buf)?;
                    Err(ProxyError::Truncated)
                }
            }
        }
        Some(b'\r') => {
            let Some(fixed) = buf.first_chunk::<V2_FIXED>() else {
                check_v2_prefix(buf)?;
                return Err(ProxyError::Truncated);
            };
            let len = v2_length(fixed)?;
            let body = buf
                .get(V2_FIXED..V2_FIXED + len)
                .ok_or(ProxyError::Truncated)?;
            Ok((parse_v2(fixed, body)?, V2_FIXED + len))
        }
        Some(_) => Err(ProxyError::NotProxy),
    }
}

/// Fails early when the bytes so far cannot begin `PROXY `.
fn check_v1_prefix(buf: &[u8]) -> Result<(), ProxyError> {
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        Ok(())
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// Fails early when the bytes so far cannot begin the v2 signature.
fn check_v2_prefix(buf: &[u8]) -> Result<(), ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        Ok(())
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// Parses one v1 line, `PROXY TCP4|TCP6|UNKNOWN …\r\n`, CRLF included.
///
/// # Errors
/// [`ProxyError::V1Malformed`] naming the bad part; [`ProxyError::V1TooLong`] over [`V1_MAX`].
pub fn parse_v1(line: &[u8]) -> Result<Header, ProxyError> {
    if line.len() > V1_MAX {
        return Err(ProxyError::V1TooLong);
    }
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or(ProxyError::V1Malformed("no CRLF at the end"))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    let rest = line.strip_prefix("PROXY ").ok_or(ProxyError::NotProxy)?;
    // UNKNOWN: whatever follows (possibly nothing) is ignored; the socket's peer stands.
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        return Ok(Header::Local);
    }
    let fields: Vec<&str> = rest.split(' ').collect();
    let [proto, src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::V1Malformed(
            "expected protocol, two addresses and two ports separated by single spaces",
        ));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            src.parse::<Ipv4Addr>()
                .map_err(|_| ProxyError::V1Malformed("bad source ipv4 address"))?
                .into(),
            dst.parse::<Ipv4Addr>()
                .map_err(|_| ProxyError::V1Malformed("bad destination ipv4 address"))?
                .into(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>()
                .map_err(|_| ProxyError::V1Malformed("bad source ipv6 address"))?
                .into(),
            dst.parse::<Ipv6Addr>()
                .map_err(|_| ProxyError::V1Malformed("bad destination ipv6 address"))?
                .into(),
        ),
        _ => {
            return Err(ProxyError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let port = |s: &str, what| {
        // Plain decimal: no sign, no leading zeros (the spec's grammar), at most 65535.
        let plain = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        plain
            .then(|| s.parse::<u16>().ok())
            .flatten()
            .ok_or(ProxyError::V1Malformed(what))
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(src, port(sport, "bad source port")?),
        destination: SocketAddr::new(dst, port(dport, "bad destination port")?),
    })
}

/// Checks the fixed 16 bytes of a v2 header and returns the length of the address block that
/// follows.
///
/// # Errors
/// [`ProxyError::NotProxy`] without the signature; [`ProxyError::V2Version`];
/// [`ProxyError::V2TooLong`] over [`V2_MAX_LEN`].
pub fn v2_length(fixed: &[u8; V2_FIXED]) -> Result<usize, ProxyError> {
    if fixed[..12] != V2_SIGNATURE {
        return Err(ProxyError::NotProxy);
    }
    if fixed[12] >> 4 != 2 {
        return Err(ProxyError::V2Version(fixed[12] >> 4));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > V2_MAX_LEN {
        return Err(ProxyError::V2TooLong(len));
    }
    Ok(len)
}

/// Parses a v2 header from its fixed part and its whole address block (TLVs are skipped).
///
/// # Errors
/// As [`v2_length`], plus [`ProxyError::V2Command`], [`ProxyError::V2Unsupported`] and
/// [`ProxyError::V2Short`].
pub fn parse_v2(fixed: &[u8; V2_FIXED], body: &[u8]) -> Result<Header, ProxyError> {
    let len = v2_length(fixed)?;
    if body.len() != len {
        return Err(ProxyError::Truncated);
    }
    match fixed[12] & 0x0f {
        // LOCAL: the load balancer speaking for itself; the address block is ignored.
        0 => return Ok(Header::Local),
        1 => {}
        c => return Err(ProxyError::V2Command(c)),
    }
    let family = fixed[13];
    let short = || ProxyError::V2Short { family, len };
    match family {
        // AF_UNSPEC: the spec says to accept it and use the real connection's addresses.
        0x00 => Ok(Header::Local),
        // TCP over IPv4: 4 + 4 address bytes, 2 + 2 port bytes; TLVs may follow.
        0x11 => addresses::<4>(body)
            .map(|(s, d, sp, dp)| proxied((s.into(), sp), (d.into(), dp)))
            .ok_or_else(short),
        // TCP over IPv6: 16 + 16 address bytes, 2 + 2 port bytes; TLVs may follow.
        0x21 => addresses::<16>(body)
            .map(|(s, d, sp, dp)| proxied((s.into(), sp), (d.into(), dp)))
            .ok_or_else(short),
        other => Err(ProxyError::V2Unsupported(other)),
    }
}

/// Splits a v2 address block into source and destination addresses of `N` bytes and their
/// ports; `None` when it is too short.
fn addresses<const N: usize>(mut body: &[u8]) -> Option<([u8; N], [u8; N], u16, u16)> {
    fn take<const M: usize>(buf: &mut &[u8]) -> Option<[u8; M]> {
        let (head, rest) = buf.split_first_chunk::<M>()?;
        *buf = rest;
        Some(*head)
    }
    let (source, destination) = (take::<N>(&mut body)?, take::<N>(&mut body)?);
    let (sport, dport) = (take::<2>(&mut body)?, take::<2>(&mut body)?);
    Some((
        source,
        destination,
        u16::from_be_bytes(sport),
        u16::from_be_bytes(dport),
    ))
}

fn proxied(source: (IpAddr, u16), destination: (IpAddr, u16)) -> Header {
    Header::Proxied {
        source: source.into(),
        destination: destination.into(),
    }
}

/// Reads one PROXY header (v1 or v2) from `sock`, consuming exactly its bytes, by `deadline`.
/// v1 is read a byte at a time up to CRLF (at most [`V1_MAX`] bytes); v2 as its 16 fixed bytes,
/// then exactly the length they announce.
///
/// # Errors
/// [`ProxyError::Io`] with `TimedOut` naming the phase when the deadline passes, or
/// `UnexpectedEof` when the peer closes first; the parse errors for anything else.
pub fn read_header(sock: &TcpStream, deadline: Deadline) -> Result<Header, ProxyError> {
    let mut first = [0u8; 1];
    read_exact(sock, &mut first, deadline)?;
    match first[0] {
        b'P' => {
            let mut line = Vec::with_capacity(V1_MAX);
            line.push(b'P');
            while !line.ends_with(b"\r\n") {
                if line.len() >= V1_MAX {
                    return Err(ProxyError::V1TooLong);
                }
                let mut byte = [0u8; 1];
                read_exact(sock, &mut byte, deadline)?;
                line.push(byte[0]);
                check_v1_prefix(&line)?;
            }
            parse_v1(&line)
        }
        b'\r' => {
            let mut fixed = [0u8; V2_FIXED];
            fixed[0] = b'\r';
            read_exact(sock, &mut fixed[1..], deadline)?;
            let len = v2_length(&fixed)?;
            let mut body = vec![0u8; len];
            read_exact(sock, &mut body, deadline)?;
            parse_v2(&fixed, &body)
        }
        _ => Err(ProxyError::NotProxy),
    }
}

/// Fills `buf` from `sock`, each read given only what is left of `deadline`.
fn read_exact(mut sock: &TcpStream, buf: &mut [u8], deadline: Deadline) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        deadline.arm(sock)?;
        match sock.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the end of the proxy header",
                ));
            }
            Ok(n) => filled += n,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::deadline::Phase;
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn v2_tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&src);
        body.extend_from_slice(&dst);
        body.extend_from_slice(&sport.to_be_bytes());
        body.extend_from_slice(&dport.to_be_bytes());
        body.extend_from_slice(tlvs);
        v2(1, 0x11, &body)
    }

    fn proxied(src: &str, dst: &str) -> Header {
        Header::Proxied {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 443\r\nTLS";
        assert_eq!(
            parse(line).unwrap(),
            (
                proxied("203.0.113.7:40001", "192.0.2.1:443"),
                line.len() - 3
            )
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 8443\r\n";
        assert_eq!(
            parse(line).unwrap(),
            (
                proxied("[2001:db8::7]:65535", "[2001:db8::1]:8443"),
                line.len()
            )
        );
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert_eq!(
            parse(line).unwrap().0.client(peer),
            "[2001:db8::7]:65535".parse().unwrap()
        );
    }

    #[test]
    fn v1_unknown_keeps_the_peer() {
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ] {
            assert_eq!(parse(line).unwrap(), (Header::Local, line.len()));
        }
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert_eq!(Header::Local.client(peer), peer);
    }

    #[test]
    fn v1_malformed() {
        for line in [
            &b"PROXY TCP4 203.0.113.7 192.0.2.1 40001\r\n"[..],
            b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 443 9\r\n",
            b"PROXY TCP4  203.0.113.7 192.0.2.1 40001 443\r\n",
            b"PROXY TCP4 2001:db8::7 192.0.2.1 40001 443\r\n",
            b"PROXY TCP6 203.0.113.7 2001:db8::1 40001 443\r\n",
            b"PROXY UDP4 203.0.113.7 192.0.2.1 40001 443\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 443\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 040001 443\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 +4000 443\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 443\n\r\n",
            b"PROXY TCP4 203.0.113.\xff 192.0.2.1 40001 443\r\n",
        ] {
            assert!(
                matches!(parse(line), Err(ProxyError::V1Malformed(_))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn v1_without_crlf_within_107_bytes() {
        let mut line = b"PROXY TCP6 ".to_vec();
        line.resize(V1_MAX, b'1');
        assert!(matches!(parse(&line), Err(ProxyError::V1TooLong)));
        line.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&line), Err(ProxyError::V1TooLong)));
        assert!(matches!(parse_v1(&line), Err(ProxyError::V1TooLong)));
        // The longest legal line (the spec's worst case: UNKNOWN with two full IPv6 addresses)
        // fits exactly.
        let longest = format!(
            "PROXY UNKNOWN {0} {0} 65535 65535\r\n",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(longest.len(), V1_MAX);
        assert!(parse(longest.as_bytes()).is_ok());
    }

    #[test]
    fn v2_tcp4_tcp6_with_tlvs_skipped() {
        // A PP2_TYPE_ALPN TLV and a NOOP after the addresses.
        let tlvs = [0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00];
        let header = v2_tcp4([203, 0, 113, 7], [192, 0, 2, 1], 40001, 443, &tlvs);
        let mut buf = header.clone();
        buf.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&buf).unwrap(),
            (proxied("203.0.113.7:40001", "192.0.2.1:443"), header.len())
        );
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&40002u16.to_be_bytes());
        body.extend_from_slice(&8443u16.to_be_bytes());
        let header = v2(1, 0x21, &body);
        assert_eq!(
            parse(&header).unwrap(),
            (
                proxied("[2001:db8::7]:40002", "[2001:db8::1]:8443"),
                header.len()
            )
        );
    }

    #[test]
    fn v2_local_and_unspec_keep_the_peer() {
        let local = v2(0, 0x00, &[]);
        assert_eq!(parse(&local).unwrap(), (Header::Local, 16));
        // LOCAL with an address block: ignored, skipped.
        let local = v2(0, 0x11, &[0; 12]);
        assert_eq!(parse(&local).unwrap(), (Header::Local, 28));
        let unspec = v2(1, 0x00, &[]);
        assert_eq!(parse(&unspec).unwrap(), (Header::Local, 16));
    }

    #[test]
    fn v2_bad_fields() {
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Err(ProxyError::V2Version(1))));
        assert!(matches!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(ProxyError::V2Command(2))
        ));
        // UDP over IPv4, and AF_UNIX: not a TCP client address.
        assert!(matches!(
            parse(&v2(1, 0x12, &[0; 12])),
            Err(ProxyError::V2Unsupported(0x12))
        ));
        assert!(matches!(
            parse(&v2(1, 0x31, &[0; 216])),
            Err(ProxyError::V2Unsupported(0x31))
        ));
        assert!(matches!(
            parse(&v2(1, 0x11, &[0; 11])),
            Err(ProxyError::V2Short {
                family: 0x11,
                len: 11
            })
        ));
        assert!(matches!(
            parse(&v2(1, 0x21, &[0; 12])),
            Err(ProxyError::V2Short {
                family: 0x21,
                len: 12
            })
        ));
    }

    #[test]
    fn v2_length_over_the_cap() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x11]);
        header.extend_from_slice(&((V2_MAX_LEN + 1) as u16).to_be_bytes());
        assert!(matches!(
            parse(&header),
            Err(ProxyError::V2TooLong(n)) if n == V2_MAX_LEN + 1
        ));
        let mut max = V2_SIGNATURE.to_vec();
        max.extend_from_slice(&[0x21, 0x11]);
        max.extend_from_slice(&0xffffu16.to_be_bytes());
        assert!(matches!(parse(&max), Err(ProxyError::V2TooLong(65535))));
    }

    #[test]
    fn truncated_headers() {
        let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 443\r\n";
        let v2 = v2_tcp4([203, 0, 113, 7], [192, 0, 2, 1], 40001, 443, &[]);
        for n in 0..v1.len() {
            assert!(matches!(parse(&v1[..n]), Err(ProxyError::Truncated)), "{n}");
        }
        for n in 0..v2.len() {
            assert!(matches!(parse(&v2[..n]), Err(ProxyError::Truncated)), "{n}");
        }
    }

    #[test]
    fn garbage_is_not_proxy() {
        for buf in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"PROXZ TCP4",
            b"POST / HTTP/1.1\r\n",
            b"\r\n\r\n\0\r\nQUIT?\x21\x11\x00\x0c",
            b"\r\nGET",
        ] {
            assert!(
                matches!(parse(buf), Err(ProxyError::NotProxy)),
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    /// A connected pair of sockets on loopback.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (client, l.accept().unwrap().0)
    }

    fn deadline(budget: Duration) -> Deadline {
        Deadline::new(Phase::TlsHandshake, Instant::now(), budget)
    }

    #[test]
    fn reading_consumes_exactly_the_header() {
        let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 443\r\n".to_vec();
        let v2 = v2_tcp4([203, 0, 113, 7], [192, 0, 2, 1], 40001, 443, &[4, 0, 1, 0]);
        for header in [v1, v2] {
            let (mut client, server) = pair();
            let mut sent = header.clone();
            sent.extend_from_slice(b"\x16\x03\x01rest");
            client.write_all(&sent).unwrap();
            let got = read_header(&server, deadline(Duration::from_secs(5))).unwrap();
            assert_eq!(got, proxied("203.0.113.7:40001", "192.0.2.1:443"));
            let mut rest = [0u8; 7];
            (&server).read_exact(&mut rest).unwrap();
            assert_eq!(&rest, b"\x16\x03\x01rest");
        }
    }

    #[test]
    fn reading_stops_at_the_deadline_eof_or_garbage() {
        // A header that trickles and never ends: the deadline, not the per-read timeout, wins.
        let (mut client, server) = pair();
        client.write_all(b"PROXY TCP4 1").unwrap();
        let started = Instant::now();
        let e = read_header(&server, deadline(Duration::from_millis(300))).unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // The peer closes mid-header.
        let (mut client, server) = pair();
        client.write_all(&V2_SIGNATURE[..5]).unwrap();
        drop(client);
        let e = read_header(&server, deadline(Duration::from_secs(5))).unwrap_err();
        assert!(matches!(&e, ProxyError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof));
        // A TLS ClientHello: refused on the first byte.
        let (mut client, server) = pair();
        client.write_all(b"\x16\x03\x01\x02\x00").unwrap();
        let e = read_header(&server, deadline(Duration::from_secs(5))).unwrap_err();
        assert!(matches!(e, ProxyError::NotProxy));
        // A v1 line that never ends: refused at 107 bytes, without waiting for more.
        let (mut client, server) = pair();
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        client.write_all(&long).unwrap();
        let e = read_header(&server, deadline(Duration::from_secs(5))).unwrap_err();
        assert!(matches!(e, ProxyError::V1TooLong), "{e}");
    }
}
