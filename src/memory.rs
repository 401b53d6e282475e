//! The process-wide memory cap (`[server] memory_limit`): shared counts of the bytes that grow
//! with traffic, checked as bytes are queued with one atomic add — the write share (outboxes,
//! write buffers, echoes, the cluster publish queue) and reading's own share (messages being
//! read, [`Reader`]). Also where the default cap comes from (the cgroup limit or `MemTotal`),
//! whom a fan-out that meets the cap drops first and whom a full read share closes. A charge
//! never blocks; what to do when a write charge fails is the caller's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::config::MemoryLimit;

const MIB: u64 = 1024 * 1024;

/// The default cap is this fraction of the host's memory (the cgroup limit when one is set, else
/// `MemTotal`): the rest is for the base cost of every connection (stacks, TLS state, base
/// buffers), password hashing (19 MiB per permit), the page cache and the other processes.
pub const HOST_FRACTION: u64 = 4;
/// The default cap is never below this: the smallest host still carries a few full messages.
pub const FLOOR: u64 = 16 * MIB;
/// Reading's share of the cap is this fraction of it ([`Reader`]); deliveries (outboxes, write
/// buffers, echoes, the cluster queue) stop at the cap less it. Neither share can take the
/// other's room: a cap filled by slow subscribers never stops a publisher's message from being
/// read, and messages being read never stop deliveries or new connections.
pub const READ_SHARE_FRACTION: usize = 8;
/// After a fan-out had to drop subscribers at the cap, new connections get 503 for this long even
/// once the count fell: the dropped clients (and the rest) reconnecting at once would walk
/// straight back into the squeeze.
pub const SQUEEZE_COOLDOWN: Duration = Duration::from_secs(2);
/// Lines about the cap (refusals, drops) are logged at most once per this interval, with counts.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Which part of the cap a charge may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Broadcast deliveries, echoes and the cluster queue: the cap less the read share.
    Deliveries,
}

/// The shared count and its cap.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    /// None: the cap is off and nothing is counted.
    cap: Option<NonZeroUsize>,
    /// When a fan-out last dropped subscribers at the cap, in ms after `epoch` plus one (0: never).
    squeezed_at: AtomicU64,
    /// When the last line about the cap was logged, same clock; and what happened since.
    logged_at: AtomicU64,
    refused_since_log: AtomicU64,
    dropped_since_log: AtomicU64,
    epoch: Instant,
    /// Reading's own share (see [`Reader`]).
    reading: Reading,
}

