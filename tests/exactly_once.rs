//! Exactly once into Kafka: a network that loses the broker's answers makes librdkafka send
//! records again; the idempotent producer (hotdog's default) keeps the broker from writing them
//! twice. And a producer that hits a fatal error is replaced without losing a record.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::util::{
    config_yaml, consume, consume_until_quiet, forward_all, fresh_topic, proxied_broker,
    send_lines, tally, unique_topic, unknown_topic_config, Hotdog, Tally,
};

/// Sends `n` lines at 10,000 a second over one connection; the broker's answers are lost from
/// 2 s to 8 s (librdkafka gives up on a request after `socket.timeout.ms: 3000` and sends it
/// again). Returns what arrived.
fn stream_losing_answers(idempotence: Option<&str>) -> (Tally, Hotdog) {
    const N: usize = 60_000;
    let (proxy, _tansu, topic, _) = proxied_broker("lost-answers");
    let mut yaml = config_yaml(&proxy.addr(), "", &forward_all(&topic)).replace(
        "      linger.ms: '5'\n",
        "      linger.ms: '5'\n      socket.timeout.ms: '3000'\n",
    );
    if let Some(v) = idempotence {
        yaml = yaml.replace(
            "      linger.ms: '5'\n",
            &format!("      linger.ms: '5'\n      enable.idempotence: '{v}'\n"),
        );
    }
    let hotdog = Hotdog::start_config(&yaml);
    let mut conn = std::net::TcpStream::connect(hotdog.addr()).expect("connect");
    let start = Instant::now();
    let mut losing = false;
    for chunk in 0..N / 100 {
        let mut text = String::new();
        for i in chunk * 100..(chunk + 1) * 100 {
            text.push_str(&format!("<13>lost answers seq={i}\n"));
        }
        conn.write_all(text.as_bytes()).expect("send");
        if !losing && start.elapsed() >= Duration::from_secs(2) {
            proxy.lose_answers(true);
            losing = true;
            eprintln!("answers lost from line {}", chunk * 100);
        }
        let due = start + Duration::from_millis(10 * (chunk as u64 + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    drop(conn);
    std::thread::sleep((start + Duration::from_secs(8)).saturating_duration_since(Instant::now()));
    proxy.lose_answers(false);
    eprintln!("answers pass again after {:?}", start.elapsed());
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", N as i64, Duration::from_secs(90)),
        N as i64,
        "hotdog did not hear Kafka acknowledge every line"
    );
    let got = consume_until_quiet(
        &proxy.addr(),
        &topic,
        N,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let t = tally(&got, N);
    eprintln!(
        "enable.idempotence {}: sent {N}, records in Kafka {}, missing {}, duplicated {}, in order {}",
        idempotence.unwrap_or("(hotdog's default)"),
        t.delivered,
        t.missing.len(),
        t.duplicated,
        t.in_order
    );
    (t, hotdog)
}

/// With hotdog's defaults, records whose acknowledgements were lost are written once.
#[test]
fn lost_answers_from_the_broker_write_no_record_twice() {
    let (t, hotdog) = stream_losing_answers(None);
    assert!(
        t.missing.is_empty(),
        "missing {:?}",
        &t.missing[..t.missing.len().min(20)]
    );
    assert_eq!(t.duplicated, 0, "duplicates in Kafka");
    assert!(t.in_order, "records out of order: {:?}", t.inversions);
    assert_eq!(t.delivered, 60_000);
    assert_eq!(hotdog.stat("kafka.producer.fatal"), 0);
    assert_eq!(hotdog.stat("lines.in_flight"), 0);
}

/// The same with the idempotent producer turned off by the operator: librdkafka's retries
/// write records twice. (This shows the test above can tell the difference.)
#[test]
fn without_idempotence_lost_answers_write_records_twice() {
    let (t, hotdog) = stream_losing_answers(Some("false"));
    assert!(t.missing.is_empty(), "missing {}", t.missing.len());
    assert!(t.duplicated > 0, "no duplicate without idempotence");
    assert!(
        !hotdog.stderr().contains("the idempotent producer is off"),
        "an operator's own choice is not warned about"
    );
}

/// CPU seconds the librdkafka broker threads (`rdk:broker…`) of process `pid` have used.
fn broker_threads_cpu(pid: u32) -> f64 {
    let tick = 100.0; // USER_HZ, the unit of /proc's utime and stime on Linux
    let mut ticks = 0u64;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("hotdog's threads");
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.contains("(rdk:broker") {
            continue;
        }
        // After the name: state, ppid, … ; utime and stime are the 12th and 13th.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for f in &fields[11..13] {
            ticks += f.parse::<u64>().expect("a tick count");
        }
    }
    ticks as f64 / tick
}

/// While the idempotent producer waits for the broker's answer to one batch, the next batch
/// waits too, without the broker thread spinning: librdkafka 2.12 spun a whole core here until
/// hotdog's patch (vendor/README.adoc). When the answers come again, every line arrives once.
#[test]
fn no_spin_while_answers_are_awaited() {
    let (proxy, _tansu, topic, direct) = proxied_broker("await");
    let yaml = config_yaml(&proxy.addr(), "", &forward_all(&topic)).replace(
        "      linger.ms: '5'\n",
        "      linger.ms: '5'\n      socket.timeout.ms: '6000'\n",
    );
    let hotdog = Hotdog::start_config(&yaml);
    let batch = |from: usize| -> Vec<String> {
        (from..from + 200)
            .map(|i| format!("<13>awaiting an answer seq={i}"))
            .collect()
    };
    send_lines(&hotdog.addr(), &batch(0));
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", 200, Duration::from_secs(30)),
        200
    );
    proxy.lose_answers(true);
    // The first batch goes out and its answer is lost; the second is ready 5 ms later and
    // must wait for that answer (an idempotent partition sends one request at a time).
    send_lines(&hotdog.addr(), &batch(200));
    std::thread::sleep(Duration::from_millis(300));
    send_lines(&hotdog.addr(), &batch(400));
    std::thread::sleep(Duration::from_millis(200));
    let before = broker_threads_cpu(hotdog.child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = broker_threads_cpu(hotdog.child.id()) - before;
    eprintln!("broker threads used {used:.2} CPU-s in 2 s of waiting");
    assert_eq!(hotdog.stat("kafka.delivered"), 200, "an answer got through");
    assert!(
        used < 0.5,
        "the broker threads used {used:.2} CPU-s in 2 s of waiting for an answer"
    );
    // librdkafka gives up on the lost answer after socket.timeout.ms, connects again and
    // sends both batches again; the broker writes each line once.
    proxy.lose_answers(false);
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", 600, Duration::from_secs(60)),
        600
    );
    let got = consume_until_quiet(
        &direct,
        &topic,
        600,
        Duration::from_secs(3),
        Duration::from_secs(30),
    );
    let t = tally(&got, 600);
    assert!(t.missing.is_empty(), "missing {:?}", t.missing);
    assert_eq!(t.duplicated, 0, "duplicates in Kafka");
    assert!(t.in_order, "records out of order: {:?}", t.inversions);
}

