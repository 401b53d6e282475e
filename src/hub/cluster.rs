//! The cluster bridge: carries broadcasts between wsgate instances through one capped Redis
//! Stream, so a subscriber on any instance gets what is published on any other, and a link that
//! drops resumes where it left off. Two threads, one Redis connection each; it never runs on a
//! connection thread and never makes one wait.
//!
//! - The **publisher** moves the hub's bounded queue ([`Outbound`]) into its pending list (at
//!   most `publish_queue`; when full the oldest is dropped and counted) and sends
//!   `XADD <prefix>broadcasts MAXLEN ~ <stream_length> * p <path> m <envelope>`, pipelining up
//!   to [`BATCH`]. An entry leaves the pending list only when Redis has acknowledged it, so what
//!   was pending while the link was down, or in flight when it failed, is sent on reconnect.
//! - The **subscriber** reads with `XREAD BLOCK` after the last entry id it has seen (kept across
//!   reconnects) and hands each message of *another* instance to [`Hub::deliver`]; its own are
//!   skipped, as the hub already delivered them locally.
//!
//! Every link is health-checked, so a dead or frozen Redis is noticed within `health_check +
//! health_timeout` whether this instance publishes or not: every call has `health_timeout` to
//! answer, an idle publisher sends `PING` after `health_check` without an answer, and the
//! subscriber's `XREAD` blocks for [`POLL`] only. A link found down is logged once (lost: reason),
//! retried with a capped exponential backoff, and logged once more when it is back (how long it
//! was out, how many broadcasts were not forwarded); `wsgate_cluster_connected` is 1 only while
//! both are up. Meanwhile the hub keeps serving locally.
//!
//! No duplicates, per-publisher order: an entry sent again (its first `XADD` may have landed
//! before the link failed) carries the same sequence number, and the subscriber drops anything
//! at or below the last number it delivered from that publisher. A jump in the numbers is a
//! loss the stream could not prevent (trimmed away, or Redis restarted without persistence):
//! counted (`wsgate_cluster_lost_total`) and logged.
//!
//! The envelope (an entry's `m` field) is binary: `[version = 2][id length: u8][instance id]
//! [epoch: u64 BE][sequence: u64 BE][kind: 0 text | 1 binary | 2 disconnect][bytes]`; the epoch
//! is random per process, so a restarted publisher with the same id starts a new sequence. A
//! disconnect (an admin's `POST /disconnect`, issue 16) carries its filter as a query string
//! (`user=alice&path=%2Fchat`) and travels in the same sequence as broadcasts, so it is resent,
//! deduplicated and ordered like them; every other instance ends its matching connections.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, select};
use redis::Value;
use tungstenite::{Message, Utf8Bytes};

use crate::config::{ClusterConfig, MIN_BACKOFF, RedisUrl};
use crate::hub::{Filter, Hub, Outbound};
use crate::ops::admin;
use crate::ops::metrics::Counter;
use crate::ops::metrics::Metrics;

/// How long the subscriber's `XREAD` blocks: how soon it notices shutdown while Redis is quiet.
/// Redis answers (empty) at its end, which is the subscriber link's health check.
const POLL: Duration = Duration::from_millis(250);
/// Most broadcasts sent in one pipelined round trip.
const BATCH: usize = 64;
/// Most stream entries read in one `XREAD`: the subscriber holds up to this many messages at
/// once (counted in the memory budget).
pub const READ_BATCH: usize = 128;
/// How long [`Bridge::stop`] waits for the threads (one may be inside a Redis call).
const STOP_WAIT: Duration = Duration::from_secs(2);
/// Most publishers whose sequence the subscriber tracks; the one heard from least recently is
/// forgotten first (each restart of a publisher with a default instance id is a new one).
const MAX_SENDERS: usize = 1024;
/// At most one "lost" warning per this long; the rest are summed into the next one.
const LOST_WARN_EVERY: Duration = Duration::from_secs(10);

const ENVELOPE_VERSION: u8 = 2;
const KIND_TEXT: u8 = 0;
const KIND_BINARY: u8 = 1;
const KIND_DISCONNECT: u8 = 2;
/// The stream entry's fields: the channel path, and the envelope.
const FIELD_PATH: &str = "p";
const FIELD_ENVELOPE: &str = "m";

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
            epoch: new_epoch(),
            stream: stream_key(&config.channel_prefix),
            publish_queue: config.publish_queue.get(),
            stream_length: config.stream_length.get(),
            max_backoff: config.max_backoff,
            health_check: config.health_check,
            health_timeout: config.health_timeout,
            hub: Arc::clone(hub),
            metrics: Arc::clone(metrics),
            accepts,
            publisher_up: AtomicBool::new(false),
            subscriber_up: AtomicBool::new(false),
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
    publish_queue: usize,
    stream_length: usize,
    max_backoff: Duration,
    health_check: Duration,
    health_timeout: Duration,
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

