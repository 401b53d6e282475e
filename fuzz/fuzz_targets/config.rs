//! The INI config loader: any text either parses into a validated `Config` or gives a
//! `ConfigError` whose message can be shown; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wsgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: relative paths in the input resolve to nothing.
    match Config::parse(text, Path::new("/nonexistent-wsgate-fuzz/wsgate.ini")) {
        Ok(config) => {
            // What the server does with a loaded config must not panic either.
            let _ = config.limits.ws.websocket_config();
            for channel in &config.channels {
                let _ = channel.limits.websocket_config();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
