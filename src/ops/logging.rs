//! The process's logger: simple_logger's stderr lines, filtered by the level `log::max_level()`
//! holds at the moment, so a reload applies a changed `[log] level` with `log::set_max_level`
//! alone and nothing else in the crate knows how logging was set up.

use log::{Level, LevelFilter, Log, Metadata, Record, SetLoggerError};
use simple_logger::SimpleLogger;

/// Installs the logger at `level`.
///
/// # Errors
/// A logger was installed already.
pub fn init(level: LevelFilter) -> Result<(), SetLoggerError> {
    let inner = SimpleLogger::new()
        .with_level(LevelFilter::Trace)
        .with_module_level("tungstenite", LevelFilter::Info);
    log::set_boxed_logger(Box::new(Logger { inner }))?;
    log::set_max_level(level);
    Ok(())
}

/// simple_logger, asked only about lines the current level lets through.
struct Logger {
    inner: SimpleLogger,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        allows(log::max_level(), metadata.target(), metadata.level())
            && self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Whether a line at `at` from `target` passes at `level`. rustls logs every failed handshake at
/// warn, one line per scanner: below debug only its errors pass.
fn allows(level: LevelFilter, target: &str, at: Level) -> bool {
    let limit = if target.starts_with("rustls") && level < LevelFilter::Debug {
        level.min(LevelFilter::Error)
    } else {
        level
    };
    at <= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_filters_every_target_and_rustls_keeps_to_errors_below_debug() {
        use Level::*;
        assert!(allows(LevelFilter::Info, "wsgate::server", Info));
        assert!(!allows(LevelFilter::Info, "wsgate::server", Debug));
        assert!(allows(LevelFilter::Debug, "wsgate::server", Debug));
        assert!(!allows(LevelFilter::Info, "rustls::conn", Warn));
        assert!(allows(LevelFilter::Info, "rustls::conn", Error));
        assert!(allows(LevelFilter::Debug, "rustls::conn", Warn));
        assert!(!allows(LevelFilter::Off, "rustls::conn", Error));
        assert!(!allows(LevelFilter::Off, "wsgate::server", Error));
    }
}
