//! The librdkafka producers as hotdog makes them: its defaults for their settings (the
//! idempotent producer, bounded queues, retries without end), and a new producer in place of
//! one that hit a fatal error. What is resent after that is the publisher's business
//! ([`crate::publish`]); this module only knows producers.
//!
//! An idempotent producer numbers the records it sends, so that a broker that already wrote a
//! batch whose answer was lost does not write it again when librdkafka retries it. When those
//! numbers can no longer be trusted (a broker lost data, the producer was fenced), librdkafka
//! raises a *fatal* error: that producer sends nothing more. [`Renewable`] notices (the error
//! callback raises its [`Generation`]'s flag and wakes the publisher), waits for the answers to
//! what the old producer has in flight, and makes a new one with the same settings.
//!
//! [`send`] hands a record to a producer, its payload copied by librdkafka or lent to it until
//! the delivery report (which payloads may be lent is the publisher's business).
//!
//! This is the one module allowed `unsafe` code: every call into C is here (librdkafka's, where
//! the rdkafka crate has no safe way, and glibc's `malloc_trim`, [`trim_memory`]), each with
//! why it is sound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use rdkafka::bindings as rdsys;
use rdkafka::config::ClientConfig;
use rdkafka::error::{IsError as _, KafkaError, KafkaResult};
use rdkafka::producer::{Producer, ProducerContext, PurgeConfig, ThreadedProducer};

use hotdog_stages::core::Name;

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

/// The producers' settings as the configuration has them now, and what the files they name
/// (keys, certificates, CAs: every `*.location`, and `sasl.kerberos.keytab`) held when they
/// were read. A new producer is made with them; a reload that changes either asks for one.
pub struct Settings(Mutex<Read>);

struct Read {
    conf: BTreeMap<String, String>,
    files: Vec<(String, Option<Vec<u8>>)>,
}

impl Settings {
    pub fn new(conf: &BTreeMap<String, String>) -> Settings {
        Settings(Mutex::new(Read {
            conf: conf.clone(),
            files: named_files(conf),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Read> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The librdkafka settings a producer is made with now (see [`client_config`]).
    pub fn client_config(&self) -> ClientConfig {
        client_config(&self.lock().conf).0
    }

    /// Takes `conf` (a reload's) and reads the files it names again: true when either differs
    /// from what the producers were made with.
    pub fn update(&self, conf: &BTreeMap<String, String>) -> bool {
        let files = named_files(conf);
        let mut read = self.lock();
        if read.conf == *conf && read.files == files {
            return false;
        }
        *read = Read {
            conf: conf.clone(),
            files,
        };
        true
    }
}

/// The files `conf` names and what they hold (`None`: unreadable now, which librdkafka says
/// when it makes the producer).
fn named_files(conf: &BTreeMap<String, String>) -> Vec<(String, Option<Vec<u8>>)> {
    conf.iter()
        .filter(|(k, _)| k.ends_with(".location") || k.as_str() == "sasl.kerberos.keytab")
        .map(|(_, path)| (path.clone(), std::fs::read(path).ok()))
        .collect()
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
    /// A new producer was asked for: its settings changed (see [`Renewable::ask`]).
    asked: Arc<AtomicBool>,
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
            asked: Arc::new(AtomicBool::new(false)),
        })
    }

    /// What asks this producer to be renewed (then wakes the publisher): its settings, or the
    /// files they name, changed.
    pub fn asking(&self) -> Arc<AtomicBool> {
        self.asked.clone()
    }

    /// True when a new producer was asked for, not made necessary by a fatal error.
    pub fn is_asked(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Arc<ThreadedProducer<C>>, Arc<Generation>)> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The producer in use.
    pub fn current(&self) -> Arc<ThreadedProducer<C>> {
        self.lock().0.clone()
    }

    /// True when the producer in use must be renewed: it hit a fatal error, or a new one was
    /// asked for.
    pub fn is_fatal(&self) -> bool {
        if self.is_asked() {
            return true;
        }
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
        self.asked.store(false, Ordering::Release);
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

/// A delivery opaque that owns its record's payload, for [`Payload::Lent`]: librdkafka reads the
/// payload without a copy, and the opaque keeps it alive until the delivery report gives the
/// opaque back.
pub trait OwnsPayload {
    fn payload(&self) -> &[u8];
}

/// How [`send`] hands librdkafka a record's payload.
pub enum Payload<'a> {
    /// Copied by librdkafka when it takes the record (`RD_KAFKA_MSG_F_COPY`).
    Copied(&'a [u8]),
    /// The opaque's own ([`OwnsPayload`]), read where it is until the delivery report.
    Lent,
}

/// What [`send`] hands librdkafka beside the payload.
pub struct Envelope<'a> {
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub headers: &'a [(Name, String)],
    /// One more header, after `headers` (the spool's `hotdog.id`).
    pub extra: Option<(&'a str, &'a [u8])>,
    /// The Kafka timestamp in ms since the epoch; 0 for librdkafka's own clock.
    pub timestamp: i64,
}

/// Headers made for one produce call: destroyed unless librdkafka took them.
struct NativeHeaders(*mut rdsys::rd_kafka_headers_t);

impl NativeHeaders {
    fn new(headers: &[(Name, String)], extra: Option<(&str, &[u8])>) -> Self {
        if headers.is_empty() && extra.is_none() {
            return Self(std::ptr::null_mut());
        }
        // SAFETY: librdkafka copies each name and value it is given, by pointer and length, into
        // the list it allocated here; both are borrowed for the call only.
        unsafe {
            let list = rdsys::rd_kafka_headers_new(headers.len() + 1);
            let all = headers
                .iter()
                .map(|(n, v)| (n.as_ref(), v.as_bytes()))
                .chain(extra);
            for (name, value) in all {
                // Adding to a list made here cannot fail: only a read-only list refuses.
                rdsys::rd_kafka_header_add(
                    list,
                    name.as_ptr().cast(),
                    isize::try_from(name.len()).unwrap_or(isize::MAX),
                    value.as_ptr().cast(),
                    isize::try_from(value.len()).unwrap_or(isize::MAX),
                );
            }
            Self(list)
        }
    }
}

impl Drop for NativeHeaders {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the list was made by `new` and librdkafka did not take it.
            unsafe { rdsys::rd_kafka_headers_destroy(self.0) }
        }
    }
}

