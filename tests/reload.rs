//! Reloading the configuration while lines flow: `POST /reload`, SIGHUP and a watched file;
//! new rules from the next frame of every open connection, nothing lost or doubled, a broken
//! file changing nothing, listeners started and stopped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::util::{
    broker, cert_path, consume_all, create_topics, free_port, fresh_topic, send_lines,
    unique_topic, wait_until, Hotdog,
};

/// A whole configuration: `listen` (YAML list items under `listen:`), the status server on port
/// 0, and `rules`.
fn config(listen: &str, kafka_extra: &str, rules: &str) -> String {
    format!(
        "global:\n  listen:\n{listen}  kafka:\n    conf:\n      bootstrap.servers: '{}'\n      linger.ms: '5'\n{kafka_extra}    topic: 'fallback'\n  status:\n    port: 0\nrules:\n{rules}",
        broker()
    )
}

/// One rule: every line to `topic`, keyed by its message.
fn to_topic(topic: &str) -> String {
    format!(
        "  - regex: '.'\n    field: msg\n    actions:\n      - type: forward\n        topic: '{topic}'\n        key: '{{{{msg}}}}'\n"
    )
}

fn tcp_tls_udp() -> String {
    format!(
        "    - port: 0\n    - port: 0\n      tls:\n        cert: '{}'\n        key: '{}'\n    - port: 0\n      protocol: udp\n",
        cert_path("server.pem"),
        cert_path("server.key"),
    )
}

/// The records of `topic`, as many as hotdog says it delivered there.
fn delivered_keys(hotdog: &Hotdog, topic: &str) -> Vec<String> {
    let n = hotdog.stat(&format!("kafka.delivered.{topic}"));
    consume_all(broker(), topic, n as usize)
        .into_iter()
        .map(|r| r.key.unwrap_or_default())
        .collect()
}

/// Sends `count` lines `<13>{name} {i}` at about `per_second`, through `write` (one call per
/// burst of lines).
fn paced(
    name: &str,
    count: usize,
    per_second: usize,
    mut write: impl FnMut(&[String]) -> std::io::Result<()>,
) {
    let burst = (per_second / 50).max(1);
    let start = Instant::now();
    let mut i = 0;
    while i < count {
        let lines: Vec<String> = (i..(i + burst).min(count))
            .map(|n| format!("<13>{name} {n:06}"))
            .collect();
        write(&lines).unwrap_or_else(|e| panic!("{name}: sending line {i}: {e}"));
        i += lines.len();
        let due = start + Duration::from_secs_f64(i as f64 / per_second as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Per sender, the line numbers found in `keys` (`name number`).
fn by_sender(keys: &[String]) -> HashMap<String, Vec<usize>> {
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for k in keys {
        let (name, n) = k.split_once(' ').expect("name number");
        out.entry(name.to_string())
            .or_default()
            .push(n.parse().expect("a line number"));
    }
    out
}

#[test]
fn a_reload_moves_the_lines_read_after_it_to_the_new_topic_on_open_tcp_tls_and_udp_connections() {
    let (b, old) = fresh_topic("reload-old");
    let new = unique_topic("reload-new");
    create_topics(b, &[&new]);
    let hotdog = Hotdog::start_config(&config(&tcp_tls_udp(), "", &to_topic(&old)));
    let (tcp, tls, udp) = (hotdog.ports[0], hotdog.ports[1], hotdog.ports[2]);
    let counts = [("tcp", 40_000), ("tls", 40_000), ("udp", 20_000)];
    let total: usize = counts.iter().map(|c| c.1).sum();

    let senders = [
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", tcp)).expect("tcp");
            paced("tcp", 40_000, 10_000, |lines| {
                let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
                s.write_all(text.as_bytes())
            });
            s.shutdown(std::net::Shutdown::Write).expect("close");
            // hotdog closes its side once it has read everything: no reset.
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)
                .expect("a clean close, not a reset");
        }),
        std::thread::spawn(move || {
            let mut s = crate::util::tls_connect(&format!("127.0.0.1:{tls}"), None).expect("tls");
            paced("tls", 40_000, 10_000, |lines| {
                let text: String = lines.iter().map(|l| format!("{} {l}", l.len())).collect();
                s.write_all(text.as_bytes())?;
                s.flush()
            });
            s.conn.send_close_notify();
            s.conn.complete_io(&mut s.sock).expect("close_notify");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)
                .expect("a clean close, not a reset");
        }),
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").expect("udp");
            paced("udp", 20_000, 5_000, |lines| {
                for l in lines {
                    s.send_to(l.as_bytes(), ("127.0.0.1", udp))?;
                }
                Ok(())
            });
        }),
    ];
    // Mid-stream: a quarter of the lines read.
    hotdog.wait_stat("lines", total as i64 / 4, Duration::from_secs(60));
    hotdog.rewrite_config(&config(&tcp_tls_udp(), "", &to_topic(&new)));
    let (code, answer) = hotdog.reload();
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["generation"], 2, "{answer}");
    assert!(
        hotdog.stat("lines") < total as i64 * 3 / 4,
        "the senders were nearly done before the reload"
    );
    for s in senders {
        s.join().expect("sender");
    }
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", total as i64, Duration::from_secs(120)),
        total as i64
    );

    let before = by_sender(&delivered_keys(&hotdog, &old));
    let after = by_sender(&delivered_keys(&hotdog, &new));
    for (name, count) in counts {
        let none = Vec::new();
        let a = before.get(name).unwrap_or(&none);
        let z = after.get(name).unwrap_or(&none);
        // Lines of one connection keep their order: every line read before the reload is in
        // the old topic, every one after in the new; each exactly once.
        let mut all: Vec<usize> = a.iter().chain(z).copied().collect();
        assert_eq!(all.len(), count, "{name}: {} lines of {count}", all.len());
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "{name}: a line arrived twice");
        assert!(
            !a.is_empty() && !z.is_empty(),
            "{name}: reload not mid-stream"
        );
        let last_old = a.iter().max().copied().unwrap_or(0);
        let first_new = z.iter().min().copied().unwrap_or(0);
        assert_eq!(
            last_old + 1,
            first_new,
            "{name}: old and new rules interleaved"
        );
    }
    assert_eq!(
        hotdog.stat("connections.total"),
        2,
        "a connection was reset"
    );
    assert_eq!(hotdog.stat("config.reloads"), 1);
    assert_eq!(hotdog.stat("config.generation"), 2);
}

