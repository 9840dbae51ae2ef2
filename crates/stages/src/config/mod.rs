//! `hotdog.yml`: the configuration model, and loading it.
//!
//! The file is read into a YAML tree that keeps every node's line and column, then decoded by
//! hand, so that every error names `file:line:column` and what was expected, unknown keys
//! suggest the closest known one, and all errors are reported at once rather than the first.
//! [`yaml`] is the decoding toolkit, [`global`] decodes `global:`, and [`rules`] compiles the
//! rules (regexes, JMESPath expressions and templates, once).
//!
//! A configuration written for hotdog 0.5 loads unchanged; keys added since are optional.

pub mod cases;
mod global;
mod quota;
mod rules;
mod secrets;
mod status;
mod tls;
mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::{LoaderOptions, Node};

use crate::route::template::Templates;
use crate::route::Rules;
pub use quota::{KeyPart, KeyVar, Over, Quota, QuotaKey};
pub use secrets::{expand as expand_env, read as read_secret};
pub use yaml::{ConfigError, ConfigErrors};
use yaml::{Cx, Map};

#[cfg(test)]
mod tests;

/// The whole configuration.
#[derive(Debug)]
pub struct Config {
    pub global: Global,
    pub rules: Rules,
}

/// `global:`
#[derive(Debug, Clone)]
pub struct Global {
    /// `global.listen`: where syslog is received; one listener or a list of them.
    pub listen: Vec<Listen>,
    /// `global.kafka`: where records go.
    pub kafka: Kafka,
    /// `global.metrics`: statsd output.
    pub metrics: Metrics,
    /// `global.status`: the HTTP status server; off when absent.
    pub status: Option<Status>,
    /// `global.shutdown_timeout`: how long shutdown waits for open connections and for Kafka to
    /// acknowledge what was read (seconds, or a duration like `30s`). Default 30 s.
    pub shutdown_timeout: Duration,
    /// `global.reload`: reloading when the file changes.
    pub reload: Reload,
    /// `global.max_rules_memory`: the most memory the compiled rules may hold (bytes). Default
    /// 1 GiB.
    pub max_rules_memory: usize,
    /// `global.spool`: records kept on disk until Kafka has them; off when absent.
    pub spool: Option<Spool>,
}

/// `global.spool:`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spool {
    /// `path`: the directory hotdog keeps its spool in (made if missing).
    pub path: PathBuf,
    /// `max_size`: the most bytes the spool takes on disk (bytes, or with a unit: `10GiB`,
    /// `500MB`). Default 10 GiB.
    pub max_size: u64,
    /// `fsync`: how often what is written is made durable. Default 1 s.
    pub fsync: Fsync,
    /// `id_header`: every record carries the Kafka header `hotdog.id`, the same when it is
    /// sent again after a crash, for consumers that drop duplicates. Default false: the header
    /// costs more CPU than the spool itself, and only a consumer that drops duplicates uses it.
    pub id_header: bool,
}

/// `global.spool.fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// `always`: every batch of records, before they count as accepted.
    Always,
    /// A duration: at most this long after they were written.
    Every(Duration),
}

/// The default `global.spool.max_size`: 10 GiB.
pub const DEFAULT_SPOOL_SIZE: u64 = 10 << 30;
/// The smallest `global.spool.max_size`: 1 MiB.
pub const MIN_SPOOL_SIZE: u64 = 1 << 20;

/// When a RELP listener answers its sender (`ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelpAck {
    /// `kafka`: once Kafka has every record of the message (or they are dead letters).
    #[default]
    Kafka,
    /// `spool`: once every record of the message is in the spool, under its `fsync` policy.
    Spool,
}

/// `global.reload:`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// `watch`: reload the configuration when its file changes (as `--watch` does). Default
    /// false.
    pub watch: bool,
    /// `debounce`: how long the file must stay unchanged after a change before it is reloaded
    /// (an editor may save in several writes). Default 500 ms.
    pub debounce: Duration,
}

