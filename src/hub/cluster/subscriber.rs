//! The subscriber link: `XREAD BLOCK` after the last entry seen (kept across reconnects), each
//! other process's message delivered to the hub once and in order ([`Senders`] drops copies
//! and counts gaps), its disconnects carried out, bad entries and losses logged sparingly, and
//! another process using this instance's id reported ([`Clash`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::Value;

use super::Context;
use super::link::{Link, Watch, connect, connection_name, query};
use super::wire::{
    BadEnvelope, Inbound, Stamp, StreamEntry, decode, for_each_entry, for_each_stream,
};
use crate::hub::query::query_string;
use crate::ops::metrics::Counter;

/// How long the subscriber's `XREAD` blocks: how soon it notices shutdown while Redis is quiet.
/// Redis answers (empty) at its end, which is the subscriber link's health check.
const POLL: Duration = Duration::from_millis(250);
/// Most stream entries read in one `XREAD`: the subscriber holds up to this many messages at
/// once (counted in the memory budget).
const READ_BATCH: usize = 128;
/// Most publishers whose sequence the subscriber tracks; the one heard from least recently is
/// forgotten first (each restart of a publisher with a default instance id is a new one).
const MAX_SENDERS: usize = 1024;
/// At most one "lost" warning per this long; the rest are summed into the next one.
const LOST_WARN_EVERY: Duration = Duration::from_secs(10);
/// How often `CLIENT LIST` is read for another subscriber connection with this instance's name.
pub(super) const CLIENT_LIST_EVERY: Duration = Duration::from_secs(3);
/// A reported id clash ends when no sign of the other process was seen for this long (several
/// `CLIENT LIST` reads).
pub(super) const CLASH_CLEAR: Duration = Duration::from_secs(10);
/// A subscriber connection idle longer than this is a dead one Redis has not noticed yet (a
/// live subscriber's `XREAD` blocks for [`POLL`] at a time), not another process.
const STALE_IDLE_SECS: u64 = 10;
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// The next one from that publisher (or the first heard from it): deliver.
    Next,
    /// Deliver; this many before it never arrived.
    AfterLoss(u64),
    /// At or below the last one delivered from that publisher: an entry sent again, drop it.
    Duplicate,
}

/// The last sequence number delivered from each publisher process (instance id and epoch),
/// bounded: [`MAX_SENDERS`].
#[derive(Default)]
struct Senders {
    /// (Instance id, epoch) -> (last sequence number, when last heard from on `clock`).
    last: HashMap<(Vec<u8>, u64), (u64, u64)>,
    clock: u64,
}

impl Senders {
    fn arrive(&mut self, origin: &Stamp<'_>) -> Arrival {
        self.clock += 1;
        let key = (origin.instance.to_vec(), origin.epoch);
        if let Some((seq, heard)) = self.last.get_mut(&key) {
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
        if self.last.len() >= MAX_SENDERS {
            let oldest = self
                .last
                .iter()
                .min_by_key(|(_, v)| v.1)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.last.remove(&oldest);
            }
        }
        self.last.insert(key, (origin.seq, self.clock));
        Arrival::Next
    }
}

/// Another process using this instance's id: when a sign of it was last seen, and whether it is
/// reported now.
#[derive(Default)]
struct Clash {
    last_seen: Option<Instant>,
    reported: bool,
    /// When `CLIENT LIST` was last read on this connection; `None` when Redis refuses it (an
    /// ACL), so only the stream can tell.
    listed_at: Option<Instant>,
    /// This connection's own `CLIENT ID`.
    own_id: Option<i64>,
}

impl Clash {
    /// A sign of the other process (`how`); the first of a clash is reported.
    fn seen(&mut self, ctx: &Context, how: &str) {
        self.last_seen = Some(Instant::now());
        if !self.reported {
            self.reported = true;
            ctx.links.clash.store(true, Ordering::Release);
            log::warn!(
                "cluster: another process uses this instance's id `{}` ({how}); its broadcasts \
                 are still delivered here, but give every instance its own [cluster] \
                 instance_id (or leave it unset for a unique default)",
                ctx.instance_id.escape_debug()
            );
        }
    }

