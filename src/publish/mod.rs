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

use crate::control::metrics::{Gauge, Metrics, TopicCounters};
use crate::control::shutdown::Shutdown;
use crate::control::throttle;
use deadletter::Sink;
use hotdog_stages::config;
use hotdog_stages::core::{self as record, Ack, Batch, Block, DeadLetter, Name, Record, BATCH_MAX};
use producer::{flush_until, purge, Generation, Renewable, TestHook};

/// Why the publisher could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// librdkafka refused the settings in `global.kafka.conf`.
    #[error("global.kafka.conf is not accepted by librdkafka: {0}")]
    Conf(#[source] KafkaError),
    /// The dead-letter file could not be opened, or its writer's thread started.
    #[error("{0}")]
    DeadLetterFile(#[source] std::io::Error),
}

/// Records produced between two cooperative yields.
const YIELD_EVERY: usize = 256;

/// How long a producer that hit a fatal error is given to hear the answers to what it has in
/// flight before those records are sent again on the new one (outside shutdown).
const FATAL_DRAIN: Duration = Duration::from_secs(30);

/// Records a producer did not deliver because it hit a fatal error, to be sent again on the
/// next one.
type Pending<T> = Arc<Mutex<Vec<T>>>;

fn take<T>(pending: &Pending<T>) -> Vec<T> {
    std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()))
}

fn keep<T>(pending: &Pending<T>, item: T) {
    pending.lock().unwrap_or_else(|p| p.into_inner()).push(item);
}

/// What the publisher keeps with each record it hands to librdkafka, for its delivery report:
/// its payload when it is lent (librdkafka reads it without a copy of its own until then), its
/// topic's counters, and what a failed report no longer says (librdkafka gives no timestamp for
/// a record that failed) or never did (the order it was produced in).
struct Tag {
    /// The payload lent to librdkafka and its block; `None` when librdkafka copied it.
    lent: Option<(Bytes, Block)>,
    counters: Arc<TopicCounters>,
    read_ms: i64,
    /// The publisher's count of records produced: records sent again go oldest first.
    seq: u64,
    /// The record's share of a message its sender waits for (RELP).
    ack: Ack,
}

impl producer::OwnsPayload for Tag {
    fn payload(&self) -> &[u8] {
        self.lent.as_ref().map_or(&[], |(payload, _)| payload)
    }
}

/// Counts delivery reports of the connections' records; runs on librdkafka's thread. The
/// opaque of every record is its [`Tag`].
struct Reports {
    metrics: Arc<Metrics>,
    clock: AckClock,
    dead: Arc<DeadLetters>,
    generation: Arc<Generation>,
    pending: Pending<(u64, Record)>,
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.generation, error, reason);
    }
}

/// librdkafka's errors about the cluster (every broker down, ...), which it repeats many times
/// a second while they last: logged through a throttle. A fatal error also marks the producer
/// for renewal.
fn client_error(generation: &Generation, error: KafkaError, reason: &str) {
    if generation.on_error() {
        log::error!("librdkafka: {error}: {reason}");
        return;
    }
    throttle::KAFKA_CLIENT.log(
        log::Level::Error,
        format_args!("librdkafka: {error}: {reason}"),
    );
}

/// True when a failed delivery report is about a record to send again on a new producer:
/// its producer hit a fatal error (librdkafka then fails what it still had queued), or the
/// record was purged before the shutdown deadline, which only a renewal does.
fn to_resend(generation: &Generation, error: &KafkaError, expired: &AtomicBool) -> bool {
    (generation.is_fatal() || purged(error)) && !expired.load(Ordering::Acquire)
}

