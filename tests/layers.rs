//! The crate's layers, read from the source text of `src/`: each top-level module imports only the
//! modules below it in [`LAYERS`] (the drawing in docs/design.md, which this file also holds to
//! the table), no two top-level modules import each other round a cycle, and no two files do.
//!
//! An import is a path in code (not in a comment or a string) that starts with `crate::`,
//! `super::`, `self::` or the name of one of the file's own submodules, in a `use` declaration or
//! inline. It counts for the file that defines what it names: a name a module re-exports
//! (`pub use`) leads on to the file it comes from. Test code (`#[cfg(test)]` items, and files
//! declared under `#[cfg(test)]`) may reach any layer for its fixtures and is not read. A folder's
//! `mod.rs` and its own files may use each other (the `mod.rs` declares and re-exports its files,
//! they use what it defines); every other pair of files is held to "no cycle".
//!
//! It also holds every function outside tests to [`LONGEST_FUNCTION`] lines, unless the comment
//! at its top (its doc comment, or the first comment in its body) says why it must be one piece.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// The top-level modules of `src/`, from the roof down: each may import only the ones after it.
const LAYERS: &[&str] = &[
    "cli", "server", "admin", "pipeline", "hub", "auth", "ops", "policy", "memory", "config",
    "rules",
];

/// The most lines a function outside tests may span, from its `fn` line to its closing brace,
/// unless the comment at its top says why it must be [`ONE_PIECE`].
const LONGEST_FUNCTION: usize = 80;

/// The words that excuse a long function, in the comment at its top: why it must be one piece.
const ONE_PIECE: &str = "one piece";

/// A module's path below the crate root: `["hub", "cluster", "wire"]`; the root is empty.
type ModPath = Vec<String>;

/// What the reader learned from the source files.
struct Crate {
    /// Every module that is a file of its own (not behind `#[cfg(test)]`), and that file's path
    /// below `src/`.
    files: BTreeMap<ModPath, String>,
    /// The modules each file module imports: the files that define what it names.
    edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

impl Crate {
    /// Reads `src/` (the library: `main.rs` is the binary, above every layer).
    fn read(src: &Path) -> Crate {
        let mut sources = Vec::new();
        collect(src, src, &mut sources);
        Crate::from_sources(&sources)
    }

    /// `sources`: each file's path below `src/` and its text.
    fn from_sources(sources: &[(String, String)]) -> Crate {
        let by_module: HashMap<ModPath, (&str, Vec<Line>)> = sources
            .iter()
            .filter(|(path, _)| path != "main.rs")
            .map(|(path, text)| (module_of(path), (path.as_str(), production_lines(text))))
            .collect();
        // The modules the library compiles outside tests: declared, from the root down.
        let mut files = BTreeMap::new();
        let mut todo = vec![ModPath::new()];
        while let Some(m) = todo.pop() {
            let Some((path, lines)) = by_module.get(&m) else {
                continue;
            };
            files.insert(m.clone(), path.to_string());
            for child in declared_children(lines) {
                todo.push([m.clone(), vec![child]].concat());
            }
        }
        let mut reexports: HashMap<ModPath, HashMap<String, ModPath>> = HashMap::new();
        let mut named: BTreeMap<ModPath, Vec<ModPath>> = BTreeMap::new();
        for m in files.keys().filter(|m| !m.is_empty()) {
            let lines = &by_module[m].1;
            for (decl, inline, public) in use_declarations(lines) {
                for (path, alias) in expand_use_tree(&decl) {
                    let Some(abs) = absolute(&path, m, inline, &files) else {
                        continue;
                    };
                    if public && !inline {
                        let name = alias.or_else(|| path.last().cloned()).unwrap_or_default();
                        if name != "*" && name != "self" {
                            reexports
                                .entry(m.clone())
                                .or_default()
                                .insert(name, abs.clone());
                        }
                    }
                    named.entry(m.clone()).or_default().push(abs);
                }
            }
            for (path, inline) in inline_paths(lines, m, &files) {
                if let Some(abs) = absolute(&path, m, inline, &files) {
                    named.entry(m.clone()).or_default().push(abs);
                }
            }
        }
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (m, paths) in &named {
            for path in paths {
                let target = resolve(path, &files, &reexports, 0);
                if &target != m && !target.is_empty() {
                    edges.entry(m.clone()).or_default().insert(target);
                }
            }
        }
        Crate { files, edges }
    }

