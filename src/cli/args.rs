//! The command line, parsed once into a [`Command`]: every subcommand with its own usage text
//! (`wsgate CMD --help`, `wsgate help CMD`), and errors that say what was meant (`serv` → did you
//! mean `serve`?). Pure: `main` runs the command and maps errors to exit codes (usage: 2).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::admin::Filter;
use crate::cli::passwd;
use crate::config::suggest;

/// Where `serve` and the commands look for the config when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/wsgate/wsgate.ini";

/// One subcommand's name, one-line summary and usage text.
struct Help {
    name: &'static str,
    summary: &'static str,
    usage: &'static str,
}

/// Every subcommand, in the order `wsgate help` lists them.
const COMMANDS: &[Help] = &[
    Help {
        name: "serve",
        summary: "run the server",
        usage: "\
usage: wsgate serve [FILE | --config FILE] [--log-level LEVEL]

Runs the server on the config FILE (default /etc/wsgate/wsgate.ini) until SIGTERM or SIGINT;
SIGHUP reloads the config, users, tokens and certificate.

options:
  -c, --config FILE     the config file (or give it as the only argument)
  --log-level LEVEL     off, error, warn, info, debug or trace (default: [log] level)

exit status: 0 after a clean shutdown, 2 for a configuration error, 1 for a runtime fault",
    },
    Help {
        name: "check-config",
        summary: "validate a config file and exit (like nginx -t)",
        usage: "\
usage: wsgate check-config [FILE | --config FILE]

Loads the config FILE (default /etc/wsgate/wsgate.ini), its users, tokens and session key files,
its certificate and key (paired as `serve` pairs them), and tries to bind each listen address,
as `serve` would; prints warnings about access rules that cannot work and set-ups that are not
safe, and exits. Without $CREDENTIALS_DIRECTORY, credential: paths are read from the config's
directory, where the packaged unit's LoadCredential= takes them from.

exit status: 0 if the server would start with it, 2 with the first error (file, line and key)",
    },
    Help {
        name: "check-access",
        summary: "what a user may do on a path, and which rule decides it",
        usage: "\
usage: wsgate check-access [--config FILE] USER PATH

Explains, without a server, what USER (`-` for a client without credentials) gets when it asks
for PATH: the channel that serves it, the roles that let it subscribe and publish, the status.

exit status: 0, or 2 if the config cannot be loaded",
    },
    Help {
        name: "passwd",
        summary: "add a user, change a password, or remove a user",
        usage: "\
usage: wsgate passwd [--min-length N] FILE USER
       wsgate passwd --delete FILE USER

Adds USER to the users FILE or changes the password (Argon2id). The password is read from the
terminal without echo, or as one line from stdin; never from the command line. The file is
rewritten atomically, mode 0600. A running server picks the change up by itself within a second
(see reload_check_interval), or at once on SIGHUP (`systemctl reload wsgate`).

options:
  --min-length N  refuse a password shorter than N characters (default 8)

exit status: 0, or 2 (the file or the input was refused)",
    },
    Help {
        name: "token",
        summary: "add, list or revoke API tokens",
        usage: "\
usage: wsgate token add [--config FILE] USER [--name NAME]
       wsgate token list [--config FILE] [USER]
       wsgate token revoke [--config FILE] USER NAME

API tokens for devices and services. `add` prints a new token once (only its SHA-256 is stored
in the tokens file); `list` shows names and hash prefixes; `revoke` removes one. A running server
picks the change up by itself within a second (see reload_check_interval), or at once on SIGHUP
(`systemctl reload wsgate`).

exit status: 0, or 2",
    },
    Help {
        name: "cert",
        summary: "write a self-signed certificate for this host (LAN use, no domain)",
        usage: "\
usage: wsgate cert [--name NAME]... [--days N] [--force] DIR

Writes DIR/wsgate.crt and DIR/wsgate.key (mode 0600): a self-signed certificate for localhost,
127.0.0.1, ::1, this host's name and NAME.local, and every --name given (host names or IP
addresses), valid for N days (default 825). Point [tls] cert and key at them. Clients must be told
to trust the certificate; its SHA-256 fingerprint is printed so they can check it.

options:
  --name NAME   another host name or address the certificate is for (repeatable)
  --days N      validity in days, 1 to 3650 (default 825, the most Apple devices accept)
  --force       replace existing files

exit status: 0, or 2",
    },
    Help {
        name: "connections",
        summary: "list open connections (through the admin endpoint)",
        usage: "\
usage: wsgate connections [--config FILE] [--user USER] [--path PATH] [--session ID]

Asks the running server's admin endpoint ([admin] listen in the config FILE, default
/etc/wsgate/wsgate.ini; with [admin] token_file's bearer token) for its open connections and
prints them as JSON, one object per line: user, auth method, path, channel mode, peer address,
since (Unix time), messages and bytes in and out, session id. USER `-` means anonymous
connections; PATH ending in `/*` matches every path under it.

options:
  -c, --config FILE     the config file
  --user USER           only USER's connections
  --path PATH           only connections on PATH
  --session ID          only the connection(s) of session ID

exit status: 0, 2 for a config without [admin] listen, 1 if the server cannot be asked",
    },
    Help {
        name: "disconnect",
        summary: "close matching connections with 1008 (through the admin endpoint)",
        usage: "\
usage: wsgate disconnect [--config FILE] [--user USER] [--path PATH] [--session ID]

Asks the running server's admin endpoint to close every connection matching all the given
filters (at least one) with close code 1008 and the reason `disconnected by admin`, and prints
how many it is closing there (each is gone within a second). With [cluster] on, every other instance closes its matching
connections too. Closing does not revoke a credential: remove the user or token to keep them
out.

options:
  -c, --config FILE     the config file
  --user USER           USER's connections (`-`: anonymous ones)
  --path PATH           connections on PATH (`/chat/*`: every path under /chat/)
  --session ID          the connection(s) of session ID

exit status: 0, 2 for a usage or config error, 1 if the server cannot be asked",
    },
    Help {
        name: "help",
        summary: "this list, or one command's usage (wsgate help CMD)",
        usage: "usage: wsgate help [COMMAND]",
    },
    Help {
        name: "version",
        summary: "print the version",
        usage: "usage: wsgate --version",
    },
];

