//! The `hotdog` command: parses the command line, loads the configuration, and wires the stages
//! together (listener → connections → publisher), with the status server and statsd beside them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_lite::{FutureExt, StreamExt};

use hotdog::config::{Config, Protocol};
use hotdog::connection::Shared;
use hotdog::listener::Listener;
use hotdog::metrics::{self, Metrics};
use hotdog::publisher::{Health, Publisher};
use hotdog::{runtime, shutdown, status, testmode};

/// Forward syslog over TCP to Kafka, routed and rewritten by the rules in a YAML file.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The configuration file.
    #[arg(short = 'c', long = "config", default_value = "hotdog.yml")]
    config: PathBuf,
    /// Validate the configuration and exit: 0 when it is valid, 2 with every error otherwise.
    #[arg(long)]
    check: bool,
    /// Run every line of LOGFILE through the rules without Kafka and print what would be sent.
    #[arg(short = 't', long = "test", value_name = "LOGFILE")]
    test: Option<PathBuf>,
    /// With --test: print one JSON object per input line.
    #[arg(long, requires = "test")]
    json: bool,
}

/// Exit code for a configuration that is not valid.
const EXIT_CONFIG: u8 = 2;
/// Exit code when shutdown could not deliver everything it had read.
const EXIT_UNDELIVERED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "hotdog: {} error(s) in {}",
                errors.0.len(),
                cli.config.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The TLS files are part of the configuration: a bad one is a configuration error.
    let tls_errors: Vec<String> = config
        .global
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match &l.protocol {
            Protocol::Tls(t) => hotdog::tls::server_config(t)
                .err()
                .map(|e| format!("{}: global.listen[{i}].tls: {e}", cli.config.display())),
            _ => None,
        })
        .collect();
    if !tls_errors.is_empty() {
        for e in &tls_errors {
            eprintln!("{e}");
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    if cli.check {
        println!(
            "{}: configuration is valid ({} rules)",
            cli.config.display(),
            config.rules.rules().len()
        );
        return ExitCode::SUCCESS;
    }
    if let Some(path) = cli.test {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("hotdog: cannot read {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        let stdout = std::io::stdout().lock();
        return match testmode::run(
            &config.rules,
            std::io::BufReader::new(file),
            stdout,
            cli.json,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            // The reader went away (`hotdog -t log | head`): nothing more to say.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hotdog: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    runtime::block_on(threads, serve(config))
}

/// Runs the forwarder until SIGINT or SIGTERM, then shuts down in order.
async fn serve(config: Config) -> ExitCode {
    let Config { global, rules } = config;
    let metrics = Metrics::new();
    let publisher = match Publisher::new(
        &global.kafka.conf,
        global.kafka.dead_letter.clone(),
        metrics.clone(),
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hotdog: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let health = Arc::new(Health::default());
    publisher.watch_health(
        health.clone(),
        Duration::from_secs(2),
        Duration::from_millis(global.kafka.timeout_ms.clamp(100, 5000)),
    );
    let (tx, rx) = async_channel::bounded(channel_capacity(global.kafka.buffer));
    let mut signals = match async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hotdog: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut listeners = Vec::new();
    for l in &global.listen {
        match Listener::bind(l).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("hotdog: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    let address = names.join(", ");
    if let Some(s) = &global.status {
        let at = format!("{}:{}", s.address, s.port);
        let channel = tx.clone();
        let sources = status::Sources {
            metrics: metrics.clone(),
            health: health.clone(),
            channel_len: Arc::new(move || i64::try_from(channel.len()).unwrap_or(i64::MAX)),
            kafka_queue_len: publisher.queue_len(),
        };
        match status::serve(&at, sources) {
            Ok(_) => log::info!("status server on http://{at}/stats"),
            Err(e) => {
                eprintln!("hotdog: cannot start the status server on {at}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let (stop_statsd, statsd_stopped) = async_channel::bounded::<()>(1);
    let statsd = match &global.metrics.statsd {
        Some(at) => {
            match metrics::report_to_statsd(
                metrics.clone(),
                at,
                Duration::from_secs(1),
                statsd_stopped,
            ) {
                Ok(h) => Some(h),
                Err(e) => {
                    eprintln!("hotdog: cannot send metrics to statsd at {at}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    log::info!(
        "hotdog {} listening on {address} with {} rules",
        env!("CARGO_PKG_VERSION"),
        rules.rules().len()
    );

    let dead_letters = publisher.dead_letters();
    let (deadline_tx, deadline_rx) = async_channel::bounded::<Instant>(1);
    let publishing = runtime::spawn(publisher.run(rx, deadline_rx));
    let (trigger, shutdown) = shutdown::channel();
    let (done, all_done) = async_channel::bounded::<()>(1);
    let shared = Arc::new(Shared {
        rules: Arc::new(rules),
        metrics: metrics.clone(),
        tx: tx.clone(),
        dead_letters,
    });
    let acceptors: Vec<_> = listeners.iter().filter_map(Listener::acceptor).collect();
    let listening: Vec<_> = listeners
        .into_iter()
        .map(|l| runtime::spawn(l.serve(shared.clone(), shutdown.clone(), done.clone())))
        .collect();
    drop((shared, done));

    while let Some(sig) = signals.next().await {
        match sig {
            Ok(async_signal::Signal::Hup) => {
                for a in &acceptors {
                    match a.reload() {
                        Ok(()) => log::info!("reloaded {}", a.settings().cert.display()),
                        Err(e) => {
                            log::error!("TLS reload failed, keeping the old certificates: {e}")
                        }
                    }
                }
            }
            Ok(sig) => {
                log::info!("received {sig:?}; shutting down");
                break;
            }
            Err(e) => log::warn!("signal handling: {e}"),
        }
    }
    trigger.trigger();
    let timeout = global.shutdown_timeout;
    let deadline = Instant::now() + timeout;
    let _ = deadline_tx.try_send(deadline);
    for l in listening {
        l.await;
    }
    let finished = async {
        let _ = all_done.recv().await;
        true
    }
    .or(async {
        smol::Timer::at(deadline).await;
        false
    })
    .await;
    if !finished {
        log::warn!("connections still open after {timeout:?}; closing them");
    }
    tx.close();
    drop(tx);
    let unacknowledged = publishing.await;
    let shutdown_dead_letters = metrics
        .snapshot()
        .get("kafka.dead_letter.shutdown_timeout")
        .copied()
        .unwrap_or(0);
    stop_statsd.close();
    if let Some(h) = statsd {
        let _ = smol::unblock(move || h.join()).await;
    }
    log::info!(
        "summary: received {} lines, forwarded {}, unrouted {}, delivered {}, failed {}, dead-lettered {}, dropped {}, in flight {}",
        metrics.lines.load(Relaxed),
        metrics.forwarded.load(Relaxed),
        metrics.unrouted.load(Relaxed),
        metrics.delivered.load(Relaxed),
        metrics.failed.load(Relaxed),
        metrics.dead_lettered.load(Relaxed),
        metrics.udp_dropped.load(Relaxed),
        metrics.in_flight(),
    );
    if shutdown_dead_letters > 0 || unacknowledged > 0 {
        log::error!(
            "{shutdown_dead_letters} records were not delivered before the shutdown timeout; they are in the dead-letter file (or the log)"
        );
        return ExitCode::from(EXIT_UNDELIVERED);
    }
    ExitCode::SUCCESS
}

/// Batches of up to 512 records travel the channel; `buffer` counts records.
fn channel_capacity(buffer: usize) -> usize {
    buffer.div_ceil(512).max(1)
}
