//! One task per connection: read bytes, cut frames, parse, apply the rules, and send the records
//! to the publisher in batches. When the outbox is full, `send` waits, and this task stops reading
//! its socket: the sender feels TCP backpressure, nothing is dropped.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::base::metrics::{LineCounts, Metrics};
use crate::base::shutdown::Shutdown;
use crate::base::tap::Labels;
use crate::base::throttle;
use crate::publish::Outbox;
use hotdog_stages::core::Origin;
use hotdog_stages::core::{Awaited, Batch, Standing};
use hotdog_stages::encode;
use hotdog_stages::frame::lines::{Framer, Step};
use hotdog_stages::parse::syslog;
use hotdog_stages::route::{Current, Rules};

mod buffer;
mod quota;
mod relp;
mod stream;

use buffer::*;

pub use quota::{QuotaSlot, Verdict};
pub use relp::run_relp;
pub use stream::run;

#[cfg(test)]
mod tests;

/// How much is read from the socket at once.
const READ_SIZE: usize = 64 * 1024;
/// Frames handled between two cooperative yields, so a flooding sender cannot starve others.
const YIELD_EVERY: u32 = 256;
/// During shutdown, a connection that has been quiet this long has sent everything it had.
const DRAIN_IDLE: Duration = Duration::from_millis(250);

/// Counts frames handled and yields to the executor every [`YIELD_EVERY`] of them, so a
/// flooding sender cannot starve the others.
#[derive(Default)]
pub(super) struct Yielder(u32);

impl Yielder {
    pub(super) async fn tick(&mut self) {
        self.0 += 1;
        if self.0 >= YIELD_EVERY {
            self.0 = 0;
            smol::future::yield_now().await;
        }
    }
}

/// What every connection shares.
pub struct Shared {
    /// The rules in use (replaced on reload).
    pub rules: Current,
    pub metrics: Arc<Metrics>,
    /// The way to the publisher.
    pub outbox: Outbox,
    /// What `hotdog tap` is shown.
    pub taps: Arc<crate::base::tap::Taps>,
}

/// The per-connection state of the pipeline (everything but the socket).
pub struct Pipeline {
    shared: Arc<Shared>,
    /// The rules this connection applies, and their generation: replaced by the current ones
    /// between two frames when a reload has put new ones in use.
    rules: Arc<Rules>,
    generation: u64,
    origin: Origin,
    batch: Batch,
    batch_max: usize,
    /// How many records the batch handed over last had: what the next one is given room for.
    last_batch: usize,
    counts: LineCounts,
    /// The rules that matched each frame since their counters were last added to (one entry
    /// per match): as long as a batch at most, whatever the number of rules.
    matched: Vec<usize>,
    /// The count of lines read by this connection's listener (`listener.<address>.lines`).
    read_here: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The listener's quota, when it has one.
    meter: Option<quota::Meter>,
    /// The taps as this connection last saw them.
    tap_view: crate::base::tap::View,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.count_rules();
    }
}

impl Pipeline {
    pub fn new(shared: Arc<Shared>, origin: Origin) -> Self {
        let (generation, rules) = shared.rules.get();
        Pipeline {
            rules,
            generation,
            batch: Vec::new(),
            batch_max: shared.outbox.batch_max(),
            last_batch: 0,
            counts: LineCounts::default(),
            matched: Vec::new(),
            read_here: origin
                .listener
                .as_deref()
                .map(|l| shared.metrics.listener(l)),
            shared,
            origin,
            meter: None,
            tap_view: crate::base::tap::View::default(),
        }
    }

    /// Holds the connection to its listener's quota (which a reload may change or remove).
    pub fn with_quota(mut self, slot: Arc<QuotaSlot>) -> Self {
        self.meter = Some(quota::Meter::new(slot));
        self
    }

    /// What the quota says of a frame of `len` bytes, before it goes through the pipeline. A
    /// dropped one is counted as read and as dropped (`quota.dropped`).
    pub fn admit(&mut self, len: usize) -> Verdict {
        let Some(meter) = &mut self.meter else {
            return Verdict::Pass;
        };
        let verdict = meter.take(len, &self.origin);
        if verdict == Verdict::Drop {
            self.counts.lines += 1;
            self.counts.quota_dropped += 1;
        }
        verdict
    }

