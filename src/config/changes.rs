//! What a reload changes: the keys whose values differ between two loaded configs, each with the
//! answer its row gives ([`Reload`]: applied, needs a restart, or refused), and the table of
//! those answers that docs/operations.md prints (a test holds the two to each other).

use std::fmt;

use super::keys::Reload;
use super::lookup;
use super::scan::ScannedSection;
use super::tables::FIXED;
use super::{Config, ConfigError};

/// A key whose value differs between two configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The section as written: `server`, `channel:/chat/*`.
    pub section: String,
    pub key: &'static str,
    /// What its row says a reload does with it.
    pub reload: Reload,
    /// Its line in the newer file; `None` when that file no longer sets it.
    pub line: Option<usize>,
    /// The older and newer values as written, the row's default when unset.
    pub from: Option<String>,
    pub to: Option<String>,
}

impl fmt::Display for Change {
    /// `[section] key`, as the reload's report and the config errors name it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.section, self.key)
    }
}

impl Change {
    /// The error of a reload that changes a [`Reload::Refused`] key; `None` for other keys.
    pub fn refusal(&self, source: &std::path::Path) -> Option<ConfigError> {
        let Reload::Refused(why) = self.reload else {
            return None;
        };
        let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".into());
        Some(ConfigError::Invalid {
            path: source.to_path_buf(),
            line: self.line,
            section: self.section.clone(),
            key: Some(self.key.to_string()),
            message: format!(
                "changed from {} to {}; {why}, restart wsgate to apply it",
                shown(&self.from),
                shown(&self.to)
            ),
        })
    }
}

impl Config {
    /// Every key whose value here differs from `older`'s (an unset key counts as its default,
    /// and two spellings of one value are the same), in this file's order, then the sections
    /// only `older` has.
    pub fn changes_since(&self, older: &Config) -> Vec<Change> {
        let mut names: Vec<&str> = self.written.0.iter().map(|s| s.name.as_str()).collect();
        for s in &older.written.0 {
            if !names.contains(&s.name.as_str()) {
                names.push(&s.name);
            }
        }
        let mut changes = Vec::new();
        for name in names {
            let Some(table) = lookup::table(name) else {
                continue;
            };
            let (old, new) = (
                written(&older.written.0, name),
                written(&self.written.0, name),
            );
            for row in table.rows() {
                let (a, b) = (value(old, row.name()), value(new, row.name()));
                if !row.same(a.map(|(v, _)| v), b.map(|(v, _)| v)) {
                    let shown = |v: Option<(&str, usize)>| {
                        v.map(|(v, _)| v).or(row.default()).map(str::to_string)
                    };
                    changes.push(Change {
                        section: name.to_string(),
                        key: row.name(),
                        reload: row.reload(),
                        line: b.map(|(_, line)| line),
                        from: shown(a),
                        to: shown(b),
                    });
                }
            }
        }
        changes
    }
}

fn written<'c>(sections: &'c [ScannedSection], name: &str) -> Option<&'c ScannedSection> {
    sections.iter().find(|s| s.name == name)
}

/// `key`'s value as written in `section`, with its line.
fn value<'c>(section: Option<&'c ScannedSection>, key: &str) -> Option<(&'c str, usize)> {
    let found = section?.keys.iter().find(|k| k.key == key)?;
    Some((found.value.as_str(), found.line))
}

