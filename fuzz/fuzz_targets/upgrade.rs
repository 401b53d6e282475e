//! The HTTP head parser and the upgrade policy, as `upgrade.rs` runs them: the head is cut at the
//! blank line within `max_request_head`, parsed with httparse into at most `max_headers` headers,
//! checked by `policy::check_head`, then decided by `policy::decide` (path, Origin, credentials
//! through a fake verifier, roles). Every refusal must turn into its HTTP response. Never a panic.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tungstenite::http;
use wsgate::config::Config;
use wsgate::policy::{self, Proof, Verdict, Verifier};

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        // Any existing file will do as the users file: policy never reads it.
        let text = format!(
            "[tls]\nself_signed = true\ncert = /nonexistent/c.pem\nkey = /nonexistent/k.pem\n\
             [auth]\nusers_file = {}/Cargo.toml\n\
             [origins]\nallow = https://app.example.com, https://*.example.org\n\
             [channel:/echo]\nmode = echo\n[channel:/chat/*]\nmode = broadcast\n\
             [channel:/public]\nmode = broadcast\nanonymous = true\n\
             [role:everyone]\nmembers = *\nsubscribe = /echo, /chat/*\npublish = /echo\n\
             [role:own]\nmembers = alice\nsubscribe = /chat/%u\npublish = /chat/%u\n\
             [role:anonymous]\nsubscribe = /public\n",
            env!("CARGO_MANIFEST_DIR")
        );
        Config::parse(&text, Path::new("/nonexistent-wsgate-fuzz/wsgate.ini")).expect("fuzz config")
    })
}

/// alice/pw, token `wsg_good`, session `s1.good`; `slow` is busy, `locked` throttled.
struct Fake;

impl Verifier for Fake {
    fn password(&self, user: &str, password: &str) -> Verdict {
        match (user, password) {
            ("alice", "pw") => Verdict::Ok {
                user: "alice".into(),
                session_id: None,
                proof: Proof::Password { hash: [1; 32] },
            },
            ("slow", _) => Verdict::Busy,
            ("locked", _) => Verdict::Throttled {
                user: policy::LogSafeUser::new(user),
                retry_after: Duration::from_secs(30),
            },
            _ => Verdict::Bad {
                user: policy::LogSafeUser::new(user),
                why: "bad password",
            },
        }
    }
    fn api_token(&self, token: &str) -> Verdict {
        if token == "wsg_good" {
            Verdict::Ok {
                user: "bob".into(),
                session_id: None,
                proof: Proof::ApiToken { digest: [2; 32] },
            }
        } else {
            Verdict::Bad {
                user: policy::LogSafeUser::default(),
                why: "bad token",
            }
        }
    }
    fn session(&self, token: &str) -> Verdict {
        if token == "s1.good" {
            Verdict::Ok {
                user: "carol".into(),
                session_id: Some("sid".into()),
                proof: Proof::Session {
                    fingerprint: [3; 8],
                    login_unix: 0,
                    key_id: [4; 8],
                },
            }
        } else {
            Verdict::Bad {
                user: policy::LogSafeUser::default(),
                why: "bad session",
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let config = config();
    let max = config.limits.max_request_head.get();
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let head = &data[..end + 4];
    if head.len() > max {
        return; // 431 before parsing
    }
    let mut headers = vec![httparse::EMPTY_HEADER; config.limits.max_headers.get()];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return, // 400 or 431
    }
    if let Err(reason) = policy::check_head(&req) {
        let _ = reason.response();
        let _ = reason.to_string();
        return;
    }
    let raw_target = req.path.unwrap_or_default();
    let target = match policy::Target::parse(raw_target) {
        Ok(target) => target,
        Err(reason) => {
            let _ = reason.response();
            return; // 400
        }
    };
    let _ = policy::route(&target.path, config);
    // What tungstenite hands the callback: the same head as an `http::Request`.
    let mut builder = http::Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(raw_target);
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    for client_user in [None, Some("dave")] {
        match policy::decide(&request, &target, config, &Fake, client_user) {
            Ok(grant) => {
                let _ = grant.log_user();
            }
            Err(reason) => {
                let _ = reason.response();
                let _ = reason.to_string();
            }
        }
    }
});
