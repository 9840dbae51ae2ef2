//! Criterion benchmarks of the pure stages, in lines per second on one core:
//! framing, syslog parsing (RFC 5424, RFC 3164, octet-counted), and the rules engine with the
//! example `hotdog.yml`, with a forward-everything config, and with 200 and 1,000 regex rules
//! that the lines do not match before a catch-all, and the whole pure pipeline.
//!
//! `cargo bench --bench pipeline`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use hotdog_stages::config::Config;
use hotdog_stages::core::Origin;
use hotdog_stages::core::{Record, RecordFormat};
use hotdog_stages::encode::{self, Event};
use hotdog_stages::frame::lines::{Framer, Step};
use hotdog_stages::parse::syslog;
use hotdog_stages::route::Rules;

const LINES: usize = 10_000;

/// Mixed ~150-byte lines: RFC 5424 with structured data, RFC 3164, JSON bodies.
fn mixed_lines() -> Vec<String> {
    (0..LINES)
        .map(|i| match i % 3 {
            0 => format!("<165>1 2024-05-01T12:00:00.123Z web{}.example.com app 1234 ID47 [ex@32473 iut=\"3\" seq=\"{i}\"] hello user{} login ok from 10.0.0.{}", i % 7, i % 100, i % 255),
            1 => format!("<34>Oct 11 22:14:15 host{} sshd[4242]: seq={i} Accepted publickey for user{} from 10.1.2.3 port 5555", i % 9, i % 100),
            _ => format!("<14>1 2024-05-01T12:00:00Z db1 api 77 - - {{\"seq\":{i},\"meta\":{{\"topic\":\"audit\"}},\"user\":\"u{}\",\"ok\":true}}", i % 50),
        })
        .collect()
}

fn newline_stream(lines: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

fn octet_stream(lines: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(format!("{} {l}", l.len()).as_bytes());
    }
    out
}

fn count_frames(buf: &[u8]) -> usize {
    let mut framer = Framer::new(64 * 1024);
    let mut pos = 0;
    let mut n = 0;
    loop {
        match framer.next_frame(&buf[pos..]) {
            Step::Frame { data, consumed, .. } => {
                black_box(data);
                pos += consumed;
                n += 1;
            }
            Step::Skip { consumed } => pos += consumed,
            Step::NeedMore => return n,
        }
    }
}

fn rules(yaml: &str) -> Rules {
    match Config::parse("bench.yml", yaml, |_| None) {
        Ok(c) => c.rules,
        Err(e) => panic!("bench config: {e}"),
    }
}

const GLOBAL: &str =
    "global:\n  listen:\n    port: 1514\n  kafka:\n    conf:\n      bootstrap.servers: 'b:9092'\n";

fn example_rules() -> Rules {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../hotdog.yml"))
        .unwrap_or_else(|e| panic!("hotdog.yml: {e}"));
    rules(&text)
}

/// Three rules: a regex with captures and replace, a JMESPath match with a JSON merge, and a
/// catch-all forward.
fn three_rules() -> Rules {
    rules(&format!(
        "{GLOBAL}rules:\n  - regex: 'Accepted publickey for (?P<user>\\w+)'\n    field: msg\n    actions:\n      - type: replace\n        template: 'login {{{{user}}}} on {{{{hostname}}}}'\n      - type: forward\n        topic: 'logins'\n  - jmespath: 'meta.topic'\n    actions:\n      - type: merge\n        json:\n          meta:\n            host: '{{{{hostname}}}}'\n      - type: forward\n        topic: '{{{{value}}}}'\n  - regex: '.*'\n    actions:\n      - type: forward\n        topic: 'logs'\n"
    ))
}