    /// The sender changed (UDP): its quota's key may have too (what the last one dropped is
    /// counted under its key first).
    pub fn sender_changed(&mut self) {
        self.count_dropped();
        if let Some(meter) = &mut self.meter {
            meter.sender_changed();
        }
    }

    /// Adds what the quota dropped since the last time to its key's count, and says so in the
    /// log (at most once every 10 s).
    fn count_dropped(&mut self) {
        let Some((key, lines, bytes)) = self.meter.as_mut().and_then(|m| m.take_dropped()) else {
            return;
        };
        let listener = self.origin.listener.as_deref().unwrap_or("");
        self.shared
            .metrics
            .quota_dropped(listener, &key, lines, bytes);
        throttle::QUOTA.warn(format_args!(
            "{listener}: dropped {lines} lines from `{key}` over its quota"
        ));
    }

    /// Waits `wait` for the quota, having handed over what is batched (the sender is held back,
    /// not its lines). Shutdown cuts the wait short. False when the publisher takes nothing more.
    pub async fn wait_for_quota(&mut self, wait: Duration, shutdown: &Shutdown) -> bool {
        if !self.flush().await {
            return false;
        }
        let started = Instant::now();
        shutdown.unless(smol::Timer::after(wait)).await;
        let waited = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.shared
            .metrics
            .quota_waited_ms
            .fetch_add(waited, Relaxed);
        true
    }

    /// Parses one frame and applies the rules to it.
    pub fn frame(&mut self, data: &[u8], truncated: bool) {
        self.frame_for(data, truncated, None);
    }

    /// [`Pipeline::frame`] for a message whose sender waits to hear it is safe: each of its
    /// records carries a share of `awaited`.
    pub fn awaited_frame(&mut self, data: &[u8], awaited: &Arc<Awaited>) {
        self.frame_for(data, false, Some(awaited));
    }

    fn frame_for(&mut self, data: &[u8], truncated: bool, awaited: Option<&Arc<Awaited>>) {
        let text = hotdog_stages::core::text_of(data);
        if let std::borrow::Cow::Owned(_) = text {
            self.counts.invalid_utf8 += 1;
        }
        self.counts.lines += 1;
        self.counts.truncated += u64::from(truncated);
        let msg = syslog::parse_frame(data, &text);
        if msg.format == syslog::Format::Unparsed {
            self.counts.unparsed += 1;
        }
        if self.shared.rules.generation() != self.generation {
            // What the old rules matched is theirs to count.
            self.count_rules();
            (self.generation, self.rules) = self.shared.rules.get();
        }
        if self.batch.capacity() == 0 {
            // At once the room the last batch took, not one doubling after another: the
            // publisher's thread frees it, and each step would be one more wait on the
            // allocator's lock while it does.
            self.batch.reserve(self.last_batch.clamp(1, self.batch_max));
        }
        let matched_before = self.matched.len();
        let (routed, outcome) = self
            .rules
            .apply(&msg, &self.origin, Some(&mut self.matched));
        let made = routed.is_some();
        if let Some(routed) = routed {
            let ack = awaited.map(|a| a.share()).unwrap_or_default();
            self.batch
                .push(encode::record(routed, &msg, &self.origin, ack));
        }
        if self.shared.taps.any() {
            self.tap(&text, matched_before, made);
        }
        if outcome.forwarded {
            self.counts.forwarded += 1;
        } else {
            self.counts.unrouted += 1;
        }
        self.counts.invalid_topics += u64::from(outcome.invalid_topics);
        self.counts.render_errors += u64::from(outcome.render_errors);
        self.counts.merge_errors += u64::from(outcome.merge_errors);
    }

    /// Offers the frame just routed to the open taps: its text, the rules it matched (those
    /// `matched` got from `matched_before` on) and the record made of it, when `made`.
    fn tap(&mut self, text: &str, matched_before: usize, made: bool) {
        let rules = Labels::Of(&self.rules, &self.matched[matched_before..]);
        let record = if made { self.batch.last() } else { None };
        let event = crate::base::tap::Event {
            line: text,
            origin: &self.origin,
            rules,
            record,
        };
        let watch = self
            .shared
            .taps
            .offer(&mut self.tap_view, &event, &self.shared.metrics);
        if let (Some(watch), Some(record)) = (watch, self.batch.last_mut()) {
            record.ack.watch(watch);
        }
    }

