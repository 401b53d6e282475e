//! The thread pools: at most `max` threads each, each started when a job finds no idle thread,
//! and ended once it has waited [`IDLE_EXIT`] for a job in vain. A thread that never ran a job
//! would still cost its first stack pages and its thread-local area (8 KiB resident each,
//! measured; 80 MiB for a 10,000-worker server), and starting thousands at once delays start-up,
//! so none is started before it is needed; and a spike's threads (each keeping the stack pages
//! its jobs touched) are given back once it is over.
//!
//! Two ways in, one per pool: [`Pool::execute`] runs a job now or queues it without limit (the
//! handshake threads: [`crate::pipeline::admit`] bounds what is queued); [`Pool::reserve`] waits,
//! up to a deadline, for a thread to be free for one more long job and starts it then, so the job
//! handed over later with [`Slot::run`] neither waits nor fails (the connection workers: each runs
//! one connection for its whole life). A job that panics ends only itself; its thread logs it and
//! takes the next job.

use std::collections::VecDeque;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// How long an idle thread waits for a job before it ends. Long enough that clients reconnecting
/// after a restart, a squeeze's cool-down (2 s) or a 503's `Retry-After` find the threads of the
/// connections they replace; short enough that a spike's threads and their stacks are given back
/// within seconds of its end. Restarting a thread costs about 30 µs and its stack's page faults.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);

/// A pool of at most `max` threads, started on demand.
pub struct Pool {
    state: Mutex<PoolState>,
    work: Condvar,
    /// Signalled when a reserved place is given back.
    freed: Condvar,
    max: usize,
    stack_size: usize,
    idle_exit: Duration,
    name: String,
}

#[derive(Default)]
struct PoolState {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
    /// Threads started (and not failed to start).
    started: usize,
    /// Places held by [`Slot`]s and the jobs they ran, until those jobs end.
    reserved: usize,
    /// Callers of [`Pool::reserve`] waiting for a place.
    waiting: usize,
}

/// Why [`Pool::reserve`] holds no place.
#[derive(Debug)]
pub enum NoPlace {
    /// Every thread stayed busy until the deadline.
    Timeout,
    /// A thread was needed and could not be started (`EAGAIN`: thread, memory or map limits).
    Thread(io::Error),
}

/// One place on a thread of a [`Pool`], held for the job [`Slot::run`] hands over; dropping the
/// slot unused gives the place back.
pub struct Slot {
    place: Place,
}

/// Gives a reserved place back when dropped: after its job ended (also by a panic), or with an
/// unused [`Slot`].
struct Place(Arc<Pool>);

impl Drop for Place {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.reserved -= 1;
        // A notify is a futex syscall even with nobody waiting: only when someone waits.
        if state.waiting > 0 {
            drop(state);
            self.0.freed.notify_one();
        }
    }
}

