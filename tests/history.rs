//! Channel history with the real binary (docs/history.md): the retained message for a late
//! joiner, recovery after a reconnect with exactly what was missed, the reset when the history no
//! longer reaches back, the envelope's sender as the server authenticated it, plain clients
//! unchanged, access and the memory cap. Every wait is for a message or a status, never for time.

mod common;

use common::*;
use tungstenite::Message;

/// The default setup with a history of `size` broadcasts on `/chat/*` (the outbox holds it).
fn setup(size: usize) -> Setup {
    let mut s = Setup::default();
    s.set("channel:/chat/*", "history_size", &size.to_string());
    s
}

/// Publishes `texts` as alice on `path` and waits until `witness` (subscribed there) has them
/// all, so they are kept before the test goes on.
fn publish_seen(publisher: &mut Client, witness: &mut Client, texts: &[&str]) {
    for t in texts {
        publisher.send(Message::text(*t)).unwrap();
    }
    for t in texts {
        assert_eq!(next_text(witness), *t);
    }
}

#[test]
fn a_late_joiner_gets_the_retained_message_then_live_ones() {
    let server = setup(4).start();
    let mut alice = server.connect_as("/chat/pi", ALICE);
    let mut bob = server.connect_as("/chat/pi", BOB);
    publish_seen(&mut alice, &mut bob, &["21.0", "21.5"]);
    // A plain dashboard asking for the last value gets the payload as it was sent.
    let mut late = server.connect_as("/chat/pi?last=1", BOB);
    assert_eq!(next_text(&mut late), "21.5");
    alice.send(Message::text("22.0")).unwrap();
    assert_eq!(next_text(&mut late), "22.0");
    // ?last=N beyond what is kept gets what is kept, oldest first.
    let mut all = server.connect_as("/chat/pi?last=10", BOB);
    for want in ["21.0", "21.5", "22.0"] {
        assert_eq!(next_text(&mut all), want);
    }
}

#[test]
fn a_client_that_missed_three_gets_exactly_those_in_order_then_live_ones() {
    let server = setup(8).start();
    let mut alice = server.connect_as("/chat/room", ALICE);
    let mut witness = server.connect_as("/chat/room", BOB);
    let mut phone = enveloped(&server, "/chat/room", BOB);
    alice.send(Message::text("m1")).unwrap();
    assert_eq!(next_text(&mut witness), "m1");
    let first = next_text(&mut phone);
    assert_eq!(field(&first, "data"), "\"m1\"");
    let epoch = field(&first, "epoch").trim_matches('"').to_string();
    let pos: u64 = field(&first, "pos").parse().unwrap();
    // The phone loses its connection; three broadcasts go by.
    phone.close(None).unwrap();
    assert_eq!(close_code(&mut phone), 1005);
    publish_seen(&mut alice, &mut witness, &["m2", "m3", "m4"]);
    let mut phone = enveloped(&server, &format!("/chat/room?since={epoch}:{pos}"), BOB);
    for (i, want) in ["m2", "m3", "m4"].iter().enumerate() {
        let got = next_text(&mut phone);
        assert_eq!(field(&got, "type"), "\"message\"", "{got}");
        assert_eq!(field(&got, "data"), format!("\"{want}\""), "{got}");
        assert_eq!(
            field(&got, "pos"),
            (pos + 1 + i as u64).to_string(),
            "{got}"
        );
        assert_eq!(field(&got, "epoch"), format!("\"{epoch}\""));
    }
    // Then live, with nothing repeated in between.
    alice.send(Message::text("m5")).unwrap();
    let live = next_text(&mut phone);
    assert_eq!(field(&live, "data"), "\"m5\"", "{live}");
    assert_eq!(field(&live, "pos"), (pos + 4).to_string());
}

