//! No line lost silently: outages, permanent errors, shutdown, and the numbers that prove it.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::util::{
    broker, config_yaml, consume, consume_all, create_topics, forward_all, fresh_topic,
    proxied_broker, send_lines, unique_topic, unknown_topic_config, with_dead_letter_file, Hotdog,
    Proxy,
};

/// The broker goes away for 15 s in the middle of a paced stream and comes back: every
/// sequence number arrives. Uses its own tansu behind a proxy the test stops and restarts.
#[test]
fn broker_outage_in_the_middle_of_a_stream_loses_nothing() {
    let (proxy, _tansu, topic, target) = proxied_broker("outage");
    let b = proxy.addr();
    let mut up = true;
    let hotdog = Hotdog::start(&b, &forward_all(&topic));
    let mut conn = std::net::TcpStream::connect(hotdog.addr()).expect("connect");
    const N: usize = 3000;
    let start = Instant::now();
    let mut outage = None;
    for i in 0..N {
        writeln!(conn, "<13>outage test seq={i}").expect("send");
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(100));
        }
        let t = start.elapsed();
        if t > Duration::from_secs(5) && outage.is_none() {
            proxy.cut(); // the broker is unreachable from here
            up = false;
            outage = Some(Instant::now());
            eprintln!("outage begins after line {i}");
        }
        if outage.is_some_and(|o| o.elapsed() > Duration::from_secs(15)) && !up {
            assert_eq!(
                hotdog.http_get("/health").0,
                503,
                "health during the outage"
            );
            proxy.forward_to(&target);
            up = true;
            eprintln!("outage ends after line {i}");
        }
    }
    drop(conn);
    assert!(up, "the stream ended before the outage did");
    let got = consume_all(&b, &topic, N);
    let seqs: BTreeSet<usize> = got
        .iter()
        .filter_map(|r| r.key.as_deref()?.parse().ok())
        .collect();
    let missing: Vec<usize> = (0..N).filter(|i| !seqs.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "missing {} lines: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    eprintln!(
        "outage: sent {N}, delivered {} distinct, lost 0",
        seqs.len()
    );
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", N as i64, Duration::from_secs(30)),
        N as i64
    );
    assert_eq!(hotdog.stat("lines.in_flight"), 0);
    assert_eq!(hotdog.http_get("/health").0, 200);
}

/// SIGTERM with the broker unreachable: what cannot be delivered by the shutdown timeout is in
/// the dead-letter file, counted, and the exit code says so.
#[test]
fn sigterm_without_a_broker_dead_letters_to_the_file() {
    // Nothing behind it: every connection is closed at once.
    let nowhere = Proxy::bind();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dead.jsonl");
    let yaml = with_dead_letter_file(
        &config_yaml(
            &nowhere.addr(),
            "  shutdown_timeout: 2\n",
            &forward_all("somewhere"),
        ),
        &file,
    );
    let hotdog = Hotdog::start_config(&yaml);
    let lines: Vec<String> = (0..500).map(|i| format!("<13>doomed seq={i}")).collect();
    send_lines(&hotdog.addr(), &lines);
    assert_eq!(hotdog.wait_stat("lines", 500, Duration::from_secs(10)), 500);
    assert_eq!(hotdog.stat("lines.in_flight"), 500);
    let (code, health) = hotdog.http_get("/health");
    assert_eq!(code, 503, "{health}");
    assert!(health.contains("unavailable"), "{health}");
    let (status, err) = hotdog.stop();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(
        err.contains("dead-lettered 500, dropped 0, in flight 0"),
        "{err}"
    );
    let text = std::fs::read_to_string(&file).expect("dead-letter file");
    let mut seqs = BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(v["reason"], "shutdown_timeout");
        assert_eq!(v["topic"], "somewhere");
        seqs.insert(
            v["key"]
                .as_str()
                .and_then(|k| k.parse::<u32>().ok())
                .expect("key"),
        );
    }
    assert_eq!(seqs.len(), 500);
    eprintln!("sigterm without broker: sent 500, delivered 0, dead-lettered 500, lost 0");
}

