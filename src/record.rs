//! The types every stage after the rules shares: a [`Record`] for Kafka, the [`Batch`]es
//! connections hand to the publisher, a [`DeadLetter`], the [`Ack`] a record carries for a
//! sender that waits to hear it is safe, and the clock records are stamped with. No I/O; below
//! every stage that uses it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

/// One message for Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: Name,
    pub key: Option<String>,
    /// The bytes Kafka gets: text, or the original bytes of a body that was not UTF-8, or a
    /// protobuf message (`format: otlp_proto`). A connection's records have theirs [`packed`]
    /// with the payloads its thread made before.
    pub payload: Bytes,
    /// The block `payload` was [`packed`] in, if it was.
    pub block: Block,
    pub headers: Vec<(Name, String)>,
    /// When the line was read (ms since the epoch), the Kafka message timestamp; 0 for unset.
    pub read_ms: i64,
    /// For a message whose sender waits for its acknowledgement (RELP): settled once Kafka
    /// acknowledged the record or it was written as a dead letter. Empty for every other.
    pub ack: Ack,
}

impl Record {
    /// The payload as text (invalid UTF-8 replaced), for logs, tests and `-t`.
    pub fn payload_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }
}

/// The most bytes a payload [`packed`] in this thread's block can have; a larger one has an
/// allocation of its own.
const PACKED_MAX: usize = 16 * 1024;

/// The size of the blocks payloads are [`packed`] in.
const BLOCK: usize = 64 * 1024;

/// The most blocks that may be alive for the publisher to lend the payloads in them to
/// librdkafka (see [`Block::lendable`]): 32 MiB.
pub const LENT_BLOCKS_MAX: usize = 512;

/// Blocks alive: made by [`packed_with`], and held by this thread's packing or by a record.
static BLOCKS_ALIVE: AtomicUsize = AtomicUsize::new(0);

/// Blocks alive now (see [`Block`]).
pub fn blocks_alive() -> usize {
    BLOCKS_ALIVE.load(Ordering::Relaxed)
}

/// The block a payload was packed in, held with the payload: the block counts as alive until
/// this thread has moved on from it and the last record that held one of its payloads let go.
/// Empty for a payload with an allocation of its own.
#[derive(Debug, Clone, Default)]
pub struct Block(Option<Arc<Alive>>);

/// Counts one block in [`BLOCKS_ALIVE`] while it lives.
#[derive(Debug)]
struct Alive(());

