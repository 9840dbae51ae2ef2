//! Many senders at once: thousands of connections, each with a little to say, as behind a load
//! balancer.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::{consume_all, forward_all, fresh_topic, rss, wait_until, Hotdog};

/// 5,000 connections open at once, each sending 4 lines in rounds: every line arrives once, and
/// hotdog's resident memory stays under 256 MB all along.
#[test]
fn five_thousand_connections_sending_stay_under_256_mb_and_every_line_arrives_once() {
    const CONNECTIONS: usize = 5_000;
    const ROUNDS: usize = 4;
    let (broker, topic) = fresh_topic("senders");
    let hotdog = Hotdog::start(broker, &forward_all(&topic));
    let pid = hotdog.child.id();
    let mut peak = rss(pid);
    let at_start = peak;
    let started = Instant::now();
    let mut conns: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|i| {
            TcpStream::connect(hotdog.addr()).unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(30), || hotdog.stat("connections")
            == CONNECTIONS as i64),
        "{} connections open",
        hotdog.stat("connections")
    );
    for round in 0..ROUNDS {
        for (c, conn) in conns.iter_mut().enumerate() {
            let seq = round * CONNECTIONS + c;
            writeln!(
                conn,
                "<13>host{c} app: round {round} seq={seq} from a crowd"
            )
            .unwrap_or_else(|e| panic!("connection {c}: {e}"));
            if c % 500 == 0 {
                peak = peak.max(rss(pid));
            }
        }
    }
    let lines = (CONNECTIONS * ROUNDS) as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while hotdog.stat("kafka.delivered") < lines && Instant::now() < deadline {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    peak = peak.max(rss(pid));
    eprintln!(
        "{CONNECTIONS} connections, {lines} lines: delivered in {:.1} s, RSS {} MB at start, \
         {} MB at most",
        started.elapsed().as_secs_f64(),
        at_start >> 20,
        peak >> 20
    );
    assert_eq!(hotdog.stat("connections"), CONNECTIONS as i64);
    let got = consume_all(broker, &topic, lines as usize);
    let keys: BTreeSet<String> = got.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(
        (got.len(), keys.len()),
        (lines as usize, lines as usize),
        "every line once"
    );
    assert!(
        peak < 256 * 1024 * 1024,
        "RSS reached {} MB with {CONNECTIONS} connections",
        peak >> 20
    );
    drop(conns);
    assert!(wait_until(Duration::from_secs(30), || hotdog
        .stat("connections")
        == 0));
}
