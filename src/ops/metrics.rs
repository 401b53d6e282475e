//! Counters any thread can bump (relaxed atomics, no locks on the hot path) and their rendering
//! in the Prometheus text exposition format 0.0.4. It owns no sockets and reads no config: the
//! server bumps it, [`crate::admin`] renders it.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `wsgate_build_info` | gauge | `version` | always 1; the version in the label |
//! | `wsgate_start_time_seconds` | gauge | | process start, Unix time |
//! | `wsgate_connections_total` | counter | `outcome` | accepted connections by how they ended their upgrade ([`Outcome`]) |
//! | `wsgate_connections_open` | gauge | `channel` | open WebSocket connections per channel *pattern* |
//! | `wsgate_messages_received_total` | counter | | WebSocket data messages read from clients |
//! | `wsgate_messages_sent_total` | counter | | data messages written to clients |
//! | `wsgate_received_bytes_total` | counter | | payload bytes of messages received |
//! | `wsgate_sent_bytes_total` | counter | | payload bytes of messages sent |
//! | `wsgate_broadcast_dropped_total` | counter | | messages dropped for slow subscribers (`slow_consumer = drop`) |
//! | `wsgate_broadcast_too_big_total` | counter | | broadcasts dropped for a subscriber whose own `max_message_size` (as of its upgrade) is smaller |
//! | `wsgate_slow_consumer_closes_total` | counter | | connections closed with 1008 as slow consumers |
//! | `wsgate_rate_limited_total` | counter | | messages or connections refused by a rate limit |
//! | `wsgate_publish_denied_total` | counter | | messages from clients without publish rights (closed or dropped) |
//! | `wsgate_admin_publishes_total` | counter | | messages published through the admin API (`POST /publish`, answered 202) |
//! | `wsgate_admin_disconnects_total` | counter | | connections here ended by an admin (`POST /disconnect`, here or from another instance) |
//! | `wsgate_auth_cache_hits_total` | counter | | credential checks answered from the verification cache |
//! | `wsgate_argon2_runs_total` | counter | | Argon2id verifications computed |
//! | `wsgate_upgrade_duration_seconds` | histogram | | accept to 101 (TLS handshake plus upgrade) |
//! | `wsgate_pool_workers` | gauge | `state` = busy, idle | worker threads, from [`Gauges`] |
//! | `wsgate_pool_queued` | gauge | | admitted connections waiting for a worker, from [`Gauges`] |
//! | `wsgate_proxy_connections_total` | counter | | proxied connections opened (the backend answered 101, then the client got its 101) |
//! | `wsgate_proxy_backend_failures_total` | counter | `kind` = down, timeout, tls, handshake | backend connects that failed before the 101 (503, 504, 502, 502) |
//! | `wsgate_cluster_connected` | gauge | | 1 while both Redis connections of the backbone are up, else 0 (read from the links' own states, [`ClusterLinks`]) |
//! | `wsgate_cluster_id_clash` | gauge | | 1 while another process uses this instance's `instance_id` on the backbone, else 0 |
//! | `wsgate_cluster_forwarded_total` | counter | | broadcasts published to Redis for the other instances |
//! | `wsgate_cluster_not_forwarded_total` | counter | | broadcasts never published: the oldest dropped from a full publish queue (Redis slow or away), or refused at the memory cap |
//! | `wsgate_cluster_received_total` | counter | | broadcasts received from other instances and delivered here |
//! | `wsgate_cluster_lost_total` | counter | | broadcasts of other instances missing from the stream when read (trimmed, or lost in a Redis restart) |
//! | `wsgate_memory_bytes` | gauge | | bytes counted against `memory_limit` now, from [`Gauges`] |
//! | `wsgate_memory_limit_bytes` | gauge | | the enforced `memory_limit` (0: off), from [`Gauges`] |
//! | `wsgate_memory_refusals_total` | counter | | upgrades refused with 503 at the memory cap |
//! | `wsgate_memory_drops_total` | counter | | subscribers closed 1008 because a fan-out met the memory cap |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::policy::BackendFailure;