/// SIGTERM in the middle of a stream: every line /stats counted as received is in Kafka.
#[test]
fn sigterm_mid_stream_delivers_everything_received() {
    let (b, topic) = fresh_topic("midstream");
    let hotdog = Hotdog::start(b, &forward_all(&topic));
    let addr = hotdog.addr();
    let sender = std::thread::spawn(move || {
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        let mut sent = 0;
        for i in 0..100_000 {
            if writeln!(conn, "<13>midstream seq={i}").is_err() {
                break;
            }
            sent += 1;
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        sent
    });
    hotdog.wait_stat("lines", 5000, Duration::from_secs(30));
    let (status, err) = hotdog.stop();
    assert!(status.success(), "{err}");
    let sent = sender.join().expect("sender");
    let received: usize = err
        .lines()
        .find_map(|l| {
            l.split("summary: received ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("summary line");
    assert!(received >= 5000 && received <= sent, "{received} of {sent}");
    assert!(
        err.contains(&format!(
            "delivered {received}, failed 0, dead-lettered 0, dropped 0, in flight 0"
        )),
        "{err}"
    );
    let got = consume_all(b, &topic, received);
    assert_eq!(got.len(), received);
    eprintln!(
        "sigterm mid-stream: sent {sent}, received {received}, delivered {}, lost 0",
        got.len()
    );
}

/// A topic the broker does not have is a permanent error: the record goes to the dead-letter
/// topic with its original topic and the reason in headers. (tansu never creates topics on
/// first use; a broker with auto-creation on would accept it.)
#[test]
fn permanent_errors_go_to_the_dead_letter_topic() {
    let (b, dead) = fresh_topic("dead");
    let missing = unique_topic("missing");
    let yaml = unknown_topic_config(b, &missing, &dead);
    let hotdog = Hotdog::start_config(&yaml);
    send_lines(&hotdog.addr(), &["<13>lost cause seq=7".to_string()]);
    let got = consume(b, &dead, 1, Duration::from_secs(60));
    assert_eq!(got.len(), 1, "nothing in the dead-letter topic");
    assert_eq!(got[0].payload, "lost cause seq=7");
    assert_eq!(got[0].key.as_deref(), Some("7"));
    let header = |n: &str| {
        got[0]
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("hotdog-original-topic"), Some(missing.clone()));
    let reason = header("hotdog-reason").expect("reason header");
    assert!(reason.contains("unknown"), "{reason}");
    assert_eq!(
        hotdog.wait_stat("kafka.dead_lettered", 1, Duration::from_secs(10)),
        1
    );
    assert_eq!(hotdog.stat("lines.in_flight"), 0);
    // /metrics tells the same story.
    let (code, metrics) = hotdog.http_get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("hotdog_lines_received_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "hotdog_dead_lettered_total{{topic=\"{missing}\"}} 1\n"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "hotdog_kafka_failed_total{{topic=\"{missing}\"}} 1\n"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("hotdog_lines_in_flight 0\n"), "{metrics}");
}

/// A record librdkafka holds for long keeps the block its payload was lent in: records that wait
/// for a topic's metadata, one line in 40 among lines that flow, would keep a block each. Past
/// 512 blocks alive, payloads are copied instead, and the blocks go once the records do.
#[test]
fn records_that_wait_keep_no_more_blocks_than_the_lending_bound() {
    let (b, ok) = fresh_topic("flowing");
    let (_, dead) = fresh_topic("dead");
    let missing = unique_topic("missing");
    const N: usize = 40_000;
    const EVERY: usize = 40;
    let rules = format!(
        "  - regex: 'wait'\n    actions:\n      - type: forward\n        topic: '{missing}'\n\
         \x20 - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{ok}'\n"
    );
    let yaml = crate::util::config_yaml(b, "", &rules)
        .replace(
            "      linger.ms: '5'\n",
            "      linger.ms: '5'\n      topic.metadata.propagation.max.ms: '20000'\n",
        )
        .replace(
            "    topic: 'fallback'\n",
            &format!("    topic: 'fallback'\n    dead_letter:\n      topic: '{dead}'\n"),
        );
    let hotdog = Hotdog::start_config(&yaml);
    let padding = "p".repeat(1500);
    let lines: Vec<String> = (0..N)
        .map(|i| {
            let kind = if i % EVERY == 0 { "wait" } else { "flow" };
            format!("<13>{kind} {i:06} {padding}")
        })
        .collect();
    send_lines(&hotdog.addr(), &lines);
    let flowing = (N - N / EVERY) as i64;
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", flowing, Duration::from_secs(60)),
        flowing
    );
    // The waiting records are still in librdkafka (their topic is not known for 20 s). Each
    // lent payload would keep a block of its own: 1,000 of them. What the outbox and the
    // connections' batches hold is counted too.
    let waiting = hotdog.stat("queue.librdkafka");
    let blocks = hotdog.stat("memory.payload_blocks");
    eprintln!("{waiting} records waiting, {blocks} blocks alive");
    assert!(
        waiting >= (N / EVERY) as i64 / 2,
        "{waiting} records waiting"
    );
    assert!(blocks <= 512 + 64, "{blocks} blocks alive");
    // Then they become dead letters, and their blocks go (each worker thread keeps the one it
    // packs in).
    assert_eq!(
        hotdog.wait_stat(
            "kafka.dead_lettered",
            (N / EVERY) as i64,
            Duration::from_secs(60)
        ),
        (N / EVERY) as i64
    );
    assert!(
        crate::util::wait_until(Duration::from_secs(10), || {
            hotdog.stat("memory.payload_blocks") <= 16
        }),
        "{} blocks alive",
        hotdog.stat("memory.payload_blocks")
    );
    assert_eq!(consume_all(b, &ok, N - N / EVERY).len(), N - N / EVERY);
}

/// A record larger than the producer allows cannot go to any topic: it is written to the
/// dead-letter file with its reason.
#[test]
fn records_too_large_for_kafka_go_to_the_dead_letter_file() {
    let b = broker();
    let topic = unique_topic("toolarge");
    let dead = unique_topic("dead");
    create_topics(b, &[&topic, &dead]);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dead.jsonl");
    let yaml = config_yaml(b, "", &forward_all(&topic))
        .replace("      linger.ms: '5'\n", "      linger.ms: '5'\n      message.max.bytes: '2000'\n")
        .replace(
            "    topic: 'fallback'\n",
            &format!("    topic: 'fallback'\n    dead_letter:\n      topic: '{dead}'\n      file: '{}'\n", file.display()),
        );
    let hotdog = Hotdog::start_config(&yaml);
    let big = format!("<13>seq=1 {}", "b".repeat(5000));
    send_lines(&hotdog.addr(), &[big, "<13>small seq=2".to_string()]);
    assert_eq!(consume_all(b, &topic, 1)[0].payload, "small seq=2");
    assert_eq!(
        hotdog.wait_stat("kafka.dead_lettered", 1, Duration::from_secs(10)),
        1
    );
    let text = std::fs::read_to_string(&file).expect("dead-letter file");
    let v: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("JSON");
    assert_eq!(v["topic"], topic.as_str());
    assert!(v["reason"].as_str().unwrap_or("").contains("size"), "{v}");
    assert_eq!(
        v["payload"].as_str().map(str::len),
        Some(5000 + "seq=1 ".len())
    );
    assert_eq!(hotdog.stat("lines.in_flight"), 0);
}
