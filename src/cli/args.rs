//! The command line, parsed once into a [`Command`] from one table, [`COMMANDS`]: each row is a
//! command's name, synopsis, summary, text, options and exit status, and the function that turns
//! its arguments into a [`Command`]. `wsgate help`, every command's usage (`wsgate CMD --help`,
//! `wsgate help CMD`), the usage errors (`serv` → did you mean `serve`?) and the dispatch all read
//! that table. Arguments are `OsString`s: a path stays a path whatever its bytes, and text that is
//! not UTF-8 where text is needed is a usage error naming the argument. Pure: `main` runs the
//! command and maps errors to exit codes (usage: 2).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::admin::Filter;
use crate::cli::client::{self, Credential, Input};
use crate::cli::passwd;
use crate::config::suggest;

/// Where `serve` and the commands look for the config when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/wsgate/wsgate.ini";

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
        action: passwd::Action,
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
    Client(client::Options),
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

/// One option a command takes.
struct Opt {
    /// `--config`.
    long: &'static str,
    /// `-c`, if it has a one-letter spelling.
    short: Option<&'static str>,
    /// The value's name in the usage (`FILE`); `None` for a flag.
    value: Option<&'static str>,
    /// One line for the usage's option list.
    help: &'static str,
}

/// One command: everything `help`, the usage errors and the parser know about it.
struct Spec {
    name: &'static str,
    /// Other spellings of the command itself (`--help`, `-V`).
    aliases: &'static [&'static str],
    /// One line per form, what follows `wsgate NAME` in the usage.
    synopsis: &'static [&'static str],
    /// The line `wsgate help` shows.
    summary: &'static str,
    /// The usage's text between the synopsis and the options.
    about: &'static str,
    options: &'static [Opt],
    /// The usage's last line, after `exit status: `.
    exit: &'static str,
    /// The command the parsed arguments ask for, or what is wrong with them.
    build: fn(&Args) -> Result<Command, String>,
}

const CONFIG: Opt = Opt {
    long: "--config",
    short: Some("-c"),
    value: Some("FILE"),
    help: "the config file (default /etc/wsgate/wsgate.ini)",
};

const USER_FILTER: Opt = Opt {
    long: "--user",
    short: None,
    value: Some("USER"),
    help: "USER's connections (`-`: anonymous ones)",
};

const PATH_FILTER: Opt = Opt {
    long: "--path",
    short: None,
    value: Some("PATH"),
    help: "connections on PATH (`/chat/*`: every path under /chat/)",
};

const SESSION_FILTER: Opt = Opt {
    long: "--session",
    short: None,
    value: Some("ID"),
    help: "the connection(s) of session ID",
};

