//! `wsgate client` against the real server over real TLS (the server's certificate generated at
//! run time, trusted with `--ca` or `SSL_CERT_FILE`): the echo round trip, a broadcast between
//! two clients, each refusal's exit code and message, a close code after the upgrade, secrets
//! kept off the command line; and a non-UTF-8 argument, a usage error and never a panic.
//! (`tests/cli.rs` holds `wsgate help` to the list of commands.)

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use common::*;

/// How long a client run may take before `timeout` ends it (exit 124, failing the test).
const RUN_LIMIT: &str = "20";

/// `wsgate client ARGS… URL` under `timeout`, with no credential from the environment.
fn bare_client(args: &[&str], url: &str) -> Command {
    let mut cmd = Command::new(require_program("timeout"));
    cmd.arg(RUN_LIMIT)
        .arg(bin())
        .arg("client")
        .args(args)
        .arg(url)
        .env_remove("WSGATE_PASSWORD")
        .env_remove("WSGATE_TOKEN")
        .env_remove("WSGATE_SESSION");
    cmd
}

/// `wsgate client ARGS… URL`, trusting the server's certificate with `--ca`.
fn client(server: &Server, args: &[&str], path: &str) -> Command {
    let cert = server.dir.path().join("cert.pem");
    let ca = ["--ca", cert.to_str().unwrap()];
    let all: Vec<&str> = ca.iter().chain(args).copied().collect();
    bare_client(&all, &url(server, path))
}

/// Alice's client on `path` (her password from a file), sending `input`, run to its end.
fn alice_sends(server: &Server, path: &str, input: &str) -> Output {
    let password = password_file(server, ALICE);
    let args = ["--user", ALICE.0, "--password-file", &password];
    run(&mut client(server, &args, path), input)
}

fn url(server: &Server, path: &str) -> String {
    format!("wss://localhost:{}{path}", server.addr.port())
}

/// Runs `cmd` with `stdin` as its input, to its end.
fn run(cmd: &mut Command, stdin: &str) -> Output {
    spawn_with_stdin(cmd, stdin).wait_with_output().unwrap()
}

/// A file in the server's directory holding `line`.
/// A file in the server's directory holding `line`; its path.
fn secret_file(server: &Server, name: &str, line: &str) -> String {
    let path = server.dir.path().join(name);
    std::fs::write(&path, format!("{line}\n")).unwrap();
    path.to_str().unwrap().to_string()
}

fn password_file(server: &Server, (_, pass): (&str, &str)) -> String {
    secret_file(server, "password", pass)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the run exited with `code` and said each of `said` on stderr.
fn assert_ended(out: &Output, code: i32, said: &[&str], server: &Server) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stderr: {err}\nstdout: {}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        server.logs()
    );
    for s in said {
        assert!(err.contains(s), "{s:?} not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// A client left running, its stdout read line by line.
struct Running {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }
}

#[test]
fn client_echoes_what_is_typed_with_a_password_from_a_file() {
    let server = Setup::default().start();
    let out = alice_sends(&server, "/echo", "hello\nsecond line\n");
    assert_ended(&out, 0, &[], &server);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nsecond line\n");
}

#[test]
fn client_sends_a_files_lines_and_what_is_not_utf8_as_binary() {
    let server = Setup::default().start();
    let lines = server.dir.path().join("lines");
    std::fs::write(&lines, b"first\r\n\xff\xfe raw\nlast without newline").unwrap();
    let password = password_file(&server, ALICE);
    let args = [
        "--user",
        ALICE.0,
        "--password-file",
        &password,
        "--send",
        lines.to_str().unwrap(),
    ];
    // stdin stays open: the file's end is the input's end.
    let mut child = client(&server, &args, "/echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    assert_ended(&out, 0, &[], &server);
    assert_eq!(out.stdout, b"first\n\xff\xfe raw\nlast without newline\n");
}

#[test]
fn client_gives_up_on_a_silent_server_at_its_deadline() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "wss://127.0.0.1:{}/echo",
        silent.local_addr().unwrap().port()
    );
    let out = run(&mut bare_client(&["--no-send"], &url), "");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no answer within 10 s"), "{err}");
    drop(silent);
}

#[test]
fn client_trusts_the_system_roots_from_ssl_cert_file_and_says_how_to_trust_a_certificate() {
    let server = Setup::default().start();
    let cert = server.dir.path().join("cert.pem");
    // Trusted through SSL_CERT_FILE: the TLS handshake passes and the server answers 404.
    let mut cmd = bare_client(&["--no-send"], &url(&server, "/nowhere"));
    assert_ended(
        &run(cmd.env("SSL_CERT_FILE", &cert), ""),
        5,
        &["404"],
        &server,
    );

    let other = Setup::default().write();
    let mut cmd = bare_client(&["--no-send"], &url(&server, "/echo"));
    cmd.env("SSL_CERT_FILE", other.0.path().join("cert.pem"));
    assert_ended(
        &run(&mut cmd, ""),
        1,
        &["TLS handshake failed", "--ca FILE"],
        &server,
    );
}