#[test]
fn a_position_the_history_no_longer_reaches_gets_a_reset_then_live_ones() {
    let server = setup(2).start();
    let mut alice = server.connect_as("/chat/room", ALICE);
    let mut witness = enveloped(&server, "/chat/room", BOB);
    for t in ["1", "2", "3", "4", "5"] {
        alice.send(Message::text(t)).unwrap();
    }
    let mut last = String::new();
    for _ in 0..5 {
        last = next_text(&mut witness);
    }
    let epoch = field(&last, "epoch").trim_matches('"').to_string();
    assert_eq!(field(&last, "pos"), "5");
    // Positions 2 to 3 were trimmed (two are kept: 4 and 5): told so, in-band.
    let mut old = enveloped(&server, &format!("/chat/room?since={epoch}:1"), BOB);
    let reset = next_text(&mut old);
    assert_eq!(field(&reset, "type"), "\"reset\"", "{reset}");
    assert_eq!(field(&reset, "reason"), "\"trimmed\"");
    assert_eq!(field(&reset, "pos"), "5");
    // Another epoch (a restarted server's): told so too.
    let mut stale = enveloped(&server, "/chat/room?since=0123456789abcdef:4", BOB);
    let reset = next_text(&mut stale);
    assert_eq!(field(&reset, "reason"), "\"epoch\"", "{reset}");
    // Position 3 is just within reach: 4 and 5, no reset.
    let mut near = enveloped(&server, &format!("/chat/room?since={epoch}:3"), BOB);
    assert_eq!(field(&next_text(&mut near), "pos"), "4");
    assert_eq!(field(&next_text(&mut near), "pos"), "5");
    alice.send(Message::text("6")).unwrap();
    for ws in [&mut old, &mut stale, &mut near] {
        assert_eq!(field(&next_text(ws), "pos"), "6");
    }
}

#[test]
fn the_envelope_names_the_authenticated_sender_whatever_the_payload_claims() {
    let server = setup(4).start();
    let mut alice = server.connect_as("/chat/room", ALICE);
    let mut bob = enveloped(&server, "/chat/room", BOB);
    let claim = r#"{"from":"admin","type":"reset"}"#;
    alice.send(Message::text(claim)).unwrap();
    let got = next_text(&mut bob);
    assert!(got.starts_with("{\"type\":\"message\""), "{got}");
    assert_eq!(field(&got, "from"), "\"alice\"", "{got}");
    assert_eq!(
        field(&got, "data"),
        r#""{\"from\":\"admin\",\"type\":\"reset\"}""#
    );
    assert!(field(&got, "time").parse::<u64>().unwrap() > 1_600_000_000_000);
    // Binary payloads travel as standard base64, marked binary.
    alice.send(Message::binary(vec![0u8, 1, 254, 255])).unwrap();
    let got = next_text(&mut bob);
    assert_eq!(field(&got, "from"), "\"alice\"");
    assert_eq!(field(&got, "binary"), "true");
    assert_eq!(field(&got, "data"), "\"AAH+/w==\"");
    // The same from the history.
    let mut late = enveloped(&server, "/chat/room?last=2", BOB);
    assert_eq!(field(&next_text(&mut late), "from"), "\"alice\"");
    assert_eq!(field(&next_text(&mut late), "data"), "\"AAH+/w==\"");
}

#[test]
fn plain_clients_see_no_change() {
    let server = setup(4).start();
    let mut alice = server.connect_as("/chat/room", ALICE);
    // On a channel with a history, without the subprotocol: plain payloads, nothing replayed.
    let mut plain = server.connect_as("/chat/room", BOB);
    alice.send(Message::text("hello")).unwrap();
    assert_eq!(next_text(&mut plain), "hello");
    alice.send(Message::binary(vec![9u8, 8])).unwrap();
    assert_eq!(next_data(&mut plain), Message::binary(vec![9u8, 8]));
    let mut late = server.connect_as("/chat/room", BOB);
    alice.send(Message::text("after")).unwrap();
    assert_eq!(
        next_text(&mut late),
        "after",
        "no replay without last or since"
    );
    // On a broadcast channel without one, the envelope carries the sender but no position, and
    // since/last are the app's query keys.
    let mut news = enveloped(&server, "/news?since=zz&last=x", BOB);
    let mut news_pub = server.connect_as("/news", ALICE);
    news_pub.send(Message::text("plain")).unwrap();
    let got = next_text(&mut news);
    assert_eq!(field(&got, "from"), "\"alice\"", "{got}");
    assert_eq!(field(&got, "data"), "\"plain\"");
    assert!(!got.contains("\"pos\""), "{got}");
}

