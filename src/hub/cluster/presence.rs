//! Presence across instances (`[cluster]`). Each process keeps its subscribers in a Redis hash
//! of its own, `<prefix>presence:<instance_id>:<process epoch>`: one field per path with
//! subscribers here (lines `<connections> <user>`, or `<connections>` alone for the anonymous
//! ones), and the field `""` holding the hash's version. The hash expires [`ttl`] after its last
//! write, and the set `<prefix>presence:instances` names the hashes. The presence thread, on one
//! connection of its own, runs [`SYNC`] when this instance's subscribers change (at most every
//! [`COALESCE`]) and at least every `health_check`: it writes what changed and refreshes the
//! expiry, and reads the hashes of the other instances whose version it has not seen.
//!
//! `/presence` adds the last read to this instance's subscribers without waiting for Redis
//! ([`Presences`]); after a failed read, or one older than [`ttl`], it is refused instead. A dead
//! instance's hash expires: its subscribers are gone from every instance's `/presence` within
//! `ttl + health_check`, and each instance tells its enveloped subscribers they left. What one
//! process puts in Redis is bounded by its connections: one line per user and path it serves.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use redis::Value;

use super::Context;
use super::link::{Link, connect, query};
use crate::hub::history::{Presence, Sender as Who};
use crate::hub::presence::merge;
use crate::hub::{PresenceUnavailable, SharedPresence, Tally};

/// How long the thread waits after a change for more before it writes: a wave of joins is
/// one write.
const COALESCE: Duration = Duration::from_millis(50);

/// Writes this instance's hash and reads the others'. KEYS: the set of hashes, this process's
/// hash. ARGV: its expiry (ms), `1` to write it whole, its version, the number N of path/value
/// pairs, N pairs (an empty value: no subscribers there now), then hash/version pairs already
/// read. Returns `{existed, others}`: existed 0 when the hash was not there (it expired, or
/// Redis lost its data), and then it is written only whole; others one `{hash, version}` per
/// other live hash, with its fields when its version is new to the caller. Forgets the hashes
/// that expired.
const SYNC: &str = r"
local set, own = KEYS[1], KEYS[2]
local last = 4 + 2 * tonumber(ARGV[4])
local existed = redis.call('EXISTS', own)
if ARGV[2] == '1' or existed == 1 then
  if ARGV[2] == '1' then redis.call('DEL', own) end
  redis.call('HSET', own, '', ARGV[3])
  for i = 5, last, 2 do
    if ARGV[i + 1] == '' then
      redis.call('HDEL', own, ARGV[i])
    else
      redis.call('HSET', own, ARGV[i], ARGV[i + 1])
    end
  end
  redis.call('PEXPIRE', own, ARGV[1])
  redis.call('SADD', set, own)
end
local known = {}
for i = last + 1, #ARGV, 2 do known[ARGV[i]] = ARGV[i + 1] end
local others = {}
for _, k in ipairs(redis.call('SMEMBERS', set)) do
  if k ~= own then
    local v = redis.call('HGET', k, '')
    if not v then
      redis.call('SREM', set, k)
    elseif known[k] == v then
      table.insert(others, {k, v})
    else
      table.insert(others, {k, v, redis.call('HGETALL', k)})
    end
  end
end
return {existed, others}
";

/// How long a hash outlives its last write: two refreshes and a Redis call.
pub(super) fn ttl(ctx: &Context) -> Duration {
    ctx.health_check * 2 + ctx.health_timeout
}

fn set_key(prefix: &str) -> String {
    format!("{prefix}presence:instances")
}

fn own_key(ctx: &Context) -> String {
    format!(
        "{}presence:{}:{:016x}",
        ctx.prefix, ctx.instance_id, ctx.epoch
    )
}

/// The other instances' subscribers as last read, for `/presence`; and the wake-up of the
/// presence thread.
pub struct Presences {
    changed: Sender<()>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// The other live instances' subscribers, by path.
    by_path: HashMap<String, Tally>,
    /// Until when the last read stands for now; None before the first and after a failed one.
    fresh_until: Option<Instant>,
}

