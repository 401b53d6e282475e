//! The memory budget at start-up: `memory_limit` resolved on this host, every other part of the
//! process that grows with load sized beside it (Argon2 permits, handshake threads, connections,
//! the users and tokens files, the admin listing) and a share kept for the kernel, the defaults of `workers`, `max_pre_auth` and
//! `max_concurrent_hashes` derived so that the whole fits the host, and the start-up line that
//! adds it up.

use std::num::NonZeroUsize;
use std::sync::Arc;

use crate::config::{Config, MemoryLimit};
use crate::memory::{self, Budget, HostMemory};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The process before any connection: the binary's and libc's resident text, the fixed threads
/// (listener, signals, file watcher, admin), the TLS configuration, the metrics, and the
/// verification cache and login throttle tables at their bounds. Measured at 4 MiB RSS at start
/// (release build); the rest is the tables filling up.
const PROCESS_BASE: usize = 6 * MIB;
/// The share of the host kept for what the kernel charges to the same cgroup: the connections'
/// socket buffers and the page cache of the files the server reads.
const KERNEL_SHARE: usize = 8;
/// Stack pages a connection's loop has touched, whatever its traffic: 8 KiB of the
/// `worker_stack_size` reserve while it has only been idle (pings, small messages; measured),
/// 12 once a read of more than rustls' 4 KiB socket read decrypted under tungstenite's read
/// (docs/benchmarks.md, "The worker's stack").
const STACK_TOUCHED: usize = 12 * KIB;
/// What an idle connection keeps beside its stack, base buffers and TLS state: its boxed
/// WebSocket, hub membership and read-share place, and malloc's overhead. With the default
/// buffers the base cost adds up to 27 KiB; an idle TLS connection was measured at 22.0 KiB
/// (docs/benchmarks.md), 4 KiB of the difference the stack page it has not touched.
const CONNECTION_STATE: usize = 2 * KIB;
/// rustls' state for an established connection with its buffers drained.
const TLS_IDLE: usize = 4 * KIB;
/// A handshake thread's stack pages touched by the deepest handshake (rustls, Argon2's caller,
/// the HTTP head: about 72 KiB measured), resident while the thread lives.
const HANDSHAKE_STACK: usize = 80 * KIB;
/// A connection's heap during its TLS handshake and upgrade: rustls' handshake state and record
/// buffers, the upgrade's request and response; the head itself is `max_request_head` more.
const HANDSHAKE_HEAP: usize = 48 * KIB;
/// A loaded users or tokens file in memory, per byte of the file (the parsed names and hashes,
/// their map), counted twice: a reload holds the new one beside the old until it is swapped in.
const FILE_FACTOR: usize = 3 * 2;
/// One connection's entry in the admin API's `/connections` listing (JSON, about 250 bytes,
/// rounded up for the string's growth).
const LISTING_ENTRY: usize = 512;
/// `workers` when unset is never more than this, however large the host: beyond it the CPU and
/// the descriptors, not memory, are the limit.
pub const MAX_DERIVED_WORKERS: usize = 1024;
/// `max_concurrent_hashes` when unset: this many where the host has room for them with half of
/// what is left still free for connections, else 1.
const DERIVED_HASHES: usize = 2;

/// What the server was sized to on this host: the cap, and the pool and hashing sizes (each as
/// configured, or derived here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub cap: Option<NonZeroUsize>,
    pub host: Option<HostMemory>,
    pub workers: NonZeroUsize,
    pub max_pre_auth: NonZeroUsize,
    pub hashes: NonZeroUsize,
    /// Connections past their 101 at once: `workers` (a queued connection waits for its worker
    /// on its handshake thread, counted with the handshakes).
    pub connections: usize,
    /// The unit costs, in bytes.
    pub costs: Costs,
}

/// The budget's unit costs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Costs {
    pub process: usize,
    /// The host's share kept for the kernel (0 without a readable host).
    pub kernel: usize,
    /// One Argon2 permit's working memory.
    pub permit: usize,
    /// One connection on its handshake thread, before its 101.
    pub handshake: usize,
    /// One connection after its 101, at base.
    pub connection: usize,
    /// The users and tokens files at their bound, old and new.
    pub files: usize,
}