/// How an accepted connection's upgrade ended: the `outcome` label of
/// `wsgate_connections_total`. Every accepted TCP connection is counted exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Upgraded (101).
    Accepted,
    /// 400: malformed request, not HTTP/1.1, not an upgrade, bad key.
    BadRequest,
    /// 401: no or wrong credentials.
    Unauthorized,
    /// 403: Origin refused.
    Forbidden,
    /// 404: no channel serves the path.
    NotFound,
    /// 405: not GET.
    MethodNotAllowed,
    /// 426: unsupported WebSocket version.
    UpgradeRequired,
    /// 429: rate limited.
    TooManyRequests,
    /// 431: head too large or too many headers.
    HeadersTooLarge,
    /// 501: the demo page's login while sessions are off.
    NotImplemented,
    /// 502: a proxy channel's backend answered wrongly or failed TLS.
    BadGateway,
    /// 503: shutting down, out of a resource (Argon2 queue, memory cap, workers, wake-up fds),
    /// or a proxy channel's backend is down.
    Unavailable,
    /// 504: a proxy channel's backend missed its connect deadline.
    GatewayTimeout,
    /// Refused by admission before any byte was read (pool full, per-IP cap).
    Busy,
    /// The TLS handshake failed.
    TlsError,
    /// The TLS handshake or the upgrade request missed its deadline.
    HandshakeTimeout,
    /// The connection failed (reset, closed by the peer) before the upgrade was answered.
    IoError,
}

impl Outcome {
    /// Every outcome, in label order of the exposition.
    pub const ALL: [Outcome; 17] = [
        Outcome::Accepted,
        Outcome::BadRequest,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
        Outcome::UpgradeRequired,
        Outcome::TooManyRequests,
        Outcome::HeadersTooLarge,
        Outcome::NotImplemented,
        Outcome::BadGateway,
        Outcome::Unavailable,
        Outcome::GatewayTimeout,
        Outcome::Busy,
        Outcome::TlsError,
        Outcome::HandshakeTimeout,
        Outcome::IoError,
    ];