/// Hands one record to `producer` as the rdkafka crate's `send` does, but with the payload
/// [`Payload::Lent`] when the caller can: the crate always has librdkafka copy it, a larger
/// allocation and a `memcpy` for every record, which also spreads the records librdkafka walks
/// after each answer over more memory. `opaque` comes back in the record's delivery report, or
/// here when librdkafka refuses the record.
pub fn send<C, T>(
    producer: &ThreadedProducer<C>,
    envelope: &Envelope<'_>,
    payload: Payload<'_>,
    opaque: Box<T>,
) -> Result<(), (KafkaError, Box<T>)>
where
    C: ProducerContext<DeliveryOpaque = Box<T>>,
    T: OwnsPayload + Send + Sync,
{
    use rdsys::rd_kafka_vtype_t::*;
    let topic = match std::ffi::CString::new(envelope.topic) {
        Ok(topic) => topic,
        Err(e) => return Err((e.into(), opaque)),
    };
    let (key, key_len) = envelope
        .key
        .map_or((std::ptr::null(), 0), |k| (k.as_ptr(), k.len()));
    let headers = NativeHeaders::new(envelope.headers, envelope.extra);
    let (value, flags) = match payload {
        Payload::Copied(bytes) => (bytes, rdsys::RD_KAFKA_MSG_F_COPY),
        Payload::Lent => (opaque.payload(), 0),
    };
    let (value, value_len) = (value.as_ptr(), value.len());
    // A lent payload's bytes stay where they are: the box moves, not what it owns.
    let opaque = Box::into_raw(opaque);
    // SAFETY: the client is `producer`'s, alive for the call. librdkafka copies the topic, the
    // key and a payload flagged RD_KAFKA_MSG_F_COPY; it takes the headers on success. Without
    // that flag (or F_FREE) it reads the payload until it destroys the record, right after the
    // delivery report, and never frees it. A lent payload is owned by `opaque`, which the
    // delivery report turns back into its box (the rdkafka crate's `DeliveryOpaque::from_ptr`,
    // the same as for the crate's own `send`), so it lives until then; on refusal the box is
    // taken back here.
    let err = unsafe {
        rdsys::rd_kafka_producev(
            producer.client().native_ptr(),
            RD_KAFKA_VTYPE_TOPIC,
            topic.as_ptr(),
            RD_KAFKA_VTYPE_PARTITION,
            // RD_KAFKA_PARTITION_UA: the partitioner chooses.
            -1i32,
            RD_KAFKA_VTYPE_MSGFLAGS,
            flags,
            RD_KAFKA_VTYPE_VALUE,
            value,
            value_len,
            RD_KAFKA_VTYPE_KEY,
            key,
            key_len,
            RD_KAFKA_VTYPE_OPAQUE,
            opaque.cast::<std::ffi::c_void>(),
            RD_KAFKA_VTYPE_TIMESTAMP,
            envelope.timestamp,
            RD_KAFKA_VTYPE_HEADERS,
            headers.0,
            RD_KAFKA_VTYPE_END,
        )
    };
    if err.is_error() {
        // SAFETY: librdkafka refused the record and did not keep the opaque.
        let opaque = unsafe { Box::from_raw(opaque) };
        return Err((KafkaError::MessageProduction(err.into()), opaque));
    }
    std::mem::forget(headers);
    Ok(())
}

