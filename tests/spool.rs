//! The spool (`global.spool`) against the real binary, a real broker that goes away, real
//! senders (TCP, UDP, rsyslog's omrelp) and real faults: kill -9, damaged segments, a full
//! filesystem.

use std::io::Write as _;
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::relp::{every_line_arrived, feed, relp_config, rsyslog_to_relp};
use crate::util::*;

/// How long the broker is away in the outage test: 20 s in the suite; set
/// HOTDOG_TEST_OUTAGE_SECS=300 for the five minutes of the issue.
fn outage() -> Duration {
    let secs = std::env::var("HOTDOG_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// `yaml` (from [`config_yaml`]) with a spool in `dir`.
fn with_spool(yaml: &str, dir: &Path, extra: &str) -> String {
    yaml.replace(
        "rules:\n",
        &format!(
            "  spool:\n    path: '{}'\n{extra}  shutdown_timeout: 2s\nrules:\n",
            dir.display()
        ),
    )
}

fn line(i: usize) -> String {
    format!("<13>Oct 11 22:14:15 host1 app[7]: seq={i} a line of some length to make it real")
}

/// Sends lines `from..to` over one TCP connection as fast as the socket takes them; returns
/// how long the writes took.
fn send_range(addr: &str, from: usize, to: usize) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect to hotdog");
    let mut buf = Vec::new();
    for i in from..to {
        buf.extend_from_slice(line(i).as_bytes());
        buf.push(b'\n');
        if buf.len() > 64 * 1024 {
            s.write_all(&buf).expect("send");
            buf.clear();
        }
    }
    s.write_all(&buf).expect("send");
    let took = start.elapsed();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
    took
}

/// Every record's `hotdog.id` header.
fn ids(records: &[Consumed]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "hotdog.id")
                .map(|(_, v)| v.clone())
        })
        .collect()
}

/// Second by second until `seconds` of them (which may be lowered while they go, never below
/// the second under way plus one): 20,000 lines over TCP (sent as fast as the socket takes
/// them, over a connection of their own) and 5,000 over UDP (in steps of 50). Second `s`'s
/// lines are numbered from `first + 25,000 s`, TCP's then UDP's. The TCP thread returns how
/// long the slowest second's lines took to write.
fn traffic(
    tcp: String,
    udp_port: u16,
    first: usize,
    seconds: Arc<AtomicUsize>,
) -> (
    std::thread::JoinHandle<Duration>,
    std::thread::JoinHandle<()>,
) {
    let start = Instant::now();
    let pace = move |s: usize| {
        if let Some(wait) = Duration::from_secs(s as u64).checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    };
    let udp_seconds = seconds.clone();
    let udp = std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
        let mut s = 0;
        while s < udp_seconds.load(SeqCst) {
            let from = first + s * 25_000 + 20_000;
            for step in 0..100u32 {
                for i in 0..50 {
                    let n = from + step as usize * 50 + i;
                    let _ = sock.send_to(line(n).as_bytes(), ("127.0.0.1", udp_port));
                }
                let due = Duration::from_secs(s as u64) + Duration::from_millis(10) * (step + 1);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            s += 1;
            pace(s);
        }
    });
    let tcp = std::thread::spawn(move || {
        let mut slowest = Duration::ZERO;
        let mut s = 0;
        while s < seconds.load(SeqCst) {
            let from = first + s * 25_000;
            slowest = slowest.max(send_range(&tcp, from, from + 20_000));
            s += 1;
            pace(s);
        }
        slowest
    });
    (tcp, udp)
}

