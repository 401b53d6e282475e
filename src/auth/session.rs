//! Resumable sessions without server-side state: a session token `s1.<payload>.<mac>` is signed
//! with HMAC-SHA256 under a key file shared by every instance, and carries the user, a session
//! id, an expiry and a fingerprint of the user's credentials.
//!
//! The fingerprint ([`user_fingerprint`]) covers the user's password hash and token digests; the
//! server recomputes it when a session is presented and refuses a mismatch, so a password change,
//! a deleted user or a revoked token ends that user's sessions with nothing to store or expire.
//! The payload is signed, not encrypted: the client can read its own user name, session id,
//! expiry and fingerprint. Nothing here logs the key or a token.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use ring::digest;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of key a new key file gets, and the fewest a key file may hold.
pub const KEY_LEN: usize = 32;
/// The most bytes a key file may hold (it is read whole).
pub const MAX_KEY_FILE_LEN: usize = 4096;
/// The longest session token [`SessionKey::verify`] looks at; ours are about 200 bytes.
pub const MAX_SESSION_TOKEN_LEN: usize = 512;
/// Format tag of session tokens; also the start of the signed text.
const VERSION_PREFIX: &str = "s1.";
/// Random bytes in a session id (96 bits).
const SESSION_ID_BYTES: usize = 12;
/// The text [`SessionKey::id`] signs (never a valid session token: no `s1.` prefix).
const KEY_ID_LABEL: &[u8] = b"wsgate session key id v1";
/// Domain separation for [`user_fingerprint`].
const FINGERPRINT_TAG: &[u8] = b"wsgate session fingerprint v1\0";

/// The HMAC key sessions are signed with.
///
/// The key file holds the raw key bytes — at least [`KEY_LEN`], at most [`MAX_KEY_FILE_LEN`],
/// all of them used (no encoding, no trimming), so `head -c 32 /dev/urandom > FILE` makes one.
pub struct SessionKey {
    key: hmac::Key,
}

impl fmt::Debug for SessionKey {
    /// Never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(HMAC-SHA256, redacted)")
    }
}

/// What a valid session token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user: String,
    pub session_id: String,
    /// Seconds since the Unix epoch; the token is valid while `now < expires_unix`.
    pub expires_unix: u64,
    /// [`user_fingerprint`] of the user's credentials when the session was issued.
    pub fingerprint: [u8; 8],
    /// When the login that started this session happened (seconds since the Unix epoch); every
    /// renewal carries it on unchanged, so `session_max_age` counts from it. None in tokens
    /// issued before wsgate wrote it (their next renewal starts the clock).
    pub login_unix: Option<u64>,
}

