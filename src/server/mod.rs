//! Start-up, reload, the per-connection pipeline and shutdown. A connection flows one way: the
//! listener admits it to a handshake thread, which runs the steps before the 101 (PROXY header,
//! TLS, upgrade) under the handshake deadlines and hands the upgraded connection to a worker for
//! its loop; no thread waits for another, and the deep handshake stack stays on the few
//! handshake threads while a worker keeps only the loop's.
//! `start` prepares everything that
//! can fail on a bad config (certificate, users, tokens, session key, bind) before serving, and
//! [`check`] runs those same steps without writing or keeping anything (`check-config`); `run`
//! accepts until stopped, then drains: `/healthz` 503 and `STOPPING=1` first, still accepting for
//! `drain_delay` (a load balancer notices), hub closed (1001 to every client), wait up to the
//! grace time. A reload builds a whole new `Runtime` from the
//! config file and swaps it in only if every part loaded; connections keep the one they started with.
//!
//! Here: start-up and shutdown. [`reload`] swaps in a new runtime and watches the files it is built
//! from; [`worker`] is one connection's life on its handshake thread and its worker; [`refusals`] is the server's rate-limited log of refused upgrades; [`signals`] turns SIGTERM/SIGHUP into a drain or a reload; [`budget`]
//! resolves the memory cap at start-up and what one connection costs.

mod budget;
mod refusals;
mod reload;
pub mod signals;
mod worker;

use refusals::RefusalLog;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use rustls::server::danger::ClientCertVerifier;

use crate::admin::{self, AdminState};
use crate::auth::files;
use crate::auth::password::Authenticator;
use crate::auth::session::{SessionError, SessionKey};
use crate::auth::throttle::LoginThrottle;
use crate::auth::tokens::{TokenStore, TokensError};
use crate::auth::users::{UserStore, UsersError};
use crate::auth::{Credentials, SessionSettings};
use crate::config::{
    AdminConfig, ChannelConfig, ChannelId, ClientAuth, Config, ConfigError, Mode, Serving,
    TlsConfig,
};
use crate::hub::Hub;
use crate::hub::cluster::Bridge;
use crate::hub::waker::Waker;
use crate::ops::metrics::{Gauges, Metrics, Outcome};
use crate::ops::notify::{self, Notifier};
use crate::pipeline::admit::Admission;
use crate::pipeline::certs::{self, CertError};
use crate::pipeline::connection::{self, Audience};
use crate::pipeline::listener;
use crate::pipeline::relay::{self};
use crate::pipeline::tls;
use crate::policy::{self};
use crate::rules::origin::OriginPolicy;

/// Peer addresses, user names and trusted (name, address) pairs the failed-login throttle
/// remembers (each map); the oldest are forgotten first, so a flood of distinct addresses cannot
/// grow memory.
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
    /// A listen address could not be bound (a runtime problem: exit 1). `key` is the config key
    /// that names it.
    Bind {
        key: &'static str,
        addr: SocketAddr,
        error: io::Error,
    },
    /// Some other system resource (eventfd, signal handler) was not available.
    System(io::Error),
    /// The config file itself is invalid (on reload; at start `main` loads it first).
    Config(ConfigError),
    /// `[admin] token_file` cannot be read or holds no usable token (a config problem: exit 2).
    AdminToken {
        path: PathBuf,
        error: admin::TokenFileError,
    },
}

impl StartError {
    /// True for errors an admin fixes in the configuration (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Cert(_)
                | StartError::Config(_)
                | StartError::Users(_)
                | StartError::Tokens(_)
                | StartError::Session(_)
                | StartError::AdminToken { .. }
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
            StartError::Bind { key, addr, error } => write!(
                f,
                "{key} = {addr}: cannot listen: {error}{}",
                bind_hint(*addr, error)
            ),
            StartError::System(e) => write!(f, "system resource unavailable: {e}"),
            StartError::Config(e) => e.fmt(f),
            StartError::AdminToken { path, error } => {
                write!(f, "[admin] token_file {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for StartError {}

/// What to do about a listen address that cannot be bound.
fn bind_hint(addr: SocketAddr, error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            "; ports below 1024 need root or the CAP_NET_BIND_SERVICE capability (the packaged \
             systemd unit grants it with AmbientCapabilities=), or choose a port from 1024 up"
        }
        io::ErrorKind::AddrInUse => {
            "; another process listens there (`ss -ltnp` names it): stop it or choose another port"
        }
        io::ErrorKind::AddrNotAvailable => {
            "; no interface of this host has that address: use one it has, or 0.0.0.0 or [::] \
             for every address"
        }
        _ => "",
    }
}

/// What preparing a server may do. `Serve` writes what is missing (a self-signed pair where
/// `self_signed` allows it, the session key) and binds its listeners; `Check` (`wsgate
/// check-config`) runs the same steps but only reads, and binds each address only to release it
/// at once, so it says whether `Serve` would succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Serve,
    Check,
}

