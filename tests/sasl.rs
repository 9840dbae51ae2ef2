//! Kafka with authentication: a broker that refuses hotdog's login shows on `/health` and in
//! the log, never as a silent stall, and the lines wait instead of being lost.
//!
//! The broker is tansu with `--authentication`. It offers SCRAM-SHA-256/512 and OAUTHBEARER.
//! Its memory storage keeps no SCRAM credentials, so it refuses every SCRAM login (as a broker
//! does a wrong password); its SQLite storage (tansu built with `libsql`) keeps the users
//! `tansu user create` makes, and a login with one succeeds.

use std::time::Duration;

use rdkafka::message::Message;

use crate::util::{free_port, start_tansu_sqlite, start_tansu_with, wait_until, Hotdog};

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

/// The tansu binary the tests use (as `util` finds it), to make users and topics.
fn tansu_cli(args: &[&str]) {
    let home = std::env::var("HOME").unwrap_or_default();
    let tansu = ["tansu".to_string(), format!("{home}/.cargo/bin/tansu")]
        .into_iter()
        .find(|t| {
            std::process::Command::new(t)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("tansu");
    let out = std::process::Command::new(&tansu)
        .args(args)
        .output()
        .expect("run tansu");
    assert!(
        out.status.success(),
        "tansu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// hotdog's configuration for a SCRAM-SHA-512 login as `hotdog` with the password in `file`.
fn scram_config(port: u16, file: &std::path::Path, topic: &str) -> String {
    format!(
        "global:\n  listen:\n    port: 0\n  kafka:\n    conf:\n      bootstrap.servers: \
         '127.0.0.1:{port}'\n      security.protocol: SASL_PLAINTEXT\n      sasl.mechanism: \
         SCRAM-SHA-512\n      sasl.username: hotdog\n      sasl.password_file: '{}'\n\n  \
         status:\n    port: 0\nrules:\n{}",
        file.display(),
        crate::util::forward_all(topic)
    )
}

/// A broker that requires SCRAM-SHA-512 and knows hotdog's user: every line arrives, read back
/// by a consumer that logs in too; the same hotdog with a wrong password is refused, says so on
/// `/health`, and delivers nothing.
#[test]
fn a_scram_login_delivers_every_line_and_a_wrong_password_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let broker = format!("tcp://127.0.0.1:{port}");
    // Users and topics are made while the broker lets anyone in (its command line cannot log
    // in), then it starts again on the same storage, requiring a login.
    {
        let _open = start_tansu_sqlite(port, dir.path(), "");
        tansu_cli(&[
            "user",
            "create",
            "hotdog",
            "s3cret-scram",
            "--broker",
            &broker,
            "--mechanism",
            "scram512",
        ]);
        tansu_cli(&[
            "topic",
            "create",
            "sasl-logs",
            "--partitions",
            "1",
            "--broker",
            &broker,
        ]);
    }
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    }));
    let _tansu = start_tansu_sqlite(port, dir.path(), "--authentication");

    let good = dir.path().join("good");
    std::fs::write(&good, "s3cret-scram\n").expect("write");
    let hotdog = Hotdog::start_config(&scram_config(port, &good, "sasl-logs"));
    let lines: Vec<String> = (0..50)
        .map(|i| format!("<13>host app: in seq={i}"))
        .collect();
    crate::util::send_lines(&format!("127.0.0.1:{}", hotdog.port), &lines);
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", 50, Duration::from_secs(30)),
        50,
        "{}",
        hotdog.stderr()
    );
    let (code, health) = hotdog.http_get("/health");
    assert_eq!(code, 200, "{health}");
    // Read back by a consumer that logs in as well.
    let mut config = crate::util::consumer_config(&format!("127.0.0.1:{port}"));
    config
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", "hotdog")
        .set("sasl.password", "s3cret-scram");
    let consumer = crate::util::partition_consumer(config, "sasl-logs");
    let mut keys = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while keys.len() < 50 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            keys.insert(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
        }
    }
    assert_eq!(keys.len(), 50, "read back {keys:?}");
    drop(hotdog);

    let bad = dir.path().join("bad");
    std::fs::write(&bad, "not-the-password\n").expect("write");
    let hotdog = Hotdog::start_config(&scram_config(port, &bad, "sasl-logs"));
    crate::util::send_lines(&format!("127.0.0.1:{}", hotdog.port), &lines);
    let mut health = (0, String::new());
    let said = wait_until(Duration::from_secs(30), || {
        health = hotdog.http_get("/health");
        health.0 == 503 && health.1.contains("authentication failed")
    });
    assert!(said, "/health: {health:?}\n{}", hotdog.stderr());
    assert!(!hotdog.stderr().contains("not-the-password"));
    assert_eq!(hotdog.stat("kafka.delivered"), 0);
    assert_eq!(
        hotdog.wait_stat("lines.in_flight", 50, Duration::from_secs(10)),
        50
    );

    // The password file is put right and hotdog reloaded: the file is read again, a new
    // producer logs in with it, and the 50 lines that waited arrive.
    std::fs::write(
        &bad,
        "s3cret-scram
",
    )
    .expect("write");
    let (code, answer) = hotdog.reload();
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["kafka_renewed"], true, "{answer}");
    assert_eq!(
        hotdog.wait_stat("kafka.delivered", 50, Duration::from_secs(60)),
        50,
        "{}",
        hotdog.stderr()
    );
    assert!(wait_until(Duration::from_secs(10), || hotdog
        .http_get("/health")
        .0
        == 200));
    assert_eq!(hotdog.stat("lines.in_flight"), 0);
    assert!(!hotdog.stderr().contains("s3cret-scram"));
    // A reload that changes nothing makes no new producer.
    let (code, answer) = hotdog.reload();
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["kafka_renewed"], false, "{answer}");
}
