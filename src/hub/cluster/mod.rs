//! The cluster bridge: carries broadcasts between wsgate instances through one capped Redis
//! Stream, so a subscriber on any instance gets what is published on any other, and a link that
//! drops resumes where it left off. Four threads (publisher, subscriber, history, presence), one
//! Redis connection each; it never runs on a connection thread and never makes one wait.
//!
//! - The **publish queue** ([`Outlet`], [`queue`]) holds at most `publish_queue` broadcasts
//!   waiting for Redis, one list for the hub and the publisher; a new one at a full queue drops
//!   the oldest (counted), so the newest are kept however long Redis is away.
//! - The **publisher** takes batches from the queue's front and sends
//!   `XADD <prefix>broadcasts MAXLEN ~ <stream_length> * p <path> m <envelope>`, pipelining up
//!   to [`BATCH`](publisher::BATCH). A batch Redis did not acknowledge goes back to the queue's
//!   front, so what was in flight when the link failed is sent again on reconnect.
//! - The **subscriber** reads with `XREAD BLOCK` after the last entry id it has seen (kept across
//!   reconnects) and hands each message of *another* process to [`Hub::deliver`]; this process's
//!   own (its instance id and epoch) are skipped, as the hub already delivered them locally;
//!   but not a broadcast kept in Redis (a channel with a history), which every instance, this
//!   one too, delivers from the stream in the order of its positions ([`kept`]).
//! - The **history thread** answers the joins' reads of the history kept in Redis, each under
//!   a deadline ([`Store`]).
//! - The **presence thread** keeps this process's subscribers in Redis and reads the other
//!   instances' ([`presence`]); the join and leave notices travel on the backbone as entries
//!   of their own kind.
//!
//! Every link is health-checked, so a dead or frozen Redis is noticed within `health_check +
//! health_timeout` whether this instance publishes or not: every call has `health_timeout` to
//! answer, an idle publisher sends `PING` after `health_check` without an answer, and the
//! subscriber's `XREAD` blocks for [`POLL`](subscriber::POLL) only. A read interrupted by a
//! signal (EINTR: SIGSTOP and SIGCONT of this process) is retried, never a lost link. A link
//! found down is logged once (lost: reason), retried with a capped exponential backoff, and
//! logged once more when it is back (how long it was out, how many broadcasts were not
//! forwarded); each link records only its own state ([`ClusterLinks`]), and
//! `wsgate_cluster_connected` and `/healthz` read both when asked. Meanwhile the hub keeps
//! serving locally.
//!
//! No duplicates, per-publisher order: an entry sent again (its first `XADD` may have landed
//! before the link failed) carries the same sequence number, and the subscriber drops anything
//! at or below the last number it delivered from that publisher process. A jump in the numbers
//! is a loss the stream could not prevent (trimmed away, or Redis restarted without
//! persistence): counted (`wsgate_cluster_lost_total`) and logged.
//!
//! Instance ids are meant to be unique. Another process with this one's id is detected two ways:
//! its entries in the stream (same id, another epoch) and its subscriber connection in
//! `CLIENT LIST` (same name, checked every [`CLIENT_LIST_EVERY`](subscriber::CLIENT_LIST_EVERY)).
//! It is reported (one warning, `wsgate_cluster_id_clash` 1, a line in `/healthz`) until no
//! sign of it is seen for [`CLASH_CLEAR`](subscriber::CLASH_CLEAR) (one line again); its
//! broadcasts are delivered all the same, as those of any other process.
//!
//! The envelope (an entry's `m` field) is binary: `[version = 2][id length: u8][instance id]
//! [epoch: u64 BE][sequence: u64 BE][kind: 0 text | 1 binary | 2 disconnect | 3 join | 4 leave][bytes]`; the epoch
//! is random per process, so a restarted publisher with the same id starts a new sequence. A
//! disconnect (an admin's `POST /disconnect`) carries its filter as a query string
//! (`user=alice&path=%2Fchat`) and travels in the same sequence as broadcasts, so it is resent,
//! deduplicated and ordered like them; every other instance ends its matching connections. A
//! presence notice (who, in `f`, joined or left the entry's path) has a sequence of its own, so
//! an older instance, which ignores its kind, sees no gap in the broadcasts.
//!
//! This file starts and stops the bridge; [`queue`] is the publish queue, [`publisher`] and
//! [`subscriber`] the two links, [`kept`] the history kept in Redis, [`presence`] who is
//! subscribed on each instance, [`link`] what they share (health, backoff, the connection,
//! interrupted reads), [`wire`] the envelope and the stream replies.

