//! Failed-login throttling, asked before any Argon2 work: after `max_failures` failures within a
//! window, from one peer address or against one user name, further attempts are refused until
//! the window ends. Memory is bounded: at most `capacity` addresses, names and trusted pairs.
//!
//! Windows are fixed, starting at the first counted attempt: a key gets at most `max_failures`
//! tries per window, and the block lifts exactly when its window ends (a sliding window would
//! need a timestamp per failure; attempts made while blocked are refused unhashed, so they
//! neither count nor extend anything).
//!
//! Three rules keep the count honest ([`LoginThrottle::begin`]):
//! - **Attempts in flight count.** A password check reserves its place before the Argon2 run and
//!   settles it after, so N simultaneous guesses cannot all pass a check made before any of them
//!   failed: at most `max_failures` are hashed, failed or in flight, per key and window.
//! - **A success forgives only its own address.** A user's count remembers which address each
//!   failure came from; a successful login clears the failures from that address only, so the
//!   victim's own logins do not reset what an attacker elsewhere has spent.
//! - **A user's own devices are not locked out.** Counting by user name protects a user attacked
//!   from many addresses — at the price that anyone could hold a known name blocked by failing
//!   against it. An address where that user logged in successfully within `trusted_ttl` is
//!   exempt from the *user's* block (never from its own address block), so strangers stay
//!   blocked while the user's usual devices keep working (OWASP's "device cookie" idea, keyed by
//!   address; a client holding a valid session resumes with it and never meets the user block).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::rules::user_name::MAX_USER_NAME_LEN;

/// How long a key blocked only by attempts still in flight is told to wait: they settle within
/// one Argon2 run (tens of milliseconds), so a second is plenty.
const IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

/// Counts failed logins per peer address and per user name. Shared by all workers.
pub struct LoginThrottle {
    max_failures: u32,
    window: Duration,
    capacity: usize,
    trusted_ttl: Duration,
    state: Mutex<Tallies>,
}

impl fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ips, users) = self.tracked();
        f.debug_struct("LoginThrottle")
            .field("max_failures", &self.max_failures)
            .field("window", &self.window)
            .field("capacity", &self.capacity)
            .field("trusted_ttl", &self.trusted_ttl)
            .field("tracked_ips", &ips)
            .field("tracked_users", &users)
            .finish()
    }
}

#[derive(Default)]
struct Tallies {
    ips: Counters<IpAddr>,
    users: Counters<String>,
    /// `(user, address as counted) -> last successful login there`.
    trusted: HashMap<(String, IpAddr), Instant>,
}

/// One key's window: when it started, its failures (and, for a user, the address each came
/// from), and the attempts reserved but not yet settled.
#[derive(Clone)]
struct Window {
    start: Instant,
    failures: u32,
    in_flight: u32,
    /// The address of each failure, for user windows (empty for address windows).
    sources: Vec<IpAddr>,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            start: now,
            failures: 0,
            in_flight: 0,
            sources: Vec::new(),
        }
    }
}

struct Counters<K> {
    map: HashMap<K, Window>,
}

impl<K> Default for Counters<K> {
    fn default() -> Self {
        Counters {
            map: HashMap::new(),
        }
    }
}

/// Why an attempt is refused without checking its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// Until the blocking window ends (for a `Retry-After` header, rounded up).
    pub retry_after: Duration,
    /// What is blocked; when both are, the one blocked longer.
    pub key: BlockedKey,
}

/// The address or the name that reached the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockedKey {
    /// The peer's address as counted: IPv4, or an IPv6 /64 prefix (host bits zero).
    Ip(IpAddr),
    User(String),
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        match &self.key {
            BlockedKey::Ip(ip) => write!(f, "too many failed logins from {ip}")?,
            BlockedKey::User(user) => write!(
                f,
                "too many failed logins for user \"{}\"",
                user.escape_debug()
            )?,
        }
        write!(f, " (blocked for {secs} s more)")
    }
}

/// What [`LoginThrottle::record_failure`] tells the caller to log: `true` for a key only on the
/// failure that reached the limit, so a blocked key is logged once per window, not per attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Logging {
    pub ip_tripped: bool,
    pub user_tripped: bool,
}

