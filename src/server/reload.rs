//! Reload: a new `Runtime` built whole from the config file and swapped in only if every part
//! loaded, the connections whose access the new one no longer grants closed, the settings that
//! need a restart named; and the watcher that reloads by itself when a certificate, key, users or
//! tokens file changes.

use std::io;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use crate::auth::CurrentCredentials;
use crate::auth::files;
use crate::config::{Config, ConfigError};
use crate::hub::Holder;
use crate::ops::notify::Notifier;
use crate::policy::{self};

use super::{
    Run, Runtime, Shared, StartError, build_runtime, creds_stamp, load_credentials, notify_or_log,
    stamp, warn_about_origins,
};

impl Shared {
    /// Builds a new runtime from the config file and swaps it in, or keeps the running one and
    /// says why. Settings that need a restart (listen address, pool sizes, admin address,
    /// password cache and hashing limits) are reported, and the rest applies.
    pub(super) fn reload(&self, why: &str) {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        notify_or_log(&self.notifier, Notifier::reloading);
        let old = self.current();
        let result = Config::load(&old.config.source)
            .and_then(|config| same_transport(&old.config, config))
            .map_err(StartError::Config)
            .and_then(|config| {
                let creds_stamp = creds_stamp(&config);
                let loaded = load_credentials(
                    &config,
                    config.auth.file_settle_time,
                    Run::Serve,
                    self.max_file_size,
                )?;
                loaded
                    .users
                    .may_replace(self.creds.users.user_count(), &config.auth.users_file)
                    .and_then(|()| {
                        (self.creds.users).check_fits(&loaded.users, &config.auth.users_file)
                    })
                    .map_err(StartError::Users)?;
                Ok((build_runtime(config, creds_stamp)?, loaded))
            });
        match result {
            Ok((runtime, loaded)) => {
                warn_restart_needed(&old.config, &runtime.config);
                warn_about_origins(&runtime.config);
                self.creds
                    .reload(loaded.users, loaded.tokens, loaded.sessions);
                // Swapped before the live connections are asked: an upgrade that joins the hub
                // after this scan then sees a runtime other than the one it was decided with,
                // and asks the same question itself (`Shared::still_holds`).
                let runtime = Arc::new(runtime);
                *self.runtime.write().unwrap_or_else(PoisonError::into_inner) =
                    Arc::clone(&runtime);
                self.revoke_lost_access(&runtime);
                log::info!(
                    "{why}: reloaded {} in {:?}",
                    files::shown(&old.config.source),
                    started.elapsed()
                );
                notify_or_log(&self.notifier, |n| {
                    n.status("serving (configuration reloaded)")
                });
            }
            Err(e) => {
                log::error!("{why}: reload failed, keeping the running configuration: {e}");
                notify_or_log(&self.notifier, |n| n.status(&format!("reload failed: {e}")));
            }
        }
        notify_or_log(&self.notifier, Notifier::ready);
    }
}

impl Shared {
    /// After a reload: asks [`policy::recheck`] about every live connection and closes those it
    /// refuses with 1008 — `credential revoked` when what proved the user no longer does
    /// (deleted user, new password, revoked token, changed session fingerprint, client
    /// certificate the client CA no longer trusts), `access revoked` when the path or the roles
    /// no longer allow it. Everyone else keeps running untouched.
    fn revoke_lost_access(&self, runtime: &Runtime) {
        let (mut credential, mut access) = (0, 0);
        self.hub.for_each_member(|path, member| {
            if let Err(why) = self.still_holds(runtime, &member.holder, path) {
                match why {
                    policy::Revocation::Credential => credential += 1,
                    policy::Revocation::Access | policy::Revocation::Admin => access += 1,
                }
                member.revoke(why);
            }
        });
        if credential + access > 0 {
            log::info!(
                "reload: closing {} connections whose access was taken away ({credential} \
                 credential revoked, {access} access revoked)",
                credential + access
            );
        }
    }

    /// Whether `holder`'s connection on `path` would still be let in under `runtime` and the
    /// credentials loaded now ([`policy::recheck`]).
    pub(super) fn still_holds(
        &self,
        runtime: &Runtime,
        holder: &Holder,
        path: &str,
    ) -> Result<(), policy::Revocation> {
        let verifier = runtime.client_verifier.as_deref();
        let state = CurrentCredentials {
            creds: &self.creds,
            client_cert_trusted: |chain: &[CertificateDer<'static>]| {
                client_cert_trusted(verifier, chain)
            },
        };
        policy::recheck(holder, path, &runtime.config, &state)
    }
}

