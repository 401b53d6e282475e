//! One connection's life, flowing one way: the handshake (PROXY header, TLS, upgrade) on a
//! handshake thread, which hands the upgraded connection to a worker for its loop (or the proxy
//! relay); one log line and one `wsgate_connections_total` outcome for a connection that ends
//! before its 101 ([`Unopened`]), one line when a connection opens and one when it closes.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::auth::NoSession;
use crate::auth::session::{self};
use crate::config::Limits;
use crate::hub::{Holder, HubClosed, Intake, JoinRefused, Membership, Profile, RecallRefused};
use crate::ops::metrics::Counter;
use crate::ops::metrics::{Metrics, Outcome};
use crate::pipeline::admit::{self, Ticket};
use crate::pipeline::connection;
use crate::pipeline::deadline::{Deadline, Phase, is_timeout};
use crate::pipeline::end::End;
use crate::pipeline::inbound::Rights;
use crate::pipeline::pool::{NoPlace, Slot};
use crate::pipeline::proxy_protocol;
use crate::pipeline::relay::{self, BackendWs};
use crate::pipeline::tls;
use crate::pipeline::upgrade::{self, UpgradeError};
use crate::policy::{Grant, LogSafeUser, Method, Proof, Reason, Revocation};

use super::{Loop, Runtime, Shared};

/// A connection past its 101, on its handshake thread, before its loop is set up ([`start`]).
struct Opened {
    /// Boxed on the handshake thread and never unboxed: the WebSocket with its TLS state is
    /// 1.6 KiB, and each move of it by value on the worker's way into its loop would touch
    /// another stretch of the worker's stack, resident for the connection's life (measured:
    /// 8 KiB per idle connection).
    ws: Box<upgrade::WsStream>,
    grant: Grant,
    member: Membership,
    session_id: String,
    /// The loop it runs: a proxy channel's with its backend WebSocket open (it answered 101
    /// before the client got its own), boxed like `ws`: inline, it would make every
    /// connection's hand-over as large.
    then: Loop<Box<BackendWs>>,
    /// The client (the carried address behind a load balancer).
    peer: SocketAddr,
    /// The connection's place in the pool, held until the connection loop ends.
    ticket: Ticket,
}

/// How a connection ended before its 101: the step it reached and what happened there. Each
/// such connection gets one outcome counted and one log line ([`Unopened::report`]).
enum Unopened {
    /// It failed at `step`.
    Failed { step: Stage, kind: Kind },
    /// It was the demo page's `GET /`, answered 200.
    DemoPage,
    /// It was the demo page's login, answered 204 with a session for this user.
    DemoLogin(String),
    /// It was the demo page's log-out, answered 204 with the session cookie cleared.
    DemoLogout,
}

/// The steps before the 101, in order.
#[derive(Debug, Clone, Copy)]
enum Stage {
    ProxyHeader,
    Tls,
    Upgrade,
}

/// What went wrong at a [`Stage`].
enum Kind {
    /// A read or write failed or missed its deadline.
    Io(io::Error),
    /// The PROXY header was missing, malformed or late.
    Proxy(proxy_protocol::ProxyError),
    /// Refused with an HTTP status (already answered and logged by the refusal log).
    Refused(Reason),
    /// The address carried in the PROXY header has its `max_connections_per_ip` already.
    Admission(admit::Refused),
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::ProxyHeader => "proxy header",
            Stage::Tls => "tls handshake",
            Stage::Upgrade => "upgrade",
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Io(e) => write!(f, "{e}"),
            Kind::Proxy(e) => write!(f, "{e}"),
            Kind::Refused(reason) => write!(f, "{reason}"),
            Kind::Admission(why) => write!(f, "{why}"),
        }
    }
}

impl Unopened {
    fn failed(step: Stage, kind: Kind) -> Self {
        Unopened::Failed { step, kind }
    }

    /// The `wsgate_connections_total` outcome; `None` for the demo page's answers.
    fn outcome(&self) -> Option<Outcome> {
        let Unopened::Failed { step, kind } = self else {
            return None;
        };
        Some(match (step, kind) {
            (_, Kind::Io(e)) if is_timeout(e) => Outcome::HandshakeTimeout,
            (_, Kind::Proxy(e)) if e.is_timeout() => Outcome::HandshakeTimeout,
            (_, Kind::Proxy(_)) => Outcome::TlsError,
            (Stage::ProxyHeader | Stage::Tls, Kind::Io(_)) => Outcome::TlsError,
            (Stage::Upgrade, Kind::Io(_)) => Outcome::IoError,
            (_, Kind::Refused(reason)) => Outcome::from_status(reason.status().as_u16())?,
            (_, Kind::Admission(_)) => Outcome::Busy,
        })
    }