    /// The label value: the HTTP status for refusals, a word otherwise.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::BadRequest => "400",
            Outcome::Unauthorized => "401",
            Outcome::Forbidden => "403",
            Outcome::NotFound => "404",
            Outcome::MethodNotAllowed => "405",
            Outcome::UpgradeRequired => "426",
            Outcome::TooManyRequests => "429",
            Outcome::HeadersTooLarge => "431",
            Outcome::NotImplemented => "501",
            Outcome::BadGateway => "502",
            Outcome::Unavailable => "503",
            Outcome::GatewayTimeout => "504",
            Outcome::Busy => "busy",
            Outcome::TlsError => "tls_error",
            Outcome::HandshakeTimeout => "handshake_timeout",
            Outcome::IoError => "io_error",
        }
    }

    /// The outcome of a refusal with this HTTP status (`Reason::status()`), if it is one.
    pub fn from_status(status: u16) -> Option<Outcome> {
        Some(match status {
            400 => Outcome::BadRequest,
            401 => Outcome::Unauthorized,
            403 => Outcome::Forbidden,
            404 => Outcome::NotFound,
            405 => Outcome::MethodNotAllowed,
            426 => Outcome::UpgradeRequired,
            429 => Outcome::TooManyRequests,
            431 => Outcome::HeadersTooLarge,
            501 => Outcome::NotImplemented,
            502 => Outcome::BadGateway,
            503 => Outcome::Unavailable,
            504 => Outcome::GatewayTimeout,
            // A head not complete at the upgrade deadline: a timeout of the handshake, as one
            // that sent nothing is.
            408 => Outcome::HandshakeTimeout,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds (seconds) of the upgrade-latency buckets; `+Inf` is implied.
pub const UPGRADE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Values that are read, not counted: supplied by the caller at render time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Workers serving a connection.
    pub pool_busy: u64,
    /// Workers waiting for one.
    pub pool_idle: u64,
    /// Admitted connections waiting for a free worker.
    pub pool_queued: u64,
    /// Bytes counted against the memory cap.
    pub memory_used: u64,
    /// The memory cap (0: off).
    pub memory_limit: u64,
}

/// The plain counters (no labels): each is one row here, its name and help in [`Counter::describe`];
/// [`Metrics::bump`] adds to one, [`Metrics::count`] reads it, and `render` writes them all in
/// [`Counter::ALL`]'s order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    MessagesReceived,
    MessagesSent,
    ReceivedBytes,
    SentBytes,
    BroadcastDropped,
    BroadcastTooBig,
    SlowConsumerCloses,
    RateLimited,
    PublishDenied,
    AdminPublishes,
    AdminDisconnects,
    AuthCacheHits,
    Argon2Runs,
    ProxyConnections,
    ClusterForwarded,
    ClusterNotForwarded,
    ClusterReceived,
    ClusterLost,
    MemoryRefusals,
    MemoryDrops,
}

impl Counter {
    /// Every counter, in declaration order (the index of its atomic).
    pub const ALL: [Counter; 20] = [
        Counter::MessagesReceived,
        Counter::MessagesSent,
        Counter::ReceivedBytes,
        Counter::SentBytes,
        Counter::BroadcastDropped,
        Counter::BroadcastTooBig,
        Counter::SlowConsumerCloses,
        Counter::RateLimited,
        Counter::PublishDenied,
        Counter::AdminPublishes,
        Counter::AdminDisconnects,
        Counter::AuthCacheHits,
        Counter::Argon2Runs,
        Counter::ProxyConnections,
        Counter::ClusterForwarded,
        Counter::ClusterNotForwarded,
        Counter::ClusterReceived,
        Counter::ClusterLost,
        Counter::MemoryRefusals,
        Counter::MemoryDrops,
    ];

    /// The metric's name and its `# HELP` text.
    pub fn describe(self) -> (&'static str, &'static str) {
        // One piece: a table, one arm per counter.
        match self {
            Counter::MessagesReceived => (
                "wsgate_messages_received_total",
                "WebSocket data messages received from clients.",
            ),
            Counter::MessagesSent => (
                "wsgate_messages_sent_total",
                "WebSocket data messages sent to clients.",
            ),
            Counter::ReceivedBytes => (
                "wsgate_received_bytes_total",
                "Payload bytes of WebSocket messages received from clients.",
            ),
            Counter::SentBytes => (
                "wsgate_sent_bytes_total",
                "Payload bytes of WebSocket messages sent to clients.",
            ),
            Counter::BroadcastDropped => (
                "wsgate_broadcast_dropped_total",
                "Broadcast messages dropped for slow subscribers (slow_consumer = drop).",
            ),
            Counter::BroadcastTooBig => (
                "wsgate_broadcast_too_big_total",
                "Broadcast messages dropped for a subscriber whose own max_message_size is smaller.",
            ),
            Counter::SlowConsumerCloses => (
                "wsgate_slow_consumer_closes_total",
                "Connections closed with 1008 as slow consumers.",
            ),
            Counter::RateLimited => (
                "wsgate_rate_limited_total",
                "Requests or messages refused by a rate limit.",
            ),
            Counter::PublishDenied => (
                "wsgate_publish_denied_total",
                "Messages from clients without publish rights (closed or dropped).",
            ),
            Counter::AdminPublishes => (
                "wsgate_admin_publishes_total",
                "Messages published through the admin API (POST /publish).",
            ),
            Counter::AdminDisconnects => (
                "wsgate_admin_disconnects_total",
                "Connections here ended by an admin (POST /disconnect, here or from another instance).",
            ),
            Counter::AuthCacheHits => (
                "wsgate_auth_cache_hits_total",
                "Credential checks answered from the verification cache.",
            ),
            Counter::Argon2Runs => (
                "wsgate_argon2_runs_total",
                "Argon2id password verifications computed.",
            ),
            Counter::ProxyConnections => (
                "wsgate_proxy_connections_total",
                "Proxied connections opened (the backend answered 101).",
            ),
            Counter::ClusterForwarded => (
                "wsgate_cluster_forwarded_total",
                "Broadcasts published to Redis for the other instances.",
            ),
            Counter::ClusterNotForwarded => (
                "wsgate_cluster_not_forwarded_total",
                "Broadcasts never published to Redis: the oldest dropped from a full publish queue, or refused at the memory cap.",
            ),
            Counter::ClusterReceived => (
                "wsgate_cluster_received_total",
                "Broadcasts received from other instances through Redis and delivered here.",
            ),
            Counter::ClusterLost => (
                "wsgate_cluster_lost_total",
                "Broadcasts of other instances missing from the Redis stream when read (trimmed away, or lost in a Redis restart).",
            ),
            Counter::MemoryRefusals => (
                "wsgate_memory_refusals_total",
                "Upgrades refused with 503 because the memory cap was reached.",
            ),
            Counter::MemoryDrops => (
                "wsgate_memory_drops_total",
                "Subscribers closed with 1008 because a broadcast would have exceeded the memory cap.",
            ),
        }
    }
}

/// The cluster bridge's links as each of them last saw itself, written by the link alone; the
/// backbone's state is derived from them whenever it is read.
#[derive(Debug, Default)]
pub struct ClusterLinks {
    /// The publisher link is connected.
    pub publisher: AtomicBool,
    /// The subscriber link is connected.
    pub subscriber: AtomicBool,
    /// Another process uses this instance's id (seen in the stream or in `CLIENT LIST`).
    pub clash: AtomicBool,
}

impl ClusterLinks {
    /// Both links up, and whether an id clash is reported, read now.
    pub fn state(&self) -> ClusterState {
        ClusterState {
            connected: self.publisher.load(Ordering::Acquire)
                && self.subscriber.load(Ordering::Acquire),
            clash: self.clash.load(Ordering::Acquire),
        }
    }
}

/// The backbone's state at one read of [`ClusterLinks`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClusterState {
    /// Both Redis links are up.
    pub connected: bool,
    /// Another process uses this instance's id.
    pub clash: bool,
}

