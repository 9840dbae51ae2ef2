//! The spool (`global.spool`): every record, once the rules have made it, is written to disk
//! before librdkafka gets it, and leaves the disk once Kafka acknowledged it or it became a dead
//! letter. While the broker is away, the sessions keep reading into the spool rather than
//! pushing back; after a crash, what Kafka had not acknowledged is sent again.
//!
//! On disk, in the spool's directory: `lock` (held while a hotdog uses the spool), `spool.id`
//! (the spool's name in every `hotdog.id` header), and segments `<first id>.seg` in the format
//! of [`hotdog_stages::spool`], each with its acknowledgements in `<first id>.ack`. A segment is
//! written by one run only and goes once every record in it is settled; a segment that cannot
//! be read is moved to `damaged/`.
//!
//! Three parts: [`Writer`] (one thread: appends, makes durable, writes acknowledgements,
//! deletes segments), [`Feed`] (the publisher's side: records in memory while it keeps up,
//! read back from disk when it does not), and the ledger that delivery reports settle records
//! in ([`Ledger`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use hotdog_stages::config::{self, Fsync};
use hotdog_stages::core::{Ack, Ledger};
use hotdog_stages::spool::{self as format, BadHeader, Found};

use crate::base::metrics::Metrics;

mod open;
mod read;
mod write;

pub use open::{check, inspect};
pub use read::Feed;
pub use write::Writer;

#[cfg(test)]
mod tests;

/// The header every record carries: the spool's name and the record's id, the same when the
/// record is sent again after a restart, so that a consumer can drop a duplicate.
pub const ID_HEADER: &str = "hotdog.id";

/// A record's [`ID_HEADER`] value, `<spool name>-<record id>`, written without the formatting
/// machinery: it is made for every record produced.
pub struct RecordId {
    bytes: [u8; 64],
    len: usize,
}

impl RecordId {
    pub fn new(name: &str, id: u64) -> Self {
        let mut bytes = [0u8; 64];
        // A spool's name is 16 hex digits; a longer one (never written by hotdog) is cut.
        let name = &name.as_bytes()[..name.len().min(40)];
        bytes[..name.len()].copy_from_slice(name);
        bytes[name.len()] = b'-';
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(id).as_bytes();
        let len = name.len() + 1 + digits.len();
        bytes[name.len() + 1..len].copy_from_slice(digits);
        Self { bytes, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Why the spool cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the spool at {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Another process holds the spool's lock.
    #[error("the spool at {0} is in use by another hotdog (its lock is held)")]
    Locked(PathBuf),
    /// A segment in a format this hotdog does not know: a later hotdog wrote it.
    #[error(
        "the spool segment {path} is in format version {version}, written by a later hotdog; \
         this one reads version {}: run the later hotdog, or move the spool aside",
        format::VERSION
    )]
    Newer { path: PathBuf, version: u32 },
}

impl Error {
    /// True when what must change is the configuration or the spool itself (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Newer { .. } | Error::Locked(_))
    }
}

fn io_error(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { path, what, source }
}

/// An open spool: its directory locked by this process.
#[derive(Clone, Debug)]
pub struct Spool {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    /// The spool's name, the first part of every `hotdog.id`.
    name: String,
    /// Records carry a `hotdog.id` header (`id_header`).
    id_header: bool,
    max_size: u64,
    fsync: Fsync,
    /// A segment is closed and a new one begun past this many bytes.
    segment_size: u64,
    state: Mutex<State>,
    /// Ids settled since the writer last wrote them down; filled by delivery reports.
    settled: Mutex<Vec<u64>>,
    /// Records settled so far: the writer sees from it whether Kafka is answering.
    acked: AtomicU64,
    /// Notified when the publisher takes a batch from memory: the feed has room.
    room: event_listener::Event,
    /// Records of RELP messages (answered once Kafka has them) that were left on disk for
    /// the publisher to read back: their senders' shares wait here by id.
    waiting: Mutex<std::collections::HashMap<u64, Ack>>,
    /// The first id this run wrote: a record read back below it is from an earlier run.
    first_of_run: u64,
    /// True while the spool is full and the sessions are held back (for `/health`).
    full: AtomicBool,
    /// What the start found damaged, for `/health`.
    damage: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
    /// Held for as long as the spool is open.
    _lock: File,
}

