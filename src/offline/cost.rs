//! `hotdog --check`: the regexes that cost far more per line than the others. The regex engine
//! never backtracks, so no regex takes more than time linear in the line; but a counted
//! repetition of a large class (`\w{100}`: Unicode `\w` is hundreds of ranges) makes an automaton
//! too big for the lazy DFA's cache, and the search falls back to a slower engine: thousands
//! of times a literal's cost, on every line the rule is tried on.

use std::time::{Duration, Instant};

use hotdog_stages::route::{Matcher, Pattern, Rules};

/// What a regex that scans the whole line with the lazy DFA (no literal to skip ahead to)
/// costs: the yardstick, timed beside the rules' regexes, so that the ratio holds on a slow or
/// busy machine and in a debug build alike.
const SCAN: &str = r"\w{30}z";
/// A regex that costs this many times [`SCAN`] is reported.
const RATIO: f64 = 10.0;

/// The sample the regexes are timed on: 32 message bodies of log words, a quarter of them
/// long (about 1 KB), the rest about 200 bytes.
fn sample() -> Vec<String> {
    const WORDS: [&str; 20] = [
        "disk",
        "sda1",
        "error",
        "timeout",
        "user",
        "alice",
        "login",
        "from",
        "10.0.0.1",
        "port",
        "22",
        "ssh2",
        "accepted",
        "password",
        "for",
        "kernel:",
        "[12345.678]",
        "eth0",
        "link",
        "up",
    ];
    (0..32)
        .map(|i| {
            let n = if i % 4 == 0 { 150 } else { 30 };
            let words: Vec<&str> = (0..n)
                .map(|j| WORDS[(i * 7 + j * 3) % WORDS.len()])
                .collect();
            words.join(" ")
        })
        .collect()
}

/// What matching the sample costs `matches` per line: the best of three passes.
fn per_line(sample: &[String], matches: impl Fn(&str) -> bool) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            for line in sample {
                std::hint::black_box(matches(line));
            }
            start.elapsed() / sample.len() as u32
        })
        .min()
        .unwrap_or_default()
}

/// The regex rules that cost far more than a scan of the line (index, and the warning's text).
pub fn slow_rules(rules: &Rules) -> Vec<(usize, String)> {
    let sample = sample();
    let Ok(scan) = Pattern::new(SCAN) else {
        return Vec::new();
    };
    let scan = per_line(&sample, |line| scan.matches(line)).as_secs_f64();
    rules
        .rules()
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| match &rule.matcher {
            Matcher::Regex(p) => Some((i, per_line(&sample, |line| p.matches(line)).as_secs_f64())),
            Matcher::JmesPath(_) => None,
        })
        .filter(|(_, cost)| *cost >= RATIO * scan)
        .map(|(i, cost)| {
            (
                i,
                format!(
                    "the rule's regex costs about {:.1} µs per line of a sample of log lines, {:.0} \
                     times a plain scan of the line ({SCAN}). No regex backtracks (its time is \
                     linear in the line), but a counted repetition of a Unicode class (\\w{{100}}, \
                     (?:\\w+\\s+){{50}}) makes an automaton too large to cache: its ASCII form \
                     ((?-u:\\w){{100}}, [a-z0-9_]{{100}}) or a smaller count costs a fraction",
                    cost * 1e6,
                    cost / scan.max(f64::MIN_POSITIVE)
                ),
            )
        })
        .collect()
}