/// The server's counters. `Send + Sync`; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    version: String,
    start_time: f64,
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Per [`Counter::ALL`], in that order.
    counters: [AtomicU64; Counter::ALL.len()],
    /// Open connections per channel pattern. The patterns are registered at start; a pattern
    /// first seen later (after a reload) takes the write lock once.
    open: RwLock<BTreeMap<String, AtomicI64>>,
    /// Non-cumulative counts per bucket; the last is `+Inf`.
    upgrade_buckets: [AtomicU64; UPGRADE_BUCKETS.len() + 1],
    upgrade_sum_ns: AtomicU64,
    /// The cluster bridge's link states, once a bridge runs (`/healthz` then reports them).
    cluster: OnceLock<Arc<ClusterLinks>>,
    /// Per [`BackendFailure::ALL`], in that order.
    backend_failures: [AtomicU64; BackendFailure::ALL.len()],
}

impl Metrics {
    /// Counters at zero, with an open-connections gauge at 0 for each channel pattern (so every
    /// channel appears in the exposition from the start), e.g. `["/echo", "/chat/*"]`.
    pub fn new<S: Into<String>>(channels: impl IntoIterator<Item = S>) -> Metrics {
        let start_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Metrics {
            version: env!("CARGO_PKG_VERSION").to_string(),
            start_time,
            outcomes: Default::default(),
            counters: Default::default(),
            open: RwLock::new(
                channels
                    .into_iter()
                    .map(|c| (c.into(), AtomicI64::new(0)))
                    .collect(),
            ),
            upgrade_buckets: Default::default(),
            upgrade_sum_ns: AtomicU64::new(0),
            cluster: OnceLock::new(),
            backend_failures: Default::default(),
        }
    }

