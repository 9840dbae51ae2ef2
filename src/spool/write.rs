//! The writer: one thread that appends every batch to the current segment, makes it durable as
//! `fsync` says, hands it to the publisher in memory while the publisher keeps up, writes down
//! what was settled, and deletes segments once every record in them is.

use std::os::unix::fs::FileExt as _;

use event_listener::Listener as _;
use std::time::{Duration, Instant};

use hotdog_stages::core::Batch;

use crate::base::metrics::LineCounts;

use super::open::{remove_segment, sync_dir};
use super::*;

/// How long a full spool waits before it tries again.
const FULL_WAIT: Duration = Duration::from_millis(20);

/// While Kafka answers, a batch waits for room in the publisher's memory rather than being left
/// on disk to be read back (which costs more than the write); once Kafka has settled nothing
/// for this long while records wait, it is away or stuck, and the spool takes the traffic.
const STALL: Duration = Duration::from_millis(100);

/// A file to make durable, its path for the log, and whether its metadata too (a directory).
type Unsynced = (String, File, bool);

/// Makes files durable on a thread of its own under `fsync: <duration>`: on a disk busy with
/// other writers one `fsync` can take seconds, and the writer keeps taking batches meanwhile
/// (with `fsync: always` it syncs each batch itself: that is what the setting promises).
struct Syncer {
    /// The files to sync, each with its path for the log.
    tx: std::sync::mpsc::Sender<Vec<Unsynced>>,
    /// A sync is under way; the next waits for it.
    busy: Arc<AtomicBool>,
}

impl Syncer {
    fn start() -> Syncer {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Unsynced>>();
        let busy = Arc::new(AtomicBool::new(false));
        let done = busy.clone();
        let started = std::thread::Builder::new()
            .name("spool-sync".into())
            .spawn(move || {
                for files in rx {
                    sync_all(files);
                    done.store(false, Release);
                }
            });
        if let Err(e) = started {
            // Its receiver is gone with it: the writer syncs itself.
            log::warn!("spool: cannot start the thread that syncs: {e}; the writer syncs");
        }
        Syncer { tx, busy }
    }

    /// Hands `files` over; they come back when there is no syncer thread.
    fn hand(&self, files: Vec<Unsynced>) -> Result<(), Vec<Unsynced>> {
        self.busy.store(true, Release);
        self.tx.send(files).map_err(|e| {
            self.busy.store(false, Release);
            e.0
        })
    }