/// Why a link went down, as a log line says it.
fn reason(e: &redis::RedisError, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {timeout:?} (frozen or unreachable?)")
    } else {
        e.to_string()
    }
}

/// One link's state, so each change is logged once and retries are not.
struct Watch {
    link: Link,
    /// Since when the link is down, and the not-forwarded count then; `None` while up (or
    /// before the first attempt).
    down_since: Option<(Instant, u64)>,
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

    /// Records that the link is up; `detail` ends the log line.
    fn up(&mut self, ctx: &Context, detail: &str) {
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
    fn down(&mut self, ctx: &Context, why: &redis::RedisError) -> Duration {
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
fn connect(
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

/// The instance, process and place in its sequence of one envelope.
#[derive(Debug, PartialEq, Eq)]
struct Origin<'a> {
    instance: &'a [u8],
    epoch: u64,
    seq: u64,
}

/// Encodes one broadcast or disconnect for Redis. `None` for control frames (never broadcast).
fn encode(instance_id: &str, epoch: u64, seq: u64, out: &Outbound) -> Option<Vec<u8>> {
    let query;
    let (kind, body): (u8, &[u8]) = match out {
        Outbound::Broadcast {
            msg: Message::Text(t),
            ..
        } => (KIND_TEXT, t.as_bytes()),
        Outbound::Broadcast {
            msg: Message::Binary(b),
            ..
        } => (KIND_BINARY, b),
        Outbound::Broadcast { .. } => return None,
        Outbound::Disconnect(filter) => {
            query = admin::query_string(filter);
            (KIND_DISCONNECT, query.as_bytes())
        }
    };
    // The config keeps instance ids at most 255 bytes.
    let id = instance_id.as_bytes();
    let id_len = u8::try_from(id.len()).ok()?;
    let mut out = Vec::with_capacity(19 + id.len() + body.len());
    out.extend_from_slice(&[ENVELOPE_VERSION, id_len]);
    out.extend_from_slice(id);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    Some(out)
}

/// The stream entry's `p` field: the broadcast's path, or for a disconnect the path it names
/// (`*` for none), so `XRANGE` reads well.
fn entry_path(out: &Outbound) -> &str {
    match out {
        Outbound::Broadcast { path, .. } => path,
        Outbound::Disconnect(filter) => filter.path.as_deref().unwrap_or("*"),
    }
}

/// What an envelope carries.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    Broadcast(Message),
    Disconnect(Filter),
}

/// Why an envelope from Redis was not delivered.
#[derive(Debug, PartialEq, Eq)]
enum BadEnvelope {
    Truncated,
    Version(u8),
    Kind(u8),
    NotUtf8,
    /// A disconnect whose filter does not parse, or is empty.
    BadFilter,
    /// The stream entry lacks the path or the envelope field.
    Fields,
}

impl fmt::Display for BadEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadEnvelope::Truncated => f.write_str("truncated envelope"),
            BadEnvelope::Version(v) => write!(f, "unknown envelope version {v}"),
            BadEnvelope::Kind(k) => write!(f, "unknown message kind {k}"),
            BadEnvelope::NotUtf8 => f.write_str("text message is not valid UTF-8"),
            BadEnvelope::BadFilter => f.write_str("disconnect without a valid filter"),
            BadEnvelope::Fields => f.write_str("entry without the `p` and `m` fields"),
        }
    }
}

