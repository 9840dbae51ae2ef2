//! The read buffer every read loop uses (stream and RELP): small while a connection is quiet,
//! grown for a burst or a long frame, and given back after a quiet second.

use super::*;

/// The read buffer a connection starts with, and returns to once it has been quiet for
/// [`SHRINK_AFTER`] with nothing buffered: an idle connection costs little. It grows (to at most
/// a whole frame of `max_message_size` plus a read) only while a long frame or a fast sender
/// needs it.
pub(super) const SMALL: usize = 2 * 1024;
/// How long a larger buffer is kept after its last read.
pub(super) const SHRINK_AFTER: Duration = Duration::from_secs(1);
/// Room to read into after `buf[start..end]`, the bytes not cut into frames yet: they move to
/// the front when less than half the buffer is free. The buffer doubles up to `largest` when
/// that is still not enough (a long frame in progress), and up to [`READ_SIZE`] when the last
/// read filled all the room it had (`filled`): a fast sender, whose bytes read [`SMALL`] at a
/// time would each time cost a read, a batch of a few records and a wake-up of the publisher.
/// `filled` is cleared: a turn without a read (the buffer given back) does not grow it again.
pub(super) fn make_room(
    buf: &mut Vec<u8>,
    start: &mut usize,
    end: &mut usize,
    largest: usize,
    filled: &mut bool,
) {
    let filled = std::mem::take(filled);
    if start == end {
        (*start, *end) = (0, 0);
    } else if *start > 0 && buf.len() - *end < buf.len() / 2 {
        buf.copy_within(*start..*end, 0);
        *end -= *start;
        *start = 0;
    }
    let up_to = if buf.len() - *end < buf.len() / 2 {
        largest
    } else if filled {
        READ_SIZE.min(largest)
    } else {
        0
    };
    if buf.len() < up_to {
        buf.resize((buf.len() * 2).min(up_to), 0);
    }
}
