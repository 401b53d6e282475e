//! The users file (`name:argon2id-PHC` lines): parsing with line-numbered errors (a name must
//! pass [`crate::rules::user_name`]), and hashing a new password for `wsgate passwd`. Verifying a
//! password against it (Argon2id bounded in concurrency, the cache, single flight) is
//! [`crate::auth::password`].
//!
//! Nothing here logs or displays a password or a stored hash: errors name the file, the line and
//! the user only, and [`UserStore`]'s `Debug` lists names, not hashes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::rand::{SecureRandom, SystemRandom};

use crate::rules::user_name::{NameError, check_user_name};

/// The largest Argon2 memory cost (`m`, in KiB) a users file may ask for: 64 MiB, RFC 9106's
/// second recommended setting. Every check holds this much in its permit, so a larger `m` would
/// grow the server by that much per permit, outside every limit.
pub const MAX_M_COST_KIB: u32 = 64 * 1024;
/// The most Argon2 passes (`t`) a users file may ask for: each pass holds a permit for another
/// full walk over `m` (OWASP's settings use 1 to 5).
pub const MAX_T_COST: u32 = 10;
/// The most Argon2 lanes (`p`) a users file may ask for (wsgate runs them one after the other).
pub const MAX_P_COST: u32 = 16;

/// The line that says a users file without users is meant to be empty. A reload refuses a file
/// without users in place of one with users unless it carries this line, because an editor's
/// truncate-then-write caught in the middle looks exactly like an empty file.
/// `wsgate passwd --delete` writes it when it removes the last user.
pub const NO_USERS_MARKER: &str = "# wsgate: no users";

/// A loaded, validated users file. Held in three allocations whatever its size — the text, the
/// users sorted by name, their file order — rather than two or three per user: a large file's
/// memory is then a few large blocks that the allocator gives back to the system when a reload
/// replaces it, instead of thousands of small ones it keeps.
#[derive(Clone)]
pub struct UserStore {
    /// The file's text; every name and hash is a range of it.
    text: String,
    /// Each user's name and Argon2id PHC string (validated at parse time), sorted by name.
    users: Vec<UserEntry>,
    /// Indices into `users` in file order (the first one's parameters shape the dummy hash).
    order: Vec<usize>,
    /// The file has a [`NO_USERS_MARKER`] line.
    no_users_on_purpose: bool,
    /// The largest `m` (KiB) of its hashes.
    max_m_cost: u32,
}

/// One user of a [`UserStore`]: `text[name..colon]` is the name, `text[colon + 1..end]` the hash,
/// from line `line`.
#[derive(Debug, Clone, Copy)]
struct UserEntry {
    name: usize,
    colon: usize,
    end: usize,
    line: usize,
}

impl fmt::Debug for UserStore {
    /// Names only: a stored hash is offline-crackable and must not reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserStore")
            .field("users", &self.names().collect::<Vec<_>>())
            .finish()
    }
}

/// Why the users file could not be read or written.
#[derive(Debug)]
pub enum UsersError {
    /// The file could not be opened or read (including: not UTF-8).
    Read { path: PathBuf, source: io::Error },
    /// A line is malformed. `user` is the line's name when that name itself is valid.
    Line {
        path: PathBuf,
        line: usize,
        user: Option<String>,
        problem: LineProblem,
    },
    /// Hashing a new password failed (random source or Argon2 parameters).
    Hash(String),
    /// On reload: the file has no users while the running server has some, and no
    /// [`NO_USERS_MARKER`] line says that is meant.
    AllUsersGone { path: PathBuf, running: usize },
    /// On reload: a hash asks for more Argon2 memory (KiB) than the permits were sized for.
    HashingMemory {
        path: PathBuf,
        needs: u32,
        sized: u32,
    },
}