/// `wsgate help`: every command with its summary.
pub fn overview() -> String {
    let mut out = String::from(
        "wsgate: a small, secure WebSocket (wss://) server\n\nusage: wsgate COMMAND [ARGS]\n\ncommands:\n",
    );
    for c in COMMANDS {
        out.push_str(&format!("  {:<14}{}\n", c.name, c.summary));
    }
    out.push_str("\n`wsgate help COMMAND` or `wsgate COMMAND --help` shows one command's usage.\n");
    out
}

/// One command's usage text.
fn usage_of(name: &str) -> Option<&'static str> {
    COMMANDS.iter().find(|c| c.name == name).map(|c| c.usage)
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve {
        config: PathBuf,
        log_level: Option<log::LevelFilter>,
    },
    CheckConfig {
        config: PathBuf,
    },
    Passwd {
        file: PathBuf,
        user: String,
        action: crate::cli::passwd::Action,
    },
    CheckAccess {
        config: PathBuf,
        user: String,
        path: String,
    },
    TokenAdd {
        config: PathBuf,
        user: String,
        name: Option<String>,
    },
    TokenList {
        config: PathBuf,
        user: Option<String>,
    },
    TokenRevoke {
        config: PathBuf,
        user: String,
        name: String,
    },
    Cert {
        dir: PathBuf,
        names: Vec<String>,
        days: u32,
        force: bool,
    },
    Connections {
        config: PathBuf,
        filter: Filter,
    },
    Disconnect {
        config: PathBuf,
        filter: Filter,
    },
    /// Print this text and exit 0 (`help`, `--help`).
    Help(String),
    Version,
}

/// A command line that cannot run: what is wrong, and the usage to show with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub message: String,
    /// The usage of the command it concerns, or the overview.
    pub usage: String,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wsgate: {}\n\n{}", self.message, self.usage)
    }
}

impl std::error::Error for UsageError {}

/// The options each command takes (the value-taking ones marked), for parsing and for hints.
fn options_of(command: &str) -> &'static [(&'static str, bool)] {
    match command {
        "serve" => &[("--config", true), ("-c", true), ("--log-level", true)],
        "check-config" | "check-access" => &[("--config", true), ("-c", true)],
        "passwd" => &[("--delete", false), ("--min-length", true)],
        "token" => &[("--config", true), ("-c", true), ("--name", true)],
        "cert" => &[("--name", true), ("--days", true), ("--force", false)],
        "connections" | "disconnect" => &[
            ("--config", true),
            ("-c", true),
            ("--user", true),
            ("--path", true),
            ("--session", true),
        ],
        _ => &[],
    }
}

