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
    /// `--save-session FILE`: where the session token of the 101 is written.
    pub save_session: Option<PathBuf>,
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
    Refused(Box<Refusal>),
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
    /// `refused: STATUS PHRASE: the server's reason (or ours)`, then a line saying what to change.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {} {}: ", self.status, self.phrase)?;
        let (path, who) = (&self.path, self.user.as_deref().unwrap_or("-"));
        let said = self.detail.to_ascii_lowercase();
        let origin = || match &self.origin {
            Some(o) => format!("the Origin {o} is not in the server's [origins] allow"),
            None => "no Origin was sent: give the one the server allows with --origin".into(),
        };
        let role = || {
            format!(
                "no role lets {who} subscribe to {path} (the server's admin can ask \
                 `wsgate check-access {who} {path}`)"
            )
        };
        let fix = match self.status {
            401 => match &self.user {
                Some(user) => format!("the password of \"{user}\" (or the user) is wrong"),
                None => "give --user NAME, --token-file or --session-file (a token or session \
                         may have expired or been revoked)"
                    .into(),
            },
            403 if said.contains("origin") => origin(),
            403 if said.contains("role") => role(),
            403 => format!("{}; or {}", origin(), role()),
            404 => format!("no channel serves {path}"),
            _ => String::new(),
        };
        let reason = match (self.detail.is_empty(), self.status) {
            (false, _) => self.detail.as_str(),
            (true, 401) => "credentials not accepted",
            (true, 429) => "too many failed logins",
            (true, 503) => "the server is busy or shutting down",
            (true, _) => "the server refused the upgrade",
        };
        f.write_str(reason)?;
        let retry_said = said.contains("retry after");
        if let Some(after) = self.retry_after.as_ref().filter(|_| !retry_said) {
            write!(f, "; try again in {after} s (Retry-After)")?;
        }
        if !fix.is_empty() {
            write!(f, "\n  {fix}")?;
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
    let target = dial::ServerUrl::parse(&options.url)?;
    let credential = dial::read_credential(&options.credential)?;
    let source = pump::Source::open(&options.input)?;
    let (ws, session) = dial::connect(&target, options, credential.as_ref())?;
    if let Some(path) = &options.save_session {
        dial::save_session(path, session.as_deref())?;
    }
    pump::run(ws, source)
}
