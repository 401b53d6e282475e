//! API tokens for devices and services: `wsg_` + 256 random bits, of which the tokens file
//! (`USER:NAME:HEX64` lines) keeps only the SHA-256. Parsing, lookup by digest, and the
//! `add`/`revoke`/`list` helpers behind `wsgate tokens`.
//!
//! Nothing here logs or displays a token or a stored hash (only [`TokenStore::list`]'s 8-digit
//! prefix, which identifies a line and says nothing useful about a 256-bit secret). Errors name
//! the file, the line, the user and the token's name.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use crate::rules::user_name::{NameError, check_user_name};

/// Every token starts with this, so a leaked one is easy to recognise (and to grep for).
pub const TOKEN_PREFIX: &str = "wsg_";
/// The longest presented token [`TokenStore::lookup`] hashes; ours are 47 bytes.
pub const MAX_TOKEN_LEN: usize = 128;
/// The longest token name.
pub const MAX_TOKEN_NAME_LEN: usize = 64;
/// Random bytes in a token (256 bits).
const TOKEN_BYTES: usize = 32;
/// Hex digits of a digest shown by [`TokenStore::list`].
const SHORT_HEX_LEN: usize = 8;

/// One token line: its owner, its name and the SHA-256 of the token.
#[derive(Clone)]
struct TokenEntry {
    user: String,
    name: String,
    digest: [u8; 32],
}

/// A loaded, validated tokens file.
#[derive(Clone, Default)]
pub struct TokenStore {
    /// `SHA-256(token) -> index into entries`.
    by_digest: HashMap<[u8; 32], usize>,
    /// Lines in file order.
    entries: Vec<TokenEntry>,
}

impl fmt::Debug for TokenStore {
    /// Users and names only, never a digest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| format!("{}:{}", e.user, e.name)),
            )
            .finish()
    }
}

/// Whose token a presented token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRef<'a> {
    pub user: &'a str,
    pub name: &'a str,
}

/// Why a tokens file could not be read or changed. `Display` starts with `tokens: `.
#[derive(Debug)]
pub enum TokensError {
    /// The file could not be opened or read (including: not UTF-8, not a regular file).
    Read { path: PathBuf, source: io::Error },
    /// A line is malformed. `user` and `name` are the line's when they are themselves valid.
    Line {
        path: PathBuf,
        line: usize,
        user: Option<String>,
        name: Option<String>,
        problem: TokenLineProblem,
    },
    /// The new file could not be written (the old one is unchanged).
    Write { path: PathBuf, source: io::Error },
    /// A user name given to `add`/`revoke` is invalid.
    BadUser(NameError),
    /// A token name given to `add`/`revoke` is invalid.
    BadName,
    /// `add` with a name that user already has.
    Exists {
        path: PathBuf,
        user: String,
        name: String,
    },
    /// `revoke` of a token the file does not have.
    NotFound {
        path: PathBuf,
        user: String,
        name: String,
    },
    /// The system random source failed.
    Random,
}

/// What is wrong with one line of a tokens file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLineProblem {
    /// Not three `:`-separated fields.
    Fields,
    /// The user field is not a valid user name.
    BadUser(NameError),
    /// The name field is not `[A-Za-z0-9._-]{1,64}` (not shown: it may be a misplaced secret).
    BadName,
    /// The hash field is not 64 lowercase hex digits (not shown).
    BadHash,
    /// The (user, name) pair was already defined.
    DuplicateName { first_line: usize },
    /// The same hash appears on an earlier line.
    DuplicateHash { first_line: usize },
}

impl fmt::Display for TokenLineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenLineProblem::Fields => write!(
                f,
                "expected USER:NAME:HEX64 (create lines with `wsgate tokens add`)"
            ),
            TokenLineProblem::BadUser(e) => write!(f, "{e}"),
            TokenLineProblem::BadName => write!(f, "{NAME_RULE}"),
            TokenLineProblem::BadHash => write!(
                f,
                "hash is not 64 lowercase hex digits (the SHA-256 of the token; \
                 create lines with `wsgate tokens add`)"
            ),
            TokenLineProblem::DuplicateName { first_line } => {
                write!(
                    f,
                    "duplicate token name (first defined on line {first_line})"
                )
            }
            TokenLineProblem::DuplicateHash { first_line } => write!(
                f,
                "same hash as line {first_line} (one token cannot belong to two lines)"
            ),
        }
    }
}

