//! hotdog: syslog over TCP, TLS, RELP and UDP in, routed and rewritten by YAML rules, out to Kafka.
//!
//! The pipeline, one module per stage, data flowing one way: [`listener`] → [`connection`]
//! ([`framing`] or [`relp`] → [`syslog`] → [`rules`], pure, no I/O) → [`publisher`] (through its
//! [`publisher::Outbox`]) → Kafka, and [`deadletter`] for what Kafka will not take. [`record`]
//! holds the types the later stages share; [`server`] starts and stops them all from a
//! [`config::Config`] and carries out what a [`reload`] of it changes; `main.rs` only parses the command line and maps results to exit codes.
// Every call into C is in `producer` (librdkafka's, and glibc's malloc_trim): the one module
// allowed unsafe code. Nothing else is unsafe (and main.rs forbids it).
#![deny(unsafe_code)]
#![deny(unused_must_use)]

pub mod cli;
pub mod config;
pub mod connection;
pub mod deadletter;
pub mod format;
pub mod framing;
pub mod listener;
pub mod metrics;
#[allow(unsafe_code)]
pub mod producer;
pub mod proxy;
pub mod publisher;
pub mod record;
pub mod reload;
pub mod relp;
pub mod rules;
pub mod ruletest;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod syslog;
pub mod template;
pub mod testmode;
pub mod throttle;
pub mod tls;