impl Pool {
    /// A pool of up to `max` threads named `name` with `stack_size`-byte stacks, each ending
    /// after `idle_exit` without a job ([`IDLE_EXIT`] in the server); none started yet.
    pub fn new(max: usize, stack_size: usize, idle_exit: Duration, name: &str) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::default(),
            work: Condvar::new(),
            freed: Condvar::new(),
            max,
            stack_size,
            idle_exit,
            name: name.to_string(),
        })
    }

    /// Runs `job` on an idle thread, on a new one if none is idle and fewer than `max` run, or
    /// else queues it for the next thread that finishes.
    ///
    /// # Errors
    /// The thread could not be started (`EAGAIN`: thread, memory or map limits); `job` was
    /// dropped unrun.
    pub fn execute(self: &Arc<Self>, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let job: Job = Box::new(job);
        let mut state = self.state();
        if state.jobs.len() < state.idle || state.started >= self.max {
            state.jobs.push_back(job);
            self.wake_idle(state);
            return Ok(());
        }
        state.started += 1;
        drop(state);
        self.spawn(Some(job))
    }

    /// Holds a place for one job: waits until fewer than `max` places are held (or `until`
    /// passes), then starts a thread if every started one is held, so the job [`Slot::run`]
    /// hands over finds its thread at once. A pool is used either this way or with
    /// [`Pool::execute`], not both.
    ///
    /// # Errors
    /// [`NoPlace`]: the deadline passed, or the thread could not be started.
    pub fn reserve(self: &Arc<Self>, until: Instant) -> Result<Slot, NoPlace> {
        let mut state = self.state();
        state.waiting += 1;
        while state.reserved >= self.max {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.waiting -= 1;
                return Err(NoPlace::Timeout);
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.waiting -= 1;
        state.reserved += 1;
        let place = Place(Arc::clone(self));
        if state.started < state.reserved {
            state.started += 1;
            drop(state);
            // On failure `place` drops here and gives the place back.
            self.spawn(None).map_err(NoPlace::Thread)?;
        }
        Ok(Slot { place })
    }

    /// Places held by slots and their running jobs.
    pub fn reserved(&self) -> usize {
        self.state().reserved
    }

    /// Callers of [`Pool::reserve`] waiting for a place.
    pub fn waiting(&self) -> usize {
        self.state().waiting
    }

    /// Starts one thread, running `first` if given, then queued jobs; counted in `started`
    /// already, which a failure takes back.
    fn spawn(self: &Arc<Self>, first: Option<Job>) -> io::Result<()> {
        let pool = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(self.name.clone())
            .stack_size(self.stack_size)
            .spawn(move || pool.work(first));
        if let Err(e) = spawned {
            self.state().started -= 1;
            return Err(e);
        }
        Ok(())
    }

    /// Threads running now (busy or idle).
    #[cfg(test)]
    pub fn started(&self) -> usize {
        self.state().started
    }

    fn work(&self, first: Option<Job>) {
        let mut job = first;
        loop {
            if let Some(job) = job.take() {
                if catch_unwind(AssertUnwindSafe(job)).is_err() {
                    log::error!(
                        "a job panicked on its {} thread; the thread goes on",
                        self.name
                    );
                }
            }
            let mut state = self.state();
            let mut idle_since = Instant::now();
            job = Some(loop {
                if let Some(job) = state.jobs.pop_front() {
                    break job;
                }
                let left = self.idle_exit.saturating_sub(idle_since.elapsed());
                // Ends only while more threads run than places are held, so every held place
                // (a slot whose job is still to come, or one running) keeps a thread; decided
                // under the lock, so a job queued meanwhile is seen above instead.
                if left.is_zero() && state.started > state.reserved {
                    state.started -= 1;
                    return;
                }
                if left.is_zero() {
                    idle_since = Instant::now();
                    continue;
                }
                state.idle += 1;
                state = self
                    .work
                    .wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                state.idle -= 1;
            });
        }
    }

    /// Wakes one idle thread for a job just queued, if any thread is idle (a thread that is not
    /// looks at the queue before it waits).
    fn wake_idle(&self, state: MutexGuard<'_, PoolState>) {
        let idle = state.idle > 0;
        drop(state);
        if idle {
            self.work.notify_one();
        }
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Slot {
    /// Runs `job` on the thread this slot holds; the place is given back when the job ends.
    pub fn run(self, job: impl FnOnce() + Send + 'static) {
        let Slot { place } = self;
        let pool = Arc::clone(&place.0);
        let mut state = pool.state();
        state.jobs.push_back(Box::new(move || {
            let _place = place;
            job();
        }));
        // Without an idle thread, the reserved one is starting or finishing a job, and looks at
        // the queue before it waits.
        pool.wake_idle(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn starts_workers_only_when_none_is_idle_and_never_more_than_max() {
        let pool = Pool::new(2, 64 * 1024, IDLE_EXIT, "test-pool");
        assert_eq!(pool.started(), 0);
        let (done_tx, done_rx) = mpsc::channel();
        // One job at a time: the first worker is reused.
        for i in 0..3 {
            let tx = done_tx.clone();
            pool.execute(move || tx.send(i).unwrap()).unwrap();
            assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), i);
            // Let the worker get back to waiting.
            while pool.state().idle == 0 {
                std::thread::yield_now();
            }
        }
        assert_eq!(pool.started(), 1);
        // Three held at once: two workers, the third job waits for one of them.
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new(hold_rx));
        for i in 0..3 {
            let (tx, hold) = (done_tx.clone(), Arc::clone(&hold));
            pool.execute(move || {
                tx.send(i).unwrap();
                let _ = hold.lock().unwrap().recv();
            })
            .unwrap();
        }
        assert_eq!(pool.started(), 2);
        let mut ran = vec![
            done_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            done_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ];
        hold_tx.send(()).unwrap();
        ran.push(done_rx.recv_timeout(Duration::from_secs(5)).unwrap());
        ran.sort_unstable();
        assert_eq!(ran, [0, 1, 2]);
        hold_tx.send(()).unwrap();
        hold_tx.send(()).unwrap();
    }

    #[test]
    fn a_reserved_place_starts_its_thread_and_is_given_back_when_its_job_ends() {
        let pool = Pool::new(2, 64 * 1024, IDLE_EXIT, "test-pool");
        let soon = || Instant::now() + Duration::from_millis(200);
        let a = pool.reserve(soon()).unwrap();
        // The thread is started with the reservation, before any job is handed over.
        assert_eq!((pool.started(), pool.reserved()), (1, 1));
        let b = pool.reserve(soon()).unwrap();
        assert_eq!((pool.started(), pool.reserved()), (2, 2));
        // Full: a third waits until its deadline.
        let t0 = Instant::now();
        assert!(matches!(pool.reserve(soon()), Err(NoPlace::Timeout)));
        assert!(t0.elapsed() >= Duration::from_millis(150));
        // An unused slot gives its place back; a used one when its job ends, a panic included.
        drop(b);
        assert_eq!(pool.reserved(), 1);
        let (tx, rx) = mpsc::channel();
        a.run(move || {
            tx.send(()).unwrap();
            panic!("on purpose");
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while pool.reserved() > 0 {
            assert!(Instant::now() < until, "the place was never given back");
            std::thread::yield_now();
        }
        // A waiter gets the place as soon as a job ends, and reuses the started threads.
        let held = pool.reserve(soon()).unwrap();
        let other = pool.reserve(soon()).unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        held.run(move || {
            let _ = release_rx.recv();
        });
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| pool.reserve(Instant::now() + Duration::from_secs(5)));
            while pool.waiting() == 0 {
                std::thread::yield_now();
            }
            release_tx.send(()).unwrap();
            assert!(waiter.join().unwrap().is_ok());
        });
        drop(other);
        assert_eq!(pool.started(), 2);
    }

    /// Waits (up to 5 s) until `pool` runs `n` threads.
    fn wait_started(pool: &Pool, n: usize) {
        let until = Instant::now() + Duration::from_secs(5);
        while pool.started() != n {
            assert!(
                Instant::now() < until,
                "{} threads, not {n}",
                pool.started()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn idle_threads_end_after_the_idle_time_and_held_places_keep_theirs() {
        let idle = Duration::from_millis(50);
        // execute: three threads for three held jobs; once done, all three end.
        let pool = Pool::new(3, 64 * 1024, idle, "test-pool");
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new(hold_rx));
        for _ in 0..3 {
            let hold = Arc::clone(&hold);
            pool.execute(move || {
                let _ = hold.lock().unwrap().recv();
            })
            .unwrap();
        }
        assert_eq!(pool.started(), 3);
        for _ in 0..3 {
            hold_tx.send(()).unwrap();
        }
        wait_started(&pool, 0);
        // And the pool starts threads again as jobs need them.
        let (tx, rx) = mpsc::channel();
        pool.execute(move || tx.send(()).unwrap()).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        wait_started(&pool, 0);
        // reserve: a held place keeps its thread past the idle time, until its job has run.
        let pool = Pool::new(2, 64 * 1024, idle, "test-pool");
        let soon = || Instant::now() + Duration::from_secs(1);
        let (a, b) = (pool.reserve(soon()).unwrap(), pool.reserve(soon()).unwrap());
        assert_eq!(pool.started(), 2);
        drop(b);
        wait_started(&pool, 1);
        std::thread::sleep(idle * 4);
        assert_eq!(pool.started(), 1, "the held place lost its thread");
        let (tx, rx) = mpsc::channel();
        a.run(move || tx.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        wait_started(&pool, 0);
    }

    #[test]
    fn a_panicking_job_leaves_its_worker_serving() {
        let pool = Pool::new(1, 64 * 1024, IDLE_EXIT, "test-pool");
        pool.execute(|| panic!("on purpose")).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.execute(move || tx.send(()).unwrap()).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(pool.started(), 1);
    }
}
