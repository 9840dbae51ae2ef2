//! The read buffer every read loop uses (stream and RELP): small while a connection is quiet,
//! grown for a burst or a long frame, and given back after a quiet second; and the one timer
//! ([`Alarm`]) such a loop waits with for that second and for its idle time.

use super::*;

/// A connection's read buffer: bytes read and not cut into frames yet, and room for the next
/// read. See [`make_room`] for how it grows and [`SMALL`] for how it shrinks.
pub(super) struct ReadBuffer {
    buf: Vec<u8>,
    /// `buf[start..end]`: read, not cut into frames yet.
    start: usize,
    end: usize,
    /// The last read filled all the room it had.
    filled: bool,
    /// The most the buffer grows to: a whole frame of the largest size, its header and a read.
    largest: usize,
    /// When the last bytes came.
    last_data: Instant,
}

impl ReadBuffer {
    pub(super) fn new(largest: usize) -> ReadBuffer {
        ReadBuffer {
            buf: vec![0u8; SMALL],
            start: 0,
            end: 0,
            filled: false,
            largest,
            last_data: Instant::now(),
        }
    }

    /// Makes room for the next read ([`make_room`]).
    pub(super) fn prepare(&mut self) {
        let (buf, start, end) = (&mut self.buf, &mut self.start, &mut self.end);
        make_room(buf, start, end, self.largest, &mut self.filled);
    }

    /// Where the next read goes.
    pub(super) fn room(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`ReadBuffer::room`].
    pub(super) fn read(&mut self, n: usize) {
        self.last_data = Instant::now();
        self.filled = self.end + n == self.buf.len();
        self.end += n;
    }

    /// The bytes read and not cut into frames yet.
    pub(super) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The first `n` bytes of [`ReadBuffer::data`] are cut into frames.
    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// When the connection, quiet since its last bytes, has been idle for `timeout`.
    pub(super) fn idle_at(&self, timeout: Option<Duration>) -> Option<Instant> {
        timeout.map(|t| self.last_data + t)
    }

    /// When a buffer larger than [`SMALL`] with nothing in it is to be given back, if it is:
    /// [`SHRINK_AFTER`] after the last bytes came.
    pub(super) fn shrink_at(&self) -> Option<Instant> {
        (self.start == self.end && self.buf.len() > SMALL).then(|| self.last_data + SHRINK_AFTER)
    }

    /// Gives back a large buffer (nothing is in it: see [`ReadBuffer::shrink_at`]).
    pub(super) fn shrink(&mut self) {
        self.buf = vec![0u8; SMALL];
        (self.start, self.end) = (0, 0);
    }
}

/// The one timer a read loop waits with, for its idle time and for giving back a grown buffer.
/// It is set again only when it must ring earlier than it is set for: async-io wakes the
/// thread that waits for events whenever a timer is made, so a timer made for every read (the
/// idle time and the quiet second move on with every read) cost a busy connection one more
/// wake-up of another thread for every read. One that rings early is set again then.
pub(super) struct Alarm {
    timer: smol::Timer,
    /// When it rings; `None` once it rang (or before it was set).
    at: Option<Instant>,
}

impl Default for Alarm {
    fn default() -> Alarm {
        Alarm {
            timer: smol::Timer::never(),
            at: None,
        }
    }
}

impl Alarm {
    /// Waits until `wake`'s time and gives its `what`, or gives `None` when it rang for an
    /// earlier time (one that moved on since); with no `wake`, it rings only if it was set.
    pub(super) async fn until<T>(&mut self, wake: Option<(Instant, T)>) -> Option<T> {
        if let Some((at, _)) = &wake {
            if self.at.is_none_or(|set| set > *at) {
                self.timer.set_at(*at);
                self.at = Some(*at);
            }
        }
        (&mut self.timer).await;
        self.at = None;
        wake.filter(|(at, _)| Instant::now() >= *at)
            .map(|(_, what)| what)
    }
}

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
