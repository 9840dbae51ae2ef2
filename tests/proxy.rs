//! Behind a load balancer: a real HAProxy (Debian's) sends PROXY protocol v1 and v2 headers in
//! front of plain TCP and of TLS it passes through; the client's address it carries is
//! `peer_addr`. Headers from elsewhere, malformed ones, and a load balancer's connection
//! without one are refused and counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{
    cert_path, consume_all, free_port, fresh_topic, tls_connect, wait_for_port, wait_until, Hotdog,
};

/// HAProxy in the foreground, killed when dropped (and its configuration removed).
struct HaProxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy with one frontend per `(port, backend address, server options)`.
fn haproxy(routes: &[(u16, String, &str)]) -> HaProxy {
    let mut cfg = String::from(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
    );
    for (i, (port, backend, options)) in routes.iter().enumerate() {
        cfg.push_str(&format!(
            "frontend f{i}\n  bind 127.0.0.1:{port}\n  default_backend b{i}\nbackend b{i}\n  server hotdog {backend} {options}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).expect("write haproxy.cfg");
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .spawn()
        .expect("start haproxy (Debian package haproxy)");
    for (port, _, _) in routes {
        assert!(
            wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(10)),
            "haproxy does not listen on {port}"
        );
    }
    HaProxy { child, _dir: dir }
}

/// A TCP connection to `to` from the loopback address `from`.
pub(crate) fn connect_from(from: [u8; 4], to: &str) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((from, 0)).into())
        .expect("bind a loopback address");
    let to: SocketAddr = to.parse().expect("address");
    socket.connect(&to.into()).expect("connect");
    socket.into()
}

