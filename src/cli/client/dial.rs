//! Opening the client's connection: the URL read once into a [`ServerUrl`], the credential read
//! from a file, the environment or the terminal, and the TCP connect, TLS handshake and the
//! server's 101 (or its refusal) under one deadline, [`HANDSHAKE_DEADLINE`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderValue, Response, Uri};
use tungstenite::{Error as WsError, WebSocket};

use super::{ClientError, Credential, Options, Refusal};
use crate::cli::terminal::EchoOff;
use crate::pipeline::relay::client_tls;

/// The connect, the TLS handshake and the server's answer to the upgrade, together.
pub(super) const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// The longest password, token or session read, in bytes.
const MAX_SECRET: usize = 4096;

/// The most of a refusal's body shown, in characters.
const MAX_DETAIL: usize = 512;

/// The query keys that carry a secret, which the URL (a command-line argument) must not hold.
const SECRET_KEYS: [&str; 3] = ["pass", "token", "session"];

/// Where to connect, read once from the URL.
pub(super) struct ServerUrl {
    uri: Uri,
    secure: bool,
    /// Without the brackets of an IPv6 address.
    host: String,
    port: u16,
}

impl ServerUrl {
    pub(super) fn parse(url: &str) -> Result<ServerUrl, ClientError> {
        let bad = |why: &str| ClientError::Setup(format!("URL {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => {
                return Err(bad(
                    "give wss://HOST[:PORT]/PATH (or ws:// for a plaintext listener)",
                ));
            }
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "credentials in the URL would be on the command line: use --user (the password \
                 is asked), --token-file or --session-file",
            ));
        }
        let query = uri.query().unwrap_or("");
        for pair in query.split('&') {
            let key = pair.split('=').next().unwrap_or("");
            if SECRET_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
                return Err(bad(&format!(
                    "?{key}= would put a secret on the command line: use --user (the password is \
                     asked), --token-file or --session-file"
                )));
            }
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        Ok(ServerUrl {
            uri,
            secure,
            host,
            port,
        })
    }

    /// The path asked for, for the messages.
    pub(super) fn path(&self) -> &str {
        self.uri.path()
    }
}

/// The `Authorization` header's value, or none.
pub(super) fn read_credential(credential: &Credential) -> Result<Option<String>, ClientError> {
    let bearer = |token: String| Some(format!("Bearer {token}"));
    match credential {
        Credential::Password { user, file } => {
            let password = match file {
                Some(file) => first_line(file, "password")?,
                None => match env("WSGATE_PASSWORD")? {
                    Some(p) => p,
                    None => ask_password(user)?,
                },
            };
            let pair = format!("{user}:{password}");
            Ok(Some(format!(
                "Basic {}",
                data_encoding::BASE64.encode(pair.as_bytes())
            )))
        }
        Credential::TokenFile(file) => Ok(bearer(first_line(file, "token")?)),
        Credential::SessionFile(file) => Ok(bearer(first_line(file, "session")?)),
        Credential::FromEnvironment => match env("WSGATE_TOKEN")?.or(env("WSGATE_SESSION")?) {
            Some(token) => Ok(bearer(token)),
            None if env("WSGATE_PASSWORD")?.is_some() => Err(ClientError::Setup(
                "WSGATE_PASSWORD is set: name its user with --user NAME".into(),
            )),
            None => Ok(None),
        },
    }
}

/// An environment variable's value, if set and not empty.
fn env(name: &str) -> Result<Option<String>, ClientError> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ClientError::Setup(format!("{name} is not UTF-8 text")))
        }
    }
}

/// A secret file's first line, without its line ending.
fn first_line(path: &Path, what: &str) -> Result<String, ClientError> {
    let failed = |why: String| ClientError::Setup(format!("{what} file {}: {why}", path.display()));
    let file = File::open(path).map_err(|e| failed(e.to_string()))?;
    let line = read_line(BufReader::new(file)).map_err(|e| failed(e.to_string()))?;
    line.ok_or_else(|| failed("empty".into()))
}