/// Every command, in the order `wsgate help` lists them.
const COMMANDS: &[Spec] = &[
    Spec {
        name: "serve",
        aliases: &[],
        synopsis: &["[FILE | --config FILE] [--log-level LEVEL]"],
        summary: "run the server",
        about: "\
Runs the server on the config FILE (default /etc/wsgate/wsgate.ini) until SIGTERM or SIGINT;
SIGHUP reloads the config, users, tokens and certificate.",
        options: &[
            Opt {
                help: "the config file (or give it as the only argument)",
                ..CONFIG
            },
            Opt {
                long: "--log-level",
                short: None,
                value: Some("LEVEL"),
                help: "off, error, warn, info, debug or trace (default: [log] level)",
            },
        ],
        exit: "0 after a clean shutdown, 2 for a configuration error, 1 for a runtime fault",
        build: build_serve,
    },
    Spec {
        name: "check-config",
        aliases: &[],
        synopsis: &["[FILE | --config FILE]"],
        summary: "validate a config file and exit (like nginx -t)",
        about: "\
Loads the config FILE (default /etc/wsgate/wsgate.ini), its users, tokens and session key files,
its certificate and key (paired as `serve` pairs them), and tries to bind each listen address,
as `serve` would; prints warnings about access rules that cannot work and set-ups that are not
safe, and exits. Without $CREDENTIALS_DIRECTORY, credential: paths are read from the config's
directory, where the packaged unit's LoadCredential= takes them from.",
        options: &[Opt {
            help: "the config file (or give it as the only argument)",
            ..CONFIG
        }],
        exit: "0 if the server would start with it, 2 with the first error (file, line and key)",
        build: build_check_config,
    },
    Spec {
        name: "check-access",
        aliases: &[],
        synopsis: &["[--config FILE] USER PATH"],
        summary: "what a user may do on a path, and which rule decides it",
        about: "\
Explains, without a server, what USER (`-` for a client without credentials) gets when it asks
for PATH: the channel that serves it, the roles that let it subscribe and publish, the status.",
        options: &[CONFIG],
        exit: "0, or 2 if the config cannot be loaded",
        build: build_check_access,
    },
    Spec {
        name: "passwd",
        aliases: &[],
        synopsis: &["[--min-length N] FILE USER", "--delete FILE USER"],
        summary: "add a user, change a password, or remove a user",
        about: "\
Adds USER to the users FILE or changes the password (Argon2id). The password is read from the
terminal without echo, or as one line from stdin; never from the command line. The file is
rewritten atomically, mode 0600. A running server picks the change up by itself within a second
(see reload_check_interval), or at once on SIGHUP (`systemctl reload wsgate`).",
        options: &[
            Opt {
                long: "--min-length",
                short: None,
                value: Some("N"),
                help: "refuse a password shorter than N characters (default 8)",
            },
            Opt {
                long: "--delete",
                short: None,
                value: None,
                help: "remove USER instead",
            },
        ],
        exit: "0, or 2 (the file or the input was refused)",
        build: build_passwd,
    },
    Spec {
        name: "token",
        aliases: &[],
        synopsis: &[
            "add [--config FILE] USER [--name NAME]",
            "list [--config FILE] [USER]",
            "revoke [--config FILE] USER NAME",
        ],
        summary: "add, list or revoke API tokens",
        about: "\
API tokens for devices and services. `add` prints a new token once (only its SHA-256 is stored
in the tokens file); `list` shows names and hash prefixes; `revoke` removes one. A running server
picks the change up by itself within a second (see reload_check_interval), or at once on SIGHUP
(`systemctl reload wsgate`).",
        options: &[
            CONFIG,
            Opt {
                long: "--name",
                short: None,
                value: Some("NAME"),
                help: "the new token's name (`token add` only)",
            },
        ],
        exit: "0, or 2",
        build: build_token,
    },
    Spec {
        name: "cert",
        aliases: &[],
        synopsis: &["[--name NAME]... [--days N] [--force] DIR"],
        summary: "write a self-signed certificate for this host (LAN use, no domain)",
        about: "\
Writes DIR/wsgate.crt and DIR/wsgate.key (mode 0600): a self-signed certificate for localhost,
127.0.0.1, ::1, this host's name and NAME.local, and every --name given (host names or IP
addresses), valid for N days (default 825). Point [tls] cert and key at them. Clients must be told
to trust the certificate; its SHA-256 fingerprint is printed so they can check it.",
        options: &[
            Opt {
                long: "--name",
                short: None,
                value: Some("NAME"),
                help: "another host name or address the certificate is for (repeatable)",
            },
            Opt {
                long: "--days",
                short: None,
                value: Some("N"),
                help: "validity in days, 1 to 3650 (default 825, the most Apple devices accept)",
            },
            Opt {
                long: "--force",
                short: None,
                value: None,
                help: "replace existing files",
            },
        ],
        exit: "0, or 2",
        build: build_cert,
    },
    Spec {
        name: "connections",
        aliases: &[],
        synopsis: &["[--config FILE] [--user USER] [--path PATH] [--session ID]"],
        summary: "list open connections (through the admin endpoint)",
        about: "\
Asks the running server's admin endpoint ([admin] listen in the config FILE, default
/etc/wsgate/wsgate.ini; with [admin] token_file's bearer token) for its open connections and
prints them as JSON, one object per line: user, auth method, path, channel mode, peer address,
since (Unix time), messages and bytes in and out, session id. The filters narrow the list.",
        options: &[CONFIG, USER_FILTER, PATH_FILTER, SESSION_FILTER],
        exit: "0, 2 for a config without [admin] listen, 1 if the server cannot be asked",
        build: build_connections,
    },
    Spec {
        name: "disconnect",
        aliases: &[],
        synopsis: &["[--config FILE] [--user USER] [--path PATH] [--session ID]"],
        summary: "close matching connections with 1008 (through the admin endpoint)",
        about: "\
Asks the running server's admin endpoint to close every connection matching all the given
filters (at least one) with close code 1008 and the reason `disconnected by admin`, and prints
how many it is closing there (each is gone within a second). With [cluster] on, every other
instance closes its matching connections too. Closing does not revoke a credential: remove the user or token to keep them
out.",
        options: &[CONFIG, USER_FILTER, PATH_FILTER, SESSION_FILTER],
        exit: "0, 2 for a usage or config error, 1 if the server cannot be asked",
        build: build_disconnect,
    },
    Spec {
        name: "client",
        aliases: &[],
        synopsis: &[
            "[--user NAME [--password-file FILE] | --token-file FILE | --session-file FILE]
                     [--save-session FILE] [--ca FILE] [--origin ORIGIN]
                     [--send FILE | --no-send] URL",
        ],
        summary: "connect to a wss:// (or ws://) channel: print what arrives, send what is typed",
        about: "\
Connects to URL (wss://HOST[:PORT]/PATH, or ws:// for a plaintext listener), prints every
message that arrives on stdout, one per line, and sends each line of stdin (or of --send FILE)
as a message: text, or binary for a line that is not UTF-8. When the input ends it closes the connection (1000) and exits once the
server has answered, so `echo hi | wsgate client … wss://host:8443/echo` prints `hi`.

Credentials are never arguments. With --user, the password is read from --password-file (its
first line), else from the environment variable WSGATE_PASSWORD, else asked on the terminal
without echo. An API token, or a session token (what --save-session wrote, or a browser's
__Host-wsgate_session cookie), is read from --token-file or --session-file, else from WSGATE_TOKEN
or WSGATE_SESSION; with none of these the client connects without credentials.

The server's certificate is checked against --ca FILE, else the system's roots (SSL_CERT_FILE,
or /etc/ssl/certs). Every refusal is said on stderr with its status, reason and Retry-After.

A server that stops answering (frozen, its host gone) ends the run with exit 1 and the deadline
named: 10 s for the connect, TLS handshake and 101 together; 10 s in which the socket takes
nothing of what is sent; 20 s without a frame from the server, then a ping and 10 s more; 10 s
for the server to answer the close.",
        options: &[
            Opt {
                long: "--user",
                short: Some("-u"),
                value: Some("NAME"),
                help: "log in as NAME with a password",
            },
            Opt {
                long: "--password-file",
                short: None,
                value: Some("FILE"),
                help: "read the password from FILE's first line",
            },
            Opt {
                long: "--token-file",
                short: None,
                value: Some("FILE"),
                help: "an API token (wsg_…) from FILE",
            },
            Opt {
                long: "--session-file",
                short: None,
                value: Some("FILE"),
                help: "a session token (s1.…) from FILE",
            },
            Opt {
                long: "--save-session",
                short: None,
                value: Some("FILE"),
                help: "write the session the server issued to FILE (0600)",
            },
            Opt {
                long: "--ca",
                short: None,
                value: Some("FILE"),
                help: "trust the certificates in FILE (PEM) instead of the system's",
            },
            Opt {
                long: "--origin",
                short: None,
                value: Some("ORIGIN"),
                help: "send `Origin: ORIGIN` (for a server that requires one)",
            },
            Opt {
                long: "--send",
                short: None,
                value: Some("FILE"),
                help: "send FILE's lines instead of stdin's",
            },
            Opt {
                long: "--no-send",
                short: Some("-n"),
                value: None,
                help: "only print what arrives; stdin is not read",
            },
        ],
        exit: "
  0  the connection ended with 1000 (its close, or the answer to ours)
  1  the connection, its TLS or its handshake failed, or it was lost without a close
  2  a usage error, or a file, the terminal or the URL could not be used
  3  refused with 401: the credential was not accepted
  4  refused with 403: the Origin is not allowed, or no role lets this client subscribe
  5  refused with 404: no channel serves the path
  6  refused with 429 or 503: try again after Retry-After
  7  refused with another status
  8  closed by the server with a code other than 1000 (the code and reason are said)",
        build: build_client,
    },
    Spec {
        name: "help",
        aliases: &["--help", "-h"],
        synopsis: &["[COMMAND]"],
        summary: "this list, or one command's usage (wsgate help CMD)",
        about: "Lists the commands, or shows COMMAND's usage (the same as `wsgate COMMAND --help`).",
        options: &[],
        exit: "0, or 2 for an unknown command",
        build: build_help,
    },
    Spec {
        name: "version",
        aliases: &["--version", "-V"],
        synopsis: &[""],
        summary: "print the version",
        about: "Prints `wsgate VERSION`.",
        options: &[],
        exit: "0",
        build: |_| Ok(Command::Version),
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

impl Spec {
    /// The command's usage: synopsis, text, options and exit status.
    fn usage(&self) -> String {
        let mut out = String::new();
        for (i, form) in self.synopsis.iter().enumerate() {
            let lead = if i == 0 { "usage:" } else { "      " };
            out.push_str(format!("{lead} wsgate {} {form}", self.name).trim_end());
            out.push('\n');
        }
        out.push('\n');
        out.push_str(self.about);
        out.push('\n');
        if !self.options.is_empty() {
            out.push_str("\noptions:\n");
            for o in self.options {
                let mut label = o.short.map_or_else(String::new, |s| format!("{s}, "));
                label.push_str(o.long);
                if let Some(v) = o.value {
                    label.push(' ');
                    label.push_str(v);
                }
                out.push_str(&format!("  {label:<24}{}\n", o.help));
            }
        }
        out.push_str(&format!("\nexit status: {}", self.exit));
        out
    }

    fn option(&self, spelled: &str) -> Option<&'static Opt> {
        let options: &'static [Opt] = self.options;
        options
            .iter()
            .find(|o| o.long == spelled || o.short == Some(spelled))
    }
}