/// The address of `producer`'s librdkafka handle, for its [`Generation`].
fn handle<C: ProducerContext>(producer: &ThreadedProducer<C>) -> usize {
    producer.client().native_ptr() as usize
}

/// Without the `test-hooks` feature there is no hook: nothing to inject.
#[cfg(not(feature = "test-hooks"))]
pub fn inject_fatal<C: ProducerContext>(_producer: &ThreadedProducer<C>) {}

/// Raises a fatal error in `producer` as librdkafka's own test hook does
/// (`rd_kafka_test_fatal_error`), to test what follows one. Only called when a
/// `HOTDOG_TEST_*_FATAL_AFTER` variable asks for it ([`TestHook`]).
#[cfg(feature = "test-hooks")]
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
/// variable, only in a build with the `test-hooks` feature (see README, "Testing hooks").
#[derive(Debug)]
pub struct TestHook {
    after: Option<u64>,
    count: AtomicU64,
}

impl TestHook {
    /// The hook the variable `name` asks for, if any.
    pub fn from_env(name: &str) -> TestHook {
        let after = if cfg!(feature = "test-hooks") {
            std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
        } else {
            None
        };
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

/// Gives memory that is free inside glibc's heaps back to the system, every few seconds, on a
/// thread of its own: without it, what thousands of connections used stays in the process after
/// they close (`dev/idle-connections.py` measures it).
pub fn trim_memory() {
    let _ = std::thread::Builder::new()
        .name("trim".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_secs(5));
            // SAFETY: malloc_trim only works on glibc's own free lists; it takes no pointers.
            unsafe {
                libc::malloc_trim(0);
            }
        });
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