#[test]
fn client_speaks_ws_to_a_plaintext_listener() {
    let mut setup = Setup::default();
    setup.set("server", "tls", "off");
    let server = setup.start();
    let password = password_file(&server, ALICE);
    let url = format!("ws://127.0.0.1:{}/echo", server.addr.port());
    let mut cmd = bare_client(&["--user", ALICE.0, "--password-file", &password], &url);
    let out = run(&mut cmd, "in clear\n");
    assert_ended(&out, 0, &[], &server);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in clear\n");
}

#[test]
fn client_broadcasts_between_two_clients_with_env_password_and_session() {
    let server = Setup::default().start();
    let mut subscriber = client(&server, &["--no-send", "--user", BOB.0], "/chat/lobby");
    let mut child = subscriber
        .env("WSGATE_PASSWORD", BOB.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut running = Running { child, stdout };
    assert!(
        server.wait_log("user=\"bob\" auth=password", IO_TIMEOUT),
        "the subscriber did not join; log:\n{}",
        server.logs()
    );

    // Alice logs in once with her password and keeps the session the 101 carried.
    let session = server.dir.path().join("session");
    let password = password_file(&server, ALICE);
    let login = [
        "--user",
        ALICE.0,
        "--password-file",
        &password,
        "--save-session",
        session.to_str().unwrap(),
    ];
    assert_ended(
        &run(&mut client(&server, &login, "/echo"), ""),
        0,
        &[],
        &server,
    );
    let mode = std::fs::metadata(&session).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let session = session.to_str().unwrap();
    let out = run(
        &mut client(&server, &["--session-file", session], "/chat/lobby"),
        "to everyone\n",
    );
    assert_ended(&out, 0, &[], &server);
    assert_eq!(running.line(), "to everyone\n");

    // The server's shutdown reaches the subscriber as 1001: exit 8, the code said.
    server.terminate();
    let status = running.child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(running.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(8), "{err}");
    assert!(err.contains("closed by the server: 1001"), "{err}");
}

#[test]
fn client_takes_an_api_token_from_the_environment() {
    let server = Setup::default().start();
    let config = server.dir.path().join("wsgate.ini");
    let token = wsgate(&["token", "add", "alice"], &config)
        .trim()
        .to_string();
    server.reload_and_wait();
    let out = run(
        client(&server, &[], "/echo").env("WSGATE_TOKEN", &token),
        "by token\n",
    );
    assert_ended(&out, 0, &[], &server);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "by token\n");
    assert!(server.wait_log("user=\"alice\" auth=token", IO_TIMEOUT));
}

#[test]
fn client_refusals_have_their_exit_codes_and_say_why() {
    let mut setup = Setup::default();
    setup
        .set("origins", "allow_missing", "false")
        .set("channel:/ops", "mode", "broadcast")
        .set("role:ops", "members", BOB.0)
        .set("role:ops", "subscribe", "/ops")
        .set("auth", "max_failures", "1");
    let server = setup.start();
    let good = password_file(&server, ALICE);
    let as_alice = |path: &str, origin: &str| {
        run(
            &mut client(
                &server,
                &[
                    "--user",
                    ALICE.0,
                    "--origin",
                    origin,
                    "--password-file",
                    &good,
                ],
                path,
            ),
            "",
        )
    };

    let out = as_alice("/nowhere", ORIGIN_OK);
    assert_ended(
        &out,
        5,
        &["404 Not Found: unknown path", "no channel serves /nowhere"],
        &server,
    );

    let out = as_alice("/ops", ORIGIN_OK);
    assert_ended(
        &out,
        4,
        &[
            "403 Forbidden: no role allows subscribing",
            "no role lets alice subscribe to /ops",
            "wsgate check-access alice /ops",
        ],
        &server,
    );

    let out = as_alice("/echo", "https://evil.example");
    assert_ended(
        &out,
        4,
        &[
            "403 Forbidden: origin not allowed",
            "the Origin https://evil.example is not in the server's [origins] allow",
        ],
        &server,
    );

    let out = run(
        client(&server, &["-n", "--user", ALICE.0], "/echo").env("WSGATE_PASSWORD", "wrong"),
        "",
    );
    assert_ended(
        &out,
        4,
        &["403 Forbidden: no origin header", "no Origin was sent"],
        &server,
    );

    let wrong = secret_file(&server, "wrong", "not-her-password");
    let out = run(
        &mut client(
            &server,
            &[
                "--user",
                ALICE.0,
                "--origin",
                ORIGIN_OK,
                "--password-file",
                &wrong,
            ],
            "/echo",
        ),
        "",
    );
    assert_ended(
        &out,
        3,
        &[
            "401 Unauthorized",
            "the password of \"alice\" (or the user) is wrong",
        ],
        &server,
    );

    // One failure is the limit: the next login, even a right one, waits out the window.
    let out = as_alice("/echo", ORIGIN_OK);
    assert_ended(
        &out,
        6,
        &[
            "429 Too Many Requests: too many failed logins",
            "(retry after ",
        ],
        &server,
    );
}