impl Default for Reload {
    fn default() -> Self {
        Reload {
            watch: false,
            debounce: Duration::from_millis(500),
        }
    }
}

/// One entry of `global.listen` (which is one mapping, or a list of them).
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    /// `address`: the address to bind. Default `127.0.0.1`.
    pub address: String,
    /// `port`: the port. Default 1514.
    pub port: u16,
    /// `protocol`: `tcp`, `tls`, `relp` or `udp`. Default `tls` when `tls` is given, else
    /// `tcp`.
    pub protocol: Protocol,
    /// `max_message_size`: the longest frame kept, in bytes; longer ones are truncated to it and
    /// counted. Default 65536.
    pub max_message_size: usize,
    /// `max_connections`: TCP/TLS connections open at once; more are closed as soon as they are
    /// accepted, and counted. Default 10000.
    pub max_connections: usize,
    /// `max_connections_per_source`: connections open at once from one IP address (the one a
    /// PROXY header carries, behind a load balancer). Default: no limit.
    pub max_connections_per_source: Option<usize>,
    /// `tcp_keepalive`: idle time before TCP keepalive probes on accepted connections; `0` or
    /// `false` turns them off. Default 60 s.
    pub tcp_keepalive: Option<Duration>,
    /// `idle_timeout`: a connection that sends nothing this long is closed. Default: never.
    pub idle_timeout: Option<Duration>,
    /// `proxy_protocol`: PROXY protocol v1/v2 headers from these networks. Default: none.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `timezone`: the IANA time zone (`Europe/Paris`) that senders' RFC 3164 timestamps, which
    /// carry none, are read in. Default: UTC.
    pub timezone: Option<Timezone>,
    /// `ack` (RELP only): when a message is answered, `kafka` or `spool`. Default `kafka`.
    pub ack: RelpAck,
    /// `framing` (TCP and TLS): how the stream is cut into frames. Default `auto`.
    pub framing: crate::frame::lines::Framing,
    /// `receive_buffer` (UDP): the socket's receive buffer asked of the kernel, in bytes.
    /// Default (`None`): 8 MiB, quietly capped by the kernel's `net.core.rmem_max`.
    pub receive_buffer: Option<usize>,
    /// `quota`: lines and bytes a second per sender; reloadable. Default: none.
    pub quota: Option<Quota>,
}

/// A time zone by its IANA name.
#[derive(Debug, Clone)]
pub struct Timezone {
    pub name: String,
    pub zone: jiff::tz::TimeZone,
}

impl PartialEq for Timezone {
    fn eq(&self, other: &Timezone) -> bool {
        self.name == other.name
    }
}

/// `global.listen.proxy_protocol:`
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyProtocol {
    /// `from`: the networks of the load balancers, which must send a header; a header from
    /// anywhere else closes the connection.
    pub from: Vec<ipnet::IpNet>,
}

impl ProxyProtocol {
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.from.iter().any(|net| net.contains(&ip))
    }
}

/// How a listener receives syslog.
#[derive(Debug, Clone, PartialEq)]
pub enum Protocol {
    Tcp,
    /// `tls`: `cert`, `key`, optional `ca`, `client_auth`, `handshake_timeout`.
    Tls(Tls),
    /// One message per datagram (RFC 5426).
    Udp,
    /// `relp`: RELP sessions (librelp, rsyslog's omrelp), over TLS when `tls` is given.
    Relp(Option<Tls>),
}

impl Protocol {
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls(_) => "tls",
            Protocol::Udp => "udp",
            Protocol::Relp(None) => "relp",
            Protocol::Relp(Some(_)) => "relp+tls",
        }
    }

    /// The TLS settings of a listener that has them.
    pub fn tls(&self) -> Option<&Tls> {
        match self {
            Protocol::Tls(t) | Protocol::Relp(Some(t)) => Some(t),
            _ => None,
        }
    }
}

/// Whether a TLS client must present a certificate signed by `ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

