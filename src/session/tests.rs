//! The connection read loop in-process: a byte stream in, records out of the outbox. No
//! broker needed; the end-to-end tests in tests/ cover what needs Kafka.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use super::buffer::*;
use super::stream::*;
use super::*;
use crate::publish::{self, Inbox};
use hotdog_stages::config::Config;
use hotdog_stages::core::Record;

fn limits(max_message_size: usize) -> Limits {
    Limits {
        max_message_size,
        idle_timeout: None,
        answer_when_spooled: false,
        framing: Default::default(),
    }
}

/// A stream that hands out its bytes `chunk` at a time, and takes whatever is written.
struct Chunked {
    data: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = self.chunk.min(buf.len()).min(self.data.len() - self.at);
        let at = self.at;
        buf[..n].copy_from_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Chunked {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a connection shares, built from `rules` (YAML list items) with an outbox of
/// `buffer` records, and the outbox's other end.
fn setup(rules: &str, buffer: usize) -> (Arc<Shared>, Inbox) {
    let text = format!(
        "global:\n  listen:\n    port: 1\n  kafka:\n    conf:\n      bootstrap.servers: b\n    \
         buffer: {buffer}\nrules:\n{rules}"
    );
    let config = Config::parse("test.yml", &text, |_| None).expect("valid config");
    let metrics = Metrics::new();
    let file =
        crate::publish::deadletter::start(None, metrics.clone()).expect("dead-letter writer");
    let (outbox, inbox) = publish::outbox(buffer, file, false);
    let shared = Arc::new(Shared {
        rules: Current::new(config.rules),
        metrics,
        outbox,
        taps: crate::base::tap::Taps::new(),
    });
    (shared, inbox)
}

/// Runs one connection that sends `data`, `chunk` bytes per read, to its end; every record
/// the outbox got.
fn run_stream(
    shared: Arc<Shared>,
    inbox: &Inbox,
    data: &[u8],
    chunk: usize,
    max: usize,
) -> Vec<Record> {
    run_batches(shared, inbox, data, chunk, max).concat()
}

/// Like [`run_stream`], but the batches as the outbox got them.
fn run_batches(
    shared: Arc<Shared>,
    inbox: &Inbox,
    data: &[u8],
    chunk: usize,
    max: usize,
) -> Vec<Batch> {
    let stream = Chunked {
        data: data.to_vec(),
        at: 0,
        chunk,
    };
    let pipeline = Pipeline::new(shared, Origin::default());
    let (_trigger, shutdown) = crate::base::shutdown::channel();
    smol::block_on(async {
        run(stream, pipeline, limits(max), shutdown)
            .await
            .expect("clean end");
        // The connection is gone, and with it the last sender: the outbox ends.
        let mut out = Vec::new();
        while let Some(batch) = inbox.recv().await {
            out.push(batch);
        }
        out
    })
}

const FORWARD_ALL: &str = "  - regex: '^route me'\n    actions:\n      - type: forward\n        topic: 'only'\n  - regex: 'topic'\n    actions:\n      - type: forward\n        topic: 'logs-{{hostname}}'\n  - regex: '.*'\n    field: appname\n    actions:\n      - type: forward\n        topic: 'all'\n";

/// (topic, payload) of every record.
fn routed(records: &[Record]) -> Vec<(&str, &str)> {
    records
        .iter()
        .map(|r| {
            (
                &*r.topic,
                std::str::from_utf8(&r.payload).unwrap_or("<not UTF-8>"),
            )
        })
        .collect()
}

#[test]
fn a_batch_starts_with_the_room_the_last_one_took_and_an_idle_connection_holds_none() {
    let (shared, inbox) = setup(FORWARD_ALL, 1024);
    let mut pipeline = Pipeline::new(shared, Origin::default());
    let frames = |pipeline: &mut Pipeline, n: usize| {
        for i in 0..n {
            pipeline.frame(format!("<13>route me {i}").as_bytes(), false);
        }
    };
    let mut handed = Vec::new();
    smol::block_on(async {
        frames(&mut pipeline, 300);
        assert!(pipeline.flush().await);
        assert_eq!(pipeline.batch.capacity(), 0, "no batch held after a flush");
        frames(&mut pipeline, 1);
        // One allocation with room for 300, not the doublings up to them.
        assert!(
            pipeline.batch.capacity() >= 300,
            "{}",
            pipeline.batch.capacity()
        );
        assert!(pipeline.flush().await);
        frames(&mut pipeline, 1);
        assert!(
            pipeline.batch.capacity() < 300,
            "{}",
            pipeline.batch.capacity()
        );
        assert!(pipeline.flush().await);
        drop(pipeline);
        while let Some(batch) = inbox.recv().await {
            handed.push(batch.len());
        }
    });
    assert_eq!(handed, [300, 1, 1]);
}

#[test]
fn rules_replaced_while_a_connection_is_open_apply_from_its_next_frame() {
    let (shared, inbox) = setup(FORWARD_ALL, 1024);
    let mut pipeline = Pipeline::new(shared.clone(), Origin::default());
    pipeline.frame(b"<13>route me first", false);
    let text = "global:\n  listen:\n    port: 1\n  kafka:\n    conf:\n      bootstrap.servers: b\nrules:\n  - regex: 'route'\n    actions:\n      - type: forward\n        topic: 'new'\n";
    let config = Config::parse("test.yml", text, |_| None).expect("valid config");
    assert_eq!(shared.rules.replace(config.rules), 2);
    // The record already made keeps its routing; the next frame gets the new rules.
    pipeline.frame(b"<13>route me second", false);
    let got = smol::block_on(async {
        assert!(pipeline.flush().await);
        drop(pipeline);
        drop(shared);
        inbox.recv().await.expect("a batch")
    });
    assert_eq!(
        routed(&got),
        [("only", "route me first"), ("new", "route me second")]
    );
}

#[test]
fn a_byte_stream_in_records_out_at_every_chunk_size() {
    let mut data = Vec::new();
    for line in [
        "<13>route me",
        "<13>Oct 11 22:14:15 web1 app[1]: hello",
        "<13>not me either",
    ] {
        data.extend_from_slice(line.as_bytes());
        data.push(b'\n');
    }
    let octet = "<14>1 2024-05-01T12:00:00Z db1 api 77 - - octet-counted";
    data.extend_from_slice(format!("{} {octet}", octet.len()).as_bytes());
    data.extend_from_slice(b"<13>Oct 11 22:14:15 bad/host app: topic \xff\n");
    data.extend_from_slice(b"<13>last line without a newline");
    for chunk in [1, 2, 7, 64, data.len()] {
        let (shared, inbox) = setup(FORWARD_ALL, 1024);
        let metrics = shared.metrics.clone();
        let got = run_stream(shared, &inbox, &data, chunk, 1000);
        assert_eq!(
            routed(&got),
            [
                ("only", "route me"),
                ("all", "hello"),
                ("all", "octet-counted"),
                // The rendered topic is not legal: the default topic.
                ("logs", "<not UTF-8>"),
            ],
            "chunk {chunk}"
        );
        // The body as it came: the byte that is not UTF-8 is kept, not replaced.
        assert_eq!(&got[3].payload[..], b"topic \xff", "chunk {chunk}");
        assert!(
            got.iter().all(|r| r.read_ms > 0),
            "stamped with the read time"
        );
        let count = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
        assert_eq!(count(&metrics.lines), 6, "chunk {chunk}");
        assert_eq!(count(&metrics.forwarded), 4);
        assert_eq!(count(&metrics.unrouted), 2);
        assert_eq!(count(&metrics.unparsed), 0);
        assert_eq!(count(&metrics.invalid_utf8), 1);
        assert_eq!(count(&metrics.invalid_topics), 1);
    }
}

#[test]
fn long_lines_are_truncated_and_counted_in_both_framings() {
    let long = format!("<13>{}", "x".repeat(300));
    let mut data = format!("{long}\n<13>short\n").into_bytes();
    data.extend_from_slice(format!("{} {long}9 <13>short", long.len()).as_bytes());
    let (shared, inbox) = setup(
        "  - regex: '.*'\n    actions:\n      - type: forward\n        topic: t\n",
        1024,
    );
    let metrics = shared.metrics.clone();
    let got = run_stream(shared, &inbox, &data, 64, 100);
    let payloads: Vec<&str> = got
        .iter()
        .map(|r| std::str::from_utf8(&r.payload).unwrap_or(""))
        .collect();
    let cut = &long[4..100];
    assert_eq!(payloads, [cut, "short", cut, "short"]);
    assert_eq!(metrics.truncated.load(Relaxed), 2);
}

#[test]
fn buffer_bounds_the_records_waiting_and_holds_the_sender_back() {
    let (shared, inbox) = setup(FORWARD_ALL, 3);
    let metrics = shared.metrics.clone();
    let outbox = shared.outbox.clone();
    let data: Vec<u8> = (0..20)
        .flat_map(|i| format!("<13>route me {i}\n").into_bytes())
        .collect();
    let stream = Chunked {
        data,
        at: 0,
        chunk: 4096,
    };
    let pipeline = Pipeline::new(shared, Origin::default());
    let (_trigger, shutdown) = crate::base::shutdown::channel();
    let ex = smol::Executor::new();
    smol::block_on(ex.run(async {
        let connection = ex.spawn(run(stream, pipeline, limits(1000), shutdown));
        // The connection fills the outbox to `buffer` records, and no further.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while outbox.waiting() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the outbox never filled"
            );
            smol::Timer::after(Duration::from_millis(1)).await;
        }
        for _ in 0..10 {
            smol::future::yield_now().await;
        }
        assert_eq!(outbox.waiting(), 3);
        // Held back: it has handed over at most what fits, plus the batch it waits with.
        assert!(
            metrics.lines.load(Relaxed) <= 6,
            "read on with nowhere to put it"
        );
        let mut got = 0;
        while got < 20 {
            let batch = inbox.recv().await.expect("a batch");
            assert!(batch.len() <= 3, "a batch of {} with buffer 3", batch.len());
            assert!(outbox.waiting() <= 3);
            got += batch.len();
        }
        connection.await.expect("clean end");
        assert_eq!(metrics.lines.load(Relaxed), 20);
    }));
}