/// The broker is away while a TCP sender sends as fast as it can (paced in steps of 20,000
/// lines a second) and a UDP sender 5,000 lines a second: hotdog reads every line into the
/// spool (the senders are never held back, UDP drops nothing). Once the broker is back, the
/// senders go on while the spool drains, and every line arrives exactly once, each with its own
/// `hotdog.id`.
#[test]
fn broker_away_senders_are_not_held_back_and_every_line_arrives_once() {
    let (proxy, _tansu, topic, target) = proxied_broker("spool-outage");
    proxy.cut();
    let spool = tempfile::tempdir().expect("spool dir");
    let yaml = with_spool(
        &config_yaml(&proxy.addr(), "", &forward_all(&topic)),
        spool.path(),
        "    id_header: true\n",
    )
    .replace(
        "    port: 0\n  kafka:",
        "    port: 0\n  - address: '127.0.0.1'\n    port: 0\n    protocol: udp\n  kafka:",
    )
    .replace("  listen:\n    address:", "  listen:\n  - address:");
    let hotdog = Hotdog::start_config(&yaml);
    let (tcp, udp_port) = (hotdog.addr(), hotdog.ports[1]);
    let secs = outage().as_secs() as usize;
    let (tcp_sender, udp_sender) =
        traffic(tcp.clone(), udp_port, 0, Arc::new(AtomicUsize::new(secs)));
    let slowest = tcp_sender.join().expect("tcp sender");
    udp_sender.join().expect("udp sender");
    let backlog = 25_000 * secs as i64;
    assert_eq!(
        hotdog.wait_stat("lines", backlog, Duration::from_secs(30)),
        backlog,
        "hotdog read every line while the broker was away"
    );
    eprintln!(
        "outage of {secs} s: {backlog} lines read; the slowest second of 20,000 TCP lines took \
         {slowest:?} to write; spool.records {} spool.bytes {}",
        hotdog.stat("spool.records"),
        hotdog.stat("spool.bytes")
    );
    assert_eq!(hotdog.stat("udp.dropped"), 0);
    assert_eq!(hotdog.stat("kafka.delivered"), 0, "the broker was away");
    assert!(hotdog.stat("spool.records") >= backlog - 2_000);
    assert_eq!(hotdog.stat("spool.full"), 0);

    // The broker comes back; the senders go on until the backlog is drained, and a second more.
    let seconds = Arc::new(AtomicUsize::new(usize::MAX));
    let (tcp_sender, udp_sender) = traffic(tcp, udp_port, backlog as usize, seconds.clone());
    let back = Instant::now();
    proxy.forward_to(&target);
    hotdog.wait_stat("kafka.delivered", 1, Duration::from_secs(60));
    let reconnected = back.elapsed();
    hotdog.wait_stat("kafka.delivered", backlog, Duration::from_secs(300));
    let drained = back.elapsed();
    seconds.store(drained.as_secs() as usize + 2, SeqCst);
    let slowest = tcp_sender.join().expect("tcp sender");
    udp_sender.join().expect("udp sender");
    let more = seconds.load(SeqCst);
    eprintln!(
        "broker back: librdkafka delivered again after {reconnected:?}; the spool's {backlog} \
         records were delivered {drained:?} after the broker came back, {:.0} lines/s from the \
         first delivery, while 20,000 TCP and 5,000 UDP lines a second went on coming ({more} s \
         of them); the slowest second of TCP lines meanwhile took {slowest:?} to write",
        backlog as f64 / (drained - reconnected).as_secs_f64()
    );
    let total = backlog as usize + 25_000 * more;
    let (got, t) = every_line_arrived(
        &proxy.addr(),
        &topic,
        total,
        Duration::from_secs(3),
        "outage",
    );
    assert_eq!(t.duplicated, 0, "no restart, so no line twice");
    assert_eq!(hotdog.stat("udp.dropped"), 0);
    let mut ids = ids(&got);
    assert_eq!(ids.len(), got.len(), "every record has a hotdog.id");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "every hotdog.id is its own");
    assert!(wait_until(Duration::from_secs(10), || hotdog
        .stat("spool.records")
        == 0));
    assert_eq!(hotdog.stat("lines.in_flight"), 0);
}

