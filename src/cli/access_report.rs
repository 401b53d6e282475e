//! The text of `wsgate check-access`: [`explain`] answers what a client would get on a path and
//! why, and [`lint`] warns about roles and channels that are valid but probably not what was
//! meant. Report text over the pure decisions of [`crate::rules::acl`] and
//! [`crate::policy::route`]; kept here so the policy does not depend on its own reports.

use std::fmt::Write as _;

use crate::config::{ChannelConfig, Config, Mode, Overflow};
use crate::rules::acl::{Members, PathPattern, Role};
use crate::rules::acl::{Rule, evaluate};

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
        if channel.mode() == Mode::Echo
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
        channel.mode(),
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
    let outcome = match (access.can_subscribe(), access.can_publish(), channel.mode()) {
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
    use crate::rules::acl::tests::{CHANNELS, config, demo};

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
