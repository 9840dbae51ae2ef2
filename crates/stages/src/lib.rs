//! hotdog's pure stages: what happens to a line between the bytes a connection read and the
//! record handed to Kafka, with no I/O, no async runtime and no librdkafka. Data flows down
//! this list; no module reaches back into an earlier one:
//!
//! - [`core`]: the types every stage shares (record, payload blocks, acks, clock, origin).
//! - [`frame`]: bytes into frames: LF / octet-counted lines, RELP frames, the PROXY header.
//! - [`parse`]: a frame into a syslog [`parse::syslog::Message`] borrowing it; its time.
//! - [`route`]: the compiled rules and templates: a message in, what to send out.
//! - [`encode`]: what to send into a payload: raw, the JSON envelope, OTLP (JSON and protobuf).
//! - [`config`]: the configuration model and its located decoding, rules compiled at load.
//! - [`spool`]: the spool's on-disk format (segments of checksummed records), read back
//!   whatever damage it finds.
//!
//! The binary crate (`hotdog`) adds the listeners, sessions, the publisher and control.
#![forbid(unsafe_code)]
#![deny(unused_must_use)]

pub mod config;
pub mod core;
pub mod encode;
pub mod frame;
pub mod parse;
pub mod route;
pub mod spool;