/// hotdog is killed with SIGKILL twice while the broker is away, and started again on the same
/// spool: every line it had counted before each kill arrives once the broker is back, none
/// twice (nothing was in flight), and the last run says what it sent again.
#[test]
fn killed_twice_during_an_outage_every_line_it_had_read_arrives() {
    const N: usize = 30_000;
    let (proxy, _tansu, topic, target) = proxied_broker("spool-kill");
    proxy.cut();
    let spool = tempfile::tempdir().expect("spool dir");
    let yaml = with_spool(
        &config_yaml(&proxy.addr(), "", &forward_all(&topic)),
        spool.path(),
        "    id_header: true\n",
    );
    for run in 0..2 {
        let mut hotdog = Hotdog::start_config(&yaml);
        send_range(&hotdog.addr(), run * N, (run + 1) * N);
        // The lines of the earlier runs are counted as read again, from the spool.
        let read = ((run + 1) * N) as i64;
        assert_eq!(
            hotdog.wait_stat("lines", read, Duration::from_secs(30)),
            read
        );
        hotdog.child.kill().expect("SIGKILL hotdog");
        let _ = hotdog.child.wait();
        eprintln!("run {run}: killed after reading {read} lines");
    }
    let hotdog = Hotdog::start_config(&yaml);
    assert_eq!(hotdog.stat("spool.records"), (2 * N) as i64);
    proxy.forward_to(&target);
    let (got, t) = every_line_arrived(&proxy.addr(), &topic, 2 * N, Duration::from_secs(3), "kill");
    assert_eq!(
        t.duplicated, 0,
        "the broker was away: nothing was in flight"
    );
    assert_eq!(
        hotdog.wait_stat("spool.replayed", (2 * N) as i64, Duration::from_secs(30)),
        (2 * N) as i64
    );
    assert_eq!(ids(&got).len(), 2 * N);
}

/// RELP with `ack: spool`: rsyslog's omrelp sends 100,000 messages while the broker is away and
/// hotdog is killed once; every message is answered before the broker is back, and every line
/// is in Kafka after.
#[test]
fn relp_ack_spool_answers_while_the_broker_is_away_and_survives_a_kill() {
    const N: usize = 100_000;
    let (proxy, _tansu, topic, target) = proxied_broker("spool-relp");
    proxy.cut();
    let spool = tempfile::tempdir().expect("spool dir");
    let port = free_port();
    let yaml = with_spool(
        &relp_config(&proxy.addr(), port, "    ack: spool\n", &topic),
        spool.path(),
        "",
    );
    let mut hotdog = Some(Hotdog::start_config(&yaml));
    let dir = tempfile::tempdir().expect("rsyslog dir");
    let input = free_port();
    let _rsyslog = rsyslog_to_relp(dir.path(), input, port, "");
    let mut answered = 0;
    let mut killed = false;
    feed(input, N, 5_000, |sent| {
        let Some(h) = &mut hotdog else { return };
        if sent >= N / 3 && !killed {
            h.wait_stat("relp.acknowledged", 10_000, Duration::from_secs(60));
            answered += h.stat("relp.acknowledged");
            h.child.kill().expect("SIGKILL hotdog");
            let _ = h.child.wait();
            eprintln!("killed hotdog after {answered} answers, {sent} sent");
            killed = true;
            hotdog = Some(Hotdog::start_config(&yaml));
        }
    });
    assert!(killed);
    let h = hotdog.as_ref().expect("hotdog");
    // omrelp sends again what the killed hotdog had not answered: all of it is answered now.
    // Answers the killed hotdog wrote after its last /stats read are counted by neither run:
    // at most what it could answer in that millisecond (`SLACK`).
    const SLACK: i64 = 1_000;
    let ok = wait_until(Duration::from_secs(120), || {
        answered + h.stat("relp.acknowledged") >= N as i64 - SLACK
            && h.stat("relp.outstanding") == 0
    });
    assert!(
        ok,
        "only {} of {N} answered while the broker was away",
        answered + h.stat("relp.acknowledged")
    );
    // Nothing more comes: omrelp has no message it waits to send or to have answered.
    let mut messages = h.stat("relp.messages");
    loop {
        std::thread::sleep(Duration::from_secs(3));
        let now = h.stat("relp.messages");
        if now == messages && h.stat("relp.outstanding") == 0 {
            break;
        }
        messages = now;
    }
    assert_eq!(h.stat("kafka.delivered"), 0, "the broker was away");
    proxy.forward_to(&target);
    let (_, t) = every_line_arrived(
        &proxy.addr(),
        &topic,
        N,
        Duration::from_secs(3),
        "relp spool",
    );
    eprintln!(
        "sent again by omrelp after the kill, and so twice in Kafka: {}",
        t.duplicated
    );
}

