//! What a login costs the server per upgrade, by credential kind: a password checked with Argon2
//! (first login), a password answered from the verification cache (reconnect within
//! `cache_ttl`), an API token, and a session token — plus issuing the session every successful
//! upgrade gets. In-process, through the same `Verifier` the upgrade uses; medians of many runs.
//!
//! Also the per-message cost access levels add to the common path (the rate-limit buckets; the
//! publish check is one bool read): batched, because one check is below the clock's resolution.
//!
//!     cargo run --release --example auth_cost
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wsgate::auth::password::Authenticator;
use wsgate::auth::session::SessionKey;
use wsgate::auth::throttle::LoginThrottle;
use wsgate::auth::tokens::{TokenStore, generate_token, token_digest};
use wsgate::auth::users::{UserStore, hash_password};
use wsgate::auth::{Credentials, SessionSettings};
use wsgate::ops::metrics::Metrics;
use wsgate::pipeline::ratelimit::MessageLimiter;
use wsgate::policy::{Verdict, Verifier};

fn median_us(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

fn measure(runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..runs.min(50) {
        f(); // warm-up
    }
    let samples = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    median_us(samples)
}

fn main() {
    let hash = hash_password("correct horse").expect("hash");
    let store =
        UserStore::parse(&format!("alice:{hash}\n"), Path::new("bench-users")).expect("users");
    let token = generate_token().expect("token");
    let digest: String = token_digest(&token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tokens = TokenStore::parse(
        &format!("alice:bench:{digest}\n"),
        Path::new("bench-tokens"),
    )
    .expect("tokens");
    let users = Authenticator::new(store, 1024, Duration::from_secs(600), 2);
    let key = SessionKey::from_bytes(&[7u8; 32]);
    let creds = Credentials::new(
        users,
        tokens,
        Some(SessionSettings {
            key,
            ttl: Duration::from_secs(12 * 3600),
            max_age: Duration::from_secs(7 * 86400),
        }),
        LoginThrottle::new(0, Duration::from_secs(300), 4096),
        Arc::new(Metrics::new(["/echo"])),
    );
    let peer = creds.for_peer(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let ok = |v: Verdict| assert!(matches!(v, Verdict::Ok { .. }), "{v:?}");

    // Failed checks are never cached, so a wrong password measures a full Argon2 run.
    let argon2 = measure(21, || {
        let _ = peer.password("alice", "wrong horse");
    });
    let cached = measure(20_000, || ok(peer.password("alice", "correct horse")));
    let api_token = measure(20_000, || ok(peer.api_token(&token)));
    let (session, _) = creds
        .issue_session("alice", "bench-session", None)
        .expect("sessions on");
    let resume = measure(20_000, || ok(peer.session(&session)));
    let issue = measure(20_000, || {
        let _ = creds.issue_session("alice", "bench-session", None);
    });

    println!("credential check per upgrade (median, µs; this machine, release build)");
    println!("  password, Argon2id m=19 MiB t=2 p=1 : {argon2:>10.1}");
    println!("  password, verification cache hit   : {cached:>10.2}");
    println!("  API token (SHA-256 lookup)         : {api_token:>10.2}");
    println!("  session token (HMAC + fingerprint) : {resume:>10.2}");
    println!("  issuing the session (every upgrade): {issue:>10.2}");
    let mut limiter = MessageLimiter::new(1_000_000_000, u64::MAX / 4, Instant::now());
    let batch = 1000;
    let per_message_ns = measure(2000, || {
        let now = Instant::now();
        for _ in 0..batch {
            assert!(limiter.allow(64, now));
        }
    }) * 1000.0
        / f64::from(batch);
    println!("per message: rate-limit buckets {per_message_ns:.1} ns");
    println!(
        "session login vs password login: {:+.2} µs against a cache hit, {:+.1} µs against Argon2",
        resume - cached,
        resume - argon2
    );
}