/// One line, bounded, without its `\n` or `\r\n`; `None` when there is none.
fn read_line(input: impl BufRead) -> io::Result<Option<String>> {
    let mut line = String::new();
    input.take(MAX_SECRET as u64 + 2).read_line(&mut line)?;
    let trimmed = line.trim_end_matches('\n').trim_end_matches('\r');
    if trimmed.len() > MAX_SECRET {
        return Err(io::Error::other(format!("longer than {MAX_SECRET} bytes")));
    }
    Ok(Some(trimmed.to_string()).filter(|l| !l.is_empty()))
}

/// Asks the password on the terminal (not stdin, which carries the messages), without echo.
fn ask_password(user: &str) -> Result<String, ClientError> {
    let no_terminal = |e: io::Error| {
        ClientError::Setup(format!(
            "cannot ask the password ({e}): give --password-file FILE or set WSGATE_PASSWORD"
        ))
    };
    let tty = File::options()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(no_terminal)?;
    (&tty)
        .write_all(format!("Password for {user}: ").as_bytes())
        .map_err(no_terminal)?;
    let line = {
        let _echo_off = EchoOff::new(&tty).map_err(no_terminal)?;
        read_line(BufReader::new(&tty)).map_err(no_terminal)?
    };
    // The Enter was not echoed.
    let _ = (&tty).write_all(b"\n");
    line.ok_or_else(|| ClientError::Setup("no password given".into()))
}

/// The client's transport: TCP, or TLS over it.
pub(super) enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => &s.sock,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

/// Connects, handshakes TLS and upgrades, all before [`HANDSHAKE_DEADLINE`]. Returns the
/// connection and the session token the server issued with its 101, if any.
pub(super) fn connect(
    target: &ServerUrl,
    options: &Options,
    authorization: Option<&String>,
) -> Result<(WebSocket<Transport>, Option<String>), ClientError> {
    let at = Instant::now() + HANDSHAKE_DEADLINE;
    let tls = match target.secure {
        true => Some(
            client_tls(options.ca.as_deref(), "--ca")
                .map_err(|e| ClientError::Setup(e.to_string()))?,
        ),
        false => None,
    };
    let tcp = open_tcp(target, at)?;
    let stream = match tls {
        Some(config) => Transport::Tls(Box::new(handshake_tls(config, target, tcp, at)?)),
        None => Transport::Plain(tcp),
    };
    let mut request = (&target.uri)
        .into_client_request()
        .map_err(|e| ClientError::Setup(format!("URL: {e}")))?;
    let headers = [
        ("Authorization", authorization),
        ("Origin", options.origin.as_ref()),
    ];
    for (name, value) in headers {
        if let Some(value) = value {
            let value = HeaderValue::from_str(value).map_err(|_| {
                ClientError::Setup(format!("the {name} value holds characters a header cannot"))
            })?;
            request.headers_mut().insert(name, value);
        }
    }
    let mut attempt = tungstenite::client::client_with_config(request, stream, None);
    loop {
        match attempt {
            Ok((ws, response)) => {
                let session = response
                    .headers()
                    .get("X-Wsgate-Session")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                return Ok((ws, session));
            }
            Err(HandshakeError::Interrupted(mid)) => {
                set_timeouts(mid.get_ref().get_ref().tcp(), target, at)?;
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(WsError::Http(response))) => {
                return Err(ClientError::Refused(Box::new(refusal(
                    &response, target, options,
                ))));
            }
            Err(HandshakeError::Failure(e)) => {
                return Err(ClientError::Network(format!(
                    "{}:{}: upgrade failed: {e}",
                    target.host, target.port
                )));
            }
        }
    }
}

/// Writes the session token to `path`, readable by its owner only.
pub(super) fn save_session(path: &Path, session: Option<&str>) -> Result<(), ClientError> {
    let failed =
        |why: String| ClientError::Setup(format!("--save-session {}: {why}", path.display()));
    let session = session.ok_or_else(|| {
        failed(
            "the server issued no session (a token or anonymous login, or session_ttl = 0)".into(),
        )
    })?;
    let mut file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed(e.to_string()))?;
    file.write_all(format!("{session}\n").as_bytes())
        .map_err(|e| failed(e.to_string()))
}

/// The time left before `at`, set as the socket's read and write timeouts.
fn set_timeouts(tcp: &TcpStream, target: &ServerUrl, at: Instant) -> Result<(), ClientError> {
    let left = at
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ClientError::Network(format!(
                "{}:{}: no answer within {} s",
                target.host,
                target.port,
                HANDSHAKE_DEADLINE.as_secs()
            ))
        })?;
    tcp.set_read_timeout(Some(left))
        .and_then(|()| tcp.set_write_timeout(Some(left)))
        .map_err(|e| ClientError::Network(e.to_string()))
}

