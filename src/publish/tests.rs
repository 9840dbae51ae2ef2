//! The publisher's tests that need no broker: health, the ack clock, the outbox and its gate,
//! the topic cap.

use super::outbox::Gate;
use super::*;
use hotdog_stages::core as record;

#[test]
fn health_fails_while_a_producer_is_replaced_whatever_the_probe_says() {
    let health = Health::default();
    assert!(health.get().is_err(), "no broker has answered yet");
    health.set(None);
    assert_eq!(health.get(), Ok(()));
    health.set_fatal(Some("fatal: fenced".into()));
    assert_eq!(health.get(), Err("fatal: fenced".to_string()));
    health.set(Some("no broker".into()));
    assert_eq!(
        health.get(),
        Err("fatal: fenced".to_string()),
        "the fatal error first"
    );
    health.set_fatal(None);
    assert_eq!(health.get(), Err("no broker".to_string()));
}

#[test]
fn a_closed_outbox_writes_what_it_is_given_to_the_dead_letter_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dead.jsonl");
    let metrics = Metrics::new();
    let file = deadletter::start(Some(path.clone()), metrics.clone()).expect("writer");
    let (outbox, _inbox) = outbox(10, file.clone(), false);
    outbox.close();
    let record = Record {
        topic: "t".into(),
        key: Some("k".into()),
        payload: "late".into(),
        block: Block::default(),
        headers: Vec::new(),
        read_ms: 1,
        ack: Default::default(),
    };
    let counts = crate::base::metrics::LineCounts {
        lines: 1,
        ..Default::default()
    };
    let back = smol::block_on(outbox.send(vec![record], counts)).expect_err("closed");
    assert_eq!(back.lines, 1, "the counts are given back to be counted");
    file.finish();
    let text = std::fs::read_to_string(&path).expect("dead-letter file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["topic"], "t");
    assert_eq!(lines[0]["payload"], "late");
    assert_eq!(lines[0]["reason"], record::SHUTDOWN_TIMEOUT);
    assert_eq!(metrics.dead_lettered_for(record::SHUTDOWN_TIMEOUT), 1);
    assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(outbox.waiting(), 0, "the room it took is given back");
}

#[test]
fn topics_past_the_cap_are_refused_and_known_ones_and_the_fallback_always_admitted() {
    let metrics = Metrics::default();
    let cap = TopicCap::new(2, "logs", &metrics);
    let admit = |s: &str| cap.admit(&Name::Owned(s.to_string()), &metrics).is_some();
    assert!(admit("a"));
    assert!(admit("b"));
    assert!(!admit("c"), "a third topic over a cap of 2");
    assert!(admit("a"), "a known topic stays admitted");
    assert!(cap.admit(&Name::Borrowed("b"), &metrics).is_some());
    assert!(admit("logs"), "the fallback is always admitted");
    assert!(!admit("d"));
    // The counters are the metrics' own: what is counted there shows in /stats.
    let a = cap.admit(&Name::Borrowed("a"), &metrics).expect("admitted");
    assert!(Arc::ptr_eq(&a, &metrics.topic("a")));
    let names: Vec<String> = metrics.topics().into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        names,
        ["a", "b", "logs"],
        "no series for topics over the cap"
    );
}

#[test]
fn the_gate_counts_records_and_wakes_a_waiting_sender() {
    let gate = Arc::new(Gate::new(10));
    assert_eq!(gate.take_some(6), 6);
    assert_eq!(gate.take_some(5), 4, "of 6 + 5 records, 4 fit in 10");
    assert_eq!(gate.take_some(1), 0);
    // Polled once: it waits (no room), and is woken by the room given back.
    let mut waiting = Box::pin(gate.take(3));
    assert!(
        smol::block_on(futures_lite::future::poll_once(&mut waiting)).is_none(),
        "took room that is not there"
    );
    gate.give(6);
    smol::block_on(waiting);
    assert_eq!(gate.used.load(Ordering::Relaxed), 7);
}

