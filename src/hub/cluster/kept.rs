//! Channel history kept in Redis (`history_size` with `[cluster]`), so every instance serves the
//! same history and a restarted one still has it. Per path: a counter of positions
//! (`<prefix>history:pos:<path>`) and a stream capped at `history_size` whose entry ids are the
//! positions (`<prefix>history:<path>`, id `<pos>-1`); for all paths, one epoch
//! (`<prefix>history:epoch`), made with `SET NX` by whichever instance finds it missing, so it
//! changes exactly when Redis lost its data. The publisher keeps a broadcast with [`KEEP`]: one
//! script that gives it its position, adds it to the path's stream and to the backbone stream
//! together, so the backbone carries a path's broadcasts in the order of their positions and
//! every instance (the publishing one too) delivers them from it in that order. A join reads
//! with [`RECALL`], on the bridge's history thread, under a deadline ([`Store::recall`]).

use std::sync::Arc;
use std::time::Duration;

use super::Context;
use super::link::{Link, connect, query};
use super::wire::{Inbound, decode, for_each_entry};
use crate::config::Retention;
use crate::hub::history::{Recalled, SharedHistory, Stamp, unix_ms};
use crate::policy::Recall;
use crossbeam_channel::{Receiver, Sender, select};
use redis::Value;

/// Keeps one broadcast. KEYS: the epoch, the path's position counter, the path's stream, the
/// backbone stream, this publisher process's last sequence number kept. ARGV: a fresh epoch
/// (used if none is set), `history_size`, the backbone's length, the path, the envelope, the
/// sender field (empty: none), the time (ms), the sequence number, the publishing member's id
/// in its process (empty: the admin API), which its own instance does not deliver to. Returns the position, or 0
/// for a resend of one already kept (its sequence number is not above the last kept). A counter
/// behind the stream (evicted, deleted) goes on from the stream's newest position, so the
/// position is always above every kept one.
pub(super) const KEEP: &str = r"
local last = tonumber(redis.call('GET', KEYS[5]) or '0')
if tonumber(ARGV[8]) <= last then return 0 end
redis.call('SET', KEYS[5], ARGV[8], 'EX', 86400)
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[1])
local pos = redis.call('INCR', KEYS[2])
local top = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
if top then
  local newest = tonumber(string.match(top[1], '^(%d+)'))
  if newest and pos <= newest then
    pos = newest + 1
    redis.call('SET', KEYS[2], pos)
  end
end
local kept = {'XADD', KEYS[3], 'MAXLEN', ARGV[2], pos .. '-1', 'm', ARGV[5], 't', ARGV[7]}
local live = {'XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'p', ARGV[4], 'm', ARGV[5],
  'n', pos, 'e', epoch, 't', ARGV[7]}
if ARGV[6] ~= '' then
  table.insert(kept, 'f'); table.insert(kept, ARGV[6])
  table.insert(live, 'f'); table.insert(live, ARGV[6])
end
if ARGV[9] ~= '' then table.insert(live, 'w'); table.insert(live, ARGV[9]) end
redis.call(unpack(kept))
redis.call(unpack(live))
return pos
";

/// Reads a path's history. KEYS: the epoch, the path's position counter, the path's stream.
/// ARGV: a fresh epoch (used if none is set), `last` or `since`, N (the count, or the first
/// position wanted), the most entries to read. Returns `{epoch, last position, entries}`:
/// `last` the newest N, newest first; `since` those from position N on, oldest first.
const RECALL: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local entries
if ARGV[2] == 'last' then
  entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[3])
else
  entries = redis.call('XRANGE', KEYS[3], ARGV[3] .. '-0', '+', 'COUNT', ARGV[4])
end
return {epoch, last, entries}
";

/// The Redis keys of the history.
pub(super) fn epoch_key(prefix: &str) -> String {
    format!("{prefix}history:epoch")
}

pub(super) fn pos_key(prefix: &str, path: &str) -> String {
    format!("{prefix}history:pos:{path}")
}

pub(super) fn stream_key(prefix: &str, path: &str) -> String {
    format!("{prefix}history:{path}")
}

pub(super) fn sent_key(prefix: &str, instance_id: &str, epoch: u64) -> String {
    format!("{prefix}history:sent:{instance_id}:{epoch:016x}")
}

/// A fresh epoch: 16 hex digits, random.
pub(super) fn fresh_epoch() -> String {
    format!("{:016x}", super::new_epoch())
}

/// One join's read: the path, what it asks for, its channel's retention, and where the answer
/// goes.
struct Ask {
    path: String,
    recall: Recall,
    keep: Retention,
    answer: Sender<redis::RedisResult<Recalled>>,
}

/// Most reads waiting for the history thread; a join beyond them is refused at once.
const WAITING: usize = 64;

/// The joins' reads of the history, done by one thread of the bridge (a Redis call needs more
/// stack than a handshake thread has) on one connection, opened when first needed and again
/// after a failure. A join waits at most [`Store::deadline`] for its answer.
pub struct Store {
    asks: Sender<Ask>,
    deadline: Duration,
}

impl Store {
    /// The store, and the thread's loop to run (until the bridge stops).
    pub(super) fn new(ctx: Arc<Context>, client: redis::Client) -> (Store, impl FnOnce()) {
        let (asks, rx) = crossbeam_channel::bounded(WAITING);
        // To connect, then to answer: each within `health_timeout`.
        let deadline = ctx.health_timeout * 2;
        (Store { asks, deadline }, move || serve(&ctx, &client, &rx))
    }
}