/// The row for `name` (or one of its aliases).
fn spec(name: &str) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|c| c.name == name || c.aliases.contains(&name))
}

/// Parses the arguments after the program name.
///
/// # Errors
/// A [`UsageError`] naming what is wrong (with a "did you mean" where one is near).
pub fn parse(args: &[OsString]) -> Result<Command, UsageError> {
    let Some((first, rest)) = args.split_first() else {
        return Err(UsageError {
            message: "no command given".into(),
            usage: overview(),
        });
    };
    let Some(spec) = first.to_str().and_then(spec) else {
        let shown = shown(first);
        return Err(UsageError {
            message: format!(
                "unknown command \"{shown}\"{}",
                suggest::hint(&shown, COMMANDS.iter().map(|c| c.name))
            ),
            usage: overview(),
        });
    };
    let fail = |message: String| UsageError {
        message: format!("{}: {message}", spec.name),
        usage: spec.usage(),
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help(spec.usage()));
    }
    let args = Args::read(spec, rest).map_err(fail)?;
    (spec.build)(&args).map_err(fail)
}

/// A command's arguments: its options (either `--opt value` or `--opt=value`, anywhere) and the
/// rest, in order. `--` ends the options.
struct Args {
    options: Vec<(&'static Opt, Option<OsString>)>,
    positional: Vec<OsString>,
}

impl Args {
    fn read(spec: &Spec, rest: &[OsString]) -> Result<Args, String> {
        let mut args = Args {
            options: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = rest.iter();
        while let Some(arg) = it.next() {
            let bytes = arg.as_bytes();
            if bytes == b"--" {
                args.positional.extend(it.cloned());
                break;
            }
            if bytes == b"-" || !bytes.starts_with(b"-") {
                args.positional.push(arg.clone());
                continue;
            }
            let (flag, inline) = match bytes.iter().position(|&b| b == b'=') {
                Some(i) => (&bytes[..i], Some(OsStr::from_bytes(&bytes[i + 1..]))),
                None => (bytes, None),
            };
            let flag = String::from_utf8_lossy(flag);
            let Some(opt) = spec.option(&flag) else {
                let names = spec.options.iter().map(|o| o.long);
                return Err(format!(
                    "unknown option \"{flag}\"{}",
                    suggest::hint(&flag, names)
                ));
            };
            let value = match (opt.value, inline) {
                (Some(_), Some(v)) => Some(v.to_os_string()),
                (Some(_), None) => Some(
                    it.next()
                        .ok_or_else(|| format!("{} needs a value", opt.long))?
                        .clone(),
                ),
                (None, Some(_)) => return Err(format!("{} takes no value", opt.long)),
                (None, None) => None,
            };
            args.options.push((opt, value));
        }
        Ok(args)
    }

    /// The value of option `long`, if given (once).
    fn value(&self, long: &str) -> Result<Option<&OsStr>, String> {
        let mut found = self.options.iter().filter(|(o, _)| o.long == long);
        let first = found.next().and_then(|(_, v)| v.as_deref());
        if found.next().is_some() {
            return Err(format!("{long} given twice"));
        }
        Ok(first)
    }

    /// The value of option `long` as text.
    fn text(&self, long: &str) -> Result<Option<String>, String> {
        self.value(long)?.map(|v| text(v, long)).transpose()
    }

    fn path(&self, long: &str) -> Result<Option<PathBuf>, String> {
        Ok(self.value(long)?.map(PathBuf::from))
    }

    fn flag(&self, long: &str) -> bool {
        self.options.iter().any(|(o, _)| o.long == long)
    }

    /// `--config FILE`, else the default.
    fn config(&self) -> Result<PathBuf, String> {
        Ok(self
            .path("--config")?
            .unwrap_or_else(|| DEFAULT_CONFIG.into()))
    }

    /// The config as `--config FILE` or as the only argument (`serve`, `check-config`).
    fn config_or_argument(&self) -> Result<PathBuf, String> {
        let config = match (self.path("--config")?, self.positional.as_slice()) {
            (Some(c), []) => c,
            (None, [p]) => PathBuf::from(p),
            (None, []) => DEFAULT_CONFIG.into(),
            (Some(_), [p, ..]) => {
                return Err(format!(
                    "unexpected argument \"{}\" (the config is already given with --config)",
                    shown(p)
                ));
            }
            (None, [_, p, ..]) => return Err(format!("unexpected argument \"{}\"", shown(p))),
        };
        Ok(config)
    }

    /// No positional argument.
    fn none(&self) -> Result<(), String> {
        match self.positional.first() {
            Some(p) => Err(format!("unexpected argument \"{}\"", shown(p))),
            None => Ok(()),
        }
    }

    /// Exactly `N` positional arguments, or `missing` as the error.
    fn exactly<const N: usize>(&self, missing: &str) -> Result<[&OsStr; N], String> {
        let all: Vec<&OsStr> = self.positional.iter().map(OsString::as_os_str).collect();
        <[&OsStr; N]>::try_from(all).map_err(|_| missing.to_string())
    }

    /// The positional arguments, each as text.
    fn words(&self) -> Result<Vec<String>, String> {
        self.positional
            .iter()
            .map(|p| text(p, "argument"))
            .collect()
    }

    /// The connection filters of `connections` and `disconnect`.
    fn filter(&self) -> Result<Filter, String> {
        self.none()?;
        Ok(Filter {
            user: self.text("--user")?,
            session: self.text("--session")?,
            path: self.text("--path")?,
        })
    }
}

/// `value` as text, or an error naming `what` and showing the bytes that are not UTF-8.
fn text(value: &OsStr, what: &str) -> Result<String, String> {
    value
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{what} \"{}\" is not UTF-8 text", shown(value)))
}

