//! `hotdog.yml`: the configuration model, its validation, and compiling its rules.
//!
//! The file is read into a YAML tree that keeps every node's line and column, then decoded by
//! hand, so that every error names `file:line:column` and what was expected, unknown keys
//! suggest the closest known one, and all errors are reported at once rather than the first.
//! Regexes, JMESPath expressions and templates are compiled here, once.
//!
//! A configuration written for hotdog 0.5 loads unchanged; keys added since are optional.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::{LoaderOptions, Node};

use crate::rules::{Action, Field, Matcher, MergeValue, Rule, Rules};
use crate::template::Templates;

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
}

/// One entry of `global.listen` (which is one mapping, or a list of them).
#[derive(Debug, Clone)]
pub struct Listen {
    /// `address`: the address to bind. Default `127.0.0.1`.
    pub address: String,
    /// `port`: the port. Default 1514.
    pub port: u16,
    /// `protocol`: `tcp`, `tls` or `udp`. Default `tls` when `tls` is given, else `tcp`.
    pub protocol: Protocol,
    /// `max_message_size`: the longest frame kept, in bytes; longer ones are truncated to it and
    /// counted. Default 65536.
    pub max_message_size: usize,
}

/// How a listener receives syslog.
#[derive(Debug, Clone)]
pub enum Protocol {
    Tcp,
    /// `tls`: `cert`, `key`, optional `ca`, `client_auth`, `handshake_timeout`.
    Tls(Tls),
    /// One message per datagram (RFC 5426).
    Udp,
}

impl Protocol {
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls(_) => "tls",
            Protocol::Udp => "udp",
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
}

/// `global.kafka:`
#[derive(Debug, Clone)]
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
    pub dead_letter: crate::deadletter::Settings,
}

/// `global.metrics:`
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `statsd`: `host:port` of a statsd server; no statsd output when absent.
    pub statsd: Option<String>,
}

/// `global.status:`
#[derive(Debug, Clone)]
pub struct Status {
    /// `address`: default `127.0.0.1`.
    pub address: String,
    /// `port`: default 8585.
    pub port: u16,
}

/// One problem in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Environment variables that override `global.kafka.conf` keys.
pub const ENV_OVERRIDES: [(&str, &str); 3] = [
    ("KAFKA_BROKER", "bootstrap.servers"),
    ("SASL_SCRAM_USERNAME", "sasl.username"),
    ("SASL_SCRAM_PASSWORD", "sasl.password"),
];

impl Config {
    /// Reads, validates and compiles `path`, applying the environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: 0,
                column: 0,
                message: format!("cannot read the configuration: {e}"),
            }])
        })?;
        let env = |k: &str| std::env::var(k).ok();
        Self::parse(&file, &text, env)
    }

    /// Validates and compiles `text` (named `file` in errors); `env` looks up overrides.
    pub fn parse(
        file: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let mut cx = Cx {
            file,
            errors: Vec::new(),
        };
        let options = LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .prevent_coercion(true);
        let root = match marked_yaml::parse_yaml_with_options(0, text, options) {
            Ok(root) => root,
            Err(e) => return Err(ConfigErrors(vec![load_error(file, e)])),
        };
        let config = decode_root(&mut cx, &root, &env);
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

fn load_error(file: &str, e: marked_yaml::LoadError) -> ConfigError {
    use marked_yaml::LoadError::*;
    let at = |m: &marked_yaml::Marker, message: String| ConfigError {
        file: file.to_string(),
        line: m.line(),
        column: m.column(),
        message,
    };
    match &e {
        TopLevelMustBeMapping(m) => at(
            m,
            "expected a mapping with `global` and `rules` at the top".into(),
        ),
        UnexpectedAnchor(m) => at(m, "YAML anchors are not supported here".into()),
        MappingKeyMustBeScalar(m) => at(m, "keys must be plain strings".into()),
        UnexpectedTag(m) => at(m, "YAML tags are not supported here".into()),
        ScanError(m, err) => at(m, format!("invalid YAML: {}", err.info())),
        DuplicateKey(inner) => {
            let key = &inner.key;
            let (line, column) = key
                .span()
                .start()
                .map(|m| (m.line(), m.column()))
                .unwrap_or((0, 0));
            ConfigError {
                file: file.to_string(),
                line,
                column,
                message: format!("the key `{}` is given twice", key.as_str()),
            }
        }
        _ => ConfigError {
            file: file.to_string(),
            line: 0,
            column: 0,
            message: format!("invalid YAML: {e}"),
        },
    }
}

/// The decoding context: the file name and the errors found so far.
struct Cx<'f> {
    file: &'f str,
    errors: Vec<ConfigError>,
}

