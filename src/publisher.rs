//! The one Kafka publisher task: it owns the librdkafka producer, takes batches of records from
//! the bounded channel the connections feed, and counts delivery reports.
//!
//! When librdkafka's own queue is full, the publisher waits and retries the same record, so the
//! channel fills up and the connections stop reading their sockets: backpressure reaches the
//! senders and nothing is dropped. A record Kafka refuses for good is dead-lettered
//! ([`crate::deadletter`]).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::{ClientContext, Timestamp};

use crate::deadletter::{self, DeadLetter, Sink, Tag};
use crate::metrics::Metrics;
use crate::rules::{Name, Record};

/// What the connections send to the publisher.
pub type Batch = Vec<Record>;

/// Counts delivery reports and dead-letters refused records; runs on librdkafka's thread.
pub struct Reports {
    metrics: Arc<Metrics>,
    clock: AckClock,
    dead: Sink,
    /// Set once shutdown ran out of time: refused records go straight to the file.
    expired: Arc<AtomicBool>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Arc<Tag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Arc<Tag>) {
        let (dead_letter, counters) = match &*tag {
            Tag::DeadLetter(original) => (Some(original.as_str()), None),
            Tag::Record(counters) => (None, Some(counters)),
        };
        match (result, dead_letter) {
            (Ok(m), Some(original)) => {
                self.metrics.dead_lettered(original);
                log::warn!("dead letter for {original} written to {}", m.topic());
            }
            (Ok(m), None) => {
                if let Some(c) = counters {
                    self.metrics.delivered(c);
                }
                if let Timestamp::CreateTime(read) = m.timestamp() {
                    let now = self.clock.now(read);
                    self.metrics
                        .latency
                        .observe(u64::try_from(now - read).unwrap_or(0));
                }
            }
            (Err((e, m)), _) => {
                let kind = error_kind(e);
                let purged = matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                );
                let record = record_of(m);
                if let Some(original) = dead_letter {
                    log::warn!("the dead-letter topic did not take a record: {e}");
                    self.dead.send(DeadLetter {
                        record: Record {
                            topic: original.to_string().into(),
                            ..record
                        },
                        reason: format!("dead_letter_topic_{kind}"),
                        file_only: true,
                    });
                    return;
                }
                log::warn!("Kafka did not take a record for topic {}: {e}", m.topic());
                self.metrics.failed(m.topic(), &kind);
                let reason = if purged {
                    "shutdown_timeout".to_string()
                } else {
                    kind
                };
                self.dead.send(DeadLetter {
                    record,
                    reason,
                    file_only: purged || self.expired.load(Relaxed),
                });
            }
        }
    }
}