    fn file(&self, m: &ModPath) -> String {
        format!("src/{}", self.files[m])
    }

    /// The top-level modules each top-level module imports.
    fn folder_edges(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, targets) in &self.edges {
            for to in targets {
                if from[0] != to[0] {
                    out.entry(from[0].clone())
                        .or_default()
                        .insert(to[0].clone());
                }
            }
        }
        out
    }

    /// Each import that leaves its top-level module for one listed before it in `layers`; each
    /// top-level module `layers` does not list, and each it lists that is not there.
    fn upward_imports(&self, layers: &[&str]) -> Vec<String> {
        let rank = |name: &str| layers.iter().position(|l| *l == name);
        let tops: BTreeSet<&String> = self.files.keys().filter_map(|m| m.first()).collect();
        let mut out: Vec<String> = tops
            .iter()
            .filter(|top| rank(top).is_none())
            .map(|top| {
                format!(
                    "{}: not in the layer table",
                    self.file(&vec![(*top).clone()])
                )
            })
            .collect();
        out.extend(
            layers
                .iter()
                .filter(|l| !tops.iter().any(|t| t == *l))
                .map(|l| format!("`{l}`: in the layer table, but no such module")),
        );
        for (from, targets) in &self.edges {
            for to in targets.iter().filter(|to| to[0] != from[0]) {
                if let (Some(a), Some(b)) = (rank(&from[0]), rank(&to[0]))
                    && b < a
                {
                    out.push(format!(
                        "{} imports {}: `{}` is above `{}`",
                        self.file(from),
                        self.file(to),
                        to[0],
                        from[0]
                    ));
                }
            }
        }
        out
    }

    /// The import cycles between top-level modules, each as its members.
    fn folder_cycles(&self) -> Vec<Vec<String>> {
        cycles(&self.folder_edges())
    }

    /// The import cycles between files, each as its members' paths, leaving out the imports
    /// between a folder's `mod.rs` and its own files.
    fn file_cycles(&self) -> Vec<Vec<String>> {
        let parent_and_child = |a: &ModPath, b: &ModPath| {
            (a.len() + 1 == b.len() && b.starts_with(a))
                || (b.len() + 1 == a.len() && a.starts_with(b))
        };
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, targets) in &self.edges {
            for to in targets.iter().filter(|to| !parent_and_child(from, to)) {
                graph
                    .entry(self.file(from))
                    .or_default()
                    .insert(self.file(to));
            }
        }
        cycles(&graph)
    }
}

/// The strongly connected sets of more than one node: the members of each cycle.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |start: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start];
        while let Some(n) = todo.pop() {
            for next in graph.get(n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next);
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|n| (n, reach(n))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for (n, seen) in &reached {
        if !seen.contains(*n) || out.iter().any(|c| c.contains(n)) {
            continue;
        }
        let members = reached
            .iter()
            .filter(|(m, m_seen)| seen.contains(**m) && m_seen.contains(*n))
            .map(|(m, _)| (*m).clone())
            .collect();
        out.push(members);
    }
    out
}

/// Every `.rs` file under `dir`, as its path below `src` and its text.
fn collect(src: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(src, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((rel, text));
        }
    }
}

/// `hub/cluster/wire.rs` -> `[hub, cluster, wire]`; `pipeline/mod.rs` -> `[pipeline]`; `lib.rs`
/// -> `[]`.
fn module_of(path: &str) -> ModPath {
    let mut parts: ModPath = path
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if parts.last().is_some_and(|p| p == "mod") || parts == ["lib"] {
        parts.pop();
    }
    parts
}

/// A line of code outside tests; `inline`: inside a module written in the file (`mod x { … }`),
/// where `super` is the file's own module.
struct Line {
    code: String,
    inline: bool,
    /// Its index among the file's lines.
    number: usize,
}

