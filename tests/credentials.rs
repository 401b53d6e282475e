//! The life cycle of credentials, end to end against the real binary: what a reload takes away
//! ends the live connections that depended on it (by every credential kind), sessions have an
//! absolute lifetime, the session cookie is a browser-only, Origin-bound credential, and a
//! malformed user value never reaches the log.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

fn config_path(server: &Server) -> PathBuf {
    server.dir.path().join("wsgate.ini")
}

fn bearer(server: &Server, token: &str) -> Client {
    server
        .connect_with("/echo", &[("Authorization", &format!("Bearer {token}"))])
        .unwrap_or_else(|e| panic!("token login: {e}; log:\n{}", server.logs()))
}

fn revoked() -> (u16, String) {
    (1008, "credential revoked".to_string())
}

#[test]
fn a_deleted_users_tokens_stop_working_his_connections_close_and_his_tokens_are_named_orphaned() {
    let server = Setup::default().start();
    let config = config_path(&server);
    let token = wsgate(&["token", "add", "bob", "--name", "sensor"], &config)
        .trim()
        .to_string();
    server.reload_and_wait();
    let mut by_password = server.connect_as("/echo", BOB);
    let mut by_token = bearer(&server, &token);
    let mut alice = server.connect_as("/echo", ALICE);

    passwd(&server, &["--delete"], "bob", "");
    server.reload_and_wait();
    assert_eq!(close_frame(&mut by_password), revoked());
    assert_eq!(close_frame(&mut by_token), revoked());
    echoes(&mut alice, "still here");
    // The token opens nothing (and so yields no session) once its user is gone.
    assert_eq!(
        status_of(server.connect_with("/echo", &[("Authorization", &format!("Bearer {token}"))])),
        401
    );
    let checked = stdout_of_success(run_wsgate([
        std::ffi::OsStr::new("check-config"),
        config.as_os_str(),
    ]));
    assert!(
        checked.contains("token \"sensor\" of user \"bob\" is orphaned"),
        "{checked}"
    );
    let listed = wsgate(&["token", "list"], &config);
    assert!(
        listed.contains("bob\tsensor\t") && listed.contains("orphaned (user not in"),
        "{listed}"
    );
    assert!(!server.logs().contains(&token), "token in log");
}

#[test]
fn a_reload_closes_exactly_the_connections_whose_credential_no_longer_holds() {
    let server = Setup::default().start();
    let config = config_path(&server);
    let add = |name: &str| {
        wsgate(&["token", "add", "alice", "--name", name], &config)
            .trim()
            .to_string()
    };
    let (phone, laptop) = (add("phone"), add("laptop"));
    server.reload_and_wait();
    let session = server.login_session(ALICE);
    let mut by_password = server.connect_as("/echo", ALICE);
    let mut by_session = server
        .connect_with(&format!("/echo?session={session}"), &[])
        .unwrap();
    let mut by_phone = bearer(&server, &phone);
    let mut by_laptop = bearer(&server, &laptop);
    let mut bob = server.connect_as("/echo", BOB);

    // A revoked token ends the connection it opened. The session ends too: it carries a
    // fingerprint of alice's tokens, so a new connection with it would now be refused.
    wsgate(&["token", "revoke", "alice", "phone"], &config);
    server.reload_and_wait();
    assert_eq!(close_frame(&mut by_phone), revoked());
    assert_eq!(close_frame(&mut by_session), revoked());
    for ws in [&mut by_password, &mut by_laptop, &mut bob] {
        echoes(ws, "kept after a token revocation");
    }

    // A new password ends the connections opened with the old one, and sessions derived from
    // it; the remaining token still proves alice, and bob is untouched.
    let session = server.login_session(ALICE);
    let mut by_session = server
        .connect_with(&format!("/echo?session={session}"), &[])
        .unwrap();
    passwd(&server, &[], "alice", "a-new-password\n");
    server.reload_and_wait();
    assert_eq!(close_frame(&mut by_password), revoked());
    assert_eq!(close_frame(&mut by_session), revoked());
    for ws in [&mut by_laptop, &mut bob] {
        echoes(ws, "kept after a password change");
    }
    assert!(
        server.wait_log("reason=\"credential revoked\"", IO_TIMEOUT),
        "{}",
        server.logs()
    );
}