    /// Counts the outcome and writes the one log line (refusals through the server's
    /// rate-limited refusal log).
    fn report(self, shared: &Shared, who: &Who, accepted: Instant) {
        if let Some(outcome) = self.outcome() {
            shared.metrics.outcome(outcome);
        }
        let after = accepted.elapsed();
        let peer = who.peer;
        match self {
            Unopened::Failed {
                kind: Kind::Refused(reason),
                ..
            } => shared.refusals.log(peer, &reason),
            Unopened::Failed {
                kind: Kind::Admission(why),
                ..
            } => log::debug!("refused {who}: {why}"),
            Unopened::Failed { step, kind } => {
                log::debug!("{step} failed {who} after={after:?}: {kind}");
            }
            Unopened::DemoPage => log::info!("demo page peer={peer} status=200"),
            Unopened::DemoLogin(user) => log::info!(
                "demo login peer={peer} user=\"{}\" status=204",
                LogSafeUser::new(&user)
            ),
            Unopened::DemoLogout => log::info!("demo logout peer={peer} status=204"),
        }
    }
}

/// One connection's pipeline, called on its handshake thread: the steps before the 101
/// (PROXY header, TLS, upgrade) and the loop's setup ([`start`]) here, then the connection loop
/// on the worker whose place the upgrade took before answering 101. The connection flows one way
/// and no thread waits for another: the worker is idle until the connection arrives, and the
/// handshake thread takes the next connection at once.
///
/// The handshake runs deep (rustls, Argon2, the HTTP head: ~72 KiB of stack), and so does the
/// loop's setup (the grant taken apart, the open line, the read share's place: 3.5 KiB); on the
/// worker, those pages would stay resident for the connection's life. Handshake threads are few
/// (at most `max_pre_auth`, started on demand) and persist, so their deep stacks are paid once
/// per thread, not per connection, and no thread is created per connection; the stack a worker
/// keeps resident for an idle connection is only what the loop touches.
pub(super) fn serve(
    shared: &Arc<Shared>,
    rt: &Arc<Runtime>,
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    ticket: Ticket,
    proxied: bool,
) {
    let handshake = || {
        handshake(shared, rt, stream, peer, accepted, ticket, proxied)
            .map(|(opened, worker)| (start(shared, rt, opened), worker))
    };
    match catch_unwind(AssertUnwindSafe(handshake)) {
        Ok(Ok((opening, worker))) => {
            let (shared, rt) = (Arc::clone(shared), Arc::clone(rt));
            // The connection travels boxed and is unboxed onto the worker's stack at once: a
            // queued job's captures stay allocated until the job returns, which for a connection
            // is its whole life (measured: ~2 KiB per idle connection when moved unboxed).
            let opening = Box::new(opening);
            worker.run(move || run(&shared, &rt, unbox(opening)));
        }
        Ok(Err(ended)) => {
            let (unopened, who) = *ended;
            unopened.report(shared, &who, accepted);
        }
        // Its socket, ticket and any worker place were dropped while unwinding.
        Err(_) => {
            shared.metrics.outcome(Outcome::IoError);
            log::error!("handshake panicked peer={peer}; connection dropped");
        }
    }
}

/// Moves `boxed`'s value out and frees its allocation now, not when the caller's scope ends.
#[allow(
    clippy::boxed_local,
    reason = "taking the box is the point: it is freed on return"
)]
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// The connection loop on its worker, then its close line. The frame under the loop holds only
/// the loop's state and what the close line needs ([`Opening`]): every byte of stack the loop
/// reaches is resident for the connection's life, a page at a time (docs/benchmarks.md, "The
/// worker's stack").
fn run(shared: &Shared, rt: &Runtime, mut open: Opening) {
    let end = open.state.run(&rt.config.limits);
    // The loop's state goes before the close line, dropped where it lies (moved out, it would
    // need room for a copy in this frame, the one under the loop): its socket closed, its place
    // in the hub left.
    open.state = Running::Ended(end.clone());
    open.report(&shared.metrics, &end);
}

