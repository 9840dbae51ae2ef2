use std::time::Duration;

use bytes::Bytes;
use hotdog_stages::core::{Awaited, Batch, Record, Standing};

use super::*;

use crate::base::metrics::LineCounts;

fn config(dir: &Path, max_size: u64) -> config::Spool {
    config::Spool {
        path: dir.to_path_buf(),
        max_size,
        fsync: Fsync::Every(Duration::from_secs(1)),
        id_header: true,
    }
}

fn batch(from: usize, n: usize) -> Batch {
    (from..from + n)
        .map(|i| Record {
            topic: "logs".into(),
            key: None,
            payload: Bytes::from(format!("line {i}")),
            block: Default::default(),
            headers: Vec::new(),
            read_ms: 1_700_000_000_000,
            ack: Default::default(),
        })
        .collect()
}

fn payloads(batch: &Batch) -> Vec<String> {
    batch
        .iter()
        .map(|r| r.payload_text().into_owned())
        .collect()
}

fn id_of(r: &Record) -> String {
    r.ack
        .spool_id()
        .map(|(name, id)| format!("{name}-{id}"))
        .unwrap_or_default()
}

/// Everything the feed has now, from memory and disk, without waiting for more.
fn drain(feed: &Feed) -> Batch {
    let mut all = Vec::new();
    loop {
        match feed.mem.try_recv() {
            Ok(b) => all.extend(b),
            Err(_) => match feed.read() {
                read::Read::Batch(b) => all.extend(b),
                read::Read::Nothing => {}
                read::Read::Live => match feed.mem.try_recv() {
                    Ok(b) => all.extend(b),
                    Err(_) => return all,
                },
            },
        }
    }
}

fn settle_all(records: Batch) {
    for r in records {
        r.ack.settle(hotdog_stages::core::Outcome::Delivered {
            partition: 0,
            offset: 0,
        });
    }
}

#[test]
fn what_the_publisher_cannot_take_in_memory_it_reads_back_from_disk_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path(), 1 << 30), Metrics::new()).unwrap();
    // Room for two batches in memory: the other eight wait on disk.
    let (mut writer, feed) = spool.start(2);
    for b in 0..10 {
        writer.write(batch(b * 100, 100), &LineCounts::default());
    }
    let got = drain(&feed);
    let expected: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
    assert_eq!(payloads(&got), expected);
    // Once it caught up, the next batch comes in memory again.
    writer.write(batch(1000, 5), &LineCounts::default());
    assert_eq!(feed.mem.len(), 1);
    let ids: std::collections::HashSet<String> = got.iter().map(id_of).collect();
    assert_eq!(ids.len(), 1000, "every record has an id of its own");
    assert_eq!(spool.shared.metrics.spool_written.load(Relaxed), 1005);
}

#[test]
fn after_a_restart_only_what_kafka_did_not_acknowledge_is_sent_again_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (sent, ids) = {
        let spool = Spool::open(&config(dir.path(), 1 << 30), metrics.clone()).unwrap();
        let (mut writer, feed) = spool.start(100);
        for b in 0..4 {
            writer.write(batch(b * 50, 50), &LineCounts::default());
        }
        let mut got = drain(&feed);
        let ids: Vec<String> = got.iter().map(id_of).collect();
        // Kafka acknowledged the first 120; the rest were in flight at the crash.
        let rest = got.split_off(120);
        settle_all(got);
        writer.tend();
        assert_eq!(metrics.spool_records.load(Relaxed), 80);
        drop(rest); // unsettled: as at a crash, the spool keeps them
        (200, ids)
    };
    assert_eq!(sent, 200);
    let again = Metrics::new();
    let spool = Spool::open(&config(dir.path(), 1 << 30), again.clone()).unwrap();
    let (_writer, feed) = spool.start(100);
    let got = drain(&feed);
    let expected: Vec<String> = (120..200).map(|i| format!("line {i}")).collect();
    assert_eq!(payloads(&got), expected);
    let got_ids: Vec<String> = got.iter().map(id_of).collect();
    assert_eq!(got_ids, ids[120..]);
    assert_eq!(again.spool_replayed.load(Relaxed), 80);
    assert_eq!(
        again.lines.load(Relaxed),
        80,
        "the restart counts what it sends again as read"
    );
}

#[test]
fn segments_go_once_every_record_in_them_is_settled() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB: segments of 128 KiB.
    let spool = Spool::open(&config(dir.path(), 1 << 20), Metrics::new()).unwrap();
    let (mut writer, feed) = spool.start(1000);
    let big = |from| -> Batch {
        let mut b = batch(from, 100);
        for r in &mut b {
            r.payload = Bytes::from(vec![b'x'; 1000]);
        }
        b
    };
    for b in 0..6 {
        writer.write(big(b * 100), &LineCounts::default());
    }
    let segs = |d: &Path| {
        fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    };
    assert!(segs(dir.path()) >= 4, "600 KB make several segments");
    settle_all(drain(&feed));
    writer.tend();
    assert_eq!(segs(dir.path()), 1, "only the segment being written stays");
    assert_eq!(spool.shared.metrics.spool_records.load(Relaxed), 0);
}

