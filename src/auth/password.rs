//! Password verification against the users file ([`UserStore`]): Argon2id checks bounded in
//! concurrency by permits (each carrying its reused working memory), identical checks in flight
//! sharing one run, and a keyed cache of recent successes so a reconnect storm does not cost one
//! Argon2 run per client.
//!
//! Nothing here logs or displays a password or a stored hash.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{self, PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};
use crossbeam_channel::{Receiver, Sender};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::auth::users::{UserStore, UsersError, hash_digest};

/// Verifies credentials against a [`UserStore`]; shared by all workers.
pub struct Authenticator {
    current: RwLock<Arc<StoreState>>,
    cache: Mutex<Cache>,
    cache_size: usize,
    cache_ttl: Duration,
    cache_key: hmac::Key,
    /// Checks running Argon2 now, by cache tag (single flight).
    flights: Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    /// One permit per Argon2 run allowed at once; a verification takes one and gives it back.
    permits_tx: Sender<Vec<argon2::Block>>,
    permits_rx: Receiver<Vec<argon2::Block>>,
    argon2_runs: AtomicU64,
    /// Checks waiting for a permit, and how many may wait before new ones are refused as busy.
    waiting: std::sync::atomic::AtomicUsize,
    max_waiting: usize,
    /// The Argon2 memory (KiB) one check may use, fixed at start: the permits and the memory
    /// budget were sized for it.
    memory_kib: u32,
    #[cfg(test)]
    in_flight: std::sync::atomic::AtomicUsize,
    #[cfg(test)]
    peak_in_flight: std::sync::atomic::AtomicUsize,
}

/// A store plus the dummy hash an unknown user is checked against: the parameters of the store's
/// first hash (bounded by the users file's rules), a random salt and a random output that no
/// password produces. Checking against it is one Argon2 run inside a permit, as a wrong password
/// costs; making it is no run at all, so a start or a reload allocates no Argon2 memory.
struct StoreState {
    store: Arc<UserStore>,
    dummy: Option<String>,
}

/// One Argon2 check in flight, which identical checks (same user, stored hash and password)
/// arriving meanwhile wait for instead of running their own.
#[derive(Default)]
struct Flight {
    answer: Mutex<FlightAnswer>,
    done: Condvar,
}

/// Where a [`Flight`] is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum FlightAnswer {
    #[default]
    Running,
    /// The run ended: whether the password matched, or None when it got no Argon2 permit (or
    /// panicked).
    Done(Option<bool>),
}

/// The leader's side of a [`Flight`]: publishes the answer and leaves the table even if the run
/// panics (then as "no answer", so followers answer busy instead of waiting forever).
struct Leading<'a> {
    flights: &'a Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    tag: [u8; 32],
    flight: Arc<Flight>,
    answer: Option<bool>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        lock(self.flights).remove(&self.tag);
        *lock(&self.flight.answer) = FlightAnswer::Done(self.answer);
        self.flight.done.notify_all();
    }
}

/// The result of a credential check. Callers answer `UnknownUser` and `BadPassword` identically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Ok,
    UnknownUser,
    BadPassword,
    /// Too many password checks are already waiting for an Argon2 permit; try again shortly.
    Busy,
    /// The caller's gate (the failed-login throttle) did not let this check run Argon2.
    Declined,
}

/// What a password check cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Answered from the verification cache.
    CacheHit,
    /// One Argon2id run (against the user's hash, or the dummy for an unknown user).
    Argon2,
    /// Answered by an identical check that was already running (single flight): no run of its
    /// own.
    Shared,
    /// Refused before any work (busy).
    Nothing,
}

/// FIFO set of HMAC tags of recent successful checks, each with its insertion time. Insertions
/// happen under the lock with `Instant::now()`, so the queue is in time order and expired entries
/// are always a prefix of it.
#[derive(Default)]
struct Cache {
    order: VecDeque<([u8; 32], Instant)>,
    tags: HashSet<[u8; 32]>,
}

impl Cache {
    fn purge_expired(&mut self, now: Instant, ttl: Duration) {
        while let Some(&(tag, at)) = self.order.front() {
            if now.duration_since(at) < ttl {
                break;
            }
            self.order.pop_front();
            self.tags.remove(&tag);
        }
    }

