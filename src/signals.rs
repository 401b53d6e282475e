//! Signals: a thread that turns SIGTERM and SIGINT into a drain and SIGHUP into a reload. The
//! handlers only record the signal (signal-hook); everything else happens on this ordinary thread.

use std::io;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::server::Control;

/// Drains on the first SIGTERM or SIGINT; reloads on every SIGHUP until then.
///
/// # Errors
/// If the handlers cannot be registered.
pub fn handle(control: Control) -> io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("wsgate-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    log::info!("received SIGHUP, reloading");
                    control.reload();
                    continue;
                }
                log::info!(
                    "received {}, stopping",
                    if sig == SIGTERM { "SIGTERM" } else { "SIGINT" }
                );
                control.stop();
                return;
            }
        })?;
    Ok(())
}