    /// Counts one accepted connection's outcome.
    pub fn outcome(&self, outcome: Outcome) {
        bump(&self.outcomes[outcome.index()], 1);
    }

    /// Records how long an upgrade took, from accept to the 101 being written.
    pub fn observe_upgrade(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = UPGRADE_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(UPGRADE_BUCKETS.len());
        bump(&self.upgrade_buckets[i], 1);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        bump(&self.upgrade_sum_ns, ns);
    }

    /// A connection joined the channel with this pattern (the `[channel:…]` path as configured,
    /// never the request path: that would make the label set unbounded).
    pub fn channel_opened(&self, pattern: &str) {
        self.channel_add(pattern, 1);
    }

    /// A connection left the channel with this pattern.
    pub fn channel_closed(&self, pattern: &str) {
        self.channel_add(pattern, -1);
    }

    fn channel_add(&self, pattern: &str, delta: i64) {
        {
            let open = self.open.read().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get(pattern) {
                n.fetch_add(delta, Ordering::Relaxed);
                return;
            }
        }
        let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
        open.entry(pattern.to_string())
            .or_insert_with(|| AtomicI64::new(0))
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// Adds `n` to one counter.
    pub fn bump(&self, counter: Counter, n: u64) {
        bump(&self.counters[counter as usize], n);
    }

    /// One counter's value so far (tests, logs, the cluster bridge's accounting).
    pub fn count(&self, counter: Counter) -> u64 {
        self.counters[counter as usize].load(Ordering::Relaxed)
    }

    /// A data message of `bytes` payload bytes was read from a client.
    pub fn message_in(&self, bytes: usize) {
        self.bump(Counter::MessagesReceived, 1);
        self.bump(Counter::ReceivedBytes, bytes as u64);
    }

    /// A data message of `bytes` payload bytes was written to a client.
    pub fn message_out(&self, bytes: usize) {
        self.bump(Counter::MessagesSent, 1);
        self.bump(Counter::SentBytes, bytes as u64);
    }

    /// A backend connect failed before the 101.
    pub fn backend_failed(&self, failure: BackendFailure) {
        let i = BackendFailure::ALL
            .iter()
            .position(|f| *f == failure)
            .unwrap_or(0);
        bump(&self.backend_failures[i], 1);
    }

    /// Attaches the cluster bridge's link states (once; a second call is ignored). The gauges
    /// and `/healthz` read them when asked, so no writer ever stores a state derived from both.
    pub fn attach_cluster(&self, links: Arc<ClusterLinks>) {
        let _ = self.cluster.set(links);
    }

    /// The backbone's state for `/healthz`: `None` without a cluster bridge.
    pub fn cluster_state(&self) -> Option<ClusterState> {
        self.cluster.get().map(|links| links.state())
    }

    /// The current count for one outcome (tests, logs).
    pub fn outcome_count(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome.index()].load(Ordering::Relaxed)
    }