    /// Waits for the sync under way, if any (at shutdown).
    fn wait(&self) {
        let start = Instant::now();
        while self.busy.load(Acquire) && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The writing side of a spool (see [`Spool::start`]).
pub struct Writer {
    shared: Arc<Shared>,
    /// To the publisher, while it keeps up.
    mem: async_channel::Sender<Batch>,
    /// The segment being written: its first id and file.
    current: Option<(u64, File)>,
    buf: Vec<u8>,
    /// The ids settled since the last look, swapped with the ledger's list: neither list is
    /// grown again from nothing every few milliseconds.
    ids: Vec<u64>,
    last_sync: Instant,
    /// Written since the last sync: the current segment, and acknowledgements.
    dirty: bool,
    syncer: Syncer,
    /// Segments were made or deleted since the last sync: the directory is synced with it.
    dir_dirty: bool,
    /// Segments closed since the last sync: synced with the next.
    closed: Vec<Unsynced>,
    /// Since when the spool has been full, and why.
    full: Option<String>,
    /// Writing acknowledgements failed last time (said once).
    acks_failing: bool,
    /// Records settled when the writer last looked, and since when that has not changed while
    /// records waited: how long Kafka has been silent.
    acked: u64,
    silent_since: Instant,
    /// When it says so, a batch stays on disk rather than wait for the publisher's memory,
    /// however Kafka answers (senders that cannot wait would lose what they send meanwhile).
    give_way: Option<Box<dyn Fn() -> bool + Send>>,
}

impl Spool {
    /// The writer and the publisher's feed, which holds at most `batches` batches in memory
    /// before the rest is read back from disk.
    pub fn start(&self, batches: usize) -> (Writer, Feed) {
        let (tx, rx) = async_channel::bounded(batches.max(1));
        let writer = Writer {
            shared: self.shared.clone(),
            mem: tx,
            current: None,
            buf: Vec::new(),
            ids: Vec::new(),
            last_sync: Instant::now(),
            dirty: false,
            syncer: Syncer::start(),
            dir_dirty: false,
            closed: Vec::new(),
            full: None,
            acks_failing: false,
            acked: 0,
            silent_since: Instant::now(),
            give_way: None,
        };
        (writer, Feed::new(self.shared.clone(), rx))
    }
}

/// Why a batch could not be written now.
struct Full(String);

impl Writer {
    /// From now on, a batch stops waiting for room in the publisher's memory as soon as
    /// `now` says so, and stays on disk (see [`Writer::write`]).
    pub fn give_way_when(&mut self, now: impl Fn() -> bool + Send + 'static) {
        self.give_way = Some(Box::new(now));
    }

    /// Writes `batch` to the spool, each record with its id, counts the lines it came from
    /// (`lines`) as read, and hands it on. Blocks while the spool is full (`max_size`, or the
    /// disk): the sessions then feel backpressure, as they do with a full outbox.
    pub fn write(&mut self, mut batch: Batch, lines: &LineCounts) {
        if batch.is_empty() {
            self.shared.metrics.add_lines(lines);
            return;
        }
        let n = batch.len() as u64;
        let first = {
            let mut st = self.shared.state();
            let first = st.next_id;
            st.next_id += n;
            first
        };
        self.buf.clear();
        for (id, record) in (first..).zip(batch.iter()) {
            format::append(&mut self.buf, id, record);
        }
        let (base, at) = loop {
            match self.append(first) {
                Ok(written) => break written,
                Err(Full(why)) => self.wait_for_room(why),
            }
        };
        if let Some(why) = self.full.take() {
            self.shared.full.store(false, Relaxed);
            log::info!("spool: there is room again (it was full: {why}); reading on");
        }
        self.shared.metrics.spool_written.fetch_add(n, Relaxed);
        self.shared.metrics.add_lines(lines);
        let ledger: Arc<dyn Ledger> = self.shared.clone();
        for (id, record) in (first..).zip(batch.iter_mut()) {
            record.ack.spooled(ledger.clone(), id);
            if record.ack.answers_when_spooled() {
                record.ack.settle_sender();
            }
        }
        self.wait_while_kafka_answers();
        self.publish(batch, first, base, at);
    }

    /// When the publisher's memory is full: waits for room as long as Kafka keeps settling
    /// records (senders then go at Kafka's pace, as without a spool); returns at once when it
    /// has settled nothing for [`STALL`] while records waited, so that the batch stays on disk.
    fn wait_while_kafka_answers(&mut self) {
        loop {
            if self.give_way.as_ref().is_some_and(|now| now()) {
                return;
            }
            {
                let st = self.shared.state();
                let acked = self.shared.acked.load(Relaxed);
                if acked != self.acked || st.records == 0 {
                    self.acked = acked;
                    self.silent_since = Instant::now();
                }
                if st.cursor != Cursor::Live || !self.mem.is_full() {
                    return;
                }
            }
            if self.silent_since.elapsed() >= STALL || self.mem.is_closed() {
                return;
            }
            let room = self.shared.room.listen();
            if !self.mem.is_full() {
                return;
            }
            let _ = room.wait_timeout(Duration::from_millis(5));
        }
    }

    /// Appends the encoded batch to the current segment (a new one when it is too long);
    /// returns the segment and where the batch starts in it. A failed write is cut off again: a
    /// full disk leaves no torn record behind. The reader does not see the batch until
    /// [`Writer::publish`].
    fn append(&mut self, first: u64) -> Result<(u64, u64), Full> {
        let len = self.buf.len() as u64;
        {
            let st = self.shared.state();
            if st.bytes + len > self.shared.max_size && st.records > 0 {
                return Err(Full(format!("max_size {} bytes", self.shared.max_size)));
            }
        }
        let base = self.segment_for(first, len)?;
        let at = self.shared.state().segments.get(&base).map_or(0, |s| s.len);
        let Some((_, file)) = &self.current else {
            return Err(Full("no segment".into()));
        };
        if let Err(e) = file.write_all_at(&self.buf, at) {
            let _ = file.set_len(at);
            return Err(Full(format!("cannot write {}: {e}", self.path(base))));
        }
        if self.shared.fsync == Fsync::Always {
            if let Err(e) = file.sync_data() {
                let _ = file.set_len(at);
                return Err(Full(format!("cannot sync {}: {e}", self.path(base))));
            }
        } else {
            self.dirty = true;
        }
        Ok((base, at))
    }

    fn path(&self, base: u64) -> String {
        segment_path(&self.shared.dir, base).display().to_string()
    }

    /// The segment to append `len` bytes to: the current one, or a new one named `first` when
    /// there is none or it would grow past the segment size.
    fn segment_for(&mut self, first: u64, len: u64) -> Result<u64, Full> {
        let roll = match &self.current {
            None => true,
            Some((base, _)) => {
                let at = self.shared.state().segments.get(base).map_or(0, |s| s.len);
                at > format::HEADER_LEN as u64 && at + len > self.shared.segment_size
            }
        };
        if roll {
            if let Some((base, file)) = self.current.take() {
                // Made durable with the next sync, like the rest.
                self.closed.push((self.path(base), file, false));
                self.dirty = true;
                if let Some(seg) = self.shared.state().segments.get_mut(&base) {
                    seg.sealed = true;
                }
            }
            let path = segment_path(&self.shared.dir, first);
            let made = File::options()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
                .and_then(|f| f.write_all_at(&format::header(), 0).map(|()| f));
            let file = match made {
                Ok(f) => f,
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    return Err(Full(format!("cannot make {}: {e}", path.display())));
                }
            };
            if self.shared.fsync == Fsync::Always {
                // The records synced into it must be found after a crash.
                sync_dir(&self.shared.dir);
            } else {
                self.dir_dirty = true;
            }
            let mut st = self.shared.state();
            st.segments.insert(first, Segment::new(first));
            st.bytes += format::HEADER_LEN as u64;
            drop(st);
            self.current = Some((first, file));
        }
        match &self.current {
            Some((base, _)) => Ok(*base),
            None => Err(Full("no segment".into())),
        }
    }

    /// The spool is full: says so once, counts it, and waits a little, tending the spool (what
    /// Kafka acknowledges meanwhile makes room).
    fn wait_for_room(&mut self, why: String) {
        if self.full.is_none() {
            self.shared.metrics.spool_full.fetch_add(1, Relaxed);
            self.shared.full.store(true, Relaxed);
            log::warn!(
                "spool: full ({why}): senders are held back (UDP is dropped) until Kafka takes \
                 what it holds"
            );
            self.full = Some(why);
        }
        std::thread::sleep(FULL_WAIT);
        self.retire_if_settled();
        self.tend();
    }

    /// A full spool whose current segment is all settled lets it go, so that it can be deleted:
    /// on a small disk the current segment may be the whole spool.
    fn retire_if_settled(&mut self) {
        let Some((base, _)) = &self.current else {
            return;
        };
        let mut st = self.shared.state();
        if let Some(seg) = st.segments.get_mut(base) {
            if seg.pending == 0 {
                seg.sealed = true;
                drop(st);
                self.current = None;
            }
        }
    }

    /// Makes a written batch readable and hands it to the publisher in memory, or, when the
    /// publisher is behind, leaves it on disk for the publisher to read back (a RELP sender's
    /// shares wait by id). One lock for both: the reader sees the batch on disk or gets it in
    /// memory, never both.
    fn publish(&mut self, mut batch: Batch, first: u64, base: u64, at: u64) {
        let mut st = self.shared.state();
        let n = batch.len() as u64;
        let len = self.buf.len() as u64;
        if let Some(seg) = st.segments.get_mut(&base) {
            seg.len = at + len;
            seg.pending += n;
            seg.last_id = Some(first + n - 1);
            if seg.first_ms == 0 {
                seg.first_ms = batch[0].read_ms;
            }
        }
        st.records += n;
        st.bytes += len;
        if st.cursor == Cursor::Live {
            match self.mem.try_send(batch) {
                Ok(()) => return,
                Err(e) => batch = e.into_inner(),
            }
            if let Some((base, _)) = &self.current {
                st.cursor = Cursor::Disk {
                    base: *base,
                    offset: at,
                };
            }
        }
        // Under the state's lock: the reader may read the batch as soon as it is let go.
        let mut waiting = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (id, record) in (first..).zip(batch.iter_mut()) {
            if record.ack.is_awaited() {
                waiting.insert(id, std::mem::take(&mut record.ack));
            }
        }
    }

    /// Writes down what was settled since the last time, deletes the segments that are done,
    /// makes what was written durable when `fsync` says, and updates the gauges. Called after
    /// every batch and at least every few milliseconds.
    pub fn tend(&mut self) {
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        std::mem::swap(
            &mut ids,
            &mut *self
                .shared
                .settled
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let current = self.current.as_ref().map(|(b, _)| *b);
        let shared = self.shared.clone();
        let mut st = shared.state();
        if !ids.is_empty() {
            ids.sort_unstable();
            ids.dedup();
            self.write_acks(&mut st, &ids);
        }
        self.delete_done(&mut st, current);
        self.gauges(&st);
        drop(st);
        self.ids = ids;
        self.sync_if_due();
    }

    /// Marks `ids` (sorted) settled and appends them, in runs, to their segments'
    /// acknowledgement files.
    fn write_acks(&mut self, st: &mut State, ids: &[u64]) {
        let mut i = 0;
        while i < ids.len() {
            let Some((&base, _)) = st.segments.range(..=ids[i]).next_back() else {
                i += 1;
                continue;
            };
            let end = st
                .segments
                .range(base + 1..)
                .next()
                .map_or(u64::MAX, |(&b, _)| b);
            let mut entries = Vec::new();
            let mut settled = 0;
            let seg = st
                .segments
                .get_mut(&base)
                .expect("the segment was just found");
            while i < ids.len() && ids[i] < end {
                let first = ids[i];
                let mut count = 0u32;
                while i < ids.len() && ids[i] == first + u64::from(count) && ids[i] < end {
                    if seg.settle(ids[i]) {
                        settled += 1;
                    }
                    count += 1;
                    i += 1;
                }
                entries.extend_from_slice(&format::ack_entry(first, count));
            }
            seg.pending = seg.pending.saturating_sub(settled);
            let written = self.append_acks(seg, &entries);
            st.records = st.records.saturating_sub(settled);
            st.bytes += written;
        }
    }

    /// Appends entries to a segment's acknowledgements file; returns the bytes written. A
    /// failure loses nothing but the note: those records would be sent again after a restart.
    fn append_acks(&mut self, seg: &mut Segment, entries: &[u8]) -> u64 {
        if seg.acks.is_none() {
            let path = acks_path(&self.shared.dir, seg.base);
            match File::options().create(true).append(true).open(&path) {
                Ok(f) => seg.acks = Some(f),
                Err(e) => {
                    log::warn!("spool: cannot open {}: {e}", path.display());
                    return 0;
                }
            }
        }
        let Some(f) = &seg.acks else { return 0 };
        match std::io::Write::write_all(&mut &*f, entries) {
            Ok(()) => {
                self.dirty = true;
                self.acks_failing = false;
                seg.acks_len += entries.len() as u64;
                entries.len() as u64
            }
            Err(e) => {
                // Cut back to whole entries; said once until a write succeeds again.
                let _ = f.set_len(seg.acks_len);
                if !self.acks_failing {
                    log::warn!(
                        "spool: cannot write to {}: {e} (settled records may be sent again \
                         after a restart)",
                        acks_path(&self.shared.dir, seg.base).display()
                    );
                }
                self.acks_failing = true;
                0
            }
        }
    }

    /// Deletes every segment but the current one whose records are all settled.
    fn delete_done(&mut self, st: &mut State, current: Option<u64>) {
        let done: Vec<u64> = st
            .segments
            .iter()
            .filter(|(&b, s)| s.pending == 0 && Some(b) != current && s.sealed)
            .map(|(&b, _)| b)
            .collect();
        for base in &done {
            if let Some(seg) = st.segments.remove(base) {
                st.bytes = st.bytes.saturating_sub(seg.len + seg.acks_len);
            }
            remove_segment(&self.shared.dir, *base);
        }
        if !done.is_empty() {
            // With the next sync, not under the state's lock.
            self.dir_dirty = true;
            self.dirty = true;
        }
    }

    fn gauges(&self, st: &State) {
        let m = &self.shared.metrics;
        m.spool_records
            .store(i64::try_from(st.records).unwrap_or(i64::MAX), Relaxed);
        m.spool_bytes
            .store(i64::try_from(st.bytes).unwrap_or(i64::MAX), Relaxed);
        let oldest = st
            .segments
            .values()
            .find(|s| s.pending > 0 && s.first_ms > 0)
            .map_or(0, |s| {
                (hotdog_stages::core::now_ms() - s.first_ms).max(0) / 1000
            });
        m.spool_oldest_age.store(oldest, Relaxed);
    }

    /// Under `fsync: <duration>`, makes what was written durable once that long has passed.
    fn sync_if_due(&mut self) {
        let Fsync::Every(every) = self.shared.fsync else {
            // Records were synced as they were written; acknowledgements once a second.
            if self.dirty && self.last_sync.elapsed() >= Duration::from_secs(1) {
                self.sync();
            }
            return;
        };
        if self.dirty && self.last_sync.elapsed() >= every {
            self.sync();
        }
    }

    /// Hands what was written since the last sync to the syncer (or syncs it here when there
    /// is no syncer); when a sync is still under way, it is tried again next time.
    fn sync(&mut self) {
        if self.syncer.busy.load(Acquire) {
            return;
        }
        let files = self.unsynced();
        if let Err(files) = self.syncer.hand(files) {
            sync_all(files);
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    /// The files to make durable: the segments closed since the last sync, the current one,
    /// and every acknowledgement file (each a handle of its own, so the state is not locked
    /// while they are synced).
    fn unsynced(&mut self) -> Vec<Unsynced> {
        let mut files = std::mem::take(&mut self.closed);
        if let Some((base, file)) = &self.current {
            if let Ok(f) = file.try_clone() {
                files.push((self.path(*base), f, false));
            }
        }
        let st = self.shared.state();
        for (base, seg) in &st.segments {
            if let Some(f) = seg.acks.as_ref().and_then(|f| f.try_clone().ok()) {
                let path = acks_path(&self.shared.dir, *base).display().to_string();
                files.push((path, f, false));
            }
        }
        drop(st);
        if std::mem::take(&mut self.dir_dirty) {
            match File::open(&self.shared.dir) {
                Ok(dir) => files.push((self.shared.dir.display().to_string(), dir, true)),
                Err(e) => log::warn!(
                    "spool: cannot sync the directory {}: {e}",
                    self.shared.dir.display()
                ),
            }
        }
        files
    }

    /// Makes everything durable now, here (at shutdown).
    fn sync_now(&mut self) {
        self.syncer.wait();
        sync_all(self.unsynced());
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    /// At shutdown, once the outbox is empty: what was settled is written down, everything is
    /// made durable, and the feed is told that nothing more comes.
    pub fn drained(&mut self) {
        self.tend();
        self.sync_now();
        self.mem.close();
    }

    /// Once the publisher is done: the last acknowledgements written down and made durable.
    pub fn finish(mut self) {
        self.tend();
        self.sync_now();
    }
}

fn sync_all(files: Vec<Unsynced>) {
    for (path, file, all) in files {
        let synced = if all {
            file.sync_all()
        } else {
            file.sync_data()
        };
        if let Err(e) = synced {
            log::warn!("spool: cannot sync {path}: {e}");
        }
    }
}
