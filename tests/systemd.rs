//! The systemd unit and the packaged config: `systemd-analyze verify` finds nothing to say about
//! the unit, `systemd-analyze security` rates it at most 1.5, it promises only what wsgate does,
//! and the config the Debian package installs passes `wsgate check-config` with the credentials
//! the unit loads, and lets users use its channels. Without `systemd-analyze` these tests fail:
//! CI installs systemd (see `.ci/run`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TempDir;

/// The highest overall exposure `systemd-analyze security` may report.
const MAX_EXPOSURE: f64 = 1.5;
/// Where the unit expects the binary (the Debian package puts it there).
const INSTALLED_BIN: &str = "/usr/bin/wsgate";
/// Where the Debian package installs the config, and the credentials' sources.
const ETC: &str = "/etc/wsgate/";
/// Where the service may write (`StateDirectory=wsgate`).
const STATE: &str = "/var/lib/wsgate/";
/// How the packaged config names a file in `$CREDENTIALS_DIRECTORY`.
const CREDENTIAL: &str = "credential:";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn systemd_analyze() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("systemd-analyze"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "systemd-analyze not found on PATH: install systemd (`apt-get install -y systemd`) \
                 to check systemd/wsgate.service"
            )
        })
}

/// `[Service]` assignments of a unit, in order.
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" && !line.is_empty() && !line.starts_with(['#', ';']) {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A copy of the unit, named `wsgate.service`, running the binary under test instead of
/// /usr/bin/wsgate (verify checks that every command exists and is executable).
fn unit_copy(dir: &TempDir, edit: impl Fn(String) -> String) -> PathBuf {
    let unit = read("systemd/wsgate.service");
    assert!(unit.contains(INSTALLED_BIN));
    let unit = edit(unit.replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_wsgate")));
    let path = dir.path().join("wsgate.service");
    std::fs::write(&path, unit).unwrap();
    path
}

fn verify(unit: &Path) -> (Output, String) {
    let out = Command::new(systemd_analyze())
        .args(["verify", "--man=no", "--generators=no"])
        .arg(unit)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn unit_verifies_without_a_word() {
    let dir = TempDir::new("unit");
    let (out, text) = verify(&unit_copy(&dir, |u| u));
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // verify exits 0 on unknown keys and bad values, only warning: any word about our unit fails.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("wsgate")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify warns:\n{text}");
}

#[test]
fn verify_does_notice_a_broken_unit() {
    // The check above would pass vacuously if verify ignored the file: prove it reads it.
    let dir = TempDir::new("unit-broken");
    let unit = unit_copy(&dir, |u| u.replace("WatchdogSec=", "WatchdogSecs="));
    let (_, text) = verify(&unit);
    assert!(
        text.contains("WatchdogSecs"),
        "verify missed a typo:\n{text}"
    );
}

#[test]
fn unit_exposure_is_at_most_1_5() {
    let dir = TempDir::new("unit-sec");
    let unit = unit_copy(&dir, |u| u);
    let out = Command::new(systemd_analyze())
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}{err}"));
    let exposure: f64 = line
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {line:?}"));
    eprintln!("systemd-analyze security: {line}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{text}"
    );
}

#[test]
fn unit_promises_only_what_wsgate_does() {
    let unit = read("systemd/wsgate.service");
    let s = service_settings(&unit);
    let one = |key: &str| -> &str {
        match values(&s, key).as_slice() {
            [v] => v,
            other => panic!("{key}: expected one value, got {other:?}"),
        }
    };
    let kind = one("Type");
    match kind {
        // systemd < 253: SIGHUP by ExecReload, RELOADING=1/READY=1 from wsgate.
        "notify" => assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID"),
        // systemd >= 253 sends SIGHUP itself.
        "notify-reload" => assert!(values(&s, "ExecReload").is_empty()),
        other => panic!("Type={other}: wsgate notifies readiness (Type=notify)"),
    }
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("WatchdogSec"), "30s");
    assert_eq!(one("RestartPreventExitStatus"), "2");
    assert_eq!(
        one("ExecStartPre"),
        format!("{INSTALLED_BIN} check-config /etc/wsgate/wsgate.ini")
    );
    assert_eq!(
        one("ExecStart"),
        format!("{INSTALLED_BIN} serve --config /etc/wsgate/wsgate.ini")
    );
    assert_eq!(one("DynamicUser"), "yes");
    assert_eq!(one("KillSignal"), "SIGTERM");

    // Every credential the packaged config reads is one the unit loads, from the file of that
    // name in /etc/wsgate (so `CREDENTIALS_DIRECTORY=/etc/wsgate wsgate …` works by hand).
    let loaded: Vec<(&str, &str)> = values(&s, "LoadCredential")
        .into_iter()
        .map(|v| v.split_once(':').expect("LoadCredential=ID:PATH"))
        .collect();
    for (id, source) in &loaded {
        assert_eq!(
            *source,
            format!("{ETC}{id}"),
            "LoadCredential={id}:{source}"
        );
    }
    let config = read("packaging/wsgate.ini");
    let mut used: Vec<(String, String)> = Vec::new();
    for (key, value) in settings_of(&config) {
        if let Some(id) = value.strip_prefix(CREDENTIAL) {
            assert!(
                loaded.iter().any(|(l, _)| *l == id),
                "{key} = {value}: not in {loaded:?}"
            );
            used.push((key, id.to_string()));
        }
    }
    let want = [
        ("key", "wsgate.key"),
        ("users_file", "users"),
        ("tokens_file", "tokens"),
    ];
    assert_eq!(
        used,
        want.map(|(k, v)| (k.to_string(), v.to_string())),
        "the private key, users and tokens come from credentials"
    );
    assert_eq!(loaded.len(), want.len(), "every loaded credential is used");
    // The certificate is read in place, so a reload sees a renewal; the session key is written
    // where the service may write.
    let plain: Vec<(String, String)> = settings_of(&config);
    let value = |key: &str| &plain.iter().find(|(k, _)| k == key).unwrap().1;
    assert_eq!(value("cert"), &format!("{ETC}wsgate.crt"));
    assert_eq!(value("session_key_file"), &format!("{STATE}session.key"));
    assert_eq!(one("StateDirectory"), "wsgate");
}

