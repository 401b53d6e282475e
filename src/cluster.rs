//! The cluster bridge: carries broadcasts between wsgate instances through Redis pub/sub, so a
//! subscriber on any instance gets what is published on any other. Two threads, one Redis
//! connection each; it never runs on a connection thread and never makes one wait.
//!
//! - The **publisher** drains the hub's bounded queue ([`Outbound`]) and sends
//!   `PUBLISH <prefix><path> <envelope>`, pipelining what has queued up meanwhile.
//! - The **subscriber** holds `PSUBSCRIBE <prefix>*` and hands each message from *another*
//!   instance to [`Hub::deliver`] for local fan-out; its own (same instance id) are skipped, as
//!   the hub already delivered them locally.
//!
//! Redis down (at start or later) is a state, not an error: both threads retry with a capped
//! exponential backoff, log each change once (connected / lost: reason / reconnected), and
//! meanwhile the hub keeps serving locally; broadcasts that cannot be published are counted
//! (`wsgate_cluster_not_forwarded_total`). Shutdown closes a channel both threads watch; the
//! subscriber reads with a short timeout so it notices at once.
//!
//! The envelope (the message payload in Redis) is binary:
//! `[version = 1][id length: u8][instance id][kind: 0 text | 1 binary][message bytes]`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, select};
use tungstenite::{Message, Utf8Bytes};

use crate::config::{ClusterConfig, MIN_BACKOFF, RedisUrl};
use crate::hub::{Hub, Outbound};
use crate::metrics::Metrics;

/// Deadline for connecting to Redis (TCP, TLS, AUTH, the subscription's confirmation).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline for one pipelined `PUBLISH` batch on the publisher's connection.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The subscriber's read timeout: how soon it notices shutdown while Redis is quiet.
const POLL: Duration = Duration::from_millis(200);
/// Most broadcasts sent in one pipelined round trip.
const BATCH: usize = 64;
/// How long [`Bridge::stop`] waits for the threads (one may be inside a Redis call).
const STOP_WAIT: Duration = Duration::from_secs(2);

