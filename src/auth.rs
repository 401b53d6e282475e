//! The server's side of credentials: the [`Verifier`] that `policy::decide` asks. It owns the
//! users (Argon2 behind a cache), API tokens, the session signing key and failed-login throttling,
//! and logs the once-per-window throttle line. Never logs a secret.

use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::policy::{Verdict, Verifier, safe_user};
use crate::session::{self, SessionKey};
use crate::throttle::LoginThrottle;
use crate::tokens::TokenStore;
use crate::users::{AuthOutcome, Authenticator};

/// Everything needed to check credentials, shared by all workers.
pub struct Credentials {
    pub users: Authenticator,
    tokens: RwLock<Arc<TokenStore>>,
    sessions: Option<(SessionKey, Duration)>,
    throttle: LoginThrottle,
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
    ) -> Credentials {
        Credentials {
            users,
            tokens: RwLock::new(Arc::new(tokens)),
            sessions,
            throttle,
        }
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
        let (key, ttl) = self.sessions.as_ref()?;
        let expires = unix_now() + ttl.as_secs();
        Some((
            key.issue(user, session_id, &self.fingerprint(user), expires),
            *ttl,
        ))
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
        let why = match c.users.verify(user, password) {
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
            .sessions
            .as_ref()
            .and_then(|(key, _)| key.verify(token, unix_now()).ok());
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