/// What [`check`] found in a config `serve` would start with: the users and tokens files as
/// loaded, and what is worth saying (`warning:` and `note:` lines, without the prefix).
pub struct Checked {
    pub users: UserStore,
    pub tokens: TokenStore,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

/// The dry run of [`Server::start`] for `wsgate check-config`, through the same functions: the
/// users, tokens and session key files loaded; every `wss://` backend's CA; the certificate and
/// key loaded and paired by rustls (a pair `self_signed` would generate is a note instead); the
/// admin token read; each listen address bound and released at once. Nothing is written.
///
/// # Errors
/// The [`StartError`] `serve` would stop with. An address in use is a warning instead (it may be
/// this very server, running).
pub fn check(config: Config) -> Result<Checked, StartError> {
    let loaded = load_credentials(&config, Run::Check, config.auth.max_file_size.get())?;
    channel_loops(&config)?;
    let mut notes = Vec::new();
    if config.server.tls {
        let tls_cfg = &config.tls;
        match self_signed_pair(tls_cfg, Run::Check)? {
            Pair::Present => {
                server_tls(tls_cfg, Run::Check)?;
            }
            Pair::ToGenerate => notes.push(format!(
                "[tls] self_signed: serve will generate a self-signed certificate at {} (key {})",
                files::shown(&tls_cfg.cert),
                files::shown(&tls_cfg.key)
            )),
        }
    }
    read_admin_token(&config)?;
    let mut warnings = Vec::new();
    let mut addresses = vec![("[server] listen", config.server.listen)];
    if let Some(admin_cfg) = &config.admin {
        addresses.push(("[admin] listen", admin_cfg.listen));
    }
    for (key, addr) in addresses {
        match bind(key, addr) {
            Ok(_released) => {}
            Err(StartError::Bind { error, .. }) if error.kind() == io::ErrorKind::AddrInUse => {
                warnings.push(format!(
                    "{key} = {addr} is in use now: by this wsgate, running, that is fine \
                     (`systemctl reload wsgate` applies a changed config); by any other program, \
                     serve will fail (`ss -ltnp` names it)"
                ));
            }
            Err(e) => return Err(e),
        }
    }
    warnings.extend(demo_credential_warning(&config, &loaded.users));
    Ok(Checked {
        users: loaded.users,
        tokens: loaded.tokens,
        warnings,
        notes,
    })
}

/// The user and password README.md publishes for trying wsgate out.
const DEMO_CREDENTIAL: (&str, &str) = ("demo", "demo-password");

/// The warning when the listener reaches beyond this host and the users file still lets anyone
/// who read README.md in: `serve` logs it at start, `check-config` prints it.
pub fn demo_credential_warning(config: &Config, users: &UserStore) -> Option<String> {
    let listen = config.server.listen;
    if listen.ip().is_loopback() || !users.accepts(DEMO_CREDENTIAL.0, DEMO_CREDENTIAL.1) {
        return None;
    }
    Some(format!(
        "[server] listen = {listen} is reachable from other machines and {} still holds the \
         README's demo user (\"{}\", password \"{}\"), which anyone can read: delete it with \
         `wsgate passwd --delete {} {}` or give it another password",
        files::shown(&config.auth.users_file),
        DEMO_CREDENTIAL.0,
        DEMO_CREDENTIAL.1,
        files::shown(&config.auth.users_file),
        DEMO_CREDENTIAL.0
    ))
}

/// Binds `addr`, the value of the config key `key`.
fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|error| StartError::Bind { key, addr, error })
}

