//! Channel history: the last broadcasts of each path whose channel keeps them (`history_size`,
//! `history_ttl`), each with its position in this process's epoch, its time and its sender as
//! the server authenticated it; and the envelope (`wsgate.v1.json`) that carries them to the
//! clients that ask for it. A path's ring is locked across its broadcast's fan-out and across a
//! join's replay, so positions reach every subscriber in order and a recovery neither misses
//! nor repeats a broadcast. Every kept byte is charged to the memory cap (the path's own
//! account, within [`HISTORY_SHARE`] of it for all paths); a ring that cannot grow drops its own
//! oldest broadcasts first: whoever fills it pays.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tungstenite::Message;

use crate::config::Retention;
use crate::memory::{Account, Budget, Charge, Room};

/// All histories together hold at most this fraction of the memory cap, so deliveries and reads
/// keep the rest whatever the channels keep.
pub const HISTORY_SHARE: usize = 4;
/// What a ring costs beside its kept payloads (its map entry, its path, its bookkeeping),
/// charged while it exists so that paths without end (a wildcard channel) cannot grow the map
/// past the cap.
const RING_COST: usize = 192;
/// What one kept broadcast costs beside its payload.
const KEPT_COST: usize = 96;

/// Who published a broadcast, as the server authenticated them (never from the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    User(String),
    Anonymous,
    /// The admin API's `POST /publish`.
    Admin,
    /// Not known: another instance's broadcast from a stream entry without the sender field
    /// (written by an older release).
    Unknown,
}

/// What an enveloped client learns of a broadcast besides its payload.
#[derive(Debug, Clone)]
pub struct Stamp {
    /// The position; None where no history is kept.
    pub pos: Option<u64>,
    /// The epoch of `pos` when it is not this process's: one Redis gave (`[cluster]`).
    pub epoch: Option<String>,
    /// Milliseconds since the Unix epoch, when the server took the broadcast.
    pub time_ms: u64,
    pub from: Sender,
}