/// The batches one connection hands over for `lines` lines that arrive `chunk` bytes per
/// read, the records in them, and the bytes sent.
fn batches_for(lines: usize, chunk: usize) -> (usize, usize, usize) {
    let (shared, inbox) = setup(FORWARD_ALL, 100_000);
    let data: String = (0..lines)
        .map(|i| format!("<13>1 - h app - - - route me {i}\n"))
        .collect();
    let batches = run_batches(shared, &inbox, data.as_bytes(), chunk, 64 * 1024);
    let records = batches.iter().map(Vec::len).sum();
    (batches.len(), records, data.len())
}

#[test]
fn a_fast_sender_is_read_in_large_reads_and_a_slow_one_in_small() {
    // About 690 KB of lines, all waiting. Read 2 KiB at a time they would make some 340
    // batches of about 60 records, each a wake-up of the publisher. Each read that fills
    // the buffer doubles it, up to a read (64 KiB): then a read holds more lines than a
    // batch takes.
    let lines = 20_000;
    let (batches, records, sent) = batches_for(lines, usize::MAX);
    assert_eq!(records, lines);
    assert!(
        batches < lines / hotdog_stages::core::BATCH_MAX * 3 / 2,
        "{batches} batches for {lines} lines ({sent} bytes) that were all waiting"
    );
    // A sender whose every read leaves room over keeps the small buffer: a read, and a
    // batch, per 500 bytes. Its lines all arrive.
    let (batches, records, sent) = batches_for(2_000, 500);
    assert_eq!(records, 2_000);
    assert!(
        batches >= sent / 500,
        "{batches} batches for {sent} bytes read 500 at a time"
    );
}

