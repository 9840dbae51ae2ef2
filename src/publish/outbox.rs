//! The outbox: the bounded queue between the sessions and the publisher. A session waits while
//! it is full (TCP and RELP senders feel it); UDP drops and counts. Counted in records, not
//! batches, by a gate that wakes a waiting sender.

use event_listener::Listener as _;

use super::*;
use crate::base::metrics::LineCounts;
use crate::spool;

/// Counts the records waiting in the outbox, so that `buffer` bounds records, not batches. A
/// sender takes room for a whole batch at once (or waits), and the publisher gives it back when
/// it takes the batch out. Senders that wait (TCP, RELP) leave the last eighth to those that
/// cannot (UDP): a TCP sender that keeps the outbox full while the publisher or the spool is
/// behind does not make every datagram that comes meanwhile a dropped one.
#[derive(Debug)]
pub(super) struct Gate {
    pub(super) used: AtomicUsize,
    pub(super) capacity: usize,
    /// What waiting senders leave free.
    reserve: usize,
    pub(super) freed: Event,
}

impl Gate {
    pub(super) fn new(capacity: usize) -> Gate {
        Gate {
            used: AtomicUsize::new(0),
            capacity,
            reserve: capacity / 8,
            freed: Event::new(),
        }
    }

    /// Takes room for as many of `n` records as the outbox has (all of it: for a sender that
    /// cannot wait); returns how many.
    pub(super) fn take_some(&self, n: usize) -> usize {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let some = n.min(self.capacity.saturating_sub(used));
            if some == 0 {
                return 0;
            }
            match self.used.compare_exchange_weak(
                used,
                used + some,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return some,
                Err(now) => used = now,
            }
        }
    }

    fn try_take_within(&self, n: usize, limit: usize) -> bool {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used + n > limit {
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

    /// Waits for room for `n` records, leaving the reserve free (unless the batch needs it to
    /// fit at all).
    pub(super) async fn take(&self, n: usize) {
        let limit = (self.capacity - self.reserve).max(n.min(self.capacity));
        loop {
            if self.try_take_within(n, limit) {
                return;
            }
            let freed = self.freed.listen();
            if self.try_take_within(n, limit) {
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

/// A batch and, with a spool, the counts of the lines it came from: the spool's writer counts
/// them once it has the batch, so that a line counted as read survives a kill.
type Parcel = (Batch, LineCounts);

/// The way into the publisher, one clone per connection: at most `buffer` records wait in it.
#[derive(Clone)]
pub struct Outbox {
    pub(super) tx: async_channel::Sender<Parcel>,
    pub(super) gate: Arc<Gate>,
    /// Where batches go once the publisher takes nothing more.
    pub(super) file: Sink,
    /// With a spool: notified when a batch comes in (or the outbox closes), for the spool's
    /// writer, a thread that waits without the executor.
    pub(super) arrived: Arc<Event>,
    pub(super) spooled: bool,
}

/// The publisher's end of the [`Outbox`].
pub struct Inbox {
    pub(super) rx: async_channel::Receiver<Parcel>,
    pub(super) gate: Arc<Gate>,
    pub(super) arrived: Arc<Event>,
}

/// An outbox that holds at most `capacity` records, and its other end. After the shutdown
/// deadline, batches that can no longer be handed over are written to `file`. With `spooled`,
/// the counts of a batch's lines go with it, to be counted once the spool has it.
pub fn outbox(capacity: usize, file: Sink, spooled: bool) -> (Outbox, Inbox) {
    let (tx, rx) = async_channel::unbounded();
    let gate = Arc::new(Gate::new(capacity.max(1)));
    let arrived = Arc::new(Event::new());
    let outbox = Outbox {
        tx,
        gate: gate.clone(),
        file,
        arrived: arrived.clone(),
        spooled,
    };
    (outbox, Inbox { rx, gate, arrived })
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

    /// True when there is a spool: a session then hands the counts of its lines over with
    /// them, rather than counting them itself.
    pub fn spooled(&self) -> bool {
        self.spooled
    }

    /// Hands `batch` (and the counts of its lines, with a spool) to the publisher, waiting
    /// while the outbox is full. When the publisher takes nothing more (shutdown ran out of
    /// time), the records are dead-lettered and the counts given back.
    pub async fn send(&self, batch: Batch, counts: LineCounts) -> Result<(), LineCounts> {
        let n = batch.len();
        self.gate.take(n).await;
        match self.tx.send((batch, counts)).await {
            Ok(()) => {
                self.arrived();
                Ok(())
            }
            Err(async_channel::SendError((batch, counts))) => {
                self.gate.give(n);
                for record in batch {
                    self.file.send(DeadLetter::shutdown_timeout(record)).await;
                }
                Err(counts)
            }
        }
    }

    /// For a sender that cannot push back (UDP): hands over as much of `batch` as the outbox
    /// has room for, and waits for room for the rest at most `patience` (meanwhile what comes
    /// waits in the kernel's receive buffer: a publisher or spool that is behind for a moment
    /// costs no datagram). Gives back what found no room, to be dropped, with the counts when
    /// no part was handed over (they go with the first part).
    pub async fn send_within(
        &self,
        mut batch: Batch,
        counts: LineCounts,
        patience: Duration,
    ) -> Result<(), Parcel> {
        let mut counts = Some(counts);
        let mut deadline: Option<smol::Timer> = None;
        loop {
            let some = self.gate.take_some(batch.len());
            if some > 0 {
                let rest = batch.split_off(some);
                let part = (batch, counts.take().unwrap_or_default());
                if let Err(e) = self.tx.try_send(part) {
                    self.gate.give(some);
                    let (mut part, counts) = e.into_inner();
                    part.extend(rest);
                    return Err((part, counts));
                }
                self.arrived();
                batch = rest;
            }
            if batch.is_empty() {
                return Ok(());
            }
            let freed = self.gate.freed.listen();
            if self.gate.used.load(Ordering::Acquire) < self.gate.capacity {
                continue;
            }
            let timer = deadline.get_or_insert_with(|| smol::Timer::after(patience));
            let timed_out = futures_lite::future::or(
                async {
                    freed.await;
                    false
                },
                async {
                    (&mut *timer).await;
                    true
                },
            )
            .await;
            if timed_out {
                return Err((batch, counts.unwrap_or_default()));
            }
        }
    }

    fn arrived(&self) {
        if self.spooled {
            self.arrived.notify(1);
        }
    }

    /// The publisher takes nothing more: later batches are dead-lettered.
    pub fn close(&self) {
        self.tx.close();
        self.arrived.notify(usize::MAX);
    }
}

impl Inbox {
    /// The next batch; `None` once the outbox is closed and empty. (Without a spool, the
    /// sessions counted its lines themselves.)
    pub async fn recv(&self) -> Option<Batch> {
        let (batch, _) = self.rx.recv().await.ok()?;
        self.gate.give(batch.len());
        Some(batch)
    }

    /// The next batch and the counts of its lines, if one waits.
    pub fn try_recv(&self) -> Polled {
        match self.rx.try_recv() {
            Ok((batch, counts)) => {
                self.gate.give(batch.len());
                Polled::Batch(batch, counts)
            }
            Err(async_channel::TryRecvError::Empty) => Polled::Empty,
            Err(async_channel::TryRecvError::Closed) => Polled::Closed,
        }
    }

    /// Whether senders that cannot wait (UDP) are using the reserve the others leave them,
    /// asked at any time: the outbox is about to drop datagrams.
    pub fn pressure(&self) -> impl Fn() -> bool + Send + 'static {
        let gate = self.gate.clone();
        move || gate.used.load(Ordering::Acquire) > gate.capacity - gate.reserve
    }
}

/// What [`Inbox::try_recv`] found.
pub enum Polled {
    Batch(Batch, LineCounts),
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
    // Kafka's pace is not worth a dropped datagram: a batch that waits stays on disk instead.
    writer.give_way_when(inbox.pressure());
    let thread = std::thread::Builder::new()
        .name("spool".into())
        .spawn(move || {
            let mut tended = Instant::now();
            loop {
                let next = match inbox.try_recv() {
                    Polled::Batch(batch, counts) => Some((batch, counts)),
                    Polled::Closed => break,
                    // Waits on the thread itself, at most until the spool is to be tended.
                    Polled::Empty => {
                        let arrived = inbox.arrived.listen();
                        match inbox.try_recv() {
                            Polled::Batch(batch, counts) => Some((batch, counts)),
                            Polled::Closed => break,
                            Polled::Empty => {
                                let _ = arrived.wait_timeout(TEND_EVERY);
                                None
                            }
                        }
                    }
                };
                if let Some((batch, counts)) = next {
                    writer.write(batch, &counts);
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
