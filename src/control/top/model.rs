//! What `hotdog top` shows, worked out from two readings of `/stats` a second apart: rates,
//! latency percentiles over that second, and the rows of each table, sorted and filtered. No
//! I/O and no terminal: [`super::view`] draws a [`Screen`].

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Deserialize;

use crate::control::status::Latency;

/// One answer of `GET /stats`, and when it came.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    pub version: String,
    pub stats: BTreeMap<String, i64>,
    pub latency: Latency,
    /// The first line of `/health` (`ok: ...` or `unavailable: ...`), when it was read.
    pub health: String,
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    version: String,
    stats: BTreeMap<String, i64>,
    /// Absent from a hotdog older than `hotdog top`: no percentiles then.
    #[serde(default)]
    latency_ms: Latency,
}

impl Reading {
    /// Reads the body of `/stats`.
    pub fn parse(body: &[u8], at: Instant) -> Result<Reading, String> {
        let b: Body = serde_json::from_slice(body)
            .map_err(|e| format!("/stats is not what hotdog answers: {e}"))?;
        Ok(Reading {
            at,
            version: b.version,
            stats: b.stats,
            latency: b.latency_ms,
            health: String::new(),
        })
    }

    fn get(&self, name: &str) -> i64 {
        self.stats.get(name).copied().unwrap_or(0)
    }

    /// Every value named `<prefix><label><suffix>`, by label.
    fn family<'a>(
        &'a self,
        prefix: &'a str,
        suffix: &'a str,
    ) -> impl Iterator<Item = (&'a str, i64)> + 'a {
        self.stats
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter_map(move |(k, v)| {
                let label = k[prefix.len()..].strip_suffix(suffix)?;
                (!label.is_empty()).then_some((label, *v))
            })
    }
}

/// How the tables are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Busiest first, by the rate over the last second.
    #[default]
    Rate,
    /// Largest total since start first.
    Total,
    /// By name.
    Name,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Rate => Sort::Total,
            Sort::Total => Sort::Name,
            Sort::Name => Sort::Rate,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sort::Rate => "rate",
            Sort::Total => "total",
            Sort::Name => "name",
        }
    }
}

/// A key the operator pressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
}

/// What the operator chose: the order, the filter, and whether the filter is being typed.
#[derive(Debug, Default)]
pub struct Choice {
    pub sort: Sort,
    /// Only rows whose name contains this.
    pub filter: String,
    pub editing: bool,
}

impl Choice {
    /// Takes a key; true when it asks to quit. `s` changes the order; `/` starts typing a
    /// filter, Enter keeps it, Esc drops it; `q` (or Esc when not typing) quits.
    pub fn key(&mut self, key: Key) -> bool {
        if self.editing {
            match key {
                Key::Char(c) => self.filter.push(c),
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Enter => self.editing = false,
                Key::Esc => {
                    self.filter.clear();
                    self.editing = false;
                }
            }
            return false;
        }
        match key {
            Key::Char('q') | Key::Esc => return true,
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            _ => {}
        }
        false
    }
}

/// One row of a table: a name, its rate over the last second and its total since start; topics
/// also have what Kafka acknowledged per second and what was dead-lettered.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub rate: f64,
    pub total: i64,
    pub out_rate: Option<f64>,
    pub dead: Option<i64>,
}

/// The spool, when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Spool {
    pub records: i64,
    pub bytes: i64,
    pub oldest_seconds: i64,
    pub full: i64,
}

/// Everything one refresh shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Screen {
    pub version: String,
    pub health: String,
    pub generation: i64,
    pub reload_failed: i64,
    pub lines_rate: f64,
    pub delivered_rate: f64,
    pub in_flight: i64,
    pub connections: i64,
    pub relp_sessions: i64,
    pub outbox: i64,
    pub librdkafka: i64,
    /// Line read → Kafka acknowledgement over the last second, in ms; `None` when nothing was
    /// acknowledged in it.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub spool: Option<Spool>,
    pub listeners: Vec<Row>,
    pub rules: Vec<Row>,
    pub topics: Vec<Row>,
    /// What was lost, refused, dead-lettered or left unrouted, by reason: only those that
    /// happened, never filtered.
    pub losses: Vec<Row>,
}