#[test]
fn a_password_changed_while_its_login_waits_for_a_worker_is_refused_when_one_frees() {
    // One worker, taken by alice: bob's login is checked and waits for a worker (the queue).
    // His password changes meanwhile; the reload re-checks the live connections, which his is
    // not yet, so his own upgrade asks the same question once it has its worker.
    let mut setup = Setup::default();
    setup
        .set("server", "workers", "1")
        .set("server", "queue", "1")
        .set("limits", "upgrade_timeout", "30s")
        .set("admin", "listen", "127.0.0.1:0");
    let server = setup.start();
    let mut alice = server.connect_as("/echo", ALICE);
    echoes(&mut alice, "holding the worker");
    std::thread::scope(|scope| {
        let bob = scope.spawn(|| {
            let result = server.connect_with("/echo", &[("Authorization", &basic(BOB.0, BOB.1))]);
            status_of(result)
        });
        wait_metric(&server, "wsgate_pool_queued", |n| n == 1);
        passwd(&server, &[], "bob", "a-new-password\n");
        server.reload_and_wait();
        drop(alice);
        assert_eq!(bob.join().unwrap(), 401, "{}", server.logs());
    });
    // With the new password he gets in, once his refused connection has given back its place
    // (the pre-auth budget is one: it lingers until the client has read the 401).
    let mut bob = connect_retrying(&server, (BOB.0, "a-new-password"));
    echoes(&mut bob, "in");
}

#[test]
fn a_new_session_key_ends_the_connections_opened_with_sessions_of_the_old_one() {
    let server = Setup::default().start();
    let session = server.login_session(ALICE);
    let mut by_session = server
        .connect_with(&format!("/echo?session={session}"), &[])
        .unwrap();
    let mut by_password = server.connect_as("/echo", ALICE);
    // Deleting the key file logs every session out: the reload makes a new key.
    std::fs::remove_file(server.dir.path().join("session.key")).unwrap();
    server.reload_and_wait();
    assert_eq!(close_frame(&mut by_session), revoked());
    echoes(&mut by_password, "passwords do not depend on the key");
    assert_eq!(
        status_of(server.connect_with(&format!("/echo?session={session}"), &[])),
        401
    );
}

#[test]
fn a_client_certificate_the_reloaded_client_ca_no_longer_trusts_closes_its_connection() {
    let pki = client_pki("alice");
    let mut setup = Setup::default();
    setup
        .set("tls", "client_auth", "optional")
        .set("tls", "client_ca", "client-ca.pem");
    let (dir, config, ca) = setup.write();
    let ca_file = dir.path().join("client-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let server = Server::spawn(dir, &config, ca);
    let (mut by_cert, _) = server
        .connect_full("/echo", &[], pki.config_for(&server))
        .unwrap_or_else(|e| panic!("certificate login: {e}; log:\n{}", server.logs()));
    let mut by_password = server.connect_as("/echo", BOB);

    // Reloaded with the same CA: the certificate still holds.
    server.reload_and_wait();
    echoes(&mut by_cert, "same CA");

    // The client CA is replaced: alice's certificate is no longer trusted.
    std::fs::write(&ca_file, client_pki("someone").ca_pem).unwrap();
    server.reload_and_wait();
    assert_eq!(close_frame(&mut by_cert), revoked());
    echoes(&mut by_password, "password login untouched");
}

#[test]
fn a_session_renewed_as_often_as_it_likes_ends_at_session_max_age() {
    let mut setup = Setup::default();
    setup
        .set("auth", "session_ttl", "2s")
        .set("auth", "session_max_age", "4s");
    let server = setup.start();
    let login = Instant::now();
    let mut token = server.login_session(ALICE);
    let mut renewals = 0;
    let ended_at = loop {
        std::thread::sleep(Duration::from_millis(600));
        let at = login.elapsed();
        assert!(at < Duration::from_secs(8), "still renewed at {at:?}");
        match server.connect_full(
            &format!("/echo?session={token}"),
            &[],
            server.client_config(),
        ) {
            Ok((_ws, resp)) => {
                token = resp.headers()["x-wsgate-session"]
                    .to_str()
                    .unwrap()
                    .to_string();
                renewals += 1;
            }
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401);
                break at;
            }
            Err(e) => panic!("{e}"),
        }
    };
    // Counted in whole seconds from the login: it ends 3 to 4 s after it (seen up to one renewal
    // interval later). With a sliding expiry alone it would be renewed until the 8 s cut-off.
    assert!(
        ended_at >= Duration::from_millis(2900) && ended_at < Duration::from_millis(5500),
        "ended at {ended_at:?} after {renewals} renewals"
    );
    assert!(renewals >= 3, "{renewals} renewals");
}

