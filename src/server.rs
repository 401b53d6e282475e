//! Start-up, the per-connection pipeline and shutdown. `start` prepares everything that can fail
//! on a bad config (certificate, users, bind) before serving; `run` accepts until stopped, then
//! drains: hub closed (1001 to every client), wait up to the grace time.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admit::{Admission, Ticket};
use crate::auth::Credentials;
use crate::certs::{self, CertError};
use crate::config::{ClientAuth, Config};
use crate::connection::{self, Rights};
use crate::deadline::{Deadline, Phase};
use crate::hub::{Hub, HubClosed, Waker};
use crate::listener;
use crate::policy::{Grant, Reason};
use crate::session::{self, SessionError, SessionKey};
use crate::throttle::LoginThrottle;
use crate::tls;
use crate::tokens::{TokenStore, TokensError};
use crate::upgrade::{self, UpgradeError};
use crate::users::{Authenticator, UserStore, UsersError};

/// Peer addresses and user names the failed-login throttle remembers (each map); the oldest are
/// forgotten first, so a flood of distinct addresses cannot grow memory.
const THROTTLE_ENTRIES: usize = 4096;

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The certificate or key is missing, unreadable or unusable (a config problem: exit 2).
    Cert(CertError),
    /// The users file is missing or malformed (a config problem: exit 2).
    Users(UsersError),
    /// The API tokens file is malformed (a config problem: exit 2).
    Tokens(TokensError),
    /// The session key file cannot be read or created (a config problem: exit 2).
    Session(SessionError),
    /// The listen address could not be bound (a runtime problem: exit 1).
    Bind { addr: SocketAddr, error: io::Error },
    /// Some other system resource (eventfd, signal handler) was not available.
    System(io::Error),
}

impl StartError {
    /// True for errors an admin fixes in the configuration (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Cert(_)
                | StartError::Users(_)
                | StartError::Tokens(_)
                | StartError::Session(_)
        )
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Cert(e) => e.fmt(f),
            StartError::Users(e) => e.fmt(f),
            StartError::Tokens(e) => e.fmt(f),
            StartError::Session(e) => e.fmt(f),
            StartError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            StartError::System(e) => write!(f, "system resource unavailable: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// What every connection shares, read-only. Reload will swap a whole new one in.
struct Runtime {
    config: Arc<Config>,
    tls: Arc<rustls::ServerConfig>,
    creds: Arc<Credentials>,
}

/// A bound, ready server.
pub struct Server {
    runtime: Arc<Runtime>,
    hub: Arc<Hub>,
    admission: Arc<Admission>,
    listener: TcpListener,
    stop: Arc<Waker>,
}

/// Stops a running server from another thread (a signal handler thread, a test).
#[derive(Clone)]
pub struct StopHandle(Arc<Waker>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.wake();
    }
}

impl Server {
    /// Loads the certificate (generating a self-signed one if allowed) and users, and binds.
    ///
    /// # Errors
    /// [`StartError`] naming what is wrong.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let tls_cfg = &config.tls;
        if tls_cfg.self_signed
            && certs::ensure_self_signed(&tls_cfg.cert, &tls_cfg.key).map_err(StartError::Cert)?
        {
            log::warn!(
                "generated a self-signed certificate at {} (key {}, mode 0600): for trying wsgate out; \
                 clients must be told to trust it",
                tls_cfg.cert.display(),
                tls_cfg.key.display()
            );
        }
        let pair = certs::load(&tls_cfg.cert, &tls_cfg.key).map_err(StartError::Cert)?;
        let fingerprint = certs::fingerprint(&pair.chain[0]);
        let client_certs = match (&tls_cfg.client_auth, &tls_cfg.client_ca) {
            (ClientAuth::Optional, Some(ca)) => tls::ClientCerts::Optional(ca),
            (ClientAuth::Required, Some(ca)) => tls::ClientCerts::Required(ca),
            _ => tls::ClientCerts::Off,
        };
        let tls = tls::server_config(pair, &tls_cfg.cert, &tls_cfg.key, client_certs)
            .map_err(StartError::Cert)?;
        log::info!(
            "certificate {} sha256 fingerprint {fingerprint}",
            tls_cfg.cert.display()
        );

