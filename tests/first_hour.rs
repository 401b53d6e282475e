//! What a newcomer meets in the first hour, against the real binary: `check-config` says what
//! `serve` would say (certificate and key paired, listen addresses tried, `credential:` paths of
//! the packaged layout), credentials added by the commands apply within a second or two and
//! failures made before they applied lock nobody out, refusal lines name what to change, and the
//! README's demo user is called out once the listener leaves loopback.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// `wsgate check-config CONFIG` without `$CREDENTIALS_DIRECTORY`: (exit code, stdout, stderr).
fn check(config: &Path) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("check-config")
        .arg(config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `wsgate serve CONFIG` run to its exit (it must fail before listening): (code, stderr).
fn serve_failure(config: &Path) -> (i32, String) {
    let out = Command::new("timeout")
        .arg("20")
        .arg(bin())
        .arg("serve")
        .arg(config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A PEM certificate and key pair for `name`.
fn pair(name: &str) -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

#[test]
fn check_config_pairs_the_certificate_and_key_as_serve_does() {
    require_program("timeout");
    let (dir, config, _ca) = Setup::default().write();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (_, other_key) = pair("other.example");
    // Each broken pair: check-config fails with the very message serve stops with.
    for (case, cert_text, key_text, needle) in [
        (
            "a key of another certificate",
            None,
            Some(other_key.as_str()),
            "certificate and key are not usable together",
        ),
        (
            "a certificate file holding no certificate",
            Some("not a cert\n"),
            None,
            "no CERTIFICATE block found",
        ),
    ] {
        let (good_cert, good_key) = pair("localhost");
        std::fs::write(&cert, cert_text.unwrap_or(&good_cert)).unwrap();
        std::fs::write(&key, key_text.unwrap_or(&good_key)).unwrap();
        let (code, out, err) = check(&config);
        assert_eq!(code, 2, "{case}: check-config passed:\n{out}{err}");
        assert!(err.contains(needle), "{case}: {err}");
        let (code, serve_err) = serve_failure(&config);
        assert_eq!(code, 2, "{case}: {serve_err}");
        let line = err.trim();
        assert!(
            serve_err.contains(line),
            "{case}: serve says\n{serve_err}\ncheck-config says\n{line}"
        );
    }

    // self_signed with the certificate there and the key missing: both refuse, naming both.
    let mut setup = Setup::default();
    setup.set("tls", "self_signed", "true");
    let (dir, config, _ca) = setup.write();
    std::fs::remove_file(dir.path().join("key.pem")).unwrap();
    let (code, out, err) = check(&config);
    assert_eq!(code, 2, "check-config passed a half pair:\n{out}{err}");
    assert!(
        err.contains("key.pem is missing but") && err.contains("cert.pem exists"),
        "{err}"
    );
    let (code, serve_err) = serve_failure(&config);
    assert_eq!(code, 2);
    assert!(serve_err.contains(err.trim()), "{serve_err}");

    // Both missing: serve would generate them; check-config says so and writes nothing.
    std::fs::remove_file(dir.path().join("cert.pem")).unwrap();
    let (code, out, err) = check(&config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("note: [tls] self_signed: serve will generate"),
        "{out}"
    );
    assert!(!dir.path().join("cert.pem").exists() && !dir.path().join("key.pem").exists());
}

#[test]
fn check_config_tries_each_listen_address() {
    // An address this host does not have: serve cannot bind it, so check-config fails, naming
    // the key and the fix.
    let mut setup = Setup::default();
    setup.set("server", "listen", "192.0.2.1:8443");
    let (_dir, config, _ca) = setup.write();
    let (code, out, err) = check(&config);
    assert_eq!(code, 2, "check-config passed:\n{out}{err}");
    assert!(
        err.contains("[server] listen = 192.0.2.1:8443: cannot listen")
            && err.contains("no interface of this host has that address"),
        "{err}"
    );

    // An address in use (it may be this very server, running): a warning, exit 0.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut setup = Setup::default();
    setup
        .set("server", "listen", &addr)
        .set("admin", "listen", "127.0.0.1:0");
    let (_dir, config, _ca) = setup.write();
    let (code, out, err) = check(&config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("warning: [server] listen = {addr} is in use now")),
        "{out}"
    );
    // serve itself stops there, naming the key.
    let (code, serve_err) = serve_failure(&config);
    assert_eq!(code, 1, "{serve_err}");
    assert!(
        serve_err.contains(&format!("[server] listen = {addr}: cannot listen"))
            && serve_err.contains("another process listens there"),
        "{serve_err}"
    );
    drop(taken);
    // An admin address in use is tried too.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    setup
        .set("server", "listen", "127.0.0.1:0")
        .set("admin", "listen", &admin);
    let (_dir, config, _ca) = setup.write();
    let (code, out, _) = check(&config);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("warning: [admin] listen = {admin} is in use now")),
        "{out}"
    );
}

