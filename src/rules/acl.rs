//! Access control: which role lets a client subscribe to or publish on a path, default deny.
//! Pure functions over the parsed [`Role`]s: no I/O, no logging; the caller turns a denial into
//! 403 (subscribe) or the channel's `on_forbidden` action (publish).
//!
//! Connecting to a channel, echo or broadcast, needs subscribe; sending any message needs
//! publish (so an echo channel is useful only with both). Whether a client without credentials
//! may reach a channel at all is the channel's `anonymous` key, checked by the caller; here such a
//! client has only the rights of the role named `anonymous`.
//!
//! Also the vocabulary the config parses into and the rules read: [`Role`], its [`Members`], the
//! [`PathPattern`]s it grants (with `%u`) and the [`ChannelPattern`] of a `[channel:PATH]`, which
//! share the path rules of [`check_path`]. Nothing here imports the config.

use std::fmt;

/// A channel path as written in the section name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelPattern {
    /// `[channel:/echo]` serves exactly `/echo`.
    Exact(String),
    /// `[channel:/chat/*]` serves `/chat/` followed by one or more characters; stored as `/chat/`.
    /// Each distinct path is its own broadcast group.
    Prefix(String),
}

impl fmt::Display for ChannelPattern {
    /// As written in the section name: `/echo`, `/chat/*`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelPattern::Exact(p) => f.write_str(p),
            ChannelPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// `[role:NAME]`: a set of users and the paths they may subscribe and publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// NAME: 1 to 64 of `A-Z a-z 0-9 _ . -`. The role named `anonymous` is special.
    pub name: String,
    pub members: Members,
    /// `subscribe`: paths whose channel a member may connect to and receive from.
    pub subscribe: Vec<PathPattern>,
    /// `publish`: paths a member may send messages to.
    pub publish: Vec<PathPattern>,
    /// The section header's line in the config file (`None` if built in code).
    pub line: Option<usize>,
}

/// `members` of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// The role named `anonymous`, which has no `members` key: clients without credentials,
    /// on channels with `anonymous = true`.
    Anonymous,
    /// `members = *`: every authenticated user.
    Everyone,
    /// `members = alice, bob`: these users (valid user names, no repeats).
    Users(Vec<String>),
}

impl Members {
    /// Whether the role applies to `user` (`None`: a client without credentials).
    pub fn includes(&self, user: Option<&str>) -> bool {
        match (self, user) {
            (Members::Anonymous, None) => true,
            (Members::Everyone, Some(_)) => true,
            (Members::Users(names), Some(user)) => names.iter().any(|n| n == user),
            _ => false,
        }
    }
}

/// A path pattern in a role: an exact path (`/echo`) or a prefix (`/chat/*`, which matches
/// `/chat/x` and `/chat/x/y` but not `/chat/` or `/chat`, like a channel pattern), where `%u`
/// stands for the user's own name (`/inbox/%u`, `/user/%u/*`, `/u-%u/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// As written.
    text: String,
    /// The part that must match (for a prefix, up to and including the last `/`), split at `%u`.
    parts: Vec<PatternPart>,
    prefix: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternPart {
    /// Never empty.
    Literal(String),
    /// `%u`.
    User,
}

/// The placeholder for the user's own name in a role's path pattern.
pub const USER_PLACEHOLDER: &str = "%u";

