//! The one-shot commands an admin runs next to the server: `check-config` (with access-rule
//! warnings), `check-access` (a dry run of the roles), `token add|list|revoke`, and
//! `connections` / `disconnect` (asking the running server's admin endpoint). Each returns its
//! output as text, or an error to print; `main` maps them to exit codes.

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use std::os::unix::fs::PermissionsExt;

use crate::admin::{self, Filter, TokenFileError};
use crate::auth::files::{count, shown};
use crate::auth::tokens::{self, TokensError};
use crate::auth::users::{UserStore, UsersError};
use crate::cli::access_report;
use crate::config::ClientAuth;
use crate::config::{CREDENTIALS_ENV, Config, ConfigError};
use crate::server;

/// Why a command could not run (exit code 2: something in the configuration needs fixing).
#[derive(Debug)]
pub enum CommandError {
    Config(ConfigError),
    Users(UsersError),
    Tokens(TokensError),
    /// `token add` for a user the users file does not have.
    UnknownUser {
        user: String,
        users_file: std::path::PathBuf,
    },
    /// `connections` / `disconnect` with a config that has no `[admin] listen`.
    NoAdmin {
        config: std::path::PathBuf,
    },
    /// `[admin] token_file` cannot be used.
    AdminToken {
        path: std::path::PathBuf,
        error: TokenFileError,
    },
    /// The admin endpoint could not be reached, or refused the request (a runtime problem).
    Admin(String),
    /// `check-config`: what `serve` would stop with (certificate, key, bind, ...).
    Start(crate::server::StartError),
}