const NAME_RULE: &str = "token name must be 1 to 64 characters of A-Z a-z 0-9 . _ -";

impl fmt::Display for TokensError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokensError::Read { path, source } => {
                write!(f, "tokens: {}: cannot read: {source}", path.display())
            }
            TokensError::Line {
                path,
                line,
                user,
                name,
                problem,
            } => {
                write!(f, "tokens: {}:{line}: ", path.display())?;
                match (user, name) {
                    (Some(u), Some(n)) => write!(f, "user \"{u}\" token \"{n}\": ")?,
                    (Some(u), None) => write!(f, "user \"{u}\": ")?,
                    _ => {}
                }
                write!(f, "{problem}")
            }
            TokensError::Write { path, source } => write!(
                f,
                "tokens: cannot write {} (left unchanged): {source}",
                path.display()
            ),
            TokensError::BadUser(e) => write!(f, "tokens: {e}"),
            TokensError::BadName => write!(f, "tokens: {NAME_RULE}"),
            TokensError::Exists { path, user, name } => write!(
                f,
                "tokens: user \"{user}\" already has a token \"{name}\" in {} \
                 (revoke it first, or choose another name)",
                path.display()
            ),
            TokensError::NotFound { path, user, name } => write!(
                f,
                "tokens: user \"{user}\" has no token \"{name}\" in {}",
                path.display()
            ),
            TokensError::Random => write!(f, "tokens: the system random source failed"),
        }
    }
}

impl std::error::Error for TokensError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokensError::Read { source, .. } | TokensError::Write { source, .. } => Some(source),
            TokensError::BadUser(e) => Some(e),
            _ => None,
        }
    }
}

/// Checks a token name: 1 to 64 bytes of `[A-Za-z0-9._-]`.
///
/// # Errors
/// [`TokensError::BadName`].
pub fn check_token_name(name: &str) -> Result<(), TokensError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TokensError::BadName)
    }
}

/// The SHA-256 of a token, as stored (hex) in the tokens file.
#[must_use]
pub fn token_digest(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A new token: [`TOKEN_PREFIX`] + base64url (no padding) of 32 random bytes, 47 bytes in all.
///
/// # Errors
/// [`TokensError::Random`] if the system random source fails.
pub fn generate_token() -> Result<String, TokensError> {
    let mut raw = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| TokensError::Random)?;
    Ok(format!("{TOKEN_PREFIX}{}", BASE64URL_NOPAD.encode(&raw)))
}

/// Equality of two digests in time independent of their contents: XOR every byte pair, OR the
/// differences together, test once. This is enough here (no need for a vetted constant-time
/// library) because both sides are SHA-256 digests, never the secret itself: the map lookup that
/// found the candidate already compared digests with an early-exit `==`, and what timing could
/// reveal — how many leading bytes of SHA-256(guess) match a stored digest — does not help find
/// a 256-bit preimage. The fold is defence in depth, and `black_box` keeps the optimiser from
/// turning it back into an early exit.
pub(crate) fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Splits a non-comment line into its three fields, without validating them.
fn split_fields(line: &str) -> Option<(&str, &str, &str)> {
    let mut it = line.splitn(3, ':');
    Some((it.next()?, it.next()?, it.next()?))
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let bytes = HEXLOWER.decode(hex.as_bytes()).ok()?;
    bytes.try_into().ok()
}

impl TokenStore {
    /// Reads and validates a tokens file. A missing file is an empty store (tokens are
    /// optional); a file accessible by group or others loads, with one warning.
    ///
    /// # Errors
    /// A [`TokensError`] naming the file (and line).
    pub fn load(path: &Path) -> Result<TokenStore, TokensError> {
        TokenStore::load_bounded(path, usize::MAX)
    }

    /// [`TokenStore::load`], refusing a file larger than `max` bytes before reading it (the
    /// server's `[auth] max_file_size`).
    ///
    /// # Errors
    /// A [`TokensError`] naming the file (and line).
    pub fn load_bounded(path: &Path, max: usize) -> Result<TokenStore, TokensError> {
        Ok(read_file(path, max)?.map_or_else(TokenStore::default, |(store, _, _)| store))
    }

