//! The users-file parser: every line is accepted or refused with its line number; never a panic,
//! and an error message never repeats a hash field (it may be a plain password).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wsgate::auth::users::UserStore;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match UserStore::parse(text, Path::new("users")) {
        Ok(store) => {
            assert!(store.len() <= text.lines().count());
            for name in store.names() {
                assert!(!name.is_empty());
                assert!(store.contains(name));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
