//! The server's side of credentials: the [`Verifier`] that `policy::decide` asks. It owns the
//! users (Argon2 behind a cache), API tokens, the session signing key and failed-login throttling,
//! and logs the once-per-window throttle line. Never logs a secret.

use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;
use crate::policy::{Verdict, Verifier, safe_user};
use crate::session::{self, SessionKey};
use crate::throttle::LoginThrottle;
use crate::tokens::TokenStore;
use crate::users::{AuthOutcome, Authenticator, Cost, UserStore};

/// Everything needed to check credentials, shared by all workers. It lives as long as the
/// server: a reload swaps the users, tokens and session settings inside it, while the Argon2
/// permits (and their memory), the cache key and the throttle's counts carry over.
pub struct Credentials {
    pub users: Authenticator,
    tokens: RwLock<Arc<TokenStore>>,
    sessions: RwLock<Option<Arc<(SessionKey, Duration)>>>,
    throttle: LoginThrottle,
    metrics: Arc<Metrics>,
}

/// Credential checks for one connection: the [`Verifier`] for its upgrade.
pub struct PeerCheck<'a> {
    creds: &'a Credentials,
    ip: IpAddr,
}

impl Credentials {
    /// `sessions`: the signing key and session lifetime, or None when sessions are off.
    pub fn new(
        users: Authenticator,
        tokens: TokenStore,
        sessions: Option<(SessionKey, Duration)>,
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

    /// Swaps in reloaded users, tokens and session settings; new checks use them at once.
    pub fn reload(
        &self,
        users: UserStore,
        tokens: TokenStore,
        sessions: Option<(SessionKey, Duration)>,
    ) {
        self.users.replace_store(users);
        *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tokens);
        *self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner) = sessions.map(Arc::new);
    }

    /// Whether `user` can still log in with a password or an API token.
    pub fn has_account(&self, user: &str) -> bool {
        self.users.password_hash(user).is_some() || self.tokens().hashes_for(user).next().is_some()
    }

    pub fn for_peer(&self, ip: IpAddr) -> PeerCheck<'_> {
        PeerCheck { creds: self, ip }
    }

    fn tokens(&self) -> Arc<TokenStore> {
        Arc::clone(&self.tokens.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The fingerprint of everything that proves `user` today: a password change, deletion or a
    /// token revocation changes it, which invalidates the user's sessions.
    fn fingerprint(&self, user: &str) -> [u8; 8] {
        let hash = self.users.password_hash(user);
        session::user_fingerprint(
            hash.as_deref(),
            self.tokens().hashes_for(user).collect::<Vec<_>>(),
        )
    }

    /// A signed session token for `user` and `session_id`, with its lifetime; None when sessions
    /// are off.
    pub fn issue_session(&self, user: &str, session_id: &str) -> Option<(String, Duration)> {
        let sessions = self.sessions()?;
        let (key, ttl) = &*sessions;
        let expires = unix_now() + ttl.as_secs();
        Some((
            key.issue(user, session_id, &self.fingerprint(user), expires),
            *ttl,
        ))
    }

    fn sessions(&self) -> Option<Arc<(SessionKey, Duration)>> {
        self.sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counts a failure; logs once per window when it trips the throttle.
    fn failed(&self, ip: IpAddr, user: Option<&str>) {
        if self
            .throttle
            .record_failure(ip, user, Instant::now())
            .tripped()
        {
            log::warn!(
                "login throttled: peer={ip} user=\"{}\": too many failed logins; further attempts get 429 until the window ends",
                user.map_or_else(String::new, safe_user)
            );
        }
    }

    fn throttled(&self, ip: IpAddr, user: Option<&str>) -> Option<Verdict> {
        self.throttle
            .check(ip, user, Instant::now())
            .err()
            .map(|blocked| Verdict::Throttled {
                user: user.map_or_else(String::new, safe_user),
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
        let (outcome, cost) = c.users.verify_costed(user, password);
        match cost {
            Cost::CacheHit => c.metrics.auth_cache_hit(),
            Cost::Argon2 => c.metrics.argon2_run(),
            Cost::Nothing => {}
        }
        let why = match outcome {
            AuthOutcome::Ok => {
                c.throttle.record_success(self.ip, user, Instant::now());
                return Verdict::Ok {
                    user: user.to_string(),
                    session_id: None,
                };
            }
            AuthOutcome::Busy => return Verdict::Busy,
            AuthOutcome::UnknownUser => "unknown user",
            AuthOutcome::BadPassword => "bad password",
        };
        c.failed(self.ip, Some(user));
        Verdict::Bad {
            user: safe_user(user),
            why,
        }
    }

    fn api_token(&self, token: &str) -> Verdict {
        let c = self.creds;
        if let Some(throttled) = c.throttled(self.ip, None) {
            return throttled;
        }
        match c.tokens().lookup(token) {
            Some(found) => Verdict::Ok {
                user: found.user.to_string(),
                session_id: None,
            },
            None => {
                c.failed(self.ip, None);
                Verdict::Bad {
                    user: String::new(),
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
        let claims = c
            .sessions()
            .and_then(|s| s.0.verify(token, unix_now()).ok());
        match claims {
            Some(claims) if claims.fingerprint == c.fingerprint(&claims.user) => Verdict::Ok {
                user: claims.user,
                session_id: Some(claims.session_id),
            },
            Some(claims) => Verdict::Bad {
                user: safe_user(&claims.user),
                why: "revoked session",
            },
            None => {
                c.failed(self.ip, None);
                Verdict::Bad {
                    user: String::new(),
                    why: "bad session",
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