/// What is wrong with one line of a users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// No `:` separating name and hash.
    MissingColon,
    /// The name is not a valid user name.
    BadName(NameError),
    /// `name:` with nothing after it.
    EmptyHash,
    /// The hash field does not look like a PHC string at all (it may be a plain password: never
    /// shown).
    NotPhc,
    /// A PHC string of another algorithm (`argon2i`, `argon2d`, `bcrypt`, ...).
    UnknownHashType(String),
    /// An `$argon2id$` string that does not parse or has invalid parameters.
    InvalidHash,
    /// The name was already defined on an earlier line.
    Duplicate { first_line: usize },
    /// An Argon2 parameter (`m`, `t` or `p`) above wsgate's bound for it.
    AboveBound { param: char, value: u32, max: u32 },
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineProblem::MissingColon => {
                write!(f, "missing ':' (expected name:hash; use `wsgate passwd`)")
            }
            LineProblem::BadName(e) => write!(f, "{e}"),
            LineProblem::EmptyHash => write!(
                f,
                "empty hash (empty passwords are not allowed; set one with `wsgate passwd`)"
            ),
            LineProblem::NotPhc => write!(
                f,
                "hash is not an $argon2id$ PHC string (create it with `wsgate passwd`)"
            ),
            LineProblem::UnknownHashType(alg) => write!(
                f,
                "unknown hash type \"{alg}\" (only argon2id is accepted; reset it with `wsgate passwd`)"
            ),
            LineProblem::InvalidHash => write!(
                f,
                "invalid argon2id hash (malformed PHC string or parameters; reset it with `wsgate passwd`)"
            ),
            LineProblem::Duplicate { first_line } => {
                write!(f, "duplicate user (first defined on line {first_line})")
            }
            LineProblem::AboveBound { param, value, max } => write!(
                f,
                "Argon2 parameter {param}={value} is above the bound of {max} (wsgate accepts \
                 m <= {MAX_M_COST_KIB} KiB, t <= {MAX_T_COST}, p <= {MAX_P_COST}; reset it with \
                 `wsgate passwd`)"
            ),
        }
    }
}

impl fmt::Display for UsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsersError::Read { path, source } => {
                write!(f, "users: {}: cannot read: {source}", path.display())
            }
            UsersError::Line {
                path,
                line,
                user: Some(user),
                problem,
            } => write!(
                f,
                "users: {}:{line}: user \"{user}\": {problem}",
                path.display()
            ),
            UsersError::Line {
                path,
                line,
                user: None,
                problem,
            } => write!(f, "users: {}:{line}: {problem}", path.display()),
            UsersError::Hash(why) => write!(f, "users: cannot hash the password: {why}"),
            UsersError::HashingMemory { path, needs, sized } => write!(
                f,
                "users: {}: a hash asks Argon2 for m={needs} KiB, more than the {sized} KiB the \
                 server's hashing permits were sized for at start; the running users are kept \
                 (restart wsgate to size the permits for it)",
                path.display()
            ),
            UsersError::AllUsersGone { path, running } => write!(
                f,
                "users: {} has no users, the running server has {running}: refusing a reload \
                 that would drop every user (a file caught mid-write looks like this); to remove \
                 every user on purpose, write a file holding the line `{NO_USERS_MARKER}`",
                path.display()
            ),
        }
    }
}

impl std::error::Error for UsersError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UsersError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The name part of a users-file line, or `None` for a blank or comment line. A trailing `\r`
/// is ignored. Does not validate: use on text that [`UserStore::parse`] accepted.
#[must_use]
pub fn line_user(line: &str) -> Option<&str> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if crate::auth::files::is_blank_or_comment(line) {
        return None;
    }
    Some(line.split_once(':').map_or(line, |(name, _)| name))
}

/// Validates one hash field: a parseable `$argon2id$` PHC string with valid Argon2 parameters
/// within wsgate's bounds. Returns its memory cost `m` (KiB).
fn check_hash(hash: &str) -> Result<u32, LineProblem> {
    if hash.is_empty() {
        return Err(LineProblem::EmptyHash);
    }
    let Some(rest) = hash.strip_prefix('$') else {
        return Err(LineProblem::NotPhc);
    };
    let alg = rest.split('$').next().unwrap_or("");
    if alg != "argon2id" {
        // Only show something that looks like a PHC algorithm identifier; anything else may be
        // a secret pasted in the wrong place.
        let plausible = !alg.is_empty()
            && alg.len() <= 32
            && alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        return Err(if plausible {
            LineProblem::UnknownHashType(alg.to_string())
        } else {
            LineProblem::NotPhc
        });
    }
    let parsed = PasswordHash::new(hash).map_err(|_| LineProblem::InvalidHash)?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(LineProblem::InvalidHash);
    }
    if let Some(v) = parsed.version {
        Version::try_from(v).map_err(|_| LineProblem::InvalidHash)?;
    }
    // A parameter given twice is invalid (argon2 would take the last, a reader the first). The
    // bounds are checked before argon2 reads the parameters: argon2 0.5 multiplies `p` by 8 in a
    // u32 before it checks `p`'s range, so a huge `p` would overflow.
    let mut seen: Vec<&str> = Vec::new();
    for (ident, value) in parsed.params.iter() {
        if seen.contains(&ident.as_str()) {
            return Err(LineProblem::InvalidHash);
        }
        seen.push(ident.as_str());
        let max = match ident.as_str() {
            "m" => MAX_M_COST_KIB,
            "t" => MAX_T_COST,
            "p" => MAX_P_COST,
            _ => continue,
        };
        let value = value.decimal().map_err(|_| LineProblem::InvalidHash)?;
        if value > max {
            let param = ident.as_str().chars().next().unwrap_or('?');
            return Err(LineProblem::AboveBound { param, value, max });
        }
    }
    let params = Params::try_from(&parsed).map_err(|_| LineProblem::InvalidHash)?;
    Ok(params.m_cost())
}

