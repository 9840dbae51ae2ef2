//! TLS (with client certificates), UDP, several listeners at once, certificate reload.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crate::util::{
    broker, cert_path, consume_all, fresh_topic, send_lines, send_tls, server_cn, sorted_keys,
    tls_connect, Hotdog, Proxy,
};

fn listen_yaml(extra_tls: &str) -> String {
    format!(
        "  listen:\n    - port: 0\n    - port: 0\n      tls:\n        cert: '{}'\n        key: '{}'\n        ca: '{}'\n{extra_tls}    - port: 0\n      protocol: udp\n",
        cert_path("server.pem"),
        cert_path("server.key"),
        cert_path("ca.pem"),
    )
}

/// A full config with three listeners; `rules` forward everything to `topic` with a key that
/// shows who sent it.
fn three_listeners(topic: &str, extra_tls: &str) -> (Hotdog, u16, u16) {
    let yaml = format!(
        "global:\n{}  kafka:\n    conf:\n      bootstrap.servers: '{}'\n      linger.ms: '5'\n  status:\n    port: 0\nrules:\n  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n        key: '{{{{tls_client_cn}}}}|{{{{tls_client_san}}}}|{{{{msg}}}}'\n",
        listen_yaml(extra_tls),
        broker()
    );
    let hotdog = Hotdog::start_config(&yaml);
    let (tls, udp) = (hotdog.ports[1], hotdog.ports[2]);
    (hotdog, tls, udp)
}

#[test]
fn tls_tcp_and_udp_at_once_with_client_identity() {
    let (b, topic) = fresh_topic("listeners");
    let (hotdog, tls, udp) = three_listeners(&topic, "");
    let tls_addr = format!("127.0.0.1:{tls}");
    send_tls(&tls_addr, Some("client"), &["<13>over tls".to_string()]).expect("tls send");
    send_tls(
        &tls_addr,
        Some("client-rsa"),
        &["<13>over tls rsa".to_string()],
    )
    .expect("tls send");
    send_lines(&hotdog.addr(), &["<13>over tcp".to_string()]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.send_to(b"<13>over udp\n", ("127.0.0.1", udp))
        .expect("udp send");
    let keys = sorted_keys(b, &topic, 4);
    assert_eq!(
        keys,
        [
            "tenant-a|tenant-a.example.com,a.example.net|over tls",
            "tenant-b||over tls rsa",
            "||over tcp",
            "||over udp"
        ]
    );
    assert_eq!(hotdog.stat("tls.handshakes"), 2);
}

#[test]
fn bad_tls_peers_are_refused_and_counted_while_good_ones_flow() {
    let (b, topic) = fresh_topic("badpeers");
    let (hotdog, tls, _) = three_listeners(&topic, "        handshake_timeout: 1s\n");
    let tls_addr = format!("127.0.0.1:{tls}");
    // A client that connects and never says anything.
    let _silent = TcpStream::connect(&tls_addr).expect("connect");
    // A good client keeps its connection open and sends throughout.
    let mut good = tls_connect(&tls_addr, Some("client")).expect("good client");
    let frame = |s: &str| format!("{} {s}", s.len());
    good.write_all(frame("<13>good 1").as_bytes())
        .expect("write");
    good.flush().expect("flush");
    for bad in ["untrusted", "expired"] {
        let r = send_tls(&tls_addr, Some(bad), &[format!("<13>from {bad}")]);
        assert!(r.is_err(), "{bad} certificate was accepted");
    }
    assert!(
        send_tls(&tls_addr, None, &["<13>anonymous".to_string()]).is_err(),
        "a client without a certificate was accepted"
    );
    let mut plain = TcpStream::connect(&tls_addr).expect("connect");
    plain
        .write_all(b"<13>plaintext to the TLS port\n")
        .expect("write");
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut sink);
    good.write_all(frame("<13>good 2").as_bytes())
        .expect("write");
    good.flush().expect("flush");
    assert_eq!(
        hotdog.wait_stat("tls.handshake_failed", 4, Duration::from_secs(10)),
        4
    );
    assert_eq!(
        hotdog.wait_stat("tls.handshake_timeout", 1, Duration::from_secs(10)),
        1
    );
    good.write_all(frame("<13>good 3").as_bytes())
        .expect("write");
    good.flush().expect("flush");
    let got: Vec<String> = consume_all(b, &topic, 3)
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(got, ["good 1", "good 2", "good 3"]);
}