/// Decodes an envelope into where it comes from and what it carries.
fn decode(payload: &[u8]) -> Result<(Origin<'_>, Inbound), BadEnvelope> {
    let [version, id_len, rest @ ..] = payload else {
        return Err(BadEnvelope::Truncated);
    };
    if *version != ENVELOPE_VERSION {
        return Err(BadEnvelope::Version(*version));
    }
    let id_len = usize::from(*id_len);
    if rest.len() <= id_len + 16 {
        return Err(BadEnvelope::Truncated);
    }
    let (instance, rest) = rest.split_at(id_len);
    let (epoch, rest) = rest.split_at(8);
    let (seq, rest) = rest.split_at(8);
    let number = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
    let origin = Origin {
        instance,
        epoch: number(epoch),
        seq: number(seq),
    };
    let (kind, body) = (rest[0], &rest[1..]);
    let inbound = match kind {
        KIND_TEXT => Inbound::Broadcast(Message::Text(
            Utf8Bytes::try_from(body.to_vec()).map_err(|_| BadEnvelope::NotUtf8)?,
        )),
        KIND_BINARY => Inbound::Broadcast(Message::Binary(body.to_vec().into())),
        KIND_DISCONNECT => {
            let query = std::str::from_utf8(body).map_err(|_| BadEnvelope::BadFilter)?;
            let filter = admin::parse_query(query, admin::FILTER_KEYS)
                .ok()
                .filter(|f| !f.is_empty())
                .ok_or(BadEnvelope::BadFilter)?;
            Inbound::Disconnect(filter)
        }
        other => return Err(BadEnvelope::Kind(other)),
    };
    Ok((origin, inbound))
}

/// What the subscriber makes of an envelope, by its origin's sequence number.
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// The next one from that publisher (or the first heard from it): deliver.
    Next,
    /// Deliver; this many before it never arrived.
    AfterLoss(u64),
    /// At or below the last one delivered from that publisher: an entry sent again, drop it.
    Duplicate,
}

/// The last sequence number delivered from each publisher process (bounded: [`MAX_SENDERS`]).
#[derive(Default)]
struct Senders {
    /// Instance id -> (epoch, last sequence number, when last heard from on `clock`).
    last: HashMap<Vec<u8>, (u64, u64, u64)>,
    clock: u64,
}

impl Senders {
    fn arrive(&mut self, origin: &Origin<'_>) -> Arrival {
        self.clock += 1;
        if let Some((epoch, seq, heard)) = self.last.get_mut(origin.instance)
            && *epoch == origin.epoch
        {
            if origin.seq <= *seq {
                return Arrival::Duplicate;
            }
            let lost = origin.seq - *seq - 1;
            (*seq, *heard) = (origin.seq, self.clock);
            return if lost == 0 {
                Arrival::Next
            } else {
                Arrival::AfterLoss(lost)
            };
        }
        if self.last.len() >= MAX_SENDERS && !self.last.contains_key(origin.instance) {
            let oldest = self
                .last
                .iter()
                .min_by_key(|(_, v)| v.2)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.last.remove(&oldest);
            }
        }
        self.last.insert(
            origin.instance.to_vec(),
            (origin.epoch, origin.seq, self.clock),
        );
        Arrival::Next
    }
}

/// One broadcast waiting for Redis; its sequence number is fixed when it is first sent, so a
/// resend carries the same one.
struct Entry {
    out: Outbound,
    seq: Option<u64>,
}

/// The publisher's backlog: at most `cap` entries, the oldest dropped (and counted) first.
struct Pending {
    entries: VecDeque<Entry>,
    cap: usize,
    next_seq: u64,
}

impl Pending {
    fn new(cap: usize) -> Pending {
        Pending {
            entries: VecDeque::new(),
            cap,
            next_seq: 1,
        }
    }

    /// Queues `out`; returns whether the oldest entry had to make room.
    fn push(&mut self, out: Outbound) -> bool {
        let dropped = self.entries.len() >= self.cap && self.entries.pop_front().is_some();
        self.entries.push_back(Entry { out, seq: None });
        dropped
    }

    /// Moves what waits in the hub's queue here (without blocking).
    fn take(&mut self, queue: &Receiver<Outbound>, metrics: &Metrics) {
        for out in queue.try_iter() {
            if self.push(out) {
                metrics.bump(Counter::ClusterNotForwarded, 1);
            }
        }
    }

    /// The first `n` entries' sequence numbers, numbering those sent for the first time.
    fn number(&mut self, n: usize) -> impl Iterator<Item = (&Outbound, u64)> {
        for e in self.entries.iter_mut().take(n) {
            if e.seq.is_none() {
                e.seq = Some(self.next_seq);
                self.next_seq += 1;
            }
        }
        self.entries
            .iter()
            .take(n)
            .map(|e| (&e.out, e.seq.unwrap_or_default()))
    }
}

