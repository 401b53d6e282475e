//! The publisher link: batches from the front of the publish queue ([`Queue`]), numbered at
//! first send, in pipelined `XADD`s (a broadcast kept in Redis: the `kept` script) under one
//! deadline; `PING` while idle; a batch Redis did not
//! acknowledge goes back to the queue's front. A read interrupted by a signal keeps the link.

use std::time::{Duration, Instant};

use crossbeam_channel::select;
use redis::Value;

use super::Context;
use super::kept::{KEEP, epoch_key, fresh_epoch, pos_key, sent_key, stream_key as history_key};
use super::link::{Link, MAX_INTERRUPTS, Watch, connect, interrupted};
use super::queue::Queue;
use super::wire::{FIELD_ENVELOPE, FIELD_PATH, FIELD_SENDER, encode, encode_sender, entry_path};
use crate::hub::Outbound;
use crate::ops::metrics::Counter;

/// Most broadcasts sent in one pipelined round trip.
pub(super) const BATCH: usize = 64;

/// The next sequence numbers of this process's entries: broadcasts and disconnects are one
/// sequence, presence notices another, so an instance that does not know the notices (an older
/// wsgate, which ignores them) sees no gap in the broadcasts.
struct Sequences {
    broadcasts: u64,
    notices: u64,
}

impl Sequences {
    /// The number of `out`, sent the first time.
    fn number(&mut self, out: &Outbound) -> u64 {
        let next = match out {
            Outbound::Presence { .. } => &mut self.notices,
            Outbound::Broadcast { .. } | Outbound::Disconnect(_) => &mut self.broadcasts,
        };
        let seq = *next;
        *next += 1;
        seq
    }
}

/// The publisher thread: connect, send the queue in pipelined `XADD`s, keep the link checked
/// while idle; while Redis is unreachable the queue keeps the newest broadcasts.
pub(super) fn run(ctx: &Context, client: &redis::Client, queue: &Queue) {
    let mut watch = Watch::new(Link::Publisher);
    let mut next_seq = Sequences {
        broadcasts: 1,
        notices: 1,
    };
    loop {
        let error = match connect(ctx, client, Link::Publisher) {
            Ok(mut con) => {
                let detail = match queue.len() {
                    0 => String::new(),
                    n => format!("; sending {n} queued broadcasts"),
                };
                watch.up(ctx, &detail);
                match publish_until_error(ctx, &mut con, queue, &mut next_seq, &mut watch) {
                    Some(e) => e,
                    None => return,
                }
            }
            Err(e) => e,
        };
        let delay = watch.down(ctx, &error);
        if !hold_for(ctx, queue, delay) {
            return;
        }
    }
}