/// Why the key file could not be loaded or made, or why a session token is refused. The three
/// refusals carry no detail (nothing that helps a forger); map all three to one 401.
#[derive(Debug)]
pub enum SessionError {
    /// The key file (or its directory) could not be read.
    KeyRead { path: PathBuf, source: io::Error },
    /// The key file (or its directory) could not be created.
    KeyWrite { path: PathBuf, source: io::Error },
    /// The key file holds fewer than [`KEY_LEN`] bytes.
    KeyTooShort { path: PathBuf, len: usize },
    /// The key file holds more than [`MAX_KEY_FILE_LEN`] bytes.
    KeyTooLong { path: PathBuf },
    /// The system random source failed.
    Random,
    /// Not a session token of ours (wrong shape, length or encoding).
    Malformed,
    /// The signature does not match: forged, altered, or signed under another key.
    BadSignature,
    /// Genuine, but past its expiry.
    Expired,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::KeyRead { path, source } => {
                write!(
                    f,
                    "session: key file {}: cannot read: {source}",
                    path.display()
                )
            }
            SessionError::KeyWrite { path, source } => write!(
                f,
                "session: key file {}: cannot create: {source}",
                path.display()
            ),
            SessionError::KeyTooShort { path, len } => write!(
                f,
                "session: key file {} holds {len} bytes, at least {KEY_LEN} are needed \
                 (delete it to have a new one made)",
                path.display()
            ),
            SessionError::KeyTooLong { path } => write!(
                f,
                "session: key file {} is longer than {MAX_KEY_FILE_LEN} bytes (is it the right file?)",
                path.display()
            ),
            SessionError::Random => write!(f, "session: the system random source failed"),
            SessionError::Malformed => write!(f, "malformed session token"),
            SessionError::BadSignature => write!(f, "session token signature does not match"),
            SessionError::Expired => write!(f, "session token expired"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::KeyRead { source, .. } | SessionError::KeyWrite { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

impl SessionKey {
    /// A key from raw bytes (at least [`KEY_LEN`] of them are expected; tests use this).
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> SessionKey {
        SessionKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// Reads the key file at `path`, or creates it with [`KEY_LEN`] random bytes (mode 0600,
    /// its parent directory 0700 if missing). Several instances may share the file: the new key
    /// is written whole to a temporary file and then hard-linked into place, which fails if the
    /// name exists, so an instance that loses the race reads the winner's complete key instead
    /// of a half-written one (a plain `create_new` on the final name would let it read a short
    /// file). A file accessible by group or others loads, with one warning.
    ///
    /// # Errors
    /// A [`SessionError`] naming the file: unreadable, too short or too long, or not creatable.
    pub fn load_or_create(path: &Path) -> Result<SessionKey, SessionError> {
        match read_key(path)? {
            Some(key) => Ok(key),
            None => create_key(path),
        }
    }

    /// Reads the key file as [`SessionKey::load_or_create`] does, without creating it: `None`
    /// while there is none (what `check-config` asks; `serve` would create it).
    ///
    /// # Errors
    /// As [`SessionKey::load_or_create`], for a file that exists.
    pub fn load_existing(path: &Path) -> Result<Option<SessionKey>, SessionError> {
        read_key(path)
    }

    /// An identifier of this key, for telling after a reload whether sessions are still signed
    /// with the key a live connection's session was verified with: the first 8 bytes of
    /// HMAC-SHA256(key, a fixed label). Says nothing about the key itself.
    #[must_use]
    pub fn id(&self) -> [u8; 8] {
        let tag = hmac::sign(&self.key, KEY_ID_LABEL);
        let mut id = [0u8; 8];
        id.copy_from_slice(&tag.as_ref()[..8]);
        id
    }

    /// A session token for `user`: `s1.<payload>.<mac>`, the payload base64url (no padding) of
    /// `user NUL session_id NUL expires_unix NUL hex(fingerprint) NUL login_unix` and the MAC
    /// base64url of HMAC-SHA256(key, `"s1." + payload`). `user` and `session_id` must not
    /// contain NUL (valid user names and [`new_session_id`]s never do); a token made with one
    /// fails to verify.
    #[must_use]
    pub fn issue(
        &self,
        user: &str,
        session_id: &str,
        fingerprint: &[u8; 8],
        expires_unix: u64,
        login_unix: u64,
    ) -> String {
        debug_assert!(!user.contains('\0') && !session_id.contains('\0'));
        let payload = format!(
            "{user}\0{session_id}\0{expires_unix}\0{}\0{login_unix}",
            HEXLOWER.encode(fingerprint)
        );
        let mut token = format!(
            "{VERSION_PREFIX}{}",
            BASE64URL_NOPAD.encode(payload.as_bytes())
        );
        let tag = hmac::sign(&self.key, token.as_bytes());
        token.push('.');
        token.push_str(&BASE64URL_NOPAD.encode(tag.as_ref()));
        token
    }

    /// Checks a session token's signature (in constant time) and expiry, then returns its
    /// claims. Tokens longer than [`MAX_SESSION_TOKEN_LEN`] are refused before any work; the
    /// payload is only decoded once the signature is good. The caller must still compare
    /// `fingerprint` with the user's current [`user_fingerprint`].
    ///
    /// # Errors
    /// [`SessionError::Malformed`], [`SessionError::BadSignature`] or [`SessionError::Expired`].
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, SessionError> {
        if token.len() > MAX_SESSION_TOKEN_LEN {
            return Err(SessionError::Malformed);
        }
        let Some((payload_b64, mac_b64)) = token
            .strip_prefix(VERSION_PREFIX)
            .and_then(|rest| rest.split_once('.'))
        else {
            return Err(SessionError::Malformed);
        };
        if payload_b64.is_empty() || mac_b64.contains('.') {
            return Err(SessionError::Malformed);
        }
        // `"s1." + payload`, the signed text.
        let signed = &token[..VERSION_PREFIX.len() + payload_b64.len()];
        let mac = BASE64URL_NOPAD
            .decode(mac_b64.as_bytes())
            .map_err(|_| SessionError::Malformed)?;
        if mac.len() != digest::SHA256_OUTPUT_LEN {
            return Err(SessionError::Malformed);
        }
        hmac::verify(&self.key, signed.as_bytes(), &mac).map_err(|_| SessionError::BadSignature)?;
        let claims = parse_payload(payload_b64).ok_or(SessionError::Malformed)?;
        if now_unix >= claims.expires_unix {
            return Err(SessionError::Expired);
        }
        Ok(claims)
    }
}

/// Decodes and splits a signed payload; `None` if it is not exactly what [`SessionKey::issue`]
/// writes.
fn parse_payload(payload_b64: &str) -> Option<Claims> {
    let bytes = BASE64URL_NOPAD.decode(payload_b64.as_bytes()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut fields = text.split('\0');
    let (user, session_id, expires, fp) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    // The login time is the fifth field; tokens from before it existed have four.
    let login = fields.next();
    if fields.next().is_some() || user.is_empty() || session_id.is_empty() {
        return None;
    }
    let number = |text: &str| -> Option<u64> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    let expires_unix = number(expires)?;
    let login_unix = match login {
        Some(text) => Some(number(text)?),
        None => None,
    };
    let fingerprint: [u8; 8] = HEXLOWER.decode(fp.as_bytes()).ok()?.try_into().ok()?;
    Some(Claims {
        user: user.to_string(),
        session_id: session_id.to_string(),
        expires_unix,
        fingerprint,
        login_unix,
    })
}

/// The key in `path`, or `None` if there is no such file.
fn read_key(path: &Path) -> Result<Option<SessionKey>, SessionError> {
    let read_err = |source| SessionError::KeyRead {
        path: path.to_path_buf(),
        source,
    };
    let (file, _) = match crate::auth::files::open_private(path, "session key file") {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::with_capacity(KEY_LEN);
    file.take(MAX_KEY_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() > MAX_KEY_FILE_LEN {
        return Err(SessionError::KeyTooLong {
            path: path.to_path_buf(),
        });
    }
    if bytes.len() < KEY_LEN {
        return Err(SessionError::KeyTooShort {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    }
    let key = SessionKey::from_bytes(&bytes);
    bytes.fill(0);
    Ok(Some(key))
}

/// Makes a new key file at `path`, or reads the one another instance made first.
fn create_key(path: &Path) -> Result<SessionKey, SessionError> {
    let write_err = |source| SessionError::KeyWrite {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return Err(write_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        )));
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(write_err)?;
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SessionError::Random)?;
    // Unique per process and call, so racing threads of one process do not collide either.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{}.wsgate-new.{}.{}.{nanos}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let linked = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only remove bits; make it exactly 0600.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => {
                File::open(&dir)?.sync_all()?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&tmp);
    let key = SessionKey::from_bytes(&bytes);
    bytes.fill(0);
    if linked.map_err(write_err)? {
        log::info!(
            "created session key file {}",
            crate::auth::files::shown(path)
        );
        Ok(key)
    } else {
        // Another instance won the race: use its key, complete since it was linked whole.
        read_key(path)?.ok_or_else(|| {
            write_err(io::Error::new(
                io::ErrorKind::NotFound,
                "appeared and vanished while being created",
            ))
        })
    }
}

/// A new session id: 96 random bits, base64url (16 characters).
///
/// # Panics
/// If the system random source fails (on Linux, `getrandom(2)` does not once the system has
/// booted).
#[must_use]
pub fn new_session_id() -> String {
    let mut raw = [0u8; SESSION_ID_BYTES];
    SystemRandom::new()
        .fill(&mut raw)
        .expect("the system random source must work to make session ids");
    BASE64URL_NOPAD.encode(&raw)
}

/// The first 8 bytes of SHA-256 over a domain-separation tag, the user's PHC string (or a marker
/// for "no password") and the user's token digests, sorted (so file order does not matter). Any
/// change to the password, the user's existence or the user's tokens changes it. It is visible
/// to the client inside the token; that reveals nothing useful, since the PHC string it covers
/// holds a random 128-bit salt and the token digests are of 256-bit secrets.
#[must_use]
pub fn user_fingerprint(
    password_hash: Option<&str>,
    token_hashes: impl IntoIterator<Item = [u8; 32]>,
) -> [u8; 8] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(FINGERPRINT_TAG);
    match password_hash {
        Some(phc) => {
            ctx.update(&[1]);
            ctx.update(&(phc.len() as u64).to_be_bytes());
            ctx.update(phc.as_bytes());
        }
        None => ctx.update(&[0]),
    }
    let mut tokens: Vec<[u8; 32]> = token_hashes.into_iter().collect();
    tokens.sort_unstable();
    ctx.update(&(tokens.len() as u64).to_be_bytes());
    for t in &tokens {
        ctx.update(t);
    }
    let mut out = [0u8; 8];
    out.copy_from_slice(&ctx.finish().as_ref()[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::TestDir as TempDir;

    const FP: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 0xff];

    fn key() -> SessionKey {
        SessionKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn round_trip() {
        let k = key();
        let id = new_session_id();
        assert_eq!(id.len(), 16);
        assert_ne!(id, new_session_id());
        let token = k.issue("alice@example.org", &id, &FP, 1_000, 5);
        assert!(token.starts_with("s1.") && token.len() < MAX_SESSION_TOKEN_LEN);
        let claims = k.verify(&token, 999).unwrap();
        assert_eq!(
            claims,
            Claims {
                user: "alice@example.org".into(),
                session_id: id,
                expires_unix: 1_000,
                fingerprint: FP,
                login_unix: Some(5),
            }
        );
        // The longest user name still fits.
        let long = k.issue(&"u".repeat(64), &new_session_id(), &FP, u64::MAX, 5);
        assert!(long.len() < MAX_SESSION_TOKEN_LEN);
        assert_eq!(k.verify(&long, 0).unwrap().expires_unix, u64::MAX);
    }

    #[test]
    fn tokens_without_a_login_time_still_verify() {
        // Issued before the login time was added: four fields, signed.
        let k = key();
        let signed = format!(
            "s1.{}",
            BASE64URL_NOPAD.encode(b"bob\0sid\x001000\x000102030405060708")
        );
        let tag = hmac::sign(&k.key, signed.as_bytes());
        let token = format!("{signed}.{}", BASE64URL_NOPAD.encode(tag.as_ref()));
        let claims = k.verify(&token, 0).unwrap();
        assert_eq!((claims.expires_unix, claims.login_unix), (1_000, None));
    }

    #[test]
    fn expired() {
        let k = key();
        let token = k.issue("bob", "sid", &FP, 1_000, 5);
        assert!(matches!(
            k.verify(&token, 1_000),
            Err(SessionError::Expired)
        ));
        assert!(matches!(
            k.verify(&token, 5_000),
            Err(SessionError::Expired)
        ));
    }

    #[test]
    fn wrong_key() {
        let token = key().issue("bob", "sid", &FP, 1_000, 5);
        let other = SessionKey::from_bytes(&[8u8; 32]);
        assert!(matches!(
            other.verify(&token, 0),
            Err(SessionError::BadSignature)
        ));
    }

    #[test]
    fn any_tampered_byte_is_refused() {
        let k = key();
        let token = k.issue("bob", "sid", &FP, 1_000, 5);
        let bytes = token.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [b'A', b'z', b'0', b'.', b'_', b'\0'] {
                if bytes[i] == replacement {
                    continue;
                }
                let mut t = bytes.to_vec();
                t[i] = replacement;
                let t = String::from_utf8(t).unwrap();
                let r = k.verify(&t, 0);
                assert!(
                    matches!(r, Err(SessionError::BadSignature | SessionError::Malformed)),
                    "byte {i} -> {replacement}: {r:?}"
                );
            }
        }
        // Truncated, extended, empty, other formats, oversized.
        for t in [
            &token[..token.len() - 1],
            &format!("{token}A"),
            &format!("{token}.x"),
            "",
            "s1.",
            "s1..",
            "s2.abc.def",
            &token.replacen("s1.", "", 1),
        ] {
            assert!(k.verify(t, 0).is_err(), "{t:?}");
        }
        let huge = format!("s1.{}", "A".repeat(MAX_SESSION_TOKEN_LEN));
        assert!(matches!(k.verify(&huge, 0), Err(SessionError::Malformed)));
    }

    #[test]
    fn well_signed_garbage_is_malformed() {
        // A correctly signed payload we would never issue (3 fields) must still be refused.
        let k = key();
        let signed = format!("s1.{}", BASE64URL_NOPAD.encode(b"bob\0sid\x001000"));
        let tag = hmac::sign(&k.key, signed.as_bytes());
        let token = format!("{signed}.{}", BASE64URL_NOPAD.encode(tag.as_ref()));
        assert!(matches!(k.verify(&token, 0), Err(SessionError::Malformed)));
    }

    #[test]
    fn fingerprint_tracks_credentials() {
        let t1 = [1u8; 32];
        let t2 = [2u8; 32];
        let base = user_fingerprint(Some("$argon2id$a"), [t1, t2]);
        assert_eq!(base, user_fingerprint(Some("$argon2id$a"), [t2, t1]));
        assert_ne!(base, user_fingerprint(Some("$argon2id$b"), [t1, t2]));
        assert_ne!(base, user_fingerprint(Some("$argon2id$a"), [t1]));
        assert_ne!(base, user_fingerprint(None, [t1, t2]));
        assert_ne!(user_fingerprint(None, []), user_fingerprint(Some(""), []));
        assert_ne!(
            user_fingerprint(Some("$argon2id$a"), []),
            user_fingerprint(None, [])
        );
    }

    #[test]
    fn key_ids_tell_keys_apart() {
        assert_eq!(key().id(), SessionKey::from_bytes(&[7u8; 32]).id());
        assert_ne!(key().id(), SessionKey::from_bytes(&[8u8; 32]).id());
    }

    #[test]
    fn debug_hides_the_key() {
        let k = SessionKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let shown = format!("{k:?}");
        assert!(!shown.contains("0123"), "{shown}");
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_file_created_0600_and_reused() {
        let dir = TempDir::new("create");
        let path = dir.0.join("state/sub/session.key");
        let k1 = SessionKey::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(fs::read(&path).unwrap().len(), KEY_LEN);
        let token = k1.issue("alice", "sid", &FP, 10, 5);
        let k2 = SessionKey::load_or_create(&path).unwrap();
        assert_eq!(k2.verify(&token, 0).unwrap().user, "alice");
        // No temporary file left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_creators_share_one_key() {
        let dir = TempDir::new("race");
        let path = dir.0.join("session.key");
        let keys: Vec<SessionKey> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| SessionKey::load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let token = keys[0].issue("alice", "sid", &FP, 10, 5);
        for k in &keys {
            assert!(k.verify(&token, 0).is_ok());
        }
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn existing_key_file_rules() {
        let dir = TempDir::new("existing");
        let path = dir.0.join("session.key");
        fs::write(&path, [9u8; 31]).unwrap();
        let e = SessionKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(e, SessionError::KeyTooShort { len: 31, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("holds 31 bytes"), "{e}");
        fs::write(&path, []).unwrap();
        assert!(matches!(
            SessionKey::load_or_create(&path),
            Err(SessionError::KeyTooShort { len: 0, .. })
        ));
        fs::write(&path, vec![1u8; MAX_KEY_FILE_LEN + 1]).unwrap();
        assert!(matches!(
            SessionKey::load_or_create(&path),
            Err(SessionError::KeyTooLong { .. })
        ));
        // An admin-made 64-byte key, world-readable: loads (with a warning), all bytes used.
        let bytes: Vec<u8> = (0..64).collect();
        fs::write(&path, &bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let k = SessionKey::load_or_create(&path).unwrap();
        let token = SessionKey::from_bytes(&bytes).issue("a", "s", &FP, 10, 5);
        assert!(k.verify(&token, 0).is_ok());
        assert!(matches!(
            SessionKey::from_bytes(&bytes[..32]).verify(&token, 0),
            Err(SessionError::BadSignature)
        ));
        // A directory is an error, not something to replace.
        assert!(matches!(
            SessionKey::load_or_create(&dir.0),
            Err(SessionError::KeyRead { .. })
        ));
    }
}