impl Logging {
    /// Whether this failure blocked the address or the name.
    #[must_use]
    pub fn tripped(&self) -> bool {
        self.ip_tripped || self.user_tripped
    }
}

/// The address an attempt is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64,
/// the smallest block one host normally gets — counting single IPv6 addresses would let one
/// client rotate through 2^64 of them.
#[must_use]
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// The name an attempt is counted under; `None` for no name, or one longer than any valid user
/// name (no account to protect; the address is still counted), which also bounds memory.
fn user_key(user: Option<&str>) -> Option<&str> {
    user.filter(|u| u.len() <= MAX_USER_NAME_LEN)
}

impl<K: Hash + Eq + Clone> Counters<K> {
    fn expired(w: &Window, now: Instant, window: Duration) -> bool {
        now.saturating_duration_since(w.start) >= window
    }

    /// How long `key` stays blocked, if it is: its failures and attempts in flight together
    /// reached `max`.
    fn blocked<Q>(&self, key: &Q, now: Instant, max: u32, window: Duration) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let w = self.map.get(key)?;
        let failures = if Self::expired(w, now, window) {
            0
        } else {
            w.failures
        };
        if failures >= max {
            return Some(window - now.saturating_duration_since(w.start));
        }
        (failures.saturating_add(w.in_flight) >= max).then_some(IN_FLIGHT_RETRY)
    }

    /// `key`'s window, made (evicting when full) or restarted if it ended; attempts in flight
    /// carry over into a restarted window.
    fn window_of(
        &mut self,
        key: K,
        now: Instant,
        window: Duration,
        capacity: usize,
    ) -> &mut Window {
        if !self.map.contains_key(&key) && self.map.len() >= capacity {
            // Ended windows with nothing in flight first; if none, the oldest window. O(capacity),
            // but only when full, and failures come at most at the pace of Argon2 checks.
            self.map
                .retain(|_, w| w.in_flight > 0 || !Self::expired(w, now, window));
            while self.map.len() >= capacity {
                let oldest = self
                    .map
                    .iter()
                    .min_by_key(|(_, w)| w.start)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => self.map.remove(&k),
                    None => break,
                };
            }
        }
        let w = self.map.entry(key).or_insert_with(|| Window::new(now));
        if Self::expired(w, now, window) {
            *w = Window {
                in_flight: w.in_flight,
                ..Window::new(now)
            };
        }
        w
    }

    /// Counts a failure from `source`; true if it is the one that reaches `max` in this window.
    fn fail(
        &mut self,
        key: K,
        source: Option<IpAddr>,
        now: Instant,
        max: u32,
        window: Duration,
        capacity: usize,
    ) -> bool {
        let w = self.window_of(key, now, window, capacity);
        w.failures = w.failures.saturating_add(1);
        if let Some(ip) = source {
            if w.sources.len() < max as usize {
                w.sources.push(ip);
            }
        }
        w.failures == max
    }

    /// Reserves a place for an attempt in flight.
    fn reserve(&mut self, key: K, now: Instant, window: Duration, capacity: usize) {
        let w = self.window_of(key, now, window, capacity);
        w.in_flight = w.in_flight.saturating_add(1);
    }

    /// Forgets every counted failure; windows with attempts in flight keep them.
    fn forgive(&mut self) {
        self.map.retain(|_, w| w.in_flight > 0);
        for w in self.map.values_mut() {
            w.failures = 0;
            w.sources.clear();
        }
    }

    /// Gives back a reservation (the window may have been evicted meanwhile: then nothing).
    fn release<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(w) = self.map.get_mut(key) {
            w.in_flight = w.in_flight.saturating_sub(1);
        }
    }
}

/// A password check in flight, counted against its address and user name until it is settled
/// with [`Attempt::failed`] or [`Attempt::succeeded`]. Dropping it unsettled (the check never
/// ran: too busy) gives the place back without counting anything.
#[must_use = "an attempt counts as in flight until settled or dropped"]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    ip: IpAddr,
    user: Option<String>,
    settled: bool,
}