impl CommandError {
    /// True when the configuration is fine but the server could not be asked (exit code 1).
    pub fn is_runtime(&self) -> bool {
        matches!(self, CommandError::Admin(_))
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Config(e) => e.fmt(f),
            CommandError::Users(e) => e.fmt(f),
            CommandError::Tokens(e) => e.fmt(f),
            CommandError::UnknownUser { user, users_file } => write!(
                f,
                "tokens: user \"{user}\" is not in {}; add it with `wsgate passwd` first",
                users_file.display()
            ),
            CommandError::NoAdmin { config } => write!(
                f,
                "{}: no [admin] listen: the server has no admin endpoint to ask",
                config.display()
            ),
            CommandError::AdminToken { path, error } => {
                write!(f, "[admin] token_file {}: {error}", path.display())
            }
            CommandError::Admin(e) => f.write_str(e),
            CommandError::Start(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CommandError {}

/// Checks a config the way `serve` starts from it ([`server::check`]: users, tokens and session
/// key files, certificate and key paired, listen addresses tried), and lists access-rule warnings
/// (roles naming unknown users, patterns that match no channel, channels no role can use) and
/// what stops a first set-up from working.
///
/// `credential:` paths need `$CREDENTIALS_DIRECTORY`, which systemd sets only for the service.
/// Without it, they are looked up in the config file's directory, where the packaged unit's
/// `LoadCredential=` lines take them from (`/etc/wsgate`), and a note says so.
///
/// # Errors
/// The first hard error, naming file, line and key.
pub fn check_config(path: &Path) -> Result<String, CommandError> {
    let mut out = String::new();
    let config = match Config::load(path) {
        Err(_) if std::env::var_os(CREDENTIALS_ENV).is_none() => {
            let dir = config_dir(path);
            let config =
                Config::load_with_credentials(path, Some(&dir)).map_err(CommandError::Config)?;
            out.push_str(&format!(
                "note: ${CREDENTIALS_ENV} is not set (systemd sets it for the service only): \
                 credential: paths read from {}, where the packaged unit's LoadCredential= takes \
                 them from; to run serve by hand, set {CREDENTIALS_ENV}={}\n",
                dir.display(),
                dir.display()
            ));
            config
        }
        loaded => loaded.map_err(CommandError::Config)?,
    };
    let checked = server::check(config.clone()).map_err(CommandError::Start)?;
    let (users, tokens) = (&checked.users, &checked.tokens);
    let names: Vec<&str> = users.names().collect();
    for warning in access_report::lint(&config, &names) {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out.push_str(&first_hour_warnings(&config, users));
    for warning in &checked.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    for (user, name, _) in tokens.list().filter(|(user, _, _)| !users.contains(user)) {
        out.push_str(&format!(
            "warning: {}: token \"{name}\" of user \"{user}\" is orphaned: \"{user}\" is not in {}, \
             so the token is refused; remove it with `wsgate token revoke {user} {name}`\n",
            config.auth.tokens_file.display(),
            config.auth.users_file.display()
        ));
    }
    for note in &checked.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out.push_str(&format!(
        "{}: ok ({}, {}, {}, {})\n",
        path.display(),
        count(config.channels.len(), "channel", "channels"),
        count(config.roles.len(), "role", "roles"),
        count(users.len(), "user", "users"),
        count(tokens.len(), "API token", "API tokens")
    ));
    Ok(out)
}

/// The directory of the config file `path`, absolute.
fn config_dir(path: &Path) -> std::path::PathBuf {
    let dir = path.parent().unwrap_or(Path::new(""));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// What stops a working set-up from working that the config alone cannot show: nobody able to log
/// in, and secret files others can read.
fn first_hour_warnings(config: &Config, users: &UserStore) -> String {
    let mut out = String::new();
    let anonymous = config.channels.iter().any(|c| c.anonymous);
    let certificates = config.tls.client_auth != ClientAuth::Off;
    if users.is_empty() && !anonymous && !certificates {
        out.push_str(&format!(
            "warning: {} has no user and no channel is anonymous: nobody can log in; add a user \
             with `wsgate passwd {} NAME`\n",
            shown(&config.auth.users_file),
            shown(&config.auth.users_file)
        ));
    }
    let admin_token = config.admin.as_ref().and_then(|a| a.token_file.as_ref());
    let tls_key = config.server.tls.then_some(&config.tls.key);
    for (file, what) in [
        (tls_key, "TLS private key"),
        (Some(&config.auth.users_file), "users file"),
        (Some(&config.auth.tokens_file), "tokens file"),
        (Some(&config.auth.session_key_file), "session key file"),
        (admin_token, "[admin] token_file"),
    ] {
        let Some(file) = file else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push_str(&format!(
                "warning: {what} {} can be read by group or others (mode {mode:03o}); run \
                 `chmod 600 {}`\n",
                shown(file),
                shown(file)
            ));
        }
    }
    out
}

/// What `user` (`-` for an unauthenticated client) may do on `path`, and which rule decided it.
///
/// # Errors
/// An unusable config file.
pub fn check_access(path: &Path, user: &str, channel_path: &str) -> Result<String, CommandError> {
    let config = Config::load(path).map_err(CommandError::Config)?;
    let user = (user != "-").then_some(user);
    if let Some(name) = user {
        let users = UserStore::load(&config.auth.users_file).map_err(CommandError::Users)?;
        if !users.contains(name) {
            let file = shown(&config.auth.users_file);
            if config.tls.client_auth == ClientAuth::Off {
                return Ok(format!(
                    "path: {channel_path}\nclient: user `{name}`, who is not in {file}\n\
                     outcome: 401 Unauthorized: no password, token or session of a user missing \
                     from the users file is accepted; add them with `wsgate passwd {file} {name}`\n"
                ));
            }
            let mut text = access_report::explain(&config, user, channel_path);
            text.push_str(&format!(
                "note: `{name}` is not in {file}: only a client certificate naming them gets in; \
                 any password, token or session of theirs gets 401\n"
            ));
            return Ok(text);
        }
    }
    let mut text = access_report::explain(&config, user, channel_path);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// `token add`: creates a token for `user` and returns it (shown once; only its SHA-256 is kept).
///
/// # Errors
/// Config, users file (the user must exist) or tokens file problems.
pub fn token_add(path: &Path, user: &str, name: Option<&str>) -> Result<String, CommandError> {
    let config = Config::load(path).map_err(CommandError::Config)?;
    let users = UserStore::load(&config.auth.users_file).map_err(CommandError::Users)?;
    if !users.contains(user) {
        return Err(CommandError::UnknownUser {
            user: user.to_string(),
            users_file: config.auth.users_file.clone(),
        });
    }
    tokens::add(&config.auth.tokens_file, user, name).map_err(CommandError::Tokens)
}

/// `token list`: one line per token (user, name, hash prefix), optionally for one user. A token
/// whose user is not in the users file gets a fourth column, `orphaned (user not in FILE)`: the
/// server refuses it.
///
/// # Errors
/// Config, users file or tokens file problems.
pub fn token_list(path: &Path, user: Option<&str>) -> Result<String, CommandError> {
    let config = Config::load(path).map_err(CommandError::Config)?;
    let users = UserStore::load(&config.auth.users_file).map_err(CommandError::Users)?;
    let rows = tokens::list_file(&config.auth.tokens_file).map_err(CommandError::Tokens)?;
    Ok(rows
        .into_iter()
        .filter(|(u, _, _)| user.is_none_or(|want| want == u))
        .map(|(u, name, prefix)| {
            let orphaned = if users.contains(&u) {
                String::new()
            } else {
                format!(
                    "\torphaned (user not in {})",
                    config.auth.users_file.display()
                )
            };
            format!("{u}\t{name}\tsha256:{prefix}…{orphaned}\n")
        })
        .collect::<String>())
    .map(|text| {
        if !text.is_empty() {
            return text;
        }
        let whose = user.map(|u| format!(" of \"{u}\"")).unwrap_or_default();
        format!(
            "no API tokens{whose} in {}; add one with `wsgate token add USER`\n",
            shown(&config.auth.tokens_file)
        )
    })
}

/// `token revoke`: removes the named token; the user's sessions stop working with it.
///
/// # Errors
/// Config or tokens file problems, or no such token.
pub fn token_revoke(path: &Path, user: &str, name: &str) -> Result<(), CommandError> {
    let config = Config::load(path).map_err(CommandError::Config)?;
    tokens::revoke(&config.auth.tokens_file, user, name).map_err(CommandError::Tokens)
}

/// How long `connections` and `disconnect` wait to connect, and for the whole answer.
const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const ADMIN_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer read (a connection list of tens of thousands of connections fits).
const ADMIN_ANSWER_MAX: u64 = 64 * 1024 * 1024;

/// `connections`: the running server's open connections matching `filter`, as JSON, one object
/// per line.
///
/// # Errors
/// No admin endpoint in the config, an unusable token file, or the server cannot be asked.
pub fn connections(path: &Path, filter: &Filter) -> Result<String, CommandError> {
    admin_request(path, "GET", "/connections", filter)
}

/// `disconnect`: closes the matching connections (with 1008) and returns the server's count.
///
/// # Errors
/// As [`connections`].
pub fn disconnect(path: &Path, filter: &Filter) -> Result<String, CommandError> {
    admin_request(path, "POST", "/disconnect", filter)
}

/// One request to the admin endpoint the config at `path` names, with its bearer token; the
/// answer's body when it is a 2xx.
fn admin_request(
    path: &Path,
    method: &str,
    endpoint: &str,
    filter: &Filter,
) -> Result<String, CommandError> {
    let config = Config::load(path).map_err(CommandError::Config)?;
    let Some(admin_cfg) = &config.admin else {
        return Err(CommandError::NoAdmin {
            config: path.to_path_buf(),
        });
    };
    let token = match &admin_cfg.token_file {
        Some(file) => Some(
            admin::read_token(file).map_err(|error| CommandError::AdminToken {
                path: file.clone(),
                error,
            })?,
        ),
        None => None,
    };
    let addr = reachable(admin_cfg.listen);
    let unreachable = |e: std::io::Error| {
        CommandError::Admin(format!(
            "cannot ask the admin endpoint at {addr}: {}",
            e.to_string().to_lowercase()
        ))
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, ADMIN_CONNECT_TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(ADMIN_ANSWER_TIMEOUT))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(ADMIN_ANSWER_TIMEOUT))
        .map_err(unreachable)?;
    let query = match admin::query_string(filter) {
        q if q.is_empty() => q,
        q => format!("?{q}"),
    };
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {endpoint}{query} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut answer = Vec::new();
    stream
        .take(ADMIN_ANSWER_MAX)
        .read_to_end(&mut answer)
        .map_err(unreachable)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| CommandError::Admin(format!("no HTTP answer from {addr}")))?;
    if (200..300).contains(&status) {
        Ok(body.to_string())
    } else {
        Err(CommandError::Admin(format!(
            "the admin endpoint at {addr} answered {status}: {}",
            body.trim()
        )))
    }
}

/// The address to reach a listener bound to `listen`: a wildcard address means this host.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_round_trip_as_queries_and_wildcards_reach_loopback() {
        let f = Filter {
            user: Some("a b+c&d=é".into()),
            session: None,
            path: Some("/chat/*".into()),
        };
        assert_eq!(
            admin::query_string(&f),
            "user=a%20b%2Bc%26d%3D%C3%A9&path=/chat/*"
        );
        assert_eq!(
            admin::parse_query(&admin::query_string(&f), admin::FILTER_KEYS),
            Ok(f)
        );
        assert_eq!(
            reachable("0.0.0.0:9480".parse().unwrap()),
            "127.0.0.1:9480".parse().unwrap()
        );
        assert_eq!(
            reachable("[::]:9480".parse().unwrap()),
            "[::1]:9480".parse().unwrap()
        );
        assert_eq!(
            reachable("10.0.0.2:9480".parse().unwrap()),
            "10.0.0.2:9480".parse().unwrap()
        );
    }
}
