//! The server's side of credentials: the [`Verifier`] that `policy::decide` asks. It owns the
//! users (Argon2 behind a cache), API tokens, the session signing key and failed-login throttling,
//! and logs the once-per-window throttle line. Never logs a secret.

pub(crate) mod files;
pub mod password;
pub mod session;
pub mod throttle;
pub mod tokens;
pub mod users;

use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;

use crate::auth::password::{AuthOutcome, Authenticator, Cost};
use crate::auth::session::SessionKey;
use crate::auth::throttle::{Logging, LoginThrottle};
use crate::auth::tokens::TokenStore;
use crate::auth::users::UserStore;
use crate::ops::metrics::Counter;
use crate::ops::metrics::Metrics;
use crate::policy::{CredentialState, LogSafeUser, Proof, Verdict, Verifier};

/// Sessions as configured: the signing key, how long one token lives (`session_ttl`) and how
/// long a session may be renewed from its login (`session_max_age`).
pub struct SessionSettings {
    pub key: SessionKey,
    pub ttl: Duration,
    pub max_age: Duration,
}

/// Why no session was issued ([`Credentials::issue_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSession {
    /// `[auth] session_ttl = 0`.
    Off,
    /// The user has no account (deleted since the login was checked).
    NoAccount,
    /// The session's `session_max_age` has passed.
    Ended,
}

/// Everything needed to check credentials, shared by all workers. It lives as long as the
/// server: a reload swaps the users, tokens and session settings inside it, while the Argon2
/// permits (and their memory), the cache key and the throttle's counts carry over.
pub struct Credentials {
    pub users: Authenticator,
    tokens: RwLock<Arc<TokenStore>>,
    sessions: RwLock<Option<Arc<SessionSettings>>>,
    throttle: LoginThrottle,
    metrics: Arc<Metrics>,
}

/// Credential checks for one connection: the [`Verifier`] for its upgrade.
pub struct PeerCheck<'a> {
    creds: &'a Credentials,
    ip: IpAddr,
}

impl Credentials {
    /// `sessions`: the signing key and session lifetimes, or None when sessions are off.
    pub fn new(
        users: Authenticator,
        tokens: TokenStore,
        sessions: Option<SessionSettings>,
        throttle: LoginThrottle,
        metrics: Arc<Metrics>,
    ) -> Credentials {
        Credentials {
            users,
            tokens: RwLock::new(Arc::new(tokens)),
            sessions: RwLock::new(sessions.map(Arc::new)),
            throttle,
            metrics,
        }
    }