impl Cx<'_> {
    fn error(&mut self, node: &Node, message: impl Into<String>) {
        let (line, column) = position(node);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        });
    }
}

fn position(node: &Node) -> (usize, usize) {
    node.span()
        .start()
        .map(|m| (m.line(), m.column()))
        .unwrap_or((0, 0))
}

fn kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a value",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

/// True for an empty value (`key:`), `~` or `null`.
fn is_null(node: &Node) -> bool {
    match node {
        Node::Scalar(s) => {
            s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
        }
        _ => false,
    }
}

/// A mapping being decoded: remembers which keys were asked for, so the rest can be reported as
/// unknown, with the closest known key suggested.
struct Map<'n> {
    node: &'n Node,
    what: String,
    known: Vec<&'static str>,
}

impl<'n> Map<'n> {
    fn new(cx: &mut Cx<'_>, node: &'n Node, what: impl Into<String>) -> Option<Map<'n>> {
        let what = what.into();
        if node.as_mapping().is_none() {
            cx.error(
                node,
                format!("expected a mapping for `{what}`, found {}", kind(node)),
            );
            return None;
        }
        Some(Map {
            node,
            what,
            known: Vec::new(),
        })
    }

    /// The value of `key`; `None` when absent or null.
    fn get(&mut self, key: &'static str) -> Option<&'n Node> {
        self.known.push(key);
        self.node
            .as_mapping()
            .and_then(|m| m.get_node(key))
            .filter(|n| !is_null(n))
    }

    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.what)
    }

    fn string(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<String> {
        let node = self.get(key)?;
        scalar(cx, node, &self.path(key))
    }

    fn required_string(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<String> {
        let v = self.string(cx, key);
        if v.is_none() && self.get(key).is_none() {
            cx.error(self.node, format!("`{}` is required", self.path(key)));
        }
        v
    }

    fn number<T: std::str::FromStr>(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<T> {
        let node = self.get(key)?;
        let text = scalar(cx, node, &self.path(key))?;
        match text.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                cx.error(
                    node,
                    format!(
                        "expected a whole number in range for `{}`, found `{text}`",
                        self.path(key)
                    ),
                );
                None
            }
        }
    }

    /// Reports every key that was not asked for.
    fn finish(self, cx: &mut Cx<'_>) {
        let Some(map) = self.node.as_mapping() else {
            return;
        };
        for key in map.keys() {
            let name = key.as_str();
            if self.known.contains(&name) {
                continue;
            }
            let suggestion = closest(name, &self.known)
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_else(|| format!("; expected one of: {}", self.known.join(", ")));
            let node = Node::Scalar(key.clone());
            cx.error(
                &node,
                format!("unknown key `{name}` in `{}`{suggestion}", self.what),
            );
        }
    }
}

/// The known name closest to `name`, when it is close enough to be a likely typo.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn scalar(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<String> {
    match node {
        Node::Scalar(s) => Some(s.as_str().to_string()),
        other => {
            cx.error(
                other,
                format!("expected a value for `{what}`, found {}", kind(other)),
            );
            None
        }
    }
}