/// True when librdkafka failed a record because it was purged, not because of Kafka.
fn purged(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
    )
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Tag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Box<Tag>) {
        let Tag {
            lent,
            counters,
            read_ms,
            seq,
            ack,
        } = *tag;
        match result {
            Ok(_) => {
                self.metrics.delivered(&counters);
                ack.settle();
                if read_ms > 0 {
                    let now = self.clock.now(read_ms);
                    self.metrics
                        .latency
                        .observe(u64::try_from(now - read_ms).unwrap_or(0));
                }
            }
            Err((e, m)) if to_resend(&self.generation, e, &self.dead.expired) => {
                keep(&self.pending, (seq, record_of(m, lent, read_ms, true, ack)));
            }
            Err((e, m)) => {
                let kind = error_kind(e);
                let purged = purged(e);
                throttle::KAFKA_REFUSED.warn(format_args!(
                    "Kafka did not take a record for topic {}: {e}",
                    m.topic()
                ));
                self.metrics.failed(m.topic(), &kind);
                let letter = DeadLetter {
                    record: record_of(m, lent, read_ms, false, ack),
                    reason: if purged {
                        record::SHUTDOWN_TIMEOUT.to_string()
                    } else {
                        kind
                    },
                    file_only: purged,
                };
                smol::block_on(self.dead.send(letter));
            }
        }
    }
}

/// What the dead-letter producer keeps with each dead letter: the topic it was meant for and
/// the time its line was read.
struct Letter {
    original: String,
    read_ms: i64,
    ack: Ack,
}

/// A dead letter's payload is copied by librdkafka: its tag owns none.
impl producer::OwnsPayload for Letter {
    fn payload(&self) -> &[u8] {
        &[]
    }
}

/// Counts delivery reports of the dead-letter topic; runs on its producer's thread. The opaque
/// of every record is its [`Letter`].
struct DeadLetterReports {
    metrics: Arc<Metrics>,
    file: Sink,
    generation: Arc<Generation>,
    pending: Pending<DeadLetter>,
    expired: Arc<AtomicBool>,
}

impl ClientContext for DeadLetterReports {
    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.generation, error, reason);
    }
}

impl ProducerContext for DeadLetterReports {
    type DeliveryOpaque = Box<Letter>;

    fn delivery(&self, result: &DeliveryResult<'_>, letter: Box<Letter>) {
        let Letter {
            original,
            read_ms,
            ack,
        } = *letter;
        // The record as it was meant for its own topic.
        let original_record = |m: &rdkafka::message::BorrowedMessage<'_>, ack| Record {
            topic: Name::Owned(original.clone()),
            ..record_of(m, None, read_ms, false, ack)
        };
        match result {
            Ok(m) => {
                self.metrics.dead_lettered(&original);
                ack.settle();
                throttle::DEAD_LETTER.warn(format_args!(
                    "dead letter for {original} written to {}",
                    m.topic()
                ));
            }
            Err((e, m)) if to_resend(&self.generation, e, &self.expired) => {
                let reason = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "hotdog-reason"))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let letter = DeadLetter {
                    record: original_record(m, ack),
                    reason,
                    file_only: false,
                };
                keep(&self.pending, letter);
            }
            Err((e, m)) => {
                throttle::DEAD_LETTER.warn(format_args!(
                    "the dead-letter topic did not take a record: {e}"
                ));
                let letter = DeadLetter {
                    record: original_record(m, ack),
                    reason: format!("dead_letter_topic_{}", error_kind(e)),
                    file_only: true,
                };
                smol::block_on(self.file.send(letter));
            }
        }
    }
}

