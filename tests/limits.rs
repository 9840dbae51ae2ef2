//! Limits on what clients can make hotdog hold: connections per listener and per source, idle
//! connections, handshakes in progress, TCP keepalive, distinct rendered topics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{
    broker, cert_path, config_yaml, consume_all, create_topics, send_lines, unique_topic,
    wait_until, Hotdog, Proxy,
};

/// True when the server closes `s` (EOF or reset) within `within`.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut b = [0u8; 16];
    !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        || e.kind() == std::io::ErrorKind::TimedOut)
}

/// hotdog with the given listener keys on its one TCP listener, and no broker behind it.
fn start_listener(keys: &str) -> (Proxy, Hotdog) {
    let nowhere = Proxy::bind();
    let yaml = config_yaml(&nowhere.addr(), "", "").replace(
        "    port: 0\n  kafka:",
        &format!("    port: 0\n{keys}  kafka:"),
    );
    (nowhere, Hotdog::start_config(&yaml))
}

#[test]
fn connections_past_a_listeners_limits_are_closed_and_counted() {
    let (_nowhere, hotdog) = start_listener("    max_connections: 3\n");
    let mut open: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(hotdog.addr()).expect("connect"))
        .collect();
    for s in &mut open {
        s.write_all(b"<13>held\n").expect("send");
    }
    assert_eq!(
        hotdog.wait_stat("connections", 3, Duration::from_secs(10)),
        3
    );
    let mut fourth = TcpStream::connect(hotdog.addr()).expect("connect");
    assert!(
        closed_by_server(&mut fourth, Duration::from_secs(5)),
        "a fourth connection was kept over max_connections: 3"
    );
    assert_eq!(hotdog.stat("connections.refused.listener_limit"), 1);
    // A place given back is a place to take.
    drop(open.pop());
    assert!(wait_until(Duration::from_secs(10), || hotdog
        .stat("connections")
        == 2));
    let mut again = TcpStream::connect(hotdog.addr()).expect("connect");
    again.write_all(b"<13>again\n").expect("send");
    assert!(!closed_by_server(&mut again, Duration::from_millis(500)));
    assert_eq!(hotdog.wait_stat("lines", 4, Duration::from_secs(10)), 4);
}

#[test]
fn connections_past_the_limit_per_source_are_closed_and_counted() {
    let (_nowhere, hotdog) = start_listener("    max_connections_per_source: 2\n");
    let _two: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(hotdog.addr()).expect("connect"))
        .collect();
    assert_eq!(
        hotdog.wait_stat("connections", 2, Duration::from_secs(10)),
        2
    );
    let mut third = TcpStream::connect(hotdog.addr()).expect("connect");
    assert!(
        closed_by_server(&mut third, Duration::from_secs(5)),
        "a third connection from 127.0.0.1 was kept over max_connections_per_source: 2"
    );
    // Another source address is not held back by this one.
    let other = std::net::SocketAddr::from(([127, 0, 0, 2], 0));
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&other.into()).expect("bind 127.0.0.2");
    let target: std::net::SocketAddr = hotdog.addr().parse().expect("addr");
    socket
        .connect(&target.into())
        .expect("connect from 127.0.0.2");
    let mut from_other: TcpStream = socket.into();
    assert!(!closed_by_server(
        &mut from_other,
        Duration::from_millis(500)
    ));
    assert_eq!(hotdog.stat("connections.refused.source_limit"), 1);
    assert_eq!(
        hotdog.wait_stat("connections", 3, Duration::from_secs(10)),
        3
    );
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout_and_busy_ones_kept() {
    let (_nowhere, hotdog) = start_listener("    idle_timeout: 1s\n");
    let mut idle = TcpStream::connect(hotdog.addr()).expect("connect");
    idle.write_all(b"<13>then nothing\n").expect("send");
    let mut busy = TcpStream::connect(hotdog.addr()).expect("connect");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        busy.write_all(b"<13>still here\n").expect("busy send");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(closed_by_server(&mut idle, Duration::from_secs(5)));
    assert!(
        busy.write_all(b"<13>last\n").is_ok()
            && !closed_by_server(&mut busy, Duration::from_millis(300)),
        "a connection that kept sending was closed"
    );
    assert_eq!(hotdog.stat("connections.idle_timeout"), 1);
    // What the idle one sent was handled.
    assert!(hotdog.wait_stat("lines", 9, Duration::from_secs(10)) >= 9);
}

#[test]
fn accepted_connections_have_tcp_keepalive() {
    let (_nowhere, hotdog) = start_listener("    tcp_keepalive: 17s\n");
    let _c = TcpStream::connect(hotdog.addr()).expect("connect");
    assert_eq!(
        hotdog.wait_stat("connections", 1, Duration::from_secs(10)),
        1
    );
    // hotdog's end of the connection is the one whose local port is the listener's.
    let out = Command::new("ss")
        .args([
            "-tnoH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{}", hotdog.port),
        ])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("timer:(keepalive"),
        "no keepalive timer:\n{text}"
    );
}