    fn hit(&mut self, tag: &[u8; 32], ttl: Duration) -> bool {
        self.purge_expired(Instant::now(), ttl);
        self.tags.contains(tag)
    }

    fn insert(&mut self, tag: [u8; 32], ttl: Duration, capacity: usize) {
        let now = Instant::now();
        self.purge_expired(now, ttl);
        if capacity == 0 || self.tags.contains(&tag) {
            return;
        }
        while self.order.len() >= capacity {
            if let Some((old, _)) = self.order.pop_front() {
                self.tags.remove(&old);
            }
        }
        self.order.push_back((tag, now));
        self.tags.insert(tag);
    }

    fn clear(&mut self) {
        self.order.clear();
        self.tags.clear();
    }
}

/// A permit to run Argon2, carrying that permit's working memory. The memory (m_cost KiB, 19 MiB
/// by default) is allocated once per permit and reused: allocating and freeing it per run leaves
/// each glibc malloc arena holding ~19 MiB after its first run (a freed large block raises
/// glibc's mmap threshold, so later ones come from, and stay in, the arenas), which grows RSS with
/// the number of worker threads. Reuse bounds it at `max_concurrent_hashes` buffers.
struct Permit<'a> {
    home: &'a Sender<Vec<argon2::Block>>,
    memory: Vec<argon2::Block>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // Never blocks: exactly as many permits exist as the channel holds.
        let _ = self.home.try_send(std::mem::take(&mut self.memory));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Authenticator {
    /// `cache_size` successes are remembered for `cache_ttl` (0 disables the cache); at most
    /// `max_concurrent_hashes` Argon2 runs (each ~19 MiB) happen at once (0 is taken as 1).
    ///
    /// # Panics
    /// If the system random source cannot produce the process's cache key.
    #[must_use]
    pub fn new(
        store: UserStore,
        cache_size: usize,
        cache_ttl: Duration,
        max_concurrent_hashes: usize,
    ) -> Self {
        let permits = max_concurrent_hashes.max(1);
        let (permits_tx, permits_rx) = crossbeam_channel::bounded(permits);
        for _ in 0..permits {
            permits_tx
                .send(Vec::new())
                .expect("the permit channel has room for every permit");
        }
        let cache_key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .expect("the system random source must work to key the credential cache");
        let memory_kib = store.hashing_memory_kib();
        Authenticator {
            memory_kib,
            current: RwLock::new(Arc::new(StoreState::new(store))),
            cache: Mutex::new(Cache::default()),
            cache_size,
            cache_ttl,
            cache_key,
            flights: Mutex::new(HashMap::new()),
            permits_tx,
            permits_rx,
            argon2_runs: AtomicU64::new(0),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            max_waiting: usize::MAX,
            #[cfg(test)]
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            #[cfg(test)]
            peak_in_flight: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Refuses checks (as [`AuthOutcome::Busy`]) while `max_waiting` others already wait for an
    /// Argon2 permit, so a password flood cannot hold every worker in the queue.
    #[must_use]
    pub fn with_queue_limit(mut self, max_waiting: usize) -> Self {
        self.max_waiting = max_waiting;
        self
    }

    /// Checks `user`'s `password`. An unknown user costs one Argon2 run against a dummy hash, like
    /// a wrong password. Logs nothing.
    pub fn verify(&self, user: &str, password: &str) -> AuthOutcome {
        self.verify_costed(user, password).0
    }

    /// [`Authenticator::verify`], also saying what the answer cost (for metrics) and, on
    /// success, the [`hash_digest`] of the stored hash it matched (so a reload can tell whether
    /// the password changed since).
    pub fn verify_costed(
        &self,
        user: &str,
        password: &str,
    ) -> (AuthOutcome, Cost, Option<[u8; 32]>) {
        self.verify_gated(user, password, &mut || true)
    }

    /// [`Authenticator::verify_costed`], asking `gate` just before this check would run Argon2
    /// itself — not for a cache hit, nor when it joins an identical check already running —
    /// and answering [`AuthOutcome::Declined`] without a run when the gate says no. The failed-
    /// login throttle reserves its place there, so only checks that cost a hash are counted in
    /// flight.
    ///
    /// Identical checks in flight at once (same user, stored hash and password: every device
    /// logging in after a restart) share one Argon2 run: the first runs it, the others wait for
    /// its answer. Unknown users go the same way, against the dummy hash, so the two still
    /// cost the same.
    pub fn verify_gated(
        &self,
        user: &str,
        password: &str,
        gate: &mut dyn FnMut() -> bool,
    ) -> (AuthOutcome, Cost, Option<[u8; 32]>) {
        let state = Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner));
        let known = state.store.hash(user);
        let Some(stored) = known.or(state.dummy.as_deref()) else {
            // No dummy hash could be made (the system random source failed): nothing to run.
            return (AuthOutcome::UnknownUser, Cost::Nothing, None);
        };
        let tag = self.tag(user, stored, password);
        let cached = || {
            known.is_some() && self.cache_enabled() && lock(&self.cache).hit(&tag, self.cache_ttl)
        };
        if cached() {
            return (AuthOutcome::Ok, Cost::CacheHit, Some(hash_digest(stored)));
        }
        let (matched, cost) = match self.join_or_lead(tag, gate, &cached) {
            Part::Declined => return (AuthOutcome::Declined, Cost::Nothing, None),
            Part::Cached => return (AuthOutcome::Ok, Cost::CacheHit, Some(hash_digest(stored))),
            Part::Follow(flight) => {
                let mut answer = lock(&flight.answer);
                while *answer == FlightAnswer::Running {
                    answer = flight
                        .done
                        .wait(answer)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                let matched = match *answer {
                    FlightAnswer::Done(matched) => matched,
                    FlightAnswer::Running => None,
                };
                (matched, Cost::Shared)
            }
            Part::Lead(mut leading) => {
                let matched = self.argon2_verify(stored, password);
                if matched == Some(true) && known.is_some() && self.cache_enabled() {
                    // Cached before the flight leaves the table: a check arriving in between
                    // finds one or the other.
                    lock(&self.cache).insert(tag, self.cache_ttl, self.cache_size);
                }
                leading.answer = matched;
                (matched, Cost::Argon2)
            }
        };
        match (matched, known) {
            (None, _) => (AuthOutcome::Busy, Cost::Nothing, None),
            (Some(_), None) => (AuthOutcome::UnknownUser, cost, None),
            (Some(false), Some(_)) => (AuthOutcome::BadPassword, cost, None),
            (Some(true), Some(_)) => (AuthOutcome::Ok, cost, Some(hash_digest(stored))),
        }
    }

    /// Joins the identical check in flight, or — if `gate` agrees — becomes the one that runs.
    /// With no flight, the cache is asked again under the flights lock: a leader that finished
    /// between the caller's cache miss and now cached its success before leaving the table, so
    /// the caller finds one or the other and never runs Argon2 a second time.
    fn join_or_lead(
        &self,
        tag: [u8; 32],
        gate: &mut dyn FnMut() -> bool,
        cached: &dyn Fn() -> bool,
    ) -> Part<'_> {
        let mut flights = lock(&self.flights);
        if let Some(flight) = flights.get(&tag) {
            return Part::Follow(Arc::clone(flight));
        }
        if cached() {
            return Part::Cached;
        }
        if !gate() {
            return Part::Declined;
        }
        let flight = Arc::new(Flight::default());
        flights.insert(tag, Arc::clone(&flight));
        Part::Lead(Leading {
            flights: &self.flights,
            tag,
            flight,
            answer: None,
        })
    }

    /// Whether `store` (loaded from `path` by a reload) fits the Argon2 memory the permits were
    /// sized for at start: a hash asking for more would grow every permit beyond the budget.
    ///
    /// # Errors
    /// [`UsersError::HashingMemory`] naming the file and both sizes.
    pub fn check_fits(&self, store: &UserStore, path: &Path) -> Result<(), UsersError> {
        let needs = store.hashing_memory_kib();
        if needs > self.memory_kib {
            return Err(UsersError::HashingMemory {
                path: path.to_path_buf(),
                needs,
                sized: self.memory_kib,
            });
        }
        Ok(())
    }

    /// Swaps in a newly loaded store (SIGHUP reload) and forgets every cached success.
    pub fn replace_store(&self, store: UserStore) {
        let state = Arc::new(StoreState::new(store));
        {
            let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
            *current = state;
        }
        lock(&self.cache).clear();
    }

    /// How many Argon2 verifications ran (dummy ones included); cache hits do not count.
    pub fn argon2_runs(&self) -> u64 {
        self.argon2_runs.load(Ordering::Relaxed)
    }

    /// The stored PHC hash of `user`, if the user exists (for session fingerprints: a password
    /// change or deletion changes it).
    pub fn password_hash(&self, user: &str) -> Option<String> {
        let state = self.current.read().unwrap_or_else(PoisonError::into_inner);
        state.store.hash(user).map(str::to_string)
    }

    /// Whether the current store has `user`.
    pub fn has_user(&self, user: &str) -> bool {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .store
            .contains(user)
    }

    /// How many users the current store holds.
    pub fn user_count(&self) -> usize {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .store
            .len()
    }

    /// How many successes are cached now (expired ones may still be counted until the next use).
    pub fn cached_entries(&self) -> usize {
        lock(&self.cache).order.len()
    }

    fn cache_enabled(&self) -> bool {
        self.cache_size > 0 && !self.cache_ttl.is_zero()
    }

    /// HMAC-SHA256(process key, user || 0 || stored PHC || 0 || password). Names and PHC strings
    /// contain no NUL, so the encoding is unambiguous; the stored hash in the key makes a password
    /// change invalidate old entries.
    fn tag(&self, user: &str, stored: &str, password: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.cache_key);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(stored.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        let mut tag = [0u8; 32];
        tag.copy_from_slice(ctx.sign().as_ref());
        tag
    }

    /// One Argon2 run, waiting for a concurrency permit (and its memory) first. None when too
    /// many checks already wait.
    fn argon2_verify(&self, phc: &str, password: &str) -> Option<bool> {
        let memory = match self.permits_rx.try_recv() {
            Ok(memory) => memory,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return None;
                }
                // The sender lives in `self`, so the channel never disconnects.
                let memory = self.permits_rx.recv();
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                memory.ok()?
            }
        };
        let mut permit = Permit {
            home: &self.permits_tx,
            memory,
        };
        self.argon2_runs.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        }
        let ok = PasswordHash::new(phc)
            .ok()
            .is_some_and(|parsed| argon2_matches(&parsed, password.as_bytes(), &mut permit.memory));
        #[cfg(test)]
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Some(ok)
    }
}

