//! The command line: `check-config` errors an admin can act on, `passwd` files the server accepts.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;

use common::*;
use tungstenite::Message;

#[test]
fn check_config_accepts_a_good_file() {
    let (_dir, config, _ca) = Setup::default().write();
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_errors_name_file_line_and_key() {
    let (dir, config, _ca) = Setup::default().write();
    let good = std::fs::read_to_string(&config).unwrap();
    let allow = format!("allow = {ORIGIN_OK}, https://*.example.org");
    let cases = [
        // (the edited file, the key the message must name); each key appears once in its file.
        (
            good.replace("[server]\n", "[server]\nmax_mesage_size = 10\n"),
            "max_mesage_size",
        ),
        (
            good.replace("[server]\n", "[server]\nworkers = 0\n"),
            "workers",
        ),
        (
            good.replace("[server]\n", "[server]\nworkers = -3\n"),
            "workers",
        ),
        (
            good.replace("cert = cert.pem", "cert = missing.pem"),
            "cert",
        ),
        (
            good.replace(
                "[server]\n",
                "[limits]\nwrite_buffer_size = 8KiB\nmax_write_buffer_size = 8KiB\n\n[server]\n",
            ),
            "max_write_buffer_size",
        ),
        (
            good.replace(&allow, "allow = https://ok.example, not a url"),
            "allow",
        ),
    ];
    for (text, key) in cases {
        assert_ne!(text, good, "edit for {key} did not apply");
        let bad = dir.path().join("bad.ini");
        std::fs::write(&bad, &text).unwrap();
        let (code, stderr) = check_config(&bad);
        assert_eq!(code, 2, "for {key}: {stderr}");
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{key} =")))
            .unwrap()
            + 1;
        assert!(
            stderr.contains(&format!("bad.ini:{line}:")),
            "no line {line} for {key} in: {stderr}"
        );
        assert!(stderr.contains(key), "no key {key} in: {stderr}");
    }
}

#[test]
fn serve_with_a_bad_config_exits_2_before_listening() {
    let (dir, config, _ca) = Setup::default().write();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[server]\n", "[server]\nbogus = 1\n");
    let bad = dir.path().join("bad.ini");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.ini:") && stderr.contains("bogus"),
        "{stderr}"
    );
}

#[test]
fn passwd_creates_a_file_the_server_accepts() {
    let setup = Setup::default();
    let (dir, config, ca) = setup.write();
    let users = dir.path().join("users");
    std::fs::remove_file(&users).unwrap();
    let out = spawn_with_stdin(
        Command::new(bin()).arg("passwd").arg(&users).arg("carol"),
        "carol-new-password\n",
    )
    .wait_with_output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&users).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(text.starts_with("carol:$argon2id$"), "{text}");
    assert!(!text.contains("carol-new-password"));

    let server = Server::spawn(dir, &config, ca);
    let mut ws = server.connect_as("/echo", ("carol", "carol-new-password"));
    ws.send(Message::text("hi carol")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("hi carol"));
    assert_eq!(
        status_of(server.connect_with("/echo?user=carol&pass=nope", &[])),
        401
    );
}

