//! Acknowledgements for senders that wait to hear a message is safe (RELP): a message is
//! [`Awaited`], and every record it produced carries an [`Ack`] share of it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// A message a sender waits to hear is safe (a RELP `syslog` command): safe once every record
/// it produced is [settled](Ack::settle). Its session holds it, and each record carries an
/// [`Ack`] share of it. Once the session [watches](Awaited::watch) it (the oldest message it
/// has not answered), `done` is notified when the last share is settled or one is lost: a
/// session wakes once per run of messages Kafka acknowledged together, not once per message.
#[derive(Debug)]
pub struct Awaited {
    /// Shares not yet settled, the session's own hold counted.
    remaining: AtomicUsize,
    /// A share was dropped without being settled: a record neither delivered nor
    /// dead-lettered. The message must never be acknowledged.
    lost: AtomicBool,
    /// The session waits for this message.
    watched: AtomicBool,
    /// Its sender is answered once its records are in the spool (RELP `ack: spool`).
    early: bool,
    done: Arc<event_listener::Event>,
}

/// Where an [`Awaited`] message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Waiting,
    Safe,
    Lost,
}

impl Awaited {
    /// A message with its session's hold on it; `done` is notified when it is safe or lost.
    pub fn new(done: Arc<event_listener::Event>) -> Arc<Awaited> {
        Self::answered(done, false)
    }

    /// Like [`Awaited::new`]; with `when_spooled`, the message is safe once its records are in
    /// the spool rather than in Kafka.
    pub fn answered(done: Arc<event_listener::Event>, when_spooled: bool) -> Arc<Awaited> {
        Arc::new(Awaited {
            remaining: AtomicUsize::new(1),
            lost: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            early: when_spooled,
            done,
        })
    }

    /// A share for one more record of the message.
    pub fn share(self: &Arc<Self>) -> Ack {
        self.remaining.fetch_add(1, Ordering::AcqRel);
        Ack {
            awaited: Some(self.clone()),
            spooled: None,
            early: self.early,
            watcher: None,
        }
    }

    /// The session lets go of its hold: the message is safe once its records are.
    pub fn release(&self) {
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.tell();
        }
    }

    /// From now on, `done` is notified when the message is safe or lost. The caller watches,
    /// then listens to `done`, then looks at [`Awaited::standing`]: a change before the look
    /// is seen there, one after it is notified.
    pub fn watch(&self) {
        self.watched.store(true, Ordering::SeqCst);
    }

    fn tell(&self) {
        if self.watched.load(Ordering::SeqCst) {
            self.done.notify(usize::MAX);
        }
    }

    pub fn standing(&self) -> Standing {
        if self.lost.load(Ordering::SeqCst) {
            Standing::Lost
        } else if self.remaining.load(Ordering::SeqCst) == 0 {
            Standing::Safe
        } else {
            Standing::Waiting
        }
    }
}

/// Told when a record the spool keeps is settled: the spool then forgets it. Called on
/// whatever thread settles the record (librdkafka's, the dead-letter writer's): cheap.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    fn settled(&self, id: u64);
    /// The spool's name: with a record's id, what its `hotdog.id` header says; `None` when
    /// records carry no such header (`global.spool.id_header: false`).
    fn name(&self) -> Option<&str>;
}

/// What became of a record, for whoever [watches](Ack::watch) it (a `hotdog tap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Kafka acknowledged it, at this partition and offset.
    Delivered { partition: i32, offset: i64 },
    /// Written as a dead letter, for this reason, to this topic (or `file`).
    DeadLettered { reason: &'a str, to: &'a str },
    /// Left on the spool's disk, to be read back and sent from there.
    Spooled,
    /// Not sent: shutdown ran out of time for it.
    NotSent,
}

/// [`Outcome`], kept: what a [`Watch`] was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Delivered { partition: i32, offset: i64 },
    DeadLettered { reason: String, to: String },
    Spooled,
    NotSent,
}

impl From<Outcome<'_>> for Settled {
    fn from(outcome: Outcome<'_>) -> Settled {
        match outcome {
            Outcome::Delivered { partition, offset } => Settled::Delivered { partition, offset },
            Outcome::DeadLettered { reason, to } => Settled::DeadLettered {
                reason: reason.to_owned(),
                to: to.to_owned(),
            },
            Outcome::Spooled => Settled::Spooled,
            Outcome::NotSent => Settled::NotSent,
        }
    }
}