fn open_tcp(target: &ServerUrl, at: Instant) -> Result<TcpStream, ClientError> {
    let failed = |e: io::Error| {
        ClientError::Network(format!(
            "cannot connect to {}:{}: {e}",
            target.host, target.port
        ))
    };
    let addrs = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(failed)?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
    for addr in addrs {
        let left = at.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1))) {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                set_timeouts(&tcp, target, at)?;
                return Ok(tcp);
            }
            Err(e) => last = e,
        }
    }
    Err(failed(last))
}

fn handshake_tls(
    config: Arc<ClientConfig>,
    target: &ServerUrl,
    tcp: TcpStream,
    at: Instant,
) -> Result<StreamOwned<ClientConnection, TcpStream>, ClientError> {
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| ClientError::Setup(format!("host {:?}: {e}", target.host)))?;
    let conn =
        ClientConnection::new(config, name).map_err(|e| ClientError::Setup(format!("tls: {e}")))?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        set_timeouts(&tls.sock, target, at)?;
        match tls.conn.complete_io(&mut tls.sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The socket's timeout, set to the deadline: the next turn says it passed.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(tls_failure(&e, target)),
        }
    }
    Ok(tls)
}

/// A failed TLS handshake, with what to do when the certificate is not trusted.
fn tls_failure(e: &io::Error, target: &ServerUrl) -> ClientError {
    let untrusted = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
    let hint = if untrusted {
        "; trust its certificate with --ca FILE (e.g. the server's wsgate.crt)"
    } else {
        ""
    };
    ClientError::Network(format!(
        "{}:{}: TLS handshake failed: {e}{hint}",
        target.host, target.port
    ))
}

/// What the refusal says, with the client's own request beside it.
fn refusal(response: &Response<Option<Vec<u8>>>, target: &ServerUrl, options: &Options) -> Refusal {
    let status = response.status();
    let body = response
        .body()
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let status_line = format!("{} ", status.as_u16());
    let detail: String = body
        .lines()
        .filter(|l| !l.starts_with(&status_line) && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .take(MAX_DETAIL)
        .collect();
    Refusal {
        status: status.as_u16(),
        phrase: status.canonical_reason().unwrap_or("").to_string(),
        retry_after: response
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.chars()
                    .filter(char::is_ascii_digit)
                    .take(10)
                    .collect::<String>()
            })
            .filter(|v| !v.is_empty()),
        detail,
        path: target.path().to_string(),
        user: match &options.credential {
            Credential::Password { user, .. } => Some(user.clone()),
            _ => None,
        },
        origin: options.origin.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_holds_no_secret_and_names_its_port() {
        let t = ServerUrl::parse("wss://localhost/echo").unwrap();
        assert_eq!(
            (t.secure, t.host.as_str(), t.port),
            (true, "localhost", 443)
        );
        let t = ServerUrl::parse("ws://[::1]:8080/chat/x?since=1").unwrap();
        assert_eq!((t.secure, t.host.as_str(), t.port), (false, "::1", 8080));
        assert_eq!(t.path(), "/chat/x");
        for bad in [
            "https://h/echo",
            "wss://demo:pw@h/echo",
            "wss://h/echo?user=a&pass=b",
            "wss://h/echo?TOKEN=wsg_x",
            "wss://h/echo?session=s1.x",
        ] {
            assert!(
                matches!(ServerUrl::parse(bad), Err(ClientError::Setup(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_secret_is_one_bounded_line() {
        let line = |s: &str| read_line(io::Cursor::new(s.as_bytes().to_vec()));
        assert_eq!(line("pw\r\nnext").unwrap(), Some("pw".into()));
        assert_eq!(line("pw").unwrap(), Some("pw".into()));
        assert_eq!(line("").unwrap(), None);
        assert_eq!(line("\n").unwrap(), None);
        assert!(line(&"x".repeat(MAX_SECRET + 1)).is_err());
        assert_eq!(
            line(&"x".repeat(MAX_SECRET)).unwrap().unwrap().len(),
            MAX_SECRET
        );
    }
}
