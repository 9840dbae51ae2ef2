//! The publisher's side of the spool: batches in memory while it keeps up; when it fell behind
//! (the broker is away, or slow) or after a restart, records read back from disk, oldest first,
//! until it has caught up with the writer.

use std::os::unix::fs::FileExt as _;
use std::sync::atomic::AtomicUsize;

use hotdog_stages::core::Batch;

use super::*;

/// Bytes read from a segment at once (more when one record is longer).
const CHUNK: usize = 1 << 20;

/// Where the publisher takes its batches from when there is a spool.
pub struct Feed {
    shared: Arc<Shared>,
    pub(super) mem: async_channel::Receiver<Batch>,
    /// The next read's size, when a record is longer than [`CHUNK`].
    want: AtomicUsize,
}

/// What one look at the disk gave.
pub(super) enum Read {
    Batch(Batch),
    /// Nothing to send in what was read (settled records, damage); look again.
    Nothing,
    /// The publisher has caught up: take from memory.
    Live,
}

impl Feed {
    pub(super) fn new(shared: Arc<Shared>, mem: async_channel::Receiver<Batch>) -> Feed {
        Feed {
            shared,
            mem,
            want: AtomicUsize::new(CHUNK),
        }
    }

    /// The next batch: from memory, or from disk where the publisher fell behind. `None` once
    /// the writer has finished and everything was handed over, or, when `stop` says so
    /// (shutdown ran out of time), once memory is empty: what is on disk stays for the next
    /// start.
    pub async fn recv(&self, stop: impl Fn() -> bool) -> Option<Batch> {
        loop {
            if let Ok(batch) = self.mem.try_recv() {
                self.shared.room.notify(1);
                return Some(batch);
            }
            if !stop() {
                match self.read() {
                    Read::Batch(batch) => return Some(batch),
                    Read::Nothing => continue,
                    Read::Live => {}
                }
            }
            match self.mem.recv().await {
                Ok(batch) => {
                    self.shared.room.notify(1);
                    return Some(batch);
                }
                Err(_) if stop() || self.shared.state().cursor == Cursor::Live => return None,
                Err(_) => {}
            }
        }
    }

    /// Reads the next piece of the disk after the cursor; the cursor moves past it.
    pub(super) fn read(&self) -> Read {
        let Some((base, offset, end)) = self.next_piece() else {
            return Read::Live;
        };
        let size = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(self.want.load(Relaxed).max(CHUNK));
        let mut buf = vec![0u8; size];
        let path = segment_path(&self.shared.dir, base);
        let read = File::open(&path).and_then(|f| f.read_exact_at(&mut buf, offset));
        if let Err(e) = read {
            // Deleted under the reader (all of it was settled), or unreadable now: on to the
            // next segment.
            log::warn!(
                "spool: cannot read {} at {offset}: {e}; going on with the next segment",
                path.display()
            );
            self.move_to(base, end);
            return Read::Nothing;
        }
        let mut records = Vec::new();
        let mut next = offset + size as u64;
        for found in format::frames(&buf, 0) {
            match found {
                Found::Record(_, s) => records.push(s),
                Found::Corrupt { offset: o, len } => self.damage(base, offset + o as u64, len),
                Found::Torn { offset: o, len } if next < end => {
                    // The piece ends inside a record: read it whole next time.
                    next = offset + o as u64;
                    if o == 0 {
                        let frame = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                        self.want.store(frame + format::FRAME_LEN, Relaxed);
                    }
                    let _ = len;
                }
                Found::Torn { offset: o, len } => self.damage(base, offset + o as u64, len),
            }
        }
        if next > offset {
            self.want.store(CHUNK, Relaxed);
        }
        self.move_to(base, next);
        let batch = self.unsettled(base, records);
        if batch.is_empty() {
            Read::Nothing
        } else {
            Read::Batch(batch)
        }
    }

    /// The segment, offset and readable end the cursor points at; `None` when the publisher
    /// has caught up (the cursor then says so, and the writer hands over in memory again).
    fn next_piece(&self) -> Option<(u64, u64, u64)> {
        let mut st = self.shared.state();
        loop {
            let Cursor::Disk { base, offset } = st.cursor else {
                return None;
            };
            let last = st.segments.keys().next_back().copied();
            let Some((&b, seg)) = st.segments.range(base..).next() else {
                st.cursor = Cursor::Live;
                return None;
            };
            let offset = if b == base {
                offset
            } else {
                format::HEADER_LEN as u64
            };
            if offset < seg.len {
                return Some((b, offset, seg.len));
            }
            if Some(b) == last {
                st.cursor = Cursor::Live;
                return None;
            }
            st.cursor = Cursor::Disk {
                base: b + 1,
                offset: format::HEADER_LEN as u64,
            };
        }
    }

    fn move_to(&self, base: u64, offset: u64) {
        let mut st = self.shared.state();
        st.cursor = Cursor::Disk { base, offset };
    }

    /// A damaged place met while reading: counted and logged, unless the start did already.
    fn damage(&self, base: u64, at: u64, len: usize) {
        let known = self
            .shared
            .state()
            .segments
            .get(&base)
            .is_some_and(|s| s.damaged.contains(&at));
        if !known {
            let at = usize::try_from(at).unwrap_or(usize::MAX);
            self.shared.damaged(base, at, len, "a damaged record");
        }
    }

    /// The records read that are not settled yet, each with its share of the spool (and of a
    /// RELP message, if one waits for it).
    fn unsettled(&self, base: u64, records: Vec<format::Spooled>) -> Batch {
        let st = self.shared.state();
        let seg = st.segments.get(&base);
        let keep: Vec<format::Spooled> = records
            .into_iter()
            .filter(|s| !seg.is_some_and(|seg| seg.is_done(s.id)))
            .collect();
        drop(st);
        let replayed = keep
            .iter()
            .filter(|s| s.id < self.shared.first_of_run)
            .count();
        self.shared
            .metrics
            .spool_replayed
            .fetch_add(replayed as u64, Relaxed);
        let ledger: Arc<dyn Ledger> = self.shared.clone();
        let mut waiting = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        keep.into_iter()
            .map(|s| {
                let mut record = s.record;
                record.ack = waiting.remove(&s.id).unwrap_or_default();
                record.ack.spooled(ledger.clone(), s.id);
                record
            })
            .collect()
    }
}
