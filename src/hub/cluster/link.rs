//! What the two links do alike: each link's up/down state with its once-per-change log lines
//! and capped exponential backoff ([`Watch`]), and opening a Redis connection under the health
//! deadline ([`connect`]). The state both threads share is the bridge's [`Context`].

use std::fmt;
use std::time::{Duration, Instant};

use super::Context;
use crate::config::MIN_BACKOFF;
use crate::ops::metrics::Counter;

#[derive(Debug, Clone, Copy)]
pub(super) enum Link {
    Publisher,
    Subscriber,
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Link::Publisher => "publisher",
            Link::Subscriber => "subscriber",
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

/// One link's state, so each change is logged once and retries are not.
pub(super) struct Watch {
    link: Link,
    /// Since when the link is down, and the not-forwarded count then; `None` while up (or
    /// before the first attempt).
    down_since: Option<(Instant, u64)>,
    ever_up: bool,
    backoff: Duration,
}

impl Watch {
    pub(super) fn new(link: Link) -> Watch {
        Watch {
            link,
            down_since: None,
            ever_up: false,
            backoff: MIN_BACKOFF,
        }
    }

    /// Records that the link is up; `detail` ends the log line.
    pub(super) fn up(&mut self, ctx: &Context, detail: &str) {
        let (link, url) = (self.link, &ctx.url);
        match (self.ever_up, self.down_since) {
            (false, _) => log::info!("cluster: {link} connected to {url}{detail}"),
            (true, Some((since, not_forwarded))) => {
                let out = since.elapsed().as_secs_f64();
                match link {
                    Link::Publisher => log::info!(
                        "cluster: {link} reconnected to {url} after {out:.1}s out; {} \
                         broadcasts of this instance not forwarded meanwhile{detail}",
                        ctx.metrics.count(Counter::ClusterNotForwarded) - not_forwarded,
                    ),
                    Link::Subscriber => log::info!(
                        "cluster: {link} reconnected to {url} after {out:.1}s out{detail}"
                    ),
                }
            }
            (true, None) => {}
        }
        self.ever_up = true;
        self.down_since = None;
        self.backoff = MIN_BACKOFF;
        ctx.set_up(self.link, true);
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub(super) fn down(&mut self, ctx: &Context, why: &redis::RedisError) -> Duration {
        let (link, url, cap) = (self.link, &ctx.url, ctx.max_backoff);
        if self.down_since.is_none() {
            self.down_since = Some((
                Instant::now(),
                ctx.metrics.count(Counter::ClusterNotForwarded),
            ));
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
        ctx.set_up(self.link, false);
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
    let named = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(format!("wsgate-{link}:{}", ctx.instance_id))
        .exec(&mut con);
    match named {
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e),
        Err(e) => {
            log::debug!("cluster: {link} cannot name its connection: {e}");
            Ok(con)
        }
        Ok(()) => Ok(con),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::super::{new_epoch, stream_key};
    use super::*;
    use crate::config::RedisUrl;
    use crate::hub::Hub;
    use crate::ops::metrics::Metrics;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let hub = Hub::new(Arc::new(Metrics::new(["/c"])));
        let (_stop, stop) = crossbeam_channel::bounded(0);
        let ctx = Context {
            url: test_url(),
            instance_id: "i".into(),
            epoch: new_epoch(),
            stream: stream_key("wsgate:"),
            publish_queue: 1,
            stream_length: 1,
            max_backoff: Duration::from_millis(500),
            health_check: Duration::from_secs(1),
            health_timeout: Duration::from_secs(2),
            metrics: Arc::new(Metrics::new(["/c"])),
            hub,
            accepts: Arc::new(|_: &str| true),
            publisher_up: AtomicBool::new(false),
            subscriber_up: AtomicBool::new(false),
            stop,
        };
        let mut w = Watch::new(Link::Publisher);
        let err = redis::RedisError::from(std::io::Error::other("down"));
        let delays: Vec<u128> = (0..5).map(|_| w.down(&ctx, &err).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        w.up(&ctx, "");
        assert_eq!(w.down(&ctx, &err).as_millis(), 100);
        assert!(ctx.sleep(Duration::from_millis(1)));
        assert_eq!(ctx.stream, "wsgate:broadcasts");
    }

    fn test_url() -> RedisUrl {
        RedisUrl::parse("redis://:pw@127.0.0.1:1/").unwrap()
    }
}
