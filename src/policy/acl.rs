//! Access control: which role lets a client subscribe to or publish on a path, default deny.
//! Pure functions over the parsed [`Role`]s: no I/O, no logging; the caller turns a denial into
//! 403 (subscribe) or the channel's `on_forbidden` action (publish).
//!
//! Connecting to a channel, echo or broadcast, needs subscribe; sending any message needs
//! publish (so an echo channel is useful only with both). Whether a client without credentials
//! may reach a channel at all is the channel's `anonymous` key, checked by the caller; here such a
//! client has only the rights of the role named `anonymous`.

use std::fmt;
use std::fmt::Write as _;

use crate::config::{ChannelConfig, Config, Members, Mode, Overflow, PathPattern, Role};

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

/// `file:line: ` (or `file: `) for a message about something at `line` of `config`.
fn at(config: &Config, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}: ", config.source.display()),
        None => format!("{}: ", config.source.display()),
    }
}

/// Warnings about roles and channels that are valid but probably not what was meant: members
/// not in `user_names` (pass every name that can authenticate: users file, and token owners if
/// tokens name users), patterns that match no channel, channels no role can use. Each names the
/// role or channel and its line. Empty when all is well.
pub fn lint(config: &Config, user_names: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for role in &config.roles {
        let here = at(config, role.line);
        if let Members::Users(names) = &role.members {
            for name in names.iter().filter(|n| !user_names.contains(&n.as_str())) {
                out.push(format!(
                    "{here}[role:{}] members: `{name}` is not a known user",
                    role.name
                ));
            }
        }
        let anonymous = role.members == Members::Anonymous;
        for (key, patterns) in [("subscribe", &role.subscribe), ("publish", &role.publish)] {
            for p in patterns {
                let reachable = config
                    .channels
                    .iter()
                    .filter(|c| !anonymous || c.anonymous)
                    .any(|c| p.overlaps(&c.pattern));
                if !reachable {
                    let which = if anonymous {
                        "no channel with anonymous = true"
                    } else {
                        "no channel"
                    };
                    out.push(format!(
                        "{here}[role:{}] {key}: `{p}` matches {which}",
                        role.name
                    ));
                }
            }
        }
    }
    for channel in &config.channels {
        let here = at(config, channel.line);
        let name = &channel.pattern;
        let grants = |anonymous: bool, patterns: fn(&Role) -> &[PathPattern]| {
            config
                .roles
                .iter()
                .filter(|r| (r.members == Members::Anonymous) == anonymous)
                .any(|r| patterns(r).iter().any(|p| p.overlaps(&channel.pattern)))
        };
        let users_subscribe = grants(false, |r| &r.subscribe);
        let anon_subscribe = channel.anonymous && grants(true, |r| &r.subscribe);
        if !users_subscribe && !anon_subscribe {
            out.push(format!(
                "{here}[channel:{name}]: no role may subscribe to it, so every client gets 403"
            ));
            continue;
        }
        if channel.anonymous && !anon_subscribe {
            out.push(format!(
                "{here}[channel:{name}] anonymous: true, but the anonymous role grants no \
                 subscribe pattern for it, so clients without credentials get 403"
            ));
        }
        if channel.mode == Mode::Echo
            && !grants(false, |r| &r.publish)
            && !(channel.anonymous && grants(true, |r| &r.publish))
        {
            out.push(format!(
                "{here}[channel:{name}]: an echo channel, but no role may publish to it, \
                 so nothing can be echoed"
            ));
        }
    }
    out
}

/// What happens to a message a client sends without publish rights.
fn forbidden_outcome(channel: &ChannelConfig) -> &'static str {
    match channel.on_forbidden {
        Overflow::Close => "close the connection with 1008 \"publish not allowed\"",
        Overflow::Drop => "are dropped and counted",
    }
}

/// A grant or denial as one line.
fn describe(right: &str, rule: Option<&Rule>, config: &Config) -> String {
    match rule {
        Some(rule) => {
            let line = config
                .roles
                .iter()
                .find(|r| r.name == rule.role)
                .and_then(|r| r.line);
            match line {
                Some(line) => format!("{right}: allowed by {rule} (line {line})"),
                None => format!("{right}: allowed by {rule}"),
            }
        }
        None => format!("{right}: denied: no role grants it (default deny)"),
    }
}