const ENVELOPE_VERSION: u8 = 1;
const KIND_TEXT: u8 = 0;
const KIND_BINARY: u8 = 1;

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
        let (queue_tx, queue_rx) = crossbeam_channel::bounded(config.publish_queue.get());
        let (stop, stop_rx) = crossbeam_channel::bounded(0);
        let ctx = Arc::new(Context {
            url: url.clone(),
            instance_id: config.instance_id.clone(),
            prefix: config.channel_prefix.clone(),
            max_backoff: config.max_backoff,
            hub: Arc::clone(hub),
            metrics: Arc::clone(metrics),
            accepts,
            publisher_up: AtomicBool::new(false),
            subscriber_up: AtomicBool::new(false),
            stop: stop_rx,
        });
        log::info!(
            "cluster: instance `{}` joins the backbone at {url} (channels `{}*`, publish queue {})",
            ctx.instance_id,
            ctx.prefix,
            config.publish_queue
        );
        metrics.set_cluster_connected(false);
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .stack_size(256 * 1024)
                .spawn(run)
        };
        let (c, p) = (Arc::clone(&ctx), client.clone());
        let publisher = spawn(
            "wsgate-cluster-pub",
            Box::new(move || publisher(&c, &p, &queue_rx)),
        )?;
        let (c, s) = (Arc::clone(&ctx), client);
        let subscriber = spawn("wsgate-cluster-sub", Box::new(move || subscriber(&c, &s)))?;
        hub.set_outlet(queue_tx);
        Ok(Some(Bridge {
            stop,
            threads: vec![publisher, subscriber],
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

/// What both threads share.
struct Context {
    url: RedisUrl,
    instance_id: String,
    prefix: String,
    max_backoff: Duration,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    accepts: Arc<Accepts>,
    publisher_up: AtomicBool,
    subscriber_up: AtomicBool,
    /// Disconnected when the bridge stops.
    stop: Receiver<()>,
}

impl Context {
    fn stopped(&self) -> bool {
        matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Records one link's state; the gauge is 1 only while both links are up.
    fn set_up(&self, link: Link, up: bool) {
        match link {
            Link::Publisher => self.publisher_up.store(up, Ordering::Release),
            Link::Subscriber => self.subscriber_up.store(up, Ordering::Release),
        }
        let both =
            self.publisher_up.load(Ordering::Acquire) && self.subscriber_up.load(Ordering::Acquire);
        self.metrics.set_cluster_connected(both);
    }

    /// Waits `delay`, or less if the bridge stops (then false).
    fn sleep(&self, delay: Duration) -> bool {
        !matches!(
            self.stop.recv_timeout(delay),
            Err(RecvTimeoutError::Disconnected)
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Link {
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

/// One link's state, so each change is logged once and retries are not.
struct Watch {
    link: Link,
    /// Since when the link is down; `None` while up (or before the first attempt).
    down_since: Option<Instant>,
    ever_up: bool,
    backoff: Duration,
}

impl Watch {
    fn new(link: Link) -> Watch {
        Watch {
            link,
            down_since: None,
            ever_up: false,
            backoff: MIN_BACKOFF,
        }
    }

    fn up(&mut self, ctx: &Context) {
        let (link, url) = (self.link, &ctx.url);
        match (self.ever_up, self.down_since) {
            (false, _) => log::info!("cluster: {link} connected to {url}"),
            (true, Some(since)) => log::info!(
                "cluster: {link} reconnected to {url} after {:.1}s",
                since.elapsed().as_secs_f64()
            ),
            (true, None) => {}
        }
        self.ever_up = true;
        self.down_since = None;
        self.backoff = MIN_BACKOFF;
        ctx.set_up(self.link, true);
    }

    /// Records a failure and returns how long to wait before the next attempt.
    fn down(&mut self, ctx: &Context, why: &redis::RedisError) -> Duration {
        let (link, url, cap) = (self.link, &ctx.url, ctx.max_backoff);
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            if self.ever_up {
                log::warn!(
                    "cluster: {link} lost {url}: {why}; local delivery continues, retrying (backoff up to {cap:?})"
                );
            } else {
                log::warn!(
                    "cluster: {link} cannot reach {url}: {why}; serving locally, retrying (backoff up to {cap:?})"
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

/// The Redis channel for a path.
fn redis_channel(prefix: &str, path: &str) -> String {
    format!("{prefix}{path}")
}

/// Encodes one broadcast for Redis. `None` for control frames (never broadcast).
fn encode(instance_id: &str, msg: &Message) -> Option<Vec<u8>> {
    let (kind, body): (u8, &[u8]) = match msg {
        Message::Text(t) => (KIND_TEXT, t.as_bytes()),
        Message::Binary(b) => (KIND_BINARY, b),
        _ => return None,
    };
    // The config keeps instance ids at most 255 bytes.
    let id = instance_id.as_bytes();
    let id_len = u8::try_from(id.len()).ok()?;
    let mut out = Vec::with_capacity(3 + id.len() + body.len());
    out.extend_from_slice(&[ENVELOPE_VERSION, id_len]);
    out.extend_from_slice(id);
    out.push(kind);
    out.extend_from_slice(body);
    Some(out)
}

/// Why an envelope from Redis was not delivered.
#[derive(Debug, PartialEq, Eq)]
enum BadEnvelope {
    Truncated,
    Version(u8),
    Kind(u8),
    NotUtf8,
}

impl fmt::Display for BadEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadEnvelope::Truncated => f.write_str("truncated envelope"),
            BadEnvelope::Version(v) => write!(f, "unknown envelope version {v}"),
            BadEnvelope::Kind(k) => write!(f, "unknown message kind {k}"),
            BadEnvelope::NotUtf8 => f.write_str("text message is not valid UTF-8"),
        }
    }
}

/// Decodes an envelope into the sending instance's id and the message.
fn decode(payload: &[u8]) -> Result<(&[u8], Message), BadEnvelope> {
    let [version, id_len, rest @ ..] = payload else {
        return Err(BadEnvelope::Truncated);
    };
    if *version != ENVELOPE_VERSION {
        return Err(BadEnvelope::Version(*version));
    }
    let id_len = usize::from(*id_len);
    if rest.len() <= id_len {
        return Err(BadEnvelope::Truncated);
    }
    let (id, rest) = rest.split_at(id_len);
    let (kind, body) = (rest[0], &rest[1..]);
    let msg = match kind {
        KIND_TEXT => {
            Message::Text(Utf8Bytes::try_from(body.to_vec()).map_err(|_| BadEnvelope::NotUtf8)?)
        }
        KIND_BINARY => Message::Binary(body.to_vec().into()),
        other => return Err(BadEnvelope::Kind(other)),
    };
    Ok((id, msg))
}

/// The publisher thread: connect, drain the queue into pipelined `PUBLISH`es, and while Redis is
/// unreachable keep draining it, counting what is not forwarded.
fn publisher(ctx: &Context, client: &redis::Client, queue: &Receiver<Outbound>) {
    let mut watch = Watch::new(Link::Publisher);
    loop {
        let connected = client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .and_then(|con| {
                con.set_write_timeout(Some(PUBLISH_TIMEOUT))?;
                con.set_read_timeout(Some(PUBLISH_TIMEOUT))?;
                Ok(con)
            });
        let error = match connected {
            Ok(mut con) => {
                watch.up(ctx);
                match publish_until_error(ctx, &mut con, queue) {
                    Some(e) => e,
                    None => return,
                }
            }
            Err(e) => e,
        };
        let delay = watch.down(ctx, &error);
        if !discard_for(ctx, queue, delay) {
            return;
        }
    }
}

/// Publishes until Redis fails (returns the error) or the bridge stops (`None`).
fn publish_until_error(
    ctx: &Context,
    con: &mut redis::Connection,
    queue: &Receiver<Outbound>,
) -> Option<redis::RedisError> {
    let mut batch: Vec<Outbound> = Vec::with_capacity(BATCH);
    loop {
        select! {
            recv(queue) -> first => match first {
                Ok(first) => batch.push(first),
                Err(_) => return None,
            },
            recv(ctx.stop) -> _ => return None,
        }
        batch.extend(queue.try_iter().take(BATCH - 1));
        let mut pipe = redis::pipe();
        let mut n = 0u64;
        for out in batch.drain(..) {
            if let Some(envelope) = encode(&ctx.instance_id, &out.msg) {
                pipe.cmd("PUBLISH")
                    .arg(redis_channel(&ctx.prefix, &out.path))
                    .arg(envelope)
                    .ignore();
                n += 1;
            }
        }
        match pipe.exec(con) {
            Ok(()) => ctx.metrics.cluster_forwarded(n),
            Err(e) => {
                // Whether Redis got some of them is unknown: count the batch as not forwarded.
                ctx.metrics.cluster_not_forwarded(n);
                return Some(e);
            }
        }
    }
}

/// Waits `delay` while Redis is down, emptying the queue meanwhile (each message counted as not
/// forwarded) so that no stale burst goes out on reconnect. False when the bridge stops.
fn discard_for(ctx: &Context, queue: &Receiver<Outbound>, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        select! {
            recv(queue) -> out => match out {
                Ok(_) => ctx.metrics.cluster_not_forwarded(1),
                Err(_) => return false,
            },
            recv(ctx.stop) -> _ => return false,
            default(left) => return true,
        }
    }
}

/// The subscriber thread: subscribe, deliver, and on failure retry with backoff.
fn subscriber(ctx: &Context, client: &redis::Client) {
    let mut watch = Watch::new(Link::Subscriber);
    let mut warned_bad = false;
    loop {
        match listen(ctx, client, &mut watch, &mut warned_bad) {
            Ok(()) => return,
            Err(e) => {
                let delay = watch.down(ctx, &e);
                if !ctx.sleep(delay) {
                    return;
                }
            }
        }
    }
}

/// One subscription's life: `Ok` when the bridge stops, the error when Redis fails.
fn listen(
    ctx: &Context,
    client: &redis::Client,
    watch: &mut Watch,
    warned_bad: &mut bool,
) -> redis::RedisResult<()> {
    let mut con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    con.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut pubsub = con.as_pubsub();
    pubsub.psubscribe(format!("{}*", ctx.prefix))?;
    pubsub.set_read_timeout(Some(POLL))?;
    watch.up(ctx);
    loop {
        if ctx.stopped() {
            return Ok(());
        }
        let msg = match pubsub.get_message() {
            Ok(msg) => msg,
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(e),
        };
        let Some(path) = msg.get_channel_name().strip_prefix(ctx.prefix.as_str()) else {
            continue; // cannot happen: the pattern is the prefix
        };
        match decode(msg.get_payload_bytes()) {
            Ok((id, _)) if id == ctx.instance_id.as_bytes() => {} // ours: delivered locally already
            Ok((_, message)) if (ctx.accepts)(path) => {
                ctx.hub.deliver(path, &message);
                ctx.metrics.cluster_received();
            }
            Ok(_) => log::debug!("cluster: no broadcast channel here serves `{path}`; ignored"),
            Err(why) => {
                // Something else publishes on our prefix: say so once, then at debug.
                if *warned_bad {
                    log::debug!("cluster: ignored a message on `{path}`: {why}");
                } else {
                    *warned_bad = true;
                    log::warn!(
                        "cluster: ignored a message on `{path}`: {why} (is another program \
                         publishing on the channel prefix `{}`?)",
                        ctx.prefix
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_text_and_binary() {
        let text = Message::text("héllo");
        let binary = Message::binary(vec![0u8, 1, 255, 0]);
        for msg in [text, binary, Message::text(""), Message::binary(Vec::new())] {
            let e = encode("pi-1", &msg).unwrap();
            let (id, back) = decode(&e).unwrap();
            assert_eq!(id, b"pi-1");
            assert_eq!(back, msg);
        }
        let e = encode("a", &Message::text("x")).unwrap();
        assert_eq!(e, [1, 1, b'a', KIND_TEXT, b'x']);
        assert_eq!(encode("a", &Message::Ping(Vec::new().into())), None);
    }

    #[test]
    fn bad_envelopes_are_refused() {
        assert_eq!(decode(b"").unwrap_err(), BadEnvelope::Truncated);
        assert_eq!(decode(&[1]).unwrap_err(), BadEnvelope::Truncated);
        assert_eq!(
            decode(&[1, 3, b'a', b'b']).unwrap_err(),
            BadEnvelope::Truncated
        );
        assert_eq!(decode(&[1, 1, b'a']).unwrap_err(), BadEnvelope::Truncated);
        assert_eq!(decode(&[2, 0, 0]).unwrap_err(), BadEnvelope::Version(2));
        assert_eq!(decode(&[1, 0, 7, 1]).unwrap_err(), BadEnvelope::Kind(7));
        assert_eq!(
            decode(&[1, 0, KIND_TEXT, 0xff]).unwrap_err(),
            BadEnvelope::NotUtf8
        );
        assert_eq!(
            decode(&[1, 0, KIND_BINARY, 0xff]).unwrap(),
            (&b""[..], Message::binary(vec![0xffu8]))
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let hub = Hub::new(Arc::new(Metrics::new(["/c"])));
        let (_stop, stop) = crossbeam_channel::bounded(0);
        let ctx = Context {
            url: test_url(),
            instance_id: "i".into(),
            prefix: "wsgate:".into(),
            max_backoff: Duration::from_millis(500),
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
        w.up(&ctx);
        assert_eq!(w.down(&ctx, &err).as_millis(), 100);
        assert!(ctx.sleep(Duration::from_millis(1)));
    }

    fn test_url() -> RedisUrl {
        RedisUrl::parse("redis://:pw@127.0.0.1:1/").unwrap()
    }
}
