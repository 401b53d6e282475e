//! The one-shot commands an admin runs next to the server: `check-config` (with access-rule
//! warnings), `check-access` (a dry run of the roles), and `token add|list|revoke`. Each returns
//! its output as text, or an error to print; `main` maps them to exit codes.

use std::fmt;
use std::path::Path;

use crate::acl;
use crate::config::{Config, ConfigError};
use crate::tokens::{self, TokenStore, TokensError};
use crate::users::{UserStore, UsersError};

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
        }
    }
}

impl std::error::Error for CommandError {}

/// Validates the config, the users file and the tokens file, and lists access-rule warnings
/// (roles naming unknown users, patterns that match no channel, channels no role can use).
///
/// # Errors
/// The first hard error, naming file, line and key.
pub fn check_config(path: &Path) -> Result<String, CommandError> {
    let config = Config::load(path).map_err(CommandError::Config)?;
    let users = UserStore::load(&config.auth.users_file).map_err(CommandError::Users)?;
    let tokens = TokenStore::load(&config.auth.tokens_file).map_err(CommandError::Tokens)?;
    let names: Vec<&str> = users.names().collect();
    let mut out = String::new();
    for warning in acl::lint(&config, &names) {
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
    out.push_str(&format!(
        "{}: ok ({} channels, {} roles, {} users, {} API tokens)\n",
        path.display(),
        config.channels.len(),
        config.roles.len(),
        users.len(),
        tokens.len()
    ));
    Ok(out)
}

/// What `user` (`-` for an unauthenticated client) may do on `path`, and which rule decided it.
///
/// # Errors
/// An unusable config file.
pub fn check_access(path: &Path, user: &str, channel_path: &str) -> Result<String, CommandError> {
    let config = Config::load(path).map_err(CommandError::Config)?;
    let user = (user != "-").then_some(user);
    let mut text = acl::explain(&config, user, channel_path);
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
        .collect())
}

/// `token revoke`: removes the named token; the user's sessions stop working with it.
///
/// # Errors
/// Config or tokens file problems, or no such token.
pub fn token_revoke(path: &Path, user: &str, name: &str) -> Result<(), CommandError> {
    let config = Config::load(path).map_err(CommandError::Config)?;
    tokens::revoke(&config.auth.tokens_file, user, name).map_err(CommandError::Tokens)
}