/// The record a delivery report is about, read at `read_ms`, rebuilt to be sent again
/// (`all_headers`) or for a dead letter (hotdog's own `hotdog-` headers left out), with its
/// share of a waiting message back. Its payload is the one `lent`, or a copy of librdkafka's.
fn record_of<M: rdkafka::message::Message>(
    m: &M,
    lent: Option<(Bytes, Block)>,
    read_ms: i64,
    all_headers: bool,
    ack: Ack,
) -> Record {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .filter(|h| all_headers || !h.key.starts_with("hotdog-"))
                .map(|h| {
                    (
                        h.key.to_string().into(),
                        h.value.map(text).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let (payload, block) = lent.unwrap_or_else(|| {
        let copy = m.payload().map(Bytes::copy_from_slice);
        (copy.unwrap_or_default(), Block::default())
    });
    Record {
        topic: m.topic().to_string().into(),
        key: m.key().map(text),
        payload,
        block,
        headers,
        read_ms,
        ack,
    }
}

/// Where every dead letter goes: the dead-letter topic when there is one and Kafka may still
/// be used for it, else the file. Reasons are counted here, once per letter.
struct DeadLetters {
    /// The dead-letter topic and the producer that writes to it.
    topic: Option<(String, Renewable<DeadLetterReports>)>,
    file: Sink,
    metrics: Arc<Metrics>,
    /// Set once shutdown ran out of time: dead letters go straight to the file.
    expired: Arc<AtomicBool>,
    /// Dead letters the dead-letter producer did not write because it hit a fatal error.
    pending: Pending<DeadLetter>,
    hook: TestHook,
}

/// What became of an attempt to produce a dead letter to the topic.
enum Attempt {
    Produced,
    QueueFull(DeadLetter),
    ToFile(DeadLetter),
}

impl DeadLetters {
    /// How long a dead letter waits for room in the dead-letter producer's queue before it goes
    /// to the file instead.
    const QUEUE_FULL_WAIT: Duration = Duration::from_secs(5);

    /// Sends `letter` on; waits (without blocking) while the dead-letter producer's queue or
    /// the file's queue is full. Its reason is counted where it goes (the file's sink counts its
    /// own).
    async fn send(&self, letter: DeadLetter) {
        let until = Instant::now() + Self::QUEUE_FULL_WAIT;
        let mut letter = letter;
        loop {
            match self.produce(letter) {
                Attempt::Produced => return,
                Attempt::QueueFull(l) if Instant::now() < until => {
                    letter = l;
                    smol::Timer::after(Duration::from_millis(5)).await;
                }
                Attempt::QueueFull(l) | Attempt::ToFile(l) => {
                    letter = l;
                    break;
                }
            }
        }
        self.file.send(letter).await;
    }

    fn produce(&self, mut letter: DeadLetter) -> Attempt {
        let Some((topic, renewable)) = &self.topic else {
            return Attempt::ToFile(letter);
        };
        if letter.file_only || self.expired.load(Ordering::Acquire) {
            return Attempt::ToFile(letter);
        }
        let producer = renewable.current();
        let ack = std::mem::take(&mut letter.record.ack);
        let r = &letter.record;
        let mut headers: Vec<(Name, String)> = Vec::with_capacity(r.headers.len() + 2);
        headers.push(("hotdog-original-topic".into(), r.topic.to_string()));
        headers.push(("hotdog-reason".into(), letter.reason.clone()));
        headers.extend(r.headers.iter().cloned());
        let letter_tag = Box::new(Letter {
            original: r.topic.to_string(),
            read_ms: r.read_ms,
            ack,
        });
        let envelope = producer::Envelope {
            topic,
            key: r.key.as_deref(),
            headers: &headers,
            timestamp: r.read_ms.max(0),
        };
        let payload = producer::Payload::Copied(&r.payload);
        // Refused: the record's share goes back with it.
        let sent = producer::send(&producer, &envelope, payload, letter_tag)
            .map_err(|(e, refused)| (e, refused.ack))
            .map_err(|(e, ack)| {
                letter.record.ack = ack;
                e
            });
        match sent {
            Ok(()) => {
                self.metrics.dead_letter_reason(&letter.reason);
                if self.hook.count(1) {
                    producer::inject_fatal(&producer);
                }
                Attempt::Produced
            }
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                Attempt::QueueFull(letter)
            }
            // Kept for the next producer, which the publisher makes.
            Err(_) if renewable.is_fatal() => {
                keep(&self.pending, letter);
                Attempt::Produced
            }
            Err(e) => {
                throttle::DEAD_LETTER.warn(format_args!(
                    "the dead-letter topic {topic} refused a record: {e}"
                ));
                Attempt::ToFile(letter)
            }
        }
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
                let now = record::now_ms();
                *last = (read_ms, now, 0);
                now
            }
        }
    }
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
}