/// Hands out one read that fills whatever room it is given with lines, then nothing (and
/// never wakes the task: only the read loop's timers do); notes the room of every read.
struct OneBurst {
    sent: bool,
    offered: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl AsyncRead for OneBurst {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        self.offered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(buf.len());
        if self.sent {
            return Poll::Pending;
        }
        self.sent = true;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = if i % 16 == 15 { b'\n' } else { b'x' };
        }
        Poll::Ready(Ok(buf.len()))
    }
}

#[test]
fn a_buffer_grown_for_a_burst_is_given_back_after_a_quiet_second_and_stays_small() {
    let (shared, _inbox) = setup(FORWARD_ALL, 100_000);
    let offered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stream = OneBurst {
        sent: false,
        offered: offered.clone(),
    };
    let pipeline = Pipeline::new(shared, Origin::default());
    let (_trigger, shutdown) = crate::base::shutdown::channel();
    smol::block_on(async {
        use futures_lite::FutureExt;
        let quiet = async {
            smol::Timer::after(SHRINK_AFTER * 5 / 2).await;
            Ok(End::Idle)
        };
        read_all(stream, pipeline, limits(64 * 1024), shutdown)
            .or(quiet)
            .await
            .expect("no error");
    });
    let offered = offered.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // The burst filled the small buffer, so the next read had twice the room; a quiet
    // second later the buffer was given back, and no read since had more than that.
    assert_eq!(
        offered[..2],
        [SMALL, 2 * SMALL],
        "rooms offered: {offered:?}"
    );
    assert_eq!(offered.last(), Some(&SMALL), "rooms offered: {offered:?}");
}