impl Budget {
    /// A budget capped at `cap` bytes, or counting nothing when `cap` is None.
    pub fn new(cap: Option<NonZeroUsize>) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            cap,
            squeezed_at: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
            refused_since_log: AtomicU64::new(0),
            dropped_since_log: AtomicU64::new(0),
            epoch: Instant::now(),
            reading: Reading::default(),
        }
    }

    /// No cap: every charge succeeds and nothing is counted.
    pub fn off() -> Budget {
        Budget::new(None)
    }

    /// The cap in bytes, None when off.
    pub fn cap(&self) -> Option<usize> {
        self.cap.map(NonZeroUsize::get)
    }

    /// Bytes counted against the write share now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes counted against the whole cap now: the write share and the read share.
    pub fn counted(&self) -> usize {
        self.used().saturating_add(self.reading_used())
    }

    fn limit(&self, room: Room) -> usize {
        let cap = self.cap.map_or(usize::MAX, NonZeroUsize::get);
        match room {
            Room::Deliveries => cap - cap / READ_SHARE_FRACTION,
        }
    }

    /// Bytes a charge in `room` may still take.
    pub fn room(&self, room: Room) -> usize {
        self.limit(room).saturating_sub(self.used())
    }

    /// Counts `bytes` if they fit under the limit of `room`; false (and nothing counted) if not.
    /// One atomic add on the way in; a second one only when it does not fit. Two charges racing
    /// at the cap may both fail where one would have fitted; none ever passes the cap.
    fn try_charge(&self, bytes: usize, room: Room) -> bool {
        if self.cap.is_none() {
            return true;
        }
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit(room) {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn release(&self, bytes: usize) {
        if self.cap.is_some() && bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    fn clock(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Whether a new connection may come in: the deliveries are below their limit and no fan-out
    /// dropped subscribers at the cap in the last [`SQUEEZE_COOLDOWN`].
    pub fn admits(&self) -> bool {
        if self.cap.is_none() {
            return true;
        }
        let squeezed = self.squeezed_at.load(Ordering::Relaxed);
        let cooling = squeezed != 0
            && self.clock().saturating_sub(squeezed) < SQUEEZE_COOLDOWN.as_millis() as u64;
        !cooling && self.room(Room::Deliveries) > 0
    }

    /// A new connection was refused at the cap: logs one line per [`LOG_INTERVAL`] with counts.
    pub fn refused(&self) {
        self.refused_since_log.fetch_add(1, Ordering::Relaxed);
        self.maybe_log();
    }

    /// A fan-out dropped `n` subscribers at the cap.
    pub fn dropped(&self, n: usize) {
        self.squeezed_at.store(self.clock(), Ordering::Relaxed);
        self.dropped_since_log
            .fetch_add(n as u64, Ordering::Relaxed);
        self.maybe_log();
    }

    fn maybe_log(&self) {
        let now = self.clock();
        let last = self.logged_at.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < LOG_INTERVAL.as_millis() as u64 {
            return;
        }
        if self
            .logged_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread logs this interval
        }
        let refused = self.refused_since_log.swap(0, Ordering::Relaxed);
        let dropped = self.dropped_since_log.swap(0, Ordering::Relaxed);
        log::warn!(
            "memory limit reached ({} of {} MiB counted): {refused} connections refused with 503, \
             {dropped} subscribers closed 1008 slow consumer since the last such line (at most one \
             line per {}s; see wsgate_memory_* in /metrics)",
            self.used() >> 20,
            self.cap().unwrap_or(0) >> 20,
            LOG_INTERVAL.as_secs()
        );
    }
}

/// One connection's share of the write count. What it holds (its outbox, its write buffer, its
/// echoes) is in [`Charge`]s that travel with the bytes they count and give them back when
/// dropped; the account only sums them ([`Account::held`]). What it is reading is not here: that
/// is its [`Reader`], in the read share.
#[derive(Debug, Clone)]
pub struct Account {
    budget: Arc<Budget>,
    /// What its charges hold together.
    held: Arc<AtomicUsize>,
    /// Of `held`, buffer capacity its writes keep after their bytes went out
    /// ([`Account::keeps`]): held, but owed to nobody.
    kept: Arc<AtomicUsize>,
}

impl Account {
    pub fn new(budget: Arc<Budget>) -> Account {
        Account {
            budget,
            held: Arc::new(AtomicUsize::new(0)),
            kept: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Says that `bytes` of what its charges hold are buffer capacity kept after the bytes went
    /// out (a write buffer that grew), not messages still owed to the client.
    pub fn keeps(&self, bytes: usize) {
        self.kept.store(bytes, Ordering::Relaxed);
    }

    /// Bytes of deliveries it holds that the client has not taken yet (its outbox and what its
    /// socket has not accepted): what it holds less what is only kept capacity. Whom the squeeze
    /// closes first.
    pub fn backlog(&self) -> usize {
        let held = self.held.load(Ordering::Relaxed);
        held.saturating_sub(self.kept.load(Ordering::Relaxed))
    }

    /// Counts `bytes` for this owner if they fit in `room`, as a [`Charge`] that gives them back
    /// when dropped.
    pub fn charge(&self, bytes: usize, room: Room) -> Option<Charge> {
        if self.budget.cap.is_none() {
            return Some(self.nothing());
        }
        if !self.budget.try_charge(bytes, room) {
            return None;
        }
        self.held.fetch_add(bytes, Ordering::Relaxed);
        Some(Charge {
            budget: Arc::clone(&self.budget),
            holder: Some(Arc::clone(&self.held)),
            bytes,
        })
    }

    /// A charge of nothing yet, for others of this owner to be merged into
    /// ([`Charge::absorb`]).
    pub fn nothing(&self) -> Charge {
        Charge {
            budget: Arc::clone(&self.budget),
            holder: Some(Arc::clone(&self.held)),
            bytes: 0,
        }
    }

    /// Bytes this owner holds now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

/// Bytes counted against the write share for the value that holds them (a queued broadcast, an
/// echo, a connection's write buffer, a message in the cluster queue): it moves with them and
/// gives them back when dropped, whoever drops it and wherever. Charges of one owner merge
/// ([`Charge::absorb`]) and shrink ([`Charge::shrink_to`]) as the bytes they count do. With the
/// cap off a charge counts nothing.
#[must_use]
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    /// The owner's [`Account::held`], when the bytes are a connection's.
    holder: Option<Arc<AtomicUsize>>,
    bytes: usize,
}

impl Charge {
    /// Counts `bytes` in `room` for no connection (the cluster queue); None when they do not
    /// fit.
    pub fn try_new(budget: &Arc<Budget>, bytes: usize, room: Room) -> Option<Charge> {
        let counted = if budget.cap.is_some() { bytes } else { 0 };
        budget.try_charge(bytes, room).then(|| Charge {
            budget: Arc::clone(budget),
            holder: None,
            bytes: counted,
        })
    }

    /// Bytes it counts.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `other`, of the same owner, into this one: one charge for both sets of bytes.
    pub fn absorb(&mut self, mut other: Charge) {
        debug_assert!(
            match (&self.holder, &other.holder) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            },
            "charges of two owners merged"
        );
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Gives back what it counts beyond `keep` bytes.
    pub fn shrink_to(&mut self, keep: usize) {
        if self.bytes > keep {
            let freed = self.bytes - keep;
            self.bytes = keep;
            self.give_back(freed);
        }
    }

    fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        if let Some(holder) = &self.holder {
            holder.fetch_sub(bytes, Ordering::Relaxed);
        }
        self.budget.release(bytes);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.give_back(self.bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Reading: the read share, and whom it closes when it is full.

/// What one reader — a user, or an anonymous client's address — may hold of the read share at
/// most: this fraction of it. One party filling its part is refused its own bytes; the other
/// parties still have the rest.
pub const READER_PART_FRACTION: usize = 2;

/// Who a connection reads for: the party whose connections share a part of the read share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReaderKey {
    User(String),
    /// An anonymous client, by its address.
    Address(IpAddr),
}

/// The read share's count and the connections reading, for the scan that picks whom to close.
#[derive(Default)]
struct Reading {
    used: AtomicUsize,
    registry: Mutex<Registry>,
    /// Connections closed because the share or their reader's part was full, since the last line
    /// about it; and when that line was logged (the [`Budget`] clock, 0: never).
    closed_since_log: AtomicU64,
    logged_at: AtomicU64,
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reading")
            .field("used", &self.used.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    slots: HashMap<u64, Arc<Slot>>,
    parts: HashMap<ReaderKey, Weak<Part>>,
}

/// One reader's part: what its connections hold together.
struct Part {
    key: ReaderKey,
    held: AtomicUsize,
}

/// One connection's place in the read share.
struct Slot {
    held: AtomicUsize,
    part: Arc<Part>,
    /// Set when the share closed this connection; its charges fail from then on.
    closed: AtomicBool,
    /// Wakes the connection's loop so that it sees `closed` and ends.
    wake: Box<dyn Fn() + Send + Sync>,
}

/// Takes up to `n` from `held` (no more than it holds); returns what it took.
fn take(held: &AtomicUsize, n: usize) -> usize {
    let mut taken = 0;
    let _ = held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
        taken = h.min(n);
        Some(h - taken)
    });
    taken
}

impl Budget {
    /// The read share's size: [`READ_SHARE_FRACTION`] of the cap (`usize::MAX` when off).
    pub fn read_share(&self) -> usize {
        self.cap
            .map_or(usize::MAX, |c| c.get() / READ_SHARE_FRACTION)
    }

    /// What one reader may hold of the read share: [`READER_PART_FRACTION`] of it.
    pub fn reader_part(&self) -> usize {
        self.read_share() / READER_PART_FRACTION
    }

    /// Bytes counted against the read share now.
    pub fn reading_used(&self) -> usize {
        self.reading.used.load(Ordering::Relaxed)
    }

    /// Counts `n` for `slot` if it fits in its reader's part and in the share; no lock.
    fn try_read_charge(&self, slot: &Slot, n: usize) -> bool {
        let part = slot.part.held.fetch_add(n, Ordering::AcqRel);
        if part.saturating_add(n) > self.reader_part() {
            slot.part.held.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        let used = self.reading.used.fetch_add(n, Ordering::AcqRel);
        if used.saturating_add(n) > self.read_share() {
            self.reading.used.fetch_sub(n, Ordering::AcqRel);
            slot.part.held.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        slot.held.fetch_add(n, Ordering::AcqRel);
        true
    }

    /// Gives back up to `n` of what `slot` holds. The part's and the share's counts are never
    /// below the sum of their slots' (a slot's bytes are added there first and taken from the
    /// slot first), so they give back what the slot gave.
    fn read_release(&self, slot: &Slot, n: usize) {
        let t = take(&slot.held, n);
        if t > 0 {
            slot.part.held.fetch_sub(t, Ordering::AcqRel);
            self.reading.used.fetch_sub(t, Ordering::AcqRel);
        }
    }

    /// The share (or the reader's part) has no room for `n` more bytes of `slot`'s: closes
    /// whoever holds the most — among the reader's own connections when its part is what is
    /// full — until the bytes fit. Returns false when `slot` itself, with the `n` bytes it asks
    /// for, would hold the most: it is the one to close.
    fn make_read_room(&self, slot: &Arc<Slot>, n: usize) -> bool {
        let registry = self
            .reading
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Each turn closes one connection that holds something: bounded by their number.
        for _ in 0..=registry.slots.len() {
            if self.try_read_charge(slot, n) {
                return true;
            }
            let part_full =
                slot.part.held.load(Ordering::Acquire).saturating_add(n) > self.reader_part();
            let mine = slot.held.load(Ordering::Acquire).saturating_add(n);
            let victim = registry
                .slots
                .values()
                .filter(|s| !Arc::ptr_eq(s, slot) && !s.closed.load(Ordering::Acquire))
                .filter(|s| !part_full || Arc::ptr_eq(&s.part, &slot.part))
                .max_by_key(|s| s.held.load(Ordering::Acquire));
            match victim {
                Some(v) if v.held.load(Ordering::Acquire) > mine => self.close_reader(v),
                _ => return false,
            }
        }
        false
    }

    /// Closes a connection for the read share: its charges fail from now on, what it holds is
    /// given back at once (its buffers go when its loop, woken here, ends), and one line per
    /// [`LOG_INTERVAL`] says how many were closed.
    fn close_reader(&self, slot: &Slot) {
        slot.closed.store(true, Ordering::Release);
        self.read_release(slot, usize::MAX);
        (slot.wake)();
        self.reader_closed();
    }

    fn reader_closed(&self) {
        let reading = &self.reading;
        reading.closed_since_log.fetch_add(1, Ordering::Relaxed);
        let now = self.clock();
        let last = reading.logged_at.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < LOG_INTERVAL.as_millis() as u64 {
            return;
        }
        if reading
            .logged_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread logs this interval
        }
        let closed = reading.closed_since_log.swap(0, Ordering::Relaxed);
        log::warn!(
            "memory limit: the read share ({} KiB, a reader's part {} KiB) was full: {closed} \
             connections holding the most unfinished bytes closed 1009 since the last such line \
             (at most one line per {}s)",
            self.read_share() >> 10,
            self.reader_part() >> 10,
            LOG_INTERVAL.as_secs()
        );
    }

    /// A connection's place in the read share, for `key`'s part. `wake` wakes its loop when the
    /// share closes it ([`Reader::closed`]).
    pub fn reader(self: &Arc<Self>, key: ReaderKey, wake: Box<dyn Fn() + Send + Sync>) -> Reader {
        let slot = |part| {
            Arc::new(Slot {
                held: AtomicUsize::new(0),
                part,
                closed: AtomicBool::new(false),
                wake,
            })
        };
        if self.cap.is_none() {
            // Nothing is counted: no registry, no scan.
            let part = Arc::new(Part {
                key,
                held: AtomicUsize::new(0),
            });
            return Reader {
                budget: Arc::clone(self),
                id: 0,
                slot: slot(part),
            };
        }
        let mut registry = self
            .reading
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let part = match registry.parts.get(&key).and_then(Weak::upgrade) {
            Some(part) => part,
            None => {
                let part = Arc::new(Part {
                    key: key.clone(),
                    held: AtomicUsize::new(0),
                });
                registry.parts.insert(key, Arc::downgrade(&part));
                part
            }
        };
        let id = registry.next_id;
        registry.next_id += 1;
        let slot = slot(part);
        registry.slots.insert(id, Arc::clone(&slot));
        Reader {
            budget: Arc::clone(self),
            id,
            slot,
        }
    }
}

impl Account {
    /// A place in the read share of this account's budget (see [`Budget::reader`]).
    pub fn reader(&self, key: ReaderKey, wake: Box<dyn Fn() + Send + Sync>) -> Reader {
        self.budget.reader(key, wake)
    }
}

/// One connection's charge for what it is reading: the bytes of messages it has really
/// received and not yet handled, and what its read buffer keeps beyond its base — never what
/// a frame header declares. Charged against the read share, within its reader's part; when
/// that has no room, the connection holding the most is closed (1009), which is this one when
/// it would. Dropping it gives everything back.
pub struct Reader {
    budget: Arc<Budget>,
    id: u64,
    slot: Arc<Slot>,
}

impl Reader {
    /// Counts `n` more bytes; false when this connection is the one to close (or was closed).
    #[must_use]
    pub fn try_charge(&self, n: usize) -> bool {
        if self.budget.cap.is_none() || n == 0 {
            return true;
        }
        if self.closed() {
            return false;
        }
        self.budget.try_read_charge(&self.slot, n) || self.budget.make_read_room(&self.slot, n)
    }

    /// Gives back `n` bytes (no more than it holds).
    pub fn release(&self, n: usize) {
        self.budget.read_release(&self.slot, n);
    }

    /// Bytes it holds now.
    pub fn held(&self) -> usize {
        self.slot.held.load(Ordering::Acquire)
    }

    /// Whether the read share closed this connection.
    pub fn closed(&self) -> bool {
        self.slot.closed.load(Ordering::Acquire)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.budget.cap.is_none() {
            return;
        }
        self.release(usize::MAX);
        let mut registry = self
            .budget
            .reading
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        registry.slots.remove(&self.id);
        // The map holds a weak reference: this slot is the part's last connection.
        if Arc::strong_count(&self.slot.part) == 1 {
            registry.parts.remove(&self.slot.part.key);
        }
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("key", &self.slot.part.key)
            .field("held", &self.held())
            .field("closed", &self.closed())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// The default cap.

/// Where the default cap was derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    CgroupV2,
    CgroupV1,
    MemTotal,
    /// Nothing readable (not Linux, no /proc): the floor.
    Floor,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::CgroupV2 => "the cgroup v2 memory.max",
            Source::CgroupV1 => "the cgroup v1 memory.limit_in_bytes",
            Source::MemTotal => "MemTotal in /proc/meminfo",
            Source::Floor => "no readable host memory size",
        }
    }
}

/// The host's memory as a limit on this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub bytes: u64,
    pub source: Source,
}

/// `MemTotal` from the text of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// A cgroup memory limit file's value (`memory.max`: a number or `max`; v1's
/// `memory.limit_in_bytes`: a number, near 2^63 when unlimited). None for no limit.
pub fn parse_cgroup_limit(text: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    // v1 writes "unlimited" as the largest page-aligned i64.
    (n < (1 << 62)).then_some(n)
}

/// The host memory that bounds this process: the smallest cgroup limit on the way to the root
/// (v2 first, then v1), unless `MemTotal` is smaller. `cgroup_v2`/`cgroup_v1` are the limit
/// files' texts, innermost first.
pub fn host_memory(
    cgroup_v2: &[String],
    cgroup_v1: &[String],
    meminfo: Option<&str>,
) -> Option<HostMemory> {
    let total = meminfo.and_then(parse_meminfo).map(|bytes| HostMemory {
        bytes,
        source: Source::MemTotal,
    });
    let smallest = |texts: &[String], source| {
        texts
            .iter()
            .filter_map(|t| parse_cgroup_limit(t))
            .min()
            .map(|bytes| HostMemory { bytes, source })
    };
    let cgroup =
        smallest(cgroup_v2, Source::CgroupV2).or_else(|| smallest(cgroup_v1, Source::CgroupV1));
    match (cgroup, total) {
        (Some(c), Some(t)) if t.bytes <= c.bytes => Some(t),
        (Some(c), _) => Some(c),
        (None, t) => t,
    }
}

/// The default cap for a host: [`HOST_FRACTION`] of it, at least [`FLOOR`].
pub fn default_cap(host: Option<HostMemory>) -> u64 {
    host.map_or(FLOOR, |h| (h.bytes / HOST_FRACTION).max(FLOOR))
}

/// The cap `memory_limit` asks for on this host, and what it was derived from (None when given
/// in the config or off).
pub fn resolve(limit: MemoryLimit) -> (Option<NonZeroUsize>, Option<HostMemory>) {
    let host = read_host_memory();
    let cap = match limit {
        MemoryLimit::Off => None,
        MemoryLimit::Bytes(n) => Some(n),
        MemoryLimit::Host => {
            NonZeroUsize::new(usize::try_from(default_cap(host)).unwrap_or(usize::MAX))
        }
    };
    (cap, host)
}

/// Reads the cgroup limits of this process (v2 and v1, innermost first) and `/proc/meminfo`.
pub fn read_host_memory() -> Option<HostMemory> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let cgroups = read("/proc/self/cgroup").unwrap_or_default();
    let mut v2 = Vec::new();
    let mut v1 = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (root, file, out) = if id == "0" && controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max", &mut v2)
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", &mut v1)
        } else {
            continue;
        };
        let mut dir = std::path::PathBuf::from(root);
        dir.push(path.trim_start_matches('/'));
        // Innermost first, up to the mount root.
        loop {
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                out.push(text);
            }
            if dir.as_os_str() == root || !dir.pop() {
                break;
            }
        }
    }
    host_memory(&v2, &v1, read("/proc/meminfo").as_deref())
}