impl Plan {
    fn argon2(&self) -> usize {
        self.hashes.get().saturating_mul(self.costs.permit)
    }

    fn handshakes(&self) -> usize {
        self.max_pre_auth.get().saturating_mul(self.costs.handshake)
    }

    fn at_base(&self) -> usize {
        self.connections.saturating_mul(self.costs.connection)
    }

    fn listing(&self) -> usize {
        self.connections.saturating_mul(LISTING_ENTRY)
    }

    fn cap_bytes(&self) -> usize {
        self.cap.map_or(0, NonZeroUsize::get)
    }

    /// Every part added up (saturating: counts and sizes from the config never wrap it).
    pub fn total(&self) -> usize {
        [
            self.costs.process,
            self.costs.kernel,
            self.argon2(),
            self.handshakes(),
            self.at_base(),
            self.costs.files,
            self.listing(),
            self.cap_bytes(),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }
}

/// Resolves `memory_limit` on this host, sizes the rest beside it ([`plan`]) and logs the
/// start-up line (a warning too when what is configured does not fit the host).
/// `hashing_kib` is the Argon2 memory one check against the users file needs.
pub(super) fn start(config: &Config, hashing_kib: u32) -> (Plan, Arc<Budget>) {
    let (cap, host) = memory::resolve(config.server.memory_limit);
    let plan = plan(config, cap, host, hashing_kib);
    log::info!("{}", startup_line(config.server.memory_limit, &plan));
    if let Some(over) = overrun(&plan) {
        log::warn!("{over}");
    }
    let budget = Arc::new(Budget::new(plan.cap));
    (plan, budget)
}

/// Sizes the server: `workers`, `max_pre_auth` and `max_concurrent_hashes` as configured, or
/// derived from `host` so that the whole budget fits it: `max_concurrent_hashes` 2 where two
/// permits leave at least half of what remains for connections, else 1; `workers` as many as
/// the rest holds (each with half a handshake, since `max_pre_auth` is half of them), between 1
/// and [`MAX_DERIVED_WORKERS`]. Without a readable host, the defaults of a large one.
pub(super) fn plan(
    config: &Config,
    cap: Option<NonZeroUsize>,
    host: Option<HostMemory>,
    hashing_kib: u32,
) -> Plan {
    let s = &config.server;
    let permit = hashing_kib as usize * KIB;
    let handshake = per_handshake(config);
    let connection = per_connection(config);
    let files = config
        .auth
        .max_file_size
        .get()
        .saturating_mul(2 * FILE_FACTOR);
    let cap_bytes = cap.map_or(0, NonZeroUsize::get);
    let host_bytes = host.map(|h| usize::try_from(h.bytes).unwrap_or(usize::MAX));
    let kernel = host_bytes.map_or(0, |h| h / KERNEL_SHARE);
    let fixed = [PROCESS_BASE, kernel, files, cap_bytes]
        .into_iter()
        .fold(0, usize::saturating_add);
    let left = host_bytes.map(|h| h.saturating_sub(fixed));
    let hashes = config.auth.max_concurrent_hashes.unwrap_or_else(|| {
        let fits_two = left.is_none_or(|l| l >= 2 * DERIVED_HASHES * permit);
        NonZeroUsize::new(if fits_two { DERIVED_HASHES } else { 1 }).unwrap_or(NonZeroUsize::MIN)
    });
    let workers = s.workers.unwrap_or_else(|| {
        // Less one handshake: `max_pre_auth` is half the workers rounded up.
        let room = left.map_or(usize::MAX, |l| {
            l.saturating_sub(
                hashes
                    .get()
                    .saturating_mul(permit)
                    .saturating_add(handshake),
            )
        });
        let each = connection.saturating_add(handshake / 2 + LISTING_ENTRY);
        let fit = (room / each).clamp(1, MAX_DERIVED_WORKERS);
        // A configured max_pre_auth asks for at least that many workers.
        let fit = fit.max(s.max_pre_auth.map_or(1, NonZeroUsize::get));
        NonZeroUsize::new(fit).unwrap_or(NonZeroUsize::MIN)
    });
    let max_pre_auth = s.max_pre_auth.unwrap_or_else(|| {
        NonZeroUsize::new(workers.get().div_ceil(2)).unwrap_or(NonZeroUsize::MIN)
    });
    Plan {
        cap,
        host,
        workers,
        max_pre_auth,
        hashes,
        connections: workers.get(),
        costs: Costs {
            process: PROCESS_BASE,
            kernel,
            permit,
            handshake,
            connection,
            files,
        },
    }
}

/// One connection before its 101, on its handshake thread: the thread's touched stack, the
/// handshake's heap and the request head at its bound.
fn per_handshake(config: &Config) -> usize {
    HANDSHAKE_STACK + HANDSHAKE_HEAP + config.limits.max_request_head.get()
}

/// What an idle connection costs after its 101 whatever its traffic, outside the cap: the
/// touched stack, the base read and write buffers (largest of any channel) and the TLS state.
/// The cap counts only what grows beyond this.
fn per_connection(config: &Config) -> usize {
    let limits =
        || std::iter::once(&config.limits.ws).chain(config.channels.iter().map(|c| &c.limits));
    let max = |f: fn(&crate::config::WsLimits) -> usize| limits().map(f).max().unwrap_or(0);
    // A proxied connection holds a second WebSocket, to its backend: its base buffers again (and
    // TLS state for a `wss://` backend).
    let backend = config
        .channels
        .iter()
        .filter_map(|c| c.backend().map(|b| (&c.limits, b)))
        .map(|(l, b)| {
            let tls = match b.endpoint {
                crate::config::Endpoint::Tcp { tls: true, .. } => TLS_IDLE,
                _ => 0,
            };
            l.read_buffer_size
                .get()
                .saturating_add(l.write_buffer_size)
                .saturating_add(tls)
        })
        .max()
        .unwrap_or(0);
    [
        STACK_TOUCHED,
        CONNECTION_STATE,
        max(|l| l.read_buffer_size.get()),
        max(|l| l.write_buffer_size),
        TLS_IDLE,
        backend,
    ]
    .into_iter()
    .fold(0, usize::saturating_add)
}

/// The start-up line: the host, each part of the budget with its count and unit cost, the total,
/// and where the cap came from.
fn startup_line(limit: MemoryLimit, plan: &Plan) -> String {
    let c = &plan.costs;
    let mib = |b: usize| format!("{:.1}", b as f64 / MIB as f64);
    let host = match plan.host {
        Some(h) => format!("{} MiB ({})", h.bytes >> 20, h.source.describe()),
        None => "unknown (no readable host memory size)".to_string(),
    };
    let cap = match (plan.cap, limit, plan.host) {
        (None, _, _) => "memory limit off (memory_limit = 0: nothing that grows with traffic \
                         is bounded process-wide)"
            .to_string(),
        (Some(cap), MemoryLimit::Bytes(_), _) => {
            format!("memory limit {} MiB (set by memory_limit)", cap.get() >> 20)
        }
        (Some(cap), _, Some(h)) => format!(
            "memory limit {} MiB (1/{} of {} ({} MiB), at least {} MiB)",
            cap.get() >> 20,
            memory::HOST_FRACTION,
            h.source.describe(),
            h.bytes >> 20,
            memory::FLOOR >> 20
        ),
        (Some(cap), _, None) => format!(
            "memory limit {} MiB (no readable host memory size: the floor)",
            cap.get() >> 20
        ),
    };
    format!(
        "memory budget {} MiB of host {host}: kernel (socket buffers, page cache) {} + process {} \
         + Argon2 {} x {} MiB = {} \
         (max_concurrent_hashes) + handshakes {} x {} KiB = {} (max_pre_auth) + connections {} x \
         {} KiB = {} (workers, at base after the 101) + users and tokens files {} (2 x \
         max_file_size, old and new) + admin listing {} + {cap}, enforced over outboxes, write \
         and read buffers beyond their base, messages being assembled and the cluster queue; \
         workers {}, max_pre_auth {}, max_concurrent_hashes {}",
        mib(plan.total()),
        mib(c.kernel),
        mib(c.process),
        plan.hashes,
        mib(c.permit),
        mib(plan.argon2()),
        plan.max_pre_auth,
        c.handshake.div_ceil(KIB),
        mib(plan.handshakes()),
        plan.connections,
        c.connection.div_ceil(KIB),
        mib(plan.at_base()),
        mib(c.files),
        mib(plan.listing()),
        plan.workers,
        plan.max_pre_auth,
        plan.hashes,
    )
}

/// The warning when the configured sizes add up to more than the host: a full load can then be
/// OOM-killed.
fn overrun(plan: &Plan) -> Option<String> {
    let host = usize::try_from(plan.host?.bytes).unwrap_or(usize::MAX);
    let total = plan.total();
    (total > host).then(|| {
        format!(
            "the memory budget ({} MiB) is more than the host gives this process ({} MiB): a \
             full load can be OOM-killed; unset workers, max_pre_auth and max_concurrent_hashes \
             to derive them from the host, or lower memory_limit or max_file_size",
            total >> 20,
            host >> 20
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Source;
    use std::path::Path;

    /// A config of `body` (sections other than `[auth]`), an echo channel and `auth` (lines
    /// of `[auth]`).
    fn config_with(body: &str, auth: &str) -> Config {
        let text = format!(
            "[tls]\nself_signed = true\ncert = /nonexistent/c.pem\nkey = /nonexistent/k.pem\n\
             {body}\n[channel:/e]\nmode = echo\n[auth]\nusers_file = {}/Cargo.toml\n{auth}",
            env!("CARGO_MANIFEST_DIR")
        );
        Config::parse(&text, Path::new("/tmp/budget-test.ini")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn config(body: &str) -> Config {
        config_with(body, "")
    }

    fn host(mib: u64) -> Option<HostMemory> {
        Some(HostMemory {
            bytes: mib << 20,
            source: Source::CgroupV2,
        })
    }

    fn planned(c: &Config, host_mib: u64) -> Plan {
        let h = host(host_mib);
        let cap = NonZeroUsize::new(memory::default_cap(h) as usize);
        plan(c, cap, h, 19456)
    }

    #[test]
    fn base_cost_is_the_touched_stack_the_base_buffers_and_tls() {
        let c = config(
            "[limits]\nread_buffer_size = 4KiB\nwrite_buffer_size = 4KiB\n\
             max_write_buffer_size = 64KiB\nmax_frame_size = 16KiB\nmax_message_size = 16KiB\n\
             [channel:/a]\nmode = echo\n\
             [channel:/b]\nmode = broadcast\nwrite_buffer_size = 8KiB\n",
        );
        assert_eq!(
            per_connection(&c),
            STACK_TOUCHED + CONNECTION_STATE + 4 * 1024 + 8 * 1024 + TLS_IDLE
        );
    }

    #[test]
    fn base_cost_counts_a_proxy_backend_s_buffers() {
        let c = config(
            "[limits]\nread_buffer_size = 4KiB\nwrite_buffer_size = 4KiB\n\
             max_write_buffer_size = 64KiB\nmax_frame_size = 16KiB\nmax_message_size = 16KiB\n\
             [channel:/a/*]\nmode = proxy\nbackend = ws://127.0.0.1:8080\n\
             [channel:/b]\nmode = proxy\nbackend = wss://app.example:443\n",
        );
        assert_eq!(
            per_connection(&c),
            STACK_TOUCHED
                + CONNECTION_STATE
                + 4 * 1024
                + 4 * 1024
                + TLS_IDLE
                + (4 * 1024 + 4 * 1024 + TLS_IDLE)
        );
    }

    #[test]
    fn the_defaults_fit_a_64mib_unit_and_a_pi_zero_and_are_capped_on_large_hosts() {
        let c = config("");
        // MemoryMax=64M: one permit, as many workers as the rest holds, all within 64 MiB.
        let small = planned(&c, 64);
        assert_eq!(small.hashes.get(), 1);
        assert!(small.total() <= 64 * MIB, "{small:?}");
        assert!(small.total() > 60 * MIB, "{small:?} leaves room unused");
        assert!((100..200).contains(&small.workers.get()), "{small:?}");
        assert_eq!(small.max_pre_auth.get(), small.workers.get().div_ceil(2));
        assert!(overrun(&small).is_none());
        // A Pi Zero (512 MB): two permits, 1024 workers, well inside.
        let zero = planned(&c, 512);
        assert_eq!((zero.hashes.get(), zero.workers.get()), (2, 1024));
        assert_eq!(zero.max_pre_auth.get(), 512);
        assert!(zero.total() <= 512 * MIB, "{zero:?}");
        // A large host: the caps, not the host, bound the defaults.
        let big = planned(&c, 16 * 1024);
        assert_eq!(
            (big.hashes.get(), big.workers.get()),
            (2, MAX_DERIVED_WORKERS)
        );
        // No readable host: the defaults of a large one.
        let unknown = plan(&c, NonZeroUsize::new(memory::FLOOR as usize), None, 19456);
        assert_eq!((unknown.hashes.get(), unknown.workers.get()), (2, 1024));
    }

    #[test]
    fn configured_sizes_are_kept_and_a_budget_over_the_host_is_said() {
        let c = config_with("[server]\nworkers = 1024\n", "max_concurrent_hashes = 2\n");
        let p = planned(&c, 64);
        assert_eq!(
            (p.workers.get(), p.max_pre_auth.get(), p.hashes.get()),
            (1024, 512, 2)
        );
        let warning = overrun(&p).expect("1024 workers and 2 permits overrun 64 MiB");
        assert!(
            warning.contains("more than the host gives this process (64 MiB)"),
            "{warning}"
        );
        // max_pre_auth set alone: workers derived, but never fewer than it.
        let c = config("[server]\nmax_pre_auth = 900\n");
        let p = planned(&c, 64);
        assert_eq!((p.workers.get(), p.max_pre_auth.get()), (900, 900));
        let c = config("[server]\nmax_pre_auth = 3\n");
        let p = planned(&c, 64);
        assert_eq!(p.max_pre_auth.get(), 3);
        assert!(p.workers.get() > 3);
    }

    #[test]
    fn the_startup_line_adds_up_each_part() {
        let c = config("");
        let p = planned(&c, 64);
        let line = startup_line(MemoryLimit::Host, &p);
        let total = format!("{:.1}", p.total() as f64 / MIB as f64);
        assert!(
            line.starts_with(&format!(
                "memory budget {total} MiB of host 64 MiB (the cgroup v2 memory.max): kernel \
                 (socket buffers, page cache) 8.0 + process 6.0 + Argon2 1 x 19.0 MiB = 19.0 \
                 (max_concurrent_hashes) + handshakes {} x 136 KiB",
                p.max_pre_auth
            )),
            "{line}"
        );
        assert!(
            line.contains(&format!("+ connections {} x 27 KiB = ", p.workers)),
            "{line}"
        );
        assert!(
            line.contains(
                "+ memory limit 16 MiB (1/4 of the cgroup v2 memory.max (64 MiB), at least 16 MiB)"
            ),
            "{line}"
        );
        assert!(
            line.ends_with(&format!(
                "workers {}, max_pre_auth {}, max_concurrent_hashes 1",
                p.workers, p.max_pre_auth
            )),
            "{line}"
        );
        let set = config("[server]\nmemory_limit = 32MiB\n");
        let cap = NonZeroUsize::new(32 * MIB);
        let line = startup_line(
            MemoryLimit::Bytes(cap.unwrap()),
            &plan(&set, cap, None, 19456),
        );
        assert!(
            line.contains("+ memory limit 32 MiB (set by memory_limit)"),
            "{line}"
        );
        assert!(line.contains("of host unknown"), "{line}");
        let off = startup_line(MemoryLimit::Off, &plan(&set, None, None, 19456));
        assert!(off.contains("memory limit off (memory_limit = 0"), "{off}");
    }
}
