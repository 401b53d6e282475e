//! The one parse of the config file: its lines into sections, keys and values with their line
//! numbers ([`scan`]), and [`Section`], one section's values read through the rows of
//! [`super::tables`] with every error placed at its file, line and key. Interprets no value:
//! that is each row's parser.

use std::fmt;
use std::path::{Path, PathBuf};

use super::ConfigError;
use super::keys::{CHANNEL_PREFIX, Key};
use super::values::{Bases, resolve_path};

// ---------------------------------------------------------------------------------------------
// The scanner: the one parse of the file. It splits lines into sections and keys with their
// values and line numbers, and rejects what an INI reader would silently accept or misread (keys
// outside sections, repeated sections and keys, unterminated headers, line continuations, lines
// that are neither). Quotes and escapes are not interpreted, so `C:\certs\a.pem` and `"` survive
// as written; `#` and `;` start a comment only at the start of a line.

/// A key as found by the scan.
#[derive(Debug, Clone)]
pub(super) struct ScannedKey {
    pub(super) key: String,
    /// Trimmed of surrounding whitespace, otherwise as written.
    pub(super) value: String,
    pub(super) line: usize,
}

/// A section as found by the scan, keys in file order.
#[derive(Debug, Clone)]
pub(super) struct ScannedSection {
    pub(super) name: String,
    pub(super) line: usize,
    pub(super) keys: Vec<ScannedKey>,
}

/// Scans `text` into its sections, keys and values (see above for the rules).
pub(super) fn scan(text: &str, source: &Path) -> Result<Vec<ScannedSection>, ConfigError> {
    // One piece: one pass over the lines, a branch per kind of line (header, key), each
    // reporting through the same two error builders.
    let syntax = |line: usize, message: String| ConfigError::Syntax {
        path: source.to_path_buf(),
        line: Some(line),
        message,
    };
    let invalid =
        |line: usize, section: &str, key: Option<&str>, message: String| ConfigError::Invalid {
            path: source.to_path_buf(),
            line: Some(line),
            section: section.to_string(),
            key: key.map(str::to_string),
            message,
        };

    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut sections: Vec<ScannedSection> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if let Some(c) = raw.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(syntax(line, format!("control character {c:?} in the line")));
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(syntax(
                    line,
                    "section header must end with `]` (comments go on their own line)".into(),
                ));
            };
            if name.contains(['[', ']']) {
                return Err(syntax(line, "section header has a stray `[` or `]`".into()));
            }
            // `\]` would read as a `]` escaped inside the name, the header running on into the
            // next lines; a name cannot end with it.
            if name.ends_with('\\') {
                return Err(syntax(
                    line,
                    "section header must not end with `\\]`".into(),
                ));
            }
            let name = name.trim();
            if name.is_empty() {
                return Err(syntax(line, "empty section name `[]`".into()));
            }
            if let Some(first) = sections.iter().find(|s| s.name == name) {
                return Err(invalid(
                    line,
                    name,
                    None,
                    format!(
                        "repeated section (first on line {}); merge the two",
                        first.line
                    ),
                ));
            }
            sections.push(ScannedSection {
                name: name.to_string(),
                line,
                keys: Vec::new(),
            });
        } else {
            let Some(split) = trimmed.find(['=', ':']) else {
                return Err(syntax(
                    line,
                    "expected `key = value`, a `[section]` header or a `#` comment".into(),
                ));
            };
            let key = trimmed[..split].trim();
            if key.is_empty() {
                return Err(syntax(line, "missing key before `=`".into()));
            }
            let value = trimmed[split + 1..].trim();
            if value.ends_with('\\') {
                return Err(invalid(
                    line,
                    sections.last().map_or("", |s| s.name.as_str()),
                    Some(key),
                    "a value must not end with `\\` (it would continue on the next line)".into(),
                ));
            }
            let Some(section) = sections.last_mut() else {
                return Err(invalid(
                    line,
                    "",
                    Some(key),
                    "key outside any section; put it under a `[section]` header".into(),
                ));
            };
            if let Some(first) = section.keys.iter().find(|k| k.key == key) {
                return Err(invalid(
                    line,
                    &section.name,
                    Some(key),
                    format!("repeated key (first set on line {}); keep one", first.line),
                ));
            }
            section.keys.push(ScannedKey {
                key: key.to_string(),
                value: value.to_string(),
                line,
            });
        }
    }
    Ok(sections)
}

/// One section's keys and values, with what is needed to report errors.
#[derive(Clone)]
pub(super) struct Section<'a> {
    pub(super) source: &'a Path,
    pub(super) name: &'a str,
    /// The header's line; `None` for a section absent from the file.
    pub(super) line: Option<usize>,
    /// As scanned, in file order.
    pub(super) keys: &'a [ScannedKey],
}

