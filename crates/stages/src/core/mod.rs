//! The types every stage shares: the [`Origin`] of a line (its connection's facts), a
//! [`Record`] for Kafka in its payload [`Block`], the [`Batch`]es sessions hand to the
//! publisher, a [`DeadLetter`], the [`Ack`] a record carries for a sender that waits to hear it
//! is safe, and the clock lines are stamped with. No I/O; imports no stage.

use std::borrow::Cow;

use bytes::Bytes;

mod ack;
mod block;
mod clock;

pub use ack::{Ack, Awaited, Ledger, Outcome, Settled, Standing, Watch};
pub use block::{blocks_alive, packed, packed_with, Block, LENT_BLOCKS_MAX};
pub use clock::{earliest, epoch_ms, now, now_ms, AckClock};

/// `forward`'s `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordFormat {
    /// The action output (or the message body) as bytes.
    #[default]
    Raw,
    Json,
    OtlpJson,
    OtlpProto,
}

impl RecordFormat {
    pub const NAMES: [&'static str; 4] = ["raw", "json", "otlp_json", "otlp_proto"];

    pub fn from_name(name: &str) -> Option<RecordFormat> {
        Some(match name {
            "raw" => RecordFormat::Raw,
            "json" => RecordFormat::Json,
            "otlp_json" => RecordFormat::OtlpJson,
            "otlp_proto" => RecordFormat::OtlpProto,
            _ => return None,
        })
    }
}

/// One message for Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: Name,
    pub key: Option<String>,
    /// The bytes Kafka gets: text, or the original bytes of a body that was not UTF-8, or a
    /// protobuf message (`format: otlp_proto`). A connection's records have theirs [`packed`]
    /// with the payloads its thread made before.
    pub payload: Bytes,
    /// The block `payload` was [`packed`] in, if it was.
    pub block: Block,
    pub headers: Vec<(Name, String)>,
    /// When the line was read (ms since the epoch), the Kafka message timestamp; 0 for unset.
    pub read_ms: i64,
    /// For a message whose sender waits for its acknowledgement (RELP): settled once Kafka
    /// acknowledged the record or it was written as a dead letter. Empty for every other.
    pub ack: Ack,
}

impl Record {
    /// The payload as text (invalid UTF-8 replaced), for logs, tests and `-t`.
    pub fn payload_text(&self) -> Cow<'_, str> {
        text_of(&self.payload)
    }
}

/// `bytes` as text: borrowed when they are UTF-8, which `std::str::from_utf8` checks a word at a
/// time; only bytes that are not are decoded one by one, with each invalid sequence replaced,
/// into an owned string. So `Cow::Owned` says the bytes were not UTF-8.
pub fn text_of(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// A topic or header name: borrowed when it comes from the configuration (see
/// [`crate::route::template::forever`]), owned when it was rendered.
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
    /// A record that shutdown had no time left to deliver. Kafka does not have it, so a sender
    /// waiting for it is never told it is safe: its share is withheld here, whatever becomes of
    /// the letter. A record the spool keeps stays there (see [`DeadLetter::stays_in_spool`]).
    pub fn shutdown_timeout(mut record: Record) -> DeadLetter {
        record.ack.hold_sender();
        DeadLetter {
            record,
            reason: SHUTDOWN_TIMEOUT.into(),
            file_only: true,
        }
    }
}

impl DeadLetter {
    /// True for a record that shutdown had no time left to deliver and that the spool keeps:
    /// it is sent after the next start, not written as a dead letter.
    pub fn stays_in_spool(&self) -> bool {
        self.reason == SHUTDOWN_TIMEOUT && self.record.ack.is_spooled()
    }
}

/// The reason of a dead letter that shutdown had no time left to deliver.
pub const SHUTDOWN_TIMEOUT: &str = "shutdown_timeout";

/// Facts about the connection a message came from, available to templates.
#[derive(Debug, Default, Clone)]
pub struct Origin {
    /// The sender's `address:port`.
    pub peer_addr: Option<String>,
    /// The `address:port` of the listener the message came in on.
    pub listener: Option<std::sync::Arc<str>>,
    /// The subject common name of a verified TLS client certificate.
    pub tls_client_cn: Option<String>,
    /// Its subject alternative DNS names, comma-separated.
    pub tls_client_san: Option<String>,
    /// When the line was read (a fixed time in rule tests): what `{{iso8601}}` renders and
    /// what structured records say; `None`: the time the template renders.
    pub clock: Option<std::time::SystemTime>,
    /// The listener's `timezone`, for RFC 3164 timestamps (which have none); `None`: UTC.
    pub zone: Option<jiff::tz::TimeZone>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_borrows_utf8_and_owns_only_the_replaced_text_of_other_bytes() {
        assert!(matches!(text_of("é ok".as_bytes()), Cow::Borrowed("é ok")));
        let replaced = text_of(b"a\xffb\xc3");
        assert!(matches!(&replaced, Cow::Owned(_)), "{replaced:?}");
        assert_eq!(replaced, "a\u{fffd}b\u{fffd}");
    }
}
