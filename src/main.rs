//! The `hotdog` command: parses the command line, loads the configuration, and maps what
//! [`hotdog::server::run`] returns to an exit code. Nothing else.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

use hotdog::base::runtime;
use hotdog::cli::{Cli, Command, SpoolAction};
use hotdog::control::server;
use hotdog::offline::{replay, ruletest};
use hotdog_stages::config::{self, Config};

/// Exit code for a runtime failure (a port that is taken, ...).
const EXIT_FAILURE: u8 = 1;
/// Exit code for a configuration that is not valid.
const EXIT_CONFIG: u8 = 2;
/// Exit code when shutdown could not deliver everything it had read.
const EXIT_UNDELIVERED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let file = cli.config.display().to_string();
    if let Some(Command::Spool {
        action: SpoolAction::Inspect { dir: Some(dir) },
    }) = &cli.command
    {
        return inspect(dir);
    }
    if let Some(asked) = cli.command.as_ref().and_then(|c| c.asks_status()) {
        if let Some(url) = &asked.url {
            return ask_running(&cli, url, asked.token_file.as_deref(), asked.ca.as_deref());
        }
    }
    let config = match Config::load(&cli.config, &hotdog::control::outside()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("hotdog: {} error(s) in {file}", errors.0.len());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check {
        return check(&config, &file, cli.strict);
    }
    if let Some(Command::Test { files, junit }) = &cli.command {
        return run_tests(&config, files, junit.as_deref());
    }
    if let Some(Command::Spool { .. }) = &cli.command {
        return match &config.global.spool {
            Some(spool) => inspect(&spool.path),
            None => {
                eprintln!("hotdog: {file} has no global.spool; give the spool's directory");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    if let Some(asked) = cli.command.as_ref().and_then(|c| c.asks_status()) {
        let Some(status) = &config.global.status else {
            eprintln!("hotdog: {file} has no global.status; give the status server with --url");
            return ExitCode::from(EXIT_CONFIG);
        };
        // A server on every address is reached on this host's loopback.
        let host = match status.address.as_str() {
            "0.0.0.0" => "127.0.0.1",
            "::" | "[::]" => "[::1]",
            other => other,
        };
        let (scheme, ca) = match &status.tls {
            Some(tls) => ("https", asked.ca.as_deref().or(tls.ca.as_deref())),
            None => ("http", asked.ca.as_deref()),
        };
        let url = format!("{scheme}://{host}:{}", status.port);
        let token_file = asked.token_file.as_deref().or(status.token_file.as_deref());
        return ask_running(&cli, &url, token_file, ca);
    }
    if let Some(Command::Replay { file, json }) = &cli.command {
        return replay_file(&config, file, *json);
    }
    if let Some(path) = cli.test {
        return replay_file(&config, &path, cli.json);
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    hotdog::publish::producer::trim_memory();
    let options = server::Options {
        config_path: cli.config.clone(),
        watch: cli.watch,
    };
    serve_exit(runtime::block_on(threads, server::run(config, options)))
}

/// `hotdog --check`: the configuration loaded; its warnings (rules that can never run, regexes
/// that cost far more than the others, a status server whose `POST /reload` is off because other
/// hosts reach it without authentication).
fn check(config: &Config, file: &str, strict: bool) -> ExitCode {
    let never = config.rules.never_run();
    for (rule, why) in &never {
        eprintln!("{}: warning: {why}", rule.origin);
    }
    let slow = hotdog::offline::cost::slow_rules(&config.rules);
    for (i, why) in &slow {
        eprintln!("{}: warning: {why}", config.rules.rules()[*i].origin);
    }
    let control_off = config.global.status.as_ref().and_then(|s| s.control_off());
    if let Some(why) = &control_off {
        eprintln!("{file}: warning: {why}");
    }
    let warnings = never.len() + slow.len() + usize::from(control_off.is_some());
    if let Some(spool) = &config.global.spool {
        match hotdog::spool::check(spool) {
            Ok(notes) => notes.iter().for_each(|n| eprintln!("{file}: {n}")),
            Err(e) => {
                eprintln!("{file}: error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    if strict && warnings > 0 {
        eprintln!("hotdog: {warnings} warning(s) in {file} (--strict)");
        return ExitCode::from(EXIT_CONFIG);
    }
    println!(
        "{file}: configuration is valid ({} rules)",
        config.rules.rules().len()
    );
    ExitCode::SUCCESS
}

/// `hotdog tap` and `hotdog top`: ask the status server at `url` (`http://HOST:PORT` or
/// `https://HOST:PORT`, whose certificate `ca` vouches for), with the token in `token_file`.
fn ask_running(
    cli: &Cli,
    url: &str,
    token_file: Option<&std::path::Path>,
    ca: Option<&std::path::Path>,
) -> ExitCode {
    let identity = cli
        .command
        .as_ref()
        .and_then(|c| c.asks_status())
        .and_then(|a| a.cert.as_deref().zip(a.key.as_deref()));
    let tls = || {
        let ca =
            ca.ok_or("an https status server needs --ca FILE, the CA that signed its certificate")?;
        hotdog::listen::tls::client_config(ca, identity)
    };
    let server = match hotdog::control::client::Server::of(url, tls) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hotdog: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let token = match token_file.map(config::read_secret) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("hotdog: the token: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let asked = match &cli.command {
        Some(Command::Top { .. }) => hotdog::control::top::run(&server, token.as_deref()),
        Some(Command::Tap {
            rule,
            topic,
            source,
            listener,
            pattern,
            limit,
            rate,
            cpu,
            duration,
            ..
        }) => {
            let ask = hotdog::control::tap::Ask {
                rule: rule.clone(),
                topic: topic.clone(),
                source: source.clone(),
                listener: listener.clone(),
                pattern: pattern.clone(),
                limit: *limit,
                rate: *rate,
                cpu: *cpu,
                duration: *duration,
            };
            let mut out = std::io::stdout().lock();
            runtime::block_on(
                1,
                hotdog::control::tap::follow(&server, token.as_deref(), &ask, &mut out),
            )
            .map(|followed| eprintln!("hotdog: {followed}"))
        }
        _ => Err("this command does not ask a running hotdog".into()),
    };
    match asked {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotdog: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `hotdog spool inspect DIR`.
fn inspect(dir: &std::path::Path) -> ExitCode {
    match hotdog::spool::inspect(dir) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hotdog: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The exit code of a server run, and why when it is not 0.
fn serve_exit(result: Result<server::Summary, server::Error>) -> ExitCode {
    match result {
        Ok(summary) if summary.undelivered > 0 => {
            log::error!(
                "{} records were not delivered before the shutdown timeout; they are in the dead-letter file (or the log)",
                summary.undelivered
            );
            ExitCode::from(EXIT_UNDELIVERED)
        }
        Ok(summary) if summary.dead_letters_unwritten > 0 => {
            log::error!(
                "{} dead letters could not be written to the dead-letter file; they are in the log",
                summary.dead_letters_unwritten
            );
            ExitCode::from(EXIT_UNDELIVERED)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotdog: {}", chain(&e));
            ExitCode::from(if e.is_config() {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            })
        }
    }
}

/// `hotdog test FILES...`: the rule test cases, against the rules.
fn run_tests(
    config: &Config,
    files: &[std::path::PathBuf],
    junit: Option<&std::path::Path>,
) -> ExitCode {
    // Every file is read, and every error in any of them reported, before a case runs.
    let mut loaded = Vec::new();
    let mut invalid = 0;
    for path in files {
        match config::load_tests(path) {
            Ok(t) => loaded.push((path.display().to_string(), t)),
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("hotdog: {} error(s) in {}", errors.0.len(), path.display());
                invalid += 1;
            }
        }
    }
    if invalid > 0 {
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut stdout = std::io::stdout().lock();
    let reading = replay::Reading::of(&config.global);
    let results = match ruletest::run(&config.rules, &loaded, &reading, &mut stdout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hotdog: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if let Some(path) = junit {
        let written = std::fs::File::create(path)
            .and_then(|f| ruletest::junit(&results, std::io::BufWriter::new(f)));
        if let Err(e) = written {
            eprintln!("hotdog: cannot write {}: {e}", path.display());
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    if results.failed() > 0 {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

/// `hotdog replay LOGFILE` (hotdog 0.5: `-t LOGFILE`): every frame through the rules, printed.
fn replay_file(config: &Config, path: &std::path::Path, json: bool) -> ExitCode {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("hotdog: cannot read {}: {e}", path.display());
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let stdout = std::io::stdout().lock();
    let reading = replay::Reading::of(&config.global);
    match replay::run(&config.rules, file, &reading, stdout, json) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`hotdog -t log | head`): nothing more to say.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotdog: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// An error and every cause under it, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        // thiserror messages often repeat their source's text already.
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
