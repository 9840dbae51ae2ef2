//! End to end: syslog over TCP into hotdog, rules applied, records read back from a real broker.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::TcpStream;
use std::time::Duration;

use crate::util::{
    broker, config_yaml, consume, consume_all, create_topics, fresh_topic, send_lines,
    send_octet_counted, unique_topic, Consumed, Hotdog,
};

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn read(key: Option<&str>, payload: &str) -> Consumed {
    Consumed {
        key: key.map(str::to_string),
        payload: payload.to_string(),
        bytes: payload.as_bytes().to_vec(),
        headers: Vec::new(),
        timestamp: None,
        offset: 0,
    }
}

/// Every rule and action kind, in both framings.
#[test]
fn each_rule_and_action_kind_reaches_kafka() {
    let b = broker();
    let hello = unique_topic("hello");
    let audit = unique_topic("audit");
    let errors = unique_topic("errors");
    let other = unique_topic("other");
    create_topics(b, &[&hello, &audit, &errors, &other]);
    let rules = format!(
        "  - regex: '^hello\\s+(?P<name>\\w+)'\n    actions:\n      - type: replace\n        \
         template: '{{{{name}}}} said hello from {{{{hostname}}}} & co'\n      - type: forward\n        \
         topic: '{hello}'\n        key: '{{{{appname}}}}-{{{{name}}}}'\n\
         \x20 - jmespath: 'meta.kind'\n    actions:\n      - type: merge\n        json:\n          \
         meta:\n            host: '{{{{hostname}}}}'\n            raw: '{{{{msg}}}}'\n      \
         - type: forward\n        topic: '{{{{value}}}}'\n\
         \x20 - regex: '^debug$'\n    field: severity\n    actions:\n      - type: stop\n\
         \x20 - regex: '^(err|crit)$'\n    field: severity\n    actions:\n      - type: forward\n        \
         topic: '{errors}'\n\
         \x20 - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{other}'\n"
    );
    let hotdog = Hotdog::start(b, &rules);
    let before = now_ms();
    let json_body = format!(r#"{{"meta":{{"kind":"{audit}"}},"q":"a\"b"}}"#);
    for (i, framing) in ["newline", "octet"].iter().enumerate() {
        let lines = vec![
            format!("<13>Oct 11 22:14:15 web1 app[12]: hello bob{i}"),
            format!("<14>1 2024-05-01T12:00:00Z db\"1 api 77 - - {json_body}"),
            "<15>Oct 11 22:14:15 web1 app: a debug line".to_string(),
            format!("<11>Oct 11 22:14:15 web1 app: disk on fire {framing}"),
            format!("no syslog header at all {framing}"),
        ];
        if *framing == "newline" {
            send_lines(&hotdog.addr(), &lines);
        } else {
            send_octet_counted(&hotdog.addr(), &lines);
        }
    }
    let got = consume_all(b, &hello, 2);
    assert_eq!(
        got,
        vec![
            read(Some("app-bob0"), "bob0 said hello from web1 & co"),
            read(Some("app-bob1"), "bob1 said hello from web1 & co"),
        ]
    );
    // Each record has a Kafka timestamp from within the run: the time its line was read.
    let after = now_ms();
    for r in &got {
        let t = r.timestamp.unwrap_or_default();
        assert!(
            (before..=after).contains(&t),
            "{t} not in {before}..={after}"
        );
    }
    let got = consume_all(b, &audit, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    for r in &got {
        assert_eq!(r.key, None);
        let v: serde_json::Value = serde_json::from_str(&r.payload).expect("merge gives JSON");
        assert_eq!(v["meta"]["kind"], audit.as_str());
        assert_eq!(v["meta"]["host"], "db\"1");
        assert_eq!(v["meta"]["raw"], json_body.as_str());
        assert_eq!(v["q"], "a\"b");
    }
    let got = consume_all(b, &errors, 2);
    assert_eq!(
        got,
        vec![
            read(None, "disk on fire newline"),
            read(None, "disk on fire octet")
        ]
    );
    let got = consume_all(b, &other, 2);
    assert_eq!(
        got,
        vec![
            read(None, "no syslog header at all newline"),
            // A count before what is no syslog message (no `<PRI>`) is not taken for one: the
            // frame is a line, its digits and all.
            read(None, "29 no syslog header at all octet")
        ]
    );
    // The debug lines were stopped, and so are counted as not forwarded.
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", 8, Duration::from_secs(10)),
        8
    );
    assert_eq!(hotdog.stat("lines"), 10);
    assert_eq!(hotdog.stat("lines.unrouted"), 2);
    assert_eq!(hotdog.stat("error.log_parse"), 2);
    let (status, err) = hotdog.stop();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("summary: received 10 lines, forwarded 8, unrouted 2, delivered 8, failed 0"),
        "{err}"
    );
}

