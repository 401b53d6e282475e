//! One connection's life on its worker: the handshake (PROXY header, TLS, upgrade) on a handshake
//! thread, then the connection loop (or the proxy relay) on the worker, one log line when it opens
//! and one when it closes.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::auth::session::{self};
use crate::config::Mode;
use crate::hub::{Holder, HubClosed, Intake, Membership, Profile};
use crate::ops::metrics::Counter;
use crate::ops::metrics::Outcome;
use crate::pipeline::admit::Ticket;
use crate::pipeline::connection::{self, Rights};
use crate::pipeline::deadline::{Deadline, Phase, is_timeout};
use crate::pipeline::proxy_protocol;
use crate::pipeline::relay::{self, BackendWs};
use crate::pipeline::tls;
use crate::pipeline::upgrade::{self, UpgradeError};
use crate::policy::{Grant, Method, Proof, Reason};

use super::{Runtime, Shared};

/// A connection past its 101, handed from the handshake thread back to its worker.
struct Opened {
    ws: upgrade::WsStream,
    grant: Grant,
    member: Membership,
    session_id: String,
    /// A proxy channel's backend WebSocket, open (it answered 101 before the client got its own).
    backend: Option<BackendWs>,
    /// The client (the carried address behind a load balancer).
    peer: SocketAddr,
    /// The connection's place in the pool, held until the connection loop ends.
    ticket: Ticket,
}

/// One connection's pipeline on its worker: the steps before the 101 (PROXY header, TLS,
/// upgrade) on a handshake thread, then the connection loop on the worker itself, one log line at
/// the end, one `wsgate_connections_total` outcome.
///
/// The worker owns the connection throughout: it hands the handshake to a handshake thread and
/// waits for it, bounded by the handshake deadlines. The handshake runs deep (rustls, Argon2, the
/// HTTP head: ~72 KiB of stack); on the worker, those pages would stay resident for the
/// connection's life. Handshake threads are few (at most `max_pre_auth`, started on demand) and
/// persist, so their deep stacks are paid once per thread, not per connection, and no thread is
/// created per connection; the stack a worker keeps resident for an idle connection is only what
/// the loop touches.
pub(super) fn serve(
    shared: &Arc<Shared>,
    rt: &Arc<Runtime>,
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    ticket: Ticket,
    proxied: bool,
) {
    let metrics = &shared.metrics;
    let (done, result) = crate::pipeline::pool::reply();
    let job = {
        let (shared, rt) = (Arc::clone(shared), Arc::clone(rt));
        move || {
            done.send(handshake(
                &shared, &rt, stream, peer, accepted, ticket, proxied,
            ))
        }
    };
    let opened = match shared.handshakes.execute(job) {
        Ok(()) => match result.wait() {
            Some(opened) => opened,
            // The job panicked (the pool caught it): its socket and ticket are gone.
            None => {
                metrics.outcome(Outcome::IoError);
                log::error!("handshake panicked peer={peer}; connection dropped");
                None
            }
        },
        // The job (socket and ticket) was dropped unrun: the connection is refused.
        Err(e) => {
            metrics.outcome(Outcome::Busy);
            log::debug!("refused peer={peer}: cannot start a handshake thread: {e}");
            None
        }
    };
    let Some(Opened {
        ws,
        grant,
        member,
        session_id,
        backend,
        peer,
        ticket,
    }) = opened
    else {
        return;
    };
    let config = &rt.config;
    let channel = &grant.channel;
    let pattern = channel.pattern.to_string();
    metrics.channel_opened(&pattern);
    let user = grant.log_user();
    let via = match (&backend, &channel.backend) {
        (Some(_), Some(b)) => format!(" backend={}", b.endpoint),
        _ => String::new(),
    };
    log::info!(
        "open peer={peer} user=\"{user}\" auth={} session={session_id} path={}{via}",
        grant.method,
        grant.path
    );
    let opened = Instant::now();
    let rights = Rights {
        mode: channel.mode,
        may_publish: grant.may_publish,
        on_forbidden: channel.on_forbidden,
        on_rate_limit: channel.limits.on_rate_limit,
    };
    let end = match backend {
        Some(backend) => relay::run(ws, backend, member, rights, &channel.limits, &config.limits),
        None => connection::run(ws, member, rights, &channel.limits, &config.limits),
    };
    metrics.channel_closed(&pattern);
    log::info!(
        "close peer={peer} user=\"{user}\" session={session_id} path={} duration={:.3}s {end}",
        grant.path,
        opened.elapsed().as_secs_f64()
    );
    drop(ticket);
}

