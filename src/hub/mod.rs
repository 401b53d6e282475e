//! The hub: which connections are on which channel path, and fan-out of broadcast messages.
//! It never blocks. A member whose connection is idle (its loop asleep in `poll`, nothing queued
//! or stuck) gets the broadcast written straight into its socket by the publishing thread,
//! through [`DirectWrite`] — no wake-up, no context switch per delivery. Any other member gets it
//! in its bounded outbox and is woken; a full outbox is a slow consumer, handled by that
//! consumer's own policy. A broadcast larger than a member's own `max_message_size` (its
//! [`Intake`], fixed when it joined) is dropped for that member alone and counted: a reload or
//! another instance may send what its buffers were never sized for. Every connection joins
//! (echo ones too), so shutdown reaches all of them by dropping their senders.
//!
//! With a cluster bridge attached ([`Hub::set_outlet`]), a broadcast is also pushed into the
//! bridge's bounded queue after the local fan-out, and broadcasts from other instances come in
//! through [`Hub::deliver`]. The hub never waits for the bridge: a full queue drops its oldest
//! entry (counted) to keep the newest.
//!
//! Each member carries who it is ([`Profile`], set once after joining) and what it moved
//! ([`Traffic`]), so the admin API can list connections and end the ones it names.
//! Every delivery that stays in memory (an outbox entry, a direct write the socket did not take
//! whole, a message in the bridge's queue) is charged to the process-wide [`Budget`] first. A
//! fan-out that does not fit closes the subscribers with the largest backlog with 1008 `slow
//! consumer` until it does ([`memory::choose_drops`]); nothing is queued past the cap.
//!
//! No lock is held while a broadcast is written: the members of a path are a copy-on-write
//! snapshot ([`roster`]), swapped whole on join and leave, so a fan-out to a thousand sockets,
//! the admin listing and a reload's re-check run beside joins and leaves on any path.
//!
//! This file holds the hub, shutdown and the admin's [`Filter`]; [`roster`] is the registry (the
//! members by path), [`member`] a member's shared state, [`membership`] joining and leaving,
//! [`fanout`] the delivery of a broadcast, [`history`] the broadcasts kept per path, the
//! envelope and the presence notices, [`presence`] who is subscribed here and on the other
//! instances, [`query`] the filter as a query string.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

pub(crate) mod cluster;
mod fanout;
mod history;
mod member;
mod membership;
mod presence;
pub(crate) mod query;
mod roster;
pub(crate) mod waker;

pub use self::fanout::Outbound;
pub use self::history::{Histories, RecallRefused, SharedHistory};
use self::member::Member;
pub use self::member::{DirectWrite, Handoff, Intake, MemberShared, Profile, Queued};
pub use self::membership::{JoinRefused, Membership};
pub use self::presence::{PresenceUnavailable, SharedPresence, Tally};
use self::roster::Roster;

use crate::memory::Budget;
use crate::ops::metrics::Metrics;
pub use crate::policy::Holder;
use crate::policy::Revocation;

/// Which connections an admin means (`GET /connections`, `POST /disconnect`): every key given
/// must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `user`: that user's connections; `-` for anonymous ones.
    pub user: Option<String>,
    /// `session`: the connection(s) with that session id.
    pub session: Option<String>,
    /// `path`: connections on that path, or under it with a trailing `/*` (`/chat/*`).
    pub path: Option<String>,
}

impl Filter {
    /// True when no key is given (it would match every connection).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.session.is_none() && self.path.is_none()
    }

    /// Whether a connection of `user` (None: anonymous) on `path` with `session` matches every
    /// given key.
    #[must_use]
    pub fn matches(&self, user: Option<&str>, session: Option<&str>, path: &str) -> bool {
        let user_ok = self
            .user
            .as_deref()
            .is_none_or(|want| want == user.unwrap_or("-"));
        let session_ok = self
            .session
            .as_deref()
            .is_none_or(|want| Some(want) == session);
        let path_ok = self.path.as_deref().is_none_or(|want| {
            match want.strip_suffix('*').filter(|p| p.ends_with('/')) {
                Some(prefix) => path.starts_with(prefix),
                None => want == path,
            }
        });
        user_ok && session_ok && path_ok
    }
}

