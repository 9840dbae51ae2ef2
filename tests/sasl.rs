//! Kafka with authentication: a broker that refuses hotdog's login shows on `/health` and in
//! the log, never as a silent stall, and the lines wait instead of being lost.
//!
//! The broker is tansu with `--authentication`. It offers SCRAM-SHA-256/512 and OAUTHBEARER;
//! its memory storage keeps no SCRAM credentials, so it refuses every SCRAM login (as a broker
//! does a wrong password). A login that succeeds needs tansu's SQL storage (not built here).

use std::time::Duration;

use crate::util::{free_port, start_tansu_with, wait_until, Hotdog};

#[test]
fn a_refused_login_shows_on_health_and_in_the_log_and_loses_nothing() {
    let port = free_port();
    let _tansu = start_tansu_with(port, port, "--authentication");
    let secrets = tempfile::tempdir().expect("temp dir");
    std::fs::write(secrets.path().join("kafka"), "a-password-never-logged\n").expect("write");
    let yaml = format!(
        "global:\n  listen:\n    port: 0\n  kafka:\n    conf:\n      bootstrap.servers: \
         '127.0.0.1:{port}'\n      security.protocol: SASL_PLAINTEXT\n      sasl.mechanism: \
         SCRAM-SHA-512\n      sasl.username: hotdog\n      sasl.password_file: \
         '${{SECRETS}}/kafka'\n  status:\n    port: 0\nrules:\n{}",
        crate::util::forward_all("logs")
    );
    let dir = secrets.path().display().to_string();
    let hotdog = Hotdog::start_config_env(&yaml, &[("SECRETS", &dir)]);
    let lines: Vec<String> = (0..50).map(|i| format!("<13>hello seq={i}")).collect();
    crate::util::send_lines(&format!("127.0.0.1:{}", hotdog.port), &lines);

    let mut health = (0, String::new());
    let said = wait_until(Duration::from_secs(30), || {
        health = hotdog.http_get("/health");
        health.0 == 503
            && health
                .1
                .contains("refused hotdog's login (authentication failed)")
    });
    assert!(said, "/health: {health:?}\n{}", hotdog.stderr());
    assert!(health.1.contains("SCRAM"), "{health:?}");
    let log = hotdog.stderr();
    assert!(log.contains("SASL authentication error"), "{log}");
    assert!(!log.contains("a-password-never-logged"), "{log}");
    // The lines wait for a broker that lets hotdog in: none delivered, none dropped or lost.
    assert_eq!(
        hotdog.wait_stat("lines.in_flight", 50, Duration::from_secs(10)),
        50
    );
    assert_eq!(hotdog.stat("kafka.delivered"), 0);
    assert_eq!(
        hotdog.stat("udp.dropped") + hotdog.stat("kafka.dead_lettered"),
        0
    );
}
