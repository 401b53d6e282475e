//! Reload: a new `Runtime` built whole from the config file and swapped in only if every part
//! loaded, the connections whose access the new one no longer grants closed, the changed keys
//! named as the key tables' reload column answers for each (applied, needs a restart, or the
//! reload refused); and the watcher that reloads by itself when a certificate, key, users or
//! tokens file changes.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use crate::auth::CurrentCredentials;
use crate::auth::files;
use crate::config::{Change, Config, ConfigError, Reload};
use crate::hub::Holder;
use crate::ops::notify::Notifier;
use crate::policy::{self};

use super::{
    Run, Runtime, Shared, StartError, build_runtime, creds_stamp, load_credentials, notify_or_log,
    stamp, warn_about_origins,
};

impl Shared {
    /// Builds a new runtime from the config file and swaps it in, or keeps the running one and
    /// says why. A changed key is applied, or named as needing a restart, or fails the reload,
    /// as its row in the key tables says ([`Reload`]).
    pub(super) fn reload(&self, why: &str) {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        notify_or_log(&self.notifier, Notifier::reloading);
        let old = self.current();
        let result = Config::load(&old.config.source)
            .and_then(|config| refuse_unreloadable(&self.started, config))
            .map_err(StartError::Config)
            .and_then(|config| {
                let creds_stamp = creds_stamp(&config);
                let loaded = load_credentials(&config, Run::Serve, self.max_file_size)?;
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
                self.report_changes(&old.config, &runtime.config);
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
                if !self.log_level_pinned.load(Ordering::Relaxed) {
                    log::set_max_level(runtime.config.log_level);
                }
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

/// Fails the reload on the first key it changes whose row says a reload cannot take it
/// ([`Reload::Refused`]: `[server] tls`), compared with the file the process started with.
fn refuse_unreloadable(started: &Config, new: Config) -> Result<Config, ConfigError> {
    match new
        .changes_since(started)
        .iter()
        .find_map(|change| change.refusal(&new.source))
    {
        Some(refused) => Err(refused),
        None => Ok(new),
    }
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

impl Shared {
    /// Names the keys this reload applies (changed since the running configuration) and those
    /// that need a restart (changed since the configuration the process started with, so every
    /// reload says it again until the restart).
    fn report_changes(&self, old: &Config, new: &Config) {
        let names = |changes: &[Change], pick: &dyn Fn(&Change) -> bool| {
            let picked: Vec<String> = changes
                .iter()
                .filter(|c| pick(c))
                .map(ToString::to_string)
                .collect();
            picked.join(", ")
        };
        let pinned = self.log_level_pinned.load(Ordering::Relaxed);
        let is_log_level = |c: &Change| c.section == "log" && c.key == "level";
        let since_running = new.changes_since(old);
        let applied = names(&since_running, &|c| {
            c.reload == Reload::Applies && !(pinned && is_log_level(c))
        });
        if !applied.is_empty() {
            log::info!("reload: applied {applied}");
        }
        if pinned && since_running.iter().any(is_log_level) {
            log::info!(
                "reload: [log] level changed; the --log-level given on the command line stays in \
                 force"
            );
        }
        let restart = names(&new.changes_since(&self.started), &|c| {
            c.reload == Reload::Restart
        });
        if !restart.is_empty() {
            log::warn!("reload: {restart} changed; these take effect only after a restart");
        }
    }
}