        let store = UserStore::load(&config.auth.users_file).map_err(StartError::Users)?;
        log::info!(
            "{} users loaded from {}",
            store.len(),
            config.auth.users_file.display()
        );
        let a = &config.auth;
        let users = Authenticator::new(
            store,
            a.cache_size,
            a.cache_ttl,
            a.max_concurrent_hashes.get(),
        )
        .with_queue_limit(a.max_pending_hashes);
        let tokens = TokenStore::load(&a.tokens_file).map_err(StartError::Tokens)?;
        if !tokens.is_empty() {
            log::info!(
                "{} API tokens loaded from {}",
                tokens.len(),
                a.tokens_file.display()
            );
        }
        let sessions = if a.session_ttl.is_zero() {
            None
        } else {
            let key =
                SessionKey::load_or_create(&a.session_key_file).map_err(StartError::Session)?;
            Some((key, a.session_ttl))
        };
        let throttle = LoginThrottle::new(a.max_failures, a.failure_window, THROTTLE_ENTRIES);
        let creds = Credentials::new(users, tokens, sessions, throttle);

        if config.origins.allow_any {
            log::warn!(
                "[origins] allow_any = true: any web page may open connections with its visitors' credentials"
            );
        } else if config.origins.allow.is_empty() {
            log::warn!(
                "[origins] allow is empty: every browser (any request with an Origin header) is refused"
            );
        }
        log_memory_budget(&config);

        let addr = config.server.listen;
        let listener = TcpListener::bind(addr).map_err(|error| StartError::Bind { addr, error })?;
        let admission = Admission::new(&config.server);
        let stop = Arc::new(Waker::new().map_err(StartError::System)?);
        let runtime = Arc::new(Runtime {
            config: Arc::new(config),
            tls,
            creds: Arc::new(creds),
        });
        Ok(Server {
            runtime,
            hub: Hub::new(),
            admission,
            listener,
            stop,
        })
    }

    /// The bound address (useful with port 0).
    ///
    /// # Errors
    /// The `getsockname` error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.stop))
    }

    /// Serves until stopped, then drains. Returns true if every connection finished within the
    /// grace time.
    ///
    /// # Errors
    /// Only if the listener itself fails.
    pub fn run(self) -> io::Result<bool> {
        log::info!("listening on {}", self.local_addr()?);
        let Server {
            runtime,
            hub,
            admission,
            listener,
            stop,
        } = self;
        listener::run(&listener, &stop, |stream, peer, accepted| {
            let (rt, hub2) = (Arc::clone(&runtime), Arc::clone(&hub));
            if let Err(why) = admission.dispatch(peer.ip(), move |ticket| {
                serve(&rt, &hub2, stream, peer, accepted, ticket)
            }) {
                log::debug!("refused peer={peer}: {why}");
            }
        })?;
        drop(listener);
        let grace = runtime.config.server.shutdown_grace;
        log::info!(
            "shutting down: closing {} connections (grace {grace:?})",
            hub.total_members()
        );
        hub.shutdown();
        let drained = admission.wait_drained(grace);
        if drained {
            log::info!("shutdown complete");
        } else {
            log::warn!(
                "shutdown grace expired with {} connections still open",
                admission.in_flight()
            );
        }
        Ok(drained)
    }
}

