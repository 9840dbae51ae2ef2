//! The keys that dropped the most, without one counter per key: the Space-Saving algorithm
//! (Metwally, Agrawal, El Abbadi, 2005) keeps [`TRACKED`] counters; a new key takes the place
//! of the smallest and starts from its count, so a key that drops a lot is never missed, and a
//! count is at most that smallest count too high.

use std::collections::HashMap;
use std::sync::Arc;

/// Counters kept.
const TRACKED: usize = 64;
/// Keys reported.
pub const SHOWN: usize = 10;

#[derive(Debug, Default)]
pub struct TopN {
    counts: HashMap<Arc<str>, u64>,
}

impl TopN {
    pub fn add(&mut self, key: &Arc<str>, n: u64) {
        if let Some(c) = self.counts.get_mut(key) {
            *c += n;
            return;
        }
        let mut start = 0;
        if self.counts.len() >= TRACKED {
            let smallest = self
                .counts
                .iter()
                .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
                .map(|(k, c)| (k.clone(), *c));
            if let Some((k, c)) = smallest {
                self.counts.remove(&k);
                start = c;
            }
        }
        self.counts.insert(key.clone(), start + n);
    }

    /// The [`SHOWN`] largest, largest first (ties by key).
    pub fn top(&self) -> Vec<(Arc<str>, u64)> {
        let mut all: Vec<_> = self.counts.iter().map(|(k, c)| (k.clone(), *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(SHOWN);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_keys_stay_among_many_light_ones() {
        let mut t = TopN::default();
        let heavy: Arc<str> = "10.0.0.1".into();
        let other: Arc<str> = "10.0.0.2".into();
        for i in 0..10_000u64 {
            t.add(&heavy, 5);
            if i % 2 == 0 {
                t.add(&other, 3);
            }
            // A different light key each time: far more keys than counters.
            t.add(&format!("light-{i}").into(), 1);
        }
        let top = t.top();
        assert_eq!(top.len(), SHOWN);
        assert_eq!(top[0], (heavy.clone(), 50_000));
        assert_eq!(top[1].0, other);
        // Over-counted by at most the smallest counter's count when it took a place.
        assert!((15_000..=15_000 + 10_000 / TRACKED as u64 * 2).contains(&top[1].1));
        assert!(t.counts.len() <= TRACKED);
    }
}