/// The publisher thread: connect, send the pending entries in pipelined `XADD`s, keep the link
/// checked while idle, and while Redis is unreachable keep taking the hub's queue into the
/// pending list.
fn publisher(ctx: &Context, client: &redis::Client, queue: &Receiver<Outbound>) {
    let mut watch = Watch::new(Link::Publisher);
    let mut pending = Pending::new(ctx.publish_queue);
    loop {
        let error = match connect(ctx, client, Link::Publisher) {
            Ok(mut con) => {
                pending.take(queue, &ctx.metrics);
                let detail = match pending.entries.len() {
                    0 => String::new(),
                    n => format!("; sending {n} queued broadcasts"),
                };
                watch.up(ctx, &detail);
                match publish_until_error(ctx, &mut con, queue, &mut pending) {
                    Some(e) => e,
                    None => return,
                }
            }
            Err(e) => e,
        };
        let delay = watch.down(ctx, &error);
        if !hold_for(ctx, queue, &mut pending, delay) {
            return;
        }
    }
}

/// Publishes until Redis fails (returns the error) or the bridge stops (`None`). Sends `PING`
/// when the link has had no answer for `health_check`.
fn publish_until_error(
    ctx: &Context,
    con: &mut redis::Connection,
    queue: &Receiver<Outbound>,
    pending: &mut Pending,
) -> Option<redis::RedisError> {
    let mut answered = Instant::now();
    let maxlen = ctx.stream_length.to_string();
    loop {
        if pending.entries.is_empty() {
            let idle = ctx.health_check.saturating_sub(answered.elapsed());
            if idle.is_zero() {
                if let Err(e) = exec_within(con, redis::pipe().cmd("PING"), 1, ctx.health_timeout) {
                    return Some(e);
                }
                answered = Instant::now();
                continue;
            }
            select! {
                recv(queue) -> out => match out {
                    // The list is empty: nothing to make room for.
                    Ok(out) => { let _ = pending.push(out); }
                    Err(_) => return None,
                },
                recv(ctx.stop) -> _ => return None,
                default(idle) => continue,
            }
        }
        if ctx.stopped() {
            return None;
        }
        pending.take(queue, &ctx.metrics);
        let mut pipe = redis::pipe();
        let n = pending.entries.len().min(BATCH);
        let mut sent = 0;
        for (out, seq) in pending.number(n) {
            // Never `None`: the hub broadcasts data messages only.
            if let Some(envelope) = encode(&ctx.instance_id, ctx.epoch, seq, out) {
                sent += 1;
                pipe.cmd("XADD")
                    .arg(&ctx.stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(&maxlen)
                    .arg("*")
                    .arg(FIELD_PATH)
                    .arg(entry_path(out))
                    .arg(FIELD_ENVELOPE)
                    .arg(envelope);
            }
        }
        match exec_within(con, &pipe, sent, ctx.health_timeout) {
            Ok(()) => {
                pending.entries.drain(..n);
                ctx.metrics.bump(Counter::ClusterForwarded, n as u64);
                answered = Instant::now();
            }
            // Whether Redis added some of them is unknown: all stay pending and are sent again
            // with the same sequence numbers, which subscribers use to drop the copies.
            Err(e) => return Some(e),
        }
    }
}

/// Sends `pipe` and reads its `n` answers, all within one `timeout`. (The redis crate's own
/// pipeline applies its read timeout to each answer and reads on after one expires, so a frozen
/// Redis would hold a batch of 64 for 64 timeouts.)
fn exec_within(
    con: &mut redis::Connection,
    pipe: &redis::Pipeline,
    n: usize,
    timeout: Duration,
) -> redis::RedisResult<()> {
    let deadline = Instant::now() + timeout;
    con.set_write_timeout(Some(timeout))?;
    con.send_packed_command(&pipe.get_packed_pipeline())?;
    // The socket's read timeout is lowered as the deadline nears, by steps of a tenth (not
    // before every answer: most are parsed from one buffered read), so the batch takes at most
    // `timeout` and a tenth.
    con.set_read_timeout(Some(timeout))?;
    let mut read_timeout = timeout;
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
        }
        if read_timeout.saturating_sub(left) > timeout / 10 {
            con.set_read_timeout(Some(left))?;
            read_timeout = left;
        }
        if let Value::ServerError(e) = con.recv_response()? {
            return Err(e.into());
        }
    }
    Ok(())
}