/// True when the server closes `s` within a few seconds without a byte.
fn refused(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut b = [0u8; 8];
    matches!(s.read(&mut b), Ok(0) | Err(_)) && {
        // A timeout is not a close.
        s.set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

#[test]
fn haproxy_passes_the_client_address_over_tcp_and_tls_and_strangers_are_refused() {
    let (b, topic) = fresh_topic("proxy");
    let yaml = format!(
        "global:\n  listen:\n    - port: 0\n      proxy_protocol:\n        from: ['127.0.0.1/32']\n    \
         - port: 0\n      proxy_protocol:\n        from: ['127.0.0.1']\n      tls:\n        cert: '{}'\n        key: '{}'\n        ca: '{}'\n  \
         kafka:\n    conf:\n      bootstrap.servers: '{b}'\n  status:\n    port: 0\nrules:\n  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n        key: '{{{{peer_addr}}}}|{{{{tls_client_cn}}}}'\n",
        cert_path("server.pem"),
        cert_path("server.key"),
        cert_path("ca.pem"),
    );
    let hotdog = Hotdog::start_config(&yaml);
    let (tcp, tls) = (hotdog.ports[0], hotdog.ports[1]);
    let (v1, v2, v2_tls) = (free_port(), free_port(), free_port());
    let _haproxy = haproxy(&[
        (v1, format!("127.0.0.1:{tcp}"), "send-proxy"),
        (v2, format!("127.0.0.1:{tcp}"), "send-proxy-v2"),
        (v2_tls, format!("127.0.0.1:{tls}"), "send-proxy-v2"),
    ]);

    let mut expected = Vec::new();
    for (port, version) in [(v1, "v1"), (v2, "v2")] {
        let mut s = connect_from([127, 0, 0, 2], &format!("127.0.0.1:{port}"));
        let me = s.local_addr().expect("local address");
        s.write_all(format!("<13>over {version}\n").as_bytes())
            .expect("send");
        drop(s);
        expected.push((format!("{me}|"), format!("over {version}")));
    }
    // TLS passed through: the handshake is with hotdog, behind the PROXY v2 header.
    let mut s = tls_connect(&format!("127.0.0.1:{v2_tls}"), Some("client")).expect("tls");
    let me = s.sock.local_addr().expect("local address");
    s.write_all(b"<13>over tls\n").expect("send");
    s.flush().expect("flush");
    s.conn.send_close_notify();
    let _ = s.conn.complete_io(&mut s.sock);
    expected.push((format!("{me}|tenant-a"), "over tls".to_string()));

    // Straight to hotdog from a host that is not a load balancer: plain syslog is welcome ...
    let mut direct = connect_from([127, 0, 0, 3], &format!("127.0.0.1:{tcp}"));
    let me = direct.local_addr().expect("local address");
    direct.write_all(b"<13>direct\n").expect("send");
    drop(direct);
    expected.push((format!("{me}|"), "direct".to_string()));
    // ... a PROXY header is not.
    let mut spoof = connect_from([127, 0, 0, 3], &format!("127.0.0.1:{tcp}"));
    spoof
        .write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 1111 1514\r\n<13>spoofed\n")
        .expect("send");
    assert!(
        refused(spoof),
        "a PROXY header from outside proxy_protocol.from was taken"
    );
    // From the load balancer's address: a header is required, and must be well formed.
    let mut bare = TcpStream::connect(format!("127.0.0.1:{tcp}")).expect("connect");
    bare.write_all(b"<13>no header\n").expect("send");
    assert!(
        refused(bare),
        "a connection from the load balancer without a header was taken"
    );
    let mut bad = TcpStream::connect(format!("127.0.0.1:{tcp}")).expect("connect");
    bad.write_all(b"PROXY TCP4 nonsense\r\n").expect("send");
    assert!(refused(bad), "a malformed PROXY header was taken");

    let mut got: Vec<(String, String)> = consume_all(b, &topic, expected.len())
        .into_iter()
        .map(|c| (c.key.unwrap_or_default(), c.payload))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert!(wait_until(Duration::from_secs(10), || {
        hotdog.stat("connections.refused.proxy_protocol") == 3
    }));
}

#[test]
fn limits_per_source_count_the_client_behind_the_load_balancer() {
    let (b, topic) = fresh_topic("proxy-limit");
    let yaml = format!(
        "global:\n  listen:\n    port: 0\n    max_connections_per_source: 1\n    proxy_protocol:\n      from: ['127.0.0.1/32']\n  \
         kafka:\n    conf:\n      bootstrap.servers: '{b}'\n  status:\n    port: 0\nrules:\n  - regex: '.*'\n    actions:\n      - type: forward\n        topic: '{topic}'\n"
    );
    let hotdog = Hotdog::start_config(&yaml);
    let lb = free_port();
    let _haproxy = haproxy(&[(lb, hotdog.addr(), "send-proxy-v2")]);
    let addr = format!("127.0.0.1:{lb}");
    // Two clients behind the one load balancer: each is its own source.
    let mut a = connect_from([127, 0, 0, 2], &addr);
    let mut b2 = connect_from([127, 0, 0, 3], &addr);
    a.write_all(b"<13>from a\n").expect("send");
    b2.write_all(b"<13>from b\n").expect("send");
    assert_eq!(
        hotdog.wait_stat("connections", 2, Duration::from_secs(30)),
        2
    );
    // A second connection of one client is over its limit.
    let mut again = connect_from([127, 0, 0, 2], &addr);
    let _ = again.write_all(b"<13>a again\n");
    assert!(wait_until(Duration::from_secs(10), || {
        hotdog.stat("connections.refused.source_limit") == 1
    }));
    // A client straight from elsewhere is counted at once, before it says anything.
    let silent = connect_from([127, 0, 0, 4], &hotdog.addr());
    let second = connect_from([127, 0, 0, 4], &hotdog.addr());
    assert!(
        refused(second),
        "a second silent connection from 127.0.0.4 was kept"
    );
    assert_eq!(hotdog.stat("connections.refused.source_limit"), 2);
    drop((a, b2, again, silent));
    let mut got: Vec<String> = consume_all(b, &topic, 2)
        .into_iter()
        .map(|c| c.payload)
        .collect();
    got.sort();
    assert_eq!(got, ["from a", "from b"]);
}
