//! Admission: the bounds on connections. A connection gets a [`Ticket`] only if the pool
//! (workers plus a short wait queue), the pre-authentication budget and its address's share have
//! room; otherwise it is refused at once so the listener never waits. The admitted connection
//! goes to a handshake thread (at most `max_pre_auth`, started as connections need them: see
//! [`crate::pipeline::pool`]); once its upgrade is decided it takes a place on a worker thread
//! with [`Ticket::worker`] (at most `workers`, waiting for one up to the upgrade deadline) and is
//! handed over to it: the connection flows one way, listener → handshake thread → worker.
//! Behind a load balancer the address is known only after the PROXY header: such a ticket is
//! issued unclaimed and the handshake claims its address share with [`Ticket::claim_ip`].
//! The ticket travels with the connection to its worker and is held for the connection's life;
//! dropping it anywhere, a panic included, gives the place back.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::ServerConfig;
use crate::pipeline::pool::{IDLE_EXIT, NoPlace, Pool, Slot};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every worker is busy and the wait queue is full.
    PoolFull,
    /// `max_pre_auth` connections are already in their TLS handshake or upgrade.
    PreAuthFull,
    /// This address already has `max_connections_per_ip` connections.
    PerIpCap,
    /// No idle handshake thread, and a new one could not be started (thread or memory limits).
    NoThread,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::PoolFull => "pool full",
            Refused::PreAuthFull => "too many connections not yet authenticated",
            Refused::PerIpCap => "per-ip connection cap reached",
            Refused::NoThread => "cannot start a handshake thread",
        })
    }
}

#[derive(Default)]
struct Counts {
    in_flight: usize,
    /// Admitted connections not yet past their upgrade (TLS handshake or HTTP head).
    pre_auth: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The handshake threads, the worker threads and the admission bounds.
pub struct Admission {
    handshakes: Arc<Pool>,
    workers: Arc<Pool>,
    capacity: usize,
    pre_auth_cap: usize,
    per_ip_cap: usize,
    counts: Mutex<Counts>,
    drained: Condvar,
}

/// One admitted connection's place in the pool; giving it back is dropping it (also on panic).
pub struct Ticket {
    admission: Arc<Admission>,
    /// The address whose share this connection holds; `None` until claimed.
    ip: Option<IpAddr>,
    /// Still counted against `max_pre_auth` (until [`Ticket::authenticated`]).
    pre_auth: bool,
}

impl Admission {
    /// Up to `max_pre_auth` handshake threads with `handshake_stack_size` stacks and up to
    /// `workers` worker threads with `worker_stack_size` stacks, started as needed (the two
    /// sizes as the server's memory budget resolved them).
    pub fn new(
        server: &ServerConfig,
        workers: NonZeroUsize,
        max_pre_auth: NonZeroUsize,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            handshakes: Pool::new(
                max_pre_auth.get(),
                server.handshake_stack_size.get(),
                IDLE_EXIT,
                "wsgate-handshake",
            ),
            workers: Pool::new(
                workers.get(),
                server.worker_stack_size.get(),
                IDLE_EXIT,
                "wsgate-worker",
            ),
            capacity: workers.get().saturating_add(server.queue),
            pre_auth_cap: max_pre_auth.get(),
            per_ip_cap: server.max_connections_per_ip.get(),
            counts: Mutex::default(),
            drained: Condvar::new(),
        })
    }

    /// Runs `job` on a handshake thread if there is room for a connection from `ip`: in the pool, in the
    /// pre-authentication budget (connections still in TLS or upgrade, a smaller share of the
    /// pool, so clients that stall before authenticating cannot hold every worker) and in the
    /// address's share.
    ///
    /// # Errors
    /// [`Refused`] when one of them is full; `job` is dropped unrun.
    pub fn dispatch(
        self: &Arc<Self>,
        ip: IpAddr,
        job: impl FnOnce(Ticket) + Send + 'static,
    ) -> Result<(), Refused> {
        self.admit(Some(ip.to_canonical()), job)
    }

    /// Like [`Admission::dispatch`] for a connection whose client address is not known yet (a
    /// PROXY protocol listener, where the socket's peer is the load balancer): only the pool and
    /// the pre-authentication budget are checked; the job claims the address's share with
    /// [`Ticket::claim_ip`] once it has read it.
    ///
    /// # Errors
    /// [`Refused`] when the pool or the budget is full; `job` is dropped unrun.
    pub fn dispatch_unclaimed(
        self: &Arc<Self>,
        job: impl FnOnce(Ticket) + Send + 'static,
    ) -> Result<(), Refused> {
        self.admit(None, job)
    }

    fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        job: impl FnOnce(Ticket) + Send + 'static,
    ) -> Result<(), Refused> {
        {
            let mut counts = self.counts();
            if counts.in_flight >= self.capacity {
                return Err(Refused::PoolFull);
            }
            if counts.pre_auth >= self.pre_auth_cap {
                return Err(Refused::PreAuthFull);
            }
            if let Some(ip) = ip {
                self.take_ip_share(&mut counts, ip)?;
            }
            counts.in_flight += 1;
            counts.pre_auth += 1;
        }
        let ticket = Ticket {
            admission: Arc::clone(self),
            ip,
            pre_auth: true,
        };
        // On failure the job and its ticket were dropped: the counts are already given back.
        self.handshakes.execute(move || job(ticket)).map_err(|e| {
            log::debug!("cannot start a handshake thread: {e}");
            Refused::NoThread
        })
    }

    /// Worker threads serving a connection (or about to: their place is held).
    pub fn serving(&self) -> usize {
        self.workers.reserved()
    }

    /// Admitted connections whose upgrade is decided and that wait for a free worker.
    pub fn waiting_for_worker(&self) -> usize {
        self.workers.waiting()
    }

    /// Connections admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.counts().in_flight
    }

    /// Waits until no connection is in flight, or `grace` passes. True if all finished.
    pub fn wait_drained(&self, grace: Duration) -> bool {
        let until = Instant::now() + grace;
        let mut counts = self.counts();
        while counts.in_flight > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            counts = self
                .drained
                .wait_timeout(counts, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more connection from `ip`, if its share has room.
    fn take_ip_share(&self, counts: &mut Counts, ip: IpAddr) -> Result<(), Refused> {
        let mine = counts.per_ip.entry(ip).or_insert(0);
        if *mine >= self.per_ip_cap {
            return Err(Refused::PerIpCap);
        }
        *mine += 1;
        Ok(())
    }
}

/// Gives back one connection's share of `ip`.
fn release_ip_share(counts: &mut Counts, ip: IpAddr) {
    if let Some(n) = counts.per_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            counts.per_ip.remove(&ip);
        }
    }
}