/// A connection past its open line: its loop, and what its close line will need.
struct Opening {
    state: Running,
    /// The names the close line starts with (peer, user, session, path), one string.
    names: Box<str>,
    pattern: String,
    opened: Instant,
    /// The connection's place in the pool, given back after the close line.
    _ticket: Ticket,
}

/// A connection's loop: set up and ready to run, or ended (or failed to be set up) like this.
#[allow(
    clippy::large_enum_variant,
    reason = "one per connection, on its worker's stack within the pages the loop touches \
              anyway; boxing the direct loop's state would add a heap allocation per connection"
)]
enum Running {
    Direct(connection::Conn),
    /// Boxed: inline, it would make every connection's frame as large (0.2 KiB more).
    Relay(Box<relay::Relay>),
    Ended(End),
}

impl Running {
    /// Runs the loop until the connection ends.
    fn run(&mut self, limits: &Limits) -> End {
        match self {
            Running::Direct(conn) => conn.run(limits),
            Running::Relay(relay) => relay.run(limits),
            Running::Ended(end) => end.clone(),
        }
    }
}

impl Opening {
    /// Counts the connection out of its channel and writes the close line.
    #[inline(never)]
    fn report(&self, metrics: &Metrics, end: &End) {
        metrics.channel_closed(&self.pattern);
        // In whole milliseconds: a float's formatting went 0.7 KiB deeper into the worker's stack
        // (a worker keeps the pages its earlier connections touched).
        let duration = self.opened.elapsed();
        log::info!(
            "close {} duration={}.{:03}s {end}",
            self.names,
            duration.as_secs(),
            duration.subsec_millis()
        );
    }
}

/// Sets the connection up for its loop, on its handshake thread: the open line, the channel
/// counted, the loop's state made (the relay's for a proxy channel), the grant dropped but for
/// what the close line will need.
fn start(shared: &Shared, rt: &Runtime, opened: Opened) -> Opening {
    let Opened {
        ws,
        grant,
        member,
        session_id,
        then,
        peer,
        ticket,
    } = opened;
    let config = &rt.config;
    let channel = config.channel(grant.channel);
    let pattern = channel.pattern.to_string();
    shared.metrics.channel_opened(&pattern);
    let user = grant.log_user();
    let via = match rt.channel_loop(grant.channel) {
        Loop::Relay(dialer) => format!(" backend={}", dialer.backend().endpoint),
        Loop::Connection(_) => String::new(),
    };
    log::info!(
        "open peer={peer} user=\"{user}\" auth={} session={session_id} path={}{via}",
        grant.method,
        grant.path
    );
    let rights = Rights {
        may_publish: grant.may_publish,
        on_forbidden: channel.on_forbidden,
        on_rate_limit: channel.limits.on_rate_limit,
    };
    let (limits, channel_limits) = (&config.limits, &channel.limits);
    let opened = match then {
        Loop::Relay(backend) => relay::open(ws, backend, member, rights, channel_limits, limits)
            .map(|relay| Running::Relay(Box::new(relay))),
        Loop::Connection(audience) => {
            connection::open(ws, member, audience, rights, channel_limits, limits)
                .map(Running::Direct)
        }
    };
    let names = format!(
        "peer={peer} user=\"{user}\" session={session_id} path={}",
        grant.path
    );
    Opening {
        state: opened.unwrap_or_else(Running::Ended),
        names: names.into_boxed_str(),
        pattern,
        opened: Instant::now(),
        _ticket: ticket,
    }
}

/// Who a connection that ended before its 101 was: the client once known, and the load
/// balancer it came through behind one.
struct Who {
    peer: SocketAddr,
    /// The socket's peer when a PROXY header was expected: the balancer.
    via: Option<SocketAddr>,
    /// False while the PROXY header is unread: `peer` is then the balancer too.
    known: bool,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.known, self.via) {
            (true, Some(via)) => write!(f, "peer={} via={via}", self.peer),
            (false, Some(via)) => write!(f, "via={via}"),
            (_, None) => write!(f, "peer={}", self.peer),
        }
    }
}

