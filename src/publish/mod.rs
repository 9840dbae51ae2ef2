//! The Kafka publisher: the one owner of the Kafka producers. Connections hand it batches of
//! records through an [`Outbox`]; one task takes them and produces them, and librdkafka's thread
//! counts the delivery reports.
//!
//! When librdkafka's own queue is full, the publisher waits and retries the same record, so the
//! outbox fills up and the connections stop reading their sockets: backpressure reaches the
//! senders and nothing is dropped. A record Kafka refuses for good is a dead letter: produced to
//! `global.kafka.dead_letter.topic` (on a producer of its own) or handed to the dead-letter file
//! ([`crate::publish::deadletter`]). When a producer hits a fatal error ([`crate::publish::producer`]), the
//! publisher makes a new one and sends again, oldest first, every record the old one did not
//! deliver; records Kafka acknowledged are never sent again.

pub mod deadletter;
// The FFI: the one module allowed unsafe code (see lib.rs).
#[allow(unsafe_code)]
pub mod producer;

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Headers as _, Message as _};
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::base::metrics::{Gauge, Metrics, TopicCounters};
use crate::base::shutdown::Shutdown;
use crate::base::throttle;
use deadletter::Sink;
use hotdog_stages::config;
use hotdog_stages::core::{Ack, AckClock, Batch, Block, DeadLetter, Name, Record, BATCH_MAX};
use producer::{flush_until, purge, Generation, Renewable, Settings, TestHook};

mod dead_letter_topic;
mod outbox;
mod pace;
mod reports;

use dead_letter_topic::*;
pub use outbox::{outbox, Inbox, Outbox, Polled};
use outbox::{spooling, Input};
use reports::*;

#[cfg(test)]
mod tests;

/// Why the publisher could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// librdkafka refused the settings in `global.kafka.conf`.
    #[error("global.kafka.conf is not accepted by librdkafka: {}", without_value(.0))]
    Conf(#[source] KafkaError),
    /// The dead-letter file could not be opened, or its writer's thread started.
    #[error("{0}")]
    DeadLetterFile(#[source] std::io::Error),
}

/// What librdkafka said of the settings, naming the key but never its value (it may be a
/// password).
fn without_value(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, desc, key, _) => format!("{key}: {desc}"),
        e => e.to_string(),
    }
}

/// Records produced between two cooperative yields.
const YIELD_EVERY: usize = 256;

/// Records produced between two looks at what librdkafka holds (see [`pace`]).
const PACE_EVERY: u64 = 64;

/// How long a producer that hit a fatal error is given to hear the answers to what it has in
/// flight before those records are sent again on the new one (outside shutdown).
const FATAL_DRAIN: Duration = Duration::from_secs(30);

/// The same for a producer whose settings changed (a reload): a broker that answers does so in
/// milliseconds, and one that refuses the old settings (a wrong password, an expired
/// certificate) never will; what is still unanswered then is sent again on the new producer.
const ASKED_DRAIN: Duration = Duration::from_secs(5);

/// Records a producer did not deliver because it hit a fatal error, to be sent again on the
/// next one.
type Pending<T> = Arc<Mutex<Vec<T>>>;

fn take<T>(pending: &Pending<T>) -> Vec<T> {
    std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()))
}

fn keep<T>(pending: &Pending<T>, item: T) {
    pending.lock().unwrap_or_else(|p| p.into_inner()).push(item);
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
    /// Set while a producer that hit a fatal error is being replaced.
    fatal: Mutex<Option<String>>,
    /// The spool, when there is one: full is unavailable, damage is worth a note.
    spool: std::sync::OnceLock<crate::spool::Spool>,
    /// The last time a broker refused hotdog's login (SASL), until a probe succeeds: why a
    /// broker does not answer.
    refused: Mutex<Option<String>>,
}

impl Default for Health {
    /// Unavailable until a broker has answered.
    fn default() -> Self {
        Health {
            state: Mutex::new(Some("no Kafka broker has answered yet".into())),
            fatal: Mutex::new(None),
            spool: std::sync::OnceLock::new(),
            refused: Mutex::new(None),
        }
    }
}

