//! `wsgate`: parse the command line, load the config, run the command, map errors to exit codes
//! (0 clean, 2 config or usage, 1 runtime fault). `RestartPreventExitStatus=2` in the systemd unit
//! then stops restart loops on a bad config.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use wsgate::commands;
use wsgate::config::Config;
use wsgate::server::Server;

const DEFAULT_CONFIG: &str = "/etc/wsgate/wsgate.ini";

const USAGE: &str = "\
usage:
  wsgate serve [--config FILE] [--log-level LEVEL]   run the server (default config /etc/wsgate/wsgate.ini)
  wsgate check-config [--config] FILE                validate a config file and exit (like nginx -t)
  wsgate passwd FILE USER                            add a user or change a password (read from the
                                                     terminal without echo, or one line from stdin)
  wsgate passwd --delete FILE USER                   remove a user
  wsgate check-access [--config FILE] USER PATH      what USER (- for anonymous) may do on PATH, and why
  wsgate token add [--config FILE] USER [--name N]   create an API token for USER (printed once)
  wsgate token list [--config FILE] [USER]           list API tokens (names and hash prefixes)
  wsgate token revoke [--config FILE] USER NAME      revoke an API token
  wsgate --version";

enum Command {
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
        delete: bool,
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
    Help,
    Version,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let (cmd, rest) = args.split_first().ok_or("no command given")?;
    let mut config = None;
    let mut log_level = None;
    let mut delete = false;
    let mut name = None;
    let mut positional = Vec::new();
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                config = Some(PathBuf::from(it.next().ok_or("--config needs a file")?))
            }
            "--log-level" => {
                let v = it.next().ok_or("--log-level needs a level")?;
                log_level = Some(
                    log::LevelFilter::from_str(v)
                        .map_err(|_| format!("unknown log level {v:?}"))?,
                );
            }
            "--delete" => delete = true,
            "--name" => name = Some(it.next().ok_or("--name needs a value")?.clone()),
            s if s.starts_with('-') && s != "-" => return Err(format!("unknown option {s:?}")),
            s => positional.push(s.to_string()),
        }
    }
    let no_extra = |n: usize, positional: &[String]| {
        if positional.len() > n {
            Err(format!("unexpected argument {:?}", positional[n]))
        } else {
            Ok(())
        }
    };
    match cmd.as_str() {
        "serve" => {
            no_extra(0, &positional)?;
            Ok(Command::Serve {
                config: config.unwrap_or_else(|| DEFAULT_CONFIG.into()),
                log_level,
            })
        }
        "check-config" => {
            let config = match (config, positional.first()) {
                (Some(c), None) => c,
                (None, Some(p)) => PathBuf::from(p),
                (None, None) => DEFAULT_CONFIG.into(),
                (Some(_), Some(p)) => return Err(format!("unexpected argument {p:?}")),
            };
            no_extra(1, &positional)?;
            Ok(Command::CheckConfig { config })
        }
        "passwd" => match positional.as_slice() {
            [file, user] => Ok(Command::Passwd {
                file: file.into(),
                user: user.clone(),
                delete,
            }),
            _ => Err("passwd needs FILE and USER".into()),
        },
        "check-access" => match positional.as_slice() {
            [user, path] => Ok(Command::CheckAccess {
                config: config.unwrap_or_else(|| DEFAULT_CONFIG.into()),
                user: user.clone(),
                path: path.clone(),
            }),
            _ => Err("check-access needs USER and PATH".into()),
        },
        "token" => {
            let config = config.unwrap_or_else(|| DEFAULT_CONFIG.into());
            match positional
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
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
                _ => Err("token needs add USER, list [USER] or revoke USER NAME".into()),
            }
        }
        "help" | "--help" | "-h" => Ok(Command::Help),
        "version" | "--version" | "-V" => Ok(Command::Version),
        other => Err(format!("unknown command {other:?}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsgate: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("wsgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => print_or_fail(commands::check_config(&config)),
        Command::CheckAccess { config, user, path } => {
            print_or_fail(commands::check_access(&config, &user, &path))
        }
        Command::TokenAdd { config, user, name } => {
            match commands::token_add(&config, &user, name.as_deref()) {
                Ok(token) => {
                    eprintln!("token for \"{user}\" (shown once; only its SHA-256 is stored):");
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::TokenList { config, user } => {
            print_or_fail(commands::token_list(&config, user.as_deref()))
        }
        Command::TokenRevoke { config, user, name } => {
            match commands::token_revoke(&config, &user, &name) {
                Ok(()) => {
                    eprintln!("revoked token \"{name}\" of \"{user}\"");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Passwd { file, user, delete } => match wsgate::passwd::run(&file, &user, delete) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wsgate passwd: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config, log_level } => serve(&config, log_level),
    }
}

/// Prints a command's output, or its error with exit code 2.
fn print_or_fail(result: Result<String, commands::CommandError>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &commands::CommandError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

fn serve(path: &std::path::Path, log_level: Option<log::LevelFilter>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let level = log_level.unwrap_or(config.log_level);
    // rustls logs every failed handshake at warn; at our info level keep it to errors.
    let rustls_level = if level >= log::LevelFilter::Debug {
        level
    } else {
        log::LevelFilter::Error
    };
    if let Err(e) = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_module_level("rustls", rustls_level)
        .with_module_level("tungstenite", level.min(log::LevelFilter::Info))
        .init()
    {
        eprintln!("wsgate: cannot start logging: {e}");
        return ExitCode::from(1);
    }
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(if e.is_config() { 2 } else { 1 });
        }
    };
    if let Err(e) = wsgate::signals::handle(server.control()) {
        log::error!("cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    match server.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("listener failed: {e}");
            ExitCode::from(1)
        }
    }
}