/// docs/operations.md's table of what a reload does with each key, one row per section of the
/// key tables (`[channel:…]` and `[role:…]` included).
pub fn reload_table() -> String {
    let mut out =
        String::from("| section | applied by a reload | needs a restart |\n|---|---|---|\n");
    let tables = FIXED
        .iter()
        .copied()
        .chain([&super::tables::channel::TABLE, &super::tables::role::TABLE]);
    for table in tables {
        let names = |pick: fn(Reload) -> bool| {
            let keys: Vec<String> = table
                .rows()
                .filter(|row| pick(row.reload()))
                .map(|row| match row.reload() {
                    Reload::Refused(_) => {
                        format!("`{}` (a reload that changes it fails)", row.name())
                    }
                    _ => format!("`{}`", row.name()),
                })
                .collect();
            if keys.is_empty() {
                "—".to_string()
            } else {
                keys.join(", ")
            }
        };
        let section = match table.name {
            "channel" | "role" => format!("`[{}:…]`", table.name),
            name => format!("`[{name}]`"),
        };
        out.push_str(&format!(
            "| {section} | {} | {} |\n",
            names(|r| r == Reload::Applies),
            names(|r| r != Reload::Applies)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::Table;
    use crate::config::tables::{channel, role};

    /// Values one of which each row accepts with a meaning other than its default. A row that
    /// accepts none of them fails the test below until one is added here.
    const CANDIDATES: &[&str] = &[
        "7",
        "3s",
        "96KiB",
        "256KiB",
        "true",
        "false",
        "off",
        "optional",
        "drop",
        "trace",
        "127.0.0.1:1",
        "other.pem",
        "https://other.example.com",
        "redis://127.0.0.1:1",
        "other-id",
        "other:",
        "/chat/other",
        "echo",
        "ws://127.0.0.1:1",
        "alice",
        "/news",
        "wsgate.example.com",
    ];

    fn sections(text: &str) -> Vec<ScannedSection> {
        super::super::scan::scan(text, std::path::Path::new("wsgate.ini")).unwrap()
    }

    fn changes(old: &str, new: &str) -> Vec<Change> {
        let mut a = crate::rules::acl::tests::config("[channel:/echo]\nmode = echo\n");
        let mut b = a.clone();
        a.written = super::super::Written(sections(old));
        b.written = super::super::Written(sections(new));
        b.changes_since(&a)
    }

    fn every_table() -> impl Iterator<Item = (&'static Table, &'static str)> {
        FIXED
            .iter()
            .map(|t| (*t, t.name))
            .chain([(&channel::TABLE, "channel:/x"), (&role::TABLE, "role:x")])
    }

    #[test]
    fn every_key_changed_alone_is_named_with_its_rows_reload_answer() {
        for (table, section) in every_table() {
            for row in table.rows() {
                let value = CANDIDATES
                    .iter()
                    .find(|v| {
                        (row.default().is_none() || row.default() != Some(**v))
                            && !row.same(None, Some(v))
                            && row.same(Some(v), Some(v))
                    })
                    .unwrap_or_else(|| {
                        panic!("[{section}] {}: add a value it accepts", row.name())
                    });
                let new = format!("[{section}]\n{} = {value}\n", row.name());
                let found = changes(&format!("[{section}]\n"), &new);
                assert_eq!(found.len(), 1, "[{section}] {}: {found:?}", row.name());
                let change = &found[0];
                assert_eq!(
                    (
                        change.section.as_str(),
                        change.key,
                        change.reload,
                        change.line
                    ),
                    (section, row.name(), row.reload(), Some(2))
                );
                // And back: unset again, named the same way, with no line.
                let back = changes(&new, &format!("[{section}]\n"));
                assert_eq!((back.len(), back[0].line), (1, None), "{back:?}");
            }
        }
    }

    #[test]
    fn two_spellings_of_one_value_and_a_default_written_out_are_no_change() {
        let old = "[server]\nqueue = 16\n[limits]\nmax_message_size = 64KiB\n";
        let new = "[server]\n[limits]\nmax_message_size = 65536\n[log]\nlevel = INFO\n";
        assert_eq!(changes(old, new), vec![]);
    }

    #[test]
    fn the_keys_a_reload_cannot_see_are_named_restart_and_tls_refuses() {
        let restart = |section: &str, key: &str| {
            let found = changes("", &format!("[{section}]\n{key} = 7\n"));
            found[0].reload
        };
        assert_eq!(restart("server", "max_pre_auth"), Reload::Restart);
        assert_eq!(restart("server", "workers"), Reload::Restart);
        let stack = changes("", "[server]\nhandshake_stack_size = 256KiB\n");
        assert_eq!(stack[0].reload, Reload::Restart);
        let level = changes("", "[log]\nlevel = debug\n");
        assert_eq!(level[0].reload, Reload::Applies);
        let tls = changes("[server]\ntls = off\n", "[server]\n");
        let refused = tls[0].refusal(std::path::Path::new("F")).unwrap();
        assert_eq!(
            refused.to_string(),
            "config: F: [server] tls: changed from off to on; a reload cannot switch between \
             TLS and plaintext: clients, the proxy in front and the firewall were set up for one \
             of them, restart wsgate to apply it"
        );
    }

    #[test]
    fn sections_added_or_removed_name_the_keys_they_set() {
        let found = changes(
            "[channel:/old]\nmode = echo\n",
            "[channel:/new]\nmode = broadcast\nmax_message_size = 1KiB\n",
        );
        let names: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "[channel:/new] mode",
                "[channel:/new] max_message_size",
                "[channel:/old] mode"
            ]
        );
    }

    #[test]
    fn docs_operations_prints_the_reload_table_as_the_rows_say() {
        let docs = include_str!("../../docs/operations.md");
        let table = reload_table();
        assert!(
            docs.contains(&table),
            "docs/operations.md must hold this table, generated from the key tables' reload \
             column:\n\n{table}"
        );
    }
}
