//! The refusal log: one line per refused upgrade, at most [`REFUSAL_LINES_PER_SEC`] a second per
//! server, the rest counted and their count logged later.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::pipeline::ratelimit::TokenBucket;
use crate::policy::Reason;

/// Refusal lines logged per second at most (and as a burst); a flood of bad requests must not
/// fill the disk or the journal. The rest are counted, and the count is logged with the next line
/// that gets through, or after [`REFUSAL_QUIET`] without refusals, whichever comes first.
const REFUSAL_LINES_PER_SEC: u64 = 20;
/// How long after the last suppressed refusal its count is logged if no refusal line follows.
const REFUSAL_QUIET: Duration = Duration::from_secs(1);

/// The refusal log's rate limit and what it has left out.
struct RefusalBudget {
    bucket: TokenBucket,
    suppressed: u64,
    last_suppressed: Instant,
    /// A thread waits for a quiet second to log the count.
    flusher: bool,
}

/// A server's refusal log: its own rate limit and count of lines left out (each `Server` has
/// one, so two servers in a process do not share a budget).
pub(super) struct RefusalLog(Arc<Mutex<RefusalBudget>>);

impl RefusalLog {
    pub(super) fn new() -> RefusalLog {
        let now = Instant::now();
        RefusalLog(Arc::new(Mutex::new(RefusalBudget {
            bucket: TokenBucket::new(REFUSAL_LINES_PER_SEC, REFUSAL_LINES_PER_SEC, now),
            suppressed: 0,
            last_suppressed: now,
            flusher: false,
        })))
    }
}

fn log_suppressed(n: u64) {
    log::warn!(
        "{n} refusal lines suppressed (more than {REFUSAL_LINES_PER_SEC} a second); see \
         wsgate_connections_total in /metrics for every outcome"
    );
}

/// The flusher: once [`REFUSAL_QUIET`] has passed since the last suppressed refusal, logs their
/// count (unless a refusal line has done it meanwhile), then ends.
fn flush_suppressed_when_quiet(budget: &Mutex<RefusalBudget>) {
    loop {
        std::thread::sleep(REFUSAL_QUIET);
        let mut budget = budget.lock().unwrap_or_else(PoisonError::into_inner);
        if budget.suppressed > 0 && budget.last_suppressed.elapsed() < REFUSAL_QUIET {
            continue;
        }
        budget.flusher = false;
        let n = std::mem::take(&mut budget.suppressed);
        drop(budget);
        if n > 0 {
            log_suppressed(n);
        }
        return;
    }
}

/// One line per refused upgrade, at most `REFUSAL_LINES_PER_SEC` a second. Credential failures
/// are at warn, in a fixed form fail2ban can match:
/// `auth failed: user="NAME" peer=IP:PORT reason=REASON`. Never a password.
impl RefusalLog {
    pub(super) fn log(&self, peer: SocketAddr, reason: &Reason) {
        if matches!(reason, Reason::MemoryFull) {
            return; // one line per interval, with counts (`memory::Budget::refused`)
        }
        let now = Instant::now();
        let suppressed = {
            let mut budget = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if !budget.bucket.try_take(1, now) {
                budget.suppressed += 1;
                budget.last_suppressed = now;
                if !budget.flusher {
                    let spawned = std::thread::Builder::new()
                        .name("wsgate-logflush".into())
                        .stack_size(64 * 1024)
                        .spawn({
                            let budget = Arc::clone(&self.0);
                            move || flush_suppressed_when_quiet(&budget)
                        });
                    // Without the thread the count waits for the next refusal line, as it may.
                    budget.flusher = spawned.is_ok();
                }
                return;
            }
            std::mem::take(&mut budget.suppressed)
        };
        if suppressed > 0 {
            log_suppressed(suppressed);
        }
        let status = reason.status().as_u16();
        match reason {
            // Throttled guesses were logged when the limit was crossed; plain HTTP requests are
            // browsers and scanners, which would flood the log at info.
            Reason::Throttled { .. } | Reason::PlainHttp => {
                log::debug!("refused peer={peer} status={status} reason={reason}");
            }
            Reason::BadCredentials { user, .. } => {
                log::warn!(
                    "auth failed: user=\"{user}\" peer={peer} reason={reason} status={status}"
                );
            }
            Reason::NoCredentials | Reason::UnknownPath | Reason::ShuttingDown => {
                log::info!("refused peer={peer} status={status} reason={reason}");
            }
            _ => log::warn!("refused peer={peer} status={status} reason={reason}"),
        }
    }
}