/// The counters that say something was lost, refused or set aside, and the families of them.
/// Dead letters are listed by reason, not their total as well.
const LOSSES: [&str; 17] = [
    "lines.unrouted",
    "quota.dropped",
    "lines.truncated",
    "lines.invalid_utf8",
    "udp.dropped",
    "udp.kernel_dropped",
    "kafka.producer.error",
    "dead_letter_file.write_failed",
    "tap.dropped",
    "tls.handshake_failed",
    "tls.handshake_timeout",
    "connections.idle_timeout",
    "relp.refused",
    "relp.unacknowledged",
    "spool.corrupt",
    "spool.full",
    "status.refused",
];
const LOSS_FAMILIES: [&str; 4] = [
    "kafka.dead_letter.",
    "connections.refused.",
    "error.",
    "quota.dropped_by.",
];

/// What `now` shows, with rates against `before` (none on the first reading).
pub fn screen(before: Option<&Reading>, now: &Reading, choice: &Choice) -> Screen {
    let seconds = before
        .map(|b| now.at.saturating_duration_since(b.at).as_secs_f64())
        .filter(|s| *s > 0.0);
    let rate = |name: &str, total: i64| -> f64 {
        match (before, seconds) {
            (Some(b), Some(s)) => (total - b.get(name)).max(0) as f64 / s,
            _ => 0.0,
        }
    };
    let row = |key: &str, label: &str, total: i64| Row {
        name: label.to_string(),
        rate: rate(key, total),
        total,
        out_rate: None,
        dead: None,
    };
    let listeners = now
        .family("listener.", ".lines")
        .map(|(l, v)| row(&format!("listener.{l}.lines"), l, v))
        .collect();
    let rules = now
        .family("rules.", ".matched")
        .map(|(r, v)| row(&format!("rules.{r}.matched"), r, v))
        .collect();
    let topics = now
        .family("kafka.submitted.", "")
        .map(|(t, v)| {
            let delivered = format!("kafka.delivered.{t}");
            Row {
                out_rate: Some(rate(&delivered, now.get(&delivered))),
                dead: Some(now.get(&format!("kafka.dead_lettered.{t}"))),
                ..row(&format!("kafka.submitted.{t}"), t, v)
            }
        })
        .collect();
    let mut losses: Vec<Row> = LOSSES
        .iter()
        .map(|name| row(name, name, now.get(name)))
        .chain(LOSS_FAMILIES.iter().flat_map(|prefix| {
            now.family(prefix, "")
                .map(|(l, v)| {
                    let name = format!("{prefix}{l}");
                    row(&name, &name, v)
                })
                .collect::<Vec<_>>()
        }))
        .filter(|r| r.total > 0)
        .collect();
    sort(&mut losses, Sort::Total);
    let spooled = now.get("spool.written") > 0 || now.get("spool.bytes") > 0;
    Screen {
        version: now.version.clone(),
        health: now.health.clone(),
        generation: now.get("config.generation"),
        reload_failed: now.get("config.reload_failed"),
        lines_rate: rate("lines", now.get("lines")),
        delivered_rate: rate("kafka.delivered", now.get("kafka.delivered")),
        in_flight: now.get("lines.in_flight"),
        connections: now.get("connections"),
        relp_sessions: now.get("relp.sessions"),
        outbox: now.get("queue.channel"),
        librdkafka: now.get("queue.librdkafka"),
        p50_ms: percentile(before.map(|b| &b.latency), &now.latency, 0.50),
        p99_ms: percentile(before.map(|b| &b.latency), &now.latency, 0.99),
        spool: spooled.then(|| Spool {
            records: now.get("spool.records"),
            bytes: now.get("spool.bytes"),
            oldest_seconds: now.get("spool.oldest_age_seconds"),
            full: now.get("spool.full"),
        }),
        listeners: shown(listeners, choice),
        rules: shown(rules, choice),
        topics: shown(topics, choice),
        losses,
    }
}

