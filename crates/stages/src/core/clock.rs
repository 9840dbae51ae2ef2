//! The clock lines are stamped with when they are read, and deadlines.

use std::time::{SystemTime, UNIX_EPOCH};

/// The earlier of two deadlines, each with what passing it means; the first one on a tie.
pub fn earliest<K: Ord, T>(a: Option<(K, T)>, b: Option<(K, T)>) -> Option<(K, T)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Milliseconds since the epoch, by [`now`].
pub fn now_ms() -> i64 {
    epoch_ms(now())
}

/// The time lines are stamped with when they are read: the system clock.
#[cfg(not(feature = "test-hooks"))]
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// The time lines are stamped with when they are read: the system clock. With the
/// `test-hooks` feature a test hook moves it: with `HOTDOG_TEST_CLOCK` set to an RFC 3339 time,
/// the clock reads that time when first asked and runs on from there (the integration tests use
/// it to read lines across New Year).
#[cfg(feature = "test-hooks")]
pub fn now() -> SystemTime {
    static SHIFT: std::sync::OnceLock<Option<(bool, std::time::Duration)>> =
        std::sync::OnceLock::new();
    let real = SystemTime::now();
    let shift = SHIFT.get_or_init(|| {
        let target = humantime::parse_rfc3339(&std::env::var("HOTDOG_TEST_CLOCK").ok()?).ok()?;
        Some(match target.duration_since(real) {
            Ok(ahead) => (true, ahead),
            Err(behind) => (false, behind.duration()),
        })
    });
    match shift {
        None => real,
        Some((true, by)) => real + *by,
        Some((false, by)) => real - *by,
    }
}

/// `t` in milliseconds since the epoch.
pub fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time of acknowledgement for delivery reports. Records read in the same millisecond are
/// acknowledged together, a run of reports after another: the run shares one clock reading (a
/// clock reading costs more than the rest of a report), renewed at least every
/// [`AckClock::REUSE`] reports.
#[derive(Default)]
pub struct AckClock {
    /// The read time of the last report, the clock reading for it, and how often it was reused.
    last: std::sync::Mutex<(i64, i64, u32)>,
}

impl AckClock {
    pub const REUSE: u32 = 64;

    pub fn now(&self, read_ms: i64) -> i64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *last {
            (read, now, uses) if *read == read_ms && *uses < Self::REUSE => {
                *uses += 1;
                *now
            }
            _ => {
                let now = now_ms();
                *last = (read_ms, now, 0);
                now
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_clock_shares_a_reading_within_a_run_and_renews_it() {
        use std::time::Duration;
        let clock = AckClock::default();
        let first = clock.now(1000);
        std::thread::sleep(Duration::from_millis(3));
        // The same read time: the reading is shared, up to REUSE more times.
        for _ in 0..AckClock::REUSE {
            assert_eq!(clock.now(1000), first);
        }
        // Then it is renewed even within the run...
        let renewed = clock.now(1000);
        assert!(renewed > first, "{renewed} > {first}");
        std::thread::sleep(Duration::from_millis(3));
        // ...and at once when the read time changes.
        assert!(clock.now(1001) > renewed);
    }
}
