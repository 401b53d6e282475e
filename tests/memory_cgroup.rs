//! The small-host memory promise, shown on the real binary inside a 64 MiB memory cgroup (what a
//! unit's `MemoryMax=64M` gives) with the default sizing: reloads leave nothing behind, a login
//! wave gets answers and no OOM kill, a spike's threads and a large users file's memory are given
//! back, and the users file's Argon2 parameters and size are bounded.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::cgroup::MemoryCgroup;
use common::*;

const MIB: u64 = 1024 * 1024;
/// What the tests' hosts are: a unit with `MemoryMax=64M`.
const UNIT: u64 = 64 * MIB;

/// Starts `setup` inside `cgroup`.
fn start_in(cgroup: &MemoryCgroup, setup: &Setup) -> Server {
    let (dir, config, ca) = setup.write();
    start_written_in(cgroup, dir, &config, ca)
}

fn start_written_in(
    cgroup: &MemoryCgroup,
    dir: TempDir,
    config: &Path,
    ca: rustls::pki_types::CertificateDer<'static>,
) -> Server {
    let wrapper = cgroup.wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    Server::spawn_wrapped(dir, config, ca, &wrapper)
}

/// The server's thread count (`Threads` in /proc/PID/status).
fn threads(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// The server's pool threads: its connection workers and handshake threads, by name.
fn pool_threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("wsgate-worker") || comm.starts_with("wsgate-handsha"))
        .count()
}

