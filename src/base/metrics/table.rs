//! Every counter hotdog keeps, in one table: its name in `/stats` and statsd, its Prometheus
//! name, kind and help, and where it is read from.

use super::*;

/// Whether a value only grows, or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One value, under its name in `/stats` and statsd, and in `/metrics`.
pub struct Counter {
    /// The name in `/stats` and statsd (after `hotdog.`); hotdog 0.5's names.
    pub name: &'static str,
    /// The Prometheus name (after `hotdog_`) and its labels; `None` for a total that
    /// Prometheus sums from a [`Family`] with the same prefix, and for the latency count and sum,
    /// which `/metrics` has in the histogram `hotdog_delivery_latency_seconds`.
    pub prometheus: Option<(&'static str, &'static str)>,
    pub kind: Kind,
    pub help: &'static str,
    pub read: fn(&Metrics) -> i64,
}

/// Values with one label (the topic, an error code, a reason): `<prefix>.<label>` in `/stats`
/// and statsd, `<prometheus>{<label_name>="<label>"}` in `/metrics`.
pub struct Family {
    pub prefix: &'static str,
    pub prometheus: &'static str,
    pub label_name: &'static str,
    pub help: &'static str,
    pub read: fn(&Metrics) -> Vec<(String, u64)>,
}

/// Every single value hotdog reports; `/stats`, `/metrics` and statsd are all made from this
/// table and [`FAMILIES`] (and `/metrics` adds the latency histogram).
pub static COUNTERS: [Counter; 53] = [
    Counter {
        name: "connections",
        prometheus: Some(("connections", "")),
        kind: Kind::Gauge,
        help: "Connections open now.",
        read: |m| m.connections.load(Relaxed),
    },
    Counter {
        name: "connections.total",
        prometheus: Some(("connections_total", "")),
        kind: Kind::Counter,
        help: "Connections accepted.",
        read: |m| get(&m.connections_total),
    },
    Counter {
        name: "connections.handshaking",
        prometheus: Some(("connections_handshaking", "")),
        kind: Kind::Gauge,
        help: "TLS connections still in their handshake (not in `connections` yet).",
        read: |m| m.handshaking.load(Relaxed),
    },
    Counter {
        name: "connections.refused.listener_limit",
        prometheus: Some(("connections_refused_total", "{reason=\"listener_limit\"}")),
        kind: Kind::Counter,
        help: "Connections closed at once at a limit: a listener's max_connections, max_connections_per_source, a PROXY header refused.",
        read: |m| get(&m.refused_listener),
    },
    Counter {
        name: "connections.refused.source_limit",
        prometheus: Some(("connections_refused_total", "{reason=\"source_limit\"}")),
        kind: Kind::Counter,
        help: "Connections closed at once at a limit: a listener's max_connections, max_connections_per_source, a PROXY header refused.",
        read: |m| get(&m.refused_source),
    },
    Counter {
        name: "connections.refused.proxy_protocol",
        prometheus: Some(("connections_refused_total", "{reason=\"proxy_protocol\"}")),
        kind: Kind::Counter,
        help: "Connections closed at once at a limit: a listener's max_connections, max_connections_per_source, a PROXY header refused.",
        read: |m| get(&m.proxy_refused),
    },
    Counter {
        name: "connections.idle_timeout",
        prometheus: Some(("connections_idle_closed_total", "")),
        kind: Kind::Counter,
        help: "Connections closed after idle_timeout without a byte.",
        read: |m| get(&m.idle_closed),
    },
    Counter {
        name: "status.refused",
        prometheus: Some(("status_refused_total", "")),
        kind: Kind::Counter,
        help: "Status server connections closed at once, over its cap.",
        read: |m| get(&m.status_refused),
    },
    Counter {
        name: "kafka.topics_over_limit",
        prometheus: Some(("topics_over_limit_total", "")),
        kind: Kind::Counter,
        help: "Records sent to global.kafka.topic because their topic would pass global.kafka.max_topics.",
        read: |m| get(&m.topics_over_limit),
    },
    Counter {
        name: "spool.records",
        prometheus: Some(("spool_records", "")),
        kind: Kind::Gauge,
        help: "Records in the spool that Kafka does not have yet.",
        read: |m| m.spool_records.load(Relaxed),
    },
    Counter {
        name: "spool.bytes",
        prometheus: Some(("spool_bytes", "")),
        kind: Kind::Gauge,
        help: "Bytes the spool takes on disk.",
        read: |m| m.spool_bytes.load(Relaxed),
    },
    Counter {
        name: "spool.oldest_age_seconds",
        prometheus: Some(("spool_oldest_age_seconds", "")),
        kind: Kind::Gauge,
        help: "Age of the oldest record in the spool that Kafka does not have yet.",
        read: |m| m.spool_oldest_age.load(Relaxed),
    },
    Counter {
        name: "spool.written",
        prometheus: Some(("spool_written_total", "")),
        kind: Kind::Counter,
        help: "Records written to the spool.",
        read: |m| get(&m.spool_written),
    },
    Counter {
        name: "spool.replayed",
        prometheus: Some(("spool_replayed_total", "")),
        kind: Kind::Counter,
        help: "Records of an earlier run read back from the spool and sent.",
        read: |m| get(&m.spool_replayed),
    },
    Counter {
        name: "spool.corrupt",
        prometheus: Some(("spool_corrupt_total", "")),
        kind: Kind::Counter,
        help: "Damaged places found in the spool (bad checksum, torn write, unreadable segment).",
        read: |m| get(&m.spool_corrupt),
    },
    Counter {
        name: "spool.full",
        prometheus: Some(("spool_full_total", "")),
        kind: Kind::Counter,
        help: "Times the spool reached max_size or a full disk and hotdog pushed back.",
        read: |m| get(&m.spool_full),
    },
    Counter {
        name: "relp.sessions",
        prometheus: Some(("relp_sessions", "")),
        kind: Kind::Gauge,
        help: "RELP sessions open now.",
        read: |m| m.relp_sessions.load(Relaxed),
    },
    Counter {
        name: "relp.sessions.total",
        prometheus: Some(("relp_sessions_total", "")),
        kind: Kind::Counter,
        help: "RELP sessions opened.",
        read: |m| get(&m.relp_sessions_total),
    },
    Counter {
        name: "relp.messages",
        prometheus: Some(("relp_messages_total", "")),
        kind: Kind::Counter,
        help: "RELP syslog messages received.",
        read: |m| get(&m.relp_messages),
    },
    Counter {
        name: "relp.acknowledged",
        prometheus: Some(("relp_acknowledged_total", "")),
        kind: Kind::Counter,
        help: "RELP messages answered 200 OK: every record they made is in Kafka or a dead letter.",
        read: |m| get(&m.relp_acknowledged),
    },
    Counter {
        name: "relp.outstanding",
        prometheus: Some(("relp_outstanding", "")),
        kind: Kind::Gauge,
        help: "RELP messages received and not yet answered.",
        // Every message received is answered, left unanswered when its session ends, or
        // still waiting.
        read: |m| get(&m.relp_messages) - get(&m.relp_acknowledged) - get(&m.relp_unacknowledged),
    },
    Counter {
        name: "relp.unacknowledged",
        prometheus: Some(("relp_unacknowledged_total", "")),
        kind: Kind::Counter,
        help: "RELP messages left unanswered when their session ended; their senders send them again.",
        read: |m| get(&m.relp_unacknowledged),
    },
    Counter {
        name: "relp.refused",
        prometheus: Some(("relp_refused_total", "")),
        kind: Kind::Counter,
        help: "RELP sessions closed for a frame or command that breaks the protocol.",
        read: |m| get(&m.relp_refused),
    },
    Counter {
        name: "kafka.producer.fatal",
        prometheus: Some(("kafka_producer_fatal_total", "")),
        kind: Kind::Counter,
        help: "Fatal errors of a Kafka producer; each is followed by a new producer.",
        read: |m| get(&m.producer_fatal),
    },
    Counter {
        name: "kafka.producer.restarts",
        prometheus: Some(("kafka_producer_restarts_total", "")),
        kind: Kind::Counter,
        help: "Kafka producers made again after a fatal error, their undelivered records sent again.",
        read: |m| get(&m.producer_restarts),
    },
    Counter {
        name: "config.generation",
        prometheus: Some(("config_generation", "")),
        kind: Kind::Gauge,
        help: "The generation of the configuration in use (1 at start, one more per reload).",
        read: |m| get(&m.config_generation),
    },
    Counter {
        name: "config.reloads",
        prometheus: Some(("config_reloads_total", "")),
        kind: Kind::Counter,
        help: "Reloads that put a new configuration in use.",
        read: |m| get(&m.config_reloads),
    },
    Counter {
        name: "config.reload_failed",
        prometheus: Some(("config_reload_failures_total", "")),
        kind: Kind::Counter,
        help: "Reloads refused: the file was not valid, or a new listener could not start.",
        read: |m| get(&m.config_reload_failed),
    },
    Counter {
        name: "lines",
        prometheus: Some(("lines_received_total", "")),
        kind: Kind::Counter,
        help: "Lines read.",
        read: |m| get(&m.lines),
    },
    Counter {
        name: "lines.forwarded",
        prometheus: Some(("lines_forwarded_total", "")),
        kind: Kind::Counter,
        help: "Lines a rule forwarded.",
        read: |m| get(&m.forwarded),
    },
    Counter {
        name: "lines.unrouted",
        prometheus: Some(("lines_unrouted_total", "")),
        kind: Kind::Counter,
        help: "Lines no rule forwarded (discarded on purpose).",
        read: |m| get(&m.unrouted),
    },
    Counter {
        name: "lines.truncated",
        prometheus: Some(("lines_truncated_total", "")),
        kind: Kind::Counter,
        help: "Frames cut to max_message_size.",
        read: |m| get(&m.truncated),
    },
    Counter {
        name: "lines.invalid_utf8",
        prometheus: Some(("lines_invalid_utf8_total", "")),
        kind: Kind::Counter,
        help: "Frames that were not UTF-8.",
        read: |m| get(&m.invalid_utf8),
    },
    Counter {
        name: "lines.in_flight",
        prometheus: Some(("lines_in_flight", "")),
        kind: Kind::Gauge,
        help: "Lines read and not yet delivered, dead-lettered, discarded or dropped.",
        read: Metrics::in_flight,
    },
    Counter {
        name: "error.log_parse",
        prometheus: Some(("parse_errors_total", "")),
        kind: Kind::Counter,
        help: "Lines that were neither RFC 5424 nor RFC 3164.",
        read: |m| get(&m.unparsed),
    },
    Counter {
        name: "error.topic_parse_failed",
        prometheus: Some(("topic_errors_total", "")),
        kind: Kind::Counter,
        help: "Rendered topics that were not legal topic names.",
        read: |m| get(&m.invalid_topics),
    },
    Counter {
        name: "error.template_render",
        prometheus: Some(("template_errors_total", "")),
        kind: Kind::Counter,
        help: "Templates that failed to render.",
        read: |m| get(&m.render_errors),
    },
    Counter {
        name: "error.merge_of_invalid_json",
        prometheus: Some(("merge_errors_total", "")),
        kind: Kind::Counter,
        help: "Merge actions on output that is not a JSON object.",
        read: |m| get(&m.merge_errors),
    },
    Counter {
        name: "tls.handshakes",
        prometheus: Some(("tls_handshakes_total", "")),
        kind: Kind::Counter,
        help: "TLS handshakes that completed.",
        read: |m| get(&m.tls_handshakes),
    },
    Counter {
        name: "tls.handshake_failed",
        prometheus: Some(("tls_handshake_failures_total", "{reason=\"failed\"}")),
        kind: Kind::Counter,
        help: "TLS handshakes that failed or were cut off at the timeout.",
        read: |m| get(&m.tls_handshake_failed),
    },
    Counter {
        name: "tls.handshake_timeout",
        prometheus: Some(("tls_handshake_failures_total", "{reason=\"timeout\"}")),
        kind: Kind::Counter,
        help: "TLS handshakes that failed or were cut off at the timeout.",
        read: |m| get(&m.tls_handshake_timeout),
    },
    Counter {
        name: "udp.dropped",
        prometheus: Some(("udp_dropped_total", "")),
        kind: Kind::Counter,
        help: "UDP messages dropped with the queue full.",
        read: |m| get(&m.udp_dropped),
    },
    Counter {
        name: "kafka.submitted",
        prometheus: None,
        kind: Kind::Counter,
        help: "Records handed to librdkafka.",
        read: |m| get(&m.submitted),
    },
    Counter {
        name: "kafka.delivered",
        prometheus: None,
        kind: Kind::Counter,
        help: "Records Kafka acknowledged.",
        read: |m| get(&m.delivered),
    },
    Counter {
        name: "kafka.producer.error",
        prometheus: None,
        kind: Kind::Counter,
        help: "Records Kafka refused or librdkafka gave up on.",
        read: |m| get(&m.failed),
    },
    Counter {
        name: "kafka.dead_lettered",
        prometheus: None,
        kind: Kind::Counter,
        help: "Records that ended in the dead-letter topic or file.",
        read: |m| get(&m.dead_lettered),
    },
    Counter {
        name: "dead_letter_file.write_failed",
        prometheus: Some(("dead_letter_file_write_failures_total", "")),
        kind: Kind::Counter,
        help: "Dead letters a write to the dead-letter file failed for, each time it failed (they wait and are tried again).",
        read: |m| get(&m.dead_letter_write_failed),
    },
    Counter {
        name: "dead_letter_file.unwritten",
        prometheus: Some(("dead_letter_file_unwritten_total", "")),
        kind: Kind::Counter,
        help: "Dead letters the dead-letter file still refused when hotdog stopped (logged whole instead).",
        read: |m| get(&m.dead_letter_unwritten),
    },
    Counter {
        name: "queue.channel",
        prometheus: Some(("queue_depth", "{queue=\"channel\"}")),
        kind: Kind::Gauge,
        help: "Records waiting: in hotdog's outbox to the publisher, in librdkafka.",
        read: |m| m.queue(0),
    },
    Counter {
        name: "queue.librdkafka",
        prometheus: Some(("queue_depth", "{queue=\"librdkafka\"}")),
        kind: Kind::Gauge,
        help: "Records waiting: in hotdog's outbox to the publisher, in librdkafka.",
        read: |m| m.queue(1),
    },
    Counter {
        name: "memory.payload_blocks",
        prometheus: Some(("payload_blocks", "")),
        kind: Kind::Gauge,
        help: "64 KiB blocks of record payloads alive (lent to librdkafka only while at most 512).",
        read: |_| saturate(hotdog_stages::core::blocks_alive() as u64),
    },
    Counter {
        name: "kafka.latency_ms.count",
        prometheus: None,
        kind: Kind::Counter,
        help: "Records whose acknowledgement was timed (in /metrics: the histogram).",
        read: |m| saturate(m.latency.read().1),
    },
    Counter {
        name: "kafka.latency_ms.sum",
        prometheus: None,
        kind: Kind::Counter,
        help: "Line read to Kafka acknowledgement, the sum in milliseconds (in /metrics: the histogram).",
        read: |m| get(&m.latency.sum),
    },
];