impl Stamp {
    /// A stamp for a broadcast taken now, not (yet) kept.
    pub fn now(from: Sender) -> Stamp {
        Stamp {
            pos: None,
            epoch: None,
            time_ms: unix_ms(),
            from,
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One kept broadcast.
struct Kept {
    stamp: Stamp,
    at: Instant,
    msg: Message,
    /// Its bytes against the memory cap, given back when it is forgotten.
    _charge: Charge,
}

/// One path's ring.
pub(super) struct Ring {
    kept: VecDeque<Kept>,
    /// The last position given (0: none yet; the first broadcast is 1).
    last_pos: u64,
    /// What this path's ring and kept broadcasts hold against the memory cap (the sum of their
    /// charges).
    account: Account,
    /// The ring's own cost against the cap.
    _own: Charge,
}

/// Why a join's history request could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecallRefused {
    /// The memory cap has no room for the replay.
    MemoryFull,
    /// Redis, which keeps the channel's history (`[cluster]`), did not answer in time.
    Unavailable,
}

/// What a join's replay puts in the outbox, in order.
pub(super) type Replay = Vec<Message>;

/// Every path's ring, and this process's epoch.
pub struct Histories {
    rings: Mutex<HashMap<String, Arc<Mutex<Ring>>>>,
    /// 16 hex digits, random per process: a restart loses the rings, and a client's position
    /// from before it names another epoch.
    epoch: String,
    /// Bytes kept over all paths and the rings' own costs (see [`HISTORY_SHARE`]).
    held: AtomicUsize,
    budget: Arc<Budget>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Histories {
    pub(super) fn new(budget: Arc<Budget>) -> Histories {
        let mut bytes = [0u8; 8];
        // The system RNG; should it fail, the clock still makes a restart's epoch differ.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            bytes = unix_ms().to_be_bytes();
        }
        Histories {
            rings: Mutex::default(),
            epoch: data_encoding::HEXLOWER.encode(&bytes),
            held: AtomicUsize::new(0),
            budget,
        }
    }

    /// This process's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// `path`'s ring, made on first use; None when the memory cap or the histories' share of it
    /// has no room for a new one. A ring stays until the process ends: its positions must never
    /// start again within an epoch, or a client's old position would name a different
    /// broadcast. So its cost counts within [`HISTORY_SHARE`], or joins on ever new paths would
    /// hold the whole cap for good.
    pub(super) fn ring(&self, path: &str) -> Option<Arc<Mutex<Ring>>> {
        let mut rings = lock(&self.rings);
        if let Some(ring) = rings.get(path) {
            return Some(Arc::clone(ring));
        }
        let cost = RING_COST + path.len();
        if !self.fits(cost) {
            return None;
        }
        let account = Account::new(Arc::clone(&self.budget));
        let own = account.charge(cost, Room::Deliveries)?;
        self.held.fetch_add(cost, Ordering::Relaxed);
        let ring = Arc::new(Mutex::new(Ring {
            kept: VecDeque::new(),
            last_pos: 0,
            account,
            _own: own,
        }));
        rings.insert(path.to_string(), Arc::clone(&ring));
        Some(ring)
    }

    /// Gives `msg` its position and keeps it in `ring` (locked by the caller), dropping what
    /// `keep` no longer allows; returns its stamp. A message the memory cap has no room for,
    /// even once this ring is empty, gets its position but is not kept: the ring is left empty,
    /// so a recovery from before it gets a reset rather than a history with a hole.
    pub(super) fn keep(
        &self,
        ring: &mut Ring,
        keep: Retention,
        from: Sender,
        msg: &Message,
        now: Instant,
    ) -> Stamp {
        ring.last_pos += 1;
        let stamp = Stamp {
            pos: Some(ring.last_pos),
            ..Stamp::now(from)
        };
        self.expire(ring, keep, now);
        while ring.kept.len() >= keep.size.get() {
            self.forget_oldest(ring);
        }
        let len = msg.len() + KEPT_COST;
        loop {
            let charge = self
                .fits(len)
                .then(|| ring.account.charge(len, Room::Deliveries))
                .flatten();
            if let Some(charge) = charge {
                self.held.fetch_add(len, Ordering::Relaxed);
                ring.kept.push_back(Kept {
                    stamp: stamp.clone(),
                    at: now,
                    msg: msg.clone(),
                    _charge: charge,
                });
                break;
            }
            if ring.kept.is_empty() {
                break;
            }
            self.forget_oldest(ring);
        }
        stamp
    }

    /// Whether `len` more bytes stay within the histories' share of the cap.
    fn fits(&self, len: usize) -> bool {
        self.budget.cap().is_none_or(|cap| {
            self.held.load(Ordering::Relaxed).saturating_add(len) <= cap / HISTORY_SHARE
        })
    }

    fn forget_oldest(&self, ring: &mut Ring) {
        // Its charge gives its bytes back as it is dropped here.
        if let Some(old) = ring.kept.pop_front() {
            self.held
                .fetch_sub(old.msg.len() + KEPT_COST, Ordering::Relaxed);
        }
    }

    /// Drops what is older than `keep.ttl` at `now`.
    fn expire(&self, ring: &mut Ring, keep: Retention, now: Instant) {
        let Some(ttl) = keep.ttl else {
            return;
        };
        while ring
            .kept
            .front()
            .is_some_and(|k| now.saturating_duration_since(k.at) >= ttl)
        {
            self.forget_oldest(ring);
        }
    }

    /// What a client joining `ring` (locked by the caller) with `recall` is sent before live
    /// broadcasts: the kept ones it asked for (enveloped or plain), or a `reset` when its
    /// position is no longer (or never was) in the history.
    pub(super) fn replay(
        &self,
        ring: &mut Ring,
        keep: Retention,
        recall: &crate::policy::Recall,
        envelope: bool,
        now: Instant,
    ) -> Replay {
        self.expire(ring, keep, now);
        let render = |k: &Kept| {
            if envelope {
                self.envelope(&k.stamp, &k.msg)
            } else {
                k.msg.clone()
            }
        };
        let first_kept = ring.kept.front().and_then(|k| k.stamp.pos);
        match pick(
            recall,
            &self.epoch,
            ring.last_pos,
            first_kept,
            ring.kept.len(),
        ) {
            Ok(skip) => ring.kept.iter().skip(skip).map(render).collect(),
            Err(reason) => vec![reset(&self.epoch, ring.last_pos, reason)],
        }
    }

    /// What a client joining with `recall` is sent before live broadcasts, from a path's
    /// history as Redis keeps it (`[cluster]`): as [`Histories::replay`].
    pub(super) fn replay_recalled(
        &self,
        recalled: &Recalled,
        recall: &crate::policy::Recall,
        envelope: bool,
    ) -> Replay {
        let first_kept = recalled.kept.first().and_then(|(s, _)| s.pos);
        let len = recalled.kept.len();
        match pick(recall, &recalled.epoch, recalled.last_pos, first_kept, len) {
            Ok(skip) => recalled.kept[skip..]
                .iter()
                .map(|(stamp, msg)| {
                    if envelope {
                        self.envelope(stamp, msg)
                    } else {
                        msg.clone()
                    }
                })
                .collect(),
            Err(reason) => vec![reset(&recalled.epoch, recalled.last_pos, reason)],
        }
    }

    /// `{"type":"message",…}` around `msg`.
    pub fn envelope(&self, stamp: &Stamp, msg: &Message) -> Message {
        let mut out = String::with_capacity(msg.len() + 128);
        out.push_str("{\"type\":\"message\"");
        if let Some(pos) = stamp.pos {
            let epoch = stamp.epoch.as_deref().unwrap_or(&self.epoch);
            out.push_str(&format!(",\"pos\":{pos},\"epoch\":\"{epoch}\""));
        }
        out.push_str(&format!(",\"time\":{},\"from\":", stamp.time_ms));
        sender_json(&mut out, &stamp.from);
        match msg {
            Message::Binary(bytes) => {
                out.push_str(",\"binary\":true,\"data\":\"");
                out.push_str(&data_encoding::BASE64.encode(bytes));
                out.push('"');
            }
            other => {
                out.push_str(",\"data\":");
                json_string(&mut out, other.to_text().unwrap_or(""));
            }
        }
        out.push('}');
        Message::text(out)
    }

    /// Bytes kept over all paths, with the rings' own costs.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// A path's history as Redis keeps it (`[cluster]`): its epoch, the last position given on it,
/// and the kept broadcasts a recall may get, oldest first, with consecutive positions.
pub struct Recalled {
    pub epoch: String,
    pub last_pos: u64,
    pub kept: Vec<(Stamp, Message)>,
}

/// Where a channel's history is kept when another process keeps it: Redis, with `[cluster]`.
pub trait SharedHistory: Send + Sync {
    /// What `path` keeps that `recall` may get: its epoch, its last position, and its kept
    /// broadcasts from the one `recall` starts at (none older than `keep.ttl`), oldest first.
    ///
    /// # Errors
    /// Why it could not be read in time, for the log.
    fn recall(
        &self,
        path: &str,
        recall: &crate::policy::Recall,
        keep: Retention,
    ) -> Result<Recalled, String>;
}

/// Which of a path's kept broadcasts `recall` gets: those from the `Ok`th on (positions
/// `first_kept`, `first_kept + 1`, … `len` of them), or a `reset` for the `Err` reason when
/// the history does not reach back to its position. `epoch` and `last_pos` are the path's now.
fn pick(
    recall: &crate::policy::Recall,
    epoch: &str,
    last_pos: u64,
    first_kept: Option<u64>,
    len: usize,
) -> Result<usize, &'static str> {
    use crate::policy::Recall;
    match recall {
        Recall::Live => Ok(len),
        Recall::Last(n) => Ok(len.saturating_sub(*n)),
        Recall::Since { epoch: asked, pos } => {
            // The oldest position still kept minus one is the earliest one a client may have
            // seen and still miss nothing; with nothing kept, only the last one.
            let first = first_kept.unwrap_or(last_pos.saturating_add(1));
            if asked != epoch {
                Err("epoch")
            } else if *pos > last_pos {
                Err("unknown position")
            } else if pos.saturating_add(1) < first {
                Err("trimmed")
            } else {
                let seen = (pos + 1).saturating_sub(first);
                Ok(usize::try_from(seen).unwrap_or(usize::MAX).min(len))
            }
        }
    }
}

/// `{"type":"reset",…}`: the history does not reach back to the client's position.
fn reset(epoch: &str, last_pos: u64, reason: &str) -> Message {
    Message::text(format!(
        "{{\"type\":\"reset\",\"epoch\":\"{epoch}\",\"pos\":{last_pos},\"reason\":\"{reason}\"}}"
    ))
}

/// Who joined or left a path, for `presence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Join,
    Leave,
}

/// `{"type":"join",…}` or `{"type":"leave",…}`: `who` opened or closed a connection on the path.
pub fn notice(what: Presence, who: &Sender) -> Message {
    let mut out = String::with_capacity(96);
    out.push_str(match what {
        Presence::Join => "{\"type\":\"join\"",
        Presence::Leave => "{\"type\":\"leave\"",
    });
    out.push_str(&format!(",\"time\":{},\"user\":", unix_ms()));
    sender_json(&mut out, who);
    out.push('}');
    Message::text(out)
}

/// Appends a sender as the envelope names it: the user's name as a string, or an object for
/// the anonymous and the admin API, `null` when not known.
fn sender_json(out: &mut String, from: &Sender) {
    match from {
        Sender::User(name) => json_string(out, name),
        Sender::Anonymous => out.push_str("{\"anonymous\":true}"),
        Sender::Admin => out.push_str("{\"admin\":true}"),
        Sender::Unknown => out.push_str("null"),
    }
}

/// Appends `s` as a JSON string: quotes, backslashes and control characters escaped.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::policy::Recall;