/// The steps before the 101, on the handshake thread: the PROXY header when `proxied`, TLS, the
/// upgrade, whose [`Entrance::enter`] takes a place on a worker before it answers 101.
fn handshake(
    shared: &Shared,
    rt: &Arc<Runtime>,
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    mut ticket: Ticket,
    proxied: bool,
) -> Result<(Opened, Slot), Box<(Unopened, Who)>> {
    let (config, metrics) = (&rt.config, &shared.metrics);
    let deadline = Deadline::new(Phase::TlsHandshake, accepted, config.tls.handshake_timeout);
    let mut who = Who {
        peer,
        via: proxied.then_some(peer),
        known: !proxied,
    };
    let fail = |step, kind, who| Err(Box::new((Unopened::failed(step, kind), who)));
    // From here on `peer` is the client: the carried address behind a load balancer.
    let peer = if proxied {
        match read_proxy_header(&stream, peer, deadline, &mut ticket) {
            Ok(client) => {
                who.peer = client;
                who.known = true;
                client
            }
            Err((kind, known)) => {
                if let Some(client) = known {
                    who.peer = client;
                    who.known = true;
                }
                return fail(Stage::ProxyHeader, kind, who);
            }
        }
    } else {
        peer
    };
    let transport = match secure(rt, stream, deadline) {
        Ok(transport) => transport,
        Err(e) => return fail(Stage::Tls, Kind::Io(e), who),
    };
    let mut entrance = Entrance {
        shared,
        rt,
        peer,
        ticket: &mut ticket,
        // A verified client certificate chain, kept so a reload can re-check it.
        client_chain: transport.client_chain(),
    };
    let verifier = shared.creds.for_peer(peer.ip());
    let enter = |grant: &Grant, deadline: Deadline| entrance.enter(grant, deadline);
    let login = |user: &str| demo_login(shared, peer, user);
    let (ws, grant, (member, session_id, then, worker)) =
        match upgrade::upgrade(transport, config, &verifier, enter, login) {
            Ok(upgraded) => upgraded,
            Err(UpgradeError::Refused(reason)) => {
                return fail(Stage::Upgrade, Kind::Refused(reason), who);
            }
            Err(UpgradeError::Io(e)) => return fail(Stage::Upgrade, Kind::Io(e), who),
            Err(UpgradeError::DemoPage) => return Err(Box::new((Unopened::DemoPage, who))),
            Err(UpgradeError::DemoLogin(user)) => {
                return Err(Box::new((Unopened::DemoLogin(user), who)));
            }
            Err(UpgradeError::DemoLogout) => return Err(Box::new((Unopened::DemoLogout, who))),
        };
    metrics.outcome(Outcome::Accepted);
    metrics.observe_upgrade(accepted.elapsed());
    if let Loop::Relay(_) = then {
        metrics.bump(Counter::ProxyConnections, 1);
    }
    let opened = Opened {
        ws: Box::new(ws),
        grant,
        member,
        session_id,
        then,
        peer,
        ticket,
    };
    Ok((opened, worker))
}

/// Reads the PROXY header the load balancer at `balancer` sends first and claims the carried
/// client's place under `max_connections_per_ip`. Returns the client's address; on failure,
/// what went wrong and the client's address when the header was read.
fn read_proxy_header(
    stream: &TcpStream,
    balancer: SocketAddr,
    deadline: Deadline,
    ticket: &mut Ticket,
) -> Result<SocketAddr, (Kind, Option<SocketAddr>)> {
    let client = match proxy_protocol::read_header(stream, deadline) {
        Ok(header) => header.client(balancer),
        Err(e) => return Err((Kind::Proxy(e), None)),
    };
    ticket
        .claim_ip(client.ip())
        .map_err(|why| (Kind::Admission(why), Some(client)))?;
    Ok(client)
}

/// The TLS handshake when the listener has TLS; the plain socket otherwise.
fn secure(rt: &Runtime, stream: TcpStream, deadline: Deadline) -> io::Result<tls::Transport> {
    match &rt.tls {
        Some(tls_config) => {
            tls::handshake(stream, Arc::clone(tls_config), deadline).map(tls::Transport::Tls)
        }
        None => Ok(tls::Transport::Plain(Arc::new(stream))),
    }
}