/// The rows the filter keeps, in the chosen order.
fn shown(mut rows: Vec<Row>, choice: &Choice) -> Vec<Row> {
    rows.retain(|r| r.name.contains(choice.filter.as_str()));
    sort(&mut rows, choice.sort);
    rows
}

fn sort(rows: &mut [Row], by: Sort) {
    match by {
        Sort::Rate => rows.sort_by(|a, b| b.rate.total_cmp(&a.rate).then(a.name.cmp(&b.name))),
        Sort::Total => rows.sort_by(|a, b| b.total.cmp(&a.total).then(a.name.cmp(&b.name))),
        Sort::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
    }
}

/// The `q` quantile (0–1) of the latencies recorded between `before` and `now`, in ms,
/// interpolated within its bucket; `None` when nothing was recorded. Past the last bucket it is
/// that bucket's bound.
pub fn percentile(before: Option<&Latency>, now: &Latency, q: f64) -> Option<f64> {
    let base = |i: usize| before.and_then(|b| b.buckets.get(i)).map_or(0, |b| b.1);
    let count = now.count.saturating_sub(before.map_or(0, |b| b.count));
    if count == 0 {
        return None;
    }
    let target = q * count as f64;
    let mut lower = (0.0, 0.0); // (bound, records at most that slow)
    for (i, (bound, cumulative)) in now.buckets.iter().enumerate() {
        let seen = cumulative.saturating_sub(base(i)) as f64;
        if seen >= target {
            let within = seen - lower.1;
            let share = if within > 0.0 {
                (target - lower.1) / within
            } else {
                1.0
            };
            return Some(lower.0 + share * (*bound as f64 - lower.0));
        }
        lower = (*bound as f64, seen);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reading(at: Instant, stats: &[(&str, i64)], latency: Latency) -> Reading {
        Reading {
            at,
            version: "1.0.0".into(),
            stats: stats.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            latency,
            health: String::new(),
        }
    }

    fn latency(buckets: &[(u64, u64)], count: u64) -> Latency {
        Latency {
            buckets: buckets.to_vec(),
            count,
            sum: 0,
        }
    }

    #[test]
    fn rates_are_the_difference_over_the_time_between_two_readings() {
        let t = Instant::now();
        let before = reading(
            t,
            &[
                ("lines", 1000),
                ("listener.127.0.0.1:514.lines", 900),
                ("listener.0.0.0.0:6514.lines", 100),
                ("rules.errors.matched", 10),
                ("rules.rest.matched", 990),
                ("kafka.submitted.logs", 1000),
                ("kafka.delivered.logs", 800),
            ],
            Latency::default(),
        );
        let now = reading(
            t + Duration::from_secs(2),
            &[
                ("lines", 5000),
                ("listener.127.0.0.1:514.lines", 4900),
                ("listener.0.0.0.0:6514.lines", 100),
                ("rules.errors.matched", 410),
                ("rules.rest.matched", 4590),
                ("kafka.submitted.logs", 5000),
                ("kafka.delivered.logs", 4800),
                ("kafka.dead_lettered.logs", 3),
                ("kafka.dead_lettered", 3),
                ("kafka.dead_letter.msgsizetoolarge", 3),
                ("lines.unrouted", 1),
                ("udp.dropped", 0),
                ("spool.written", 5000),
                ("spool.bytes", 65536),
                ("queue.channel", 7),
            ],
            Latency::default(),
        );
        let s = screen(Some(&before), &now, &Choice::default());
        assert_eq!(s.lines_rate, 2000.0);
        assert_eq!(
            s.listeners
                .iter()
                .map(|r| (r.name.as_str(), r.rate, r.total))
                .collect::<Vec<_>>(),
            [("127.0.0.1:514", 2000.0, 4900), ("0.0.0.0:6514", 0.0, 100)]
        );
        assert_eq!(s.rules[0].name, "rest");
        assert_eq!(s.rules[0].rate, 1800.0);
        assert_eq!(s.rules[1].rate, 200.0);
        let logs = &s.topics[0];
        assert_eq!(
            (logs.rate, logs.out_rate, logs.dead),
            (2000.0, Some(2000.0), Some(3))
        );
        // Only what happened is listed, the largest first; a zero is left out, and dead
        // letters are counted once, by reason.
        let losses: Vec<_> = s.losses.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            losses,
            ["kafka.dead_letter.msgsizetoolarge", "lines.unrouted"]
        );
        assert_eq!(s.outbox, 7);
        assert_eq!(s.spool.as_ref().map(|s| s.bytes), Some(65536));
        // The first reading has totals and no rates.
        let first = screen(None, &now, &Choice::default());
        let rest = first
            .rules
            .iter()
            .find(|r| r.name == "rest")
            .map(|r| (r.rate, r.total));
        assert_eq!((first.lines_rate, rest), (0.0, Some((0.0, 4590))));
    }

    #[test]
    fn keys_sort_and_filter_the_tables() {
        let now = reading(
            Instant::now(),
            &[
                ("rules.errors.matched", 5),
                ("rules.rest.matched", 50),
                ("rules.audit.matched", 9),
            ],
            Latency::default(),
        );
        let names = |c: &Choice| -> Vec<String> {
            screen(None, &now, c)
                .rules
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        let mut c = Choice::default();
        assert!(!c.key(Key::Char('s')));
        assert_eq!(c.sort, Sort::Total);
        assert_eq!(names(&c), ["rest", "audit", "errors"]);
        c.key(Key::Char('s'));
        assert_eq!(names(&c), ["audit", "errors", "rest"]);
        for k in [
            Key::Char('/'),
            Key::Char('e'),
            Key::Char('r'),
            Key::Char('x'),
        ] {
            assert!(!c.key(k));
        }
        c.key(Key::Backspace);
        assert!(c.editing);
        assert_eq!(names(&c), ["errors"]);
        // While typing, `q` is a letter of the filter, not quit.
        assert!(!c.key(Key::Char('q')));
        c.key(Key::Backspace);
        c.key(Key::Enter);
        assert_eq!((c.editing, c.filter.as_str()), (false, "er"));
        assert_eq!(names(&c), ["errors"]);
        c.key(Key::Char('/'));
        c.key(Key::Esc);
        assert_eq!(names(&c).len(), 3);
        assert!(c.key(Key::Char('q')));
    }

    #[test]
    fn percentiles_are_those_of_the_last_second_interpolated_in_their_bucket() {
        // 100 records before; then 100 more: 50 at most 1 ms, 40 in (1, 5], 10 in (5, 10].
        let before = latency(&[(1, 100), (5, 100), (10, 100), (25, 100)], 100);
        let now = latency(&[(1, 150), (5, 190), (10, 200), (25, 200)], 200);
        assert_eq!(percentile(Some(&before), &now, 0.50), Some(1.0));
        let p99 = percentile(Some(&before), &now, 0.99).expect("p99");
        assert!((p99 - 9.5).abs() < 1e-9, "{p99}");
        // 90 of 100 within 1 ms: the median lies within the first bucket.
        let first = latency(&[(1, 90), (5, 100)], 100);
        assert_eq!(percentile(None, &first, 0.45), Some(0.5));
        // Nothing acknowledged in the second: no figure rather than a stale one.
        assert_eq!(percentile(Some(&now), &now, 0.5), None);
        // Slower than every bucket: the last bound.
        let slow = latency(&[(1, 0), (5, 0)], 10);
        assert_eq!(percentile(None, &slow, 0.5), Some(5.0));
    }

    #[test]
    fn a_body_from_stats_is_read_and_garbage_is_refused() {
        let body = br#"{"message":"hotdog is running","version":"1.0.0","stats":{"lines":3},
            "latency_ms":{"buckets":[[1,2],[5,3]],"count":3,"sum":4}}"#;
        let r = Reading::parse(body, Instant::now()).expect("reads");
        assert_eq!((r.get("lines"), r.latency.count), (3, 3));
        // A hotdog without the histogram in /stats: no percentiles, the rest works.
        let old = Reading::parse(br#"{"stats":{"lines":1}}"#, Instant::now()).expect("reads");
        assert_eq!(old.latency, Latency::default());
        assert!(Reading::parse(b"<html>", Instant::now())
            .expect_err("not json")
            .contains("/stats"));
    }
}