/// An argument for an error line: its text, with each byte that is not UTF-8 as `\xNN`.
fn shown(value: &OsStr) -> String {
    let mut out = String::new();
    for chunk in value.as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// The log levels `--log-level` accepts.
const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

fn build_serve(args: &Args) -> Result<Command, String> {
    let config = args.config_or_argument()?;
    let log_level = match args.text("--log-level")? {
        None => None,
        Some(v) => Some(log::LevelFilter::from_str(&v).map_err(|_| {
            format!(
                "unknown log level {v:?}{}; one of {}",
                suggest::hint(&v, LOG_LEVELS.iter().copied()),
                LOG_LEVELS.join(", ")
            )
        })?),
    };
    Ok(Command::Serve { config, log_level })
}

fn build_check_config(args: &Args) -> Result<Command, String> {
    Ok(Command::CheckConfig {
        config: args.config_or_argument()?,
    })
}

fn build_check_access(args: &Args) -> Result<Command, String> {
    let [user, path] = args.exactly("needs USER and PATH")?;
    Ok(Command::CheckAccess {
        config: args.config()?,
        user: text(user, "USER")?,
        path: text(path, "PATH")?,
    })
}

fn build_passwd(args: &Args) -> Result<Command, String> {
    let action = match (args.flag("--delete"), args.text("--min-length")?) {
        (true, Some(_)) => return Err("--min-length applies to a password, not --delete".into()),
        (true, None) => passwd::Action::Delete,
        (false, None) => passwd::Action::Set {
            min_length: passwd::MIN_PASSWORD_LEN,
        },
        (false, Some(n)) => passwd::Action::Set {
            min_length: n
                .parse()
                .map_err(|_| format!("--min-length {n:?} is not a number of characters"))?,
        },
    };
    let [file, user] = args.exactly("needs FILE and USER")?;
    Ok(Command::Passwd {
        file: file.into(),
        user: text(user, "USER")?,
        action,
    })
}

fn build_token(args: &Args) -> Result<Command, String> {
    const ACTIONS: [&str; 3] = ["add", "list", "revoke"];
    let config = args.config()?;
    let name = args.text("--name")?;
    let words = args.words()?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    if name.is_some() && words.first() != Some(&"add") {
        return Err("--name goes with `token add`".into());
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
        [verb, ..] if !ACTIONS.contains(verb) => Err(format!(
            "unknown action {verb:?}{}; one of add, list, revoke",
            suggest::hint(verb, ACTIONS)
        )),
        _ => Err("needs add USER, list [USER] or revoke USER NAME".into()),
    }
}

fn build_cert(args: &Args) -> Result<Command, String> {
    let [dir] = args.exactly("needs the directory DIR to write into")?;
    let days = match args.text("--days")? {
        None => 825,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|d| (1..=3650).contains(d))
            .ok_or_else(|| format!("--days {v:?}: a number of days, 1 to 3650"))?,
    };
    let names = args
        .options
        .iter()
        .filter(|(o, _)| o.long == "--name")
        .filter_map(|(_, v)| v.as_deref())
        .map(|v| text(v, "--name"))
        .collect::<Result<_, _>>()?;
    Ok(Command::Cert {
        dir: dir.into(),
        names,
        days,
        force: args.flag("--force"),
    })
}

