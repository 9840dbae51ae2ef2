//! Counters every stage updates, read by the status server and sent to statsd.
//!
//! The hot path only adds to atomics (connections add a batch's worth at a time); a reporter
//! thread sends the changes to statsd through dipstick once a second, under hotdog 0.5's names
//! (`hotdog.lines`, `hotdog.kafka.submitted.<topic>`, `hotdog.error.*`, ...).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dipstick::{Input, InputScope, Prefixed, Statsd};

/// Counters of what a connection did, added to [`Metrics`] a batch at a time.
#[derive(Debug, Default, Clone, Copy)]
pub struct LineCounts {
    pub lines: u64,
    pub unparsed: u64,
    pub truncated: u64,
    pub invalid_utf8: u64,
    pub unrouted: u64,
    pub forwarded: u64,
    pub invalid_topics: u64,
    pub render_errors: u64,
    pub merge_errors: u64,
}

/// Counts per Kafka topic.
#[derive(Debug, Default, Clone, Copy)]
pub struct TopicCounts {
    pub submitted: u64,
    pub delivered: u64,
    pub failed: u64,
    pub dead_lettered: u64,
}

/// The live counters of one topic. The publisher looks them up once per run of records for the
/// same topic and hands them to every delivery report, so a report only adds to atomics.
#[derive(Debug, Default)]
pub struct TopicCounters {
    submitted: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
}

impl TopicCounters {
    fn read(&self) -> TopicCounts {
        TopicCounts {
            submitted: self.submitted.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            failed: self.failed.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
        }
    }
}

/// Every counter hotdog keeps. Shared by all stages.
#[derive(Default)]
pub struct Metrics {
    /// Connections open now.
    pub connections: AtomicI64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    pub lines: AtomicU64,
    pub unparsed: AtomicU64,
    pub truncated: AtomicU64,
    pub invalid_utf8: AtomicU64,
    pub unrouted: AtomicU64,
    pub forwarded: AtomicU64,
    pub invalid_topics: AtomicU64,
    pub render_errors: AtomicU64,
    pub merge_errors: AtomicU64,
    /// TLS handshakes that completed.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed (untrusted certificate, not TLS at all, ...).
    pub tls_handshake_failed: AtomicU64,
    /// TLS handshakes cut off at the handshake timeout.
    pub tls_handshake_timeout: AtomicU64,
    /// UDP messages dropped because the queue to the publisher was full.
    pub udp_dropped: AtomicU64,
    /// Records handed to librdkafka.
    pub submitted: AtomicU64,
    /// Records Kafka acknowledged.
    pub delivered: AtomicU64,
    /// Records Kafka refused or librdkafka gave up on.
    pub failed: AtomicU64,
    /// Records that ended in the dead-letter topic or file (or, with neither, the log).
    pub dead_lettered: AtomicU64,
    /// Connections closed at once: over the listener's `max_connections`.
    pub refused_listener: AtomicU64,
    /// Connections closed at once: over the listener's `max_connections_per_source`.
    pub refused_source: AtomicU64,
    /// TLS connections still in their handshake.
    pub handshaking: AtomicI64,
    /// Connections closed after `idle_timeout` without a byte.
    pub idle_closed: AtomicU64,
    /// Connections closed for a PROXY protocol header that was malformed, missing, or from
    /// outside `proxy_protocol.from`.
    pub proxy_refused: AtomicU64,
    /// Dead letters a write to the dead-letter file failed for (each time it failed).
    pub dead_letter_write_failed: AtomicU64,
    /// Dead letters still unwritten when hotdog stopped (logged whole instead).
    pub dead_letter_unwritten: AtomicU64,
    /// Status server connections closed at once, over its connection cap.
    pub status_refused: AtomicU64,
    /// Records sent to `global.kafka.topic` because their own topic would have passed
    /// `global.kafka.max_topics`.
    pub topics_over_limit: AtomicU64,
    /// RELP sessions open now.
    pub relp_sessions: AtomicI64,
    /// RELP sessions opened since start.
    pub relp_sessions_total: AtomicU64,
    /// RELP `syslog` messages received.
    pub relp_messages: AtomicU64,
    /// RELP messages answered `200 OK`: every record they made is in Kafka or a dead letter.
    pub relp_acknowledged: AtomicU64,
    /// RELP messages left unanswered when their session ended (the peer left, a protocol
    /// error, shutdown): their senders send them again.
    pub relp_unacknowledged: AtomicU64,
    /// RELP sessions closed for a frame or command that breaks the protocol.
    pub relp_refused: AtomicU64,
    /// Fatal errors of a producer (the idempotent producer's guarantees could not be kept).
    pub producer_fatal: AtomicU64,
    /// Producers made again after a fatal error.
    pub producer_restarts: AtomicU64,
    /// The generation of the configuration in use: 1 at start, one more for every reload that
    /// put a new one in use.
    pub config_generation: AtomicU64,
    /// Reloads that put a new configuration in use.
    pub config_reloads: AtomicU64,
    /// Reloads refused (the file was not valid, or a new listener could not start).
    pub config_reload_failed: AtomicU64,
    /// Line read → Kafka acknowledgement, in milliseconds.
    pub latency: Histogram,
    topics: Mutex<HashMap<String, Arc<TopicCounters>>>,
    queues: std::sync::OnceLock<[Gauge; 2]>,
    errors: Mutex<BTreeMap<String, u64>>,
    dead_letter_reasons: Mutex<BTreeMap<String, u64>>,
}