impl Default for Health {
    /// Unavailable until a broker has answered.
    fn default() -> Self {
        Health {
            state: Mutex::new(Some("no Kafka broker has answered yet".into())),
            fatal: Mutex::new(None),
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
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    fn set(&self, v: Option<String>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    fn set_fatal(&self, v: Option<String>) {
        *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// Counts the records waiting in the outbox, so that `buffer` bounds records, not batches. A
/// sender takes room for a whole batch at once (or waits), and the publisher gives it back when
/// it takes the batch out.
#[derive(Debug)]
struct Gate {
    used: AtomicUsize,
    capacity: usize,
    freed: Event,
}

impl Gate {
    fn new(capacity: usize) -> Gate {
        Gate {
            used: AtomicUsize::new(0),
            capacity,
            freed: Event::new(),
        }
    }

    fn try_take(&self, n: usize) -> bool {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used + n > self.capacity {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    async fn take(&self, n: usize) {
        loop {
            if self.try_take(n) {
                return;
            }
            let freed = self.freed.listen();
            if self.try_take(n) {
                return;
            }
            freed.await;
        }
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.freed.notify(usize::MAX);
    }
}

/// The way into the publisher, one clone per connection: at most `buffer` records wait in it.
#[derive(Clone)]
pub struct Outbox {
    tx: async_channel::Sender<Batch>,
    gate: Arc<Gate>,
    /// Where batches go once the publisher takes nothing more.
    file: Sink,
}

/// The publisher's end of the [`Outbox`].
pub struct Inbox {
    rx: async_channel::Receiver<Batch>,
    gate: Arc<Gate>,
}

/// An outbox that holds at most `capacity` records, and its other end. After the shutdown
/// deadline, batches that can no longer be handed over are written to `file`.
pub fn outbox(capacity: usize, file: Sink) -> (Outbox, Inbox) {
    let (tx, rx) = async_channel::unbounded();
    let gate = Arc::new(Gate::new(capacity.max(1)));
    let outbox = Outbox {
        tx,
        gate: gate.clone(),
        file,
    };
    (outbox, Inbox { rx, gate })
}

impl Outbox {
    /// The most records a sender should put in one batch: a batch must fit in the outbox.
    pub fn batch_max(&self) -> usize {
        self.gate.capacity.min(BATCH_MAX)
    }

    /// Records waiting for the publisher now.
    pub fn waiting(&self) -> usize {
        self.gate.used.load(Ordering::Relaxed)
    }

    /// Hands `batch` to the publisher, waiting while the outbox is full. False when the
    /// publisher takes nothing more (shutdown ran out of time): the records are dead-lettered.
    pub async fn send(&self, batch: Batch) -> bool {
        let n = batch.len();
        self.gate.take(n).await;
        match self.tx.send(batch).await {
            Ok(()) => true,
            Err(async_channel::SendError(batch)) => {
                self.gate.give(n);
                for record in batch {
                    self.file.send(DeadLetter::shutdown_timeout(record)).await;
                }
                false
            }
        }
    }

    /// Like [`Outbox::send`], but never waits: when the outbox is full (or closed), the batch
    /// is given back. Only UDP does this: it cannot push back.
    pub fn try_send(&self, batch: Batch) -> Result<(), Batch> {
        let n = batch.len();
        if !self.gate.try_take(n) {
            return Err(batch);
        }
        self.tx.try_send(batch).map_err(|e| {
            self.gate.give(n);
            e.into_inner()
        })
    }

    /// The publisher takes nothing more: later batches are dead-lettered.
    pub fn close(&self) {
        self.tx.close();
    }
}

impl Inbox {
    /// The next batch; `None` once the outbox is closed and empty.
    pub async fn recv(&self) -> Option<Batch> {
        let batch = self.rx.recv().await.ok()?;
        self.gate.give(batch.len());
        Some(batch)
    }
}

/// The publisher task's side: the producers and the outbox's receiving end.
pub struct Publisher {
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
    inbox: Inbox,
    topics: TopicCap,
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
    /// dead-letter writer, and the outbox, which holds at most `kafka.buffer` records.
    pub fn new(kafka: &config::Kafka, metrics: Arc<Metrics>) -> Result<(Publisher, Outbox), Error> {
        let (config, idempotence_off) = producer::client_config(&kafka.conf);
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
                let (config, metrics, file) = (config.clone(), metrics.clone(), file.clone());
                let (pending, expired) = (dead_pending.clone(), expired.clone());
                let renewable = Renewable::new("the dead-letter topic", wake.clone(), move |g| {
                    config.create_with_context(DeadLetterReports {
                        metrics: metrics.clone(),
                        file: file.clone(),
                        generation: g,
                        pending: pending.clone(),
                        expired: expired.clone(),
                    })
                })
                .map_err(Error::Conf)?;
                Some((topic.clone(), renewable))
            }
            None => None,
        };
        let (outbox, inbox) = outbox(kafka.buffer, file.clone());
        let dead = Arc::new(DeadLetters {
            topic,
            file,
            metrics: metrics.clone(),
            expired,
            pending: dead_pending,
            hook: TestHook::from_env("HOTDOG_TEST_DEAD_LETTER_FATAL_AFTER"),
        });
        let pending: Pending<(u64, Record)> = Arc::default();
        let producer = {
            let (metrics, dead, pending) = (metrics.clone(), dead.clone(), pending.clone());
            Renewable::new("Kafka", wake.clone(), move |g| {
                config.create_with_context(Reports {
                    metrics: metrics.clone(),
                    clock: AckClock::default(),
                    dead: dead.clone(),
                    generation: g,
                    pending: pending.clone(),
                })
            })
            .map_err(Error::Conf)?
        };
        let topics = TopicCap::new(kafka.max_topics, &kafka.topic, &metrics);
        let publisher = Publisher {
            producer: Arc::new(producer),
            pending,
            produced: std::sync::atomic::AtomicU64::new(0),
            wake,
            health: Arc::new(Health::default()),
            hook: TestHook::from_env("HOTDOG_TEST_KAFKA_FATAL_AFTER"),
            metrics,
            dead,
            inbox,
            topics,
        };
        Ok((publisher, outbox))
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
            let next = futures_lite::future::or(async { Some(self.inbox.recv().await) }, async {
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
        let lend = record.block.lendable();
        let mut tag = Box::new(Tag {
            lent: lend.then(|| {
                let payload = std::mem::take(&mut record.payload);
                (payload, std::mem::take(&mut record.block))
            }),
            counters: counters.clone(),
            read_ms: record.read_ms,
            seq: self.produced.fetch_add(1, Ordering::Relaxed),
            ack: std::mem::take(&mut record.ack),
        });
        loop {
            let envelope = producer::Envelope {
                topic: &record.topic,
                key: record.key.as_deref(),
                headers: &record.headers,
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
            // A record that leaves takes back from the tag its payload, if it was lent, and its
            // share of a waiting message.
            let mut leave = |mut record: Record| {
                if let Some((payload, block)) = tag.lent.take() {
                    (record.payload, record.block) = (payload, block);
                }
                record.ack = std::mem::take(&mut tag.ack);
                record
            };
            match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    if shutdown.expired() {
                        let record = leave(record);
                        self.dead.send(DeadLetter::shutdown_timeout(record)).await;
                        return Sent::DeadLettered;
                    }
                    smol::Timer::after(backoff).await;
                    // Short waits: librdkafka's queue drains in milliseconds at full speed.
                    backoff = (backoff * 2).min(Duration::from_millis(10));
                }
                _ if self.producer.is_fatal() => return Sent::Fatal(leave(record)),
                e => {
                    let record = leave(record);
                    throttle::KAFKA_REFUSED.warn(format_args!(
                        "Kafka refused a record for topic {}: {e}",
                        record.topic
                    ));
                    let kind = error_kind(&e);
                    self.metrics.failed(&record.topic, &kind);
                    let letter = DeadLetter {
                        record,
                        reason: kind,
                        file_only: false,
                    };
                    self.dead.send(letter).await;
                    return Sent::DeadLettered;
                }
            }
        }
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
        let reason = Renewable::fatal_error(&renewable.current());
        log::error!(
            "the producer for {what} hit a fatal error ({reason}): making a new one and sending \
             again what it did not deliver"
        );
        self.metrics.producer_fatal.fetch_add(1, Ordering::Relaxed);
        self.health.set_fatal(Some(format!(
            "the producer for {what} hit a fatal error ({reason}); a new one is being made"
        )));
        renewable.renew(renew_deadline(shutdown)).await;
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
        smol::unblock(move || {
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
        .await
    }
}

/// What became of a record handed to a producer.
enum Sent {
    Produced,
    DeadLettered,
    /// The producer hit a fatal error: the record waits for the next one.
    Fatal(Record),
}

/// How long a producer that hit a fatal error may wait for the answers to what it has in
/// flight: [`FATAL_DRAIN`], or less when shutdown ends sooner.
fn renew_deadline(shutdown: &Shutdown) -> Instant {
    let drain = Instant::now() + FATAL_DRAIN;
    shutdown.deadline().map_or(drain, |d| d.min(drain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_while_a_producer_is_replaced_whatever_the_probe_says() {
        let health = Health::default();
        assert!(health.get().is_err(), "no broker has answered yet");
        health.set(None);
        assert_eq!(health.get(), Ok(()));
        health.set_fatal(Some("fatal: fenced".into()));
        assert_eq!(health.get(), Err("fatal: fenced".to_string()));
        health.set(Some("no broker".into()));
        assert_eq!(
            health.get(),
            Err("fatal: fenced".to_string()),
            "the fatal error first"
        );
        health.set_fatal(None);
        assert_eq!(health.get(), Err("no broker".to_string()));
    }

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

    #[test]
    fn a_closed_outbox_writes_what_it_is_given_to_the_dead_letter_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dead.jsonl");
        let metrics = Metrics::new();
        let file = deadletter::start(Some(path.clone()), metrics.clone()).expect("writer");
        let (outbox, _inbox) = outbox(10, file.clone());
        outbox.close();
        let record = Record {
            topic: "t".into(),
            key: Some("k".into()),
            payload: "late".into(),
            block: Block::default(),
            headers: Vec::new(),
            read_ms: 1,
            ack: Default::default(),
        };
        assert!(!smol::block_on(outbox.send(vec![record])));
        file.finish();
        let text = std::fs::read_to_string(&path).expect("dead-letter file");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["topic"], "t");
        assert_eq!(lines[0]["payload"], "late");
        assert_eq!(lines[0]["reason"], record::SHUTDOWN_TIMEOUT);
        assert_eq!(metrics.dead_lettered_for(record::SHUTDOWN_TIMEOUT), 1);
        assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 1);
        assert_eq!(outbox.waiting(), 0, "the room it took is given back");
    }

    #[test]
    fn topics_past_the_cap_are_refused_and_known_ones_and_the_fallback_always_admitted() {
        let metrics = Metrics::default();
        let cap = TopicCap::new(2, "logs", &metrics);
        let admit = |s: &str| cap.admit(&Name::Owned(s.to_string()), &metrics).is_some();
        assert!(admit("a"));
        assert!(admit("b"));
        assert!(!admit("c"), "a third topic over a cap of 2");
        assert!(admit("a"), "a known topic stays admitted");
        assert!(cap.admit(&Name::Borrowed("b"), &metrics).is_some());
        assert!(admit("logs"), "the fallback is always admitted");
        assert!(!admit("d"));
        // The counters are the metrics' own: what is counted there shows in /stats.
        let a = cap.admit(&Name::Borrowed("a"), &metrics).expect("admitted");
        assert!(Arc::ptr_eq(&a, &metrics.topic("a")));
        let names: Vec<String> = metrics.topics().into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            names,
            ["a", "b", "logs"],
            "no series for topics over the cap"
        );
    }

    #[test]
    fn the_gate_counts_records_and_wakes_a_waiting_sender() {
        let gate = Arc::new(Gate::new(10));
        assert!(gate.try_take(6));
        assert!(!gate.try_take(5), "6 + 5 records do not fit in 10");
        assert!(gate.try_take(4));
        assert!(!gate.try_take(1));
        let waiting = {
            let gate = gate.clone();
            std::thread::spawn(move || smol::block_on(gate.take(3)))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "took room that is not there");
        gate.give(6);
        waiting.join().expect("the sender woke");
        assert_eq!(gate.used.load(Ordering::Relaxed), 7);
    }
}
