//! The real rsyslogd from Debian forwarding to hotdog over TLS with a client certificate,
//! configured with `contrib/rsyslog/60-hotdog.conf` as shipped.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;

use crate::util::{cert_path, consume_all, free_port, fresh_topic, Hotdog, Rsyslog};

fn start_rsyslog(dir: &std::path::Path, input_port: u16, hotdog_tls_port: u16) -> Rsyslog {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/rsyslog/60-hotdog.conf"
    ))
    .expect("contrib/rsyslog/60-hotdog.conf");
    let certs = format!("{}/", cert_path(""));
    let forward = shipped
        .replace("/etc/rsyslog.d/hotdog/", &certs)
        .replace("target=\"hotdog.example.com\"", "target=\"127.0.0.1\"")
        .replace("hotdog.example.com", "localhost")
        .replace("port=\"6514\"", &format!("port=\"{hotdog_tls_port}\""));
    let conf = format!(
        "global(workDirectory=\"{}\")\nmodule(load=\"imptcp\")\ninput(type=\"imptcp\" address=\"127.0.0.1\" port=\"{input_port}\")\n{forward}",
        dir.display()
    );
    Rsyslog::start(dir, &conf, input_port)
}

#[test]
fn rsyslog_forwards_over_tls_with_a_client_certificate() {
    let (b, topic) = fresh_topic("rsyslog");
    let yaml = format!(
        "global:\n  listen:\n    port: 0\n    tls:\n      cert: '{}'\n      key: '{}'\n      ca: '{}'\n  kafka:\n    conf:\n      bootstrap.servers: '{b}'\n  status:\n    port: 0\nrules:\n  - regex: 'seq=(?P<seq>\\d+)'\n    actions:\n      - type: forward\n        topic: '{topic}'\n        key: '{{{{seq}}}}|{{{{tls_client_cn}}}}|{{{{appname}}}}'\n",
        cert_path("server.pem"),
        cert_path("server.key"),
        cert_path("ca.pem"),
    );
    let hotdog = Hotdog::start_config(&yaml);
    let tls = hotdog.port;
    let dir = tempfile::tempdir().expect("temp dir");
    let input = free_port();
    let _rsyslog = start_rsyslog(dir.path(), input, tls);
    const N: usize = 5000;
    let mut s = TcpStream::connect(("127.0.0.1", input)).expect("connect to rsyslog");
    let mut text = String::new();
    for i in 0..N {
        text.push_str(&format!(
            "<13>Oct 11 22:14:15 host1 testapp[7]: seq={i} through rsyslog\n"
        ));
    }
    s.write_all(text.as_bytes()).expect("send to rsyslog");
    drop(s);
    let got = consume_all(b, &topic, N);
    if got.len() != N {
        let seen: BTreeSet<usize> = got
            .iter()
            .filter_map(|r| r.key.as_deref()?.split('|').next()?.parse().ok())
            .collect();
        let missing: Vec<usize> = (0..N).filter(|i| !seen.contains(i)).collect();
        panic!(
            "{} of {N} lines arrived; hotdog read {} lines; missing: {:?}",
            got.len(),
            hotdog.stat("lines"),
            &missing[..missing.len().min(40)]
        );
    }
    let seqs: BTreeSet<usize> = got
        .iter()
        .map(|r| {
            let key = r.key.as_deref().expect("key");
            let mut parts = key.split('|');
            let seq = parts.next().and_then(|s| s.parse().ok()).expect("seq");
            assert_eq!(parts.next(), Some("tenant-a"), "{key}");
            assert_eq!(parts.next(), Some("testapp"), "{key}");
            seq
        })
        .collect();
    assert_eq!(seqs.len(), N);
    assert_eq!(hotdog.stat("error.log_parse"), 0);
    assert!(hotdog.stat("tls.handshakes") >= 1);
}