#[test]
fn a_broken_file_changes_nothing_and_says_where_it_is_broken() {
    let (b, topic) = fresh_topic("reload-broken");
    let good = config("    - port: 0\n", "", &to_topic(&topic));
    let hotdog = Hotdog::start_config(&good);
    // Line 12 is the rule's regex; line 13 has a typo in a key.
    let broken = good
        .replace("regex: '.'", "regex: '(['")
        .replace("field: msg", "feild: msg");
    hotdog.rewrite_config(&broken);
    let (code, answer) = hotdog.reload();
    assert_eq!(code, 422, "{answer}");
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["generation"], 1);
    let errors = answer["errors"].to_string();
    let file = hotdog.config.display().to_string();
    assert!(errors.contains(&format!("{file}:12:")), "{errors}");
    assert!(errors.contains("did you mean `field`"), "{errors}");
    // SIGHUP gets the same answer, in the log.
    hotdog.signal("HUP");
    assert_eq!(
        hotdog.wait_stat("config.reload_failed", 2, Duration::from_secs(10)),
        2
    );
    assert!(hotdog.wait_log("still running generation 1", Duration::from_secs(10)));
    let (_, health) = hotdog.http_get("/health");
    assert!(
        health.contains("configuration generation 1") && health.contains("last reload failed"),
        "{health}"
    );
    let (_, stats) = hotdog.http_get("/stats");
    assert!(stats.contains("last_reload_error"), "{stats}");
    // The old rules still route.
    send_lines(&hotdog.addr(), &["<13>still routed".to_string()]);
    let got = consume_all(b, &topic, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key.as_deref(), Some("still routed"));
    // Fixed: it loads, and the error is gone.
    hotdog.rewrite_config(&good);
    let (code, answer) = hotdog.reload();
    assert_eq!((code, &answer["generation"]), (200, &2.into()), "{answer}");
    let (_, stats) = hotdog.http_get("/stats");
    assert!(!stats.contains("last_reload_error"), "{stats}");
    assert_eq!(hotdog.stat("config.reloads"), 1);
}