/// Whether `verifier` (the reloaded client CA) still accepts a live connection's client
/// certificate chain, as of now (so an expired certificate fails too).
fn client_cert_trusted(
    verifier: Option<&dyn ClientCertVerifier>,
    chain: &[CertificateDer<'static>],
) -> bool {
    let (Some(verifier), Some((end_entity, intermediates))) = (verifier, chain.split_first())
    else {
        return false;
    };
    verifier.offer_client_auth()
        && verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .is_ok()
}

/// A reload may not switch between TLS and plaintext: clients, the proxy in front and the
/// firewall were set up for one of them. Changing `[server] tls` needs a restart.
fn same_transport(old: &Config, new: Config) -> Result<Config, ConfigError> {
    if old.server.tls == new.server.tls {
        return Ok(new);
    }
    let on_off = |tls: bool| if tls { "on" } else { "off" };
    Err(ConfigError::Invalid {
        path: new.source.clone(),
        line: None,
        section: "server".into(),
        key: Some("tls".into()),
        message: format!(
            "changed from {} to {}; a reload cannot switch between TLS and plaintext, restart \
             wsgate to apply it",
            on_off(old.server.tls),
            on_off(new.server.tls)
        ),
    })
}

/// Reloads by itself when the certificate or key file changes (a renewal whose deploy hook
/// forgot to reload) or the users or tokens file does (`wsgate passwd`, `wsgate token`), checking
/// every `reload_check_interval`. A change is acted on once: a file that fails to load is
/// reported once, not every interval, until it changes again.
pub(super) fn spawn_file_watcher(shared: &Arc<Shared>) -> io::Result<()> {
    let weak = Arc::downgrade(shared);
    std::thread::Builder::new()
        .name("wsgate-filewatch".into())
        .spawn(move || {
            // The files as last tried, so a broken pair is reported once, not every interval.
            let mut tried = None;
            let mut tried_creds = None;
            loop {
                let interval = match weak.upgrade() {
                    Some(shared) => shared.current().config.tls.reload_check_interval,
                    None => return,
                };
                std::thread::sleep(if interval.is_zero() {
                    Duration::from_secs(60)
                } else {
                    interval
                });
                let Some(shared) = weak.upgrade() else { return };
                let rt = shared.current();
                let tls = &rt.config.tls;
                if tls.reload_check_interval.is_zero() || shared.hub.is_closed() {
                    continue;
                }
                let creds = creds_stamp(&rt.config);
                if creds != rt.creds_stamp && Some(creds) != tried_creds {
                    tried_creds = Some(creds);
                    shared.reload("users or tokens file changed");
                    continue;
                }
                if !rt.config.server.tls {
                    continue;
                }
                let now = stamp(&tls.cert, &tls.key);
                if now.is_some() && now != rt.cert_stamp && now != tried {
                    tried = now;
                    shared.reload("certificate or key file changed");
                }
            }
        })?;
    Ok(())
}

/// Names the changed settings a reload cannot apply to a running process.
fn warn_restart_needed(old: &Config, new: &Config) {
    let (o, n) = (&old.server, &new.server);
    let mut changed = Vec::new();
    if o.listen != n.listen {
        changed.push("[server] listen");
    }
    if o.workers != n.workers
        || o.queue != n.queue
        || o.worker_stack_size != n.worker_stack_size
        || o.max_pre_auth != n.max_pre_auth
    {
        changed.push("[server] workers/queue/worker_stack_size/max_pre_auth");
    }
    if o.max_connections_per_ip != n.max_connections_per_ip {
        changed.push("[server] max_connections_per_ip");
    }
    if o.memory_limit != n.memory_limit {
        changed.push("[server] memory_limit");
    }
    if old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
        changed.push("[admin] listen");
    }
    let admin_max = |c: &Config| c.admin.as_ref().map(|a| a.max_connections);
    if admin_max(old) != admin_max(new) {
        changed.push("[admin] max_connections");
    }
    let admin_token = |c: &Config| c.admin.as_ref().and_then(|a| a.token_file.clone());
    if admin_token(old) != admin_token(new) {
        changed.push("[admin] token_file");
    }
    let admin_hosts = |c: &Config| c.admin.as_ref().map(|a| a.allow_hosts.clone());
    if admin_hosts(old) != admin_hosts(new) {
        changed.push("[admin] allow_hosts");
    }
    let admin_origins = |c: &Config| c.admin.as_ref().map(|a| a.allow_origins.clone());
    if admin_origins(old) != admin_origins(new) {
        changed.push("[admin] allow_origins");
    }
    if old.cluster != new.cluster {
        changed.push("[cluster]");
    }
    let (oa, na) = (&old.auth, &new.auth);
    if oa.cache_size != na.cache_size
        || oa.cache_ttl != na.cache_ttl
        || oa.max_concurrent_hashes != na.max_concurrent_hashes
        || oa.max_pending_hashes != na.max_pending_hashes
        || oa.max_failures != na.max_failures
        || oa.failure_window != na.failure_window
        || oa.trusted_address_ttl != na.trusted_address_ttl
        || oa.max_file_size != na.max_file_size
    {
        changed.push("[auth] cache/hashing/throttle limits/max_file_size");
    }
    if !changed.is_empty() {
        log::warn!(
            "reload: {} changed; these take effect only after a restart",
            changed.join(", ")
        );
    }
}
