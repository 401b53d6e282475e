//! Which table a section has ([`table`]: by name, or by prefix for `[channel:…]` and
//! `[role:…]`), and the unknown-section and unknown-key check ([`check_names`]) with its "did you
//! mean" suggestions.

use super::ConfigError;
use super::keys::{CHANNEL_PREFIX, ROLE_PREFIX, Table};
use super::scan::Section;
use super::tables::{FIXED, channel, role};

/// The table of the section named `name`, if it is one the config knows.
pub(super) fn table(name: &str) -> Option<&'static Table> {
    if name.starts_with(CHANNEL_PREFIX) {
        Some(&channel::TABLE)
    } else if name.starts_with(ROLE_PREFIX) {
        Some(&role::TABLE)
    } else {
        FIXED.iter().copied().find(|t| t.name == name)
    }
}

/// Refuses the first unknown section or key, in file order, naming the nearest known word.
pub(super) fn check_names(sections: &[Section<'_>]) -> Result<(), ConfigError> {
    for s in sections {
        let Some(table) = table(s.name) else {
            let names: Vec<&str> = FIXED.iter().map(|t| t.name).collect();
            return Err(s.invalid(
                None,
                format!(
                    "unknown section{}; expected {}, {CHANNEL_PREFIX}/path or {ROLE_PREFIX}NAME",
                    super::suggest::hint(s.name, names.iter().copied()),
                    names.join(", ")
                ),
            ));
        };
        if let Some(unknown) = s.keys.iter().find(|k| table.row(&k.key).is_none()) {
            let key = unknown.key.as_str();
            let names: Vec<&str> = table.rows().map(|row| row.name()).collect();
            return Err(s.invalid(
                Some(key),
                format!(
                    "unknown key{}; [{}] accepts {}",
                    super::suggest::hint(key, names.iter().copied()),
                    s.name,
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tables::ws;

    #[test]
    fn sections_are_found_by_name_or_prefix() {
        assert_eq!(table("server").map(|t| t.name), Some("server"));
        assert_eq!(table("channel:/x").map(|t| t.name), Some("channel"));
        assert_eq!(table("role:ops").map(|t| t.name), Some("role"));
        assert!(table("Server").is_none() && table("channel").is_none());
        // [limits] and channels share the WebSocket rows.
        let limits: Vec<_> = table("limits").unwrap().rows().map(|r| r.name()).collect();
        assert!(ws::ROWS.iter().all(|r| limits.contains(&r.name())));
        assert!(
            table("channel:/x")
                .unwrap()
                .row("max_message_size")
                .is_some()
        );
        assert_eq!(crate::config::DEFAULT_ADMIN_MAX_CONNECTIONS, 32);
    }
}
