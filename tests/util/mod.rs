//! Shared helpers for the integration tests: a real Kafka-protocol broker, the real `hotdog`
//! binary on free loopback ports, syslog senders, and a Kafka reader.
//!
//! The broker is the one named by `HOTDOG_TEST_KAFKA` (`host:port`), or else a `tansu` broker
//! started here with memory storage. When neither is possible the tests fail, loudly.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the helpers"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

pub const HOTDOG: &str = env!("CARGO_BIN_EXE_hotdog");

/// A port nothing listens on right now, for a program that must be told its port (tansu,
/// rsyslog's input): it is released before that program binds it, so another could take it in
/// between. hotdog itself binds port 0 and says which port it got; proxies bind port 0 too.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

/// Waits until `condition` holds, checking every 50 ms; false when `timeout` passed first.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_for_port(addr: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn tansu_binary() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("tansu")];
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/tansu"));
    }
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A tansu broker started by a test; stopped when dropped, or when the test process ends.
pub struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        // SIGTERM, so that the watchdog shell's trap stops the broker.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Starts a tansu broker on `port` that stops when this test process ends.
pub fn start_tansu(port: u16) -> Tansu {
    start_tansu_advertising(port, port)
}

/// Starts a tansu broker listening on `port` that tells clients to connect to `advertised`
/// (a proxy in front of it, for outage tests).
pub fn start_tansu_advertising(port: u16, advertised: u16) -> Tansu {
    start_tansu_with(port, advertised, "")
}

/// Starts a tansu broker as [`start_tansu_advertising`] does, with more `arguments`
/// (`--authentication`).
pub fn start_tansu_with(port: u16, advertised: u16, arguments: &str) -> Tansu {
    start_tansu_in(port, advertised, "memory://tansu/", arguments, None)
}

/// Starts a tansu broker on `port` whose storage is an SQLite file in `dir` (it keeps what it
/// was given when started again there, SCRAM users included), with more `arguments`.
pub fn start_tansu_sqlite(port: u16, dir: &Path, arguments: &str) -> Tansu {
    start_tansu_in(port, port, "sqlite://tansu.db", arguments, Some(dir))
}

fn start_tansu_in(
    port: u16,
    advertised: u16,
    storage: &str,
    arguments: &str,
    dir: Option<&Path>,
) -> Tansu {
    let tansu = tansu_binary().unwrap_or_else(|| {
        panic!(
            "no Kafka broker for the tests: set HOTDOG_TEST_KAFKA=host:port, or install tansu \
             (cargo install tansu --version 0.6.0 --locked --features dynostore,libsql)"
        )
    });
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised_url = format!("tcp://127.0.0.1:{advertised}");
    // A watchdog shell ends the broker when the test process is gone, even after a panic.
    let script = format!(
        "'{}' broker --listener-url {url} --advertised-listener-url {advertised_url} \
         --storage-engine {storage} {arguments} >/dev/null 2>&1 & b=$!; \
         trap 'kill $b 2>/dev/null' EXIT TERM; \
         while kill -0 {} 2>/dev/null && kill -0 $b 2>/dev/null; do sleep 0.5; done",
        tansu.display(),
        std::process::id()
    );
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).stdin(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let child = command.spawn().expect("start tansu");
    let addr = format!("127.0.0.1:{port}");
    let tansu = Tansu(child);
    assert!(
        wait_for_port(&addr, Duration::from_secs(20)),
        "tansu did not start listening on {addr}"
    );
    tansu
}

/// The broker every test shares: `host:port`.
pub fn broker() -> &'static str {
    static BROKER: OnceLock<String> = OnceLock::new();
    BROKER.get_or_init(|| {
        if let Ok(addr) = std::env::var("HOTDOG_TEST_KAFKA") {
            assert!(
                wait_for_port(&addr, Duration::from_secs(10)),
                "HOTDOG_TEST_KAFKA={addr} does not accept connections"
            );
            return addr;
        }
        let port = free_port();
        std::mem::forget(start_tansu(port));
        format!("127.0.0.1:{port}")
    })
}

/// A topic name no other test (or earlier run against the same broker) uses.
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The shared broker and a new topic on it.
pub fn fresh_topic(prefix: &str) -> (&'static str, String) {
    let b = broker();
    let topic = unique_topic(prefix);
    create_topics(b, &[&topic]);
    (b, topic)
}