    /// A reload asks for new producers when the settings changed, or what a file they name
    /// holds (a rotated key, certificate or CA), and not otherwise.
    #[test]
    fn settings_change_with_the_conf_or_the_files_it_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca, key) = (dir.path().join("ca.pem"), dir.path().join("client.key"));
        std::fs::write(&ca, "first CA").expect("write");
        std::fs::write(&key, "first key").expect("write");
        let text = |p: &std::path::Path| p.display().to_string();
        let base = conf(&[
            ("bootstrap.servers", "b:9092"),
            ("ssl.ca.location", &text(&ca)),
            ("ssl.key.location", &text(&key)),
        ]);
        let settings = Settings::new(&base);
        assert!(!settings.update(&base), "nothing changed");
        std::fs::write(&ca, "second CA").expect("write");
        assert!(settings.update(&base), "the CA file was replaced");
        assert!(!settings.update(&base), "and read once");
        std::fs::remove_file(&key).expect("remove");
        assert!(settings.update(&base), "the key is gone");
        let mut other = base.clone();
        other.insert("linger.ms".into(), "20".into());
        assert!(settings.update(&other), "a new setting");
        assert_eq!(
            settings.client_config().get("linger.ms"),
            Some("20"),
            "new producers are made with it"
        );
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

    /// A record's payload as the delivery report read it, and what came with it.
    struct Seen {
        same_memory: bool,
        payload: Vec<u8>,
        key: Option<Vec<u8>>,
        headers: Vec<(String, Vec<u8>)>,
        delivered: bool,
    }

    /// A tag that owns its payload and counts how many tags are alive.
    struct Probe {
        payload: bytes::Bytes,
        alive: Arc<AtomicUsize>,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl OwnsPayload for Probe {
        fn payload(&self) -> &[u8] {
            &self.payload
        }
    }

    #[derive(Default)]
    struct Reports(Mutex<Vec<Seen>>);

    impl rdkafka::ClientContext for Reports {}

    impl ProducerContext for Reports {
        type DeliveryOpaque = Box<Probe>;

        fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, probe: Box<Probe>) {
            use rdkafka::message::{Headers as _, Message as _};
            let m = match result {
                Ok(m) | Err((_, m)) => m,
            };
            let payload = m.payload().unwrap_or_default();
            let headers = m.headers().map_or(Vec::new(), |h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            });
            let seen = Seen {
                same_memory: payload.as_ptr() == probe.payload.as_ptr(),
                payload: payload.to_vec(),
                key: m.key().map(<[u8]>::to_vec),
                headers,
                delivered: result.is_ok(),
            };
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
        }
    }

    #[test]
    fn a_lent_payload_is_read_in_place_until_the_delivery_report_gives_the_tag_back() {
        // librdkafka's own mock broker takes the record after linger.ms; until then one
        // record fills the queue, so a second is refused.
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap_or_else(|e| panic!("{e}"));
        cluster
            .create_topic("t", 1, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        let producer: ThreadedProducer<Reports> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "500")
            .set("queue.buffering.max.messages", "1")
            .create_with_context(Reports::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let alive = Arc::new(AtomicUsize::new(0));
        let probe = |text: &'static [u8]| {
            alive.fetch_add(1, Ordering::SeqCst);
            Box::new(Probe {
                payload: bytes::Bytes::from(text.to_vec()),
                alive: alive.clone(),
            })
        };
        let headers: Vec<(Name, String)> = vec![("a".into(), "1".into()), ("b".into(), "".into())];
        let envelope = Envelope {
            topic: "t",
            key: Some("k"),
            headers: &headers,
            extra: None,
            timestamp: 1_700_000_000_123,
        };
        let sent = send(&producer, &envelope, Payload::Lent, probe(b"first payload"));
        assert!(sent.is_ok(), "{:?}", sent.err().map(|e| e.0));

        // The queue is full: the tag comes back with its payload.
        let refused = send(&producer, &envelope, Payload::Lent, probe(b"second"));
        let (error, back) = refused
            .err()
            .unwrap_or_else(|| panic!("the queue took two"));
        assert_eq!(
            error.rdkafka_error_code(),
            Some(rdkafka::error::RDKafkaErrorCode::QueueFull)
        );
        assert_eq!(&back.payload[..], b"second");
        drop(back);
        // A topic librdkafka cannot name: refused before librdkafka sees it.
        let bad = Envelope {
            topic: "t\0",
            ..envelope
        };
        let refused = send(&producer, &bad, Payload::Lent, probe(b"third"));
        assert!(matches!(refused, Err((KafkaError::Nul(_), ref p)) if &p.payload[..] == b"third"));
        drop(refused);

        // librdkafka holds the first tag, and so its payload, until its delivery report.
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        let reported = || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while alive.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(alive.load(Ordering::SeqCst), 0, "no delivery report");
        };
        reported();
        // A payload librdkafka copies is its own: the tag holds none.
        let sent = send(&producer, &envelope, Payload::Copied(b"copied"), probe(b""));
        assert!(sent.is_ok(), "{:?}", sent.err().map(|e| e.0));
        reported();
        let seen = std::mem::take(
            &mut *producer
                .context()
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        assert_eq!(seen.len(), 2);
        assert!(seen[1].delivered && !seen[1].same_memory);
        assert_eq!(seen[1].payload, b"copied");
        let seen = &seen[0];
        assert!(seen.delivered);
        assert!(seen.same_memory, "librdkafka read a copy of the payload");
        assert_eq!(seen.payload, b"first payload");
        assert_eq!(seen.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            seen.headers,
            [
                ("a".to_string(), b"1".to_vec()),
                ("b".to_string(), Vec::new())
            ]
        );

        // The broker has what the envelope said, and the payload.
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "lent")
            .create()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut partitions = rdkafka::TopicPartitionList::new();
        let _ = partitions.add_partition_offset("t", 0, rdkafka::Offset::Beginning);
        rdkafka::consumer::Consumer::assign(&consumer, &partitions)
            .unwrap_or_else(|e| panic!("{e}"));
        let read = consumer
            .poll(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("nothing to read"))
            .unwrap_or_else(|e| panic!("{e}"));
        use rdkafka::message::{Headers as _, Message as _};
        assert_eq!(read.payload(), Some(&b"first payload"[..]));
        assert_eq!(read.key(), Some(&b"k"[..]));
        assert_eq!(read.timestamp().to_millis(), Some(1_700_000_000_123));
        assert_eq!(read.headers().map(|h| h.count()), Some(2));
        let read = consumer
            .poll(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("the copied record is not there"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.payload(), Some(&b"copied"[..]));
    }
}