impl Attempt<'_> {
    /// The check failed: counts it against the address and the name (in one step with giving
    /// back the place, so it is never counted neither as in flight nor as failed).
    pub fn failed(mut self, now: Instant) -> Logging {
        self.settled = true;
        let t = self.throttle;
        let mut state = t.lock();
        release(&mut state, self.ip, self.user.as_deref());
        t.fail_locked(&mut state, self.ip, self.user.as_deref(), now)
    }

    /// The check succeeded: gives the place back. (The login itself is recorded with
    /// [`LoginThrottle::record_success`] once it is granted, whatever the credential.)
    pub fn succeeded(self) {
        drop(self);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled && self.throttle.max_failures > 0 {
            release(&mut self.throttle.lock(), self.ip, self.user.as_deref());
        }
    }
}

fn release(state: &mut Tallies, ip: IpAddr, user: Option<&str>) {
    state.ips.release(&ip_key(ip));
    if let Some(u) = user_key(user) {
        state.users.release(u);
    }
}

impl LoginThrottle {
    /// At most `max_failures` failed logins per `window`, per address and per user name, with at
    /// most `capacity` addresses, names and trusted pairs tracked (0 is taken as 1).
    /// `max_failures == 0` turns throttling off (nothing is counted or stored). No address is
    /// trusted until [`LoginThrottle::with_trusted_ttl`] says for how long.
    #[must_use]
    pub fn new(max_failures: u32, window: Duration, capacity: usize) -> Self {
        LoginThrottle {
            max_failures,
            window,
            capacity: capacity.max(1),
            trusted_ttl: Duration::ZERO,
            state: Mutex::new(Tallies::default()),
        }
    }

    /// An address where a user logged in successfully is exempt from that user's block for
    /// `ttl` after the login (zero: never).
    #[must_use]
    pub fn with_trusted_ttl(mut self, ttl: Duration) -> Self {
        self.trusted_ttl = ttl;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Tallies> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_trusted(&self, state: &Tallies, ip: IpAddr, user: &str, now: Instant) -> bool {
        !self.trusted_ttl.is_zero()
            && state
                .trusted
                .get(&(user.to_string(), ip))
                .is_some_and(|at| now.saturating_duration_since(*at) < self.trusted_ttl)
    }

    fn blocked_locked(
        &self,
        state: &Tallies,
        ip: IpAddr,
        user: Option<&str>,
        now: Instant,
    ) -> Result<(), Blocked> {
        let ip = ip_key(ip);
        let by_ip = state
            .ips
            .blocked(&ip, now, self.max_failures, self.window)
            .map(|d| (d, BlockedKey::Ip(ip)));
        let by_user = user_key(user)
            .filter(|u| !self.is_trusted(state, ip, u, now))
            .and_then(|u| {
                state
                    .users
                    .blocked(u, now, self.max_failures, self.window)
                    .map(|d| (d, BlockedKey::User(u.to_string())))
            });
        match (by_ip, by_user) {
            (None, None) => Ok(()),
            (Some((retry_after, key)), None) | (None, Some((retry_after, key))) => {
                Err(Blocked { retry_after, key })
            }
            (Some(a), Some(b)) => {
                let (retry_after, key) = if b.0 > a.0 { b } else { a };
                Err(Blocked { retry_after, key })
            }
        }
    }

    /// Whether an attempt from `ip` for `user` may be checked at all (for checks without
    /// Argon2: tokens, sessions). Password checks use [`LoginThrottle::begin`].
    ///
    /// # Errors
    /// [`Blocked`] when the address or the name has reached the limit in its current window,
    /// counting attempts in flight.
    pub fn check(&self, ip: IpAddr, user: Option<&str>, now: Instant) -> Result<(), Blocked> {
        if self.max_failures == 0 {
            return Ok(());
        }
        self.blocked_locked(&self.lock(), ip, user, now)
    }

    /// Checks like [`LoginThrottle::check`] and, if allowed, reserves the attempt's place
    /// against the address and the name in the same step, so simultaneous attempts cannot all
    /// pass one check. Call it just before the Argon2 run; settle the [`Attempt`] after.
    ///
    /// # Errors
    /// [`Blocked`], as for `check`.
    pub fn begin(
        &self,
        ip: IpAddr,
        user: Option<&str>,
        now: Instant,
    ) -> Result<Attempt<'_>, Blocked> {
        let user = user_key(user).map(str::to_string);
        if self.max_failures > 0 {
            let mut state = self.lock();
            self.blocked_locked(&state, ip, user.as_deref(), now)?;
            let (window, cap) = (self.window, self.capacity);
            state.ips.reserve(ip_key(ip), now, window, cap);
            if let Some(u) = &user {
                state.users.reserve(u.clone(), now, window, cap);
            }
        }
        // Made only once reserved: dropping an attempt gives back a place it holds.
        Ok(Attempt {
            throttle: self,
            ip,
            user,
            settled: false,
        })
    }

