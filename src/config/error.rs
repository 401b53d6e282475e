//! [`ConfigError`]: why a configuration could not be used, always with the file, and the line and
//! key where there is one, so an admin can go straight to the mistake.

use std::fmt;
use std::path::PathBuf;

/// Why a configuration could not be used. `Display` names the file, line (where there is one)
/// and key, so an admin can go straight to the mistake.
#[derive(Debug)]
pub enum ConfigError {
    /// The config file itself could not be read.
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The INI syntax is broken.
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// A section or key is wrong: unknown, repeated, bad value, missing file, cross-field rule.
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        section: String,
        key: Option<String>,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => {
                write!(
                    f,
                    "config: {}: cannot read the file: {error}",
                    path.display()
                )
            }
            ConfigError::Syntax {
                path,
                line,
                message,
            } => {
                write!(f, "config: {}", path.display())?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                }
                write!(f, ": {message}")
            }
            ConfigError::Invalid {
                path,
                line,
                section,
                key,
                message,
            } => {
                write!(f, "config: {}", path.display())?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                }
                f.write_str(": ")?;
                match (section.is_empty(), key) {
                    (false, Some(key)) => write!(f, "[{section}] {key}: ")?,
                    (false, None) => write!(f, "[{section}]: ")?,
                    (true, Some(key)) => write!(f, "{key}: ")?,
                    (true, None) => {}
                }
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}