#[test]
fn senders_that_wait_leave_the_last_eighth_to_those_that_cannot() {
    let gate = Arc::new(Gate::new(80));
    smol::block_on(gate.take(60));
    // 60 + 10 would pass the 70 a waiting sender may fill.
    let mut waiting = Box::pin(gate.take(11));
    assert!(
        smol::block_on(futures_lite::future::poll_once(&mut waiting)).is_none(),
        "a waiting sender took the reserve"
    );
    assert_eq!(
        gate.take_some(20),
        20,
        "the reserve is there for a sender that cannot wait"
    );
    assert_eq!(gate.take_some(1), 0, "and no more than the capacity");
    gate.give(21);
    smol::block_on(waiting);
    // A batch larger than what waiting senders may fill still goes in, alone.
    let gate = Gate::new(8);
    smol::block_on(gate.take(8));
    assert_eq!(gate.used.load(Ordering::Relaxed), 8);
}

/// `n` records for topic `t`, each with its number as its payload.
fn batch(n: usize) -> Batch {
    (0..n)
        .map(|i| Record {
            topic: "t".into(),
            key: None,
            payload: i.to_string().into(),
            block: Block::default(),
            headers: Vec::new(),
            read_ms: 1,
            ack: Default::default(),
        })
        .collect()
}

/// A sender that cannot wait hands over the part of a batch that fits, with the counts of all
/// its lines (a spool's writer counts them once it has that part), and gets the rest back.
#[test]
fn a_batch_that_cannot_wait_goes_in_as_far_as_there_is_room() {
    let file = deadletter::start(None, Metrics::new()).expect("writer");
    let (outbox, inbox) = outbox(8, file, true);
    let counts = |lines| crate::base::metrics::LineCounts {
        lines,
        ..Default::default()
    };
    smol::block_on(outbox.send(batch(5), counts(5))).expect("room");
    let (rest, rest_counts) =
        smol::block_on(outbox.send_within(batch(6), counts(6), Duration::ZERO))
            .expect_err("no room for all");
    let payloads: Vec<_> = rest.iter().map(|r| r.payload.to_vec()).collect();
    assert_eq!(payloads, [b"3".to_vec(), b"4".to_vec(), b"5".to_vec()]);
    assert_eq!(
        rest_counts.lines, 0,
        "the counts went with the part that fit"
    );
    let mut got = Vec::new();
    while let outbox::Polled::Batch(b, c) = inbox.try_recv() {
        got.push((b.len(), c.lines));
    }
    assert_eq!(got, [(5, 5), (3, 6)]);
    // With no room at all, the counts come back with the batch.
    smol::block_on(outbox.send(batch(8), counts(8))).expect("room");
    let (rest, rest_counts) =
        smol::block_on(outbox.send_within(batch(2), counts(2), Duration::from_millis(20)))
            .expect_err("no room");
    assert_eq!((rest.len(), rest_counts.lines), (2, 2));
}

/// The spool's writer hurries (leaves batches on disk rather than wait for Kafka) once a sender
/// that cannot wait is into the reserve, not while waiting senders fill what they may.
#[test]
fn the_outbox_is_pressed_once_the_reserve_is_in_use() {
    let file = deadletter::start(None, Metrics::new()).expect("writer");
    let (outbox, inbox) = outbox(80, file, true);
    let pressed = inbox.pressure();
    smol::block_on(outbox.send(batch(70), crate::base::metrics::LineCounts::default()))
        .expect("room");
    assert!(!pressed(), "waiting senders filled what they may");
    assert!(smol::block_on(outbox.send_within(
        batch(1),
        crate::base::metrics::LineCounts::default(),
        Duration::ZERO
    ))
    .is_ok());
    assert!(pressed(), "a datagram is in the reserve");
    assert!(matches!(inbox.try_recv(), outbox::Polled::Batch(b, _) if b.len() == 70));
    assert!(!pressed());
}
