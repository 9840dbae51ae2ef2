//! One sender floods while twenty others send at a steady pace, through a broker that is slow
//! (a proxy delays its answers and paces what it is sent): the paced senders' lines still
//! arrive within two seconds, and a quota holds the flooder to its rate without touching them.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::message::Message;

use crate::util::{config_yaml, forward_all, proxied_broker, Hotdog};

const PACED: usize = 20;
const PACED_RATE: u64 = 500;
const SECONDS: u64 = 10;
/// The flooder's quota in the second half.
const QUOTA: u64 = 2_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A TCP connection to `to` from the loopback address `from` (each sender its own source).
fn connect_from(from: &str, to: &str) -> TcpStream {
    let to: SocketAddr = to.parse().expect("address");
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("source");
    socket.bind(&local.into()).expect("bind the source address");
    socket.connect(&to.into()).expect("connect");
    socket.into()
}

/// What the tail read: each record's key, when the tail saw it (ms since the epoch) and its
/// Kafka timestamp (when hotdog read the line).
type Seen = HashMap<String, (i64, i64)>;

/// Reads `topic` as records arrive, until `stop`.
fn tail(broker: &str, topic: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Seen> {
    let mut config = crate::util::consumer_config(broker);
    config.set("fetch.wait.max.ms", "10");
    let consumer = crate::util::partition_consumer(config, topic);
    std::thread::spawn(move || {
        let mut seen = Seen::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                let ts = m.timestamp().to_millis().unwrap_or(0);
                if let Some(key) = key {
                    seen.entry(key).or_insert((now_ms(), ts));
                }
            }
        }
        seen
    })
}

/// Sends `PACED_RATE` lines a second for `SECONDS` from `source`: each line's key and the
/// time it was sent.
fn paced(
    addr: String,
    source: String,
    sender: usize,
) -> std::thread::JoinHandle<Vec<(String, i64)>> {
    std::thread::spawn(move || {
        let mut conn = connect_from(&source, &addr);
        let mut sent = Vec::new();
        let start = Instant::now();
        let every = Duration::from_secs(1) / PACED_RATE as u32;
        for i in 0..PACED_RATE * SECONDS {
            let due = start + every * i as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let seq = 1_000_000 * (sender as u64 + 1) + i;
            let at = now_ms();
            writeln!(conn, "<13>paced{sender} app: steady seq={seq} sent={at}")
                .expect("paced send");
            sent.push((seq.to_string(), at));
        }
        sent
    })
}

/// Writes as fast as the connection takes it from `source` until `stop`: lines sent.
fn flood(
    addr: String,
    source: String,
    base: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut conn = connect_from(&source, &addr);
        let filler = "x".repeat(60);
        let mut seq = base;
        let mut chunk = String::new();
        while !stop.load(Ordering::Relaxed) {
            chunk.clear();
            for _ in 0..200 {
                chunk.push_str(&format!("<13>flood app: {filler} seq={seq}\n"));
                seq += 1;
            }
            if conn.write_all(chunk.as_bytes()).is_err() {
                break;
            }
        }
        seq - base
    })
}

struct Round {
    /// Per paced sender: the share of its lines that arrived within 2 s, and its p99 (ms).
    paced: Vec<(f64, i64)>,
    /// Flooder lines hotdog read per second, between the 2nd and the 10th second.
    flood_rate: f64,
    flood_sent: u64,
}