impl PathPattern {
    /// Parses a pattern with the character rules of channel paths, plus `%u`.
    ///
    /// # Errors
    /// A lower-case message saying what is wrong with `text`.
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        let (body, prefix) = check_path(text, "pattern")?;
        let mut parts = Vec::new();
        for (i, literal) in body.split(USER_PLACEHOLDER).enumerate() {
            if i > 0 {
                parts.push(PatternPart::User);
            }
            if !literal.is_empty() {
                parts.push(PatternPart::Literal(literal.to_string()));
            }
        }
        Ok(PathPattern {
            text: text.to_string(),
            parts,
            prefix,
        })
    }

    /// Whether `path` matches, with `%u` standing for `user`. A pattern with `%u` never matches
    /// for `None` (no credentials), for an empty name, `.` or `..`, or a name containing `/`:
    /// the name is substituted literally and must fill whole characters of the path.
    pub fn matches(&self, path: &str, user: Option<&str>) -> bool {
        let mut expanded = String::with_capacity(path.len());
        for part in &self.parts {
            match part {
                PatternPart::Literal(l) => expanded.push_str(l),
                PatternPart::User => match user {
                    Some(u) if !u.is_empty() && u != "." && u != ".." && !u.contains('/') => {
                        expanded.push_str(u);
                    }
                    _ => return false,
                },
            }
        }
        if self.prefix {
            path.len() > expanded.len() && path.starts_with(&expanded)
        } else {
            path == expanded
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is a `/*` prefix pattern.
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    /// Whether the pattern contains `%u`.
    pub fn has_user(&self) -> bool {
        self.parts.contains(&PatternPart::User)
    }

    /// Whether some path could match both this pattern (for some user name, `%u` standing for any
    /// non-empty text without `/`) and `channel`. Used by [`crate::cli::access_report::lint`].
    pub fn overlaps(&self, channel: &ChannelPattern) -> bool {
        use Fit::{GlobPrefix, SPrefix};
        match (self.prefix, channel) {
            (false, ChannelPattern::Exact(c)) => fit(&self.parts, c, Fit::Full),
            // Some instance is `c` followed by at least one more character.
            (false, ChannelPattern::Prefix(c)) => fit(&self.parts, c, SPrefix { proper: true }),
            // Some instance followed by at least one character is `c`.
            (true, ChannelPattern::Exact(c)) => fit(&self.parts, c, GlobPrefix { proper: true }),
            // Some instance and `c` are prefix-comparable; extend the longer by one character.
            (true, ChannelPattern::Prefix(c)) => {
                fit(&self.parts, c, GlobPrefix { proper: false })
                    || fit(&self.parts, c, SPrefix { proper: false })
            }
        }
    }
}

/// How a glob (literals and `%u` = one or more characters other than `/`) must fit a string `s`.
#[derive(Clone, Copy)]
enum Fit {
    /// Some instance equals `s`.
    Full,
    /// Some instance is a prefix of `s` (a proper one if `proper`).
    GlobPrefix { proper: bool },
    /// `s` is a prefix of some instance (a proper one if `proper`).
    SPrefix { proper: bool },
}

fn fit(parts: &[PatternPart], s: &str, how: Fit) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return match how {
            Fit::Full => s.is_empty(),
            Fit::GlobPrefix { proper } => !proper || !s.is_empty(),
            Fit::SPrefix { proper } => s.is_empty() && !proper,
        };
    };
    if s.is_empty() {
        // Every remaining part produces at least one character.
        return matches!(how, Fit::SPrefix { .. });
    }
    match first {
        PatternPart::Literal(l) => {
            if let Some(after) = s.strip_prefix(l.as_str()) {
                fit(rest, after, how)
            } else {
                matches!(how, Fit::SPrefix { .. }) && l.starts_with(s)
            }
        }
        PatternPart::User => {
            let run = s.find('/').unwrap_or(s.len());
            if run == s.len() && matches!(how, Fit::SPrefix { .. }) {
                // `%u` can take all of `s` and more.
                return true;
            }
            (1..=run)
                .filter(|&k| s.is_char_boundary(k))
                .any(|k| fit(rest, &s[k..], how))
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The role that applies to clients without credentials.
pub const ANONYMOUS_ROLE: &str = "anonymous";

/// The rules shared by channel paths and role patterns (`what` names which, for messages):
/// returns the part before a trailing `*` (so `/chat/` for `/chat/*`) and whether it was there.
pub(crate) fn check_path<'p>(path: &'p str, what: &str) -> Result<(&'p str, bool), String> {
    if !path.starts_with('/') {
        return Err(format!("{what} `{path}` must start with `/`"));
    }
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{what} `{path}` contains {c:?}; only visible ascii, no spaces"
        ));
    }
    if let Some(c) = path.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(format!("{what} `{path}` must not contain `{c}`"));
    }
    let (prefix, is_prefix) = match path.strip_suffix("/*") {
        Some(head) => (&path[..=head.len()], true),
        None => (path, false),
    };
    if prefix.contains('*') {
        return Err(format!(
            "{what} `{path}`: `*` is only allowed as a single trailing `/*` (e.g. /chat/*)"
        ));
    }
    Ok((prefix, is_prefix))
}