#[test]
fn history_requests_obey_access_and_bad_ones_get_400() {
    let mut s = setup(4);
    s.set("channel:/inbox/*", "mode", "broadcast")
        .set("channel:/inbox/*", "history_size", "4")
        .set("role:own", "members", "*")
        .set("role:own", "subscribe", "/inbox/%u")
        .set("role:own", "publish", "/inbox/%u");
    let server = s.start();
    let mut alice = server.connect_as("/inbox/alice", ALICE);
    let mut alice2 = server.connect_as("/inbox/alice", ALICE);
    publish_seen(&mut alice, &mut alice2, &["secret"]);
    let as_bob = |q: &str| {
        server.connect_with(
            &format!("/inbox/alice?{q}"),
            &[("Authorization", &basic(BOB.0, BOB.1))],
        )
    };
    assert_eq!(status_of(as_bob("last=1")), 403);
    let anonymous = server.connect_with("/inbox/alice?last=1", &[]);
    assert_eq!(status_of(anonymous), 401);
    // Alice's own recovery works.
    let mut own = server.connect_as("/inbox/alice?last=1", ALICE);
    assert_eq!(next_text(&mut own), "secret");
    for bad in [
        "last=0",
        "last=x",
        "since=abc",
        "last=1&since=ab:1",
        "since=ab:1",
    ] {
        let got = server.connect_with(
            &format!("/chat/room?{bad}"),
            &[("Authorization", &basic(BOB.0, BOB.1))],
        );
        assert_eq!(status_of(got), 400, "{bad}");
    }
}

#[test]
fn kept_broadcasts_stay_within_their_share_of_the_memory_cap() {
    let mut s = setup(64);
    s.set("server", "memory_limit", "4MiB")
        .set("admin", "listen", "127.0.0.1:0")
        .set("channel:/chat/*", "outbox", "64")
        .set("channel:/chat/*", "max_message_size", "60KiB")
        .set("channel:/chat/*", "max_frame_size", "60KiB");
    let server = s.start();
    let mut alice = server.connect_as("/chat/big", ALICE);
    let mut witness = server.connect_as("/chat/big", BOB);
    // 40 messages of 60 KiB: 2.4 MiB, more than the quarter of the cap histories may hold.
    for i in 0..40u8 {
        alice.send(Message::binary(vec![i; 60 << 10])).unwrap();
        assert_eq!(next_data(&mut witness), Message::binary(vec![i; 60 << 10]));
    }
    let used = metric(&server, "wsgate_memory_bytes");
    assert!(used < 4 << 20, "{used}");
    // What is kept is the latest, contiguous, and no more than the histories' quarter of the
    // cap (1 MiB: 17 such messages at most).
    let mut late = server.connect_as("/chat/big?last=64", BOB);
    let first = match next_data(&mut late) {
        Message::Binary(b) => b[0],
        other => panic!("{other:?}"),
    };
    assert!(40 - first <= 17, "kept from {first}: more than the share");
    for i in first + 1..40 {
        assert_eq!(next_data(&mut late), Message::binary(vec![i; 60 << 10]));
    }
}

#[test]
fn a_subscriber_whose_access_is_revoked_is_refused_its_recovery_like_its_connection() {
    let mut s = setup(4);
    s.set("role:readers", "members", "bob")
        .set("role:readers", "subscribe", "/chat/*")
        .set("role:everyone", "members", "alice");
    let server = s.start();
    let mut alice = server.connect_as("/chat/room", ALICE);
    let mut bob = enveloped(&server, "/chat/room", BOB);
    alice.send(Message::text("before")).unwrap();
    let got = next_text(&mut bob);
    let epoch = field(&got, "epoch").trim_matches('"').to_string();
    // Bob loses the role: his connection ends, and so does his way back to what he missed.
    s.set("role:readers", "members", "nobody");
    std::fs::write(server.dir.path().join("wsgate.ini"), s.render()).unwrap();
    server.reload_and_wait();
    assert_eq!(close_code(&mut bob), 1008);
    alice.send(Message::text("after")).unwrap();
    let again = server.connect_with(
        &format!("/chat/room?since={epoch}:1"),
        &[
            ("Authorization", &basic(BOB.0, BOB.1)),
            ("Sec-WebSocket-Protocol", ENVELOPE),
        ],
    );
    assert_eq!(status_of(again), 403);
}

