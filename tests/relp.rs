//! RELP: Debian's rsyslogd with omrelp (librelp's client) forwards to hotdog's `protocol: relp`
//! listener, plain and over TLS with a client certificate, into a real broker. A message is
//! answered only once Kafka has its record, so a sender loses nothing when hotdog is killed or
//! the broker goes away. Raw clients that break the protocol are refused without harm to a good
//! session next to them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::{
    cert_path, config_yaml, consume_until_quiet, forward_all, free_port, fresh_topic,
    proxied_broker, tally, wait_until, Consumed, Hotdog, Proxy, Rsyslog, Tally,
};

/// rsyslogd reading lines on `input` (imptcp) and sending them with omrelp to `hotdog_port`,
/// with `omrelp_extra` added to the action (TLS settings). Its queue holds what hotdog has not
/// taken yet, and it retries for ever, once a second.
pub(crate) fn rsyslog_to_relp(
    dir: &std::path::Path,
    input: u16,
    hotdog_port: u16,
    omrelp_extra: &str,
) -> Rsyslog {
    let conf = format!(
        "global(workDirectory=\"{}\")\nmodule(load=\"imptcp\")\nmodule(load=\"omrelp\")\n\
         input(type=\"imptcp\" address=\"127.0.0.1\" port=\"{input}\" ruleset=\"relp\")\n\
         ruleset(name=\"relp\") {{\n  action(type=\"omrelp\" target=\"127.0.0.1\" \
         port=\"{hotdog_port}\" {omrelp_extra} queue.type=\"LinkedList\" queue.size=\"500000\" \
         action.resumeRetryCount=\"-1\" action.resumeInterval=\"1\")\n}}\n",
        dir.display()
    );
    Rsyslog::start(dir, &conf, input)
}

/// A config with one RELP listener (over TLS with `tls`) on `port` (0: any), forwarding every
/// `seq=N` line to `topic` keyed by N, with the client certificate's CN in the header `cn`.
pub(crate) fn relp_config(broker: &str, port: u16, tls: &str, topic: &str) -> String {
    let rules = format!(
        "{}        headers: {{cn: '{{{{tls_client_cn}}}}'}}\n",
        forward_all(topic)
    );
    config_yaml(broker, "", &rules).replace(
        "    port: 0\n  kafka:",
        &format!("    port: {port}\n    protocol: relp\n{tls}  kafka:"),
    )
}

/// Lines `from..to` with their sequence numbers, as a sender would write them to rsyslog.
fn lines(from: usize, to: usize) -> Vec<u8> {
    (from..to)
        .flat_map(|i| {
            format!("<13>Oct 11 22:14:15 host1 relptest[7]: seq={i} over RELP\n").into_bytes()
        })
        .collect()
}

/// Sends lines `0..n` to rsyslog's input in chunks, calling `between(lines sent)` after each.
pub(crate) fn feed(input: u16, n: usize, chunk: usize, mut between: impl FnMut(usize)) {
    let mut s = TcpStream::connect(("127.0.0.1", input)).expect("connect to rsyslog");
    let mut sent = 0;
    while sent < n {
        let to = (sent + chunk).min(n);
        s.write_all(&lines(sent, to)).expect("send to rsyslog");
        sent = to;
        between(sent);
    }
}

/// Reads `topic` until `n` records came and then nothing for `quiet`, prints what arrived of
/// lines `0..n` as `what`, and fails when one is missing. Returns the records and their tally.
pub(crate) fn every_line_arrived(
    broker: &str,
    topic: &str,
    n: usize,
    quiet: Duration,
    what: &str,
) -> (Vec<Consumed>, Tally) {
    let got = consume_until_quiet(broker, topic, n, quiet, Duration::from_secs(180));
    let t = tally(&got, n);
    eprintln!(
        "{what}: sent {n}, delivered {}, duplicated {}, missing {}",
        t.delivered,
        t.duplicated,
        t.missing.len()
    );
    assert!(
        t.missing.is_empty(),
        "{what}: {} lines missing: {:?}",
        t.missing.len(),
        &t.missing[..t.missing.len().min(20)]
    );
    (got, t)
}