impl Ticket {
    /// Counts this connection against `ip`'s `max_connections_per_ip` share: for tickets from
    /// [`Admission::dispatch_unclaimed`], once the PROXY header has named the client. Claiming
    /// again moves the share to the new address.
    ///
    /// # Errors
    /// [`Refused::PerIpCap`] when `ip` already has its share; the ticket then holds none.
    pub fn claim_ip(&mut self, ip: IpAddr) -> Result<(), Refused> {
        let ip = ip.to_canonical();
        let mut counts = self.admission.counts();
        if let Some(old) = self.ip.take() {
            release_ip_share(&mut counts, old);
        }
        self.admission.take_ip_share(&mut counts, ip)?;
        self.ip = Some(ip);
        Ok(())
    }

    /// Holds a place on a worker thread for this connection, waiting up to `until` for one to
    /// free; the connection is handed over with [`Slot::run`], on a thread already started.
    ///
    /// # Errors
    /// [`NoPlace`]: no worker freed in time, or a worker thread could not be started.
    pub fn worker(&self, until: Instant) -> Result<Slot, NoPlace> {
        self.admission.workers.reserve(until)
    }

    /// The connection finished its upgrade: it no longer counts against `max_pre_auth`.
    pub fn authenticated(&mut self) {
        if std::mem::take(&mut self.pre_auth) {
            self.admission.counts().pre_auth -= 1;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        counts.in_flight -= 1;
        if self.pre_auth {
            counts.pre_auth -= 1;
        }
        if let Some(ip) = self.ip {
            release_ip_share(&mut counts, ip);
        }
        if counts.in_flight == 0 {
            self.admission.drained.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::mpsc;

    fn server(workers: usize, queue: usize, per_ip: usize) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: NonZeroUsize::new(workers),
            queue,
            max_connections_per_ip: NonZeroUsize::new(per_ip).unwrap(),
            worker_stack_size: NonZeroUsize::new(256 * 1024).unwrap(),
            handshake_stack_size: NonZeroUsize::new(192 * 1024).unwrap(),
            shutdown_grace: Duration::from_secs(1),
            // As large as the pool unless a test narrows it.
            max_pre_auth: NonZeroUsize::new(workers + queue),
            proxy_protocol: false,
            drain_delay: Duration::ZERO,
            tls: true,
            allow_plaintext: false,
            memory_limit: crate::config::MemoryLimit::Off,
        }
    }

    fn admission_for(server: &ServerConfig) -> Arc<Admission> {
        Admission::new(
            server,
            server.workers.unwrap(),
            server.max_pre_auth.unwrap(),
        )
    }

    #[test]
    fn pool_and_queue_bound_admission_and_free_on_drop() {
        let admission = admission_for(&server(1, 1, 10));
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        for _ in 0..2 {
            let rx = Arc::clone(&release_rx);
            admission
                .dispatch(ip, move |_t| {
                    let _ = rx.lock().unwrap().recv();
                })
                .unwrap();
        }
        assert_eq!(admission.dispatch(ip, |_t| {}), Err(Refused::PoolFull));
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        assert!(admission.wait_drained(Duration::from_secs(5)));
        assert!(admission.dispatch(ip, |_t| {}).is_ok());
    }

    #[test]
    fn the_pre_auth_budget_bounds_unauthenticated_connections_only() {
        let mut config = server(4, 0, 10);
        config.max_pre_auth = NonZeroUsize::new(2);
        let admission = admission_for(&config);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (tx, rx) = mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, done_rx) = mpsc::channel::<()>();
        // One connection authenticates, then holds its worker.
        let (r, d) = (Arc::clone(&rx), done_tx.clone());
        admission
            .dispatch(ip, move |mut t| {
                t.authenticated();
                d.send(()).unwrap();
                let _ = r.lock().unwrap().recv();
            })
            .unwrap();
        done_rx.recv().unwrap();
        // Two stall before authenticating: the budget is full, though workers are free.
        for _ in 0..2 {
            let r = Arc::clone(&rx);
            admission
                .dispatch(ip, move |_t| {
                    let _ = r.lock().unwrap().recv();
                })
                .unwrap();
        }
        assert_eq!(admission.dispatch(ip, |_t| {}), Err(Refused::PreAuthFull));
        for _ in 0..3 {
            tx.send(()).unwrap();
        }
        assert!(admission.wait_drained(Duration::from_secs(5)));
        assert!(admission.dispatch(ip, |_t| {}).is_ok());
    }

