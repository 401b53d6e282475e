//! `wsgate passwd`: adds, changes or deletes a user in a users file. The password comes from a
//! no-echo terminal prompt or from stdin, never from argv; the file is rewritten atomically, 0600.
//!
//! The rewrite keeps every other line (comments, blank lines, other users, line endings) as it
//! was, in order; it refuses to touch a file that does not parse. The read-modify-write runs
//! under an advisory lock ([`crate::auth::files::lock_for_update`]), so concurrent runs never lose
//! each other's changes. The new file is written to a
//! temporary file in the same directory (mode 0600, same owner and group as the old file when
//! that can be kept), fsynced, renamed over the old one, and the directory is fsynced.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::auth::files;
use crate::auth::users::{self, UserStore, UsersError};
use crate::cli::terminal::EchoOff;
use crate::rules::user_name::{NameError, check_user_name};

/// The longest password accepted, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// The shortest password `wsgate passwd` accepts by default, in characters (NIST SP 800-63B's
/// minimum for a password a user chooses); `--min-length` sets another.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Why `wsgate passwd` failed. `Display` has no prefix: `main` prints `wsgate passwd: {error}`.
#[derive(Debug)]
pub enum PasswdError {
    /// The user name is not `[A-Za-z0-9._@+-]{1,64}`.
    BadName(NameError),
    /// The existing users file does not parse; it is left alone.
    BrokenFile(UsersError),
    /// The users file could not be read.
    Read {
        path: PathBuf,
        source: io::Error,
    },
    /// The new users file could not be written (the old one is unchanged).
    Write {
        path: PathBuf,
        source: io::Error,
    },
    /// `--delete` of a user the file does not have.
    NotFound {
        user: String,
        path: PathBuf,
    },
    EmptyPassword,
    PasswordTooLong,
    /// Shorter than the minimum (`--min-length`, default [`MIN_PASSWORD_LEN`]).
    PasswordTooShort {
        min: usize,
    },
    /// The two terminal entries differ.
    Mismatch,
    /// Stdin ended before a password line.
    NoPassword,
    /// Reading the password failed (including: not UTF-8).
    ReadPassword(io::Error),
    /// The terminal's echo could not be turned off.
    Terminal(io::Error),
    /// Hashing failed.
    Hash(UsersError),
}

impl fmt::Display for PasswdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswdError::BadName(e) => write!(f, "{e}"),
            PasswdError::BrokenFile(e) => {
                write!(
                    f,
                    "refusing to rewrite a broken users file, fix it first: {e}"
                )
            }
            PasswdError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            PasswdError::Write { path, source } => write!(
                f,
                "cannot write {} (left unchanged): {source}",
                path.display()
            ),
            PasswdError::NotFound { user, path } => {
                write!(f, "user \"{user}\" not found in {}", path.display())
            }
            PasswdError::EmptyPassword => write!(f, "empty password refused"),
            PasswdError::PasswordTooShort { min } => write!(
                f,
                "password shorter than {min} characters refused, nothing changed (a test \
                 set-up may lower the minimum with --min-length)"
            ),
            PasswdError::PasswordTooLong => {
                write!(f, "password longer than {MAX_PASSWORD_LEN} bytes refused")
            }
            PasswdError::Mismatch => write!(f, "passwords do not match, nothing changed"),
            PasswdError::NoPassword => write!(
                f,
                "no password given (stdin ended; pipe one line or run it on a terminal)"
            ),
            PasswdError::ReadPassword(e) => write!(f, "cannot read the password: {e}"),
            PasswdError::Terminal(e) => {
                write!(f, "cannot turn off terminal echo: {e}")
            }
            PasswdError::Hash(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PasswdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PasswdError::BadName(e) => Some(e),
            PasswdError::BrokenFile(e) | PasswdError::Hash(e) => Some(e),
            PasswdError::Read { source, .. } | PasswdError::Write { source, .. } => Some(source),
            PasswdError::ReadPassword(e) | PasswdError::Terminal(e) => Some(e),
            _ => None,
        }
    }
}