    /// Parses tokens-file text; `path` is only used in error messages.
    ///
    /// # Errors
    /// A [`TokensError::Line`] for the first bad line.
    pub fn parse(text: &str, path: &Path) -> Result<TokenStore, TokensError> {
        let mut store = TokenStore::default();
        let mut name_lines: HashMap<(&str, &str), usize> = HashMap::new();
        let mut digest_lines: HashMap<[u8; 32], usize> = HashMap::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if crate::auth::files::is_blank_or_comment(line) {
                continue;
            }
            let err = |user: Option<&str>, name: Option<&str>, problem| TokensError::Line {
                path: path.to_path_buf(),
                line: line_no,
                user: user.map(str::to_string),
                name: name.map(str::to_string),
                problem,
            };
            let Some((user, name, hex)) = split_fields(line) else {
                return Err(err(None, None, TokenLineProblem::Fields));
            };
            check_user_name(user).map_err(|e| err(None, None, TokenLineProblem::BadUser(e)))?;
            check_token_name(name).map_err(|_| err(Some(user), None, TokenLineProblem::BadName))?;
            let Some(digest) = parse_digest(hex) else {
                return Err(err(Some(user), Some(name), TokenLineProblem::BadHash));
            };
            if let Some(&first_line) = name_lines.get(&(user, name)) {
                return Err(err(
                    Some(user),
                    Some(name),
                    TokenLineProblem::DuplicateName { first_line },
                ));
            }
            if let Some(&first_line) = digest_lines.get(&digest) {
                return Err(err(
                    Some(user),
                    Some(name),
                    TokenLineProblem::DuplicateHash { first_line },
                ));
            }
            name_lines.insert((user, name), line_no);
            digest_lines.insert(digest, line_no);
            store.by_digest.insert(digest, store.entries.len());
            store.entries.push(TokenEntry {
                user: user.to_string(),
                name: name.to_string(),
                digest,
            });
        }
        Ok(store)
    }

    /// Whose token `token` is, or `None`. Tokens longer than [`MAX_TOKEN_LEN`] or without the
    /// [`TOKEN_PREFIX`] are refused before any hashing.
    #[must_use]
    pub fn lookup(&self, token: &str) -> Option<TokenRef<'_>> {
        if token.len() > MAX_TOKEN_LEN || !token.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let digest = token_digest(token);
        let entry = &self.entries[*self.by_digest.get(&digest)?];
        digests_equal(&entry.digest, &digest).then_some(TokenRef {
            user: &entry.user,
            name: &entry.name,
        })
    }

    /// The owner of the token with this digest, if the file still has it.
    #[must_use]
    pub fn owner_of(&self, digest: &[u8; 32]) -> Option<&str> {
        let entry = &self.entries[*self.by_digest.get(digest)?];
        Some(&entry.user)
    }

    /// The digests of `user`'s tokens, in file order (for session fingerprints, which sort them).
    pub fn hashes_for<'a>(&'a self, user: &'a str) -> impl Iterator<Item = [u8; 32]> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.user == user)
            .map(|e| e.digest)
    }

    /// `(user, name, first 8 hex digits of the digest)` per token, in file order.
    pub fn list(&self) -> impl Iterator<Item = (&str, &str, String)> {
        self.entries.iter().map(|e| {
            let mut hex = HEXLOWER.encode(&e.digest);
            hex.truncate(SHORT_HEX_LEN);
            (e.user.as_str(), e.name.as_str(), hex)
        })
    }

    /// How many tokens the file defines.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file defines no token.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn has(&self, user: &str, name: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.user == user && e.name == name)
    }
}

/// The parsed store, its text and its metadata; `None` when the file does not exist.
fn read_file(
    path: &Path,
    max: usize,
) -> Result<Option<(TokenStore, String, fs::Metadata)>, TokensError> {
    let read_err = |source| TokensError::Read {
        path: path.to_path_buf(),
        source,
    };
    let (text, meta) = match crate::auth::files::read_private(path, "tokens file", max) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let store = TokenStore::parse(&text, path)?;
    Ok(Some((store, text, meta)))
}

fn write(
    held: &crate::auth::files::UpdateLock,
    file: &Path,
    contents: &str,
    meta: Option<&fs::Metadata>,
) -> Result<(), TokensError> {
    crate::auth::files::write_file_atomic(held, file, contents, meta.map(|m| (m.uid(), m.gid())))
        .map_err(|source| TokensError::Write {
            path: file.to_path_buf(),
            source,
        })
}

/// The [`crate::auth::files::UpdateLock`] for `file`, held across a read-modify-write so that
/// concurrent `wsgate token` (and `wsgate passwd`) runs never lose each other's changes.
fn lock(file: &Path) -> Result<crate::auth::files::UpdateLock, TokensError> {
    crate::auth::files::lock_for_update(file).map_err(|source| TokensError::Write {
        path: file.to_path_buf(),
        source,
    })
}