/// `global.listen.tls:`
#[derive(Debug, Clone)]
pub struct Tls {
    /// `cert`: PEM file with the server certificate, then its chain.
    pub cert: PathBuf,
    /// `key`: PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// `ca`: PEM file with the CA certificates that client certificates are verified against.
    /// Without it, clients are not asked for certificates.
    pub ca: Option<PathBuf>,
    /// `client_auth`: `required` (default when `ca` is given: a client without a valid
    /// certificate is refused) or `optional` (anonymous clients are let in; a certificate that is
    /// presented must still be valid).
    pub client_auth: ClientAuth,
    /// `handshake_timeout`: a client that has not finished its handshake by then is cut off.
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// Where the `tls` settings are written (line, column), for errors about their files.
    pub at: (usize, usize),
}

/// The same settings, wherever they are written.
impl PartialEq for Tls {
    fn eq(&self, other: &Tls) -> bool {
        self.cert == other.cert
            && self.key == other.key
            && self.ca == other.ca
            && self.client_auth == other.client_auth
            && self.handshake_timeout == other.handshake_timeout
    }
}

/// `global.kafka:`
#[derive(Debug, Clone, PartialEq)]
pub struct Kafka {
    /// `conf`: every key is handed to librdkafka as it is (`bootstrap.servers`, `linger.ms`, ...).
    /// The environment variables `KAFKA_BROKER`, `SASL_SCRAM_USERNAME` and
    /// `SASL_SCRAM_PASSWORD` override `bootstrap.servers`, `sasl.username` and `sasl.password`.
    pub conf: BTreeMap<String, String>,
    /// `topic`: the topic for records whose rendered topic is not a legal topic name.
    /// Default `logs`.
    pub topic: String,
    /// `buffer`: how many records may wait between the connections and the Kafka publisher;
    /// when it is full, connections stop reading (TCP backpressure). Default 1024.
    pub buffer: usize,
    /// `timeout_ms`: how long to wait for broker metadata at start before logging that no broker
    /// is reachable (hotdog starts anyway and delivers once one is). Default 5000.
    pub timeout_ms: u64,
    /// `dead_letter`: `topic` and `file` for records Kafka refuses for good.
    pub dead_letter: DeadLetter,
    /// `max_topics`: distinct topics records may go to; a record for one more goes to `topic`
    /// and is counted. Default 1000.
    pub max_topics: usize,
}

/// `global.metrics:`
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// `statsd`: `host:port` of a statsd server; no statsd output when absent.
    pub statsd: Option<String>,
}

/// `global.status:`
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// `address`: default `127.0.0.1`.
    pub address: String,
    /// `port`: default 8585.
    pub port: u16,
    /// `tls`: served over TLS with these files (the keys of a listener's `tls`); with `ca`,
    /// a client with a verified certificate is authenticated.
    pub tls: Option<Tls>,
    /// `token_file`: a file holding the bearer token that authenticates a request
    /// (`Authorization: Bearer TOKEN`); read at start and on every reload.
    pub token_file: Option<PathBuf>,
    /// `open`: whether `/`, `/health`, `/metrics` and `/stats` are answered without
    /// authentication when some is configured (default true). `POST /reload` never is.
    pub open: bool,
}

impl Status {
    /// True when requests can prove who sent them: a token, or client certificates.
    pub fn authenticates(&self) -> bool {
        self.token_file.is_some() || self.tls.as_ref().is_some_and(|t| t.ca.is_some())
    }