#[test]
fn the_session_cookie_is_host_only_set_for_browsers_and_needs_an_allowed_origin_even_with_allow_any()
 {
    let mut setup = Setup::default();
    setup.set("origins", "allow_any", "true");
    let server = setup.start();
    let password = basic(ALICE.0, ALICE.1);
    // A client without an Origin is not a browser: the session comes in the header only.
    let (_ws, resp) = server
        .connect_full(
            "/echo",
            &[("Authorization", &password)],
            server.client_config(),
        )
        .unwrap();
    assert!(resp.headers().get("set-cookie").is_none(), "{resp:?}");
    let token = resp.headers()["x-wsgate-session"]
        .to_str()
        .unwrap()
        .to_string();
    // A browser gets it as a host-only cookie too.
    let (_ws, resp) = server
        .connect_full(
            "/echo",
            &[("Authorization", &password), ("Origin", ORIGIN_OK)],
            server.client_config(),
        )
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("__Host-wsgate_session=s1."), "{cookie}");
    for attr in ["; Secure", "; HttpOnly", "; SameSite=Strict", "; Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");

    // The cookie alone, from a page allow_any lets in, or from no page at all: refused.
    let sent = format!("theme=dark; __Host-wsgate_session={token}");
    for origin in ["https://evil.example", "null"] {
        assert_eq!(
            status_of(server.connect_with("/echo", &[("Cookie", &sent), ("Origin", origin)])),
            403,
            "{origin}"
        );
    }
    assert_eq!(
        status_of(server.connect_with("/echo", &[("Cookie", &sent)])),
        403
    );
    // From an allowed page it resumes the session.
    assert_eq!(
        status_of(server.connect_with("/echo", &[("Cookie", &sent), ("Origin", ORIGIN_OK)])),
        101
    );
}

#[test]
fn a_malformed_user_value_is_never_logged() {
    let server = Setup::default().start();
    assert_eq!(
        status_of(server.connect_with("/echo?user=alice;pass=s3cr3t-a", &[("Origin", ORIGIN_OK)])),
        401
    );
    assert_eq!(
        status_of(server.connect_with(
            "/echo",
            &[("Authorization", &basic("alice;pass=s3cr3t-b", "x"))]
        )),
        401
    );
    let logged = wait_until(IO_TIMEOUT, || {
        server.count_log("malformed credentials") >= 2
    });
    assert!(logged, "{}", server.logs());
    let logs = server.logs();
    assert!(!logs.contains("s3cr3t"), "{logs}");
}

// ------------------------------------------------------------------------------------------
// The failed-login throttle. The server takes the client address from a PROXY header, so one
// test speaks from as many addresses as it likes.

fn throttled_setup(max_failures: &str) -> Setup {
    let mut setup = Setup::default();
    setup
        .set("server", "proxy_protocol", "true")
        .set("server", "max_connections_per_ip", "64")
        .set("auth", "max_failures", max_failures)
        .set("auth", "failure_window", "60s");
    setup
}

fn addr(ip: &str) -> std::net::SocketAddr {
    format!("{ip}:40000").parse().unwrap()
}

