//! The dead-letter file: records that could not go to the dead-letter topic (there is none, it
//! refused them too, or shutdown ran out of time) are appended to the JSON-lines file
//! `global.kafka.dead_letter.file`. With no file, the record is logged whole at error level.
//!
//! A letter counts as dead-lettered only once its line is on disk: the writer appends whole
//! lines, then syncs the file (one sync for all the letters that waited together), then counts
//! them and tells their senders. A write or sync that fails is undone (the file is cut back to
//! its length before), counted in `dead_letter_file.write_failed`, and tried again; the letter
//! stays in flight meanwhile, and a RELP sender waiting for it is told at once that it is lost
//! (it sends it again). What is still unwritten when hotdog stops is logged whole and counted in
//! `dead_letter_file.unwritten`. The file is opened when hotdog starts, and a torn last line
//! (a crash mid-write, a full disk before this version) is cut off then.
//!
//! This module only receives dead letters; producing to the dead-letter topic is the
//! publisher's (it owns the Kafka producers).

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::base::metrics::Metrics;
use crate::base::throttle;
use hotdog_stages::core::DeadLetter;

/// How many dead letters may wait for the writer; a sender waits when it is full.
const QUEUE: usize = 1024;
/// The first wait before a failed write is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where dead letters for the file are sent; cheap to clone. The queue is bounded: a burst of
/// refused records makes the senders wait instead of growing memory.
#[derive(Clone)]
pub struct Sink {
    tx: async_channel::Sender<DeadLetter>,
    finish: Arc<Finish>,
}

/// How shutdown tells the writer to hold nothing back ([`Sink::closing`]) and learns that it is
/// done ([`Sink::finish`]).
#[derive(Default)]
struct Finish {
    closing: AtomicBool,
    /// Records left in the spool at shutdown instead of written here.
    kept: std::sync::atomic::AtomicU64,
    done: Mutex<Vec<std::sync::mpsc::Sender<()>>>,
}

impl Sink {
    /// Sends from a task, waiting (not blocking) while the queue is full.
    /// A record the spool keeps that shutdown had no time for is not a dead letter: it stays
    /// in the spool, for the next start.
    pub async fn send(&self, mut letter: DeadLetter) {
        if letter.stays_in_spool() {
            self.finish.kept.fetch_add(1, Ordering::Relaxed);
            std::mem::take(&mut letter.record.ack).withhold();
            return;
        }
        if let Err(async_channel::SendError(l)) = self.tx.send(letter).await {
            log_letter("the dead-letter writer has stopped", &l);
        }
    }

    /// Records shutdown had no time for that stay in the spool (see [`Sink::send`]).
    pub fn kept_in_spool(&self) -> u64 {
        self.finish.kept.load(Ordering::Relaxed)
    }

    /// Shutdown has begun: from now on a letter the file refuses is logged whole and counted
    /// as unwritten at once, not kept to be tried again (no sender waits on a full queue).
    pub fn closing(&self) {
        self.finish.closing.store(true, Ordering::SeqCst);
    }

    /// Waits (blocking, at most 30 s) until every dead letter sent so far has been written, or
    /// logged whole where it could not be. The writer takes no more after it.
    pub fn finish(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        self.finish
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(done);
        self.closing();
        // Wakes a writer that waits for letters.
        self.tx.close();
        let _ = wait.recv_timeout(Duration::from_secs(30));
    }
}

/// Checks that `path` can be the dead-letter file (for `--check`): not a directory, in a
/// directory that exists, and writable if it exists. Creates nothing.
pub fn check(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a directory", path.display()));
    }
    if path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(|_| ())
            .map_err(|e| format!("cannot open {} to append: {e}", path.display()));
    }
    let parent = match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(format!(
            "{} is not in a directory that exists ({} is not one)",
            path.display(),
            parent.display()
        ));
    }
    Ok(())
}

/// Starts the writer thread for `file` (none: dead letters are logged), opening the file now
/// and cutting a torn last line off it.
pub fn start(file: Option<PathBuf>, metrics: Arc<Metrics>) -> std::io::Result<Sink> {
    let (tx, rx) = async_channel::bounded::<DeadLetter>(QUEUE);
    let finish = Arc::new(Finish::default());
    let sink = Sink {
        tx,
        finish: finish.clone(),
    };
    let file = match file {
        Some(path) => {
            let f = File::open(path.clone()).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot open the dead-letter file {}: {e}", path.display()),
                )
            })?;
            Some(f)
        }
        None => None,
    };
    let mut writer = Writer {
        file,
        metrics,
        waiting: VecDeque::new(),
        rx,
        finish,
    };
    std::thread::Builder::new()
        .name("dead-letter".into())
        .spawn(move || writer.run())?;
    Ok(sink)
}

/// The dead-letter file, open to append, and its length: what a failed write is cut back to.
struct File {
    path: PathBuf,
    f: std::fs::File,
    len: u64,
}