/// The SHA-256 of `[admin] token_file`'s token, when one is configured.
fn read_admin_token(config: &Config) -> Result<Option<[u8; 32]>, StartError> {
    match config.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        Some(path) => Ok(Some(admin::token_digest(
            &admin::read_token(path).map_err(|error| StartError::AdminToken {
                path: path.clone(),
                error,
            })?,
        ))),
        None => Ok(None),
    }
}

/// What every connection shares, read-only: built whole at start and on each reload.
struct Runtime {
    config: Arc<Config>,
    /// None on a plaintext listener (`[server] tls = off`).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The client certificate verifier inside `tls`, to re-check live connections' certificates
    /// on reload.
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The certificate and key files' modification times when loaded (the file watcher compares).
    cert_stamp: Option<(SystemTime, SystemTime)>,
    /// The users and tokens files as they were just before they were read (the watcher compares).
    creds_stamp: CredsStamp,
    /// The loop that serves each of `config`'s channels, in its order (a channel's
    /// [`ChannelId`] finds its own), a proxy channel's with its backend ready to dial.
    loops: Vec<Loop<relay::Dialer>>,
}

impl Runtime {
    /// The loop that serves the channel `id` names (`id` from this runtime's config).
    fn channel_loop(&self, id: ChannelId) -> &Loop<relay::Dialer> {
        &self.loops[id.index()]
    }
}

/// Which loop serves a channel's connections after their 101: the connection loop, echoing or
/// publishing, or the relay to the channel's backend. `B` is that backend: the runtime holds a
/// [`relay::Dialer`] for each proxy channel (its `wss://` TLS settings built once, swapped whole
/// with the rest on reload); a connection whose upgrade dialed it carries the open WebSocket.
enum Loop<B> {
    Connection(Audience),
    Relay(B),
}

/// The loop of each of `config`'s channels, in its order: a proxy channel's backend ready to
/// dial, its CA (or the system roots) loaded, so a bad `backend_ca` fails the start or the reload,
/// not the first connection.
fn channel_loops(config: &Config) -> Result<Vec<Loop<relay::Dialer>>, StartError> {
    let channel_loop = |channel: &ChannelConfig| match &channel.serving {
        Serving::Echo => Ok(Loop::Connection(Audience::Echo)),
        Serving::Broadcast => Ok(Loop::Connection(Audience::Broadcast)),
        Serving::Proxy(backend) => relay::Dialer::new(backend)
            .map(Loop::Relay)
            .map_err(StartError::Cert),
    };
    config.channels.iter().map(channel_loop).collect()
}

/// Everything the listener, the workers and the control thread share.
struct Shared {
    runtime: RwLock<Arc<Runtime>>,
    creds: Arc<Credentials>,
    hub: Arc<Hub>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
    admin: Option<Arc<AdminState>>,
    stop: Waker,
    /// Serialises reloads (SIGHUP and the certificate watcher may race).
    reloading: Mutex<()>,
    /// This server's rate-limited log of refused upgrades.
    refusals: RefusalLog,
    /// The configuration the process started with: what a key that needs a restart still
    /// runs with, whatever reloads read since.
    started: Arc<Config>,
    /// The command line set the log level: a reload leaves it as it is.
    log_level_pinned: AtomicBool,
    /// `[auth] max_file_size` as read at start: the memory budget was sized for it, so every
    /// reload loads the users and tokens files under it.
    max_file_size: usize,
}

/// A bound, ready server.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    /// SHA-256 of `[admin] token_file`'s token, read at start.
    admin_token: Option<[u8; 32]>,
}

/// Controls a running server from another thread (the signal thread, a test): stop or reload.
#[derive(Clone)]
pub struct Control(Arc<Shared>);

impl Control {
    /// Starts the drain: `/healthz` answers 503 and systemd hears `STOPPING=1` at once, then
    /// the listener stops accepting (after `[server] drain_delay`).
    pub fn stop(&self) {
        let shared = &self.0;
        if let Some(admin) = &shared.admin {
            admin.set_draining(true);
        }
        notify_or_log(&shared.notifier, Notifier::stopping);
        shared.stop.wake();
    }

    /// Re-reads the config file and everything it names; applies it whole or not at all.
    pub fn reload(&self) {
        self.0.reload("reload requested");
    }
}