/// Sends SIGHUP and waits up to a minute for the reload's line (success or failure): a reload
/// of a users file of tens of thousands of lines takes seconds in a debug build on a busy machine.
fn reload_slowly(server: &Server) {
    let lines = || server.count_log("reloaded ") + server.count_log("reload failed");
    let before = lines();
    server.reload();
    let until = Instant::now() + Duration::from_secs(60);
    while lines() == before {
        assert!(
            Instant::now() < until,
            "no reload line; log:\n{}",
            server.logs()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts the server is still running and nothing in `cgroup` was OOM-killed.
fn alive(server: &mut Server, cgroup: &MemoryCgroup) {
    assert_eq!(cgroup.oom_kills(), 0, "OOM kill; log:\n{}", server.logs());
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited; log:\n{}",
        server.logs()
    );
}

/// 100 reloads in a 64 MiB unit, every other one the automatic pick-up of a `wsgate passwd`
/// change, the rest SIGHUP: RSS after the last is within 2 MiB of RSS after the first, nothing
/// is OOM-killed, and an unknown user still costs a (dummy) Argon2 run inside the permits.
#[test]
fn a_hundred_reloads_in_a_64mib_unit_keep_rss_within_2mib_of_the_first() {
    let cgroup = MemoryCgroup::new("reloads", UNIT);
    let mut setup = Setup::default();
    setup
        .set("tls", "reload_check_interval", "50ms")
        .set("auth", "file_settle_time", "0s")
        .set("log", "level", "info");
    let mut server = start_in(&cgroup, &setup);
    assert!(
        server.wait_log("memory budget ", IO_TIMEOUT),
        "no budget line; log:\n{}",
        server.logs()
    );
    // A login first: its permit's Argon2 memory is the server's for good, not a reload's.
    echoes(&mut server.connect_as("/echo", ALICE), "before");
    let reloaded = |server: &Server, n: usize| {
        let until = Instant::now() + IO_TIMEOUT;
        while server.count_log("reloaded ") < n {
            assert!(
                Instant::now() < until,
                "reload {n} not seen; log:\n{}",
                server.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
    };
    let mut first = 0;
    for n in 1..=100 {
        if n % 2 == 0 {
            // The same password again: a new salt, a changed file, picked up by the watcher.
            passwd(&server, &[], BOB.0, &format!("{}\n{}\n", BOB.1, BOB.1));
        } else {
            server.reload();
        }
        reloaded(&server, n);
        if n == 1 {
            first = rss_kib(server.pid());
        }
    }
    let last = rss_kib(server.pid());
    eprintln!(
        "RSS after reload 1: {first} KiB, after reload 100: {last} KiB; cgroup peak {} KiB",
        cgroup.peak() / 1024
    );
    alive(&mut server, &cgroup);
    assert_eq!(server.count_log("reload failed"), 0, "{}", server.logs());
    assert!(
        last <= first + 2 * 1024,
        "RSS grew from {first} KiB to {last} KiB over 100 reloads"
    );
    // The users still log in, and an unknown user is refused like a wrong password.
    echoes(&mut server.connect_as("/echo", BOB), "after");
    let unknown = basic("mallory", "whatever");
    let status = status_of(server.connect_with(
        "/echo",
        &[("Authorization", &unknown), ("Origin", ORIGIN_OK)],
    ));
    assert_eq!(status, 401);
    alive(&mut server, &cgroup);
}

/// 180 simultaneous password logins by 4 users, from 12 loopback addresses (15 each, under the
/// per-address cap), against the default sizing in a 64 MiB unit (124 workers): every client
/// gets an answer — 101, or 503 once no worker freed within the upgrade deadline, or 429 —
/// retrying only when it was turned away before TLS (the pre-auth and pool bounds, as a real
/// client would reconnect) while the 101s stay open; nothing is OOM-killed, the cgroup's peak
/// stays under 58 MiB (the previous sizing peaked at 60–62 MiB when it was not killed) and the
/// 101s still echo. The upgrade deadline is 2 s here, so the clients without a worker have their
/// 503 within seconds.
#[test]
fn a_wave_of_180_password_logins_in_a_64mib_unit_gets_answers_and_no_oom_kill() {
    const CLIENTS: usize = 180;
    let users: Vec<(String, String)> = (0..4)
        .map(|i| (format!("wave{i}"), format!("wave-password-{i}")))
        .collect();
    let cgroup = MemoryCgroup::new("wave", UNIT);
    let mut setup = Setup::default();
    setup
        .set("limits", "upgrade_timeout", "2s")
        .set("log", "level", "info");
    let (dir, config, ca) = setup.write();
    let mut text = std::fs::read_to_string(dir.path().join("users")).unwrap();
    for (user, pass) in &users {
        let hash = wsgate::auth::users::hash_password(pass).unwrap();
        text.push_str(&format!("{user}:{hash}\n"));
    }
    std::fs::write(dir.path().join("users"), text).unwrap();
    let server = start_written_in(&cgroup, dir, &config, ca);
    assert!(server.wait_log("memory budget ", IO_TIMEOUT));
    let budget = server
        .logs()
        .lines()
        .find(|l| l.contains("memory budget "))
        .unwrap()
        .to_string();
    eprintln!("{budget}");
    assert!(budget.contains("of host 64 MiB"), "{budget}");
    let server = Arc::new(server);
    let start = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (server, start) = (Arc::clone(&server), Arc::clone(&start));
            let (user, pass) = users[i % users.len()].clone();
            let from = Ipv4Addr::new(127, 0, 1, 1 + (i % 12) as u8);
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    start.wait();
                    let until = Instant::now() + Duration::from_secs(60);
                    let mut door = 0;
                    loop {
                        let tcp = tcp_from(from, server.addr, None);
                        match server.connect_over(tcp, "/echo", (&user, &pass)) {
                            Ok(ws) => return (101, door, Some(ws)),
                            Err(tungstenite::Error::Http(r)) => {
                                return (r.status().as_u16(), door, None);
                            }
                            // Closed before TLS: at the pre-auth bound. Try again.
                            Err(_) if Instant::now() < until => {
                                door += 1;
                                thread::sleep(Duration::from_millis(50));
                            }
                            Err(e) => panic!("client {i} got no answer in 60 s: {e}"),
                        }
                    }
                })
                .unwrap()
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let count = |status| results.iter().filter(|(s, _, _)| *s == status).count();
    let door: usize = results.iter().map(|(_, d, _)| d).sum();
    eprintln!(
        "{CLIENTS} logins: {} x 101, {} x 503, {} x 429, {door} turned away before TLS and \
         retried; cgroup peak {} KiB of {} KiB",
        count(101),
        count(503),
        count(429),
        cgroup.peak() / 1024,
        UNIT / 1024
    );
    assert!(
        results.iter().all(|(s, _, _)| matches!(s, 101 | 503 | 429)),
        "{:?}",
        results.iter().map(|(s, _, _)| s).collect::<Vec<_>>()
    );
    assert!(count(101) > 100, "{} x 101", count(101));
    // Well inside the unit: the budget holds a full cap and every worker beside these.
    assert!(
        cgroup.peak() < 58 * MIB,
        "{} KiB charged at the peak",
        cgroup.peak() / 1024
    );
    let mut open: Vec<Client> = results.into_iter().filter_map(|(_, _, ws)| ws).collect();
    for (i, ws) in open.iter_mut().enumerate() {
        echoes(ws, &format!("{i}"));
    }
    let mut server = Arc::try_unwrap(server).unwrap_or_else(|_| panic!("clients still hold it"));
    alive(&mut server, &cgroup);
    drop(open);
}

/// After 1,000 connections (default config, from 63 loopback addresses) have come and gone, the
/// server's thread count falls back to what it was before them: idle worker and handshake
/// threads end (after `IDLE_EXIT`, 10 s), none of them is left. Waited for by polling
/// /proc/PID/status, with a deadline.
#[test]
fn the_thread_count_returns_to_its_level_before_a_1000_connection_spike() {
    const CONNECTIONS: usize = 1000;
    raise_nofile(4 * CONNECTIONS as u64);
    let mut setup = Setup::default();
    setup.set("log", "level", "info");
    let server = Arc::new(setup.start());
    // The fixed threads (listener, signals, file watcher) are up once the first reload is done.
    server.reload_and_wait();
    let before = threads(server.pid());
    assert_eq!(pool_threads(server.pid()), 0);
    let addresses: Vec<Ipv4Addr> = (1..=63).map(|x| Ipv4Addr::new(127, 0, 2, x)).collect();
    let openers: Vec<_> = (0..8)
        .map(|t| {
            let server = Arc::clone(&server);
            let mine: Vec<Ipv4Addr> = addresses.iter().copied().skip(t).step_by(8).collect();
            let quota = if t < 7 { 128 } else { CONNECTIONS - 7 * 128 };
            thread::spawn(move || {
                mine.iter()
                    .flat_map(|a| std::iter::repeat_n(*a, 16))
                    .take(quota)
                    .map(|from| {
                        let tcp = tcp_from(from, server.addr, None);
                        server
                            .connect_over(tcp, "/echo", ALICE)
                            .unwrap_or_else(|e| panic!("connection from {from}: {e}"))
                    })
                    .collect::<Vec<Client>>()
            })
        })
        .collect();
    let open: Vec<Client> = openers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(open.len(), CONNECTIONS);
    let during = threads(server.pid());
    drop(open);
    let until = Instant::now() + Duration::from_secs(40);
    let mut now = threads(server.pid());
    while now > before || pool_threads(server.pid()) > 0 {
        assert!(
            Instant::now() < until,
            "{now} threads ({} pool threads) 40 s after the spike, {before} before it ({during} \
             during)",
            pool_threads(server.pid())
        );
        thread::sleep(Duration::from_millis(200));
        now = threads(server.pid());
    }
    eprintln!("threads: {before} before the spike, {during} during, {now} after");
    still_serving(&server);
}

/// A users file near `max_file_size` (raised to 8 MiB here: about 77,000 users) loaded on reload
/// takes memory; replaced by the original on the next reload, RSS comes back to within 2 MiB of
/// where it was. A file over the bound is refused on reload, naming the file, and the running
/// users keep logging in.
#[test]
fn rss_comes_back_after_a_large_users_file_is_replaced_and_an_oversized_one_is_refused() {
    let cgroup = MemoryCgroup::new("users", UNIT);
    let mut setup = Setup::default();
    setup
        .set("auth", "max_file_size", "8MiB")
        .set("server", "workers", "64")
        .set("auth", "file_settle_time", "0s")
        .set("log", "level", "info");
    let mut server = start_in(&cgroup, &setup);
    echoes(&mut server.connect_as("/echo", ALICE), "before");
    let users = server.dir.path().join("users");
    let original = std::fs::read_to_string(&users).unwrap();
    reload_slowly(&server);
    let base = rss_kib(server.pid());
    // One valid hash for every name: the parser checks each line's form, not its password.
    let hash = original.lines().next().unwrap().split_once(':').unwrap().1;
    let mut large = original.clone();
    let mut n = 0;
    while large.len() + 120 < 8 * MIB as usize {
        large.push_str(&format!("user{n:06}:{hash}\n"));
        n += 1;
    }
    std::fs::write(&users, &large).unwrap();
    reload_slowly(&server);
    assert!(server.wait_log(&format!("{} users loaded", n + 2), IO_TIMEOUT));
    let loaded = rss_kib(server.pid());
    std::fs::write(&users, &original).unwrap();
    reload_slowly(&server);
    let after = rss_kib(server.pid());
    eprintln!(
        "RSS with 2 users {base} KiB, with {} users ({} KiB) {loaded} KiB, after restoring \
         {after} KiB",
        n + 2,
        large.len() / 1024
    );
    assert!(
        after <= base + 2 * 1024,
        "RSS stayed at {after} KiB after the large file went ({base} KiB before it)"
    );
    // One byte over the bound: refused, the running users kept.
    let mut over = large;
    over.truncate(8 * MIB as usize - 1);
    while over.len() <= 8 * MIB as usize {
        over.push_str("# padding\n");
    }
    std::fs::write(&users, &over).unwrap();
    reload_slowly(&server);
    assert!(
        server.wait_log("more than [auth] max_file_size (8388608 bytes)", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    let line = server
        .logs()
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap()
        .to_string();
    assert!(line.contains(&users.display().to_string()), "{line}");
    echoes(&mut server.connect_as("/echo", BOB), "kept");
    // The bound is the one the budget was sized with: a reload keeps it, and says a raise needs
    // a restart.
    std::fs::write(&users, &original).unwrap();
    setup.set("auth", "max_file_size", "16MiB");
    std::fs::write(server.dir.path().join("wsgate.ini"), setup.render()).unwrap();
    reload_slowly(&server);
    assert!(
        server.wait_log(
            "max_file_size changed; these take effect only after a restart",
            IO_TIMEOUT
        ),
        "{}",
        server.logs()
    );
    std::fs::write(&users, &over).unwrap();
    reload_slowly(&server);
    assert_eq!(
        server.count_log("more than [auth] max_file_size (8388608 bytes)"),
        2,
        "{}",
        server.logs()
    );
    alive(&mut server, &cgroup);
}

/// A users file whose Argon2 parameters pass wsgate's bounds (m 65536 KiB, t 10, p 16) by one is
/// refused at start (exit 2) naming the file, line, user and bound; a reload asking for more
/// memory than the running file's hashes is refused and the running users kept.
#[test]
fn argon2_parameters_past_their_bounds_are_refused_with_file_line_and_user() {
    let salt_and_hash = "c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
    for (params, bound) in [
        (
            "m=65537,t=2,p=1",
            "Argon2 parameter m=65537 is above the bound of 65536",
        ),
        (
            "m=19456,t=11,p=1",
            "Argon2 parameter t=11 is above the bound of 10",
        ),
        (
            "m=19456,t=2,p=17",
            "Argon2 parameter p=17 is above the bound of 16",
        ),
    ] {
        let (dir, config, _) = Setup::default().write();
        let users = dir.path().join("users");
        let mut text = std::fs::read_to_string(&users).unwrap();
        text.push_str(&format!("carol:$argon2id$v=19${params}${salt_and_hash}\n"));
        std::fs::write(&users, text).unwrap();
        let out = run_wsgate(["serve".as_ref(), "--config".as_ref(), config.as_os_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{}:3: user \"carol\": {bound}", users.display())),
            "{params}: {stderr}"
        );
    }
    // The running file's largest m is what the permits were sized for: a reload asking more is
    // refused, and the running users stay.
    let server = Setup::default().start();
    let users = server.dir.path().join("users");
    let mut text = std::fs::read_to_string(&users).unwrap();
    text.push_str(&format!(
        "carol:$argon2id$v=19$m=20000,t=2,p=1${salt_and_hash}\n"
    ));
    std::fs::write(&users, text).unwrap();
    server.reload_and_wait();
    assert!(
        server.wait_log(
            "a hash asks Argon2 for m=20000 KiB, more than the 19456 KiB",
            IO_TIMEOUT
        ),
        "{}",
        server.logs()
    );
    echoes(&mut server.connect_as("/echo", ALICE), "kept");
}