impl Health {
    /// `Ok` when a broker answered the last probe and no producer is being replaced, else the
    /// reason.
    pub fn get(&self) -> Result<(), String> {
        if let Some(fatal) = &*self.fatal.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(fatal.clone());
        }
        if let Some(full) = self.spool.get().and_then(|s| s.full()) {
            return Err(full);
        }
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(reason) => match &*self.refused.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(login) => Err(format!("{reason}; {login}")),
                None => Err(reason.clone()),
            },
        }
    }

    /// A broker refused hotdog's login: said on `/health` while no broker answers.
    pub(super) fn refused(&self, reason: &str) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
            "a broker refused hotdog's login (authentication failed): {reason}"
        ));
    }

    /// What is worth saying beside the state, without making hotdog unavailable: damage the
    /// spool had at start.
    pub fn notes(&self) -> Option<String> {
        self.spool.get().and_then(|s| s.damage())
    }

    fn set(&self, v: Option<String>) {
        if v.is_none() {
            *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    fn set_fatal(&self, v: Option<String>) {
        *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// The publisher task's side: the producers and the outbox's receiving end.
/// What a reload changes in the publisher: its producers' settings. When they, or the files
/// they name (keys, certificates, a password file's password), changed, the publisher makes
/// new producers as it does after a fatal error: it waits for the answers to what the old
/// ones have in flight, and sends again, in order, what they did not deliver.
#[derive(Clone)]
pub struct Reconfigure {
    settings: Arc<Settings>,
    /// Each producer's ask to be renewed.
    asks: Vec<Arc<AtomicBool>>,
    wake: Arc<Event>,
}

impl Reconfigure {
    /// Whether librdkafka takes `conf` (a reload's), before anything changes: a producer that
    /// could not be made would leave none.
    pub fn check(conf: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
        producer::client_config(conf)
            .0
            .create_native_config()
            .map(drop)
            .map_err(|e| Error::Conf(e).to_string())
    }

    /// Takes a reload's `conf`; true when new producers are made for it.
    pub fn apply(&self, conf: &std::collections::BTreeMap<String, String>) -> bool {
        if !self.settings.update(conf) {
            return false;
        }
        for ask in &self.asks {
            ask.store(true, Ordering::Release);
        }
        self.wake.notify(usize::MAX);
        true
    }
}

pub struct Publisher {
    /// Handed to the server for reloads (see [`Publisher::reconfigure`]).
    reconfigure: Reconfigure,
    producer: Arc<Renewable<Reports>>,
    /// Records to send again on the next producer (see [`Publisher::renew_if_fatal`]), with
    /// the order they were first produced in.
    pending: Pending<(u64, Record)>,
    /// Records produced so far, for their [`Tag`].
    produced: std::sync::atomic::AtomicU64,
    /// Notified when a producer hits a fatal error.
    wake: Arc<Event>,
    health: Arc<Health>,
    hook: TestHook,
    metrics: Arc<Metrics>,
    dead: Arc<DeadLetters>,
    input: Input,
    /// The spool's writer thread, joined at the end for its last acknowledgements.
    spool_writer: Mutex<Option<std::thread::JoinHandle<crate::spool::Writer>>>,
    topics: TopicCap,
    /// How much librdkafka may hold (see [`pace`]).
    pace: pace::Pace,
}

/// Records in a row for the same topic, as [`Publisher::publish`] sees them.
struct Run {
    /// The topic the records were made for.
    topic: Name,
    /// True when that topic is over the cap: they go to the fallback topic.
    over: bool,
    counters: Arc<TopicCounters>,
    submitted: u64,
}

/// The distinct topics records have gone to, at most `max` of them (`global.kafka.max_topics`),
/// each with its counters: a rule that renders its topic from what senders send cannot make
/// hotdog track, and librdkafka produce to, an unbounded number. Records for one more go to
/// `fallback` (`global.kafka.topic`), which is always allowed. One lookup per run of records
/// gives both the verdict and the counters.
struct TopicCap {
    known: Mutex<HashMap<Name, Arc<TopicCounters>>>,
    max: usize,
    fallback: Name,
    fallback_counters: Arc<TopicCounters>,
}

impl TopicCap {
    fn new(max: usize, fallback: &str, metrics: &Metrics) -> TopicCap {
        TopicCap {
            known: Mutex::new(HashMap::new()),
            max,
            fallback: Name::Owned(fallback.to_string()),
            fallback_counters: metrics.topic(fallback),
        }
    }

    /// The counters of `topic` when records may go to it (it is known, or there is room for
    /// one more); `None` when it is over the cap.
    fn admit(&self, topic: &Name, metrics: &Metrics) -> Option<Arc<TopicCounters>> {
        if *topic == self.fallback {
            return Some(self.fallback_counters.clone());
        }
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = known.get(topic) {
            return Some(c.clone());
        }
        if known.len() >= self.max {
            return None;
        }
        let counters = metrics.topic(topic);
        known.insert(topic.clone(), counters.clone());
        Some(counters)
    }
}

impl Publisher {
    /// Creates the producers with every `conf` key (this does not need a reachable broker), the
    /// dead-letter writer, and the outbox, which holds at most `kafka.buffer` records. With a
    /// spool, the outbox's batches go through it (a thread of its own writes them).
    pub fn new(
        kafka: &config::Kafka,
        spool: Option<&crate::spool::Spool>,
        metrics: Arc<Metrics>,
    ) -> Result<(Publisher, Outbox), Error> {
        let (_, idempotence_off) = producer::client_config(&kafka.conf);
        let settings = Arc::new(Settings::new(&kafka.conf));
        if let Some(why) = idempotence_off {
            log::warn!(
                "the idempotent producer is off because {why}: a record whose acknowledgement \
                 is lost may be written twice (set enable.idempotence: 'false' to say so and \
                 silence this)"
            );
        }
        let file = deadletter::start(kafka.dead_letter.file.clone(), metrics.clone())
            .map_err(Error::DeadLetterFile)?;
        let wake = Arc::new(Event::new());
        let expired = Arc::new(AtomicBool::new(false));
        let dead_pending: Pending<DeadLetter> = Arc::default();
        let topic = match &kafka.dead_letter.topic {
            Some(topic) => {
                let renewable = dead_letter_producer(
                    &settings,
                    wake.clone(),
                    metrics.clone(),
                    file.clone(),
                    dead_pending.clone(),
                    expired.clone(),
                )?;
                Some((topic.clone(), renewable))
            }
            None => None,
        };
        let (outbox, inbox) = outbox(kafka.buffer, file.clone(), spool.is_some());
        let (input, spool_writer) = match spool {
            None => (Input::Outbox(inbox), None),
            Some(spool) => {
                let (feed, writer) = spooling(spool, inbox).map_err(Error::DeadLetterFile)?;
                (Input::Spool(feed), Some(writer))
            }
        };
        let dead = Arc::new(DeadLetters {
            topic,
            file,
            metrics: metrics.clone(),
            expired,
            pending: dead_pending,
            hook: TestHook::from_env("HOTDOG_TEST_DEAD_LETTER_FATAL_AFTER"),
        });
        let pending: Pending<(u64, Record)> = Arc::default();
        let health = Arc::new(Health::default());
        let producer = {
            let (metrics, dead, pending) = (metrics.clone(), dead.clone(), pending.clone());
            let (health, settings) = (health.clone(), settings.clone());
            Renewable::new("Kafka", wake.clone(), move |g| {
                settings.client_config().create_with_context(Reports {
                    metrics: metrics.clone(),
                    clock: AckClock::default(),
                    dead: dead.clone(),
                    generation: g,
                    pending: pending.clone(),
                    health: health.clone(),
                })
            })
            .map_err(Error::Conf)?
        };
        let topics = TopicCap::new(kafka.max_topics, &kafka.topic, &metrics);
        if let Some(spool) = spool {
            let _ = health.spool.set(spool.clone());
        }
        let reconfigure = Reconfigure {
            settings,
            asks: std::iter::once(producer.asking())
                .chain(dead.topic.iter().map(|(_, r)| r.asking()))
                .collect(),
            wake: wake.clone(),
        };
        let publisher = Publisher {
            reconfigure,
            producer: Arc::new(producer),
            pending,
            produced: std::sync::atomic::AtomicU64::new(0),
            pace: pace::Pace::new(),
            wake,
            health,
            hook: TestHook::from_env("HOTDOG_TEST_KAFKA_FATAL_AFTER"),
            metrics,
            dead,
            input,
            spool_writer: Mutex::new(spool_writer),
            topics,
        };
        Ok((publisher, outbox))
    }

    /// How a reload changes the producers' settings.
    pub fn reconfigure(&self) -> Reconfigure {
        self.reconfigure.clone()
    }

    /// What `/health` shows of Kafka: kept up to date by [`Publisher::watch_health`] and by
    /// the renewal of a producer.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Asks a broker for metadata every `every`, waiting up to `timeout`, and keeps the health
    /// up to date. Runs on its own thread until the process ends.
    pub fn watch_health(&self, every: Duration, timeout: Duration) -> std::io::Result<()> {
        let producer = Arc::downgrade(&self.producer);
        let health = self.health.clone();
        std::thread::Builder::new()
            .name("kafka-health".into())
            .spawn(move || {
                let mut first = true;
                while let Some(p) = producer.upgrade().map(|r| r.current()) {
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
            })?;
        Ok(())
    }

    /// Records librdkafka holds (queued or waiting for an acknowledgement), and records kept to
    /// be sent again on a new producer.
    pub fn queue_len(&self) -> Gauge {
        let p = Arc::downgrade(&self.producer);
        let pending = Arc::downgrade(&self.pending);
        Arc::new(move || {
            let held = p
                .upgrade()
                .map_or(0, |p| i64::from(p.current().in_flight_count()));
            let kept = pending.upgrade().map_or(0, |k| {
                i64::try_from(k.lock().unwrap_or_else(|p| p.into_inner()).len()).unwrap_or(0)
            });
            held + kept
        })
    }

    /// Publishes every batch until the outbox is closed and empty, then waits until the
    /// shutdown deadline for Kafka to acknowledge what is in flight. What is still not
    /// acknowledged then is dead-lettered to the file. Returns how many records that was.
    pub async fn run(self, shutdown: Shutdown) -> u64 {
        loop {
            self.renew_if_fatal(&shutdown).await;
            // A fatal error while waiting for the next batch wakes the loop.
            let woken = self.wake.listen();
            if self.any_fatal() && !shutdown.expired() {
                continue;
            }
            let next =
                futures_lite::future::or(async { Some(self.input.recv(&shutdown).await) }, async {
                    woken.await;
                    None
                })
                .await;
            let batch = match next {
                None => continue,
                Some(None) => break,
                Some(Some(batch)) => batch,
            };
            if shutdown.expired() {
                for record in batch {
                    self.dead.send(DeadLetter::shutdown_timeout(record)).await;
                }
                continue;
            }
            self.publish(batch, &shutdown).await;
        }
        self.finish(&shutdown).await
    }

    fn any_fatal(&self) -> bool {
        self.producer.is_fatal() || self.dead.topic.as_ref().is_some_and(|(_, r)| r.is_fatal())
    }

    async fn publish(&self, batch: Batch, shutdown: &Shutdown) {
        let n = batch.len();
        let mut producer = self.producer.current();
        // Records for the same topic come in runs: the topic's counters are looked up once
        // per run, and every delivery report of the run shares them (a reference count).
        let mut run: Option<Run> = None;
        for (i, mut record) in batch.into_iter().enumerate() {
            // The publisher shares the executor's threads with the connections: it yields now
            // and then, as they do.
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                smol::future::yield_now().await;
            }
            let same = matches!(&run, Some(r) if r.topic == record.topic);
            if !same {
                self.count_submitted(run.take());
                let admitted = self.topics.admit(&record.topic, &self.metrics);
                run = Some(Run {
                    topic: record.topic.clone(),
                    over: admitted.is_none(),
                    counters: admitted.unwrap_or_else(|| self.topics.fallback_counters.clone()),
                    submitted: 0,
                });
            }
            if let Some(run) = &mut run {
                if run.over {
                    self.metrics
                        .topics_over_limit
                        .fetch_add(1, Ordering::Relaxed);
                    throttle::TOPICS.warn(format_args!(
                        "{} distinct topics (global.kafka.max_topics): a record for {} goes to {}",
                        self.topics.max, record.topic, self.topics.fallback
                    ));
                    record.topic = self.topics.fallback.clone();
                }
                if self
                    .send(record, &run.counters, &mut producer, shutdown)
                    .await
                {
                    run.submitted += 1;
                }
            }
        }
        self.count_submitted(run);
        if self.hook.count(n as u64) {
            producer::inject_fatal(&producer);
        }
    }

    fn count_submitted(&self, run: Option<Run>) {
        if let Some(run) = run {
            self.metrics.submitted(&run.counters, run.submitted);
        }
    }

    /// Hands one record to librdkafka; false when it was dead-lettered instead. When the
    /// producer hit a fatal error, the record waits for the new one, which `producer` is then.
    async fn send(
        &self,
        record: Record,
        counters: &Arc<TopicCounters>,
        producer: &mut Arc<ThreadedProducer<Reports>>,
        shutdown: &Shutdown,
    ) -> bool {
        match self.produce(producer, record, counters, shutdown).await {
            Sent::Produced => true,
            Sent::DeadLettered => false,
            Sent::Fatal(record) => {
                self.renew_then(shutdown, Some(record)).await;
                *producer = self.producer.current();
                true
            }
        }
    }

    /// Hands one record to `producer`, waiting while its queue is full (until the shutdown
    /// deadline, if there is one).
    async fn produce(
        &self,
        producer: &ThreadedProducer<Reports>,
        mut record: Record,
        counters: &Arc<TopicCounters>,
        shutdown: &Shutdown,
    ) -> Sent {
        let mut backoff = Duration::from_millis(1);
        let seq = self.produced.fetch_add(1, Ordering::Relaxed);
        if seq % PACE_EVERY == 0 {
            self.wait_for_pace(producer, shutdown).await;
        }
        // The spool's `hotdog.id`, written here rather than kept with the record.
        let id = record
            .ack
            .spool_id()
            .map(|(name, n)| crate::spool::RecordId::new(name, n));
        let mut tag = Tag::of(&mut record, counters, seq);
        loop {
            let envelope = producer::Envelope {
                topic: &record.topic,
                key: record.key.as_deref(),
                headers: &record.headers,
                extra: id
                    .as_ref()
                    .map(|id| (crate::spool::ID_HEADER, id.as_bytes())),
                timestamp: record.read_ms.max(0),
            };
            let payload = match tag.lent {
                Some(_) => producer::Payload::Lent,
                None => producer::Payload::Copied(&record.payload),
            };
            let error = match producer::send(producer, &envelope, payload, tag) {
                Ok(()) => return Sent::Produced,
                Err((e, refused)) => {
                    // The tag goes with the next try.
                    tag = refused;
                    e
                }
            };
            match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    if shutdown.expired() {
                        let record = tag.give_back(record);
                        self.dead.send(DeadLetter::shutdown_timeout(record)).await;
                        return Sent::DeadLettered;
                    }
                    smol::Timer::after(backoff).await;
                    // Short waits: librdkafka's queue drains in milliseconds at full speed.
                    backoff = (backoff * 2).min(Duration::from_millis(10));
                }
                _ if self.producer.is_fatal() => return Sent::Fatal(tag.give_back(record)),
                e => {
                    self.refused(tag.give_back(record), &e).await;
                    return Sent::DeadLettered;
                }
            }
        }
    }

    /// Waits while librdkafka holds more than Kafka acknowledges in half a second (not
    /// after the shutdown deadline).
    async fn wait_for_pace(&self, producer: &ThreadedProducer<Reports>, shutdown: &Shutdown) {
        let mut backoff = Duration::from_millis(1);
        loop {
            let held = u64::try_from(producer.in_flight_count()).unwrap_or(0);
            if held < pace::HELD_MIN || shutdown.expired() {
                return;
            }
            let acked = self.metrics.delivered.load(Ordering::Relaxed)
                + self.metrics.failed.load(Ordering::Relaxed);
            if held < self.pace.room(acked, Instant::now()) {
                return;
            }
            smol::Timer::after(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(10));
        }
    }

    /// A record Kafka refused for good: counted, logged (throttled) and dead-lettered.
    async fn refused(&self, record: Record, e: &KafkaError) {
        throttle::KAFKA_REFUSED.warn(format_args!(
            "Kafka refused a record for topic {}: {e}",
            record.topic
        ));
        let kind = error_kind(e);
        self.metrics.failed(&record.topic, &kind);
        let letter = DeadLetter {
            record,
            reason: kind,
            file_only: false,
        };
        self.dead.send(letter).await;
    }

    /// Replaces every producer that hit a fatal error, and sends again, oldest first, what it
    /// did not deliver. Not after the shutdown deadline: then what is kept goes to the file.
    async fn renew_if_fatal(&self, shutdown: &Shutdown) {
        self.renew_then(shutdown, None).await;
    }

    /// [`Publisher::renew_if_fatal`], and `last` (a record the fatal producer refused to take,
    /// newer than all it failed) sent after what it failed.
    async fn renew_then(&self, shutdown: &Shutdown, mut last: Option<Record>) {
        while self.producer.is_fatal() && !shutdown.expired() {
            self.replace(&self.producer, shutdown).await;
            let mut records = take(&self.pending);
            // librdkafka reports what it failed queue by queue, newer records possibly before
            // older ones: in the order they were first produced.
            records.sort_by_key(|(seq, _)| *seq);
            let mut records: Vec<Record> = records.into_iter().map(|(_, r)| r).collect();
            records.extend(last.take());
            log::info!(
                "a new Kafka producer is in use; sending {} records again",
                records.len()
            );
            let producer = self.producer.current();
            let mut records = records.into_iter();
            while let Some(record) = records.next() {
                let counters = self
                    .topics
                    .admit(&record.topic, &self.metrics)
                    .unwrap_or_else(|| self.topics.fallback_counters.clone());
                if let Sent::Fatal(record) =
                    self.produce(&producer, record, &counters, shutdown).await
                {
                    // The new one failed too: everything left waits for the next, before
                    // what that one fails.
                    keep(&self.pending, (0, record));
                    records.for_each(|r| keep(&self.pending, (0, r)));
                    break;
                }
            }
        }
        // Shutdown ran out of time first: it goes to the file with the rest.
        if let Some(record) = last {
            keep(&self.pending, (u64::MAX, record));
        }
        if let Some((_, renewable)) = &self.dead.topic {
            while renewable.is_fatal() && !shutdown.expired() {
                self.replace(renewable, shutdown).await;
                let letters = take(&self.dead.pending);
                log::info!(
                    "a new dead-letter producer is in use; sending {} dead letters again",
                    letters.len()
                );
                for letter in letters {
                    self.dead.send(letter).await;
                }
            }
        }
        if !self.any_fatal() {
            self.health.set_fatal(None);
        }
    }

    /// Replaces a producer that hit a fatal error (see [`Renewable::renew`]), saying so in the
    /// log, the counters and `/health` (which the caller clears once nothing is fatal).
    async fn replace<C: ProducerContext + Send + Sync>(
        &self,
        renewable: &Renewable<C>,
        shutdown: &Shutdown,
    ) {
        let what = renewable.what;
        if renewable.is_asked() {
            log::info!(
                "the settings of the producer for {what} (or the files they name) changed: \
                 making a new one, once the old one's records in flight are answered"
            );
        } else {
            let reason = Renewable::fatal_error(&renewable.current());
            log::error!(
                "the producer for {what} hit a fatal error ({reason}): making a new one and \
                 sending again what it did not deliver"
            );
            self.metrics.producer_fatal.fetch_add(1, Ordering::Relaxed);
            self.health.set_fatal(Some(format!(
                "the producer for {what} hit a fatal error ({reason}); a new one is being made"
            )));
        }
        let drain = if renewable.is_asked() {
            ASKED_DRAIN
        } else {
            FATAL_DRAIN
        };
        renewable.renew(renew_deadline(shutdown, drain)).await;
        self.metrics
            .producer_restarts
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for acknowledgements until the shutdown deadline (making new producers after
    /// fatal errors), then purges what is left (its delivery reports dead-letter it to the
    /// file) and waits for the dead-letter writer. Returns how many of the connections' records
    /// were not acknowledged in time.
    async fn finish(&self, shutdown: &Shutdown) -> u64 {
        let deadline = shutdown.deadline().unwrap_or_else(Instant::now);
        loop {
            let producer = self.producer.current();
            smol::unblock(move || flush_until(&producer, deadline, "Kafka")).await;
            if self.any_fatal() && Instant::now() < deadline {
                self.renew_if_fatal(shutdown).await;
                continue;
            }
            break;
        }
        let producer = self.producer.current();
        let dead = self.dead.clone();
        let pending = self.pending.clone();
        let left = smol::unblock(move || {
            // From here on, whatever fails goes to the file, and what the file refuses to the
            // log.
            dead.expired.store(true, Ordering::Release);
            dead.file.closing();
            let mut left = purge(&producer);
            let kept = take(&pending);
            left += kept.len() as u64;
            for (_, record) in kept {
                smol::block_on(dead.file.send(DeadLetter::shutdown_timeout(record)));
            }
            if left > 0 {
                log::warn!(
                    "shutdown timeout: {left} records not acknowledged; dead-lettered them"
                );
            }
            // Dead letters of the purge may go nowhere but the file now; the dead-letter topic
            // gets what time is left (and is purged to the file after it).
            if let Some((topic, renewable)) = &dead.topic {
                let p = renewable.current();
                flush_until(&p, deadline, topic);
                let mut left = purge(&p);
                for letter in take(&dead.pending) {
                    left += 1;
                    smol::block_on(dead.file.send(DeadLetter {
                        file_only: true,
                        ..letter
                    }));
                }
                if left > 0 {
                    log::warn!("shutdown timeout: {left} dead letters not acknowledged by {topic}; writing them to the file");
                }
            }
            dead.file.finish();
            left
        })
        .await;
        self.finish_spool(left).await
    }

    /// With a spool: its writer's last acknowledgements written down, and what shutdown had
    /// no time for counted as kept there (it is sent after the next start) rather than as
    /// undelivered. Returns how many records are neither delivered nor kept.
    async fn finish_spool(&self, left: u64) -> u64 {
        let writer = self
            .spool_writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(writer) = writer else {
            return left;
        };
        smol::unblock(move || match writer.join() {
            Ok(w) => w.finish(),
            Err(_) => log::error!("the spool's writer stopped with a panic"),
        })
        .await;
        let kept = self.dead.file.kept_in_spool();
        if kept > 0 {
            log::info!(
                "{kept} records Kafka does not have yet stay in the spool for the next start"
            );
        }
        left.saturating_sub(kept)
    }
}

/// What became of a record handed to a producer.
enum Sent {
    Produced,
    DeadLettered,
    /// The producer hit a fatal error: the record waits for the next one.
    Fatal(Record),
}

/// The producer of the dead-letter topic, renewed after a fatal error as the main one is; its
/// reports count into `metrics` and fall back to the file.
fn dead_letter_producer(
    settings: &Arc<Settings>,
    wake: Arc<Event>,
    metrics: Arc<Metrics>,
    file: Sink,
    pending: Pending<DeadLetter>,
    expired: Arc<AtomicBool>,
) -> Result<Renewable<DeadLetterReports>, Error> {
    let settings = settings.clone();
    Renewable::new("the dead-letter topic", wake, move |g| {
        settings
            .client_config()
            .create_with_context(DeadLetterReports {
                metrics: metrics.clone(),
                file: file.clone(),
                generation: g,
                pending: pending.clone(),
                expired: expired.clone(),
            })
    })
    .map_err(Error::Conf)
}

/// How long a producer to be renewed may wait for the answers to what it has in flight:
/// `drain`, or less when shutdown ends sooner.
fn renew_deadline(shutdown: &Shutdown, drain: Duration) -> Instant {
    let drain = Instant::now() + drain;
    shutdown.deadline().map_or(drain, |d| d.min(drain))
}
