//! `wsgate`: parse the command line, load the config, run the command, map errors to exit codes
//! (0 clean, 2 config or usage, 1 runtime fault). `RestartPreventExitStatus=2` in the systemd unit
//! then stops restart loops on a bad config.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use wsgate::cli::args::{self as cli, Command};
use wsgate::cli::commands;
use wsgate::config::Config;
use wsgate::server::Server;

/// What a change to the users or tokens file needs before clients see it.
const APPLY_HINT: &str = "a running wsgate, in the foreground or as a service, applies this by \
itself within a second ([tls] reload_check_interval), or at once on SIGHUP (`systemctl reload \
wsgate`); under the packaged unit, whose users and tokens are credentials copied at start, run \
`systemctl restart wsgate`";

/// Where the Debian package keeps its configuration; `wsgate cert` there fits its config.
const PACKAGED_DIR: &str = "/etc/wsgate";

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help(text) => {
            println!("{}", text.trim_end());
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
                    eprintln!("{APPLY_HINT}");
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
                    eprintln!("revoked token \"{name}\" of \"{user}\"; {APPLY_HINT}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Passwd { file, user, action } => {
            match wsgate::cli::passwd::run(&file, &user, action) {
                Ok(()) => {
                    eprintln!("{APPLY_HINT}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wsgate passwd: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve { config, log_level } => serve(&config, log_level),
        Command::Connections { config, filter } => {
            print_or_fail(commands::connections(&config, &filter))
        }
        Command::Disconnect { config, filter } => {
            print_or_fail(commands::disconnect(&config, &filter))
        }
        Command::Client(options) => match wsgate::cli::client::run(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wsgate client: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Cert {
            dir,
            names,
            days,
            force,
        } => cert(&dir, names, days, force),
    }
}

/// `wsgate cert DIR`: a self-signed pair for this host's names and any given.
fn cert(dir: &Path, extra: Vec<String>, days: u32, force: bool) -> ExitCode {
    let mut names = wsgate::pipeline::certs::host_names();
    for name in extra {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let (cert, key) = (dir.join("wsgate.crt"), dir.join("wsgate.key"));
    match wsgate::pipeline::certs::write_self_signed(&cert, &key, &names, days, force) {
        Ok(made) => {
            println!(
                "wrote {} and {} (mode 0600)\nnames: {}\nvalid until: {}\nsha256 fingerprint: {}",
                cert.display(),
                key.display(),
                names.join(", "),
                made.expires,
                made.fingerprint
            );
            if dir == Path::new(PACKAGED_DIR) {
                println!(
                    "the packaged {PACKAGED_DIR}/wsgate.ini names them already (cert = {}, key = \
                     credential:wsgate.key, which the unit loads from {}); `systemctl restart \
                     wsgate` serves them",
                    cert.display(),
                    key.display()
                );
            } else {
                println!(
                    "set [tls] cert = {} and key = {} (and self_signed = false)",
                    cert.display(),
                    key.display()
                );
            }
            println!(
                "clients must be told to trust this certificate, e.g. `wsgate client --ca {} \
                 wss://…`, `SSL_CERT_FILE={} websocat wss://…` or by importing it",
                cert.display(),
                cert.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wsgate cert: {e}");
            ExitCode::from(2)
        }
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
    ExitCode::from(if e.is_runtime() { 1 } else { 2 })
}

fn serve(path: &Path, log_level: Option<log::LevelFilter>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let level = log_level.unwrap_or(config.log_level);
    if let Err(e) = wsgate::ops::logging::init(level) {
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
    if log_level.is_some() {
        // The command line's level outlasts reloads: the file's `[log] level` is not applied.
        server.pin_log_level();
    }
    if let Err(e) = wsgate::server::signals::handle(server.control()) {
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