/// The rule that granted a right: the role and its pattern as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub role: String,
    pub pattern: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[role:{}] pattern `{}`", self.role, self.pattern)
    }
}

/// A client's rights on one path. `None` means denied (no role grants it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub subscribe: Option<Rule>,
    pub publish: Option<Rule>,
}

impl Access {
    /// May connect to the path's channel and receive its messages.
    pub fn can_subscribe(&self) -> bool {
        self.subscribe.is_some()
    }

    /// May send messages on the path.
    pub fn can_publish(&self) -> bool {
        self.publish.is_some()
    }
}

/// The rights of `user` (`None`: no credentials) on `path`. An authenticated user gets the roles
/// whose members are `*` or name them; a client without credentials gets only the `anonymous`
/// role. The first role in file order with a matching pattern (and its first such pattern) is the
/// rule reported. Does not check whether `path` is served, nor the channel's `anonymous` key.
pub fn evaluate(roles: &[Role], user: Option<&str>, path: &str) -> Access {
    let grant = |patterns: fn(&Role) -> &[PathPattern]| {
        roles
            .iter()
            .filter(|r| r.members.includes(user))
            .find_map(|r| {
                patterns(r)
                    .iter()
                    .find(|p| p.matches(path, user))
                    .map(|p| Rule {
                        role: r.name.clone(),
                        pattern: p.as_str().to_string(),
                    })
            })
    };
    Access {
        subscribe: grant(|r| &r.subscribe),
        publish: grant(|r| &r.publish),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    /// A config with the given roles and channels after a fixed head; users file = Cargo.toml.
    pub(crate) fn config(body: &str) -> Config {
        let text = format!(
            "[tls]\nself_signed = true\ncert = /nonexistent/c.pem\nkey = /nonexistent/k.pem\n\
             [auth]\nusers_file = {}/Cargo.toml\n{body}",
            env!("CARGO_MANIFEST_DIR")
        );
        Config::parse(&text, Path::new("/tmp/acl-test.ini")).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) const CHANNELS: &str = "[channel:/echo]\nmode = echo\n\
         [channel:/chat/*]\nmode = broadcast\n\
         [channel:/news]\nmode = broadcast\nanonymous = true\non_forbidden = drop\n\
         [channel:/user/*]\nmode = broadcast\n\
         [channel:/inbox/*]\nmode = broadcast\n";

    pub(crate) fn demo() -> Config {
        config(&format!(
            "{CHANNELS}\
             [role:ops]\nmembers = carol\nsubscribe = /chat/*, /news\npublish = /chat/*, /news\n\
             [role:users]\nmembers = *\nsubscribe = /echo, /chat/*, /news, /user/%u/*, /inbox/%u\n\
             publish = /echo, /chat/*, /user/%u/*\n\
             [role:anonymous]\nsubscribe = /news\n"
        ))
    }

    fn rule(role: &str, pattern: &str) -> Option<Rule> {
        Some(Rule {
            role: role.into(),
            pattern: pattern.into(),
        })
    }

    #[test]
    fn default_deny() {
        let c = config(CHANNELS);
        let a = evaluate(&c.roles, Some("alice"), "/echo");
        assert_eq!(a, Access::default());
        assert!(!a.can_subscribe() && !a.can_publish());
        assert_eq!(evaluate(&c.roles, None, "/news"), Access::default());
    }

    #[test]
    fn allow_and_deny() {
        let c = demo();
        let a = evaluate(&c.roles, Some("alice"), "/echo");
        assert_eq!(a.subscribe, rule("users", "/echo"));
        assert_eq!(a.publish, rule("users", "/echo"));
        assert!(a.can_subscribe() && a.can_publish());
        // Subscribe without publish.
        let a = evaluate(&c.roles, Some("alice"), "/news");
        assert_eq!(a.subscribe, rule("users", "/news"));
        assert_eq!(a.publish, None);
        // Nothing matches.
        assert_eq!(
            evaluate(&c.roles, Some("alice"), "/other"),
            Access::default()
        );
        // Prefix patterns follow the channel rule: not the bare prefix.
        assert!(evaluate(&c.roles, Some("alice"), "/chat/a/b").can_publish());
        assert!(!evaluate(&c.roles, Some("alice"), "/chat/").can_subscribe());
        assert!(!evaluate(&c.roles, Some("alice"), "/chat").can_subscribe());
    }

    #[test]
    fn members_star_and_lists() {
        let c = config(&format!(
            "{CHANNELS}[role:a]\nmembers = alice, bob\nsubscribe = /echo\n\
             [role:all]\nmembers = *\npublish = /echo\n"
        ));
        for user in ["alice", "bob"] {
            let a = evaluate(&c.roles, Some(user), "/echo");
            assert_eq!(a.subscribe, rule("a", "/echo"), "{user}");
            assert_eq!(a.publish, rule("all", "/echo"), "{user}");
        }
        let a = evaluate(&c.roles, Some("carol"), "/echo");
        assert_eq!(a.subscribe, None);
        assert_eq!(a.publish, rule("all", "/echo"));
        // `*` is every authenticated user, not anonymous clients.
        assert_eq!(evaluate(&c.roles, None, "/echo"), Access::default());
    }

    #[test]
    fn user_placeholder_matches_own_name_only() {
        let c = demo();
        let alice = |p: &str| evaluate(&c.roles, Some("alice"), p);
        assert_eq!(
            alice("/user/alice/x").subscribe,
            rule("users", "/user/%u/*")
        );
        assert!(alice("/user/alice/x/y").can_publish());
        assert!(!alice("/user/bob/x").can_subscribe());
        assert!(!alice("/user/alice").can_subscribe());
        assert!(!alice("/user/alice/").can_subscribe());
        assert!(!alice("/user/alicex/y").can_subscribe());
        assert_eq!(alice("/inbox/alice").subscribe, rule("users", "/inbox/%u"));
        assert!(!alice("/inbox/alice").can_publish());
        assert!(!alice("/inbox/bob").can_subscribe());
        assert!(!alice("/inbox/alice/x").can_subscribe());
        assert!(evaluate(&c.roles, Some("bob"), "/inbox/bob").can_subscribe());
        // Never for a client without credentials.
        assert_eq!(evaluate(&c.roles, None, "/inbox/alice"), Access::default());
        // Part of a segment; odd names never match.
        let p = PathPattern::parse("/u-%u/*").unwrap();
        assert!(p.matches("/u-alice/x", Some("alice")));
        assert!(!p.matches("/u-alice/x", Some("bob")));
        assert!(!p.matches("/u-alice/x", None));
        let p = PathPattern::parse("/inbox/%u").unwrap();
        for odd in ["", ".", "..", "a/b"] {
            assert!(!p.matches(&format!("/inbox/{odd}"), Some(odd)), "{odd:?}");
        }
        assert!(
            PathPattern::parse("/a/%u/b/%u")
                .unwrap()
                .matches("/a/x/b/x", Some("x"))
        );
        assert!(
            !PathPattern::parse("/a/%u/b/%u")
                .unwrap()
                .matches("/a/x/b/y", Some("x"))
        );
    }

    #[test]
    fn anonymous_role() {
        let c = demo();
        let a = evaluate(&c.roles, None, "/news");
        assert_eq!(a.subscribe, rule("anonymous", "/news"));
        assert_eq!(a.publish, None);
        assert_eq!(evaluate(&c.roles, None, "/echo"), Access::default());
        // The anonymous role does not apply to authenticated users.
        let c = config(&format!(
            "{CHANNELS}[role:anonymous]\nsubscribe = /news\npublish = /news\n"
        ));
        assert_eq!(
            evaluate(&c.roles, Some("alice"), "/news"),
            Access::default()
        );
        assert!(evaluate(&c.roles, None, "/news").can_publish());
    }

    #[test]
    fn first_match_is_reported() {
        let c = demo();
        // carol is in ops (first) and users; ops is reported.
        let a = evaluate(&c.roles, Some("carol"), "/chat/x");
        assert_eq!(a.subscribe, rule("ops", "/chat/*"));
        assert_eq!(a.publish, rule("ops", "/chat/*"));
        // ops grants /news publish to carol only.
        assert_eq!(
            evaluate(&c.roles, Some("carol"), "/news").publish,
            rule("ops", "/news")
        );
        // ops has no /echo: the next role answers.
        assert_eq!(
            evaluate(&c.roles, Some("carol"), "/echo").subscribe,
            rule("users", "/echo")
        );
        // Within a role, the first matching pattern.
        let c = config(&format!(
            "{CHANNELS}[role:r]\nmembers = *\nsubscribe = /chat/*, /chat/x, /chat/x/*\n"
        ));
        assert_eq!(
            evaluate(&c.roles, Some("a"), "/chat/x").subscribe,
            rule("r", "/chat/*")
        );
        assert_eq!(
            rule("r", "/chat/*").unwrap().to_string(),
            "[role:r] pattern `/chat/*`"
        );
    }

    #[test]
    fn overlaps() {
        use ChannelPattern::{Exact, Prefix};
        let o = |p: &str, c: &ChannelPattern| PathPattern::parse(p).unwrap().overlaps(c);
        let e = |s: &str| Exact(s.into());
        let pre = |s: &str| Prefix(s.into());
        // exact vs exact
        assert!(o("/echo", &e("/echo")));
        assert!(!o("/echo", &e("/echo2")));
        assert!(o("/inbox/%u", &e("/inbox/alice")));
        assert!(!o("/inbox/%u", &e("/inbox/")));
        assert!(!o("/inbox/%u", &e("/inbox/a/b")));
        assert!(o("/a/%u/b", &e("/a/x/b")));
        // exact pattern vs prefix channel
        assert!(o("/chat/x", &pre("/chat/")));
        assert!(!o("/chat/", &pre("/chat/")));
        assert!(!o("/chat", &pre("/chat/")));
        assert!(o("/chat/%u", &pre("/chat/")));
        assert!(!o("/c%u", &pre("/chat/")));
        assert!(o("/c%u/x", &pre("/chat/")));
        assert!(!o("/c%u", &pre("/c/")));
        assert!(o("/%u/x", &pre("/ab/")));
        // prefix pattern vs exact channel
        assert!(o("/chat/*", &e("/chat/x")));
        assert!(!o("/chat/*", &e("/chat/")));
        assert!(!o("/chat/*", &e("/chat")));
        assert!(o("/user/%u/*", &e("/user/bob/feed")));
        assert!(!o("/user/%u/*", &e("/user/bob")));
        // prefix vs prefix
        assert!(o("/chat/*", &pre("/chat/")));
        assert!(o("/chat/vip/*", &pre("/chat/")));
        assert!(o("/*", &pre("/chat/")));
        assert!(o("/chat/*", &pre("/")));
        assert!(!o("/news/*", &pre("/chat/")));
        assert!(o("/user/%u/*", &pre("/user/")));
        assert!(o("/user/%u/*", &pre("/user/bob/x/")));
        assert!(!o("/user/%u/*", &pre("/users/")));
    }

    #[test]
    fn members_include() {
        assert!(Members::Anonymous.includes(None));
        assert!(!Members::Anonymous.includes(Some("a")));
        assert!(Members::Everyone.includes(Some("a")));
        assert!(!Members::Everyone.includes(None));
        assert!(!Members::Users(vec!["a".into()]).includes(Some("b")));
    }
}