impl UserStore {
    /// Reads and validates a users file. A file readable or writable by group or others loads,
    /// with one warning suggesting `chmod 600`.
    ///
    /// # Errors
    /// A [`UsersError`] naming the file and line.
    pub fn load(path: &Path) -> Result<UserStore, UsersError> {
        UserStore::load_bounded(path, usize::MAX)
    }

    /// [`UserStore::load`], refusing a file larger than `max` bytes before reading it (the
    /// server's `[auth] max_file_size`).
    ///
    /// # Errors
    /// A [`UsersError`] naming the file (and the line).
    pub fn load_bounded(path: &Path, max: usize) -> Result<UserStore, UsersError> {
        let (text, _) =
            crate::auth::files::read_private(path, "users file", max).map_err(|source| {
                UsersError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        UserStore::parse(&text, path)
    }

    /// Parses users-file text; `path` is only used in error messages.
    ///
    /// # Errors
    /// A [`UsersError::Line`] for the first bad line.
    pub fn parse(text: &str, path: &Path) -> Result<UserStore, UsersError> {
        // Each allocation made once at its size, none freed behind the store: a chain of growing
        // or temporary buffers freed here would raise glibc's mmap threshold and leave the
        // store's own blocks in the heap, kept after a reload replaces it.
        let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
        let mut users = Vec::with_capacity(lines);
        let mut no_users_on_purpose = false;
        let mut max_m_cost = 0;
        let mut at = 0;
        for (index, raw) in text.split('\n').enumerate() {
            let (line_no, start) = (index + 1, at);
            at += raw.len() + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim_end() == NO_USERS_MARKER {
                no_users_on_purpose = true;
            }
            if crate::auth::files::is_blank_or_comment(line) {
                continue;
            }
            let err = |user: Option<&str>, problem| UsersError::Line {
                path: path.to_path_buf(),
                line: line_no,
                user: user.map(str::to_string),
                problem,
            };
            let Some((name, hash)) = line.split_once(':') else {
                return Err(err(None, LineProblem::MissingColon));
            };
            check_user_name(name).map_err(|e| err(None, LineProblem::BadName(e)))?;
            let m_cost = check_hash(hash).map_err(|p| err(Some(name), p))?;
            max_m_cost = max_m_cost.max(m_cost);
            users.push(UserEntry {
                name: start,
                colon: start + name.len(),
                end: start + line.len(),
                line: line_no,
            });
        }
        let name = |e: &UserEntry| &text[e.name..e.colon];
        // Sorted by name, then line, without a buffer: a name's repeats are neighbours, its
        // first line first.
        users.sort_unstable_by(|a, b| name(a).cmp(name(b)).then(a.line.cmp(&b.line)));
        let repeat = users
            .windows(2)
            .filter(|pair| name(&pair[0]) == name(&pair[1]))
            .min_by_key(|pair| pair[1].line);
        if let Some(pair) = repeat {
            return Err(UsersError::Line {
                path: path.to_path_buf(),
                line: pair[1].line,
                user: Some(name(&pair[1]).to_string()),
                problem: LineProblem::Duplicate {
                    first_line: pair[0].line,
                },
            });
        }
        let mut order: Vec<usize> = (0..users.len()).collect();
        order.sort_unstable_by_key(|&i| users[i].line);
        Ok(UserStore {
            text: text.to_string(),
            users,
            order,
            no_users_on_purpose,
            max_m_cost,
        })
    }

    fn name_of(&self, e: &UserEntry) -> &str {
        &self.text[e.name..e.colon]
    }

    /// `name`'s stored Argon2id PHC string.
    pub(super) fn hash(&self, name: &str) -> Option<&str> {
        let place = self
            .users
            .binary_search_by(|e| self.name_of(e).cmp(name))
            .ok()?;
        let e = &self.users[place];
        Some(&self.text[e.colon + 1..e.end])
    }

    /// Whether this file may replace `running` users on reload: it has users, or there were
    /// none, or its [`NO_USERS_MARKER`] line says removing them all is meant.
    ///
    /// # Errors
    /// [`UsersError::AllUsersGone`] naming `path`.
    pub fn may_replace(&self, running: usize, path: &Path) -> Result<(), UsersError> {
        if self.is_empty() && running > 0 && !self.no_users_on_purpose {
            return Err(UsersError::AllUsersGone {
                path: path.to_path_buf(),
                running,
            });
        }
        Ok(())
    }

    /// How many users the file defines.
    #[must_use]
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file defines no user (then every login fails).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `name` is a user.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.hash(name).is_some()
    }

    /// Whether `password` is `user`'s password here (one Argon2 run; false for an unknown user).
    /// For start-up checks, not for logins: those go through [`crate::auth::password`].
    #[must_use]
    pub fn accepts(&self, user: &str, password: &str) -> bool {
        self.hash(user).is_some_and(|hash| {
            PasswordHash::new(hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
    }

    /// User names in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(|&i| self.name_of(&self.users[i]))
    }

    /// The Argon2 memory one check against this file may need, in KiB: the largest `m` of its
    /// hashes and of the dummy hash (the defaults' when the file has no users).
    #[must_use]
    pub fn hashing_memory_kib(&self) -> u32 {
        self.max_m_cost.max(self.typical_params().m_cost())
    }

    /// Argon2 parameters of the first user's hash (the dummy hash uses them), else the defaults.
    pub(super) fn typical_params(&self) -> Params {
        self.names()
            .next()
            .and_then(|name| self.hash(name))
            .and_then(|hash| {
                let parsed = PasswordHash::new(hash).ok()?;
                let p = Params::try_from(&parsed).ok()?;
                Params::new(p.m_cost(), p.t_cost(), p.p_cost(), p.output_len()).ok()
            })
            .unwrap_or_default()
    }
}

/// Hashes `password` with Argon2id, the argon2 crate's default parameters (m=19456 KiB, t=2,
/// p=1) and a random 16-byte salt; returns the PHC string for the users file.
///
/// # Errors
/// [`UsersError::Hash`] if the system random source or Argon2 fails.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    hash_password_with(password, Params::default())
}

/// [`hash_password`] with explicit Argon2id parameters (tests use cheap ones).
///
/// # Errors
/// [`UsersError::Hash`] if the system random source or Argon2 fails.
pub fn hash_password_with(password: &str, params: Params) -> Result<String, UsersError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| UsersError::Hash("the system random source failed".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// SHA-256 of a stored PHC string: what a password login keeps to tell, after a reload, whether
/// the user's password is still the one it proved (see `policy::Proof::Password`).
#[must_use]
pub fn hash_digest(phc: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, phc.as_bytes()).as_ref());
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::password::{AuthOutcome, Authenticator};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    /// Cheap parameters so the tests run fast even unoptimized.
    pub(crate) fn cheap() -> Params {
        Params::new(8, 1, 1, None).unwrap()
    }

    /// A hash of `pw` with [`cheap`] parameters.
    pub(crate) fn h(pw: &str) -> String {
        hash_password_with(pw, cheap()).unwrap()
    }

    /// The path the parsed test files claim to come from.
    pub(crate) fn p() -> &'static Path {
        Path::new("conf/users")
    }

