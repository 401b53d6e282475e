//! What a row of the key tables is ([`Key`]: the key, its default as the file would write it, its
//! parser and so the typed value it produces, one line of doc, what a reload does when it
//! changed: [`Reload`]) and what a table is. The rows
//! themselves are in [`super::tables`]; which table a section has, and the unknown-name check, in
//! [`super::lookup`]; `Section::get` reads a value through its row, default included.

/// A row: one key of a section.
pub(super) struct Key<T> {
    pub(super) name: &'static str,
    /// The value used when the key is not set, as the file would write it. `None`: the key has
    /// no fixed default; its doc says what being unset means (off, required, or worked out from
    /// other keys or the host).
    pub(super) default: Option<&'static str>,
    /// The key's value into its typed form, or what was expected.
    pub(super) parse: fn(&str) -> Result<T, String>,
    /// One line saying what the key does (the paragraph is in `conf/wsgate.ini`). Read by the
    /// tests that hold the tables and the shipped file to each other; the server never prints it.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the rows' documentation, read by the tests only")
    )]
    pub(super) doc: &'static str,
    /// What a reload does when the key's value changed.
    pub(super) reload: Reload,
}

/// What a reload does with a key whose value changed: the column of the key tables that the
/// reload's report, the table in docs/operations.md and the reload tests are all read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The reload applies it: new connections, and the parts that read it when they act (the
    /// logger, the file watcher, shutdown), use the new value.
    Applies,
    /// Bound at start (a listening socket, a pool, a cache, a link): the process keeps its
    /// value, and every reload names the key as needing a restart while the file differs from
    /// what the process started with.
    Restart,
    /// A reload that changes it fails and keeps the running configuration; the text says why.
    Refused(&'static str),
}

/// A row whatever its value's type: what the tables list.
pub(super) trait Row: Sync {
    fn name(&self) -> &'static str;
    fn reload(&self) -> Reload;
    fn default(&self) -> Option<&'static str>;
    /// Whether two values as written (`None`: not set) mean the same: both parse to the same
    /// value, an unset one read as the row's default.
    fn same(&self, a: Option<&str>, b: Option<&str>) -> bool;
    #[cfg(test)]
    fn doc(&self) -> &'static str;
    /// Whether `value` parses to the row's default (false without one, or when it does not
    /// parse).
    #[cfg(test)]
    fn is_default(&self, value: &str) -> bool;
    /// Whether `value` parses.
    #[cfg(test)]
    fn accepts(&self, value: &str) -> bool;
}

impl<T: PartialEq> Row for Key<T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn reload(&self) -> Reload {
        self.reload
    }

    fn same(&self, a: Option<&str>, b: Option<&str>) -> bool {
        let value = |written: Option<&str>| written.or(self.default).map(self.parse);
        match (value(a), value(b)) {
            (None, None) => true,
            (Some(Ok(a)), Some(Ok(b))) => a == b,
            _ => a == b,
        }
    }

    fn default(&self) -> Option<&'static str> {
        self.default
    }

    #[cfg(test)]
    fn doc(&self) -> &'static str {
        self.doc
    }

    #[cfg(test)]
    fn is_default(&self, value: &str) -> bool {
        match (self.default.map(self.parse), (self.parse)(value)) {
            (Some(Ok(default)), Ok(value)) => default == value,
            _ => false,
        }
    }

    #[cfg(test)]
    fn accepts(&self, value: &str) -> bool {
        (self.parse)(value).is_ok()
    }
}

/// A section's keys, in groups so that `[limits]` and `[channel:…]` share the WebSocket rows.
pub(super) struct Table {
    /// The section's name, or for `[channel:…]` and `[role:…]` the prefix without the `:`.
    pub(super) name: &'static str,
    pub(super) groups: &'static [&'static [&'static dyn Row]],
}

impl Table {
    pub(super) fn rows(&self) -> impl Iterator<Item = &'static dyn Row> + '_ {
        self.groups.iter().flat_map(|group| group.iter().copied())
    }

    pub(super) fn row(&self, key: &str) -> Option<&'static dyn Row> {
        self.rows().find(|row| row.name() == key)
    }
}

/// `[channel:PATH]`: a channel, one section per path.
pub(super) const CHANNEL_PREFIX: &str = "channel:";
/// `[role:NAME]`: a role, one section per name.
pub(super) const ROLE_PREFIX: &str = "role:";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tables::{FIXED, channel, role};

    fn every_table() -> impl Iterator<Item = &'static Table> {
        FIXED.iter().copied().chain([&channel::TABLE, &role::TABLE])
    }

    #[test]
    fn every_row_has_a_default_its_parser_accepts_and_one_line_of_doc() {
        for table in every_table() {
            let mut seen: Vec<&str> = Vec::new();
            for row in table.rows() {
                let what = format!("[{}] {}", table.name, row.name());
                assert!(!seen.contains(&row.name()), "{what} is listed twice");
                seen.push(row.name());
                if let Some(default) = row.default() {
                    assert!(row.is_default(default), "{what}: default {default:?}");
                }
                let doc = row.doc();
                assert!(
                    !doc.is_empty() && !doc.contains('\n') && doc.ends_with('.'),
                    "{what}: doc {doc:?}"
                );
            }
        }
    }

    #[test]
    fn every_count_key_has_an_upper_bound() {
        let mut counts = Vec::new();
        for table in every_table() {
            // A count: a bare number, no unit (sizes take `K`, durations `s`).
            for row in table
                .rows()
                .filter(|r| r.accepts("7") && !r.accepts("7s") && !r.accepts("7K"))
            {
                for huge in ["1000001", "18446744073709551615", "99999999999999999999999"] {
                    assert!(
                        !row.accepts(huge),
                        "[{}] {} = {huge}",
                        table.name,
                        row.name()
                    );
                }
                counts.push(row.name());
            }
        }
        // workers, queue, max_connections_per_ip, max_pre_auth, the [auth] four, max_headers,
        // max_fragments, outbox and max_messages_per_sec (in [limits] and [channel:…]),
        // max_connections, publish_queue, stream_length, history_size.
        assert_eq!(counts.len(), 18, "{counts:?}");
    }
}
