//! Per-connection rate limits: token buckets for messages and bytes per second. Owned by one
//! connection's loop (`&mut self`, no locking); time is passed in, so tests need no sleeping.
//!
//! Integer arithmetic: a bucket keeps whole tokens plus the fraction of a token earned but not
//! yet whole (in token-nanoseconds), so refills at any call frequency add up exactly to `rate`
//! per second — no rounding drift, however often or rarely it is asked.

use std::time::{Duration, Instant};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A token bucket: holds up to `capacity` tokens, refilled at `rate_per_sec`; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    capacity: u64,
    tokens: u64,
    /// Earned part of the next token, in token-nanoseconds (`< NANOS_PER_SEC`).
    frac: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate_per_sec == 0` means unlimited: every take succeeds. With a rate,
    /// a take larger than `capacity` never succeeds.
    #[must_use]
    pub fn new(rate_per_sec: u64, capacity: u64, now: Instant) -> Self {
        TokenBucket {
            rate: rate_per_sec,
            capacity,
            tokens: capacity,
            frac: 0,
            last: now,
        }
    }

    /// Whether this bucket limits nothing (`rate_per_sec == 0`).
    #[must_use]
    pub fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Adds what was earned since the last call, capped at `capacity`. A `now` earlier than one
    /// already seen adds nothing (the clock is treated as monotonic).
    fn refill(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.last) else {
            return;
        };
        self.last = now;
        if self.tokens >= self.capacity {
            self.frac = 0;
            return;
        }
        let earned = elapsed
            .as_nanos()
            .saturating_mul(u128::from(self.rate))
            .saturating_add(self.frac);
        let total = u128::from(self.tokens).saturating_add(earned / NANOS_PER_SEC);
        if total >= u128::from(self.capacity) {
            self.tokens = self.capacity;
            self.frac = 0;
        } else {
            // `total < capacity <= u64::MAX`.
            self.tokens = u64::try_from(total).unwrap_or(self.capacity);
            self.frac = earned % NANOS_PER_SEC;
        }
    }

    fn has(&self, amount: u64) -> bool {
        self.is_unlimited() || self.tokens >= amount
    }

    fn take(&mut self, amount: u64) {
        if !self.is_unlimited() {
            self.tokens -= amount;
        }
    }

    /// Takes `amount` tokens if there are that many (after refilling to `now`); false, taking
    /// nothing, otherwise.
    pub fn try_take(&mut self, amount: u64, now: Instant) -> bool {
        self.refill(now);
        let ok = self.has(amount);
        if ok {
            self.take(amount);
        }
        ok
    }

    /// How long until `amount` tokens are there: zero if they are now, `None` if never
    /// (`amount > capacity`). For pausing reads instead of refusing.
    pub fn wait_for(&mut self, amount: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        if self.has(amount) {
            return Some(Duration::ZERO);
        }
        if amount > self.capacity {
            return None;
        }
        let missing = u128::from(amount - self.tokens) * NANOS_PER_SEC - self.frac;
        let rate = u128::from(self.rate);
        let nanos = missing.div_ceil(rate);
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }
}

/// A connection's incoming-message limits: messages per second and bytes per second, each a
/// bucket holding one second's worth (the largest burst). 0 turns either limit off.
///
/// With a byte limit, a single message larger than `max_bytes_per_sec` is never allowed, so keep
/// `max_bytes_per_sec` at least the largest message size (a config-time rule).
#[derive(Debug, Clone)]
pub struct MessageLimiter {
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl MessageLimiter {
    #[must_use]
    pub fn new(max_messages_per_sec: u32, max_bytes_per_sec: u64, now: Instant) -> Self {
        let m = u64::from(max_messages_per_sec);
        MessageLimiter {
            messages: TokenBucket::new(m, m, now),
            bytes: TokenBucket::new(max_bytes_per_sec, max_bytes_per_sec, now),
        }
    }

    /// Whether neither limit is set.
    #[must_use]
    pub fn is_unlimited(&self) -> bool {
        self.messages.is_unlimited() && self.bytes.is_unlimited()
    }

    /// Counts one message of `bytes` bytes if both limits have room for it; otherwise takes
    /// nothing from either and returns false.
    pub fn allow(&mut self, bytes: usize, now: Instant) -> bool {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.messages.refill(now);
        self.bytes.refill(now);
        let ok = self.messages.has(1) && self.bytes.has(bytes);
        if ok {
            self.messages.take(1);
            self.bytes.take(bytes);
        }
        ok
    }

    /// How long until a message of `bytes` bytes would be allowed: zero if now, `None` if never.
    pub fn wait_for(&mut self, bytes: usize, now: Instant) -> Option<Duration> {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let m = self.messages.wait_for(1, now)?;
        let b = self.bytes.wait_for(bytes, now)?;
        Some(m.max(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_up_to_capacity_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        for _ in 0..5 {
            assert!(b.try_take(1, t0));
        }
        assert!(!b.try_take(1, t0));
        assert_eq!(b.wait_for(1, t0), Some(ms(100)));
        assert!(!b.try_take(1, t0 + ms(99)));
        assert!(b.try_take(1, t0 + ms(100)));
        assert!(!b.try_take(1, t0 + ms(100)));
        // A long pause refills to capacity only.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.try_take(5, later));
        assert!(!b.try_take(1, later));
        // Larger than capacity: never.
        assert!(!b.try_take(6, later + Duration::from_secs(3600)));
        assert_eq!(b.wait_for(6, later), None);
        // A failed take takes nothing.
        let mut c = TokenBucket::new(10, 5, t0);
        assert!(!c.try_take(6, t0));
        assert!(c.try_take(5, t0));
    }

    #[test]
    fn no_drift_from_frequent_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(7, 100, t0);
        assert!(b.try_take(100, t0));
        // 1000 steps of 1 ms, each worth 0.007 tokens: exactly 7 after one second.
        let mut now = t0;
        let mut got = 0;
        for _ in 0..1000 {
            now += ms(1);
            if b.try_take(1, now) {
                got += 1;
            }
        }
        assert_eq!(got, 7);
        assert!(!b.try_take(1, now));
        // A third of a second at 3/s is exactly one token, not 0.999...
        let mut c = TokenBucket::new(3, 3, t0);
        assert!(c.try_take(3, t0));
        let third = Duration::from_nanos(333_333_334);
        assert!(c.try_take(1, t0 + third));
        // A clock going backwards adds nothing.
        assert!(!c.try_take(1, t0));
    }

    #[test]
    fn unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, 0, t0);
        assert!(b.is_unlimited());
        for _ in 0..1000 {
            assert!(b.try_take(u64::MAX, t0));
        }
        assert_eq!(b.wait_for(u64::MAX, t0), Some(Duration::ZERO));
        let mut m = MessageLimiter::new(0, 0, t0);
        assert!(m.is_unlimited());
        for _ in 0..1000 {
            assert!(m.allow(usize::MAX, t0));
        }
    }

    #[test]
    fn message_count_limit() {
        let t0 = Instant::now();
        let mut m = MessageLimiter::new(3, 0, t0);
        assert!(!m.is_unlimited());
        for _ in 0..3 {
            assert!(m.allow(1_000_000, t0));
        }
        assert!(!m.allow(1, t0));
        assert_eq!(m.wait_for(1, t0), Some(Duration::from_nanos(333_333_334)));
        assert!(m.allow(1, t0 + Duration::from_nanos(333_333_334)));
    }

    #[test]
    fn byte_limit_and_both_limits() {
        let t0 = Instant::now();
        let mut m = MessageLimiter::new(0, 1000, t0);
        assert!(m.allow(600, t0));
        assert!(!m.allow(600, t0));
        assert!(m.allow(400, t0));
        assert!(!m.allow(1, t0));
        assert!(m.allow(100, t0 + ms(100)));
        assert!(!m.allow(1001, t0 + Duration::from_secs(10)));
        assert_eq!(m.wait_for(1001, t0), None);

        // Both: the byte refusal must not consume a message token, and vice versa.
        let mut m = MessageLimiter::new(2, 1000, t0);
        assert!(!m.allow(2000, t0));
        assert!(m.allow(10, t0));
        assert!(m.allow(10, t0));
        // Out of messages with bytes to spare: refused, and no bytes taken.
        assert!(!m.allow(10, t0));
        assert!(m.allow(980, t0 + ms(500)));
        // 500 ms gave one message back and refilled the bytes to their cap (1000); 20 remain
        // but no message: refused until the next message token, 500 ms later.
        assert!(!m.allow(1, t0 + ms(500)));
        assert_eq!(m.wait_for(1, t0 + ms(500)), Some(ms(500)));
        // By then: one message, and 20 + 500 bytes.
        assert!(!m.allow(521, t0 + ms(1000)));
        assert!(m.allow(520, t0 + ms(1000)));
    }
}