/// Where what became of a watched record is kept: told once, on whatever thread settles the
/// record, and read by the watcher (a `hotdog tap`) on its own. The record holds it by one thin
/// pointer, and the watcher [resets](Watch::reset) it to watch another record once the record
/// let go of it: watching allocates nothing, and frees nothing on the thread that settles (two
/// boxes made for each watched record, and freed on librdkafka's thread, were about a third of
/// what a tap cost the sessions' threads).
#[derive(Debug, Default)]
pub struct Watch(OnceLock<Settled>);

impl Watch {
    /// Keeps `outcome`, unless one was kept already (a record is settled once).
    pub fn tell(&self, outcome: Outcome<'_>) {
        let _ = self.0.set(Settled::from(outcome));
    }

    /// What became of the record, once known.
    pub fn settled(&self) -> Option<&Settled> {
        self.0.get()
    }

    /// Forgets what it was told, to watch another record.
    pub fn reset(&mut self) {
        self.0.take();
    }
}

/// A [`Watch`] behind one pointer: a record that nobody watches pays a word for it.
type Watcher = Option<Arc<Watch>>;

/// What waits for a record to be safe: a share of an [`Awaited`] message (RELP), the spool
/// that keeps it, both or nothing. Settled by the stage that last holds the record: the
/// delivery report, the dead-letter topic's report or the dead-letter file. Dropped unsettled,
/// it marks the message lost; the spool keeps the record, to send it again after a restart. A
/// clone is one more share of the message, and not the spool's (nor its watcher's).
#[derive(Default)]
pub struct Ack {
    awaited: Option<Arc<Awaited>>,
    /// The spool's ledger and the record's id there.
    spooled: Option<(Arc<dyn Ledger>, u64)>,
    /// The sender is answered once the record is in the spool (RELP `ack: spool`), not once it
    /// is in Kafka.
    early: bool,
    watcher: Watcher,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ack")
            .field("awaited", &self.awaited)
            .field("spooled", &self.spooled)
            .field("early", &self.early)
            .field("watched", &self.watcher.is_some())
            .finish()
    }
}

impl Ack {
    /// The record is safe: in Kafka, or written as a dead letter, as `outcome` says.
    pub fn settle(mut self, outcome: Outcome<'_>) {
        if let Some(w) = self.watcher.take() {
            w.tell(outcome);
        }
        self.settle_sender();
        if let Some((ledger, id)) = self.spooled.take() {
            ledger.settled(id);
        }
    }

    /// `watch` is told what becomes of the record.
    pub fn watch(&mut self, watch: Arc<Watch>) {
        self.watcher = Some(watch);
    }

    /// The record ran out of time at shutdown: Kafka does not have it, so its message is never
    /// acknowledged; nor is it lost (which would close the session at once, as an error). The
    /// session, closing at the shutdown deadline, leaves the message for its sender to send again.
    /// The spool keeps the record, if it has it.
    pub fn withhold(mut self) {
        self.awaited.take();
        self.spooled.take();
    }

    /// Like [`Ack::withhold`] for the sender's share; the spool's stays with the record.
    pub fn hold_sender(&mut self) {
        self.awaited.take();
    }

    /// True when some sender waits for this record.
    pub fn is_awaited(&self) -> bool {
        self.awaited.is_some()
    }

    /// The spool keeps the record as `id`: `ledger` is told when it is settled.
    pub fn spooled(&mut self, ledger: Arc<dyn Ledger>, id: u64) {
        self.spooled = Some((ledger, id));
    }

    /// The name of the spool that keeps the record and its id there: what its `hotdog.id`
    /// header says, if it is to have one.
    pub fn spool_id(&self) -> Option<(&str, u64)> {
        self.spooled
            .as_ref()
            .and_then(|(l, id)| l.name().map(|name| (name, *id)))
    }

    /// True when the spool keeps the record.
    pub fn is_spooled(&self) -> bool {
        self.spooled.is_some()
    }

    /// True when the sender is to hear once the record is in the spool.
    pub fn answers_when_spooled(&self) -> bool {
        self.early && self.awaited.is_some()
    }

    /// The sender's share is settled now (the record is in the spool); the spool's is not.
    pub fn settle_sender(&mut self) {
        if let Some(a) = self.awaited.take() {
            a.release();
        }
    }

    /// The sender hears that the record is not safe, and sends its message again; the spool,
    /// if it has the record, keeps it.
    pub fn forsake_sender(&mut self) {
        if let Some(a) = self.awaited.take() {
            a.lost.store(true, Ordering::SeqCst);
            a.tell();
        }
    }
}