/// Upper bounds (ms) of the latency histogram's buckets.
pub const LATENCY_BUCKETS_MS: [u64; 12] =
    [1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 30000, 300000];

/// A histogram with fixed buckets, updated with atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 12],
    overflow: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, ms: u64) {
        match LATENCY_BUCKETS_MS.iter().position(|b| ms <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        self.sum.fetch_add(ms, Relaxed);
    }

    /// Cumulative counts per bucket (Prometheus style), the total count, and the sum.
    pub fn read(&self) -> (Vec<(u64, u64)>, u64, u64) {
        let mut total = 0;
        let mut out = Vec::new();
        for (i, b) in LATENCY_BUCKETS_MS.iter().enumerate() {
            total += self.buckets[i].load(Relaxed);
            out.push((*b, total));
        }
        total += self.overflow.load(Relaxed);
        (out, total, self.sum.load(Relaxed))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves counters that are still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    pub fn add_lines(&self, c: &LineCounts) {
        let add = |a: &AtomicU64, v: u64| {
            if v > 0 {
                a.fetch_add(v, Relaxed);
            }
        };
        add(&self.lines, c.lines);
        add(&self.unparsed, c.unparsed);
        add(&self.truncated, c.truncated);
        add(&self.invalid_utf8, c.invalid_utf8);
        add(&self.unrouted, c.unrouted);
        add(&self.forwarded, c.forwarded);
        add(&self.invalid_topics, c.invalid_topics);
        add(&self.render_errors, c.render_errors);
        add(&self.merge_errors, c.merge_errors);
    }

    /// The counters of `topic`, created on first use.
    pub fn topic(&self, topic: &str) -> Arc<TopicCounters> {
        let mut topics = lock(&self.topics);
        match topics.get(topic) {
            Some(t) => t.clone(),
            None => topics.entry(topic.to_string()).or_default().clone(),
        }
    }

    /// `n` records for the topic of `t` were handed to librdkafka.
    pub fn submitted(&self, t: &TopicCounters, n: u64) {
        self.submitted.fetch_add(n, Relaxed);
        t.submitted.fetch_add(n, Relaxed);
    }

    /// Kafka acknowledged one record for the topic of `t`.
    pub fn delivered(&self, t: &TopicCounters) {
        self.delivered.fetch_add(1, Relaxed);
        t.delivered.fetch_add(1, Relaxed);
    }

    /// A record for `topic` failed for good, for the reason `kind` (a librdkafka error code).
    pub fn failed(&self, topic: &str, kind: &str) {
        self.failed.fetch_add(1, Relaxed);
        self.topic(topic).failed.fetch_add(1, Relaxed);
        *lock(&self.errors).entry(kind.to_string()).or_default() += 1;
    }

    /// A record meant for `topic` ended in the dead-letter topic or file.
    pub fn dead_lettered(&self, topic: &str) {
        self.dead_lettered.fetch_add(1, Relaxed);
        self.topic(topic).dead_lettered.fetch_add(1, Relaxed);
    }

    /// Counts why a record was dead-lettered.
    pub fn dead_letter_reason(&self, reason: &str) {
        *lock(&self.dead_letter_reasons)
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// Lines read that are neither delivered, dead-lettered, discarded (unrouted) nor dropped
    /// (UDP): still on their way. By construction
    /// `lines = delivered + dead_lettered + unrouted + dropped + in_flight`.
    pub fn in_flight(&self) -> i64 {
        let v = |a: &AtomicU64| i64::try_from(a.load(Relaxed)).unwrap_or(i64::MAX);
        let delivered = v(&self.delivered);
        let dead = v(&self.dead_lettered);
        let unrouted = v(&self.unrouted);
        let dropped = v(&self.udp_dropped);
        v(&self.lines) - delivered - dead - unrouted - dropped
    }

    /// Per-topic counts.
    pub fn topics(&self) -> Vec<(String, TopicCounts)> {
        let mut t: Vec<_> = lock(&self.topics)
            .iter()
            .map(|(k, v)| (k.clone(), v.read()))
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    }

    /// How many records were dead-lettered for `reason` (for example
    /// [`hotdog_stages::core::SHUTDOWN_TIMEOUT`]).
    pub fn dead_lettered_for(&self, reason: &str) -> u64 {
        lock(&self.dead_letter_reasons)
            .get(reason)
            .copied()
            .unwrap_or(0)
    }

    /// Lets reports read the depth of the outbox and of librdkafka's queue.
    pub fn watch_queues(&self, outbox: Gauge, librdkafka: Gauge) {
        let _ = self.queues.set([outbox, librdkafka]);
    }

    fn queue(&self, i: usize) -> i64 {
        self.queues.get().map_or(0, |q| q[i]())
    }

    /// Every counter under its statsd name (without the `hotdog.` prefix), as `/stats` shows it.
    pub fn snapshot(&self) -> BTreeMap<String, i64> {
        let mut s = BTreeMap::new();
        for c in &COUNTERS {
            s.insert(c.name.to_string(), (c.read)(self));
        }
        for f in &FAMILIES {
            for (label, v) in (f.read)(self) {
                s.insert(format!("{}.{label}", f.prefix), saturate(v));
            }
        }
        s
    }
}

/// A gauge read from another stage when a report is made.
pub type Gauge = Arc<dyn Fn() -> i64 + Send + Sync>;

fn saturate(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn get(a: &AtomicU64) -> i64 {
    saturate(a.load(Relaxed))
}

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
pub static COUNTERS: [Counter; 46] = [
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

fn entries(map: &Mutex<BTreeMap<String, u64>>) -> Vec<(String, u64)> {
    lock(map).iter().map(|(k, v)| (k.clone(), *v)).collect()
}

impl Metrics {
    fn per_topic(&self, f: fn(&TopicCounts) -> u64) -> Vec<(String, u64)> {
        self.topics().into_iter().map(|(t, c)| (t, f(&c))).collect()
    }
}

/// The Prometheus text exposition of every value in [`COUNTERS`] and [`FAMILIES`], and the
/// latency histogram.
pub fn prometheus(m: &Metrics) -> String {
    let mut out = String::new();
    let mut last = "";
    let mut header = |out: &mut String, name: &'static str, kind: Kind, help: &str| {
        if name != last {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(
                out,
                "# HELP hotdog_{name} {help}\n# TYPE hotdog_{name} {kind}"
            );
            last = name;
        }
    };
    for c in &COUNTERS {
        if let Some((name, labels)) = c.prometheus {
            header(&mut out, name, c.kind, c.help);
            let _ = writeln!(out, "hotdog_{name}{labels} {}", (c.read)(m));
        }
    }
    for f in &FAMILIES {
        header(&mut out, f.prometheus, Kind::Counter, f.help);
        for (label, v) in (f.read)(m) {
            let _ = writeln!(
                out,
                "hotdog_{}{{{}=\"{label}\"}} {v}",
                f.prometheus, f.label_name
            );
        }
    }
    let (buckets, count, sum_ms) = m.latency.read();
    let name = "hotdog_delivery_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Line read to Kafka acknowledgement.\n# TYPE {name} histogram"
    );
    for (le_ms, c) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {c}", le_ms as f64 / 1000.0);
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", sum_ms as f64 / 1000.0);
    let _ = writeln!(out, "{name}_count {count}");
    out
}

/// One value sent to statsd.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Update {
    Gauge(i64),
    Count(usize),
}

/// What statsd is sent for the change from `last` to `now`: every gauge, and the counters that
/// grew, by how much.
fn statsd_updates(
    last: &BTreeMap<String, i64>,
    now: &BTreeMap<String, i64>,
) -> Vec<(String, Update)> {
    let gauge = |name: &str| {
        COUNTERS
            .iter()
            .any(|c| c.kind == Kind::Gauge && c.name == name)
    };
    let mut out = Vec::new();
    for (name, value) in now {
        if gauge(name) {
            out.push((name.clone(), Update::Gauge(*value)));
            continue;
        }
        let before = last.get(name).copied().unwrap_or(0);
        if let Ok(delta) = usize::try_from(value - before) {
            if delta > 0 {
                out.push((name.clone(), Update::Count(delta)));
            }
        }
    }
    out
}

/// Sends the counters to statsd every `every` (see [`statsd_updates`]), until `stop` is closed
/// (then once more). Runs on its own thread.
pub fn report_to_statsd(
    metrics: Arc<Metrics>,
    address: &str,
    every: Duration,
    stop: async_channel::Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let scope = Statsd::send_to(address)?.named("hotdog").metrics();
    std::thread::Builder::new()
        .name("statsd".into())
        .spawn(move || {
            let mut last: BTreeMap<String, i64> = BTreeMap::new();
            let mut closing = false;
            loop {
                let now = metrics.snapshot();
                for (name, update) in statsd_updates(&last, &now) {
                    match update {
                        Update::Gauge(v) => scope.gauge(&name).value(v),
                        Update::Count(n) => scope.counter(&name).count(n),
                    }
                }
                last = now;
                if closing {
                    break;
                }
                closing = smol::block_on(async {
                    futures_lite::future::or(
                        async {
                            smol::Timer::after(every).await;
                            false
                        },
                        async {
                            let _ = stop.recv().await;
                            true
                        },
                    )
                    .await
                });
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Metrics` with every counter, gauge and family non-zero.
    fn busy() -> Metrics {
        let m = Metrics::default();
        for a in [
            &m.connections_total,
            &m.lines,
            &m.unparsed,
            &m.truncated,
            &m.invalid_utf8,
            &m.unrouted,
            &m.forwarded,
            &m.invalid_topics,
            &m.render_errors,
            &m.merge_errors,
            &m.tls_handshakes,
            &m.tls_handshake_failed,
            &m.tls_handshake_timeout,
            &m.udp_dropped,
            &m.refused_listener,
            &m.refused_source,
            &m.idle_closed,
            &m.proxy_refused,
            &m.dead_letter_write_failed,
            &m.dead_letter_unwritten,
            &m.status_refused,
            &m.topics_over_limit,
            &m.producer_fatal,
            &m.producer_restarts,
            &m.relp_sessions_total,
            &m.relp_acknowledged,
            &m.relp_unacknowledged,
            &m.relp_refused,
        ] {
            a.store(1000, Relaxed);
        }
        m.connections.store(2, Relaxed);
        m.relp_sessions.store(4, Relaxed);
        // 9 outstanding: neither acknowledged (1000) nor left unacknowledged (1000).
        m.relp_messages.store(2009, Relaxed);
        m.handshaking.store(3, Relaxed);
        let t = m.topic("logs");
        m.submitted(&t, 7);
        m.delivered(&t);
        m.failed("logs", "msgsizetoolarge");
        m.dead_lettered("logs");
        m.dead_letter_reason("msgsizetoolarge");
        m.latency.observe(3);
        m.config_generation.store(2, Relaxed);
        m.config_reloads.store(1, Relaxed);
        m.config_reload_failed.store(1, Relaxed);
        m.watch_queues(Arc::new(|| 5), Arc::new(|| 6));
        m
    }

    /// The names `/metrics` gives its samples, labels included.
    fn prometheus_samples(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name.to_string()))
            .collect()
    }

    #[test]
    fn stats_metrics_and_statsd_list_the_same_values() {
        let m = busy();
        let stats = m.snapshot();
        let samples = prometheus_samples(&prometheus(&m));
        // What Prometheus must show for each /stats name.
        let mut expected = Vec::new();
        for c in &COUNTERS {
            assert!(stats.contains_key(c.name), "/stats lacks {}", c.name);
            match c.prometheus {
                Some((name, labels)) => expected.push(format!("hotdog_{name}{labels}")),
                None if c.name.starts_with("kafka.latency_ms.") => {
                    expected.push("hotdog_delivery_latency_seconds_sum".into());
                    expected.push("hotdog_delivery_latency_seconds_count".into());
                }
                // A total: Prometheus has it per label, in the family of the same prefix.
                None => assert!(
                    FAMILIES.iter().any(|f| f.prefix == c.name),
                    "{} is in no Prometheus family",
                    c.name
                ),
            }
        }
        for f in &FAMILIES {
            let values = (f.read)(&m);
            assert!(!values.is_empty(), "{} has no values to compare", f.prefix);
            for (label, _) in values {
                assert!(stats.contains_key(&format!("{}.{label}", f.prefix)));
                expected.push(format!(
                    "hotdog_{}{{{}=\"{label}\"}}",
                    f.prometheus, f.label_name
                ));
            }
        }
        for e in &expected {
            assert!(samples.contains(e), "/metrics lacks {e}:\n{samples:#?}");
        }
        // /metrics has nothing else but the histogram buckets.
        for s in &samples {
            assert!(
                expected.contains(s) || s.starts_with("hotdog_delivery_latency_seconds_bucket"),
                "/metrics has {s}, which /stats does not"
            );
        }
        // The first statsd report sends every value /stats has (all are non-zero here).
        let sent: Vec<String> = statsd_updates(&BTreeMap::new(), &stats)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let listed: Vec<String> = stats.keys().cloned().collect();
        assert_eq!(sent, listed);
    }

    #[test]
    fn statsd_gets_gauges_as_values_and_counters_as_increments() {
        let m = busy();
        let first = m.snapshot();
        m.lines.fetch_add(5, Relaxed);
        m.connections.store(1, Relaxed);
        let updates = statsd_updates(&first, &m.snapshot());
        assert!(updates.contains(&("lines".into(), Update::Count(5))));
        assert!(updates.contains(&("connections".into(), Update::Gauge(1))));
        assert!(updates.contains(&("queue.channel".into(), Update::Gauge(5))));
        // Counters that did not move are not sent.
        assert!(!updates.iter().any(|(n, _)| n == "lines.unrouted"));
    }
}