/// `n` regex rules that the mixed lines do not match (one per application, tenant or device
/// family, as real rule sets have), then a catch-all forward.
fn many_rules(n: usize) -> Rules {
    let mut text = format!("{GLOBAL}rules:\n");
    for i in 0..n {
        let re = match i % 4 {
            0 => format!("^tenant{i}: (?P<rest>.*)"),
            1 => format!("service-{i} (failed|stopped)"),
            2 => format!("\\bcode={i}x\\b"),
            _ => format!("device{i}\\[(?P<unit>\\d+)\\]"),
        };
        text.push_str(&format!(
            "  - regex: '{re}'\n    actions:\n      - type: forward\n        topic: 'r{i}'\n"
        ));
    }
    text.push_str("  - regex: '.*'\n    actions:\n      - type: forward\n        topic: 'logs'\n");
    rules(&text)
}

/// `n` rules of one shape, none of which the mixed lines match, then a catch-all forward. The
/// shapes are the ones issue "200 rules for the price of one" names, the same as
/// `dev/bench.py`'s `--rule-shapes`:
/// - `unique`: literals that never occur in the lines ([`many_rules`]);
/// - `shared`: literals that occur in most lines (a phrase every line of a kind carries),
///   differing only after a variable part (`\d+`, `\S+`);
/// - `classes`: no literal to look for (character classes and counted repetitions only);
/// - `jmespath`: JMESPath rules on the JSON bodies, every other rule a regex;
/// - `fields`: regexes on `appname`, `hostname` and an SD param in turn.
fn shaped_rules(shape: &str, n: usize) -> Rules {
    let mut text = format!("{GLOBAL}rules:\n");
    for i in 0..n {
        let rule = match (shape, i % 3) {
            ("unique", _) => return many_rules(n),
            ("shared", 0) => format!("regex: 'hello user\\d+ login (?:denied|locked) code={i}'"),
            ("shared", 1) => {
                format!("regex: 'Accepted publickey for user\\S+ from 192\\.168\\.{i}\\.'")
            }
            ("shared", _) => format!("regex: '\"user\":\"u\\d+\",\"ok\":(?:false|null),\"n\":{i}'"),
            ("classes", _) => format!(
                "regex: '[A-Z]{{3}}[0-9]{{{}}}[a-z]{{{}}}'",
                2 + i % 20,
                1 + i / 20
            ),
            ("jmespath", _) if i % 2 == 0 => format!("jmespath: 'meta.t{i}'"),
            ("jmespath", _) => format!("regex: 'service-{i} (failed|stopped)'"),
            ("fields", 0) => format!("regex: '^svc{i}$'\n    field: appname"),
            ("fields", 1) => format!("regex: '^node{i}\\.'\n    field: hostname"),
            ("fields", _) => format!("regex: '^{i}x$'\n    field: sd.ex@32473.iut"),
            _ => panic!("no rule shape {shape}"),
        };
        text.push_str(&format!(
            "  - {rule}\n    actions:\n      - type: forward\n        topic: 'r{i}'\n"
        ));
    }
    text.push_str("  - regex: '.*'\n    actions:\n      - type: forward\n        topic: 'logs'\n");
    rules(&text)
}

/// The rule shapes of [`shaped_rules`].
const SHAPES: [&str; 5] = ["unique", "shared", "classes", "jmespath", "fields"];

fn forward_all() -> Rules {
    rules(&format!(
        "{GLOBAL}rules:\n  - regex: '.*'\n    actions:\n      - type: forward\n        topic: 'logs'\n"
    ))
}

/// What a session does with a parsed line: route it, and push the record of what the rules
/// send onto the batch.
#[inline]
fn route_into(rules: &Rules, msg: &syslog::Message<'_>, origin: &Origin, out: &mut Vec<Record>) {
    if let (Some(routed), _) = rules.apply(msg, origin, None) {
        out.push(encode::record(routed, msg, origin, Default::default()));
    }
}

fn apply_all(rules: &Rules, lines: &[String]) -> usize {
    let origin = Origin::default();
    let mut out = Vec::with_capacity(512);
    for l in lines {
        let msg = syslog::parse(l);
        route_into(rules, &msg, &origin, &mut out);
        if out.len() >= 512 {
            out.clear();
        }
    }
    out.len()
}