    /// Swaps in reloaded users, tokens and session settings; new checks use them at once. The
    /// failed logins counted so far are forgiven ([`LoginThrottle::forgive_all`]): they were
    /// checked against what the reload replaced.
    pub fn reload(&self, users: UserStore, tokens: TokenStore, sessions: Option<SessionSettings>) {
        self.users.replace_store(users);
        *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tokens);
        *self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner) = sessions.map(Arc::new);
        self.throttle.forgive_all();
    }

    pub fn for_peer(&self, ip: IpAddr) -> PeerCheck<'_> {
        PeerCheck { creds: self, ip }
    }

    fn tokens(&self) -> Arc<TokenStore> {
        Arc::clone(&self.tokens.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The fingerprint of everything that proves `user` today: a password change, deletion or a
    /// token revocation changes it, which invalidates the user's sessions. None when the users
    /// file has no such user (a deleted user's sessions, like his tokens, end with him).
    fn fingerprint(&self, user: &str) -> Option<[u8; 8]> {
        let hash = self.users.password_hash(user)?;
        Some(session::user_fingerprint(
            Some(&hash),
            self.tokens().hashes_for(user).collect::<Vec<_>>(),
        ))
    }

    /// A signed session token for `user` and `session_id`, with its lifetime. `login_unix` is
    /// when the session began (a resumed session's); None for a new login (now). The token
    /// expires `session_ttl` from now, but never later than `session_max_age` after the login.
    ///
    /// # Errors
    /// [`NoSession`]: sessions are off, the user has no account, or the session's
    /// `session_max_age` has passed.
    pub fn issue_session(
        &self,
        user: &str,
        session_id: &str,
        login_unix: Option<u64>,
    ) -> Result<(String, Duration), NoSession> {
        let sessions = self.sessions().ok_or(NoSession::Off)?;
        let now = unix_now();
        let login = login_unix.unwrap_or(now);
        let expires = (now + sessions.ttl.as_secs()).min(login + sessions.max_age.as_secs());
        if expires <= now {
            return Err(NoSession::Ended);
        }
        let fingerprint = self.fingerprint(user).ok_or(NoSession::NoAccount)?;
        Ok((
            sessions
                .key
                .issue(user, session_id, &fingerprint, expires, login),
            Duration::from_secs(expires - now),
        ))
    }

    fn sessions(&self) -> Option<Arc<SessionSettings>> {
        self.sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counts a failure; logs once per window when it trips the throttle.
    fn failed(&self, ip: IpAddr, user: Option<&str>) {
        let logging = self.throttle.record_failure(ip, user, Instant::now());
        self.log_trip(ip, user, logging);
    }

    /// The once-per-window line when a failure blocked the address or the name.
    fn log_trip(&self, ip: IpAddr, user: Option<&str>, logging: Logging) {
        if logging.tripped() {
            let secs = self
                .throttle
                .blocked_for(ip, user, Instant::now())
                .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
            log::warn!(
                "login throttled: peer={ip} user=\"{}\": too many failed logins; further attempts \
                 get 429 for {secs} s (a reload, `systemctl reload wsgate` or SIGHUP, lifts it \
                 at once)",
                user.map(LogSafeUser::new).unwrap_or_default()
            );
        }
    }

    /// A granted login as `user` from `ip`, by any credential: the throttle forgets the user's
    /// failures from this address and trusts it for the user (see `throttle`).
    pub fn logged_in(&self, ip: IpAddr, user: &str) {
        self.throttle.record_success(ip, user, Instant::now());
    }

    fn throttled(&self, ip: IpAddr, user: Option<&str>) -> Option<Verdict> {
        self.throttle
            .check(ip, user, Instant::now())
            .err()
            .map(|blocked| Verdict::Throttled {
                user: user.map(LogSafeUser::new).unwrap_or_default(),
                retry_after: blocked.retry_after,
            })
    }
}

impl Verifier for PeerCheck<'_> {
    fn password(&self, user: &str, password: &str) -> Verdict {
        let c = self.creds;
        if let Some(throttled) = c.throttled(self.ip, Some(user)) {
            return throttled;
        }
        // The throttle reserves a place only for a check that will run Argon2 itself (not a
        // cache hit, not one sharing an identical check in flight), in one step with its check.
        let (mut attempt, mut blocked) = (None, None);
        let (outcome, cost, stored) = c.users.verify_gated(user, password, &mut || match c
            .throttle
            .begin(self.ip, Some(user), Instant::now())
        {
            Ok(reserved) => {
                attempt = Some(reserved);
                true
            }
            Err(b) => {
                blocked = Some(b);
                false
            }
        });
        match cost {
            Cost::CacheHit => c.metrics.bump(Counter::AuthCacheHits, 1),
            Cost::Argon2 => c.metrics.bump(Counter::Argon2Runs, 1),
            Cost::Shared | Cost::Nothing => {}
        }
        let why = match (outcome, stored) {
            (AuthOutcome::Ok, Some(hash)) => {
                if let Some(reserved) = attempt {
                    reserved.succeeded();
                }
                return Verdict::Ok {
                    user: user.to_string(),
                    session_id: None,
                    proof: Proof::Password { hash },
                };
            }
            (AuthOutcome::Busy, _) => return Verdict::Busy,
            (AuthOutcome::Declined, _) => {
                return Verdict::Throttled {
                    user: LogSafeUser::new(user),
                    retry_after: blocked.map_or(Duration::from_secs(1), |b| b.retry_after),
                };
            }
            (AuthOutcome::UnknownUser | AuthOutcome::Ok, _) => "unknown user",
            (AuthOutcome::BadPassword, _) => "bad password",
        };
        // A check that shared another's run is that same guess: counted once, by the one that ran.
        if let Some(reserved) = attempt {
            c.log_trip(self.ip, Some(user), reserved.failed(Instant::now()));
        }
        Verdict::Bad {
            user: LogSafeUser::new(user),
            why,
        }
    }

    fn api_token(&self, token: &str) -> Verdict {
        let c = self.creds;
        if let Some(throttled) = c.throttled(self.ip, None) {
            return throttled;
        }
        let tokens = c.tokens();
        let found = tokens.lookup(token);
        match found {
            // A token whose user is no longer in the users file is orphaned: refused, like the
            // user's password (`check-config` and `token list` name such tokens).
            Some(found) if !c.users.has_user(found.user) => Verdict::Bad {
                user: LogSafeUser::new(found.user),
                why: "orphaned token (user not in the users file)",
            },
            Some(found) => Verdict::Ok {
                user: found.user.to_string(),
                session_id: None,
                proof: Proof::ApiToken {
                    digest: tokens::token_digest(token),
                },
            },
            None => {
                c.failed(self.ip, None);
                Verdict::Bad {
                    user: LogSafeUser::default(),
                    why: "bad token",
                }
            }
        }
    }

    fn session(&self, token: &str) -> Verdict {
        let c = self.creds;
        if let Some(throttled) = c.throttled(self.ip, None) {
            return throttled;
        }
        let now = unix_now();
        let sessions = c.sessions();
        let claims = sessions
            .as_ref()
            .and_then(|s| s.key.verify(token, now).ok());
        let Some(claims) = claims else {
            c.failed(self.ip, None);
            return Verdict::Bad {
                user: LogSafeUser::default(),
                why: "bad session",
            };
        };
        let max_age = sessions.as_ref().map_or(0, |s| s.max_age.as_secs());
        // Genuine tokens that are no longer good are not guesses: not counted as failures.
        if claims
            .login_unix
            .is_some_and(|login| now >= login.saturating_add(max_age))
        {
            return Verdict::Bad {
                user: LogSafeUser::new(&claims.user),
                why: "session past session_max_age",
            };
        }
        if c.fingerprint(&claims.user) != Some(claims.fingerprint) {
            return Verdict::Bad {
                user: LogSafeUser::new(&claims.user),
                why: "revoked session",
            };
        }
        Verdict::Ok {
            proof: Proof::Session {
                fingerprint: claims.fingerprint,
                login_unix: claims.login_unix.unwrap_or(now),
                key_id: sessions.as_ref().map_or([0; 8], |s| s.key.id()),
            },
            user: claims.user,
            session_id: Some(claims.session_id),
        }
    }
}

/// The credentials as loaded now, for [`crate::policy::recheck`] after a reload; the client CA
/// check is the caller's (it holds the TLS configuration).
pub struct CurrentCredentials<'a, F: Fn(&[CertificateDer<'static>]) -> bool> {
    pub creds: &'a Credentials,
    pub client_cert_trusted: F,
}

impl<F: Fn(&[CertificateDer<'static>]) -> bool> CredentialState for CurrentCredentials<'_, F> {
    fn password_hash(&self, user: &str) -> Option<[u8; 32]> {
        self.creds
            .users
            .password_hash(user)
            .map(|phc| users::hash_digest(&phc))
    }

    fn token_owner(&self, digest: &[u8; 32]) -> Option<String> {
        self.creds
            .tokens()
            .owner_of(digest)
            .map(ToString::to_string)
    }

    fn fingerprint(&self, user: &str) -> Option<[u8; 8]> {
        self.creds.fingerprint(user)
    }

    fn client_cert_trusted(&self, chain: &[CertificateDer<'static>]) -> bool {
        (self.client_cert_trusted)(chain)
    }

    fn session_accepted(&self, key_id: &[u8; 8], login_unix: u64) -> bool {
        self.creds.sessions().is_some_and(|s| {
            s.key.id() == *key_id && unix_now() < login_unix.saturating_add(s.max_age.as_secs())
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