    /// Adds what each rule matched since the last time to its counter, once per rule.
    fn count_rules(&mut self) {
        self.matched.sort_unstable();
        for run in self.matched.chunk_by(|a, b| a == b) {
            self.rules.count_matches(run[0], run.len() as u64);
        }
        self.matched.clear();
    }

    /// Notes the time of a read; the records of its lines carry it.
    pub fn stamp(&mut self) {
        // Templates (`{{iso8601}}`), structured records and the Kafka timestamp say when the
        // line was read.
        self.origin.clock = Some(hotdog_stages::core::now());
    }

    /// The connection facts templates see; UDP changes them per datagram.
    pub fn origin_mut(&mut self) -> &mut Origin {
        &mut self.origin
    }

    /// Like [`Pipeline::flush`], but waits for room at most `patience`: what the outbox has
    /// no room for by then is dropped (only UDP does this: it cannot push back). Returns how
    /// many records were dropped.
    pub async fn flush_within(&mut self, patience: Duration) -> usize {
        let counts = self.take_counts();
        if self.batch.is_empty() {
            self.shared.metrics.add_lines(&counts);
            return 0;
        }
        let batch = self.take_batch();
        let counts = self.hand_over(counts);
        match self
            .shared
            .outbox
            .send_within(batch, counts, patience)
            .await
        {
            Ok(()) => 0,
            Err((batch, counts)) => {
                self.shared.metrics.add_lines(&counts);
                batch.len()
            }
        }
    }

    /// What was counted since the last flush, with the rules' matches and the listener's lines
    /// added to their counters.
    fn take_counts(&mut self) -> LineCounts {
        self.count_rules();
        let counts = std::mem::take(&mut self.counts);
        self.count_dropped();
        self.tap_view
            .settle(&self.shared.taps, &self.shared.metrics);
        if let Some(read) = self.read_here.as_ref().filter(|_| counts.lines > 0) {
            read.fetch_add(counts.lines, Relaxed);
        }
        counts
    }

    /// The counts that go with a batch: with a spool, all of them (its writer counts them once
    /// it has the batch); without, none (they are counted here, now).
    fn hand_over(&self, counts: LineCounts) -> LineCounts {
        if self.shared.outbox.spooled() {
            counts
        } else {
            self.shared.metrics.add_lines(&counts);
            LineCounts::default()
        }
    }

    /// True when lines were handled since the last flush.
    pub fn has_pending(&self) -> bool {
        !self.batch.is_empty() || self.counts.lines > 0
    }

    pub fn batch_full(&self) -> bool {
        self.batch.len() >= self.batch_max
    }

    /// The batch, leaving an empty one that allocates only when a record comes: an idle
    /// connection holds no batch.
    fn take_batch(&mut self) -> Batch {
        self.last_batch = self.batch.len();
        std::mem::take(&mut self.batch)
    }

    /// Sends what is batched to the publisher, waiting while the outbox is full. False when the
    /// publisher takes nothing more (shutdown ran out of time; the outbox dead-lettered it).
    ///
    /// The lines are counted as read (`lines`) as they are handed over, or, with a spool, by
    /// the spool's writer once it has their records: a line that was counted survives a kill.
    pub async fn flush(&mut self) -> bool {
        let counts = self.take_counts();
        if self.batch.is_empty() {
            self.shared.metrics.add_lines(&counts);
            return true;
        }
        let batch = self.take_batch();
        let counts = self.hand_over(counts);
        match self.shared.outbox.send(batch, counts).await {
            Ok(()) => true,
            Err(counts) => {
                self.shared.metrics.add_lines(&counts);
                false
            }
        }
    }
}

/// What a connection may do, from its listener's settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest frame kept (`max_message_size`).
    pub max_message_size: usize,
    /// Close the connection when it has sent nothing this long (`idle_timeout`).
    pub idle_timeout: Option<Duration>,
    /// RELP `ack: spool`: a message is answered once its records are in the spool.
    pub answer_when_spooled: bool,
    /// How the stream is cut into frames (`framing`).
    pub framing: hotdog_stages::frame::lines::Framing,
}

/// Why a connection ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A RELP session broke the protocol (why): closed with a `serverclose` that says so.
    Refused(String),
    /// The peer closed it.
    Closed,
    /// Shutdown: the peer had been quiet for a moment, or the publisher takes nothing more.
    Shutdown,
    /// Nothing was sent for `idle_timeout`.
    Idle,
}