impl Clone for Ack {
    fn clone(&self) -> Ack {
        Ack {
            awaited: self.awaited.as_ref().map(|a| {
                a.remaining.fetch_add(1, Ordering::AcqRel);
                a.clone()
            }),
            spooled: None,
            early: self.early,
            watcher: None,
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.tell(if self.spooled.is_some() {
                Outcome::Spooled
            } else {
                Outcome::NotSent
            });
        }
        self.forsake_sender();
    }
}

/// Two records are equal for what they hold; who waits for them does not count.
impl PartialEq for Ack {
    fn eq(&self, _: &Ack) -> bool {
        true
    }
}

impl Eq for Ack {}

#[cfg(test)]
mod tests {
    use super::*;

    const DELIVERED: Outcome<'static> = Outcome::Delivered {
        partition: 0,
        offset: 0,
    };

    #[derive(Debug)]
    struct NoLedger;

    impl Ledger for NoLedger {
        fn settled(&self, _: u64) {}
        fn name(&self) -> Option<&str> {
            None
        }
    }

    #[test]
    fn a_watched_record_tells_its_outcome_once_and_a_clone_is_not_watched() {
        let watched = || {
            let watch = Arc::new(Watch::default());
            let mut ack = Ack::default();
            ack.watch(watch.clone());
            (ack, watch)
        };
        let (a, told) = watched();
        drop(a.clone());
        assert_eq!(told.settled(), None, "a clone is not watched");
        a.settle(Outcome::DeadLettered {
            reason: "r",
            to: "file",
        });
        let dead = Settled::DeadLettered {
            reason: "r".into(),
            to: "file".into(),
        };
        assert_eq!(told.settled(), Some(&dead));
        told.tell(DELIVERED);
        assert_eq!(told.settled(), Some(&dead), "told once");
        let (dropped, told) = watched();
        drop(dropped);
        assert_eq!(told.settled(), Some(&Settled::NotSent));
        let (mut spooled, told) = watched();
        spooled.spooled(Arc::new(NoLedger), 7);
        drop(spooled);
        assert_eq!(told.settled(), Some(&Settled::Spooled));
        let (withheld, mut told) = watched();
        withheld.withhold();
        assert_eq!(told.settled(), Some(&Settled::NotSent));
        let told = Arc::get_mut(&mut told).expect("the record let go of its watch");
        told.reset();
        assert_eq!(told.settled(), None, "reset, it watches another record");
    }

    #[test]
    fn a_message_is_safe_once_its_session_and_every_record_let_go() {
        let done = Arc::new(event_listener::Event::new());
        let m = Awaited::new(done.clone());
        let (a, b) = (m.share(), m.share());
        let c = b.clone();
        m.release();
        assert_eq!(m.standing(), Standing::Waiting);
        a.settle(DELIVERED);
        b.settle(DELIVERED);
        assert_eq!(m.standing(), Standing::Waiting, "the clone is a share too");
        let heard = done.listen();
        m.watch();
        c.settle(DELIVERED);
        assert_eq!(m.standing(), Standing::Safe);
        assert!(
            event_listener::Listener::wait_timeout(heard, std::time::Duration::from_secs(1))
                .is_some()
        );
    }

    #[test]
    fn only_a_watched_message_wakes_its_session() {
        let done = Arc::new(event_listener::Event::new());
        let m = Awaited::new(done.clone());
        let heard = done.listen();
        m.release();
        assert_eq!(m.standing(), Standing::Safe);
        assert!(
            event_listener::Listener::wait_timeout(heard, std::time::Duration::from_millis(50))
                .is_none(),
            "woken for a message it does not wait for"
        );
    }

    #[test]
    fn a_message_without_records_is_safe_when_released() {
        let m = Awaited::new(Arc::new(event_listener::Event::new()));
        m.release();
        assert_eq!(m.standing(), Standing::Safe);
    }

    #[test]
    fn a_record_dropped_unsettled_loses_its_message_for_good() {
        let m = Awaited::new(Arc::new(event_listener::Event::new()));
        let (a, b) = (m.share(), m.share());
        m.release();
        drop(a);
        b.settle(DELIVERED);
        assert_eq!(m.standing(), Standing::Lost);
        // An empty share is nobody's: dropping it changes nothing.
        drop(Ack::default());
    }

    #[test]
    fn a_withheld_record_leaves_its_message_waiting_not_lost() {
        let m = Awaited::new(Arc::new(event_listener::Event::new()));
        let (a, b) = (m.share(), m.share());
        m.release();
        a.withhold();
        b.settle(DELIVERED);
        assert_eq!(m.standing(), Standing::Waiting);
    }
}