impl File {
    fn open(path: PathBuf) -> std::io::Result<File> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut len = f.metadata()?.len();
        let whole = whole_lines(&mut f, len)?;
        if whole < len {
            log::warn!(
                "the dead-letter file {} ended in a torn line ({} bytes): cut it off",
                path.display(),
                len - whole
            );
            f.set_len(whole)?;
            f.sync_all()?;
            len = whole;
        }
        Ok(File { path, f, len })
    }

    /// Appends `lines` and syncs; on failure, cuts the file back to where it was.
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let written = self.f.write_all(lines).and_then(|()| self.f.sync_data());
        match written {
            Ok(()) => {
                self.len += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self.f.set_len(self.len) {
                    log::error!(
                        "cannot cut the dead-letter file {} back to its last whole line: {cut}",
                        self.path.display()
                    );
                }
                Err(e)
            }
        }
    }
}

/// The length of the file up to and including its last newline (`len` when it is empty or
/// ends in one).
fn whole_lines(f: &mut std::fs::File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut block = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut block[..n])?;
        if end == len && block[n - 1] == b'\n' {
            return Ok(len);
        }
        if let Some(i) = block[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

struct Writer {
    file: Option<File>,
    metrics: Arc<Metrics>,
    /// Letters taken from the queue and not written yet, oldest first.
    waiting: VecDeque<DeadLetter>,
    rx: async_channel::Receiver<DeadLetter>,
    finish: Arc<Finish>,
}

impl Writer {
    fn run(&mut self) {
        let mut retry = RETRY_FIRST;
        loop {
            // Everything that waits, without waiting for more; a letter at least, until the
            // sink is finished.
            if self.waiting.is_empty() {
                match self.rx.recv_blocking() {
                    Ok(l) => self.waiting.push_back(l),
                    Err(_) => return self.done(),
                }
            }
            while self.waiting.len() < QUEUE {
                match self.rx.try_recv() {
                    Ok(l) => self.waiting.push_back(l),
                    Err(_) => break,
                }
            }
            if self.write() {
                retry = RETRY_FIRST;
                continue;
            }
            if self.closing() {
                self.give_up();
                continue;
            }
            // Space may come back: try again, later each time (and at once when closing).
            let until = std::time::Instant::now() + retry;
            while std::time::Instant::now() < until && !self.closing() {
                std::thread::sleep(Duration::from_millis(20));
            }
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    /// Writes what waits, whole lines and one sync, then counts it and tells its senders.
    /// False (the letters still waiting) when the file refused them.
    fn write(&mut self) -> bool {
        let Some(file) = &mut self.file else {
            // No file: logged whole, which is where the operator said dead letters go.
            for letter in self.waiting.drain(..) {
                log_letter("no dead-letter file configured", &letter);
                settled(&self.metrics, letter);
            }
            return true;
        };
        let mut lines = String::new();
        for letter in &self.waiting {
            lines.push_str(&json(letter).to_string());
            lines.push('\n');
        }
        match file.append(lines.as_bytes()) {
            Ok(()) => {
                for letter in self.waiting.drain(..) {
                    settled(&self.metrics, letter);
                }
                true
            }
            Err(e) => {
                let failed = self.waiting.len() as u64;
                self.metrics
                    .dead_letter_write_failed
                    .fetch_add(failed, Ordering::Relaxed);
                throttle::DEAD_LETTER.log(
                    log::Level::Error,
                    format_args!(
                        "cannot write {failed} dead letters to {}: {e}; they wait, and are \
                         tried again",
                        file.path.display()
                    ),
                );
                // A sender waiting for them hears now that they are not safe, and sends them
                // again; the letters themselves wait here.
                for letter in &mut self.waiting {
                    letter.record.ack.forsake_sender();
                }
                false
            }
        }
    }

    fn closing(&self) -> bool {
        self.finish.closing.load(Ordering::SeqCst)
    }

    /// Shutdown: what the file refused is logged whole and counted, not kept.
    fn give_up(&mut self) {
        let n = self.waiting.len() as u64;
        self.metrics
            .dead_letter_unwritten
            .fetch_add(n, Ordering::Relaxed);
        log::error!(
            "{n} dead letters could not be written to the dead-letter file; each follows, whole"
        );
        for letter in self.waiting.drain(..) {
            log_letter("not written to the dead-letter file", &letter);
        }
    }

    /// Every letter is written or given up: tells who waits in [`Sink::finish`].
    fn done(&mut self) {
        let done = std::mem::take(&mut *self.finish.done.lock().unwrap_or_else(|p| p.into_inner()));
        for d in done {
            let _ = d.send(());
        }
    }
}

/// A letter is where dead letters go: counted, and its sender told.
fn settled(metrics: &Metrics, mut letter: DeadLetter) {
    std::mem::take(&mut letter.record.ack).settle(hotdog_stages::core::Outcome::DeadLettered {
        reason: &letter.reason,
        to: "file",
    });
    metrics.dead_letter_reason(&letter.reason);
    metrics.dead_lettered(&letter.record.topic);
}

fn json(letter: &DeadLetter) -> serde_json::Value {
    let r = &letter.record;
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "topic": &*r.topic,
        "key": r.key,
        "payload": r.payload_text(),
        "headers": headers,
        "reason": letter.reason,
    })
}

fn log_letter(why: &str, letter: &DeadLetter) {
    log::error!("dead letter ({why}): {}", json(letter));
}