    /// Ends a reported clash once no sign of it was seen for [`CLASH_CLEAR`].
    fn expire(&mut self, ctx: &Context) {
        if self.reported && self.last_seen.is_none_or(|t| t.elapsed() >= CLASH_CLEAR) {
            self.reported = false;
            ctx.links.clash.store(false, Ordering::Release);
            log::info!(
                "cluster: no other process seen with this instance's id `{}` for {}s; the clash \
                 is over",
                ctx.instance_id.escape_debug(),
                CLASH_CLEAR.as_secs()
            );
        }
    }

    /// Reads `CLIENT LIST` when it is due and counts the other live subscriber connections named
    /// as this instance's.
    fn check_client_list(
        &mut self,
        ctx: &Context,
        con: &mut redis::Connection,
    ) -> redis::RedisResult<()> {
        let (Some(listed_at), Some(own_id)) = (self.listed_at, self.own_id) else {
            return Ok(());
        };
        if listed_at.elapsed() < CLIENT_LIST_EVERY {
            return Ok(());
        }
        self.listed_at = Some(Instant::now());
        let mut list = redis::cmd("CLIENT");
        list.arg("LIST").arg("TYPE").arg("normal");
        let text = match query(con, &list) {
            Ok(Value::BulkString(text)) => String::from_utf8_lossy(&text).into_owned(),
            Ok(Value::VerbatimString { text, .. }) => text,
            Ok(_) => return Ok(()),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                return Err(e);
            }
            Err(e) => {
                log::debug!(
                    "cluster: cannot read CLIENT LIST ({e}); id clashes are seen in the stream only"
                );
                self.listed_at = None;
                return Ok(());
            }
        };
        let name = connection_name(Link::Subscriber, &ctx.instance_id);
        let others = others_named(&text, &name, own_id);
        if others > 0 {
            self.seen(
                ctx,
                &format!("CLIENT LIST shows {others} more subscriber connection(s) named `{name}`"),
            );
        }
        Ok(())
    }
}

/// How many live connections in a `CLIENT LIST` text are named `name` and are not `own_id`.
fn others_named(list: &str, name: &str, own_id: i64) -> usize {
    list.lines()
        .filter(|line| {
            let field = |key: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
            };
            field("name") == Some(name)
                && field("id").and_then(|id| id.parse::<i64>().ok()) != Some(own_id)
                && field("idle")
                    .and_then(|idle| idle.parse::<u64>().ok())
                    .is_some_and(|idle| idle <= STALE_IDLE_SECS)
        })
        .count()
}

/// What the subscriber keeps across reconnects.
struct Reader {
    /// The id of the last stream entry read; `None` until the first connection finds the end of
    /// the stream.
    last_id: Option<String>,
    senders: Senders,
    /// The presence notices' own sequences (see [`super::publisher`]).
    notices: Senders,
    warned_bad: bool,
    /// Losses not yet logged, and when the last warning was.
    lost_unlogged: u64,
    lost_logged_at: Option<Instant>,
    clash: Clash,
}

/// The subscriber thread: read the stream, deliver, and on failure retry with backoff.
pub(super) fn run(ctx: &Context, client: &redis::Client) {
    let mut watch = Watch::new(Link::Subscriber);
    let mut reader = Reader::new();
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
            let mut newest = redis::cmd("XREVRANGE");
            newest
                .arg(&ctx.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
            let last = query(&mut con, &newest)?;
            let mut id = "0-0".to_string();
            for_each_entry(&last, |entry| id = entry.id.to_string())?;
            let detail = format!("; reading the stream `{}` after entry {id}", ctx.stream);
            (id, detail)
        }
    };
    // This connection's id, so that `CLIENT LIST` can tell it from another process's.
    reader.clash.own_id = match query(&mut con, redis::cmd("CLIENT").arg("ID")) {
        Ok(Value::Int(id)) => Some(id),
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => return Err(e),
        _ => None,
    };
    reader.clash.listed_at = Some(Instant::now());
    con.set_read_timeout(Some(POLL + ctx.health_timeout))?;
    watch.up(ctx, &detail);
    let mut last_id = from;
    loop {
        reader.last_id = Some(last_id.clone());
        if ctx.stopped() {
            return Ok(());
        }
        reader.clash.check_client_list(ctx, &mut con)?;
        reader.clash.expire(ctx);
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT")
            .arg(READ_BATCH)
            .arg("BLOCK")
            .arg(POLL.as_millis() as u64)
            .arg("STREAMS")
            .arg(&ctx.stream)
            .arg(&last_id);
        let reply = query(&mut con, &read)?;
        // Nil when nothing came within the block time.
        for_each_stream(&reply, |entries| {
            for_each_entry(entries, |entry| {
                last_id.clear();
                last_id.push_str(entry.id);
                match (entry.path, entry.envelope) {
                    (Some(path), Some(envelope)) => reader.handle(ctx, path, envelope, &entry),
                    _ => reader.bad(ctx, "?", &BadEnvelope::Fields),
                }
            })
        })?;
        reader.log_lost(ctx);
    }
}