/// A TLS connection from `ip`, handshake done, request not yet sent.
fn tls_from(server: &Server, ip: &str) -> Tls {
    server
        .tls_over(server.tcp_with(&proxy_v1(addr(ip))))
        .expect("tls")
}

/// Sends an upgrade request for `target` with `headers` over `tls`: the 101 response (its
/// connection dropped), or the refusal's status.
fn upgrade_with(
    tls: Tls,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<tungstenite::handshake::client::Response, u16> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("wss://localhost{target}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tungstenite::client::client(req, tls) {
        Ok((_ws, resp)) => Ok(resp),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("{e}"),
    }
}

/// Sends the upgrade request as `user` over `tls`; the status.
fn upgrade_over(tls: Tls, (user, pass): (&str, &str)) -> u16 {
    upgrade_with(tls, "/echo", &[("Authorization", &basic(user, pass))]).map_or_else(|s| s, |_| 101)
}

fn login_from(server: &Server, ip: &str, who: (&str, &str)) -> u16 {
    upgrade_over(tls_from(server, ip), who)
}

#[test]
fn a_users_own_logins_do_not_reset_the_failures_an_attacker_spent_elsewhere() {
    let server = throttled_setup("3").start();
    // Alice logs in between every two guesses of an attacker rotating addresses (her address
    // is trusted for her, so she is never blocked herself).
    let mut hashed = 0;
    for round in 0..4 {
        assert_eq!(login_from(&server, "10.9.9.9", ALICE), 101);
        for n in 0..2 {
            let from = format!("10.0.{round}.{n}");
            match login_from(&server, &from, ("alice", &format!("guess-{round}-{n}"))) {
                401 => hashed += 1,
                429 => {}
                other => panic!("status {other}"),
            }
        }
    }
    assert_eq!(hashed, 3, "{hashed} guesses checked; the limit is 3");
}

