//! What every I/O stage shares: the counters (one table, read by `/stats`, `/metrics` and
//! statsd), the shutdown signal every task holds, throttled logging, the async runtime, and the
//! taps (`hotdog tap`) the sessions offer what they route to.
//! Imports no other folder of this crate.

pub mod metrics;
pub mod runtime;
pub mod shutdown;
pub mod tap;
pub mod throttle;