/// 100,000 lines from rsyslog's omrelp, `omrelp_extra` its TLS settings: every one in Kafka
/// exactly once, and every message answered.
fn exactly_once_through_omrelp(tls_listener: &str, omrelp_extra: &str) -> (Hotdog, Vec<Consumed>) {
    const N: usize = 100_000;
    let (b, topic) = fresh_topic("relp");
    let hotdog = Hotdog::start_config(&relp_config(b, 0, tls_listener, &topic));
    let dir = tempfile::tempdir().expect("temp dir");
    let input = free_port();
    let _rsyslog = rsyslog_to_relp(dir.path(), input, hotdog.port, omrelp_extra);
    feed(input, N, 10_000, |_| {});
    let (got, t) = every_line_arrived(b, &topic, N, Duration::from_secs(3), "omrelp");
    assert_eq!(t.duplicated, 0, "duplicates with no failure");
    assert_eq!(
        hotdog.wait_stat("relp.acknowledged", N as i64, Duration::from_secs(30)),
        N as i64
    );
    assert_eq!(hotdog.stat("relp.messages"), N as i64);
    assert_eq!(hotdog.stat("relp.outstanding"), 0);
    assert_eq!(hotdog.stat("relp.refused"), 0);
    assert!(hotdog.stat("relp.sessions.total") >= 1);
    (hotdog, got)
}

#[test]
fn omrelp_lines_arrive_exactly_once_and_every_message_is_answered() {
    let (hotdog, got) = exactly_once_through_omrelp("", "");
    assert!(got
        .iter()
        .all(|r| r.headers == [("cn".to_string(), String::new())]));
    let (_, metrics) = hotdog.http_get("/metrics");
    assert!(
        metrics.contains("hotdog_relp_acknowledged_total 100000"),
        "{metrics}"
    );
}

#[test]
fn omrelp_over_tls_with_a_client_certificate_arrives_exactly_once() {
    let tls = format!(
        "    tls:\n      cert: '{}'\n      key: '{}'\n      ca: '{}'\n",
        cert_path("server.pem"),
        cert_path("server.key"),
        cert_path("ca.pem"),
    );
    let omrelp = format!(
        "tls=\"on\" tls.caCert=\"{}\" tls.myCert=\"{}\" tls.myPrivKey=\"{}\" \
         tls.authMode=\"name\" tls.permittedPeer=[\"localhost\"]",
        cert_path("ca.pem"),
        cert_path("client.pem"),
        cert_path("client.key"),
    );
    let (hotdog, got) = exactly_once_through_omrelp(&tls, &omrelp);
    assert!(hotdog.stat("tls.handshakes") >= 1);
    // The client certificate names the sender, for rules and templates.
    let cn = [("cn".to_string(), "tenant-a".to_string())];
    assert!(got.iter().all(|r| r.headers == cn), "{:?}", got[0].headers);
}

/// hotdog is killed with SIGKILL in the middle of 200,000 lines and started again on the same
/// port: omrelp sends what was not answered again, and every line arrives.
#[test]
fn hotdog_killed_mid_stream_and_started_again_loses_no_line() {
    const N: usize = 200_000;
    let (b, topic) = fresh_topic("relp-kill");
    let port = free_port();
    let yaml = relp_config(b, port, "", &topic);
    let mut hotdog = Some(Hotdog::start_config(&yaml));
    let dir = tempfile::tempdir().expect("temp dir");
    let input = free_port();
    let _rsyslog = rsyslog_to_relp(dir.path(), input, port, "");
    let mut killed_at = None;
    feed(input, N, 5_000, |sent| {
        let Some(h) = &mut hotdog else { return };
        if sent >= N / 4 && killed_at.is_none() {
            // Kill it once it has answered some and holds more.
            h.wait_stat("relp.acknowledged", 20_000, Duration::from_secs(60));
            let acknowledged = h.stat("relp.acknowledged");
            h.child.kill().expect("SIGKILL hotdog");
            let _ = h.child.wait();
            killed_at = Some(acknowledged);
            eprintln!("killed hotdog after {acknowledged} messages were answered, {sent} sent");
            hotdog = None;
            std::thread::sleep(Duration::from_secs(1));
            hotdog = Some(Hotdog::start_config(&yaml));
        }
    });
    assert!(killed_at.is_some(), "hotdog was never killed");
    every_line_arrived(b, &topic, N, Duration::from_secs(5), "SIGKILL");
}

