//! Decoding `global:`: listeners, Kafka, metrics, the status server, the shutdown timeout.

use crate::frame::lines::Framing;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use marked_yaml::Node;

use super::tls::decode_tls;
use super::yaml::{every, flag, kind, scalar, size, unknown_name, Cx, Map};
use super::{
    DeadLetter, Fsync, Global, Kafka, Listen, Metrics, Outside, Protocol, ProxyProtocol, Reload,
    RelpAck, Spool, Tls, ENV_OVERRIDES,
};

pub(super) fn decode(cx: &mut Cx<'_>, node: &Node, outside: &Outside<'_>) -> Option<Global> {
    let mut g = Map::new(cx, node, "global")?;
    let listen = match g.get("listen") {
        Some(n) => decode_listeners(cx, n).inspect(|l| check_tls_files(cx, l, outside)),
        None => {
            cx.error(node, "`global.listen` is required");
            None
        }
    };
    let kafka = match g.get("kafka") {
        Some(n) => decode_kafka(cx, n, outside),
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
        Some(n) => super::status::decode(cx, n, outside).map(Some),
        None => Some(None),
    };
    let shutdown_timeout = g.duration_at_most(
        cx,
        "shutdown_timeout",
        super::MAX_TIMEOUT,
        Duration::from_secs(30),
    );
    let reload = match g.get("reload") {
        Some(n) => decode_reload(cx, n),
        None => Some(Reload::default()),
    };
    let max_rules_memory = g.number_in(
        cx,
        "max_rules_memory",
        super::MIN_RULES_MEMORY..=super::MAX_RULES_MEMORY,
        super::DEFAULT_RULES_MEMORY,
    );
    let spool = match g.get("spool") {
        Some(n) => decode_spool(cx, n).map(Some),
        None => Some(None),
    };
    if let (Some(listen), Some(None)) = (&listen, &spool) {
        if let Some(l) = listen.iter().find(|l| l.ack == RelpAck::Spool) {
            cx.error(
                node,
                format!(
                    "the listener on port {} answers its senders once records are in the spool \
                     (`ack: spool`), but `global.spool` is not set",
                    l.port
                ),
            );
        }
    }
    g.finish(cx);
    Some(Global {
        listen: listen?,
        kafka: kafka?,
        metrics: metrics?,
        status: status?,
        shutdown_timeout: shutdown_timeout?,
        reload: reload?,
        max_rules_memory,
        spool: spool?,
    })
}

/// `global.spool`: `path` (required), `max_size`, `fsync`, `id_header`.
fn decode_spool(cx: &mut Cx<'_>, node: &Node) -> Option<Spool> {
    let mut m = Map::new(cx, node, "global.spool")?;
    let path = m.required_string(cx, "path").map(PathBuf::from);
    let max_size = match m.get("max_size") {
        None => Some(super::DEFAULT_SPOOL_SIZE),
        Some(n) => size(cx, n, "global.spool.max_size").and_then(|v| {
            if v < super::MIN_SPOOL_SIZE {
                cx.error(
                    n,
                    format!("`global.spool.max_size` must be at least 1MiB, found {v} bytes"),
                );
                return None;
            }
            Some(v)
        }),
    };
    let fsync = match m.get("fsync") {
        None => Some(Fsync::Every(Duration::from_secs(1))),
        Some(Node::Scalar(s)) if s.as_str() == "always" => Some(Fsync::Always),
        Some(_) => m
            .duration_at_most(cx, "fsync", Duration::from_secs(60), Duration::ZERO)
            .and_then(|d| {
                if d.is_zero() {
                    if let Some(n) = m.get("fsync") {
                        cx.error(
                            n,
                            "`global.spool.fsync` must be `always` or a duration from 1ms to 60s",
                        );
                    }
                    return None;
                }
                Some(Fsync::Every(d))
            }),
    };
    let id_header = flag(cx, m.get("id_header"), "global.spool.id_header", false);
    m.finish(cx);
    Some(Spool {
        path: path?,
        max_size: max_size?,
        fsync: fsync?,
        id_header: id_header?,
    })
}