#[test]
fn optional_client_auth_lets_anonymous_clients_in() {
    let (b, topic) = fresh_topic("optional");
    let (_hotdog, tls, _) = three_listeners(&topic, "        client_auth: optional\n");
    let tls_addr = format!("127.0.0.1:{tls}");
    send_tls(&tls_addr, None, &["<13>anonymous".to_string()]).expect("anonymous send");
    send_tls(&tls_addr, Some("client"), &["<13>known".to_string()]).expect("send");
    assert!(send_tls(&tls_addr, Some("untrusted"), &["<13>x".to_string()]).is_err());
    let keys = sorted_keys(b, &topic, 2);
    assert_eq!(
        keys,
        [
            "tenant-a|tenant-a.example.com,a.example.net|known",
            "||anonymous"
        ]
    );
}

#[test]
fn udp_datagrams_arrive_and_nothing_is_dropped_at_a_modest_rate() {
    let (b, topic) = fresh_topic("udp");
    let (hotdog, _, udp) = three_listeners(&topic, "");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    const N: usize = 2000;
    for i in 0..N {
        sock.send_to(format!("<13>datagram {i}").as_bytes(), ("127.0.0.1", udp))
            .expect("send");
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let got = consume_all(b, &topic, N);
    assert_eq!(got.len(), N);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.payload, format!("datagram {i}"));
    }
    assert_eq!(hotdog.stat("udp.dropped"), 0);
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections() {
    let (b, topic) = fresh_topic("reload");
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::copy(cert_path("server.pem"), &cert).expect("copy");
    std::fs::copy(cert_path("server.key"), &key).expect("copy");
    let yaml = format!(
        "global:\n  listen:\n    port: 0\n    tls:\n      cert: '{}'\n      key: '{}'\n  kafka:\n    conf:\n      bootstrap.servers: '{b}'\n  status:\n    port: 0\nrules:\n  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n",
        cert.display(),
        key.display()
    );
    let hotdog = Hotdog::start_config(&yaml);
    let addr = hotdog.addr();
    let before = tls_connect(&addr, None).expect("connect");
    assert_eq!(server_cn(&before), "localhost");
    std::fs::copy(cert_path("server2.pem"), &cert).expect("copy");
    std::fs::copy(cert_path("server2.key"), &key).expect("copy");
    hotdog.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = tls_connect(&addr, None).expect("connect");
        if server_cn(&s) == "hotdog-reloaded" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate not in use"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken file keeps the old certificate in use.
    std::fs::write(&cert, "not a certificate").expect("write");
    hotdog.signal("HUP");
    assert!(
        hotdog.wait_log("TLS reload failed", Duration::from_secs(10)),
        "{}",
        hotdog.stderr()
    );
    let s = tls_connect(&addr, None).expect("connect after a bad reload");
    assert_eq!(server_cn(&s), "hotdog-reloaded");
    // The connection opened before the reload still works.
    drop(before);
    send_tls(&addr, None, &["<13>after reload".to_string()]).expect("send");
    assert_eq!(consume_all(b, &topic, 1)[0].payload, "after reload");
}

/// When the queue to Kafka is full, UDP drops, and says how many.
#[test]
fn udp_drops_are_counted_when_the_queue_is_full() {
    // No broker behind this address: nothing drains the queues.
    let nowhere = Proxy::bind();
    let yaml = format!(
        "global:\n  listen:\n    - port: 0\n      protocol: udp\n  kafka:\n    conf:\n      bootstrap.servers: '{}'\n      queue.buffering.max.messages: '10'\n    buffer: 1\n  status:\n    port: 0\nrules:\n  - regex: '.*'\n    actions:\n      - type: forward\n        topic: 'nowhere'\n",
        nowhere.addr()
    );
    let hotdog = Hotdog::start_config(&yaml);
    let udp = hotdog.port;
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    const N: i64 = 3000;
    for i in 0..N {
        sock.send_to(format!("<13>datagram {i}").as_bytes(), ("127.0.0.1", udp))
            .expect("send");
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Every datagram the kernel handed over is counted, as read and handled or dropped.
    let settled = |h: &Hotdog| {
        let lines = h.stat("lines");
        std::thread::sleep(Duration::from_millis(300));
        lines == h.stat("lines")
    };
    assert!(crate::util::wait_until(
        Duration::from_secs(10),
        || settled(&hotdog)
    ));
    let (lines, dropped, submitted) = (
        hotdog.stat("lines"),
        hotdog.stat("udp.dropped"),
        hotdog.stat("kafka.submitted"),
    );
    assert!(dropped > 0, "nothing dropped with the queue full");
    // One warning for the first drop, not one per dropped batch: the log cannot flood.
    let warnings = hotdog
        .stderr()
        .lines()
        .filter(|l| l.contains("UDP") && l.contains("dropped"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} drop warnings for {dropped} drops"
    );
    assert!(lines > dropped, "{lines} {dropped}");
    // Every line is either handed to librdkafka, dropped, or still waiting: `buffer: 1` is one
    // record in the outbox, and the publisher holds one it retries.
    assert!(
        lines - dropped - submitted <= 2,
        "{lines} {dropped} {submitted}"
    );
}