#[test]
fn tls_connections_in_their_handshake_are_in_the_gauge() {
    let nowhere = Proxy::bind();
    let listen = format!(
        "  listen:\n    - port: 0\n      tls:\n        cert: '{}'\n        key: '{}'\n        handshake_timeout: 30s\n",
        cert_path("server.pem"),
        cert_path("server.key"),
    );
    let yaml = format!(
        "global:\n{listen}  kafka:\n    conf:\n      bootstrap.servers: '{}'\n  status:\n    port: 0\nrules: []\n",
        nowhere.addr()
    );
    let hotdog = Hotdog::start_config(&yaml);
    let stalled: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(hotdog.addr()).expect("connect"))
        .collect();
    assert_eq!(
        hotdog.wait_stat("connections.handshaking", 3, Duration::from_secs(10)),
        3
    );
    assert_eq!(hotdog.stat("connections"), 0);
    drop(stalled);
    assert!(wait_until(Duration::from_secs(10), || {
        hotdog.stat("connections.handshaking") == 0
    }));
}

#[test]
fn distinct_rendered_topics_are_capped_and_the_rest_go_to_the_default_topic() {
    let b = broker();
    let prefix = unique_topic("cap");
    let fallback = unique_topic("cap-fallback");
    let topics: Vec<String> = ["h1", "h2", "h3", "h4"]
        .iter()
        .map(|h| format!("{prefix}-{h}"))
        .collect();
    let mut all: Vec<&str> = topics.iter().map(String::as_str).collect();
    all.push(&fallback);
    create_topics(b, &all);
    let yaml = config_yaml(
        b,
        "",
        &format!(
            "  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{prefix}-{{{{hostname}}}}'\n"
        ),
    )
    .replace("    topic: 'fallback'\n", &format!("    topic: '{fallback}'\n    max_topics: 2\n"));
    let hotdog = Hotdog::start_config(&yaml);
    let lines: Vec<String> = ["h1", "h2", "h3", "h4", "h1", "h3"]
        .iter()
        .map(|h| format!("<13>Nov 23 12:00:00 {h} app: from {h}"))
        .collect();
    // One line at a time, so the first two hosts are the first two topics.
    for l in &lines {
        send_lines(&hotdog.addr(), std::slice::from_ref(l));
        let n = hotdog.stat("lines");
        assert!(wait_until(Duration::from_secs(10), || hotdog
            .stat("kafka.submitted")
            >= n));
    }
    assert_eq!(consume_all(b, &topics[0], 2).len(), 2);
    assert_eq!(consume_all(b, &topics[1], 1).len(), 1);
    let rest: Vec<String> = consume_all(b, &fallback, 3)
        .into_iter()
        .map(|c| c.payload)
        .collect();
    assert_eq!(rest, ["from h3", "from h4", "from h3"]);
    assert_eq!(hotdog.stat("kafka.topics_over_limit"), 3);
    let (_, metrics) = hotdog.http_get("/metrics");
    assert!(
        !metrics.contains(&topics[2]),
        "a series for a topic over the cap"
    );
}

#[test]
fn sigterm_during_a_flood_to_thousands_of_topics_exits_within_the_shutdown_timeout() {
    let b = broker();
    let fallback = unique_topic("flood-fallback");
    create_topics(b, &[&fallback]);
    let dir = tempfile::tempdir().expect("temp dir");
    let dead = dir.path().join("dead.jsonl");
    let yaml = config_yaml(
        b,
        "  shutdown_timeout: 3s\n",
        "  - regex: '.*'\n    actions:\n      - type: forward\n        topic: 'flood-{{hostname}}'\n",
    )
    .replace(
        "    topic: 'fallback'\n",
        &format!(
            "    topic: '{fallback}'\n    dead_letter:\n      file: '{}'\n",
            dead.display()
        ),
    );
    let hotdog = Hotdog::start_config(&yaml);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..4)
        .map(|t| {
            let addr = hotdog.addr();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return;
                };
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut chunk = String::new();
                    for _ in 0..100 {
                        // 35,000 distinct hostnames, so as many topics without the cap.
                        chunk.push_str(&format!(
                            "<13>Nov 23 12:00:00 h{} app: flood {t} {i}\n",
                            i % 35_000
                        ));
                        i += 1;
                    }
                    if s.write_all(chunk.as_bytes()).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    assert!(hotdog.wait_stat("lines", 20_000, Duration::from_secs(30)) >= 20_000);
    std::thread::sleep(Duration::from_secs(2));
    let mut hotdog = hotdog;
    let start = Instant::now();
    hotdog.signal("TERM");
    let status = loop {
        if let Ok(Some(status)) = hotdog.child.try_wait() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    // The log reader has all of it once the summary is in.
    hotdog.wait_log("summary: received", Duration::from_secs(5));
    let err = hotdog.stderr();
    eprintln!("SIGTERM to exit under a flood: {took:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        let _ = f.join();
    }
    assert!(status.code().is_some(), "killed by a signal: {err}");
    // shutdown_timeout (3 s) and at most a second more, whatever the load.
    assert!(
        took < Duration::from_secs(4),
        "SIGTERM under a flood took {took:?}:\n{}",
        err.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(err.contains("summary: received"), "{err}");
}