impl Alive {
    fn new() -> Arc<Alive> {
        BLOCKS_ALIVE.fetch_add(1, Ordering::Relaxed);
        Arc::new(Alive(()))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        BLOCKS_ALIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Block {
    /// True when the payload may be lent to librdkafka rather than copied by it: a lent
    /// payload keeps its whole block until its delivery report, and a record that waits for
    /// long (its partition has no leader) would keep a block for a few hundred bytes. A payload
    /// with an allocation of its own keeps only itself; one in a block is lent while at most
    /// [`LENT_BLOCKS_MAX`] blocks are alive.
    pub fn lendable(&self) -> bool {
        self.0.is_none() || blocks_alive() <= LENT_BLOCKS_MAX
    }
}

/// Every block is the same to a record's equality: where its payload lives is not what it is.
impl PartialEq for Block {
    fn eq(&self, _: &Block) -> bool {
        true
    }
}

impl Eq for Block {}

thread_local! {
    /// The block this thread packs payloads in: what is left of it after the payloads taken.
    static BLOCK_LEFT: RefCell<(BytesMut, Block)> =
        RefCell::new((BytesMut::new(), Block::default()));
}

/// A payload: `bytes`, [`packed_with`] the payloads this thread made before.
pub fn packed(bytes: &[u8]) -> (Bytes, Block) {
    packed_with(bytes.len(), |block| block.extend_from_slice(bytes))
}

/// A payload of `len` bytes, which `write` appends to the block this thread shares with the
/// payloads it made before. The connection that makes a record and the thread that drops it
/// (librdkafka's, after its delivery report) are different threads: with an allocation of its
/// own per record, every record larger than glibc's smallest bins (128 bytes) made the two
/// threads wait on one arena's lock, one system call each time. A block is freed when its last
/// payload is, and taken up again from its start when none of its payloads is left. The block
/// comes with the payload: a record lent to librdkafka keeps it (see [`Block::lendable`]).
pub fn packed_with(len: usize, write: impl FnOnce(&mut BytesMut)) -> (Bytes, Block) {
    BLOCK_LEFT.with(|cell| {
        let Some(mut kept) = cell.try_borrow_mut().ok().filter(|_| len <= PACKED_MAX) else {
            // A larger payload (or one made while this thread's block is in use) on its own.
            let mut own = BytesMut::with_capacity(len);
            write(&mut own);
            return (own.freeze(), Block::default());
        };
        let (block, alive) = &mut *kept;
        if block.capacity() < len && !block.try_reclaim(len) {
            *block = BytesMut::with_capacity(BLOCK);
            *alive = Block(Some(Alive::new()));
        }
        write(block);
        (block.split().freeze(), alive.clone())
    })
}

/// A topic or header name: borrowed when it comes from the configuration (see
/// [`crate::template::forever`]), owned when it was rendered.
pub type Name = Cow<'static, str>;

/// What a connection hands to the publisher at once.
pub type Batch = Vec<Record>;

/// The most records in one [`Batch`].
pub const BATCH_MAX: usize = 512;

/// One record that will not reach its topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub record: Record,
    /// Why, as it appears in `kafka.dead_letter.<reason>`.
    pub reason: String,
    /// True when Kafka cannot be used for it (the dead-letter topic refused it, or shutdown
    /// ran out of time): straight to the file.
    pub file_only: bool,
}

impl DeadLetter {
    /// A record that shutdown had no time left to deliver. Kafka does not have it, so a sender
    /// waiting for it is never told it is safe: its share is withheld here, whatever becomes of
    /// the letter.
    pub fn shutdown_timeout(mut record: Record) -> DeadLetter {
        std::mem::take(&mut record.ack).withhold();
        DeadLetter {
            record,
            reason: SHUTDOWN_TIMEOUT.into(),
            file_only: true,
        }
    }
}

/// The reason of a dead letter that shutdown had no time left to deliver.
pub const SHUTDOWN_TIMEOUT: &str = "shutdown_timeout";

/// The earlier of two deadlines, each with what passing it means; the first one on a tie.
pub fn earliest<K: Ord, T>(a: Option<(K, T)>, b: Option<(K, T)>) -> Option<(K, T)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Milliseconds since the epoch, by [`now`].
pub fn now_ms() -> i64 {
    epoch_ms(now())
}

/// The time lines are stamped with when they are read: the system clock.
#[cfg(not(feature = "test-hooks"))]
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// The time lines are stamped with when they are read: the system clock. With the
/// `test-hooks` feature a test hook moves it: with `HOTDOG_TEST_CLOCK` set to an RFC 3339 time,
/// the clock reads that time when first asked and runs on from there (the integration tests use
/// it to read lines across New Year).
#[cfg(feature = "test-hooks")]
pub fn now() -> SystemTime {
    static SHIFT: std::sync::OnceLock<Option<(bool, std::time::Duration)>> =
        std::sync::OnceLock::new();
    let real = SystemTime::now();
    let shift = SHIFT.get_or_init(|| {
        let target = humantime::parse_rfc3339(&std::env::var("HOTDOG_TEST_CLOCK").ok()?).ok()?;
        Some(match target.duration_since(real) {
            Ok(ahead) => (true, ahead),
            Err(behind) => (false, behind.duration()),
        })
    });
    match shift {
        None => real,
        Some((true, by)) => real + *by,
        Some((false, by)) => real - *by,
    }
}

/// `t` in milliseconds since the epoch.
pub fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

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
        Arc::new(Awaited {
            remaining: AtomicUsize::new(1),
            lost: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            done,
        })
    }

    /// A share for one more record of the message.
    pub fn share(self: &Arc<Self>) -> Ack {
        self.remaining.fetch_add(1, Ordering::AcqRel);
        Ack(Some(self.clone()))
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

/// A record's share of an [`Awaited`] message, or nothing. Settled by the stage that last
/// holds the record: the delivery report, the dead-letter topic's report or the dead-letter
/// file. Dropped unsettled, it marks the message lost. A clone is one more share.
#[derive(Debug, Default)]
pub struct Ack(Option<Arc<Awaited>>);

impl Ack {
    /// The record is safe: in Kafka, or written as a dead letter.
    pub fn settle(mut self) {
        if let Some(a) = self.0.take() {
            a.release();
        }
    }

    /// The record ran out of time at shutdown: Kafka does not have it, so its message is never
    /// acknowledged; nor is it lost (which would close the session at once, as an error). The
    /// session, closing at the shutdown deadline, leaves the message for its sender to send again.
    pub fn withhold(mut self) {
        self.0.take();
    }

    /// True when some sender waits for this record.
    pub fn is_awaited(&self) -> bool {
        self.0.is_some()
    }
}

impl Clone for Ack {
    fn clone(&self) -> Ack {
        match &self.0 {
            Some(a) => a.share(),
            None => Ack(None),
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.lost.store(true, Ordering::SeqCst);
            a.tell();
        }
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

    #[test]
    fn payloads_are_packed_one_after_another_and_a_block_is_taken_up_again_once_free() {
        // A thread of its own: a block no other test on this thread has used.
        std::thread::spawn(|| {
            let (first, _) = packed_with(10, |b| {
                b.extend_from_slice(b"<165>1 ");
                b.extend_from_slice(b"one");
            });
            let second = packed(b"two").0;
            assert_eq!(&first[..], b"<165>1 one");
            assert_eq!(&second[..], b"two");
            // Packed: the second begins where the first ends, in the same block.
            assert_eq!(second.as_ptr(), first[first.len()..].as_ptr());
            let start = first.as_ptr();
            // Once none of its payloads is held, the payload that no longer fits after the
            // others is written at the block's start again: no new block.
            drop((first, second));
            let again = (0..=BLOCK / 1000)
                .map(|_| packed(&[1; 1000]).0)
                .find(|p| p.as_ptr() == start);
            assert_eq!(again.as_deref(), Some(&[1; 1000][..]));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_full_block_is_left_to_its_payloads_and_a_large_payload_has_its_own_allocation() {
        std::thread::spawn(|| {
            let kept: Vec<Bytes> = (0..BLOCK / 1000 + 1)
                .map(|i| packed(&[i as u8; 1000]).0)
                .collect();
            // The block was full: the last payload is in a new one, and every payload kept its
            // bytes.
            let (last, before) = (&kept[kept.len() - 1], &kept[kept.len() - 2]);
            assert_ne!(last.as_ptr(), before[before.len()..].as_ptr());
            for (i, p) in kept.iter().enumerate() {
                assert_eq!(&p[..], &[i as u8; 1000][..]);
            }
            let large = packed(&[7; PACKED_MAX + 1]).0;
            let next = packed(b"next").0;
            assert_eq!(&large[..], &[7; PACKED_MAX + 1][..]);
            // Not in the block: the next payload follows the last one packed.
            assert_eq!(next.as_ptr(), last[last.len()..].as_ptr());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_block_lives_while_this_thread_or_a_payload_holds_it_and_past_a_bound_is_not_lent() {
        std::thread::spawn(|| {
            let (first, block) = packed(b"one");
            let (_, same) = packed(b"two");
            let alive = |b: &Block| b.0.as_ref().map(Arc::downgrade);
            let weak = alive(&block).unwrap_or_else(|| panic!("a packed payload has a block"));
            assert!(matches!((&block.0, &same.0), (Some(a), Some(b)) if Arc::ptr_eq(a, b)));
            // A payload of its own keeps no block, and is always lent.
            let (_, own) = packed(&[7; PACKED_MAX + 1]);
            assert!(own.0.is_none() && own.lendable());
            // The thread moves on to a new block: the first lives while a payload holds it.
            let (full, next) = packed(&[1; PACKED_MAX]);
            let fill: Vec<_> = (0..BLOCK / PACKED_MAX)
                .map(|_| packed(&[2; PACKED_MAX]))
                .collect();
            assert!(weak.upgrade().is_some());
            drop((first, block, same, full, next, fill));
            assert!(weak.upgrade().is_none(), "a block outlived its payloads");

            // More blocks alive than the bound: none of their payloads is lent. Other tests
            // only add to the count while these are held.
            let held: Vec<_> = (0..(LENT_BLOCKS_MAX + 1) * (BLOCK / PACKED_MAX))
                .map(|_| packed(&[3; PACKED_MAX]))
                .collect();
            assert!(blocks_alive() > LENT_BLOCKS_MAX);
            assert!(!held[0].1.lendable());
            drop(held);
            let (_, block) = packed(b"after");
            assert!(block.lendable(), "{} blocks alive", blocks_alive());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_message_is_safe_once_its_session_and_every_record_let_go() {
        let done = Arc::new(event_listener::Event::new());
        let m = Awaited::new(done.clone());
        let (a, b) = (m.share(), m.share());
        let c = b.clone();
        m.release();
        assert_eq!(m.standing(), Standing::Waiting);
        a.settle();
        b.settle();
        assert_eq!(m.standing(), Standing::Waiting, "the clone is a share too");
        let heard = done.listen();
        m.watch();
        c.settle();
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
        b.settle();
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
        b.settle();
        assert_eq!(m.standing(), Standing::Waiting);
    }
}
