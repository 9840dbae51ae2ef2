//! Quotas: lines and bytes a second per sender (a listener's `quota`). Each key (a source
//! address, a TLS client, a template of the connection's facts) has a token bucket, shared by
//! every connection with that key. A frame over the quota either makes its connection wait
//! (TCP, TLS and RELP push back on that sender alone) or is dropped and counted.
//!
//! A listener's quota lives in a [`QuotaSlot`] that a reload replaces; each connection's
//! [`Meter`] notices between two frames and takes its bucket from the new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::base::metrics::lock;
use hotdog_stages::config::{Over, Quota};
use hotdog_stages::core::Origin;

/// At most this many keys are tracked per listener; senders past it share one bucket (and
/// are told so in the log once).
const KEYS_MAX: usize = 100_000;
/// The key of the bucket the senders past [`KEYS_MAX`] share.
const OVERFLOW_KEY: &str = "(keys past 100000)";

/// What a frame may do under its sender's quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Pass,
    /// Over the quota with `over: drop`.
    Drop,
    /// Passes, and then the connection waits this long before it reads more (`over: wait`).
    PassThenWait(Duration),
}

/// One key's tokens.
#[derive(Debug)]
pub struct Bucket(Mutex<Tokens>);

#[derive(Debug)]
struct Tokens {
    lines: f64,
    bytes: f64,
    at: Instant,
}

/// A quota's rates and bucket sizes, in the units buckets count.
#[derive(Debug, Clone, Copy)]
struct Rates {
    lines: Option<f64>,
    bytes: Option<f64>,
    burst: f64,
    over: Over,
}

impl Rates {
    fn of(q: &Quota) -> Rates {
        Rates {
            lines: q.lines.map(|l| l as f64),
            bytes: q.bytes.map(|b| b as f64),
            burst: q.burst.as_secs_f64(),
            over: q.over,
        }
    }

    fn full(&self, now: Instant) -> Bucket {
        Bucket(Mutex::new(Tokens {
            lines: self.lines.unwrap_or(0.0) * self.burst,
            bytes: self.bytes.unwrap_or(0.0) * self.burst,
            at: now,
        }))
    }
}

impl Bucket {
    /// Takes a frame of `len` bytes from the bucket at `now`.
    fn take(&self, rates: &Rates, len: usize, now: Instant) -> Verdict {
        let mut t = lock(&self.0);
        let elapsed = now.saturating_duration_since(t.at).as_secs_f64();
        t.at = t.at.max(now);
        if let Some(rate) = rates.lines {
            t.lines = (t.lines + rate * elapsed).min(rate * rates.burst);
        }
        if let Some(rate) = rates.bytes {
            t.bytes = (t.bytes + rate * elapsed).min(rate * rates.burst);
        }
        let len = len as f64;
        match rates.over {
            Over::Drop => {
                let lines_ok = rates.lines.is_none() || t.lines >= 1.0;
                // A frame longer than the whole burst passes when the bucket is full.
                let bytes_ok = rates
                    .bytes
                    .is_none_or(|rate| t.bytes >= len.min(rate * rates.burst));
                if !(lines_ok && bytes_ok) {
                    return Verdict::Drop;
                }
                t.lines -= 1.0;
                t.bytes -= len;
                Verdict::Pass
            }
            Over::Wait => {
                t.lines -= 1.0;
                t.bytes -= len;
                let owed = |tokens: f64, rate: Option<f64>| match rate {
                    Some(rate) if tokens < 0.0 => -tokens / rate,
                    _ => 0.0,
                };
                let wait = owed(t.lines, rates.lines).max(owed(t.bytes, rates.bytes));
                if wait > 0.0 {
                    Verdict::PassThenWait(Duration::from_secs_f64(wait))
                } else {
                    Verdict::Pass
                }
            }
        }
    }

    /// True when nobody else holds it and it has been untouched long enough to be full again:
    /// forgetting it changes nothing.
    fn idle(self: &Arc<Self>, burst: f64, now: Instant) -> bool {
        Arc::strong_count(self) == 1
            && now
                .saturating_duration_since(lock(&self.0).at)
                .as_secs_f64()
                >= burst
    }
}

/// One listener's quota in use, and its keys' buckets.
pub struct Quotas {
    quota: Quota,
    rates: Rates,
    buckets: Mutex<Keys>,
}

struct Keys {
    map: HashMap<Arc<str>, Arc<Bucket>>,
    /// The map is swept of idle buckets when it grows to this size.
    sweep_at: usize,
    /// Whether the log has said that keys passed [`KEYS_MAX`].
    warned: bool,
}

impl Quotas {
    pub fn new(quota: Quota) -> Quotas {
        Quotas {
            rates: Rates::of(&quota),
            quota,
            buckets: Mutex::new(Keys {
                map: HashMap::new(),
                sweep_at: 1024,
                warned: false,
            }),
        }
    }

