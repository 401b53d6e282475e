//! What a user name may be: 1 to 64 bytes of `[A-Za-z0-9._@+-]`, the same in the users file, the
//! tokens file, a role's `members` and a request. Longer names in a request are refused unread.

use std::fmt;

/// The longest user name accepted (in the users file, and in a request: longer ones are refused
/// unread).
pub const MAX_USER_NAME_LEN: usize = 64;

/// Why a user name is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong {
        len: usize,
    },
    /// The name as written (escaped when shown), containing a character outside
    /// `[A-Za-z0-9._@+-]`.
    BadCharacter(String),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "empty user name"),
            NameError::TooLong { len } => write!(
                f,
                "user name is {len} bytes long, the limit is {MAX_USER_NAME_LEN}"
            ),
            NameError::BadCharacter(name) => write!(
                f,
                "user name \"{}\" has characters outside A-Z a-z 0-9 . _ @ + -",
                name.escape_debug()
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks a user name: 1 to 64 bytes of `[A-Za-z0-9._@+-]`.
///
/// # Errors
/// The [`NameError`] saying what is wrong.
pub fn check_user_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'+' | b'-'))
    {
        // Shown escaped and cut short: it is a name field, but keep the message bounded.
        let shown: String = name.chars().take(MAX_USER_NAME_LEN).collect();
        return Err(NameError::BadCharacter(shown));
    }
    if name.len() > MAX_USER_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    Ok(())
}