/// Adds a new token for `user` to `file` (creating the file, mode 0600) and returns the token,
/// which exists nowhere else: print it once. `name` defaults to `token-N`, the lowest N ≥ 1 that
/// user does not have. Other lines are kept as they were. Whether `user` is in the users file is
/// not checked here.
///
/// # Errors
/// A bad user or token name, a name the user already has, a broken file, or an I/O failure.
pub fn add(file: &Path, user: &str, name: Option<&str>) -> Result<String, TokensError> {
    check_user_name(user).map_err(TokensError::BadUser)?;
    if let Some(name) = name {
        check_token_name(name)?;
    }
    let held = lock(file)?;
    let existing = read_file(file, usize::MAX)?;
    let (store, text, meta) = match &existing {
        Some((store, text, meta)) => (store, text.as_str(), Some(meta)),
        None => (&TokenStore::default(), "", None),
    };
    let name = match name {
        Some(name) if store.has(user, name) => {
            return Err(TokensError::Exists {
                path: file.to_path_buf(),
                user: user.to_string(),
                name: name.to_string(),
            });
        }
        Some(name) => name.to_string(),
        None => (1..)
            .map(|n| format!("token-{n}"))
            .find(|n| !store.has(user, n))
            .unwrap_or_default(),
    };
    let token = generate_token()?;
    let mut contents = String::with_capacity(text.len() + 160);
    contents.push_str(text);
    if !contents.is_empty() && !contents.ends_with('\n') {
        contents.push('\n');
    }
    contents.push_str(&format!(
        "{user}:{name}:{}\n",
        HEXLOWER.encode(&token_digest(&token))
    ));
    write(&held, file, &contents, meta)?;
    Ok(token)
}

/// Removes `user`'s token `name` from `file`, keeping every other line and line ending.
///
/// # Errors
/// A bad name, a token (or file) that is not there, a broken file, or an I/O failure.
pub fn revoke(file: &Path, user: &str, name: &str) -> Result<(), TokensError> {
    check_user_name(user).map_err(TokensError::BadUser)?;
    check_token_name(name)?;
    let not_found = || TokensError::NotFound {
        path: file.to_path_buf(),
        user: user.to_string(),
        name: name.to_string(),
    };
    let held = lock(file)?;
    let Some((store, text, meta)) = read_file(file, usize::MAX)? else {
        return Err(not_found());
    };
    if !store.has(user, name) {
        return Err(not_found());
    }
    let contents: String = text
        .split_inclusive('\n')
        .filter(|segment| {
            let line = segment.strip_suffix('\n').unwrap_or(segment);
            let line = line.strip_suffix('\r').unwrap_or(line);
            crate::auth::files::is_blank_or_comment(line)
                || split_fields(line).is_none_or(|(u, n, _)| (u, n) != (user, name))
        })
        .collect();
    write(&held, file, &contents, Some(&meta))
}