    /// The bucket of `key`, made full on first use.
    fn bucket(&self, key: &str, listener: &str) -> (Arc<str>, Arc<Bucket>) {
        let now = Instant::now();
        let mut keys = lock(&self.buckets);
        if let Some((k, b)) = keys.map.get_key_value(key) {
            return (k.clone(), b.clone());
        }
        if keys.map.len() >= keys.sweep_at {
            let burst = self.rates.burst;
            keys.map.retain(|_, b| !b.idle(burst, now));
            keys.sweep_at = (keys.map.len() * 2).max(1024);
        }
        let key: Arc<str> = if keys.map.len() >= KEYS_MAX {
            if !keys.warned {
                keys.warned = true;
                log::warn!(
                    "{listener}: quota: more than {KEYS_MAX} keys at once; senders past them share \
                     one quota under the key `{OVERFLOW_KEY}`"
                );
            }
            OVERFLOW_KEY.into()
        } else {
            key.into()
        };
        let bucket = keys
            .map
            .entry(key.clone())
            .or_insert_with(|| Arc::new(self.rates.full(now)))
            .clone();
        (key, bucket)
    }
}

/// A listener's quota, replaced on reload.
#[derive(Default)]
pub struct QuotaSlot {
    current: Mutex<Option<Arc<Quotas>>>,
    generation: AtomicU64,
}

impl QuotaSlot {
    pub fn new(quota: Option<&Quota>) -> QuotaSlot {
        let slot = QuotaSlot::default();
        slot.set(quota);
        slot
    }

    /// Puts `quota` in use; the same quota as before keeps its buckets.
    pub fn set(&self, quota: Option<&Quota>) {
        let mut current = lock(&self.current);
        if current.as_ref().map(|q| &q.quota) == quota {
            return;
        }
        *current = quota.map(|q| Arc::new(Quotas::new(q.clone())));
        self.generation.fetch_add(1, Relaxed);
    }

    fn get(&self) -> (u64, Option<Arc<Quotas>>) {
        let current = lock(&self.current);
        (self.generation.load(Relaxed), current.clone())
    }
}

/// A connection's (or a UDP listener's) view of its quota: its key's bucket, and what it
/// dropped and waited since the last report.
pub struct Meter {
    slot: Arc<QuotaSlot>,
    generation: u64,
    /// The quota in use, the key and its bucket.
    bound: Option<(Arc<Quotas>, Arc<str>, Arc<Bucket>)>,
    /// Lines and bytes dropped since the last report.
    pub dropped: (u64, u64),
}

impl Meter {
    pub fn new(slot: Arc<QuotaSlot>) -> Meter {
        Meter {
            slot,
            // Never a slot's generation: the first frame binds.
            generation: u64::MAX,
            bound: None,
            dropped: (0, 0),
        }
    }

    /// The sender changed (a UDP datagram from another): the key may have too.
    pub fn sender_changed(&mut self) {
        if let Some((q, _, _)) = &self.bound {
            if q.quota.key.per_sender() {
                self.generation = u64::MAX;
            }
        }
    }

    /// What the quota says of a frame of `len` bytes from `origin`.
    pub fn take(&mut self, len: usize, origin: &Origin) -> Verdict {
        let generation = self.slot.generation.load(Relaxed);
        if generation != self.generation {
            self.bind(origin);
        }
        match &self.bound {
            None => Verdict::Pass,
            Some((q, _, bucket)) => {
                let verdict = bucket.take(&q.rates, len, Instant::now());
                if verdict == Verdict::Drop {
                    self.dropped.0 += 1;
                    self.dropped.1 += len as u64;
                }
                verdict
            }
        }
    }

    fn bind(&mut self, origin: &Origin) {
        let (generation, quotas) = self.slot.get();
        self.generation = generation;
        self.bound = quotas.map(|q| {
            let key = q.quota.key.of(origin);
            let listener = origin.listener.as_deref().unwrap_or("");
            let (key, bucket) = q.bucket(&key, listener);
            (q, key, bucket)
        });
    }