#[test]
fn a_read_that_fills_the_buffer_doubles_it_up_to_a_read_and_only_a_long_frame_further() {
    let largest = 1024 * 1024;
    let mut buf = vec![0u8; SMALL];
    // Reads that each filled the buffer, every byte of them cut into frames.
    let mut sizes = Vec::new();
    for _ in 0..7 {
        let (mut start, mut end) = (buf.len(), buf.len());
        make_room(&mut buf, &mut start, &mut end, largest, &mut true);
        assert_eq!((start, end), (0, 0));
        sizes.push(buf.len() / 1024);
    }
    assert_eq!(sizes, [4, 8, 16, 32, 64, 64, 64]);
    // A read that left room over: the buffer stays as it is.
    let (mut start, mut end) = (100, 200);
    make_room(&mut buf, &mut start, &mut end, largest, &mut false);
    assert_eq!((buf.len(), start, end), (READ_SIZE, 100, 200));
    // A long frame in progress (more than half the buffer, not cut yet) moves to the
    // front and grows the buffer past a read, up to `largest`.
    let (mut start, mut end) = (10, READ_SIZE);
    make_room(&mut buf, &mut start, &mut end, largest, &mut false);
    assert_eq!((buf.len(), start, end), (2 * READ_SIZE, 0, READ_SIZE - 10));
}

#[test]
fn a_datagram_batch_waits_for_room_a_while_then_what_has_none_is_dropped() {
    let (shared, inbox) = setup(FORWARD_ALL, 3);
    let mut pipeline = Pipeline::new(shared, Origin::default());
    let frame = |p: &mut Pipeline, n: usize| {
        for i in 0..n {
            p.frame(format!("<13>route me {i}").as_bytes(), false);
        }
    };
    frame(&mut pipeline, 2);
    assert_eq!(smol::block_on(pipeline.flush_within(Duration::ZERO)), 0);
    // Room for one of two: that one goes, the other is dropped at once without patience.
    frame(&mut pipeline, 2);
    assert_eq!(smol::block_on(pipeline.flush_within(Duration::ZERO)), 1);
    // Full: with patience, the batch waits for the room the publisher gives back.
    frame(&mut pipeline, 3);
    let taken = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let first = smol::block_on(inbox.recv()).map_or(0, |b| b.len());
        (first, inbox)
    });
    let start = Instant::now();
    assert_eq!(
        smol::block_on(pipeline.flush_within(Duration::from_millis(300))),
        1,
        "two of three found the room freed, the third none: the outbox stayed full"
    );
    let (first, inbox) = taken.join().expect("taker");
    assert_eq!(first, 2);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "it waited its patience"
    );
    let queued: usize = std::iter::from_fn(|| match inbox.try_recv() {
        publish::Polled::Batch(b, _) => Some(b.len()),
        _ => None,
    })
    .sum();
    assert_eq!(
        queued, 3,
        "the one of the second batch and two of the third"
    );
}

#[test]
fn a_read_loops_alarm_is_set_again_only_to_ring_earlier_and_says_when_it_rang_early() {
    use futures_lite::future::poll_once;
    let ms = Duration::from_millis;
    smol::block_on(async {
        let mut alarm = Alarm::default();
        let start = Instant::now();
        // Nothing to wait for: it does not ring.
        assert!(poll_once(alarm.until::<()>(None)).await.is_none());
        // Set for 50 ms: it rings then, with what was due.
        assert_eq!(
            alarm.until(Some((start + ms(50), "due"))).await,
            Some("due")
        );
        assert!(start.elapsed() >= ms(50));
        // Set for 100 ms, then asked for 1.5 s (a read moved the time on): it keeps 100 ms
        // and rings early, with nothing due; set again, it rings at 1.5 s.
        assert!(poll_once(alarm.until(Some((start + ms(100), 1))))
            .await
            .is_none());
        assert_eq!(alarm.until(Some((start + ms(1500), 2))).await, None);
        assert_eq!(alarm.until(Some((start + ms(1500), 2))).await, Some(2));
        assert!(start.elapsed() >= ms(1500));
        // Set for 3 s more, then asked for 200 ms more: it moves to ring earlier.
        let now = Instant::now();
        assert!(poll_once(alarm.until(Some((now + ms(3000), 3))))
            .await
            .is_none());
        assert_eq!(alarm.until(Some((now + ms(200), 4))).await, Some(4));
        assert!(now.elapsed() < ms(3000), "{:?}", now.elapsed());
    });
}
