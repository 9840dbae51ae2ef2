//! Logs that cannot flood. A warning that can happen once per line of input (a record Kafka
//! refused, a UDP batch dropped, a dead letter) goes through a [`Throttle`]: the first one in an
//! interval is logged, the rest are counted, and the count is logged once per interval (by
//! [`report_suppressed`], which the server calls on a timer and at shutdown) or with the next one
//! let through.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often each kind of repeated warning is logged at most.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// A record Kafka refused or librdkafka gave up on.
pub static KAFKA_REFUSED: Throttle = Throttle::new("records Kafka did not take");
/// A dead letter written to the dead-letter topic, or the topic refusing one.
pub static DEAD_LETTER: Throttle = Throttle::new("dead-letter messages");
/// UDP messages dropped with the queue full.
pub static UDP_DROPPED: Throttle = Throttle::new("UDP drop messages");
/// A UDP receive that failed.
pub static UDP_RECEIVE: Throttle = Throttle::new("UDP receive errors");
/// A TLS handshake that failed or timed out.
pub static TLS_HANDSHAKE: Throttle = Throttle::new("TLS handshake failures");

/// An accept that failed (out of file descriptors, most often).
pub static ACCEPT: Throttle = Throttle::new("accept failures");
/// A connection closed at once: a listener's or a source address's limit, the status server's.
pub static REFUSED: Throttle = Throttle::new("connections refused at a limit");
/// A PROXY protocol header refused (malformed, or from outside the trusted networks).
pub static PROXY: Throttle = Throttle::new("PROXY protocol headers refused");
/// A record sent to `global.kafka.topic` because the cap on distinct topics was reached.
pub static TOPICS: Throttle = Throttle::new("records over the topic cap");

/// librdkafka's errors about the cluster (all brokers down, ...).
pub static KAFKA_CLIENT: Throttle = Throttle::new("librdkafka errors");

/// A RELP session closed for a frame or command that breaks the protocol.
pub static RELP: Throttle = Throttle::new("RELP sessions refused");

/// Lines dropped over a quota.
pub static QUOTA: Throttle = Throttle::new("quota drop messages");

/// Every throttle, for [`report_suppressed`].
static ALL: [&Throttle; 12] = [
    &QUOTA,
    &KAFKA_CLIENT,
    &RELP,
    &KAFKA_REFUSED,
    &DEAD_LETTER,
    &UDP_DROPPED,
    &UDP_RECEIVE,
    &TLS_HANDSHAKE,
    &ACCEPT,
    &REFUSED,
    &PROXY,
    &TOPICS,
];

/// One kind of repeated warning.
#[derive(Debug)]
pub struct Throttle {
    /// What is counted, for the summary line ("12 more TLS handshake failures ...").
    what: &'static str,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When a message was last let through.
    last: Option<Instant>,
    /// Messages held back since then.
    suppressed: u64,
}

impl Throttle {
    pub const fn new(what: &'static str) -> Throttle {
        Throttle {
            what,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Logs `message` at `level` unless one was logged less than [`INTERVAL`] ago.
    pub fn log(&self, level: log::Level, message: fmt::Arguments<'_>) {
        if !log::log_enabled!(level) {
            return;
        }
        if let Some(held) = self.admit(Instant::now(), INTERVAL) {
            if held > 0 {
                log::log!(
                    level,
                    "{message} ({held} more {} in the last {}s)",
                    self.what,
                    INTERVAL.as_secs()
                );
            } else {
                log::log!(level, "{message}");
            }
        }
    }

    pub fn warn(&self, message: fmt::Arguments<'_>) {
        self.log(log::Level::Warn, message);
    }

    /// Whether a message at `now` is let through, and if so how many were held back before it.
    fn admit(&self, now: Instant, interval: Duration) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last {
            Some(last) if now.saturating_duration_since(last) < interval => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }

    /// The count held back so far, reset.
    fn take_suppressed(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut s.suppressed)
    }
}

/// Logs how many messages of each kind were held back since the last report.
pub fn report_suppressed() {
    for t in ALL {
        let n = t.take_suppressed();
        if n > 0 {
            log::warn!("{n} more {} in the last {}s", t.what, INTERVAL.as_secs());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_let_through_the_rest_counted_until_the_interval_ends() {
        let t = Throttle::new("things");
        let start = Instant::now();
        let every = Duration::from_secs(10);
        assert_eq!(t.admit(start, every), Some(0));
        for i in 1..=5 {
            assert_eq!(t.admit(start + Duration::from_secs(i), every), None);
        }
        // The next one after the interval carries the count of those held back.
        assert_eq!(t.admit(start + Duration::from_secs(10), every), Some(5));
        assert_eq!(t.admit(start + Duration::from_secs(11), every), None);
        // A report takes the count; it is not reported twice.
        assert_eq!(t.take_suppressed(), 1);
        assert_eq!(t.take_suppressed(), 0);
        assert_eq!(t.admit(start + Duration::from_secs(25), every), Some(0));
    }
}