/// A spool that the broker's absence filled, stopped, then damaged: its last segment cut
/// short and a byte flipped in its first. hotdog starts, forwards every intact record, counts
/// the two damaged places, and `/health` says so.
#[test]
fn a_damaged_spool_costs_only_its_damaged_records() {
    const N: usize = 30_000;
    let (proxy, _tansu, topic, target) = proxied_broker("spool-damage");
    proxy.cut();
    let spool = tempfile::tempdir().expect("spool dir");
    // 8 MiB: segments of 1 MiB; 30,000 lines make three or more.
    let yaml = with_spool(
        &config_yaml(&proxy.addr(), "", &forward_all(&topic)),
        spool.path(),
        "    max_size: 8MiB\n",
    );
    let hotdog = Hotdog::start_config(&yaml);
    send_range(&hotdog.addr(), 0, N);
    hotdog.wait_stat("spool.written", N as i64, Duration::from_secs(30));
    let (status, log) = hotdog.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("stay in the spool"), "{log}");
    let mut segs: Vec<_> = std::fs::read_dir(spool.path())
        .expect("spool")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    let mut first = std::fs::read(&segs[0]).expect("read");
    first[100_000] ^= 0x01;
    std::fs::write(&segs[0], first).expect("write");
    let last = segs.last().expect("last");
    let len = std::fs::metadata(last).expect("len").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .and_then(|f| f.set_len(len - 40))
        .expect("truncate");
    let (code, out, err) = run_hotdog(&["spool", "inspect", &spool.path().display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("damaged") && out.contains("torn"), "{out}");

    proxy.forward_to(&target);
    let hotdog = Hotdog::start_config(&yaml);
    let got = consume_until_quiet(
        &proxy.addr(),
        &topic,
        N - 2,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let t = tally(&got, N);
    eprintln!(
        "damaged spool: {} of {N} arrived, missing {:?}",
        t.delivered, t.missing
    );
    assert_eq!(
        t.missing.len(),
        2,
        "one record lost to each damaged place: {:?}",
        t.missing
    );
    assert_eq!(t.duplicated, 0);
    assert_eq!(hotdog.stat("spool.corrupt"), 2);
    let (code, body) = hotdog.http_get("/health");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("damaged"), "{body}");
    assert!(hotdog.stderr().contains("a torn last write"));
}

/// The spool on a filesystem smaller than `max_size` (a 3 MiB tmpfs): with the broker away it
/// fills, hotdog holds the sender back and says so on `/health`; when the broker is back it
/// goes on by itself, and every line arrives exactly once.
#[test]
fn a_spool_on_a_small_filesystem_fills_pushes_back_and_recovers() {
    const N: usize = 60_000;
    let mount = tempfile::tempdir().expect("mount point");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(mount.path())
        .status()
        .expect("run mount");
    assert!(mounted.success(), "this test mounts a tmpfs: it needs root");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mount.path());
    let (proxy, _tansu, topic, target) = proxied_broker("spool-full");
    proxy.cut();
    let yaml = with_spool(
        &config_yaml(&proxy.addr(), "", &forward_all(&topic)),
        &mount.path().join("spool"),
        "    max_size: 1GiB\n",
    );
    let hotdog = Hotdog::start_config(&yaml);
    let addr = hotdog.addr();
    let sender = std::thread::spawn(move || send_range(&addr, 0, N));
    assert!(
        wait_until(Duration::from_secs(30), || hotdog.stat("spool.full") >= 1),
        "the spool never filled"
    );
    let (code, body) = hotdog.http_get("/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("spool") && body.contains("full"), "{body}");
    let read = hotdog.stat("lines");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        hotdog.stat("lines") < read + 3_000,
        "a full spool holds the sender back"
    );
    assert!(!sender.is_finished());
    proxy.forward_to(&target);
    sender.join().expect("sender");
    let (_, t) = every_line_arrived(
        &proxy.addr(),
        &topic,
        N,
        Duration::from_secs(3),
        "full disk",
    );
    assert_eq!(t.duplicated, 0);
    assert!(hotdog.wait_log("there is room again", Duration::from_secs(30)));
    let (code, _) = hotdog.http_get("/health");
    assert_eq!(code, 200);
}