/// A fatal error of the producer (injected through librdkafka's test hook after 10,000
/// records) in the middle of a stream: a new producer sends what the old one had not
/// delivered; nothing is lost or written twice, and the event is counted and logged.
#[test]
fn a_fatal_producer_error_is_followed_by_a_new_producer_and_loses_nothing() {
    const N: usize = 30_000;
    let (b, topic) = fresh_topic("fatal");
    let yaml = config_yaml(b, "", &forward_all(&topic));
    let hotdog = Hotdog::start_config_env(&yaml, &[("HOTDOG_TEST_KAFKA_FATAL_AFTER", "10000")]);
    let mut conn = std::net::TcpStream::connect(hotdog.addr()).expect("connect");
    let start = Instant::now();
    for chunk in 0..N / 100 {
        let mut text = String::new();
        for i in chunk * 100..(chunk + 1) * 100 {
            text.push_str(&format!("<13>fatal seq={i}\n"));
        }
        conn.write_all(text.as_bytes()).expect("send");
        let due = start + Duration::from_millis(10 * (chunk as u64 + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    drop(conn);
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", N as i64, Duration::from_secs(60)),
        N as i64
    );
    let got = consume_until_quiet(
        b,
        &topic,
        N,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let t = tally(&got, N);
    eprintln!(
        "fatal error: sent {N}, records in Kafka {}, missing {}, duplicated {}, in order {} \
         (first inversions {:?}), in read order {}",
        t.delivered,
        t.missing.len(),
        t.duplicated,
        t.in_order,
        t.inversions,
        t.read_order
    );
    assert!(
        t.missing.is_empty(),
        "missing {:?}",
        &t.missing[..t.missing.len().min(20)]
    );
    assert_eq!(t.duplicated, 0);
    // Sent again in the order they were first sent, with the time they were read.
    assert!(t.in_order, "records out of order: {:?}", t.inversions);
    assert!(t.read_order, "records' timestamps out of read order");
    assert_eq!(hotdog.stat("kafka.producer.fatal"), 1);
    assert_eq!(hotdog.stat("kafka.producer.restarts"), 1);
    assert_eq!(hotdog.stat("lines.in_flight"), 0);
    assert_eq!(hotdog.stat("kafka.dead_lettered"), 0);
    assert!(hotdog.wait_log("hit a fatal error", Duration::from_secs(1)));
    assert!(hotdog.wait_log("a new Kafka producer is in use", Duration::from_secs(1)));
    assert_eq!(hotdog.http_get("/health").0, 200);
    let (_, metrics) = hotdog.http_get("/metrics");
    assert!(
        metrics.contains("hotdog_kafka_producer_restarts_total 1\n"),
        "{metrics}"
    );
}

/// The dead-letter topic's producer gets the same treatment: after its fatal error every
/// dead letter still reaches the dead-letter topic.
#[test]
fn a_fatal_error_of_the_dead_letter_producer_loses_no_dead_letter() {
    const N: usize = 300;
    let (b, dead) = fresh_topic("dead-fatal");
    let missing = unique_topic("missing");
    let yaml = unknown_topic_config(b, &missing, &dead);
    let hotdog = Hotdog::start_config_env(&yaml, &[("HOTDOG_TEST_DEAD_LETTER_FATAL_AFTER", "100")]);
    let lines: Vec<String> = (0..N)
        .map(|i| format!("<13>no such topic seq={i}"))
        .collect();
    send_lines(&hotdog.addr(), &lines);
    assert_eq!(
        hotdog.wait_stat("kafka.dead_lettered", N as i64, Duration::from_secs(60)),
        N as i64
    );
    let got = consume(b, &dead, N, Duration::from_secs(30));
    let t = tally(&got, N);
    assert!(t.missing.is_empty(), "missing {:?}", t.missing);
    assert_eq!(hotdog.stat("kafka.producer.fatal"), 1);
    assert_eq!(hotdog.stat("kafka.producer.restarts"), 1);
    assert_eq!(hotdog.stat("lines.in_flight"), 0);
    assert!(hotdog.wait_log(
        "the producer for the dead-letter topic hit a fatal error",
        Duration::from_secs(1)
    ));
    // The reason travels with a letter sent again.
    assert!(got.iter().all(|r| r
        .headers
        .iter()
        .any(|(k, v)| k == "hotdog-reason" && v.contains("unknown"))));
}