/// Creates single-partition topics (tansu does not create them on first use).
pub fn create_topics(broker: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = smol::block_on(admin.create_topics(&new, &opts)).expect("create topics");
    for r in results {
        if let Err((topic, code)) = r {
            assert!(
                format!("{code:?}").contains("TopicAlreadyExists"),
                "cannot create topic {topic}: {code:?}"
            );
        }
    }
}

/// One message read back from Kafka. Two are equal when what hotdog made of a line is (the
/// timestamp, the time hotdog read it, is left out).
#[derive(Debug, Clone, Eq)]
pub struct Consumed {
    pub key: Option<String>,
    pub payload: String,
    /// The payload's bytes as they are (`payload` replaces what is not UTF-8).
    pub bytes: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// The Kafka message timestamp (ms), when it has one.
    pub timestamp: Option<i64>,
    /// Where it is in its partition.
    pub offset: i64,
}

impl PartialEq for Consumed {
    fn eq(&self, other: &Self) -> bool {
        (&self.key, &self.bytes, &self.headers) == (&other.key, &other.bytes, &other.headers)
    }
}

/// Reads partition 0 of `topic` from the beginning until `want` messages arrived, or nothing new
/// came for `quiet` after the last one (or at all within `timeout`).
pub fn consume(broker: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Consumed> {
    read_partition(broker, topic, timeout, |got, _| got >= want)
}

/// A consumer's settings for the tests: `broker`, a group of its own, no commits (groups are
/// not relied on: consumers are assigned their partition).
pub fn consumer_config(broker: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker)
        .set("group.id", format!("hotdog-test-{}", unique_topic("g")))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    config
}

