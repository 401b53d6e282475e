//! The plaintext listener (`[server] tls = off`, for a TLS-terminating proxy in front): it serves
//! `ws://` on loopback without any certificate, refuses to start on a network address unless
//! `allow_plaintext = true` is written, and a reload cannot switch it.

mod common;

use std::net::TcpStream;
use std::process::Command;

use common::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// A plaintext setup whose `[tls]` names files that do not exist and may not be generated.
fn plaintext() -> Setup {
    let mut setup = Setup::default();
    setup
        .set("server", "tls", "off")
        .set("tls", "cert", "generated.crt")
        .set("tls", "key", "generated.key")
        .set("tls", "self_signed", "true")
        // A TLS client's ClientHello is not an HTTP head: it waits for this deadline.
        .set("limits", "upgrade_timeout", "1s");
    setup
}

/// A `ws://` client on `path` as alice, over a plain TCP socket with timeouts.
fn connect_plain(server: &Server, path: &str) -> Result<WebSocket<TcpStream>, tungstenite::Error> {
    let tcp = server.tcp();
    let mut req = format!("ws://{}{path}", server.addr).into_client_request()?;
    let basic = format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{}:{}", ALICE.0, ALICE.1).as_bytes())
    );
    for (k, v) in [("Authorization", basic.as_str()), ("Origin", ORIGIN_OK)] {
        req.headers_mut()
            .append(k, HeaderValue::from_str(v).unwrap());
    }
    match tungstenite::client::client(req, tcp) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("handshake interrupted"),
    }
}

#[test]
fn plaintext_on_loopback_serves_ws_echo_without_a_certificate() {
    let server = plaintext().start();
    assert!(
        server.wait_log("[server] tls = off: serving plain ws://", IO_TIMEOUT),
        "no plaintext warning; log:\n{}",
        server.logs()
    );
    let mut ws = connect_plain(&server, "/echo")
        .unwrap_or_else(|e| panic!("plain upgrade: {e}; log:\n{}", server.logs()));
    ws.send(Message::text("over plain ws")).unwrap();
    match ws.read().unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), "over plain ws"),
        other => panic!("expected the echo, got {other:?}"),
    }
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    // Nothing was generated: TLS is off, so no certificate is needed.
    for f in ["generated.crt", "generated.key"] {
        assert!(!server.dir.path().join(f).exists(), "{f} was generated");
    }
    // The policy still holds without TLS: no credentials, no upgrade.
    let tcp = server.tcp();
    let req = format!("ws://{}/echo", server.addr)
        .into_client_request()
        .unwrap();
    match tungstenite::client::client(req, tcp) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status().as_u16(), 401);
        }
        Ok(_) => panic!("upgraded without credentials"),
        Err(e) => panic!("expected 401, got {e}"),
    }
    // A TLS client gets no TLS: the first bytes it reads are not a ServerHello.
    assert!(server.try_tls().is_err());
}

#[test]
fn plaintext_on_a_network_address_needs_allow_plaintext() {
    let mut setup = plaintext();
    setup.set("server", "listen", "0.0.0.0:0");
    let (_dir, config, _ca) = setup.write();
    let (code, stderr) = check_config(&config);
    assert_eq!(code, 2, "{stderr}");
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text.lines().position(|l| l == "tls = off").unwrap() + 1;
    assert!(
        stderr.contains(&format!(
            "{}:{line}: [server] tls: off on the non-loopback address 0.0.0.0:0",
            config.display()
        )) && stderr.contains("allow_plaintext = true"),
        "{stderr}"
    );
    // `serve` refuses the same file with the same status, before binding anything.
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[server] tls: off on the non-loopback"));

    setup.set("server", "allow_plaintext", "true");
    let (_dir, config, _ca) = setup.write();
    let (code, stderr) = check_config(&config);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_reload_cannot_switch_tls_on_or_off() {
    let server = plaintext().start();
    let config = server.dir.path().join("wsgate.ini");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("tls = off", "tls = on")).unwrap();
    server.reload_and_wait();
    assert!(
        server.wait_log(
            "reload failed, keeping the running configuration: config: ",
            IO_TIMEOUT
        ) && server.logs().contains(
            "[server] tls: changed from off to on; a reload cannot switch between TLS and plaintext"
        ),
        "log:\n{}",
        server.logs()
    );
    // Still plaintext, still serving.
    let mut ws = connect_plain(&server, "/echo").expect("plain upgrade after the reload");
    ws.send(Message::text("still plain")).unwrap();
    assert!(matches!(ws.read().unwrap(), Message::Text(_)));
}