/// `(user, name, first 8 hex digits of the digest)` for each token in `file`, in file order; a
/// missing file has none.
///
/// # Errors
/// A broken file or a read failure.
pub fn list_file(file: &Path) -> Result<Vec<(String, String, String)>, TokensError> {
    Ok(TokenStore::load(file)?
        .list()
        .map(|(u, n, h)| (u.to_string(), n.to_string(), h))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::testing::TestDir as TempDir;

    fn parse(text: &str) -> Result<TokenStore, TokensError> {
        TokenStore::parse(text, Path::new("t"))
    }

    fn line_of(token: &str, user: &str, name: &str) -> String {
        format!("{user}:{name}:{}", HEXLOWER.encode(&token_digest(token)))
    }

    #[test]
    fn generated_tokens_look_right() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 43);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(
            BASE64URL_NOPAD.decode(&a.as_bytes()[4..]).unwrap().len(),
            32
        );
    }

    #[test]
    fn lookup_round_trip_and_refusals() {
        let t1 = generate_token().unwrap();
        let t2 = generate_token().unwrap();
        let text = format!(
            "# tokens\r\n{}\r\n\n  # indented comment\n{}",
            line_of(&t1, "alice", "phone"),
            line_of(&t2, "bob", "sensor-1.a_b")
        );
        let store = parse(&text).unwrap();
        assert_eq!(store.len(), 2);
        assert!(!store.is_empty());
        assert_eq!(
            store.lookup(&t1),
            Some(TokenRef {
                user: "alice",
                name: "phone"
            })
        );
        assert_eq!(store.lookup(&t2).unwrap().user, "bob");
        // Wrong token, a near miss, no prefix, too long.
        assert_eq!(store.lookup(&generate_token().unwrap()), None);
        let mut near = t1.clone();
        near.pop();
        near.push(if t1.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(store.lookup(&near), None);
        assert_eq!(store.lookup(&t1[4..]), None);
        assert_eq!(store.lookup(""), None);
        let long = format!("{t1}{}", "x".repeat(MAX_TOKEN_LEN));
        assert_eq!(store.lookup(&long), None);
        // A stored digest whose token lacks the prefix is never reachable.
        let bare = parse(&line_of("abc", "carol", "x")).unwrap();
        assert_eq!(bare.lookup("abc"), None);
        // Longest accepted length is hashed.
        let max = format!("wsg_{}", "y".repeat(MAX_TOKEN_LEN - 4));
        let s = parse(&line_of(&max, "dave", "max")).unwrap();
        assert_eq!(s.lookup(&max).unwrap().user, "dave");
        // Debug shows no digest.
        let dbg = format!("{store:?}");
        assert!(dbg.contains("alice:phone"), "{dbg}");
        assert!(!dbg.contains(&HEXLOWER.encode(&token_digest(&t1))[..8]));
    }

    #[test]
    fn hashes_and_list() {
        let t1 = generate_token().unwrap();
        let t2 = generate_token().unwrap();
        let t3 = generate_token().unwrap();
        let text = [
            line_of(&t1, "alice", "a"),
            line_of(&t2, "bob", "b"),
            line_of(&t3, "alice", "c"),
        ]
        .join("\n");
        let store = parse(&text).unwrap();
        let alice: Vec<[u8; 32]> = store.hashes_for("alice").collect();
        assert_eq!(alice, vec![token_digest(&t1), token_digest(&t3)]);
        assert_eq!(store.hashes_for("nobody").count(), 0);
        let list: Vec<_> = store.list().collect();
        assert_eq!(list.len(), 3);
        assert_eq!((list[1].0, list[1].1), ("bob", "b"));
        assert_eq!(list[1].2, HEXLOWER.encode(&token_digest(&t2))[..8]);
    }

    #[test]
    fn parse_errors_name_the_line_and_never_the_hash() {
        let good = line_of("wsg_x", "alice", "a");
        let hex = HEXLOWER.encode(&token_digest("wsg_x"));
        let cases: Vec<(String, &str)> = vec![
            ("# c\n\nalice".to_string(), "t:3: expected USER:NAME:HEX64"),
            (format!("{good}\nalice:a"), "t:2: expected USER:NAME:HEX64"),
            (format!("a b:n:{hex}"), "t:1: user name \"a b\""),
            (
                format!("alice:n m:{hex}"),
                "t:1: user \"alice\": token name",
            ),
            (format!("alice::{hex}"), "t:1: user \"alice\": token name"),
            (
                format!("alice:{}:{hex}", "n".repeat(65)),
                "t:1: user \"alice\": token name",
            ),
            (
                format!("alice:n:{}", hex.to_uppercase()),
                "t:1: user \"alice\" token \"n\": hash is not 64",
            ),
            (
                format!("alice:n:{}", &hex[1..]),
                "t:1: user \"alice\" token \"n\": hash is not 64",
            ),
            (format!("alice:n:{hex}:x"), "hash is not 64"),
            ("alice:n:wsg_secret".to_string(), "hash is not 64"),
            (
                format!("{good}\r\n#\r\n{}", line_of("wsg_y", "alice", "a")),
                "t:3: user \"alice\" token \"a\": duplicate token name (first defined on line 1)",
            ),
            (
                format!("{good}\n{}", line_of("wsg_x", "bob", "b")),
                "t:2: user \"bob\" token \"b\": same hash as line 1",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            let shown = e.to_string();
            assert!(matches!(e, TokensError::Line { .. }), "{shown}");
            assert!(shown.starts_with("tokens: t:"), "{shown}");
            assert!(shown.contains(want), "{text:?}: {shown}");
            assert!(!shown.contains(&hex[..16]), "{shown}");
            assert!(!shown.contains(&hex.to_uppercase()[..16]), "{shown}");
            assert!(!shown.contains("wsg_secret"), "{shown}");
        }
        // Same name for different users is fine.
        let ok = format!("{good}\n{}", line_of("wsg_z", "bob", "a"));
        assert_eq!(parse(&ok).unwrap().len(), 2);
    }

    #[test]
    fn missing_file_is_an_empty_store() {
        let dir = TempDir::new("missing");
        let store = TokenStore::load(&dir.0.join("nope")).unwrap();
        assert!(store.is_empty());
        assert!(list_file(&dir.0.join("nope")).unwrap().is_empty());
        // A directory is not.
        let e = TokenStore::load(&dir.0).unwrap_err();
        assert!(matches!(e, TokensError::Read { .. }), "{e}");
    }

    fn mode(file: &Path) -> u32 {
        fs::metadata(file).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn add_revoke_list_on_a_file() {
        let dir = TempDir::new("cli");
        let file = dir.0.join("tokens");
        let t1 = add(&file, "alice", None).unwrap();
        assert_eq!(mode(&file), 0o600);
        let t2 = add(&file, "alice", None).unwrap();
        let t3 = add(&file, "bob", Some("sensor")).unwrap();
        let store = TokenStore::load(&file).unwrap();
        assert_eq!(store.lookup(&t1).unwrap().name, "token-1");
        assert_eq!(store.lookup(&t2).unwrap().name, "token-2");
        assert_eq!(
            store.lookup(&t3),
            Some(TokenRef {
                user: "bob",
                name: "sensor"
            })
        );
        // The token itself is not in the file.
        let text = fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&t1[4..]));

        let e = add(&file, "bob", Some("sensor")).unwrap_err();
        assert!(matches!(e, TokensError::Exists { .. }), "{e}");
        assert!(matches!(
            add(&file, "a b", None),
            Err(TokensError::BadUser(_))
        ));
        assert!(matches!(
            add(&file, "bob", Some("x:y")),
            Err(TokensError::BadName)
        ));

        // Revoking token-1 frees the lowest N again; comments and CRLF survive.
        let mut text = fs::read_to_string(&file).unwrap();
        text.insert_str(0, "# devices\r\n");
        fs::write(&file, &text).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        revoke(&file, "alice", "token-1").unwrap();
        assert_eq!(mode(&file), 0o600);
        let after = fs::read_to_string(&file).unwrap();
        assert!(after.starts_with("# devices\r\nalice:token-2:"), "{after}");
        let e = revoke(&file, "alice", "token-1").unwrap_err();
        assert!(matches!(e, TokensError::NotFound { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "tokens: user \"alice\" has no token \"token-1\" in {}",
                file.display()
            )
        );
        let t4 = add(&file, "alice", None).unwrap();
        let store = TokenStore::load(&file).unwrap();
        assert_eq!(store.lookup(&t1), None);
        assert_eq!(store.lookup(&t4).unwrap().name, "token-1");

        let list = list_file(&file).unwrap();
        let names: Vec<(&str, &str)> = list
            .iter()
            .map(|(u, n, _)| (u.as_str(), n.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("alice", "token-2"),
                ("bob", "sensor"),
                ("alice", "token-1")
            ]
        );
        assert!(list.iter().all(|(_, _, h)| h.len() == 8));

        // Revoking from a missing file is "not found"; no file is created.
        let missing = dir.0.join("none");
        assert!(matches!(
            revoke(&missing, "alice", "x"),
            Err(TokensError::NotFound { .. })
        ));
        assert!(!missing.exists());
        // Only our file is left (no temporaries).
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn broken_file_is_left_alone() {
        let dir = TempDir::new("broken");
        let file = dir.0.join("tokens");
        fs::write(&file, "alice:a\n").unwrap();
        let e = add(&file, "alice", None).unwrap_err();
        assert!(e.to_string().contains(":1: expected"), "{e}");
        assert!(revoke(&file, "alice", "a").is_err());
        assert_eq!(fs::read_to_string(&file).unwrap(), "alice:a\n");
    }

    #[test]
    fn add_to_file_without_final_newline() {
        let dir = TempDir::new("newline");
        let file = dir.0.join("tokens");
        fs::write(&file, format!("# x\n{}", line_of("wsg_q", "bob", "b"))).unwrap();
        let t = add(&file, "bob", None).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 3);
        assert_eq!(
            TokenStore::load(&file).unwrap().lookup(&t).unwrap().name,
            "token-1"
        );
    }
}
