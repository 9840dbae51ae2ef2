//! What every I/O stage shares: the counters (one table, read by `/stats`, `/metrics` and
//! statsd), the shutdown signal every task holds, throttled logging, and the async runtime.
//! Imports no other folder of this crate.

pub mod metrics;
pub mod runtime;
pub mod shutdown;
pub mod throttle;