/// What the writer and the feed share.
#[derive(Default)]
struct State {
    segments: BTreeMap<u64, Segment>,
    next_id: u64,
    /// Bytes on disk: segments and their acknowledgements.
    bytes: u64,
    /// Records not settled yet.
    records: u64,
    cursor: Cursor,
}

/// Where the publisher takes records from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Cursor {
    /// From memory: every record written so far has been handed over.
    #[default]
    Live,
    /// From disk, at this segment and offset: what follows was not handed over.
    Disk { base: u64, offset: u64 },
}

/// One segment file and what is known of its records.
struct Segment {
    /// The first id it may hold: its name.
    base: u64,
    /// Bytes written (all of them readable).
    len: u64,
    /// Which ids (from `base`) are settled.
    done: Vec<u64>,
    /// Records in it not settled yet.
    pending: u64,
    /// When its first record was read, ms since the epoch.
    first_ms: i64,
    /// Its acknowledgements file, once opened, and its length.
    acks: Option<File>,
    acks_len: u64,
    /// Damaged places found at start, by offset: counted once, not again when read.
    damaged: Vec<u64>,
    /// Written by an earlier run, or closed for a newer one: no longer appended to.
    sealed: bool,
    /// The highest id of a good record in it.
    last_id: Option<u64>,
}

impl Segment {
    fn new(base: u64) -> Segment {
        Segment {
            base,
            len: format::HEADER_LEN as u64,
            done: Vec::new(),
            pending: 0,
            first_ms: 0,
            acks: None,
            acks_len: 0,
            damaged: Vec::new(),
            sealed: false,
            last_id: None,
        }
    }

    /// Marks what an acknowledgements file says is settled, up to the last id the segment
    /// holds (a damaged range cannot make it grow). Returns how many entries were damaged.
    fn apply_acks(&mut self, acks: &[u8]) -> usize {
        let (ranges, bad) = format::acks(acks);
        let Some(last) = self.last_id else {
            return bad;
        };
        for (first, count) in ranges {
            let end = first.saturating_add(u64::from(count)).min(last + 1);
            for id in first.max(self.base)..end {
                self.settle(id);
            }
        }
        bad
    }

    /// Marks `id` settled; true when it was not yet.
    fn settle(&mut self, id: u64) -> bool {
        let Some(i) = id
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.done.len() <= word {
            self.done.resize(word + 1, 0);
        }
        if self.done[word] & bit != 0 {
            return false;
        }
        self.done[word] |= bit;
        true
    }

    fn is_done(&self, id: u64) -> bool {
        let Some(i) = id
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        self.done
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn acks_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.ack"))
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts and logs a damaged place in a segment.
    fn damaged(&self, base: u64, offset: usize, len: usize, what: &str) {
        self.metrics.spool_corrupt.fetch_add(1, Relaxed);
        log::warn!(
            "spool: {what} in {} at offset {offset} ({len} bytes): skipped; the records around \
             it are kept",
            segment_path(&self.dir, base).display()
        );
    }
}

/// Delivery reports and the dead-letter writer settle spooled records here (see [`Ack`]).
impl Ledger for Shared {
    fn settled(&self, id: u64) {
        self.acked.fetch_add(1, Relaxed);
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
    }

    fn name(&self) -> Option<&str> {
        self.id_header.then_some(self.name.as_str())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spool({})", self.dir.display())
    }
}

impl Spool {
    /// Opens (or makes) the spool of `config`, locks it, and reads what an earlier run left:
    /// those records are sent first. Counts them as lines read, so that the accounting holds
    /// across restarts.
    pub fn open(config: &config::Spool, metrics: Arc<Metrics>) -> Result<Spool, Error> {
        open::open(config, metrics).map(|shared| Spool {
            shared: Arc::new(shared),
        })
    }

    /// Why `/health` should say hotdog is unavailable: the spool is full, and senders are held
    /// back.
    pub fn full(&self) -> Option<String> {
        self.shared.full.load(Relaxed).then(|| {
            format!(
                "the spool at {} is full (max_size {} bytes, or the disk): senders are held back",
                self.shared.dir.display(),
                self.shared.max_size
            )
        })
    }

    /// What `/health` should mention without failing: damage the start found.
    pub fn damage(&self) -> Option<String> {
        self.shared
            .damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