fn build_connections(args: &Args) -> Result<Command, String> {
    Ok(Command::Connections {
        filter: args.filter()?,
        config: args.config()?,
    })
}

fn build_disconnect(args: &Args) -> Result<Command, String> {
    let filter = args.filter()?;
    if filter == Filter::default() {
        return Err("name the connections to close: --user, --path or --session".into());
    }
    Ok(Command::Disconnect {
        config: args.config()?,
        filter,
    })
}

fn build_client(args: &Args) -> Result<Command, String> {
    let [url] = args.exactly("needs the URL to connect to (wss://HOST:PORT/PATH)")?;
    let url = text(url, "URL")?;
    let password_file = args.path("--password-file")?;
    let given = [
        args.text("--user")?.map(|user| Credential::Password {
            user,
            file: password_file.clone(),
        }),
        args.path("--token-file")?.map(Credential::TokenFile),
        args.path("--session-file")?.map(Credential::SessionFile),
    ];
    let mut given = given.into_iter().flatten();
    let credential = given.next().unwrap_or(Credential::FromEnvironment);
    if given.next().is_some() {
        return Err("give one of --user, --token-file and --session-file".into());
    }
    if password_file.is_some() && !matches!(credential, Credential::Password { .. }) {
        return Err("--password-file goes with --user NAME".into());
    }
    let input = match (args.path("--send")?, args.flag("--no-send")) {
        (Some(_), true) => return Err("give --send FILE or --no-send, not both".into()),
        (Some(file), false) => Input::File(file),
        (None, true) => Input::Nothing,
        (None, false) => Input::Stdin,
    };
    Ok(Command::Client(client::Options {
        url,
        credential,
        save_session: args.path("--save-session")?,
        ca: args.path("--ca")?,
        origin: args.text("--origin")?,
        input,
    }))
}