    fn parse_err(text: &str) -> UsersError {
        UserStore::parse(text, p()).unwrap_err()
    }

    fn line_of(e: &UsersError) -> (usize, LineProblem) {
        match e {
            UsersError::Line { line, problem, .. } => (*line, problem.clone()),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn parses_comments_blank_lines_and_crlf() {
        let text = format!(
            "# header\r\n\r\n   \nalice:{}\r\n# bob:x\nbob:{}\n",
            h("a"),
            h("b")
        );
        let store = UserStore::parse(&text, p()).unwrap();
        assert_eq!(store.len(), 2);
        assert!(store.contains("alice"));
        assert!(store.contains("bob"));
        assert!(!store.contains("carol"));
        assert_eq!(store.names().collect::<Vec<_>>(), ["alice", "bob"]);
        let auth = Authenticator::new(store, 0, Duration::ZERO, 1);
        assert_eq!(auth.verify("alice", "a"), AuthOutcome::Ok);
    }

    #[test]
    fn empty_file_is_an_empty_store() {
        let store = UserStore::parse("", p()).unwrap();
        assert!(store.is_empty());
    }

    #[test]
    fn a_file_without_users_replaces_users_only_when_it_says_so() {
        let empty = UserStore::parse("# all gone\n", p()).unwrap();
        assert!(empty.may_replace(0, p()).is_ok());
        let e = empty.may_replace(3, p()).unwrap_err();
        assert!(matches!(e, UsersError::AllUsersGone { running: 3, .. }));
        assert!(e.to_string().contains("would drop every user"), "{e}");
        let meant = UserStore::parse(&format!("{NO_USERS_MARKER}\r\n"), p()).unwrap();
        assert!(meant.may_replace(3, p()).is_ok());
        let some = UserStore::parse(&format!("alice:{}\n", h("a")), p()).unwrap();
        assert!(some.may_replace(3, p()).is_ok());
    }

    #[test]
    fn rejections_carry_line_numbers() {
        let good = h("x");
        let cases: Vec<(String, usize, LineProblem)> = vec![
            (
                format!("# c\nalice:{good}\nnocolon\n"),
                3,
                LineProblem::MissingColon,
            ),
            (
                format!("\n:{good}\n"),
                2,
                LineProblem::BadName(NameError::Empty),
            ),
            ("#\n#\nbob:\n".to_string(), 3, LineProblem::EmptyHash),
            ("bob:hunter2\n".to_string(), 1, LineProblem::NotPhc),
            (
                "bob:$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA\n".to_string(),
                1,
                LineProblem::UnknownHashType("argon2i".into()),
            ),
            (
                "bob:$argon2d$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA\n".to_string(),
                1,
                LineProblem::UnknownHashType("argon2d".into()),
            ),
            (
                "bob:$2b$10$abcdefghijklmnopqrstuv\n".to_string(),
                1,
                LineProblem::UnknownHashType("2b".into()),
            ),
            (
                "x\nbob:$argon2id$garbage\n".to_string(),
                1,
                LineProblem::MissingColon,
            ),
            (
                "bob:$argon2id$garbage\n".to_string(),
                1,
                LineProblem::InvalidHash,
            ),
            (
                "bob:$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n".to_string(),
                1,
                LineProblem::InvalidHash,
            ),
            (
                "bob:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ\n".to_string(),
                1,
                LineProblem::InvalidHash,
            ),
            // p above argon2's range, large enough to overflow its `p * 8` (found by fuzzing):
            // at N = argon2's MAX_P_COST + 1, and far beyond; both above wsgate's bound first.
            (
                format!(
                    "bob:$argon2id$v=19$m=19456,t=2,p={}$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n",
                    Params::MAX_P_COST + 1
                ),
                1,
                LineProblem::AboveBound {
                    param: 'p',
                    value: Params::MAX_P_COST + 1,
                    max: MAX_P_COST,
                },
            ),
            (
                "bob:$argon2id$v=19$m=19456,t=2,p=942125181$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n"
                    .to_string(),
                1,
                LineProblem::AboveBound {
                    param: 'p',
                    value: 942_125_181,
                    max: MAX_P_COST,
                },
            ),
            (
                "bob:$argon2id$v=19$m=19456,t=2,p=99999999999$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n"
                    .to_string(),
                1,
                LineProblem::InvalidHash,
            ),
            (
                "bob:$argon2id$v=19$m=19456,t=2,p=1,p=942125181$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n"
                    .to_string(),
                1,
                LineProblem::InvalidHash,
            ),
            (
                format!("alice:{good}\n\nalice:{good}\n"),
                3,
                LineProblem::Duplicate { first_line: 1 },
            ),
            (
                format!("al ice:{good}\n"),
                1,
                LineProblem::BadName(NameError::BadCharacter("al ice".into())),
            ),
            (
                format!("{}:{good}\n", "a".repeat(65)),
                1,
                LineProblem::BadName(NameError::TooLong { len: 65 }),
            ),
        ];
        for (text, line, problem) in cases {
            let e = parse_err(&text);
            assert_eq!(line_of(&e), (line, problem), "for {text:?}");
        }
        // 64 characters and the whole allowed alphabet are fine.
        let ok = format!("{}:{good}\nA-z.0_9@x+y:{good}\n", "a".repeat(64));
        assert_eq!(UserStore::parse(&ok, p()).unwrap().len(), 2);
    }

    #[test]
    fn argon2_parameters_above_their_bounds_are_refused_at_n_plus_one() {
        let line = |m: u32, t: u32, p: u32| {
            format!("# c\nbob:$argon2id$v=19$m={m},t={t},p={p}$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n")
        };
        let at_bounds = UserStore::parse(&line(MAX_M_COST_KIB, MAX_T_COST, MAX_P_COST), p());
        assert_eq!(at_bounds.unwrap().hashing_memory_kib(), MAX_M_COST_KIB);
        for (text, param, value, max) in [
            (
                line(MAX_M_COST_KIB + 1, 2, 1),
                'm',
                MAX_M_COST_KIB + 1,
                MAX_M_COST_KIB,
            ),
            (line(4_194_304, 2, 1), 'm', 4_194_304, MAX_M_COST_KIB),
            (
                line(19456, MAX_T_COST + 1, 1),
                't',
                MAX_T_COST + 1,
                MAX_T_COST,
            ),
            (
                line(19456, 2, MAX_P_COST + 1),
                'p',
                MAX_P_COST + 1,
                MAX_P_COST,
            ),
        ] {
            let e = parse_err(&text);
            assert_eq!(
                line_of(&e),
                (2, LineProblem::AboveBound { param, value, max })
            );
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!(
                    "users: conf/users:2: user \"bob\": Argon2 parameter {param}={value} is \
                     above the bound of {max}"
                )),
                "{shown}"
            );
        }
        // The largest m of the file is what a check may need; an empty file, the defaults'.
        let two = format!(
            "a:{}\nb:{}\n",
            hash_password_with("x", Params::new(64, 1, 1, None).unwrap()).unwrap(),
            hash_password_with("y", Params::new(256, 1, 1, None).unwrap()).unwrap()
        );
        assert_eq!(
            UserStore::parse(&two, p()).unwrap().hashing_memory_kib(),
            256
        );
        assert_eq!(
            UserStore::parse("", p()).unwrap().hashing_memory_kib(),
            Params::DEFAULT_M_COST
        );
    }

