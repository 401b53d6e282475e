//! The command line: `check-config` errors an admin can act on, `passwd` files the server accepts.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

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
    let mut child = Command::new(bin())
        .arg("passwd")
        .arg(&users)
        .arg("carol")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"carol-new-password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
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
