//! Joining and leaving: [`Hub::join`] adds a connection to its path, and the [`Membership`] it
//! returns is the connection's handle (its outbox, its end flags, its step clock) until dropping
//! it leaves the channel and gives its memory back.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};
use tungstenite::Message;

use super::history::{Presence, RecallRefused, Replay, Sender, SharedHistory};
use super::member::{Intake, Member, MemberShared, Queued, Traffic, discard_queued, take_queued};
use super::waker::Waker;
use super::{Hub, HubClosed};
use crate::config::{Mode, Retention};
use crate::memory::{Account, Charge, Room};
use crate::ops::metrics::Metrics;
use crate::policy::{CloseReason, Holder, Recall, Revocation};

/// A connection's membership; leaving the channel is dropping it.
pub struct Membership {
    hub: Arc<Hub>,
    path: String,
    pub id: u64,
    /// This connection's outbox (see [`Membership::next_queued`]).
    outbox: Receiver<Queued>,
    pub shared: Arc<MemberShared>,
    /// Who its broadcasts are from, as the upgrade authenticated it.
    from: Sender,
    intake: Intake,
    /// Its connection opened ([`Membership::announce`]): its path is told when it leaves.
    announced: AtomicBool,
}

/// Why a connection could not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefused {
    /// The hub is shutting down.
    Closed(HubClosed),
    /// Its history request does not fit under the memory cap.
    Recall(RecallRefused),
}
impl Hub {
    /// Adds a connection of a `mode` channel to `path`. A broadcast member takes broadcasts as
    /// `intake` says and has an eventfd ([`Waker`]) for its outbox. A proxied member takes no
    /// broadcasts but has an eventfd too, to be woken to end: its reads of the client pause under
    /// back-pressure, so a shut read side would not wake it. An echo member takes no broadcasts
    /// and has none: it always polls its socket, so a shut read side ends it.
    ///
    /// # Errors
    /// `Ok(Err(JoinRefused::Closed))` during shutdown; `Err` if no eventfd could be made.
    pub fn join(
        self: &Arc<Self>,
        path: &str,
        mode: Mode,
        intake: Intake,
        holder: Holder,
    ) -> io::Result<Result<Membership, JoinRefused>> {
        self.join_recalling(path, mode, intake, holder, &Recall::Live)
    }

    /// [`Hub::join`], with the kept broadcasts `recall` asks for queued in the outbox before
    /// any live one. The replay is charged to the member's account; at the memory cap it is
    /// refused whole. With the history in this process, the path's ring stays locked from the
    /// replay until the member is in the roster, so the next broadcast is the first the replay
    /// did not hold. With the history in Redis (`[cluster]`), see [`Hub::join_reading`].
    ///
    /// # Errors
    /// `Ok(Err(..))` during shutdown, at the cap, or when Redis does not answer; `Err` if no
    /// eventfd could be made.
    pub fn join_recalling(
        self: &Arc<Self>,
        path: &str,
        mode: Mode,
        intake: Intake,
        holder: Holder,
        recall: &Recall,
    ) -> io::Result<Result<Membership, JoinRefused>> {
        let shared = self.member_state(mode, holder)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = crossbeam_channel::unbounded();
        let membership = self.membership(path, id, &outbox.1, &shared, intake);
        let asks = matches!(recall, Recall::Last(_) | Recall::Since { .. });
        let (Some(keep), true) = (intake.history, asks) else {
            let member = Member::new(id, mode, outbox, intake, shared);
            return Ok(self.enter(path, member).map(|()| membership));
        };
        if let Some(store) = self.store.get() {
            let member = Member::new(id, mode, outbox, intake, shared).holding();
            return Ok(self.join_reading(path, member, store.as_ref(), recall, keep, membership));
        }
        // The ring before the gate: a leave takes the gate alone, and a fan-out holding the
        // ring (which may drop a snapshot's last hold on a member) never waits for the gate.
        let Some(ring) = self.histories.ring(path) else {
            return Ok(Err(JoinRefused::Recall(RecallRefused::MemoryFull)));
        };
        let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
        let replay =
            self.histories
                .replay(&mut ring, keep, recall, intake.envelope, Instant::now());
        let Some(replay) = charge_all(replay, &shared) else {
            return Ok(Err(JoinRefused::Recall(RecallRefused::MemoryFull)));
        };
        let member = Member::new(id, mode, outbox, intake, shared);
        // The outbox is empty and holds `outbox` messages, at least `history_size` (the
        // config checks it), and the replay is at most that.
        for (msg, charge) in replay {
            let _ = member.try_queue(&msg, charge);
        }
        Ok(self.enter(path, member).map(|()| membership))
    }