impl SharedHistory for Store {
    /// Asks the history thread, and waits at most [`Store`]'s deadline (`health_timeout` to
    /// connect, then as much to read); refused at once when too many joins are waiting.
    fn recall(&self, path: &str, recall: &Recall, keep: Retention) -> Result<Recalled, String> {
        let (answer, rx) = crossbeam_channel::bounded(1);
        let ask = Ask {
            path: path.to_string(),
            recall: recall.clone(),
            keep,
            answer,
        };
        if self.asks.try_send(ask).is_err() {
            return Err("too many history reads waiting for Redis".into());
        }
        match rx.recv_timeout(self.deadline) {
            Ok(answer) => answer.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer from Redis within {:?}", self.deadline)),
        }
    }
}

/// The history thread: answers each ask in turn until the bridge stops.
fn serve(ctx: &Context, client: &redis::Client, asks: &Receiver<Ask>) {
    let mut con = None;
    loop {
        let ask = select! {
            recv(asks) -> ask => match ask {
                Ok(ask) => ask,
                Err(_) => return,
            },
            recv(ctx.stop) -> _ => return,
        };
        let answer = read(ctx, client, &mut con, &ask.path, &ask.recall, ask.keep);
        // The join may have stopped waiting.
        let _ = ask.answer.send(answer);
    }
}

/// One read of `path`'s history on `con` (opened if it is not; closed after a failure).
fn read(
    ctx: &Context,
    client: &redis::Client,
    con: &mut Option<redis::Connection>,
    path: &str,
    recall: &Recall,
    keep: Retention,
) -> redis::RedisResult<Recalled> {
    let size = keep.size.get();
    let (mode, n) = match recall {
        Recall::Last(n) => ("last", (*n).min(size) as u64),
        // A position past the last is told so whatever is read.
        Recall::Since { pos, .. } => ("since", pos.saturating_add(1)),
        Recall::Live => ("last", 0),
    };
    let prefix = &ctx.prefix;
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RECALL)
        .arg(3)
        .arg(epoch_key(prefix))
        .arg(pos_key(prefix, path))
        .arg(stream_key(prefix, path))
        .arg(fresh_epoch())
        .arg(mode)
        .arg(n)
        .arg(size);
    let open = match con.as_mut() {
        Some(open) => open,
        None => con.insert(connect(ctx, client, Link::History)?),
    };
    let reply = match query(open, &cmd) {
        Ok(reply) => reply,
        Err(e) => {
            // Opened again by the next read.
            *con = None;
            return Err(e);
        }
    };
    let mut recalled = parse(&reply)?;
    if mode == "last" {
        recalled.kept.reverse();
    }
    if let Some(ttl) = keep.ttl {
        let oldest = unix_ms().saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(0));
        recalled.kept.retain(|(stamp, _)| stamp.time_ms > oldest);
    }
    Ok(recalled)
}

/// `{epoch, last position, entries}` from [`RECALL`].
fn parse(reply: &Value) -> redis::RedisResult<Recalled> {
    let bad = || {
        redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "unexpected reply shape for a history read",
        ))
    };
    let Value::Array(parts) = reply else {
        return Err(bad());
    };
    let [Value::BulkString(epoch), Value::Int(last), entries] = parts.as_slice() else {
        return Err(bad());
    };
    let epoch = String::from_utf8(epoch.clone()).map_err(|_| bad())?;
    let mut kept = Vec::new();
    let mut broken = false;
    for_each_entry(entries, |entry| {
        let pos = entry
            .id
            .split_once('-')
            .and_then(|(pos, _)| pos.parse::<u64>().ok());
        let time_ms = entry
            .time
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.parse::<u64>().ok());
        let message = entry.envelope.and_then(|e| decode(e, entry.sender).ok());
        match (pos, time_ms, message) {
            (Some(pos), Some(time_ms), Some((_, Inbound::Broadcast(msg, from)))) => kept.push((
                Stamp {
                    pos: Some(pos),
                    epoch: Some(epoch.clone()),
                    time_ms,
                    from,
                },
                msg,
            )),
            _ => broken = true,
        }
    })?;
    if broken {
        return Err(bad());
    }
    Ok(Recalled {
        epoch,
        last_pos: u64::try_from(*last).unwrap_or(0),
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::Message;

    use crate::hub::history::Sender;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn a_history_read_is_parsed_and_a_strange_entry_refused() {
        let out = crate::hub::Outbound::broadcast("/c", Sender::Admin, Message::text("hi"));
        let envelope = super::super::wire::encode("a", 1, 1, &out).unwrap();
        let entry = |id: &str, t: &[u8]| {
            Value::Array(vec![
                bulk(id.as_bytes()),
                Value::Array(vec![
                    bulk(b"m"),
                    bulk(&envelope),
                    bulk(b"t"),
                    bulk(t),
                    bulk(b"f"),
                    bulk(&[2]),
                ]),
            ])
        };
        let reply = Value::Array(vec![
            bulk(b"00ff"),
            Value::Int(4),
            Value::Array(vec![entry("3-1", b"10"), entry("4-1", b"11")]),
        ]);
        let r = parse(&reply).unwrap();
        assert_eq!((r.epoch.as_str(), r.last_pos, r.kept.len()), ("00ff", 4, 2));
        assert_eq!(r.kept[1].0.pos, Some(4));
        assert_eq!(r.kept[1].0.time_ms, 11);
        assert_eq!(r.kept[1].0.from, Sender::Admin);
        assert_eq!(r.kept[0].1, Message::text("hi"));
        let broken = Value::Array(vec![
            bulk(b"00ff"),
            Value::Int(4),
            Value::Array(vec![entry("x-1", b"10")]),
        ]);
        assert!(parse(&broken).is_err());
    }
}
