//! Signals: a thread that turns SIGTERM and SIGINT into a server stop. The handler itself only
//! records the signal (signal-hook); everything else happens on this ordinary thread.

use std::io;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::server::StopHandle;

/// Stops the server on the first SIGTERM or SIGINT.
///
/// # Errors
/// If the handlers cannot be registered.
pub fn stop_on_terminate(stop: StopHandle) -> io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("wsgate-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!(
                    "received {}, stopping",
                    if sig == SIGTERM { "SIGTERM" } else { "SIGINT" }
                );
                stop.stop();
            }
        })?;
    Ok(())
}