    /// The join of a `member` whose history Redis keeps (`[cluster]`): it enters the roster
    /// first, holding what is delivered to it ([`Member::hold`]); then its history is read
    /// with no lock held, so the deliveries of every path, its own too, go on meanwhile; then
    /// its replay is queued, and after it what it held that the replay did not have
    /// ([`Member::release`]). A live broadcast is either in what is read or kept after the read,
    /// and then delivered to the member, which is in the roster since before it: none is
    /// missed, and one in both is skipped by its position.
    fn join_reading(
        &self,
        path: &str,
        member: Member,
        store: &dyn SharedHistory,
        recall: &Recall,
        keep: Retention,
        membership: Membership,
    ) -> Result<Membership, JoinRefused> {
        let member = Arc::new(member);
        self.enter(path, Arc::clone(&member))?;
        // From here a refusal drops `membership`, which takes the member out again.
        let recalled = match store.recall(path, recall, keep) {
            Ok(recalled) => recalled,
            Err(e) => {
                log::warn!("history of {path}: cannot read it from Redis: {e}");
                return Err(JoinRefused::Recall(RecallRefused::Unavailable));
            }
        };
        let replay = self
            .histories
            .replay_recalled(&recalled, recall, member.intake.envelope);
        let replay = charge_all(replay, &member.shared)
            .ok_or(JoinRefused::Recall(RecallRefused::MemoryFull))?;
        let full = member.release(replay, (recalled.epoch, recalled.last_pos));
        for _ in 0..full {
            self.outbox_full(&member);
        }
        Ok(membership)
    }

    /// Puts `member` in the roster of `path`, unless the hub is shutting down.
    fn enter(&self, path: &str, member: impl Into<Arc<Member>>) -> Result<(), JoinRefused> {
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return Err(JoinRefused::Closed(HubClosed));
        }
        self.roster.insert(path, member.into());
        Ok(())
    }

    /// The handle of member `id` on `path`: dropping it takes the member out of the roster.
    fn membership(
        self: &Arc<Self>,
        path: &str,
        id: u64,
        outbox: &Receiver<Queued>,
        shared: &Arc<MemberShared>,
        intake: Intake,
    ) -> Membership {
        let from = match &shared.holder.user {
            Some(user) => Sender::User(user.clone()),
            None => Sender::Anonymous,
        };
        Membership {
            hub: Arc::clone(self),
            path: path.to_string(),
            id,
            outbox: outbox.clone(),
            shared: Arc::clone(shared),
            from,
            intake,
            announced: AtomicBool::new(false),
        }
    }

    /// A new member's shared state: a waker for a member that receives (broadcast, proxy), its
    /// holder, an empty account on the hub's budget.
    ///
    /// # Errors
    /// If no eventfd could be made for the waker.
    fn member_state(&self, mode: Mode, holder: Holder) -> io::Result<Arc<MemberShared>> {
        Ok(Arc::new(MemberShared {
            waker: match mode {
                Mode::Echo => None,
                Mode::Broadcast | Mode::Proxy => Some(Waker::new()?),
            },
            slow: AtomicBool::new(false),
            squeezed: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            revocation: OnceLock::new(),
            holder,
            socket: OnceLock::new(),
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            account: Account::new(Arc::clone(&self.budget)),
            direct: OnceLock::new(),
            step_since: AtomicU64::new(0),
            profile: OnceLock::new(),
            traffic: Traffic::default(),
        }))
    }
}