/// Waits `delay` while Redis is down, taking the hub's queue into the pending list meanwhile
/// (the oldest dropped and counted when it is full). False when the bridge stops.
fn hold_for(
    ctx: &Context,
    queue: &Receiver<Outbound>,
    pending: &mut Pending,
    delay: Duration,
) -> bool {
    let until = Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        select! {
            recv(queue) -> out => match out {
                Ok(out) => {
                    if pending.push(out) {
                        ctx.metrics.bump(Counter::ClusterNotForwarded, 1);
                    }
                }
                Err(_) => return false,
            },
            recv(ctx.stop) -> _ => return false,
            default(left) => return true,
        }
    }
}

/// What the subscriber keeps across reconnects.
struct Reader {
    /// The id of the last stream entry read; `None` until the first connection finds the end of
    /// the stream.
    last_id: Option<String>,
    senders: Senders,
    warned_bad: bool,
    /// Losses not yet logged, and when the last warning was.
    lost_unlogged: u64,
    lost_logged_at: Option<Instant>,
}

/// The subscriber thread: read the stream, deliver, and on failure retry with backoff.
fn subscriber(ctx: &Context, client: &redis::Client) {
    let mut watch = Watch::new(Link::Subscriber);
    let mut reader = Reader {
        last_id: None,
        senders: Senders::default(),
        warned_bad: false,
        lost_unlogged: 0,
        lost_logged_at: None,
    };
    loop {
        match listen(ctx, client, &mut watch, &mut reader) {
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

/// One connection's reading: `Ok` when the bridge stops, the error when Redis fails. Every
/// `XREAD` blocks for [`POLL`] at most and must be answered within `health_timeout` after that.
fn listen(
    ctx: &Context,
    client: &redis::Client,
    watch: &mut Watch,
    reader: &mut Reader,
) -> redis::RedisResult<()> {
    let mut con = connect(ctx, client, Link::Subscriber)?;
    let (from, detail) = match &reader.last_id {
        Some(id) => (
            id.clone(),
            format!(
                "; reading the stream after entry {id}, so nothing published meanwhile is lost"
            ),
        ),
        None => {
            // First connection: start after what is in the stream already, so that old
            // broadcasts are never replayed to this instance's clients.
            let last: Value = redis::cmd("XREVRANGE")
                .arg(&ctx.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(&mut con)?;
            let mut id = "0-0".to_string();
            for_each_entry(&last, |entry| id = entry.id.to_string())?;
            let detail = format!("; reading the stream `{}` after entry {id}", ctx.stream);
            (id, detail)
        }
    };
    con.set_read_timeout(Some(POLL + ctx.health_timeout))?;
    watch.up(ctx, &detail);
    let mut last_id = from;
    loop {
        reader.last_id = Some(last_id.clone());
        if ctx.stopped() {
            return Ok(());
        }
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("BLOCK")
            .arg(POLL.as_millis() as u64)
            .arg("STREAMS")
            .arg(&ctx.stream)
            .arg(&last_id)
            .query(&mut con)?;
        // Nil when nothing came within the block time.
        for_each_stream(&reply, |entries| {
            for_each_entry(entries, |entry| {
                last_id.clear();
                last_id.push_str(entry.id);
                match (entry.path, entry.envelope) {
                    (Some(path), Some(envelope)) => reader.handle(ctx, path, envelope),
                    _ => reader.bad(ctx, "?", &BadEnvelope::Fields),
                }
            })
        })?;
        reader.log_lost(ctx);
    }
}

/// One stream entry as the bridge writes it: its id, and its `p` and `m` fields if present.
#[derive(Debug, PartialEq, Eq)]
struct StreamEntry<'a> {
    id: &'a str,
    path: Option<&'a str>,
    envelope: Option<&'a [u8]>,
}

/// The reply did not have the shape of `XREAD`'s or `XRANGE`'s.
fn bad_reply() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "unexpected reply shape for a stream read",
    ))
}

/// Calls `f` with each stream's entry list of an `XREAD` reply: RESP2 `[[key, entries], ...]`
/// or RESP3 `{key: entries}`; nothing for nil (the block time passed).
fn for_each_stream(
    reply: &Value,
    mut f: impl FnMut(&Value) -> redis::RedisResult<()>,
) -> redis::RedisResult<()> {
    match reply {
        Value::Nil => Ok(()),
        Value::Array(streams) => streams.iter().try_for_each(|s| match s {
            Value::Array(pair) if pair.len() == 2 => f(&pair[1]),
            _ => Err(bad_reply()),
        }),
        Value::Map(streams) => streams.iter().try_for_each(|(_, entries)| f(entries)),
        _ => Err(bad_reply()),
    }
}