/// A kept broadcast's position, epoch and time from its backbone entry (`n`, `e`, `t`).
fn kept_position(entry: &StreamEntry<'_>) -> Option<(u64, String, u64)> {
    let number = |f: Option<&[u8]>| std::str::from_utf8(f?).ok()?.parse::<u64>().ok();
    let epoch = std::str::from_utf8(entry.epoch?).ok()?.to_string();
    Some((number(entry.pos)?, epoch, number(entry.time)?))
}

impl Reader {
    /// A reader that has read nothing yet.
    fn new() -> Reader {
        Reader {
            last_id: None,
            senders: Senders::default(),
            notices: Senders::default(),
            warned_bad: false,
            lost_unlogged: 0,
            lost_logged_at: None,
            clash: Clash::default(),
        }
    }

    /// Delivers one entry unless it is this instance's own, a copy, or for no channel here.
    /// A broadcast kept in Redis (its entry has a position) is delivered here too when it is
    /// this process's own, but not to the member that published it.
    fn handle(&mut self, ctx: &Context, path: &str, envelope: &[u8], entry: &StreamEntry<'_>) {
        let (origin, message) = match decode(envelope, entry.sender) {
            Ok(decoded) => decoded,
            Err(why) => return self.bad(ctx, path, &why),
        };
        let kept = kept_position(entry);
        let mut publisher = None;
        if origin.instance == ctx.instance_id.as_bytes() {
            if origin.epoch == ctx.epoch {
                if kept.is_none() {
                    return; // ours: delivered locally already
                }
                publisher = entry
                    .member
                    .and_then(|m| std::str::from_utf8(m).ok())
                    .and_then(|m| m.parse().ok());
            } else {
                self.clash.seen(ctx, "its broadcasts are in the stream");
            }
        }
        if let Inbound::Presence(what, who) = &message {
            // On a sequence of their own: a copy is dropped, a gap (trimmed) is no loss counted.
            if self.notices.arrive(&origin) != Arrival::Duplicate && (ctx.accepts)(path) {
                ctx.hub.deliver_notice(path, who, *what);
            }
            return;
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
        let (message, sender) = match message {
            Inbound::Broadcast(message, sender) => (message, sender),
            Inbound::Disconnect(filter) => {
                let n = ctx.hub.disconnect(&filter);
                ctx.metrics.bump(Counter::AdminDisconnects, n as u64);
                log::info!(
                    "cluster: disconnect from instance `{}` ({}) closed={n}",
                    String::from_utf8_lossy(origin.instance).escape_debug(),
                    query_string(&filter)
                );
                return;
            }
            // Told above.
            Inbound::Presence(..) => return,
        };
        if (ctx.accepts)(path) {
            match kept {
                Some((pos, epoch, time_ms)) => {
                    let stamp = crate::hub::history::Stamp {
                        pos: Some(pos),
                        epoch: Some(epoch),
                        time_ms,
                        from: sender,
                    };
                    ctx.hub.deliver_kept(path, publisher, &stamp, &message);
                }
                None => ctx.hub.deliver(path, sender, &message),
            }
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
    use crate::config::{Mode, SlowConsumer};
    use crate::hub::history::{Presence, Sender};
    use crate::hub::{Holder, Intake, Outbound};
    use tungstenite::Message;

    #[test]
    fn presence_notices_are_told_once_and_leave_the_broadcasts_sequence_alone() {
        let (ctx, _keep) = super::super::test_context();
        let intake = Intake {
            outbox: 8,
            slow_consumer: SlowConsumer::Disconnect,
            max_message: 1024,
            envelope: true,
            history: None,
            presence: true,
        };
        let here = ctx
            .hub
            .join("/c", Mode::Broadcast, intake, Holder::default())
            .unwrap()
            .unwrap();
        let mut reader = Reader::new();
        let bob = Sender::User("bob".into());
        let joined = Outbound::Presence {
            path: "/c".into(),
            from: bob.clone(),
            what: Presence::Join,
        };
        // As instance `b` numbers them: broadcasts 1 and 2, the notice 1 of its own sequence,
        // sent twice (a batch Redis did not acknowledge goes again).
        let entries = [
            (
                Outbound::broadcast("/c", bob.clone(), Message::text("one")),
                1,
            ),
            (joined, 1),
            (
                Outbound::Presence {
                    path: "/c".into(),
                    from: bob.clone(),
                    what: Presence::Join,
                },
                1,
            ),
            (Outbound::broadcast("/c", bob, Message::text("two")), 2),
        ];
        for (out, seq) in &entries {
            let envelope = super::super::wire::encode("b", 7, *seq, out).unwrap();
            let sender = super::super::wire::encode_sender(out);
            let entry = StreamEntry {
                id: "1-1",
                path: Some("/c"),
                envelope: Some(&envelope),
                sender: sender.as_deref(),
                time: None,
                pos: None,
                epoch: None,
                member: None,
            };
            reader.handle(&ctx, "/c", &envelope, &entry);
        }
        let types: Vec<String> = std::iter::from_fn(|| here.next_queued().ok())
            .map(|q| {
                let text = q.msg.to_text().unwrap().to_string();
                text.split('"').nth(3).unwrap().to_string()
            })
            .collect();
        assert_eq!(types, ["message", "join", "message"]);
        assert_eq!(ctx.metrics.count(Counter::ClusterLost), 0);
    }

    fn from(instance: &'static [u8], epoch: u64, seq: u64) -> Stamp<'static> {
        Stamp {
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
            s.arrive(&Stamp {
                instance: id,
                epoch: 1,
                seq: 1,
            });
        }
        // "0" heard again: "1" is now the least recent and makes room.
        s.arrive(&Stamp {
            instance: &ids[0],
            epoch: 1,
            seq: 2,
        });
        s.arrive(&Stamp {
            instance: &ids[MAX_SENDERS],
            epoch: 1,
            seq: 1,
        });
        assert_eq!(s.last.len(), MAX_SENDERS);
        assert!(s.last.contains_key(&(ids[0].clone(), 1)));
        assert!(!s.last.contains_key(&(ids[1].clone(), 1)));
    }

    #[test]
    fn two_processes_with_one_id_keep_their_own_sequences() {
        let mut s = Senders::default();
        for seq in 1..=3 {
            assert_eq!(s.arrive(&from(b"a", 1, seq)), Arrival::Next);
            assert_eq!(s.arrive(&from(b"a", 2, seq)), Arrival::Next);
        }
        assert_eq!(s.arrive(&from(b"a", 1, 3)), Arrival::Duplicate);
        assert_eq!(s.arrive(&from(b"a", 2, 2)), Arrival::Duplicate);
    }

    #[test]
    fn client_list_counts_other_live_connections_with_the_name() {
        let list = "id=3 addr=127.0.0.1:1 name=wsgate-subscriber:a age=9 idle=0 flags=b\n\
                    id=4 addr=127.0.0.1:2 name=wsgate-subscriber:a age=9 idle=1 flags=b\n\
                    id=5 addr=127.0.0.1:3 name=wsgate-subscriber:a age=99 idle=60 flags=b\n\
                    id=6 addr=127.0.0.1:4 name=wsgate-subscriber:ab age=9 idle=0 flags=b\n\
                    id=7 addr=127.0.0.1:5 name=wsgate-publisher:a age=9 idle=0 flags=N\n";
        let name = connection_name(Link::Subscriber, "a");
        assert_eq!(others_named(list, &name, 3), 1, "4: 3 is ours, 5 is stale");
        assert_eq!(others_named(list, &name, 4), 1);
        assert_eq!(others_named(list, &name, 8), 2);
        assert_eq!(others_named("", &name, 3), 0);
    }
}