#[test]
fn client_reports_the_servers_close_code() {
    let mut setup = Setup::default();
    setup
        .set("channel:/feed", "mode", "broadcast")
        .set("role:readers", "members", "*")
        .set("role:readers", "subscribe", "/feed");
    let server = setup.start();
    let out = alice_sends(&server, "/feed", "may I?\n");
    assert_ended(
        &out,
        8,
        &["closed by the server: 1008 publish not allowed"],
        &server,
    );
}

#[test]
fn client_never_takes_a_secret_from_the_command_line() {
    let server = Setup::default().start();
    for (args, url) in [
        (vec!["--password", "x"], url(&server, "/echo")),
        (
            vec![],
            format!("wss://alice:pw@localhost:{}/echo", server.addr.port()),
        ),
        (vec![], url(&server, "/echo?user=alice&pass=pw")),
    ] {
        let out = run_wsgate(
            ["client"]
                .iter()
                .copied()
                .chain(args.iter().copied())
                .chain([url.as_str()]),
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} {url}: {}",
            stderr(&out)
        );
    }
    assert_eq!(server.count_log("open peer="), 0);
}

#[test]
fn a_non_utf8_argument_is_a_usage_error_not_a_panic() {
    let bad = OsStr::from_bytes(b"\xff.ini");
    let out = run_wsgate([OsStr::new("check-config"), bad]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));

    let out = run_wsgate([
        OsStr::new("client"),
        OsStr::new("--user"),
        bad,
        OsStr::new("wss://localhost/echo"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--user \"\\xFF.ini\" is not UTF-8 text"),
        "{}",
        stderr(&out)
    );
    for out in [
        run_wsgate([bad]),
        run_wsgate([OsStr::new("check-access"), bad, OsStr::new("/echo")]),
    ] {
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

/// Alice's client on `/echo` under a `timeout` of `limit` seconds (longer than [`RUN_LIMIT`]: the
/// deadlines below are that long), `args` added, stdin piped, started and joined.
fn alice_running(server: &Server, args: &[&str], limit: &str) -> Child {
    let password = password_file(server, ALICE);
    let cert = server.dir.path().join("cert.pem");
    let all = [
        "--ca",
        cert.to_str().unwrap(),
        "--user",
        ALICE.0,
        "--password-file",
        &password,
    ];
    let child = Command::new(require_program("timeout"))
        .arg(limit)
        .arg(bin())
        .arg("client")
        .args(all.iter().chain(args))
        .arg(url(server, "/echo"))
        .env_remove("WSGATE_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        server.wait_log("user=\"alice\" auth=password", IO_TIMEOUT),
        "the client did not join; log:\n{}",
        server.logs()
    );
    child
}

/// SIGSTOP or SIGCONT to the server.
fn signal(server: &Server, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A server frozen (SIGSTOP) while the client sends ends the run at the write deadline: its
/// socket takes nothing for 10 s; exit 1, the deadline named — not a client blocked for ever.
#[test]
fn client_gives_up_on_a_frozen_server_that_takes_nothing_at_its_write_deadline() {
    let server = Setup::default().start();
    let mut child = alice_running(&server, &[], "60");
    signal(&server, "-STOP");
    // Input without end, until the client stops taking it (it exited).
    let mut input = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let line = format!("{}\n", "x".repeat(60_000));
        while std::io::Write::write_all(&mut input, line.as_bytes()).is_ok() {}
    });
    let out = child.wait_with_output().unwrap();
    signal(&server, "-CONT");
    feeder.join().unwrap();
    assert_ended(&out, 1, &["write deadline"], &server);
}

/// A server frozen while the client only listens: pinged after 20 s of silence, given up on 10 s
/// later; exit 1, the deadline named.
#[test]
fn client_gives_up_on_a_frozen_server_that_sends_nothing_at_its_silence_deadline() {
    let server = Setup::default().start();
    let child = alice_running(&server, &["--no-send"], "60");
    signal(&server, "-STOP");
    let out = child.wait_with_output().unwrap();
    signal(&server, "-CONT");
    assert_ended(&out, 1, &["silence deadline"], &server);
}
