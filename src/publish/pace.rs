//! How much the publisher lets librdkafka hold: about half a second of what Kafka acknowledges.
//!
//! librdkafka's queue (`queue.buffering.max.messages`, 50,000 by default) is first come, first
//! served. While the broker is fast it drains in milliseconds; while it is slow (far away,
//! overloaded, throttling) a full queue is seconds of waiting for every line behind it, and one
//! sender that floods fills it. So the publisher hands librdkafka only what Kafka acknowledges
//! in about [`HOLD`], and the rest waits in the outbox, where each connection waits its turn
//! for room (a flooder's large batch does not get in ahead of a quiet sender's line).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The time's worth of acknowledgements librdkafka may hold.
const HOLD: Duration = Duration::from_millis(500);
/// What librdkafka may always hold, whatever the pace: enough for a fast broker to show how
/// fast it is, and for a batch of every topic.
pub(super) const HELD_MIN: u64 = 4_096;
/// How often the pace is measured.
const SAMPLE: Duration = Duration::from_millis(100);

/// The pace of acknowledgements over the last second in which librdkafka held at least
/// [`HELD_MIN`] records (Kafka acknowledges a request's records at once, thousands together: a
/// shorter window sees bursts, not a pace; and while librdkafka holds little, acknowledgements
/// say how much came, not how fast the broker goes).
#[derive(Debug)]
pub(super) struct Pace(Mutex<Measure>);

#[derive(Debug)]
struct Measure {
    /// When each of the last [`SAMPLES`] samples was taken, and the acknowledgements by then.
    samples: std::collections::VecDeque<(Instant, u64)>,
    /// Acknowledgements a second over them; `None` before the first measure.
    rate: Option<f64>,
}

/// Samples kept: a second's worth.
const SAMPLES: usize = 10;

impl Pace {
    pub(super) fn new() -> Pace {
        Pace(Mutex::new(Measure {
            samples: std::collections::VecDeque::with_capacity(SAMPLES + 1),
            rate: None,
        }))
    }

    /// How many records librdkafka may hold now, `acked` being every acknowledgement so far.
    /// Asked only while it holds at least [`HELD_MIN`].
    pub(super) fn room(&self, acked: u64, now: Instant) -> u64 {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let last = m.samples.back().map(|s| s.0);
        match last {
            // Busy again after a while (or for the first time): the window starts again, and
            // the pace measured before holds meanwhile.
            None => m.samples.push_back((now, acked)),
            Some(at) if now.saturating_duration_since(at) > SAMPLE * 3 => {
                m.samples.clear();
                m.samples.push_back((now, acked));
            }
            Some(at) if now.saturating_duration_since(at) >= SAMPLE => {
                m.samples.push_back((now, acked));
                if m.samples.len() > SAMPLES + 1 {
                    m.samples.pop_front();
                }
                if let Some(&(first, before)) = m.samples.front() {
                    let elapsed = now.saturating_duration_since(first).as_secs_f64();
                    m.rate = Some(acked.saturating_sub(before) as f64 / elapsed);
                }
            }
            Some(_) => {}
        }
        match m.rate {
            // Nothing measured yet: librdkafka's own limit.
            None => u64::MAX,
            Some(rate) => ((rate * HOLD.as_secs_f64()) as u64).max(HELD_MIN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_holds_half_a_second_of_acknowledgements_and_never_less_than_the_minimum() {
        let t0 = Instant::now();
        let pace = Pace::new();
        // Nothing measured yet: no limit but librdkafka's.
        assert_eq!(pace.room(0, t0), u64::MAX);
        // 100,000 a second: room for 50,000.
        assert_eq!(pace.room(10_000, t0 + SAMPLE), 50_000);
        // Within a sample nothing changes.
        assert_eq!(pace.room(10_500, t0 + SAMPLE + SAMPLE / 2), 50_000);
        // Acknowledgements in bursts (8,000 every 400 ms: 20,000 a second) are measured over
        // the second, not by their bursts.
        let mut acked = 10_000;
        let mut room = 0;
        for i in 2..=30 {
            if i % 4 == 0 {
                acked += 8_000;
            }
            room = pace.room(acked, t0 + SAMPLE * i);
        }
        assert!((8_000..=12_000).contains(&room), "{room}");
        // A broker that is away: the minimum, within a second.
        for i in 31..=41 {
            room = pace.room(acked, t0 + SAMPLE * i);
        }
        assert_eq!(room, HELD_MIN);
        // Idle for a while (not asked), then busy again: the window starts again, and the
        // pace measured last holds until a new one is.
        let later = t0 + SAMPLE * 100;
        assert_eq!(pace.room(acked + 50_000, later), HELD_MIN);
        assert_eq!(pace.room(acked + 60_000, later + SAMPLE), 50_000);
    }
}