/// The registry of channel members.
pub struct Hub {
    /// The members by path, each path a snapshot replaced whole on join and leave.
    roster: Roster<Member>,
    /// The cluster bridge's queue, while one is attached; taken (dropped) at shutdown.
    outlet: RwLock<Option<cluster::Outlet>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
    /// The process-wide memory cap every queued delivery is charged to.
    budget: Arc<Budget>,
    /// Serialises joins and leaves among themselves (each replaces its path's snapshot) and
    /// against shutdown, so nobody joins a hub that is being emptied. Never held by a fan-out.
    gate: Mutex<()>,
    /// The zero of [`MemberShared`]'s step clock.
    epoch: Instant,
    /// The broadcasts kept per path, for channels with a history.
    histories: Histories,
    /// Where the history is read from when Redis keeps it (`[cluster]`), once the bridge runs.
    store: OnceLock<Arc<dyn SharedHistory>>,
    /// The other instances' subscribers (`[cluster]`), once the bridge runs.
    shared_presence: OnceLock<Arc<dyn SharedPresence>>,
}

/// The hub is shutting down: no new members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubClosed;

impl Hub {
    /// An empty hub that counts drops and slow consumers in `metrics`, without a memory cap.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Hub> {
        Hub::with_budget(metrics, Arc::new(Budget::off()))
    }

    /// An empty hub that charges what it queues to `budget`.
    pub fn with_budget(metrics: Arc<Metrics>, budget: Arc<Budget>) -> Arc<Hub> {
        Arc::new(Hub {
            histories: Histories::new(Arc::clone(&budget)),
            budget,
            roster: Roster::default(),
            outlet: RwLock::new(None),
            next_id: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            metrics,
            gate: Mutex::new(()),
            epoch: Instant::now(),
            store: OnceLock::new(),
            shared_presence: OnceLock::new(),
        })
    }

    /// Attaches the cluster bridge: from now on every broadcast is also queued on `outlet`.
    pub fn set_outlet(&self, outlet: cluster::Outlet) {
        *self.outlet.write().unwrap_or_else(|p| p.into_inner()) = Some(outlet);
    }

    /// Attaches the bridge's history reads: from now on channel history is kept in Redis.
    pub(crate) fn set_store(&self, store: Arc<dyn SharedHistory>) {
        let _ = self.store.set(store);
    }

    /// Ends every member here that `filter` matches with 1008 `disconnected by admin`; returns
    /// how many (not counting those already ending). An empty filter matches nobody. Also
    /// called for a disconnect from another instance.
    pub fn disconnect(&self, filter: &Filter) -> usize {
        if filter.is_empty() {
            return 0;
        }
        let mut n = 0;
        self.for_each_member(|path, m| {
            let session = m.profile.get().map(|p| p.session_id.as_str());
            if filter.matches(m.holder.user.as_deref(), session, path)
                && m.revoke(Revocation::Admin)
            {
                n += 1;
            }
        });
        n
    }

    /// Queues `filter` for the other instances, which end their matching members; false
    /// without a cluster bridge. (A full queue makes room by dropping its oldest entry.)
    pub fn forward_disconnect(&self, filter: &Filter) -> bool {
        let outlet = self.outlet.read().unwrap_or_else(|p| p.into_inner());
        let Some(outlet) = outlet.as_ref() else {
            return false;
        };
        outlet.push(Outbound::Disconnect(filter.clone()));
        true
    }

    /// Calls `f` with every member's path and shared state (a reload's re-check, the admin
    /// listing), on a snapshot: no lock is held while `f` runs, so joins and leaves go on. A
    /// member that joins meanwhile is not seen; one that leaves may still be.
    pub fn for_each_member(&self, mut f: impl FnMut(&str, &MemberShared)) {
        for (path, members) in self.roster.snapshots() {
            for m in members.iter() {
                f(&path, &m.shared);
            }
        }
    }

    /// How long the connection that has been in its current loop step the longest has been in
    /// it; None when no connection is in a step.
    pub fn longest_step(&self) -> Option<Duration> {
        let now = self.clock();
        self.roster
            .snapshots()
            .iter()
            .flat_map(|(_, members)| members.iter())
            .map(|m| m.shared.step_since.load(Ordering::Acquire))
            .filter(|&since| since != 0)
            .map(|since| Duration::from_millis(now.saturating_sub(since)))
            .max()
    }

    /// Milliseconds since the epoch, plus one (0 means "not in a step").
    fn clock(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// The broadcasts kept per path.
    pub fn histories(&self) -> &Histories {
        &self.histories
    }

    /// The memory cap this hub charges to.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// True once shutdown began.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Members currently on `path`.
    pub fn members(&self, path: &str) -> usize {
        self.roster.count(path)
    }

    /// Members on all paths.
    pub fn total_members(&self) -> usize {
        self.roster.total()
    }

    /// Refuses new members and disconnects every outbox, waking each member so that it closes
    /// with 1001 (going away). Detaches the cluster bridge (its queue reports Disconnected).
    pub fn shutdown(&self) {
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::Release);
        drop(
            self.outlet
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        for members in self.roster.take_all().into_values() {
            for member in members.iter() {
                member.shared.end();
            }
            // The last holder drops the senders: each outbox reports Disconnected once what it
            // holds is read (a fan-out still holding a snapshot keeps them until it ends).
        }
    }
}