fn round(hotdog: &Hotdog, broker: &str, topic: &str, first_source: usize, base: u64) -> Round {
    let stop_tail = Arc::new(AtomicBool::new(false));
    let tail = tail(broker, topic, stop_tail.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let started = now_ms();
    let flooder = flood(hotdog.addr(), "127.0.0.2".into(), base, stop.clone());
    let senders: Vec<_> = (0..PACED)
        .map(|s| paced(hotdog.addr(), format!("127.0.0.{}", first_source + s), s))
        .collect();
    let sent: Vec<Vec<(String, i64)>> = senders
        .into_iter()
        .map(|s| s.join().expect("paced sender"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    let flood_sent = flooder.join().expect("flooder");
    // Time for what was sent last to arrive (and more: a late line counts as late, not lost).
    std::thread::sleep(Duration::from_secs(5));
    stop_tail.store(true, Ordering::Relaxed);
    let seen = tail.join().expect("tail");
    let paced = sent
        .iter()
        .map(|lines| {
            let mut latencies: Vec<i64> = lines
                .iter()
                .map(|(key, at)| seen.get(key).map_or(i64::MAX, |(seen, _)| seen - at))
                .collect();
            latencies.sort_unstable();
            let on_time = latencies.iter().filter(|l| **l <= 2_000).count();
            let p99 = latencies[latencies.len() * 99 / 100];
            (on_time as f64 / lines.len() as f64, p99)
        })
        .collect();
    let window = (started + 2_000, started + SECONDS as i64 * 1_000);
    let flooded = seen
        .iter()
        .filter(|(k, (_, ts))| {
            k.parse::<u64>().is_ok_and(|k| k >= base) && (window.0..window.1).contains(ts)
        })
        .count();
    Round {
        paced,
        flood_rate: flooded as f64 / ((window.1 - window.0) as f64 / 1_000.0),
        flood_sent,
    }
}

/// The paced senders of `r` that had less than 99% of their lines in Kafka within 2 s.
fn late(name: &str, r: &Round) -> Vec<String> {
    r.paced
        .iter()
        .enumerate()
        .filter(|(_, (share, _))| *share < 0.99)
        .map(|(s, (share, p99))| {
            format!("{name}: paced sender {s}: {share:.4} within 2 s (p99 {p99} ms)")
        })
        .collect()
}

fn report(name: &str, r: &Round) {
    let worst_share = r.paced.iter().map(|p| p.0).fold(1.0, f64::min);
    let worst_p99 = r.paced.iter().map(|p| p.1).max().unwrap_or(0);
    eprintln!(
        "{name}: {PACED} paced senders at {PACED_RATE}/s: worst share within 2 s {:.2}%, worst \
         p99 {worst_p99} ms; flooder: {} lines sent, {:.0} lines/s read (2nd to 10th second)",
        worst_share * 100.0,
        r.flood_sent,
        r.flood_rate
    );
}

/// The test: with no quota, every paced sender gets at least 99% of its lines to Kafka
/// within 2 s while one connection floods a slow broker; then, with a quota of 2,000 lines/s
/// put in by a reload, the flooder gets 2,000 ± 5% lines/s and the paced senders still do.
#[test]
fn a_flooder_does_not_starve_paced_senders_and_a_quota_holds_it_to_its_rate() {
    let (proxy, _tansu, topic, target) = proxied_broker("fair");
    // About 2 MB/s of requests (about 15,000 records a second) and 50 ms more for every
    // answer: the broker, not hotdog, is the bottleneck, and the flooder alone could fill it.
    proxy.slow(Duration::from_millis(50), 2_000_000);
    let yaml = config_yaml(&proxy.addr(), "", &forward_all(&topic));
    let hotdog = Hotdog::start_config(&yaml);
    let mut failures = Vec::new();

    let free = round(&hotdog, &target, &topic, 10, 500_000_000);
    report("no quota", &free);
    failures.extend(late("no quota", &free));

    // A quota on every source, which only the flooder reaches; a reload puts it in.
    let quota = format!("    quota:\n      lines: {QUOTA}\n      over: wait\n");
    hotdog.rewrite_config(&yaml.replacen("    port: 0\n", &format!("    port: 0\n{quota}"), 1));
    let (code, answer) = hotdog.reload();
    assert_eq!(code, 200, "{answer}");
    let limited = round(&hotdog, &target, &topic, 40, 600_000_000);
    report("quota 2000 lines/s", &limited);
    failures.extend(late("quota", &limited));
    let (low, high) = (QUOTA as f64 * 0.95, QUOTA as f64 * 1.05);
    if !(low..=high).contains(&limited.flood_rate) {
        failures.push(format!(
            "quota: the flooder read at {:.0} lines/s",
            limited.flood_rate
        ));
    }
    assert!(
        hotdog.stat("quota.waited_ms") > 0,
        "the flooder was held back: {}",
        hotdog.stat("quota.waited_ms")
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `over: drop` on a TCP and a UDP listener: a sender over its quota loses what is over it,
/// counted and named in the top keys, and a sender under it loses nothing; every line read is
/// delivered or dropped.
#[test]
fn a_quota_that_drops_counts_what_it_dropped_and_names_the_sender() {
    let (broker, topic) = crate::util::fresh_topic("quota-drop");
    let quota = "    quota:\n      lines: 100\n      over: drop\n";
    let yaml = config_yaml(broker, "", &forward_all(&topic))
        .replace("  listen:\n    address:", "  listen:\n  - address:")
        .replace(
            "    port: 0\n  kafka:",
            &format!(
                "    port: 0\n{quota}  - address: '127.0.0.1'\n    port: 0\n    protocol: udp\n{quota}  kafka:"
            ),
        );
    let hotdog = Hotdog::start_config(&yaml);
    let listener = format!("127.0.0.1:{}", hotdog.ports[0]);
    // 1,000 lines at once from one source: about the burst (100) gets through.
    let mut loud = connect_from("127.0.0.3", &hotdog.addr());
    let text: String = (0..1_000)
        .map(|i| format!("<13>loud app: over seq={}\n", 1_000 + i))
        .collect();
    loud.write_all(text.as_bytes()).expect("send");
    // 50 from another: all of them.
    let mut quiet = connect_from("127.0.0.4", &hotdog.addr());
    let text: String = (0..50)
        .map(|i| format!("<13>quiet app: under seq={}\n", 5_000 + i))
        .collect();
    quiet.write_all(text.as_bytes()).expect("send");
    // 500 datagrams to the UDP listener from two senders in turn (even ones from .5, odd
    // ones from .6): each has its own quota, and what each loses is counted under its key.
    let senders =
        ["127.0.0.5:0", "127.0.0.6:0"].map(|a| std::net::UdpSocket::bind(a).expect("udp"));
    for i in 0..500 {
        let line = format!("<13>udp app: datagram seq={}", 10_000 + i);
        senders[i % 2]
            .send_to(line.as_bytes(), ("127.0.0.1", hotdog.ports[1]))
            .expect("send");
    }
    drop((loud, quiet));
    let all_read = || hotdog.stat("lines") == 1_550;
    assert!(
        crate::util::wait_until(Duration::from_secs(20), all_read),
        "{} lines read",
        hotdog.stat("lines")
    );
    let dropped = hotdog.stat("quota.dropped");
    assert!(
        crate::util::wait_until(Duration::from_secs(20), || hotdog.stat("kafka.delivered")
            + dropped
            == 1_550),
        "delivered {} + dropped {dropped} != 1,550 read",
        hotdog.stat("kafka.delivered")
    );
    let got = crate::util::consume_all(broker, &topic, (1_550 - dropped) as usize);
    let from = |range: std::ops::Range<u64>| {
        got.iter()
            .filter(|r| {
                r.key
                    .as_deref()
                    .and_then(|k| k.parse::<u64>().ok())
                    .is_some_and(|k| range.contains(&k))
            })
            .count() as i64
    };
    let (loud, quiet, datagrams) = (from(1_000..2_000), from(5_000..5_050), from(10_000..10_500));
    let even = got
        .iter()
        .filter_map(|r| r.key.as_deref()?.parse::<u64>().ok())
        .filter(|k| (10_000..10_500).contains(k) && k % 2 == 0)
        .count() as i64;
    assert_eq!(quiet, 50, "the quiet sender lost nothing");
    assert!(
        (100..=130).contains(&loud),
        "{loud} of the loud sender's 1,000"
    );
    assert!(
        (100..=130).contains(&even) && (100..=130).contains(&(datagrams - even)),
        "{even} and {} of 250 datagrams each",
        datagrams - even
    );
    assert_eq!(dropped, (1_000 - loud) + (500 - datagrams));
    // The two senders that dropped are the top keys, with their counts.
    let (_, stats) = hotdog.http_get("/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats");
    let top = |key: &str| stats["stats"][key].as_i64();
    assert_eq!(
        top(&format!("quota.dropped_by.{listener}/127.0.0.3")),
        Some(1_000 - loud),
        "{stats}"
    );
    let udp_listener = format!("127.0.0.1:{}", hotdog.ports[1]);
    assert_eq!(
        top(&format!("quota.dropped_by.{udp_listener}/127.0.0.5")),
        Some(250 - even)
    );
    assert_eq!(
        top(&format!("quota.dropped_by.{udp_listener}/127.0.0.6")),
        Some(250 - (datagrams - even))
    );
    assert_eq!(top(&format!("quota.dropped_by.{listener}/127.0.0.4")), None);
    let (_, metrics) = hotdog.http_get("/metrics");
    assert!(metrics.contains(&format!(
        "hotdog_quota_dropped_top_lines{{key=\"{listener}/127.0.0.3\"}} {}",
        1_000 - loud
    )));
    // The log says so once per 10 s, naming the sender whose drop came first: TCP and UDP drop
    // at the same time, so it may be either.
    assert!(
        ["127.0.0.3", "127.0.0.5", "127.0.0.6"]
            .iter()
            .any(|s| hotdog.wait_log(
                &format!("from `{s}` over its quota"),
                Duration::from_secs(1)
            )),
        "{}",
        hotdog.stderr()
    );
}
