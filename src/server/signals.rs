//! Signals: a thread that turns SIGTERM and SIGINT into a drain and SIGHUP into a reload. The
//! handlers only record the signal (signal-hook); everything else happens on this ordinary thread.

use std::io;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::Control;

/// Drains on the first SIGTERM or SIGINT; reloads on every SIGHUP until then.
///
/// # Errors
/// If the handlers cannot be registered.
pub fn handle(control: Control) -> io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("wsgate-signals".into())
        .spawn(move || {
            // The thread (and so the handlers) stays for the process's life: a second SIGTERM
            // or a late SIGHUP during the drain must not fall back to the default action.
            let mut stopping = false;
            for sig in signals.forever() {
                let name = match sig {
                    SIGHUP => "SIGHUP",
                    SIGTERM => "SIGTERM",
                    _ => "SIGINT",
                };
                if stopping {
                    log::info!("received {name} while stopping; the drain continues");
                } else if sig == SIGHUP {
                    log::info!("received SIGHUP, reloading");
                    control.reload();
                } else {
                    log::info!("received {name}, stopping");
                    stopping = true;
                    control.stop();
                }
            }
        })?;
    Ok(())
}
