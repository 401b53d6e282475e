//! The systemd unit and the packaged config: `systemd-analyze verify` finds nothing to say about
//! the unit, `systemd-analyze security` rates it at most 1.5, it promises only what wsgate does,
//! and the config the Debian package installs passes `wsgate check-config`. Without
//! `systemd-analyze` these tests fail: CI installs systemd (see `.ci/run`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TempDir;

/// The highest overall exposure `systemd-analyze security` may report.
const MAX_EXPOSURE: f64 = 1.5;
/// Where the unit expects the binary (the Debian package puts it there).
const INSTALLED_BIN: &str = "/usr/bin/wsgate";
/// The directory systemd puts the unit's credentials in.
const CREDENTIALS: &str = "/run/credentials/wsgate.service/";

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

    // Every credential path the packaged config reads is one the unit loads.
    let creds: Vec<&str> = values(&s, "LoadCredential")
        .into_iter()
        .map(|v| v.split_once(':').expect("LoadCredential=ID:PATH").0)
        .collect();
    let config = read("packaging/wsgate.ini");
    let mut used = 0;
    for line in config.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, cred)) = line.split_once(CREDENTIALS) {
            assert!(creds.contains(&cred.trim()), "{line:?}: not in {creds:?}");
            used += 1;
        }
    }
    assert_eq!(used, 3, "cert, key and users come from credentials");
}

#[test]
fn packaged_config_passes_check_config() {
    let dir = TempDir::new("pkg-config");
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("wsgate.crt"), pair.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("wsgate.key"),
        pair.signing_key.serialize_pem(),
    )
    .unwrap();
    std::fs::copy(repo("packaging/users"), dir.path().join("users")).unwrap();
    let creds = format!("{}/", dir.path().display());
    let config = read("packaging/wsgate.ini").replace(CREDENTIALS, &creds);
    let path = dir.path().join("wsgate.ini");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "packaged config refused:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
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
    assert_eq!(
        std::fs::metadata(repo("packaging/users")).unwrap().len(),
        0,
        "the packaged users file must be empty (no demo user)"
    );
}

/// Keys (set or commented out) per section, as the reference config documents them.
fn documented_keys(config: &str) -> Vec<String> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in config.lines() {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let line = line.strip_prefix('#').unwrap_or(line);
        if let Some((k, _)) = line.split_once('=') {
            let k = k.trim_end();
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.push(format!("{section} {k}"));
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

#[test]
fn packaged_config_documents_every_key_the_example_does() {
    // packaging/wsgate.ini is conf/wsgate.ini with production settings: keep them in step.
    let example = documented_keys(&read("conf/wsgate.ini"));
    let packaged = documented_keys(&read("packaging/wsgate.ini"));
    let missing: Vec<&String> = example.iter().filter(|k| !packaged.contains(k)).collect();
    assert!(missing.is_empty(), "packaging/wsgate.ini lacks {missing:?}");
}