/// `replay` charged to `shared`'s account, all or nothing: None (the charges taken so far given
/// back) when one does not fit under the memory cap.
fn charge_all(replay: Replay, shared: &MemberShared) -> Option<Vec<(Message, Charge)>> {
    replay
        .into_iter()
        .map(|msg| {
            let charge = shared.account.charge(msg.len(), Room::Deliveries)?;
            Some((msg, charge))
        })
        .collect()
}

impl Membership {
    /// The server's counters, for the connection loop's per-message figures.
    pub fn metrics(&self) -> &Metrics {
        &self.hub.metrics
    }

    /// Broadcasts `msg` to the other members of this path, from this connection's user, kept
    /// as its channel says.
    pub fn publish(&self, msg: &Message) {
        self.hub
            .publish(&self.path, self.id, &self.from, self.intake.history, msg);
    }

    /// What this member takes from the hub.
    pub fn intake(&self) -> Intake {
        self.intake
    }

    /// The connection is open (its loop runs): it counts as a subscriber; on a channel with
    /// `presence`, its path's enveloped members, here and on the other instances, are told it
    /// joined, and they will be told when it leaves.
    pub fn announce(&self) {
        if self.announced.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.intake.presence {
            self.hub
                .tell(&self.path, self.id, &self.from, Presence::Join);
        }
        self.hub.presence_changed();
    }

