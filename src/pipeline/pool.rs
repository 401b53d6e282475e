//! The worker threads: at most `max` of them, each started when a job finds no idle worker and
//! kept afterwards. A worker that never ran a job would still cost its first stack pages and its
//! thread-local area (8 KiB resident each, measured; 80 MiB for a 10,000-worker server), and
//! starting thousands at once delays start-up, so none is started before it is needed.
//!
//! Unbounded like `threadpool`'s queue: [`crate::pipeline::admit`] bounds what is queued. A job that
//! panics ends only itself; its worker logs it and takes the next job.

use std::collections::VecDeque;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A pool of at most `max` worker threads, started on demand.
pub struct Pool {
    state: Mutex<State>,
    work: Condvar,
    max: usize,
    stack_size: usize,
    name: String,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job.
    idle: usize,
    /// Workers started (and not failed to start).
    started: usize,
}

impl Pool {
    /// A pool of up to `max` threads named `name` with `stack_size`-byte stacks; none started yet.
    pub fn new(max: usize, stack_size: usize, name: &str) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::default(),
            work: Condvar::new(),
            max,
            stack_size,
            name: name.to_string(),
        })
    }

    /// Runs `job` on an idle worker, on a new one if none is idle and fewer than `max` run, or
    /// else queues it for the next worker that finishes.
    ///
    /// # Errors
    /// The thread could not be started (`EAGAIN`: thread, memory or map limits); `job` was
    /// dropped unrun.
    pub fn execute(self: &Arc<Self>, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let job: Job = Box::new(job);
        let mut state = self.state();
        if state.jobs.len() < state.idle || state.started >= self.max {
            state.jobs.push_back(job);
            drop(state);
            self.work.notify_one();
            return Ok(());
        }
        state.started += 1;
        drop(state);
        let pool = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(self.name.clone())
            .stack_size(self.stack_size)
            .spawn(move || pool.work(job));
        if let Err(e) = spawned {
            self.state().started -= 1;
            return Err(e);
        }
        Ok(())
    }

    /// Worker threads started so far.
    #[cfg(test)]
    pub fn started(&self) -> usize {
        self.state().started
    }

    fn work(&self, first: Job) {
        let mut job = first;
        loop {
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                log::error!("a job panicked on its worker thread; the worker goes on");
            }
            let mut state = self.state();
            job = loop {
                if let Some(job) = state.jobs.pop_front() {
                    break job;
                }
                state.idle += 1;
                state = self.work.wait(state).unwrap_or_else(|p| p.into_inner());
                state.idle -= 1;
            };
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A job's result handed back to the thread waiting for it. The waiter sleeps on a futex until
/// the job is done, without the spinning and `sched_yield` of a channel's blocking receive (on a
/// one-core host those steal the CPU the job needs). Dropping the sender unsent — the job
/// panicked — wakes the waiter with `None`.
pub fn reply<T>() -> (ReplySender<T>, ReplyReceiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new((None, false)),
        ready: Condvar::new(),
    });
    (ReplySender(Arc::clone(&slot)), ReplyReceiver(slot))
}

struct Slot<T> {
    /// The value, and whether the sender is done (sent or dropped).
    state: Mutex<(Option<T>, bool)>,
    ready: Condvar,
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, (Option<T>, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The job's end of [`reply`].
pub struct ReplySender<T>(Arc<Slot<T>>);

impl<T> ReplySender<T> {
    pub fn send(self, value: T) {
        self.0.lock().0 = Some(value);
        // Drop marks it done and wakes the waiter.
    }
}

impl<T> Drop for ReplySender<T> {
    fn drop(&mut self) {
        self.0.lock().1 = true;
        self.0.ready.notify_one();
    }
}

/// The waiting end of [`reply`].
pub struct ReplyReceiver<T>(Arc<Slot<T>>);

impl<T> ReplyReceiver<T> {
    /// Waits until the sender sent (`Some`) or was dropped unsent (`None`).
    pub fn wait(self) -> Option<T> {
        let mut state = self.0.lock();
        while !state.1 {
            state = self.0.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.0.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn starts_workers_only_when_none_is_idle_and_never_more_than_max() {
        let pool = Pool::new(2, 64 * 1024, "test-pool");
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
    fn a_reply_arrives_or_says_the_job_died() {
        let pool = Pool::new(1, 64 * 1024, "test-pool");
        let (tx, rx) = reply();
        pool.execute(move || tx.send(42)).unwrap();
        assert_eq!(rx.wait(), Some(42));
        let (tx, rx) = reply::<u32>();
        pool.execute(move || {
            let _tx = tx;
            panic!("on purpose");
        })
        .unwrap();
        assert_eq!(rx.wait(), None);
    }

    #[test]
    fn a_panicking_job_leaves_its_worker_serving() {
        let pool = Pool::new(1, 64 * 1024, "test-pool");
        pool.execute(|| panic!("on purpose")).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.execute(move || tx.send(()).unwrap()).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(pool.started(), 1);
    }
}
