//! The types every stage after the rules shares: a [`Record`] for Kafka, the [`Batch`]es
//! connections hand to the publisher, a [`DeadLetter`], and the clock records are stamped with.
//! No I/O; below every stage that uses it.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

/// One message for Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: Name,
    pub key: Option<String>,
    /// The bytes Kafka gets: text, or the original bytes of a body that was not UTF-8, or a
    /// protobuf message (`format: otlp_proto`).
    pub payload: Vec<u8>,
    pub headers: Vec<(Name, String)>,
    /// When the line was read (ms since the epoch), the Kafka message timestamp; 0 for unset.
    pub read_ms: i64,
}

impl Record {
    /// The payload as text (invalid UTF-8 replaced), for logs, tests and `-t`.
    pub fn payload_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }
}

/// A topic or header name: borrowed when it comes from the configuration (see
/// [`crate::template::forever`]), owned when it was rendered.
pub type Name = Cow<'static, str>;

/// What a connection hands to the publisher at once.
pub type Batch = Vec<Record>;

/// The most records in one [`Batch`].
pub const BATCH_MAX: usize = 512;

/// One record that will not reach its topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub record: Record,
    /// Why, as it appears in `kafka.dead_letter.<reason>`.
    pub reason: String,
    /// True when Kafka cannot be used for it (the dead-letter topic refused it, or shutdown
    /// ran out of time): straight to the file.
    pub file_only: bool,
}

impl DeadLetter {
    /// A record that shutdown had no time left to deliver.
    pub fn shutdown_timeout(record: Record) -> DeadLetter {
        DeadLetter {
            record,
            reason: SHUTDOWN_TIMEOUT.into(),
            file_only: true,
        }
    }
}

/// The reason of a dead letter that shutdown had no time left to deliver.
pub const SHUTDOWN_TIMEOUT: &str = "shutdown_timeout";

/// Milliseconds since the epoch, by [`now`].
pub fn now_ms() -> i64 {
    epoch_ms(now())
}

/// The time lines are stamped with when they are read: the system clock. A test hook moves it:
/// with `HOTDOG_TEST_CLOCK` set to an RFC 3339 time, the clock reads that time when first
/// asked and runs on from there (the integration tests use it to read lines across New Year;
/// never set it in production).
pub fn now() -> SystemTime {
    static SHIFT: std::sync::OnceLock<Option<(bool, std::time::Duration)>> =
        std::sync::OnceLock::new();
    let real = SystemTime::now();
    let shift = SHIFT.get_or_init(|| {
        let target = humantime::parse_rfc3339(&std::env::var("HOTDOG_TEST_CLOCK").ok()?).ok()?;
        Some(match target.duration_since(real) {
            Ok(ahead) => (true, ahead),
            Err(behind) => (false, behind.duration()),
        })
    });
    match shift {
        None => real,
        Some((true, by)) => real + *by,
        Some((false, by)) => real - *by,
    }
}

/// `t` in milliseconds since the epoch.
pub fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