/// The broker is unreachable for 15 s in the middle of a paced stream: while it is away no
/// message is answered (the sender holds its lines), and afterwards every line arrives.
#[test]
fn broker_away_for_15s_holds_the_answers_and_loses_no_line() {
    const N: usize = 30_000;
    let (proxy, _tansu, topic, target) = proxied_broker("relp-outage");
    let b = proxy.addr();
    let hotdog = Hotdog::start_config(&relp_config(&b, 0, "", &topic));
    let dir = tempfile::tempdir().expect("temp dir");
    let input = free_port();
    let _rsyslog = rsyslog_to_relp(dir.path(), input, hotdog.port, "");
    let start = Instant::now();
    let mut outage: Option<Instant> = None;
    let mut held = None;
    let mut back = false;
    // Checks that nothing was answered since 3 s into the outage, then ends it.
    let end_outage = |sent: usize, held: Option<i64>| {
        let acknowledged = hotdog.stat("relp.acknowledged");
        assert_eq!(
            Some(acknowledged),
            held,
            "messages were answered while Kafka was away"
        );
        let waiting = hotdog.stat("relp.outstanding");
        assert!(waiting > 0, "nothing waited for Kafka");
        eprintln!("outage ends after line {sent}: {acknowledged} answered, {waiting} waiting");
        proxy.forward_to(&target);
    };
    // 500 lines every 100 ms (5,000 a second); the outage begins after 3 s.
    feed(input, N, 500, |sent| {
        std::thread::sleep(Duration::from_millis(100));
        if outage.is_none() && start.elapsed() > Duration::from_secs(3) {
            proxy.cut();
            outage = Some(Instant::now());
            eprintln!("outage begins after line {sent}");
        }
        let Some(o) = outage else { return };
        if held.is_none() && o.elapsed() > Duration::from_secs(3) {
            held = Some(hotdog.stat("relp.acknowledged"));
        }
        if !back && o.elapsed() > Duration::from_secs(15) {
            end_outage(sent, held);
            back = true;
        }
    });
    if !back {
        let o = outage.expect("the outage began");
        while held.is_none() || o.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(100));
            if held.is_none() && o.elapsed() > Duration::from_secs(3) {
                held = Some(hotdog.stat("relp.acknowledged"));
            }
        }
        end_outage(N, held);
    }
    every_line_arrived(&b, &topic, N, Duration::from_secs(5), "outage");
    assert_eq!(
        hotdog.wait_stat("relp.acknowledged", N as i64, Duration::from_secs(60)),
        N as i64
    );
}

/// A RELP client of the test's own, to say what omrelp never would.
pub(crate) struct Client {
    s: TcpStream,
    txnr: u32,
    buf: Vec<u8>,
}

/// One frame as the server wrote it: (txnr, command, data).
pub(crate) type Frame = (u32, String, Vec<u8>);

impl Client {
    fn connect(addr: &str) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Client {
            s,
            txnr: 0,
            buf: Vec::new(),
        }
    }

    /// Connects and opens a session as librelp does.
    pub(crate) fn open(addr: &str) -> Client {
        let mut c = Client::connect(addr);
        c.command(
            "open",
            b"relp_version=0\nrelp_software=test\ncommands=syslog",
        );
        let (txnr, command, data) = c.frame().expect("an answer to open");
        let data = String::from_utf8_lossy(&data);
        assert_eq!((txnr, command.as_str()), (1, "rsp"));
        assert!(data.starts_with("200 OK\n"), "{data}");
        assert!(data.contains("commands=syslog"), "{data}");
        c
    }

    pub(crate) fn command(&mut self, command: &str, data: &[u8]) -> u32 {
        self.txnr += 1;
        let mut frame = format!("{} {command} {}", self.txnr, data.len()).into_bytes();
        if !data.is_empty() {
            frame.push(b' ');
            frame.extend_from_slice(data);
        }
        frame.push(b'\n');
        self.s.write_all(&frame).expect("send a frame");
        self.txnr
    }

    /// The next frame from the server; `None` when it closed the connection.
    pub(crate) fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.cut() {
                return Some(f);
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn cut(&mut self) -> Option<Frame> {
        let text = &self.buf;
        let mut fields = text.splitn(3, |b| *b == b' ');
        let txnr = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        let command = String::from_utf8_lossy(fields.next()?).into_owned();
        let rest = fields.next()?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let len: usize = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        let header = text.len() - rest.len() + digits;
        let data_at = if len == 0 { header } else { header + 1 };
        if text.len() < data_at + len + 1 {
            return None;
        }
        assert_eq!(text[data_at + len], b'\n', "a frame without its LF");
        let data = text[data_at..data_at + len].to_vec();
        self.buf.drain(..data_at + len + 1);
        Some((txnr, command, data))
    }

    /// Reads until the server closes: the frames it wrote.
    fn rest(&mut self) -> Vec<Frame> {
        std::iter::from_fn(|| self.frame()).collect()
    }
}

/// What a server that refused the session wrote last: its `serverclose` reason.
fn refusal(frames: &[Frame]) -> String {
    let last = frames.last().expect("a serverclose before the close");
    assert_eq!((last.0, last.1.as_str()), (0, "serverclose"), "{frames:?}");
    String::from_utf8_lossy(&last.2).into_owned()
}

