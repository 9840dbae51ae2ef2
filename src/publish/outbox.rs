//! The outbox: the bounded queue between the sessions and the publisher. A session waits while
//! it is full (TCP and RELP senders feel it); UDP drops and counts. Counted in records, not
//! batches, by a gate that wakes a waiting sender.

use std::sync::atomic::AtomicU64;

use super::*;
use crate::spool;

/// Counts the records waiting in the outbox, so that `buffer` bounds records, not batches. A
/// sender takes room for a whole batch at once (or waits), and the publisher gives it back when
/// it takes the batch out.
#[derive(Debug)]
pub(super) struct Gate {
    pub(super) used: AtomicUsize,
    pub(super) capacity: usize,
    pub(super) freed: Event,
}

impl Gate {
    pub(super) fn new(capacity: usize) -> Gate {
        Gate {
            used: AtomicUsize::new(0),
            capacity,
            freed: Event::new(),
        }
    }

    pub(super) fn try_take(&self, n: usize) -> bool {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used + n > self.capacity {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    pub(super) async fn take(&self, n: usize) {
        loop {
            if self.try_take(n) {
                return;
            }
            let freed = self.freed.listen();
            if self.try_take(n) {
                return;
            }
            freed.await;
        }
    }

    pub(super) fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.freed.notify(usize::MAX);
    }
}

/// With a spool: the batches are numbered as they enter the outbox, and the spool's writer
/// says up to which one it has written, so that a session counts its lines as read only once
/// they are in the spool (a kill then loses no line that was counted).
#[derive(Debug, Default)]
pub(super) struct Written {
    /// The number of the last batch that entered the outbox.
    sent: Mutex<u64>,
    /// The number of the last batch the spool has.
    done: AtomicU64,
    wrote: Event,
}

impl Written {
    /// The spool has the next batch.
    pub(super) fn wrote(&self) {
        self.done.fetch_add(1, Ordering::AcqRel);
        self.wrote.notify(usize::MAX);
    }

    async fn until(&self, ticket: u64) {
        loop {
            if self.done.load(Ordering::Acquire) >= ticket {
                return;
            }
            let wrote = self.wrote.listen();
            if self.done.load(Ordering::Acquire) >= ticket {
                return;
            }
            wrote.await;
        }
    }
}

/// The way into the publisher, one clone per connection: at most `buffer` records wait in it.
#[derive(Clone)]
pub struct Outbox {
    pub(super) tx: async_channel::Sender<Batch>,
    pub(super) gate: Arc<Gate>,
    /// Where batches go once the publisher takes nothing more.
    pub(super) file: Sink,
    pub(super) written: Option<Arc<Written>>,
}

/// The publisher's end of the [`Outbox`].
pub struct Inbox {
    pub(super) rx: async_channel::Receiver<Batch>,
    pub(super) gate: Arc<Gate>,
    pub(super) written: Option<Arc<Written>>,
}

/// An outbox that holds at most `capacity` records, and its other end. After the shutdown
/// deadline, batches that can no longer be handed over are written to `file`. With `spooled`,
/// [`Outbox::send`] returns once the spool has the batch.
pub fn outbox(capacity: usize, file: Sink, spooled: bool) -> (Outbox, Inbox) {
    let (tx, rx) = async_channel::unbounded();
    let gate = Arc::new(Gate::new(capacity.max(1)));
    let written = spooled.then(Arc::default);
    let outbox = Outbox {
        tx,
        gate: gate.clone(),
        file,
        written: written.clone(),
    };
    (outbox, Inbox { rx, gate, written })
}

impl Outbox {
    /// The most records a sender should put in one batch: a batch must fit in the outbox.
    pub fn batch_max(&self) -> usize {
        self.gate.capacity.min(BATCH_MAX)
    }

    /// Records waiting for the publisher now.
    pub fn waiting(&self) -> usize {
        self.gate.used.load(Ordering::Relaxed)
    }

    /// True when [`Outbox::send`] returns only once the spool has the batch: a session then
    /// counts its lines after sending them.
    pub fn spooled(&self) -> bool {
        self.written.is_some()
    }