#[test]
fn a_reload_starts_and_stops_listeners_and_makes_new_producers_for_new_kafka_settings() {
    let (b, topic) = fresh_topic("reload-listeners");
    let (p1, p2) = (free_port(), free_port());
    let hotdog = Hotdog::start_config(&config(
        &format!("    - port: {p1}\n"),
        "",
        &to_topic(&topic),
    ));
    let mut open = TcpStream::connect(("127.0.0.1", p1)).expect("connect");
    open.write_all(b"<13>before 1\n<13>before 2\n")
        .expect("send");
    hotdog.wait_stat("lines", 2, Duration::from_secs(10));

    // The file after the first reload: the listener moved to p2, with Kafka's `batch.size`.
    let moved = |batch_size: &str| {
        hotdog.rewrite_config(&config(
            &format!("    - port: {p2}\n      max_connections: 5\n"),
            &format!("      batch.size: '{batch_size}'\n"),
            &to_topic(&topic),
        ))
    };
    moved("1000");
    let (code, answer) = hotdog.reload();
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["started"],
        serde_json::json!([format!("tcp 127.0.0.1:{p2}")])
    );
    assert_eq!(
        answer["stopped"],
        serde_json::json!([format!("tcp 127.0.0.1:{p1}")])
    );
    assert_eq!(answer["restart_needed"], serde_json::json!([]));
    assert_eq!(answer["kafka_renewed"], true, "{answer}");
    // The removed listener's open connection finishes as at shutdown: what it sends now is
    // read, then, once it is quiet, hotdog closes it.
    open.write_all(b"<13>after 1\n")
        .expect("send after the reload");
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rest = Vec::new();
    open.read_to_end(&mut rest)
        .expect("hotdog closes the connection");
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            p1
        ))
        .is_err()),
        "the removed listener still accepts"
    );
    send_lines(
        &format!("127.0.0.1:{p2}"),
        &["<13>new listener".to_string()],
    );
    let mut keys: Vec<String> = consume_all(b, &topic, 4)
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    keys.sort();
    // Through the new producer: every line once.
    assert_eq!(keys, ["after 1", "before 1", "before 2", "new listener"]);
    assert!(hotdog.wait_log(
        "the settings of the producer for Kafka (or the files they name) changed",
        Duration::from_secs(5)
    ));
    assert_eq!(hotdog.stat("kafka.producer.restarts"), 1);
    assert_eq!(hotdog.stat("kafka.producer.fatal"), 0);

    // Settings librdkafka refuses fail the reload before anything changes (a producer that
    // could not be made would leave none), naming the key, never its value.
    moved("not-a-number-secret");
    let (code, answer) = hotdog.reload();
    assert_eq!(code, 422, "{answer}");
    let text = answer.to_string();
    assert!(text.contains("not accepted by librdkafka"), "{text}");
    assert!(text.contains("batch.size"), "{text}");
    assert!(!text.contains("not-a-number-secret"), "{text}");
    send_lines(&format!("127.0.0.1:{p2}"), &["<13>still here".to_string()]);
    assert_eq!(
        consume_all(b, &topic, 5).len(),
        5,
        "the producer in use goes on"
    );
    assert_eq!(hotdog.stat("kafka.producer.restarts"), 1);
}

#[test]
fn a_watched_file_saved_in_several_writes_is_reloaded_once_whole() {
    let (b, old) = fresh_topic("watch-old");
    let new = unique_topic("watch-new");
    create_topics(b, &[&new]);
    let watch = "  reload:\n    watch: true\n    debounce: 300ms\n";
    let with_watch = |rules: &str| {
        config("    - port: 0\n", "", rules).replace("  status:\n", &format!("{watch}  status:\n"))
    };
    let hotdog = Hotdog::start_config(&with_watch(&to_topic(&old)));
    // Saved as an editor that writes in place might: half the file, then the rest.
    let text = with_watch(&to_topic(&new));
    let (first, second) = text.split_at(text.len() - 40);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&hotdog.config)
        .expect("open config");
    f.write_all(first.as_bytes()).expect("write");
    f.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(100));
    f.write_all(second.as_bytes()).expect("write");
    drop(f);
    assert_eq!(
        hotdog.wait_stat("config.generation", 2, Duration::from_secs(10)),
        2
    );
    // The save was two writes: no second reload follows the first (a second longer than the
    // debounce: what is looked for is that nothing happens).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(hotdog.stat("config.reloads"), 1);
    assert_eq!(hotdog.stat("config.reload_failed"), 0);
    send_lines(&hotdog.addr(), &["<13>after the save".to_string()]);
    let got = consume_all(b, &new, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key.as_deref(), Some("after the save"));
}