/// `key = value` lines of an INI file (not comments or section headers), in order.
fn settings_of(config: &str) -> Vec<(String, String)> {
    config
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// The packaged config's listen line.
const PACKAGED_LISTEN: &str = "listen = [::]:443";

/// The packaged config with /etc/wsgate and /var/lib/wsgate moved into `dir`, next to a
/// certificate, key, users file (alice) and tokens file: `dir` then stands for /etc/wsgate and
/// for `$CREDENTIALS_DIRECTORY`, whose files have the same names.
fn installed_copy(dir: &TempDir) -> PathBuf {
    let etc = format!("{}/", dir.path().display());
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("wsgate.crt"), pair.cert.pem()).unwrap();
    let key = dir.path().join("wsgate.key");
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    // As `wsgate cert` writes it (check-config warns about a key others can read).
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    for f in ["users", "tokens"] {
        let to = dir.path().join(f);
        std::fs::copy(repo(&format!("packaging/{f}")), &to).unwrap();
        // As the package installs them (git keeps no modes but the executable bit).
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    // Port 0 on loopback: check-config binds the listen address to try it, and 443 may be taken
    // on the test machine or need root.
    let packaged = read("packaging/wsgate.ini");
    assert!(
        packaged.contains(PACKAGED_LISTEN),
        "the packaged listen line moved"
    );
    let config = packaged
        .replace(ETC, &etc)
        .replace(STATE, &format!("{etc}state/"))
        .replace(PACKAGED_LISTEN, "listen = 127.0.0.1:0");
    let path = dir.path().join("wsgate.ini");
    std::fs::write(&path, config).unwrap();
    path
}

fn wsgate(args: &[&str], credentials: Option<&Path>) -> (Output, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.args(args);
    match credentials {
        Some(dir) => cmd.env("CREDENTIALS_DIRECTORY", dir),
        None => cmd.env_remove("CREDENTIALS_DIRECTORY"),
    };
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn packaged_config_passes_check_config() {
    let dir = TempDir::new("pkg-config");
    let config = installed_copy(&dir);
    let config = config.to_str().unwrap();
    let creds = Some(dir.path());
    let (out, text) = wsgate(&["check-config", config], creds);
    assert!(out.status.success(), "packaged config refused:\n{text}");
    // A fresh install has no user yet: the one warning says so, and how to add one.
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "check-config warns:\n{text}");
    assert!(warnings[0].contains("nobody can log in"), "{text}");

    // The admin's commands work on it, by hand, given the credentials' sources.
    let (out, text) = wsgate(&["token", "add", "--config", config, "alice"], creds);
    assert!(
        !out.status.success(),
        "a token for an unknown user:\n{text}"
    );
    let users = dir.path().join("users");
    let mut passwd = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["passwd", users.to_str().unwrap(), "alice"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    passwd
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long enough password\n")
        .unwrap();
    assert!(passwd.wait().unwrap().success());
    let (out, text) = wsgate(&["token", "add", "--config", config, "alice"], creds);
    assert!(out.status.success(), "token add:\n{text}");
    let (out, text) = wsgate(&["check-config", config], creds);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 user, 1 API token"), "{text}");
    assert!(!text.contains("warning"), "check-config warns:\n{text}");

    // Default-deny does not shut users out of the shipped channels.
    for path in ["/echo", "/chat/lobby", "/broadcast"] {
        let (out, text) = wsgate(&["check-access", "--config", config, "alice", path], creds);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("subscribe: allowed") && text.contains("publish: allowed"),
            "alice on {path}:\n{text}"
        );
    }

    // README's Pi block runs `sudo wsgate check-config /etc/wsgate/wsgate.ini` by hand, without
    // $CREDENTIALS_DIRECTORY: it reads the credentials where the unit's LoadCredential= takes
    // them from, the config's directory, and says so.
    let (out, text) = wsgate(&["check-config", config], None);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "credential: paths read from {}, where the packaged unit's LoadCredential= takes them from",
            dir.path().display()
        )) && text.contains("1 user, 1 API token"),
        "{text}"
    );
    // serve by hand says which variable to set, and to what.
    let (out, text) = wsgate(&["serve", config], None);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("[tls] key: credential: paths need $CREDENTIALS_DIRECTORY")
            && text.contains(&format!(
                "`CREDENTIALS_DIRECTORY={} wsgate ...`",
                dir.path().display()
            )),
        "{text}"
    );
}