/// A consumer made of `config`, reading partition 0 of `topic` from the beginning.
pub fn partition_consumer(config: ClientConfig, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition list");
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// Reads partition 0 of `topic` from the beginning until `done(messages so far, time since
/// the last one)` or `timeout`.
fn read_partition(
    broker: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(usize, Duration) -> bool,
) -> Vec<Consumed> {
    let consumer = partition_consumer(consumer_config(broker), topic);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut last = Instant::now();
    while !done(out.len(), last.elapsed()) && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), text(h.value).unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Consumed {
                    key: text(m.key()),
                    payload: text(m.payload()).unwrap_or_default(),
                    bytes: m.payload().unwrap_or_default().to_vec(),
                    headers,
                    timestamp: m.timestamp().to_millis(),
                    offset: m.offset(),
                });
            }
            Some(Err(e)) => eprintln!("consumer error on {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Reads partition 0 of `topic` from the beginning until at least `at_least` messages came
/// and then nothing new for `quiet` (or `timeout` passed): every message there, duplicates
/// included.
pub fn consume_until_quiet(
    broker: &str,
    topic: &str,
    at_least: usize,
    quiet: Duration,
    timeout: Duration,
) -> Vec<Consumed> {
    read_partition(broker, topic, timeout, |got, since_last| {
        got >= at_least && since_last >= quiet
    })
}

/// The keys of the first `expected` records on `topic`, sorted (for records whose order across
/// connections is not defined).
pub fn sorted_keys(broker: &str, topic: &str, expected: usize) -> Vec<String> {
    let mut keys: Vec<String> = consume_all(broker, topic, expected)
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    keys.sort();
    keys
}

/// Reads what arrives on `topic` for a while, to show that nothing more than `expected` came.
pub fn consume_all(broker: &str, topic: &str, expected: usize) -> Vec<Consumed> {
    let mut got = consume(broker, topic, expected, Duration::from_secs(60));
    if got.len() == expected {
        got.extend(
            consume(broker, topic, expected + 1, Duration::from_secs(2))
                .into_iter()
                .skip(expected),
        );
    }
    got
}

/// A running `hotdog`, killed when dropped.
pub struct Hotdog {
    pub child: Child,
    /// The ports its listeners bound, in the order of `global.listen`.
    pub ports: Vec<u16>,
    /// The first listener's port.
    pub port: u16,
    /// The status server's port (0 when there is none).
    pub status_port: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    stderr: Arc<Mutex<String>>,
}

/// A config with `global` filled in for a test (one TCP listener and the status server, both
/// on port 0: hotdog picks free ports and logs them); `rules` is appended as written.
pub fn config_yaml(broker: &str, extra_global: &str, rules: &str) -> String {
    format!(
        "global:\n  listen:\n    address: '127.0.0.1'\n    port: 0\n  kafka:\n    conf:\n      \
         bootstrap.servers: '{broker}'\n      linger.ms: '5'\n    topic: 'fallback'\n    \
         buffer: 1024\n  status:\n    address: '127.0.0.1'\n    port: 0\n{extra_global}\
         rules:\n{rules}"
    )
}

/// A rule that forwards every line with a `seq=N` to `topic`, keyed by N.
pub fn forward_all(topic: &str) -> String {
    format!("  - regex: 'seq=(?P<seq>\\d+)'\n    actions:\n      - type: forward\n        topic: '{topic}'\n        key: '{{{{seq}}}}'\n")
}

/// A config whose lines all go to `missing`, a topic the broker does not have (tansu never
/// creates one on first use), with `dead` as the dead-letter topic: every line becomes a dead
/// letter within a second.
pub fn unknown_topic_config(broker: &str, missing: &str, dead: &str) -> String {
    missing_topics_fail_fast(&config_yaml(broker, "", &forward_all(missing))).replace(
        "    topic: 'fallback'\n",
        &format!("    topic: 'fallback'\n    dead_letter:\n      topic: '{dead}'\n"),
    )
}

/// `yaml` (from [`config_yaml`]) in which a record for a topic the broker does not have fails
/// within a second, instead of waiting for the topic to appear.
pub fn missing_topics_fail_fast(yaml: &str) -> String {
    yaml.replace(
        "      linger.ms: '5'\n",
        "      linger.ms: '5'\n      topic.metadata.propagation.max.ms: '1000'\n",
    )
}

/// `yaml` (from [`config_yaml`]) with `file` as the dead-letter file.
pub fn with_dead_letter_file(yaml: &str, file: &std::path::Path) -> String {
    yaml.replace(
        "    topic: 'fallback'\n",
        &format!(
            "    topic: 'fallback'\n    dead_letter:\n      file: '{}'\n",
            file.display()
        ),
    )
}

/// The ports in hotdog's "listening on tcp 127.0.0.1:P, udp 127.0.0.1:Q with N rules" line.
fn listening_ports(log: &str) -> Option<Vec<u16>> {
    let line = log.lines().find(|l| l.contains(" listening on "))?;
    let (_, rest) = line.split_once(" listening on ")?;
    let (listeners, _) = rest.rsplit_once(" with ")?;
    listeners
        .split(", ")
        .map(|l| l.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .collect()
}

/// The port in hotdog's "status server on http://127.0.0.1:P/stats" line; 0 without one.
fn status_port(log: &str) -> u16 {
    log.lines()
        .find_map(|l| l.split_once("status server on "))
        .and_then(|(_, rest)| rest.split_once("://"))
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|addr| addr.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0)
}

impl Hotdog {
    /// Starts hotdog with `rules` (YAML list items) against `broker`, waiting until it listens.
    pub fn start(broker: &str, rules: &str) -> Hotdog {
        Self::start_with(broker, "", rules)
    }

    pub fn start_with(broker: &str, extra_global: &str, rules: &str) -> Hotdog {
        Self::start_config(&config_yaml(broker, extra_global, rules))
    }

    /// Starts hotdog with the whole configuration `yaml`, waiting until it listens (its log
    /// says on which ports).
    pub fn start_config(yaml: &str) -> Hotdog {
        Self::start_config_env(yaml, &[])
    }

    /// Like [`Hotdog::start_config`], with more environment variables.
    pub fn start_config_env(yaml: &str, env: &[(&str, &str)]) -> Hotdog {
        assert!(
            cfg!(feature = "test-hooks") || !env.iter().any(|(k, _)| k.starts_with("HOTDOG_TEST_")),
            "this test needs hotdog's test hooks: run dev/test.sh (cargo test --features test-hooks)"
        );
        Self::start_command(Command::new(HOTDOG), yaml, env)
    }

    /// Like [`Hotdog::start_config`], with at most `files` open file descriptors (`ulimit -n`).
    pub fn start_config_nofile(yaml: &str, files: u32) -> Hotdog {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
            .arg(HOTDOG);
        Self::start_command(sh, yaml, &[])
    }

    /// Starts `command` (hotdog, or what execs it) with `-c CONFIG`.
    fn start_command(mut command: Command, yaml: &str, env: &[(&str, &str)]) -> Hotdog {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("hotdog.yml");
        std::fs::write(&config, yaml).expect("write config");
        let mut child = command
            .arg("-c")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("KAFKA_BROKER")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hotdog");
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("[hotdog] {line}");
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        let log = || stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(20);
        let ports = loop {
            if let Some(ports) = listening_ports(&log()) {
                break ports;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!("hotdog exited ({status}) before listening:\n{}", log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hotdog did not say where it listens:\n{}", log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let status_port = status_port(&log());
        Hotdog {
            child,
            port: ports[0],
            ports,
            status_port,
            dir,
            config,
            stderr,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What hotdog has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// `GET path` on the status server: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(&format!("127.0.0.1:{}", self.status_port), path)
    }

    /// `POST /reload`: (status code, the JSON answer).
    pub fn reload(&self) -> (u16, serde_json::Value) {
        let (code, body) = http(
            &format!("127.0.0.1:{}", self.status_port),
            "POST",
            "/reload",
        );
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (code, v)
    }

    /// Replaces the configuration file (hotdog reads it on reload).
    pub fn rewrite_config(&self, yaml: &str) {
        // Written beside it, then renamed over it, as editors and deploy tools do.
        let new = self.dir.path().join("hotdog.yml.new");
        std::fs::write(&new, yaml).expect("write config");
        std::fs::rename(&new, &self.config).expect("replace config");
    }

    /// One counter from `/stats`.
    pub fn stat(&self, name: &str) -> i64 {
        let (code, body) = self.http_get("/stats");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
        v["stats"][name].as_i64().unwrap_or(0)
    }

    /// Polls `/stats` until `name` reaches `at_least`.
    pub fn wait_stat(&self, name: &str, at_least: i64, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name);
            if v >= at_least || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until hotdog has logged `text`.
    pub fn wait_log(&self, text: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr().contains(text))
    }

    /// Sends `signal` (e.g. "TERM") with kill(1).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} failed");
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the stderr reader catch up.
                std::thread::sleep(Duration::from_millis(200));
                return (status, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "hotdog did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Hotdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET, so the tests need no HTTP client of their own.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path)
}

/// A minimal HTTP/1.0 request without a body: (status code, body).
pub fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the status server");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let (code, _, body) = http_over(&mut s, method, path, "");
    (code, body)
}

/// A minimal HTTP/1.0 request without a body over `s`, with `headers` (each ending in CRLF):
/// (status code, the head, the body).
pub fn http_over(
    s: &mut (impl Read + Write),
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String, String) {
    let request = format!("{method} {path} HTTP/1.0\r\nHost: test\r\n{headers}\r\n");
    // A server that refused us (a TLS client certificate it does not trust) answers nothing.
    if s.write_all(request.as_bytes())
        .and_then(|()| s.flush())
        .is_err()
    {
        return (0, String::new(), String::new());
    }
    let mut bytes = Vec::new();
    // A TLS peer may close without close_notify once it has answered: what was read counts.
    let _ = s.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (code, head.to_string(), body.to_string())
}

/// Sends `lines` newline-delimited over one connection, then closes it.
pub fn send_lines(addr: &str, lines: &[String]) {
    let mut s = TcpStream::connect(addr).expect("connect to hotdog");
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(l.as_bytes());
        buf.push(b'\n');
    }
    s.write_all(&buf).expect("send");
    let _ = s.shutdown(Shutdown::Write);
    // Wait for hotdog to close its side: it has read everything.
    let _ = s.read_to_end(&mut Vec::new());
}

/// Sends `lines` RFC 6587 octet-counted over one connection, then closes it.
pub fn send_octet_counted(addr: &str, lines: &[String]) {
    let mut s = TcpStream::connect(addr).expect("connect to hotdog");
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(format!("{} {l}", l.len()).as_bytes());
    }
    s.write_all(&buf).expect("send");
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.read_to_end(&mut Vec::new());
}

/// Runs the hotdog binary with `args`: (exit code, stdout, stderr).
pub fn run_hotdog(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(HOTDOG)
        .args(args)
        .env_remove("KAFKA_BROKER")
        .output()
        .expect("run hotdog");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A TCP forwarder on a port of its own (bound at once, so nothing else can take it) to the
/// broker, to make the broker appear later or go away for a while. While it has no target it
/// accepts connections and closes them at once: nothing is there. Dropping it closes the port.
pub struct Proxy {
    pub port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// While set, what the target answers is thrown away (see [`Proxy::lose_answers`]).
    losing: Arc<std::sync::atomic::AtomicBool>,
    /// A slow broker: answers delayed, requests paced (see [`Proxy::slow`]).
    slow: Arc<Slow>,
    target: Arc<Mutex<Option<String>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// A proxy with nothing behind it yet.
    pub fn bind() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let target: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let losing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let slow = Arc::new(Slow::default());
        let (flag, to, open, lose) = (stop.clone(), target.clone(), conns.clone(), losing.clone());
        let slowed = slow.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let target = to.lock().ok().and_then(|t| t.clone());
                        let Some(target) = target else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        let _ = client.set_nonblocking(false);
                        if let Ok(upstream) = TcpStream::connect(&target) {
                            if let (Ok(a), Ok(b), Ok(mut list)) =
                                (client.try_clone(), upstream.try_clone(), open.lock())
                            {
                                list.push(a);
                                list.push(b);
                            }
                            pipe(client, upstream, lose.clone(), slowed.clone());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Proxy {
            port,
            stop,
            losing,
            slow,
            target,
            conns,
        }
    }

    /// A proxy to `target` from the start.
    pub fn start(target: &str) -> Proxy {
        let p = Proxy::bind();
        p.forward_to(target);
        p
    }

    /// Forwards new connections to `target` from now on.
    pub fn forward_to(&self, target: &str) {
        if let Ok(mut t) = self.target.lock() {
            *t = Some(target.to_string());
        }
    }

    /// Cuts every connection through it and forwards nothing until [`Proxy::forward_to`].
    pub fn cut(&self) {
        if let Ok(mut t) = self.target.lock() {
            *t = None;
        }
        if let Ok(mut list) = self.conns.lock() {
            for c in list.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// From now on (`true`) requests still reach the target but its answers are thrown away,
    /// as a network that loses packets one way would; `false` ends that for new connections.
    /// A connection that lost part of an answer cannot be understood again: it keeps losing
    /// them until the client gives up on it and connects again.
    pub fn lose_answers(&self, on: bool) {
        self.losing.store(on, Ordering::Relaxed);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// From now on, every answer reaches the client `delay` after the target sent it, and
    /// requests pass at most `bytes_per_second` per connection: a broker that is slow, as one
    /// far away or overloaded is.
    pub fn slow(&self, delay: Duration, bytes_per_second: u64) {
        self.slow
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
        self.slow.rate.store(bytes_per_second, Ordering::Relaxed);
    }
}

/// How slow a [`Proxy`] makes its target.
#[derive(Default)]
struct Slow {
    delay_ms: std::sync::atomic::AtomicU64,
    /// Bytes a second a connection's requests may pass; 0: as fast as they come.
    rate: std::sync::atomic::AtomicU64,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

/// Copies `client` → `upstream` and back; answers (upstream → client) are lost while `losing`,
/// and both ways are as slow as `slow` says.
fn pipe(
    client: TcpStream,
    upstream: TcpStream,
    losing: Arc<std::sync::atomic::AtomicBool>,
    slow: Arc<Slow>,
) {
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let mut requests = (client, u2);
    let paced = slow.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        let started = Instant::now();
        let mut passed = 0u64;
        loop {
            let n = match requests.0.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if requests.1.write_all(&buf[..n]).is_err() {
                break;
            }
            passed += n as u64;
            let rate = paced.rate.load(Ordering::Relaxed);
            if rate > 0 {
                let due = started + Duration::from_secs_f64(passed as f64 / rate as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        let _ = requests.1.shutdown(Shutdown::Both);
    });
    let (mut from, mut to) = (upstream, c2);
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut lost = false;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            lost = lost || losing.load(Ordering::Relaxed);
            if !lost && tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((at, bytes)) = rx.recv() {
            let due = at + Duration::from_millis(slow.delay_ms.load(Ordering::Relaxed));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// The test PKI in `certs/`.
pub fn cert_path(name: &str) -> String {
    format!("{}/certs/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A TLS client that trusts the test CA, optionally presenting `certs/<client>.pem` and `.key`.
/// The handshake is driven to its end here; what the server thinks of the client certificate
/// may only show on the first read (TLS 1.3).
pub fn tls_connect(
    addr: &str,
    client: Option<&str>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert_path("ca.pem")).expect("ca.pem") {
        roots.add(c.expect("CA certificate")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let certs: Vec<_> = CertificateDer::pem_file_iter(cert_path(&format!("{name}.pem")))
                .expect("client certificate")
                .map(|c| c.expect("client certificate PEM"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(cert_path(&format!("{name}.key")))
                .expect("client key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client auth")
        }
    };
    let name = ServerName::try_from("localhost").expect("server name");
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Sends `lines` octet-counted over TLS, then closes; an error when the server refused us.
pub fn send_tls(addr: &str, client: Option<&str>, lines: &[String]) -> std::io::Result<()> {
    let mut s = tls_connect(addr, client)?;
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(format!("{} {l}", l.len()).as_bytes());
    }
    s.write_all(&buf)?;
    s.flush()?;
    s.conn.send_close_notify();
    s.conn.complete_io(&mut s.sock)?;
    // Wait for the server to close: it has read everything (or it refused us: an error).
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(())
}

/// The subject CN of the certificate the server presented.
pub fn server_cn(stream: &rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> String {
    let certs = stream
        .conn
        .peer_certificates()
        .expect("server certificates");
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref()).expect("parse");
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    cn
}

/// What arrived for sequence numbers `0..n`, read back from the keys of `records`.
pub struct Tally {
    pub delivered: usize,
    pub missing: Vec<usize>,
    pub duplicated: usize,
    /// True when the keys are in the order they were sent (a duplicate aside).
    pub in_order: bool,
    /// The first places where they are not: (earlier key, later key).
    pub inversions: Vec<(usize, usize)>,
    /// True when the records' timestamps (the time hotdog read the line) never go back.
    pub read_order: bool,
}

pub fn tally(records: &[Consumed], n: usize) -> Tally {
    let seqs: Vec<usize> = records
        .iter()
        .filter_map(|r| r.key.as_deref()?.parse().ok())
        .collect();
    let mut seen = vec![0usize; n];
    for &s in &seqs {
        if s < n {
            seen[s] += 1;
        }
    }
    let first_seen: Vec<usize> = {
        let mut once = vec![false; n];
        seqs.iter()
            .copied()
            .filter(|&s| s < n && !std::mem::replace(&mut once[s], true))
            .collect()
    };
    Tally {
        delivered: seqs.len(),
        missing: (0..n).filter(|&i| seen[i] == 0).collect(),
        duplicated: seen.iter().map(|&c| c.saturating_sub(1)).sum(),
        in_order: first_seen.windows(2).all(|w| w[0] < w[1]),
        inversions: first_seen
            .windows(2)
            .filter(|w| w[0] > w[1])
            .map(|w| (w[0], w[1]))
            .take(10)
            .collect(),
        read_order: records.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
    }
}

/// Debian's rsyslogd in the foreground with a configuration of the test's, killed when dropped.
pub struct Rsyslog(Child);

impl Rsyslog {
    /// Runs rsyslogd with `conf` (written to `dir`), waiting until its input listens on
    /// `input_port`.
    pub fn start(dir: &std::path::Path, conf: &str, input_port: u16) -> Rsyslog {
        let path = dir.join("rsyslog.conf");
        std::fs::write(&path, conf).expect("write rsyslog.conf");
        // Debian installs it in /usr/sbin, which is not on every PATH.
        let binary = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("rsyslogd");
        let child = Command::new(binary)
            .arg("-n")
            .arg("-f")
            .arg(&path)
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run rsyslogd ({e}): install rsyslog, rsyslog-gnutls and rsyslog-relp (dev/test.sh does)")
            });
        let r = Rsyslog(child);
        assert!(
            wait_for_port(&format!("127.0.0.1:{input_port}"), Duration::from_secs(20)),
            "rsyslogd did not listen on {input_port}"
        );
        r
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tansu broker of the test's own behind a proxy (it tells clients to come through the
/// proxy), a topic on it, and the broker's own address (to [`Proxy::forward_to`] again after a
/// [`Proxy::cut`]).
pub fn proxied_broker(prefix: &str) -> (Proxy, Tansu, String, String) {
    let proxy = Proxy::bind();
    let real = free_port();
    let tansu = start_tansu_advertising(real, proxy.port);
    let target = format!("127.0.0.1:{real}");
    proxy.forward_to(&target);
    let topic = unique_topic(prefix);
    create_topics(&proxy.addr(), &[&topic]);
    (proxy, tansu, topic, target)
}

/// Resident memory of a process, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Sends lines (every third an error) in batches of 30 until `stop`: how many were sent.
pub fn keep_sending(
    addr: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let lines: Vec<String> = (sent..sent + 30)
                .map(|i| match i % 3 {
                    0 => format!("<11>host app: error seq={i}"),
                    _ => format!("<13>host app: fine seq={i}"),
                })
                .collect();
            send_lines(&addr, &lines);
            sent += 30;
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    })
}