    /// Counts a failed login against `ip` and `user` (when given).
    pub fn record_failure(&self, ip: IpAddr, user: Option<&str>, now: Instant) -> Logging {
        if self.max_failures == 0 {
            return Logging::default();
        }
        self.fail_locked(&mut self.lock(), ip, user, now)
    }

    fn fail_locked(
        &self,
        state: &mut Tallies,
        ip: IpAddr,
        user: Option<&str>,
        now: Instant,
    ) -> Logging {
        if self.max_failures == 0 {
            return Logging::default();
        }
        let (max, window, cap) = (self.max_failures, self.window, self.capacity);
        let ip = ip_key(ip);
        let ip_tripped = state.ips.fail(ip, None, now, max, window, cap);
        let user_tripped = user_key(user).is_some_and(|u| {
            state
                .users
                .fail(u.to_string(), Some(ip), now, max, window, cap)
        });
        Logging {
            ip_tripped,
            user_tripped,
        }
    }

    /// A successful login as `user` from `ip` (by any credential): forgets the user's failures
    /// that came from this address — not those from elsewhere, and not the address's own count,
    /// which may be trying many names and got one right — and trusts the address for the user
    /// for `trusted_ttl`.
    pub fn record_success(&self, ip: IpAddr, user: &str, now: Instant) {
        if self.max_failures == 0 {
            return;
        }
        self.succeed_locked(&mut self.lock(), ip, user, now);
    }

