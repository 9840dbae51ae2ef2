//! hotdog: syslog over TCP, TLS, RELP and UDP in, routed and rewritten by YAML rules, out to Kafka.
//!
//! The pure stages (framing, parsing, routing, encoding, the configuration model) are the
//! `hotdog-stages` crate. This crate adds what does I/O, one folder per stage, data flowing down
//! the list, all on [`base`] (counters, shutdown, throttled logs, the runtime): [`listen`] (bind, accept, limits, PROXY, TLS, UDP) → [`session`] (a connection's
//! bytes through frame → parse → route → encode into batches) → [`publish`] (the outbox, the
//! producer, delivery reports, dead letters) → Kafka. [`control`] starts and stops them all from
//! a configuration and carries out what a reload changes; [`offline`] runs lines through the rules
//! without a broker (`hotdog -t`, `hotdog test`); `main.rs` only parses the command line and maps
//! results to exit codes.
// Every call into C is in `publish::producer` (librdkafka's, and glibc's malloc_trim): the one
// module allowed unsafe code. Nothing else is unsafe (main.rs and hotdog-stages forbid it).
#![deny(unsafe_code)]
#![deny(unused_must_use)]

pub mod base;
pub mod cli;
pub mod control;
pub mod listen;
pub mod offline;
pub mod publish;
pub mod session;
pub mod spool;