/// The `serverclose` reason the server gives `client` once `send` has sent something broken.
fn refused(mut client: Client, send: impl FnOnce(&mut Client)) -> String {
    send(&mut client);
    refusal(&client.rest())
}

#[test]
fn broken_sessions_are_refused_without_harm_to_a_good_one() {
    let (b, topic) = fresh_topic("relp-bad");
    // Unrouted lines (no seq=) are answered too: nothing was to be delivered.
    let hotdog = Hotdog::start_config(&relp_config(b, 0, "", &topic));
    let addr = hotdog.addr();
    let mut good = Client::open(&addr);
    const N: usize = 2000;
    let good_session = std::thread::spawn(move || {
        let mut sent = Vec::new();
        let mut answered = Vec::new();
        for i in 0..N {
            let line = if i % 100 == 99 {
                format!("<13>unrouted {i}")
            } else {
                format!("<13>good seq={i}")
            };
            sent.push(good.command("syslog", line.as_bytes()));
            // A window of 128, as librelp's.
            while sent.len() - answered.len() >= 128 {
                answered.push(good.frame().expect("an answer"));
            }
        }
        while answered.len() < sent.len() {
            answered.push(good.frame().expect("an answer"));
        }
        good.command("close", b"");
        let closed = good.frame().expect("an answer to close");
        (sent, answered, closed)
    });
    let huge = refused(Client::open(&addr), |c| {
        c.s.write_all(b"2 syslog 999999999 ").expect("send")
    });
    assert!(huge.contains("999999999"), "{huge}");
    let garbage = refused(Client::connect(&addr), |c| {
        c.s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send")
    });
    assert!(garbage.contains("TXNR"), "{garbage}");
    let wrong_length = refused(Client::open(&addr), |c| {
        c.s.write_all(b"2 syslog 5 <13>too long for five\n")
            .expect("send")
    });
    assert!(wrong_length.contains("DATALEN"), "{wrong_length}");
    let before_open = refused(Client::connect(&addr), |c| {
        c.command("syslog", b"<13>seq=1");
    });
    assert!(before_open.contains("before open"), "{before_open}");
    let skipped = refused(Client::open(&addr), |c| {
        c.txnr += 1;
        c.command("syslog", b"<13>seq=1");
    });
    assert!(skipped.contains("was next"), "{skipped}");
    let (sent, answered, closed) = good_session.join().expect("the good session");
    let txnrs: Vec<u32> = answered.iter().map(|a| a.0).collect();
    assert_eq!(txnrs, sent, "answers in the order of the commands");
    assert!(
        answered.iter().all(|a| a.1 == "rsp" && a.2 == b"200 OK"),
        "every message answered 200 OK"
    );
    assert_eq!((closed.1.as_str(), closed.2.as_slice()), ("rsp", &b""[..]));
    assert_eq!(hotdog.stat("relp.refused"), 5);
    let routed = N - N / 100;
    let got = consume_until_quiet(
        b,
        &topic,
        routed,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    assert_eq!(
        got.len(),
        routed,
        "every routed line of the good session, once"
    );
    assert!(wait_until(Duration::from_secs(10), || hotdog
        .stat("relp.sessions")
        == 0));
}

/// Shutdown with the broker unreachable: nothing is answered, the session is told that hotdog
/// closes it, and the summary says how many messages were left unanswered.
#[test]
fn at_shutdown_what_kafka_does_not_have_is_left_unanswered() {
    let nowhere = Proxy::bind();
    let yaml = relp_config(&nowhere.addr(), 0, "", "t")
        .replace("  status:", "  shutdown_timeout: 2\n  status:");
    let hotdog = Hotdog::start_config(&yaml);
    let mut c = Client::open(&hotdog.addr());
    for i in 0..10 {
        c.command("syslog", format!("<13>seq={i}").as_bytes());
    }
    assert_eq!(
        hotdog.wait_stat("relp.outstanding", 10, Duration::from_secs(10)),
        10
    );
    let (status, log) = hotdog.stop();
    // Records not delivered by the shutdown timeout: hotdog says so in its exit code.
    assert!(!status.success(), "{log}");
    let frames = c.rest();
    assert!(
        frames.iter().all(|f| f.1 != "rsp"),
        "answered without Kafka: {frames:?}"
    );
    assert!(refusal(&frames).contains("shutting down"));
    assert!(
        log.contains("RELP messages left unacknowledged 10"),
        "{log}"
    );
}