/// The file's code without comments, string and character contents, and test items.
fn production_lines(text: &str) -> Vec<Line> {
    let code = blank_comments_and_strings(text);
    let mut out = Vec::new();
    let mut test_attribute: Option<usize> = None;
    // While skipping a test item: the indentation of the line that ends it.
    let mut skipping: Option<usize> = None;
    let mut inline = false;
    for (number, line) in code.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if let Some(at) = skipping {
            if indent == at && trimmed.starts_with(['}', ']', ')']) {
                skipping = None;
            }
            continue;
        }
        if trimmed == "#[cfg(test)]" {
            test_attribute = Some(indent);
            continue;
        }
        if let Some(at) = test_attribute {
            if trimmed.starts_with("#[") {
                continue;
            }
            test_attribute = None;
            // A test-only item that ends on its line: `mod x;`, `use …;`, a field `f: T,`.
            if !trimmed.ends_with([';', ',']) {
                skipping = Some(at);
            }
            continue;
        }
        if indent == 0 && is_inline_module(trimmed) {
            inline = true;
        } else if indent == 0 && trimmed.starts_with('}') {
            inline = false;
        }
        out.push(Line {
            code: line.to_string(),
            inline,
            number,
        });
    }
    out
}

/// `mod x {`, with any visibility.
fn is_inline_module(line: &str) -> bool {
    let rest = strip_visibility(line);
    rest.strip_prefix("mod ")
        .is_some_and(|r| r.trim_end().ends_with('{'))
}

/// `pub(crate) use x` -> `use x`.
fn strip_visibility(line: &str) -> &str {
    let Some(rest) = line.strip_prefix("pub") else {
        return line;
    };
    let rest = match rest.strip_prefix('(') {
        Some(r) => r.split_once(')').map_or(r, |(_, after)| after),
        None => rest,
    };
    rest.trim_start()
}