    fn succeed_locked(&self, state: &mut Tallies, ip: IpAddr, user: &str, now: Instant) {
        let Some(user) = user_key(Some(user)) else {
            return;
        };
        let ip = ip_key(ip);
        if let Some(w) = state.users.map.get_mut(user) {
            let before = w.sources.len();
            w.sources.retain(|source| *source != ip);
            let forgiven = (before - w.sources.len()) as u32;
            w.failures = w.failures.saturating_sub(forgiven);
        }
        if self.trusted_ttl.is_zero() {
            return;
        }
        let key = (user.to_string(), ip);
        if !state.trusted.contains_key(&key) && state.trusted.len() >= self.capacity {
            let ttl = self.trusted_ttl;
            state
                .trusted
                .retain(|_, at| now.saturating_duration_since(*at) < ttl);
            while state.trusted.len() >= self.capacity {
                let oldest = state
                    .trusted
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => state.trusted.remove(&k),
                    None => break,
                };
            }
        }
        state.trusted.insert(key, now);
    }

    /// Forgets every failure counted so far, from every address and against every name, and so
    /// lifts every block (attempts in flight still settle; trusted addresses stay trusted).
    /// Called on reload: the admin changed the credentials or the config, and failures against
    /// what was there before — a token tried before the server had loaded it, a password typed
    /// before `wsgate passwd` ran — must not keep the admin out of their own server.
    pub fn forgive_all(&self) {
        let mut state = self.lock();
        state.ips.forgive();
        state.users.forgive();
    }

    /// How long `ip` (and `user`, when given) stays blocked, if it is.
    #[must_use]
    pub fn blocked_for(&self, ip: IpAddr, user: Option<&str>, now: Instant) -> Option<Duration> {
        self.check(ip, user, now).err().map(|b| b.retry_after)
    }

    /// How many addresses and names are tracked now (each at most `capacity`).
    #[must_use]
    pub fn tracked(&self) -> (usize, usize) {
        let state = self.lock();
        (state.ips.map.len(), state.users.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const W: Duration = Duration::from_secs(60);

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
    }

    #[test]
    fn trips_at_the_nth_failure_and_recovers() {
        let t = LoginThrottle::new(3, W, 100);
        let t0 = Instant::now();
        for i in 0..2 {
            assert!(t.check(ip(1), Some("alice"), t0).is_ok());
            let log = t.record_failure(ip(1), Some("alice"), t0 + Duration::from_secs(i));
            assert!(!log.tripped());
        }
        assert!(
            t.check(ip(1), Some("alice"), t0 + Duration::from_secs(2))
                .is_ok()
        );
        let log = t.record_failure(ip(1), Some("alice"), t0 + Duration::from_secs(2));
        assert_eq!(
            log,
            Logging {
                ip_tripped: true,
                user_tripped: true
            }
        );
        // Blocked: retry_after counts down to the end of the window that began at t0.
        let b = t
            .check(ip(1), Some("alice"), t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(b.retry_after, Duration::from_secs(50));
        let b = t
            .check(ip(1), None, t0 + Duration::from_secs(59))
            .unwrap_err();
        assert_eq!(b.retry_after, Duration::from_secs(1));
        assert_eq!(b.key, BlockedKey::Ip(ip(1)));
        assert_eq!(
            b.to_string(),
            "too many failed logins from 192.0.2.1 (blocked for 1 s more)"
        );
        // The window ends: allowed again, and counting starts over.
        assert!(t.check(ip(1), Some("alice"), t0 + W).is_ok());
        assert!(!t.record_failure(ip(1), Some("alice"), t0 + W).tripped());
        assert!(t.check(ip(1), Some("alice"), t0 + W).is_ok());
    }

    #[test]
    fn trips_flag_once_per_window() {
        let t = LoginThrottle::new(2, W, 100);
        let t0 = Instant::now();
        let trips: Vec<bool> = (0..6)
            .map(|i| {
                t.record_failure(ip(1), None, t0 + Duration::from_secs(i))
                    .ip_tripped
            })
            .collect();
        assert_eq!(trips, [false, true, false, false, false, false]);
        // Next window: trips again, once.
        let later = t0 + W + Duration::from_secs(5);
        assert!(!t.record_failure(ip(1), None, later).tripped());
        assert!(t.record_failure(ip(1), None, later).tripped());
        assert!(!t.record_failure(ip(1), None, later).tripped());
        // max_failures == 1 trips on the first failure.
        let one = LoginThrottle::new(1, W, 10);
        assert!(one.record_failure(ip(1), Some("a"), t0).ip_tripped);
        assert!(one.record_failure(ip(2), Some("b"), t0).user_tripped);
    }

    #[test]
    fn user_counted_across_addresses() {
        let t = LoginThrottle::new(3, W, 100);
        let t0 = Instant::now();
        let mut log = Logging::default();
        for n in 1..=3 {
            log = t.record_failure(ip(n), Some("alice"), t0);
        }
        assert_eq!(
            log,
            Logging {
                ip_tripped: false,
                user_tripped: true
            }
        );
        let b = t.check(ip(9), Some("alice"), t0).unwrap_err();
        assert_eq!(b.key, BlockedKey::User("alice".into()));
        assert_eq!(b.retry_after, W);
        // Other names from a fresh address are fine; so is that address without a name.
        assert!(t.check(ip(9), Some("bob"), t0).is_ok());
        assert!(t.check(ip(9), None, t0).is_ok());
    }

    #[test]
    fn address_counted_across_users() {
        let t = LoginThrottle::new(3, W, 100);
        let t0 = Instant::now();
        for name in ["a", "b", "c"] {
            t.record_failure(ip(1), Some(name), t0);
        }
        let b = t.check(ip(1), Some("d"), t0).unwrap_err();
        assert_eq!(b.key, BlockedKey::Ip(ip(1)));
    }

    #[test]
    fn success_resets_the_user_not_the_address() {
        let t = LoginThrottle::new(3, W, 100);
        let t0 = Instant::now();
        t.record_failure(ip(1), Some("alice"), t0);
        t.record_failure(ip(1), Some("alice"), t0);
        t.record_success(ip(1), "alice", t0);
        // Alice has 0 now, the address 2: one more failure blocks the address only.
        assert!(t.record_failure(ip(1), Some("alice"), t0).ip_tripped);
        assert_eq!(t.check(ip(2), Some("alice"), t0), Ok(()));
        assert!(t.check(ip(1), Some("alice"), t0).is_err());
    }

    #[test]
    fn ipv6_counted_by_64_and_mapped_v4_as_v4() {
        let t = LoginThrottle::new(2, W, 100);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        t.record_failure(a, None, t0);
        t.record_failure(b, None, t0);
        let blocked = t.check("2001:db8:1:2::77".parse().unwrap(), None, t0);
        assert_eq!(
            blocked.unwrap_err().key,
            BlockedKey::Ip("2001:db8:1:2::".parse().unwrap())
        );
        assert!(
            t.check("2001:db8:1:3::1".parse().unwrap(), None, t0)
                .is_ok()
        );
        t.record_failure("::ffff:192.0.2.7".parse().unwrap(), None, t0);
        t.record_failure(ip(7), None, t0);
        assert!(t.check(ip(7), None, t0).is_err());
    }

    #[test]
    fn disabled_counts_nothing() {
        let t = LoginThrottle::new(0, W, 100);
        let t0 = Instant::now();
        for n in 0..50 {
            assert!(!t.record_failure(ip(n), Some("alice"), t0).tripped());
            assert!(t.check(ip(n), Some("alice"), t0).is_ok());
        }
        assert_eq!(t.tracked(), (0, 0));
    }

    #[test]
    fn memory_is_bounded() {
        let t = LoginThrottle::new(3, W, 16);
        let t0 = Instant::now();
        for n in 0..1000u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            let at = t0 + Duration::from_millis(u64::from(n));
            t.record_failure(addr, Some(&format!("user{n}")), at);
            let (ips, users) = t.tracked();
            assert!(ips <= 16 && users <= 16, "{ips} {users}");
        }
        // Over-long names are not tracked at all (no account can have them).
        let long = "x".repeat(MAX_USER_NAME_LEN + 1);
        let t2 = LoginThrottle::new(1, W, 16);
        assert!(!t2.record_failure(ip(1), Some(&long), t0).user_tripped);
        assert_eq!(t2.tracked(), (1, 0));
    }

    #[test]
    fn eviction_prefers_expired_then_oldest() {
        let t = LoginThrottle::new(2, W, 3);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // ip1 blocked early; ip2 and ip3 one failure each, later.
        t.record_failure(ip(1), None, t0);
        t.record_failure(ip(1), None, t0);
        t.record_failure(ip(2), None, t0 + s(30));
        t.record_failure(ip(3), None, t0 + s(40));
        // ip4 arrives while full and nothing has expired: the oldest (ip1) goes.
        t.record_failure(ip(4), None, t0 + s(50));
        assert!(t.check(ip(1), None, t0 + s(50)).is_ok());
        assert_eq!(t.tracked().0, 3);
        // ip2 and ip3 block; then, after ip2's and ip3's windows ended, ip5 and ip6 purge them
        // rather than evicting ip4 — whose second failure then still trips.
        t.record_failure(ip(2), None, t0 + s(51));
        t.record_failure(ip(3), None, t0 + s(52));
        let late = t0 + s(101);
        t.record_failure(ip(5), None, late);
        assert_eq!(t.tracked().0, 2, "expired ip2 and ip3 purged together");
        assert!(t.record_failure(ip(4), None, late).ip_tripped);
    }

    #[test]
    fn a_success_forgives_only_the_failures_from_its_own_address() {
        let t = LoginThrottle::new(3, W, 100);
        let t0 = Instant::now();
        // An attacker elsewhere spends two tries; alice mistypes once, then gets in.
        t.record_failure(ip(66), Some("alice"), t0);
        t.record_failure(ip(67), Some("alice"), t0);
        t.record_failure(ip(1), Some("alice"), t0);
        t.record_success(ip(1), "alice", t0);
        // Her mistake is forgiven; the attacker's two stand: one more blocks the name.
        assert!(t.check(ip(68), Some("alice"), t0).is_ok());
        assert!(t.record_failure(ip(68), Some("alice"), t0).user_tripped);
        assert!(t.check(ip(69), Some("alice"), t0).is_err());
        // Alice logging in again and again changes nothing for the attacker.
        for _ in 0..10 {
            t.record_success(ip(1), "alice", t0);
        }
        assert!(t.check(ip(70), Some("alice"), t0).is_err());
    }

    #[test]
    fn attempts_in_flight_count_against_the_limit() {
        let t = LoginThrottle::new(3, W, 100);
        let t0 = Instant::now();
        // Three simultaneous guesses from one address take every place; the fourth is refused
        // before any of them has failed.
        let held: Vec<Attempt<'_>> = (0..3)
            .map(|_| t.begin(ip(1), Some("alice"), t0).unwrap())
            .collect();
        let b = t.begin(ip(1), Some("bob"), t0).err().unwrap();
        assert_eq!(b.key, BlockedKey::Ip(ip(1)));
        assert_eq!(b.retry_after, IN_FLIGHT_RETRY);
        // From many addresses, the name's places are taken just the same.
        let b = t.begin(ip(2), Some("alice"), t0).err().unwrap();
        assert_eq!(b.key, BlockedKey::User("alice".into()));
        // Refusals hold no place, so they give none back: still blocked after many of them.
        for _ in 0..10 {
            assert!(t.begin(ip(2), Some("alice"), t0).is_err());
        }
        assert!(t.begin(ip(5), Some("alice"), t0).is_err());
        // An attempt dropped unsettled (never checked) gives its place back uncounted.
        let mut held = held.into_iter();
        drop(held.next());
        let again = t.begin(ip(2), Some("alice"), t0).unwrap();
        // Settled as failures, they count once each and the block is the window's.
        let log: Vec<Logging> = held.chain([again]).map(|a| a.failed(t0)).collect();
        assert!(log[2].user_tripped);
        assert_eq!(
            t.check(ip(3), Some("alice"), t0).unwrap_err().retry_after,
            W
        );
        // Success settles without counting.
        let t = LoginThrottle::new(2, W, 100);
        for _ in 0..5 {
            t.begin(ip(1), Some("alice"), t0).unwrap().succeeded();
        }
        assert!(t.check(ip(1), Some("alice"), t0).is_ok());
    }

    #[test]
    fn an_address_that_logged_in_is_not_locked_out_by_failures_elsewhere() {
        let t = LoginThrottle::new(3, W, 100).with_trusted_ttl(Duration::from_secs(600));
        let t0 = Instant::now();
        t.record_success(ip(1), "alice", t0);
        for n in 10..13 {
            t.record_failure(ip(n), Some("alice"), t0);
        }
        // Strangers are blocked on the name; alice's own address is not.
        assert!(t.check(ip(20), Some("alice"), t0).is_err());
        assert!(t.begin(ip(1), Some("alice"), t0).unwrap().failed(t0) == Logging::default());
        // Its own address count still applies to it.
        t.record_failure(ip(1), Some("alice"), t0);
        t.record_failure(ip(1), Some("alice"), t0);
        assert_eq!(
            t.check(ip(1), Some("alice"), t0).unwrap_err().key,
            BlockedKey::Ip(ip(1))
        );
        // Trust is per user and lapses.
        assert!(t.check(ip(2), Some("alice"), t0).is_err());
        t.record_success(ip(2), "alice", t0);
        assert!(t.check(ip(2), Some("alice"), t0).is_ok());
        let later = t0 + Duration::from_secs(601);
        t.record_failure(ip(30), Some("alice"), later);
        t.record_failure(ip(31), Some("alice"), later);
        t.record_failure(ip(32), Some("alice"), later);
        assert!(t.check(ip(2), Some("alice"), later).is_err());
        // Off by default.
        let plain = LoginThrottle::new(1, W, 100);
        plain.record_success(ip(1), "alice", t0);
        plain.record_failure(ip(9), Some("alice"), t0);
        assert!(plain.check(ip(1), Some("alice"), t0).is_err());
    }
}