/// What a successful [`set_password`] or [`delete_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Updated,
    Deleted,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Added => "added",
            Change::Updated => "updated",
            Change::Deleted => "deleted",
        })
    }
}

/// What `wsgate passwd` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Sets the password, refusing one shorter than `min_length` characters.
    Set {
        min_length: usize,
    },
    Delete,
}

/// Sets `user`'s password in `file` (creating the file if needed), or deletes the user.
///
/// # Errors
/// A [`PasswdError`] a user can act on.
pub fn run(file: &Path, user: &str, action: Action) -> Result<(), PasswdError> {
    check_user_name(user).map_err(PasswdError::BadName)?;
    let change = if let Action::Set { min_length } = action {
        // Refuse a broken file before asking for a password.
        read_existing(file)?;
        let password = read_password(user, min_length)?;
        set_password(file, user, &password)?
    } else {
        delete_user(file, user)?
    };
    eprintln!("{change} user \"{user}\" in {}", file.display());
    Ok(())
}

/// Sets `user`'s password to `password` in `file`, adding the user (and creating the file) if
/// needed.
///
/// # Errors
/// A bad name, an empty or too long password, a broken file, or an I/O failure.
pub fn set_password(file: &Path, user: &str, password: &str) -> Result<Change, PasswdError> {
    set_password_hashed(file, user, password, users::hash_password)
}

/// [`set_password`] with the hash function given (tests use cheap Argon2 parameters).
fn set_password_hashed(
    file: &Path,
    user: &str,
    password: &str,
    hash: impl FnOnce(&str) -> Result<String, UsersError>,
) -> Result<Change, PasswdError> {
    check_user_name(user).map_err(PasswdError::BadName)?;
    check_password(password)?;
    read_existing(file)?;
    // Hashed before the lock is taken (it is the slow part); the file is read again under it.
    let phc = hash(password).map_err(PasswdError::Hash)?;
    let held = lock(file)?;
    let existing = read_existing(file)?;
    let new_line = format!("{user}:{phc}");
    let (text, owner) = match &existing {
        Some((text, meta)) => (text.as_str(), Some((meta.uid(), meta.gid()))),
        None => ("", None),
    };
    let (contents, found) = rewrite(text, user, Some(&new_line));
    write_atomic(&held, file, &contents, owner)?;
    Ok(if found {
        Change::Updated
    } else {
        Change::Added
    })
}

/// Removes `user` from `file`.
///
/// # Errors
/// A bad name, a missing file or user, a broken file, or an I/O failure.
pub fn delete_user(file: &Path, user: &str) -> Result<Change, PasswdError> {
    check_user_name(user).map_err(PasswdError::BadName)?;
    let held = lock(file)?;
    let Some((text, meta)) = read_existing(file)? else {
        return Err(PasswdError::Read {
            path: file.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
        });
    };
    let (mut contents, found) = rewrite(&text, user, None);
    if UserStore::parse(&contents, file).is_ok_and(|left| left.is_empty())
        && !contents
            .lines()
            .any(|l| l.trim_end() == users::NO_USERS_MARKER)
    {
        // The last user: say it is meant, or a running server's reload would refuse the file.
        if !contents.is_empty() && !contents.ends_with('\n') {
            contents.push('\n');
        }
        contents.push_str(users::NO_USERS_MARKER);
        contents.push('\n');
    }
    if !found {
        return Err(PasswdError::NotFound {
            user: user.to_string(),
            path: file.to_path_buf(),
        });
    }
    write_atomic(&held, file, &contents, Some((meta.uid(), meta.gid())))?;
    Ok(Change::Deleted)
}

/// The [`files::UpdateLock`] for `file`: the read-modify-write that follows is never
/// interleaved with another `wsgate passwd` or `wsgate token` run's.
fn lock(file: &Path) -> Result<files::UpdateLock, PasswdError> {
    crate::auth::files::lock_for_update(file).map_err(|source| PasswdError::Write {
        path: file.to_path_buf(),
        source,
    })
}

fn check_password(password: &str) -> Result<(), PasswdError> {
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(PasswdError::PasswordTooLong);
    }
    Ok(())
}

