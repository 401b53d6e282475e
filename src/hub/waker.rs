//! The eventfd [`Waker`]: how one thread wakes another's `poll` without a pipe or a signal. The
//! hub wakes a member's connection with it, and the listener and the admin listener are stopped
//! through one.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::event::{EventfdFlags, eventfd};

/// Wakes one connection's `poll` from another thread: an eventfd, written at most once between
/// two [`Waker::reset`]s (wake-ups coalesce, so a burst of messages costs one syscall).
pub struct Waker {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl Waker {
    /// # Errors
    /// The `eventfd` error (e.g. out of file descriptors).
    pub fn new() -> io::Result<Waker> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Waker {
            fd,
            pending: AtomicBool::new(false),
        })
    }

    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // Cannot fail short of a counter overflow at 2^64-1, which coalescing rules out.
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }

    /// Clears the wake-up. Call before draining what the wake-up announced, so that a message
    /// pushed after the drain wakes the connection again. The counter is read before `pending`
    /// is cleared: the other order could consume a wake-up written after the clear, leaving
    /// `pending` set with nothing to wake the next `poll` — a lost wake-up under load.
    ///
    /// Without a pending wake-up there is nothing to read (no syscall). When `pending` is set but
    /// the waker has not written yet, the read finds nothing and `pending` stays set: the write
    /// still comes, and the `poll` it wakes resets properly.
    pub fn reset(&self) {
        if !self.pending.load(Ordering::Acquire) {
            return;
        }
        let mut buf = [0u8; 8];
        if rustix::io::read(&self.fd, &mut buf).is_ok() {
            self.pending.store(false, Ordering::Release);
        }
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(waker: &Waker) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            waker,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec::default();
        rustix::event::poll(&mut fds, Some(&zero)).unwrap() == 1
    }

    #[test]
    fn waker_coalesces_and_reset_clears() {
        let w = Waker::new().unwrap();
        assert!(!readable(&w));
        w.wake();
        w.wake();
        assert!(readable(&w));
        w.reset();
        assert!(!readable(&w));
        assert!(!w.pending.load(Ordering::Acquire));
        w.wake();
        assert!(readable(&w), "a wake after a reset must write again");
    }

    #[test]
    fn reset_before_the_wakers_write_keeps_the_wake_up_pending() {
        let w = Waker::new().unwrap();
        // A waker has claimed the wake-up but not written yet.
        w.pending.store(true, Ordering::Release);
        w.reset();
        assert!(
            w.pending.load(Ordering::Acquire),
            "cleared with a write still to come"
        );
        // Its write lands: the next poll wakes, and that reset clears it.
        rustix::io::write(&w.fd, &1u64.to_ne_bytes()).unwrap();
        assert!(readable(&w));
        w.reset();
        assert!(!readable(&w));
        assert!(!w.pending.load(Ordering::Acquire));
    }
}
