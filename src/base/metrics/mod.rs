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

mod export;
mod table;
mod top;

use export::*;
pub use export::{prometheus, report_to_statsd};
pub use table::{Counter, Family, Kind, COUNTERS, FAMILIES};

#[cfg(test)]
mod tests;

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
    /// Lines dropped over their sender's quota (counted in `lines` too).
    pub quota_dropped: u64,
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
    /// Tap events left out because the tap's reader was behind.
    pub tap_dropped: AtomicU64,
    /// Frames the taps did not look at, to keep within their CPU budget.
    pub tap_skipped: AtomicU64,
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
    /// Records in the spool that Kafka does not have yet (`global.spool`).
    pub spool_records: AtomicI64,
    /// Bytes the spool takes on disk.
    pub spool_bytes: AtomicI64,
    /// Age of the oldest record in the spool that Kafka does not have yet, in seconds.
    pub spool_oldest_age: AtomicI64,
    /// Records written to the spool.
    pub spool_written: AtomicU64,
    /// Records of an earlier run read back from the spool and sent.
    pub spool_replayed: AtomicU64,
    /// Damaged places found in the spool (a record whose checksum failed, a torn last write,
    /// an unreadable segment).
    pub spool_corrupt: AtomicU64,
    /// Times the spool reached `max_size` (or the disk was full) and hotdog pushed back.
    pub spool_full: AtomicU64,
    /// Lines dropped over their sender's quota (`quota` with `over: drop`).
    pub quota_dropped: AtomicU64,
    /// Their bytes.
    pub quota_dropped_bytes: AtomicU64,
    /// Time connections spent waiting for their quota (`over: wait`), in milliseconds.
    pub quota_waited_ms: AtomicU64,
    /// Line read → Kafka acknowledgement, in milliseconds.
    pub latency: Histogram,
    /// The keys that dropped the most lines over their quota, as `<listener>/<key>`.
    quota_top: Mutex<top::TopN>,
    topics: Mutex<HashMap<String, Arc<TopicCounters>>>,
    /// Lines read by each listener, by its bound address.
    listeners: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    queues: std::sync::OnceLock<[Gauge; 2]>,
    /// Every rule's label and matches, read from the rules in use.
    rules: std::sync::OnceLock<Labelled>,
    /// What the kernel dropped for the UDP listeners, read from the kernel.
    udp_kernel: std::sync::OnceLock<Gauge>,
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

/// A lock that a panic elsewhere did not make unusable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
        add(&self.quota_dropped, c.quota_dropped);
    }

    /// `lines` lines of `bytes` bytes from `key` were dropped over the quota of `listener`
    /// (the lines themselves are counted with the others, in [`LineCounts`]).
    pub fn quota_dropped(&self, listener: &str, key: &str, lines: u64, bytes: u64) {
        self.quota_dropped_bytes.fetch_add(bytes, Relaxed);
        let key: Arc<str> = format!("{listener}/{key}").into();
        lock(&self.quota_top).add(&key, lines);
    }

    pub(super) fn quota_top(&self) -> Vec<(String, u64)> {
        lock(&self.quota_top)
            .top()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect()
    }

    /// The counters of `topic`, created on first use.
    pub fn topic(&self, topic: &str) -> Arc<TopicCounters> {
        let mut topics = lock(&self.topics);
        match topics.get(topic) {
            Some(t) => t.clone(),
            None => topics.entry(topic.to_string()).or_default().clone(),
        }
    }

    /// The count of lines read by the listener bound to `address`, created on first use.
    pub fn listener(&self, address: &str) -> Arc<AtomicU64> {
        lock(&self.listeners)
            .entry(address.to_string())
            .or_default()
            .clone()
    }

    pub(super) fn listener_lines(&self) -> Vec<(String, u64)> {
        lock(&self.listeners)
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Relaxed)))
            .collect()
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
    /// (UDP, quota): still on their way. By construction
    /// `lines = delivered + dead_lettered + unrouted + dropped + in_flight`.
    pub fn in_flight(&self) -> i64 {
        let v = |a: &AtomicU64| i64::try_from(a.load(Relaxed)).unwrap_or(i64::MAX);
        let delivered = v(&self.delivered);
        let dead = v(&self.dead_lettered);
        let unrouted = v(&self.unrouted);
        let dropped = v(&self.udp_dropped) + v(&self.quota_dropped);
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

    /// Lets reports read what the kernel dropped for the UDP listeners.
    pub fn watch_udp_kernel(&self, dropped: Gauge) {
        let _ = self.udp_kernel.set(dropped);
    }

    pub(super) fn udp_kernel_dropped(&self) -> i64 {
        self.udp_kernel.get().map_or(0, |d| d())
    }

    /// Lets reports read what each rule in use matched.
    pub fn watch_rules(&self, rules: Labelled) {
        let _ = self.rules.set(rules);
    }

    pub(super) fn rules_matched(&self) -> Vec<(String, u64)> {
        self.rules.get().map_or_else(Vec::new, |r| r())
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
                s.insert(format!("{}.{label}{}", f.prefix, f.suffix), saturate(v));
            }
        }
        s
    }
}

/// A gauge read from another stage when a report is made.
pub type Gauge = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Counts by label read from another stage when a report is made.
pub type Labelled = Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

fn saturate(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn get(a: &AtomicU64) -> i64 {
    saturate(a.load(Relaxed))
}
