//! The command line, as clap defines it. In the library so that the man page and the shell
//! completions are generated from this one definition (`examples/docs.rs`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Forward syslog over TCP, TLS, RELP and UDP to Kafka, routed and rewritten by the rules in a YAML
/// file.
#[derive(Parser, Debug)]
#[command(
    name = "hotdog",
    version,
    about,
    after_help = "Exit codes: 0 success; 1 a runtime failure; 2 the configuration is not valid; \
                  3 shutdown could not deliver everything it had read.\n\
                  Signals: SIGHUP reloads the configuration and the TLS certificates; SIGINT and SIGTERM shut down."
)]
pub struct Cli {
    /// The configuration file.
    #[arg(short = 'c', long = "config", default_value = "hotdog.yml", global = true, value_hint = clap::ValueHint::FilePath)]
    pub config: PathBuf,
    /// Validate the configuration and exit: 0 when it is valid, 2 with every error otherwise.
    #[arg(long)]
    pub check: bool,
    /// With --check: warnings (rules that can never run) make it exit 2 too.
    #[arg(long, requires = "check")]
    pub strict: bool,
    /// hotdog 0.5's spelling of `hotdog replay LOGFILE`, kept so that its scripts run.
    #[arg(short = 't', long = "test", value_name = "LOGFILE", hide = true, value_hint = clap::ValueHint::FilePath)]
    pub test: Option<PathBuf>,
    /// With -t: print one JSON object per input line (as `hotdog replay --json`).
    #[arg(long, requires = "test", hide = true)]
    pub json: bool,
    /// Reload the configuration whenever its file changes (after it has stayed unchanged for
    /// `global.reload.debounce`), as SIGHUP does.
    #[arg(long)]
    pub watch: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every frame of LOGFILE through the rules without Kafka and print how it parsed,
    /// which rules matched and what would be sent (hotdog 0.5's `-t LOGFILE` does the same).
    Replay {
        #[arg(value_name = "LOGFILE", value_hint = clap::ValueHint::FilePath)]
        file: PathBuf,
        /// Print one JSON object per frame.
        #[arg(long)]
        json: bool,
    },
    /// Run rule test cases against the configuration's rules, without Kafka: exit 0 when every
    /// case passes, 1 when any fails, 2 when a file is not valid.
    Test {
        /// Test files (YAML: `tests:`, a list of cases with an input and the records expected).
        #[arg(required = true, value_name = "TESTS.yml", value_hint = clap::ValueHint::FilePath)]
        files: Vec<PathBuf>,
        /// Also write the results as a JUnit XML report to FILE.
        #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
        junit: Option<PathBuf>,
    },
    /// Print the frames a running hotdog routes as they come, one JSON object per line (the
    /// line, its source, the rules that matched, topic, key, headers, payload, and whether it
    /// was routed), from its status server's /tap: found from -c CONFIG (`global.status`, its
    /// `token_file`, HTTPS with its `tls`), or given with --url. Exits after --limit events or
    /// --duration.
    Tap {
        #[command(flatten)]
        status: StatusArgs,
        /// Only frames this rule (its name, or its index) matched.
        #[arg(long)]
        rule: Option<String>,
        /// Only records for this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only frames from senders whose address (`IP:port`) starts with this.
        #[arg(long)]
        source: Option<String>,
        /// Only frames that came in on this listener: its address (`IP:port`) or only its port.
        #[arg(long)]
        listener: Option<String>,
        /// Only frames whose text matches this regex.
        #[arg(long = "match", value_name = "REGEX")]
        pattern: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Keep at most this many events a second (default 1000, at most 100000): the tap
        /// samples, and what it leaves out is counted in `tap.dropped`.
        #[arg(long)]
        rate: Option<u32>,
        /// The most the taps may cost, in percent of the rest of hotdog's CPU time (default 3,
        /// at most 100): past it, hotdog looks at only some of the frames, at random, and counts
        /// the others in `tap.skipped`. 100 looks at every frame, whatever it costs.
        #[arg(long, value_name = "PERCENT")]
        cpu: Option<u32>,
        /// Stop after this long (`30s`, `5m`; at most 1 h).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
    /// A terminal view of a running hotdog, refreshed every second: lines/s per listener, rule
    /// and topic, the queues, delivery latency p50/p99, connections, the spool, and what was
    /// lost by reason. `s` changes the order, `/` filters by name, `q` quits. The status server
    /// is found as for `hotdog tap`.
    Top {
        #[command(flatten)]
        status: StatusArgs,
    },
    /// Look into a spool without changing it (it may be in use).
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
    },
}

/// How `hotdog tap` and `hotdog top` reach a running hotdog's status server.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The status server, `http://HOST:PORT` or `https://HOST:PORT`, instead of the
    /// configuration's.
    #[arg(long)]
    pub url: Option<String>,
    /// A file holding the status server's bearer token (default: the configuration's
    /// `global.status.token_file`, when --url is not given).
    #[arg(long, value_hint = clap::ValueHint::FilePath)]
    pub token_file: Option<PathBuf>,
    /// Over HTTPS: the CA certificate that signed the status server's certificate (default:
    /// the configuration's `global.status.tls.ca`, when --url is not given).
    #[arg(long, value_hint = clap::ValueHint::FilePath)]
    pub ca: Option<PathBuf>,
    /// Over HTTPS: a client certificate to present (with --key), which authenticates where the
    /// status server's `tls.ca` vouches for it.
    #[arg(long, requires = "key", value_hint = clap::ValueHint::FilePath)]
    pub cert: Option<PathBuf>,
    /// The private key of --cert.
    #[arg(long, requires = "cert", value_hint = clap::ValueHint::FilePath)]
    pub key: Option<PathBuf>,
}

impl Command {
    /// For the commands that ask a running hotdog's status server (`tap`, `top`): how.
    pub fn asks_status(&self) -> Option<&StatusArgs> {
        match self {
            Command::Tap { status, .. } | Command::Top { status } => Some(status),
            _ => None,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum SpoolAction {
    /// List the spool's segments: bytes, records, how many Kafka has (settled) and how many
    /// are to send, the oldest record, and any damage.
    Inspect {
        /// The spool's directory; default: `global.spool.path` of the configuration.
        #[arg(value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
        dir: Option<PathBuf>,
    },
}