fn build_help(args: &Args) -> Result<Command, String> {
    match args.positional.as_slice() {
        [] => Ok(Command::Help(overview())),
        [name] => {
            let shown = shown(name);
            match name.to_str().and_then(spec) {
                Some(spec) => Ok(Command::Help(spec.usage())),
                None => Err(format!(
                    "unknown command \"{shown}\"{}",
                    suggest::hint(&shown, COMMANDS.iter().map(|c| c.name))
                )),
            }
        }
        [_, extra, ..] => Err(format!("unexpected argument \"{}\"", shown(extra))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Command, UsageError> {
        let args: Vec<OsString> = line.split_whitespace().map(OsString::from).collect();
        parse(&args)
    }

    fn message(line: &str) -> String {
        parse_str(line).unwrap_err().message
    }

    #[test]
    fn every_command_has_help_in_both_spellings() {
        for c in COMMANDS {
            for line in [format!("{} --help", c.name), format!("help {}", c.name)] {
                assert_eq!(parse_str(&line), Ok(Command::Help(c.usage())), "{line}");
            }
            assert!(c.usage().starts_with(&format!("usage: wsgate {}", c.name)));
            assert!(overview().contains(&format!("  {:<14}{}\n", c.name, c.summary)));
            for o in c.options {
                assert!(c.usage().contains(o.long), "{} lacks {}", c.name, o.long);
            }
        }
        // `-h` anywhere after the command, even with other arguments.
        assert!(matches!(
            parse_str("token add alice -h"),
            Ok(Command::Help(u)) if u.contains("token add")
        ));
        assert!(matches!(parse_str("help"), Ok(Command::Help(u)) if u == overview()));
        assert!(matches!(parse_str("--help"), Ok(Command::Help(u)) if u == overview()));
        assert!(matches!(parse_str("-h"), Ok(Command::Help(u)) if u == overview()));
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
        assert_eq!(parse_str("serve -- -odd.ini"), want("-odd.ini"));
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
    fn paths_keep_their_bytes_and_text_must_be_utf8() {
        let bad = OsStr::from_bytes(b"\xff.ini").to_os_string();
        let args =
            |list: &[&OsStr]| -> Vec<OsString> { list.iter().map(|a| a.to_os_string()).collect() };
        assert_eq!(
            parse(&args(&["check-config".as_ref(), &bad])),
            Ok(Command::CheckConfig {
                config: PathBuf::from(&bad)
            })
        );
        let mut with_eq = OsString::from("--config=");
        with_eq.push(&bad);
        assert_eq!(
            parse(&args(&["serve".as_ref(), &with_eq])),
            Ok(Command::Serve {
                config: PathBuf::from(&bad),
                log_level: None
            })
        );
        let e = parse(&args(&["check-access".as_ref(), &bad, "/p".as_ref()])).unwrap_err();
        assert_eq!(
            e.message,
            "check-access: USER \"\\xFF.ini\" is not UTF-8 text"
        );
        let e = parse(&args(&[&bad])).unwrap_err();
        assert_eq!(e.message, "unknown command \"\\xFF.ini\"");
        let e = parse(&args(&["disconnect".as_ref(), "--user".as_ref(), &bad])).unwrap_err();
        assert!(
            e.message.contains("--user \"\\xFF.ini\" is not UTF-8"),
            "{e:?}"
        );
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
        assert!(message("passwd --delete --min-length 3 f u").contains("not --delete"));
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
        assert_eq!(parse_str("version"), Ok(Command::Version));
    }

    #[test]
    fn client_takes_one_credential_source_and_never_a_secret() {
        let client = |line: &str| match parse_str(line) {
            Ok(Command::Client(o)) => o,
            other => panic!("{line}: {other:?}"),
        };
        let o = client("client --user demo --ca ca.pem --origin https://a.example wss://h/echo");
        assert_eq!(o.url, "wss://h/echo");
        assert_eq!(
            o.credential,
            Credential::Password {
                user: "demo".into(),
                file: None
            }
        );
        assert_eq!(o.ca, Some("ca.pem".into()));
        assert_eq!(o.origin.as_deref(), Some("https://a.example"));
        assert_eq!(o.input, Input::Stdin);
        let o = client("client -n --token-file t wss://h/x");
        assert_eq!(o.credential, Credential::TokenFile("t".into()));
        assert_eq!(o.input, Input::Nothing);
        let o = client("client --session-file s --send lines.txt --save-session n wss://h/x");
        assert_eq!(o.save_session, Some("n".into()));
        assert_eq!(o.credential, Credential::SessionFile("s".into()));
        assert_eq!(o.input, Input::File("lines.txt".into()));
        assert_eq!(
            client("client wss://h/x").credential,
            Credential::FromEnvironment
        );
        assert!(message("client --user a --token-file t wss://h/x").contains("give one of"));
        assert!(message("client --password-file p wss://h/x").contains("goes with --user"));
        assert!(message("client --send f -n wss://h/x").contains("not both"));
        assert!(message("client").contains("needs the URL"));
        assert!(message("client --password secret wss://h/x").contains("unknown option"));
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