mod kept;
mod link;
mod presence;
mod publisher;
mod queue;
mod subscriber;
mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

pub use self::kept::Store;
use self::link::Link;
pub use self::queue::Outlet;
use crate::config::{ClusterConfig, RedisUrl};
use crate::hub::Hub;
use crate::ops::metrics::{ClusterLinks, Metrics};

/// How long [`Bridge::stop`] waits for the threads (one may be inside a Redis call).
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Decides whether a path received from Redis may be delivered here (a broadcast channel of the
/// current configuration serves it).
pub type Accepts = dyn Fn(&str) -> bool + Send + Sync;

/// The running bridge; [`Bridge::stop`] ends it.
pub struct Bridge {
    /// Never sent on: dropping it disconnects the channel, which both threads watch.
    stop: Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

impl Bridge {
    /// Starts the bridge if `config` names a Redis server, attaching its queue to `hub`; `None`
    /// for a purely local hub. Returns at once: connecting happens on the bridge's threads.
    ///
    /// # Errors
    /// The thread could not be spawned, or the URL is refused by the redis crate (config
    /// validation makes that unlikely); the message never contains the password.
    pub fn start(
        config: &ClusterConfig,
        hub: &Arc<Hub>,
        metrics: &Arc<Metrics>,
        accepts: Arc<Accepts>,
    ) -> std::io::Result<Option<Bridge>> {
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        let client = redis::Client::open(url.secret())
            .map_err(|e| std::io::Error::other(format!("[cluster] redis_url {url}: {e}")))?;
        let (outlet, queue) = Outlet::new(config.publish_queue.get(), Arc::clone(metrics));
        let links = Arc::new(ClusterLinks::default());
        let (stop, stop_rx) = crossbeam_channel::bounded(0);
        let ctx = Arc::new(Context {
            url: url.clone(),
            instance_id: config.instance_id.clone(),
            epoch: new_epoch(),
            stream: stream_key(&config.channel_prefix),
            prefix: config.channel_prefix.clone(),
            publish_queue: config.publish_queue.get(),
            stream_length: config.stream_length.get(),
            max_backoff: config.max_backoff,
            health_check: config.health_check,
            health_timeout: config.health_timeout,
            hub: Arc::clone(hub),
            metrics: Arc::clone(metrics),
            accepts,
            links: Arc::clone(&links),
            stop: stop_rx,
        });
        log::info!(
            "cluster: instance `{}` joins the backbone at {url} (stream `{}` of about {} \
             entries, publish queue {}, a dead link noticed within {:?})",
            ctx.instance_id,
            ctx.stream,
            ctx.stream_length,
            ctx.publish_queue,
            ctx.health_check + ctx.health_timeout,
        );
        metrics.attach_cluster(links);
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .stack_size(256 * 1024)
                .spawn(run)
        };
        let (c, p) = (Arc::clone(&ctx), client.clone());
        let publisher = spawn(
            "wsgate-cluster-pub",
            Box::new(move || publisher::run(&c, &p, &queue)),
        )?;
        let (store, serve) = Store::new(Arc::clone(&ctx), client.clone());
        let history = spawn("wsgate-cluster-history", Box::new(serve))?;
        hub.set_store(Arc::new(store));
        let (presences, serve) = presence::Presences::new(Arc::clone(&ctx), client.clone());
        let presence = spawn("wsgate-cluster-presence", Box::new(serve))?;
        hub.set_presence(presences);
        let (c, s) = (Arc::clone(&ctx), client);
        let subscriber = spawn(
            "wsgate-cluster-sub",
            Box::new(move || subscriber::run(&c, &s)),
        )?;
        hub.set_outlet(outlet);
        Ok(Some(Bridge {
            stop,
            threads: vec![publisher, subscriber, history, presence],
        }))
    }

    /// Stops both threads: closes the stop channel and waits a moment for them (a thread inside
    /// a Redis call finishes it first, within its deadline; after [`STOP_WAIT`] it is left to end
    /// with the process).
    pub fn stop(self) {
        drop(self.stop);
        let until = Instant::now() + STOP_WAIT;
        while self.threads.iter().any(|t| !t.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        for t in self.threads {
            if t.is_finished() && t.join().is_err() {
                log::error!("cluster: a bridge thread panicked");
            }
        }
    }
}

/// The Redis key of the backbone's stream.
fn stream_key(prefix: &str) -> String {
    format!("{prefix}broadcasts")
}

/// A random number naming this process's sequence of envelopes.
fn new_epoch() -> u64 {
    ring::rand::generate::<[u8; 8]>(&ring::rand::SystemRandom::new()).map_or_else(
        // No randomness: the clock still tells two runs of one instance apart.
        |_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        },
        |r| u64::from_be_bytes(r.expose()),
    )
}

/// What both threads share.
struct Context {
    url: RedisUrl,
    instance_id: String,
    epoch: u64,
    stream: String,
    /// `channel_prefix`: the history's keys begin with it (see [`kept`]).
    prefix: String,
    publish_queue: usize,
    stream_length: usize,
    max_backoff: Duration,
    health_check: Duration,
    health_timeout: Duration,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    accepts: Arc<Accepts>,
    /// Each link's own state, and the id clash; read by `/metrics` and `/healthz`.
    links: Arc<ClusterLinks>,
    /// Disconnected when the bridge stops.
    stop: Receiver<()>,
}

impl Context {
    fn stopped(&self) -> bool {
        matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Records one link's own state; nothing here derives the backbone's (readers do).
    fn set_up(&self, link: Link, up: bool) {
        let flag = match link {
            Link::Publisher => &self.links.publisher,
            Link::Subscriber => &self.links.subscriber,
            // Opened by joins when needed: its failures are their 503s.
            Link::History => return,
            // Its failures are `/presence`'s 503s, and logged by it.
            Link::Presence => return,
        };
        flag.store(up, Ordering::Release);
    }

    /// Waits `delay`, or less if the bridge stops (then false).
    fn sleep(&self, delay: Duration) -> bool {
        !matches!(
            self.stop.recv_timeout(delay),
            Err(RecvTimeoutError::Disconnected)
        )
    }
}

/// A bridge's context without Redis, for the bridge's tests, and the sender whose drop stops it.
#[cfg(test)]
fn test_context() -> (Context, Sender<()>) {
    let (keep, stop) = crossbeam_channel::bounded(0);
    let ctx = Context {
        url: RedisUrl::parse("redis://:pw@127.0.0.1:1/").unwrap(),
        instance_id: "i".into(),
        epoch: new_epoch(),
        stream: stream_key("wsgate:"),
        prefix: "wsgate:".into(),
        publish_queue: 1,
        stream_length: 1,
        max_backoff: Duration::from_millis(500),
        health_check: Duration::from_secs(1),
        health_timeout: Duration::from_secs(2),
        metrics: Arc::new(Metrics::new(["/c"])),
        hub: Hub::new(Arc::new(Metrics::new(["/c"]))),
        accepts: Arc::new(|_: &str| true),
        links: Arc::default(),
        stop,
    };
    (ctx, keep)
}