/// Refuses a password shorter than `min` characters (an empty one is refused on its own).
fn check_length(password: &str, min: usize) -> Result<(), PasswdError> {
    if !password.is_empty() && password.chars().count() < min {
        return Err(PasswdError::PasswordTooShort { min });
    }
    Ok(())
}

/// The file's text and metadata, `None` if it does not exist; a file that does not parse is an
/// error.
fn read_existing(file: &Path) -> Result<Option<(String, fs::Metadata)>, PasswdError> {
    let read_err = |source| PasswdError::Read {
        path: file.to_path_buf(),
        source,
    };
    let meta = match fs::metadata(file) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    if !meta.is_file() {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let text = fs::read_to_string(file).map_err(read_err)?;
    UserStore::parse(&text, file).map_err(PasswdError::BrokenFile)?;
    Ok(Some((text, meta)))
}

/// Replaces `user`'s line with `new_line` (or drops it when `None`), keeping every other line
/// and each line's ending; appends `new_line` when the user is absent. Returns the new text and
/// whether the user was found.
fn rewrite(text: &str, user: &str, new_line: Option<&str>) -> (String, bool) {
    let mut out = String::with_capacity(text.len() + new_line.map_or(0, str::len) + 1);
    let mut found = false;
    for segment in text.split_inclusive('\n') {
        if users::line_user(segment) != Some(user) {
            out.push_str(segment);
            continue;
        }
        found = true;
        if let Some(new_line) = new_line {
            let ending = if segment.ends_with("\r\n") {
                "\r\n"
            } else {
                "\n"
            };
            out.push_str(new_line);
            out.push_str(ending);
        }
    }
    if let (false, Some(new_line)) = (found, new_line) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(new_line);
        out.push('\n');
    }
    (out, found)
}

/// [`files::write_file_atomic`] with its error as a [`PasswdError::Write`] naming `file`.
fn write_atomic(
    held: &files::UpdateLock,
    file: &Path,
    contents: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), PasswdError> {
    files::write_file_atomic(held, file, contents, owner).map_err(|source| PasswdError::Write {
        path: file.to_path_buf(),
        source,
    })
}

/// Reads the password: a no-echo prompt twice on a terminal, else one line of stdin.
fn read_password(user: &str, min_length: usize) -> Result<String, PasswdError> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        let password = read_password_line(stdin.lock())?;
        check_length(&password, min_length)?;
        return Ok(password);
    }
    let first = prompt(&format!("Password for {user}: "))?;
    check_password(&first)?;
    check_length(&first, min_length)?;
    let second = prompt("Retype password: ")?;
    if first != second {
        return Err(PasswdError::Mismatch);
    }
    Ok(first)
}

/// Prints `message` on stderr and reads one line from the terminal with echo off.
fn prompt(message: &str) -> Result<String, PasswdError> {
    let mut stderr = io::stderr();
    let _ = stderr.write_all(message.as_bytes());
    let _ = stderr.flush();
    let line = {
        let _echo_off = EchoOff::new(io::stdin()).map_err(PasswdError::Terminal)?;
        read_password_line(io::stdin().lock())
    };
    // The user's Enter was not echoed.
    let _ = stderr.write_all(b"\n");
    line
}