    /// True when `address` is a loopback address (`localhost` included): only this host can
    /// connect.
    pub fn is_loopback(&self) -> bool {
        let a = self.address.trim_start_matches('[').trim_end_matches(']');
        a.eq_ignore_ascii_case("localhost")
            || a.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Why `POST /reload` is turned off, when it is: the server is reachable from other hosts
    /// and nothing authenticates a request.
    pub fn control_off(&self) -> Option<String> {
        (!self.is_loopback() && !self.authenticates()).then(|| {
            format!(
                "POST /reload is off: the status server listens on {}, not a loopback address, \
                 and nothing authenticates its clients (set global.status.token_file, or \
                 global.status.tls with a ca)",
                self.address
            )
        })
    }
}

/// `global.kafka.dead_letter:`
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetter {
    /// `topic`: where refused records are produced, with headers `hotdog-original-topic` and
    /// `hotdog-reason`.
    pub topic: Option<String>,
    /// `file`: a JSON-lines file for records that cannot go to the dead-letter topic.
    pub file: Option<PathBuf>,
}

/// The largest `max_message_size`: every connection may hold a frame this long.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// The largest `buffer`, in records.
pub const MAX_BUFFER: usize = 1_000_000;
/// The longest `shutdown_timeout`, `handshake_timeout`, `tcp_keepalive` and `idle_timeout`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The largest `max_connections` and `max_connections_per_source`.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// The largest `max_topics`.
pub const MAX_TOPICS: usize = 100_000;
/// `global.max_rules_memory`: its default (1 GiB) and bounds.
pub const DEFAULT_RULES_MEMORY: usize = 1 << 30;
const MIN_RULES_MEMORY: usize = 1 << 20;
const MAX_RULES_MEMORY: usize = 1 << 40;

/// Environment variables that override `global.kafka.conf` keys.
pub const ENV_OVERRIDES: [(&str, &str); 3] = [
    ("KAFKA_BROKER", "bootstrap.servers"),
    ("SASL_SCRAM_USERNAME", "sasl.username"),
    ("SASL_SCRAM_PASSWORD", "sasl.password"),
];

/// What decoding asks of the world outside the file: environment variables, whether a TLS
/// listener's files load, and whether a file hotdog appends to can be one (the modules that use
/// them answer; the configuration does not touch them itself).
pub struct Outside<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub check_tls: &'a dyn Fn(&Tls) -> Result<(), String>,
    pub check_output: &'a dyn Fn(&Path) -> Result<(), String>,
}

impl Config {
    /// Reads, validates and compiles `path`, applying the environment overrides; `outside`'s
    /// checks (its `var` is the environment's) report with the other errors.
    pub fn load(path: &Path, outside: &Outside<'_>) -> Result<Config, ConfigErrors> {
        let (file, text) = read_file(path, "the configuration")?;
        Self::parse_with(&file, &text, outside)
    }

    /// Validates and compiles `text` (named `file` in errors); `env` looks up overrides. TLS
    /// files are not read.
    pub fn parse(
        file: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        Self::parse_with(
            file,
            text,
            &Outside {
                var: &env,
                check_tls: &|_| Ok(()),
                check_output: &|_| Ok(()),
            },
        )
    }

    /// Validates and compiles `text` (named `file` in errors), asking `outside` what the file
    /// does not say.
    pub fn parse_with(
        file: &str,
        text: &str,
        outside: &Outside<'_>,
    ) -> Result<Config, ConfigErrors> {
        let root = read_yaml(file, text, "`global` and `rules`")?;
        let mut cx = Cx {
            file,
            errors: Vec::new(),
        };
        let config = decode_root(&mut cx, &root, outside);
        match config {
            Some(c) if cx.errors.is_empty() => Ok(c),
            _ => {
                if cx.errors.is_empty() {
                    cx.error(&root, "the configuration is not valid");
                }
                Err(ConfigErrors(cx.errors))
            }
        }
    }
}

/// Reads a rule test file (`hotdog test`), with every error located as for the configuration.
pub fn load_tests(path: &Path) -> Result<cases::TestFile, ConfigErrors> {
    let (file, text) = read_file(path, "the test file")?;
    let root = read_yaml(&file, &text, "`tests`")?;
    let mut cx = Cx {
        file: &file,
        errors: Vec::new(),
    };
    match cases::decode(&mut cx, &root) {
        Some(t) if cx.errors.is_empty() => Ok(t),
        _ => {
            if cx.errors.is_empty() {
                cx.error(&root, "the test file is not valid");
            }
            Err(ConfigErrors(cx.errors))
        }
    }
}

