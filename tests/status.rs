//! The status server cannot be used against the process: nothing a client sends to it stops
//! hotdog or stalls `/health` and `/stats` for the other clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::{config_yaml, http_get, Hotdog, Proxy};

/// hotdog with no broker behind it: the status server does not need one.
fn start() -> (Proxy, Hotdog) {
    let nowhere = Proxy::bind();
    let hotdog = Hotdog::start_config(&config_yaml(&nowhere.addr(), "", ""));
    (nowhere, hotdog)
}

fn status_addr(hotdog: &Hotdog) -> String {
    format!("127.0.0.1:{}", hotdog.status_port)
}

/// Sends `request` raw and reads what comes back until the server closes or `wait` passes.
fn raw(addr: &str, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the status server");
    s.set_read_timeout(Some(wait)).expect("timeout");
    // The server may answer and close before it has read all of a large request.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn assert_alive(hotdog: &mut Hotdog) {
    assert!(
        matches!(hotdog.child.try_wait(), Ok(None)),
        "hotdog exited:\n{}",
        hotdog.stderr()
    );
    let (code, body) = hotdog.http_get("/stats");
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_huge_announced_body_is_refused_unread() {
    let (_nowhere, mut hotdog) = start();
    let answer = raw(
        &status_addr(&hotdog),
        b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_alive(&mut hotdog);
}

#[test]
fn headers_past_the_limit_are_refused() {
    let (_nowhere, mut hotdog) = start();
    let mut request = b"GET /stats HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1 << 20));
    request.extend(b"\r\n\r\n");
    let answer = raw(&status_addr(&hotdog), &request, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_alive(&mut hotdog);
}

#[test]
fn clients_that_stall_do_not_stall_the_others_and_are_cut_off() {
    let (_nowhere, mut hotdog) = start();
    let addr = status_addr(&hotdog);
    let stalls: [&[u8]; 3] = [
        // A body announced and never sent.
        b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\nabc",
        // Waiting for a 100 Continue before sending the body.
        b"GET /stats HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
        // Half a request line, then nothing.
        b"GET /sta",
    ];
    let mut held = Vec::new();
    for stall in stalls {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.write_all(stall).expect("send");
        held.push(s);
    }
    // Meanwhile everybody else is served.
    for _ in 0..3 {
        let (code, body) = http_get(&addr, "/health");
        assert!(code == 200 || code == 503, "{code} {body}");
        let (code, body) = http_get(&addr, "/stats");
        assert_eq!(code, 200, "{body}");
    }
    // A client that does not finish its headers is cut off within the header timeout (5 s).
    let half = held.pop().expect("the half request");
    half.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let start = Instant::now();
    let mut rest = Vec::new();
    let _ = (&half).read_to_end(&mut rest);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "a stalled request was kept open {:?}",
        start.elapsed()
    );
    assert_alive(&mut hotdog);
}

#[test]
fn connections_past_the_cap_are_closed_and_counted() {
    let (_nowhere, hotdog) = start();
    let addr = status_addr(&hotdog);
    // 64 idle connections fill the cap; whatever comes next is closed at once. The server
    // accepts in the order they were made, so the next one comes after all 64 (and within the
    // 5 s they have to send their headers).
    let held: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let start = std::time::Instant::now();
    let answer = raw(
        &addr,
        b"GET /stats HTTP/1.0\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(answer, "", "a connection past the cap was served");
    // Closed, not left unanswered until the read timed out.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "not closed at once: {:?}",
        start.elapsed()
    );
    drop(held);
    // Served again once the server has seen them close.
    let served = crate::util::wait_until(Duration::from_secs(10), || {
        raw(
            &addr,
            b"GET /stats HTTP/1.0\r\n\r\n",
            Duration::from_secs(10),
        )
        .contains(" 200 ")
    });
    assert!(served, "not served after the connections closed");
    assert!(
        hotdog.stat("status.refused") >= 1,
        "status.refused not counted"
    );
}

#[test]
fn the_status_server_survives_running_out_of_file_descriptors() {
    let nowhere = Proxy::bind();
    let mut hotdog = Hotdog::start_config_nofile(&config_yaml(&nowhere.addr(), "", ""), 128);
    // Connections to the syslog listener use up hotdog's descriptors.
    let hogs: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(hotdog.addr()).ok())
        .collect();
    assert!(
        hotdog.wait_log("accept failed", Duration::from_secs(20)),
        "hotdog never ran out of file descriptors"
    );
    // A request now waits in the backlog, or fails: either way the server must not die.
    let mut waiting = TcpStream::connect(status_addr(&hotdog)).expect("connect");
    let _ = waiting.write_all(b"GET /health HTTP/1.0\r\n\r\n");
    drop(hogs);
    let served = crate::util::wait_until(Duration::from_secs(20), || {
        hotdog.http_get("/stats").0 == 200
    });
    assert!(
        served,
        "the status server did not come back:\n{}",
        hotdog.stderr()
    );
    assert_alive(&mut hotdog);
}

/// Every `hotdog_` metric `text` names (a histogram's series by the histogram), checked against
/// the metric families `/metrics` of a running hotdog declares; how many there were.
fn names_only_real_metrics(text: &str, what: &str) -> usize {
    let (_nowhere, hotdog) = start();
    let (code, metrics) = http_get(&status_addr(&hotdog), "/metrics");
    assert_eq!(code, 200);
    let exposed: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut named = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !word.starts_with("hotdog_") {
            continue;
        }
        named += 1;
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| word.strip_suffix(s).filter(|f| exposed.contains(f)))
            .unwrap_or(word);
        assert!(
            exposed.contains(family),
            "{what}: {word} is not in /metrics: {exposed:?}"
        );
    }
    named
}

/// The alerting rules shipped in contrib/prometheus pass `promtool check rules`, and every
/// metric they name is one a running hotdog's `/metrics` has.
#[test]
fn the_shipped_alerting_rules_check_and_name_only_real_metrics() {
    let rules = format!(
        "{}/contrib/prometheus/hotdog-rules.yml",
        env!("CARGO_MANIFEST_DIR")
    );
    let checked = std::process::Command::new("promtool")
        .args(["check", "rules", &rules])
        .output()
        .expect("promtool (Debian's prometheus package; dev/deps.sh installs it)");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let text = std::fs::read_to_string(&rules).expect("the rules file");
    let named = names_only_real_metrics(&text, "hotdog-rules.yml");
    assert!(named >= 10, "the rules name {named} metrics");
}

/// The Grafana dashboard in contrib/grafana is a dashboard (JSON with panels, each with queries)
/// whose queries name only metrics a running hotdog's `/metrics` has.
#[test]
fn the_shipped_dashboard_names_only_real_metrics() {
    let path = format!("{}/contrib/grafana/hotdog.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut exprs = String::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("a panel's targets");
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().expect("a query"));
            exprs.push('\n');
        }
    }
    let named = names_only_real_metrics(&exprs, "hotdog.json");
    assert!(named >= 20, "the dashboard names {named} metrics");
}