    #[test]
    fn per_ip_cap_counts_v4_mapped_as_v4() {
        let admission = admission_for(&server(4, 0, 1));
        let (tx, rx) = mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(rx));
        let r = Arc::clone(&rx);
        admission
            .dispatch(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), move |_t| {
                let _ = r.lock().unwrap().recv();
            })
            .unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(admission.dispatch(mapped, |_t| {}), Err(Refused::PerIpCap));
        assert!(
            admission
                .dispatch(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), |_t| {})
                .is_ok()
        );
        tx.send(()).unwrap();
        assert!(admission.wait_drained(Duration::from_secs(5)));
    }

    #[test]
    fn claims_are_counted_per_address() {
        let admission = admission_for(&server(4, 0, 1));
        let (tx, rx) = mpsc::channel();
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new(hold_rx));
        let mut outcomes = Vec::new();
        for carried in [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 1]] {
            let (tx, hold) = (tx.clone(), Arc::clone(&hold));
            admission
                .dispatch_unclaimed(move |mut t| {
                    let claimed = t.claim_ip(IpAddr::from(carried));
                    tx.send(claimed).unwrap();
                    if claimed.is_ok() {
                        let _ = hold.lock().unwrap().recv();
                    }
                })
                .unwrap();
            outcomes.push(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        }
        assert_eq!(outcomes, [Ok(()), Ok(()), Err(Refused::PerIpCap)]);
        hold_tx.send(()).unwrap();
        hold_tx.send(()).unwrap();
        assert!(admission.wait_drained(Duration::from_secs(5)));
        assert!(admission.counts().per_ip.is_empty());
    }
}