/// Whether the files every TLS listener names load; an error is located at its `tls` key.
fn check_tls_files(cx: &mut Cx<'_>, listeners: &[Listen], outside: &Outside<'_>) {
    for (i, l) in listeners.iter().enumerate() {
        if let Some(t) = l.protocol.tls() {
            super::tls::check_files(cx, outside, t, &format!("global.listen[{i}].tls"));
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
    every(
        seq.iter()
            .enumerate()
            .map(|(i, item)| decode_listen(cx, item, &format!("global.listen[{i}]"))),
    )
}

const PROTOCOLS: [&str; 4] = ["tcp", "tls", "relp", "udp"];

/// Listener keys about connections, which a UDP listener does not have.
const STREAM_ONLY: [&str; 5] = [
    "max_connections",
    "max_connections_per_source",
    "tcp_keepalive",
    "idle_timeout",
    "proxy_protocol",
];

/// The listener's protocol from `protocol: name` and whether it has `tls` settings.
fn protocol(
    cx: &mut Cx<'_>,
    node: &Node,
    what: &str,
    name: &str,
    tls_node: Option<&Node>,
    tls: Option<Tls>,
) -> Option<Protocol> {
    match (name, tls_node, tls) {
        ("tcp", None, _) => Some(Protocol::Tcp),
        ("udp", None, _) => Some(Protocol::Udp),
        ("tls", Some(_), Some(t)) => Some(Protocol::Tls(t)),
        ("relp", None, _) => Some(Protocol::Relp(None)),
        ("relp", Some(_), Some(t)) => Some(Protocol::Relp(Some(t))),
        ("tls" | "relp", Some(_), None) => None,
        ("tls", None, _) => {
            cx.error(
                node,
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
            cx.error(node, unknown_name("protocol", other, &PROTOCOLS));
            None
        }
    }
}

fn decode_listen(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<Listen> {
    let mut m = Map::new(cx, node, what)?;
    let address = m
        .string(cx, "address")
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = m.number(cx, "port").unwrap_or(1514);
    let max_message_size = m.number_in(
        cx,
        "max_message_size",
        1..=super::MAX_MESSAGE_SIZE,
        64 * 1024,
    );
    let max_connections = m.number_in(cx, "max_connections", 1..=super::MAX_CONNECTIONS, 10_000);
    let max_connections_per_source = m.get("max_connections_per_source").is_some().then(|| {
        m.number_in(
            cx,
            "max_connections_per_source",
            1..=super::MAX_CONNECTIONS,
            0,
        )
    });
    let tcp_keepalive = optional_duration(cx, &mut m, "tcp_keepalive", Some(60));
    let idle_timeout = optional_duration(cx, &mut m, "idle_timeout", None);
    let proxy_protocol = m
        .get("proxy_protocol")
        .and_then(|n| decode_proxy_protocol(cx, n, &format!("{what}.proxy_protocol")));
    let timezone = decode_timezone(cx, &mut m);
    let protocol = decode_protocol(cx, &mut m, what);
    let ack = decode_ack(cx, &mut m, protocol.as_ref());
    let framing = decode_framing(cx, &mut m, protocol.as_ref());
    let receive_buffer = decode_receive_buffer(cx, &mut m, protocol.as_ref());
    let quota = match m.get("quota") {
        None => Some(None),
        Some(n) => super::quota::decode(cx, n, &m.path("quota"), protocol.as_ref()).map(Some),
    };
    m.finish(cx);
    Some(Listen {
        address,
        port,
        protocol: protocol?,
        max_message_size,
        max_connections,
        max_connections_per_source,
        tcp_keepalive: tcp_keepalive?,
        idle_timeout: idle_timeout?,
        proxy_protocol,
        timezone: timezone?,
        ack: ack?,
        framing: framing?,
        receive_buffer: receive_buffer?,
        quota: quota?,
    })
}

/// The most a UDP listener asks for as its receive buffer.
const MAX_RECEIVE_BUFFER: u64 = 1 << 30;

/// A UDP listener's `receive_buffer`: a size, at most 1 GiB.
fn decode_receive_buffer(
    cx: &mut Cx<'_>,
    m: &mut Map<'_>,
    protocol: Option<&Protocol>,
) -> Option<Option<usize>> {
    let Some(n) = m.get("receive_buffer") else {
        return Some(None);
    };
    let what = m.path("receive_buffer");
    let bytes = size(cx, n, &what)?;
    if !(1..=MAX_RECEIVE_BUFFER).contains(&bytes) {
        cx.error(
            n,
            format!("`{what}` must be from 1 byte to 1GiB, found {bytes} bytes"),
        );
        return None;
    }
    if let Some(p) = protocol.filter(|p| !matches!(p, Protocol::Udp)) {
        cx.error(
            n,
            format!("`{what}` is for UDP listeners; this one is {}", p.name()),
        );
        return None;
    }
    usize::try_from(bytes).ok().map(Some)
}

/// A listener's `framing`: `auto`, `lf`, `octet_counted` or `nul`, for TCP and TLS listeners
/// (UDP has a message per datagram, RELP its own frames).
fn decode_framing(
    cx: &mut Cx<'_>,
    m: &mut Map<'_>,
    protocol: Option<&Protocol>,
) -> Option<Framing> {
    let Some(n) = m.get("framing") else {
        return Some(Framing::Auto);
    };
    let name = scalar(cx, n, &m.path("framing"))?;
    let Some(framing) = Framing::from_name(&name) else {
        cx.error(n, unknown_name("framing", &name, &Framing::NAMES));
        return None;
    };
    if let Some(p) = protocol.filter(|p| matches!(p, Protocol::Udp | Protocol::Relp(_))) {
        cx.error(
            n,
            format!(
                "`{}` is for TCP and TLS listeners; this one is {} (which frames its messages \
                 itself)",
                m.path("framing"),
                p.name()
            ),
        );
        return None;
    }
    Some(framing)
}

/// A listener's `ack`: `kafka` or `spool`, for RELP listeners only.
fn decode_ack(cx: &mut Cx<'_>, m: &mut Map<'_>, protocol: Option<&Protocol>) -> Option<RelpAck> {
    let Some(n) = m.get("ack") else {
        return Some(RelpAck::Kafka);
    };
    let text = scalar(cx, n, &m.path("ack"))?;
    let ack = match text.as_str() {
        "kafka" => RelpAck::Kafka,
        "spool" => RelpAck::Spool,
        other => {
            cx.error(
                n,
                format!(
                    "expected `kafka` or `spool` for `{}`, found `{other}`",
                    m.path("ack")
                ),
            );
            return None;
        }
    };
    if let Some(p) = protocol.filter(|p| !matches!(p, Protocol::Relp(_))) {
        cx.error(
            n,
            format!(
                "`{}` is for RELP listeners (they answer their senders); this one is {}",
                m.path("ack"),
                p.name()
            ),
        );
        return None;
    }
    Some(ack)
}

/// A listener's `timezone`: `Some(None)` when it has none.
fn decode_timezone(cx: &mut Cx<'_>, m: &mut Map<'_>) -> Option<Option<super::Timezone>> {
    let Some(n) = m.get("timezone") else {
        return Some(None);
    };
    let name = scalar(cx, n, &m.path("timezone"))?;
    match jiff::tz::TimeZone::get(&name) {
        Ok(zone) => Some(Some(super::Timezone { name, zone })),
        Err(e) => {
            cx.error(
                n,
                format!(
                    "`{}`: `{name}` is not an IANA time zone (like `Europe/Paris` or `UTC`): {e}",
                    m.path("timezone")
                ),
            );
            None
        }
    }
}

/// A listener's `protocol` with its `tls`, and the keys a UDP listener has no use for.
fn decode_protocol(cx: &mut Cx<'_>, m: &mut Map<'_>, what: &str) -> Option<Protocol> {
    let tls_node = match m.get("tls") {
        Some(Node::Scalar(s)) if matches!(s.as_str(), "false" | "no" | "off") => None,
        other => other,
    };
    let tls_at = m.key_position("tls");
    let tls = tls_node.and_then(|n| decode_tls(cx, n, &format!("{what}.tls"), tls_at));
    let protocol = match m.get("protocol") {
        None => match (tls_node, tls) {
            (None, _) => Some(Protocol::Tcp),
            (Some(_), Some(t)) => Some(Protocol::Tls(t)),
            (Some(_), None) => None,
        },
        Some(p) => scalar(cx, p, &m.path("protocol"))
            .and_then(|name| protocol(cx, p, what, &name, tls_node, tls)),
    };
    if matches!(protocol, Some(Protocol::Udp)) {
        for key in STREAM_ONLY {
            if let Some(n) = m.get(key) {
                cx.error(
                    n,
                    format!("`{what}.{key}` is for tcp, tls and relp listeners, not udp"),
                );
            }
        }
    }
    protocol
}

/// A duration that `0`, `false`, `no` or `off` turns off; `default` in seconds when absent.
fn optional_duration(
    cx: &mut Cx<'_>,
    m: &mut Map<'_>,
    key: &'static str,
    default: Option<u64>,
) -> Option<Option<Duration>> {
    match m.get(key) {
        None => Some(default.map(Duration::from_secs)),
        Some(Node::Scalar(s)) if matches!(s.as_str(), "false" | "no" | "off" | "0") => Some(None),
        Some(_) => {
            let d = m.duration_at_most(cx, key, super::MAX_TIMEOUT, Duration::ZERO)?;
            if d < Duration::from_secs(1) {
                if let Some(n) = m.get(key) {
                    cx.error(
                        n,
                        format!("`{}` must be at least 1s (or 0 for off)", m.path(key)),
                    );
                }
                return None;
            }
            Some(Some(d))
        }
    }
}

/// `proxy_protocol: {from: [network, ...]}`: networks as `10.0.0.0/8` or single addresses.
fn decode_proxy_protocol(cx: &mut Cx<'_>, node: &Node, what: &str) -> Option<ProxyProtocol> {
    let mut m = Map::new(cx, node, what)?;
    let from = match m.get("from") {
        Some(n) => super::yaml::list(cx, n, &m.path("from")).and_then(|items| {
            every(items.iter().map(|item| {
                let text = scalar(cx, item, &format!("{what}.from"))?;
                let net = text.parse::<ipnet::IpNet>().ok().or_else(|| {
                    text.parse::<std::net::IpAddr>()
                        .ok()
                        .map(ipnet::IpNet::from)
                });
                if net.is_none() {
                    cx.error(
                        item,
                        format!(
                            "expected a network like `10.0.0.0/8` or an address in `{what}.from`, found `{text}`"
                        ),
                    );
                }
                net
            }))
        }),
        None => {
            cx.error(
                node,
                format!("`{what}` needs `from`: the networks of the load balancers that send it"),
            );
            None
        }
    };
    m.finish(cx);
    Some(ProxyProtocol { from: from? })
}

/// `global.kafka.conf`: librdkafka's settings, as they are.
fn decode_conf(cx: &mut Cx<'_>, c: &Node, outside: &Outside<'_>) -> BTreeMap<String, String> {
    let mut conf = BTreeMap::new();
    let Some(map) = c.as_mapping() else {
        cx.error(
            c,
            format!(
                "expected a mapping of librdkafka settings for `global.kafka.conf`, found {}",
                kind(c)
            ),
        );
        return conf;
    };
    for (k, v) in map.iter() {
        let what = format!("global.kafka.conf.{}", k.as_str());
        if let Some(value) = scalar(cx, v, &what) {
            let key = Node::Scalar(k.clone());
            if let Some((key, value)) = super::secrets::setting(cx, &key, v, value, outside) {
                if conf.insert(key.clone(), value).is_some() {
                    cx.error(
                        v,
                        format!("`global.kafka.conf` sets `{key}` twice (once from a file)"),
                    );
                }
            }
        }
    }
    conf
}

/// `global.kafka.dead_letter`: its topic and file, the file checked by `outside`.
fn decode_dead_letter(cx: &mut Cx<'_>, d: &Node, outside: &Outside<'_>) -> DeadLetter {
    let mut dead_letter = DeadLetter::default();
    let Some(mut dm) = Map::new(cx, d, "global.kafka.dead_letter") else {
        return dead_letter;
    };
    dead_letter.topic = dm.string(cx, "topic");
    if let (Some(t), Some(n)) = (&dead_letter.topic, dm.get("topic")) {
        if !crate::route::is_legal_topic(t) {
            cx.error(n, format!("`{t}` is not a legal Kafka topic name"));
        }
    }
    dead_letter.file = dm.string(cx, "file").map(PathBuf::from);
    if let (Some(path), Some(n)) = (&dead_letter.file, dm.get("file")) {
        if let Err(why) = (outside.check_output)(path) {
            cx.error(n, format!("the dead-letter file: {why}"));
        }
    }
    dm.finish(cx);
    dead_letter
}

fn decode_kafka(cx: &mut Cx<'_>, node: &Node, outside: &Outside<'_>) -> Option<Kafka> {
    let env = outside.var;
    let mut m = Map::new(cx, node, "global.kafka")?;
    let mut conf = m
        .get("conf")
        .map(|c| decode_conf(cx, c, outside))
        .unwrap_or_default();
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
    if !crate::route::is_legal_topic(&topic) {
        if let Some(n) = m.get("topic") {
            cx.error(
                n,
                format!(
                    "`{topic}` is not a legal Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"
                ),
            );
        }
    }
    let buffer = m.number_in(cx, "buffer", 1..=super::MAX_BUFFER, 1024);
    let max_topics = m.number_in(cx, "max_topics", 1..=super::MAX_TOPICS, 1000);
    let timeout_ms = m.number(cx, "timeout_ms").unwrap_or(5000);
    let dead_letter = m
        .get("dead_letter")
        .map(|d| decode_dead_letter(cx, d, outside))
        .unwrap_or_default();
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
        max_topics,
    })
}

fn decode_metrics(cx: &mut Cx<'_>, node: &Node) -> Option<Metrics> {
    let mut m = Map::new(cx, node, "global.metrics")?;
    let statsd = m.string(cx, "statsd");
    m.finish(cx);
    Some(Metrics { statsd })
}

fn decode_reload(cx: &mut Cx<'_>, node: &Node) -> Option<Reload> {
    let mut m = Map::new(cx, node, "global.reload")?;
    let watch = flag(cx, m.get("watch"), "global.reload.watch", false);
    let debounce = m.duration_at_most(
        cx,
        "debounce",
        Duration::from_secs(60),
        Reload::default().debounce,
    );
    m.finish(cx);
    Some(Reload {
        watch: watch?,
        debounce: debounce?,
    })
}