    /// Gives the hub the connection's socket, so that ending a member without a waker can wake
    /// its `poll` (see [`MemberShared::end`]). Check the end flags after this.
    pub fn attach_socket(&self, socket: Arc<TcpStream>) {
        let _ = self.shared.socket.set(socket);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Why the hub wants this connection to end, if it does: a slow consumer or revoked access
    /// (1008), or shutdown with nothing left to deliver (1001).
    pub fn ended(&self) -> Option<CloseReason> {
        if self.shared.slow.load(Ordering::Acquire) {
            Some(CloseReason::SLOW_CONSUMER)
        } else if self.shared.revoked.load(Ordering::Acquire) {
            let why = self.shared.revocation.get().copied();
            Some(why.unwrap_or(Revocation::Access).close_reason())
        } else if self.hub.is_closed() && self.outbox.is_empty() {
            Some(CloseReason::GOING_AWAY)
        } else {
            None
        }
    }

    /// Whether the memory cap closed this connection (it then ends without waiting for its
    /// buffers to drain).
    pub fn closed_at_cap(&self) -> bool {
        self.shared.squeezed.load(Ordering::Acquire)
    }

    /// Messages waiting in this connection's outbox now.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// The connection's loop enters a step (see [`Hub::longest_step`]).
    pub fn step_began(&self) {
        self.shared
            .step_since
            .store(self.hub.clock(), Ordering::Release);
    }

    /// The connection's loop left its step, to wait in `poll` or to end.
    pub fn step_ended(&self) {
        self.shared.step_since.store(0, Ordering::Release);
    }

    /// The next message in this connection's outbox, with its charge. `Disconnected` means the
    /// server is shutting down.
    ///
    /// # Errors
    /// `Empty` when nothing is queued.
    pub fn next_queued(&self) -> Result<Queued, TryRecvError> {
        take_queued(&self.outbox, &self.shared)
    }

    /// Empties the outbox, giving its bytes back to the memory cap: the connection is ending and
    /// will write none of it.
    pub fn discard_queued(&self) {
        discard_queued(&self.outbox, &self.shared);
    }

    /// This connection's share of the memory cap.
    pub fn account(&self) -> &Account {
        &self.shared.account
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        {
            let _gate = self.hub.gate.lock().unwrap_or_else(|p| p.into_inner());
            self.hub.roster.remove(&self.path, |m| m.id == self.id);
        }
        if self.announced.load(Ordering::Acquire) {
            if self.intake.presence {
                self.hub
                    .tell(&self.path, self.id, &self.from, Presence::Leave);
            }
            self.hub.presence_changed();
        }
        // Out of the hub. Its outbox and write buffer give their bytes back as their charges are
        // dropped (with the last snapshot holding this member, and with the connection).
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlowConsumer;
    use crate::hub::fixtures::*;
    use crate::hub::history::{Recalled, Stamp};
    use crate::ops::metrics::Counter;

    #[test]
    fn joins_that_recall_while_broadcasts_go_on_miss_none_and_repeat_none() {
        let hub = hub();
        let kept = keeping(16, 10_000);
        let publisher = hub
            .join("/c", Mode::Broadcast, kept, Holder::default())
            .unwrap()
            .unwrap();
        const N: usize = 2000;
        let publishing = std::thread::spawn(move || {
            for i in 1..=N {
                publisher.publish(&text(&i.to_string()));
            }
        });
        // Each join lands somewhere in the stream: its replay (the latest kept) and the live
        // broadcasts after it must be one unbroken run.
        let mut joined = Vec::new();
        while !publishing.is_finished() && joined.len() < 50 {
            joined.push(join_asking_for_the_last(&hub, kept, 16));
        }
        publishing.join().unwrap();
        assert!(!joined.is_empty());
        for m in &joined {
            let got: Vec<usize> = std::iter::from_fn(|| m.next_queued().ok())
                .map(|q| q.msg.to_text().unwrap().parse().unwrap())
                .collect();
            if let Some(&first) = got.first() {
                let want: Vec<usize> = (first..=N).collect();
                assert_eq!(got, want, "a gap or a repeat");
            }
        }
    }

    /// A history kept elsewhere (as in Redis) whose reads are answered when the test says so.
    struct Gated {
        asked: crossbeam_channel::Sender<()>,
        answers: Receiver<Recalled>,
    }

    impl SharedHistory for Gated {
        fn recall(&self, _: &str, _: &Recall, _: Retention) -> Result<Recalled, String> {
            self.asked.send(()).map_err(|e| e.to_string())?;
            let watchdog = std::time::Duration::from_secs(10);
            self.answers
                .recv_timeout(watchdog)
                .map_err(|e| e.to_string())
        }
    }

    fn kept_at(pos: u64) -> Stamp {
        Stamp {
            pos: Some(pos),
            epoch: Some("e".into()),
            time_ms: 0,
            from: Sender::Anonymous,
        }
    }

    /// An intake keeping `size` broadcasts with an outbox of `outbox`.
    fn keeping(size: usize, outbox: usize) -> Intake {
        Intake {
            history: Some(Retention {
                size: std::num::NonZeroUsize::new(size).unwrap(),
                ttl: None,
            }),
            ..intake(outbox, SlowConsumer::Disconnect)
        }
    }

    /// A join of `/c` asking for its last `n` kept broadcasts.
    fn join_asking_for_the_last(hub: &Arc<Hub>, kept: Intake, n: usize) -> Membership {
        hub.join_recalling(
            "/c",
            Mode::Broadcast,
            kept,
            Holder::default(),
            &Recall::Last(n),
        )
        .unwrap()
        .unwrap()
    }

    /// [`join_asking_for_the_last`] 2, on a thread of its own (its read from the store waits
    /// for the test's answer).
    fn join_asking_for_the_last_two(
        hub: &Arc<Hub>,
        kept: Intake,
    ) -> std::thread::JoinHandle<Membership> {
        let hub = Arc::clone(hub);
        std::thread::spawn(move || join_asking_for_the_last(&hub, kept, 2))
    }

    #[test]
    fn a_join_reading_its_history_holds_no_delivery_back_and_misses_or_repeats_none() {
        let hub = hub();
        let (asked, asked_rx) = crossbeam_channel::bounded(1);
        let (answer, answers) = crossbeam_channel::bounded(1);
        hub.set_store(Arc::new(Gated { asked, answers }));
        let kept = keeping(4, 8);
        let near = hub
            .join("/c", Mode::Broadcast, kept, Holder::default())
            .unwrap()
            .unwrap();
        let elsewhere = join(&hub, "/d", 8, SlowConsumer::Disconnect);
        let joining = join_asking_for_the_last_two(&hub, kept);
        asked_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        // The read is waiting: deliveries on every path go on, its own path's too.
        for (path, pos, text_) in [("/c", 3, "m3"), ("/d", 1, "d1"), ("/c", 4, "m4")] {
            hub.deliver_kept(path, None, &kept_at(pos), &text(text_));
        }
        let got = |m: &Membership| -> Vec<String> {
            std::iter::from_fn(|| m.next_queued().ok())
                .map(|q| q.msg.to_text().unwrap().to_string())
                .collect()
        };
        assert_eq!(got(&near), ["m3", "m4"]);
        assert_eq!(got(&elsewhere), ["d1"]);
        assert!(!joining.is_finished(), "the read is still waiting");
        // Read before m4 was kept: the replay ends at m3, the held m4 follows it, the held m3
        // (replayed already) is skipped, and live ones come after.
        let recalled = Recalled {
            epoch: "e".into(),
            last_pos: 3,
            kept: [2, 3].map(|p| (kept_at(p), text(&format!("m{p}")))).into(),
        };
        answer.send(recalled).unwrap();
        let joined = joining.join().unwrap();
        hub.deliver_kept("/c", None, &kept_at(5), &text("m5"));
        assert_eq!(got(&joined), ["m2", "m3", "m4", "m5"]);
        assert_eq!(got(&near), ["m5"]);
    }

    /// A history kept elsewhere as one list: a read sees what was kept before it, as Redis's
    /// script does.
    #[derive(Default)]
    struct Kept(std::sync::Mutex<u64>);

    impl SharedHistory for Kept {
        fn recall(&self, _: &str, recall: &Recall, _: Retention) -> Result<Recalled, String> {
            let last_pos = *self.0.lock().unwrap();
            let n = match recall {
                Recall::Last(n) => *n as u64,
                _ => 0,
            };
            let kept = (last_pos.saturating_sub(n) + 1..=last_pos)
                .map(|p| (kept_at(p), text(&p.to_string())))
                .collect();
            Ok(Recalled {
                epoch: "e".into(),
                last_pos,
                kept,
            })
        }
    }

    #[test]
    fn joins_that_read_their_history_from_redis_while_broadcasts_go_on_miss_none_and_repeat_none() {
        let hub = hub();
        let kept = Arc::new(Kept::default());
        hub.set_store(Arc::clone(&kept) as Arc<dyn SharedHistory>);
        let intake = keeping(16, 10_000);
        const N: u64 = 2000;
        let publishing = {
            let hub = Arc::clone(&hub);
            std::thread::spawn(move || {
                for p in 1..=N {
                    // Kept first, delivered after, as the bridge does.
                    *kept.0.lock().unwrap() = p;
                    hub.deliver_kept("/c", None, &kept_at(p), &text(&p.to_string()));
                }
            })
        };
        let mut joined = Vec::new();
        while joined.is_empty() || (!publishing.is_finished() && joined.len() < 50) {
            joined.push(join_asking_for_the_last(&hub, intake, 16));
        }
        publishing.join().unwrap();
        for m in &joined {
            let got: Vec<u64> = std::iter::from_fn(|| m.next_queued().ok())
                .map(|q| q.msg.to_text().unwrap().parse().unwrap())
                .collect();
            if let Some(&first) = got.first() {
                let want: Vec<u64> = (first..=N).collect();
                assert_eq!(got, want, "a gap or a repeat");
            }
        }
    }

    #[test]
    fn a_join_reading_its_history_holds_what_its_outbox_takes_and_beyond_it_is_a_slow_consumer() {
        let hub = hub();
        let (asked, asked_rx) = crossbeam_channel::bounded(1);
        let (answer, answers) = crossbeam_channel::bounded(1);
        hub.set_store(Arc::new(Gated { asked, answers }));
        let kept = keeping(2, 2);
        let joining = join_asking_for_the_last_two(&hub, kept);
        asked_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        for pos in [3, 4] {
            hub.deliver_kept("/c", None, &kept_at(pos), &text(&format!("m{pos}")));
        }
        assert_eq!(
            hub.metrics.count(Counter::SlowConsumerCloses),
            0,
            "two are held"
        );
        hub.deliver_kept("/c", None, &kept_at(5), &text("m5"));
        assert_eq!(
            hub.metrics.count(Counter::SlowConsumerCloses),
            1,
            "the third is not"
        );
        let recalled = Recalled {
            epoch: "e".into(),
            last_pos: 2,
            kept: [1, 2].map(|p| (kept_at(p), text(&format!("m{p}")))).into(),
        };
        answer.send(recalled).unwrap();
        let joined = joining.join().unwrap();
        assert_eq!(joined.ended(), Some(CloseReason::SLOW_CONSUMER));
    }

    #[test]
    fn an_echo_member_gets_no_broadcasts_and_is_ended_through_its_socket() {
        let hub = hub();
        let sender = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let echo = hub
            .join(
                "/c",
                Mode::Echo,
                intake(4, SlowConsumer::Disconnect),
                Holder::default(),
            )
            .unwrap()
            .unwrap();
        assert!(echo.shared.waker.is_none(), "no eventfd for an echo member");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        echo.attach_socket(Arc::new(server_side));
        sender.publish(&text("x"));
        assert!(matches!(echo.next_queued(), Err(TryRecvError::Empty)));
        assert_eq!(echo.ended(), None);
        // Revocation shuts the read side: the loop's poll wakes, and the flag says why.
        echo.shared.revoke(Revocation::Access);
        let sock = echo.shared.socket.get().unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &**sock,
            rustix::event::PollFlags::IN,
        )];
        let second = rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        assert_eq!(rustix::event::poll(&mut fds, Some(&second)).unwrap(), 1);
        assert_eq!(echo.ended(), Some(CloseReason::ACCESS_REVOKED));
        drop(client);
    }

