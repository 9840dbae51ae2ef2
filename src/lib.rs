//! hotdog: syslog over TCP in, routed and rewritten by YAML rules, out to Kafka.
//!
//! The pipeline, one module per stage: [`framing`] → [`syslog`] → [`rules`] (pure, no I/O), then
//! [`connection`] → [`publisher`] (I/O), wired by `main.rs` from a [`config::Config`].
#![forbid(unsafe_code)]
#![deny(unused_must_use)]

pub mod config;
pub mod connection;
pub mod deadletter;
pub mod framing;
pub mod listener;
pub mod metrics;
pub mod publisher;
pub mod rules;
pub mod runtime;
pub mod shutdown;
pub mod status;
pub mod syslog;
pub mod template;
pub mod testmode;
pub mod tls;