fn pipeline(rules: &Rules, stream: &[u8]) -> usize {
    let mut framer = Framer::new(64 * 1024);
    let origin = Origin::default();
    let mut out = Vec::with_capacity(512);
    let mut pos = 0;
    let mut n = 0;
    loop {
        match framer.next_frame(&stream[pos..]) {
            Step::Frame { data, consumed, .. } => {
                pos += consumed;
                let line = std::str::from_utf8(data).unwrap_or("");
                let msg = syslog::parse(line);
                route_into(rules, &msg, &origin, &mut out);
                if out.len() >= 512 {
                    n += out.len();
                    out.clear();
                }
            }
            Step::Skip { consumed } => pos += consumed,
            Step::NeedMore => return n + out.len(),
        }
    }
}

fn benches(c: &mut Criterion) {
    let lines = mixed_lines();
    let newline = newline_stream(&lines);
    let octet = octet_stream(&lines);
    let rfc5424: Vec<&String> = lines.iter().step_by(3).collect();
    let rfc3164: Vec<&String> = lines.iter().skip(1).step_by(3).collect();

    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Elements(LINES as u64));
    g.bench_function("newline", |b| b.iter(|| count_frames(black_box(&newline))));
    g.bench_function("octet_counted", |b| {
        b.iter(|| count_frames(black_box(&octet)))
    });
    g.finish();

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(rfc5424.len() as u64));
    g.bench_function("rfc5424", |b| {
        b.iter(|| {
            rfc5424
                .iter()
                .map(|l| syslog::parse(l).msg.len())
                .sum::<usize>()
        })
    });
    g.throughput(Throughput::Elements(rfc3164.len() as u64));
    g.bench_function("rfc3164", |b| {
        b.iter(|| {
            rfc3164
                .iter()
                .map(|l| syslog::parse(l).msg.len())
                .sum::<usize>()
        })
    });
    g.finish();

    let example = example_rules();
    let three = three_rules();
    let all = forward_all();
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(LINES as u64));
    g.bench_function("forward_all", |b| {
        b.iter(|| apply_all(&all, black_box(&lines)))
    });
    g.bench_function("example_hotdog_yml", |b| {
        b.iter(|| apply_all(&example, black_box(&lines)))
    });
    g.bench_function("three_rules", |b| {
        b.iter(|| apply_all(&three, black_box(&lines)))
    });
    for n in [200, 1000] {
        let many = many_rules(n);
        g.bench_function(format!("{n}_rules_then_catch_all"), |b| {
            b.iter(|| apply_all(&many, black_box(&lines)))
        });
    }
    g.finish();

    // Every rule shape at 200, 1,000 and 5,000 rules, beside forward-all (`rules/forward_all`).
    let mut g = c.benchmark_group("rule_shapes");
    g.throughput(Throughput::Elements(LINES as u64));
    g.sample_size(10);
    for shape in SHAPES {
        for n in [200, 1000, 5000] {
            let set = shaped_rules(shape, n);
            g.bench_function(format!("{shape}_{n}"), |b| {
                b.iter(|| apply_all(&set, black_box(&lines)))
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("format");
    g.throughput(Throughput::Elements(LINES as u64));
    let origin = Origin {
        clock: Some(std::time::SystemTime::now()),
        ..Origin::default()
    };
    for format in [
        RecordFormat::Raw,
        RecordFormat::Json,
        RecordFormat::OtlpProto,
        RecordFormat::OtlpJson,
    ] {
        g.bench_function(format!("{format:?}"), |b| {
            b.iter(|| {
                lines
                    .iter()
                    .map(|l| {
                        let msg = syslog::parse(l);
                        let event = Event {
                            msg: &msg,
                            origin: &origin,
                            body: msg.msg,
                            invalid_utf8: false,
                        };
                        hotdog_stages::encode::payload(format, &event).0.len()
                    })
                    .sum::<usize>()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(LINES as u64));
    g.bench_function("octet_counted_three_rules", |b| {
        b.iter(|| pipeline(&three, black_box(&octet)))
    });
    g.bench_function("newline_forward_all", |b| {
        b.iter(|| pipeline(&all, black_box(&newline)))
    });
    g.finish();
}

criterion_group!(pipeline_benches, benches);
criterion_main!(pipeline_benches);