#[test]
fn check_config_says_a_privileged_port_needs_the_capability() {
    // The highest privileged port of this kernel, asked by a user without the capability (root
    // has it: the test runs the command as `nobody` then, through setpriv).
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let port = start
        .checked_sub(1)
        .expect("every port is unprivileged on this kernel: the case cannot be made");
    let mut setup = Setup::default();
    setup.set("server", "listen", &format!("127.0.0.1:{port}"));
    let (dir, config, _ca) = setup.write();
    let mut cmd = if rustix::process::geteuid().is_root() {
        // nobody must read the test's files; the key's mode gets its own warning, no error.
        for name in ["key.pem", "users", "wsgate.ini", "cert.pem"] {
            let path = dir.path().join(name);
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        }
        let mut cmd = Command::new(require_program("setpriv"));
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(bin());
        cmd
    } else {
        Command::new(bin())
    };
    let out = cmd.arg("check-config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "[server] listen = 127.0.0.1:{port}: cannot listen"
        )) && err.contains("CAP_NET_BIND_SERVICE"),
        "{err}"
    );
}

#[test]
fn check_config_reads_credential_paths_beside_the_config_as_the_packaged_unit_does() {
    // The packaged layout: the key and the users file named `credential:ID`, each ID a file
    // beside the config (the unit's LoadCredential=ID:/etc/wsgate/ID).
    let mut setup = Setup::default();
    setup
        .set("tls", "key", "credential:key.pem")
        .set("auth", "users_file", "credential:users");
    let (dir, config, _ca) = setup.write();
    let shown = std::path::absolute(dir.path())
        .unwrap()
        .display()
        .to_string();
    let (code, out, err) = check(&config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("credential: paths read from {shown}"))
            && out.contains(&format!("set CREDENTIALS_DIRECTORY={shown}")),
        "{out}"
    );
    assert!(out.contains("2 users"), "{out}");

    // A credential missing there is an error naming the file.
    std::fs::remove_file(dir.path().join("users")).unwrap();
    let (code, _, err) = check(&config);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{shown}/users")) && err.contains("not found"),
        "{err}"
    );

    // serve by hand without the variable: the error names the variable's value.
    std::fs::write(dir.path().join("users"), users_file_text()).unwrap();
    let (code, serve_err) = serve_failure(&config);
    assert_eq!(code, 2);
    assert!(
        serve_err.contains(&format!("`CREDENTIALS_DIRECTORY={shown} wsgate ...`")),
        "{serve_err}"
    );
}

/// Writes `text` into `path` as an editor or a provisioning script does, not atomically: the file
/// is cut short (mid-line) for a moment, during which `during` runs; then the rest is written.
fn write_slowly<T>(path: &Path, text: &str, during: impl FnOnce() -> T) -> T {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let cut = text.len() / 2;
    file.write_all(&text.as_bytes()[..cut]).unwrap();
    file.sync_data().unwrap();
    let started = during();
    // The writer's pause between its two writes; a reader that read the cut file has read it.
    std::thread::sleep(Duration::from_millis(300));
    file.write_all(&text.as_bytes()[cut..]).unwrap();
    started
}

/// `check-config` (the unit's `ExecStartPre=`) and the start read a users file still being
/// written once it is whole, as a reload does: started while the file is cut mid-line, both
/// wait for it to settle, then `check-config` says ok with both users and `serve` starts with
/// them — not exit 2 on a line cut short, which `RestartPreventExitStatus=2` would leave stopped.
#[test]
fn check_config_and_the_start_read_a_users_file_still_being_written_once_it_is_whole() {
    let mut setup = Setup::default();
    setup.set("auth", "file_settle_time", "1s");
    let (dir, config, ca) = setup.write();
    let users = dir.path().join("users");
    let checking = write_slowly(&users, users_file_text(), || {
        Command::new(bin())
            .arg("check-config")
            .arg(&config)
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    });
    let out = checking.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("ok (") && stdout.contains("2 users"),
        "{stdout}"
    );

    let serving = std::thread::scope(|scope| {
        write_slowly(&users, users_file_text(), || {
            scope.spawn(move || Server::spawn(dir, &config, ca))
        })
        .join()
        .unwrap()
    });
    assert!(
        serving.wait_log("2 users loaded", Duration::from_secs(5)),
        "{}",
        serving.logs()
    );
    echoes(&mut serving.connect_as("/echo", BOB), "bob is in");
}