#[test]
fn a_full_spool_holds_the_writer_until_kafka_takes_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path(), 1 << 20), Metrics::new()).unwrap();
    let (mut writer, feed) = spool.start(1000);
    let mut b = batch(0, 600);
    for r in &mut b {
        r.payload = Bytes::from(vec![b'x'; 1000]);
    }
    writer.write(b, &LineCounts::default());
    let held = drain(&feed);
    let full = spool.clone();
    let t = std::thread::spawn(move || {
        let mut b = batch(600, 600);
        for r in &mut b {
            r.payload = Bytes::from(vec![b'y'; 1000]);
        }
        writer.write(b, &LineCounts::default());
        writer
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!t.is_finished(), "the second 600 KB do not fit in 1 MiB");
    assert!(full.full().is_some());
    assert_eq!(full.shared.metrics.spool_full.load(Relaxed), 1);
    settle_all(held);
    let _writer = t.join().unwrap();
    assert!(full.full().is_none());
    assert_eq!(drain(&feed).len(), 600);
}

#[test]
fn a_relp_message_with_ack_spool_is_safe_once_written_and_one_with_ack_kafka_once_settled() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path(), 1 << 30), Metrics::new()).unwrap();
    let (mut writer, feed) = spool.start(1);
    let done = Arc::new(event_listener::Event::new());
    let early = Awaited::answered(done.clone(), true);
    let late = Awaited::answered(done, false);
    let mut b = batch(0, 2);
    b[0].ack = early.share();
    b[1].ack = late.share();
    early.release();
    late.release();
    writer.write(batch(10, 1), &LineCounts::default()); // fills memory: the next batch waits on disk
    writer.write(b, &LineCounts::default());
    assert_eq!(early.standing(), Standing::Safe);
    assert_eq!(late.standing(), Standing::Waiting);
    // Read back from disk, the record still carries its sender's share.
    let got = drain(&feed);
    assert_eq!(payloads(&got), ["line 10", "line 0", "line 1"]);
    settle_all(got);
    assert_eq!(late.standing(), Standing::Safe);
}

#[test]
fn a_torn_segment_and_a_flipped_byte_cost_only_the_damaged_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(&config(dir.path(), 1 << 20), Metrics::new()).unwrap();
        let (mut writer, _feed) = spool.start(1000);
        for b in 0..6 {
            let mut records = batch(b * 100, 100);
            for r in &mut records {
                r.payload = Bytes::from(format!("{:0>1000}", r.payload_text()));
            }
            writer.write(records, &LineCounts::default());
        }
        writer.finish();
    }
    let mut segs: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    // A flipped byte in the middle of the first segment, the last one cut short.
    let mut first = fs::read(&segs[0]).unwrap();
    first[5000] ^= 0x40;
    fs::write(&segs[0], &first).unwrap();
    let last = segs.last().unwrap();
    let len = fs::metadata(last).unwrap().len();
    File::options()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 300)
        .unwrap();

    let metrics = Metrics::new();
    let spool = Spool::open(&config(dir.path(), 1 << 20), metrics.clone()).unwrap();
    let (_writer, feed) = spool.start(1000);
    let got = drain(&feed);
    assert_eq!(metrics.spool_corrupt.load(Relaxed), 2);
    assert_eq!(got.len(), 598, "one record lost to each fault");
    assert!(spool.damage().is_some());
    let mut seen: Vec<String> = payloads(&got);
    seen.dedup();
    assert_eq!(seen.len(), 598);
}

#[test]
fn a_spool_is_used_by_one_hotdog_and_a_later_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path(), 1 << 30), Metrics::new()).unwrap();
    let again = Spool::open(&config(dir.path(), 1 << 30), Metrics::new());
    assert!(matches!(again, Err(Error::Locked(_))), "{again:?}");
    drop(spool);
    let mut h = format::header();
    h[8] = 9;
    fs::write(segment_path(dir.path(), 5), h).unwrap();
    let later = Spool::open(&config(dir.path(), 1 << 30), Metrics::new());
    assert!(
        matches!(later, Err(Error::Newer { version: 9, .. })),
        "{later:?}"
    );
    assert!(later.is_err_and(|e| e.is_config()));
    // Not a segment at all: moved aside, and the spool opens.
    fs::write(segment_path(dir.path(), 5), b"garbage").unwrap();
    let metrics = Metrics::new();
    Spool::open(&config(dir.path(), 1 << 30), metrics.clone()).unwrap();
    assert!(dir
        .path()
        .join("damaged")
        .join(format!("{:020}.seg", 5))
        .exists());
    assert_eq!(metrics.spool_corrupt.load(Relaxed), 1);
}

#[test]
fn a_record_id_reads_like_its_name_and_number() {
    for (name, n) in [
        ("0123456789abcdef", 0u64),
        ("0123456789abcdef", 9),
        ("0123456789abcdef", 10),
        ("fedcba9876543210", 1_234_567),
        ("fedcba9876543210", u64::MAX),
    ] {
        let id = crate::spool::RecordId::new(name, n);
        assert_eq!(id.as_bytes(), format!("{name}-{n}").as_bytes());
    }
    // A name longer than any hotdog writes is cut, never overflows.
    let long = "x".repeat(100);
    let id = crate::spool::RecordId::new(&long, u64::MAX);
    assert_eq!(
        id.as_bytes(),
        format!("{}-{}", &long[..40], u64::MAX).as_bytes()
    );
}