impl Presences {
    /// The shared half, and the thread's loop to run (until the bridge stops).
    pub(super) fn new(ctx: Arc<Context>, client: redis::Client) -> (Arc<Presences>, impl FnOnce()) {
        let (changed, changes) = crossbeam_channel::bounded(1);
        let presences = Arc::new(Presences {
            changed,
            seen: Mutex::default(),
        });
        let shared = Arc::clone(&presences);
        (presences, move || run(&ctx, &client, &shared, &changes))
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SharedPresence for Presences {
    fn others(&self, path: &str) -> Result<Tally, PresenceUnavailable> {
        let seen = self.seen();
        match seen.fresh_until {
            Some(until) if Instant::now() < until => {
                Ok(seen.by_path.get(path).cloned().unwrap_or_default())
            }
            _ => Err(PresenceUnavailable),
        }
    }

    fn changed(&self) {
        // Full: a wake-up is pending already.
        let _ = self.changed.try_send(());
    }
}

/// Another instance's hash as last read.
struct Instance {
    version: String,
    by_path: HashMap<String, Tally>,
}

/// The presence thread's state.
struct PresenceSync {
    own: String,
    set: String,
    ttl_ms: u64,
    con: Option<redis::Connection>,
    /// This instance's hash as last written (path → value); None: write it whole next.
    written: Option<HashMap<String, String>>,
    version: u64,
    others: HashMap<String, Instance>,
    /// False while Redis does not answer (logged once each way).
    up: bool,
}

/// The presence thread: a sync at start, after each change (coalesced) and every
/// `health_check`; at the end, this process's hash is deleted.
fn run(ctx: &Context, client: &redis::Client, shared: &Presences, changes: &Receiver<()>) {
    let mut sync = PresenceSync {
        own: own_key(ctx),
        set: set_key(&ctx.prefix),
        ttl_ms: u64::try_from(ttl(ctx).as_millis()).unwrap_or(u64::MAX),
        con: None,
        written: None,
        version: 0,
        others: HashMap::new(),
        up: true,
    };
    loop {
        sync.once(ctx, client, shared);
        select! {
            recv(changes) -> _ => {
                if !ctx.sleep(COALESCE) {
                    break;
                }
            }
            recv(ctx.stop) -> _ => break,
            default(ctx.health_check) => {}
        }
    }
    sync.goodbye(ctx, client);
}

impl PresenceSync {
    /// One sync; a failure drops the connection and makes `/presence` refuse until the next
    /// one succeeds.
    fn once(&mut self, ctx: &Context, client: &redis::Client, shared: &Presences) {
        // A second round when the hash had expired (Redis restarted, or this process was
        // stopped longer than its expiry): written whole.
        for _ in 0..2 {
            match self.exchange(ctx, client) {
                Ok(true) => break,
                Ok(false) => self.written = None,
                Err(e) => {
                    self.con = None;
                    self.written = None;
                    shared.seen().fresh_until = None;
                    if self.up {
                        self.up = false;
                        log::warn!(
                            "cluster: presence cannot sync with Redis ({e}): /presence answers \
                             503 until it can"
                        );
                    }
                    return;
                }
            }
        }
        if !self.up {
            self.up = true;
            log::info!("cluster: presence syncs with Redis again");
        }
        let mut seen = shared.seen();
        seen.by_path = self.merged();
        seen.fresh_until = Some(Instant::now() + ttl(ctx));
    }

    /// Runs [`SYNC`] with what changed here; takes in what changed elsewhere. False when the
    /// hash was not there (nothing written: it is to be written whole).
    fn exchange(&mut self, ctx: &Context, client: &redis::Client) -> redis::RedisResult<bool> {
        let now: HashMap<String, String> = ctx
            .hub
            .presence_by_path()
            .into_iter()
            .map(|(path, tally)| (path, encode(&tally)))
            .collect();
        let (whole, changes) = match &self.written {
            None => (true, now.clone().into_iter().collect()),
            Some(old) => (false, changes(old, &now)),
        };
        if whole || !changes.is_empty() {
            self.version += 1;
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SYNC)
            .arg(2)
            .arg(&self.set)
            .arg(&self.own)
            .arg(self.ttl_ms)
            .arg(if whole { "1" } else { "0" })
            .arg(self.version)
            .arg(changes.len());
        for (path, value) in &changes {
            cmd.arg(path).arg(value);
        }
        for (key, instance) in &self.others {
            cmd.arg(key).arg(&instance.version);
        }
        let con = match self.con.as_mut() {
            Some(con) => con,
            None => self.con.insert(connect(ctx, client, Link::Presence)?),
        };
        let reply = query(con, &cmd)?;
        let (existed, others) = parse(&reply).ok_or_else(bad_reply)?;
        let written = whole || existed;
        if written {
            self.written = Some(now);
        }
        // This process's own hash gone means Redis may have lost every instance's: the others
        // missing now are not known to be dead, and are not told as leaving.
        self.take_in(ctx, others, existed);
        Ok(written)
    }

    /// Keeps what the other instances hold now; the subscribers of one whose hash is gone are
    /// told to this instance's enveloped subscribers as leaving, with `tell`.
    fn take_in(&mut self, ctx: &Context, others: Vec<Read>, tell: bool) {
        let mut live = HashMap::with_capacity(others.len());
        for read in others {
            let instance = match (read.fields, self.others.remove(&read.key)) {
                (Some(fields), _) => Instance {
                    version: read.version,
                    by_path: fields,
                },
                (None, Some(known)) => known,
                // Its fields were not sent, yet it is not known here: read it whole next time.
                (None, None) => continue,
            };
            live.insert(read.key, instance);
        }
        let gone = std::mem::replace(&mut self.others, live);
        for gone in gone.into_values().filter(|_| tell) {
            for (path, tally) in gone.by_path {
                if !(ctx.accepts)(&path) {
                    continue;
                }
                for (user, n) in tally {
                    let who = user.map_or(Who::Anonymous, Who::User);
                    for _ in 0..n {
                        ctx.hub.deliver_notice(&path, &who, Presence::Leave);
                    }
                }
            }
        }
    }

    /// Every other instance's subscribers, by path.
    fn merged(&self) -> HashMap<String, Tally> {
        let mut by_path: HashMap<String, Tally> = HashMap::new();
        for instance in self.others.values() {
            for (path, tally) in &instance.by_path {
                merge(by_path.entry(path.clone()).or_default(), tally.clone());
            }
        }
        by_path
    }

    /// Deletes this process's hash (the bridge stops): its subscribers are gone at once, not
    /// at its expiry. One try.
    fn goodbye(&mut self, ctx: &Context, client: &redis::Client) {
        let con = match self.con.take() {
            Some(con) => Some(con),
            None => connect(ctx, client, Link::Presence).ok(),
        };
        if let Some(mut con) = con {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg("redis.call('DEL', KEYS[2]) redis.call('SREM', KEYS[1], KEYS[2])")
                .arg(2)
                .arg(&self.set)
                .arg(&self.own);
            if let Err(e) = query(&mut con, &cmd) {
                log::debug!("cluster: presence could not delete its hash: {e}");
            }
        }
    }
}

/// What changed from `old` to `now`: new or changed paths with their value, paths gone with an
/// empty one.
fn changes(
    old: &HashMap<String, String>,
    now: &HashMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = now
        .iter()
        .filter(|(path, value)| old.get(*path) != Some(value))
        .map(|(path, value)| (path.clone(), value.clone()))
        .collect();
    for path in old.keys().filter(|path| !now.contains_key(*path)) {
        out.insert(path.clone(), String::new());
    }
    out
}

/// One path's subscribers as a hash field's value: `<connections> <user>` lines, `<connections>`
/// alone for the anonymous ones. (User names hold no spaces or line breaks.)
fn encode(tally: &Tally) -> String {
    let lines: Vec<String> = tally
        .iter()
        .map(|(user, n)| match user {
            Some(user) => format!("{n} {user}"),
            None => n.to_string(),
        })
        .collect();
    lines.join("\n")
}

/// [`encode`] read back; a line that does not parse is left out.
fn decode(value: &str) -> Tally {
    value
        .lines()
        .filter_map(|line| match line.split_once(' ') {
            Some((n, user)) => Some((Some(user.to_string()), n.parse().ok()?)),
            None => Some((None, line.parse().ok()?)),
        })
        .collect()
}

/// One other instance in [`SYNC`]'s answer.
struct Read {
    key: String,
    version: String,
    /// Its paths, when its version is new to this process.
    fields: Option<HashMap<String, Tally>>,
}

fn bad_reply() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "unexpected reply shape for a presence sync",
    ))
}

