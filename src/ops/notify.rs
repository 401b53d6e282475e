//! sd_notify without libsystemd: readiness, reload, stop, status and watchdog datagrams to
//! `$NOTIFY_SOCKET`. Each call sends one datagram and returns the error for the caller to log;
//! nothing here reads the config or decides anything about the server's health.
//!
//! The protocol is `KEY=VALUE` lines in one `AF_UNIX` datagram to the path (or, with a leading
//! `@`, the abstract name) in `$NOTIFY_SOCKET` (see sd_notify(3)). Without `$NOTIFY_SOCKET` every
//! call is a no-op, so the server behaves the same outside systemd.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    /// `$NOTIFY_SOCKET` unset or empty: not run by systemd (or no notification wanted).
    None,
    /// A socket path.
    Path(PathBuf),
    /// An abstract socket name (written `@name`, without the `@`).
    Abstract(Vec<u8>),
    /// An address this module cannot use (e.g. `vsock:`): every send fails saying so.
    Unsupported(String),
}

/// Sends service state to systemd. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    target: Destination,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` once. Unset or empty: every method is a no-op returning `Ok`.
    ///
    /// The variable is left in the environment (removing it needs `unsafe` in edition 2024);
    /// wsgate starts no children, and the unit sets `NotifyAccess=main` anyway.
    pub fn from_env() -> Notifier {
        let target = match std::env::var_os("NOTIFY_SOCKET") {
            None => Destination::None,
            Some(v) => parse_target(&v.to_string_lossy()),
        };
        Notifier { target }
    }

    /// A notifier sending to the socket at `path` (tests).
    #[cfg(test)]
    pub fn with_socket(path: impl Into<PathBuf>) -> Notifier {
        Notifier {
            target: Destination::Path(path.into()),
        }
    }

    /// A notifier that sends nothing.
    #[cfg(test)]
    pub fn disabled() -> Notifier {
        Notifier {
            target: Destination::None,
        }
    }

    /// True if notifications go somewhere.
    #[cfg(test)]
    pub fn is_enabled(&self) -> bool {
        self.target != Destination::None
    }

    /// `READY=1`: start-up (or a reload) is complete and the server is serving.
    ///
    /// # Errors
    /// The socket error, or an unsupported `$NOTIFY_SOCKET` address.
    pub fn ready(&self) -> io::Result<()> {
        self.send("READY=1")
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` now, as `Type=notify-reload` requires. Send
    /// [`Notifier::ready`] when the reload is done (whether or not the new config was taken).
    ///
    /// # Errors
    /// As [`Notifier::ready`].
    pub fn reloading(&self) -> io::Result<()> {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// `STOPPING=1`: shutdown has begun.
    ///
    /// # Errors
    /// As [`Notifier::ready`].
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    /// `WATCHDOG=1`: the service is alive (see [`spawn_watchdog`]).
    ///
    /// # Errors
    /// As [`Notifier::ready`].
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    /// `STATUS=…`: one line shown by `systemctl status`. Line breaks become spaces (a newline
    /// would start another assignment).
    ///
    /// # Errors
    /// As [`Notifier::ready`].
    pub fn status(&self, status: &str) -> io::Result<()> {
        let line: String = status
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.send(&format!("STATUS={line}"))
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments) as one datagram.
    ///
    /// # Errors
    /// As [`Notifier::ready`].
    pub fn send(&self, state: &str) -> io::Result<()> {
        let addr = match &self.target {
            Destination::None => return Ok(()),
            Destination::Path(p) => SocketAddr::from_pathname(p)?,
            Destination::Abstract(name) => SocketAddr::from_abstract_name(name)?,
            Destination::Unsupported(a) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "NOTIFY_SOCKET={a:?}: only unix socket paths and @abstract names are supported"
                    ),
                ));
            }
        };
        let sock = UnixDatagram::unbound()?;
        let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification datagram truncated",
            ));
        }
        Ok(())
    }
}

fn parse_target(v: &str) -> Destination {
    if v.is_empty() {
        Destination::None
    } else if let Some(name) = v.strip_prefix('@') {
        Destination::Abstract(name.as_bytes().to_vec())
    } else if v.starts_with('/') {
        Destination::Path(PathBuf::from(v))
    } else {
        Destination::Unsupported(v.to_string())
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` against.
fn monotonic_usec() -> u64 {
    let ts = clock_gettime(ClockId::Monotonic);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let micros = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000;
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

/// The watchdog interval systemd asks for (`WatchdogSec=`), from `$WATCHDOG_USEC`; `None` when
/// unset, zero, malformed, or meant for another process (`$WATCHDOG_PID` set to another pid).
/// Ping at half this interval.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Starts a thread that sends `WATCHDOG=1` now and then every `interval / 2`, but only when
/// `alive()` returns true: a listener or pool that stopped working stops the pings, and systemd
/// restarts the service after `interval`. `alive` must be quick and must not block. A failed
/// send is logged once per run of failures. The thread runs until the process exits.
///
/// # Errors
/// If the thread cannot be spawned.
pub fn spawn_watchdog(
    notifier: Notifier,
    interval: Duration,
    alive: impl Fn() -> bool + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let period = (interval / 2).max(Duration::from_millis(1));
    std::thread::Builder::new()
        .name("wsgate-watchdog".into())
        .spawn(move || {
            let (mut failing, mut withheld) = (false, false);
            let mut next = Instant::now();
            loop {
                if alive() {
                    withheld = false;
                    match notifier.watchdog() {
                        Ok(()) => failing = false,
                        Err(e) if !failing => {
                            log::error!("watchdog notification failed: {e}");
                            failing = true;
                        }
                        Err(_) => {}
                    }
                } else if !withheld {
                    log::error!("watchdog: service not alive, withholding WATCHDOG=1");
                    withheld = true;
                }
                next += period;
                let now = Instant::now();
                if next <= now {
                    next = now + period; // we overslept (suspend); do not burst
                }
                std::thread::sleep(next - now);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Sock {
        dir: PathBuf,
        path: PathBuf,
        sock: UnixDatagram,
    }

    impl Sock {
        fn new(tag: &str) -> Sock {
            let dir =
                std::env::temp_dir().join(format!("wsgate-notify-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("notify.sock");
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Sock { dir, path, sock }
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.sock.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    impl Drop for Sock {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn datagrams_arrive_in_order_with_their_contents() {
        let s = Sock::new("order");
        let n = Notifier::with_socket(&s.path);
        assert!(n.is_enabled());
        n.ready().unwrap();
        let before = monotonic_usec();
        n.reloading().unwrap();
        let after = monotonic_usec();
        n.stopping().unwrap();
        n.watchdog().unwrap();
        n.status("serving 3 connections\non 2 channels").unwrap();

        assert_eq!(s.recv(), "READY=1");
        let reloading = s.recv();
        let usec = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("unexpected: {reloading:?}"));
        let usec: u64 = usec.parse().unwrap();
        assert!(
            before <= usec && usec <= after,
            "{before} <= {usec} <= {after}"
        );
        assert_eq!(s.recv(), "STOPPING=1");
        assert_eq!(s.recv(), "WATCHDOG=1");
        assert_eq!(s.recv(), "STATUS=serving 3 connections on 2 channels");
    }

    #[test]
    fn abstract_socket() {
        let name = format!("wsgate-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier {
            target: parse_target(&format!("@{name}")),
        };
        n.ready().unwrap();
        let mut buf = [0u8; 64];
        let len = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn unset_is_a_no_op_and_unsupported_addresses_fail() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.ready().unwrap();
        assert_eq!(parse_target(""), Destination::None);
        let n = Notifier {
            target: parse_target("vsock:2:1234"),
        };
        assert_eq!(n.ready().unwrap_err().kind(), io::ErrorKind::Unsupported);
        // A missing socket is an error the caller logs.
        assert!(
            Notifier::with_socket("/nonexistent/wsgate.sock")
                .ready()
                .is_err()
        );
    }

    #[test]
    fn watchdog_interval_rules() {
        let f = watchdog_interval_from;
        assert_eq!(f(None, None, 7), None);
        assert_eq!(f(Some("30000000"), None, 7), Some(Duration::from_secs(30)));
        assert_eq!(
            f(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(f(Some("30000000"), Some("8"), 7), None);
        assert_eq!(f(Some("30000000"), Some("x"), 7), None);
        assert_eq!(f(Some("0"), None, 7), None);
        assert_eq!(f(Some("-5"), None, 7), None);
        assert_eq!(f(Some("soon"), None, 7), None);
    }

    #[test]
    fn watchdog_pings_only_while_alive() {
        let s = Sock::new("watchdog");
        let alive = Arc::new(AtomicBool::new(true));
        let a = Arc::clone(&alive);
        spawn_watchdog(
            Notifier::with_socket(&s.path),
            Duration::from_millis(100),
            move || a.load(Ordering::SeqCst),
        )
        .unwrap();
        assert_eq!(s.recv(), "WATCHDOG=1");
        assert_eq!(s.recv(), "WATCHDOG=1");
        alive.store(false, Ordering::SeqCst);
        // Drain a ping that may have raced the store, then expect silence.
        s.sock
            .set_read_timeout(Some(Duration::from_millis(120)))
            .unwrap();
        let mut buf = [0u8; 64];
        let _ = s.sock.recv(&mut buf);
        s.sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(s.sock.recv(&mut buf).is_err(), "pinged while not alive");
        alive.store(true, Ordering::SeqCst);
        s.sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(s.recv(), "WATCHDOG=1");
    }
}
