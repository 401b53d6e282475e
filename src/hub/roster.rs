//! The registry of members by path, as copy-on-write snapshots: each path's members are one
//! immutable list behind an `Arc`, replaced whole on every join and leave. A fan-out, the admin
//! listing and a reload's re-check take the list (a lock held only to clone one `Arc`) and work on
//! it with no lock held, so a publisher writing to a thousand sockets never holds up a join or a
//! leave, and a join or leave never holds up a publisher on any path.
//!
//! Joins and leaves are serialised among themselves by the caller (the hub's gate); each copies
//! its path's list of pointers (8 bytes a member) outside the map's lock and holds that lock only
//! to swap the new list in. A member a snapshot still holds after it left stays alive until that
//! snapshot is dropped: what the fan-out holding it queues for it goes with it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

/// One path's members at one moment.
pub(super) type Snapshot<M> = Arc<[Arc<M>]>;

/// The members by path. `M` is the hub's member entry; generic so the tests need no sockets.
pub(super) struct Roster<M> {
    paths: RwLock<HashMap<String, Snapshot<M>>>,
}

impl<M> Default for Roster<M> {
    fn default() -> Self {
        Roster {
            paths: RwLock::default(),
        }
    }
}

impl<M> Roster<M> {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Snapshot<M>>> {
        self.paths.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `list` in as `path`'s members (none: the path goes).
    fn swap_in(&self, path: &str, list: Vec<Arc<M>>) {
        let mut paths = self.paths.write().unwrap_or_else(|p| p.into_inner());
        if list.is_empty() {
            paths.remove(path);
        } else {
            paths.insert(path.to_string(), list.into());
        }
    }

    /// The members of `path` now; None when it has none.
    pub(super) fn snapshot(&self, path: &str) -> Option<Snapshot<M>> {
        self.read().get(path).cloned()
    }

    /// Every path's members now.
    pub(super) fn snapshots(&self) -> Vec<(String, Snapshot<M>)> {
        self.read()
            .iter()
            .map(|(path, list)| (path.clone(), Arc::clone(list)))
            .collect()
    }

    /// Members of `path` now.
    pub(super) fn count(&self, path: &str) -> usize {
        self.read().get(path).map_or(0, |list| list.len())
    }

    /// Members on all paths now.
    pub(super) fn total(&self) -> usize {
        self.read().values().map(|list| list.len()).sum()
    }

    /// Adds `member` to `path`. The caller serialises joins and leaves.
    pub(super) fn insert(&self, path: &str, member: Arc<M>) {
        let mut list: Vec<Arc<M>> = self
            .snapshot(path)
            .map_or_else(Vec::new, |old| old.iter().cloned().collect());
        list.push(member);
        self.swap_in(path, list);
    }

    /// Removes the member of `path` that `is_it` names. The caller serialises joins and leaves.
    pub(super) fn remove(&self, path: &str, is_it: impl Fn(&M) -> bool) {
        let Some(old) = self.snapshot(path) else {
            return;
        };
        let list: Vec<Arc<M>> = old.iter().filter(|m| !is_it(m)).cloned().collect();
        if list.len() != old.len() {
            drop(old);
            self.swap_in(path, list);
        }
    }

    /// Empties the registry and returns what it held.
    pub(super) fn take_all(&self) -> HashMap<String, Snapshot<M>> {
        std::mem::take(&mut *self.paths.write().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &Snapshot<u32>) -> Vec<u32> {
        list.iter().map(|m| **m).collect()
    }

    #[test]
    fn a_snapshot_keeps_what_it_saw_while_joins_and_leaves_go_on() {
        let roster = Roster::default();
        roster.insert("/c", Arc::new(1));
        roster.insert("/c", Arc::new(2));
        let before = roster.snapshot("/c").unwrap();
        // Held across a join and a leave on the same thread: neither waits for it.
        roster.insert("/c", Arc::new(3));
        roster.remove("/c", |&m| m == 1);
        assert_eq!(ids(&before), [1, 2], "the snapshot is unchanged");
        assert_eq!(ids(&roster.snapshot("/c").unwrap()), [2, 3]);
        assert_eq!(roster.count("/c"), 2);
        // A member that left lives on in the snapshot that holds it, and no longer.
        let left = Arc::downgrade(&before[0]);
        assert!(left.upgrade().is_some());
        drop(before);
        assert!(left.upgrade().is_none());
    }

    #[test]
    fn paths_come_and_go_with_their_members() {
        let roster = Roster::default();
        assert!(roster.snapshot("/c").is_none());
        roster.insert("/c", Arc::new(1));
        roster.insert("/d", Arc::new(2));
        roster.insert("/d", Arc::new(3));
        assert_eq!(roster.total(), 3);
        roster.remove("/c", |&m| m == 9);
        assert_eq!(roster.count("/c"), 1, "no such member: nothing changes");
        roster.remove("/c", |&m| m == 1);
        assert!(roster.snapshot("/c").is_none(), "the empty path is gone");
        let mut all = roster.snapshots();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].0.as_str(), ids(&all[0].1)), ("/d", vec![2, 3]));
        let taken = roster.take_all();
        assert_eq!(taken.len(), 1);
        assert_eq!(roster.total(), 0);
    }

    #[test]
    fn concurrent_readers_see_whole_lists_while_one_writer_churns() {
        let roster = Arc::new(Roster::default());
        for i in 0..100 {
            roster.insert("/c", Arc::new(i));
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (roster, stop) = (Arc::clone(&roster), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut seen = 0;
                loop {
                    let list = roster.snapshot("/c").unwrap();
                    // The writer keeps 100 or 101 members; never a list half built.
                    assert!((100..=101).contains(&list.len()), "{}", list.len());
                    assert_eq!(*list[0], 0);
                    seen += 1;
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return seen;
                    }
                }
            })
        };
        for i in 100..2100 {
            roster.insert("/c", Arc::new(i));
            roster.remove("/c", |&m| m == i);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(roster.count("/c"), 100);
    }
}
