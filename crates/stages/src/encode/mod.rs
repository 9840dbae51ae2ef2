//! What a forwarded record's payload is (`forward`'s `format`): the action output as it is
//! (`raw`), or a structured event around it for consumers that should not parse syslog again:
//! hotdog's JSON envelope (`json`, described by `schema/record-v1.json`), or an OpenTelemetry
//! `ExportLogsServiceRequest` (`otlp_json`, `otlp_proto`) as the Collector's Kafka receiver reads
//! it, with the attributes named as its syslog receiver names them. Pure: no I/O.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::core::{packed, packed_with, Ack, Block, Origin, Record, RecordFormat};
use crate::parse::syslog::{self, Message};
use crate::parse::time::{read_at, rfc5424_nanos, with_message_time, with_normalised_time};
use crate::route::Routed;

/// The version of the JSON envelope (`schema_version`); `schema/record-v1.json` describes it.
pub const SCHEMA_VERSION: u32 = 1;

/// What a structured record is made of.
pub struct Event<'a> {
    pub msg: &'a Message<'a>,
    pub origin: &'a Origin,
    /// The action output, or the message body when there was none.
    pub body: &'a str,
    /// True when the body is the message body as it came and that was not valid UTF-8 (`body`
    /// then has U+FFFD in place of what was not).
    pub invalid_utf8: bool,
}

impl Event<'_> {
    /// The body as bytes: the message body's own bytes when they were not valid UTF-8.
    #[inline]
    pub fn raw(&self) -> &[u8] {
        match self.msg.msg_bytes {
            Some(bytes) if self.invalid_utf8 => bytes,
            _ => self.body.as_bytes(),
        }
    }
}

/// The payload of a record in `format`, and the block it was packed in.
#[inline]
pub fn payload(format: RecordFormat, event: &Event<'_>) -> (Bytes, Block) {
    match format {
        RecordFormat::Raw => packed(event.raw()),
        RecordFormat::Json => written(|out| envelope(event, out)),
        RecordFormat::OtlpJson => json_bytes(&otlp::request(event), event),
        RecordFormat::OtlpProto => otlp::encode(event),
    }
}
/// The record for what the rules decided about `msg`: its payload encoded, stamped with when
/// the line was read, carrying `ack`.
#[inline]
pub fn record(routed: Routed, msg: &Message<'_>, origin: &Origin, ack: Ack) -> Record {
    let Routed {
        topic,
        key,
        headers,
        format,
        body,
    } = routed;
    let event = Event {
        msg,
        origin,
        invalid_utf8: body.is_none() && msg.msg_bytes.is_some(),
        body: body.as_deref().unwrap_or(msg.msg),
    };
    let (payload, block) = payload(format, &event);
    Record {
        topic,
        key,
        payload,
        block,
        headers,
        read_ms: origin.clock.map_or(0, crate::core::epoch_ms),
        ack,
    }
}
mod json;
pub mod otlp;

use json::*;

#[cfg(test)]
mod tests;