impl Server {
    /// Loads the certificate (generating a self-signed one if allowed), users, tokens and the
    /// session key, and binds the listeners.
    ///
    /// # Errors
    /// [`StartError`] naming what is wrong.
    pub fn start(config: Config) -> Result<Server, StartError> {
        log::info!(
            "wsgate {} starting with {}",
            env!("CARGO_PKG_VERSION"),
            files::shown(&config.source)
        );
        let metrics = Arc::new(Metrics::new(
            config.channels.iter().map(|c| c.pattern.to_string()),
        ));
        let a = &config.auth;
        let creds_stamp = creds_stamp(&config);
        let loaded = load_credentials(&config, Run::Serve, a.max_file_size.get())?;
        if let Some(warning) = demo_credential_warning(&config, &loaded.users) {
            log::warn!("{warning}");
        }
        let (plan, budget) = budget::start(&config, loaded.users.hashing_memory_kib());
        let users = Authenticator::new(loaded.users, a.cache_size, a.cache_ttl, plan.hashes.get())
            .with_queue_limit(a.max_pending_hashes);
        let throttle = LoginThrottle::new(a.max_failures, a.failure_window, THROTTLE_ENTRIES)
            .with_trusted_ttl(a.trusted_address_ttl);
        let creds = Arc::new(Credentials::new(
            users,
            loaded.tokens,
            loaded.sessions,
            throttle,
            Arc::clone(&metrics),
        ));
        let runtime = build_runtime(config, creds_stamp)?;
        let config = Arc::clone(&runtime.config);
        warn_about_origins(&config);
        warn_about_plaintext(&config);

        // The admin token before any socket: a bad one is a config error (exit 2).
        let admin_token = read_admin_token(&config)?;
        let listener = bind("[server] listen", config.server.listen)?;
        let admission = Admission::new(&config.server, plan.workers, plan.max_pre_auth);
        let (admin, admin_listener) = match &config.admin {
            Some(admin_cfg) => {
                let l = bind("[admin] listen", admin_cfg.listen)?;
                let (adm, workers) = (Arc::clone(&admission), plan.workers.get() as u64);
                let mem = Arc::clone(&budget);
                let state = AdminState::new(Arc::clone(&metrics), move || {
                    let busy = (adm.serving() as u64).min(workers);
                    Gauges {
                        pool_busy: busy,
                        pool_idle: workers - busy,
                        pool_queued: adm.waiting_for_worker() as u64,
                        memory_used: mem.counted() as u64,
                        memory_limit: mem.cap().unwrap_or(0) as u64,
                    }
                })
                .map_err(StartError::System)?;
                (Some(Arc::new(state)), Some(l))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            runtime: RwLock::new(Arc::new(runtime)),
            creds,
            hub: Hub::with_budget(Arc::clone(&metrics), budget),
            admission,
            metrics,
            notifier: Notifier::from_env(),
            admin,
            stop: Waker::new().map_err(StartError::System)?,
            reloading: Mutex::new(()),
            refusals: RefusalLog::new(),
            started: Arc::clone(&config),
            log_level_pinned: AtomicBool::new(false),
            max_file_size: config.auth.max_file_size.get(),
        });
        Ok(Server {
            shared,
            listener,
            admin_listener,
            admin_token,
        })
    }

    /// The bound address (useful with port 0).
    ///
    /// # Errors
    /// The `getsockname` error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Keeps the log level as it is now through reloads (the command line set it).
    pub fn pin_log_level(&self) {
        self.shared.log_level_pinned.store(true, Ordering::Relaxed);
    }

    pub fn control(&self) -> Control {
        Control(Arc::clone(&self.shared))
    }