// ---------------------------------------------------------------------------------------------
// Whom a fan-out drops at the cap.

/// One subscriber of a fan-out that met the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Bytes of the write share it has been sent and not taken ([`Account::backlog`]): the
    /// ranking. What it is reading is in the read share and plays no part.
    pub backlog: usize,
    /// Bytes dropping it gives back at once (what it holds for deliveries).
    pub frees: usize,
    /// Bytes this delivery still needs for it (0 when it already has the message).
    pub needs: usize,
}

/// The subscribers to drop (indices into `candidates`) so that what the others still need fits
/// in `room`: the largest backlog first (ties in the given order). Dropping one frees what it
/// holds at once, and its own need. Subscribers without a backlog go last, and only if nothing
/// else frees enough; one without a backlog that needs nothing this time is never dropped: it
/// keeps up (what it holds is buffer capacity, or nothing).
pub fn choose_drops(candidates: &[Candidate], room: usize) -> Vec<usize> {
    let need: usize = candidates.iter().map(|c| c.needs).sum();
    let mut deficit = need.saturating_sub(room);
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| candidates[b].backlog.cmp(&candidates[a].backlog));
    let mut drops = Vec::new();
    for i in order {
        if deficit == 0 {
            break;
        }
        let c = candidates[i];
        if c.backlog == 0 && c.needs == 0 {
            continue;
        }
        deficit = deficit.saturating_sub(c.frees.saturating_add(c.needs));
        drops.push(i);
    }
    drops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_in_bytes() {
        let text = "MemTotal:        1001428 kB\nMemFree:          123 kB\n";
        assert_eq!(parse_meminfo(text), Some(1_001_428 * 1024));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: lots kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 5 MB\n"), None);
    }

    #[test]
    fn cgroup_limits_max_and_v1_unlimited_are_no_limit() {
        assert_eq!(parse_cgroup_limit("536870912\n"), Some(512 * MIB));
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(parse_cgroup_limit(""), None);
    }

    #[test]
    fn host_memory_prefers_the_smallest_cgroup_limit_unless_memtotal_is_smaller() {
        let meminfo = Some("MemTotal: 1048576 kB\n"); // 1 GiB
        let s = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        // No cgroup limit anywhere: MemTotal.
        assert_eq!(
            host_memory(&s(&["max\n", "max\n"]), &[], meminfo),
            Some(HostMemory {
                bytes: 1024 * MIB,
                source: Source::MemTotal
            })
        );
        // A service limit under an unlimited slice; a parent's smaller limit wins.
        assert_eq!(
            host_memory(&s(&["268435456\n", "max\n"]), &[], meminfo),
            Some(HostMemory {
                bytes: 256 * MIB,
                source: Source::CgroupV2
            })
        );
        assert_eq!(
            host_memory(&s(&["268435456\n", "134217728\n"]), &[], meminfo),
            Some(HostMemory {
                bytes: 128 * MIB,
                source: Source::CgroupV2
            })
        );
        // v1 when there is no v2 limit; a limit above MemTotal is no limit.
        assert_eq!(
            host_memory(&[], &s(&["9223372036854771712", "402653184"]), meminfo),
            Some(HostMemory {
                bytes: 384 * MIB,
                source: Source::CgroupV1
            })
        );
        assert_eq!(
            host_memory(&s(&["4294967296"]), &[], meminfo),
            Some(HostMemory {
                bytes: 1024 * MIB,
                source: Source::MemTotal
            })
        );
        // Nothing readable.
        assert_eq!(host_memory(&[], &[], None), None);
        assert_eq!(
            host_memory(&s(&["536870912"]), &[], None),
            Some(HostMemory {
                bytes: 512 * MIB,
                source: Source::CgroupV2
            })
        );
    }

    #[test]
    fn default_cap_is_a_quarter_with_a_floor() {
        let host = |mib| {
            Some(HostMemory {
                bytes: mib * MIB,
                source: Source::MemTotal,
            })
        };
        assert_eq!(default_cap(host(1024)), 256 * MIB); // a 1 GB Pi or VPS
        assert_eq!(default_cap(host(4096)), 1024 * MIB); // a Pi 4 with 4 GB
        assert_eq!(default_cap(host(512)), 128 * MIB); // a Pi Zero
        assert_eq!(default_cap(host(32)), FLOOR);
        assert_eq!(default_cap(None), FLOOR);
    }

    #[test]
    fn charges_stop_at_the_limit_of_their_room_and_give_back_when_dropped() {
        let budget = Arc::new(Budget::new(NonZeroUsize::new(800)));
        let a = Account::new(Arc::clone(&budget));
        let b = Account::new(Arc::clone(&budget));
        // Deliveries may use 700 (the read share is an eighth).
        let a1 = a.charge(500, Room::Deliveries).unwrap();
        let a2 = a.charge(100, Room::Deliveries).unwrap();
        assert!(
            b.charge(101, Room::Deliveries).is_none(),
            "over the delivery limit"
        );
        let b1 = b.charge(100, Room::Deliveries).unwrap();
        assert!(!budget.admits(), "exactly at it");
        assert_eq!((budget.used(), a.held(), b.held()), (700, 600, 100));
        drop(a2);
        assert_eq!((budget.used(), a.held()), (600, 500));
        drop(a1);
        assert_eq!((budget.used(), a.held()), (100, 0));
        assert!(budget.admits());
        let q = Charge::try_new(&budget, 600, Room::Deliveries).unwrap();
        assert!(Charge::try_new(&budget, 1, Room::Deliveries).is_none());
        drop(q);
        drop(b1);
        assert_eq!((budget.used(), b.held()), (0, 0));
    }

    #[test]
    fn a_charge_moves_merges_shrinks_and_gives_back_when_dropped() {
        let budget = Arc::new(Budget::new(NonZeroUsize::new(8000)));
        let a = Account::new(Arc::clone(&budget));
        let mut write_side = a.nothing();
        let queued = a.charge(1000, Room::Deliveries).unwrap();
        let echo = a.charge(500, Room::Deliveries).unwrap();
        // What it is reading is in the read share: not held, not backlog.
        let reading = budget.reader(ReaderKey::User("a".into()), Box::new(|| {}));
        assert!(reading.try_charge(300));
        assert_eq!((budget.used(), a.held(), a.backlog()), (1500, 1500, 1500));
        assert_eq!(budget.counted(), 1800);
        // Moved to another owner (a thread, a queue), still counted; merged into one.
        let queued = std::thread::spawn(move || queued).join().unwrap();
        write_side.absorb(queued);
        write_side.absorb(echo);
        assert_eq!((write_side.bytes(), budget.used()), (1500, 1500));
        // Flushed: the buffer keeps 200 of capacity, owed to nobody.
        write_side.shrink_to(200);
        a.keeps(200);
        assert_eq!((budget.used(), a.held(), a.backlog()), (200, 200, 0));
        // The connection goes: its reader and its charges give back as they are dropped.
        drop(reading);
        drop(write_side);
        assert_eq!((budget.counted(), a.held()), (0, 0));
        // With the cap off a charge counts nothing.
        let off = Account::new(Arc::new(Budget::off()));
        let c = off.charge(usize::MAX / 2, Room::Deliveries).unwrap();
        assert_eq!((c.bytes(), off.held()), (0, 0));
    }

    #[test]
    fn a_drop_at_the_cap_refuses_new_connections_for_the_cooldown() {
        let budget = Budget::new(NonZeroUsize::new(1 << 20));
        assert!(budget.admits());
        budget.dropped(3);
        assert!(!budget.admits(), "just squeezed");
    }

    #[test]
    fn off_counts_nothing_and_refuses_nothing() {
        let budget = Arc::new(Budget::off());
        let a = Account::new(Arc::clone(&budget));
        let c1 = a.charge(usize::MAX / 2, Room::Deliveries).unwrap();
        let c2 = a.charge(usize::MAX / 2, Room::Deliveries).unwrap();
        assert!(Charge::try_new(&budget, usize::MAX / 2, Room::Deliveries).is_some());
        assert_eq!(
            (budget.used(), a.held(), c1.bytes() + c2.bytes()),
            (0, 0, 0)
        );
        assert!(budget.admits());
        assert_eq!(budget.cap(), None);
    }

    fn c(backlog: usize, frees: usize, needs: usize) -> Candidate {
        Candidate {
            backlog,
            frees,
            needs,
        }
    }

    #[test]
    fn drops_the_largest_backlogs_first_and_no_more_than_needed() {
        // Five subscribers each need 10; room for 20: a deficit of 30.
        let cands = [
            c(0, 0, 10),
            c(500, 400, 10),
            c(50, 50, 10),
            c(900, 20, 10),
            c(0, 0, 10),
        ];
        // The largest backlog (900) frees 20+10, which covers it.
        assert_eq!(choose_drops(&cands, 20), [3]);
        // With no room, 50 is missing: 900 (30), then 500 (410).
        assert_eq!(choose_drops(&cands, 0), [3, 1]);
        // Enough room: nobody.
        assert_eq!(choose_drops(&cands, 50), Vec::<usize>::new());
    }

    #[test]
    fn healthy_subscribers_go_only_when_the_backlogs_do_not_free_enough() {
        // Two healthy (no backlog) and one stalled whose backlog is all in its write buffer (it
        // frees nothing at once): the stalled goes first; then healthy ones, in order.
        let cands = [c(0, 0, 10), c(300, 0, 10), c(0, 0, 10)];
        assert_eq!(choose_drops(&cands, 20), [1]);
        assert_eq!(choose_drops(&cands, 10), [1, 0]);
        assert_eq!(choose_drops(&cands, 0), [1, 0, 2]);
        assert!(choose_drops(&[], 0).is_empty());
        // Members that hold nothing and need nothing this time are never dropped, even when
        // the rest cannot make the room.
        let cands = [c(0, 0, 0), c(100, 0, 10), c(0, 0, 0)];
        assert_eq!(choose_drops(&cands, 0), [1]);
    }

    /// A reader for `user` on `budget`, and how often the share woke it to close.
    fn reader(budget: &Arc<Budget>, user: &str) -> (Reader, Arc<AtomicUsize>) {
        let woken = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&woken);
        let wake = Box::new(move || {
            count.fetch_add(1, Ordering::Relaxed);
        });
        (budget.reader(ReaderKey::User(user.into()), wake), woken)
    }

    #[test]
    fn reading_has_its_own_share_which_takes_nothing_from_deliveries_or_admission() {
        // A cap of 8000: reading 1000 (a reader's part 500), deliveries 7000.
        let budget = Arc::new(Budget::new(NonZeroUsize::new(8000)));
        assert_eq!((budget.read_share(), budget.reader_part()), (1000, 500));
        let (a, _) = reader(&budget, "a");
        let (b, _) = reader(&budget, "b");
        assert!(a.try_charge(500) && b.try_charge(500));
        assert_eq!(budget.reading_used(), 1000);
        assert!(budget.admits(), "a full read share refuses no connection");
        let writes = Account::new(Arc::clone(&budget));
        let _w = writes.charge(7000, Room::Deliveries).unwrap();
        assert!(writes.charge(1, Room::Deliveries).is_none());
        assert_eq!(budget.counted(), 8000);
        // What is given back is what was held, no more.
        a.release(200);
        a.release(10_000);
        assert_eq!((a.held(), budget.reading_used()), (0, 500));
        drop(b);
        assert_eq!(budget.reading_used(), 0);
    }

    #[test]
    fn a_full_part_closes_the_readers_own_largest_connection() {
        let budget = Arc::new(Budget::new(NonZeroUsize::new(8000)));
        let (a1, a1_woken) = reader(&budget, "a");
        let (a2, _) = reader(&budget, "a");
        let (b, b_woken) = reader(&budget, "b");
        assert!(a1.try_charge(300) && a2.try_charge(150) && b.try_charge(400));
        // a's part (500) has no room for 100 more of a2's: a1 holds the most of a's, not b.
        assert!(a2.try_charge(100));
        assert!(a1.closed() && !a2.closed() && !b.closed());
        assert_eq!(a1_woken.load(Ordering::Relaxed), 1);
        assert_eq!(b_woken.load(Ordering::Relaxed), 0);
        assert_eq!((a1.held(), a2.held(), b.held()), (0, 250, 400));
        assert_eq!(budget.reading_used(), 650);
        assert!(!a1.try_charge(1), "a closed reader is refused from then on");
        // A connection that would hold the most itself is refused, and closes nobody.
        assert!(!a2.try_charge(300));
        assert!(!a2.closed(), "the caller closes it");
        assert_eq!((a2.held(), b.held()), (250, 400));
    }

    #[test]
    fn a_full_share_closes_whoever_holds_the_most_never_a_smaller_reader() {
        let budget = Arc::new(Budget::new(NonZeroUsize::new(8000)));
        let (a, _) = reader(&budget, "a");
        let (b, _) = reader(&budget, "b");
        let (c, _) = reader(&budget, "c");
        assert!(a.try_charge(450) && b.try_charge(400) && c.try_charge(100));
        // 50 left: an honest 120 closes the largest (a), not b or c.
        let (d, _) = reader(&budget, "d");
        assert!(d.try_charge(120));
        assert!(a.closed() && !b.closed() && !c.closed() && !d.closed());
        assert_eq!(budget.reading_used(), 620);
        // b asking for 500 more would hold the most (900 > its part): b is refused, no one else.
        assert!(!b.try_charge(500));
        assert!(!c.closed() && !d.closed());
        // Closed readers and dropped ones give their part back to their reader.
        drop(a);
        let (a_again, _) = reader(&budget, "a");
        assert!(a_again.try_charge(380));
        assert!(!b.closed() && !c.closed() && !d.closed());
    }

    #[test]
    fn reading_off_counts_nothing() {
        let budget = Arc::new(Budget::off());
        let (a, _) = reader(&budget, "a");
        assert!(a.try_charge(usize::MAX / 2));
        assert_eq!(
            (a.held(), budget.reading_used(), budget.counted()),
            (0, 0, 0)
        );
    }
}