    fn keep(size: usize) -> Retention {
        Retention {
            size: NonZeroUsize::new(size).unwrap(),
            ttl: None,
        }
    }

    fn texts(replay: &Replay) -> Vec<String> {
        replay
            .iter()
            .map(|m| m.to_text().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_ring_keeps_the_last_n_and_a_position_older_than_it_gets_a_reset() {
        let h = Histories::new(Arc::new(Budget::off()));
        let ring = h.ring("/c").unwrap();
        let mut ring = lock(&ring);
        for i in 1..=5 {
            h.keep(
                &mut ring,
                keep(3),
                Sender::Anonymous,
                &Message::text(i.to_string()),
                Instant::now(),
            );
        }
        let since = |pos| Recall::Since {
            epoch: h.epoch().to_string(),
            pos,
        };
        assert_eq!(
            texts(&h.replay(&mut ring, keep(3), &Recall::Last(2), false, Instant::now())),
            ["4", "5"]
        );
        assert_eq!(
            texts(&h.replay(&mut ring, keep(3), &Recall::Last(9), false, Instant::now())),
            ["3", "4", "5"]
        );
        assert_eq!(
            texts(&h.replay(&mut ring, keep(3), &since(2), false, Instant::now())),
            ["3", "4", "5"]
        );
        assert_eq!(
            texts(&h.replay(&mut ring, keep(3), &since(5), false, Instant::now())),
            Vec::<String>::new()
        );
        let reset = |why: &str| {
            vec![format!(
                "{{\"type\":\"reset\",\"epoch\":\"{}\",\"pos\":5,\"reason\":\"{why}\"}}",
                h.epoch()
            )]
        };
        assert_eq!(
            texts(&h.replay(&mut ring, keep(3), &since(1), false, Instant::now())),
            reset("trimmed")
        );
        assert_eq!(
            texts(&h.replay(&mut ring, keep(3), &since(6), false, Instant::now())),
            reset("unknown position")
        );
        let other = Recall::Since {
            epoch: "00".into(),
            pos: 4,
        };
        assert_eq!(
            texts(&h.replay(&mut ring, keep(3), &other, false, Instant::now())),
            reset("epoch")
        );
    }

    #[test]
    fn a_history_read_from_redis_is_replayed_or_reset_by_the_same_rules() {
        let h = Histories::new(Arc::new(Budget::off()));
        // Positions 3 to 5 kept of 5, in epoch "0e".
        let recalled = Recalled {
            epoch: "0e".into(),
            last_pos: 5,
            kept: (3..=5)
                .map(|p| {
                    let stamp = Stamp {
                        pos: Some(p),
                        epoch: Some("0e".into()),
                        ..Stamp::now(Sender::Anonymous)
                    };
                    (stamp, Message::text(p.to_string()))
                })
                .collect(),
        };
        let since = |epoch: &str, pos| Recall::Since {
            epoch: epoch.into(),
            pos,
        };
        let replay = |recall: &Recall| texts(&h.replay_recalled(&recalled, recall, false));
        assert_eq!(replay(&Recall::Last(2)), ["4", "5"]);
        assert_eq!(replay(&since("0e", 2)), ["3", "4", "5"]);
        assert_eq!(replay(&since("0e", 4)), ["5"]);
        assert_eq!(replay(&since("0e", 5)), Vec::<String>::new());
        let reset = |why: &str| {
            vec![format!(
                "{{\"type\":\"reset\",\"epoch\":\"0e\",\"pos\":5,\"reason\":\"{why}\"}}"
            )]
        };
        assert_eq!(replay(&since("0e", 1)), reset("trimmed"));
        assert_eq!(replay(&since("0e", 6)), reset("unknown position"));
        assert_eq!(replay(&since("0f", 4)), reset("epoch"));
        // The envelope carries Redis's epoch, not this process's.
        let enveloped = h.replay_recalled(&recalled, &Recall::Last(1), true);
        assert!(
            enveloped[0]
                .to_text()
                .unwrap()
                .contains("\"pos\":5,\"epoch\":\"0e\"")
        );
    }

    #[test]
    fn broadcasts_older_than_the_ttl_are_dropped_and_a_position_among_them_reset() {
        let h = Histories::new(Arc::new(Budget::off()));
        let ring = h.ring("/c").unwrap();
        let mut ring = lock(&ring);
        let keep = Retention {
            size: NonZeroUsize::new(10).unwrap(),
            ttl: Some(std::time::Duration::from_secs(60)),
        };
        let t0 = Instant::now();
        let at = |s| t0 + std::time::Duration::from_secs(s);
        for (i, t) in [(1, 0), (2, 30), (3, 50)] {
            h.keep(
                &mut ring,
                keep,
                Sender::Anonymous,
                &Message::text(format!("{i}")),
                at(t),
            );
        }
        let last =
            |ring: &mut Ring, n, now| texts(&h.replay(ring, keep, &Recall::Last(n), false, now));
        assert_eq!(last(&mut ring, 10, at(59)), ["1", "2", "3"]);
        assert_eq!(last(&mut ring, 10, at(60)), ["2", "3"]);
        let since = Recall::Since {
            epoch: h.epoch().to_string(),
            pos: 1,
        };
        assert!(texts(&h.replay(&mut ring, keep, &since, false, at(95)))[0].contains("trimmed"));
        assert_eq!(last(&mut ring, 10, at(200)), Vec::<String>::new());
    }

    #[test]
    fn the_envelope_names_the_sender_and_escapes_or_encodes_the_payload() {
        let h = Histories::new(Arc::new(Budget::off()));
        let stamp = Stamp {
            pos: Some(7),
            epoch: None,
            time_ms: 1000,
            from: Sender::User("al\"ice".into()),
        };
        let text = h.envelope(&stamp, &Message::text("{\"from\":\"admin\"}\n"));
        assert_eq!(
            text.to_text().unwrap(),
            format!(
                "{{\"type\":\"message\",\"pos\":7,\"epoch\":\"{}\",\"time\":1000,\"from\":\"al\\\"ice\",\"data\":\"{{\\\"from\\\":\\\"admin\\\"}}\\n\"}}",
                h.epoch()
            )
        );
        let admin = Stamp {
            pos: None,
            epoch: None,
            time_ms: 1,
            from: Sender::Admin,
        };
        assert_eq!(
            h.envelope(&admin, &Message::binary(vec![0u8, 255]))
                .to_text()
                .unwrap(),
            "{\"type\":\"message\",\"time\":1,\"from\":{\"admin\":true},\"binary\":true,\"data\":\"AP8=\"}"
        );
    }

    #[test]
    fn rings_of_new_paths_stop_at_the_histories_share() {
        let budget = Arc::new(Budget::new(NonZeroUsize::new(4000)));
        let h = Histories::new(Arc::clone(&budget));
        let made = (0..100)
            .filter(|i| h.ring(&format!("/c/{i:03}")).is_some())
            .count();
        // 197 bytes each within the 1000-byte share: five.
        assert_eq!(made, 1000 / (RING_COST + 5));
        assert!(budget.used() <= 1000);
        assert!(
            h.ring("/c/000").is_some(),
            "an existing ring is still found"
        );
    }

    #[test]
    fn kept_bytes_are_charged_and_a_full_share_drops_the_rings_own_oldest() {
        let budget = Arc::new(Budget::new(NonZeroUsize::new(4000)));
        let h = Histories::new(Arc::clone(&budget));
        let ring = h.ring("/c").unwrap();
        let mut ring = lock(&ring);
        let ring_cost = RING_COST + 2;
        assert_eq!(budget.used(), ring_cost);
        // The share is 1000 bytes, the ring's own cost in it: three 300-byte messages do not
        // fit beside it, two do.
        for _ in 0..3 {
            h.keep(
                &mut ring,
                keep(10),
                Sender::Anonymous,
                &Message::binary(vec![0u8; 300]),
                Instant::now(),
            );
        }
        assert_eq!(ring.kept.len(), 2);
        assert_eq!(h.held(), ring_cost + 2 * (300 + KEPT_COST));
        assert_eq!(ring.account.held(), ring_cost + 2 * (300 + KEPT_COST));
        // Larger than the share: positioned, not kept, and the ring emptied trying, so a
        // recovery from before it is told so.
        let s = h.keep(
            &mut ring,
            keep(10),
            Sender::Anonymous,
            &Message::binary(vec![0u8; 2000]),
            Instant::now(),
        );
        assert_eq!(s.pos, Some(4));
        assert!(ring.kept.is_empty());
        assert_eq!(budget.used(), ring_cost);
        let since = Recall::Since {
            epoch: h.epoch().to_string(),
            pos: 3,
        };
        assert!(
            texts(&h.replay(&mut ring, keep(10), &since, false, Instant::now()))[0]
                .contains("trimmed")
        );
    }
}