/// `--check` looks at the spool's directory; the spool's keys are checked like every other.
#[test]
fn check_reports_the_spool_and_bad_spool_keys_name_their_line() {
    let spool = tempfile::tempdir().expect("spool dir");
    let dir = tempfile::tempdir().expect("dir");
    let good = dir.path().join("good.yml");
    std::fs::write(
        &good,
        with_spool(
            &config_yaml("127.0.0.1:9", "", &forward_all("t")),
            spool.path(),
            "",
        ),
    )
    .expect("write");
    let (code, _, err) = run_hotdog(&["--check", "-c", &good.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("0 records, 0 to send"), "{err}");
    for (extra, expected) in [
        (
            "    max_size: 10 parsecs\n",
            "expected a size for `global.spool.max_size`",
        ),
        ("    max_size: 1000\n", "must be at least 1MiB"),
        ("    fsync: sometimes\n", "global.spool.fsync"),
        (
            "    id_header: maybe\n",
            "expected true or false for `global.spool.id_header`",
        ),
    ] {
        let bad = dir.path().join("bad.yml");
        std::fs::write(
            &bad,
            with_spool(
                &config_yaml("127.0.0.1:9", "", &forward_all("t")),
                spool.path(),
                extra,
            ),
        )
        .expect("write");
        let (code, _, err) = run_hotdog(&["--check", "-c", &bad.display().to_string()]);
        assert_eq!(code, 2, "{extra}: {err}");
        assert!(
            err.contains(expected) && err.contains("bad.yml:"),
            "{extra}: {err}"
        );
    }
    let relp = dir.path().join("relp.yml");
    std::fs::write(
        &relp,
        relp_config("127.0.0.1:9", 0, "    ack: spool\n", "t"),
    )
    .expect("write");
    let (code, _, err) = run_hotdog(&["--check", "-c", &relp.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`global.spool` is not set"), "{err}");
}

/// By default records go through the spool without the `hotdog.id` header (and its cost), as
/// with `id_header: false`; with `id_header: true`, every record has one.
#[test]
fn id_header_true_adds_the_header() {
    const N: usize = 2_000;
    for (extra, headers) in [
        ("", 0),
        ("    id_header: false\n", 0),
        ("    id_header: true\n", N),
    ] {
        let (broker, topic) = fresh_topic("spool-noid");
        let spool = tempfile::tempdir().expect("spool dir");
        let yaml = with_spool(
            &config_yaml(broker, "", &forward_all(&topic)),
            spool.path(),
            extra,
        );
        let hotdog = Hotdog::start_config(&yaml);
        send_range(&hotdog.addr(), 0, N);
        let got = consume_all(broker, &topic, N);
        let t = tally(&got, N);
        assert_eq!((t.delivered, t.duplicated), (N, 0), "{extra}");
        assert_eq!(ids(&got).len(), headers, "{extra}");
        assert_eq!(hotdog.stat("spool.written"), N as i64, "{extra}");
    }
}

/// Sends lines `0..n` over one TCP connection until the connection fails (hotdog was killed);
/// returns how many whole lines the kernel took.
fn send_until_cut(addr: &str, n: usize) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect to hotdog");
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    let mut taken = 0;
    let mut i = 0;
    while i < n {
        buf.clear();
        ends.clear();
        while i < n && buf.len() < 16 * 1024 {
            buf.extend_from_slice(line(i).as_bytes());
            buf.push(b'\n');
            ends.push(buf.len());
            i += 1;
        }
        let mut at = 0;
        while at < buf.len() {
            match s.write(&buf[at..]) {
                Ok(0) | Err(_) => return taken + ends.iter().filter(|&&e| e <= at).count(),
                Ok(k) => at += k,
            }
        }
        taken += ends.len();
    }
    taken
}

/// Plain TCP, broker up, hotdog killed with SIGKILL mid-stream, without a spool and with one.
/// With the spool, every line it had counted as read arrives after the restart: what is lost
/// is what the kernel's socket buffers held and the batch being read. Without, everything in
/// hotdog's memory is lost too. Prints both.
#[test]
fn plain_tcp_kill_mid_stream_with_a_spool_loses_only_what_was_not_read() {
    const N: usize = 400_000;
    let spool = tempfile::tempdir().expect("spool dir");
    let mut report = Vec::new();
    for spooled in [false, true] {
        let (b, topic) = fresh_topic("spool-kill-tcp");
        let yaml = config_yaml(b, "", &forward_all(&topic));
        let yaml = if spooled {
            with_spool(&yaml, spool.path(), "    id_header: true\n")
        } else {
            yaml
        };
        let mut hotdog = Hotdog::start_config(&yaml);
        let addr = hotdog.addr();
        let sender = std::thread::spawn(move || send_until_cut(&addr, N));
        // A moment mid-stream: once some lines are in Kafka, at a time the test does not pick.
        hotdog.wait_stat("kafka.delivered", 20_000, Duration::from_secs(60));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::thread::sleep(Duration::from_millis(u64::from(nanos % 300)));
        let (read, written) = (hotdog.stat("lines"), hotdog.stat("spool.written"));
        hotdog.child.kill().expect("SIGKILL hotdog");
        let _ = hotdog.child.wait();
        let taken = sender.join().expect("sender");
        assert!(
            taken < N,
            "the sender was done before the kill: nothing to measure"
        );
        if spooled {
            // The next run sends what the spool holds.
            let again = Hotdog::start_config(&yaml);
            assert!(wait_until(Duration::from_secs(60), || again
                .stat("spool.records")
                == 0));
        }
        let got = consume_until_quiet(
            b,
            &topic,
            written.max(0) as usize,
            Duration::from_secs(3),
            Duration::from_secs(120),
        );
        let t = tally(&got, taken);
        let lost = t.missing.len();
        eprintln!(
            "kill -9 mid-stream, {}: the kernel took {taken} lines, hotdog had read {read}, \
             written {written} to the spool; {} arrived, {lost} lost ({} of them read by \
             hotdog), {} twice",
            if spooled { "spool" } else { "no spool" },
            t.delivered - t.duplicated,
            t.missing.iter().filter(|&&s| (s as i64) < read).count(),
            t.duplicated,
        );
        if spooled {
            // With a spool, a line counts as read once the spool has it: every one arrives.
            let missing_read: Vec<_> = t.missing.iter().filter(|&&s| (s as i64) < read).collect();
            assert!(
                missing_read.is_empty(),
                "lines hotdog had counted as read are missing: {:?}",
                &missing_read[..missing_read.len().min(20)]
            );
            assert!(
                read <= written,
                "counted {read}, but the spool had only {written}"
            );
            let mut ids = ids(&got);
            let n = ids.len();
            ids.sort();
            ids.dedup();
            assert_eq!(
                n - ids.len(),
                t.duplicated,
                "a duplicate has its original's hotdog.id"
            );
        }
        report.push(lost);
    }
    eprintln!(
        "lost to one kill -9 mid-stream: {} lines without the spool, {} with it",
        report[0], report[1]
    );
}