/// Calls `f` with each entry of an entry list (`XRANGE`'s reply, or one stream's part of
/// `XREAD`'s): `[[id, [field, value, ...]], ...]`. Read straight from the reply, without the
/// copy into a map per entry that the redis crate's typed stream replies make.
fn for_each_entry(entries: &Value, mut f: impl FnMut(StreamEntry<'_>)) -> redis::RedisResult<()> {
    let Value::Array(entries) = entries else {
        return Err(bad_reply());
    };
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(bad_reply());
        };
        let (Some(Value::BulkString(id)), fields) = (parts.first(), parts.get(1)) else {
            return Err(bad_reply());
        };
        let id = std::str::from_utf8(id).map_err(|_| bad_reply())?;
        let mut e = StreamEntry {
            id,
            path: None,
            envelope: None,
        };
        if let Some(Value::Array(fields)) = fields {
            for pair in fields.chunks_exact(2) {
                if let [Value::BulkString(name), Value::BulkString(value)] = pair {
                    match name.as_slice() {
                        b"p" => e.path = std::str::from_utf8(value).ok(),
                        b"m" => e.envelope = Some(value),
                        _ => {}
                    }
                }
            }
        }
        f(e);
    }
    Ok(())
}

impl Reader {
    /// Delivers one entry unless it is this instance's own, a copy, or for no channel here.
    fn handle(&mut self, ctx: &Context, path: &str, envelope: &[u8]) {
        let (origin, message) = match decode(envelope) {
            Ok(decoded) => decoded,
            Err(why) => return self.bad(ctx, path, &why),
        };
        if origin.instance == ctx.instance_id.as_bytes() {
            return; // ours: delivered locally already
        }
        match self.senders.arrive(&origin) {
            Arrival::Duplicate => {
                log::debug!("cluster: dropped a copy of a broadcast on `{path}`");
                return;
            }
            Arrival::AfterLoss(n) => {
                ctx.metrics.bump(Counter::ClusterLost, n);
                self.lost_unlogged += n;
            }
            Arrival::Next => {}
        }
        let message = match message {
            Inbound::Broadcast(message) => message,
            Inbound::Disconnect(filter) => {
                let n = ctx.hub.disconnect(&filter);
                ctx.metrics.bump(Counter::AdminDisconnects, n as u64);
                log::info!(
                    "cluster: disconnect from instance `{}` ({}) closed={n}",
                    String::from_utf8_lossy(origin.instance).escape_debug(),
                    admin::query_string(&filter)
                );
                return;
            }
        };
        if (ctx.accepts)(path) {
            ctx.hub.deliver(path, &message);
            ctx.metrics.bump(Counter::ClusterReceived, 1);
        } else {
            log::debug!("cluster: no broadcast channel here serves `{path}`; ignored");
        }
    }

    /// Something else writes to our stream: say so once, then at debug.
    fn bad(&mut self, ctx: &Context, path: &str, why: &BadEnvelope) {
        if self.warned_bad {
            log::debug!("cluster: ignored an entry for `{path}`: {why}");
        } else {
            self.warned_bad = true;
            log::warn!(
                "cluster: ignored an entry for `{path}`: {why} (is another program, or an older \
                 wsgate, writing to the stream `{}`?)",
                ctx.stream
            );
        }
    }

