//! The librdkafka producers as hotdog makes them: its defaults for their settings (the
//! idempotent producer, bounded queues, retries without end), and a new producer in place of
//! one that hit a fatal error. What is resent after that is the publisher's business
//! ([`crate::publisher`]); this module only knows producers.
//!
//! An idempotent producer numbers the records it sends, so that a broker that already wrote a
//! batch whose answer was lost does not write it again when librdkafka retries it. When those
//! numbers can no longer be trusted (a broker lost data, the producer was fenced), librdkafka
//! raises a *fatal* error: that producer sends nothing more. [`Renewable`] notices (the error
//! callback raises its [`Generation`]'s flag and wakes the publisher), waits for the answers to
//! what the old producer has in flight, and makes a new one with the same settings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::producer::{Producer, ProducerContext, PurgeConfig, ThreadedProducer};

/// librdkafka settings hotdog chooses unless the operator sets them (see [`client_config`]).
pub const QUEUE_DEFAULTS: [(&str, &str); 2] = [
    ("queue.buffering.max.messages", "50000"),
    ("queue.buffering.max.kbytes", "16384"),
];

/// Most requests an idempotent producer may have in flight to one broker.
const IDEMPOTENT_MAX_IN_FLIGHT: i64 = 5;

/// The librdkafka settings: every `conf` key, and hotdog's defaults for the keys it leaves out.
/// The second value says why the idempotent producer is off when hotdog could not turn it on
/// (`None` when it is on, or the operator set `enable.idempotence` themselves).
pub fn client_config(conf: &BTreeMap<String, String>) -> (ClientConfig, Option<String>) {
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
    let mut off = None;
    if !conf.contains_key("enable.idempotence") {
        match idempotence_conflict(conf) {
            None => {
                config.set("enable.idempotence", "true");
            }
            Some(why) => off = Some(why),
        }
    }
    for (k, v) in conf {
        config.set(k, v);
    }
    (config, off)
}

/// The first key of `conf` that librdkafka does not allow with `enable.idempotence: true`
/// (it refuses to start a producer with both), said as a reason; `None` when there is none.
/// A configuration written before idempotence was the default keeps working this way.
pub fn idempotence_conflict(conf: &BTreeMap<String, String>) -> Option<String> {
    let int = |v: &str| v.trim().parse::<i64>().ok();
    for (key, value) in conf {
        let conflict = match key.as_str() {
            "acks" | "request.required.acks" => !matches!(value.trim(), "all" | "-1"),
            "max.in.flight" | "max.in.flight.requests.per.connection" => {
                int(value).is_some_and(|n| n > IDEMPOTENT_MAX_IN_FLIGHT)
            }
            "retries" | "message.send.max.retries" => int(value).is_some_and(|n| n < 1),
            "queue.buffering.backpressure.threshold" => int(value).is_some_and(|n| n > 1),
            "queuing.strategy" => value.trim() != "fifo",
            _ => false,
        };
        if conflict {
            return Some(format!("global.kafka.conf sets {key}: '{value}'"));
        }
    }
    None
}

/// One producer's life, as its context sees it: whether the producer hit a fatal error. A new
/// producer gets a new generation.
#[derive(Debug)]
pub struct Generation {
    fatal: AtomicBool,
    /// The producer's librdkafka handle (as an address), set once it is made.
    client: AtomicUsize,
    wake: Arc<Event>,
}

impl Generation {
    fn new(wake: Arc<Event>) -> Generation {
        Generation {
            fatal: AtomicBool::new(false),
            client: AtomicUsize::new(0),
            wake,
        }
    }

    /// True once the producer hit a fatal error. Asks librdkafka until it says so; then the
    /// answer is kept. Called from the producer's own callbacks (its context belongs to it, so
    /// the handle is alive) and by the publisher, which holds the producer.
    pub fn is_fatal(&self) -> bool {
        if self.fatal.load(Ordering::Acquire) {
            return true;
        }
        let fatal = raised(self.client.load(Ordering::Acquire));
        if fatal {
            self.fatal.store(true, Ordering::Release);
        }
        fatal
    }

    /// Called by the context's error callback: librdkafka reports a fatal error as an error
    /// with the underlying code, so every error is a reason to ask. Wakes whoever renews the
    /// producer when it was fatal; true when it was.
    pub fn on_error(&self) -> bool {
        let fatal = self.is_fatal();
        if fatal {
            self.wake.notify(usize::MAX);
        }
        fatal
    }
}