/// 10,000 lines over 4 connections at once: every one arrives, exactly once.
#[test]
fn ten_thousand_lines_over_four_connections_arrive_exactly_once() {
    let (b, topic) = fresh_topic("bulk");
    let rules = format!("  - regex: 'seq=(?P<seq>\\d+)'\n    actions:\n      - type: forward\n        topic: '{topic}'\n        key: '{{{{seq}}}}'\n");
    let hotdog = Hotdog::start(b, &rules);
    let senders: Vec<_> = (0..4)
        .map(|c| {
            let addr = hotdog.addr();
            std::thread::spawn(move || {
                let lines: Vec<String> = (0..2500)
                    .map(|i| {
                        let seq = c * 2500 + i;
                        format!("<13>1 2024-05-01T12:00:00Z host{c} app - - [x@1 c=\"{c}\"] seq={seq} payload")
                    })
                    .collect();
                if c % 2 == 0 {
                    send_lines(&addr, &lines);
                } else {
                    send_octet_counted(&addr, &lines);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender thread");
    }
    let got = consume_all(b, &topic, 10_000);
    assert_eq!(got.len(), 10_000, "expected every line exactly once");
    let keys: BTreeSet<u32> = got
        .iter()
        .map(|r| {
            r.key
                .as_deref()
                .and_then(|k| k.parse().ok())
                .expect("numeric key")
        })
        .collect();
    assert_eq!(keys.len(), 10_000, "duplicates among the keys");
    assert_eq!(keys.first(), Some(&0));
    assert_eq!(keys.last(), Some(&9_999));
    for r in &got {
        assert!(r.payload.ends_with(" payload"), "{r:?}");
    }
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", 10_000, Duration::from_secs(10)),
        10_000
    );
}

/// hotdog starts with no broker reachable, accepts lines, and delivers them once a broker is.
#[test]
fn starts_without_a_broker_and_delivers_once_one_is_there() {
    let (b, topic) = fresh_topic("late");
    // A forwarding port with nothing behind it yet.
    let proxy = crate::util::Proxy::bind();
    let rules =
        format!("  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n");
    let hotdog = Hotdog::start(&proxy.addr(), &rules);
    let lines: Vec<String> = (0..50).map(|i| format!("<13>late line {i}")).collect();
    send_lines(&hotdog.addr(), &lines);
    assert_eq!(hotdog.wait_stat("lines", 50, Duration::from_secs(10)), 50);
    // hotdog has asked for a broker and found none.
    assert!(
        crate::util::wait_until(Duration::from_secs(20), || {
            hotdog
                .http_get("/health")
                .1
                .contains("no Kafka broker answered")
        }),
        "{:?}",
        hotdog.http_get("/health")
    );
    assert_eq!(
        hotdog.stat("kafka.delivered"),
        0,
        "delivered with no broker?"
    );
    proxy.forward_to(b);
    let got = consume_all(b, &topic, 50);
    assert_eq!(got.len(), 50);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.payload, format!("late line {i}"));
    }
}

/// With the broker unreachable and every queue full, hotdog stops reading: the sender is held
/// back by TCP, nothing is dropped, and everything arrives once the broker is back.
#[test]
fn backpressure_holds_senders_back_and_loses_nothing() {
    let (b, topic) = fresh_topic("backpressure");
    let proxy = crate::util::Proxy::bind();
    let rules =
        format!("  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n");
    let yaml = crate::util::config_yaml(&proxy.addr(), "", &rules)
        .replace(
            "      linger.ms: '5'\n",
            "      linger.ms: '5'\n      queue.buffering.max.messages: '100'\n",
        )
        .replace("buffer: 1024", "buffer: 1");
    let hotdog = Hotdog::start_config(&yaml);
    const N: usize = 100_000;
    let addr = hotdog.addr();
    let sender = std::thread::spawn(move || {
        let lines: Vec<String> = (0..N)
            .map(|i| format!("<13>backpressure line {i:06} {}", "p".repeat(60)))
            .collect();
        send_lines(&addr, &lines);
    });
    // Every queue fills: librdkafka's 100 records, then hotdog's one.
    assert!(
        crate::util::wait_until(Duration::from_secs(30), || {
            hotdog.stat("queue.librdkafka") >= 100 && hotdog.stat("queue.channel") >= 1
        }),
        "the queues did not fill"
    );
    assert_eq!(hotdog.stat("queue.channel"), 1, "buffer: 1 is one record");
    let read_so_far = hotdog.stat("lines");
    assert!(
        read_so_far < (N / 2) as i64,
        "hotdog read {read_so_far} lines with nowhere to put them"
    );
    assert!(!sender.is_finished(), "the sender was not held back");
    proxy.forward_to(b);
    sender.join().expect("sender");
    let got = consume_all(b, &topic, N);
    assert_eq!(got.len(), N);
    for (i, r) in got.iter().enumerate() {
        assert!(
            r.payload.starts_with(&format!("backpressure line {i:06} ")),
            "{i}: {r:?}"
        );
    }
}

/// The counters reach statsd under hotdog 0.5's names.
#[test]
fn metrics_reach_statsd() {
    let (b, topic) = fresh_topic("statsd");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind statsd socket");
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let statsd = udp.local_addr().expect("address");
    let rules =
        format!("  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n");
    let hotdog = Hotdog::start_with(b, &format!("  metrics:\n    statsd: '{statsd}'\n"), &rules);
    send_lines(&hotdog.addr(), &["<13>one".to_string(), "two".to_string()]);
    assert_eq!(consume_all(b, &topic, 2).len(), 2);
    let want = [
        "hotdog.connections:".to_string(),
        "hotdog.lines:".to_string(),
        "hotdog.error.log_parse:".to_string(),
        "hotdog.kafka.submitted:".to_string(),
        format!("hotdog.kafka.submitted.{topic}:"),
        "hotdog.kafka.delivered:".to_string(),
    ];
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 65536];
    while std::time::Instant::now() < deadline && !want.iter().all(|w| seen.contains(w.as_str())) {
        if let Ok(n) = udp.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
    for w in &want {
        assert!(seen.contains(w.as_str()), "no {w} in:\n{seen}");
    }
    // Counters are sent as increments: they add up to what happened.
    let lines: u64 = seen
        .lines()
        .filter_map(|l| {
            l.strip_prefix("hotdog.lines:")?
                .strip_suffix("|c")?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(lines, 2, "{seen}");
}

/// SIGTERM while a sender keeps its connection open: what it already sent is delivered, the
/// summary is logged, and hotdog exits 0.
#[test]
fn sigterm_delivers_what_open_connections_sent() {
    use std::io::Write;
    let (b, topic) = fresh_topic("sigterm");
    let rules =
        format!("  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n");
    let hotdog = Hotdog::start(b, &rules);
    let mut open = std::net::TcpStream::connect(hotdog.addr()).expect("connect");
    let mut text = String::new();
    for i in 0..1000 {
        text.push_str(&format!("<13>still open {i}\n"));
    }
    open.write_all(text.as_bytes()).expect("send");
    assert_eq!(
        hotdog.wait_stat("lines", 1000, Duration::from_secs(10)),
        1000
    );
    let (status, err) = hotdog.stop();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("summary: received 1000 lines, forwarded 1000, unrouted 0, delivered 1000, failed 0, dead-lettered 0, dropped 0, in flight 0"),
        "{err}"
    );
    drop(open);
    assert_eq!(consume_all(b, &topic, 1000).len(), 1000);
}

/// `forward` may carry Kafka headers rendered per record.
#[test]
fn forward_headers_reach_kafka() {
    let (b, topic) = fresh_topic("headers");
    let rules = format!(
        "  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n        headers:\n          hostname: '{{{{hostname}}}}'\n          severity: '{{{{severity}}}}'\n          peer: '{{{{peer_addr}}}}'\n"
    );
    let hotdog = Hotdog::start(b, &rules);
    send_lines(
        &hotdog.addr(),
        &["<11>Oct 11 22:14:15 web1 app: with headers".to_string()],
    );
    let got = consume_all(b, &topic, 1);
    assert_eq!(got.len(), 1);
    let h = &got[0].headers;
    assert_eq!(h[0], ("hostname".to_string(), "web1".to_string()));
    assert_eq!(h[1], ("severity".to_string(), "err".to_string()));
    assert_eq!(h[2].0, "peer");
    assert!(h[2].1.starts_with("127.0.0.1:"), "{h:?}");
}

/// Framing as senders write it: NUL-terminated messages are messages of their own; a plain line
/// that starts with digits and a space (`404 Not found`) is a line, not an octet count that
/// swallows the next ones; octet counting still works; and `framing: lf` pins newlines (a NUL
/// then stays inside the message).
#[test]
fn nul_terminated_and_digit_led_lines_are_framed_as_senders_mean() {
    let (b, topic) = fresh_topic("framing");
    let rules =
        format!("  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n");
    let hotdog = Hotdog::start(b, &rules);
    let sent = b"<13>nul one\0<13>nul two\x00404 Not found on this host\n200 OK fine\n17 <13>octet counted<13>last line\n";
    let mut s = TcpStream::connect(hotdog.addr()).expect("connect");
    s.write_all(sent).expect("send");
    drop(s);
    let got: Vec<String> = consume(b, &topic, 6, Duration::from_secs(20))
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(
        got,
        [
            "nul one",
            "nul two",
            "404 Not found on this host",
            "200 OK fine",
            "octet counted",
            "last line"
        ]
    );
    drop(hotdog);

    let (b, topic) = fresh_topic("framing-lf");
    let rules =
        format!("  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n");
    let yaml = config_yaml(b, "", &rules).replace(
        "    port: 0\n  kafka:",
        "    port: 0\n    framing: lf\n  kafka:",
    );
    assert!(yaml.contains("framing: lf"), "{yaml}");
    let hotdog = Hotdog::start_config(&yaml);
    let mut s = TcpStream::connect(hotdog.addr()).expect("connect");
    s.write_all(b"<13>a\0b\n<13>c\n").expect("send");
    drop(s);
    let got: Vec<String> = consume(b, &topic, 2, Duration::from_secs(20))
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(got, ["a\0b", "c"]);
}

/// Every datagram a UDP listener loses is counted somewhere: hotdog is stopped (SIGSTOP) while a
/// sender sends 3,000 datagrams into a 4 KiB receive buffer, so the kernel drops most of them;
/// once it runs again, what it read plus `udp.dropped` plus `udp.kernel_dropped` is what was
/// sent. Asking for more than `net.core.rmem_max` is said in the log.
#[test]
fn every_lost_datagram_is_counted_by_hotdog_or_the_kernel() {
    const N: i64 = 3_000;
    let (b, topic) = fresh_topic("udp-kernel");
    let rules =
        format!("  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n");
    let udp = |buffer: &str| {
        config_yaml(b, "", &rules)
            .replace("  listen:\n    address:", "  listen:\n  - address:")
            .replace(
                "    port: 0\n  kafka:",
                &format!("    port: 0\n  - address: '127.0.0.1'\n    port: 0\n    protocol: udp\n    receive_buffer: {buffer}\n  kafka:"),
            )
    };
    let hotdog = Hotdog::start_config(&udp("4KiB"));
    let port = hotdog.ports[1];
    hotdog.signal("STOP");
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    for i in 0..N {
        let line = format!("<13>Oct 11 22:14:15 host app: datagram {i} with some text to fill it");
        s.send_to(line.as_bytes(), ("127.0.0.1", port))
            .expect("send");
    }
    hotdog.signal("CONT");
    let counted =
        || hotdog.stat("lines") + hotdog.stat("udp.dropped") + hotdog.stat("udp.kernel_dropped");
    assert!(
        crate::util::wait_until(Duration::from_secs(20), || counted() == N),
        "read {}, dropped {}, dropped by the kernel {}: not the {N} sent",
        hotdog.stat("lines"),
        hotdog.stat("udp.dropped"),
        hotdog.stat("udp.kernel_dropped")
    );
    let (read, kernel) = (hotdog.stat("lines"), hotdog.stat("udp.kernel_dropped"));
    eprintln!("{N} sent to a stopped hotdog: {read} read, {kernel} dropped by the kernel");
    assert!(
        kernel > 0 && read > 0,
        "read {read}, kernel dropped {kernel}"
    );
    let (code, metrics) = hotdog.http_get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!("hotdog_udp_kernel_dropped_total {kernel}\n")),
        "{metrics}"
    );
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", read, Duration::from_secs(20)),
        read
    );
    drop(hotdog);

    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .expect("rmem_max")
        .trim()
        .parse()
        .expect("a number");
    let hotdog = Hotdog::start_config(&udp(&(rmem_max * 2).to_string()));
    assert!(
        hotdog.wait_log("net.core.rmem_max caps it", Duration::from_secs(5)),
        "{}",
        hotdog.stderr()
    );
}