#[test]
fn simultaneous_wrong_passwords_are_checked_no_more_than_the_limit() {
    let server = throttled_setup("3").start();
    // 16 at once from 16 addresses, then 16 at once from one address (other user names, so
    // only that address's count applies). Distinct guesses: nothing is shared.
    for (batch, user) in [("many", "alice"), ("one", "bob")] {
        let ready: Vec<Tls> = (0..16)
            .map(|n| {
                let ip = if batch == "many" {
                    format!("10.1.0.{n}")
                } else {
                    "10.2.0.1".to_string()
                };
                tls_from(&server, &ip)
            })
            .collect();
        let start = std::sync::Barrier::new(ready.len());
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = ready
                .into_iter()
                .enumerate()
                .map(|(n, tls)| {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        upgrade_over(tls, (user, &format!("wrong-{n}")))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let checked = statuses.iter().filter(|s| **s == 401).count();
        let refused = statuses.iter().filter(|s| **s == 429).count();
        assert!(
            checked <= 3 && checked + refused == 16,
            "{batch}: {statuses:?}; log:\n{}",
            server.logs()
        );
    }
}

#[test]
fn an_address_that_logged_in_is_not_locked_out_by_failures_from_elsewhere() {
    let server = throttled_setup("3").start();
    // Alice's laptop logs in; her phone holds a session.
    assert_eq!(login_from(&server, "10.5.5.5", ALICE), 101);
    let resp = upgrade_with(
        tls_from(&server, "10.6.6.6"),
        "/echo",
        &[("Authorization", &basic(ALICE.0, ALICE.1))],
    )
    .unwrap();
    let session = resp.headers()["x-wsgate-session"]
        .to_str()
        .unwrap()
        .to_string();
    // Someone fails against her name from three addresses: the name is blocked for strangers,
    // even with the right password.
    for n in 0..3 {
        assert_eq!(
            login_from(&server, &format!("10.0.0.{n}"), ("alice", "guess")),
            401
        );
    }
    assert_eq!(login_from(&server, "10.7.7.7", ALICE), 429);
    // Her own devices still get in: the laptop by password, the phone by its session (from a
    // new address, too).
    assert_eq!(login_from(&server, "10.5.5.5", ALICE), 101);
    let resumed = upgrade_with(
        tls_from(&server, "10.8.8.8"),
        &format!("/echo?session={session}"),
        &[],
    );
    assert!(resumed.is_ok(), "{resumed:?}");
    // A failure from the laptop still counts against the laptop's own address.
    assert_eq!(login_from(&server, "10.5.5.5", ("alice", "typo")), 401);
}

#[test]
fn the_first_unknown_user_costs_what_a_wrong_password_costs() {
    let mut setup = Setup::default();
    setup.set("auth", "max_failures", "0");
    let server = setup.start();
    // Only the upgrade is timed: the TLS handshake is done first.
    let timed = |who: (&str, &str)| {
        let tls = server.tls();
        let t = Instant::now();
        let status = upgrade_over(tls, who);
        assert_eq!(status, 401);
        t.elapsed()
    };
    // Warm up (threads started, code paged in) on the known-user path only.
    timed(("alice", "warm-up-1"));
    timed(("alice", "warm-up-2"));
    // The first unknown user after the start and after each reload (which loads the users file
    // again), each beside a wrong password: medians of five, so one slow moment cannot decide.
    let (mut first_unknown, mut wrong) = (Vec::new(), Vec::new());
    for round in 0..5 {
        if round > 0 {
            server.reload_and_wait();
        }
        first_unknown.push(timed(("nobody", "x")));
        wrong.push(timed(("alice", "wrong-password")));
    }
    first_unknown.sort();
    wrong.sort();
    assert!(
        first_unknown[2].as_secs_f64() < wrong[2].as_secs_f64() * 1.5,
        "first unknown user {first_unknown:?}, wrong password {wrong:?}"
    );
}

// ------------------------------------------------------------------------------------------
// Files: commands run at the same moment, and files caught mid-write by a reload.

/// Starts `wsgate ARGS` with `stdin` fed to it; `wait` gives its output.
fn spawn_wsgate(args: &[&std::ffi::OsStr], stdin: &str) -> std::process::Child {
    spawn_with_stdin(std::process::Command::new(bin()).args(args), stdin)
}

fn succeeded(child: std::process::Child) -> String {
    stdout_of_success(child.wait_with_output().unwrap())
}

#[test]
fn concurrent_passwd_runs_never_lose_a_change() {
    let (dir, _config, _ca) = Setup::default().write();
    let users = dir.path().join("users");
    let os = |s: &str| std::ffi::OsString::from(s);
    // 20 pairs started together: two adds, or a delete racing an add.
    for i in 0..20 {
        std::fs::write(&users, users_file_text()).unwrap();
        let victim = if i % 2 == 0 { "bob" } else { "alice" };
        let (first, second) = (format!("new{i}a"), format!("new{i}b"));
        let a = spawn_wsgate(
            &[&os("passwd"), users.as_os_str(), &os(&first)],
            "pw-a-long-enough\n",
        );
        let b = if i % 4 < 2 {
            spawn_wsgate(
                &[&os("passwd"), users.as_os_str(), &os(&second)],
                "pw-b-long-enough\n",
            )
        } else {
            spawn_wsgate(
                &[
                    &os("passwd"),
                    &os("--delete"),
                    users.as_os_str(),
                    &os(victim),
                ],
                "",
            )
        };
        succeeded(a);
        succeeded(b);
        let text = std::fs::read_to_string(&users).unwrap();
        let has = |u: &str| text.lines().any(|l| l.starts_with(&format!("{u}:")));
        assert!(has(&first), "pair {i}: {first} lost:\n{text}");
        if i % 4 < 2 {
            assert!(has(&second), "pair {i}: {second} lost:\n{text}");
        } else {
            assert!(
                !has(victim),
                "pair {i}: deleted {victim} came back:\n{text}"
            );
        }
    }
}

#[test]
fn concurrent_token_runs_never_lose_a_change() {
    let (dir, config, _ca) = Setup::default().write();
    let tokens = dir.path().join("tokens");
    let run = |args: &[&str]| {
        let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        all.extend([std::ffi::OsStr::new("--config"), config.as_os_str()]);
        spawn_wsgate(&all, "")
    };
    for i in 0..20 {
        let old = format!("old{i}");
        succeeded(run(&["token", "add", "alice", "--name", &old]));
        let new = format!("new{i}");
        let revoke = run(&["token", "revoke", "alice", &old]);
        let add = run(&["token", "add", "bob", "--name", &new]);
        succeeded(revoke);
        let printed = succeeded(add);
        assert!(printed.trim().starts_with("wsg_"), "{printed}");
        let text = std::fs::read_to_string(&tokens).unwrap();
        assert!(
            !text.contains(&format!("alice:{old}:")),
            "pair {i}: revoked {old} still there:\n{text}"
        );
        assert!(
            text.contains(&format!("bob:{new}:")),
            "pair {i}: printed {new} lost:\n{text}"
        );
    }
}

#[test]
fn a_reload_that_lands_while_the_users_file_is_being_written_waits_for_the_whole_file() {
    use std::io::Write;
    // A settle time far longer than the test's two writes take, even on a busy machine.
    let server = Setup::default()
        .set("auth", "file_settle_time", "2s")
        .start();
    let mut bob = server.connect_as("/echo", BOB);
    let users = server.dir.path().join("users");
    let text = users_file_text();
    let (first_line, rest) = text.split_at(text.find('\n').unwrap() + 1);
    // An editor truncates the file and writes it in two steps; the reload lands in between.
    let mut file = std::fs::File::create(&users).unwrap();
    file.write_all(first_line.as_bytes()).unwrap();
    file.flush().unwrap();
    server.reload();
    assert!(server.wait_log("received SIGHUP", IO_TIMEOUT));
    file.write_all(rest.as_bytes()).unwrap();
    drop(file);
    assert!(
        server.wait_log("reloaded ", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    echoes(&mut bob, "bob was never dropped");
    assert_eq!(
        status_of(server.connect_with("/echo", &[("Authorization", &basic(BOB.0, BOB.1))])),
        101
    );
    // Read whole at the start and by the reload; never cut to alice alone.
    assert_eq!(
        server.count_log("2 users loaded from"),
        2,
        "{}",
        server.logs()
    );
    assert_eq!(
        server.count_log("1 user loaded from"),
        0,
        "{}",
        server.logs()
    );
}

#[test]
fn a_reload_that_would_drop_every_user_is_refused_unless_the_file_says_it_is_meant() {
    let server = Setup::default().start();
    let mut alice = server.connect_as("/echo", ALICE);
    let users = server.dir.path().join("users");
    // Caught empty (mid-write, or a botched edit): refused, at error level, naming the file.
    std::fs::write(&users, "").unwrap();
    server.reload_and_wait();
    let logs = server.logs();
    let refused = logs
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(
        refused.starts_with("ERROR")
            && refused.contains(&users.display().to_string())
            && refused.contains("would drop every user"),
        "{refused}"
    );
    echoes(&mut alice, "still in");
    assert_eq!(
        status_of(server.connect_with("/echo", &[("Authorization", &basic(ALICE.0, ALICE.1))])),
        101
    );
    // On purpose: `wsgate passwd --delete` of the last users writes the marker line.
    std::fs::write(&users, users_file_text()).unwrap();
    passwd(&server, &["--delete"], "alice", "");
    passwd(&server, &["--delete"], "bob", "");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(text.contains("# wsgate: no users"), "{text}");
    server.reload_and_wait();
    assert_eq!(close_frame(&mut alice), revoked());
    assert_eq!(
        status_of(server.connect_with("/echo", &[("Authorization", &basic(ALICE.0, ALICE.1))])),
        401
    );
}

// ------------------------------------------------------------------------------------------
// Login storms.

#[test]
fn identical_logins_in_flight_at_once_share_one_argon2_run() {
    let mut setup = Setup::default();
    setup
        .set("admin", "listen", "127.0.0.1:0")
        .set("server", "max_connections_per_ip", "64");
    let server = setup.start();
    // 30 devices of one user, cache cold (nothing logged in since the start): TLS first, then
    // every request at once.
    let ready: Vec<Tls> = (0..30).map(|_| server.tls()).collect();
    let start = std::sync::Barrier::new(ready.len());
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = ready
            .into_iter()
            .map(|tls| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    upgrade_over(tls, ALICE)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 101), "{statuses:?}");
    assert_eq!(metric(&server, "wsgate_argon2_runs_total"), 1);
}

#[test]
fn a_client_certificate_naming_no_valid_user_is_refused_at_the_upgrade_and_logged_escaped() {
    let good = client_pki("alice");
    let mut setup = Setup::default();
    setup
        .set("tls", "client_auth", "optional")
        .set("tls", "client_ca", "client-ca.pem");
    let bad: Vec<(ClientPki, &str)> = [
        ("mallory\n", "mallory\\n"),
        ("eve\u{1b}[31m", "eve\\u{1b}[31m"),
        ("two words", "two words"),
        ("quo\"te", "quo\\\"te"),
    ]
    .into_iter()
    .map(|(cn, logged)| (client_pki(cn), logged))
    .collect();
    let (dir, config, ca) = setup.write();
    // Every CA is trusted: only the names differ.
    let bundle: String = std::iter::once(&good)
        .chain(bad.iter().map(|(pki, _)| pki))
        .map(|pki| pki.ca_pem.as_str())
        .collect();
    std::fs::write(dir.path().join("client-ca.pem"), bundle).unwrap();
    let server = Server::spawn(dir, &config, ca);
    let (mut ws, _) = server
        .connect_full("/echo", &[], good.config_for(&server))
        .unwrap_or_else(|e| panic!("certificate login: {e}; log:\n{}", server.logs()));
    echoes(&mut ws, "a valid name");

    for (pki, logged) in &bad {
        let status = status_of(
            server
                .connect_full("/echo", &[], pki.config_for(&server))
                .map(|(ws, _)| ws),
        );
        assert_eq!(status, 401, "{logged}");
        let line = format!("auth failed: user=\"{logged}\" peer=127.0.0.1");
        assert!(
            server.wait_log(&line, IO_TIMEOUT),
            "{logged}: {}",
            server.logs()
        );
    }
    let logs = server.logs();
    assert!(!logs.contains('\u{1b}'), "{logs}");
    assert!(!logs.contains("mallory\n"), "{logs}");
}

#[test]
fn passwd_and_token_runs_killed_at_any_moment_leave_no_temporary_file() {
    let (dir, config, _ca) = Setup::default().write();
    let os = |s: &str| std::ffi::OsString::from(s);
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".wsgate-passwd."))
            .collect()
    };
    let passwd_args: Vec<std::ffi::OsString> = vec![
        os("passwd"),
        dir.path().join("users").into_os_string(),
        os("carol"),
    ];
    let token_args: Vec<std::ffi::OsString> = vec![
        os("token"),
        os("add"),
        os("alice"),
        os("--config"),
        config.clone().into_os_string(),
    ];
    for (args, stdin, kills) in [(&passwd_args, "carol-pw\n", 30u32), (&token_args, "", 100)] {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        // How long one whole run takes; the kills below land at every point of one.
        let started = Instant::now();
        succeeded(spawn_wsgate(&args, stdin));
        let run = started.elapsed();
        for i in 0..kills {
            let mut child = spawn_wsgate(&args, stdin);
            // Not a wait for something to happen: the moment of the kill, spread over a run.
            std::thread::sleep(run * i / kills);
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
        // Written unnamed and named only to be renamed at once: a kill leaves a copy only if
        // it lands between those two calls.
        let left = leftovers();
        assert!(left.len() <= 1, "{} kills left {left:?}", kills);
        // The next run removes what killed runs left, and leaves nothing itself.
        succeeded(spawn_wsgate(&args, stdin));
        assert_eq!(leftovers(), Vec::<String>::new());
    }
}
