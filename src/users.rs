//! The users file (`name:argon2id-PHC` lines) and password verification: parsing, atomic
//! rewriting for `wsgate passwd`, Argon2id checks bounded in concurrency, and a keyed cache of
//! recent successes so a reconnect storm does not cost one Argon2 run per client.

use std::path::Path;
use std::time::Duration;

/// A loaded, validated users file.
#[derive(Debug, Clone)]
pub struct UserStore {}

/// Verifies credentials against a [`UserStore`]; shared by all workers.
pub struct Authenticator {}

/// The result of a credential check. Callers answer `UnknownUser` and `BadPassword` identically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Ok,
    UnknownUser,
    BadPassword,
}

/// Why the users file could not be read or written.
#[derive(Debug)]
pub enum UsersError {}

impl UserStore {
    /// # Errors
    /// A [`UsersError`] naming the file and line.
    pub fn load(path: &Path) -> Result<UserStore, UsersError> {
        let _ = path;
        todo!()
    }
}

impl Authenticator {
    pub fn new(
        store: UserStore,
        cache_size: usize,
        cache_ttl: Duration,
        max_concurrent_hashes: usize,
    ) -> Self {
        let _ = (store, cache_size, cache_ttl, max_concurrent_hashes);
        todo!()
    }

    pub fn verify(&self, user: &str, password: &str) -> AuthOutcome {
        let _ = (user, password);
        todo!()
    }
}
impl std::fmt::Display for UsersError {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}
impl UserStore {
    pub fn len(&self) -> usize {
        0
    }
}
