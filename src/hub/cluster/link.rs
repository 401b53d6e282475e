//! What the two links do alike: each link's up/down state with its once-per-change log lines
//! and capped exponential backoff ([`Watch`]), opening a Redis connection under the health
//! deadline ([`connect`]), and a call whose read an EINTR interrupted ([`query`]): a stopped and
//! continued process (SIGSTOP, SIGCONT) is no lost link. The state both threads share is the
//! bridge's [`Context`].

use std::fmt;
use std::time::{Duration, Instant};

use redis::Value;

use super::Context;
use crate::config::MIN_BACKOFF;
use crate::ops::metrics::Counter;

#[derive(Debug, Clone, Copy)]
pub(super) enum Link {
    Publisher,
    Subscriber,
    /// The joins' reads of the history kept in Redis.
    History,
    /// Who is subscribed on each instance.
    Presence,
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Link::Publisher => "publisher",
            Link::Subscriber => "subscriber",
            Link::History => "history",
            Link::Presence => "presence",
        })
    }
}

/// Why a link went down, as a log line says it.
fn reason(e: &redis::RedisError, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {timeout:?} (frozen or unreachable?)")
    } else {
        e.to_string()
    }
}

/// At most one "not forwarded" line per this long while the publisher link is up; the rest are
/// summed into the next one.
const DROPS_LOG_EVERY: Duration = Duration::from_secs(10);
/// Most interrupted reads one call takes before it counts as failed.
pub(super) const MAX_INTERRUPTS: usize = 16;

/// One link's state, so each change is logged once and retries are not.
pub(super) struct Watch {
    link: Link,
    /// Since when the link is down; `None` while up (or before the first attempt).
    down_since: Option<Instant>,
    ever_up: bool,
    backoff: Duration,
    /// The not-forwarded count as of the last line that reported it: every broadcast the
    /// counter counts is in exactly one log line (the reconnect, or a line while up).
    reported: u64,
    /// When the last line while up reported drops.
    drops_logged_at: Option<Instant>,
}

impl Watch {
    pub(super) fn new(link: Link) -> Watch {
        Watch {
            link,
            down_since: None,
            ever_up: false,
            backoff: MIN_BACKOFF,
            reported: 0,
            drops_logged_at: None,
        }
    }

    /// Broadcasts counted as not forwarded since the last line that said so; marks them said.
    fn unreported(&mut self, ctx: &Context) -> u64 {
        let now = ctx.metrics.count(Counter::ClusterNotForwarded);
        let n = now.saturating_sub(self.reported);
        self.reported = now;
        n
    }

    /// While the publisher link is up: one line (at most every [`DROPS_LOG_EVERY`]) for the
    /// broadcasts not forwarded since the last line, dropped at a full queue or the memory cap.
    pub(super) fn report_drops(&mut self, ctx: &Context) {
        if ctx.metrics.count(Counter::ClusterNotForwarded) == self.reported
            || self
                .drops_logged_at
                .is_some_and(|t| t.elapsed() < DROPS_LOG_EVERY)
        {
            return;
        }
        self.drops_logged_at = Some(Instant::now());
        let n = self.unreported(ctx);
        log::warn!(
            "cluster: {n} broadcasts of this instance not forwarded (the publish queue was full \
             or the memory cap reached); the newest are kept"
        );
    }

    /// Records that the link is up; `detail` ends the log line.
    pub(super) fn up(&mut self, ctx: &Context, detail: &str) {
        // The state first: whoever reads the log line finds `/healthz` saying it too.
        ctx.set_up(self.link, true);
        let (link, url) = (self.link, &ctx.url);
        // Only the publisher forwards: its lines account for every broadcast not forwarded.
        let dropped = match (link, self.unreported(ctx)) {
            (Link::Subscriber, _) | (Link::Publisher, 0) if !self.ever_up => String::new(),
            (Link::Subscriber | Link::History | Link::Presence, _) => String::new(),
            (Link::Publisher, n) => {
                format!("; {n} broadcasts of this instance not forwarded meanwhile")
            }
        };
        match (self.ever_up, self.down_since) {
            (false, _) => log::info!("cluster: {link} connected to {url}{dropped}{detail}"),
            (true, Some(since)) => {
                let out = since.elapsed().as_secs_f64();
                log::info!(
                    "cluster: {link} reconnected to {url} after {out:.1}s out{dropped}{detail}"
                );
            }
            (true, None) => {}
        }
        self.ever_up = true;
        self.down_since = None;
        self.backoff = MIN_BACKOFF;
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub(super) fn down(&mut self, ctx: &Context, why: &redis::RedisError) -> Duration {
        ctx.set_up(self.link, false);
        let (link, url, cap) = (self.link, &ctx.url, ctx.max_backoff);
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            let why = reason(why, ctx.health_timeout);
            if self.ever_up {
                log::warn!(
                    "cluster: {link} lost {url}: {why}; local delivery continues, retrying \
                     (backoff up to {cap:?})"
                );
            } else {
                log::warn!(
                    "cluster: {link} cannot reach {url}: {why}; serving locally, retrying \
                     (backoff up to {cap:?})"
                );
            }
        } else {
            log::debug!("cluster: {link} still cannot reach {url}: {why}");
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(cap);
        delay
    }
}

/// Opens one link: connect and set up within `health_timeout`, every later call under the same
/// deadline, and the connection named (`CLIENT SETNAME wsgate-<link>:<instance>`) so that
/// `CLIENT LIST` shows whose it is. A Redis user not allowed to name itself is not a fault.
pub(super) fn connect(
    ctx: &Context,
    client: &redis::Client,
    link: Link,
) -> redis::RedisResult<redis::Connection> {
    let mut con = client.get_connection_with_timeout(ctx.health_timeout)?;
    con.set_write_timeout(Some(ctx.health_timeout))?;
    con.set_read_timeout(Some(ctx.health_timeout))?;
    let mut name = redis::cmd("CLIENT");
    name.arg("SETNAME")
        .arg(connection_name(link, &ctx.instance_id));
    match query(&mut con, &name) {
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e),
        Err(e) => {
            log::debug!("cluster: {link} cannot name its connection: {e}");
            Ok(con)
        }
        Ok(_) => Ok(con),
    }
}

