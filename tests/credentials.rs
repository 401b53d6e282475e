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
    // Counted in whole seconds from the login: it ends 3 to 4 s after it, never later.
    assert!(
        ended_at >= Duration::from_millis(2900) && ended_at < Duration::from_millis(4700),
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
    assert!(server.wait_log("auth failed", IO_TIMEOUT));
    assert!(
        server.count_log("malformed credentials") >= 2,
        "{}",
        server.logs()
    );
    let logs = server.logs();
    assert!(!logs.contains("s3cr3t"), "{logs}");
}