fn record_of<M: rdkafka::message::Message>(m: &M) -> Record {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .filter(|h| !h.key.starts_with("hotdog-"))
                .map(|h| {
                    (
                        h.key.to_string().into(),
                        h.value.map(text).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: m.topic().to_string().into(),
        key: m.key().map(text),
        payload: m.payload().map(text).unwrap_or_default(),
        headers,
        read_ms: match m.timestamp() {
            Timestamp::CreateTime(t) => t,
            _ => 0,
        },
    }
}

/// The time of acknowledgement for delivery reports. Records read in the same millisecond are
/// acknowledged together, a run of reports after another: the run shares one clock reading (a
/// clock reading costs more than the rest of a report), renewed at least every
/// [`AckClock::REUSE`] reports.
#[derive(Default)]
struct AckClock {
    /// The read time of the last report, the clock reading for it, and how often it was reused.
    last: Mutex<(i64, i64, u32)>,
}

impl AckClock {
    const REUSE: u32 = 64;

    fn now(&self, read_ms: i64) -> i64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *last {
            (read, now, uses) if *read == read_ms && *uses < Self::REUSE => {
                *uses += 1;
                *now
            }
            _ => {
                let now = now_ms();
                *last = (read_ms, now, 0);
                now
            }
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A short name for an error, used in metric names (`kafka.producer.error.<kind>`).
pub fn error_kind(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => format!("{code:?}").to_lowercase(),
        None => "other".to_string(),
    }
}

/// Whether a broker answered lately, and if not, why; for `/health`.
#[derive(Debug)]
pub struct Health {
    state: Mutex<Option<String>>,
}

impl Default for Health {
    /// Unavailable until a broker has answered.
    fn default() -> Self {
        Health {
            state: Mutex::new(Some("no Kafka broker has answered yet".into())),
        }
    }
}

impl Health {
    /// `Ok` when a broker answered the last probe, else the reason.
    pub fn get(&self) -> Result<(), String> {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    fn set(&self, v: Option<String>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// librdkafka settings hotdog chooses unless the operator sets them (see [`Publisher::new`]).
pub const QUEUE_DEFAULTS: [(&str, &str); 2] = [
    ("queue.buffering.max.messages", "50000"),
    ("queue.buffering.max.kbytes", "16384"),
];

pub struct Publisher {
    producer: Arc<ThreadedProducer<Reports>>,
    metrics: Arc<Metrics>,
    dead: Sink,
    expired: Arc<AtomicBool>,
}

impl Publisher {
    /// Creates the producer with every `conf` key (this does not need a reachable broker) and
    /// the dead-letter writer.
    pub fn new(
        conf: &std::collections::BTreeMap<String, String>,
        dead_letter: deadletter::Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Publisher, String> {
        let mut config = ClientConfig::new();
        // Retry for as long as it takes unless the operator says otherwise: librdkafka's own
        // default gives up on a record after five minutes without a broker.
        if !conf.contains_key("message.timeout.ms") && !conf.contains_key("delivery.timeout.ms") {
            config.set("message.timeout.ms", "0");
        }
        // What librdkafka may hold, and so hotdog's memory, is bounded by these; its own
        // defaults (100,000 records, 1 GB) let one burst of large lines take a gigabyte.
        // Measured: with 50,000 records a 1,000,000-line burst over 16 connections runs at full
        // speed (1.4-1.7M lines/s) in 27-28 MB; with 10,000, a quarter slower in 22-23 MB.
        for (key, value) in QUEUE_DEFAULTS {
            if !conf.contains_key(key) {
                config.set(key, value);
            }
        }
        for (k, v) in conf {
            config.set(k, v);
        }
        let slot = Arc::new(OnceLock::new());
        let dead = deadletter::start(dead_letter, metrics.clone(), slot.clone())
            .map_err(|e| format!("cannot start the dead-letter writer: {e}"))?;
        let expired = Arc::new(AtomicBool::new(false));
        let producer: ThreadedProducer<Reports> = config
            .create_with_context(Reports {
                metrics: metrics.clone(),
                clock: AckClock::default(),
                dead: dead.clone(),
                expired: expired.clone(),
            })
            .map_err(|e| format!("global.kafka.conf is not accepted by librdkafka: {e}"))?;
        let producer = Arc::new(producer);
        let _ = slot.set(producer.clone());
        Ok(Publisher {
            producer,
            metrics,
            dead,
            expired,
        })
    }

    /// Where connections send records they could not hand over.
    pub fn dead_letters(&self) -> Sink {
        self.dead.clone()
    }

    /// Asks a broker for metadata every `every`, waiting up to `timeout`, and keeps `health`
    /// up to date. Runs on its own thread until the process ends.
    pub fn watch_health(&self, health: Arc<Health>, every: Duration, timeout: Duration) {
        let producer = Arc::downgrade(&self.producer);
        let _ = std::thread::Builder::new()
            .name("kafka-health".into())
            .spawn(move || {
                let mut first = true;
                while let Some(p) = producer.upgrade() {
                    let state = match p.client().fetch_metadata(None, timeout) {
                        Ok(md) if !md.brokers().is_empty() => None,
                        Ok(_) => Some("the cluster reported no brokers".to_string()),
                        Err(e) => Some(format!("no Kafka broker answered within {timeout:?}: {e}")),
                    };
                    match (&state, first) {
                        (None, true) => log::info!("Kafka is reachable"),
                        (Some(r), true) => log::warn!("{r}; records wait until one does"),
                        _ => {}
                    }
                    first = false;
                    health.set(state);
                    drop(p);
                    std::thread::sleep(every);
                }
            });
    }

    /// Records librdkafka holds (queued or waiting for an acknowledgement).
    pub fn queue_len(&self) -> Arc<dyn Fn() -> i64 + Send + Sync> {
        let p = Arc::downgrade(&self.producer);
        Arc::new(move || p.upgrade().map_or(0, |p| i64::from(p.in_flight_count())))
    }

    /// Publishes every batch until the channel is closed (every connection is gone), then
    /// waits until `deadline` for Kafka to acknowledge what is in flight. What is still not
    /// acknowledged then is dead-lettered to the file. Returns how many records that was.
    pub async fn run(
        self,
        rx: async_channel::Receiver<Batch>,
        deadline: async_channel::Receiver<Instant>,
    ) -> u64 {
        let mut deadline_at: Option<Instant> = None;
        while let Ok(batch) = rx.recv().await {
            if deadline_at.is_none() {
                deadline_at = deadline.try_recv().ok();
            }
            // Records for the same topic come in runs: the topic's counters are looked up once
            // per run, and every delivery report of the run shares them (a reference count).
            let mut run: Option<(Name, Arc<Tag>, u64)> = None;
            for record in batch {
                let same = matches!(&run, Some((t, _, _)) if *t == record.topic);
                if !same {
                    self.count_submitted(run.take());
                    let counters = self.metrics.topic(&record.topic);
                    run = Some((record.topic.clone(), Arc::new(Tag::Record(counters)), 0));
                }
                if let Some((_, tag, n)) = &mut run {
                    if self.send(record, tag, deadline_at).await {
                        *n += 1;
                    }
                }
            }
            self.count_submitted(run);
        }
        let deadline_at = match deadline_at {
            Some(d) => d,
            None => deadline.recv().await.unwrap_or_else(|_| Instant::now()),
        };
        self.finish(deadline_at).await
    }

    fn count_submitted(&self, run: Option<(Name, Arc<Tag>, u64)>) {
        if let Some((_, tag, n)) = run {
            if let Tag::Record(counters) = &*tag {
                self.metrics.submitted(counters, n);
            }
        }
    }

    /// Hands one record to librdkafka, waiting while its queue is full (until the shutdown
    /// deadline, if there is one); false when it was dead-lettered instead.
    async fn send(&self, record: Record, tag: &Arc<Tag>, deadline: Option<Instant>) -> bool {
        let mut backoff = Duration::from_millis(1);
        loop {
            let mut r: BaseRecord<'_, str, str, Arc<Tag>> =
                BaseRecord::with_opaque_to(&record.topic, tag.clone())
                    .payload(record.payload.as_str());
            if record.read_ms > 0 {
                r = r.timestamp(record.read_ms);
            }
            if let Some(k) = &record.key {
                r = r.key(k.as_str());
            }
            if !record.headers.is_empty() {
                let headers = record.headers.iter().fold(
                    OwnedHeaders::new_with_capacity(record.headers.len()),
                    |h, (name, value)| {
                        h.insert(Header {
                            key: name,
                            value: Some(value.as_str()),
                        })
                    },
                );
                r = r.headers(headers);
            }
            match self.producer.send(r) {
                Ok(()) => return true,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        self.dead.send(DeadLetter {
                            record,
                            reason: "shutdown_timeout".into(),
                            file_only: true,
                        });
                        return false;
                    }
                    smol::Timer::after(backoff).await;
                    // Short waits: librdkafka's queue drains in milliseconds at full speed.
                    backoff = (backoff * 2).min(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    log::warn!("Kafka refused a record for topic {}: {e}", record.topic);
                    let kind = error_kind(&e);
                    self.metrics.failed(&record.topic, &kind);
                    self.dead.send(DeadLetter {
                        record,
                        reason: kind,
                        file_only: false,
                    });
                    return false;
                }
            }
        }
    }

    /// Waits for acknowledgements until `deadline`, then purges what is left (its delivery
    /// reports dead-letter it to the file) and waits for the dead-letter writer.
    async fn finish(&self, deadline: Instant) -> u64 {
        let producer = self.producer.clone();
        let expired = self.expired.clone();
        let dead = self.dead.clone();
        smol::unblock(move || {
            while producer.in_flight_count() > 0 && Instant::now() < deadline {
                let step = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1));
                if producer.flush(step).is_err() {
                    log::info!(
                        "waiting for Kafka to acknowledge {} records",
                        producer.in_flight_count()
                    );
                }
            }
            let left = u64::try_from(producer.in_flight_count()).unwrap_or(0);
            if left > 0 {
                expired.store(true, Relaxed);
                log::warn!(
                    "shutdown timeout: {left} records not acknowledged; dead-lettering them"
                );
                producer.purge(PurgeConfig::default().queue().inflight());
                let _ = producer.flush(Duration::from_secs(5));
            }
            dead.finish();
            left
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_clock_shares_a_reading_within_a_run_and_renews_it() {
        let clock = AckClock::default();
        let first = clock.now(1000);
        std::thread::sleep(Duration::from_millis(3));
        // The same read time: the reading is shared, up to REUSE more times.
        for _ in 0..AckClock::REUSE {
            assert_eq!(clock.now(1000), first);
        }
        // Then it is renewed even within the run...
        let renewed = clock.now(1000);
        assert!(renewed > first, "{renewed} > {first}");
        std::thread::sleep(Duration::from_millis(3));
        // ...and at once when the read time changes.
        assert!(clock.now(1001) > renewed);
    }
}