/// A multi-line answer for `wsgate check-access`: the channel serving `path` (the query, if
/// any, is ignored), its mode and `anonymous` setting, the subscribe and publish decisions with
/// the rules behind them, and the outcome a real client would see (404, 401, 403 or 101 and
/// what then happens to its messages). Assumes the client's origin is allowed and its
/// credentials, if any, are valid: it checks only the path and the roles.
pub fn explain(config: &Config, user: Option<&str>, path: &str) -> String {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let mut out = String::new();
    let _ = writeln!(out, "path: {path}");
    let _ = match user {
        Some(name) => writeln!(out, "client: user `{name}`"),
        None => writeln!(out, "client: no credentials (anonymous)"),
    };
    let Ok(channel) = crate::policy::route(path, config) else {
        out.push_str("channel: none serves this path\n");
        out.push_str("outcome: 404 Not Found\n");
        return out;
    };
    let _ = writeln!(
        out,
        "channel: [channel:{}]{}, mode {}, clients without credentials {}",
        channel.pattern,
        channel
            .line
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default(),
        channel.mode,
        if channel.anonymous {
            "allowed (anonymous = true)"
        } else {
            "refused (anonymous = false)"
        }
    );
    if user.is_none() && !channel.anonymous {
        out.push_str(
            "outcome: 401 Unauthorized: this channel needs credentials (anonymous = false)\n",
        );
        return out;
    }
    let access = evaluate(&config.roles, user, path);
    let _ = writeln!(
        out,
        "{}",
        describe("subscribe", access.subscribe.as_ref(), config)
    );
    let _ = writeln!(
        out,
        "{}",
        describe("publish", access.publish.as_ref(), config)
    );
    let outcome = match (access.can_subscribe(), access.can_publish(), channel.mode) {
        (false, _, _) => "403 Forbidden: connecting needs subscribe".to_string(),
        (true, true, Mode::Echo) => "101 Switching Protocols: its messages are echoed back".into(),
        (true, true, Mode::Broadcast) => {
            "101 Switching Protocols: receives the channel's messages and may publish".into()
        }
        (true, false, Mode::Echo) => format!(
            "101 Switching Protocols, but echo needs publish: messages it sends {} \
             (on_forbidden = {})",
            forbidden_outcome(channel),
            channel.on_forbidden
        ),
        (true, false, Mode::Broadcast) => format!(
            "101 Switching Protocols: receives the channel's messages; messages it sends {} \
             (on_forbidden = {})",
            forbidden_outcome(channel),
            channel.on_forbidden
        ),
        (true, true, Mode::Proxy) => {
            "101 Switching Protocols once the backend has answered 101: messages go both ways"
                .into()
        }
        (true, false, Mode::Proxy) => format!(
            "101 Switching Protocols once the backend has answered 101: receives what the \
             backend sends; messages it sends {} (on_forbidden = {})",
            forbidden_outcome(channel),
            channel.on_forbidden
        ),
    };
    let _ = writeln!(out, "outcome: {outcome}");
    out.push_str("(assuming the origin is allowed and the credentials are valid)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A config with the given roles and channels after a fixed head; users file = Cargo.toml.
    fn config(body: &str) -> Config {
        let text = format!(
            "[tls]\nself_signed = true\ncert = /nonexistent/c.pem\nkey = /nonexistent/k.pem\n\
             [auth]\nusers_file = {}/Cargo.toml\n{body}",
            env!("CARGO_MANIFEST_DIR")
        );
        Config::parse(&text, Path::new("/tmp/acl-test.ini")).unwrap_or_else(|e| panic!("{e}"))
    }

    const CHANNELS: &str = "[channel:/echo]\nmode = echo\n\
         [channel:/chat/*]\nmode = broadcast\n\
         [channel:/news]\nmode = broadcast\nanonymous = true\non_forbidden = drop\n\
         [channel:/user/*]\nmode = broadcast\n\
         [channel:/inbox/*]\nmode = broadcast\n";

    fn demo() -> Config {
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
        use crate::config::ChannelPattern::{Exact, Prefix};
        let o =
            |p: &str, c: &crate::config::ChannelPattern| PathPattern::parse(p).unwrap().overlaps(c);
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
    fn lint_cases() {
        let c = demo();
        assert_eq!(lint(&c, &["alice", "bob", "carol"]), Vec::<String>::new());
        // Unknown members.
        assert_eq!(
            lint(&c, &["alice"]),
            vec!["/tmp/acl-test.ini:19: [role:ops] members: `carol` is not a known user"]
        );
        let c = config(
            "[channel:/echo]\nmode = echo\n\
             [channel:/chat/*]\nmode = broadcast\n\
             [channel:/open]\nmode = broadcast\nanonymous = true\n\
             [channel:/lonely]\nmode = broadcast\n\
             [role:r]\nmembers = *\nsubscribe = /echo, /chat/*, /open, /nowhere, /chat/\n\
             publish = /elsewhere/*\n\
             [role:anonymous]\nsubscribe = /echo\n",
        );
        let w = lint(&c, &[]);
        assert_eq!(
            w,
            vec![
                "/tmp/acl-test.ini:16: [role:r] subscribe: `/nowhere` matches no channel",
                "/tmp/acl-test.ini:16: [role:r] subscribe: `/chat/` matches no channel",
                "/tmp/acl-test.ini:16: [role:r] publish: `/elsewhere/*` matches no channel",
                "/tmp/acl-test.ini:20: [role:anonymous] subscribe: `/echo` matches no channel with anonymous = true",
                "/tmp/acl-test.ini:7: [channel:/echo]: an echo channel, but no role may publish to it, so nothing can be echoed",
                "/tmp/acl-test.ini:11: [channel:/open] anonymous: true, but the anonymous role grants no subscribe pattern for it, so clients without credentials get 403",
                "/tmp/acl-test.ini:14: [channel:/lonely]: no role may subscribe to it, so every client gets 403",
            ],
            "{w:#?}"
        );
        // With no roles at all, every channel is unusable.
        let c = config(CHANNELS);
        assert_eq!(lint(&c, &[]).len(), 5);
        // An anonymous channel used only by the anonymous role is fine.
        let c = config(
            "[channel:/open]\nmode = broadcast\nanonymous = true\n\
             [role:anonymous]\nsubscribe = /open\n",
        );
        assert_eq!(lint(&c, &[]), Vec::<String>::new());
    }

    #[test]
    fn explain_outcomes() {
        let c = demo();
        let x = explain(&c, Some("alice"), "/nowhere");
        assert_eq!(
            x,
            "path: /nowhere\nclient: user `alice`\nchannel: none serves this path\noutcome: 404 Not Found\n"
        );
        assert!(explain(&c, Some("alice"), "/chat/../echo").contains("404"));
        let x = explain(&c, Some("alice"), "/chat/lobby?user=alice&pass=x");
        assert_eq!(
            x,
            "path: /chat/lobby\n\
             client: user `alice`\n\
             channel: [channel:/chat/*] (line 9), mode broadcast, clients without credentials refused (anonymous = false)\n\
             subscribe: allowed by [role:users] pattern `/chat/*` (line 23)\n\
             publish: allowed by [role:users] pattern `/chat/*` (line 23)\n\
             outcome: 101 Switching Protocols: receives the channel's messages and may publish\n\
             (assuming the origin is allowed and the credentials are valid)\n"
        );
        let x = explain(&c, Some("alice"), "/echo");
        assert!(
            x.contains("outcome: 101 Switching Protocols: its messages are echoed back\n"),
            "{x}"
        );
        // Denied subscribe: 403.
        let x = explain(&c, Some("alice"), "/user/bob/feed");
        assert!(
            x.contains("subscribe: denied: no role grants it (default deny)\n"),
            "{x}"
        );
        assert!(
            x.contains("outcome: 403 Forbidden: connecting needs subscribe\n"),
            "{x}"
        );
        // Subscribe without publish, on_forbidden = drop.
        let x = explain(&c, Some("alice"), "/news");
        assert!(x.contains("publish: denied"), "{x}");
        assert!(
            x.contains("clients without credentials allowed (anonymous = true)"),
            "{x}"
        );
        assert!(x.contains("outcome: 101 Switching Protocols: receives the channel's messages; messages it sends are dropped and counted (on_forbidden = drop)\n"), "{x}");
        // Anonymous: allowed on /news by the anonymous role, 401 elsewhere.
        let x = explain(&c, None, "/news");
        assert!(x.contains("client: no credentials (anonymous)\n"), "{x}");
        assert!(
            x.contains("subscribe: allowed by [role:anonymous] pattern `/news` (line 27)"),
            "{x}"
        );
        let x = explain(&c, None, "/echo");
        assert!(
            x.ends_with(
                "outcome: 401 Unauthorized: this channel needs credentials (anonymous = false)\n"
            ),
            "{x}"
        );
        // Echo without publish.
        let c = config(&format!(
            "{CHANNELS}[role:r]\nmembers = *\nsubscribe = /echo\n"
        ));
        let x = explain(&c, Some("alice"), "/echo");
        assert!(x.contains("outcome: 101 Switching Protocols, but echo needs publish: messages it sends close the connection with 1008 \"publish not allowed\" (on_forbidden = close)\n"), "{x}");
    }
}