/// How long reading one file of the configuration may take: a FIFO, a device or a hung network
/// mount is an error after it, never a reload or a `--check` that hangs.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest configuration file.
const MAX_CONFIG: u64 = 16 << 20;

/// Reads at most `max` bytes of `path` within [`READ_TIMEOUT`] (on a thread of its own, which is
/// left to finish by itself when the time is up); a longer file is an error.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("read-file".into())
        .spawn(move || {
            let read = std::fs::File::open(&owned).and_then(|f| {
                let mut bytes = Vec::new();
                f.take(max + 1).read_to_end(&mut bytes).map(|_| bytes)
            });
            let _ = tx.send(read);
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start a thread to read it: {e}"));
    }
    match rx.recv_timeout(READ_TIMEOUT) {
        Ok(Ok(bytes)) if bytes.len() as u64 > max => Err(format!("longer than {max} bytes")),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "reading it did not finish within {}s (a FIFO, a device, a hung mount?)",
            READ_TIMEOUT.as_secs()
        )),
    }
}

/// The file's name (for errors) and text; `what` it is says what could not be read.
fn read_file(path: &Path, what: &str) -> Result<(String, String), ConfigErrors> {
    let file = path.display().to_string();
    let text = read_bounded(path, MAX_CONFIG)
        .and_then(|bytes| String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string()));
    match text {
        Ok(text) => Ok((file, text)),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            message: format!("cannot read {what}: {e}"),
            file,
            line: 0,
            column: 0,
        }])),
    }
}

/// One YAML document as a tree that keeps every node's line and column; `top` says what the
/// top-level mapping holds, for the error when it is not one.
fn read_yaml(file: &str, text: &str, top: &str) -> Result<Node, ConfigErrors> {
    // Editors on some systems start a UTF-8 file with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(line) = second_document(text) {
        return Err(ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line,
            column: 1,
            message: "a second YAML document; hotdog reads exactly one (remove this `---` or `...` and what follows, or merge it into the first)".into(),
        }]));
    }
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    marked_yaml::parse_yaml_with_options(0, text, options)
        .map_err(|e| ConfigErrors(vec![yaml::load_error(file, top, e)]))
}

/// The line (from 1) of a document marker that begins a second YAML document: `---` after
/// content, or content after `...`. The YAML loader would read the first and drop the rest.
fn second_document(text: &str) -> Option<usize> {
    let mut content = false;
    let mut ended = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker = |m: &str| line == m || line.starts_with(&format!("{m} "));
        if is_marker("---") {
            if content || ended {
                return Some(i + 1);
            }
            // `--- value`: the document starts on the marker's line.
            content = !line[3..].trim().is_empty() && !line[3..].trim_start().starts_with('#');
            continue;
        }
        if is_marker("...") {
            ended = true;
            continue;
        }
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') || (line.starts_with('%') && !content) {
            continue;
        }
        if ended {
            return Some(i + 1);
        }
        content = true;
    }
    None
}

/// The whole file: `global` and `rules`.
fn decode_root(cx: &mut Cx<'_>, root: &Node, outside: &Outside<'_>) -> Option<Config> {
    let mut top = Map::new(cx, root, "the configuration")?;
    let global = match top.get("global") {
        Some(node) => global::decode(cx, node, outside),
        None => {
            cx.error(root, "`global` is required");
            None
        }
    };
    let default_topic = global
        .as_ref()
        .map(|g| g.kafka.topic.clone())
        .unwrap_or_else(|| "logs".to_string());
    let budget = global
        .as_ref()
        .map_or(DEFAULT_RULES_MEMORY, |g| g.max_rules_memory);
    let rules = match top.get("rules") {
        Some(node) => rules::decode(cx, node, &default_topic, budget),
        None => Some(Rules::new(Vec::new(), Templates::new(), &default_topic)),
    };
    top.finish(cx);
    Some(Config {
        global: global?,
        rules: rules?,
    })
}