/// Publishes until Redis fails (returns the error) or the bridge stops (`None`). Sends `PING`
/// when the link has had no answer for `health_check`.
fn publish_until_error(
    ctx: &Context,
    con: &mut redis::Connection,
    queue: &Queue,
    next_seq: &mut Sequences,
    watch: &mut Watch,
) -> Option<redis::RedisError> {
    let mut answered = Instant::now();
    let maxlen = ctx.stream_length.to_string();
    loop {
        if ctx.stopped() {
            return None;
        }
        let mut batch = queue.take(BATCH);
        if batch.is_empty() {
            watch.report_drops(ctx);
            let idle = ctx.health_check.saturating_sub(answered.elapsed());
            if idle.is_zero() {
                if let Err(e) = exec_within(con, redis::pipe().cmd("PING"), 1, ctx.health_timeout) {
                    return Some(e);
                }
                answered = Instant::now();
                continue;
            }
            select! {
                recv(queue.rung()) -> rung => if rung.is_err() { return None },
                recv(ctx.stop) -> _ => return None,
                default(idle) => {}
            }
            continue;
        }
        let mut pipe = redis::pipe();
        // Never dropped: the hub queues data messages only, and instance ids fit the envelope.
        batch.retain_mut(|e| {
            let seq = *e.seq.get_or_insert_with(|| next_seq.number(&e.out));
            let Some(envelope) = encode(&ctx.instance_id, ctx.epoch, seq, &e.out) else {
                ctx.metrics.bump(Counter::ClusterNotForwarded, 1);
                return false;
            };
            if keep(&mut pipe, ctx, &e.out, &envelope, seq, &maxlen) {
                return true;
            }
            pipe.cmd("XADD")
                .arg(&ctx.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(&maxlen)
                .arg("*")
                .arg(FIELD_PATH)
                .arg(entry_path(&e.out))
                .arg(FIELD_ENVELOPE)
                .arg(envelope);
            if let Some(sender) = encode_sender(&e.out) {
                pipe.arg(FIELD_SENDER).arg(sender);
            }
            true
        });
        match exec_within(con, &pipe, batch.len(), ctx.health_timeout) {
            Ok(acked) => {
                ctx.metrics.bump(Counter::ClusterForwarded, acked as u64);
                batch.drain(..acked);
                answered = Instant::now();
                if !batch.is_empty() {
                    queue.give_back(batch);
                }
                watch.report_drops(ctx);
            }
            // Whether Redis added some of them is unknown: all go back and are sent again with
            // the same sequence numbers, which subscribers use to drop the copies.
            Err(e) => {
                queue.give_back(batch);
                return Some(e);
            }
        }
    }
}

/// Adds the `kept` script to `pipe` for a broadcast on a channel whose history Redis keeps: it is
/// kept in the path's history and sent on the backbone together. False (nothing added) for any
/// other entry.
fn keep(
    pipe: &mut redis::Pipeline,
    ctx: &Context,
    out: &Outbound,
    envelope: &[u8],
    seq: u64,
    maxlen: &str,
) -> bool {
    let Outbound::Broadcast {
        path,
        kept: Some(kept),
        ..
    } = out
    else {
        return false;
    };
    let prefix = &ctx.prefix;
    pipe.cmd("EVAL")
        .arg(KEEP)
        .arg(5)
        .arg(epoch_key(prefix))
        .arg(pos_key(prefix, path))
        .arg(history_key(prefix, path))
        .arg(&ctx.stream)
        .arg(sent_key(prefix, &ctx.instance_id, ctx.epoch))
        .arg(fresh_epoch())
        .arg(kept.size)
        .arg(maxlen)
        .arg(path)
        .arg(envelope)
        .arg(encode_sender(out).unwrap_or_default())
        .arg(kept.time_ms)
        .arg(seq)
        .arg(kept.member.map(|m| m.to_string()).unwrap_or_default());
    true
}

/// Sends `pipe` and reads its `n` answers, all within one `timeout`; returns how many of its
/// first commands Redis is known to have done (all `n` unless a read was interrupted). (The
/// redis crate's own pipeline applies its read timeout to each answer and reads on after one
/// expires, so a frozen Redis would hold a batch of 64 for 64 timeouts.)
///
/// A read interrupted by a signal (EINTR: this process was stopped and continued) is no failure
/// of the link. The redis crate then skips the next reply it reads, so a `PING` goes out whose
/// reply takes the skipped one's place in the count; the command whose reply was skipped, and
/// those after it, count as not known to be done and are sent again (the subscribers drop
/// copies by sequence number). The deadline starts again: the time stopped is not Redis's.
fn exec_within(
    con: &mut redis::Connection,
    pipe: &redis::Pipeline,
    n: usize,
    timeout: Duration,
) -> redis::RedisResult<usize> {
    let mut deadline = Instant::now() + timeout;
    con.set_write_timeout(Some(timeout))?;
    con.send_packed_command(&pipe.get_packed_pipeline())?;
    // The socket's read timeout is lowered as the deadline nears, by steps of a tenth (not
    // before every answer: most are parsed from one buffered read), so the batch takes at most
    // `timeout` and a tenth.
    con.set_read_timeout(Some(timeout))?;
    let mut read_timeout = timeout;
    let (mut read, mut known_done, mut interrupts) = (0, n, 0);
    while read < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
        }
        if read_timeout.saturating_sub(left) > timeout / 10 {
            con.set_read_timeout(Some(left))?;
            read_timeout = left;
        }
        match con.recv_response() {
            Ok(Value::ServerError(e)) => return Err(e.into()),
            Ok(_) => read += 1,
            Err(e) if interrupted(&e) && interrupts < MAX_INTERRUPTS => {
                interrupts += 1;
                known_done = known_done.min(read);
                con.send_packed_command(&redis::cmd("PING").get_packed_command())?;
                deadline = Instant::now() + timeout;
                con.set_read_timeout(Some(timeout))?;
                read_timeout = timeout;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(known_done)
}

/// Waits `delay` while Redis is down (the queue keeps taking broadcasts meanwhile). False when
/// the bridge stops or the hub let go of the queue.
fn hold_for(ctx: &Context, queue: &Queue, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        select! {
            recv(queue.rung()) -> rung => if rung.is_err() { return false },
            recv(ctx.stop) -> _ => return false,
            default(left) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Filter;
    use crate::hub::history::{Presence, Sender};

    #[test]
    fn presence_notices_are_numbered_apart_from_broadcasts_and_disconnects() {
        let mut seq = Sequences {
            broadcasts: 1,
            notices: 1,
        };
        let broadcast =
            Outbound::broadcast("/c", Sender::Anonymous, tungstenite::Message::text("x"));
        let notice = Outbound::Presence {
            path: "/c".into(),
            from: Sender::Anonymous,
            what: Presence::Leave,
        };
        let numbers = [
            seq.number(&broadcast),
            seq.number(&notice),
            seq.number(&Outbound::Disconnect(Filter::default())),
            seq.number(&notice),
            seq.number(&broadcast),
        ];
        assert_eq!(numbers, [1, 1, 2, 2, 3]);
    }
}