    /// Serves until stopped, then drains. Returns true if every connection finished within the
    /// grace time.
    ///
    /// # Errors
    /// Only if the listener itself fails.
    pub fn run(self) -> io::Result<bool> {
        let Server {
            shared,
            listener,
            admin_listener,
            admin_token,
        } = self;
        let bridge = start_services(&shared, &listener, admin_listener, admin_token)?;
        let accept = |stream, peer: SocketAddr, accepted| {
            let worker = Arc::clone(&shared);
            // Behind a load balancer the socket's peer is the balancer: the per-IP share is
            // claimed on the handshake thread, once the PROXY header has named the client.
            let proxied = shared.current().config.server.proxy_protocol;
            let job = move |ticket| {
                let rt = worker.current();
                worker::serve(&worker, &rt, stream, peer, accepted, ticket, proxied);
            };
            let dispatched = if proxied {
                shared.admission.dispatch_unclaimed(job)
            } else {
                shared.admission.dispatch(peer.ip(), job)
            };
            if let Err(why) = dispatched {
                shared.metrics.outcome(Outcome::Busy);
                log::debug!("refused peer={peer}: {why}");
            }
        };
        listener::run(&listener, &shared.stop, accept)?;
        // Stopped: /healthz already answers 503. Keep accepting for the drain delay, so a load
        // balancer's health check takes this instance out before its port closes.
        let delay = shared.current().config.server.drain_delay;
        if !delay.is_zero() {
            log::info!(
                "draining: /healthz answers 503; still accepting for {delay:?} (drain_delay)"
            );
            listener::run_until(&listener, Instant::now() + delay, accept)?;
        }
        drop(listener);
        Ok(shut_down(&shared, bridge))
    }
}

impl Shared {
    fn current(&self) -> Arc<Runtime> {
        Arc::clone(&self.runtime.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// For the systemd watchdog: the listener and the pool still answer (the admission lock is
    /// free and the hub is open), and no connection loop is stuck inside one step for
    /// [`connection::WEDGED_STEP`] or longer. Never blocks for long.
    fn is_alive(&self) -> bool {
        let _ = self.admission.in_flight();
        if let Some(step) = self.hub.longest_step() {
            if step >= connection::WEDGED_STEP {
                log::error!("watchdog: a connection has been inside one loop step for {step:?}");
                return false;
            }
        }
        !self.hub.is_closed()
    }
}

/// Users, tokens and session settings, loaded from the files a config names.
struct LoadedCredentials {
    users: UserStore,
    tokens: TokenStore,
    sessions: Option<SessionSettings>,
}

/// The users and tokens files are read once settled (`[auth] file_settle_time`,
/// [`files::load_settled`]) — at start and by `check-config` as on a reload, so a file an editor
/// or a provisioning script is still writing is read whole, not cut. Under `Run::Check` a missing
/// session key file stays missing (`serve` creates it). The users and tokens files are each at
/// most `max_file_size` bytes (the running value on a reload: the memory budget was sized for it
/// at start).
fn load_credentials(
    config: &Config,
    run: Run,
    max_file_size: usize,
) -> Result<LoadedCredentials, StartError> {
    let a = &config.auth;
    let (max, settle) = (max_file_size, a.file_settle_time);
    let users = crate::auth::files::load_settled(&a.users_file, settle, |p| {
        UserStore::load_bounded(p, max)
    })
    .map_err(StartError::Users)?;
    if run == Run::Serve {
        log::info!(
            "{} loaded from {}",
            files::count(users.len(), "user", "users"),
            files::shown(&a.users_file)
        );
    }
    let tokens = crate::auth::files::load_settled(&a.tokens_file, settle, |p| {
        TokenStore::load_bounded(p, max)
    })
    .map_err(StartError::Tokens)?;
    if !tokens.is_empty() && run == Run::Serve {
        log::info!(
            "{} loaded from {}",
            files::count(tokens.len(), "API token", "API tokens"),
            files::shown(&a.tokens_file)
        );
    }
    let sessions = if a.session_ttl.is_zero() {
        None
    } else {
        let key = match run {
            Run::Serve => SessionKey::load_or_create(&a.session_key_file).map(Some),
            Run::Check => SessionKey::load_existing(&a.session_key_file),
        };
        key.map_err(StartError::Session)?
            .map(|key| SessionSettings {
                key,
                ttl: a.session_ttl,
                max_age: a.session_max_age,
            })
    };
    Ok(LoadedCredentials {
        users,
        tokens,
        sessions,
    })
}

/// The TLS configuration for `config`, generating a self-signed pair first where allowed; none
/// (no certificate needed, none generated) on a plaintext listener.
fn build_runtime(config: Config, creds_stamp: CredsStamp) -> Result<Runtime, StartError> {
    let loops = channel_loops(&config)?;
    if !config.server.tls {
        return Ok(Runtime {
            config: Arc::new(config),
            tls: None,
            client_verifier: None,
            cert_stamp: None,
            creds_stamp,
            loops,
        });
    }
    self_signed_pair(&config.tls, Run::Serve)?;
    let server_tls = server_tls(&config.tls, Run::Serve)?;
    Ok(Runtime {
        config: Arc::new(config),
        tls: Some(server_tls.config),
        client_verifier: Some(server_tls.client_verifier),
        cert_stamp: server_tls.cert_stamp,
        creds_stamp,
        loops,
    })
}

/// The TLS side of a runtime.
struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    /// The certificate and key files' modification times when loaded.
    cert_stamp: Option<(SystemTime, SystemTime)>,
}

/// Whether the certificate and key are there to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pair {
    /// Both files exist (or were just generated).
    Present,
    /// Both are missing and `self_signed` allows generating them: `Run::Check` found what
    /// `Run::Serve` would generate.
    ToGenerate,
}

