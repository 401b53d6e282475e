//! The publisher link: the pending list it moves the hub's queue into (bounded, the oldest
//! dropped and counted, sequence numbers fixed at first send), pipelined `XADD`s under one
//! deadline, `PING` while idle, and holding the queue while Redis is down.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};
use redis::Value;

use super::Context;
use super::link::{Link, Watch, connect};
use super::wire::{FIELD_ENVELOPE, FIELD_PATH, encode, entry_path};
use crate::hub::Outbound;
use crate::ops::metrics::Counter;
use crate::ops::metrics::Metrics;

/// Most broadcasts sent in one pipelined round trip.
const BATCH: usize = 64;
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
pub(super) fn run(ctx: &Context, client: &redis::Client, queue: &Receiver<Outbound>) {
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

#[cfg(test)]
mod tests {
    use tungstenite::Message;

    use super::*;

    fn outbound(n: usize) -> Outbound {
        Outbound::broadcast("/c", Message::text(n.to_string()))
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
}
