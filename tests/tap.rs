//! `hotdog tap` against a running hotdog: it shows the frames its filter keeps while traffic
//! flows, never takes a record from Kafka, and needs the token where the status server has one.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::util::{
    cert_path, consume_all, fresh_topic, keep_sending, run_hotdog, send_lines, unique_topic,
    unknown_topic_config, Hotdog, HOTDOG,
};

fn rules(topic: &str) -> String {
    format!(
        "  - name: errors\n    regex: 'error seq=(?P<seq>\\d+)'\n    actions:\n      - type: forward\n        \
         topic: '{topic}'\n        key: '{{{{seq}}}}'\n  - name: rest\n    regex: 'seq=(?P<seq>\\d+)'\n    \
         actions:\n      - type: forward\n        topic: '{topic}'\n        key: '{{{{seq}}}}'\n"
    )
}

/// The events a tap printed, one JSON object per line.
fn events_of(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn tap_shows_what_its_filter_keeps_while_every_record_still_reaches_kafka() {
    let (broker, topic) = fresh_topic("tap");
    // The status server on a port the configuration names, for `hotdog tap -c`.
    let yaml = crate::util::config_yaml(broker, "", &rules(&topic)).replace(
        "  status:\n    address: '127.0.0.1'\n    port: 0\n",
        &format!(
            "  status:\n    address: '127.0.0.1'\n    port: {}\n",
            crate::util::free_port()
        ),
    );
    let hotdog = Hotdog::start_config(&yaml);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(format!("127.0.0.1:{}", hotdog.port), stop.clone());
    let config = hotdog.config.display().to_string();
    let port = hotdog.port.to_string();
    let mut tap = Command::new(HOTDOG)
        .args([
            "tap",
            "-c",
            &config,
            "--rule",
            "errors",
            "--match",
            "seq=\\d*[05]$",
            "--listener",
            &port,
        ])
        .args(["--limit", "10", "--duration", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hotdog tap");
    let out = tap.stdout.take().expect("stdout");
    let events: Vec<serde_json::Value> = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let status = tap.wait().expect("tap exits");
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender");
    assert!(status.success(), "{status}");
    assert_eq!(events.len(), 10, "{events:#?}");
    for e in &events {
        let line = e["line"].as_str().expect("line");
        assert!(line.contains("error seq="), "{e}");
        assert!(line.ends_with('0') || line.ends_with('5'), "{e}");
        assert_eq!(e["rules"], serde_json::json!(["errors"]), "{e}");
        assert_eq!(e["outcome"], "delivered", "{e}");
        assert_eq!(e["partition"], 0, "{e}");
        assert_eq!(e["topic"].as_str(), Some(topic.as_str()));
        let seq = line.rsplit('=').next().expect("seq");
        assert_eq!(e["key"].as_str(), Some(seq), "{e}");
        assert!(
            e["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("127.0.0.1:")),
            "{e}"
        );
        assert_eq!(e["listener"], format!("127.0.0.1:{port}"), "{e}");
    }
    // The tap took nothing from Kafka: every line sent is there, once; and each event's
    // offset is where its record is.
    let got = consume_all(broker, &topic, sent);
    assert_eq!(got.len(), sent);
    for e in &events {
        let at = got
            .iter()
            .find(|c| Some(c.offset) == e["offset"].as_i64())
            .unwrap_or_else(|| panic!("no record at the offset of {e}"));
        assert_eq!(at.key.as_deref(), e["key"].as_str(), "{e}");
    }
    assert_eq!(hotdog.stat("tap.dropped"), 0);
}

/// A tap that keeps every frame of a hotdog busier than its rate samples: it prints at most
/// its rate, counts what it left out, and every record still reaches Kafka.
#[test]
fn a_tap_keeps_at_most_its_rate_and_counts_the_rest() {
    let (broker, topic) = fresh_topic("tap-rate");
    let hotdog = Hotdog::start_config(&crate::util::config_yaml(broker, "", &rules(&topic)));
    let url = format!("http://127.0.0.1:{}", hotdog.status_port);
    let stop = Arc::new(AtomicBool::new(false));
    // About 1,500 lines a second.
    let sender = keep_sending(hotdog.addr(), stop.clone());
    let (code, out, err) = run_hotdog(&["tap", "--url", &url, "--rate", "10", "--duration", "3s"]);
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender");
    assert_eq!(code, 0, "{err}");
    let events = events_of(&out);
    // 1 each 100 ms for 3 s, and the window the tap opened in.
    assert!((10..=31).contains(&events.len()), "{} events", events.len());
    assert_eq!(consume_all(broker, &topic, sent).len(), sent);
    let (left_out, skipped) = (hotdog.stat("tap.dropped"), hotdog.stat("tap.skipped"));
    // Every frame of the tap's 3 s was kept, left out by the rate, or not looked at (the tap's
    // CPU budget): at least 2,000 even if a slow machine sends half as fast.
    let seen = left_out + skipped + i64::try_from(events.len()).unwrap_or(0);
    assert!(
        seen >= 2000 && seen <= i64::try_from(sent).unwrap_or(i64::MAX),
        "{left_out} left out, {skipped} not looked at and {} kept of {sent} sent",
        events.len()
    );
    // `hotdog tap` said what was left out while it ran.
    assert!(
        err.contains(&format!(
            "{} events; meanwhile the taps left out ",
            events.len()
        )),
        "{err}"
    );
}

/// A tap whose filter costs more than its CPU budget looks at only some of the frames, at
/// random, and counts the others; `hotdog tap` says so, and every record still reaches Kafka.
#[test]
fn a_tap_over_its_cpu_budget_looks_at_some_frames_and_counts_the_others() {
    let (broker, topic) = fresh_topic("tap-cpu");
    let hotdog = Hotdog::start_config(&crate::util::config_yaml(broker, "", &rules(&topic)));
    let url = format!("http://127.0.0.1:{}", hotdog.status_port);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(hotdog.addr(), stop.clone());
    // A regex that every line runs through to its end (letters, then digits, then letters:
    // never in these lines), within 1% of the rest of hotdog's CPU time.
    let (code, out, err) = run_hotdog(&[
        "tap",
        "--url",
        &url,
        "--match",
        r"(\w+\s){5}[a-z]+\d+[a-z]+",
        "--cpu",
        "1",
        "--duration",
        "3s",
    ]);
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender");
    assert_eq!(code, 0, "{err}");
    assert_eq!(events_of(&out).len(), 0, "{out}");
    let skipped = hotdog.stat("tap.skipped");
    assert!(
        skipped > 0 && skipped < i64::try_from(sent).unwrap_or(i64::MAX),
        "{skipped} not looked at of {sent} sent"
    );
    assert!(
        err.contains(" frames (to keep within their CPU budget"),
        "{err}"
    );
    assert_eq!(hotdog.stat("tap.dropped"), 0);
    assert_eq!(consume_all(broker, &topic, sent).len(), sent);
    // The budget was logged as it changed.
    let log = hotdog.stderr();
    assert!(log.contains("tap: its work was "), "{log}");
}

/// A record Kafka refuses for good shows in the tap as a dead letter, with why and where it
/// went.
#[test]
fn tap_shows_a_dead_letter_as_such() {
    let (broker, dead) = fresh_topic("tap-dead");
    let missing = unique_topic("tap-missing");
    let hotdog = Hotdog::start_config(&unknown_topic_config(broker, &missing, &dead));
    let url = format!("http://127.0.0.1:{}", hotdog.status_port);
    let addr = hotdog.addr();
    let sending = std::thread::spawn(move || {
        for i in 0..20 {
            send_lines(&addr, &[format!("<13>lost cause seq={i}")]);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    let (code, out, err) = run_hotdog(&["tap", "--url", &url, "--limit", "2", "--duration", "30s"]);
    sending.join().expect("sender");
    assert_eq!(code, 0, "{err}");
    let events = events_of(&out);
    assert_eq!(events.len(), 2, "{out}");
    for e in &events {
        assert_eq!(e["outcome"], "dead_lettered", "{e}");
        assert_eq!(e["topic"].as_str(), Some(missing.as_str()), "{e}");
        assert!(
            e["reason"].as_str().is_some_and(|r| r.contains("unknown")),
            "{e}"
        );
        assert_eq!(e["dead_letter_to"].as_str(), Some(dead.as_str()), "{e}");
    }
}

#[test]
fn tap_needs_the_token_where_the_status_server_has_one() {
    let (broker, topic) = fresh_topic("tap-token");
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "tap-secret\n").expect("write token");
    let yaml = crate::util::config_yaml(broker, "", &rules(&topic)).replace(
        "  status:\n    address: '127.0.0.1'\n    port: 0\n",
        &format!(
            "  status:\n    address: '127.0.0.1'\n    port: {}\n    token_file: '{}'\n",
            crate::util::free_port(),
            token.display()
        ),
    );
    let hotdog = Hotdog::start_config(&yaml);
    let url = format!("http://127.0.0.1:{}", hotdog.status_port);
    let (code, _, err) = run_hotdog(&["tap", "--url", &url, "--limit", "1", "--duration", "2s"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401"), "{err}");
    // With the configuration, hotdog tap finds the server and its token: a quiet hotdog gives
    // no event, and the tap ends at its duration.
    let config = hotdog.config.display().to_string();
    let (code, out, err) = run_hotdog(&["tap", "-c", &config, "--duration", "1s"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "");
    assert!(err.contains("0 events"), "{err}");
    // A wrong filter is refused with what is wrong.
    let (code, _, err) = run_hotdog(&["tap", "-c", &config, "--match", "(", "--duration", "1s"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("400") && err.contains("`match` is not a regex"),
        "{err}"
    );
}

/// Over HTTPS: `hotdog tap -c` finds the server's CA in `global.status.tls.ca`, a client
/// certificate that CA vouches for authenticates it, and without one the tap is refused (401).
#[test]
fn tap_speaks_tls_to_the_status_server_and_a_client_certificate_authenticates() {
    let (broker, topic) = fresh_topic("taptls");
    let port = crate::util::free_port();
    let yaml = crate::util::config_yaml(broker, "", &rules(&topic)).replace(
        "  status:\n    address: '127.0.0.1'\n    port: 0\n",
        &format!(
            "  status:\n    address: '127.0.0.1'\n    port: {port}\n    tls:\n      cert: '{}'\n      \
             key: '{}'\n      ca: '{}'\n      client_auth: optional\n",
            cert_path("server.pem"),
            cert_path("server.key"),
            cert_path("ca.pem")
        ),
    );
    let hotdog = Hotdog::start_config(&yaml);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(hotdog.addr(), stop.clone());
    let config = hotdog.config.display().to_string();
    let (client, key) = (cert_path("client.pem"), cert_path("client.key"));
    let tap = |extra: &[&str]| {
        let mut args = vec!["tap", "-c", &config, "--rule", "errors", "--limit", "3"];
        args.extend_from_slice(extra);
        run_hotdog(&args)
    };
    let (code, out, err) = tap(&["--cert", &client, "--key", &key]);
    assert_eq!(code, 0, "{err}");
    let events = events_of(&out);
    assert_eq!(events.len(), 3, "{out}");
    assert!(
        events
            .iter()
            .all(|e| e["rules"] == serde_json::json!(["errors"])),
        "{out}"
    );
    // No certificate and no token: the tap shows log records, so it is refused.
    let (code, _, err) = tap(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401"), "{err}");
    // An https URL without a CA to check the server against is a usage error.
    let url = format!("https://127.0.0.1:{port}");
    let (code, _, err) = run_hotdog(&["tap", "--url", &url, "--limit", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs --ca"), "{err}");
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender");
}
