//! A memory cgroup for one test's server, as a systemd unit's `MemoryMax=` gives one: cgroup v1
//! (`memory.limit_in_bytes`) or v2 (`memory.max`), whichever this machine's memory controller
//! is, created under the test process's own cgroup and removed on drop. The server is started
//! inside it through [`MemoryCgroup::wrapper`], so everything it allocates from its first page
//! on is charged there, and it reads the limit as its host's memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One memory cgroup with a limit.
pub struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// A new cgroup named for `tag` (unique per process and call) limited to `limit` bytes.
    /// Panics, saying why, where no memory controller can be used (the tests run as root).
    pub fn new(tag: &str, limit: u64) -> MemoryCgroup {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "wsgate-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let (parent, v2) = own_memory_cgroup();
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot create the memory cgroup {}: {e} (the memory tests run as root, with a \
                 cgroup v1 memory controller or cgroup v2 with memory delegated)",
                dir.display()
            )
        });
        let cgroup = MemoryCgroup { dir, v2 };
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(cgroup.dir.join(file), limit.to_string())
            .unwrap_or_else(|e| panic!("cannot set {file} in {}: {e}", cgroup.dir.display()));
        if v2 {
            // No swap: the limit is the memory, as on a host without swap.
            let _ = std::fs::write(cgroup.dir.join("memory.swap.max"), "0");
        }
        cgroup
    }

    /// The wrapper for `Server::spawn_wrapped`: a shell that moves itself into the cgroup, then
    /// execs the server (so the server's pid is the shell's).
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo $$ > {} && exec \"$0\" \"$@\"",
                self.dir.join("cgroup.procs").display()
            ),
        ]
    }

    /// How many processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no oom_kill in {file}:\n{text}"))
    }

    /// The most memory charged to the cgroup so far, in bytes.
    pub fn peak(&self) -> u64 {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for MemoryCgroup {
    /// Removes the cgroup once the processes in it are gone (the server is killed before).
    fn drop(&mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The memory cgroup this process is in, and whether it is v2: the v1 memory controller's
/// hierarchy when there is one, else the unified hierarchy if it has the memory controller.
fn own_memory_cgroup() -> (PathBuf, bool) {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut unified = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return (Path::new("/sys/fs/cgroup/memory").join(path), false);
        }
        if id == "0" && controllers.is_empty() {
            unified = Some(Path::new("/sys/fs/cgroup").join(path));
        }
    }
    let dir =
        unified.expect("this process is in no memory cgroup (no cgroup v1 memory line, no v2)");
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    assert!(
        controllers.split_whitespace().any(|c| c == "memory"),
        "the cgroup v2 {} has no memory controller delegated",
        dir.display()
    );
    (dir, true)
}