    /// Hands `batch` to the publisher, waiting while the outbox is full (and, with a spool,
    /// until the spool has it). False when the publisher takes nothing more (shutdown ran out
    /// of time): the records are dead-lettered.
    pub async fn send(&self, batch: Batch) -> bool {
        let n = batch.len();
        self.gate.take(n).await;
        let sent = match &self.written {
            None => self.tx.send(batch).await.map(|()| 0),
            Some(w) => {
                // Numbered in the order they enter the (unbounded) channel.
                let mut last = w.sent.lock().unwrap_or_else(|p| p.into_inner());
                self.tx
                    .try_send(batch)
                    .map(|()| {
                        *last += 1;
                        *last
                    })
                    .map_err(|e| async_channel::SendError(e.into_inner()))
            }
        };
        match sent {
            Ok(ticket) => {
                if let Some(w) = &self.written {
                    w.until(ticket).await;
                }
                true
            }
            Err(async_channel::SendError(batch)) => {
                self.gate.give(n);
                for record in batch {
                    self.file.send(DeadLetter::shutdown_timeout(record)).await;
                }
                false
            }
        }
    }

    /// Like [`Outbox::send`], but never waits: when the outbox is full (or closed), the batch
    /// is given back. Only UDP does this: it cannot push back.
    pub fn try_send(&self, batch: Batch) -> Result<(), Batch> {
        let n = batch.len();
        if !self.gate.try_take(n) {
            return Err(batch);
        }
        // Numbered like [`Outbox::send`]'s, but not waited for.
        let last = self
            .written
            .as_ref()
            .map(|w| w.sent.lock().unwrap_or_else(|p| p.into_inner()));
        self.tx
            .try_send(batch)
            .map(|()| {
                if let Some(mut last) = last {
                    *last += 1;
                }
            })
            .map_err(|e| {
                self.gate.give(n);
                e.into_inner()
            })
    }

    /// The publisher takes nothing more: later batches are dead-lettered.
    pub fn close(&self) {
        self.tx.close();
    }
}

impl Inbox {
    /// The next batch; `None` once the outbox is closed and empty.
    pub async fn recv(&self) -> Option<Batch> {
        let batch = self.rx.recv().await.ok()?;
        self.gate.give(batch.len());
        Some(batch)
    }

    /// The next batch if one waits.
    pub fn try_recv(&self) -> Polled {
        match self.rx.try_recv() {
            Ok(batch) => {
                self.gate.give(batch.len());
                Polled::Batch(batch)
            }
            Err(async_channel::TryRecvError::Empty) => Polled::Empty,
            Err(async_channel::TryRecvError::Closed) => Polled::Closed,
        }
    }
}

/// What [`Inbox::try_recv`] found.
pub enum Polled {
    Batch(Batch),
    /// Nothing waits now.
    Empty,
    /// The outbox is closed and empty.
    Closed,
}

/// Where the publisher takes its batches from: the outbox, or, with a spool, the spool's feed
/// (a thread of its own writes the outbox's batches to the spool; see [`spooling`]).
pub(super) enum Input {
    Outbox(Inbox),
    Spool(spool::Feed),
}

impl Input {
    /// The next batch; `None` once there will be none (with a spool: none more to send before
    /// the shutdown deadline, the rest staying on disk).
    pub(super) async fn recv(&self, shutdown: &Shutdown) -> Option<Batch> {
        match self {
            Input::Outbox(inbox) => inbox.recv().await,
            Input::Spool(feed) => feed.recv(|| shutdown.expired()).await,
        }
    }
}

/// How often the spool's writer tends the spool (acknowledgements, deletions, syncs) when no
/// batch comes.
const TEND_EVERY: Duration = Duration::from_millis(5);

/// Starts the spool's writer on a thread of its own: it writes every batch of the outbox to
/// the spool, and hands it on through the feed it returns. The thread returns the writer once
/// the outbox is closed and drained, for its last acknowledgements (see [`Publisher::finish`]).
pub(super) fn spooling(
    spool: &spool::Spool,
    inbox: Inbox,
) -> std::io::Result<(spool::Feed, std::thread::JoinHandle<spool::Writer>)> {
    let (mut writer, feed) = spool.start((inbox.gate.capacity / BATCH_MAX).max(64));
    let thread = std::thread::Builder::new()
        .name("spool".into())
        .spawn(move || {
            let mut tended = Instant::now();
            loop {
                let next = match inbox.try_recv() {
                    Polled::Batch(batch) => Some(batch),
                    Polled::Empty => {
                        let waited = smol::block_on(futures_lite::future::or(
                            async { inbox.recv().await.map(Some) },
                            async {
                                smol::Timer::after(TEND_EVERY).await;
                                Some(None)
                            },
                        ));
                        match waited {
                            None => break,
                            Some(b) => b,
                        }
                    }
                    Polled::Closed => break,
                };
                if let Some(batch) = next {
                    writer.write(batch);
                    if let Some(w) = &inbox.written {
                        w.wrote();
                    }
                }
                if tended.elapsed() >= TEND_EVERY {
                    writer.tend();
                    tended = Instant::now();
                }
            }
            writer.drained();
            writer
        })?;
    Ok((feed, thread))
}