/// The log levels `--log-level` accepts.
const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Parses the arguments after the program name.
///
/// # Errors
/// A [`UsageError`] naming what is wrong (with a "did you mean" where one is near).
pub fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(UsageError {
            message: "no command given".into(),
            usage: overview(),
        });
    };
    let cmd = cmd.as_str();
    match cmd {
        "help" | "--help" | "-h" => return help(rest),
        "version" | "--version" | "-V" => return Ok(Command::Version),
        _ => {}
    }
    let Some(usage) = usage_of(cmd) else {
        return Err(UsageError {
            message: format!(
                "unknown command {cmd:?}{}",
                suggest::hint(cmd, COMMANDS.iter().map(|c| c.name))
            ),
            usage: overview(),
        });
    };
    let fail = |message: String| UsageError {
        message: format!("{cmd}: {message}"),
        usage: usage.to_string(),
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help(usage.to_string()));
    }

    // Options anywhere, in either `--opt value` or `--opt=value` form; the rest positional.
    let known = options_of(cmd);
    let mut options: Vec<(&'static str, Option<String>)> = Vec::new();
    let mut positional: Vec<String> = Vec::new();
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        if arg == "-" || !arg.starts_with('-') {
            positional.push(arg.clone());
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let Some(&(name, takes_value)) = known.iter().find(|(n, _)| *n == flag) else {
            return Err(fail(format!(
                "unknown option {flag:?}{}",
                suggest::hint(flag, known.iter().map(|(n, _)| *n))
            )));
        };
        let value = if takes_value {
            match inline {
                Some(v) => Some(v),
                None => Some(
                    it.next()
                        .ok_or_else(|| fail(format!("{name} needs a value")))?
                        .clone(),
                ),
            }
        } else if inline.is_some() {
            return Err(fail(format!("{name} takes no value")));
        } else {
            None
        };
        options.push((name, value));
    }
    let value = |names: &[&str]| -> Result<Option<String>, UsageError> {
        let mut found = options.iter().filter(|(n, _)| names.contains(n));
        let first = found.next().and_then(|(_, v)| v.clone());
        if found.next().is_some() {
            return Err(fail(format!("{} given twice", names[0])));
        }
        Ok(first)
    };
    let flag = |name: &str| options.iter().any(|(n, _)| *n == name);
    let config = || -> Result<PathBuf, UsageError> {
        Ok(value(&["--config", "-c"])?.map_or_else(|| DEFAULT_CONFIG.into(), PathBuf::from))
    };
    let extra = |n: usize, positional: &[String]| match positional.get(n) {
        Some(p) => Err(fail(format!("unexpected argument {p:?}"))),
        None => Ok(()),
    };

    match cmd {
        "serve" | "check-config" => {
            let config = match (value(&["--config", "-c"])?, positional.first()) {
                (Some(c), None) => PathBuf::from(c),
                (None, Some(p)) => PathBuf::from(p),
                (None, None) => DEFAULT_CONFIG.into(),
                (Some(_), Some(p)) => {
                    return Err(fail(format!(
                        "unexpected argument {p:?} (the config is already given with --config)"
                    )));
                }
            };
            extra(1, &positional)?;
            if cmd == "check-config" {
                return Ok(Command::CheckConfig { config });
            }
            let log_level = match value(&["--log-level"])? {
                None => None,
                Some(v) => Some(log::LevelFilter::from_str(&v).map_err(|_| {
                    fail(format!(
                        "unknown log level {v:?}{}; one of {}",
                        suggest::hint(&v, LOG_LEVELS.iter().copied()),
                        LOG_LEVELS.join(", ")
                    ))
                })?),
            };
            Ok(Command::Serve { config, log_level })
        }
        "passwd" => {
            let min_length = value(&["--min-length"])?;
            let action = match (flag("--delete"), min_length) {
                (true, Some(_)) => {
                    return Err(fail(
                        "--min-length applies to a password, not --delete".into(),
                    ));
                }
                (true, None) => passwd::Action::Delete,
                (false, None) => passwd::Action::Set {
                    min_length: passwd::MIN_PASSWORD_LEN,
                },
                (false, Some(n)) => passwd::Action::Set {
                    min_length: n.parse().map_err(|_| {
                        fail(format!("--min-length {n:?} is not a number of characters"))
                    })?,
                },
            };
            match positional.as_slice() {
                [file, user] => Ok(Command::Passwd {
                    file: file.into(),
                    user: user.clone(),
                    action,
                }),
                _ => Err(fail("needs FILE and USER".into())),
            }
        }
        "check-access" => match positional.as_slice() {
            [user, path] => Ok(Command::CheckAccess {
                config: config()?,
                user: user.clone(),
                path: path.clone(),
            }),
            _ => Err(fail("needs USER and PATH".into())),
        },
        "token" => {
            let config = config()?;
            let name = value(&["--name"])?;
            let words: Vec<&str> = positional.iter().map(String::as_str).collect();
            if name.is_some() && words.first() != Some(&"add") {
                return Err(fail("--name goes with `token add`".into()));
            }
            match words.as_slice() {
                ["add", user] => Ok(Command::TokenAdd {
                    config,
                    user: user.to_string(),
                    name,
                }),
                ["list"] => Ok(Command::TokenList { config, user: None }),
                ["list", user] => Ok(Command::TokenList {
                    config,
                    user: Some(user.to_string()),
                }),
                ["revoke", user, name] => Ok(Command::TokenRevoke {
                    config,
                    user: user.to_string(),
                    name: name.to_string(),
                }),
                [verb, ..] if !["add", "list", "revoke"].contains(verb) => Err(fail(format!(
                    "unknown action {verb:?}{}; one of add, list, revoke",
                    suggest::hint(verb, ["add", "list", "revoke"])
                ))),
                _ => Err(fail(
                    "needs add USER, list [USER] or revoke USER NAME".into(),
                )),
            }
        }
        "cert" => {
            let [dir] = positional.as_slice() else {
                return Err(fail("needs the directory DIR to write into".into()));
            };
            let days = match value(&["--days"])? {
                None => 825,
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|d| (1..=3650).contains(d))
                    .ok_or_else(|| fail(format!("--days {v:?}: a number of days, 1 to 3650")))?,
            };
            let names = options
                .iter()
                .filter(|(n, _)| *n == "--name")
                .filter_map(|(_, v)| v.clone())
                .collect();
            Ok(Command::Cert {
                dir: dir.into(),
                names,
                days,
                force: flag("--force"),
            })
        }
        "connections" | "disconnect" => {
            extra(0, &positional)?;
            let filter = Filter {
                user: value(&["--user"])?,
                session: value(&["--session"])?,
                path: value(&["--path"])?,
            };
            let config = config()?;
            if cmd == "connections" {
                return Ok(Command::Connections { config, filter });
            }
            if filter == Filter::default() {
                return Err(fail(
                    "name the connections to close: --user, --path or --session".into(),
                ));
            }
            Ok(Command::Disconnect { config, filter })
        }
        _ => unreachable!("every command in COMMANDS is matched above"),
    }
}