/// Whether the librdkafka handle at `client` (0: none yet) has raised a fatal error.
#[allow(unsafe_code)]
fn raised(client: usize) -> bool {
    if client == 0 {
        return false;
    }
    // SAFETY: `client` is the handle of a producer that is alive: the only callers are its
    // own context's callbacks (the context is owned by the handle and dropped with it) and
    // the publisher, which holds an `Arc` of the producer (see `Renewable::is_fatal`).
    // `rd_kafka_fatal_error` with a null buffer of size 0 only reads the error code.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_fatal_error(
            client as *mut rdkafka::bindings::rd_kafka_t,
            std::ptr::null_mut(),
            0,
        )
    };
    err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
}

/// Makes a producer whose context belongs to the given generation.
type Make<C> = Box<dyn Fn(Arc<Generation>) -> KafkaResult<ThreadedProducer<C>> + Send + Sync>;

/// A producer that is replaced by a new one with the same settings after a fatal error.
pub struct Renewable<C: ProducerContext + 'static> {
    /// What it produces to, for the log: "Kafka", "the dead-letter topic".
    pub what: &'static str,
    current: Mutex<(Arc<ThreadedProducer<C>>, Arc<Generation>)>,
    make: Make<C>,
    wake: Arc<Event>,
}

impl<C: ProducerContext + 'static> Renewable<C> {
    /// Makes the first producer. `wake` is notified when any generation hits a fatal error.
    pub fn new(
        what: &'static str,
        wake: Arc<Event>,
        make: impl Fn(Arc<Generation>) -> KafkaResult<ThreadedProducer<C>> + Send + Sync + 'static,
    ) -> KafkaResult<Renewable<C>> {
        let generation = Arc::new(Generation::new(wake.clone()));
        let producer = make(generation.clone())?;
        generation
            .client
            .store(handle(&producer), Ordering::Release);
        Ok(Renewable {
            what,
            current: Mutex::new((Arc::new(producer), generation)),
            make: Box::new(make),
            wake,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Arc<ThreadedProducer<C>>, Arc<Generation>)> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The producer in use.
    pub fn current(&self) -> Arc<ThreadedProducer<C>> {
        self.lock().0.clone()
    }

    /// True when the producer in use hit a fatal error and must be renewed.
    pub fn is_fatal(&self) -> bool {
        // The producer is held while its handle is asked.
        let (_producer, generation) = self.lock().clone();
        generation.is_fatal()
    }

    /// librdkafka's fatal error of `producer`, said for the log and `/health`.
    pub fn fatal_error(producer: &ThreadedProducer<C>) -> String {
        match producer.client().fatal_error() {
            Some((code, reason)) => format!("{code:?}: {reason}"),
            None => "fatal error".to_string(),
        }
    }

    /// Replaces a producer that hit a fatal error. First waits until `deadline` (at most) for
    /// the answers to what it has in flight, which its context hands on as it always does
    /// (what failed is the caller's to resend: librdkafka has already failed what was still
    /// queued); then purges what is left and makes a new producer, retrying every second if
    /// that fails.
    pub async fn renew(&self, deadline: Instant)
    where
        C: Send + Sync,
    {
        let old = self.current();
        let what = self.what;
        let drained = old.clone();
        smol::unblock(move || {
            flush_until(&drained, deadline, what);
            let left = purge(&drained);
            if left > 0 {
                log::warn!(
                    "{left} records in flight to {what} were not answered in time; sending them again"
                );
            }
        })
        .await;
        let generation = Arc::new(Generation::new(self.wake.clone()));
        let producer = loop {
            match (self.make)(generation.clone()) {
                Ok(p) => break p,
                Err(e) => {
                    log::error!("cannot make a new producer for {what}: {e}; trying again");
                    smol::Timer::after(Duration::from_secs(1)).await;
                }
            }
        };
        generation
            .client
            .store(handle(&producer), Ordering::Release);
        *self.lock() = (Arc::new(producer), generation);
        // librdkafka's destructor waits for its threads: not on the executor.
        smol::unblock(move || drop(old)).await;
    }
}

/// Flushes `producer` until nothing is in flight or `deadline`.
pub fn flush_until<C: ProducerContext>(
    producer: &ThreadedProducer<C>,
    deadline: Instant,
    what: &str,
) {
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        let step = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        if producer.flush(step).is_err() {
            log::info!(
                "waiting for {what} to acknowledge {} records",
                producer.in_flight_count()
            );
        }
    }
}

/// Purges what `producer` still holds (its delivery reports say what becomes of it) and waits
/// for those reports. Returns how many records that was.
pub fn purge<C: ProducerContext>(producer: &ThreadedProducer<C>) -> u64 {
    let left = u64::try_from(producer.in_flight_count()).unwrap_or(0);
    if left > 0 {
        producer.purge(PurgeConfig::default().queue().inflight());
        let _ = producer.flush(Duration::from_secs(5));
    }
    left
}