/// `wsgate token add --config CONFIG USER`: the token.
fn token_add(config: &Path, user: &str) -> String {
    let out = run_wsgate([
        "token".as_ref(),
        "add".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        user.as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("in the foreground or as a service") && stderr.contains("within a second"),
        "the hint does not say how the token applies: {stderr}"
    );
    stdout_of_success(out).trim().to_string()
}

/// How long a credential the commands change may take to apply at the default interval (the
/// promise is "within a second or two"; the bound leaves room for a loaded test machine).
const APPLIES_WITHIN: Duration = Duration::from_secs(4);

/// Connects with the bearer `token` until the server answers `want`, up to [`APPLIES_WITHIN`].
fn until_status(server: &Server, token: &str, want: u16) {
    let bearer = format!("Bearer {token}");
    let until = Instant::now() + APPLIES_WITHIN;
    loop {
        let got = status_of(server.connect_with("/echo", &[("Authorization", &bearer)]));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "still {got}, not {want}, after {APPLIES_WITHIN:?}; log:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_token_tried_before_the_server_loaded_it_locks_nobody_out() {
    // The default watch interval, and the default throttle (5 failures, 5 minutes).
    let mut setup = Setup::default();
    setup
        .unset("tls", "reload_check_interval")
        .set("auth", "tokens_file", "tokens");
    let (dir, config, ca) = setup.write();
    let server = Server::spawn(dir, &config, ca);

    // The newcomer tries tokens the server does not know (yet): five 401s, then 429 for
    // everything from this address, with how long in the answer and in the log.
    for _ in 0..5 {
        assert_eq!(
            status_of(server.connect_with("/echo", &[("Authorization", "Bearer wsg_nope")])),
            401
        );
    }
    let retry = retry_after_of_429(
        server.connect_with("/echo", &[("Authorization", &basic(ALICE.0, ALICE.1))]),
    );
    assert!((1..=300).contains(&retry), "Retry-After {retry}");
    assert!(
        server.wait_log("further attempts get 429 for ", IO_TIMEOUT),
        "{}",
        server.logs()
    );

    // `token add`: the server loads it within a second or two, and the reload forgives the
    // failures counted before it, so the new token works from the same address.
    let token = token_add(&config, "alice");
    until_status(&server, &token, 101);
    let mut ws = server.connect_as("/echo", ALICE);
    echoes(&mut ws, "not locked out");
}

#[test]
fn a_reload_lifts_a_login_block_at_once() {
    let server = Setup::default().start();
    for _ in 0..5 {
        assert_eq!(
            status_of(server.connect_with(
                "/echo",
                &[("Authorization", &basic(ALICE.0, "typo-password"))]
            )),
            401
        );
    }
    assert_eq!(
        status_of(server.connect_with("/echo", &[("Authorization", &basic(ALICE.0, ALICE.1))])),
        429
    );
    server.reload_and_wait();
    let mut ws = server.connect_as("/echo", ALICE);
    echoes(&mut ws, "unblocked");
}

#[test]
fn refusal_lines_name_the_origin_to_allow_and_the_user_and_path_a_role_lacks() {
    let mut setup = Setup::default();
    setup
        .set("origins", "allow_missing", "false")
        .set("channel:/private", "mode", "broadcast");
    let server = setup.start();
    let auth = basic(ALICE.0, ALICE.1);

    let refused = |origin: &str| {
        status_of(server.connect_with("/echo", &[("Authorization", &auth), ("Origin", origin)]))
    };
    assert_eq!(refused("https://evil.example:8443"), 403);
    assert!(
        server.wait_log(
            "reason=origin not allowed: \"https://evil.example:8443\" (add it to [origins] allow",
            IO_TIMEOUT
        ),
        "{}",
        server.logs()
    );
    // Long and odd values are cut and escaped, not copied into the log whole.
    let long = format!("https://{}.example", "a".repeat(200));
    assert_eq!(refused(&long), 403);
    assert!(
        server.wait_log(&format!("\"https://{}…\"", "a".repeat(120)), IO_TIMEOUT),
        "{}",
        server.logs()
    );
    assert!(!server.logs().contains(&long));
    assert_eq!(refused("https://a.example/\"x"), 403);
    assert!(
        server.wait_log("malformed origin: \"https://a.example/\\\"x\"", IO_TIMEOUT),
        "{}",
        server.logs()
    );

    // No Origin at all (websocat, a script): said at start, and the line says which key lets
    // such clients in.
    assert!(
        server
            .logs()
            .contains("[origins] allow_missing = false: clients that send no Origin header"),
        "{}",
        server.logs()
    );
    assert_eq!(
        status_of(server.connect_with("/echo", &[("Authorization", &auth)])),
        403
    );
    assert!(
        server.wait_log("set [origins] allow_missing = true", IO_TIMEOUT),
        "{}",
        server.logs()
    );

    // A role refusal names the user and the path, and the command that explains it.
    assert_eq!(
        status_of(server.connect_with(
            "/private",
            &[("Authorization", &auth), ("Origin", ORIGIN_OK)]
        )),
        403
    );
    assert!(
        server.wait_log(
            "no role lets user \"alice\" subscribe to /private (see `wsgate check-access alice \
             /private`)",
            IO_TIMEOUT
        ),
        "{}",
        server.logs()
    );
}

/// The users file of the README: the demo user with its published password.
fn demo_users_file() -> String {
    format!(
        "demo:{}\n",
        wsgate::auth::users::hash_password("demo-password").unwrap()
    )
}

#[test]
fn the_readme_demo_user_beyond_loopback_is_warned_about_by_check_config_and_serve() {
    let warning = "still holds the README's demo user";
    // On loopback (the example config): no warning.
    let (dir, config, _ca) = Setup::default().write();
    std::fs::write(dir.path().join("users"), demo_users_file()).unwrap();
    let (code, out, err) = check(&config);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(warning), "{out}");

    // Every address (README's "from another machine"): check-config and serve both warn.
    let mut setup = Setup::default();
    setup.set("server", "listen", "0.0.0.0:0");
    let (dir, config, ca) = setup.write();
    std::fs::write(dir.path().join("users"), demo_users_file()).unwrap();
    let (code, out, err) = check(&config);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("warning: [server] listen = 0.0.0.0:0 is reachable from other machines and")
            && out.contains(warning)
            && out.contains("`wsgate passwd --delete"),
        "{out}"
    );
    let server = Server::spawn(dir, &config, ca);
    assert!(server.wait_log(warning, IO_TIMEOUT), "{}", server.logs());

    // Another password for demo: no warning.
    let mut setup = Setup::default();
    setup.set("server", "listen", "0.0.0.0:0");
    let (dir, config, _ca) = setup.write();
    std::fs::write(
        dir.path().join("users"),
        format!(
            "demo:{}\n",
            wsgate::auth::users::hash_password("changed-password").unwrap()
        ),
    )
    .unwrap();
    let (code, out, _) = check(&config);
    assert_eq!(code, 0);
    assert!(!out.contains(warning), "{out}");
}