/// `wsgate help [COMMAND]`.
fn help(rest: &[String]) -> Result<Command, UsageError> {
    match rest {
        [] => Ok(Command::Help(overview())),
        [name] => match usage_of(name) {
            Some(usage) => Ok(Command::Help(usage.to_string())),
            None => Err(UsageError {
                message: format!(
                    "help: unknown command {name:?}{}",
                    suggest::hint(name, COMMANDS.iter().map(|c| c.name))
                ),
                usage: overview(),
            }),
        },
        [_, extra, ..] => Err(UsageError {
            message: format!("help: unexpected argument {extra:?}"),
            usage: overview(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Command, UsageError> {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse(&args)
    }

    fn message(line: &str) -> String {
        parse_str(line).unwrap_err().message
    }

    #[test]
    fn every_command_has_help_in_both_spellings() {
        for c in COMMANDS {
            if c.name == "help" || c.name == "version" {
                continue;
            }
            for line in [format!("{} --help", c.name), format!("help {}", c.name)] {
                assert_eq!(
                    parse_str(&line),
                    Ok(Command::Help(c.usage.to_string())),
                    "{line}"
                );
            }
            assert!(
                c.usage.starts_with(&format!("usage: wsgate {}", c.name)) || c.name == "version"
            );
            assert!(overview().contains(c.name));
        }
        // `-h` anywhere after the command, even with other arguments.
        assert!(matches!(
            parse_str("token add alice -h"),
            Ok(Command::Help(u)) if u.contains("token add")
        ));
        assert!(matches!(parse_str("help"), Ok(Command::Help(u)) if u == overview()));
        assert!(matches!(parse_str("--help"), Ok(Command::Help(_))));
    }

    #[test]
    fn serve_takes_the_config_as_an_argument_or_an_option() {
        let want = |p: &str| {
            Ok(Command::Serve {
                config: p.into(),
                log_level: None,
            })
        };
        assert_eq!(parse_str("serve conf/x.ini"), want("conf/x.ini"));
        assert_eq!(parse_str("serve --config conf/x.ini"), want("conf/x.ini"));
        assert_eq!(parse_str("serve -c conf/x.ini"), want("conf/x.ini"));
        assert_eq!(parse_str("serve --config=conf/x.ini"), want("conf/x.ini"));
        assert_eq!(parse_str("serve"), want(DEFAULT_CONFIG));
        assert!(message("serve a.ini --config b.ini").contains("already given"));
        assert!(message("serve a.ini b.ini").contains("unexpected argument \"b.ini\""));
        assert!(message("serve --config a --config b").contains("given twice"));
        assert_eq!(
            parse_str("serve x.ini --log-level debug"),
            Ok(Command::Serve {
                config: "x.ini".into(),
                log_level: Some(log::LevelFilter::Debug)
            })
        );
    }

    #[test]
    fn mistakes_name_what_was_meant() {
        assert_eq!(
            message("serv"),
            "unknown command \"serv\" (did you mean `serve`?)"
        );
        assert_eq!(message("frobnicate"), "unknown command \"frobnicate\"");
        assert_eq!(
            message("serve --log-level debugg"),
            "serve: unknown log level \"debugg\" (did you mean `debug`?); one of off, error, warn, info, debug, trace"
        );
        assert_eq!(
            message("serve --confg x"),
            "serve: unknown option \"--confg\" (did you mean `--config`?)"
        );
        assert_eq!(
            message("token lsit"),
            "token: unknown action \"lsit\" (did you mean `list`?); one of add, list, revoke"
        );
        assert!(message("help serv").contains("did you mean `serve`?"));
        assert!(message("passwd onlyfile").contains("needs FILE and USER"));
        assert!(message("serve --config").contains("--config needs a value"));
        assert!(message("passwd --delete=yes f u").contains("takes no value"));
        assert!(message("token list --name x").contains("--name goes with `token add`"));
        assert_eq!(message(""), "no command given");
        // The error carries that command's usage, not the whole list.
        let e = parse_str("passwd x").unwrap_err();
        assert!(e.usage.starts_with("usage: wsgate passwd"), "{}", e.usage);
    }

    #[test]
    fn commands_parse_into_their_values() {
        assert_eq!(
            parse_str("passwd --delete users bob"),
            Ok(Command::Passwd {
                file: "users".into(),
                user: "bob".into(),
                action: passwd::Action::Delete
            })
        );
        assert_eq!(
            parse_str("passwd --min-length 1 users bob"),
            Ok(Command::Passwd {
                file: "users".into(),
                user: "bob".into(),
                action: passwd::Action::Set { min_length: 1 }
            })
        );
        assert_eq!(
            parse_str("check-access -c x.ini - /pub"),
            Ok(Command::CheckAccess {
                config: "x.ini".into(),
                user: "-".into(),
                path: "/pub".into()
            })
        );
        assert_eq!(
            parse_str("token add alice --name phone --config x.ini"),
            Ok(Command::TokenAdd {
                config: "x.ini".into(),
                user: "alice".into(),
                name: Some("phone".into())
            })
        );
        assert_eq!(
            parse_str("cert --name pi.lan --name 192.168.1.9 --days 30 /tmp/c"),
            Ok(Command::Cert {
                dir: "/tmp/c".into(),
                names: vec!["pi.lan".into(), "192.168.1.9".into()],
                days: 30,
                force: false
            })
        );
        assert!(message("cert --days 0 d").contains("1 to 3650"));
        assert!(message("cert --days 3651 d").contains("1 to 3650"));
        assert!(matches!(
            parse_str("cert --days 3650 d"),
            Ok(Command::Cert { days: 3650, .. })
        ));
        assert_eq!(parse_str("--version"), Ok(Command::Version));
    }

    #[test]
    fn connections_and_disconnect_take_filters() {
        assert_eq!(
            parse_str("connections"),
            Ok(Command::Connections {
                config: DEFAULT_CONFIG.into(),
                filter: Filter::default()
            })
        );
        assert_eq!(
            parse_str("connections -c x.ini --user alice --path /chat/*"),
            Ok(Command::Connections {
                config: "x.ini".into(),
                filter: Filter {
                    user: Some("alice".into()),
                    session: None,
                    path: Some("/chat/*".into())
                }
            })
        );
        assert_eq!(
            parse_str("disconnect --session=abc --config x.ini"),
            Ok(Command::Disconnect {
                config: "x.ini".into(),
                filter: Filter {
                    session: Some("abc".into()),
                    ..Filter::default()
                }
            })
        );
        assert!(message("disconnect").contains("name the connections to close"));
        assert!(message("disconnect -c x.ini").contains("name the connections to close"));
        assert!(message("disconnect alice").contains("unexpected argument \"alice\""));
        assert_eq!(
            message("disconnect --usr alice"),
            "disconnect: unknown option \"--usr\" (did you mean `--user`?)"
        );
        assert!(message("connections --user a --user b").contains("given twice"));
    }
}