    /// The key of the drops counted since the last report, and those counts (zeroed).
    pub fn take_dropped(&mut self) -> Option<(Arc<str>, u64, u64)> {
        let (lines, bytes) = std::mem::take(&mut self.dropped);
        if lines == 0 {
            return None;
        }
        let key = self
            .bound
            .as_ref()
            .map_or_else(|| "".into(), |b| b.1.clone());
        Some((key, lines, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotdog_stages::config::{KeyPart, KeyVar, QuotaKey};

    fn quota(lines: Option<u64>, bytes: Option<u64>, over: Over) -> Quota {
        Quota {
            lines,
            bytes,
            burst: Duration::from_secs(1),
            key: QuotaKey {
                source: "source".into(),
                parts: vec![KeyPart::Var(KeyVar::Source)],
            },
            over,
        }
    }

    fn from(peer: &str) -> Origin {
        Origin {
            peer_addr: Some(peer.into()),
            ..Origin::default()
        }
    }

    #[test]
    fn drop_lets_the_rate_and_burst_through_and_refills_with_time() {
        let rates = Rates::of(&quota(Some(10), None, Over::Drop));
        let t0 = Instant::now();
        let b = rates.full(t0);
        let passed = (0..15)
            .filter(|_| b.take(&rates, 100, t0) == Verdict::Pass)
            .count();
        assert_eq!(passed, 10, "the burst: one second at 10 lines/s");
        // Half a second later, five more.
        let t1 = t0 + Duration::from_millis(500);
        let passed = (0..15)
            .filter(|_| b.take(&rates, 100, t1) == Verdict::Pass)
            .count();
        assert_eq!(passed, 5);
        // Never more than the burst, however long it waited.
        let t2 = t1 + Duration::from_secs(60);
        let passed = (0..30)
            .filter(|_| b.take(&rates, 100, t2) == Verdict::Pass)
            .count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn bytes_are_counted_and_a_frame_longer_than_the_burst_passes_a_full_bucket() {
        let rates = Rates::of(&quota(None, Some(1000), Over::Drop));
        let t0 = Instant::now();
        let b = rates.full(t0);
        assert_eq!(b.take(&rates, 600, t0), Verdict::Pass);
        assert_eq!(b.take(&rates, 600, t0), Verdict::Drop);
        assert_eq!(b.take(&rates, 400, t0), Verdict::Pass);
        let b = rates.full(t0);
        assert_eq!(b.take(&rates, 5000, t0), Verdict::Pass);
        assert_eq!(
            b.take(&rates, 1, t0 + Duration::from_secs(4)),
            Verdict::Drop
        );
        assert_eq!(
            b.take(&rates, 1, t0 + Duration::from_secs(5)),
            Verdict::Pass
        );
    }

    #[test]
    fn wait_passes_everything_and_says_how_long_the_debt_takes_to_pay() {
        let rates = Rates::of(&quota(Some(100), None, Over::Wait));
        let t0 = Instant::now();
        let b = rates.full(t0);
        for _ in 0..100 {
            assert_eq!(b.take(&rates, 10, t0), Verdict::Pass);
        }
        for n in 1..=50 {
            let Verdict::PassThenWait(d) = b.take(&rates, 10, t0) else {
                panic!("over the burst");
            };
            assert_eq!(d.as_millis(), n * 10, "10 ms a line at 100 lines/s");
        }
        // Paid back after the wait: the next line passes.
        assert_eq!(
            b.take(&rates, 10, t0 + Duration::from_millis(510)),
            Verdict::Pass
        );
    }

    #[test]
    fn senders_with_one_key_share_a_bucket_and_others_have_their_own() {
        let slot = Arc::new(QuotaSlot::new(Some(&quota(Some(5), None, Over::Drop))));
        let mut a1 = Meter::new(slot.clone());
        let mut a2 = Meter::new(slot.clone());
        let mut b = Meter::new(slot.clone());
        let (ao1, ao2, bo) = (from("10.0.0.1:1"), from("10.0.0.1:2"), from("10.0.0.2:1"));
        let pass = |m: &mut Meter, o: &Origin, n: usize| {
            (0..n).filter(|_| m.take(10, o) == Verdict::Pass).count()
        };
        assert_eq!(pass(&mut a1, &ao1, 3) + pass(&mut a2, &ao2, 5), 5);
        assert_eq!(pass(&mut b, &bo, 5), 5);
        assert_eq!(a2.take_dropped(), Some(("10.0.0.1".into(), 3, 30)));
        assert_eq!(a2.take_dropped(), None);
        // A UDP listener's one meter follows the sender.
        let mut udp = Meter::new(slot.clone());
        assert_eq!(pass(&mut udp, &from("10.0.0.3:9"), 6), 5);
        udp.sender_changed();
        assert_eq!(pass(&mut udp, &from("10.0.0.4:9"), 6), 5);
        // A reload that removes the quota lets everything through; one that puts the same
        // quota back starts from full buckets.
        slot.set(None);
        assert_eq!(pass(&mut b, &bo, 50), 50);
        slot.set(Some(&quota(Some(5), None, Over::Drop)));
        assert_eq!(pass(&mut b, &bo, 50), 5);
        // The same quota again changes nothing: the buckets stay as they are.
        slot.set(Some(&quota(Some(5), None, Over::Drop)));
        assert_eq!(pass(&mut b, &bo, 50), 0);
    }

    #[test]
    fn idle_buckets_are_forgotten_and_keys_are_bounded() {
        let q = Quotas::new(quota(Some(5), None, Over::Drop));
        let held = q.bucket("held", "l");
        for i in 0..3000 {
            let _ = q.bucket(&format!("k{i}"), "l");
        }
        // Buckets touched less than a burst ago are kept through sweeps (at 1024 and 2048),
        // however many.
        assert_eq!(lock(&q.buckets).map.len(), 3001);
        assert_eq!(lock(&q.buckets).sweep_at, 4096);
        let long_ago = Instant::now() - Duration::from_secs(2);
        for b in lock(&q.buckets).map.values() {
            lock(&b.0).at = long_ago;
        }
        // The next sweep is due.
        lock(&q.buckets).sweep_at = 3001;
        let _ = q.bucket("new", "l");
        let keys = lock(&q.buckets);
        assert_eq!(
            keys.map.len(),
            2,
            "only the held one and the new one remain"
        );
        assert!(keys.map.contains_key(&held.0));
    }
}