/// The submodules a file declares (`mod x;`) outside test code.
fn declared_children(lines: &[Line]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !l.inline)
        .filter_map(|l| {
            let name = strip_visibility(l.code.trim())
                .strip_prefix("mod ")?
                .strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

/// Each `use` declaration's tree (`a::b::{c, d}`), whether it sits in an inline module, and
/// whether it is public (`pub`, `pub(crate)`, `pub(super)`: a re-export).
fn use_declarations(lines: &[Line]) -> Vec<(String, bool, bool)> {
    let mut out = Vec::new();
    let mut open: Option<(String, bool, bool)> = None;
    for line in lines {
        let code = line.code.trim();
        if let Some((text, _, _)) = open.as_mut() {
            text.push_str(code);
        } else {
            let rest = strip_visibility(code);
            let Some(tree) = rest.strip_prefix("use ") else {
                continue;
            };
            open = Some((tree.to_string(), line.inline, rest.len() != code.len()));
        }
        if let Some((text, inline, public)) = open.take_if(|(t, _, _)| t.ends_with(';')) {
            out.push((text.trim_end_matches(';').to_string(), inline, public));
        }
    }
    out
}

/// A use tree as its paths, each with its `as` name: `a::{b, c::{self, d as e}}` -> `a::b`,
/// `a::c`, `a::c::d` (as `e`).
fn expand_use_tree(tree: &str) -> Vec<(Vec<String>, Option<String>)> {
    let tree: String = tree
        .chars()
        .filter(|c| !c.is_whitespace() || *c == ' ')
        .collect();
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let prefix = tree[..open].trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut out = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.extend(expand_branch(prefix, &inner[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.extend(expand_branch(prefix, &inner[start..]));
        return out;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((p, a)) => (p.trim(), Some(a.trim().to_string())),
        None => (tree, None),
    };
    let mut segments: Vec<String> = path.split("::").map(|s| s.trim().to_string()).collect();
    if segments.last().is_some_and(|s| s == "self") {
        segments.pop();
    }
    vec![(segments, alias)]
}

fn expand_branch(prefix: &str, branch: &str) -> Vec<(Vec<String>, Option<String>)> {
    let branch = branch.trim();
    if branch.is_empty() {
        return Vec::new();
    }
    if prefix.is_empty() {
        return expand_use_tree(branch);
    }
    let mut out = expand_use_tree(&format!("{prefix}::{branch}"));
    // `a::{self}` names `a` itself, under its own name.
    for (segments, alias) in &mut out {
        if alias.is_none() && branch == "self" {
            *alias = segments.last().cloned();
        }
    }
    out
}

/// The paths written in code outside `use` declarations: `crate::a::b`, `super::x`, `self::y`,
/// or `child::z` where `child` is a file module below `m`.
fn inline_paths(
    lines: &[Line],
    m: &ModPath,
    files: &BTreeMap<ModPath, String>,
) -> Vec<(Vec<String>, bool)> {
    let mut out = Vec::new();
    let mut in_use = false;
    for line in lines {
        let code = line.code.trim();
        if in_use || strip_visibility(code).starts_with("use ") {
            in_use = !code.ends_with(';');
            continue;
        }
        let bytes = code.as_bytes();
        let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let mut i = 0;
        while i < bytes.len() {
            let starts =
                is_ident(bytes[i]) && (i == 0 || !(is_ident(bytes[i - 1]) || bytes[i - 1] == b':'));
            if !starts {
                i += 1;
                continue;
            }
            let mut segments = Vec::new();
            let mut j = i;
            loop {
                let s = j;
                while j < bytes.len() && is_ident(bytes[j]) {
                    j += 1;
                }
                segments.push(code[s..j].to_string());
                if code[j..].starts_with("::")
                    && code[j + 2..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                {
                    j += 2;
                } else {
                    break;
                }
            }
            let first = segments[0].as_str();
            let child = files.contains_key(&[m.clone(), vec![segments[0].clone()]].concat());
            if segments.len() > 1 && (matches!(first, "crate" | "super" | "self") || child) {
                out.push((segments, line.inline));
            }
            i = j.max(i + 1);
        }
    }
    out
}

/// `path` as written in module `m` (inside an inline module when `inline`), from the crate
/// root; None for a path into another crate.
fn absolute(
    path: &[String],
    m: &ModPath,
    inline: bool,
    files: &BTreeMap<ModPath, String>,
) -> Option<ModPath> {
    let first = path.first()?.as_str();
    match first {
        "crate" => Some(path[1..].to_vec()),
        "super" | "self" => {
            let mut base = m.clone();
            // In an inline module `self` is that module, part of this file, and the first
            // `super` is this file's module.
            let mut in_inline = inline;
            let mut rest = path;
            while let Some(s) = rest.first().filter(|s| *s == "super" || *s == "self") {
                if s == "super" && !std::mem::take(&mut in_inline) {
                    base.pop();
                }
                rest = &rest[1..];
            }
            Some([base, rest.to_vec()].concat())
        }
        _ if files.contains_key(&[m.clone(), vec![first.to_string()]].concat()) => {
            Some([m.clone(), path.to_vec()].concat())
        }
        _ => None,
    }
}

/// The file module that defines what the absolute `path` names, following re-exports.
fn resolve(
    path: &[String],
    files: &BTreeMap<ModPath, String>,
    reexports: &HashMap<ModPath, HashMap<String, ModPath>>,
    depth: usize,
) -> ModPath {
    let mut module = ModPath::new();
    let mut rest = path.iter().filter(|s| *s != "*").peekable();
    while let Some(next) = rest.peek() {
        let candidate = [module.clone(), vec![(*next).clone()]].concat();
        if !files.contains_key(&candidate) {
            break;
        }
        module = candidate;
        rest.next();
    }
    if let Some(name) = rest.next()
        && depth < 8
        && let Some(target) = reexports.get(&module).and_then(|r| r.get(name))
    {
        let onward: Vec<String> = target.iter().cloned().chain(rest.cloned()).collect();
        return resolve(&onward, files, reexports, depth + 1);
    }
    module
}

/// `text` with every comment and the contents of every string and character literal replaced
/// by spaces (line breaks kept), so that what remains is code.
fn blank_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if !prev_ident && (c == 'r' || (c == 'b' && next == Some('r'))) && {
            let mut j = i + if c == 'b' { 2 } else { 1 };
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            chars.get(j) == Some(&'"')
        } {
            // A raw string: r"…", r#"…"#, br"…".
            let mut j = i + if c == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while chars[j] == '#' {
                hashes += 1;
                j += 1;
            }
            out.extend(std::iter::repeat_n(' ', j + 1 - i));
            i = j + 1;
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
                    out.extend(std::iter::repeat_n(' ', hashes + 1));
                    i += hashes + 1;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    out.push(blank(ch));
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\u{1F600}'); a lifetime ('a) has no closing quote.
            out.push('\'');
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            }
            out.push('\'');
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Each function in `text` (outside tests) longer than `longest` lines whose comment at its top
/// does not say why it must be one piece: `path:line: fn name is N lines`.
fn long_functions(path: &str, text: &str, longest: usize) -> Vec<String> {
    let original: Vec<&str> = text.lines().collect();
    let lines = production_lines(text);
    let mut out = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let Some(name) = function_name(&line.code) else {
            continue;
        };
        let Some(end) = body_end(&lines[at..]) else {
            continue;
        };
        let first = line.number;
        let last = lines[at + end].number;
        let span = last - first + 1;
        if span <= longest {
            continue;
        }
        // The doc comment and attributes above the `fn`, and the comment that opens its body.
        let above = original[..first]
            .iter()
            .rev()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with("//") || l.starts_with("#["));
        let body_start = lines[at..]
            .iter()
            .position(|l| l.code.contains('{'))
            .map_or(first, |k| lines[at + k].number + 1);
        let inside = original[body_start..=last]
            .iter()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with("//"));
        let excused = above
            .chain(inside)
            .any(|l| l.to_lowercase().contains(ONE_PIECE));
        if !excused {
            out.push(format!(
                "src/{path}:{}: fn {name} is {span} lines",
                first + 1
            ));
        }
    }
    out
}

/// The name of the function a line of code declares, with any visibility and qualifiers.
fn function_name(code: &str) -> Option<&str> {
    let mut rest = strip_visibility(code.trim());
    for qualifier in ["const ", "async ", "unsafe ", "extern \"C\" "] {
        rest = rest.strip_prefix(qualifier).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("fn ")?;
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|name| !name.is_empty())
}

/// The index (among `lines`, which start at a `fn` line) of the line that closes its body;
/// `None` for a declaration without one (`fn f();` in a trait).
fn body_end(lines: &[Line]) -> Option<usize> {
    // Braces, and the brackets and parentheses a `;` of the signature may sit in.
    let (mut braces, mut nested, mut opened) = (0usize, 0usize, false);
    for (k, line) in lines.iter().enumerate() {
        for c in line.code.chars() {
            match c {
                '(' | '[' => nested += 1,
                ')' | ']' => nested = nested.saturating_sub(1),
                ';' if !opened && nested == 0 => return None,
                '{' => {
                    braces += 1;
                    opened = true;
                }
                '}' => {
                    braces = braces.saturating_sub(1);
                    if opened && braces == 0 {
                        return Some(k);
                    }
                }
                _ => {}
            }
        }
    }
    None
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn each_top_level_module_imports_only_the_layers_below_it() {
    let upward = Crate::read(&src()).upward_imports(LAYERS);
    assert!(
        upward.is_empty(),
        "imports that point up the layers (the order is LAYERS in tests/layers.rs, drawn in \
         docs/design.md; pass the lower layer a callback or the data instead, or move the code \
         down):\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_top_level_modules_import_each_other_round_a_cycle() {
    let cycles = Crate::read(&src()).folder_cycles();
    assert!(
        cycles.is_empty(),
        "top-level modules that import each other: {cycles:?}"
    );
}

#[test]
fn no_files_import_each_other_round_a_cycle() {
    let cycles = Crate::read(&src()).file_cycles();
    assert!(
        cycles.is_empty(),
        "files that import each other: {cycles:?}"
    );
}

#[test]
fn no_function_is_too_long_to_hold_in_the_head() {
    let mut sources = Vec::new();
    collect(&src(), &src(), &mut sources);
    let compiled: BTreeSet<String> = Crate::from_sources(&sources).files.into_values().collect();
    let long: Vec<String> = sources
        .iter()
        .filter(|(path, _)| path == "main.rs" || compiled.contains(path))
        .flat_map(|(path, text)| long_functions(path, text, LONGEST_FUNCTION))
        .collect();
    assert!(
        long.is_empty(),
        "functions over {LONGEST_FUNCTION} lines (split them into steps with one job each, or \
         say at the function's top why it must be {ONE_PIECE:?}):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_length_check_measures_bodies_and_reads_the_excuse() {
    let body = "    let x = 1;\n".repeat(4);
    let text = format!(
        "trait T {{\n    fn declared(&self) -> [u8; 2];\n}}\n\
         pub(crate) fn long(a: [u8; 2]) {{\n{body}}}\n\
         /// Must be one piece: the steps share every local.\nfn excused() {{\n{body}}}\n\
         fn opens_with_it() {{\n    // One piece: a single match.\n{body}}}\n\
         fn short() {{\n    let s = \"}}\";\n}}\n\
         #[cfg(test)]\nmod tests {{\n    fn in_a_test() {{\n{body}    }}\n}}\n"
    );
    assert_eq!(
        long_functions("x.rs", &text, 5),
        ["src/x.rs:4: fn long is 6 lines"]
    );
    assert_eq!(long_functions("x.rs", &text, 6), Vec::<String>::new());
}

#[test]
fn the_layer_table_is_the_drawing_in_the_design_notes() {
    let design =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/design.md"))
            .unwrap();
    let after = design
        .split_once("### The layers")
        .expect("docs/design.md has a \"### The layers\" section")
        .1;
    let drawing = after
        .split("```")
        .nth(1)
        .expect("the section opens with its drawing");
    // Each layer is drawn as `name/` (a folder) or `name.rs` (a file).
    let drawn: Vec<&str> = drawing
        .split_whitespace()
        .filter_map(|w| w.strip_suffix('/').or_else(|| w.strip_suffix(".rs")))
        .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .collect();
    assert_eq!(
        drawn, LAYERS,
        "the drawing in docs/design.md, from the roof down"
    );
}

/// A small crate in which the reader must find each kind of import, and skip what is not one.
fn sample() -> Crate {
    let files = [
        (
            "lib.rs",
            "pub mod low;\npub mod high;\npub mod mid;\n#[cfg(test)]\nmod testonly;\n",
        ),
        (
            "low/mod.rs",
            "//! Uses crate::high only in this comment.\nmod a;\nmod b;\npub use self::a::Thing;\n\
             const S: &str = \"crate::high::x\";\nconst R: &str = r#\"crate::high::y\"#;\n\
             fn f<'a>(c: char) -> bool { c == '\"' }\n",
        ),
        (
            "low/a.rs",
            "pub struct Thing;\nuse super::b::{self, Other as _};\n",
        ),
        (
            "low/b.rs",
            "pub struct Other;\nmod inner {\n    use super::Other;\n}\n#[cfg(test)]\nmod tests {\n    \
             use crate::high::Top;\n}\n",
        ),
        (
            "mid.rs",
            "use crate::low::{\n    Thing,\n};\nfn g() { let _ = crate::high::top(); }\n",
        ),
        (
            "high.rs",
            "pub fn top() {}\nfn h() { let _ = crate::low::Thing; }\n",
        ),
        ("testonly.rs", "use crate::high::top;\n"),
    ];
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    Crate::from_sources(&sources)
}

#[test]
fn the_reader_finds_imports_in_code_and_follows_re_exports() {
    let c = sample();
    let edges: BTreeSet<(String, String)> = c
        .edges
        .iter()
        .flat_map(|(from, to)| to.iter().map(|t| (c.file(from), c.file(t))))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("src/low/mod.rs", "src/low/a.rs"),
        ("src/low/a.rs", "src/low/b.rs"),
        // `super` in an inline module is the file's own module: no edge for `low/b.rs`.
        ("src/mid.rs", "src/low/a.rs"),
        ("src/mid.rs", "src/high.rs"),
        ("src/high.rs", "src/low/a.rs"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(
        edges, want,
        "comments, strings, test code and test files are not imports"
    );
    assert!(!c.files.contains_key(&vec!["testonly".to_string()]));
}

/// `from` imports `to` (module paths as `low::b`).
fn add_import(c: &mut Crate, from: &str, to: &str) {
    let path = |m: &str| m.split("::").map(String::from).collect::<ModPath>();
    c.edges.entry(path(from)).or_default().insert(path(to));
}

#[test]
fn the_checks_name_an_upward_import_and_each_cycle() {
    let mut c = sample();
    assert_eq!(
        c.upward_imports(&["mid", "high", "low"]),
        Vec::<String>::new()
    );
    assert!(c.folder_cycles().is_empty() && c.file_cycles().is_empty());
    assert_eq!(
        c.upward_imports(&["mid", "low", "high", "gone"]),
        [
            "`gone`: in the layer table, but no such module",
            "src/high.rs imports src/low/a.rs: `low` is above `high`",
        ]
    );
    assert_eq!(
        c.upward_imports(&["mid", "low"]),
        ["src/high.rs: not in the layer table"]
    );
    // A folder's mod.rs and its own files may use each other.
    add_import(&mut c, "low::a", "low");
    assert!(c.file_cycles().is_empty());
    // Round a cycle: low -> mid -> (high ->) low, through low/b.rs -> mid.rs -> (high.rs ->)
    // low/a.rs -> low/b.rs.
    add_import(&mut c, "low::b", "mid");
    assert_eq!(
        c.folder_cycles(),
        [["high", "low", "mid"].map(String::from)]
    );
    assert_eq!(
        c.file_cycles(),
        [["src/high.rs", "src/low/a.rs", "src/low/b.rs", "src/mid.rs"].map(String::from)]
    );
}