/// The name a link's connection carries in `CLIENT LIST`.
pub(super) fn connection_name(link: Link, instance_id: &str) -> String {
    format!("wsgate-{link}:{instance_id}")
}

/// Sends `cmd` and reads its reply, each read within the connection's read timeout; a reply
/// that is an error is returned as the error. For commands that may run twice (reads, `PING`,
/// `CLIENT SETNAME`): a read interrupted by a signal (EINTR, as after SIGSTOP and SIGCONT of
/// this process) sends `cmd` again, because the redis crate skips the next reply it reads after
/// any failed read, and the second reply stands in for the first.
pub(super) fn query(con: &mut redis::Connection, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
    let packed = cmd.get_packed_command();
    con.send_packed_command(&packed)?;
    let mut interrupts = 0;
    loop {
        match con.recv_response() {
            Ok(Value::ServerError(e)) => return Err(e.into()),
            Ok(reply) => return Ok(reply),
            Err(e) if interrupted(&e) && interrupts < MAX_INTERRUPTS => {
                interrupts += 1;
                con.send_packed_command(&packed)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a failed Redis read was interrupted by a signal (EINTR). The redis crate keeps its
/// I/O error's kind to itself and shows the error's own text, so the text is compared.
pub(super) fn interrupted(e: &redis::RedisError) -> bool {
    e.is_io_error() && e.to_string() == std::io::Error::from(rustix::io::Errno::INTR).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let (ctx, _stop) = super::super::test_context();
        let mut w = Watch::new(Link::Publisher);
        let err = redis::RedisError::from(std::io::Error::other("down"));
        let delays: Vec<u128> = (0..5).map(|_| w.down(&ctx, &err).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        w.up(&ctx, "");
        assert_eq!(w.down(&ctx, &err).as_millis(), 100);
        assert!(ctx.sleep(Duration::from_millis(1)));
        assert_eq!(ctx.stream, "wsgate:broadcasts");
        // Each link writes its own flag; the backbone is up when a reader finds both up,
        // whichever link wrote last.
        ctx.set_up(Link::Subscriber, true);
        assert!(!ctx.links.state().connected);
        ctx.set_up(Link::Publisher, true);
        assert!(ctx.links.state().connected);
    }

    #[test]
    fn every_broadcast_not_forwarded_is_reported_in_exactly_one_line() {
        let (ctx, _stop) = super::super::test_context();
        let mut w = Watch::new(Link::Publisher);
        w.up(&ctx, "");
        ctx.metrics.bump(Counter::ClusterNotForwarded, 3);
        w.report_drops(&ctx);
        assert_eq!(w.reported, 3, "a line while up");
        ctx.metrics.bump(Counter::ClusterNotForwarded, 2);
        w.report_drops(&ctx);
        assert_eq!(w.reported, 3, "within 10s: left for the next line");
        let err = redis::RedisError::from(std::io::Error::other("down"));
        w.down(&ctx, &err);
        ctx.metrics.bump(Counter::ClusterNotForwarded, 4);
        w.up(&ctx, "");
        assert_eq!(w.reported, 9, "the reconnect line says the rest");
    }

    #[test]
    fn only_an_eintr_is_an_interrupted_read() {
        let io = |e: std::io::Error| redis::RedisError::from(e);
        assert!(interrupted(&io(rustix::io::Errno::INTR.into())));
        assert!(!interrupted(&io(std::io::ErrorKind::TimedOut.into())));
        assert!(!interrupted(&io(rustix::io::Errno::CONNRESET.into())));
    }
}
