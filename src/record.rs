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

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    epoch_ms(SystemTime::now())
}

/// `t` in milliseconds since the epoch.
pub fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