/// One line, without its `\n` or `\r\n`; end of input before any byte is [`PasswdError::NoPassword`].
fn read_password_line(input: impl BufRead) -> Result<String, PasswdError> {
    let mut line = String::new();
    // Bounded: the password, a `\r\n`, and one byte to tell "too long".
    let limit = (MAX_PASSWORD_LEN + 3) as u64;
    let n = input
        .take(limit)
        .read_line(&mut line)
        .map_err(PasswdError::ReadPassword)?;
    if n == 0 {
        return Err(PasswdError::NoPassword);
    }
    let had_newline = line.ends_with('\n');
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    if trimmed.len() > MAX_PASSWORD_LEN || (!had_newline && n as u64 == limit) {
        return Err(PasswdError::PasswordTooLong);
    }
    let password = trimmed.to_string();
    check_password(&password)?;
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::{AuthOutcome, Authenticator};
    use crate::auth::users::hash_password_with;
    use std::io::Cursor;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn cheap(pw: &str) -> Result<String, UsersError> {
        hash_password_with(pw, argon2::Params::new(8, 1, 1, None).unwrap())
    }

    use crate::testing::TestDir as TempDir;

    fn set(file: &Path, user: &str, pw: &str) -> Result<Change, PasswdError> {
        set_password_hashed(file, user, pw, cheap)
    }

    fn check(file: &Path, user: &str, pw: &str) -> AuthOutcome {
        let store = UserStore::load(file).unwrap();
        Authenticator::new(store, 0, Duration::ZERO, 1).verify(user, pw)
    }

    fn mode(file: &Path) -> u32 {
        fs::metadata(file).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_the_file_0600() {
        let dir = TempDir::new("create");
        let file = dir.0.join("users");
        assert_eq!(set(&file, "alice", "pw1").unwrap(), Change::Added);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(check(&file, "alice", "pw1"), AuthOutcome::Ok);
        assert_eq!(check(&file, "alice", "pw2"), AuthOutcome::BadPassword);
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn update_keeps_other_lines_and_order() {
        let dir = TempDir::new("update");
        let file = dir.0.join("users");
        let a = cheap("a").unwrap();
        let b = cheap("b").unwrap();
        let before = format!("# header\r\n\nalice:{a}\r\n# middle\nbob:{b}");
        fs::write(&file, &before).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(set(&file, "alice", "new").unwrap(), Change::Updated);
        let after = fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = after.split('\n').collect();
        assert_eq!(lines[0], "# header\r");
        assert_eq!(lines[1], "");
        assert!(lines[2].starts_with("alice:$argon2id$") && lines[2].ends_with('\r'));
        assert_ne!(lines[2], format!("alice:{a}\r"));
        assert_eq!(lines[3], "# middle");
        assert_eq!(lines[4], format!("bob:{b}"));
        assert_eq!(lines.len(), 5);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(check(&file, "alice", "new"), AuthOutcome::Ok);
        assert_eq!(check(&file, "bob", "b"), AuthOutcome::Ok);

        // Adding to a file without a final newline starts a new line.
        assert_eq!(set(&file, "carol", "c").unwrap(), Change::Added);
        let after = fs::read_to_string(&file).unwrap();
        assert!(
            after.contains(&format!("bob:{b}\ncarol:$argon2id$")),
            "{after}"
        );
        assert!(after.ends_with('\n'));
        assert_eq!(UserStore::load(&file).unwrap().len(), 3);
    }

    #[test]
    fn delete_and_missing_user() {
        let dir = TempDir::new("delete");
        let file = dir.0.join("users");
        set(&file, "alice", "a").unwrap();
        set(&file, "bob", "b").unwrap();
        assert_eq!(delete_user(&file, "alice").unwrap(), Change::Deleted);
        let store = UserStore::load(&file).unwrap();
        assert!(!store.contains("alice"));
        assert!(store.contains("bob"));
        let e = delete_user(&file, "alice").unwrap_err();
        assert!(matches!(e, PasswdError::NotFound { .. }));
        assert_eq!(
            e.to_string(),
            format!("user \"alice\" not found in {}", file.display())
        );
        // The last user out leaves the line that says the empty file is meant; once.
        assert_eq!(delete_user(&file, "bob").unwrap(), Change::Deleted);
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(text.matches(users::NO_USERS_MARKER).count(), 1, "{text}");
        let empty = UserStore::load(&file).unwrap();
        assert!(empty.is_empty() && empty.may_replace(2, &file).is_ok());
        set(&file, "carol", "c").unwrap();
        assert_eq!(delete_user(&file, "carol").unwrap(), Change::Deleted);
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(text.matches(users::NO_USERS_MARKER).count(), 1, "{text}");
        let missing = dir.0.join("nope");
        let e = delete_user(&missing, "bob").unwrap_err();
        assert!(matches!(e, PasswdError::Read { .. }), "{e}");
        assert!(!missing.exists());
    }

    #[test]
    fn broken_file_is_refused_and_left_alone() {
        let dir = TempDir::new("broken");
        let file = dir.0.join("users");
        let broken = "# c\nalice:\n";
        fs::write(&file, broken).unwrap();
        let e = set(&file, "bob", "b").unwrap_err();
        assert!(matches!(e, PasswdError::BrokenFile(_)), "{e}");
        assert!(
            e.to_string().contains(":2: user \"alice\": empty hash"),
            "{e}"
        );
        let e = delete_user(&file, "alice").unwrap_err();
        assert!(matches!(e, PasswdError::BrokenFile(_)), "{e}");
        assert_eq!(fs::read_to_string(&file).unwrap(), broken);
    }

    #[test]
    fn bad_name_and_empty_password_refused() {
        let dir = TempDir::new("badname");
        let file = dir.0.join("users");
        for name in ["", "a b", "a:b", "ä", &"x".repeat(65)] {
            let e = set(&file, name, "pw").unwrap_err();
            assert!(matches!(e, PasswdError::BadName(_)), "{name:?}: {e}");
            assert!(matches!(
                delete_user(&file, name),
                Err(PasswdError::BadName(_))
            ));
            assert!(matches!(
                run(
                    &file,
                    name,
                    Action::Set {
                        min_length: MIN_PASSWORD_LEN
                    }
                ),
                Err(PasswdError::BadName(_))
            ));
        }
        assert!(matches!(
            set(&file, "alice", ""),
            Err(PasswdError::EmptyPassword)
        ));
        assert!(matches!(
            check_length("seven77", MIN_PASSWORD_LEN),
            Err(PasswdError::PasswordTooShort { min: 8 })
        ));
        assert!(check_length("eight888", MIN_PASSWORD_LEN).is_ok());
        assert!(check_length("ü", 1).is_ok());
        assert!(matches!(
            set(&file, "alice", &"x".repeat(MAX_PASSWORD_LEN + 1)),
            Err(PasswdError::PasswordTooLong)
        ));
        assert!(!file.exists());
    }

    #[test]
    fn symlink_target_is_rewritten() {
        let dir = TempDir::new("symlink");
        let real = dir.0.join("real-users");
        let link = dir.0.join("users");
        set(&real, "alice", "a").unwrap();
        std::os::unix::fs::symlink("real-users", &link).unwrap();
        set(&link, "bob", "b").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(UserStore::load(&real).unwrap().len(), 2);
    }

    #[test]
    fn password_lines() {
        let read = |s: &str| read_password_line(Cursor::new(s.as_bytes().to_vec()));
        assert_eq!(read("secret\n").unwrap(), "secret");
        assert_eq!(read("secret\r\nmore\n").unwrap(), "secret");
        assert_eq!(read("no newline").unwrap(), "no newline");
        assert_eq!(read(" spaces kept \n").unwrap(), " spaces kept ");
        assert!(matches!(read(""), Err(PasswdError::NoPassword)));
        assert!(matches!(read("\n"), Err(PasswdError::EmptyPassword)));
        assert!(matches!(read("\r\n"), Err(PasswdError::EmptyPassword)));
        let max = "x".repeat(MAX_PASSWORD_LEN);
        assert_eq!(read(&format!("{max}\r\n")).unwrap(), max);
        assert!(matches!(
            read(&format!("{max}x\n")),
            Err(PasswdError::PasswordTooLong)
        ));
        assert!(matches!(
            read(&"x".repeat(5000)),
            Err(PasswdError::PasswordTooLong)
        ));
    }

    #[test]
    fn rewrite_edge_cases() {
        assert_eq!(rewrite("", "a", Some("a:h")), ("a:h\n".to_string(), false));
        assert_eq!(
            rewrite("a:x", "a", Some("a:h")),
            ("a:h\n".to_string(), true)
        );
        assert_eq!(
            rewrite("#a:x\nab:y\na:z\r\n", "a", None),
            ("#a:x\nab:y\n".to_string(), true)
        );
    }
}