    #[test]
    fn a_proxied_member_gets_no_broadcasts_and_is_woken_to_end_through_its_eventfd() {
        let hub = hub();
        let sender = join(&hub, "/c", 4, SlowConsumer::Disconnect);
        let proxied = hub
            .join(
                "/c",
                Mode::Proxy,
                intake(4, SlowConsumer::Disconnect),
                Holder::default(),
            )
            .unwrap()
            .unwrap();
        sender.publish(&text("x"));
        assert!(matches!(proxied.next_queued(), Err(TryRecvError::Empty)));
        let waker = proxied.shared.waker.as_ref().expect("an eventfd to end it");
        let mut fds = [rustix::event::PollFd::new(
            waker,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec::default();
        assert_eq!(rustix::event::poll(&mut fds, Some(&zero)).unwrap(), 0);
        // No socket is attached: the eventfd alone wakes its poll.
        proxied.shared.revoke(Revocation::Admin);
        assert_eq!(rustix::event::poll(&mut fds, Some(&zero)).unwrap(), 1);
        assert_eq!(proxied.ended(), Some(CloseReason::DISCONNECTED_BY_ADMIN));
    }

    #[test]
    fn leaving_and_shutdown() {
        let hub = hub();
        let a = join(&hub, "/c", 1, SlowConsumer::Disconnect);
        let b = join(&hub, "/c", 1, SlowConsumer::Disconnect);
        drop(a);
        assert_eq!(hub.members("/c"), 1);
        hub.shutdown();
        assert!(matches!(
            b.next_queued(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        ));
        assert_eq!(
            hub.join(
                "/c",
                Mode::Broadcast,
                intake(1, SlowConsumer::Drop),
                Holder::default(),
            )
            .unwrap()
            .err(),
            Some(JoinRefused::Closed(HubClosed))
        );
        drop(b);
        assert_eq!(hub.total_members(), 0);
    }
}