#[test]
fn an_admin_publish_is_kept_and_enveloped_as_from_the_admin() {
    let mut s = setup(4);
    s.set("admin", "listen", "127.0.0.1:0");
    let server = s.start();
    // Nobody is subscribed: the reading is kept for whoever comes.
    let (status, answer) = server.admin_publish("/chat/pi", "21.5");
    assert_eq!(status, 202, "{answer}");
    let mut late = enveloped(&server, "/chat/pi?last=1", BOB);
    let got = next_text(&mut late);
    assert_eq!(field(&got, "from"), "{\"admin\":true}", "{got}");
    assert_eq!(field(&got, "data"), "\"21.5\"");
    assert_eq!(field(&got, "pos"), "1");
}

#[test]
fn presence_tells_enveloped_subscribers_who_joins_and_leaves_and_the_admin_lists_them() {
    let mut s = setup(4);
    s.set("channel:/chat/*", "presence", "on")
        .set("admin", "listen", "127.0.0.1:0");
    let server = s.start();
    let mut watcher = enveloped(&server, "/chat/room", BOB);
    let mut alice = server.connect_as("/chat/room", ALICE);
    let joined = next_text(&mut watcher);
    assert_eq!(field(&joined, "type"), "\"join\"", "{joined}");
    assert_eq!(field(&joined, "user"), "\"alice\"");
    let (status, body) = server.admin_get("/presence?path=/chat/room");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.trim(),
        r#"{"path":"/chat/room","subscribers":[{"user":"alice","connections":1},{"user":"bob","connections":1}]}"#
    );
    // A plain subscriber gets no notices: its first message is the next broadcast.
    let mut plain = server.connect_as("/chat/room", BOB);
    assert_eq!(field(&next_text(&mut watcher), "type"), "\"join\"");
    alice.send(Message::text("hi")).unwrap();
    assert_eq!(next_text(&mut plain), "hi");
    assert_eq!(field(&next_text(&mut watcher), "data"), "\"hi\"");
    alice.close(None).unwrap();
    let left = next_text(&mut watcher);
    assert_eq!(field(&left, "type"), "\"leave\"", "{left}");
    assert_eq!(field(&left, "user"), "\"alice\"");
    let (_, body) = server.admin_get("/presence?path=/chat/room");
    assert_eq!(
        body.trim(),
        r#"{"path":"/chat/room","subscribers":[{"user":"bob","connections":2}]}"#
    );
    assert_eq!(server.admin_get("/presence?path=/echo").0, 404);
    assert_eq!(server.admin_get("/presence").0, 400);
}

#[test]
fn joins_that_recall_on_new_paths_cannot_fill_the_memory_cap_for_everyone() {
    let mut s = setup(4);
    s.set("server", "memory_limit", "1MiB");
    let server = s.start();
    // Each join with ?last=1 on a path never seen makes that path's ring, which stays until
    // the process ends: ~1.2 KB with a 1000-byte path, then ~200 bytes with a short one; more
    // than the whole cap in all.
    let bob = [("Authorization", basic(BOB.0, BOB.1))];
    let bob = [(bob[0].0, bob[0].1.as_str())];
    let long = "x".repeat(1000);
    let paths = (0..900)
        .map(|i| format!("/chat/{long}{i}"))
        .chain((0..600).map(|i| format!("/chat/{i}")));
    for path in paths {
        if let Ok(mut ws) = server.connect_with(&format!("{path}?last=1"), &bob) {
            let _ = ws.close(None);
            while ws.read().is_ok() {}
        }
    }
    // The rings stay within the histories' share of the cap: honest clients that ask for no
    // history still get their broadcasts.
    let mut alice = server.connect_as("/chat/room", ALICE);
    let mut bob = server.connect_as("/chat/room", BOB);
    let news = "still served ".repeat(100);
    alice.send(Message::text(news.clone())).unwrap();
    assert_eq!(next_text(&mut bob), news);
}