/// What a check does about an identical one in flight.
enum Part<'a> {
    /// Runs Argon2 and publishes the answer.
    Lead(Leading<'a>),
    /// Waits for the answer of the one running.
    Follow(Arc<Flight>),
    /// The gate said no.
    Declined,
    /// A leader finished meanwhile and cached the success.
    Cached,
}

/// Recomputes `parsed`'s Argon2 hash of `password` in `memory` (grown to the hash's m_cost if
/// needed) and compares it with the stored output in constant time.
fn argon2_matches(
    parsed: &PasswordHash<'_>,
    password: &[u8],
    memory: &mut Vec<argon2::Block>,
) -> bool {
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(parsed),
    ) else {
        return false;
    };
    let Ok(version) = Version::try_from(parsed.version.unwrap_or(0x13)) else {
        return false;
    };
    let mut salt_buf = [0u8; password_hash::Salt::MAX_LENGTH];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let need = params.block_count();
    if memory.len() < need {
        memory.resize(need, argon2::Block::default());
    }
    let mut out = [0u8; password_hash::Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    let hasher = Argon2::new(algorithm, version, params);
    if hasher
        .hash_password_into_with_memory(password, salt, out, &mut memory[..need])
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    password_hash::Output::new(out).is_ok_and(|computed| computed == expected)
}

