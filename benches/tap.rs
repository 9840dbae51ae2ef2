//! What an open `hotdog tap` costs a connection, in-process and on one core: the session's
//! work per line (framing, parsing, rules, the record, handing batches to the outbox) without a
//! tap, with a tap whose filter keeps nothing, and with the two taps of `dev/tap-cost.sh` that
//! keep 2% of the lines, by rule and by regex, and with a tap that keeps every line, at the
//! default rate of 1,000 a second; the records leave unsent, and each kept event is
//! then written as JSON, as the status server's thread writes it. The difference per line, over
//! hotdog's whole CPU time per line end to end (`dev/tap-cost.sh`'s runs without a tap), is
//! what tapping costs a connection; the end-to-end runs alone are too noisy to resolve 5%.
//!
//! The five are run in turn, round after round, each timed by the thread's own CPU time (a
//! busy neighbour on the machine slows wall time far more): it prints each one's median and
//! range per line, the median of the differences within a round, and the difference of the
//! fastest rounds (what a busy machine cannot make faster).
//!
//! `cargo bench --bench tap [-- ROUNDS]` (default 40)

use std::sync::Arc;
use std::time::Duration;

use hotdog::base::metrics::Metrics;
use hotdog::base::tap::{Filter, Taps, DEFAULT_RATE, MAX_CPU, MAX_RATE};
use hotdog::publish::{self, Polled};
use hotdog::session::{Pipeline, Shared};
use hotdog_stages::config::Config;
use hotdog_stages::core::Origin;
use hotdog_stages::route::Current;

const LINES: usize = 10_000;

/// The lines `dev/tap-cost.sh` sends.
fn lines() -> Vec<String> {
    (0..LINES)
        .map(|i| {
            format!(
                "<165>1 2024-05-01T12:00:00.123Z web{}.example.com app 1234 ID47 [ex@32473 iut=\"3\"] \
                 number {i} with seq={i} user login ok from 10.0.0.{}",
                i % 7,
                i % 255
            )
        })
        .collect()
}

/// This thread's CPU time so far.
fn cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to write.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    assert!(ok, "clock_gettime");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(40);
    let text =
        "global:\n  listen:\n    port: 1\n  kafka:\n    conf:\n      bootstrap.servers: b\n    \
                buffer: 100000\nrules:\n  - name: fifty\n    regex: 'number [0-9]*[05]0 with'\n    \
                actions:\n      - type: forward\n        topic: 'tapcost'\n  - regex: '.*'\n    \
                actions:\n      - type: forward\n        topic: 'tapcost'\n";
    let rules = || match Config::parse("bench.yml", text, |_| None) {
        Ok(c) => c.rules,
        Err(e) => panic!("the bench's configuration: {e}"),
    };
    let metrics = Metrics::new();
    let file = match publish::deadletter::start(None, metrics.clone()) {
        Ok(f) => f,
        Err(e) => panic!("dead-letter writer: {e}"),
    };
    let (outbox, inbox) = publish::outbox(100_000, file, false);
    let lines = lines();
    let filter = |pattern: &str| Filter {
        line: Some(regex_automata::meta::Regex::new(pattern).expect("regex")),
        ..Filter::default()
    };
    let cases: [(&str, Option<Filter>, u32); 5] = [
        ("no tap", None, 0),
        (
            "tap keeping nothing",
            Some(filter("no line has this")),
            MAX_RATE,
        ),
        (
            "tap keeping 2% by rule",
            Some(Filter {
                rule: Some("fifty".into()),
                ..Filter::default()
            }),
            MAX_RATE,
        ),
        (
            "tap keeping 2% by regex",
            Some(filter("number.[0-9]*[05]0.with")),
            MAX_RATE,
        ),
        (
            "tap keeping all, at 1,000 a second",
            Some(Filter::default()),
            DEFAULT_RATE,
        ),
    ];
    // Each case its own taps and pipeline, so that a tap is open only for its own.
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(name, filter, rate)| {
            let taps = Taps::new();
            let tap = filter.map(|f| taps.open(f, rate, MAX_CPU).expect("tap"));
            let shared = Arc::new(Shared {
                rules: Current::new(rules()),
                metrics: metrics.clone(),
                outbox: outbox.clone(),
                taps,
            });
            (name, Pipeline::new(shared, Origin::default()), tap)
        })
        .collect();
    let mut cases = cases;
    // ns per line, by case, one per round.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut kept = 0;
    // What the status server's thread writes the events into.
    let mut written = Vec::new();
    for round in 0..rounds + 2 {
        for (i, (_, pipeline, tap)) in cases.iter_mut().enumerate() {
            let start = cpu();
            for _ in 0..5 {
                for (n, line) in lines.iter().enumerate() {
                    // A read of 100 lines at a time, as `dev/tap-cost.sh` sends them.
                    if n % 100 == 0 {
                        pipeline.stamp();
                    }
                    pipeline.frame(line.as_bytes(), false);
                    if pipeline.batch_full() {
                        smol::block_on(pipeline.flush());
                    }
                }
                smol::block_on(pipeline.flush());
                // The records leave (unsent: each kept event is then written, as it is on
                // its delivery report), and the tap's client reads what was written.
                while let Polled::Batch(batch, _) = inbox.try_recv() {
                    drop(batch);
                }
                if let Some(tap) = tap {
                    while let Ok(event) = tap.events.try_recv() {
                        written.clear();
                        match event.settled() {
                            Some(outcome) => event.write(outcome, &mut written),
                            None => panic!("an event not settled"),
                        }
                        kept += 1;
                    }
                }
            }
            let took = cpu() - start;
            // The first two rounds warm up.
            if round >= 2 {
                times[i].push(took.as_nanos() as f64 / (5 * LINES) as f64);
            }
        }
    }
    for (i, (name, _, tap)) in cases.iter().enumerate() {
        if let Some(tap) = tap {
            assert!(tap.events.is_empty(), "an event left unwritten");
        }
        let mut t = times[i].clone();
        let (lo, hi) = (
            t.iter().copied().fold(f64::MAX, f64::min),
            t.iter().copied().fold(0.0, f64::max),
        );
        let m = median(&mut t);
        let mut diff: Vec<f64> = times[i].iter().zip(&times[0]).map(|(a, b)| a - b).collect();
        let d = median(&mut diff);
        let least = times[0].iter().copied().fold(f64::MAX, f64::min);
        println!(
            "{name:36} median {m:4.0} ns/line (range {lo:.0}-{hi:.0}); over no tap: median \
             of the rounds' differences {d:+5.1} ns/line, of the fastest rounds {:+5.1}",
            lo - least
        );
    }
    println!("events written by the taps: {kept}");
}