fn decode_root(
    cx: &mut Cx<'_>,
    root: &Node,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Config> {
    let mut top = Map::new(cx, root, "the configuration")?;
    let global = match top.get("global") {
        Some(node) => decode_global(cx, node, env),
        None => {
            cx.error(root, "`global` is required");
            None
        }
    };
    let default_topic = global
        .as_ref()
        .map(|g| g.kafka.topic.clone())
        .unwrap_or_else(|| "logs".to_string());
    let rules = match top.get("rules") {
        Some(node) => decode_rules(cx, node, &default_topic),
        None => Some(Rules::new(Vec::new(), Templates::new(), &default_topic)),
    };
    top.finish(cx);
    Some(Config {
        global: global?,
        rules: rules?,
    })
}

fn decode_global(
    cx: &mut Cx<'_>,
    node: &Node,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Global> {
    let mut g = Map::new(cx, node, "global")?;
    let listen = match g.get("listen") {
        Some(n) => decode_listeners(cx, n),
        None => {
            cx.error(node, "`global.listen` is required");
            None
        }
    };
    let kafka = match g.get("kafka") {
        Some(n) => decode_kafka(cx, n, env),
        None => {
            cx.error(node, "`global.kafka` is required");
            None
        }
    };
    let metrics = match g.get("metrics") {
        Some(n) => decode_metrics(cx, n),
        None => Some(Metrics::default()),
    };
    let status = match g.get("status") {
        Some(n) => decode_status(cx, n).map(Some),
        None => Some(None),
    };
    let shutdown_timeout = match g.get("shutdown_timeout") {
        Some(n) => duration(cx, n, "global.shutdown_timeout"),
        None => Some(Duration::from_secs(30)),
    };
    g.finish(cx);
    Some(Global {
        listen: listen?,
        kafka: kafka?,
        metrics: metrics?,
        status: status?,
        shutdown_timeout: shutdown_timeout?,
    })
}

fn duration(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<Duration> {
    let text = scalar(cx, node, what)?;
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    match humantime::parse_duration(&text) {
        Ok(d) => Some(d),
        Err(e) => {
            cx.error(
                node,
                format!("expected seconds or a duration like `30s` for `{what}`: {e}"),
            );
            None
        }
    }
}

fn decode_listeners(cx: &mut Cx<'_>, node: &Node) -> Option<Vec<Listen>> {
    let Some(seq) = node.as_sequence() else {
        return decode_listen(cx, node, "global.listen").map(|l| vec![l]);
    };
    if seq.is_empty() {
        cx.error(node, "`global.listen` needs at least one listener");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in seq.iter().enumerate() {
        match decode_listen(cx, item, &format!("global.listen[{i}]")) {
            Some(l) => out.push(l),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

const PROTOCOLS: [&str; 3] = ["tcp", "tls", "udp"];

fn decode_listen(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<Listen> {
    let mut m = Map::new(cx, node, what)?;
    let address = m
        .string(cx, "address")
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = m.number(cx, "port").unwrap_or(1514);
    let max_message_size: usize = m.number(cx, "max_message_size").unwrap_or(64 * 1024);
    if max_message_size == 0 {
        if let Some(n) = m.get("max_message_size") {
            cx.error(n, format!("`{what}.max_message_size` must be at least 1"));
        }
    }
    let tls_node = match m.get("tls") {
        Some(Node::Scalar(s)) if matches!(s.as_str(), "false" | "no" | "off") => None,
        other => other,
    };
    let tls = tls_node.and_then(|n| decode_tls(cx, n, &format!("{what}.tls")));
    let protocol = match m.get("protocol") {
        None => match (tls_node, tls) {
            (None, _) => Some(Protocol::Tcp),
            (Some(_), Some(t)) => Some(Protocol::Tls(t)),
            (Some(_), None) => None,
        },
        Some(p) => {
            let name = scalar(cx, p, &m.path("protocol"))?;
            match (name.as_str(), tls_node, tls) {
                ("tcp", None, _) => Some(Protocol::Tcp),
                ("udp", None, _) => Some(Protocol::Udp),
                ("tls", Some(_), Some(t)) => Some(Protocol::Tls(t)),
                ("tls", Some(_), None) => None,
                ("tls", None, _) => {
                    cx.error(
                        p,
                        format!("`{what}` uses protocol tls but has no `tls` settings (cert, key)"),
                    );
                    None
                }
                ("tcp" | "udp", Some(t), _) => {
                    cx.error(
                        t,
                        format!("`{what}` has `tls` settings but protocol {name}"),
                    );
                    None
                }
                (other, _, _) => {
                    let hint = closest(other, &PROTOCOLS)
                        .map(|k| format!("did you mean `{k}`? "))
                        .unwrap_or_default();
                    cx.error(
                        p,
                        format!("unknown protocol `{other}`; {hint}expected one of: tcp, tls, udp"),
                    );
                    None
                }
            }
        }
    };
    m.finish(cx);
    Some(Listen {
        address,
        port,
        protocol: protocol?,
        max_message_size,
    })
}

fn decode_tls(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<Tls> {
    let mut m = Map::new(cx, node, what)?;
    let cert = m.required_string(cx, "cert");
    let key = m.required_string(cx, "key");
    let ca = m.string(cx, "ca").map(PathBuf::from);
    let client_auth = match m.get("client_auth") {
        None => Some(ClientAuth::Required),
        Some(n) => match scalar(cx, n, &m.path("client_auth"))?.as_str() {
            "required" => Some(ClientAuth::Required),
            "optional" => Some(ClientAuth::Optional),
            other => {
                cx.error(
                    n,
                    format!("unknown client_auth `{other}`; expected `required` or `optional`"),
                );
                None
            }
        },
    };
    if ca.is_none() {
        if let Some(n) = m.get("client_auth") {
            cx.error(
                n,
                format!("`{what}.client_auth` needs a `ca` to verify clients against"),
            );
        }
    }
    let handshake_timeout = match m.get("handshake_timeout") {
        Some(n) => duration(cx, n, &m.path("handshake_timeout")),
        None => Some(Duration::from_secs(10)),
    };
    m.finish(cx);
    Some(Tls {
        cert: cert?.into(),
        key: key?.into(),
        ca,
        client_auth: client_auth?,
        handshake_timeout: handshake_timeout?,
    })
}

fn decode_kafka(
    cx: &mut Cx<'_>,
    node: &Node,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Kafka> {
    let mut m = Map::new(cx, node, "global.kafka")?;
    let mut conf = BTreeMap::new();
    if let Some(c) = m.get("conf") {
        if let Some(map) = c.as_mapping() {
            for (k, v) in map.iter() {
                let what = format!("global.kafka.conf.{}", k.as_str());
                if let Some(v) = scalar(cx, v, &what) {
                    conf.insert(k.as_str().to_string(), v);
                }
            }
        } else {
            cx.error(
                c,
                format!(
                    "expected a mapping of librdkafka settings for `global.kafka.conf`, found {}",
                    kind(c)
                ),
            );
        }
    }
    // hotdog 0.3 and earlier wrote `brokers:`; accept it as `bootstrap.servers`.
    if let Some(b) = m.string(cx, "brokers") {
        conf.entry("bootstrap.servers".into()).or_insert(b);
    }
    for (var, key) in ENV_OVERRIDES {
        if let Some(v) = env(var).filter(|v| !v.is_empty()) {
            conf.insert(key.to_string(), v);
        }
    }
    let topic = m.string(cx, "topic").unwrap_or_else(|| "logs".into());
    if !crate::rules::is_legal_topic(&topic) {
        if let Some(n) = m.get("topic") {
            cx.error(
                n,
                format!(
                    "`{topic}` is not a legal Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"
                ),
            );
        }
    }
    let buffer: usize = m.number(cx, "buffer").unwrap_or(1024);
    if buffer == 0 {
        if let Some(n) = m.get("buffer") {
            cx.error(n, "`global.kafka.buffer` must be at least 1");
        }
    }
    let timeout_ms = m.number(cx, "timeout_ms").unwrap_or(5000);
    let mut dead_letter = crate::deadletter::Settings::default();
    if let Some(d) = m.get("dead_letter") {
        if let Some(mut dm) = Map::new(cx, d, "global.kafka.dead_letter") {
            dead_letter.topic = dm.string(cx, "topic");
            if let (Some(t), Some(n)) = (&dead_letter.topic, dm.get("topic")) {
                if !crate::rules::is_legal_topic(t) {
                    cx.error(n, format!("`{t}` is not a legal Kafka topic name"));
                }
            }
            dead_letter.file = dm.string(cx, "file").map(PathBuf::from);
            dm.finish(cx);
        }
    }
    m.finish(cx);
    if !conf.contains_key("bootstrap.servers") && !conf.contains_key("metadata.broker.list") {
        cx.error(
            node,
            "`global.kafka.conf` needs `bootstrap.servers` (or set KAFKA_BROKER)",
        );
    }
    Some(Kafka {
        conf,
        topic,
        buffer,
        timeout_ms,
        dead_letter,
    })
}

fn decode_metrics(cx: &mut Cx<'_>, node: &Node) -> Option<Metrics> {
    let mut m = Map::new(cx, node, "global.metrics")?;
    let statsd = m.string(cx, "statsd");
    m.finish(cx);
    Some(Metrics { statsd })
}

fn decode_status(cx: &mut Cx<'_>, node: &Node) -> Option<Status> {
    let mut m = Map::new(cx, node, "global.status")?;
    let address = m
        .string(cx, "address")
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = m.number(cx, "port").unwrap_or(8585);
    m.finish(cx);
    Some(Status { address, port })
}

fn decode_rules(cx: &mut Cx<'_>, node: &Node, default_topic: &str) -> Option<Rules> {
    let Some(seq) = node.as_sequence() else {
        cx.error(
            node,
            format!("expected a list of rules for `rules`, found {}", kind(node)),
        );
        return None;
    };
    let mut templates = Templates::new();
    let mut rules = Vec::new();
    let mut ok = true;
    for (i, rule) in seq.iter().enumerate() {
        match decode_rule(cx, rule, i, &mut templates) {
            Some(r) => rules.push(r),
            None => ok = false,
        }
    }
    ok.then(|| Rules::new(rules, templates, default_topic))
}

fn decode_rule(
    cx: &mut Cx<'_>,
    node: &Node,
    index: usize,
    templates: &mut Templates,
) -> Option<Rule> {
    let what = format!("rules[{index}]");
    let mut m = Map::new(cx, node, what.clone())?;
    let regex = m.get("regex");
    let jmespath = m.get("jmespath");
    let matcher = match (regex, jmespath) {
        (Some(r), None) => {
            let src = scalar(cx, r, &m.path("regex"))?;
            match crate::rules::Pattern::new(&src) {
                Ok(re) => Some(Matcher::Regex(re)),
                Err(e) => {
                    cx.error(r, format!("invalid regex in `{}`: {e}", m.path("regex")));
                    None
                }
            }
        }
        (None, Some(j)) => {
            let src = scalar(cx, j, &m.path("jmespath"))?;
            match jmespath::compile(&src) {
                Ok(expr) => Some(Matcher::JmesPath(crate::rules::Query::new(expr))),
                Err(e) => {
                    cx.error(
                        j,
                        format!(
                            "invalid JMESPath expression in `{}`: {e}",
                            m.path("jmespath")
                        ),
                    );
                    None
                }
            }
        }
        (Some(_), Some(j)) => {
            cx.error(
                j,
                format!("`{what}` has both `regex` and `jmespath`; give one"),
            );
            None
        }
        (None, None) => {
            cx.error(
                node,
                format!("`{what}` needs a `regex` or a `jmespath` to match with"),
            );
            None
        }
    };
    let field = match m.get("field") {
        None => Some(Field::Msg),
        Some(f) => {
            let name = scalar(cx, f, &m.path("field"))?;
            let field = Field::from_name(&name);
            if field.is_none() {
                let hint = closest(&name, &Field::NAMES)
                    .map(|k| format!("did you mean `{k}`? "))
                    .unwrap_or_default();
                cx.error(
                    f,
                    format!(
                        "unknown field `{name}` in `{}`; {hint}expected one of: {}",
                        m.path("field"),
                        Field::NAMES.join(", ")
                    ),
                );
            }
            field
        }
    };
    let actions = match m.get("actions") {
        Some(a) => decode_actions(cx, a, &what, templates),
        None => {
            cx.error(node, format!("`{what}` needs `actions`"));
            None
        }
    };
    m.finish(cx);
    let (line, _) = position(node);
    Some(Rule {
        field: field?,
        matcher: matcher?,
        actions: actions?,
        origin: format!("{}:{line}", cx.file),
    })
}

const ACTION_TYPES: [&str; 4] = ["forward", "merge", "replace", "stop"];

fn decode_actions(
    cx: &mut Cx<'_>,
    node: &Node,
    rule: &str,
    templates: &mut Templates,
) -> Option<Vec<Action>> {
    let Some(seq) = node.as_sequence() else {
        cx.error(
            node,
            format!("expected a list for `{rule}.actions`, found {}", kind(node)),
        );
        return None;
    };
    let mut actions = Vec::new();
    let mut ok = true;
    for (i, a) in seq.iter().enumerate() {
        match decode_action(cx, a, &format!("{rule}.actions[{i}]"), templates) {
            Some(a) => actions.push(a),
            None => ok = false,
        }
    }
    ok.then_some(actions)
}

fn decode_action(
    cx: &mut Cx<'_>,
    node: &Node,
    what: &str,
    templates: &mut Templates,
) -> Option<Action> {
    let mut m = Map::new(cx, node, what)?;
    let Some(type_node) = m.get("type") else {
        cx.error(
            node,
            format!(
                "`{what}` needs a `type`: one of {}",
                ACTION_TYPES.join(", ")
            ),
        );
        return None;
    };
    let kind_name = scalar(cx, type_node, &m.path("type"))?;
    let action = match kind_name.as_str() {
        "forward" => {
            let topic = match m.get("topic") {
                Some(t) => template(cx, t, &m.path("topic"), templates),
                None => {
                    cx.error(node, format!("`{what}` (forward) needs a `topic`"));
                    None
                }
            };
            if let (Some(lit), Some(t)) = (topic.as_ref().and_then(|t| t.literal()), m.get("topic"))
            {
                if !crate::rules::is_legal_topic(lit) {
                    cx.error(
                        t,
                        format!("`{lit}` is not a legal Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"),
                    );
                }
            }
            let key = match m.get("key") {
                Some(k) => Some(template(cx, k, &m.path("key"), templates)?),
                None => None,
            };
            let mut headers = Vec::new();
            if let Some(h) = m.get("headers") {
                match h.as_mapping() {
                    Some(map) => {
                        for (name, value) in map.iter() {
                            let what = format!("{}.{}", m.path("headers"), name.as_str());
                            if let Some(t) = template(cx, value, &what, templates) {
                                headers.push((crate::template::forever(name), t));
                            }
                        }
                    }
                    None => cx.error(
                        h,
                        format!(
                            "expected a mapping of header names to templates for `{}`, found {}",
                            m.path("headers"),
                            kind(h)
                        ),
                    ),
                }
            }
            topic.map(|topic| Action::Forward {
                topic,
                key,
                headers,
            })
        }
        "merge" => match m.get("json") {
            Some(j) if j.as_mapping().is_some() => {
                merge_value(cx, j, &m.path("json"), templates).map(Action::Merge)
            }
            Some(j) => {
                cx.error(
                    j,
                    format!(
                        "expected a mapping for `{}`, found {}",
                        m.path("json"),
                        kind(j)
                    ),
                );
                None
            }
            None => {
                cx.error(node, format!("`{what}` (merge) needs a `json` mapping"));
                None
            }
        },
        "replace" => match m.get("template") {
            Some(t) => template(cx, t, &m.path("template"), templates).map(Action::Replace),
            None => {
                cx.error(node, format!("`{what}` (replace) needs a `template`"));
                None
            }
        },
        "stop" => Some(Action::Stop),
        other => {
            let hint = closest(other, &ACTION_TYPES)
                .map(|k| format!("did you mean `{k}`? "))
                .unwrap_or_default();
            cx.error(
                type_node,
                format!(
                    "unknown action type `{other}`; {hint}expected one of: {}",
                    ACTION_TYPES.join(", ")
                ),
            );
            None
        }
    };
    m.finish(cx);
    action
}

fn template(
    cx: &mut Cx<'_>,
    node: &Node,
    what: &str,
    templates: &mut Templates,
) -> Option<crate::template::Template> {
    let src = scalar(cx, node, what)?;
    match templates.compile(&src) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.error(node, format!("invalid template in `{what}`: {e}"));
            None
        }
    }
}

fn merge_value(
    cx: &mut Cx<'_>,
    node: &Node,
    what: &str,
    templates: &mut Templates,
) -> Option<MergeValue> {
    match node {
        Node::Mapping(map) => {
            let mut fields = Vec::new();
            let mut ok = true;
            for (k, v) in map.iter() {
                match merge_value(cx, v, &format!("{what}.{}", k.as_str()), templates) {
                    Some(v) => fields.push((k.as_str().to_string(), v)),
                    None => ok = false,
                }
            }
            ok.then_some(MergeValue::Object(fields))
        }
        Node::Sequence(items) => {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, v) in items.iter().enumerate() {
                match merge_value(cx, v, &format!("{what}[{i}]"), templates) {
                    Some(v) => out.push(v),
                    None => ok = false,
                }
            }
            ok.then_some(MergeValue::Array(out))
        }
        Node::Scalar(s) => {
            if s.may_coerce() {
                let text = s.as_str();
                if is_null(node) {
                    return Some(MergeValue::Json(serde_json::Value::Null));
                }
                if let Some(b) = s.as_bool() {
                    return Some(MergeValue::Json(b.into()));
                }
                if let Ok(n) = text.parse::<i64>() {
                    return Some(MergeValue::Json(n.into()));
                }
                if let Some(n) = text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .filter(|_| text.bytes().any(|b| b.is_ascii_digit()))
                {
                    return Some(MergeValue::Json(n.into()));
                }
            }
            template(cx, node, what, templates).map(MergeValue::Template)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse("test.yml", text, |_| None)
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const MINIMAL: &str = "global:\n  listen:\n    port: 1514\n  kafka:\n    conf:\n      bootstrap.servers: 'b:9092'\n";

    #[test]
    fn minimal_with_defaults() {
        let c = parse(MINIMAL).unwrap();
        let l = &c.global.listen[0];
        assert_eq!(c.global.listen.len(), 1);
        assert_eq!(l.address, "127.0.0.1");
        assert_eq!(l.port, 1514);
        assert!(matches!(l.protocol, Protocol::Tcp));
        assert_eq!(l.max_message_size, 65536);
        assert_eq!(c.global.kafka.topic, "logs");
        assert_eq!(c.global.kafka.buffer, 1024);
        assert_eq!(c.global.shutdown_timeout, Duration::from_secs(30));
        assert!(c.global.status.is_none());
        assert!(c.rules.rules().is_empty());
    }

    #[test]
    fn listeners_single_and_list() {
        let single = MINIMAL.replace(
            "    port: 1514\n",
            "    port: 6514\n    tls:\n      cert: c.pem\n      key: k.pem\n      ca: ca.pem\n",
        );
        let c = parse(&single).unwrap();
        let Protocol::Tls(t) = &c.global.listen[0].protocol else {
            panic!("not tls");
        };
        assert_eq!(t.client_auth, ClientAuth::Required);
        assert_eq!(t.handshake_timeout, Duration::from_secs(10));
        let list = MINIMAL.replace(
            "  listen:\n    port: 1514\n",
            "  listen:\n    - port: 1514\n    - port: 6514\n      tls:\n        cert: c.pem\n        key: k.pem\n        ca: ca.pem\n        client_auth: optional\n        handshake_timeout: 2s\n    - port: 514\n      protocol: udp\n      address: 0.0.0.0\n",
        );
        let c = parse(&list).unwrap();
        let kinds: Vec<_> = c
            .global
            .listen
            .iter()
            .map(|l| (l.port, l.protocol.name()))
            .collect();
        assert_eq!(kinds, [(1514, "tcp"), (6514, "tls"), (514, "udp")]);
        let Protocol::Tls(t) = &c.global.listen[1].protocol else {
            panic!("not tls");
        };
        assert_eq!(t.client_auth, ClientAuth::Optional);
        assert_eq!(t.handshake_timeout, Duration::from_secs(2));
        let bad = MINIMAL.replace("    port: 1514\n", "    port: 1514\n    protocol: tsl\n");
        let joined = errors(&bad).join("\n");
        assert!(
            joined.contains("unknown protocol `tsl`; did you mean `tls`?"),
            "{joined}"
        );
        let bad = MINIMAL.replace("    port: 1514\n", "    port: 1514\n    protocol: tls\n");
        assert!(errors(&bad)[0].contains("has no `tls` settings"));
    }

    #[test]
    fn env_overrides_kafka_conf() {
        let c = Config::parse("t.yml", MINIMAL, |k| match k {
            "KAFKA_BROKER" => Some("env:1".into()),
            "SASL_SCRAM_USERNAME" => Some("u".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.global.kafka.conf["bootstrap.servers"], "env:1");
        assert_eq!(c.global.kafka.conf["sasl.username"], "u");
        assert!(!c.global.kafka.conf.contains_key("sasl.password"));
    }

    #[test]
    fn unknown_keys_suggest_and_all_errors_are_reported() {
        let text = "global:\n  listen:\n    prot: 1514\n  kafka:\n    conf:\n      bootstrap.servers: b\n    buffr: 3\nrules:\n  - regex: '('\n    actions:\n      - type: forwrd\n  - jmespath: 'a'\n    fieeld: msg\n    actions:\n      - type: forward\n        topic: 'x'\n        tpic: 'y'\n";
        let errs = errors(text);
        let joined = errs.join("\n");
        assert!(
            joined.contains(
                "test.yml:3:5: unknown key `prot` in `global.listen`; did you mean `port`?"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("test.yml:7:5: unknown key `buffr`"),
            "{joined}"
        );
        assert!(joined.contains("did you mean `buffer`?"), "{joined}");
        assert!(joined.contains("test.yml:9:12: invalid regex"), "{joined}");
        assert!(
            joined
                .contains("test.yml:11:15: unknown action type `forwrd`; did you mean `forward`?"),
            "{joined}"
        );
        assert!(
            joined.contains("test.yml:13:5: unknown key `fieeld`"),
            "{joined}"
        );
        assert!(
            joined.contains("test.yml:17:9: unknown key `tpic`"),
            "{joined}"
        );
        assert_eq!(errs.len(), 6, "{joined}");
    }

    #[test]
    fn bad_values_are_located() {
        let text = "global:\n  listen:\n    port: lots\n  kafka:\n    conf:\n      bootstrap.servers: b\n    topic: 'no spaces'\nrules:\n  - regex: 'x'\n    field: hostnam\n    actions:\n      - type: forward\n        topic: '{{#if}}'\n      - type: merge\n        json: 'not a map'\n";
        let joined = errors(text).join("\n");
        assert!(
            joined.contains("test.yml:3:11: expected a whole number"),
            "{joined}"
        );
        assert!(
            joined.contains("test.yml:7:12: `no spaces` is not a legal Kafka topic"),
            "{joined}"
        );
        assert!(
            joined.contains("test.yml:10:12: unknown field `hostnam`"),
            "{joined}"
        );
        assert!(joined.contains("did you mean `hostname`?"), "{joined}");
        assert!(
            joined.contains("test.yml:13:16: invalid template"),
            "{joined}"
        );
        assert!(
            joined.contains("test.yml:15:15: expected a mapping"),
            "{joined}"
        );
    }

    #[test]
    fn yaml_syntax_errors_and_odd_documents_do_not_panic() {
        for text in [
            "global: [\n",
            "- a\n- b\n",
            "a: *nothing\n",
            "a: &x 1\nb: *x\n",
            "global:\n  listen: 1\n  listen: 2\n",
            "",
            "global: !!str x\n",
            "rules: 3\nglobal: 4\n",
        ] {
            let errs = errors(text);
            assert!(!errs.is_empty());
            assert!(errs[0].starts_with("test.yml"), "{errs:?}");
        }
    }

    #[test]
    fn missing_broker_is_reported() {
        let joined = errors("global:\n  listen: {}\n  kafka: {}\n").join("\n");
        assert!(joined.contains("bootstrap.servers"), "{joined}");
    }

    #[test]
    fn merge_values_keep_their_types() {
        let text = format!(
            "{MINIMAL}rules:\n  - regex: '.'\n    actions:\n      - type: merge\n        json:\n          n: 3\n          f: 1.5\n          b: true\n          s: '3'\n          t: '{{{{msg}}}}'\n          l: [1, x]\n      - type: forward\n        topic: t\n"
        );
        let c = parse(&text).unwrap();
        let Action::Merge(MergeValue::Object(fields)) = &c.rules.rules()[0].actions[0] else {
            panic!("not a merge");
        };
        let kinds: Vec<String> = fields
            .iter()
            .map(|(k, v)| match v {
                MergeValue::Json(j) => format!("{k}={j}"),
                MergeValue::Template(_) => format!("{k}=template"),
                MergeValue::Array(a) => format!("{k}=array{}", a.len()),
                MergeValue::Object(_) => format!("{k}=object"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "n=3",
                "f=1.5",
                "b=true",
                "s=template",
                "t=template",
                "l=array2"
            ]
        );
    }
}