#[test]
fn passwd_refuses_a_password_shorter_than_the_minimum_unless_lowered() {
    let dir = TempDir::new("minpw");
    let users = dir.path().join("users");
    let passwd = |options: &[&str], password: &str| {
        spawn_with_stdin(
            Command::new(bin())
                .arg("passwd")
                .args(options)
                .arg(&users)
                .arg("carol"),
            &format!("{password}\n"),
        )
        .wait_with_output()
        .unwrap()
    };
    let out = passwd(&[], "x");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("password shorter than 8 characters refused") && err.contains("--min-length"),
        "{err}"
    );
    assert!(!users.exists(), "a refused password wrote the file");
    let out = passwd(&[], "seven77");
    assert_eq!(out.status.code(), Some(2));
    let out = passwd(&[], "eight888");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = passwd(&["--min-length", "1"], "x");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&users).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("carol:")).count(), 1);
}

#[test]
fn cert_tells_how_to_trust_the_certificate_with_the_clients_of_the_docs() {
    let dir = TempDir::new("certhint");
    let out = run_wsgate(["cert".as_ref(), dir.path().as_os_str()]);
    let text = stdout_of_success(out);
    let cert = dir.path().join("wsgate.crt");
    // websocat has no CA-file option; it reads the CA from SSL_CERT_FILE.
    assert!(
        text.contains(&format!("SSL_CERT_FILE={} websocat", cert.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("wsgate client --ca {} wss://", cert.display())),
        "{text}"
    );
    assert!(!text.contains("--cafile"), "{text}");
    assert!(text.contains("set [tls] cert = "), "{text}");
}

#[test]
fn a_user_added_by_passwd_logs_in_within_a_second_or_two_at_the_default_interval() {
    let mut setup = Setup::default();
    setup.unset("tls", "reload_check_interval");
    let server = setup.start();
    passwd(&server, &[], "carol", "carol-password\n");
    let until = Instant::now() + APPLIES_WITHIN;
    let auth = basic("carol", "carol-password");
    loop {
        match server.connect_with("/echo", &[("Authorization", &auth)]) {
            Ok(mut ws) => {
                ws.send(Message::text("carol")).unwrap();
                assert_eq!(next_data(&mut ws), Message::text("carol"));
                return;
            }
            // 429 once the tries before the reload reached the throttle: the reload lifts it.
            Err(tungstenite::Error::Http(resp)) => {
                assert!(
                    [401, 429].contains(&resp.status().as_u16()),
                    "{}",
                    server.logs()
                );
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < until,
            "carol not let in after {APPLIES_WITHIN:?}; log:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