/// What the hub's tests share: a hub, intakes, members.
#[cfg(test)]
mod fixtures {
    use tungstenite::Message;

    use super::*;
    use crate::config::{Mode, SlowConsumer};

    pub(super) fn text(s: &str) -> Message {
        Message::text(s)
    }

    pub(super) fn hub() -> Arc<Hub> {
        Hub::new(Arc::new(Metrics::new(["/c"])))
    }

    pub(super) fn intake(outbox: usize, slow_consumer: SlowConsumer) -> Intake {
        Intake {
            outbox,
            slow_consumer,
            max_message: 1024,
            envelope: false,
            history: None,
            presence: false,
        }
    }

    pub(super) fn join(
        hub: &Arc<Hub>,
        path: &str,
        outbox: usize,
        policy: SlowConsumer,
    ) -> Membership {
        hub.join(
            path,
            Mode::Broadcast,
            intake(outbox, policy),
            Holder::default(),
        )
        .unwrap()
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::fixtures::*;
    use super::*;
    use crate::config::{Mode, SlowConsumer};
    use crate::ops::metrics::Counter;
    use crate::policy::Method;

    #[test]
    fn longest_step_reports_only_connections_inside_a_step() {
        let hub = hub();
        let a = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let b = join(&hub, "/d", 4, SlowConsumer::Disconnect);
        assert_eq!(hub.longest_step(), None);
        a.step_began();
        std::thread::sleep(Duration::from_millis(30));
        b.step_began();
        let longest = hub.longest_step().unwrap();
        assert!(longest >= Duration::from_millis(25), "{longest:?}");
        a.step_ended();
        assert!(hub.longest_step().unwrap() < Duration::from_millis(25));
        b.step_ended();
        assert_eq!(hub.longest_step(), None);
    }

    #[test]
    fn shutdown_ends_every_member_with_1001_once_its_outbox_is_empty() {
        let hub = hub();
        let a = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let b = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        a.publish(&text("last"));
        hub.shutdown();
        assert_eq!(b.ended(), None, "a queued message goes out first");
        assert_eq!(b.next_queued().unwrap().msg, text("last"));
        assert_eq!(b.ended(), Some(crate::policy::CloseReason::GOING_AWAY));
        assert_eq!(a.ended(), Some(crate::policy::CloseReason::GOING_AWAY));
    }

    fn member_of(hub: &Arc<Hub>, path: &str, user: Option<&str>, session: &str) -> Membership {
        let holder = Holder {
            user: user.map(str::to_string),
            ..Holder::default()
        };
        let m = hub
            .join(
                path,
                Mode::Broadcast,
                intake(4, SlowConsumer::Disconnect),
                holder,
            )
            .unwrap()
            .unwrap();
        m.shared
            .profile
            .set(Profile {
                method: Method::Password,
                mode: Mode::Broadcast,
                peer: "127.0.0.1:1".parse().unwrap(),
                since: SystemTime::now(),
                session_id: session.to_string(),
            })
            .unwrap();
        m
    }

    #[test]
    fn disconnect_ends_the_members_every_key_matches_once_and_is_forwarded() {
        let hub = hub();
        let alice = member_of(&hub, "/chat/a", Some("alice"), "s1");
        let alice2 = member_of(&hub, "/news", Some("alice"), "s2");
        let bob = member_of(&hub, "/chat/b", Some("bob"), "s3");
        let anon = member_of(&hub, "/chat/b", None, "s4");
        let f = |user: Option<&str>, session: Option<&str>, path: Option<&str>| Filter {
            user: user.map(str::to_string),
            session: session.map(str::to_string),
            path: path.map(str::to_string),
        };
        assert_eq!(
            hub.disconnect(&Filter::default()),
            0,
            "empty matches nobody"
        );
        assert_eq!(hub.disconnect(&f(Some("alice"), None, Some("/chat/*"))), 1);
        assert_eq!(
            alice.ended(),
            Some(crate::policy::CloseReason::DISCONNECTED_BY_ADMIN)
        );
        assert_eq!(alice2.ended(), None);
        assert_eq!(
            hub.disconnect(&f(Some("alice"), None, None)),
            1,
            "once each"
        );
        assert_eq!(hub.disconnect(&f(Some("-"), None, None)), 1);
        assert_eq!(
            anon.ended(),
            Some(crate::policy::CloseReason::DISCONNECTED_BY_ADMIN)
        );
        assert_eq!(hub.disconnect(&f(None, Some("s3"), Some("/chat"))), 0);
        assert_eq!(hub.disconnect(&f(None, Some("s3"), None)), 1);
        assert_eq!(
            bob.ended(),
            Some(crate::policy::CloseReason::DISCONNECTED_BY_ADMIN)
        );
        // Only with a bridge.
        assert!(!hub.forward_disconnect(&f(Some("x"), None, None)));
        let (outlet, queue) = cluster::Outlet::new(1, Arc::clone(&hub.metrics));
        hub.set_outlet(outlet);
        assert!(hub.forward_disconnect(&f(Some("x"), None, None)));
        assert!(hub.forward_disconnect(&f(Some("y"), None, None)));
        assert_eq!(
            queue.drain(),
            [Outbound::Disconnect(f(Some("y"), None, None))],
            "a full queue keeps the newest"
        );
        assert_eq!(hub.metrics.count(Counter::ClusterNotForwarded), 1);
    }

    #[test]
    fn a_filter_path_matches_exactly_or_under_a_trailing_slash_star() {
        let f = |p: &str| Filter {
            path: Some(p.into()),
            ..Filter::default()
        };
        assert!(f("/chat/a").matches(None, None, "/chat/a"));
        assert!(!f("/chat/a").matches(None, None, "/chat/ab"));
        assert!(f("/chat/*").matches(None, None, "/chat/a/b"));
        assert!(!f("/chat/*").matches(None, None, "/chatroom"));
        assert!(
            !f("/chat*").matches(None, None, "/chatroom"),
            "only after a slash"
        );
        assert!(f("/chat*").matches(None, None, "/chat*"));
    }
}