    /// Logs the losses found since the last warning, at most once per [`LOST_WARN_EVERY`].
    fn log_lost(&mut self, ctx: &Context) {
        if self.lost_unlogged == 0
            || self
                .lost_logged_at
                .is_some_and(|at| at.elapsed() < LOST_WARN_EVERY)
        {
            return;
        }
        log::warn!(
            "cluster: {} broadcasts of other instances were no longer in the stream `{}` when \
             read (trimmed: raise stream_length; or lost in a Redis restart)",
            self.lost_unlogged,
            ctx.stream
        );
        self.lost_unlogged = 0;
        self.lost_logged_at = Some(Instant::now());
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
            let e = encode("pi-1", 7, u64::MAX, &broadcast(msg.clone())).unwrap();
            let (origin, back) = decode(&e).unwrap();
            let want = Origin {
                instance: b"pi-1",
                epoch: 7,
                seq: u64::MAX,
            };
            assert_eq!(origin, want);
            assert_eq!(back, Inbound::Broadcast(msg));
        }
        let e = encode("a", 1, 2, &broadcast(Message::text("x"))).unwrap();
        let mut want = vec![2, 1, b'a'];
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&2u64.to_be_bytes());
        want.extend_from_slice(&[KIND_TEXT, b'x']);
        assert_eq!(e, want);
        assert_eq!(
            encode("a", 1, 1, &broadcast(Message::Ping(Vec::new().into()))),
            None
        );
    }

    fn broadcast(msg: Message) -> Outbound {
        Outbound::broadcast("/c", msg)
    }

    #[test]
    fn disconnects_travel_as_their_query_and_an_empty_one_is_refused() {
        let filter = Filter {
            user: Some("al ice&x".into()),
            session: None,
            path: Some("/chat/*".into()),
        };
        let out = Outbound::Disconnect(filter.clone());
        assert_eq!(entry_path(&out), "/chat/*");
        let e = encode("pi-1", 7, 3, &out).unwrap();
        assert!(e.ends_with(b"\x02user=al%20ice%26x&path=/chat/*"));
        assert_eq!(decode(&e).unwrap().1, Inbound::Disconnect(filter));
        let numbers = [0u8; 16];
        for body in [&b""[..], b"bogus=1", b"user=%zz", b"\xff"] {
            let e = [&[2u8, 0][..], &numbers, &[KIND_DISCONNECT], body].concat();
            assert_eq!(decode(&e).unwrap_err(), BadEnvelope::BadFilter, "{body:?}");
        }
    }

    #[test]
    fn bad_envelopes_are_refused() {
        let numbers = [0u8; 16];
        let with = |head: &[u8], tail: &[u8]| [head, &numbers, tail].concat();
        assert_eq!(decode(b"").unwrap_err(), BadEnvelope::Truncated);
        assert_eq!(decode(&[2]).unwrap_err(), BadEnvelope::Truncated);
        assert_eq!(
            decode(&with(&[2, 3, b'a', b'b'], &[])).unwrap_err(),
            BadEnvelope::Truncated
        );
        assert_eq!(
            decode(&with(&[2, 1, b'a'], &[])).unwrap_err(),
            BadEnvelope::Truncated
        );
        // Version 1 (pub/sub, no sequence numbers) is not understood.
        assert_eq!(
            decode(&[1, 1, b'a', KIND_TEXT, b'x']).unwrap_err(),
            BadEnvelope::Version(1)
        );
        assert_eq!(
            decode(&with(&[2, 0], &[7, 1])).unwrap_err(),
            BadEnvelope::Kind(7)
        );
        assert_eq!(
            decode(&with(&[2, 0], &[KIND_TEXT, 0xff])).unwrap_err(),
            BadEnvelope::NotUtf8
        );
        assert_eq!(
            decode(&with(&[2, 0], &[KIND_BINARY, 0xff])).unwrap().1,
            Inbound::Broadcast(Message::binary(vec![0xffu8]))
        );
    }

    fn from(instance: &'static [u8], epoch: u64, seq: u64) -> Origin<'static> {
        Origin {
            instance,
            epoch,
            seq,
        }
    }

    #[test]
    fn copies_are_dropped_and_gaps_counted_per_publisher() {
        let mut s = Senders::default();
        assert_eq!(s.arrive(&from(b"b", 1, 5)), Arrival::Next, "first heard");
        assert_eq!(s.arrive(&from(b"b", 1, 6)), Arrival::Next);
        assert_eq!(s.arrive(&from(b"c", 9, 1)), Arrival::Next, "another one");
        // A batch sent again after a failed link: every copy dropped, then on in order.
        for seq in [5, 6] {
            assert_eq!(s.arrive(&from(b"b", 1, seq)), Arrival::Duplicate);
        }
        assert_eq!(s.arrive(&from(b"b", 1, 7)), Arrival::Next);
        assert_eq!(s.arrive(&from(b"b", 1, 10)), Arrival::AfterLoss(2));
        assert_eq!(
            s.arrive(&from(b"b", 1, 9)),
            Arrival::Duplicate,
            "never back"
        );
        // A restarted publisher (new epoch) starts a new sequence.
        assert_eq!(s.arrive(&from(b"b", 2, 1)), Arrival::Next);
        assert_eq!(s.arrive(&from(b"c", 9, 2)), Arrival::Next);
    }

    #[test]
    fn senders_are_bounded_forgetting_the_least_recent() {
        let mut s = Senders::default();
        let ids: Vec<Vec<u8>> = (0..=MAX_SENDERS)
            .map(|i| i.to_string().into_bytes())
            .collect();
        for id in &ids[..MAX_SENDERS] {
            s.arrive(&Origin {
                instance: id,
                epoch: 1,
                seq: 1,
            });
        }
        // "0" heard again: "1" is now the least recent and makes room.
        s.arrive(&Origin {
            instance: &ids[0],
            epoch: 1,
            seq: 2,
        });
        s.arrive(&Origin {
            instance: &ids[MAX_SENDERS],
            epoch: 1,
            seq: 1,
        });
        assert_eq!(s.last.len(), MAX_SENDERS);
        assert!(s.last.contains_key(&ids[0]));
        assert!(!s.last.contains_key(&ids[1]));
    }

    fn outbound(n: usize) -> Outbound {
        broadcast(Message::text(n.to_string()))
    }

    #[test]
    fn pending_drops_the_oldest_and_keeps_sequence_numbers_for_resends() {
        let mut p = Pending::new(3);
        for n in 0..3 {
            assert!(!p.push(outbound(n)));
        }
        assert!(p.push(outbound(3)), "full: the oldest makes room");
        let first: Vec<(String, u64)> = p
            .number(2)
            .map(|(o, seq)| match o {
                Outbound::Broadcast { msg, .. } => (msg.to_text().unwrap().to_string(), seq),
                Outbound::Disconnect(_) => unreachable!(),
            })
            .collect();
        assert_eq!(first, [("1".to_string(), 1), ("2".to_string(), 2)]);
        // Not acknowledged: sent again with the same numbers, the next one numbered after them.
        let again: Vec<u64> = p.number(3).map(|(_, seq)| seq).collect();
        assert_eq!(again, [1, 2, 3]);
        p.entries.drain(..3);
        assert!(!p.push(outbound(4)));
        assert_eq!(p.number(1).map(|(_, seq)| seq).collect::<Vec<_>>(), [4]);
    }

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    fn entry(id: &str, fields: &[&[u8]]) -> Value {
        Value::Array(vec![
            bulk(id.as_bytes()),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    /// An entry's id, path and envelope, owned.
    type Owned = (String, Option<String>, Option<Vec<u8>>);

    fn entries_of(reply: &Value) -> redis::RedisResult<Vec<Owned>> {
        let mut out = Vec::new();
        for_each_stream(reply, |entries| {
            for_each_entry(entries, |e| {
                out.push((
                    e.id.to_string(),
                    e.path.map(str::to_string),
                    e.envelope.map(<[u8]>::to_vec),
                ));
            })
        })?;
        Ok(out)
    }

    #[test]
    fn xread_replies_are_read_in_both_protocols() {
        let list = Value::Array(vec![
            entry("1-0", &[b"p", b"/a", b"m", b"\x02x"]),
            entry("1-1", &[b"m", b"y", b"p", b"/b", b"extra", b"z"]),
            entry("2-0", &[b"other", b"v"]),
        ]);
        let want = vec![
            (
                "1-0".to_string(),
                Some("/a".to_string()),
                Some(b"\x02x".to_vec()),
            ),
            (
                "1-1".to_string(),
                Some("/b".to_string()),
                Some(b"y".to_vec()),
            ),
            ("2-0".to_string(), None, None),
        ];
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk(b"wsgate:broadcasts"),
            list.clone(),
        ])]);
        let resp3 = Value::Map(vec![(bulk(b"wsgate:broadcasts"), list)]);
        assert_eq!(entries_of(&resp2).unwrap(), want);
        assert_eq!(entries_of(&resp3).unwrap(), want);
        assert_eq!(entries_of(&Value::Nil).unwrap(), []);
        // Anything else is a broken link, not a panic.
        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk(b"k"), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![
                bulk(b"k"),
                Value::Array(vec![Value::Nil]),
            ])]),
        ] {
            assert!(entries_of(&bad).is_err(), "{bad:?}");
        }
        // XREVRANGE's reply is an entry list itself; empty for a stream that does not exist.
        let mut ids = Vec::new();
        for_each_entry(&Value::Array(vec![entry("7-3", &[])]), |e| {
            ids.push(e.id.to_string())
        })
        .unwrap();
        for_each_entry(&Value::Array(vec![]), |e| ids.push(e.id.to_string())).unwrap();
        assert_eq!(ids, ["7-3"]);
    }

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