#[test]
fn packaged_config_is_short_and_points_at_the_reference() {
    let config = read("packaging/wsgate.ini");
    let lines = config.lines().count();
    assert!(
        lines <= 60,
        "packaging/wsgate.ini has {lines} lines: keep it short"
    );
    let reference = "/usr/share/doc/wsgate/wsgate.ini.example";
    assert!(config.contains(reference));
    let manifest = read("Cargo.toml");
    assert!(
        manifest.contains(&format!(
            "[\"conf/wsgate.ini\", \"{}\", \"644\"]",
            &reference[1..]
        )),
        "the package must ship conf/wsgate.ini as {reference}"
    );
}

#[test]
fn packaged_config_has_no_demo_settings() {
    let config = read("packaging/wsgate.ini");
    let set: Vec<&str> = config
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';']))
        .collect();
    for demo in [
        "self_signed = true",
        "allow_missing = true",
        "allow_any = true",
    ] {
        assert!(!set.contains(&demo), "packaged config sets {demo:?}");
    }
    assert!(
        set.iter()
            .all(|l| !l.contains("localhost") && !l.contains("127.0.0.1"))
    );
    for f in ["packaging/users", "packaging/tokens"] {
        assert_eq!(
            std::fs::metadata(repo(f)).unwrap().len(),
            0,
            "{f} must be empty (no demo user, no token)"
        );
    }
}