/// `{existed, others}` from [`SYNC`].
fn parse(reply: &Value) -> Option<(bool, Vec<Read>)> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    };
    let Value::Array(parts) = reply else {
        return None;
    };
    let [Value::Int(existed), Value::Array(others)] = parts.as_slice() else {
        return None;
    };
    let mut out = Vec::with_capacity(others.len());
    for other in others {
        let Value::Array(other) = other else {
            return None;
        };
        let (key, version, fields) = match other.as_slice() {
            [k, v] => (text(k)?, text(v)?, None),
            [k, v, Value::Array(fields)] => {
                let mut by_path = HashMap::new();
                for pair in fields.chunks_exact(2) {
                    let (path, value) = (text(&pair[0])?, text(&pair[1])?);
                    if !path.is_empty() {
                        by_path.insert(path, decode(&value));
                    }
                }
                (text(k)?, text(v)?, Some(by_path))
            }
            _ => return None,
        };
        out.push(Read {
            key,
            version,
            fields,
        });
    }
    Some((*existed == 1, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_tally_round_trips_through_its_hash_value() {
        let tally: Tally = vec![
            (None, 2),
            (Some("alice".into()), 1),
            (Some("b.o-b@x".into()), 3),
        ];
        assert_eq!(encode(&tally), "2\n1 alice\n3 b.o-b@x");
        assert_eq!(decode(&encode(&tally)), tally);
        assert_eq!(decode("x\n1 bob\n-1"), [(Some("bob".into()), 1)]);
    }

    #[test]
    fn only_what_changed_is_written_and_a_path_gone_is_emptied() {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(p, v)| (p.to_string(), v.to_string()))
                .collect()
        };
        let old = map(&[("/a", "1 al"), ("/b", "2"), ("/c", "1 cy")]);
        let now = map(&[("/a", "1 al"), ("/b", "3"), ("/d", "1 di")]);
        let got: Vec<(String, String)> = changes(&old, &now).into_iter().collect();
        let want =
            [("/b", "3"), ("/c", ""), ("/d", "1 di")].map(|(p, v)| (p.to_string(), v.to_string()));
        assert_eq!(got, want);
    }

    #[test]
    fn a_sync_answer_is_parsed_and_a_strange_one_refused() {
        let reply = Value::Array(vec![
            Value::Int(1),
            Value::Array(vec![
                Value::Array(vec![bulk("k1"), bulk("3")]),
                Value::Array(vec![
                    bulk("k2"),
                    bulk("7"),
                    Value::Array(vec![bulk(""), bulk("7"), bulk("/c"), bulk("1 bob\n2")]),
                ]),
            ]),
        ]);
        let (existed, others) = parse(&reply).unwrap();
        assert!(existed);
        assert_eq!(others.len(), 2);
        assert!(others[0].fields.is_none());
        let fields = others[1].fields.as_ref().unwrap();
        assert_eq!(fields.len(), 1, "the version field is no path");
        assert_eq!(fields["/c"], [(Some("bob".into()), 1), (None, 2)]);
        assert!(parse(&Value::Array(vec![Value::Int(1)])).is_none());
        assert!(
            parse(&Value::Array(vec![
                Value::Int(0),
                Value::Array(vec![bulk("k")])
            ]))
            .is_none()
        );
    }
}