    /// Open connections on one channel pattern (tests, logs).
    pub fn open_on(&self, pattern: &str) -> i64 {
        let open = self.open.read().unwrap_or_else(|p| p.into_inner());
        open.get(pattern).map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// The exposition, Prometheus text format 0.0.4. Each counter is read once, so a histogram's
    /// buckets, `+Inf` and `_count` always agree even while workers keep bumping.
    pub fn render(&self, gauges: &Gauges) -> String {
        // One piece: the exposition in the order it is printed, each family beside the counters it
        // reads (once each).
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        family(
            o,
            "wsgate_build_info",
            "gauge",
            "Build information; the value is always 1.",
        );
        sample(o, "wsgate_build_info", &[("version", &self.version)], &"1");
        family(
            o,
            "wsgate_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds.",
        );
        sample(o, "wsgate_start_time_seconds", &[], &self.start_time);

        family(
            o,
            "wsgate_connections_total",
            "counter",
            "Accepted connections by upgrade outcome (accepted, the HTTP status of a refusal, busy, tls_error, handshake_timeout, io_error).",
        );
        for oc in Outcome::ALL {
            sample(
                o,
                "wsgate_connections_total",
                &[("outcome", oc.label())],
                &self.outcome_count(oc),
            );
        }

        family(
            o,
            "wsgate_connections_open",
            "gauge",
            "Open WebSocket connections per channel pattern.",
        );
        {
            let open = self.open.read().unwrap_or_else(|p| p.into_inner());
            for (pattern, n) in open.iter() {
                sample(
                    o,
                    "wsgate_connections_open",
                    &[("channel", pattern)],
                    &n.load(Ordering::Relaxed),
                );
            }
        }

        family(
            o,
            "wsgate_proxy_backend_failures_total",
            "counter",
            "Backend connects that failed before the 101, by kind (down 503, timeout 504, tls 502, handshake 502).",
        );
        for (failure, n) in BackendFailure::ALL.iter().zip(&self.backend_failures) {
            sample(
                o,
                "wsgate_proxy_backend_failures_total",
                &[("kind", failure.kind())],
                &n.load(Ordering::Relaxed),
            );
        }

        for counter in Counter::ALL {
            let (name, help) = counter.describe();
            family(o, name, "counter", help);
            sample(o, name, &[], &self.count(counter));
        }

        let name = "wsgate_upgrade_duration_seconds";
        family(
            o,
            name,
            "histogram",
            "Time from accepting a connection to its 101 answer (TLS handshake and upgrade).",
        );
        let counts: Vec<u64> = self
            .upgrade_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let sum_ns = self.upgrade_sum_ns.load(Ordering::Relaxed);
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, count) in counts.iter().enumerate() {
            cumulative += count;
            let le = UPGRADE_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            sample(o, &bucket, &[("le", &le)], &cumulative);
        }
        sample(o, &format!("{name}_sum"), &[], &(sum_ns as f64 / 1e9));
        sample(o, &format!("{name}_count"), &[], &cumulative);

        family(
            o,
            "wsgate_pool_workers",
            "gauge",
            "Worker threads by state.",
        );
        sample(
            o,
            "wsgate_pool_workers",
            &[("state", "busy")],
            &gauges.pool_busy,
        );
        sample(
            o,
            "wsgate_pool_workers",
            &[("state", "idle")],
            &gauges.pool_idle,
        );
        family(
            o,
            "wsgate_pool_queued",
            "gauge",
            "Admitted connections waiting for a free worker.",
        );
        sample(o, "wsgate_pool_queued", &[], &gauges.pool_queued);

        family(
            o,
            "wsgate_cluster_connected",
            "gauge",
            "1 while both Redis connections of the cluster backbone are up, else 0.",
        );
        let cluster = self.cluster_state().unwrap_or_default();
        sample(
            o,
            "wsgate_cluster_connected",
            &[],
            &u8::from(cluster.connected),
        );
        family(
            o,
            "wsgate_cluster_id_clash",
            "gauge",
            "1 while another process uses this instance's instance_id on the cluster backbone, else 0.",
        );
        sample(o, "wsgate_cluster_id_clash", &[], &u8::from(cluster.clash));
        let memory_gauges = [
            (
                "wsgate_memory_bytes",
                "Bytes counted against memory_limit: outboxes, write buffers, messages being read, the cluster queue.",
                gauges.memory_used,
            ),
            (
                "wsgate_memory_limit_bytes",
                "The enforced memory_limit in bytes (0: off).",
                gauges.memory_limit,
            ),
        ];
        for (name, help, value) in memory_gauges {
            family(o, name, "gauge", help);
            sample(o, name, &[], &value);
        }
        out
    }
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &dyn std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            out.push_str(&escape_label(v));
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_outcome_round_trips() {
        for (i, oc) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(oc.index(), i, "Outcome::ALL out of declaration order");
            if let Ok(status) = oc.label().parse::<u16>() {
                assert_eq!(Outcome::from_status(status), Some(oc));
            }
        }
        assert_eq!(Outcome::from_status(200), None);
    }
}