/// The address of `producer`'s librdkafka handle, for its [`Generation`].
fn handle<C: ProducerContext>(producer: &ThreadedProducer<C>) -> usize {
    producer.client().native_ptr() as usize
}

/// Raises a fatal error in `producer` as librdkafka's own test hook does
/// (`rd_kafka_test_fatal_error`), to test what follows one. Only called when a
/// `HOTDOG_TEST_*_FATAL_AFTER` variable asks for it ([`TestHook`]).
#[allow(unsafe_code)]
pub fn inject_fatal<C: ProducerContext>(producer: &ThreadedProducer<C>) {
    let reason = c"injected by a HOTDOG_TEST_*_FATAL_AFTER variable";
    // SAFETY: the pointer is the live client of `producer`, borrowed for the call, and the
    // reason is a NUL-terminated string librdkafka copies.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        )
    };
    log::warn!("test hook: fatal error injected into a producer ({err:?})");
}

/// A test hook: after this many records, [`inject_fatal`] once. Read from an environment
/// variable that operators never set (see README, "Testing hooks").
#[derive(Debug)]
pub struct TestHook {
    after: Option<u64>,
    count: AtomicU64,
}

impl TestHook {
    /// The hook the variable `name` asks for, if any.
    pub fn from_env(name: &str) -> TestHook {
        let after = std::env::var(name).ok().and_then(|v| v.trim().parse().ok());
        TestHook {
            after,
            count: AtomicU64::new(0),
        }
    }

    /// Counts `n` more records; true once, when the count reaches the variable's number.
    pub fn count(&self, n: u64) -> bool {
        let Some(after) = self.after else {
            return false;
        };
        let before = self.count.fetch_add(n, Ordering::Relaxed);
        before < after && before + n >= after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn idempotence_is_on_unless_the_operator_sets_it_or_a_key_that_excludes_it() {
        let get = |c: &ClientConfig| c.get("enable.idempotence").map(str::to_string);
        let (c, off) = client_config(&conf(&[("bootstrap.servers", "b:9092")]));
        assert_eq!(get(&c).as_deref(), Some("true"));
        assert_eq!(off, None);
        let (c, off) = client_config(&conf(&[("enable.idempotence", "false")]));
        assert_eq!(get(&c).as_deref(), Some("false"));
        assert_eq!(off, None, "the operator's choice is not a conflict");
        for (key, value) in [
            ("acks", "1"),
            ("request.required.acks", "0"),
            ("max.in.flight", "10"),
            ("max.in.flight.requests.per.connection", "6"),
            ("retries", "0"),
            ("message.send.max.retries", "0"),
            ("queue.buffering.backpressure.threshold", "2"),
            ("queuing.strategy", "lifo"),
        ] {
            let (c, off) = client_config(&conf(&[(key, value)]));
            assert_eq!(get(&c), None, "{key}");
            let off = off.unwrap_or_default();
            assert!(off.contains(key) && off.contains(value), "{off}");
        }
        for (key, value) in [
            ("acks", "all"),
            ("acks", "-1"),
            ("max.in.flight", "5"),
            ("retries", "3"),
            ("queuing.strategy", "fifo"),
        ] {
            let (c, off) = client_config(&conf(&[(key, value)]));
            assert_eq!(get(&c).as_deref(), Some("true"), "{key}: {value}");
            assert_eq!(off, None);
        }
    }

    #[test]
    fn librdkafka_accepts_what_client_config_makes() {
        // The defaults with idempotence, and a conflicting key without it: both start.
        for extra in [None, Some(("acks", "1"))] {
            let mut c = conf(&[("bootstrap.servers", "127.0.0.1:9")]);
            if let Some((k, v)) = extra {
                c.insert(k.into(), v.into());
            }
            let (config, _) = client_config(&c);
            let made: KafkaResult<ThreadedProducer<rdkafka::producer::DefaultProducerContext>> =
                config.create();
            assert!(made.is_ok(), "{extra:?}: {:?}", made.err());
        }
    }

    #[test]
    fn a_test_hook_fires_once_when_its_count_is_reached() {
        let hook = TestHook {
            after: Some(10),
            count: AtomicU64::new(0),
        };
        assert!(!hook.count(4));
        assert!(!hook.count(4));
        assert!(hook.count(4), "8 -> 12 passes 10");
        assert!(!hook.count(4));
        let none = TestHook::from_env("HOTDOG_TEST_NOTHING_SET_HERE");
        assert!(!none.count(u64::MAX));
    }
}