/// The steps before the 101, on the handshake thread: the PROXY header when `proxied`, TLS, the
/// upgrade. `None` when the connection ended here (its outcome counted and logged).
fn handshake(
    shared: &Shared,
    rt: &Runtime,
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    mut ticket: Ticket,
    proxied: bool,
) -> Option<Opened> {
    let (config, hub, metrics) = (&rt.config, &shared.hub, &shared.metrics);
    let deadline = Deadline::new(Phase::TlsHandshake, accepted, config.tls.handshake_timeout);
    // From here on `peer` is the client: the carried address behind a load balancer.
    let peer = if proxied {
        let via = peer;
        let peer = match proxy_protocol::read_header(&stream, deadline) {
            Ok(header) => header.client(via),
            Err(e) => {
                metrics.outcome(if e.is_timeout() {
                    Outcome::HandshakeTimeout
                } else {
                    Outcome::TlsError
                });
                log::debug!(
                    "proxy header failed via={via} after={:?}: {e}",
                    accepted.elapsed()
                );
                return None;
            }
        };
        if let Err(why) = ticket.claim_ip(peer.ip()) {
            metrics.outcome(Outcome::Busy);
            log::debug!("refused peer={peer} via={via}: {why}");
            return None;
        }
        peer
    } else {
        peer
    };
    let handshake = match &rt.tls {
        Some(tls_config) => {
            tls::handshake(stream, Arc::clone(tls_config), deadline).map(tls::Transport::Tls)
        }
        None => Ok(tls::Transport::Plain(Arc::new(stream))),
    };
    let transport = match handshake {
        Ok(transport) => transport,
        Err(e) => {
            metrics.outcome(if is_timeout(&e) {
                Outcome::HandshakeTimeout
            } else {
                Outcome::TlsError
            });
            log::debug!(
                "tls handshake failed peer={peer} after={:?}: {e}",
                accepted.elapsed()
            );
            return None;
        }
    };
    // A verified client certificate chain, kept so a reload can re-check it.
    let client_chain = transport.client_chain();
    // Joins the hub and issues the session just before the 101, so a server that is shutting
    // down still answers 503 and a client only gets a session it can use.
    let enter = |grant: &Grant| {
        // At the memory cap a new connection would only add to the squeeze (logged once per
        // interval by the budget, not per refusal).
        if !hub.budget().admits() {
            metrics.bump(Counter::MemoryRefusals, 1);
            hub.budget().refused();
            return Err(Reason::MemoryFull);
        }
        let limits = &grant.channel.limits;
        let proof = match grant.method {
            Method::ClientCert => Proof::ClientCert {
                chain: client_chain.clone(),
            },
            _ => grant.proof.clone(),
        };
        let holder = Holder {
            user: grant.user.clone(),
            may_publish: grant.may_publish,
            proof,
        };
        let member = match hub.join(
            &grant.path,
            grant.channel.mode == Mode::Broadcast,
            Intake::of(limits),
            holder,
        ) {
            Ok(Ok(member)) => member,
            Ok(Err(HubClosed)) => return Err(Reason::ShuttingDown),
            Err(e) => {
                log::error!("cannot create wake-up fd for peer={peer}: {e}");
                return Err(Reason::ShuttingDown);
            }
        };
        // A proxy channel: the backend's 101 first, or the client gets 502/503/504 (and the
        // member leaves the hub as it drops).
        let backend = match &grant.channel.backend {
            Some(backend) => {
                let target = relay::forward_target(
                    backend,
                    &grant.channel.pattern,
                    &grant.path,
                    grant.query.as_deref(),
                );
                let who = relay::Identity {
                    user: grant.user.as_deref(),
                    method: grant.method,
                    client: peer.ip(),
                };
                let tls = rt.backend_tls(&grant.channel);
                match relay::connect(backend, tls, &target, &who, limits.websocket_config()) {
                    Ok(ws) => Some(ws),
                    Err(e) => {
                        let failure = e.failure();
                        metrics.backend_failed(failure);
                        return Err(Reason::Backend {
                            failure,
                            detail: format!("{} path={}: {e}", backend.endpoint, grant.path),
                        });
                    }
                }
            }
            None => None,
        };
        // Authenticated: leave the pre-auth budget before the client can see the 101.
        ticket.authenticated();
        if let Some(user) = &grant.user {
            shared.creds.logged_in(peer.ip(), user);
        }
        let session_id = grant
            .session_id
            .clone()
            .unwrap_or_else(session::new_session_id);
        let _ = member.shared.profile.set(Profile {
            method: grant.method,
            mode: grant.channel.mode,
            peer,
            since: SystemTime::now(),
            session_id: session_id.clone(),
        });
        let mut headers = Vec::new();
        if let Some(user) = &grant.user {
            let login = match grant.proof {
                Proof::Session { login_unix, .. } => Some(login_unix),
                _ => None,
            };
            if let Some((token, ttl)) = shared.creds.issue_session(user, &session_id, login) {
                // The cookie only where a browser will send it back: a request with an Origin.
                if grant.browser {
                    headers.push(("Set-Cookie", session_cookie(&token, ttl)));
                }
                headers.push(("X-Wsgate-Session", token));
            }
        }
        if let Some(protocol) = grant.subprotocol {
            headers.push(("Sec-WebSocket-Protocol", protocol.to_string()));
        }
        Ok(((member, session_id, backend), headers))
    };
    let verifier = shared.creds.for_peer(peer.ip());
    let (ws, grant, (member, session_id, backend)) =
        match upgrade::upgrade(transport, config, &verifier, enter, |user: &str| {
            let (token, ttl) =
                shared
                    .creds
                    .issue_session(user, &session::new_session_id(), None)?;
            shared.creds.logged_in(peer.ip(), user);
            Some(session_cookie(&token, ttl))
        }) {
            Ok(upgraded) => upgraded,
            Err(UpgradeError::Refused(reason)) => {
                if let Some(outcome) = Outcome::from_status(reason.status().as_u16()) {
                    metrics.outcome(outcome);
                }
                shared.refusals.log(peer, &reason);
                return None;
            }
            Err(UpgradeError::DemoPage) => {
                log::info!("demo page peer={peer} status=200");
                return None;
            }
            Err(UpgradeError::DemoLogin(user)) => {
                log::info!(
                    "demo login peer={peer} user=\"{}\" status=204",
                    crate::policy::safe_user(&user)
                );
                return None;
            }
            Err(UpgradeError::Io(e)) => {
                metrics.outcome(if is_timeout(&e) {
                    Outcome::HandshakeTimeout
                } else {
                    Outcome::IoError
                });
                log::debug!("upgrade failed peer={peer}: {e}");
                return None;
            }
        };
    metrics.outcome(Outcome::Accepted);
    metrics.observe_upgrade(accepted.elapsed());
    if backend.is_some() {
        metrics.bump(Counter::ProxyConnections, 1);
    }
    Some(Opened {
        ws,
        grant,
        member,
        session_id,
        backend,
        peer,
        ticket,
    })
}

/// The session cookie: only sent over TLS, invisible to page scripts, never sent cross-site,
/// host-only (the `__Host-` name makes a browser insist on `Secure`, `Path=/` and no `Domain`).
fn session_cookie(token: &str, ttl: Duration) -> String {
    format!(
        "{}={token}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        crate::policy::SESSION_COOKIE,
        ttl.as_secs()
    )
}