/// `[tls] self_signed`: where both files are missing, `Run::Serve` generates the pair and
/// `Run::Check` says it would. One file without the other is an error either way.
fn self_signed_pair(tls_cfg: &TlsConfig, run: Run) -> Result<Pair, StartError> {
    if !tls_cfg.self_signed {
        return Ok(Pair::Present);
    }
    if run == Run::Check {
        return match certs::needs_self_signed(&tls_cfg.cert, &tls_cfg.key) {
            Ok(true) => Ok(Pair::ToGenerate),
            Ok(false) => Ok(Pair::Present),
            Err(e) => Err(StartError::Cert(e)),
        };
    }
    if certs::ensure_self_signed(&tls_cfg.cert, &tls_cfg.key).map_err(StartError::Cert)? {
        log::warn!(
            "generated a self-signed certificate at {} (key {}, mode 0600): for trying wsgate \
             out; clients must be told to trust it",
            files::shown(&tls_cfg.cert),
            files::shown(&tls_cfg.key)
        );
    }
    Ok(Pair::Present)
}

/// Loads the certificate and key and has rustls pair them, with the client CA when client
/// certificates are on: what serving TLS needs, and what `check-config` tries.
fn server_tls(tls_cfg: &TlsConfig, run: Run) -> Result<ServerTls, StartError> {
    let cert_stamp = stamp(&tls_cfg.cert, &tls_cfg.key);
    let pair = certs::load(&tls_cfg.cert, &tls_cfg.key).map_err(StartError::Cert)?;
    let fingerprint = certs::fingerprint(&pair.chain[0]);
    let client_certs = match (&tls_cfg.client_auth, &tls_cfg.client_ca) {
        (ClientAuth::Optional, Some(ca)) => tls::ClientCerts::Optional(ca),
        (ClientAuth::Required, Some(ca)) => tls::ClientCerts::Required(ca),
        _ => tls::ClientCerts::Off,
    };
    let (config, client_verifier) =
        tls::server_config(pair, &tls_cfg.cert, &tls_cfg.key, client_certs)
            .map_err(StartError::Cert)?;
    if run == Run::Serve {
        log::info!(
            "certificate {} sha256 fingerprint {fingerprint}",
            files::shown(&tls_cfg.cert)
        );
    }
    Ok(ServerTls {
        config,
        client_verifier,
        cert_stamp,
    })
}