#[test]
fn a_reload_storm_while_lines_flow_loses_and_doubles_nothing() {
    let (_, topic) = fresh_topic("reload-storm");
    // Every reload changes the rules (an extra rule that matches nothing comes and goes).
    let rules = |n: usize| {
        format!(
            "  - regex: 'never{n}'\n    actions:\n      - type: stop\n{}",
            to_topic(&topic)
        )
    };
    let hotdog = Hotdog::start_config(&config("    - port: 0\n", "", &rules(0)));
    let total = 200_000;
    let tcp = hotdog.port;
    let sender = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", tcp)).expect("tcp");
        paced("storm", total, 20_000, |lines| {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            s.write_all(text.as_bytes())
        });
        s.shutdown(std::net::Shutdown::Write).expect("close");
        let _ = s.read_to_end(&mut Vec::new());
    });
    // A SIGHUP every 100 ms for as long as the lines flow (10 s).
    let mut signals = 0;
    while !sender.is_finished() {
        hotdog.rewrite_config(&config("    - port: 0\n", "", &rules(signals + 1)));
        hotdog.signal("HUP");
        signals += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    sender.join().expect("sender");
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", total as i64, Duration::from_secs(120)),
        total as i64
    );
    let reloads = hotdog.stat("config.reloads");
    eprintln!("{signals} SIGHUPs, {reloads} reloads");
    assert!(reloads >= 50, "{reloads} reloads for {signals} SIGHUPs");
    assert_eq!(hotdog.stat("config.reload_failed"), 0);
    let keys = delivered_keys(&hotdog, &topic);
    let mut numbers = by_sender(&keys).remove("storm").unwrap_or_default();
    assert_eq!(numbers.len(), total, "records in Kafka");
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), total, "a line arrived twice");
}

/// Each rule counts the messages it matched: `rules.<name>.matched` in `/stats` and
/// `hotdog_rule_matches_total{rule="<name>"}` in `/metrics`, a rule without a name by its index.
/// After a reload, the rules that stayed the same keep their counts; a changed one starts again.
#[test]
fn each_rule_counts_what_it_matched_and_keeps_it_across_a_reload() {
    let (_, topic) = fresh_topic("rule-counts");
    let rules = |second: &str| {
        format!(
            "  - name: errors\n    regex: 'error'\n    actions:\n      - type: replace\n        template: '{{{{msg}}}}!'\n  - regex: '{second}'\n    actions:\n      - type: stop\n  - name: all\n    regex: '.'\n    actions:\n      - type: forward\n        topic: '{topic}'\n"
        )
    };
    let yaml = |second: &str| config("    - port: 0\n", "", &rules(second));
    let hotdog = Hotdog::start_config(&yaml("drop"));
    let lines = |what: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("<13>Oct 11 22:14:15 host app: {what} {i}"))
            .collect()
    };
    let mut input = lines("an error", 10);
    input.extend(lines("please drop", 5));
    input.extend(lines("plain", 20));
    send_lines(&hotdog.addr(), &input);
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", 30, Duration::from_secs(20)),
        30
    );
    assert!(wait_until(Duration::from_secs(10), || hotdog
        .stat("rules.all.matched")
        == 30));
    assert_eq!(hotdog.stat("rules.errors.matched"), 10);
    assert_eq!(hotdog.stat("rules.1.matched"), 5);
    let (code, metrics) = hotdog.http_get("/metrics");
    assert_eq!(code, 200);
    for expected in [
        "hotdog_rule_matches_total{rule=\"errors\"} 10\n",
        "hotdog_rule_matches_total{rule=\"1\"} 5\n",
        "hotdog_rule_matches_total{rule=\"all\"} 30\n",
    ] {
        assert!(metrics.contains(expected), "{expected} in:\n{metrics}");
    }

    // Rule 1 changes; `errors` and `all` stay as they were.
    hotdog.rewrite_config(&yaml("discard"));
    let (code, report) = hotdog.reload();
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        hotdog.stat("rules.1.matched"),
        0,
        "a changed rule starts again"
    );
    assert_eq!(hotdog.stat("rules.errors.matched"), 10, "kept");
    send_lines(&hotdog.addr(), &lines("another error", 4));
    assert!(wait_until(Duration::from_secs(10), || hotdog
        .stat("rules.all.matched")
        == 34));
    assert_eq!(hotdog.stat("rules.errors.matched"), 14);
    assert_eq!(hotdog.stat("rules.1.matched"), 0);
}