    #[test]
    fn messages_are_actionable_and_never_show_secrets() {
        let e = parse_err("#\n#\nbob:\n");
        assert!(
            e.to_string()
                .starts_with("users: conf/users:3: user \"bob\": empty hash"),
            "{e}"
        );
        let e = parse_err("bob:hunter2\n");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = parse_err("bob:$not a hash id$x\n");
        assert!(!e.to_string().contains("not a hash"), "{e}");
        let e = parse_err("bob:$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA\n");
        assert!(e.to_string().contains("unknown hash type"), "{e}");
        assert!(!e.to_string().contains("aGFzaA"), "{e}");
        let e = parse_err("secretpassword\n");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = UserStore::load(Path::new("/nonexistent/wsgate-users")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("users: /nonexistent/wsgate-users: cannot read: "),
            "{e}"
        );
        let good = h("pw");
        let store = UserStore::parse(&format!("alice:{good}\n"), p()).unwrap();
        assert!(!format!("{store:?}").contains(&good));
    }

    #[test]
    fn line_user_names() {
        assert_eq!(line_user("alice:$argon2id$x\r\n"), Some("alice"));
        assert_eq!(line_user("  # c"), None);
        assert_eq!(line_user("\r\n"), None);
    }

    #[test]
    fn default_hash_format() {
        let phc = hash_password("pw").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let parsed = PasswordHash::new(&phc).unwrap();
        assert_eq!(parsed.salt.unwrap().len(), 22); // 16 bytes, unpadded base64
        assert_ne!(phc, hash_password("pw").unwrap(), "salts are random");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = std::env::temp_dir().join(format!("wsgate-users-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users");
        std::fs::write(&path, format!("# x\nalice:{}\n", h("pw"))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = UserStore::load(&path).unwrap(); // loads, with a warning
        assert_eq!(store.len(), 1);
        std::fs::write(&path, "alice:\n").unwrap();
        let e = UserStore::load(&path).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "users: {}:1: user \"alice\": empty hash",
                path.display()
            )),
            "{e}"
        );
        let e = UserStore::load(&dir).unwrap_err();
        assert!(matches!(e, UsersError::Read { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