/// The start-up line that says where clients connect: the URL of each channel (a prefix channel
/// with `…` for the rest) and of the demo page. A loopback listener is named `localhost` (what
/// the self-signed certificate is for), a wildcard one by this host's name.
fn where_to_connect(config: &Config, addr: SocketAddr) -> String {
    let ip = addr.ip();
    let host = if ip.is_loopback() {
        "localhost".to_string()
    } else if ip.is_unspecified() {
        certs::host_name().unwrap_or_else(|| "HOST".into())
    } else if let std::net::IpAddr::V6(v6) = ip {
        format!("[{v6}]")
    } else {
        ip.to_string()
    };
    let (ws, http) = if config.server.tls {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let base = format!("{host}:{}", addr.port());
    let channels: Vec<String> = config
        .channels
        .iter()
        .map(|c| format!("{ws}://{base}{}", c.pattern.to_string().replace('*', "…")))
        .collect();
    let mut line = format!("clients connect to {}", channels.join(", "));
    if config.demo.enabled {
        line.push_str(&format!("; demo page at {http}://{base}/"));
    }
    line
}

/// The modification times of the certificate and key files.
fn stamp(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((mtime(cert)?, mtime(key)?))
}

/// The users and tokens files' [`files::stamp`]s (`None` while one is missing).
type CredsStamp = (Option<files::Stamp>, Option<files::Stamp>);

fn creds_stamp(config: &Config) -> CredsStamp {
    (
        files::stamp(&config.auth.users_file),
        files::stamp(&config.auth.tokens_file),
    )
}

/// The services beside the listener: the admin endpoint (bound at start: what the process
/// started with, whatever a reload read since), the readiness notice, the watchdog, the file
/// watcher and the cluster bridge (returned, for the shutdown to stop).
fn start_services(
    shared: &Arc<Shared>,
    listener: &TcpListener,
    admin_listener: Option<TcpListener>,
    admin_token: Option<[u8; 32]>,
) -> io::Result<Option<Bridge>> {
    let admin_config = shared.started.admin.clone();
    if let (Some(state), Some(l), Some(cfg)) = (&shared.admin, admin_listener, admin_config) {
        attach_admin_api(shared, state, admin_token, &cfg);
        log::info!(
            "admin endpoint (/healthz, /metrics; API /publish, /connections, /disconnect {}) \
             on http://{}",
            if admin_token.is_some() {
                "with the bearer token"
            } else {
                "without a token"
            },
            l.local_addr()?
        );
        admin::spawn(l, Arc::clone(state), cfg.max_connections)?;
    }
    let addr = listener.local_addr()?;
    log::info!("listening on {addr}");
    log::info!("{}", where_to_connect(&shared.current().config, addr));
    notify_or_log(&shared.notifier, Notifier::ready);
    notify_or_log(&shared.notifier, |n| {
        n.status(&format!("serving on {addr}"))
    });
    if let Some(interval) = notify::watchdog_interval() {
        let alive = Arc::clone(shared);
        notify::spawn_watchdog(shared.notifier.clone(), interval, move || alive.is_alive())?;
    }
    reload::spawn_file_watcher(shared)?;
    start_bridge(shared)
}

/// Closes every connection, stops the bridge, waits up to `shutdown_grace` for the
/// connections to finish and stops the admin endpoint. True if every connection finished in time.
fn shut_down(shared: &Shared, bridge: Option<Bridge>) -> bool {
    let grace = shared.current().config.server.shutdown_grace;
    log::info!(
        "shutting down: closing {} connections (grace {grace:?})",
        shared.hub.total_members()
    );
    shared.hub.shutdown();
    if let Some(bridge) = bridge {
        bridge.stop();
    }
    let drained = shared.admission.wait_drained(grace);
    if drained {
        log::info!("shutdown complete");
    } else {
        log::warn!(
            "shutdown grace expired with {} connections still open",
            shared.admission.in_flight()
        );
    }
    if let Some(admin) = &shared.admin {
        admin.stop();
    }
    drained
}

/// Turns on the admin API over the hub and the current channels. The token was read (and
/// checked) at start; a reload does not read it again, nor the names and origins `config` allows.
fn attach_admin_api(
    shared: &Arc<Shared>,
    state: &AdminState,
    token: Option<[u8; 32]>,
    config: &AdminConfig,
) {
    let weak = Arc::downgrade(shared);
    let broadcast_limit = move |path: &str| {
        // Only a path an upgrade could be served on: one the request target parses to whole,
        // with no query, fragment or spelling another reader may resolve differently.
        let whole = policy::Target::parse(path).is_ok_and(|t| t.query.is_none());
        if !whole {
            return None;
        }
        let shared = weak.upgrade()?;
        let rt = shared.current();
        policy::route(path, &rt.config)
            .ok()
            .filter(|c| c.mode() == Mode::Broadcast)
            .map(|c| admin::BroadcastChannel {
                max_message: c.limits.max_message_size.get(),
                history: c.history,
            })
    };
    let browser = admin::BrowserGuard::new(
        config.listen,
        config.allow_hosts.clone(),
        config.allow_origins.clone(),
    );
    state.attach_api(admin::Api {
        hub: Arc::clone(&shared.hub),
        broadcast_limit: Box::new(broadcast_limit),
        token,
        browser,
    });
}

/// Starts the Redis bridge when `[cluster] redis_url` is set. Messages from other instances are
/// delivered only on paths a broadcast channel of the current configuration serves.
fn start_bridge(shared: &Arc<Shared>) -> io::Result<Option<Bridge>> {
    let weak = Arc::downgrade(shared);
    let accepts = move |path: &str| {
        weak.upgrade().is_some_and(|s| {
            s.current()
                .config
                .channel_for(path)
                .is_some_and(|c| c.mode() == Mode::Broadcast)
        })
    };
    // Bound at start: what the process started with, whatever a reload read since.
    let config = &shared.started.cluster;
    Bridge::start(config, &shared.hub, &shared.metrics, Arc::new(accepts))
}

/// Warns about a risky or empty `[origins]` section once per distinct section: a reload that
/// leaves it as it was says nothing again (50 reloads made 50 identical lines).
fn warn_about_origins(config: &Config) {
    static WARNED_FOR: Mutex<Option<OriginPolicy>> = Mutex::new(None);
    let mut warned_for = WARNED_FOR.lock().unwrap_or_else(PoisonError::into_inner);
    let seen = warned_for.as_ref() == Some(&config.origins);
    *warned_for = Some(config.origins.clone());
    drop(warned_for);
    if !seen && !config.origins.allow_any && !config.origins.allow_missing {
        log::info!(
            "[origins] allow_missing = false: clients that send no Origin header (websocat, curl, \
             scripts, devices; browsers always send one) are refused with 403; set \
             allow_missing = true to let them in"
        );
    }
    if seen {
        // Said already for this very section.
    } else if config.origins.allow_any {
        log::warn!(
            "[origins] allow_any = true: any web page may open connections with its visitors' credentials"
        );
    } else if config.origins.allow.is_empty() && !config.origins.allow_same_origin {
        log::warn!(
            "[origins] allow is empty: every browser (any request with an Origin header) is refused"
        );
    }
    if config.demo.enabled {
        log::info!(
            "demo page at GET / (channel {}){}",
            config.demo.channel,
            if config.origins.allow_same_origin {
                ""
            } else {
                "; its own origin must be in [origins] allow, or set allow_same_origin = true"
            }
        );
    }
}

/// One warning at start when the listener speaks plain `ws://`.
fn warn_about_plaintext(config: &Config) {
    if !config.server.tls {
        log::warn!(
            "[server] tls = off: serving plain ws:// on {} without TLS; passwords, tokens and \
             messages are readable by anyone on the path; run it only behind a TLS-terminating \
             proxy on the same host or a trusted network",
            config.server.listen
        );
    }
}

/// Sends one sd_notify message; a failure is logged (it never stops the server).
fn notify_or_log(notifier: &Notifier, send: impl FnOnce(&Notifier) -> io::Result<()>) {
    if let Err(e) = send(notifier) {
        log::warn!("sd_notify failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bind_error_names_the_key_and_what_to_change() {
        let said = |addr: &str, kind: io::ErrorKind| {
            StartError::Bind {
                key: "[server] listen",
                addr: addr.parse().unwrap(),
                error: io::Error::from(kind),
            }
            .to_string()
        };
        let denied = said("[::]:443", io::ErrorKind::PermissionDenied);
        assert!(
            denied.starts_with("[server] listen = [::]:443: cannot listen: ")
                && denied.contains("CAP_NET_BIND_SERVICE")
                && denied.contains("choose a port from 1024 up"),
            "{denied}"
        );
        // Above 1024, a permission error is not the port's: no capability advice.
        assert!(!said("[::]:8443", io::ErrorKind::PermissionDenied).contains("CAP_NET"));
        assert!(said("127.0.0.1:8443", io::ErrorKind::AddrInUse).contains("`ss -ltnp`"));
        assert!(
            said("192.0.2.1:8443", io::ErrorKind::AddrNotAvailable)
                .contains("no interface of this host has that address")
        );
    }
}