/// One connection's pipeline on its worker: TLS, upgrade, connection loop, one log line at the end.
fn serve(
    rt: &Runtime,
    hub: &Arc<Hub>,
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    _ticket: Ticket,
) {
    let config = &rt.config;
    let deadline = Deadline::new(Phase::TlsHandshake, accepted, config.tls.handshake_timeout);
    let tls = match tls::handshake(stream, Arc::clone(&rt.tls), deadline) {
        Ok(tls) => tls,
        Err(e) => {
            log::debug!(
                "tls handshake failed peer={peer} after={:?}: {e}",
                accepted.elapsed()
            );
            return;
        }
    };
    // Joins the hub and issues the session just before the 101, so a server that is shutting
    // down still answers 503 and a client only gets a session it can use.
    let enter = |grant: &Grant| {
        let limits = &grant.channel.limits;
        let member = match hub.join(&grant.path, limits.outbox.get(), limits.slow_consumer) {
            Ok(Ok(member)) => member,
            Ok(Err(HubClosed)) => return Err(Reason::ShuttingDown),
            Err(e) => {
                log::error!("cannot create wake-up fd for peer={peer}: {e}");
                return Err(Reason::ShuttingDown);
            }
        };
        let session_id = grant
            .session_id
            .clone()
            .unwrap_or_else(session::new_session_id);
        let mut headers = Vec::new();
        if let Some(user) = &grant.user {
            if let Some((token, ttl)) = rt.creds.issue_session(user, &session_id) {
                headers.push(("Set-Cookie", session_cookie(&token, ttl)));
                headers.push(("X-Wsgate-Session", token));
            }
        }
        if let Some(protocol) = grant.subprotocol {
            headers.push(("Sec-WebSocket-Protocol", protocol.to_string()));
        }
        Ok(((member, session_id), headers))
    };
    let verifier = rt.creds.for_peer(peer.ip());
    let (ws, grant, (member, session_id)) = match upgrade::upgrade(tls, config, &verifier, enter) {
        Ok(upgraded) => upgraded,
        Err(UpgradeError::Refused(reason)) => {
            log_refusal(peer, &reason);
            return;
        }
        Err(UpgradeError::Io(e)) => {
            log::debug!("upgrade failed peer={peer}: {e}");
            return;
        }
    };
    let user = grant.log_user();
    log::info!(
        "open peer={peer} user=\"{user}\" auth={} session={session_id} path={}",
        grant.method,
        grant.path
    );
    let opened = Instant::now();
    let channel = &grant.channel;
    let rights = Rights {
        mode: channel.mode,
        may_publish: grant.may_publish,
        on_forbidden: channel.on_forbidden,
        on_rate_limit: channel.limits.on_rate_limit,
    };
    let end = connection::run(ws, member, rights, &channel.limits, &config.limits);
    log::info!(
        "close peer={peer} user=\"{user}\" session={session_id} path={} duration={:.3}s {end}",
        grant.path,
        opened.elapsed().as_secs_f64()
    );
}

/// The session cookie: only sent over TLS, invisible to page scripts, never sent cross-site.
fn session_cookie(token: &str, ttl: Duration) -> String {
    format!(
        "{}={token}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        crate::policy::SESSION_COOKIE,
        ttl.as_secs()
    )
}

/// One line per refused upgrade. Credential failures are at warn, in a fixed form fail2ban can
/// match: `auth failed: user="NAME" peer=IP:PORT reason=REASON`. Never a password.
fn log_refusal(peer: SocketAddr, reason: &Reason) {
    let status = reason.status().as_u16();
    match reason {
        Reason::Throttled { .. } => {
            log::debug!("refused peer={peer} status={status} reason={reason}");
        }
        Reason::BadCredentials { user, .. } => {
            log::warn!("auth failed: user=\"{user}\" peer={peer} reason={reason} status={status}");
        }
        Reason::NoCredentials | Reason::UnknownPath | Reason::ShuttingDown => {
            log::info!("refused peer={peer} status={status} reason={reason}");
        }
        _ => log::warn!("refused peer={peer} status={status} reason={reason}"),
    }
}

/// Logs the worst-case memory the configured limits allow, so an admin can size a small host.
fn log_memory_budget(config: &Config) {
    let s = &config.server;
    let ws = config
        .channels
        .iter()
        .map(|c| &c.limits)
        .fold(config.limits.ws.clone(), |a, l| crate::config::WsLimits {
            read_buffer_size: a.read_buffer_size.max(l.read_buffer_size),
            max_write_buffer_size: a.max_write_buffer_size.max(l.max_write_buffer_size),
            max_message_size: a.max_message_size.max(l.max_message_size),
            ..a
        });
    let per_conn = s.worker_stack_size.get()
        + ws.read_buffer_size.get()
        + ws.max_write_buffer_size.get()
        + 2 * ws.max_message_size.get() // one message being assembled, one held back
        + 64 * 1024; // rustls buffers and state
    let conns = s.workers.get() + s.queue;
    let hashing = config.auth.max_concurrent_hashes.get() * 19 * 1024 * 1024;
    let total = conns * per_conn + hashing;
    log::info!(
        "memory budget: {} connections x {} KiB + {} MiB password hashing = {} MiB worst case \
         (broadcast messages are shared between outboxes)",
        conns,
        per_conn / 1024,
        hashing >> 20,
        total >> 20
    );
}