/// The demo page's login: a session for `user`, whose password the upgrade has just checked,
/// as the cookie that carries it.
fn demo_login(shared: &Shared, peer: SocketAddr, user: &str) -> Result<String, Reason> {
    let (token, ttl) = shared
        .creds
        .issue_session(user, &session::new_session_id(), None)
        .map_err(|why| match why {
            NoSession::Off => Reason::SessionsOff,
            NoSession::NoAccount | NoSession::Ended => Reason::BadCredentials {
                user: LogSafeUser::new(user),
                why: "credential revoked",
            },
        })?;
    shared.creds.logged_in(peer.ip(), user);
    Ok(crate::policy::session_cookie(&token, ttl))
}

/// What an authorised request's entry needs: the server, the runtime its request was checked
/// against, the client, its pool place and its verified certificate chain.
struct Entrance<'a> {
    shared: &'a Shared,
    rt: &'a Arc<Runtime>,
    peer: SocketAddr,
    ticket: &'a mut Ticket,
    client_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// What an entered connection carries to its 101: its membership, session id, the loop it will
/// run (a proxy channel's with the backend's open WebSocket), and its worker.
type Entered = (Membership, String, Loop<Box<BackendWs>>, Slot);

impl Entrance<'_> {
    /// Takes an authorised request from its grant to the moment before its 101, step by step.
    /// The order is what the rest relies on:
    /// 1. the memory check and the worker first, so a full server answers 503 before any
    ///    state is made for the connection;
    /// 2. the join next, so a server that is shutting down answers 503 ([`HubClosed`]);
    /// 3. the reload re-check after the join: a reload that swapped the runtime before the join
    ///    re-checked the hub without this connection, so it is asked here; a reload after the
    ///    join finds the member in the hub. Joined first and checked second, no reload misses it;
    /// 4. the backend's 101 before the client's (a refused backend answers 502/503/504; the
    ///    member leaves the hub as it drops);
    /// 5. the session last, so a client only gets a session for a connection that opens.
    fn enter(
        &mut self,
        grant: &Grant,
        deadline: Deadline,
    ) -> Result<(Entered, upgrade::ExtraHeaders), Reason> {
        self.admit_memory()?;
        let worker = self.reserve_worker(deadline)?;
        let member = self.join(grant)?;
        self.recheck(grant, &member)?;
        let then = self.dial_backend(grant)?;
        let (session_id, headers) = self.issue_session(grant, &member);
        Ok(((member, session_id, then, worker), headers))
    }

    /// Refuses a new connection at the memory cap, where it would only add to the squeeze
    /// (logged once per interval by the budget, not per refusal).
    fn admit_memory(&self) -> Result<(), Reason> {
        let hub = &self.shared.hub;
        if hub.budget().admits() {
            return Ok(());
        }
        self.shared.metrics.bump(Counter::MemoryRefusals, 1);
        hub.budget().refused();
        Err(Reason::MemoryFull)
    }

    /// The worker this connection will run on, waited for (the `queue`) up to the upgrade
    /// deadline; its thread is started now, so the hand-over after the 101 cannot fail.
    fn reserve_worker(&mut self, deadline: Deadline) -> Result<Slot, Reason> {
        match self.ticket.worker(deadline.at) {
            Ok(slot) => Ok(slot),
            Err(NoPlace::Timeout) => Err(Reason::NoWorker),
            Err(NoPlace::Thread(e)) => {
                log::error!("cannot start a worker thread for peer={}: {e}", self.peer);
                Err(Reason::NoWorker)
            }
        }
    }

    /// Joins the hub on the grant's path, holding what a reload re-checks: the user, the right
    /// to publish and the proof (for a client certificate, the verified chain); with the
    /// history the client asked for, refused (503) when that would not fit in memory.
    fn join(&self, grant: &Grant) -> Result<Membership, Reason> {
        let proof = match grant.method {
            Method::ClientCert => Proof::ClientCert {
                chain: self.client_chain.clone(),
            },
            _ => grant.proof.clone(),
        };
        let holder = Holder {
            user: grant.user.clone(),
            may_publish: grant.may_publish,
            proof,
        };
        let hub = &self.shared.hub;
        let channel = self.rt.config.channel(grant.channel);
        let intake = Intake::of(channel, grant.envelope);
        let joined = hub.join_recalling(&grant.path, channel.mode(), intake, holder, &grant.recall);
        match joined {
            Ok(Ok(member)) => Ok(member),
            Ok(Err(JoinRefused::Closed(HubClosed))) => Err(Reason::ShuttingDown),
            // Its history request is what would not fit: the client that asks pays.
            Ok(Err(JoinRefused::Recall(RecallRefused::Unavailable))) => {
                Err(Reason::HistoryUnavailable)
            }
            Ok(Err(JoinRefused::Recall(RecallRefused::MemoryFull))) => {
                self.shared.metrics.bump(Counter::MemoryRefusals, 1);
                hub.budget().refused();
                Err(Reason::MemoryFull)
            }
            Err(e) => Err(Reason::NoWakeFd(e.to_string())),
        }
    }

    /// Asks a reload's question of a connection that joined after the reload's sweep: whether
    /// the runtime in force now (when it is not the one the request was checked against) still
    /// grants it.
    fn recheck(&self, grant: &Grant, member: &Membership) -> Result<(), Reason> {
        let now = self.shared.current();
        if Arc::ptr_eq(&now, self.rt) {
            return Ok(());
        }
        let Err(why) = self
            .shared
            .still_holds(&now, &member.shared.holder, &grant.path)
        else {
            return Ok(());
        };
        let user = grant.user.clone().unwrap_or_default();
        Err(match why {
            Revocation::Credential => Reason::BadCredentials {
                user: LogSafeUser::new(&user),
                why: "credential revoked",
            },
            Revocation::Access | Revocation::Admin => Reason::Forbidden {
                user: LogSafeUser::new(&user),
                path: crate::policy::safe_path(&grant.path),
            },
        })
    }

    /// The loop the connection will run: a proxy channel's with its backend WebSocket open (the
    /// backend's 101 comes before the client's, or the client gets 502/503/504), dialed with the
    /// backend's settings of the runtime the request was decided against.
    fn dial_backend(&self, grant: &Grant) -> Result<Loop<Box<BackendWs>>, Reason> {
        let dialer = match self.rt.channel_loop(grant.channel) {
            Loop::Connection(audience) => return Ok(Loop::Connection(*audience)),
            Loop::Relay(dialer) => dialer,
        };
        let channel = self.rt.config.channel(grant.channel);
        let backend = dialer.backend();
        let target = relay::forward_target(
            backend,
            &channel.pattern,
            &grant.path,
            grant.query.as_deref(),
        );
        let who = relay::Identity {
            user: grant.user.as_deref(),
            method: grant.method,
            client: self.peer.ip(),
        };
        let ws_config = channel.limits.websocket_config();
        match dialer.connect(&target, &who, ws_config) {
            Ok(ws) => Ok(Loop::Relay(Box::new(ws))),
            Err(e) => {
                let failure = e.failure();
                self.shared.metrics.backend_failed(failure);
                Err(Reason::Backend {
                    failure,
                    detail: format!("{} path={}: {e}", backend.endpoint, grant.path),
                })
            }
        }
    }

    /// Leaves the pre-auth budget (authenticated, before the client can see the 101), records
    /// the member's profile, and issues the session: its id, and the headers of the 101 (the
    /// session token, the cookie for a browser, the chosen subprotocol).
    fn issue_session(
        &mut self,
        grant: &Grant,
        member: &Membership,
    ) -> (String, upgrade::ExtraHeaders) {
        let creds = &self.shared.creds;
        self.ticket.authenticated();
        if let Some(user) = &grant.user {
            creds.logged_in(self.peer.ip(), user);
        }
        let session_id = grant
            .session_id
            .clone()
            .unwrap_or_else(session::new_session_id);
        let _ = member.shared.profile.set(Profile {
            method: grant.method,
            mode: self.rt.config.channel(grant.channel).mode(),
            peer: self.peer,
            since: SystemTime::now(),
            session_id: session_id.clone(),
        });
        let mut headers = Vec::new();
        if let Some(user) = &grant.user {
            let login = match grant.proof {
                Proof::Session { login_unix, .. } => Some(login_unix),
                _ => None,
            };
            if let Ok((token, ttl)) = creds.issue_session(user, &session_id, login) {
                // The cookie only where a browser will send it back: a request with an Origin.
                if grant.browser {
                    headers.push(("Set-Cookie", crate::policy::session_cookie(&token, ttl)));
                }
                headers.push(("X-Wsgate-Session", token));
            }
        }
        if let Some(protocol) = grant.subprotocol {
            headers.push(("Sec-WebSocket-Protocol", protocol.to_string()));
        }
        (session_id, headers)
    }
}
