//! Payload blocks: the payloads a connection's thread makes are packed one after another in
//! 64 KiB blocks, so a batch of records is a few allocations, not one per record; a block
//! counts as alive until the last record that holds a payload in it lets go.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

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
}
