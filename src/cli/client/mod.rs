//! `wsgate client URL`: a small synchronous WebSocket client, so a wsgate user needs no other
//! program to try a channel. [`dial`] reads the credential (never from the command line), builds
//! the TLS settings (`--ca` or the system's roots) and opens the connection under one deadline;
//! [`pump`] then prints what arrives and sends what is typed, in one `poll(2)` loop. Every way it
//! can end is a [`ClientError`] with its own exit code, said on stderr.

mod dial;
mod pump;

use std::fmt;
use std::path::PathBuf;

/// What `wsgate client` was asked to do (parsed by [`crate::cli::args`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `wss://HOST[:PORT]/PATH` or `ws://…`.
    pub url: String,
    pub credential: Credential,
    /// `--ca FILE`: the only certificates trusted; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// `--origin`: sent as the `Origin` header.
    pub origin: Option<String>,
    pub input: Input,
}

/// Where the client's credential comes from. Never the command line itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `--user NAME`: the password from `file`'s first line, else `WSGATE_PASSWORD`, else asked
    /// on the terminal.
    Password { user: String, file: Option<PathBuf> },
    /// `--token-file FILE`: an API token, sent as a bearer.
    TokenFile(PathBuf),
    /// `--session-file FILE`: a session token, sent as a bearer.
    SessionFile(PathBuf),
    /// None named: `WSGATE_TOKEN`, else `WSGATE_SESSION`, else no credential.
    FromEnvironment,
}

/// What the client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Each line of stdin, as one message; the end of stdin closes the connection.
    Stdin,
    /// Each line of this file, then the close.
    File(PathBuf),
    /// Nothing: only print what arrives, until the server closes.
    Nothing,
}

/// How a client run ended, other than a normal close; [`ClientError::exit_code`] is its status.
#[derive(Debug)]
pub enum ClientError {
    /// The URL, a file or the terminal could not be used (exit 2).
    Setup(String),
    /// The connection, its TLS or its handshake failed, or it was lost without a close frame
    /// (exit 1).
    Network(String),
    /// The server answered the upgrade with an HTTP status other than 101 (exit 3 to 7).
    Refused(Refusal),
    /// The server closed the connection with a code other than 1000 (exit 8).
    Closed { code: u16, reason: String },
}

/// The server's answer to a refused upgrade.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// The status's reason phrase (`Unauthorized`).
    pub phrase: String,
    /// `Retry-After`, in seconds, when the server sent one.
    pub retry_after: Option<String>,
    /// The body's lines after its status line, sanitised and bounded.
    pub detail: String,
    /// What the client asked for, to say what to change.
    pub path: String,
    pub user: Option<String>,
    pub origin: Option<String>,
}

impl ClientError {
    /// The process's exit status for this ending, as `wsgate client --help` lists them.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Network(_) => 1,
            ClientError::Setup(_) => 2,
            ClientError::Refused(r) => match r.status {
                401 => 3,
                403 => 4,
                404 => 5,
                429 | 503 => 6,
                _ => 7,
            },
            ClientError::Closed { .. } => 8,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Setup(e) | ClientError::Network(e) => f.write_str(e),
            ClientError::Refused(r) => r.fmt(f),
            ClientError::Closed { code, reason } if reason.is_empty() => {
                write!(f, "closed by the server: {code}")
            }
            ClientError::Closed { code, reason } => {
                write!(f, "closed by the server: {code} {reason}")
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {} {}: ", self.status, self.phrase)?;
        let path = &self.path;
        match self.status {
            401 => match &self.user {
                Some(user) => write!(
                    f,
                    "the server did not accept the password of \"{user}\" (wrong password or \
                     unknown user)"
                )?,
                None => f.write_str(
                    "no valid credential: give --user NAME, --token-file or --session-file (a \
                     token or session may have expired or been revoked)",
                )?,
            },
            403 => {
                let origin = self.origin.as_deref().map_or_else(
                    || "no Origin was sent (try --origin)".to_string(),
                    |o| format!("the Origin {o} is not allowed"),
                );
                let who = self.user.as_deref().unwrap_or("-");
                write!(
                    f,
                    "{origin}, or no role lets this client subscribe to {path} (the server's \
                     admin can ask `wsgate check-access {who} {path}`)"
                )?;
            }
            404 => write!(f, "no channel serves {path}")?,
            429 => f.write_str("too many failed logins from this address or for this user")?,
            503 => f.write_str("the server is busy or shutting down")?,
            _ => f.write_str("the server refused the upgrade")?,
        }
        if let Some(after) = &self.retry_after {
            write!(f, "; try again in {after} s (Retry-After)")?;
        }
        if !self.detail.is_empty() {
            write!(f, "\n{}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for ClientError {}

/// Connects as `options` say and runs until the connection ends: `Ok` after a close with 1000.
///
/// # Errors
/// A [`ClientError`] for every other ending, with its exit code.
pub fn run(options: &Options) -> Result<(), ClientError> {
    let target = dial::Target::parse(&options.url)?;
    let credential = dial::read_credential(&options.credential)?;
    let source = pump::Source::open(&options.input)?;
    let ws = dial::connect(&target, options, credential.as_ref())?;
    pump::run(ws, source)
}