impl<'a> Section<'a> {
    /// The scanned `section`, for lookups.
    pub(super) fn new(source: &'a Path, section: &'a ScannedSection) -> Self {
        Section {
            source,
            name: &section.name,
            line: Some(section.line),
            keys: &section.keys,
        }
    }

    pub(super) fn absent(source: &'a Path, name: &'a str) -> Self {
        Section {
            source,
            name,
            line: None,
            keys: &[],
        }
    }

    /// An error about `key` (at its line if set here, else at the header).
    pub(super) fn invalid(&self, key: Option<&str>, message: impl Into<String>) -> ConfigError {
        let line = key
            .and_then(|k| self.scanned(k))
            .map(|k| k.line)
            .or(self.line);
        ConfigError::Invalid {
            path: self.source.to_path_buf(),
            line,
            section: self.name.to_string(),
            key: key.map(str::to_string),
            message: message.into(),
        }
    }

    fn scanned(&self, key: &str) -> Option<&'a ScannedKey> {
        self.keys.iter().find(|k| k.key == key)
    }

    pub(super) fn is_set(&self, key: &str) -> bool {
        self.scanned(key).is_some()
    }

    /// `key`'s value parsed by its row: the value written here, else the row's default. A row
    /// without a default that is not set here is `missing`.
    pub(super) fn get<T>(&self, key: &Key<T>) -> Result<T, ConfigError> {
        self.inherit(key, None)
    }

    /// `key`'s value parsed by its row if set here, else `fallback` (a default that depends on
    /// other keys).
    pub(super) fn get_or<T>(&self, key: &Key<T>, fallback: T) -> Result<T, ConfigError> {
        self.inherit(key, Some(fallback))
    }

    /// `key`'s value parsed by its row if set here, else `inherited` (a channel's from
    /// `[limits]`), else the row's default.
    pub(super) fn inherit<T>(&self, key: &Key<T>, inherited: Option<T>) -> Result<T, ConfigError> {
        match (self.optional(key)?, inherited, key.default) {
            (Some(value), _, _) | (None, Some(value), _) => Ok(value),
            (None, None, Some(default)) => {
                (key.parse)(default).map_err(|m| self.invalid(Some(key.name), m))
            }
            (None, None, None) => Err(self.invalid(Some(key.name), "missing")),
        }
    }

    /// `key`'s value parsed by its row if set here; `None` when it is not (the default is not
    /// read).
    pub(super) fn optional<T>(&self, key: &Key<T>) -> Result<Option<T>, ConfigError> {
        match self.scanned(key.name) {
            None => Ok(None),
            Some(scanned) => (key.parse)(&scanned.value)
                .map(Some)
                .map_err(|m| self.invalid(Some(key.name), m)),
        }
    }

    /// A path key, resolved by [`resolve_path`] (against the config file's directory, or the
    /// credentials directory for `credential:NAME`).
    pub(super) fn path(&self, key: &Key<String>, base: &Bases<'_>) -> Result<PathBuf, ConfigError> {
        let value = self.get(key)?;
        resolve_path(&value, base).map_err(|m| self.invalid(Some(key.name), m))
    }

    /// A path key without a default, resolved when set.
    pub(super) fn optional_path(
        &self,
        key: &Key<String>,
        base: &Bases<'_>,
    ) -> Result<Option<PathBuf>, ConfigError> {
        if self.is_set(key.name) {
            self.path(key, base).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Fails unless `path` (the value of `key`) is an existing regular file.
    pub(super) fn require_file(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(_) => {
                Err(self.invalid(Some(key), format!("not a regular file: {}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(self.invalid(Some(key), format!("file not found: {}", path.display())))
            }
            Err(e) => Err(self.invalid(
                Some(key),
                format!(
                    "cannot access {}: {}",
                    path.display(),
                    e.to_string().to_lowercase()
                ),
            )),
        }
    }

    /// Fails if `path` (the value of `key`) exists and is not a regular file; a missing file is
    /// fine (the server creates it, or it is optional).
    pub(super) fn allow_missing_file(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            _ => self.require_file(key, path),
        }
    }

    /// `name = value` for messages, noting where an inherited value came from.
    pub(super) fn describe(&self, key: &str, value: impl fmt::Display) -> String {
        if self.name.starts_with(CHANNEL_PREFIX) && !self.is_set(key) {
            format!("{key} ({value}, inherited from [limits])")
        } else {
            format!("{key} ({value})")
        }
    }

    /// The first of `keys` set in this section (the line to point at for a cross-field rule).
    pub(super) fn first_set(&self, keys: &[&'static str]) -> Option<&'static str> {
        keys.iter().copied().find(|k| self.is_set(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(section, key, value, line)` of every key `scan` finds in `text`.
    fn scanned(text: &str) -> Vec<(String, String, String, usize)> {
        let sections = scan(text, Path::new("F")).unwrap_or_else(|e| panic!("{e}"));
        sections
            .into_iter()
            .flat_map(|s| {
                s.keys
                    .into_iter()
                    .map(move |k| (s.name.clone(), k.key, k.value, k.line))
            })
            .collect()
    }

    /// Values are read as written: escapes, quotes and line continuations are not
    /// interpreted.
    #[test]
    fn the_scan_reads_values_as_written() {
        let one = |text: &str| {
            let keys = scanned(text);
            assert_eq!(keys.len(), 1, "{text:?}");
            keys[0].2.clone()
        };
        // Quotes are kept, single or double, matched or not.
        assert_eq!(one("[a]\nk = \"x y\"\n"), "\"x y\"");
        assert_eq!(one("[a]\nk = 'x'\n"), "'x'");
        assert_eq!(one("[a]\nk = \"x\n"), "\"x");
        // Escapes are kept as written.
        assert_eq!(
            one("[a]\nk = C:\\certs\\n\\t\\x41\\\\b\n"),
            "C:\\certs\\n\\t\\x41\\\\b"
        );
        // `#` and `;` after the start of a line are part of the value.
        assert_eq!(one("[a]\nk = 2 # two\n"), "2 # two");
        assert_eq!(one("[a]\nk = x;y ; z\n"), "x;y ; z");
        // Whitespace around keys and values goes (tabs too); inside, it stays.
        assert_eq!(
            scanned("  [a]  \n\t key one \t=\t x  y \t\n"),
            [("a".into(), "key one".into(), "x  y".into(), 2)]
        );
        // The first `=` or `:` splits; the rest is the value.
        assert_eq!(
            scanned("[a]\nk: v = w\nl = 127.0.0.1:9\nm :=x\n"),
            [
                ("a".into(), "k".into(), "v = w".into(), 2),
                ("a".into(), "l".into(), "127.0.0.1:9".into(), 3),
                ("a".into(), "m".into(), "=x".into(), 4),
            ]
        );
        // An empty value is the empty string.
        assert_eq!(one("[a]\nk =\n"), "");
        // Section names are trimmed and keep their case; keys keep theirs.
        assert_eq!(
            scanned("[ Server ]\nWorkers = 1\nworkers = 2\n"),
            [
                ("Server".into(), "Workers".into(), "1".into(), 2),
                ("Server".into(), "workers".into(), "2".into(), 3),
            ]
        );
        // A backslash inside a section name or key is kept.
        assert_eq!(
            scanned("[channel:/a\\b]\nk\\l = 1\n"),
            [("channel:/a\\b".into(), "k\\l".into(), "1".into(), 2)]
        );
        // Comments, blank lines, a byte-order mark and CRLF line ends are skipped.
        assert_eq!(
            scanned("\u{feff}# c\n; c\n\n  # c\n[a]\r\nk = v\r\n"),
            [("a".into(), "k".into(), "v".into(), 6)]
        );
    }

    /// What an INI reader could misread, or merge silently, is refused with its line.
    #[test]
    fn the_scan_refuses_what_an_ini_reader_would_misread() {
        let refused = |text: &str| match scan(text, Path::new("F")) {
            Ok(_) => panic!("accepted: {text:?}"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            refused("[a]\nk = 1\nk = 2\n"),
            "config: F:3: [a] k: repeated key (first set on line 2); keep one"
        );
        assert_eq!(
            refused("[a]\n[a]\n"),
            "config: F:2: [a]: repeated section (first on line 1); merge the two"
        );
        assert_eq!(
            refused("k = 1\n[a]\n"),
            "config: F:1: k: key outside any section; put it under a `[section]` header"
        );
        assert_eq!(
            refused("[a]\nk = C:\\\n"),
            "config: F:2: [a] k: a value must not end with `\\` (it would continue on the next line)"
        );
        // `\]` would make the following lines part of the name.
        assert_eq!(
            refused("[channel:/a\\]\nmode = echo\n"),
            "config: F:1: section header must not end with `\\]`"
        );
        assert_eq!(
            refused("[a] # c\n"),
            "config: F:1: section header must end with `]` (comments go on their own line)"
        );
        assert_eq!(
            refused("[a]\n\u{b}k = 1\n"),
            "config: F:2: control character '\\u{b}' in the line"
        );
    }
}