impl StoreState {
    /// The store and its dummy hash.
    fn new(store: UserStore) -> Self {
        let dummy = dummy_hash(&store.typical_params());
        StoreState {
            store: Arc::new(store),
            dummy,
        }
    }
}

/// A PHC string with `params`, a random salt and a random 32-byte output: verifying any password
/// against it runs Argon2 with `params` and fails (a match is a 2^-256 chance). None only when
/// the system random source fails.
fn dummy_hash(params: &Params) -> Option<String> {
    let rng = SystemRandom::new();
    let (mut salt, mut output) = ([0u8; 16], [0u8; 32]);
    rng.fill(&mut salt).ok()?;
    rng.fill(&mut output).ok()?;
    let salt = password_hash::SaltString::encode_b64(&salt).ok()?;
    let output = password_hash::Output::new(&output).ok()?;
    Some(format!(
        "$argon2id$v=19$m={},t={},p={}${}${output}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        salt.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::users::hash_password_with;
    use crate::auth::users::tests::{h, p};

    #[test]
    fn a_reload_asking_more_argon2_memory_than_the_permits_were_sized_for_is_refused() {
        let with_m = |m| {
            let phc = hash_password_with("pw", Params::new(m, 1, 1, None).unwrap()).unwrap();
            UserStore::parse(&format!("alice:{phc}\n"), p()).unwrap()
        };
        let auth = Authenticator::new(with_m(64), 0, Duration::ZERO, 1);
        assert!(auth.check_fits(&with_m(64), p()).is_ok());
        assert!(auth.check_fits(&with_m(32), p()).is_ok());
        let e = auth.check_fits(&with_m(65), p()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "users: conf/users: a hash asks Argon2 for m=65 KiB, more than the 64 KiB the \
             server's hashing permits were sized for at start; the running users are kept \
             (restart wsgate to size the permits for it)"
        );
    }

    #[test]
    fn the_dummy_hash_costs_no_run_to_make_and_one_run_to_check() {
        let phc = hash_password_with("pw", Params::new(64, 3, 2, None).unwrap()).unwrap();
        let store = UserStore::parse(&format!("alice:{phc}\n"), p()).unwrap();
        let auth = Authenticator::new(store.clone(), 0, Duration::ZERO, 1);
        for _ in 0..100 {
            auth.replace_store(store.clone());
        }
        assert_eq!(auth.argon2_runs(), 0, "making the dummy ran Argon2");
        let dummy = auth.current.read().unwrap().dummy.clone().unwrap();
        let parsed = PasswordHash::new(&dummy).unwrap();
        let params = Params::try_from(&parsed).unwrap();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (64, 3, 2)
        );
        assert_eq!(parsed.hash.unwrap().len(), 32);
        assert_eq!(auth.verify("mallory", "pw"), AuthOutcome::UnknownUser);
        assert_eq!(auth.argon2_runs(), 1);
        // Every reload draws a new salt and output.
        auth.replace_store(store);
        assert_ne!(auth.current.read().unwrap().dummy.as_ref(), Some(&dummy));
    }

    #[test]
    fn verify_outcomes() {
        let store = UserStore::parse(&format!("alice:{}\n", h("right")), p()).unwrap();
        let auth = Authenticator::new(store, 16, Duration::from_secs(60), 2);
        assert_eq!(auth.verify("alice", "right"), AuthOutcome::Ok);
        assert_eq!(auth.verify("alice", "wrong"), AuthOutcome::BadPassword);
        assert_eq!(auth.verify("alice", ""), AuthOutcome::BadPassword);
        assert_eq!(auth.verify("Alice", "right"), AuthOutcome::UnknownUser);
        assert_eq!(auth.verify("mallory", "right"), AuthOutcome::UnknownUser);
        // Unknown user and bad password each cost one Argon2 run; the success was cached only
        // after its own run.
        assert_eq!(auth.argon2_runs(), 5);
        assert_eq!(auth.user_count(), 1);
    }

    #[test]
    fn unknown_user_on_empty_store_still_costs_a_run() {
        let auth = Authenticator::new(
            UserStore::parse("", p()).unwrap(),
            4,
            Duration::from_secs(60),
            1,
        );
        assert_eq!(auth.verify("x", "y"), AuthOutcome::UnknownUser);
        assert_eq!(auth.argon2_runs(), 1);
    }

    #[test]
    fn cache_hit_skips_argon2_and_failures_are_not_cached() {
        let store = UserStore::parse(&format!("alice:{}\n", h("pw")), p()).unwrap();
        let auth = Authenticator::new(store, 16, Duration::from_secs(60), 1);
        assert_eq!(auth.verify("alice", "pw"), AuthOutcome::Ok);
        assert_eq!(auth.argon2_runs(), 1);
        for _ in 0..5 {
            assert_eq!(auth.verify("alice", "pw"), AuthOutcome::Ok);
        }
        assert_eq!(auth.argon2_runs(), 1);
        assert_eq!(auth.verify("alice", "nope"), AuthOutcome::BadPassword);
        assert_eq!(auth.verify("alice", "nope"), AuthOutcome::BadPassword);
        assert_eq!(auth.argon2_runs(), 3);
        assert_eq!(auth.cached_entries(), 1);
    }

    #[test]
    fn cache_disabled_with_size_zero() {
        let store = UserStore::parse(&format!("alice:{}\n", h("pw")), p()).unwrap();
        let auth = Authenticator::new(store, 0, Duration::from_secs(60), 1);
        assert_eq!(auth.verify("alice", "pw"), AuthOutcome::Ok);
        assert_eq!(auth.verify("alice", "pw"), AuthOutcome::Ok);
        assert_eq!(auth.argon2_runs(), 2);
        assert_eq!(auth.cached_entries(), 0);
    }

    #[test]
    fn cache_respects_ttl() {
        let store = UserStore::parse(&format!("alice:{}\n", h("pw")), p()).unwrap();
        let auth = Authenticator::new(store, 16, Duration::from_millis(100), 1);
        assert_eq!(auth.verify("alice", "pw"), AuthOutcome::Ok);
        assert_eq!(auth.verify("alice", "pw"), AuthOutcome::Ok);
        assert_eq!(auth.argon2_runs(), 1);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(auth.verify("alice", "pw"), AuthOutcome::Ok);
        assert_eq!(auth.argon2_runs(), 2);
        assert_eq!(auth.verify("alice", "pw"), AuthOutcome::Ok);
        assert_eq!(auth.argon2_runs(), 2);
    }

    #[test]
    fn cache_respects_size_fifo() {
        let text = format!("a:{}\nb:{}\nc:{}\n", h("1"), h("2"), h("3"));
        let store = UserStore::parse(&text, p()).unwrap();
        let auth = Authenticator::new(store, 2, Duration::from_secs(60), 1);
        assert_eq!(auth.verify("a", "1"), AuthOutcome::Ok);
        assert_eq!(auth.verify("b", "2"), AuthOutcome::Ok);
        assert_eq!(auth.argon2_runs(), 2);
        assert_eq!(auth.verify("c", "3"), AuthOutcome::Ok); // evicts a
        assert_eq!(auth.argon2_runs(), 3);
        assert_eq!(auth.cached_entries(), 2);
        assert_eq!(auth.verify("b", "2"), AuthOutcome::Ok);
        assert_eq!(auth.verify("c", "3"), AuthOutcome::Ok);
        assert_eq!(auth.argon2_runs(), 3);
        assert_eq!(auth.verify("a", "1"), AuthOutcome::Ok); // miss, evicts b
        assert_eq!(auth.argon2_runs(), 4);
        assert_eq!(auth.verify("b", "2"), AuthOutcome::Ok);
        assert_eq!(auth.argon2_runs(), 5);
    }

    #[test]
    fn password_change_invalidates() {
        let old = UserStore::parse(&format!("alice:{}\n", h("old")), p()).unwrap();
        let auth = Authenticator::new(old, 16, Duration::from_secs(60), 1);
        assert_eq!(auth.verify("alice", "old"), AuthOutcome::Ok);
        assert_eq!(auth.verify("alice", "old"), AuthOutcome::Ok);
        assert_eq!(auth.argon2_runs(), 1);
        let new = UserStore::parse(&format!("alice:{}\n", h("new")), p()).unwrap();
        auth.replace_store(new);
        assert_eq!(auth.cached_entries(), 0);
        assert_eq!(auth.verify("alice", "old"), AuthOutcome::BadPassword);
        assert_eq!(auth.verify("alice", "new"), AuthOutcome::Ok);
        // A removed user is unknown at once, cache or not.
        auth.replace_store(UserStore::parse("", p()).unwrap());
        assert_eq!(auth.verify("alice", "new"), AuthOutcome::UnknownUser);
    }

    #[test]
    fn stored_hash_is_part_of_the_cache_key() {
        // Same password, new hash (new salt): the old entry must not match the new hash.
        let a = Authenticator::new(UserStore::parse("", p()).unwrap(), 4, Duration::ZERO, 1);
        assert_ne!(
            a.tag("alice", &h("pw"), "pw"),
            a.tag("alice", &h("pw"), "pw")
        );
        let stored = h("pw");
        assert_eq!(a.tag("alice", &stored, "pw"), a.tag("alice", &stored, "pw"));
        assert_ne!(
            a.tag("alice", &stored, "pw"),
            a.tag("alice", &stored, "pw2")
        );
    }

    #[test]
    fn concurrency_is_bounded_and_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authenticator>();
        // Heavier than `cheap()` so that runs overlap.
        let phc = hash_password_with("pw", Params::new(2048, 1, 1, None).unwrap()).unwrap();
        let store = UserStore::parse(&format!("alice:{phc}\n"), p()).unwrap();
        let auth = Arc::new(Authenticator::new(store, 0, Duration::ZERO, 2));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let auth = Arc::clone(&auth);
                std::thread::spawn(move || {
                    // Distinct wrong passwords: no two checks are identical (no sharing).
                    let pw = if i == 0 {
                        "pw".to_string()
                    } else {
                        format!("bad{i}")
                    };
                    auth.verify("alice", &pw)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| **r == AuthOutcome::Ok).count(), 1);
        assert_eq!(auth.argon2_runs(), 8);
        // All permits came back, and never more than two runs were in flight.
        assert_eq!(auth.permits_rx.len(), 2);
        let peak = auth.peak_in_flight.load(Ordering::SeqCst);
        assert!((1..=2).contains(&peak), "peak {peak}");
    }

    #[test]
    fn identical_checks_in_flight_share_one_run() {
        let phc = hash_password_with("pw", Params::new(4096, 2, 1, None).unwrap()).unwrap();
        let store = UserStore::parse(&format!("alice:{phc}\n"), p()).unwrap();
        let auth = Authenticator::new(store, 16, Duration::from_secs(60), 2);
        let start = std::sync::Barrier::new(16);
        let gated = AtomicU64::new(0);
        let outcomes: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        auth.verify_gated("alice", "pw", &mut || {
                            gated.fetch_add(1, Ordering::SeqCst);
                            true
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // One run; the others shared it or (arriving after it) hit the cache. Only the one that
        // ran asked the gate.
        assert_eq!(auth.argon2_runs(), 1);
        assert_eq!(gated.load(Ordering::SeqCst), 1);
        assert!(
            outcomes
                .iter()
                .all(|(o, _, d)| *o == AuthOutcome::Ok && d.is_some())
        );
        assert_eq!(
            outcomes
                .iter()
                .filter(|(_, c, _)| *c == Cost::Argon2)
                .count(),
            1
        );
        // A gate that says no: nothing runs, the answer says so.
        let (outcome, cost, _) = auth.verify_gated("alice", "other", &mut || false);
        assert_eq!((outcome, cost), (AuthOutcome::Declined, Cost::Nothing));
        assert_eq!(auth.argon2_runs(), 1);
        // The dummy hash was made with the store: an unknown user's first check is one run.
        assert_eq!(auth.verify("nobody", "x"), AuthOutcome::UnknownUser);
        assert_eq!(auth.argon2_runs(), 2);
    }

    #[test]
    fn a_full_argon2_queue_answers_busy_without_hashing() {
        let store = UserStore::parse(&format!("alice:{}\n", h("right")), p()).unwrap();
        let auth = Authenticator::new(store, 0, Duration::from_secs(60), 1).with_queue_limit(0);
        // Another check holds the only permit; with no room to wait, new checks are busy.
        let held = auth.permits_rx.recv().unwrap();
        assert_eq!(auth.verify("alice", "right"), AuthOutcome::Busy);
        assert_eq!(auth.verify("mallory", "right"), AuthOutcome::Busy);
        assert_eq!(auth.argon2_runs(), 0);
        auth.permits_tx.send(held).unwrap();
        assert_eq!(auth.verify("alice", "right"), AuthOutcome::Ok);
    }
}