#[test]
fn passwd_refuses_the_password_on_the_command_line_and_deletes_users() {
    let dir = TempDir::new("passwd");
    let users = dir.path().join("users");
    std::fs::write(&users, users_file_text()).unwrap();
    // Too many arguments: a password on argv is a usage error, never accepted.
    let out = Command::new(bin())
        .arg("passwd")
        .arg(&users)
        .args(["alice", "secret"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin())
        .args(["passwd", "--delete"])
        .arg(&users)
        .arg("alice")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(!text.contains("alice:") && text.contains("bob:"), "{text}");
    let out = Command::new(bin())
        .args(["passwd", "--delete"])
        .arg(&users)
        .arg("alice")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn first_run_generates_a_self_signed_certificate_when_allowed() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut setup = Setup::default();
    setup
        .set("tls", "cert", "gen/wsgate.crt")
        .set("tls", "key", "gen/wsgate.key");
    let (dir, config, _unused) = setup.write();
    // Without self_signed, missing files are a config error (exit 2).
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[tls]\n", "[tls]\nself_signed = true\n");
    std::fs::write(&config, text).unwrap();
    let placeholder = CertificateDer::from(Vec::new());
    let mut server = Server::spawn(dir, &config, placeholder);
    let cert_path = server.dir.path().join("gen/wsgate.crt");
    let key_mode = std::fs::metadata(server.dir.path().join("gen/wsgate.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    assert!(
        server
            .logs()
            .contains("generated a self-signed certificate"),
        "{}",
        server.logs()
    );
    let fingerprint_line = server
        .logs()
        .lines()
        .find(|l| l.contains("sha256 fingerprint"))
        .unwrap()
        .to_string();
    // A client that trusts the generated certificate connects.
    server.ca = CertificateDer::from_pem_file(&cert_path).unwrap();
    let mut ws = server.connect_as("/echo", ALICE);
    ws.send(Message::text("trusted")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("trusted"));
    drop(ws);
    // A restart reuses the pair instead of generating a new one.
    server.terminate();
    server
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("exit");
    let again = Command::new(bin())
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(again.status.success());
    let dir = std::mem::replace(&mut server.dir, TempDir::new("unused"));
    let server2 = Server::spawn(
        dir,
        &config,
        CertificateDer::from_pem_file(&cert_path).unwrap(),
    );
    assert!(
        !server2
            .logs()
            .contains("generated a self-signed certificate")
    );
    let fp = fingerprint_line.split("fingerprint ").nth(1).unwrap();
    assert!(
        server2.logs().contains(fp),
        "certificate changed on restart"
    );
}

#[test]
fn check_config_warns_about_unknown_members_dead_patterns_and_unusable_channels() {
    let mut setup = Setup::default();
    setup
        .set("role:ghosts", "members", "nobody")
        .set("role:ghosts", "subscribe", "/nowhere/*")
        .set("channel:/orphan", "mode", "broadcast");
    let (_dir, config, _ca) = setup.write();
    let out = run_wsgate([std::ffi::OsStr::new("check-config"), config.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("[role:ghosts]") && w.contains("nobody")),
        "{text}"
    );
    assert!(warnings.iter().any(|w| w.contains("/nowhere/*")), "{text}");
    assert!(
        warnings.iter().any(|w| w.contains("[channel:/orphan]")),
        "{text}"
    );
}

#[test]
fn check_access_explains_the_deciding_rule_without_a_server() {
    let mut setup = Setup::default();
    setup
        .set("channel:/ops", "mode", "broadcast")
        .set("role:operators", "members", "alice")
        .set("role:operators", "subscribe", "/ops");
    let (_dir, config, _ca) = setup.write();
    let ask = |user: &str, path: &str| {
        let out = run_wsgate([
            "check-access",
            "--config",
            config.to_str().unwrap(),
            user,
            path,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let alice = ask("alice", "/ops");
    assert!(
        alice.contains("[role:operators]") && alice.contains("101"),
        "{alice}"
    );
    assert!(alice.contains("publish: denied"), "{alice}");
    let bob = ask("bob", "/ops");
    assert!(bob.contains("403"), "{bob}");
    assert!(ask("bob", "/missing").contains("404"));
    assert!(ask("-", "/echo").contains("401"));
}

/// Each command's usage, as `wsgate CMD --help`, `wsgate CMD -h` and `wsgate help CMD` print it:
/// every command there is, in the order `wsgate help` lists them.
const COMMANDS: &[&str] = &[
    "serve",
    "check-config",
    "check-access",
    "passwd",
    "token",
    "cert",
    "connections",
    "disconnect",
    "client",
    "help",
    "version",
];

#[test]
fn every_command_prints_its_usage_for_help_and_exits_0() {
    for cmd in COMMANDS {
        for args in [vec![*cmd, "--help"], vec![*cmd, "-h"], vec!["help", *cmd]] {
            let out = run_wsgate(&args);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}");
            assert!(
                stdout.starts_with(&format!("usage: wsgate {cmd}")),
                "{args:?}: {stdout}"
            );
            assert!(stdout.contains("\nexit status:"), "{args:?}: {stdout}");
        }
    }
    for args in [vec!["help"], vec!["--help"], vec!["-h"]] {
        let out = run_wsgate(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        // The list under `commands:`, one command a line, is exactly COMMANDS.
        let listed: Vec<&str> = stdout
            .lines()
            .skip_while(|l| *l != "commands:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(listed, COMMANDS, "{args:?}: {stdout}");
    }
}

#[test]
fn mistakes_exit_2_naming_what_was_meant() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["serv"],
            "unknown command \"serv\" (did you mean `serve`?)",
        ),
        (
            &["serve", "--log-level", "debugg"],
            "unknown log level \"debugg\" (did you mean `debug`?); one of off, error, warn, info, debug, trace",
        ),
        (
            &["serve", "--confg", "x.ini"],
            "unknown option \"--confg\" (did you mean `--config`?)",
        ),
        (
            &["token", "lsit"],
            "unknown action \"lsit\" (did you mean `list`?)",
        ),
        (&["help", "passwrd"], "(did you mean `passwd`?)"),
        (&["passwd", "onlyfile"], "needs FILE and USER"),
        (&[], "no command given"),
    ];
    for (args, want) in cases {
        let out = run_wsgate(*args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(
            stderr.contains("usage: wsgate"),
            "{args:?} shows no usage: {stderr}"
        );
    }
}

#[test]
fn a_mistyped_config_key_or_section_suggests_the_one_meant() {
    let (dir, config, _ca) = Setup::default().write();
    let good = std::fs::read_to_string(&config).unwrap();
    for (edit, want) in [
        (
            good.replace("listen = ", "lisen = "),
            "[server] lisen: unknown key (did you mean `listen`?); [server] accepts",
        ),
        (
            good.replace("[limits]", "[limts]") + "\n[limts]\nidle_timeout = 1s\n",
            "[limts]: unknown section (did you mean `limits`?)",
        ),
    ] {
        let bad = dir.path().join("typo.ini");
        std::fs::write(&bad, edit).unwrap();
        let (code, stderr) = check_config(&bad);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
    }
}

#[test]
fn serve_takes_the_config_file_as_its_argument() {
    let (dir, config, ca) = Setup::default().write();
    let server = Server::spawn_positional(dir, &config, ca);
    let mut ws = server.connect_as("/echo", ALICE);
    ws.send(Message::text("positional")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("positional"));
}

#[test]
fn users_and_tokens_changed_by_the_commands_apply_without_a_reload() {
    let mut setup = Setup::default();
    setup
        .set("tls", "reload_check_interval", "200ms")
        .set("auth", "tokens_file", "tokens");
    let (dir, config, ca) = setup.write();
    let users = dir.path().join("users");
    let server = Server::spawn(dir, &config, ca);
    assert_eq!(
        status_of(server.connect_with("/echo?user=carol&pass=carol-password", &[])),
        401
    );

    // passwd: carol can log in once the watcher saw the file change, with no SIGHUP.
    let out = spawn_with_stdin(
        Command::new(bin()).arg("passwd").arg(&users).arg("carol"),
        "carol-password\n",
    )
    .wait_with_output()
    .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("applies this by itself"),
        "passwd does not say how the change applies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        server.wait_log("users or tokens file changed: reloaded", IO_TIMEOUT),
        "{}",
        server.logs()
    );
    let mut ws = server.connect_as("/echo", ("carol", "carol-password"));
    ws.send(Message::text("carol")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("carol"));

    // token add, then revoke: each applies by itself.
    let out = run_wsgate([
        "token".as_ref(),
        "add".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "carol".as_ref(),
        "--name".as_ref(),
        "phone".as_ref(),
    ]);
    let token = stdout_of_success(out).trim().to_string();
    let bearer = format!("Bearer {token}");
    let until = Instant::now() + IO_TIMEOUT;
    while status_of(server.connect_with("/echo", &[("Authorization", &bearer)])) != 101 {
        assert!(Instant::now() < until, "the new token was never accepted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run_wsgate([
        "token".as_ref(),
        "revoke".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "carol".as_ref(),
        "phone".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let until = Instant::now() + IO_TIMEOUT;
    while status_of(server.connect_with("/echo", &[("Authorization", &bearer)])) != 401 {
        assert!(Instant::now() < until, "the revoked token still works");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cert_writes_a_self_signed_pair_for_this_host_that_the_server_serves() {
    let dir = TempDir::new("cert");
    let out = run_wsgate([
        "cert".as_ref(),
        "--name".as_ref(),
        "pi.lan".as_ref(),
        "--name".as_ref(),
        "192.0.2.7".as_ref(),
        dir.path().as_os_str(),
    ]);
    let stdout = stdout_of_success(out);
    assert!(stdout.contains("sha256 fingerprint"), "{stdout}");
    let (crt, key) = (dir.path().join("wsgate.crt"), dir.path().join("wsgate.key"));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // What openssl reads from it: the host named (not rcgen's default), the extra names, a
    // validity of 825 days.
    let text = Command::new(require_program("openssl"))
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&crt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(!text.contains("rcgen"), "{text}");
    assert!(text.contains("O = wsgate self-signed"), "{text}");
    for want in [
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "DNS:pi.lan",
        "IP Address:192.0.2.7",
    ] {
        assert!(text.contains(want), "no {want} in {text}");
    }
    let days = Command::new(require_program("openssl"))
        .args([
            "x509",
            "-noout",
            "-checkend",
            &(824 * 86_400).to_string(),
            "-in",
        ])
        .arg(&crt)
        .status()
        .unwrap();
    assert!(days.success(), "expires within 824 days");
    let days = Command::new(require_program("openssl"))
        .args([
            "x509",
            "-noout",
            "-checkend",
            &(827 * 86_400).to_string(),
            "-in",
        ])
        .arg(&crt)
        .status()
        .unwrap();
    assert!(!days.success(), "valid for more than 827 days");

    // It does not overwrite without --force, and does with it.
    let again = run_wsgate(["cert".as_ref(), dir.path().as_os_str()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    let forced = run_wsgate(["cert".as_ref(), "--force".as_ref(), dir.path().as_os_str()]);
    assert!(forced.status.success());

    // The server serves it, and a client trusting it reaches the server as localhost.
    let mut setup = Setup::default();
    setup.set("tls", "cert", &crt.display().to_string()).set(
        "tls",
        "key",
        &key.display().to_string(),
    );
    let (sdir, config, _) = setup.write();
    let pem = std::fs::read(&crt).unwrap();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    let server = Server::spawn(sdir, &config, ca);
    let mut ws = server.connect_as("/echo", ALICE);
    ws.send(Message::text("lan")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("lan"));
}

#[test]
fn the_start_up_log_names_version_config_clean_paths_and_where_to_connect() {
    let mut setup = Setup::default();
    setup
        .set("tls", "cert", "./sub/../cert.pem")
        .set("demo", "enabled", "true")
        .set("demo", "channel", "/chat/demo");
    let (dir, config, ca) = setup.write();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    // One user, for the singular.
    let one = users_file_text().lines().next().unwrap().to_string() + "\n";
    std::fs::write(dir.path().join("users"), one).unwrap();
    let root = dir.path().display().to_string();
    let server = Server::spawn(dir, &config, ca);
    let port = server.addr.port();
    assert!(server.wait_log("clients connect to", IO_TIMEOUT));
    let log = server.logs();
    for want in [
        format!(
            "wsgate {} starting with {}",
            env!("CARGO_PKG_VERSION"),
            config.display()
        ),
        format!("1 user loaded from {root}/users"),
        format!("certificate {root}/cert.pem sha256 fingerprint"),
        format!(
            "clients connect to wss://localhost:{port}/chat/…, wss://localhost:{port}/echo, \
             wss://localhost:{port}/news; demo page at https://localhost:{port}/"
        ),
    ] {
        assert!(log.contains(&want), "no {want:?} in:\n{log}");
    }
    assert!(!log.contains("/.."), "{log}");
    assert!(!log.contains("1 users"), "{log}");
}

#[test]
fn the_check_access_example_in_the_docs_is_what_the_command_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("docs/access.md")).unwrap();
    let command = "$ wsgate check-access --config conf/wsgate.ini demo /chat/lobby\n";
    let start = docs
        .find(command)
        .expect("docs/access.md shows check-access")
        + command.len();
    let shown = &docs[start..start + docs[start..].find("```").unwrap()];
    let out = Command::new(bin())
        .current_dir(root)
        .args([
            "check-access",
            "--config",
            "conf/wsgate.ini",
            "demo",
            "/chat/lobby",
        ])
        .output()
        .unwrap();
    assert_eq!(
        shown,
        String::from_utf8_lossy(&out.stdout),
        "docs/access.md's check-access example is stale: paste the command's output"
    );
}

#[test]
fn check_access_refuses_a_user_who_is_not_in_the_users_file() {
    let (_dir, config, _ca) = Setup::default().write();
    let out = run_wsgate([
        "check-access".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "nobody".as_ref(),
        "/echo".as_ref(),
    ]);
    let text = stdout_of_success(out);
    assert!(
        text.contains("client: user `nobody`, who is not in ")
            && text.contains("outcome: 401 Unauthorized"),
        "{text}"
    );
    assert!(!text.contains("101"), "{text}");
    // A known user still gets the roles' answer.
    let out = run_wsgate([
        "check-access".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        ALICE.0.as_ref(),
        "/echo".as_ref(),
    ]);
    assert!(stdout_of_success(out).contains("outcome: 101 Switching Protocols"));
}

#[test]
fn check_config_warns_when_nobody_can_log_in_and_when_secrets_are_readable() {
    let (dir, config, ca) = Setup::default().write();
    let users = dir.path().join("users");
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_wsgate(["check-config".as_ref(), config.as_os_str()]);
    let text = stdout_of_success(out);
    assert!(!text.contains("warning"), "{text}");
    assert!(text.contains("2 users"), "{text}");

    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_wsgate(["check-config".as_ref(), config.as_os_str()]);
    let text = stdout_of_success(out);
    assert!(
        text.contains("warning: users file ")
            && text.contains("can be read by group or others (mode 644); run `chmod 600 "),
        "{text}"
    );

    // The TLS key too: serve warns as it loads it, check-config says so.
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = dir.path().join("key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = run_wsgate(["check-config".as_ref(), config.as_os_str()]);
    let text = stdout_of_success(out);
    assert!(
        text.contains("warning: TLS private key ")
            && text.contains("can be read by group or others (mode 640)"),
        "{text}"
    );
    let server = Server::spawn(dir, &config, ca);
    assert!(
        server.logs().contains("TLS private key ")
            && server
                .logs()
                .contains("is accessible by group/others (mode 640)"),
        "{}",
        server.logs()
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::fs::write(&users, "").unwrap();
    let out = run_wsgate(["check-config".as_ref(), config.as_os_str()]);
    let text = stdout_of_success(out);
    assert!(
        text.contains("has no user and no channel is anonymous: nobody can log in"),
        "{text}"
    );
    assert!(text.contains("0 users"), "{text}");
}

#[test]
fn token_list_with_no_tokens_says_so() {
    let mut setup = Setup::default();
    setup.set("auth", "tokens_file", "tokens");
    let (_dir, config, _ca) = setup.write();
    let out = run_wsgate([
        "token".as_ref(),
        "list".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    let text = stdout_of_success(out);
    assert!(text.starts_with("no API tokens in "), "{text}");
    let out = run_wsgate([
        "token".as_ref(),
        "list".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "alice".as_ref(),
    ]);
    assert!(stdout_of_success(out).starts_with("no API tokens of \"alice\" in "));
}