/// Every labelled family of values (see [`COUNTERS`]).
pub static FAMILIES: [Family; 6] = [
    Family {
        prefix: "kafka.submitted",
        prometheus: "kafka_submitted_total",
        label_name: "topic",
        help: "Records handed to librdkafka.",
        read: |m| m.per_topic(|c| c.submitted),
    },
    Family {
        prefix: "kafka.delivered",
        prometheus: "kafka_delivered_total",
        label_name: "topic",
        help: "Records Kafka acknowledged.",
        read: |m| m.per_topic(|c| c.delivered),
    },
    Family {
        prefix: "kafka.producer.error",
        prometheus: "kafka_failed_total",
        label_name: "topic",
        help: "Records Kafka refused or librdkafka gave up on.",
        read: |m| m.per_topic(|c| c.failed),
    },
    Family {
        prefix: "kafka.producer.error",
        prometheus: "kafka_errors_total",
        label_name: "code",
        help: "Records Kafka refused or librdkafka gave up on, by error code.",
        read: |m| entries(&m.errors),
    },
    Family {
        prefix: "kafka.dead_lettered",
        prometheus: "dead_lettered_total",
        label_name: "topic",
        help:
            "Records that ended in the dead-letter topic or file, by the topic they were meant for.",
        read: |m| m.per_topic(|c| c.dead_lettered),
    },
    Family {
        prefix: "kafka.dead_letter",
        prometheus: "dead_letters_total",
        label_name: "reason",
        help: "Records sent to the dead-letter topic or file, by reason.",
        read: |m| entries(&m.dead_letter_reasons),
    },
];
